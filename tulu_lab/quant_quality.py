"""How much a quantised model departs from the original: next-token KL and top-1 agreement.

``compare_quantized(reference, quantized, tokenizer, texts)`` runs both models over the same texts
(teacher forcing: every position predicts the next token of the text) and compares their next-token
distributions position by position:

* KL(reference ‖ quantized) = sum_v p_ref(v) (log p_ref(v) - log p_q(v)), in nats, averaged over every
  predicted position of every text (each token weighs the same);
* top-1 agreement: the share of positions where both models' most likely next token is the same;
* each model's perplexity on the texts, exp(mean negative log-likelihood of the actual next tokens).

Both log-softmaxes are taken in float32 whatever the compute dtype, so the comparison measures the
weights' quantisation, not the precision of the softmax.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

__all__ = ["compare_quantized", "next_token_logprobs"]


@torch.inference_mode()
def next_token_logprobs(model, input_ids: torch.Tensor) -> torch.Tensor:
    """float32 log-probs of the next token at every position: ``(seq_len, vocab)`` for one sequence."""
    device = next(model.parameters()).device
    logits = model(input_ids=input_ids[None].to(device)).logits[0]
    return torch.log_softmax(logits.float(), dim=-1).cpu()


def compare_quantized(reference, quantized, tokenizer, texts: Sequence[str], *, max_tokens: int = 512) -> dict:
    """Compare ``quantized`` with ``reference`` on ``texts`` (same tokenizer for both).

    Args:
        reference: the original model (e.g. bf16).
        quantized: the same model quantised (e.g. ``load_model(..., quant="nf4")``).
        texts: plain strings; each needs at least 2 tokens (one position to predict).
        max_tokens: longer texts are cut to their first ``max_tokens`` tokens.

    Returns:
        dict with ``kl_mean`` and ``kl_max`` (nats per position), ``top1_agreement`` (0-1),
        ``ppl_reference``, ``ppl_quantized``, ``n_texts``, ``n_positions``.
    """
    if isinstance(texts, str) or not texts:
        raise ValueError("compare_quantized: texts must be a non-empty list of strings")
    kl_sum, kl_max, agree, nll_ref, nll_q, positions = 0.0, 0.0, 0, 0.0, 0.0, 0
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"compare_quantized: texts[{index}] must be a string, got {type(text).__name__}")
        ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens])
        if len(ids) < 2:
            raise ValueError(f"compare_quantized: texts[{index}] ({text!r:.40}) has {len(ids)} token(s); "
                             f"at least 2 are needed to predict one")
        ref = next_token_logprobs(reference, ids)[:-1]   # the last position predicts beyond the text
        quant = next_token_logprobs(quantized, ids)[:-1]
        if ref.shape != quant.shape:
            raise ValueError(f"compare_quantized: the models disagree on the vocabulary: {tuple(ref.shape)} vs "
                             f"{tuple(quant.shape)} (are they the same model?)")
        kl = (ref.exp() * (ref - quant)).sum(dim=-1).clamp(min=0.0)  # tiny negatives are rounding
        targets = ids[1:]
        kl_sum += float(kl.sum())
        kl_max = max(kl_max, float(kl.max()))
        agree += int((ref.argmax(-1) == quant.argmax(-1)).sum())
        nll_ref -= float(ref.gather(-1, targets[:, None]).sum())
        nll_q -= float(quant.gather(-1, targets[:, None]).sum())
        positions += len(targets)
    return {
        "kl_mean": kl_sum / positions,
        "kl_max": kl_max,
        "top1_agreement": agree / positions,
        "ppl_reference": math.exp(nll_ref / positions),
        "ppl_quantized": math.exp(nll_q / positions),
        "n_texts": len(texts),
        "n_positions": positions,
    }

"""Each stage's loss on a small batch, laid out term by term (what notebooks 02-04 show).

    sft_loss_example(model, tokenizer, rows)                  # assistant-only masking, summed NLL
    dpo_norm_example(model, tokenizer, pairs, beta=5.0)       # summed vs length-normalised log-ratios
    grpo_group_example(cfg, model, tokenizer, row, seed=0)    # one real rollout group: rewards, advantages

Every number comes from the functions training uses (``chat.encode_sft_example``,
``losses.sft_loss``, ``dpo.pair_logprobs``, ``losses.dpo_loss``, ``rlvr.rollout``,
``losses.group_advantages``); these functions only lay them out.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch


def sft_loss_example(model, tokenizer, rows: Sequence[dict], *, max_len: int = 256) -> dict[str, Any]:
    """The SFT loss of ``rows`` (each ``{"messages": [...]}``) as one batch.

    Returns ``{"examples": DataFrame}`` (per example: tokens, masked prompt tokens, scored answer
    tokens, summed NLL), ``"tokens"`` (per token of the first example: the token, whether the loss
    sees it, its NLL), ``"loss_sum"`` (``losses.sft_loss``, reduction "sum", Tülu 3's), ``"n_tokens"``
    and ``"loss_per_token"`` (what the SFT metrics log as loss).
    """
    import pandas as pd
    import torch.nn.functional as F

    from tulu_lab.chat import IGNORE_INDEX, encode_sft_example, pad_batch
    from tulu_lab.losses import sft_loss

    encoded = [encode_sft_example(r["messages"], tokenizer, max_len=max_len) for r in rows]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    batch = pad_batch(encoded, pad_id, side="right")
    device = next(model.parameters()).device
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"].to(device),
                       attention_mask=batch["attention_mask"].to(device)).logits.float().cpu()
    labels = batch["labels"]
    loss_sum, n_tokens = sft_loss(logits, labels, reduction="sum")
    # the same sum, token by token: position t predicts label t + 1
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1),
                          ignore_index=IGNORE_INDEX, reduction="none").view(labels.size(0), -1)
    scored = labels[:, 1:] != IGNORE_INDEX
    examples = pd.DataFrame([{
        "example": i, "tokens": int(e["input_ids"].numel()), "masked (prompt)": int((e["labels"] == IGNORE_INDEX).sum()),
        "scored (answer + EOS)": int(scored[i].sum()), "summed NLL": float(nll[i][scored[i]].sum()),
    } for i, e in enumerate(encoded)])
    first = encoded[0]
    tokens = pd.DataFrame([{
        "position": t, "token": tokenizer.decode([int(first["input_ids"][t])]),
        "in loss": bool(first["labels"][t] != IGNORE_INDEX),
        "nll": float(nll[0][t - 1]) if t > 0 and bool(first["labels"][t] != IGNORE_INDEX) else None,
    } for t in range(first["input_ids"].numel())])
    return {"examples": examples, "tokens": tokens, "loss_sum": float(loss_sum), "n_tokens": int(n_tokens),
            "loss_per_token": float(loss_sum) / max(int(n_tokens), 1)}


def dpo_norm_example(model, tokenizer, pairs: Sequence[dict], *, beta: float, reference_model=None,
                     max_seq_len: int = 1024):
    """DPO's implicit rewards of ``pairs`` under ``model`` against its reference, summed ("dpo") and
    length-normalised ("dpo_norm", Tülu 3's) side by side.

    The reference is ``model`` with its LoRA adapters disabled, or ``reference_model``. One row per
    pair: response lengths, summed log-ratios, per-token log-ratios, both margins and both losses
    (``losses.dpo_loss``). A long response's summed log-ratio grows with its length; dpo_norm's does not.
    """
    import pandas as pd

    from tulu_lab.dpo import pair_logprobs
    from tulu_lab.losses import dpo_loss

    policy = pair_logprobs(model, tokenizer, pairs, max_seq_len=max_seq_len)
    if reference_model is not None:
        ref = pair_logprobs(reference_model, tokenizer, pairs, max_seq_len=max_seq_len)
    else:
        ref = pair_logprobs(model, tokenizer, pairs, max_seq_len=max_seq_len, disable_adapters=True)
    lengths = {"chosen_lengths": policy["chosen_lengths"], "rejected_lengths": policy["rejected_lengths"]}
    summed = dpo_loss(policy["chosen"], policy["rejected"], ref["chosen"], ref["rejected"], beta, loss_type="dpo")
    normed = dpo_loss(policy["chosen"], policy["rejected"], ref["chosen"], ref["rejected"], beta,
                      loss_type="dpo_norm", **lengths)
    rows = []
    for i in range(len(pairs)):
        n_w, n_l = int(policy["chosen_lengths"][i]), int(policy["rejected_lengths"][i])
        ratio_w = float(policy["chosen"][i] - ref["chosen"][i])
        ratio_l = float(policy["rejected"][i] - ref["rejected"][i])
        rows.append({"pair": i, "chosen tokens": n_w, "rejected tokens": n_l,
                     "chosen log-ratio (sum)": ratio_w, "rejected log-ratio (sum)": ratio_l,
                     "chosen log-ratio / token": ratio_w / max(n_w, 1),
                     "rejected log-ratio / token": ratio_l / max(n_l, 1),
                     "margin dpo": float(summed.margins[i]), "margin dpo_norm": float(normed.margins[i]),
                     "loss dpo": float(summed.losses[i]), "loss dpo_norm": float(normed.losses[i])})
    return pd.DataFrame(rows)


def grpo_group_example(cfg, model, tokenizer, row: dict, *, seed: int = 0):
    """One real GRPO rollout group: ``cfg.samples_per_prompt`` responses to ``row``'s prompt sampled at
    ``cfg.temperature`` (``rlvr.rollout``), each one's verdict, reward and group-relative advantage
    (``losses.group_advantages`` with the config's eps and scale). A group whose rewards are all equal
    has advantage 0 everywhere: no gradient.

    Returns a DataFrame, one row per sample: response, correct, stopped, tokens, reward, advantage.
    """
    import pandas as pd

    from tulu_lab.generate import format_prompt
    from tulu_lab.losses import group_advantages
    from tulu_lab.rlvr import rollout

    batch, info = rollout(cfg, model, tokenizer, [row], [format_prompt(row["messages"], tokenizer)], seed=seed)
    advantages = group_advantages(batch.scores, batch.group_size, cfg.advantage_eps, scale=cfg.advantage_scale)
    return pd.DataFrame([{"sample": i, "response": g.text, "correct": bool(c), "stopped": bool(s),
                          "tokens": n, "reward": float(r), "advantage": float(a)}
                         for i, (g, c, s, n, r, a) in enumerate(zip(info["generations"], info["correct"],
                                                                    info["stopped"], info["lengths"],
                                                                    batch.scores, advantages))])


__all__ = ["dpo_norm_example", "grpo_group_example", "sft_loss_example"]

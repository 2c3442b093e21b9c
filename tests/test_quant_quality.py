"""compare_quantized: KL, top-1 agreement and perplexity, against values worked out by hand."""

import math
from types import SimpleNamespace

import pytest
import torch

from tulu_lab.quant_quality import compare_quantized


class FixedLogits(torch.nn.Module):
    """A 'model' predicting the same next-token distribution at every position."""

    def __init__(self, probs):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.tensor(probs).log())

    def forward(self, input_ids):
        return SimpleNamespace(logits=self.logits.expand(input_ids.shape[0], input_ids.shape[1], -1))


def digits_tokenizer(text, add_special_tokens=False):
    return {"input_ids": [int(c) for c in text]}


def test_hand_worked_kl_agreement_and_perplexity():
    """p_ref = (0.6, 0.4), p_q = (0.3, 0.7) everywhere.

    KL(ref||q) = 0.6 ln(0.6/0.3) + 0.4 ln(0.4/0.7) = 0.41589 - 0.22385 = 0.19204 nats per position.
    Top-1: ref picks 0, q picks 1: agreement 0. Text "0101" predicts 1, 0, 1:
    ppl_ref = exp(-(ln .4 + ln .6 + ln .4) / 3), ppl_q = exp(-(ln .7 + ln .3 + ln .7) / 3).
    """
    result = compare_quantized(FixedLogits([0.6, 0.4]), FixedLogits([0.3, 0.7]), digits_tokenizer, ["0101"])
    assert result["kl_mean"] == pytest.approx(0.6 * math.log(2) + 0.4 * math.log(0.4 / 0.7), abs=1e-6)
    assert result["kl_mean"] == pytest.approx(0.19204, abs=1e-5)
    assert result["kl_max"] == pytest.approx(result["kl_mean"], abs=1e-6)
    assert result["top1_agreement"] == 0.0
    assert result["ppl_reference"] == pytest.approx(math.exp(-(2 * math.log(0.4) + math.log(0.6)) / 3), rel=1e-6)
    assert result["ppl_quantized"] == pytest.approx(math.exp(-(2 * math.log(0.7) + math.log(0.3)) / 3), rel=1e-6)
    assert (result["n_texts"], result["n_positions"]) == (1, 3)


def test_positions_weigh_equally_across_texts():
    result = compare_quantized(FixedLogits([0.6, 0.4]), FixedLogits([0.6, 0.4]), digits_tokenizer, ["01", "0110"])
    assert result["n_positions"] == 1 + 3 and result["kl_mean"] == pytest.approx(0.0, abs=1e-7)
    assert result["top1_agreement"] == 1.0


def test_model_against_itself_and_against_its_nf4_copy(tiny_model_dir, tiny):
    from tulu_lab.models import load_model

    model, tokenizer = tiny
    texts = ["Tom has 12 apples and buys 5 more.", "The answer is 42. I hope it is correct."]
    same = compare_quantized(model, model, tokenizer, texts)
    assert same["kl_mean"] == pytest.approx(0.0, abs=1e-6) and same["top1_agreement"] == 1.0
    assert same["ppl_reference"] == pytest.approx(same["ppl_quantized"])
    nf4, _ = load_model(tiny_model_dir, quant="nf4", dtype="fp32", verbose=False)
    result = compare_quantized(model, nf4, tokenizer, texts)
    assert 0.0 < result["kl_mean"] < 0.5 and result["kl_max"] >= result["kl_mean"]
    assert 0.0 <= result["top1_agreement"] <= 1.0
    assert result["n_positions"] == sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) - 1 for t in texts)


def test_bad_inputs_name_the_problem():
    a, b = FixedLogits([0.5, 0.5]), FixedLogits([0.2, 0.3, 0.5])
    with pytest.raises(ValueError, match="non-empty list"):
        compare_quantized(a, a, digits_tokenizer, [])
    with pytest.raises(ValueError, match=r"texts\[1\].*1 token"):
        compare_quantized(a, a, digits_tokenizer, ["01", "1"])
    with pytest.raises(ValueError, match="vocabulary"):
        compare_quantized(a, b, digits_tokenizer, ["01"])

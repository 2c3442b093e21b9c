"""The decode fast paths of tulu_lab.generate give what the plain peft / transformers paths give.

* LoRA in fp32: adapters merged into one weight per layer for the call; tokens equal, log-probs equal
  to float rounding (1e-5), and the model's parameters untouched afterwards.
* LoRA under bf16 autocast: the lean unmerged forward runs the same kernels, so results are identical.
* The reserved KV cache matches transformers' concatenating DynamicCache step by step.
"""

import contextlib

import pytest
import torch

from tulu_lab import generate as gen_module
from tulu_lab.generate import generate

PROMPTS = [[{"role": "user", "content": "What is 3 + 4?"}],
           [{"role": "user", "content": "Tom has 12 apples and buys 5 more. How many apples does he have?"}]]


@pytest.fixture()
def lora_tiny(tiny):
    from tulu_lab.models import attach_lora, lora_config

    model, tok = tiny
    peft_model = attach_lora(model, lora_config(r=4, alpha=8, dropout=0.1, target_modules="all-linear"))
    g = torch.Generator().manual_seed(0)
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:  # fresh B is zero: make the adapters change the output
            p.data = torch.randn(p.shape, generator=g) * 0.05
    yield peft_model, tok
    peft_model.unload()  # give the shared fixture its plain model back


def _run(model, tok, fast: bool, decoder: bool = False, **kwargs):
    """fast: the adapters' fast path (with ``decoder``: tulu_lab.llama_decode, else the model's forward
    with _fast_adapters); not fast: peft's own layers through the model's forward."""
    if fast:
        return generate(model, tok, PROMPTS, fast_decoder=decoder, **kwargs)
    original = gen_module._fast_adapters
    gen_module._fast_adapters = lambda m: contextlib.nullcontext()
    try:
        return generate(model, tok, PROMPTS, fast_decoder=False, **kwargs)
    finally:
        gen_module._fast_adapters = original


@pytest.mark.parametrize("decoder", [False, True])
def test_merged_adapters_match_peft_in_fp32(lora_tiny, decoder):
    model, tok = lora_tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kwargs = dict(max_new_tokens=12, temperature=1.0, num_samples=3, seed=5, batch_size=6)
    fast, plain = _run(model, tok, True, decoder, **kwargs), _run(model, tok, False, **kwargs)
    assert [g.token_ids for g in fast] == [g.token_ids for g in plain]
    for a, b in zip(fast, plain):
        assert torch.allclose(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all("forward" not in vars(m) for m in model.modules())  # forwards restored


def test_lean_adapters_are_exact_under_bf16_autocast(lora_tiny):
    model, tok = lora_tiny
    kwargs = dict(max_new_tokens=10, temperature=0.8, num_samples=2, seed=1, batch_size=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast, plain = _run(model, tok, True, **kwargs), _run(model, tok, False, **kwargs)
    assert [g.token_ids for g in fast] == [g.token_ids for g in plain]
    assert [g.logprobs for g in fast] == [g.logprobs for g in plain]


@pytest.mark.parametrize("decoder", [False, True])
def test_adapters_change_the_output(lora_tiny, decoder):
    """The fast paths really apply the adapters (an adapter-free decode differs)."""
    model, tok = lora_tiny
    kwargs = dict(max_new_tokens=8, temperature=0.0)
    with_adapters = _run(model, tok, True, decoder, **kwargs)
    with model.disable_adapter():
        without = _run(model, tok, True, decoder, **kwargs)
    assert [g.logprobs for g in with_adapters] != [g.logprobs for g in without]


def test_reserved_cache_matches_dynamic_cache(tiny):
    from transformers import DynamicCache

    model, tok = tiny
    ids = torch.tensor([[5, 9, 13, 17, 21], [6, 10, 14, 18, 22]])
    reserved = gen_module._reserved_cache(reserve=2)  # too little room: forces growth
    dynamic = DynamicCache()
    with torch.no_grad():
        a = model(input_ids=ids, cache=reserved, use_cache=True)
        b = model(input_ids=ids, cache=dynamic, use_cache=True)
        for cache in (a.cache, b.cache):
            cache.batch_repeat_interleave(2)
            cache.batch_select_indices(torch.tensor([0, 2, 3]))
        nxt = torch.tensor([[7], [8], [9]])
        for step in range(4):
            positions = torch.full((3, 1), 5 + step)
            a = model(input_ids=nxt, position_ids=positions, cache=a.cache, use_cache=True)
            b = model(input_ids=nxt, position_ids=positions, cache=b.cache, use_cache=True)
            assert torch.allclose(a.logits, b.logits, atol=1e-6)
            nxt = a.logits[:, -1].argmax(-1, keepdim=True)
    assert a.cache.get_seq_length() == b.cache.get_seq_length() == 9


def test_thread_choice_is_scoped(tiny):
    model, tok = tiny
    before = torch.get_num_threads()
    assert 1 <= gen_module.fastest_threads(8, 32, 64) <= before
    assert gen_module.fastest_threads(8, 32, 64, max_threads=1) == 1
    with gen_module.num_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    one = generate(model, tok, PROMPTS, max_new_tokens=6, threads=1)
    auto = generate(model, tok, PROMPTS, max_new_tokens=6, threads="auto")
    assert [g.token_ids for g in one] == [g.token_ids for g in auto]
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads"):
        generate(model, tok, PROMPTS, threads=0)


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_sampler_draws_the_tempered_distribution(temperature):
    """Inverse-CDF sampling: frequencies over 20,000 draws match softmax(logits / T) within 4 sigma;
    a token with -inf logit is never drawn; the reported log-prob is that of the drawn token."""
    from tulu_lab.generate import sample_next

    p = torch.tensor([0.5, 0.3, 0.15, 0.05, 0.0])
    logits = torch.log(p).repeat(20_000, 1)
    tokens, logprobs = sample_next(logits, temperature, 1.0, torch.Generator().manual_seed(0))
    expected = torch.softmax(torch.log(p) / temperature, -1)
    counts = torch.bincount(tokens, minlength=5).double() / len(tokens)
    sigma = (expected * (1 - expected) / len(tokens)).sqrt()
    assert counts[4] == 0
    assert torch.all((counts - expected).abs() <= 4 * sigma + 1e-12), (counts, expected)
    assert torch.allclose(logprobs, torch.log(expected)[tokens].float(), atol=1e-5)


def test_shared_prefix_length():
    from tulu_lab.generate import shared_prefix_length

    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5]], minimum=1) == 3
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3, 4]], minimum=1) == 2  # one token left to prefill
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5]], minimum=4) == 0  # too short to pay
    assert shared_prefix_length([[1, 2, 3, 4]], minimum=1) == 0               # one prompt: nothing to share
    assert shared_prefix_length([[7, 2], [1, 2]], minimum=1) == 0


@pytest.mark.parametrize("temperature, num_samples", [(0.0, 1), (1.0, 2)])
def test_shared_prefix_prefill_matches_separate_prompts(tiny, monkeypatch, temperature, num_samples):
    """A few-shot-style batch: the common prefix is prefilled once and its cache copied, with the
    same tokens and log-probs as prefilling every row whole."""
    model, tok = tiny
    exemplars = " ".join(f"Question: what is {i} + {i}? Answer: {2 * i}." for i in range(1, 9))
    prompts = [f"{exemplars} Question: what is {q}? Answer:" for q in ("3 + 4", "12 + 5 + 6", "1")]
    calls = []
    original = gen_module.shared_prefix_length
    monkeypatch.setattr(gen_module, "shared_prefix_length", lambda lists: calls.append(original(lists)) or calls[-1])
    kwargs = dict(max_new_tokens=10, temperature=temperature, num_samples=num_samples, seed=3, batch_size=6)
    shared = generate(model, tok, prompts, **kwargs)
    assert calls[-1] >= 32  # the path under test ran
    monkeypatch.setattr(gen_module, "shared_prefix_length", lambda lists: 0)
    whole = generate(model, tok, prompts, **kwargs)
    assert [g.token_ids for g in shared] == [g.token_ids for g in whole]
    for a, b in zip(shared, whole):
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("vocab, top_p", [(49152, 1.0), (1000, 1.0), (1000, 0.8), (384, 1.0)])
def test_two_level_cdf_inversion_picks_what_a_full_cumulative_sum_picks(vocab, top_p):
    """Blocked inverse-CDF sampling draws, for the same uniform draws, the tokens of a float64 cumulative
    sum over the whole vocabulary (vocabularies that are and are not a multiple of the block); entries
    of zero probability (masked logits, outside the nucleus) are never drawn."""
    from tulu_lab.generate import sample_next

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, vocab, generator=g) * 3
    logits[:, ::7] = float("-inf")
    tokens, logprobs = sample_next(logits, 0.9, top_p, torch.Generator().manual_seed(1))
    scaled = logits / 0.9
    probs = torch.softmax(scaled, -1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        sorted_probs = sorted_probs.masked_fill(sorted_probs.cumsum(-1) - sorted_probs > top_p, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    cdf = probs.double().cumsum(-1)
    draw = torch.rand((64, 1), generator=torch.Generator().manual_seed(1), dtype=torch.float64) * cdf[:, -1:]
    expected = torch.searchsorted(cdf, draw, right=True).squeeze(-1)
    assert torch.equal(tokens, expected)
    assert bool((probs.gather(1, tokens[:, None]) > 0).all())
    torch.testing.assert_close(logprobs, torch.log_softmax(scaled, -1).gather(1, tokens[:, None]).squeeze(-1))

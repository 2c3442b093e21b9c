"""Batched sampling: log-probs, EOS handling, batching invariance, seeding."""

import pytest
import torch

from tulu_lab.generate import generate, sample_next

PROMPTS = [[{"role": "user", "content": "What is 3 + 4?"}],
           [{"role": "user", "content": "Tom has 12 apples and buys 5 more. How many apples does he have?"}],
           "<|user|>\nHi\n<|assistant|>\n"]


def _reference_logprobs(model, tok, gen, temperature):
    ids = tok(gen.prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    full = torch.cat([ids, torch.tensor([gen.token_ids])], dim=-1)
    with torch.no_grad():
        logits = model(full).logits[0, ids.shape[1] - 1:-1].float()
    t = temperature if temperature > 0 else 1.0
    return torch.log_softmax(logits / t, -1).gather(-1, torch.tensor(gen.token_ids)[:, None]).squeeze(-1)


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_logprobs_match_a_full_forward_pass(tiny, temperature):
    model, tok = tiny
    gens = generate(model, tok, PROMPTS, max_new_tokens=12, temperature=temperature, num_samples=2,
                    batch_size=4, seed=3)
    assert len(gens) == 6 and [g.prompt_index for g in gens] == [0, 0, 1, 1, 2, 2]
    for g in gens:
        ref = _reference_logprobs(model, tok, g, temperature)
        assert torch.allclose(ref, torch.tensor(g.logprobs), atol=1e-4)


def test_greedy_is_independent_of_batching(tiny):
    model, tok = tiny
    together = generate(model, tok, PROMPTS, max_new_tokens=10, batch_size=8)
    alone = [generate(model, tok, [p], max_new_tokens=10)[0] for p in PROMPTS]
    assert [g.token_ids for g in together] == [g.token_ids for g in alone]


def test_seeded_sampling_is_reproducible(tiny):
    model, tok = tiny
    a = generate(model, tok, PROMPTS, max_new_tokens=8, temperature=1.0, num_samples=3, seed=7)
    b = generate(model, tok, PROMPTS, max_new_tokens=8, temperature=1.0, num_samples=3, seed=7)
    c = generate(model, tok, PROMPTS, max_new_tokens=8, temperature=1.0, num_samples=3, seed=8)
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    assert [g.token_ids for g in a] != [g.token_ids for g in c]


def test_eos_stops_and_is_reported(tiny):
    model, tok = tiny
    # Make EOS the most likely token everywhere by boosting its output bias.
    head = model.get_output_embeddings()
    saved = head.weight.data.clone()
    try:
        head.weight.data[tok.eos_token_id] *= 0
        head.weight.data[tok.eos_token_id] += model.model.norm.weight.data.sign() * 5
        gens = generate(model, tok, PROMPTS, max_new_tokens=10)
    finally:
        head.weight.data.copy_(saved)
    assert all(g.stopped and g.finish_reason == "eos" for g in gens)
    assert all(g.token_ids[-1] == tok.eos_token_id and tok.eos_token not in g.text for g in gens)
    long = generate(model, tok, PROMPTS, max_new_tokens=3)
    assert all(len(g.token_ids) <= 3 for g in long)
    assert all(g.stopped == (g.finish_reason == "eos") for g in long)


def test_top_p_keeps_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    g = torch.Generator().manual_seed(0)
    seen = {int(sample_next(logits, 1.0, 0.7, g)[0]) for _ in range(200)}
    assert seen == {0, 1}
    tokens, lp = sample_next(logits, 1.0, 0.7, torch.Generator().manual_seed(1))
    assert torch.allclose(lp.exp(), torch.tensor([0.5, 0.3])[tokens], atol=1e-6)


def test_stop_strings_cut_the_text(tiny):
    model, tok = tiny
    gens = generate(model, tok, PROMPTS, max_new_tokens=16, temperature=1.0, seed=0)
    some = next(g for g in gens if len(g.text) > 3)
    marker = some.text[1:3]
    again = generate(model, tok, [PROMPTS[some.prompt_index]], max_new_tokens=16, temperature=1.0, seed=0,
                     stop=[marker])
    assert marker not in again[0].text or again[0].finish_reason == "length"


def test_bad_arguments(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, tok, PROMPTS, max_new_tokens=0)
    with pytest.raises(ValueError, match="top_p"):
        generate(model, tok, PROMPTS, top_p=0)


@pytest.mark.slow
def test_embedded_model_answers_in_tulu_format(embedded):
    from tulu_lab.chat import install_tulu_template
    model, tok = embedded
    install_tulu_template(tok)
    gens = generate(model, tok, [[{"role": "user", "content": "What is the capital of France?"}]],
                    max_new_tokens=32)
    assert "Paris" in gens[0].text

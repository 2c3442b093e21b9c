"""tulu_lab.llama_decode: the fused-weight, static-cache forward computes what the model computes.

* logits: prefill of left-padded prompts and decode steps equal the model's own full forward (1e-5);
* sampling through it gives the tokens of the model's own forward and log-probs equal to 1e-5, with
  LoRA adapters merged, with shared prefixes, several samples per prompt and rows dropped at EOS;
* it is used by default for float32 Llama models and refused where it would not be exact (bf16
  weights, autocast, other architectures), leaving the model's parameters untouched.
"""

import pytest
import torch

from tulu_lab import generate as gen_module
from tulu_lab import llama_decode
from tulu_lab.generate import generate
from tulu_lab.llama_decode import decoder_for

PROMPTS = [[{"role": "user", "content": "What is 3 + 4?"}],
           [{"role": "user", "content": "Tom has 12 apples and buys 5 more. How many apples does he have?"}],
           "<|user|>\nHi\n<|assistant|>\n"]


@pytest.fixture()
def lora_tiny(tiny):
    from tulu_lab.models import attach_lora, lora_config

    model, tok = tiny
    peft_model = attach_lora(model, lora_config(r=4, alpha=8, dropout=0.0, target_modules="all-linear"))
    g = torch.Generator().manual_seed(0)
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:  # fresh B is zero: make the adapters change the output
            p.data = torch.randn(p.shape, generator=g) * 0.05
    peft_model.eval()
    yield peft_model, tok
    peft_model.unload()


def _full_logits(model, ids, mask):
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, position_ids=positions).logits


@pytest.mark.parametrize("with_lora", [False, True])
def test_prefill_and_steps_match_the_full_forward(tiny, lora_tiny, with_lora):
    model, tok = lora_tiny if with_lora else tiny
    model.eval()
    decoder = decoder_for(model)
    assert decoder is not None
    ids = torch.tensor([[0, 0, 5, 9, 13, 17], [6, 10, 14, 18, 22, 26]])  # row 0 left-padded
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    steps = 4
    cache = decoder.new_cache(2, ids.shape[1] + steps)
    key_mask = torch.cat([mask, mask.new_ones((2, steps))], -1)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = decoder.forward(ids, positions, cache, key_mask)
    seq, seq_mask = ids, mask
    for step in range(steps + 1):
        reference = _full_logits(model, seq, seq_mask)[:, -1]
        torch.testing.assert_close(logits, reference, atol=1e-5, rtol=1e-5)
        if step == steps:
            break
        nxt = logits.argmax(-1, keepdim=True)
        seq, seq_mask = torch.cat([seq, nxt], -1), torch.cat([seq_mask, torch.ones_like(nxt)], -1)
        logits = decoder.forward(nxt, positions[:, -1:] + 1 + step, cache, key_mask)
    assert cache.length == ids.shape[1] + steps
    with pytest.raises(ValueError, match="KV cache full"):
        decoder.forward(nxt, positions[:, -1:] + 9, cache, torch.ones((2, 20), dtype=torch.long))


def _both(model, tok, prompts, **kwargs):
    return (generate(model, tok, prompts, fast_decoder=True, **kwargs),
            generate(model, tok, prompts, fast_decoder=False, **kwargs))


def _assert_same(fast, plain):
    assert [g.token_ids for g in fast] == [g.token_ids for g in plain]
    assert [g.finish_reason for g in fast] == [g.finish_reason for g in plain]
    for a, b in zip(fast, plain):
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("temperature, num_samples", [(0.0, 1), (1.0, 3)])
def test_sampling_through_the_decoder_matches_the_model(lora_tiny, monkeypatch, temperature, num_samples):
    model, tok = lora_tiny
    calls = []
    original = llama_decode.LlamaDecoder.forward
    monkeypatch.setattr(llama_decode.LlamaDecoder, "forward",
                        lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast, plain = _both(model, tok, PROMPTS, max_new_tokens=12, temperature=temperature, num_samples=num_samples,
                        seed=4, batch_size=6)
    assert len(calls) >= 12  # the decoder ran: prefill + steps (the plain run does not call it)
    _assert_same(fast, plain)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_rows_dropped_at_eos_and_shared_prefix(tiny, monkeypatch):
    """Rows that end early leave the batch (cache rows selected; weights packed for the batch, then
    zero-padded products, then packed again); a shared few-shot prefix is prefilled once and copied:
    tokens and log-probs still those of the model's own forward."""
    model, tok = tiny
    monkeypatch.setattr(gen_module, "PACK_MIN_NEW_TOKENS", 1)
    packs = []
    original_pack = llama_decode.LlamaDecoder.pack
    monkeypatch.setattr(llama_decode.LlamaDecoder, "pack",
                        lambda self, rows: packs.append(rows) or original_pack(self, rows))
    eos = tok.eos_token_id
    head = model.get_output_embeddings()
    saved = head.weight.data.clone()
    exemplars = " ".join(f"Question: what is {i} + {i}? Answer: {2 * i}." for i in range(1, 9))
    prompts = [f"{exemplars} Question: what is {q}? Answer:" for q in ("3 + 4", "12 + 5 + 6", "1", "7")]
    try:  # EOS likely but not certain: some rows end early at temperature 1
        head.weight.data[eos] = model.model.norm.weight.data.sign() * 0.6
        fast, plain = _both(model, tok, prompts, max_new_tokens=20, temperature=1.0, num_samples=3, seed=2,
                            batch_size=12)
    finally:
        head.weight.data.copy_(saved)
    assert packs and max(packs) <= 12  # decode steps ran through the packing path
    lengths = {len(g.token_ids) for g in fast}
    assert any(g.finish_reason == "eos" for g in fast) and len(lengths) > 1  # the paths under test ran
    _assert_same(fast, plain)


def test_refused_where_it_would_not_be_exact(tiny):
    model, tok = tiny
    assert decoder_for(model) is not None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert decoder_for(model) is None
    half = model.to(torch.bfloat16)
    assert decoder_for(half) is None
    model.float()
    model.config.model_type = "not-llama"
    try:
        assert decoder_for(model) is None
    finally:
        model.config.model_type = "llama"


def test_merged_weights_are_the_adapted_projection(lora_tiny):
    model, _ = lora_tiny
    decoder = decoder_for(model)
    attn = model.get_base_model().model.layers[0].self_attn
    x = torch.randn(3, attn.q_proj.in_features)
    with torch.no_grad():
        expected = torch.cat([attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)], -1)
    torch.testing.assert_close(torch.nn.functional.linear(x, decoder.layers[0].qkv), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not llama_decode._mkl_packing_available(), reason="torch built without MKL")
def test_packed_weights_give_the_plain_products(lora_tiny, monkeypatch):
    """Decode steps from MKL-packed weights: the batch they were packed for, fewer rows (zero-padded)
    and half as many or fewer (plain weights) all give the plain forward's logits."""
    model, _ = lora_tiny
    decoder = decoder_for(model)
    ids = torch.tensor([[5, 9, 13], [6, 10, 14], [7, 11, 15], [8, 12, 16]])
    mask = torch.ones((4, 8), dtype=torch.long)
    positions = torch.arange(3).repeat(4, 1)
    plain_calls = []
    linear = torch.nn.functional.linear
    monkeypatch.setattr(llama_decode.F, "linear", lambda *a, **k: plain_calls.append(1) or linear(*a, **k))

    def step_logits(rows: int) -> tuple[torch.Tensor, int]:
        cache = decoder.new_cache(rows, 8)
        decoder.forward(ids[:rows], positions[:rows], cache, mask[:rows])
        plain_calls.clear()
        logits = decoder.forward(ids[:rows, -1:], positions[:rows, -1:] + 1, cache, mask[:rows])
        return logits, len(plain_calls)

    plain = {rows: step_logits(rows) for rows in (4, 3, 2)}
    assert all(n == 1 + 4 * len(decoder.layers) for _, n in plain.values())
    decoder.pack(4)
    assert decoder.packed_rows == 4 and len(decoder.packed) == 1 + 4 * len(decoder.layers)
    packed = {rows: step_logits(rows) for rows in (4, 3, 2)}
    assert [packed[rows][1] for rows in (4, 3, 2)] == [0, 0, 1 + 4 * len(decoder.layers)]
    for rows in plain:
        torch.testing.assert_close(packed[rows][0], plain[rows][0], atol=1e-5, rtol=1e-5)
    decoder.pack(3)  # still served by the weights packed for 4 rows
    assert decoder.packed_rows == 4
    decoder.pack(2)  # half or fewer: packed again
    assert decoder.packed_rows == 2

"""The pure helpers of benchmarks/rlvr_vs_trl.py: prompt order, TRL reward, roofline, curve comparison."""

import importlib.util
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("rlvr_vs_trl", ROOT / "benchmarks" / "rlvr_vs_trl.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_trl_sampler_draws_our_prompts_step_by_step(bench):
    """Laid out in trl_row_order, TRL's unshuffled sampler gives each step the prompts ours draws."""
    from trl.trainer.utils import RepeatSampler

    from tulu_lab.rlvr import _step_prompt_indices

    n_rows, steps, seed, k = 11, 9, 3, 4  # 9 steps x 2 prompts > 11 rows: crosses into a second pass
    order = bench.trl_row_order(n_rows, steps, seed, prompts_per_step=2)
    sampler = RepeatSampler(order, mini_repeat_count=k, batch_size=2, repeat_count=2, shuffle=False)
    drawn = [order[i] for i in sampler]  # dataset position -> our row
    per_step = 2 * k * 2                 # 2 prompts x k samples, repeated for 2 accumulation steps
    for step in range(steps):
        chunk = drawn[step * per_step:(step + 1) * per_step]
        assert sorted(set(chunk)) == sorted(_step_prompt_indices(n_rows, 2, step, seed))
        assert all(chunk.count(row) == 2 * k for row in set(chunk))


def test_non_stop_penalty_replaces_the_score(bench):
    seen = []

    def base(prompts, completions, ground_truth, **kwargs):
        return [10.0 if c == truth else 0.0 for c, truth in zip(completions, ground_truth)]

    reward = bench.with_non_stop_penalty(base, eos_ids=[2, 7], penalty=-10.0, record=lambda s, n: seen.append((s, n)))
    scores = reward(prompts=["p"] * 4, completions=["4", "4", "5", "4"],
                    completion_ids=[[5, 2], [5, 6], [5, 7], [5, 9, 9]], ground_truth=["4"] * 4)
    assert scores == [10.0, -10.0, 0.0, -10.0]  # ended with EOS: the verifier's score; cut off: -10
    assert seen == [(scores, [2, 2, 2, 3])]
    with pytest.raises(ValueError, match="completion_ids"):
        reward(prompts=["p"], completions=["4"], completion_ids=[], ground_truth=["4"])


def test_roofline_by_hand(bench):
    """One prompt of 2 tokens, two responses of 1 and 3 tokens; round numbers make it checkable.

    per-token FLOPs 2 x 10 = 20; head 2 x 5 = 10 per response token; attention 4 x 1 x 1 x context.
    prefill: 2 x 20 + 4 x (1 + 2) = 52.
    decode steps t = 1, 2 (row 2 only): memory 100 + (2 + t) x 8 bytes at 10 B/s (FLOPs 20 + 10 + 4 (2 + t)
    at 1000/s take far less) -> 12.4 + 13.2 = 25.6 s.
    sequences: row 1 (3 tokens) 3 x 20 + 10 + 4 x 6 = 94; row 2 (5 tokens) 5 x 20 + 30 + 4 x 15 = 190;
    reference 284, train 568.
    """
    model = bench.ModelShape(parameter_bytes=100, linear_params=10, head_params=5, layers=1, attention_width=1,
                             kv_bytes_per_token=8)
    shape = bench.StepShape(prompt_lens=[2, 2], response_lens=[1, 3], group_size=2)
    parts = bench.roofline_seconds(model, shape, matmul_flops=1000.0, bandwidth=10.0)
    assert parts["prefill"] == pytest.approx(0.052)
    assert parts["decode"] == pytest.approx(25.6)
    assert parts["reference"] == pytest.approx(0.284)
    assert parts["train"] == pytest.approx(0.568)
    assert parts["total"] == pytest.approx(0.052 + 25.6 + 0.284 + 0.568)
    with pytest.raises(ValueError, match="prompt length"):
        bench.roofline_seconds(model, bench.StepShape([2], [1, 3], 2), 1000.0, 10.0)


def test_curve_comparison(bench):
    same = [0.0, 1.0, 2.0, 1.0, 0.0, 1.0, 2.0, 1.0]
    c = bench.curves_overlap(same, same)
    assert c["z"] == 0.0 and c["max_gap_in_noise"] == 0.0
    shifted = [v + 10.0 for v in same]
    far = bench.curves_overlap(same, shifted)
    assert far["z"] < -10 and far["max_gap_in_noise"] > 10
    assert math.isclose(far["mean_b"] - far["mean_a"], 10.0)


def test_variant_names(bench):
    assert bench.split_variant("fp32-no-gc@1", 2) == ("fp32-no-gc", 1)
    assert bench.split_variant("default", 2) == ("default", 2)
    for bad in ("fast", "no-gc@0", "no-gc@x"):
        with pytest.raises(ValueError):
            bench.split_variant(bad, 2)
    assert all(bench.split_variant(v, 2) for v in bench.default_trl_variants(True) + bench.default_trl_variants(False))


def test_peak_rss_is_read(bench):
    assert bench.vm_hwm_bytes() > 10 * 2 ** 20


def test_cpu_405b_layer_benchmark_on_the_tiny_shape(capsys):
    """The CPU layer benchmark's whole path (meta build, NF4 one linear at a time, shape reuse, timing)
    on a tiny shape: bytes held agree with plan_memory's per-layer figure, layers hold their own tensors."""
    pytest.importorskip("bitsandbytes")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import layer_405b_cpu
        from gpu_405b_layer import layer_config
    finally:
        sys.path.pop(0)
    import torch

    assert layer_405b_cpu.main(["--tiny", "--prefill-tokens", "4", "--decode-steps", "1", "--prefill-repeats", "1"]) == 0
    assert "(+0.00%, OK)" in capsys.readouterr().out
    config = layer_config(True, 2)
    by_shape = {}
    first = layer_405b_cpu.build_layer(config, 0, True, torch.Generator().manual_seed(0), by_shape)
    second = layer_405b_cpu.build_layer(config, 1, True, torch.Generator().manual_seed(0), by_shape)
    a, b = first.mlp.down_proj.weight, second.mlp.down_proj.weight
    assert a.data_ptr() != b.data_ptr() and type(b).__name__ == "Params4bit" and second.self_attn.layer_idx == 1


@pytest.mark.parametrize("double_quant", [True, False])
def test_nf4_by_row_chunks_equals_quantising_the_whole_matrix(monkeypatch, double_quant):
    pytest.importorskip("bitsandbytes")
    import bitsandbytes.functional as F
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import layer_405b_cpu
    finally:
        sys.path.pop(0)
    matrix = torch.randn(300, 256, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    rows = iter(matrix.split(7 * 1024 // 256))  # 28 rows per piece: many pieces, the last one short
    monkeypatch.setattr(layer_405b_cpu, "CHUNK_ELEMENTS", 7 * 1024)
    packed, state = layer_405b_cpu.nf4_by_row_chunks(300, 256, double_quant, lambda n, cols: next(rows))
    whole, expected = F.quantize_4bit(matrix, blocksize=64, compress_statistics=double_quant, quant_type="nf4")
    assert torch.equal(packed, whole) and torch.equal(state.absmax, expected.absmax)
    assert state.shape == expected.shape and state.blocksize == expected.blocksize
    if double_quant:
        assert torch.equal(state.offset, expected.offset) and torch.equal(state.state2.absmax, expected.state2.absmax)
    assert torch.equal(F.dequantize_4bit(packed, state), F.dequantize_4bit(whole, expected))

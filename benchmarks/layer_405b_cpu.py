"""Llama 3.1 405B decoder layers in NF4 (double quant) on the CPU: bytes held against the planner,
prefill and decode time per layer.

The CPU sibling of ``gpu_405b_layer.py``, for machines without a GPU. Builds ``--layers`` decoder layers
of the exact 405B shape (hidden 16384, 128 heads, 8 KV heads, MLP 53248) with random weights. Each layer
is created on the meta device and its linear layers are materialised ONE AT A TIME, and each of those
a few million weights at a time: random bf16 rows quantised to NF4 by bitsandbytes' own kernel, then
the absmax values double-quantised in one piece (:func:`nf4_by_row_chunks`; equal to quantising the
whole matrix at once, tested). bitsandbytes' CPU pass over a whole 16384 x 53248 matrix would hold
about 12 GB of temporaries; this way the peak while building is the NF4 layers plus a few hundred MB
(4.4 GB for 2 layers, measured). The forward passes then peak near 10.6 GB: bitsandbytes' CPU path
dequantises each 4-bit weight (up to 16384 x 53248) for its matmul.

bitsandbytes quantises about 25M weights/s per core here, so by default each distinct shape
(q/o, k/v, gate/up, down) is quantised once and later linears of that shape get a copy of its packed
weights and quantisation state: every linear still holds its own tensors (the bytes are real), only the
random values repeat, which changes neither the bytes nor the time of a forward pass.
``--fresh-weights`` quantises every linear (about 3x longer).

Then it reports
1. bytes held per layer (parameters, buffers and bitsandbytes' quantisation state, counted once per
   storage: ``tulu_lab.memory.measure_model_bytes``) against ``plan_memory``'s per-layer figure, taken as
   the difference between plans of the same config with 2 and 1 layers (must agree within 2%);
2. the prefill time per layer for ``--prefill-tokens`` tokens at batch 1 (short by default: every
   forward dequantises each 4-bit weight on the CPU);
3. the decode time per layer per token at batch 1 with a KV cache of ``--decode-context`` tokens.
(prefill: the fastest of ``--prefill-repeats`` runs; decode: the mean of ``--decode-steps`` after one
untimed step.)

    python benchmarks/layer_405b_cpu.py                 # 2 layers, about 4-5 minutes on a busy 2-core CPU
    python benchmarks/layer_405b_cpu.py --tiny          # the same path on a tiny shape, seconds

Prints one SUMMARY line; exit status 1 when the bytes differ from the plan by more than 2%.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_405b_layer import TOLERANCE, layer_config, run_layers  # noqa: E402

from tulu_lab import memory  # noqa: E402


def planned_bytes_per_layer(config, double_quant: bool) -> int:
    """``plan_memory``'s weights for the config at 2 layers minus at 1 layer: one decoder layer."""
    import copy

    totals = []
    for layers in (1, 2):
        cut = copy.deepcopy(config)
        cut.num_hidden_layers = layers
        plan = memory.plan_memory(cut, quant="nf4", double_quant=double_quant, gpus="1xH200", context_tokens=1)
        totals.append(plan.weights_bytes)
    return totals[1] - totals[0]


def _peak_rss_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports kB


def _rss_bytes() -> int:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


CHUNK_ELEMENTS = 32 * 1024 * 1024  # weights generated and quantised per piece (bnb's CPU pass needs ~14x)
NF4_BLOCK = 64


def nf4_by_row_chunks(rows: int, cols: int, double_quant: bool, make_rows):
    """NF4 (+ double quant) of a ``rows x cols`` bf16 matrix whose rows come from ``make_rows(n, cols)``
    a few million weights at a time, without the whole bf16 matrix or bitsandbytes' ~14x transient
    for it ever existing. The result is what ``bitsandbytes.functional.quantize_4bit`` gives for the
    whole matrix: its first level works on 64-weight blocks, which row chunks do not split when
    ``cols`` is a multiple of 64; the absmax values are then double-quantised in one piece, as there."""
    import bitsandbytes.functional as F
    import torch

    if cols % NF4_BLOCK:
        raise ValueError(f"nf4_by_row_chunks: cols = {cols} is not a multiple of the NF4 block {NF4_BLOCK}")
    step = max(1, CHUNK_ELEMENTS // cols)
    packed, absmax = [], []
    for start in range(0, rows, step):
        chunk = make_rows(min(step, rows - start), cols)
        out, block_max = torch.ops.bitsandbytes.quantize_4bit.default(chunk, NF4_BLOCK, "nf4", torch.uint8)
        packed.append(out)
        absmax.append(block_max)
        del chunk
    packed, absmax = torch.cat(packed), torch.cat(absmax)
    facts = dict(shape=torch.Size((rows, cols)), dtype=torch.bfloat16, blocksize=NF4_BLOCK,
                 code=F.get_4bit_type("nf4", device=packed.device), quant_type="nf4")
    if not double_quant:
        return packed, F.QuantState(absmax=absmax, **facts)
    offset = absmax.mean()
    quantised_absmax, nested = F.quantize_blockwise(absmax - offset, blocksize=256)
    return packed, F.QuantState(absmax=quantised_absmax, offset=offset, state2=nested, **facts)


def build_layer(config, index: int, double_quant: bool, generator, by_shape: dict | None = None):
    """One decoder layer on the CPU, each linear quantised to NF4 piece by piece (:func:`nf4_by_row_chunks`).
    ``by_shape``: quantised linears to copy from, by (out, in) shape (filled as they are made)."""
    import copy

    import bitsandbytes as bnb
    import torch
    from torch import nn
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    def random_rows(n: int, cols: int):
        return torch.empty(n, cols, dtype=torch.bfloat16).normal_(0.0, 0.02, generator=generator)

    with torch.device("meta"):
        layer = LlamaDecoderLayer(config, layer_idx=index).to(torch.bfloat16)
    for parent in list(layer.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not nn.Linear:
                continue
            shape = (child.out_features, child.in_features)
            if by_shape is not None and shape in by_shape:
                setattr(parent, name, copy.deepcopy(by_shape[shape]))  # its own packed bytes and state
                continue
            quantised = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=False,
                                          compute_dtype=torch.bfloat16, compress_statistics=double_quant,
                                          quant_type="nf4", device="meta")
            packed, state = nf4_by_row_chunks(*shape, double_quant, random_rows)
            quantised.weight = bnb.nn.Params4bit(packed, requires_grad=False, quant_state=state,
                                                 blocksize=NF4_BLOCK, compress_statistics=double_quant,
                                                 quant_type="nf4", quant_storage=torch.uint8, module=quantised,
                                                 bnb_quantized=True)
            quantised.quant_state = state
            setattr(parent, name, quantised)
            if by_shape is not None:
                by_shape[shape] = quantised
    # what is left on meta: the two RMSNorm weights
    for module in layer.modules():
        for name, param in list(module.named_parameters(recurse=False)):
            if param.device.type == "meta":
                setattr(module, name, nn.Parameter(torch.ones(param.shape, dtype=torch.bfloat16),
                                                   requires_grad=False))
    return layer.eval()


def benchmark(args) -> int:
    import torch
    from transformers import DynamicCache
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    double_quant = not args.no_double_quant
    config = layer_config(args.tiny, args.layers)
    generator = torch.Generator().manual_seed(0)
    planned = planned_bytes_per_layer(config, double_quant)

    layers, held, rss = [], [], []
    by_shape = None if args.fresh_weights else {}
    for index in range(args.layers):
        started, rss_before = time.perf_counter(), _rss_bytes()
        layer = build_layer(config, index, double_quant, generator, by_shape)
        layers.append(layer)
        held.append(memory.measure_model_bytes(layer))
        rss.append(_rss_bytes() - rss_before)
        print(f"layer {index}: built and quantised in {time.perf_counter() - started:.0f} s; holds "
              f"{held[-1] / 1e9:.4f} GB (RSS grew {rss[-1] / 1e9:.3f} GB)", flush=True)
    per_layer = sum(held) / len(held)
    error = per_layer / planned - 1
    peak_built = _peak_rss_bytes()

    rotary = LlamaRotaryEmbedding(config)
    hidden = config.hidden_size
    with torch.inference_mode():
        prompt = torch.randn(1, args.prefill_tokens, hidden, dtype=torch.bfloat16) * 0.1
        run_layers(layers[:1], rotary, prompt[:, :1])  # warm-up
        prefill_runs = []
        for _ in range(args.prefill_repeats):
            started = time.perf_counter()
            run_layers(layers, rotary, prompt)
            prefill_runs.append((time.perf_counter() - started) / len(layers))
        prefill_s = min(prefill_runs)
        print("prefill s/layer per run: " + ", ".join(f"{t:.2f}" for t in prefill_runs), flush=True)

        cache = DynamicCache(config=config)
        run_layers(layers, rotary, torch.randn(1, args.decode_context, hidden, dtype=torch.bfloat16) * 0.1, cache)
        step = torch.randn(1, 1, hidden, dtype=torch.bfloat16) * 0.1
        run_layers(layers, rotary, step, cache)  # untimed first step
        started = time.perf_counter()
        for _ in range(args.decode_steps):
            run_layers(layers, rotary, step, cache)
        decode_s = (time.perf_counter() - started) / args.decode_steps / len(layers)

    ok = abs(error) <= TOLERANCE
    shape = "tiny" if args.tiny else "405B"
    print(f"peak RSS: {peak_built / 1e9:.2f} GB once built, {_peak_rss_bytes() / 1e9:.2f} GB after the forward "
          f"passes (bitsandbytes' CPU path dequantises each 4-bit weight for its matmul)")
    print(f"SUMMARY {shape} NF4{'+dq' if double_quant else ''} {len(layers)} layers on cpu "
          f"({torch.get_num_threads()} threads): held/layer {per_layer / 1e9:.4f} GB vs plan_memory "
          f"{planned / 1e9:.4f} GB ({100 * error:+.2f}%, {'OK' if ok else 'FAIL'}) | prefill "
          f"{args.prefill_tokens} tok: {prefill_s:.2f} s/layer | decode b1 (context {args.decode_context}): "
          f"{1000 * decode_s:.0f} ms/layer/token")
    return 0 if ok else 1


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=2, help="decoder layers to build (default 2)")
    parser.add_argument("--prefill-tokens", type=int, default=16, help="prefill length (default 16)")
    parser.add_argument("--prefill-repeats", type=int, default=2, help="prefills timed; the fastest is reported")
    parser.add_argument("--decode-context", type=int, default=16, help="KV cache length before decoding")
    parser.add_argument("--decode-steps", type=int, default=3, help="decode steps timed")
    parser.add_argument("--no-double-quant", action="store_true", help="plain NF4 (4.5 bits/weight)")
    parser.add_argument("--tiny", action="store_true", help="tiny shape of the same family (seconds)")
    parser.add_argument("--fresh-weights", action="store_true",
                        help="quantise every linear from its own random weights (about 3x longer)")
    args = parser.parse_args(argv)
    for name in ("layers", "prefill_tokens", "prefill_repeats", "decode_context", "decode_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    return args


def main(argv=None) -> int:
    return benchmark(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

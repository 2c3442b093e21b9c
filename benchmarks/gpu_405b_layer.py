"""Llama 3.1 405B decoder layers in NF4 on one GPU: memory against the planner, prefill and decode speed.

Builds ``--layers`` decoder layers (LlamaDecoderLayer) of the exact 405B shape (hidden 16384, 128 heads,
8 KV heads, MLP 53248) with random bf16 weights, quantises every linear layer to NF4 (with double quant
unless --no-double-quant) through bitsandbytes' Linear4bit, then

1. measures the bytes per layer (torch.cuda.memory_allocated before and after) and compares them with
   tulu_lab.memory's per-layer figure (must agree within 2%);
2. times a prefill of --prefill-tokens tokens (batch 1) through the layers;
3. times decoding with a KV cache at batch 1 and 16 (--decode-steps tokens after a short prompt).

Prints one summary line at the end. A full 126-layer model runs the layers in sequence, so per-layer
times scale: the summary extrapolates to 126 layers (excluding embeddings, head and inter-GPU hops).

    python benchmarks/gpu_405b_layer.py                 # 4 layers on cuda:0, about 1-2 minutes on an H200
    python benchmarks/gpu_405b_layer.py --dry-run       # planner-side arithmetic only, no GPU needed
    python benchmarks/gpu_405b_layer.py --device cpu --tiny   # the whole path on a tiny shape, on CPU
"""

from __future__ import annotations

import argparse
import inspect
import sys
import time

from tulu_lab import memory

LAYERS_405B = 126
TOLERANCE = 0.02


def layer_config(tiny: bool, num_layers: int):
    """The 405B preset's config (or a tiny one of the same family), cut to ``num_layers`` layers."""
    _, config = memory.resolve_config("llama-3.1-405b")
    if tiny:
        config.hidden_size, config.intermediate_size = 256, 768
        config.num_attention_heads, config.num_key_value_heads, config.head_dim = 4, 2, 64
        config.vocab_size = 1024
    config.num_hidden_layers = num_layers
    config._attn_implementation = "sdpa"
    return config


def planned_layer_bytes(config, double_quant: bool) -> int:
    """The planner's bytes for one decoder layer (NF4 linear layers + bf16 norms)."""
    census = memory._census(config)
    settings = memory._settings("nf4", double_quant, None, 1, 1, None, False, True)
    layer = next(u for u in census.units if u.is_layer)
    costs = memory._unit_costs(layer, census, settings)
    return costs["linear_weights"] + costs["other_weights"]


def dry_run(args) -> int:
    config = layer_config(args.tiny, args.layers)
    per_layer = planned_layer_bytes(config, not args.no_double_quant)
    kv_token_layer = 2 * config.num_key_value_heads * (config.head_dim or config.hidden_size //
                                                       config.num_attention_heads) * 2
    full = memory.plan_memory("llama-3.1-405b", quant="nf4", double_quant=not args.no_double_quant,
                              gpus="1xH200", context_tokens=args.prefill_tokens)
    print(f"planned NF4{'+dq' if not args.no_double_quant else ''} bytes per layer: {per_layer / 1e9:.3f} GB; "
          f"{args.layers} layers: {args.layers * per_layer / 1e9:.2f} GB; "
          f"KV cache per token per layer: {kv_token_layer} B")
    print(f"full 405B plan: weights {full.weights_bytes / 1e9:.1f} GB; needs {full.needs_text()}")
    return 0


def quantise_linears(layer, device, double_quant: bool) -> None:
    """Replace every nn.Linear in ``layer`` by a bitsandbytes Linear4bit (NF4), quantised on ``device``."""
    import bitsandbytes as bnb
    import torch
    from torch import nn

    for parent in list(layer.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not nn.Linear:
                continue
            quantised = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                          compute_dtype=torch.bfloat16, compress_statistics=double_quant,
                                          quant_type="nf4", device="meta")
            weight = bnb.nn.Params4bit(child.weight.data, requires_grad=False, compress_statistics=double_quant,
                                       quant_type="nf4", module=quantised)
            quantised.weight = weight.to(device)  # Params4bit quantises when moved to a real device
            if child.bias is not None:
                quantised.bias = nn.Parameter(child.bias.data.to(device), requires_grad=False)
            setattr(parent, name, quantised)
            del child, weight


def build_layers(config, device, double_quant: bool):
    """Random-weight decoder layers, built one at a time on ``device`` and quantised in place."""
    import torch
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    layers = []
    for index in range(config.num_hidden_layers):
        with torch.device("meta"):
            layer = LlamaDecoderLayer(config, layer_idx=index).to(torch.bfloat16)
        layer = layer.to_empty(device=device)
        with torch.no_grad():
            for name, param in layer.named_parameters():
                if name.endswith("layernorm.weight"):
                    param.fill_(1.0)
                else:
                    param.normal_(0.0, 0.02)
        quantise_linears(layer, device, double_quant)
        layer.eval()
        layers.append(layer)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return layers


def _cache_kwarg(layer) -> str:
    """transformers 5 calls the cache argument ``cache``; earlier versions ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(layer.forward).parameters else "past_key_values"


def run_layers(layers, rotary, hidden, cache=None):
    import torch

    past = cache.get_seq_length() if cache is not None else 0
    positions = torch.arange(past, past + hidden.shape[1], device=hidden.device).unsqueeze(0)
    position_embeddings = rotary(hidden, positions)
    cache_kw = _cache_kwarg(layers[0])
    for layer in layers:
        hidden = layer(hidden, position_ids=positions, position_embeddings=position_embeddings,
                       use_cache=cache is not None, **{cache_kw: cache})
    return hidden


def timed(fn, device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - start


def benchmark(args) -> int:
    import torch
    from transformers import DynamicCache
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here: this benchmark needs a GPU (try --dry-run, or --device cpu --tiny)",
              file=sys.stderr)
        return 2
    double_quant = not args.no_double_quant
    config = layer_config(args.tiny, args.layers)
    torch.manual_seed(0)

    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated(device)
    started = time.perf_counter()
    layers = build_layers(config, device, double_quant)
    build_s = time.perf_counter() - started
    if device.type == "cuda":
        torch.cuda.empty_cache()
        measured = (torch.cuda.memory_allocated(device) - before) / len(layers)
    else:
        measured = sum(memory.measure_model_bytes(layer) for layer in layers) / len(layers)
    counted = sum(memory.measure_model_bytes(layer) for layer in layers) / len(layers)
    planned = planned_layer_bytes(config, double_quant)
    error = measured / planned - 1
    print(f"memory per layer: measured {measured / 1e9:.4f} GB (tensors counted: {counted / 1e9:.4f} GB), "
          f"planned {planned / 1e9:.4f} GB, error {100 * error:+.2f}% (build + quantise {build_s:.1f} s)")

    rotary = LlamaRotaryEmbedding(config).to(device)
    hidden_size = config.hidden_size
    results = {}
    with torch.inference_mode():
        prompt = torch.randn(1, args.prefill_tokens, hidden_size, device=device, dtype=torch.bfloat16) * 0.1
        run_layers(layers, rotary, prompt[:, :16])  # warm-up (kernels, cuBLAS workspace)
        _, prefill_s = timed(lambda: run_layers(layers, rotary, prompt), device)
        results["prefill_tok_s"] = args.prefill_tokens / prefill_s
        peak_note = ""
        for batch in (1, 16):
            cache = DynamicCache(config=config)
            context = torch.randn(batch, args.decode_context, hidden_size, device=device, dtype=torch.bfloat16) * 0.1
            run_layers(layers, rotary, context, cache)
            step = torch.randn(batch, 1, hidden_size, device=device, dtype=torch.bfloat16) * 0.1
            run_layers(layers, rotary, step, cache)  # warm-up of the decode kernels
            _, decode_s = timed(lambda: [run_layers(layers, rotary, step, cache)
                                         for _ in range(args.decode_steps)], device)
            results[f"decode_b{batch}_tok_s"] = batch * args.decode_steps / decode_s
            results[f"decode_b{batch}_ms_per_layer"] = 1000 * decode_s / args.decode_steps / len(layers)
        if device.type == "cuda":
            peak_note = f" peak {torch.cuda.max_memory_allocated(device) / 1e9:.1f} GB"

    ok = abs(error) <= TOLERANCE
    # Layers run in sequence, so a full-depth model is slower by 126 / layers (embeddings, head and
    # inter-GPU hops not included); only meaningful for the real shape.
    scale = len(layers) / LAYERS_405B

    def rate(key: str) -> str:
        value = results[key]
        return f"{value:.1f} tok/s" + ("" if args.tiny else f" ({value * scale:.2f} at 126 layers)")

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"SUMMARY {'tiny' if args.tiny else '405B'} NF4{'+dq' if double_quant else ''} {len(layers)} layers "
          f"on {where}: mem/layer {measured / 1e9:.3f} GB vs plan {planned / 1e9:.3f} GB "
          f"({100 * error:+.2f}%, {'OK' if ok else 'FAIL'}) | prefill {args.prefill_tokens} tok: "
          f"{rate('prefill_tok_s')} | decode b1 {rate('decode_b1_tok_s')}, b16 {rate('decode_b16_tok_s')}"
          f"{peak_note}")
    return 0 if ok else 1


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=4, help="decoder layers to build (default 4)")
    parser.add_argument("--device", default="cuda:0", help="torch device (default cuda:0)")
    parser.add_argument("--prefill-tokens", type=int, default=2048, help="prefill length (default 2048)")
    parser.add_argument("--decode-context", type=int, default=512, help="KV cache length before decoding")
    parser.add_argument("--decode-steps", type=int, default=32, help="decode steps timed per batch size")
    parser.add_argument("--no-double-quant", action="store_true", help="plain NF4 (4.5 bits/weight)")
    parser.add_argument("--tiny", action="store_true", help="tiny shape of the same family (for CPU checks)")
    parser.add_argument("--dry-run", action="store_true", help="print the planner's numbers only")
    args = parser.parse_args(argv)
    if args.layers < 1:
        parser.error(f"--layers must be at least 1, got {args.layers}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    return dry_run(args) if args.dry_run else benchmark(args)


if __name__ == "__main__":
    sys.exit(main())

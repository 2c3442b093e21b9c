"""Decode speed: tulu_lab.generate.generate against transformers' model.generate, and the decode roofline.

    python benchmarks/decode_throughput.py                                # batch 16, 64 x 96, 384 new tokens
    python benchmarks/decode_throughput.py --batches 16 --new-tokens 96 --repeats 2
    python benchmarks/decode_throughput.py --baseline /tmp/old_generate.py  # a second version of ours, alternated

The setting is an RLVR rollout's: the embedded SmolLM2-135M-Instruct in float32 (passed explicitly:
on a CPU with native bf16 ``load_model`` would pick bf16), rank-16 LoRA adapters on all seven
projections (B set to small random values so they change the output), synthetic GSM-style word
problems in the Tülu chat template, one distinct prompt per row, greedy, the same threads.

Every row decodes exactly ``--new-tokens`` tokens on both sides (EOS does not end a row: ours is
given no EOS id, ``model.generate`` gets ``min_new_tokens``), so every decode step runs the whole
batch and steps are comparable; ``--stop-at-eos`` measures the ordinary behaviour instead.

Per sampler and setting: tokens/s (rows x new tokens / wall time, prefill included) and ms per decode
step: (time of the run - time of the same sampler's run for one new token) / (new tokens - 1), so the
prefill and per-call costs of each sampler are left out of its steps.
On a shared machine the process's CPU time per step (divided by the threads) is printed too: it
leaves out the time the process waited for a core (threads spinning at a barrier still count).
Samplers alternate within each setting (ours, [baseline], HF, ours, ...) and the fastest run is kept.

Roofline of one decode step at batch B with a KV cache of C positions, from this machine measured by
the script before the runs (at the same thread count):

* compute: each of the step's matrix products (q, k, v, o, gate, up, down per layer, the LM head) timed
  alone at its decode shape (B x in) @ (in x out), weights hot in cache, best of several; attention
  (QK^T and AV against C positions) at the mean rate of those products;
* memory: the bytes a step must stream once: every weight the step reads (the adapters merged, as the
  ideal sampler would), the KV cache of B rows x C positions, and the logits written and read; over the
  read bandwidth of a 1 GiB float32 sum (larger than the last-level cache);
* the step's bound is the larger of the two; averaged over the decode's cache lengths.

The probes run at 1 .. --threads threads, before and after the runs, and the best rates are kept:
other processes on a shared machine only ever slow a probe down, so the bound stays a lower bound.

The roofline fraction is that bound over the measured ms per step. The last line reads
``decode tokens/s ours/HF: <x>x at batch 64, roofline fraction <f>`` for the largest batch and
number of new tokens run (batch 64 by default).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

DATA_SEED = 0
LORA_B_SCALE = 1e-3


# ----------------------------------------------------------------------------------------------
# Model and prompts
# ----------------------------------------------------------------------------------------------


def load():
    from tulu_lab.chat import install_tulu_template
    from tulu_lab.config import LoraSettings
    from tulu_lab.models import attach_lora, load_model, lora_config

    model, tokenizer = load_model("smollm2-135m", dtype=torch.float32, verbose=False)
    install_tulu_template(tokenizer)
    settings = LoraSettings()
    model = attach_lora(model, lora_config(r=settings.r, alpha=settings.alpha, dropout=settings.dropout,
                                           target_modules=list(settings.target_modules)))
    generator = torch.Generator().manual_seed(0)
    for name, param in model.named_parameters():
        if "lora_B" in name:  # fresh B is zero: make the adapters matter
            param.data = torch.randn(param.shape, generator=generator) * LORA_B_SCALE
    model.eval()
    return model, tokenizer


def prompt_messages(n: int) -> list[list[dict]]:
    from tulu_lab.data import generate_word_problems, rlvr_row

    return [rlvr_row(p)["messages"] for p in generate_word_problems(n, seed=DATA_SEED)]


def encode(tokenizer, messages) -> dict[str, torch.Tensor]:
    from tulu_lab.generate import format_prompt

    texts = [format_prompt(m, tokenizer) for m in messages]
    return tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")


# ----------------------------------------------------------------------------------------------
# Samplers
# ----------------------------------------------------------------------------------------------


def load_module_from(path: str, name: str):
    """Another version of tulu_lab/generate.py (e.g. ``git show main:tulu_lab/generate.py > file``)."""
    file = Path(path)
    if not file.is_file():
        raise SystemExit(f"--baseline: no such file {path!r}")
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def without_eos(module, enabled: bool):
    """Within the block ``module.generate`` sees no EOS id (-1 is never sampled): rows run to the budget."""
    if not enabled:
        yield
        return
    original = module.eos_token_ids
    module.eos_token_ids = lambda model, tokenizer: [-1]
    try:
        yield
    finally:
        module.eos_token_ids = original


def run_ours(module, model, tokenizer, messages, new_tokens: int, fixed: bool) -> tuple[float, float, list[list[int]]]:
    """(wall seconds, CPU seconds of this process, token ids per row)."""
    with without_eos(module, fixed):
        started, cpu_started = time.perf_counter(), time.process_time()
        gens = module.generate(model, tokenizer, messages, max_new_tokens=new_tokens, temperature=0.0,
                               batch_size=len(messages), seed=0, progress=False)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    return seconds, cpu, [list(g.token_ids) for g in gens]


def run_hf(model, tokenizer, messages, new_tokens: int, fixed: bool) -> tuple[float, float, list[list[int]]]:
    from tulu_lab.generate import eos_token_ids

    enc = encode(tokenizer, messages)
    extra = dict(min_new_tokens=new_tokens) if fixed else {}
    started, cpu_started = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                             **extra)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    eos = set(eos_token_ids(model, tokenizer))
    rows = []
    for row in out[:, enc["input_ids"].size(1):].tolist():
        cut = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
        rows.append(row[:cut])
    return seconds, cpu, rows


def agreement(a: list[list[int]], b: list[list[int]], eos: set[int]) -> float:
    """Fraction of rows whose greedy tokens agree up to the first EOS of either."""
    same = 0
    for x, y in zip(a, b):
        n = min(len(x), len(y))
        for limit, t in enumerate(x[:n]):
            if t in eos:
                n = limit + 1
                break
        same += x[:n] == y[:n]
    return same / max(len(a), 1)


# ----------------------------------------------------------------------------------------------
# Roofline
# ----------------------------------------------------------------------------------------------


@dataclass
class Shape:
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    weight_bytes: int        # all weights a decode step reads (embedding rows aside), adapters merged
    kv_bytes_per_token: int  # K and V, all layers, one position of one row


def model_shape(model) -> Shape:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    c = base.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    element = next(base.parameters()).element_size()
    seen, weights = set(), 0
    embed = base.get_input_embeddings().weight
    for name, p in base.named_parameters():
        if "lora_" in name or id(p) in seen:
            continue
        seen.add(id(p))
        if p is embed and not c.tie_word_embeddings:
            continue  # an untied embedding: a step reads only B rows of it
        weights += p.numel() * element
    kv = 2 * c.num_hidden_layers * c.num_key_value_heads * head_dim * element
    return Shape(c.num_hidden_layers, c.hidden_size, c.intermediate_size, c.num_attention_heads,
                 c.num_key_value_heads, head_dim, c.vocab_size, weights, kv)


def gemm_shapes(s: Shape) -> list[tuple[int, int, int]]:
    """(in, out, count per step) of a decode step's weight products."""
    q, kv = s.heads * s.head_dim, s.kv_heads * s.head_dim
    return [(s.hidden, q, s.layers), (s.hidden, kv, 2 * s.layers), (q, s.hidden, s.layers),
            (s.hidden, s.intermediate, 2 * s.layers), (s.intermediate, s.hidden, s.layers), (s.hidden, s.vocab, 1)]


def time_linear(rows: int, n_in: int, n_out: int, repeats: int = 5, inner: int = 20) -> float:
    x, w = torch.randn(rows, n_in), torch.randn(n_out, n_in)
    linear = torch.nn.functional.linear
    for _ in range(3):
        linear(x, w)
    inner = max(1, inner if n_out < 10_000 else inner // 10)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(inner):
            linear(x, w)
        best = min(best, (time.perf_counter() - started) / inner)
    return best


def read_bandwidth(megabytes: int = 1024, repeats: int = 4) -> float:
    """Bytes/s of a float32 sum over ``megabytes`` (bigger than the last-level cache), best of ``repeats``."""
    data = torch.ones(megabytes * 2 ** 20 // 4)
    data.sum()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        data.sum()
        best = min(best, time.perf_counter() - started)
    return data.numel() * 4 / best


@dataclass
class Machine:
    gemm_seconds: dict[int, float]   # batch -> seconds of one step's weight products
    gemm_rate: dict[int, float]      # batch -> FLOP/s of those products
    bandwidth: float                 # bytes/s


def probe(shape: Shape, batches: list[int], max_threads: int) -> Machine:
    """Best rates over 1 .. ``max_threads`` threads (on a shared machine fewer threads can be faster)."""
    from tulu_lab.generate import num_threads

    seconds, rate, bandwidth = {}, {}, 0.0
    for count in range(1, max_threads + 1):
        with num_threads(count):
            for b in batches:
                total = flops = 0.0
                for n_in, n_out, per_step in gemm_shapes(shape):
                    total += per_step * time_linear(b, n_in, n_out)
                    flops += per_step * 2.0 * b * n_in * n_out
                if total < seconds.get(b, float("inf")):
                    seconds[b], rate[b] = total, flops / total
            bandwidth = max(bandwidth, read_bandwidth())
    return Machine(seconds, rate, bandwidth)


def best_of(a: Machine, b: Machine) -> Machine:
    """The machine's limits as the best either probe saw (load from other processes only slows a probe)."""
    seconds = {k: min(a.gemm_seconds[k], b.gemm_seconds[k]) for k in a.gemm_seconds}
    rate = {k: a.gemm_rate[k] if a.gemm_seconds[k] <= b.gemm_seconds[k] else b.gemm_rate[k] for k in seconds}
    return Machine(seconds, rate, max(a.bandwidth, b.bandwidth))


def describe(machine: Machine) -> str:
    return (f"read bandwidth {machine.bandwidth / 1e9:.1f} GB/s; decode GEMMs "
            + ", ".join(f"batch {b}: {machine.gemm_rate[b] / 1e9:.0f} GFLOP/s ({machine.gemm_seconds[b] * 1e3:.1f} ms/step)"
                        for b in sorted(machine.gemm_rate)))


def step_roofline(shape: Shape, machine: Machine, batch: int, context: int) -> dict[str, float]:
    """Lower bound on one decode step of ``batch`` rows attending to ``context`` positions."""
    attention_flops = 4.0 * shape.layers * shape.heads * shape.head_dim * context * batch
    compute = machine.gemm_seconds[batch] + attention_flops / machine.gemm_rate[batch]
    logits = 2 * batch * shape.vocab * 4
    memory_bytes = shape.weight_bytes + batch * context * shape.kv_bytes_per_token + logits
    memory = memory_bytes / machine.bandwidth
    return {"compute": compute, "memory": memory, "bound": max(compute, memory), "bytes": memory_bytes}


def decode_roofline(shape: Shape, machine: Machine, batch: int, prompt_width: int, new_tokens: int) -> dict[str, float]:
    """Mean per-step bound over the decode's steps (the cache grows from the prompt by one a step)."""
    steps = [step_roofline(shape, machine, batch, prompt_width + t) for t in range(1, new_tokens)]
    return {k: sum(s[k] for s in steps) / len(steps) for k in steps[0]}


# ----------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def parse_ints(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"{flag}: expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise SystemExit(f"{flag}: expected positive integers, got {text!r}")
    return values


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="16,64", help="comma-separated batch sizes (rows = distinct prompts)")
    parser.add_argument("--new-tokens", default="96,384", help="comma-separated decode lengths")
    parser.add_argument("--repeats", type=int, default=1, help="alternated runs per sampler and setting (fastest kept)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--baseline", default=None,
                        help="path of another generate.py, run as a third sampler alternated with ours")
    parser.add_argument("--no-hf", action="store_true", help="skip model.generate")
    parser.add_argument("--stop-at-eos", action="store_true", help="rows end at EOS (default: all rows run the budget)")
    args = parser.parse_args(argv)
    batches = parse_ints(args.batches, "--batches")
    lengths = parse_ints(args.new_tokens, "--new-tokens")
    if args.repeats < 1 or args.threads < 1:
        raise SystemExit("--repeats and --threads must be >= 1")
    fixed = not args.stop_at_eos

    torch.set_num_threads(args.threads)
    import tulu_lab.generate as ours_module

    samplers = {"ours": ours_module}
    if args.baseline:
        samplers["baseline"] = load_module_from(args.baseline, "baseline_generate")
    started_all = time.perf_counter()
    model, tokenizer = load()
    shape = model_shape(model)
    print(f"SmolLM2-135M-Instruct, {next(model.parameters()).dtype}, LoRA r16 on 7 projections, greedy, "
          f"{torch.get_num_threads()} threads, {'fixed length' if fixed else 'rows stop at EOS'}; "
          f"load average {load_average()}", flush=True)
    machine = probe(shape, sorted(set(batches)), args.threads)
    print(f"machine: {describe(machine)}", flush=True)
    print(f"weights read per step {shape.weight_bytes / 1e6:.0f} MB, KV cache {shape.kv_bytes_per_token / 1e3:.1f} kB "
          f"per row and position", flush=True)

    pool = prompt_messages(max(batches))
    eos = set(ours_module.eos_token_ids(model, tokenizer))
    measured = []   # (batch, new tokens, prompt width, {sampler: one-token (wall, CPU)}, {sampler: (wall, CPU, rows)})
    for batch in batches:
        messages = pool[:batch]
        width = encode(tokenizer, messages)["input_ids"].size(1)
        prefill: dict[str, tuple[float, float]] = {}   # sampler -> best (wall, CPU) of a one-token run
        runs = {name: (lambda n, m=module: run_ours(m, model, tokenizer, messages, n, fixed))
                for name, module in samplers.items()}
        if not args.no_hf:
            runs["hf"] = lambda n: run_hf(model, tokenizer, messages, n, fixed)
        for _ in range(args.repeats):
            for name, run in runs.items():
                wall, cpu, _ = run(1)
                prefill[name] = min(prefill.get(name, (float("inf"), float("inf"))), (wall, cpu))
        for new_tokens in lengths:
            best: dict[str, tuple[float, float, list[list[int]]]] = {}
            for _ in range(args.repeats):
                for name, run in runs.items():
                    result = run(new_tokens)
                    if name not in best or result[0] < best[name][0]:
                        best[name] = result
            print(f"batch {batch:3d}, {new_tokens:3d} new tokens: "
                  + ", ".join(f"{name} {r[0]:.2f} s" for name, r in best.items())
                  + f" (load average {load_average()})", flush=True)
            measured.append((batch, new_tokens, width, prefill, best))

    machine = best_of(machine, probe(shape, sorted(set(batches)), args.threads))
    print(f"machine, best of the probes before and after the runs: {describe(machine)}")
    summary = {}
    for batch, new_tokens, width, prefill, best in measured:
        roof = decode_roofline(shape, machine, batch, width, new_tokens)
        print(f"batch {batch:3d}, {new_tokens:3d} new tokens (prompt width {width}, prefill ours "
              f"{prefill['ours'][0] * 1e3:.0f} ms; "
              f"step roofline {roof['bound'] * 1e3:.1f} ms = max(compute {roof['compute'] * 1e3:.1f}, "
              f"memory {roof['memory'] * 1e3:.1f} for {roof['bytes'] / 1e6:.0f} MB)):")
        rates = {}
        for name, (seconds, cpu, rows) in best.items():
            tokens = sum(len(r) for r in rows)
            step_ms = max(seconds - prefill[name][0], 1e-9) / max(new_tokens - 1, 1) * 1e3
            cpu_step_ms = max(cpu - prefill[name][1], 1e-9) / max(new_tokens - 1, 1) * 1e3 / args.threads
            rates[name] = (tokens / seconds, step_ms)
            print(f"    {name:9s} {tokens / seconds:8.1f} tok/s  {step_ms:7.1f} ms/step  "
                  f"roofline fraction {roof['bound'] * 1e3 / step_ms:.2f}  ({tokens} tokens in {seconds:.2f} s; "
                  f"CPU time per thread {cpu_step_ms:.1f} ms/step, fraction {roof['bound'] * 1e3 / cpu_step_ms:.2f})")
        line = [f"ours/{name} {rates['ours'][0] / rates[name][0]:.2f}x" for name in ("baseline", "hf") if name in rates]
        if "hf" in best:
            line.append(f"greedy tokens agree with HF on {agreement(best['ours'][2], best['hf'][2], eos):.0%} of rows")
        if line:
            print("    " + ", ".join(line))
        summary[(batch, new_tokens)] = (rates, roof["bound"] * 1e3 / rates["ours"][1])
    print(f"total time {time.perf_counter() - started_all:.0f} s; load average {load_average()}")
    key = (max(batches), max(lengths))
    rates, fraction = summary[key]
    ratio = f"{rates['ours'][0] / rates['hf'][0]:.2f}" if "hf" in rates else "n/a"
    print(f"decode tokens/s ours/HF: {ratio}x at batch {key[0]}, roofline fraction {fraction:.2f}")

if __name__ == "__main__":
    main()

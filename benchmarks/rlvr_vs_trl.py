"""RLVR step speed, peak memory and learning: tulu_lab's GRPO loop against TRL's GRPOTrainer, side by side.

    python benchmarks/rlvr_vs_trl.py                                  # 1 warm-up + 3 timed steps per side
    python benchmarks/rlvr_vs_trl.py --steps 30 --curves --trl no-gc  # reward curves over 30 steps (long)
    python benchmarks/rlvr_vs_trl.py --profile                        # where our step's time goes

The setting (the embedded CPU preset): SmolLM2-135M-Instruct from the same safetensors folder
(bf16 weights), LoRA rank 16 / alpha 32 / no dropout on all seven linear projections, synthetic
GSM-style word problems in the Tülu chat template, 2 prompts x 8 samples per optimiser step, at most
96 completion tokens, temperature 1, beta 0.04 (both sides compute reference log-probs with the
adapters disabled), learning rate 2e-5, AdamW eps 1e-5, grad-norm clip 1.0, CPU, the same threads.

* ours: ``tulu_lab.rlvr.train_rlvr(RLVRConfig.cpu_preset(...), ...)``; the advantage eps is set to
  TRL's 1e-4 so that both optimise the same objective.
* TRL: ``GRPOTrainer`` with ``peft_config`` and ``use_cpu=True``, 8 completions per micro-batch and 2
  accumulation steps (one generation of 16 per optimiser step, as ours). ``--trl`` picks the
  configurations: "default" (TRL's defaults: gradient checkpointing on, bf16 on), "no-gc" (gradient
  checkpointing off), "fp32" (bf16 off). bf16=True is GRPOConfig's default in TRL 1.16, so
  "default" and "no-gc" both run with it. The ratio is taken against the fastest one.
* Same reward on both sides: the project's verifier (``tulu_lab.rewards.make_verifiable_reward``,
  10 if correct, else 0) with Tülu's non-stop penalty (-10 when the completion has no EOS), given to
  TRL as a reward function that reads ``completion_ids``.
* Same prompts in the same order: TRL's sampler runs unshuffled over the rows in the order ours draws.

Each side runs in its own subprocess (so its peak RSS, VmHWM from /proc, is its own), held at a gate
before every optimiser step; the parent releases them in turn (ours, TRL, ours, TRL, ...), so load on
a shared machine hits both alike. A step is timed from its release to the end of its optimiser step
(rollout, reward, reference log-probs, forward, backward, optimiser).

Roofline: before every round the parent measures the bf16 matmul rate (GFLOP/s) and the memory
bandwidth (a copy, bytes read + written; and a read-only sum), then prices our step's real token
counts: decoding is bound by streaming the weights plus each live row's KV cache once per token
(memory bandwidth), prefill, the reference pass, the training forward and its backward by matmul
FLOPs. The achieved fraction is that estimate over the measured step time.

The last line reads like
``rlvr samples/s ours/TRL: 3.4x (ours 6.1, TRL 1.8), peak RSS ours/TRL: 0.8x, roofline 0.45``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Sequence

PROMPTS_PER_STEP = 2
SAMPLES_PER_PROMPT = 8
MAX_COMPLETION = 96
BETA = 0.04
LEARNING_RATE = 2e-5
ADVANTAGE_EPS = 1e-4  # TRL's (r - mean) / (std + 1e-4)
CORRECT, INCORRECT, NON_STOP = 10.0, 0.0, -10.0
DATA_SEED = 0
TRL_VARIANTS = {
    "default": dict(),                                # GRPOConfig's defaults: gradient checkpointing on, bf16 on
    "no-gc": dict(gradient_checkpointing=False),
    # bf16 off, weights loaded in float32: TRL's fastest on CPUs that emulate bf16 (AVX2 only)
    "fp32": dict(bf16=False, model_init_kwargs={"dtype": "float32"}),
    "fp32-no-gc": dict(gradient_checkpointing=False, bf16=False, model_init_kwargs={"dtype": "float32"}),
}
MESSAGE_PREFIX = "@@bench "


# ----------------------------------------------------------------------------------------------
# Pure helpers (tested in tests/test_bench_helpers.py)
# ----------------------------------------------------------------------------------------------


def trl_row_order(n_rows: int, steps: int, seed: int, prompts_per_step: int = PROMPTS_PER_STEP) -> list[int]:
    """Row indices in the order tulu_lab's loop draws its prompts, step after step.

    TRL's sampler without shuffling takes the rows in dataset order, ``prompts_per_step`` per step,
    so a dataset laid out in this order gives TRL the same prompts at every step as ours.
    """
    from tulu_lab.rlvr import _step_prompt_indices

    return [i for step in range(steps) for i in _step_prompt_indices(n_rows, prompts_per_step, step, seed)]


def with_non_stop_penalty(reward: Callable[..., list[float]], eos_ids: Sequence[int], penalty: float,
                          record: Callable[[list[float], list[int]], None] | None = None) -> Callable[..., list[float]]:
    """A TRL reward function: ``reward``'s score, REPLACED by ``penalty`` for completions without EOS.

    TRL passes ``completion_ids`` (cut after the first EOS, which it keeps); Tülu 3's score
    (``tulu_lab.losses.verifiable_score``) replaces the verifier's score by the penalty when the
    response never ended. ``record(scores, lengths)`` sees every call (for the benchmark's counts).
    """
    eos = set(int(i) for i in eos_ids)

    def verifiable_reward_with_non_stop_penalty(prompts, completions, completion_ids, **columns) -> list[float]:
        scores = reward(prompts=prompts, completions=completions, **columns)
        if len(completion_ids) != len(scores):
            raise ValueError(f"{len(completion_ids)} completion_ids for {len(scores)} scores")
        scores = [float(s) if ids and int(ids[-1]) in eos else penalty for s, ids in zip(scores, completion_ids)]
        if record is not None:
            record(scores, [len(ids) for ids in completion_ids])
        return scores

    return verifiable_reward_with_non_stop_penalty


@dataclass
class StepShape:
    """What one step processed: prompt lengths (one per distinct prompt) and response lengths per row."""

    prompt_lens: list[int]          # per row (rows of a prompt share it)
    response_lens: list[int]        # per row, EOS included
    group_size: int


@dataclass
class ModelShape:
    parameter_bytes: int            # everything a decode step streams (weights + adapters)
    linear_params: int              # parameters in the decoder's linear layers (FLOPs per token = 2 x this)
    head_params: int                # vocabulary x hidden (the LM head)
    layers: int
    attention_width: int            # heads x head_dim
    kv_bytes_per_token: int         # 2 (K, V) x layers x kv heads x head_dim x bytes


def roofline_seconds(model: ModelShape, shape: StepShape, matmul_flops: float, bandwidth: float) -> dict[str, float]:
    """Lower bound on one GRPO step's time from the step's own token counts.

    * prefill: each distinct prompt once, ``2 x linear_params`` FLOPs per token plus attention;
    * decode: every generated token after the first is one forward at the batch's live rows; it
      streams all weights once plus each live row's KV cache, and does ``2 x params`` FLOPs per
      row; the step takes the larger of the memory and the FLOP time;
    * reference pass, training forward, backward: full sequences, the LM head on response tokens
      only; the backward of frozen weights computes input gradients only, about one forward again.
    Returns seconds per part and the total.
    """
    rows = len(shape.response_lens)
    if rows == 0 or len(shape.prompt_lens) != rows:
        raise ValueError("roofline_seconds: need one prompt length per response")
    per_token = 2.0 * model.linear_params

    def attention(context: int) -> float:      # QK^T and AV for one token against `context` tokens
        return 4.0 * model.layers * model.attention_width * context

    distinct_prompts = shape.prompt_lens[::shape.group_size]
    prefill = sum(n * per_token + sum(attention(c) for c in range(1, n + 1)) for n in distinct_prompts)
    decode_seconds = 0.0
    for t in range(1, max(shape.response_lens)):  # token t (0-based) needs a forward of token t - 1
        live = [i for i in range(rows) if shape.response_lens[i] > t]
        kv = sum((shape.prompt_lens[i] + t) * model.kv_bytes_per_token for i in live)
        flops = len(live) * (per_token + 2.0 * model.head_params) + sum(attention(shape.prompt_lens[i] + t) for i in live)
        decode_seconds += max((model.parameter_bytes + kv) / bandwidth, flops / matmul_flops)
    sequence = 0.0
    for p, r in zip(shape.prompt_lens, shape.response_lens):
        sequence += (p + r) * per_token + r * 2.0 * model.head_params + sum(attention(c) for c in range(1, p + r + 1))
    # reference forward + training forward + backward (input gradients: about one more forward)
    score_flops, train_flops = sequence, 2.0 * sequence
    parts = {"prefill": prefill / matmul_flops, "decode": decode_seconds, "reference": score_flops / matmul_flops,
             "train": train_flops / matmul_flops}
    parts["total"] = sum(parts.values())
    return parts


def vm_hwm_bytes() -> int:
    """This process's peak resident set (VmHWM) in bytes; 0 where /proc is not available."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def mean_and_error(values: Sequence[float]) -> tuple[float, float]:
    """Mean and its standard error (0 for fewer than two values)."""
    if not values:
        return float("nan"), float("nan")
    if len(values) < 2:
        return float(values[0]), 0.0
    return statistics.fmean(values), statistics.stdev(values) / math.sqrt(len(values))


def curves_overlap(a: Sequence[float], b: Sequence[float], window: int = 5) -> dict[str, float]:
    """Compare two per-step reward curves: overall means with standard errors, the Welch z of the
    difference, and the largest gap between their moving averages in units of the pooled per-step
    standard deviation over sqrt(window) (the noise of one moving-average point)."""
    mean_a, se_a = mean_and_error(a)
    mean_b, se_b = mean_and_error(b)
    z = (mean_a - mean_b) / math.sqrt(se_a ** 2 + se_b ** 2) if se_a + se_b > 0 else 0.0
    n = min(len(a), len(b))
    pooled = math.sqrt((statistics.pvariance(a) + statistics.pvariance(b)) / 2) if n > 1 else 0.0
    gaps = []
    for end in range(window, n + 1):
        gaps.append(abs(statistics.fmean(a[end - window:end]) - statistics.fmean(b[end - window:end])))
    noise = pooled / math.sqrt(window) if pooled > 0 else float("inf")
    return {"mean_a": mean_a, "se_a": se_a, "mean_b": mean_b, "se_b": se_b, "z": z,
            "max_gap_in_noise": (max(gaps) / noise) if gaps and noise != float("inf") else 0.0}


# ----------------------------------------------------------------------------------------------
# Machine probes
# ----------------------------------------------------------------------------------------------


def probe_matmul(dtype: str = "float32", size: int = 1024, repeats: int = 3) -> float:
    """Best matmul rate of ``size`` x ``size`` products in ``dtype`` at the current thread count, FLOP/s."""
    import torch

    a = torch.randn(size, size).to(getattr(torch, dtype))
    b = torch.randn(size, size).to(getattr(torch, dtype))
    a @ b
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2.0 * size ** 3 / best


def probe_bandwidth(megabytes: int = 128, repeats: int = 3) -> tuple[float, float]:
    """(copy, read) bandwidth in bytes/s at the current thread count: a large float32 tensor copied
    (bytes read + written) and summed (bytes read)."""
    import torch

    n = megabytes * 2 ** 20 // 4
    src = torch.ones(n)
    dst = torch.empty(n)
    dst.copy_(src)
    copy_best = read_best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        dst.copy_(src)
        copy_best = min(copy_best, time.perf_counter() - started)
        started = time.perf_counter()
        src.sum()
        read_best = min(read_best, time.perf_counter() - started)
    return 2 * n * 4 / copy_best, n * 4 / read_best


def probe_machine(dtype: str, max_threads: int) -> dict[str, float]:
    """The machine's limits right now: the best matmul rate (in ``dtype``) and memory bandwidth over
    1 .. ``max_threads`` threads (on a shared machine fewer threads can be faster)."""
    import torch

    from tulu_lab.generate import num_threads

    best = {"matmul": 0.0, "copy": 0.0, "read": 0.0}
    for count in range(1, max_threads + 1):
        with num_threads(count):
            best["matmul"] = max(best["matmul"], probe_matmul(dtype))
            copy_bw, read_bw = probe_bandwidth()
        best["copy"], best["read"] = max(best["copy"], copy_bw), max(best["read"], read_bw)
    del torch
    return best


# ----------------------------------------------------------------------------------------------
# Children: one process per side, held at a gate before every step
# ----------------------------------------------------------------------------------------------


class Channel:
    """The child's end: wait for "go" on stdin, send JSON messages on the reply file descriptor."""

    def __init__(self, reply_fd: int):
        self.out = os.fdopen(reply_fd, "w", buffering=1)

    def send(self, **message: Any) -> None:
        self.out.write(MESSAGE_PREFIX + json.dumps(message) + "\n")
        self.out.flush()

    def wait(self) -> None:
        line = sys.stdin.readline().strip()
        if line == "stop":  # the parent dropped this side (a faster configuration of it runs on)
            raise SystemExit(0)
        if line != "go":
            raise SystemExit(f"benchmark child: expected 'go' from the parent, got {line!r}")


def benchmark_rows(n: int) -> list[dict]:
    from tulu_lab.data import generate_word_problems, rlvr_row

    return [rlvr_row(p) for p in generate_word_problems(n, seed=DATA_SEED)]


def model_shape(model) -> ModelShape:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config
    head = base.get_output_embeddings().weight
    import torch

    linear = sum(m.weight.numel() for name, m in base.named_modules()  # frozen projections, not adapters
                 if isinstance(m, torch.nn.Linear) and ".layers." in name and "lora_" not in name)
    bytes_ = sum(p.numel() * p.element_size() for p in model.parameters())
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_bytes = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * 2  # bf16 cache
    return ModelShape(parameter_bytes=bytes_, linear_params=linear, head_params=head.numel(),
                      layers=config.num_hidden_layers, attention_width=config.num_attention_heads * head_dim,
                      kv_bytes_per_token=kv_bytes)


def ours_config(steps: int, output_dir: Path):
    from tulu_lab.config import RLVRConfig

    return RLVRConfig.cpu_preset(max_steps=steps, output_dir=str(output_dir), checkpoint_every=0, eval_every=0,
                                 prompts_per_step=PROMPTS_PER_STEP, samples_per_prompt=SAMPLES_PER_PROMPT,
                                 max_new_tokens=MAX_COMPLETION, beta=BETA, learning_rate=LEARNING_RATE,
                                 advantage_eps=ADVANTAGE_EPS, correct_reward=CORRECT, non_stop_penalty=NON_STOP)


def run_ours(args, channel: Channel) -> None:
    import torch

    from tulu_lab import rlvr
    from tulu_lab.chat import install_tulu_template
    from tulu_lab.models import load_model

    model, tokenizer = load_model("smollm2-135m")
    install_tulu_template(tokenizer)
    rows = benchmark_rows(args.rows)
    shutil.rmtree(Path(args.out) / "ours", ignore_errors=True)  # scratch: a new run each time, whatever its settings
    cfg = ours_config(args.total_steps, Path(args.out) / "ours")
    step = {"index": 0}
    times: dict[str, float] = {}
    originals = {name: getattr(rlvr, name) for name in ("rollout", "score_rollout", "rlvr_update")}
    profiler = None
    backward_seconds = [0.0]

    def timed(name: str, function: Callable) -> Callable:
        def run(*a, **k):
            started = time.perf_counter()
            with torch.profiler.record_function(name):
                result = function(*a, **k)
            times[name] = times.get(name, 0.0) + time.perf_counter() - started
            return result
        return run

    def rollout(*a, **k):
        nonlocal profiler
        channel.send(kind="ready", shape=model_shape(a[1]).__dict__ if step["index"] == 0 else None)
        channel.wait()
        times.clear()
        backward_seconds[0] = 0.0
        if args.profile and step["index"] == args.warmup:
            profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            profiler.__enter__()
        times["start"], times["cpu_start"] = time.perf_counter(), time.process_time()
        batch, info = timed("rollout", originals["rollout"])(*a, **k)
        step["shape"] = StepShape(prompt_lens=[len(p) for p in batch.prompt_ids],
                                  response_lens=[len(r) for r in batch.response_ids], group_size=batch.group_size)
        step["scores"] = batch.scores.tolist()
        step["correct"] = info["correct"]
        return batch, info

    def rlvr_update(*a, **k):
        nonlocal profiler
        stats = timed("rlvr_update", originals["rlvr_update"])(*a, **k)
        seconds, cpu_seconds = time.perf_counter() - times["start"], time.process_time() - times["cpu_start"]
        if profiler is not None:
            profiler.__exit__(None, None, None)
            table = profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=30)
            (Path(args.out) / "profile_ours.txt").write_text(table)
            profiler = None
        shape = step["shape"]
        channel.send(kind="step", seconds=seconds, cpu_seconds=cpu_seconds, samples=len(shape.response_lens),
                     completion_tokens=sum(shape.response_lens), prompt_lens=shape.prompt_lens,
                     response_lens=shape.response_lens, group_size=shape.group_size,
                     reward=statistics.fmean(step["scores"]), accuracy=statistics.fmean(step["correct"]),
                     split={"generate": times.get("rollout", 0.0), "reference": times.get("score_rollout", 0.0),
                            "update": times.get("rlvr_update", 0.0), "backward": backward_seconds[0]},
                     peak_rss=vm_hwm_bytes())
        step["index"] += 1
        return stats

    original_backward = torch.Tensor.backward

    def backward(self, *a, **k):  # time the backward passes inside the update
        started = time.perf_counter()
        try:
            return original_backward(self, *a, **k)
        finally:
            backward_seconds[0] += time.perf_counter() - started

    torch.Tensor.backward = backward
    rlvr.rollout = rollout
    rlvr.score_rollout = timed("score_rollout", originals["score_rollout"])
    rlvr.rlvr_update = rlvr_update
    if args.ours_threads != "auto":
        torch.set_num_threads(int(args.ours_threads))
    rlvr.train_rlvr(cfg, model, tokenizer, rows, resume=False, progress=False, save_merged=False)
    channel.send(kind="end", peak_rss=vm_hwm_bytes())


def split_variant(name: str, default_threads: int) -> tuple[str, int]:
    """ "fp32-no-gc@1" -> ("fp32-no-gc", 1); without "@N" the default thread count."""
    base, _, threads = name.partition("@")
    if base not in TRL_VARIANTS:
        raise ValueError(f"unknown TRL configuration {base!r}; choose from {sorted(TRL_VARIANTS)} (optionally '@THREADS')")
    if not threads:
        return base, default_threads
    if not threads.isdigit() or int(threads) < 1:
        raise ValueError(f"TRL configuration {name!r}: the thread count after '@' must be a positive integer")
    return base, int(threads)


def default_trl_variants(bf16_fast: bool) -> list[str]:
    """TRL's defaults, without gradient checkpointing, and that on one thread; in float32 where the CPU
    emulates bf16 (there TRL's bf16 default would be many times slower than anything else)."""
    if bf16_fast:
        return ["default", "no-gc", "no-gc@1"]
    return ["fp32", "fp32-no-gc", "fp32-no-gc@1"]


def trl_config(variant: str, steps: int, output_dir: Path, seed: int):
    from trl import GRPOConfig

    settings = dict(
        output_dir=str(output_dir), use_cpu=True, max_steps=steps, seed=seed,
        per_device_train_batch_size=SAMPLES_PER_PROMPT, gradient_accumulation_steps=PROMPTS_PER_STEP,
        num_generations=SAMPLES_PER_PROMPT, max_completion_length=MAX_COMPLETION, temperature=1.0,
        beta=BETA, learning_rate=LEARNING_RATE, adam_epsilon=1e-5, max_grad_norm=1.0, weight_decay=0.0,
        lr_scheduler_type="linear", warmup_steps=0, shuffle_dataset=False, logging_steps=1,
        report_to="none", save_strategy="no", disable_tqdm=True, dataloader_num_workers=0,
    )
    settings.update(TRL_VARIANTS[variant])
    return GRPOConfig(**settings)


def run_trl(args, channel: Channel) -> None:
    import torch
    from datasets import Dataset
    from transformers import GenerationConfig, TrainerCallback
    from trl import GRPOTrainer

    from tulu_lab.chat import install_tulu_template
    from tulu_lab.config import LoraSettings
    from tulu_lab.generate import eos_token_ids
    from tulu_lab.models import embedded_model_dir, load_tokenizer, lora_config
    from tulu_lab.rewards import make_verifiable_reward

    folder = str(embedded_model_dir())
    tokenizer = load_tokenizer(folder)
    install_tulu_template(tokenizer)
    rows = benchmark_rows(args.rows)
    cfg = ours_config(args.total_steps, Path(args.out) / "unused")
    ordered = [rows[i] for i in trl_row_order(len(rows), args.total_steps, cfg.seed)]
    dataset = Dataset.from_list([{"prompt": r["messages"], "ground_truth": r["ground_truth"], "dataset": r["dataset"]}
                                 for r in ordered])
    lora = LoraSettings()
    peft_config = lora_config(r=lora.r, alpha=lora.alpha, dropout=lora.dropout, target_modules=list(lora.target_modules))
    state: dict[str, Any] = {"scores": [], "lengths": [], "generate": 0.0}

    def record(scores, lengths):
        state["scores"].extend(scores)
        state["lengths"].extend(lengths)

    variant, _ = split_variant(args.side.removeprefix("trl-"), args.threads)
    config = trl_config(variant, args.total_steps, Path(args.out) / args.side.replace("@", "-t"), cfg.seed)
    # TRL ends a completion at the tokenizer's EOS or any generation_config EOS id, as ours does
    eos = eos_token_ids(SimpleNamespace(generation_config=GenerationConfig.from_pretrained(folder)), tokenizer)
    reward = with_non_stop_penalty(make_verifiable_reward(CORRECT, INCORRECT), eos, NON_STOP, record)

    class Gate(TrainerCallback):
        def on_step_begin(self, targs, tstate, control, **kwargs):
            channel.send(kind="ready", shape=None)
            channel.wait()
            state["scores"].clear()
            state["lengths"].clear()
            state["generate"] = 0.0
            state["start"], state["cpu_start"] = time.perf_counter(), time.process_time()

        def on_step_end(self, targs, tstate, control, **kwargs):
            seconds = time.perf_counter() - state["start"]
            lengths = state["lengths"]
            channel.send(kind="step", seconds=seconds, cpu_seconds=time.process_time() - state["cpu_start"],
                         samples=len(lengths), completion_tokens=sum(lengths),
                         response_lens=lengths, reward=statistics.fmean(state["scores"]) if state["scores"] else 0.0,
                         accuracy=statistics.fmean(s == CORRECT for s in state["scores"]) if state["scores"] else 0.0,
                         split={"generate": state["generate"]}, peak_rss=vm_hwm_bytes())

    trainer = GRPOTrainer(model=folder, reward_funcs=reward, args=config, train_dataset=dataset,
                          processing_class=tokenizer, peft_config=peft_config, callbacks=[Gate()])
    original = trainer._generate_and_score_completions

    def generate_and_score(*a, **k):  # sampling, reference log-probs and rewards
        started = time.perf_counter()
        try:
            return original(*a, **k)
        finally:
            state["generate"] += time.perf_counter() - started

    trainer._generate_and_score_completions = generate_and_score
    torch.set_num_threads(args.side_threads)  # the Trainer may have changed it
    trainer.train()
    channel.send(kind="end", peak_rss=vm_hwm_bytes())


def child_main(args) -> None:
    import torch

    args.side_threads = side_threads(args.side, args.threads)
    torch.set_num_threads(args.side_threads)
    channel = Channel(args.reply_fd)
    try:
        if args.side == "ours":
            run_ours(args, channel)
        else:
            run_trl(args, channel)
    except SystemExit as stop:
        if stop.code not in (0, None):
            channel.send(kind="error", error=f"SystemExit: {stop.code}")
        raise
    except BaseException as err:  # tell the parent, then fail
        channel.send(kind="error", error=f"{type(err).__name__}: {err}")
        raise


def side_threads(side: str, threads: int) -> int:
    """Threads a side starts with: TRL configurations may name theirs ("trl-no-gc@1"); ours gets the
    cap."""
    return split_variant(side.removeprefix("trl-"), threads)[1] if side.startswith("trl-") else threads


# ----------------------------------------------------------------------------------------------
# Parent
# ----------------------------------------------------------------------------------------------


class Child:
    """A side's subprocess: stdin carries "go", a pipe carries its JSON messages back."""

    def __init__(self, side: str, args, log_dir: Path):
        read_fd, write_fd = os.pipe()
        threads = side_threads(side, args.threads)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
               "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
        command = [sys.executable, str(Path(__file__).resolve()), "--child", side, "--reply-fd", str(write_fd),
                   "--threads", str(args.threads), "--rows", str(args.rows), "--steps", str(args.steps),
                   "--warmup", str(args.warmup), "--out", str(args.out), "--ours-threads", str(args.ours_threads)]
        if args.profile:
            command.append("--profile")
        self.side = side
        self.log_path = log_dir / f"{side.replace('@', '-t')}.log"
        self.log = self.log_path.open("w")
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=self.log, stderr=subprocess.STDOUT,
                                     pass_fds=(write_fd,), text=True, env=env)
        os.close(write_fd)
        self.messages = os.fdopen(read_fd, "r")

    def receive(self) -> dict:
        while True:
            line = self.messages.readline()
            if not line:
                self.proc.wait(timeout=60)
                tail = self.log_path.read_text()[-3000:]
                raise RuntimeError(f"{self.side}: the process ended (exit code {self.proc.returncode}); "
                                   f"the end of {self.log_path}:\n{tail}")
            if line.startswith(MESSAGE_PREFIX):
                message = json.loads(line[len(MESSAGE_PREFIX):])
                if message.get("kind") == "error":
                    raise RuntimeError(f"{self.side} failed: {message['error']} (log: {self.log_path})")
                return message

    def expect(self, kind: str) -> dict:
        message = self.receive()
        if message.get("kind") != kind:
            raise RuntimeError(f"{self.side}: expected a {kind!r} message, got {message}")
        return message

    def go(self) -> None:
        self.send("go")

    def stop(self) -> None:
        self.send("stop")

    def send(self, command: str) -> None:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        try:
            self.proc.wait(timeout=300)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def gib(n: float) -> str:
    return f"{n / 2 ** 30:.2f} GiB"


def parent_main(args) -> None:
    import torch

    from tulu_lab.models import bf16_is_fast

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bf16_fast = bf16_is_fast("cpu")
    compute_dtype = "bfloat16" if bf16_fast else "float32"
    variants = args.trl if args.trl is not None else default_trl_variants(bf16_fast)
    sides = ["ours"] + ([] if args.profile else [f"trl-{v}" for v in variants])
    print(f"RLVR (GRPO) step: SmolLM2-135M-Instruct, LoRA r16 on all projections, {PROMPTS_PER_STEP} prompts x "
          f"{SAMPLES_PER_PROMPT} samples, <= {MAX_COMPLETION} tokens, beta {BETA}, at most {args.threads} threads "
          f"(ours: {args.ours_threads}); {args.warmup} warm-up + {args.steps} timed steps per side, alternating "
          f"{', '.join(sides)}", flush=True)
    with torch.inference_mode():
        bf16_rate, fp32_rate = probe_matmul("bfloat16", 256), probe_matmul("float32", 256)
    print(f"this CPU: bf16 matmuls {'native' if bf16_fast else 'emulated'} (256^3 product: bf16 "
          f"{bf16_rate / 1e9:.1f}, fp32 {fp32_rate / 1e9:.1f} GFLOP/s); both sides compute in {compute_dtype}"
          + ("" if bf16_fast else " (TRL's bf16 default is left out unless asked for with --trl default)"), flush=True)
    print(f"logs: {out}/<side>.log", flush=True)
    children = {side: Child(side, args, out) for side in sides}
    records: dict[str, list[dict]] = {side: [] for side in sides}
    shape = None
    try:
        for side, child in children.items():
            ready = child.expect("ready")
            if side == "ours":
                shape = ModelShape(**ready["shape"])
        for round_index in range(args.total_steps):
            limits = probe_machine(compute_dtype, args.threads)
            bandwidth = max(limits["copy"], limits["read"])
            timed = round_index >= args.warmup
            label = f"step {round_index - args.warmup + 1}/{args.steps}" if timed else f"warm-up {round_index + 1}"
            print(f"{label}: probes {compute_dtype} matmul {limits['matmul'] / 1e9:.1f} GFLOP/s, memory copy "
                  f"{limits['copy'] / 1e9:.1f} GB/s, read {limits['read'] / 1e9:.1f} GB/s", flush=True)
            for side, child in children.items():
                child.go()
                record = child.expect("step")
                record.update(round=round_index, timed=timed, probe=limits)
                if side == "ours":
                    step_shape = StepShape(record["prompt_lens"], record["response_lens"], record["group_size"])
                    record["roofline"] = roofline_seconds(shape, step_shape, limits["matmul"], bandwidth)
                records[side].append(record)
                print_step(side, record)
                if round_index + 1 < args.total_steps:
                    child.expect("ready")
            if round_index + 1 == args.warmup and args.prune:
                prune(children, records)
        for child in children.values():
            child.expect("end")
    finally:
        for child in children.values():
            child.close()
    sides = list(children)
    (out / "records.json").write_text(json.dumps(records, indent=1))
    report(args, sides, records, out)


def print_step(side: str, record: dict) -> None:
    split = ", ".join(f"{k} {v:.1f}" for k, v in record.get("split", {}).items() if v)
    roof = f"  roofline {record['roofline']['total']:.1f} s" if "roofline" in record else ""
    print(f"  {side:18s} {record['seconds']:7.1f} s (CPU {record['cpu_seconds']:6.1f} s)  {record['samples']:3d} samples  {record['completion_tokens']:5d} tokens"
          f"  {record['completion_tokens'] / record['seconds']:6.1f} tok/s  reward {record['reward']:6.2f}  "
          f"peak RSS {gib(record['peak_rss'])}  [{split}]{roof}", flush=True)


def prune(children: dict[str, Child], records: dict[str, list[dict]]) -> None:
    """After the warm-up, keep only the fastest TRL configuration (by its last warm-up step)."""
    trl = [side for side in children if side != "ours"]
    if len(trl) < 2:
        return
    fastest = min(trl, key=lambda side: records[side][-1]["seconds"])
    for side in trl:
        if side != fastest:
            children[side].stop()
            children[side].close()
            records[side + " (warm-up only)"] = records.pop(side)
            del children[side]
    print(f"  fastest TRL configuration in the warm-up: {fastest}; the others stop here (--no-prune keeps them)",
          flush=True)


def report(args, sides: list[str], records: dict[str, list[dict]], out: Path) -> None:
    summary = {}
    print("summary over the timed steps:")
    for side in sides:
        timed = [r for r in records[side] if r["timed"]]
        seconds = [r["seconds"] for r in timed]
        step = median(seconds)
        samples = statistics.fmean(r["samples"] for r in timed)
        tokens = sum(r["completion_tokens"] for r in timed) / sum(seconds)
        peak = max(r["peak_rss"] for r in records[side])
        cpu = median([r["cpu_seconds"] for r in timed])
        summary[side] = {"step": step, "samples_per_s": samples / step, "tokens_per_s": tokens, "peak": peak, "cpu": cpu}
        print(f"  {side:18s} median step {step:7.1f} s (min {min(seconds):.1f}, max {max(seconds):.1f}; CPU {cpu:.1f} s)  "
              f"{samples / step:5.2f} samples/s  {tokens:6.1f} completion tok/s  peak RSS {gib(peak)}")
    ours = [r for r in records["ours"] if r["timed"]]
    split = {k: median([r["split"][k] for r in ours]) for k in ours[0]["split"]}
    print("  ours, median split: generation (rollout + reward) {generate:.1f} s, reference log-probs {reference:.1f} s, "
          "update {update:.1f} s (of which backward {backward:.1f} s)".format(**split))
    fractions = [r["roofline"]["total"] / r["seconds"] for r in ours]
    parts = {k: median([r["roofline"][k] for r in ours]) for k in ours[0]["roofline"]}
    cpu_fraction = median([r["roofline"]["total"] / r["cpu_seconds"] for r in ours])
    print("  roofline for our step (median): " + ", ".join(f"{k} {v:.2f} s" for k, v in parts.items())
          + f"; achieved fraction {median(fractions):.2f} of wall time (the step takes {1 / median(fractions):.1f}x "
          f"the estimate), {cpu_fraction:.2f} of the CPU time it used")
    if args.curves:
        write_curves(sides, records, out)
    if len(sides) == 1:
        print(f"rlvr ours only: {summary['ours']['samples_per_s']:.2f} samples/s, peak RSS "
              f"{gib(summary['ours']['peak'])}, roofline {median(fractions):.2f}")
        return
    fastest = max((s for s in sides if s != "ours"), key=lambda s: summary[s]["samples_per_s"])
    o, t = summary["ours"], summary[fastest]
    print(f"fastest TRL configuration: {fastest}; CPU seconds per step ours/TRL: {o['cpu'] / t['cpu']:.2f}x "
          f"(on a busy machine CPU time is the work done, wall time includes waiting for a core)")
    print(f"rlvr samples/s ours/TRL: {o['samples_per_s'] / t['samples_per_s']:.1f}x (ours {o['samples_per_s']:.2f}, "
          f"TRL {t['samples_per_s']:.2f}), peak RSS ours/TRL: {o['peak'] / t['peak']:.2f}x, roofline {median(fractions):.2f}")


def write_curves(sides: list[str], records: dict[str, list[dict]], out: Path) -> None:
    """Per-step rewards of every side to curves.csv (and curves.png), with an overlap summary."""
    lines = ["side,step,reward,accuracy,seconds"]
    for side in sides:
        for i, r in enumerate(records[side]):
            lines.append(f"{side},{i + 1},{r['reward']:.4f},{r['accuracy']:.4f},{r['seconds']:.2f}")
    (out / "curves.csv").write_text("\n".join(lines) + "\n")
    ours = [r["reward"] for r in records["ours"]]
    for side in sides[1:]:
        theirs = [r["reward"] for r in records[side]]
        c = curves_overlap(ours, theirs)
        print(f"reward curves ours vs {side} over {len(ours)} steps: mean {c['mean_a']:.2f} +- {c['se_a']:.2f} vs "
              f"{c['mean_b']:.2f} +- {c['se_b']:.2f} (z = {c['z']:.2f}); largest gap between 5-step moving "
              f"averages = {c['max_gap_in_noise']:.1f} x their noise")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        for side in sides:
            ax.plot(range(1, len(records[side]) + 1), [r["reward"] for r in records[side]], marker="o", ms=3, label=side)
        ax.set_xlabel("optimiser step")
        ax.set_ylabel("mean reward of the step's 16 samples")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "curves.png", dpi=120)
        print(f"curves: {out / 'curves.csv'}, {out / 'curves.png'}")
    except ImportError:
        print(f"curves: {out / 'curves.csv'}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3, help="timed optimiser steps per side")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per side first")
    parser.add_argument("--threads", type=int, default=2, help="threads for every side (the cap for ours)")
    parser.add_argument("--ours-threads", default="auto",
                        help="ours: 'auto' (torch's setting, --threads) or a fixed count")
    parser.add_argument("--trl", default=None,
                        help=f"TRL configurations, comma-separated, from {sorted(TRL_VARIANTS)}, each optionally "
                             "'@THREADS' (default: TRL's defaults, no gradient checkpointing, and that on one "
                             "thread; in float32 where the CPU emulates bf16)")
    parser.add_argument("--no-prune", dest="prune", action="store_false",
                        help="keep every TRL configuration after the warm-up (default: only the fastest)")
    parser.add_argument("--curves", action="store_true", help="write per-step reward curves and compare them")
    parser.add_argument("--profile", action="store_true",
                        help="ours only: torch.profiler over the first timed step (out/profile_ours.txt)")
    parser.add_argument("--rows", type=int, default=256, help="synthetic word problems to draw prompts from")
    parser.add_argument("--out", default="/tmp/rlvr_vs_trl", help="folder for logs, records, curves")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--reply-fd", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    if args.ours_threads != "auto" and not (args.ours_threads.isdigit() and int(args.ours_threads) >= 1):
        parser.error(f"--ours-threads must be 'auto' or a positive integer, got {args.ours_threads!r}")
    if args.rows < PROMPTS_PER_STEP:
        parser.error(f"--rows must be >= {PROMPTS_PER_STEP}")
    args.total_steps = args.steps + args.warmup
    if args.child:
        args.side = args.child
        child_main(args)
        return
    if args.trl is not None:
        args.trl = [v.strip() for v in args.trl.split(",") if v.strip()]
        try:
            for variant in args.trl:
                split_variant(variant, args.threads)
        except ValueError as err:
            parser.error(f"--trl: {err}")
        if not args.trl and not args.profile:
            parser.error("--trl: name at least one configuration")
    parent_main(args)


if __name__ == "__main__":
    main()

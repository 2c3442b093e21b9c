"""What the three training loops share: accelerate set-up, LoRA wrapping, optimiser and schedule,
exact checkpoint/resume, JSONL metrics, seeding.

Checkpoints hold everything a resumed run needs to continue bit-for-bit on the CPU: trainable weights,
optimiser and scheduler state, the step counter, the loop's own state (data order position, ...) and
every RNG state. They are written to a temporary folder and renamed, so a run killed mid-write
(SIGKILL) leaves the previous checkpoint intact. Metrics lines past the checkpoint's step are dropped
on resume, so the metrics file of a resumed run equals that of an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_PREFIX = "checkpoint-"


# --------------------------------------------------------------------------------------------------
# Set-up
# --------------------------------------------------------------------------------------------------

def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_accelerator(cfg):
    """An Accelerator for the config: CPU unless CUDA is present; works under torchrun / accelerate launch.

    Mixed precision stays off: the loops choose their own compute dtype (bf16 weights or autocast),
    which behaves the same on CPU and GPU.
    """
    from accelerate import Accelerator

    return Accelerator(cpu=not torch.cuda.is_available(),
                       gradient_accumulation_steps=max(1, getattr(cfg, "gradient_accumulation", 1)))


def autocast(cfg, device: torch.device):
    """bf16 autocast for precision "bf16-autocast" (fp32 master weights, bf16 matmuls).

    Off where bf16 is emulated (AVX2-only CPUs): there it would make every matmul several times slower.
    """
    from tulu_lab.models import bf16_is_fast

    enabled = getattr(cfg, "precision", "fp32") == "bf16-autocast" and bf16_is_fast(device)
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def prepare_trainable(model, cfg):
    """Attach LoRA adapters from ``cfg.lora`` (unless the model already has them); cast for precision.

    With LoRA the frozen base stays in whatever dtype it was loaded in, and the adapters train in fp32:
    bf16 adapters would round away the small updates of a low learning rate.
    """
    from peft import PeftModel

    from tulu_lab.models import bf16_is_fast

    quantized = bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))
    if not quantized and model.dtype == torch.bfloat16 and not bf16_is_fast(next(model.parameters()).device):
        model = model.float()  # emulated bf16 (AVX2-only CPUs) is several times slower than float32
    if cfg.precision == "bf16-autocast" or cfg.precision == "fp32":
        if cfg.lora is None:
            model = model.float()
    if cfg.lora is not None and not isinstance(model, PeftModel):
        from tulu_lab.models import attach_lora, lora_config
        lora = lora_config(r=cfg.lora.r, alpha=cfg.lora.alpha, dropout=cfg.lora.dropout,
                           target_modules=list(cfg.lora.target_modules))
        model = attach_lora(model, lora, quantized=bool(getattr(model, "is_loaded_in_4bit", False)))
    if cfg.lora is not None:
        for name, param in model.named_parameters():
            if param.requires_grad and param.dtype != torch.float32:
                param.data = param.data.float()
    return model


def check_model_matches(cfg, model) -> None:
    """Refuse a model whose quantisation contradicts the config (QLoRA is one flag: cfg.lora.quantize_4bit)."""
    four_bit = bool(getattr(model, "is_loaded_in_4bit", False))
    wants_4bit = cfg.lora is not None and cfg.lora.quantize_4bit
    name = type(cfg).__name__
    if four_bit and cfg.lora is None:
        raise ValueError(f"{name}.lora is None (full fine-tuning) but the model is loaded in 4 bits: "
                         f"4-bit weights cannot be trained directly; set lora=LoraSettings(quantize_4bit=True) (QLoRA)")
    if wants_4bit and not four_bit:
        raise ValueError(f"{name}.lora.quantize_4bit is True but the model is not loaded in 4 bits; "
                         f"load it with tulu_lab.models.load_model(..., quant='nf4')")
    if four_bit and not wants_4bit:
        raise ValueError(f"the model is loaded in 4 bits but {name}.lora.quantize_4bit is False; "
                         f"set it to True so the run's config records QLoRA")


def check_processes(cfg, accelerator) -> None:
    """The effective batch counts processes, so the launch must match cfg.num_processes."""
    if accelerator.num_processes != cfg.num_processes:
        raise ValueError(f"{type(cfg).__name__}.num_processes is {cfg.num_processes} but the run was launched with "
                         f"{accelerator.num_processes} process(es); set num_processes={accelerator.num_processes} "
                         f"(and adjust gradient_accumulation to keep the effective batch)")


def epoch_order(num_examples: int, seed: int, epoch: int) -> list[int]:
    """The example order of one epoch: a permutation drawn from (seed, epoch) alone, never the global RNG,
    so a resumed run and every process see the same order."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_examples, generator=generator).tolist()


def step_micro_batches(order: list[int], position: int, per_device_batch: int, gradient_accumulation: int,
                       num_processes: int, process_index: int) -> list[list[int]]:
    """Example indices of this process's micro-batches for the ``position``-th optimiser step of an epoch.

    The global batch is ``order[position * B : (position + 1) * B]`` with ``B = per_device_batch *
    gradient_accumulation * num_processes``, cut into micro-batches of ``per_device_batch``; process ``r``
    takes micro-batches ``r, r + P, r + 2P, ...``. The micro-batches are the same whatever the number of
    processes, so one process with ``P x`` the accumulation runs exactly the same micro-batches.
    """
    size = per_device_batch * gradient_accumulation * num_processes
    window = order[position * size:(position + 1) * size]
    if len(window) != size:
        raise ValueError(f"step {position} of the epoch needs {size} examples, only {len(window)} are left")
    micro = [window[i:i + per_device_batch] for i in range(0, size, per_device_batch)]
    return micro[process_index::num_processes]


def seed_step(seed: int, step: int, process_index: int) -> None:
    """Reseed the global RNGs (dropout) from (seed, step, process): a resumed run, on any process, draws
    exactly what an uninterrupted run draws, without relying on saved RNG state."""
    seed_everything((seed * 1_000_003 + step) * 1_009 + process_index)


def scored_positions(labels: torch.Tensor) -> int:
    """How many trailing positions need logits: from the one predicting the first label to the end.

    Position ``t`` predicts token ``t + 1``, and with prompt-first, right-padded rows nothing before the
    batch's first label is scored, so ``model(..., logits_to_keep=k)`` with this ``k`` and
    ``labels[:, -k:]`` give exactly the loss of the full sequence while skipping the LM head (a
    vocabulary-sized product per token) on the prompt.
    """
    scored = (labels != -100).any(dim=0).nonzero()
    if scored.numel() == 0:
        return labels.size(1)
    return labels.size(1) - max(int(scored[0]) - 1, 0)


def remove_checkpoints(output_dir: str | Path) -> None:
    """Delete the checkpoints of an earlier run (a fresh start must never resume from them later)."""
    for path in list_checkpoints(output_dir):
        shutil.rmtree(path, ignore_errors=True)


def trainable_parameters(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def make_optimizer(params, cfg) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=cfg.learning_rate, eps=cfg.adam_eps, weight_decay=cfg.weight_decay)


def make_scheduler(optimizer, cfg, total_steps: int):
    """Linear warmup from 0, then linear decay to 0 / cosine / constant (cfg.lr_schedule)."""
    warmup = int(math.ceil(cfg.warmup_ratio * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if cfg.lr_schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total_steps - warmup)
        if cfg.lr_schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return max(0.0, 1.0 - progress)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# --------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------

def _rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def trainable_state_dict(model) -> dict[str, torch.Tensor]:
    """Only what training changes (LoRA adapters, value head, or every weight in full fine-tuning)."""
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(output_dir: str | Path, step: int, model, optimizer, scheduler,
                    loop_state: dict[str, Any], extra_modules: dict[str, torch.nn.Module] | None = None,
                    keep: int = 2) -> Path:
    """Write ``output_dir/checkpoint-{step}`` atomically; keep the newest ``keep`` checkpoints."""
    output_dir = Path(output_dir)
    final = output_dir / f"{CHECKPOINT_PREFIX}{step}"
    tmp = output_dir / f".tmp-{CHECKPOINT_PREFIX}{step}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in trainable_state_dict(model).items()}, str(tmp / "trainable.safetensors"))
    for name, module in (extra_modules or {}).items():
        save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(tmp / f"{name}.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "rng": _rng_state(), "loop_state": loop_state, "step": step}, tmp / "state.pt")
    (tmp / "step.json").write_text(json.dumps({"step": step}))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [p for p in output_dir.glob(f"{CHECKPOINT_PREFIX}*") if (p / "step.json").is_file()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


class CorruptCheckpointError(RuntimeError):
    """A checkpoint's files cannot be read (truncated, damaged); the message names the file."""


def _read_checkpoint_file(path: Path, read):
    try:
        return read(path)
    except Exception as err:  # safetensors, pickle and OS errors alike: the file is unusable
        raise CorruptCheckpointError(f"checkpoint file {path} cannot be read "
                                     f"({type(err).__name__}: {err})") from err


def load_checkpoint(path: str | Path, model, optimizer, scheduler,
                    extra_modules: dict[str, torch.nn.Module] | None = None) -> tuple[int, dict[str, Any]]:
    """Restore a checkpoint in place; returns (step, loop_state).

    Every file is read before anything is restored, so a damaged checkpoint (CorruptCheckpointError,
    naming the file) leaves the model, optimiser and scheduler as they were.
    """
    from safetensors.torch import load_file

    path = Path(path)
    weights = _read_checkpoint_file(path / "trainable.safetensors", lambda p: load_file(str(p)))
    extra_states = {name: _read_checkpoint_file(path / f"{name}.safetensors", lambda p: load_file(str(p)))
                    for name in (extra_modules or {})}
    state = _read_checkpoint_file(path / "state.pt", lambda p: torch.load(p, weights_only=False))
    if not isinstance(state, dict) or not {"optimizer", "scheduler", "rng", "step"} <= set(state):
        raise CorruptCheckpointError(f"checkpoint file {path / 'state.pt'} does not hold a training state")
    params = dict(model.named_parameters())
    unknown = sorted(set(weights) - set(params))
    if unknown:
        raise ValueError(f"checkpoint {path}: tensors {unknown[:5]} do not exist in the model "
                         f"(was it written by a run with another LoRA/model configuration?)")
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor)
    for name, module in (extra_modules or {}).items():
        module.load_state_dict(extra_states[name])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(state["rng"])
    return int(state["step"]), state["loop_state"]


# --------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------

class MetricsLog:
    """Appends one JSON object per step to a JSONL file (TRL-compatible metric names)."""

    def __init__(self, path: str | Path, *, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def truncate_after(self, step: int) -> None:
        """Drop lines logged after ``step`` (they belong to work a resumed run will redo)."""
        if not (self.enabled and self.path.is_file()):
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line torn by a kill mid-write: its step is redone anyway
                continue
            if record.get("step", 0) <= step:
                kept.append(line)
        self.path.write_text("".join(line + "\n" for line in kept))

    def reset(self) -> None:
        if self.enabled and self.path.is_file():
            self.path.unlink()

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {k: (float(v) if isinstance(v, (torch.Tensor, np.floating)) else v) for k, v in record.items()}
        with self.path.open("a") as f:
            f.write(json.dumps(clean) + "\n")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


def resume_or_start(cfg, model, optimizer, scheduler, log: MetricsLog,
                    extra_modules: dict[str, torch.nn.Module] | None = None,
                    resume: bool = True) -> tuple[int, dict[str, Any]]:
    """Load the newest checkpoint in ``cfg.output_dir`` if there is one; returns (start_step, loop_state)."""
    checkpoints = list_checkpoints(cfg.output_dir) if resume else []
    if not checkpoints:
        log.reset()
        return 0, {}
    problems = []
    for checkpoint in reversed(checkpoints):  # newest first; a damaged one falls back to the one before
        try:
            step, loop_state = load_checkpoint(checkpoint, model, optimizer, scheduler, extra_modules)
        except CorruptCheckpointError as err:
            problems.append(str(err))
            print(f"[tulu_lab] skipping damaged checkpoint: {err}", flush=True)
            continue
        log.truncate_after(step)
        print(f"[tulu_lab] resumed from {checkpoint} (step {step})", flush=True)
        return step, loop_state
    raise CorruptCheckpointError(f"no usable checkpoint in {cfg.output_dir}: " + "; ".join(problems)
                                 + ". Delete them (or pass resume=False) to start afresh.")


def save_final(model, tokenizer, output_dir: str | Path, cfg, summary: dict[str, Any],
               merged: bool = True) -> Path:
    """Write the result to ``output_dir/final``: a full checkpoint the next stage loads with load_model.

    LoRA adapters are saved in ``final/adapter`` and, with ``merged``, folded into the base weights
    (``final`` is then a normal model folder). The next stage's reference policy is this merged model
    with its own fresh adapters disabled, as in the paper (DPO's reference is the SFT model).
    """
    final = Path(output_dir) / "final"
    final.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "peft_config"):
        model.save_pretrained(final / "adapter", safe_serialization=True)
        if merged:
            import copy
            work = copy.deepcopy(model)
            if getattr(work, "is_loaded_in_4bit", False) or getattr(work, "is_loaded_in_8bit", False):
                # QLoRA: merge into the dequantised weights the adapters were trained against (a bnb
                # model can be neither merged exactly in place nor cast to bf16)
                from peft import PeftModel
                plain = work.unload().dequantize()
                base = PeftModel.from_pretrained(plain, final / "adapter").merge_and_unload()
            else:
                base = work.merge_and_unload()
            base.to(torch.bfloat16).save_pretrained(final, safe_serialization=True)
    else:
        model.save_pretrained(final, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(final)
    cfg.save_json(final / "train_config.json")
    (final / "summary.json").write_text(json.dumps(summary, indent=2))
    return final


class StepTimer:
    def __init__(self):
        self.start = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        elapsed, self.start = now - self.start, now
        return elapsed

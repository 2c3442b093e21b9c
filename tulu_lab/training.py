"""The trainer: one training loop for every stage, the run state, checkpoints, metrics, seeding.

Checkpoints hold everything a resumed run needs to continue bit-for-bit on the CPU: trainable weights,
optimiser and scheduler state, the step counter, the loop's own state (data order position, ...) and
every RNG state. They are written to a temporary folder and renamed, so a run killed mid-write
(SIGKILL) leaves the previous checkpoint intact. Metrics lines past the checkpoint's step are dropped
on resume, so the metrics file of a resumed run equals that of an uninterrupted one.

One loop trains every stage (:func:`run_training`): a stage (:class:`Stage`; SFT and DPO are
:class:`EpochStage`) supplies its batches and its step's losses, the trainer owns accelerator set-up,
seeding, LoRA, optimiser and schedule, the run state, logging, checkpoints, resume, the time limit, the
numerical guard and the final save.

Launching: one process, ``torchrun --nproc_per_node N`` or ``accelerate launch`` (DDP, FSDP,
DeepSpeed) run the same code; ``cfg.num_processes`` must equal the number launched. Collectives go
through accelerate. Checkpoints and ``final`` are written from the main process's unsharded parameters,
so exact resume is for one process or DDP; with parameters sharded by FSDP / DeepSpeed ZeRO-3 they
would need gathering first.
"""

from __future__ import annotations

import hashlib
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
    """Python's, numpy's and torch's RNGs (every device) from one seed (accelerate's set_seed)."""
    from accelerate.utils import set_seed

    set_seed(seed % 2**32)


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


# cfg.lr_schedule -> transformers' scheduler name (each with linear warmup from 0 over the warmup steps)
SCHEDULER_NAMES = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}


def make_scheduler(optimizer, cfg, total_steps: int):
    """transformers' schedule for ``cfg.lr_schedule``: linear warmup from 0 over
    ``ceil(warmup_ratio * total_steps)`` steps, then linear decay to 0 / cosine / constant."""
    from transformers import get_scheduler

    warmup = int(math.ceil(cfg.warmup_ratio * total_steps))
    return get_scheduler(SCHEDULER_NAMES[cfg.lr_schedule], optimizer, num_warmup_steps=warmup,
                         num_training_steps=total_steps)


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

    def log(self, record: dict[str, Any]) -> dict[str, Any]:
        """Append ``record``; a non-finite number is written as null (JSON has no NaN or Infinity).
        Returns the record as written."""
        clean = {k: _json_number(v) for k, v in record.items()}
        if not self.enabled:
            return clean
        with self.path.open("a") as f:
            f.write(json.dumps(clean, allow_nan=False) + "\n")
        return clean

    def read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


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


def _json_number(value: Any) -> Any:
    if isinstance(value, (torch.Tensor, np.floating, np.integer)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class StepTimer:
    def __init__(self):
        self.start = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        elapsed, self.start = now - self.start, now
        return elapsed


# --------------------------------------------------------------------------------------------------
# Run state: which settings a run folder belongs to, and how far it got
# --------------------------------------------------------------------------------------------------
#
# A run folder holds one run: ``run.json`` records the fingerprint of everything that decides the
# trained weights (the resolved config, the starting weights, the training data and the stage's own
# settings), the resolved values themselves, the run's status ("running", "stopped" at a time limit,
# "finished", "failed") and the step reached. A trainer called on a folder whose record has another
# fingerprint refuses (``RunMismatchError``, naming what differs): it neither resumes a checkpoint
# written under other settings nor deletes one. Caches of measurements on a run's weights (held-out
# scores, evaluations) key on that fingerprint.

RUN_FILE = "run.json"
RUN_STATUSES = ("running", "stopped", "finished", "failed")
# config fields that say where and how often to write, not what is trained
_NOT_IDENTITY = ("output_dir", "log_path", "checkpoint_every", "report_to")


class RunMismatchError(ValueError):
    """A run folder holds a run of other settings than the ones asked for."""


class NonFiniteError(FloatingPointError):
    """Training produced a NaN or infinite loss or weights; the run stopped without a final save."""


def fingerprint(value: Any) -> str:
    """A short stable hash of a JSON-able value (dict keys sorted)."""
    text = json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def data_fingerprint(rows) -> str:
    """The fingerprint of training (or evaluation) rows: their JSON content, in order."""
    return fingerprint(list(rows))


def weights_fingerprint(model, tokenizer=None) -> str:
    """A hash of every tensor of the model (names, dtypes, shapes, bytes) and of the tokenizer's
    vocabulary and chat template: what a run starts from when no named checkpoint is given."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        if tensor.device.type != "meta":
            digest.update(tensor.reshape(-1).cpu().contiguous().view(torch.uint8).numpy().tobytes())
    if tokenizer is not None:
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
        digest.update(str(getattr(tokenizer, "chat_template", None)).encode())
    return "weights:" + digest.hexdigest()[:16]


def source_fingerprint(source: str | os.PathLike) -> str:
    """The identity of a model a run starts from, without loading it.

    A run's ``final`` folder (or the run folder) is named by that run's fingerprint; another local
    folder by its config and the names and sizes of its files; anything else (a hub id, the embedded
    model's name) by its name.
    """
    path = Path(source)
    for folder in (path, path.parent):
        record = read_run(folder)
        if record is not None and record.get("status") == "finished":
            return "run:" + record["fingerprint"]
    if path.is_dir():
        files = sorted((p.name, p.stat().st_size) for p in path.iterdir() if p.is_file())
        config = (path / "config.json").read_text() if (path / "config.json").is_file() else ""
        return "folder:" + fingerprint({"files": files, "config": config})
    return "name:" + str(source)


def start_identity(start: str | None, model, tokenizer) -> str:
    """What a run starts from: ``start`` as given (a run's or a folder's fingerprint, see
    :func:`source_fingerprint`), else a hash of the model's weights and the tokenizer."""
    return start or weights_fingerprint(model, tokenizer)


def run_identity(cfg, *, start: str, data: str, **settings: Any) -> dict[str, Any]:
    """Everything that decides a run's weights, resolved: the stage, the config without its output
    paths, the starting weights' and the data's fingerprints, and the stage's own settings."""
    config = {k: v for k, v in cfg.to_dict().items() if k not in _NOT_IDENTITY}
    return {"stage": getattr(cfg, "stage", ""), "config": config, "start": start, "data": data,
            "settings": settings}


def read_run(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The folder's ``run.json`` record, or None when it has none."""
    path = Path(folder) / RUN_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err}); the run record is damaged") from None


def finished_run(folder: str | os.PathLike, expected: str | None = None) -> dict[str, Any] | None:
    """The folder's record if its run finished (and has the ``expected`` fingerprint), else None."""
    record = read_run(folder)
    if record is None or record.get("status") != "finished":
        return None
    if expected is not None and record.get("fingerprint") != expected:
        return None
    return record


def update_run(folder: str | os.PathLike, **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into the folder's record, written whole or not at all."""
    folder = Path(folder)
    record = {**(read_run(folder) or {}), **fields, "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if record.get("status") not in RUN_STATUSES:
        raise ValueError(f"run status must be one of {list(RUN_STATUSES)}, got {record.get('status')!r}")
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{RUN_FILE}.tmp"
    tmp.write_text(json.dumps(_json_safe(record), indent=2, default=str, allow_nan=False) + "\n")
    os.replace(tmp, folder / RUN_FILE)
    return record


def _json_safe(value: Any) -> Any:
    """Non-finite floats as the strings "inf", "-inf", "nan" (JSON has no such numbers)."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def flatten_config(value: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as one level of dotted keys: {"lora": {"r": 16}} -> {"lora.r": 16}."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten_config(item, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: value}


def identity_differences(recorded: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """``"config.learning_rate: 0.001 (recorded) != 0.002 (now)"`` for each value that differs."""
    old, new = flatten_config(recorded), flatten_config(_json_safe(wanted))
    return [f"{key}: {old.get(key, '<absent>')!r} (recorded) != {new.get(key, '<absent>')!r} (now)"
            for key in sorted(set(old) | set(new)) if old.get(key, "<absent>") != new.get(key, "<absent>")]


def check_run_folder(folder: str | os.PathLike, identity: dict[str, Any]) -> dict[str, Any] | None:
    """Refuse a folder that holds another run; returns its record when it holds this one (else None).

    Another run is a record with another fingerprint, or checkpoints or metrics without any record
    (written by something that kept none): neither may be resumed, overwritten or deleted.
    """
    folder = Path(folder)
    wanted = fingerprint(identity)
    record = read_run(folder)
    if record is None:
        leftovers = list_checkpoints(folder) + [p for p in (folder / "metrics.jsonl", folder / "final") if p.exists()]
        if leftovers:
            raise RunMismatchError(
                f"{folder} holds {leftovers[0].name} but no {RUN_FILE}: it belongs to a run of unknown settings, "
                f"which is neither resumed nor deleted; choose another output_dir (or delete that folder)")
        return None
    if record.get("fingerprint") != wanted:
        differences = identity_differences(record.get("identity", {}), identity)
        raise RunMismatchError(
            f"{folder} holds run {record.get('fingerprint')} ({record.get('status')}, step {record.get('step')}), "
            f"not run {wanted} asked for now; it is neither resumed nor overwritten. Choose another output_dir. "
            f"What differs: " + "; ".join(differences[:12]))
    return record


def begin_run(folder: str | os.PathLike, identity: dict[str, Any], *, resume: bool, is_main: bool = True,
              total_steps: int | None = None) -> bool:
    """Claim ``folder`` for the run ``identity``; returns whether its checkpoints may be resumed.

    A folder of another run raises :class:`RunMismatchError` (on every process, before anything is
    written). ``resume=False`` restarts this same run: its own checkpoints and metrics are removed.
    """
    record = check_run_folder(folder, identity)
    resumable = resume and record is not None
    if is_main:
        if record is not None and not resume:
            remove_checkpoints(folder)
            shutil.rmtree(Path(folder) / "final", ignore_errors=True)
        update_run(folder, fingerprint=fingerprint(identity), identity=identity, status="running",
                   step=(record or {}).get("step", 0) if resumable else 0, total_steps=total_steps,
                   error=None)
    return resumable


def resume_or_start(output_dir: str | os.PathLike, model, optimizer, scheduler, log: MetricsLog,
                    extra_modules: dict[str, torch.nn.Module] | None = None,
                    resume: bool = True) -> tuple[int, dict[str, Any]]:
    """Load the newest checkpoint in ``output_dir`` when resuming (``begin_run`` said the folder is
    this run's); returns (start_step, loop_state). Metrics lines past that step are dropped."""
    checkpoints = list_checkpoints(output_dir) if resume else []
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
    raise CorruptCheckpointError(f"no usable checkpoint in {output_dir}: " + "; ".join(problems)
                                 + ". Delete them (or pass resume=False) to start afresh.")


def check_finite(output_dir: str | os.PathLike, step: int, values: dict[str, Any], *, is_main: bool = True) -> None:
    """Stop the run when a loss is NaN or infinite: the error names the step, the value and the last
    good checkpoint; the run record says "failed" and no ``final`` is written."""
    bad = {k: v for k, v in values.items() if v is not None and not math.isfinite(float(v))}
    if bad:
        _fail_run(output_dir, step, ", ".join(f"{k} = {float(v)}" for k, v in bad.items()), is_main)


def check_finite_weights(output_dir: str | os.PathLike, step: int, model, *, is_main: bool = True) -> None:
    """Refuse to checkpoint weights an update made NaN or infinite (e.g. a learning rate of inf)."""
    for name, param in model.named_parameters():
        if param.requires_grad and not bool(torch.isfinite(param.detach()).all()):
            _fail_run(output_dir, step, f"trainable weight {name} is not finite after the update", is_main)


def _fail_run(output_dir, step: int, what: str, is_main: bool) -> None:
    checkpoints = list_checkpoints(output_dir)
    last = str(checkpoints[-1]) if checkpoints else "none (no checkpoint was written before it)"
    message = (f"training stopped at step {step}: {what}. Last good checkpoint: {last}. "
               f"No final model was written; lower the learning rate or check the data, then rerun "
               f"(the run resumes from that checkpoint).")
    if is_main:
        update_run(output_dir, status="failed", error=message)
        append_ledger(output_dir)
    raise NonFiniteError(message)


def finish_run(output_dir: str | os.PathLike, *, step: int, stopped_early: bool, wall_time_s: float,
               final_metrics: dict[str, Any] | None) -> dict[str, Any]:
    """Mark the run finished (or "stopped" before its last step, to be continued)."""
    clean = {k: _json_number(v) for k, v in (final_metrics or {}).items()}
    record = update_run(output_dir, status="stopped" if stopped_early else "finished", step=step,
                        wall_time_s=round(wall_time_s, 1), final_metrics=clean)
    append_ledger(output_dir)
    return record


def append_ledger(output_dir: str | os.PathLike) -> None:
    """List the run's record (just written to its run.json) in the run ledger (:mod:`tulu_lab.ledger`).

    The run's own folder is the source of truth: a ledger that cannot be written is reported, and
    ``ledger.rebuild_ledger()`` restores it from the folders.
    """
    from tulu_lab.ledger import append_run

    try:
        append_run(output_dir)
    except OSError as err:
        print(f"[tulu_lab] the run ledger was not updated ({type(err).__name__}: {err}); "
              f"tulu_lab.ledger.rebuild_ledger() rebuilds it from the run folders", flush=True)


# --------------------------------------------------------------------------------------------------
# The training loop every stage runs
# --------------------------------------------------------------------------------------------------


class Stage:
    """What a training stage supplies to :func:`run_training`; the loop, the run state, checkpoints,
    logging, the time limit and the final save are the trainer's.

    Hooks, in the order they run: ``prepare_model`` (before adapters are attached: a frozen copy of
    the starting model, a dtype change), ``extra_modules`` (trained modules besides the model, e.g. a
    value head: optimised and checkpointed with it), ``before_resume`` (work on the starting weights,
    e.g. reference log-probs), then per step ``step`` (the stage's batches, losses and optimiser
    steps; returns the step's metrics record) and ``after_step`` (e.g. a held-out evaluation), and at
    the end ``summary`` and ``after_final``.
    """

    name = "train"
    wrap_model = True  # accelerate's DDP wrapper; False where the stage sums gradients itself
    checkpoint_at_end = False  # also checkpoint the last step (a later call with more steps continues it)

    def __init__(self, cfg, total_steps: int):
        self.cfg = cfg
        self.total_steps = total_steps

    def prepare_model(self, model, run: TrainingRun):
        return model

    def extra_modules(self, model, run: TrainingRun) -> dict[str, torch.nn.Module]:
        return {}

    def before_resume(self, run: TrainingRun) -> None:
        pass

    def step(self, run: TrainingRun, step: int, learning_rate: float) -> dict[str, Any]:
        raise NotImplementedError

    def after_step(self, run: TrainingRun, step: int, record: dict[str, Any], last: bool) -> None:
        pass

    def loop_state(self, step: int) -> dict[str, Any]:
        return {}

    def postfix(self, record: dict[str, Any]) -> dict[str, str]:
        return {"loss": f"{record.get('loss') or 0.0:.4f}"}

    def summary(self, run: TrainingRun, steps_done: int, last_record: dict[str, Any]) -> dict[str, Any]:
        return {}

    def after_final(self, run: TrainingRun, final_dir: Path) -> None:
        pass


class TrainingRun:
    """The state :func:`run_training` hands to a stage's hooks."""

    def __init__(self, cfg, accelerator):
        self.cfg = cfg
        self.accelerator = accelerator
        self.device = accelerator.device
        self.rank = accelerator.process_index
        self.num_processes = accelerator.num_processes
        self.is_main = accelerator.is_main_process
        self.model = None          # what the stage runs forward passes on (wrapped for DDP where it is)
        self.unwrapped = None      # the model itself (checkpoints, adapters, final save)
        self.optimizer = None
        self.scheduler = None
        self.params: list[torch.nn.Parameter] = []
        self.extra_modules: dict[str, torch.nn.Module] = {}
        self.log: MetricsLog | None = None

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over every process (a copy)."""
        return self.accelerator.reduce(tensor.detach().clone().to(self.device), reduction="sum").cpu()


def run_training(stage: Stage, model, tokenizer, *, identity: dict[str, Any], resume: bool = True,
                 progress: bool = True, time_limit_s: float | None = None, save_merged: bool = True,
                 accelerator=None) -> tuple[dict[str, Any], TrainingRun]:
    """Train ``model`` with ``stage``: the loop every stage runs.

    Sets up the accelerator and the seed, attaches LoRA, builds the optimiser and schedule, claims the
    run folder (``begin_run``: a folder of another run is refused) and resumes its newest checkpoint,
    then runs ``stage.step`` per step with the dropout RNG reseeded from (seed, step, process), logs
    every record (stopping on a non-finite loss), checkpoints every ``cfg.checkpoint_every`` steps,
    stops before a step would end past ``time_limit_s`` (a checkpoint is written there, the run's status
    is "stopped" and a later call continues it), and writes ``output_dir/final`` (``save_final``).
    Returns (summary, run).
    """
    from tulu_lab.tracking import check_installed, open_trackers, parse_report_to

    cfg = stage.cfg
    started = time.perf_counter()
    check_installed(parse_report_to(getattr(cfg, "report_to", "none")))  # before any work: a missing package
    accelerator = accelerator or make_accelerator(cfg)
    check_processes(cfg, accelerator)
    check_model_matches(cfg, model)
    run = TrainingRun(cfg, accelerator)

    # ---- model, optimiser, schedule ----
    seed_everything(cfg.seed)  # LoRA initialisation: the same on every process and in every run
    model = stage.prepare_model(model, run)
    cfg = run.cfg = stage.cfg  # the stage may have resolved a setting (e.g. float32 without native bf16)
    model = prepare_trainable(model, cfg)
    if not stage.wrap_model:
        model = model.to(run.device)
    model.train()
    run.extra_modules = stage.extra_modules(model, run)
    run.params = trainable_parameters(model) + [p for m in run.extra_modules.values() for p in m.parameters()]
    if not run.params:
        raise ValueError(f"{stage.name}: the model has no trainable parameter (set cfg.lora or unfreeze weights)")
    optimizer = make_optimizer(run.params, cfg)
    scheduler = make_scheduler(optimizer, cfg, stage.total_steps)
    if stage.wrap_model:  # the scheduler is stepped by hand, once per optimiser step
        model, optimizer = accelerator.prepare(model, optimizer)
    run.model, run.unwrapped = model, accelerator.unwrap_model(model) if stage.wrap_model else model
    run.optimizer, run.scheduler = optimizer, scheduler
    stage.before_resume(run)

    # ---- the run folder: claim it, resume its newest checkpoint ----
    run.log = MetricsLog(cfg.metrics_path, enabled=run.is_main)
    resumable = begin_run(cfg.output_dir, identity, resume=resume, is_main=run.is_main,
                          total_steps=stage.total_steps)
    accelerator.wait_for_everyone()
    start_step, _ = resume_or_start(cfg.output_dir, run.unwrapped, optimizer, scheduler, run.log,
                                    extra_modules=run.extra_modules or None, resume=resumable)

    # ---- trackers (report_to), fed from the records written to metrics.jsonl ----
    trackers = open_trackers(getattr(cfg, "report_to", "none") if run.is_main else "none", cfg.output_dir,
                             config=identity.get("config", {}), start_step=start_step, key=fingerprint(identity))
    try:
        summary = _train_steps(stage, run, tokenizer, start_step, trackers, time_limit_s, progress, started,
                               save_merged)
    finally:
        trackers.close()
    return summary, run


def _train_steps(stage: Stage, run: TrainingRun, tokenizer, start_step: int, trackers, time_limit_s, progress: bool,
                 started: float, save_merged: bool) -> dict[str, Any]:
    """The steps of :func:`run_training` from ``start_step``, then the final save; returns the summary."""
    from tqdm.auto import tqdm

    cfg, accelerator = run.cfg, run.accelerator
    optimizer, scheduler = run.optimizer, run.scheduler
    # ---- steps ----
    bar = tqdm(total=stage.total_steps, initial=start_step, desc=stage.name, unit="step",
               disable=not (progress and run.is_main))
    loop_started = time.perf_counter()
    last_record: dict[str, Any] | None = None
    steps_done = start_step
    for step in range(start_step, stage.total_steps):
        seed_step(cfg.seed, step, run.rank)  # dropout draws depend on (seed, step, process) only
        timer = StepTimer()
        record = stage.step(run, step, scheduler.get_last_lr()[0])
        seconds = timer.lap()
        record.setdefault("step_time", seconds)
        # stop where the next step (as long as this one) would end past the limit
        out_of_time = time_limit_s is not None and bool(run.sum(torch.tensor(float(
            time.perf_counter() - loop_started + seconds > time_limit_s))) > 0)
        stage.after_step(run, step, record, step + 1 == stage.total_steps or out_of_time)
        trackers.log(run.log.log(record))
        check_finite(cfg.output_dir, step + 1, {"loss": record.get("loss")}, is_main=run.is_main)
        last_record, steps_done = record, step + 1
        bar.update(1)
        bar.set_postfix(**stage.postfix(record))
        at_end = step + 1 == stage.total_steps
        periodic = bool(cfg.checkpoint_every) and (step + 1) % cfg.checkpoint_every == 0
        if out_of_time or (periodic and not at_end) or (at_end and stage.checkpoint_at_end):
            accelerator.wait_for_everyone()
            check_finite_weights(cfg.output_dir, step + 1, run.unwrapped, is_main=run.is_main)
            if run.is_main:
                save_checkpoint(cfg.output_dir, step + 1, run.unwrapped, optimizer, scheduler,
                                loop_state=stage.loop_state(step), extra_modules=run.extra_modules or None)
            accelerator.wait_for_everyone()
        if out_of_time:
            break
    bar.close()

    # ---- the result: output_dir/final ----
    if last_record is None:  # everything was done before this call (resumed at the end)
        records = run.log.read()
        last_record = records[-1] if records else {}
    summary = {"stage": getattr(cfg, "stage", stage.name), "steps": steps_done, "start_step": start_step,
               "stopped_early": steps_done < stage.total_steps, **stage.summary(run, steps_done, last_record),
               "wall_time_s": time.perf_counter() - started, "output_dir": str(cfg.output_dir),
               "final_dir": str(Path(cfg.output_dir) / "final"), "metrics_path": str(cfg.metrics_path)}
    accelerator.wait_for_everyone()
    check_finite_weights(cfg.output_dir, steps_done, run.unwrapped, is_main=run.is_main)
    if run.is_main:
        final_dir = save_final(run.unwrapped, tokenizer, cfg.output_dir, cfg, summary, merged=save_merged)
        stage.after_final(run, final_dir)
        finish_run(cfg.output_dir, step=steps_done, stopped_early=summary["stopped_early"],
                   wall_time_s=summary["wall_time_s"], final_metrics=last_record)
    accelerator.wait_for_everyone()
    return summary


class EpochStage(Stage):
    """A stage that walks its examples epoch by epoch, ``cfg.effective_batch`` of them per optimiser
    step, each epoch a fresh permutation drawn from (seed, epoch), the incomplete last batch skipped
    (SFT, DPO). ``max_steps``, when set, overrides ``epochs``."""

    examples_name = "examples"

    def __init__(self, cfg, n_examples: int, dropped: int):
        self.steps_per_epoch = n_examples // cfg.effective_batch
        if self.steps_per_epoch == 0:
            raise ValueError(f"{self.name}: {n_examples} usable {self.examples_name} ({dropped} dropped) cannot fill "
                             f"one optimiser step of effective_batch={cfg.effective_batch}; add "
                             f"{self.examples_name} or lower the batch")
        super().__init__(cfg, cfg.max_steps if cfg.max_steps is not None else cfg.epochs * self.steps_per_epoch)
        self.n_examples, self.dropped = n_examples, dropped
        self._order_epoch, self._order = -1, []

    def micro_batches(self, run: TrainingRun, step: int) -> list[list[int]]:
        """This process's micro-batches (example indices) of optimiser step ``step``."""
        epoch, position = divmod(step, self.steps_per_epoch)
        if epoch != self._order_epoch:
            self._order_epoch, self._order = epoch, epoch_order(self.n_examples, self.cfg.seed, epoch)
        return step_micro_batches(self._order, position, self.cfg.per_device_batch, self.cfg.gradient_accumulation,
                                  self.cfg.num_processes, run.rank)

    def backward(self, run: TrainingRun, loss: torch.Tensor) -> None:
        """Backpropagate one micro-batch's loss (inside ``accelerator.accumulate``); after the step's
        last one, clip, step the optimiser and the schedule."""
        accelerator = run.accelerator
        accelerator.backward(loss)
        if accelerator.sync_gradients:
            if self.cfg.grad_clip is not None:
                accelerator.clip_grad_norm_(run.model.parameters(), self.cfg.grad_clip)
            run.optimizer.step()
            run.scheduler.step()
            run.optimizer.zero_grad(set_to_none=True)

    def epoch(self, step: int) -> float:
        return (step + 1) / self.steps_per_epoch

    def loop_state(self, step: int) -> dict[str, Any]:
        epoch, position = divmod(step, self.steps_per_epoch)
        return {"epoch": epoch, "position_in_epoch": position + 1}

    def report_dropped(self, run: TrainingRun, why: str) -> None:
        if self.dropped and run.is_main:
            print(f"[tulu_lab] {self.name}: dropped {self.dropped} of {self.n_examples + self.dropped} "
                  f"{self.examples_name} {why}", flush=True)


def train_epochs(stage: EpochStage, model, tokenizer, rows, *, start: str | None, resume: bool,
                 progress: bool) -> dict[str, Any]:
    """:func:`run_training` for an :class:`EpochStage` trained on ``rows`` (the run's data, as given)
    from ``start`` (see :func:`start_identity`); the summary with the trained model (eval mode)."""
    identity = run_identity(stage.cfg, start=start_identity(start, model, tokenizer), data=data_fingerprint(rows))
    summary, run = run_training(stage, model, tokenizer, identity=identity, resume=resume, progress=progress)
    run.accelerator.free_memory()  # drop the accelerator's references to the optimiser and wrapped model
    run.unwrapped.eval()
    return {**summary, "model": run.unwrapped}

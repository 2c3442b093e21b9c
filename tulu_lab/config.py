"""Typed configs for the three training stages, with the Tülu 3 paper's defaults per model scale.

    SFTConfig.for_scale("8B")           # the paper's 8B SFT settings
    DPOConfig.for_scale("70B")
    RLVRConfig.for_scale("405B")        # Tülu 3 PPO; RLVRConfig.for_scale("8B", algorithm="grpo") for 3.1
    RLVRConfig.for_scale("embedded")    # == RLVRConfig.cpu_preset(): the small CPU model
    paper_config("dpo", "8B", beta=2.5) # any stage, with overrides (validated)

Every default carries a comment naming its source. "Table N" is the Tülu 3 paper (arXiv
2411.15124, v5); "docs cmd" is open-instruct's docs/tulu3.md; the same facts, with notes, are in
``tulu_lab/reference/hparams.csv`` (kept as a CSV for the notebooks; this module does not read it,
the tests check the two agree). The RLVR paper presets name a source for every value
(``RLVRConfig.preset_sources``): an hparams.csv row or a flag of open-instruct's command as it ran
(``tulu_lab/reference/commands.py``). Values marked "embedded CPU preset" are this project's choices for
SmolLM2-135M on a 2-core CPU, not the paper's.

Configs are plain dataclasses: validation runs in ``__post_init__`` (also after
``dataclasses.replace``), and JSON is only a serialisation of the fields (``to_dict`` /
``from_dict`` / ``save_json`` / ``load_json``; ``load_config`` picks the class from the file).

Batch vocabulary used here:
* SFT / DPO: ``effective_batch = per_device_batch * gradient_accumulation * num_processes``
  examples (DPO: preference pairs) per optimiser step. The paper configs reach the paper's
  batch on one process by accumulation.
* RLVR: ``rollout_batch = prompts_per_step * samples_per_prompt`` responses per step (the paper's
  "effective batch" counts these); they are split into ``num_minibatches`` optimiser steps per PPO
  epoch, each accumulated from micro-batches of ``per_device_batch`` responses.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from tulu_lab.paths import resolve_output_dir

# Allowed names. Kept literal here so importing the configs does not import torch; a test checks
# that they equal the tuples in tulu_lab.losses.
DPO_LOSS_TYPES = ("dpo_norm", "dpo")
GRPO_LOSS_TYPES = ("bnpo", "grpo", "dr_grpo")  # TRL's names, accepted as aliases of LOSS_AGGREGATIONS
LOSS_AGGREGATIONS = ("micro_batch_mean", "sequence_mean", "token_mean", "constant")
ADVANTAGE_SCALES = ("std", "none")
KL_ESTIMATORS = ("k1", "k2", "k3")
RL_ALGORITHMS = ("ppo", "grpo")
SFT_REDUCTIONS = ("sum", "mean")
LR_SCHEDULES = ("linear", "cosine", "constant")
PRECISIONS = ("bf16", "bf16-autocast", "fp32")
PAPER_SCALES = ("8B", "70B", "405B")
EMBEDDED = "embedded"
SCALES = PAPER_SCALES + (EMBEDDED,)

# LoRA on all seven projections of a Llama block (attention and MLP).
LLAMA_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _normalise_scale(scale: str) -> str:
    by_lower = {s.lower(): s for s in SCALES}
    if not isinstance(scale, str) or scale.lower() not in by_lower:
        raise ValueError(f"unknown scale {scale!r}; allowed: {list(SCALES)}")
    return by_lower[scale.lower()]


# ----------------------------------------------------------------------------------------------
# Validation and (de)serialisation shared by every config class
# ----------------------------------------------------------------------------------------------


class _ConfigBase:
    """Type checks, range checks and JSON round-trips for the dataclasses below."""

    stage: ClassVar[str] = ""

    # ---- checks, each naming the class and the field ----

    def _fail(self, name: str, expected: str) -> None:
        raise ValueError(f"{type(self).__name__}.{name} must be {expected}, got {getattr(self, name)!r}")

    def _check_types(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value, hint = getattr(self, f.name), hints[f.name]
            options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, _UnionType) else (hint,)
            if not any(_is_instance(value, option) for option in options):
                names = " or ".join(_type_name(o) for o in options)
                raise TypeError(f"{type(self).__name__}.{f.name} must be {names}, got {value!r}")
            if isinstance(value, float) and not math.isfinite(value):
                # inf or nan passes every "> 0" test and trains to NaN weights
                raise ValueError(f"{type(self).__name__}.{f.name} must be a finite number, got {value!r}")

    def _positive(self, *names: str) -> None:
        for name in names:
            if not getattr(self, name) > 0:
                self._fail(name, "> 0")

    def _non_negative(self, *names: str) -> None:
        for name in names:
            if not getattr(self, name) >= 0:
                self._fail(name, ">= 0")

    def _one_of(self, name: str, allowed: tuple[str, ...]) -> None:
        if getattr(self, name) not in allowed:
            self._fail(name, f"one of {list(allowed)}")

    # ---- serialisation ----

    def to_dict(self) -> dict[str, Any]:
        """Fields as plain JSON-able values, plus ``"stage"`` for :func:`load_config`."""
        data = dataclasses.asdict(self)
        return {"stage": self.stage, **data} if self.stage else data

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        """Build (and validate) a config from :meth:`to_dict` output; unknown keys are an error."""
        data = dict(data)
        stage = data.pop("stage", cls.stage)
        if stage != cls.stage:
            raise ValueError(f"{cls.__name__}.from_dict: data is for stage {stage!r}, not {cls.stage!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{cls.__name__}.from_dict: unknown fields {unknown}; allowed: {sorted(known)}")
        if isinstance(data.get("lora"), dict):
            data["lora"] = LoraSettings.from_dict(data["lora"])
        return cls(**data)

    def save_json(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` to ``path`` as indented JSON; returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load_json(cls, path: str | Path):
        """Read a file written by :meth:`save_json`."""
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object of config fields")
        return cls.from_dict(data)


_UnionType = type(int | None)


def _is_instance(value: Any, hint: Any) -> bool:
    if hint is type(None):
        return value is None
    if hint is float:  # ints are fine where a float is expected; bools are not numbers here
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_is_instance(v, item) for v in value)
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    return "None" if hint is type(None) else getattr(hint, "__name__", str(hint))


# ----------------------------------------------------------------------------------------------
# LoRA
# ----------------------------------------------------------------------------------------------


@dataclass
class LoraSettings(_ConfigBase):
    """Low-rank adapters (and QLoRA) for every stage. The paper trained all weights; LoRA is this
    project's way to run the recipe on one CPU or GPU, and the DPO/KL reference is the same network
    with adapters disabled."""

    r: int = 16  # embedded CPU preset: rank 16
    alpha: int = 32  # embedded CPU preset: alpha = 2 r, the usual LoRA scaling
    # No dropout: the paper's full fine-tuning had none, RL's importance ratios assume the sampling
    # network, and on a CPU the dropout masks cost about 18% of an SFT step (measured, 2 cores).
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: list(LLAMA_PROJECTIONS))  # all 7 projections
    quantize_4bit: bool = False  # QLoRA: NF4 + double-quant base weights (off in the CPU preset)

    def __post_init__(self) -> None:
        self._check_types()
        self._positive("r", "alpha")
        if not 0 <= self.dropout < 1:
            self._fail("dropout", "in [0, 1)")
        if not self.target_modules:
            self._fail("target_modules", "a non-empty list of module names")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoraSettings:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"LoraSettings.from_dict: unknown fields {unknown}; allowed: {sorted(known)}")
        return cls(**data)


# ----------------------------------------------------------------------------------------------
# Fields every stage shares
# ----------------------------------------------------------------------------------------------


@dataclass
class _TrainConfig(_ConfigBase):
    seed: int = 123
    output_dir: str = "runs"
    learning_rate: float = 5e-6
    lr_schedule: str = "linear"  # one of LR_SCHEDULES; linear decay to 0 after warmup
    warmup_ratio: float = 0.0  # fraction of optimiser steps spent warming up linearly from 0
    max_steps: int | None = None  # optimiser steps; None = derived from epochs / total_episodes
    per_device_batch: int = 1  # micro-batch per forward/backward pass
    num_processes: int = 1  # data-parallel processes (torchrun); 1 on the CPU machines
    max_seq_len: int = 4096  # tokens per training example (prompt + response); longer ones are truncated
    grad_clip: float | None = 1.0  # max global grad norm; None = no clipping
    adam_eps: float = 1e-8  # AdamW epsilon (torch default unless the stage says otherwise)
    weight_decay: float = 0.0  # AdamW weight decay
    precision: str = "bf16"  # "bf16" weights, "bf16-autocast" (fp32 weights, bf16 compute), "fp32"
    lora: LoraSettings | None = None  # None = train all weights, as the paper did
    checkpoint_every: int = 0  # optimiser steps between checkpoints; 0 = only at the end
    log_path: str = ""  # JSONL metrics file; "" = <output_dir>/metrics.jsonl
    report_to: str = "none"  # trackers fed from the metrics, as transformers': "tensorboard", "trackio", "wandb" (comma-separated) or "none"

    def _validate_common(self) -> None:
        self._check_types()
        self._positive("learning_rate", "per_device_batch", "num_processes", "max_seq_len", "adam_eps")
        self._non_negative("weight_decay", "checkpoint_every")
        self._one_of("lr_schedule", LR_SCHEDULES)
        self._one_of("precision", PRECISIONS)
        from tulu_lab.tracking import parse_report_to
        try:
            parse_report_to(self.report_to)
        except ValueError as err:
            raise ValueError(f"{type(self).__name__}.{err}") from None
        if not 0 <= self.warmup_ratio < 1:
            self._fail("warmup_ratio", "in [0, 1)")
        if self.max_steps is not None and self.max_steps < 1:
            self._fail("max_steps", "None or >= 1")
        if self.grad_clip is not None and not self.grad_clip > 0:
            self._fail("grad_clip", "None or > 0")
        if not self.output_dir:
            self._fail("output_dir", "a non-empty path")
        # "runs/..." (the presets' form) lies under $TULU_LAB_RUNS, whatever the working directory
        self.output_dir = str(resolve_output_dir(self.output_dir))

    @property
    def metrics_path(self) -> Path:
        """Where the training loop appends its JSONL metrics."""
        return Path(self.log_path) if self.log_path else Path(self.output_dir) / "metrics.jsonl"


# ----------------------------------------------------------------------------------------------
# SFT
# ----------------------------------------------------------------------------------------------


@dataclass
class SFTConfig(_TrainConfig):
    """Supervised fine-tuning (paper section 4, Table 11; 405B: Table 34)."""

    stage: ClassVar[str] = "sft"

    seed: int = 123  # docs cmd; paper Table 14 best seed (8B)
    output_dir: str = "runs/sft"
    learning_rate: float = 5e-6  # paper v5 Table 11 (8B); open-instruct docs/tulu3.md
    lr_schedule: str = "linear"  # paper Table 11
    warmup_ratio: float = 0.03  # paper Table 11
    epochs: int = 2  # paper Table 11
    per_device_batch: int = 1  # docs cmd 64 GPUs x 1 x 2 (per-device 1)
    gradient_accumulation: int = 128  # effective batch 128, paper Table 11, reached on one process
    max_seq_len: int = 4096  # paper Table 11
    # Not in the paper's SFT table; open-instruct's clip_grad_norm defaults to -1 (off). Clipping a
    # SUMMED loss would also tie the threshold to the number of tokens per batch.
    grad_clip: float | None = None
    loss_reduction: str = "sum"  # paper 4.3.2; docs cmd --reduce_loss sum ("mean" also offered)

    def __post_init__(self) -> None:
        self._validate_common()
        self._positive("epochs", "gradient_accumulation")
        self._one_of("loss_reduction", SFT_REDUCTIONS)

    @property
    def effective_batch(self) -> int:
        """Examples per optimiser step."""
        return self.per_device_batch * self.gradient_accumulation * self.num_processes

    @classmethod
    def for_scale(cls, scale: str, **overrides: Any) -> SFTConfig:
        """The paper's SFT settings for "8B" | "70B" | "405B", or the "embedded" CPU preset."""
        scale = _normalise_scale(scale)
        if scale == EMBEDDED:
            return cls.cpu_preset(**overrides)
        by_scale = {
            "8B": dict(),
            "70B": dict(
                learning_rate=2e-6,  # paper Table 11
                seed=456,  # docs cmd; paper Table 14 best seed (70B)
            ),
            "405B": dict(
                learning_rate=2e-6,  # paper Table 34
                gradient_accumulation=256,  # effective batch 256, paper Table 34
            ),
        }
        return cls(**{**by_scale[scale], **overrides})

    @classmethod
    def cpu_preset(cls, **overrides: Any) -> SFTConfig:
        """Embedded CPU preset: LoRA SFT of SmolLM2-135M on 2 cores (about 2.5 s per step at batch 8)."""
        values = dict(
            seed=123,  # as the paper's 8B run
            output_dir="runs/sft-embedded",
            learning_rate=2e-4,  # embedded CPU preset: a usual LoRA learning rate
            warmup_ratio=0.03,  # paper Table 11
            epochs=1,  # embedded CPU preset
            per_device_batch=8,  # embedded CPU preset
            gradient_accumulation=1,  # embedded CPU preset
            max_seq_len=256,  # embedded CPU preset: short synthetic examples
            loss_reduction="sum",  # paper 4.3.2
            precision="bf16-autocast",  # embedded CPU preset: this CPU does bf16 matmuls 4x faster
            lora=LoraSettings(),  # embedded CPU preset: r16 on all projections
            checkpoint_every=50,  # embedded CPU preset
        )
        return cls(**{**values, **overrides})


# ----------------------------------------------------------------------------------------------
# DPO
# ----------------------------------------------------------------------------------------------


@dataclass
class DPOConfig(_TrainConfig):
    """Length-normalised DPO (paper section 5, Table 20; 405B: Table 34)."""

    stage: ClassVar[str] = "dpo"

    seed: int = 123  # project default (no DPO seed in hparams.csv)
    output_dir: str = "runs/dpo"
    learning_rate: float = 5e-7  # paper Table 20; docs cmd (8B)
    lr_schedule: str = "linear"  # project default, as SFT (hparams.csv gives no DPO schedule)
    warmup_ratio: float = 0.1  # paper Table 20
    epochs: int = 1  # paper Table 20
    per_device_batch: int = 1  # docs cmd 8 x 1 x 16 (per-device 1)
    gradient_accumulation: int = 128  # effective batch 128 pairs, paper Table 20, on one process
    max_seq_len: int = 2048  # paper Table 20
    grad_clip: float | None = None  # not in the paper's DPO table; open-instruct clip_grad_norm -1 (off)
    beta: float = 5.0  # paper Table 20 (with length normalisation)
    loss_type: str = "dpo_norm"  # paper 5.1.2 / Table 20: length-normalised DPO
    share_prompt: bool = True  # project: chosen and rejected in one row, the prompt computed once (same sums)

    def __post_init__(self) -> None:
        self._validate_common()
        self._positive("epochs", "gradient_accumulation", "beta")
        self._one_of("loss_type", DPO_LOSS_TYPES)

    @property
    def effective_batch(self) -> int:
        """Preference pairs per optimiser step."""
        return self.per_device_batch * self.gradient_accumulation * self.num_processes

    @classmethod
    def for_scale(cls, scale: str, **overrides: Any) -> DPOConfig:
        """The paper's DPO settings for "8B" | "70B" | "405B", or the "embedded" CPU preset."""
        scale = _normalise_scale(scale)
        if scale == EMBEDDED:
            return cls.cpu_preset(**overrides)
        by_scale = {
            "8B": dict(),
            "70B": dict(
                learning_rate=2e-7,  # paper Table 20; Table 19
                # batch stays 128: paper Table 20; docs cmd 64 x 1 x 2 (the text says it was raised)
            ),
            "405B": dict(
                learning_rate=2e-7,  # paper Table 34; docs cmd
                gradient_accumulation=256,  # effective batch 256, paper Table 34; docs cmd 256 x 1 x 1
            ),
        }
        return cls(**{**by_scale[scale], **overrides})

    @classmethod
    def cpu_preset(cls, **overrides: Any) -> DPOConfig:
        """Embedded CPU preset: LoRA dpo_norm on SmolLM2-135M; the reference is the adapter-free model."""
        values = dict(
            output_dir="runs/dpo-embedded",
            learning_rate=5e-5,  # embedded CPU preset: LoRA needs a far larger rate than full FT
            warmup_ratio=0.1,  # paper Table 20
            epochs=1,  # paper Table 20
            per_device_batch=4,  # embedded CPU preset: 4 pairs = 8 sequences per pass
            gradient_accumulation=2,  # embedded CPU preset: 8 pairs per step
            max_seq_len=256,  # embedded CPU preset
            grad_clip=1.0,  # embedded CPU preset: guards LoRA's large learning rate
            beta=5.0,  # paper Table 20
            loss_type="dpo_norm",  # paper 5.1.2
            precision="bf16-autocast",  # embedded CPU preset
            lora=LoraSettings(),  # embedded CPU preset
            checkpoint_every=50,  # embedded CPU preset
        )
        return cls(**{**values, **overrides})


# ----------------------------------------------------------------------------------------------
# RLVR
# ----------------------------------------------------------------------------------------------


@dataclass
class RLVRConfig(_TrainConfig):
    """Reinforcement learning with verifiable rewards (paper section 6, Table 21; 405B: Table 35).

    ``algorithm="ppo"`` is Tülu 3 (value model, GAE, per-token KL penalty in the reward);
    ``algorithm="grpo"`` is Tülu 3.1 (group-relative advantages, k3 KL inside the loss).

    The class defaults are Tülu 3's 8B PPO run. Every value of the paper presets
    (:meth:`for_scale`) carries its source, listed by :meth:`preset_sources`.
    """

    stage: ClassVar[str] = "rlvr"

    seed: int = 3  # docs cmd (8B PPO) --seed 3
    output_dir: str = "runs/rlvr"
    learning_rate: float = 3e-7  # paper Table 21; docs cmd (8B)
    lr_schedule: str = "linear"  # open-instruct PPO Args default lr_scheduler_type
    warmup_ratio: float = 0.0  # paper Table 21 caption (8B)
    max_seq_len: int = 2048  # paper Table 21 max token length
    grad_clip: float | None = 1.0  # paper Table 21 gradient norm threshold
    # open-instruct declares eps=1e-5 but builds torch.optim.AdamW(params, lr=lr): torch's eps 1e-8
    # and weight decay 0.01 are what ran
    adam_eps: float = 1e-8
    weight_decay: float = 0.01
    per_device_batch: int = 2  # docs cmd (8B PPO) --per_device_train_batch_size 2

    algorithm: str = "ppo"  # paper 6: PPO with a value model
    prompts_per_step: int = 224  # paper Table 21; docs cmd 7 GPUs x 32 (8B)
    samples_per_prompt: int = 1  # paper Table 21 (PPO: one response per prompt)
    total_episodes: int | None = 100_000  # paper Table 21 (8B ablations); the final run picked a checkpoint
    max_prompt_len: int = 2048  # paper Table 21
    max_new_tokens: int = 2048  # paper Table 21 response length; docs cmd (8B)
    temperature: float = 1.0  # paper Table 21; logits are divided by it before log-probs
    beta: float = 0.05  # paper Table 21 caption; docs cmd (8B)
    # the KL estimate used everywhere: PPO's per-token reward -beta * kl, GRPO's loss term, the log
    kl_estimator: str = "k1"  # open-instruct PPO Args default kl1
    ppo_epochs: int = 4  # paper Table 21: PPO update iterations K
    num_minibatches: int = 1  # paper Table 21: N_mb
    clip: float = 0.2  # paper Table 21: PPO clip epsilon
    value_clip: float = 0.2  # open-instruct PPO Args cliprange_value
    vf_coef: float = 0.1  # paper Table 21: value loss coefficient c1
    gamma: float = 1.0  # paper Table 21: discount
    lam: float = 0.95  # paper Table 21: GAE lambda
    whiten_advantages: bool = True  # open-instruct PPO whitens advantages
    correct_reward: float = 10.0  # paper Eq. 8: reward alpha = 10 if verified, else 0
    non_stop_penalty: float = -10.0  # paper Table 21: replaces the score when no EOS
    reward_model_weight: float = 0.0  # paper 6: verifiable reward only (RM multiplier 0)
    value_model_init: str | None = "allenai/Llama-3.1-Tulu-3-8B-RM"  # paper 6.2/6.4: general RM, all sizes
    # How per-token losses become one number (PPO and GRPO alike; tulu_lab.losses.aggregate_loss):
    # "micro_batch_mean"  masked mean inside each micro-batch of per_device_batch responses, averaged
    #                     over micro-batches: open-instruct's (Tülu 3 and 3.1); sequence-level weighting
    #                     at one response per micro-batch
    # "sequence_mean"     mean over each response's tokens, then over responses (GRPO paper; TRL "grpo")
    # "token_mean"        one mean over every token of the minibatch (DAPO; TRL "bnpo")
    # "constant"          token sum / (responses x max_new_tokens) (Dr. GRPO; TRL "dr_grpo")
    loss_aggregation: str = "micro_batch_mean"  # open-instruct PPO code: masked_mean per micro-batch
    # TRL's name for an aggregation ("bnpo" | "grpo" | "dr_grpo"): sets loss_aggregation, then reads None
    grpo_loss_type: str | None = None
    advantage_scale: str = "std"  # GRPO only: "std" divides by the group's std (Tülu 3.1), "none" (Dr. GRPO)
    advantage_eps: float = 1e-8  # GRPO only: Tülu 3.1 (r - mean) / (std + 1e-8)
    log_ratio_clamp: float = 40.0  # GRPO only: Tülu 3.1 clamps logp - logp_ref to +-40
    track_kl: bool = True  # project: with beta 0 still score the reference (no gradient) to log the KL
    eval_every: int = 100  # paper 6.4 (8B): evaluate every 100 steps; 0 = never

    def __post_init__(self) -> None:
        self._validate_common()
        self._one_of("algorithm", RL_ALGORITHMS)
        self._one_of("kl_estimator", KL_ESTIMATORS)
        if self.grpo_loss_type is not None:
            self._one_of("grpo_loss_type", GRPO_LOSS_TYPES)
            self.loss_aggregation = TRL_LOSS_TYPE_AGGREGATION[self.grpo_loss_type]
            self.grpo_loss_type = None
        self._one_of("loss_aggregation", LOSS_AGGREGATIONS)
        self._one_of("advantage_scale", ADVANTAGE_SCALES)
        self._positive("prompts_per_step", "samples_per_prompt", "max_prompt_len", "max_new_tokens",
                       "temperature", "ppo_epochs", "num_minibatches", "clip", "value_clip",
                       "advantage_eps", "log_ratio_clamp")
        self._non_negative("beta", "vf_coef", "reward_model_weight", "eval_every")
        if not 0 < self.gamma <= 1:
            self._fail("gamma", "in (0, 1]")
        if not 0 <= self.lam <= 1:
            self._fail("lam", "in [0, 1]")
        if self.total_episodes is not None and self.total_episodes < self.rollout_batch:
            self._fail("total_episodes", f"None or >= one step's rollout_batch ({self.rollout_batch})")
        if self.total_episodes is None and self.max_steps is None:
            raise ValueError("RLVRConfig: set total_episodes or max_steps (both are None)")
        if self.algorithm == "grpo" and self.samples_per_prompt < 2:
            self._fail("samples_per_prompt", ">= 2 for algorithm 'grpo' (a group of one has no baseline)")
        micro = self.num_minibatches * self.per_device_batch * self.num_processes
        if self.rollout_batch % micro != 0:
            raise ValueError(
                f"RLVRConfig: rollout_batch = prompts_per_step * samples_per_prompt = "
                f"{self.prompts_per_step} * {self.samples_per_prompt} = {self.rollout_batch} must be divisible "
                f"by num_minibatches * per_device_batch * num_processes = {micro}"
            )

    @property
    def rollout_batch(self) -> int:
        """Responses generated and scored per step (the paper's effective batch)."""
        return self.prompts_per_step * self.samples_per_prompt

    @property
    def gradient_accumulation(self) -> int:
        """Micro-batches accumulated into each of the ``num_minibatches`` optimiser steps."""
        return self.rollout_batch // (self.num_minibatches * self.per_device_batch * self.num_processes)

    @property
    def num_steps(self) -> int:
        """Rollout steps to run: ``max_steps`` if set, else ``total_episodes // rollout_batch``."""
        if self.max_steps is not None:
            return self.max_steps
        return self.total_episodes // self.rollout_batch

    @classmethod
    def for_scale(cls, scale: str, algorithm: str | None = None, **overrides: Any) -> RLVRConfig:
        """Ai2's RLVR settings for "8B" | "70B" | "405B", or the "embedded" CPU preset.

        ``algorithm`` defaults to "ppo" (Tülu 3) at the paper scales and to "grpo" for "embedded"
        (see :meth:`cpu_preset`). ``algorithm="grpo"`` is the Tülu 3.1 run as its command ran it
        (open-instruct docs/tulu3.md, Llama-3.1-Tulu-3.1-8B): 1 epoch, lr 5e-7 constant, no non-stop
        penalty (0.0), beta 0.01 with k3, 16 samples per prompt, 48 prompts per step in 2 minibatches
        of 384 responses, micro-batches of 2. Ai2 ran GRPO at 8B only: "70B" and "405B" with
        "grpo" give the same 8B command's settings. :meth:`preset_sources` names each value's source.
        """
        scale = _normalise_scale(scale)
        if scale == EMBEDDED:
            return cls.cpu_preset(algorithm=algorithm or "grpo", **overrides)
        algorithm = algorithm or "ppo"
        if algorithm not in RL_ALGORITHMS:
            raise ValueError(f"RLVRConfig.for_scale: unknown algorithm {algorithm!r}; allowed: {list(RL_ALGORITHMS)}")
        values = {name: value for name, (value, _) in _paper_preset(scale, algorithm).items()}
        return cls(**{**values, **overrides})

    @classmethod
    def preset_sources(cls, scale: str, algorithm: str = "ppo") -> dict[str, str]:
        """Where each value of ``for_scale(scale, algorithm)`` comes from, field -> source.

        ``"hparams.csv RLVR,SCALE,PARAM"``: that row of tulu_lab/reference/hparams.csv (whose own
        source column names the paper table or command); ``"cmd NAME FLAG"``: the flag (or the
        script's default) of open-instruct's command NAME in ``tulu_lab.reference.commands``;
        ``"cmd NAME sizes.KEY"``: a batch size the script derives from that command's flags.
        Fields the algorithm does not use, and the project's own (paths, precision, LoRA), are absent.
        """
        scale = _normalise_scale(scale)
        if scale == EMBEDDED:
            raise ValueError("RLVRConfig.preset_sources: the embedded preset is this project's choice; "
                             "its comments in RLVRConfig.cpu_preset give the reasons")
        return {name: source for name, (_, source) in _paper_preset(scale, algorithm).items()}

    @classmethod
    def cpu_preset(cls, algorithm: str = "grpo", **overrides: Any) -> RLVRConfig:
        """Embedded CPU preset: LoRA GRPO on SmolLM2-135M, 2 prompts x 8 samples, 96 new tokens
        (about 26 s per step on 2 cores: half generation, half training)."""
        values = dict(
            seed=1,  # open-instruct default
            output_dir="runs/rlvr-embedded",
            learning_rate=2e-5,  # embedded CPU preset: LoRA rate for RL, well below SFT's
            lr_schedule="linear",  # embedded CPU preset: decays over its 40 steps
            warmup_ratio=0.0,  # paper Table 21 caption
            adam_eps=1e-5,  # embedded CPU preset (the value open-instruct declares, not the one it ran)
            weight_decay=0.0,  # embedded CPU preset: no decay on LoRA adapters
            max_steps=40,  # embedded CPU preset: about 20 minutes
            total_episodes=None,  # embedded CPU preset: max_steps decides
            per_device_batch=8,  # embedded CPU preset: one prompt's group per pass
            max_seq_len=352,  # embedded CPU preset: max_prompt_len + max_new_tokens
            max_prompt_len=256,  # embedded CPU preset
            max_new_tokens=96,  # embedded CPU preset: generation time dominates a step
            temperature=1.0,  # paper Table 21
            prompts_per_step=2,  # embedded CPU preset
            samples_per_prompt=8,  # embedded CPU preset: k = 8 per group
            beta=0.04,  # embedded CPU preset (TRL's former GRPO default)
            kl_estimator="k3",  # Tülu 3.1
            ppo_epochs=1,  # embedded CPU preset: one update per rollout, on-policy
            # embedded CPU preset: one token mean over the minibatch (DAPO), so the update does not
            # depend on how the CPU splits it into micro-batches; Tülu's is "micro_batch_mean"
            loss_aggregation="token_mean",
            advantage_scale="std",  # Tülu 3.1
            # Kept on purpose, not inherited: with only 96 new tokens a response cut at the limit
            # seldom holds a checkable answer, and replacing its score by -10 teaches the small model to
            # finish in budget (the embedded runs in the README used it). Under group normalisation it
            # is a strong length penalty; Tülu 3.1 ran GRPO with 0.0 (docs cmd --penalty_reward_value).
            non_stop_penalty=-10.0,
            value_model_init=None,  # GRPO has no value model
            precision="bf16-autocast",  # embedded CPU preset
            lora=LoraSettings(),  # embedded CPU preset
            checkpoint_every=10,  # embedded CPU preset
            eval_every=10,  # embedded CPU preset
        )
        values["algorithm"] = algorithm
        if algorithm == "ppo":
            # a PPO run on CPU keeps the paper's per-token KL reward and value settings
            values.update(samples_per_prompt=1, prompts_per_step=8, kl_estimator="k1",
                          value_model_init="allenai/Llama-3.1-Tulu-3-8B-RM")
        return cls(**{**values, **overrides})


# TRL GRPOTrainer loss_type -> the aggregation it computes
TRL_LOSS_TYPE_AGGREGATION = {"bnpo": "token_mean", "grpo": "sequence_mean", "dr_grpo": "constant"}


# The paper presets, value and source per field (see RLVRConfig.preset_sources for the notation).
_TULU3_PPO_ALL: dict[str, tuple[Any, str]] = {
    "algorithm": ("ppo", "hparams.csv RLVR,all,algorithm"),
    "lr_schedule": ("linear", "cmd tulu3_ppo_8b lr_scheduler_type"),
    "max_seq_len": (2048, "hparams.csv RLVR,all,max_token_len"),
    "grad_clip": (1.0, "hparams.csv RLVR,all,grad_norm_clip"),
    "adam_eps": (1e-8, "cmd tulu3_ppo_8b adamw_eps_as_run"),
    "weight_decay": (0.01, "cmd tulu3_ppo_8b adamw_weight_decay_as_run"),
    "samples_per_prompt": (1, "cmd tulu3_ppo_8b number_samples_per_prompt"),
    "max_prompt_len": (2048, "hparams.csv RLVR,all,max_prompt_len"),
    "temperature": (1.0, "hparams.csv RLVR,all,temperature"),
    "kl_estimator": ("k1", "cmd tulu3_ppo_8b kl_estimator"),
    "num_minibatches": (1, "hparams.csv RLVR,all,minibatches_Nmb"),
    "clip": (0.2, "hparams.csv RLVR,all,clip_eps"),
    "value_clip": (0.2, "cmd tulu3_ppo_8b cliprange_value"),
    "vf_coef": (0.1, "hparams.csv RLVR,all,value_coef_c1"),
    "gamma": (1.0, "hparams.csv RLVR,all,gamma"),
    "lam": (0.95, "hparams.csv RLVR,all,gae_lambda"),
    "whiten_advantages": (True, "cmd tulu3_ppo_8b whiten_advantages"),
    "correct_reward": (10.0, "hparams.csv RLVR,all,reward_correct_alpha"),
    "non_stop_penalty": (-10.0, "hparams.csv RLVR,all,non_eos_penalty"),
    "reward_model_weight": (0.0, "cmd tulu3_ppo_8b reward_model_multiplier"),
    "value_model_init": ("allenai/Llama-3.1-Tulu-3-8B-RM", "cmd tulu3_ppo_8b reward_model_path"),
    "loss_aggregation": ("micro_batch_mean", "cmd tulu3_ppo_8b loss_aggregation"),
}

_TULU3_PPO_SCALE: dict[str, dict[str, tuple[Any, str]]] = {
    "8B": {
        "seed": (3, "cmd tulu3_ppo_8b seed"),
        "learning_rate": (3e-7, "hparams.csv RLVR,8B,learning_rate"),
        "warmup_ratio": (0.0, "hparams.csv RLVR,8B,warmup_ratio"),
        "per_device_batch": (2, "cmd tulu3_ppo_8b per_device_train_batch_size"),
        "prompts_per_step": (224, "hparams.csv RLVR,8B,effective_batch"),
        "total_episodes": (100_000, "hparams.csv RLVR,8B,total_episodes_ablation"),
        "max_new_tokens": (2048, "hparams.csv RLVR,8B,response_length"),
        "beta": (0.05, "hparams.csv RLVR,8B,beta"),
        "ppo_epochs": (4, "hparams.csv RLVR,8B,ppo_update_iters_K"),
        "eval_every": (100, "hparams.csv RLVR,8B,eval_every_steps"),
    },
    "70B": {
        "seed": (8, "cmd tulu3_ppo_70b seed"),
        "learning_rate": (1e-7, "hparams.csv RLVR,70B,learning_rate"),
        "warmup_ratio": (0.1, "hparams.csv RLVR,70B,warmup_ratio"),  # Table 21 caption says 0.07
        "per_device_batch": (1, "cmd tulu3_ppo_70b per_device_train_batch_size"),
        "prompts_per_step": (640, "hparams.csv RLVR,70B,effective_batch"),
        "total_episodes": (400_000, "hparams.csv RLVR,70B,total_episodes"),
        "max_new_tokens": (2048, "hparams.csv RLVR,70B,response_length"),
        "beta": (0.07, "hparams.csv RLVR,70B,beta"),  # the 6.4 text's 0.7 is a typo
        "ppo_epochs": (4, "cmd tulu3_ppo_70b num_epochs"),
        "eval_every": (40, "hparams.csv RLVR,70B,eval_every_steps"),
    },
    "405B": {
        "seed": (3, "cmd tulu3_ppo_405b seed"),
        "learning_rate": (1e-7, "hparams.csv RLVR,405B,learning_rate"),
        "warmup_ratio": (0.0, "hparams.csv RLVR,405B,warmup_ratio"),
        "per_device_batch": (1, "cmd tulu3_ppo_405b per_device_train_batch_size"),
        "prompts_per_step": (1856, "hparams.csv RLVR,405B,effective_batch"),
        "total_episodes": (300_000, "hparams.csv RLVR,405B,total_episodes"),  # docs cmd 400000
        "max_steps": (75, "hparams.csv RLVR,405B,training_steps"),  # the run stopped after 75 steps
        "max_new_tokens": (1024, "hparams.csv RLVR,405B,response_length"),  # HF card says 2048
        "beta": (0.05, "hparams.csv RLVR,405B,beta"),
        "ppo_epochs": (1, "hparams.csv RLVR,405B,ppo_update_iters_K"),  # docs cmd and HF card say 4
        "eval_every": (71, "cmd tulu3_ppo_405b sizes.eval_every"),
    },
}

# Tülu 3.1: the command that produced Llama-3.1-Tulu-3.1-8B (docs/tulu3.md), every value from it
_TULU31_GRPO: dict[str, tuple[Any, str]] = {
    "algorithm": ("grpo", "cmd tulu31_grpo_8b algorithm"),
    "seed": (1, "cmd tulu31_grpo_8b seed"),
    "learning_rate": (5e-7, "cmd tulu31_grpo_8b learning_rate"),
    "lr_schedule": ("constant", "cmd tulu31_grpo_8b lr_scheduler_type"),
    "warmup_ratio": (0.0, "cmd tulu31_grpo_8b warmup_ratio"),
    "max_seq_len": (2048, "cmd tulu31_grpo_8b max_token_length"),
    "grad_clip": (1.0, "cmd tulu31_grpo_8b max_grad_norm"),
    "adam_eps": (1e-8, "cmd tulu31_grpo_8b adamw_eps_as_run"),
    "weight_decay": (0.01, "cmd tulu31_grpo_8b adamw_weight_decay_as_run"),
    "per_device_batch": (2, "cmd tulu31_grpo_8b per_device_train_batch_size"),
    "prompts_per_step": (48, "cmd tulu31_grpo_8b sizes.prompts_per_step"),
    "samples_per_prompt": (16, "cmd tulu31_grpo_8b number_samples_per_prompt"),
    "total_episodes": (10_000_000, "cmd tulu31_grpo_8b total_episodes"),
    "max_prompt_len": (2048, "cmd tulu31_grpo_8b max_prompt_token_length"),
    "max_new_tokens": (2048, "cmd tulu31_grpo_8b response_length"),
    "temperature": (1.0, "cmd tulu31_grpo_8b temperature"),
    "beta": (0.01, "cmd tulu31_grpo_8b beta"),
    "kl_estimator": ("k3", "cmd tulu31_grpo_8b kl_estimator"),
    "ppo_epochs": (1, "cmd tulu31_grpo_8b num_epochs"),
    "num_minibatches": (2, "cmd tulu31_grpo_8b sizes.num_minibatches"),
    "clip": (0.2, "cmd tulu31_grpo_8b cliprange"),
    "correct_reward": (10.0, "cmd tulu31_grpo_8b verification_reward"),
    "non_stop_penalty": (0.0, "cmd tulu31_grpo_8b penalty_reward_value"),
    "reward_model_weight": (0.0, "cmd tulu31_grpo_8b reward_model_multiplier"),
    "value_model_init": (None, "cmd tulu31_grpo_8b value_model"),
    "loss_aggregation": ("micro_batch_mean", "cmd tulu31_grpo_8b loss_aggregation"),
    "advantage_scale": ("std", "cmd tulu31_grpo_8b advantage_scale"),
    "advantage_eps": (1e-8, "cmd tulu31_grpo_8b advantage_eps"),
    "log_ratio_clamp": (40.0, "cmd tulu31_grpo_8b log_ratio_clamp"),
    "eval_every": (434, "cmd tulu31_grpo_8b sizes.eval_every"),
}


def _paper_preset(scale: str, algorithm: str) -> dict[str, tuple[Any, str]]:
    if algorithm == "grpo":
        return dict(_TULU31_GRPO)
    return {**_TULU3_PPO_ALL, **_TULU3_PPO_SCALE[scale]}


# ----------------------------------------------------------------------------------------------
# Lookup by name
# ----------------------------------------------------------------------------------------------

CONFIG_CLASSES: dict[str, type] = {"sft": SFTConfig, "dpo": DPOConfig, "rlvr": RLVRConfig}


def paper_config(stage: str, scale: str, **overrides: Any):
    """``paper_config("sft" | "dpo" | "rlvr", "8B" | "70B" | "405B" | "embedded", **overrides)``."""
    if stage not in CONFIG_CLASSES:
        raise ValueError(f"unknown stage {stage!r}; allowed: {list(CONFIG_CLASSES)}")
    return CONFIG_CLASSES[stage].for_scale(scale, **overrides)


def load_config(path: str | Path):
    """Load a stage config from a JSON file (``save_json``) or a YAML file (``recipes/*/<stage>.yaml``);
    the ``"stage"`` key picks the class. Fields left out of a file take the class's defaults, except
    ``output_dir``, which a file may leave to whoever runs it."""
    path = Path(path)
    data = _read_mapping(path)
    stage = data.get("stage")
    if stage not in CONFIG_CLASSES:
        raise ValueError(f"{path}: 'stage' must be one of {list(CONFIG_CLASSES)}, got {stage!r}")
    try:
        return CONFIG_CLASSES[stage].from_dict(data)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: {err}") from None


def _read_mapping(path: Path) -> dict[str, Any]:
    """A JSON or YAML file's top-level mapping (YAML for .yaml / .yml)."""
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ValueError(f"{path}: not valid YAML ({err})") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of config fields, got {type(data).__name__}")
    return data

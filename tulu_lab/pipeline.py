"""The embedded recipe end to end: SFT -> DPO -> RLVR on SmolLM2-135M with synthetic verifiable data.

Each stage function trains once, writes ``runs/recipe/<stage>/final`` (a merged checkpoint that
``load_model`` reads) and returns that folder; called again it finds the folder and returns at once,
so the notebooks re-run fast and a later notebook picks up what an earlier one saved. An interrupted
stage resumes from its last checkpoint. ``TULU_LAB_SMOKE=1`` (``paths.smoke()``) makes every stage a
few steps long and writes to ``runs/smoke/`` instead, so a quick pass never masks a full run.

    from tulu_lab import pipeline
    sft_dir = pipeline.run_sft()          # ~5 min on 2 CPU cores
    dpo_dir = pipeline.run_dpo()          # from the SFT model, ~5 min
    rlvr_dir = pipeline.run_rlvr()        # from the DPO model, 10 min cap
    pipeline.heldout_table()              # held-out accuracy of every stage, greedy

The data: one seeded draw of synthetic word problems at the generator's default difficulty, split
into training problems and 400 held-out test problems that no stage ever trains on.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from tulu_lab import paths

BASE_MODEL = "smollm2-135m"
STAGES = ("instruct", "sft", "dpo", "rlvr")
ANSWER_LINE = re.compile(r"^#### -?[\d,]*\.?\d+\s*$")


@dataclass(frozen=True)
class RecipeSettings:
    """Sizes of the embedded recipe (full run, and the smoke run used by CI and first looks).

    Sized for 2 CPU cores in float32 (measured: about 7 s per SFT step of 8 examples, 42 s per RLVR
    step of 8 x 8 samples): the learning rates are LoRA rates for a few dozen steps, 5x / 4x / 15x the CPU
    presets' (which assume a few hundred steps). RLVR runs without a KL penalty (beta 0, as in the
    ablation it matched 0.04 and 0.2): groups whose samples all scored the same then carry no gradient
    and skip their backward pass, and 8 prompts per step keep enough groups that do.
    """
    seed: int = 0
    n_train: int = 3000            # training problems (SFT, preference pairs and RLVR prompts come from these)
    n_test: int = 400              # held-out problems, never trained on
    n_test_instruct: int = 50      # the untrained baseline is scored on the first 50 (it never stops early)
    sft_steps: int = 40            # batch 8: 320 demonstrations
    sft_lr: float = 1e-3
    dpo_steps: int = 15            # 8 pairs per step: 120 pairs
    dpo_lr: float = 2e-4
    dpo_heldout_pairs: int = 200   # preference accuracy is measured on pairs built from test problems
    rlvr_steps: int = 16           # 8 prompts x 8 samples per step: the schedule ends near the cap
    rlvr_prompts_per_step: int = 8
    rlvr_minibatches: int = 2      # optimiser steps per rollout, 4 groups each: 20 min +10.2 points (one: +7.0)
    rlvr_temperature: float = 0.7  # a 135M model's T=1 samples solve far fewer problems than its greedy answers
    rlvr_lr: float = 3e-4          # measured from DPO, 8 x 8, beta 0: 3e-4 +6.3 points, 5e-4 +5.3, 1e-3 (4 x 8) -6.3
    rlvr_beta: float = 0.0
    rlvr_minutes: float = 10.0     # wall-time cap of the RLVR stage (a stopped run can be continued)
    max_new_tokens: int = 96       # responses to 1-2-step problems take 30-70 tokens


FULL = RecipeSettings()
SMOKE = RecipeSettings(n_train=64, n_test=16, n_test_instruct=8, sft_steps=2, dpo_steps=2, dpo_heldout_pairs=8, rlvr_steps=2,
                       rlvr_prompts_per_step=2, rlvr_minutes=5.0, max_new_tokens=32)


def settings(smoke: bool | None = None) -> RecipeSettings:
    return SMOKE if (paths.smoke() if smoke is None else smoke) else FULL


def configure(**changes: Any) -> RecipeSettings:
    """Change the full recipe's settings in this process, e.g. ``configure(rlvr_minutes=20, rlvr_steps=32)``;
    a stage whose settings (or an upstream stage's) changed is retrained when next run."""
    global FULL
    FULL = replace(FULL, **changes)
    return FULL


def stage_dir(stage: str, smoke: bool | None = None) -> Path:
    """``runs/recipe/<stage>`` (``runs/smoke/<stage>`` in smoke mode)."""
    return paths.runs_dir() / ("smoke" if (paths.smoke() if smoke is None else smoke) else "recipe") / stage


def _stage_settings(stage: str, smoke: bool | None) -> dict[str, Any]:
    """The settings a stage's checkpoint depends on: the data split, its own and its upstream stages'."""
    from tulu_lab.config import LoraSettings

    upstream = {"sft": ("sft_",), "dpo": ("sft_", "dpo_"), "rlvr": ("sft_", "dpo_", "rlvr_", "max_new_tokens")}[stage]
    values = asdict(settings(smoke))
    chosen = {k: v for k, v in values.items()
              if k in ("seed", "n_train", "n_test") or k.startswith(upstream) and k != "dpo_heldout_pairs"}
    return {**chosen, "lora": asdict(LoraSettings())}  # every stage trains the presets' adapters


def _finished(stage: str, smoke: bool | None) -> Path | None:
    """The stage's final folder if it was trained with the current recipe settings (else None)."""
    final = stage_dir(stage, smoke) / "final"
    marker = stage_dir(stage, smoke) / "recipe.json"
    if not ((final / "summary.json").is_file() and (final / "config.json").is_file() and marker.is_file()):
        return None
    return final if json.loads(marker.read_text()) == _stage_settings(stage, smoke) else None


def _may_resume(stage: str, smoke: bool | None) -> bool:
    """Whether the stage may resume from the checkpoints in its folder: only those of a run started with
    the same settings (a run with other settings starts afresh, and its trainer removes them)."""
    folder = stage_dir(stage, smoke)
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / "started.json"
    same = marker.is_file() and json.loads(marker.read_text()) == _stage_settings(stage, smoke)
    marker.write_text(json.dumps(_stage_settings(stage, smoke), indent=2))
    return same


def _mark_finished(stage: str, smoke: bool | None, seconds: float) -> None:
    """Record the settings the stage was trained with and how long it took; earlier held-out results
    are now stale."""
    for stale in ("heldout.json", "heldout_preference.json"):
        (stage_dir(stage, smoke) / stale).unlink(missing_ok=True)
    (stage_dir(stage, smoke) / "recipe.json").write_text(json.dumps(_stage_settings(stage, smoke), indent=2))
    (stage_dir(stage, smoke) / "wall_time.json").write_text(json.dumps({"seconds": round(seconds, 1)}))


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------

def embedded_data(smoke: bool | None = None) -> dict[str, list]:
    """Training and held-out rows for every stage, from one seeded split (deterministic)."""
    from tulu_lab.data import make_splits, preference_row, rlvr_row, sft_row

    s = settings(smoke)
    train, test = make_splits(s.n_train, s.n_test, seed=s.seed)
    third = len(train) // 3
    # Disjoint thirds: SFT demonstrations, DPO pairs and RLVR prompts each see problems of their own.
    return {
        "train_problems": train, "test_problems": test,
        "sft": [sft_row(p) for p in train[:third]],
        "dpo": [preference_row(p, seed=s.seed) for p in train[third:2 * third]],
        "rlvr": [rlvr_row(p) for p in train[2 * third:]],
        "test_rlvr": [rlvr_row(p) for p in test],
        "test_pairs": [preference_row(p, seed=s.seed + 1) for p in test[:s.dpo_heldout_pairs]],
    }


def read_metrics(stage: str, smoke: bool | None = None):
    """The stage's per-step training metrics (``runs/recipe/<stage>/metrics.jsonl``) as a DataFrame."""
    import pandas as pd

    path = stage_dir(stage, smoke) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no metrics for stage {stage!r} at {path}: run pipeline.run_{stage}() first")
    return pd.read_json(path, lines=True)


def load_stage(stage: str, smoke: bool | None = None, **kwargs):
    """(model, tokenizer) of a stage ("instruct" is the untouched embedded model), Tülu template installed."""
    from tulu_lab.chat import install_tulu_template
    from tulu_lab.models import load_model

    if stage == "instruct":
        model, tokenizer = load_model(BASE_MODEL, **kwargs)
    else:
        final = _finished(stage, smoke)
        if final is None:
            raise FileNotFoundError(f"stage {stage!r} has not been run yet: no {stage_dir(stage, smoke) / 'final'} "
                                    f"(run pipeline.run_{stage}() or its notebook first)")
        model, tokenizer = load_model(final, **kwargs)
    install_tulu_template(tokenizer)
    return model, tokenizer


# ----------------------------------------------------------------------------------------------
# Stages
# ----------------------------------------------------------------------------------------------

def run_sft(smoke: bool | None = None, force: bool = False, **overrides: Any) -> Path:
    """LoRA SFT of the instruct model on worked solutions (CPU preset); returns the merged final folder."""
    from tulu_lab.config import SFTConfig
    from tulu_lab.sft import train_sft

    if not force and (done := _finished("sft", smoke)):
        return done
    s = settings(smoke)
    values = dict(output_dir=str(stage_dir("sft", smoke)), max_steps=s.sft_steps, seed=s.seed,
                  learning_rate=s.sft_lr, checkpoint_every=max(1, s.sft_steps // 5))
    cfg = SFTConfig.cpu_preset(**{**values, **overrides})
    started = time.perf_counter()
    model, tokenizer = load_stage("instruct", smoke)
    summary = train_sft(cfg, model, tokenizer, embedded_data(smoke)["sft"], resume=_may_resume("sft", smoke))
    _mark_finished("sft", smoke, time.perf_counter() - started)
    return Path(summary["final_dir"])


def run_dpo(smoke: bool | None = None, force: bool = False, **overrides: Any) -> Path:
    """LoRA dpo_norm from the SFT model on synthetic preference pairs; returns the merged final folder."""
    from tulu_lab.config import DPOConfig
    from tulu_lab.dpo import train_dpo

    if not force and (done := _finished("dpo", smoke)):
        return done
    s = settings(smoke)
    run_sft(smoke)
    values = dict(output_dir=str(stage_dir("dpo", smoke)), max_steps=s.dpo_steps, seed=s.seed,
                  learning_rate=s.dpo_lr, checkpoint_every=max(1, s.dpo_steps // 5))
    cfg = DPOConfig.cpu_preset(**{**values, **overrides})
    started = time.perf_counter()
    model, tokenizer = load_stage("sft", smoke)
    summary = train_dpo(cfg, model, tokenizer, embedded_data(smoke)["dpo"], resume=_may_resume("dpo", smoke))
    _mark_finished("dpo", smoke, time.perf_counter() - started)
    return Path(summary["final_dir"])


def rlvr_config(smoke: bool | None = None, **overrides: Any):
    """The RLVR settings of the embedded recipe (GRPO CPU preset, the recipe's length and step budget)."""
    from tulu_lab.config import RLVRConfig

    s = settings(smoke)
    values = dict(output_dir=str(stage_dir("rlvr", smoke)), max_steps=s.rlvr_steps, total_episodes=None,
                  seed=s.seed, beta=s.rlvr_beta, learning_rate=s.rlvr_lr, max_new_tokens=s.max_new_tokens,
                  prompts_per_step=s.rlvr_prompts_per_step, num_minibatches=s.rlvr_minibatches,
                  temperature=s.rlvr_temperature, checkpoint_every=max(1, s.rlvr_steps // 6), eval_every=0)
    values.update(overrides)
    cfg = RLVRConfig.cpu_preset(**values)
    if "per_device_batch" not in overrides:  # micro-batches of up to 16 responses that split each minibatch evenly
        cfg = replace(cfg, per_device_batch=math.gcd(16, cfg.rollout_batch // cfg.num_minibatches))
    return cfg


def run_rlvr(smoke: bool | None = None, force: bool = False, start: str = "dpo", **overrides: Any) -> Path:
    """GRPO with verifiable rewards from the DPO model (LoRA; reference = adapters disabled).

    Training stops at ``rlvr_steps`` or after ``rlvr_minutes`` of wall time, whichever comes first
    (the step count reached is in ``final/summary.json``).
    """
    from tulu_lab.rlvr import train_rlvr

    if not force and (done := _finished("rlvr", smoke)):
        return done
    {"sft": run_sft, "dpo": run_dpo}[start](smoke)
    cfg = rlvr_config(smoke, **overrides)
    started = time.perf_counter()
    model, tokenizer = load_stage(start, smoke)
    summary = train_rlvr(cfg, model, tokenizer, embedded_data(smoke)["rlvr"], resume=_may_resume("rlvr", smoke),
                         time_limit_s=60 * settings(smoke).rlvr_minutes)
    _mark_finished("rlvr", smoke, time.perf_counter() - started)
    return Path(summary["final_dir"])


def stage_seconds(smoke: bool | None = None) -> dict[str, float]:
    """Wall time of each finished stage's last training call (loading included), in seconds."""
    times = {}
    for stage in STAGES[1:]:
        path = stage_dir(stage, smoke) / "wall_time.json"
        if path.is_file():
            times[stage] = json.loads(path.read_text())["seconds"]
    return times


# ----------------------------------------------------------------------------------------------
# Held-out measurements (cached beside each stage's checkpoint)
# ----------------------------------------------------------------------------------------------

def ends_in_answer_format(text: str) -> bool:
    """The response's last non-empty line is "#### N", the format the synthetic solutions teach."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return bool(lines) and bool(ANSWER_LINE.match(lines[-1].strip()))


def heldout_results(stage: str, smoke: bool | None = None, force: bool = False) -> dict[str, Any]:
    """Greedy answers of ``stage`` on the held-out problems: accuracy, format rate, per-example verdicts."""
    from tulu_lab.generate import generate
    from tulu_lab.rewards import verify

    cache = stage_dir(stage, smoke) / "heldout.json"
    s = settings(smoke)
    rows = embedded_data(smoke)["test_rlvr"]
    if stage == "instruct":  # the baseline: far from the trained stages, and the slowest to score
        rows = rows[:s.n_test_instruct]
    if cache.is_file() and not force:
        cached = json.loads(cache.read_text())
        if cached["n"] == len(rows) and cached["max_new_tokens"] == s.max_new_tokens:
            return cached
    model, tokenizer = load_stage(stage, smoke)
    # batches of 64: measured here ~15% faster than 32 (larger matrix products), 128 no faster
    generations = generate(model, tokenizer, [r["messages"] for r in rows], max_new_tokens=s.max_new_tokens,
                           temperature=0.0, batch_size=64)
    correct = [verify(r["dataset"], g.text, r["ground_truth"]) for r, g in zip(rows, generations)]
    formatted = [ends_in_answer_format(g.text) for g in generations]
    result = {"stage": stage, "n": len(rows), "accuracy": sum(correct) / len(rows),
              "format_rate": sum(formatted) / len(rows), "correct": correct, "formatted": formatted,
              "max_new_tokens": s.max_new_tokens, "examples": [g.text for g in generations[:5]]}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(result))
    return result


def heldout_preference_accuracy(stage: str = "dpo", smoke: bool | None = None) -> float:
    """Held-out DPO preference accuracy (implicit reward margin > 0; reference = the SFT model)."""
    from tulu_lab.config import DPOConfig
    from tulu_lab.dpo import preference_accuracy
    from tulu_lab.models import load_model

    cache = stage_dir(stage, smoke) / "heldout_preference.json"
    if cache.is_file():
        return json.loads(cache.read_text())["accuracy"]
    cfg = DPOConfig.cpu_preset()
    # The SFT model with the DPO adapters on top: adapters disabled, it is exactly the DPO reference.
    policy, tokenizer = load_model(_finished("sft", smoke), lora=str(stage_dir(stage, smoke) / "final" / "adapter"))
    accuracy = preference_accuracy(policy, tokenizer, embedded_data(smoke)["test_pairs"], beta=cfg.beta,
                                   loss_type=cfg.loss_type, max_seq_len=cfg.max_seq_len)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"stage": stage, "accuracy": accuracy}))
    return accuracy


def heldout_table(stages=STAGES, smoke: bool | None = None):
    """Accuracy and answer-format rate per stage on the held-out problems, as a tidy DataFrame."""
    import pandas as pd

    rows = []
    for stage in stages:
        if stage != "instruct" and _finished(stage, smoke) is None:
            continue
        r = heldout_results(stage, smoke)
        for metric in ("accuracy", "format_rate"):
            rows.append({"model": "SmolLM2-135M (embedded)", "stage": stage, "benchmark": "synthetic GSM (held-out)",
                         "metric": metric, "value": r[metric], "n": r["n"],
                         "stderr": (r[metric] * (1 - r[metric]) / r["n"]) ** 0.5})
    return pd.DataFrame(rows)


def rlvr_gain(before: str = "dpo", after: str = "rlvr", smoke: bool | None = None) -> dict[str, Any]:
    """Held-out accuracy before and after RLVR with McNemar's exact test on the paired verdicts."""
    from tulu_lab.stats import discordant_counts, mcnemar

    a, b = heldout_results(before, smoke), heldout_results(after, smoke)
    only_before, only_after = discordant_counts(a["correct"], b["correct"])
    return {"before": a["accuracy"], "after": b["accuracy"], "gain_points": 100 * (b["accuracy"] - a["accuracy"]),
            "n": a["n"], "only_before": only_before, "only_after": only_after,
            "mcnemar_p": mcnemar(a["correct"], b["correct"])}


# ----------------------------------------------------------------------------------------------
# The beta x seed ablation and the stage evaluations
# ----------------------------------------------------------------------------------------------

ABLATION_BETAS = (0.0, 0.04, 0.2)
ABLATION_SEEDS = (1, 2)
ABLATION_STEPS = 3        # per cell, 2 prompts x 8 samples: about 1.5 minutes with its evaluation on 2 CPU cores
ABLATION_EVAL = 60        # held-out problems scored at the end of each cell


def run_ablation(smoke: bool | None = None, betas=ABLATION_BETAS, seeds=ABLATION_SEEDS, steps: int | None = None):
    """RLVR from the DPO model for every beta x seed (run_sweep: resumable, finished cells skipped).

    Each cell is a short run (``ABLATION_STEPS`` steps of 2 prompts x 8 samples) that ends with
    held-out accuracy on the first ``ABLATION_EVAL`` test problems. Returns the sweep's tidy table
    (also ``runs/recipe/sweep/results.csv``). ``make reproduce`` runs one seed; the full 3 x 2 grid
    is ``benchmarks/recipe_embedded.py --sweep``.
    """
    from tulu_lab.sweep import run_sweep

    smoke_on = paths.smoke() if smoke is None else smoke
    s = settings(smoke)
    steps = steps or (2 if smoke_on else ABLATION_STEPS)
    dpo_dir = run_dpo(smoke)
    data = embedded_data(smoke)
    # eval_every = steps: held-out accuracy once, at the end of each cell
    base = rlvr_config(smoke, max_steps=steps, checkpoint_every=1, eval_every=steps, prompts_per_step=2)

    def loader(source):
        from tulu_lab.chat import install_tulu_template
        from tulu_lab.models import load_model
        model, tokenizer = load_model(source, verbose=False)
        install_tulu_template(tokenizer)
        return model, tokenizer

    return run_sweep(base, {"beta": list(betas)}, seeds=list(seeds), data=data["rlvr"],
                     eval_data=data["test_rlvr"][: min(ABLATION_EVAL, s.n_test)], model_loader=loader,
                     model=str(dpo_dir), output_dir=stage_dir("sweep", smoke))


def evaluate_stages(benchmarks=("gsm8k", "ifeval"), data_dir: str | Path | None = None, smoke: bool | None = None,
                    stages=("sft", "dpo", "rlvr"), limit: int = 20):
    """The workbench's benchmark evaluation of the finished stages (results cached in runs/eval/).

    The stages the paper reports (SFT, DPO, final RLVR; add "instruct" for the untrained model). CPU
    budgets: GSM8K 8-shot CoT with 192 new tokens on the first ``limit`` (20) test problems, IFEval
    with 256 new tokens on the first ``limit`` prompts (smoke: 4 examples, 16 tokens), all of them
    decoded as one batch (the GSM8K exemplars computed once); about 1.3 minutes per stage on 2 CPU
    cores. ``data_dir`` holds ``gsm8k/test.jsonl`` and ``ifeval/input_data.jsonl``; without it the
    test sets shipped with the package are used.
    """
    import pandas as pd

    from tulu_lab.evaluate import evaluate

    smoke_on = paths.smoke() if smoke is None else smoke
    files = {"gsm8k": "gsm8k/test.jsonl", "ifeval": "ifeval/input_data.jsonl", "math": "math/test.jsonl"}
    budgets = {"gsm8k": 192, "ifeval": 256, "math": 384}
    frames = []
    for stage in stages:
        if stage != "instruct" and _finished(stage, smoke) is None:
            continue
        model, tokenizer = load_stage(stage, smoke, verbose=False)
        for benchmark in benchmarks:
            data = Path(data_dir) / files[benchmark] if data_dir is not None else None
            frames.append(evaluate(model, tokenizer, benchmark, data=data, limit=4 if smoke_on else limit,
                                   max_new_tokens=16 if smoke_on else budgets[benchmark],
                                   stage="base" if stage == "instruct" else stage, model_name="SmolLM2-135M",
                                   batch_size=min(limit, 32), output_dir=paths.runs_dir() / "eval", progress=True))
        del model
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

"""A recipe end to end: SFT -> DPO -> RLVR, every stage a run of its own, keyed by its fingerprint.

    from tulu_lab import pipeline
    sft_dir = pipeline.run_sft()                 # the embedded recipe (recipes/embedded), ~5 min on 2 CPU cores
    dpo_dir = pipeline.run_dpo()                 # from the SFT run, ~5 min
    rlvr_dir = pipeline.run_rlvr()               # from the DPO run, 10 min cap
    pipeline.heldout_table()                     # held-out accuracy of every stage, greedy
    variant = pipeline.run_dpo(beta=2.0)         # a DPO variant: a run of its own beside the baseline

Every function takes the recipe explicitly (``recipe=``, default ``tulu_lab.recipe.load_recipe()``,
which applies the smoke overlay when ``TULU_LAB_SMOKE=1``). A stage's run lives in
``runs/<recipe.name>/<stage>-<fingerprint>/``, the fingerprint covering its resolved config (with the
overrides given), the run it starts from, its data and the recipe settings that decide its weights
(``training.run_identity``); the trainer records it in the folder's ``run.json`` with the run's status
and step. So a stage function called again returns the finished run at once; a changed override, a
changed start or ``force=True`` trains a run of its own and leaves every other run's files as they
are; an interrupted run resumes from its last checkpoint. Held-out scores are cached in the run's
folder, keyed on its fingerprint and the scoring settings.

The data: one seeded draw of synthetic word problems at the generator's default difficulty, split
into training problems and held-out test problems that no stage ever trains on.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

from tulu_lab import paths
from tulu_lab.recipe import STAGES as TRAINED_STAGES
from tulu_lab.recipe import Recipe, load_recipe

STAGES = ("instruct",) + TRAINED_STAGES
ANSWER_LINE = re.compile(r"^#### -?[\d,]*\.?\d+\s*$")
UPSTREAM = {"sft": "instruct", "dpo": "sft"}  # RLVR starts from DPO unless told otherwise
ABLATION_BETAS = (0.0, 0.04, 0.2)
ABLATION_SEEDS = (1, 2)
ABLATION_STEPS = 3        # per cell, 2 prompts x 8 samples
ABLATION_EVAL = 60        # held-out problems scored at the end of each cell


def _recipe(recipe: Recipe | None) -> Recipe:
    return recipe if recipe is not None else load_recipe()


def recipe_runs_dir(recipe: Recipe | None = None) -> Path:
    """``runs/<recipe.name>``: every run of the recipe."""
    return paths.runs_dir() / _recipe(recipe).name


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------

def embedded_data(recipe: Recipe | None = None) -> dict[str, list]:
    """Training and held-out rows for every stage, from one seeded split (deterministic)."""
    from tulu_lab.data import make_splits, preference_row, rlvr_row, sft_row

    r = _recipe(recipe)
    train, test = make_splits(r.n_train, r.n_test, seed=r.seed)
    third = len(train) // 3
    # Disjoint thirds: SFT demonstrations, DPO pairs and RLVR prompts each see problems of their own.
    return {
        "train_problems": train, "test_problems": test,
        "sft": [sft_row(p) for p in train[:third]],
        "dpo": [preference_row(p, seed=r.seed) for p in train[third:2 * third]],
        "rlvr": [rlvr_row(p) for p in train[2 * third:]],
        "test_rlvr": [rlvr_row(p) for p in test],
        "test_pairs": [preference_row(p, seed=r.seed + 1) for p in test[:r.dpo_heldout_pairs]],
    }


# ----------------------------------------------------------------------------------------------
# Runs: identity, folder, status
# ----------------------------------------------------------------------------------------------

class StagePlan:
    """One stage's run of a recipe, before or after training: config, identity, folder."""

    def __init__(self, recipe: Recipe, stage: str, overrides: dict[str, Any], start: str | Path, repeat: int,
                 data: dict[str, list]):
        from tulu_lab.training import data_fingerprint, fingerprint, run_identity

        self.recipe, self.stage = recipe, stage
        self.cfg = recipe.with_stage(stage, **overrides).stage(stage) if overrides else recipe.stage(stage)
        if recipe.quant == "nf4":  # QLoRA: the config records it (lora.quantize_4bit), so it is part of the run
            if self.cfg.lora is None:
                raise ValueError(f"recipe quant='nf4' trains LoRA adapters on 4-bit weights, but the {stage} "
                                 f"config has lora=None (full fine-tuning); set lora or drop quant")
            if not self.cfg.lora.quantize_4bit:
                self.cfg = dataclasses.replace(self.cfg, lora=dataclasses.replace(self.cfg.lora, quantize_4bit=True))
        self.parent = start
        # the starting weights: the parent run's fingerprint (or the base model's name), loaded in the recipe's dtype
        if isinstance(start, StagePlan):
            start_id = f"run:{start.fingerprint}"
        elif isinstance(start, Path):
            start_id = f"run:{_parent_record(start, stage)['fingerprint']}"
        else:
            start_id = f"model:{start}"
        settings = {"dtype": recipe.dtype}
        if recipe.quant:
            settings["quant"] = recipe.quant
        if stage == "rlvr":
            settings["minutes"] = recipe.rlvr_minutes
        if repeat:
            settings["repeat"] = repeat
        self.start = f"{start_id}|" + "|".join(f"{k}={v}" for k, v in sorted(settings.items()))
        self.rows = data[stage]
        self.identity = run_identity(self.cfg, start=self.start, data=data_fingerprint(self.rows),
                                     **({"eval_data": None} if stage == "rlvr" else {}))
        self.fingerprint = fingerprint(self.identity)
        self.folder = recipe_runs_dir(recipe) / f"{stage}-{self.fingerprint[:12]}"

    @property
    def finished(self) -> bool:
        from tulu_lab.training import read_run

        record = read_run(self.folder)
        done = ("finished", "stopped") if self.stage == "rlvr" else ("finished",)  # stopped: at the wall-time cap
        return (record is not None and record.get("fingerprint") == self.fingerprint
                and record.get("status") in done and (self.folder / "final" / "config.json").is_file())


# the stages a run of each stage may start from
PARENT_STAGES = {"sft": ("instruct",), "dpo": ("sft",), "rlvr": ("dpo", "sft")}


def _parent_record(folder: Path, stage: str) -> dict[str, Any]:
    """The record of a run folder given as the parent of a ``stage`` run: it must have finished (RLVR:
    or stopped at its wall-time cap) with a ``final`` model, and be of a stage ``stage`` starts from."""
    from tulu_lab.training import read_run

    record = read_run(folder)
    if record is None:
        raise FileNotFoundError(f"parent {str(folder)!r} is not a run folder (no run.json); give a stage name "
                                f"({' or '.join(PARENT_STAGES[stage])}) or a run folder of one")
    parent_stage = (record.get("identity") or {}).get("stage")
    if parent_stage not in PARENT_STAGES[stage]:
        raise ValueError(f"parent {folder} is a {parent_stage} run; a {stage} run starts from a "
                         f"{' or '.join(PARENT_STAGES[stage])} run")
    if record.get("status") not in ("finished", "stopped") or not (folder / "final" / "config.json").is_file():
        raise FileNotFoundError(f"parent {folder} has no final model (status {record.get('status')!r})")
    return record


def _plan(stage: str, recipe: Recipe, *, start: str | Path | None = None, repeat: int = 0, data=None,
          **overrides: Any) -> StagePlan:
    """The run a stage function would train (or return). Its parent (``start``) is the recipe's
    baseline run of a stage (a name: "sft", "dpo") or any run folder; by default the baseline of the
    stage before (RLVR: DPO)."""
    data = data or embedded_data(recipe)
    if start is None:
        start = PARENT_STAGES[stage][0]
    if isinstance(start, str) and start in STAGES:
        if start not in PARENT_STAGES[stage]:
            raise ValueError(f"a {stage} run starts from {' or '.join(PARENT_STAGES[stage])} "
                             f"(or a run folder of it), got {start!r}")
        parent: Any = recipe.model if start == "instruct" else _plan(start, recipe, data=data)
    else:
        if stage == "sft":
            raise ValueError(f"SFT starts from the recipe's model ({recipe.model!r}); to start from other "
                             f"weights change the model (recipe.replace(model=...)), not the parent")
        parent = _run_folder(start, recipe)
        _parent_record(parent, stage)
    return StagePlan(recipe, stage, overrides, parent, repeat, data)


def stage_dir(stage: str, recipe: Recipe | None = None) -> Path:
    """The folder of the recipe's baseline run of ``stage`` (trained or not); "instruct" is the
    untrained model's folder (its held-out scores) and "sweep" the ablation's."""
    recipe = _recipe(recipe)
    if stage == "instruct":
        from tulu_lab.training import fingerprint
        return recipe_runs_dir(recipe) / f"instruct-{fingerprint(_base_model_key(recipe))[:12]}"
    if stage == "sweep":
        return _sweep_dir(recipe)
    return _plan(stage, recipe).folder


def _base_model_key(recipe: Recipe) -> list:
    """What the untrained model's measurements depend on: the model, its dtype (and quantisation)."""
    return [recipe.model, recipe.dtype] + ([recipe.quant] if recipe.quant else [])


def _run_folder(stage_or_run: str | Path, recipe: Recipe) -> Path:
    """A stage name (its baseline run) or a run folder (any run, e.g. a variant's) -> the run folder."""
    if isinstance(stage_or_run, str) and stage_or_run in STAGES:
        return stage_dir(stage_or_run, recipe)
    folder = Path(stage_or_run)
    if folder.name == "final":
        folder = folder.parent
    return folder


def _finished_final(stage_or_run: str | Path, recipe: Recipe) -> Path | None:
    from tulu_lab.training import read_run

    if isinstance(stage_or_run, str) and stage_or_run in TRAINED_STAGES:
        plan = _plan(stage_or_run, recipe)
        return plan.folder / "final" if plan.finished else None
    folder = _run_folder(stage_or_run, recipe)
    record = read_run(folder)
    if record and record.get("status") in ("finished", "stopped") and (folder / "final" / "config.json").is_file():
        return folder / "final"
    return None


def read_metrics(stage_or_run: str | Path = "sft", recipe: Recipe | None = None):
    """A run's per-step training metrics (``<run>/metrics.jsonl``) as a DataFrame."""
    import pandas as pd

    path = _run_folder(stage_or_run, _recipe(recipe)) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no metrics for {stage_or_run!r} at {path}: run pipeline.run_{stage_or_run}() first")
    return pd.read_json(path, lines=True)


def run_record(stage_or_run: str | Path, recipe: Recipe | None = None) -> dict[str, Any] | None:
    """The run's ``run.json`` (fingerprint, resolved identity, status, step, wall time, final metrics)."""
    from tulu_lab.training import read_run

    return read_run(_run_folder(stage_or_run, _recipe(recipe)))


def load_stage(stage_or_run: str | Path, recipe: Recipe | None = None, **kwargs):
    """(model, tokenizer) of a stage's baseline run or of a run folder ("instruct" is the untouched
    base model), in the recipe's dtype, Tülu template installed."""
    from tulu_lab.chat import install_tulu_template
    from tulu_lab.models import load_model

    recipe = _recipe(recipe)
    kwargs.setdefault("dtype", recipe.dtype)
    if recipe.quant:
        kwargs.setdefault("quant", recipe.quant)
    if stage_or_run == "instruct":
        model, tokenizer = load_model(recipe.model, **kwargs)
    else:
        final = _finished_final(stage_or_run, recipe)
        if final is None:
            raise FileNotFoundError(f"stage {str(stage_or_run)!r} has not been run yet: no finished run at "
                                    f"{_run_folder(stage_or_run, recipe)} (run pipeline.run_<stage>() or its "
                                    f"notebook first)")
        model, tokenizer = load_model(final, **kwargs)
    install_tulu_template(tokenizer)
    return model, tokenizer


# ----------------------------------------------------------------------------------------------
# Stages
# ----------------------------------------------------------------------------------------------

def _next_repeat(stage: str, recipe: Recipe, start: str | None, data, overrides: dict[str, Any]) -> int:
    """``force``: the first repeat index with no finished run (repeat 0 is the run itself)."""
    repeat = 1
    while _plan(stage, recipe, start=start, repeat=repeat, data=data, **overrides).finished:
        repeat += 1
    return repeat


def _run_stage(stage: str, recipe: Recipe | None, force: bool, start: str | Path | None,
               overrides: dict[str, Any]) -> Path:
    recipe = _recipe(recipe)
    data = embedded_data(recipe)
    plan = _plan(stage, recipe, start=start, data=data, **overrides)
    if force:
        plan = _plan(stage, recipe, start=start, data=data, repeat=_next_repeat(stage, recipe, start, data, overrides),
                     **overrides)
    if plan.finished:
        return plan.folder / "final"
    parent = plan.parent
    if isinstance(parent, StagePlan):
        _run_stage(parent.stage, recipe, False, None, {})  # the parent baseline, trained if missing
        model, tokenizer = load_stage(parent.folder, recipe)
    elif isinstance(parent, Path):
        model, tokenizer = load_stage(parent, recipe)
    else:
        model, tokenizer = load_stage("instruct", recipe)
    cfg = dataclasses.replace(plan.cfg, output_dir=str(plan.folder), log_path="")
    if stage == "sft":
        from tulu_lab.sft import train_sft
        summary = train_sft(cfg, model, tokenizer, plan.rows, start=plan.start)
    elif stage == "dpo":
        from tulu_lab.dpo import train_dpo
        summary = train_dpo(cfg, model, tokenizer, plan.rows, start=plan.start)
    else:
        from tulu_lab.rlvr import train_rlvr
        summary = train_rlvr(cfg, model, tokenizer, plan.rows, start=plan.start,
                             time_limit_s=60 * recipe.rlvr_minutes)
    return Path(summary["final_dir"])


def run_sft(recipe: Recipe | None = None, *, force: bool = False, **overrides: Any) -> Path:
    """LoRA SFT of the base model on worked solutions; returns the run's merged ``final`` folder.

    ``overrides`` change fields of the recipe's SFT config (a variant: a run of its own); ``force``
    trains a further repeat of the run even when one has finished (a run of its own too).
    """
    return _run_stage("sft", recipe, force, None, overrides)


def run_dpo(recipe: Recipe | None = None, *, force: bool = False, parent: str | Path | None = None,
            **overrides: Any) -> Path:
    """LoRA dpo_norm from the recipe's SFT run on synthetic preference pairs; returns ``final``.

    ``parent``: another SFT run's folder to start from (default: the recipe's SFT baseline).
    """
    return _run_stage("dpo", recipe, force, parent, overrides)


def run_rlvr(recipe: Recipe | None = None, *, force: bool = False, start: str = "dpo",
             parent: str | Path | None = None, **overrides: Any) -> Path:
    """GRPO with verifiable rewards from the recipe's DPO run (``start="sft"``: from its SFT run).

    ``parent`` (when given, instead of ``start``): "dpo", "sft" or any DPO or SFT run's folder.
    Training stops at the config's ``max_steps`` or after the recipe's ``rlvr_minutes`` of wall time,
    whichever comes first (the step reached is in ``run.json`` and ``final/summary.json``).
    """
    return _run_stage("rlvr", recipe, force, parent if parent is not None else start, overrides)


def recipe_with(recipe: Recipe | None = None, *, model: str | None = None, quant: str | None = None) -> Recipe:
    """The recipe (default: ``load_recipe()``) with another starting ``model`` and/or ``quant``; None keeps its own."""
    recipe = _recipe(recipe)
    changes = {k: v for k, v in (("model", model), ("quant", quant)) if v is not None}
    return recipe.replace(**changes) if changes else recipe


def stage_settings(stage: str, recipe: Recipe | None = None, *, model: str | None = None, quant: str | None = None,
                   lora_r: int | None = None, lora_alpha: int | None = None,
                   **fields: Any) -> tuple[Recipe, dict[str, Any]]:
    """A notebook's parameters -> (recipe, the stage's overrides); None means the recipe's value.

    ``model`` (a name load_model knows, a folder or a hub id) and ``quant`` ("nf4": QLoRA) change the
    recipe; ``lora_r`` / ``lora_alpha`` the stage's adapters; every other keyword is a field of the
    stage's config (``learning_rate``, ``beta``, ``max_steps``, ``seed`` ...). A changed value makes a
    run of its own (``run_<stage>(recipe, **overrides)``); with every value None the baseline is returned.
    """
    if stage not in TRAINED_STAGES:
        raise ValueError(f"unknown stage {stage!r}; allowed: {list(TRAINED_STAGES)}")
    recipe = recipe_with(recipe, model=model, quant=quant)
    cfg = recipe.stage(stage)
    known = {f.name for f in dataclasses.fields(cfg)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise TypeError(f"{type(cfg).__name__} has no field(s) {unknown}; a {stage} run's settings are "
                        f"{sorted(known - {'output_dir', 'log_path'})}")
    overrides = {k: v for k, v in fields.items() if v is not None and v != getattr(cfg, k)}
    lora = {k: v for k, v in (("r", lora_r), ("alpha", lora_alpha)) if v is not None}
    if lora:
        if cfg.lora is None:
            raise ValueError(f"lora_r/lora_alpha given but the recipe's {stage} config trains without LoRA")
        changed = dataclasses.replace(cfg.lora, **lora)
        if changed != cfg.lora:
            overrides["lora"] = changed
    return recipe, overrides


def rlvr_config(recipe: Recipe | None = None, *, parent: str | Path | None = None, **overrides: Any):
    """The recipe's RLVR config with ``overrides``, output_dir set to the run's folder."""
    plan = _plan("rlvr", _recipe(recipe), start=parent, **overrides)
    return dataclasses.replace(plan.cfg, output_dir=str(plan.folder))


def stage_seconds(recipe: Recipe | None = None) -> dict[str, float]:
    """Wall time of each finished baseline run's last training call, in seconds."""
    recipe = _recipe(recipe)
    times = {}
    for stage in TRAINED_STAGES:
        record = run_record(stage, recipe)
        if record and record.get("wall_time_s") is not None:
            times[stage] = record["wall_time_s"]
    return times


# ----------------------------------------------------------------------------------------------
# Held-out measurements (cached in each run's folder, keyed on its fingerprint and the settings)
# ----------------------------------------------------------------------------------------------

def ends_in_answer_format(text: str) -> bool:
    """The response's last non-empty line is "#### N", the format the synthetic solutions teach."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return bool(lines) and bool(ANSWER_LINE.match(lines[-1].strip()))


def _weights_key(stage_or_run: str | Path, recipe: Recipe) -> str:
    """The fingerprint of the weights a measurement is made on."""
    from tulu_lab.training import fingerprint

    if stage_or_run == "instruct":
        return "model:" + fingerprint(_base_model_key(recipe))
    record = run_record(stage_or_run, recipe) or {}
    # the step too: a run stopped at its wall-time cap and continued later keeps its fingerprint
    return f"run:{record.get('fingerprint')}@{record.get('step')}"


def _cached(path: Path, key: str) -> dict[str, Any] | None:
    if path.is_file():
        cached = json.loads(path.read_text())
        if cached.get("key") == key:
            return cached
    return None


def heldout_results(stage_or_run: str | Path, recipe: Recipe | None = None, force: bool = False) -> dict[str, Any]:
    """Greedy answers of a run (or the base model, "instruct") on the held-out problems: accuracy,
    format rate, per-example verdicts."""
    from tulu_lab.generate import generate
    from tulu_lab.rewards import verify
    from tulu_lab.training import data_fingerprint, fingerprint

    recipe = _recipe(recipe)
    rows = embedded_data(recipe)["test_rlvr"]
    if stage_or_run == "instruct":  # the baseline: far from the trained stages, and the slowest to score
        rows = rows[:recipe.n_test_instruct]
    folder = _run_folder(stage_or_run, recipe)
    cache = folder / "heldout.json"
    key = fingerprint({"weights": _weights_key(stage_or_run, recipe), "rows": data_fingerprint(rows),
                       "max_new_tokens": recipe.heldout_max_new_tokens, "dtype": recipe.dtype, "decoding": "greedy"})
    if not force and (cached := _cached(cache, key)):
        return cached
    model, tokenizer = load_stage(stage_or_run, recipe)
    generations = generate(model, tokenizer, [r["messages"] for r in rows],
                           max_new_tokens=recipe.heldout_max_new_tokens, temperature=0.0, batch_size=64)
    correct = [verify(r["dataset"], g.text, r["ground_truth"]) for r, g in zip(rows, generations)]
    formatted = [ends_in_answer_format(g.text) for g in generations]
    stage = stage_or_run if isinstance(stage_or_run, str) and stage_or_run in STAGES else folder.name
    result = {"stage": stage, "key": key, "n": len(rows), "accuracy": sum(correct) / len(rows),
              "format_rate": sum(formatted) / len(rows), "correct": correct, "formatted": formatted,
              "max_new_tokens": recipe.heldout_max_new_tokens, "examples": [g.text for g in generations[:5]]}
    folder.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(result))
    return result


def heldout_preference_accuracy(stage_or_run: str | Path = "dpo", recipe: Recipe | None = None) -> float:
    """Held-out DPO preference accuracy of a DPO run (implicit reward margin > 0; the reference is the
    run it started from: its adapters disabled)."""
    from tulu_lab.dpo import preference_accuracy
    from tulu_lab.training import data_fingerprint, fingerprint

    recipe = _recipe(recipe)
    folder = _run_folder(stage_or_run, recipe)
    record = run_record(folder, recipe)
    if record is None or record.get("status") != "finished" or record["identity"]["stage"] != "dpo":
        raise FileNotFoundError(f"no finished DPO run at {folder}")
    pairs = embedded_data(recipe)["test_pairs"]
    cfg = type(recipe.dpo).from_dict(record["identity"]["config"])
    key = fingerprint({"weights": f"run:{record['fingerprint']}@{record.get('step')}",
                       "pairs": data_fingerprint(pairs), "dtype": recipe.dtype})
    cache = folder / "heldout_preference.json"
    if cached := _cached(cache, key):
        return cached["accuracy"]
    policy, tokenizer = load_preference_policy(folder, recipe)
    accuracy = preference_accuracy(policy, tokenizer, pairs, beta=cfg.beta, loss_type=cfg.loss_type,
                                   max_seq_len=cfg.max_seq_len)
    cache.write_text(json.dumps({"run": folder.name, "key": key, "accuracy": accuracy}))
    return accuracy


def load_preference_policy(stage_or_run: str | Path = "dpo", recipe: Recipe | None = None):
    """(policy, tokenizer) of a DPO run as it trained: the model it started from with the run's LoRA
    adapters on top, so that with the adapters disabled it is exactly the run's reference."""
    from tulu_lab.models import load_model

    recipe = _recipe(recipe)
    folder = _run_folder(stage_or_run, recipe)
    record = run_record(folder, recipe)
    if record is None or record.get("status") != "finished" or record["identity"]["stage"] != "dpo":
        raise FileNotFoundError(f"no finished DPO run at {folder}")
    return load_model(_start_folder(record, recipe), dtype=recipe.dtype, quant=recipe.quant,
                      lora=str(folder / "final" / "adapter"), verbose=False)


def _start_folder(record: dict[str, Any], recipe: Recipe) -> Path:
    """The ``final`` folder of the run another run started from (its fingerprint is in the record)."""
    from tulu_lab.training import read_run

    start = record["identity"]["start"].split("|")[0]
    if not start.startswith("run:"):
        raise FileNotFoundError(f"the run started from {start}, not from a run of this recipe")
    wanted = start[len("run:"):]
    for folder in sorted(recipe_runs_dir(recipe).iterdir()):
        found = read_run(folder) if folder.is_dir() else None
        if found is not None and found.get("fingerprint") == wanted:
            return folder / "final"
    raise FileNotFoundError(f"the run {wanted} this run started from is not under {recipe_runs_dir(recipe)}")


def heldout_table(stages=STAGES, recipe: Recipe | None = None):
    """Accuracy and answer-format rate per stage's baseline run on the held-out problems, as a tidy DataFrame."""
    import pandas as pd

    recipe = _recipe(recipe)
    rows = []
    for stage in stages:
        if stage != "instruct" and _finished_final(stage, recipe) is None:
            continue
        r = heldout_results(stage, recipe)
        for metric in ("accuracy", "format_rate"):
            rows.append({"model": "SmolLM2-135M (embedded)", "stage": stage, "benchmark": "synthetic GSM (held-out)",
                         "metric": metric, "value": r[metric], "n": r["n"],
                         "stderr": (r[metric] * (1 - r[metric]) / r["n"]) ** 0.5})
    return pd.DataFrame(rows)


def rlvr_gain(before: str | Path = "dpo", after: str | Path = "rlvr", recipe: Recipe | None = None) -> dict[str, Any]:
    """Held-out accuracy before and after RLVR with McNemar's exact test on the paired verdicts."""
    from tulu_lab.stats import discordant_counts, mcnemar

    recipe = _recipe(recipe)
    a, b = heldout_results(before, recipe), heldout_results(after, recipe)
    only_before, only_after = discordant_counts(a["correct"], b["correct"])
    return {"before": a["accuracy"], "after": b["accuracy"], "gain_points": 100 * (b["accuracy"] - a["accuracy"]),
            "n": a["n"], "only_before": only_before, "only_after": only_after,
            "mcnemar_p": mcnemar(a["correct"], b["correct"])}


# ----------------------------------------------------------------------------------------------
# The beta x seed ablation and the stage evaluations
# ----------------------------------------------------------------------------------------------

def _ablation_base(recipe: Recipe, steps: int):
    # eval_every = steps: held-out accuracy once, at the end of each cell
    return dataclasses.replace(recipe.rlvr, max_steps=steps, checkpoint_every=1, eval_every=steps,
                               prompts_per_step=2, per_device_batch=min(recipe.rlvr.per_device_batch, 8))


def _ablation_steps(recipe: Recipe, steps: int | None) -> int:
    return steps or (2 if recipe.rlvr.max_steps <= 2 else ABLATION_STEPS)


def _sweep_dir(recipe: Recipe, steps: int | None = None) -> Path:
    """The ablation's folder, keyed on its base config and the DPO run it starts from."""
    from tulu_lab.training import fingerprint

    base = _ablation_base(recipe, _ablation_steps(recipe, steps))
    key = fingerprint({"base": base.to_dict(), "start": _plan("dpo", recipe).fingerprint,
                       "eval": min(ABLATION_EVAL, recipe.n_test)})
    return recipe_runs_dir(recipe) / f"sweep-{key[:12]}"


def run_ablation(recipe: Recipe | None = None, betas=ABLATION_BETAS, seeds=ABLATION_SEEDS, steps: int | None = None):
    """RLVR from the recipe's DPO run for every beta x seed (run_sweep: each cell a run, resumable,
    finished cells skipped).

    Each cell is a short run (``ABLATION_STEPS`` steps of 2 prompts x 8 samples) that ends with
    held-out accuracy on the first ``ABLATION_EVAL`` test problems. Returns the sweep's tidy table
    (also ``<sweep folder>/results.csv``).
    """
    from tulu_lab.sweep import run_sweep

    recipe = _recipe(recipe)
    steps = _ablation_steps(recipe, steps)
    dpo_dir = run_dpo(recipe)
    data = embedded_data(recipe)

    def loader(source):
        from tulu_lab.chat import install_tulu_template
        from tulu_lab.models import load_model
        model, tokenizer = load_model(source, dtype=recipe.dtype, verbose=False)
        install_tulu_template(tokenizer)
        return model, tokenizer

    return run_sweep(_ablation_base(recipe, steps), {"beta": list(betas)}, seeds=list(seeds), data=data["rlvr"],
                     eval_data=data["test_rlvr"][: min(ABLATION_EVAL, recipe.n_test)], model_loader=loader,
                     model=str(dpo_dir), output_dir=_sweep_dir(recipe, steps))


def evaluate_stages(benchmarks=("gsm8k", "ifeval"), data_dir: str | Path | None = None, recipe: Recipe | None = None,
                    stages=("sft", "dpo", "rlvr"), limit: int = 20, smoke: bool | None = None):
    """The workbench's benchmark evaluation of the finished baseline runs (cached in each run's ``eval/``).

    The stages the paper reports (SFT, DPO, final RLVR; add "instruct" for the untrained model). CPU
    budgets: GSM8K 8-shot CoT with 192 new tokens on the first ``limit`` (20) test problems, IFEval
    with 256 new tokens on the first ``limit`` prompts (smoke: 4 examples, 16 tokens), all of them
    decoded as one batch. ``data_dir`` holds ``gsm8k/test.jsonl`` and ``ifeval/input_data.jsonl``;
    without it the test sets shipped with the package are used.
    """
    import pandas as pd

    from tulu_lab.evaluate import evaluate

    recipe = _recipe(recipe)
    smoke_on = paths.smoke() if smoke is None else smoke
    files = {"gsm8k": "gsm8k/test.jsonl", "ifeval": "ifeval/input_data.jsonl", "math": "math/test.jsonl"}
    budgets = {"gsm8k": 192, "ifeval": 256, "math": 384}
    frames = []
    for stage in stages:
        if stage != "instruct" and _finished_final(stage, recipe) is None:
            continue
        model, tokenizer = load_stage(stage, recipe, verbose=False)
        for benchmark in benchmarks:
            data = Path(data_dir) / files[benchmark] if data_dir is not None else None
            frames.append(evaluate(model, tokenizer, benchmark, data=data, limit=4 if smoke_on else limit,
                                   max_new_tokens=16 if smoke_on else budgets[benchmark],
                                   stage="base" if stage == "instruct" else stage, model_name="SmolLM2-135M",
                                   batch_size=min(limit, 32), output_dir=stage_dir(stage, recipe) / "eval",
                                   progress=True))
        del model
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

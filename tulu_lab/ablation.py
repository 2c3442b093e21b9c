"""The RLVR ablation grid: one factor at a time around the recipe's RLVR stage, every cell a run.

    from tulu_lab import ablation
    grid = ablation.load_grid()                 # recipes/embedded/ablations.yaml (smoke section when TULU_LAB_SMOKE=1)
    results = ablation.run_ablations(grid)      # trains what is missing, scores, writes figures/ + summary CSV
    results["summary"]                          # one row per cell and seed (figures/ablation_summary.csv)

The grid is data (``ablations.yaml``): each cell names its factor (baseline | reward | beta | start |
algorithm), the value it sets, its seeds, and what it changes in the recipe's RLVR config. Every cell
starts from the recipe's DPO run (the "start" cell from its SFT run), uses the recipe's RLVR config
with the grid's step budget and the cell's seed (so the same prompts in the same order for the same
seed, and the same first rollout), and is a run of its own under ``runs/<recipe>/ablations/``: its
fingerprint covers the resolved config, the start run, the data, the wall-time cap and the reward
control, so a finished cell is skipped, a killed one resumes from its last checkpoint with the wall
time it has left, and a changed setting trains a new run beside the old one.

Cells:

* ``baseline``: the recipe's RLVR (GRPO, verifiable reward, beta 0, from DPO).
* ``reward``: the random-reward control, ``reward_control: shuffled``: every step's scores are
  permuted across the batch (:func:`tulu_lab.rlvr.shuffled_scores` says why this and not a Bernoulli
  draw), so the reward keeps the verified run's scale and its batch mean exactly and loses its link
  to correctness. The true verifier's mean reward is still logged (``verifiable_reward``).
* ``beta``: a KL penalty, same estimator as every cell's logged KL (the recipe's ``kl_estimator``).
* ``start``: from the SFT run instead of DPO.
* ``algorithm``: PPO with its separate value model, trained for the wall time the baseline cell of
  the same seed took (``equal_time: baseline``), not for its step count.

Scoring: greedy answers on ``heldout_problems`` synthetic problems drawn apart from every training
problem (the recipe's own ``n_test`` split is left as it is), cached in each run's folder keyed on its
fingerprint and step. Each cell is compared with its start checkpoint and with the baseline cell of
its seed by McNemar's exact test on the paired verdicts, and the gain gets Newcombe's 95% interval for
a difference of paired proportions (``tulu_lab.stats.paired_difference_interval``).

``figures/ablation_summary.csv`` has one row per cell and seed: ``steps`` and ``minutes`` trained (the
sum of the logged step times), the start checkpoint's and the cell's held-out accuracy, the gain in
points, ``fixed`` / ``broken`` (problems wrong before and right after / the reverse), McNemar's p against
the start, ``final_kl`` (KL to the start of the policy that drew the last rollout, per token, the recipe's
estimator) and ``final_reward`` (the true verifier's mean score on that rollout, on the reward's scale:
``correct_reward`` if right, ``non_stop_penalty`` if unfinished). Figure 10's CSV adds the intervals and
the comparison with the baseline cell.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tulu_lab import paths
from tulu_lab.recipe import Recipe, load_recipe, recipe_dir

GRID_FILE = "ablations.yaml"
FACTORS = ("baseline", "reward", "beta", "start", "algorithm")
SUMMARY_COLUMNS = ["cell", "factor", "value", "seed", "steps", "minutes", "accuracy_before", "accuracy_after",
                   "gain_points", "fixed", "broken", "mcnemar_p", "final_kl", "final_reward"]
SUMMARY_CSV = "ablation_summary.csv"
CURVE_METRICS = ("verifiable_reward", "kl", "completions/mean_length", "frac_verifiable_zero_std")
CELL_KEYS = {"cell", "factor", "value", "seeds", "start", "reward_control", "rlvr", "equal_time"}
GRID_KEYS = {"steps", "minutes", "heldout_problems", "cells"}
SMOKE_KEYS = {"steps", "minutes", "heldout_problems", "seeds"}
FIGURE_CURVES, FIGURE_KL, FIGURE_SUMMARY = "03_rlvr_curves", "04_overoptimization", "10_ablation_summary"


@dataclass(frozen=True)
class CellSpec:
    """One cell of the grid for one seed."""

    cell: str
    factor: str
    value: str
    seed: int
    start: str = "dpo"                   # "dpo" | "sft"
    reward_control: str | None = None    # None | "shuffled"
    rlvr: dict[str, Any] = field(default_factory=dict)   # changes to the recipe's RLVR config
    equal_time: str | None = None        # a cell whose same-seed wall time this one trains for

    @property
    def name(self) -> str:
        return f"{self.cell}_seed{self.seed}"


@dataclass(frozen=True)
class Grid:
    """The ablation grid: budgets and cells (one CellSpec per cell and seed, in running order)."""

    steps: int
    minutes: float
    heldout_problems: int
    cells: tuple[CellSpec, ...]
    source: str = ""

    def cell(self, cell: str, seed: int) -> CellSpec:
        for spec in self.cells:
            if spec.cell == cell and spec.seed == seed:
                return spec
        raise KeyError(f"no cell {cell!r} with seed {seed} in the grid ({[c.name for c in self.cells]})")


def load_grid(path: str | Path | None = None, *, smoke: bool | None = None, seeds: list[int] | None = None,
              steps: int | None = None, minutes: float | None = None,
              heldout_problems: int | None = None) -> Grid:
    """Read the grid (default ``recipes/embedded/ablations.yaml``); ``smoke`` (default ``TULU_LAB_SMOKE``)
    applies its ``smoke`` section. ``seeds`` (every cell's seeds), ``steps``, ``minutes`` and
    ``heldout_problems`` override the file's (notebook 05's knobs)."""
    from tulu_lab.config import _read_mapping

    path = Path(path) if path is not None else recipe_dir() / GRID_FILE
    data = _read_mapping(path)
    overlay = data.pop("smoke", None) or {}
    unknown = sorted(set(data) - GRID_KEYS)
    if unknown or not GRID_KEYS <= set(data):
        raise ValueError(f"{path}: unknown keys {unknown}, missing {sorted(GRID_KEYS - set(data))}; "
                         f"a grid has {sorted(GRID_KEYS)} and an optional 'smoke' section")
    if sorted(set(overlay) - SMOKE_KEYS):
        raise ValueError(f"{path}: section 'smoke': unknown keys {sorted(set(overlay) - SMOKE_KEYS)}; "
                         f"allowed {sorted(SMOKE_KEYS)}")
    smoke_on = paths.smoke() if smoke is None else smoke
    all_seeds = None
    if smoke_on:
        data.update({k: v for k, v in overlay.items() if k != "seeds"})
        all_seeds = overlay.get("seeds")
    if seeds is not None:
        all_seeds = list(seeds)
    for key, value in (("steps", steps), ("minutes", minutes), ("heldout_problems", heldout_problems)):
        if value is not None:
            data[key] = value
    if not (isinstance(data["steps"], int) and data["steps"] > 0):
        raise ValueError(f"{path}: steps must be an int > 0, got {data['steps']!r}")
    if not (isinstance(data["heldout_problems"], int) and data["heldout_problems"] > 0):
        raise ValueError(f"{path}: heldout_problems must be an int > 0, got {data['heldout_problems']!r}")
    if not float(data["minutes"]) > 0:
        raise ValueError(f"{path}: minutes must be > 0, got {data['minutes']!r}")
    specs: list[CellSpec] = []
    for i, raw in enumerate(data["cells"] or []):
        where = f"{path}: cells[{i}]"
        if not isinstance(raw, dict) or sorted(set(raw) - CELL_KEYS) or not {"cell", "factor", "value"} <= set(raw):
            raise ValueError(f"{where}: a cell is a mapping with cell, factor, value and optionally "
                             f"{sorted(CELL_KEYS - {'cell', 'factor', 'value'})}; got {raw!r}")
        if raw["factor"] not in FACTORS:
            raise ValueError(f"{where}: factor {raw['factor']!r} is not one of {list(FACTORS)}")
        if raw.get("start", "dpo") not in ("dpo", "sft"):
            raise ValueError(f"{where}: start must be 'dpo' or 'sft', got {raw['start']!r}")
        if raw.get("reward_control") not in (None, "shuffled"):
            raise ValueError(f"{where}: reward_control must be 'shuffled' or absent, got {raw['reward_control']!r}")
        rlvr = dict(raw.get("rlvr") or {})
        if {"seed", "max_steps", "kl_estimator"} & set(rlvr):
            raise ValueError(f"{where}: rlvr may not set seed, max_steps or kl_estimator (the grid's seeds and "
                             f"steps decide them; every cell logs KL with the same estimator)")
        cell_seeds = all_seeds if all_seeds is not None else raw.get("seeds", [0])
        if not cell_seeds or not all(isinstance(s, int) for s in cell_seeds) or len(set(cell_seeds)) != len(cell_seeds):
            raise ValueError(f"{where}: seeds must be a non-empty list of distinct ints, got {cell_seeds!r}")
        for seed in cell_seeds:
            specs.append(CellSpec(cell=str(raw["cell"]), factor=raw["factor"], value=str(raw["value"]), seed=seed,
                                  start=raw.get("start", "dpo"), reward_control=raw.get("reward_control"),
                                  rlvr=rlvr, equal_time=raw.get("equal_time")))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: two cells share a name and seed: {names}")
    if not any(s.factor == "baseline" for s in specs):
        raise ValueError(f"{path}: the grid needs a cell with factor 'baseline' (every cell is compared with it)")
    for spec in specs:
        if spec.equal_time is not None and not any(s.cell == spec.equal_time and s.seed == spec.seed for s in specs):
            raise ValueError(f"{path}: cell {spec.name}: equal_time names {spec.equal_time!r}, which has no cell "
                             f"with seed {spec.seed}")
    # every cell's first seed before any second seed (a grid stopped early has each factor once), and a
    # cell whose budget is another cell's wall time after that cell
    seed_rank = {seed: i for i, seed in enumerate(sorted({s.seed for s in specs}))}
    specs.sort(key=lambda s: (seed_rank[s.seed], s.equal_time is not None))
    return Grid(steps=data["steps"], minutes=float(data["minutes"]), heldout_problems=data["heldout_problems"],
                cells=tuple(specs), source=str(path))


# ----------------------------------------------------------------------------------------------
# Cells as runs
# ----------------------------------------------------------------------------------------------

def ablations_dir(recipe: Recipe) -> Path:
    from tulu_lab.pipeline import recipe_runs_dir

    return recipe_runs_dir(recipe) / "ablations"


@dataclass
class CellRun:
    """A cell's run: config, identity, folder."""

    spec: CellSpec
    cfg: Any
    start: str
    rows: list
    identity: dict
    fingerprint: str
    folder: Path
    parent_stage: str

    @property
    def finished(self) -> bool:
        from tulu_lab.training import read_run

        record = read_run(self.folder)
        return (record is not None and record.get("fingerprint") == self.fingerprint
                and record.get("status") in ("finished", "stopped") and (self.folder / "final" / "config.json").is_file())


def cell_run(grid: Grid, spec: CellSpec, recipe: Recipe, data: dict | None = None) -> CellRun:
    """The run a cell trains (or has trained): its plan from the recipe's RLVR stage."""
    from tulu_lab.pipeline import _plan, embedded_data
    from tulu_lab.training import data_fingerprint, fingerprint, run_identity

    data = data or embedded_data(recipe)
    capped = recipe.replace(rlvr_minutes=grid.minutes)
    plan = _plan("rlvr", capped, start=spec.start, data=data, **{**spec.rlvr, "max_steps": grid.steps,
                                                                 "seed": spec.seed})
    settings: dict[str, Any] = {"eval_data": None}
    if spec.reward_control:
        settings["reward_control"] = spec.reward_control
    identity = run_identity(plan.cfg, start=plan.start, data=data_fingerprint(plan.rows), **settings)
    fp = fingerprint(identity)
    return CellRun(spec=spec, cfg=plan.cfg, start=plan.start, rows=plan.rows, identity=identity, fingerprint=fp,
                   folder=ablations_dir(recipe) / f"{spec.name}-{fp[:12]}", parent_stage=spec.start)


def trained_seconds(folder: Path) -> float:
    """Training time a run has spent so far: the sum of its logged step times (survives a kill)."""
    from tulu_lab.rlvr import read_metrics

    return float(sum(r.get("step_time") or 0.0 for r in read_metrics(Path(folder) / "metrics.jsonl")))


def _budget_s(grid: Grid, run: CellRun, runs: dict[str, CellRun]) -> float:
    if run.spec.equal_time is None:
        return 60 * grid.minutes
    other = runs[CellSpec(run.spec.equal_time, "", "", run.spec.seed).name]
    if not other.finished:
        raise RuntimeError(f"cell {run.spec.name} trains for the wall time of {other.spec.name}, which has not "
                           f"finished")
    return min(60 * grid.minutes, trained_seconds(other.folder))


def train_cell(grid: Grid, run: CellRun, recipe: Recipe, runs: dict[str, CellRun], progress: bool = True) -> Path:
    """Train (or continue) one cell; returns its ``final`` folder. A finished cell is returned as is."""
    from tulu_lab import pipeline
    from tulu_lab.rlvr import train_rlvr

    if run.finished:
        return run.folder / "final"
    parent = pipeline.run_sft(recipe) if run.parent_stage == "sft" else pipeline.run_dpo(recipe)
    model, tokenizer = pipeline.load_stage(parent, recipe)
    remaining = max(_budget_s(grid, run, runs) - trained_seconds(run.folder), 1.0)
    cfg = dataclasses.replace(run.cfg, output_dir=str(run.folder), log_path="", checkpoint_every=1)
    summary = train_rlvr(cfg, model, tokenizer, run.rows, start=run.start, time_limit_s=remaining,
                         reward_control=run.spec.reward_control, progress=progress)
    del model
    return Path(summary["final_dir"])


# ----------------------------------------------------------------------------------------------
# Held-out scoring
# ----------------------------------------------------------------------------------------------

def heldout_rows(recipe: Recipe, n: int) -> list[dict]:
    """``n`` greedy-scored problems drawn with the recipe's seed, none of them a training problem of
    any stage (the recipe's own held-out split is not changed)."""
    from tulu_lab.data import rlvr_row
    from tulu_lab.data.synthetic import generate_word_problems
    from tulu_lab.pipeline import embedded_data

    train = embedded_data(recipe)["train_problems"]
    return [rlvr_row(p) for p in generate_word_problems(n, recipe.seed, exclude=train)]


def score_run(folder: Path, recipe: Recipe, rows: list[dict]) -> dict[str, Any]:
    """Greedy verdicts of a run's ``final`` model on ``rows``, cached in the run's folder keyed on its
    fingerprint, its step and the scoring settings."""
    from tulu_lab import pipeline
    from tulu_lab.generate import generate
    from tulu_lab.rewards import verify
    from tulu_lab.training import data_fingerprint, fingerprint, read_run

    folder = Path(folder)
    if folder.name == "final":
        folder = folder.parent
    record = read_run(folder) or {}
    rows_fp = data_fingerprint(rows)
    key = fingerprint({"weights": f"run:{record.get('fingerprint')}@{record.get('step')}", "rows": rows_fp,
                       "max_new_tokens": recipe.heldout_max_new_tokens, "dtype": recipe.dtype, "decoding": "greedy"})
    cache = folder / f"heldout-{rows_fp[:12]}.json"
    if cache.is_file():
        cached = json.loads(cache.read_text())
        if cached.get("key") == key:
            return cached
    model, tokenizer = pipeline.load_stage(folder, recipe)
    generations = generate(model, tokenizer, [r["messages"] for r in rows],
                           max_new_tokens=recipe.heldout_max_new_tokens, temperature=0.0, batch_size=64)
    correct = [bool(verify(r["dataset"], g.text, r["ground_truth"])) for r, g in zip(rows, generations)]
    result = {"run": folder.name, "key": key, "n": len(rows), "accuracy": sum(correct) / len(rows),
              "correct": correct}
    cache.write_text(json.dumps(result))
    return result


def compare(before: list[bool], after: list[bool]) -> dict[str, Any]:
    """Paired comparison of two verdict lists: gain in points, fixed / broken counts, McNemar's exact
    p and Newcombe's 95% interval for the gain (in points)."""
    from tulu_lab.stats import discordant_counts, mcnemar, paired_difference_interval

    broken, fixed = discordant_counts(before, after)
    n = len(before)
    low, high = paired_difference_interval(before, after)
    return {"accuracy_before": sum(before) / n, "accuracy_after": sum(after) / n,
            "gain_points": 100 * (sum(after) - sum(before)) / n, "fixed": fixed, "broken": broken,
            "mcnemar_p": mcnemar(before, after), "gain_low": 100 * low, "gain_high": 100 * high}


# ----------------------------------------------------------------------------------------------
# The grid end to end
# ----------------------------------------------------------------------------------------------

def plan_cells(grid: Grid, recipe: Recipe) -> dict[str, CellRun]:
    """Every cell's run, by cell name (e.g. "baseline_seed0"), in running order."""
    from tulu_lab.pipeline import embedded_data

    data = embedded_data(recipe)
    return {spec.name: cell_run(grid, spec, recipe, data) for spec in grid.cells}


def train_grid(grid: Grid, recipe: Recipe, progress: bool = True) -> dict[str, CellRun]:
    """Train every cell not yet finished, in order (a killed cell resumes; finished ones are skipped)."""
    runs = plan_cells(grid, recipe)
    for index, run in enumerate(runs.values()):
        done = run.finished
        if progress:
            print(f"[ablation] {index + 1}/{len(runs)} {run.spec.name}: {'done, skipped' if done else 'training'} "
                  f"({run.folder.name})", flush=True)
        if not done:
            started = time.perf_counter()
            train_cell(grid, run, recipe, runs, progress=progress)
            if progress:
                print(f"[ablation] {run.spec.name}: {(time.perf_counter() - started) / 60:.1f} min", flush=True)
    return runs


def curves_table(runs: dict[str, CellRun]):
    """Per-step metrics of every cell: cell, factor, value, seed, step, the logged metrics."""
    import pandas as pd

    from tulu_lab.rlvr import read_metrics

    rows = []
    for run in runs.values():
        for record in read_metrics(run.folder / "metrics.jsonl"):
            rows.append({"cell": run.spec.cell, "factor": run.spec.factor, "value": run.spec.value,
                         "seed": run.spec.seed, **{k: record.get(k) for k in (
                             "step", "episodes", "verifiable_reward", "reward", "accuracy", "kl",
                             "completions/mean_length", "frac_verifiable_zero_std", "frac_reward_zero_std",
                             "step_time")}})
    return pd.DataFrame(rows)


def score_grid(grid: Grid, recipe: Recipe, runs: dict[str, CellRun]):
    """(summary, details): the summary CSV's rows, and the same with the intervals and the comparison
    with the baseline cell of each seed."""
    import pandas as pd

    from tulu_lab import pipeline
    from tulu_lab.rlvr import read_metrics

    rows = heldout_rows(recipe, grid.heldout_problems)
    starts = {stage: score_run(pipeline.stage_dir(stage, recipe), recipe, rows)
              for stage in sorted({r.parent_stage for r in runs.values()})}
    scores = {name: score_run(run.folder, recipe, rows) for name, run in runs.items()}
    details = []
    for name, run in runs.items():
        spec = run.spec
        metrics = read_metrics(run.folder / "metrics.jsonl")
        last = metrics[-1] if metrics else {}
        before = starts[run.parent_stage]["correct"]
        after = scores[name]["correct"]
        vs_start = compare(before, after)
        baseline = next(s for s in grid.cells if s.factor == "baseline" and s.seed == spec.seed) \
            if any(s.factor == "baseline" and s.seed == spec.seed for s in grid.cells) else None
        vs_base = compare(scores[baseline.name]["correct"], after) if baseline is not None else {}
        details.append({
            "cell": spec.cell, "factor": spec.factor, "value": spec.value, "seed": spec.seed,
            "steps": len(metrics), "minutes": round(trained_seconds(run.folder) / 60, 2),
            **{k: vs_start[k] for k in ("accuracy_before", "accuracy_after", "gain_points", "fixed", "broken",
                                        "mcnemar_p")},
            "final_kl": last.get("kl"), "final_reward": last.get("verifiable_reward"),
            "gain_low": vs_start["gain_low"], "gain_high": vs_start["gain_high"],
            "start": spec.start, "n": len(rows),
            "vs_baseline_points": vs_base.get("gain_points"), "vs_baseline_low": vs_base.get("gain_low"),
            "vs_baseline_high": vs_base.get("gain_high"), "vs_baseline_p": vs_base.get("mcnemar_p"),
            "run": run.folder.name,
        })
    details = pd.DataFrame(details)
    return details[SUMMARY_COLUMNS].copy(), details


def run_ablations(grid: Grid | None = None, recipe: Recipe | None = None, *, figures: bool = True,
                  figures_dir: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Train every cell not yet finished, score every cell and its start, write the summary CSV and
    figures 03 (per-step curves), 04 (held-out accuracy vs final KL) and 10 (gain per cell).

    Returns ``{"summary", "details", "curves", "runs", "figures"}``.
    """
    recipe = recipe if recipe is not None else load_recipe()
    grid = grid if grid is not None else load_grid()
    runs = train_grid(grid, recipe, progress=progress)
    summary, details = score_grid(grid, recipe, runs)
    curves = curves_table(runs)
    written = {}
    if figures:
        directory = Path(figures_dir) if figures_dir is not None else paths.figures_dir()
        directory.mkdir(parents=True, exist_ok=True)
        summary.to_csv(directory / SUMMARY_CSV, index=False)
        written = write_figures(curves, details, directory)
    return {"summary": summary, "details": details, "curves": curves, "runs": runs, "figures": written}


def read_results(grid: Grid | None = None, figures_dir: str | Path | None = None) -> dict[str, Any] | None:
    """The results a finished grid wrote to ``figures/`` (summary, details, curves), or None when they
    are missing or are not every cell and seed of ``grid`` (default: the full grid, not the smoke one)."""
    import pandas as pd

    grid = grid if grid is not None else load_grid(smoke=False)
    directory = Path(figures_dir) if figures_dir is not None else paths.figures_dir()
    files = {"summary": directory / SUMMARY_CSV, "details": directory / f"{FIGURE_SUMMARY}.csv",
             "curves": directory / f"{FIGURE_CURVES}.csv"}
    if not all(p.is_file() for p in files.values()):
        return None
    tables = {k: pd.read_csv(p) for k, p in files.items()}
    if list(tables["summary"].columns) != SUMMARY_COLUMNS or "cell" not in tables["curves"].columns:
        return None  # figures of another experiment (e.g. an older beta sweep)
    wanted = {(c.cell, c.seed) for c in grid.cells}
    if set(zip(tables["summary"]["cell"], tables["summary"]["seed"])) != wanted:
        return None
    return tables


# ----------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------

def _label(cell: str, seed: int | None = None) -> str:
    return cell if seed is None else f"{cell} (seed {seed})"


def plot_curves(curves):
    """Figure 03: per-step verifier reward, KL to the start, response length and zero-variance share,
    one line per cell and seed."""
    import matplotlib.pyplot as plt

    from tulu_lab.plotting import style_context

    labels = {"verifiable_reward": "mean verifiable reward (true verifier)", "kl": "KL to the start (k3)",
              "completions/mean_length": "response length (tokens)",
              "frac_verifiable_zero_std": "share of zero-variance groups"}
    with style_context():
        fig, axes = plt.subplots(1, len(CURVE_METRICS), figsize=(4.2 * len(CURVE_METRICS), 3.6))
        cmap = plt.get_cmap("tab10")
        keys = list(dict.fromkeys(zip(curves["cell"], curves["seed"])))
        cells = list(dict.fromkeys(curves["cell"]))
        for ax, metric in zip(axes, CURVE_METRICS):
            for cell, seed in keys:
                part = curves[(curves["cell"] == cell) & (curves["seed"] == seed)].sort_values("step")
                ax.plot(part["step"], part[metric], color=cmap(cells.index(cell) % 10),
                        linestyle="-" if seed == min(s for c, s in keys if c == cell) else "--",
                        marker="o", markersize=2.5, linewidth=1.4, label=_label(cell, seed))
            ax.set_title(labels[metric], fontsize=9)
            ax.set_xlabel("rollout step")
            ax.grid(True)
        handles, names = axes[0].get_legend_handles_labels()
        fig.legend(handles, names, loc="lower center", ncol=min(len(names), 5), fontsize=7, frameon=False)
        fig.suptitle("RLVR ablation: per-step curves of every cell (SmolLM2-135M, LoRA, from the recipe's DPO run)",
                     fontsize=10)
        fig.tight_layout(rect=(0, 0.12, 1, 0.95))
    return fig


def plot_accuracy_vs_kl(details):
    """Figure 04: held-out accuracy after training against the final KL, one point per cell and seed."""
    import matplotlib.pyplot as plt

    from tulu_lab.plotting import style_context

    with style_context():
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        cmap = plt.get_cmap("tab10")
        cells = list(dict.fromkeys(details["cell"]))
        for row in details.itertuples():
            ax.scatter(row.final_kl, 100 * row.accuracy_after, color=cmap(cells.index(row.cell) % 10), s=28,
                       label=row.cell)
            ax.annotate(_label(row.cell, row.seed), (row.final_kl, 100 * row.accuracy_after), fontsize=6.5,
                        textcoords="offset points", xytext=(4, 4))
        for index, (start, part) in enumerate(details.groupby("start")):
            level = 100 * part["accuracy_before"].iloc[0]
            ax.axhline(level, color="#666666", linestyle=":", linewidth=1.1)
            # one start's label at the left end of its line, the other's at the right: equal levels stay legible
            ax.annotate(f"{start} checkpoint", (ax.get_xlim()[index % 2], level), fontsize=6.5, color="#666666",
                        textcoords="offset points", xytext=(2 if index % 2 == 0 else -2, 3),
                        ha="left" if index % 2 == 0 else "right")
        handles, names = ax.get_legend_handles_labels()
        unique = dict(zip(names, handles))
        ax.legend(unique.values(), unique.keys(), fontsize=7, frameon=False)
        ax.set_xlabel("KL to the start at the last rollout step (k3, per token)")
        ax.set_ylabel(f"held-out accuracy, % (n = {int(details['n'].iloc[0])}, greedy)")
        ax.set_title("Held-out accuracy vs final KL across the ablation's cells", fontsize=10)
        ax.grid(True)
        fig.tight_layout()
    return fig


def plot_gains(details):
    """Figure 10: each cell's gain over its start checkpoint with Newcombe's 95% interval and McNemar's p."""
    import matplotlib.pyplot as plt

    from tulu_lab.plotting import style_context

    with style_context():
        fig, ax = plt.subplots(figsize=(7.2, 0.45 * len(details) + 1.6))
        order = details.reset_index(drop=True)
        y = list(range(len(order)))[::-1]
        for yi, row in zip(y, order.itertuples()):
            ax.errorbar(row.gain_points, yi, xerr=[[row.gain_points - row.gain_low], [row.gain_high - row.gain_points]],
                        fmt="o", color="#1f77b4" if row.mcnemar_p < 0.05 else "#7f7f7f", capsize=3)
            ax.annotate(f"p = {row.mcnemar_p:.2g}", (row.gain_high, yi), textcoords="offset points", xytext=(5, -3),
                        fontsize=7)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_yticks(y, [f"{r.cell} (seed {r.seed}) vs {r.start}" for r in order.itertuples()], fontsize=7.5)
        ax.set_xlabel("held-out accuracy gain over the start checkpoint, points (95% Newcombe interval)")
        ax.set_title("RLVR ablation: gain per cell (McNemar exact p; blue: p < 0.05)", fontsize=10)
        ax.margins(x=0.25)
        ax.grid(True, axis="x")
        fig.tight_layout()
    return fig


def write_figures(curves, details, directory: Path) -> dict[str, tuple[Path, Path]]:
    """Figures 03, 04 and 10 with their CSVs (``plotting.save_fig``)."""
    import matplotlib.pyplot as plt

    from tulu_lab.plotting import save_fig

    written = {}
    for name, fig, data in ((FIGURE_CURVES, plot_curves(curves), curves),
                            (FIGURE_KL, plot_accuracy_vs_kl(details), details[
                                ["cell", "factor", "value", "seed", "start", "final_kl", "accuracy_before",
                                 "accuracy_after", "n"]]),
                            (FIGURE_SUMMARY, plot_gains(details), details)):
        written[name] = save_fig(fig, name, data=data, figures_dir=directory)
        plt.close(fig)
    return written


def main(argv: list[str] | None = None) -> int:
    """``python -m tulu_lab.ablation [--smoke]``: the whole grid (what ``make ablations`` runs)."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--smoke", action="store_true", help="the smoke recipe and the grid's smoke section")
    parser.add_argument("--grid", default=None, help=f"grid file (default recipes/embedded/{GRID_FILE})")
    args = parser.parse_args(argv)
    smoke = True if args.smoke else None
    started = time.perf_counter()
    recipe = load_recipe(smoke=smoke)
    # a smoke grid's figures stay beside its runs: figures/ holds the full grid's
    figures_dir = ablations_dir(recipe) / "figures" if (smoke or paths.smoke()) else None
    results = run_ablations(load_grid(args.grid, smoke=smoke), recipe, figures_dir=figures_dir)
    print(results["summary"].to_string(index=False))
    print(f"[ablation] wall time {(time.perf_counter() - started) / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["CellSpec", "FACTORS", "Grid", "SUMMARY_COLUMNS", "compare", "curves_table", "heldout_rows",
           "load_grid", "plan_cells", "read_results", "run_ablations", "score_grid", "score_run", "train_grid"]

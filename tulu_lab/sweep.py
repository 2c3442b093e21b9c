"""Ablation sweeps: every cell of a grid x seeds, each in its own folder, resumable, one tidy table.

    df = run_sweep(RLVRConfig.cpu_preset(max_steps=10), {"beta": [0.0, 0.04, 0.1]}, seeds=[1, 2],
                   data=train_rows, eval_data=heldout_rows, output_dir="runs/sweep-beta")
    summarise_sweep(df, "eval/accuracy")      # mean / std / n over seeds of each cell's final value

Grid axes (any mix; values are lists):

    beta, lr (= learning_rate), samples_per_prompt, algorithm ("ppo" | "grpo"), any other RLVRConfig field
    lora_r, lora_alpha, lora_dropout, lora_target_modules (a list of module names, or "all" | "attention" | "mlp")
    reward   "verifiable" (reward_model_weight 0) | "verifiable+rm" (the reward model is added with the
             base config's reward_model_weight, or a reward_model_weight axis; needs ``reward_model``)
    start    a name in ``checkpoints`` ({"sft": folder, "dpo": folder}): the model each cell starts from

A cell's folder is named from its parameters (``beta=0.04_lr=2e-05_seed=1``) and holds one run: the
trainer's ``run.json`` records the run's fingerprint (resolved config, starting model, data, held-out
rows; ``training.run_identity``) and status. A cell whose run finished is skipped next time; an
unfinished one (a crash, a kill, a time limit) resumes from its newest checkpoint. A folder holding a
run of other settings (the base config changed, say) is refused before anything trains, naming what
differs: give the changed sweep an ``output_dir`` of its own. Every cell's configuration is built and
validated before any training starts, so an impossible cell fails at once, not hours into the sweep.

The returned table is tidy: one row per (cell, step) with the grid axes, ``seed``, ``cell``, ``step``,
``episodes``, every logged metric, and ``final`` (True on each cell's last step).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
from pathlib import Path
from typing import Any, Callable, Sequence

from tulu_lab.config import LLAMA_PROJECTIONS, RLVRConfig
from tulu_lab.training import check_run_folder, finished_run, fingerprint

AXIS_ALIASES = {"lr": "learning_rate"}
LORA_AXES = {"lora_r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout", "lora_target_modules": "target_modules"}
SPECIAL_AXES = ("reward", "start")
REWARD_CHOICES = ("verifiable", "verifiable+rm")
TARGET_MODULE_ALIASES = {
    "all": list(LLAMA_PROJECTIONS),
    "attention": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mlp": ["gate_proj", "up_proj", "down_proj"],
}


@dataclasses.dataclass
class Cell:
    """One run of the sweep: grid values + seed, its folder, config and starting model."""

    params: dict[str, Any]
    seed: int
    name: str
    cfg: RLVRConfig
    source: str | None          # what model_loader loads
    use_reward_model: bool

    @property
    def output_dir(self) -> Path:
        return Path(self.cfg.output_dir)

    def identity(self, data: Sequence[dict], eval_data: Sequence[dict] | None) -> dict[str, Any]:
        """What the cell's run is (``training.run_identity``), as ``train_rlvr`` records it."""
        from tulu_lab.training import data_fingerprint, run_identity

        return run_identity(self.cfg, start=self.start, data=data_fingerprint(data),
                            eval_data=data_fingerprint(eval_data) if eval_data is not None else None)

    @property
    def start(self) -> str:
        """The identity of the model the cell starts from (``training.source_fingerprint``)."""
        from tulu_lab.training import source_fingerprint

        return source_fingerprint(self.source) if self.source is not None else "name:None"


# ----------------------------------------------------------------------------------------------
# Building the cells
# ----------------------------------------------------------------------------------------------


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "+".join(_format_value(v) for v in value)
    return str(value)


def cell_name(params: dict[str, Any], seed: int) -> str:
    """``beta=0.04_lr=2e-05_seed=1``: the folder name of a cell (safe characters only)."""
    parts = [f"{axis}={_format_value(value)}" for axis, value in params.items()] + [f"seed={seed}"]
    return re.sub(r"[^A-Za-z0-9_.=+-]", "-", "_".join(parts))


def _apply(base: RLVRConfig, params: dict[str, Any], seed: int, output_dir: Path,
           checkpoints: dict[str, str] | None, default_source: str | None) -> Cell:
    fields = {f.name for f in dataclasses.fields(RLVRConfig)}
    changes: dict[str, Any] = {}
    lora_changes: dict[str, Any] = {}
    use_rm = base.reward_model_weight > 0
    source = default_source
    for axis, value in params.items():
        if axis == "reward":
            if value not in REWARD_CHOICES:
                raise ValueError(f"grid axis 'reward': {value!r} is not one of {list(REWARD_CHOICES)}")
            use_rm = value == "verifiable+rm"
        elif axis == "start":
            if not checkpoints or value not in checkpoints:
                raise ValueError(f"grid axis 'start': {value!r} is not a key of checkpoints "
                                 f"{sorted(checkpoints or {})}; pass checkpoints={{'sft': folder, 'dpo': folder}}")
            source = str(checkpoints[value])
        elif axis in LORA_AXES:
            if base.lora is None:
                raise ValueError(f"grid axis {axis!r} needs a LoRA base config (base_cfg.lora is None)")
            if axis == "lora_target_modules" and isinstance(value, str):
                if value not in TARGET_MODULE_ALIASES:
                    raise ValueError(f"grid axis 'lora_target_modules': {value!r} is not a list of module names "
                                     f"or one of {sorted(TARGET_MODULE_ALIASES)}")
                value = list(TARGET_MODULE_ALIASES[value])
            lora_changes[LORA_AXES[axis]] = value
        elif AXIS_ALIASES.get(axis, axis) in fields:
            if axis == "seed":
                raise ValueError("'seed' is not a grid axis: pass seeds=[...]")
            changes[AXIS_ALIASES.get(axis, axis)] = value
        else:
            raise ValueError(f"unknown grid axis {axis!r}; allowed: {sorted(AXIS_ALIASES)}, {sorted(LORA_AXES)}, "
                             f"{list(SPECIAL_AXES)} or an RLVRConfig field")
    if "reward" in params:
        weight = changes.get("reward_model_weight", base.reward_model_weight)
        if use_rm and weight <= 0:
            raise ValueError("grid value reward='verifiable+rm' needs base_cfg.reward_model_weight > 0 "
                             "(or a reward_model_weight axis): the weight of the reward-model score")
        if not use_rm:
            changes["reward_model_weight"] = 0.0
    if lora_changes:
        changes["lora"] = dataclasses.replace(base.lora, **lora_changes)
    name = cell_name(params, seed)
    changes.update(seed=seed, output_dir=str(output_dir / name), log_path="")
    try:
        cfg = dataclasses.replace(base, **changes)
    except (ValueError, TypeError) as err:
        raise ValueError(f"sweep cell {name}: {err}") from None
    return Cell(params=dict(params), seed=seed, name=name, cfg=cfg, source=source,
                use_reward_model=cfg.reward_model_weight > 0)


def make_cells(base_cfg: RLVRConfig, grid: dict[str, Sequence[Any]], seeds: Sequence[int], output_dir: str | Path,
               *, checkpoints: dict[str, str] | None = None, source: str | None = None) -> list[Cell]:
    """Every (grid point, seed), validated; the cartesian product in the grid's key order, seeds innermost."""
    if not isinstance(grid, dict):
        raise TypeError(f"grid must be a dict of axis -> list of values, got {type(grid).__name__}")
    for axis, values in grid.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) == 0:
            raise ValueError(f"grid axis {axis!r}: expected a non-empty list of values, got {values!r}")
    seeds = list(seeds)
    if not seeds or not all(isinstance(s, int) for s in seeds) or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be a non-empty list of distinct ints, got {seeds!r}")
    axes = list(grid)
    cells = []
    for values in itertools.product(*(grid[a] for a in axes)):
        for seed in seeds:
            cells.append(_apply(base_cfg, dict(zip(axes, values)), seed, Path(output_dir), checkpoints, source))
    names = [c.name for c in cells]
    if len(set(names)) != len(names):
        raise ValueError("two grid cells format to the same folder name; make the grid values distinct")
    return cells


# ----------------------------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------------------------


def _default_loader(source: str):
    from tulu_lab.models import load_model

    return load_model(source, verbose=False)


def _default_train(cfg, model, tokenizer, data, **kwargs):
    from tulu_lab.rlvr import train_rlvr

    return train_rlvr(cfg, model, tokenizer, data, save_merged=False, **kwargs)


def run_sweep(base_cfg: RLVRConfig, grid: dict[str, Sequence[Any]], seeds: Sequence[int] = (1,), *,
              data: Sequence[dict], eval_data: Sequence[dict] | None = None,
              model_loader: Callable[[str], tuple[Any, Any]] | None = None, model: str = "smollm2-135m",
              checkpoints: dict[str, str] | None = None, reward_model: Callable | None = None,
              train_fn: Callable | None = None, output_dir: str | Path = "runs/sweep",
              progress: bool = True):
    """Run every cell of ``grid`` x ``seeds`` not yet finished; return the tidy table of all of them.

    Args:
        base_cfg: the RLVRConfig every cell starts from (its output_dir / log_path are replaced).
        grid: axis -> list of values (see the module docstring).
        seeds: one run per seed per grid point.
        data, eval_data: RLVR rows for training and held-out evaluation (``eval_data`` -> eval/accuracy).
        model_loader: ``source -> (model, tokenizer)``, called afresh for every cell (default:
            ``tulu_lab.models.load_model``). ``source`` is ``checkpoints[start]`` for a "start" axis,
            else ``model``.
        checkpoints: start name -> model folder, for the "start" axis.
        reward_model: ``(prompts, responses) -> list[float]`` for the "verifiable+rm" cells.
        train_fn: ``(cfg, model, tokenizer, data, *, eval_data, reward_model, resume, progress, start) -> dict``;
            default :func:`tulu_lab.rlvr.train_rlvr` (adapters saved, no merged model per cell). It
            records the run in the cell's folder (``training.begin_run`` / ``finish_run``).
        output_dir: the sweep's folder; each cell gets a subfolder.

    Returns:
        A pandas DataFrame, one row per (cell, step); also written to ``output_dir/results.csv``.
    """
    cells = make_cells(base_cfg, grid, seeds, output_dir, checkpoints=checkpoints, source=model)
    if any(c.use_reward_model for c in cells) and reward_model is None:
        raise ValueError("some sweep cells add a reward-model score (reward_model_weight > 0) but no reward_model "
                         "was given")
    loader = model_loader or _default_loader
    train = train_fn or _default_train

    identities = [cell.identity(data, eval_data) for cell in cells]
    for cell, identity in zip(cells, identities):  # a folder of another run fails before anything trains
        check_run_folder(cell.output_dir, identity)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "sweep.json").write_text(json.dumps(
        {"grid": grid, "seeds": list(seeds), "base_cfg": base_cfg.to_dict()}, indent=2, default=str))

    for index, (cell, identity) in enumerate(zip(cells, identities)):
        if finished_run(cell.output_dir, fingerprint(identity)):
            if progress:
                print(f"[sweep] {index + 1}/{len(cells)} {cell.name}: done, skipped", flush=True)
            continue
        if progress:
            print(f"[sweep] {index + 1}/{len(cells)} {cell.name}: training", flush=True)
        cell_model, tokenizer = loader(cell.source)
        summary = train(cell.cfg, cell_model, tokenizer, data, eval_data=eval_data,
                        reward_model=reward_model if cell.use_reward_model else None, resume=True,
                        progress=progress, start=cell.start)
        if (summary or {}).get("stopped_early") and progress:
            print(f"[sweep] {cell.name}: stopped before its last step; the next call continues it", flush=True)
        del cell_model

    table = sweep_table(cells)
    table.to_csv(output_dir / "results.csv", index=False)
    return table


# ----------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------


def sweep_table(cells: Sequence[Cell]):
    """One row per (cell, step): grid axes, seed, cell, step, episodes, metrics..., final."""
    import pandas as pd

    from tulu_lab.rlvr import read_metrics

    rows = []
    axes: list[str] = []
    for cell in cells:
        axes += [a for a in cell.params if a not in axes]
        records = read_metrics(cell.cfg.metrics_path)
        for i, record in enumerate(records):
            values = {a: _format_value(v) if isinstance(v, (list, tuple)) else v for a, v in cell.params.items()}
            rows.append({**values, "seed": cell.seed, "cell": cell.name, **record, "final": i == len(records) - 1})
    leading = axes + ["seed", "cell", "step", "episodes"]
    if not rows:
        return pd.DataFrame(columns=leading + ["final"])
    table = pd.DataFrame(rows)
    rest = [c for c in table.columns if c not in leading]
    return table[leading + rest]


def summarise_sweep(table, metric: str = "eval/accuracy"):
    """Each grid point's final ``metric`` over seeds: mean, std, n (one row per grid point)."""
    if metric not in table.columns:
        raise ValueError(f"metric {metric!r} is not in the table; columns: {list(table.columns)}")
    axes = list(table.columns[:list(table.columns).index("seed")])
    final = table[table["final"]]
    if not axes:
        values = final[metric]
        import pandas as pd
        return pd.DataFrame([{"mean": values.mean(), "std": values.std(), "n": values.count()}])
    return final.groupby(axes, dropna=False)[metric].agg(["mean", "std", "count"]).rename(
        columns={"count": "n"}).reset_index()


__all__ = ["Cell", "cell_name", "make_cells", "run_sweep", "summarise_sweep", "sweep_table"]

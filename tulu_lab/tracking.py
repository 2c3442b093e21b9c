"""Experiment tracking as transformers' ``TrainingArguments.report_to`` does it, fed from the run's metrics.

    SFTConfig(..., report_to="tensorboard")       # <run folder>/tensorboard/ (tensorboard --logdir runs/)
    report_to="wandb" / "trackio"                 # when those packages are installed
    report_to="tensorboard,wandb"                 # several at once; "none" (the default): no tracker

The run's own ``metrics.jsonl`` stays the source of truth: the trainer hands each record to the
trackers after it is written there (non-finite values are left out, as they are nulls in the file),
and :func:`replay_metrics` sends a finished run's file to a backend afterwards (a run trained without
tracking, or a tracker's files deleted). A resumed run tells TensorBoard to drop the events past its
checkpoint (``purge_step``), as ``metrics.jsonl`` drops those lines.
"""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path
from typing import Any, Iterable

REPORT_TO = ("none", "tensorboard", "trackio", "wandb")
TENSORBOARD_DIR = "tensorboard"
# the package each backend needs (torch.utils.tensorboard writes with the tensorboard package)
_PACKAGES = {"tensorboard": "tensorboard", "trackio": "trackio", "wandb": "wandb"}


def parse_report_to(value: str | Iterable[str] | None) -> list[str]:
    """``"none"`` / None -> []; ``"tensorboard"`` or ``"tensorboard,wandb"`` (or a list) -> the backends."""
    if value is None:
        return []
    names = [v.strip() for v in value.split(",")] if isinstance(value, str) else [str(v).strip() for v in value]
    names = [n for n in names if n and n != "none"]
    unknown = [n for n in names if n not in REPORT_TO]
    if unknown:
        raise ValueError(f"report_to: unknown tracker(s) {unknown}; allowed: {list(REPORT_TO)} "
                         f"(several separated by commas)")
    return list(dict.fromkeys(names))


def check_installed(backends: Iterable[str]) -> None:
    """Refuse before training starts when a backend's package is missing (the error says what to install)."""
    for name in backends:
        package = _PACKAGES[name]
        if importlib.util.find_spec(package) is None:
            raise ImportError(f"report_to={name!r} needs the {package!r} package, which is not installed: "
                              f"pip install {package} (or leave report_to='none'; metrics.jsonl is written anyway)")


def _scalars(record: dict[str, Any]) -> dict[str, float]:
    """The record's finite numbers (bools as 0/1 are left out; they are flags, not curves)."""
    out = {}
    for key, value in record.items():
        if key == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            out[key] = float(value)
    return out


class TensorBoardTracker:
    """Scalars to ``<run folder>/tensorboard/`` with torch's SummaryWriter (one tag per metric)."""

    name = "tensorboard"

    def __init__(self, folder: Path, *, run_name: str, config: dict[str, Any], start_step: int):
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(folder) / TENSORBOARD_DIR
        # purge_step: events a resumed run will log again are dropped, as metrics.jsonl drops those lines
        self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=start_step or None)
        if start_step == 0:
            import json
            self.writer.add_text("config", "```\n" + json.dumps(config, indent=2, default=str) + "\n```", 0)

    def log(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, global_step=step)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


class WandbTracker:
    """Weights & Biases: one wandb run per run folder (its id the run's fingerprint, resumed as such)."""

    name = "wandb"

    def __init__(self, folder: Path, *, run_name: str, config: dict[str, Any], start_step: int, key: str = ""):
        import wandb

        self.wandb = wandb
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "tulu-lab"), name=run_name, id=key or None,
                              resume="allow", config=config, dir=str(folder))

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


class TrackioTracker:
    """Trackio (Hugging Face's local-first tracker, wandb-compatible API)."""

    name = "trackio"

    def __init__(self, folder: Path, *, run_name: str, config: dict[str, Any], start_step: int, key: str = ""):
        import trackio

        self.trackio = trackio
        trackio.init(project=os.environ.get("TRACKIO_PROJECT", "tulu-lab"), name=run_name, config=config,
                     resume="allow")

    def log(self, values: dict[str, float], step: int) -> None:
        self.trackio.log(values, step=step)

    def close(self) -> None:
        self.trackio.finish()


_TRACKERS = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker, "trackio": TrackioTracker}


class Trackers:
    """The run's trackers as one: ``log(record)`` sends a metrics record to every one of them."""

    def __init__(self, trackers: list[Any]):
        self.trackers = trackers

    def log(self, record: dict[str, Any]) -> None:
        if not self.trackers:
            return
        values = _scalars(record)
        step = int(record.get("step", 0))
        for tracker in self.trackers:
            tracker.log(values, step)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()
        self.trackers = []

    def __enter__(self) -> Trackers:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_trackers(report_to: str | Iterable[str] | None, folder: str | os.PathLike, *, config: dict[str, Any],
                  start_step: int = 0, key: str = "") -> Trackers:
    """The trackers ``report_to`` names for the run in ``folder`` (none for "none")."""
    backends = parse_report_to(report_to)
    check_installed(backends)
    folder = Path(folder)
    trackers = []
    for name in backends:
        kwargs = {"run_name": folder.name, "config": config, "start_step": start_step}
        if name != "tensorboard":
            kwargs["key"] = key
        trackers.append(_TRACKERS[name](folder, **kwargs))
    return Trackers(trackers)


def replay_metrics(folder: str | os.PathLike, report_to: str = "tensorboard") -> int:
    """Send a run's whole ``metrics.jsonl`` to ``report_to`` (e.g. a run trained without tracking);
    returns the number of records sent. TensorBoard's earlier events of the run are replaced."""
    import shutil

    from tulu_lab.training import MetricsLog, read_run

    folder = Path(folder)
    record = read_run(folder)
    if record is None:
        raise FileNotFoundError(f"{folder} is not a run folder (no run.json)")
    if "tensorboard" in parse_report_to(report_to):
        shutil.rmtree(folder / TENSORBOARD_DIR, ignore_errors=True)
    records = MetricsLog(folder / "metrics.jsonl", enabled=False).read()
    with open_trackers(report_to, folder, config=(record.get("identity") or {}).get("config", {}),
                       key=record.get("fingerprint", "")) as trackers:
        for line in records:
            trackers.log(line)
    return len(records)


def read_tensorboard(folder: str | os.PathLike):
    """The scalars TensorBoard holds for a run folder (tensorboard's EventAccumulator), as a tidy
    DataFrame: step, metric, value (the newest event per step and metric)."""
    import pandas as pd
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log_dir = Path(folder) / TENSORBOARD_DIR
    if not log_dir.is_dir():
        raise FileNotFoundError(f"no TensorBoard events at {log_dir} (train with report_to='tensorboard' or "
                                f"call tracking.replay_metrics)")
    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    rows = [{"step": e.step, "metric": tag, "value": e.value, "wall_time": e.wall_time}
            for tag in accumulator.Tags()["scalars"] for e in accumulator.Scalars(tag)]
    table = pd.DataFrame(rows, columns=["step", "metric", "value", "wall_time"])
    table = table.sort_values(["metric", "step", "wall_time"]).drop_duplicates(["metric", "step"], keep="last")
    return table.drop(columns="wall_time").reset_index(drop=True)


__all__ = ["REPORT_TO", "Trackers", "check_installed", "open_trackers", "parse_report_to", "read_tensorboard",
           "replay_metrics"]

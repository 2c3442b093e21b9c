"""The run ledger: one line per finished, stopped or failed training call, in ``runs/ledger.jsonl``.

    from tulu_lab import ledger
    ledger.read_ledger()                    # every run under runs/, newest record per run folder
    ledger.compare([baseline, variant])     # their per-step metrics, tidy, with what differs
    ledger.rebuild_ledger()                 # the index rewritten from the run folders

Each run folder's ``run.json`` (written by the trainer, :mod:`tulu_lab.training`) is the source of
truth; the ledger is an index over it so that every run of a project can be listed without walking
the folders. The trainer appends a record whenever a run ends (finished, stopped at its time limit,
failed), as one ``write`` on a file opened for appending, so lines of concurrent runs never
interleave. :func:`read_ledger` checks each listed run against its folder and takes the folder's
record where they disagree (a run moved, deleted, or continued by a later call), and
:func:`rebuild_ledger` rewrites the index from the folders alone.

A run folder under ``runs/`` (``$TULU_LAB_RUNS``) is listed in ``runs/ledger.jsonl``; a run written
anywhere else is listed in a ``ledger.jsonl`` beside its folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from tulu_lab import paths

LEDGER_FILE = "ledger.jsonl"
# what identifies a run's state in its record: a ledger line that differs here is out of date
_STATE_FIELDS = ("fingerprint", "status", "step", "wall_time_s")


def ledger_path(folder: str | os.PathLike) -> Path:
    """The ledger that lists the run in ``folder``."""
    folder = Path(folder).resolve()
    root = paths.runs_dir().resolve()
    if folder == root or root in folder.parents:
        return root / LEDGER_FILE
    return folder.parent / LEDGER_FILE


def ledger_record(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The ledger line of the run in ``folder``, from its ``run.json`` (None without one)."""
    from tulu_lab.training import read_run

    folder = Path(folder)
    record = read_run(folder)
    if record is None:
        return None
    identity = record.get("identity") or {}
    return {
        "key": record.get("fingerprint"),
        "name": folder.name,
        "recipe": folder.parent.name,
        "stage": identity.get("stage"),
        "parent": identity.get("start"),
        "status": record.get("status"),
        "step": record.get("step"),
        "total_steps": record.get("total_steps"),
        "wall_time_s": record.get("wall_time_s"),
        "final_metrics": record.get("final_metrics") or {},
        "config": identity.get("config") or {},
        "error": record.get("error"),
        "updated": record.get("updated"),
        "folder": str(folder.resolve()),
    }


def append_run(folder: str | os.PathLike) -> dict[str, Any] | None:
    """Append the run's current record to its ledger (what the trainer calls when a run ends)."""
    line = ledger_record(folder)
    if line is None:
        return None
    path = ledger_path(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(line, default=str, allow_nan=False) + "\n").encode()
    # one write() on an O_APPEND descriptor: concurrent appenders never interleave within a line
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    return line


def _read_lines(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    lines = []
    for number, text in enumerate(path.read_text().splitlines(), 1):
        if not text.strip():
            continue
        try:
            lines.append(json.loads(text))
        except json.JSONDecodeError:  # a line torn by a kill mid-write; the folder still has the truth
            print(f"[tulu_lab] {path}:{number}: unreadable ledger line skipped", flush=True)
    return lines


def run_folders(root: str | os.PathLike | None = None) -> list[Path]:
    """Every folder under ``root`` (default ``runs/``) holding a ``run.json``."""
    from tulu_lab.training import RUN_FILE

    root = Path(root) if root is not None else paths.runs_dir()
    if not root.is_dir():
        return []
    return sorted(p.parent for p in root.rglob(RUN_FILE))


def rebuild_ledger(root: str | os.PathLike | None = None) -> Path:
    """Rewrite ``<root>/ledger.jsonl`` from the run folders under ``root`` (written whole or not at all)."""
    root = Path(root) if root is not None else paths.runs_dir()
    records = [r for r in (ledger_record(f) for f in run_folders(root)) if r is not None]
    records.sort(key=lambda r: (r.get("updated") or "", r["folder"]))
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{LEDGER_FILE}.tmp"
    tmp.write_text("".join(json.dumps(r, default=str, allow_nan=False) + "\n" for r in records))
    os.replace(tmp, root / LEDGER_FILE)
    return root / LEDGER_FILE


def ledger_runs(root: str | os.PathLike | None = None, *, check: bool = True) -> list[dict[str, Any]]:
    """The newest record of every run the ledger lists, in the order they were last written.

    With ``check`` each is compared with its folder's ``run.json``: a run whose folder is gone is
    left out, and one whose folder says otherwise (a later call continued it) is taken from the folder.
    """
    root = Path(root) if root is not None else paths.runs_dir()
    newest: dict[str, dict[str, Any]] = {}
    for line in _read_lines(root / LEDGER_FILE):
        newest.pop(line.get("folder"), None)  # re-inserted: the order is that of the last write
        newest[line.get("folder")] = line
    if not check:
        return list(newest.values())
    out = []
    for folder, line in newest.items():
        current = ledger_record(folder) if folder else None
        if current is None:
            continue
        same = all(current.get(k) == line.get(k) for k in _STATE_FIELDS)
        out.append(line if same else current)
    return out


def read_ledger(root: str | os.PathLike | None = None, *, check: bool = True):
    """:func:`ledger_runs` as a DataFrame, one row per run (config and final metrics as dict columns)."""
    import pandas as pd

    columns = ["key", "name", "recipe", "stage", "parent", "status", "step", "total_steps", "wall_time_s",
               "final_metrics", "config", "error", "updated", "folder"]
    return pd.DataFrame(ledger_runs(root, check=check), columns=columns)


# ----------------------------------------------------------------------------------------------
# Comparing runs
# ----------------------------------------------------------------------------------------------

def _folder_of(run: Any) -> Path:
    """A run folder from a folder, its ``final`` folder, or a ledger record / row."""
    if isinstance(run, dict) or hasattr(run, "get") and not isinstance(run, (str, os.PathLike)):
        run = run.get("folder")
    folder = Path(run)
    if folder.name == "final":
        folder = folder.parent
    return folder


def differing_settings(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each record, the config fields (and start) whose value is not the same in every record."""
    from tulu_lab.training import flatten_config

    flat = [{**flatten_config(r.get("config") or {}), "parent": r.get("parent")} for r in records]
    keys = sorted(set().union(*flat)) if flat else []
    varying = [k for k in keys if len({json.dumps(f.get(k), sort_keys=True, default=str) for f in flat}) > 1]
    return [{k: f.get(k) for k in varying} for f in flat]


def run_label(settings: dict[str, Any], name: str) -> str:
    """``"beta=2.0, learning_rate=0.0001"``: what sets a run apart; its folder name if nothing does."""
    shown = {k: v for k, v in settings.items() if k != "parent"}
    if shown:
        return ", ".join(f"{k}={v}" for k, v in shown.items())
    if settings.get("parent") is not None:
        return f"{name} (from {str(settings['parent']).split('|')[0][:16]})"
    return name


def compare(runs: Iterable[Any], metrics: Iterable[str] | None = None, *, per: str = "step"):
    """The runs' metrics side by side, as a tidy DataFrame.

    ``runs``: run folders (or their ``final`` folders, or ledger records). ``per="step"``: one row per
    run x step x metric from each run's ``metrics.jsonl``; ``per="final"``: one row per run x metric
    from the final metrics in ``run.json``. Columns: ``run`` (a label naming the settings that differ
    between the runs, e.g. ``beta=2.0``), ``name`` (the folder), ``key`` (fingerprint), ``stage``,
    ``status``, ``step`` (per step), ``metric``, ``value``, ``wall_time_s``, and one column per
    differing setting. ``metrics`` limits the metrics (default: every numeric one the runs log).
    """
    import pandas as pd

    from tulu_lab.training import MetricsLog

    if per not in ("step", "final"):
        raise ValueError(f"per must be 'step' or 'final', got {per!r}")
    folders = [_folder_of(r) for r in runs]
    if not folders:
        raise ValueError("compare: no runs given")
    records = []
    for folder in folders:
        record = ledger_record(folder)
        if record is None:
            raise FileNotFoundError(f"compare: {folder} is not a run folder (no run.json)")
        records.append(record)
    settings = differing_settings(records)
    wanted = list(metrics) if metrics is not None else None
    rows = []
    for folder, record, differ in zip(folders, records, settings):
        base = {"run": run_label(differ, record["name"]), "name": record["name"], "key": record["key"],
                "stage": record["stage"], "status": record["status"], "wall_time_s": record["wall_time_s"],
                **{k: v for k, v in differ.items() if k != "parent"}}
        if per == "final":
            items = [(None, record["final_metrics"])]
        else:
            items = [(line.get("step"), line) for line in MetricsLog(folder / "metrics.jsonl", enabled=False).read()]
        for step, values in items:
            for metric, value in values.items():
                if metric == "step" or (wanted is not None and metric not in wanted):
                    continue
                if isinstance(value, bool) or not isinstance(value, (int, float)) and value is not None:
                    continue
                row = {**base, "metric": metric, "value": float("nan") if value is None else float(value)}
                if per == "step":
                    row["step"] = step
                rows.append(row)
    columns = ["run", "name", "key", "stage", "status"] + (["step"] if per == "step" else []) + [
        "metric", "value", "wall_time_s"]
    table = pd.DataFrame(rows)
    if table.empty:
        return pd.DataFrame(columns=columns)
    extra = [c for c in table.columns if c not in columns]
    return table[columns + extra]


__all__ = ["LEDGER_FILE", "append_run", "compare", "differing_settings", "ledger_path", "ledger_record",
           "ledger_runs", "read_ledger", "rebuild_ledger", "run_folders", "run_label"]

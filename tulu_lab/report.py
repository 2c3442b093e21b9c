"""The report card: ``figures/REPORT.md`` written from the runs, never from typed numbers.

    python -m tulu_lab.report                 # after `make reproduce` (which ends by writing it)
    from tulu_lab.report import write_report; write_report()

What it holds: the machine (CPU model, cores, bf16/AMX flags, GPU) and versions (python, torch,
transformers, peft, accelerate, the tulu_lab git commit); each stage's baseline run (its folder, status,
steps, wall time and key settings, from ``run.json``); held-out accuracy per stage with its 95% Wilson
interval and n (``heldout.json`` in each run's folder, scored if missing); the RLVR gain with the
problems it fixed and broke and McNemar's exact p; held-out DPO preference accuracy; the benchmark
table (``figures/ifeval_stages.csv``) and the ablation summary (``figures/ablation_summary.csv``) when
present; every run in the ledger; every figure in ``figures/`` embedded.
"""

from __future__ import annotations

import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tulu_lab import paths

REPORT_FILE = "REPORT.md"
BENCHMARK_TABLE = "ifeval_stages.csv"
ABLATION_TABLE = "ablation_summary.csv"
# the settings shown per stage (those the stage's config has), in this order
KEY_SETTINGS = ("algorithm", "learning_rate", "lr_schedule", "epochs", "max_steps", "per_device_batch",
                "gradient_accumulation", "beta", "loss_type", "prompts_per_step", "samples_per_prompt",
                "temperature", "max_new_tokens", "max_seq_len", "lora.r", "lora.alpha", "precision", "seed")
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


# ----------------------------------------------------------------------------------------------
# Machine and versions
# ----------------------------------------------------------------------------------------------

def machine_info() -> dict[str, Any]:
    """CPU model, logical cores, the threads torch uses, the bf16/AMX flags, GPU (if any)."""
    import torch

    model, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("", platform.processor(), platform.machine()):
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    info = {"cpu": model, "logical cores": os.cpu_count(), "torch threads": torch.get_num_threads(),
            "cpu flags": ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in CPU_FLAGS) if flags else "unknown",
            "platform": platform.platform()}
    if torch.cuda.is_available():
        info["gpu"] = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    return info


def git_commit(root: str | os.PathLike | None = None) -> str:
    """The project's commit (``+ uncommitted changes`` when the tree is dirty), or "unknown"."""
    root = Path(root) if root is not None else paths.project_root()
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + (" + uncommitted changes" if dirty else "")


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for package in ("torch", "transformers", "peft", "accelerate", "trl"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "not installed"
    out["tulu_lab commit"] = git_commit()
    return out


# ----------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------

def _cell(value: Any) -> str:
    if value is None or isinstance(value, float) and math.isnan(value):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: list[dict[str, Any]] | Any, columns: list[str] | None = None) -> str:
    """A GitHub markdown table of dict rows (or a DataFrame)."""
    if hasattr(rows, "to_dict"):
        columns = columns or [str(c) for c in rows.columns]
        rows = rows.to_dict("records")
    if not rows:
        return "(none)\n"
    columns = columns or list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def stage_rows(recipe) -> list[dict[str, Any]]:
    """Each trained stage's baseline run: folder, status, steps, wall time, key settings (from run.json)."""
    from tulu_lab import pipeline

    rows = []
    for stage in pipeline.TRAINED_STAGES:
        record = pipeline.run_record(stage, recipe)
        if record is None:
            continue
        config = _flat((record.get("identity") or {}).get("config") or {})
        settings = ", ".join(f"{k}={config[k]}" for k in KEY_SETTINGS if config.get(k) is not None)
        rows.append({"stage": stage, "run": pipeline.stage_dir(stage, recipe).name, "status": record.get("status"),
                     "steps": f"{record.get('step')}/{record.get('total_steps')}",
                     "wall time (s)": record.get("wall_time_s"), "settings": settings})
    return rows


def heldout_rows(recipe) -> list[dict[str, Any]]:
    """Held-out accuracy per stage with its 95% Wilson interval and n (each run's heldout.json)."""
    from tulu_lab import pipeline
    from tulu_lab.stats import wilson_interval

    rows = []
    for stage in pipeline.STAGES:
        if stage != "instruct" and pipeline._finished_final(stage, recipe) is None:
            continue
        result = pipeline.heldout_results(stage, recipe)
        n, correct = result["n"], sum(bool(c) for c in result["correct"])
        low, high = wilson_interval(correct, n)
        rows.append({"stage": stage, "accuracy": f"{correct / n:.1%}", "95% interval": f"{low:.1%} - {high:.1%}",
                     "correct": correct, "n": n, "format rate": f"{result['format_rate']:.1%}"})
    return rows


def _csv_section(path: Path, title: str, missing: str) -> list[str]:
    import pandas as pd

    if not path.is_file():
        return [f"## {title}\n", f"{missing}\n"]
    return [f"## {title}\n", f"From `{path.name}`.\n", markdown_table(pd.read_csv(path))]


# ----------------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------------

def build_report(recipe=None, figures: str | os.PathLike | None = None,
                 report_dir: str | os.PathLike | None = None) -> str:
    """The report's markdown, from the recipe's runs and the figures folder (images linked relative to
    ``report_dir``, default the figures folder)."""
    from tulu_lab import ledger, pipeline
    from tulu_lab.recipe import load_recipe

    recipe = recipe if recipe is not None else load_recipe()
    figures = Path(figures) if figures is not None else paths.figures_dir()
    out = [f"# tulu-lab report card: recipe `{recipe.name}`\n",
           f"Written by `python -m tulu_lab.report` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} "
           f"from the runs in `{paths.runs_dir()}`; every number below is read from the runs' files "
           f"(`run.json`, `metrics.jsonl`, `heldout.json`) and the tables in `figures/`. Starting model: "
           f"`{recipe.model}` ({recipe.dtype}{', ' + recipe.quant if recipe.quant else ''}).\n"]

    out += ["## Machine and versions\n",
            markdown_table([{"": k, "value": v} for k, v in {**machine_info(), **versions()}.items()])]

    out += ["## Stages\n", "The recipe's baseline run of each stage (`runs/<recipe>/<stage>-<fingerprint>/`).\n",
            markdown_table(stage_rows(recipe))]

    out += ["## Held-out accuracy\n",
            f"Greedy answers to held-out synthetic problems never trained on, judged by the verifier; 95% Wilson "
            f"intervals ({recipe.heldout_max_new_tokens} new tokens; the untrained model on its first "
            f"{recipe.n_test_instruct}).\n", markdown_table(heldout_rows(recipe))]

    if pipeline._finished_final("rlvr", recipe) is not None and pipeline._finished_final("dpo", recipe) is not None:
        gain = pipeline.rlvr_gain("dpo", "rlvr", recipe)
        out += ["## What RLVR changed\n",
                f"On the same {gain['n']} held-out problems: DPO {gain['before']:.1%} -> RLVR {gain['after']:.1%} "
                f"({gain['gain_points']:+.1f} points); {gain['only_after']} problems fixed, {gain['only_before']} "
                f"broken; McNemar exact p = {gain['mcnemar_p']:.3g}.\n"]
    if pipeline._finished_final("dpo", recipe) is not None:
        accuracy = pipeline.heldout_preference_accuracy("dpo", recipe)
        out += ["## DPO preference accuracy\n",
                f"Held-out pairs ranked right by the implicit reward: {accuracy:.1%} of "
                f"{recipe.dpo_heldout_pairs}.\n"]

    out += _csv_section(figures / BENCHMARK_TABLE, "Benchmarks per stage",
                        f"No `{BENCHMARK_TABLE}` in {figures} (written by `benchmarks/ifeval_stages.py`).")
    out += _csv_section(figures / ABLATION_TABLE, "Ablation summary",
                        f"No `{ABLATION_TABLE}` in {figures} (written by notebook 05's ablation).")

    runs = ledger.read_ledger()
    runs = runs[runs["recipe"] == recipe.name] if len(runs) else runs
    if len(runs):
        rows = []
        differ = ledger.differing_settings(runs.to_dict("records"))
        for record, settings in zip(runs.to_dict("records"), differ):
            shown = {k: v for k, v in settings.items() if k != "parent"}
            rows.append({"run": record["name"], "stage": record["stage"], "status": record["status"],
                         "steps": record["step"], "wall time (s)": record["wall_time_s"],
                         "settings that differ": ", ".join(f"{k}={v}" for k, v in shown.items())})
        out += ["## Every run of the recipe\n", "From `runs/ledger.jsonl` (checked against each run's folder).\n",
                markdown_table(rows)]

    images = sorted(figures.glob("*.png"))
    out += ["## Figures\n"]
    where = Path(report_dir) if report_dir is not None else figures
    out += [f"### {p.stem}\n\n![{p.stem}]({Path(os.path.relpath(p, where)).as_posix()})\n" for p in images] or [f"No figures in {figures}.\n"]
    return "\n".join(out)


def write_report(recipe=None, path: str | os.PathLike | None = None) -> Path:
    """Write the report (default ``figures/REPORT.md``, beside the figures it embeds); returns its path."""
    figures = paths.figures_dir()
    path = Path(path) if path is not None else figures / REPORT_FILE
    text = build_report(recipe, figures, report_dir=path.parent)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Write figures/REPORT.md from the runs.")
    parser.add_argument("--out", default=None, help="where to write (default: figures/REPORT.md)")
    args = parser.parse_args(argv)
    print(write_report(path=args.out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

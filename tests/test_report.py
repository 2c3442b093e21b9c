"""figures/REPORT.md is built from the runs: numbers come from run.json / heldout.json / the figure tables,
and change when those files change. Tiny model."""

from __future__ import annotations

import json

import pytest

from tulu_lab import pipeline
from tulu_lab.recipe import load_recipe
from tulu_lab.report import build_report, markdown_table, write_report
from tulu_lab.stats import mcnemar, wilson_interval


@pytest.fixture
def recipe(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TULU_LAB_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("TULU_LAB_FIGURES", str(tmp_path / "figures"))
    return load_recipe(smoke=True).replace(model=str(tiny_model_dir))


def _line(text: str, start: str, section: str = "") -> str:
    """The first line beginning with ``start`` after the heading ``section``."""
    return next(line for line in text[text.index(section):].splitlines() if line.startswith(start))


def test_the_report_is_written_from_the_runs(recipe, tmp_path):
    pipeline.run_rlvr(recipe)  # SFT, DPO, RLVR
    figures = tmp_path / "figures"
    figures.mkdir()
    path = write_report(recipe)
    assert path == figures / "REPORT.md"
    text = path.read_text()
    for section in ("## Machine and versions", "## Stages", "## Held-out accuracy", "## What RLVR changed",
                    "## DPO preference accuracy", "## Every run of the recipe"):
        assert section in text, section
    assert "| torch |" in text and "| tulu_lab commit |" in text and "avx512_bf16" in text

    # each stage's wall time and settings are its run.json's
    for stage in ("sft", "dpo", "rlvr"):
        record = pipeline.run_record(stage, recipe)
        row = _line(text, f"| {stage} | {pipeline.stage_dir(stage, recipe).name} |")
        assert f"| {record['wall_time_s']:.4g} |" in row
        assert f"learning_rate={record['identity']['config']['learning_rate']}" in row

    # held-out accuracy, its Wilson interval and n are the cached verdicts'
    cache = pipeline.stage_dir("rlvr", recipe) / "heldout.json"
    result = json.loads(cache.read_text())
    correct, n = sum(result["correct"]), result["n"]
    low, high = wilson_interval(correct, n)
    assert _line(text, "| rlvr | ", "## Held-out") == (f"| rlvr | {correct / n:.1%} | {low:.1%} - {high:.1%} | {correct} | {n} | "
                                       f"{result['format_rate']:.1%} |")

    # change the runs: the report follows
    flipped = [not c for c in result["correct"]]
    cache.write_text(json.dumps({**result, "correct": flipped, "accuracy": sum(flipped) / n}))
    sft_dir = pipeline.stage_dir("sft", recipe)
    record = json.loads((sft_dir / "run.json").read_text())
    (sft_dir / "run.json").write_text(json.dumps({**record, "wall_time_s": 4321.5}))
    (figures / "ifeval_stages.csv").write_text("stage,metric,value,n\nsft,prompt_loose,0.125,40\n")
    (figures / "ablation_summary.csv").write_text("beta,accuracy,n\n0.04,0.5,60\n")
    (figures / "01_curve.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    text2 = write_report(recipe).read_text()
    assert _line(text2, "| rlvr | ", "## Held-out").startswith(f"| rlvr | {sum(flipped) / n:.1%} |")
    assert "| 4322 |" in _line(text2, "| sft | ")
    dpo = json.loads((pipeline.stage_dir("dpo", recipe) / "heldout.json").read_text())
    p = mcnemar(dpo["correct"], flipped)
    assert f"McNemar exact p = {p:.3g}" in text2
    fixed = sum(1 for a, b in zip(dpo["correct"], flipped) if b and not a)
    assert f"{fixed} problems fixed" in text2
    assert "| sft | prompt_loose | 0.125 | 40 |" in text2 and "| 0.04 | 0.5 | 60 |" in text2
    assert "![01_curve](01_curve.png)" in text2
    assert text2 != text


def test_a_report_before_any_run_says_what_is_missing(recipe, tmp_path):
    text = build_report(recipe, tmp_path / "figures")
    assert "## What RLVR changed" not in text and "No `ifeval_stages.csv`" in text and "No figures" in text


def test_markdown_table_escapes_cells():
    assert markdown_table([{"a": "x|y", "b": 0.123456}]) == "| a | b |\n|---|---|\n| x\\|y | 0.1235 |\n"

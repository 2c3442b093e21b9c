"""The run ledger and comparing runs, on the tiny model: every ended run is listed in runs/ledger.jsonl,
the index is checked against and rebuilt from the run folders, compare() lays runs side by side."""

from __future__ import annotations

import json
import math

import pytest

from tulu_lab import ledger, pipeline
from tulu_lab.plotting import compare_curves, plot_compare, plotted_data
from tulu_lab.recipe import load_recipe
from tulu_lab.training import read_run, update_run


@pytest.fixture
def recipe(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TULU_LAB_RUNS", str(tmp_path / "runs"))
    return load_recipe(smoke=True).replace(model=str(tiny_model_dir))


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_run_appends_its_record_and_the_folder_stays_the_truth(recipe, tmp_path):
    baseline = pipeline.run_dpo(recipe).parent  # trains SFT first
    variant = pipeline.run_dpo(recipe, beta=2.0).parent
    path = tmp_path / "runs" / ledger.LEDGER_FILE
    lines = _lines(path)
    assert [line["stage"] for line in lines] == ["sft", "dpo", "dpo"]
    by_folder = {line["folder"]: line for line in lines}
    for folder in (baseline, variant):
        line, record = by_folder[str(folder.resolve())], read_run(folder)
        assert line["key"] == record["fingerprint"] and line["name"] == folder.name
        assert line["status"] == "finished" and line["step"] == recipe.dpo.max_steps
        assert line["wall_time_s"] == record["wall_time_s"] > 0
        assert line["final_metrics"] == record["final_metrics"] and "loss" in line["final_metrics"]
        assert line["config"] == record["identity"]["config"]
        assert line["recipe"] == "smoke"
    sft = pipeline.run_record("sft", recipe)
    assert by_folder[str(baseline.resolve())]["parent"].startswith(f"run:{sft['fingerprint']}|")
    assert by_folder[str(variant.resolve())]["config"]["beta"] == 2.0

    # a finished run called again trains nothing and appends nothing
    pipeline.run_dpo(recipe)
    assert len(_lines(path)) == 3

    # the ledger never lies: a record the folder contradicts is taken from the folder, a deleted run is dropped
    update_run(variant, status="failed", error="marked by the test")
    listed = {r["folder"]: r for r in ledger.ledger_runs()}
    assert listed[str(variant.resolve())]["status"] == "failed"
    assert ledger.ledger_runs(check=False)[-1]["status"] == "finished"
    import shutil
    shutil.rmtree(variant)
    frame = ledger.read_ledger()
    assert len(frame) == 2 and str(variant.resolve()) not in set(frame["folder"])

    # rebuilt from the folders alone
    path.write_text("garbage\n")
    ledger.rebuild_ledger()
    rebuilt = _lines(path)
    assert {line["folder"] for line in rebuilt} == {str(baseline.resolve()),
                                                     str(pipeline.stage_dir("sft", recipe).resolve())}
    assert all(line["key"] == read_run(line["folder"])["fingerprint"] for line in rebuilt)


def test_a_failed_run_is_listed_with_its_error(tiny, tmp_path, monkeypatch):
    from tulu_lab.config import LoraSettings, SFTConfig
    from tulu_lab.sft import train_sft
    from tulu_lab.training import NonFiniteError

    monkeypatch.setenv("TULU_LAB_RUNS", str(tmp_path / "runs"))
    model, tokenizer = tiny
    rows = [{"messages": [{"role": "user", "content": f"What is {i} + 1?"},
                          {"role": "assistant", "content": f"{i + 1}"}]} for i in range(8)]
    cfg = SFTConfig(output_dir=str(tmp_path / "runs" / "x" / "sft-blowup"), max_steps=2, per_device_batch=2,
                    gradient_accumulation=1, learning_rate=1e30, warmup_ratio=0.0, lr_schedule="constant",
                    precision="fp32", lora=LoraSettings(r=4))
    with pytest.raises(NonFiniteError):
        train_sft(cfg, model, tokenizer, rows, progress=False)
    (line,) = _lines(tmp_path / "runs" / ledger.LEDGER_FILE)
    assert line["status"] == "failed" and "training stopped at step" in line["error"]


def test_a_run_outside_runs_is_listed_beside_its_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TULU_LAB_RUNS", str(tmp_path / "runs"))
    folder = tmp_path / "elsewhere" / "run-a"
    update_run(folder, status="finished", fingerprint="abc", identity={"stage": "sft", "config": {}}, step=1)
    assert ledger.ledger_path(folder) == tmp_path / "elsewhere" / ledger.LEDGER_FILE
    assert ledger.ledger_path(tmp_path / "runs" / "r" / "sft-1") == tmp_path / "runs" / ledger.LEDGER_FILE
    ledger.append_run(folder)
    assert _lines(tmp_path / "elsewhere" / ledger.LEDGER_FILE)[0]["key"] == "abc"


def test_compare_lays_runs_side_by_side(recipe):
    baseline = pipeline.run_dpo(recipe)
    variant = pipeline.run_dpo(recipe, beta=2.0, learning_rate=1e-3)
    table = ledger.compare([baseline, variant.parent])
    steps = recipe.dpo.max_steps
    assert set(table["run"]) == {f"beta={recipe.dpo.beta}, learning_rate={recipe.dpo.learning_rate}",
                                 "beta=2.0, learning_rate=0.001"}
    assert set(table["beta"]) == {recipe.dpo.beta, 2.0}
    for folder in (baseline.parent, variant.parent):
        logged = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
        part = table[(table["name"] == folder.name) & (table["metric"] == "loss")]
        assert part["step"].tolist() == list(range(1, steps + 1))
        assert part["value"].tolist() == pytest.approx([x["loss"] for x in logged])
    # the same run twice, from a ledger record: nothing differs, the folder names it
    again = ledger.compare([ledger.ledger_record(baseline.parent)], metrics=["loss"])
    assert set(again["metric"]) == {"loss"} and set(again["run"]) == {baseline.parent.name}

    final = ledger.compare([baseline, variant], per="final")
    assert "step" not in final.columns
    loss = final[final["metric"] == "loss"].set_index("name")["value"]
    assert loss[variant.parent.name] == pytest.approx(read_run(variant.parent)["final_metrics"]["loss"])

    curves = compare_curves(table)
    assert list(dict.fromkeys(curves["metric"])) == ["loss", "rewards/margins", "rewards/accuracies"]
    fig = plot_compare(table)
    assert len(fig.axes) == 3
    assert len(fig.axes[0].get_lines()) == 2
    drawn = fig.axes[0].get_lines()[1].get_ydata()
    expected = table[(table["name"] == variant.parent.name) & (table["metric"] == "loss")]["value"]
    assert list(drawn) == pytest.approx(expected.tolist())
    assert len(plotted_data(fig)) == len(curves)
    with pytest.raises(ValueError, match="not in the table"):
        compare_curves(table, ["reward"])
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        ledger.compare([baseline.parent.parent])
    assert all(math.isfinite(v) for v in table["value"])

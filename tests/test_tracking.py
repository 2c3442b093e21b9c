"""report_to as transformers' TrainingArguments has it: TensorBoard written from the metrics each run logs,
read back with tensorboard's EventAccumulator; the other backends refuse clearly when not installed."""

from __future__ import annotations

import importlib.util
import json

import pytest

from tulu_lab import pipeline, tracking
from tulu_lab.config import LoraSettings, SFTConfig
from tulu_lab.recipe import load_recipe


def _rows(n=8):
    return [{"messages": [{"role": "user", "content": f"What is {i} + 1?"},
                          {"role": "assistant", "content": f"{i} + 1 = {i + 1}.\n#### {i + 1}"}]} for i in range(n)]


def _metrics(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_tensorboard_receives_every_metric_the_run_writes(tiny, tmp_path):
    from tulu_lab.sft import train_sft

    model, tokenizer = tiny
    out = tmp_path / "sft-tb"
    cfg = SFTConfig(output_dir=str(out), max_steps=3, per_device_batch=2, gradient_accumulation=1,
                    learning_rate=1e-3, precision="fp32", lora=LoraSettings(r=4), report_to="tensorboard")
    train_sft(cfg, model, tokenizer, _rows(), progress=False)
    logged = _metrics(out)
    board = tracking.read_tensorboard(out)
    assert len(logged) == 3
    for record in logged:
        for key, value in record.items():
            if key == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            got = board[(board.metric == key) & (board.step == record["step"])]["value"]
            assert len(got) == 1, (key, record["step"])
            assert got.iloc[0] == pytest.approx(value, rel=1e-6), key  # event files hold float32
    assert set(board.step) == {1, 2, 3}

    # report_to says where metrics go, not what is trained: it is not part of the run's identity
    import dataclasses

    from tulu_lab.training import fingerprint, run_identity
    quiet = dataclasses.replace(cfg, report_to="none")
    assert fingerprint(run_identity(quiet, start="x", data="y")) == fingerprint(run_identity(cfg, start="x", data="y"))


def test_replay_sends_a_finished_runs_metrics(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TULU_LAB_RUNS", str(tmp_path / "runs"))
    recipe = load_recipe(smoke=True).replace(model=str(tiny_model_dir))
    folder = pipeline.run_sft(recipe).parent  # report_to "none": no events
    assert not (folder / tracking.TENSORBOARD_DIR).exists()
    assert tracking.replay_metrics(folder) == recipe.sft.max_steps
    board = tracking.read_tensorboard(folder)
    loss = board[board.metric == "loss"].sort_values("step")["value"].tolist()
    assert loss == pytest.approx([r["loss"] for r in _metrics(folder)], rel=1e-6)
    # replayed twice: still one value per step (the earlier events are replaced)
    tracking.replay_metrics(folder)
    assert len(tracking.read_tensorboard(folder).query("metric == 'loss'")) == recipe.sft.max_steps


def test_report_to_is_checked():
    assert tracking.parse_report_to("none") == [] and tracking.parse_report_to(None) == []
    assert tracking.parse_report_to("tensorboard, wandb") == ["tensorboard", "wandb"]
    with pytest.raises(ValueError, match=r"SFTConfig.report_to: unknown tracker\(s\) \['tensorbord'\]"):
        SFTConfig(report_to="tensorbord")
    for name in ("wandb", "trackio"):
        if importlib.util.find_spec(name) is None:
            with pytest.raises(ImportError, match=f"report_to='{name}' needs the '{name}' package"):
                tracking.open_trackers(name, "unused", config={})


def test_a_missing_tracker_refuses_before_training(tiny, tmp_path):
    from tulu_lab.sft import train_sft

    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    model, tokenizer = tiny
    out = tmp_path / "sft-wandb"
    cfg = SFTConfig(output_dir=str(out), max_steps=1, per_device_batch=2, gradient_accumulation=1,
                    precision="fp32", lora=LoraSettings(r=4), report_to="wandb")
    with pytest.raises(ImportError, match="pip install wandb"):
        train_sft(cfg, model, tokenizer, _rows(), progress=False)
    assert not out.exists()

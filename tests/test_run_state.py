"""One run state: a run folder belongs to one fingerprint; variants, starts and repeats are runs of their
own; a trainer never resumes, overwrites or deletes another run's checkpoints; NaN stops a run cleanly.
Tiny model throughout."""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tulu_lab import pipeline
from tulu_lab.config import LoraSettings, RLVRConfig, SFTConfig
from tulu_lab.recipe import load_recipe
from tulu_lab.training import NonFiniteError, RunMismatchError, read_run

ROOT = Path(__file__).resolve().parents[1]


def _files(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _strict_jsonl(path: Path) -> list[dict]:
    def no_constant(name):
        raise ValueError(f"{path}: bare {name} in JSON")

    return [json.loads(line, parse_constant=no_constant) for line in path.read_text().splitlines()]


@pytest.fixture
def recipe(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TULU_LAB_RUNS", str(tmp_path / "runs"))
    return load_recipe(smoke=True).replace(model=str(tiny_model_dir))


# ----------------------------------------------------------------------------------------------
# The pipeline's wrong-checkpoint cases
# ----------------------------------------------------------------------------------------------

def test_a_changed_override_is_a_run_of_its_own(recipe):
    baseline = pipeline.run_dpo(recipe)
    before = _files(baseline.parent)
    variant = pipeline.run_dpo(recipe, beta=2.0)
    assert variant.parent != baseline.parent
    assert read_run(variant.parent)["identity"]["config"]["beta"] == 2.0
    assert read_run(baseline.parent)["identity"]["config"]["beta"] == recipe.dpo.beta
    assert _files(baseline.parent) == before
    assert pipeline.run_dpo(recipe) == baseline  # the baseline is still the default run
    assert pipeline.run_dpo(recipe, beta=2.0) == variant


def test_a_changed_start_is_a_run_of_its_own(recipe):
    from_sft = pipeline.run_rlvr(recipe, start="sft")
    before = _files(from_sft.parent)
    from_dpo = pipeline.run_rlvr(recipe)
    assert from_dpo.parent != from_sft.parent
    sft, dpo = pipeline.run_record("sft", recipe), pipeline.run_record("dpo", recipe)
    assert read_run(from_sft.parent)["identity"]["start"].startswith(f"run:{sft['fingerprint']}|")
    assert read_run(from_dpo.parent)["identity"]["start"].startswith(f"run:{dpo['fingerprint']}|")
    assert _files(from_sft.parent) == before
    assert pipeline.stage_dir("rlvr", recipe) == from_dpo.parent


def test_force_trains_a_repeat_beside_the_run(recipe):
    first = pipeline.run_sft(recipe)
    before = _files(first.parent)
    again = pipeline.run_sft(recipe, force=True)
    assert again.parent != first.parent and again.parent.is_dir()
    assert read_run(again.parent)["identity"]["start"].endswith("|repeat=1")
    assert _files(first.parent) == before
    assert pipeline.run_sft(recipe) == first  # downstream stages still start from the first run
    third = pipeline.run_sft(recipe, force=True)
    assert third.parent not in (first.parent, again.parent)


# ----------------------------------------------------------------------------------------------
# The trainer's own guard: one folder, one run
# ----------------------------------------------------------------------------------------------

def _rows(n=8):
    return [{"messages": [{"role": "user", "content": f"What is {a} + 3?"},
                          {"role": "assistant", "content": f"{a} + 3 = {a + 3}.\n#### {a + 3}"}]} for a in range(n)]


def _sft_cfg(output_dir, **overrides):
    values = dict(output_dir=str(output_dir), seed=3, learning_rate=5e-3, max_steps=4, per_device_batch=2,
                  gradient_accumulation=1, max_seq_len=48, precision="fp32", lora=LoraSettings(r=4, alpha=8),
                  checkpoint_every=1)
    return SFTConfig(**{**values, **overrides})


def test_train_sft_refuses_a_folder_of_another_config_or_data_and_deletes_nothing(tiny, tmp_path):
    from tulu_lab.sft import train_sft

    model, tok = tiny
    out = tmp_path / "run"
    train_sft(_sft_cfg(out), copy.deepcopy(model), tok, _rows(), progress=False)
    first = read_run(out)
    assert first["status"] == "finished" and first["step"] == 4
    before = _files(out)
    with pytest.raises(RunMismatchError, match=r"config\.learning_rate: 0\.005 \(recorded\) != 0\.002 \(now\)") as err:
        train_sft(_sft_cfg(out, learning_rate=2e-3), copy.deepcopy(model), tok, _rows(), progress=False)
    assert first["fingerprint"] in str(err.value)  # both fingerprints are named
    with pytest.raises(RunMismatchError, match=r"data: "):
        train_sft(_sft_cfg(out), copy.deepcopy(model), tok, _rows(10), progress=False)
    with pytest.raises(RunMismatchError, match="learning_rate"):  # resume=False deletes nothing either
        train_sft(_sft_cfg(out, learning_rate=2e-3), copy.deepcopy(model), tok, _rows(), resume=False, progress=False)
    other_model = copy.deepcopy(model)
    with __import__("torch").no_grad():
        next(other_model.parameters()).add_(0.01)
    with pytest.raises(RunMismatchError, match=r"start: "):
        train_sft(_sft_cfg(out), other_model, tok, _rows(), progress=False)
    assert _files(out) == before
    # where it writes and how often it checkpoints are not part of the run: the same run resumes
    train_sft(_sft_cfg(out, checkpoint_every=2), copy.deepcopy(model), tok, _rows(), progress=False)
    assert read_run(out)["fingerprint"] == first["fingerprint"]


def test_resume_false_restarts_the_same_run_and_a_folder_without_record_is_refused(tiny, tmp_path):
    from tulu_lab.sft import train_sft

    model, tok = tiny
    out = tmp_path / "run"
    train_sft(_sft_cfg(out), copy.deepcopy(model), tok, _rows(), progress=False)
    again = train_sft(_sft_cfg(out), copy.deepcopy(model), tok, _rows(), resume=False, progress=False)
    assert again["start_step"] == 0 and len(_strict_jsonl(out / "metrics.jsonl")) == 4

    legacy = tmp_path / "legacy"
    (legacy / "checkpoint-2").mkdir(parents=True)
    (legacy / "checkpoint-2" / "step.json").write_text('{"step": 2}')
    with pytest.raises(RunMismatchError, match="no run.json"):
        train_sft(_sft_cfg(legacy), copy.deepcopy(model), tok, _rows(), resume=False, progress=False)
    assert (legacy / "checkpoint-2" / "step.json").is_file()


# ----------------------------------------------------------------------------------------------
# Numerical guard
# ----------------------------------------------------------------------------------------------

def test_a_blow_up_stops_sft_with_the_step_value_and_last_good_checkpoint(tiny, tmp_path):
    from tulu_lab.sft import train_sft

    model, tok = tiny
    out = tmp_path / "nan"
    # an infinite learning rate is refused by the config; a huge finite one blows the weights up in one step
    with pytest.raises(NonFiniteError) as err:
        train_sft(_sft_cfg(out, learning_rate=1e30, warmup_ratio=0.0, lr_schedule="constant"),
                  copy.deepcopy(model), tok, _rows(), progress=False)
    message = str(err.value)
    assert "step 2: loss = nan" in message and "Last good checkpoint: " in message and "checkpoint-1" in message
    assert not (out / "final").exists()
    records = _strict_jsonl(out / "metrics.jsonl")  # valid JSON: no bare NaN or Infinity
    assert [r["loss"] is None for r in records] == [False, True]
    record = read_run(out)
    assert record["status"] == "failed" and "step 2" in record["error"]

    # a loss that turns NaN after a good checkpoint names that checkpoint
    out = tmp_path / "later"
    calls = {"n": 0}

    def poison(module, args, output):
        calls["n"] += 1
        if calls["n"] > 2:  # steps 1 and 2 are fine (one micro-batch each), step 3 is not
            output.logits = output.logits * float("nan")
        return output

    bad = copy.deepcopy(model)
    bad.register_forward_hook(poison)
    with pytest.raises(NonFiniteError, match=r"step 3: loss = nan\. Last good checkpoint: .*checkpoint-2"):
        train_sft(_sft_cfg(out), bad, tok, _rows(), progress=False)
    assert not (out / "final").exists()
    assert [r["loss"] is None for r in _strict_jsonl(out / "metrics.jsonl")] == [False, False, True]


def test_a_non_finite_loss_stops_rlvr(tiny, tmp_path):
    from tulu_lab.data.synthetic import generate_word_problems, rlvr_row
    from tulu_lab.rlvr import train_rlvr

    model, tok = tiny
    rows = [rlvr_row(p) for p in generate_word_problems(8, seed=1)]
    cfg = RLVRConfig.cpu_preset(output_dir=str(tmp_path / "rl"), max_steps=3, checkpoint_every=1, max_new_tokens=5,
                                prompts_per_step=2, samples_per_prompt=2, per_device_batch=2, precision="fp32",
                                lora=LoraSettings(r=2, alpha=4), eval_every=0, reward_model_weight=0.5,
                                lr_schedule="constant")

    def poison(module, args, output):  # the update's pass (with gradients) gives NaN hidden states
        return output * float("nan") if torch.is_grad_enabled() else output

    bad = copy.deepcopy(model)
    bad.model.norm.register_forward_hook(poison)
    with pytest.raises(NonFiniteError, match="step 1"):
        train_rlvr(cfg, bad, tok, rows, reward_model=lambda p, r: [0.1 * len(x) for x in r],
                   progress=False, save_merged=False)
    assert not (tmp_path / "rl" / "final").exists() and read_run(tmp_path / "rl")["status"] == "failed"
    _strict_jsonl(tmp_path / "rl" / "metrics.jsonl")


# ----------------------------------------------------------------------------------------------
# The command line
# ----------------------------------------------------------------------------------------------

def test_the_cli_trains_a_variant_into_its_own_run_folder(tiny_model_dir, tmp_path):
    env = {**os.environ, "TULU_LAB_RUNS": str(tmp_path / "runs"), "TULU_LAB_SMOKE": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "tulu_lab.train", str(ROOT / "recipes" / "embedded" / "rlvr.yaml"),
               "--beta", "0.05", "--recipe.model", str(tiny_model_dir)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    final = Path(done.stdout.strip().splitlines()[-1].split(": ")[-1])
    record = read_run(final.parent)
    assert final.parent.parent == tmp_path / "runs" / "smoke" and final.parent.name.startswith("rlvr-")
    assert record["identity"]["config"]["beta"] == 0.05 and record["status"] in ("finished", "stopped")
    recipe = load_recipe(ROOT / "recipes" / "embedded", smoke=True).replace(model=str(tiny_model_dir))
    os.environ["TULU_LAB_RUNS"] = str(tmp_path / "runs")
    try:
        assert pipeline.stage_dir("rlvr", recipe) != final.parent  # the baseline's folder is another
        assert pipeline.stage_dir("rlvr", recipe.with_stage("rlvr", beta=0.05)) == final.parent
    finally:
        del os.environ["TULU_LAB_RUNS"]

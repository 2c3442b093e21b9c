"""The embedded recipe's stage functions end to end, in the smoke setting, on the tiny model.

The base model is swapped for the tiny random Llama so the whole chain (SFT -> DPO -> RLVR, held-out
tables, McNemar, the ablation sweep) runs in seconds; the embedded model takes the same path in the
notebook smoke tests.
"""

import json

import pytest

from tulu_lab import pipeline


@pytest.fixture
def recipe(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TULU_LAB_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("TULU_LAB_SMOKE", "1")
    monkeypatch.setattr(pipeline, "BASE_MODEL", str(tiny_model_dir))
    return tmp_path / "runs"


def test_stages_chain_and_are_not_retrained(recipe):
    rlvr_dir = pipeline.run_rlvr()  # trains SFT and DPO first
    for stage in ("sft", "dpo", "rlvr"):
        folder = recipe / "smoke" / stage
        assert (folder / "final" / "config.json").is_file(), stage
        assert json.loads((folder / "recipe.json").read_text())["sft_steps"] == pipeline.SMOKE.sft_steps
        assert json.loads((folder / "wall_time.json").read_text())["seconds"] > 0
    assert rlvr_dir == recipe / "smoke" / "rlvr" / "final"
    assert set(pipeline.stage_seconds()) == {"sft", "dpo", "rlvr"}

    # every stage's metrics are readable, one line per step
    assert len(pipeline.read_metrics("sft")) == pipeline.SMOKE.sft_steps
    assert len(pipeline.read_metrics("rlvr")) == pipeline.SMOKE.rlvr_steps

    # a second call finds the finished stage and trains nothing
    stamp = (recipe / "smoke" / "sft" / "wall_time.json").stat().st_mtime_ns
    assert pipeline.run_sft() == recipe / "smoke" / "sft" / "final"
    assert (recipe / "smoke" / "sft" / "wall_time.json").stat().st_mtime_ns == stamp


def test_a_changed_setting_invalidates_that_stage_and_the_ones_after(recipe, monkeypatch):
    import dataclasses

    pipeline.run_rlvr()
    monkeypatch.setattr(pipeline, "SMOKE", dataclasses.replace(pipeline.SMOKE, rlvr_lr=1e-5))
    assert pipeline._finished("sft", None) and pipeline._finished("dpo", None)
    assert pipeline._finished("rlvr", None) is None
    monkeypatch.setattr(pipeline, "SMOKE", dataclasses.replace(pipeline.SMOKE, dpo_steps=3))
    assert pipeline._finished("sft", None)
    assert pipeline._finished("dpo", None) is None and pipeline._finished("rlvr", None) is None


def test_heldout_measurements(recipe):
    pipeline.run_dpo()
    table = pipeline.heldout_table(stages=("sft", "dpo", "rlvr"))  # rlvr not run: left out
    assert set(table.stage) == {"sft", "dpo"}
    assert set(table.metric) == {"accuracy", "format_rate"}
    assert table.value.between(0, 1).all() and (table.n == pipeline.SMOKE.n_test).all()
    cached = json.loads((recipe / "smoke" / "sft" / "heldout.json").read_text())
    assert len(cached["correct"]) == pipeline.SMOKE.n_test

    accuracy = pipeline.heldout_preference_accuracy("dpo")
    assert 0.0 <= accuracy <= 1.0

    gain = pipeline.rlvr_gain("sft", "dpo")
    assert gain["n"] == pipeline.SMOKE.n_test and 0.0 <= gain["mcnemar_p"] <= 1.0
    assert gain["gain_points"] == pytest.approx(100 * (gain["after"] - gain["before"]))


def test_unfinished_stage_is_named(recipe):
    with pytest.raises(FileNotFoundError, match="stage 'dpo' has not been run"):
        pipeline.load_stage("dpo")


def test_data_splits_are_disjoint():
    data = pipeline.embedded_data(smoke=True)
    train = {p.key for p in data["train_problems"]}
    test = {p.key for p in data["test_problems"]}
    assert not train & test
    assert len(data["test_rlvr"]) == pipeline.SMOKE.n_test
    prompts = {r["messages"][0]["content"] for r in data["rlvr"]}
    assert not prompts & {r["messages"][0]["content"] for r in data["test_rlvr"]}


def test_ablation_sweep_runs_every_cell(recipe):
    table = pipeline.run_ablation(betas=(0.0, 0.04), seeds=(1,), steps=1)
    final = table[table["final"].astype(bool)]
    assert sorted(final["beta"].tolist()) == [0.0, 0.04]
    assert final["eval/accuracy"].notna().all()


def test_instruct_baseline_scores_its_own_count_and_a_stale_cache_is_redone(recipe):
    result = pipeline.heldout_results("instruct")
    assert result["n"] == len(result["correct"]) == pipeline.SMOKE.n_test_instruct
    cache = recipe / "smoke" / "instruct" / "heldout.json"
    stale = {**result, "n": pipeline.SMOKE.n_test, "correct": [False] * pipeline.SMOKE.n_test}
    cache.write_text(json.dumps(stale))  # scored on another count of problems: not reused
    assert pipeline.heldout_results("instruct")["n"] == pipeline.SMOKE.n_test_instruct


def test_lora_settings_belong_to_the_stage_marker(recipe, monkeypatch):
    import functools

    from tulu_lab import config

    pipeline.run_sft()
    assert pipeline._finished("sft", None)
    monkeypatch.setattr(config, "LoraSettings", functools.partial(config.LoraSettings, dropout=0.1))
    assert pipeline._finished("sft", None) is None


def test_checkpoints_of_a_run_with_other_settings_are_not_resumed(recipe, monkeypatch):
    """An interrupted stage resumes only from checkpoints written with its current settings; after a
    settings change (pipeline.configure, or an edited RecipeSettings) it starts afresh."""
    assert pipeline._may_resume("rlvr", smoke=True) is False          # nothing started yet
    assert pipeline._may_resume("rlvr", smoke=True) is True           # same settings: resume
    monkeypatch.setattr(pipeline, "SMOKE", pipeline.replace(pipeline.SMOKE, rlvr_lr=1e-2))
    assert pipeline._may_resume("rlvr", smoke=True) is False          # RLVR settings changed
    assert pipeline._may_resume("sft", smoke=True) is False and pipeline._may_resume("sft", smoke=True) is True
    monkeypatch.setattr(pipeline, "SMOKE", pipeline.replace(pipeline.SMOKE, rlvr_minutes=1.0))
    assert pipeline._may_resume("sft", smoke=True) is True            # not an SFT setting


def test_configure_changes_the_full_recipe_only(monkeypatch):
    monkeypatch.setattr(pipeline, "FULL", pipeline.FULL)  # restored after the test
    before = pipeline.FULL
    changed = pipeline.configure(rlvr_minutes=20, rlvr_steps=32)
    assert pipeline.settings(smoke=False) is changed and changed.rlvr_minutes == 20 and changed.rlvr_steps == 32
    assert changed.sft_steps == before.sft_steps and pipeline.settings(smoke=True) is pipeline.SMOKE
    assert pipeline.rlvr_config(smoke=False).max_steps == 32
    with pytest.raises(TypeError):
        pipeline.configure(rlvr_minuets=20)

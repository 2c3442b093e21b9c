"""The recipe's stage functions end to end, in the smoke setting, on the tiny model.

The recipe's base model is swapped for the tiny random Llama so the whole chain (SFT -> DPO -> RLVR,
held-out tables, McNemar, the ablation sweep) runs in seconds; the embedded model takes the same path
in the notebook smoke tests. The wrong-checkpoint cases (variants, starts, force) are in
tests/test_run_state.py.
"""

import json

import pytest

from tulu_lab import pipeline
from tulu_lab.config import LoraSettings
from tulu_lab.recipe import load_recipe


@pytest.fixture
def recipe(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TULU_LAB_RUNS", str(tmp_path / "runs"))
    return load_recipe(smoke=True).replace(model=str(tiny_model_dir))


def test_stages_chain_and_are_not_retrained(recipe, tmp_path):
    rlvr_dir = pipeline.run_rlvr(recipe)  # trains SFT and DPO first
    for stage in ("sft", "dpo", "rlvr"):
        folder = pipeline.stage_dir(stage, recipe)
        assert folder.parent == tmp_path / "runs" / "smoke" and folder.name.startswith(f"{stage}-")
        assert (folder / "final" / "config.json").is_file(), stage
        record = json.loads((folder / "run.json").read_text())
        assert record["identity"]["config"]["max_steps"] == recipe.stage(stage).max_steps
        assert record["identity"]["config"]["precision"] == "fp32"
        assert record["status"] in ("finished", "stopped") and record["wall_time_s"] > 0
    assert rlvr_dir == pipeline.stage_dir("rlvr", recipe) / "final"
    assert set(pipeline.stage_seconds(recipe)) == {"sft", "dpo", "rlvr"}
    # each stage's record names the run it started from
    sft, dpo = (pipeline.run_record(s, recipe) for s in ("sft", "dpo"))
    assert dpo["identity"]["start"].startswith(f"run:{sft['fingerprint']}|")

    # every stage's metrics are readable, one line per step
    assert len(pipeline.read_metrics("sft", recipe)) == recipe.sft.max_steps
    assert len(pipeline.read_metrics("rlvr", recipe)) == recipe.rlvr.max_steps

    # a second call finds the finished run and trains nothing
    stamp = (pipeline.stage_dir("sft", recipe) / "run.json").stat().st_mtime_ns
    assert pipeline.run_sft(recipe) == pipeline.stage_dir("sft", recipe) / "final"
    assert (pipeline.stage_dir("sft", recipe) / "run.json").stat().st_mtime_ns == stamp


def test_a_changed_setting_is_another_run_of_that_stage_and_the_ones_after(recipe):
    folders = {s: pipeline.stage_dir(s, recipe) for s in ("sft", "dpo", "rlvr")}
    lr = {s: pipeline.stage_dir(s, recipe.with_stage("rlvr", learning_rate=1e-5)) for s in folders}
    assert lr["sft"] == folders["sft"] and lr["dpo"] == folders["dpo"] and lr["rlvr"] != folders["rlvr"]
    steps = {s: pipeline.stage_dir(s, recipe.with_stage("dpo", max_steps=3)) for s in folders}
    assert steps["sft"] == folders["sft"] and steps["dpo"] != folders["dpo"] and steps["rlvr"] != folders["rlvr"]
    lora = pipeline.stage_dir("sft", recipe.with_stage("sft", lora=LoraSettings(dropout=0.1)))
    assert lora != folders["sft"]
    data = {s: pipeline.stage_dir(s, recipe.replace(n_train=96)) for s in folders}
    assert all(data[s] != folders[s] for s in folders)
    # where a run writes, and how often it checkpoints, is not what it trains
    assert pipeline.stage_dir("sft", recipe.with_stage("sft", checkpoint_every=2)) == folders["sft"]


def test_heldout_measurements(recipe):
    pipeline.run_dpo(recipe)
    table = pipeline.heldout_table(stages=("sft", "dpo", "rlvr"), recipe=recipe)  # rlvr not run: left out
    assert set(table.stage) == {"sft", "dpo"}
    assert set(table.metric) == {"accuracy", "format_rate"}
    assert table.value.between(0, 1).all() and (table.n == recipe.n_test).all()
    cached = json.loads((pipeline.stage_dir("sft", recipe) / "heldout.json").read_text())
    assert len(cached["correct"]) == recipe.n_test

    accuracy = pipeline.heldout_preference_accuracy("dpo", recipe)
    assert 0.0 <= accuracy <= 1.0

    gain = pipeline.rlvr_gain("sft", "dpo", recipe)
    assert gain["n"] == recipe.n_test and 0.0 <= gain["mcnemar_p"] <= 1.0
    assert gain["gain_points"] == pytest.approx(100 * (gain["after"] - gain["before"]))


def test_unfinished_stage_is_named(recipe):
    with pytest.raises(FileNotFoundError, match="stage 'dpo' has not been run"):
        pipeline.load_stage("dpo", recipe)


def test_data_splits_are_disjoint():
    recipe = load_recipe(smoke=True)
    data = pipeline.embedded_data(recipe)
    train = {p.key for p in data["train_problems"]}
    test = {p.key for p in data["test_problems"]}
    assert not train & test
    assert len(data["test_rlvr"]) == recipe.n_test
    prompts = {r["messages"][0]["content"] for r in data["rlvr"]}
    assert not prompts & {r["messages"][0]["content"] for r in data["test_rlvr"]}


def test_ablation_sweep_runs_every_cell(recipe):
    table = pipeline.run_ablation(recipe, betas=(0.0, 0.04), seeds=(1,), steps=1)
    final = table[table["final"].astype(bool)]
    assert sorted(final["beta"].tolist()) == [0.0, 0.04]
    assert final["eval/accuracy"].notna().all()
    assert pipeline.stage_dir("sweep", recipe) != pipeline.stage_dir("sweep", recipe.with_stage("rlvr", beta=0.1))


def test_instruct_baseline_scores_its_own_count_and_a_stale_cache_is_redone(recipe):
    result = pipeline.heldout_results("instruct", recipe)
    assert result["n"] == len(result["correct"]) == recipe.n_test_instruct
    cache = pipeline.stage_dir("instruct", recipe) / "heldout.json"
    stale = {**result, "key": "other weights or settings", "n": recipe.n_test, "correct": [False] * recipe.n_test}
    cache.write_text(json.dumps(stale))  # scored on other weights or settings: not reused
    assert pipeline.heldout_results("instruct", recipe)["n"] == recipe.n_test_instruct
    longer = recipe.replace(heldout_max_new_tokens=recipe.heldout_max_new_tokens + 8)
    assert pipeline.heldout_results("instruct", longer)["max_new_tokens"] == recipe.heldout_max_new_tokens + 8


def test_no_module_level_settings_remain():
    """The recipe is data passed around: the pipeline has no settings of its own to rebind."""
    assert not hasattr(pipeline, "configure") and not hasattr(pipeline, "FULL") and not hasattr(pipeline, "SMOKE")
    full, smoke = load_recipe(smoke=False), load_recipe(smoke=True)
    assert full.name == "recipe" and smoke.name == "smoke"
    assert full.dtype == "fp32" and all(full.stage(s).precision == "fp32" for s in ("sft", "dpo", "rlvr"))
    with pytest.raises(TypeError, match="rlvr_minuets"):
        full.with_stage("rlvr", rlvr_minuets=20)


def test_notebook_parameters_and_a_run_folder_as_parent(recipe):
    import dataclasses

    from tulu_lab.training import read_run

    same, overrides = pipeline.stage_settings("dpo", recipe, beta=None, learning_rate=None, lora_r=None, model=None)
    assert same == recipe and overrides == {}
    _, overrides = pipeline.stage_settings("dpo", recipe, beta=2.0, lora_r=4, seed=None,
                                           learning_rate=recipe.dpo.learning_rate)
    assert overrides == {"beta": 2.0, "lora": dataclasses.replace(recipe.dpo.lora, r=4)}
    with pytest.raises(TypeError, match=r"DPOConfig has no field\(s\) \['betta'\]"):
        pipeline.stage_settings("dpo", recipe, betta=1.0)
    quantised, _ = pipeline.stage_settings("sft", recipe, model="some/hub-id", quant="nf4")
    assert quantised.model == "some/hub-id" and quantised.quant == "nf4"
    plan = pipeline._plan("sft", quantised)
    assert plan.cfg.lora.quantize_4bit and "quant=nf4" in plan.start  # QLoRA: a run of its own
    with pytest.raises(ValueError, match="quant must be one of"):
        recipe.replace(quant="nf3")

    # the baseline's folder as parent is the baseline's run; another run's folder starts a run of its own
    sft = pipeline.run_sft(recipe).parent
    other_sft = pipeline.run_sft(recipe, learning_rate=2 * recipe.sft.learning_rate).parent
    assert other_sft != sft
    assert pipeline._plan("dpo", recipe, start=sft).folder == pipeline.stage_dir("dpo", recipe)
    assert pipeline._plan("dpo", recipe, start=str(sft / "final")).folder == pipeline.stage_dir("dpo", recipe)
    dpo = pipeline.run_dpo(recipe, parent=other_sft)
    assert dpo.parent != pipeline.stage_dir("dpo", recipe)
    assert read_run(dpo.parent)["identity"]["start"].startswith(f"run:{read_run(other_sft)['fingerprint']}|")
    assert not pipeline.stage_dir("dpo", recipe).exists()  # the baseline DPO was not trained for it
    with pytest.raises(ValueError, match="is a dpo run; a dpo run starts from a sft run"):
        pipeline.run_dpo(recipe, parent=dpo)
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        pipeline.run_dpo(recipe, parent=sft.parent)
    assert pipeline.rlvr_config(recipe, parent=dpo).output_dir != pipeline.rlvr_config(recipe).output_dir

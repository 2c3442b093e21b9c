"""Recipes as data: the embedded recipe's YAML files, the smoke overlay, errors that name the file."""

from pathlib import Path

import pytest

from tulu_lab.config import DPOConfig, RLVRConfig, SFTConfig, load_config
from tulu_lab.recipe import load_recipe, recipe_dir

EMBEDDED = Path(__file__).resolve().parents[1] / "recipes" / "embedded"


def test_stage_files_load_as_typed_configs_in_float32():
    for name, cls in (("sft", SFTConfig), ("dpo", DPOConfig), ("rlvr", RLVRConfig)):
        cfg = load_config(EMBEDDED / f"{name}.yaml")
        assert type(cfg) is cls and cfg.precision == "fp32" and cfg.lora is not None
    assert load_config(EMBEDDED / "rlvr.yaml").algorithm == "grpo"
    assert recipe_dir() == EMBEDDED


def test_smoke_overlay_changes_only_what_it_names():
    full, smoke = load_recipe(EMBEDDED, smoke=False), load_recipe(EMBEDDED, smoke=True)
    assert (full.sft.max_steps, smoke.sft.max_steps) == (40, 2)
    assert (full.rlvr.prompts_per_step, smoke.rlvr.prompts_per_step) == (8, 2)
    assert smoke.sft.learning_rate == full.sft.learning_rate and smoke.dtype == full.dtype == "fp32"
    assert (full.n_test, smoke.n_test) == (400, 16)


def test_bad_files_are_named(tmp_path):
    bad = tmp_path / "sft.yaml"
    bad.write_text("stage: sft\nlearning_rat: 0.1\n")
    with pytest.raises(ValueError, match=r"sft\.yaml: .*unknown fields \['learning_rat'\]"):
        load_config(bad)
    bad.write_text("stage: sft\nlearning_rate: -1\n")
    with pytest.raises(ValueError, match=r"sft\.yaml: SFTConfig\.learning_rate must be > 0"):
        load_config(bad)
    bad.write_text("stage: [\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(FileNotFoundError, match="no recipe"):
        load_recipe(tmp_path)


def test_the_recipe_is_found_from_outside_the_project(tmp_path, monkeypatch):
    """A notebook copied elsewhere (JupyterLab serving a copy, papermill output folders) runs with another
    working directory: the recipe comes from the checkout the package was imported from."""
    from tulu_lab.recipe import load_recipe, recipe_dir

    monkeypatch.chdir(tmp_path)
    assert recipe_dir() == Path(__file__).resolve().parents[1] / "recipes" / "embedded"
    assert load_recipe().name == load_recipe(recipe_dir()).name

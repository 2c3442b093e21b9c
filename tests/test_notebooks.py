"""Every numbered notebook executes top to bottom in the smoke setting (TULU_LAB_SMOKE=1), in order.

Later notebooks read what earlier ones saved, so they share one runs/ folder (a temporary one);
figures go to a temporary folder too, leaving the committed figures/ untouched.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tulu_lab.reproduce import execute_notebook, notebook_parameters, notebook_paths, parse_parameters

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = notebook_paths(ROOT / "notebooks")


@pytest.fixture(scope="module")
def smoke_env(tmp_path_factory):
    base = tmp_path_factory.mktemp("smoke")
    saved = {k: os.environ.get(k) for k in ("TULU_LAB_SMOKE", "TULU_LAB_RUNS", "TULU_LAB_FIGURES")}
    os.environ.update(TULU_LAB_SMOKE="1", TULU_LAB_RUNS=str(base / "runs"), TULU_LAB_FIGURES=str(base / "figures"))
    yield base
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def test_notebooks_are_committed_without_outputs():
    for path in NOTEBOOKS:
        notebook = json.loads(path.read_text())
        assert notebook["metadata"].get("kernelspec", {}).get("name") == "python3", path.name
        with_outputs = [i for i, c in enumerate(notebook["cells"]) if c["cell_type"] == "code" and c.get("outputs")]
        assert not with_outputs, f"{path.name}: code cells {with_outputs} carry outputs"
        first = notebook["cells"][0]
        assert first["cell_type"] == "markdown" and "".join(first["source"]).startswith("# "), path.name


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes_in_smoke_mode(path, smoke_env):
    execute_notebook(path, smoke_env / "executed", timeout=1800)


@pytest.mark.slow
def test_notebooks_run_from_a_clone_without_the_shared_folder(smoke_env, tmp_path, monkeypatch):
    """A fresh clone has nothing beside it: the notebooks that read real benchmark data use the shipped
    copies. Runs after the smoke runs above (same runs/ folder, so 06 and 08 find the stage checkpoints)."""
    import subprocess
    import sys

    clone = tmp_path / "clone"
    tracked = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.splitlines()
    for name in tracked:
        if not (ROOT / name).is_file():  # deleted in the working tree
            continue
        (clone / name).parent.mkdir(parents=True, exist_ok=True)
        (clone / name).write_bytes((ROOT / name).read_bytes())
    assert not (clone.parent / "shared").exists()
    monkeypatch.setenv("PYTHONPATH", str(clone))  # the kernels import the clone's package
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    imported = subprocess.run([sys.executable, "-c", "import tulu_lab; print(tulu_lab.__file__)"],
                              cwd=tmp_path, capture_output=True, text=True, check=True).stdout.strip()
    assert imported == str(clone / "tulu_lab" / "__init__.py")
    for path in notebook_paths(clone / "notebooks", ["01_", "06_", "08_"]):
        execute_notebook(path, smoke_env / "executed-clone", timeout=1800)


# the stage notebooks' knobs, named as the config fields are (papermill's `parameters` cell)
PARAMETERS = {
    "02_sft": {"learning_rate", "max_steps", "epochs", "seed", "lora_r", "model", "quant"},
    "03_dpo": {"learning_rate", "beta", "max_steps", "epochs", "seed", "lora_r", "model", "quant", "parent"},
    "04_rlvr": {"learning_rate", "beta", "max_steps", "seed", "lora_r", "temperature", "model", "quant", "parent",
                "variant_beta", "variant_max_steps"},
    "06_evaluation": {"limit", "model", "quant"},
}


def test_stage_notebooks_start_with_a_parameters_cell():
    from tulu_lab.config import DPOConfig, RLVRConfig, SFTConfig

    fields = {"02_sft": SFTConfig, "03_dpo": DPOConfig, "04_rlvr": RLVRConfig}
    for stem, names in PARAMETERS.items():
        path = ROOT / "notebooks" / f"{stem}.ipynb"
        cells = json.loads(path.read_text())["cells"]
        second = cells[1]
        assert second["cell_type"] == "code" and second["metadata"].get("tags") == ["parameters"], stem
        assert sum("parameters" in c["metadata"].get("tags", []) for c in cells) == 1, stem
        assert set(notebook_parameters(path)) == names, stem
        body = "".join("".join(c["source"]) for c in cells[2:] if c["cell_type"] == "code")
        for name in names:  # every knob reaches the run
            assert f"{name}={name}" in body or f"parent={name}" in body or f'"beta": {name}' in body \
                or f"{name} or" in body or f"min({name}, " in body, (stem, name)
        if stem in fields:  # config knobs are named as the config's fields
            known = {f for f in fields[stem].__dataclass_fields__}
            assert names - {"lora_r", "model", "quant", "parent", "variant_beta", "variant_max_steps"} <= known, stem


def test_reproduce_injects_parameters_the_papermill_way(tmp_path):
    import nbformat

    notebook = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                                 "language": "python"}})
    params = nbformat.v4.new_code_cell("beta = None\nsteps = 1")
    params.metadata["tags"] = ["parameters"]
    notebook.cells = [params, nbformat.v4.new_code_cell("assert beta == 2.0 and steps == 3, (beta, steps)")]
    path = tmp_path / "nb" / "01_params.ipynb"
    path.parent.mkdir()
    nbformat.write(notebook, path)
    assert notebook_parameters(path) == ["beta", "steps"]
    values = parse_parameters([["beta", "2.0"], ["steps", "3"], ["other", "x"]])
    assert values == {"beta": 2.0, "steps": 3, "other": "x"}
    execute_notebook(path, tmp_path / "out", timeout=120, parameters=values)  # "other" is not declared: left out
    executed = nbformat.read(tmp_path / "out" / path.name, as_version=4)
    assert executed.cells[1].metadata["tags"] == ["injected-parameters"]
    with pytest.raises(Exception, match="AssertionError"):
        execute_notebook(path, tmp_path / "out2", timeout=120)


@pytest.mark.slow
def test_a_changed_notebook_parameter_trains_a_variant_and_leaves_the_baseline(smoke_env, tmp_path):
    """papermill notebooks/03_dpo.ipynb out.ipynb -p beta 2.0, after the baseline DPO run of the smoke runs."""
    from tulu_lab import pipeline
    from tulu_lab.recipe import load_recipe
    from tulu_lab.training import read_run

    recipe = load_recipe()  # the smoke recipe (TULU_LAB_SMOKE=1)
    baseline = pipeline.stage_dir("dpo", recipe)
    if not (baseline / "final").is_dir():  # run on its own: the baseline first
        execute_notebook(ROOT / "notebooks" / "03_dpo.ipynb", smoke_env / "executed", timeout=1800)
    before = {p: p.read_bytes() for p in sorted(baseline.rglob("*")) if p.is_file()}
    runs_before = set(baseline.parent.glob("dpo-*"))
    subprocess.run([sys.executable, "-m", "papermill", str(ROOT / "notebooks" / "03_dpo.ipynb"),
                    str(tmp_path / "03_beta2.ipynb"), "-p", "beta", "2.0", "--cwd", str(ROOT / "notebooks"),
                    "-k", "python3", "--no-progress-bar"], check=True, timeout=1800)
    new = set(baseline.parent.glob("dpo-*")) - runs_before
    assert len(new) == 1, new
    (variant,) = new
    record = read_run(variant)
    assert record["status"] == "finished" and record["identity"]["config"]["beta"] == 2.0
    assert read_run(baseline)["identity"]["config"]["beta"] == recipe.dpo.beta != 2.0
    assert {p: p.read_bytes() for p in sorted(baseline.rglob("*")) if p.is_file()} == before

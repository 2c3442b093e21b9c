"""Every numbered notebook executes top to bottom in the smoke setting (TULU_LAB_SMOKE=1), in order.

Later notebooks read what earlier ones saved, so they share one runs/ folder (a temporary one);
figures go to a temporary folder too, leaving the committed figures/ untouched.
"""

import json
import os
from pathlib import Path

import pytest

from tulu_lab.reproduce import execute_notebook, notebook_paths

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

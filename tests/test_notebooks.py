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

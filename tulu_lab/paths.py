"""Where things are written: the project root (found from the working directory), figures/ and runs/.

Notebooks run with their own folder as the working directory, scripts and tests from the root; both
resolve the same folders. ``$TULU_LAB_FIGURES`` and ``$TULU_LAB_RUNS`` override the defaults.
"""

from __future__ import annotations

import os
from pathlib import Path


def project_root(start: str | os.PathLike | None = None) -> Path:
    """The nearest folder at or above ``start`` (default: cwd) holding pyproject.toml and tulu_lab/."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "tulu_lab").is_dir():
            return folder
    return here


def figures_dir() -> Path:
    """figures/ of the project; a smoke run (a few steps, see smoke()) writes to runs/smoke/figures/
    instead, so it never overwrites the committed figures."""
    if "TULU_LAB_FIGURES" in os.environ:
        return Path(os.environ["TULU_LAB_FIGURES"])
    return runs_dir() / "smoke" / "figures" if smoke() else project_root() / "figures"


def runs_dir() -> Path:
    """Checkpoints, metrics and evaluation results (outside git)."""
    return Path(os.environ.get("TULU_LAB_RUNS", project_root() / "runs"))


def smoke() -> bool:
    """TULU_LAB_SMOKE=1: notebooks and recipes take a few steps only (CI's setting)."""
    return os.environ.get("TULU_LAB_SMOKE", "0") not in ("", "0", "false", "False")

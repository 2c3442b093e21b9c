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


def resolve_output_dir(path: str | os.PathLike | None, default: str = "") -> Path:
    """Where a run or an evaluation writes, the one rule for every output folder.

    None or "" -> ``runs_dir() / default``; a relative path whose first part is ``runs``
    ("runs/sft-embedded", the presets' form) -> the same path under ``runs_dir()``, so
    ``$TULU_LAB_RUNS`` moves it and a notebook's working directory does not; any other path
    (absolute, or relative to the working directory on purpose) is kept, with "~" expanded.
    """
    if path is None or str(path) == "":
        return runs_dir() / default if default else runs_dir()
    given = Path(path).expanduser()
    if not given.is_absolute() and given.parts and given.parts[0] == "runs":
        return runs_dir().joinpath(*given.parts[1:])
    return given


def check_writable(folder: str | os.PathLike, what: str = "output_dir") -> Path:
    """Create ``folder`` if needed and prove it takes a file; raise PermissionError naming it if not.

    Called before long work starts, so an unwritable folder fails in a second, not after hours.
    """
    import tempfile

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as err:
        raise PermissionError(f"{what} {str(folder)!r} is not writable ({type(err).__name__}: {err}); pass a "
                              f"writable folder, or set TULU_LAB_RUNS to move runs/") from None
    return folder

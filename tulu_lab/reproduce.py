"""Execute the numbered notebooks in order, headless, writing executed copies outside git.

    python -m tulu_lab.reproduce notebooks            # what `make reproduce` runs
    TULU_LAB_SMOKE=1 python -m tulu_lab.reproduce notebooks   # a few steps each (CI, first look)

Each notebook runs with its own folder as the working directory; executed copies go to
``notebooks/executed/`` (ignored by git). A failing cell stops the run with the notebook's name.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def notebook_paths(folder: str | Path, only: list[str] | None = None) -> list[Path]:
    paths = sorted(Path(folder).glob("[0-9][0-9]_*.ipynb"))
    if only:
        paths = [p for p in paths if any(key in p.name for key in only)]
    if not paths:
        raise FileNotFoundError(f"no numbered notebooks (NN_name.ipynb) in {folder}"
                                + (f" matching {only}" if only else ""))
    return paths


def execute_notebook(path: Path, out_dir: Path, timeout: int = 3600) -> float:
    """Run one notebook top to bottom; returns its wall time in seconds."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    client = NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    try:
        client.execute()
    finally:
        out_dir.mkdir(parents=True, exist_ok=True)
        nbformat.write(notebook, out_dir / path.name)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", nargs="?", default="notebooks")
    parser.add_argument("--only", nargs="*", help="run only notebooks whose name contains one of these")
    parser.add_argument("--out", default=None, help="executed copies (default: FOLDER/executed)")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    args = parser.parse_args(argv)

    out_dir = Path(args.out) if args.out else Path(args.folder) / "executed"
    total = time.perf_counter()
    for path in notebook_paths(args.folder, args.only):
        print(f"[reproduce] {path.name} ...", flush=True)
        try:
            seconds = execute_notebook(path, out_dir, args.timeout)
        except Exception as err:  # nbclient's CellExecutionError carries the cell's traceback
            print(f"[reproduce] FAILED in {path.name} (executed copy: {out_dir / path.name}):\n{err}",
                  file=sys.stderr)
            return 1
        print(f"[reproduce] {path.name} done in {seconds:.0f} s", flush=True)
    print(f"[reproduce] all notebooks done in {(time.perf_counter() - total) / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Execute the numbered notebooks in order through papermill, headless, writing executed copies outside git.

    python -m tulu_lab.reproduce notebooks            # what `make reproduce` runs
    TULU_LAB_SMOKE=1 python -m tulu_lab.reproduce notebooks   # a few steps each (CI, first look)
    python -m tulu_lab.reproduce notebooks --only 03 -p beta 2.0   # a DPO variant, as papermill -p does

Each notebook runs with its own folder as the working directory; executed copies go to
``notebooks/executed/`` (ignored by git). Parameters are injected the papermill way: a cell after the
notebook's ``parameters``-tagged cell (a notebook without a given parameter ignores it). A failing cell
stops the run with the notebook's name. A full pass (no ``--only``, no parameters) ends by writing
``figures/REPORT.md`` from the runs (:mod:`tulu_lab.report`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any


def notebook_paths(folder: str | Path, only: list[str] | None = None) -> list[Path]:
    paths = sorted(Path(folder).glob("[0-9][0-9]_*.ipynb"))
    if only:
        paths = [p for p in paths if any(key in p.name for key in only)]
    if not paths:
        raise FileNotFoundError(f"no numbered notebooks (NN_name.ipynb) in {folder}"
                                + (f" matching {only}" if only else ""))
    return paths


def notebook_parameters(path: Path) -> list[str]:
    """The names the notebook's ``parameters``-tagged cell assigns (empty without such a cell)."""
    import ast

    import nbformat

    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code" and "parameters" in cell.metadata.get("tags", []):
            tree = ast.parse(cell.source)
            return [t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets
                    if isinstance(t, ast.Name)]
    return []


def execute_notebook(path: Path, out_dir: Path, timeout: int = 3600,
                     parameters: dict[str, Any] | None = None) -> float:
    """Run one notebook top to bottom with papermill (``parameters`` injected after its ``parameters``
    cell; those it does not declare are left out, so one set can be passed to every notebook);
    the executed copy is ``out_dir/<name>``. Returns the wall time in seconds."""
    import papermill

    path, out_dir = Path(path), Path(out_dir)
    declared = set(notebook_parameters(path))
    given = {k: v for k, v in (parameters or {}).items() if k in declared}
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    papermill.execute_notebook(str(path), str(out_dir / path.name), parameters=given, kernel_name="python3",
                               cwd=str(path.parent), execution_timeout=timeout, progress_bar=False,
                               log_output=False)
    return time.perf_counter() - start


def parse_parameters(pairs: list[list[str]] | None) -> dict[str, Any]:
    """``-p NAME VALUE`` pairs -> values read as YAML scalars, as papermill's ``-p`` reads them
    (``2.0`` a float, ``3`` an int, ``null`` None, anything else a string)."""
    import yaml

    values: dict[str, Any] = {}
    for name, text in pairs or []:
        values[name] = yaml.safe_load(text)
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", nargs="?", default="notebooks")
    parser.add_argument("--only", nargs="*", help="run only notebooks whose name contains one of these")
    parser.add_argument("--out", default=None, help="executed copies (default: FOLDER/executed)")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", metavar=("NAME", "VALUE"),
                        help="a notebook parameter (papermill's -p), passed to the notebooks that declare it")
    parser.add_argument("--no-report", action="store_true", help="do not write figures/REPORT.md at the end")
    args = parser.parse_args(argv)
    parameters = parse_parameters(args.parameter)

    out_dir = Path(args.out) if args.out else Path(args.folder) / "executed"
    total = time.perf_counter()
    for path in notebook_paths(args.folder, args.only):
        print(f"[reproduce] {path.name} ...", flush=True)
        try:
            seconds = execute_notebook(path, out_dir, args.timeout, parameters=parameters)
        except Exception as err:  # papermill's PapermillExecutionError carries the cell's traceback
            print(f"[reproduce] FAILED in {path.name} (executed copy: {out_dir / path.name}):\n{err}",
                  file=sys.stderr)
            return 1
        print(f"[reproduce] {path.name} done in {seconds:.0f} s", flush=True)
    print(f"[reproduce] all notebooks done in {(time.perf_counter() - total) / 60:.1f} min", flush=True)
    if not (args.only or parameters or args.no_report):  # a full pass over the recipe's baseline runs
        from tulu_lab.report import write_report
        print(f"[reproduce] report card: {write_report()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

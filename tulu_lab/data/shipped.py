"""The benchmark test sets shipped inside the package: GSM8K test, MATH-500 and IFEval.

They are what the notebooks evaluate on, so the workbench runs without network access. Each file is
checked against the sha256 in ``benchmarks/manifest.json`` before it is used: a modified copy is an
error, never a silently different benchmark. Their licences and sources are in ``benchmarks/README.md``.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

BENCHMARKS_DIR = Path(__file__).resolve().parent / "benchmarks"
MANIFEST = BENCHMARKS_DIR / "manifest.json"


class ShippedDataError(RuntimeError):
    """A shipped benchmark file is missing or differs from the bytes recorded in the manifest."""


def shipped_manifest() -> dict[str, dict]:
    """``{name: {file, split, rows, bytes, sha256, license, hf_id}}`` for every shipped benchmark."""
    return json.loads(MANIFEST.read_text())


@lru_cache(maxsize=None)
def shipped_benchmark(name: str) -> Path:
    """Path of the shipped copy of benchmark ``name`` ("gsm8k", "math", "ifeval"), its sha256 checked."""
    manifest = shipped_manifest()
    if name not in manifest:
        raise KeyError(f"no shipped benchmark {name!r}; shipped: {sorted(manifest)}")
    entry = manifest[name]
    path = BENCHMARKS_DIR / entry["file"]
    if not path.is_file():
        raise ShippedDataError(f"{path}: the shipped {name} file is missing; reinstall tulu-lab "
                               f"(or pass a local copy of the data explicitly)")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if len(data) != entry["bytes"] or digest != entry["sha256"]:
        raise ShippedDataError(f"{path}: {len(data)} bytes with sha256 {digest}, expected {entry['bytes']} bytes "
                               f"with sha256 {entry['sha256']} ({MANIFEST.name}); the file was modified")
    return path


def default_source(name: str, split: str, hf_id: str) -> str | Path:
    """Where a loader reads ``name`` when no source is given: the shipped copy of that split, else the hub id."""
    entry = shipped_manifest().get(name)
    if entry is not None and entry["split"] == split:
        return shipped_benchmark(name)
    return hf_id

"""The benchmark test sets shipped inside the package: exact bytes, licences, and the loaders' default."""

import hashlib
import json
import re
import shutil
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import pytest

from tulu_lab.data import load_gsm8k, load_ifeval, load_math, shipped
from tulu_lab.data.shipped import ShippedDataError, shipped_benchmark, shipped_manifest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
NAMES = ("gsm8k", "math", "ifeval")


def test_manifest_matches_the_shipped_bytes():
    manifest = shipped_manifest()
    assert set(manifest) == set(NAMES)
    for name, entry in manifest.items():
        path = shipped_benchmark(name)
        data = path.read_bytes()
        assert len(data) == entry["bytes"] and hashlib.sha256(data).hexdigest() == entry["sha256"], name
        assert sum(1 for line in data.decode().splitlines() if line.strip()) == entry["rows"], name
        licence = (path.parent / "LICENSE").read_text()
        assert {"MIT": "MIT License", "Apache-2.0": "Apache License"}[entry["license"]] in licence, name


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"no reference copies at {SHARED}")
def test_shipped_files_equal_the_reference_copies():
    for name, entry in shipped_manifest().items():
        assert shipped_benchmark(name).read_bytes() == (SHARED / entry["file"]).read_bytes(), name


def test_a_modified_copy_is_refused(tmp_path, monkeypatch):
    copy = tmp_path / "benchmarks"
    shutil.copytree(shipped.BENCHMARKS_DIR, copy)
    target = copy / "gsm8k" / "test.jsonl"
    data = bytearray(target.read_bytes())
    data[100] = ord("7") if data[100] != ord("7") else ord("8")
    target.write_bytes(bytes(data))
    monkeypatch.setattr(shipped, "BENCHMARKS_DIR", copy)
    monkeypatch.setattr(shipped, "MANIFEST", copy / "manifest.json")
    shipped_benchmark.cache_clear()
    try:
        with pytest.raises(ShippedDataError, match=r"gsm8k/test\.jsonl.*was modified"):
            shipped_benchmark("gsm8k")
        (copy / "math" / "test.jsonl").unlink()
        with pytest.raises(ShippedDataError, match="missing"):
            shipped_benchmark("math")
        assert shipped_benchmark("ifeval") == copy / "ifeval" / "input_data.jsonl"  # untouched: accepted
    finally:
        shipped_benchmark.cache_clear()


def test_loaders_read_the_shipped_sets_without_a_source(monkeypatch):
    def no_hub(*args, **kwargs):
        raise AssertionError("the hub was asked for data the package ships")

    monkeypatch.setattr("tulu_lab.data.loaders._read_hf", no_hub)
    gsm8k, math, ifeval = load_gsm8k(), load_math(), load_ifeval()
    assert (len(gsm8k), len(math), len(ifeval)) == (1319, 500, 541)
    assert gsm8k[0]["id"] == "gsm8k/test/0" and gsm8k[0]["final_answer"] == "18"
    assert math[0]["id"].startswith("test/") and ifeval[0]["key"] == 1000
    with pytest.raises(AssertionError, match="hub was asked"):  # GSM8K train is not shipped
        load_gsm8k(split="train")


def test_the_wheel_includes_every_shipped_file():
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["tulu_lab.data"]
    for path in shipped.BENCHMARKS_DIR.rglob("*"):
        if path.is_file():
            relative = path.relative_to(shipped.BENCHMARKS_DIR.parent).as_posix()
            assert any(fnmatch(relative, pattern) for pattern in globs), f"{relative} is left out of the wheel"


def test_package_and_notebooks_do_not_reach_outside_the_project():
    """A fresh clone has no ../shared: nothing the notebooks run may look there."""
    pattern = re.compile(r"""/\s*["']shared["']|shared/data|\.\./shared""")  # a path into ../shared
    offenders = []
    for path in list((ROOT / "tulu_lab").rglob("*.py")) + list((ROOT / "notebooks").glob("*.ipynb")):
        text = path.read_text()
        if path.suffix == ".ipynb":
            text = "\n".join("".join(cell["source"]) for cell in json.loads(text)["cells"])
        offenders += [f"{path.relative_to(ROOT)}: {match.group(0)}" for match in pattern.finditer(text)]
    assert not offenders, offenders

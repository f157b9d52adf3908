"""The environment is declared in three places (pyproject, requirements.txt, environment.yml); keep them in sync."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pins(lines):
    pins = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            name, _, version = line.partition("==")
            assert version, f"{line!r} is not pinned with =="
            pins[name.lower()] = version
    return pins


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement, maxsplit=1)[0].lower()


def test_environment_yml_has_the_same_pins_as_requirements_txt():
    requirements = _pins((ROOT / "requirements.txt").read_text().splitlines())
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert _pins(pip_section) == requirements


def test_every_declared_dependency_is_pinned_for_the_makefile():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_name(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]}
    pinned = set(_pins((ROOT / "requirements.txt").read_text().splitlines()))
    assert declared - pinned == set(), "add these to requirements.txt and environment.yml"


def test_ci_runs_make_test_and_makefile_has_the_documented_targets():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    makefile = (ROOT / "Makefile").read_text()
    for target in ("env", "repro", "test", "lab"):
        assert re.search(rf"^{target}:", makefile, re.M), f"Makefile lacks the {target!r} target"
    assert "--ip=127.0.0.1" in makefile and "token" in makefile

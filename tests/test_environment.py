"""environment.yml (conda, Binder) pins the same packages at the same versions as pyproject.toml."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
#: conda-forge names that differ from PyPI's.
CONDA_TO_PYPI = {"redis-py": "redis"}
#: conda packages that are not Python dependencies: the interpreter, Node (to refresh the
#: vendored socket.io client), the Redis server for scale-out, nginx in front of the nodes.
NOT_FROM_PYPI = {"python", "nodejs", "redis-server", "nginx"}


def pyproject_pins() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements += extra
    pins = {}
    for req in requirements:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)==([0-9][A-Za-z0-9.]*)", req)
        assert match, f"pyproject.toml: {req!r} is not pinned with =="
        pins[match.group(1).lower()] = match.group(2)
    return pins


def conda_pins() -> dict[str, str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pins = {}
    for dep in env["dependencies"]:
        if isinstance(dep, str) and "=" in dep:
            name, version = dep.split("=", 1)
            name = CONDA_TO_PYPI.get(name.lower(), name.lower())
            if name not in NOT_FROM_PYPI:
                pins[name] = version.split()[0]
    return pins


def test_environment_yml_matches_pyproject() -> None:
    assert conda_pins() == pyproject_pins()


def test_environment_installs_the_package_itself() -> None:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "-e ." in pip

"""Packaging: environment.yml mirrors pyproject.toml; CI runs the README's command."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONDA_NAMES = {"pytorch": "torch"}  # conda-forge name -> PyPI name


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=!~ ;]", requirement.strip(), maxsplit=1)[0].lower()


def _pyproject_names():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    requirements = project["dependencies"] + extras["course"] + extras["test"] + extras["cu13"]
    return {_name(r) for r in requirements}


def _environment_names():
    names = set()
    for line in (ROOT / "environment.yml").read_text().splitlines():
        item = re.match(r"^\s*-\s+(\S.*)$", line)
        if not item or item.group(1).startswith(("-e", "pip:")) or item.group(1) in ("pip", "conda-forge"):
            continue
        name = _name(item.group(1))
        if name in ("python", "pip"):
            continue
        names.add(CONDA_NAMES.get(name, name))
    return names


def test_environment_yml_names_the_same_packages_as_pyproject():
    assert _environment_names() == _pyproject_names()


def test_course_packages_are_all_declared():
    names = _pyproject_names()
    for package in ["torch", "numba", "numba-cuda", "jupyterlab", "ipywidgets", "matplotlib", "nbval", "pytest"]:
        assert package in names


def test_cu13_extra_is_what_make_setup_installs():
    makefile = (ROOT / "Makefile").read_text()
    assert "CUDA ?= cu13" in makefile
    assert "-c constraints.txt" in makefile


def test_constraints_pin_the_cpu_torch():
    assert "torch==2.13.0" in (ROOT / "constraints.txt").read_text().split()


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    assert "make test" in (ROOT / ".github" / "workflows" / "ci.yml").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make lab" in readme

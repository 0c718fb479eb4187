"""Packaging: what each install route gets, what the Makefile decides, and
that the repository says only true things about itself."""

import os
import re
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
CONDA_NAMES = {"pytorch": "torch"}  # conda-forge name -> PyPI name


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=!~ ;]", requirement.strip(), maxsplit=1)[0].lower()


def _names(requirements):
    return {_name(r) for r in requirements}


def _environment_yml():
    """(conda package names, pip lines) of environment.yml."""
    names, pip_lines = set(), []
    for line in (ROOT / "environment.yml").read_text().splitlines():
        item = re.match(r"^(\s*)-\s+(\S.*)$", line)
        if not item or item.group(2) in ("pip", "pip:"):
            continue
        if len(item.group(1)) > 4:  # under `- pip:`
            pip_lines.append(item.group(2))
        elif _name(item.group(2)) not in ("python", "conda-forge"):
            names.add(CONDA_NAMES.get(_name(item.group(2)), _name(item.group(2))))
    return names, pip_lines


def test_environment_yml_names_the_same_packages_as_pyproject():
    extras = PYPROJECT["optional-dependencies"]
    conda_names, pip_lines = _environment_yml()
    assert conda_names == _names(PYPROJECT["dependencies"] + extras["course"] + extras["test"])
    # The toolkit extra comes from pyproject.toml itself, with its macOS marker.
    assert pip_lines == ["-e .[cu13]"]


def test_environment_yml_says_how_to_activate():
    text = (ROOT / "environment.yml").read_text()
    assert "conda env create -f environment.yml" in text and "conda activate upsample-course" in text
    assert "name: upsample-course" in text


def test_numba_cuda_only_in_the_toolkit_extras_and_never_on_macos():
    """Without numba-cuda, numba's built-in simulator runs the kernels (the
    CUDA=none and macOS route), so the core install must not require it."""
    assert "numba-cuda" not in _names(PYPROJECT["dependencies"])
    extras = PYPROJECT["optional-dependencies"]
    for toolkit in ("cu13", "cu12"):
        (requirement,) = extras[toolkit]
        assert requirement.startswith(f"numba-cuda[{toolkit}]")
        assert "sys_platform != 'darwin'" in requirement


def test_core_dependencies():
    assert {"torch", "numpy", "numba", "tqdm"} <= _names(PYPROJECT["dependencies"])
    assert {"jupyterlab", "ipywidgets", "matplotlib"} <= _names(PYPROJECT["optional-dependencies"]["course"])
    assert {"pytest", "nbval"} <= _names(PYPROJECT["optional-dependencies"]["test"])


def test_constraints_pin_what_the_tests_ran_with():
    pins = (ROOT / "constraints.txt").read_text().split()
    assert {"torch==2.13.0", "numba==0.68.1", "numba-cuda==0.30.4"} <= set(pins)


def test_license_is_the_one_pyproject_names():
    assert PYPROJECT["license"] == "MIT"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")


def test_no_wheel_or_archive_is_tracked():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout")
    assert [f for f in tracked if f.endswith((".whl", ".tar.gz", ".zip"))] == []


# --------------------------------------------------------------------------
# The Makefile's decisions, read from `make -n` (prints, runs nothing)
# --------------------------------------------------------------------------


def _make(tmp_path, *args, uname="Linux", uid="1000"):
    """`make -n ARGS` with a fresh VENV in tmp_path and fake `uname`/`id`."""
    fake_bin = tmp_path / "fakebin"
    fake_bin.mkdir(exist_ok=True)
    for tool, answer in (("uname", uname), ("id", uid)):
        script = fake_bin / tool
        script.write_text(f"#!/bin/sh\necho {answer}\n")
        script.chmod(0o755)
    env = dict(os.environ, PATH=f"{fake_bin}:{os.environ['PATH']}")
    env.pop("CUDA", None)
    env.pop("MAKEFLAGS", None)
    result = subprocess.run(["make", "-n", f"VENV={tmp_path / 'venv'}", *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    return result


def test_linux_default_toolkit_is_cu13(tmp_path):
    result = _make(tmp_path, "setup")
    assert result.returncode == 0, result.stderr
    assert "tools/setup_env.py --toolkit cu13" in result.stdout


def test_macos_gets_numba_builtin_simulator(tmp_path):
    result = _make(tmp_path, "setup", uname="Darwin")
    assert "tools/setup_env.py --toolkit none" in result.stdout


def test_the_chosen_toolkit_is_remembered(tmp_path):
    (tmp_path / "venv").mkdir()
    (tmp_path / "venv" / "upsamplelib-toolkit").write_text("cu12\n")
    assert "--toolkit cu12" in _make(tmp_path, "setup").stdout
    # ... until CUDA= says otherwise.
    assert "--toolkit cu13" in _make(tmp_path, "setup", "CUDA=cu13").stdout


def test_ptx_check_is_required_only_with_a_toolkit(tmp_path):
    # A second makefile adds a target that shows the exported variable
    # (macOS's make 3.81 has no --eval).
    shower = tmp_path / "show.mk"
    shower.write_text("show-require:\n\t@echo REQUIRE=$$UPSAMPLELIB_REQUIRE_PTX\n")
    for toolkit, required in (("cu13", "1"), ("cu12", "1"), ("none", "0")):
        result = subprocess.run(["make", "-s", "-f", "Makefile", "-f", str(shower), f"VENV={tmp_path / 'venv'}",
                                 f"CUDA={toolkit}", "show-require"],
                                cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert result.stdout.strip() == f"REQUIRE={required}", result.stderr


def test_unknown_toolkit_is_an_error(tmp_path):
    result = _make(tmp_path, "setup", "CUDA=cu11")
    assert result.returncode != 0
    assert "expected cu13, cu12 or none" in result.stderr


def test_lab_as_root_allows_root_and_passes_args(tmp_path):
    (tmp_path / "venv").mkdir()
    (tmp_path / "venv" / ".upsamplelib-cu13").touch()
    as_root = _make(tmp_path, "lab", "CUDA=cu13", "ARGS=--port 9999", uid="0").stdout
    assert "jupyter lab --notebook-dir=lessons --allow-root --port 9999" in as_root
    as_user = _make(tmp_path, "lab", "CUDA=cu13", uid="1000").stdout
    assert "--allow-root" not in as_user


# --------------------------------------------------------------------------
# CI and the README
# --------------------------------------------------------------------------


def test_ci_runs_the_readme_test_command():
    assert re.search(r"^make test$", (ROOT / ".ci" / "run").read_text(), re.M)
    workflow = (ROOT / ".github" / "workflows" / "ci.yml").read_text()
    assert "run: make test\n" in workflow and "run: make test CUDA=none" in workflow
    assert "runs-on: macos" in workflow
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make lab" in readme and "make test CUDA=none" in readme

"""The install check of every lesson's first code cell (Colab, plain pip)."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from upsamplelib.install import OLDEST_TORCH, course_install_command, torch_version_problem

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import make_lessons  # noqa: E402

REPOSITORY = make_lessons.repository_url()


def test_nothing_to_do_where_the_course_is_installed():
    assert course_install_command(REPOSITORY, upsamplelib_found=True, nvidia_driver=True) is None


def test_without_a_driver_numba_builtin_simulator_needs_no_toolkit():
    command = course_install_command(REPOSITORY, upsamplelib_found=False, nvidia_driver=False, python="py")
    assert command == ["py", "-m", "pip", "install", "--quiet", f"upsamplelib[course] @ git+{REPOSITORY}"]


def test_with_a_driver_numba_cuda_comes_with_cuda_12_wheels():
    command = course_install_command(REPOSITORY, upsamplelib_found=False, nvidia_driver=True, python="py")
    assert command[-1] == f"upsamplelib[course,cu12] @ git+{REPOSITORY}"


@pytest.mark.parametrize("version", ["2.5.0", "2.5.0a0+git1234", "2.13.0+cpu", "2.10.1+cu128", "3.0.0"])
def test_torch_from_the_oldest_supported_release_on_is_accepted(version):
    assert torch_version_problem(version) is None


@pytest.mark.parametrize("version", ["2.4.1+cu121", "2.1.0", "1.13.1", "not a version"])
def test_an_older_torch_is_refused_with_what_to_do(version):
    message = torch_version_problem(version)
    assert f"this is torch {version}" in message and 'pip install -U "torch>=2.5"' in message


def test_importing_the_library_with_an_old_torch_says_why():
    """End to end: the import fails with the message, not later with an
    AttributeError from torch.library."""
    code = "import torch; torch.__version__ = '2.4.1'; import upsamplelib"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, "UPSAMPLELIB_QUIET": "1"})
    assert result.returncode != 0
    assert "ImportError: upsamplelib needs torch 2.5 or newer" in result.stderr


def test_the_oldest_torch_is_the_floor_pyproject_and_environment_yml_name():
    import tomllib

    oldest = ".".join(map(str, OLDEST_TORCH))
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"torch>={oldest}" in dependencies
    assert f"  - pytorch>={oldest}\n" in (ROOT / "environment.yml").read_text()


def test_the_repository_is_named_once_in_pyproject():
    import tomllib

    urls = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]
    assert urls["Repository"] == REPOSITORY
    assert REPOSITORY.startswith("https://github.com/")


def _first_code_cell(path):
    cell = make_lessons.first_code_cell(json.loads(path.read_text()))
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


NOTEBOOKS = sorted((ROOT / "solutions").glob("[0-9][0-9]_*.ipynb")) + sorted((ROOT / "lessons").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_notebook_starts_with_the_current_install_check(path):
    source = _first_code_cell(path)
    prologue = make_lessons.install_prologue(REPOSITORY)
    assert source.startswith(prologue), f"{path.name}: run `make lessons`"
    assert source[len(prologue):].startswith(("import upsamplelib", "from upsamplelib"))


def _run_prologue(monkeypatch, found, nvidia_smi):
    """Execute the prologue as a notebook would, with pip replaced by a recorder."""
    calls = []
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: (object() if found else None) if name == "upsamplelib" else real_find_spec(name, *a))
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/nvidia-smi" if nvidia_smi and name == "nvidia-smi" else None)
    monkeypatch.setattr(subprocess, "run", lambda command, check: calls.append(command))
    exec(compile(make_lessons.install_prologue(REPOSITORY), "first cell", "exec"), {})
    return calls


def test_the_cell_installs_when_upsamplelib_is_missing(monkeypatch):
    calls = _run_prologue(monkeypatch, found=False, nvidia_smi=False)
    assert calls == [[sys.executable, "-m", "pip", "install", "--quiet", f"upsamplelib[course] @ git+{REPOSITORY}"]]
    calls = _run_prologue(monkeypatch, found=False, nvidia_smi=True)
    assert calls[0][-1] == f"upsamplelib[course,cu12] @ git+{REPOSITORY}"


def test_the_cell_does_nothing_where_the_course_is_installed(monkeypatch):
    assert _run_prologue(monkeypatch, found=True, nvidia_smi=True) == []


def test_the_prologue_imports_nothing_that_loads_numba():
    """upsamplelib must be the first to import numba (it chooses the CUDA
    target before); the prologue runs before it."""
    code = make_lessons.install_prologue(REPOSITORY) + "import sys; print('numba' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "False" and result.stderr == ""


def test_colab_links():
    assert make_lessons.colab_url("https://github.com/a/b", "lessons/00_x.ipynb") == (
        "https://colab.research.google.com/github/a/b/blob/main/lessons/00_x.ipynb")
    assert make_lessons.colab_url("https://github.com/a/b.git", "n.ipynb").endswith("/github/a/b/blob/main/n.ipynb")
    with pytest.raises(ValueError):
        make_lessons.colab_url("https://gitlab.com/a/b", "n.ipynb")


@pytest.mark.parametrize("source, message", [
    ("x = 1\nimport upsamplelib as ul", "code above"),
    ("import math", "must import upsamplelib"),
])
def test_a_first_cell_the_prologue_cannot_go_into_is_an_error(source, message):
    with pytest.raises(make_lessons.MarkerError, match=message):
        make_lessons.with_install_prologue(source, REPOSITORY, "test")


def test_an_old_prologue_is_replaced():
    old = make_lessons.install_prologue("https://github.com/old/place") + "import upsamplelib as ul\n"
    new = make_lessons.with_install_prologue(old, REPOSITORY, "test")
    assert new == make_lessons.install_prologue(REPOSITORY) + "import upsamplelib as ul\n"

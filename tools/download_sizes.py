"""Measure what each install route downloads, from PyPI's metadata only.

    .venv/bin/python tools/download_sizes.py            # the table the README quotes

pip resolves each route without downloading a wheel (``--dry-run --report``,
against PyPI alone, this machine's pip configuration ignored); the sizes are
the wheel sizes PyPI lists for exactly the files pip chose. pip evaluates
environment markers for the machine it runs on, so the macOS routes are
resolved by uv instead (``uv pip compile --python-platform``; pass ``--uv
PATH``), and the wheel of each pinned version is the one pip would pick on
macOS 14 on Apple silicon with CPython 3.11. torch's CPU build
comes from PyTorch's own index, which a machine may not reach: give its size
with ``--torch-cpu-wheel PATH`` (a copy of that wheel) and the routes that use
it are measured with it; without one they are left out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from packaging.tags import compatible_tags, cpython_tags, mac_platforms
from packaging.utils import parse_wheel_filename

ROOT = Path(__file__).resolve().parent.parent
PYPI = "https://pypi.org/simple"
MB = 1e6

#: route -> (requirements, "macos" or None for Linux (this machine), torch from the CPU index?)
ROUTES = {
    "make setup, Linux, no NVIDIA driver (default: CPU torch, cu13 toolkit)": (".[course,test,cu13]", None, True),
    "make setup CUDA=none, Linux, no NVIDIA driver": (".[course,test]", None, True),
    "make setup, Linux, CPU index unreachable or an NVIDIA driver (PyPI's CUDA torch)": (".[course,test,cu13]", None, False),
    "make setup, macOS 14+ on Apple silicon (CUDA=none)": (".[course,test]", "macos", False),
    "pip install upsamplelib[cu13], Linux with an NVIDIA driver": (".[cu13]", None, False),
    "pip install upsamplelib[cu13], Linux, after torch's CPU build": (".[cu13]", None, True),
    "pip install upsamplelib[cu13], macOS (no numba-cuda there)": (".[cu13]", "macos", False),
}


#: The tags pip accepts on macOS 14, arm64, CPython 3.11, best first.
MACOS_TAGS = [*cpython_tags((3, 11), platforms=list(mac_platforms((14, 0), "arm64"))),
              *compatible_tags((3, 11), platforms=list(mac_platforms((14, 0), "arm64")))]


def _pip_environment():
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull  # no local wheel caches or caps: what a newcomer's pip sees
    return env


def resolve(requirements: str, python: str = sys.executable) -> list[dict]:
    """pip's install report for ``requirements`` of the project. With a
    ``python`` whose environment has torch's CPU build, torch is taken as
    installed (its own requirements are still resolved and counted)."""
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "report.json"
        command = [python, "-m", "pip", "install", "--dry-run", "--quiet", "--report", str(report),
                   "--index-url", PYPI, "-c", str(ROOT / "constraints.txt")]
        if python == sys.executable:
            command.append("--ignore-installed")
        command.append(f"{ROOT}{requirements[1:]}")
        subprocess.run(command, check=True, env=_pip_environment(), cwd=ROOT)
        items = json.loads(report.read_text())["install"]
    return [item for item in items if item["metadata"]["name"] != "upsamplelib"]


def resolve_for_macos(requirements: str, uv: str) -> list[tuple[str, str]]:
    """(name, wheel filename) of every package ``requirements`` pins on macOS."""
    extras = requirements.partition("[")[2].rstrip("]").split(",")
    with tempfile.TemporaryDirectory() as scratch:
        pins = Path(scratch) / "pins.txt"
        command = [uv, "pip", "compile", str(ROOT / "pyproject.toml"), "--python-platform", "aarch64-apple-darwin",
                   "--python-version", "3.11", "-c", str(ROOT / "constraints.txt"), "--index-url", PYPI,
                   "--no-header", "--no-annotate", "--quiet", "-o", str(pins)]
        for extra in filter(None, extras):
            command += ["--extra", extra]
        subprocess.run(command, check=True, env=dict(_pip_environment(), MACOSX_DEPLOYMENT_TARGET="14.0"))
        lines = [line.split("==") for line in pins.read_text().split() if "==" in line]
    chosen = []
    for name, version in lines:
        if name == "upsamplelib":
            continue
        wheels = []
        for filename in _files(name):
            if filename.endswith(".whl"):
                _, wheel_version, _, tags = parse_wheel_filename(filename)
                if str(wheel_version) == version:
                    ranks = [MACOS_TAGS.index(tag) for tag in tags if tag in MACOS_TAGS]
                    if ranks:
                        wheels.append((min(ranks), filename))
        if not wheels:
            raise LookupError(f"{name}=={version}: no wheel for macOS 14 arm64")
        chosen.append((name, min(wheels)[1]))
    return chosen


def environment_with_cpu_torch(wheel: Path, where: Path) -> str:
    """A scratch venv holding only torch's CPU build (no dependencies): its python."""
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True)
    python = str(where / "bin" / "python")
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-deps", "--index-url", PYPI, "pip>=24"],
                   check=True, env=_pip_environment())
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-deps", str(wheel)], check=True,
                   env=_pip_environment())
    return python


_SIZES: dict[str, dict[str, int]] = {}


def _files(name: str) -> dict[str, int]:
    """{filename: size} of every file PyPI lists for a project."""
    if name not in _SIZES:
        request = urllib.request.Request(f"{PYPI}/{name}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            _SIZES[name] = {f["filename"]: f["size"] for f in json.load(response)["files"]}
    return _SIZES[name]


def wheel_size(name: str, filename: str) -> int:
    """The size PyPI lists for one file of a project."""
    return _files(name)[filename]


def route_size(items):
    """(total bytes, {name: bytes}) of a resolved route."""
    sizes = {}
    for item in items:
        name = item["metadata"]["name"].lower()
        filename = item["download_info"]["url"].rsplit("/", 1)[-1]
        sizes[name] = wheel_size(name, filename)
    return sum(sizes.values()), sizes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--torch-cpu-wheel", type=Path, help="a copy of torch's CPU wheel from PyTorch's index")
    parser.add_argument("--uv", help="uv, to resolve the macOS routes (pip cannot)")
    parser.add_argument("--details", action="store_true", help="list every wheel of every route")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        cpu_python = (environment_with_cpu_torch(args.torch_cpu_wheel, Path(scratch) / "venv")
                      if args.torch_cpu_wheel else None)
        for route, (requirements, platform, cpu_torch) in ROUTES.items():
            if cpu_torch and cpu_python is None:
                print(f"{route}: skipped (no --torch-cpu-wheel)")
                continue
            if platform and not args.uv:
                print(f"{route}: skipped (no --uv)")
                continue
            if platform:
                sizes = {name: wheel_size(name, filename) for name, filename in resolve_for_macos(requirements, args.uv)}
                total = sum(sizes.values())
            else:
                total, sizes = route_size(resolve(requirements, cpu_python if cpu_torch else sys.executable))
            if cpu_torch:
                sizes["torch (CPU build)"] = args.torch_cpu_wheel.stat().st_size
                total += sizes["torch (CPU build)"]
            print(f"{total / MB:8.0f} MB  {len(sizes):3d} wheels  {route}", flush=True)
            if args.details:
                for name, size in sorted(sizes.items(), key=lambda kv: -kv[1]):
                    print(f"          {size / MB:8.1f} MB  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Install the course into the virtual environment that runs this script.

    .venv/bin/python tools/setup_env.py --toolkit cu13    # what `make setup` runs
    .venv/bin/python tools/setup_env.py --toolkit cu12 --dry-run

Steps, each skipped when there is nothing to do:

1. pip older than 24 is upgraded: pip 23.2 cannot resolve PyPI's torch 2.13
   together with numba-cuda's toolkit (it fails on cuda-toolkit==13.0.3).
2. Switching toolkits (cu13, cu12, none): the wheels of the toolkit that is
   installed now are uninstalled first. cu13's and cu12's wheels have
   different names (nvidia-cuda-runtime vs nvidia-cuda-runtime-cu12), so
   pip would otherwise keep both and numba-cuda would go on loading CUDA 13.
3. torch, when missing: on Linux with no NVIDIA driver, PyTorch's CPU build
   from PyTorch's CPU wheel index (a 192 MB wheel; PyPI's Linux torch is the
   CUDA build, 527 MB plus about 2 GB of CUDA libraries); when that index
   cannot be reached within a few seconds, the default index.
   ``--torch-index URL`` (or TORCH_INDEX) chooses the index instead.
   Sizes measured with tools/download_sizes.py.
4. The course itself, editable, with the extras ``course``, ``test`` and the
   toolkit's (``-c constraints.txt``).
5. The choice of toolkit is written into the environment
   (``<venv>/upsamplelib-toolkit``), where the Makefile reads it back, so a
   later ``make lab`` or ``make test`` keeps it.
6. The Numba cache is warmed (``python -m upsamplelib.warmup``), so the first
   lesson cell does not wait for compilation.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.metadata as metadata
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

try:
    from packaging.requirements import Requirement
except ImportError:  # a fresh venv: pip carries its own copy
    from pip._vendor.packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
TOOLKITS = ("cu13", "cu12", "none")
#: Where the chosen toolkit is remembered: inside the environment itself,
#: so that a new environment starts from the platform's default.
TOOLKIT_FILE = Path(sys.prefix) / "upsamplelib-toolkit"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
#: Seconds to wait for PyTorch's index before falling back: long enough for
#: a slow link, short enough that a blocked one does not stall CI.
INDEX_TIMEOUT = 10
MINIMUM_PIP = 24


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_names() -> set[str]:
    return {canonical(d.metadata["Name"]) for d in metadata.distributions() if d.metadata["Name"]}


def requirements_of(name: str, extras=()) -> list[Requirement]:
    """The requirements of an installed distribution that apply with
    ``extras`` on this machine (markers evaluated here)."""
    try:
        listed = metadata.requires(name) or []
    except metadata.PackageNotFoundError:
        return []
    found = []
    for text in listed:
        requirement = Requirement(text)
        marker = requirement.marker
        if marker is None or any(marker.evaluate({"extra": extra}) for extra in (*extras, "")):
            found.append(requirement)
    return found


def closure(roots, installed: set[str]) -> set[str]:
    """Installed distributions reachable from ``roots`` ((name, extras) pairs)
    through their requirements, the roots included."""
    seen: set[str] = set()
    pending = [(canonical(name), tuple(extras)) for name, extras in roots]
    visited_with_extras = set()
    while pending:
        name, extras = pending.pop()
        if name not in installed or (name, extras) in visited_with_extras:
            continue
        visited_with_extras.add((name, extras))
        seen.add(name)
        for requirement in requirements_of(name, extras):
            pending.append((canonical(requirement.name), tuple(sorted(requirement.extras))))
    return seen


def toolkit_wheels(installed: set[str]) -> set[str]:
    """numba-cuda and the CUDA wheels it brings (either extra), minus what
    the rest of the environment needs too (torch's own CUDA libraries, numba)."""
    toolkit = closure([("numba-cuda", ("cu12", "cu13"))], installed)
    others = installed - toolkit
    needed_elsewhere = closure([(name, ()) for name in others], installed) - others
    # needed_elsewhere: toolkit wheels that something outside the toolkit
    # requires (e.g. numba for numba-cuda); those stay.
    return toolkit - needed_elsewhere


def installed_toolkit(installed: set[str]) -> str | None:
    """Which toolkit the environment has now: "none" without numba-cuda,
    "cu12"/"cu13" by its CUDA runtime wheel, None when it cannot tell
    (numba-cuda without a runtime wheel, or both runtimes)."""
    if "numba-cuda" not in installed:
        return "none"
    runtimes = {"cu12": "nvidia-cuda-runtime-cu12" in installed}
    try:
        runtimes["cu13"] = metadata.version("nvidia-cuda-runtime").split(".")[0] == "13"
    except metadata.PackageNotFoundError:
        runtimes["cu13"] = False
    present = [name for name, here in runtimes.items() if here]
    return present[0] if len(present) == 1 else None


def recorded_toolkit() -> str | None:
    try:
        value = TOOLKIT_FILE.read_text().strip()
    except OSError:
        return None
    return value if value in TOOLKITS else None


def wheels_to_remove(target: str, installed: set[str]) -> set[str]:
    """What must go before ``target`` is installed: nothing when the
    environment already has that toolkit and only it."""
    current = installed_toolkit(installed)
    if current == target and recorded_toolkit() in (None, target):
        return set()
    return toolkit_wheels(installed)


def nvidia_driver_present() -> bool:
    """An NVIDIA driver is installed (whether or not a GPU answers)."""
    if sys.platform == "darwin":
        return False
    if os.path.exists("/proc/driver/nvidia/version"):
        return True
    for library in ("nvcuda.dll",) if sys.platform == "win32" else ("libcuda.so.1",):
        try:
            ctypes.CDLL(library)
            return True
        except OSError:
            pass
    return False


def index_reachable(url: str, timeout: float = INDEX_TIMEOUT) -> bool:
    """The package index answers at all within ``timeout`` seconds."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/torch/", timeout=timeout) as response:
            return response.status < 400
    except Exception:  # DNS failure, refused, timed out, proxy error: all unreachable
        return False


def torch_index(requested: str | None, torch_installed: bool, platform: str, driver: bool,
                reachable=index_reachable) -> tuple[str | None, str]:
    """(index URL for torch or None for the default index, one line saying why)."""
    if torch_installed:
        return None, "torch is installed already"
    if requested:
        return requested, f"torch from {requested} (TORCH_INDEX)"
    if platform != "linux":
        return None, "torch from the default index (no CUDA libraries on this platform)"
    if driver:
        return None, "NVIDIA driver found: torch's CUDA build from the default index"
    if reachable(TORCH_CPU_INDEX):
        return TORCH_CPU_INDEX, f"no NVIDIA driver: torch's CPU build from {TORCH_CPU_INDEX}"
    return None, (f"no NVIDIA driver, but {TORCH_CPU_INDEX} cannot be reached: torch from the "
                  "default index (from PyPI that is the CUDA build: the whole setup then downloads "
                  "about 3.0 GB instead of 0.56 GB)")


def torch_cuda_major() -> str | None:
    """The CUDA major version the installed torch was built for ("13"), or
    None for a CPU build or no torch; read from torch/version.py without
    importing torch."""
    try:
        files = metadata.files("torch") or []
    except metadata.PackageNotFoundError:
        return None
    for file in files:
        if str(file).replace("\\", "/") == "torch/version.py":
            match = re.search(r"^cuda\s*(?::[^=]*)?=\s*'(\d+)\.", file.read_text(), re.M)
            return match.group(1) if match else None
    return None


def pip(*args, dry_run=False):
    command = [sys.executable, "-m", "pip", *args]
    print("+", " ".join(command), flush=True)
    if not dry_run:
        subprocess.run(command, check=True, env=dict(os.environ, PYTHONWARNINGS="ignore"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--toolkit", choices=TOOLKITS, required=True)
    parser.add_argument("--torch-index", default=os.environ.get("TORCH_INDEX") or None,
                        help="package index for torch when it is not installed yet")
    parser.add_argument("--dry-run", action="store_true", help="print the steps, change nothing")
    parser.add_argument("--no-warmup", action="store_true", help="skip compiling the CPU kernels")
    args = parser.parse_args(argv)

    if int(metadata.version("pip").split(".")[0]) < MINIMUM_PIP:
        pip("install", "--quiet", f"pip>={MINIMUM_PIP}", dry_run=args.dry_run)

    installed = installed_names()
    if args.toolkit != "none" and sys.platform == "darwin":
        print(f"upsamplelib: numba-cuda has no macOS wheels; use CUDA=none on a Mac "
              f"(numba's built-in CUDA simulator), not {args.toolkit}.", file=sys.stderr)
        return 2
    stale = sorted(wheels_to_remove(args.toolkit, installed))
    if stale:
        print(f"switching to toolkit {args.toolkit}: removing {', '.join(stale)}")
        pip("uninstall", "--yes", "--quiet", *stale, dry_run=args.dry_run)

    torch_installed = "torch" in installed
    index, why = torch_index(args.torch_index, torch_installed, sys.platform, nvidia_driver_present())
    print(f"upsamplelib setup: {why}")
    if (args.toolkit == "cu12" and sys.platform == "linux" and index is None
            and (torch_cuda_major() == "13" or (not torch_installed and nvidia_driver_present()))):
        # Measured: PyPI's torch 2.13.0 for Linux requires cuda-toolkit 13.0.3,
        # numba-cuda[cu12] requires cuda-toolkit 12.*: pip cannot install both.
        print("upsamplelib setup: CUDA=cu12 needs a torch built for CUDA 12 (PyPI's torch for Linux "
              "is built for CUDA 13 and conflicts with the CUDA 12 toolkit). Pass the CUDA 12 index "
              "that pytorch.org's install selector gives, e.g. make setup CUDA=cu12 "
              "TORCH_INDEX=https://download.pytorch.org/whl/cu126", file=sys.stderr)
        return 2
    constraints = str(ROOT / "constraints.txt")
    if index is not None:
        pip("install", "--quiet", "-c", constraints, "--index-url", index, "torch", dry_run=args.dry_run)

    extras = "course,test" + ("" if args.toolkit == "none" else f",{args.toolkit}")
    pip("install", "--quiet", "-c", constraints, "-e", f"{ROOT}[{extras}]", dry_run=args.dry_run)
    if args.dry_run:
        return 0
    TOOLKIT_FILE.write_text(args.toolkit + "\n")
    if not args.no_warmup:
        subprocess.run([sys.executable, "-m", "upsamplelib.warmup"], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

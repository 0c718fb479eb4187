"""Every CUDA kernel of the library compiles to PTX, with no GPU present.

The check needs numba-cuda's compiler. Without numba-cuda (``make test
CUDA=none``, macOS) these tests are skipped and say why; where ``make test``
installed a toolkit it sets UPSAMPLELIB_REQUIRE_PTX=1, and a missing
compiler then fails them instead of skipping them quietly.
"""

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NO_COMPILER_REASON = ("no PTX compiler: numba-cuda is not installed (CUDA=none, numba's built-in "
                      "simulator); `make setup CUDA=cu13` installs one")


def ptx_verdict(numba_cuda_installed: bool, required: bool):
    """None to run the PTX tests, else ("skip" or "fail", why)."""
    if numba_cuda_installed:
        return None
    if required:
        return "fail", "UPSAMPLELIB_REQUIRE_PTX=1 but " + NO_COMPILER_REASON
    return "skip", NO_COMPILER_REASON


@pytest.fixture(autouse=True)
def _needs_a_ptx_compiler(request):
    if request.node.name.startswith("test_verdict"):
        return
    verdict = ptx_verdict(importlib.util.find_spec("numba_cuda") is not None,
                          os.environ.get("UPSAMPLELIB_REQUIRE_PTX") == "1")
    if verdict is not None:
        getattr(pytest, verdict[0])(verdict[1])


def test_verdict_runs_skips_or_fails():
    assert ptx_verdict(True, True) is None and ptx_verdict(True, False) is None
    assert ptx_verdict(False, False) == ("skip", NO_COMPILER_REASON)
    action, why = ptx_verdict(False, True)
    assert action == "fail" and "UPSAMPLELIB_REQUIRE_PTX=1" in why


def test_verdict_of_the_tool_without_numba_cuda():
    """compile_ptx.py itself says SKIP and exits 3 when numba-cuda is absent
    (hidden from it here: a None entry in sys.modules makes find_spec fail)."""
    result = _run("""
        import runpy, sys
        sys.modules["numba_cuda"] = None
        sys.argv = ["tools/compile_ptx.py"]
        runpy.run_path("tools/compile_ptx.py", run_name="__main__")
    """)
    assert result.returncode == 3, result.stdout + result.stderr
    assert result.stdout.startswith("SKIP: numba-cuda is not installed")


def _run(code):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def test_every_kernel_compiles_to_ptx():
    result = subprocess.run([sys.executable, "tools/compile_ptx.py"], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "compiled" in result.stdout


def test_the_check_fails_for_an_unregistered_kernel():
    result = _run("""
        import sys; sys.path.insert(0, "tools")
        import compile_ptx
        from numba import cuda
        import importlib
        module = importlib.import_module("upsamplelib.ops.interpolate")

        def rogue(x):
            x[0] = 1
        module.rogue = cuda.jit(rogue)
        sys.exit(compile_ptx.main())
    """)
    assert result.returncode == 1
    assert "not registered" in result.stdout


def test_the_check_fails_for_a_kernel_only_the_simulator_accepts():
    result = _run("""
        import sys; sys.path.insert(0, "tools")
        import compile_ptx
        from upsamplelib.backend import cuda_kernel

        @cuda_kernel(lambda T: (T[::1],))
        def builds_a_list(x):
            values = [1.0, 2.0]
            values.append(x[0])
            x[0] = values[2]
        sys.exit(compile_ptx.main())
    """)
    assert result.returncode == 1
    assert "builds_a_list" in result.stdout

"""Every CUDA kernel of the library compiles to PTX, with no GPU present."""

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


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

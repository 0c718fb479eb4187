"""Compile every CUDA kernel of upsamplelib to PTX, with or without a GPU.

    python tools/compile_ptx.py            # all kernels, float32 and float64, cc 8.0

The CUDA simulator runs kernels as Python, so it accepts code that a GPU
compiler rejects (lists, NumPy calls, undecorated helpers, ...). This
compiles each kernel for a real GPU target instead: it needs numba-cuda's
NVVM (the cu13/cu12 extra) but no GPU. It also fails if the library
defines a CUDA kernel that is not registered for this check
(``backend.cuda_kernel``).

Exit status 0 when every kernel compiles and every kernel is registered;
3 when there is no PTX compiler to check with: numba-cuda is not installed
(``make setup CUDA=none``, macOS), and numba's built-in CUDA target cannot
compile the library's device functions without a driver (measured: every
kernel that calls one failed with "CudaSupportError: Error at driver init").
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pkgutil
import sys

NO_COMPILER = 3
if __name__ == "__main__" and importlib.util.find_spec("numba_cuda") is None:
    print("SKIP: numba-cuda is not installed (CUDA=none: numba's built-in simulator), so there is no "
          "PTX compiler here; `make setup CUDA=cu13` installs one")
    sys.exit(NO_COMPILER)

os.environ["UPSAMPLELIB_CUDA"] = "gpu"  # compile for the real target even with no GPU
os.environ.setdefault("UPSAMPLELIB_QUIET", "1")

import numba  # noqa: E402,F401  (after the environment is set)

import upsamplelib  # noqa: E402
from upsamplelib import backend  # noqa: E402
from numba import cuda  # noqa: E402
from numba.cuda.dispatcher import CUDADispatcher  # noqa: E402

COMPUTE_CAPABILITY = (8, 0)


def defined_kernels():
    """Qualified names of every CUDA kernel object found in upsamplelib's modules."""
    found = set()
    for info in pkgutil.walk_packages(upsamplelib.__path__, "upsamplelib."):
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            if isinstance(value, CUDADispatcher):
                function = value.py_func
                found.add(f"{function.__module__}.{function.__qualname__}")
    return found


def main() -> int:
    failures = []
    registered = backend.CUDA_KERNELS
    unregistered = sorted(defined_kernels() - set(registered))
    for name in unregistered:
        failures.append(f"{name}: a CUDA kernel not registered with backend.cuda_kernel")
    compiled = 0
    for name, (function, signature) in sorted(registered.items()):
        for float_type in (numba.float32, numba.float64):
            try:
                cuda.compile_ptx(function, signature(float_type), cc=COMPUTE_CAPABILITY)
                compiled += 1
            except Exception as error:  # report every failure, not just the first
                first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                failures.append(f"{name} [{float_type}]: {type(error).__name__}: {first_line}")
    for failure in failures:
        print("FAIL", failure)
    print(f"compiled {compiled} kernel signatures of {len(registered)} kernels to PTX "
          f"for compute capability {COMPUTE_CAPABILITY[0]}.{COMPUTE_CAPABILITY[1]}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

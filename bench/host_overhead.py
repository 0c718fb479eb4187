"""Host-side cost per call of a small op, measured WITHOUT a GPU: the parts
of a call that run in Python before the driver's launch.

    python bench/host_overhead.py

1. The op's own Python work (argument checks, dtype promotion, the torch
   custom-op dispatch, output allocation), with the launch itself replaced
   by a no-op: ``ul.interpolate`` and ``ul.carafe`` on tiny CPU tensors.
2. The cached launch path (``backend.FastLaunch``) for the same arguments,
   with the driver call replaced by a no-op: cache lookups and argument
   packing; and numba-cuda's own argument marshalling
   (``_Kernel._prepare_args``) for the same arguments, which numba runs on
   every call after its typeof and dispatch (not measurable here: they need
   a driver).

3. Whole calls on the ``cpu`` backend (kernels included) of maps so small
   that the host work is most of a call, beside PyTorch's own op: the CPU
   time of this thread, the least of several rounds (wall-clock rounds on
   a shared 2-core machine spread by a quarter).

Not measured: the driver call (cuLaunchKernel) and anything on a GPU. The
GPU's per-call figure comes from ``bench/gpu.py`` on a GPU. Times depend on
this machine's CPU and load.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("UPSAMPLELIB_QUIET", "1")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def us_per_call(function, calls=2000, rounds=7, timer=None):
    """The median round's time per call; with ``timer`` (a CPU-time clock),
    the least round's."""
    clock = timer or time.perf_counter
    for _ in range(50):
        function()
    rounds_us = []
    for _ in range(rounds):
        start = clock()
        for _ in range(calls):
            function()
        rounds_us.append((clock() - start) / calls * 1e6)
    return min(rounds_us) if timer is not None else statistics.median(rounds_us)


def op_overhead():
    import torch

    import upsamplelib as ul
    from upsamplelib import backend

    if not backend.SIMULATOR:
        raise SystemExit("run this without a GPU (it stubs the simulator's launch)")
    backend.launch_grid = lambda kernel, blocks, threads, *args: None  # no launch: Python work only
    x = torch.randn(1, 1, 8, 8)
    xc, masks = torch.randn(1, 4, 4, 4), torch.softmax(torch.randn(1, 25, 8, 8), 1)
    rows = [("ul.interpolate nearest 8x8 x2, launch stubbed",
             lambda: ul.interpolate(x, scale_factor=2, backend="cuda")),
            ("ul.carafe C=4 4x4 x2 k=5, launch stubbed", lambda: ul.carafe(xc, masks, 5, 2, backend="cuda")),
            ("F.interpolate nearest 8x8 x2 (CPU, whole op)",
             lambda: torch.nn.functional.interpolate(x, scale_factor=2))]
    for name, function in rows:
        print(f"{name:<52} {us_per_call(function):7.1f} us per call")


def cpu_backend_calls():
    import torch
    import torch.nn.functional as F

    import upsamplelib as ul

    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 64, 4, 4, generator=g)
    x_last = x.contiguous(memory_format=torch.channels_last)
    masks = torch.softmax(torch.randn(1, 25, 8, 8, generator=g), 1)
    q, key = torch.randn(1, 16, 8, 8, generator=g), torch.randn(1, 16, 4, 4, generator=g)
    x_grad = x.clone().requires_grad_()
    small, ones = torch.randn(1, 8, 4, 4, generator=g), torch.ones(1, 8, 4, 4)

    def under_forward_mode(backend, tangent):
        with torch.autograd.forward_ad.dual_level():
            given = torch.autograd.forward_ad.make_dual(small, ones) if tangent else small
            out = ul.interpolate(given, scale_factor=2, backend=backend)
            return torch.autograd.forward_ad.unpack_dual(out).tangent

    rows = [("nearest 1x64x4x4 x2", lambda: ul.interpolate(x, scale_factor=2, backend="cpu"),
             lambda: F.interpolate(x, scale_factor=2)),
            ("nearest 1x64x4x4 x2, channels-last", lambda: ul.interpolate(x_last, scale_factor=2, backend="cpu"),
             lambda: F.interpolate(x_last, scale_factor=2)),
            ("bilinear 1x64x4x4 x2", lambda: ul.interpolate(x, scale_factor=2, mode="bilinear", backend="cpu"),
             lambda: F.interpolate(x, scale_factor=2, mode="bilinear")),
            ("nearest 1x64x4x4 x2, forward+backward",
             lambda: ul.interpolate(x_grad, scale_factor=2, backend="cpu").sum().backward(),
             lambda: F.interpolate(x_grad, scale_factor=2).sum().backward()),
            ("carafe 1x64x4x4 x2 k=5", lambda: ul.carafe(x, masks, 5, 2, backend="cpu"), None),
            ("sapa_similarity C=16 4x4 -> 8x8 k=5", lambda: ul.sapa_similarity(q, key, 5, 2, backend="cpu"), None),
            ("nearest 1x8x4x4 x2 in dual_level, with a tangent", lambda: under_forward_mode("cpu", True),
             lambda: under_forward_mode("torch", True)),
            ("nearest 1x8x4x4 x2 in dual_level, no tangent", lambda: under_forward_mode("cpu", False),
             lambda: under_forward_mode("torch", False))]
    print(f"{'backend=cpu, whole call (calling thread CPU time)':<52} {'ours':>7}    {'PyTorch':>7}")
    for name, ours, theirs in rows:
        line = f"{name:<52} {us_per_call(ours, timer=time.thread_time):7.1f} us"
        if theirs is not None:
            line += f" {us_per_call(theirs, timer=time.thread_time):7.1f} us"
        print(line)


LAUNCH_PATH = r"""
import ctypes, types as pytypes, time, statistics, cProfile, pstats, io
import numpy as np, torch
from upsamplelib import backend
from numba.core import types
from numba.cuda import dispatcher

def us_per_call(function, calls=5000, rounds=7):
    function()
    out = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            function()
        out.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(out)

# carafe_forward_tiled_kernel's arguments: three 4-D float32 maps and five int64
signature = (types.Array(types.float32, 4, "C"),) * 3 + (types.int64,) * 5
args = (torch.empty(1, 256, 128, 128), torch.empty(1, 25, 256, 256), torch.empty(1, 256, 256, 256), 5, 2, 256, 8, 12)

class Kernel:
    pass
kernel = Kernel()
compiled = pytypes.SimpleNamespace(debug=False, cooperative=False, extensions=[], argument_types=signature,
    _codelibrary=pytypes.SimpleNamespace(get_cufunc=lambda: pytypes.SimpleNamespace(kernel="function")))
kernel.overloads = {signature: compiled}
kernel.typeof_pyval = lambda v: types.Array(types.float32, 4, "C") if isinstance(v, torch.Tensor) else types.int64
torch.cuda.current_device = torch._C._cuda_getDevice = lambda: 0
torch._C._cuda_getCurrentRawStream = lambda device: 7
backend.launch_grid = lambda *a: None
backend.kernel_array = lambda t: t
launch = backend.FastLaunch()
launch.streams[7] = "stream"
launch.configs[(4096, 256)] = "config"
launch.driver_launch = lambda *a: None
launch(kernel, 4096, 256, args)  # the first call fills the cache
cached = us_per_call(lambda: launch(kernel, 4096, 256, args))

class Layout:
    strides_in_bytes = None
    is_contiguous_c, is_contiguous_f = True, False
views = [pytypes.SimpleNamespace(size=t.numel(), dtype=np.dtype("float32"), ptr=t.data_ptr(), shape=tuple(t.shape),
                                 _layout=Layout()) if isinstance(t, torch.Tensor) else t for t in args]
class Hint:
    def __init__(self, value): self.value = value
    def to_device(self, retr, stream=0): return self.value
dispatcher.wrap_arg = Hint
numba_kernel = pytypes.SimpleNamespace(extensions=[])
def numba_marshalling():
    parameters, retr = [], []
    for t, v in zip(signature, views):
        dispatcher._Kernel._prepare_args(numba_kernel, t, v, 0, retr, parameters)
marshalling = us_per_call(numba_marshalling)

profile = cProfile.Profile()
profile.enable()
for _ in range(1000):
    launch(kernel, 4096, 256, args)
profile.disable()
calls = pstats.Stats(profile).total_calls / 1000
print(f"{'cached launch (FastLaunch), driver call stubbed':<52} {cached:7.1f} us per call "
      f"({calls:.0f} Python-level calls)")
print(f"{'numba _prepare_args marshalling alone, same args':<52} {marshalling:7.1f} us per call "
      "(numba adds typeof, dispatch, as_cuda_array views, a Stream object: need a driver)")
"""


def launch_path():
    environment = {**os.environ, "UPSAMPLELIB_CUDA": "gpu", "UPSAMPLELIB_QUIET": "1"}
    result = subprocess.run([sys.executable, "-c", LAUNCH_PATH], cwd=ROOT, env=environment, capture_output=True,
                            text=True)
    sys.stdout.write(result.stdout)
    if result.returncode:
        sys.stdout.write(result.stderr)
        raise SystemExit(result.returncode)


if __name__ == "__main__":
    print("Host-side work per call, measured on this machine's CPU without a GPU (no GPU time; see the docstring)")
    cpu_backend_calls()
    op_overhead()
    launch_path()

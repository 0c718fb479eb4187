"""Where the time of a channels-last nearest upsampling goes, on the CPU: the
one ``make bench`` row whose target (<= 0.70 of ``F.interpolate``) is not met.

    python bench/nearest_channels_last.py

At the benchmark's size (1 x 64 x 128 x 128 -> 256 x 256, float32, channels-
last) it times, in turns, the best of five medians of each:

1. the whole calls, ``ul.interpolate`` and ``F.interpolate``, each making a
   fresh 16 MiB output (the benchmark's row);
2. each side's loop alone, writing into one output kept between calls: ours
   (``nearest_forward_channels_last_cpu``) and PyTorch's kernel
   (``upsample_nearest2d`` with ``out=``).

and the page faults a call makes (``ru_minflt``). The loops' ratio is what
the kernel alone gains; the calls' ratio adds what both pay for a fresh
output (its 16 MiB written out to memory) and our host-side Python.
"""

from __future__ import annotations

import os
import resource
import statistics
import sys
import time

os.environ.setdefault("UPSAMPLELIB_QUIET", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import upsamplelib as ul  # noqa: E402
from upsamplelib.backend import pixels_array  # noqa: E402
from upsamplelib.ops.interpolate import nearest_forward_channels_last_cpu  # noqa: E402


def median_ms_and_faults(function, calls=40):
    function()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / calls


def main():
    torch.manual_seed(0)
    x = torch.randn(1, 64, 128, 128).contiguous(memory_format=torch.channels_last)
    kept = torch.empty(1, 64, 256, 256, memory_format=torch.channels_last)
    x_pixels, kept_pixels = pixels_array(x), pixels_array(kept)
    rows = np.repeat(np.arange(128), 2)[None].astype(np.int64)  # the axis table of x2 nearest (both axes)
    calls = {
        "ul.interpolate (fresh output)": lambda: ul.interpolate(x, scale_factor=2, mode="nearest", backend="cpu"),
        "F.interpolate (fresh output)": lambda: F.interpolate(x, scale_factor=2, mode="nearest"),
        "our loop (kept output)": lambda: nearest_forward_channels_last_cpu(x_pixels, kept_pixels, rows, rows),
        "PyTorch's kernel (kept output)": lambda: torch._C._nn.upsample_nearest2d(x, [256, 256], None, out=kept),
    }
    if not torch.equal(calls["ul.interpolate (fresh output)"](), calls["F.interpolate (fresh output)"]()):
        raise SystemExit("the two results differ")
    best = {name: (float("inf"), 0.0) for name in calls}
    for _ in range(5):
        for name, function in calls.items():
            ms, faults = median_ms_and_faults(function)
            if ms < best[name][0]:
                best[name] = (ms, faults)
    print(f"nearest x2, 1x64x128x128 channels-last, float32, {torch.get_num_threads()} threads")
    for name, (ms, faults) in best.items():
        print(f"  {name:<32} {ms:7.3f} ms  {faults:6.0f} page faults a call")
    (ours, _), (theirs, _), (our_loop, _), (their_loop, _) = best.values()
    print(f"  whole calls: ours / PyTorch = {ours / theirs:.3f}; loops alone: {our_loop / their_loop:.3f}")


if __name__ == "__main__":
    main()

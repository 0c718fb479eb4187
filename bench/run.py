"""Benchmarks: upsamplelib's kernels against their baselines, measured in the same run.

    make bench                     # everything
    python bench/run.py interpolate --repeat 30

Each line gives the median time of ours and of the baseline, and their ratio
(ours / baseline: below 1.0 means ours is faster). On a machine with a CUDA
GPU the CUDA kernels are measured too, against the same baseline on the GPU.
Timings are medians over --repeat runs after warm-up runs, so the first
call's compilation is not counted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("UPSAMPLELIB_QUIET", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import upsamplelib as ul  # noqa: E402

GPU = torch.cuda.is_available() and not ul.SIMULATOR


def median_ms(function, repeat: int, warmup: int = 3) -> float:
    """Median wall time of ``function()`` in milliseconds (GPU work included)."""
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeat):
        if GPU:
            torch.cuda.synchronize()
        start = time.perf_counter()
        function()
        if GPU:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def report(name: str, ours: float, baseline: float, baseline_name: str) -> None:
    print(f"{name:<44} ours {ours:9.3f} ms   {baseline_name} {baseline:9.3f} ms   ratio {ours / baseline:5.2f}")


def _backward(function, x):
    """A closure running only the backward of function(x) (graph built once)."""
    x = x.detach().requires_grad_()
    out = function(x)
    grad = torch.randn_like(out)
    return lambda: torch.autograd.grad(out, x, grad, retain_graph=True)


def bench_interpolate(repeat: int) -> None:
    print("== nearest / bilinear: 1x64x128x128 -> 256x256, float32 (baseline: F.interpolate)")
    devices = [("cpu", "cpu")] + ([("cuda", "cuda")] if GPU else [])
    for device, backend in devices:
        x = torch.randn(1, 64, 128, 128, device=device)
        for mode in ("nearest", "bilinear"):
            ours = lambda t, m=mode: ul.interpolate(t, scale_factor=2, mode=m, backend=backend)  # noqa: E731
            theirs = lambda t, m=mode: F.interpolate(t, scale_factor=2, mode=m)  # noqa: E731
            label = f"{mode} {backend}"
            report(f"{label} forward", median_ms(lambda: ours(x), repeat), median_ms(lambda: theirs(x), repeat),
                   f"torch-{device}")
            report(f"{label} backward", median_ms(_backward(ours, x), repeat),
                   median_ms(_backward(theirs, x), repeat), f"torch-{device}")


SUITES = {"interpolate": bench_interpolate}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("suites", nargs="*", help=f"any of {', '.join(SUITES)} (default: all)")
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args(argv)
    unknown = [name for name in args.suites if name not in SUITES]
    if unknown:
        parser.error(f"unknown suite(s) {', '.join(unknown)}; choose from {', '.join(SUITES)}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads; "
          f"CUDA: {torch.cuda.get_device_name() if GPU else 'none'}")
    for name in args.suites or SUITES:
        SUITES[name](args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Honest timing: warm-up, medians, GPU synchronisation, ratios within one run.

The helpers that ``bench/run.py`` (``make bench``) and lesson 07 share::

    from upsamplelib.timing import median_time, compare, copy_bandwidth, peak_extra_memory

* ``median_time(fn)``: the median wall time of ``fn()`` in seconds, after
  warm-up calls (the first call compiles), synchronising a GPU around each
  call so that queued kernels are counted;
* ``compare({"ours": f, "torch": g})``: several functions timed in
  interleaved rounds, so that a load change on a shared machine hits all of
  them alike; the best median of the rounds for each (ratios of these are
  what a benchmark should report, never times from different runs);
* ``copy_bandwidth(device)``: the machine's measured copy bandwidth (bytes
  read + written per second), the roof a memory-bound kernel is held to;
* ``peak_extra_memory(fn)``: the peak memory ``fn()`` allocates through
  PyTorch beyond what was allocated before it.
"""

from __future__ import annotations

import statistics
import time

import torch


def _synchronize(device) -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def median_time(fn, warmup: int = 3, repeats: int = 20, device=None, clock=time.perf_counter) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeats`` calls, after
    ``warmup`` calls that are not counted. ``device="cuda"`` synchronises
    before and after each call (a CUDA launch returns before its kernel
    ends); ``torch.cuda.Event`` timing gives the same on a GPU. ``clock``
    is replaceable so that a test can plan the durations."""
    if repeats < 1:
        raise ValueError(f"median_time: repeats must be at least 1, got {repeats}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _synchronize(device)
        start = clock()
        fn()
        _synchronize(device)
        times.append(clock() - start)
    return statistics.median(times)


def compare(functions: dict, warmup: int = 3, repeats: int = 10, rounds: int = 3, device=None) -> dict:
    """{name: seconds}: the best of ``rounds`` medians of each function,
    the functions taking turns round by round (a machine shared with other
    work slows a stretch of time, not one function)."""
    best = {name: float("inf") for name in functions}
    for round_ in range(rounds):
        for name, fn in functions.items():
            seconds = median_time(fn, warmup if round_ == 0 else 1, repeats, device)
            best[name] = min(best[name], seconds)
    return best


def copy_bandwidth(device="cpu", megabytes: int = 256, repeats: int = 10) -> float:
    """Measured copy bandwidth in bytes per second: a ``megabytes`` tensor
    copied into another, counting the bytes read and the bytes written.
    Large enough to leave the caches (256 MB against tens of MB of L3)."""
    source = torch.empty(megabytes * 2**20, dtype=torch.uint8, device=device)
    source.fill_(1)
    target = torch.empty_like(source)
    target.fill_(0)  # touch the pages first: page faults are not bandwidth
    seconds = median_time(lambda: target.copy_(source), warmup=2, repeats=repeats, device=device)
    return 2 * source.numel() / seconds


_LIBC = None


def _resident(key: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise OSError(f"no {key} in /proc/self/status")


def _return_free_memory() -> None:
    """Make glibc serve every allocation above 64 KiB with its own mmap and
    unmap it on free (by default it raises that threshold as a program
    frees large blocks, which then stay resident and hide later peaks), and
    hand back the free memory it holds now (malloc_trim)."""
    global _LIBC
    if _LIBC is None:
        import ctypes

        _LIBC = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        _LIBC.mallopt(M_MMAP_THRESHOLD, 1 << 16)
        _LIBC.mallopt(M_TRIM_THRESHOLD, 1 << 16)
    _LIBC.malloc_trim(0)


def peak_extra_memory(fn, device="cpu") -> float:
    """Peak bytes that ``fn()`` holds beyond what was in use before the call
    (its result included), or NaN where it cannot be measured.

    On a GPU: the CUDA caching allocator's peak (``max_memory_allocated``).
    On the CPU (Linux): the rise of the process's resident-set high-water
    mark, reset just before the call (``/proc/self/clear_refs``), with
    glibc told to map every large block afresh and unmap it on free, and
    to return what it holds free before the call, so that memory freed
    earlier does not hide the call's peak. This counts every page the
    call touches: PyTorch's tensors, Numba's scratch arrays, a compiler's
    memory (so call ``fn`` once before measuring), at page granularity."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return float(torch.cuda.max_memory_allocated() - before)
    try:
        _return_free_memory()
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # reset the high-water mark to the current resident set
        before = _resident("VmRSS:")
    except OSError:
        return float("nan")
    fn()
    return float(_resident("VmHWM:") - before)

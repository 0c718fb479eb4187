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
* ``peak_extra_memory(fn)``: the peak memory ``fn()`` holds beyond what
  was in use before it (on the CPU: every page it touches, PyTorch's and
  Numba's alike);
* ``page_faults_per_call(fn)``: how many pages of fresh memory each call
  faults in, a cost that timing a call includes and its kernel does not
  show;
* ``reuse_freed_memory()``: the allocator state of a long-running program
  (freed blocks reused, no page faults), for timings that a fresh process's
  page faults would otherwise decide.
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
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
# The largest thresholds glibc's own rule raises them to (64-bit), once the
# program has freed a block of 32 MiB: blocks up to that size then come from
# its heap and are reused without page faults.
GLIBC_MMAP_THRESHOLD_MAX, GLIBC_TRIM_THRESHOLD_MAX = 32 << 20, 64 << 20


def page_faults_per_call(fn, calls: int = 5, warmup: int = 1) -> float:
    """Minor page faults per call of ``fn()``, after ``warmup`` calls: each is a
    first write to a page the process had just mapped (about a microsecond,
    before the write itself). On Linux, glibc maps each block of 32 MiB or
    more anew on every allocation, so a call whose tensors are that large
    pays one per 4 KiB page each time (one per 2 MiB where transparent huge
    pages are always on). NaN where the OS does not count them (Windows)."""
    try:
        import resource
    except ImportError:
        return float("nan")
    for _ in range(warmup):
        fn()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(calls):
        fn()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / calls


def _glibc():
    global _LIBC
    if _LIBC is None:
        import ctypes

        _LIBC = ctypes.CDLL("libc.so.6")
    return _LIBC


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
    libc = _glibc()
    libc.mallopt(M_MMAP_THRESHOLD, 1 << 16)
    libc.mallopt(M_TRIM_THRESHOLD, 1 << 16)
    libc.malloc_trim(0)


def reuse_freed_memory() -> bool:
    """Make glibc reuse freed blocks up to 32 MiB from now on, in this
    process: the state a long-running program (a training loop, ``make
    bench`` after its first large cases) reaches by itself once it has
    freed a block that large. Before it, a new process maps each tensor
    above glibc's moving threshold afresh and page-faults it in on every
    call, a cost that can outweigh the kernel's (a fresh process timed the
    NCHW transposed convolution of ``bench/conv_layouts.py`` at 4.5 ms, a
    warm one at 2.2). glibc has no way back to its moving threshold once
    one is set, so this sets the largest value it moves to. False where
    there is no glibc (macOS, Windows): nothing changed."""
    try:
        libc = _glibc()
    except OSError:
        return False
    libc.mallopt(M_MMAP_THRESHOLD, GLIBC_MMAP_THRESHOLD_MAX)
    libc.mallopt(M_TRIM_THRESHOLD, GLIBC_TRIM_THRESHOLD_MAX)
    return True


def peak_extra_memory(fn, device="cpu") -> float:
    """Peak bytes that ``fn()`` holds beyond what was in use before the call
    (its result included), or NaN where it cannot be measured.

    On a GPU: the CUDA caching allocator's peak (``max_memory_allocated``).
    On the CPU (Linux): the rise of the process's resident-set high-water
    mark, reset just before the call (``/proc/self/clear_refs``), with
    glibc told to map every large block afresh and unmap it on free, and
    to return what it holds free before the call, so that memory freed
    earlier does not hide the call's peak. This counts every page the call
    touches: PyTorch's tensors, Numba's scratch arrays, a compiler's memory
    (so call ``fn`` once before measuring), at page granularity.

    Afterwards glibc reuses freed blocks up to 32 MiB. It cannot go back to
    its default, which moves its threshold with the blocks a program frees
    and keeps mapping the largest blocks afresh (a page fault per 4 KiB on
    each first write), so timings taken later in the same process can pay
    fewer page faults than they would in a fresh one: measure memory after
    timing, or in another process, as ``make bench`` does."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return float(torch.cuda.max_memory_allocated() - before)
    try:
        _return_free_memory()
    except OSError:  # no glibc (macOS, Windows)
        return float("nan")
    try:
        try:
            with open("/proc/self/clear_refs", "w") as clear:
                clear.write("5")  # reset the high-water mark to the current resident set
            before = _resident("VmRSS:")
        except OSError:
            return float("nan")
        fn()
        return float(_resident("VmHWM:") - before)
    finally:
        # Left at 64 KiB, every later tensor above it would be mapped afresh and page-faulted in
        # (a 4 MB CARAFE output took about 1,000 faults a call).
        reuse_freed_memory()

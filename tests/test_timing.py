"""upsamplelib.timing: the helpers make bench and lesson 07 time with.
Planned clocks stand in for real time; memory is checked in pages."""

import itertools
import os
import subprocess
import sys

import pytest
import torch

from upsamplelib.timing import compare, median_time, page_faults_per_call, peak_extra_memory

LINUX = sys.platform.startswith("linux")


def test_median_time_skips_the_warmup_and_takes_the_median():
    ticks = itertools.count()
    durations = iter([5.0, 1.0, 9.0])  # one duration per timed call
    calls = []
    now = [0.0]

    def clock():
        # start, stop, start, stop, ...: each stop adds that call's duration
        if next(ticks) % 2:
            now[0] += next(durations)
        return now[0]

    assert median_time(lambda: calls.append(1), warmup=2, repeats=3, clock=clock) == 5.0
    assert len(calls) == 5


def test_median_time_needs_a_timed_call():
    with pytest.raises(ValueError, match="repeats"):
        median_time(lambda: None, repeats=0)


def test_compare_interleaves_the_functions_round_by_round():
    order = []
    compare({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, warmup=1, repeats=2, rounds=2)
    # round 1: warm-up + 2 timed calls each; later rounds: 1 warm-up + 2 timed
    assert order == ["a"] * 3 + ["b"] * 3 + ["a"] * 3 + ["b"] * 3


@pytest.mark.skipif(not LINUX, reason="the resident-set high-water mark is read from /proc (Linux)")
def test_peak_extra_memory_counts_what_the_call_holds():
    peak = peak_extra_memory(lambda: torch.ones(16 << 20))  # 64 MiB of float32, every page written
    assert 60 << 20 < peak < 80 << 20
    freed_before = torch.ones(16 << 20)
    del freed_before  # memory glibc holds free must not hide the next call's peak
    assert 60 << 20 < peak_extra_memory(lambda: torch.ones(16 << 20)) < 80 << 20


@pytest.mark.skipif(not LINUX, reason="glibc's allocator and getrusage's page-fault count (Linux)")
def test_peak_extra_memory_leaves_freed_blocks_to_be_reused():
    """Measuring sets glibc to map every large block afresh; left so, every
    later 4 MB tensor would cost about 1,000 page faults (and the timings
    that follow a memory measurement would count them)."""
    peak_extra_memory(lambda: torch.ones(16))
    # 4 MiB, freed at once; glibc places the first few blocks anew while its free lists settle
    assert page_faults_per_call(lambda: torch.ones(1 << 20), calls=20, warmup=10) < 100


@pytest.mark.skipif(not LINUX, reason="glibc's allocator and getrusage's page-fault count (Linux)")
def test_reuse_freed_memory_ends_the_page_faults_of_a_large_tensor_each_call():
    """The state bench/conv_layouts.py times its second tables in: with glibc
    mapping every block above 64 KiB afresh, each 4 MiB tensor faults its
    1,024 pages in; after reuse_freed_memory, a freed one is reused. In a
    fresh process: one whose heap holds large free blocks already reuses
    them whatever the threshold."""
    script = (
        "import torch\n"
        "from upsamplelib import timing\n"
        "timing._return_free_memory()\n"
        "make = lambda: torch.ones(1 << 20)\n"
        "before = timing.page_faults_per_call(make, calls=5)\n"
        "reused = timing.reuse_freed_memory()\n"
        "print(before, reused, timing.page_faults_per_call(make, calls=20, warmup=10))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "UPSAMPLELIB_QUIET": "1"})
    assert result.returncode == 0, result.stderr
    before, reused, after = result.stdout.split()
    pages = (1 << 20) * 4 // 4096
    assert float(before) >= 0.9 * pages and reused == "True" and float(after) < 100, result.stdout


def _huge_pages_always():
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as setting:
            return "[always]" in setting.read()
    except OSError:
        return False


@pytest.mark.skipif(not LINUX or _huge_pages_always(),
                    reason="glibc's mapping of large blocks in 4 KiB pages (Linux, transparent huge pages not always on)")
def test_page_faults_per_call_counts_fresh_memory():
    """A 40 MB tensor is mapped anew on each allocation: about one fault per
    4 KiB page each call; a call that allocates nothing faults nothing."""
    pages = 10 * 2**20 * 4 // 4096
    assert page_faults_per_call(lambda: torch.ones(10 * 2**20)) >= 0.9 * pages
    kept = torch.zeros(1000)
    assert page_faults_per_call(lambda: kept.add_(1)) < 10

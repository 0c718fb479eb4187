"""The checkers pass right answers, and explain wrong ones."""

import threading
import time

import numpy as np
import pytest
from numba import cuda

from upsamplelib import backend as ul_backend
from upsamplelib import checkers

# The hung-kernel test ends simulator threads with SystemExit, which pytest
# (unlike Python's default thread hook) reports as a warning.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")


@cuda.jit
def good_scale(x, out, factor):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = x[i] * factor


@cuda.jit
def unguarded_scale(x, out, factor):
    i = cuda.grid(1)
    out[i] = x[i] * factor


@cuda.jit
def off_by_one_scale(x, out, factor):
    i = cuda.grid(1)
    if 0 < i < out.size:
        out[i] = x[i] * factor


@cuda.jit
def never_ends(x, out, factor):
    i = cuda.grid(1)
    j = 0
    while j < 10:
        if i < out.size:
            out[i] = factor


def test_pass_prints_one_line(capsys):
    checkers.check_scale_kernel(good_scale)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("PASS scale_kernel")
    if ul_backend.SIMULATOR:  # the counted case: one load of x per output
        assert lines[0].endswith("; 1.00 global loads per output)")


@pytest.mark.skipif(not ul_backend.SIMULATOR, reason="only the simulator catches writes past the end")
def test_missing_bounds_guard_gets_a_hint():
    with pytest.raises(checkers.CheckFailed, match="if i < out.size"):
        checkers.check_scale_kernel(unguarded_scale)


def test_first_mismatch_is_reported_with_expected_and_got():
    with pytest.raises(checkers.CheckFailed, match=r"First mismatch at index \(0,\): expected .*, got nan"):
        checkers.check_scale_kernel(off_by_one_scale)


def test_hung_kernel_is_reported_not_waited_on():
    before = set(threading.enumerate())
    start = time.monotonic()
    with pytest.raises(checkers.KernelTimeout, match="did not finish within 2 s"):
        checkers.launch_student_kernel(never_ends, (1, 32), np.zeros(4, np.float32), np.zeros(4, np.float32),
                                       np.float32(1), timeout=2)
    assert time.monotonic() - start < 10
    # No thread of the hung kernel is left spinning: one would slow every later test.
    assert [t for t in threading.enumerate() if t not in before and t.is_alive()] == []


def test_unsolved_exercise_reports_not_implemented():
    def launch_config(n, threads_per_block):
        raise NotImplementedError("Exercise 00.2: write this part")

    with pytest.raises(NotImplementedError, match="Exercise 00.2"):
        checkers.check_launch_config(launch_config)


def test_wrong_launch_config_is_explained():
    with pytest.raises(checkers.CheckFailed, match="round up"):
        checkers.check_launch_config(lambda n, t: (n // t, t))
    with pytest.raises(checkers.CheckFailed, match="no work"):
        checkers.check_launch_config(lambda n, t: (n // t + 1, t))


def test_nearest_index_checker_catches_float64_index_math():
    from upsamplelib.checkers.nearest import check_nearest_index

    def float64_rule(dst, in_size, out_size):
        return min(int(np.floor(dst * in_size / out_size)), in_size - 1)

    with pytest.raises(checkers.CheckFailed, match="float32"):
        check_nearest_index(float64_rule)


def test_nearest_index_checker_passes_the_library_rule(capsys):
    from upsamplelib.checkers.nearest import _reference_index, check_nearest_index

    check_nearest_index(lambda d, i, o: _reference_index(d, i, o, False))
    assert capsys.readouterr().out.startswith("PASS nearest_index")


def test_unsolved_kernel_is_reported_from_its_source_on_any_target():
    @cuda.jit
    def unsolved(x, out, factor):
        raise NotImplementedError("Exercise 00.1: write this part")

    with pytest.raises(NotImplementedError, match="Exercise 00.1"):
        checkers.check_scale_kernel(unsolved)


def test_a_checked_function_runs_in_the_callers_grad_mode():
    # The student's function runs in a worker thread, and grad mode is per
    # thread: a checker's torch.no_grad() must still hold there.
    import torch

    leaf = torch.ones(2, requires_grad=True)
    with torch.no_grad():
        assert not checkers.run_with_timeout(lambda: leaf * 2, what="function").requires_grad
    assert checkers.run_with_timeout(lambda: leaf * 2, what="function").requires_grad

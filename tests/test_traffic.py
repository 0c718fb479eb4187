"""upsamplelib.traffic counts every thread's loads and stores exactly, on
either simulator, one launch at a time; and the checkers' PTX compile of a
student's kernel says what a GPU compiler says."""

import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from numba import cuda, float32

from upsamplelib import backend, traffic
from upsamplelib.checkers import ptx

matplotlib.use("Agg")
ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(not backend.SIMULATOR, reason="the counters run in the simulator")


@cuda.jit
def window_sum(x, out):
    i = cuda.grid(1)
    if i < out.size:
        total = x[i]
        if i > 0:
            total += x[i - 1]
        if i + 1 < x.size:
            total += x[i + 1]
        out[i] = total


@cuda.jit
def two_shared_arrays(x, out):
    first = cuda.shared.array(4, float32)
    second = cuda.shared.array(4, float32)
    t = cuda.threadIdx.x
    i = cuda.grid(1)
    first[t] = x[i]
    second[t] = 10 * x[i]
    cuda.syncthreads()
    out[i] = first[3 - t] + second[t]


@cuda.jit
def histogram(values, counts):
    i = cuda.grid(1)
    if i < values.size:
        cuda.atomic.add(counts, values[i], 1)


@cuda.jit
def half_atomic(values, counts):
    i = cuda.grid(1)
    if i < values.size:
        if i % 2 == 0:
            cuda.atomic.add(counts, values[i], 1)
        else:
            counts[values[i]] += 1


@cuda.jit
def rows(image, out):
    col, row = cuda.grid(2)
    if row < out.shape[0] and col < out.shape[1]:
        line = image[row]  # a row view: its element reads still count
        out[row, col] = line[col] + line[0]


def test_global_loads_and_stores_per_thread():
    x = np.arange(12, dtype=np.float32)
    out = np.zeros_like(x)
    report = traffic.count(window_sum, 2, 8, x, out)
    assert out.tolist() == [x[max(i - 1, 0):i + 2].sum() for i in range(12)]
    assert report.global_loads.shape == (2, 8)
    assert report.global_loads.tolist() == [[2, 3, 3, 3, 3, 3, 3, 3], [3, 3, 3, 2, 0, 0, 0, 0]]
    assert report.global_stores.tolist() == [[1] * 8, [1] * 4 + [0] * 4]
    assert report.totals == {"global_loads": 34, "global_stores": 12, "global_atomics": 0, "shared_loads": 0,
                             "shared_stores": 0, "shared_atomics": 0}
    assert report.loads_per_output(12) == pytest.approx(34 / 12)
    assert report.array("x").loads == 34 and report.array("out").stores == 12
    assert (report.array("out").writes == 1).all()
    assert "34 global loads" in report.summary(12)


def test_each_shared_array_is_its_own_and_counted():
    x = np.arange(8, dtype=np.float32)
    out = np.zeros_like(x)
    report = traffic.count(two_shared_arrays, 2, 4, x, out)
    expected = [x[4 * (i // 4) + 3 - i % 4] + 10 * x[i] for i in range(8)]
    assert out.tolist() == expected
    assert report.shared_stores.tolist() == [[2] * 4] * 2
    assert report.shared_loads.tolist() == [[2] * 4] * 2
    assert report.global_loads.tolist() == [[2] * 4] * 2  # x[i] twice
    assert {name for name in report.arrays if name.startswith("shared")} == {"shared array 1", "shared array 2"}


def test_atomics_are_stores_and_marked():
    values = np.array([0, 1, 1, 2, 1, 0, 2, 2, 2], np.int64)
    counts = np.zeros(3, np.int64)
    report = traffic.count(histogram, 1, 16, values, counts)
    assert counts.tolist() == [2, 3, 4]
    assert report.totals["global_atomics"] == 9 and report.totals["global_stores"] == 9
    assert report.totals["global_loads"] == 9  # values[i]; the atomic's own read is not the thread's
    assert report.array("counts").writes.tolist() == [2, 3, 4]
    assert report.array("counts").plain_writes.sum() == 0
    counts[:] = 0
    report = traffic.count(half_atomic, 1, 16, values, counts)
    assert report.array("counts").plain_writes.sum() == 4  # the odd threads
    assert report.totals["global_atomics"] == 5


def test_a_two_dimensional_launch_and_row_views():
    image = np.arange(15, dtype=np.float32).reshape(3, 5)
    out = np.zeros_like(image)
    report = traffic.count(rows, (2, 1), (4, 4), image, out)
    assert (out == image + image[:, :1]).all()
    assert report.global_loads.shape == (2, 1, 4, 4)  # (blocks x, blocks y, threads x, threads y)
    assert report.totals["global_loads"] == 30 and report.totals["global_stores"] == 15
    picture = report.per_thread_map("global_loads")
    assert picture.shape == (4, 8)  # rows: global y, columns: global x
    assert picture[:3, :5].tolist() == [[2] * 5] * 3 and picture[3].sum() == 0 and picture[:, 5:].sum() == 0


def test_draw_returns_the_picture():
    x = np.arange(12, dtype=np.float32)
    report = traffic.count(window_sum, 2, 8, x, np.zeros_like(x))
    axis = report.draw()
    assert "34 loads" in axis.get_title()
    assert len(axis.texts) == 16 and axis.texts[0].get_text() == "2/1"
    import matplotlib.pyplot as plt

    plt.close(axis.figure)


def test_counts_from_several_threads_at_once():
    """Simulated launches keep their threads' state in globals: counting from
    four threads at once must give each its own exact counts."""
    results, errors = [], []

    def work(n):
        try:
            x = np.arange(n, dtype=np.float32)
            out = np.zeros_like(x)
            report = traffic.count(window_sum, 2, 16, x, out)
            results.append((n, report.totals["global_loads"], out.sum() == 3 * x.sum() - x[0] - x[-1]))
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(n,)) for n in (20, 24, 28, 32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert sorted(results) == [(n, 3 * n - 2, True) for n in (20, 24, 28, 32)]


def test_a_hung_kernel_times_out_and_the_counters_are_removed():
    from upsamplelib.checkers import KernelTimeout
    from numba.cuda.simulator import kernelapi

    @cuda.jit
    def spins(out):
        while out[0] == 0:
            pass

    before = kernelapi.FakeCUDAShared.array
    with pytest.raises(KernelTimeout):
        traffic.count(spins, 1, 2, np.zeros(1, np.float32), timeout=1)
    assert kernelapi.FakeCUDAShared.array is before
    x = np.arange(12, dtype=np.float32)
    assert traffic.count(window_sum, 2, 8, x, np.zeros_like(x)).totals["global_loads"] == 34


def _python(code, env=None):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env=env)


def test_numbas_own_simulator_counts_the_same():
    """CUDA=none: numba's built-in simulator (numba-cuda hidden), and the PTX
    check skipped without a word."""
    result = _python("""
        import sys
        sys.modules["numba_cuda"] = None  # numba.cuda is then numba's own
        import warnings; warnings.simplefilter("ignore")
        import numpy as np
        import upsamplelib
        from upsamplelib import backend, checkers, traffic
        from numba import cuda
        assert backend.CUDA_PROVIDER == "numba", backend.CUDA_PROVIDER

        @cuda.jit
        def copy(x, out):
            tile = cuda.shared.array(4, np.float32)
            i = cuda.grid(1)
            if i < out.size:
                tile[cuda.threadIdx.x] = x[i]
                out[i] = tile[cuda.threadIdx.x]

        x = np.arange(6, dtype=np.float32)
        report = traffic.count(copy, 2, 4, x, np.zeros_like(x))
        print(report.totals["global_loads"], report.totals["shared_loads"], report.totals["global_stores"])

        @cuda.jit
        def scale_kernel(x, out, factor):
            i = cuda.grid(1)
            if i < out.size:
                out[i] = x[i] * factor
        checkers.check_scale_kernel(scale_kernel)
    """)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert "6 6 6" in lines
    assert lines[-1].startswith("PASS scale_kernel")


def test_counts_on_a_machine_with_a_gpu_run_in_the_simulator():
    """Where kernels run on a GPU (forced here: UPSAMPLELIB_CUDA=gpu, no GPU
    needed), count() still runs the kernel's Python in the simulator."""
    import os

    env = dict(os.environ, UPSAMPLELIB_CUDA="gpu")
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    result = _python("""
        import numpy as np
        from upsamplelib import backend, traffic
        from numba import cuda
        assert not backend.SIMULATOR

        @cuda.jit
        def double(x, out):
            i = cuda.grid(1)
            if i < out.size:
                out[i] = 2 * x[i]

        x = np.arange(5, dtype=np.float32)
        out = np.zeros_like(x)
        report = traffic.count(double, 1, 8, x, out)
        print(report.totals["global_loads"], out.tolist())
    """, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == "5 [0.0, 2.0, 4.0, 6.0, 8.0]"


# --------------------------------------------------------------------------
# The PTX check of a student's kernel
# --------------------------------------------------------------------------

needs_ptx = pytest.mark.skipif(not ptx.compiler_available(), reason="no PTX compiler (numba-cuda not installed)")

TILE = 4


@cuda.jit
def uses_a_constant_and_a_helper(x, out):
    tile = cuda.shared.array(TILE, float32)
    i = cuda.grid(1)
    tile[cuda.threadIdx.x] = x[i] if i < x.size else 0
    cuda.syncthreads()
    if i < out.size:
        out[i] = twice(tile[cuda.threadIdx.x])


@cuda.jit(device=True)
def twice(value):
    return 2 * value


@cuda.jit
def float_index(x, out):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = x[i / 1]


@needs_ptx
def test_the_source_sent_holds_helpers_and_constants():
    source, name = ptx.module_source(uses_a_constant_and_a_helper)
    assert name == "uses_a_constant_and_a_helper"
    assert "TILE = 4" in source and "def twice(value)" in source and "cuda.jit(device=True)" in source
    x = np.zeros(8, np.float32)
    assert ptx.compile_error(uses_a_constant_and_a_helper, (x, x)) is None


@needs_ptx
def test_a_kernel_the_gpu_rejects_gets_the_compilers_reason_once():
    x = np.zeros(8, np.float32)
    reason = ptx.compile_error(float_index, (x, x))
    assert reason is not None and "getitem(array(float32, 1d, C), float64)" in reason
    with pytest.raises(ptx.CheckFailed, match=r"GPU compiler rejects.*\n.*int\(math\.floor"):
        ptx.require_compiles(float_index, (x, x), "float_index")
    # cached by source and types: the same request is answered from the cache
    assert ptx.submit(float_index, (x, x)) is ptx.submit(float_index, (x, x))


@cuda.jit(device=True)
def halve_at(x, i):
    return x[i / 2]


@cuda.jit
def float_index_in_a_helper(x, out):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = halve_at(x, i)


@cuda.jit
def numpy_square_root(x, out):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = np.sqrt(x[i])


@needs_ptx
def test_a_mistake_in_a_device_function_is_caught():
    """Compiling a kernel that calls a device function needs "the current
    device"; the worker has no GPU, so the compile target stands in (before,
    the driver error skipped the check)."""
    x = np.zeros(8, np.float32)
    reason = ptx.compile_error(float_index_in_a_helper, (x, x))
    assert reason is not None and "float64" in reason


@needs_ptx
def test_a_numpy_ufunc_in_a_kernel_is_caught_with_the_math_module_as_hint():
    x = np.zeros(8, np.float32)
    with pytest.raises(ptx.CheckFailed, match=r"np\.sqrt has no GPU version here.*\n.*math\.sqrt"):
        ptx.require_compiles(numpy_square_root, (x, x), "numpy_square_root")


WEIGHTS = np.array([0.25, 0.5, 0.25], np.float32)


@cuda.jit
def uses_a_global_array(x, out):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = WEIGHTS[i % 3] * x[i]


@needs_ptx
def test_a_global_array_is_a_constant_on_the_gpu_too():
    x = np.zeros(8, np.float32)
    assert ptx.compile_error(uses_a_global_array, (x, x)) is None

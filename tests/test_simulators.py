"""Two CUDA simulators can run the kernels: numba-cuda's (``make setup``,
CUDA=cu13/cu12) and the one built into numba itself (CUDA=none, macOS). They
are separate code (numba-cuda's is a later fork of numba's), so what the
library, the lessons and the checkers rely on is tested here on whichever
one this environment has, with the same expected results for both; CI runs
this file on both (the default job and the CUDA=none job)."""

import math
import os
import threading
import time

import numpy as np
import pytest
from numba import cuda

from upsamplelib import backend

pytestmark = pytest.mark.skipif(not backend.SIMULATOR, reason="these probe the CUDA simulator; kernels run on a GPU")


def test_the_simulator_is_the_one_the_install_chose():
    """make test exports the toolkit it installed: CUDA=none must really run
    on numba's built-in simulator (and the others on numba-cuda's), or the
    CUDA=none job would test nothing new."""
    toolkit = os.environ.get("UPSAMPLELIB_TOOLKIT")
    if toolkit is None:
        pytest.skip("UPSAMPLELIB_TOOLKIT is not set (it is under make test)")
    assert backend.CUDA_PROVIDER == ("numba" if toolkit == "none" else "numba-cuda")
    where = os.path.normpath(cuda.__file__).split(os.sep)
    assert ("numba_cuda" in where) == (toolkit != "none")


def test_thread_and_block_indices_in_three_dimensions():
    @cuda.jit
    def where_am_i(out):
        x, y, z = cuda.grid(3)
        if x < out.shape[0] and y < out.shape[1] and z < out.shape[2]:
            out[x, y, z, 0] = cuda.threadIdx.x + 10 * cuda.blockIdx.x
            out[x, y, z, 1] = cuda.threadIdx.y + 10 * cuda.blockIdx.y
            out[x, y, z, 2] = cuda.threadIdx.z + 10 * cuda.blockIdx.z
            out[x, y, z, 3] = cuda.blockDim.x * cuda.gridDim.x

    out = np.full((5, 3, 2, 4), -1, dtype=np.int64)
    where_am_i[(3, 2, 1), (2, 2, 2)](out)
    x, y, z = np.meshgrid(np.arange(5), np.arange(3), np.arange(2), indexing="ij")
    assert (out[..., 0] == x % 2 + 10 * (x // 2)).all()
    assert (out[..., 1] == y % 2 + 10 * (y // 2)).all()
    assert (out[..., 2] == z).all()
    assert (out[..., 3] == 6).all()


def test_grid_stride_loop_with_gridsize():
    @cuda.jit
    def fill(out):
        start, stride = cuda.grid(1), cuda.gridsize(1)
        for i in range(start, out.size, stride):
            out[i] = i * 2

    out = np.zeros(100, dtype=np.float32)
    fill[2, 8](out)
    assert (out == np.arange(100) * 2).all()


def test_shared_memory_and_barriers():
    """A 2-D shared tile with a barrier between write and read (the tiled
    kernels of lessons 03 and 04)."""
    tile = 4

    @cuda.jit
    def transpose_in_block(x, out):
        shared = cuda.shared.array((tile, tile), dtype=np.float32)
        i, j = cuda.threadIdx.x, cuda.threadIdx.y
        shared[i, j] = x[i, j]
        cuda.syncthreads()
        out[i, j] = shared[j, i]

    x = np.arange(16, dtype=np.float32).reshape(4, 4)
    out = np.zeros_like(x)
    transpose_in_block[1, (tile, tile)](x, out)
    assert (out == x.T).all()


def test_the_threads_of_a_block_share_one_shared_array_when_a_thread_switch_comes_as_it_is_made(monkeypatch):
    """The simulator makes a block's shared array when the first thread asks
    for it: without a lock, a thread switch between its look-up and its store
    (forced here by a sleep in np.empty) gave each thread its own array, and
    a right kernel read uninitialised memory (a checker once failed a right
    SAPA block kernel on a nan this way). Two arrays made on two lines stay
    two, over two blocks."""

    @cuda.jit
    def sums_of_the_block(out):
        values = cuda.shared.array(8, np.float64)
        squares = cuda.shared.array(8, np.float64)
        lane = cuda.threadIdx.x
        values[lane] = lane + 1 + 100 * cuda.blockIdx.x
        squares[lane] = values[lane] * values[lane]
        cuda.syncthreads()
        total = 0.0
        total_of_squares = 0.0
        for i in range(8):
            total += values[i]
            total_of_squares += squares[i]
        out[cuda.blockIdx.x, lane, 0] = total
        out[cuda.blockIdx.x, lane, 1] = total_of_squares

    empty = np.empty

    def empty_after_a_thread_switch(*args, **kwargs):
        time.sleep(0.002)
        return empty(*args, **kwargs)

    out = np.zeros((2, 8, 2))
    monkeypatch.setattr(np, "empty", empty_after_a_thread_switch)
    sums_of_the_block[2, 8](out)
    monkeypatch.undo()
    values = np.arange(1, 9) + 100 * np.arange(2)[:, None]
    assert (out[..., 0] == values.sum(1)[:, None]).all()
    assert (out[..., 1] == (values.astype(np.float64) ** 2).sum(1)[:, None]).all()


def test_local_arrays():
    @cuda.jit
    def reversed_rows(x, out):
        row = cuda.grid(1)
        if row < x.shape[0]:
            scratch = cuda.local.array(5, dtype=np.float64)
            for k in range(5):
                scratch[k] = x[row, k]
            for k in range(5):
                out[row, k] = scratch[4 - k]

    x = np.random.default_rng(0).random((7, 5))
    out = np.zeros_like(x)
    reversed_rows[1, 8](x, out)
    assert (out == x[:, ::-1]).all()



def test_recorded_launches_fill_local_arrays_with_garbage():
    """Lesson 07's access record starts float local arrays at LOCAL_GARBAGE,
    on both simulators (numba's own local.array takes no alignment: every
    recorded kernel with a local array raised TypeError there)."""
    from upsamplelib.checkers import performance

    @cuda.jit
    def first_of_a_local_array(out):
        scratch = cuda.local.array(3, np.float32)
        out[cuda.grid(1)] = scratch[0]

    out = np.zeros(4, np.float32)
    performance.record_kernel(first_of_a_local_array, (1, 4), out)
    assert (out == np.float32(performance.LOCAL_GARBAGE)).all()

def test_atomic_add_returns_the_old_value_and_loses_no_update():
    @cuda.jit
    def count(total, olds):
        i = cuda.grid(1)
        if i < olds.size:
            olds[i] = cuda.atomic.add(total, 0, 1.0)

    total, olds = np.zeros(1, dtype=np.float32), np.full(96, -1, dtype=np.float32)
    count[3, 32](total, olds)
    assert total[0] == 96
    assert sorted(olds) == list(range(96))  # each thread saw a different old value


def test_float32_arithmetic_stays_float32():
    """The simulator computes on NumPy scalars, so float32 inputs round as
    float32, as on a GPU (the exactness claims of lessons 01-02 need it)."""
    @cuda.jit
    def third(x, out):
        i = cuda.grid(1)
        if i < x.size:
            out[i] = x[i] / np.float32(3) * np.float32(3)

    x = np.array([1, 2, 5, 7], dtype=np.float32)
    out = np.zeros_like(x)
    third[1, 4](x, out)
    assert (out == x / np.float32(3) * np.float32(3)).all()


def test_math_floor_returns_an_int():
    """The checkers' hint (engine.FLOAT_INDEX_HINT) says so: a float index
    that a GPU compiler refuses works in either simulator."""
    @cuda.jit
    def floor_type(x, out):
        out[0] = 1 if isinstance(math.floor(x[0]), int) else 0

    out = np.zeros(1, dtype=np.int64)
    floor_type[1, 1](np.array([2.5]), out)
    assert out[0] == 1


def test_writing_past_the_end_is_an_index_error_naming_the_thread():
    """checkers.engine.launch_checked turns this IndexError into a hint."""
    @cuda.jit
    def off_by_one(out):
        i = cuda.grid(1)
        out[i] = 1.0  # no bounds guard: the threads past out.size overflow

    with pytest.raises(IndexError, match=r"tid=\[\d+, 0, 0\] ctaid=\[\d+, 0, 0\]"):
        off_by_one[1, 8](np.zeros(5))


def test_device_arrays_round_trip():
    x = np.arange(6, dtype=np.float32)
    device = cuda.to_device(x)
    assert (device.copy_to_host() == x).all()
    assert cuda.is_available()  # the simulator reports itself available


def test_syncthreads_is_a_method_the_checkers_can_count():
    """checkers.sapa counts barrier calls by wrapping
    numba.cuda.simulator.kernel.BlockThread.syncthreads."""
    from numba.cuda.simulator.kernel import BlockThread

    calls = []
    original = BlockThread.syncthreads

    def counted(self):
        calls.append(tuple(self.threadIdx))
        return original(self)

    @cuda.jit
    def two_barriers(out):
        cuda.syncthreads()
        cuda.syncthreads()
        out[cuda.threadIdx.x] = 1

    BlockThread.syncthreads = counted
    try:
        two_barriers[1, 4](np.zeros(4))
    finally:
        BlockThread.syncthreads = original
    assert sorted(calls) == sorted([(t, 0, 0) for t in range(4)] * 2)


def test_the_kernel_module_is_restored_after_a_launch():
    """A launch swaps the kernel module's ``cuda`` for a fake one and puts it
    back; a failed launch must put it back too."""
    @cuda.jit
    def fails(out):
        out[100] = 1

    with pytest.raises(IndexError):
        fails[1, 1](np.zeros(1))
    assert globals()["cuda"] is cuda


def test_launches_from_two_threads_are_serialised():
    """backend.launch holds a lock in the simulator. Neither simulator runs
    two kernels at once; they fail differently (measured, 5 of 5 tries of 4
    threads each without the lock: numba's built-in one raises "concurrent
    simulated kernel not supported", numba-cuda's "'Thread' object has no
    attribute 'blockIdx'")."""
    @cuda.jit
    def write_index(out):
        i = cuda.grid(1)
        if i < out.size:
            out[i] = i

    outputs = [np.zeros(200, dtype=np.int64) for _ in range(4)]
    workers = [threading.Thread(target=backend.launch, args=(write_index, 200, out)) for out in outputs]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    for out in outputs:
        assert (out == np.arange(200)).all()

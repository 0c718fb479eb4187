"""Memory-traffic counters: how often each thread of a kernel reads and
writes memory, measured in Numba's CUDA simulator (no GPU needed).

    from upsamplelib import traffic

    report = traffic.count(kernel, griddim, blockdim, *args)
    report.global_loads        # per-thread counts, shape grid x block (see below)
    report.totals              # {"global_loads": 1234, "global_stores": 96, ...}
    report.loads_per_output(out.size)
    report.array("out").writes # how often each element of `out` was written
    report.draw()              # per-thread reads and writes of a small launch

A kernel's speed on a GPU is mostly set by its memory traffic: a thread that
reads an input pixel nine times from global memory is slower than one that
reads it once into shared memory and nine times from there. The simulator
runs every thread as Python, so the traffic can be counted exactly: the
arrays handed to the kernel are wrapped in counting proxies, and
``cuda.shared.array`` returns counting proxies too.

What is counted, per thread:

``global_loads`` / ``global_stores``
    reads and writes of one element of an array argument (a global-memory
    array). An atomic (``cuda.atomic.add``, ...) counts as one store, and in
    ``global_atomics`` too; the read inside an atomic is not a load of the
    thread (the memory system does it).
``shared_loads`` / ``shared_stores``
    the same for arrays made with ``cuda.shared.array`` (atomics on them
    count in ``shared_atomics``).

Reading ``x.shape`` or ``x.size`` is not a memory access and is not counted.
Registers and ``cuda.local.array`` are not counted.

The per-thread arrays have the launch's shape in CUDA's order, the grid
first: ``(blocks_x, threads_x)`` for a 1-D launch, ``(blocks_x, blocks_y,
threads_x, threads_y)`` for a 2-D one, and so on; so
``report.global_loads[b, t]`` is thread ``t`` of block ``b``.

The count runs in the simulator even on a machine with a GPU (the kernel's
Python function is run by the simulator there), one launch at a time
(``backend.SIMULATOR_LOCK``), under a timeout like the checkers' launches.
It works with numba-cuda's simulator and with the one built into numba.
"""

from __future__ import annotations

import inspect
import sys
import threading
from dataclasses import dataclass, field

import numpy as np

from . import backend

__all__ = ["count", "run_counted", "TrafficReport", "ArrayTraffic", "COUNTERS"]

#: The per-thread counters of a report, in the order ``totals`` lists them.
COUNTERS = ("global_loads", "global_stores", "global_atomics", "shared_loads", "shared_stores", "shared_atomics")


@dataclass
class ArrayTraffic:
    """The traffic of one array argument (or one shared array)."""

    name: str
    loads: int = 0
    stores: int = 0
    atomics: int = 0
    #: how many times each element was written (plain stores and atomics)
    writes: np.ndarray | None = None
    #: how many times each element was written by a plain (non-atomic) store
    plain_writes: np.ndarray | None = None
    #: whether each element was written by more than one thread
    shared_writes: np.ndarray | None = None


@dataclass
class TrafficReport:
    """What ``count`` measured. Per-thread arrays have shape grid x block."""

    griddim: tuple
    blockdim: tuple
    global_loads: np.ndarray
    global_stores: np.ndarray
    global_atomics: np.ndarray
    shared_loads: np.ndarray
    shared_stores: np.ndarray
    shared_atomics: np.ndarray
    #: the kernel's array arguments, by parameter name, in argument order
    arrays: dict = field(default_factory=dict)

    @property
    def totals(self) -> dict:
        """Each counter summed over all threads."""
        return {name: int(getattr(self, name).sum()) for name in COUNTERS}

    @property
    def threads(self) -> int:
        return int(np.prod(self.griddim) * np.prod(self.blockdim))

    def array(self, name: str) -> ArrayTraffic:
        """The traffic of the array argument called ``name`` in the kernel."""
        try:
            return self.arrays[name]
        except KeyError:
            raise KeyError(f"no array argument {name!r}; the kernel's arrays are {list(self.arrays)}") from None

    def loads_per_output(self, n_outputs: int) -> float:
        """Global-memory loads per output element."""
        return self.totals["global_loads"] / n_outputs

    def summary(self, n_outputs: int | None = None) -> str:
        """One line: the totals (and loads per output)."""
        totals = self.totals
        line = (f"{self.threads} threads: {totals['global_loads']} global loads, "
                f"{totals['global_stores']} global stores")
        if totals["global_atomics"]:
            line += f" ({totals['global_atomics']} atomic)"
        if totals["shared_loads"] or totals["shared_stores"]:
            line += f", {totals['shared_loads']} shared loads, {totals['shared_stores']} shared stores"
        if n_outputs:
            line += f"; {self.loads_per_output(n_outputs):.2f} global loads per output"
        return line

    def per_thread_map(self, counter: str = "global_loads") -> np.ndarray:
        """A counter laid out as the threads sit in the grid: a 1-D launch
        gives one row per block (column: threadIdx.x), a 2-D or 3-D launch
        an image whose row is the global y and column the global x (a 3-D
        launch: summed over z)."""
        values = getattr(self, counter)
        dims = len(self.griddim)
        if dims == 1:
            return values
        full = values.reshape(tuple(self.griddim) + tuple(self.blockdim))
        if dims == 3:
            full = full.sum(axis=(2, 5))
        gx, gy, bx, by = full.shape
        # (gx, gy, bx, by) -> rows y = by_index * bdy + ty, columns x
        return full.transpose(1, 3, 0, 2).reshape(gy * by, gx * bx)

    def draw(self, ax=None, memory: str = "global", numbers: bool | None = None):
        """A picture of every thread's reads and writes, in the spirit of
        GPU-Puzzles: one cell per thread, its colour the loads, its text
        ``loads/stores``; lines separate the blocks. ``memory``: "global"
        or "shared". Returns the matplotlib Axes."""
        import matplotlib.pyplot as plt

        if memory not in ("global", "shared"):
            raise ValueError(f"memory must be 'global' or 'shared', not {memory!r}")
        loads = self.per_thread_map(f"{memory}_loads")
        stores = self.per_thread_map(f"{memory}_stores")
        if ax is None:
            width = min(14.0, max(6.0, 0.5 * loads.shape[1] + 1.5))
            _, ax = plt.subplots(figsize=(width, max(1.6, 0.45 * loads.shape[0] + 1.0)))
        image = ax.imshow(loads, cmap="Blues", vmin=0, vmax=max(1, int(loads.max())), aspect="equal")
        if numbers is None:
            numbers = loads.size <= 400
        if numbers:
            top = max(1, int(loads.max()))
            for (row, col), value in np.ndenumerate(loads):
                ax.text(col, row, f"{value}/{stores[row, col]}", ha="center", va="center", fontsize=8,
                        color="white" if value > 0.6 * top else "black")
        if len(self.blockdim) == 1:  # one row per block
            block_x, block_y = loads.shape[1], 1
            ax.set_ylabel("block")
            ax.set_xlabel("thread")
        else:
            block_x, block_y = self.blockdim[0], self.blockdim[1]
            ax.set_ylabel("y")
            ax.set_xlabel("x")
        for edge in range(block_x, loads.shape[1], block_x):
            ax.axvline(edge - 0.5, color="crimson", linewidth=1.5)
        for edge in range(block_y, loads.shape[0], block_y):
            ax.axhline(edge - 0.5, color="crimson", linewidth=1.5)
        ax.set_xticks([])
        ax.set_yticks([])
        totals = self.totals
        ax.set_title(f"{memory} memory, loads/stores per thread (red: block edges)\n"
                     f"in all {totals[memory + '_loads']} loads, {totals[memory + '_stores']} stores", fontsize=10)
        ax.figure.colorbar(image, ax=ax, label="loads", fraction=0.03, pad=0.02)
        return ax


# --------------------------------------------------------------------------
# Counting
# --------------------------------------------------------------------------


class _Counters:
    """The per-thread counters of one launch, and a lock for the shared parts."""

    def __init__(self, griddim, blockdim):
        self.griddim, self.blockdim = griddim, blockdim
        shape = tuple(griddim) + tuple(blockdim)
        self.values = {name: np.zeros(shape, np.int64) for name in COUNTERS}
        self.lock = threading.Lock()
        self.atomic = threading.local()
        self.dims = len(griddim)

    def slot(self):
        """Index of the running simulated thread, or None outside a kernel."""
        thread = threading.current_thread()
        block, index = getattr(thread, "blockIdx", None), getattr(thread, "threadIdx", None)
        if block is None or index is None:
            return None
        dims = self.dims
        return tuple(block)[:dims] + tuple(index)[:dims]

    def thread_number(self) -> int:
        """The running simulated thread as one number (-2 outside a kernel)."""
        slot = self.slot()
        if slot is None:
            return -2
        return int(np.ravel_multi_index(slot, self.values["global_loads"].shape))

    def add(self, name, amount=1):
        slot = self.slot()
        if slot is not None:
            # Only the thread itself writes its slot: no lock needed.
            self.values[name][slot] += amount

    def in_atomic(self) -> bool:
        return getattr(self.atomic, "depth", 0) > 0


class _CountedArray:
    """An array as a kernel sees it, counting element reads and writes, and
    noting which thread wrote each element last."""

    __slots__ = ("_array", "_counters", "_space", "_traffic", "_writes", "_plain_writes", "_last_writer",
                 "_shared_writes")

    def __init__(self, array, counters, space, traffic, writes, plain_writes, last_writer, shared_writes):
        object.__setattr__(self, "_array", array)
        object.__setattr__(self, "_counters", counters)
        object.__setattr__(self, "_space", space)
        object.__setattr__(self, "_traffic", traffic)
        object.__setattr__(self, "_writes", writes)
        object.__setattr__(self, "_plain_writes", plain_writes)
        object.__setattr__(self, "_last_writer", last_writer)
        object.__setattr__(self, "_shared_writes", shared_writes)

    def __getitem__(self, index):
        value = self._array[index]
        if isinstance(value, np.ndarray):  # a row or a slice: still global memory
            return _CountedArray(value, self._counters, self._space, self._traffic, self._writes[index],
                                 self._plain_writes[index], self._last_writer[index], self._shared_writes[index])
        if not self._counters.in_atomic():
            self._counters.add(self._space + "_loads")
            with self._counters.lock:
                self._traffic.loads += 1
        return value

    def __setitem__(self, index, value):
        self._array[index] = value
        counters = self._counters
        atomic = counters.in_atomic()
        written = int(np.size(self._array[index]))
        counters.add(self._space + "_stores", written)
        if atomic:
            counters.add(self._space + "_atomics", written)
        thread = counters.thread_number()
        with counters.lock:
            self._traffic.stores += written
            self._writes[index] += 1
            last = self._last_writer[index]
            self._shared_writes[index] |= (last >= 0) & (last != thread)
            self._last_writer[index] = thread
            if atomic:
                self._traffic.atomics += written
            else:
                self._plain_writes[index] += 1

    def __len__(self):
        return len(self._array)

    def __getattr__(self, name):  # shape, size, ndim, dtype, ...
        return getattr(self._array, name)

    def __array__(self, dtype=None, copy=None):
        return self._array if dtype is None else self._array.astype(dtype)

    def __repr__(self):
        return f"counted {self._space} array {self._array.shape} {self._array.dtype}"


def _counted(array, counters, space, name, arrays):
    traffic = ArrayTraffic(name, writes=np.zeros(array.shape, np.int64),
                           plain_writes=np.zeros(array.shape, np.int64),
                           shared_writes=np.zeros(array.shape, np.bool_))
    arrays[name] = traffic
    return _CountedArray(array, counters, space, traffic, traffic.writes, traffic.plain_writes,
                         np.full(array.shape, -1, np.int64), traffic.shared_writes)


def _simulator_modules():
    """The simulator's kernelapi module (numba-cuda's or numba's built-in)."""
    if backend.SIMULATOR:
        from numba.cuda.simulator import kernelapi  # the simulator that runs this process's kernels
    else:  # pragma: no cover - on a GPU: numba-cuda ships the simulator too
        from numba.cuda.simulator import kernelapi
    return kernelapi


_ATOMICS = ("add", "sub", "and_", "or_", "xor", "inc", "dec", "exch", "max", "min", "nanmax", "nanmin",
            "compare_and_swap", "cas")


class _Patched:
    """While entered: shared arrays count, atomics mark their accesses."""

    def __init__(self, kernelapi, counters, arrays):
        self.kernelapi, self.counters, self.arrays = kernelapi, counters, arrays
        self.saved = []

    def __enter__(self):
        kernelapi, counters, arrays = self.kernelapi, self.counters, self.arrays
        shared_class, atomic_class = kernelapi.FakeCUDAShared, kernelapi.FakeCUDAAtomic
        original_shared = shared_class.array
        made = {}
        making = threading.Lock()  # the threads of a block ask for the same array at once

        def shared_array(shared, shape, dtype, alignment=None):
            if shape == 0:  # dynamic shared memory: one buffer for every array
                array = original_shared(shared, shape, dtype)
                key = ("dynamic", np.dtype(array.dtype).str)
            else:
                # Like the simulator: one array per source line that makes one.
                caller = sys._getframe(1)
                key = (caller.f_code.co_filename, caller.f_lineno)
                array = None
            with making:
                if key not in made:
                    if array is None:
                        array = np.empty(shape, backend.numpy_dtype(dtype))
                    name = f"shared array {len(made) + 1}"
                    made[key] = _counted(array, counters, "shared", name, arrays)
                return made[key]

        self.saved.append((shared_class, "array", original_shared))
        shared_class.array = shared_array
        for name in _ATOMICS:
            original = getattr(atomic_class, name, None)
            if original is None:
                continue
            self.saved.append((atomic_class, name, original))
            setattr(atomic_class, name, _marking_atomic(original, counters))
        return self

    def __exit__(self, *exc):
        for owner, name, original in reversed(self.saved):
            setattr(owner, name, original)
        self.saved.clear()


def _marking_atomic(original, counters):
    def atomic(self, *args):
        state = counters.atomic
        state.depth = getattr(state, "depth", 0) + 1
        try:
            return original(self, *args)
        finally:
            state.depth -= 1

    return atomic


def _dims(value):
    """A launch dimension as a tuple of ints (1 to 3 of them)."""
    if isinstance(value, (int, np.integer)):
        return (int(value),)
    value = tuple(int(v) for v in value)
    if not 1 <= len(value) <= 3:
        raise ValueError(f"a grid or block dimension has 1 to 3 entries, got {value}")
    return value


def _host_array(value):
    """The NumPy array behind a kernel argument, or None for a scalar."""
    import torch

    if isinstance(value, torch.Tensor):
        if value.is_cuda:
            raise ValueError("traffic.count runs in the simulator: pass CPU tensors or NumPy arrays")
        return value.detach().numpy()
    if isinstance(value, np.ndarray):
        return value if value.ndim > 0 else None
    inner = getattr(value, "_ary", None)  # the simulator's device array
    if isinstance(inner, np.ndarray):
        return inner
    return None


def _simulated_kernel(kernel):
    """A kernel the simulator runs: the kernel itself in the simulator;
    on a GPU, a simulator kernel around its Python function."""
    if backend.SIMULATOR:
        return kernel
    from numba.cuda.simulator.kernel import FakeCUDAKernel  # pragma: no cover - GPU machines

    return FakeCUDAKernel(getattr(kernel, "py_func", kernel), device=False)  # pragma: no cover


def count(kernel, griddim, blockdim, *args, timeout: float | None = None) -> TrafficReport:
    """Run ``kernel[griddim, blockdim](*args)`` in the simulator, counting
    every thread's memory accesses. Array arguments (NumPy arrays or CPU
    tensors) are written in place, as by a normal launch. Returns a
    TrafficReport. A kernel that does not finish within ``timeout`` seconds
    (default: the checkers' timeout) raises ``checkers.KernelTimeout``."""
    from .checkers.engine import DEFAULT_TIMEOUT, run_with_timeout

    return run_with_timeout(lambda: run_counted(kernel, griddim, blockdim, args),
                            timeout=DEFAULT_TIMEOUT if timeout is None else timeout)


def run_counted(kernel, griddim, blockdim, args) -> TrafficReport:
    """``count`` without the timeout, in the calling thread."""
    griddim, blockdim = _dims(griddim), _dims(blockdim)
    dims = max(len(griddim), len(blockdim))
    griddim = griddim + (1,) * (dims - len(griddim))
    blockdim = blockdim + (1,) * (dims - len(blockdim))
    counters = _Counters(griddim, blockdim)
    arrays: dict = {}
    function = getattr(kernel, "py_func", kernel)
    try:
        names = list(inspect.signature(function).parameters)
    except (TypeError, ValueError):  # pragma: no cover - a kernel always has a signature
        names = []
    names += [f"argument {i}" for i in range(len(names), len(args))]
    launched = []
    for name, value in zip(names, args):
        array = _host_array(value)
        launched.append(value if array is None else _counted(array, counters, "global", name, arrays))
    simulated = _simulated_kernel(kernel)
    with backend.SIMULATOR_LOCK, _Patched(_simulator_modules(), counters, arrays):
        simulated[griddim, blockdim](*launched)
    values = counters.values
    return TrafficReport(griddim=griddim, blockdim=blockdim, arrays=arrays,
                         **{name: values[name] for name in COUNTERS})

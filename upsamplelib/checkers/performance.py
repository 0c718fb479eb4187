"""Checkers of lesson 07 (performance): honest timing, arithmetic intensity,
coalesced and reusing CARAFE kernels, and the loop order of a CPU loop.

Speed is graded by what a kernel *does*, counted in the simulator, not by
how long it takes on a loaded machine: every access a kernel makes to its
arrays is recorded (which thread, which source line, which element), and
from that record come the loads per output and, for each load instruction
a warp of 32 threads executes, the 32-byte memory sectors it touches (the
unit a GPU's memory system moves). A CPU function is run the same way as
plain Python, and its record says how often consecutive accesses leave the
64-byte cache line of the one before. Timings are measured and reported
side by side, and graded only by a generous ratio.
"""

from __future__ import annotations

import ast
import contextlib
import csv
import math
import os
import re
import statistics
import sys
import threading
import time
import types
from collections import Counter, defaultdict
from pathlib import Path

import numba
import numpy as np
import torch

from .. import timing
from ..backend import SIMULATOR, SIMULATOR_LOCK, launch_config, simulated_shared_array, simulator_allocation
from ..ops.carafe import carafe_reference
from . import ptx
from .carafe import require_values_inside, with_nan_outside, with_values_inside
from .engine import (CheckFailed, compare, counting_syncthreads, kernel_definition, passed, run_with_timeout,
                     unsolved_exercise)

__all__ = [
    "AccessRecord",
    "record_kernel",
    "record_function",
    "check_median_time",
    "check_carafe_traffic",
    "check_carafe_channels_last_kernel",
    "check_carafe_channel_blocked_kernel",
    "check_carafe_rows_cpu",
]

#: Bytes a GPU's memory system moves per transaction (an L2 sector).
SECTOR_BYTES = 32
#: Bytes of a CPU cache line.
CACHE_LINE_BYTES = 64
WARP_SIZE = 32

#: The committed real-GPU run the lesson shows where no GPU is present.
GPU_REFERENCE = Path(__file__).resolve().parents[2] / "bench" / "gpu_reference.csv"
#: The command that writes it (bench/run.py runs bench/gpu.py, which names the GPU in every row).
GPU_REFERENCE_COMMAND = "python bench/run.py --gpu-reference bench/gpu_reference.csv"
#: The columns of bench/gpu.py the lesson shows, where present (otherwise all of them).
GPU_REFERENCE_COLUMNS = ("case", "ours", "ours_ms", "baseline", "baseline_ms", "ratio", "fraction_of_copy")


# --------------------------------------------------------------------------
# Recording what a kernel or a CPU loop touches
# --------------------------------------------------------------------------


class _RecordingArray:
    """A NumPy array that notes every element read and written: the thread
    (block, linear thread id), the kernel's source line, and the flat offset."""

    def __init__(self, name, array, log, loop_names=()):
        self._name, self._array, self._log, self._loop_names = name, array, log, loop_names
        self.shape, self.size, self.dtype, self.ndim = array.shape, array.size, array.dtype, array.ndim
        self.strides = array.strides

    def __len__(self):
        return len(self._array)

    def _root(self):
        """The recorded argument this array is (or is a view of)."""
        return self

    def _note(self, kind, index):
        index = index if isinstance(index, tuple) else (index,)
        try:
            index = tuple(int(i) + size if int(i) < 0 else int(i) for i, size in zip(index, self.shape))
            offset = int(np.ravel_multi_index(index, self.shape))
        except (TypeError, ValueError):  # a slice or an out-of-range index: let NumPy say what is wrong
            return
        self._log_access(kind, offset)

    def _log_access(self, kind, offset, depth=3):
        """Log one access; ``depth``: the frames from here up to the kernel's line."""
        block, thread_id = _accessing_thread()
        frame = sys._getframe(depth)
        line = frame.f_lineno
        loops = tuple(frame.f_locals.get(name) for name in self._loop_names) if self._loop_names else ()
        self._log.append((block, thread_id, self._name, kind, line, offset, loops))

    def _named(self, error, index):
        """The IndexError with the array and the index named: NumPy's own
        message says neither."""
        shown = ", ".join(str(i) for i in (index if isinstance(index, tuple) else (index,)))
        return IndexError(f"{self._name}[{shown}] with {self._name} of shape {self.shape}: {error}")

    def __getitem__(self, index):
        try:
            value = self._array[index]
        except IndexError as error:
            raise self._named(error, index) from None
        if isinstance(value, np.ndarray):
            return self._recorded_if_a_view(value)
        self._note("load", index)
        return value

    def _recorded_if_a_view(self, value):
        """``value`` recorded too where it is a view of this array's memory
        (out[n, c, Y], masks[n, t, Y, a:b], out.T, out.reshape(-1)): its
        accesses count, at their offsets in the whole C-contiguous array. A
        copy (fancy or boolean indexing, astype) is the loop's own."""
        whole = self._root()._array
        if isinstance(value, np.ndarray) and whole.flags.c_contiguous and np.shares_memory(value, whole):
            return _RecordingView(self, value)
        return value

    def __setitem__(self, index, value):
        if isinstance(value, _RecordingArray) and value._is_region(self, index):
            return  # the write-back of ``line[a:b] += ...``: its in-place operator noted the stores
        if isinstance(value, _RecordingArray):
            value._note_all("load")
        plain = _plain(value)
        try:
            self._array[index] = plain
        except IndexError as error:
            raise self._named(error, index) from None
        region = self._array[index]
        root = self._root()
        if isinstance(root, _SharedRecording):
            root.storing(plain, np.shape(region))
        if not isinstance(region, np.ndarray):
            self._note("store", index)
        elif root._array.flags.c_contiguous and np.shares_memory(region, self._array):
            # A slice or a row (not a copy, as fancy indexing makes): every element of it, in C order.
            self._region(region)._note_all("store")
        if isinstance(root, _SharedRecording):
            root.storing(None, ())

    def _region(self, view):
        """A recording view of ``view``, a view of this array."""
        return _RecordingView(self, view)

    def _is_region(self, array, index):
        """Whether this (a view) is exactly ``array[index]``: the same memory, shape and strides."""
        try:
            region = array._array[index]
        except (IndexError, TypeError, ValueError):
            return False
        return (isinstance(region, np.ndarray) and region.shape == self.shape and region.strides == self.strides
                and region.__array_interface__["data"][0] == self._array.__array_interface__["data"][0])

    def _offsets(self):
        """The flat offsets of all its elements, in C order."""
        return np.arange(self.size)

    def _note_all(self, kind):
        """An access of every element, in C order, as NumPy's loops make them
        for an array expression or a slice assignment (``line[a:b] += w * v``)."""
        for offset in self._offsets():
            self._root()._log_access(kind, int(offset))


def _accessing_thread():
    """(block, linear thread id) of the simulated thread running; (0, 0, 0), 0 outside a launch."""
    thread = threading.current_thread()
    return tuple(getattr(thread, "blockIdx", (0, 0, 0))), getattr(thread, "thread_id", 0)


def _note_stores(targets):
    """A store of every element of each recorded array among ``targets`` (a NumPy function's ``out``)."""
    for target in targets:
        if isinstance(target, _RecordingArray):
            target._note_all("store")


def _plain(value):
    return value._array if isinstance(value, _RecordingArray) else value


def _delegate(operator):
    """An arithmetic operator of the array itself, noted as a load of every
    element of each recorded operand (and, in place, a store of every element
    of this one): ``weights * values``, ``line[a:b] += weights * values``."""
    def method(self, *others):
        for operand in (self, *others):
            if isinstance(operand, _RecordingArray):
                operand._note_all("load")
        result = getattr(self._array, operator)(*map(_plain, others))
        if operator.startswith("__i") and result is self._array:
            self._note_all("store")
            return self
        return result
    method.__name__ = operator
    return method


for _operator in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "lt", "le", "gt", "ge", "eq",
                  "ne", "neg", "pos", "abs", "radd", "rsub", "rmul", "rtruediv", "rfloordiv", "rmod", "rpow",
                  "rmatmul", "iadd", "isub", "imul", "itruediv", "ifloordiv", "and", "or", "xor", "invert",
                  "lshift", "rshift", "rand", "ror", "rxor", "bool", "float", "int"):
    setattr(_RecordingArray, f"__{_operator}__", _delegate(f"__{_operator}__"))
_RecordingArray.__array__ = lambda self, dtype=None, copy=None: np.asarray(self._array, dtype=dtype)


def _array_ufunc(self, ufunc, method, *inputs, out=None, **kwargs):
    """A NumPy function on recorded arrays, in any position (``np.add(line, p,
    line)``, ``plain * line``): a load of every element of each recorded
    input, then a store of every element of each recorded output."""
    for operand in inputs:
        if isinstance(operand, _RecordingArray):
            operand._note_all("load")
    if out is not None:
        kwargs["out"] = tuple(map(_plain, out))
    result = getattr(ufunc, method)(*map(_plain, inputs), **kwargs)
    if out is None:
        return result
    _note_stores(out)
    return out[0] if len(out) == 1 else out


_RecordingArray.__array_ufunc__ = _array_ufunc


def _array_attribute(self, name):
    """Other attributes are the array's. A view they give (out.T,
    out.reshape(-1), x.transpose(0, 2, 1), masks.swapaxes(2, 3), and out.flat
    of a C-contiguous array, as the view it indexes) is recorded
    like a slice, so a loop order written over a transposed or flattened
    view is seen as what it is in memory; what the others touch (fill, sum,
    copy) is not recorded."""
    array = self.__dict__.get("_array")
    if array is None:
        raise AttributeError(name)
    if name == "flat" and array.flags.c_contiguous:
        # a.flat[i] is element i in C order: for a C-contiguous array, that of a.reshape(-1), a view
        flat = self._recorded_if_a_view(array.reshape(-1))
        return _RecordingFlat(self, flat._array) if isinstance(flat, _RecordingView) else array.flat
    if name == "flat" and isinstance(viewed := self._recorded_if_a_view(array), _RecordingView):
        return _RecordingStridedFlat(viewed)  # out[n, :, Y].flat, x[n, c].T.flat
    value = getattr(array, name)
    if name.startswith("__"):  # NumPy's protocols (__array_interface__, ...): the plain array's
        return value
    if not callable(value):
        return self._recorded_if_a_view(value)

    def viewing(*args, **kwargs):
        return self._recorded_if_a_view(value(*args, **kwargs))
    return viewing


def _plain_within(value):
    """``value`` with the plain arrays in place of recorded ones, also inside
    lists and tuples (np.concatenate([a, b])): handed a recorded array again,
    NumPy would call back here without end."""
    if isinstance(value, (list, tuple)):
        return type(value)(map(_plain_within, value))
    return _plain(value)


def _array_function(self, function, relevant_types, args, kwargs):
    """A NumPy function given a recorded array (np.transpose(out),
    np.ravel(x), np.moveaxis(masks, 1, 3)): run on the plain arrays, and a
    view it returns of a recorded one's memory is recorded (the first such)."""
    recorded = [arg for arg in args if isinstance(arg, _RecordingArray)]
    result = function(*map(_plain_within, args), **{key: _plain_within(value) for key, value in kwargs.items()})
    written = kwargs.get("out")  # np.clip(a, 0, 1, out=a), np.sum(p, axis=0, out=row)
    _note_stores(written if isinstance(written, tuple) else (written,))
    for arg in recorded:
        viewed = arg._recorded_if_a_view(result)
        if viewed is not result:
            return viewed
    return result


_RecordingArray.__getattr__ = _array_attribute
_RecordingArray.__array_function__ = _array_function


class _RecordingView(_RecordingArray):
    """A view of a recorded array (a row, a slice), its accesses noted at
    their offsets in the whole array, found from their memory addresses."""

    def __init__(self, whole, view):
        whole = whole._root()  # a view of a view: offsets in the array it is a view of
        super().__init__(whole._name, view, whole._log, whole._loop_names)
        self._whole = whole
        self._start = view.__array_interface__["data"][0] - whole._array.__array_interface__["data"][0]

    def _root(self):
        return self._whole

    def _offset(self, index):
        """The flat offset in the whole (C-contiguous) array of element ``index`` of the view."""
        index = index if isinstance(index, tuple) else (index,)
        if len(index) != self.ndim:
            raise TypeError("not one element")
        position = self._start
        for i, size, stride in zip(index, self.shape, self.strides):
            i = int(i)
            position += (i + size if i < 0 else i) * stride
        return position // self._whole.dtype.itemsize  # a.view(np.float64): still a's elements

    def _note(self, kind, index):
        try:
            offset = self._offset(index)
        except (TypeError, ValueError):  # a slice: what NumPy does with it is not one element's access
            return
        self._whole._log_access(kind, offset, depth=3)

    def _region(self, view):
        return _RecordingView(self._whole, view)

    def _offsets(self):
        itemsize = self._whole.dtype.itemsize
        if self.ndim == 0:
            return np.array([self._start // itemsize])
        grid = np.indices(self.shape, dtype=np.int64).reshape(self.ndim, -1)
        steps = np.array(self.strides, dtype=np.int64)[:, None]
        return (self._start + (grid * steps).sum(axis=0)) // itemsize


class _FlatIteration:
    """The iterator side of a recorded ``a.flat``, as of NumPy's and Numba's
    flatiter: a ``for`` loop or ``next`` takes on from where it is. Each
    class reads flat element i by ``_load_position(i)``."""

    _next = 0

    def __iter__(self):
        return self

    def __next__(self):
        if self._next >= self.size:
            raise StopIteration
        self._next += 1
        return self._load_position(self._next - 1)


class _RecordingFlat(_FlatIteration, _RecordingView):
    """``a.flat`` of a recorded C-contiguous array: indexed as
    ``a.reshape(-1)``, and an iterator."""

    def _load_position(self, position):
        self._whole._log_access("load", self._offset(position), depth=3)  # from the line that called next
        return self._array[position]


class _RecordingStridedFlat(_FlatIteration):
    """``a.flat`` of a recorded view that is not C-contiguous (``out[n, :, Y]``,
    ``x[n, c].T``): flat index i is a's element ``np.unravel_index(i, a.shape)``
    (C order over a's own axes), noted at its offset in the whole array; an
    iterator too. No view of the whole array indexes so, hence the
    translation."""

    def __init__(self, view):
        self._view = view
        self.size, self.dtype, self.shape, self.ndim = view.size, view.dtype, (view.size,), 1

    def __len__(self):
        return self.size

    def _positions(self, index):
        """The flat positions ``index`` selects, as NumPy's flatiter reads it (IndexError past the end)."""
        try:
            return np.arange(self.size)[index]
        except IndexError as error:
            raise self._view._named(error, index) from None

    def _element(self, position, kind, depth):
        """The view's index of flat ``position``, its access logged ``depth`` frames below the kernel's line."""
        element = np.unravel_index(int(position), self._view.shape)
        self._view._root()._log_access(kind, self._view._offset(element), depth=depth)
        return element

    def __getitem__(self, index):
        positions = self._positions(index)
        if positions.ndim == 0:
            return self._view._array[self._element(positions, "load", 3)]
        values = np.empty(positions.shape, self.dtype)  # a copy, as NumPy's flat[a:b] is
        for at, position in enumerate(positions.reshape(-1)):
            values.reshape(-1)[at] = self._view._array[self._element(position, "load", 3)]
        return values

    def __setitem__(self, index, value):
        positions = self._positions(index)
        if isinstance(value, _RecordingArray):
            value._note_all("load")
        values = np.broadcast_to(np.asarray(_plain(value)), positions.shape).reshape(-1)
        root = self._view._root()
        if isinstance(root, _SharedRecording):
            root.storing(values, values.shape)
        for position, stored in zip(positions.reshape(-1), values):
            self._view._array[self._element(position, "store", 3)] = stored
        if isinstance(root, _SharedRecording):
            root.storing(None, ())

    def _load_position(self, position):
        return self._view._array[self._element(position, "load", 4)]  # from the line that called next


class AccessRecord:
    """Every access of one launch (or one CPU call), with the measures the
    lesson uses. ``names`` are the kernel's parameter names."""

    def __init__(self, log, arrays, shared_log=()):
        self.log = list(log)
        self.itemsize = {name: array.dtype.itemsize for name, array in arrays.items()}
        #: (block, thread, shared array, kind, offset, barriers passed, value stored or None): see _SharedRecording
        self.shared_log = list(shared_log)

    def shared_race(self):
        """(array, offset, block, two threads, whether both wrote) of the
        first element of a shared array that two threads of a block touch
        between the same two cuda.syncthreads(), one of them writing it (two
        writes of the same value, as when every thread stages one value, are
        left alone), or one of them making an atomic operation and the other
        a plain load or store (atomics alone do not race); None when there is
        none. On a GPU the reader then sees the old value or the new one,
        whichever thread runs first."""
        touched = defaultdict(list)  # (block, array, offset, barriers) -> [(thread, kind, value)]
        for block, thread, name, kind, offset, barriers, value in self.shared_log:
            touched[(block, name, offset, barriers)].append((thread, kind, value))
        for (block, name, offset, _), accesses in sorted(touched.items()):
            # Atomic operations do not race with each other; with a plain load or store of another thread they do.
            atomic = {thread for thread, kind, _ in accesses if kind == "atomic"}
            plain = {thread: kind for thread, kind, _ in sorted(accesses, key=lambda access: access[1] == "store")
                     if kind != "atomic"}  # a thread's store over its load
            pairs = [(first, other) for first in sorted(atomic) for other in sorted(plain) if first != other]
            if pairs:
                first, other = pairs[0]
                return name, offset, block, tuple(sorted((first, other))), plain[other] == "store"
            writers = {thread for thread, kind, _ in accesses if kind == "store"}
            if not writers or len({thread for thread, *_ in accesses}) < 2:
                continue
            readers = {thread for thread, kind, _ in accesses if kind == "load"} - writers
            if readers:
                return name, offset, block, (min(writers), min(readers)), False
            values = {repr(value) for _, kind, value in accesses if kind == "store"}
            if len(writers) > 1 and (len(values) > 1 or any(kind == "load" for _, kind, _ in accesses)):
                first, second = sorted(writers)[:2]
                return name, offset, block, (first, second), True
        return None

    def count(self, name, kind="load"):
        """How many times the kernel loaded (or stored) an element of ``name``."""
        return sum(1 for entry in self.log if entry[2] == name and entry[3] == kind)

    def most_stores_per_thread(self, name):
        """The most stores to ``name`` that one thread made."""
        counts = Counter((entry[0], entry[1]) for entry in self.log if entry[2] == name and entry[3] == "store")
        return max(counts.values(), default=0)

    def stores_per_element(self, name):
        """{flat offset: number of stores} of array ``name``."""
        counts = defaultdict(int)
        for entry in self.log:
            if entry[2] == name and entry[3] == "store":
                counts[entry[5]] += 1
        return counts

    def warp_requests(self, name, kind="load"):
        """The memory requests of ``name``: one per load (store) instruction a
        warp executes, as {request: [offsets]}. A warp executes a line for all
        its threads at once, in the same iteration of the loops around it, so
        the accesses of its threads to one line are paired by the values of
        the loop counters that the threads share (``dy``, ``dx``: not a
        grid-stride counter, which differs from thread to thread), then by
        their order. Threads that skip an iteration (a slot outside the map)
        leave their lane of that request empty, as on a GPU."""
        lanes = defaultdict(lambda: defaultdict(list))  # (block, warp, line) -> thread -> [(loops, offset)]
        for block, thread_id, array, what, line, offset, loops in self.log:
            if array == name and what == kind:
                lanes[(block, thread_id // WARP_SIZE, line)][thread_id].append((loops, offset))
        requests = defaultdict(list)
        for group, threads in lanes.items():
            firsts = [accesses[0][0] for accesses in threads.values()]
            shared = [v for v in range(len(firsts[0]))
                      if max(Counter(first[v] for first in firsts).values()) * 2 >= len(firsts)]
            for accesses in threads.values():
                occurrence = defaultdict(int)
                for loops, offset in accesses:
                    key = tuple(loops[v] for v in shared)
                    requests[group + (key, occurrence[key])].append(offset)
                    occurrence[key] += 1
        return requests

    def sectors_per_request(self, name, kind="load"):
        """The mean number of distinct 32-byte sectors a warp's request of
        ``name`` touches: 1 when all 32 threads read one value (a broadcast),
        4 when they read 32 consecutive float32, 32 when every thread's
        element lies in a sector of its own."""
        sectors = self._sectors_of_requests(name, kind)
        return sum(sectors) / len(sectors) if sectors else 0.0

    def sectors(self, name, kind="load"):
        """The 32-byte sectors of ``name`` all the warps' requests touch, in
        all (a sector counted once per request that touches it)."""
        return sum(self._sectors_of_requests(name, kind))

    def _sectors_of_requests(self, name, kind):
        """[the sectors each request of ``name`` touches]."""
        per_sector = SECTOR_BYTES // self.itemsize[name]
        requests = self.warp_requests(name, kind).values()
        return [len({offset // per_sector for offset in offsets}) for offsets in requests]

    def line_switches(self, name):
        """The share of accesses to ``name`` (in program order, one thread)
        that touch another 64-byte cache line than the access before: near
        1 for a loop that strides through memory, about itemsize / 64 for
        one that walks it element after element."""
        per_line = CACHE_LINE_BYTES // self.itemsize[name]
        lines = [entry[5] // per_line for entry in self.log if entry[2] == name]
        if not lines:
            return 0.0
        return sum(a != b for a, b in zip(lines, lines[1:])) / len(lines)


def _parameter_names(function):
    code = getattr(function, "py_func", function).__code__
    return code.co_varnames[:code.co_argcount]


def _source(function):
    """(Python function, its ``ast.FunctionDef``), or None where there is no
    source to read (a function made with exec, say): the source checks are
    then left out."""
    try:
        return kernel_definition(function)
    except (OSError, TypeError, CheckFailed):
        return None


def _loop_names(function):
    """The counters of the function's ``for`` loops."""
    source = _source(function)
    if source is None:
        return ()
    definition = source[1]
    names = [node.target.id for node in ast.walk(definition)
             if isinstance(node, ast.For) and isinstance(node.target, ast.Name)]
    return tuple(dict.fromkeys(names))


def _wrap(function, args, loops=False):
    log = []
    loop_names = _loop_names(function) if loops else ()
    names = _parameter_names(function)
    wrapped, arrays = [], {}
    for name, arg in zip(names, args):
        if isinstance(arg, np.ndarray):
            arrays[name] = arg
            arg = _RecordingArray(name, arg, log, loop_names)
        wrapped.append(arg)
    return log, wrapped, arrays


class _SharedRecording(_RecordingArray):
    """A block's ``cuda.shared.array``, its accesses logged with the number
    of ``cuda.syncthreads()`` the thread has passed and the value stored:
    what ``AccessRecord.shared_race`` reads. An atomic operation (the
    simulator's code reading and writing the element under its lock) is
    logged once, as the kind "atomic"."""

    def __init__(self, name, array, shared_log, barriers, simulator_file):
        super().__init__(name, array, [])
        self._shared_log, self._barriers = shared_log, barriers
        self._simulator_file = simulator_file  # the module holding the simulator's atomics
        self._store = threading.local()  # each thread's store in progress: its values, the next one to log

    def storing(self, value, shape):
        """Before the store of ``value`` into elements of ``shape`` (through
        this array or a view of it) is logged: the values it writes, one per
        element in C order, as this array's dtype holds them; None after."""
        if value is None:
            self._store.values = None
            return
        with np.errstate(all="ignore"):
            self._store.values = np.broadcast_to(np.asarray(value).astype(self.dtype), shape).ravel()
        self._store.next = 0

    def _stored_value(self, offset):
        values = getattr(self._store, "values", None)
        if values is None or self._store.next >= len(values):
            return self._array.reshape(-1)[offset]  # a NumPy function's out=: the value it left there
        self._store.next += 1
        return values[self._store.next - 1]

    def _log_access(self, kind, offset, depth=3):
        if sys._getframe(depth).f_code.co_filename == self._simulator_file:  # inside an atomic operation
            if kind != "load":
                return  # every atomic reads the element first: that read stands for the whole operation
            kind = "atomic"
        block, thread_id = _accessing_thread()
        passed_barriers = self._barriers[(block, tuple(threading.current_thread().threadIdx))]
        stored = self._stored_value(offset) if kind == "store" else None
        self._shared_log.append((block, thread_id, self._name, kind, offset, passed_barriers, stored))


@contextlib.contextmanager
def _shared_arrays_recorded(shared_log):
    """While it runs, the simulator's ``cuda.shared.array`` gives each block
    a recorded array (one per line that makes one, as the simulator keys
    them), its accesses logged with the barriers each thread has passed
    (``counting_syncthreads``)."""
    from numba.cuda.simulator import kernelapi

    make = kernelapi.FakeCUDAShared.array
    names = {}  # (file, line) -> the name messages give the array made there

    def recorded(self, shape, dtype, alignment=None):
        if shape == 0 or alignment is not None:  # dynamic shared memory (not recorded), or a refused alignment
            return simulator_allocation(make, self, shape, dtype, alignment)
        caller = sys._getframe(1)
        where = (caller.f_code.co_filename, caller.f_lineno)
        array = simulated_shared_array(self, ("recorded", *where), shape, dtype)
        if where not in names:
            # Named by its line; arrays of two files (two notebook cells) on one line number also by their file.
            name = f"the shared array made on line {where[1]}"
            if name in names.values():
                name += f" of {os.path.basename(where[0])}"
            names[where] = name
        return _SharedRecording(names[where], array, shared_log, barriers, kernelapi.__file__)

    with counting_syncthreads(simulated=True) as barriers:
        kernelapi.FakeCUDAShared.array = recorded
        try:
            yield
        finally:
            kernelapi.FakeCUDAShared.array = make


#: What a float local array holds before the kernel writes it, in a recorded launch.
LOCAL_GARBAGE = 1e30


@contextlib.contextmanager
def _local_arrays_hold_garbage():
    """The simulator's ``cuda.local.array`` is ``np.empty``, often all zeros,
    so a kernel that never zeroes its sums could pass by luck; on a GPU a
    local array holds whatever was there. While this runs, float local
    arrays start at ``LOCAL_GARBAGE``, beyond any sum of the inputs."""
    from numba.cuda.simulator.kernelapi import FakeCUDALocal

    empty = FakeCUDALocal.array

    def garbage(self, shape, dtype, alignment=None):
        array = simulator_allocation(empty, self, shape, dtype, alignment)
        if array.dtype.kind == "f":
            array.fill(LOCAL_GARBAGE)
        return array

    FakeCUDALocal.array = garbage
    try:
        yield
    finally:
        FakeCUDALocal.array = empty


def record_kernel(kernel, launch, *args, timeout: float = 120.0) -> AccessRecord:
    """Launch ``kernel[launch](*args)`` in the simulator (also on a machine
    with a GPU) with every NumPy argument recorded; the arrays are written as
    by a normal launch. ``traffic.count`` counts per thread; this record
    keeps the order and the addresses, which coalescing is about."""
    stub = unsolved_exercise(kernel)
    if stub is not None:
        raise NotImplementedError(stub)
    log, wrapped, arrays = _wrap(kernel, args, loops=True)
    shared_log = []
    if SIMULATOR:
        simulated = kernel
    else:  # pragma: no cover - on a GPU the simulator runs the kernel's Python function
        from numba.cuda.simulator.kernel import FakeCUDAKernel

        simulated = FakeCUDAKernel(getattr(kernel, "py_func", kernel), device=False)

    def launch_recorded():
        # In the simulator run_with_timeout's worker holds SIMULATOR_LOCK already (taking it here, in the
        # caller's thread, would deadlock that worker); on a GPU nothing else serialises the simulator.
        with SIMULATOR_LOCK, _local_arrays_hold_garbage(), _shared_arrays_recorded(shared_log):
            simulated[launch](*wrapped)

    run_with_timeout(launch_recorded, timeout=timeout)
    return AccessRecord(log, arrays, shared_log)


def _require_no_shared_race(record, what, case):
    race = record.shared_race()
    if race is None:
        return
    name, offset, block, (first, second), both_wrote = race
    did = "write" if both_wrote else "write and read"
    raise CheckFailed(
        f"{what}: threads {first} and {second} of block {block[0]} {did} element {offset} of {name} with no "
        f"cuda.syncthreads() between them, for {case}: a race (on a GPU the threads run in no set order, so "
        "one sees the other's value or the old one).\nHint: a value one thread keeps for itself (its sums) "
        "belongs in cuda.local.array, one per thread; a value threads share is written, then cuda.syncthreads() "
        "is called by every thread of the block, then it is read")


#: What ``numba.njit`` returns: a compiled function (a student's helper, when the graded function calls one).
_COMPILED = numba.core.dispatcher.Dispatcher


def as_python(function, _done=None):
    """``function`` as plain Python (a ``numba.njit`` function's ``py_func``),
    with the compiled functions it calls plain Python too, and theirs:
    compiled, a helper could not take the recorded arrays. A helper is found
    in the function's globals, its closure, or as an attribute of a module
    in its globals (``helpers.total(...)``: the function then sees a copy of
    the module with that attribute replaced; the module itself is left as
    it is)."""
    python = getattr(function, "py_func", function)
    if not isinstance(python, types.FunctionType):
        return python
    done = {} if _done is None else _done
    if python in done:
        return done[python]
    used = _names_used(python.__code__)  # global names and attribute names alike
    helpers = {name: python.__globals__[name] for name in used if isinstance(python.__globals__.get(name), _COMPILED)}
    modules = {name: module for name, module in python.__globals__.items()
               if name in used and isinstance(module, types.ModuleType) and _holds_compiled(module, used, set())}
    cells = python.__closure__ or ()
    if not helpers and not modules and not any(isinstance(cell.cell_contents, _COMPILED) for cell in cells):
        done[python] = python
        return python
    namespace = dict(python.__globals__)
    closure = tuple(types.CellType(as_python(cell.cell_contents, done)) if isinstance(cell.cell_contents, _COMPILED)
                    else cell for cell in cells) or None
    plain = types.FunctionType(python.__code__, namespace, python.__name__, python.__defaults__, closure)
    plain.__kwdefaults__ = python.__kwdefaults__
    done[python] = plain
    namespace.update({name: as_python(helper, done) for name, helper in helpers.items()})
    namespace.update({name: _python_module(module, used, done, set()) for name, module in modules.items()})
    return plain


def _used_attributes(module, used):
    """The attributes of ``module`` whose names ``used`` holds. vars(), not
    getattr: a module's __getattr__ (NumPy's, for names it removed) may warn
    or raise."""
    return {attribute: value for attribute, value in vars(module).items() if attribute in used}


def _holds_compiled(module, used, seen):
    """Whether a compiled function is reached from ``module`` through the
    attribute names in ``used`` (``helpers.total``, ``package.helpers.total``)."""
    if id(module) in seen:
        return False
    seen.add(id(module))
    return any(isinstance(value, _COMPILED)
               or (isinstance(value, types.ModuleType) and _holds_compiled(value, used, seen))
               for value in _used_attributes(module, used).values())


def _python_module(module, used, done, seen):
    """A copy of ``module`` with those compiled functions plain Python (and
    its submodules that lead to one copied alike); the module itself is left
    as it is."""
    seen.add(id(module))
    copy = types.ModuleType(module.__name__, module.__doc__)
    vars(copy).update(vars(module))
    for attribute, value in _used_attributes(module, used).items():
        if isinstance(value, _COMPILED):
            setattr(copy, attribute, as_python(value, done))
        elif (isinstance(value, types.ModuleType) and id(value) not in seen
              and _holds_compiled(value, used, set(seen))):
            setattr(copy, attribute, _python_module(value, used, done, seen))
    return copy


def _names_used(code):
    """The global names ``code`` and the code nested in it (comprehensions, lambdas) read."""
    names = set(code.co_names)
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            names |= _names_used(constant)
    return names


def record_function(function, *args) -> AccessRecord:
    """Call ``function`` (a ``numba.njit`` function runs as plain Python,
    ``prange`` as ``range``, and so do the compiled helpers it calls) with
    every NumPy argument recorded."""
    log, wrapped, arrays = _wrap(function, args)
    as_python(function)(*wrapped)
    return AccessRecord(log, arrays)


# --------------------------------------------------------------------------
# 07.1 timing honestly
# --------------------------------------------------------------------------


def median_time(function, repeat: int = 7, warmup: int = 1, clock=time.perf_counter) -> float:
    """The median of ``repeat`` timed calls of ``function()`` after
    ``warmup`` untimed ones, in seconds: the lesson's reference for 07.1
    (``upsamplelib.timing.median_time`` under the lesson's argument names)."""
    return timing.median_time(function, warmup=warmup, repeats=repeat, clock=clock)


class _FakeClock:
    """A clock that only moves when the timed function runs: each call of
    the function takes the next planned duration."""

    def __init__(self, durations):
        self.now = 1000.0
        self.durations = list(durations)
        self.calls = 0
        self.readings = 0

    def __call__(self):
        self.readings += 1
        return self.now

    def work(self):
        if self.calls >= len(self.durations):
            raise CheckFailed("median_time: the function was called more often than warmup + repeat times")
        self.now += self.durations[self.calls]
        self.calls += 1


def _median_time_mistakes(timed, durations, repeat, warmup):
    """[(what a mistake returns, its hint)] for timed calls ``timed`` after
    the warm-up, of all call times ``durations``, in the order to suggest."""
    middle = "with an even number of timed calls the median is the mean of the two middle ones (statistics.median)"
    early = [] if warmup == 0 else [  # with no warm-up, no call comes before the timed ones
        (statistics.median(durations[1:]), "every call was timed and only the first left out: the other warm-up "
                                            "calls are in the median too. Time only the `repeat` calls after the "
                                            "`warmup` untimed ones"),
        (statistics.median(durations[warmup - 1:warmup - 1 + repeat]),
         "the timed calls are taken one call early: the last warm-up call is in the median and the last timed "
         "call is not. The timed calls are the `repeat` after the first `warmup` (times[warmup:])")]
    return early + [
        (statistics.mean(timed), "that is the mean: one disturbed run pulls it far up. Return the median "
                                 "(statistics.median), which a few slow runs do not move"),
        (min(timed), "that is the fastest run. It is a fair figure too, but this exercise asks for the "
                     "median, which also tells how a typical run goes"),
        (statistics.median(durations[:repeat]), "the warm-up calls were timed: the first call compiles. Call "
                                                "the function `warmup` times before timing"),
        (statistics.median(durations), "the warm-up calls are in the median: time only the `repeat` calls "
                                       "after them"),
        (sum(timed) / repeat, "that is the total of the timed calls divided by their number (the mean): "
                              "time every call alone and take the median"),
        (1e3 * statistics.median(timed), "that is the median in milliseconds: return seconds, as clock() gives them"),
        (statistics.median(timed[1:]), "that is the median of repeat - 1 timed calls: the first timed call is "
                                       "missing; take all `repeat` of them"),
        (statistics.median(timed[:-1]), "that is the median of repeat - 1 timed calls: the last timed call is "
                                        "missing; take all `repeat` of them"),
        (statistics.median_low(timed), f"that is the lower middle value: {middle}"),
        (statistics.median_high(timed), f"that is the upper middle value: {middle}"),
    ]


def check_median_time(function):
    """``function`` is the student's ``median_time(function, repeat, warmup, clock)``: call ``function``
    ``warmup`` times untimed, then ``repeat`` times, each timed alone with
    ``clock()``; return the median of those times in seconds."""
    what = "median_time"
    # First call: compilation (5 s). Later: 2 ms runs, a few disturbed by other programs.
    plans = [
        (7, 1, [5.0] + [0.002, 0.0021, 0.5, 0.0019, 0.002, 0.0022, 0.0018]),
        (5, 2, [5.0, 0.003] + [0.001, 0.001, 0.3, 0.0012, 0.4]),
        (4, 1, [2.0] + [0.004, 0.002, 0.003, 0.9]),
        # Its lower middle value (0.002) is not the median without its last call (0.0021): each mistake's
        # hint then explains only its own failures.
        (6, 2, [5.0, 0.004] + [0.002, 0.0021, 0.3, 0.0019, 0.0023, 0.0017]),
        (3, 0, [0.004, 0.001, 0.002]),  # no warm-up: every call is timed (a function compiled before)
    ]
    rng = np.random.default_rng(71)  # and one drawn at random (the grader draws other ones)
    repeat, warmup = int(rng.integers(5, 10)), int(rng.integers(1, 3))
    runs = (0.001 * (1 + rng.random(repeat))).round(6).tolist()
    runs[int(rng.integers(repeat))] = 0.25  # a disturbed run
    plans.append((repeat, warmup, [float(rng.integers(2, 9))] + [0.004] * (warmup - 1) + runs))
    failures = []  # (case, result, expected, timed, mistakes, the hints whose value it returned)
    for repeat, warmup, durations in plans:
        clock = _FakeClock(durations)
        case = (f"repeat={repeat}, warmup={warmup}, call times {durations} s"
                + (" (the first is a compilation)" if warmup else ""))
        try:
            result = function(clock.work, repeat=repeat, warmup=warmup, clock=clock)
        except NotImplementedError:
            raise
        except CheckFailed as error:
            raise CheckFailed(f"{error}, for {case}.\nHint: first `warmup` untimed calls (none when warmup is 0: "
                              "`for _ in range(warmup)`), then `repeat` timed ones") from None
        except TypeError as error:  # parameters named otherwise, or positional only
            raise CheckFailed(f"{what}: median_time(f, repeat={repeat}, warmup={warmup}, clock=clock) raised "
                              f"TypeError: {error}.\nHint: name the parameters function, repeat, warmup and "
                              "clock, as the exercise does: the lesson's later cells give them by name") from None
        except Exception as error:  # the student's code fails on this plan: report the earlier ones' values first
            if failures:
                break
            raise CheckFailed(f"{what}: median_time(f, repeat={repeat}, warmup={warmup}, clock=clock) raised "
                              f"{type(error).__name__}: {error}, for {case}.\nHint: first `warmup` untimed calls "
                              "(none when warmup is 0), then `repeat` timed ones; return their median") from None
        timed = durations[warmup:]
        expected = statistics.median(timed)
        if clock.calls != warmup + repeat:
            raise CheckFailed(f"{what}: the function ran {clock.calls} times for {case}; expected "
                              f"warmup + repeat = {warmup + repeat}.\nHint: first `warmup` untimed calls, "
                              "then `repeat` timed ones")
        if isinstance(result, np.floating) and result.dtype.itemsize >= 8:
            result = float(result)  # float64 or wider: the times' digits are all there
        if isinstance(result, np.floating):
            raise CheckFailed(f"{what}: returned {result!r} for {case}, a NumPy {result.dtype} (float32 keeps 7 "
                              "digits and rounds the times).\nHint: keep the times as Python floats (clock() "
                              "returns them) and return statistics.median of them, or float(np.median(times))")
        if result is None or not isinstance(result, (int, float)):
            raise CheckFailed(f"{what}: returned {result!r} for {case}; return the median time in seconds")
        if clock.readings == 0 and not math.isclose(result, statistics.median(durations[warmup:]), rel_tol=1e-9):
            raise CheckFailed(f"{what}: returned {result!r} s for {case} without calling clock() once.\nHint: read "
                              "the time with the `clock` it is given (here the checker's clock, whose time moves "
                              "only while the function runs), not with time.time or time.perf_counter directly")
        if not math.isclose(result, expected, rel_tol=1e-9):
            mistakes = _median_time_mistakes(timed, durations, repeat, warmup)
            failures.append((case, result, expected, timed, mistakes,
                             {hint for value, hint in mistakes if math.isclose(result, value, rel_tol=1e-9)}))
    if failures:
        case, result, expected, timed, mistakes, _ = failures[0]
        # The hint that explains the most failing plans (one plan's numbers can match two mistakes), first in
        # the order of the first plan's mistakes; the plan without a warm-up has fewer mistakes to match.
        counts = [sum(hint in matched for *_, matched in failures) for _, hint in mistakes]
        explaining = [hint for (_, hint), count in zip(mistakes, counts) if count == max(counts) > 0]
        if explaining:
            raise CheckFailed(f"{what}: returned {result!r} s for {case}; expected {expected!r} s.\n"
                              f"Hint: {explaining[0]}")
        raise CheckFailed(f"{what}: returned {result!r} s for {case}; expected {expected!r} s (the median of the "
                          f"timed calls {timed}).\nHint: time each of the `repeat` calls alone, clock() just "
                          "before and just after it, keep the durations in a list and return their median "
                          "(statistics.median), in seconds")
    _require_median_time_calls(function, what)
    passed(what, len(plans))


def _require_median_time_calls(function, what):
    """The calls the exercise's signature allows besides the graded ones
    (which give every argument by name): repeat and warmup by position,
    median_time(f, 3, 2, clock=clock), and the defaults, median_time(f,
    clock=clock). Read from what the function does, so *args, a decorator
    or a partial (one that fixes clock too) pass."""
    asked = "median_time(function, repeat=7, warmup=1, clock=time.perf_counter)"
    durations = [5.0, 0.004, 0.002, 0.006, 0.001]  # 2 warm-up calls, 3 timed: median 0.002; swapped, 0.0035
    clock = _FakeClock(durations)
    try:
        result = function(clock.work, 3, 2, clock=clock)
    except (TypeError, CheckFailed) as error:
        raise CheckFailed(f"{what}: median_time(f, 3, 2, clock=clock) failed ({error}); the exercise asks for {asked}, "
                          "its arguments given by position or by name") from None
    if clock.calls == 5 and isinstance(result, (int, float)) and math.isclose(result, 0.0035, rel_tol=1e-9):
        raise CheckFailed(f"{what}: median_time(f, 3, 2, clock=clock) timed 2 calls after 3 warm-up ones; the exercise "
                          f"asks for {asked}, in that order: 3 timed calls after 2 warm-up ones")
    clock = _FakeClock([5.0] + [0.002] * 29)
    try:
        function(clock.work, clock=clock)
    except (TypeError, CheckFailed) as error:
        raise CheckFailed(f"{what}: median_time(f, clock=clock) failed ({error}); the exercise asks for {asked}: "
                          "repeat and warmup have defaults") from None
    if clock.calls != 8:
        raise CheckFailed(f"{what}: median_time(f, clock=clock) called f {clock.calls} times; the exercise asks for "
                          f"{asked}: with the defaults, 1 warm-up call and 7 timed ones")


# --------------------------------------------------------------------------
# 07.2 arithmetic intensity
# --------------------------------------------------------------------------


def carafe_traffic(n, c, h, w, kernel_size, scale, group=1, itemsize=4):
    """(FLOPs, fewest bytes) of one CARAFE forward: the lesson's reference
    for exercise 07.2, used by the cells after it."""
    outputs = n * c * scale * h * scale * w
    flops = 2 * kernel_size * kernel_size * outputs
    moved = itemsize * (n * c * h * w + n * group * kernel_size * kernel_size * scale * h * scale * w + outputs)
    return flops, moved


def check_carafe_traffic(function):
    """``function`` is the student's ``carafe_traffic(n, c, h, w, kernel_size, scale, group, itemsize)`` ->
    ``(flops, bytes)``: the floating-point operations of CARAFE's forward
    (a multiply and an add per window slot and output element) and the
    fewest bytes it must move (read x and the masks once, write out once)."""
    what = "carafe_traffic"
    cases = [(1, 256, 64, 64, 5, 2, 1, 4), (2, 64, 30, 17, 3, 2, 4, 4), (1, 128, 120, 120, 5, 2, 1, 2),
             (3, 16, 9, 11, 7, 4, 2, 8), (1, 1, 1, 1, 1, 1, 1, 4)]
    rng = np.random.default_rng(72)  # and one drawn at random (the grader draws other ones)
    group = int(rng.choice([1, 2, 4]))
    cases.append((int(rng.integers(1, 4)), group * int(rng.integers(1, 40)), int(rng.integers(1, 50)),
                  int(rng.integers(1, 50)), int(rng.choice([1, 3, 5, 7])), int(rng.integers(1, 5)), group,
                  int(rng.choice([2, 4, 8]))))
    for case in cases:
        n, c, h, w, k, s, g, itemsize = case
        expected = carafe_traffic(*case)
        got = function(n, c, h, w, k, s, g, itemsize)
        name = f"n={n}, c={c}, h={h}, w={w}, kernel_size={k}, scale={s}, group={g}, itemsize={itemsize}"
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            raise CheckFailed(f"{what}: returned {got!r} for {name}; return a pair (flops, bytes)")
        flops, moved = got
        outputs = n * c * s * h * s * w
        if (moved, flops) == expected and flops != moved:
            raise CheckFailed(f"{what}: returned ({flops}, {moved}) for {name}; expected {expected}.\nHint: the two "
                              "are swapped: return (flops, bytes), the FLOPs first")
        if flops != expected[0]:
            hint = "count a multiply and an add for each of the k*k window slots of each output element"
            if n > 1 and flops * n == expected[0]:  # a multiply-add count fails the first case already (n = 1)
                hint = "that counts one image: every one of the n images of the batch is computed"
            elif s > 2 and flops * s == 2 * expected[0]:  # right at scale 2 (the cases before), wrong at 4
                hint = (f"that counts 2 * s = {2 * s} output pixels per input pixel, which is s * s only for s = 2: "
                        f"the output has (s*h) * (s*w) pixels per plane, {s * s} per input pixel here (scale ** 2, "
                        "not scale * 2)")
            elif flops == expected[0] // 2:
                hint = "that counts multiply-adds; a multiply-add is two floating-point operations"
                probe = (3, 16, 9, 11, 7, 4, 2, 8)  # scale 4: a lost factor of the scale is no longer half
                probed = function(*probe)
                if isinstance(probed, (tuple, list)) and probed and probed[0] == carafe_traffic(*probe)[0] // 4:
                    hint = "a factor of the scale is missing: the output has (s*h) * (s*w) pixels per plane"
            elif flops == 2 * k * k * n * s * h * s * w * g:
                hint = "every channel computes its own sum: count every output element, not every output pixel"
            raise CheckFailed(f"{what}: {flops} FLOPs for {name}; expected {expected[0]}.\nHint: {hint}")
        if moved != expected[1]:
            parts = {"x": itemsize * n * c * h * w, "masks": itemsize * n * g * k * k * s * h * s * w,
                     "out": itemsize * outputs}
            hint = "x once (n*c*h*w values), the masks once (n*group*k*k*(s*h)*(s*w)), out once, times itemsize"
            for part, size in parts.items():
                if moved == expected[1] - size:
                    hint = f"the bytes of {part} are missing: a kernel must read (or write) every value of it once"
            if n > 1 and moved * n == expected[1]:
                hint = "that counts one image: the bytes of all n images of the batch move"
            elif moved == expected[1] // itemsize:
                hint = "that counts values; multiply by itemsize to get bytes"
            elif moved == itemsize * (n * c * k * k * s * h * s * w + parts["masks"] // itemsize + outputs):
                hint = "that counts x once per window slot and output, as the unfold version does; the fewest " \
                       "bytes read each value of x once"
            elif moved == expected[1] - parts["masks"] + itemsize * n * k * k * s * h * s * w:
                hint = "there are `group` masks per output pixel: n*group*k*k*(s*h)*(s*w) values"
            elif itemsize != 4 and moved == expected[1] // itemsize * 4:
                hint = "that is 4 bytes a value whatever itemsize is: multiply by the itemsize argument (2 for " \
                       "float16, 8 for float64)"
            elif s > 1 and moved == expected[1] - parts["out"] + itemsize * n * c * h * w:
                hint = "out is counted at the input's resolution: it has (s*h) * (s*w) pixels per plane"
            elif s > 1 and moved == expected[1] - parts["masks"] + itemsize * n * g * k * k * h * w:
                hint = "the masks are counted at the input's resolution: there is one per output pixel, " \
                       "(s*h) * (s*w) per slot and group"
            raise CheckFailed(f"{what}: {moved} bytes for {name}; expected {expected[1]}.\nHint: {hint}")
    passed(what, len(cases))


# --------------------------------------------------------------------------
# 07.3 coalescing: CARAFE channels-last
# --------------------------------------------------------------------------


def carafe_inputs(n, c, h, w, k, s, g, seed):
    """(x, masks): float32 NumPy inputs of a CARAFE call, x of shape (n, c,
    h, w) drawn from a normal distribution and masks of shape (n, g*k*k, s*h,
    s*w), each group's k*k slots a softmax (they sum to 1), both drawn from
    ``seed``: the maps the checkers and the lesson's cells use."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    logits = torch.from_numpy(rng.standard_normal((n, g, k * k, s * h, s * w)).astype(np.float32))
    masks = torch.softmax(logits, dim=2).reshape(n, g * k * k, s * h, s * w).numpy()
    return x, masks


def _reference(x, masks, k, s, g=1):
    return carafe_reference(torch.from_numpy(x).double(), torch.from_numpy(masks).double(), k, s, g).numpy()


def _wrong_index(error, what, hint):
    if isinstance(error, IndexError):
        return CheckFailed(f"{what}: a thread indexed out of bounds ({error}).\nHint: {hint}")
    if "array index type float" in str(error):
        return CheckFailed(f"{what}: an array index is a float; write `Y // scale`, not `math.floor(Y / scale)`")
    return None


def _index_hint(error, x_name, row_axis, hint):
    """A hint for the array and axis an index error names (the recorder's
    message: "x[0, 3, 0, 6] with x of shape (1, 3, 3, 32): index 3 is out of
    bounds for axis 1 with size 3"), else ``hint``."""
    found = re.search(r"(\w+)\[[^\]]*\] with \w+ of shape \([^)]*\): index (-?\d+) is out of bounds for axis "
                      r"(\d+) with size (\d+)", str(error))
    if found is None:
        return hint
    name, index, axis, size = found.group(1), int(found.group(2)), int(found.group(3)), int(found.group(4))
    if name == x_name and axis in (row_axis, row_axis + 1):
        what = "row" if axis == row_axis else "column"
        order = "x[n, row, col, c]" if row_axis == 1 else "x[n, c, row, col]"
        # The same read past the edge comes from a test with <=, from one against the other axis's size, and
        # from the row and column swapped in the index: all three named.
        return (f"a window {what} past the map's edge was read ({what} {index} of {size}): a slot is inside when "
                f"0 <= {what} < x.shape[{axis}] = {size}: test with `<`, not `<=`, against the size of the axis "
                f"that index goes to, and index x as {order}")
    if axis == 0:
        return (f"the batch index came out as {index} with {size} image(s): the flat index unravels into the other "
                "dimensions too few times, or with a size written into the kernel; take every size from the arrays' "
                "shapes")
    return hint


def _record_checked(kernel, launch, *args, what, hint, work_items, guard="if i < ...:", x_row_axis=None):
    """Run ``kernel`` recorded; an index error names the threads past the end
    first when the grid has more threads than ``work_items`` (whole blocks),
    then the array and axis it indexed past (``x``'s rows at ``x_row_axis``)."""
    try:
        return record_kernel(kernel, launch, *args)
    except (NotImplementedError, CheckFailed):
        raise
    except Exception as error:
        threads = launch[0] * launch[1]
        # The simulator names the failing thread: "tid=[t, 0, 0] ctaid=[b, 0, 0]".
        where = re.search(r"tid=\[(\d+), \d+, \d+\] ctaid=\[(\d+)", str(error))
        past_the_end = int(where.group(2)) * launch[1] + int(where.group(1)) >= work_items if where else True
        if threads > work_items and past_the_end:
            hint = (f"the grid has {threads} threads for {work_items} (whole blocks of {launch[1]}): the threads "
                    f"past the end must do nothing (`{guard}` around the body, its bound the {work_items} threads the "
                    f"work needs). Then: {hint}")
        elif x_row_axis is not None:
            hint = _index_hint(error, _parameter_names(kernel)[0], x_row_axis, hint)
        failure = _wrong_index(error, what, hint)
        if failure is None:
            raise
        raise failure from None


def _never_written(record, out, out_name, what, case, hint):
    """CheckFailed for the first NaN left in ``out`` (the checker fills it
    with NaN): never written, or written by adding into its NaN."""
    first = tuple(int(i) for i in np.argwhere(np.isnan(out))[0])
    offset = int(np.ravel_multi_index(first, out.shape))
    if record.stores_per_element(out_name).get(offset):
        return CheckFailed(f"{what}: out{first} was written but is NaN for {case}.\nHint: the kernel adds into "
                           "`out` (`out[...] += ...`), whose old value is not zero (the checker fills it with "
                           "NaN): sum in a local variable and store the total once")
    if out.ndim == 4 and out.shape[0] > 1 and not np.isnan(out[0]).any() and np.isnan(out[1:]).all():
        hint = ("batch element 0 is written and the others never are: the kernel ignores the batch index n (it "
                "writes out[0, ...], or unravels i without n). Unravel i with n as its slowest part and index "
                "every array with n")
    return CheckFailed(f"{what}: out{first} was never written for {case}.\nHint: {hint}")


def _every_output_once(record, name, size, what, case):
    stores = record.stores_per_element(name)
    missing = size - len(stores)
    twice = sum(1 for count in stores.values() if count > 1)
    if twice:
        raise CheckFailed(f"{what}: {twice} outputs were written more than once for {case}: each thread computes "
                          "its own outputs and writes each of them once (a loop over all outputs in every thread, "
                          "or an accumulation into `out`, repeats the work)")
    if missing:
        raise CheckFailed(f"{what}: {missing} of {size} outputs were never written for {case}")


#: The spec skips a slot that reads outside the map: a nan or inf mask value there never reaches the output.
OUTSIDE_NAN_HINT = ("this case's masks hold nan at the slots that read outside the map, which CARAFE skips: skip "
                    "the whole term there, rather than multiplying the mask by a zero value (nan * 0 is nan), and "
                    "read the mask only for a slot inside the map")


def _require_outside_skipped(out, expected, what, case, hint=OUTSIDE_NAN_HINT):
    """``out`` finite and right, for masks nan at the slots outside the map."""
    if np.isnan(out).any():
        first = tuple(int(i) for i in np.argwhere(np.isnan(out))[0])
        raise CheckFailed(f"{what}: out{first} is nan for {case} (the other masks and x are finite).\nHint: {hint}")
    compare(expected, out, what=what, case=case, rtol=1e-4, atol=1e-5, hint=hint)


#: A second block size, for one case: a kernel that assumes blocks of 128 threads goes wrong there.
OTHER_BLOCK = 96


def _other_block_and_outside_nan(run, x, masks, k, s, work_items, case, what, channels_last=False):
    """One case again, three times: launched in blocks of ``OTHER_BLOCK`` (a kernel that assumes 128 goes
    wrong), then in blocks of 128 with masks nan at the slots outside the map (they must be skipped), then with
    a 0 and a nan in x inside the map, read with a nan mask and a mask of 0 (``with_values_inside``: a kernel
    that skips by value drops them). ``run(x, masks, launch)`` launches the kernel on ``work_items`` threads
    and returns its ``out``, (N, s*h, s*w, C) when ``channels_last``."""
    h, w = x.shape[2], x.shape[3]
    layout = (lambda expected: expected.transpose(0, 2, 3, 1)) if channels_last else (lambda expected: expected)
    for block, nan_outside in ((OTHER_BLOCK, False), (128, True)):
        if nan_outside:
            masks = with_nan_outside(masks, k, s, 1, h, w)
            case += ", nan masks at the slots outside the map"
        launch = launch_config(work_items, block)
        out = run(x, masks, launch)
        expected = layout(_reference(x, masks, k, s))
        if nan_outside:
            _require_outside_skipped(out, expected, what, case)
        elif not np.allclose(out, expected, rtol=1e-4, atol=1e-5):
            raise CheckFailed(f"{what}: right with blocks of 128 threads, wrong with blocks of {launch[1]} "
                              f"({launch[0]} blocks) for {case}.\nHint: the kernel assumes the block size; take the "
                              "thread's index from cuda.grid(1) (or cuda.blockIdx.x * cuda.blockDim.x + "
                              "cuda.threadIdx.x), which holds for any launch")
    x, masks = with_values_inside(x, masks, k, s, 1)
    out = run(x, masks, launch_config(work_items, 128))
    require_values_inside(out, _reference(x, masks, k, s), what, case, x.shape, s, channels_last=channels_last)


#: The last case's out.size, 1440, is not a multiple of the 128-thread block.
_CHANNELS_LAST_CASES = [(1, 32, 3, 3, 3, 2), (2, 48, 3, 4, 5, 2), (1, 64, 2, 3, 3, 3), (1, 40, 3, 3, 3, 2)]


def _broadcast_mask_sectors(out_shape, kernel_size):
    """The masks sectors that the asked mapping (one thread per output, the
    channel fastest, blocks of whole warps) loads at most: each warp one
    broadcast per slot for each pixel its threads cover."""
    channels, size = out_shape[-1], math.prod(out_shape)
    total = 0
    for first in range(0, size, WARP_SIZE):  # blocks are whole warps: a warp is 32 consecutive threads
        last = min(first + WARP_SIZE, size) - 1
        total += (last // channels - first // channels + 1) * kernel_size * kernel_size
    return total


def check_carafe_channels_last_kernel(kernel):
    """``kernel(x, masks, out, kernel_size, scale)`` on channels-last arrays:
    ``x`` (N, h, w, C), ``masks`` (N, s*h, s*w, k*k), ``out`` (N, s*h, s*w, C),
    one thread per element of ``out`` on a 1-D grid of 128-thread blocks,
    the channel varying fastest from thread to thread. Graded by the values
    and by the sectors each warp's loads and stores touch."""
    what = "carafe_channels_last_kernel"
    names = _parameter_names(kernel)[:3]
    worst = {"x": 0.0, "masks": 0.0, "out": 0.0}
    masks_beyond_broadcast = False
    compiled = None
    for index, (n, c, h, w, k, s) in enumerate(_CHANNELS_LAST_CASES):
        x, masks = carafe_inputs(n, c, h, w, k, s, 1, 70 + index)
        x_last = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        masks_last = np.ascontiguousarray(masks.transpose(0, 2, 3, 1))
        out = np.full((n, s * h, s * w, c), np.nan, np.float32)
        case = f"x of shape (N, h, w, C) = {x_last.shape}, kernel_size={k}, scale={s}"
        if compiled is None and SIMULATOR and unsolved_exercise(kernel) is None:  # compiles while the cases run
            compiled = ptx.submit(kernel, (x_last, masks_last, out, k, s)) or False
        record = _record_checked(kernel, launch_config(out.size, 128), x_last, masks_last, out, k, s, what=what,
                                 hint="channels-last: x[n, row, col, c], masks[n, Y, X, t], out[n, Y, X, c]; the "
                                      "flat index unravels as (n, Y, X, c) with c fastest", work_items=out.size,
                                 guard="if i < out.size:", x_row_axis=1)
        _require_no_shared_race(record, what, case)
        expected = _reference(x, masks, k, s).transpose(0, 2, 3, 1)
        if np.isnan(out).any():
            raise _never_written(record, out, names[2], what, case,
                                 "thread i computes element i of out, unravelled with every divisor the product "
                                 "of the sizes after it: c = i % C, X = i // C % W, Y = i // (C * W) % H, n = i // "
                                 "(C * W * H), each from the thread's global index cuda.grid(1)")
        compare(expected, out, what=what, case=case, rtol=1e-4, atol=1e-5,
                hint="thread i is element (n, Y, X, c) of out, c = i % C fastest; output (Y, X) reads "
                     "x[n, Y // s - r + dy, X // s - r + dx, c] with weight masks[n, Y, X, dy * k + dx], "
                     "skipping the slots outside the map")
        _every_output_once(record, names[2], out.size, what, case)
        most = record.most_stores_per_thread(names[2])
        if most > 1:
            raise CheckFailed(
                f"{what}: one thread wrote {most} outputs for {case}, on a grid of one thread per output: other "
                "threads wrote none.\nHint: thread i computes element i of out alone, c = i % C, then X, Y and n "
                "from i // C; a loop over the channels inside the kernel leaves the other threads of the warp "
                "idle and spreads its stores over memory")
        for name, key in zip(names, ("x", "masks", "out")):
            kind = "store" if key == "out" else "load"
            worst[key] = max(worst[key], record.sectors_per_request(name, kind))
        # A kernel that stages the masks (one coalesced load per value, then shared memory) makes requests of
        # several sectors, but far fewer of them than one broadcast per thread and slot: judged by the total.
        masks_beyond_broadcast |= record.sectors(names[1]) > _broadcast_mask_sectors(out.shape, k)
    # The first case again, in blocks of 96, then with nan masks at the slots outside the map, then inside it.
    n, c, h, w, k, s = _CHANNELS_LAST_CASES[0]
    x, masks = carafe_inputs(n, c, h, w, k, s, 1, 70)

    def run(x, masks, launch):
        out = np.full((n, s * h, s * w, c), np.nan, np.float32)
        _record_checked(kernel, launch, np.ascontiguousarray(x.transpose(0, 2, 3, 1)),
                        np.ascontiguousarray(masks.transpose(0, 2, 3, 1)), out, k, s, what=what,
                        hint="channels-last: x[n, row, col, c], masks[n, Y, X, t], out[n, Y, X, c]",
                        work_items=out.size, guard="if i < out.size:", x_row_axis=1)
        return out

    _other_block_and_outside_nan(run, x, masks, k, s, n * s * h * s * w * c,
                                 f"x of shape (N, h, w, C) = {(n, h, w, c)}, kernel_size={k}, scale={s}", what,
                                 channels_last=True)
    if compiled:
        ptx.require_compiles(kernel, (), what, future=compiled)
    limits = {"x": 6.0, "masks": 2.5, "out": 6.0}
    for key, limit in limits.items():
        if worst[key] > limit and (key != "masks" or masks_beyond_broadcast):
            ideal = {"x": "4 (32 consecutive float32)", "masks": "1 (all threads of a warp read the same mask "
                     "value)", "out": "4"}[key]
            raise CheckFailed(
                f"{what}: a warp's {'stores to' if key == 'out' else 'loads of'} {key} touch {worst[key]:.1f} "
                f"sectors of 32 bytes on average; ideal is {ideal}, and more than {limit:g} means the threads of "
                "a warp are spread over memory.\nHint: let consecutive threads take consecutive channels: "
                "c = i % C, then X, Y and n")
    passed(what, len(_CHANNELS_LAST_CASES) + 3)
    print(f"  sectors per warp request, the worst case's: x {worst['x']:.1f}, masks {worst['masks']:.1f}, out "
          f"{worst['out']:.1f} (ideal 4, 1, 4; the masks take 2 in a warp that spans two pixels, as when C is "
          "not a multiple of 32)")


# --------------------------------------------------------------------------
# 07.4 reuse: one thread, several channels
# --------------------------------------------------------------------------

_BLOCKED_CASES = [(1, 9, 3, 4, 5, 2), (2, 4, 3, 3, 3, 2), (1, 6, 2, 5, 3, 3), (1, 3, 4, 3, 1, 2)]
#: Wide enough (W = 32) that a warp of the asked mapping, X fastest, covers
#: one output row of one run; with another variable fastest, a warp spreads
#: over several planes.
_BLOCKED_MAPPING_CASE = (1, 32, 4, 16, 3, 2)
#: Sectors per warp request above which the threads of a warp are spread
#: over memory: X fastest gives about 2 for x and 4 for out (32 float32).
_BLOCKED_SECTOR_LIMITS = {"x": 4.0, "out": 6.0}


def check_carafe_channel_blocked_kernel(kernel, channels_per_thread: int):
    """``kernel(x, masks, out, kernel_size, scale)`` on (N, C, h, w) arrays,
    one group: one thread per output pixel and run of ``channels_per_thread``
    channels (the last run may be shorter), ``N * ceil(C / channels_per_thread)
    * H * W`` threads on a 1-D grid, X fastest. Each thread loads each of its
    mask values once and uses it for all channels of its run."""
    what = "carafe_channel_blocked_kernel"
    x_name, masks_name, out_name = _parameter_names(kernel)[:3]
    if unsolved_exercise(kernel) is None and not (isinstance(channels_per_thread, int) and channels_per_thread >= 2):
        raise CheckFailed(f"{what}: CHANNELS_PER_THREAD is {channels_per_thread!r}; with one channel per thread "
                          "a thread loads each mask value for one channel only, so nothing is reused.\nHint: "
                          "set CHANNELS_PER_THREAD to a whole number of 2 or more (4 is a good start)")
    compiled = None
    sectors = {"x": 0.0, "out": 0.0}
    for index, (n, c, h, w, k, s) in enumerate(_BLOCKED_CASES + [_BLOCKED_MAPPING_CASE]):
        x, masks = carafe_inputs(n, c, h, w, k, s, 1, 80 + index)
        out = np.full((n, c, s * h, s * w), np.nan, np.float32)
        runs = math.ceil(c / channels_per_thread)
        threads = n * runs * s * h * s * w
        case = f"x {x.shape}, kernel_size={k}, scale={s}, {channels_per_thread} channels per thread"
        if compiled is None and SIMULATOR and unsolved_exercise(kernel) is None:
            compiled = ptx.submit(kernel, (x, masks, out, k, s)) or False
        record = _record_checked(kernel, launch_config(threads, 128), x, masks, out, k, s, what=what,
                                 hint="the last run of channels is shorter when C is not a multiple of "
                                      "CHANNELS_PER_THREAD: test c < C before using channel c", work_items=threads,
                                 guard="if i < N * runs * H * W:", x_row_axis=2)
        _require_no_shared_race(record, what, case)
        if np.isnan(out).any():
            raise _never_written(record, out, out_name, what, case,
                                 "thread i handles pixel (Y, X) and channels run * CHANNELS_PER_THREAD onwards, "
                                 "for i < N * runs * H * W, runs = ceil(C / CHANNELS_PER_THREAD)")
        expected = _reference(x, masks, k, s)
        hint = "each of the thread's channels sums masks[n, t, Y, X] * x[n, c, row, col] over the inside slots"
        if np.abs(out).max() > 1e3 * (np.abs(expected).max() + 1):  # far beyond any sum of these inputs
            hint = ("values far larger than any sum of these inputs are what was in memory before: "
                    "cuda.local.array does not zero its elements, so set every sums[j] to 0 first")
        compare(expected, out, what=what, case=case, rtol=1e-4, atol=1e-5, hint=hint)
        _every_output_once(record, out_name, out.size, what, case)
        most = record.most_stores_per_thread(out_name)
        if most > channels_per_thread:
            raise CheckFailed(f"{what}: one thread wrote {most} outputs for {case}; a thread handles one output "
                              f"pixel and a run of at most CHANNELS_PER_THREAD = {channels_per_thread} channels, and "
                              f"the grid has a thread for every pixel and run.\nHint: thread i takes pixel (Y, X) and "
                              "channels run * CHANNELS_PER_THREAD onwards, for i < N * runs * H * W, runs = "
                              "ceil(C / CHANNELS_PER_THREAD)")
        pixels = n * s * h * s * w
        mask_loads, x_loads = record.count(masks_name), record.count(x_name)
        allowed = runs * k * k * pixels
        if mask_loads > allowed:
            raise CheckFailed(
                f"{what}: {mask_loads} loads of masks for {case}, {mask_loads / (n * c * s * h * s * w):.2f} per "
                f"output element; with {channels_per_thread} channels per thread it takes at most {allowed} "
                f"({allowed / (n * c * s * h * s * w):.2f} per output).\nHint: load each mask value once into a "
                "local variable, then use it for every channel of the thread's run (the channel loop inside the "
                "slot loop)")
        if x_loads > c * k * k * pixels:
            raise CheckFailed(f"{what}: {x_loads} loads of x for {case}; one per channel, inside slot and pixel is "
                              f"at most {c * k * k * pixels}")
        if (n, c, h, w, k, s) == _BLOCKED_MAPPING_CASE:
            sectors = {"x": record.sectors_per_request(x_name), "out": record.sectors_per_request(out_name, "store")}
    # The first case again, in blocks of 96, then with nan masks at the slots outside the map, then inside it.
    n, c, h, w, k, s = _BLOCKED_CASES[0]
    x, masks = carafe_inputs(n, c, h, w, k, s, 1, 80)
    threads = n * math.ceil(c / channels_per_thread) * s * h * s * w

    def run(x, masks, launch):
        out = np.full((n, c, s * h, s * w), np.nan, np.float32)
        _record_checked(kernel, launch, x, masks, out, k, s, what=what, hint="test c < C before using channel c",
                        work_items=threads, guard="if i < N * runs * H * W:", x_row_axis=2)
        return out

    _other_block_and_outside_nan(run, x, masks, k, s, threads, f"x {x.shape}, kernel_size={k}, scale={s}, "
                                 f"{channels_per_thread} channels per thread", what)
    for key, limit in _BLOCKED_SECTOR_LIMITS.items():
        if sectors[key] > limit:
            raise CheckFailed(
                f"{what}: a warp's {'stores to' if key == 'out' else 'loads of'} {key} touch {sectors[key]:.1f} "
                f"sectors of 32 bytes on average for x of shape {_BLOCKED_MAPPING_CASE[:4]}; more than {limit:g} "
                "means the threads of a warp are spread over memory.\nHint: let neighbouring threads take "
                "neighbouring output columns: X = i % W fastest, then Y, then the run, then n")
    if compiled:
        ptx.require_compiles(kernel, (), what, future=compiled)
    passed(what, len(_BLOCKED_CASES) + 4)
    print(f"  sectors per warp request: x {sectors['x']:.1f}, out {sectors['out']:.1f} (X fastest: about 2 and 4)")


# --------------------------------------------------------------------------
# 07.5 the CPU loop: loop order, contiguous inner loops
# --------------------------------------------------------------------------


def time_side_by_side(functions, repeat: int = 7, warmup: int = 1):
    """Median seconds of each of ``functions``, measured in turns (one run of
    each, then the next round), so that a disturbance hits them all alike."""
    for function in functions:
        for _ in range(warmup):
            function()
    times = [[] for _ in functions]
    for _ in range(repeat):
        for index, function in enumerate(functions):
            start = time.perf_counter()
            function()
            times[index].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def _loops(definition):
    """[(for loop, the loops around it)] of a function's source, outermost first."""
    found = []

    def visit(node, around):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.For, ast.While)):
                found.append((child, around))
                visit(child, around + [child])
            else:
                visit(child, around)

    visit(definition, [])
    return [(loop, around) for loop, around in found if isinstance(loop, ast.For)]


def _is_prange(loop, names):
    """Whether ``loop`` runs over ``numba.prange``, however it was imported
    (``names``: the function's globals)."""
    call = loop.iter
    if not isinstance(call, ast.Call):
        return False
    if isinstance(call.func, ast.Name):
        return call.func.id == "prange" or names.get(call.func.id) is numba.prange
    return isinstance(call.func, ast.Attribute) and call.func.attr == "prange"


def _names_in(node):
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _bound_names(target):
    """The names an assignment target binds: ``a``, ``a, b``; not those
    read in ``out[n, c]`` (which stores into ``out``)."""
    if isinstance(target, ast.Name):
        return {target.id}
    if isinstance(target, (ast.Tuple, ast.List)):
        return {name for element in target.elts for name in _bound_names(element)}
    if isinstance(target, ast.Starred):
        return _bound_names(target.value)
    return set()


def _depending_on(loop, seeds=()):
    """The names inside ``loop`` whose values change with its counter: the
    counter (and ``seeds``), and every name assigned (``=``, ``: int =``,
    ``:=``, ``+=``, a ``for`` target) from one of them, to a fixed point."""
    depends = _bound_names(loop.target) | set(seeds)
    while True:
        grown = set(depends)
        for node in ast.walk(loop):
            if isinstance(node, ast.Assign):
                sources, targets = node.value, node.targets
            elif isinstance(node, (ast.AnnAssign, ast.AugAssign, ast.NamedExpr)) and node.value is not None:
                sources, targets = node.value, [node.target]
            elif isinstance(node, ast.For) and node is not loop:
                sources, targets = node.iter, [node.target]
            else:
                continue
            if _names_in(sources) & grown:
                grown |= {name for target in targets for name in _bound_names(target)}
        if grown == depends:
            return depends
        depends = grown


def _store_targets(node):
    return node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AugAssign) else []


#: Calls that return a view of their array (``out.reshape(-1)``,
#: ``np.ravel(out)``); a copy (``out.copy()``) is another array.
_VIEW_CALLS = {"reshape", "ravel", "view", "transpose", "swapaxes", "asarray", "moveaxis", "expand_dims", "squeeze",
               "atleast_1d", "atleast_2d", "atleast_3d"}


def _called_name(node):
    """The name a call calls: ``f`` of ``f(...)``, ``attr`` of ``a.attr(...)``;
    None for anything else."""
    if isinstance(node, ast.Call):
        if isinstance(node.func, ast.Attribute):
            return node.func.attr
        if isinstance(node.func, ast.Name):
            return node.func.id
    return None


def _viewed(value):
    """The expression ``value`` is a view of, one step down: ``out[n, c]`` in
    ``out[n, c, Y]``, ``out`` in ``out.T``, ``out.flat``, ``out.reshape(-1)`` or
    ``np.ravel(out)``; None when ``value`` is not a view of anything."""
    if isinstance(value, ast.Subscript) or (isinstance(value, ast.Attribute) and value.attr in ("T", "flat")):
        return value.value
    if _called_name(value) in _VIEW_CALLS:
        method = isinstance(value.func, ast.Attribute) and not (
            isinstance(value.func.value, ast.Name) and value.func.value.id in ("np", "numpy"))
        return value.func.value if method else (value.args[0] if value.args else None)
    return None


def _bindings(definition):
    """(line, name, value) for every name bound in the function: ``value`` is
    the expression bound (an element of it for a ``for`` target, marked by
    wrapping it in a Subscript), or None when it cannot be told."""
    found = []

    def bind(target, value, line):
        if isinstance(target, ast.Name):
            found.append((line, target.id, value))
        elif isinstance(target, (ast.Tuple, ast.List)):
            values = value.elts if isinstance(value, (ast.Tuple, ast.List)) and len(value.elts) == len(
                target.elts) else [None] * len(target.elts)
            for element, element_value in zip(target.elts, values):
                bind(element, element_value, line)
        elif isinstance(target, ast.Starred):
            bind(target.value, None, line)

    for node in ast.walk(definition):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                bind(target, node.value, node.lineno)
        elif isinstance(node, (ast.AnnAssign, ast.NamedExpr)) and node.value is not None:
            bind(node.target, node.value, node.lineno)
        elif isinstance(node, ast.For):
            iterated = node.iter
            if (isinstance(iterated, ast.Call) and getattr(iterated.func, "id", None) == "enumerate"
                    and iterated.args and isinstance(node.target, ast.Tuple) and len(node.target.elts) == 2):
                bind(node.target.elts[0], None, node.lineno)  # the count
                bind(node.target.elts[1], ast.Subscript(value=iterated.args[0], slice=ast.Constant(0)), node.lineno)
            else:
                bind(node.target, ast.Subscript(value=iterated, slice=ast.Constant(0)), node.lineno)
    return found


def _view_indices(target, array_name, bindings):
    """The index expressions a store into ``target`` (``line[X]``) goes
    through when it writes ``array_name``: its own, then those of each view
    on the way (``n, c, Y`` of ``line = out[n, c, Y]``); None when it writes
    another array. A name counts as a view as it was last bound before that
    line (``line = out[n, c, Y]``, ``for line in out[n, c]``, views of those):
    bound to another array since, it writes that one."""
    if not isinstance(target, ast.Subscript):
        return None
    indices, value, line = [target.slice], target.value, target.lineno
    for _ in range(50):
        if isinstance(value, ast.Name):
            if value.id == array_name:
                return indices
            earlier = [(at, bound) for at, name, bound in bindings if name == value.id and at <= line]
            if not earlier:
                return None
            line, value = max(earlier, key=lambda binding: binding[0])
            line -= 1  # the names in a binding's value, as bound before it
            continue
        if isinstance(value, ast.Subscript):
            indices.append(value.slice)
        value = _viewed(value)
        if value is None:
            return None
    return None


def _writes_array(target, array_name, bindings):
    return _view_indices(target, array_name, bindings) is not None


def _element_store(target):
    """Whether a store target writes one element at a time (``out[n, c, Y, X]``,
    ``line[X]``), not a slice (``line[a:b]``) or a whole view (``line += v``)."""
    return isinstance(target, ast.Subscript) and not any(isinstance(node, ast.Slice) for node in ast.walk(target.slice))


def _check_rows_structure(fast, what, out_name):
    """What the exercise asks of the loops, read from the source: a prange
    (in a parallel function), and innermost loops writing out with no test
    and no division that changes from one iteration to the next (those keep
    LLVM from vectorising the loop; one on values fixed for the whole loop,
    such as ``Y // scale``, does not)."""
    source = _source(fast)
    if source is None:
        return
    function, definition = source
    loops = _loops(definition)
    if not any(_is_prange(loop, function.__globals__) for loop, _ in loops):
        raise CheckFailed(f"{what}: no loop is split over the cores.\nHint: make the loop over the planes "
                          "`for plane in numba.prange(N * C)`, in a function compiled with "
                          "@numba.njit(parallel=True)")
    if not getattr(fast, "targetoptions", {}).get("parallel"):
        raise CheckFailed(f"{what}: numba.prange splits a loop over the cores only in a function compiled with "
                          "@numba.njit(parallel=True); in a plain @numba.njit it is range")
    found = _varying_test_through_helpers(function, definition, out_name)
    if found is not None:
        loop, operands, test, helpers = found
        where = ""
        if helpers:
            (name, parameter), callers = helpers[-1], [name for name, _ in helpers[:-1]]
            called_by = f", called through `{'` and `'.join(callers)}`" if callers else ""
            where = f" (in your helper `{name}`{called_by}, where it is `{parameter}`)"
        raise CheckFailed(
            f"{what}: the innermost loop that writes {out_name}{where}, over `{ast.unparse(loop.target)}`, has "
            f"{'a test' if test else 'a division'} that changes from one iteration to the next, "
            f"`{ast.unparse(operands)}`, which keeps the compiler from vectorising it.\nHint: build the "
            "upsampled `columns` rows first, and compute before the loop the columns whose slot lies "
            "inside the map, begin to end; then slot column dx of output X is columns[row, X + (dx - r) * "
            "s], with no test and no division in the loop")


def _varying_test_where_written(definition, out_name, names=None):
    """(loop, operands, whether a test) of the first innermost loop in
    ``definition`` that writes ``out_name`` element by element and holds a
    test or a division that changes with its counter; None if there is none.
    ``names``: what the function's names refer to, for the compiled helpers
    that return a view of an argument (``line = row_of(out, n, c, Y)``)."""
    bindings = _bindings(definition) if names is None else _bindings_through_helpers(definition, names)
    for loop, _ in _loops(definition):
        innermost = not any(isinstance(node, ast.For) for node in ast.walk(loop) if node is not loop)
        # Only a loop writing out element by element is the one LLVM vectorises; one that writes a slice of
        # out at a time (out[n, c, Y, a:b] += w * v) leaves that to the slice's own loop, which its tests do
        # not enter.
        if not innermost or not any(_writes_array(target, out_name, bindings) and _element_store(target)
                                    for node in ast.walk(loop) for target in _store_targets(node)):
            continue
        varying = _depending_on(loop)
        for node in ast.walk(loop):
            test = isinstance(node, (ast.If, ast.IfExp, ast.Compare))
            division = isinstance(node, ast.BinOp) and isinstance(node.op, (ast.FloorDiv, ast.Mod))
            if not (test or division):
                continue
            operands = node.test if isinstance(node, (ast.If, ast.IfExp)) else node
            if _names_in(operands) & varying:
                return loop, operands, test
    return None


def _view_returned(helper):
    """The position of the parameter of which every ``return`` of the
    compiled ``helper`` gives a view (``return out[n, c, Y]``), or None."""
    source = _source(helper)
    if source is None:
        return None
    definition = source[1]
    returned = [node.value for node in ast.walk(definition) if isinstance(node, ast.Return) and node.value is not None]
    bindings = _bindings(definition)
    for position, parameter in enumerate(_parameter_names(helper)):
        if returned and all(_writes_array(ast.Subscript(value=value, slice=ast.Constant(0), ctx=ast.Store(),
                                                        lineno=value.lineno), parameter, bindings)
                            for value in returned):
            return position
    return None


def _as_the_view_returned(value, names):
    """``value``, or where it calls a compiled helper that returns a view of
    one of its arguments, that argument's view (``out[0]`` for
    ``row_of(out, n, c, Y)``): the store check then sees what it is."""
    helper = _named_object(value.func, names) if isinstance(value, ast.Call) else None
    if not isinstance(helper, _COMPILED):
        return value
    position = _view_returned(helper)
    given = dict(_arguments_by_position(value, _parameter_names(helper)))
    if position is None or position not in given:
        return value
    return ast.Subscript(value=given[position], slice=ast.Constant(0), ctx=ast.Load(), lineno=value.lineno)


def _bindings_through_helpers(definition, names):
    """``_bindings(definition)``, a call of a compiled helper that returns a
    view of its argument bound as that view (``_as_the_view_returned``)."""
    return [(line, name, _as_the_view_returned(value, names)) for line, name, value in _bindings(definition)]


def _arguments_by_position(call, parameters):
    """(position, argument) of each argument of ``call`` to a function with
    ``parameters``, those given by keyword at their parameter's position."""
    return list(enumerate(call.args)) + [(parameters.index(keyword.arg), keyword.value)
                                         for keyword in call.keywords if keyword.arg in parameters]


def _varying_test_through_helpers(function, definition, out_name, helpers=()):
    """``_varying_test_where_written`` in ``definition``, else in the compiled
    helpers it hands ``out_name`` or a view of it (add_row(out[n, c, Y], ...)),
    and in theirs: (loop, operands, whether a test, [(helper, its name for
    the view)] from the outermost helper in). None if there is none."""
    names = _callable_names(function)
    found = _varying_test_where_written(definition, out_name, names)
    if found is not None:
        return (*found, [])
    for helper, position in _helpers_given_a_view(definition, names, out_name):
        helper_source = _source(helper)
        parameters = _parameter_names(helper)
        if helper_source is None or position >= len(parameters) or helper in helpers:
            continue
        inner = _varying_test_through_helpers(*helper_source, parameters[position], (*helpers, helper))
        if inner is not None:
            loop, operands, test, chain = inner
            return loop, operands, test, [(helper_source[0].__name__, parameters[position]), *chain]
    return None


def _callable_names(function):
    """What a function's names refer to: its globals, and what its closure holds."""
    names = dict(function.__globals__)
    names.update((name, cell.cell_contents) for name, cell in
                 zip(function.__code__.co_freevars, function.__closure__ or ()) if _filled(cell))
    return names


def _named_object(expression, names):
    """What a call's function expression names: a name, or an attribute of
    a module it names (helpers.add_row, package.helpers.add_row); None for
    anything else (no other object's attributes are read)."""
    if isinstance(expression, ast.Name):
        return names.get(expression.id)
    if isinstance(expression, ast.Attribute):
        owner = _named_object(expression.value, names)
        if isinstance(owner, types.ModuleType):
            return owner.__dict__.get(expression.attr)
    return None


def _helpers_given_a_view(definition, names, out_name):
    """(compiled helper, argument position) of each call in ``definition``
    that hands a compiled helper (by its name, or as a module's attribute)
    ``out_name`` or a view of it."""
    bindings = _bindings_through_helpers(definition, names)
    for call in ast.walk(definition):
        helper = _named_object(call.func, names) if isinstance(call, ast.Call) else None
        if not isinstance(helper, _COMPILED):
            continue
        for position, argument in _arguments_by_position(call, _parameter_names(helper)):
            # As a store target: the array itself, or through the views it was made from.
            target = ast.Subscript(value=argument, slice=ast.Constant(0), ctx=ast.Store(), lineno=call.lineno)
            if _writes_array(target, out_name, bindings):
                yield helper, position


def _prange_loops(fast):
    """(loop, the function's bindings) for each prange loop in ``fast``'s
    source that no other prange encloses (numba runs an inner one as a
    plain range); none where there is no source to read."""
    source = _source(fast)
    if source is None:
        return
    function, definition = source
    bindings = _bindings(definition)
    names = function.__globals__
    for loop, around in _loops(definition):
        if _is_prange(loop, names) and not any(_is_prange(outer, names) for outer in around):
            yield loop, bindings


#: Stands, among the names an index depends on, for ``numba.get_thread_id()``:
#: each thread's own value, as good as the counter for telling iterations apart.
_THREAD_ID = "<numba.get_thread_id()>"


def _names_or_thread_id(node):
    names = _names_in(node)
    if any(_called_name(call) == "get_thread_id" for call in ast.walk(node)):
        names.add(_THREAD_ID)
    return names


def _same_element_every_iteration(target, array_name, loop, bindings):
    """Whether a store into ``target`` writes ``array_name`` at an index
    that depends neither on ``loop``'s counter nor on the thread's id: the
    same element in every iteration, its own or its view's."""
    indices = _view_indices(target, array_name, bindings)
    if indices is None:
        return False
    thread_names = {name for line, name, value in bindings if value is not None
                    and loop.lineno <= line <= loop.end_lineno and _THREAD_ID in _names_or_thread_id(value)}
    varying = _depending_on(loop, seeds=thread_names | {_THREAD_ID})
    return not set().union(*map(_names_or_thread_id, indices)) & varying


def _racing_prange(fast, out_name):
    """The counter of a prange loop whose body adds into ``out_name`` (or a
    view of it) at an index that does not depend on the counter (so every
    iteration, on its own thread, adds into the same elements: a race), or
    None."""
    for loop, bindings in _prange_loops(fast):
        for node in ast.walk(loop):
            if isinstance(node, ast.AugAssign) and _same_element_every_iteration(node.target, out_name, loop,
                                                                                   bindings):
                return ast.unparse(loop.target)
    return None


#: NumPy calls that make a new array.
_ALLOCATIONS = {"zeros", "empty", "ones", "full", "zeros_like", "empty_like", "ones_like", "full_like", "copy",
                "astype", "array", "ascontiguousarray", "pad"}


def _makes_an_array(value, names):
    """Whether ``value`` makes a new array: a NumPy allocation (``np.zeros``,
    ``x.astype``), a view of one (``np.empty(n).reshape(h, w)``), or a call of
    a compiled helper of the function's (``make_buffer(h, w)``; ``names``:
    its globals), whose result is the caller's own."""
    called = _called_name(value)
    if called in _ALLOCATIONS:
        return True
    if called in _VIEW_CALLS and isinstance(value.func, ast.Attribute):
        return _makes_an_array(value.func.value, names)
    return (isinstance(value, ast.Call) and isinstance(value.func, ast.Name)
            and isinstance(names.get(value.func.id), _COMPILED))


def _filled(cell):
    try:
        cell.cell_contents
    except ValueError:  # a closure variable not yet assigned
        return False
    return True


def _shared_scratch(fast):
    """(counter, name) of a prange loop and an array made outside it (a
    scratch buffer such as ``columns``) that its body writes at an index
    that does not depend on the counter: one array that all the loop's
    threads fill at once, each over the others' values (a race), or None.
    An array made inside the loop is each iteration's own."""
    source = _source(fast)
    names = _callable_names(source[0]) if source is not None else {}  # the helpers it may call
    for loop, bindings in _prange_loops(fast):
        inside = range(loop.lineno, loop.end_lineno + 1)
        bound_inside = {name for line, name, _ in bindings if line in inside}
        made_outside = {name for line, name, value in bindings
                        if line not in inside and _makes_an_array(value, names)} - bound_inside
        for node in ast.walk(loop):
            for target in _store_targets(node):
                for name in sorted(made_outside):
                    if _same_element_every_iteration(target, name, loop, bindings):
                        return ast.unparse(loop.target), name
    return None


def _shared_scratch_failure(counter, name, what):
    return CheckFailed(
        f"{what}: `{name}` is made once, before the prange over `{counter}`, and every iteration of that loop "
        f"writes into the same elements of it, all at once on several threads: each overwrites the rows another "
        "is still reading (a race; the values come out wrong now and then, more often on larger maps).\nHint: "
        f"make `{name}` inside the prange loop, so that each iteration has its own")


def _race_failure(counter, what, out_name):
    return CheckFailed(
        f"{what}: the iterations of the prange over `{counter}` run at once on several threads, and they all add "
        f"into the same elements of {out_name}: a race (one thread's addition overwrites another's, so the sums "
        "come out wrong now and then).\nHint: put prange on the outermost loop, over the planes: each iteration "
        "then writes a plane of its own")


def _outer_prange_work(fast, args):
    """[(counter, iterations, accesses)] of each run of a prange loop that no
    other prange encloses (numba splits only those over the threads): from
    the function's source run as Python on ``args``, with the loops counted
    and the arrays recorded. None without source, or where that run fails."""
    source = _source(fast)
    if source is None:
        return None
    function, definition = source
    names = function.__globals__
    tree = ast.parse(ast.unparse(definition))  # a copy to rewrite, its loops in the same order
    copy = tree.body[0]
    copy.decorator_list = []
    counters = []
    for (loop, _), (original, around) in zip(_loops(copy), _loops(definition)):
        if _is_prange(original, names) and not any(_is_prange(outer, names) for outer in around):
            counters.append(ast.unparse(original.target))
            loop.iter = ast.Call(ast.Name("__counted__", ast.Load()), [ast.Constant(len(counters) - 1), loop.iter],
                                 [])
    log, wrapped, _ = _wrap(fast, args)
    runs = []

    def counted(loop_id, iterations):
        start = len(log)
        yield from iterations
        runs.append((counters[loop_id], len(iterations), len(log) - start))

    ast.fix_missing_locations(tree)
    namespace = dict(as_python(function).__globals__, __counted__=counted)
    closure = getattr(function, "__closure__", None) or ()
    namespace.update(zip(function.__code__.co_freevars, (cell.cell_contents for cell in closure)))
    try:
        exec(compile(tree, "<prange counted>", "exec"), namespace)
        namespace[copy.name](*wrapped)
    except Exception:  # noqa: BLE001 - the other checks have run this function; this one then says nothing
        return None
    return runs


#: One image, several planes: a prange over the planes (or over chunks of 4 of them) has 2 or more
#: iterations, one over the batch has 1.
_SPLIT_CASE = (1, 8, 3, 8, 3, 2)


def _check_prange_splits(fast, what):
    """The prange that does most of the work must give one image's work to
    several threads: one over the batch has a single iteration there."""
    n, c, h, w, k, s = _SPLIT_CASE
    x, masks = carafe_inputs(n, c, h, w, k, s, 1, 96)
    runs = _outer_prange_work(fast, (x, masks, np.zeros((n, c, s * h, s * w), np.float32), k, s))
    if not runs:
        return
    counter, iterations, _ = max(runs, key=lambda run: run[2])
    if iterations < 2:
        raise CheckFailed(f"{what}: the prange over `{counter}`, which does most of the work, has {iterations} "
                          f"iteration for x {x.shape}, one image: its work all runs on one thread while the other "
                          "cores wait.\nHint: split the planes, `for plane in numba.prange(N * C)` with "
                          "`n, c = plane // C, plane % C`, so that even one image gives every core planes of its own")


def _nested_prange(fast):
    """The counter of a prange loop inside another loop, or None."""
    source = _source(fast)
    if source is None:
        return None
    function, definition = source
    for loop, around in _loops(definition):
        if around and _is_prange(loop, function.__globals__):
            return ast.unparse(loop.target)
    return None


#: Run on all threads after the small cases, three times: a race the source
#: does not show (``_racing_prange``) gives a wrong sum in most runs here.
_RACE_CASE = (1, 8, 32, 32, 5, 2)
_CPU_CASES = [(1, 2, 3, 16, 3, 2), (2, 3, 4, 5, 5, 2), (1, 1, 2, 7, 3, 3)]
#: Traced (as Python) for the access order: rows long enough to span several cache lines.
_TRACE_CASE = (1, 2, 3, 16, 3, 2)


def _read_past_an_array(error, low_height):
    """What a loop that raised ``error`` as plain Python did compiled, and the
    likely cause: a row past the map's ``low_height`` rows, or a column."""
    if re.search(rf"axis 0 with size {low_height}\b", str(error)):
        hint = ("a row index past the first axis: a window row outside the map (test 0 <= row < h before reading "
                "row `row` of `columns`), or an output row past H")
    else:
        hint = ("check the size of what you index there: the `columns` rows are W long, and slot dx reads them "
                "from begin + (dx - r) * s up to end + (dx - r) * s")
    return (f"\nRun as plain Python, where NumPy checks bounds, your function raises IndexError: {error}. Compiled, "
            f"it read past that array instead.\nHint: {hint}")


def _index_error_as_python(fast, x, masks, out, k, s):
    """The IndexError ``fast`` raises run as plain Python, or None. Compiled,
    numba checks no bounds: a read past an array gives wrong values (NaN,
    where that memory holds one), not an error; as Python, NumPy checks."""
    try:
        as_python(fast)(x, masks, np.zeros_like(out), k, s)
    except IndexError as error:
        return error
    except Exception:  # noqa: BLE001 - any other failure as Python says nothing more than the values
        return None
    return None


def _unwritten_failure(fast, x, masks, k, s, first, what, case):
    """The failure for an output left NaN, told apart by a second run on
    an output filled with 7: an element still 7 there was never reached by
    the loops; one that came out 7 more than its sum was added into without
    being set first."""
    probe = np.full((x.shape[0], x.shape[1], s * x.shape[2], s * x.shape[3]), 7.0, np.float32)
    fast(x, masks, probe, k, s)
    expected = _reference(x, masks, k, s)[first]
    if probe[first] == 7.0 and expected != 7.0:
        return CheckFailed(
            f"{what}: out{first} was never written for {case}: no iteration of your loops reached it.\nHint: "
            f"check the ranges of the loops, which must reach every n < {x.shape[0]}, c < {x.shape[1]}, "
            f"Y < {probe.shape[2]} and X < {probe.shape[3]} (range(H), not range(H - 1); the prange over N * C "
            "covers every image)")
    if np.isclose(probe[first], expected + 7.0, rtol=1e-4, atol=1e-4):
        return CheckFailed(f"{what}: out{first} was added into but never set (it is NaN) for {case}.\nHint: zero "
                           "each output row before adding the slots into it")
    return CheckFailed(f"{what}: out{first} is NaN for {case}: it was never written, or a NaN was read.\nHint: "
                       "set each output element (zero it, then add the slots into it) and read only inside x")


def check_carafe_rows_cpu(fast, slow, min_speedup: float = 1.5, size=(1, 64, 64, 64)):
    """``fast(x, masks, out, kernel_size, scale)``: CARAFE forward on (N, C,
    h, w) float32 arrays, one group, ``numba.njit``-compiled, writing every
    element of ``out``. Graded on the values (also for masks nan at the
    slots outside the map, which it must skip), on the order of its accesses
    (run as Python: most consecutive accesses must stay in one cache line)
    on what the exercise asks of its loops (a prange that gives one image's
    work to several threads, which one over the batch does not; a prange
    whose iterations write elements of their own: one that adds into out at an index that does not
    depend on its counter is named as the race it is, and a larger map is
    run three times for races the source does not show; no test and no
    division in the innermost loop writing out), and last, after every
    other rule, on its speed against ``slow`` measured side by side on one
    thread (median of 5, at least ``min_speedup`` times faster; a sound loop
    order, vectorised, is several times faster, so a loaded machine does not
    turn a pass into a failure, and the number of cores does not change the
    grade). A loop that LLVM leaves scalar (one over ``range(begin, end)``)
    is near that line, on either side of it as the machine goes: 1.1 to 1.5
    times faster on a 2-core Xeon (AVX-512), above 1.5 on a 2-core AMD EPYC."""
    what = "carafe_rows_cpu"
    stub = unsolved_exercise(fast)
    if stub is not None:
        raise NotImplementedError(stub)
    if not hasattr(fast, "py_func"):
        raise CheckFailed(f"{what}: this is a plain Python function; compile it with numba.njit (the checker times "
                          "it, and Python runs these loops a hundred times slower)")
    out_name = _parameter_names(fast)[2]
    counter = _racing_prange(fast, out_name)
    if counter is not None:
        raise _race_failure(counter, what, out_name)
    shared = _shared_scratch(fast)
    if shared is not None:
        raise _shared_scratch_failure(*shared, what)
    for index, (n, c, h, w, k, s) in enumerate(_CPU_CASES):
        x, masks = carafe_inputs(n, c, h, w, k, s, 1, 90 + index)
        out = np.full((n, c, s * h, s * w), np.nan, np.float32)
        case = f"x {x.shape}, kernel_size={k}, scale={s}"
        try:
            fast(x, masks, out, k, s)
        except NotImplementedError:
            raise
        except IndexError as error:
            raise CheckFailed(f"{what}: index out of bounds for {case} ({error}).\nHint: the inner loop over X "
                              "runs only over the columns whose slot lies inside the map") from None
        if np.isnan(out).any():
            first = tuple(int(i) for i in np.argwhere(np.isnan(out))[0])
            error = _index_error_as_python(fast, x, masks, out, k, s)
            if error is not None:  # what it read past an array happened to be NaN
                raise CheckFailed(f"{what}: values wrong for {case}: out{first} is NaN."
                                  + _read_past_an_array(error, h)) from None
            raise _unwritten_failure(fast, x, masks, k, s, first, what, case)
        expected = _reference(x, masks, k, s)
        wrong_columns = np.argwhere(~np.isclose(out, expected, rtol=1e-4, atol=1e-5))[:, 3]
        near_a_side = ((k - 1) // 2 + 1) * s  # the columns whose window, or the one next to theirs, leaves the map
        border = (len(wrong_columns) and 2 * near_a_side < s * w
                  and ((wrong_columns < near_a_side) | (wrong_columns >= s * w - near_a_side)).all())
        try:
            compare(expected, out, what=what, case=case, rtol=1e-4, atol=1e-5,
                    hint="only the columns near the left and right sides are wrong: check begin and end, the first "
                         "X whose slot column lies inside the map and the first past it" if border else
                         "out[n, c, Y, X] sums masks[n, dy * k + dx, Y, X] * x[n, c, Y // s - r + dy, X // s - r + dx] "
                         "over the slots inside the map")
        except CheckFailed as wrong:
            error = _index_error_as_python(fast, x, masks, out, k, s)
            if error is not None:
                raise CheckFailed(f"{wrong}" + _read_past_an_array(error, h)) from None
            raise
    n, c, h, w, k, s = _RACE_CASE
    x, masks = carafe_inputs(n, c, h, w, k, s, 1, 97)
    expected = _reference(x, masks, k, s)
    for _ in range(3):
        out = np.full((n, c, s * h, s * w), np.nan, np.float32)
        fast(x, masks, out, k, s)
        if not np.allclose(out, expected, rtol=1e-4, atol=1e-5):
            raise CheckFailed(f"{what}: wrong values on x {x.shape}, k={k}, s={s}, in one of three runs, after "
                              f"right ones on the small cases: two threads writing the same elements of {out_name} "
                              "(a race) give that, or a mistake that shows only on a larger map.\nHint: split "
                              "only the loop over the planes with prange, and check the indices for a larger map")
    n, c, h, w, k, s = _TRACE_CASE
    x, masks = carafe_inputs(n, c, h, w, k, s, 1, 99)
    record = record_function(fast, x, masks, np.zeros((n, c, s * h, s * w), np.float32), k, s)
    names = _parameter_names(fast)[:3]
    switches = {name: record.line_switches(name) for name in names}
    for name, share in switches.items():
        if share > 0.3:
            raise CheckFailed(
                f"{what}: {share:.0%} of the accesses to {name} leave the cache line of the access before; a loop "
                "whose innermost index is the last (contiguous) axis stays in a line for 16 float32.\nHint: "
                "put the loop over X innermost, the loops over the slots (dy, dx) around it, and make the "
                "channel loop an outer one")
    _check_rows_structure(fast, what, out_name)
    _check_prange_splits(fast, what)
    # The spec's rule for the slots outside the map (the zero-padded loop of earlier versions of this
    # exercise, right on finite masks, is told here), before the timing: a wrong answer is told it is wrong,
    # whatever its speed on this machine.
    n, c, h, w, k, s = _CPU_CASES[1]
    x, masks = carafe_inputs(n, c, h, w, k, s, 1, 95)
    masks = with_nan_outside(masks, k, s, 1, h, w)
    out = np.full((n, c, s * h, s * w), np.nan, np.float32)
    fast(x, masks, out, k, s)
    _require_outside_skipped(out, _reference(x, masks, k, s), what,
                             f"x {x.shape}, kernel_size={k}, scale={s}, masks nan at the slots outside the map",
                             hint="skip the slots outside the map, in rows (the window-row test) and in "
                                  "columns (X only from begin to end), rather than reading zeros padded around "
                                  "the map: a nan or inf mask at a slot outside it must not reach out, and nan * 0 "
                                  "is nan")
    # Last, the speed.
    n, c, h, w = size
    x, masks = carafe_inputs(n, c, h, w, 5, 2, 1, 98)
    out_fast, out_slow = (np.zeros((n, c, 2 * h, 2 * w), np.float32) for _ in range(2))
    # One thread for both: the grade is the loop order's, the same on a laptop's 2 cores and a server's 64.
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        fast_time, slow_time = time_side_by_side([lambda: fast(x, masks, out_fast, 5, 2),
                                                  lambda: slow(x, masks, out_slow, 5, 2)], repeat=5)
    finally:
        numba.set_num_threads(threads)
    if slow_time < min_speedup * fast_time:
        hint = ("the loop over X innermost, reading rows of out, masks and `columns` one element after the next, "
                "counted from 0 over views of them (steps 2 and 3 above); over range(begin, end), Numba guards "
                "every index against a negative value and LLVM leaves the loop scalar")
        nested = _nested_prange(fast)
        if nested is not None:
            hint = (f"your prange over `{nested}` sits inside other loops: numba starts and joins its threads at "
                    "every entry of it, which costs more than the few iterations each thread gets; put prange on "
                    "the outermost loop, over the planes, and keep the loop over X a plain range")
        raise CheckFailed(f"{what}: {fast_time * 1e3:.2f} ms against {slow_time * 1e3:.2f} ms for the slow loop "
                          f"order on x {tuple(size)}, k=5, s=2, both on one thread: less than {min_speedup:g} times "
                          f"faster.\nHint: {hint}")
    passed(what, len(_CPU_CASES) + 1)
    print("  accesses that change cache line: " + ", ".join(f"{name} {share:.0%}" for name, share in switches.items()))
    return slow_time / fast_time


# --------------------------------------------------------------------------
# The committed real-GPU run
# --------------------------------------------------------------------------


def gpu_reference_summary(path=None) -> str:
    """The stored figures of the committed real-GPU run, as text, or a plain
    statement that there is none yet and how to make it."""
    path = Path(path) if path is not None else GPU_REFERENCE
    if not path.exists():
        return (f"No reference GPU run is committed yet ({path.parent.name}/{path.name} does not exist): run "
                f"`{GPU_REFERENCE_COMMAND}` on a machine with an NVIDIA GPU to create it. Until then this lesson "
                "shows no GPU figures.")
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(row for row in handle if not row.startswith("#")))
    if not rows:
        return f"{path.parent.name}/{path.name} holds no measurements."
    device_column = next((name for name in ("gpu", "device_name", "device") if name in rows[0]), None)
    if device_column is None:
        raise ValueError(f"{path}: no column names the GPU (expected one of gpu, device_name, device)")
    gpus = sorted({row[device_column] for row in rows})
    columns = [name for name in GPU_REFERENCE_COLUMNS if name in rows[0]] or [
        name for name in rows[0] if name != device_column]
    widths = {name: max(len(name), *(len(row[name] or "") for row in rows)) for name in columns}
    lines = [f"STORED FIGURES from a real-GPU run on {', '.join(gpus)} ({path.parent.name}/{path.name}), "
             "not measured on this machine:",
             "  ".join(name.ljust(widths[name]) for name in columns)]
    lines += ["  ".join((row[name] or "").ljust(widths[name]) for name in columns) for row in rows]
    return "\n".join(line.rstrip() for line in lines)

"""Stopping a hung kernel in the CUDA simulator, and leaving it usable.

The simulator runs a launch in the launching thread (its *launcher*), which
starts one Python thread per CUDA thread of a block, block after block. The
state of the running launch lives in module globals: the kernel context
(``simulator.kernel._kernel_context``), the ``cuda`` names of the kernel's
module, swapped for a fake module while it runs, and a few locks. The
launcher restores them on its way out. If it is stopped from outside, or
never returns, they stay swapped, and every later launch of the process
fails (``'Thread' object has no attribute 'blockIdx'``).

So a hung launch is stopped from the inside: each of its simulated threads
gets the exception ``KernelStopped`` raised in it. That is an ``Exception``,
which the simulator treats as the kernel failing: the block is aborted and
the launcher unwinds by itself, restoring the state, and starts no further
block. The sweep repeats for threads started meanwhile. A thread that is not
a kernel at all (a student's Python function that loops) is stopped the
same way. ``repair_simulator`` then checks the globals and fixes any left
behind, e.g. by an exception that landed inside the simulator's own
clean-up, or by a launch interrupted from the keyboard.

Both simulators are handled: numba-cuda's and the one built into numba.
"""

from __future__ import annotations

import ctypes
import sys
import threading
import time

from .. import backend


class KernelStopped(Exception):
    """Raised inside the threads of a kernel that ran past its timeout."""


def _raise_in(thread: threading.Thread, exception=KernelStopped) -> None:
    if thread.ident is not None:
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(exception))


def _simulator():
    """(the simulator's kernel module, its kernelapi module), or None.

    On a GPU too, when something has loaded them: the traffic counters run
    kernels in the simulator there."""
    if not backend.SIMULATOR and "numba.cuda.simulator.kernel" not in sys.modules:
        return None
    from numba.cuda.simulator import kernel, kernelapi

    return kernel, kernelapi


def simulated_threads():
    """The live simulated CUDA threads of the process."""
    simulator = _simulator()
    if simulator is None:
        return []
    block_thread = simulator[0].BlockThread
    return [thread for thread in threading.enumerate() if isinstance(thread, block_thread) and thread.is_alive()]


def launch_in_progress() -> bool:
    simulator = _simulator()
    return simulator is not None and simulator[0]._kernel_context is not None


def _running_inside(thread: threading.Thread, code, frames) -> bool:
    """Whether ``thread`` runs a call made from a frame of ``code``: an
    exception raised there unwinds through that frame's handler. (Raised
    elsewhere, e.g. in the thread's teardown in threading.py, it would be
    printed on stderr, or escape the simulator's handler.)"""
    frame = frames.get(thread.ident)
    inner = None
    while frame is not None:
        if frame.f_code is code:
            return inner is not None
        inner, frame = frame, frame.f_back
    return False


def stop(worker: threading.Thread, body, patience: float = 20.0) -> bool:
    """Stop the hung ``worker`` thread (running the function ``body``) and
    every simulated thread; wait for them to end (at most ``patience``
    seconds). True when all ended.

    Each thread is signalled once, and only while it runs the kernel's (or
    the worker's) code, inside the handler that will catch the exception."""
    kernel_body = threading.Thread.run.__code__  # BlockThread.run calls it inside its try
    signalled = set()
    deadline = time.monotonic() + patience
    interval = sys.getswitchinterval()
    # Every spinning thread must get the interpreter once to see its
    # exception: hand it over more often meanwhile.
    sys.setswitchinterval(min(interval, 0.0005))
    try:
        while time.monotonic() < deadline:
            threads = simulated_threads()
            if not threads and not worker.is_alive():
                return True
            frames = sys._current_frames()
            for thread in threads:
                if thread not in signalled and _running_inside(thread, kernel_body, frames):
                    _raise_in(thread)
                    signalled.add(thread)
            if (not threads and worker not in signalled and not launch_in_progress()
                    and _running_inside(worker, body.__code__, frames)):
                # No kernel is running: the worker itself loops (a host function).
                _raise_in(worker)
                signalled.add(worker)
            del frames
            time.sleep(0.002)
    finally:
        sys.setswitchinterval(interval)
    return False


def _module_dicts():
    for module in list(sys.modules.values()):
        namespace = getattr(module, "__dict__", None)
        if isinstance(namespace, dict):
            yield namespace
    yield from extra_globals.values()


#: Globals of kernels that are not a module's (the checkers' fallbacks make
#: such copies); ``repair_simulator`` checks them too. id -> dict.
extra_globals: dict[int, dict] = {}


def repair_simulator() -> list[str]:
    """Put the simulator's globals back as a finished launch leaves them.

    Only call it when no launch runs (no launcher, no simulated thread).
    Returns what was repaired, for the caller's message; empty when nothing
    was wrong."""
    simulator = _simulator()
    if simulator is None:
        return []
    kernel_module, kernelapi = simulator
    from numba import cuda

    repaired = []
    leftover = simulated_threads()
    for thread in leftover:  # orphans of an interrupted launch
        _raise_in(thread)
    for thread in leftover:
        thread.join(1.0)
    if leftover:
        repaired.append(f"stopped {len(leftover)} simulated threads left running")
    if kernel_module._kernel_context is not None:
        kernel_module._kernel_context = None
        repaired.append("cleared the kernel context")
    fake = kernelapi.FakeCUDAModule
    for namespace in _module_dicts():
        for name, value in list(namespace.items()):
            if type(value) is fake:
                namespace[name] = cuda
                repaired.append(f"restored `{name}`")
    # numba-cuda's count of the launches using each swapped module: none
    # between launches; its per-module locks: none held.
    for table in ("_swap_refcount", "_swap_orig"):
        entries = getattr(kernelapi, table, None)
        if entries:
            entries.clear()
            repaired.append(f"cleared {table}")
    module_locks = getattr(kernelapi, "_globals_locks", {})
    for key, lock in list(module_locks.items()):
        if lock.locked():
            del module_locks[key]
            repaired.append("replaced a held module lock")
    for name, value in list(vars(kernelapi).items()):
        if isinstance(value, type(threading.Lock())) and value.locked():
            setattr(kernelapi, name, threading.Lock())
            repaired.append(f"replaced the held lock {name}")
    return repaired


def healthy() -> bool:
    """Whether the simulator is as a finished launch leaves it (cheap)."""
    return not launch_in_progress() and not simulated_threads()

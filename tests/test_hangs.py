"""Hung kernels are survivable: under full CPU load, every hung kernel is
reported at its timeout, and the same process then runs correct kernels.

The hangs run in a subprocess that forces the CUDA simulator (a GPU cannot
stop a hung kernel; the simulator's threads can be stopped), beside two
busy-loop processes that keep both cores of a CI machine busy. The
subprocess is this file run as a script; it prints one JSON line.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import threading
import time

if __name__ == "__main__" and os.environ.get("UPSAMPLELIB_BUILTIN_SIMULATOR") == "1":
    # numba's own simulator, as with CUDA=none, though numba-cuda is installed.
    sys.meta_path = [finder for finder in sys.meta_path if type(finder).__name__ != "NumbaCudaFinder"]

import upsamplelib  # noqa: E402  (first: it chooses the CUDA target before numba loads)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from numba import cuda  # noqa: E402  (a module global: the simulator swaps `cuda` in kernels' globals)

from upsamplelib import checkers  # noqa: E402
from upsamplelib.checkers import hung_kernels  # noqa: E402
from upsamplelib.backend import per_element  # noqa: E402

HANGS = 20
TIMEOUT = 2.0
#: What the report may take beyond the timeout: stopping a hung launch's
#: threads (each must get the interpreter once to see its exception).
STOP_ALLOWANCE = 5.0


@cuda.jit
def spins(x, out, factor):
    i = cuda.grid(1)
    j = 0
    while j < 10:  # the counter is never incremented
        if i < out.size:
            out[i] = factor


@cuda.jit
def spins_at_a_barrier(x, out, factor):
    i = cuda.grid(1)
    j = 0
    while j < 10:
        cuda.syncthreads()
        if i < out.size:
            out[i] = x[i] * factor


@cuda.jit
def one_thread_spins_the_others_wait(x, out, factor):
    i = cuda.grid(1)
    if cuda.threadIdx.x == 0:
        while x[0] == x[0]:
            pass
    cuda.syncthreads()
    if i < out.size:
        out[i] = x[i]


@cuda.jit(device=True)
def never_returns(value):
    while value == value:
        value = value + 0
    return value


@cuda.jit
def spins_in_a_device_function(x, out, factor):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = never_returns(x[i])


@per_element
def endless_index(i, n):
    while i < n:
        i = i * 1
    return i


@cuda.jit
def spins_in_a_helper(x, out, factor):
    i = cuda.grid(1)
    if i < out.size:
        out[endless_index(i, out.size)] = factor


@cuda.jit
def scale(x, out, factor):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = x[i] * factor


def _hang_kernels():
    """(name, kernel, launch, arguments) of hung kernels of several kinds."""
    x, out = np.ones(200, np.float32), np.zeros(200, np.float32)
    args = (x, out, np.float32(2))
    return [
        ("spins, 1 block", spins, (1, 32), args),
        ("spins, 4 blocks of 64", spins, (4, 64), args),
        ("spins at a barrier", spins_at_a_barrier, (2, 32), args),
        ("one thread spins, the others wait", one_thread_spins_the_others_wait, (1, 64), args),
        ("spins in a device function", spins_in_a_device_function, (2, 32), args),
        ("spins in a per_element helper", spins_in_a_helper, (3, 32), args),
    ]


def _host_hang():
    """A hang outside any kernel: a student's Python function that loops."""
    n = 0
    while n >= 0:
        n = (n + 1) % 1000


def _interrupt_a_launch():
    """Ctrl-C during a launch in a notebook cell: KeyboardInterrupt in the
    launching thread, which unwinds, while its simulated threads spin on."""
    x, out = np.ones(64, np.float32), np.zeros(64, np.float32)

    def launch():
        try:
            spins[1, 32](x, out, np.float32(1))
        except KeyboardInterrupt:
            pass

    launcher = threading.Thread(target=launch)
    launcher.start()
    # Interrupt it once its threads all run (while it starts threads, a new
    # thread briefly shares its id, and would get the exception too).
    deadline = time.monotonic() + 30
    while len(hung_kernels.simulated_threads()) < 32 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(launcher.ident), ctypes.py_object(KeyboardInterrupt))
    launcher.join(30)


def _break_the_simulator_state():
    """What an exception landing in the simulator's own clean-up leaves: the
    kernel context set, and this module's ``cuda`` swapped for the fake."""
    from numba.cuda.simulator import kernel, kernelapi

    fake = kernelapi.FakeCUDAModule((1, 1, 1), (1, 1, 1), 0)
    kernel._kernel_context = fake
    globals()["cuda"] = fake


def run_hangs(count: int, timeout: float) -> dict:
    """Hang ``count`` times (kernels of every kind and a host function, in
    turn); after each, launch a correct kernel and compare its result."""
    kernels = _hang_kernels()
    rng = np.random.default_rng(0)
    reports, failures = [], []
    start_all = time.monotonic()
    for attempt in range(count):
        if attempt % (len(kernels) + 1) == len(kernels):
            name = "a host function loops"
            hang = lambda: checkers.run_with_timeout(_host_hang, timeout=timeout, what="function")  # noqa: E731
        else:
            name, kernel, launch, args = kernels[attempt % (len(kernels) + 1)]
            hang = lambda: checkers.launch_student_kernel(kernel, launch, *args, timeout=timeout)  # noqa: E731
        started = time.monotonic()
        try:
            hang()
            outcome = "returned"
        except checkers.KernelTimeout:
            outcome = "reported"
        except BaseException as error:  # what a broken simulator raises
            outcome = f"{type(error).__name__}: {error}"
        seconds = time.monotonic() - started
        reports.append({"hang": name, "outcome": outcome, "seconds": round(seconds, 3)})
        # The same process runs a correct kernel afterwards, through the
        # checkers and launched directly, with the right values.
        n = int(rng.integers(1, 300))
        x = rng.standard_normal(n).astype(np.float32)
        for direct in (False, True):
            out = np.full(n, np.nan, np.float32)
            launch = ((n + 63) // 64, 64)
            try:
                if direct:
                    scale[launch](x, out, np.float32(3))
                else:
                    checkers.launch_student_kernel(scale, launch, x, out, np.float32(3), timeout=60)
                if not np.array_equal(out, x * np.float32(3)):
                    failures.append(f"after hang {attempt + 1} ({name}): wrong values")
            except BaseException as error:
                failures.append(f"after hang {attempt + 1} ({name}): {type(error).__name__}: {error}")
    # Two ways the simulator is left broken without a timeout; the next
    # checked launch repairs it.
    for name, breaking in (("a launch interrupted from the keyboard", _interrupt_a_launch),
                           ("state left by an interrupted clean-up", _break_the_simulator_state)):
        breaking()
        n = 100
        x = rng.standard_normal(n).astype(np.float32)
        out = np.full(n, np.nan, np.float32)
        try:
            checkers.launch_student_kernel(scale, (2, 64), x, out, np.float32(3), timeout=60)
            if not np.array_equal(out, x * np.float32(3)):
                failures.append(f"after {name}: wrong values")
        except BaseException as error:
            failures.append(f"after {name}: {type(error).__name__}: {error}")
    # A correct kernel through the library's launcher, and no thread of a
    # hung kernel left running.
    ul = upsamplelib
    x = torch.rand(1, 2, 5, 4)
    try:
        same = torch.allclose(ul.interpolate(x, scale_factor=2, mode="bilinear", backend="cuda"),
                              torch.nn.functional.interpolate(x, scale_factor=2, mode="bilinear"), atol=1e-6)
        if not same:
            failures.append("ul.interpolate on the simulator after the hangs: wrong values")
    except BaseException as error:
        failures.append(f"ul.interpolate on the simulator after the hangs: {type(error).__name__}: {error}")
    leftover = [str(t) for t in threading.enumerate()
                if t.is_alive() and (type(t).__name__ == "BlockThread" or t.name == "student-kernel")]
    return {"reports": reports, "failures": failures, "leftover_threads": leftover,
            "seconds": round(time.monotonic() - start_all, 1),
            "provider": upsamplelib.backend.CUDA_PROVIDER}


def test_twenty_hung_kernels_under_full_cpu_load():
    env = dict(os.environ, UPSAMPLELIB_CUDA="simulator", UPSAMPLELIB_QUIET="1")
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    hangs = subprocess.Popen([sys.executable, __file__, str(HANGS), str(TIMEOUT)], env=env, text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    busy = []
    try:
        # The load starts once the subprocess has imported everything.
        assert hangs.stdout.readline().strip() == "ready", hangs.stderr.read()[-3000:]
        busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
        stdout, stderr = hangs.communicate("go\n", timeout=600)
    finally:
        hangs.kill()
        for process in busy:
            process.kill()
            process.wait()
    done = subprocess.CompletedProcess(hangs.args, hangs.returncode, stdout, stderr)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    seconds = [report["seconds"] for report in result["reports"]]
    print(f"{HANGS} hangs on {result['provider']}'s simulator under load, timeout {TIMEOUT:g} s: reported after "
          f"{min(seconds):.2f}-{max(seconds):.2f} s; {result['seconds']} s in all")
    assert [report["outcome"] for report in result["reports"]] == ["reported"] * HANGS, result["reports"]
    assert TIMEOUT <= min(seconds) and max(seconds) <= TIMEOUT + STOP_ALLOWANCE, result["reports"]
    assert result["failures"] == []
    assert result["leftover_threads"] == []
    # No stopped thread complained on stderr (an exception outside its handler).
    assert "Exception" not in done.stderr and "Traceback" not in done.stderr, done.stderr[-3000:]


if __name__ == "__main__":
    count, timeout = int(sys.argv[1]), float(sys.argv[2])
    scale[1, 32](np.ones(32, np.float32), np.zeros(32, np.float32), np.float32(1))  # warm
    print("ready", flush=True)
    sys.stdin.readline()
    print(json.dumps(run_hangs(count, timeout)))

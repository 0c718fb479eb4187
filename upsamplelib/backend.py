"""Where kernels run, and how tensors reach them.

Every operator file (``ops/interpolate.py``, ``ops/carafe.py``, ...) launches its
kernels through this module, so the machinery lives here once:

* the CUDA target: a real GPU, or Numba's CUDA simulator when there is none.
  The choice must be made *before* numba is imported, which is why
  ``upsamplelib/__init__.py`` imports this module first;
* ``resolve_backend``: what the ``backend=`` argument of every operator means;
* ``kernel_array``: a torch tensor as an array a kernel can take, without a copy;
* ``launch_config`` / ``launch``: the launch configuration, computed in one place;
* ``per_element``: one Python function compiled both as a CUDA device
  function and as a Numba CPU function, so the GPU kernel, the simulator
  and the CPU loop share their index math;
* ``cuda_kernel``: ``cuda.jit`` plus registration for the PTX compile check.

Environment variables:

``UPSAMPLELIB_CUDA``   ``gpu`` or ``simulator`` forces the CUDA target
                       (``gpu`` with no GPU still compiles kernels to PTX).
``NUMBA_ENABLE_CUDASIM``  honoured when set explicitly.
``UPSAMPLELIB_QUIET``  set to 1 to silence the one-line target message.
``UPSAMPLELIB_KERNELS``  ``fast``, ``teaching`` or ``auto`` (the default: fast
                       kernels on a GPU, teaching kernels in the simulator).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import glob
import hashlib
import math
import os
import sys
import threading
import warnings
from fractions import Fraction

CUDA_TARGET_ENV = "UPSAMPLELIB_CUDA"


def _driver_gpu_name() -> str | None:
    """Name of the first CUDA GPU according to the driver, or None.

    Asks libcuda directly through ctypes, so numba is not imported yet.
    """
    candidates = {"win32": ["nvcuda.dll"], "darwin": []}.get(
        sys.platform, ["libcuda.so.1", "libcuda.so"]
    )
    for name in candidates:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        count = ctypes.c_int(0)
        if lib.cuInit(0) != 0 or lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return None
        if count.value < 1:
            return None
        device = ctypes.c_int(0)
        buffer = ctypes.create_string_buffer(256)
        if lib.cuDeviceGet(ctypes.byref(device), 0) == 0 and (
            lib.cuDeviceGetName(buffer, 256, device) == 0
        ):
            return buffer.value.decode(errors="replace") or "CUDA GPU"
        return "CUDA GPU"
    return None


def _choose_cuda_target() -> tuple[bool, str]:
    """Decide GPU or simulator; return (simulator?, one-line explanation)."""
    if "numba.cuda" in sys.modules:
        # Too late to switch: numba.cuda made its choice when it was imported.
        import numba

        simulator = bool(numba.config.ENABLE_CUDASIM)
        where = "Numba's CUDA simulator" if simulator else "the GPU"
        return simulator, (
            f"numba.cuda was imported before upsamplelib; kernels run in {where}."
        )
    forced = os.environ.get(CUDA_TARGET_ENV, "").strip().lower()
    user_flag = os.environ.get("NUMBA_ENABLE_CUDASIM")
    gpu_name = None
    if forced in ("gpu", "simulator"):
        simulator = forced == "simulator"
        reason = f"{CUDA_TARGET_ENV}={forced}"
    elif forced:
        raise ValueError(
            f"{CUDA_TARGET_ENV}={forced!r}: expected 'gpu', 'simulator' or unset"
        )
    elif user_flag is not None and user_flag.strip() != "":
        simulator = user_flag.strip() != "0"
        reason = f"NUMBA_ENABLE_CUDASIM={user_flag.strip()}"
    else:
        gpu_name = _driver_gpu_name()
        simulator = gpu_name is None
        reason = None
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1" if simulator else "0"
    if "numba" in sys.modules:
        import numba

        numba.config.ENABLE_CUDASIM = int(simulator)
    if simulator:
        why = f"{reason} is set" if reason else "no CUDA GPU found"
        message = (
            f"{why}: Numba-CUDA kernels run in Numba's CUDA simulator "
            "(slow; backend='cpu' is the fast path)."
        )
    else:
        where = f"the GPU ({gpu_name})" if gpu_name else "the GPU"
        why = f"{reason} is set: " if reason else ""
        message = f"{why}Numba-CUDA kernels run on {where}."
    return simulator, message


SIMULATOR, TARGET_MESSAGE = _choose_cuda_target()

# Small launches are normal in the lessons, and host arrays are passed on
# purpose there; on a GPU Numba would warn about both (on stderr, which
# nbval compares) while the simulator, where CI runs, never does.
_QUIET_WARNINGS = {"NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS": "CUDA_LOW_OCCUPANCY_WARNINGS",
                   "NUMBA_CUDA_WARN_ON_IMPLICIT_COPY": "CUDA_WARN_ON_IMPLICIT_COPY"}
_QUIET_WARNINGS = {env: name for env, name in _QUIET_WARNINGS.items() if env not in os.environ}
for _env in _QUIET_WARNINGS:
    os.environ[_env] = "0"
#: "simulator" or "gpu": where ``backend="cuda"`` kernels execute.
CUDA_TARGET = "simulator" if SIMULATOR else "gpu"

if os.environ.get("UPSAMPLELIB_QUIET", "") in ("", "0"):
    print(f"upsamplelib: {TARGET_MESSAGE}")

import numba  # noqa: E402  (after the target choice, on purpose)
from numba.extending import intrinsic  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.autograd import forward_ad  # noqa: E402

from .install import torch_version_problem  # noqa: E402

_TORCH_PROBLEM = torch_version_problem(torch.__version__)
if _TORCH_PROBLEM:
    raise ImportError(_TORCH_PROBLEM)


def _repository_url() -> str:
    """The course repository, as the installed package's metadata names it
    (pyproject.toml's [project.urls] is the one place it is written)."""
    from importlib import metadata

    try:
        entries = metadata.metadata("upsamplelib").get_all("Project-URL") or []
    except metadata.PackageNotFoundError:  # run from a source tree, not installed
        entries = []
    for entry in entries:
        label, _, url = entry.partition(",")
        if label.strip().lower() == "repository":
            return url.strip()
    return "<the course repository>"


try:
    from numba import cuda  # noqa: E402
except Exception as error:  # pragma: no cover - depends on the install
    # numba's own numba.cuda (no numba-cuda installed) needs no toolkit for
    # the simulator; numba-cuda needs libcudart even there.
    raise ImportError(
        "numba-cuda could not load a CUDA toolkit (it needs libcudart even for "
        "its simulator). Install its toolkit wheels: `make setup` in the course, or "
        f'pip install "upsamplelib[cu13] @ git+{_repository_url()}" ([cu12] for a '
        "CUDA 12 driver); or uninstall numba-cuda, and numba's built-in simulator "
        f"runs the kernels. Original error: {error}"
    ) from error

#: Which package provides ``numba.cuda``: "numba-cuda", or "numba" for the
#: CUDA target built into numba (its simulator needs no CUDA toolkit; the
#: route on macOS and with ``make setup CUDA=none``).
CUDA_PROVIDER = "numba-cuda" if "numba_cuda" in os.path.normpath(cuda.__file__).split(os.sep) else "numba"

# In case numba was imported before us and read its configuration already.
for _config in (numba.config, sys.modules.get("numba.cuda.core.config")):
    for _name in _QUIET_WARNINGS.values():
        if _config is not None:
            setattr(_config, _name, 0)



# --------------------------------------------------------------------------
# Forked processes
# --------------------------------------------------------------------------
# Numba's OpenMP threading layer on GNU libgomp is not fork-safe: a child
# forked after its parent ran a parallel loop is killed (SIGTERM, "fork()
# called from a process already using GNU OpenMP") by its own first parallel
# loop. A DataLoader's workers are such children. There, the "cpu" backend
# runs the operators' PyTorch form ("torch") instead: the same values, slower.

#: True in a process forked after a parallel Numba loop ran on GNU OpenMP.
FORKED_AFTER_OPENMP = False

#: What keeps the Numba CPU kernels in such processes.
_FORK_ADVICE = ("pass multiprocessing_context='forkserver' (or 'spawn') to the DataLoader or Pool, or set "
                "NUMBA_THREADING_LAYER=workqueue before starting Python")


def _openmp_pool_started() -> bool:
    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel loop has run: the child starts its own pool
        return False
    pool = sys.modules.get("numba.np.ufunc.omppool")
    return layer == "omp" and getattr(pool, "openmp_vendor", "GNU") == "GNU"


def _after_fork_in_child() -> None:
    global FORKED_AFTER_OPENMP
    FORKED_AFTER_OPENMP = FORKED_AFTER_OPENMP or _openmp_pool_started()


if hasattr(os, "register_at_fork"):  # not on Windows, which does not fork
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _cpu_or_its_torch_form(op_name: str) -> str:
    if not FORKED_AFTER_OPENMP:
        return "cpu"
    warnings.warn(
        f"upsamplelib: {op_name} runs its PyTorch form (backend='torch', slower) in this process: it was forked "
        "after Numba's OpenMP threads started, and a parallel Numba loop would kill it. To keep the Numba CPU "
        f"kernels, {_FORK_ADVICE}", RuntimeWarning, stacklevel=3)
    return "torch"


# --------------------------------------------------------------------------
# The backend= argument
# --------------------------------------------------------------------------

BACKENDS = ("cuda", "cpu", "torch")


def resolve_backend(backend, tensors, op_name: str) -> str:
    """Turn ``backend=`` into "cuda", "cpu" or "torch", or raise.

    ``None``/``"auto"``: "cuda" for CUDA tensors, "cpu" for CPU tensors.
    "cpu" is "torch", with a warning, in a process forked after its parent's
    OpenMP threads started (``FORKED_AFTER_OPENMP``).
    """
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        listed = ", ".join(sorted(str(d) for d in devices))
        raise ValueError(f"{op_name}: tensors are on different devices ({listed})")
    on_gpu = next(iter(devices)).type == "cuda"
    if backend is None or backend == "auto":
        return "cuda" if on_gpu else _cpu_or_its_torch_form(op_name)
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(
            f"{op_name}: unknown backend {backend!r}; expected one of "
            f"{', '.join(repr(b) for b in BACKENDS)}, 'auto' or None"
        )
    if backend == "cpu" and on_gpu:
        raise ValueError(
            f"{op_name}: backend='cpu' runs Numba CPU kernels but the tensor is on "
            f"{next(iter(devices))}; move it with .cpu() or use backend='cuda'"
        )
    if backend == "cuda" and SIMULATOR and on_gpu:
        raise ValueError(
            f"{op_name}: backend='cuda' runs in Numba's CUDA simulator in this "
            "process, which takes CPU tensors; move the tensor with .cpu()"
        )
    if backend == "cuda" and not SIMULATOR and not on_gpu:
        raise ValueError(
            f"{op_name}: backend='cuda' runs on the GPU and needs CUDA tensors; "
            "move the tensor with .cuda() or use backend='cpu'"
        )
    return _cpu_or_its_torch_form(op_name) if backend == "cpu" else backend


def reference_for_empty_batch(backend: str, batch: int) -> str:
    """"torch" for an empty batch, else ``backend``: a kernel has no work
    (and a launch of 0 threads is refused), and the reference returns the
    empty result with its (empty) gradients, as PyTorch's layers do."""
    return "torch" if batch == 0 else backend


# --------------------------------------------------------------------------
# Forward-mode AD
# --------------------------------------------------------------------------
# The operators' forward-mode formula is their tangent (Operator.register_autograd):
# each is linear in each of its inputs, so the tangent is the operator applied
# with one input replaced by its tangent, summed over the inputs. Eagerly,
# under forward-mode AD (torch.autograd.forward_ad, torch.func.jvp) a call
# takes the operator's autograd function, which computes it, and its output
# carries the tangent into any reverse pass over it. Under torch.compile, which
# cannot trace that function, the dispatcher's would drop the tangents
# silently: there each public function adds the tangent itself, the same sum.


def forward_tangents(*tensors):
    """``(primals, tangents)`` of ``tensors`` (None entries stay None; a
    tangent is None where its tensor has none) while forward-mode AD runs
    under torch.compile and some tensor carries a tangent; else None, after
    one integer compare when forward mode is off."""
    if forward_ad._current_level < 0:
        return None
    transforms = sys.modules.get("torch._functorch.eager_transforms")
    if transforms is not None and getattr(transforms, "JVP_NESTING", 0) > 1:
        # The operators' tangents would miss the outer level's terms: refuse rather than return them.
        raise NotImplementedError(
            "upsamplelib: nested forward-mode AD (jvp of a jvp, jacfwd of a jacfwd) is not supported on the "
            "'cpu' and 'cuda' backends: the operators' tangents would miss the outer level's terms. Use "
            "backend='torch' there, or reverse mode (torch.autograd.grad, torch.func.jacrev) for the outer "
            "derivative")
    if not torch.compiler.is_compiling():
        return None
    pairs = [forward_ad.unpack_dual(t) if t is not None else (None, None) for t in tensors]
    if all(tangent is None for _, tangent in pairs):
        return None
    return [primal for primal, _ in pairs], [tangent for _, tangent in pairs]


def with_tangent(primal_out, terms):
    """``primal_out`` as a dual tensor whose tangent is the sum of the
    non-None ``terms`` (each an output-shaped tensor)."""
    return forward_ad.make_dual(primal_out, sum_of_given(terms))


def sum_of_given(terms):
    """The sum of the non-None ``terms``; None if there is none."""
    terms = [t for t in terms if t is not None]
    return sum(terms[1:], terms[0]) if terms else None


# --------------------------------------------------------------------------
# Tensors as kernel arrays
# --------------------------------------------------------------------------


def kernel_array(tensor: torch.Tensor):
    """A contiguous tensor as an array a kernel can take, sharing its memory.

    CUDA tensors go through ``__cuda_array_interface__``; CPU tensors become
    NumPy views (what both the Numba CPU kernels and the simulator take).
    """
    if not tensor.is_contiguous():
        raise ValueError("kernel_array needs a contiguous tensor")
    if tensor.requires_grad:
        tensor = tensor.detach()
    if tensor.is_cuda:
        _check_not_negated(tensor)
        # Launches go on torch's current stream (see launch), so there is no
        # need for numba to synchronise on the exporting stream.
        return cuda.as_cuda_array(tensor, sync=False)
    return tensor.numpy()  # which refuses a tensor with the negative bit itself


def _check_not_negated(tensor: torch.Tensor) -> None:
    """Refuse a tensor whose memory holds its values negated (PyTorch's
    negative bit): a kernel reading its memory would get the wrong sign."""
    if tensor.is_neg():
        raise ValueError("a kernel cannot take a tensor with the negative bit set (its memory holds the values "
                         "negated): pass tensor.resolve_neg()")


def pixels_array(tensor: torch.Tensor):
    """A dense channels-last (N, C, H, W) CPU tensor as the (N, H, W, C)
    C-contiguous NumPy array it is in memory, sharing it: a NumPy transpose
    costs a fifth of ``tensor.permute``, which the CPU loops do not need."""
    if tensor.requires_grad:
        tensor = tensor.detach()
    pixels = tensor.numpy().transpose(0, 2, 3, 1)
    if not pixels.flags.c_contiguous:
        raise ValueError("pixels_array needs a dense channels-last tensor")
    return pixels


# --------------------------------------------------------------------------
# Launch configuration
# --------------------------------------------------------------------------

THREADS_PER_BLOCK = 256


def launch_config(n_threads: int, threads_per_block: int = THREADS_PER_BLOCK):
    """(blocks, threads_per_block) for a 1-D grid of at least n_threads threads."""
    if n_threads < 1:
        raise ValueError(f"cannot launch {n_threads} threads")
    # A small launch gets a small block (whole warps): at most 31 idle threads,
    # which matters in the simulator, where every thread is a Python thread.
    threads_per_block = min(threads_per_block, 32 * math.ceil(n_threads / 32))
    return math.ceil(n_threads / threads_per_block), threads_per_block


#: Held by every simulated launch (see ``launch``); reentrant so that a
#: caller may hold it around several launches.
SIMULATOR_LOCK = threading.RLock()


def _torch_stream():
    return cuda.external_stream(torch.cuda.current_stream().cuda_stream)


def launch(kernel, n_threads: int, *args, threads_per_block: int = THREADS_PER_BLOCK):
    """Launch ``kernel`` on a 1-D grid covering ``n_threads`` threads.

    On a GPU it runs on torch's current stream, so it is ordered with the
    torch work around it.
    """
    blocks, threads = launch_config(n_threads, threads_per_block)
    launch_grid(kernel, blocks, threads, *args)


def launch_grid(kernel, blocks: int, threads: int, *args):
    """Launch ``kernel`` on ``blocks`` blocks of ``threads`` threads (1-D)."""
    if SIMULATOR:
        # The simulator keeps the running kernel's thread state in globals:
        # two launches at once (a DataLoader thread, a web server) would
        # see each other's threads. One launch at a time.
        with SIMULATOR_LOCK:
            kernel[blocks, threads](*args)
    else:
        kernel[blocks, threads, _torch_stream()](*args)


# --------------------------------------------------------------------------
# The simulator's shared arrays
# --------------------------------------------------------------------------
# The simulator makes a block's cuda.shared.array when the first of its
# threads reaches the line that asks for it: a dict look-up, then a store,
# with no lock. A thread switch in between gives two threads of one block
# two arrays, and what one writes the other never reads: a kernel that is
# right on a GPU now and then reads uninitialised memory (more often under a
# short switch interval, which the checkers set for kernels with many
# barriers). Here the look-up and the store are made under one lock.

_SHARED_ARRAYS_LOCK = threading.Lock()


def numpy_dtype(dtype) -> np.dtype:
    """A NumPy dtype for what a kernel passes as one (``numba.float32``, ``np.float64``...)."""
    from numba.core import types
    from numba.np import numpy_support

    if isinstance(dtype, types.Type):
        return numpy_support.as_dtype(dtype)
    return np.dtype(dtype)


def simulated_shared_array(shared, key, shape, dtype) -> np.ndarray:
    """The shared array ``key`` of the simulated block whose ``cuda.shared``
    is ``shared``: made, uninitialised as on a GPU, by the first of its
    threads to ask; the same array for all of them."""
    with _SHARED_ARRAYS_LOCK:
        array = shared._allocations.get(key)
        if array is None:
            array = shared._allocations[key] = np.empty(shape, numpy_dtype(dtype))
        return array


def simulator_allocation(make, simulated, shape, dtype, alignment=None):
    """``make(simulated, shape, dtype)``, a simulator's ``cuda.shared.array``
    or ``cuda.local.array`` method, given ``alignment`` only when there is
    one: numba's own simulator takes no such argument."""
    return make(simulated, shape, dtype, *([] if alignment is None else [alignment]))


def _make_simulator_shared_arrays_thread_safe() -> None:
    from numba.cuda.simulator.kernelapi import FakeCUDAShared

    simulators_own = FakeCUDAShared.array
    if getattr(simulators_own, "thread_safe", False):
        return
    if "_allocations" not in FakeCUDAShared.__init__.__code__.co_names:
        return  # another simulator than the one this was written for: left as it is

    def array(self, shape, dtype, alignment=None):
        if shape == 0 or alignment is not None:
            # dynamic shared memory (one buffer, made with the block), or an alignment the simulator refuses
            return simulator_allocation(simulators_own, self, shape, dtype, alignment)
        caller = sys._getframe(1)
        return simulated_shared_array(self, (caller.f_code.co_filename, caller.f_lineno), shape, dtype)

    array.thread_safe = True
    FakeCUDAShared.array = array


if SIMULATOR:
    _make_simulator_shared_arrays_thread_safe()


# --------------------------------------------------------------------------
# CPU threads
# --------------------------------------------------------------------------
# Numba's parallel loops start with one thread per CPU, whatever
# torch.set_num_threads says; a DataLoader worker (which sets 1) or a
# process limited to fewer threads would then run Numba's full count beside
# PyTorch's. The "cpu" loops follow PyTorch's count instead, unless the user
# has set Numba's own (numba.set_num_threads): theirs is left alone.
# Starting Numba's OpenMP threads also resets PyTorch's count to Numba's
# (the two share libgomp's setting): it is put back.

_numba_threads = threading.local()  # Numba's count is per Python thread, and so is what we set


def follow_torch_threads() -> int:
    """Set Numba's thread count (for this Python thread) to PyTorch's,
    capped at ``NUMBA_NUM_THREADS``, unless the user set Numba's; return
    the count the next parallel loop runs with."""
    torch_threads = torch.get_num_threads()
    if getattr(_numba_threads, "torch", None) == torch_threads:
        # As the last call left them, unless the user set Numba's count since: then theirs stands.
        current = _get_numba_threads()
        if current == _numba_threads.set:
            return current
    current = numba.get_num_threads()  # the first call starts Numba's threads
    if torch.get_num_threads() != torch_threads:
        torch.set_num_threads(torch_threads)
    ours = getattr(_numba_threads, "set", numba.config.NUMBA_NUM_THREADS)
    if current != ours:  # the user's numba.set_num_threads
        return current
    wanted = max(1, min(torch_threads, numba.config.NUMBA_NUM_THREADS))
    if current != wanted:
        numba.set_num_threads(wanted)
    _numba_threads.set, _numba_threads.torch = wanted, torch_threads
    return wanted


def _get_numba_threads() -> int:
    """``numba.get_num_threads()`` once its threads run, without re-checking
    that they do (a third of its cost)."""
    return numba.np.ufunc.parallel._get_num_threads()


def run(kernel, backend: str, n_threads: int, *args):
    """Run a kernel of either Numba backend: a CUDA kernel (``backend="cuda"``)
    on a 1-D grid of ``n_threads`` threads, a CPU loop (``"cpu"``) as a plain
    call. Tensor arguments are handed over with ``kernel_array``."""
    if backend == "cuda":
        run_grid(kernel, *launch_config(n_threads), *args)
    else:
        if FORKED_AFTER_OPENMP:  # only a graph traced before the fork still says "cpu"
            raise RuntimeError(
                "upsamplelib: this process was forked after Numba's OpenMP threads started, and a parallel Numba "
                "loop would kill it; this call comes from a graph that chose backend='cpu' before the fork (an "
                f"exported program, or a backward of a forward run in the parent). To run it, {_FORK_ADVICE}")
        threads = follow_torch_threads()
        arrays = [kernel_array(a) if isinstance(a, torch.Tensor) else a for a in args]
        if threads > 1 and _elements(arrays) < SERIAL_ELEMENTS:
            _set_numba_threads(1)
            try:
                kernel(*arrays)
            finally:
                _set_numba_threads(threads)
        else:
            kernel(*arrays)


#: A CPU loop whose arrays hold fewer elements than this, all together, runs
#: on one thread, as PyTorch's own ops do below their grain. Where another
#: program keeps a core busy, a parallel loop waits for its second thread:
#: CARAFE on a (1, 4, 4, 4) map took 32 ms a call with two threads, 0.1-0.3 ms with
#: one; nearest 8 ms against 0.1 (2 cores, this process at nice 10 beside a busy
#: loop: python bench/busy_core.py --busy). On a quiet machine such a loop takes
#: 2-6 us more on one thread (CARAFE's loops at x of (1, 16, 4, 4)); from about
#: 5,000 elements the costliest ones (CARAFE's backward, 25 products an element)
#: are faster on two, hence not PyTorch's 32,768 (1.3-1.7x slower there).
SERIAL_ELEMENTS = 4096


def _elements(arrays) -> int:
    return sum(a.size for a in arrays if isinstance(a, np.ndarray))


def _set_numba_threads(count: int) -> None:
    """``numba.set_num_threads`` once its threads run, without its checks
    (a tenth of its 3 us)."""
    numba.np.ufunc.parallel._set_num_threads(count)


def run_grid(kernel, blocks: int, threads: int, *args):
    """Launch a CUDA kernel on ``blocks`` blocks of ``threads`` threads, its
    tensor arguments handed over as kernel arrays. On a GPU, after the first
    launch of a kernel with given argument types, the cached fast path
    (``FAST_LAUNCH``) replaces numba's per-call dispatch."""
    if not SIMULATOR and FAST_LAUNCH.enabled:
        FAST_LAUNCH(kernel, blocks, threads, args)
    else:
        launch_grid(kernel, blocks, threads, *[kernel_array(a) if isinstance(a, torch.Tensor) else a for a in args])


# --------------------------------------------------------------------------
# Launch overhead. numba's ``kernel[blocks, threads, stream](*arrays)`` does,
# on every call: a DeviceNDArray-like view per tensor (``as_cuda_array``
# reads ``__cuda_array_interface__``), a Stream object for torch's stream,
# a launch-configuration object, the typeof of every argument and the
# lookup of the compiled overload, then its argument marshalling. Only the
# marshalling depends on the call; the rest is the same for every call of
# a kernel with the same argument types, so it is done once and cached.
# --------------------------------------------------------------------------


def _c_strides(shape, itemsize):
    """Strides in bytes of a C-contiguous array: what numba passes for an
    array whose ``__cuda_array_interface__`` gives no strides (contiguous)."""
    strides, step = [0] * len(shape), itemsize
    for axis in range(len(shape) - 1, -1, -1):
        strides[axis] = step
        step *= shape[axis]
    return strides


#: (shape, dtype) -> (size, itemsize, shape + strides): the fields of an
#: array argument that do not change between calls on same-shaped tensors.
_ARRAY_FIELDS: dict = {}


def _pack_array(tensor, parameters):
    """A contiguous tensor as the fields of numba's array argument, in the
    order of ``_Kernel._prepare_args``: meminfo, parent, size, itemsize,
    data pointer, shape, strides (bytes)."""
    if not tensor.is_contiguous():
        raise ValueError("a CUDA kernel needs contiguous tensors")
    _check_not_negated(tensor)
    key = (tensor.shape, tensor.dtype)
    fields = _ARRAY_FIELDS.get(key)
    if fields is None:
        if len(_ARRAY_FIELDS) > 4096:  # many shapes (varying input sizes): start over
            _ARRAY_FIELDS.clear()
        shape, itemsize = tuple(tensor.shape), tensor.element_size()
        fields = _ARRAY_FIELDS[key] = (tensor.numel(), itemsize, shape + tuple(_c_strides(shape, itemsize)))
    size, itemsize, shape_and_strides = fields
    parameters += (0, 0, size, itemsize, tensor.data_ptr())
    parameters += shape_and_strides


def parameter_packer(numba_type):
    """``pack(value, parameters)`` appending a value of ``numba_type`` to the
    launch parameters exactly as numba-cuda's ``_Kernel._prepare_args`` does
    (tests/test_fast_kernels.py checks them against it)."""
    try:  # the types numba-cuda's dispatcher compares with
        from numba.cuda import types
    except ImportError:
        from numba.core import types

    if isinstance(numba_type, types.Array):
        return _pack_array
    if isinstance(numba_type, types.Integer):
        ctype = getattr(ctypes, f"c_{numba_type}")
        return lambda value, parameters: parameters.append(ctype(value))
    if numba_type == types.float64:
        return lambda value, parameters: parameters.append(ctypes.c_double(value))
    if numba_type == types.float32:
        return lambda value, parameters: parameters.append(ctypes.c_float(value))
    if numba_type == types.boolean:
        return lambda value, parameters: parameters.append(value)
    raise NotImplementedError(f"no fast launch for arguments of type {numba_type}")


def argument_key(args):
    """What selects a kernel's compiled overload: for a contiguous tensor its
    dtype and rank (its numba type is then ``Array(dtype, ndim, 'C')``), for
    a scalar its Python type."""
    return tuple((a.dtype, a.dim()) if isinstance(a, torch.Tensor) else type(a) for a in args)


def _has_module(name):
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:
        return False


def _current_device():
    """torch.cuda.current_device() without its Python wrapper's checks."""
    get_device = getattr(torch._C, "_cuda_getDevice", None)
    return get_device() if get_device is not None else torch.cuda.current_device()


class FastLaunch:
    """Cached launches of CUDA kernels on a GPU.

    The first launch of a kernel with given argument types goes through
    numba (it compiles, and it creates its context); then this keeps, per
    (kernel, device, argument types): the compiled function's driver handle
    and one packer per argument. Per stream, the stream object; per
    (grid, block), the launch configuration. A later launch is the
    argument packing plus the driver call (``driver_launch``).
    """

    def __init__(self):
        # The path mirrors numba-cuda's launch through cuda.core; numba's
        # built-in CUDA target launches otherwise, so it keeps its own path.
        self.enabled = CUDA_PROVIDER == "numba-cuda" and _has_module("cuda.core")
        self.kernels = {}
        self.streams = {}
        self.configs = {}
        self.driver_launch = None  # cuda.core's launch, bound on first use

    def _current_stream(self, device):
        raw = getattr(torch._C, "_cuda_getCurrentRawStream", None)
        handle = raw(device) if raw is not None else torch.cuda.current_stream(device).cuda_stream
        stream = self.streams.get(handle)
        if stream is None:
            from numba.cuda.cudadrv import driver

            stream = driver._to_core_stream(cuda.external_stream(handle) if handle else 0)
            self.streams[handle] = stream
        return stream

    def _config(self, blocks, threads):
        config = self.configs.get((blocks, threads))
        if config is None:
            from cuda.core import LaunchConfig

            config = self.configs[(blocks, threads)] = LaunchConfig(grid=(blocks, 1, 1), block=(threads, 1, 1))
        return config

    def _first_launch(self, kernel, blocks, threads, args, key):
        arrays = [kernel_array(a) if isinstance(a, torch.Tensor) else a for a in args]
        launch_grid(kernel, blocks, threads, *arrays)
        compiled = kernel.overloads.get(tuple(kernel.typeof_pyval(a) for a in arrays))
        entry = None
        if compiled is not None and not (compiled.debug or compiled.cooperative or compiled.extensions):
            try:
                entry = (compiled._codelibrary.get_cufunc().kernel,
                         tuple(parameter_packer(t) for t in compiled.argument_types))
            except (NotImplementedError, AttributeError):
                entry = None  # an argument type or numba-cuda version this path does not know
        self.kernels[key] = entry  # None: this kernel always takes numba's path

    def __call__(self, kernel, blocks, threads, args):
        device = _current_device()
        key = (kernel, device, argument_key(args))
        entry = self.kernels.get(key, False)
        if entry is False:
            self._first_launch(kernel, blocks, threads, args, key)
            return
        if entry is None:
            launch_grid(kernel, blocks, threads, *[kernel_array(a) if isinstance(a, torch.Tensor) else a
                                                   for a in args])
            return
        function, packers = entry
        parameters = []
        for pack, value in zip(packers, args):
            pack(value, parameters)
        if self.driver_launch is None:
            from cuda.core import launch as driver_launch

            self.driver_launch = driver_launch
        self.driver_launch(self._current_stream(device), self._config(blocks, threads), function, *parameters)


#: The launcher ``run`` and ``run_grid`` use on a GPU; ``FAST_LAUNCH.enabled
#: = False`` sends every launch through numba's own dispatch.
FAST_LAUNCH = FastLaunch()


# --------------------------------------------------------------------------
# Teaching and fast kernels. Each op has simple "teaching" CUDA kernels (the
# lessons' kernels: one thread per output element or run of channels) and,
# where the GPU needs them, "fast" ones (shared-memory tiles, block
# reductions). backend="cuda" runs the fast ones on a GPU and the teaching
# ones in the simulator, unless told otherwise.
# --------------------------------------------------------------------------

KERNEL_VARIANTS = ("teaching", "fast")
KERNELS_ENV = "UPSAMPLELIB_KERNELS"
_kernel_variant = os.environ.get(KERNELS_ENV, "").strip().lower() or "auto"
if _kernel_variant not in KERNEL_VARIANTS + ("auto",):
    raise ValueError(f"{KERNELS_ENV}={_kernel_variant!r}: expected 'fast', 'teaching', 'auto' or unset")


def kernel_variant() -> str:
    """"fast" or "teaching": which CUDA kernels ``backend="cuda"`` runs now."""
    if _kernel_variant == "auto":
        return "teaching" if SIMULATOR else "fast"
    return _kernel_variant


def set_kernel_variant(variant: str) -> None:
    """Choose the CUDA kernels: "fast", "teaching" or "auto" (fast on a GPU,
    teaching in the simulator, the default)."""
    global _kernel_variant
    if variant not in KERNEL_VARIANTS + ("auto",):
        raise ValueError(f"unknown kernel variant {variant!r}; expected 'fast', 'teaching' or 'auto'")
    _kernel_variant = variant


@contextlib.contextmanager
def kernel_variant_as(variant: str):
    """``with kernel_variant_as("teaching"): ...`` runs the block with those kernels."""
    previous = _kernel_variant
    set_kernel_variant(variant)
    try:
        yield
    finally:
        set_kernel_variant(previous)


# --------------------------------------------------------------------------
# One body, two targets
# --------------------------------------------------------------------------


def per_element(function, python=None):
    """Compile a plain Python function once for every target.

    The result is a Numba function (``njit``, inlined, cached) that the CPU
    loops call, and that Numba-CUDA compiles again for the GPU when a CUDA
    kernel calls it. So a kernel and its CPU twin share one source of index
    math.

    In the simulator, kernels run as plain Python; called from Python, the
    function then runs as Python too (``python`` if given, else the function
    itself), so float32 stays float32 as on a GPU instead of coming back
    from compiled code as a Python float.
    """
    if not SIMULATOR:
        return numba.njit(cache=True, inline="always")(function)
    body = _SimulatorAwareFunction(
        py_func=function, locals={}, targetoptions={"nopython": True, "inline": "always"}
    )
    body.enable_caching()
    body.python_version = python or function
    return body


if SIMULATOR:
    from numba.core.registry import CPUDispatcher as _CPUDispatcher

    class _SimulatorAwareFunction(_CPUDispatcher):
        """Compiled when compiled code calls it; Python when Python does."""

        def __call__(self, *args, **kwargs):
            return self.python_version(*args, **kwargs)


@intrinsic
def _llvm_fma(typingctx, a, b, c):
    def codegen(context, builder, signature, args):
        return builder.fma(*args)

    return a(a, a, a), codegen


def _fma(a, b, c):
    return _llvm_fma(a, b, c)


def _fma_python(a, b, c):
    """fma for the simulator: the exact a * b + c, rounded once to a's type."""
    if isinstance(a, np.float32):
        # A float32 product is exact in float64, and TwoSum gives the exact
        # error of the float64 sum; only a float32 tie then needs it.
        product, addend = float(a) * float(b), float(c)
        total = product + addend
        back = total - product
        error = (product - (total - back)) + (addend - back)
        nearest = np.float32(total)
        if error != 0 and float(nearest) != total:
            other = np.nextafter(nearest, np.float32(np.inf if total > float(nearest) else -np.inf))
            if (float(nearest) + float(other)) / 2 == total:  # a tie that the error breaks
                above = max(nearest, other)
                return above if error > 0 else min(nearest, other)
        return nearest
    a, b, c = float(a), float(b), float(c)
    if not (math.isfinite(a) and math.isfinite(b)):
        return a * b + c  # NaN and Inf come out as IEEE fma gives them
    if not math.isfinite(c):
        return c  # the exact product is finite even where a * b would overflow
    exact = Fraction(a) * Fraction(b) + Fraction(c)
    try:
        return float(exact)
    except OverflowError:
        return math.inf if exact > 0 else -math.inf


#: ``fma(a, b, c)`` = a * b + c rounded once, on every target (LLVM's fma on
#: the CPU, ``fma.rn`` in PTX). PyTorch's CPU kernels are built with FMA
#: contraction; writing it out also keeps the GPU and the CPU from
#: contracting differently.
fma = per_element(_fma, python=_fma_python)


#: The namespace of the library's PyTorch operators: ``torch.ops.upsamplelib.*``.
OPERATORS = torch.library.Library("upsamplelib", "DEF")

#: The sources that define the operators: their schemas, implementations,
#: fake implementations (output strides) and derivatives.
OPERATOR_SOURCES = ("backend.py", "layout.py", "ops/*.py")


def operator_source_digest(root: str = os.path.dirname(__file__)) -> str:
    """A digest of the files ``OPERATOR_SOURCES`` names under ``root``."""
    digest = hashlib.sha256()
    for pattern in OPERATOR_SOURCES:
        for path in sorted(glob.glob(os.path.join(root, pattern))):
            digest.update(os.path.relpath(path, root).encode() + b"\0")
            with open(path, "rb") as source:
                digest.update(source.read())
    return digest.hexdigest()[:16]


def _tag_compile_caches() -> None:
    """torch.compile's caches on disk (Inductor's graphs, AOTAutograd's
    forward and backward graphs) know an operator by its name, not by its
    code: after the library changes, a graph cached before would run with
    the old fake strides and derivatives (it fails with "incorrect fake
    kernel"). The digest of the operators' sources joins the caches' key
    tag, after any tag the user set. About 1 ms at import."""
    from torch.compiler import config

    mark = f"upsamplelib-{operator_source_digest()}"
    if mark not in config.cache_key_tag.split():
        config.cache_key_tag = f"{config.cache_key_tag} {mark}".strip()


_tag_compile_caches()


_PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)


def traced(tensors, forward_mode: bool = True) -> bool:
    """Whether a call on ``tensors`` (None entries allowed) is traced or
    transformed rather than run: by torch.compile, torch.jit.trace, a
    torch.func transform, forward-mode AD (unless ``forward_mode`` is False),
    a dispatch mode (make_fx, FakeTensorMode, FlopCounterMode,
    aot_function), a torch function mode, the profiler, or as a tensor
    subclass, a batched gradient (``is_grads_batched``) or on a device
    without our kernels (a fake or meta tensor has no data). Such a call
    must go through the operators: only they are recorded, batched, or have
    fake implementations."""
    if (torch.compiler.is_compiling() or torch.jit.is_tracing() or torch._C._are_functorch_transforms_active()
            or torch._C._len_torch_dispatch_stack() or torch._C._len_torch_function_stack()
            or (forward_mode and forward_ad._current_level >= 0) or torch._C._autograd._profiler_enabled()):
        return True
    return any(t is not None and (type(t) not in _PLAIN_TENSORS or t.device.type not in ("cpu", "cuda")
                                  or torch._C._functorch.is_legacy_batchedtensor(t))
               for t in tensors)


class Operator:
    """A function registered as the PyTorch operator
    ``torch.ops.upsamplelib.<name>`` for CPU and CUDA tensors (its schema read
    from the type hints), called like the function.

    A call goes through the operator when it is traced (``traced``); under a
    torch.func transform, inside an autograd function of the new style that
    the transforms take (``register_autograd``). Otherwise it runs the
    function directly, inside a plain autograd function with the operator's
    derivative where autograd tracks one of its tensors.
    The dispatcher's round trip through the registered autograd kernel
    (Python) costs 10-40 us a call, as much as a small map's whole work, and
    gives nothing to an eager call: the same function and derivative run.

    ``torch.library.custom_op`` would register the same, but it wraps the
    function in ``torch._disable_dynamo``, which imports ``torch._dynamo``
    (1.5 s) at the first call of any operator: a student's first cell would
    pay it.
    """

    def __init__(self, name, function):
        self.name, self.function = name, function
        self.tracked = None  # the autograd function eager tracked calls take (register_autograd)
        self.transformable = None  # the one calls under a torch.func transform take (register_autograd)
        functools.update_wrapper(self, function)
        OPERATORS.define(name + torch.library.infer_schema(function, mutates_args=()))
        for dispatch_key in ("CPU", "CUDA"):
            OPERATORS.impl(name, function, dispatch_key)

    @property
    def dispatched(self):
        """``torch.ops.upsamplelib.<name>``."""
        return getattr(torch.ops.upsamplelib, self.name)

    def register_fake(self, fake):
        return torch.library.register_fake(f"upsamplelib::{self.name}", fake)

    def register_autograd(self, derivative, setup_context, tangent=None):
        """The operator's derivative: ``setup_context(ctx, inputs, output)``
        then ``derivative(ctx, grad)``, one gradient per input, registered
        with ``torch.library.register_autograd`` and used by eager calls and
        under the torch.func transforms. ``tangent(inputs, tangents)``, the
        output's tangent (None where an input has none), serves forward mode
        (``jvp``, ``jacfwd``, ``hessian``, ``torch.autograd.forward_ad``); by
        default the operator is linear in each tensor input
        (``multilinear_tangent``)."""
        torch.library.register_autograd(f"upsamplelib::{self.name}", derivative, setup_context=setup_context)
        function, dispatched = self.function, self.dispatched
        tangent = tangent or functools.partial(multilinear_tangent, self)

        def eager_forward(ctx, *inputs):
            output = function(*inputs)
            setup_context(ctx, inputs, output)
            return output

        # The old-style forward (ctx first) is the cheaper one; only eager calls, never a transform, reach it.
        self.tracked = type(f"{self.name}_eager", (torch.autograd.Function,), {
            "forward": staticmethod(eager_forward), "backward": staticmethod(derivative)})

        def transformed_forward(*inputs):
            if traced([a for a in inputs if isinstance(a, torch.Tensor)], forward_mode=False):
                return dispatched(*inputs)
            # Forward mode alone (torch.autograd.forward_ad): what the operator would run, without the
            # dispatcher's round trip through its autograd kernel (100 us of a small call).
            return function(*inputs)

        def transformed_setup_context(ctx, inputs, output):
            # The operator's own context, filled on a record: functorch's vmap rule keeps one record of the saved
            # tensors' batch dimensions, so the tensors saved for backward (what the operator saves, no more: an
            # input changed in place later must not fail the backward) are also those saved for jvp, which
            # takes the inputs it needs (the same ones) back from them by identity.
            ctx.set_materialize_grads(False)  # an input without a tangent gives None, not zeros (0 * Inf)
            record = OperatorContext(ctx.needs_input_grad)
            setup_context(record, inputs, output)
            ctx.operator_context = {key: value for key, value in vars(record).items()
                                    if key not in ("saved_tensors", "needs_input_grad")}
            ctx.other_inputs = [None if isinstance(a, torch.Tensor) else a for a in inputs]
            ctx.saved_positions = saved_input_positions(record.saved_tensors, inputs)
            ctx.save_for_backward(*record.saved_tensors)
            ctx.save_for_forward(*record.saved_tensors)

        def transformed_backward(ctx, *grads):
            if all(grad is None for grad in grads):  # not materialised (see setup): nothing flows back
                return (None,) * len(ctx.other_inputs)
            replayed = OperatorContext(ctx.needs_input_grad)
            vars(replayed).update(ctx.operator_context, saved_tensors=ctx.saved_tensors)
            return derivative(replayed, *grads)

        def transformed_jvp(ctx, *tangents):
            inputs = list(ctx.other_inputs)
            for position, tensor in zip(ctx.saved_positions, ctx.saved_tensors):
                if position is not None:
                    inputs[position] = tensor
            return tangent(inputs, tangents)

        # The torch.func transforms take only new-style functions (forward without ctx, and setup_context), and
        # refuse the one register_autograd generates. Applied before the dispatcher, this one gets functorch's
        # own rules: grad, vjp, jacrev, and vmap of each (generate_vmap_rule batches forward, context and
        # derivative alike; its forward's dispatcher call batches the operator), and jvp over them.
        self.transformable = type(f"{self.name}_transformable", (torch.autograd.Function,), {
            "forward": staticmethod(transformed_forward), "setup_context": staticmethod(transformed_setup_context),
            "backward": staticmethod(transformed_backward), "jvp": staticmethod(transformed_jvp),
            "generate_vmap_rule": True})

    def __call__(self, *args):
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if not torch.compiler.is_compiling() and any(t.is_neg() for t in tensors):
            # A tensor with PyTorch's negative bit (``torch._neg_view``) holds its values negated in
            # memory, which the kernels read: they take it resolved, as the dispatcher's fallback
            # hands it to a traced call. (resolve_neg is differentiable: gradients reach the view.)
            args = tuple(a.resolve_neg() if isinstance(a, torch.Tensor) else a for a in args)
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if traced(tensors):
            # Only where something differentiates: vmap alone and functionalize (which has no rule for an
            # autograd function) take the operator as before, and so does torch.compile (Dynamo cannot trace a
            # function with a jvp). Under forward mode the operators get tangents, which the dispatcher's
            # autograd function would drop or refuse.
            if self.transformable is not None and not torch.compiler.is_compiling() and under_derivative_transform():
                if forward_ad._current_level >= 0 and any(torch._C._functorch.is_legacy_batchedtensor(t)
                                                          for t in tensors):
                    return self._per_batch_entry(args)
                # Eagerly under torch.autograd.forward_ad alone, with no tangent on any input, the output has none
                # either, and the call runs as it would outside forward mode (a third of the autograd function's
                # cost). Traced otherwise too (a dispatch mode, torch.jit.trace), it takes the function as before:
                # a trace would keep the untangented call, and below a mode's dispatch no tangent can be read.
                if traced(tensors, forward_mode=False) or not _forward_mode_without_tangents(tensors):
                    return self.transformable.apply(*args)
            else:
                return self.dispatched(*args)
        if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
            # An operator without a derivative of its own: the dispatcher's error, or its autograd.
            return self.tracked.apply(*args) if self.tracked is not None else self.dispatched(*args)
        return self.function(*args)

    def _per_batch_entry(self, args):
        """The call on autograd's batched gradients (``is_grads_batched``)
        under forward mode, one batch entry at a time: no autograd function
        takes their legacy batched tensors, and the dispatcher's would drop
        the tangents. Each entry, a plain tensor, takes the operator's
        autograd function as any call under forward mode does."""
        level = _legacy_vmap_level()
        # The batch size argument (0) serves only a tensor batched at an outer level and not this one, which
        # would be expanded to it: no such nesting reaches here (autograd's batched gradients do not nest).
        physical = [torch._remove_batch_dim(a, level, 0, 0)
                    if isinstance(a, torch.Tensor) and torch._C._functorch.is_legacy_batchedtensor(a) else None
                    for a in args]
        size = next(p.shape[0] for p in physical if p is not None)
        if size == 0:
            raise NotImplementedError("upsamplelib: batched gradients under forward mode with an empty batch, or "
                                      "nested in other batched gradients, are not supported on the 'cpu' and "
                                      "'cuda' backends; use backend='torch' there")
        entries = [self(*[a if p is None else p[i] for a, p in zip(args, physical)]) for i in range(size)]
        return torch._add_batch_dim(torch.stack(entries), 0, level)


def _forward_mode_without_tangents(tensors) -> bool:
    """Whether none of ``tensors`` carries a tangent at forward mode's level
    (the caller has made sure forward_ad is the only transform). False below
    autograd's dispatch (an operator called inside another's kernel under a
    dispatch mode), where tangents cannot be read."""
    if torch._C._dispatch_tls_is_dispatch_key_excluded(torch._C.DispatchKey.ADInplaceOrView):
        return False
    return all(forward_ad.unpack_dual(t).tangent is None for t in tensors)


def _legacy_vmap_level() -> int:
    """The level of the innermost legacy vmap (autograd's batched gradients)."""
    level = torch._C._vmapmode_increment_nesting()
    torch._C._vmapmode_decrement_nesting()
    return level - 1


class OperatorContext:
    """A context an operator's ``setup_context`` fills outside autograd's
    own: what it saves for backward is kept as ``saved_tensors``."""

    def __init__(self, needs_input_grad):
        self.needs_input_grad = needs_input_grad
        self.saved_tensors = ()

    def save_for_backward(self, *tensors):
        self.saved_tensors = tensors


def saved_input_positions(saved, inputs):
    """For each saved tensor, the position of the input it is (None for
    None or a tensor made inside): the first such input not already taken,
    so that one tensor passed as two inputs (``semi_shift_conv(x, x, ...)``)
    fills both."""
    taken, positions = set(), []
    for tensor in saved:
        position = None
        if tensor is not None:
            position = next((i for i, a in enumerate(inputs) if a is tensor and i not in taken), None)
            taken.add(position)
        positions.append(position)
    return positions


def under_derivative_transform() -> bool:
    """Whether a torch.func transform that differentiates (grad, vjp,
    jacrev, jvp, jacfwd, hessian) is active, at any level, or forward-mode
    AD (``torch.autograd.forward_ad``)."""
    if forward_ad._current_level >= 0:
        return True
    stack = torch._C._functorch.get_interpreter_stack()
    return stack is not None and any(level.key() in _DERIVATIVE_TRANSFORMS for level in stack)


_DERIVATIVE_TRANSFORMS = (torch._C._functorch.TransformType.Grad, torch._C._functorch.TransformType.Jvp)


def multilinear_tangent(operator, inputs, tangents):
    """The output's tangent for an operator linear in each of its tensor
    inputs (the others held): the operator applied with one input replaced
    by its tangent, summed over the inputs that have one."""
    return sum_of_given([operator(*inputs[:i], t, *inputs[i + 1:]) for i, t in enumerate(tangents) if t is not None])


def operator(name):
    """Decorator: the function as an ``Operator`` named ``name``."""
    return lambda function: Operator(name, function)


def cpu_kernel(function):
    """A Numba CPU kernel: parallel over its outermost ``prange``, cached."""
    return numba.njit(parallel=True, cache=True, error_model="numpy")(function)


@numba.njit(cache=True, inline="always", error_model="numpy")
def add_products(total, a, b):
    """``total[i] = fma(a[i], b[i], total[i])`` along three 1-D rows of one
    length: the inner row of the CPU loops. Counted from 0, the index is
    known non-negative, so Numba adds no negative-index wraparound and LLVM
    vectorises the row; the same loop over ``range(begin, end)`` stays
    scalar, about 3x slower."""
    for i in range(total.shape[0]):
        total[i] = fma(a[i], b[i], total[i])


@numba.njit(cache=True, inline="always", error_model="numpy")
def finite_outside(row, begin, end):
    """Whether ``row[:begin]`` and ``row[end:]`` are all finite. A CPU loop
    that must leave those entries out may then multiply them by the zero
    padding instead (each adds 0), and run the whole row, whose length
    vectorises; a cut range leaves up to 31 entries to a scalar tail."""
    for i in range(begin):
        if not np.isfinite(row[i]):
            return False
    for i in range(end, row.shape[0]):
        if not np.isfinite(row[i]):
            return False
    return True


#: Every CUDA kernel of the library: qualified name -> (python function,
#: signature builder). ``signature(float_type)`` returns the argument types
#: for that float type; tests/test_ptx.py compiles each to PTX.
CUDA_KERNELS: dict[str, tuple] = {}


def cuda_kernel(signature):
    """``cuda.jit`` a kernel and register it for the PTX compile check.

    ``signature`` maps a Numba float type (float32 or float64) to the tuple
    of argument types the kernel is launched with.
    """

    def register(function):
        CUDA_KERNELS[f"{function.__module__}.{function.__qualname__}"] = (
            function,
            signature,
        )
        return cuda.jit(function)

    return register


def describe() -> str:
    """One line: where ``backend='cuda'`` kernels run in this process."""
    return TARGET_MESSAGE

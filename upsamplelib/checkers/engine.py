"""The machinery every checker shares: timeouts, comparisons, reports."""

from __future__ import annotations

import ast
import contextlib
import inspect
import io
import random
import re
import textwrap
import threading
import tokenize
from collections import Counter

import numpy as np
import torch

from .. import backend
from . import hung_kernels

#: Seconds a student kernel may run before it is reported as hung.
DEFAULT_TIMEOUT = 60.0


def _red(text: str) -> str:
    return f"\x1b[0;31m{text}\x1b[0m"


class CheckFailed(AssertionError):
    """A student's code gave a wrong result; the message says where and why.

    In IPython it shows as its message only: the traceback would run through
    the checker's code, not the student's."""

    def _render_traceback_(self):
        first, *rest = str(self).splitlines() or [""]
        return [f"{_red(type(self).__name__)}: {first}", *rest]


class ExerciseUnsolved(NotImplementedError):
    """An exercise is still the lesson's stub. One line in IPython: which
    exercise, and what to do. Still an exception, so that nbval's
    raises-exception cells and the grader see it."""

    def __init__(self, exercise_id: str, names=(), used_by: str | None = None):
        self.exercise = exercise_id
        written = " and ".join(f"`{name}`" for name in names) or "your code"
        if used_by and used_by != exercise_id:
            where = f"(exercise {used_by} uses it): write {written} in its cell"
        else:
            where = f"write {written} in the cell above"
        self.head = f"Exercise {exercise_id} is not solved yet"
        self.todo = f"{where} (in place of `raise NotImplementedError`), then run this cell again."
        super().__init__(f"{self.head}: {self.todo}")

    def _render_traceback_(self):
        return [f"{_red(self.head)}: {self.todo}"]


class KernelTimeout(CheckFailed):
    """A student's kernel did not finish in time."""


def run_with_timeout(function, *args, timeout: float = DEFAULT_TIMEOUT, what: str = "kernel"):
    """Run ``function(*args)`` in a worker thread; raise KernelTimeout if it
    has not returned after ``timeout`` seconds. Exceptions propagate.

    In the simulator the worker holds ``backend.SIMULATOR_LOCK``, so a
    launch waits for the previous one to be fully unwound; a hung launch is
    stopped from inside its threads and the simulator's state checked
    afterwards (see ``hung_kernels``), so that later launches of the process
    still work."""
    result, error = [], []
    grad_enabled = torch.is_grad_enabled()  # grad mode is per thread: the worker takes the caller's

    def work():
        try:
            torch.set_grad_enabled(grad_enabled)
            if backend.SIMULATOR:
                with backend.SIMULATOR_LOCK:
                    if not hung_kernels.healthy():  # a launch interrupted earlier (e.g. from the keyboard)
                        hung_kernels.repair_simulator()
                    result.append(function(*args))
            else:
                result.append(function(*args))
        except BaseException as exc:  # re-raised in the caller's thread
            error.append(exc)

    worker = threading.Thread(target=work, name="student-kernel", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        # A kernel on a GPU cannot be interrupted: waiting longer would not help.
        simulated = backend.SIMULATOR or bool(hung_kernels.simulated_threads())
        stopped = hung_kernels.stop(worker, work, patience=20.0 if simulated else 0.5)
        if stopped:
            hung_kernels.repair_simulator()
        message = (f"the {what} did not finish within {timeout:g} s. Look for a loop whose "
                   "counter never reaches its bound, or threads waiting at cuda.syncthreads() "
                   "that others never reach (every thread of a block must call it).")
        if not stopped:
            message += (" It is still running and cannot be stopped from here: restart the kernel "
                        "(Kernel > Restart) before running more cells.")
        raise KernelTimeout(message)
    if error:
        raise _simulator_lacks(error[0]) or error[0]
    return result[0] if result else None


#: Numba-CUDA's warp-level functions, which its simulator does not have.
WARP_FUNCTIONS = frozenset({"shfl_sync", "shfl_up_sync", "shfl_down_sync", "shfl_xor_sync", "all_sync", "any_sync",
                            "eq_sync", "ballot_sync", "match_any_sync", "match_all_sync", "activemask", "lanemask_lt"})


def _simulator_lacks(error: BaseException) -> CheckFailed | None:
    """A checker's failure for a kernel that calls what Numba's CUDA simulator
    does not have (cuda.shfl_sync, ..., or a keyword argument to a device
    function or to cuda.grid), or what numba.cuda has not at all (a typo),
    rather than the simulator's AttributeError or TypeError."""
    keyword = re.search(r"(FakeCUDAKernel\.__call__|FakeCUDAModule\.(\w+))\(\) got an unexpected keyword argument "
                        r"'(\w+)'", str(error))
    if isinstance(error, TypeError) and keyword:
        if keyword.group(2):
            return CheckFailed(f"the kernel calls cuda.{keyword.group(2)}({keyword.group(3)}=...), a keyword Numba's "
                               "CUDA simulator does not take (a GPU's compile does).\nHint: pass it by position, as "
                               f"in cuda.{keyword.group(2)}(2)")
        return CheckFailed(f"the kernel calls a cuda.jit(device=True) function with the keyword argument "
                           f"{keyword.group(3)}=..., which Numba's CUDA simulator cannot pass (a GPU's compile can).\n"
                           "Hint: pass the arguments by position, or decorate the helper with "
                           "upsamplelib.backend.per_element, which takes keywords everywhere")
    found = re.search(r"'FakeCUDAModule' object has no attribute '(\w+)'", str(error))
    if not (isinstance(error, AttributeError) and found):
        return None
    name = found.group(1)
    if name not in WARP_FUNCTIONS:
        return CheckFailed(f"the kernel calls cuda.{name}, which numba.cuda does not have: a typo? (the barrier is "
                           "cuda.syncthreads(), a thread's index cuda.grid(1))")
    return CheckFailed(
        f"the kernel calls cuda.{name}, which Numba's CUDA simulator does not have. The checkers run "
        "kernels in the simulator, where they see every thread's reads and writes, so this one cannot be graded."
        "\nHint: the exercises need no warp-level functions: write it with plain loads and stores (a warp's "
        "threads that load one value get it in one broadcast already)")


@contextlib.contextmanager
def counting_syncthreads(simulated: bool | None = None):
    """Count the ``cuda.syncthreads()`` calls of every thread of a simulated
    launch: {(block, thread): count}, a thread's count rising as it reaches
    each barrier. ``simulated``: whether launches run in the simulator
    (``backend.SIMULATOR`` unless given; a recorded launch always does);
    None is yielded where they do not. (A thread that leaves early lets the
    simulator's barrier go on without it; a GPU hangs or races.)"""
    if not (backend.SIMULATOR if simulated is None else simulated):
        yield None
        return
    from numba.cuda.simulator.kernel import BlockThread

    counts = Counter()
    original = BlockThread.syncthreads

    def counted(self):
        counts[(tuple(self.blockIdx), tuple(self.threadIdx))] += 1
        return original(self)

    BlockThread.syncthreads = counted
    try:
        yield counts
    finally:
        BlockThread.syncthreads = original


def kernel_definition(kernel):
    """(Python function, its ``ast.FunctionDef``) of a kernel or function."""
    function = getattr(kernel, "py_func", kernel)
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef):
            return function, node
    raise CheckFailed("could not find the kernel's source")  # pragma: no cover


def unsolved_exercise(kernel):
    """The message of the ``NotImplementedError`` an unsolved exercise's
    kernel raises, or None. Read from the source: a GPU does not report an
    exception raised inside a kernel, it just leaves the output unwritten."""
    try:
        _, definition = kernel_definition(kernel)
    except (OSError, TypeError, CheckFailed):  # no source to read (e.g. made with exec)
        return None
    for node in ast.walk(definition):
        if isinstance(node, ast.Raise) and node.exc is not None:
            target = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if isinstance(target, ast.Name) and target.id == "NotImplementedError":
                args = node.exc.args if isinstance(node.exc, ast.Call) else []
                if args and isinstance(args[0], ast.Constant) and isinstance(args[0].value, str):
                    return args[0].value
                return "this exercise is not written yet"
    return None


def launch_student_kernel(kernel, launch, *arrays, timeout: float = DEFAULT_TIMEOUT):
    """``kernel[launch](*arrays)`` under the timeout. Host (NumPy) arrays are
    copied to the GPU and back automatically, and taken as they are by the
    simulator. An unsolved exercise raises its NotImplementedError on both."""
    stub = unsolved_exercise(kernel)
    if stub is not None:
        raise NotImplementedError(stub)
    run_with_timeout(lambda: kernel[launch](*arrays), timeout=timeout)


#: What a checker says when a kernel indexes an array with a float (on a GPU
#: this is a compile error: Numba-CUDA's math.floor returns a float).
FLOAT_INDEX_HINT = ("an array index is a float. On the GPU `math.floor` returns a float (in Python, and so "
                    "in the simulator, it returns an int): write `int(math.floor(...))`")

#: Added to FLOAT_INDEX_HINT by the checkers of kernels that divide by the scale.
INTEGER_DIVISION_NOTE = " Integer division `Y // scale` keeps indices integers."


def is_float_index_error(error: Exception) -> bool:
    return "array index type float" in str(error)


def launch_checked(kernel, launch, *arrays, what: str, bounds_hint: str, float_index_note: str = "",
                   index_hint: str = "", sized_for: int | None = None):
    """``launch_student_kernel``, with the two launch failures students meet
    most reported as CheckFailed: an index out of bounds (the simulator
    raises IndexError) and a float index (only the GPU compiler refuses it).
    ``bounds_hint`` is for a thread past the end of the output (the guard),
    ``index_hint`` for a thread with an output element whose index math is off.
    ``sized_for``: the position of the array the launch has one thread per
    element of (by default, the first array whose size the grid fits)."""
    try:
        launch_student_kernel(kernel, launch, *arrays)
    except IndexError as error:
        thread = _thread_with_an_element(str(error), launch,
                                         arrays if sized_for is None else arrays[sized_for:sized_for + 1])
        if thread is not None:
            # The guard let this thread through rightly: its index math is off, not the guard.
            raise CheckFailed(
                f"{what}: a thread indexed out of bounds ({error}).\nHint: thread {thread} has an element of its "
                "own to compute, so the guard is right to let it through: an index it computes is past the end "
                "of an array. " + (_sentence(index_hint) or "Check each index against that array's shape (the "
                                   "last valid index is size - 1)")) from None
        raise CheckFailed(f"{what}: a thread indexed out of bounds ({error}).\nHint: {bounds_hint}") from None
    except Exception as error:
        if is_float_index_error(error):
            raise CheckFailed(f"{what}: the kernel does not compile for the GPU: {FLOAT_INDEX_HINT}."
                              + float_index_note) from None
        raise


def require_float64_precision(what: str, case: str, expected, got, how: str) -> None:
    """Float64 in, float64 out is not enough: a Function that computes in
    float32 passes a float32 tolerance but breaks gradcheck's finite
    differences. Say so where it happens; ``how`` names the lesson's fix."""
    if not (isinstance(got, torch.Tensor) and got.dtype == torch.float64):
        return
    got, expected = got.detach(), torch.as_tensor(expected).double()
    if not torch.allclose(got, expected, rtol=1e-9, atol=1e-12):
        error = (got - expected).abs().max().item()
        raise CheckFailed(f"{what}: {case}: right only to float32 precision (largest error {error:.1e}): it computes "
                          f"in float32 somewhere.\nHint: compute in the inputs' dtype: {how}; gradcheck's finite "
                          "differences need float64 precision")


def with_other_strides(tensor: torch.Tensor) -> torch.Tensor:
    """The values of ``tensor`` in a tensor that is not contiguous: a
    transposed view of a transposed copy (a map or a weight), or every
    second element of a longer one (a vector)."""
    if tensor.dim() == 1:
        return torch.repeat_interleave(tensor, 2)[::2]
    return tensor.transpose(-1, -2).contiguous().transpose(-1, -2)


NON_CONTIGUOUS_HINT = (
    "make each tensor contiguous before its .numpy() goes to a kernel: .detach().contiguous() in forward, "
    "grad_out.contiguous() in backward. A model hands the op transposed or sliced maps, and autograd hands "
    "backward the gradient in whatever layout the graph above it gives")


def check_non_contiguous(what: str, apply, tensors, hint: str = NON_CONTIGUOUS_HINT) -> None:
    """``apply(*tensors)`` (an autograd Function's forward) and its backward
    on the same values in tensors that are not contiguous, with a
    grad_out that is not contiguous either, must give what they give on
    contiguous ones. The kernels take one memory region per array: the
    simulator refuses a strided one, and a GPU launch would copy it."""
    def forward_and_backward(leaves, grad_out=None):
        out = run_with_timeout(lambda: apply(*leaves), what="forward")
        if grad_out is None:
            grad_out = torch.from_numpy(np.random.default_rng(577).standard_normal(tuple(out.shape))).to(out.dtype)
        grads = run_with_timeout(lambda: torch.autograd.grad(out, leaves, grad_out), what="backward")
        return out.detach(), grads, grad_out

    plain = [t.detach().clone().requires_grad_() for t in tensors]
    out, grads, grad_out = forward_and_backward(plain)
    strided = [with_other_strides(t.detach()).requires_grad_() for t in tensors]
    strides = ", ".join(str(tuple(t.stride())) for t in strided)
    case = f"the same inputs and grad_out, every one non-contiguous ({strides} strides)"
    try:
        strided_out, strided_grads, _ = forward_and_backward(strided, with_other_strides(grad_out))
    except CheckFailed:
        raise
    except Exception as error:  # noqa: BLE001 - the simulator's refusal of a strided array, or what follows it
        reason = str(error).splitlines()[0] if str(error) else ""
        raise CheckFailed(f"{what}: failed on {case}: {type(error).__name__}: {reason}\nHint: {hint}") from None
    compare(out, strided_out, what=what, case=f"forward on {case}", hint=hint)
    for index, (expected, got) in enumerate(zip(grads, strided_grads)):
        compare(expected, got, what=what, case=f"gradient of input {index} on {case}", hint=hint)


def _sentence(hint: str) -> str:
    """``hint`` as a sentence: its first word capitalised, unless that word
    is code (``linear_index(...)``, ``x_padded``), which keeps its case."""
    first_word = hint.split(" ", 1)[0]
    return hint[:1].upper() + hint[1:] if first_word.isalpha() else hint


_THREAD = re.compile(r"tid=\[(\d+), (\d+), (\d+)\] ctaid=\[(\d+), (\d+), (\d+)\]")


def _thread_with_an_element(message: str, launch, arrays):
    """The global (x, y) of the simulated thread that failed, when it is one
    the launch has an element for: the launch is sized for an array (its
    blocks round that array's size up) and the thread lies inside it. None
    when it is one of the extra threads of the last blocks, or unknown."""
    found = _THREAD.search(message)
    if found is None:
        return None
    tid, ctaid = [int(v) for v in found.groups()[:3]], [int(v) for v in found.groups()[3:]]
    grid, block = launch[0], launch[1]
    grid = tuple(grid) if isinstance(grid, tuple) else (grid,)
    block = tuple(block) if isinstance(block, tuple) else (block,)
    position = [ctaid[axis] * block[axis] + tid[axis] for axis in range(len(block))]
    for array in arrays:
        shape = getattr(array, "shape", None)
        if shape is None or not len(shape):
            continue
        if len(block) == 1:
            size = int(np.prod(shape))
            sized_for = (grid[0] - 1) * block[0] < size <= grid[0] * block[0]
            inside = position[0] < size
        elif len(block) == 2 and len(shape) == 2:  # x is the column, y the row
            sized_for = all(-(-extent // b) == g for extent, b, g in zip((shape[1], shape[0]), block, grid))
            inside = position[0] < shape[1] and position[1] < shape[0]
        else:
            continue
        if sized_for:
            return tuple(position) if inside else None
    return None


def uses_atomics(kernel, _seen=None) -> bool:
    """Whether the kernel's code (not its comments or strings), or that of a
    device function it calls, names ``atomic``."""
    from .ptx import _names_used, _python_function  # ptx imports this module

    function = _python_function(kernel) or getattr(kernel, "py_func", kernel)
    seen = _seen if _seen is not None else set()
    seen.add(function)
    try:
        source = inspect.getsource(function)
    except (OSError, TypeError):
        return False
    tokens = tokenize.generate_tokens(io.StringIO(inspect.cleandoc(source)).readline)
    if any(token.type == tokenize.NAME and token.string == "atomic" for token in tokens):
        return True
    names = getattr(function, "__globals__", {})
    for name in _names_used(function.__code__):
        helper = _python_function(names.get(name))
        if helper is not None and helper not in seen and not helper.__module__.startswith("upsamplelib"):
            if uses_atomics(helper, seen):
                return True
    return False


def require_gather(kernel, what: str, each_thread: str) -> None:
    """Refuse atomics in a gather exercise; ``each_thread`` says what a
    thread of the gather writes."""
    if uses_atomics(kernel):
        raise CheckFailed(f"{what}: this exercise asks for a gather, where each thread {each_thread}, so no "
                          "atomics are needed; the kernel uses cuda.atomic.")


def _as_numpy(value):
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def compare(expected, got, *, what: str, case: str, hint: str = "", exact: bool = False,
            rtol: float = 1e-5, atol: float = 1e-6) -> None:
    """Raise CheckFailed at the first element where ``got`` differs from
    ``expected`` (exactly, or beyond rtol/atol)."""
    expected, got = _as_numpy(expected), _as_numpy(got)
    if got.shape != expected.shape:
        raise CheckFailed(
            f"{what}: wrong shape for {case}: expected {expected.shape}, got {got.shape}."
            + (f"\nHint: {hint}" if hint else "")
        )
    if exact:
        bad = expected != got
    else:
        bad = ~np.isclose(got, expected, rtol=rtol, atol=atol, equal_nan=False)
    if bad.any():
        from .rules import first_index_hint  # a kernel that ignores the batch or plane index

        hint = first_index_hint(bad, what) or hint
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        count = int(bad.sum())
        raise CheckFailed(
            f"{what}: {count} of {bad.size} values wrong for {case}.\n"
            f"First mismatch at index {index}: expected {expected[index].item()!r}, got {got[index].item()!r}."
            + (f"\nHint: {hint}" if hint else "")
        )


def diagnose(expected, got, variants, *, what: str, case: str, hint: str, rtol: float = 1e-5, atol: float = 1e-5,
             border=None, border_hint: str = "", unwritten_hint: str = "") -> None:
    """``compare()``, but say why when the result is wrong in a known way:
    values never written (the checkers fill outputs with NaN first), or a
    match with one of ``variants``, a list of (wrong result, explanation).
    ``border(index)`` (optional) says whether an index touches the border of
    the map; when every mismatch does, the hint becomes ``border_hint``.
    ``unwritten_hint`` (optional) replaces the generic hint for values never written."""
    expected, got = _as_numpy(expected), _as_numpy(got)
    if got.shape == expected.shape:
        if np.isnan(got).any():
            index = tuple(int(i) for i in np.argwhere(np.isnan(got))[0])
            from .rules import first_index_hint  # a kernel that ignores the batch or plane index

            raise CheckFailed(f"{what}: the value at index {index} was never written (it is still NaN) for {case}.\n"
                              "Hint: " + (first_index_hint(np.isnan(got), what) or
                                          unwritten_hint or
                                          "one thread per element; every thread inside the array writes its "
                                          "element, also when it is 0 (the checker fills the array with NaN first)"))
        wrong = ~np.isclose(got, expected, rtol=rtol, atol=atol)
        if wrong.any():
            matches = [explanation for result, explanation in variants
                       if result.shape == got.shape and np.allclose(got, _as_numpy(result), rtol=rtol, atol=atol)]
            if len(matches) == 1:
                raise CheckFailed(f"{what}: wrong values for {case}.\nHint: {matches[0]}")
            if matches:
                raise CheckFailed(f"{what}: wrong values for {case}, which match several known mistakes on this "
                                  "case:\n" + "\n".join(f"* {m}" for m in matches))
            if border is not None and all(border(tuple(int(i) for i in index)) for index in np.argwhere(wrong)):
                hint = border_hint
    compare(expected, got, what=what, case=case, hint=hint, rtol=rtol, atol=atol)


def first_nan_mismatch(expected, got):
    """Where a case's reference holds nan on purpose (nan * 0, which the spec keeps): (index, what ``got`` holds
    there) of the first element that is nan in one array and not in the other, "a number" where the reference
    is nan, "nan (or never written)" where it is not; None where the two agree."""
    expected, got = _as_numpy(expected), _as_numpy(got)
    for wrong, word in ((np.isnan(expected) & ~np.isnan(got), "a number"),
                        (~np.isnan(expected) & np.isnan(got), "nan (or never written)")):
        if wrong.any():
            return tuple(int(i) for i in np.argwhere(wrong)[0]), word
    return None


def compare_where_finite(expected, got, **options) -> None:
    """``compare`` on the elements where ``expected`` is not nan (after ``first_nan_mismatch``)."""
    expected, got = _as_numpy(expected), _as_numpy(got)
    finite = ~np.isnan(expected)
    compare(np.where(finite, expected, 0), np.where(finite, got, 0), **options)


def passed(what: str, cases: int) -> None:
    print(f"PASS {what} ({cases} case{'s' if cases != 1 else ''})")


def random_sizes(seed: int, count: int, low: int, high: int):
    """Sizes for the cases of a check: always one that fits a single block
    size exactly, one of size 1, and odd ones."""
    rng = random.Random(seed)
    sizes = [low, high]
    while len(sizes) < count:
        sizes.append(rng.randint(low, high) | 1)
    return sizes[:count]

"""Does a student's kernel compile for a real GPU? Checked with no GPU.

The CUDA simulator runs a kernel as plain Python, so it accepts code that
a GPU compiler rejects: a float used as an index (``math.floor`` returns a
float on the GPU), a list, a NumPy call, a helper without ``@per_element``.
So every kernel checker also compiles the student's kernel to PTX for a
real GPU (compute capability 8.0), as ``tools/compile_ptx.py`` does for the
library's kernels.

The simulator is on in the student's process, so the compile runs in a
second Python process without it: one long-lived worker per process (its
start, importing numba-cuda, is paid once), fed the kernel's source, the
source of the helpers it calls, the constants it reads, and the types of
the arguments the checker launches it with. Results are cached by a hash
of all of that, and a request runs in the background while the simulator
runs the checker's cases.

Where there is no compiler (numba-cuda is not installed: ``CUDA=none``,
numba's built-in simulator), the check is skipped without a word; so it is
where kernels run on a GPU, since launching a kernel compiles it there.
Cost, measured on a busy 2-core machine: the worker's start (importing
numba-cuda) 4-6 s and its first compile 2.5 s, during the first check's
simulated cases; then 0.3 s for a small kernel, up to 8 s for one that
inlines several helpers, again mostly while the simulator runs the cases;
nothing for a kernel compiled before (same source and argument types).
"""

from __future__ import annotations

import ast
import atexit
import hashlib
import importlib.util
import inspect
import json
import os
import re
import subprocess
import sys
import textwrap
import threading
import types as pytypes
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from .engine import CheckFailed

__all__ = ["compiler_available", "submit", "require_compiles", "compile_error", "COMPUTE_CAPABILITY"]

COMPUTE_CAPABILITY = (8, 0)

#: Modules whose functions and constants the worker imports rather than
#: receiving their source: they exist in the worker too.
_IMPORTABLE_ROOTS = {"math", "cmath", "operator", "numpy", "numba", "upsamplelib"}

# The worker: read one JSON request per line, answer one JSON line.
_WORKER = r'''
import json, os, sys, time
import numba
from numba import cuda
from numba.core import types

def argument_type(spec):
    kind = spec[0]
    if kind == "array":
        return types.Array(numba.from_dtype(__import__("numpy").dtype(spec[1])), spec[2], spec[3])
    if kind == "bool":
        return types.boolean
    return numba.from_dtype(__import__("numpy").dtype(spec[1]))

def is_student_error(error):
    names = {cls.__name__ for cls in type(error).__mro__}
    return "NumbaError" in names and not names & {"NvvmSupportError", "CudaSupportError", "NvvmError",
                                                  "CudaDriverError", "NvvmWarning"}

def missing_ufunc(error):
    # numba-cuda looks a NumPy ufunc's GPU loop up in a table, and one it
    # lacks (np.sqrt here) ends in a bare KeyError
    key = error.args[0] if isinstance(error, KeyError) and error.args else None
    name = getattr(key, "__name__", None)
    return name if type(key).__name__ == "ufunc" else None

# Typing a call of a NumPy function that numba-cuda overloads (np.zeros, ...)
# compiles the overload for "the current device", which needs a driver; with
# none here, that failed as if the compiler were missing and the kernel
# passed. The current device is the compile target instead.
import types as _namespace
from numba.cuda import dispatcher as _dispatcher
TARGET = _namespace.SimpleNamespace(compute_capability=None)
_dispatcher.get_current_device = lambda: TARGET

for line in sys.stdin:
    request = json.loads(line)
    TARGET.compute_capability = tuple(request["cc"])
    started = time.perf_counter()
    try:
        namespace = {"__name__": "student_kernel"}
        exec(compile(request["source"], "<student kernel>", "exec"), namespace)
        function = namespace[request["name"]]
        cuda.compile_ptx(function, tuple(argument_type(s) for s in request["arguments"]),
                         cc=tuple(request["cc"]))
        answer = {"ok": True}
    except Exception as error:
        location = getattr(error, "loc", None)
        answer = {"ok": False, "student": is_student_error(error), "type": type(error).__name__,
                  "message": str(error), "line": getattr(location, "line", None)}
        ufunc = missing_ufunc(error)
        if ufunc:
            answer.update(student=True, message="NumPy's np.%s has no GPU version here" % ufunc)
    answer["seconds"] = time.perf_counter() - started
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()
'''


def compiler_available() -> bool:
    """Whether numba-cuda (and so a PTX compiler) is installed."""
    try:
        return importlib.util.find_spec("numba_cuda") is not None
    except ValueError:  # hidden (a None entry in sys.modules)
        return False


class _Worker:
    """The compiling process, started on first use, stopped at exit."""

    def __init__(self):
        self.process = None
        self.lock = threading.Lock()

    def ask(self, request: dict) -> dict:
        with self.lock:
            for attempt in range(2):  # once more if the worker died
                if self.process is None or self.process.poll() is not None:
                    self.process = self._start()
                try:
                    self.process.stdin.write(json.dumps(request) + "\n")
                    self.process.stdin.flush()
                    line = self.process.stdout.readline()
                except (BrokenPipeError, OSError):
                    line = ""
                if line:
                    return json.loads(line)
                self.stop()
            return {"ok": False, "student": False, "type": "WorkerError", "message": "the compiler process died"}

    @staticmethod
    def _start():
        env = dict(os.environ)
        env.pop("NUMBA_ENABLE_CUDASIM", None)
        env["UPSAMPLELIB_CUDA"] = "gpu"  # library helpers compile for the GPU target
        env["UPSAMPLELIB_QUIET"] = "1"
        return subprocess.Popen([sys.executable, "-c", _WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True, env=env)

    def stop(self):
        if self.process is not None:
            try:
                self.process.stdin.close()
                self.process.wait(timeout=5)
            except Exception:  # already gone
                self.process.kill()
            self.process = None


_worker = _Worker()
atexit.register(_worker.stop)
# One background thread talks to the worker; made at import, so that the
# checkers' hung-kernel clean-up (which stops threads started during a
# launch) never sees it as a kernel's thread.
_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ptx-check")
_results: dict[str, Future] = {}
_results_lock = threading.Lock()


# --------------------------------------------------------------------------
# The source the worker compiles
# --------------------------------------------------------------------------


def _function_source(function) -> str:
    """The function's definition without decorators."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            node.decorator_list = []
            return ast.unparse(node)
    raise ValueError("no function definition found")


def _names_used(code) -> set:
    # co_freevars: a kernel defined inside a function reads its closure's
    # variables, which numba freezes as constants
    names = set(code.co_names) | set(code.co_freevars)
    for constant in code.co_consts:
        if isinstance(constant, pytypes.CodeType):
            names |= _names_used(constant)
    return names


def _python_function(value):
    """The Python function behind a jitted function, per_element function or
    simulator kernel; None for anything else."""
    inner = getattr(value, "py_func", None)
    if isinstance(inner, pytypes.FunctionType):
        return inner
    inner = getattr(value, "fn", None)  # the simulator's FakeCUDAKernel
    if isinstance(inner, pytypes.FunctionType):
        return inner
    return value if isinstance(value, pytypes.FunctionType) else None


def _constant(value):
    """Source of a constant, or None if ``value`` is not one."""
    if value is None or isinstance(value, (bool, int, float, complex, str)):
        return repr(value)
    if isinstance(value, np.generic) and value.shape == ():
        return f"__import__('numpy').{type(value).__name__}({value.item()!r})"
    if isinstance(value, np.ndarray) and value.size <= 100_000 and value.dtype.kind in "biuf":
        # a global array is a constant of the compiled kernel on a GPU too
        return f"__import__('numpy').array({value.tolist()!r}, dtype={value.dtype.str!r})"
    if isinstance(value, tuple):
        parts = [_constant(item) for item in value]
        if all(part is not None for part in parts):
            return "(" + "".join(part + ", " for part in parts) + ")"
    return None


def _import_line(name, value):
    """An import giving ``name`` the value ``value`` in the worker, or None."""
    if isinstance(value, pytypes.ModuleType):
        if value.__name__.split(".")[0] not in _IMPORTABLE_ROOTS | {"numba"}:
            return None
        module = value.__name__
        if module.endswith("simulator") or ".simulator" in module:  # numba.cuda in the simulator
            module = "numba.cuda"
        return f"import {module} as {name}" if "." not in module else \
            f"from {module.rsplit('.', 1)[0]} import {module.rsplit('.', 1)[1]} as {name}"
    import numba

    if isinstance(value, numba.core.types.Type) and getattr(numba, str(value), None) is value:
        return f"from numba import {value} as {name}"
    module, qualname = getattr(value, "__module__", None), getattr(value, "__qualname__", None)
    if isinstance(module, str) and module.split(".")[0] in _IMPORTABLE_ROOTS and isinstance(qualname, str):
        owner = sys.modules.get(module)
        if owner is not None and "." not in qualname and getattr(owner, qualname, None) is value:
            return f"from {module} import {qualname} as {name}"
    return None


#: How the module source declares a helper that a CUDA kernel calls (``compiled_run`` swaps it for a CPU compile).
DEVICE_FUNCTION_DECORATOR = "__import__('numba').cuda.jit(device=True)"


def _is_device_function(value) -> bool:
    return bool(getattr(value, "_device", False)) or bool(getattr(value, "targetoptions", {}).get("device"))


def module_source(kernel) -> tuple[str, str]:
    """(source of a module defining the kernel and what it uses, the kernel's name)."""
    lines_import: list[str] = []
    definitions: list[str] = []
    seen: set = set()

    def visit(function, name, decorator):
        key = id(function)
        if key in seen:
            return
        seen.add(key)
        referenced = dict(function.__globals__)
        if function.__closure__:
            referenced.update(zip(function.__code__.co_freevars,
                                  (cell.cell_contents for cell in function.__closure__)))
        for used in sorted(_names_used(function.__code__)):
            if used not in referenced:
                continue  # a builtin, or an attribute name
            value = referenced[used]
            constant = _constant(value)
            if constant is not None:
                lines_import.append(f"{used} = {constant}")
                continue
            line = _import_line(used, value)
            if line is not None:
                lines_import.append(line)
                continue
            helper = _python_function(value)
            if helper is not None and helper is not function:
                if helper is value:
                    helper_decorator = None  # a plain Python function: the GPU compiler must say no
                elif _is_device_function(value) or type(value).__name__ == "FakeCUDAKernel":
                    helper_decorator = DEVICE_FUNCTION_DECORATOR
                else:
                    helper_decorator = "__import__('numba').njit(inline='always')"
                visit(helper, used, helper_decorator)
        source = _function_source(function)
        if name != function.__name__:
            source += f"\n{name} = {function.__name__}"
        if decorator is not None:
            source += f"\n{name} = {decorator}({name})"
        definitions.append(source)

    function = _python_function(kernel)
    if function is None:
        raise ValueError("not a kernel")
    visit(function, function.__name__, None)
    header = sorted(set(lines_import), key=lambda line: (not line.startswith(("import", "from")), line))
    return "\n".join(header) + "\n\n" + "\n\n".join(definitions) + "\n", function.__name__


def _argument_spec(value):
    try:
        import torch

        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    inner = getattr(value, "_ary", None)  # a simulator device array
    if isinstance(inner, np.ndarray):
        value = inner
    if isinstance(value, np.ndarray):
        layout = "C" if value.flags.c_contiguous else ("F" if value.flags.f_contiguous else "A")
        return ["array", value.dtype.str, value.ndim, layout]
    if isinstance(value, (bool, np.bool_)):
        return ["bool"]
    if isinstance(value, int):
        return ["scalar", "int64"]
    if isinstance(value, float):
        return ["scalar", "float64"]
    if isinstance(value, np.generic):
        return ["scalar", value.dtype.str]
    raise TypeError(f"cannot describe a kernel argument of type {type(value).__name__}")


# --------------------------------------------------------------------------
# Requests and answers
# --------------------------------------------------------------------------


def submit(kernel, arguments) -> Future | None:
    """Start compiling ``kernel`` for the types of ``arguments`` in the
    background; None where there is nothing to check (no compiler, no
    source). Repeated requests for the same source and types share one
    compile."""
    if not compiler_available():
        return None
    try:
        source, name = module_source(kernel)
        specs = [_argument_spec(value) for value in arguments]
    except (OSError, TypeError, ValueError, SyntaxError):  # no source to read, e.g. made with exec
        return None
    request = {"source": source, "name": name, "arguments": specs, "cc": list(COMPUTE_CAPABILITY)}
    key = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()
    with _results_lock:
        future = _results.get(key)
        if future is None:
            future = _results[key] = _executor.submit(_worker.ask, request)
            future.source = source
    return future


def _source_line(answer: dict, source: str) -> str | None:
    """The line of the compiled source the error is at, if the compiler said."""
    number = answer.get("line")
    found = re.findall(r'File "<student kernel>", line (\d+)', answer["message"])
    if number is None and found:
        number = int(found[-1])
    lines = source.splitlines()
    if isinstance(number, int) and 0 < number <= len(lines):
        return lines[number - 1].strip()
    return None


def _reason(message: str) -> str:
    """The compiler's message, shortened to the line that says what is wrong."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    for index, line in enumerate(lines):
        if line.startswith("No implementation of function") and index + 1 < len(lines):
            signature = next((l for l in lines[index + 1:] if l.startswith(">>>")), "")
            return f"no implementation of {signature.lstrip('> ').strip()}"
        if line.startswith(("Untyped global name", "Unknown attribute", "Use of unsupported", "Cannot determine",
                            "Cannot unify", "Invalid use of", "Unsupported", "Cannot type", "unsupported",
                            "NameError", "Use of")):
            return line.rstrip(":")
    useful = [line for line in lines if not line.startswith(("Failed in", "During:", "File ", ">>>"))]
    text = useful[0] if useful else (lines[0] if lines else "unknown error")
    return text if len(text) <= 200 else text[:197] + "..."


def _hint(message: str, float_index_note: str) -> str:
    from .engine import FLOAT_INDEX_HINT

    if re.search(r"getitem\([^)]*float", message) or re.search(r"setitem\([^)]*float", message) \
            or "array index type float" in message:
        return FLOAT_INDEX_HINT + "." + float_index_note
    if "Untyped global name" in message:
        return ("a function the kernel calls must be compiled for the GPU too: decorate it with @per_element "
                "(or @cuda.jit(device=True)); Python objects such as lists or dicts cannot be used in a kernel")
    if "has no GPU version here" in message:
        return ("in a kernel, use the math module's functions (math.sqrt, math.exp, ...) on numbers, not NumPy's "
                "np.sqrt, np.exp, ...")
    if re.search(r"Function\(<built-in function (zeros|empty|ones|full|zeros_like|empty_like|array)>\)", message):
        return ("a kernel cannot allocate NumPy arrays (np.zeros, np.empty, ...): keep a few values per thread in "
                "cuda.local.array(SIZE, float32), with SIZE a constant")
    if re.search(r"Function\(<function local\.array", message):
        return ("cuda.local.array needs a size fixed when the kernel compiles: a constant (a number, or a global "
                "such as CHANNELS_PER_THREAD), not a value computed in the kernel; allocate the largest size and "
                "use part of it")
    if "reflected list" in message or "list(" in message or "List" in message:
        return "a kernel cannot build Python lists; use a few scalar variables, or cuda.local.array"
    return ("the simulator runs a kernel as Python, so it accepts code a GPU cannot run: use integer indices, "
            "numbers, the arrays passed in, math.* and cuda.* only")


def compile_error(kernel, arguments) -> str | None:
    """The compiler's (shortened) reason if ``kernel`` does not compile for
    a GPU with these arguments' types; None if it does or cannot be checked."""
    future = submit(kernel, arguments)
    if future is None:
        return None
    answer = future.result()
    if answer["ok"] or not answer.get("student"):
        return None
    reason = _reason(answer["message"])
    line = _source_line(answer, future.source)
    return reason + (f", in `{line}`" if line else "")


def require_compiles(kernel, arguments, what: str, float_index_note: str = "", future=None) -> None:
    """Raise CheckFailed with the compiler's reason and a hint if ``kernel``
    would not compile for a GPU (compute capability 8.0) with the types of
    ``arguments`` (or: the answer to an earlier ``submit``, ``future``)."""
    future = future or submit(kernel, arguments)
    if future is None:
        return
    answer = future.result()
    if answer["ok"] or not answer.get("student"):
        return
    reason = _reason(answer["message"])
    line = _source_line(answer, future.source)
    raise CheckFailed(f"{what}: the simulator ran it, but a GPU compiler rejects the kernel: {reason}"
                      + (f", in `{line}`" if line else "") + f".\nHint: {_hint(answer['message'], float_index_note)}")

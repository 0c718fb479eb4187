"""Run a student's kernel with the number types a GPU compile gives it.

The CUDA simulator runs a kernel as Python, and NumPy types numbers
otherwise than Numba does when it compiles the kernel for a GPU: an int
times a ``np.float32`` stays float32 in NumPy (a Python int is "weak"),
while compiled it is float64. Index math that rounds through float32, as
PyTorch's does, can then be right in the simulator and off by one pixel on
a GPU (210 -> 400 rows, output row 40: 21 in float32, 20 in float64).

Numba's CPU compiler types numbers exactly as its CUDA compiler does, so
the kernel's body is compiled for the CPU, with each ``cuda.grid``,
``cuda.threadIdx`` ... replaced by the thread's coordinates, typed as on a
GPU (int32 coordinates, int64 grid indices), and a loop runs it once per
thread; a helper that reads them is handed them by each call, and
``cuda.warpsize`` is 32. Kernels that use anything else of ``cuda``
(shared memory, barriers, atomics, local arrays) are not run this way:
``compiled_launcher`` returns None for them, and the simulator's run
stands alone.

Bounds are checked (an index past an array's end raises IndexError, as
in the simulator), and an integer division by zero gives 0 without an
error, as on a GPU.
"""

from __future__ import annotations

import ast

import numpy as np

from . import ptx

__all__ = ["compiled_launcher"]

_AXES = ("x", "y", "z")
#: ``cuda.warpsize`` on every NVIDIA GPU.
WARP_SIZE = 32
#: Every name the rewrite adds starts so; a kernel using one itself is not run (a clash).
_PREFIX = "_ul_"
#: The thread's coordinates, as the compiled body receives them.
_COORDINATES = {"threadIdx": "_ul_thread_", "blockIdx": "_ul_block_", "blockDim": "_ul_block_dim_",
                "gridDim": "_ul_grid_dim_"}


class _Unsupported(Exception):
    """The kernel uses a part of ``cuda`` that a per-thread loop cannot run."""


def _cuda_aliases(tree: ast.Module) -> tuple[set, set]:
    """(names bound to ``numba.cuda``, names bound to ``numba``) by the
    module's imports; those import lines are dropped."""
    cuda_names, numba_names = set(), set()
    kept = []
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module == "numba" and \
                all(alias.name == "cuda" for alias in node.names):
            cuda_names |= {alias.asname or alias.name for alias in node.names}
            continue
        if isinstance(node, ast.Import) and all(alias.name == "numba.cuda" for alias in node.names):
            cuda_names |= {alias.asname for alias in node.names if alias.asname}
            continue
        if isinstance(node, ast.Import):
            numba_names |= {alias.asname or alias.name for alias in node.names if alias.name == "numba"}
        kept.append(node)
    tree.body = kept
    return cuda_names, numba_names


class _ThreadBody(ast.NodeTransformer):
    """Replaces ``cuda.grid(n)``, ``cuda.gridsize(n)`` and
    ``cuda.threadIdx.x`` (and the other coordinates) with the thread's own
    values; raises _Unsupported for any other use of ``cuda``."""

    def __init__(self, cuda_names, numba_names):
        self.cuda_names, self.numba_names = cuda_names, numba_names

    def _is_cuda(self, node) -> bool:
        if isinstance(node, ast.Name):
            return node.id in self.cuda_names
        return (isinstance(node, ast.Attribute) and node.attr == "cuda" and isinstance(node.value, ast.Name)
                and node.value.id in self.numba_names)

    def visit_Call(self, node):
        function = node.func
        if isinstance(function, ast.Attribute) and self._is_cuda(function.value) and \
                function.attr in ("grid", "gridsize"):
            given = node.args + [keyword.value for keyword in node.keywords if keyword.arg == "ndim"]
            if len(given) != 1 or len(node.args) + len(node.keywords) != 1 or \
                    not isinstance(given[0], ast.Constant) or given[0].value not in (1, 2, 3):
                raise _Unsupported(f"cuda.{function.attr} with arguments other than 1, 2 or 3")
            dimensions = given[0].value
            if function.attr == "grid":
                parts = [f"(_ul_int64(_ul_block_{a}) * _ul_block_dim_{a} + _ul_thread_{a})"
                         for a in _AXES[:dimensions]]
            else:
                parts = [f"(_ul_int64(_ul_grid_dim_{a}) * _ul_block_dim_{a})" for a in _AXES[:dimensions]]
            text = parts[0] if dimensions == 1 else "(" + ", ".join(parts) + ")"
            return ast.copy_location(ast.parse(text, mode="eval").body, node)
        return self.generic_visit(node)

    def visit_Attribute(self, node):
        inner = node.value
        if isinstance(inner, ast.Attribute) and self._is_cuda(inner.value) and inner.attr in _COORDINATES \
                and node.attr in _AXES:
            return ast.copy_location(ast.Name(id=_COORDINATES[inner.attr] + node.attr, ctx=ast.Load()), node)
        if self._is_cuda(inner):
            if node.attr == "warpsize":
                return ast.copy_location(ast.Constant(WARP_SIZE), node)
            raise _Unsupported(f"cuda.{node.attr}")
        return self.generic_visit(node)

    def visit_Name(self, node):
        if node.id in self.cuda_names:
            raise _Unsupported("cuda used as a value")
        return node


def _coordinate_parameters() -> list[str]:
    return [prefix + axis for prefix in _COORDINATES.values() for axis in _AXES]


def _coordinate_arguments() -> list[ast.Name]:
    return [ast.Name(id=parameter, ctx=ast.Load()) for parameter in _coordinate_parameters()]


def _with_coordinates_first(function: ast.FunctionDef) -> None:
    """The coordinates as the function's first parameters (positional-only
    ones too, where it has any)."""
    parameters = [ast.arg(arg=parameter) for parameter in _coordinate_parameters()]
    if function.args.posonlyargs:
        function.args.posonlyargs = parameters + function.args.posonlyargs
    else:
        function.args.args = parameters + function.args.args


def _aliases(tree: ast.Module, functions: dict) -> dict:
    """{module-level name: the function it is bound to}: each function's
    own name, and ``alias = function`` (how ``ptx.module_source`` writes a
    helper bound under another name), followed through chains."""
    bound = {name: name for name in functions}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name) \
                and isinstance(node.value, ast.Name) and node.value.id in bound:
            bound[node.targets[0].id] = bound[node.value.id]
    return bound


def _local_names(function: ast.FunctionDef) -> set:
    """Names a function binds itself (parameters, assignments, nested
    definitions, anywhere inside it): there they are not the module's."""
    names = set()
    for node in ast.walk(function):
        if isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.id)
        elif isinstance(node, ast.FunctionDef) and node is not function:
            names.add(node.name)
    return names


def _pass_coordinates_to_helpers(tree: ast.Module, functions: dict, kernel_name: str) -> None:
    """Give the helpers that read the thread's coordinates (their
    ``cuda.grid`` ... rewritten), or call a helper that does, the
    coordinates as parameters, as the kernel has them, and pass them on at
    every call of one, under any name it is bound to. Raises _Unsupported
    where such a helper is used other than called."""
    coordinates = set(_coordinate_parameters())
    bound = _aliases(tree, functions)
    local = {name: _local_names(function) for name, function in functions.items()}

    def helper_called(name, node):
        """The function a node of function ``name`` names, if it is the module's (not a local)."""
        if isinstance(node, ast.Name) and node.id in bound and node.id not in local[name]:
            return bound[node.id]
        return None

    reads = {name for name, function in functions.items()
             if any(isinstance(node, ast.Name) and node.id in coordinates for node in ast.walk(function))}
    callees = {name: {helper_called(name, node.func) for node in ast.walk(function) if isinstance(node, ast.Call)}
               for name, function in functions.items()}
    while True:
        callers = {name for name in functions if name not in reads and callees[name] & reads}
        if not callers:
            break
        reads |= callers
    reads.discard(kernel_name)  # its parameters come from the driver
    for name, function in functions.items():
        called = set()
        for node in ast.walk(function):
            if isinstance(node, ast.Call) and helper_called(name, node.func) in reads:
                node.args = _coordinate_arguments() + node.args
                called.add(id(node.func))
        if any(helper_called(name, node) in reads and id(node) not in called for node in ast.walk(function)):
            raise _Unsupported("a helper reading the thread's coordinates used as a value")
    for name in reads:
        _with_coordinates_first(functions[name])


def _driver_source(kernel_name: str, parameters: list[str]) -> str:
    """``_ul_launch(grid, block, *parameters)``: the kernel's body once per
    thread of a grid, in the order the simulator runs them (blocks, then
    threads, x fastest)."""
    arguments = "".join(", " + parameter for parameter in parameters)
    coordinates = ", ".join(_coordinate_parameters())
    lines = [f"def _ul_launch(_ul_grid, _ul_block{arguments}):"]
    for index, axis in enumerate(_AXES):
        lines.append(f"    _ul_grid_dim_{axis} = _ul_int32(_ul_grid[{index}])")
        lines.append(f"    _ul_block_dim_{axis} = _ul_int32(_ul_block[{index}])")
    indent = "    "
    for kind, sizes in (("block", "_ul_grid"), ("thread", "_ul_block")):
        for index, axis in reversed(list(enumerate(_AXES))):
            lines.append(f"{indent}for _ul_{kind}_{axis}_loop in range({sizes}[{index}]):")
            indent += "    "
            lines.append(f"{indent}_ul_{kind}_{axis} = _ul_int32(_ul_{kind}_{axis}_loop)")
    lines.append(f"{indent}{kernel_name}({coordinates}{arguments})")
    return "\n".join(lines)


def _names_in(tree: ast.Module) -> set:
    """Every identifier the module defines or reads."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.alias):
            names.add(node.asname or node.name)
    return names


def compiled_launcher(kernel):
    """A function ``launcher(grid, block, *arguments)`` that runs ``kernel``
    compiled for the CPU, one call of its body per thread; None where the
    kernel cannot be run so (no source, or a use of ``cuda`` beyond the
    thread's coordinates)."""
    import numba

    try:
        source, name = ptx.module_source(kernel)
        tree = ast.parse(source)
    except (OSError, TypeError, ValueError, SyntaxError):
        return None
    if any(used.startswith(_PREFIX) for used in _names_in(tree)):
        return None
    cuda_names, numba_names = _cuda_aliases(tree)
    body = _ThreadBody(cuda_names, numba_names)
    kernel_parameters = None
    functions = {}
    try:
        for node in tree.body:
            if isinstance(node, ast.FunctionDef):
                body.visit(node)
                functions[node.name] = node
                if node.name == name:
                    kernel_parameters = [argument.arg for argument in node.args.posonlyargs + node.args.args]
                    _with_coordinates_first(node)
            elif isinstance(node, ast.Assign):
                body.visit(node)  # `helper = cuda.jit(device=True)(helper)`: rewritten below
        if kernel_parameters is None:
            return None
        _pass_coordinates_to_helpers(tree, functions, name)
    except _Unsupported:
        return None
    text = ast.unparse(tree).replace(ptx.DEVICE_FUNCTION_DECORATOR, "_ul_device_function")
    text += "\n\n" + _driver_source(name, kernel_parameters) + "\n"
    # boundscheck: an index past the end raises, as the simulator's does; the numpy error model: an integer
    # division by zero is 0, as on a GPU, not ZeroDivisionError
    compiled = numba.njit(boundscheck=True, error_model="numpy")
    namespace = {"_ul_int32": np.int32, "_ul_int64": np.int64, "_ul_device_function": compiled}
    try:
        exec(compile(text, "<student kernel, compiled for the CPU>", "exec"), namespace)  # noqa: S102
        namespace[name] = compiled(namespace[name])
        launcher = compiled(namespace["_ul_launch"])
    except Exception:  # noqa: BLE001 - whatever the rewrite cannot define: the simulator's run stands alone
        return None

    def run(grid, block, *arguments):
        return launcher(_dim3(grid), _dim3(block), *arguments)

    return run


def _dim3(size) -> tuple[int, int, int]:
    size = tuple(size) if isinstance(size, (tuple, list)) else (size,)
    return tuple(int(s) for s in size) + (1,) * (3 - len(size))


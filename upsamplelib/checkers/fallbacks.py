"""A stuck student keeps going: the library's versions of the exercises that
later exercises build on.

Exercise 01.3's kernel calls the student's ``nearest_index`` (01.1); 02.5's
``BilinearFunction`` launches the kernels of 02.2 and 02.4, which call
``linear_index`` (02.1); and so on (``exercises.EXERCISES[...].depends_on``).
When such an earlier exercise is still the lesson's stub, checking the later
one would only repeat the earlier one's NotImplementedError. Instead, the
checker runs a copy of the student's code whose names of unsolved earlier
exercises point to the library's versions here, and says so in one line:

    01.1 is not solved yet: checking 01.3 with the library's nearest_index

Index functions are replaced by ``per_element`` functions of the library's
index math (they run inside kernels, on a GPU too). Kernels that the
student's host code launches (``kernel[blocks, threads](arrays...)``) are
replaced by ``HostKernel`` stand-ins with the same arguments, computed by the
library's PyTorch reference (``backend="torch"``) on the host arrays.
"""

from __future__ import annotations

import ast
import contextlib
import inspect
import re
import types

import numpy as np
import torch

import upsamplelib as ul

from ..backend import SIMULATOR, per_element
from ..ops.interpolate import NEAREST_GENERIC, linear_source_index, nearest_source_index
from . import hung_kernels
from .engine import kernel_definition
from .exercises import EXERCISES, requires

# --------------------------------------------------------------------------
# The library's versions, with the lessons' signatures
# --------------------------------------------------------------------------


def _nearest_index(dst, in_size, out_size):
    scale = np.float32(in_size) / np.float32(out_size)
    return nearest_source_index(dst, in_size, out_size, scale, False, NEAREST_GENERIC, np.float32)


def _nearest_exact_index(dst, in_size, out_size):
    scale = np.float32(in_size) / np.float32(out_size)
    return nearest_source_index(dst, in_size, out_size, scale, True, NEAREST_GENERIC, np.float32)


def _linear_index(dst, in_size, out_size, align_corners):
    if align_corners:
        scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
    else:
        scale = in_size / out_size
    return linear_source_index(dst, in_size, out_size, scale, align_corners, np.float64)


nearest_index = per_element(_nearest_index)
nearest_exact_index = per_element(_nearest_exact_index)
linear_index = per_element(_linear_index)


class HostKernel:
    """A stand-in for a kernel that host code launches: ``kernel[grid,
    block](*arrays)`` computes ``compute(*arrays)`` instead, whatever the
    launch configuration. Arrays are NumPy arrays (what the lessons' autograd
    Functions pass) or device arrays."""

    def __init__(self, name: str, compute):
        self.__name__ = name
        self._compute = compute

    def __getitem__(self, configuration):
        return self._launch

    def _launch(self, *args):
        with torch.enable_grad():  # the backward stand-ins differentiate the library's op
            self._compute(*[_tensor(a) for a in args])

    def __repr__(self):
        return f"<the library's {self.__name__}>"


def _tensor(value):
    """An array argument as a tensor sharing its memory; other values as they are."""
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    if hasattr(value, "__cuda_array_interface__"):
        return torch.as_tensor(value, device="cuda")
    return value


def _gradient(output_of, like, grad_out):
    """The gradient, with respect to an input shaped as ``like``, of the
    linear map ``output_of`` (its value at zero is enough)."""
    point = torch.zeros_like(like, requires_grad=True)
    (gradient,) = torch.autograd.grad(output_of(point), point, grad_out)
    return gradient


def _bilinear(x, align_corners, size):
    return ul.interpolate(x[None], size=size, mode="bilinear", align_corners=bool(align_corners), backend="torch")[0]


def _bilinear_grad(grad_out, grad_x, align_corners):
    return _gradient(lambda x: _bilinear(x, align_corners, tuple(grad_out.shape[1:])), grad_x, grad_out)


def _carafe_grad_x(grad_out, masks, grad_x, k, s, g):
    return _gradient(lambda x: ul.carafe(x, masks, k, s, group=g, backend="torch"), grad_x, grad_out)


def _carafe_grad_masks(grad_out, x, grad_masks, k, s, g):
    return _gradient(lambda m: ul.carafe(x, m, k, s, group=g, backend="torch"), grad_masks, grad_out)


def _semi_shift(E, D, weight, scale):
    return ul.semi_shift_conv(E, D, weight, None, scale, backend="torch")


def _grad_en(grad_out, weight, grad_en):
    # The decoder path does not touch the encoder's gradient: any D and scale do.
    return _gradient(lambda E: _semi_shift(E, torch.zeros_like(E), weight, 1), grad_en, grad_out)


def _grad_de(grad_out, weight, grad_de, scale):
    E = grad_de.new_zeros(grad_de.shape[0], grad_de.shape[1], grad_out.shape[2], grad_out.shape[3])
    return _gradient(lambda D: _semi_shift(E, D, weight, int(scale)), grad_de, grad_out)


def _grad_weight(grad_out, E, D, grad_weight, scale):
    return _gradient(lambda w: _semi_shift(E, D, w, int(scale)), grad_weight, grad_out)


#: exercise id -> {name the lesson gives it: the library's version}
LIBRARY_VERSIONS = {
    "01.1": {"nearest_index": nearest_index},
    "01.2": {"nearest_exact_index": nearest_exact_index},
    "02.1": {"linear_index": linear_index},
    "02.2": {"bilinear_kernel": HostKernel(
        "bilinear_kernel", lambda x, out, ac: out.copy_(_bilinear(x, ac, tuple(out.shape[1:]))))},
    "02.3": {"bilinear_scatter_kernel": HostKernel(
        "bilinear_scatter_kernel", lambda grad_out, grad_x, ac: grad_x.add_(_bilinear_grad(grad_out, grad_x, ac)))},
    "02.4": {"bilinear_gather_kernel": HostKernel(
        "bilinear_gather_kernel", lambda grad_out, grad_x, ac: grad_x.copy_(_bilinear_grad(grad_out, grad_x, ac)))},
    "03.4": {"carafe_group_kernel": HostKernel(
        "carafe_group_kernel",
        lambda x, masks, out, k, s, g: out.copy_(ul.carafe(x, masks, k, s, group=g, backend="torch")))},
    "03.6": {"carafe_grad_x_kernel": HostKernel(
        "carafe_grad_x_kernel", lambda grad_out, masks, grad_x, k, s, g: grad_x.copy_(
            _carafe_grad_x(grad_out, masks, grad_x, k, s, g)))},
    "03.7": {"carafe_grad_masks_kernel": HostKernel(
        "carafe_grad_masks_kernel", lambda grad_out, x, grad_masks, k, s, g: grad_masks.copy_(
            _carafe_grad_masks(grad_out, x, grad_masks, k, s, g)))},
    "04.5": {"similarity_block_kernel": HostKernel(
        "similarity_block_kernel", lambda q, key, weights, k, s: weights.copy_(
            torch.softmax(ul.sapa_similarity(q, key, k, s, backend="torch"), dim=1)))},
    "05.3": {"semi_shift_kernel": HostKernel(
        "semi_shift_kernel", lambda E, D, weight, bias, out, scale: out.copy_(
            ul.semi_shift_conv(E, D, weight, bias, int(scale), backend="torch")))},
    "05.4": {"grad_en_kernel": HostKernel(
        "grad_en_kernel", lambda grad_out, weight, grad_en: grad_en.copy_(_grad_en(grad_out, weight, grad_en)))},
    "05.5": {"grad_de_kernel": HostKernel(
        "grad_de_kernel", lambda grad_out, weight, grad_de, scale: grad_de.copy_(
            _grad_de(grad_out, weight, grad_de, scale)))},
    "05.6": {"grad_weight_kernel": HostKernel(
        "grad_weight_kernel", lambda grad_out, E, D, grad_weight, scale: grad_weight.copy_(
            _grad_weight(grad_out, E, D, grad_weight, scale)))},
}

def _methods(cls):
    """The Python functions a class defines (static and class methods too)."""
    members = (getattr(m, "__func__", m) for m in vars(cls).values())
    # A decorated method (@torch.no_grad()) is the decorator's wrapper: its own code is the student's.
    return [inspect.unwrap(m) for m in members if isinstance(m, types.FunctionType)]


# --------------------------------------------------------------------------
# Which exercise a student's object still is the stub of
# --------------------------------------------------------------------------

_STUB = re.compile(r"Exercise (\d+\.\d+)")


def stub_of(obj) -> str | None:
    """The exercise id whose stub (``raise NotImplementedError("Exercise
    NN.M: ...")``) ``obj`` still contains, read from its source; None when
    it has none. For a class, any of its methods."""
    if isinstance(obj, type):
        for method in _methods(obj):
            found = stub_of(method)
            if found:
                return found
        return None
    function = getattr(obj, "py_func", obj)
    if not isinstance(function, types.FunctionType):
        return None
    try:
        _, definition = kernel_definition(function)
    except Exception:  # no source to read
        return None
    for node in ast.walk(definition):
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
            target = node.exc.func
            if isinstance(target, ast.Name) and target.id == "NotImplementedError" and node.exc.args:
                message = node.exc.args[0]
                if isinstance(message, ast.Constant) and isinstance(message.value, str):
                    found = _STUB.search(message.value)
                    if found:
                        return found.group(1)
    return None


# --------------------------------------------------------------------------
# A copy of the student's code that calls the library's versions
# --------------------------------------------------------------------------


def _names_used(code) -> set[str]:
    names = set(code.co_names)
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            names |= _names_used(constant)
    return names


class _Patcher:
    """Rebuilds student objects whose code reaches, through the notebook's
    globals, a name in ``replacements``; remembers which names it used."""

    def __init__(self, namespace: dict, replacements: dict):
        self.namespace = namespace
        self.replacements = replacements
        self.used: list[str] = []
        self.done: dict[int, object] = {}

    def patch(self, obj):
        """``obj`` rebuilt to call the replacements, or ``obj`` itself when
        nothing it reaches needs one."""
        key = id(obj)
        if key in self.done:
            return self.done[key]
        self.done[key] = obj  # a recursive reference resolves to the original
        if isinstance(obj, type):
            result = self._patch_class(obj)
        else:
            result = self._patch_function(obj)
        self.done[key] = result
        return result

    def _new_globals(self, function):
        changes = {}
        for name in sorted(_names_used(function.__code__)):
            if name in self.replacements:
                changes[name] = self.replacements[name]
                if name not in self.used:
                    self.used.append(name)
            elif name in self.namespace and self._ours(self.namespace[name]):
                patched = self.patch(self.namespace[name])
                if patched is not self.namespace[name]:
                    changes[name] = patched
        if not changes:
            return None
        new_globals = dict(function.__globals__)
        new_globals.update(changes)
        hung_kernels.extra_globals[id(new_globals)] = new_globals
        while len(hung_kernels.extra_globals) > 64:  # keep the last few, for repairs
            hung_kernels.extra_globals.pop(next(iter(hung_kernels.extra_globals)))
        return new_globals

    def _ours(self, value) -> bool:
        """Whether ``value`` is code of the notebook (not the library's)."""
        if isinstance(value, type):
            return any(m.__globals__ is self.namespace for m in _methods(value))
        function = getattr(value, "py_func", value)
        return isinstance(function, types.FunctionType) and function.__globals__ is self.namespace

    def _patch_function(self, obj):
        function = getattr(obj, "py_func", obj)
        if not isinstance(function, types.FunctionType):
            return obj
        new_globals = self._new_globals(function)
        if new_globals is None:
            return obj
        copy = types.FunctionType(function.__code__, new_globals, function.__name__, function.__defaults__,
                                  function.__closure__)
        copy.__kwdefaults__ = function.__kwdefaults__
        copy.__qualname__ = function.__qualname__
        copy.__doc__ = function.__doc__
        return _rewrap(obj, copy)

    def _patch_class(self, cls):
        namespace, changed = {}, False
        for name, member in vars(cls).items():
            if name in ("__dict__", "__weakref__"):
                continue
            inner = getattr(member, "__func__", None) if isinstance(member, (staticmethod, classmethod)) else member
            if isinstance(inner, types.FunctionType):
                patched = self._patch_function(inner)
                if patched is not inner:
                    changed = True
                    member = type(member)(patched) if inner is not member else patched
            namespace[name] = member
        if not changed:
            return cls
        return type(cls)(cls.__name__, cls.__bases__, namespace)


def _rewrap(original, function):
    """``function`` wrapped as ``original`` is: a CUDA kernel, a device
    function, a ``per_element`` function, or nothing."""
    from numba import cuda

    if type(original).__name__ in ("FakeCUDAKernel", "CUDADispatcher"):
        device = getattr(original, "_device", None)
        if device is None:  # a GPU dispatcher
            device = bool(getattr(original, "targetoptions", {}).get("device"))
        return cuda.jit(device=True)(function) if device else cuda.jit(function)
    if hasattr(original, "py_func"):  # per_element: a Numba CPU dispatcher
        return per_element(function) if not SIMULATOR else _simulated_per_element(function)
    return function


def _simulated_per_element(function):
    # In the simulator, kernels call per_element functions as Python: the
    # function itself does (and needs no compiled, cached twin).
    return function


class CountedKernel:
    """``kernel`` (the student's, or a ``HostKernel``) that counts the
    launches made through it: a check can tell that the student's host
    code ran the kernels it was asked to run."""

    def __init__(self, name: str, kernel):
        self.__name__ = name
        self.kernel = kernel
        self.launches = 0

    def __getitem__(self, configuration):
        launch = self.kernel[configuration]

        def counted(*args):
            self.launches += 1
            return launch(*args)
        return counted

    def __getattr__(self, name):  # anything else (py_func, forall, ...) is the kernel's
        return getattr(self.kernel, name)

    def __repr__(self):
        return repr(self.kernel)


def prepared_for_check(exercise_id: str, obj, counted=(), namespace: dict | None = None):
    """(``obj``, or a copy of it whose code calls the library's versions of
    the unsolved exercises it builds on and launches the kernels named in
    ``counted`` through ``CountedKernel``s; [(exercise id, name) of each
    library version used]; {name: CountedKernel} of the counted kernels its
    code reaches)."""
    if exercise_id not in EXERCISES:
        return obj, [], {}
    if namespace is None:
        namespace = namespace_of(obj)
    if namespace is None:
        return obj, [], {}
    replacements, origin = {}, {}
    for earlier in requires(exercise_id):
        for name, version in LIBRARY_VERSIONS.get(earlier, {}).items():
            if name in namespace and stub_of(namespace[name]) is not None:
                replacements[name] = version
                origin[name] = earlier
    counters, used_inside = {}, {}
    for name in counted:
        if name in namespace:
            # The counted kernel is the student's, itself calling the library's versions it needs.
            inner = _Patcher(namespace, replacements)
            counters[name] = CountedKernel(name, replacements.get(name) or inner.patch(namespace[name]))
            used_inside[name] = inner.used
    if not replacements and not counters:
        return obj, [], {}
    patcher = _Patcher(namespace, {**replacements, **counters})
    patched = patcher.patch(obj)
    used = {name for name in patcher.used if name in origin}
    used.update(inside for name in patcher.used if name in counters for inside in used_inside[name])
    return patched, sorted((origin[name], name) for name in used), counters


def namespace_of(obj) -> dict | None:
    """The globals of the notebook (or module) that defined ``obj``; for a
    class, its own methods' or else the nearest base class's."""
    function = getattr(obj, "py_func", obj)
    if isinstance(obj, type):
        function = next((method for cls in obj.__mro__ for method in _methods(cls)), None)
    elif isinstance(function, types.FunctionType):
        function = inspect.unwrap(function)
    return getattr(function, "__globals__", None)


@contextlib.contextmanager
def counting_launches(obj, counters: dict):
    """While it lasts, the notebook's own names of the counted kernels are
    their ``CountedKernel``s: launches that do not go through the checked
    copy of ``obj`` count too (a helper called through its class's own
    name, a decorated helper, an inherited method)."""
    namespace = namespace_of(obj)
    if namespace is None:
        yield
        return
    saved = {name: namespace[name] for name in counters if name in namespace}
    namespace.update({name: counters[name] for name in saved})
    try:
        yield
    finally:
        namespace.update(saved)


def with_library_versions(exercise_id: str, obj, namespace: dict | None = None):
    """(``obj`` or a copy calling the library's versions of the unsolved
    exercises it builds on, [(exercise id, name) of each version used])."""
    patched, used, _ = prepared_for_check(exercise_id, obj, namespace=namespace)
    return (patched, used) if used else (obj, [])


def fallback_note(exercise_id: str, used) -> str:
    """The one line that says which library versions a check uses."""
    used = sorted(used)
    earlier = sorted({exercise for exercise, _ in used})
    names = [name for _, name in used]
    subject = earlier[0] + " is" if len(earlier) == 1 else ", ".join(earlier[:-1]) + " and " + earlier[-1] + " are"
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return f"{subject} not solved yet: checking {exercise_id} with the library's {listed}"

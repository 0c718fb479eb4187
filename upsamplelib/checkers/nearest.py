"""Checkers of lesson 01 (nearest and nearest-exact)."""

from __future__ import annotations

import math

import numba
import numpy as np
import torch
import torch.nn.functional as F

from ..backend import SIMULATOR, launch_config
from ..ops.interpolate import NEAREST_GENERIC, nearest_source_index
from .compiled_run import compiled_launcher
from .engine import FLOAT_INDEX_HINT, CheckFailed, diagnose, passed
from .rules import KernelCheck, block_size_of_case, blocks_in_case, blocks_note

__all__ = [
    "check_nearest_index",
    "check_nearest_exact_index",
    "check_nearest_plane_kernel",
    "check_nearest_kernel",
    "FLOAT32_SENSITIVE_SIZES",
]

#: (in, out) pairs where the exact index, floor(dst * in / out) in float64,
#: picks a different source pixel than PyTorch's float32 computation does.
#: (For (18, 492), float64 floor(dst * (in / out)) happens to agree with float32.)
FLOAT32_SENSITIVE_SIZES = [(210, 400), (252, 114), (18, 492), (60, 232)]

_SIZE_PAIRS = FLOAT32_SENSITIVE_SIZES + [(1, 1), (1, 7), (7, 1), (3, 3), (4, 8), (5, 12), (12, 5),
                                         (9, 20), (20, 9), (64, 255), (255, 64), (100, 333)]


def _reference_index(dst, in_size, out_size, exact):
    scale = np.float32(in_size) / np.float32(out_size)
    return int(nearest_source_index(dst, in_size, out_size, scale, exact, NEAREST_GENERIC, np.float32))


def _compiled(student):
    """The student's function compiled by Numba for the CPU, which types it
    as a GPU compile does (an int times a float32 is float64 there, while
    NumPy, running it as Python in the simulator, keeps float32); None where
    Numba cannot compile it (the kernel exercises' GPU compile reports that)."""
    function = getattr(student, "py_func", student)
    try:
        compiled = numba.njit(function)
        compiled(0, 1, 1)
    except Exception:  # noqa: BLE001 - any compile error: left to the GPU compile check
        return None
    return compiled


_COMPILED_TYPING_HINT = ("compiled, an int or a Python float mixed with a float32 is computed in float64 (NumPy keeps "
                         "it float32): make every operand float32, e.g. np.float32(dst) * scale, and np.float32(...) "
                         "around a sum or product you want rounded to float32")


def _check_compiled_index(student, exact, what):
    compiled = _compiled(student)
    if compiled is None:
        return
    for in_size, out_size in FLOAT32_SENSITIVE_SIZES:
        for dst in range(out_size):
            expected = _reference_index(dst, in_size, out_size, exact)
            got = compiled(dst, in_size, out_size)
            if got != expected:
                raise CheckFailed(
                    f"{what}({dst}, in_size={in_size}, out_size={out_size}) returns {student(dst, in_size, out_size)!r} "
                    f"run as Python (as the simulator runs it) but {got!r} compiled, as a GPU runs it; PyTorch uses "
                    f"input index {expected}.\nHint: {_COMPILED_TYPING_HINT}")


def _check_index(student, exact, what, hint):
    for in_size, out_size in _SIZE_PAIRS:
        other = [_reference_index(dst, in_size, out_size, not exact) for dst in range(out_size)]
        for dst in range(out_size):
            expected = _reference_index(dst, in_size, out_size, exact)
            got = student(dst, in_size, out_size)
            if isinstance(got, bool) or not isinstance(got, (int, np.integer)):
                raise CheckFailed(
                    f"{what}({dst}, in_size={in_size}, out_size={out_size}) returned {got!r} of type "
                    f"{type(got).__name__}; an index must be an int.\nHint: {FLOAT_INDEX_HINT}"
                )
            if got != expected:
                if got == other[dst] and all(student(d, in_size, out_size) == i for d, i in enumerate(other)):
                    hint = _OTHER_MODE_HINT[exact]
                raise CheckFailed(
                    f"{what}({dst}, in_size={in_size}, out_size={out_size}) returned {got!r}, "
                    f"PyTorch uses input index {expected}.\nHint: {hint}"
                )
    _check_compiled_index(student, exact, what)
    passed(what, len(_SIZE_PAIRS) + 1)


_NEAREST_RULE = ("floor(dst * scale) with scale = in_size / out_size, all in float32 "
                 "(float32(dst) * (float32(in_size) / float32(out_size))), then at most in_size - 1")
_EXACT_RULE = ("scale = float32(in_size) / float32(out_size); centre = float32((dst + 0.5) * scale - 0.5), the "
               "product taken in float64 and rounded to float32; then floor(float32(max(centre, 0) + 0.5)) "
               "(not round(), which rounds halves to even), at most in_size - 1")

#: When every index of a size pair is the other mode's (keyed by ``exact``).
_OTHER_MODE_HINT = {
    True: "this is mode='nearest''s index, floor(dst * scale): nearest-exact takes the source pixel whose centre "
          "is nearest, (dst + 0.5) * scale - 0.5 rounded half up. " + _EXACT_RULE,
    False: "this is mode='nearest-exact''s index (pixel centres, dst + 0.5); mode='nearest' takes " + _NEAREST_RULE,
}


def check_nearest_index(nearest_index):
    """``nearest_index(dst, in_size, out_size)`` for ``mode='nearest'`` with ``size=``."""
    _check_index(nearest_index, False, "nearest_index", _NEAREST_RULE)


def check_nearest_exact_index(nearest_exact_index):
    """``nearest_exact_index(dst, in_size, out_size)`` for ``mode='nearest-exact'``."""
    _check_index(nearest_exact_index, True, "nearest_exact_index", _EXACT_RULE)


#: The last two: sizes where an index computed in another precision than PyTorch's float32 is wrong somewhere.
_PRECISION_HINT = ("at this size PyTorch's float32 index math picks another source pixel than integer arithmetic "
                   "(row * in // out) or float64 does at a few outputs: compute the indices as PyTorch does, "
                   "with {call}")


class _CompiledRuns:
    """The kernel's sensitive cases run again compiled for the CPU, with a
    GPU's number types (``compiled_run``): in the simulator only, since on a
    GPU the checker's launch is that compile."""

    def __init__(self, kernel):
        self.kernel, self.launcher = kernel, None

    def check(self, launch, arrays, output, expected, *, what, case, call):
        if not SIMULATOR:
            return
        if self.launcher is None:
            self.launcher = compiled_launcher(self.kernel) or False
        if not self.launcher:
            return
        arrays = list(arrays)
        arrays[output] = np.full_like(arrays[output], np.nan)
        head = f"{what}: right in the simulator, which runs the kernel as Python, but compiled, as a GPU runs it,"
        hint = f"Hint: {_COMPILED_TYPING_HINT}; or call {call}, and check it with exercise 01.1's checker"
        try:
            self.launcher(*launch, *arrays)
        except IndexError as error:
            raise CheckFailed(f"{head} a thread indexes out of bounds ({error}) for {case}.\n{hint}") from None
        except Exception:  # noqa: BLE001 - a typing error: the GPU compile check reports it
            return
        got, expected = arrays[output], np.asarray(expected)
        wrong = ~((got == expected) | (np.isnan(got) & np.isnan(expected)))
        if wrong.any():
            index = tuple(int(i) for i in np.argwhere(wrong)[0])
            raise CheckFailed(f"{head} {int(wrong.sum())} of {wrong.size} outputs are wrong for {case}: "
                              f"out{list(index)} is {float(got[index]):.7g} where PyTorch gives "
                              f"{float(expected[index]):.7g}.\n{hint}, which compiles it too")


_PLANE_SHAPES = [((1, 1), (3, 2)), ((4, 5), (8, 10)), ((7, 3), (17, 5)), ((9, 11), (5, 6)), ((6, 6), (13, 19)),
                 ((2, 210), (1, 400)), ((252, 1), (114, 2))]
_FIRST_SENSITIVE_PLANE = 5


def check_nearest_plane_kernel(kernel, block=(8, 8)):
    """``kernel(x, out)``: nearest upsampling of one (H, W) plane, one thread
    per output pixel on a 2-D grid whose first coordinate is the column."""
    what = "nearest_plane_kernel"
    rules = KernelCheck(kernel, what, output=1)
    compiled = _CompiledRuns(kernel)
    rng = np.random.default_rng(10)
    for index, ((h, w), (out_h, out_w)) in enumerate(_PLANE_SHAPES):
        x = rng.standard_normal((h, w)).astype(np.float32)
        out = np.full((out_h, out_w), np.nan, np.float32)
        # Every other case another block shape: a kernel that writes the block's sides in is wrong there.
        shape = block if index % 2 == 0 else (2 * block[0], max(1, block[1] // 2))
        grid = (math.ceil(out_w / shape[0]), math.ceil(out_h / shape[1]))
        case = f"{h}x{w} -> {out_h}x{out_w}" + (f", blocks of {shape[0]} x {shape[1]} threads" if index % 2 else "")
        rules.launch((grid, shape), x, out, bounds_hint="guard with `if row < out.shape[0] and col < out.shape[1]:`",
                     count=index == 2, case=case, sized_for=1,
                     index_hint="read x at the source indices from nearest_index (at most x.shape - 1), not at the "
                                "output's row and col")
        expected = F.interpolate(torch.from_numpy(x)[None, None], size=(out_h, out_w), mode="nearest")[0, 0]
        hint = ("out[row, col] = x[nearest_index(row, x.shape[0], out.shape[0]), "
                "nearest_index(col, x.shape[1], out.shape[1])]: rows with the heights, columns with the widths")
        if index >= _FIRST_SENSITIVE_PLANE:
            hint = _PRECISION_HINT.format(call="nearest_index(row, x.shape[0], out.shape[0]) and the same for col")
        other_shape = ("" if shape == block else f"; this case runs blocks of {shape[0]} x {shape[1]} threads: col, "
                       "row = cuda.grid(2) holds for any block shape, one written in does not")
        diagnose(expected, out, [], what=what, case=case, rtol=0, atol=0, hint=hint,
                 unwritten_hint=("every thread inside out writes out[row, col]" + other_shape) if other_shape else "")
        if index >= _FIRST_SENSITIVE_PLANE:
            compiled.check((grid, shape), (x, out), 1, expected.numpy(), what=what, case=case,
                           call="nearest_index(row, x.shape[0], out.shape[0])")
    rules.passed(len(_PLANE_SHAPES))


UNRAVEL_HINT = ("unravel i into (plane, row, col) with the output's sizes: col = i % W, row = (i // W) % H, "
                "plane = i // (W * H), W = out.shape[2] and H = out.shape[1]")

_SHAPES = [((1, 1, 1), (2, 3)), ((2, 4, 5), (9, 10)), ((3, 7, 3), (16, 7)), ((2, 9, 11), (5, 6)), ((1, 5, 5), (23, 11)),
           ((1, 2, 210), (1, 400)), ((1, 252, 2), (114, 1))]
_FIRST_SENSITIVE_SHAPE = 5


def check_nearest_kernel(kernel, exact: bool = False):
    """``kernel(x, out, exact)``: (planes, H, W) -> (planes, H', W') with one
    thread per output element on a 1-D grid."""
    what = "nearest_kernel" + (" (nearest-exact)" if exact else "")
    mode = "nearest-exact" if exact else "nearest"
    rules = KernelCheck(kernel, what, output=1)
    compiled = _CompiledRuns(kernel)
    rng = np.random.default_rng(11)
    for index, ((planes, h, w), (out_h, out_w)) in enumerate(_SHAPES):
        x = rng.standard_normal((planes, h, w)).astype(np.float32)
        out = np.full((planes, out_h, out_w), np.nan, np.float32)
        per_block = block_size_of_case(index, 64)
        note = blocks_note(per_block, 64)
        case = f"{planes}x{h}x{w} -> {planes}x{out_h}x{out_w}" + blocks_in_case(per_block, 64)
        launch = launch_config(out.size, per_block)
        rules.launch(launch, x, out, exact,
                     bounds_hint="the last block runs past out.size; guard with `if i < out.size:`",
                     count=index == 2, case=case, sized_for=1,
                     index_hint="read x at the source indices from the index function (at most x.shape - 1), not "
                                "at the output's row and col; " + UNRAVEL_HINT)
        expected = F.interpolate(torch.from_numpy(x)[None], size=(out_h, out_w), mode=mode)[0]
        other = "nearest" if exact else "nearest-exact"
        if not np.array_equal(expected.numpy(), out) and np.array_equal(
                F.interpolate(torch.from_numpy(x)[None], size=(out_h, out_w), mode=other)[0].numpy(), out):
            raise CheckFailed(
                f"{what}: the result is {other}'s, not {mode}'s, for {planes}x{h}x{w} -> {planes}x{out_h}x{out_w}."
                f"\nHint: with exact={exact} the kernel must call "
                f"{'nearest_exact_index' if exact else 'nearest_index'}: `if exact:` chooses the index function")
        hint = UNRAVEL_HINT
        if index >= _FIRST_SENSITIVE_SHAPE:
            hint = _PRECISION_HINT.format(call="the lesson's index functions (nearest_index, nearest_exact_index)")
        diagnose(expected, out, [], what=what, case=case, rtol=0, atol=0, hint=hint,
                 unwritten_hint="every thread with i < out.size writes out[plane, row, col], its own element: "
                                + UNRAVEL_HINT + note)
        if index >= _FIRST_SENSITIVE_SHAPE:
            compiled.check(launch, (x, out, exact), 1, expected.numpy(), what=what, case=case,
                           call="the lesson's index functions (nearest_index, nearest_exact_index)")
    rules.passed(len(_SHAPES))

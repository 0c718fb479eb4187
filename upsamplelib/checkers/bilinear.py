"""Checkers of lesson 02 (bilinear forward and backward)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..backend import launch_config
from .engine import (
    FLOAT_INDEX_HINT,
    CheckFailed,
    check_non_contiguous,
    compare,
    diagnose,
    passed,
    require_gather,
    run_with_timeout,
    uses_atomics,
)
from .rules import KernelCheck, block_size_of_case, blocks_in_case, blocks_note, parameter_names

__all__ = [
    "check_linear_index",
    "check_bilinear_kernel",
    "check_bilinear_scatter_kernel",
    "check_bilinear_gather_kernel",
    "check_bilinear_function",
]

_SIZE_PAIRS = [(1, 1), (1, 5), (5, 1), (2, 2), (3, 7), (7, 3), (4, 8), (10, 25), (25, 10), (6, 6)]


_LINEAR_RULE = {
    rule: f"align_corners={rule}: {source}; i0 = floor(src), and w1 = src - i0 is the weight of i1 (the further "
          "the source from i0, the more i1 counts), w0 = 1 - w1 that of i0"
    for rule, source in ((False, "src = max((dst + 0.5) * in_size / out_size - 0.5, 0)"),
                         (True, "src = dst * (in_size - 1) / (out_size - 1), or 0 when out_size == 1"))
}


def check_linear_index(linear_index):
    """``linear_index(dst, in_size, out_size, align_corners) -> (i0, i1, w0, w1)``."""
    what = "linear_index"
    rng = np.random.default_rng(20)
    for align_corners in (False, True):
        for in_size, out_size in _SIZE_PAIRS:
            values = rng.standard_normal(in_size).astype(np.float32)
            got = np.empty(out_size, np.float32)
            for dst in range(out_size):
                try:
                    i0, i1, w0, w1 = linear_index(dst, in_size, out_size, align_corners)
                except ZeroDivisionError as error:
                    raise CheckFailed(
                        f"{what}({dst}, {in_size}, {out_size}, align_corners={align_corners}): ZeroDivisionError "
                        f"({error}).\nHint: " + ("with align_corners=True and out_size == 1, (in_size - 1) / "
                                                 "(out_size - 1) divides by zero: PyTorch takes the scale as 0 "
                                                 "there, so src = 0" if align_corners and out_size == 1 else
                                                 _LINEAR_RULE[align_corners])) from None
                for name, index in (("i0", i0), ("i1", i1)):
                    if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
                        raise CheckFailed(
                            f"{what}({dst}, {in_size}, {out_size}, align_corners={align_corners}) returned "
                            f"{name} = {index!r} of type {type(index).__name__}; an index must be an int.\n"
                            f"Hint: {FLOAT_INDEX_HINT}"
                        )
                if not (0 <= i0 < in_size and 0 <= i1 < in_size):
                    raise CheckFailed(
                        f"{what}({dst}, {in_size}, {out_size}, align_corners={align_corners}) returned "
                        f"indices ({i0}, {i1}) outside 0..{in_size - 1}.\n"
                        "Hint: clamp the source coordinate at 0 and i0 at in_size - 1; i1 = i0 + 1 only if "
                        "that is still inside"
                    )
                got[dst] = w0 * values[i0] + w1 * values[i1]
            expected = F.interpolate(torch.from_numpy(values)[None, None], size=out_size, mode="linear",
                                     align_corners=align_corners)[0, 0]
            compare(expected, got, what=what,
                    case=f"a line of {in_size} -> {out_size} values, align_corners={align_corners}",
                    hint=_LINEAR_RULE[align_corners])
    passed(what, 2 * len(_SIZE_PAIRS))


_SHAPES = [((1, 1, 1), (2, 3)), ((2, 4, 5), (9, 10)), ((2, 7, 3), (16, 7)), ((1, 9, 11), (5, 6)), ((1, 5, 5), (13, 11))]


def _reference(x, size, align_corners):
    x = torch.from_numpy(x).double().requires_grad_()
    return x, F.interpolate(x[None], size=size, mode="bilinear", align_corners=align_corners)[0]


def _index_hint(small, large):
    """For a thread whose index runs past the end of an array: linear_index's
    argument order, with the kernel's own names (``small`` the input side)."""
    return (f"linear_index(dst, in_size, out_size, align_corners) takes the input's size first: "
            f"linear_index(row, {small}.shape[1], {large}.shape[1], align_corners) and "
            f"linear_index(col, {small}.shape[2], {large}.shape[2], align_corners); index {small} only with i0 and "
            f"i1, and {large} only with row and col")


def _gather_index_hint(grad_out, grad_x):
    """For a gather thread that reads past the end of an array: its loops,
    not linear_index's arguments, choose what it reads."""
    return (f"a gather thread writes only its own {grad_x}[p, y, x] and reads the outputs that read that pixel: "
            f"keep its loops inside {grad_out}, rows in reading_window(y, {grad_x}.shape[1], {grad_out}.shape[1], "
            f"align_corners) and columns in reading_window(x, {grad_x}.shape[2], {grad_out}.shape[2], "
            "align_corners), both ends included")


def _kernel_case(rules, threads_over, *arrays, per_block=64, count=False, case="", index_hint=""):
    """Launch one thread per element of ``arrays[threads_over]``, in blocks of ``per_block``."""
    name = _parameter_name(rules.kernel, threads_over)
    rules.launch(launch_config(arrays[threads_over].size, per_block), *arrays, sized_for=threads_over, count=count,
                 case=case, index_hint=index_hint,
                 bounds_hint=f"the last block has threads past the end of {name}: guard the body with "
                             f"`if i < {name}.size:`")


def _parameter_name(kernel, position):
    names = parameter_names(kernel)
    return names[position] if position < len(names) else f"argument {position}"


def check_bilinear_kernel(kernel):
    """``kernel(x, out, align_corners)``: (planes, H, W) -> (planes, H', W'),
    one thread per output element."""
    what = "bilinear_kernel"
    rules = KernelCheck(kernel, what, output=1)
    rng = np.random.default_rng(21)
    for align_corners in (False, True):
        for index, ((planes, h, w), size) in enumerate(_SHAPES):
            x = rng.standard_normal((planes, h, w)).astype(np.float32)
            out = np.full((planes,) + size, np.nan, np.float32)
            per_block = block_size_of_case(index, 64)
            case = (f"{planes}x{h}x{w} -> {planes}x{size[0]}x{size[1]}, align_corners={align_corners}"
                    + blocks_in_case(per_block, 64))
            _kernel_case(rules, 1, x, out, align_corners, per_block=per_block, count=index == 2 and not align_corners,
                         case=case, index_hint=_index_hint(*parameter_names(kernel)[:2]))
            _, expected = _reference(x, size, align_corners)
            _, other = _reference(x, size, not align_corners)
            diagnose(expected.detach().float(), out, [
                (other.detach().float(), f"the result is align_corners={not align_corners}'s: pass align_corners on "
                                         "to linear_index, for the rows and the columns")],
                what=what, case=case, atol=1e-6, unwritten_hint=("every thread with i < out.size writes its own "
                                                                 "element" + blocks_note(per_block, 64)
                                                                 if per_block != 64 else ""),
                hint="blend the four neighbours: first along the row with (wx0, wx1), then the two rows "
                     "with (wy0, wy1): wy0 * (wx0 * x[p, y0, x0] + wx1 * x[p, y0, x1]) + wy1 * (...row y1...)")
    rules.passed(2 * len(_SHAPES))


def _check_backward(kernel, what, one_thread_per, hint):
    rules = KernelCheck(kernel, what, output=1, writes="atomic" if one_thread_per == "output" else "once")
    rng = np.random.default_rng(22)
    for align_corners in (False, True):
        for index, ((planes, h, w), size) in enumerate(_SHAPES):
            x = rng.standard_normal((planes, h, w)).astype(np.float32)
            x_ref, out_ref = _reference(x, size, align_corners)
            grad_out = rng.standard_normal(out_ref.shape).astype(np.float32)
            (expected,) = torch.autograd.grad(out_ref, x_ref, torch.from_numpy(grad_out).double())
            # A scatter adds into grad_x, which must start at 0; a gather writes each element once and must not
            # need it: nan then shows a gather that adds into grad_x.
            grad_x = np.zeros_like(x) if one_thread_per == "output" else np.full_like(x, np.nan)
            per_block = block_size_of_case(index, 64)
            case = (f"{planes}x{h}x{w} -> {planes}x{size[0]}x{size[1]}, align_corners={align_corners}"
                    + blocks_in_case(per_block, 64))
            _kernel_case(rules, 0 if one_thread_per == "output" else 1, grad_out, grad_x, align_corners,
                         per_block=per_block, count=index == 2 and not align_corners, case=case,
                         index_hint=(_index_hint(*parameter_names(kernel)[1::-1]) if one_thread_per == "output"
                                     else _gather_index_hint(*parameter_names(kernel)[:2])))
            case_hint = hint + blocks_note(per_block, 64)
            if one_thread_per == "input" and np.isnan(grad_x).all():
                case_hint = ("every element of grad_x is nan: the checker fills grad_x with nan, since a gather "
                             "writes each element once and needs no zeroed array (the lesson's Function hands it "
                             "new_empty memory). Sum into a local total and assign grad_x[p, y, x] = total, "
                             "not +=")
            compare(expected.float(), grad_x, what=what, case=case, hint=case_hint)
    rules.passed(2 * len(_SHAPES))


def check_bilinear_scatter_kernel(kernel):
    """``kernel(grad_out, grad_x, align_corners)``, one thread per output
    element, adding its four weighted contributions into ``grad_x``
    (zero-filled by the checker)."""
    if not uses_atomics(kernel):
        # The simulator runs a block's threads one after the other most of the
        # time, so a plain `+=` gives the right sum here and a wrong one on a GPU.
        raise CheckFailed("bilinear_scatter_kernel: several threads add into the same input pixel at the same "
                          "time, and `grad_x[...] += v` (read, add, write) loses updates on a GPU even when it "
                          "happens to work in the simulator.\nHint: use cuda.atomic.add(grad_x, (p, y, x), v)")
    _check_backward(kernel, "bilinear_scatter_kernel", "output",
                    "each output adds its grad_out g to its four neighbours, weighted as in the forward: "
                    "(y0, x0) gets wy0 * wx0 * g, (y0, x1) wy0 * wx1 * g, (y1, x0) wy1 * wx0 * g, (y1, x1) "
                    "wy1 * wx1 * g, from linear_index of row and col with align_corners")


def check_bilinear_gather_kernel(kernel):
    """``kernel(grad_out, grad_x, align_corners)``, one thread per input
    element, summing the outputs that read it; no atomics."""
    what = "bilinear_gather_kernel"
    require_gather(kernel, what, "writes only its own input pixel")
    _check_backward(kernel, what, "input",
                    "loop over the output rows and columns whose i0 or i1 is this pixel, and add "
                    "w_y * w_x * grad_out for each; where i0 and i1 are both this pixel (at the last row or "
                    "column), w_y (or w_x) is the sum of both weights, w0 + w1")


def check_bilinear_function(function_class):
    """``function_class.apply(x, size, align_corners)``: a torch.autograd.Function
    whose forward and backward run the student's kernels."""
    what = "BilinearFunction"
    torch.manual_seed(23)
    for align_corners in (False, True):
        # batch and channels >= 2, and unequal: an (N, C) order swapped in a reshape shows
        x = torch.randn(2, 3, 3, 4, dtype=torch.float64, requires_grad=True)
        size = (5, 7)
        out = run_with_timeout(lambda: function_class.apply(x, size, align_corners), what="forward")
        expected = F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)
        # The forward's values are checked by check_bilinear_kernel; here float32
        # index math (weights rounded to float32) is fine too.
        compare(expected.detach(), out.detach(), what=what, case=f"forward, align_corners={align_corners}",
                hint="forward should return the bilinear upsampling of x, reshaped to (N, C, H', W')")
        if out.dtype != x.dtype:
            raise CheckFailed(f"{what}: forward returned {out.dtype} for an x of {x.dtype}.\nHint: run the kernels in "
                              "x's dtype (planes.new_empty(...) for the output, no .float()): gradcheck perturbs x "
                              "by 1e-6 in float64, far below float32's precision")
        grad_out = torch.randn_like(expected)
        given = grad_out.clone()  # the student's backward must not change it
        try:
            (got,) = run_with_timeout(lambda: torch.autograd.grad(out, x, given), what="backward")
        except RuntimeError as error:
            if "incorrect number of gradient" not in str(error):
                raise
            raise CheckFailed(f"{what}: backward returned the wrong number of gradients: "
                              f"{str(error).splitlines()[0]}.\nHint: backward must return one gradient per input "
                              "of forward: (grad_x, None, None)") from None
        if not torch.equal(given, grad_out):
            raise CheckFailed(f"{what}: backward wrote into grad_out (autograd's tensor, which other gradients may "
                              "share).\nHint: return new tensors; write the kernel's results into a tensor of your "
                              "own (grad_planes.new_zeros or new_empty), and only read grad_out")
        (wanted,) = torch.autograd.grad(expected, x, grad_out)
        compare(wanted, got, what=what, case=f"the gradient of x, align_corners={align_corners}",
                hint="with the scatter kernel (02.3), grad_x must start at zero (torch.zeros, not new_empty or "
                     "empty_like): the kernel adds into it. With the gather (02.4), check that kernel")
        # On one image of two channels: every input is a simulated launch (N and C were checked above)
        small = x.detach()[:1, :2].clone().requires_grad_()
        ok = run_with_timeout(
            lambda: torch.autograd.gradcheck(lambda t: function_class.apply(t, size, align_corners), (small,),
                                             raise_exception=False),
            what="gradcheck",
        )
        if not ok:
            raise CheckFailed(f"{what}: torch.autograd.gradcheck fails with align_corners={align_corners}.\n"
                              "Hint: the gradient is right for one grad_out, but not against finite differences "
                              "in float64: keep forward and backward in x's dtype (no float32 copy on the way), "
                              "make the tensors contiguous before handing them to the kernels, and with the "
                              "scatter kernel (02.3) start grad_x at zero (new_zeros: it adds into grad_x, and "
                              "new_empty memory may hold anything)")
    check_non_contiguous(what, lambda t: function_class.apply(t, (5, 7), False),
                         [torch.randn(2, 2, 3, 4, dtype=torch.float64)])
    passed(what, 3)

"""Hints that help: for each hint, a wrong answer that triggers it, and the
hint shown names that answer's actual mistake (not a neighbouring one).

Two hints used to point elsewhere: a mirrored index one past the end (00.4)
got "guard", and a backward adding into an unzeroed gradient (02.5) got
"return one gradient per input". (tests/test_wrong_answers.py holds the
wider corpus of wrong answers that must be caught at all.)
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from numba import cuda

from upsamplelib import backend, checkers

simulator_only = pytest.mark.skipif(not backend.SIMULATOR, reason="only the simulator reports out-of-bounds indices")


def hint_of(check, *args, **kwargs) -> str:
    """The message of the CheckFailed that ``check(*args)`` raises."""
    with pytest.raises(checkers.CheckFailed) as failure:
        check(*args, **kwargs)
    return str(failure.value)


# --- 00.1 / 00.4: the guard, and an index past the end that is not the guard's fault


@cuda.jit
def scale_without_guard(x, out, factor):
    i = cuda.grid(1)
    out[i] = x[i] * factor


@cuda.jit
def flip_one_past_the_end(image, out):
    col, row = cuda.grid(2)
    if row < out.shape[0] and col < out.shape[1]:
        out[row, col] = image[row, out.shape[1] - col]  # the mirror of col is width - 1 - col


@cuda.jit
def flip_without_guard(image, out):
    col, row = cuda.grid(2)
    out[row, col] = image[row, out.shape[1] - 1 - col]


@simulator_only
def test_missing_guard_is_told_to_guard():
    assert "if i < out.size" in hint_of(checkers.check_scale_kernel, scale_without_guard)
    message = hint_of(checkers.check_flip_kernel, flip_without_guard)
    assert "guard with `if row < out.shape[0] and col < out.shape[1]:`" in message


@simulator_only
def test_mirrored_index_past_the_end_is_not_told_to_guard():
    message = hint_of(checkers.check_flip_kernel, flip_one_past_the_end)
    assert "guard with" not in message
    assert "the guard is right to let it through" in message and "width - 1 - col" in message


# --- 00.2: the launch configuration


def test_launch_config_rounding_down_is_told_to_round_up():
    assert "round up" in hint_of(checkers.check_launch_config, lambda n, threads: (n // threads, threads))


def test_launch_config_with_an_extra_block_is_told_to_use_the_smallest_count():
    assert "smallest block count" in hint_of(checkers.check_launch_config,
                                             lambda n, threads: (n // threads + 1, threads))


# --- 01.1: float32 index math


def test_float64_nearest_index_is_told_about_float32():
    def float64_rule(dst, in_size, out_size):
        return min(int(np.floor(dst * in_size / out_size)), in_size - 1)

    assert "float32" in hint_of(checkers.check_nearest_index, float64_rule)


def test_nearest_index_returning_a_float_is_told_to_make_it_an_int():
    def float_index(dst, in_size, out_size):
        return float(min(int(np.float32(dst) * (np.float32(in_size) / np.float32(out_size))), in_size - 1))

    assert "int(math.floor(...))" in hint_of(checkers.check_nearest_index, float_index)


# --- 02.5: the autograd Function


def _bilinear_function(backward):
    class Bilinear(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, size, align_corners):
            ctx.save_for_backward(x)
            ctx.config = (size, align_corners)
            return F.interpolate(x.detach(), size=size, mode="bilinear", align_corners=align_corners)

        @staticmethod
        def backward(ctx, grad_out):
            (x,) = ctx.saved_tensors
            size, align_corners = ctx.config
            with torch.enable_grad():
                point = torch.zeros_like(x, requires_grad=True)
                (gradient,) = torch.autograd.grad(
                    F.interpolate(point, size=size, mode="bilinear", align_corners=align_corners), point, grad_out)
            return backward(gradient, x)

    return Bilinear


def test_backward_adding_into_an_unzeroed_gradient_is_told_to_zero_it():
    # What a scatter into grad_x = x.new_empty(...) does: adds to whatever the memory held.
    unzeroed = _bilinear_function(lambda gradient, x: (torch.full_like(x, 7.0) + gradient, None, None))
    message = hint_of(checkers.check_bilinear_function, unzeroed)
    assert "must start at zero" in message and "new_empty" in message
    assert "one gradient per input" not in message


def test_backward_returning_too_few_gradients_is_told_to_return_one_per_input():
    too_few = _bilinear_function(lambda gradient, x: gradient)
    assert "one gradient per input of forward: (grad_x, None, None)" in hint_of(
        checkers.check_bilinear_function, too_few)


def test_a_right_bilinear_function_passes(capsys):
    checkers.check_bilinear_function(_bilinear_function(lambda gradient, x: (gradient, None, None)))
    assert capsys.readouterr().out.startswith("PASS BilinearFunction")


# --- 02.3: atomics


@cuda.jit
def scatter_without_atomics(grad_out, grad_x, align_corners):
    i = cuda.grid(1)
    if i < grad_out.size:
        grad_x[0, 0, 0] += grad_out[0, 0, 0]


def test_scatter_without_atomics_is_told_to_use_atomics():
    assert "cuda.atomic.add" in hint_of(checkers.check_bilinear_scatter_kernel, scatter_without_atomics)


# --- 01.4: the exact flag

from upsamplelib.checkers.fallbacks import nearest_index  # noqa: E402  (the library's, lesson 01's signature)


@cuda.jit
def nearest_ignoring_exact(x, out, exact):
    i = cuda.grid(1)
    if i < out.size:
        height, width = out.shape[1], out.shape[2]
        col, row, plane = i % width, (i // width) % height, i // (width * height)
        out[plane, row, col] = x[plane, nearest_index(row, x.shape[1], height), nearest_index(col, x.shape[2], width)]


def test_nearest_kernel_ignoring_exact_is_told_to_choose_the_index_function(capsys):
    checkers.check_nearest_kernel(nearest_ignoring_exact, exact=False)  # right for nearest
    message = hint_of(checkers.check_nearest_kernel, nearest_ignoring_exact, exact=True)
    assert "nearest's, not nearest-exact's" in message and "nearest_exact_index" in message
    assert "unravel" not in message

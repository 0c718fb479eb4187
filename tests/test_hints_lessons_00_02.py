"""Hints that help, lessons 00-02 and the engine's generic hints: for each
hint, a wrong answer a student could write from the lesson text, and the
hint shown names that answer's actual mistake (not a neighbouring one).

tests/test_hints.py holds the first hints reviewed (the guard of 00.1 and
00.4, 00.2, 01.1's float32, 01.4's exact flag, 02.1's clamps, 02.3's
atomics, 02.5's gradient count and zeroing); this file holds the rest of
lessons 00-02. The kernels sit at module level, as in a notebook: the
checkers read their source.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from numba import cuda

from upsamplelib import backend, checkers
from upsamplelib.checkers import bilinear as plain_checkers
from upsamplelib.checkers.engine import diagnose
from upsamplelib.checkers.fallbacks import linear_index, nearest_exact_index, nearest_index

from test_hints import hand_to_a_kernel, hint_of, simulator_only

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")


# --------------------------------------------------------------------------
# 00.1 scale: i from threadIdx only


@cuda.jit
def scale_with_thread_index(x, out, factor):
    i = cuda.threadIdx.x  # the index inside the block, not in the grid
    if i < out.size:
        out[i] = x[i] * factor


def test_scale_kernel_indexing_by_thread_index_is_told_to_use_cuda_grid():
    message = hint_of(checkers.check_scale_kernel, scale_with_thread_index)
    assert "for i = cuda.grid(1)" in message
    assert "guard" not in message


# --------------------------------------------------------------------------
# 00.2 launch_config: not a pair, threads per block changed


def test_launch_config_returning_only_the_block_count_is_told_to_return_a_pair():
    message = hint_of(checkers.check_launch_config, lambda n, threads: (n + threads - 1) // threads)
    assert "expected a pair (blocks, threads_per_block)" in message


def test_launch_config_changing_the_block_size_is_told_to_keep_it():
    message = hint_of(checkers.check_launch_config, lambda n, threads: ((n + 255) // 256, 256))
    assert "threads_per_block should stay" in message


# --------------------------------------------------------------------------
# 00.3 grid stride: one element per thread, no loop


@cuda.jit
def grid_stride_without_a_loop(x, out, factor):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = x[i] * factor


def test_grid_stride_kernel_without_a_loop_is_told_to_step_by_the_grid_size():
    message = hint_of(checkers.check_grid_stride_kernel, grid_stride_without_a_loop)
    assert "step by cuda.gridsize(1)" in message


# --------------------------------------------------------------------------
# 00.4 flip: the rows mirrored instead of the columns


@cuda.jit
def flip_rows(image, out):
    col, row = cuda.grid(2)
    if row < out.shape[0] and col < out.shape[1]:
        out[row, col] = image[out.shape[0] - 1 - row, col]


@cuda.jit
def flip_with_row_and_col_swapped(image, out):
    row, col = cuda.grid(2)
    if row < out.shape[0] and col < out.shape[1]:
        out[row, col] = image[row, out.shape[1] - 1 - col]


@cuda.jit
def flip_copying(image, out):
    col, row = cuda.grid(2)
    if row < out.shape[0] and col < out.shape[1]:
        out[row, col] = image[row, col]


def test_flip_kernel_mirroring_the_rows_is_told_to_mirror_the_columns():
    message = hint_of(checkers.check_flip_kernel, flip_rows)
    assert "the rows are mirrored" in message and "image[row, width - 1 - col]" in message
    assert "out of bounds" not in message


def test_flip_kernel_with_row_and_col_swapped_is_told_the_order_of_cuda_grid():
    message = hint_of(checkers.check_flip_kernel, flip_with_row_and_col_swapped)
    assert "First mismatch" in message and "`col, row = cuda.grid(2)`, not `row, col = ...`" in message


@simulator_only
def test_flip_kernel_one_past_the_end_is_told_the_mirror():
    @cuda.jit
    def flip_one_past_the_end(image, out):
        col, row = cuda.grid(2)
        if row < out.shape[0] and col < out.shape[1]:
            out[row, col] = image[row, out.shape[1] - col]

    message = hint_of(checkers.check_flip_kernel, flip_one_past_the_end)
    assert "the guard is right" in message and "The mirror of column col is width - 1 - col" in message


def test_flip_kernel_copying_is_told_to_read_the_mirrored_column():
    assert "out is a copy of image" in hint_of(checkers.check_flip_kernel, flip_copying)


# --------------------------------------------------------------------------
# 00.1-00.4: adding into out, launch sizes written into the kernel, a float block count


@cuda.jit
def scale_adding_into_out(x, out, factor):
    i = cuda.grid(1)
    if i < out.size:
        out[i] += x[i] * factor  # right only on a zeroed out


@cuda.jit
def scale_with_the_block_size_written_in(x, out, factor):
    i = cuda.blockIdx.x * 128 + cuda.threadIdx.x
    if i < out.size:
        out[i] = x[i] * factor


@cuda.jit
def scale_guarded_one_short(x, out, factor):
    i = cuda.grid(1)
    if i < out.size - 1:
        out[i] = x[i] * factor


@cuda.jit
def grid_stride_adding_into_out(x, out, factor):
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        out[i] += x[i] * factor


@cuda.jit
def grid_stride_with_the_grid_size_written_in(x, out, factor):
    for i in range(cuda.grid(1), out.size, 64):  # the checker's first grid, 2 x 32
        out[i] = x[i] * factor


@cuda.jit
def flip_adding_into_out(image, out):
    col, row = cuda.grid(2)
    if row < out.shape[0] and col < out.shape[1]:
        out[row, col] += image[row, out.shape[1] - 1 - col]


@cuda.jit
def flip_with_the_block_shape_written_in(image, out):
    col, row = cuda.blockIdx.x * 16 + cuda.threadIdx.x, cuda.blockIdx.y * 8 + cuda.threadIdx.y
    if row < out.shape[0] and col < out.shape[1]:
        out[row, col] = image[row, out.shape[1] - 1 - col]


@pytest.mark.parametrize("check, kernel", [(checkers.check_scale_kernel, scale_adding_into_out),
                                           (checkers.check_grid_stride_kernel, grid_stride_adding_into_out),
                                           (checkers.check_flip_kernel, flip_adding_into_out)],
                         ids=["scale", "grid stride", "flip"])
def test_a_kernel_adding_into_out_is_told_to_assign(check, kernel):
    message = hint_of(check, kernel)
    assert "on a zeroed out your kernel is right, so it adds into out (`+=`)" in message and "Assign: out[" in message


def test_a_scale_kernel_with_the_block_size_written_in_is_told_cuda_grid():
    message = hint_of(checkers.check_scale_kernel, scale_with_the_block_size_written_in)
    assert "blocks of 96" in message and "cuda.grid(1) is blockIdx.x * blockDim.x + threadIdx.x" in message


def test_a_scale_kernel_guarded_one_short_is_told_the_element_never_written():
    message = hint_of(checkers.check_scale_kernel, scale_guarded_one_short)
    assert "out[0] was never written" in message and "`if i < out.size:`" in message


def test_a_grid_stride_loop_with_the_grid_size_written_in_is_told_it_steps_wrongly():
    message = hint_of(checkers.check_grid_stride_kernel, grid_stride_with_the_grid_size_written_in)
    assert "fixed grid of 3 x 64" in message and "cuda.gridsize(1)" in message


def test_a_flip_kernel_with_the_block_shape_written_in_is_told_cuda_grid():
    message = hint_of(checkers.check_flip_kernel, flip_with_the_block_shape_written_in)
    assert "blocks of (8, 16)" in message and "for any block shape" in message


@pytest.mark.parametrize("blocks", [lambda n, t: np.ceil(n / t), lambda n, t: (n + t - 1) / t],
                         ids=["np.ceil", "true division"])
def test_a_float_block_count_is_told_to_make_it_an_int(blocks):
    message = hint_of(checkers.check_launch_config, lambda n, t: (blocks(n, t), t))
    assert "the block count is a float" in message and "(n + threads - 1) // threads" in message


# --------------------------------------------------------------------------
# 00.5 to_kernel_array: no as_cuda_array, a copy on either device


def to_kernel_array_without_detach(tensor):
    if tensor.is_cuda:
        return cuda.as_cuda_array(tensor)
    return tensor.numpy()


def test_to_kernel_array_without_detach_is_told_to_detach():
    message = hint_of(checkers.check_to_kernel_array, to_kernel_array_without_detach)
    assert "failed for a CUDA tensor that requires grad" in message and "tensor.detach() first" in message


def to_kernel_array_detached_on_the_cpu_only(tensor):
    if tensor.is_cuda:
        return cuda.as_cuda_array(tensor)  # PyTorch refuses it for a tensor that requires grad
    return tensor.detach().numpy()


def to_kernel_array_as_float32(tensor):
    tensor = tensor.detach().float()  # a copy of a float64 tensor
    return cuda.as_cuda_array(tensor) if tensor.is_cuda else tensor.numpy()


def test_to_kernel_array_detached_on_the_cpu_path_only_is_told_to_detach_on_the_gpu_too():
    # Passed before: the pretend CUDA tensor never required grad.
    message = hint_of(checkers.check_to_kernel_array, to_kernel_array_detached_on_the_cpu_only)
    assert "failed for a CUDA tensor that requires grad" in message
    assert "cuda.as_cuda_array(tensor.detach())" in message


def test_to_kernel_array_converting_to_float32_is_told_it_copies_a_float64_tensor():
    # Passed before: every tensor the checker tried was float32.
    message = hint_of(checkers.check_to_kernel_array, to_kernel_array_as_float32)
    assert "a cpu tensor of torch.float64 became an array of float32, a copy" in message
    assert "no .float()" in message


def to_kernel_array_returning_the_tensor(tensor):
    return tensor.detach()


def to_kernel_array_of_a_clone(tensor):
    tensor = tensor.detach()
    if tensor.is_cuda:
        return cuda.as_cuda_array(tensor.clone())
    return tensor.numpy()


def to_kernel_array_copy_on_the_cpu(tensor):
    tensor = tensor.detach()
    if tensor.is_cuda:
        return cuda.as_cuda_array(tensor)
    return tensor.numpy().copy()


def to_kernel_array_flattened(tensor):
    tensor = tensor.detach()
    if tensor.is_cuda:
        return cuda.as_cuda_array(tensor)
    return tensor.numpy().ravel()


@pytest.mark.skipif(torch.cuda.is_available() or not backend.SIMULATOR, reason="the pretend CUDA tensor")
def test_to_kernel_array_without_as_cuda_array_is_told_to_call_it():
    message = hint_of(checkers.check_to_kernel_array, to_kernel_array_returning_the_tensor)
    assert "without calling cuda.as_cuda_array" in message


@pytest.mark.skipif(torch.cuda.is_available() or not backend.SIMULATOR, reason="the pretend CUDA tensor")
def test_to_kernel_array_of_a_cuda_copy_is_told_it_is_a_copy():
    message = hint_of(checkers.check_to_kernel_array, to_kernel_array_of_a_clone)
    assert "for a CUDA tensor, writing through the array did not change the tensor, so it is a copy" in message
    assert "shares the GPU memory" in message


def test_to_kernel_array_copying_a_cpu_tensor_is_told_it_is_a_copy():
    message = hint_of(checkers.check_to_kernel_array, to_kernel_array_copy_on_the_cpu)
    assert "did not change the cpu tensor of torch.float32, so it is a copy" in message
    assert "tensor.numpy() on the CPU" in message


def test_to_kernel_array_changing_the_shape_is_told_the_shape():
    assert "shape (12,) for a (3, 4) cpu tensor" in hint_of(checkers.check_to_kernel_array, to_kernel_array_flattened)


# --------------------------------------------------------------------------
# 01.2 nearest-exact index: float64 scale, round(), nearest's rule


def exact_index_with_a_float64_scale(dst, in_size, out_size):
    scale = in_size / out_size  # float64: PyTorch's scale is float32
    centre = np.float32((dst + 0.5) * scale - 0.5)
    return min(int(math.floor(np.float32(max(centre, 0) + 0.5))), in_size - 1)


def exact_index_with_round(dst, in_size, out_size):
    scale = np.float32(in_size) / np.float32(out_size)
    centre = np.float32(np.float64(scale) * (dst + 0.5) - 0.5)
    return min(int(round(max(centre, 0))), in_size - 1)  # round() rounds halves to even


def exact_index_with_nearest_rule(dst, in_size, out_size):
    scale = np.float32(in_size) / np.float32(out_size)
    return min(int(math.floor(np.float32(dst) * scale)), in_size - 1)


def nearest_index_with_exact_rule(dst, in_size, out_size):
    scale = np.float32(in_size) / np.float32(out_size)
    centre = np.float32(np.float64(scale) * (dst + 0.5) - 0.5)
    return min(int(math.floor(np.float32(np.float64(max(centre, 0)) + 0.5))), in_size - 1)


def test_nearest_exact_index_with_a_float64_scale_is_told_the_float32_scale():
    message = hint_of(checkers.check_nearest_exact_index, exact_index_with_a_float64_scale)
    assert "scale = float32(in_size) / float32(out_size)" in message


def test_nearest_exact_index_with_round_is_told_to_floor_plus_a_half():
    message = hint_of(checkers.check_nearest_exact_index, exact_index_with_round)
    assert "not round()" in message


def test_nearest_exact_index_with_nearest_rule_is_told_so():
    message = hint_of(checkers.check_nearest_exact_index, exact_index_with_nearest_rule)
    assert "this is mode='nearest''s index" in message and "(dst + 0.5)" in message


def test_nearest_index_with_the_exact_rule_is_told_so():
    message = hint_of(checkers.check_nearest_index, nearest_index_with_exact_rule)
    assert "this is mode='nearest-exact''s index" in message and "floor(dst * scale)" in message


def test_the_index_hints_recipes_pass(capsys):
    """What the hints say to write passes."""
    checkers.check_nearest_index(lambda dst, i, o: min(
        int(math.floor(np.float32(dst) * (np.float32(i) / np.float32(o)))), i - 1))

    def exact(dst, in_size, out_size):
        scale = np.float32(in_size) / np.float32(out_size)
        centre = np.float32((dst + 0.5) * np.float64(scale) - 0.5)
        return min(int(math.floor(np.float32(max(centre, 0) + 0.5))), in_size - 1)

    checkers.check_nearest_exact_index(exact)
    assert capsys.readouterr().out.count("PASS") == 2


# --------------------------------------------------------------------------
# 01.3 the plane kernel: no guard, the output's size taken for the input's


@cuda.jit
def nearest_plane_without_guard(x, out):
    col, row = cuda.grid(2)
    out[row, col] = x[nearest_index(row, x.shape[0], out.shape[0]), nearest_index(col, x.shape[1], out.shape[1])]


@cuda.jit
def nearest_plane_with_sizes_swapped(x, out):
    col, row = cuda.grid(2)
    if row < out.shape[0] and col < out.shape[1]:
        out[row, col] = x[nearest_index(row, x.shape[0], out.shape[0]), nearest_index(col, x.shape[0], out.shape[0])]


@cuda.jit
def nearest_plane_reading_at_the_output_index(x, out):
    col, row = cuda.grid(2)
    if row < out.shape[0] and col < out.shape[1]:
        out[row, col] = x[row, col]


@simulator_only
def test_nearest_plane_kernel_reading_at_the_output_index_is_told_the_source_index():
    message = hint_of(checkers.check_nearest_plane_kernel, nearest_plane_reading_at_the_output_index)
    assert "the guard is right to let it through" in message and "source indices from nearest_index" in message
    assert "mirror" not in message


@simulator_only
def test_nearest_plane_kernel_without_guard_is_told_to_guard():
    message = hint_of(checkers.check_nearest_plane_kernel, nearest_plane_without_guard)
    assert "guard with `if row < out.shape[0] and col < out.shape[1]:`" in message


def test_nearest_plane_kernel_with_the_row_sizes_for_the_column_is_told_the_index_rule():
    message = hint_of(checkers.check_nearest_plane_kernel, nearest_plane_with_sizes_swapped)
    assert "nearest_index(col, x.shape[1], out.shape[1])" in message


# --------------------------------------------------------------------------
# 01.4 the 1-D kernel: no guard, unravelled with the input's width, the last element skipped


@cuda.jit
def nearest_without_guard(x, out, exact):
    i = cuda.grid(1)
    height, width = out.shape[1], out.shape[2]
    col, row, plane = i % width, (i // width) % height, i // (width * height)
    out[plane, row, col] = x[plane, nearest_index(row, x.shape[1], height), nearest_index(col, x.shape[2], width)]


@cuda.jit
def nearest_unravelled_with_the_input_width(x, out, exact):
    i = cuda.grid(1)
    if i < out.size:
        height, width = out.shape[1], out.shape[2]
        col, row, plane = i % x.shape[2], (i // x.shape[2]) % height, i // (width * height)
        out[plane, row, col] = x[plane, nearest_index(row, x.shape[1], height), nearest_index(col, x.shape[2], width)]


@cuda.jit
def nearest_skipping_the_last_element(x, out, exact):
    i = cuda.grid(1)
    if i < out.size - 1:  # one short
        height, width = out.shape[1], out.shape[2]
        col, row, plane = i % width, (i // width) % height, i // (width * height)
        out[plane, row, col] = x[plane, nearest_index(row, x.shape[1], height), nearest_index(col, x.shape[2], width)]


@cuda.jit
def nearest_always_exact(x, out, exact):
    i = cuda.grid(1)
    if i < out.size:
        height, width = out.shape[1], out.shape[2]
        col, row, plane = i % width, (i // width) % height, i // (width * height)
        out[plane, row, col] = x[plane, nearest_exact_index(row, x.shape[1], height),
                                 nearest_exact_index(col, x.shape[2], width)]


@cuda.jit
def nearest_reading_at_the_output_index(x, out, exact):
    i = cuda.grid(1)
    if i < out.size:
        height, width = out.shape[1], out.shape[2]
        col, row, plane = i % width, (i // width) % height, i // (width * height)
        out[plane, row, col] = x[plane, row, col]


@simulator_only
def test_nearest_kernel_reading_at_the_output_index_is_told_the_source_index():
    message = hint_of(checkers.check_nearest_kernel, nearest_reading_at_the_output_index)
    assert "the guard is right to let it through" in message and "source indices from the index function" in message


@simulator_only
def test_nearest_kernel_without_guard_is_told_to_guard():
    message = hint_of(checkers.check_nearest_kernel, nearest_without_guard)
    assert "guard with `if i < out.size:`" in message


def test_nearest_kernel_unravelling_with_the_input_width_is_told_how_to_unravel():
    message = hint_of(checkers.check_nearest_kernel, nearest_unravelled_with_the_input_width)
    assert "col = i % W" in message and "W = out.shape[2]" in message


def test_nearest_kernel_skipping_an_element_is_told_it_was_never_written():
    message = hint_of(checkers.check_nearest_kernel, nearest_skipping_the_last_element)
    assert "never written" in message and "every thread with i < out.size writes" in message


def test_nearest_kernel_always_exact_is_told_to_choose_the_index_function():
    message = hint_of(checkers.check_nearest_kernel, nearest_always_exact, exact=False)
    assert "nearest-exact's, not nearest's" in message and "`if exact:`" in message


# --------------------------------------------------------------------------
# 02.1 linear index: a float index, swapped weights, align_corners ignored


def _linear(align_corners_rule=True, swap_weights=False, numpy_floor=False):
    def student_linear_index(dst, in_size, out_size, align_corners):
        if align_corners and align_corners_rule:
            src = dst * (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
        else:
            src = max((dst + 0.5) * in_size / out_size - 0.5, 0.0)
        i0 = min(np.floor(src) if numpy_floor else int(math.floor(src)), in_size - 1)
        i1 = min(i0 + 1, in_size - 1)
        w1 = src - i0
        return (i0, i1, w1, 1.0 - w1) if swap_weights else (i0, i1, 1.0 - w1, w1)

    return student_linear_index


def test_linear_index_returning_a_float_index_is_told_to_make_it_an_int():
    message = hint_of(checkers.check_linear_index, _linear(numpy_floor=True))
    assert "an index must be an int" in message and "int(math.floor(...))" in message


def test_linear_index_with_swapped_weights_is_told_which_weight_is_whose():
    message = hint_of(checkers.check_linear_index, _linear(swap_weights=True))
    assert "w1 = src - i0 is the weight of i1" in message


def test_linear_index_ignoring_align_corners_is_told_the_align_corners_rule():
    message = hint_of(checkers.check_linear_index, _linear(align_corners_rule=False))
    assert "align_corners=True" in message and "src = dst * (in_size - 1) / (out_size - 1)" in message
    assert "(dst + 0.5)" not in message.split("Hint:")[1]  # not the other mode's rule


# --------------------------------------------------------------------------
# 02.2 bilinear forward: no guard, align_corners ignored, the weights of x used for y


@cuda.jit
def bilinear_without_guard(x, out, align_corners):
    i = cuda.grid(1)
    height, width = out.shape[1], out.shape[2]
    col, row, p = i % width, (i // width) % height, i // (width * height)
    y0, y1, wy0, wy1 = linear_index(row, x.shape[1], height, align_corners)
    x0, x1, wx0, wx1 = linear_index(col, x.shape[2], width, align_corners)
    out[p, row, col] = wy0 * (wx0 * x[p, y0, x0] + wx1 * x[p, y0, x1]) + wy1 * (wx0 * x[p, y1, x0] + wx1 * x[p, y1, x1])


@cuda.jit
def bilinear_ignoring_align_corners(x, out, align_corners):
    i = cuda.grid(1)
    if i < out.size:
        height, width = out.shape[1], out.shape[2]
        col, row, p = i % width, (i // width) % height, i // (width * height)
        y0, y1, wy0, wy1 = linear_index(row, x.shape[1], height, False)
        x0, x1, wx0, wx1 = linear_index(col, x.shape[2], width, False)
        out[p, row, col] = (wy0 * (wx0 * x[p, y0, x0] + wx1 * x[p, y0, x1])
                            + wy1 * (wx0 * x[p, y1, x0] + wx1 * x[p, y1, x1]))


@cuda.jit
def bilinear_with_crossed_weights(x, out, align_corners):
    i = cuda.grid(1)
    if i < out.size:
        height, width = out.shape[1], out.shape[2]
        col, row, p = i % width, (i // width) % height, i // (width * height)
        y0, y1, wy0, wy1 = linear_index(row, x.shape[1], height, align_corners)
        x0, x1, wx0, wx1 = linear_index(col, x.shape[2], width, align_corners)
        out[p, row, col] = (wx0 * (wy0 * x[p, y0, x0] + wy1 * x[p, y0, x1])
                            + wx1 * (wy0 * x[p, y1, x0] + wy1 * x[p, y1, x1]))


@cuda.jit
def bilinear_with_the_sizes_swapped(x, out, align_corners):
    i = cuda.grid(1)
    if i < out.size:
        height, width = out.shape[1], out.shape[2]
        col, row, p = i % width, (i // width) % height, i // (width * height)
        y0, y1, wy0, wy1 = linear_index(row, height, x.shape[1], align_corners)  # the output's size first
        x0, x1, wx0, wx1 = linear_index(col, width, x.shape[2], align_corners)
        out[p, row, col] = (wy0 * (wx0 * x[p, y0, x0] + wx1 * x[p, y0, x1])
                            + wy1 * (wx0 * x[p, y1, x0] + wx1 * x[p, y1, x1]))


@simulator_only
def test_bilinear_kernel_with_the_sizes_swapped_is_told_the_argument_order():
    message = hint_of(checkers.check_bilinear_kernel, bilinear_with_the_sizes_swapped)
    assert "the guard is right" in message and "array. linear_index(dst, in_size, out_size, align_corners) takes the input's size first" in message
    assert "linear_index(row, x.shape[1], out.shape[1], align_corners)" in message and "mirror" not in message


@simulator_only
def test_bilinear_kernel_without_guard_is_told_to_guard_on_out_size():
    message = hint_of(checkers.check_bilinear_kernel, bilinear_without_guard)
    assert "if i < out.size:" in message


def test_bilinear_kernel_ignoring_align_corners_is_told_to_pass_it_on():
    message = hint_of(checkers.check_bilinear_kernel, bilinear_ignoring_align_corners)
    assert "align_corners=False's" in message and "pass align_corners on to linear_index" in message


def test_bilinear_kernel_with_crossed_weights_is_told_which_weights_blend_what():
    message = hint_of(checkers.check_bilinear_kernel, bilinear_with_crossed_weights)
    assert "along the row with (wx0, wx1)" in message


# --------------------------------------------------------------------------
# 02.3 scatter: no guard, the weights left out


@cuda.jit
def scatter_without_guard(grad_out, grad_x, align_corners):
    i = cuda.grid(1)
    height, width = grad_out.shape[1], grad_out.shape[2]
    col, row, p = i % width, (i // width) % height, i // (width * height)
    y0, y1, wy0, wy1 = linear_index(row, grad_x.shape[1], height, align_corners)
    x0, x1, wx0, wx1 = linear_index(col, grad_x.shape[2], width, align_corners)
    g = grad_out[p, row, col]
    cuda.atomic.add(grad_x, (p, y0, x0), wy0 * wx0 * g)
    cuda.atomic.add(grad_x, (p, y0, x1), wy0 * wx1 * g)
    cuda.atomic.add(grad_x, (p, y1, x0), wy1 * wx0 * g)
    cuda.atomic.add(grad_x, (p, y1, x1), wy1 * wx1 * g)


@cuda.jit
def scatter_without_weights(grad_out, grad_x, align_corners):
    i = cuda.grid(1)
    if i < grad_out.size:
        height, width = grad_out.shape[1], grad_out.shape[2]
        col, row, p = i % width, (i // width) % height, i // (width * height)
        y0, y1, wy0, wy1 = linear_index(row, grad_x.shape[1], height, align_corners)
        x0, x1, wx0, wx1 = linear_index(col, grad_x.shape[2], width, align_corners)
        g = grad_out[p, row, col]
        cuda.atomic.add(grad_x, (p, y0, x0), g)
        cuda.atomic.add(grad_x, (p, y0, x1), g)
        cuda.atomic.add(grad_x, (p, y1, x0), g)
        cuda.atomic.add(grad_x, (p, y1, x1), g)


@simulator_only
def test_scatter_kernel_without_guard_is_told_to_guard_on_grad_out_size():
    message = hint_of(checkers.check_bilinear_scatter_kernel, scatter_without_guard)
    assert "if i < grad_out.size:" in message and "the guard is right" not in message


def test_scatter_kernel_without_weights_is_told_the_weights():
    message = hint_of(checkers.check_bilinear_scatter_kernel, scatter_without_weights)
    assert "(y0, x0) gets wy0 * wx0 * g" in message and "cuda.atomic.add(grad_x" not in message


# --------------------------------------------------------------------------
# 02.4 gather: atomics, no guard, only i0, i0 == i1 at the border


@cuda.jit
def gather_with_atomics(grad_out, grad_x, align_corners):
    i = cuda.grid(1)
    if i < grad_x.size:
        in_h, in_w = grad_x.shape[1], grad_x.shape[2]
        x, y, p = i % in_w, (i // in_w) % in_h, i // (in_w * in_h)
        for row in range(grad_out.shape[1]):
            y0, y1, wy0, wy1 = linear_index(row, in_h, grad_out.shape[1], align_corners)
            for col in range(grad_out.shape[2]):
                x0, x1, wx0, wx1 = linear_index(col, in_w, grad_out.shape[2], align_corners)
                wy = (wy0 if y0 == y else 0.0) + (wy1 if y1 == y else 0.0)
                wx = (wx0 if x0 == x else 0.0) + (wx1 if x1 == x else 0.0)
                cuda.atomic.add(grad_x, (p, y, x), wy * wx * grad_out[p, row, col])


@cuda.jit
def gather_without_guard(grad_out, grad_x, align_corners):
    i = cuda.grid(1)
    in_h, in_w = grad_x.shape[1], grad_x.shape[2]
    x, y, p = i % in_w, (i // in_w) % in_h, i // (in_w * in_h)
    total = 0.0
    for row in range(grad_out.shape[1]):
        y0, y1, wy0, wy1 = linear_index(row, in_h, grad_out.shape[1], align_corners)
        for col in range(grad_out.shape[2]):
            x0, x1, wx0, wx1 = linear_index(col, in_w, grad_out.shape[2], align_corners)
            wy = (wy0 if y0 == y else 0.0) + (wy1 if y1 == y else 0.0)
            wx = (wx0 if x0 == x else 0.0) + (wx1 if x1 == x else 0.0)
            total += wy * wx * grad_out[p, row, col]
    grad_x[p, y, x] = total


@cuda.jit
def gather_of_i0_only(grad_out, grad_x, align_corners):
    i = cuda.grid(1)
    if i < grad_x.size:
        in_h, in_w = grad_x.shape[1], grad_x.shape[2]
        x, y, p = i % in_w, (i // in_w) % in_h, i // (in_w * in_h)
        total = 0.0
        for row in range(grad_out.shape[1]):
            y0, y1, wy0, wy1 = linear_index(row, in_h, grad_out.shape[1], align_corners)
            for col in range(grad_out.shape[2]):
                x0, x1, wx0, wx1 = linear_index(col, in_w, grad_out.shape[2], align_corners)
                if y0 == y and x0 == x:
                    total += wy0 * wx0 * grad_out[p, row, col]
        grad_x[p, y, x] = total


@cuda.jit
def gather_with_elif(grad_out, grad_x, align_corners):
    i = cuda.grid(1)
    if i < grad_x.size:
        in_h, in_w = grad_x.shape[1], grad_x.shape[2]
        x, y, p = i % in_w, (i // in_w) % in_h, i // (in_w * in_h)
        total = 0.0
        for row in range(grad_out.shape[1]):
            y0, y1, wy0, wy1 = linear_index(row, in_h, grad_out.shape[1], align_corners)
            wy = 0.0
            if y0 == y:
                wy = wy0
            elif y1 == y:  # at the last row y0 == y1 == y, and wy1 is lost
                wy = wy1
            for col in range(grad_out.shape[2]):
                x0, x1, wx0, wx1 = linear_index(col, in_w, grad_out.shape[2], align_corners)
                wx = 0.0
                if x0 == x:
                    wx = wx0
                elif x1 == x:
                    wx = wx1
                total += wy * wx * grad_out[p, row, col]
        grad_x[p, y, x] = total


def test_gather_kernel_with_atomics_is_told_a_gather_needs_none():
    message = hint_of(checkers.check_bilinear_gather_kernel, gather_with_atomics)
    assert "asks for a gather" in message and "no atomics are needed" in message


@simulator_only
def test_gather_kernel_without_guard_is_told_to_guard_on_grad_x_size():
    message = hint_of(checkers.check_bilinear_gather_kernel, gather_without_guard)
    assert "if i < grad_x.size:" in message and "the guard is right" not in message


def test_gather_kernel_of_i0_only_is_told_to_take_i1_too():
    assert "whose i0 or i1 is this pixel" in hint_of(checkers.check_bilinear_gather_kernel, gather_of_i0_only)


@cuda.jit
def gather_looping_one_row_too_far(grad_out, grad_x, align_corners):
    i = cuda.grid(1)
    if i < grad_x.size:
        in_h, in_w = grad_x.shape[1], grad_x.shape[2]
        x, y, p = i % in_w, (i // in_w) % in_h, i // (in_w * in_h)
        total = 0.0
        for row in range(grad_out.shape[1] + 1):  # one row past grad_out
            y0, y1, wy0, wy1 = linear_index(row, in_h, grad_out.shape[1], align_corners)
            wy = (wy0 if y0 == y else 0.0) + (wy1 if y1 == y else 0.0)
            for col in range(grad_out.shape[2]):
                x0, x1, wx0, wx1 = linear_index(col, in_w, grad_out.shape[2], align_corners)
                wx = (wx0 if x0 == x else 0.0) + (wx1 if x1 == x else 0.0)
                total += wy * wx * grad_out[p, row, col]
        grad_x[p, y, x] = total


@simulator_only
def test_gather_kernel_looping_past_grad_out_is_told_its_loops_not_linear_index():
    message = hint_of(checkers.check_bilinear_gather_kernel, gather_looping_one_row_too_far)
    assert "keep its loops inside grad_out" in message and "reading_window(y, grad_x.shape[1]" in message
    assert "takes the input's size first" not in message


def test_gather_kernel_with_elif_is_told_both_weights_at_the_border():
    assert "sum of both weights, w0 + w1" in hint_of(checkers.check_bilinear_gather_kernel, gather_with_elif)


# --------------------------------------------------------------------------
# 02.5 BilinearFunction: not reshaped, float32, writing into grad_out


def _function(reshape=True, dtype=None, write_into_grad_out=False, cast_back=False, strided_launch=False):
    class StudentBilinear(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, size, align_corners):
            if strided_launch:
                hand_to_a_kernel(x)  # x.numpy() to a kernel, not made contiguous first
            n, c, h, w = x.shape
            ctx.save_for_backward(x)
            ctx.config = (size, align_corners)
            planes = x.detach().contiguous().reshape(n * c, h, w)
            if dtype is not None:
                planes = planes.to(dtype)
            out = F.interpolate(planes[None], size=size, mode="bilinear", align_corners=align_corners)[0]
            if cast_back:
                out = out.to(x.dtype)
            return out.reshape(n, c, *size) if reshape else out

        @staticmethod
        def backward(ctx, grad_out):
            (x,) = ctx.saved_tensors
            size, align_corners = ctx.config
            with torch.enable_grad():
                point = torch.zeros_like(x, dtype=grad_out.dtype, requires_grad=True)
                (gradient,) = torch.autograd.grad(
                    F.interpolate(point, size=size, mode="bilinear", align_corners=align_corners), point,
                    grad_out.detach())
            if write_into_grad_out:
                grad_out.zero_()  # e.g. a kernel that uses grad_out as scratch space
            return gradient, None, None

    return StudentBilinear


def test_bilinear_function_returning_planes_is_told_to_reshape():
    message = hint_of(checkers.check_bilinear_function, _function(reshape=False))
    assert "wrong shape" in message and "reshaped to (N, C, H', W')" in message


def test_bilinear_function_in_float32_is_told_to_keep_the_dtype():
    message = hint_of(checkers.check_bilinear_function, _function(dtype=torch.float32))
    assert "torch.float32" in message and "x's dtype" in message and "contiguous" not in message


def test_bilinear_function_writing_into_grad_out_is_told_not_to():
    message = hint_of(checkers.check_bilinear_function, _function(write_into_grad_out=True))
    assert "wrote into grad_out" in message and "must start at zero" not in message


def test_a_right_student_bilinear_function_passes_the_checks_of_values(capsys):
    # The lesson's (graded) checker also wants the kernels launched: tests/test_kernels_launched.py.
    plain_checkers.check_bilinear_function(_function())
    assert capsys.readouterr().out.startswith("PASS BilinearFunction")


@simulator_only
def test_bilinear_function_handing_a_kernel_a_strided_x_is_told_to_make_it_contiguous():
    message = hint_of(checkers.check_bilinear_function, _function(strided_launch=True))
    assert "every one non-contiguous" in message and ".detach().contiguous() in forward" in message


def test_bilinear_function_computing_in_float32_inside_is_told_by_gradcheck_to_keep_the_dtype():
    message = hint_of(checkers.check_bilinear_function, _function(dtype=torch.float32, cast_back=True))
    assert "gradcheck fails" in message and "no float32 copy" in message


# --------------------------------------------------------------------------
# The engine's generic hints: values never written, several known mistakes, the border


def _diagnose(got, variants=(), **kwargs):
    expected = np.arange(12, dtype=np.float32).reshape(3, 4)
    return hint_of(diagnose, expected, got, list(variants), what="a kernel", case="a 3x4 case",
                   hint="the generic hint", **kwargs)


def test_a_value_never_written_is_told_so():
    got = np.arange(12, dtype=np.float32).reshape(3, 4)
    got[2, 3] = np.nan
    message = _diagnose(got)
    assert "the value at index (2, 3) was never written (it is still NaN)" in message
    assert "every thread inside the array writes its element" in message and "generic" not in message
    assert "every thread with i < out.size" in _diagnose(got, unwritten_hint="every thread with i < out.size writes")


def test_a_result_matching_one_known_mistake_is_told_that_mistake():
    got = np.arange(12, dtype=np.float32).reshape(3, 4) + 1
    message = _diagnose(got, [(got.copy(), "the one mistake"), (got * 2, "another mistake")])
    assert message.endswith("Hint: the one mistake")


def test_a_result_matching_several_known_mistakes_lists_them_all():
    got = np.arange(12, dtype=np.float32).reshape(3, 4) + 1
    message = _diagnose(got, [(got.copy(), "the first mistake"), (got * 2, "not this one"),
                              (got.copy(), "the second mistake")])
    assert "match several known mistakes" in message
    assert "* the first mistake\n* the second mistake" in message and "not this one" not in message


def test_mismatches_only_at_the_border_are_told_the_border_hint():
    got = np.arange(12, dtype=np.float32).reshape(3, 4)
    got[0, 1] += 1
    on_border = lambda index: index[0] in (0, 2) or index[1] in (0, 3)  # noqa: E731
    assert "Hint: the border hint" in _diagnose(got, border=on_border, border_hint="the border hint")
    got[1, 1] += 1  # inside too
    assert "Hint: the generic hint" in _diagnose(got, border=on_border, border_hint="the border hint")


# --------------------------------------------------------------------------
# Precision and output-state mistakes the simulator alone would let through


@backend.per_element
def nearest_index_of_an_int_times_a_float32(dst, in_size, out_size):
    scale = np.float32(in_size) / np.float32(out_size)
    return min(int(math.floor(dst * scale)), in_size - 1)  # dst * scale is float64 when compiled


@simulator_only
def test_an_index_right_only_as_python_is_told_how_a_compiled_one_differs():
    message = hint_of(checkers.check_nearest_index, nearest_index_of_an_int_times_a_float32)
    assert "run as Python (as the simulator runs it) but" in message and "compiled, as a GPU runs it" in message
    assert "np.float32(dst) * scale" in message


@cuda.jit
def nearest_plane_in_integer_arithmetic(x, out):
    col, row = cuda.grid(2)
    if row < out.shape[0] and col < out.shape[1]:
        out[row, col] = x[min(row * x.shape[0] // out.shape[0], x.shape[0] - 1),
                          min(col * x.shape[1] // out.shape[1], x.shape[1] - 1)]


def test_a_nearest_kernel_in_integer_arithmetic_is_told_the_float32_index():
    message = hint_of(checkers.check_nearest_plane_kernel, nearest_plane_in_integer_arithmetic)
    assert "2x210 -> 1x400" in message and "PyTorch's float32 index math picks another source pixel" in message


def linear_index_dividing_by_zero(dst, in_size, out_size, align_corners):
    if align_corners:
        src = dst * (in_size - 1) / (out_size - 1)  # out_size 1: division by zero
    else:
        src = max((dst + 0.5) * in_size / out_size - 0.5, 0.0)
    i0 = min(int(math.floor(src)), in_size - 1)
    i1 = min(i0 + 1, in_size - 1)
    w1 = src - i0
    return i0, i1, 1.0 - w1, w1


def test_linear_index_dividing_by_zero_is_told_the_out_size_one_rule():
    message = hint_of(checkers.check_linear_index, linear_index_dividing_by_zero)
    assert "ZeroDivisionError" in message and "PyTorch takes the scale as 0 there" in message


@cuda.jit
def gather_adding_into_grad_x(grad_out, grad_x, align_corners):
    i = cuda.grid(1)
    if i < grad_x.size:
        in_h, in_w = grad_x.shape[1], grad_x.shape[2]
        x, y, p = i % in_w, (i // in_w) % in_h, i // (in_w * in_h)
        total = 0.0
        for row in range(grad_out.shape[1]):
            y0, y1, wy0, wy1 = linear_index(row, in_h, grad_out.shape[1], align_corners)
            for col in range(grad_out.shape[2]):
                x0, x1, wx0, wx1 = linear_index(col, in_w, grad_out.shape[2], align_corners)
                wy = (wy0 if y0 == y else 0.0) + (wy1 if y1 == y else 0.0)
                wx = (wx0 if x0 == x else 0.0) + (wx1 if x1 == x else 0.0)
                total += wy * wx * grad_out[p, row, col]
        grad_x[p, y, x] += total  # right only on a zeroed grad_x


@cuda.jit
def gather_summing_in_grad_x(grad_out, grad_x, align_corners):
    i = cuda.grid(1)
    if i < grad_x.size:
        in_h, in_w = grad_x.shape[1], grad_x.shape[2]
        x, y, p = i % in_w, (i // in_w) % in_h, i // (in_w * in_h)
        grad_x[p, y, x] = 0.0
        for row in range(grad_out.shape[1]):
            y0, y1, wy0, wy1 = linear_index(row, in_h, grad_out.shape[1], align_corners)
            for col in range(grad_out.shape[2]):
                x0, x1, wx0, wx1 = linear_index(col, in_w, grad_out.shape[2], align_corners)
                wy = (wy0 if y0 == y else 0.0) + (wy1 if y1 == y else 0.0)
                wx = (wx0 if x0 == x else 0.0) + (wx1 if x1 == x else 0.0)
                grad_x[p, y, x] += wy * wx * grad_out[p, row, col]  # a global load and store each time


def test_a_gather_adding_into_grad_x_is_told_grad_x_is_not_zeroed():
    message = hint_of(checkers.check_bilinear_gather_kernel, gather_adding_into_grad_x)
    assert "every element of grad_x is nan" in message and "not +=" in message


@simulator_only
def test_a_gather_summing_in_global_memory_is_told_to_sum_in_a_local():
    message = hint_of(checkers.check_bilinear_gather_kernel, gather_summing_in_grad_x)
    assert "each only by its own thread" in message and "sum into a local variable" in message
    assert "grid-stride" not in message


@cuda.jit(device=True)
def _add_to(grad_x, p, y, x, value):
    cuda.atomic.add(grad_x, (p, y, x), value)


@cuda.jit
def scatter_through_a_device_helper(grad_out, grad_x, align_corners):
    i = cuda.grid(1)
    if i < grad_out.size:
        height, width = grad_out.shape[1], grad_out.shape[2]
        col, row, p = i % width, (i // width) % height, i // (width * height)
        y0, y1, wy0, wy1 = linear_index(row, grad_x.shape[1], height, align_corners)
        x0, x1, wx0, wx1 = linear_index(col, grad_x.shape[2], width, align_corners)
        g = grad_out[p, row, col]
        _add_to(grad_x, p, y0, x0, wy0 * wx0 * g)
        _add_to(grad_x, p, y0, x1, wy0 * wx1 * g)
        _add_to(grad_x, p, y1, x0, wy1 * wx0 * g)
        _add_to(grad_x, p, y1, x1, wy1 * wx1 * g)


def test_a_scatter_whose_atomics_are_in_a_device_helper_passes(capsys):
    checkers.check_bilinear_scatter_kernel(scatter_through_a_device_helper)
    assert "PASS bilinear_scatter_kernel" in capsys.readouterr().out

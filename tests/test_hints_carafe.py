"""Hints that help, lesson 03 (CARAFE): for each hint of the lesson's
checkers that tests/test_hints.py, tests/test_wrong_answers.py and
tests/test_lesson_helpers_carafe.py do not already reach, a wrong answer a
student could write from the lesson text, and a check that the hint shown
names that answer's mistake (and not a neighbouring one)."""

from __future__ import annotations

import upsamplelib  # noqa: F401,I001  (first: it chooses the CUDA target before numba loads)
import pytest
import torch
import torch.nn.functional as F
from numba import cuda, float32
from test_hints import hand_to_a_kernel, hint_of, simulator_only

from upsamplelib import checkers
from upsamplelib.ops.carafe import carafe_reference

TILE = 8
MAX_RADIUS = 3
WINDOW = TILE + 2 * MAX_RADIUS

# The lesson's forward hints, and the variants diagnose() knows: a wrong answer must get its own, no other.
VARIANT_HINTS = ("renormalises the weights", "repeats the edge pixel", "reflects the map", "window is not centred",
                 "rows and columns of the window are swapped", "not c % group")


def _only(message, wanted):
    assert wanted in message, message
    assert [hint for hint in VARIANT_HINTS if hint in message] == ([wanted] if wanted in VARIANT_HINTS else []), message


# --- 03.1 kernel prediction


def _predict(finish):
    def predict_kernels(x, channel_compressor, content_encoder, scale, kernel_size, group):
        return finish(content_encoder(channel_compressor(x)), scale, kernel_size, group)

    return predict_kernels


def test_upsampling_the_logits_instead_of_shuffling_is_told_to_pixel_shuffle():
    def interpolated(logits, scale, kernel_size, group):  # (N, s*s*G*k*k, s*h, s*w): nothing folded
        up = F.interpolate(logits, scale_factor=scale)
        return F.softmax(up, dim=1)

    message = hint_of(checkers.check_predict_kernels, _predict(interpolated))
    assert "shape (1, 100, 10, 12)" in message and "F.pixel_shuffle(logits, scale) turns" in message


def test_predicted_kernels_as_an_array_are_told_to_return_a_tensor():
    def as_array(logits, scale, kernel_size, group):
        shuffled = F.pixel_shuffle(logits, scale)
        n, slots, height, width = shuffled.shape
        return F.softmax(shuffled.view(n, group, -1, height, width), dim=2).view(shuffled.shape).numpy()

    assert "returned ndarray; expected a torch.Tensor" in hint_of(checkers.check_predict_kernels, _predict(as_array))


def test_slot_major_channel_view_is_told_the_group_comes_first():
    def slots_outer(logits, scale, kernel_size, group):  # views channel t * G + g as (slot t, group g)
        shuffled = F.pixel_shuffle(logits, scale)
        n, slots, height, width = shuffled.shape
        return F.softmax(shuffled.view(n, kernel_size * kernel_size, group, height, width), dim=1).view(shuffled.shape)

    message = hint_of(checkers.check_predict_kernels, _predict(slots_outer))
    assert "group=2" in message and "channel g * k*k + t is slot t of group g" in message
    assert "softmax runs over the groups" not in message and "before the pixel shuffle" not in message


# --- 03.2 the padded kernel


@cuda.jit
def padded_minus_r(x_padded, masks, out, kernel_size, scale):
    i = cuda.grid(1)
    if i < out.size:
        width, height, channels = out.shape[3], out.shape[2], out.shape[1]
        X, Y = i % width, (i // width) % height
        c, n = (i // (width * height)) % channels, i // (width * height * channels)
        r = (kernel_size - 1) // 2
        total = out.dtype.type(0)
        for dy in range(kernel_size):
            for dx in range(kernel_size):  # the lesson's border formula, on a map already padded by r
                total += (masks[n, dy * kernel_size + dx, Y, X]
                          * x_padded[n, c, Y // scale - r + dy, X // scale - r + dx])
        out[n, c, Y, X] = total


@cuda.jit
def padded_plus_r(x_padded, masks, out, kernel_size, scale):
    i = cuda.grid(1)
    if i < out.size:
        width, height, channels = out.shape[3], out.shape[2], out.shape[1]
        X, Y = i % width, (i // width) % height
        c, n = (i // (width * height)) % channels, i // (width * height * channels)
        r = (kernel_size - 1) // 2
        total = out.dtype.type(0)
        for dy in range(kernel_size):
            for dx in range(kernel_size):  # shifts by the padding a second time
                total += (masks[n, dy * kernel_size + dx, Y, X]
                          * x_padded[n, c, Y // scale + r + dy, X // scale + r + dx])
        out[n, c, Y, X] = total


@cuda.jit
def padded_unguarded(x_padded, masks, out, kernel_size, scale):
    i = cuda.grid(1)
    width, height, channels = out.shape[3], out.shape[2], out.shape[1]
    X, Y = i % width, (i // width) % height
    c, n = (i // (width * height)) % channels, i // (width * height * channels)
    total = out.dtype.type(0)
    for dy in range(kernel_size):
        for dx in range(kernel_size):
            total += masks[n, dy * kernel_size + dx, Y, X] * x_padded[n, c, Y // scale + dy, X // scale + dx]
    out[n, c, Y, X] = total


def test_padded_kernel_subtracting_r_is_told_the_padding_shifts_already():
    message = hint_of(checkers.check_carafe_padded_kernel, padded_minus_r)
    _only(message, "no - r: the r rows and columns of padding already shift the window")


@simulator_only
def test_padded_kernel_reading_past_the_padding_is_told_the_rows_it_reads():
    message = hint_of(checkers.check_carafe_padded_kernel, padded_plus_r)
    assert "the guard is right to let it through" in message and "reads rows Y // scale + dy" in message
    assert "guard the thread" not in message and "mirror" not in message and "X_padded" not in message


@simulator_only
def test_padded_kernel_without_guard_is_told_to_guard():
    # Used to get only "x_padded has r rows and columns of zeros", which says nothing of the guard.
    message = hint_of(checkers.check_carafe_padded_kernel, padded_unguarded)
    assert "guard the thread with `if i < out.size:`" in message


# --- 03.3 the border kernel


@cuda.jit
def border_unguarded(x, masks, out, kernel_size, scale):
    i = cuda.grid(1)
    width, height, channels = out.shape[3], out.shape[2], out.shape[1]
    X, Y = i % width, (i // width) % height
    c, n = (i // (width * height)) % channels, i // (width * height * channels)
    r = (kernel_size - 1) // 2
    total = out.dtype.type(0)
    for dy in range(kernel_size):
        for dx in range(kernel_size):
            row, col = Y // scale - r + dy, X // scale - r + dx
            if 0 <= row < x.shape[2] and 0 <= col < x.shape[3]:
                total += masks[n, dy * kernel_size + dx, Y, X] * x[n, c, row, col]
    out[n, c, Y, X] = total


@cuda.jit
def border_uncentred(x, masks, out, kernel_size, scale):
    i = cuda.grid(1)
    if i < out.size:
        width, height, channels = out.shape[3], out.shape[2], out.shape[1]
        X, Y = i % width, (i // width) % height
        c, n = (i // (width * height)) % channels, i // (width * height * channels)
        total = out.dtype.type(0)
        for dy in range(kernel_size):
            for dx in range(kernel_size):
                row, col = Y // scale + dy, X // scale + dx  # the padded kernel's rows, without the padding
                if 0 <= row < x.shape[2] and 0 <= col < x.shape[3]:
                    total += masks[n, dy * kernel_size + dx, Y, X] * x[n, c, row, col]
        out[n, c, Y, X] = total


@cuda.jit
def border_low_res_masks(x, masks, out, kernel_size, scale):
    i = cuda.grid(1)
    if i < out.size:
        width, height, channels = out.shape[3], out.shape[2], out.shape[1]
        X, Y = i % width, (i // width) % height
        c, n = (i // (width * height)) % channels, i // (width * height * channels)
        r = (kernel_size - 1) // 2
        total = out.dtype.type(0)
        for dy in range(kernel_size):
            for dx in range(kernel_size):
                row, col = Y // scale - r + dy, X // scale - r + dx
                if 0 <= row < x.shape[2] and 0 <= col < x.shape[3]:  # masks read at the low-res pixel
                    total += masks[n, dy * kernel_size + dx, Y // scale, X // scale] * x[n, c, row, col]
        out[n, c, Y, X] = total


@simulator_only
def test_border_kernel_without_guard_is_told_to_guard():
    message = hint_of(checkers.check_carafe_border_kernel, border_unguarded)
    assert "guard the thread with `if i < out.size:`" in message
    assert "the guard is right to let it through" not in message


def test_border_kernel_with_an_uncentred_window_is_told_to_subtract_r():
    _only(hint_of(checkers.check_carafe_border_kernel, border_uncentred), "window is not centred")


def test_border_kernel_reading_masks_at_the_low_res_pixel_is_shown_the_masks_index():
    message = hint_of(checkers.check_carafe_border_kernel, border_low_res_masks)
    _only(message, "masks[n, dy * kernel_size + dx, Y, X]")


# --- 03.4 the group kernel


@cuda.jit
def group_kernels_of_group_zero(x, masks, out, kernel_size, scale, group):
    i = cuda.grid(1)
    if i < out.size:
        width, height, channels = out.shape[3], out.shape[2], out.shape[1]
        X, Y = i % width, (i // width) % height
        c, n = (i // (width * height)) % channels, i // (width * height * channels)
        r = (kernel_size - 1) // 2
        total = out.dtype.type(0)
        for dy in range(kernel_size):
            for dx in range(kernel_size):
                row, col = Y // scale - r + dy, X // scale - r + dx
                if 0 <= row < x.shape[2] and 0 <= col < x.shape[3]:  # every channel reads group 0's kernel
                    total += masks[n, dy * kernel_size + dx, Y, X] * x[n, c, row, col]
        out[n, c, Y, X] = total


def test_group_kernel_without_the_group_offset_is_told_the_mask_channel():
    message = hint_of(checkers.check_carafe_group_kernel, group_kernels_of_group_zero)
    _only(message, "reads mask channel g * kernel_size**2 + t for slot t")


# --- 03.5 the tiled kernel


@cuda.jit
def tiled_without_sync(x, masks, out, kernel_size, scale, group):
    tile = cuda.shared.array((WINDOW, WINDOW), float32)
    channels, height, width = out.shape[1], out.shape[2], out.shape[3]
    n, c = cuda.blockIdx.z // channels, cuda.blockIdx.z % channels
    Y0, X0 = cuda.blockIdx.y * TILE, cuda.blockIdx.x * TILE
    r = (kernel_size - 1) // 2
    rows = (Y0 + TILE - 1) // scale - Y0 // scale + 1 + 2 * r
    cols = (X0 + TILE - 1) // scale - X0 // scale + 1 + 2 * r
    for j in range(cuda.threadIdx.y * TILE + cuda.threadIdx.x, rows * cols, TILE * TILE):
        row, col = Y0 // scale - r + j // cols, X0 // scale - r + j % cols
        value = float32(0)
        if 0 <= row < x.shape[2] and 0 <= col < x.shape[3]:
            value = x[n, c, row, col]
        tile[j // cols, j % cols] = value
    Y, X = Y0 + cuda.threadIdx.y, X0 + cuda.threadIdx.x
    if Y < height and X < width:
        g = c // (channels // group)
        total = float32(0)
        for dy in range(kernel_size):
            for dx in range(kernel_size):
                total += (masks[n, (g * kernel_size + dy) * kernel_size + dx, Y, X]
                          * tile[Y // scale - Y0 // scale + dy, X // scale - X0 // scale + dx])
        out[n, c, Y, X] = total


def _tiled(tile_row, tile_col, load_inside_only=True):
    """The lesson's tiled kernel with the tile index of the sum made by
    ``tile_row(Y, Y0, scale, dy)`` (and ``tile_col``), loading x only inside
    the map or not. (The checker's PTX compile cannot rebuild a closure; the
    wrong answers made here fail on their values first.)"""
    tile_row, tile_col = cuda.jit(device=True)(tile_row), cuda.jit(device=True)(tile_col)

    @cuda.jit
    def kernel(x, masks, out, kernel_size, scale, group):
        tile = cuda.shared.array((WINDOW, WINDOW), float32)
        channels, height, width = out.shape[1], out.shape[2], out.shape[3]
        n, c = cuda.blockIdx.z // channels, cuda.blockIdx.z % channels
        Y0, X0 = cuda.blockIdx.y * TILE, cuda.blockIdx.x * TILE
        r = (kernel_size - 1) // 2
        rows = (Y0 + TILE - 1) // scale - Y0 // scale + 1 + 2 * r
        cols = (X0 + TILE - 1) // scale - X0 // scale + 1 + 2 * r
        for j in range(cuda.threadIdx.y * TILE + cuda.threadIdx.x, rows * cols, TILE * TILE):
            row, col = Y0 // scale - r + j // cols, X0 // scale - r + j % cols
            value = float32(0)
            if not load_inside_only or (0 <= row < x.shape[2] and 0 <= col < x.shape[3]):
                value = x[n, c, row, col]
            tile[j // cols, j % cols] = value
        cuda.syncthreads()
        Y, X = Y0 + cuda.threadIdx.y, X0 + cuda.threadIdx.x
        if Y < height and X < width:
            g = c // (channels // group)
            total = float32(0)
            for dy in range(kernel_size):
                for dx in range(kernel_size):
                    total += (masks[n, (g * kernel_size + dy) * kernel_size + dx, Y, X]
                              * tile[tile_row(Y, Y0, scale, dy), tile_col(X, X0, scale, dx)])
            out[n, c, Y, X] = total

    return kernel


def _global_row(Y, Y0, scale, d):  # the low-res row itself, not its place in the block's tile
    return Y // scale + d


def _row_in_tile(Y, Y0, scale, d):
    return Y // scale - Y0 // scale + d


def _row_from_the_output(Y, Y0, scale, d):  # subtracts the block's first output row, not its low-res row
    return (Y - Y0) // scale + d


def test_tiled_kernel_without_syncthreads_is_told_to_call_it():
    message = hint_of(checkers.check_carafe_tiled_kernel, tiled_without_sync, TILE, MAX_RADIUS)
    assert "never calls cuda.syncthreads()" in message and "before the threads that load it" in message


def test_shared_array_shaped_by_an_argument_is_reported_once():
    @cuda.jit
    def shaped_by_input(x, masks, out, kernel_size, scale, group):
        tile = cuda.shared.array((x.shape[2] + 2, TILE), float32)
        cuda.syncthreads()
        tile[0, 0] = 0

    problems = checkers.shared_memory_problems(shaped_by_input)
    assert problems == [
        "the shape of the shared array uses `x.shape[2]`, which is only known at run time; on a GPU the shape must "
        "be made of module-level integer constants."], problems


@simulator_only
def test_tiled_kernel_indexing_the_tile_with_the_global_row_is_told_the_tile_row():
    # Right in the first block, where the tile starts at row 0; past the tile further on.
    message = hint_of(checkers.check_carafe_tiled_kernel, _tiled(_global_row, _global_row), TILE, MAX_RADIUS)
    assert "output Y reads tile row Y // scale - Y0 // scale + dy" in message or \
        "tile[Y // scale - Y0 // scale + dy" in message, message
    assert "must help load the tile" not in message


@simulator_only
def test_tiled_kernel_loading_x_without_bounds_is_told_to_store_zeros():
    kernel = _tiled(_row_in_tile, _row_in_tile, load_inside_only=False)
    message = hint_of(checkers.check_carafe_tiled_kernel, kernel, TILE, MAX_RADIUS)
    assert "out of bounds" in message and ("axis 2" in message or "axis 3" in message), message
    assert "read x only where 0 <= row < x.shape[2] and 0 <= col < x.shape[3], and store 0 elsewhere" in message


SHORT_WINDOW = TILE + MAX_RADIUS  # the radius on one side only


@cuda.jit
def tiled_too_small(x, masks, out, kernel_size, scale, group):
    tile = cuda.shared.array((SHORT_WINDOW, SHORT_WINDOW), float32)
    channels, height, width = out.shape[1], out.shape[2], out.shape[3]
    n, c = cuda.blockIdx.z // channels, cuda.blockIdx.z % channels
    Y0, X0 = cuda.blockIdx.y * TILE, cuda.blockIdx.x * TILE
    r = (kernel_size - 1) // 2
    rows = (Y0 + TILE - 1) // scale - Y0 // scale + 1 + 2 * r
    cols = (X0 + TILE - 1) // scale - X0 // scale + 1 + 2 * r
    for j in range(cuda.threadIdx.y * TILE + cuda.threadIdx.x, rows * cols, TILE * TILE):
        row, col = Y0 // scale - r + j // cols, X0 // scale - r + j % cols
        value = float32(0)
        if 0 <= row < x.shape[2] and 0 <= col < x.shape[3]:
            value = x[n, c, row, col]
        tile[j // cols, j % cols] = value
    cuda.syncthreads()
    Y, X = Y0 + cuda.threadIdx.y, X0 + cuda.threadIdx.x
    if Y < height and X < width:
        g = c // (channels // group)
        total = float32(0)
        for dy in range(kernel_size):
            for dx in range(kernel_size):
                total += (masks[n, (g * kernel_size + dy) * kernel_size + dx, Y, X]
                          * tile[Y // scale - Y0 // scale + dy, X // scale - X0 // scale + dx])
        out[n, c, Y, X] = total


@simulator_only
def test_tiled_kernel_with_a_tile_too_small_is_told_its_size():
    # Right while the window fits (scale 2, 3); at scale 1 with radius 3 the tile needs 14 rows.
    message = hint_of(checkers.check_carafe_tiled_kernel, tiled_too_small, TILE, MAX_RADIUS)
    assert f"axis 0 with size {SHORT_WINDOW}" in message or f"axis 1 with size {SHORT_WINDOW}" in message, message
    assert "(TILE + 2 * MAX_RADIUS) square" in message


def test_tiled_kernel_with_a_wrong_tile_offset_is_shown_the_tile_index_not_the_loading():
    kernel = _tiled(_row_from_the_output, _row_from_the_output)
    message = hint_of(checkers.check_carafe_tiled_kernel, kernel, TILE, MAX_RADIUS)
    assert "tile[Y // scale - Y0 // scale + dy, X // scale - X0 // scale + dx]" in message
    assert "must help load the tile" not in message


# --- 03.6 / 03.7 the backward kernels


@cuda.jit
def grad_x_without_anchor_bounds(grad_out, masks, grad_x, kernel_size, scale, group):
    i = cuda.grid(1)
    if i < grad_x.size:
        width, height, channels = grad_x.shape[3], grad_x.shape[2], grad_x.shape[1]
        col, row = i % width, (i // width) % height
        c, n = (i // (width * height)) % channels, i // (width * height * channels)
        r = (kernel_size - 1) // 2
        g = c // (channels // group)
        total = grad_x.dtype.type(0)
        for dy in range(kernel_size):
            for dx in range(kernel_size):  # no test that the anchor is inside the map
                anchor_row, anchor_col = row - dy + r, col - dx + r
                slot = (g * kernel_size + dy) * kernel_size + dx
                for Y in range(anchor_row * scale, anchor_row * scale + scale):
                    for X in range(anchor_col * scale, anchor_col * scale + scale):
                        total += masks[n, slot, Y, X] * grad_out[n, c, Y, X]
        grad_x[n, c, row, col] = total


@cuda.jit
def grad_x_unguarded(grad_out, masks, grad_x, kernel_size, scale, group):
    i = cuda.grid(1)
    width, height, channels = grad_x.shape[3], grad_x.shape[2], grad_x.shape[1]
    col, row = i % width, (i // width) % height
    c, n = (i // (width * height)) % channels, i // (width * height * channels)
    r = (kernel_size - 1) // 2
    g = c // (channels // group)
    total = grad_x.dtype.type(0)
    for dy in range(kernel_size):
        for dx in range(kernel_size):
            anchor_row, anchor_col = row - dy + r, col - dx + r
            if 0 <= anchor_row < grad_x.shape[2] and 0 <= anchor_col < grad_x.shape[3]:
                slot = (g * kernel_size + dy) * kernel_size + dx
                for Y in range(anchor_row * scale, anchor_row * scale + scale):
                    for X in range(anchor_col * scale, anchor_col * scale + scale):
                        total += masks[n, slot, Y, X] * grad_out[n, c, Y, X]
    grad_x[n, c, row, col] = total


@cuda.jit
def grad_masks_without_slot_bounds(grad_out, x, grad_masks, kernel_size, scale, group):
    i = cuda.grid(1)
    if i < grad_masks.size:
        width, height, slots = grad_masks.shape[3], grad_masks.shape[2], grad_masks.shape[1]
        X, Y = i % width, (i // width) % height
        slot, n = (i // (width * height)) % slots, i // (width * height * slots)
        area = kernel_size * kernel_size
        r = (kernel_size - 1) // 2
        g, t = slot // area, slot % area
        row, col = Y // scale - r + t // kernel_size, X // scale - r + t % kernel_size
        group_channels = x.shape[1] // group
        total = grad_masks.dtype.type(0)
        for c in range(g * group_channels, (g + 1) * group_channels):  # no test that (row, col) is inside x
            total += grad_out[n, c, Y, X] * x[n, c, row, col]
        grad_masks[n, slot, Y, X] = total


@cuda.jit
def grad_masks_unguarded(grad_out, x, grad_masks, kernel_size, scale, group):
    i = cuda.grid(1)
    width, height, slots = grad_masks.shape[3], grad_masks.shape[2], grad_masks.shape[1]
    X, Y = i % width, (i // width) % height
    slot, n = (i // (width * height)) % slots, i // (width * height * slots)
    area = kernel_size * kernel_size
    r = (kernel_size - 1) // 2
    g, t = slot // area, slot % area
    row, col = Y // scale - r + t // kernel_size, X // scale - r + t % kernel_size
    group_channels = x.shape[1] // group
    total = grad_masks.dtype.type(0)
    if 0 <= row < x.shape[2] and 0 <= col < x.shape[3]:
        for c in range(g * group_channels, (g + 1) * group_channels):
            total += grad_out[n, c, Y, X] * x[n, c, row, col]
    grad_masks[n, slot, Y, X] = total


@cuda.jit
def grad_masks_outside_slots_unwritten(grad_out, x, grad_masks, kernel_size, scale, group):
    i = cuda.grid(1)
    if i < grad_masks.size:
        width, height, slots = grad_masks.shape[3], grad_masks.shape[2], grad_masks.shape[1]
        X, Y = i % width, (i // width) % height
        slot, n = (i // (width * height)) % slots, i // (width * height * slots)
        area = kernel_size * kernel_size
        r = (kernel_size - 1) // 2
        g, t = slot // area, slot % area
        row, col = Y // scale - r + t // kernel_size, X // scale - r + t % kernel_size
        group_channels = x.shape[1] // group
        if 0 <= row < x.shape[2] and 0 <= col < x.shape[3]:  # the slots outside keep whatever was there
            total = grad_masks.dtype.type(0)
            for c in range(g * group_channels, (g + 1) * group_channels):
                total += grad_out[n, c, Y, X] * x[n, c, row, col]
            grad_masks[n, slot, Y, X] = total


@simulator_only
def test_grad_x_kernel_reading_past_the_map_is_told_to_skip_outside_anchors():
    # Used to get lesson 00's "a mirror of col is width - 1 - col" (no index_hint was passed).
    message = hint_of(checkers.check_carafe_grad_x_kernel, grad_x_without_anchor_bounds)
    assert "the guard is right to let it through" in message
    assert "Skip the anchors (row - dy + r, col - dx + r) outside 0..h-1, 0..w-1" in message
    assert "mirror" not in message and "guard the thread" not in message


@simulator_only
def test_grad_x_kernel_without_guard_is_told_to_guard():
    message = hint_of(checkers.check_carafe_grad_x_kernel, grad_x_unguarded)
    assert "guard the thread with `if i < grad_x.size:`" in message


@simulator_only
def test_grad_masks_kernel_reading_past_the_map_is_told_to_check_the_slot():
    message = hint_of(checkers.check_carafe_grad_masks_kernel, grad_masks_without_slot_bounds)
    assert "Slot t reads row Y // scale - r + t // kernel_size" in message and "mirror" not in message


@simulator_only
def test_grad_masks_kernel_without_guard_is_told_to_guard():
    # Used to get only "slot t reads row ...: check both are inside x", which says nothing of the guard.
    message = hint_of(checkers.check_carafe_grad_masks_kernel, grad_masks_unguarded)
    assert "guard the thread with `if i < grad_masks.size:`" in message


def test_grad_masks_kernel_leaving_outside_slots_unwritten_is_told_they_are_zero():
    message = hint_of(checkers.check_carafe_grad_masks_kernel, grad_masks_outside_slots_unwritten)
    assert "got nan" in message and "and 0 if slot t's pixel is outside the map" in message


# --- 03.8 the autograd Function


def _forward(x, masks, kernel_size, scale, group, threads=None):
    x, masks = x.detach().contiguous(), masks.detach().contiguous()
    n, c, h, w = x.shape
    out = x.new_zeros((n, c, scale * h, scale * w))
    out.copy_(carafe_reference(x, masks, kernel_size, scale, group) if threads is None else out)
    if threads is not None:  # only the first `threads` outputs computed, as by a launch sized for x
        flat = carafe_reference(x, masks, kernel_size, scale, group).reshape(-1)
        out.view(-1)[:threads] = flat[:threads]
    return out


def _backward(x, masks, grad_out, kernel_size, scale, group):
    with torch.enable_grad():
        x, masks = x.detach().requires_grad_(), masks.detach().requires_grad_()
        out = carafe_reference(x, masks, kernel_size, scale, group)
        return torch.autograd.grad(out, (x, masks), grad_out)


def _function(forward, base=torch.autograd.Function):
    class CarafeFunction(base):
        @staticmethod
        def forward(ctx, x, masks, kernel_size, scale, group):
            ctx.save_for_backward(x, masks)
            ctx.config = (kernel_size, scale, group)
            return forward(ctx, x, masks, kernel_size, scale, group)

        @staticmethod
        def backward(ctx, grad_out):
            x, masks = ctx.saved_tensors
            return (*_backward(x, masks, grad_out, *ctx.config), None, None, None)

    return CarafeFunction


def test_function_not_subclassing_autograd_function_is_told_to_subclass_it():
    class CarafeFunction:  # forgot torch.autograd.Function; called .apply in the notebook
        @staticmethod
        def apply(x, masks, kernel_size, scale, group):
            return _forward(x, masks, kernel_size, scale, group)

    message = hint_of(checkers.check_carafe_function, CarafeFunction)
    assert "is not a torch.autograd.Function" in message and "class CarafeFunction(torch.autograd.Function)" in message


def test_function_returning_float32_for_float64_is_told_the_dtype():
    def float32_out(ctx, x, masks, kernel_size, scale, group):
        return _forward(x, masks, kernel_size, scale, group).float()

    message = hint_of(checkers.check_carafe_function, _function(float32_out))
    assert "of dtype torch.float32" in message and "expected a tensor of the inputs' dtype torch.float64" in message


def test_function_launching_one_thread_per_input_is_told_one_per_output():
    def sized_for_x(ctx, x, masks, kernel_size, scale, group):
        return _forward(x, masks, kernel_size, scale, group, threads=x.numel())

    message = hint_of(checkers.check_carafe_function, _function(sized_for_x))
    assert "forward, x (1, 4, 3, 4)" in message and "launch_config(out.numel(), 128), not x.numel()" in message


def test_function_with_a_wrong_group_per_channel_is_not_told_about_the_thread_count():
    # A 03.4 kernel with g = c % group: channels 0 and 3 of the first case are right (and channel 0 is all the
    # first x.numel() outputs), channels 1 and 2 use the other group's masks.
    def wrong_group(ctx, x, masks, kernel_size, scale, group):
        out = _forward(x, masks, kernel_size, scale, group)
        area = kernel_size * kernel_size
        swapped = torch.cat([masks[:, area:], masks[:, :area]], dim=1) if group == 2 else masks
        out[:, 1:3] = _forward(x, swapped, kernel_size, scale, group)[:, 1:3]
        return out

    message = hint_of(checkers.check_carafe_function, _function(wrong_group))
    assert "forward, x (1, 4, 3, 4)" in message and "x.numel()" not in message


def test_function_with_wrong_values_everywhere_is_not_told_about_the_thread_count():
    def doubled(ctx, x, masks, kernel_size, scale, group):
        return 2 * _forward(x, masks, kernel_size, scale, group)

    message = hint_of(checkers.check_carafe_function, _function(doubled))
    assert "forward, x (1, 4, 3, 4)" in message and "x.numel()" not in message


def test_function_with_a_non_differentiable_output_is_told_so():
    def marked(ctx, x, masks, kernel_size, scale, group):
        out = _forward(x, masks, kernel_size, scale, group)
        ctx.mark_non_differentiable(out)
        return out

    message = hint_of(checkers.check_carafe_function, _function(marked))
    assert "does not require grad" in message and "ctx.mark_non_differentiable" in message
    assert "call it as CarafeFunction.apply" not in message  # the checker already does


def test_function_computing_in_float32_is_told_to_keep_the_dtype():
    # Right to float32 precision: passed the value checks, then failed gradcheck with "make the tensors contiguous".
    def in_float32(ctx, x, masks, kernel_size, scale, group):
        return _forward(x.float(), masks.float(), kernel_size, scale, group).to(x.dtype)

    message = hint_of(checkers.check_carafe_function, _function(in_float32))
    assert "forward, x (1, 4, 3, 4)" in message and "right only to float32 precision" in message
    assert "no .float()" in message and "contiguous" not in message


@simulator_only
@pytest.mark.parametrize("strided", ["x", "grad_out"])
def test_function_handing_a_kernel_a_strided_array_is_told_to_make_it_contiguous(strided):
    class CarafeFunction(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, masks, kernel_size, scale, group):
            hand_to_a_kernel(x if strided == "x" else x.contiguous())
            ctx.save_for_backward(x, masks)
            ctx.config = (kernel_size, scale, group)
            return _forward(x, masks, kernel_size, scale, group)

        @staticmethod
        def backward(ctx, grad_out):
            hand_to_a_kernel(grad_out if strided == "grad_out" else grad_out.contiguous())
            x, masks = ctx.saved_tensors
            return (*_backward(x, masks, grad_out, *ctx.config), None, None, None)

    message = hint_of(checkers.check_carafe_function, CarafeFunction)
    assert "every one non-contiguous" in message and "ValueError" in message
    assert "grad_out.contiguous() in backward" in message

"""A corpus of plausible wrong student answers: every one must be caught by
its checker, with a message that names the actual mistake.

The kinds the issue lists (a float index, a scatter only partly atomic, a
kernel right only for batch size 1, a grid-stride loop doing the work
twice, a softmax whose running maximum starts at 0, host round trips in a
zero-copy exercise), one per rule the checkers enforce beyond the values
(a GPU compile, writes exactly once, atomics, extreme logits, the loads a
fast kernel may make), and the wrong answers of test_checkers.py. Correct
answers of the rules' exercises pass (the solutions notebooks run all of
them under nbval too).

The kernels sit at module level, as in a notebook: the checkers read their
source to compile them for a GPU.
"""

import math
import re
import sys

import numba
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from numba import cuda, float32

from upsamplelib import backend as ul_backend
from upsamplelib import checkers
from upsamplelib.backend import per_element
from upsamplelib.checkers import ptx

pytestmark = [
    pytest.mark.skipif(not ul_backend.SIMULATOR, reason="the checkers' counted launches run in the simulator"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning"),
]

needs_ptx = pytest.mark.skipif(not ptx.compiler_available(), reason="no PTX compiler (numba-cuda not installed)")


# --------------------------------------------------------------------------
# Helpers, as the lessons define them
# --------------------------------------------------------------------------


@per_element
def linear_index(dst, in_size, out_size, align_corners):
    if align_corners:
        scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
        src = dst * scale
    else:
        scale = in_size / out_size
        src = max((dst + 0.5) * scale - 0.5, 0.0)
    i0 = min(int(math.floor(src)), in_size - 1)
    i1 = min(i0 + 1, in_size - 1)
    w1 = min(src - i0, 1.0)
    return i0, i1, 1.0 - w1, w1


@per_element
def unravel4(i, channels, height, width):
    x = i % width
    rest = i // width
    y = rest % height
    rest = rest // height
    return rest // channels, rest % channels, y, x


@per_element
def window_neighbour(t, Y, X, kernel_size, scale):
    radius = (kernel_size - 1) // 2
    return Y // scale + t // kernel_size - radius, X // scale + t % kernel_size - radius


@per_element
def inside(feature, row, col):
    return 0 <= row < feature.shape[2] and 0 <= col < feature.shape[3]


@per_element
def read_or_zero(feature, n, c, row, col):
    if inside(feature, row, col):
        return feature[n, c, row, col]
    return 0.0


def plain_twice(value):  # no decorator: the GPU cannot call it
    return 2 * value


TILE = 8
MAX_RADIUS = 3
WINDOW = TILE + 2 * MAX_RADIUS
THREADS = 32
MAX_AREA = 49


# --------------------------------------------------------------------------
# 00 the execution model
# --------------------------------------------------------------------------


@cuda.jit
def scale_unguarded(x, out, factor):
    i = cuda.grid(1)
    out[i] = x[i] * factor


@cuda.jit
def scale_off_by_one(x, out, factor):
    i = cuda.grid(1)
    if 0 < i < out.size:
        out[i] = x[i] * factor


@cuda.jit
def scale_float_index(x, out, factor):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = x[math.floor(i / 1)] * factor


@cuda.jit
def scale_plain_helper(x, out, factor):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = plain_twice(x[i]) * factor / 2


@cuda.jit
def scale_builds_a_list(x, out, factor):
    i = cuda.grid(1)
    if i < out.size:
        values = [x[i]]
        out[i] = values[0] * factor


@cuda.jit
def scale_every_thread_writes_twice(x, out, factor):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = x[i] * factor
        out[i] = x[i] * factor


@cuda.jit
def grid_stride_by_block(x, out, factor):
    for i in range(cuda.grid(1), out.size, cuda.blockDim.x):
        out[i] = x[i] * factor


@cuda.jit
def grid_stride_from_zero(x, out, factor):
    for i in range(cuda.threadIdx.x, out.size, cuda.blockDim.x):
        out[i] = x[i] * factor


@cuda.jit
def grid_stride_correct(x, out, factor):
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        out[i] = x[i] * factor


@cuda.jit
def flip_rows_and_columns_swapped(image, out):
    row, col = cuda.grid(2)
    if row < out.shape[0] and col < out.shape[1]:
        out[row, col] = image[row, out.shape[1] - 1 - col]


def to_kernel_array_round_trip(tensor):
    return tensor.detach().cpu().numpy()


def to_kernel_array_numpy_everywhere(tensor):
    return tensor.detach().numpy()


def to_kernel_array_copy_to_device(tensor):
    tensor = tensor.detach()
    if tensor.is_cuda:
        return cuda.to_device(tensor.cpu().numpy())
    return tensor.numpy()


def to_kernel_array_correct(tensor):
    tensor = tensor.detach()
    if tensor.is_cuda:
        return cuda.as_cuda_array(tensor)
    return tensor.numpy()


# --------------------------------------------------------------------------
# 01 nearest
# --------------------------------------------------------------------------


@per_element
def nearest_index(dst, in_size, out_size):
    scale = np.float32(in_size) / np.float32(out_size)
    src = int(math.floor(np.float32(dst) * scale))
    return min(src, in_size - 1)


@cuda.jit
def nearest_first_plane_only(x, out, exact):
    i = cuda.grid(1)
    if i < out.size:
        height, width = out.shape[1], out.shape[2]
        col = i % width
        row = (i // width) % height
        plane = i // (width * height)
        out[plane, row, col] = x[0, nearest_index(row, x.shape[1], height), nearest_index(col, x.shape[2], width)]


@cuda.jit
def nearest_float_index(x, out, exact):
    i = cuda.grid(1)
    if i < out.size:
        height, width = out.shape[1], out.shape[2]
        col = i % width
        row = (i // width) % height
        plane = i // (width * height)
        # float32 as PyTorch (so the values are right), but math.floor's float result used as an index
        src_row = min(math.floor(np.float32(row) * (np.float32(x.shape[1]) / np.float32(height))), x.shape[1] - 1)
        out[plane, row, col] = x[plane, src_row, nearest_index(col, x.shape[2], width)]


# --------------------------------------------------------------------------
# 02 bilinear
# --------------------------------------------------------------------------


@cuda.jit
def scatter_partly_atomic(grad_out, grad_x, align_corners):
    i = cuda.grid(1)
    if i < grad_out.size:
        height, width = grad_out.shape[1], grad_out.shape[2]
        col = i % width
        row = (i // width) % height
        p = i // (width * height)
        y0, y1, wy0, wy1 = linear_index(row, grad_x.shape[1], height, align_corners)
        x0, x1, wx0, wx1 = linear_index(col, grad_x.shape[2], width, align_corners)
        g = grad_out[p, row, col]
        cuda.atomic.add(grad_x, (p, y0, x0), wy0 * wx0 * g)
        cuda.atomic.add(grad_x, (p, y0, x1), wy0 * wx1 * g)
        cuda.atomic.add(grad_x, (p, y1, x0), wy1 * wx0 * g)
        grad_x[p, y1, x1] += wy1 * wx1 * g


@cuda.jit
def scatter_correct(grad_out, grad_x, align_corners):
    i = cuda.grid(1)
    if i < grad_out.size:
        height, width = grad_out.shape[1], grad_out.shape[2]
        col = i % width
        row = (i // width) % height
        p = i // (width * height)
        y0, y1, wy0, wy1 = linear_index(row, grad_x.shape[1], height, align_corners)
        x0, x1, wx0, wx1 = linear_index(col, grad_x.shape[2], width, align_corners)
        g = grad_out[p, row, col]
        cuda.atomic.add(grad_x, (p, y0, x0), wy0 * wx0 * g)
        cuda.atomic.add(grad_x, (p, y0, x1), wy0 * wx1 * g)
        cuda.atomic.add(grad_x, (p, y1, x0), wy1 * wx0 * g)
        cuda.atomic.add(grad_x, (p, y1, x1), wy1 * wx1 * g)


@cuda.jit
def bilinear_first_plane_only(x, out, align_corners):
    i = cuda.grid(1)
    if i < out.size:
        height, width = out.shape[1], out.shape[2]
        col = i % width
        row = (i // width) % height
        p = i // (width * height)
        y0, y1, wy0, wy1 = linear_index(row, x.shape[1], height, align_corners)
        x0, x1, wx0, wx1 = linear_index(col, x.shape[2], width, align_corners)
        top = wx0 * x[0, y0, x0] + wx1 * x[0, y0, x1]
        bottom = wx0 * x[0, y1, x0] + wx1 * x[0, y1, x1]
        out[p, row, col] = wy0 * top + wy1 * bottom


# --------------------------------------------------------------------------
# 03 CARAFE
# --------------------------------------------------------------------------


@cuda.jit
def carafe_border_float_index(x, masks, out, kernel_size, scale):
    i = cuda.grid(1)
    if i < out.size:
        n, c, Y, X = unravel4(i, out.shape[1], out.shape[2], out.shape[3])
        r = (kernel_size - 1) // 2
        total = out.dtype.type(0)
        for dy in range(kernel_size):
            row = math.floor(Y / scale) - r + dy
            if 0 <= row < x.shape[2]:
                for dx in range(kernel_size):
                    col = X // scale - r + dx
                    if 0 <= col < x.shape[3]:
                        total += masks[n, dy * kernel_size + dx, Y, X] * x[n, c, row, col]
        out[n, c, Y, X] = total


@cuda.jit
def carafe_border_batch_one(x, masks, out, kernel_size, scale):
    i = cuda.grid(1)
    if i < out.size:
        n, c, Y, X = unravel4(i, out.shape[1], out.shape[2], out.shape[3])
        r = (kernel_size - 1) // 2
        total = out.dtype.type(0)
        for dy in range(kernel_size):
            row = Y // scale - r + dy
            if 0 <= row < x.shape[2]:
                for dx in range(kernel_size):
                    col = X // scale - r + dx
                    if 0 <= col < x.shape[3]:
                        total += masks[0, dy * kernel_size + dx, Y, X] * x[n, c, row, col]
        out[n, c, Y, X] = total


@cuda.jit
def carafe_border_without_batch(x, masks, out, kernel_size, scale):
    i = cuda.grid(1)
    if i < out.size:
        channels, height, width = out.shape[1], out.shape[2], out.shape[3]
        X = i % width
        Y = (i // width) % height
        c = (i // (width * height)) % channels
        n = 0
        r = (kernel_size - 1) // 2
        total = out.dtype.type(0)
        for dy in range(kernel_size):
            row = Y // scale - r + dy
            if 0 <= row < x.shape[2]:
                for dx in range(kernel_size):
                    col = X // scale - r + dx
                    if 0 <= col < x.shape[3]:
                        total += masks[n, dy * kernel_size + dx, Y, X] * x[n, c, row, col]
        out[n, c, Y, X] = total


@cuda.jit
def carafe_tiled_reads_global(x, masks, out, kernel_size, scale, group):
    """Loads the tile, then sums from x anyway: right values, naive traffic."""
    tile = cuda.shared.array((WINDOW, WINDOW), float32)
    channels, height, width = out.shape[1], out.shape[2], out.shape[3]
    n = cuda.blockIdx.z // channels
    c = cuda.blockIdx.z % channels
    Y0 = cuda.blockIdx.y * TILE
    X0 = cuda.blockIdx.x * TILE
    r = (kernel_size - 1) // 2
    top = Y0 // scale - r
    left = X0 // scale - r
    rows = (Y0 + TILE - 1) // scale - Y0 // scale + 1 + 2 * r
    cols = (X0 + TILE - 1) // scale - X0 // scale + 1 + 2 * r
    for j in range(cuda.threadIdx.y * TILE + cuda.threadIdx.x, rows * cols, TILE * TILE):
        row = top + j // cols
        col = left + j % cols
        value = float32(0)
        if 0 <= row < x.shape[2] and 0 <= col < x.shape[3]:
            value = x[n, c, row, col]
        tile[j // cols, j % cols] = value
    cuda.syncthreads()
    Y = Y0 + cuda.threadIdx.y
    X = X0 + cuda.threadIdx.x
    if Y < height and X < width:
        g = c // (channels // group)
        total = float32(0)
        for dy in range(kernel_size):
            for dx in range(kernel_size):
                row = Y // scale - r + dy
                col = X // scale - r + dx
                if 0 <= row < x.shape[2] and 0 <= col < x.shape[3]:
                    total += masks[n, (g * kernel_size + dy) * kernel_size + dx, Y, X] * x[n, c, row, col]
        out[n, c, Y, X] = total


@cuda.jit
def carafe_tiled_correct(x, masks, out, kernel_size, scale, group):
    tile = cuda.shared.array((WINDOW, WINDOW), float32)
    channels, height, width = out.shape[1], out.shape[2], out.shape[3]
    n = cuda.blockIdx.z // channels
    c = cuda.blockIdx.z % channels
    Y0 = cuda.blockIdx.y * TILE
    X0 = cuda.blockIdx.x * TILE
    r = (kernel_size - 1) // 2
    top = Y0 // scale - r
    left = X0 // scale - r
    rows = (Y0 + TILE - 1) // scale - Y0 // scale + 1 + 2 * r
    cols = (X0 + TILE - 1) // scale - X0 // scale + 1 + 2 * r
    for j in range(cuda.threadIdx.y * TILE + cuda.threadIdx.x, rows * cols, TILE * TILE):
        row = top + j // cols
        col = left + j % cols
        value = float32(0)
        if 0 <= row < x.shape[2] and 0 <= col < x.shape[3]:
            value = x[n, c, row, col]
        tile[j // cols, j % cols] = value
    cuda.syncthreads()
    Y = Y0 + cuda.threadIdx.y
    X = X0 + cuda.threadIdx.x
    if Y < height and X < width:
        g = c // (channels // group)
        ty = Y // scale - Y0 // scale
        tx = X // scale - X0 // scale
        total = float32(0)
        for dy in range(kernel_size):
            if 0 <= Y // scale - r + dy < x.shape[2]:  # the slots outside the map are skipped (a nan mask there)
                for dx in range(kernel_size):
                    if 0 <= X // scale - r + dx < x.shape[3]:
                        total += masks[n, (g * kernel_size + dy) * kernel_size + dx, Y, X] * tile[ty + dy, tx + dx]
        out[n, c, Y, X] = total


# --------------------------------------------------------------------------
# 04 SAPA
# --------------------------------------------------------------------------


@cuda.jit
def similarity_batch_one(q, key, logits, kernel_size, scale):
    i = cuda.grid(1)
    if i < logits.size:
        area, height, width = logits.shape[1], logits.shape[2], logits.shape[3]
        X = i % width
        Y = (i // width) % height
        t = (i // (width * height)) % area
        n = i // (width * height * area)
        row, col = window_neighbour(t, Y, X, kernel_size, scale)
        total = 0.0
        if 0 <= row < key.shape[2] and 0 <= col < key.shape[3]:
            for c in range(q.shape[1]):
                total += q[n, c, Y, X] * key[0, c, row, col]
        logits[n, t, Y, X] = total


@cuda.jit
def softmax_max_starts_at_zero(logits, weights):
    i = cuda.grid(1)
    area, height, width = logits.shape[1], logits.shape[2], logits.shape[3]
    if i < logits.shape[0] * height * width:
        X = i % width
        Y = (i // width) % height
        n = i // (width * height)
        top = 0.0
        for t in range(area):
            top = max(top, logits[n, t, Y, X])
        total = 0.0
        for t in range(area):
            total += math.exp(logits[n, t, Y, X] - top)
        for t in range(area):
            weights[n, t, Y, X] = math.exp(logits[n, t, Y, X] - top) / total


@cuda.jit
def softmax_without_max(logits, weights):
    i = cuda.grid(1)
    area, height, width = logits.shape[1], logits.shape[2], logits.shape[3]
    if i < logits.shape[0] * height * width:
        X = i % width
        Y = (i // width) % height
        n = i // (width * height)
        total = 0.0
        for t in range(area):
            total += math.exp(logits[n, t, Y, X])
        for t in range(area):
            weights[n, t, Y, X] = math.exp(logits[n, t, Y, X]) / total


@cuda.jit
def block_every_lane_all_channels(q, key, weights, kernel_size, scale):
    """Every lane computes the whole dot product; only lane 0 keeps it."""
    partial = cuda.shared.array((MAX_AREA, THREADS), numba.float32)
    lane = cuda.threadIdx.x
    point = cuda.blockIdx.x
    height, width = q.shape[2], q.shape[3]
    X = point % width
    Y = (point // width) % height
    n = point // (width * height)
    area = kernel_size * kernel_size
    for t in range(area):
        row, col = window_neighbour(t, Y, X, kernel_size, scale)
        total = 0.0
        if 0 <= row < key.shape[2] and 0 <= col < key.shape[3]:
            for c in range(q.shape[1]):
                total += q[n, c, Y, X] * key[n, c, row, col]
        partial[t, lane] = total if lane == 0 else 0.0
    cuda.syncthreads()
    stride = THREADS // 2
    while stride > 0:
        if lane < stride:
            for t in range(area):
                partial[t, lane] += partial[t, lane + stride]
        cuda.syncthreads()
        stride //= 2
    top = partial[0, 0]
    for t in range(1, area):
        top = max(top, partial[t, 0])
    total = 0.0
    for t in range(area):
        total += math.exp(partial[t, 0] - top)
    for t in range(lane, area, THREADS):
        weights[n, t, Y, X] = math.exp(partial[t, 0] - top) / total


@cuda.jit
def block_lane_zero_does_all(q, key, weights, kernel_size, scale):
    """Lane 0 loads every channel; the others idle: right values, one busy thread."""
    partial = cuda.shared.array((MAX_AREA, THREADS), numba.float32)
    lane = cuda.threadIdx.x
    point = cuda.blockIdx.x
    height, width = q.shape[2], q.shape[3]
    X = point % width
    Y = (point // width) % height
    n = point // (width * height)
    area = kernel_size * kernel_size
    for t in range(area):
        row, col = window_neighbour(t, Y, X, kernel_size, scale)
        total = 0.0
        if lane == 0 and 0 <= row < key.shape[2] and 0 <= col < key.shape[3]:
            for c in range(q.shape[1]):
                total += q[n, c, Y, X] * key[n, c, row, col]
        partial[t, lane] = total
    cuda.syncthreads()
    stride = THREADS // 2
    while stride > 0:
        if lane < stride:
            for t in range(area):
                partial[t, lane] += partial[t, lane + stride]
        cuda.syncthreads()
        stride //= 2
    top = partial[0, 0]
    for t in range(1, area):
        top = max(top, partial[t, 0])
    total = 0.0
    for t in range(area):
        total += math.exp(partial[t, 0] - top)
    for t in range(lane, area, THREADS):
        weights[n, t, Y, X] = math.exp(partial[t, 0] - top) / total


@cuda.jit
def block_correct(q, key, weights, kernel_size, scale):
    partial = cuda.shared.array((MAX_AREA, THREADS), numba.float32)
    lane = cuda.threadIdx.x
    point = cuda.blockIdx.x
    height, width = q.shape[2], q.shape[3]
    X = point % width
    Y = (point // width) % height
    n = point // (width * height)
    area = kernel_size * kernel_size
    for t in range(area):
        row, col = window_neighbour(t, Y, X, kernel_size, scale)
        total = 0.0
        if 0 <= row < key.shape[2] and 0 <= col < key.shape[3]:
            for c in range(lane, q.shape[1], THREADS):
                total += q[n, c, Y, X] * key[n, c, row, col]
        partial[t, lane] = total
    cuda.syncthreads()
    stride = THREADS // 2
    while stride > 0:
        if lane < stride:
            for t in range(area):
                partial[t, lane] += partial[t, lane + stride]
        cuda.syncthreads()
        stride //= 2
    top = partial[0, 0]
    for t in range(1, area):
        top = max(top, partial[t, 0])
    total = 0.0
    for t in range(area):
        total += math.exp(partial[t, 0] - top)
    for t in range(lane, area, THREADS):
        weights[n, t, Y, X] = math.exp(partial[t, 0] - top) / total


@cuda.jit
def block_max_starts_at_zero(q, key, weights, kernel_size, scale):
    partial = cuda.shared.array((MAX_AREA, THREADS), numba.float32)
    lane = cuda.threadIdx.x
    point = cuda.blockIdx.x
    height, width = q.shape[2], q.shape[3]
    X = point % width
    Y = (point // width) % height
    n = point // (width * height)
    area = kernel_size * kernel_size
    for t in range(area):
        row, col = window_neighbour(t, Y, X, kernel_size, scale)
        total = 0.0
        if 0 <= row < key.shape[2] and 0 <= col < key.shape[3]:
            for c in range(lane, q.shape[1], THREADS):
                total += q[n, c, Y, X] * key[n, c, row, col]
        partial[t, lane] = total
    cuda.syncthreads()
    stride = THREADS // 2
    while stride > 0:
        if lane < stride:
            for t in range(area):
                partial[t, lane] += partial[t, lane + stride]
        cuda.syncthreads()
        stride //= 2
    top = 0.0
    for t in range(area):
        top = max(top, partial[t, 0])
    total = 0.0
    for t in range(area):
        total += math.exp(partial[t, 0] - top)
    for t in range(lane, area, THREADS):
        weights[n, t, Y, X] = math.exp(partial[t, 0] - top) / total


@cuda.jit
def grad_query_writes_per_slot(grad_logits, key, grad_q, kernel_size, scale):
    """Writes its running total after every slot: right in the end, k*k writes per element."""
    i = cuda.grid(1)
    if i < grad_q.size:
        channels, height, width = grad_q.shape[1], grad_q.shape[2], grad_q.shape[3]
        X = i % width
        Y = (i // width) % height
        c = (i // (width * height)) % channels
        n = i // (width * height * channels)
        total = 0.0
        for t in range(kernel_size * kernel_size):
            row, col = window_neighbour(t, Y, X, kernel_size, scale)
            if 0 <= row < key.shape[2] and 0 <= col < key.shape[3]:
                total += grad_logits[n, t, Y, X] * key[n, c, row, col]
            grad_q[n, c, Y, X] = total


# --------------------------------------------------------------------------
# 05 FADE
# --------------------------------------------------------------------------


@cuda.jit
def semi_shift_batch_one(E, D, weight, bias, out, scale):
    i = cuda.grid(1)
    if i < out.size:
        outputs, height, width = out.shape[1], out.shape[2], out.shape[3]
        X = i % width
        Y = (i // width) % height
        o = (i // (width * height)) % outputs
        n = i // (width * height * outputs)
        size = weight.shape[2]
        r = size // 2
        row, col = Y // scale, X // scale
        total = 2.0 * bias[o]
        for c in range(E.shape[1]):
            for uy in range(size):
                for ux in range(size):
                    both = (read_or_zero(E, n, c, Y + uy - r, X + ux - r)
                            + read_or_zero(D, 0, c, row + uy - r, col + ux - r))
                    total += weight[o, c, uy, ux] * both
        out[n, o, Y, X] = total


@cuda.jit
def semi_shift_float_index(E, D, weight, bias, out, scale):
    i = cuda.grid(1)
    if i < out.size:
        outputs, height, width = out.shape[1], out.shape[2], out.shape[3]
        X = i % width
        Y = (i // width) % height
        o = (i // (width * height)) % outputs
        n = i // (width * height * outputs)
        size = weight.shape[2]
        r = size // 2
        row, col = math.floor(Y / scale), math.floor(X / scale)
        total = 2.0 * bias[o]
        for c in range(E.shape[1]):
            for uy in range(size):
                for ux in range(size):
                    e_row, e_col = Y + uy - r, X + ux - r
                    d_row, d_col = row + uy - r, col + ux - r
                    if inside(E, e_row, e_col) or inside(D, d_row, d_col):
                        both = read_or_zero(E, n, c, e_row, e_col) + read_or_zero(D, n, c, d_row, d_col)
                        total += weight[o, c, uy, ux] * both
        out[n, o, Y, X] = total


# --------------------------------------------------------------------------
# A block size (or shape) written in: right with the launch the lesson and the checker used, wrong with another
# --------------------------------------------------------------------------


@cuda.jit
def nearest_plane_with_the_block_shape_written_in(x, out):
    col = cuda.blockIdx.x * 8 + cuda.threadIdx.x
    row = cuda.blockIdx.y * 8 + cuda.threadIdx.y
    if row < out.shape[0] and col < out.shape[1]:
        out[row, col] = x[nearest_index(row, x.shape[0], out.shape[0]), nearest_index(col, x.shape[1], out.shape[1])]


@cuda.jit
def nearest_with_the_block_size_written_in(x, out, exact):
    i = cuda.blockIdx.x * 64 + cuda.threadIdx.x
    if i < out.size:
        height, width = out.shape[1], out.shape[2]
        plane, row, col = i // (width * height), (i // width) % height, i % width
        out[plane, row, col] = x[plane, nearest_index(row, x.shape[1], height), nearest_index(col, x.shape[2], width)]


@cuda.jit
def carafe_grad_x_with_the_block_size_written_in(grad_out, masks, grad_x, kernel_size, scale, group):
    i = cuda.blockIdx.x * 128 + cuda.threadIdx.x  # the lesson launches blocks of 128
    if i < grad_x.size:
        n, c, row, col = unravel4(i, grad_x.shape[1], grad_x.shape[2], grad_x.shape[3])
        r = (kernel_size - 1) // 2
        g = c // (grad_x.shape[1] // group)
        total = grad_x.dtype.type(0)
        for dy in range(kernel_size):
            for dx in range(kernel_size):
                anchor_row, anchor_col = row - dy + r, col - dx + r
                if 0 <= anchor_row < grad_x.shape[2] and 0 <= anchor_col < grad_x.shape[3]:
                    for Y in range(anchor_row * scale, anchor_row * scale + scale):
                        for X in range(anchor_col * scale, anchor_col * scale + scale):
                            total += masks[n, (g * kernel_size + dy) * kernel_size + dx, Y, X] * grad_out[n, c, Y, X]
        grad_x[n, c, row, col] = total


@cuda.jit
def carafe_tiled_with_ceil_extent(x, masks, out, kernel_size, scale, group):
    tile = cuda.shared.array((WINDOW, WINDOW), float32)
    channels, height, width = out.shape[1], out.shape[2], out.shape[3]
    n = cuda.blockIdx.z // channels
    c = cuda.blockIdx.z % channels
    Y0 = cuda.blockIdx.y * TILE
    X0 = cuda.blockIdx.x * TILE
    r = (kernel_size - 1) // 2
    top = Y0 // scale - r
    left = X0 // scale - r
    rows = (TILE + scale - 1) // scale + 2 * r  # ceil(TILE / scale): one short where Y0 is not a multiple of scale
    cols = (TILE + scale - 1) // scale + 2 * r
    for j in range(cuda.threadIdx.y * TILE + cuda.threadIdx.x, rows * cols, TILE * TILE):
        row = top + j // cols
        col = left + j % cols
        value = float32(0)
        if 0 <= row < x.shape[2] and 0 <= col < x.shape[3]:
            value = x[n, c, row, col]
        tile[j // cols, j % cols] = value
    cuda.syncthreads()
    Y = Y0 + cuda.threadIdx.y
    X = X0 + cuda.threadIdx.x
    if Y < height and X < width:
        g = c // (channels // group)
        ty = Y // scale - Y0 // scale
        tx = X // scale - X0 // scale
        total = float32(0)
        for dy in range(kernel_size):
            if 0 <= Y // scale - r + dy < x.shape[2]:
                for dx in range(kernel_size):
                    if 0 <= X // scale - r + dx < x.shape[3]:
                        total += masks[n, (g * kernel_size + dy) * kernel_size + dx, Y, X] * tile[ty + dy, tx + dx]
        out[n, c, Y, X] = total


@cuda.jit
def carafe_tiled_with_a_barrier_in_the_load_loop(x, masks, out, kernel_size, scale, group):
    tile = cuda.shared.array((WINDOW, WINDOW), float32)
    channels, height, width = out.shape[1], out.shape[2], out.shape[3]
    n = cuda.blockIdx.z // channels
    c = cuda.blockIdx.z % channels
    Y0 = cuda.blockIdx.y * TILE
    X0 = cuda.blockIdx.x * TILE
    r = (kernel_size - 1) // 2
    top = Y0 // scale - r
    left = X0 // scale - r
    rows = (Y0 + TILE - 1) // scale - Y0 // scale + 1 + 2 * r
    cols = (X0 + TILE - 1) // scale - X0 // scale + 1 + 2 * r
    for j in range(cuda.threadIdx.y * TILE + cuda.threadIdx.x, rows * cols, TILE * TILE):
        row = top + j // cols
        col = left + j % cols
        value = float32(0)
        if 0 <= row < x.shape[2] and 0 <= col < x.shape[3]:
            value = x[n, c, row, col]
        tile[j // cols, j % cols] = value
        cuda.syncthreads()  # "after each load": threads make different numbers of passes
    cuda.syncthreads()
    Y = Y0 + cuda.threadIdx.y
    X = X0 + cuda.threadIdx.x
    if Y < height and X < width:
        g = c // (channels // group)
        ty = Y // scale - Y0 // scale
        tx = X // scale - X0 // scale
        total = float32(0)
        for dy in range(kernel_size):
            if 0 <= Y // scale - r + dy < x.shape[2]:
                for dx in range(kernel_size):
                    if 0 <= X // scale - r + dx < x.shape[3]:
                        total += masks[n, (g * kernel_size + dy) * kernel_size + dx, Y, X] * tile[ty + dy, tx + dx]
        out[n, c, Y, X] = total


@cuda.jit
def carafe_grad_x_skipping_zeros(grad_out, masks, grad_x, kernel_size, scale, group):
    i = cuda.grid(1)
    if i < grad_x.size:
        n, c, row, col = unravel4(i, grad_x.shape[1], grad_x.shape[2], grad_x.shape[3])
        r = (kernel_size - 1) // 2
        g = c // (grad_x.shape[1] // group)
        total = grad_x.dtype.type(0)
        for dy in range(kernel_size):
            for dx in range(kernel_size):
                anchor_row, anchor_col = row - dy + r, col - dx + r
                if 0 <= anchor_row < grad_x.shape[2] and 0 <= anchor_col < grad_x.shape[3]:
                    for Y in range(anchor_row * scale, anchor_row * scale + scale):
                        for X in range(anchor_col * scale, anchor_col * scale + scale):
                            gradient = grad_out[n, c, Y, X]
                            if gradient != 0:  # "nothing to add"
                                total += masks[n, (g * kernel_size + dy) * kernel_size + dx, Y, X] * gradient
        grad_x[n, c, row, col] = total


@cuda.jit
def carafe_grad_masks_skipping_zeros(grad_out, x, grad_masks, kernel_size, scale, group):
    i = cuda.grid(1)
    if i < grad_masks.size:
        n, slot, Y, X = unravel4(i, grad_masks.shape[1], grad_masks.shape[2], grad_masks.shape[3])
        area = kernel_size * kernel_size
        g, t = slot // area, slot % area
        r = (kernel_size - 1) // 2
        row, col = Y // scale - r + t // kernel_size, X // scale - r + t % kernel_size
        per_group = x.shape[1] // group
        total = grad_masks.dtype.type(0)
        if 0 <= row < x.shape[2] and 0 <= col < x.shape[3]:
            for c in range(g * per_group, (g + 1) * per_group):
                value = x[n, c, row, col]
                if value != 0:
                    total += grad_out[n, c, Y, X] * value
        grad_masks[n, slot, Y, X] = total


class BilinearFunctionWithBatchAndChannelsSwapped(torch.autograd.Function):
    """02.5 with (C, N) for (N, C) in its reshapes: the same memory, the wrong shape where N != C."""

    @staticmethod
    def forward(ctx, x, size, align_corners):
        n, c, h, w = x.shape
        ctx.shape, ctx.align_corners = x.shape, align_corners
        planes = x.detach().reshape(n * c, 1, h, w)
        return F.interpolate(planes, size=size, mode="bilinear", align_corners=align_corners).reshape(c, n, *size)

    @staticmethod
    def backward(ctx, grad_out):
        n, c, h, w = ctx.shape
        planes = torch.zeros(n * c, 1, h, w, dtype=grad_out.dtype, requires_grad=True)
        with torch.enable_grad():
            out = F.interpolate(planes, size=grad_out.shape[2:], mode="bilinear", align_corners=ctx.align_corners)
        (grad,) = torch.autograd.grad(out, planes, grad_out.reshape(out.shape))
        return grad.reshape(c, n, h, w), None, None


# --------------------------------------------------------------------------
# Skipping a term by its value: zero padding, then "a 0 adds nothing". Right on finite inputs; the spec keeps
# nan * 0 = nan inside the maps (04, 05 and 07; lesson 03's in test_lesson_helpers_carafe.py)
# --------------------------------------------------------------------------


def semi_shift_pixel_skipping_zeros(E, D, weight, bias, n, o, Y, X, scale):
    size = weight.shape[2]
    r = size // 2
    total = 2 * bias[o]
    for c in range(E.shape[1]):
        for uy in range(size):
            for ux in range(size):
                both = (read_or_zero(E, n, c, Y + uy - r, X + ux - r)
                        + read_or_zero(D, n, c, Y // scale + uy - r, X // scale + ux - r))
                if both != 0:
                    total += weight[o, c, uy, ux] * both
    return total


@cuda.jit
def semi_shift_skipping_zeros(E, D, weight, bias, out, scale):
    i = cuda.grid(1)
    if i < out.size:
        n, o, Y, X = unravel4(i, out.shape[1], out.shape[2], out.shape[3])
        size = weight.shape[2]
        r = size // 2
        total = 2.0 * bias[o]
        for c in range(E.shape[1]):
            for uy in range(size):
                for ux in range(size):
                    both = (read_or_zero(E, n, c, Y + uy - r, X + ux - r)
                            + read_or_zero(D, n, c, Y // scale + uy - r, X // scale + ux - r))
                    if both != 0.0:
                        total += weight[o, c, uy, ux] * both
        out[n, o, Y, X] = total


@cuda.jit
def grad_en_skipping_zeros(grad_out, weight, grad_en):
    i = cuda.grid(1)
    if i < grad_en.size:
        n, c, Y, X = unravel4(i, grad_en.shape[1], grad_en.shape[2], grad_en.shape[3])
        size = weight.shape[2]
        r = size // 2
        total = 0.0
        for o in range(weight.shape[0]):
            for uy in range(size):
                for ux in range(size):
                    g = read_or_zero(grad_out, n, o, Y - uy + r, X - ux + r)
                    if g != 0.0:
                        total += weight[o, c, uy, ux] * g
        grad_en[n, c, Y, X] = total


@cuda.jit
def grad_de_skipping_zeros(grad_out, weight, grad_de, scale):
    i = cuda.grid(1)
    if i < grad_de.size:
        n, c, row, col = unravel4(i, grad_de.shape[1], grad_de.shape[2], grad_de.shape[3])
        size = weight.shape[2]
        r = size // 2
        total = 0.0
        for o in range(weight.shape[0]):
            for uy in range(size):
                for ux in range(size):
                    pooled = 0.0
                    for a in range(scale):
                        for b in range(scale):
                            pooled += read_or_zero(grad_out, n, o, (row - uy + r) * scale + a,
                                                   (col - ux + r) * scale + b)
                    if pooled != 0.0:
                        total += weight[o, c, uy, ux] * pooled
        grad_de[n, c, row, col] = total


@cuda.jit
def grad_weight_skipping_zeros(grad_out, E, D, grad_weight, scale):
    i = cuda.grid(1)
    if i < grad_weight.size:
        o, c, uy, ux = unravel4(i, grad_weight.shape[1], grad_weight.shape[2], grad_weight.shape[3])
        r = grad_weight.shape[2] // 2
        total = 0.0
        for n in range(grad_out.shape[0]):
            for Y in range(grad_out.shape[2]):
                for X in range(grad_out.shape[3]):
                    both = (read_or_zero(E, n, c, Y + uy - r, X + ux - r)
                            + read_or_zero(D, n, c, Y // scale + uy - r, X // scale + ux - r))
                    if both != 0.0:
                        total += grad_out[n, o, Y, X] * both
        grad_weight[o, c, uy, ux] = total


@cuda.jit
def grad_query_skipping_zeros(grad_logits, key, grad_q, kernel_size, scale):
    i = cuda.grid(1)
    if i < grad_q.size:
        n, c, Y, X = unravel4(i, grad_q.shape[1], grad_q.shape[2], grad_q.shape[3])
        total = 0.0
        for t in range(kernel_size * kernel_size):
            row, col = window_neighbour(t, Y, X, kernel_size, scale)
            value = read_or_zero(key, n, c, row, col)
            if value != 0.0:
                total += grad_logits[n, t, Y, X] * value
        grad_q[n, c, Y, X] = total


@cuda.jit
def grad_key_skipping_zeros(grad_logits, q, grad_key, kernel_size, scale):
    i = cuda.grid(1)
    if i < grad_key.size:
        n, c, row, col = unravel4(i, grad_key.shape[1], grad_key.shape[2], grad_key.shape[3])
        r = (kernel_size - 1) // 2
        total = 0.0
        for dy in range(kernel_size):
            for dx in range(kernel_size):
                anchor_row, anchor_col = row - dy + r, col - dx + r
                if 0 <= anchor_row < grad_key.shape[2] and 0 <= anchor_col < grad_key.shape[3]:
                    for a in range(scale):
                        for b in range(scale):
                            value = q[n, c, anchor_row * scale + a, anchor_col * scale + b]
                            if value != 0.0:
                                total += grad_logits[n, dy * kernel_size + dx, anchor_row * scale + a,
                                                     anchor_col * scale + b] * value
        grad_key[n, c, row, col] = total


@cuda.jit
def carafe_channels_last_skipping_zeros(x, masks, out, kernel_size, scale):
    i = cuda.grid(1)
    if i < out.size:
        channels, width, height = out.shape[3], out.shape[2], out.shape[1]
        c = i % channels
        X = (i // channels) % width
        Y = (i // (channels * width)) % height
        n = i // (channels * width * height)
        r = (kernel_size - 1) // 2
        total = out.dtype.type(0)
        for dy in range(kernel_size):
            for dx in range(kernel_size):
                row, col = Y // scale - r + dy, X // scale - r + dx
                value = out.dtype.type(0)
                if 0 <= row < x.shape[1] and 0 <= col < x.shape[2]:
                    value = x[n, row, col, c]
                if value != 0:
                    total += masks[n, Y, X, dy * kernel_size + dx] * value
        out[n, Y, X, c] = total


CHANNELS_PER_THREAD = 4


@cuda.jit
def carafe_channel_blocked_skipping_zeros(x, masks, out, kernel_size, scale):
    channels, height, width = out.shape[1], out.shape[2], out.shape[3]
    runs = (channels + CHANNELS_PER_THREAD - 1) // CHANNELS_PER_THREAD
    i = cuda.grid(1)
    if i < out.shape[0] * runs * height * width:
        X = i % width
        Y = (i // width) % height
        first = (i // (width * height)) % runs * CHANNELS_PER_THREAD
        n = i // (width * height * runs)
        sums = cuda.local.array(CHANNELS_PER_THREAD, float32)
        for j in range(CHANNELS_PER_THREAD):
            sums[j] = 0
        r = (kernel_size - 1) // 2
        for dy in range(kernel_size):
            row = Y // scale - r + dy
            for dx in range(kernel_size):
                col = X // scale - r + dx
                weight = masks[n, dy * kernel_size + dx, Y, X]
                for j in range(CHANNELS_PER_THREAD):
                    if first + j < channels:
                        value = float32(0)
                        if 0 <= row < x.shape[2] and 0 <= col < x.shape[3]:
                            value = x[n, first + j, row, col]
                        if value != 0:
                            sums[j] += weight * value
        for j in range(CHANNELS_PER_THREAD):
            if first + j < channels:
                out[n, first + j, Y, X] = sums[j]


# --------------------------------------------------------------------------
# The corpus: (name, checker call, what the message must say)
# --------------------------------------------------------------------------

FLOAT_INDEX = r"GPU compiler rejects.*\n.*int\(math\.floor"
# --------------------------------------------------------------------------
# Index math written in the kernel, right only as Python: in the simulator an int times a np.float32 stays
# float32 (NumPy), compiled for a GPU it is float64 (Numba)
# --------------------------------------------------------------------------


@cuda.jit
def nearest_plane_with_the_index_math_inline(x, out):
    col, row = cuda.grid(2)
    if row < out.shape[0] and col < out.shape[1]:
        scale_y = np.float32(x.shape[0]) / np.float32(out.shape[0])
        scale_x = np.float32(x.shape[1]) / np.float32(out.shape[1])
        out[row, col] = x[min(int(row * scale_y), x.shape[0] - 1), min(int(col * scale_x), x.shape[1] - 1)]


@cuda.jit
def nearest_plane_with_the_index_math_inline_in_float32(x, out):
    col, row = cuda.grid(2)
    if row < out.shape[0] and col < out.shape[1]:
        scale_y = np.float32(x.shape[0]) / np.float32(out.shape[0])
        scale_x = np.float32(x.shape[1]) / np.float32(out.shape[1])
        out[row, col] = x[min(int(np.float32(row) * scale_y), x.shape[0] - 1),
                          min(int(np.float32(col) * scale_x), x.shape[1] - 1)]


@cuda.jit
def nearest_with_the_index_math_inline(x, out, exact):
    i = cuda.grid(1)
    if i < out.size:
        height, width = out.shape[1], out.shape[2]
        plane, row, col = i // (width * height), (i // width) % height, i % width
        src_row = min(int(row * (np.float32(x.shape[1]) / np.float32(height))), x.shape[1] - 1)
        src_col = min(int(col * (np.float32(x.shape[2]) / np.float32(width))), x.shape[2] - 1)
        out[plane, row, col] = x[plane, src_row, src_col]


@cuda.jit(device=True)
def source_pixel_of_this_thread(x, out):
    col, row = cuda.grid(2)
    scale_y = np.float32(x.shape[0]) / np.float32(out.shape[0])
    scale_x = np.float32(x.shape[1]) / np.float32(out.shape[1])
    return row, col, min(int(row * scale_y), x.shape[0] - 1), min(int(col * scale_x), x.shape[1] - 1)


@cuda.jit
def nearest_plane_with_the_index_math_in_a_helper_reading_the_grid(x, out):
    row, col, src_row, src_col = source_pixel_of_this_thread(x, out)
    if row < out.shape[0] and col < out.shape[1]:
        out[row, col] = x[src_row, src_col]


def _source_pixel_under_another_name(x, out):
    col, row = cuda.grid(2)
    scale_y = np.float32(x.shape[0]) / np.float32(out.shape[0])
    scale_x = np.float32(x.shape[1]) / np.float32(out.shape[1])
    return row, col, min(int(row * scale_y), x.shape[0] - 1), min(int(col * scale_x), x.shape[1] - 1)


source_pixel_bound_to_another_name = cuda.jit(device=True)(_source_pixel_under_another_name)


@cuda.jit
def nearest_plane_with_the_index_math_in_a_helper_under_another_name(x, out):
    row, col, src_row, src_col = source_pixel_bound_to_another_name(x, out)
    if row < out.shape[0] and col < out.shape[1]:
        out[row, col] = x[src_row, src_col]


@cuda.jit(device=True)
def this_threads_pixel():
    col, row = cuda.grid(2)
    return row, col


@cuda.jit(device=True)
def source_index_in_float64(dst, in_size, out_size):
    this_threads_pixel = dst * (np.float32(in_size) / np.float32(out_size))  # a local named as the helper
    return min(int(this_threads_pixel), in_size - 1)


@cuda.jit
def nearest_plane_with_a_local_named_as_the_grid_helper(x, out):
    row, col = this_threads_pixel()
    if row < out.shape[0] and col < out.shape[1]:
        out[row, col] = x[source_index_in_float64(row, x.shape[0], out.shape[0]),
                          source_index_in_float64(col, x.shape[1], out.shape[1])]


@cuda.jit(device=True)
def source_pixel_of_this_thread_in_float32(x, out):
    col, row = cuda.grid(2)
    scale_y = np.float32(x.shape[0]) / np.float32(out.shape[0])
    scale_x = np.float32(x.shape[1]) / np.float32(out.shape[1])
    return (row, col, min(int(np.float32(row) * scale_y), x.shape[0] - 1),
            min(int(np.float32(col) * scale_x), x.shape[1] - 1))


@cuda.jit
def nearest_plane_with_a_helper_reading_the_grid_in_float32(x, out):
    row, col, src_row, src_col = source_pixel_of_this_thread_in_float32(x, out)
    if row < out.shape[0] and col < out.shape[1]:
        out[row, col] = x[src_row, src_col]


#: FADE's checkers, where a kernel dropped a term whose nan the spec keeps (a 0 times a nan weight)
NAN_TIMES_ZERO_DROPPED = (r"it should be nan: this element reads that value inside the maps.*nan \* 0 is nan.*\n"
                          r".*never by its value")

CORPUS = [
    # the six kinds
    ("float index (00)", lambda: checkers.check_scale_kernel(scale_float_index), FLOAT_INDEX, True),
    ("float index (01)", lambda: checkers.check_nearest_kernel(nearest_float_index), FLOAT_INDEX, True),
    ("float index (03)", lambda: checkers.check_carafe_border_kernel(carafe_border_float_index), FLOAT_INDEX, True),
    ("float index (05)", lambda: checkers.check_semi_shift_kernel(semi_shift_float_index), FLOAT_INDEX, True),
    ("scatter partly atomic", lambda: checkers.check_bilinear_scatter_kernel(scatter_partly_atomic),
     r"plain stores, not atomics.*\n.*every write", False),
    ("batch 1 only: masks[0] (03)", lambda: checkers.check_carafe_border_kernel(carafe_border_batch_one),
     r"batch element 0 is right.*ignores the batch index", False),
    ("batch 1 only: n = 0 (03)", lambda: checkers.check_carafe_border_kernel(carafe_border_without_batch),
     r"never written.*\n.*batch element 0 is right.*ignores the batch index", False),
    ("batch 1 only: key[0] (04)", lambda: checkers.check_similarity_kernel(similarity_batch_one),
     r"batch element 0 .*right", False),
    ("batch 1 only: D[0] (05)", lambda: checkers.check_semi_shift_kernel(semi_shift_batch_one),
     r"batch element 0 .*right", False),
    ("first plane only (01)", lambda: checkers.check_nearest_kernel(nearest_first_plane_only),
     r"plane 0 .*right", False),
    ("first plane only (02)", lambda: checkers.check_bilinear_kernel(bilinear_first_plane_only),
     r"plane 0 .*right", False),
    ("grid stride by blockDim", lambda: checkers.check_grid_stride_kernel(grid_stride_by_block),
     r"written more than once.*\n.*cuda\.gridsize\(1\)", False),
    ("grid stride from threadIdx", lambda: checkers.check_grid_stride_kernel(grid_stride_from_zero),
     r"written more than once", False),
    ("softmax max starts at 0", lambda: checkers.check_softmax_kernel(softmax_max_starts_at_zero),
     r"Start the running maximum at the point's first logit", False),
    ("to_kernel_array .cpu().numpy()", lambda: checkers.check_to_kernel_array(to_kernel_array_round_trip),
     r"tensor\.cpu\(\)", False),
    ("to_kernel_array .numpy() everywhere",
     lambda: checkers.check_to_kernel_array(to_kernel_array_numpy_everywhere), r"tensor\.numpy\(\)", False),
    ("to_kernel_array to_device(cpu())", lambda: checkers.check_to_kernel_array(to_kernel_array_copy_to_device),
     r"tensor\.cpu\(\)", False),
    # one per new rule
    ("plain Python helper", lambda: checkers.check_scale_kernel(scale_plain_helper),
     r"GPU compiler rejects.*plain_twice.*\n.*@per_element", True),
    ("a list in a kernel", lambda: checkers.check_scale_kernel(scale_builds_a_list),
     r"GPU compiler rejects.*\n.*lists", True),
    ("each thread writes twice", lambda: checkers.check_scale_kernel(scale_every_thread_writes_twice),
     r"written more than once", False),
    ("grad_q written per slot", lambda: checkers.check_grad_query_kernel(grad_query_writes_per_slot),
     r"written more than once", False),
    ("softmax without the max", lambda: checkers.check_softmax_kernel(softmax_without_max),
     r"OverflowError.*\n.*Subtract each point's largest logit", False),
    ("tiled kernel sums from x", lambda: checkers.check_carafe_tiled_kernel(carafe_tiled_reads_global, TILE,
                                                                             MAX_RADIUS),
     r"loads x from global memory \d+ times.*the tile of the lesson loads it \d+ times", False),
    ("block kernel: every lane all channels",
     lambda: checkers.check_similarity_block_kernel(block_every_lane_all_channels, THREADS),
     r"loads q and key \d+ times .* need \d+ loads", False),
    ("block kernel: lane 0 does all", lambda: checkers.check_similarity_block_kernel(block_lane_zero_does_all, THREADS),
     r"one thread loads \d+ values .*lanes do not split the channel loop", False),
    ("block kernel: max starts at 0",
     lambda: checkers.check_similarity_block_kernel(block_max_starts_at_zero, THREADS),
     r"ZeroDivisionError.*below -900.*\n.*Start the running maximum", False),
    # a block size written in; a tile one row short; (C, N) for (N, C)
    ("block shape written in (01)",
     lambda: checkers.check_nearest_plane_kernel(nearest_plane_with_the_block_shape_written_in),
     r"never written.*blocks of 16 x 4 threads.*\n.*cuda\.grid\(2\) holds for any block shape", False),
    ("block size written in (01)", lambda: checkers.check_nearest_kernel(nearest_with_the_block_size_written_in),
     r"never written.*blocks of 32 threads.*\n.*this case runs blocks of 32 threads, the others \d+: "
     r"i = cuda\.grid\(1\)", False),
    ("block size written in (03)",
     lambda: checkers.check_carafe_grad_x_kernel(carafe_grad_x_with_the_block_size_written_in),
     r"values wrong for .*blocks of 32 threads(.|\n)*this case runs blocks of 32 threads, the others 128", False),
    ("tile one row short at scale 3 (03)",
     lambda: checkers.check_carafe_tiled_kernel(carafe_tiled_with_ceil_extent, TILE, MAX_RADIUS),
     r"values wrong for x \(1, 1, 8, 8\), kernel_size=3, scale=3", False),
    ("barrier in a per-thread loop (03)",
     lambda: checkers.check_carafe_tiled_kernel(carafe_tiled_with_a_barrier_in_the_load_loop, TILE, MAX_RADIUS),
     r"syncthreads\(\) on line \d+ of the kernel sits inside a `for` loop whose passes depend on the thread", False),
    ("(C, N) for (N, C) (02)", lambda: checkers.check_bilinear_function(BilinearFunctionWithBatchAndChannelsSwapped),
     r"wrong shape for forward.*expected \(2, 3, 5, 7\), got \(3, 2, 5, 7\)", False),
    # skipping a term by its value
    ("skip by value: semi-shift pixel (05)", lambda: checkers.check_semi_shift_pixel(semi_shift_pixel_skipping_zeros),
     NAN_TIMES_ZERO_DROPPED, False),
    ("skip by value: semi-shift kernel (05)", lambda: checkers.check_semi_shift_kernel(semi_shift_skipping_zeros),
     NAN_TIMES_ZERO_DROPPED, False),
    ("skip by value: grad_en (05)", lambda: checkers.check_semi_shift_grad_en_kernel(grad_en_skipping_zeros),
     NAN_TIMES_ZERO_DROPPED, False),
    ("skip by value: grad_de (05)", lambda: checkers.check_semi_shift_grad_de_kernel(grad_de_skipping_zeros),
     NAN_TIMES_ZERO_DROPPED, False),
    ("skip by value: grad_weight (05)",
     lambda: checkers.check_semi_shift_grad_weight_kernel(grad_weight_skipping_zeros), NAN_TIMES_ZERO_DROPPED,
     False),
    ("skip by value: grad_q (04)", lambda: checkers.check_grad_query_kernel(grad_query_skipping_zeros),
     r"grad_q\(\d, 0, .*is a number .*key 0 in channel 0; it should be nan.*\n.*never by a value", False),
    ("skip by value: grad_key (04)", lambda: checkers.check_grad_key_kernel(grad_key_skipping_zeros),
     r"grad_key\(\d, 0, .*is a number .*q 0 in channel 0; it should be nan.*\n.*never by a value", False),
    ("skip by value: CARAFE grad_x (03)", lambda: checkers.check_carafe_grad_x_kernel(carafe_grad_x_skipping_zeros),
     r"grad_x\(\d, \d, \d, \d\) is a number .*it should be nan.*\n.*never by a value", False),
    ("skip by value: CARAFE grad_masks (03)",
     lambda: checkers.check_carafe_grad_masks_kernel(carafe_grad_masks_skipping_zeros),
     r"grad_masks\(\d, \d+, \d, \d\) is a number .*it should be nan.*\n.*never by a value", False),
    ("skip by value: channels-last (07)",
     lambda: checkers.check_carafe_channels_last_kernel(carafe_channels_last_skipping_zeros),
     r"out\[0, [23], [01], \d+\] is a number .*x\[0, 1, 1, \d+\] = 0 at a slot whose mask is nan.*\n.*never by a value",
     False),
    ("skip by value: channel-blocked (07)",
     lambda: checkers.check_carafe_channel_blocked_kernel(carafe_channel_blocked_skipping_zeros, CHANNELS_PER_THREAD),
     r"out\[0, \d, [23], [01]\] is a number .*x\[0, \d, 1, 1\] = 0 at a slot whose mask is nan.*\n.*never by a value",
     False),
    # index math right only as Python (the simulator), off by a pixel compiled for a GPU
    ("index math inline: int x float32 (01.3)",
     lambda: checkers.check_nearest_plane_kernel(nearest_plane_with_the_index_math_inline),
     r"right in the simulator.*compiled, as a GPU runs it, 5 of 400 outputs are wrong for 2x210 -> 1x400.*"
     r"out\[0, 40\].*\n.*an int or a Python float mixed with a float32 is computed in float64", False),
    ("index math inline: int x float32 (01.4)",
     lambda: checkers.check_nearest_kernel(nearest_with_the_index_math_inline),
     r"right in the simulator.*compiled, as a GPU runs it, 5 of 400 outputs are wrong for 1x2x210 -> 1x1x400.*"
     r"out\[0, 0, 40\].*\n.*an int or a Python float mixed with a float32 is computed in float64", False),
    ("index math inline, in a helper bound to another name (01.3)",
     lambda: checkers.check_nearest_plane_kernel(nearest_plane_with_the_index_math_in_a_helper_under_another_name),
     r"compiled, as a GPU runs it, 5 of 400 outputs are wrong for 2x210 -> 1x400", False),
    ("index math inline, a local named as the helper reading cuda.grid (01.3)",
     lambda: checkers.check_nearest_plane_kernel(nearest_plane_with_a_local_named_as_the_grid_helper),
     r"compiled, as a GPU runs it, \d+ of 400 outputs are wrong for 2x210 -> 1x400", False),
    ("index math inline, in a helper reading cuda.grid (01.3)",
     lambda: checkers.check_nearest_plane_kernel(nearest_plane_with_the_index_math_in_a_helper_reading_the_grid),
     r"right in the simulator.*compiled, as a GPU runs it, 5 of 400 outputs are wrong for 2x210 -> 1x400.*"
     r"out\[0, 40\].*\n.*an int or a Python float mixed with a float32 is computed in float64", False),
    # from test_checkers.py
    ("unguarded", lambda: checkers.check_scale_kernel(scale_unguarded), r"if i < out\.size", False),
    ("off by one", lambda: checkers.check_scale_kernel(scale_off_by_one), r"First mismatch at index \(0,\)", False),
    ("flip: grid(2) swapped", lambda: checkers.check_flip_kernel(flip_rows_and_columns_swapped),
     r"out of bounds|mismatch", False),
]

CORRECT = [
    ("index math inline, float32 throughout (01.3)",
     lambda: checkers.check_nearest_plane_kernel(nearest_plane_with_the_index_math_inline_in_float32)),
    ("index math in a helper reading cuda.grid, float32 throughout (01.3)",
     lambda: checkers.check_nearest_plane_kernel(nearest_plane_with_a_helper_reading_the_grid_in_float32)),
    ("grid stride", lambda: checkers.check_grid_stride_kernel(grid_stride_correct)),
    ("scatter", lambda: checkers.check_bilinear_scatter_kernel(scatter_correct)),
    ("zero-copy", lambda: checkers.check_to_kernel_array(to_kernel_array_correct)),
    ("tiled", lambda: checkers.check_carafe_tiled_kernel(carafe_tiled_correct, TILE, MAX_RADIUS)),
    ("block reduction", lambda: checkers.check_similarity_block_kernel(block_correct, THREADS)),
]


def _run(case):
    name, check, pattern, compiles = case
    if compiles and not ptx.compiler_available():
        pytest.skip("no PTX compiler (numba-cuda not installed)")
    with pytest.raises(checkers.CheckFailed) as caught:
        check()
    message = str(caught.value)
    assert re.search(pattern, message), f"{name}: the message does not name the mistake:\n{message}"


@pytest.mark.parametrize("case", CORPUS, ids=[case[0] for case in CORPUS])
def test_wrong_answer_is_caught_and_named(case):
    _run(case)


@pytest.mark.parametrize("name, check", CORRECT, ids=[name for name, _ in CORRECT])
def test_correct_answer_passes(name, check, capsys):
    check()
    assert capsys.readouterr().out.startswith("PASS ")


def test_the_corpus_covers_every_kind():
    """At least the issue's six kinds and one wrong answer per new rule."""
    names = " ".join(case[0] for case in CORPUS)
    for kind in ("float index", "partly atomic", "batch 1 only", "grid stride", "max starts at 0", ".cpu()",
                 "plain Python helper", "writes twice", "without the max", "tiled kernel", "block kernel",
                 "skip by value", "index math inline"):
        assert kind in names, kind


@pytest.mark.parametrize("tile, size, scale", [(4, 8, 5), (12, 9, 5), (16, 8, 6)])
def test_a_tile_one_row_short_is_caught_at_any_tile_size(tile, size, scale, monkeypatch):
    """The short-tile case follows the student's TILE (8 needs scale 3, 16 scale 6, 4 and 12 scale 5), and
    the correct kernel passes it. The kernels read TILE and WINDOW as globals, as in a notebook."""
    this_module = sys.modules[__name__]
    monkeypatch.setattr(this_module, "TILE", tile)
    monkeypatch.setattr(this_module, "WINDOW", tile + 2 * MAX_RADIUS)
    with pytest.raises(checkers.CheckFailed,
                       match=rf"values wrong for x \(1, 1, {size}, {size}\), kernel_size=3, scale={scale}"):
        checkers.check_carafe_tiled_kernel(carafe_tiled_with_ceil_extent, tile, MAX_RADIUS)
    checkers.check_carafe_tiled_kernel(carafe_tiled_correct, tile, MAX_RADIUS)


def _rows_a_short_tile_misses(case, tile):
    """Rows of x inside the map that some output reads at its window and that
    the tile of its block misses, when the tile holds ceil(tile / scale) + 2r
    rows from the block's first output row // scale - r: output by output."""
    _, _, size, _, kernel_size, scale, _ = case
    radius = (kernel_size - 1) // 2
    missed = set()
    for Y in range(scale * size):
        first = Y // tile * tile
        top = first // scale - radius
        held = range(top, top + math.ceil(tile / scale) + 2 * radius)
        missed |= {row for row in range(Y // scale - radius, Y // scale + radius + 1) if 0 <= row < size} - set(held)
    return missed


@pytest.mark.parametrize("tile", range(2, 65))
def test_the_short_tile_case_has_a_row_inside_the_map_that_the_short_tile_misses(tile):
    from upsamplelib.checkers.carafe import _short_tile_case

    assert _rows_a_short_tile_misses(_short_tile_case(tile), tile)

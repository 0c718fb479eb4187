"""nearest, nearest-exact and bilinear upsampling: ``ul.interpolate``.

Same results as ``torch.nn.functional.interpolate`` (nearest bit for bit),
forward and backward, on three backends:

* ``cuda``: Numba-CUDA kernels, one thread per element (GPU or simulator);
* ``cpu``: Numba CPU loops, parallel over rows;
* ``torch``: ``F.interpolate`` itself, the reference.

The CUDA kernels and the CPU loops call the same per-axis index functions
and per-element bodies (``per_element`` compiles each for both targets).

PyTorch's index rules: ``scale = in/out`` when ``size=`` is given and
``1/scale_factor`` when ``scale_factor=`` is; nearest floors
``dst * scale``, nearest-exact ``(dst + 0.5) * scale``, bilinear blends the
two pixels around ``(dst + 0.5) * scale - 0.5``. The float rounding of each
step differs between PyTorch's kernels (generic CPU, channels-last CPU,
CUDA), and ``nearest_rule`` picks the one ``F.interpolate`` would run.

Each Numba op is a PyTorch custom operator (``torch.ops.upsamplelib.*``)
with a fake implementation, an autograd formula and a FLOP formula, so
``torch.compile(fullgraph=True)``, ``torch.library.opcheck`` and
``FlopCounterMode`` see it as one op.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Optional

import numba
import numpy as np
import torch
import torch.nn.functional as F
from numba import cuda, int64, prange, types
from torch.utils.flop_counter import register_flop_formula

try:
    from torch._prims_common import are_strides_like_channels_last_or_false
except ImportError:  # older torch: the same rule, without its care for symbolic sizes
    from torch._prims_common import are_strides_like_channels_last as are_strides_like_channels_last_or_false

from ..backend import (cpu_kernel, cuda_kernel, fma, forward_tangents, kernel_array, operator, per_element,
                       pixels_array, reference_for_empty_batch, resolve_backend, run, with_tangent)
from ..layout import (empty_map, is_only_channels_last, is_vmapped, to_channels_first, to_channels_last,
                      with_channels_last_strides)
from ..validation import check_feature_map, in_dtype, kernel_dtype

MODES = ("nearest", "nearest-exact", "bilinear")

# --------------------------------------------------------------------------
# Per-axis index math, shared by every kernel below (see backend.per_element)
# --------------------------------------------------------------------------


#: The three ways PyTorch computes a nearest index (see ``nearest_rule``).
#: GENERIC: PyTorch's CPU kernel for NCHW maps whose output is large: the
#: coordinate in the "opmath" type (float64 for float64 maps, float32
#: otherwise), no shortcuts. LEGACY: its CPU kernel for small outputs and
#: channels-last maps: float32 throughout, and two shortcuts (same size:
#: copy; exactly twice the size: dst >> 1). DEVICE: its CUDA kernel: float32
#: throughout, no shortcuts.
NEAREST_GENERIC, NEAREST_LEGACY, NEAREST_DEVICE = 0, 1, 2
#: Not a fourth rule: LEGACY or GENERIC by the output's size, which the
#: operator decides when it runs (see ``nearest_rule``). No kernel sees it.
NEAREST_BY_SIZE = 3


def _nearest_source_index(dst, in_size, out_size, scale, exact, rule, real_t):
    """Input index that output index ``dst`` copies, along one axis.

    ``nearest``: floor(dst * scale). ``nearest-exact``: floor((dst + 0.5) *
    scale), which PyTorch's generic CPU kernel writes as the pixel-centre
    coordinate (dst + 0.5) * scale - 0.5 rounded half up. ``scale`` is
    already rounded as the rule wants it (``axis_scale``); ``real_t`` is the
    opmath type (float32/float64), used by the GENERIC rule only. Every
    float step is cast explicitly: NumPy (the simulator) and Numba (the GPU)
    type mixed float32 arithmetic differently.
    """
    if rule == NEAREST_GENERIC:
        if exact:
            centre = real_t(np.float64(scale) * (dst + 0.5) - 0.5)
            real = np.float64(max(centre, real_t(0))) + 0.5
        else:
            real = real_t(scale) * real_t(dst)
    elif rule == NEAREST_LEGACY:
        if exact:
            real = (dst + 0.5) * np.float64(np.float32(scale))
        elif out_size == in_size:
            return dst
        elif out_size == 2 * in_size:
            return dst >> 1
        else:
            real = np.float32(dst) * np.float32(scale)
    else:
        if exact:
            real = (np.float32(dst) + np.float32(0.5)) * np.float32(scale)
        else:
            real = np.float32(dst) * np.float32(scale)
    return min(int(math.floor(np.float32(real))), in_size - 1)


def _linear_source_index(dst, in_size, out_size, scale, align_corners, real_t):
    """(i0, i1, w0, w1): the two input indices output ``dst`` blends, and
    their weights, along one axis."""
    if out_size == in_size:
        return dst, dst, real_t(1), real_t(0)
    if align_corners:
        real = scale * real_t(dst)
    else:
        real = max(real_t(np.float64(scale) * (dst + 0.5) - 0.5), real_t(0))
    i0 = min(int(math.floor(np.float32(real))), in_size - 1)
    w1 = min(max(real - real_t(i0), real_t(0)), real_t(1))
    i1 = i0 + 1 if i0 < in_size - 1 else i0
    return i0, i1, real_t(1) - w1, w1


nearest_source_index = per_element(_nearest_source_index)
linear_source_index = per_element(_linear_source_index)


# --------------------------------------------------------------------------
# Per-element bodies
# --------------------------------------------------------------------------


def _lerp(a, b, wa, wb):
    """wa * a + wb * b, with the rounding of PyTorch's CPU kernels."""
    return fma(a, wa, b * wb)


def _fill_axis_table(index, weight, dst, in_size, scale, linear, flag, rule):
    """Column ``dst`` of an axis table: the input indices (i0, i1) that output
    ``dst`` reads along this axis and their weights (w0, w1). Nearest is the
    special case i1 = i0, (w0, w1) = (1, 0)."""
    real_t = weight.dtype.type
    out_size = index.shape[1]
    if linear:
        i0, i1, w0, w1 = linear_source_index(dst, in_size, out_size, scale, flag, real_t)
    else:
        i0 = nearest_source_index(dst, in_size, out_size, scale, flag, rule, real_t)
        i1, w0, w1 = i0, real_t(1), real_t(0)
    index[0, dst] = i0
    index[1, dst] = i1
    weight[0, dst] = w0
    weight[1, dst] = w1


def _lower_bound(index, row, target):
    """First column of ``index[row]`` (non-decreasing) holding a value >= target."""
    low, high = 0, index.shape[1]
    while low < high:
        middle = (low + high) // 2
        if index[row, middle] < target:
            low = middle + 1
        else:
            high = middle
    return low


def _axis_weight(index, weight, dst, src):
    """How much output ``dst`` takes from input ``src`` along one axis."""
    total = weight[0, dst] if index[0, dst] == src else weight.dtype.type(0)
    if index[1, dst] == src:
        total += weight[1, dst]
    return total


def _output_range(index, src):
    """The outputs that read input ``src`` along one axis: [begin, end).

    Source indices never decrease along an axis, so they are one contiguous
    range: from the first output with i1 >= src to the last with i0 <= src.
    """
    return lower_bound(index, 1, src), lower_bound(index, 0, src + 1)


def _grad_element(grad_out, p, y, x, y_range, x_range, index_y, weight_y, index_x, weight_x):
    """Gradient of input pixel (p, y, x): the weighted sum of the outputs that
    read it. A gather: each thread owns one input pixel, so no atomics."""
    total = grad_out.dtype.type(0)
    for Y in range(y_range[0], y_range[1]):
        wy = axis_weight(index_y, weight_y, Y, y)
        for X in range(x_range[0], x_range[1]):
            total += wy * axis_weight(index_x, weight_x, X, x) * grad_out[p, Y, X]
    return total


def _unravel(i, height, width):
    """(plane, row, col) of flat index ``i`` in a (planes, height, width) array."""
    col = i % width
    rest = i // width
    return rest // height, rest % height, col


lerp = per_element(_lerp)
fill_axis_table = per_element(_fill_axis_table)
lower_bound = per_element(_lower_bound)
axis_weight = per_element(_axis_weight)
output_range = per_element(_output_range)
grad_element = per_element(_grad_element)
unravel = per_element(_unravel)


# --------------------------------------------------------------------------
# CUDA kernels: one thread per output element (forward) or per input
# element (backward, gather). Arrays are (N*C, H, W) views.
# --------------------------------------------------------------------------


def _signature(T):
    return (T[:, :, ::1], T[:, :, ::1], T, T, types.boolean, int64)


@cuda_kernel(_signature)
def nearest_forward_kernel(x, out, scale_h, scale_w, exact, rule):
    i = cuda.grid(1)
    if i < out.size:
        p, Y, X = unravel(i, out.shape[1], out.shape[2])
        real_t = x.dtype.type
        y = nearest_source_index(Y, x.shape[1], out.shape[1], scale_h, exact, rule, real_t)
        x_ = nearest_source_index(X, x.shape[2], out.shape[2], scale_w, exact, rule, real_t)
        out[p, Y, X] = x[p, y, x_]


@cuda_kernel(_signature)
def bilinear_forward_kernel(x, out, scale_h, scale_w, align_corners, rule):
    i = cuda.grid(1)
    if i < out.size:
        p, Y, X = unravel(i, out.shape[1], out.shape[2])
        real_t = x.dtype.type
        y0, y1, wy0, wy1 = linear_source_index(Y, x.shape[1], out.shape[1], scale_h, align_corners, real_t)
        x0, x1, wx0, wx1 = linear_source_index(X, x.shape[2], out.shape[2], scale_w, align_corners, real_t)
        top = lerp(x[p, y0, x0], x[p, y0, x1], wx0, wx1)
        bottom = lerp(x[p, y1, x0], x[p, y1, x1], wx0, wx1)
        out[p, Y, X] = lerp(top, bottom, wy0, wy1)


@cuda_kernel(lambda T: (int64[:, ::1], T[:, ::1], int64, T, types.boolean, types.boolean, int64))
def axis_table_kernel(index, weight, in_size, scale, linear, flag, rule):
    dst = cuda.grid(1)
    if dst < index.shape[1]:
        fill_axis_table(index, weight, dst, in_size, scale, linear, flag, rule)


@cuda_kernel(lambda T: (T[:, :, ::1], T[:, :, ::1], int64[:, ::1], T[:, ::1], int64[:, ::1], T[:, ::1]))
def backward_kernel(grad_out, grad_x, index_y, weight_y, index_x, weight_x):
    i = cuda.grid(1)
    if i < grad_x.size:
        p, y, x = unravel(i, grad_x.shape[1], grad_x.shape[2])
        grad_x[p, y, x] = grad_element(
            grad_out, p, y, x, output_range(index_y, y), output_range(index_x, x),
            index_y, weight_y, index_x, weight_x,
        )


# --------------------------------------------------------------------------
# CPU loops: the same index functions and bodies, parallel over rows. Each
# axis's indices are computed once per call instead of once per element.
# --------------------------------------------------------------------------


#: Output rows per parallel task of the bilinear loops: large enough that a
#: task reuses the input rows it interpolates horizontally, small enough
#: that planes x bands keeps both cores busy on a single plane.
BAND_ROWS = 32


@numba.njit(cache=True, inline="always")
def band_of(task, bands, rows):
    """(image or plane, first row, end row) of parallel task ``task`` of
    images x ``bands`` bands of ``BAND_ROWS`` rows each."""
    band = task % bands
    return task // bands, band * BAND_ROWS, min(rows, band * BAND_ROWS + BAND_ROWS)


@numba.njit(cache=True, inline="always")
def row_runs(source_rows):
    """(run_starts, runs): the output rows that copy the same input row
    (``source_rows[Y]``, non-decreasing) form runs; run r is rows
    ``run_starts[r]`` to ``run_starts[r + 1]``."""
    out_h = source_rows.shape[0]
    run_starts = np.empty(out_h + 1, np.int64)
    runs = 0
    for Y in range(out_h):
        if Y == 0 or source_rows[Y] != source_rows[Y - 1]:
            run_starts[runs] = Y
            runs += 1
    run_starts[runs] = out_h
    return run_starts, runs


@cpu_kernel
def nearest_forward_cpu(x, out, scale_h, scale_w, exact, rule):
    # Output rows that copy the same input row form a run: the first row of
    # a run is gathered, the others are plain copies of it (a memcpy the
    # compiler vectorises), so an upsampling by s gathers 1/s of the rows.
    planes, out_h, out_w = out.shape
    real_t = x.dtype.type
    source_x = np.empty(out_w, np.int64)
    for X in range(out_w):
        source_x[X] = nearest_source_index(X, x.shape[2], out_w, scale_w, exact, rule, real_t)
    source_y = np.empty(out_h, np.int64)
    for Y in range(out_h):
        source_y[Y] = nearest_source_index(Y, x.shape[1], out_h, scale_h, exact, rule, real_t)
    run_starts, runs = row_runs(source_y)
    # Column X copies input X // 2 (an upsampling by 2): a fixed-stride loop.
    pair = out_w == 2 * x.shape[2]
    for X in range(out_w):
        pair = pair and source_x[X] == X // 2
    for task in prange(planes * runs):
        p, r = task // runs, task % runs
        source_row = x[p, source_y[run_starts[r]]]
        first = out[p, run_starts[r]]
        if pair:
            for col in range(out_w // 2):
                first[2 * col] = source_row[col]
                first[2 * col + 1] = source_row[col]
        else:
            for X in range(out_w):
                first[X] = source_row[source_x[X]]
        for Y in range(run_starts[r] + 1, run_starts[r + 1]):
            copy = out[p, Y]
            for X in range(out_w):
                copy[X] = first[X]


@cpu_kernel
def bilinear_forward_cpu(x, out, scale_h, scale_w, align_corners, rule):
    # Separable: each input row a band needs is interpolated along x once
    # (PyTorch's ``top``/``bottom``, the same lerps), then each output row is
    # one contiguous lerp of two of those rows. An upsampling by 2 thus does
    # 1/4 of the horizontal lerps of a per-pixel loop, with identical results.
    planes, out_h, out_w = out.shape
    in_h, in_w = x.shape[1], x.shape[2]
    real_t = x.dtype.type
    # Unsigned column indices: Numba then adds no negative-index wraparound
    # to the gathers below, which makes the horizontal pass about 1.5x faster.
    x0s = np.empty(out_w, np.uint64)
    x1s = np.empty(out_w, np.uint64)
    wx0s = np.empty(out_w, x.dtype)
    wx1s = np.empty(out_w, x.dtype)
    for X in range(out_w):
        x0s[X], x1s[X], wx0s[X], wx1s[X] = linear_source_index(X, in_w, out_w, scale_w, align_corners, real_t)
    y0s = np.empty(out_h, np.int64)
    y1s = np.empty(out_h, np.int64)
    wy0s = np.empty(out_h, x.dtype)
    wy1s = np.empty(out_h, x.dtype)
    for Y in range(out_h):
        y0s[Y], y1s[Y], wy0s[Y], wy1s[Y] = linear_source_index(Y, in_h, out_h, scale_h, align_corners, real_t)
    # At twice the width the tables usually pair the columns (either
    # align_corners): even output column 2j blends input columns j - 1 and j,
    # odd 2j + 1 blends j and j + 1, clamped at the borders. When they do,
    # three shifted contiguous reads and stride-2 writes, which vectorise,
    # replace the gathers (4x faster); the weights still come from the tables.
    pairs = out_w == 2 * in_w and in_w >= 3
    for X in range(out_w):
        i0 = min(max((X - 1) // 2, 0), in_w - 1)
        pairs = pairs and x0s[X] == i0 and x1s[X] == min(i0 + 1, in_w - 1)
    bands = (out_h + BAND_ROWS - 1) // BAND_ROWS
    for task in prange(planes * bands):
        p, first, last = band_of(task, bands, out_h)
        low, high = y0s[first], y1s[last - 1]  # both tables never decrease
        needed = np.zeros(high - low + 1, np.bool_)
        for Y in range(first, last):
            needed[y0s[Y] - low] = True
            needed[y1s[Y] - low] = True
        rows = np.empty((high - low + 1, out_w), x.dtype)
        for y in range(low, high + 1):
            if needed[y - low]:
                source_row = x[p, y]
                row = rows[y - low]
                if pairs:
                    for X in (0, 1, out_w - 2, out_w - 1):
                        row[X] = lerp(source_row[x0s[X]], source_row[x1s[X]], wx0s[X], wx1s[X])
                    left, middle, right = source_row[:in_w - 2], source_row[1:in_w - 1], source_row[2:]
                    inner, w0, w1 = row[2:], wx0s[2:], wx1s[2:]
                    for j in range(in_w - 2):
                        inner[2 * j] = lerp(left[j], middle[j], w0[2 * j], w1[2 * j])
                        inner[2 * j + 1] = lerp(middle[j], right[j], w0[2 * j + 1], w1[2 * j + 1])
                else:
                    for X in range(out_w):
                        row[X] = lerp(source_row[x0s[X]], source_row[x1s[X]], wx0s[X], wx1s[X])
        for Y in range(first, last):
            top, bottom = rows[y0s[Y] - low], rows[y1s[Y] - low]
            wy0, wy1 = wy0s[Y], wy1s[Y]
            out_row = out[p, Y]
            for X in range(out_w):
                out_row[X] = lerp(top[X], bottom[X], wy0, wy1)


@cpu_kernel
def axis_table_cpu(index, weight, in_size, scale, linear, flag, rule):
    for dst in prange(index.shape[1]):
        fill_axis_table(index, weight, dst, in_size, scale, linear, flag, rule)


@cpu_kernel
def backward_cpu(grad_out, grad_x, index_y, weight_y, index_x, weight_x):
    planes, in_h, in_w = grad_x.shape
    x_ranges = np.empty((in_w, 2), np.int64)
    for x in range(in_w):
        x_ranges[x, 0], x_ranges[x, 1] = output_range(index_x, x)
    for row in prange(planes * in_h):
        p, y = row // in_h, row % in_h
        y_range = output_range(index_y, y)
        for x in range(in_w):
            grad_x[p, y, x] = grad_element(
                grad_out, p, y, x, y_range, (x_ranges[x, 0], x_ranges[x, 1]), index_y, weight_y, index_x, weight_x
            )


@cpu_kernel
def nearest_backward_cpu(grad_out, grad_x, index_y, index_x):
    """The nearest adjoint as a gather: input pixel (y, x) sums the outputs
    that copy it, a contiguous range of rows times a contiguous range of
    columns, in PyTorch's order (rows, then columns, from zero), so the
    result is PyTorch's bit for bit. A task owns one input row."""
    planes, in_h, in_w = grad_x.shape
    # Nearest reads one input per output, so the ranges tile the outputs:
    # input x gets columns [col_starts[x], col_starts[x + 1]).
    col_starts = np.empty(in_w + 1, np.int64)
    for x in range(in_w + 1):
        col_starts[x] = lower_bound(index_x, 0, x)
    row_starts = np.empty(in_h + 1, np.int64)
    for y in range(in_h + 1):
        row_starts[y] = lower_bound(index_y, 0, y)
    # An integer upsampling (input x -> columns [2x, 2x + 2) for a factor
    # of 2) gets a fixed-stride loop, which the compiler vectorises.
    pair = grad_out.shape[2] == 2 * in_w
    for x in range(in_w + 1):
        pair = pair and col_starts[x] == 2 * x
    for task in prange(planes * in_h):
        p, y = task // in_h, task % in_h
        sums = grad_x[p, y]
        sums[:] = 0
        for Y in range(row_starts[y], row_starts[y + 1]):
            grad_row = grad_out[p, Y]
            if pair:
                for x in range(in_w):
                    sums[x] = (sums[x] + grad_row[2 * x]) + grad_row[2 * x + 1]
            else:
                for x in range(in_w):
                    total = sums[x]
                    for X in range(col_starts[x], col_starts[x + 1]):
                        total += grad_row[X]
                    sums[x] = total


@cpu_kernel
def bilinear_backward_cpu(grad_out, grad_x, index_y, weight_y, index_x, weight_x):
    """The bilinear adjoint, separable: each output row's gradient is first
    folded along x into one input-width row (the adjoint of the horizontal
    lerps), which then goes to the (at most two) input rows it came from.
    A task owns a band of input rows, so no two tasks write one pixel."""
    planes, in_h, in_w = grad_x.shape
    out_w = grad_out.shape[2]
    bands = (in_h + BAND_ROWS - 1) // BAND_ROWS
    for task in prange(planes * bands):
        p, first, last = band_of(task, bands, in_h)
        sums = grad_x[p, first:last]
        sums[:, :] = 0
        folded = np.empty(in_w, grad_x.dtype)
        # The outputs reading a row of the band: i1 >= first and i0 < last.
        for Y in range(lower_bound(index_y, 1, first), lower_bound(index_y, 0, last)):
            grad_row = grad_out[p, Y]
            folded[:] = 0
            for X in range(out_w):
                g = grad_row[X]
                folded[index_x[0, X]] = fma(weight_x[0, X], g, folded[index_x[0, X]])
                folded[index_x[1, X]] = fma(weight_x[1, X], g, folded[index_x[1, X]])
            for side in range(2):
                y = index_y[side, Y]
                if first <= y < last:
                    w = weight_y[side, Y]
                    target = sums[y - first]
                    for x in range(in_w):
                        target[x] = fma(w, folded[x], target[x])


# Channels-last maps, as the (N, H, W, C) arrays they are in memory: a pixel's
# channels are one contiguous row, so each output pixel is a copy (nearest)
# or two lerps of two such rows (bilinear), vectorised over the channels.
# The axis tables name the pixels; the lerps and sums are the NCHW loops',
# in the same order, so the two layouts give the same values bit for bit.


@cpu_kernel
def nearest_forward_channels_last_cpu(x, out, index_y, index_x):
    # Output rows that copy the same input row form a run (two per input row
    # when upsampling by 2). A task fills one run, two rows at a time from
    # one load of each source pixel: 0.16 ms against 0.26 for a task per
    # row, which loads every pixel again (1 x 64 x 128 x 128, x2, a fresh
    # output each call).
    batch, out_h, out_w, channels = out.shape
    run_starts, runs = row_runs(index_y[0])
    for task in prange(batch * runs):
        n, r = task // runs, task % runs
        source_row = x[n, index_y[0, run_starts[r]]]
        for Y in range(run_starts[r], run_starts[r + 1], 2):
            upper = out[n, Y]
            if Y + 1 < run_starts[r + 1]:
                lower = out[n, Y + 1]
                for X in range(out_w):
                    source, upper_pixel, lower_pixel = source_row[index_x[0, X]], upper[X], lower[X]
                    for c in range(channels):
                        upper_pixel[c] = source[c]
                        lower_pixel[c] = source[c]
            else:  # a run of odd length ends with one row
                for X in range(out_w):
                    source, pixel = source_row[index_x[0, X]], upper[X]
                    for c in range(channels):
                        pixel[c] = source[c]


@cpu_kernel
def bilinear_forward_channels_last_cpu(x, out, index_y, weight_y, index_x, weight_x):
    batch, out_h, out_w, channels = out.shape
    for task in prange(batch * out_h):
        n, Y = task // out_h, task % out_h
        out_row = out[n, Y]
        top_row, bottom_row = x[n, index_y[0, Y]], x[n, index_y[1, Y]]
        wy0, wy1 = weight_y[0, Y], weight_y[1, Y]
        for X in range(out_w):
            pixel = out_row[X]
            wx0, wx1 = weight_x[0, X], weight_x[1, X]
            a0, a1 = top_row[index_x[0, X]], top_row[index_x[1, X]]
            b0, b1 = bottom_row[index_x[0, X]], bottom_row[index_x[1, X]]
            for c in range(channels):
                pixel[c] = lerp(lerp(a0[c], a1[c], wx0, wx1), lerp(b0[c], b1[c], wx0, wx1), wy0, wy1)


@cpu_kernel
def nearest_backward_channels_last_cpu(grad_out, grad_x, index_y, index_x):
    """The nearest adjoint on channels-last maps: each output pixel's
    channels added into the input pixel it copied, output rows and columns
    ascending (PyTorch's order, so the sums are its bit for bit). A task
    owns a band of input rows, so no two tasks write one pixel.

    Flat indices, unsigned, and no array views in the loop: LLVM then
    vectorises the channel loop without overlap checks. 0.81 against 1.25 ms
    with a view per pixel, and 1.59 for PyTorch's kernel (1 x 64 x 256 x 256
    -> 128 x 128, medians of 61 in turns, 2-core Xeon, AVX-512)."""
    batch, in_h, in_w, channels = grad_x.shape
    out_h, out_w = grad_out.shape[1], grad_out.shape[2]
    bands = (in_h + BAND_ROWS - 1) // BAND_ROWS
    flat_grad_out, flat_grad_x = grad_out.reshape(-1), grad_x.reshape(-1)
    pixel = np.uint64(channels)
    for task in prange(batch * bands):
        n, first, last = band_of(task, bands, in_h)
        band = np.uint64((n * in_h + first) * in_w * channels)
        for i in range(np.uint64((last - first) * in_w * channels)):
            flat_grad_x[band + i] = 0
        for Y in range(lower_bound(index_y, 0, first), lower_bound(index_y, 0, last)):
            target_row = np.uint64((n * in_h + index_y[0, Y]) * in_w * channels)
            source = np.uint64((n * out_h + Y) * out_w * channels)
            for X in range(out_w):
                target = target_row + np.uint64(index_x[0, X]) * pixel
                for c in range(pixel):
                    flat_grad_x[target + c] += flat_grad_out[source + c]
                source += pixel


@cpu_kernel
def bilinear_backward_channels_last_cpu(grad_out, grad_x, index_y, weight_y, index_x, weight_x):
    """The bilinear adjoint on channels-last maps, as the NCHW loop does it:
    per output row (ascending), its gradient folded along x, then added to
    the (at most two) input rows it came from. A task owns a band of input
    rows, so no two tasks write one pixel."""
    batch, in_h, in_w, channels = grad_x.shape
    out_w = grad_out.shape[2]
    bands = (in_h + BAND_ROWS - 1) // BAND_ROWS
    for task in prange(batch * bands):
        n, first, last = band_of(task, bands, in_h)
        sums = grad_x[n, first:last]
        sums[:, :, :] = 0
        folded = np.empty((in_w, channels), grad_x.dtype)
        for Y in range(lower_bound(index_y, 1, first), lower_bound(index_y, 0, last)):
            grad_row = grad_out[n, Y]
            folded[:, :] = 0
            for X in range(out_w):
                g = grad_row[X]
                for side in range(2):
                    w, pixel = weight_x[side, X], folded[index_x[side, X]]
                    for c in range(channels):
                        pixel[c] = fma(w, g[c], pixel[c])
            for side in range(2):
                y = index_y[side, Y]
                if first <= y < last:
                    w, target = weight_y[side, Y], sums[y - first]
                    for x in range(in_w):
                        pixel, source = target[x], folded[x]
                        for c in range(channels):
                            pixel[c] = fma(w, source[c], pixel[c])


_FORWARD = {
    ("nearest", "cuda"): nearest_forward_kernel,
    ("nearest", "cpu"): nearest_forward_cpu,
    ("bilinear", "cuda"): bilinear_forward_kernel,
    ("bilinear", "cpu"): bilinear_forward_cpu,
}
_AXIS_TABLE = {"cuda": axis_table_kernel, "cpu": axis_table_cpu}
_BACKWARD = {"cuda": backward_kernel, "cpu": backward_cpu}


# --------------------------------------------------------------------------
# Arguments: output size, scales and index rule, as PyTorch computes them
# --------------------------------------------------------------------------


def _batch_folded(x):
    """The tensor PyTorch's nearest kernel runs on for ``torch.func.vmap``'s
    batched ``x``: the physical tensor with each vmap level's dimension
    folded into N, the innermost level's outermost, as its batching rules
    fold them (a view where the strides allow, else a contiguous copy).
    None where that cannot be asked: under torch.compile (Dynamo traces no
    unwrapping) and for autograd's legacy batched tensors."""
    functorch = torch._C._functorch
    if torch.compiler.is_compiling() or not functorch.is_batchedtensor(x):
        return None
    labels, levels, tensor = list(range(x.dim())), [], x  # the logical dims N, C, H, W are 0..3
    while functorch.is_batchedtensor(tensor):
        levels.append(-1 - len(levels))
        labels.insert(functorch.maybe_get_bdim(tensor), levels[-1])
        tensor = functorch.get_unwrapped(tensor)
    order = [labels.index(label) for label in reversed(levels)] + [labels.index(d) for d in range(x.dim())]
    return tensor.permute(order).reshape(-1, *x.shape[1:])


def nearest_rule(x, out_h, out_w):
    """Which of PyTorch's nearest kernels ``F.interpolate(x)`` runs, so that
    ours reproduces its index math bit for bit: on a GPU its CUDA kernel;
    on the CPU the channels-last kernel for channels-last maps of more than
    3 channels and for small outputs (out_h + out_w <= 128), else the
    generic one (PyTorch's ``_use_channels_last_kernel_2d``)."""
    if x.is_cuda:
        return NEAREST_DEVICE
    if is_vmapped(x):  # a batched tensor cannot tell its format; the folded batch PyTorch runs can
        folded = _batch_folded(x)
        channels_last = folded is not None and folded.is_contiguous(memory_format=torch.channels_last)
    else:
        channels_last = x.is_contiguous(memory_format=torch.channels_last)
    if channels_last and x.shape[1] > 3:
        return NEAREST_LEGACY
    if torch.compiler.is_compiling() or not isinstance(out_h, int) or not isinstance(out_w, int):
        # Traced sizes (torch.export, torch.compile; Dynamo calls its symbolic sizes ints): deciding here would
        # guard the graph to one side of the threshold, and an exported program would refuse a size past it.
        return NEAREST_BY_SIZE
    return sized_rule(NEAREST_BY_SIZE, out_h, out_w)


def sized_rule(rule, out_h, out_w):
    """``rule``, with NEAREST_BY_SIZE decided by the output's size."""
    if rule != NEAREST_BY_SIZE:
        return rule
    return NEAREST_LEGACY if out_h + out_w <= 128 else NEAREST_GENERIC


def axis_scale(in_size, out_size, scale_factor, mode, align_corners, rule, dtype):
    """The coordinate scale of one axis, rounded as PyTorch rounds it
    (``area_pixel_compute_scale`` / ``compute_scales_value``): in float32 for
    the LEGACY and DEVICE nearest rules, else in the opmath type of
    ``dtype``. Returned as a Python float (exact: float32 fits in it)."""
    if mode != "bilinear" and rule != NEAREST_GENERIC:
        real_t = np.float32
    else:
        real_t = np.float64 if dtype == torch.float64 else np.float32
    if mode == "bilinear" and align_corners:
        return float(real_t(in_size - 1) / real_t(out_size - 1)) if out_size > 1 else 0.0
    if scale_factor is not None and scale_factor > 0:
        return float(real_t(1.0 / scale_factor))
    return float(real_t(in_size) / real_t(out_size))


def check_interpolate_arguments(x, size, scale_factor, mode, align_corners, op="interpolate"):
    """Validate the arguments of ``interpolate``; return (out_h, out_w,
    (factor_h, factor_w) or (None, None), align_corners as a bool)."""
    check_feature_map(x, "input", op)
    if not isinstance(mode, str) or mode not in MODES:
        raise ValueError(f"{op}: unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    if mode != "bilinear" and align_corners is not None:
        raise ValueError(
            f"{op}: align_corners={align_corners!r} only applies to mode='bilinear'; "
            f"leave it None for mode={mode!r}"
        )
    if align_corners is not None and not isinstance(align_corners, bool):
        raise TypeError(f"{op}: align_corners must be True, False or None, got {align_corners!r}")
    if size is not None and scale_factor is not None:
        raise ValueError(f"{op}: give size or scale_factor, not both (got size={size!r}, scale_factor={scale_factor!r})")
    if size is None and scale_factor is None:
        raise ValueError(f"{op}: give one of size or scale_factor")
    in_h, in_w = x.shape[2], x.shape[3]
    if size is not None:
        sizes = _pair(size, "size", op)
        for s in sizes:
            if isinstance(s, bool) or not isinstance(s, numbers.Integral):
                raise TypeError(f"{op}: size must be an int or a pair of ints, got {size!r}")
            if s < 1:
                raise ValueError(f"{op}: size must be positive, got {size!r}")
        return int(sizes[0]), int(sizes[1]), (None, None), bool(align_corners)
    factors = _pair(scale_factor, "scale_factor", op)
    for f in factors:
        if isinstance(f, bool) or not isinstance(f, numbers.Real):
            raise TypeError(f"{op}: scale_factor must be a number or a pair of numbers, got {scale_factor!r}")
        if not math.isfinite(f) or f <= 0:
            raise ValueError(f"{op}: scale_factor must be positive and finite, got {scale_factor!r}")
    factors = (float(factors[0]), float(factors[1]))
    out_h, out_w = math.floor(in_h * factors[0]), math.floor(in_w * factors[1])
    if out_h < 1 or out_w < 1:
        raise ValueError(
            f"{op}: scale_factor={scale_factor!r} turns input size ({in_h}, {in_w}) into "
            f"an empty output ({out_h}, {out_w})"
        )
    return out_h, out_w, factors, bool(align_corners)


def _pair(value, name, op):
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{op}: {name} must be a number or a pair (H, W), got {value!r}")
        return tuple(value)
    return (value, value)


# --------------------------------------------------------------------------
# Reference (backend="torch")
# --------------------------------------------------------------------------


def interpolate_reference(x, out_h, out_w, factors, mode, align_corners):
    """The spec: ``F.interpolate`` with the same arguments."""
    kwargs = {"mode": mode}
    if mode == "bilinear":
        kwargs["align_corners"] = align_corners
    if factors[0] is not None:
        kwargs["scale_factor"] = factors
    else:
        kwargs["size"] = (out_h, out_w)
    return F.interpolate(x, **kwargs)


# --------------------------------------------------------------------------
# PyTorch custom operators: torch.ops.upsamplelib.interpolate and its
# adjoint, interpolate_backward. Each is linear in its tensor, and each is
# the other's derivative, so gradients of every order follow.
# --------------------------------------------------------------------------


def _planes(tensor):
    """A contiguous (N, C, H, W) map as its (N*C, H, W) planes: on the CPU
    as a NumPy array, which ``run`` would make anyway (reshaping it costs
    0.2 us, torch's reshape 1.4), on a GPU as a tensor (the cached launch
    takes tensors)."""
    n, c, h, w = tensor.shape
    if tensor.is_cuda:
        return tensor.reshape(n * c, h, w)
    return kernel_array(tensor).reshape(n * c, h, w)


def _loops_take_channels_last(backend, mode, channels):
    """Whether the cpu loops run channels-last maps as they are: the nearest
    modes always, bilinear from 6 channels. Fewer make each pixel's vector
    too short: copying to NCHW and back took 0.57 ms against 1.14 for
    bilinear x2 of a 2 x 2 x 256 x 256 map, forward, and 1.05 against 1.46
    with 4 channels; with 6, 2.04 against 1.86 (test machine)."""
    return backend == "cpu" and (mode != "bilinear" or channels >= 6)


def _runs_channels_last(tensor, backend, mode):
    """Whether the cpu loops take ``tensor`` channels-last, and return their
    result so: a map ``is_only_channels_last``, where ``_loops_take_channels_last``."""
    return _loops_take_channels_last(backend, mode, tensor.shape[1]) and is_only_channels_last(tensor)


def _strides_like_channels_last(x):
    """``suggest_memory_format(x) == torch.channels_last`` for a 4-D ``x``.
    Under torch.jit.trace the sizes are tensors, which it cannot take (the
    trace keeps the layout it saw, as it keeps the sizes)."""
    if x.is_contiguous() and x.shape[1] > 1 and x.shape[2] * x.shape[3] > 1:
        return False  # the usual NCHW map, decided without the rule's 12 us
    if torch.jit.is_tracing():
        return are_strides_like_channels_last_or_false(torch.Size(int(size) for size in x.shape), x.stride())
    if not torch.compiler.is_compiling():  # symbolic sizes take the rule, which guards with care
        _, c, h, w = x.shape
        if c > 1 and h * w > 1 and x.stride() == (c * h * w, 1, w * c, c):
            return True  # a dense channels-last map that is not NCHW too, as the rule says, without it
    return are_strides_like_channels_last_or_false(x.shape, x.stride())


@functools.lru_cache(maxsize=256, typed=True)  # typed: 3.0 and float32(3.0), or True and 1, round differently
def _launch_scales(in_h, in_w, out_h, out_w, mode, align_corners, factor_h, factor_w, rule, dtype):
    """(scale_h, scale_w) in the kernel dtype, and the kernels' flag: the
    same for every call with the same sizes, and 2 us to work out."""
    real_t = np.float32 if dtype == torch.float32 else np.float64
    scale_h = real_t(axis_scale(in_h, out_h, factor_h, mode, align_corners, rule, dtype))
    scale_w = real_t(axis_scale(in_w, out_w, factor_w, mode, align_corners, rule, dtype))
    flag = align_corners if mode == "bilinear" else mode == "nearest-exact"
    return scale_h, scale_w, flag


@operator("interpolate")
def interpolate_op(x: torch.Tensor, out_h: int, out_w: int, mode: str, align_corners: bool,
                   factor_h: Optional[float], factor_w: Optional[float], rule: int, backend: str) -> torch.Tensor:
    """Resize (N, C, h, w) -> (N, C, out_h, out_w) on the Numba kernels
    (channels-last in and out, see ``_runs_channels_last``, else NCHW)."""
    rule = sized_rule(rule, out_h, out_w)
    channels_last = _runs_channels_last(x, backend, mode)
    x = x if channels_last else x.contiguous()
    out = empty_map(x, x.shape[1], out_h, out_w, channels_last)
    scale_h, scale_w, flag = _launch_scales(x.shape[2], x.shape[3], out_h, out_w, mode, align_corners,
                                            factor_h, factor_w, rule, x.dtype)
    if channels_last:
        tables = (*_axis_table(backend, x.shape[2], out_h, scale_h, mode, flag, rule, x),
                  *_axis_table(backend, x.shape[3], out_w, scale_w, mode, flag, rule, x))
        if mode == "bilinear":
            run(bilinear_forward_channels_last_cpu, backend, out.numel(), pixels_array(x), pixels_array(out),
                *tables)
        else:
            index_y, _, index_x, _ = tables
            run(nearest_forward_channels_last_cpu, backend, out.numel(), pixels_array(x), pixels_array(out),
                index_y, index_x)
        return out
    family = "bilinear" if mode == "bilinear" else "nearest"
    run(_FORWARD[(family, backend)], backend, out.numel(), _planes(x), _planes(out), scale_h, scale_w, flag, rule)
    return out


@interpolate_op.register_fake
def _(x, out_h, out_w, mode, align_corners, factor_h, factor_w, rule, backend):
    return empty_map(x, x.shape[1], out_h, out_w, _runs_channels_last(x, backend, mode))


#: Axis tables of maps held on the CPU (cpu loops and the simulator), as
#: NumPy arrays, by everything a table depends on. Building two per call
#: took about 20 of the 67 us of a small channels-last call: a launch
#: each, for a few hundred cheap entries. A GPU builds its tables on every
#: call: a cached one would have to be safe across streams and graph capture.
_CPU_AXIS_TABLES: dict = {}
#: Entries (output pixels along an axis) the cache may hold, all tables
#: together (at most 32 MiB); past it the cache starts over.
_CPU_AXIS_TABLE_ENTRIES = 1 << 20


def _axis_table(backend, in_size, out_size, scale, mode, flag, rule, like):
    """(index, weight): the (2, out_size) table of one axis (see _fill_axis_table).
    The kernels only read them, so a CPU table is shared between calls."""
    if like.is_cuda:
        return _new_axis_table(backend, in_size, out_size, scale, mode, flag, rule, like)
    key = (backend, like.dtype, in_size, out_size, float(scale), mode, flag, rule)
    table = _CPU_AXIS_TABLES.get(key)
    if table is None:
        table = tuple(t.numpy() for t in _new_axis_table(backend, in_size, out_size, scale, mode, flag, rule, like))
        held = sum(kept.shape[1] for kept, _ in _CPU_AXIS_TABLES.values())
        if held + out_size > _CPU_AXIS_TABLE_ENTRIES:  # many sizes (varying inputs): start over
            _CPU_AXIS_TABLES.clear()
        _CPU_AXIS_TABLES[key] = table
    return table


def _new_axis_table(backend, in_size, out_size, scale, mode, flag, rule, like):
    index = torch.empty((2, out_size), dtype=torch.int64, device=like.device)
    weight = like.new_empty((2, out_size))
    run(_AXIS_TABLE[backend], backend, out_size, index, weight, in_size, scale, mode == "bilinear", flag, rule)
    return index, weight


@operator("interpolate_backward")
def interpolate_backward_op(grad_out: torch.Tensor, in_h: int, in_w: int, mode: str, align_corners: bool,
                            factor_h: Optional[float], factor_w: Optional[float], rule: int,
                            backend: str) -> torch.Tensor:
    """The adjoint of ``interpolate``: each input pixel gathers the outputs
    that read it, with their weights (no atomics); in ``grad_out``'s layout
    as ``interpolate`` is."""
    channels_last = _runs_channels_last(grad_out, backend, mode)
    grad_out = grad_out if channels_last else grad_out.contiguous()
    out_h, out_w = grad_out.shape[2], grad_out.shape[3]
    rule = sized_rule(rule, out_h, out_w)
    grad_x = empty_map(grad_out, grad_out.shape[1], in_h, in_w, channels_last)
    scale_h, scale_w, flag = _launch_scales(in_h, in_w, out_h, out_w, mode, align_corners, factor_h, factor_w,
                                            rule, grad_out.dtype)
    index_y, weight_y = _axis_table(backend, in_h, out_h, scale_h, mode, flag, rule, grad_out)
    index_x, weight_x = _axis_table(backend, in_w, out_w, scale_w, mode, flag, rule, grad_out)
    if channels_last and mode != "bilinear":
        run(nearest_backward_channels_last_cpu, backend, grad_x.numel(), pixels_array(grad_out),
            pixels_array(grad_x), index_y, index_x)
    elif channels_last:
        run(bilinear_backward_channels_last_cpu, backend, grad_x.numel(), pixels_array(grad_out),
            pixels_array(grad_x), index_y, weight_y, index_x, weight_x)
    elif backend == "cpu" and mode != "bilinear":
        run(nearest_backward_cpu, backend, grad_x.numel(), _planes(grad_out), _planes(grad_x), index_y, index_x)
    elif backend == "cpu":
        run(bilinear_backward_cpu, backend, grad_x.numel(), _planes(grad_out), _planes(grad_x),
            index_y, weight_y, index_x, weight_x)
    else:
        run(_BACKWARD[backend], backend, grad_x.numel(), _planes(grad_out), _planes(grad_x),
            index_y, weight_y, index_x, weight_x)
    return grad_x


@interpolate_backward_op.register_fake
def _(grad_out, in_h, in_w, mode, align_corners, factor_h, factor_w, rule, backend):
    return empty_map(grad_out, grad_out.shape[1], in_h, in_w, _runs_channels_last(grad_out, backend, mode))


def _remember_sizes(ctx, inputs, output):
    tensor, *arguments = inputs
    ctx.sizes = (tensor.shape[2], tensor.shape[3])
    ctx.arguments = arguments[2:]  # mode ... backend
    ctx.channels_last = not is_vmapped(tensor) and _runs_channels_last(tensor, arguments[-1], arguments[2])


def _interpolate_derivative(ctx, grad_out):
    # The gradient comes back in the layout of the forward's input, as the adjoint runs in grad_out's.
    if not is_vmapped(grad_out):
        grad_out = to_channels_last(grad_out) if ctx.channels_last else to_channels_first(grad_out)
    grad_x = interpolate_backward_op(grad_out, *ctx.sizes, *ctx.arguments)
    return (grad_x,) + (None,) * 8


def _interpolate_backward_derivative(ctx, grad_grad_x):
    grad_grad_out = interpolate_op(grad_grad_x, *ctx.sizes, *ctx.arguments)
    return (grad_grad_out,) + (None,) * 8


interpolate_op.register_autograd(_interpolate_derivative, setup_context=_remember_sizes)
interpolate_backward_op.register_autograd(_interpolate_backward_derivative, setup_context=_remember_sizes)


def _interpolate_flops(mode, out_shape):
    """Multiplies and adds: none for nearest (a copy), 3 lerps of 3 FLOPs
    each per bilinear output."""
    return 0 if mode != "bilinear" else 9 * math.prod(out_shape)


@register_flop_formula(torch.ops.upsamplelib.interpolate)
def _(x_shape, out_h, out_w, mode, *args, out_shape=None, **kwargs):
    return _interpolate_flops(mode, out_shape)


@register_flop_formula(torch.ops.upsamplelib.interpolate_backward)
def _(grad_shape, in_h, in_w, mode, *args, out_shape=None, **kwargs):
    return _interpolate_flops(mode, grad_shape)


# --------------------------------------------------------------------------
# The public function
# --------------------------------------------------------------------------


def interpolate(x, size=None, scale_factor=None, mode="nearest", align_corners=None, backend=None):
    """Upsample (or downsample) a (N, C, H, W) tensor like ``F.interpolate``.

    Args:
        x: float16/bfloat16/float32/float64 tensor; half types are computed
            in float32 and returned in their own dtype.
        size: output size, an int or (H, W). Give this or ``scale_factor``.
        scale_factor: a number or (sh, sw); the output size is
            ``floor(in * scale_factor)`` and the coordinates use
            ``1 / scale_factor``, as PyTorch does by default.
        mode: "nearest", "nearest-exact" or "bilinear".
        align_corners: bilinear only (default False).
        backend: None/"auto", "cuda", "cpu" or "torch" (see backend.py).

    Returns:
        The resized tensor, differentiable with respect to ``x`` to any
        order. nearest and nearest-exact equal ``F.interpolate(x)`` bit for
        bit (PyTorch's index math follows x's device, memory layout and the
        output size; see ``nearest_rule``); bilinear to float rounding.
    """
    op = "interpolate"
    out_h, out_w, factors, corners = check_interpolate_arguments(x, size, scale_factor, mode, align_corners, op)
    backend = reference_for_empty_batch(resolve_backend(backend, [x], op), x.shape[0])
    if backend != "torch" and (split := forward_tangents(x)) is not None:
        (x,), (dx,) = split
        return with_tangent(interpolate(x, size, scale_factor, mode, align_corners, backend),
                            [interpolate(dx, size, scale_factor, mode, align_corners, backend)])
    x_compute = in_dtype(x, kernel_dtype(x.dtype))
    # F.interpolate returns the result in the input's suggested memory format, channels-last for a
    # channels-last input (sliced ones included). The cpu loops take channels-last maps as they are
    # where _loops_take_channels_last; other maps, and the CUDA kernels, go NCHW between layout's
    # copies (whose gradients come back in the copied layout).
    channels_last = not is_vmapped(x) and _strides_like_channels_last(x)
    if backend == "torch":
        out = interpolate_reference(x_compute, out_h, out_w, factors, mode, corners)
    else:
        rule = nearest_rule(x, out_h, out_w) if mode != "bilinear" else NEAREST_GENERIC
        if channels_last:
            native = _loops_take_channels_last(backend, mode, x.shape[1])
            x_compute = to_channels_last(x_compute) if native else to_channels_first(x_compute)
        out = interpolate_op(x_compute, out_h, out_w, mode, corners, *factors, rule, backend)
    out = in_dtype(out, x.dtype)
    # A one-pixel (or one-channel) result is dense in both layouts: F's has channels-last strides.
    return with_channels_last_strides(to_channels_last(out)) if channels_last else out

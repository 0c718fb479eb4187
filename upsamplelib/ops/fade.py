"""FADE: fusing the assets of decoder and encoder (Lu et al., ECCV 2022).

FADE predicts CARAFE kernels from *both* the high-res encoder feature ``en``
(detail: boundaries, matting) and the low-res decoder feature ``de``
(semantics: regions), and gates between the encoder feature and the
reassembled decoder feature.

The kernels come from a **semi-shift convolution**: one k x k conv ``W, b``
applied to the compressed encoder map ``E`` (high res) and to the
compressed decoder map ``D`` (low res), the decoder window moving one
low-res step every ``s`` output steps::

    logits(p) = sum_u W[u] . E(p + u) + b  +  sum_u W[u] . D(p // s + u) + b

``ul.semi_shift_conv(en, de, weight, bias, scale)`` computes this; its
kernel (the GPU's, and the lesson's) does it in one pass, without
materialising ``conv(E)`` or the upsampled ``conv(D)``: the two windows
share the weight, so each tap multiplies ``E + D`` once. (On a CPU the cpu
backend hands the two dense convolutions to PyTorch instead; see its fast
path below.) It equals ``conv2d(en) + nearest_up(conv2d(de))`` (the bias
twice, as in the original) and is *not* a conv over ``nearest_up(de)``.

``ul.FADE(in_channels_en, in_channels_de)`` and ``ul.FADE(..., lite=True)``
are the modules, with the official parameter names.
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from numba import cuda, int64, prange
from torch.utils.flop_counter import register_flop_formula

from ..backend import (cpu_kernel, cuda_kernel, fma, forward_tangents, kernel_variant, operator, per_element,
                       pixels_array, reference_for_empty_batch, resolve_backend, run, run_grid, sum_of_given,
                       with_tangent)
from ..layout import (empty_map, is_only_channels_last, is_vmapped, memory_format, to_channels_first,
                      to_channels_last, transpose_block, with_channels_last_strides, with_layout_strides)
from ..validation import (
    check_batched_map,
    check_bool,
    check_feature_map,
    check_guide_pair,
    check_module_input,
    check_float_tensor,
    check_odd_kernel_size,
    check_positive_int,
    check_same_batch,
    check_upsampled_size,
    in_dtype,
    kernel_dtype,
    shape_str,
)
from .carafe import carafe, slot_columns, unravel4, upsampled_columns

# --------------------------------------------------------------------------
# Per-element bodies, shared by the CUDA kernels and the CPU loops.
# weight: (O, C / groups, k, k); output channel o belongs to group
# o // (O / groups), input channel c to group c // (C / groups).
# --------------------------------------------------------------------------


def _semi_shift_at(en, de, weight, bias, bias_count, n, o, Y, X, scale, groups):
    """logits[n, o, Y, X]: the encoder window around (Y, X) and the decoder
    window around (Y // s, X // s), in one loop over channels and taps. A
    tap outside both maps is skipped, not multiplied by the zero padding
    (a NaN weight there must not reach the output). An absent map has size
    0, so all its taps are outside it."""
    size, in_per_group = weight.shape[2], weight.shape[1]
    first = (o // (weight.shape[0] // groups)) * in_per_group
    total = weight.dtype.type(0)
    for _ in range(bias_count):
        total += bias[o]
    for local in range(in_per_group):
        for uy in range(size):
            for ux in range(size):
                both, inside = window_sum(en, de, n, first + local, Y, X, uy, ux, size // 2, scale)
                if inside:
                    total = fma(weight[o, local, uy, ux], both, total)
    return total


def _window_sum(en, de, n, c, Y, X, uy, ux, pad, scale):
    """(E(p + u) + D(p // s + u), whether either is inside its map) for
    output p = (Y, X) and tap u = (uy, ux) of a window of radius ``pad``;
    a term outside its map is left out, not read as zero padding."""
    en_row, en_col = Y + uy - pad, X + ux - pad
    de_row, de_col = Y // scale + uy - pad, X // scale + ux - pad
    en_inside = 0 <= en_row < en.shape[2] and 0 <= en_col < en.shape[3]
    de_inside = 0 <= de_row < de.shape[2] and 0 <= de_col < de.shape[3]
    if en_inside and de_inside:
        return en[n, c, en_row, en_col] + de[n, c, de_row, de_col], True
    if en_inside:
        return en[n, c, en_row, en_col], True
    if de_inside:
        return de[n, c, de_row, de_col], True
    return en.dtype.type(0), False


def _grad_en_at(grad_out, weight, n, c, Y, X, groups):
    """d loss / d en[n, c, Y, X]: the outputs whose encoder window holds it
    (a stride-1 transposed convolution; taps that would read an output
    outside the map are skipped)."""
    size, in_per_group = weight.shape[2], weight.shape[1]
    out_per_group = weight.shape[0] // groups
    pad = size // 2
    group = c // in_per_group
    total = grad_out.dtype.type(0)
    for o in range(group * out_per_group, (group + 1) * out_per_group):
        for uy in range(size):
            row = Y - uy + pad
            if 0 <= row < grad_out.shape[2]:
                for ux in range(size):
                    col = X - ux + pad
                    if 0 <= col < grad_out.shape[3]:
                        total = fma(weight[o, c - group * in_per_group, uy, ux], grad_out[n, o, row, col], total)
    return total


def _grad_de_at(grad_out, weight, n, c, row, col, scale, groups):
    """d loss / d de[n, c, row, col]: the decoder window of output (Y, X) is
    centred on (Y // s, X // s), so tap u reads ``row`` from the s x s
    outputs attached to low-res pixel (row - uy + pad, col - ux + pad)."""
    size, in_per_group = weight.shape[2], weight.shape[1]
    out_per_group = weight.shape[0] // groups
    pad = size // 2
    group = c // in_per_group
    height, width = grad_out.shape[2] // scale, grad_out.shape[3] // scale
    total = grad_out.dtype.type(0)
    for o in range(group * out_per_group, (group + 1) * out_per_group):
        for uy in range(size):
            anchor_row = row - uy + pad
            if 0 <= anchor_row < height:
                for ux in range(size):
                    anchor_col = col - ux + pad
                    if 0 <= anchor_col < width:
                        pooled = grad_out.dtype.type(0)
                        for Y in range(anchor_row * scale, anchor_row * scale + scale):
                            for X in range(anchor_col * scale, anchor_col * scale + scale):
                                pooled += grad_out[n, o, Y, X]
                        total = fma(weight[o, c - group * in_per_group, uy, ux], pooled, total)
    return total


def _grad_weight_at(grad_out, en, de, o, local, uy, ux, size, scale, groups):
    """d loss / d weight[o, local, uy, ux]: grad_out against E + D through
    that tap, summed over the batch and every output pixel whose tap reads
    inside a map (``_semi_shift_at``'s terms)."""
    pad = size // 2
    c = (o // (grad_out.shape[1] // groups)) * (en.shape[1] // groups) + local
    total = grad_out.dtype.type(0)
    for n in range(grad_out.shape[0]):
        for Y in range(grad_out.shape[2]):
            for X in range(grad_out.shape[3]):
                both, inside = window_sum(en, de, n, c, Y, X, uy, ux, pad, scale)
                if inside:
                    total = fma(grad_out[n, o, Y, X], both, total)
    return total


window_sum = per_element(_window_sum)
semi_shift_at = per_element(_semi_shift_at)
grad_en_at = per_element(_grad_en_at)
grad_de_at = per_element(_grad_de_at)
grad_weight_at = per_element(_grad_weight_at)


# --------------------------------------------------------------------------
# CUDA kernels: one thread per element of what they write
# --------------------------------------------------------------------------


def _map(T):
    return T[:, :, :, ::1]


@cuda_kernel(lambda T: (_map(T), _map(T), _map(T), T[::1], int64, _map(T), int64, int64))
def semi_shift_forward_kernel(en, de, weight, bias, bias_count, out, scale, groups):
    i = cuda.grid(1)
    if i < out.size:
        n, o, Y, X = unravel4(i, out.shape[1], out.shape[2], out.shape[3])
        out[n, o, Y, X] = semi_shift_at(en, de, weight, bias, bias_count, n, o, Y, X, scale, groups)


@cuda_kernel(lambda T: (_map(T), _map(T), _map(T), int64))
def semi_shift_grad_en_kernel(grad_out, weight, grad_en, groups):
    i = cuda.grid(1)
    if i < grad_en.size:
        n, c, Y, X = unravel4(i, grad_en.shape[1], grad_en.shape[2], grad_en.shape[3])
        grad_en[n, c, Y, X] = grad_en_at(grad_out, weight, n, c, Y, X, groups)


@cuda_kernel(lambda T: (_map(T), _map(T), _map(T), int64, int64))
def semi_shift_grad_de_kernel(grad_out, weight, grad_de, scale, groups):
    i = cuda.grid(1)
    if i < grad_de.size:
        n, c, row, col = unravel4(i, grad_de.shape[1], grad_de.shape[2], grad_de.shape[3])
        grad_de[n, c, row, col] = grad_de_at(grad_out, weight, n, c, row, col, scale, groups)


@cuda_kernel(lambda T: (_map(T), _map(T), _map(T), _map(T), int64, int64))
def semi_shift_grad_weight_kernel(grad_out, en, de, grad_weight, scale, groups):
    i = cuda.grid(1)
    if i < grad_weight.size:
        o, local, uy, ux = unravel4(i, grad_weight.shape[1], grad_weight.shape[2], grad_weight.shape[3])
        grad_weight[o, local, uy, ux] = grad_weight_at(grad_out, en, de, o, local, uy, ux, grad_weight.shape[2],
                                                       scale, groups)


#: Most threads of a block of the fast weight-gradient kernel (a power of 2).
REDUCE_THREADS = 256


@cuda_kernel(lambda T: (_map(T), _map(T), _map(T), _map(T), int64, int64))
def semi_shift_grad_weight_reduce_kernel(grad_out, en, de, grad_weight, scale, groups):
    """The fast weight gradient: one block per weight, not one thread. Its
    threads split the batch's pixels (consecutive threads, consecutive
    pixels: coalesced reads), then add their partial sums in shared memory
    by halving. The teaching kernel's thread walks every pixel alone."""
    partial = cuda.shared.array(REDUCE_THREADS, grad_weight.dtype)
    o, local, uy, ux = unravel4(cuda.blockIdx.x, grad_weight.shape[1], grad_weight.shape[2], grad_weight.shape[3])
    size = grad_weight.shape[2]
    c = (o // (grad_out.shape[1] // groups)) * (en.shape[1] // groups) + local
    height, width = grad_out.shape[2], grad_out.shape[3]
    thread, threads = cuda.threadIdx.x, cuda.blockDim.x
    total = grad_weight.dtype.type(0)
    for p in range(thread, grad_out.shape[0] * height * width, threads):
        n, Y, X = p // (height * width), (p // width) % height, p % width
        both, inside = window_sum(en, de, n, c, Y, X, uy, ux, size // 2, scale)
        if inside:
            total = fma(grad_out[n, o, Y, X], both, total)
    partial[thread] = total
    cuda.syncthreads()
    step = threads // 2
    while step > 0:
        if thread < step:
            partial[thread] += partial[thread + step]
        cuda.syncthreads()
        step //= 2
    if thread == 0:
        grad_weight[o, local, uy, ux] = partial[0]


def reduce_threads(pixels):
    """Threads per block of the reduction: a power of 2, at most
    REDUCE_THREADS, no more than the pixels (small maps in the simulator)."""
    threads = 32
    while threads < REDUCE_THREADS and threads < pixels:
        threads *= 2
    return threads


# --------------------------------------------------------------------------
# CPU loops. A thread per element would leave the vector units idle, so
# these walk whole rows: each tap is one contiguous multiply-add over a row.
# They read zero-padded copies of the maps ("columns"), so row segments
# never leave the array; like the GPU bodies they skip the taps that fall
# outside a map (``slot_columns`` gives the columns where a tap is inside),
# so the logits and the gradients of en and de get the same additions in
# the same order as on the GPU. The weight gradient, a sum over every
# pixel, is kept as per-column running sums and agrees with the GPU's to
# rounding.
# --------------------------------------------------------------------------


@cpu_kernel
def sum_pool_cpu(grad_out, scale, pooled):
    """pooled[n, o, a, b] = sum of grad_out over the s x s outputs attached to (a, b)."""
    batch, outputs, height, width = pooled.shape
    for line in prange(batch * outputs * height):
        n, o, a = line // (outputs * height), (line // height) % outputs, line % height
        for b in range(width):
            total = grad_out.dtype.type(0)
            for Y in range(a * scale, a * scale + scale):
                for X in range(b * scale, b * scale + scale):
                    total += grad_out[n, o, Y, X]
            pooled[n, o, a, b] = total


@cpu_kernel
def semi_shift_forward_cpu(en_columns, de_columns, weight, bias, bias_count, out, scale, groups):
    # One line is one output row of one group, for all the group's outputs:
    # each tap's E + D row is formed once and reused by every output, and
    # each output still sums its taps in the GPU's order. An absent map has
    # height 0, so none of its rows is inside.
    batch, outputs, height, width = out.shape
    size, in_per_group = weight.shape[2], weight.shape[1]
    out_per_group = outputs // groups
    pad = size // 2
    en_height, de_height = en_columns.shape[2], de_columns.shape[2]
    de_width = width // scale
    for line in prange(batch * groups * height):
        n, group, Y = line // (groups * height), (line // height) % groups, line % height
        first_out, first_in = group * out_per_group, group * in_per_group
        totals = np.zeros((out_per_group, width), out.dtype)
        for j in range(out_per_group):
            for _ in range(bias_count):
                totals[j, :] += bias[first_out + j]
        summed = np.zeros(width, out.dtype)
        for local in range(in_per_group):
            c = first_in + local
            for uy in range(size):
                en_row, de_row = Y + uy - pad, Y // scale + uy - pad
                en_inside, de_inside = 0 <= en_row < en_height, 0 <= de_row < de_height
                if not (en_inside or de_inside):
                    continue
                for ux in range(size):
                    # The tap's columns inside either map: one range (both
                    # are cut on the same side).
                    begin, end = width, 0
                    if en_inside:
                        en_begin, en_end = slot_columns(ux, 1, pad, width)
                        begin, end = min(begin, en_begin), max(end, en_end)
                    if de_inside:
                        de_begin, de_end = slot_columns(ux, scale, pad, de_width)
                        begin, end = min(begin, de_begin), max(end, de_end)
                    if en_inside and de_inside:
                        en_part = en_columns[n, c, en_row, ux: ux + width]
                        de_part = de_columns[n, c, de_row, ux * scale: ux * scale + width]
                        for X in range(begin, end):
                            summed[X] = en_part[X] + de_part[X]
                    elif en_inside:
                        summed[begin:end] = en_columns[n, c, en_row, ux + begin: ux + end]
                    else:
                        summed[begin:end] = de_columns[n, c, de_row, ux * scale + begin: ux * scale + end]
                    for j in range(out_per_group):
                        w = weight[first_out + j, local, uy, ux]
                        for X in range(begin, end):
                            totals[j, X] = fma(w, summed[X], totals[j, X])
        out[n, first_out: first_out + out_per_group, Y, :] = totals


@cpu_kernel
def transposed_conv_cpu(grad_columns, weight, grad_input, groups):
    """grad_input[n, c, y, x] = sum_{o, u} weight[o, c, u] * grad[n, o, y - uy + p, x - ux + p]
    over the grad pixels inside the map: the gradient of en (from
    grad_out), and of de (from the pooled grad_out)."""
    batch, channels, height, width = grad_input.shape
    size, in_per_group = weight.shape[2], weight.shape[1]
    out_per_group = weight.shape[0] // groups
    pad = size // 2
    # A line is one row of one group's input channels: each row of grad is
    # read once for all of them (as in the forward loop).
    for line in prange(batch * groups * height):
        n, group, y = line // (groups * height), (line // height) % groups, line % height
        totals = np.zeros((in_per_group, width), grad_input.dtype)
        for o in range(group * out_per_group, (group + 1) * out_per_group):
            for uy in range(size):
                row = y - uy + pad
                if 0 <= row < height:
                    for ux in range(size):
                        part = grad_columns[n, o, row, 2 * pad - ux: 2 * pad - ux + width]
                        begin, end = slot_columns(2 * pad - ux, 1, pad, width)
                        for local in range(in_per_group):
                            w = weight[o, local, uy, ux]
                            for x in range(begin, end):
                                totals[local, x] = fma(w, part[x], totals[local, x])
        grad_input[n, group * in_per_group: (group + 1) * in_per_group, y, :] = totals


@cpu_kernel
def correlate_cpu(grad, columns, grad_weight, groups):
    """grad_weight[o, local, uy, ux] = sum_{n, y, x} grad[n, o, y, x] * input[n, c, y + uy - p, x + ux - p]
    over the input pixels inside the map (``columns``: the input
    zero-padded by p columns): the weight gradient
    of a stride-1 conv. The taps are the inner loops, so one row of grad
    and the rows under it are read once for all k*k taps."""
    outputs, in_per_group, size, _ = grad_weight.shape
    batch, _, height, width = grad.shape
    pad = size // 2
    for pair in prange(outputs * in_per_group):
        o, local = pair // in_per_group, pair % in_per_group
        c = (o // (outputs // groups)) * in_per_group + local
        partial = np.zeros((size, size, width), grad_weight.dtype)  # one running sum per tap and column
        for n in range(batch):
            for y in range(height):
                grads = grad[n, o, y]
                for uy in range(size):
                    row = y + uy - pad
                    if 0 <= row < height:
                        for ux in range(size):
                            part = columns[n, c, row, ux: ux + width]
                            begin, end = slot_columns(ux, 1, pad, width)
                            for x in range(begin, end):
                                partial[uy, ux, x] = fma(grads[x], part[x], partial[uy, ux, x])
        for uy in range(size):
            for ux in range(size):
                grad_weight[o, local, uy, ux] = partial[uy, ux].sum()


# --------------------------------------------------------------------------
# The cpu backend's fast path. The semi-shift convolution is two dense
# convolutions (en's, and de's at low resolution) and a nearest upsample-add;
# on a CPU PyTorch's convolutions (oneDNN for float32) beat any loop we could
# write, so the cpu backend hands them the dense part, each in the layout
# that is fastest on every machine measured, or else in the layout of the
# maps as given, so that maps in one layout are not copied:
#
#   convolution (float32, C=64,  AVX-512 machine     AVX2 machine
#   128 x 128 -> 25, 2 cores)    NCHW -> ch.-last    NCHW -> ch.-last
#   forward                      4.2 -> 2.9 ms       4.3 -> 4.1 ms
#   d/d en (transposed)          6.1 -> 2.6 ms       9.0 -> 3.4 ms
#   d/d weight                   6.2 -> 3.8 ms       5.0-7.3 -> 7.4-12 ms
#
# (AVX2: PyTorch's CPU capability "AVX2", a 2026-12 measurement;
# ``python bench/conv_layouts.py`` times these rows on any machine.) So the
# forward and the weight gradient run in the maps' own layout, as the
# two-convolution form does (but the weight gradient NCHW where its
# channels-last form is slow: NCHW_WEIGHT_GRAD_CAPABILITIES), and the
# input gradients channels-last, from a channels-last copy of grad_out
# (0.1 ms), copied back for NCHW maps (0.2-0.4 ms for en's,
# upsamplelib.layout's block transpose; PyTorch's copy 0.5-0.9). On NCHW
# maps this took the bench's forward+backward step from 1.33x the
# two-convolution form's to about 1.0x on the AVX2 machine, where copying
# the maps channels-last for everything had lost on the weight gradient.
# The NCHW transposed convolution's figures above include page faults: in a
# fresh process it maps its scratch afresh on every call. With freed blocks
# reused (a training loop's state, and make bench's), a 2-core AVX-512 Xeon
# (2026-12-07) gave, NCHW -> channels-last: forward 2.61 -> 2.03 ms, d/d en
# 2.39 -> 1.55 (4.85 -> 1.51 in the fresh process), d/d weight 2.57 -> 2.27;
# and for the whole backward on NCHW maps, 7.5 ms this way against 7.0 for
# one convolution_backward per map in NCHW (the two-convolution form's way,
# no copies). There the bench's forward+backward step is 1.09-1.11x the
# two-convolution form's, and about 1.03x with the per-map NCHW backward
# (an A/B of _semi_shift_grads_cpu, not taken: the input gradients' layout
# would then follow the CPU's instruction set, which the operators' fake
# strides would have to follow too, and the AVX2 machine measured the
# opposite). The convolutions are oneDNN's either way; what this path saves
# is the upsampled intermediate and its addition, about 0.3 ms of a 10 ms
# step, so on the CPU it stays near parity with the two-convolution form.
# The decoder's convolution, nearest-upsampled, is added into the encoder's
# in place by a loop below, so the upsampled intermediate is never made.
# On AVX-512 one more step passed parity (PADDED_FILTER_CAPABILITIES below):
# oneDNN's convolutions there work on blocks of 16 output channels, and to
# FADE's 25 logits they ran 1.2-1.4x faster with the filters padded by 7
# zero ones, channels-last, even from NCHW maps. The forward's two
# convolutions run so; a loop drops the padded channels as it adds the
# decoder's share, writing the result in the maps' layout. There the weight
# gradient runs channels-last too, on copies of NCHW maps, at 25 filters:
# padded, it made the step slower. The transposed convolutions stay at 25
# channels too (padded: 1.5 -> 1.9-2.4 ms). The bench's steps against the
# two-convolution form, same process (2-core Xeon, 2026-12-08), before ->
# after: NCHW forward 1.00-1.05 -> 0.72-0.76, forward+backward 0.99-1.03 ->
# 0.82; channels-last forward 1.00-1.05 -> 0.67-0.69, forward+backward
# 1.05-1.06 -> 0.89-0.92.
# PyTorch's zero padding differs from our skipped taps only where a
# non-finite value meets it: a padded zero times a NaN or Inf weight (the
# forward, the en and de gradients), or times a NaN or Inf grad_out (the
# weight gradient). Then the one-pass loops above run instead, so the NaN/Inf
# semantics are the same on every path. The one-pass kernel stays the
# lesson's and the GPU's.
# --------------------------------------------------------------------------


def all_finite(tensor):
    """Whether ``tensor`` holds no NaN or Inf (the fast path's condition),
    read from its sum: one pass and no boolean copy. A NaN or Inf entry
    always reaches the sum; a sum of finite entries that overflows only
    sends the call to the one-pass loops, which are right for any input.
    (The sum read as a Python number: ``torch.isfinite`` on it cost 10 us.)"""
    return math.isfinite(tensor.sum().item())


def _nhwc(tensor):
    """A channels-last tensor as the (N, H, W, C) array it is in memory."""
    return pixels_array(to_channels_last(tensor))


@cpu_kernel
def add_upsampled_channels_first_cpu(high, low, scale):
    """high[n, o, Y, X] += low[n, o, Y // s, X // s], both NCHW: the
    decoder's convolution, nearest-upsampled, added into the encoder's in
    place. One task per low-resolution row, each value read once and added
    to its s x s block: 0.25 ms at 25 x 128 x 128 against 0.54 for one task
    per output row reading low[..., X // s] (test machine)."""
    batch, outputs, height, width = high.shape
    low_height, low_width = height // scale, width // scale
    lines = outputs * low_height
    for line in prange(batch * lines):
        n, rest = line // lines, line % lines
        o, y = rest // low_height, rest % low_height
        low_row = low[n, o, y]
        for dy in range(scale):
            row = high[n, o, y * scale + dy]
            for x in range(low_width):
                value = low_row[x]
                for dx in range(scale):
                    row[x * scale + dx] += value


@cpu_kernel
def add_upsampled_channels_last_cpu(high, low, scale, out):
    """out[n, Y, X, o] = high[n, Y, X, o] + low[n, Y // s, X // s, o] for
    each of out's channels, all channels-last: the decoder's convolution,
    nearest-upsampled, added to the encoder's (the same sums as the NCHW
    loop above). ``out`` is ``high`` itself (in place), or another array
    with at most their channels (their padded filters left out)."""
    batch, height, width, outputs = out.shape
    for line in prange(batch * height):
        n, Y = line // height, line % height
        high_row, low_row, out_row = high[n, Y], low[n, Y // scale], out[n, Y]
        for X in range(width):
            total, high_pixel, low_pixel = out_row[X], high_row[X], low_row[X // scale]
            for o in range(outputs):
                total[o] = high_pixel[o] + low_pixel[o]


@cpu_kernel
def add_upsampled_to_channels_first_cpu(high, low, scale, out):
    """out[n, o, Y, X] = high[n, Y, X, o] + low[n, Y // s, X // s, o]: high
    and low channels-last (N, H, W, P) arrays of P padded filters, out the
    (N, O, H, W) NCHW result, O <= P. Per output row, the decoder's row is
    added into the encoder's in place (32 filters x 128 pixels are 16 KB:
    it stays in the first-level cache), then the row is transposed into
    out 8 x 8 values at a time (``transpose_block``), the channels and
    pixels no whole block covers one at a time."""
    batch, outputs, height, width = out.shape
    filters = high.shape[3]
    plane = height * width
    flat_high, flat_out = high.reshape(high.size), out.reshape(out.size)
    channel_blocks_end, pixel_blocks_end = outputs // 8 * 8, width // 8 * 8
    for line in prange(batch * height):
        n, Y = line // height, line % height
        high_row, low_row = high[n, Y], low[n, Y // scale]
        for X in range(width):
            total, low_pixel = high_row[X], low_row[X // scale]
            for c in range(filters):
                total[c] = total[c] + low_pixel[c]
        row_start = line * width * filters
        for o in range(0, channel_blocks_end, 8):
            out_start = (n * outputs + o) * plane + Y * width
            for X in range(0, pixel_blocks_end, 8):
                transpose_block(flat_high, row_start + X * filters + o, filters, flat_out, out_start + X, plane)
            for X in range(pixel_blocks_end, width):
                for c in range(o, o + 8):
                    out[n, c, Y, X] = high_row[X, c]
        for c in range(channel_blocks_end, outputs):
            out_row = out[n, c, Y]
            for X in range(width):
                out_row[X] = high_row[X, c]


def full_precision(function):
    """``function`` with torch.autocast off on the CPU while it runs. Inside
    an enclosing autocast, PyTorch's convolutions would return bfloat16 (or
    float16), which the Numba loops after them cannot take; autocast acts at
    the op's boundary only. (A fresh context per call: one autocast object
    used as a decorator keeps its saved state on itself, shared by threads.)"""

    @functools.wraps(function)
    def exact(*args, **kwargs):
        if not torch.is_autocast_enabled("cpu"):  # the usual case, without the context's 12 us
            return function(*args, **kwargs)
        with torch.autocast("cpu", enabled=False):
            return function(*args, **kwargs)

    return exact


#: PyTorch's CPU capabilities on which a float32 convolution to more than
#: 16 output channels runs faster channels-last with its filters padded by
#: zero ones to a multiple of 16 (oneDNN's AVX-512 kernels work on blocks of
#: 16 output channels), even from an NCHW map, which oneDNN then reads
#: itself. C=64, 128 x 128, 3 x 3, 2-core Xeon (AVX-512), 2026-12-08, ms:
#:
#:   outputs (padded to)   NCHW   channels-last   ch.-last, padded
#:   25 (32)               3.9    4.3             3.1
#:   36 (48)               5.4    4.6             3.8
#:   49 (64)               7.9    6.8             5.1
#:   64 (64, none added)   8.7    5.8             5.5
#:   16 (32, not used)     2.1    2.4             3.1
#:
#: (``python bench/conv_layouts.py`` gives the first row on any machine.) At
#: 16 outputs NCHW was the fastest, and padding lost, as at 1, 4 and 9 (2.0
#: against 3.0-3.1 ms): there the maps keep their layout. A multiple of 16
#: above 16 runs channels-last with no filter added (64 above; 32 and 48
#: not measured). Not measured on AVX2 (whose kernels work on blocks of 8),
#: so not used there.
PADDED_FILTER_CAPABILITIES = frozenset({"AVX512"})
FILTER_BLOCK = 16
#: Below this many pixels (of the maps a convolution's result covers, the
#: batch's included) padding costs more than it saves: the padded copies and
#: the loop that drops the padded channels take 55-65 us a call. The
#: semi-shift forward to 25 outputs, padded against not (same process, 2-core
#: Xeon): 1.46-1.51x the time at en of 8 x 8 and 16 x 16, 1.37x at 32 x 32
#: and 16 channels, 1.02x at 32 x 32 and 32 or 64 channels, 0.90x at 64 x 64
#: and 16 channels, 0.78-0.80x from 64 x 64 and 64 channels up.
PADDED_FILTER_PIXELS = 64 * 64


def filter_block_multiple(outputs):
    """``outputs`` rounded up to a multiple of ``FILTER_BLOCK``."""
    return -(-outputs // FILTER_BLOCK) * FILTER_BLOCK


def padded_filter_count(outputs, groups, dtype, pixels):
    """The filters a convolution to ``outputs`` channels over ``pixels``
    pixels runs with: rounded up to a multiple of ``FILTER_BLOCK`` where that
    is faster (``PADDED_FILTER_CAPABILITIES``, ``PADDED_FILTER_PIXELS``),
    else None (as given)."""
    if (groups != 1 or outputs <= FILTER_BLOCK or dtype != torch.float32 or pixels < PADDED_FILTER_PIXELS
            or _cpu_capability() not in PADDED_FILTER_CAPABILITIES):
        return None
    return filter_block_multiple(outputs)


def zero_padded(tensor, size, dim=1):
    """A channels-last copy of a 4-D ``tensor`` with zeros added along
    ``dim`` (1: a map's channels, 0: a weight's filters) up to ``size``."""
    shape = list(tensor.shape)
    shape[dim] = size
    padded = torch.empty(shape, dtype=tensor.dtype, device=tensor.device, memory_format=torch.channels_last)
    given = tensor.shape[dim]
    padded.narrow(dim, 0, given).copy_(tensor)
    padded.narrow(dim, given, size - given).zero_()
    return padded


def _semi_shift_with_padded_filters(en, de, weight, bias, scale, filters, channels_last):
    """``dense_semi_shift`` of both maps with ``filters`` filters, the
    weight's and zero ones, channels-last (``padded_filter_count``); the
    padded channels are left out as the decoder's share is added, into a
    new result in the layout asked for. The maps are taken as given."""
    outputs, pad = weight.shape[0], weight.shape[2] // 2
    padded = zero_padded(weight, filters, dim=0)
    padded_bias = F.pad(bias, (0, filters - outputs)) if bias is not None else None
    high, low = (F.conv2d(feature, padded, padded_bias, padding=pad).contiguous(memory_format=torch.channels_last)
                 for feature in (en, de))
    out = empty_map(high, outputs, high.shape[2], high.shape[3], channels_last)
    if channels_last:
        run(add_upsampled_channels_last_cpu, "cpu", out.numel(), _nhwc(high), _nhwc(low), scale, _nhwc(out))
    else:
        run(add_upsampled_to_channels_first_cpu, "cpu", out.numel(), _nhwc(high), _nhwc(low), scale, out)
    return out


@full_precision
def dense_semi_shift(en, de, weight, bias, scale, groups, channels_last=False):
    """conv2d(en) + nearest_up(conv2d(de)), the bias on each (either map may
    be None), with the convolutions run in the result's layout (NCHW, or
    channels-last): the layout the caller's maps are in, so no map is
    copied unless en and de differ (de then is). The decoder's share is
    added into the encoder's convolution in place, so the upsampled
    intermediate is never made. With both maps given, on the CPUs where it
    is faster, the convolutions run channels-last with padded filters
    instead (``padded_filter_count``). Equals the one-pass loop to rounding
    when ``weight`` is finite."""
    filters = None
    if en is not None and de is not None:
        filters = padded_filter_count(weight.shape[0], groups, weight.dtype, en.shape[0] * en.shape[2] * en.shape[3])
    if filters is not None:
        return _semi_shift_with_padded_filters(en, de, weight, bias, scale, filters, channels_last)
    pad = weight.shape[2] // 2
    layout = memory_format(channels_last)
    weight = weight.contiguous(memory_format=layout)
    low = None
    if de is not None:
        low = F.conv2d(de.contiguous(memory_format=layout), weight, bias, padding=pad, groups=groups)
    if en is None:
        up = F.interpolate(low, scale_factor=scale, mode="nearest")  # PyTorch's nearest keeps the layout
        return with_layout_strides(up, channels_last)
    high = F.conv2d(en.contiguous(memory_format=layout), weight, bias, padding=pad, groups=groups)
    # The array the sums go into, with the strides the fake promises.
    high = with_layout_strides(high, channels_last)
    if low is not None:
        if channels_last:
            pixels = _nhwc(high)
            run(add_upsampled_channels_last_cpu, "cpu", high.numel(), pixels, _nhwc(low), scale, pixels)
        else:
            run(add_upsampled_channels_first_cpu, "cpu", high.numel(), high, low.contiguous(), scale)
    return high


def dense_sum_pool(grad_out, scale):
    """grad_out summed over each s x s block, by PyTorch's pooling, which
    keeps a channels-last grad_out channels-last."""
    return F.avg_pool2d(grad_out, scale, divisor_override=1)


@full_precision
def dense_input_grad(grad, weight, groups):
    """conv_transpose2d(grad, weight), channels-last: d loss / d en from
    grad_out, or d loss / d de from the pooled grad_out."""
    pad = weight.shape[2] // 2
    return with_channels_last_strides(F.conv_transpose2d(to_channels_last(grad), to_channels_last(weight),
                                                         padding=pad, groups=groups))


def one_pass_semi_shift_cpu(en, de, weight, bias, scale, groups=1):
    """The one-pass CPU loop (``semi_shift_forward_cpu``), which the cpu
    backend runs when ``weight`` is not finite: the same additions in the
    same order as the CUDA kernel, so bit for bit its result. Either map
    may be None; maps in another layout are made contiguous."""
    batch, channels = _present(en, de)
    height, width = _output_size(en, de, scale)
    bias_count = (en is not None) + (de is not None) if bias is not None else 0
    bias = bias.contiguous() if bias is not None else weight.new_zeros(weight.shape[0])
    en, de = _or_absent(en, batch, channels, weight), _or_absent(de, batch, channels, weight)
    out = weight.new_empty((batch, weight.shape[0], height, width))
    pad = weight.shape[2] // 2
    run(semi_shift_forward_cpu, "cpu", out.numel(), upsampled_columns(en, 1, pad), upsampled_columns(de, scale, pad),
        weight.contiguous(), bias, bias_count, out, scale, groups)
    return out


#: PyTorch's CPU capabilities (``torch.backends.cpu.get_cpu_capability()``)
#: on which the weight gradient of a channels-last map runs faster in NCHW,
#: the copies included. With AVX2 the channels-last one took 7.1 ms against
#: 5.2 (C=64, 128 x 128 -> 25, 3 x 3, float32; 43 ms against 38 in float64,
#: where PyTorch's own loop makes a channels-last map contiguous itself) and
#: the block transpose's copies about 0.5: the bench's channels-last
#: forward+backward step went from 1.06x the two-convolution form's to
#: 0.89-0.92x (2-core AMD EPYC, znver3, 2026-12-07; freed blocks reused, a
#: training loop's state). In a fresh process, where glibc maps the copies
#: afresh (2,112 page faults a call), the two ways were even: 0.94-1.12x
#: against 0.86-1.08x over three runs (``python bench/conv_layouts.py``, last
#: rows, gives both). An earlier AVX2 machine (AMD EPYC, PyTorch's capability
#: AVX2) measured the same way round: 7.4-12 ms channels-last against
#: 5.0-7.3. With AVX-512 the channels-last one was the faster (2.27 against
#: 2.57 ms, 2-core Xeon), so there, and with the capabilities not measured
#: (an ARM CPU's, DEFAULT), the weight gradient keeps its map's layout. The
#: capability is ATen's; oneDNN picks its kernels from the CPU itself, so
#: ``ATEN_CPU_CAPABILITY`` set below the CPU's level moves this choice but
#: not oneDNN's (speed only). The result is the weight's shape either way:
#: no stride a compiled graph sees depends on this.
NCHW_WEIGHT_GRAD_CAPABILITIES = frozenset({"AVX2"})


@functools.cache
def _cpu_capability() -> str:
    return torch.backends.cpu.get_cpu_capability()


def _weight_grad_in_channels_last(feature) -> bool:
    """Whether a map's share of the weight gradient runs channels-last: a
    channels-last map, except on a CPU where NCHW is faster."""
    return is_only_channels_last(feature) and _cpu_capability() not in NCHW_WEIGHT_GRAD_CAPABILITIES


@full_precision
def dense_weight_grad(grad_out, en, de, kernel_size, scale, groups):
    """d loss / d weight with PyTorch's convolution weight gradient: en's
    against grad_out, de's against grad_out summed over s x s blocks, each
    in the layout of its map as given, or NCHW on the CPUs named by
    ``NCHW_WEIGHT_GRAD_CAPABILITIES`` (see the note above the fast path),
    or channels-last, on copies of NCHW maps, where the forward pads its
    filters (``padded_filter_count``; the gradient itself is not padded).
    Equals the one-pass loops to rounding when ``grad_out`` is finite."""
    channels = (en if en is not None else de).shape[1]
    outputs = grad_out.shape[1]
    shape = (outputs, channels // groups, kernel_size, kernel_size)
    pad = kernel_size // 2
    # Measured with the padded forward (make bench's step, C=64, 128 x 128, 25 outputs, same process, 2-core
    # Xeon): NCHW maps' weight gradient channels-last on copies took the step to 0.78-0.81 of the
    # two-convolution form's, against 0.81-0.86 with 32 padded filters and 0.98 in NCHW.
    all_channels_last = padded_filter_count(outputs, groups, grad_out.dtype,
                                            grad_out.shape[0] * grad_out.shape[2] * grad_out.shape[3]) is not None
    total = None
    for feature, grad in ((en, grad_out), (de, dense_sum_pool(grad_out, scale) if de is not None else None)):
        if feature is not None:
            # NCHW copies by the block transpose: PyTorch's own took 0.5-0.9 ms for en's, against 0.2-0.4.
            in_layout = (to_channels_last if all_channels_last or _weight_grad_in_channels_last(feature)
                         else to_channels_first)
            share = torch.nn.grad.conv2d_weight(in_layout(feature), shape, in_layout(grad), padding=pad,
                                                groups=groups)
            total = share if total is None else total + share
    return total.contiguous()


# --------------------------------------------------------------------------
# Reference (backend="torch"), and the two-convolution formulation
# --------------------------------------------------------------------------


def two_convolutions(en, de, weight, bias, scale, groups=1):
    """conv2d(en) + nearest_up(conv2d(de)): two convolutions and an
    upsampled intermediate, the formulation of the original code (and the
    fastest plain-PyTorch one). It multiplies the zero padding, so a NaN
    weight reaches every border pixel."""
    pad = weight.shape[2] // 2
    encoder = F.conv2d(en, weight, bias, padding=pad, groups=groups)
    decoder = F.conv2d(de, weight, bias, padding=pad, groups=groups)
    return encoder + F.interpolate(decoder, scale_factor=scale, mode="nearest")


def convolution_inside_map(feature, weight, groups=1):
    """conv2d(feature, weight, padding=k//2, groups=groups), one tap at a
    time, with each tap's terms kept only where it reads inside the map:
    the kernels' semantics (out-of-map taps skipped, not multiplied by the
    padding), in plain PyTorch."""
    n, _, height, width = feature.shape
    outputs, in_per_group, size, _ = weight.shape
    pad = size // 2
    padded = F.pad(feature, (pad, pad, pad, pad))
    grouped_weight = weight.reshape(groups, outputs // groups, in_per_group, size, size)
    rows = torch.arange(height, device=feature.device)
    cols = torch.arange(width, device=feature.device)
    total = feature.new_zeros((n, outputs, height, width))
    for uy in range(size):
        rows_inside = ((rows + uy - pad >= 0) & (rows + uy - pad < height))[:, None]
        for ux in range(size):
            cols_inside = ((cols + ux - pad >= 0) & (cols + ux - pad < width))[None, :]
            window = padded[:, :, uy: uy + height, ux: ux + width].reshape(n, groups, in_per_group, height, width)
            term = torch.einsum("goc,ngchw->ngohw", grouped_weight[..., uy, ux], window)
            term = term.reshape(n, outputs, height, width)
            total = total + torch.where(rows_inside & cols_inside, term, torch.zeros((), dtype=term.dtype,
                                                                                    device=term.device))
    return total


def semi_shift_conv_reference(en, de, weight, bias, scale, groups=1):
    """The spec in plain PyTorch: the two convolutions with out-of-map taps
    skipped, the decoder's upsampled, the bias on both."""
    encoder = convolution_inside_map(en, weight, groups)
    decoder = convolution_inside_map(de, weight, groups)
    if bias is not None:
        encoder = encoder + bias.view(1, -1, 1, 1)
        decoder = decoder + bias.view(1, -1, 1, 1)
    return encoder + F.interpolate(decoder, scale_factor=scale, mode="nearest")


# --------------------------------------------------------------------------
# PyTorch custom operators. The semi-shift convolution F(en, de, W) is
# linear in (en, de) and in W; its three derivatives are
#   encoder_grad(g, W)      (d/d en: a transposed convolution of g)
#   decoder_grad(g, W)      (d/d de: the same, of g summed over s x s blocks)
#   weight_grad(g, en, de)  (d/d W: g correlated with en and de)
# and the derivatives of those are F and each other again (with en or de
# absent: ``None``, a map with no pixels, all of whose taps are skipped):
#   encoder_grad(g, W): d/dg = F(G, None, W), d/dW = weight_grad(g, G, None)
#   decoder_grad(g, W): d/dg = F(None, G, W), d/dW = weight_grad(g, None, G)
#   weight_grad(g, en, de): d/dg = F(en, de, G), d/d en = encoder_grad(g, G),
#                           d/d de = decoder_grad(g, G)
# so gradients of every order come from these four ops.
# --------------------------------------------------------------------------


def _present(en, de):
    """(batch, channels) of whichever map is given."""
    given = en if en is not None else de
    return given.shape[0], given.shape[1]


def _or_absent(feature, batch, channels, like):
    """``feature`` made contiguous, or a map with no pixels if it is None."""
    return feature.contiguous() if feature is not None else like.new_empty((batch, channels, 0, 0))


def _output_size(en, de, scale):
    return (en.shape[2], en.shape[3]) if en is not None else (scale * de.shape[2], scale * de.shape[3])


@operator("semi_shift_conv")
def semi_shift_conv_op(en: Optional[torch.Tensor], de: Optional[torch.Tensor], weight: torch.Tensor,
                       bias: Optional[torch.Tensor], scale: int, groups: int, backend: str,
                       channels_last: bool = False) -> torch.Tensor:
    """conv(en) + nearest_up(conv(de)) in one pass, the bias added once per
    given map (arguments already checked). ``channels_last``: the cpu
    backend returns the result channels-last (see ``_returns_channels_last``);
    the CUDA kernels write it NCHW. (Its default keeps graphs saved before it
    existed, by torch.export or torch.jit, loading.)"""
    batch, channels = _present(en, de)
    height, width = _output_size(en, de, scale)
    if backend == "cpu":
        if all_finite(weight):
            return dense_semi_shift(en, de, weight, bias, scale, groups, channels_last)
        out = one_pass_semi_shift_cpu(en, de, weight, bias, scale, groups)
        return with_channels_last_strides(out) if channels_last else out
    weight = weight.contiguous()
    bias_count = (en is not None) + (de is not None) if bias is not None else 0
    bias = bias.contiguous() if bias is not None else weight.new_zeros(weight.shape[0])
    en, de = _or_absent(en, batch, channels, weight), _or_absent(de, batch, channels, weight)
    out = weight.new_empty((batch, weight.shape[0], height, width))
    run(semi_shift_forward_kernel, backend, out.numel(), en, de, weight, bias, bias_count, out, scale, groups)
    return out


@semi_shift_conv_op.register_fake
def _(en, de, weight, bias, scale, groups, backend, channels_last=False):
    batch, _ = _present(en, de)
    return torch.empty((batch, weight.shape[0], *_output_size(en, de, scale)), dtype=weight.dtype,
                       device=weight.device, memory_format=memory_format(channels_last and backend == "cpu"))


def _returns_channels_last(en, de, backend) -> bool:
    """Whether ``semi_shift_conv`` returns its result channels-last: on the
    cpu backend, where the map that sets the output's size (``en``, else
    ``de``) is a dense channels-last map that is not also NCHW, as
    PyTorch's convolutions and ``ul.interpolate`` keep one. A batched
    tensor (vmap) cannot tell its layout: NCHW."""
    given = en if en is not None else de
    return backend == "cpu" and not _under_functorch(given) and is_only_channels_last(given)


def _sum_pool_loop(grad_out, scale):
    """grad_out summed over each s x s block: the decoder's share of it
    (the one-pass paths' Numba loop; the fast path uses dense_sum_pool)."""
    pooled = grad_out.new_empty((grad_out.shape[0], grad_out.shape[1], grad_out.shape[2] // scale,
                                 grad_out.shape[3] // scale))
    run(sum_pool_cpu, "cpu", pooled.numel(), grad_out, scale, pooled)
    return pooled


# The input gradients come back channels-last from the cpu backend's operators, as its convolutions give
# them; _semi_shift_grads_cpu and _weight_grad_derivative copy them back for NCHW maps (_in_layout_of).


def _input_grad_like(grad_out, channels, height, width, backend):
    """An empty input gradient, channels-last on the cpu backend."""
    return empty_map(grad_out, channels, height, width, backend == "cpu")


@operator("semi_shift_conv_encoder_grad")
def encoder_grad_op(grad_out: torch.Tensor, weight: torch.Tensor, groups: int, backend: str) -> torch.Tensor:
    """d loss / d en of the semi-shift convolution: a stride-1 transposed
    convolution of grad_out (channels-last on the cpu backend)."""
    if backend == "cpu" and all_finite(weight):
        return dense_input_grad(grad_out, weight, groups)
    grad_out, weight = grad_out.contiguous(), weight.contiguous()
    grad_en = grad_out.new_empty((grad_out.shape[0], weight.shape[1] * groups, grad_out.shape[2],
                                  grad_out.shape[3]))
    if backend != "cpu":
        run(semi_shift_grad_en_kernel, backend, grad_en.numel(), grad_out, weight, grad_en, groups)
        return grad_en
    pad = weight.shape[2] // 2
    run(transposed_conv_cpu, backend, grad_en.numel(), upsampled_columns(grad_out, 1, pad), weight, grad_en, groups)
    return with_channels_last_strides(to_channels_last(grad_en))


@encoder_grad_op.register_fake
def _(grad_out, weight, groups, backend):
    return _input_grad_like(grad_out, weight.shape[1] * groups, grad_out.shape[2], grad_out.shape[3], backend)


@operator("semi_shift_conv_decoder_grad")
def decoder_grad_op(grad_out: torch.Tensor, weight: torch.Tensor, scale: int, groups: int,
                    backend: str) -> torch.Tensor:
    """d loss / d de of the semi-shift convolution. All s x s outputs of a
    block see the same decoder window, so only their summed gradient
    matters: the CPU path pools first and works at low resolution
    (channels-last on the cpu backend)."""
    if backend == "cpu" and all_finite(weight):
        return dense_input_grad(dense_sum_pool(grad_out, scale), weight, groups)
    grad_out, weight = grad_out.contiguous(), weight.contiguous()
    grad_de = grad_out.new_empty((grad_out.shape[0], weight.shape[1] * groups, grad_out.shape[2] // scale,
                                  grad_out.shape[3] // scale))
    if backend != "cpu":
        run(semi_shift_grad_de_kernel, backend, grad_de.numel(), grad_out, weight, grad_de, scale, groups)
        return grad_de
    pad = weight.shape[2] // 2
    run(transposed_conv_cpu, backend, grad_de.numel(), upsampled_columns(_sum_pool_loop(grad_out, scale), 1, pad),
        weight, grad_de, groups)
    return with_channels_last_strides(to_channels_last(grad_de))


@decoder_grad_op.register_fake
def _(grad_out, weight, scale, groups, backend):
    return _input_grad_like(grad_out, weight.shape[1] * groups, grad_out.shape[2] // scale,
                            grad_out.shape[3] // scale, backend)


@operator("semi_shift_conv_weight_grad")
def weight_grad_op(grad_out: torch.Tensor, en: Optional[torch.Tensor], de: Optional[torch.Tensor],
                   kernel_size: int, scale: int, groups: int, backend: str) -> torch.Tensor:
    """d loss / d weight of the semi-shift convolution: grad_out against
    the given maps, through every tap."""
    batch, channels = _present(en, de)
    shape = (grad_out.shape[1], channels // groups, kernel_size, kernel_size)
    if backend == "cpu" and all_finite(grad_out):
        return dense_weight_grad(grad_out, en, de, kernel_size, scale, groups)
    grad_out = grad_out.contiguous()
    if backend == "cpu":
        pad = kernel_size // 2
        grad_weight = grad_out.new_zeros(shape)
        for feature, grad in ((en, grad_out), (de, _sum_pool_loop(grad_out, scale) if de is not None else None)):
            if feature is not None:
                share = grad_out.new_empty(shape)
                run(correlate_cpu, backend, share.numel(), grad, upsampled_columns(feature.contiguous(), 1, pad),
                    share, groups)
                grad_weight += share
        return grad_weight
    grad_weight = grad_out.new_empty(shape)
    maps = (grad_out, _or_absent(en, batch, channels, grad_out), _or_absent(de, batch, channels, grad_out),
            grad_weight, scale, groups)
    if kernel_variant() == "fast":
        threads = reduce_threads(grad_out.shape[0] * grad_out.shape[2] * grad_out.shape[3])
        run_grid(semi_shift_grad_weight_reduce_kernel, grad_weight.numel(), threads, *maps)
    else:
        run(semi_shift_grad_weight_kernel, backend, grad_weight.numel(), *maps)
    return grad_weight


@weight_grad_op.register_fake
def _(grad_out, en, de, kernel_size, scale, groups, backend):
    _, channels = _present(en, de)
    return grad_out.new_empty((grad_out.shape[1], channels // groups, kernel_size, kernel_size))


def _save_semi_shift(ctx, inputs, output):
    en, de, weight, bias, scale, groups, backend = inputs[:7]  # without the layout, which a saved graph may lack
    ctx.save_for_backward(en, de, weight)
    ctx.config = (scale, groups, backend)
    ctx.bias_count = (en is not None) + (de is not None)


def _under_functorch(*tensors) -> bool:
    """Whether a tensor is wrapped by a torch.func transform (vmap) or
    batched by autograd's own vmap (``is_grads_batched``, ``vectorize=True``),
    which cannot tell or change its memory format: the cpu path's dense
    functions then make their channels-last copies inside the op."""
    if torch.compiler.is_compiling():  # Dynamo can trace only the vmap query
        return any(t is not None and is_vmapped(t) for t in tensors)
    functorch = torch._C._functorch
    return any(t is not None and (functorch.is_functorch_wrapped_tensor(t) or functorch.is_legacy_batchedtensor(t))
               for t in tensors)


def _semi_shift_derivative(ctx, grad_out):
    en, de, weight = ctx.saved_tensors
    scale, groups, backend = ctx.config
    needs = ctx.needs_input_grad
    if backend == "cpu":
        return _semi_shift_grads_cpu(grad_out, en, de, weight, scale, groups, needs, ctx.bias_count)
    grad_bias = ctx.bias_count * grad_out.sum(dim=(0, 2, 3)) if needs[3] else None
    grad_en = encoder_grad_op(grad_out, weight, groups, backend) if needs[0] else None
    grad_de = decoder_grad_op(grad_out, weight, scale, groups, backend) if needs[1] else None
    grad_weight = None
    if needs[2]:
        grad_weight = weight_grad_op(grad_out, en, de, weight.shape[2], scale, groups, backend)
    return grad_en, grad_de, grad_weight, grad_bias, None, None, None, None


def _semi_shift_grads_cpu(grad_out, en, de, weight, scale, groups, needs, bias_count):
    """The cpu backend's gradients, with grad_out summed over each s x s
    block once (all outputs of a block see the same decoder window): the
    decoder's input and weight gradients are then the encoder's ops at low
    resolution against that sum, as its loops compute them, and the bias's
    is its total, a sum over s*s times fewer values. At 1 x 25 x 128 x 128,
    s=2, each pooling took 66 us, the bias's sum 67 us against 16 (test
    machine; PyTorch's pooling of an NCHW map took 0.43 ms on an AMD EPYC,
    of a channels-last one 0.08, hence the pooling of the copy below)."""
    # The bias's gradient too comes from the block sums whenever de is given, as the reference's does
    # (its upsampling's backward sums the blocks): a block whose finite values overflow then gives the
    # same Inf or NaN, whichever other inputs need a gradient.
    grad_bias = None
    if needs[3] and de is None:
        # From grad_out as it came: summed over (0, 2, 3), a channels-last copy reads its memory across
        # the channels and took 0.07 ms against 0.014 at 1 x 25 x 128 x 128.
        grad_bias = bias_count * grad_out.sum(dim=(0, 2, 3))
    functorch = _under_functorch(grad_out, en, de)
    # The input gradients' transposed convolutions channels-last, in every layout.
    last = (lambda grad: grad) if functorch else to_channels_last
    # The block sums from that copy when there is one: PyTorch's pooling of an NCHW grad_out took 0.43 ms,
    # of its channels-last copy 0.08 (1 x 25 x 128 x 128, AMD EPYC).
    grad_last = last(grad_out) if needs[0] else grad_out
    pooled = dense_sum_pool(grad_last, scale) if de is not None and (needs[1] or needs[2] or needs[3]) else None
    if needs[3] and de is not None:
        # Summed in grad_out's layout, whichever the block sums came in: the order of the additions (which
        # decides between Inf and NaN where they overflow) must not depend on en needing a gradient.
        in_grad_layout = pooled if grad_last is grad_out else _in_layout_of(pooled, grad_out)
        grad_bias = bias_count * in_grad_layout.sum(dim=(0, 2, 3))
    grad_weight = None
    if needs[2]:
        # Each share in its map's layout or NCHW (dense_weight_grad), and before the input
        # gradients: after them, more of the memory came as fresh pages on every call (the four
        # convolutions and copies at 1 x 64 x 128 x 128: 3,500 page faults and 20 ms a call, against
        # 2,000 and 16.5 ms in this order; glibc's default heap, AVX2 machine; bench/conv_layouts.py).
        shares = [weight_grad_op(grad, feature, None, weight.shape[2], 1, groups, "cpu")
                  for feature, grad in ((en, grad_out), (de, pooled)) if feature is not None]
        grad_weight = shares[0] if len(shares) == 1 else shares[0] + shares[1]
    grad_en = encoder_grad_op(grad_last, weight, groups, "cpu") if needs[0] else None
    grad_de = encoder_grad_op(last(pooled), weight, groups, "cpu") if needs[1] else None
    if not functorch:
        grad_en, grad_de = _in_layout_of(grad_en, en), _in_layout_of(grad_de, de)
    return grad_en, grad_de, grad_weight, grad_bias, None, None, None, None


def _in_layout_of(grad, feature):
    """A map's gradient from the cpu backend's operators (channels-last) in
    that map's layout: copied back to NCHW for an NCHW map."""
    if grad is None or is_only_channels_last(feature):
        return grad
    return to_channels_first(grad)


def _save_encoder_grad(ctx, inputs, output):
    grad_out, weight, groups, backend = inputs
    ctx.save_for_backward(grad_out, weight)
    ctx.config = (groups, backend)


def _encoder_grad_derivative(ctx, grad_grad_en):
    grad_out, weight = ctx.saved_tensors
    groups, backend = ctx.config
    grad_grad_out = grad_weight = None
    if ctx.needs_input_grad[0]:
        grad_grad_out = semi_shift_conv_op(grad_grad_en, None, weight, None, 1, groups, backend, False)
    if ctx.needs_input_grad[1]:
        grad_weight = weight_grad_op(grad_out, grad_grad_en, None, weight.shape[2], 1, groups, backend)
    return grad_grad_out, grad_weight, None, None


def _save_decoder_grad(ctx, inputs, output):
    grad_out, weight, scale, groups, backend = inputs
    ctx.save_for_backward(grad_out, weight)
    ctx.config = (scale, groups, backend)


def _decoder_grad_derivative(ctx, grad_grad_de):
    grad_out, weight = ctx.saved_tensors
    scale, groups, backend = ctx.config
    grad_grad_out = grad_weight = None
    if ctx.needs_input_grad[0]:
        grad_grad_out = semi_shift_conv_op(None, grad_grad_de, weight, None, scale, groups, backend, False)
    if ctx.needs_input_grad[1]:
        grad_weight = weight_grad_op(grad_out, None, grad_grad_de, weight.shape[2], scale, groups, backend)
    return grad_grad_out, grad_weight, None, None, None


def _save_weight_grad(ctx, inputs, output):
    grad_out, en, de, kernel_size, scale, groups, backend = inputs
    ctx.save_for_backward(grad_out, en, de)
    ctx.config = (scale, groups, backend)


def _weight_grad_derivative(ctx, grad_grad_weight):
    grad_out, en, de = ctx.saved_tensors
    scale, groups, backend = ctx.config
    needs = ctx.needs_input_grad
    grad_grad_out = grad_en = grad_de = None
    if needs[0]:
        grad_grad_out = semi_shift_conv_op(en, de, grad_grad_weight, None, scale, groups, backend, False)
    if needs[1]:
        grad_en = encoder_grad_op(grad_out, grad_grad_weight, groups, backend)
    if needs[2]:
        grad_de = decoder_grad_op(grad_out, grad_grad_weight, scale, groups, backend)
    if backend == "cpu" and not _under_functorch(grad_out, en, de):  # the maps are the user's, as given
        grad_en, grad_de = _in_layout_of(grad_en, en), _in_layout_of(grad_de, de)
    return grad_grad_out, grad_en, grad_de, None, None, None, None


def _semi_shift_tangent(inputs, tangents):
    """The output's tangent (jvp over a torch.func transform): each moved
    map alone through the weight, both maps through the weight's tangent,
    and the bias's tangent once per given map. (The other map None, not
    zeros: 0 * an Inf weight would be NaN.) Not multilinear: the bias is
    added, and the two maps are summed."""
    en, de, weight, bias, scale, groups, backend = inputs[:7]
    den, dde, dweight, dbias = tangents[:4]
    terms = [semi_shift_conv_op(den, None, weight, None, scale, groups, backend, False) if den is not None else None,
             semi_shift_conv_op(None, dde, weight, None, scale, groups, backend, False) if dde is not None else None,
             semi_shift_conv_op(en, de, dweight, None, scale, groups, backend, False) if dweight is not None else None]
    if dbias is not None:
        batch, _ = _present(en, de)
        bias_count = (en is not None) + (de is not None)
        terms.append((bias_count * dbias)[None, :, None, None].expand(batch, weight.shape[0],
                                                                     *_output_size(en, de, scale)))
    return sum_of_given(terms)


def _weight_grad_tangent(inputs, tangents):
    """The weight gradient's tangent: linear in grad_out, and in the two
    maps together (each map's share through its own tangent alone)."""
    grad_out, en, de, *config = inputs
    dgrad_out, den, dde = tangents[:3]
    terms = [weight_grad_op(dgrad_out, en, de, *config) if dgrad_out is not None else None,
             weight_grad_op(grad_out, den, None, *config) if den is not None else None,
             weight_grad_op(grad_out, None, dde, *config) if dde is not None else None]
    return sum_of_given(terms)


semi_shift_conv_op.register_autograd(_semi_shift_derivative, setup_context=_save_semi_shift,
                                     tangent=_semi_shift_tangent)
encoder_grad_op.register_autograd(_encoder_grad_derivative, setup_context=_save_encoder_grad)
decoder_grad_op.register_autograd(_decoder_grad_derivative, setup_context=_save_decoder_grad)
weight_grad_op.register_autograd(_weight_grad_derivative, setup_context=_save_weight_grad,
                                 tangent=_weight_grad_tangent)


def _conv_flops(pixels_shape, weight_shape):
    """2 FLOPs per multiply-add of a convolution over the pixels of
    ``pixels_shape`` (N, ., H, W) with a weight of ``weight_shape``."""
    n, _, height, width = pixels_shape
    return 2 * n * height * width * math.prod(weight_shape)


# The counts are the work of the two-convolution form, each map's convolution
# at its own resolution (the decoder's at low resolution), as the cpu path
# does it and as decoder_grad is counted: the one-pass GPU kernel computes the
# decoder's share again at every output of a block (s*s times), work that a
# count of the operation's FLOPs should not include.


@register_flop_formula(torch.ops.upsamplelib.semi_shift_conv)
def _(en_shape, de_shape, weight_shape, *args, out_shape=None, **kwargs):
    maps = [shape for shape in (en_shape, de_shape) if shape is not None]
    adds = math.prod(out_shape) if len(maps) == 2 else 0  # the decoder's share added to the encoder's
    return sum(_conv_flops(shape, weight_shape) for shape in maps) + adds


@register_flop_formula(torch.ops.upsamplelib.semi_shift_conv_encoder_grad)
def _(grad_shape, weight_shape, *args, out_shape=None, **kwargs):
    return _conv_flops(grad_shape, weight_shape)


@register_flop_formula(torch.ops.upsamplelib.semi_shift_conv_decoder_grad)
def _(grad_shape, weight_shape, *args, out_shape=None, **kwargs):
    return _conv_flops(out_shape, weight_shape) + math.prod(grad_shape)  # + the pooling's adds


@register_flop_formula(torch.ops.upsamplelib.semi_shift_conv_weight_grad)
def _(grad_shape, en_shape, de_shape, *args, out_shape=None, **kwargs):
    encoder = _conv_flops(en_shape, out_shape) if en_shape is not None else 0
    decoder = _conv_flops(de_shape, out_shape) + math.prod(grad_shape) if de_shape is not None else 0  # + pooling
    return encoder + decoder


# --------------------------------------------------------------------------
# The public function
# --------------------------------------------------------------------------


def check_semi_shift_arguments(en, de, weight, bias, scale, groups, op="semi_shift_conv"):
    """Validate the arguments of ``semi_shift_conv``; return (scale, groups)."""
    check_feature_map(en, "en", op)
    check_feature_map(de, "de", op)
    check_feature_map(weight, "weight", op, batched=False)
    scale = check_positive_int(scale, "scale", op)
    groups = check_positive_int(groups, "groups", op)
    size = check_odd_kernel_size(weight.shape[2], "the kernel size of weight", op)
    if weight.shape[3] != size:
        raise ValueError(f"{op}: weight must have square k x k taps, got {shape_str(weight)}")
    channels = de.shape[1]
    check_same_batch(en, "en", de, "de", op)
    if en.shape[1] != channels:
        raise ValueError(f"{op}: en and de must have the same channels (they share the weight); got en "
                         f"{shape_str(en)} and de {shape_str(de)}")
    check_upsampled_size(en, "en", de, "de", scale, op)
    if channels % groups or weight.shape[0] % groups or weight.shape[1] * groups != channels:
        raise ValueError(f"{op}: weight {shape_str(weight)} does not fit {channels} input channels in "
                         f"groups={groups}: expected (O, {channels} // {groups}, k, k) with O divisible by groups")
    if bias is not None:
        check_float_tensor(bias, "bias", op)
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"{op}: bias must be of shape ({weight.shape[0]},), one value per output channel of "
                             f"weight {shape_str(weight)}; got {shape_str(bias)}")
    given = [t for t in (en, de, weight, bias) if t is not None]
    devices = {t.device for t in given}
    if len(devices) > 1:
        raise ValueError(f"{op}: en, de, weight and bias are on different devices: "
                         f"{', '.join(sorted(map(str, devices)))}")
    return scale, groups


def semi_shift_conv(en, de, weight, bias=None, scale=2, backend=None, groups=1):
    """The semi-shift convolution of FADE: one pass on the GPU (see the module docstring).

    Args:
        en: (N, C, s*h, s*w) encoder map (high resolution).
        de: (N, C, h, w) decoder map (low resolution).
        weight: (O, C // groups, k, k) with odd k, shared by both paths.
        bias: (O,) or None; added on both paths (so twice), as the original does.
        scale: integer s.
        backend: None/"auto", "cuda", "cpu" or "torch".
        groups: channel groups of the convolution (FADE-Lite's depthwise
            content encoder uses groups = O = C).

    Returns:
        (N, O, s*h, s*w) ``== conv2d(en, weight, bias, padding=k//2)
        + nearest_up(conv2d(de, weight, bias, padding=k//2), s)``, except
        that taps outside the maps are skipped rather than multiplied by
        the padding; differentiable in ``en``, ``de``, ``weight`` and
        ``bias``, to any order.
    """
    op = "semi_shift_conv"
    scale, groups = check_semi_shift_arguments(en, de, weight, bias, scale, groups, op)
    given = [t for t in (en, de, weight, bias) if t is not None]
    backend = reference_for_empty_batch(resolve_backend(backend, given, op), en.shape[0])
    if backend != "torch" and (split := forward_tangents(en, de, weight, bias)) is not None:
        (en, de, weight, bias), (den, dde, dweight, dbias) = split
        # Each moved map alone (the other None, not zeros: 0 * an Inf weight would be NaN).
        terms = [_semi_shift_on(den, None, weight, None, scale, groups, backend) if den is not None else None,
                 _semi_shift_on(None, dde, weight, None, scale, groups, backend) if dde is not None else None,
                 _semi_shift_on(en, de, dweight, None, scale, groups, backend) if dweight is not None else None]
        out = _semi_shift_on(en, de, weight, bias, scale, groups, backend)
        if dbias is not None:  # the bias is added on both paths
            terms.append((2 * dbias).to(out.dtype)[None, :, None, None].expand_as(out))
        return with_tangent(out, terms)
    return _semi_shift_on(en, de, weight, bias, scale, groups, backend)


def _semi_shift_on(en, de, weight, bias, scale, groups, backend):
    """The checked call on ``backend``, in the promoted dtype; either map
    may be None (its share left out), as the operator allows."""
    given = [t for t in (en, de, weight, bias) if t is not None]
    result_dtype = given[0].dtype
    for t in given[1:]:
        result_dtype = torch.promote_types(result_dtype, t.dtype)
    compute_dtype = kernel_dtype(result_dtype)
    en, de, weight = (in_dtype(t, compute_dtype) if t is not None else None for t in (en, de, weight))
    bias = in_dtype(bias, compute_dtype) if bias is not None else None
    if backend == "torch":
        out = semi_shift_conv_reference(en, de, weight, bias, scale, groups)
    else:
        channels_last = _returns_channels_last(en, de, backend)
        if (channels_last and not _under_functorch(weight)
                and torch.autograd.forward_ad._current_level < 0):  # a tangent may be batched (vectorised jacobians)
            # Saved so for the backward's channels-last convolutions. The weight's gradient comes back
            # NCHW whatever its copy, and PyTorch's copies a FADE-sized weight (25 x 256 x 3 x 3) as fast
            # as the block transpose, without its autograd glue.
            weight = weight.contiguous(memory_format=torch.channels_last)
        out = semi_shift_conv_op(en, de, weight, bias, scale, groups, backend, channels_last)
    return in_dtype(out, result_dtype)


# --------------------------------------------------------------------------
# The module
# --------------------------------------------------------------------------


def xavier_init(conv):
    """The original FADE's init of every convolution: Xavier-uniform
    weights, zero bias."""
    nn.init.xavier_uniform_(conv.weight)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class GateGenerator(nn.Module):
    """g = sigmoid(nearest_up(conv1x1(de))): one channel, from the decoder."""

    def __init__(self, in_channels, scale):
        super().__init__()
        self.scale = scale
        self.conv = nn.Conv2d(in_channels, 1, 1)
        xavier_init(self.conv)

    def forward(self, de):
        return torch.sigmoid(F.interpolate(self.conv(de), scale_factor=self.scale, mode="nearest"))


class SemiShift(nn.Module):
    """The kernel generator: compress both features, then the semi-shift
    convolution with the shared ``content_encoder``."""

    def __init__(self, in_channels_en, in_channels_de, scale, up_kernel_size, embedding_dim, kernel_size, lite):
        super().__init__()
        self.scale = scale
        logits = up_kernel_size * up_kernel_size
        compressed = logits if lite else embedding_dim
        self.compressor_en = nn.Conv2d(in_channels_en, compressed, 1)
        self.compressor_de = nn.Conv2d(in_channels_de, compressed, 1, bias=False)
        self.content_encoder = nn.Conv2d(compressed, logits, kernel_size, padding=kernel_size // 2,
                                         groups=logits if lite else 1)
        for conv in (self.compressor_en, self.compressor_de, self.content_encoder):
            xavier_init(conv)

    def forward(self, en, de, backend=None):
        return semi_shift_conv(self.compressor_en(en), self.compressor_de(de), self.content_encoder.weight,
                               self.content_encoder.bias, self.scale, backend=backend,
                               groups=self.content_encoder.groups)


#: FADE_H2L's names of the kernel generator's parameters, and the FADE_L2H
#: names this module uses (and ``state_dict()`` writes). Same tensors, same
#: shapes: ``conv2_kernels`` is the content encoder's (k_up**2, E, k, k)
#: weight (for FADE-Lite the depthwise (k_up**2, 1, k, k)), ``conv1_de``
#: has no bias. ``gate_generator.conv.*`` is named alike in both.
H2L_NAMES = {
    "kernel_generator.conv1_en.weight": "ker_generator.compressor_en.weight",
    "kernel_generator.conv1_en.bias": "ker_generator.compressor_en.bias",
    "kernel_generator.conv1_de.weight": "ker_generator.compressor_de.weight",
    "kernel_generator.conv2_kernels": "ker_generator.content_encoder.weight",
    "kernel_generator.conv2_bias": "ker_generator.content_encoder.bias",
}


def accept_h2l_names(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
    """Load-state-dict pre-hook of ``FADE``: renames FADE_H2L's keys (under
    this module's ``prefix``) to the L2H names, so both checkpoint formats
    load with ``strict=True``. A key given under both names is an error,
    not a silent choice. ``load_state_dict`` hands the hook its own copy of
    the dictionary: the caller's is not changed."""
    for h2l, l2h in H2L_NAMES.items():
        old, new = prefix + h2l, prefix + l2h
        if old not in state_dict:
            continue
        if new in state_dict:
            error_msgs.append(f"FADE: the state dict holds {old!r} (FADE_H2L's name) and {new!r} (FADE_L2H's name) "
                              f"for the same parameter; keep one of them")
            continue
        state_dict[new] = state_dict.pop(old)


class FADE(nn.Module):
    """The FADE upsampler: ``forward(en, de)`` upsamples the decoder feature
    ``de: (N, C, h, w)`` by ``scale``, guided by the encoder feature
    ``en: (N, C, s*h, s*w)``::

        kernels = softmax(semi_shift_conv(compressor_en(en), compressor_de(de)))  # over k_up**2
        out = g * en + (1 - g) * carafe(de, kernels),  g = sigmoid(nearest_up(conv1x1(de)))

    ``lite=True`` is FADE-Lite: the compressors map straight to ``k_up**2``
    channels and the content encoder is depthwise. ``gate=False`` is the
    authors' SemiShiftUp: no gate generator, ``out = carafe(de, kernels)``
    (no encoder term, so ``en`` and ``de`` may then have different channel
    counts; the output has ``de``'s). Parameter names are the official
    (FADE_L2H) ones (``gate_generator.conv``, ``ker_generator.compressor_en``,
    ``ker_generator.compressor_de``, ``ker_generator.content_encoder``);
    ``load_state_dict`` also accepts FADE_H2L's names (``H2L_NAMES``), and
    ``state_dict()`` writes the L2H names. Every convolution starts
    Xavier-uniform with zero bias, as in the original.
    The attribute ``backend`` (default None: by device) selects the backend
    of the semi-shift convolution and the reassembly.
    """

    def __init__(self, in_channels_en, in_channels_de=None, scale=2, up_kernel_size=5, embedding_dim=64,
                 kernel_size=3, lite=False, gate=True):
        super().__init__()
        in_channels_de = in_channels_en if in_channels_de is None else in_channels_de
        check_positive_int(in_channels_en, "in_channels_en", "FADE")
        check_positive_int(in_channels_de, "in_channels_de", "FADE")
        self.gated = check_bool(gate, "gate", "FADE")
        if self.gated and in_channels_en != in_channels_de:
            raise ValueError(
                f"FADE: in_channels_en={in_channels_en} and in_channels_de={in_channels_de} differ, but the "
                "output blends en and the upsampled de channel by channel (g * en + (1 - g) * up(de)). "
                f"Align them first, e.g. with nn.Conv2d({in_channels_de}, {in_channels_en}, 1) on the decoder "
                f"feature (or nn.Conv2d({in_channels_en}, {in_channels_de}, 1) on the encoder feature), "
                "or use gate=False (SemiShiftUp: no encoder term in the output)."
            )
        self.channels_en, self.channels_de = in_channels_en, in_channels_de
        self.channels = in_channels_de  # the output's
        self.scale = check_positive_int(scale, "scale", "FADE")
        self.up_kernel_size = check_odd_kernel_size(up_kernel_size, "up_kernel_size", "FADE")
        kernel_size = check_odd_kernel_size(kernel_size, "kernel_size", "FADE")
        embedding_dim = check_positive_int(embedding_dim, "embedding_dim", "FADE")
        self.lite = check_bool(lite, "lite", "FADE")
        self.backend = None
        if self.gated:
            self.gate_generator = GateGenerator(in_channels_de, scale)
        self.ker_generator = SemiShift(in_channels_en, in_channels_de, scale, up_kernel_size, embedding_dim,
                                       kernel_size, lite)
        self._register_load_state_dict_pre_hook(accept_h2l_names)

    def reset_parameters(self):
        """Every convolution Xavier-uniform with zero bias again, as built."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                xavier_init(module)

    def _check(self, en, de):
        op = "FADE"
        check_batched_map(en, "en", op)
        check_batched_map(de, "de", op)
        check_guide_pair(en, "en", de, "de", self.scale, op)
        check_module_input(en, "en", self.channels_en, self, op)
        check_module_input(de, "de", self.channels_de, self, op)

    def kernels(self, en, de):
        """The normalised upsampling kernels, (N, k_up**2, s*h, s*w)."""
        self._check(en, de)
        return F.softmax(self.ker_generator(en, de, self.backend), dim=1)

    def gate(self, de):
        """The gate map g, (N, 1, s*h, s*w): 1 keeps the encoder feature.
        Without a gate (``gate=False``) it is 0 everywhere: the output is
        the reassembled decoder feature alone."""
        if not self.gated:
            n, _, height, width = de.shape
            return de.new_zeros((n, 1, self.scale * height, self.scale * width))
        return self.gate_generator(de)

    def forward(self, en, de):
        kernels = self.kernels(en, de)
        upsampled = carafe(de, kernels, self.up_kernel_size, self.scale, 1, backend=self.backend)
        if not self.gated:
            return upsampled
        gate = self.gate(de)
        return gate * en + (1 - gate) * upsampled

    def extra_repr(self):
        channels = (f"channels={self.channels}" if self.channels_en == self.channels_de
                    else f"channels_en={self.channels_en}, channels_de={self.channels_de}")
        gate = "" if self.gated else ", gate=False"
        return f"{channels}, scale={self.scale}, up_kernel_size={self.up_kernel_size}, lite={self.lite}{gate}"

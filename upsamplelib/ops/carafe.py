"""CARAFE: content-aware reassembly of features (Wang et al., ICCV 2019).

``ul.carafe(x, masks, kernel_size, scale, group=1)`` reassembles a low-res
feature map ``x: (N, C, h, w)`` with per-pixel kernels
``masks: (N, G*k*k, s*h, s*w)`` (already normalised)::

    out[n, c, Y, X] = sum_t masks[n, g(c)*k*k + t, Y, X] * x[n, c, Y//s + dy_t, X//s + dx_t]

with window slot ``t = (dy + r) * k + (dx + r)``, ``r = (k - 1) // 2``, group
``g(c) = c // (C // G)`` and zero padding outside the map (weights are not
renormalised at the border). ``ul.CARAFE`` is the whole upsampler: kernel
prediction (channel compressor, content encoder, pixel shuffle, softmax)
followed by this reassembly, with mmcv's ``CARAFEPack`` parameter names.

Backends: ``cuda`` (Numba-CUDA: one thread per output pixel and a run of up
to 8 channels of a group, which share their mask values; GPU or simulator),
``cpu`` (Numba CPU loops vectorised along whole rows) and ``torch`` (the
plain-PyTorch unfold formulation, the reference). Both Numba backends use
the same index helpers below and add the terms of every output in the same
order (the cpu forward also adds the zero padding's exact zeros where the
masks there are finite), so they agree bit for bit.

The backward is two gathers, no atomics: the gradient of an input pixel sums
the ``s*s*k*k`` outputs that read it; the gradient of a mask value sums
``grad_out * x`` over the channels of its group.

Dtypes: ``x`` and ``masks`` may differ (as under autocast, where mmcv's
CARAFE fails): both are promoted to ``torch.promote_types(x.dtype,
masks.dtype)``, which is also the result dtype; half types are computed in
float32.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from numba import cuda, int64, prange
from torch.utils.flop_counter import register_flop_formula

from ..backend import (add_products, cpu_kernel, cuda_kernel, finite_outside, fma, forward_tangents,
                       kernel_variant, operator, per_element, reference_for_empty_batch, resolve_backend, run, run_grid,
                       with_tangent)
from ..layout import kernel_layout
from ..validation import (
    check_batched_map,
    check_feature_map,
    check_module_input,
    check_odd_kernel_size,
    check_positive_int,
    check_same_batch,
    check_same_device,
    check_upsampled_size,
    in_dtype,
    kernel_dtype,
    shape_str,
)

# --------------------------------------------------------------------------
# Index helpers, shared by the CUDA kernels and the CPU loops
# --------------------------------------------------------------------------


def _unravel4(i, channels, height, width):
    """(n, c, y, x) of flat index ``i`` in a (N, C, H, W) array. All int64:
    a (1, 64, 4096, 4096) map already has 2**30 elements."""
    x = i % width
    rest = i // width
    y = rest % height
    rest = rest // height
    return rest // channels, rest % channels, y, x


def _window_origin(Y, scale, radius):
    """Low-res row (or column) of the top-left slot of output Y's window."""
    return Y // scale - radius


def _slot_of(group, dy, dx, kernel_size):
    """Mask channel of window slot (dy, dx) of a group: group outer, row-major."""
    return (group * kernel_size + dy) * kernel_size + dx


unravel4 = per_element(_unravel4)
window_origin = per_element(_window_origin)
slot_of = per_element(_slot_of)


# --------------------------------------------------------------------------
# CUDA kernels: one thread per output pixel and run of PER_THREAD channels
# --------------------------------------------------------------------------


def _signature(T):
    return (T[:, :, :, ::1], T[:, :, :, ::1], T[:, :, :, ::1], int64, int64, int64)


#: Channels (for the mask gradient: window slots) one CUDA thread computes.
#: The channels of a group share their k*k mask values at a pixel (and the
#: slots share grad_out): a thread that holds PER_THREAD results in
#: registers loads each shared value once instead of PER_THREAD times.
PER_THREAD = 8


def _runs_per_group(per_group):
    return (per_group + PER_THREAD - 1) // PER_THREAD


def _run_count(target, per_group):
    """How many runs (threads) cover ``target``, written in runs of
    PER_THREAD channels that each stay inside one group of ``per_group``
    channels. The host calls it on a tensor to size the launch."""
    n, channels, height, width = target.shape
    return n * (channels // per_group) * ((per_group + PER_THREAD - 1) // PER_THREAD) * height * width


def _run_of(i, target, per_group):
    """(n, first channel, channel count, row, col) of thread i's run."""
    runs = runs_per_group(per_group)
    chunks = (target.shape[1] // per_group) * runs
    n, chunk, row, col = unravel4(i, chunks, target.shape[2], target.shape[3])
    first = (chunk // runs) * per_group + (chunk % runs) * PER_THREAD
    count = min(PER_THREAD, per_group - (chunk % runs) * PER_THREAD)
    return n, first, count, row, col


runs_per_group = per_element(_runs_per_group)
run_count = per_element(_run_count)
run_of = per_element(_run_of)


@cuda_kernel(_signature)
def carafe_forward_kernel(x, masks, out, kernel_size, scale, group_channels):
    i = cuda.grid(1)
    if i < run_count(out, group_channels):
        n, first, count, Y, X = run_of(i, out, group_channels)
        total = cuda.local.array(PER_THREAD, out.dtype)
        for j in range(PER_THREAD):
            total[j] = 0
        radius = (kernel_size - 1) // 2
        top, left = window_origin(Y, scale, radius), window_origin(X, scale, radius)
        group = first // group_channels
        for dy in range(kernel_size):
            row = top + dy
            if 0 <= row < x.shape[2]:
                for dx in range(kernel_size):
                    col = left + dx
                    if 0 <= col < x.shape[3]:
                        weight = masks[n, slot_of(group, dy, dx, kernel_size), Y, X]
                        for j in range(count):
                            total[j] = fma(weight, x[n, first + j, row, col], total[j])
        for j in range(count):
            out[n, first + j, Y, X] = total[j]


@cuda_kernel(_signature)
def carafe_grad_feature_kernel(grad_out, masks, grad_x, kernel_size, scale, group_channels):
    i = cuda.grid(1)
    if i < run_count(grad_x, group_channels):
        n, first, count, row, col = run_of(i, grad_x, group_channels)
        total = cuda.local.array(PER_THREAD, grad_x.dtype)
        for j in range(PER_THREAD):
            total[j] = 0
        radius = (kernel_size - 1) // 2
        group = first // group_channels
        for dy in range(kernel_size):
            anchor_row = row - dy + radius
            if 0 <= anchor_row < grad_x.shape[2]:
                for dx in range(kernel_size):
                    anchor_col = col - dx + radius
                    if 0 <= anchor_col < grad_x.shape[3]:
                        slot = slot_of(group, dy, dx, kernel_size)
                        for Y in range(anchor_row * scale, anchor_row * scale + scale):
                            for X in range(anchor_col * scale, anchor_col * scale + scale):
                                weight = masks[n, slot, Y, X]
                                for j in range(count):
                                    total[j] = fma(weight, grad_out[n, first + j, Y, X], total[j])
        for j in range(count):
            grad_x[n, first + j, row, col] = total[j]


@cuda_kernel(_signature)
def carafe_grad_mask_kernel(grad_out, x, grad_masks, kernel_size, scale, group_channels):
    i = cuda.grid(1)
    area = kernel_size * kernel_size
    if i < run_count(grad_masks, area):
        n, first, count, Y, X = run_of(i, grad_masks, area)
        total = cuda.local.array(PER_THREAD, grad_masks.dtype)
        for j in range(PER_THREAD):
            total[j] = 0
        radius = (kernel_size - 1) // 2
        top, left = window_origin(Y, scale, radius), window_origin(X, scale, radius)
        group = first // area
        for c in range(group * group_channels, (group + 1) * group_channels):
            grad = grad_out[n, c, Y, X]
            for j in range(count):
                t = first + j - group * area
                row, col = top + t // kernel_size, left + t % kernel_size
                if 0 <= row < x.shape[2] and 0 <= col < x.shape[3]:
                    total[j] = fma(grad, x[n, c, row, col], total[j])
        for j in range(count):
            grad_masks[n, first + j, Y, X] = total[j]


# --------------------------------------------------------------------------
# Fast CUDA kernels (backend.kernel_variant() == "fast", the default on a
# GPU). A block computes a TILE x TILE tile of outputs for a run of
# channels (or, for the window products, of window slots). The s*s outputs
# attached to a low-res pixel and their neighbours read overlapping k x k
# windows, so the block first copies the low-res patch that all its windows
# cover into shared memory (consecutive threads reading consecutive
# columns: coalesced), then every thread reads its windows from there. Each
# output adds the same terms in the same order as in the teaching kernels
# above, so both agree bit for bit.
# --------------------------------------------------------------------------

#: Output tile side of the fast kernels: TILE * TILE threads per block.
TILE = 16
#: Shared-memory elements per block (32 KiB in float64).
SHARED_ELEMENTS = 4096


def _tiled_signature(T):
    return (T[:, :, :, ::1], T[:, :, :, ::1], T[:, :, :, ::1], int64, int64, int64, int64, int64)


def tile_patch_side(kernel_size, scale):
    """Low-res rows (and columns) the windows of a TILE x TILE output tile
    cover, at most: rows Y0 // s - r .. (Y0 + TILE - 1) // s + r."""
    return (TILE - 1) // scale + 1 + kernel_size - 1


def _tile_of_block(block, height, width):
    """(run, first output row, first output col) of a block of a tiled kernel."""
    tiles_x = (width + TILE - 1) // TILE
    tiles_y = (height + TILE - 1) // TILE
    col_tile = block % tiles_x
    rest = block // tiles_x
    row_tile = rest % tiles_y
    return rest // tiles_y, row_tile * TILE, col_tile * TILE


def _load_patch(patch, x, n, first, count, top, left, side, thread, threads):
    """patch[(j * side + r) * side + c] = x[n, first + j, top + r, left + c]
    (0 outside the map: never read, the kernels skip those slots)."""
    for e in range(thread, count * side * side, threads):
        j = e // (side * side)
        r = (e // side) % side
        c = e % side
        row, col = top + r, left + c
        value = x.dtype.type(0)
        if 0 <= row < x.shape[2] and 0 <= col < x.shape[3]:
            value = x[n, first + j, row, col]
        patch[e] = value


tile_of_block = per_element(_tile_of_block)
load_patch = per_element(_load_patch)


@cuda_kernel(_tiled_signature)
def carafe_forward_tiled_kernel(x, masks, out, kernel_size, scale, group_channels, run_channels, side):
    patch = cuda.shared.array(SHARED_ELEMENTS, out.dtype)
    height, width = out.shape[2], out.shape[3]
    runs = (group_channels + run_channels - 1) // run_channels
    run, Y0, X0 = tile_of_block(cuda.blockIdx.x, height, width)
    chunks = (out.shape[1] // group_channels) * runs
    n, chunk = run // chunks, run % chunks
    group = chunk // runs
    first = group * group_channels + (chunk % runs) * run_channels
    count = min(run_channels, group_channels - (chunk % runs) * run_channels)
    radius = (kernel_size - 1) // 2
    top, left = window_origin(Y0, scale, radius), window_origin(X0, scale, radius)
    thread = cuda.threadIdx.x
    load_patch(patch, x, n, first, count, top, left, side, thread, TILE * TILE)
    cuda.syncthreads()
    Y, X = Y0 + thread // TILE, X0 + thread % TILE
    if Y < height and X < width:
        total = cuda.local.array(PER_THREAD, out.dtype)
        for j in range(PER_THREAD):
            total[j] = 0
        row0, col0 = window_origin(Y, scale, radius), window_origin(X, scale, radius)
        for dy in range(kernel_size):
            row = row0 + dy
            if 0 <= row < x.shape[2]:
                for dx in range(kernel_size):
                    col = col0 + dx
                    if 0 <= col < x.shape[3]:
                        weight = masks[n, slot_of(group, dy, dx, kernel_size), Y, X]
                        at = (row - top) * side + col - left
                        for j in range(count):
                            total[j] = fma(weight, patch[j * side * side + at], total[j])
        for j in range(count):
            out[n, first + j, Y, X] = total[j]


@cuda_kernel(_tiled_signature)
def carafe_window_products_tiled_kernel(grad_out, x, result, kernel_size, scale, group_channels, run_channels,
                                        side):
    """result[n, slot(g, t), Y, X] = sum_c grad_out[n, c, Y, X] * x[n, c, window_t]:
    a block owns a tile and a run of PER_THREAD slots, and walks the group's
    channels run_channels at a time through a shared-memory patch of x."""
    patch = cuda.shared.array(SHARED_ELEMENTS, result.dtype)
    height, width = result.shape[2], result.shape[3]
    area = kernel_size * kernel_size
    slot_runs = (area + PER_THREAD - 1) // PER_THREAD
    run, Y0, X0 = tile_of_block(cuda.blockIdx.x, height, width)
    chunks = (result.shape[1] // area) * slot_runs
    n, chunk = run // chunks, run % chunks
    group = chunk // slot_runs
    first_slot = (chunk % slot_runs) * PER_THREAD
    slot_count = min(PER_THREAD, area - first_slot)
    radius = (kernel_size - 1) // 2
    top, left = window_origin(Y0, scale, radius), window_origin(X0, scale, radius)
    thread = cuda.threadIdx.x
    Y, X = Y0 + thread // TILE, X0 + thread % TILE
    active = Y < height and X < width
    row0, col0 = window_origin(Y, scale, radius), window_origin(X, scale, radius)
    total = cuda.local.array(PER_THREAD, result.dtype)
    for j in range(PER_THREAD):
        total[j] = 0
    for c0 in range(group * group_channels, (group + 1) * group_channels, run_channels):
        count = min(run_channels, (group + 1) * group_channels - c0)
        cuda.syncthreads()  # everyone is done reading the previous patch
        load_patch(patch, x, n, c0, count, top, left, side, thread, TILE * TILE)
        cuda.syncthreads()
        if active:
            for j in range(count):
                grad = grad_out[n, c0 + j, Y, X]
                for u in range(slot_count):
                    t = first_slot + u
                    row, col = row0 + t // kernel_size, col0 + t % kernel_size
                    if 0 <= row < x.shape[2] and 0 <= col < x.shape[3]:
                        at = (j * side + row - top) * side + col - left
                        total[u] = fma(grad, patch[at], total[u])
    if active:
        for u in range(slot_count):
            result[n, group * area + first_slot + u, Y, X] = total[u]


def tiled_launch(target, runs_total, kernel_size, scale, group_channels, most_channels):
    """(blocks, threads, run_channels, side) of a tiled kernel writing
    ``target``, or None when the patch of one channel does not fit in
    shared memory (huge kernel_size: the teaching kernels then run)."""
    side = tile_patch_side(kernel_size, scale)
    run_channels = min(most_channels, SHARED_ELEMENTS // (side * side), group_channels)
    if run_channels < 1:
        return None
    tiles = ((target.shape[2] + TILE - 1) // TILE) * ((target.shape[3] + TILE - 1) // TILE)
    return runs_total(run_channels) * tiles, TILE * TILE, run_channels, side


# --------------------------------------------------------------------------
# CPU loops. A thread per element would leave the CPU's vector units idle,
# so these walk whole rows, vectorised along the row. That needs x
# "upsampled along the columns" first:
#     columns[n, c, row, j] = x[n, c, row, j // s - r]   (0 outside the map)
# so that slot dx of output X reads columns[..., X + dx*s]. Same index math
# (window_origin, slot_of), same order of additions as the CUDA bodies. Like
# them, the loops leave out-of-map slots out where a non-finite mask value
# there would reach the result (slot dx is inside the map for the outputs
# in ``slot_columns``); where the masks there are finite, the forward's
# register loop multiplies the zero padding instead, which adds exactly 0
# (a sum that starts at +0 never becomes -0) and keeps the loop free of
# tests.
# --------------------------------------------------------------------------


def _slot_columns(dx, scale, radius, low_width):
    """[begin, end): the outputs X whose slot dx reads a column inside the
    map, i.e. 0 <= X // scale - radius + dx < low_width. Empty (begin ==
    end, both within the row) when a window wider than the map has a slot
    that never reads inside: a negative end would wrap a slice around."""
    width = low_width * scale
    begin = min(width, max(0, (radius - dx) * scale))
    return begin, max(begin, min(width, (low_width + radius - dx) * scale))


slot_columns = per_element(_slot_columns)


@functools.cache
def upsample_columns_cpu(scale):
    """The loop behind ``upsampled_columns`` for one scale: a constant of the
    compiled loop, so LLVM unrolls the copies of a pixel and vectorises the
    row (2-3x faster than copying ``scale`` at a time in a loop of its own)."""

    @cpu_kernel
    def upsample_columns(x, radius, row_padding, columns):
        batch, channels, height, width = x.shape
        for line in prange(batch * channels * height):
            n, c, row = line // (channels * height), (line // height) % channels, line % height
            if row == 0:
                columns[n, c, :row_padding] = 0
            if row == height - 1:
                columns[n, c, row_padding + height:] = 0
            line_out = columns[n, c, row_padding + row]
            line_out[: radius * scale] = 0
            line_out[(width + radius) * scale:] = 0
            source, inside = x[n, c, row], line_out[radius * scale: (width + radius) * scale]
            for col in range(width):
                for j in range(scale):
                    inside[col * scale + j] = source[col]

    return upsample_columns


@cpu_kernel
def carafe_whole_row_flags_cpu(masks, low_height, kernel_size, scale, whole_row):
    """whole_row[line, t]: whether slot t's mask values are finite where, on
    output row line = (n, group, Y), the slot reads the padding; a line may
    sum all k*k slots when they all are (the padding then adds 0)."""
    batch, slots, height, width = masks.shape
    area = kernel_size * kernel_size
    radius = (kernel_size - 1) // 2
    groups = slots // area
    for line in prange(batch * groups * height):
        n, group, Y = line // (groups * height), (line // height) % groups, line % height
        top = window_origin(Y, scale, radius)
        for slot in range(area):
            dy, dx = slot // kernel_size, slot % kernel_size
            begin, end = 0, 0  # a row outside the map: all of it reads padding
            if 0 <= top + dy < low_height:
                begin, end = slot_columns(dx, scale, radius, width // scale)
            whole_row[line, slot] = finite_outside(masks[n, slot_of(group, dy, dx, kernel_size), Y], begin, end)


#: The most window slots one pass of the register loop sums; a larger window
#: is summed in passes of whole window rows. With all 49 slots of k = 7 in
#: one pass LLVM leaves the four-sum loop scalar: the op took 6.9 ms at
#: 1x64x64x64 against 4.3 slot by slot; in passes of 3, 3 and 1 rows, 1.7
#: against 5.2 in another run (2-core AMD EPYC). 25 is the k = 5 loop's
#: size, known to vectorise. A window of more than one pass costs an extra
#: output-sized array for the sums between passes.
REGISTER_SUMS_MOST_SLOTS = 25
#: The fewest channels per group it takes. With one or two, each mask value
#: serves one or two outputs and the loop streams k*k mask rows at once:
#: 10.5 and 7.1 ms at 1x64x64x64, k = 5, groups of 1 and 2, against 7.2 and
#: 4.9 slot by slot; groups of 3, 4 and 8: 3.9, 2.9, 2.8 against 4.3, 4.2, 4.7
#: (four channels of one row at a time, 2 cores of the course's earlier test
#: machine). The choice depends on the machine: on a 2-core AMD EPYC (Zen 4),
#: with two rows at a time, groups of 1 and 2 took 12.9 and 7.9 ms against
#: 21.7 and 10.4 slot by slot; with the mask values in a buffer, 20.5 and 10.6
#: against 22.5 and 11.0 (and groups of 4: 5.7 against 6.8).
REGISTER_SUMS_FEWEST_CHANNELS = 3
#: Output columns per pass of the register loop: its mask values for a line
#: (k*k slots, one or two rows) are copied into a buffer this wide. At
#: k = 5 and two rows, 64 float32 columns take 12.5 KiB and 64 float64
#: 25 KiB, within a 32 KiB L1; 32 and 128 were no faster (1x64x64x64).
WEIGHTS_CHUNK = 64


@functools.cache
def carafe_forward_cpu(kernel_size, scale, first_row=0, end_row=None):
    """The CPU forward loop for one window size and scale, every output row
    summed over all k*k slots (``carafe_forward_by_slot_cpu`` then redoes
    the rows where that is wrong).

    Both are constants of the compiled loop (closure values: Numba caches
    one machine code per pair), so LLVM unrolls the k*k slots and vectorises
    along the output row: each output is summed in a register and stored
    once. Summing whole rows slot by slot instead (the backward's way) loads
    and stores the row total k*k times; the op then took 3x as long (4.6
    against 1.5 ms at 1x64x64x64, k=5, 2 cores). The flat indices are
    unsigned because Numba wraps a negative signed index, and that select
    per load keeps LLVM from vectorising.

    The loop is load-bound, so each load should serve as many multiply-adds
    as it can. Four sums at a time, no more: LLVM vectorises a loop that
    stores to four output rows, not one that stores to eight (too many
    overlap checks between them). With an even scale, output rows 2i and
    2i + 1 read the same window, so the four sums are two channels of both
    rows: a mask value serves two channels and a window value two rows (one
    load per multiply-add, 0.82 against 0.95 ms at 1x64x64x64, k=5, on a
    2-core AMD EPYC). With an odd scale they are four channels of one row (a
    mask value serves four, a window value one: 1.25 loads per multiply-add).

    The mask values of a line are first copied, ``WEIGHTS_CHUNK`` columns at
    a time, into one small buffer that every channel then reads. Read in
    place, the k*k mask rows lie a whole plane apart (64 KiB at 128x128), so
    they fall into the same few cache sets and evict each other, and LLVM
    keeps one pointer per slot, spilled to the stack and reloaded before each
    load. From the buffer, every weight is a constant offset from one
    pointer, and the rows stay in L1 (0.37 against 0.65 ms at 1x64x64x64,
    k=5, 2 cores of an AMD EPYC). The order of the additions is unchanged.

    One loop sums the window rows ``first_row`` to ``end_row - 1`` (all by
    default; see ``register_passes``). A pass after the first starts each sum
    from ``partial``, the earlier passes' sums, in the same order of
    additions; it must be another array than ``out``: read and written in
    place, LLVM's runtime overlap check sends the loop to its scalar version
    (3.3 against 0.46 ms for a pass of 3 rows at k = 7).

    ``columns`` is ``upsampled_columns(x, scale, radius, pad_rows=True)``: a
    window row that falls outside the map reads the zero rows.
    """
    radius = (kernel_size - 1) // 2
    area = kernel_size * kernel_size
    end_row = kernel_size if end_row is None else end_row
    first_slot, pass_slots = first_row * kernel_size, (end_row - first_row) * kernel_size
    rows_together = 2 if scale % 2 == 0 else 1
    chunk = WEIGHTS_CHUNK
    slot_stride = rows_together * chunk  # from one slot's weights to the next in the buffer

    @cpu_kernel
    def forward(columns, masks, partial, out, group_channels):
        batch, channels, height, width = out.shape
        padded_height, padded_width = columns.shape[2], columns.shape[3]
        groups = channels // group_channels
        zero = np.zeros(1, out.dtype)[0]
        # The loop body holds no array views, only flat indices, and reads no
        # other array: Numba then marks its arrays noalias, without which LLVM
        # would need overlap checks for the four-sum loops and leave them
        # scalar (4x slower).
        flat_masks, flat_columns, flat_out = masks.reshape(-1), columns.reshape(-1), out.reshape(-1)
        flat_partial = partial.reshape(-1)
        plane = height * width
        u_plane, u_row, u_channel = np.uint64(plane), np.uint64(padded_width), np.uint64(padded_height * padded_width)
        u_width, u_chunk = np.uint64(width), np.uint64(chunk)  # from one output row to the next, in out / weights
        lines = height // rows_together
        for line in prange(batch * groups * lines):
            n, group, Y = line // (groups * lines), (line // lines) % groups, line % lines * rows_together
            top = window_origin(Y, scale, radius)
            u_mask = np.uint64(((n * groups * area + slot_of(group, 0, 0, kernel_size)) * height + Y) * width)
            first = n * channels + group * group_channels  # channel index in the flat (N*C) order
            # weights[(t * rows_together + row) * chunk + i]: the pass's slot t's
            # mask value at output row Y + row, column start + i.
            weights = np.empty(pass_slots * slot_stride, out.dtype)
            for start in range(0, width, chunk):
                u_start, length = np.uint64(start), np.uint64(min(chunk, width - start))
                for t in range(pass_slots):
                    for row in range(rows_together):
                        source = u_mask + np.uint64(first_slot + t) * u_plane + np.uint64(row) * u_width + u_start
                        target = np.uint64((t * rows_together + row) * chunk)
                        for i in range(length):
                            weights[target + i] = flat_masks[source + i]
                if rows_together == 2:
                    for c in range(first, first + group_channels - 1, 2):
                        column_base = np.uint64((c * padded_height + top + radius) * padded_width) + u_start
                        out_base = np.uint64((c * height + Y) * width) + u_start
                        for X in range(length):
                            if first_row == 0:
                                sum0, sum1, below0, below1 = zero, zero, zero, zero
                            else:
                                sum0, sum1 = flat_partial[out_base + X], flat_partial[out_base + u_plane + X]
                                below0 = flat_partial[out_base + u_width + X]
                                below1 = flat_partial[out_base + u_plane + u_width + X]
                            for dy in range(first_row, end_row):
                                for dx in range(kernel_size):
                                    at_weight = np.uint64((dy * kernel_size + dx - first_slot) * slot_stride) + X
                                    weight, weight_below = weights[at_weight], weights[at_weight + u_chunk]
                                    at = column_base + np.uint64(dy) * u_row + np.uint64(dx * scale) + X
                                    value0, value1 = flat_columns[at], flat_columns[at + u_channel]
                                    sum0 = fma(weight, value0, sum0)
                                    sum1 = fma(weight, value1, sum1)
                                    below0 = fma(weight_below, value0, below0)
                                    below1 = fma(weight_below, value1, below1)
                            flat_out[out_base + X] = sum0
                            flat_out[out_base + u_plane + X] = sum1
                            flat_out[out_base + u_width + X] = below0
                            flat_out[out_base + u_plane + u_width + X] = below1
                    last_single = first + group_channels // 2 * 2
                else:
                    for c in range(first, first + group_channels - 3, 4):
                        column_base = np.uint64((c * padded_height + top + radius) * padded_width) + u_start
                        out_base = np.uint64((c * height + Y) * width) + u_start
                        for X in range(length):
                            if first_row == 0:
                                sum0, sum1, sum2, sum3 = zero, zero, zero, zero
                            else:
                                sum0, sum1 = flat_partial[out_base + X], flat_partial[out_base + u_plane + X]
                                sum2 = flat_partial[out_base + np.uint64(2) * u_plane + X]
                                sum3 = flat_partial[out_base + np.uint64(3) * u_plane + X]
                            for dy in range(first_row, end_row):
                                for dx in range(kernel_size):
                                    weight = weights[np.uint64((dy * kernel_size + dx - first_slot) * slot_stride) + X]
                                    at = column_base + np.uint64(dy) * u_row + np.uint64(dx * scale) + X
                                    sum0 = fma(weight, flat_columns[at], sum0)
                                    sum1 = fma(weight, flat_columns[at + u_channel], sum1)
                                    sum2 = fma(weight, flat_columns[at + np.uint64(2) * u_channel], sum2)
                                    sum3 = fma(weight, flat_columns[at + np.uint64(3) * u_channel], sum3)
                            flat_out[out_base + X] = sum0
                            flat_out[out_base + u_plane + X] = sum1
                            flat_out[out_base + np.uint64(2) * u_plane + X] = sum2
                            flat_out[out_base + np.uint64(3) * u_plane + X] = sum3
                    last_single = first + group_channels // 4 * 4
                for c in range(last_single, first + group_channels):  # the channels no group of sums took
                    column_base = np.uint64((c * padded_height + top + radius) * padded_width) + u_start
                    for row in range(rows_together):
                        out_base = np.uint64((c * height + Y + row) * width) + u_start
                        for X in range(length):
                            sum0 = zero if first_row == 0 else flat_partial[out_base + X]
                            for dy in range(first_row, end_row):
                                for dx in range(kernel_size):
                                    at_weight = ((dy * kernel_size + dx - first_slot) * rows_together + row) * chunk
                                    weight = weights[np.uint64(at_weight) + X]
                                    at = column_base + np.uint64(dy) * u_row + np.uint64(dx * scale) + X
                                    sum0 = fma(weight, flat_columns[at], sum0)
                            flat_out[out_base + X] = sum0

    return forward


@cpu_kernel
def carafe_forward_by_slot_cpu(columns, masks, out, whole_row, every_line, kernel_size, scale, group_channels):
    """The output rows that may not sum all slots (a mask value that is not
    finite where its slot reads the padding), or every row: slot by slot,
    one multiply-add over the row each, only the slots inside the map, and
    leaving out the columns that read padding where a mask value there is
    not finite."""
    batch, channels, height, width = out.shape
    radius = (kernel_size - 1) // 2
    low_height, low_width = columns.shape[2] - 2 * radius, width // scale
    groups = channels // group_channels
    for line in prange(batch * groups * height):
        if every_line or not whole_row[line].all():
            n, group, Y = line // (groups * height), (line // height) % groups, line % height
            top = window_origin(Y, scale, radius)
            for c in range(group * group_channels, (group + 1) * group_channels):
                total = np.zeros(width, out.dtype)
                for dy in range(kernel_size):
                    if 0 <= top + dy < low_height:
                        for dx in range(kernel_size):
                            weights = masks[n, slot_of(group, dy, dx, kernel_size), Y]
                            values = columns[n, c, top + radius + dy, dx * scale: dx * scale + width]
                            begin, end = 0, width
                            if not whole_row[line, dy * kernel_size + dx]:
                                begin, end = slot_columns(dx, scale, radius, low_width)
                            add_products(total[begin:end], weights[begin:end], values[begin:end])
                out[n, c, Y, :] = total


@cpu_kernel
def carafe_grad_feature_cpu(grad_out, masks, grad_x, kernel_size, scale, group_channels):
    batch, channels, height, width = grad_x.shape
    out_width = grad_out.shape[3]
    radius = (kernel_size - 1) // 2
    for line in prange(batch * channels * height):
        n, c, row = line // (channels * height), (line // height) % channels, line % height
        # Gradient of columns[n, c, row, :]; x's column col gathers its s entries.
        total = np.zeros((width + 2 * radius) * scale, grad_x.dtype)
        for dy in range(kernel_size):
            anchor = row - dy + radius  # the low-res row whose slot dy reads `row`
            if 0 <= anchor < height:
                for Y in range(anchor * scale, anchor * scale + scale):
                    grads = grad_out[n, c, Y]
                    for dx in range(kernel_size):
                        add_products(total[dx * scale: dx * scale + out_width],
                                     masks[n, slot_of(c // group_channels, dy, dx, kernel_size), Y], grads)
        for col in range(width):
            grad_x[n, c, row, col] = total[(col + radius) * scale: (col + radius + 1) * scale].sum()


@cpu_kernel
def carafe_grad_mask_cpu(grad_out, columns, grad_masks, kernel_size, scale, group_channels):
    batch, slots, height, width = grad_masks.shape
    low_height = columns.shape[2]
    radius = (kernel_size - 1) // 2
    groups = slots // (kernel_size * kernel_size)
    for line in prange(batch * groups * height):
        n, group, Y = line // (groups * height), (line // height) % groups, line % height
        first = group * group_channels
        top = window_origin(Y, scale, radius)
        # A finite gradient row may run whole, through the zero padding
        # (it adds 0): that length vectorises.
        whole_row = np.empty(group_channels, np.bool_)
        for j in range(group_channels):
            whole_row[j] = finite_outside(grad_out[n, first + j, Y], 0, 0)  # all of it
        for dy in range(kernel_size):
            for dx in range(kernel_size):
                total = np.zeros(width, grad_masks.dtype)
                if 0 <= top + dy < low_height:
                    inside_begin, inside_end = slot_columns(dx, scale, radius, width // scale)
                    for j in range(group_channels):
                        grads = grad_out[n, first + j, Y]
                        values = columns[n, first + j, top + dy, dx * scale: dx * scale + width]
                        begin, end = (0, width) if whole_row[j] else (inside_begin, inside_end)
                        add_products(total[begin:end], grads[begin:end], values[begin:end])
                grad_masks[n, slot_of(group, dy, dx, kernel_size), Y, :] = total


def upsampled_columns(x, scale, radius, pad_rows=False):
    """x repeated ``scale`` times along its columns and zero-padded by
    ``radius`` low-res columns on each side: ``columns[..., j] =
    x[..., j // scale - radius]``; with ``pad_rows``, also by ``radius`` zero
    rows above and below. The input of the row-walking CPU loops (here and in
    fade.py): s times the size of x, not k*k*s*s times."""
    n, channels, height, width = x.shape
    row_padding = radius if pad_rows else 0
    columns = x.new_empty((n, channels, height + 2 * row_padding, (width + 2 * radius) * scale))
    run(upsample_columns_cpu(scale), "cpu", columns.numel(), x, radius, row_padding, columns)
    return columns


def register_passes(kernel_size):
    """The register loop's passes over a k x k window: (first, end) window
    rows, each pass at most ``REGISTER_SUMS_MOST_SLOTS`` slots."""
    rows = max(1, REGISTER_SUMS_MOST_SLOTS // kernel_size)
    return [(first, min(first + rows, kernel_size)) for first in range(0, kernel_size, rows)]


def _reassemble_cpu(x, masks, out, kernel_size, scale, group_channels):
    """The cpu forward: the register loop (in passes for a window above
    5 x 5) where the group has enough channels, then the slot-by-slot loop
    for the rows it cannot sum whole (or for every row)."""
    columns = upsampled_columns(x, scale, (kernel_size - 1) // 2, pad_rows=True)
    lines = x.shape[0] * (x.shape[1] // group_channels) * out.shape[2]
    # A NumPy array, not a tensor: only the loops read it, and NumPy's all() of a small array costs 2 us
    # against torch's 13 us (a whole cpu call on a 1x64x4x4 map took 140 us).
    whole_row = np.empty((lines, kernel_size * kernel_size), np.bool_)
    run(carafe_whole_row_flags_cpu, "cpu", out.numel(), masks, x.shape[2], kernel_size, scale, whole_row)
    in_registers = group_channels >= REGISTER_SUMS_FEWEST_CHANNELS
    if in_registers:
        passes = register_passes(kernel_size)
        # Each pass reads the sums of the one before from the other array;
        # the last writes out.
        partial = out.new_empty(out.shape) if len(passes) > 1 else out
        targets = [out if (len(passes) - 1 - i) % 2 == 0 else partial for i in range(len(passes))]
        for i, (first_row, end_row) in enumerate(passes):
            run(carafe_forward_cpu(kernel_size, scale, first_row, end_row), "cpu", out.numel(), columns, masks,
                targets[i - 1] if i else partial, targets[i], group_channels)
    if not in_registers or not whole_row.all():
        run(carafe_forward_by_slot_cpu, "cpu", out.numel(), columns, masks, out, whole_row, not in_registers,
            kernel_size, scale, group_channels)


# The three operations below are all of CARAFE's arithmetic. SAPA reuses them:
# its similarity is `window_products` (queries against key windows), and its
# backward is `reassemble` and `gather_to_windows`.


def reassemble(backend, x, masks, kernel_size, scale, group_channels):
    """out[n, c, Y, X] = sum_t masks[n, slot(c, t), Y, X] * x[n, c, window_t(Y, X)]."""
    out = x.new_empty((x.shape[0], x.shape[1], masks.shape[2], masks.shape[3]))
    if backend == "cpu":
        _reassemble_cpu(x, masks, out, kernel_size, scale, group_channels)
    elif (tiled := _fast_tiles(out, kernel_size, scale, group_channels, channels=True)) is not None:
        blocks, threads, run_channels, side = tiled
        run_grid(carafe_forward_tiled_kernel, blocks, threads, x, masks, out, kernel_size, scale, group_channels,
                 run_channels, side)
    else:
        run(carafe_forward_kernel, backend, _run_count(out, group_channels), x, masks, out, kernel_size,
            scale, group_channels)
    return out


def _fast_tiles(target, kernel_size, scale, group_channels, channels):
    """The launch of a fast tiled kernel (see ``tiled_launch``), or None
    when the teaching kernels are chosen (``backend.kernel_variant()``) or
    the patch does not fit."""
    if kernel_variant() != "fast":
        return None
    batch, planes = target.shape[0], target.shape[1]
    if channels:  # runs of channels inside each group
        def runs_total(run_channels):
            return batch * (planes // group_channels) * ((group_channels + run_channels - 1) // run_channels)
    else:  # runs of PER_THREAD window slots inside each group
        area = kernel_size * kernel_size

        def runs_total(run_channels):
            return batch * (planes // area) * ((area + PER_THREAD - 1) // PER_THREAD)
    # The forward keeps a run of channels in registers; the window products
    # keep slots there, and take as many channels per patch as fit.
    most_channels = PER_THREAD if channels else group_channels
    return tiled_launch(target, runs_total, kernel_size, scale, group_channels, most_channels)


def gather_to_windows(backend, grad_out, masks, kernel_size, scale, group_channels):
    """The transpose of ``reassemble`` with respect to x: each low-res pixel
    sums masks * grad_out over the outputs whose window holds it."""
    n, channels, height, width = grad_out.shape
    grad_x = grad_out.new_empty((n, channels, height // scale, width // scale))
    kernel = carafe_grad_feature_cpu if backend == "cpu" else carafe_grad_feature_kernel
    run(kernel, backend, _run_count(grad_x, group_channels), grad_out, masks, grad_x, kernel_size, scale,
        group_channels)
    return grad_x


def window_products(backend, grad_out, x, kernel_size, scale, group_channels):
    """result[n, slot(g, t), Y, X] = sum over the group's channels c of
    grad_out[n, c, Y, X] * x[n, c, window_t(Y, X)] (0 outside the map)."""
    n, channels, height, width = grad_out.shape
    slots = channels // group_channels * kernel_size * kernel_size
    result = grad_out.new_empty((n, slots, height, width))
    if backend == "cpu":
        columns = upsampled_columns(x, scale, (kernel_size - 1) // 2)
        run(carafe_grad_mask_cpu, backend, result.numel(), grad_out, columns, result, kernel_size, scale,
            group_channels)
    elif (tiled := _fast_tiles(result, kernel_size, scale, group_channels, channels=False)) is not None:
        blocks, threads, run_channels, side = tiled
        run_grid(carafe_window_products_tiled_kernel, blocks, threads, grad_out, x, result, kernel_size, scale,
                 group_channels, run_channels, side)
    else:
        run(carafe_grad_mask_kernel, backend, _run_count(result, kernel_size * kernel_size), grad_out, x,
            result, kernel_size, scale, group_channels)
    return result


# --------------------------------------------------------------------------
# Reference (backend="torch"): the unfold formulation of pure-PyTorch ports
# --------------------------------------------------------------------------


def inside_map(kernel_size, scale, height, width, device):
    """(k*k, s*h, s*w) bool: whether window slot t of output (Y, X) reads a
    pixel inside the (h, w) map. The kernels skip the slots that do not."""
    radius = (kernel_size - 1) // 2
    offsets = torch.arange(kernel_size, device=device) - radius
    rows = (torch.arange(scale * height, device=device) // scale)[None, :] + offsets[:, None]
    cols = (torch.arange(scale * width, device=device) // scale)[None, :] + offsets[:, None]
    rows_inside = (rows >= 0) & (rows < height)
    cols_inside = (cols >= 0) & (cols < width)
    return (rows_inside[:, None, :, None] & cols_inside[None, :, None, :]).reshape(
        kernel_size * kernel_size, scale * height, scale * width)


def carafe_reference(x, masks, kernel_size, scale, group=1):
    """CARAFE in plain PyTorch: unfold every k x k window, repeat each window
    for the s x s outputs attached to it, weight and sum. Simple, and it
    materialises C*k*k*(s*h)*(s*w) values: the memory the kernels avoid.
    Out-of-map slots are dropped, not multiplied by the zero padding, as
    the kernels do (a NaN weight there must not reach the output)."""
    n, channels, height, width = x.shape
    area = kernel_size * kernel_size
    windows = F.unfold(x, kernel_size, padding=(kernel_size - 1) // 2)
    windows = windows.view(n, group, channels // group, area, height, width)
    windows = windows.repeat_interleave(scale, dim=4).repeat_interleave(scale, dim=5)
    inside = inside_map(kernel_size, scale, height, width, x.device)
    weights = masks.view(n, group, 1, area, scale * height, scale * width)
    weights = torch.where(inside, weights, torch.zeros((), dtype=weights.dtype, device=weights.device))
    return (windows * weights).sum(dim=3).view(n, channels, scale * height, scale * width)


# --------------------------------------------------------------------------
# PyTorch custom operators. CARAFE is linear in x and in masks, and the
# three operations close under differentiation:
#   carafe(x, m)                 d/dx: window_gather(g, m)   d/dm: window_products(g, x)
#   window_gather(g, m)          d/dg: carafe(G, m)          d/dm: window_products(g, G)
#   window_products(g, x)        d/dg: carafe(x, M)          d/dx: window_gather(g, M)
# so writing each derivative through these ops gives gradients of any order.
# --------------------------------------------------------------------------


@operator("carafe")
def carafe_op(x: torch.Tensor, masks: torch.Tensor, kernel_size: int, scale: int, group: int,
              backend: str) -> torch.Tensor:
    """CARAFE reassembly on the Numba kernels (arguments already checked)."""
    return reassemble(backend, x.contiguous(), masks.contiguous(), kernel_size, scale, x.shape[1] // group)


@carafe_op.register_fake
def _(x, masks, kernel_size, scale, group, backend):
    return x.new_empty((x.shape[0], x.shape[1], masks.shape[2], masks.shape[3]))


@operator("carafe_window_gather")
def window_gather_op(grad_out: torch.Tensor, masks: torch.Tensor, kernel_size: int, scale: int, group: int,
                     backend: str) -> torch.Tensor:
    """The adjoint of ``carafe`` in x: each low-res pixel sums masks *
    grad_out over the outputs whose window holds it."""
    return gather_to_windows(backend, grad_out.contiguous(), masks.contiguous(), kernel_size, scale,
                             grad_out.shape[1] // group)


@window_gather_op.register_fake
def _(grad_out, masks, kernel_size, scale, group, backend):
    n, channels, height, width = grad_out.shape
    return grad_out.new_empty((n, channels, height // scale, width // scale))


@operator("carafe_window_products")
def window_products_op(grad_out: torch.Tensor, x: torch.Tensor, kernel_size: int, scale: int, group: int,
                       backend: str) -> torch.Tensor:
    """The adjoint of ``carafe`` in masks: result[slot(g, t), Y, X] = sum over
    the group's channels of grad_out[c, Y, X] * x[c, window_t(Y, X)]."""
    return window_products(backend, grad_out.contiguous(), x.contiguous(), kernel_size, scale,
                           grad_out.shape[1] // group)


@window_products_op.register_fake
def _(grad_out, x, kernel_size, scale, group, backend):
    n, _, height, width = grad_out.shape
    return grad_out.new_empty((n, group * kernel_size * kernel_size, height, width))


def save_inputs(ctx, inputs, output):
    """setup_context of the window ops: both tensors, and the rest as config."""
    first, second, *config = inputs
    ctx.save_for_backward(first, second)
    ctx.config = config


def _carafe_derivative(ctx, grad_out):
    x, masks = ctx.saved_tensors
    grad_x = grad_masks = None
    if ctx.needs_input_grad[0]:
        grad_x = window_gather_op(grad_out, masks, *ctx.config)
    if ctx.needs_input_grad[1]:
        grad_masks = window_products_op(grad_out, x, *ctx.config)
    return grad_x, grad_masks, None, None, None, None


def _window_gather_derivative(ctx, grad_grad_x):
    grad_out, masks = ctx.saved_tensors
    grad_grad_out = grad_masks = None
    if ctx.needs_input_grad[0]:
        grad_grad_out = carafe_op(grad_grad_x, masks, *ctx.config)
    if ctx.needs_input_grad[1]:
        grad_masks = window_products_op(grad_out, grad_grad_x, *ctx.config)
    return grad_grad_out, grad_masks, None, None, None, None


def window_products_derivative(ctx, grad_result):
    """Derivative of a window product (``carafe_window_products``, and SAPA's
    similarity, which is one)."""
    grad_out, x = ctx.saved_tensors
    grad_grad_out = grad_x = None
    if ctx.needs_input_grad[0]:
        grad_grad_out = carafe_op(x, grad_result, *ctx.config)
    if ctx.needs_input_grad[1]:
        grad_x = window_gather_op(grad_out, grad_result, *ctx.config)
    return grad_grad_out, grad_x, None, None, None, None


carafe_op.register_autograd(_carafe_derivative, setup_context=save_inputs)
window_gather_op.register_autograd(_window_gather_derivative, setup_context=save_inputs)
window_products_op.register_autograd(window_products_derivative, setup_context=save_inputs)


def window_flops(high_res_shape, kernel_size):
    """One multiply-add (2 FLOPs) per channel, window slot and high-res
    pixel: the count of all three operations (border slots included)."""
    return 2 * math.prod(high_res_shape) * kernel_size * kernel_size


@register_flop_formula(torch.ops.upsamplelib.carafe)
def _(x_shape, masks_shape, kernel_size, *args, out_shape=None, **kwargs):
    return window_flops(out_shape, kernel_size)


@register_flop_formula(torch.ops.upsamplelib.carafe_window_gather)
def _(grad_shape, masks_shape, kernel_size, *args, out_shape=None, **kwargs):
    return window_flops(grad_shape, kernel_size)


@register_flop_formula(torch.ops.upsamplelib.carafe_window_products)
def _(grad_shape, x_shape, kernel_size, *args, out_shape=None, **kwargs):
    return window_flops(grad_shape, kernel_size)


def check_not_mmcv_order(x, masks, kernel_size, scale, group, op="carafe"):
    """Refuse a call in mmcv's order, ``carafe(features, masks, kernel_size,
    group_size, scale_factor)``, which hands this function ``scale=G`` and
    ``group=s``. masks of shape (N, G*k*k, s*h, s*w) fit this reading only
    when G == s (G*k*k == s*k*k and s*h == G*h), and then the two orders
    are one and the same call. So every other mmcv-order call with
    well-formed masks fails the shape checks: this says why, naming the
    order, before any other check can blame a shape."""
    low_height, low_width = x.shape[2], x.shape[3]
    slots = kernel_size * kernel_size
    fits = masks.shape[1] == group * slots and tuple(masks.shape[2:]) == (scale * low_height, scale * low_width)
    fits_swapped = (masks.shape[1] == scale * slots
                    and tuple(masks.shape[2:]) == (group * low_height, group * low_width))
    if not fits and fits_swapped:
        raise ValueError(
            f"{op}: the arguments look like mmcv's order. mmcv.ops.carafe(features, masks, kernel_size, "
            f"group_size, scale_factor) takes the group before the scale; ul.carafe(x, masks, kernel_size, scale, "
            f"group) takes the scale first. masks {shape_str(masks)} for x {shape_str(x)} fit scale={group}, "
            f"group={scale}: call {op}(x, masks, {kernel_size}, {group}, {scale}), or pass scale= and group= by "
            f"keyword")


def check_carafe_arguments(x, masks, kernel_size, scale, group, op="carafe"):
    """Validate the arguments of ``carafe``; raise before any launch."""
    check_feature_map(x, "x", op)
    check_feature_map(masks, "masks", op)
    kernel_size = check_odd_kernel_size(kernel_size, "kernel_size", op)
    scale = check_positive_int(scale, "scale", op)
    group = check_positive_int(group, "group", op)
    check_not_mmcv_order(x, masks, kernel_size, scale, group, op)
    channels = x.shape[1]
    if channels % group != 0:
        raise ValueError(f"{op}: group={group} must divide the {channels} channels of x")
    check_same_batch(x, "x", masks, "masks", op)
    expected_slots = group * kernel_size * kernel_size
    if masks.shape[1] != expected_slots:
        raise ValueError(
            f"{op}: masks has {masks.shape[1]} channels; expected group * kernel_size**2 = "
            f"{group} * {kernel_size}**2 = {expected_slots} (masks {shape_str(masks)}). Note the order of the "
            f"arguments: {op}(x, masks, kernel_size, scale, group), not mmcv's (..., kernel_size, group_size, "
            f"scale_factor)"
        )
    check_upsampled_size(masks, "masks", x, "x", scale, op)
    check_same_device(x, "x", masks, "masks", op)
    return kernel_size, scale, group


def carafe(x, masks, kernel_size, scale, group=1, backend=None):
    """CARAFE reassembly (see the module docstring for the exact formula).

    The order differs from mmcv's ``carafe(features, masks, kernel_size,
    group_size, scale_factor)``: here the scale comes before the group. A
    call in mmcv's order raises ``ValueError`` saying so (when the group
    equals the scale the two orders are the same call).

    Args:
        x: (N, C, h, w) features.
        masks: (N, group*kernel_size**2, scale*h, scale*w) reassembly kernels,
            already normalised (e.g. softmax over each group's k*k slots).
        kernel_size: odd window size k.
        scale: integer upsampling factor s.
        group: channel groups G (each uses its own kernels); must divide C.
        backend: None/"auto", "cuda", "cpu" or "torch".

    Returns:
        (N, C, scale*h, scale*w), dtype ``torch.promote_types(x.dtype, masks.dtype)``;
        differentiable with respect to ``x`` and ``masks``, to any order.
    """
    op = "carafe"
    kernel_size, scale, group = check_carafe_arguments(x, masks, kernel_size, scale, group, op)
    backend = reference_for_empty_batch(resolve_backend(backend, [x, masks], op), x.shape[0])
    if backend != "torch" and (split := forward_tangents(x, masks)) is not None:
        (x, masks), (dx, dmasks) = split
        return with_tangent(carafe(x, masks, kernel_size, scale, group, backend),
                            [carafe(dx, masks, kernel_size, scale, group, backend) if dx is not None else None,
                             carafe(x, dmasks, kernel_size, scale, group, backend) if dmasks is not None else None])
    result_dtype = torch.promote_types(x.dtype, masks.dtype)
    compute_dtype = kernel_dtype(result_dtype)
    x, masks = in_dtype(x, compute_dtype), in_dtype(masks, compute_dtype)
    if backend == "torch":
        out = carafe_reference(x, masks, kernel_size, scale, group)
    else:
        x, masks = kernel_layout(x), kernel_layout(masks)
        out = carafe_op(x, masks, kernel_size, scale, group, backend)
    return in_dtype(out, result_dtype)


# --------------------------------------------------------------------------
# The module
# --------------------------------------------------------------------------


def _pixel_shuffle(x, scale):
    """``F.pixel_shuffle`` as a view, a permute and a copy: the same values, and
    it has a backward for an empty batch, which PyTorch's op lacks."""
    n, channels, height, width = x.shape
    out_channels = channels // (scale * scale)
    blocks = x.reshape(n, out_channels, scale, scale, height, width).permute(0, 1, 4, 2, 5, 3)
    return blocks.reshape(n, out_channels, height * scale, width * scale)


class CARAFE(nn.Module):
    """The CARAFE upsampler: predict a k x k kernel per output pixel from the
    content, then reassemble ``x`` with it. A drop-in replacement for
    ``F.interpolate(x, scale_factor=scale)`` in a decoder.

    Parameter names follow mmcv's ``CARAFEPack`` (``channel_compressor``,
    ``content_encoder``), so its checkpoints load with ``load_state_dict``,
    and so do its arguments: ``CARAFE(channels, scale_factor=2, ...)`` (or
    positionally, ``CARAFE(channels, 2, ...)``) is ``CARAFEPack``'s call;
    ``scale_factor`` is an alias of ``scale`` (default 2; giving both with
    different values is an error) and a read-only attribute too. Init as
    mmcv's: Xavier-uniform convolutions with zero bias, then the content
    encoder's weight normal(std=0.001) so the kernels start near uniform.
    The attribute ``backend`` (default None: by device) selects the
    reassembly backend, e.g. ``module.backend = "torch"`` for the reference.
    """

    def __init__(self, channels, scale=None, up_kernel=5, up_group=1, encoder_kernel=3,
                 encoder_dilation=1, compressed_channels=64, *, scale_factor=None):
        super().__init__()
        check_positive_int(channels, "channels", "CARAFE")
        self.channels = channels
        if scale is not None:
            check_positive_int(scale, "scale", "CARAFE")
        if scale_factor is not None:
            check_positive_int(scale_factor, "scale_factor", "CARAFE")
            if scale is not None and scale != scale_factor:
                raise ValueError(f"CARAFE: scale={scale} and scale_factor={scale_factor} differ; scale_factor is "
                                 f"mmcv's name for scale: give one of them")
            scale = scale_factor
        scale = 2 if scale is None else scale
        self.scale = check_positive_int(scale, "scale", "CARAFE")
        self.up_kernel = check_odd_kernel_size(up_kernel, "up_kernel", "CARAFE")
        self.up_group = check_positive_int(up_group, "up_group", "CARAFE")
        if channels % up_group:
            raise ValueError(f"CARAFE: up_group={up_group} must divide channels={channels}")
        encoder_kernel = check_odd_kernel_size(encoder_kernel, "encoder_kernel", "CARAFE")
        encoder_dilation = check_positive_int(encoder_dilation, "encoder_dilation", "CARAFE")
        compressed_channels = check_positive_int(compressed_channels, "compressed_channels", "CARAFE")
        self.backend = None
        self.channel_compressor = nn.Conv2d(channels, compressed_channels, 1)
        self.content_encoder = nn.Conv2d(
            compressed_channels,
            scale * scale * up_group * up_kernel * up_kernel,
            encoder_kernel,
            padding=(encoder_kernel - 1) * encoder_dilation // 2,
            dilation=encoder_dilation,
        )
        self.reset_parameters()

    @property
    def scale_factor(self):
        """mmcv's name for ``scale``."""
        return self.scale

    def reset_parameters(self):
        for conv in (self.channel_compressor, self.content_encoder):
            nn.init.xavier_uniform_(conv.weight)
            nn.init.zeros_(conv.bias)
        # Near-zero logits: the kernels start almost uniform (mmcv's init).
        nn.init.normal_(self.content_encoder.weight, std=0.001)

    def kernels(self, x):
        """The normalised reassembly kernels, (N, G*k*k, s*h, s*w)."""
        logits = self.content_encoder(self.channel_compressor(x))
        logits = _pixel_shuffle(logits, self.scale)
        n, slots, height, width = logits.shape
        area = self.up_kernel * self.up_kernel
        weights = F.softmax(logits.view(n, slots // area, area, height, width), dim=2)
        return weights.view(n, slots, height, width)

    def forward(self, x):
        check_batched_map(x, "x", "CARAFE")
        check_module_input(x, "x", self.channels, self, "CARAFE")
        return carafe(x, self.kernels(x), self.up_kernel, self.scale, self.up_group, backend=self.backend)

    def extra_repr(self):
        return (f"channels={self.channels}, scale={self.scale}, up_kernel={self.up_kernel}, "
                f"up_group={self.up_group}")

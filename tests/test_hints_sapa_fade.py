"""Hints that help, lessons 04 (SAPA) and 05 (FADE): for each hint of
checkers/sapa.py and checkers/fade.py that tests/test_hints.py and
tests/test_wrong_answers.py do not already hold, a wrong answer written as a
student would from the lesson, and the hint shown names that answer's actual
mistake (and not a neighbouring one)."""

from __future__ import annotations

import math
import warnings

import numba
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from numba import cuda

import upsamplelib as ul
from test_hints import hint_of, simulator_only
from test_lesson_helpers_fade import (
    _arrays,
    fade_forward,
    grad_de_kernel,
    grad_en_kernel,
    grad_weight_kernel,
    pixel,
    read_or_zero,
    semi_shift_kernel,
)
from test_lesson_helpers_sapa import (
    MAX_AREA,
    THREADS,
    similarity_kernel,
    similarity_reference,
    softmax_kernel,
    window_neighbour,
)
from upsamplelib import checkers
from upsamplelib.checkers import sapa as plain_sapa_checkers
from upsamplelib.backend import launch_config
from upsamplelib.ops.sapa import sapa_similarity_reference

# ==========================================================================
# Lesson 04: SAPA
# ==========================================================================

# --- 04.1 the embedding


def _embedding(norm=True, affine=True, channels_back=True):
    def embed(module, y, x):
        pair = []
        for t, layer_norm, linear in ((y, module.norm_y, module.q), (x, module.norm_x, module.k)):
            last = t.permute(0, 2, 3, 1)
            if norm:
                last = layer_norm(last) if affine else F.layer_norm(last, (t.shape[1],))
            projected = linear(last)
            pair.append(projected.permute(0, 3, 1, 2) if channels_back else projected)
        return tuple(pair)

    return embed


def test_embedding_with_a_plain_layer_norm_is_told_the_scale_and_shift_are_missing():
    message = hint_of(checkers.check_sapa_embedding, _embedding(affine=False))
    assert "learned scale and shift are missing" in message and "module.norm_y" in message


def test_embedding_without_the_layer_norm_is_told_it_is_missing():
    message = hint_of(checkers.check_sapa_embedding, _embedding(norm=False))
    assert "the LayerNorm is missing" in message and "scale and shift" not in message


def test_embedding_left_channels_last_is_told_to_move_them_back():
    message = hint_of(checkers.check_sapa_embedding, _embedding(channels_back=False))
    assert "wrong shape" in message and "move the channels back (permute(0, 3, 1, 2))" in message


def test_embedding_returning_one_map_is_told_to_return_the_pair():
    assert "expected a pair (q, key), got Tensor" in hint_of(
        checkers.check_sapa_embedding, lambda module, y, x: _embedding()(module, y, x)[0])


# --- 04.2 the similarity in PyTorch


def similarity_tiled_not_repeated(q, key, kernel_size, scale):
    n, d, h, w = key.shape
    windows = F.unfold(key, kernel_size, padding=(kernel_size - 1) // 2).view(n, d, kernel_size**2, h, w)
    windows = windows.repeat(1, 1, 1, scale, scale)  # tiles the map; each window must repeat s times in place
    return (q.unsqueeze(2) * windows).sum(dim=1)


def test_similarity_tiling_the_windows_is_told_to_repeat_each_one():
    message = hint_of(checkers.check_similarity_reference, similarity_tiled_not_repeated)
    assert "repeat each s times along both axes" in message
    assert "wrong order" not in message and "outside the low-res map" not in message


def test_similarity_returning_an_array_is_told_to_return_a_tensor():
    message = hint_of(checkers.check_similarity_reference,
                      lambda q, key, k, s: similarity_reference(q, key, k, s).numpy())
    assert "expected a tensor, got ndarray" in message


# --- 04.3 the similarity kernel


@cuda.jit
def similarity_without_guard(q, key, logits, kernel_size, scale):
    i = cuda.grid(1)
    area, height, width = logits.shape[1], logits.shape[2], logits.shape[3]
    X, Y = i % width, (i // width) % height
    t, n = (i // (width * height)) % area, i // (width * height * area)
    row, col = window_neighbour(t, Y, X, kernel_size, scale)
    total = 0.0
    if 0 <= row < key.shape[2] and 0 <= col < key.shape[3]:
        for c in range(q.shape[1]):
            total += q[n, c, Y, X] * key[n, c, row, col]
    logits[n, t, Y, X] = total


@cuda.jit
def similarity_reading_every_neighbour(q, key, logits, kernel_size, scale):
    i = cuda.grid(1)
    if i < logits.size:
        area, height, width = logits.shape[1], logits.shape[2], logits.shape[3]
        X, Y = i % width, (i // width) % height
        t, n = (i // (width * height)) % area, i // (width * height * area)
        row, col = window_neighbour(t, Y, X, kernel_size, scale)
        total = 0.0
        for c in range(q.shape[1]):  # no check that (row, col) lies inside key
            total += q[n, c, Y, X] * key[n, c, row, col]
        logits[n, t, Y, X] = total


@cuda.jit
def similarity_guarded_by_q(q, key, logits, kernel_size, scale):
    i = cuda.grid(1)
    if i < q.size:  # the guard of the wrong array: logits has k*k / d times more elements
        area, height, width = logits.shape[1], logits.shape[2], logits.shape[3]
        X, Y = i % width, (i // width) % height
        t, n = (i // (width * height)) % area, i // (width * height * area)
        row, col = window_neighbour(t, Y, X, kernel_size, scale)
        total = 0.0
        if 0 <= row < key.shape[2] and 0 <= col < key.shape[3]:
            for c in range(q.shape[1]):
                total += q[n, c, Y, X] * key[n, c, row, col]
        logits[n, t, Y, X] = total


@cuda.jit
def similarity_slot_unravelled_without_width(q, key, logits, kernel_size, scale):
    i = cuda.grid(1)
    if i < logits.size:
        area, height, width = logits.shape[1], logits.shape[2], logits.shape[3]
        X, Y = i % width, (i // width) % height
        t, n = (i // height) % area, i // (width * height * area)  # t = (i // (width * height)) % area
        row, col = window_neighbour(t, Y, X, kernel_size, scale)
        total = 0.0
        if 0 <= row < key.shape[2] and 0 <= col < key.shape[3]:
            for c in range(q.shape[1]):
                total += q[n, c, Y, X] * key[n, c, row, col]
        logits[n, t, Y, X] = total


@cuda.jit
def similarity_query_at_the_low_res_pixel(q, key, logits, kernel_size, scale):
    i = cuda.grid(1)
    if i < logits.size:
        area, height, width = logits.shape[1], logits.shape[2], logits.shape[3]
        X, Y = i % width, (i // width) % height
        t, n = (i // (width * height)) % area, i // (width * height * area)
        row, col = window_neighbour(t, Y, X, kernel_size, scale)
        total = 0.0
        if 0 <= row < key.shape[2] and 0 <= col < key.shape[3]:
            for c in range(q.shape[1]):
                total += q[n, c, Y // scale, X // scale] * key[n, c, row, col]  # q is high-res: q[n, c, Y, X]
        logits[n, t, Y, X] = total


def test_similarity_kernel_reading_q_at_the_low_res_pixel_is_told_the_formula():
    message = hint_of(checkers.check_similarity_kernel, similarity_query_at_the_low_res_pixel)
    assert "sum q[n, c, Y, X] * key[n, c, row, col] over the channels c" in message


def test_similarity_kernel_with_a_wrong_unravel_is_told_to_check_it():
    message = hint_of(checkers.check_similarity_kernel, similarity_slot_unravelled_without_width)
    assert "never written, scattered through the array: check the unravel of i" in message


@simulator_only
def test_similarity_kernel_without_guard_is_told_to_guard():
    message = hint_of(checkers.check_similarity_kernel, similarity_without_guard)
    assert "the last block runs past logits.size: guard with `if i < logits.size:`" in message


@simulator_only
def test_similarity_kernel_reading_outside_the_map_is_told_to_skip_those_neighbours():
    message = hint_of(checkers.check_similarity_kernel, similarity_reading_every_neighbour)
    assert "the guard is right to let it through" in message
    assert "Check that window neighbours outside the map are skipped before they are read" in message


def test_similarity_kernel_guarded_by_the_wrong_size_is_told_where_the_writes_stop():
    message = hint_of(checkers.check_similarity_kernel, similarity_guarded_by_q)
    assert "from flat index 288 on were never written" in message and "`if i < logits.size:`" in message


# --- 04.4 the softmax kernel


@cuda.jit
def softmax_numerator_unshifted(logits, weights):
    i = cuda.grid(1)
    area, height, width = logits.shape[1], logits.shape[2], logits.shape[3]
    if i < logits.shape[0] * height * width:
        X, Y, n = i % width, (i // width) % height, i // (width * height)
        top = logits[n, 0, Y, X]
        for t in range(1, area):
            top = max(top, logits[n, t, Y, X])
        total = 0.0
        for t in range(area):
            total += math.exp(logits[n, t, Y, X] - top)
        for t in range(area):
            weights[n, t, Y, X] = math.exp(logits[n, t, Y, X]) / total  # the max is left out of the numerator


@cuda.jit
def softmax_float32_max_from_zero(logits, weights):
    i = cuda.grid(1)
    area, height, width = logits.shape[1], logits.shape[2], logits.shape[3]
    if i < logits.shape[0] * height * width:
        X, Y, n = i % width, (i // width) % height, i // (width * height)
        top = numba.float32(0.0)  # should start at the first logit
        for t in range(area):
            top = max(top, logits[n, t, Y, X])
        total = numba.float32(0.0)  # float32, as on the GPU: exp(-400) underflows to 0, then 0 / 0 = nan
        for t in range(area):
            total += numba.float32(math.exp(logits[n, t, Y, X] - top))
        for t in range(area):
            weights[n, t, Y, X] = numba.float32(math.exp(logits[n, t, Y, X] - top)) / total


@cuda.jit
def softmax_guarded_by_the_logits(logits, weights):
    i = cuda.grid(1)
    area, height, width = logits.shape[1], logits.shape[2], logits.shape[3]
    if i < logits.size:  # one thread per point, not per logit
        X, Y, n = i % width, (i // width) % height, i // (width * height)
        top = logits[n, 0, Y, X]
        for t in range(1, area):
            top = max(top, logits[n, t, Y, X])
        total = 0.0
        for t in range(area):
            total += math.exp(logits[n, t, Y, X] - top)
        for t in range(area):
            weights[n, t, Y, X] = math.exp(logits[n, t, Y, X] - top) / total


@cuda.jit
def softmax_batch_by_height(logits, weights):
    i = cuda.grid(1)
    area, height, width = logits.shape[1], logits.shape[2], logits.shape[3]
    if i < logits.shape[0] * height * width:
        X, Y, n = i % width, (i // width) % height, i // height  # n = i // (width * height)
        top = logits[n, 0, Y, X]
        for t in range(1, area):
            top = max(top, logits[n, t, Y, X])
        total = 0.0
        for t in range(area):
            total += math.exp(logits[n, t, Y, X] - top)
        for t in range(area):
            weights[n, t, Y, X] = math.exp(logits[n, t, Y, X] - top) / total


def test_softmax_without_the_max_in_the_numerator_is_told_the_formula():
    message = hint_of(checkers.check_softmax_kernel, softmax_numerator_unshifted)
    assert "exp(logits[n, t, Y, X] - m) / sum over t'" in message and "with m the largest logit" in message
    assert "Error" not in message


def test_float32_softmax_whose_max_starts_at_zero_is_told_where_to_start_it():
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        message = hint_of(checkers.check_softmax_kernel, softmax_float32_max_from_zero)
    assert "weights are nan or inf" in message and "every logit of this case is below" in message
    assert "Start the running maximum at the point's first logit" in message


def _softmax_shifted_by(shift):
    """The lesson's softmax kernel, shifted by another number than the largest logit."""

    @cuda.jit
    def kernel(logits, weights):
        i = cuda.grid(1)
        area, height, width = logits.shape[1], logits.shape[2], logits.shape[3]
        if i < logits.shape[0] * height * width:
            X, Y, n = i % width, (i // width) % height, i // (width * height)
            top = logits[n, 0, Y, X]
            if shift == 0:  # the mean
                for t in range(1, area):
                    top += logits[n, t, Y, X]
                top /= area
            elif shift == 1:  # a maximum whose loop stops one slot short
                for t in range(1, area - 1):
                    top = max(top, logits[n, t, Y, X])
            else:  # the maximum from 0, or the smallest logit when all are below 0
                top = 0.0
                for t in range(area):
                    top = max(top, logits[n, t, Y, X])
                if top == 0.0:
                    top = logits[n, 0, Y, X]
                    for t in range(1, area):
                        top = min(top, logits[n, t, Y, X])
            total = 0.0
            for t in range(area):
                total += math.exp(logits[n, t, Y, X] - top)
            for t in range(area):
                weights[n, t, Y, X] = math.exp(logits[n, t, Y, X] - top) / total

    return kernel


@simulator_only
@pytest.mark.parametrize("shift", [0, 1, 2], ids=["mean", "max skips the last slot", "smallest when all below 0"])
def test_softmax_shifted_by_another_number_than_the_max_is_told_to_take_the_max(shift):
    message = hint_of(checkers.check_softmax_kernel, _softmax_shifted_by(shift))
    assert "OverflowError" in message and "one slot (each slot at some point, the last included)" in message
    assert "the shift must be the point's largest logit, found over every slot" in message


@simulator_only
def test_block_softmax_shifted_by_the_mean_is_told_to_take_the_max():
    from test_lesson_helpers_sapa import _block_kernel

    message = hint_of(checkers.check_similarity_block_kernel, _block_kernel(mean_shift=True), THREADS)
    assert "one logit of 800 in each window" in message
    assert "the shift must be the point's largest logit, found over every slot" in message


@simulator_only
def test_softmax_with_one_thread_per_logit_is_told_the_point_count():
    message = hint_of(checkers.check_softmax_kernel, softmax_guarded_by_the_logits)
    assert "there are N * H * W points, fewer than threads" in message


@simulator_only
def test_softmax_unravelling_the_batch_wrongly_is_told_the_point_unravel():
    message = hint_of(checkers.check_softmax_kernel, softmax_batch_by_height)
    assert "the guard is right to let it through" in message and "n = i // (W * H)" in message
    assert "window neighbours" not in message  # the softmax has none


# --- 04.5 the block kernel


def _block(write="loop", max_start="first", reduce_to=0, outside_zero=False, divergent=False):
    """The lesson's block kernel with one mistake: ``write`` "loop" (right),
    "lane" (slot t = lane, no loop and no check) or "lanes" (t = lane for the
    lanes below k*k only); ``max_start`` "first" or "none" (no max
    subtracted); ``reduce_to`` 1 stops the reduction a step early;
    ``outside_zero`` writes 0 for out-of-map slots after a right softmax;
    ``divergent`` puts the barrier inside the branch."""

    @cuda.jit
    def kernel(q, key, weights, kernel_size, scale):
        partial = cuda.shared.array((MAX_AREA, THREADS), numba.float32)
        lane = cuda.threadIdx.x
        point = cuda.blockIdx.x
        height, width = q.shape[2], q.shape[3]
        X, Y, n = point % width, (point // width) % height, point // (width * height)
        area = kernel_size * kernel_size
        if write == "lane":  # zeroes its whole column first, so that partial[lane, 0] below reads 0, not garbage
            for t in range(MAX_AREA):
                partial[t, lane] = 0.0
        for t in range(area):
            row, col = window_neighbour(t, Y, X, kernel_size, scale)
            total = 0.0
            if 0 <= row < key.shape[2] and 0 <= col < key.shape[3]:
                for c in range(lane, q.shape[1], THREADS):
                    total += q[n, c, Y, X] * key[n, c, row, col]
            partial[t, lane] = total
        cuda.syncthreads()
        stride = THREADS // 2
        while stride > reduce_to:
            if lane < stride:
                for t in range(area):
                    partial[t, lane] += partial[t, lane + stride]
                if divergent:
                    cuda.syncthreads()
            if not divergent:
                cuda.syncthreads()
            stride //= 2
        top = 0.0
        if max_start == "first":
            top = partial[0, 0]
            for t in range(1, area):
                top = max(top, partial[t, 0])
        total = 0.0
        for t in range(area):
            total += math.exp(partial[t, 0] - top)
        if write == "lane":
            weights[n, lane, Y, X] = math.exp(partial[lane, 0] - top) / total
        elif write == "lanes":
            if lane < area:
                weights[n, lane, Y, X] = math.exp(partial[lane, 0] - top) / total
        else:
            for t in range(lane, area, THREADS):
                row, col = window_neighbour(t, Y, X, kernel_size, scale)
                inside = 0 <= row < key.shape[2] and 0 <= col < key.shape[3]
                weights[n, t, Y, X] = 0.0 if outside_zero and not inside else math.exp(partial[t, 0] - top) / total

    return kernel


@simulator_only
def test_block_kernel_writing_slot_lane_is_told_the_slot_loop():
    message = hint_of(checkers.check_similarity_block_kernel, _block(write="lane"), THREADS)
    assert "a lane's index ran past the end of an array" in message
    assert "t in range(threadIdx.x, k*k, THREADS)" in message


def test_block_kernel_writing_one_slot_per_lane_is_told_there_may_be_more_slots():
    message = hint_of(checkers.check_similarity_block_kernel, _block(write="lanes"), THREADS)
    assert "never written" in message and "there may be more slots than threads" in message


def test_block_kernel_without_the_max_is_told_to_subtract_it():
    message = hint_of(checkers.check_similarity_block_kernel, _block(max_start="none"), THREADS)
    assert "OverflowError" in message and "Subtract each point's largest logit" in message
    assert "Start the running maximum" not in message  # there is no running maximum to start


def test_block_kernel_zeroing_out_of_map_weights_is_told_their_weight():
    message = hint_of(checkers.check_similarity_block_kernel, _block(outside_zero=True), THREADS)
    assert "outside the low-res map" in message and "its weight is then exp(0 - max) / sum, not 0" in message


def test_block_kernel_stopping_the_reduction_early_is_not_told_to_loop_over_the_channels():
    message = hint_of(checkers.check_similarity_block_kernel, _block(reduce_to=1), THREADS)
    assert "halve the active threads each step" in message
    assert "does every thread loop" not in message  # every lane does loop; two lanes' sums are never added


@simulator_only
def test_block_kernel_with_a_barrier_in_the_branch_is_told_every_thread_must_reach_it():
    message = hint_of(checkers.check_similarity_block_kernel, _block(divergent=True), THREADS)
    assert "different numbers of times" in message and "keep it out of `if threadIdx.x < ...` branches" in message


def test_block_kernel_with_a_runtime_shared_shape_is_told_to_use_a_constant():
    @cuda.jit
    def runtime_shape(q, key, weights, kernel_size, scale):
        partial = cuda.shared.array((kernel_size * kernel_size, THREADS), numba.float32)
        partial[0, 0] = 0.0

    message = hint_of(checkers.check_similarity_block_kernel, runtime_shape, THREADS)
    assert "shape `(kernel_size * kernel_size, THREADS)`" in message and "`MAX_AREA = 49` at module level" in message


# --- 04.6 the whole upsampler (the kernels from the library's reference: no simulator needed)


def _sapa_forward(normalise=True, values="x"):
    def sapa_forward(module, y, x):
        k, s = module.up_kernel_size, module.up_factor
        q, key = module.queries_and_keys(y, x)
        logits = sapa_similarity_reference(q, key, k, s)
        kernels = F.softmax(logits, dim=1) if normalise else logits
        return ul.carafe(x if values == "x" else key, kernels, k, s, group=1)

    return sapa_forward


def test_right_values_pass_the_sapa_forward_checks_of_values_but_not_the_exercise(capsys):
    plain_sapa_checkers.check_sapa_forward(_sapa_forward())
    assert capsys.readouterr().out.startswith("PASS sapa_forward")
    # The lesson's checker also wants 04.5's kernel launched, which this one never does.
    assert "`similarity_block_kernel` was never launched" in hint_of(checkers.check_sapa_forward, _sapa_forward())


def test_sapa_forward_returning_an_array_is_told_to_return_a_tensor():
    message = hint_of(checkers.check_sapa_forward, lambda module, y, x: _sapa_forward()(module, y, x).detach().numpy())
    assert "expected a tensor, got ndarray" in message


def test_sapa_forward_with_the_logits_is_told_the_kernels_are_not_normalised():
    message = hint_of(checkers.check_sapa_forward, _sapa_forward(normalise=False))
    assert "the kernels are not normalised: these are the logits of 04.3" in message


def test_sapa_forward_reassembling_the_keys_is_told_the_values_are_x():
    message = hint_of(checkers.check_sapa_forward, _sapa_forward(values="key"))
    assert "wrong shape" in message and "the values are the raw x" in message


# --- 04.7 and 04.8 the gradients


@cuda.jit
def grad_query_accumulating(grad_logits, key, grad_q, kernel_size, scale):
    i = cuda.grid(1)
    if i < grad_q.size:
        channels, height, width = grad_q.shape[1], grad_q.shape[2], grad_q.shape[3]
        X, Y = i % width, (i // width) % height
        c, n = (i // (width * height)) % channels, i // (width * height * channels)
        for t in range(kernel_size * kernel_size):
            row, col = window_neighbour(t, Y, X, kernel_size, scale)
            if 0 <= row < key.shape[2] and 0 <= col < key.shape[3]:
                grad_q[n, c, Y, X] += grad_logits[n, t, Y, X] * key[n, c, row, col]  # onto the checker's NaN


@cuda.jit
def grad_query_slots_column_major(grad_logits, key, grad_q, kernel_size, scale):
    i = cuda.grid(1)
    if i < grad_q.size:
        channels, height, width = grad_q.shape[1], grad_q.shape[2], grad_q.shape[3]
        X, Y = i % width, (i // width) % height
        c, n = (i // (width * height)) % channels, i // (width * height * channels)
        r = (kernel_size - 1) // 2
        total = 0.0
        for t in range(kernel_size * kernel_size):
            row, col = Y // scale + t % kernel_size - r, X // scale + t // kernel_size - r
            if 0 <= row < key.shape[2] and 0 <= col < key.shape[3]:
                total += grad_logits[n, t, Y, X] * key[n, c, row, col]
        grad_q[n, c, Y, X] = total


@cuda.jit
def grad_query_reading_every_neighbour(grad_logits, key, grad_q, kernel_size, scale):
    i = cuda.grid(1)
    if i < grad_q.size:
        channels, height, width = grad_q.shape[1], grad_q.shape[2], grad_q.shape[3]
        X, Y = i % width, (i // width) % height
        c, n = (i // (width * height)) % channels, i // (width * height * channels)
        total = 0.0
        for t in range(kernel_size * kernel_size):
            row, col = window_neighbour(t, Y, X, kernel_size, scale)
            total += grad_logits[n, t, Y, X] * key[n, c, row, col]
        grad_q[n, c, Y, X] = total


def _grad_key(anchor_sign=-1, all_outputs=True):
    @cuda.jit
    def kernel(grad_logits, q, grad_key, kernel_size, scale):
        i = cuda.grid(1)
        if i < grad_key.size:
            channels, height, width = grad_key.shape[1], grad_key.shape[2], grad_key.shape[3]
            col, row = i % width, (i // width) % height
            c, n = (i // (width * height)) % channels, i // (width * height * channels)
            radius = (kernel_size - 1) // 2
            total = 0.0
            for dy in range(kernel_size):
                for dx in range(kernel_size):
                    anchor_row = row + anchor_sign * (dy - radius)
                    anchor_col = col + anchor_sign * (dx - radius)
                    if 0 <= anchor_row < height and 0 <= anchor_col < width:
                        t = dy * kernel_size + dx
                        span = scale if all_outputs else 1
                        for Y in range(anchor_row * scale, anchor_row * scale + span):
                            for X in range(anchor_col * scale, anchor_col * scale + span):
                                total += grad_logits[n, t, Y, X] * q[n, c, Y, X]
            grad_key[n, c, row, col] = total

    return kernel


def test_grad_query_adding_into_the_output_is_told_to_write_its_total():
    message = hint_of(checkers.check_grad_query_kernel, grad_query_accumulating)
    assert "was never written" in message and "the checker does not zero the array first" in message


def test_grad_query_with_column_major_slots_is_told_the_slot_order():
    message = hint_of(checkers.check_grad_query_kernel, grad_query_slots_column_major)
    assert "the window slots are in the wrong order" in message


@cuda.jit
def grad_query_without_guard(grad_logits, key, grad_q, kernel_size, scale):
    i = cuda.grid(1)
    channels, height, width = grad_q.shape[1], grad_q.shape[2], grad_q.shape[3]
    X, Y = i % width, (i // width) % height
    c, n = (i // (width * height)) % channels, i // (width * height * channels)
    total = 0.0
    for t in range(kernel_size * kernel_size):
        row, col = window_neighbour(t, Y, X, kernel_size, scale)
        if 0 <= row < key.shape[2] and 0 <= col < key.shape[3]:
            total += grad_logits[n, t, Y, X] * key[n, c, row, col]
    grad_q[n, c, Y, X] = total


@simulator_only
def test_grad_query_without_guard_is_told_to_guard():
    assert "guard with `if i < grad_q.size:`" in hint_of(checkers.check_grad_query_kernel, grad_query_without_guard)


@simulator_only
def test_grad_query_reading_outside_the_map_is_told_to_skip_those_neighbours():
    message = hint_of(checkers.check_grad_query_kernel, grad_query_reading_every_neighbour)
    assert "Check that window neighbours outside the map are skipped" in message


def test_right_sapa_gradient_kernels_pass(capsys):
    checkers.check_grad_key_kernel(_grad_key())
    assert capsys.readouterr().out.startswith("PASS grad_key_kernel")


@pytest.mark.parametrize("kernel, named, not_named", [
    (_grad_key(anchor_sign=1), r"the anchor is \(row - dy \+ r, col - dx \+ r\) \(minus, not plus\)", "one output"),
    (_grad_key(all_outputs=False), r"only one output per low-res pixel is counted", "the anchor is"),
], ids=["anchor plus", "one output per pixel"])
def test_wrong_grad_key_is_named(kernel, named, not_named):
    import re

    message = hint_of(checkers.check_grad_key_kernel, kernel)
    assert re.search(named, message) and not_named not in message


@cuda.jit
def grad_query_without_the_key(grad_logits, key, grad_q, kernel_size, scale):
    i = cuda.grid(1)
    if i < grad_q.size:
        channels, height, width = grad_q.shape[1], grad_q.shape[2], grad_q.shape[3]
        X, Y = i % width, (i // width) % height
        c, n = (i // (width * height)) % channels, i // (width * height * channels)
        total = 0.0
        for t in range(kernel_size * kernel_size):
            row, col = window_neighbour(t, Y, X, kernel_size, scale)
            if 0 <= row < key.shape[2] and 0 <= col < key.shape[3]:
                total += grad_logits[n, t, Y, X]  # times key[n, c, row, col]
        grad_q[n, c, Y, X] = total


@cuda.jit
def grad_key_without_the_lower_column_check(grad_logits, q, grad_key, kernel_size, scale):
    i = cuda.grid(1)
    if i < grad_key.size:
        channels, height, width = grad_key.shape[1], grad_key.shape[2], grad_key.shape[3]
        col, row = i % width, (i // width) % height
        c, n = (i // (width * height)) % channels, i // (width * height * channels)
        radius = (kernel_size - 1) // 2
        total = 0.0
        for dy in range(kernel_size):
            for dx in range(kernel_size):
                anchor_row, anchor_col = row - dy + radius, col - dx + radius
                if 0 <= anchor_row < height and anchor_col < width:  # anchor_col -1 wraps to the last column
                    t = dy * kernel_size + dx
                    for Y in range(anchor_row * scale, anchor_row * scale + scale):
                        for X in range(anchor_col * scale, anchor_col * scale + scale):
                            total += grad_logits[n, t, Y, X] * q[n, c, Y, X]
        grad_key[n, c, row, col] = total


def test_grad_query_without_the_key_is_told_the_formula():
    message = hint_of(checkers.check_grad_query_kernel, grad_query_without_the_key)
    assert "grad_logits[n, t, Y, X] * key[n, c, row_t, col_t]" in message


def test_grad_key_reading_anchors_left_of_the_map_is_told_to_skip_them():
    message = hint_of(checkers.check_grad_key_kernel, grad_key_without_the_lower_column_check)
    assert "if that pixel is inside the map" in message and "the anchor is" not in message


def test_grad_key_with_atomics_is_told_it_is_a_gather():
    @cuda.jit
    def scatter(grad_logits, q, grad_key, kernel_size, scale):
        i = cuda.grid(1)
        if i < grad_logits.size:
            cuda.atomic.add(grad_key, (0, 0, 0, 0), grad_logits.ravel()[i])

    message = hint_of(checkers.check_grad_key_kernel, scatter)
    assert "asks for a gather" in message and "sums into its own key element" in message


# ==========================================================================
# Lesson 05: FADE
# ==========================================================================

# --- 05.1 two convolutions


def test_two_convs_without_the_upsampling_is_told_the_shapes():
    def not_upsampled(E, D, weight, bias, scale):
        pad = weight.shape[2] // 2
        return F.conv2d(E, weight, bias, padding=pad) + F.conv2d(D, weight, bias, padding=pad)

    message = hint_of(checkers.check_semi_shift_two_convs, not_upsampled)
    assert "the two paths cannot be added" in message and "upsample the decoder's by scale" in message


def test_two_convs_without_padding_is_told_to_pad():
    def unpadded(E, D, weight, bias, scale):
        return F.conv2d(E, weight, bias) + F.interpolate(F.conv2d(D, weight, bias), scale_factor=scale)

    message = hint_of(checkers.check_semi_shift_two_convs, unpadded)
    assert "cannot be added" in message and "pad both convolutions by k // 2" in message


def test_two_convs_returning_an_array_is_told_to_return_a_tensor():
    def as_array(E, D, weight, bias, scale):
        pad = weight.shape[2] // 2
        return (F.conv2d(E, weight, bias, padding=pad)
                + F.interpolate(F.conv2d(D, weight, bias, padding=pad), scale_factor=scale)).numpy()

    assert "expected a tensor, got ndarray" in hint_of(checkers.check_semi_shift_two_convs, as_array)


def test_two_convs_with_an_unpadded_encoder_alone_is_told_the_shape():
    message = hint_of(checkers.check_semi_shift_two_convs, lambda E, D, weight, bias, scale: F.conv2d(E, weight, bias))
    assert "= (N, O, s*h, s*w)" in message and "pad both convolutions by k // 2" in message


def test_two_convs_with_reflect_padding_is_told_the_zero_padded_formula():
    def reflected(E, D, weight, bias, scale):
        pad = (weight.shape[2] // 2,) * 4
        encoder = F.conv2d(F.pad(E, pad, mode="reflect"), weight, bias)
        return encoder + F.interpolate(F.conv2d(F.pad(D, pad, mode="reflect"), weight, bias), scale_factor=scale)

    message = hint_of(checkers.check_semi_shift_two_convs, reflected)
    assert "F.conv2d(E, weight, bias, padding=k // 2)" in message and "repeats the edge" not in message


# --- 05.2 one output pixel


def test_pixel_reading_past_the_end_is_told_a_tap_outside_adds_zero():
    def pixel_without_upper_check(E, D, weight, bias, n, o, Y, X, scale):
        r = weight.shape[2] // 2
        total = 2 * bias[o]
        for c in range(E.shape[1]):
            for uy in range(weight.shape[2]):
                for ux in range(weight.shape[3]):
                    for feature, row, col in ((E, Y + uy - r, X + ux - r),
                                              (D, Y // scale + uy - r, X // scale + ux - r)):
                        if row >= 0 and col >= 0:  # and row < height, col < width?
                            total += weight[o, c, uy, ux] * feature[n, c, row, col]
        return total

    message = hint_of(checkers.check_semi_shift_pixel, pixel_without_upper_check)
    assert "indexed out of bounds" in message and "a tap outside the map adds 0" in message


def test_pixel_with_an_extra_term_is_told_the_formula():
    def extra_term(E, D, weight, bias, n, o, Y, X, scale):
        return pixel(E, D, weight, bias, n, o, Y, X, scale) + 0.5  # not one of the known mistakes

    message = hint_of(checkers.check_semi_shift_pixel, extra_term)
    assert "out[n, o, Y, X] = 2 * bias[o] + sum over c, uy, ux" in message


def _pixel_one_window(encoder):
    def one_window(E, D, weight, bias, n, o, Y, X, scale):
        r = weight.shape[2] // 2
        feature, Y0, X0 = (E, Y, X) if encoder else (D, Y // scale, X // scale)
        total = 2 * bias[o]
        for c in range(E.shape[1]):
            for uy in range(weight.shape[2]):
                for ux in range(weight.shape[3]):
                    row, col = Y0 + uy - r, X0 + ux - r
                    if 0 <= row < feature.shape[2] and 0 <= col < feature.shape[3]:
                        total += weight[o, c, uy, ux] * feature[n, c, row, col]
        return total

    return one_window


@pytest.mark.parametrize("encoder, named, not_named", [
    (True, "only the encoder window is summed", "decoder window is summed"),
    (False, "only the decoder window is summed", "encoder window is summed"),
], ids=["encoder only", "decoder only"])
def test_pixel_summing_one_window_with_both_biases_is_named(encoder, named, not_named):
    message = hint_of(checkers.check_semi_shift_pixel, _pixel_one_window(encoder))
    assert named in message and not_named not in message


# --- 05.3 the one-pass kernel


@cuda.jit
def semi_shift_without_guard(E, D, weight, bias, out, scale):
    i = cuda.grid(1)
    X, Y = i % out.shape[3], (i // out.shape[3]) % out.shape[2]
    o, n = (i // (out.shape[3] * out.shape[2])) % out.shape[1], i // (out.shape[3] * out.shape[2] * out.shape[1])
    r = weight.shape[2] // 2
    total = 2.0 * bias[o]
    for c in range(E.shape[1]):
        for uy in range(weight.shape[2]):
            for ux in range(weight.shape[2]):
                total += weight[o, c, uy, ux] * (read_or_zero(E, n, c, Y + uy - r, X + ux - r)
                                                 + read_or_zero(D, n, c, Y // scale + uy - r, X // scale + ux - r))
    out[n, o, Y, X] = total


@cuda.jit
def semi_shift_without_lower_checks(E, D, weight, bias, out, scale):
    i = cuda.grid(1)
    if i < out.size:
        X, Y = i % out.shape[3], (i // out.shape[3]) % out.shape[2]
        o, n = (i // (out.shape[3] * out.shape[2])) % out.shape[1], i // (out.shape[3] * out.shape[2] * out.shape[1])
        r = weight.shape[2] // 2
        total = 2.0 * bias[o]
        for c in range(E.shape[1]):
            for uy in range(weight.shape[2]):
                for ux in range(weight.shape[2]):
                    for row, col, low in ((Y + uy - r, X + ux - r, False),
                                          (Y // scale + uy - r, X // scale + ux - r, True)):
                        feature = D if low else E
                        if row < feature.shape[2] and col < feature.shape[3]:  # -1 reads the last row
                            total += weight[o, c, uy, ux] * feature[n, c, row, col]
        out[n, o, Y, X] = total


@cuda.jit
def semi_shift_encoder_window_not_centred(E, D, weight, bias, out, scale):
    i = cuda.grid(1)
    if i < out.size:
        X, Y = i % out.shape[3], (i // out.shape[3]) % out.shape[2]
        o, n = (i // (out.shape[3] * out.shape[2])) % out.shape[1], i // (out.shape[3] * out.shape[2] * out.shape[1])
        r = weight.shape[2] // 2
        total = 2.0 * bias[o]
        for c in range(E.shape[1]):
            for uy in range(weight.shape[2]):
                for ux in range(weight.shape[2]):
                    total += weight[o, c, uy, ux] * (read_or_zero(E, n, c, Y + uy, X + ux)  # Y + uy - r
                                                     + read_or_zero(D, n, c, Y // scale + uy - r, X // scale + ux - r))
        out[n, o, Y, X] = total


def test_semi_shift_kernel_reading_index_minus_one_is_told_about_the_border():
    message = hint_of(checkers.check_semi_shift_kernel, semi_shift_without_lower_checks)
    assert "at the border of the map" in message and "index -1" in message


def test_semi_shift_kernel_with_an_encoder_window_not_centred_is_told_the_formula():
    message = hint_of(checkers.check_semi_shift_kernel, semi_shift_encoder_window_not_centred)
    assert "E[n, c, Y + uy - r, X + ux - r]" in message and "border" not in message


@simulator_only
def test_semi_shift_kernel_without_guard_is_told_to_guard():
    message = hint_of(checkers.check_semi_shift_kernel, semi_shift_without_guard)
    assert "guard the thread with `if i < out.size:`" in message


# --- 05.4 - 05.6 the gradient kernels


@cuda.jit
def grad_en_reading_index_minus_one(grad_out, weight, grad_en):
    i = cuda.grid(1)
    if i < grad_en.size:
        height, width = grad_en.shape[2], grad_en.shape[3]
        X, Y = i % width, (i // width) % height
        c, n = (i // (width * height)) % grad_en.shape[1], i // (width * height * grad_en.shape[1])
        r = weight.shape[2] // 2
        total = 0.0
        for o in range(weight.shape[0]):
            for uy in range(weight.shape[2]):
                for ux in range(weight.shape[2]):
                    row, col = Y - uy + r, X - ux + r
                    if row < height and col < width:  # row -1 is read as the last row
                        total += weight[o, c, uy, ux] * grad_out[n, o, row, col]
        grad_en[n, c, Y, X] = total


@cuda.jit
def grad_de_of_the_upsampled_conv(grad_out, weight, grad_de, scale):
    i = cuda.grid(1)
    if i < grad_de.size:
        height, width = grad_de.shape[2], grad_de.shape[3]
        col, row = i % width, (i // width) % height
        c, n = (i // (width * height)) % grad_de.shape[1], i // (width * height * grad_de.shape[1])
        r = weight.shape[2] // 2
        total = 0.0
        for sy in range(scale):  # every copy of D[row, col] in nearest_up(D) ...
            for sx in range(scale):
                for uy in range(weight.shape[2]):
                    for ux in range(weight.shape[2]):
                        Y, X = row * scale + sy - uy + r, col * scale + sx - ux + r  # ... read by output (Y, X)
                        if 0 <= Y < grad_out.shape[2] and 0 <= X < grad_out.shape[3]:
                            for o in range(weight.shape[0]):
                                total += weight[o, c, uy, ux] * grad_out[n, o, Y, X]
        grad_de[n, c, row, col] = total


@cuda.jit
def grad_weight_decoder_only(grad_out, E, D, grad_weight, scale):
    i = cuda.grid(1)
    if i < grad_weight.size:
        size, channels = grad_weight.shape[2], grad_weight.shape[1]
        ux, uy = i % size, (i // size) % size
        c, o = (i // (size * size)) % channels, i // (size * size * channels)
        r = size // 2
        total = 0.0
        for n in range(grad_out.shape[0]):
            for Y in range(grad_out.shape[2]):
                for X in range(grad_out.shape[3]):
                    total += grad_out[n, o, Y, X] * read_or_zero(D, n, c, Y // scale + uy - r, X // scale + ux - r)
        grad_weight[o, c, uy, ux] = total


@cuda.jit
def grad_de_without_the_lower_anchor_check(grad_out, weight, grad_de, scale):
    i = cuda.grid(1)
    if i < grad_de.size:
        height, width = grad_de.shape[2], grad_de.shape[3]
        col, row = i % width, (i // width) % height
        c, n = (i // (width * height)) % grad_de.shape[1], i // (width * height * grad_de.shape[1])
        r = weight.shape[2] // 2
        total = 0.0
        for uy in range(weight.shape[2]):
            for ux in range(weight.shape[2]):
                anchor_row, anchor_col = row - uy + r, col - ux + r
                if anchor_row < height and anchor_col < width:  # anchor -1 reads the outputs of the last row
                    for o in range(weight.shape[0]):
                        for Y in range(anchor_row * scale, anchor_row * scale + scale):
                            for X in range(anchor_col * scale, anchor_col * scale + scale):
                                total += weight[o, c, uy, ux] * grad_out[n, o, Y, X]
        grad_de[n, c, row, col] = total


@cuda.jit
def grad_weight_without_lower_checks(grad_out, E, D, grad_weight, scale):
    i = cuda.grid(1)
    if i < grad_weight.size:
        size, channels = grad_weight.shape[2], grad_weight.shape[1]
        ux, uy = i % size, (i // size) % size
        c, o = (i // (size * size)) % channels, i // (size * size * channels)
        r = size // 2
        total = 0.0
        for n in range(grad_out.shape[0]):
            for Y in range(grad_out.shape[2]):
                for X in range(grad_out.shape[3]):
                    row, col = Y + uy - r, X + ux - r
                    if row < E.shape[2] and col < E.shape[3]:
                        total += grad_out[n, o, Y, X] * E[n, c, row, col]
                    row, col = Y // scale + uy - r, X // scale + ux - r
                    if row < D.shape[2] and col < D.shape[3]:
                        total += grad_out[n, o, Y, X] * D[n, c, row, col]
        grad_weight[o, c, uy, ux] = total


def test_grad_de_reading_anchor_minus_one_is_told_to_skip_anchors_outside():
    message = hint_of(checkers.check_semi_shift_grad_de_kernel, grad_de_without_the_lower_anchor_check)
    assert "skipping anchors outside the low-res map" in message and "the anchor is" not in message


def test_grad_weight_reading_index_minus_one_is_told_zero_outside_the_maps():
    message = hint_of(checkers.check_semi_shift_grad_weight_kernel, grad_weight_without_lower_checks)
    assert "zero outside the maps" in message and "window is counted" not in message


def test_grad_en_reading_index_minus_one_is_told_to_skip_outputs_outside():
    message = hint_of(checkers.check_semi_shift_grad_en_kernel, grad_en_reading_index_minus_one)
    assert "skipping outputs outside the map" in message and "(minus, not plus)" not in message


@pytest.mark.parametrize("check, owner", [
    (checkers.check_semi_shift_grad_en_kernel, "grad_en"),
    (checkers.check_semi_shift_grad_de_kernel, "grad_de"),
], ids=["grad_en", "grad_de"])
def test_gradient_scatter_with_atomics_is_told_it_is_a_gather(check, owner):
    @cuda.jit
    def scatter(grad_out, weight, grad, *scale):
        i = cuda.grid(1)
        if i < grad_out.size:
            cuda.atomic.add(grad, (0, 0, 0, 0), grad_out.ravel()[i])

    message = hint_of(check, scatter)
    assert "asks for a gather" in message and f"sums into its own element of {owner}" in message


def test_grad_de_of_a_conv_over_the_upsampled_decoder_is_named():
    message = hint_of(checkers.check_semi_shift_grad_de_kernel, grad_de_of_the_upsampled_conv)
    assert "this is the gradient of a conv over nearest_up(D)" in message


def test_grad_weight_counting_only_the_decoder_is_named():
    assert "only the decoder window is counted" in hint_of(checkers.check_semi_shift_grad_weight_kernel,
                                                          grad_weight_decoder_only)


# --- 05.7 the autograd Function


def _function(out_dtype=None, compute=None, forward_threads="out", backward_threads="own", swap_en_de=False,
              non_differentiable=False, scale_grad_out=False, contiguous=("forward", "backward"),
              backward_compute=None):
    """The lesson's SemiShiftFunction with one mistake."""

    def _handed(tensors, stage):  # the arrays a kernel gets: made contiguous, or as they come
        return _arrays(*tensors) if stage in contiguous else [t.detach().numpy() for t in tensors]

    class Function(torch.autograd.Function):
        @staticmethod
        def forward(ctx, E, D, weight, bias, scale):
            inputs = [t.detach().contiguous() if "forward" in contiguous else t.detach() for t in (E, D, weight, bias)]
            if compute is not None:
                inputs = [t.to(compute) for t in inputs]
            # Zeros, not new_empty: memory the allocator hands back could hold the right values already,
            # and the outputs that too few threads leave unwritten would then pass.
            out = inputs[0].new_zeros((E.shape[0], weight.shape[0], E.shape[2], E.shape[3]))
            threads = out.numel() if forward_threads == "out" else E.numel()
            semi_shift_kernel[launch_config(threads, 128)](*_handed(inputs, "forward"), out.numpy(), scale)
            ctx.save_for_backward(*(t.detach().contiguous() for t in (E, D, weight)))
            ctx.scale = scale
            out = out.to(out_dtype or E.dtype)
            if non_differentiable:
                ctx.mark_non_differentiable(out)
            return out

        @staticmethod
        def backward(ctx, grad_out):
            E, D, weight = ctx.saved_tensors
            g = grad_out.contiguous() if "backward" in contiguous else grad_out
            if backward_compute is not None:
                E, D, weight, g = (t.to(backward_compute) for t in (E, D, weight, g))
            grads = [torch.zeros_like(E), torch.zeros_like(D), torch.zeros_like(weight)]
            for grad, kernel, arrays in ((grads[0], grad_en_kernel, (g, weight)),
                                         (grads[1], grad_de_kernel, (g, weight)),
                                         (grads[2], grad_weight_kernel, (g, E, D))):
                threads = grad.numel() if backward_threads == "own" else g.numel()
                extra = () if kernel is grad_en_kernel else (ctx.scale,)
                kernel[launch_config(threads, 128)](*_handed(arrays, "backward"), grad.numpy(), *extra)
            if scale_grad_out:
                grad_bias = grad_out.mul_(2).sum(dim=(0, 2, 3))  # doubles autograd's grad_out in place
            else:
                grad_bias = 2 * g.sum(dim=(0, 2, 3))
            if swap_en_de:
                grads[0], grads[1] = grads[1], grads[0]
            return (*grads, grad_bias, None)

    return Function


def test_function_returning_float32_for_float64_is_told_the_dtype():
    message = hint_of(checkers.check_semi_shift_function, _function(out_dtype=torch.float32))
    assert "expected a tensor of the inputs' dtype torch.float64" in message


def test_function_computing_in_float32_is_told_it_is_only_float32_accurate():
    message = hint_of(checkers.check_semi_shift_function, _function(compute=torch.float32))
    assert "right only to float32 precision" in message and "no .float()" in message


@simulator_only
@pytest.mark.parametrize("contiguous", [(), ("forward",)], ids=["nowhere", "not grad_out"])
def test_function_handing_a_kernel_a_strided_array_is_told_to_make_it_contiguous(contiguous):
    message = hint_of(checkers.check_semi_shift_function, _function(contiguous=contiguous))
    assert ("forward" if not contiguous else "backward") in message and "every one non-contiguous" in message
    assert "ValueError" in message and "grad_out.contiguous() in backward" in message


def test_function_whose_backward_computes_in_float32_is_told_it_is_only_float32_accurate():
    message = hint_of(checkers.check_semi_shift_function, _function(backward_compute=torch.float32))
    assert "gradient of en" in message and "right only to float32 precision" in message
    assert "no .float()" in message


def test_function_with_too_few_forward_threads_is_told_one_thread_per_output():
    message = hint_of(checkers.check_semi_shift_function, _function(forward_threads="E"))
    assert "forward, " in message and "one thread per element of out (launch_config(out.numel(), ...))" in message


def test_function_with_too_few_backward_threads_is_told_one_thread_per_gradient_element():
    message = hint_of(checkers.check_semi_shift_function, _function(backward_threads="grad_out"))
    assert "gradient of en" in message and "one thread per element of its own gradient" in message


def test_function_returning_the_gradients_out_of_order_is_told_the_order_and_shapes():
    message = hint_of(checkers.check_semi_shift_function, _function(swap_en_de=True))
    assert "invalid gradient at index 0" in message and "in forward's argument order" in message
    assert "grad_de like D (N, C, h, w)" in message
    assert "one gradient per input" not in message


def test_function_marking_its_output_non_differentiable_is_told_so():
    message = hint_of(checkers.check_semi_shift_function, _function(non_differentiable=True))
    assert "does not require grad" in message and "ctx.mark_non_differentiable" in message


def test_function_writing_into_grad_out_is_told_to_leave_it():
    message = hint_of(checkers.check_semi_shift_function, _function(scale_grad_out=True))
    assert "backward changed grad_out" in message and "leave grad_out as it is" in message


# --- 05.8 FADE's forward


def test_fade_forward_with_carafe_arguments_swapped_is_not_told_about_groups():
    def swapped(module, en, de):
        generator = module.ker_generator
        encoder = generator.content_encoder
        logits = ul.semi_shift_conv(generator.compressor_en(en), generator.compressor_de(de), encoder.weight,
                                    encoder.bias, module.scale, groups=encoder.groups)
        gate = torch.sigmoid(F.interpolate(module.gate_generator.conv(de), scale_factor=module.scale))
        upsampled = ul.carafe(de, F.softmax(logits, dim=1), module.scale, module.up_kernel_size)  # scale first
        return gate * en + (1 - gate) * upsampled

    message = hint_of(checkers.check_fade_forward, swapped)
    assert "ul.carafe(de, kernels, module.up_kernel_size, module.scale), kernel size before scale" in message
    assert "depthwise" not in message


def _fade_forward_with_semi_shift_inputs(semi_shift_inputs):
    def fade_forward_(module, en, de):
        generator = module.ker_generator
        encoder = generator.content_encoder
        logits = ul.semi_shift_conv(*semi_shift_inputs(generator, en, de), encoder.weight, encoder.bias,
                                    module.scale, groups=encoder.groups)
        gate = torch.sigmoid(F.interpolate(module.gate_generator.conv(de), scale_factor=module.scale))
        return gate * en + (1 - gate) * ul.carafe(de, F.softmax(logits, 1), module.up_kernel_size, module.scale)
    return fade_forward_


def test_fade_forward_with_the_semi_shift_maps_swapped_is_told_the_encoder_comes_first():
    swapped = _fade_forward_with_semi_shift_inputs(lambda g, en, de: (g.compressor_de(de), g.compressor_en(en)))
    message = hint_of(checkers.check_fade_forward, swapped)
    assert "ul.semi_shift_conv takes the encoder's (high-res) map first" in message
    assert "ul.carafe(de, kernels" not in message


def test_fade_forward_skipping_the_compressors_is_told_to_compress():
    message = hint_of(checkers.check_fade_forward, _fade_forward_with_semi_shift_inputs(lambda g, en, de: (en, de)))
    assert "the content encoder's weight expects the compressed maps" in message
    assert "ul.carafe(de, kernels" not in message and "depthwise" not in message


def test_fade_forward_without_groups_is_told_the_encoder_is_depthwise():
    message = hint_of(checkers.check_fade_forward, lambda m, en, de: fade_forward(m, en, de, groups=False))
    assert "lite=True" in message and "the content encoder is depthwise" in message


def test_fade_forward_returning_an_array_is_told_to_return_a_tensor():
    message = hint_of(checkers.check_fade_forward, lambda m, en, de: fade_forward(m, en, de).numpy())
    assert "expected a tensor, got ndarray" in message


def test_fade_forward_with_a_softmax_over_the_wrong_axis_is_told_the_recipe():
    def softmax_over_columns(module, en, de):
        generator = module.ker_generator
        encoder = generator.content_encoder
        logits = ul.semi_shift_conv(generator.compressor_en(en), generator.compressor_de(de), encoder.weight,
                                    encoder.bias, module.scale, groups=encoder.groups)
        gate = torch.sigmoid(F.interpolate(module.gate_generator.conv(de), scale_factor=module.scale))
        return gate * en + (1 - gate) * ul.carafe(de, F.softmax(logits, dim=-1), module.up_kernel_size, module.scale)

    message = hint_of(checkers.check_fade_forward, softmax_over_columns)
    assert "kernels = softmax over dim 1 of ul.semi_shift_conv" in message


def test_similarity_scaled_like_attention_is_told_there_is_no_scaling():
    def scaled(q, key, kernel_size, scale):
        return similarity_reference(q, key, kernel_size, scale) / q.shape[1] ** 0.5

    message = hint_of(checkers.check_similarity_reference, scaled)
    assert "every value is the right one times" in message and "no 1 / sqrt(d)" in message


def test_cosine_similarity_is_told_the_logit_is_the_plain_dot_product():
    def cosine(q, key, kernel_size, scale):
        return similarity_reference(F.normalize(q, dim=1), F.normalize(key, dim=1), kernel_size, scale)

    message = hint_of(checkers.check_similarity_reference, cosine)
    assert "these are cosine similarities" in message and "plain dot product" in message


@pytest.mark.parametrize("mistake, named", [
    ("no Linear bias", "the Linear's bias is missing"),
    ("eps", "the LayerNorm's eps differs from the module's"),
    ("roles swapped", "the queries come from y"),
])
def test_embedding_mistakes_are_named(mistake, named):
    def embed(module, y, x):
        maps = ((x, module.norm_x, module.k), (y, module.norm_y, module.q)) if mistake == "roles swapped" else \
            ((y, module.norm_y, module.q), (x, module.norm_x, module.k))
        pair = []
        for t, norm, linear in maps:
            last = t.permute(0, 2, 3, 1)
            if mistake == "eps":
                normed = F.layer_norm(last, norm.normalized_shape, norm.weight, norm.bias, eps=1e-6)
            else:
                normed = norm(last)
            projected = F.linear(normed, linear.weight) if mistake == "no Linear bias" else linear(normed)
            pair.append(projected.permute(0, 3, 1, 2))
        return tuple(pair)

    assert named in hint_of(checkers.check_sapa_embedding, embed)



# --- Skipped taps and slots with nan, block sizes, zero gradients (a third student pass)


@cuda.jit
def grad_query_multiplying_zeros_in(grad_logits, key, grad_q, kernel_size, scale):
    i = cuda.grid(1)
    if i < grad_q.size:
        channels, height, width = grad_q.shape[1], grad_q.shape[2], grad_q.shape[3]
        X, Y = i % width, (i // width) % height
        c, n = (i // (width * height)) % channels, i // (width * height * channels)
        total = 0.0
        for t in range(kernel_size * kernel_size):
            row, col = window_neighbour(t, Y, X, kernel_size, scale)
            total += grad_logits[n, t, Y, X] * read_or_zero(key, n, c, row, col)  # an outside slot still counts
        grad_q[n, c, Y, X] = total


@cuda.jit
def grad_key_in_blocks_of_64(grad_logits, q, grad_key, kernel_size, scale):
    i = cuda.blockIdx.x * 64 + cuda.threadIdx.x  # a block size of its own
    if i < grad_key.size:
        channels, height, width = grad_key.shape[1], grad_key.shape[2], grad_key.shape[3]
        col, row = i % width, (i // width) % height
        c, n = (i // (width * height)) % channels, i // (width * height * channels)
        radius = (kernel_size - 1) // 2
        total = 0.0
        for dy in range(kernel_size):
            for dx in range(kernel_size):
                anchor_row, anchor_col = row - dy + radius, col - dx + radius
                if 0 <= anchor_row < height and 0 <= anchor_col < width:
                    for Y in range(anchor_row * scale, anchor_row * scale + scale):
                        for X in range(anchor_col * scale, anchor_col * scale + scale):
                            total += grad_logits[n, dy * kernel_size + dx, Y, X] * q[n, c, Y, X]
        grad_key[n, c, row, col] = total


@simulator_only
def test_grad_query_multiplying_an_outside_slot_in_is_told_to_skip_it():
    message = hint_of(checkers.check_grad_query_kernel, grad_query_multiplying_zeros_in)
    assert "grad_logits nan at every slot outside the key map" in message and "skip the slots" in message


@simulator_only
def test_grad_key_with_a_block_size_of_its_own_is_caught():
    message = hint_of(checkers.check_grad_key_kernel, grad_key_in_blocks_of_64)
    assert "written more than once" in message and "no block size of your own" in message


def sapa_forward_from_the_two_kernels(module, y, x):
    k, s = module.up_kernel_size, module.up_factor
    q, key = module.queries_and_keys(y, x)
    q, key = q.detach().contiguous(), key.detach().contiguous()
    n, _, height, width = q.shape
    logits = q.new_empty((n, k * k, height, width))
    similarity_kernel[launch_config(logits.numel(), 64)](q.numpy(), key.numpy(), logits.numpy(), k, s)
    weights = torch.empty_like(logits)
    softmax_kernel[launch_config(n * height * width, 64)](logits.numpy(), weights.numpy())
    return ul.carafe(x, weights, k, s, group=1)


def test_sapa_forward_from_the_earlier_kernels_is_told_which_kernel_the_exercise_runs():
    message = hint_of(checkers.check_sapa_forward, sapa_forward_from_the_two_kernels)
    assert "computed with `similarity_kernel` and `softmax_kernel`" in message
    assert "is to run `similarity_block_kernel`" in message and "somewhere else" not in message


def pixel_multiplying_zeros_in(E, D, weight, bias, n, o, Y, X, scale):
    r = weight.shape[2] // 2
    total = 2 * bias[o]
    for c in range(E.shape[1]):
        for uy in range(weight.shape[2]):
            for ux in range(weight.shape[3]):
                e_row, e_col, d_row, d_col = Y + uy - r, X + ux - r, Y // scale + uy - r, X // scale + ux - r
                e = E[n, c, e_row, e_col] if 0 <= e_row < E.shape[2] and 0 <= e_col < E.shape[3] else 0.0
                d = D[n, c, d_row, d_col] if 0 <= d_row < D.shape[2] and 0 <= d_col < D.shape[3] else 0.0
                total += weight[o, c, uy, ux] * (e + d)  # an outside tap still multiplies its weight
    return total


def test_a_pixel_multiplying_an_outside_tap_in_is_told_to_skip_it():
    with np.errstate(invalid="ignore"):
        message = hint_of(checkers.check_semi_shift_pixel, pixel_multiplying_zeros_in)
    assert "a weight that is nan at tap (0, 0)" in message and "a tap outside the map is skipped" in message


@cuda.jit
def grad_de_multiplying_zeros_in(grad_out, weight, grad_de, scale):
    i = cuda.grid(1)
    if i < grad_de.size:
        height, width = grad_de.shape[2], grad_de.shape[3]
        col, row = i % width, (i // width) % height
        c, n = (i // (width * height)) % grad_de.shape[1], i // (width * height * grad_de.shape[1])
        r = weight.shape[2] // 2
        total = 0.0
        for o in range(weight.shape[0]):
            for uy in range(weight.shape[2]):
                for ux in range(weight.shape[2]):
                    a, b = row - uy + r, col - ux + r
                    pooled = 0.0
                    for dy in range(scale):
                        for dx in range(scale):
                            pooled += read_or_zero(grad_out, n, o, a * scale + dy, b * scale + dx)
                    total += weight[o, c, uy, ux] * pooled  # an outside anchor still multiplies its weight
        grad_de[n, c, row, col] = total


@cuda.jit
def grad_de_of_one_block(grad_out, weight, grad_de, scale):
    i = cuda.threadIdx.x  # forgets the block: right only while grad_de fits one block
    if i < grad_de.size:
        height, width = grad_de.shape[2], grad_de.shape[3]
        col, row = i % width, (i // width) % height
        c, n = (i // (width * height)) % grad_de.shape[1], i // (width * height * grad_de.shape[1])
        r = weight.shape[2] // 2
        total = 0.0
        for uy in range(weight.shape[2]):
            for ux in range(weight.shape[2]):
                a, b = row - uy + r, col - ux + r
                if 0 <= a < height and 0 <= b < width:
                    for o in range(weight.shape[0]):
                        for Y in range(a * scale, a * scale + scale):
                            for X in range(b * scale, b * scale + scale):
                                total += weight[o, c, uy, ux] * grad_out[n, o, Y, X]
        grad_de[n, c, row, col] = total


@cuda.jit
def grad_weight_returning_early(grad_out, E, D, grad_weight, scale):
    i = cuda.grid(1)
    if i < grad_weight.size:
        size = grad_weight.shape[2]
        ux, uy = i % size, (i // size) % size
        c, o = (i // (size * size)) % grad_weight.shape[1], i // (size * size * grad_weight.shape[1])
        r = size // 2
        height, width = grad_out.shape[2], grad_out.shape[3]
        if max(0, r - uy) >= min(height, height + r - uy) or max(0, r - ux) >= min(width, width + r - ux):
            return  # nothing to add: leaves its element as it was
        total = 0.0
        for n in range(grad_out.shape[0]):
            for Y in range(height):
                for X in range(width):
                    total += grad_out[n, o, Y, X] * (read_or_zero(E, n, c, Y + uy - r, X + ux - r)
                                                     + read_or_zero(D, n, c, Y // scale + uy - r,
                                                                    X // scale + ux - r))
        grad_weight[o, c, uy, ux] = total


@simulator_only
def test_grad_de_multiplying_an_outside_anchor_in_is_told_to_skip_it():
    message = hint_of(checkers.check_semi_shift_grad_de_kernel, grad_de_multiplying_zeros_in)
    assert "a weight that is nan at tap (0, 0)" in message and "skip the anchors outside the low-res map" in message


def test_grad_de_of_one_block_is_caught_on_a_map_of_two_blocks():
    message = hint_of(checkers.check_semi_shift_grad_de_kernel, grad_de_of_one_block)
    assert "D (1, 3, 5, 6)" in message and "never written" in message


def test_grad_weight_leaving_a_zero_gradient_unwritten_is_caught():
    message = hint_of(checkers.check_semi_shift_grad_weight_kernel, grad_weight_returning_early)
    assert "E (1, 2, 1, 1)" in message and "never written" in message

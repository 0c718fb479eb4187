"""Lesson 07 (performance): the checkers pass right answers and catch wrong
ones, the access records count what they say, and the stored GPU figures are
read when present and their absence is said plainly."""

import upsamplelib  # noqa: F401,I001  (first: it chooses the CUDA target before numba loads)

import ast
import functools
import math
import re
import statistics
import time
import types

import numba
import numpy as np
import pytest
from numba import cuda, float32
from numba import prange as parallel_range

from upsamplelib import backend as ul_backend
from upsamplelib import checkers, traffic
from upsamplelib.backend import launch_config
from upsamplelib.checkers import performance, ptx
from upsamplelib.checkers.engine import CheckFailed

# --------------------------------------------------------------------------
# 07.1 median_time
# --------------------------------------------------------------------------


def median_time(function, repeat=7, warmup=1, clock=time.perf_counter):
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeat):
        start = clock()
        function()
        times.append(clock() - start)
    return statistics.median(times)


def mean_time(function, repeat=7, warmup=1, clock=time.perf_counter):
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeat):
        start = clock()
        function()
        times.append(clock() - start)
    return statistics.mean(times)


def no_warmup(function, repeat=7, warmup=1, clock=time.perf_counter):
    times = []
    for _ in range(repeat):
        start = clock()
        function()
        times.append(clock() - start)
    for _ in range(warmup):
        function()
    return statistics.median(times)


def warmup_timed_too(function, repeat=7, warmup=1, clock=time.perf_counter):
    times = []
    for _ in range(warmup + repeat):
        start = clock()
        function()
        times.append(clock() - start)
    return statistics.median(times)


def total_over_repeat(function, repeat=7, warmup=1, clock=time.perf_counter):
    for _ in range(warmup):
        function()
    start = clock()
    for _ in range(repeat):
        function()
    return (clock() - start) / repeat


def extra_call(function, repeat=7, warmup=1, clock=time.perf_counter):
    function()
    return median_time(function, repeat, warmup, clock)


def first_call_always_untimed(function, repeat=7, warmup=1, clock=time.perf_counter):
    function()  # "the first call compiles", also when warmup is 0
    for _ in range(warmup - 1):
        function()
    return median_time(function, repeat, 0, clock)


def upper_middle_time(function, repeat=7, warmup=1, clock=time.perf_counter):
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeat):
        start = clock()
        function()
        times.append(clock() - start)
    return sorted(times)[len(times) // 2]


def timed_calls(function, repeat, warmup, clock):
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeat):
        start = clock()
        function()
        times.append(clock() - start)
    return times


def lower_middle_time(function, repeat=7, warmup=1, clock=time.perf_counter):
    return statistics.median_low(timed_calls(function, repeat, warmup, clock))


def last_timed_call_dropped(function, repeat=7, warmup=1, clock=time.perf_counter):
    return statistics.median(timed_calls(function, repeat, warmup, clock)[:-1])


def milliseconds(function, repeat=7, warmup=1, clock=time.perf_counter):
    return 1e3 * median_time(function, repeat, warmup, clock)


def one_timed_call_dropped(function, repeat=7, warmup=1, clock=time.perf_counter):
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeat):
        start = clock()
        function()
        times.append(clock() - start)
    return statistics.median(times[-repeat + 1:])


def every_call_timed(function, repeat, warmup, clock):
    times = []
    for _ in range(warmup + repeat):
        start = clock()
        function()
        times.append(clock() - start)
    return times


def only_the_first_call_dropped(function, repeat=7, warmup=1, clock=time.perf_counter):
    return statistics.median(every_call_timed(function, repeat, warmup, clock)[1:])


def timed_calls_one_early(function, repeat=7, warmup=1, clock=time.perf_counter):
    return statistics.median(every_call_timed(function, repeat, warmup, clock)[warmup - 1:warmup - 1 + repeat])


def repeat_and_warmup_swapped(function, warmup=1, repeat=7, clock=time.perf_counter):
    return median_time(function, repeat, warmup, clock)


def other_defaults(function, repeat=5, warmup=0, clock=time.time):
    return median_time(function, repeat, warmup, clock)


def float32_median(function, repeat=7, warmup=1, clock=time.perf_counter):
    return np.median(np.array(every_call_timed(function, repeat, warmup, clock)[warmup:], np.float32))


def own_clock(function, repeat=7, warmup=1, clock=time.perf_counter):
    return median_time(function, repeat, warmup, time.perf_counter)


def clock_chosen_inside(function, repeat=7, warmup=1, clock=None):
    return median_time(function, repeat, warmup, clock or time.perf_counter)


def positional_only(function, repeat=7, warmup=1, clock=time.perf_counter, /):
    return median_time(function, repeat, warmup, clock)


def through_star_args(function, *args, **kwargs):
    return median_time(function, *args, **kwargs)


def as_a_longdouble(function, repeat=7, warmup=1, clock=time.perf_counter):
    return np.longdouble(median_time(function, repeat, warmup, clock))


def _median_of(function, repeat=7, warmup=1, clock=time.perf_counter, statistic=statistics.median):
    return statistic(every_call_timed(function, repeat, warmup, clock)[warmup:])


#: clock keyword-only: median_time(f, 9, 2) still works.
with_a_partial = functools.partial(_median_of, clock=time.perf_counter)


def test_median_time_passes_the_right_answer(capsys):
    checkers.check_median_time(median_time)
    assert "PASS median_time" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, hint", [
    (mean_time, "that is the mean"),
    (no_warmup, "the warm-up calls were timed"),
    (warmup_timed_too, "the warm-up calls are in the median"),
    (total_over_repeat, "the mean"),
    (extra_call, r"warmup \+ repeat"),
    # Right for every warmup of 1 or more, which was all the checker tried.
    (first_call_always_untimed, r"(?s)called more often than warmup \+ repeat times, for repeat=3, warmup=0.*"
                                r"none when warmup is 0"),
    (upper_middle_time, "the upper middle value.*the mean of the two middle ones"),
    (lower_middle_time, "the lower middle value.*the mean of the two middle ones"),
    (last_timed_call_dropped, "the last timed call is missing"),
    (milliseconds, "in milliseconds"),
    (one_timed_call_dropped, "the first timed call is missing"),
    (only_the_first_call_dropped, "only the first left out: the other warm-up calls are in the median"),
    (timed_calls_one_early, "taken one call early: the last warm-up call is in the median"),
])
def test_median_time_catches_wrong_answers(wrong, hint):
    with pytest.raises(CheckFailed, match=hint):
        checkers.check_median_time(wrong)


@pytest.mark.parametrize("wrong, hint", [
    # The checker gives every argument by keyword: these two passed, though median_time(f, 9, 2) and
    # median_time(f) do not do what the exercise says.
    (repeat_and_warmup_swapped, "median_time\\(f, 3, 2, clock=clock\\) timed 2 calls after 3 warm-up ones.*in "
                                "that order"),
    (other_defaults, "median_time\\(f, clock=clock\\) called f 5 times.*1 warm-up call and 7 timed ones"),
    (positional_only, "raised TypeError: .*positional-only.*\n.*name the parameters function, repeat, warmup and clock"),
    (float32_median, "(?s)a NumPy float32.*return statistics.median"),
    (own_clock, "(?s)without calling clock\\(\\) once.*the `clock` it is given"),
])
def test_median_time_catches_a_wrong_signature_type_or_clock(wrong, hint):
    with pytest.raises(CheckFailed, match=hint):
        checkers.check_median_time(wrong)


@pytest.mark.parametrize("right", [clock_chosen_inside, through_star_args, as_a_longdouble, with_a_partial])
def test_median_time_takes_other_signatures_that_work(right, capsys):
    # Read from the signature, *args, a partial and a clock defaulting to None were rejected, and a
    # longdouble was told it kept 7 digits: what the calls do is checked instead.
    checkers.check_median_time(right)
    assert "PASS median_time" in capsys.readouterr().out


# --------------------------------------------------------------------------
# 07.2 carafe_traffic
# --------------------------------------------------------------------------


def carafe_traffic(n, c, h, w, kernel_size, scale, group=1, itemsize=4):
    outputs = n * c * (scale * h) * (scale * w)
    values = n * c * h * w + n * group * kernel_size ** 2 * (scale * h) * (scale * w) + outputs
    return 2 * kernel_size ** 2 * outputs, itemsize * values


def test_carafe_traffic_passes_the_right_answer(capsys):
    checkers.check_carafe_traffic(carafe_traffic)
    assert "PASS carafe_traffic" in capsys.readouterr().out
    assert performance.carafe_traffic(1, 256, 128, 128, 5, 2) == carafe_traffic(1, 256, 128, 128, 5, 2)


def _traffic_variant(flops_factor=1.0, masks=True, out=True, itemsize=True, unfold=False, group=True):
    def wrong(n, c, h, w, kernel_size, scale, group_count=1, size=4):
        outputs = n * c * (scale * h) * (scale * w)
        x_values = n * c * kernel_size ** 2 * (scale * h) * (scale * w) if unfold else n * c * h * w
        mask_values = n * (group_count if group else 1) * kernel_size ** 2 * (scale * h) * (scale * w)
        values = x_values + (mask_values if masks else 0) + (outputs if out else 0)
        return int(flops_factor * 2 * kernel_size ** 2 * outputs), (size if itemsize else 1) * values
    return wrong


@pytest.mark.parametrize("wrong, hint", [
    (_traffic_variant(flops_factor=0.5), "multiply-adds"),
    (_traffic_variant(masks=False), "bytes of masks are missing"),
    (_traffic_variant(out=False), "bytes of out are missing"),
    (_traffic_variant(itemsize=False), "multiply by itemsize"),
    (_traffic_variant(unfold=True), "as the unfold version does"),
    (_traffic_variant(group=False), "`group` masks per output pixel"),
    (lambda *args: 0, "return a pair"),
    (lambda *args: carafe_traffic(*args)[::-1], "the two are swapped: return \\(flops, bytes\\)"),
    (lambda n, c, h, w, k, s, g=1, size=4: carafe_traffic(n, c, h, w, k, s, g, 4), "4 bytes a value whatever itemsize"),
    (lambda n, c, h, w, k, s, g=1, size=4: (carafe_traffic(n, c, h, w, k, s, g, size)[0],
                                            carafe_traffic(n, c, h, w, k, s, g, size)[1]
                                            - size * n * c * (s * s - 1) * h * w),
     "out is counted at the input's resolution"),
    (lambda n, c, h, w, k, s, g=1, size=4: (carafe_traffic(n, c, h, w, k, s, g, size)[0],
                                            carafe_traffic(n, c, h, w, k, s, g, size)[1]
                                            - size * n * g * k * k * (s * s - 1) * h * w),
     "masks are counted at the input's resolution"),
    (lambda n, *rest: carafe_traffic(1, *rest), "counts one image"),
    # Half the FLOPs at scale 2, as multiply-adds give: the hint must name the scale, not the multiply-adds.
    (lambda n, c, h, w, k, s, *rest: (carafe_traffic(n, c, h, w, k, s, *rest)[0] // s,
                                      carafe_traffic(n, c, h, w, k, s, *rest)[1]), "factor of the scale is missing"),
    # scale * 2 for scale ** 2: right at scale 2, half at scale 4 (it was told it counted multiply-adds).
    (lambda n, c, h, w, k, s, g=1, size=4: (2 * k * k * n * c * s * 2 * h * w, carafe_traffic(n, c, h, w, k, s, g,
                                                                                              size)[1]),
     "that counts 2 \\* s = 8 output pixels per input pixel.*scale \\*\\* 2, not scale \\* 2"),
])
def test_carafe_traffic_catches_wrong_answers(wrong, hint):
    with pytest.raises(CheckFailed, match=hint):
        checkers.check_carafe_traffic(wrong)


def test_carafe_traffic_takes_a_list_as_a_pair(capsys):
    checkers.check_carafe_traffic(lambda *args: list(carafe_traffic(*args)))
    assert "PASS carafe_traffic" in capsys.readouterr().out


# --------------------------------------------------------------------------
# 07.3 channels-last CARAFE
# --------------------------------------------------------------------------


@cuda.jit
def channels_last_kernel(x, masks, out, kernel_size, scale):
    i = cuda.grid(1)
    if i < out.size:
        height, width, channels = out.shape[1], out.shape[2], out.shape[3]
        c = i % channels
        rest = i // channels
        X = rest % width
        rest = rest // width
        Y = rest % height
        n = rest // height
        r = (kernel_size - 1) // 2
        total = out.dtype.type(0)
        for dy in range(kernel_size):
            row = Y // scale - r + dy
            if 0 <= row < x.shape[1]:
                for dx in range(kernel_size):
                    col = X // scale - r + dx
                    if 0 <= col < x.shape[2]:
                        total += masks[n, Y, X, dy * kernel_size + dx] * x[n, row, col, c]
        out[n, Y, X, c] = total


@cuda.jit
def channels_last_batch_0_only(x, masks, out, kernel_size, scale):
    i = cuda.grid(1)
    if i < out.size:
        height, width, channels = out.shape[1], out.shape[2], out.shape[3]
        c = i % channels
        rest = i // channels
        X = rest % width
        Y = (rest // width) % height
        n = 0  # right for a batch of one
        r = (kernel_size - 1) // 2
        total = out.dtype.type(0)
        for dy in range(kernel_size):
            row = Y // scale - r + dy
            if 0 <= row < x.shape[1]:
                for dx in range(kernel_size):
                    col = X // scale - r + dx
                    if 0 <= col < x.shape[2]:
                        total += masks[n, Y, X, dy * kernel_size + dx] * x[n, row, col, c]
        out[n, Y, X, c] = total


@cuda.jit
def channels_last_pixel_fastest(x, masks, out, kernel_size, scale):
    # Right values, but neighbouring threads are C elements apart in memory.
    i = cuda.grid(1)
    if i < out.size:
        height, width, channels = out.shape[1], out.shape[2], out.shape[3]
        X = i % width
        rest = i // width
        Y = rest % height
        rest = rest // height
        c = rest % channels
        n = rest // channels
        r = (kernel_size - 1) // 2
        total = out.dtype.type(0)
        for dy in range(kernel_size):
            row = Y // scale - r + dy
            if 0 <= row < x.shape[1]:
                for dx in range(kernel_size):
                    col = X // scale - r + dx
                    if 0 <= col < x.shape[2]:
                        total += masks[n, Y, X, dy * kernel_size + dx] * x[n, row, col, c]
        out[n, Y, X, c] = total


@cuda.jit
def channels_last_accumulating_in_out(x, masks, out, kernel_size, scale):
    # Right values, but it stores into out once per slot.
    i = cuda.grid(1)
    if i < out.size:
        height, width, channels = out.shape[1], out.shape[2], out.shape[3]
        c = i % channels
        rest = i // channels
        X = rest % width
        rest = rest // width
        Y = rest % height
        n = rest // height
        r = (kernel_size - 1) // 2
        out[n, Y, X, c] = 0
        for dy in range(kernel_size):
            row = Y // scale - r + dy
            if 0 <= row < x.shape[1]:
                for dx in range(kernel_size):
                    col = X // scale - r + dx
                    if 0 <= col < x.shape[2]:
                        out[n, Y, X, c] += masks[n, Y, X, dy * kernel_size + dx] * x[n, row, col, c]


@cuda.jit
def channels_last_nchw_masks(x, masks, out, kernel_size, scale):
    # Reads the masks as if they were (N, k*k, H, W): wrong values.
    i = cuda.grid(1)
    if i < out.size:
        height, width, channels = out.shape[1], out.shape[2], out.shape[3]
        c = i % channels
        rest = i // channels
        X = rest % width
        rest = rest // width
        Y = rest % height
        n = rest // height
        r = (kernel_size - 1) // 2
        total = out.dtype.type(0)
        flat = masks.shape[1] * masks.shape[2] * masks.shape[3]
        for dy in range(kernel_size):
            row = Y // scale - r + dy
            if 0 <= row < x.shape[1]:
                for dx in range(kernel_size):
                    col = X // scale - r + dx
                    if 0 <= col < x.shape[2]:
                        index = ((dy * kernel_size + dx) * height + Y) * width + X
                        rest2 = index % flat
                        total += masks[n, rest2 // (width * masks.shape[3]), rest2 // masks.shape[3] % width,
                                       rest2 % masks.shape[3]] * x[n, row, col, c]
        out[n, Y, X, c] = total


@cuda.jit
def channels_last_float_index(x, masks, out, kernel_size, scale):
    # Runs in the simulator (math.floor gives an int in Python); a GPU compiler rejects the float index.
    i = cuda.grid(1)
    if i < out.size:
        height, width, channels = out.shape[1], out.shape[2], out.shape[3]
        c = i % channels
        rest = i // channels
        X = rest % width
        rest = rest // width
        Y = rest % height
        n = rest // height
        r = (kernel_size - 1) // 2
        total = out.dtype.type(0)
        for dy in range(kernel_size):
            row = math.floor(Y / scale) - r + dy
            if 0 <= row < x.shape[1]:
                for dx in range(kernel_size):
                    col = X // scale - r + dx
                    if 0 <= col < x.shape[2]:
                        total += masks[n, Y, X, dy * kernel_size + dx] * x[n, row, col, c]
        out[n, Y, X, c] = total


@cuda.jit
def channels_last_without_guard(x, masks, out, kernel_size, scale):
    i = cuda.grid(1)
    height, width, channels = out.shape[1], out.shape[2], out.shape[3]
    c = i % channels
    rest = i // channels
    X = rest % width
    rest = rest // width
    Y = rest % height
    n = rest // height
    r = (kernel_size - 1) // 2
    total = out.dtype.type(0)
    for dy in range(kernel_size):
        row = Y // scale - r + dy
        if 0 <= row < x.shape[1]:
            for dx in range(kernel_size):
                col = X // scale - r + dx
                if 0 <= col < x.shape[2]:
                    total += masks[n, Y, X, dy * kernel_size + dx] * x[n, row, col, c]
    out[n, Y, X, c] = total


@cuda.jit
def channels_last_adding_into_out(x, masks, out, kernel_size, scale):
    i = cuda.grid(1)
    if i < out.size:
        height, width, channels = out.shape[1], out.shape[2], out.shape[3]
        c = i % channels
        rest = i // channels
        X = rest % width
        rest = rest // width
        Y = rest % height
        n = rest // height
        r = (kernel_size - 1) // 2
        for dy in range(kernel_size):
            row = Y // scale - r + dy
            if 0 <= row < x.shape[1]:
                for dx in range(kernel_size):
                    col = X // scale - r + dx
                    if 0 <= col < x.shape[2]:
                        out[n, Y, X, c] += masks[n, Y, X, dy * kernel_size + dx] * x[n, row, col, c]


@cuda.jit
def channels_last_named_output(x, masks, output, kernel_size, scale):
    i = cuda.grid(1)
    if i < output.size:
        height, width, channels = output.shape[1], output.shape[2], output.shape[3]
        c = i % channels
        rest = i // channels
        X = rest % width
        rest = rest // width
        Y = rest % height
        n = rest // height
        r = (kernel_size - 1) // 2
        total = output.dtype.type(0)
        for dy in range(kernel_size):
            row = Y // scale - r + dy
            if 0 <= row < x.shape[1]:
                for dx in range(kernel_size):
                    col = X // scale - r + dx
                    if 0 <= col < x.shape[2]:
                        total += masks[n, Y, X, dy * kernel_size + dx] * x[n, row, col, c]
        output[n, Y, X, c] = total


def test_channels_last_passes_with_other_parameter_names(capsys):
    checkers.check_carafe_channels_last_kernel(channels_last_named_output)
    assert "PASS carafe_channels_last_kernel" in capsys.readouterr().out


def test_channels_last_passes_the_right_answer(capsys):
    checkers.check_carafe_channels_last_kernel(channels_last_kernel)
    output = capsys.readouterr().out
    assert "PASS carafe_channels_last_kernel" in output
    assert "x 4.0" in output and "out 4.0" in output


@cuda.jit
def channels_last_zero_padded(x, masks, out, kernel_size, scale):
    # Every slot's mask times a zero read outside the map: right for finite masks, nan * 0 = nan otherwise.
    i = cuda.grid(1)
    if i < out.size:
        height, width, channels = out.shape[1], out.shape[2], out.shape[3]
        c, X = i % channels, i // channels % width
        Y, n = i // (channels * width) % height, i // (channels * width * height)
        r = (kernel_size - 1) // 2
        total = out.dtype.type(0)
        for dy in range(kernel_size):
            for dx in range(kernel_size):
                row, col = Y // scale - r + dy, X // scale - r + dx
                value = out.dtype.type(0)
                if 0 <= row < x.shape[1] and 0 <= col < x.shape[2]:
                    value = x[n, row, col, c]
                total += masks[n, Y, X, dy * kernel_size + dx] * value
        out[n, Y, X, c] = total


@cuda.jit
def channels_last_blocks_of_128(x, masks, out, kernel_size, scale):
    i = cuda.threadIdx.x + cuda.blockIdx.x * 128  # the block size written in
    if i < out.size:
        height, width, channels = out.shape[1], out.shape[2], out.shape[3]
        c, X = i % channels, i // channels % width
        Y, n = i // (channels * width) % height, i // (channels * width * height)
        r = (kernel_size - 1) // 2
        total = out.dtype.type(0)
        for dy in range(kernel_size):
            row = Y // scale - r + dy
            if 0 <= row < x.shape[1]:
                for dx in range(kernel_size):
                    col = X // scale - r + dx
                    if 0 <= col < x.shape[2]:
                        total += masks[n, Y, X, dy * kernel_size + dx] * x[n, row, col, c]
        out[n, Y, X, c] = total


@cuda.jit
def channels_last_32_channels_written_in(x, masks, out, kernel_size, scale):
    i = cuda.grid(1)
    if i < out.size:
        c, rest = i % 32, i // 32  # the first case's channel count, written into the kernel
        X, Y, n = rest % out.shape[2], rest // out.shape[2] % out.shape[1], rest // (out.shape[2] * out.shape[1])
        r = (kernel_size - 1) // 2
        total = out.dtype.type(0)
        for dy in range(kernel_size):
            row = Y // scale - r + dy
            if 0 <= row < x.shape[1]:
                for dx in range(kernel_size):
                    col = X // scale - r + dx
                    if 0 <= col < x.shape[2]:
                        total += masks[n, Y, X, dy * kernel_size + dx] * x[n, row, col, c]
        out[n, Y, X, c] = total


@cuda.jit
def channels_last_row_bound_off_by_one(x, masks, out, kernel_size, scale):
    i = cuda.grid(1)
    if i < out.size:
        height, width, channels = out.shape[1], out.shape[2], out.shape[3]
        c, X = i % channels, i // channels % width
        Y, n = i // (channels * width) % height, i // (channels * width * height)
        r = (kernel_size - 1) // 2
        total = out.dtype.type(0)
        for dy in range(kernel_size):
            row = Y // scale - r + dy
            if 0 <= row <= x.shape[1]:
                for dx in range(kernel_size):
                    col = X // scale - r + dx
                    if 0 <= col < x.shape[2]:
                        total += masks[n, Y, X, dy * kernel_size + dx] * x[n, row, col, c]
        out[n, Y, X, c] = total


@cuda.jit
def channels_last_one_thread_per_pixel(x, masks, out, kernel_size, scale):
    # A thread for every output, but the one of channel 0 computes all channels of its pixel (the loop of a
    # per-pixel version kept): every output once and right values, 31 of 32 lanes idle.
    i = cuda.grid(1)
    if i < out.size and i % out.shape[3] == 0:
        height, width, channels = out.shape[1], out.shape[2], out.shape[3]
        pixel = i // channels
        X, Y, n = pixel % width, pixel // width % height, pixel // (width * height)
        r = (kernel_size - 1) // 2
        for c in range(channels):
            total = out.dtype.type(0)
            for dy in range(kernel_size):
                row = Y // scale - r + dy
                if 0 <= row < x.shape[1]:
                    for dx in range(kernel_size):
                        col = X // scale - r + dx
                        if 0 <= col < x.shape[2]:
                            total += masks[n, Y, X, dy * kernel_size + dx] * x[n, row, col, c]
            out[n, Y, X, c] = total


@cuda.jit
def channels_last_row_tested_against_the_width(x, masks, out, kernel_size, scale):
    i = cuda.grid(1)
    if i < out.size:
        height, width, channels = out.shape[1], out.shape[2], out.shape[3]
        c, X = i % channels, i // channels % width
        Y, n = i // (channels * width) % height, i // (channels * width * height)
        r = (kernel_size - 1) // 2
        total = out.dtype.type(0)
        for dy in range(kernel_size):
            row = Y // scale - r + dy
            if 0 <= row < x.shape[2]:  # x is (N, h, w, C): the width
                for dx in range(kernel_size):
                    col = X // scale - r + dx
                    if 0 <= col < x.shape[1]:
                        total += masks[n, Y, X, dy * kernel_size + dx] * x[n, row, col, c]
        out[n, Y, X, c] = total


@cuda.jit
def channels_last_mask_by_shuffle(x, masks, out, kernel_size, scale):
    # Lane 0 loads each mask value and hands it to the warp: the simulator has no warp shuffle.
    i = cuda.grid(1)
    j = min(i, out.size - 1)
    height, width, channels = out.shape[1], out.shape[2], out.shape[3]
    c, X = j % channels, j // channels % width
    Y, n = j // (channels * width) % height, j // (channels * width * height)
    r = (kernel_size - 1) // 2
    total = out.dtype.type(0)
    for dy in range(kernel_size):
        for dx in range(kernel_size):
            row, col = Y // scale - r + dy, X // scale - r + dx
            inside = 0 <= row < x.shape[1] and 0 <= col < x.shape[2]
            weight = out.dtype.type(0)
            if cuda.laneid == 0 and inside:
                weight = masks[n, Y, X, dy * kernel_size + dx]
            weight = cuda.shfl_sync(0xFFFFFFFF, weight, 0)
            if inside:
                total += weight * x[n, row, col, c]
    if i < out.size:
        out[n, Y, X, c] = total


@cuda.jit
def channels_last_barrier_misspelt(x, masks, out, kernel_size, scale):
    i = cuda.grid(1)
    cuda.syncthread()
    if i < out.size:
        out.reshape(-1)[i] = 0


#: Mask values a block of at most 128 threads stages: 128 pixels (one channel each, at worst) of 7 x 7 slots.
STAGED_MASKS = 128 * 49


@cuda.jit(device=True)
def _stage_block_masks(staged, masks, out, kernel_size):
    """Each mask value of the pixels the block's threads cover, loaded once and coalesced into ``staged``;
    returns the block's first pixel."""
    height, width, channels = out.shape[1], out.shape[2], out.shape[3]
    slots = kernel_size * kernel_size
    start = cuda.blockIdx.x * cuda.blockDim.x
    first_pixel = start // channels
    pixels = (min(start + cuda.blockDim.x, out.size) - 1) // channels - first_pixel + 1 if start < out.size else 0
    for at in range(cuda.threadIdx.x, pixels * slots, cuda.blockDim.x):
        pixel = first_pixel + at // slots
        staged[at] = masks[pixel // (height * width), pixel // width % height, pixel % width, at % slots]
    return first_pixel


@cuda.jit(device=True)
def _sum_staged(x, staged, out, kernel_size, scale, first_pixel):
    i = cuda.grid(1)
    if i < out.size:
        height, width, channels = out.shape[1], out.shape[2], out.shape[3]
        c, pixel = i % channels, i // channels
        X, Y, n = pixel % width, pixel // width % height, pixel // (width * height)
        base = (pixel - first_pixel) * kernel_size * kernel_size
        r = (kernel_size - 1) // 2
        total = out.dtype.type(0)
        for dy in range(kernel_size):
            row = Y // scale - r + dy
            if 0 <= row < x.shape[1]:
                for dx in range(kernel_size):
                    col = X // scale - r + dx
                    if 0 <= col < x.shape[2]:
                        total += staged[base + dy * kernel_size + dx] * x[n, row, col, c]
        out[n, Y, X, c] = total


@cuda.jit
def channels_last_masks_staged(x, masks, out, kernel_size, scale):
    # Right, beyond what the exercise asks: the block first loads the mask values of the pixels its threads
    # cover, each once and coalesced, into shared memory; the warps' mask requests then span 4 sectors, but
    # there are far fewer of them than one broadcast per thread and slot.
    staged = cuda.shared.array(STAGED_MASKS, float32)
    first_pixel = _stage_block_masks(staged, masks, out, kernel_size)
    cuda.syncthreads()
    _sum_staged(x, staged, out, kernel_size, scale, first_pixel)


@cuda.jit
def channels_last_masks_staged_without_a_barrier(x, masks, out, kernel_size, scale):
    # The same without its cuda.syncthreads(): a thread may read a mask value before the thread that stages
    # it has written it. Caught only by wrong values before, now and then.
    staged = cuda.shared.array(STAGED_MASKS, float32)
    first_pixel = _stage_block_masks(staged, masks, out, kernel_size)
    _sum_staged(x, staged, out, kernel_size, scale, first_pixel)


@cuda.jit
def channels_last_masks_staged_by_every_thread(x, masks, out, kernel_size, scale):
    # Right: every thread of a pixel writes the same mask values into the pixel's place, then the barrier.
    staged = cuda.shared.array(STAGED_MASKS, float32)
    i = cuda.grid(1)
    j = min(i, out.size - 1)  # a thread past the end still reaches the barrier
    height, width, channels = out.shape[1], out.shape[2], out.shape[3]
    slots = kernel_size * kernel_size
    c, pixel = j % channels, j // channels
    X, Y, n = pixel % width, pixel // width % height, pixel // (width * height)
    base = (pixel - cuda.blockIdx.x * cuda.blockDim.x // channels) * slots
    for t in range(slots):
        staged[base + t] = masks[n, Y, X, t]
    cuda.syncthreads()
    r = (kernel_size - 1) // 2
    total = out.dtype.type(0)
    for dy in range(kernel_size):
        row = Y // scale - r + dy
        if 0 <= row < x.shape[1]:
            for dx in range(kernel_size):
                col = X // scale - r + dx
                if 0 <= col < x.shape[2]:
                    total += staged[base + dy * kernel_size + dx] * x[n, row, col, c]
    if i < out.size:
        out[n, Y, X, c] = total



@cuda.jit
def _one_value_through_views(out):
    staged = cuda.shared.array((2, 9), float32)
    t = cuda.threadIdx.x
    staged[1, t + 1] = t  # each thread its own element
    staged.flat[0] = 1.0  # every thread one value into one element: no race
    row = staged[0]
    row[1] = 2.0
    cuda.syncthreads()
    out[t] = staged[0, 0] + staged[0, 1] + staged[1, 8 - t]


@cuda.jit
def _own_values_through_a_view(out):
    staged = cuda.shared.array(9, float32)
    t = cuda.threadIdx.x
    row = staged[0:4]
    row[0] = t  # every thread its own value into one element: a race
    cuda.syncthreads()
    out[t] = staged[0]


def test_shared_stores_through_views_log_the_value_each_thread_stored():
    # A store through .flat or a row view logged the value of the last store made through the array itself
    # (another thread's, or none), so threads all writing one value there were named as a race.
    assert performance.record_kernel(_one_value_through_views, (1, 8), np.zeros(8, np.float32)).shared_race() is None
    race = performance.record_kernel(_own_values_through_a_view, (1, 8), np.zeros(8, np.float32)).shared_race()
    assert race is not None and race[1] == 0 and race[4] is True


@cuda.jit
def _zeroed_then_counted_by_atomics(out):
    count = cuda.shared.array(1, float32)
    if cuda.threadIdx.x == 0:
        count[0] = 0
    cuda.syncthreads()
    cuda.atomic.add(count, 0, 1.0)  # atomics alone do not race
    cuda.syncthreads()
    out[cuda.threadIdx.x] = count[0]


@cuda.jit
def _zeroed_while_counted_by_atomics(out):
    count = cuda.shared.array(1, float32)
    if cuda.threadIdx.x == 0:
        count[0] = 0  # no barrier before the other threads' atomics
    cuda.atomic.add(count, 0, 1.0)
    cuda.syncthreads()
    out[cuda.threadIdx.x] = count[0]


@cuda.jit
def _read_while_counted_by_atomics(out):
    count = cuda.shared.array(1, float32)
    if cuda.threadIdx.x == 0:
        count[0] = 0
    cuda.syncthreads()
    out[cuda.threadIdx.x] = cuda.atomic.add(count, 0, 1.0) + count[0]  # a plain read beside the atomics


def test_a_plain_access_beside_another_threads_atomic_is_a_race():
    # Atomics were not logged at all: a plain store or load racing with them passed.
    def race(kernel):
        return performance.record_kernel(kernel, (1, 8), np.zeros(8, np.float32)).shared_race()

    assert race(_zeroed_then_counted_by_atomics) is None
    assert race(_zeroed_while_counted_by_atomics)[3:] == ((0, 1), True)
    assert race(_read_while_counted_by_atomics)[3:] == ((0, 1), False)


_PRIVATE_SLOT_SOURCE = """
def {name}(out):
    slots = cuda.shared.array(32, float32)
    t = cuda.threadIdx.x
    slots[{slot}] = t
    {then}
"""


def _kernel_in_file(name, then, filename, slot="t"):
    """A function of ``out`` whose thread t keeps t in element ``slot`` of a shared array made on line 3."""
    namespace = {"cuda": cuda, "float32": float32}
    exec(compile(_PRIVATE_SLOT_SOURCE.format(name=name, slot=slot, then=then), filename, "exec"), namespace)
    return namespace[name]


def test_shared_arrays_of_two_files_on_one_line_number_are_two_arrays():
    # Named by their line alone, the arrays of two notebook cells (two files, lines counted from 1 in each) were
    # one array to the race check, which named a race between threads that each use their own element.
    helper = cuda.jit(device=True)(_kernel_in_file("private_slot", "return slots[31 - t]", "/tmp/cell_2.py",
                                                   slot="31 - t"))
    kernel = _kernel_in_file("kernel", "out[t] = slots[t] + private_slot(out)", "/tmp/cell_1.py")
    kernel.__globals__["private_slot"] = helper
    out = np.zeros(32, np.float32)
    record = performance.record_kernel(cuda.jit(kernel), (1, 32), out)
    assert record.shared_race() is None
    assert (out == 2 * np.arange(32)).all()


def test_the_race_check_works_in_a_folder_named_simulator():
    # An access was taken for the simulator's own (an atomic's) when its file's path held "simulator".
    kernel = _kernel_in_file("kernel", "out[t] = slots[31 - t]", "/tmp/my_simulator_course/lesson.py")
    record = performance.record_kernel(cuda.jit(kernel), (1, 32), np.zeros(32, np.float32))
    assert record.shared_race() is not None

def test_channels_last_passes_masks_staged_by_every_thread(capsys):
    # Threads writing one value to the same element, then the barrier, is not a race.
    checkers.check_carafe_channels_last_kernel(channels_last_masks_staged_by_every_thread)
    assert "PASS carafe_channels_last_kernel" in capsys.readouterr().out


def test_channels_last_passes_masks_staged_in_shared_memory(capsys):
    # Its mask requests touch 3.8 sectors each: it failed as "spread over memory", with fewer sectors in all.
    checkers.check_carafe_channels_last_kernel(channels_last_masks_staged)
    assert "PASS carafe_channels_last_kernel" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, message", [
    (channels_last_32_channels_written_in, "the batch index came out as 2 with 2 image\\(s\\).*a size written "
                                           "into the kernel"),
    (channels_last_row_bound_off_by_one, "a window row past the map's edge was read \\(row 3 of 3\\).*with `<`, not "
                                         "`<=`"),
    (channels_last_zero_padded, "(?s)nan masks at the slots outside the map \\(the other masks and x are "
                                "finite\\).*rather than multiplying the mask by a zero value"),
    (channels_last_blocks_of_128, "(?s)right with blocks of 128 threads, wrong with blocks of 96.*cuda.grid\\(1\\)"),
    (channels_last_pixel_fastest, "sectors of 32 bytes"),
    (channels_last_accumulating_in_out, "written more than once"),
    (channels_last_nchw_masks, "values wrong"),
    (channels_last_without_guard, "threads past the end must do nothing"),
    (channels_last_adding_into_out, "adds into `out`"),
    (channels_last_batch_0_only, "the kernel ignores the batch index n"),
    (channels_last_one_thread_per_pixel, "one thread wrote 32 outputs.*other threads wrote none"),  # passed before
    (channels_last_row_tested_against_the_width, "row 3 of 3\\): a slot is inside when 0 <= row < x.shape\\[1\\] = 3: "
                                                 "test with `<`, not `<=`, against the size of the axis"),
    (channels_last_mask_by_shuffle, "the kernel calls cuda.shfl_sync, which Numba's CUDA simulator does not have"),
    (channels_last_barrier_misspelt, "the kernel calls cuda.syncthread, which numba.cuda does not have: a typo"),
    (channels_last_masks_staged_without_a_barrier, "threads \\d+ and \\d+ of block 0 write and read element \\d+ of the "
                                                   "shared array made on line \\d+ with no cuda.syncthreads\\(\\)"),
    pytest.param(channels_last_float_index, "GPU compiler rejects",
                 marks=pytest.mark.skipif(not (ul_backend.SIMULATOR and ptx.compiler_available()),
                                          reason="needs the simulator and the PTX compiler")),
])
def test_channels_last_catches_wrong_answers(wrong, message):
    with pytest.raises(CheckFailed, match=message):
        checkers.check_carafe_channels_last_kernel(wrong)


# --------------------------------------------------------------------------
# 07.4 several channels per thread
# --------------------------------------------------------------------------

CHANNELS_PER_THREAD = 4


@cuda.jit
def blocked_kernel(x, masks, out, kernel_size, scale):
    channels, height, width = out.shape[1], out.shape[2], out.shape[3]
    runs = (channels + CHANNELS_PER_THREAD - 1) // CHANNELS_PER_THREAD
    i = cuda.grid(1)
    if i < out.shape[0] * runs * height * width:
        X = i % width
        rest = i // width
        Y = rest % height
        rest = rest // height
        first = (rest % runs) * CHANNELS_PER_THREAD
        n = rest // runs
        sums = cuda.local.array(CHANNELS_PER_THREAD, float32)
        for j in range(CHANNELS_PER_THREAD):
            sums[j] = 0
        r = (kernel_size - 1) // 2
        for dy in range(kernel_size):
            row = Y // scale - r + dy
            if 0 <= row < x.shape[2]:
                for dx in range(kernel_size):
                    col = X // scale - r + dx
                    if 0 <= col < x.shape[3]:
                        weight = masks[n, dy * kernel_size + dx, Y, X]
                        for j in range(CHANNELS_PER_THREAD):
                            if first + j < channels:
                                sums[j] += weight * x[n, first + j, row, col]
        for j in range(CHANNELS_PER_THREAD):
            if first + j < channels:
                out[n, first + j, Y, X] = sums[j]


# cuda.local.array is not zeroed: in a recorded launch its elements start as garbage.
@cuda.jit
def blocked_sums_not_zeroed(x, masks, out, kernel_size, scale):
    channels, height, width = out.shape[1], out.shape[2], out.shape[3]
    runs = (channels + CHANNELS_PER_THREAD - 1) // CHANNELS_PER_THREAD
    i = cuda.grid(1)
    if i < out.shape[0] * runs * height * width:
        X = i % width
        rest = i // width
        Y = rest % height
        rest = rest // height
        first = (rest % runs) * CHANNELS_PER_THREAD
        n = rest // runs
        sums = cuda.local.array(CHANNELS_PER_THREAD, float32)
        r = (kernel_size - 1) // 2
        for dy in range(kernel_size):
            row = Y // scale - r + dy
            if 0 <= row < x.shape[2]:
                for dx in range(kernel_size):
                    col = X // scale - r + dx
                    if 0 <= col < x.shape[3]:
                        weight = masks[n, dy * kernel_size + dx, Y, X]
                        for j in range(CHANNELS_PER_THREAD):
                            if first + j < channels:
                                sums[j] += weight * x[n, first + j, row, col]
        for j in range(CHANNELS_PER_THREAD):
            if first + j < channels:
                out[n, first + j, Y, X] = sums[j]


@cuda.jit
def blocked_numpy_sums(x, masks, out, kernel_size, scale):
    channels, height, width = out.shape[1], out.shape[2], out.shape[3]
    runs = (channels + CHANNELS_PER_THREAD - 1) // CHANNELS_PER_THREAD
    i = cuda.grid(1)
    if i < out.shape[0] * runs * height * width:
        X = i % width
        rest = i // width
        Y = rest % height
        rest = rest // height
        first = (rest % runs) * CHANNELS_PER_THREAD
        n = rest // runs
        sums = np.zeros(CHANNELS_PER_THREAD, np.float32)
        for j in range(CHANNELS_PER_THREAD):
            sums[j] = 0
        r = (kernel_size - 1) // 2
        for dy in range(kernel_size):
            row = Y // scale - r + dy
            if 0 <= row < x.shape[2]:
                for dx in range(kernel_size):
                    col = X // scale - r + dx
                    if 0 <= col < x.shape[3]:
                        weight = masks[n, dy * kernel_size + dx, Y, X]
                        for j in range(CHANNELS_PER_THREAD):
                            if first + j < channels:
                                sums[j] += weight * x[n, first + j, row, col]
        for j in range(CHANNELS_PER_THREAD):
            if first + j < channels:
                out[n, first + j, Y, X] = sums[j]


@cuda.jit
def blocked_run_fastest(x, masks, out, kernel_size, scale):
    channels, height, width = out.shape[1], out.shape[2], out.shape[3]
    runs = (channels + CHANNELS_PER_THREAD - 1) // CHANNELS_PER_THREAD
    i = cuda.grid(1)
    if i < out.shape[0] * runs * height * width:
        first = (i % runs) * CHANNELS_PER_THREAD
        rest = i // runs
        X = rest % width
        rest = rest // width
        Y = rest % height
        n = rest // height
        sums = cuda.local.array(CHANNELS_PER_THREAD, float32)
        for j in range(CHANNELS_PER_THREAD):
            sums[j] = 0
        r = (kernel_size - 1) // 2
        for dy in range(kernel_size):
            row = Y // scale - r + dy
            if 0 <= row < x.shape[2]:
                for dx in range(kernel_size):
                    col = X // scale - r + dx
                    if 0 <= col < x.shape[3]:
                        weight = masks[n, dy * kernel_size + dx, Y, X]
                        for j in range(CHANNELS_PER_THREAD):
                            if first + j < channels:
                                sums[j] += weight * x[n, first + j, row, col]
        for j in range(CHANNELS_PER_THREAD):
            if first + j < channels:
                out[n, first + j, Y, X] = sums[j]


@cuda.jit
def blocked_sized_at_run_time(x, masks, out, kernel_size, scale):
    channels, height, width = out.shape[1], out.shape[2], out.shape[3]
    runs = (channels + CHANNELS_PER_THREAD - 1) // CHANNELS_PER_THREAD
    i = cuda.grid(1)
    if i < out.shape[0] * runs * height * width:
        X = i % width
        rest = i // width
        Y = rest % height
        rest = rest // height
        first = (rest % runs) * CHANNELS_PER_THREAD
        n = rest // runs
        count = min(CHANNELS_PER_THREAD, channels - first)
        sums = cuda.local.array(count, float32)
        for j in range(count):
            sums[j] = 0
        r = (kernel_size - 1) // 2
        for dy in range(kernel_size):
            row = Y // scale - r + dy
            if 0 <= row < x.shape[2]:
                for dx in range(kernel_size):
                    col = X // scale - r + dx
                    if 0 <= col < x.shape[3]:
                        weight = masks[n, dy * kernel_size + dx, Y, X]
                        for j in range(CHANNELS_PER_THREAD):
                            if first + j < channels:
                                sums[j] += weight * x[n, first + j, row, col]
        for j in range(CHANNELS_PER_THREAD):
            if first + j < channels:
                out[n, first + j, Y, X] = sums[j]


@cuda.jit
def blocked_without_reuse(x, masks, out, kernel_size, scale):
    # Right values, but the mask value is loaded again for every channel.
    channels, height, width = out.shape[1], out.shape[2], out.shape[3]
    runs = (channels + CHANNELS_PER_THREAD - 1) // CHANNELS_PER_THREAD
    i = cuda.grid(1)
    if i < out.shape[0] * runs * height * width:
        X = i % width
        rest = i // width
        Y = rest % height
        rest = rest // height
        first = (rest % runs) * CHANNELS_PER_THREAD
        n = rest // runs
        r = (kernel_size - 1) // 2
        for j in range(CHANNELS_PER_THREAD):
            if first + j < channels:
                total = float32(0)
                for dy in range(kernel_size):
                    row = Y // scale - r + dy
                    if 0 <= row < x.shape[2]:
                        for dx in range(kernel_size):
                            col = X // scale - r + dx
                            if 0 <= col < x.shape[3]:
                                total += masks[n, dy * kernel_size + dx, Y, X] * x[n, first + j, row, col]
                out[n, first + j, Y, X] = total


@cuda.jit
def blocked_without_tail(x, masks, out, kernel_size, scale):
    # Assumes C is a multiple of CHANNELS_PER_THREAD: the last channels stay unwritten.
    channels, height, width = out.shape[1], out.shape[2], out.shape[3]
    runs = channels // CHANNELS_PER_THREAD
    i = cuda.grid(1)
    if i < out.shape[0] * runs * height * width:
        X = i % width
        rest = i // width
        Y = rest % height
        rest = rest // height
        first = (rest % runs) * CHANNELS_PER_THREAD
        n = rest // runs
        sums = cuda.local.array(CHANNELS_PER_THREAD, float32)
        for j in range(CHANNELS_PER_THREAD):
            sums[j] = 0
        r = (kernel_size - 1) // 2
        for dy in range(kernel_size):
            row = Y // scale - r + dy
            if 0 <= row < x.shape[2]:
                for dx in range(kernel_size):
                    col = X // scale - r + dx
                    if 0 <= col < x.shape[3]:
                        weight = masks[n, dy * kernel_size + dx, Y, X]
                        for j in range(CHANNELS_PER_THREAD):
                            sums[j] += weight * x[n, first + j, row, col]
        for j in range(CHANNELS_PER_THREAD):
            out[n, first + j, Y, X] = sums[j]


@pytest.mark.parametrize("channels_per_thread", [1, 0, 2.0])
def test_blocked_needs_several_channels_per_thread(channels_per_thread):
    # With 1 a one-channel kernel passed every other check: there is nothing to reuse.
    with pytest.raises(CheckFailed, match=f"CHANNELS_PER_THREAD is {channels_per_thread}.*nothing is reused"):
        checkers.check_carafe_channel_blocked_kernel(blocked_kernel, channels_per_thread)


def test_blocked_passes_the_right_answer(capsys):
    checkers.check_carafe_channel_blocked_kernel(blocked_kernel, CHANNELS_PER_THREAD)
    assert "PASS carafe_channel_blocked_kernel" in capsys.readouterr().out


NEEDS_PTX = pytest.mark.skipif(not (ul_backend.SIMULATOR and ptx.compiler_available()),
                               reason="needs the simulator and the PTX compiler")


@cuda.jit
def blocked_zero_padded(x, masks, out, kernel_size, scale):
    channels, height, width = out.shape[1], out.shape[2], out.shape[3]
    runs = (channels + CHANNELS_PER_THREAD - 1) // CHANNELS_PER_THREAD
    i = cuda.grid(1)
    if i < out.shape[0] * runs * height * width:
        X, Y = i % width, i // width % height
        first, n = i // (width * height) % runs * CHANNELS_PER_THREAD, i // (width * height * runs)
        sums = cuda.local.array(CHANNELS_PER_THREAD, float32)
        for j in range(CHANNELS_PER_THREAD):
            sums[j] = 0
        r = (kernel_size - 1) // 2
        for dy in range(kernel_size):
            for dx in range(kernel_size):
                row, col = Y // scale - r + dy, X // scale - r + dx
                inside = 0 <= row < x.shape[2] and 0 <= col < x.shape[3]
                weight = masks[n, dy * kernel_size + dx, Y, X]  # read, and multiplied, outside the map too
                for j in range(CHANNELS_PER_THREAD):
                    if first + j < channels:
                        sums[j] += weight * (x[n, first + j, row, col] if inside else float32(0))
        for j in range(CHANNELS_PER_THREAD):
            if first + j < channels:
                out[n, first + j, Y, X] = sums[j]


@cuda.jit
def blocked_all_channels_per_pixel(x, masks, out, kernel_size, scale):
    # One thread per pixel sums every channel; the threads for the other runs do nothing.
    channels, height, width = out.shape[1], out.shape[2], out.shape[3]
    i = cuda.grid(1)
    if i < out.shape[0] * height * width:
        X, Y, n = i % width, i // width % height, i // (width * height)
        sums = cuda.local.array(64, float32)
        for j in range(channels):
            sums[j] = 0
        r = (kernel_size - 1) // 2
        for dy in range(kernel_size):
            row = Y // scale - r + dy
            if 0 <= row < x.shape[2]:
                for dx in range(kernel_size):
                    col = X // scale - r + dx
                    if 0 <= col < x.shape[3]:
                        weight = masks[n, dy * kernel_size + dx, Y, X]
                        for j in range(channels):
                            sums[j] += weight * x[n, j, row, col]
        for j in range(channels):
            out[n, j, Y, X] = sums[j]


@cuda.jit
def blocked_guarded_by_out_size(x, masks, out, kernel_size, scale):
    channels, height, width = out.shape[1], out.shape[2], out.shape[3]
    runs = (channels + CHANNELS_PER_THREAD - 1) // CHANNELS_PER_THREAD
    i = cuda.grid(1)
    if i < out.size:  # one thread per pixel and run is needed, fewer than out.size
        X, Y = i % width, i // width % height
        first, n = i // (width * height) % runs * CHANNELS_PER_THREAD, i // (width * height * runs)
        sums = cuda.local.array(CHANNELS_PER_THREAD, float32)
        for j in range(CHANNELS_PER_THREAD):
            sums[j] = 0
        r = (kernel_size - 1) // 2
        for dy in range(kernel_size):
            row = Y // scale - r + dy
            if 0 <= row < x.shape[2]:
                for dx in range(kernel_size):
                    col = X // scale - r + dx
                    if 0 <= col < x.shape[3]:
                        weight = masks[n, dy * kernel_size + dx, Y, X]
                        for j in range(CHANNELS_PER_THREAD):
                            if first + j < channels:
                                sums[j] += weight * x[n, first + j, row, col]
        for j in range(CHANNELS_PER_THREAD):
            if first + j < channels:
                out[n, first + j, Y, X] = sums[j]


# The sums in one shared array for the whole block: every thread adds into the same four elements.
@cuda.jit
def blocked_sums_shared(x, masks, out, kernel_size, scale):
    channels, height, width = out.shape[1], out.shape[2], out.shape[3]
    runs = (channels + CHANNELS_PER_THREAD - 1) // CHANNELS_PER_THREAD
    sums = cuda.shared.array(CHANNELS_PER_THREAD, float32)
    i = cuda.grid(1)
    if i < out.shape[0] * runs * height * width:
        X, Y = i % width, i // width % height
        first, n = i // (width * height) % runs * CHANNELS_PER_THREAD, i // (width * height * runs)
        for j in range(CHANNELS_PER_THREAD):
            sums[j] = 0
        r = (kernel_size - 1) // 2
        for dy in range(kernel_size):
            row = Y // scale - r + dy
            if 0 <= row < x.shape[2]:
                for dx in range(kernel_size):
                    col = X // scale - r + dx
                    if 0 <= col < x.shape[3]:
                        weight = masks[n, dy * kernel_size + dx, Y, X]
                        for j in range(CHANNELS_PER_THREAD):
                            if first + j < channels:
                                sums[j] += weight * x[n, first + j, row, col]
        for j in range(CHANNELS_PER_THREAD):
            if first + j < channels:
                out[n, first + j, Y, X] = sums[j]


@pytest.mark.parametrize("wrong, message", [
    (blocked_guarded_by_out_size, "`if i < N \\* runs \\* H \\* W:` around the body, its bound the 144 threads"),
    (blocked_zero_padded, "(?s)nan masks at the slots outside the map \\(the other masks and x are finite\\)"),
    (blocked_all_channels_per_pixel, "(?s)one thread wrote 9 outputs.*at most CHANNELS_PER_THREAD = 4"),
    (blocked_without_reuse, "loads of masks"),
    (blocked_sums_not_zeroed, "does not zero its elements"),
    (blocked_sums_shared, "(?s)threads 0 and 1 of block 0 write element 0 of the shared array made on line \\d+ with "
                          "no cuda.syncthreads.*belongs in cuda.local.array"),
    (blocked_without_tail, "never written|out of bounds"),
    (blocked_run_fastest, "X = i % W fastest"),
    pytest.param(blocked_numpy_sums, "cannot allocate NumPy arrays", marks=NEEDS_PTX),
    pytest.param(blocked_sized_at_run_time, "a size fixed when the kernel compiles", marks=NEEDS_PTX),
])
def test_blocked_catches_wrong_answers(wrong, message):
    with pytest.raises(CheckFailed, match=message):
        checkers.check_carafe_channel_blocked_kernel(wrong, CHANNELS_PER_THREAD)


def test_blocked_loads_agree_with_the_traffic_counter():
    x, masks = performance.carafe_inputs(1, 6, 3, 3, 3, 2, 1, seed=5)
    out = np.zeros((1, 6, 6, 6), np.float32)
    launch = launch_config(2 * 36, 128)
    record = performance.record_kernel(blocked_kernel, launch, x, masks, out, 3, 2)
    report = traffic.count(blocked_kernel, *launch, x, masks, np.zeros_like(out), 3, 2)
    assert record.count("masks") == report.array("masks").loads
    assert record.count("x") == report.array("x").loads
    assert record.count("out", "store") == report.array("out").stores == out.size


# --------------------------------------------------------------------------
# 07.5 the CPU loop
# --------------------------------------------------------------------------


@numba.njit
def slow(x, masks, out, kernel_size, scale):
    batch, channels, height, width = out.shape
    r = (kernel_size - 1) // 2
    for n in range(batch):
        for X in range(width):
            for Y in range(height):
                for c in range(channels):
                    total = np.float32(0)
                    for dy in range(kernel_size):
                        row = Y // scale - r + dy
                        if 0 <= row < x.shape[2]:
                            for dx in range(kernel_size):
                                col = X // scale - r + dx
                                if 0 <= col < x.shape[3]:
                                    total += masks[n, dy * kernel_size + dx, Y, X] * x[n, c, row, col]
                    out[n, c, Y, X] = total


@numba.njit
def planes_slots_innermost(x, masks, out, kernel_size, scale):
    batch, channels, height, width = out.shape
    r = (kernel_size - 1) // 2
    for n in range(batch):
        for c in range(channels):
            for Y in range(height):
                for X in range(width):
                    total = np.float32(0)
                    for dy in range(kernel_size):
                        row = Y // scale - r + dy
                        if 0 <= row < x.shape[2]:
                            for dx in range(kernel_size):
                                col = X // scale - r + dx
                                if 0 <= col < x.shape[3]:
                                    total += masks[n, dy * kernel_size + dx, Y, X] * x[n, c, row, col]
                    out[n, c, Y, X] = total


@numba.njit(parallel=True)
def rows(x, masks, out, kernel_size, scale):
    batch, channels, height, width = out.shape
    low_height = x.shape[2]
    r = (kernel_size - 1) // 2
    pad = r * scale
    for plane in numba.prange(batch * channels):
        n, c = plane // channels, plane % channels
        columns = np.zeros((low_height, width + 2 * pad), out.dtype)
        for row in range(low_height):
            for X in range(width):
                columns[row, pad + X] = x[n, c, row, X // scale]
        for Y in range(height):
            for X in range(width):
                out[n, c, Y, X] = 0
            for dy in range(kernel_size):
                row = Y // scale - r + dy
                if 0 <= row < low_height:
                    for dx in range(kernel_size):
                        t = dy * kernel_size + dx
                        begin = min(width, max(0, (r - dx) * scale))
                        end = max(begin, min(width, (x.shape[3] + r - dx) * scale))
                        target, weights = out[n, c, Y, begin:end], masks[n, t, Y, begin:end]
                        values = columns[row, begin + dx * scale:end + dx * scale]
                        for i in range(end - begin):
                            target[i] += weights[i] * values[i]


# prange on the innermost loop: threads started and joined at every slot of every row.
@numba.njit(parallel=True)
def rows_prange_over_x(x, masks, out, kernel_size, scale):
    batch, channels, height, width = out.shape
    low_height = x.shape[2]
    r = (kernel_size - 1) // 2
    pad = r * scale
    for plane in range(batch * channels):
        n, c = plane // channels, plane % channels
        columns = np.zeros((low_height, width + 2 * pad), out.dtype)
        for row in range(low_height):
            for X in range(width):
                columns[row, pad + X] = x[n, c, row, X // scale]
        for Y in range(height):
            for X in range(width):
                out[n, c, Y, X] = 0
            for dy in range(kernel_size):
                row = Y // scale - r + dy
                if 0 <= row < low_height:
                    for dx in range(kernel_size):
                        t = dy * kernel_size + dx
                        begin = min(width, max(0, (r - dx) * scale))  # the slots inside the map, as the spec asks
                        end = max(begin, min(width, (x.shape[3] + r - dx) * scale))
                        for X in numba.prange(begin, end):
                            out[n, c, Y, X] += masks[n, t, Y, X] * columns[row, X + dx * scale]


# Too little padding: compiled, the loop reads past `columns` without an error.
@numba.njit(parallel=True)
def rows_padded_too_little(x, masks, out, kernel_size, scale):
    batch, channels, height, width = out.shape
    low_height = x.shape[2]
    r = (kernel_size - 1) // 2
    pad = r
    for plane in numba.prange(batch * channels):
        n, c = plane // channels, plane % channels
        columns = np.zeros((low_height, width + 2 * pad), out.dtype)
        for row in range(low_height):
            for X in range(width):
                columns[row, pad + X] = x[n, c, row, X // scale]
        for Y in range(height):
            for X in range(width):
                out[n, c, Y, X] = 0
            for dy in range(kernel_size):
                row = Y // scale - r + dy
                if 0 <= row < low_height:
                    for dx in range(kernel_size):
                        t = dy * kernel_size + dx
                        for X in range(width):
                            out[n, c, Y, X] += masks[n, t, Y, X] * columns[row, X + dx * scale]



# Zeroing out first with a prange over the batch, then the planes: the work is split.
@numba.njit(parallel=True)
def rows_zeroed_by_a_prange_over_the_batch(x, masks, out, kernel_size, scale):
    batch, channels, height, width = out.shape
    low_height = x.shape[2]
    r = (kernel_size - 1) // 2
    pad = r * scale
    for n in numba.prange(batch):
        out[n] = 0
    for plane in numba.prange(batch * channels):
        n, c = plane // channels, plane % channels
        columns = np.zeros((low_height, width + 2 * pad), out.dtype)
        for row in range(low_height):
            for X in range(width):
                columns[row, pad + X] = x[n, c, row, X // scale]
        for Y in range(height):
            for X in range(width):
                out[n, c, Y, X] = 0
            for dy in range(kernel_size):
                row = Y // scale - r + dy
                if 0 <= row < low_height:
                    for dx in range(kernel_size):
                        t = dy * kernel_size + dx
                        begin = min(width, max(0, (r - dx) * scale))
                        end = max(begin, min(width, (x.shape[3] + r - dx) * scale))
                        target, weights = out[n, c, Y, begin:end], masks[n, t, Y, begin:end]
                        values = columns[row, begin + dx * scale:end + dx * scale]
                        for i in range(end - begin):
                            target[i] += weights[i] * values[i]





# A closure's variable read before the prange.
def _rows_with_a_closure(dtype):
    @numba.njit(parallel=True)
    def rows_closure(x, masks, out, kernel_size, scale):
        batch, channels, height, width = out.shape
        low_height = x.shape[2]
        r = (kernel_size - 1) // 2
        pad = r * scale
        zero = dtype(0)
        for plane in numba.prange(batch * channels):
            n, c = plane // channels, plane % channels
            columns = np.zeros((low_height, width + 2 * pad), out.dtype)
            for row in range(low_height):
                for X in range(width):
                    columns[row, pad + X] = x[n, c, row, X // scale]
            for Y in range(height):
                for X in range(width):
                    out[n, c, Y, X] = zero
                for dy in range(kernel_size):
                    row = Y // scale - r + dy
                    if 0 <= row < low_height:
                        for dx in range(kernel_size):
                            t = dy * kernel_size + dx
                            begin = min(width, max(0, (r - dx) * scale))
                            end = max(begin, min(width, (x.shape[3] + r - dx) * scale))
                            target, weights = out[n, c, Y, begin:end], masks[n, t, Y, begin:end]
                            values = columns[row, begin + dx * scale:end + dx * scale]
                            for i in range(end - begin):
                                target[i] += weights[i] * values[i]


    return rows_closure


rows_with_a_closure = _rows_with_a_closure(np.float32)


@numba.njit(parallel=True)
def rows_fixed_division_inside(x, masks, out, kernel_size, scale):
    batch, channels, height, width = out.shape
    low_height = x.shape[2]
    r = (kernel_size - 1) // 2
    pad = r * scale
    for plane in numba.prange(batch * channels):
        n, c = plane // channels, plane % channels
        columns = np.zeros((low_height, width + 2 * pad), out.dtype)
        for row in range(low_height):
            for X in range(width):
                columns[row, pad + X] = x[n, c, row, X // scale]
        for Y in range(height):
            for X in range(width):
                out[n, c, Y, X] = 0
            for dy in range(kernel_size):
                if 0 <= Y // scale - r + dy < low_height:
                    for dx in range(kernel_size):
                        begin = min(width, max(0, (r - dx) * scale))
                        end = max(begin, min(width, (x.shape[3] + r - dx) * scale))
                        target, weights = out[n, c, Y, begin:end], masks[n, dy * kernel_size + dx, Y, begin:end]
                        values = columns[Y // scale - r + dy, begin + dx * scale:end + dx * scale]
                        for i in range(end - begin):
                            target[i] += weights[i] * values[i] * (scale // scale)


@numba.njit(parallel=True)
def rows_in_chunks_of_planes(x, masks, out, kernel_size, scale):
    batch, channels, height, width = out.shape
    low_height = x.shape[2]
    r = (kernel_size - 1) // 2
    pad = r * scale
    chunks = (batch * channels + 3) // 4
    for chunk in numba.prange(chunks):
      for plane in range(4 * chunk, min(4 * chunk + 4, batch * channels)):
        n, c = plane // channels, plane % channels
        columns = np.zeros((low_height, width + 2 * pad), out.dtype)
        for row in range(low_height):
            for X in range(width):
                columns[row, pad + X] = x[n, c, row, X // scale]
        for Y in range(height):
            for X in range(width):
                out[n, c, Y, X] = 0
            for dy in range(kernel_size):
                row = Y // scale - r + dy
                if 0 <= row < low_height:
                    for dx in range(kernel_size):
                        t = dy * kernel_size + dx
                        begin = min(width, max(0, (r - dx) * scale))
                        end = max(begin, min(width, (x.shape[3] + r - dx) * scale))
                        target, weights = out[n, c, Y, begin:end], masks[n, t, Y, begin:end]
                        values = columns[row, begin + dx * scale:end + dx * scale]
                        for i in range(end - begin):
                            target[i] += weights[i] * values[i]


@numba.njit(parallel=True)
def rows_annotated(x, masks, out, kernel_size, scale):
    batch, channels, height, width = out.shape
    low_height = x.shape[2]
    r = (kernel_size - 1) // 2
    pad = r * scale
    for plane in numba.prange(batch * channels):
        n: int = plane // channels
        c: int = plane % channels
        columns = np.zeros((low_height, width + 2 * pad), out.dtype)
        for row in range(low_height):
            for X in range(width):
                columns[row, pad + X] = x[n, c, row, X // scale]
        for Y in range(height):
            for X in range(width):
                out[n, c, Y, X] = 0
            for dy in range(kernel_size):
                row = Y // scale - r + dy
                if 0 <= row < low_height:
                    for dx in range(kernel_size):
                        t = dy * kernel_size + dx
                        begin = min(width, max(0, (r - dx) * scale))
                        end = max(begin, min(width, (x.shape[3] + r - dx) * scale))
                        target, weights = out[n, c, Y, begin:end], masks[n, t, Y, begin:end]
                        values = columns[row, begin + dx * scale:end + dx * scale]
                        for i in range(end - begin):
                            target[i] += weights[i] * values[i]


@numba.njit(parallel=True)
def rows_prange_renamed(x, masks, out, kernel_size, scale):
    batch, channels, height, width = out.shape
    low_height = x.shape[2]
    r = (kernel_size - 1) // 2
    pad = r * scale
    for plane in parallel_range(batch * channels):
        n, c = plane // channels, plane % channels
        columns = np.zeros((low_height, width + 2 * pad), out.dtype)
        for row in range(low_height):
            for X in range(width):
                columns[row, pad + X] = x[n, c, row, X // scale]
        for Y in range(height):
            for X in range(width):
                out[n, c, Y, X] = 0
            for dy in range(kernel_size):
                row = Y // scale - r + dy
                if 0 <= row < low_height:
                    for dx in range(kernel_size):
                        t = dy * kernel_size + dx
                        begin = min(width, max(0, (r - dx) * scale))
                        end = max(begin, min(width, (x.shape[3] + r - dx) * scale))
                        target, weights = out[n, c, Y, begin:end], masks[n, t, Y, begin:end]
                        values = columns[row, begin + dx * scale:end + dx * scale]
                        for i in range(end - begin):
                            target[i] += weights[i] * values[i]


@numba.njit(parallel=True)
def rows_racing_over_dx(x, masks, out, kernel_size, scale):
    batch, channels, height, width = out.shape
    low_height = x.shape[2]
    r = (kernel_size - 1) // 2
    pad = r * scale
    for plane in range(batch * channels):
        n, c = plane // channels, plane % channels
        columns = np.zeros((low_height, width + 2 * pad), out.dtype)
        for row in range(low_height):
            for X in range(width):
                columns[row, pad + X] = x[n, c, row, X // scale]
        for Y in range(height):
            for X in range(width):
                out[n, c, Y, X] = 0
            for dy in range(kernel_size):
                row = Y // scale - r + dy
                if 0 <= row < low_height:
                    for dx in numba.prange(kernel_size):
                        t = dy * kernel_size + dx
                        for X in range(width):
                            out[n, c, Y, X] += masks[n, t, Y, X] * columns[row, X + dx * scale]


@numba.njit(parallel=True)
def rows_racing_over_dx_through_a_view(x, masks, out, kernel_size, scale):
    batch, channels, height, width = out.shape
    low_height = x.shape[2]
    r = (kernel_size - 1) // 2
    pad = r * scale
    for plane in range(batch * channels):
        n, c = plane // channels, plane % channels
        columns = np.zeros((low_height, width + 2 * pad), out.dtype)
        for row in range(low_height):
            for X in range(width):
                columns[row, pad + X] = x[n, c, row, X // scale]
        for Y in range(height):
            line = out[n, c, Y]
            line[:] = 0
            for dy in range(kernel_size):
                row = Y // scale - r + dy
                if 0 <= row < low_height:
                    for dx in numba.prange(kernel_size):
                        for X in range(width):
                            line[X] += masks[n, dy * kernel_size + dx, Y, X] * columns[row, X + dx * scale]


@numba.njit
def rows_on_one_core(x, masks, out, kernel_size, scale):
    batch, channels, height, width = out.shape
    low_height = x.shape[2]
    r = (kernel_size - 1) // 2
    pad = r * scale
    for plane in range(batch * channels):
        n, c = plane // channels, plane % channels
        columns = np.zeros((low_height, width + 2 * pad), out.dtype)
        for row in range(low_height):
            for X in range(width):
                columns[row, pad + X] = x[n, c, row, X // scale]
        for Y in range(height):
            for X in range(width):
                out[n, c, Y, X] = 0
            for dy in range(kernel_size):
                row = Y // scale - r + dy
                if 0 <= row < low_height:
                    for dx in range(kernel_size):
                        t = dy * kernel_size + dx
                        for X in range(width):
                            out[n, c, Y, X] += masks[n, t, Y, X] * columns[row, X + dx * scale]


@numba.njit
def rows_prange_not_parallel(x, masks, out, kernel_size, scale):
    batch, channels, height, width = out.shape
    low_height = x.shape[2]
    r = (kernel_size - 1) // 2
    pad = r * scale
    for plane in numba.prange(batch * channels):
        n, c = plane // channels, plane % channels
        columns = np.zeros((low_height, width + 2 * pad), out.dtype)
        for row in range(low_height):
            for X in range(width):
                columns[row, pad + X] = x[n, c, row, X // scale]
        for Y in range(height):
            for X in range(width):
                out[n, c, Y, X] = 0
            for dy in range(kernel_size):
                row = Y // scale - r + dy
                if 0 <= row < low_height:
                    for dx in range(kernel_size):
                        t = dy * kernel_size + dx
                        for X in range(width):
                            out[n, c, Y, X] += masks[n, t, Y, X] * columns[row, X + dx * scale]


@numba.njit(parallel=True)
def rows_testing_inside(x, masks, out, kernel_size, scale):
    batch, channels, height, width = out.shape
    low_height, low_width = x.shape[2], x.shape[3]
    r = (kernel_size - 1) // 2
    for plane in numba.prange(batch * channels):
        n, c = plane // channels, plane % channels
        for Y in range(height):
            for X in range(width):
                out[n, c, Y, X] = 0
            for dy in range(kernel_size):
                row = Y // scale - r + dy
                if 0 <= row < low_height:
                    for dx in range(kernel_size):
                        for X in range(width):
                            col = X // scale - r + dx
                            if 0 <= col < low_width:
                                out[n, c, Y, X] += masks[n, dy * kernel_size + dx, Y, X] * x[n, c, row, col]


@numba.njit(parallel=True)
def rows_testing_through_a_view(x, masks, out, kernel_size, scale):
    batch, channels, height, width = out.shape
    low_height, low_width = x.shape[2], x.shape[3]
    r = (kernel_size - 1) // 2
    for plane in numba.prange(batch * channels):
        n, c = plane // channels, plane % channels
        for Y in range(height):
            line = out[n, c, Y]
            line[:] = 0
            for dy in range(kernel_size):
                row = Y // scale - r + dy
                if 0 <= row < low_height:
                    for dx in range(kernel_size):
                        for X in range(width):
                            col = X // scale - r + dx
                            if 0 <= col < low_width:
                                line[X] += masks[n, dy * kernel_size + dx, Y, X] * x[n, c, row, col]


@numba.njit(parallel=True)
def rows_through_a_view(x, masks, out, kernel_size, scale):
    batch, channels, height, width = out.shape
    low_height = x.shape[2]
    r = (kernel_size - 1) // 2
    pad = r * scale
    for plane in numba.prange(batch * channels):
        n, c = plane // channels, plane % channels
        columns = np.zeros((low_height, width + 2 * pad), out.dtype)
        for row in range(low_height):
            for X in range(width):
                columns[row, pad + X] = x[n, c, row, X // scale]
        for Y in range(height):
            line = out[n, c, Y]
            line[:] = 0
            for dy in range(kernel_size):
                row = Y // scale - r + dy
                if 0 <= row < low_height:
                    for dx in range(kernel_size):
                        t = dy * kernel_size + dx
                        begin = min(width, max(0, (r - dx) * scale))
                        end = max(begin, min(width, (x.shape[3] + r - dx) * scale))
                        target, weights = line[begin:end], masks[n, t, Y, begin:end]
                        values = columns[row, begin + dx * scale:end + dx * scale]
                        for i in range(end - begin):
                            target[i] += weights[i] * values[i]


@numba.njit(parallel=True)
def rows_reusing_a_name(x, masks, out, kernel_size, scale):
    batch, channels, height, width = out.shape
    low_height = x.shape[2]
    r = (kernel_size - 1) // 2
    pad = r * scale
    for plane in numba.prange(batch * channels):
        n, c = plane // channels, plane % channels
        columns = np.zeros((low_height, width + 2 * pad), out.dtype)
        for row in range(low_height):
            line = columns[row]  # a row of columns here (its loop divides), a row of out below
            for X in range(width):
                line[pad + X] = x[n, c, row, X // scale]
        for Y in range(height):
            line = out[n, c, Y]
            line[:] = 0
            for dy in range(kernel_size):
                row = Y // scale - r + dy
                if 0 <= row < low_height:
                    for dx in range(kernel_size):
                        t = dy * kernel_size + dx
                        begin = min(width, max(0, (r - dx) * scale))
                        end = max(begin, min(width, (x.shape[3] + r - dx) * scale))
                        target, weights = line[begin:end], masks[n, t, Y, begin:end]
                        values = columns[row, begin + dx * scale:end + dx * scale]
                        for i in range(end - begin):
                            target[i] += weights[i] * values[i]


@numba.njit(parallel=True)
def rows_testing_through_enumerate(x, masks, out, kernel_size, scale):
    low_height, low_width = x.shape[2], x.shape[3]
    r = (kernel_size - 1) // 2
    for plane in numba.prange(out.shape[0] * out.shape[1]):
        n, c = plane // out.shape[1], plane % out.shape[1]
        for Y, line in enumerate(out[n, c]):
            line[:] = 0
            for dy in range(kernel_size):
                row = Y // scale - r + dy
                if 0 <= row < low_height:
                    for dx in range(kernel_size):
                        for X in range(out.shape[3]):
                            col = X // scale - r + dx
                            if 0 <= col < low_width:
                                line[X] += masks[n, dy * kernel_size + dx, Y, X] * x[n, c, row, col]


@numba.njit(parallel=True)
def rows_testing_through_unpacked_views(x, masks, out, kernel_size, scale):
    batch, channels, height, width = out.shape
    low_height, low_width = x.shape[2], x.shape[3]
    r = (kernel_size - 1) // 2
    for plane in numba.prange(batch * channels):
        n, c = plane // channels, plane % channels
        for Y in range(height):
            line, source = out[n, c, Y], x[n, c]
            line[:] = 0
            for dy in range(kernel_size):
                row = Y // scale - r + dy
                if 0 <= row < low_height:
                    for dx in range(kernel_size):
                        for X in range(width):
                            col = X // scale - r + dx
                            if 0 <= col < low_width:
                                line[X] += masks[n, dy * kernel_size + dx, Y, X] * source[row, col]


# Too little padding, where what the loop reads past a row is NaN, as the memory past `columns` can be:
# here the next row's left padding, filled with NaN. The result has NaN in it though every element was written.
@numba.njit(parallel=True)
def rows_padded_too_little_reading_nan(x, masks, out, kernel_size, scale):
    batch, channels, height, width = out.shape
    low_height = x.shape[2]
    r = (kernel_size - 1) // 2
    pad = r
    for plane in numba.prange(batch * channels):
        n, c = plane // channels, plane % channels
        columns = np.full((low_height, width + 2 * pad), np.nan, out.dtype)
        for row in range(low_height):
            for X in range(width):
                columns[row, pad + X] = x[n, c, row, X // scale]
        for Y in range(height):
            for X in range(width):
                out[n, c, Y, X] = 0
            for dy in range(kernel_size):
                row = Y // scale - r + dy
                if 0 <= row < low_height:
                    for dx in range(kernel_size):
                        t = dy * kernel_size + dx
                        for X in range(width):
                            out[n, c, Y, X] += masks[n, t, Y, X] * columns[row, X + dx * scale]


@numba.njit
def rows_not_zeroed(x, masks, out, kernel_size, scale):
    batch, channels, height, width = out.shape
    low_height = x.shape[2]
    r = (kernel_size - 1) // 2
    pad = r * scale
    for plane in range(batch * channels):
        n, c = plane // channels, plane % channels
        columns = np.zeros((low_height, width + 2 * pad), out.dtype)
        for row in range(low_height):
            for X in range(width):
                columns[row, pad + X] = x[n, c, row, X // scale]
        for Y in range(height):
            for dy in range(kernel_size):
                row = Y // scale - r + dy
                if 0 <= row < low_height:
                    for dx in range(kernel_size):
                        for X in range(width):
                            out[n, c, Y, X] += masks[n, dy * kernel_size + dx, Y, X] * columns[row, X + dx * scale]


def rows_in_python(x, masks, out, kernel_size, scale):
    rows.py_func(x, masks, out, kernel_size, scale)


# A prange over the batch runs one iteration for one image: one thread does all (numba splits
# only the outermost prange, so a prange inside it does not help).

@numba.njit(parallel=True)
def rows_prange_over_the_batch(x, masks, out, kernel_size, scale):
    batch, channels, height, width = out.shape
    low_height = x.shape[2]
    r = (kernel_size - 1) // 2
    pad = r * scale
    for n in numba.prange(batch):
        for c in range(channels):
            columns = np.zeros((low_height, width + 2 * pad), out.dtype)
            for row in range(low_height):
                for X in range(width):
                    columns[row, pad + X] = x[n, c, row, X // scale]
            for Y in range(height):
                for X in range(width):
                    out[n, c, Y, X] = 0
                for dy in range(kernel_size):
                    row = Y // scale - r + dy
                    if 0 <= row < low_height:
                        for dx in range(kernel_size):
                            t = dy * kernel_size + dx
                            for X in range(width):
                                out[n, c, Y, X] += masks[n, t, Y, X] * columns[row, X + dx * scale]


# A prange over rows that only zeroes out, then all the work over the batch: still one thread.
@numba.njit(parallel=True)
def rows_zeroed_over_rows_then_the_batch(x, masks, out, kernel_size, scale):
    batch, channels, height, width = out.shape
    low_height = x.shape[2]
    r = (kernel_size - 1) // 2
    pad = r * scale
    for Y0 in numba.prange(height):
        out[:, :, Y0, :] = 0
    for n in numba.prange(batch):
        for c in range(channels):
            columns = np.zeros((low_height, width + 2 * pad), out.dtype)
            for row in range(low_height):
                for X in range(width):
                    columns[row, pad + X] = x[n, c, row, X // scale]
            for Y in range(height):
                for X in range(width):
                    out[n, c, Y, X] = 0
                for dy in range(kernel_size):
                    row = Y // scale - r + dy
                    if 0 <= row < low_height:
                        for dx in range(kernel_size):
                            t = dy * kernel_size + dx
                            for X in range(width):
                                out[n, c, Y, X] += masks[n, t, Y, X] * columns[row, X + dx * scale]


@numba.njit(parallel=True)
def rows_prange_over_the_batch_and_channels(x, masks, out, kernel_size, scale):
    batch, channels, height, width = out.shape
    low_height = x.shape[2]
    r = (kernel_size - 1) // 2
    pad = r * scale
    for n in numba.prange(batch):
        for c in numba.prange(channels):
            columns = np.zeros((low_height, width + 2 * pad), out.dtype)
            for row in range(low_height):
                for X in range(width):
                    columns[row, pad + X] = x[n, c, row, X // scale]
            for Y in range(height):
                for X in range(width):
                    out[n, c, Y, X] = 0
                for dy in range(kernel_size):
                    row = Y // scale - r + dy
                    if 0 <= row < low_height:
                        for dx in range(kernel_size):
                            t = dy * kernel_size + dx
                            for X in range(width):
                                out[n, c, Y, X] += masks[n, t, Y, X] * columns[row, X + dx * scale]


@numba.njit(parallel=True)
def rows_prange_over_the_channels(x, masks, out, kernel_size, scale):
    batch, channels, height, width = out.shape
    low_height = x.shape[2]
    r = (kernel_size - 1) // 2
    pad = r * scale
    for n in range(batch):
        for c in numba.prange(channels):
            columns = np.zeros((low_height, width + 2 * pad), out.dtype)
            for row in range(low_height):
                for X in range(width):
                    columns[row, pad + X] = x[n, c, row, X // scale]
            for Y in range(height):
                for X in range(width):
                    out[n, c, Y, X] = 0
                for dy in range(kernel_size):
                    row = Y // scale - r + dy
                    if 0 <= row < low_height:
                        for dx in range(kernel_size):
                            t = dy * kernel_size + dx
                            begin = min(width, max(0, (r - dx) * scale))
                            end = max(begin, min(width, (x.shape[3] + r - dx) * scale))
                            target, weights = out[n, c, Y, begin:end], masks[n, t, Y, begin:end]
                            values = columns[row, begin + dx * scale:end + dx * scale]
                            for i in range(end - begin):
                                target[i] += weights[i] * values[i]


# One `columns` for all the prange's threads, made before the loop: each plane's rows overwrite another's
# (wrong in every run at 1 x 64 x 64 x 64 on two threads; the small cases can come out right).
@numba.njit(parallel=True)
def rows_sharing_columns(x, masks, out, kernel_size, scale):
    batch, channels, height, width = out.shape
    low_height = x.shape[2]
    r = (kernel_size - 1) // 2
    pad = r * scale
    columns = np.zeros((low_height, width + 2 * pad), np.float32)
    for plane in numba.prange(batch * channels):
        n, c = plane // channels, plane % channels
        for row in range(low_height):
            for X in range(width):
                columns[row, pad + X] = x[n, c, row, X // scale]
        for Y in range(height):
            for X in range(width):
                out[n, c, Y, X] = 0
            for dy in range(kernel_size):
                row = Y // scale - r + dy
                if 0 <= row < low_height:
                    for dx in range(kernel_size):
                        for X in range(width):
                            out[n, c, Y, X] += masks[n, dy * kernel_size + dx, Y, X] * columns[row, X + dx * scale]


@numba.njit
def _scratch_rows(rows, width):
    return np.zeros((rows, width), np.float32)


# The shared scratch made by a helper of the student's, or as a view of a flat allocation: made before the
# prange all the same (the source check knew only a direct allocation; the race showed in 3 of 8 runs).
@numba.njit(parallel=True)
def rows_sharing_columns_from_a_helper(x, masks, out, kernel_size, scale):
    batch, channels, height, width = out.shape
    low_height, r = x.shape[2], (kernel_size - 1) // 2
    columns = _scratch_rows(low_height, width + 2 * r * scale)
    for plane in numba.prange(batch * channels):
        n, c = plane // channels, plane % channels
        for row in range(low_height):
            for X in range(width):
                columns[row, r * scale + X] = x[n, c, row, X // scale]
        for Y in range(height):
            out[n, c, Y, :] = 0
            for t in range(kernel_size * kernel_size):
                row = Y // scale - r + t // kernel_size
                if 0 <= row < low_height:
                    out[n, c, Y, :] += masks[n, t, Y, :] * columns[row, t % kernel_size * scale:][:width]


@numba.njit(parallel=True)
def rows_sharing_columns_made_by_reshape(x, masks, out, kernel_size, scale):
    batch, channels, height, width = out.shape
    low_height, padded = x.shape[2], width + (kernel_size - 1) * scale
    columns = np.zeros(low_height * padded, np.float32).reshape(low_height, padded)
    for plane in numba.prange(batch * channels):
        n, c = plane // channels, plane % channels
        for row in range(low_height):
            columns[row, (kernel_size - 1) // 2 * scale:][:width] = x[n, c, row].repeat(scale)
        for Y in range(height):
            out[n, c, Y, :] = 0
            for dy in range(kernel_size):
                row = Y // scale - (kernel_size - 1) // 2 + dy
                for dx in range(kernel_size):
                    if 0 <= row < low_height:
                        out[n, c, Y, :] += masks[n, dy * kernel_size + dx, Y, :] * columns[row, dx * scale:][:width]


@numba.njit
def _add_inside(target, weights, values, shift):
    for X in range(target.shape[0]):
        if 0 <= X + shift < target.shape[0]:  # the slot test in the helper's loop over X
            target[X] += weights[X] * values[X + shift]


def _rows_handing_out_rows_to(add):
    """A wrong answer that hands each row of out to the compiled helper ``add``, whose loop holds the slot test."""

    @numba.njit(parallel=True)
    def rows_testing_in_a_helper(x, masks, out, kernel_size, scale):
        batch, channels, height, width = out.shape
        low_height, r = x.shape[2], (kernel_size - 1) // 2
        for plane in numba.prange(batch * channels):
            n, c = plane // channels, plane % channels
            columns = np.zeros((low_height, width), np.float32)
            for row in range(low_height):
                columns[row] = x[n, c, row].repeat(scale)
            for Y in range(height):
                out[n, c, Y, :] = 0
                for dy in range(kernel_size):
                    row = Y // scale - r + dy
                    if 0 <= row < low_height:
                        for dx in range(kernel_size):
                            add(out[n, c, Y], masks[n, dy * kernel_size + dx, Y], columns[row], (dx - r) * scale)

    return rows_testing_in_a_helper


# The slot test moved into a helper that writes a row view of out (the structure check read only the
# graded function's source: this passed at 2.5x).
rows_testing_in_a_helper = _rows_handing_out_rows_to(_add_inside)


# The helper given out's row by keyword.
@numba.njit(parallel=True)
def rows_testing_in_a_helper_given_out_by_keyword(x, masks, out, kernel_size, scale):
    batch, channels, height, width = out.shape
    low_height, r = x.shape[2], (kernel_size - 1) // 2
    for plane in numba.prange(batch * channels):
        n, c = plane // channels, plane % channels
        columns = np.zeros((low_height, width), np.float32)
        for row in range(low_height):
            columns[row] = x[n, c, row].repeat(scale)
        for Y in range(height):
            out[n, c, Y, :] = 0
            for dy in range(kernel_size):
                row = Y // scale - r + dy
                if 0 <= row < low_height:
                    for dx in range(kernel_size):
                        _add_inside(target=out[n, c, Y], weights=masks[n, dy * kernel_size + dx, Y],
                                    values=columns[row], shift=(dx - r) * scale)


# The slot test inline, out written through np.expand_dims(out, 0).
@numba.njit(parallel=True)
def rows_testing_through_expand_dims(x, masks, out, kernel_size, scale):
    batch, channels, height, width = out.shape
    low_height, r = x.shape[2], (kernel_size - 1) // 2
    every = np.expand_dims(out, 0)
    for plane in numba.prange(batch * channels):
        n, c = plane // channels, plane % channels
        columns = np.zeros((low_height, width), np.float32)
        for row in range(low_height):
            columns[row] = x[n, c, row].repeat(scale)
        for Y in range(height):
            out[n, c, Y, :] = 0
            for dy in range(kernel_size):
                row = Y // scale - r + dy
                if 0 <= row < low_height:
                    for dx in range(kernel_size):
                        shift = (dx - r) * scale
                        for X in range(width):
                            if 0 <= X + shift < width:
                                every[0, n, c, Y, X] += masks[n, dy * kernel_size + dx, Y, X] * columns[row, X + shift]


# The same helper reached as an attribute of a module of the student's.
_row_helpers = types.ModuleType("student_row_helpers")
_row_helpers.add_inside = _add_inside


@numba.njit(parallel=True)
def rows_testing_in_a_module_helper(x, masks, out, kernel_size, scale):
    batch, channels, height, width = out.shape
    low_height, r = x.shape[2], (kernel_size - 1) // 2
    for plane in numba.prange(batch * channels):
        n, c = plane // channels, plane % channels
        columns = np.zeros((low_height, width), np.float32)
        for row in range(low_height):
            columns[row] = x[n, c, row].repeat(scale)
        for Y in range(height):
            line = out[n, c, Y]
            line[:] = 0
            for dy in range(kernel_size):
                row = Y // scale - r + dy
                if 0 <= row < low_height:
                    for dx in range(kernel_size):
                        _row_helpers.add_inside(line, masks[n, dy * kernel_size + dx, Y], columns[row],
                                                (dx - r) * scale)


# The same, filled through a row view of the shared array.
@numba.njit(parallel=True)
def rows_sharing_columns_through_a_view(x, masks, out, kernel_size, scale):
    batch, channels, height, width = out.shape
    low_height = x.shape[2]
    r = (kernel_size - 1) // 2
    pad = r * scale
    columns = np.empty((low_height, width + 2 * pad), out.dtype)
    for plane in numba.prange(batch * channels):
        n, c = plane // channels, plane % channels
        for row in range(low_height):
            line = columns[row]
            line[:] = 0
            for X in range(width):
                line[pad + X] = x[n, c, row, X // scale]
        for Y in range(height):
            for X in range(width):
                out[n, c, Y, X] = 0
            for dy in range(kernel_size):
                row = Y // scale - r + dy
                if 0 <= row < low_height:
                    for dx in range(kernel_size):
                        for X in range(width):
                            out[n, c, Y, X] += masks[n, dy * kernel_size + dx, Y, X] * columns[row, X + dx * scale]


# Right: one buffer made before the loop, with a plane of its own for each iteration.
@numba.njit(parallel=True)
def rows_columns_per_plane_made_first(x, masks, out, kernel_size, scale):
    batch, channels, height, width = out.shape
    low_height = x.shape[2]
    r = (kernel_size - 1) // 2
    pad = r * scale
    columns = np.zeros((batch * channels, low_height, width + 2 * pad), out.dtype)
    for plane in numba.prange(batch * channels):
        n, c = plane // channels, plane % channels
        mine = columns[plane]
        for row in range(low_height):
            for X in range(width):
                mine[row, pad + X] = x[n, c, row, X // scale]
        for Y in range(height):
            for X in range(width):
                out[n, c, Y, X] = 0
            for dy in range(kernel_size):
                row = Y // scale - r + dy
                if 0 <= row < low_height:
                    for dx in range(kernel_size):
                        begin = min(width, max(0, (r - dx) * scale))
                        end = max(begin, min(width, (x.shape[3] + r - dx) * scale))
                        target, weights = out[n, c, Y, begin:end], masks[n, dy * kernel_size + dx, Y, begin:end]
                        values = mine[row, begin + dx * scale:end + dx * scale]
                        for i in range(end - begin):
                            target[i] += weights[i] * values[i]


# Right: a buffer per thread, made before the loop, taken by numba.get_thread_id().
@numba.njit(parallel=True)
def rows_columns_per_thread(x, masks, out, kernel_size, scale):
    batch, channels, height, width = out.shape
    low_height = x.shape[2]
    r = (kernel_size - 1) // 2
    pad = r * scale
    scratch = np.zeros((numba.get_num_threads(), low_height, width + 2 * pad), out.dtype)
    for plane in numba.prange(batch * channels):
        n, c = plane // channels, plane % channels
        thread = numba.get_thread_id()
        columns = scratch[thread]
        for row in range(low_height):
            for X in range(width):
                columns[row, pad + X] = x[n, c, row, X // scale]
        for Y in range(height):
            for X in range(width):
                out[n, c, Y, X] = 0
            for dy in range(kernel_size):
                row = Y // scale - r + dy
                if 0 <= row < low_height:
                    for dx in range(kernel_size):
                        begin = min(width, max(0, (r - dx) * scale))
                        end = max(begin, min(width, (x.shape[3] + r - dx) * scale))
                        target, weights = out[n, c, Y, begin:end], masks[n, dy * kernel_size + dx, Y, begin:end]
                        values = columns[row, begin + dx * scale:end + dx * scale]
                        for i in range(end - begin):
                            target[i] += weights[i] * values[i]


# Wrong: the shared buffer made by astype.
@numba.njit(parallel=True)
def rows_sharing_columns_made_by_astype(x, masks, out, kernel_size, scale):
    batch, channels, height, width = out.shape
    low_height = x.shape[2]
    r = (kernel_size - 1) // 2
    pad = r * scale
    columns = np.zeros((low_height, width + 2 * pad)).astype(np.float32)
    for plane in numba.prange(batch * channels):
        n, c = plane // channels, plane % channels
        for row in range(low_height):
            for X in range(width):
                columns[row, pad + X] = x[n, c, row, X // scale]
        for Y in range(height):
            for X in range(width):
                out[n, c, Y, X] = 0
            for dy in range(kernel_size):
                row = Y // scale - r + dy
                if 0 <= row < low_height:
                    for dx in range(kernel_size):
                        for X in range(width):
                            out[n, c, Y, X] += masks[n, dy * kernel_size + dx, Y, X] * columns[row, X + dx * scale]


# The last output row of each plane left out of the loop.
@numba.njit(parallel=True)
def rows_missing_the_last_row(x, masks, out, kernel_size, scale):
    batch, channels, height, width = out.shape
    low_height = x.shape[2]
    r = (kernel_size - 1) // 2
    pad = r * scale
    for plane in numba.prange(batch * channels):
        n, c = plane // channels, plane % channels
        columns = np.zeros((low_height, width + 2 * pad), out.dtype)
        for row in range(low_height):
            for X in range(width):
                columns[row, pad + X] = x[n, c, row, X // scale]
        for Y in range(height - 1):
            for X in range(width):
                out[n, c, Y, X] = 0
            for dy in range(kernel_size):
                row = Y // scale - r + dy
                if 0 <= row < low_height:
                    for dx in range(kernel_size):
                        for X in range(width):
                            out[n, c, Y, X] += masks[n, dy * kernel_size + dx, Y, X] * columns[row, X + dx * scale]


# The prange over the channels of the first image only.
@numba.njit(parallel=True)
def rows_first_image_only(x, masks, out, kernel_size, scale):
    channels, height, width = out.shape[1], out.shape[2], out.shape[3]
    low_height = x.shape[2]
    r = (kernel_size - 1) // 2
    pad = r * scale
    for c in numba.prange(channels):
        columns = np.zeros((low_height, width + 2 * pad), out.dtype)
        for row in range(low_height):
            for X in range(width):
                columns[row, pad + X] = x[0, c, row, X // scale]
        for Y in range(height):
            for X in range(width):
                out[0, c, Y, X] = 0
            for dy in range(kernel_size):
                row = Y // scale - r + dy
                if 0 <= row < low_height:
                    for dx in range(kernel_size):
                        for X in range(width):
                            out[0, c, Y, X] += masks[0, dy * kernel_size + dx, Y, X] * columns[row, X + dx * scale]


@pytest.mark.parametrize("right", [rows_fixed_division_inside, rows_in_chunks_of_planes, rows_annotated,
                                   rows_prange_renamed, rows_through_a_view, rows_reusing_a_name,
                                   rows_prange_over_the_channels, rows_zeroed_by_a_prange_over_the_batch,
                                   rows_with_a_closure, rows_columns_per_plane_made_first,
                                   rows_columns_per_thread])
def test_rows_cpu_passes_other_right_answers(right, capsys):
    """A division on values fixed for the whole inner loop vectorises; a
    prange over chunks of planes, or written with annotations or under
    another name, splits the planes as asked; rows written through a view
    of out are rows of out, and a name bound to a row of another array
    first writes that array there."""
    checkers.check_carafe_rows_cpu(right, slow)
    assert "PASS carafe_rows_cpu" in capsys.readouterr().out


@numba.njit(parallel=True)
def rows_zero_padded(x, masks, out, kernel_size, scale):
    # The exercise's earlier answer: every column of the row, the slots outside the map read as padded zeros.
    batch, channels, height, width = out.shape
    low_height = x.shape[2]
    r = (kernel_size - 1) // 2
    pad = r * scale
    for plane in numba.prange(batch * channels):
        n, c = plane // channels, plane % channels
        columns = np.zeros((low_height, width + 2 * pad), out.dtype)
        for row in range(low_height):
            for X in range(width):
                columns[row, pad + X] = x[n, c, row, X // scale]
        for Y in range(height):
            for X in range(width):
                out[n, c, Y, X] = 0
            for dy in range(kernel_size):
                row = Y // scale - r + dy
                if 0 <= row < low_height:
                    for dx in range(kernel_size):
                        for X in range(width):
                            out[n, c, Y, X] += masks[n, dy * kernel_size + dx, Y, X] * columns[row, X + dx * scale]


@numba.njit
def upsampled_rows(x, n, c, scale, width):
    columns = np.empty((x.shape[2], width), x.dtype)
    for row in range(x.shape[2]):
        for X in range(width):
            columns[row, X] = x[n, c, row, X // scale]
    return columns


@numba.njit(parallel=True)
def rows_slots_innermost_through_views(x, masks, out, kernel_size, scale):
    # One output at a time, its slots innermost, every array read through a view of one plane.
    batch, channels, height, width = out.shape
    low_height, low_width = x.shape[2], x.shape[3]
    r = (kernel_size - 1) // 2
    for plane in numba.prange(batch * channels):
        n, c = plane // channels, plane % channels
        plane_out, plane_masks, plane_x = out[n, c], masks[n], x[n, c]
        for Y in range(height):
            for X in range(width):
                total = np.float32(0)
                for dy in range(kernel_size):
                    row = Y // scale - r + dy
                    if 0 <= row < low_height:
                        for dx in range(kernel_size):
                            col = X // scale - r + dx
                            if 0 <= col < low_width:
                                total += plane_masks[dy * kernel_size + dx, Y, X] * plane_x[row, col]
                plane_out[Y, X] = total


def _rows_by_slot_ranges(row_test=True, begin_shift=0, end_shift=0):
    """The lesson's answer (07.5), with its window-row test left out or its column range moved."""
    @numba.njit(parallel=True)
    def rows_by_slot_ranges(x, masks, out, kernel_size, scale):
        batch, channels, height, width = out.shape
        low_height, low_width = x.shape[2], x.shape[3]
        r = (kernel_size - 1) // 2
        for plane in numba.prange(batch * channels):
            n, c = plane // channels, plane % channels
            columns = upsampled_rows(x, n, c, scale, width)
            for Y in range(height):
                for X in range(width):
                    out[n, c, Y, X] = 0
                for dy in range(kernel_size):
                    row = Y // scale - r + dy
                    if 0 <= row < low_height or not row_test:
                        for dx in range(kernel_size):
                            begin = min(width, max(0, (r - dx) * scale + begin_shift))
                            end = max(begin, min(width, (low_width + r - dx) * scale + end_shift))
                            shift = (dx - r) * scale
                            target = out[n, c, Y, begin:end]
                            weights = masks[n, dy * kernel_size + dx, Y, begin:end]
                            values = columns[row, begin + shift:end + shift]
                            for i in range(end - begin):
                                target[i] += weights[i] * values[i]
    return rows_by_slot_ranges


#: The lesson's answer, `columns` unpadded and made by a compiled helper of its own.
rows_from_a_compiled_helper = _rows_by_slot_ranges()


@pytest.mark.parametrize("wrong, message", [
    (_rows_by_slot_ranges(row_test=False), "(?s)raises IndexError: index 3 is out of bounds for axis 0 with size 3.*"
                                           "Hint: a row index past the first axis: a window row outside the map"),
    (_rows_by_slot_ranges(begin_shift=1), "only the columns near the left and right sides are wrong: check begin "
                                          "and end"),
    # Compiled, it reads past `columns`: whatever lies there, a NaN or a number (then only the side columns differ).
    (_rows_by_slot_ranges(end_shift=1), "(?s)(only the columns near the left and right sides are wrong|is NaN\\.).*"
                                        "Hint: check the size of what you index there: the `columns` rows are W long"),
], ids=["no row test", "begin one late", "end one past"])
def test_rows_cpu_by_slot_ranges_mistakes_are_named(wrong, message):
    with pytest.raises(CheckFailed, match=message):
        checkers.check_carafe_rows_cpu(wrong, slow)


def test_rows_cpu_zero_padded_is_told_to_skip_the_slots_outside_the_map():
    with pytest.raises(CheckFailed, match="(?s)masks nan at the slots outside the map.*skip the slots outside the map, "
                                          "in rows \\(the window-row test\\) and in columns"):
        checkers.check_carafe_rows_cpu(rows_zero_padded, slow)


def test_rows_cpu_takes_a_compiled_helper(capsys):
    """Run as Python for the access order, the function's compiled helpers run as Python too."""
    checkers.check_carafe_rows_cpu(rows_from_a_compiled_helper, slow)
    assert "PASS carafe_rows_cpu" in capsys.readouterr().out


def test_accesses_through_views_are_recorded():
    """A view of a recorded array records its accesses at their offsets in the whole array, so a loop order
    written through views is measured as one written with the full indices."""
    with pytest.raises(CheckFailed, match="of the accesses to (x|masks) leave the cache line"):
        checkers.check_carafe_rows_cpu(rows_slots_innermost_through_views, slow)
    x, masks = performance.carafe_inputs(1, 2, 3, 16, 3, 2, 1, seed=6)
    record = performance.record_function(rows, x, masks, np.zeros((1, 2, 6, 32), np.float32), 3, 2)
    stored = sorted(record.stores_per_element("out"))
    assert stored == list(range(2 * 6 * 32))  # every element of out, through the views of its rows


def _read_some(a):
    total = a[0, 0, -1] + a[1][2][1:][0]  # a negative index; a view of a view
    total += a[0, 0, np.array([3, 1])][0] + a[a > 20][0]  # copies: not the array's own accesses
    column = a[:, :, 1]
    return total + column[1, 2] + (column > 5).sum()  # a strided view; arithmetic on a view


def test_the_record_follows_views_and_leaves_copies_out():
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    record = performance.record_function(_read_some, a)
    column = [1, 5, 9, 13, 17, 21]  # a[:, :, 1]
    # a > 20 and column > 5 read every element of a and of column; the copies' own reads are not a's
    assert [(entry[3], entry[5]) for entry in record.log] == (
        [("load", 3), ("load", 21)] + [("load", i) for i in range(24)] + [("load", 21)]
        + [("load", i) for i in column])


def _by_slices(out, masks):
    for Y in range(2):
        out[0, Y, :] = 0
        out[0, Y, 1:3] += masks[0, Y, 1:3] * 2
    out[0, :, 0] = masks[0, :, 3]  # a column


def test_slice_assignments_and_array_expressions_record_every_element():
    """What NumPy's loops touch for a slice assignment, an array expression
    and an in-place one (``line[a:b] += w * v``): a wrong loop order written
    with slices shows in the record as one written with elements does."""
    out, masks = np.zeros((1, 2, 4), np.float32), np.arange(8, dtype=np.float32).reshape(1, 2, 4)
    record = performance.record_function(_by_slices, out, masks)
    expected = []
    for Y in range(2):
        row = 4 * Y
        expected += [("out", "store", row + i) for i in range(4)]
        expected += [("masks", "load", row + 1), ("masks", "load", row + 2), ("out", "load", row + 1),
                     ("out", "load", row + 2), ("out", "store", row + 1), ("out", "store", row + 2)]
    expected += [("masks", "load", 3), ("masks", "load", 7), ("out", "store", 0), ("out", "store", 4)]
    assert [entry[2:4] + (entry[5],) for entry in record.log] == expected
    assert out.tolist() == [[[3, 2, 4, 0], [7, 10, 12, 0]]]

    def by_columns(a):
        for X in range(a.shape[1]):
            a[:, X] += 1

    def by_rows(a):
        for Y in range(a.shape[0]):
            a[Y, :] += 1

    grid = np.zeros((16, 64), np.float32)
    assert performance.record_function(by_columns, grid).line_switches("a") > 0.9
    assert performance.record_function(by_rows, grid).line_switches("a") < 0.1

    def through_numpy(a):
        row = a[1, 1:3]
        np.add(row, 1, row)  # a ufunc writing into a view
        total = np.ones(2, np.float32) * a[0, :2]  # a plain array on the left
        a[0, 0, ...] = total[0]  # a zero-dimensional region

    record = performance.record_function(through_numpy, np.zeros((2, 4), np.float32))
    assert [entry[3:4] + (entry[5],) for entry in record.log] == [
        ("load", 5), ("load", 6), ("store", 5), ("store", 6), ("load", 0), ("load", 1), ("store", 0)]


def _through_transposes_and_reshapes(a):
    a.T[1, 0] = 1  # a[0, 1]
    a.reshape(-1)[5] += 1  # a[1, 1]
    total = np.transpose(a)[2, 0] + a.swapaxes(0, 1)[0, 1]  # a[0, 2], a[1, 0]
    total += np.ravel(a)[4] + a.ravel()[3]  # a[1, 0], a[0, 3]
    total += a.T.copy()[0, 0] + a.astype(np.float64)[0, 0]  # copies: not a's accesses
    total += np.concatenate([a, a.T.T])[0, 0]  # recorded arrays in a list: a copy too
    return total + a.T[::-1, 1][0]  # a view of a view, reversed: a[1, 3]


def _into_out_and_other_dtypes(a):
    np.clip(a[0], 0, 1, out=a[0])  # stores through out= of a NumPy function (not a ufunc)
    return a.view(np.float64)[1, 0]  # the first float64 of a's second row: a[1, 0] and a[1, 1], from offset 4


def test_the_record_notes_out_arguments_and_views_of_another_dtype():
    record = performance.record_function(_into_out_and_other_dtypes, np.zeros((2, 4), np.float32))
    assert [entry[3:4] + (entry[5],) for entry in record.log] == [
        ("store", 0), ("store", 1), ("store", 2), ("store", 3), ("load", 4)]


def test_the_record_follows_transposed_and_reshaped_views():
    """A view made by an attribute or a NumPy function (a.T, a.reshape(-1),
    np.transpose(a)) is recorded at its offsets in a: a loop order written
    over a transposed plane or with flat indices shows as what it is."""
    record = performance.record_function(_through_transposes_and_reshapes, np.zeros((2, 4), np.float32))
    assert [entry[3:4] + (entry[5],) for entry in record.log] == [
        ("store", 1), ("load", 5), ("store", 5), ("load", 2), ("load", 4), ("load", 4), ("load", 3), ("load", 7)]


def _through_flat_of_strided_views(a):
    column = a[:, 1]  # not C-contiguous: a[0, 1], a[1, 1]
    column.flat[1] = 7  # a[1, 1]
    total = a.T.flat[1] + a.T.flat[-1]  # a.T in C order: a[1, 0], then a[1, 3]
    a[:, ::2].flat[1:3] = 5  # a[0, 2], a[1, 0]
    total += a[:, 2:].flat[::3].sum()  # a copy of a[0, 2] and a[1, 3]
    for value in a[::-1, 3].flat:  # a[1, 3], a[0, 3]
        total += value
    return total + next(a.T.flat)  # a[0, 0]


def test_the_record_follows_flat_of_views_that_are_not_c_contiguous():
    # a.flat of a view that is not C-contiguous (a column, a transpose) went to NumPy's flatiter unrecorded:
    # a loop order written through it left no trace in the record.
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    assert _through_flat_of_strided_views(a.copy()) == 4 + 7 + 5 + 7 + 7 + 3 + 0  # as NumPy's own flat gives
    record = performance.record_function(_through_flat_of_strided_views, a)
    assert [entry[3:4] + (entry[5],) for entry in record.log] == [
        ("store", 5), ("load", 4), ("load", 7), ("store", 2), ("store", 4), ("load", 2), ("load", 7), ("load", 7),
        ("load", 3), ("load", 0)]
    line = _through_flat_of_strided_views.__code__.co_firstlineno
    assert [entry[4] - line for entry in record.log] == [2, 3, 3, 4, 4, 5, 5, 6, 6, 8]  # the lines that made them
    assert a.tolist() == [[0, 1, 5, 3], [5, 7, 6, 7]]  # the stores reached the array


@numba.njit
def _first(v):
    return v[0]


def _helper_in_a_closure():
    @numba.njit
    def second(v):
        return v[1]

    @numba.njit
    def both(v, *, scale=2.0):
        return scale * (_first(v) + second(v)) + sum([_first(v) for _ in range(2)])
    return both


def test_compiled_helpers_run_as_python_from_globals_closures_and_comprehensions():
    a = np.arange(4, dtype=np.float32)
    record = performance.record_function(_helper_in_a_closure(), a)
    assert [entry[5] for entry in record.log] == [0, 1, 0, 0]


_helpers = types.ModuleType("student_helpers")  # a student's own module of compiled helpers
_helpers.first = _first


@numba.njit
def _through_a_module(v):
    return _helpers.first(v) + v[2]


def test_compiled_helpers_reached_as_module_attributes_run_as_python():
    a = np.arange(4, dtype=np.float32)
    assert _through_a_module(a) == 2.0  # Numba compiles the call as written
    record = performance.record_function(_through_a_module, a)
    assert [entry[5] for entry in record.log] == [0, 2]
    assert _helpers.first is _first  # the module itself is left as it was


_package = types.ModuleType("student_package")  # a package holding the module of helpers
_package.helpers = _helpers


@numba.njit
def _through_a_package(v):
    return _package.helpers.first(v) + v[3]


def test_compiled_helpers_reached_through_a_package_run_as_python():
    a = np.arange(4, dtype=np.float32)
    record = performance.record_function(_through_a_package, a)
    assert [entry[5] for entry in record.log] == [0, 3]
    assert _package.helpers is _helpers and _helpers.first is _first


@numba.njit
def _upsampled_rows(x, n, c, scale, width, pad):
    columns = np.zeros((x.shape[2], width + 2 * pad), x.dtype)
    for row in range(x.shape[2]):
        for X in range(width):
            columns[row, pad + X] = x[n, c, row, X // scale]
    return columns


# Right answers that write each output row a slice at a time: the slot loops around the slice hold the tests.
@numba.njit(parallel=True)
def rows_by_slices_slot_test_outside(x, masks, out, kernel_size, scale):
    batch, channels, height, width = out.shape
    low_height, low_width = x.shape[2], x.shape[3]
    r = (kernel_size - 1) // 2
    for plane in numba.prange(batch * channels):
        n, c = plane // channels, plane % channels
        columns = _upsampled_rows(x, n, c, scale, width, r * scale)
        for Y in range(height):
            out[n, c, Y, :] = 0
            for dx in range(kernel_size):
                begin = min(width, max(0, (r - dx) * scale))
                end = max(begin, min(width, (low_width + r - dx) * scale))
                at = begin + dx * scale
                for dy in range(kernel_size):
                    row = Y // scale - r + dy
                    if 0 <= row < low_height:
                        out[n, c, Y, begin:end] += (masks[n, dy * kernel_size + dx, Y, begin:end]
                                                    * columns[row, at:at + end - begin])


@numba.njit(parallel=True)
def rows_by_ufunc_into_a_view(x, masks, out, kernel_size, scale):
    batch, channels, height, width = out.shape
    low_height, low_width = x.shape[2], x.shape[3]
    r = (kernel_size - 1) // 2
    for plane in numba.prange(batch * channels):
        n, c = plane // channels, plane % channels
        columns = _upsampled_rows(x, n, c, scale, width, r * scale)
        for Y in range(height):
            out[n, c, Y, :] = 0
            for dy in range(kernel_size):
                row = Y // scale - r + dy
                if 0 <= row < low_height:
                    for dx in range(kernel_size):
                        begin = min(width, max(0, (r - dx) * scale))
                        end = max(begin, min(width, (low_width + r - dx) * scale))
                        target = out[n, c, Y, begin:end]
                        products = masks[n, dy * kernel_size + dx, Y, begin:end] * columns[
                            row, begin + dx * scale:end + dx * scale]
                        np.add(target, products, target)


@pytest.mark.parametrize("answer", [rows_by_slices_slot_test_outside, rows_by_ufunc_into_a_view])
def test_rows_cpu_passes_right_answers_written_with_slices(answer, capsys):
    # A test in the slot loops does not stop the slice's own loop from vectorising (it was named as one
    # that does); np.add into a view of out is recorded (the record raised TypeError on it).
    assert checkers.check_carafe_rows_cpu(answer, slow) >= 1.5
    assert "PASS carafe_rows_cpu" in capsys.readouterr().out


# Loop orders written over views that are not slices: a transposed plane (its [X, Y] is out's [Y, X]) and
# flat indices into reshaped arrays. The record follows both views into the arrays' memory.
@numba.njit(parallel=True)
def rows_columns_through_transposes(x, masks, out, kernel_size, scale):
    # Column order written over transposed planes: plane[X, Y] is out[n, c, Y, X].
    batch, channels, height, width = out.shape
    low_height, low_width = x.shape[2], x.shape[3]
    r = (kernel_size - 1) // 2
    for plane in numba.prange(batch * channels):
        n, c = plane // channels, plane % channels
        target, source, weights = out[n, c].T, x[n, c].T, masks[n].transpose(0, 2, 1)
        for X in range(width):
            for Y in range(height):
                total = np.float32(0)
                for dy in range(kernel_size):
                    row = Y // scale - r + dy
                    if 0 <= row < low_height:
                        for dx in range(kernel_size):
                            col = X // scale - r + dx
                            if 0 <= col < low_width:
                                total += weights[dy * kernel_size + dx, X, Y] * source[col, row]
                target[X, Y] = total


@numba.njit(parallel=True)
def rows_columns_by_flat_indices(x, masks, out, kernel_size, scale):
    # Column order written with flat indices into reshaped arrays.
    batch, channels, height, width = out.shape
    low_height, low_width = x.shape[2], x.shape[3]
    area = kernel_size * kernel_size
    r = (kernel_size - 1) // 2
    flat_out, flat_x, flat_masks = out.reshape(-1), x.reshape(-1), masks.reshape(-1)
    for plane in numba.prange(batch * channels):
        n, c = plane // channels, plane % channels
        for X in range(width):
            for Y in range(height):
                total = np.float32(0)
                for dy in range(kernel_size):
                    row = Y // scale - r + dy
                    if 0 <= row < low_height:
                        for dx in range(kernel_size):
                            col = X // scale - r + dx
                            if 0 <= col < low_width:
                                weight = flat_masks[((n * area + dy * kernel_size + dx) * height + Y) * width + X]
                                total += weight * flat_x[(plane * low_height + row) * low_width + col]
                flat_out[(plane * height + Y) * width + X] = total



@numba.njit(parallel=True)
def rows_columns_through_flat(x, masks, out, kernel_size, scale):
    # The same column order, every array read and written through .flat (recorded as nothing before).
    batch, channels, height, width = out.shape
    low_height, low_width = x.shape[2], x.shape[3]
    area = kernel_size * kernel_size
    r = (kernel_size - 1) // 2
    for plane in numba.prange(batch * channels):
        n, c = plane // channels, plane % channels
        for X in range(width):
            for Y in range(height):
                total = np.float32(0)
                for dy in range(kernel_size):
                    row = Y // scale - r + dy
                    if 0 <= row < low_height:
                        for dx in range(kernel_size):
                            col = X // scale - r + dx
                            if 0 <= col < low_width:
                                weight = masks.flat[((n * area + dy * kernel_size + dx) * height + Y) * width + X]
                                total += weight * x.flat[(plane * low_height + row) * low_width + col]
                out.flat[(plane * height + Y) * width + X] = total


@numba.njit(parallel=True)
def rows_columns_through_flat_of_transposes(x, masks, out, kernel_size, scale):
    # The column order again, every array read and written through .flat of a transposed view, which is not
    # C-contiguous (recorded as nothing before): flat index X * H + Y of out[n, c].T is out[n, c, Y, X].
    batch, channels, height, width = out.shape
    low_height, low_width = x.shape[2], x.shape[3]
    area = kernel_size * kernel_size
    r = (kernel_size - 1) // 2
    for plane in numba.prange(batch * channels):
        n, c = plane // channels, plane % channels
        target, source, weights = out[n, c].T, x[n, c].T, masks[n].transpose(0, 2, 1)
        for X in range(width):
            for Y in range(height):
                total = np.float32(0)
                for dy in range(kernel_size):
                    row = Y // scale - r + dy
                    if 0 <= row < low_height:
                        for dx in range(kernel_size):
                            col = X // scale - r + dx
                            if 0 <= col < low_width:
                                weight = weights.flat[((dy * kernel_size + dx) * width + X) * height + Y]
                                total += weight * source.flat[col * low_height + row]
                target.flat[X * height + Y] = total


# The slot test inline, out written through out.flat (invisible to the structure check before).
@numba.njit(parallel=True)
def rows_testing_through_flat(x, masks, out, kernel_size, scale):
    batch, channels, height, width = out.shape
    low_height, low_width = x.shape[2], x.shape[3]
    r = (kernel_size - 1) // 2
    for plane in numba.prange(batch * channels):
        n, c = plane // channels, plane % channels
        for Y in range(height):
            line = (plane * height + Y) * width
            for X in range(width):
                out.flat[line + X] = 0
            for dy in range(kernel_size):
                row = Y // scale - r + dy
                if 0 <= row < low_height:
                    for dx in range(kernel_size):
                        for X in range(width):
                            col = X // scale - r + dx
                            if 0 <= col < low_width:
                                out.flat[line + X] += masks[n, dy * kernel_size + dx, Y, X] * x[n, c, row, col]


@numba.njit
def _add_row(line, weights, values, shift):
    _add_inside(line, weights, values, shift)


# The slot test two helpers deep: the graded function hands out's row to _add_row, which hands it to
# _add_inside (the structure check followed one helper only).
rows_testing_in_a_helpers_helper = _rows_handing_out_rows_to(_add_row)



@numba.njit(parallel=True)
def rows_reading_x_by_next_on_flat(x, masks, out, kernel_size, scale):
    # Right: the columns built by next() on x[n, c].flat, which goes on from where it is (the record's .flat
    # was no iterator: the checker raised TypeError).
    batch, channels, height, width = out.shape
    low_height, low_width = x.shape[2], x.shape[3]
    r = (kernel_size - 1) // 2
    pad = r * scale
    for plane in numba.prange(batch * channels):
        n, c = plane // channels, plane % channels
        columns = np.zeros((low_height, width + 2 * pad), out.dtype)
        values_in = x[n, c].flat
        for row in range(low_height):
            for col in range(low_width):
                value = next(values_in)
                for j in range(scale):
                    columns[row, pad + col * scale + j] = value
        for Y in range(height):
            for X in range(width):
                out[n, c, Y, X] = 0
            for dy in range(kernel_size):
                row = Y // scale - r + dy
                if 0 <= row < low_height:
                    for dx in range(kernel_size):
                        begin = min(width, max(0, (r - dx) * scale))
                        end = max(begin, min(width, (low_width + r - dx) * scale))
                        target, weights = out[n, c, Y, begin:end], masks[n, dy * kernel_size + dx, Y, begin:end]
                        values = columns[row, begin + dx * scale:end + dx * scale]
                        for i in range(end - begin):
                            target[i] += weights[i] * values[i]


@numba.njit
def _row_of(array, n, c, Y):
    return array[n, c, Y]


# The slot test inline, out's row from a helper that returns it (passed at 1.5x, on its timing alone).
@numba.njit(parallel=True)
def rows_testing_in_a_row_a_helper_returns(x, masks, out, kernel_size, scale):
    batch, channels, height, width = out.shape
    low_height, low_width = x.shape[2], x.shape[3]
    r = (kernel_size - 1) // 2
    for plane in numba.prange(batch * channels):
        n, c = plane // channels, plane % channels
        for Y in range(height):
            line = _row_of(out, n, c, Y)
            for X in range(width):
                line[X] = 0
            for dy in range(kernel_size):
                row = Y // scale - r + dy
                if 0 <= row < low_height:
                    for dx in range(kernel_size):
                        for X in range(width):
                            col = X // scale - r + dx
                            if 0 <= col < low_width:
                                line[X] += masks[n, dy * kernel_size + dx, Y, X] * x[n, c, row, col]



# Right: the same helper, and the slot's columns worked out before a loop with no test.
@numba.njit(parallel=True)
def rows_in_a_row_a_helper_returns(x, masks, out, kernel_size, scale):
    batch, channels, height, width = out.shape
    low_height, low_width = x.shape[2], x.shape[3]
    r = (kernel_size - 1) // 2
    for plane in numba.prange(batch * channels):
        n, c = plane // channels, plane % channels
        columns = np.zeros((low_height, width + 2 * r * scale), out.dtype)
        for row in range(low_height):
            for X in range(width):
                columns[row, r * scale + X] = x[n, c, row, X // scale]
        for Y in range(height):
            line = _row_of(out, n, c, Y)
            for X in range(width):
                line[X] = 0
            for dy in range(kernel_size):
                row = Y // scale - r + dy
                if 0 <= row < low_height:
                    for dx in range(kernel_size):
                        begin = min(width, max(0, (r - dx) * scale))
                        end = max(begin, min(width, (low_width + r - dx) * scale))
                        weights, values = masks[n, dy * kernel_size + dx, Y], columns[row]
                        for X in range(begin, end):
                            line[X] += weights[X] * values[X + dx * scale]

# The same row handed on to the helper with the slot test.
@numba.njit(parallel=True)
def rows_testing_in_a_helper_given_a_row_a_helper_returns(x, masks, out, kernel_size, scale):
    batch, channels, height, width = out.shape
    low_height, r = x.shape[2], (kernel_size - 1) // 2
    for plane in numba.prange(batch * channels):
        n, c = plane // channels, plane % channels
        columns = np.zeros((low_height, width), np.float32)
        for row in range(low_height):
            columns[row] = x[n, c, row].repeat(scale)
        for Y in range(height):
            line = _row_of(out, n, c, Y)
            line[:] = 0
            for dy in range(kernel_size):
                row = Y // scale - r + dy
                if 0 <= row < low_height:
                    for dx in range(kernel_size):
                        _add_inside(line, masks[n, dy * kernel_size + dx, Y], columns[row], (dx - r) * scale)

@numba.njit(parallel=True)
def rows_by_flat_indices(x, masks, out, kernel_size, scale):
    # The row order with flat indices into reshaped out and masks, as the library's own loops write it: right.
    batch, channels, height, width = out.shape
    low_height = x.shape[2]
    area = kernel_size * kernel_size
    r = (kernel_size - 1) // 2
    pad = r * scale
    flat_out, flat_masks = out.reshape(-1), masks.reshape(-1)
    for plane in numba.prange(batch * channels):
        n, c = plane // channels, plane % channels
        columns = np.zeros((low_height, width + 2 * pad), out.dtype)
        for row in range(low_height):
            for X in range(width):
                columns[row, pad + X] = x[n, c, row, X // scale]
        for Y in range(height):
            line = (plane * height + Y) * width
            for X in range(width):
                flat_out[line + X] = 0
            for dy in range(kernel_size):
                row = Y // scale - r + dy
                if 0 <= row < low_height:
                    for dx in range(kernel_size):
                        begin = min(width, max(0, (r - dx) * scale))
                        end = max(begin, min(width, (x.shape[3] + r - dx) * scale))
                        weights = ((n * area + dy * kernel_size + dx) * height + Y) * width
                        values = columns[row]
                        for X in range(begin, end):
                            flat_out[line + X] += flat_masks[weights + X] * values[X + dx * scale]


@pytest.mark.parametrize("right", [rows_by_flat_indices, rows_in_a_row_a_helper_returns])
def test_rows_cpu_takes_a_right_answer_left_scalar_but_for_its_speed(right, capsys):
    """Right answers whose inner loop runs over range(begin, end), which LLVM leaves scalar: every rule but
    the speed accepts them (the speed comes last), and their speed against the slow loop order depends on the
    machine: 1.1 and 1.5 times on a 2-core Xeon (AVX-512), above 1.5 on a 2-core AMD EPYC. Either they
    pass, or the speed alone fails them, with the hint that names the scalar loop."""
    try:
        speedup = checkers.check_carafe_rows_cpu(right, slow)
    except CheckFailed as failure:
        assert re.search(r"less than 1\.5 times faster\.\nHint: .*counted from 0 over views.*range\(begin, end\).*"
                         r"scalar", str(failure)), failure
    else:
        assert speedup >= 1.5 and "PASS carafe_rows_cpu" in capsys.readouterr().out
    # With no speed asked, it passes: the speed is the only rule it can fail.
    checkers.check_carafe_rows_cpu(right, slow, min_speedup=0)


def test_rows_cpu_passes_a_right_answer_reading_x_by_next_on_flat(capsys):
    assert checkers.check_carafe_rows_cpu(rows_reading_x_by_next_on_flat, slow) >= 1.5
    assert "PASS carafe_rows_cpu" in capsys.readouterr().out


def test_rows_cpu_passes_the_right_answer(capsys):
    speedup = checkers.check_carafe_rows_cpu(rows, slow)
    output = capsys.readouterr().out
    assert "PASS carafe_rows_cpu" in output
    assert speedup >= 1.5


@pytest.mark.parametrize("wrong, message", [
    (slow, "leave the cache line"),
    (planes_slots_innermost, "leave the cache line"),
    (rows_columns_through_transposes, "leave the cache line"),  # before, only the timing caught these two
    (rows_columns_by_flat_indices, "leave the cache line"),
    (rows_columns_through_flat, "leave the cache line"),
    (rows_columns_through_flat_of_transposes, "leave the cache line"),  # caught by its timing alone before
    (rows_not_zeroed, "added into but never set.*\n.*zero each output row"),
    (rows_missing_the_last_row, "(?s)out\\(0, 0, 5, 0\\) was never written.*no iteration of your loops reached "
                                "it.*range\\(H\\), not range\\(H - 1\\)"),
    (rows_first_image_only, "(?s)out\\(1, 0, 0, 0\\) was never written.*reached it.*every n < 2"),
    (rows_sharing_columns, "(?s)`columns` is made once, before the prange over `plane`.*a race.*inside the prange"),
    (rows_sharing_columns_through_a_view, "`columns` is made once, before the prange over `plane`.*a race"),
    (rows_sharing_columns_made_by_astype, "`columns` is made once, before the prange over `plane`.*a race"),
    (rows_sharing_columns_from_a_helper, "`columns` is made once, before the prange over `plane`.*a race"),
    (rows_sharing_columns_made_by_reshape, "`columns` is made once, before the prange over `plane`.*a race"),
    (rows_in_python, "numba.njit"),
    (rows_racing_over_dx, "prange over `dx` .* a race"),
    (rows_racing_over_dx_through_a_view, "prange over `dx` .* a race"),
    (rows_on_one_core, "no loop is split over the cores"),
    (rows_padded_too_little, "(?s)values wrong.*raises IndexError.*the `columns` rows are W long"),
    (rows_padded_too_little_reading_nan, "(?s)values wrong.*is NaN.*raises IndexError.*the `columns` rows are W long"),
    (rows_prange_over_x, "prange over `X` sits inside other loops"),
    (rows_prange_over_the_batch, "prange over `n`, which does most of the work, has 1 iteration.*one thread"),
    (rows_prange_over_the_batch_and_channels, "prange over `n`, which does most of the work, has 1 iteration"),
    (rows_zeroed_over_rows_then_the_batch, "prange over `n`, which does most of the work, has 1 iteration"),
    (rows_prange_not_parallel, "only in a function compiled with @numba.njit\\(parallel=True\\)"),
    (rows_testing_inside, "has a test that changes from one iteration to the next"),
    (rows_testing_through_a_view, "has a test that changes from one iteration to the next"),
    (rows_testing_through_enumerate, "has a test that changes from one iteration to the next"),
    (rows_testing_through_unpacked_views, "has a test that changes from one iteration to the next"),
    (rows_testing_in_a_helper, "writes out \\(in your helper `_add_inside`, where it is `target`\\), over `X`, has a "
                               "test"),
    (rows_testing_in_a_helper_given_out_by_keyword, "writes out \\(in your helper `_add_inside`, where it is "
                                                    "`target`\\), over `X`, has a test"),  # passed before
    (rows_testing_through_expand_dims, "the innermost loop that writes out, over `X`, has a test"),  # passed before
    (rows_testing_in_a_module_helper, "writes out \\(in your helper `_add_inside`, where it is `target`\\), over `X`, "
                                      "has a test"),
    (rows_testing_in_a_helpers_helper, "writes out \\(in your helper `_add_inside`, called through `_add_row`, where "
                                       "it is `target`\\), over `X`, has a test"),
    (rows_testing_through_flat, "the innermost loop that writes out, over `X`, has a test"),
    (rows_testing_in_a_row_a_helper_returns, "the innermost loop that writes out, over `X`, has a test"),
    (rows_testing_in_a_helper_given_a_row_a_helper_returns, "writes out \\(in your helper `_add_inside`, where it is "
                                                            "`target`\\), over `X`, has a test"),
])
def test_rows_cpu_catches_wrong_answers(wrong, message):
    with pytest.raises(CheckFailed, match=message):
        checkers.check_carafe_rows_cpu(wrong, slow)


@pytest.mark.parametrize("source, writes", [
    ("line = out[n, c, Y]\nline[X] = 0", True),
    ("flat = np.ravel(out)\nrow = flat.reshape(4, -1)[1]\nrow[X] = 0", True),
    ("for line in out[n, c]:\n    line[X] = 0", True),
    ("line = out[n].copy()\nline[X] = 0", False),
    ("line = out[n, c, Y]\nline = columns[row]\nline[X] = 0", False),
    ("line = columns[row]\nline = line[2:]\nline[X] = 0", False),
    ("line = out[n, c, Y]\nline = line[2:]\nline[X] = 0", True),
    ("out.flat[X] = 0", True),
    ("line = out[n, c]\nline.flat[X] = 0", True),
    ("line = out[n].copy()\nline.flat[X] = 0", False),
])
def test_stores_through_views_are_told_apart(source, writes):
    """Which stores write out, read from the source: through views of it, and
    not through copies or names bound to another array since."""
    definition = ast.parse(source)
    bindings = performance._bindings(definition)
    store = [node for node in ast.walk(definition) if isinstance(node, ast.Assign)
             and isinstance(node.targets[0], ast.Subscript)][-1]
    assert performance._writes_array(store.targets[0], "out", bindings) is writes


def test_line_switches_tell_strided_from_contiguous():
    x, masks = performance.carafe_inputs(1, 2, 3, 16, 3, 2, 1, seed=6)
    out = np.zeros((1, 2, 6, 32), np.float32)
    contiguous = performance.record_function(rows, x, masks, out, 3, 2)
    strided = performance.record_function(slow, x, masks, out, 3, 2)
    for name in ("masks", "out"):
        assert contiguous.line_switches(name) < 0.15 < 0.9 < strided.line_switches(name)


# --------------------------------------------------------------------------
# The stored GPU figures
# --------------------------------------------------------------------------


def test_without_a_reference_run_the_lesson_says_so_and_how_to_make_one(tmp_path):
    text = performance.gpu_reference_summary(tmp_path / "gpu_reference.csv")
    assert text.startswith("No reference GPU run is committed yet")
    assert performance.GPU_REFERENCE_COMMAND in text


def test_a_reference_run_is_shown_with_its_gpu_and_labelled_as_stored(tmp_path):
    path = tmp_path / "gpu_reference.csv"
    path.write_text("gpu,case,ours,ours_ms,baseline,baseline_ms,ratio,effective_gbs,copy_gbs,fraction_of_copy,note\n"
                    "NVIDIA H200,carafe_forward,ul.carafe,0.210,unfold,0.300,0.70,1200,4000,0.30,\n"
                    "NVIDIA H200,nearest_forward,ul.interpolate,0.030,F.interpolate,0.040,0.75,,,,small\n",
                    encoding="utf-8")
    text = performance.gpu_reference_summary(path)
    first, header, *rows = text.split("\n")
    assert first.startswith("STORED FIGURES from a real-GPU run on NVIDIA H200")
    assert "not measured on this machine" in first
    assert header.split() == list(performance.GPU_REFERENCE_COLUMNS)
    assert rows[0].split() == ["carafe_forward", "ul.carafe", "0.210", "unfold", "0.300", "0.70", "0.30"]
    assert rows[1].split() == ["nearest_forward", "ul.interpolate", "0.030", "F.interpolate", "0.040", "0.75"]


def test_other_columns_are_shown_whole(tmp_path):
    path = tmp_path / "gpu_reference.csv"
    path.write_text("# a comment line\ndevice,op,ms\nNVIDIA H100 80GB HBM3,carafe,0.2\n", encoding="utf-8")
    text = performance.gpu_reference_summary(path)
    assert text.split("\n")[0].startswith("STORED FIGURES from a real-GPU run on NVIDIA H100 80GB HBM3")
    assert text.split("\n")[1:] == ["op      ms", "carafe  0.2"]


def test_a_reference_run_that_names_no_gpu_is_refused(tmp_path):
    path = tmp_path / "gpu_reference.csv"
    path.write_text("op,ours_ms\ncarafe,0.2\n", encoding="utf-8")
    with pytest.raises(ValueError, match="names the GPU"):
        performance.gpu_reference_summary(path)

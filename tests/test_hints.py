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
from upsamplelib.checkers import bilinear as plain_checkers

simulator_only = pytest.mark.skipif(not backend.SIMULATOR, reason="only the simulator reports out-of-bounds indices")


def hint_of(check, *args, **kwargs) -> str:
    """The message of the CheckFailed that ``check(*args)`` raises."""
    with pytest.raises(checkers.CheckFailed) as failure:
        check(*args, **kwargs)
    return str(failure.value)


@cuda.jit
def _read_first_element(source, target):
    if cuda.grid(1) == 0:
        target[0] = source[0, 0, 0, 0]


def hand_to_a_kernel(tensor):
    """Launch a kernel on ``tensor.numpy()`` as a student's Function does:
    in the simulator a strided array fails there, as it does on a GPU."""
    _read_first_element[1, 1](tensor.detach().numpy(), np.zeros(1, np.float64))


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


def test_right_values_pass_the_bilinear_function_checks_of_values(capsys):
    # The lesson's (graded) checker also wants the kernels launched: tests/test_kernels_launched.py.
    plain_checkers.check_bilinear_function(_bilinear_function(lambda gradient, x: (gradient, None, None)))
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


# --- 02.1: the linear index


def _linear_index(clamp_source=True, clamp_i1=True):
    def linear_index(dst, in_size, out_size, align_corners):
        if align_corners:
            src = dst * (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
        else:
            src = (dst + 0.5) * in_size / out_size - 0.5
            if clamp_source:
                src = max(src, 0.0)
        i0 = min(int(np.floor(src)), in_size - 1)
        i1 = min(i0 + 1, in_size - 1) if clamp_i1 else i0 + 1
        w1 = src - i0
        return i0, i1, 1.0 - w1, w1

    return linear_index


def test_linear_index_past_the_end_is_told_to_clamp_i1():
    message = hint_of(checkers.check_linear_index, _linear_index(clamp_i1=False))
    assert "outside 0.." in message and "i1 = i0 + 1 only if that is still inside" in message


def test_linear_index_with_a_negative_source_is_told_to_clamp_it_at_zero():
    message = hint_of(checkers.check_linear_index, _linear_index(clamp_source=False))
    assert "indices (-1, 0)" in message and "clamp the source coordinate at 0" in message


# --- 03.1: kernel prediction, one wrong normalisation per hint


def _predict(normalise):
    def predict_kernels(x, channel_compressor, content_encoder, scale, kernel_size, group):
        logits = content_encoder(channel_compressor(x))
        return normalise(logits, scale, kernel_size, group)

    return predict_kernels


def _per_group(shuffled, kernel_size, group, dim):
    n, slots, height, width = shuffled.shape
    return F.softmax(shuffled.view(n, group, kernel_size * kernel_size, height, width), dim=dim).view(shuffled.shape)


def _sub_pixel_outer_shuffle(logits, scale):
    n, channels, height, width = logits.shape  # a hand-made shuffle with the sub-pixel index outer
    regrouped = logits.view(n, scale * scale, channels // (scale * scale), height, width).transpose(1, 2)
    return F.pixel_shuffle(regrouped.reshape(logits.shape), scale)


@pytest.mark.parametrize("normalise, named", [
    (lambda logits, s, k, g: F.softmax(F.pixel_shuffle(logits, s), dim=1),
     r"softmax runs over all group \* kernel_size\*\*2 channels at once"),
    (lambda logits, s, k, g: F.pixel_shuffle(F.softmax(logits, dim=1), s), r"softmax comes before the pixel shuffle"),
    (lambda logits, s, k, g: F.pixel_shuffle(logits, s), r"kernels are not normalised"),
    (lambda logits, s, k, g: _per_group(F.pixel_shuffle(logits, s), k, g, dim=1), r"softmax runs over the groups"),
    (lambda logits, s, k, g: _per_group(_sub_pixel_outer_shuffle(logits, s), k, g, dim=2),
     r"channels were rearranged before the pixel shuffle"),
], ids=["softmax over all groups", "softmax before shuffle", "no softmax", "softmax over groups",
        "hand-made shuffle"])
def test_wrong_kernel_normalisation_is_named(normalise, named):
    import re

    assert re.search(named, hint_of(checkers.check_predict_kernels, _predict(normalise)))


# --- 04.2: the similarity in PyTorch


def _similarity(transpose_slots=False, outside=0.0):
    def similarity(q, key, kernel_size, scale):
        n, d, height, width = key.shape
        radius = (kernel_size - 1) // 2
        area = kernel_size * kernel_size
        windows = F.unfold(key, kernel_size, padding=radius).view(n, d, area, height, width)
        if outside != 0.0:  # mark the out-of-map slots
            inside = F.unfold(torch.ones_like(key[:, :1]), kernel_size, padding=radius).view(n, 1, area, height, width)
        if transpose_slots:
            windows = windows.view(n, d, kernel_size, kernel_size, height, width).transpose(2, 3).reshape(
                n, d, area, height, width)
        windows = windows.repeat_interleave(scale, dim=3).repeat_interleave(scale, dim=4)
        logits = (q[:, :, None] * windows).sum(dim=1)
        if outside != 0.0:
            inside = inside.repeat_interleave(scale, dim=3).repeat_interleave(scale, dim=4)[:, 0]
            logits = logits.masked_fill(inside == 0, outside)
        return logits

    return similarity


def test_a_right_similarity_passes(capsys):
    checkers.check_similarity_reference(_similarity())
    assert capsys.readouterr().out.startswith("PASS similarity_reference")


def test_similarity_with_transposed_window_slots_is_told_the_slot_order():
    assert "window slots are in the wrong order" in hint_of(checkers.check_similarity_reference,
                                                           _similarity(transpose_slots=True))


def test_similarity_with_minus_inf_outside_the_map_is_told_to_write_zero():
    message = hint_of(checkers.check_similarity_reference, _similarity(outside=-float("inf")))
    assert "outside the low-res map" in message and "write 0" in message


# --- 05.1: the semi-shift as two convolutions, one wrong formulation per hint


def _conv(x, weight, bias, mode="zeros"):
    if mode == "zeros":
        return F.conv2d(x, weight, bias, padding=weight.shape[2] // 2)
    return F.conv2d(F.pad(x, (weight.shape[2] // 2,) * 4, mode=mode), weight, bias)


def _nearest(x, scale):
    return F.interpolate(x, scale_factor=scale, mode="nearest")


@pytest.mark.parametrize("semi_shift, named", [
    (lambda E, D, w, b, s: _conv(E, w, b) + _conv(_nearest(D, s), w, b), r"convolution over nearest_up\(D\)"),
    (lambda E, D, w, b, s: _conv(E, w, b) + _nearest(_conv(D, w, None), s), r"the bias is added once"),
    (lambda E, D, w, b, s: _conv(E, w, None) + _nearest(_conv(D, w, None), s), r"the bias is missing"),
    (lambda E, D, w, b, s: _conv(E, w, b), r"only the encoder window is summed"),
    (lambda E, D, w, b, s: _nearest(_conv(D, w, b), s), r"only the decoder window is summed"),
    (lambda E, D, w, b, s: _conv(E, w, b, "replicate") + _nearest(_conv(D, w, b, "replicate"), s),
     r"repeats the edge pixels"),
    (lambda E, D, w, b, s: _conv(E, w.transpose(2, 3), b) + _nearest(_conv(D, w.transpose(2, 3), b), s),
     r"rows and columns of the weight are swapped"),
    (lambda E, D, w, b, s: _conv(E, w.flip(2, 3), b) + _nearest(_conv(D, w.flip(2, 3), b), s),
     r"the weight is flipped"),
    (lambda E, D, w, b, s: _conv(E, w, b) + F.interpolate(_conv(D, w, b), scale_factor=s, mode="bilinear"),
     r"upsampled bilinearly"),
], ids=["conv of upsampled D", "bias once", "no bias", "encoder only", "decoder only", "replicate padding",
        "transposed weight", "flipped weight", "bilinear"])
def test_wrong_semi_shift_formulation_is_named(semi_shift, named):
    import re

    assert re.search(named, hint_of(checkers.check_semi_shift_two_convs, semi_shift))


# --- 05.2: one output pixel, taps outside the map read without a check


def semi_shift_pixel_without_bounds(E, D, weight, bias, n, o, Y, X, scale):
    radius = weight.shape[2] // 2
    total = 2 * bias[o]
    for c in range(weight.shape[1]):
        for uy in range(weight.shape[2]):
            for ux in range(weight.shape[3]):
                row, col = Y + uy - radius, X + ux - radius
                low_row, low_col = Y // scale + uy - radius, X // scale + ux - radius
                # NumPy reads -1 as the last row; a row past the end raises, so those are skipped
                e = E[n, c, row, col] if row < E.shape[2] and col < E.shape[3] else 0.0
                d = D[n, c, low_row, low_col] if low_row < D.shape[2] and low_col < D.shape[3] else 0.0
                total += weight[o, c, uy, ux] * (e + d)
    return total


def test_semi_shift_pixel_reading_index_minus_one_is_told_about_the_border():
    message = hint_of(checkers.check_semi_shift_pixel, semi_shift_pixel_without_bounds)
    assert "at the border of the map" in message and "index -1" in message


# --- 03.3 / 03.4: the CARAFE kernels at the border, the slot order and the groups


@cuda.jit
def carafe_border_renormalised(x, masks, out, kernel_size, scale):
    i = cuda.grid(1)
    if i < out.size:
        width, height, channels = out.shape[3], out.shape[2], out.shape[1]
        X, Y = i % width, (i // width) % height
        c, n = (i // (width * height)) % channels, i // (width * height * channels)
        r = (kernel_size - 1) // 2
        total = 0.0
        weight_inside = 0.0
        for dy in range(kernel_size):
            for dx in range(kernel_size):
                row, col = Y // scale - r + dy, X // scale - r + dx
                if 0 <= row < x.shape[2] and 0 <= col < x.shape[3]:
                    total += masks[n, dy * kernel_size + dx, Y, X] * x[n, c, row, col]
                    weight_inside += masks[n, dy * kernel_size + dx, Y, X]
        out[n, c, Y, X] = total / weight_inside


@cuda.jit
def carafe_border_clamped(x, masks, out, kernel_size, scale):
    i = cuda.grid(1)
    if i < out.size:
        width, height, channels = out.shape[3], out.shape[2], out.shape[1]
        X, Y = i % width, (i // width) % height
        c, n = (i // (width * height)) % channels, i // (width * height * channels)
        r = (kernel_size - 1) // 2
        total = 0.0
        for dy in range(kernel_size):
            for dx in range(kernel_size):
                row = min(max(Y // scale - r + dy, 0), x.shape[2] - 1)
                col = min(max(X // scale - r + dx, 0), x.shape[3] - 1)
                total += masks[n, dy * kernel_size + dx, Y, X] * x[n, c, row, col]
        out[n, c, Y, X] = total


@cuda.jit
def carafe_border_slots_transposed(x, masks, out, kernel_size, scale):
    i = cuda.grid(1)
    if i < out.size:
        width, height, channels = out.shape[3], out.shape[2], out.shape[1]
        X, Y = i % width, (i // width) % height
        c, n = (i // (width * height)) % channels, i // (width * height * channels)
        r = (kernel_size - 1) // 2
        total = 0.0
        for dy in range(kernel_size):
            for dx in range(kernel_size):
                row, col = Y // scale - r + dy, X // scale - r + dx
                if 0 <= row < x.shape[2] and 0 <= col < x.shape[3]:
                    total += masks[n, dx * kernel_size + dy, Y, X] * x[n, c, row, col]
        out[n, c, Y, X] = total


@cuda.jit
def carafe_group_interleaved(x, masks, out, kernel_size, scale, group):
    i = cuda.grid(1)
    if i < out.size:
        width, height, channels = out.shape[3], out.shape[2], out.shape[1]
        X, Y = i % width, (i // width) % height
        c, n = (i // (width * height)) % channels, i // (width * height * channels)
        r = (kernel_size - 1) // 2
        g = c % group
        total = 0.0
        for dy in range(kernel_size):
            for dx in range(kernel_size):
                row, col = Y // scale - r + dy, X // scale - r + dx
                if 0 <= row < x.shape[2] and 0 <= col < x.shape[3]:
                    total += masks[n, (g * kernel_size + dy) * kernel_size + dx, Y, X] * x[n, c, row, col]
        out[n, c, Y, X] = total


@pytest.mark.parametrize("check, kernel, named", [
    (checkers.check_carafe_border_kernel, carafe_border_renormalised, r"renormalises the weights at the border"),
    (checkers.check_carafe_border_kernel, carafe_border_clamped, r"repeats the edge pixel .*clamps the index"),
    (checkers.check_carafe_border_kernel, carafe_border_slots_transposed,
     r"rows and columns of the window are swapped"),
    (checkers.check_carafe_group_kernel, carafe_group_interleaved, r"c // \(C // group\).*not c % group"),
], ids=["renormalised", "clamped", "slots transposed", "groups interleaved"])
def test_wrong_carafe_kernel_is_named(check, kernel, named):
    import re

    assert re.search(named, hint_of(check, kernel))


@cuda.jit
def carafe_border_reflected(x, masks, out, kernel_size, scale):
    i = cuda.grid(1)
    if i < out.size:
        width, height, channels = out.shape[3], out.shape[2], out.shape[1]
        X, Y = i % width, (i // width) % height
        c, n = (i // (width * height)) % channels, i // (width * height * channels)
        r = (kernel_size - 1) // 2
        total = 0.0
        for dy in range(kernel_size):
            for dx in range(kernel_size):
                row, col = abs(Y // scale - r + dy), abs(X // scale - r + dx)
                if row >= x.shape[2]:
                    row = 2 * (x.shape[2] - 1) - row
                if col >= x.shape[3]:
                    col = 2 * (x.shape[3] - 1) - col
                total += masks[n, dy * kernel_size + dx, Y, X] * x[n, c, row, col]
        out[n, c, Y, X] = total


def test_carafe_kernel_reflecting_the_border_is_told_to_pad_with_zeros():
    assert "reflects the map at its border" in hint_of(checkers.check_carafe_border_kernel, carafe_border_reflected)


# --- 04.3: the similarity kernel, one thread per (n, t, Y, X)


@cuda.jit
def similarity_skipping_outside_slots(q, key, logits, kernel_size, scale):
    i = cuda.grid(1)
    if i < logits.size:
        width, height, area = logits.shape[3], logits.shape[2], logits.shape[1]
        X, Y = i % width, (i // width) % height
        t, n = (i // (width * height)) % area, i // (width * height * area)
        r = (kernel_size - 1) // 2
        row, col = Y // scale + t // kernel_size - r, X // scale + t % kernel_size - r
        if 0 <= row < key.shape[2] and 0 <= col < key.shape[3]:  # and outside: nothing written
            total = 0.0
            for c in range(q.shape[1]):
                total += q[n, c, Y, X] * key[n, c, row, col]
            logits[n, t, Y, X] = total


@cuda.jit
def similarity_slots_column_major(q, key, logits, kernel_size, scale):
    i = cuda.grid(1)
    if i < logits.size:
        width, height, area = logits.shape[3], logits.shape[2], logits.shape[1]
        X, Y = i % width, (i // width) % height
        t, n = (i // (width * height)) % area, i // (width * height * area)
        r = (kernel_size - 1) // 2
        row, col = Y // scale + t % kernel_size - r, X // scale + t // kernel_size - r
        total = 0.0
        if 0 <= row < key.shape[2] and 0 <= col < key.shape[3]:
            for c in range(q.shape[1]):
                total += q[n, c, Y, X] * key[n, c, row, col]
        logits[n, t, Y, X] = total


def test_similarity_kernel_leaving_outside_slots_unwritten_is_told_to_write_zero():
    message = hint_of(checkers.check_similarity_kernel, similarity_skipping_outside_slots)
    assert "outside the low-res map" in message and "write 0" in message


def test_similarity_kernel_with_column_major_slots_is_told_the_slot_order():
    assert "window slots are in the wrong order" in hint_of(checkers.check_similarity_kernel,
                                                           similarity_slots_column_major)


# --- 05.8: FADE's forward, one wrong step per hint


def _fade_forward(gate_of=None, normalise=lambda logits: F.softmax(logits, dim=1), bias_once=False, mix=None,
                  upsample_first=False):
    import upsamplelib as ul

    def fade_forward(module, en, de):
        generator, encoder = module.ker_generator, module.ker_generator.content_encoder
        E, D = generator.compressor_en(en), generator.compressor_de(de)
        logits = ul.semi_shift_conv(E, D, encoder.weight, encoder.bias, module.scale, groups=encoder.groups)
        if upsample_first:  # one conv over [E, nearest_up(D)] instead of the semi-shift
            logits = encoder(E) + encoder(F.interpolate(D, scale_factor=module.scale))
        if bias_once:
            logits = logits - encoder.bias[None, :, None, None]
        kernels = normalise(logits)
        raw = module.gate_generator.conv(de)
        gate = gate_of(module, raw, en) if gate_of else torch.sigmoid(F.interpolate(raw, scale_factor=module.scale))
        reassembled = ul.carafe(de, kernels, module.up_kernel_size, module.scale)
        return mix(gate, en, reassembled) if mix else gate * en + (1 - gate) * reassembled

    return fade_forward


def test_a_right_fade_forward_passes(capsys):
    checkers.check_fade_forward(_fade_forward())
    assert capsys.readouterr().out.startswith("PASS fade_forward")


@pytest.mark.parametrize("fade_forward, named", [
    (_fade_forward(mix=lambda g, en, r: (1 - g) * en + g * r), r"the gate is the other way round"),
    (_fade_forward(mix=lambda g, en, r: r), r"the gate is missing"),
    (_fade_forward(gate_of=lambda m, raw, en: F.interpolate(raw, scale_factor=m.scale)), r"the gate has no sigmoid"),
    (_fade_forward(gate_of=lambda m, raw, en: torch.sigmoid(F.interpolate(raw, scale_factor=m.scale, mode="bilinear"))),
     r"the gate is upsampled bilinearly"),
    (_fade_forward(gate_of=lambda m, raw, en: torch.sigmoid(m.gate_generator.conv(en))),
     r"the gate comes from the encoder feature"),
    (_fade_forward(normalise=lambda logits: logits), r"the kernels are not normalised"),
    (_fade_forward(bias_once=True), r"the bias once"),
    (_fade_forward(upsample_first=True), r"convolution over nearest_up\(D\)"),
], ids=["gate reversed", "no gate", "no sigmoid", "bilinear gate", "encoder gate", "no softmax", "bias once",
        "conv of upsampled D"])
def test_wrong_fade_forward_is_named(fade_forward, named):
    import re

    assert re.search(named, hint_of(checkers.check_fade_forward, fade_forward))


# --- 05.4 - 05.6: the semi-shift's gradient kernels


@cuda.jit
def grad_en_plus_offsets(grad_out, weight, grad_en):
    i = cuda.grid(1)
    if i < grad_en.size:
        width, height, channels = grad_en.shape[3], grad_en.shape[2], grad_en.shape[1]
        X, Y = i % width, (i // width) % height
        c, n = (i // (width * height)) % channels, i // (width * height * channels)
        k = weight.shape[2]
        r = k // 2
        total = 0.0
        for o in range(weight.shape[0]):
            for uy in range(k):
                for ux in range(k):
                    row, col = Y + uy - r, X + ux - r  # the forward's offsets: should be Y - uy + r
                    if 0 <= row < height and 0 <= col < width:
                        total += weight[o, c, uy, ux] * grad_out[n, o, row, col]
        grad_en[n, c, Y, X] = total


@cuda.jit
def grad_de_one_output_per_pixel(grad_out, weight, grad_de, scale):
    i = cuda.grid(1)
    if i < grad_de.size:
        width, height, channels = grad_de.shape[3], grad_de.shape[2], grad_de.shape[1]
        col, row = i % width, (i // width) % height
        c, n = (i // (width * height)) % channels, i // (width * height * channels)
        k = weight.shape[2]
        r = k // 2
        total = 0.0
        for o in range(weight.shape[0]):
            for uy in range(k):
                for ux in range(k):
                    anchor_row, anchor_col = row - uy + r, col - ux + r
                    if 0 <= anchor_row < height and 0 <= anchor_col < width:
                        total += weight[o, c, uy, ux] * grad_out[n, o, anchor_row * scale, anchor_col * scale]
        grad_de[n, c, row, col] = total


@cuda.jit
def grad_de_plus_offsets(grad_out, weight, grad_de, scale):
    i = cuda.grid(1)
    if i < grad_de.size:
        width, height, channels = grad_de.shape[3], grad_de.shape[2], grad_de.shape[1]
        col, row = i % width, (i // width) % height
        c, n = (i // (width * height)) % channels, i // (width * height * channels)
        k = weight.shape[2]
        r = k // 2
        total = 0.0
        for o in range(weight.shape[0]):
            for uy in range(k):
                for ux in range(k):
                    anchor_row, anchor_col = row + uy - r, col + ux - r
                    if 0 <= anchor_row < height and 0 <= anchor_col < width:
                        for sy in range(scale):
                            for sx in range(scale):
                                total += weight[o, c, uy, ux] * grad_out[n, o, anchor_row * scale + sy,
                                                                         anchor_col * scale + sx]
        grad_de[n, c, row, col] = total


@cuda.jit
def grad_weight_encoder_only(grad_out, E, D, grad_weight, scale):
    i = cuda.grid(1)
    if i < grad_weight.size:
        k, channels = grad_weight.shape[3], grad_weight.shape[1]
        ux, uy = i % k, (i // k) % k
        c, o = (i // (k * k)) % channels, i // (k * k * channels)
        r = k // 2
        total = 0.0
        for n in range(grad_out.shape[0]):
            for Y in range(grad_out.shape[2]):
                for X in range(grad_out.shape[3]):
                    row, col = Y + uy - r, X + ux - r
                    if 0 <= row < E.shape[2] and 0 <= col < E.shape[3]:
                        total += grad_out[n, o, Y, X] * E[n, c, row, col]
        grad_weight[o, c, uy, ux] = total


@cuda.jit
def grad_weight_first_batch_only(grad_out, E, D, grad_weight, scale):
    i = cuda.grid(1)
    if i < grad_weight.size:
        k, channels = grad_weight.shape[3], grad_weight.shape[1]
        ux, uy = i % k, (i // k) % k
        c, o = (i // (k * k)) % channels, i // (k * k * channels)
        r = k // 2
        total = 0.0
        n = 0
        for Y in range(grad_out.shape[2]):
            for X in range(grad_out.shape[3]):
                row, col = Y + uy - r, X + ux - r
                if 0 <= row < E.shape[2] and 0 <= col < E.shape[3]:
                    total += grad_out[n, o, Y, X] * E[n, c, row, col]
                row, col = Y // scale + uy - r, X // scale + ux - r
                if 0 <= row < D.shape[2] and 0 <= col < D.shape[3]:
                    total += grad_out[n, o, Y, X] * D[n, c, row, col]
        grad_weight[o, c, uy, ux] = total


@cuda.jit
def grad_weight_over_upsampled_decoder(grad_out, E, D, grad_weight, scale):
    i = cuda.grid(1)
    if i < grad_weight.size:
        k, channels = grad_weight.shape[3], grad_weight.shape[1]
        ux, uy, c, o = i % k, (i // k) % k, (i // (k * k)) % channels, i // (k * k * channels)
        r = k // 2
        total = 0.0
        for n in range(grad_out.shape[0]):
            for Y in range(grad_out.shape[2]):
                for X in range(grad_out.shape[3]):
                    row, col = Y + uy - r, X + ux - r
                    if 0 <= row < E.shape[2] and 0 <= col < E.shape[3]:
                        # the tap of nearest_up(D), not of the semi-shift's window D[Y // s + uy - r]
                        total += grad_out[n, o, Y, X] * (E[n, c, row, col] + D[n, c, row // scale, col // scale])
        grad_weight[o, c, uy, ux] = total


@pytest.mark.parametrize("check, kernel, named", [
    (checkers.check_semi_shift_grad_weight_kernel, grad_weight_over_upsampled_decoder,
     r"convolution over nearest_up\(D\)"),
    (checkers.check_semi_shift_grad_en_kernel, grad_en_plus_offsets, r"Y - uy \+ r.*\(minus, not plus\)"),
    (checkers.check_semi_shift_grad_de_kernel, grad_de_one_output_per_pixel, r"only one output per low-res pixel"),
    (checkers.check_semi_shift_grad_de_kernel, grad_de_plus_offsets, r"the anchor is .*\(minus\)"),
    (checkers.check_semi_shift_grad_weight_kernel, grad_weight_encoder_only, r"only the encoder window is counted"),
    (checkers.check_semi_shift_grad_weight_kernel, grad_weight_first_batch_only, r"only the first batch element"),
], ids=["grad_weight upsampled D", "grad_en plus", "grad_de one output", "grad_de plus", "grad_weight encoder only", "grad_weight batch 0"])
def test_wrong_semi_shift_gradient_kernel_is_named(check, kernel, named):
    import re

    assert re.search(named, hint_of(check, kernel))


# --- 04.5: the block kernel, out-of-map slots left out of the softmax

import math  # noqa: E402

import numba  # noqa: E402

LANES = 32
MAX_AREA = 49


@cuda.jit
def block_softmax_without_outside_slots(q, key, weights, kernel_size, scale):
    partial = cuda.shared.array((MAX_AREA, LANES), numba.float32)
    lane = cuda.threadIdx.x
    point = cuda.blockIdx.x
    height, width = q.shape[2], q.shape[3]
    X, Y, n = point % width, (point // width) % height, point // (width * height)
    area = kernel_size * kernel_size
    r = (kernel_size - 1) // 2
    for t in range(area):
        row, col = Y // scale + t // kernel_size - r, X // scale + t % kernel_size - r
        total = 0.0
        if 0 <= row < key.shape[2] and 0 <= col < key.shape[3]:
            for c in range(lane, q.shape[1], LANES):
                total += q[n, c, Y, X] * key[n, c, row, col]
        partial[t, lane] = total
    cuda.syncthreads()
    stride = LANES // 2
    while stride > 0:
        if lane < stride:
            for t in range(area):
                partial[t, lane] += partial[t, lane + stride]
        cuda.syncthreads()
        stride //= 2
    top = -math.inf
    total = 0.0
    for t in range(area):  # the out-of-map slots are left out: no neighbour, no weight
        row, col = Y // scale + t // kernel_size - r, X // scale + t % kernel_size - r
        if 0 <= row < key.shape[2] and 0 <= col < key.shape[3]:
            top = max(top, partial[t, 0])
    for t in range(area):
        row, col = Y // scale + t // kernel_size - r, X // scale + t % kernel_size - r
        if 0 <= row < key.shape[2] and 0 <= col < key.shape[3]:
            total += math.exp(partial[t, 0] - top)
    for t in range(lane, area, LANES):
        row, col = Y // scale + t // kernel_size - r, X // scale + t % kernel_size - r
        inside = 0 <= row < key.shape[2] and 0 <= col < key.shape[3]
        weights[n, t, Y, X] = math.exp(partial[t, 0] - top) / total if inside else 0.0


@simulator_only
def test_block_kernel_leaving_outside_slots_out_of_the_softmax_is_told_they_have_logit_zero():
    message = hint_of(checkers.check_similarity_block_kernel, block_softmax_without_outside_slots, LANES)
    assert "out-of-map slots are left out of the softmax" in message and "logit 0" in message
    assert "does every thread loop" not in message


@cuda.jit
def block_one_channel_per_lane(q, key, weights, kernel_size, scale):
    partial = cuda.shared.array((MAX_AREA, LANES), numba.float32)
    lane = cuda.threadIdx.x
    point = cuda.blockIdx.x
    height, width = q.shape[2], q.shape[3]
    X, Y, n = point % width, (point // width) % height, point // (width * height)
    area = kernel_size * kernel_size
    r = (kernel_size - 1) // 2
    for t in range(area):
        row, col = Y // scale + t // kernel_size - r, X // scale + t % kernel_size - r
        total = 0.0
        if 0 <= row < key.shape[2] and 0 <= col < key.shape[3] and lane < q.shape[1]:
            total = q[n, lane, Y, X] * key[n, lane, row, col]  # one channel per lane: d > LANES loses some
        partial[t, lane] = total
    cuda.syncthreads()
    stride = LANES // 2
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
    for t in range(lane, area, LANES):
        weights[n, t, Y, X] = math.exp(partial[t, 0] - top) / total


@simulator_only
def test_block_kernel_with_one_channel_per_lane_is_told_to_loop_over_the_channels():
    message = hint_of(checkers.check_similarity_block_kernel, block_one_channel_per_lane, LANES)
    assert "37 channels, more than the 32 threads: does every thread loop over c = threadIdx.x" in message


# --- 03.3: the border kernel reading outside x


@cuda.jit
def carafe_border_without_bounds(x, masks, out, kernel_size, scale):
    i = cuda.grid(1)
    if i < out.size:
        width, height, channels = out.shape[3], out.shape[2], out.shape[1]
        X, Y = i % width, (i // width) % height
        c, n = (i // (width * height)) % channels, i // (width * height * channels)
        r = (kernel_size - 1) // 2
        total = 0.0
        for dy in range(kernel_size):
            for dx in range(kernel_size):
                total += masks[n, dy * kernel_size + dx, Y, X] * x[n, c, Y // scale - r + dy, X // scale - r + dx]
        out[n, c, Y, X] = total


@simulator_only
def test_carafe_kernel_reading_outside_x_is_told_to_check_the_neighbour():
    message = hint_of(checkers.check_carafe_border_kernel, carafe_border_without_bounds)
    assert "out of bounds" in message and "Check 0 <= row < x.shape[2] and 0 <= col < x.shape[3]" in message
    assert "mirror" not in message  # lesson 00's example, not this mistake


# --- 05.3: the one-pass kernel reading past the map


@cuda.jit
def semi_shift_without_bounds(E, D, weight, bias, out, scale):
    i = cuda.grid(1)
    if i < out.size:
        width, height, channels = out.shape[3], out.shape[2], out.shape[1]
        X, Y = i % width, (i // width) % height
        o, n = (i // (width * height)) % channels, i // (width * height * channels)
        k = weight.shape[2]
        r = k // 2
        total = 2 * bias[o]
        for c in range(weight.shape[1]):
            for uy in range(k):
                for ux in range(k):
                    total += weight[o, c, uy, ux] * (E[n, c, Y + uy - r, X + ux - r]
                                                     + D[n, c, Y // scale + uy - r, X // scale + ux - r])
        out[n, o, Y, X] = total


@simulator_only
def test_semi_shift_kernel_reading_past_the_map_is_told_to_check_the_tap():
    message = hint_of(checkers.check_semi_shift_kernel, semi_shift_without_bounds)
    assert "out of bounds" in message and "Check that a tap is inside the map" in message
    assert "mirror" not in message


# --- 02.3: a scatter with atomics but the weights of the wrong rows

from upsamplelib.checkers.fallbacks import linear_index  # noqa: E402  (the library's, lesson 02's signature)


@cuda.jit
def scatter_rows_weights_swapped(grad_out, grad_x, align_corners):
    i = cuda.grid(1)
    if i < grad_out.size:
        height, width = grad_out.shape[1], grad_out.shape[2]
        col, row, p = i % width, (i // width) % height, i // (width * height)
        y0, y1, wy0, wy1 = linear_index(row, grad_x.shape[1], height, align_corners)
        x0, x1, wx0, wx1 = linear_index(col, grad_x.shape[2], width, align_corners)
        g = grad_out[p, row, col]
        cuda.atomic.add(grad_x, (p, y0, x0), wy1 * wx0 * g)  # row y0 takes wy0, not wy1
        cuda.atomic.add(grad_x, (p, y0, x1), wy1 * wx1 * g)
        cuda.atomic.add(grad_x, (p, y1, x0), wy0 * wx0 * g)
        cuda.atomic.add(grad_x, (p, y1, x1), wy0 * wx1 * g)


def test_atomic_scatter_with_wrong_weights_is_not_told_to_use_atomics():
    message = hint_of(checkers.check_bilinear_scatter_kernel, scatter_rows_weights_swapped)
    assert "wrong values" in message or "mismatch" in message.lower()
    assert "use cuda.atomic.add" not in message
    assert "(y0, x0) gets wy0 * wx0 * g" in message


# --- 03.5: the shared-memory tile, loaded only by the threads inside the output

from numba import float32  # noqa: E402

TILE = 8
MAX_RADIUS = 3
WINDOW = TILE + 2 * MAX_RADIUS


@cuda.jit
def carafe_tiled_outside_threads_leave_early(x, masks, out, kernel_size, scale, group):
    tile = cuda.shared.array((WINDOW, WINDOW), float32)
    channels, height, width = out.shape[1], out.shape[2], out.shape[3]
    n, c = cuda.blockIdx.z // channels, cuda.blockIdx.z % channels
    Y0, X0 = cuda.blockIdx.y * TILE, cuda.blockIdx.x * TILE
    Y, X = Y0 + cuda.threadIdx.y, X0 + cuda.threadIdx.x
    if Y >= height or X >= width:
        return  # these threads' share of the tile is never loaded
    r = (kernel_size - 1) // 2
    top, left = Y0 // scale - r, X0 // scale - r
    rows = (Y0 + TILE - 1) // scale - Y0 // scale + 1 + 2 * r
    cols = (X0 + TILE - 1) // scale - X0 // scale + 1 + 2 * r
    for j in range(cuda.threadIdx.y * TILE + cuda.threadIdx.x, rows * cols, TILE * TILE):
        row, col = top + j // cols, left + j % cols
        value = float32(0)
        if 0 <= row < x.shape[2] and 0 <= col < x.shape[3]:
            value = x[n, c, row, col]
        tile[j // cols, j % cols] = value
    cuda.syncthreads()
    g = c // (channels // group)
    ty, tx = Y // scale - Y0 // scale, X // scale - X0 // scale
    total = float32(0)
    for dy in range(kernel_size):
        for dx in range(kernel_size):
            total += masks[n, (g * kernel_size + dy) * kernel_size + dx, Y, X] * tile[ty + dy, tx + dx]
    out[n, c, Y, X] = total


@simulator_only
def test_tiled_kernel_whose_outside_threads_return_early_is_told_they_skip_the_barrier():
    message = hint_of(checkers.check_carafe_tiled_kernel, carafe_tiled_outside_threads_leave_early, TILE, MAX_RADIUS)
    assert "returns on line" in message and "neither help load the tile nor reach the barrier" in message


@cuda.jit
def carafe_tiled_loaded_inside_the_guard(x, masks, out, kernel_size, scale, group):
    tile = cuda.shared.array((WINDOW, WINDOW), float32)
    channels, height, width = out.shape[1], out.shape[2], out.shape[3]
    n, c = cuda.blockIdx.z // channels, cuda.blockIdx.z % channels
    Y0, X0 = cuda.blockIdx.y * TILE, cuda.blockIdx.x * TILE
    Y, X = Y0 + cuda.threadIdx.y, X0 + cuda.threadIdx.x
    r = (kernel_size - 1) // 2
    top, left = Y0 // scale - r, X0 // scale - r
    rows = (Y0 + TILE - 1) // scale - Y0 // scale + 1 + 2 * r
    cols = (X0 + TILE - 1) // scale - X0 // scale + 1 + 2 * r
    if Y < height and X < width:  # the threads outside the output skip their share of the tile
        for j in range(cuda.threadIdx.y * TILE + cuda.threadIdx.x, rows * cols, TILE * TILE):
            row, col = top + j // cols, left + j % cols
            value = float32(0)
            if 0 <= row < x.shape[2] and 0 <= col < x.shape[3]:
                value = x[n, c, row, col]
            tile[j // cols, j % cols] = value
    cuda.syncthreads()
    if Y < height and X < width:
        g = c // (channels // group)
        ty, tx = Y // scale - Y0 // scale, X // scale - X0 // scale
        total = float32(0)
        for dy in range(kernel_size):
            for dx in range(kernel_size):
                total += masks[n, (g * kernel_size + dy) * kernel_size + dx, Y, X] * tile[ty + dy, tx + dx]
        out[n, c, Y, X] = total


@simulator_only
def test_tiled_kernel_loading_only_inside_the_output_is_told_every_thread_loads():
    message = hint_of(checkers.check_carafe_tiled_kernel, carafe_tiled_loaded_inside_the_guard, TILE, MAX_RADIUS)
    assert "every thread of the block, inside the output or not, must help load the tile" in message

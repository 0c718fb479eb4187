"""Lesson 05 (FADE): the pictures draw, and the checkers pass right answers
and explain wrong ones."""

import upsamplelib as ul  # noqa: I001  (first: it picks the CUDA target before numba loads)

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from numba import cuda  # noqa: E402

from upsamplelib import checkers, pictures  # noqa: E402
from upsamplelib.backend import launch_config, per_element  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# --------------------------------------------------------------------------
# Pictures
# --------------------------------------------------------------------------


def _texts(figure):
    return [text.get_text() for axis in figure.axes for text in axis.texts]


def test_semi_shift_windows_figure_shows_both_windows():
    figure = pictures.semi_shift_windows_figure(outputs=range(4), kernel_size=3, scale=2, low_width=4)
    assert isinstance(figure, Figure)
    texts = _texts(figure)
    assert "output X = 3" in texts and "decoder window (X // 2 = 1)" in texts
    assert "conv over up(D): 2 pixels" in texts and "conv over up(D): 1 pixel" in texts  # X = 0: one inside


def test_semi_shift_windows_figure_without_the_upsampled_bar_and_other_scales():
    figure = pictures.semi_shift_windows_figure(kernel_size=5, scale=3, low_width=3, show_upsampled=False)
    texts = _texts(figure)
    assert sum(t.startswith("output X = ") for t in texts) == 9  # every output position by default
    assert not any(t.startswith("conv over up(D)") for t in texts)
    assert "decoder window (X // 3 = 2)" in texts


def test_fade_gate_figure_draws_five_panels_and_a_colour_bar():
    generator = torch.Generator().manual_seed(0)
    en, de = torch.rand(3, 8, 6, generator=generator), torch.rand(3, 4, 3, generator=generator)
    gate = torch.rand(8, 6, generator=generator)
    figure = pictures.fade_gate_figure(en, de, gate, en * 0.5, en, title="gate")
    assert isinstance(figure, Figure)
    assert len(figure.axes) == 6
    assert figure.axes[2].get_title().startswith("gate g")


def test_fade_gate_figure_takes_grey_maps_and_rejects_a_gate_with_channels():
    maps = [torch.rand(1, 4, 4), torch.rand(2, 2), torch.rand(4, 4), torch.rand(1, 4, 4), torch.rand(4, 4)]
    assert isinstance(pictures.fade_gate_figure(*maps), Figure)
    with pytest.raises(ValueError, match="one \\(H, W\\) map"):
        pictures.fade_gate_figure(maps[0], maps[1], torch.rand(3, 4, 4), maps[3], maps[4])


# --------------------------------------------------------------------------
# Right answers
# --------------------------------------------------------------------------


@per_element
def inside(feature, row, col):
    return 0 <= row < feature.shape[2] and 0 <= col < feature.shape[3]


@per_element
def read_or_zero(feature, n, c, row, col):
    if inside(feature, row, col):
        return feature[n, c, row, col]
    return 0.0


def two_convs(E, D, weight, bias, scale):
    pad = weight.shape[2] // 2
    return F.conv2d(E, weight, bias, padding=pad) + F.interpolate(F.conv2d(D, weight, bias, padding=pad),
                                                                  scale_factor=scale, mode="nearest")


def pixel(E, D, weight, bias, n, o, Y, X, scale, check_low=True):
    r = weight.shape[2] // 2
    total = 2 * bias[o]
    for c in range(E.shape[1]):
        for uy in range(weight.shape[2]):
            for ux in range(weight.shape[3]):
                for feature, row, col in ((E, Y + uy - r, X + ux - r), (D, Y // scale + uy - r, X // scale + ux - r)):
                    low_ok = (row >= 0 and col >= 0) if check_low else True
                    if low_ok and row < feature.shape[2] and col < feature.shape[3]:
                        total += weight[o, c, uy, ux] * feature[n, c, row, col]
    return total


@cuda.jit
def semi_shift_kernel(E, D, weight, bias, out, scale):
    i = cuda.grid(1)
    if i < out.size:
        X = i % out.shape[3]
        Y = (i // out.shape[3]) % out.shape[2]
        o = (i // (out.shape[3] * out.shape[2])) % out.shape[1]
        n = i // (out.shape[3] * out.shape[2] * out.shape[1])
        r = weight.shape[2] // 2
        total = 2.0 * bias[o]
        for c in range(E.shape[1]):
            for uy in range(weight.shape[2]):
                for ux in range(weight.shape[2]):
                    # Each read on its own (the lesson's answer tests the tap once, for both maps).
                    if inside(E, Y + uy - r, X + ux - r):
                        total += weight[o, c, uy, ux] * E[n, c, Y + uy - r, X + ux - r]
                    if inside(D, Y // scale + uy - r, X // scale + ux - r):
                        total += weight[o, c, uy, ux] * D[n, c, Y // scale + uy - r, X // scale + ux - r]
        out[n, o, Y, X] = total


@cuda.jit
def semi_shift_zero_padded(E, D, weight, bias, out, scale):
    # The lesson's earlier answer: a tap outside both maps multiplies its weight by two zeros.
    i = cuda.grid(1)
    if i < out.size:
        X = i % out.shape[3]
        Y = (i // out.shape[3]) % out.shape[2]
        o = (i // (out.shape[3] * out.shape[2])) % out.shape[1]
        n = i // (out.shape[3] * out.shape[2] * out.shape[1])
        r = weight.shape[2] // 2
        total = 2.0 * bias[o]
        for c in range(E.shape[1]):
            for uy in range(weight.shape[2]):
                for ux in range(weight.shape[2]):
                    total += weight[o, c, uy, ux] * (read_or_zero(E, n, c, Y + uy - r, X + ux - r)
                                                     + read_or_zero(D, n, c, Y // scale + uy - r,
                                                                    X // scale + ux - r))
        out[n, o, Y, X] = total


@cuda.jit
def grad_en_kernel(grad_out, weight, grad_en):
    i = cuda.grid(1)
    if i < grad_en.size:
        X = i % grad_en.shape[3]
        Y = (i // grad_en.shape[3]) % grad_en.shape[2]
        c = (i // (grad_en.shape[3] * grad_en.shape[2])) % grad_en.shape[1]
        n = i // (grad_en.shape[3] * grad_en.shape[2] * grad_en.shape[1])
        r = weight.shape[2] // 2
        total = 0.0
        for uy in range(weight.shape[2]):
            for ux in range(weight.shape[2]):
                if inside(grad_out, Y - uy + r, X - ux + r):
                    for o in range(weight.shape[0]):
                        total += weight[o, c, uy, ux] * grad_out[n, o, Y - uy + r, X - ux + r]
        grad_en[n, c, Y, X] = total


@cuda.jit
def grad_en_zero_padded(grad_out, weight, grad_en):
    i = cuda.grid(1)
    if i < grad_en.size:
        X = i % grad_en.shape[3]
        Y = (i // grad_en.shape[3]) % grad_en.shape[2]
        c = (i // (grad_en.shape[3] * grad_en.shape[2])) % grad_en.shape[1]
        n = i // (grad_en.shape[3] * grad_en.shape[2] * grad_en.shape[1])
        r = weight.shape[2] // 2
        total = 0.0
        for o in range(weight.shape[0]):
            for uy in range(weight.shape[2]):
                for ux in range(weight.shape[2]):
                    total += weight[o, c, uy, ux] * read_or_zero(grad_out, n, o, Y - uy + r, X - ux + r)
        grad_en[n, c, Y, X] = total


@cuda.jit
def grad_de_kernel(grad_out, weight, grad_de, scale):
    i = cuda.grid(1)
    if i < grad_de.size:
        height, width = grad_de.shape[2], grad_de.shape[3]
        col = i % width
        row = (i // width) % height
        c = (i // (width * height)) % grad_de.shape[1]
        n = i // (width * height * grad_de.shape[1])
        r = weight.shape[2] // 2
        total = 0.0
        for uy in range(weight.shape[2]):
            for ux in range(weight.shape[2]):
                a, b = row - uy + r, col - ux + r
                if 0 <= a < height and 0 <= b < width:
                    for o in range(weight.shape[0]):
                        pooled = 0.0
                        for Y in range(a * scale, a * scale + scale):
                            for X in range(b * scale, b * scale + scale):
                                pooled += grad_out[n, o, Y, X]
                        total += weight[o, c, uy, ux] * pooled
        grad_de[n, c, row, col] = total


@cuda.jit
def grad_weight_kernel(grad_out, E, D, grad_weight, scale):
    i = cuda.grid(1)
    if i < grad_weight.size:
        size = grad_weight.shape[2]
        ux = i % size
        uy = (i // size) % size
        c = (i // (size * size)) % grad_weight.shape[1]
        o = i // (size * size * grad_weight.shape[1])
        r = size // 2
        total = 0.0
        for n in range(grad_out.shape[0]):
            for Y in range(grad_out.shape[2]):
                for X in range(grad_out.shape[3]):
                    if inside(E, Y + uy - r, X + ux - r):
                        total += grad_out[n, o, Y, X] * E[n, c, Y + uy - r, X + ux - r]
                    if inside(D, Y // scale + uy - r, X // scale + ux - r):
                        total += grad_out[n, o, Y, X] * D[n, c, Y // scale + uy - r, X // scale + ux - r]
        grad_weight[o, c, uy, ux] = total


@cuda.jit
def grad_weight_zero_padded(grad_out, E, D, grad_weight, scale):
    i = cuda.grid(1)
    if i < grad_weight.size:
        size = grad_weight.shape[2]
        ux = i % size
        uy = (i // size) % size
        c = (i // (size * size)) % grad_weight.shape[1]
        o = i // (size * size * grad_weight.shape[1])
        r = size // 2
        total = 0.0
        for n in range(grad_out.shape[0]):
            for Y in range(grad_out.shape[2]):
                for X in range(grad_out.shape[3]):
                    total += grad_out[n, o, Y, X] * (read_or_zero(E, n, c, Y + uy - r, X + ux - r)
                                                     + read_or_zero(D, n, c, Y // scale + uy - r,
                                                                    X // scale + ux - r))
        grad_weight[o, c, uy, ux] = total


def _arrays(*tensors):
    return [t.detach().contiguous().numpy() for t in tensors]


def make_function(bias_factor=2, drop_last_none=False):
    class Function(torch.autograd.Function):
        @staticmethod
        def forward(ctx, E, D, weight, bias, scale):
            out = E.new_empty((E.shape[0], weight.shape[0], E.shape[2], E.shape[3]))
            semi_shift_kernel[launch_config(out.numel(), 128)](*_arrays(E, D, weight, bias), out.numpy(), scale)
            ctx.save_for_backward(E.detach().contiguous(), D.detach().contiguous(), weight.detach().contiguous())
            ctx.scale = scale
            return out

        @staticmethod
        def backward(ctx, grad_out):
            E, D, weight = ctx.saved_tensors
            g = grad_out.contiguous()
            grads = [torch.empty_like(E), torch.empty_like(D), torch.empty_like(weight)]
            grad_en_kernel[launch_config(E.numel(), 128)](*_arrays(g, weight), grads[0].numpy())
            grad_de_kernel[launch_config(D.numel(), 128)](*_arrays(g, weight), grads[1].numpy(), ctx.scale)
            grad_weight_kernel[launch_config(weight.numel(), 128)](*_arrays(g, E, D), grads[2].numpy(), ctx.scale)
            result = (*grads, bias_factor * g.sum(dim=(0, 2, 3)), None)
            return result[:-1] if drop_last_none else result

    return Function


def fade_forward(module, en, de, swap_gate=False, groups=True):
    generator = module.ker_generator
    encoder = generator.content_encoder
    logits = ul.semi_shift_conv(generator.compressor_en(en), generator.compressor_de(de), encoder.weight,
                                encoder.bias, module.scale, groups=encoder.groups if groups else 1)
    kernels = F.softmax(logits, dim=1)
    gate = torch.sigmoid(F.interpolate(module.gate_generator.conv(de), scale_factor=module.scale, mode="nearest"))
    if swap_gate:
        gate = 1 - gate
    return gate * en + (1 - gate) * ul.carafe(de, kernels, module.up_kernel_size, module.scale)


def test_right_answers_pass(capsys):
    checkers.check_semi_shift_two_convs(two_convs)
    checkers.check_semi_shift_pixel(pixel)
    checkers.check_semi_shift_kernel(semi_shift_kernel)
    checkers.check_semi_shift_grad_en_kernel(grad_en_kernel)
    checkers.check_semi_shift_grad_de_kernel(grad_de_kernel)
    checkers.check_semi_shift_grad_weight_kernel(grad_weight_kernel)
    checkers.check_semi_shift_function(make_function())
    checkers.check_fade_forward(fade_forward)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" (")[0] for line in lines] == [
        "PASS semi_shift_two_convs", "PASS semi_shift_pixel", "PASS semi_shift_kernel",
        "PASS semi_shift_grad_en_kernel", "PASS semi_shift_grad_de_kernel", "PASS semi_shift_grad_weight_kernel",
        "PASS SemiShiftFunction", "PASS fade_forward"]


@cuda.jit
def semi_shift_skipping_negative_indices_only(E, D, weight, bias, out, scale):
    # The -1 warning of 05.2 taken as the whole rule: taps past the bottom and right border multiply zeros in.
    i = cuda.grid(1)
    if i < out.size:
        X, Y = i % out.shape[3], (i // out.shape[3]) % out.shape[2]
        o, n = (i // (out.shape[3] * out.shape[2])) % out.shape[1], i // (out.shape[3] * out.shape[2] * out.shape[1])
        r = weight.shape[2] // 2
        total = 2.0 * bias[o]
        for c in range(E.shape[1]):
            for uy in range(weight.shape[2]):
                for ux in range(weight.shape[2]):
                    if Y + uy - r >= 0 and X + ux - r >= 0:
                        total += weight[o, c, uy, ux] * (read_or_zero(E, n, c, Y + uy - r, X + ux - r)
                                                         + read_or_zero(D, n, c, Y // scale + uy - r,
                                                                        X // scale + ux - r))
        out[n, o, Y, X] = total


@cuda.jit
def semi_shift_skipping_nan_weights(E, D, weight, bias, out, scale):
    # Skips by the weight's value, not by where the tap lies: a nan read inside the maps is dropped too.
    i = cuda.grid(1)
    if i < out.size:
        X, Y = i % out.shape[3], (i // out.shape[3]) % out.shape[2]
        o, n = (i // (out.shape[3] * out.shape[2])) % out.shape[1], i // (out.shape[3] * out.shape[2] * out.shape[1])
        r = weight.shape[2] // 2
        total = 2.0 * bias[o]
        for c in range(E.shape[1]):
            for uy in range(weight.shape[2]):
                for ux in range(weight.shape[2]):
                    value = weight[o, c, uy, ux]
                    if value == value:
                        total += value * (read_or_zero(E, n, c, Y + uy - r, X + ux - r)
                                          + read_or_zero(D, n, c, Y // scale + uy - r, X // scale + ux - r))
        out[n, o, Y, X] = total


@cuda.jit
def grad_en_skipping_past_the_end_only(grad_out, weight, grad_en):
    i = cuda.grid(1)
    if i < grad_en.size:
        X, Y = i % grad_en.shape[3], (i // grad_en.shape[3]) % grad_en.shape[2]
        c = (i // (grad_en.shape[3] * grad_en.shape[2])) % grad_en.shape[1]
        n = i // (grad_en.shape[3] * grad_en.shape[2] * grad_en.shape[1])
        r = weight.shape[2] // 2
        total = 0.0
        for o in range(weight.shape[0]):
            for uy in range(weight.shape[2]):
                for ux in range(weight.shape[2]):
                    if Y - uy + r < grad_out.shape[2] and X - ux + r < grad_out.shape[3]:
                        total += weight[o, c, uy, ux] * read_or_zero(grad_out, n, o, Y - uy + r, X - ux + r)
        grad_en[n, c, Y, X] = total


@cuda.jit
def grad_weight_skipping_nan_gradients(grad_out, E, D, grad_weight, scale):
    i = cuda.grid(1)
    if i < grad_weight.size:
        size = grad_weight.shape[2]
        ux, uy = i % size, (i // size) % size
        c, o = (i // (size * size)) % grad_weight.shape[1], i // (size * size * grad_weight.shape[1])
        r = size // 2
        total = 0.0
        for n in range(grad_out.shape[0]):
            for Y in range(grad_out.shape[2]):
                for X in range(grad_out.shape[3]):
                    g = grad_out[n, o, Y, X]
                    if g == g:
                        total += g * (read_or_zero(E, n, c, Y + uy - r, X + ux - r)
                                      + read_or_zero(D, n, c, Y // scale + uy - r, X // scale + ux - r))
        grad_weight[o, c, uy, ux] = total


@pytest.mark.parametrize("check, kernel, message", [
    (checkers.check_semi_shift_kernel, semi_shift_skipping_negative_indices_only,
     r"a weight that is nan at tap \(2, 2\), which lies outside the maps for this element"),
    (checkers.check_semi_shift_grad_en_kernel, grad_en_skipping_past_the_end_only,
     r"a weight that is nan at tap \(2, 2\), which lies outside the maps.*\n.*all four of its borders"),
    (checkers.check_semi_shift_kernel, semi_shift_skipping_nan_weights,
     r"(?s)a weight that is nan at tap \(0, 0\); it should be nan.*never by its value"),
    (checkers.check_semi_shift_grad_weight_kernel, grad_weight_skipping_nan_gradients,
     r"(?s)grad_out nan at output \(0, 0\); it should be nan.*never by its value"),
], ids=["two borders of 05.3", "two borders of 05.4", "nan weights skipped", "nan gradients skipped"])
def test_skipping_by_half_the_borders_or_by_the_value_is_told(check, kernel, message):
    with pytest.raises(checkers.CheckFailed, match=message):
        check(kernel)


@pytest.mark.parametrize("check, kernel, message", [
    (checkers.check_semi_shift_kernel, semi_shift_zero_padded,
     r"out\(0, 0, 0, 0\) is nan .*a weight that is nan at tap \(0, 0\), which lies outside the maps for this "
     r"element\.\nHint: a tap that reads outside both maps is skipped, not multiplied by read_or_zero's zeros"),
    (checkers.check_semi_shift_grad_en_kernel, grad_en_zero_padded,
     r"grad_en\(0, 0, 0, 7\) is nan .*a weight that is nan at tap \(0, 0\).*\nHint: skip the outputs outside "
     r"the map"),
    (checkers.check_semi_shift_grad_weight_kernel, grad_weight_zero_padded,
     r"grad_weight\(0, 0, 0, 0\) is nan .*grad_out nan at output \(0, 0\), whose tap \(uy, ux\) reads outside "
     r"both maps\.\nHint: skip an output whose tap reads outside both maps"),
], ids=["semi_shift_kernel", "grad_en", "grad_weight"])
def test_zero_padding_by_multiplication_is_told_to_skip_the_tap(check, kernel, message):
    # Right on finite values (the lesson's earlier answers): only a nan where the spec skips tells them apart.
    with pytest.raises(checkers.CheckFailed, match=message):
        check(kernel)


def test_unsolved_exercise_reports_not_implemented():
    def unsolved(*args):
        raise NotImplementedError("Exercise 05.1: write this part")

    with pytest.raises(NotImplementedError, match="Exercise 05.1"):
        checkers.check_semi_shift_two_convs(unsolved)


# --------------------------------------------------------------------------
# Wrong answers get a useful message
# --------------------------------------------------------------------------


def test_conv_over_the_upsampled_decoder_is_named():
    def over_upsampled(E, D, weight, bias, scale):
        pad = weight.shape[2] // 2
        return (F.conv2d(E, weight, bias, padding=pad)
                + F.conv2d(F.interpolate(D, scale_factor=scale), weight, bias, padding=pad))

    with pytest.raises(checkers.CheckFailed, match=r"convolution over nearest_up\(D\).*Y // s"):
        checkers.check_semi_shift_two_convs(over_upsampled)


@pytest.mark.parametrize("mistake, message", [
    (lambda E, D, W, b, s: two_convs(E, D, W, b, s) - b[None, :, None, None], "added twice"),
    (lambda E, D, W, b, s: F.conv2d(E, W, b, padding=W.shape[2] // 2) + F.interpolate(
        F.conv2d(D, W, b, padding=W.shape[2] // 2), scale_factor=s, mode="bilinear"), "mode='nearest'"),
    (lambda E, D, W, b, s: F.conv2d(E, W, b, padding=W.shape[2] // 2), "only the encoder window"),
    (lambda E, D, W, b, s: F.conv2d(E, W, b), "pad both convolutions"),
])
def test_two_convs_mistakes_are_explained(mistake, message):
    with pytest.raises(checkers.CheckFailed, match=message):
        checkers.check_semi_shift_two_convs(mistake)


def test_pixel_reading_index_minus_one_gets_the_border_hint():
    def no_lower_check(*args):
        return pixel(*args, check_low=False)

    with pytest.raises(checkers.CheckFailed, match="border of the map.*index -1"):
        checkers.check_semi_shift_pixel(no_lower_check)


def test_pixel_must_return_a_number():
    with pytest.raises(checkers.CheckFailed, match="expected a number"):
        checkers.check_semi_shift_pixel(lambda *args: [pixel(*args)])


@cuda.jit
def upsampled_kernel(E, D, weight, bias, out, scale):
    i = cuda.grid(1)
    if i < out.size:
        X = i % out.shape[3]
        Y = (i // out.shape[3]) % out.shape[2]
        o = (i // (out.shape[3] * out.shape[2])) % out.shape[1]
        n = i // (out.shape[3] * out.shape[2] * out.shape[1])
        r = weight.shape[2] // 2
        total = 2.0 * bias[o]
        for c in range(E.shape[1]):
            for uy in range(weight.shape[2]):
                for ux in range(weight.shape[2]):
                    row, col = Y + uy - r, X + ux - r
                    if 0 <= row < out.shape[2] and 0 <= col < out.shape[3]:
                        total += weight[o, c, uy, ux] * (E[n, c, row, col] + D[n, c, row // scale, col // scale])
        out[n, o, Y, X] = total


@cuda.jit
def lazy_kernel(E, D, weight, bias, out, scale):
    i = cuda.grid(1)
    if i < out.size // 2:
        out.ravel()[i] = 0.0


def test_kernel_reading_the_upsampled_decoder_is_named():
    with pytest.raises(checkers.CheckFailed, match=r"nearest_up\(D\)"):
        checkers.check_semi_shift_kernel(upsampled_kernel)


def test_kernel_that_leaves_values_unwritten_is_told():
    with pytest.raises(checkers.CheckFailed, match="never written"):
        checkers.check_semi_shift_kernel(lazy_kernel)


@cuda.jit
def flipped_grad_en_kernel(grad_out, weight, grad_en):
    i = cuda.grid(1)
    if i < grad_en.size:
        X = i % grad_en.shape[3]
        Y = (i // grad_en.shape[3]) % grad_en.shape[2]
        c = (i // (grad_en.shape[3] * grad_en.shape[2])) % grad_en.shape[1]
        n = i // (grad_en.shape[3] * grad_en.shape[2] * grad_en.shape[1])
        r = weight.shape[2] // 2
        total = 0.0
        for o in range(weight.shape[0]):
            for uy in range(weight.shape[2]):
                for ux in range(weight.shape[2]):
                    total += weight[o, c, uy, ux] * read_or_zero(grad_out, n, o, Y + uy - r, X + ux - r)
        grad_en[n, c, Y, X] = total


@cuda.jit
def atomic_grad_en_kernel(grad_out, weight, grad_en):
    i = cuda.grid(1)
    if i < grad_en.size:
        cuda.atomic.add(grad_en.ravel(), i, 0.0)


def test_grad_en_mistakes_are_explained():
    with pytest.raises(checkers.CheckFailed, match="minus, not plus"):
        checkers.check_semi_shift_grad_en_kernel(flipped_grad_en_kernel)
    with pytest.raises(checkers.CheckFailed, match="gather"):
        checkers.check_semi_shift_grad_en_kernel(atomic_grad_en_kernel)


@cuda.jit
def unpooled_grad_de_kernel(grad_out, weight, grad_de, scale):
    i = cuda.grid(1)
    if i < grad_de.size:
        height, width = grad_de.shape[2], grad_de.shape[3]
        col = i % width
        row = (i // width) % height
        c = (i // (width * height)) % grad_de.shape[1]
        n = i // (width * height * grad_de.shape[1])
        r = weight.shape[2] // 2
        total = 0.0
        for uy in range(weight.shape[2]):
            for ux in range(weight.shape[2]):
                a, b = row - uy + r, col - ux + r
                if 0 <= a < height and 0 <= b < width:
                    for o in range(weight.shape[0]):
                        total += weight[o, c, uy, ux] * grad_out[n, o, a * scale, b * scale]
        grad_de[n, c, row, col] = total


def test_grad_de_that_forgets_the_pooling_is_told():
    with pytest.raises(checkers.CheckFailed, match="s x s outputs attached"):
        checkers.check_semi_shift_grad_de_kernel(unpooled_grad_de_kernel)


@cuda.jit
def encoder_only_grad_weight_kernel(grad_out, E, D, grad_weight, scale):
    i = cuda.grid(1)
    if i < grad_weight.size:
        size = grad_weight.shape[2]
        ux = i % size
        uy = (i // size) % size
        c = (i // (size * size)) % grad_weight.shape[1]
        o = i // (size * size * grad_weight.shape[1])
        r = size // 2
        total = 0.0
        for n in range(grad_out.shape[0]):
            for Y in range(grad_out.shape[2]):
                for X in range(grad_out.shape[3]):
                    total += grad_out[n, o, Y, X] * read_or_zero(E, n, c, Y + uy - r, X + ux - r)
        grad_weight[o, c, uy, ux] = total


def test_grad_weight_that_forgets_the_decoder_is_told():
    with pytest.raises(checkers.CheckFailed, match="only the encoder window"):
        checkers.check_semi_shift_grad_weight_kernel(encoder_only_grad_weight_kernel)


def test_function_mistakes_are_explained():
    with pytest.raises(checkers.CheckFailed, match="half what it should be"):
        checkers.check_semi_shift_function(make_function(bias_factor=1))
    with pytest.raises(checkers.CheckFailed, match="one gradient per input"):
        checkers.check_semi_shift_function(make_function(drop_last_none=True))


def test_fade_forward_mistakes_are_explained():
    with pytest.raises(checkers.CheckFailed, match="other way round"):
        checkers.check_fade_forward(lambda m, en, de: fade_forward(m, en, de, swap_gate=True))
    with pytest.raises(checkers.CheckFailed, match="depthwise"):
        checkers.check_fade_forward(lambda m, en, de: fade_forward(m, en, de, groups=False))


def test_checker_cases_do_not_touch_the_global_random_state():
    state = torch.random.get_rng_state()
    checkers.check_fade_forward(fade_forward)
    assert torch.equal(state, torch.random.get_rng_state())

"""The cpu backend's fast paths (issue 14): the interpolate loops (runs of
copied rows, separable bilinear in bands, the nearest backward as a gather,
the bilinear backward separable), the CARAFE forward's register sums and the
semi-shift convolution on PyTorch's convolutions. Each agrees with its reference to float rounding (nearest: bit
for bit), in float32 and float64, with gradients to any order; the sizes
cross the loops' band and run boundaries."""

import itertools

import pytest
import torch
import torch.nn.functional as F

import upsamplelib as ul
import upsamplelib.ops.carafe as carafe_module
import upsamplelib.ops.fade as fade_module
from upsamplelib.layout import SMALLEST_FAST_COPY
from upsamplelib.ops.carafe import WEIGHTS_CHUNK, carafe_reference, register_passes
from upsamplelib.ops.fade import one_pass_semi_shift_cpu, semi_shift_conv_reference
from upsamplelib.ops.interpolate import BAND_ROWS

# Larger than a band, not multiples of it; up- and downsampling, integer
# factors (the fixed-stride loops) and fractional ones (the general loops).
SIZES = [(2 * BAND_ROWS + 5, 37, {"scale_factor": 2}), (BAND_ROWS + 3, 20, {"scale_factor": 3}),
         (45, 29, {"scale_factor": 1.7}), (70, 41, {"scale_factor": 0.6}), (33, 18, {"size": (100, 7)}),
         (40, 40, {"size": (40, 40)}), (9, 70, {"size": (81, 140)})]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode", ["nearest", "nearest-exact"])
def test_nearest_forward_and_backward_bit_for_bit(mode, dtype):
    for h, w, kwargs in SIZES:
        x = torch.randn(2, 3, h, w, dtype=dtype, requires_grad=True)
        expected = F.interpolate(x, mode=mode, **kwargs)
        got = ul.interpolate(x, mode=mode, backend="cpu", **kwargs)
        assert torch.equal(got, expected), (h, w, kwargs)
        grad = torch.randn_like(expected)
        (g_expected,) = torch.autograd.grad(expected, x, grad)
        (g_got,) = torch.autograd.grad(got, x, grad)
        assert torch.equal(g_got, g_expected), (h, w, kwargs)


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-6), (torch.float64, 1e-14)])
def test_carafe_forward_register_sums_match_reference(dtype, tolerance):
    """The cpu forward sums two channels of two output rows at a time (an
    even scale) or four channels of one row (an odd scale), then the rest
    one by one; it multiplies the zero padding where the masks there are finite,
    and sums a row again, leaving the padding out, where they are not.
    Groups of one or two channels take the slot-by-slot loop for every row."""
    g = torch.Generator().manual_seed(0)
    # (k, scale, group, channels, h, w): 9, 7, 1, 5, 8, 2 and 3 channels per group; odd scales 3 and 1 with
    # 5 and 8 channels, even scales 2 and 4 with 9, 7, 5, 4 and 3
    for k, s, group, channels, h, w in [(5, 2, 1, 9, 6, 7), (3, 2, 2, 14, 4, 5), (7, 3, 3, 3, 3, 4), (1, 2, 1, 5, 3, 3),
                                        (5, 1, 1, 8, 5, 5), (5, 2, 2, 4, 4, 3), (3, 2, 2, 6, 3, 4), (3, 3, 1, 5, 3, 4),
                                        (5, 4, 1, 3, 3, 2), (3, 2, 2, 8, 3, 4)]:
        x = torch.randn(2, channels, h, w, generator=g, dtype=dtype)
        masks = torch.softmax(torch.randn(2, group * k * k, s * h, s * w, generator=g, dtype=dtype), 1)
        masks[0, 0, 0, 1] = float("nan")  # slot (0, 0) of a top-left output reads padding (for k > 1)
        masks[1, -1, s * h // 2, s * w // 2] = float("inf")
        got = ul.carafe(x, masks, k, s, group, backend="cpu")
        expected = carafe_reference(x, masks, k, s, group)
        torch.testing.assert_close(got, expected, rtol=tolerance, atol=tolerance, equal_nan=True)
        assert torch.equal(got.isnan(), expected.isnan()), (k, s, group, channels)



@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_carafe_forward_windows_above_5x5_in_passes(dtype, monkeypatch):
    """A window of more than REGISTER_SUMS_MOST_SLOTS slots is summed in
    passes of whole window rows, each starting from the last one's sums in
    the other array: an odd and an even number of passes, and a last pass
    shorter than the others, give the slot-by-slot loop's sums bit for bit
    (the same order of additions), non-finite masks included."""
    g = torch.Generator().manual_seed(2)
    # (k, scale, group, channels, h, w): 3 passes (3, 3, 1 rows), 5 (2, 2, 2, 2, 1), 6 (2 rows each but the last)
    for k, s, group, channels, h, w in [(7, 2, 1, 5, 5, 37), (9, 3, 2, 8, 4, 6), (11, 1, 1, 3, 6, 7)]:
        assert len(register_passes(k)) == {7: 3, 9: 5, 11: 6}[k]
        x = torch.randn(2, channels, h, w, generator=g, dtype=dtype)
        masks = torch.softmax(torch.randn(2, group * k * k, s * h, s * w, generator=g, dtype=dtype), 1)
        masks[0, k * k // 2, 1, s * w - 2] = float("inf")  # the centre slot reads the map
        masks[1, 0, 0, 0] = float("nan")  # slot (0, 0) of the top-left output reads padding
        got = ul.carafe(x, masks, k, s, group, backend="cpu")
        torch.testing.assert_close(got, carafe_reference(x, masks, k, s, group), rtol=1e-6, atol=1e-6, equal_nan=True)
        monkeypatch.setattr(carafe_module, "REGISTER_SUMS_FEWEST_CHANNELS", 10 ** 6)  # every row slot by slot
        by_slot = ul.carafe(x, masks, k, s, group, backend="cpu")
        monkeypatch.undo()
        assert torch.equal(got.isnan(), by_slot.isnan()) and torch.equal(got.nan_to_num(), by_slot.nan_to_num()), k

@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-6), (torch.float64, 1e-14)])
def test_carafe_forward_rows_wider_than_a_weights_chunk(dtype, tolerance):
    """The register loop copies a line's mask values into a buffer
    WEIGHTS_CHUNK columns at a time: rows of several chunks, a last chunk
    shorter than the others, and non-finite mask values in a later chunk
    still match the reference: one where its slot reads the map (the
    register loop sums it), one where it reads the padding (that line is
    redone slot by slot)."""
    g = torch.Generator().manual_seed(1)
    # (k, scale, group, channels, h, w): even scales with two channels and one left over, odd with four and one
    for k, s, group, channels, h, w in [(5, 2, 1, 5, 3, WEIGHTS_CHUNK // 2 + 5), (3, 3, 2, 10, 2, WEIGHTS_CHUNK // 3 + 2),
                                        (5, 1, 1, 4, 3, 2 * WEIGHTS_CHUNK + 3), (3, 4, 1, 3, 2, WEIGHTS_CHUNK // 2 - 1)]:
        x = torch.randn(2, channels, h, w, generator=g, dtype=dtype)
        masks = torch.softmax(torch.randn(2, group * k * k, s * h, s * w, generator=g, dtype=dtype), 1)
        masks[1, k * k - 1, s * h - 1, s * w - 1] = float("nan")  # slot (k-1, k-1) of the bottom-right output
        masks[0, k * k // 2, 1, min(WEIGHTS_CHUNK + 5, s * w - 1)] = float("inf")  # the centre slot reads the map
        got = ul.carafe(x, masks, k, s, group, backend="cpu")
        expected = carafe_reference(x, masks, k, s, group)
        torch.testing.assert_close(got, expected, rtol=tolerance, atol=tolerance, equal_nan=True)
        assert torch.equal(got.isnan(), expected.isnan()), (k, s, group, channels)


def test_carafe_window_wider_than_map_keeps_nan_padding_out():
    """k = 7 on a map 2 wide: slot dx = 6 of output column 0 reads column 3,
    outside the map, and never reads inside. Its range of inside outputs
    is empty; it once came out with a negative end, and the slice wrapped
    around to let the NaN mask through (forward and mask gradient)."""
    k, s, h, w = 7, 1, 2, 2
    x = torch.ones(1, 1, h, w, dtype=torch.float64)
    masks = torch.full((1, k * k, h, w), 0.1, dtype=torch.float64)
    masks[0, 3 * k + 6, 0, 0] = float("nan")
    expected = carafe_reference(x, masks, k, s)
    assert not expected.isnan().any()
    assert torch.equal(ul.carafe(x, masks, k, s, backend="cpu"), expected)
    masks = masks.nan_to_num(0.1).requires_grad_()
    grad = torch.ones(1, 1, s * h, s * w, dtype=torch.float64)
    grad[0, 0, 0, 0] = float("nan")
    (got,) = torch.autograd.grad(ul.carafe(x, masks, k, s, backend="cpu"), masks, grad)
    (want,) = torch.autograd.grad(carafe_reference(x, masks, k, s), masks, grad)
    assert torch.equal(got.isnan(), want.isnan())


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("align_corners", [False, True])
def test_bilinear_forward_and_backward_match_torch(align_corners, dtype, tolerance):
    for h, w, kwargs in SIZES:
        x = torch.randn(2, 3, h, w, dtype=dtype, requires_grad=True)
        expected = F.interpolate(x, mode="bilinear", align_corners=align_corners, **kwargs)
        got = ul.interpolate(x, mode="bilinear", align_corners=align_corners, backend="cpu", **kwargs)
        torch.testing.assert_close(got, expected, rtol=tolerance, atol=tolerance, msg=str((h, w, kwargs)))
        grad = torch.randn_like(expected)
        (g_expected,) = torch.autograd.grad(expected, x, grad)
        (g_got,) = torch.autograd.grad(got, x, grad)
        torch.testing.assert_close(g_got, g_expected, rtol=tolerance, atol=tolerance, msg=str((h, w, kwargs)))


@pytest.mark.parametrize("align_corners", [False, True])
def test_bilinear_forward_float32_equals_torch_at_scale_2(align_corners):
    # The separable loop makes PyTorch's lerps in PyTorch's order (x, then y),
    # with its column pairs at twice the width (widths from 3; border columns and all).
    for width in (1, 2, 3, 4, 50, 129):
        x = torch.randn(1, 4, 2 * BAND_ROWS + 3, width)
        assert torch.equal(
            ul.interpolate(x, scale_factor=2, mode="bilinear", align_corners=align_corners, backend="cpu"),
            F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=align_corners)), width


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_interpolate_gradgradcheck_across_bands(mode):
    x = torch.randn(1, 1, BAND_ROWS + 2, 3, dtype=torch.float64, requires_grad=True)
    function = lambda t: ul.interpolate(t, scale_factor=2, mode=mode, backend="cpu")  # noqa: E731
    assert torch.autograd.gradcheck(function, (x,))
    assert torch.autograd.gradgradcheck(function, (x,))


def _semi_shift_inputs(c=4, h=5, w=6, s=2, o=3, k=3, groups=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(c * 100 + h * 10 + k)
    return [torch.randn(*shape, generator=g, dtype=dtype)
            for shape in ((2, c, s * h, s * w), (2, c, h, w), (o, c // groups, k, k), (o,))]


SEMI_SHIFT_CASES = [dict(), dict(k=1), dict(k=5, s=3), dict(s=1), dict(c=6, o=6, groups=6), dict(c=4, o=6, groups=2)]


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("case", SEMI_SHIFT_CASES, ids=str)
def test_semi_shift_fast_path_matches_reference_and_one_pass_loop(case, dtype, tolerance):
    en, de, weight, bias = _semi_shift_inputs(dtype=dtype, **case)
    s, groups = case.get("s", 2), case.get("groups", 1)
    fast = ul.semi_shift_conv(en, de, weight, bias, s, backend="cpu", groups=groups)
    torch.testing.assert_close(fast, semi_shift_conv_reference(en, de, weight, bias, s, groups),
                               rtol=tolerance, atol=tolerance)
    torch.testing.assert_close(fast, one_pass_semi_shift_cpu(en, de, weight, bias, s, groups),
                               rtol=tolerance, atol=tolerance)
    # Either map absent (the higher-order derivatives' calls).
    ops = torch.ops.upsamplelib
    for left, right in ((en, None), (None, de)):
        torch.testing.assert_close(ops.semi_shift_conv(left, right, weight, bias, s, groups, "cpu", False),
                                   one_pass_semi_shift_cpu(left, right, weight, bias, s, groups),
                                   rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-4), (torch.float64, 1e-11)])
@pytest.mark.parametrize("case", SEMI_SHIFT_CASES, ids=str)
def test_semi_shift_fast_gradients_match_reference(case, dtype, tolerance):
    tensors = [t.requires_grad_() for t in _semi_shift_inputs(dtype=dtype, **case)]
    s, groups = case.get("s", 2), case.get("groups", 1)
    expected = semi_shift_conv_reference(*tensors, s, groups)
    got = ul.semi_shift_conv(*tensors, s, backend="cpu", groups=groups)
    grad = torch.randn_like(expected)
    for g_got, g_expected in zip(torch.autograd.grad(got, tensors, grad),
                                 torch.autograd.grad(expected, tensors, grad)):
        torch.testing.assert_close(g_got, g_expected, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("en_layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("bad_weight", [False, True], ids=["fast path", "one-pass loops"])
def test_semi_shift_cpu_path_takes_any_layout_and_returns_ens(en_layout, bad_weight):
    # The cpu path runs its convolutions channels-last; it returns its result in the layout of the map
    # that sets the output's size, as PyTorch's convolutions do: channels-last for a channels-last en.
    en, de, weight, bias = _semi_shift_inputs(c=5, h=3, w=11, o=7)
    if bad_weight:
        weight[1, 2, 0, 1] = float("inf")
    de_transposed_strides = de.transpose(2, 3).contiguous().transpose(2, 3)
    inputs = [en.contiguous(memory_format=en_layout), de_transposed_strides,
              weight.contiguous(memory_format=torch.channels_last), bias]
    tensors = [t.detach().requires_grad_() for t in inputs]
    out = ul.semi_shift_conv(*tensors, 2, backend="cpu")
    assert out.stride() == torch.empty(out.shape, memory_format=en_layout).stride()
    # The same values as from NCHW maps (an Inf weight: the one-pass loop's NaN and Inf included), and
    # those of the reference where the weight is finite.
    reference_leaves = [t.detach().requires_grad_() for t in (en, de, weight, bias)]
    expected = (ul.semi_shift_conv(*reference_leaves, 2, backend="cpu") if bad_weight
                else semi_shift_conv_reference(*reference_leaves, 2))
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12, equal_nan=True)
    grad = torch.randn_like(out)
    for got, want in zip(torch.autograd.grad(out, tensors, grad), torch.autograd.grad(expected, reference_leaves, grad)):
        torch.testing.assert_close(got, want, rtol=1e-11, atol=1e-11, equal_nan=True)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("scale", [2, 3])
def test_semi_shift_cpu_gradients_for_every_set_of_inputs_needing_one(layout, scale):
    # The cpu backward sums grad_out over each s x s block once, for the decoder's gradients, and takes
    # the bias's gradient from that sum when it has one, else from grad_out: each set takes its branch.
    en, de, weight, bias = _semi_shift_inputs(c=5, h=3, w=4, s=scale, o=7)
    en, de = en.contiguous(memory_format=layout), de.contiguous(memory_format=layout)
    grad = torch.randn(2, 7, 3 * scale, 4 * scale, dtype=torch.float64)
    for needs in itertools.product([False, True], repeat=4):
        if not any(needs):
            continue
        leaves = [t.detach().requires_grad_(need) for t, need in zip((en, de, weight, bias), needs)]
        wanted = [leaf for leaf in leaves if leaf.requires_grad]
        got = torch.autograd.grad(ul.semi_shift_conv(*leaves, scale, backend="cpu"), wanted, grad)
        want = torch.autograd.grad(semi_shift_conv_reference(*leaves, scale), wanted, grad)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12, msg=lambda m: f"{needs}: {m}")


def test_semi_shift_cpu_bias_gradient_of_overflowing_blocks_is_the_references_for_every_set():
    # Finite grad_out values whose 2 x 2 block sums overflow (+Inf and -Inf; their total is 0): the bias's
    # gradient is NaN on the reference, which sums the blocks, and so on the cpu backend, whichever of the
    # other inputs need a gradient (review of 61b392e: with the bias alone it was 0).
    en, de, weight, bias = (t.float() for t in _semi_shift_inputs(c=2, h=2, w=2, o=1))
    grad = torch.zeros(2, 1, 4, 4)
    grad[:, 0, :2, :2], grad[:, 0, :2, 2:] = 1.5e38, -1.5e38
    for needs in itertools.product([False, True], repeat=3):
        leaves = [t.detach().requires_grad_(need) for t, need in zip((en, de, weight, bias), needs + (True,))]
        got = torch.autograd.grad(ul.semi_shift_conv(*leaves, 2, backend="cpu"), leaves[3], grad)[0]
        want = torch.autograd.grad(ul.semi_shift_conv(*leaves, 2, backend="torch"), leaves[3], grad)[0]
        assert want.isnan().all() and got.isnan().all(), needs


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["NCHW", "channels-last"])
def test_semi_shift_cpu_bias_gradient_sums_in_one_order_whichever_maps_need_a_gradient(layout):
    # The block sums come from grad_out's channels-last copy when en needs a gradient: the bias's total is
    # still summed in grad_out's layout, so its rounding, and NaN against a number where finite block sums
    # overflow in the total, do not depend on en (review of e6f4aff: 0.0 with en's gradient, NaN without,
    # NaN on the reference).
    torch.manual_seed(3)
    en, de = torch.randn(1, 8, 8, 32), torch.randn(1, 8, 4, 16)
    weight, bias = torch.randn(4, 8, 3, 3), torch.randn(4)
    overflowing = torch.zeros(1, 4, 8, 32)
    for pixel, value in ((0, 3e38), (1, -3e38), (8, 3e38), (9, -3e38)):  # one value a block: exact block sums
        overflowing[0, :, 2 * (pixel // 16), 2 * (pixel % 16)] = value
    for grad in (overflowing, 1e3 * torch.randn(1, 4, 8, 32)):
        grad = grad.contiguous(memory_format=layout)
        biases = {}
        for backend, en_needs in (("cpu", False), ("cpu", True), ("torch", True)):
            leaves = [en.clone().requires_grad_(en_needs), de.clone().requires_grad_(), weight,
                      bias.clone().requires_grad_()]
            out = ul.semi_shift_conv(*leaves, 2, backend=backend)
            biases[backend, en_needs] = torch.autograd.grad(out, leaves[3], grad)[0]
        assert torch.equal(biases["cpu", False].nan_to_num(), biases["cpu", True].nan_to_num())
        assert torch.equal(biases["cpu", True].isnan(), biases["torch", True].isnan())
    assert biases["cpu", True].isfinite().all()  # the random grad_out's
    assert torch.equal(biases["cpu", False], biases["cpu", True])


def test_semi_shift_output_takes_ens_layout_on_the_cpu_backend_only():
    # en sets the output's size, and its layout; a one-channel map is NCHW too, and stays so.
    en, de, weight, bias = _semi_shift_inputs(c=4, o=3)
    last = lambda t: t.contiguous(memory_format=torch.channels_last)  # noqa: E731
    cpu = ul.semi_shift_conv(last(en), de, weight, bias, 2, backend="cpu")
    assert cpu.is_contiguous(memory_format=torch.channels_last) and not cpu.is_contiguous()
    assert F.conv2d(last(en), weight, padding=1).is_contiguous(memory_format=torch.channels_last)  # as this does
    torch.testing.assert_close(cpu, semi_shift_conv_reference(en, de, weight, bias, 2), rtol=1e-12, atol=1e-12)
    assert ul.semi_shift_conv(en, last(de), weight, bias, 2, backend="cpu").is_contiguous()
    one_channel = ul.semi_shift_conv(last(en[:, :1]), de[:, :1], weight[:, :1], bias, 2, backend="cpu")
    assert one_channel.is_contiguous()
    if ul.backend.SIMULATOR:
        assert ul.semi_shift_conv(last(en), de, weight, bias, 2, backend="cuda").is_contiguous()


@pytest.mark.parametrize("bad_weight", [False, True], ids=["fast path", "one-pass loops"])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_semi_shift_gradients_come_back_in_each_maps_layout(layout, bad_weight):
    # As PyTorch's convolutions give them: autograd would otherwise copy them into a leaf's layout.
    en, de, weight, bias = _semi_shift_inputs(c=8, h=8, w=8, o=4)
    if bad_weight:
        weight[0, 0, 0, 0] = float("nan")
    grad = torch.randn(2, 4, 16, 16, dtype=en.dtype)
    leaves = [t.requires_grad_() for t in (en, de)]
    expected = torch.autograd.grad(ul.semi_shift_conv(*leaves, weight, bias, 2, backend="torch"), leaves, grad)
    maps = [t.detach().contiguous(memory_format=layout).requires_grad_() for t in (en, de)]
    got = torch.autograd.grad(ul.semi_shift_conv(*maps, weight, bias, 2, backend="cpu"), maps, grad)
    for got_grad, expected_grad, leaf in zip(got, expected, maps):
        assert got_grad.stride() == leaf.stride()
        torch.testing.assert_close(got_grad, expected_grad, rtol=1e-11, atol=1e-11, equal_nan=True)


@pytest.mark.parametrize("de_layout", [torch.contiguous_format, torch.channels_last], ids=["de NCHW", "de ch-last"])
@pytest.mark.parametrize("en_layout", [torch.contiguous_format, torch.channels_last], ids=["en NCHW", "en ch-last"])
def test_semi_shift_second_order_gradients_come_back_in_each_maps_layout(en_layout, de_layout):
    # Through the weight gradient's own derivative (the maps' share of d/d(map) of a function of d/dW).
    en, de, weight, bias = _semi_shift_inputs(c=8, h=8, w=8, o=4)
    grads = {}
    for backend, layouts in (("torch", (torch.contiguous_format,) * 2), ("cpu", (en_layout, de_layout))):
        maps = [t.detach().contiguous(memory_format=layout).requires_grad_() for t, layout in zip((en, de), layouts)]
        leaves = maps + [weight.detach().requires_grad_()]
        out = ul.semi_shift_conv(*leaves, bias, 2, backend=backend)
        (grad_weight,) = torch.autograd.grad(out.square().sum(), leaves[2], create_graph=True)
        grads[backend] = torch.autograd.grad(grad_weight.square().sum(), maps)
        if backend == "cpu":
            assert [g.stride() for g in grads[backend]] == [t.stride() for t in maps]
    for got, expected in zip(grads["cpu"], grads["torch"]):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("channels,outputs", [(1, 3), (4, 1)])
def test_semi_shift_fast_path_strides_are_the_fake_implementations(channels, outputs):
    # A one-channel map is both channels-last and NCHW; the convolutions' results may have other
    # strides in its size-1 dimensions than the ones the ops' fake implementations promise: the
    # usual NCHW ones for the forward, channels-last ones for the input gradients.
    en, de, weight, bias = (t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t
                            for t in _semi_shift_inputs(c=channels, o=outputs))
    ops = torch.ops.upsamplelib
    grad = torch.randn(2, outputs, en.shape[2], en.shape[3], dtype=en.dtype)
    grad = grad.contiguous(memory_format=torch.channels_last)
    for result in (ops.semi_shift_conv(en, None, weight, bias, 2, 1, "cpu", False),
                   ops.semi_shift_conv(None, de, weight, bias, 2, 1, "cpu", False),
                   ops.semi_shift_conv(en.contiguous(), de.contiguous(), weight, bias, 2, 1, "cpu", False)):
        assert result.stride() == torch.empty(result.shape).stride()
    for result in (ops.semi_shift_conv(en, None, weight, bias, 2, 1, "cpu", True),
                   ops.semi_shift_conv(None, de, weight, bias, 2, 1, "cpu", True),
                   ops.semi_shift_conv(en, de, weight, bias, 2, 1, "cpu", True)):
        assert result.stride() == torch.empty(result.shape, memory_format=torch.channels_last).stride()
    for result in (ops.semi_shift_conv_encoder_grad(grad, weight, 1, "cpu"),
                   ops.semi_shift_conv_decoder_grad(grad, weight, 2, 1, "cpu")):
        assert result.stride() == torch.empty(result.shape, memory_format=torch.channels_last).stride()


@pytest.mark.parametrize("capability", ["AVX2", "AVX512", "DEFAULT"])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["NCHW", "channels-last"])
def test_semi_shift_fast_path_runs_each_convolution_in_its_layout(layout, capability, monkeypatch):
    # The forward's convolutions take the maps as given (no copy of them), as the two-convolution form
    # does, and so does the weight gradient, except on an AVX2 CPU, where channels-last it took 1.4x its
    # NCHW time: there it runs NCHW. The input gradients' transposed convolutions run channels-last,
    # faster on every CPU measured, and so do the block sums.
    monkeypatch.setattr(fade_module, "_cpu_capability", lambda: capability)
    calls = []

    def spy(name, function):
        def recorded(*args, **kwargs):
            maps = [t for t in args if isinstance(t, torch.Tensor) and t.dim() == 4 and t.shape[2] > 3]
            calls.append((name, [t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
                                 for t in maps]))
            return function(*args, **kwargs)
        return recorded

    monkeypatch.setattr(F, "conv2d", spy("forward", F.conv2d))
    monkeypatch.setattr(F, "conv_transpose2d", spy("input grad", F.conv_transpose2d))
    monkeypatch.setattr(torch.nn.grad, "conv2d_weight", spy("weight grad", torch.nn.grad.conv2d_weight))
    monkeypatch.setattr(F, "avg_pool2d", spy("block sums", F.avg_pool2d))
    # en and grad_out large enough for the block transpose's copies (32,768 values, 8 channels)
    en, de, weight, bias = _semi_shift_inputs(c=8, h=16, w=32, o=8)
    assert en.numel() >= SMALLEST_FAST_COPY
    maps = [t.contiguous(memory_format=layout).requires_grad_() for t in (en, de)]
    leaves = maps + [weight.requires_grad_(), bias.requires_grad_()]
    out = ul.semi_shift_conv(*leaves, 2, backend="cpu")
    in_layout = layout == torch.channels_last
    assert calls == [("forward", [in_layout]), ("forward", [in_layout])]
    calls.clear()
    grad_out = torch.randn_like(out)  # values that differ: a copy in the wrong order cannot hide
    grads = torch.autograd.grad(out, leaves, grad_out)
    weight_grad_last = in_layout and capability != "AVX2"
    # The block sums of grad_out from the channels-last copy the transposed convolution takes: PyTorch's
    # pooling of an NCHW map took 5x as long on an AVX2 CPU.
    assert sorted(calls) == [("block sums", [True]), ("input grad", [True]), ("input grad", [True]),
                             ("weight grad", [weight_grad_last] * 2), ("weight grad", [weight_grad_last] * 2)]
    assert [g.stride() for g in grads[:2]] == [t.stride() for t in maps]
    expected = torch.autograd.grad(semi_shift_conv_reference(*leaves, 2), leaves, grad_out)
    for got, reference in zip(grads, expected):
        torch.testing.assert_close(got, reference, rtol=1e-10, atol=1e-10)


PADDED_FILTER_CASES = [dict(c=5, h=3, w=11, o=25), dict(c=3, h=4, w=9, o=17, s=3), dict(c=2, h=5, w=4, o=49, k=5)]


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["NCHW", "channels-last"])
@pytest.mark.parametrize("case", PADDED_FILTER_CASES, ids=str)
def test_semi_shift_padded_filters_give_the_references_values_and_gradients(case, layout, monkeypatch):
    # Where PyTorch's convolutions to more than 16 outputs run faster with their filters padded to a
    # multiple of 16 (AVX-512), the forward's convolutions run so; the padded channels must not reach the
    # result or any gradient. There the weight gradient runs channels-last, unpadded. Output counts and
    # widths that are not multiples of 8 take the transpose's edge loops; the result keeps en's layout.
    monkeypatch.setattr(fade_module, "_cpu_capability", lambda: "AVX512")
    monkeypatch.setattr(fade_module, "PADDED_FILTER_PIXELS", 1)  # small maps, to see every edge quickly
    filters = []
    conv2d, conv2d_weight = F.conv2d, torch.nn.grad.conv2d_weight

    def only_channels_last(*maps):
        return all(t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous() for t in maps)

    monkeypatch.setattr(F, "conv2d", lambda x, w, *a, **k: filters.append((w.shape[0], only_channels_last(w)))
                        or conv2d(x, w, *a, **k))
    monkeypatch.setattr(torch.nn.grad, "conv2d_weight", lambda x, shape, g, *a, **k: filters.append(
        (shape[0], only_channels_last(x, g))) or conv2d_weight(x, shape, g, *a, **k))
    s, outputs = case.get("s", 2), case["o"]
    inputs = _semi_shift_inputs(dtype=torch.float32, **case)
    leaves = [t.contiguous(memory_format=layout).requires_grad_() if t.dim() == 4 and t.shape[0] == 2
              else t.requires_grad_() for t in inputs]
    out = ul.semi_shift_conv(*leaves, s, backend="cpu")
    padded = -(-outputs // 16) * 16
    assert filters == [(padded, True), (padded, True)]
    assert out.stride() == torch.empty(out.shape, memory_format=layout).stride()
    exact = [t.detach().double().requires_grad_() for t in inputs]
    expected = semi_shift_conv_reference(*exact, s)
    torch.testing.assert_close(out, expected.float(), rtol=1e-5, atol=1e-5)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    filters.clear()
    grads = torch.autograd.grad(out, leaves, grad)
    assert filters == [(outputs, True), (outputs, True)]  # each map's share of the weight gradient
    for got, want in zip(grads, torch.autograd.grad(expected, exact, grad.double())):
        torch.testing.assert_close(got, want.float(), rtol=1e-4, atol=1e-4)


def test_semi_shift_padded_filters_second_order_gradients_match_reference(monkeypatch):
    # The derivatives of the gradients run the operators again, the padded forward among them.
    monkeypatch.setattr(fade_module, "_cpu_capability", lambda: "AVX512")
    monkeypatch.setattr(fade_module, "PADDED_FILTER_PIXELS", 1)
    inputs = _semi_shift_inputs(c=3, h=3, w=5, o=20, dtype=torch.float32)
    leaves = [t.detach().requires_grad_() for t in inputs]
    exact = [t.detach().double().requires_grad_() for t in inputs]
    second = []
    for tensors, function in ((leaves, lambda *t: ul.semi_shift_conv(*t, 2, backend="cpu")),
                              (exact, lambda *t: semi_shift_conv_reference(*t, 2))):
        out = function(*tensors)
        grads = torch.autograd.grad((out * out).sum(), tensors, create_graph=True)
        second.append(torch.autograd.grad(sum((g * g).sum() for g in grads), tensors))
    for got, want in zip(*second):
        torch.testing.assert_close(got, want.float(), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("kernel_size", [1, 3])
def test_semi_shift_weight_gradient_beside_padded_filters_is_a_tensor_of_its_own(kernel_size, monkeypatch):
    # An operator's result must not be a view (forward-mode AD asserts on it): a slice of a gradient taken
    # with padded filters would be one, when its layout puts the filters outermost (1 x 1 taps).
    monkeypatch.setattr(fade_module, "_cpu_capability", lambda: "AVX512")
    monkeypatch.setattr(fade_module, "PADDED_FILTER_PIXELS", 1)
    en, de, weight, _ = _semi_shift_inputs(c=3, o=25, k=kernel_size, dtype=torch.float32)
    grad = torch.randn(2, 25, en.shape[2], en.shape[3])
    result = torch.ops.upsamplelib.semi_shift_conv_weight_grad(grad, en, None, kernel_size, 1, 1, "cpu")
    assert result._base is None and result.shape == weight.shape and result.is_contiguous()


@pytest.mark.parametrize("capability,dtype,outputs,groups,pixels,padded", [
    ("AVX512", torch.float32, 25, 1, 4096, 32), ("AVX512", torch.float32, 33, 1, 16384, 48),
    ("AVX512", torch.float32, 64, 1, 4096, 64), ("AVX512", torch.float32, 25, 1, 4095, None),
    ("AVX512", torch.float32, 16, 1, 4096, None), ("AVX512", torch.float64, 25, 1, 4096, None),
    ("AVX512", torch.float32, 25, 25, 4096, None), ("AVX2", torch.float32, 25, 1, 4096, None),
    ("DEFAULT", torch.float32, 25, 1, 4096, None)])
def test_filters_are_padded_only_where_measured_faster(capability, dtype, outputs, groups, pixels, padded,
                                                       monkeypatch):
    # Only float32 (oneDNN's kernels), without groups, above 16 outputs (at 16 and below NCHW was the
    # fastest), from 64 x 64 pixels (below, the padding's fixed cost outweighed its gain), on AVX-512 (the
    # one instruction set measured).
    monkeypatch.setattr(fade_module, "_cpu_capability", lambda: capability)
    assert fade_module.padded_filter_count(outputs, groups, dtype, pixels) == padded


def test_semi_shift_fast_path_gradgradcheck():
    tensors = [t.requires_grad_() for t in _semi_shift_inputs(c=2, h=3, w=3, o=2)]
    function = lambda *t: ul.semi_shift_conv(*t, 2, backend="cpu")  # noqa: E731
    assert torch.autograd.gradcheck(function, tensors)
    assert torch.autograd.gradgradcheck(function, tensors)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_values_leave_the_fast_path(bad):
    # A padded zero times a NaN/Inf weight would poison the border; the one-pass
    # loops skip out-of-map taps instead (SPEC), and run for such weights.
    en, de, weight, bias = _semi_shift_inputs(dtype=torch.float32)
    weight[0, 0, 0, 0] = bad
    got = ul.semi_shift_conv(en, de, weight, bias, 2, backend="cpu")
    torch.testing.assert_close(got, one_pass_semi_shift_cpu(en, de, weight, bias, 2), rtol=0, atol=0,
                               equal_nan=True)
    # Non-finite where the reference is (an Inf weight meets E + D there, the
    # reference E and D apart, so an Inf may be a NaN on one side).
    expected = semi_shift_conv_reference(en, de, weight, bias, 2)
    assert torch.equal(got.isfinite(), expected.isfinite())
    assert got[0, 0, 0, 0].isfinite()  # the tap reads outside both maps there: skipped
    # The weight gradient: a NaN/Inf grad_out against the padding.
    tensors = [t.detach().requires_grad_() for t in _semi_shift_inputs(dtype=torch.float32)]
    out = ul.semi_shift_conv(*tensors, 2, backend="cpu")
    grad = torch.zeros_like(out)
    grad[0, 0, 0, 0] = bad
    (g_weight,) = torch.autograd.grad(out, tensors[2], grad)
    reference = semi_shift_conv_reference(*tensors, 2)
    (g_reference,) = torch.autograd.grad(reference, tensors[2], grad)
    assert torch.equal(g_weight.isfinite(), g_reference.isfinite())
    assert g_weight.isfinite().any()  # the taps that read outside the map at that corner stay finite

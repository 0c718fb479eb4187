"""ul.carafe and ul.CARAFE against the plain-PyTorch reference."""

import pytest
import torch
import torch.nn.functional as F

import upsamplelib as ul
from conftest import ALL_BACKENDS, KERNEL_BACKENDS, on
from upsamplelib.ops.carafe import carafe_reference, unravel4


def _inputs(n=1, c=4, h=5, w=6, k=3, s=2, g=1, dtype=torch.float64, requires_grad=False):
    x = torch.randn(n, c, h, w, dtype=dtype)
    logits = torch.randn(n, g, k * k, s * h, s * w, dtype=dtype)
    masks = F.softmax(logits, dim=2).view(n, g * k * k, s * h, s * w)
    return x.requires_grad_(requires_grad), masks.requires_grad_(requires_grad)


def _naive(x, masks, k, s, g):
    """The SPEC's formula, loop by loop (tiny sizes only)."""
    n, c, h, w = x.shape
    r = (k - 1) // 2
    out = torch.zeros(n, c, s * h, s * w, dtype=x.dtype)
    for b in range(n):
        for ch in range(c):
            group = ch // (c // g)
            for Y in range(s * h):
                for X in range(s * w):
                    total = 0.0
                    for dy in range(-r, r + 1):
                        for dx in range(-r, r + 1):
                            y, xx = Y // s + dy, X // s + dx
                            if 0 <= y < h and 0 <= xx < w:
                                t = (dy + r) * k + (dx + r)
                                total += masks[b, group * k * k + t, Y, X] * x[b, ch, y, xx]
                    out[b, ch, Y, X] = total
    return out


@pytest.mark.parametrize("k,s,g", [(1, 1, 1), (3, 2, 1), (5, 2, 2), (3, 3, 4), (5, 1, 1), (7, 2, 1)])
def test_reference_is_the_spec_formula(k, s, g):
    x, masks = _inputs(c=4, h=3, w=4, k=k, s=s, g=g)
    torch.testing.assert_close(carafe_reference(x, masks, k, s, g), _naive(x, masks, k, s, g))


@pytest.mark.parametrize("k,s,g", [(1, 1, 1), (3, 2, 1), (5, 2, 2), (3, 3, 4), (7, 1, 2), (5, 4, 1)])
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_backends_match_reference(k, s, g, backend):
    x, masks = _inputs(n=2, c=4, h=3, w=5, k=k, s=s, g=g)
    torch.testing.assert_close(on(backend, ul.carafe)(x, masks, k, s, g), carafe_reference(x, masks, k, s, g),
                               rtol=1e-12, atol=1e-12)


def test_cpu_matches_reference_at_realistic_size():
    x, masks = _inputs(n=2, c=32, h=20, w=17, k=5, s=2, g=4, dtype=torch.float32)
    torch.testing.assert_close(ul.carafe(x, masks, 5, 2, 4, backend="cpu"), carafe_reference(x, masks, 5, 2, 4),
                               rtol=1e-5, atol=1e-6)


def test_cpu_and_cuda_forward_agree_bit_for_bit():
    x, masks = _inputs(c=2, h=4, w=5, k=5, s=2, g=2, dtype=torch.float32)
    assert torch.equal(on("cpu", ul.carafe)(x, masks, 5, 2, 2), on("cuda", ul.carafe)(x, masks, 5, 2, 2))


@pytest.mark.parametrize("k,s,g", [(3, 2, 1), (5, 2, 2), (3, 3, 2)])
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_gradients_match_reference(k, s, g, backend):
    x, masks = _inputs(c=4, h=4, w=3, k=k, s=s, g=g, requires_grad=True)
    grad_out = torch.randn(1, 4, s * 4, s * 3, dtype=torch.float64)
    expected = torch.autograd.grad(carafe_reference(x, masks, k, s, g), (x, masks), grad_out)
    got = torch.autograd.grad(on(backend, ul.carafe)(x, masks, k, s, g), (x, masks), grad_out)
    for e, o in zip(expected, got):
        torch.testing.assert_close(o, e, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_gradcheck(backend):
    x, masks = _inputs(c=2, h=2, w=3, k=3, s=2, g=2, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: on(backend, ul.carafe)(a, b, 3, 2, 2), (x, masks))


def test_gradient_of_one_input_only():
    x, masks = _inputs(c=2, h=3, w=3, requires_grad=False)
    x.requires_grad_()
    ul.carafe(x, masks, 3, 2, backend="cpu").sum().backward()
    torch.testing.assert_close(x.grad, torch.autograd.grad(carafe_reference(x, masks, 3, 2).sum(), x)[0])


def test_border_weights_are_not_renormalised():
    """A constant map stays constant inside and loses the weight of the
    out-of-map neighbours at the border (zero padding)."""
    x = torch.ones(1, 1, 4, 4, dtype=torch.float64)
    masks = torch.full((1, 9, 8, 8), 1 / 9, dtype=torch.float64)
    out = ul.carafe(x, masks, 3, 2, backend="cpu")
    assert torch.allclose(out[0, 0, 2:6, 2:6], torch.ones(4, 4, dtype=torch.float64))
    assert torch.isclose(out[0, 0, 0, 0], torch.tensor(4 / 9, dtype=torch.float64))
    assert torch.isclose(out[0, 0, 0, 3], torch.tensor(6 / 9, dtype=torch.float64))


@pytest.mark.parametrize("x_dtype,mask_dtype,result", [
    (torch.float16, torch.float32, torch.float32),
    (torch.float32, torch.float16, torch.float32),
    (torch.bfloat16, torch.bfloat16, torch.bfloat16),
    (torch.float32, torch.float64, torch.float64),
])
def test_mixed_dtypes_promote(x_dtype, mask_dtype, result):
    x, masks = _inputs(c=2, h=3, w=3, dtype=torch.float32)
    x, masks = x.to(x_dtype), masks.to(mask_dtype)
    out = ul.carafe(x, masks, 3, 2, backend="cpu")
    assert out.dtype == result
    expected = carafe_reference(x.double(), masks.double(), 3, 2)
    torch.testing.assert_close(out.double(), expected, rtol=1e-2, atol=1e-2)
    x.requires_grad_()
    masks.requires_grad_()
    ul.carafe(x, masks, 3, 2, backend="cpu").sum().backward()
    assert x.grad.dtype == x_dtype and masks.grad.dtype == mask_dtype


def test_non_contiguous_and_channels_last():
    x, masks = _inputs(c=4, h=4, w=5, k=3, s=2, g=1)
    expected = carafe_reference(x, masks, 3, 2)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    masks_t = masks.transpose(2, 3).contiguous().transpose(2, 3)
    assert not masks_t.is_contiguous()
    torch.testing.assert_close(ul.carafe(x_cl, masks_t, 3, 2, backend="cpu"), expected)


def test_index_math_is_64_bit():
    """(2, 512, 2048, 2048) has 2**32 elements; no need to allocate it."""
    channels, height, width = 512, 2048, 2048
    for n, c, y, x in [(1, 511, 2047, 2047), (1, 300, 1234, 5), (0, 511, 2047, 2047)]:
        i = ((n * channels + c) * height + y) * width + x
        assert unravel4(i, channels, height, width) == (n, c, y, x)
    assert 2 * channels * height * width > 2**32 - 1
    from upsamplelib.backend import launch_config
    blocks, threads = launch_config(2 * channels * height * width)
    assert blocks * threads >= 2**32 and blocks < 2**31


# ---------------------------------------------------------------- module


def test_module_defaults_names_and_init():
    module = ul.CARAFE(16)
    names = dict(module.named_parameters())
    assert set(names) == {"channel_compressor.weight", "channel_compressor.bias",
                          "content_encoder.weight", "content_encoder.bias"}
    assert names["channel_compressor.weight"].shape == (64, 16, 1, 1)
    assert names["content_encoder.weight"].shape == (2 * 2 * 1 * 5 * 5, 64, 3, 3)
    assert module.content_encoder.weight.std() < 0.002
    assert torch.all(module.content_encoder.bias == 0)
    x = torch.randn(2, 16, 6, 7)
    out = module(x)
    assert out.shape == (2, 16, 12, 14)
    kernels = module.kernels(x)
    torch.testing.assert_close(kernels.sum(1), torch.ones(2, 12, 14))


def test_module_loads_an_mmcv_state_dict():
    """mmcv's CARAFEPack(channels=32, scale_factor=2, up_kernel=5, up_group=1,
    encoder_kernel=3, encoder_dilation=1, compressed_channels=64) keys and shapes."""
    mmcv_state = {
        "channel_compressor.weight": torch.randn(64, 32, 1, 1),
        "channel_compressor.bias": torch.randn(64),
        "content_encoder.weight": torch.randn(100, 64, 3, 3),
        "content_encoder.bias": torch.randn(100),
    }
    module = ul.CARAFE(32, scale=2, up_kernel=5, up_group=1)
    module.load_state_dict(mmcv_state, strict=True)
    assert torch.equal(module.content_encoder.bias, mmcv_state["content_encoder.bias"])


def test_module_grouped_and_backward():
    module = ul.CARAFE(8, scale=3, up_kernel=3, up_group=2, encoder_kernel=5, compressed_channels=16).double()
    x = torch.randn(1, 8, 4, 5, dtype=torch.float64, requires_grad=True)
    out = module(x)
    assert out.shape == (1, 8, 12, 15)
    out.square().sum().backward()
    assert x.grad is not None and module.content_encoder.weight.grad is not None


# ---------------------------------------------------------------- bad input


def _expect(error, match, *args, **kwargs):
    with pytest.raises(error, match=match):
        ul.carafe(*args, **kwargs)


def test_wrong_mask_channel_count_says_what_was_expected():
    x, masks = _inputs(c=4, k=3, g=1)
    _expect(ValueError, r"expected group \* kernel_size\*\*2 = 2 \* 3\*\*2 = 18", x, masks, 3, 2, group=2)


def test_masks_not_exactly_scale_times():
    x, _ = _inputs(h=5, w=6)
    masks = torch.rand(1, 9, 11, 12, dtype=torch.float64)
    _expect(ValueError, r"exactly scale x.*\(10, 12\)", x, masks, 3, 2)


def test_bad_kernel_size_scale_group():
    x, masks = _inputs()
    _expect(ValueError, "must be odd", x, masks, 4, 2)
    _expect(ValueError, "kernel_size must be >= 1", x, masks, -1, 2)
    _expect(TypeError, "scale must be an int", x, masks, 3, 2.0)
    _expect(ValueError, "group=3 must divide the 4 channels", x, masks, 3, 2, group=3)


def test_batch_mismatch_and_rank():
    x, masks = _inputs(n=2)
    _expect(ValueError, "batch sizes differ", x[:1], masks, 3, 2)
    _expect(ValueError, "4-D", x[0], masks, 3, 2)
    _expect(TypeError, "floating-point", x.long(), masks, 3, 2)


def test_device_mismatch_is_reported():
    from upsamplelib.backend import resolve_backend

    class OnGpu:
        device = torch.device("cuda", 0)

    with pytest.raises(ValueError, match="different devices"):
        resolve_backend(None, [torch.zeros(1), OnGpu()], "carafe")


@pytest.mark.parametrize("c,g", [(12, 1), (12, 3), (20, 2)])
def test_cpu_and_cuda_agree_bit_for_bit_forward_and_backward(c, g):
    """Runs of 8 channels that do not divide the group, and both gradients."""
    x, masks = _inputs(c=c, h=3, w=4, k=3, s=2, g=g, dtype=torch.float32, requires_grad=True)
    grad = torch.randn(1, c, 6, 8)
    results = []
    for backend in ("cpu", "cuda"):
        out = on(backend, ul.carafe)(x, masks, 3, 2, g)
        results.append((out, *torch.autograd.grad(out, (x, masks), grad)))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert torch.equal(results[0][0], results[1][0])

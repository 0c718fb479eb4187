"""ul.semi_shift_conv and ul.FADE."""

import math

import pytest
import torch
import torch.nn.functional as F

import upsamplelib as ul
from conftest import ALL_BACKENDS, KERNEL_BACKENDS, on
from upsamplelib.ops.fade import semi_shift_conv_reference


def _inputs(n=1, c=3, h=3, w=4, s=2, o=4, k=3, groups=1, dtype=torch.float64, requires_grad=False):
    en = torch.randn(n, c, s * h, s * w, dtype=dtype)
    de = torch.randn(n, c, h, w, dtype=dtype)
    weight = torch.randn(o, c // groups, k, k, dtype=dtype)
    bias = torch.randn(o, dtype=dtype)
    return [t.requires_grad_(requires_grad) for t in (en, de, weight, bias)]


def _windowed(en, de, weight, bias, s):
    """The SPEC's explicit windowed definition, loop by loop."""
    n, c, H, W = en.shape
    o_count, _, k, _ = weight.shape
    p = k // 2
    out = torch.zeros(n, o_count, H, W, dtype=en.dtype)
    for b in range(n):
        for o in range(o_count):
            for Y in range(H):
                for X in range(W):
                    total = 2 * bias[o]
                    for uy in range(k):
                        for ux in range(k):
                            y, x = Y + uy - p, X + ux - p
                            if 0 <= y < H and 0 <= x < W:
                                total += (weight[o, :, uy, ux] * en[b, :, y, x]).sum()
                            y, x = Y // s + uy - p, X // s + ux - p
                            if 0 <= y < H // s and 0 <= x < W // s:
                                total += (weight[o, :, uy, ux] * de[b, :, y, x]).sum()
                    out[b, o, Y, X] = total
    return out


@pytest.mark.parametrize("k,s", [(3, 2), (1, 2), (5, 3), (3, 1)])
def test_reference_is_the_windowed_definition(k, s):
    en, de, weight, bias = _inputs(c=2, h=3, w=2, s=s, o=2, k=k)
    torch.testing.assert_close(semi_shift_conv_reference(en, de, weight, bias, s), _windowed(en, de, weight, bias, s))


def test_it_is_not_a_conv_over_the_upsampled_decoder():
    en, de, weight, bias = _inputs(c=2, h=4, w=4, s=2, o=2, k=3)
    naive = F.conv2d(en, weight, bias, padding=1) + F.conv2d(F.interpolate(de, scale_factor=2), weight, bias,
                                                             padding=1)
    assert not torch.allclose(ul.semi_shift_conv(en, de, weight, bias, 2, backend="cpu"), naive)


@pytest.mark.parametrize("k,s,groups", [(3, 2, 1), (1, 2, 1), (5, 3, 1), (3, 2, 3), (3, 1, 1)])
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_backends_match_reference(k, s, groups, backend):
    en, de, weight, bias = _inputs(n=2, c=3, h=3, w=2, s=s, o=3, k=k, groups=groups)
    torch.testing.assert_close(on(backend, ul.semi_shift_conv)(en, de, weight, bias, s, groups=groups),
                               semi_shift_conv_reference(en, de, weight, bias, s, groups), rtol=1e-12, atol=1e-12)


def test_non_square_inputs_and_no_bias():
    en, de, weight, _ = _inputs(c=2, h=2, w=5, s=2, o=3)
    torch.testing.assert_close(ul.semi_shift_conv(en, de, weight, None, 2, backend="cpu"),
                               semi_shift_conv_reference(en, de, weight, None, 2))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_gradients_match_reference(backend):
    tensors = _inputs(c=3, h=3, w=2, s=2, o=2, requires_grad=True)
    grad = torch.randn(1, 2, 6, 4, dtype=torch.float64)
    expected = torch.autograd.grad(semi_shift_conv_reference(*tensors, 2), tensors, grad)
    got = torch.autograd.grad(on(backend, ul.semi_shift_conv)(*tensors, 2), tensors, grad)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_gradcheck(backend):
    tensors = _inputs(c=2, h=2, w=2, s=2, o=2, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *t: on(backend, ul.semi_shift_conv)(*t, 2), tensors)


def test_half_inputs():
    en, de, weight, bias = _inputs(c=2, h=3, w=3, dtype=torch.float32)
    out = ul.semi_shift_conv(en.half(), de.half(), weight.half(), bias.half(), 2, backend="cpu")
    assert out.dtype == torch.float16


def test_bad_input():
    en, de, weight, bias = _inputs(c=3, h=3, w=4, s=2)
    with pytest.raises(ValueError, match=r"exactly scale x.*\(6, 8\)"):
        ul.semi_shift_conv(en[:, :, :5], de, weight, bias, 2)
    with pytest.raises(ValueError, match="same channels"):
        ul.semi_shift_conv(en[:, :2], de, weight, bias, 2)
    with pytest.raises(ValueError, match="must be odd"):
        ul.semi_shift_conv(en, de, torch.randn(4, 3, 2, 2, dtype=torch.float64), bias, 2)
    with pytest.raises(ValueError, match="batch sizes differ"):
        ul.semi_shift_conv(torch.cat([en, en]), de, weight, bias, 2)
    with pytest.raises(ValueError, match="bias must be"):
        ul.semi_shift_conv(en, de, weight, bias[:2], 2)


# ---------------------------------------------------------------- module


def test_module_names_defaults_and_shapes():
    module = ul.FADE(16)
    names = {name for name, _ in module.named_parameters()}
    assert names == {"gate_generator.conv.weight", "gate_generator.conv.bias",
                     "ker_generator.compressor_en.weight", "ker_generator.compressor_en.bias",
                     "ker_generator.compressor_de.weight", "ker_generator.content_encoder.weight",
                     "ker_generator.content_encoder.bias"}
    assert module.ker_generator.compressor_en.weight.shape == (64, 16, 1, 1)
    assert module.ker_generator.content_encoder.weight.shape == (25, 64, 3, 3)
    en, de = torch.randn(2, 16, 8, 10), torch.randn(2, 16, 4, 5)
    assert module(en, de).shape == (2, 16, 8, 10)
    torch.testing.assert_close(module.kernels(en, de).sum(1), torch.ones(2, 8, 10))


def test_lite_module():
    module = ul.FADE(8, lite=True)
    assert module.ker_generator.compressor_en.weight.shape == (25, 8, 1, 1)
    assert module.ker_generator.content_encoder.weight.shape == (25, 1, 3, 3)
    assert module.ker_generator.content_encoder.groups == 25
    en, de = torch.randn(1, 8, 6, 6), torch.randn(1, 8, 3, 3)
    assert module(en, de).shape == (1, 8, 6, 6)


@pytest.mark.parametrize("lite", [False, True])
def test_module_matches_the_two_conv_formulation(lite):
    torch.manual_seed(3)
    module = ul.FADE(6, scale=2, up_kernel_size=3, embedding_dim=5, lite=lite).double()
    for p in module.parameters():
        torch.nn.init.normal_(p, std=0.3)
    en, de = torch.randn(1, 6, 8, 6, dtype=torch.float64), torch.randn(1, 6, 4, 3, dtype=torch.float64)
    kg = module.ker_generator
    E, D = kg.compressor_en(en), kg.compressor_de(de)
    logits = kg.content_encoder(E) + F.interpolate(kg.content_encoder(D), scale_factor=2, mode="nearest")
    from upsamplelib.ops.carafe import carafe_reference

    gate = torch.sigmoid(F.interpolate(module.gate_generator.conv(de), scale_factor=2, mode="nearest"))
    expected = gate * en + (1 - gate) * carafe_reference(de, F.softmax(logits, 1), 3, 2, 1)
    torch.testing.assert_close(module(en, de), expected)


def test_module_loads_official_state_dict_and_trains():
    module = ul.FADE(32)
    state = {k: torch.randn_like(v) for k, v in module.state_dict().items()}
    ul.FADE(32).load_state_dict(state, strict=True)
    en = torch.randn(1, 32, 8, 8, requires_grad=True)
    de = torch.randn(1, 32, 4, 4, requires_grad=True)
    module(en, de).square().sum().backward()
    assert en.grad is not None and de.grad is not None
    assert module.ker_generator.content_encoder.weight.grad is not None


def test_unequal_channels_are_rejected_with_advice():
    with pytest.raises(ValueError, match=r"nn.Conv2d\(256, 128, 1\)"):
        ul.FADE(128, 256)


def test_module_bad_sizes():
    module = ul.FADE(4)
    with pytest.raises(ValueError, match="exactly scale x the size of de.*scale=2"):
        module(torch.randn(1, 4, 7, 8), torch.randn(1, 4, 4, 4))


def test_one_pass_cpu_loop_and_cuda_forward_agree_bit_for_bit():
    # The cpu backend hands finite weights to PyTorch's convolutions (equal to
    # rounding, tests/test_cpu_fast_paths.py); its one-pass loop, run for
    # non-finite weights, makes the CUDA kernel's additions in its order.
    from upsamplelib.ops.fade import one_pass_semi_shift_cpu

    en, de, weight, bias = _inputs(c=3, h=3, w=4, s=2, o=2, dtype=torch.float32)
    assert torch.equal(one_pass_semi_shift_cpu(en, de, weight, bias, 2),
                       on("cuda", ul.semi_shift_conv)(en, de, weight, bias, 2))


def test_modules_can_run_the_reference_backend():
    torch.manual_seed(4)
    for module, inputs in [(ul.FADE(4), (torch.randn(1, 4, 6, 6), torch.randn(1, 4, 3, 3))),
                           (ul.SAPA(4), (torch.randn(1, 4, 6, 6), torch.randn(1, 4, 3, 3))),
                           (ul.CARAFE(4), (torch.randn(1, 4, 3, 3),))]:
        fast = module(*inputs)
        module.backend = "torch"
        torch.testing.assert_close(module(*inputs), fast, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("options", [{}, {"lite": True}, {"gate": False}])
def test_reset_parameters_starts_every_convolution_again_as_built(options):
    torch.manual_seed(0)
    module = ul.FADE(8, **options)
    convolutions = [m for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convolutions) == (3 if options.get("gate") is False else 4)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.fill_(7.0)
    module.reset_parameters()
    for conv in convolutions:
        fan_in = conv.weight[0].numel()
        fan_out = conv.weight.shape[0] * conv.weight[0, 0].numel()
        bound = math.sqrt(6.0 / (fan_in + fan_out))  # Xavier-uniform, as the original FADE
        assert 0.5 * bound < conv.weight.abs().max() <= bound
        assert conv.bias is None or not conv.bias.any()

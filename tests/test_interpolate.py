"""ul.interpolate against F.interpolate: values, gradients, bad input."""

import random

import pytest
import torch
import torch.nn.functional as F

import upsamplelib as ul
from conftest import ALL_BACKENDS, KERNEL_BACKENDS, on

NEAREST_MODES = ["nearest", "nearest-exact"]


def _random_cases(count, seed, max_size=40):
    """(input H, W, size or scale_factor kwargs) including non-integer ratios."""
    rng = random.Random(seed)
    cases = []
    for i in range(count):
        h, w = rng.randint(1, max_size), rng.randint(1, max_size)
        kind = i % 4
        if kind == 0:
            kwargs = {"scale_factor": rng.choice([2, 3, 4, 1.5, 2.5, 0.5, 0.7, 1.0, 1.3])}
        elif kind == 1:
            kwargs = {"scale_factor": (rng.uniform(0.6, 4.0), rng.uniform(0.6, 4.0))}
        elif kind == 2:
            kwargs = {"size": (rng.randint(1, 3 * max_size), rng.randint(1, 3 * max_size))}
        else:
            kwargs = {"size": rng.randint(1, 3 * max_size)}
        out_h = kwargs.get("size", None)
        if "scale_factor" in kwargs:
            sf = kwargs["scale_factor"]
            sh, sw = sf if isinstance(sf, tuple) else (sf, sf)
            if int(h * sh) < 1 or int(w * sw) < 1:
                continue
        cases.append((h, w, kwargs))
        del out_h
    return cases


@pytest.mark.parametrize("mode", NEAREST_MODES)
def test_nearest_matches_torch_bit_for_bit_cpu(mode):
    for h, w, kwargs in _random_cases(300, seed=1):
        x = torch.randn(2, 3, h, w)
        expected = F.interpolate(x, mode=mode, **kwargs)
        got = ul.interpolate(x, mode=mode, backend="cpu", **kwargs)
        assert torch.equal(got, expected), (h, w, kwargs)


@pytest.mark.parametrize("mode", NEAREST_MODES)
def test_nearest_matches_torch_bit_for_bit_cuda(mode):
    for h, w, kwargs in _random_cases(12, seed=2, max_size=9):
        x = torch.randn(1, 2, h, w)
        expected = F.interpolate(x, mode=mode, **kwargs)
        got = on("cuda", ul.interpolate)(x, mode=mode, **kwargs)
        assert torch.equal(got, expected), (h, w, kwargs)


@pytest.mark.parametrize("mode", NEAREST_MODES)
@pytest.mark.parametrize(
    "kwargs",
    [{"scale_factor": 2}, {"scale_factor": 3}, {"scale_factor": 1.5}, {"scale_factor": 0.5},
     {"size": (37, 29)}, {"size": (64, 64)}, {"size": (5, 100)}],
)
def test_nearest_float64_common_cases_bit_for_bit(mode, kwargs):
    x = torch.randn(2, 3, 17, 23, dtype=torch.float64)
    assert torch.equal(ul.interpolate(x, mode=mode, backend="cpu", **kwargs),
                       F.interpolate(x, mode=mode, **kwargs))


@pytest.mark.parametrize("align_corners", [False, True])
def test_bilinear_matches_torch_cpu(align_corners):
    for h, w, kwargs in _random_cases(200, seed=3):
        x = torch.randn(2, 3, h, w)
        expected = F.interpolate(x, mode="bilinear", align_corners=align_corners, **kwargs)
        got = ul.interpolate(x, mode="bilinear", align_corners=align_corners, backend="cpu", **kwargs)
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6, msg=str((h, w, kwargs)))


@pytest.mark.parametrize("align_corners", [False, True])
def test_bilinear_backends_agree(align_corners):
    for h, w, kwargs in _random_cases(8, seed=4, max_size=8):
        x = torch.randn(1, 2, h, w, dtype=torch.float64)
        results = [
            on(b, ul.interpolate)(x, mode="bilinear", align_corners=align_corners, **kwargs)
            for b in ALL_BACKENDS
        ]
        for other in results[1:]:
            torch.testing.assert_close(other, results[0], rtol=1e-12, atol=1e-12)


def test_bilinear_default_align_corners_is_false():
    x = torch.randn(1, 2, 5, 6)
    torch.testing.assert_close(
        ul.interpolate(x, scale_factor=2, mode="bilinear", backend="cpu"),
        F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False),
        rtol=1e-6, atol=1e-6,
    )


@pytest.mark.parametrize("mode,align_corners", [("nearest", None), ("nearest-exact", None),
                                                ("bilinear", False), ("bilinear", True)])
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_gradients_match_torch_autograd(mode, align_corners, backend):
    shapes = [(5, 7, {"scale_factor": 2}), (6, 5, {"scale_factor": 1.7}),
              (9, 8, {"scale_factor": 0.6}), (4, 6, {"size": (11, 5)})]
    for h, w, kwargs in shapes:
        x = torch.randn(2, 2, h, w, dtype=torch.float64, requires_grad=True)
        expected = F.interpolate(x, mode=mode, align_corners=align_corners, **kwargs)
        got = on(backend, ul.interpolate)(x, mode=mode, align_corners=align_corners, **kwargs)
        grad_out = torch.randn_like(expected)
        (g_expected,) = torch.autograd.grad(expected, x, grad_out)
        (g_got,) = torch.autograd.grad(got, x, grad_out)
        torch.testing.assert_close(g_got, g_expected, rtol=1e-12, atol=1e-12)


def test_nearest_gradient_float32_bit_for_bit():
    x = torch.randn(1, 4, 13, 11, requires_grad=True)
    for kwargs in [{"scale_factor": 2}, {"scale_factor": 2.5}, {"size": (30, 17)}]:
        expected = F.interpolate(x, **kwargs)
        grad_out = torch.randn_like(expected)
        (g_expected,) = torch.autograd.grad(expected, x, grad_out)
        (g_got,) = torch.autograd.grad(ul.interpolate(x, backend="cpu", **kwargs), x, grad_out)
        assert torch.equal(g_got, g_expected)


@pytest.mark.parametrize("mode,align_corners", [("nearest", None), ("nearest-exact", None),
                                                ("bilinear", False), ("bilinear", True)])
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_gradcheck(mode, align_corners, backend):
    x = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    for kwargs in [{"scale_factor": 2}, {"size": (5, 3)}]:
        assert torch.autograd.gradcheck(
            lambda t: on(backend, ul.interpolate)(t, mode=mode, align_corners=align_corners, **kwargs),
            (x,),
        )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_half_types_computed_in_float32(dtype, mode):
    x = torch.randn(1, 3, 6, 5).to(dtype)
    got = ul.interpolate(x, scale_factor=2, mode=mode, backend="cpu")
    assert got.dtype == dtype
    expected = F.interpolate(x.float(), scale_factor=2, mode=mode).to(dtype)
    torch.testing.assert_close(got, expected)
    x.requires_grad_()
    ul.interpolate(x, scale_factor=2, mode=mode, backend="cpu").sum().backward()
    assert x.grad.dtype == dtype


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_non_contiguous_and_channels_last_inputs(backend):
    base = torch.randn(1, 3, 8, 6)
    transposed = base.transpose(2, 3)  # (1, 3, 6, 8), not contiguous
    channels_last = base.contiguous(memory_format=torch.channels_last)
    for x in (transposed, channels_last, base[:, ::2]):
        expected = F.interpolate(x.contiguous(), scale_factor=2, mode="bilinear")
        got = on(backend, ul.interpolate)(x, scale_factor=2, mode="bilinear")
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_default_backend_follows_the_device():
    x = torch.randn(1, 1, 3, 3)
    assert torch.equal(ul.interpolate(x, scale_factor=2), F.interpolate(x, scale_factor=2))
    assert torch.equal(ul.interpolate(x, scale_factor=2, backend="auto"),
                       F.interpolate(x, scale_factor=2))


# ---------------------------------------------------------------- bad input


def _expect(error, match, *args, **kwargs):
    with pytest.raises(error, match=match):
        ul.interpolate(*args, **kwargs)


def test_wrong_rank():
    _expect(ValueError, r"4-D.*\(3, 4, 5\)", torch.randn(3, 4, 5), scale_factor=2)


def test_zero_size():
    _expect(ValueError, r"empty.*\(1, 0, 4, 4\)", torch.randn(1, 0, 4, 4), scale_factor=2)


def test_integer_dtype():
    _expect(TypeError, "torch.int64", torch.ones(1, 1, 2, 2, dtype=torch.int64), scale_factor=2)


def test_not_a_tensor():
    _expect(TypeError, "ndarray", torch.randn(1, 1, 2, 2).numpy(), scale_factor=2)


def test_size_and_scale_together_or_neither():
    x = torch.randn(1, 1, 4, 4)
    _expect(ValueError, "not both", x, size=8, scale_factor=2)
    _expect(ValueError, "one of size or scale_factor", x)


def test_bad_size_and_scale_values():
    x = torch.randn(1, 1, 4, 4)
    _expect(TypeError, "size must be an int", x, size=2.5)
    _expect(ValueError, "size must be positive", x, size=(0, 3))
    _expect(ValueError, r"pair \(H, W\)", x, size=(1, 2, 3))
    _expect(ValueError, "positive and finite", x, scale_factor=-1)
    _expect(ValueError, "positive and finite", x, scale_factor=float("nan"))
    _expect(ValueError, "empty output", x, scale_factor=0.1)


def test_unknown_mode_and_align_corners_with_nearest():
    x = torch.randn(1, 1, 4, 4)
    _expect(ValueError, "unknown mode 'bicubic'", x, scale_factor=2, mode="bicubic")
    _expect(ValueError, "align_corners=True only applies", x, scale_factor=2, align_corners=True)


def test_unknown_backend():
    _expect(ValueError, "unknown backend 'gpu'", torch.randn(1, 1, 4, 4), scale_factor=2, backend="gpu")


def test_cpu_backend_refuses_cuda_tensors():
    # Without a GPU, use the meta device to stand for "not a CPU tensor".
    from upsamplelib.backend import resolve_backend

    class FakeCudaTensor:
        device = torch.device("cuda", 0)

    with pytest.raises(ValueError, match="backend='cpu'.*cuda:0"):
        resolve_backend("cpu", [FakeCudaTensor()], "interpolate")

"""ul.interpolate against F.interpolate: values, gradients, bad input."""

import itertools
import random
import warnings

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


def nearest_sweep_configs(count, seed):
    """Random nearest / nearest-exact resizes as a user might ask for them:
    sizes 1-90, scale factors with 0-3 decimals or an explicit size, float32
    and float64, 1-5 channels, sometimes channels-last (PyTorch's index
    math depends on each of these)."""
    rng = random.Random(seed)
    configs = []
    while len(configs) < count:
        h, w = rng.randint(1, 90), rng.randint(1, 90)
        if rng.random() < 0.5:
            factors = tuple(round(rng.uniform(0.3, 5.0), rng.randint(0, 3)) for _ in range(2))
            if min(factors) <= 0 or int(h * factors[0]) < 1 or int(w * factors[1]) < 1:
                continue
            kwargs = {"scale_factor": factors}
        else:
            kwargs = {"size": (rng.randint(1, 90), rng.randint(1, 90))}
        configs.append(dict(shape=(1, rng.randint(1, 5), h, w), kwargs=kwargs,
                            mode=rng.choice(NEAREST_MODES), dtype=rng.choice([torch.float32, torch.float64]),
                            channels_last=rng.random() < 0.25))
    return configs


def nearest_sweep_mismatches(configs, backend):
    """The configs where ul.interpolate differs from F.interpolate in any bit."""
    mismatches = []
    for config in configs:
        x = torch.randn(config["shape"], dtype=config["dtype"])
        if config["channels_last"]:
            x = x.contiguous(memory_format=torch.channels_last)
        expected = F.interpolate(x, mode=config["mode"], **config["kwargs"])
        got = ul.interpolate(x, mode=config["mode"], backend=backend, **config["kwargs"])
        if not torch.equal(got, expected):
            mismatches.append(config)
    return mismatches


def test_nearest_sweep_is_bit_for_bit_cpu():
    mismatches = nearest_sweep_mismatches(nearest_sweep_configs(4000, seed=11), "cpu")
    assert not mismatches, f"{len(mismatches)} of 4000 differ, e.g. {mismatches[:3]}"


def test_nearest_sweep_is_bit_for_bit_cuda():
    # The simulator runs a Python thread per output element: small maps only.
    configs = [c for c in nearest_sweep_configs(400, seed=12) if c["shape"][1] * c["shape"][2] * c["shape"][3] <= 300]
    configs = [c for c in configs if "size" in c["kwargs"] and c["kwargs"]["size"][0] * c["kwargs"]["size"][1] <= 2000
               or "scale_factor" in c["kwargs"] and c["shape"][2] * c["shape"][3] * 25 <= 2000][:25]
    assert len(configs) >= 10
    mismatches = nearest_sweep_mismatches(configs, "cuda")
    assert not mismatches, mismatches[:3]


@pytest.mark.parametrize("shape,kwargs,mode,dtype", [
    ((1, 2, 32, 37), {"scale_factor": (3.37, 1.002)}, "nearest", torch.float32),  # PyTorch reads dst - 1
    ((1, 2, 30, 12), {"scale_factor": (4.0, 2.068)}, "nearest", torch.float32),  # no >> 1 shortcut here
    ((1, 2, 16, 2), {"size": (20, 47)}, "nearest-exact", torch.float32),  # a tie at column 23
    ((1, 2, 10, 10), {"scale_factor": 2.098}, "nearest", torch.float32),  # small output: the shortcut applies
    ((1, 2, 24, 5), {"size": (37, 100)}, "nearest-exact", torch.float64),  # float64 opmath
    ((2, 6, 40, 30), {"scale_factor": 2.3}, "nearest", torch.float64),  # channels-last kernel (below)
])
@pytest.mark.parametrize("channels_last", [False, True])
def test_nearest_cases_reported_wrong_before(shape, kwargs, mode, dtype, channels_last):
    x = torch.randn(shape, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    assert torch.equal(ul.interpolate(x, mode=mode, backend="cpu", **kwargs), F.interpolate(x, mode=mode, **kwargs))


@pytest.mark.parametrize("backend", ["cpu", "cuda", "torch"])
@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_the_result_has_the_memory_format_of_f_interpolate(backend, mode):
    # A channels-last input gives a channels-last result, as PyTorch's does, and the same values.
    channels_last = torch.randn(2, 3, 6, 7).contiguous(memory_format=torch.channels_last)
    for x in (torch.randn(2, 3, 5, 7), channels_last, channels_last[:, :, ::2], channels_last[:, 1:],
              torch.randn(2, 3, 6, 7)[:, :, ::2]):
        x = x.detach().requires_grad_()
        out = ul.interpolate(x, scale_factor=2, mode=mode, backend=backend)
        expected = F.interpolate(x, scale_factor=2, mode=mode)
        assert out.stride() == expected.stride()
        torch.testing.assert_close(out, expected)
        (grad,) = torch.autograd.grad(out.square().sum(), x)
        torch.testing.assert_close(grad, torch.autograd.grad(expected.square().sum(), x)[0])


@pytest.mark.parametrize("mode,align_corners", [("nearest", None), ("nearest-exact", None), ("bilinear", False),
                                                ("bilinear", True)])
def test_cpu_loops_run_channels_last_maps_as_they_are(mode, align_corners):
    # No copy to NCHW and back (bilinear: from 6 channels; fewer take the copies), and the gradient in
    # the input's layout. Bilinear gives the NCHW loops' values bit for bit; the nearest modes give
    # F.interpolate's for channels-last maps bit for bit (its channels-last kernel rounds the source
    # index its own way), forward and backward.
    channels_last = torch.channels_last
    for case, (h, w, kwargs) in enumerate(_random_cases(24, seed=5)):
        dtype = torch.float64 if case % 2 else torch.float32
        x = torch.randn(2, 1 + case % 9, h, w, dtype=dtype)
        leaves = [x.clone().requires_grad_(), x.contiguous(memory_format=channels_last).requires_grad_()]
        if mode != "bilinear":
            outs = [F.interpolate(leaves[1], mode=mode, **kwargs)]
        else:
            outs = [ul.interpolate(leaves[0], mode=mode, align_corners=align_corners, backend="cpu", **kwargs)]
        outs.append(ul.interpolate(leaves[1], mode=mode, align_corners=align_corners, backend="cpu", **kwargs))
        grad = torch.randn_like(outs[0])
        grads = [torch.autograd.grad(out, leaf, grad)[0]
                 for out, leaf in zip(outs, (leaves[1] if mode != "bilinear" else leaves[0], leaves[1]))]
        assert torch.equal(outs[0], outs[1]) and torch.equal(grads[0], grads[1]), (h, w, kwargs)
        assert grads[1].stride() == leaves[1].stride()
        if leaves[1].shape[1] > 1 and h * w > 1:
            assert outs[1].is_contiguous(memory_format=channels_last) and not outs[1].is_contiguous()


@pytest.mark.parametrize("mode", ["nearest", "nearest-exact"])
@pytest.mark.parametrize("kwargs", [{"scale_factor": 2}, {"scale_factor": (1.7, 0.6)}, {"size": (37, 150)}])
def test_nearest_backward_on_channels_last_maps_over_several_bands_and_images(mode, kwargs):
    # The channels-last adjoint's tasks own bands of 32 input rows of one image: 100 rows make 4 bands an
    # image, and 3 images 12 tasks. The sums are F.interpolate's backward, bit for bit.
    x = torch.randn(3, 5, 100, 9, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    leaves = [x.clone().requires_grad_(), x.clone().requires_grad_()]
    outs = [F.interpolate(leaves[0], mode=mode, **kwargs), ul.interpolate(leaves[1], mode=mode, backend="cpu",
                                                                          **kwargs)]
    grad = torch.randn_like(outs[0]).contiguous(memory_format=torch.channels_last)
    grads = [torch.autograd.grad(out, leaf, grad)[0] for out, leaf in zip(outs, leaves)]
    assert torch.equal(outs[0], outs[1]) and torch.equal(grads[0], grads[1])
    assert grads[1].stride() == x.stride()


def test_the_layout_shortcut_agrees_with_pytorchs_rule():
    # _strides_like_channels_last answers dense maps without PyTorch's rule (12 us); every layout of
    # small shapes, empty and one-sized dimensions included, against the rule itself.
    from upsamplelib.ops.interpolate import _strides_like_channels_last, are_strides_like_channels_last_or_false
    checked = 0
    for shape in itertools.product([0, 1, 2, 3], [1, 2, 3], [1, 2, 5], [1, 2, 4]):
        dense = torch.empty(shape)
        layouts = [dense, dense.contiguous(memory_format=torch.channels_last), dense.transpose(2, 3),
                   dense.transpose(0, 1)]
        for order in itertools.permutations(range(4)):  # memory in every order of the four dimensions
            layouts.append(torch.empty([shape[d] for d in order]).permute(*[order.index(d) for d in range(4)]))
        for x in layouts:
            if tuple(x.shape) == shape:
                assert _strides_like_channels_last(x) == are_strides_like_channels_last_or_false(x.shape, x.stride()), \
                    (shape, x.stride())
                checked += 1
    assert checked > 2000


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_the_result_has_the_layout_f_interpolate_gives(backend):
    # PyTorch's rule for ambiguous strides included: a one-pixel map sliced from a channels-last one
    # counts as channels-last, its own channels-last copy does not, and a one-pixel result of a
    # channels-last map has channels-last strides. Bilinear's cpu loops take channels-last maps from
    # 6 channels, fewer through copies: both routes.
    channels_last = torch.channels_last
    for n, c, h, w in [(2, 3, 5, 4), (1, 5, 1, 1), (2, 2, 1, 3), (1, 4, 2, 1), (1, 8, 3, 2)]:
        base = torch.randn(n, c, h, w)
        for x in (base, base.contiguous(memory_format=channels_last), base.transpose(2, 3),
                  torch.randn(n, c, h, 2 * w).contiguous(memory_format=channels_last)[..., ::2],
                  torch.randn(n, 2 * c, h, w).contiguous(memory_format=channels_last)[:, ::2]):
            for mode in ("nearest", "bilinear"):
                for size in (dict(scale_factor=2), dict(size=(1, 1))):
                    out = ul.interpolate(x, mode=mode, backend=backend, **size)
                    expected = F.interpolate(x, mode=mode, **size)
                    assert out.stride() == expected.stride(), (x.shape, x.stride(), mode, size)


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_jit_trace_of_a_channels_last_map(mode):
    # Traced sizes are tensors, which torch's suggest_memory_format cannot take.
    x = torch.randn(2, 5, 6, 7).contiguous(memory_format=torch.channels_last)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # jit.trace's deprecation and tracer warnings
        traced = torch.jit.trace(lambda t: ul.interpolate(t, scale_factor=2, mode=mode, backend="cpu"), (x,))
    other = torch.randn_like(x)
    out, expected = traced(other), F.interpolate(other, scale_factor=2, mode=mode)
    torch.testing.assert_close(out, expected)
    assert out.stride() == expected.stride()


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_the_gradient_comes_back_in_the_layout_of_the_input(mode):
    # Whatever layout the incoming gradient has: autograd would otherwise copy it into a leaf's.
    for x in (torch.randn(2, 8, 10, 12), torch.randn(2, 8, 10, 12).contiguous(memory_format=torch.channels_last)):
        x.requires_grad_()
        out = ul.interpolate(x, scale_factor=2, mode=mode, backend="cpu")
        for grad in (torch.randn_like(out), torch.randn_like(out).contiguous(memory_format=torch.channels_last)):
            assert torch.autograd.grad(out, x, grad, retain_graph=True)[0].stride() == x.stride()


def test_cpu_axis_tables_are_built_once_and_kept_apart(monkeypatch):
    """The cpu loops keep each axis table they build: the second call with
    the same sizes builds none, and a table made for one dtype, mode, rule
    or size never stands in for another's (interleaved calls stay exact)."""
    from upsamplelib.ops import interpolate as module

    calls = []
    original = module._AXIS_TABLE["cpu"]
    monkeypatch.setattr(module, "_CPU_AXIS_TABLES", {})
    monkeypatch.setitem(module._AXIS_TABLE, "cpu", lambda *args: calls.append(args) or original(*args))
    torch.manual_seed(0)
    cases = [(torch.float32, 13, 29, "nearest"), (torch.float64, 13, 29, "nearest"),
             (torch.float32, 13, 29, "nearest-exact"), (torch.float32, 13, 29, "bilinear"),
             (torch.float32, 13, 30, "bilinear"), (torch.float32, 14, 29, "nearest")]
    for round_ in range(2):
        for dtype, in_size, out_size, mode in cases:
            x = torch.randn(1, 8, in_size, in_size, dtype=dtype, requires_grad=True)
            kwargs = {} if mode != "bilinear" else {"align_corners": False}
            ours = ul.interpolate(x, size=out_size, mode=mode, backend="cpu", **kwargs)
            expected = F.interpolate(x, size=out_size, mode=mode, **kwargs)
            torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6 if mode == "bilinear" else 0)
            (grad_ours,) = torch.autograd.grad(ours.sum(), x)
            (grad_expected,) = torch.autograd.grad(expected.sum(), x)
            torch.testing.assert_close(grad_ours, grad_expected)
        if round_ == 0:
            built = len(calls)
            assert built == len(module._CPU_AXIS_TABLES) > 0
    assert len(calls) == built, "the second round rebuilt tables it had"


def test_the_cpu_axis_table_cache_holds_a_bounded_number_of_entries(monkeypatch):
    """Many output sizes (varying inputs) never hold more table entries than
    the cache's budget: it starts over, and the results stay right."""
    from upsamplelib.ops import interpolate as module

    monkeypatch.setattr(module, "_CPU_AXIS_TABLE_ENTRIES", 200)
    monkeypatch.setattr(module, "_CPU_AXIS_TABLES", {})
    x = torch.randn(1, 8, 4, 4).contiguous(memory_format=torch.channels_last)
    for width in range(30, 90):
        ours = ul.interpolate(x, size=(5, width), mode="bilinear", align_corners=False, backend="cpu")
        torch.testing.assert_close(ours, F.interpolate(x, size=(5, width), mode="bilinear", align_corners=False))
        assert sum(index.shape[1] for index, _ in module._CPU_AXIS_TABLES.values()) <= 200

"""Derivatives of every order: each op's backward is again one of the
library's ops, so gradgradcheck passes and gradient penalties of the
modules equal those of the plain-PyTorch reference."""

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

import upsamplelib as ul
from conftest import ALL_BACKENDS, KERNEL_BACKENDS, on

D = torch.float64


def _leaves(*shapes):
    return [torch.randn(shape, dtype=D, requires_grad=True) for shape in shapes]


@pytest.mark.parametrize("mode,align_corners", [("nearest", None), ("nearest-exact", None), ("bilinear", False),
                                                ("bilinear", True)])
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_interpolate_gradgradcheck(mode, align_corners, backend):
    (x,) = _leaves((1, 2, 2, 3))
    for kwargs in ({"size": (3, 5)}, {"scale_factor": 2}):
        assert gradgradcheck(lambda t: on(backend, ul.interpolate)(t, mode=mode, align_corners=align_corners,
                                                                   **kwargs), (x,))


@pytest.mark.parametrize("k,s,g", [(3, 2, 1), (3, 1, 2)])
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_carafe_gradgradcheck(k, s, g, backend):
    x, masks = _leaves((1, g, 2, 2), (1, g * k * k, 2 * s, 2 * s))
    assert gradgradcheck(lambda a, b: on(backend, ul.carafe)(a, b, k, s, g), (x, masks))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_sapa_similarity_gradgradcheck(backend):
    q, key = _leaves((1, 2, 4, 4), (1, 2, 2, 2))
    assert gradgradcheck(lambda a, b: on(backend, ul.sapa_similarity)(a, b, 3, 2), (q, key))


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_semi_shift_conv_gradgradcheck(groups, backend):
    en, de, weight, bias = _leaves((1, 2, 4, 2), (1, 2, 2, 1), (2, 2 // groups, 3, 3), (2,))
    assert gradgradcheck(lambda *t: on(backend, ul.semi_shift_conv)(*t, scale=2, groups=groups),
                         (en, de, weight, bias))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_third_derivative_of_carafe(backend):
    # Every order is again carafe's own ops: check one more than gradgradcheck.
    x, masks = _leaves((1, 1, 2, 2), (1, 9, 4, 4))
    (g,) = torch.autograd.grad(on(backend, ul.carafe)(x, masks, 3, 2).pow(2).sum(), x, create_graph=True)
    (gg,) = torch.autograd.grad(g.pow(2).sum(), masks, create_graph=True)
    (ggg,) = torch.autograd.grad(gg.pow(2).sum(), x)
    (g_ref,) = torch.autograd.grad(ul.carafe(x, masks, 3, 2, backend="torch").pow(2).sum(), x, create_graph=True)
    (gg_ref,) = torch.autograd.grad(g_ref.pow(2).sum(), masks, create_graph=True)
    (ggg_ref,) = torch.autograd.grad(gg_ref.pow(2).sum(), x)
    torch.testing.assert_close(ggg, ggg_ref, rtol=1e-10, atol=1e-10)


def test_first_derivatives_with_create_graph_are_tensors_that_require_grad():
    x, masks = _leaves((1, 2, 3, 3), (1, 9, 6, 6))
    grads = torch.autograd.grad(ul.carafe(x, masks, 3, 2, backend="cpu").sum(), (x, masks), create_graph=True)
    assert all(g is not None and g.requires_grad for g in grads)


MODULES = {
    "CARAFE": (lambda: ul.CARAFE(4, compressed_channels=8), 1),
    "SAPA-B": (lambda: ul.SAPA(4, 6, embedding_dim=8, variant="B"), 2),
    "SAPA-G": (lambda: ul.SAPA(4, 6, embedding_dim=8, variant="G"), 2),
    "SAPA-I": (lambda: ul.SAPA(4, variant="I"), 2),
    "FADE": (lambda: ul.FADE(4, embedding_dim=8), 2),
    "FADE-lite": (lambda: ul.FADE(4, lite=True), 2),
}


def module_inputs(name, dtype=D):
    """(inputs of the module's forward) at a small size."""
    if name == "CARAFE":
        return (torch.randn(2, 4, 2, 3, dtype=dtype),)
    low_channels = 6 if name in ("SAPA-B", "SAPA-G") else 4
    return torch.randn(2, 4, 4, 6, dtype=dtype), torch.randn(2, low_channels, 2, 3, dtype=dtype)


def _gradient_penalty(module, inputs, backend):
    """A WGAN-GP-style penalty: the squared norm of d out / d inputs, then
    its gradient with respect to every parameter and input."""
    module.backend = backend
    inputs = [t.clone().requires_grad_() for t in inputs]
    out = module(*inputs)
    grads = torch.autograd.grad((out * torch.linspace(-1, 1, out.numel(), dtype=D).view_as(out)).sum(), inputs,
                                create_graph=True)
    penalty = sum(g.pow(2).sum() for g in grads)
    leaves = inputs + list(module.parameters())
    return penalty, torch.autograd.grad(penalty, leaves)


@pytest.mark.parametrize("name", MODULES)
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_module_gradient_penalty_equals_the_references(name, backend):
    make, _ = MODULES[name]
    torch.manual_seed(1)
    module = make().double()
    with torch.no_grad():  # away from near-uniform kernels, so every term matters
        for parameter in module.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    inputs = module_inputs(name)
    if backend == "cuda" and not ul.backend.SIMULATOR:
        module, inputs = module.cuda(), [t.cuda() for t in inputs]
    penalty, grads = _gradient_penalty(module, inputs, backend)
    penalty_ref, grads_ref = _gradient_penalty(module, inputs, "torch")
    torch.testing.assert_close(penalty, penalty_ref, rtol=1e-10, atol=1e-12)
    assert len(grads) == len(grads_ref)
    for got, expected in zip(grads, grads_ref):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-11)


def test_gradcheck_of_the_carafe_module_kernels_in_float64():
    module = ul.CARAFE(2, compressed_channels=4).double()
    (x,) = _leaves((1, 2, 3, 3))
    assert gradcheck(lambda t: module(t), (x,))
    assert gradgradcheck(lambda t: module(t), (x,))


# Forward-mode AD: the operators have reverse-mode formulas only, and PyTorch
# ran them with the tangents dropped (a None or zero tangent, no error); each
# public function now adds the tangent from its linearity in each input.

# PyTorch's make_dual loads its jvp decompositions through torch.jit.script, which warns.
JIT_WARNING = "ignore:`torch.jit.script` is deprecated:DeprecationWarning"

FORWARD_CASES = {
    "interpolate nearest": (lambda b: lambda x: ul.interpolate(x, size=(3, 5), backend=b), [(1, 2, 2, 3)]),
    "interpolate bilinear": (lambda b: lambda x: ul.interpolate(x, scale_factor=2, mode="bilinear",
                                                                align_corners=True, backend=b), [(1, 2, 2, 3)]),
    "carafe": (lambda b: lambda x, m: ul.carafe(x, m, 3, 2, 2, backend=b), [(1, 2, 2, 3), (1, 18, 4, 6)]),
    "sapa_similarity": (lambda b: lambda q, k: ul.sapa_similarity(q, k, 3, 2, backend=b), [(1, 2, 4, 4), (1, 2, 2, 2)]),
    "semi_shift_conv": (lambda b: lambda e, d, w, c: ul.semi_shift_conv(e, d, w, c, 2, backend=b),
                        [(1, 2, 4, 2), (1, 2, 2, 1), (3, 2, 3, 3), (3,)]),
}


@pytest.mark.filterwarnings(JIT_WARNING)
@pytest.mark.parametrize("name", FORWARD_CASES)
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_forward_mode_ad_of_every_op(name, backend):
    make, shapes = FORWARD_CASES[name]
    inputs = _leaves(*shapes)
    assert gradcheck(make(backend), inputs, check_forward_ad=True, check_backward_ad=False, check_undefined_grad=False)
    primals = [t.detach() for t in inputs]
    tangents = [torch.randn_like(t) for t in inputs]
    out, tangent = torch.func.jvp(make(backend), tuple(primals), tuple(tangents))
    out_ref, tangent_ref = torch.func.jvp(make("torch"), tuple(primals), tuple(tangents))
    assert tangent.abs().sum() > 0
    torch.testing.assert_close(out, out_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(tangent, tangent_ref, rtol=1e-12, atol=1e-12)
    # One tangent at a time: the inputs left without one contribute nothing.
    for moved in range(len(inputs)):
        with torch.autograd.forward_ad.dual_level():
            duals = [torch.autograd.forward_ad.make_dual(p, t) if i == moved else p
                     for i, (p, t) in enumerate(zip(primals, tangents))]
            got = torch.autograd.forward_ad.unpack_dual(make(backend)(*duals)).tangent
            duals_ref = [torch.autograd.forward_ad.make_dual(p, t) if i == moved else p
                         for i, (p, t) in enumerate(zip(primals, tangents))]
            want = torch.autograd.forward_ad.unpack_dual(make("torch")(*duals_ref)).tangent
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.filterwarnings(JIT_WARNING)
@pytest.mark.parametrize("name", FORWARD_CASES)
def test_reverse_over_forward_mode(name):
    # The tangent is computed by the ops themselves, so it has gradients too.
    make, shapes = FORWARD_CASES[name]
    grads = {}
    for backend in ("cpu", "torch"):
        torch.manual_seed(1)
        inputs = _leaves(*shapes)
        tangents = [torch.randn_like(t).requires_grad_() for t in inputs]
        with torch.autograd.forward_ad.dual_level():
            out = make(backend)(*[torch.autograd.forward_ad.make_dual(p, t) for p, t in zip(inputs, tangents)])
            tangent = torch.autograd.forward_ad.unpack_dual(out).tangent
        grads[backend] = torch.autograd.grad(tangent.pow(2).sum(), inputs + tangents, allow_unused=True)
    for got, want in zip(grads["cpu"], grads["torch"]):
        if want is None:
            assert got is None or not got.any()
        else:
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.filterwarnings(JIT_WARNING)
@pytest.mark.parametrize("name", ["CARAFE", "SAPA", "FADE"])
def test_forward_mode_ad_of_the_modules(name):
    torch.manual_seed(0)
    module = {"CARAFE": lambda: ul.CARAFE(4, compressed_channels=8), "SAPA": lambda: ul.SAPA(4, embedding_dim=8),
              "FADE": lambda: ul.FADE(4, embedding_dim=8)}[name]().double()
    high, low = torch.randn(1, 4, 6, 8, dtype=D), torch.randn(1, 4, 3, 4, dtype=D)
    inputs = (low,) if name == "CARAFE" else (high, low)
    tangents = tuple(torch.randn_like(t) for t in inputs)
    _, tangent = torch.func.jvp(module, inputs, tangents)
    module.backend = "torch"
    _, tangent_ref = torch.func.jvp(module, inputs, tangents)
    torch.testing.assert_close(tangent, tangent_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.filterwarnings(JIT_WARNING)
@pytest.mark.parametrize("name", FORWARD_CASES)
def test_nested_forward_mode_is_refused_not_zero(name):
    # The operators have no forward formula of their own: an outer level's tangent would be dropped.
    make, shapes = FORWARD_CASES[name]
    primals = [t.detach() for t in _leaves(*shapes)]
    inner_tangents = tuple(torch.randn_like(t) for t in primals)

    def inner(*moved):
        return torch.func.jvp(make("cpu"), moved, inner_tangents)[1]

    with pytest.raises(NotImplementedError, match="nested forward-mode AD"):
        torch.func.jvp(inner, tuple(primals), tuple(torch.ones_like(t) for t in primals))


@pytest.mark.filterwarnings(JIT_WARNING)
def test_forward_mode_of_semi_shift_conv_with_an_infinite_weight():
    # A tangent on one map only: the other map's share is left out, not multiplied (0 * Inf = NaN).
    en, de = torch.randn(1, 1, 4, 4, dtype=D), torch.randn(1, 1, 2, 2, dtype=D)
    weight = torch.zeros(1, 1, 3, 3, dtype=D)
    weight[0, 0, 0, 0] = float("inf")
    tangent = torch.randn_like(de)
    got = torch.func.jvp(lambda d: ul.semi_shift_conv(en, d, weight, backend="cpu"), (de,), (tangent,))[1]
    want = torch.func.jvp(lambda d: ul.semi_shift_conv(en, d, weight, backend="torch"), (de,), (tangent,))[1]
    torch.testing.assert_close(got, want, equal_nan=True)
    assert torch.isnan(got).sum() == torch.isnan(want).sum()

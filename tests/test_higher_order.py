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

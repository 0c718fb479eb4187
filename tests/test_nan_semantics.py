"""One NaN/Inf semantics on every backend: window slots and taps outside
the map are skipped (as the original CUDA kernels do), so a NaN or Inf
there never reaches the output or a gradient; inside the map they
propagate alike everywhere."""

import pytest
import torch

import upsamplelib as ul
from conftest import ALL_BACKENDS, on

D = torch.float64


def _nan_pattern(t):
    return torch.isnan(t) | torch.isinf(t)


def _results(function, inputs, backends=ALL_BACKENDS):
    """{backend: (output, gradients of every input)}."""
    results = {}
    for backend in backends:
        leaves = [t.clone().requires_grad_() for t in inputs]
        out = on(backend, function)(*leaves)
        grads = torch.autograd.grad(out.sum(), leaves)
        results[backend] = (out.detach(), grads)
    return results


def _assert_same_everywhere(results):
    first_out, first_grads = results["torch"]
    for backend, (out, grads) in results.items():
        assert torch.equal(_nan_pattern(out), _nan_pattern(first_out)), backend
        finite = ~_nan_pattern(out)
        torch.testing.assert_close(out[finite], first_out[finite], rtol=1e-12, atol=1e-12)
        for got, expected in zip(grads, first_grads):
            assert torch.equal(_nan_pattern(got), _nan_pattern(expected)), backend
            finite = ~_nan_pattern(got)
            torch.testing.assert_close(got[finite], expected[finite], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("poison", [float("nan"), float("inf")])
def test_carafe_mask_outside_the_map_is_skipped(poison):
    k, s = 3, 2
    x = torch.randn(1, 2, 3, 3, dtype=D)
    masks = torch.rand(1, k * k, 6, 6, dtype=D)
    masks[0, 0, 0, :] = poison  # slot (dy, dx) = (-1, -1): outside the map on output row 0 and 1
    masks[0, 0, :, 0] = poison
    masks[0, 8, 5, 5] = poison  # slot (+1, +1) at the bottom-right corner
    results = _results(lambda a, b, backend: ul.carafe(a, b, k, s, backend=backend), (x, masks))
    for backend, (out, grads) in results.items():
        assert torch.isfinite(out).all(), backend
        assert all(torch.isfinite(g).all() for g in grads), backend
    _assert_same_everywhere(results)


def test_carafe_nan_inside_the_map_propagates_alike():
    x = torch.randn(1, 2, 3, 3, dtype=D)
    x[0, 1, 1, 1] = float("nan")
    masks = torch.rand(1, 9, 6, 6, dtype=D)
    masks[0, 4, 2, 3] = float("inf")  # the centre slot: always inside
    results = _results(lambda a, b, backend: ul.carafe(a, b, 3, 2, backend=backend), (x, masks))
    assert _nan_pattern(results["torch"][0]).any()
    _assert_same_everywhere(results)


def test_sapa_query_at_a_corner_leaves_out_of_map_logits_zero():
    q = torch.randn(1, 2, 4, 4, dtype=D)
    key = torch.randn(1, 2, 2, 2, dtype=D)
    q[0, :, 0, 0] = float("nan")
    results = _results(lambda a, b, backend: ul.sapa_similarity(a, b, 3, 2, backend=backend), (q, key))
    for backend, (logits, _) in results.items():
        corner = logits[0, :, 0, 0].view(3, 3)
        assert torch.equal(corner[0], torch.zeros(3, dtype=D)) and torch.equal(corner[:, 0], torch.zeros(3, dtype=D))
        assert torch.isnan(corner[1:, 1:]).all(), backend
    _assert_same_everywhere(results)


@pytest.mark.parametrize("poison", [float("nan"), float("-inf")])
def test_semi_shift_corner_tap_outside_both_maps_is_skipped(poison):
    en = torch.randn(1, 2, 4, 6, dtype=D)
    de = torch.randn(1, 2, 2, 3, dtype=D)
    weight = torch.randn(3, 2, 3, 3, dtype=D)
    bias = torch.randn(3, dtype=D)
    weight[:, :, 0, 0] = poison  # the top-left tap
    results = _results(lambda *t, backend: ul.semi_shift_conv(*t, scale=2, backend=backend), (en, de, weight, bias))
    out = results["torch"][0]
    # Output row 0 / column 0: the top-left tap is outside both maps.
    assert torch.isfinite(out[:, :, 0, :]).all() and torch.isfinite(out[:, :, :, 0]).all()
    assert not torch.isfinite(out[:, :, 2:, 2:]).any()
    _assert_same_everywhere(results)


def test_semi_shift_nan_feature_propagates_alike():
    en = torch.randn(1, 2, 4, 4, dtype=D)
    de = torch.randn(1, 2, 2, 2, dtype=D)
    en[0, 0, 0, 3] = float("nan")
    de[0, 1, 1, 0] = float("inf")
    weight = torch.randn(2, 2, 3, 3, dtype=D)
    results = _results(lambda *t, backend: ul.semi_shift_conv(*t, None, scale=2, backend=backend), (en, de, weight))
    _assert_same_everywhere(results)


def test_the_fade_module_with_a_poisoned_corner_tap_agrees_on_every_backend():
    module = ul.FADE(2, embedding_dim=4).double()
    with torch.no_grad():
        module.ker_generator.content_encoder.weight[:, :, 2, 2] = float("nan")  # bottom-right tap
    en, de = torch.randn(1, 2, 4, 4, dtype=D), torch.randn(1, 2, 2, 2, dtype=D)
    outputs = {}
    for backend in ALL_BACKENDS:
        module.backend = backend
        outputs[backend] = on(backend, lambda a, b, backend: module(a, b))(en, de)
    for backend, out in outputs.items():
        assert torch.equal(_nan_pattern(out), _nan_pattern(outputs["torch"])), backend

"""What a researcher's training code does around the operators, found
missing in a trial: torch.export with dynamic shapes past the example's
size, and vmap and batched gradients of the semi-shift convolution (FADE)
on the cpu backend."""

from __future__ import annotations

import upsamplelib as ul  # noqa: I001  (first: it chooses the CUDA target before numba loads)
import pytest
import torch
from torch.export import Dim, export


@pytest.mark.parametrize("lite", [False, True])
def test_fade_exported_with_dynamic_shapes_runs_past_the_example_size(lite):
    torch.manual_seed(0)
    fade = ul.FADE(16, embedding_dim=16, lite=lite).eval()
    half, batch = Dim("half", min=2, max=128), Dim("batch", min=1, max=64)
    program = export(fade, (torch.randn(2, 16, 16, 16), torch.randn(2, 16, 8, 8)),
                     dynamic_shapes={"en": {0: batch, 2: 2 * half, 3: 2 * half}, "de": {0: batch, 2: half, 3: half}})
    # 4 x 16 x 64 x 64: large enough for the library's block transpose, which the example was not
    en, de = torch.randn(4, 16, 64, 64), torch.randn(4, 16, 32, 32)
    torch.testing.assert_close(program.module()(en, de), fade(en, de), rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore:.*batching rule")
def test_vmap_of_fade_equals_a_loop_over_the_batch():
    torch.manual_seed(0)
    fade = ul.FADE(8, embedding_dim=8).eval().double()
    en, de = torch.randn(3, 2, 8, 16, 16, dtype=torch.float64), torch.randn(3, 2, 8, 8, 8, dtype=torch.float64)
    expected = torch.stack([fade(a, b) for a, b in zip(en, de)])
    torch.testing.assert_close(torch.func.vmap(fade)(en, de), expected, rtol=0, atol=1e-14)


@pytest.mark.filterwarnings("ignore:.*batching rule")
def test_batched_gradients_of_semi_shift_conv_equal_the_torch_backend():
    torch.manual_seed(0)
    en = torch.randn(2, 8, 8, 8, dtype=torch.float64, requires_grad=True)
    de = torch.randn(2, 8, 4, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(5, 8, 3, 3, dtype=torch.float64, requires_grad=True)
    vectors = torch.randn(3, 2, 5, 8, 8, dtype=torch.float64)
    grads = {backend: torch.autograd.grad(ul.semi_shift_conv(en, de, weight, scale=2, backend=backend),
                                          (en, de, weight), vectors, is_grads_batched=True)
             for backend in ("cpu", "torch")}
    for got, expected in zip(grads["cpu"], grads["torch"]):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    jacobians = {backend: torch.autograd.functional.jacobian(
        lambda e: ul.semi_shift_conv(e, de.detach()[:1, :, :2, :2], weight.detach(), scale=2, backend=backend),
        en.detach()[:1, :, :4, :4], vectorize=True) for backend in ("cpu", "torch")}
    torch.testing.assert_close(jacobians["cpu"], jacobians["torch"], rtol=1e-12, atol=1e-12)

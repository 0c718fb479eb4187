"""Checks that need a real CUDA GPU (skipped elsewhere; ``bench/gpu_check.sh``
runs them): the fast kernels against the teaching ones at the benchmark's
sizes, the cached launch path actually taken and ordered on torch's
stream, and ``F.interpolate``'s CUDA nearest rule on CUDA tensors.

Without a GPU, tests/test_fast_kernels.py checks the same kernels in the
simulator at tiny sizes, and tests/test_ptx.py that they compile.
"""

import pytest
import torch
import torch.nn.functional as F

import upsamplelib as ul
from upsamplelib import backend

pytestmark = pytest.mark.skipif(backend.SIMULATOR or not torch.cuda.is_available(),
                                reason="needs a CUDA GPU (kernels run in the simulator here)")


def both_variants(function):
    results = []
    for variant in ("teaching", "fast"):
        with backend.kernel_variant_as(variant):
            results.append(function())
    return results


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_carafe_fast_equals_teaching_at_the_benchmark_size(dtype):
    x = torch.randn(1, 256, 128, 128, device="cuda", dtype=dtype)
    masks = torch.softmax(torch.randn(1, 25, 256, 256, device="cuda", dtype=dtype), 1)
    teaching, fast = both_variants(lambda: ul.carafe(x, masks, 5, 2))
    assert torch.equal(teaching, fast)
    grad = torch.randn_like(fast)
    teaching, fast = both_variants(
        lambda: torch.ops.upsamplelib.carafe_window_products(grad, x, 5, 2, 1, "cuda"))
    assert torch.equal(teaching, fast)


def test_grouped_carafe_fast_equals_teaching():
    x = torch.randn(2, 64, 37, 29, device="cuda")
    masks = torch.randn(2, 4 * 9, 111, 87, device="cuda")
    teaching, fast = both_variants(lambda: ul.carafe(x, masks, 3, 3, 4))
    assert torch.equal(teaching, fast)


def test_sapa_similarity_fast_equals_teaching_at_the_authors_size():
    q = torch.randn(1, 64, 240, 240, device="cuda")
    key = torch.randn(1, 64, 120, 120, device="cuda")
    teaching, fast = both_variants(lambda: ul.sapa_similarity(q, key, 5, 2))
    assert torch.equal(teaching, fast)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_semi_shift_weight_gradient_fast_equals_teaching(dtype):
    en = torch.randn(1, 64, 128, 128, device="cuda", dtype=dtype)
    de = torch.randn(1, 64, 64, 64, device="cuda", dtype=dtype)
    grad = torch.randn(1, 25, 128, 128, device="cuda", dtype=dtype)
    teaching, fast = both_variants(
        lambda: torch.ops.upsamplelib.semi_shift_conv_weight_grad(grad, en, de, 3, 2, 1, "cuda"))
    tolerance = {torch.float32: 1e-3, torch.float64: 1e-10}[dtype]
    torch.testing.assert_close(fast, teaching, rtol=tolerance, atol=tolerance)


def test_the_cached_launch_path_is_taken():
    backend.FAST_LAUNCH.kernels.clear()
    x = torch.randn(2, 3, 5, 7, device="cuda")
    first = ul.interpolate(x, scale_factor=2)
    assert any(entry is not None for entry in backend.FAST_LAUNCH.kernels.values())
    again = ul.interpolate(x, scale_factor=2)  # through the cache
    assert torch.equal(first, again)
    assert torch.equal(again, F.interpolate(x, scale_factor=2))


def test_cached_launches_run_on_torchs_current_stream():
    """Work queued on a side stream before the launch must be done when the
    kernel reads: the launch goes on that stream, not numba's default."""
    side = torch.cuda.Stream()
    x = torch.zeros(4, 64, 256, 256, device="cuda")
    ul.interpolate(x, scale_factor=2)  # compile and cache first
    with torch.cuda.stream(side):
        torch.cuda._sleep(50_000_000)  # keep the side stream busy
        x.fill_(1.0)
        out = ul.interpolate(x, scale_factor=2)
    side.synchronize()
    assert bool((out == 1).all())


@pytest.mark.parametrize("size, factor", [((7, 9), 1.7), ((13, 5), 2.3), ((10, 10), 0.6), ((3, 11), 3.1)])
@pytest.mark.parametrize("mode", ["nearest", "nearest-exact"])
def test_nearest_rule_of_cuda_tensors(size, factor, mode):
    """On CUDA tensors ul.interpolate follows PyTorch's CUDA index rule
    (NEAREST_DEVICE: float32 throughout), bit for bit, float32 and float64."""
    for dtype in (torch.float32, torch.float64):
        x = torch.randn(2, 3, *size, device="cuda", dtype=dtype)
        assert torch.equal(ul.interpolate(x, scale_factor=factor, mode=mode),
                           F.interpolate(x, scale_factor=factor, mode=mode))
        out_size = (int(size[0] * factor) + 1, int(size[1] * factor) + 2)
        assert torch.equal(ul.interpolate(x, size=out_size, mode=mode), F.interpolate(x, size=out_size, mode=mode))

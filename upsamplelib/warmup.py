"""Compile every Numba CPU kernel once, so that later processes find them in
Numba's cache instead of compiling them (5 to 8 s per operator).

    python -m upsamplelib.warmup        # what `make setup` runs last

It goes through the public API only (each function and each module, forward
and backward, in float32 and float64), so a kernel added behind one of them is
warmed without a change here. Nothing runs on the simulator: the CUDA
kernels are plain Python there and have nothing to cache. CARAFE's forward
register loop is compiled for each window size (up to 5) and scale, both
constants of the loop: the pairs warmed here are k = 3 (below) and k = 5
(the modules' default) at scale 2; any other pair compiles on its first
call, about 5 s, and is cached then.
"""

from __future__ import annotations

import math
import sys
import time

import torch

import upsamplelib as ul
from upsamplelib.layout import FEWEST_FAST_CHANNELS, SMALLEST_FAST_COPY

#: float32 is what the lessons and a model use; float64 is what gradcheck
#: (and so a student testing a gradient) uses.
DTYPES = (torch.float32, torch.float64)


def _backward(output, *inputs):
    """Gradients of a random projection of ``output`` into every input: runs
    each backward kernel once, with a non-constant incoming gradient."""
    weights = torch.randn_like(output)
    torch.autograd.grad((output * weights).sum(), [t for t in inputs if t.requires_grad])


def _leaf(*shape, dtype):
    return torch.randn(*shape, dtype=dtype, requires_grad=True)


def warm_functions(dtype):
    """ul.interpolate (every mode), ul.carafe, ul.sapa_similarity and
    ul.semi_shift_conv, forward and backward, on the CPU backend."""
    # NCHW, and channels-last with channels enough for the (N, H, W, C) loops of every mode.
    maps = (_leaf(1, 3, 5, 6, dtype=dtype),
            torch.randn(1, 8, 5, 6, dtype=dtype).contiguous(memory_format=torch.channels_last).requires_grad_())
    for x in maps:
        for mode, align_corners in (("nearest", None), ("nearest-exact", None),
                                    ("bilinear", False), ("bilinear", True)):
            for size_or_scale in ({"scale_factor": 2}, {"size": (9, 13)}):
                y = ul.interpolate(x, mode=mode, align_corners=align_corners, backend="cpu", **size_or_scale)
                _backward(y, x)

    kernel_size, scale, group = 3, 2, 1
    masks = torch.softmax(torch.randn(1, group * kernel_size**2, 10, 12, dtype=dtype), dim=1).requires_grad_()
    _backward(ul.carafe(x, masks, kernel_size, scale, group=group, backend="cpu"), x, masks)
    # A NaN mask value where its slot reads the padding takes the slot-by-slot loop for that row.
    border_nan = masks.detach().clone()
    border_nan[0, 0, 0, 0] = float("nan")
    ul.carafe(x, border_nan, kernel_size, scale, group=group, backend="cpu")

    q, key = _leaf(1, 4, 10, 12, dtype=dtype), _leaf(1, 4, 5, 6, dtype=dtype)
    _backward(ul.sapa_similarity(q, key, kernel_size, scale, backend="cpu"), q, key)

    # en large enough for the block-transpose layout copies (upsamplelib.layout); rows even, for scale 2.
    channels = FEWEST_FAST_CHANNELS
    rows = 2 * math.ceil(SMALLEST_FAST_COPY / (channels * 64 * 2))
    en, de = _leaf(1, channels, rows, 64, dtype=dtype), _leaf(1, channels, rows // 2, 32, dtype=dtype)
    weight, bias = _leaf(9, channels, 3, 3, dtype=dtype), _leaf(9, dtype=dtype)
    _backward(ul.semi_shift_conv(en, de, weight, bias, scale=scale, backend="cpu"), en, de, weight, bias)
    # A channels-last en: the decoder's share is added into its convolution in place.
    en_last = en.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    _backward(ul.semi_shift_conv(en_last, de, weight, bias, scale=scale, backend="cpu"), en_last, de, weight, bias)
    # FADE's 25 logits on a 64 x 64 map, each layout: on AVX-512 the convolutions' filters are padded to 32
    # (fade.padded_filter_count), and loops leave the padded channels out.
    wide, wide_bias = _leaf(25, channels, 3, 3, dtype=dtype), _leaf(25, dtype=dtype)
    for layout in (torch.contiguous_format, torch.channels_last):
        big_en = torch.randn(1, channels, 64, 64, dtype=dtype).contiguous(memory_format=layout).requires_grad_()
        small_de = _leaf(1, channels, 32, 32, dtype=dtype)
        _backward(ul.semi_shift_conv(big_en, small_de, wide, wide_bias, scale=scale, backend="cpu"),
                  big_en, small_de, wide, wide_bias)
    # A weight holding Inf takes the one-pass loops (the NaN/Inf rule), not PyTorch's convolutions.
    infinite = weight.detach().clone()
    infinite[0, 0, 0, 0] = float("inf")
    infinite.requires_grad_()
    _backward(ul.semi_shift_conv(en, de, infinite, bias, scale=scale, backend="cpu"), en, de, infinite, bias)


def warm_modules(dtype):
    """ul.CARAFE, ul.SAPA (each variant) and ul.FADE (and FADE-Lite), forward
    and backward, with their default (CPU) kernels."""
    channels = 8
    x = _leaf(1, channels, 6, 5, dtype=dtype)
    encoder = _leaf(1, channels, 12, 10, dtype=dtype)
    modules = [(ul.CARAFE(channels), (x,))]
    modules += [(ul.SAPA(channels, variant=variant), (encoder, x)) for variant in ("B", "G", "I")]
    modules += [(ul.FADE(channels, lite=lite), (encoder, x)) for lite in (False, True)]
    for module, inputs in modules:
        module = module.to(dtype)
        output = module(*inputs)
        _backward(output, *inputs, *module.parameters())


def main() -> int:
    start = time.perf_counter()
    torch.manual_seed(0)
    for dtype in DTYPES:
        warm_functions(dtype)
        warm_modules(dtype)
    print(f"upsamplelib: CPU kernels compiled into Numba's cache ({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

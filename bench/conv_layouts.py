"""The semi-shift convolution's cpu fast path, piece by piece: each of
PyTorch's convolutions it runs, timed on NCHW and on channels-last maps,
and its backward's convolutions in the two orders, with page faults.

    python bench/conv_layouts.py [--quick]

These are the figures behind the layouts that ``upsamplelib/ops/fade.py``
(its note on the fast path) chooses: the forward convolutions and the
weight gradient in the maps' own layout, the input gradients channels-last,
the weight gradient first. They depend on the CPU (oneDNN picks its kernels
by instruction set: PyTorch names it, printed first) and on the machine's
load; ``make bench`` gives the op against the two-convolution form.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("UPSAMPLELIB_QUIET", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from upsamplelib.layout import to_channels_first, to_channels_last  # noqa: E402
from upsamplelib.ops import fade  # noqa: E402
from upsamplelib.timing import compare, page_faults_per_call  # noqa: E402


def maps(quick: bool):
    """The bench's semi-shift size: en (1, C, 2h, 2h), de (1, C, h, h),
    a 3 x 3 weight to 25 outputs, and a grad_out; each NCHW."""
    channels, side = (8, 16) if quick else (64, 64)
    torch.manual_seed(0)
    return {"en": torch.randn(1, channels, 2 * side, 2 * side), "de": torch.randn(1, channels, side, side),
            "weight": 0.01 * torch.randn(25, channels, 3, 3), "grad": torch.randn(1, 25, 2 * side, 2 * side)}


def layout_rows(t):
    """{row: {layout: function}}: en's convolution, its transposed one (d/d en)
    and its weight gradient, each on maps and weight in one layout."""
    shape = t["weight"].shape
    rows = {}
    for layout, name in ((torch.contiguous_format, "NCHW"), (torch.channels_last, "channels-last")):
        en, weight, grad = (t[key].contiguous(memory_format=layout) for key in ("en", "weight", "grad"))
        rows.setdefault("forward conv2d(en)", {})[name] = lambda en=en, weight=weight: F.conv2d(en, weight, padding=1)
        rows.setdefault("d/d en: conv_transpose2d(grad)", {})[name] = (
            lambda grad=grad, weight=weight: F.conv_transpose2d(grad, weight, padding=1))
        rows.setdefault("d/d weight: conv2d_weight(en, grad)", {})[name] = (
            lambda en=en, grad=grad: torch.nn.grad.conv2d_weight(en, shape, grad, padding=1))
    return rows


def backward_orders(t):
    """The fast path's backward on NCHW maps (its operators, as
    ``_semi_shift_grads_cpu`` calls them), the weight gradient taken before
    the input gradients (the library's order) or after them."""
    en, de, weight, grad = t["en"], t["de"], t["weight"], t["grad"]
    size = weight.shape[2]

    def weight_grad(pooled):
        return (fade.weight_grad_op(grad, en, None, size, 1, 1, "cpu")
                + fade.weight_grad_op(pooled, de, None, size, 1, 1, "cpu"))

    def input_grads(pooled):
        return [to_channels_first(fade.encoder_grad_op(to_channels_last(g), weight, 1, "cpu")) for g in (grad, pooled)]

    def weight_first():
        pooled = fade.dense_sum_pool(grad, 2)
        return weight_grad(pooled), input_grads(pooled)

    def weight_last():
        pooled = fade.dense_sum_pool(grad, 2)
        inputs = input_grads(pooled)
        return weight_grad(pooled), inputs

    return {"weight gradient first (the library's)": weight_first, "weight gradient last": weight_last}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny maps, one round (a smoke test)")
    args = parser.parse_args(argv)
    repeats, rounds = (2, 1) if args.quick else (10, 5)
    t = maps(args.quick)
    en = t["en"]
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{torch.get_num_threads()} threads; en {tuple(en.shape)} -> 25 channels, 3 x 3")
    print(f"{'convolution':38s} {'NCHW ms':>9s} {'ch.-last ms':>12s}")
    for row, functions in layout_rows(t).items():
        seconds = compare(functions, repeats=repeats, rounds=rounds)
        print(f"{row:38s} {1e3 * seconds['NCHW']:9.3f} {1e3 * seconds['channels-last']:12.3f}")
    orders = backward_orders(t)
    faults = {name: page_faults_per_call(function, calls=2 if args.quick else 10, warmup=1 if args.quick else 3)
              for name, function in orders.items()}
    seconds = compare(orders, repeats=repeats, rounds=rounds)
    print(f"{'backward convolutions, NCHW maps':38s} {'ms':>9s} {'faults/call':>12s}")
    for name in orders:
        print(f"{name:38s} {1e3 * seconds[name]:9.3f} {faults[name]:12.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

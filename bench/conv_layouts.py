"""The semi-shift convolution's cpu fast path, piece by piece: each of
PyTorch's convolutions it runs, timed on NCHW and on channels-last maps,
and its backward's convolutions in the two orders, with page faults.

    python bench/conv_layouts.py [--quick]

These are the figures behind the layouts that ``upsamplelib/ops/fade.py``
(its note on the fast path) chooses: the forward convolutions and the
weight gradient in the maps' own layout (or NCHW, on the CPUs where that
wins: the rows "d/d weight of channels-last maps"), the input gradients
channels-last, the weight gradient first; and, on the CPUs where it is
faster, the forward convolutions with filters padded to a multiple of 16
and the weight gradient channels-last (the last rows, "filters padded
to"). They depend on the CPU (oneDNN picks its kernels by instruction
set: PyTorch names it, printed first), on the machine's load, and on the
allocator's state, so every table is printed twice: in the fresh
process, where glibc maps each large tensor afresh and every call pays its
page faults, and after ``upsamplelib.timing.reuse_freed_memory()``, the
state of a training loop and of ``make bench``'s rows (no page faults). The
first tables are one state only roughly: glibc moves its threshold as blocks
are freed, so a row's faults there depend on the rows timed before it.
``make bench`` gives the op against the two-convolution form.
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
from upsamplelib.timing import compare, page_faults_per_call, reuse_freed_memory  # noqa: E402


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
        # The input and weight gradients of en's convolution in one call, as the two-convolution form's
        # autograd takes them.
        rows.setdefault("d/d en and d/d weight: convolution_backward", {})[name] = (
            lambda en=en, grad=grad, weight=weight: torch.ops.aten.convolution_backward(
                grad, en, weight, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [True, True, False]))
    return rows


def backward_orders(t):
    """The fast path's backward on NCHW maps (its operators, as
    ``_semi_shift_grads_cpu`` calls them), the weight gradient taken before
    the input gradients (the library's order) or after them; and, for
    comparison, the same gradients from one ``convolution_backward`` per
    map in NCHW, the two-convolution form's way."""
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

    def per_map_in_place():
        # Both gradients of each map from one call in its own layout (NCHW), no copies: the convolutions
        # of the two-convolution form's backward.
        pooled = fade.dense_sum_pool(grad, 2)
        return [torch.ops.aten.convolution_backward(g, feature, weight, None, [1, 1], [size // 2] * 2, [1, 1],
                                                    False, [0, 0], 1, [True, True, False])
                for g, feature in ((grad, en), (pooled, de))]

    return {"weight gradient first (the library's)": weight_first, "weight gradient last": weight_last,
            "each map's convolution_backward, NCHW": per_map_in_place}


def channels_last_weight_grad(t):
    """The weight gradient of channels-last maps two ways: channels-last as
    they are, or NCHW after the block transpose's copies of en and grad_out
    (which ``fade.NCHW_WEIGHT_GRAD_CAPABILITIES`` picks on some CPUs)."""
    shape = t["weight"].shape
    en, grad = (t[key].contiguous(memory_format=torch.channels_last) for key in ("en", "grad"))
    return {"in channels-last": lambda: torch.nn.grad.conv2d_weight(en, shape, grad, padding=1),
            "NCHW, copies included": lambda: torch.nn.grad.conv2d_weight(
                to_channels_first(en), shape, to_channels_first(grad), padding=1)}


def padded_filter_rows(t):
    """What the cpu path runs on the CPUs named by
    ``fade.PADDED_FILTER_CAPABILITIES`` (``fade.padded_filter_count``), from
    an NCHW en and from a channels-last one: en's convolution with the 25
    filters padded by zero ones to 32, channels-last, and its weight
    gradient channels-last at 25 filters, the copies of NCHW maps included
    (padded, the gradient made the step slower); set against the first
    table's rows."""
    weight = t["weight"]
    filters = fade.filter_block_multiple(weight.shape[0])
    padded = fade.zero_padded(weight, filters, dim=0)
    rows = {}
    for layout, name in ((torch.contiguous_format, "NCHW en"), (torch.channels_last, "channels-last en")):
        en, grad = (t[key].contiguous(memory_format=layout) for key in ("en", "grad"))
        rows[f"forward conv2d(en), {name}"] = lambda en=en: F.conv2d(en, padded, padding=1)
        rows[f"d/d weight, {name}, not padded"] = lambda en=en, grad=grad: torch.nn.grad.conv2d_weight(
            to_channels_last(en), weight.shape, to_channels_last(grad), padding=1)
    return filters, rows


def print_tables(t, repeats, rounds, fault_calls, fault_warmup):
    """Both tables in the process's allocator state as it is now."""
    print(f"{'convolution':44s} {'NCHW ms':>9s} {'ch.-last ms':>12s} {'faults/call':>12s}")
    for row, functions in layout_rows(t).items():
        seconds = compare(functions, repeats=repeats, rounds=rounds)
        faults = [page_faults_per_call(function, calls=fault_calls, warmup=fault_warmup)
                  for function in functions.values()]
        print(f"{row:44s} {1e3 * seconds['NCHW']:9.3f} {1e3 * seconds['channels-last']:12.3f} "
              f"{'/'.join(f'{count:.0f}' for count in faults):>12s}")
    orders = backward_orders(t)
    faults = {name: page_faults_per_call(function, calls=fault_calls, warmup=fault_warmup)
              for name, function in orders.items()}
    seconds = compare(orders, repeats=repeats, rounds=rounds)
    print(f"{'backward convolutions, NCHW maps':44s} {'ms':>9s} {'':>12s} {'faults/call':>12s}")
    for name in orders:
        print(f"{name:44s} {1e3 * seconds[name]:9.3f} {'':>12s} {faults[name]:12.0f}")
    ways = channels_last_weight_grad(t)
    seconds = compare(ways, repeats=repeats, rounds=rounds)
    chosen = "NCHW" if fade.NCHW_WEIGHT_GRAD_CAPABILITIES & {fade._cpu_capability()} else "in channels-last"
    print(f"{'d/d weight of channels-last maps':44s} {'ms':>9s} {'':>12s} {'faults/call':>12s}"
          f"  (the library's way on this CPU: {chosen})")
    for name, function in ways.items():
        faults = page_faults_per_call(function, calls=fault_calls, warmup=fault_warmup)
        print(f"{name:44s} {1e3 * seconds[name]:9.3f} {'':>12s} {faults:12.0f}")
    filters, rows = padded_filter_rows(t)
    seconds = compare(rows, repeats=repeats, rounds=rounds)
    en = t["en"]
    pixels = en.shape[0] * en.shape[2] * en.shape[3]
    used = "used" if fade.padded_filter_count(t["weight"].shape[0], 1, torch.float32, pixels) else "not used"
    print(f"{f'filters padded to {filters}, channels-last':44s} {'ms':>9s} {'':>12s} {'faults/call':>12s}"
          f"  (on this CPU: {used})")
    for name, function in rows.items():
        faults = page_faults_per_call(function, calls=fault_calls, warmup=fault_warmup)
        print(f"{name:44s} {1e3 * seconds[name]:9.3f} {'':>12s} {faults:12.0f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny maps, one round (a smoke test)")
    args = parser.parse_args(argv)
    repeats, rounds = (2, 1) if args.quick else (10, 5)
    fault_calls, fault_warmup = (2, 1) if args.quick else (10, 3)
    t = maps(args.quick)
    en = t["en"]
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{torch.get_num_threads()} threads; en {tuple(en.shape)} -> 25 channels, 3 x 3 "
          "(faults/call: NCHW/channels-last)")
    print("== a fresh process (glibc maps each large tensor afresh: page faults on every call)")
    print_tables(t, repeats, rounds, fault_calls, fault_warmup)
    if reuse_freed_memory():
        print("== freed blocks reused (upsamplelib.timing.reuse_freed_memory: a training loop's state, make bench's)")
        print_tables(t, repeats, rounds, fault_calls, fault_warmup)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Checkers of lesson 05 (FADE: the semi-shift convolution as two PyTorch
convolutions, per output pixel, and as one-pass kernel; its three gradient
kernels; the autograd Function; the gate and the module's forward)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..ops.fade import FADE, semi_shift_conv_reference
from .engine import (
    INTEGER_DIVISION_NOTE,
    CheckFailed,
    check_non_contiguous,
    compare,
    diagnose,
    passed,
    require_float64_precision,
    require_gather,
    run_with_timeout,
)
from .rules import KernelCheck

__all__ = [
    "check_semi_shift_two_convs",
    "check_semi_shift_pixel",
    "check_semi_shift_kernel",
    "check_semi_shift_grad_en_kernel",
    "check_semi_shift_grad_de_kernel",
    "check_semi_shift_grad_weight_kernel",
    "check_semi_shift_function",
    "check_fade_forward",
]

# --------------------------------------------------------------------------
# Cases, references and the usual mistakes
# --------------------------------------------------------------------------

#: (N, C, O, h, w, kernel_size, scale): non-square maps, maps smaller than
#: the window, k = 1, 3, 5, scales 1 to 3, a batch of 2. Small on purpose:
#: every output is a Python thread in the simulator, and each loops over
#: C * k * k taps.
_CASES = [
    (1, 2, 3, 3, 4, 3, 2),
    (2, 2, 2, 2, 3, 3, 3),
    (1, 3, 2, 4, 2, 5, 2),
    (1, 2, 2, 3, 3, 1, 2),
    (1, 2, 3, 2, 5, 3, 1),
    (1, 1, 1, 1, 1, 3, 2),
    # a decoder map of more than one block of threads (every case above fits one), and a 1 x 1 map at
    # s = 1, whose weight gradient is 0 at the 8 taps outside it (a thread must still write its 0)
    (1, 3, 2, 5, 6, 3, 2),
    (1, 2, 2, 1, 1, 3, 1),
]

#: Larger cases for the PyTorch formulation, which costs nothing to check.
_TORCH_CASES = _CASES + [(2, 5, 9, 6, 7, 3, 2), (1, 4, 25, 5, 3, 3, 4)]

UPSAMPLED_HINT = ("your result is a convolution over nearest_up(D): the decoder window of output (Y, X) then covers "
                  "high-res rows Y - r .. Y + r, i.e. low-res rows (Y + uy - r) // s, only 2 distinct rows for k=3, "
                  "s=2. The semi-shift's decoder window is centred on the low-res pixel (Y // s, X // s) that the "
                  "output is attached to: it reads D at row Y // s + uy - r, column X // s + ux - r")
BIAS_ONCE_HINT = ("the bias is added once; the semi-shift applies the same conv (weight AND bias) on both paths, so the "
                  "bias is added twice: 2 * bias[o] + sum ...")
NO_BIAS_HINT = "the bias is missing: the result is 2 * bias[o] + the sum over the taps of both windows"
ENCODER_ONLY_HINT = ("only the encoder window is summed; add the decoder window too: D at low-res row Y // s + uy - r, "
                     "column X // s + ux - r, with the same weight")
DECODER_ONLY_HINT = ("only the decoder window is summed; add the encoder window too: E at row Y + uy - r, column "
                     "X + ux - r, with the same weight")
REPLICATE_HINT = ("your result repeats the edge pixels for taps outside the map (a clamped index). The convolutions pad "
                  "with zeros: a tap outside the map adds nothing")
TRANSPOSED_HINT = "rows and columns of the weight are swapped: tap (uy, ux) is weight[o, c, uy, ux], uy the row offset"
FLIPPED_HINT = ("the weight is flipped: F.conv2d (and the semi-shift) is a correlation, tap (uy, ux) of output (Y, X) "
                "reads row Y + uy - r with weight[o, c, uy, ux], not weight[o, c, k - 1 - uy, k - 1 - ux]")
BILINEAR_HINT = "the decoder path is upsampled bilinearly; the semi-shift repeats it: F.interpolate(..., mode='nearest')"
BORDER_HINT = ("the first wrong output is at the border of the map, where a window sticks out. Taps outside the map "
               "add 0 (zero padding): check 0 <= row < height and 0 <= col < width before reading. (NumPy, and so the "
               "simulator, reads index -1 silently as the last row)")

_FORMULA = ("out[n, o, Y, X] = 2 * bias[o] + sum over c, uy, ux of weight[o, c, uy, ux] * (E[n, c, Y + uy - r, "
            "X + ux - r] + D[n, c, Y // s + uy - r, X // s + ux - r]), r = k // 2, zero outside the maps")


def _describe(case):
    n, c, o, h, w, k, s = case
    return f"E ({n}, {c}, {s * h}, {s * w}), D ({n}, {c}, {h}, {w}), weight ({o}, {c}, {k}, {k}), scale={s}"


def _inputs(case, seed, dtype=np.float32):
    """E, D, weight, bias as arrays."""
    n, c, o, h, w, k, s = case
    rng = np.random.default_rng(seed)
    E = rng.standard_normal((n, c, s * h, s * w)).astype(dtype)
    D = rng.standard_normal((n, c, h, w)).astype(dtype)
    weight = rng.standard_normal((o, c, k, k)).astype(dtype)
    bias = rng.standard_normal(o).astype(dtype)
    return E, D, weight, bias


def _torch(*arrays):
    return [torch.from_numpy(np.asarray(a)).double() for a in arrays]


def _reference(E, D, weight, bias, scale):
    return semi_shift_conv_reference(*_torch(E, D, weight, bias), scale)


def _conv(x, weight, bias, mode="constant"):
    pad = weight.shape[2] // 2
    if mode == "constant" or pad == 0:
        return F.conv2d(x, weight, bias, padding=pad)
    return F.conv2d(F.pad(x, (pad,) * 4, mode=mode), weight, bias)


def _up(x, scale, mode="nearest"):
    if mode == "nearest":
        return F.interpolate(x, scale_factor=scale, mode="nearest")
    return F.interpolate(x, scale_factor=scale, mode=mode, align_corners=False)


def _variants(E, D, weight, bias, scale, bilinear=False):
    """Wrong results a student's code may produce, each with its hint."""
    E, D, weight, bias = _torch(E, D, weight, bias)
    b = bias[None, :, None, None]
    right = semi_shift_conv_reference(E, D, weight, bias, scale)
    encoder, decoder = _conv(E, weight, bias), _up(_conv(D, weight, bias), scale)
    found = [
        (encoder + _conv(_up(D, scale), weight, bias), UPSAMPLED_HINT),
        (right - b, BIAS_ONCE_HINT),
        (right - 2 * b, NO_BIAS_HINT),
        (encoder, ENCODER_ONLY_HINT),
        (encoder + b, ENCODER_ONLY_HINT),
        (decoder, DECODER_ONLY_HINT),
        (decoder + b, DECODER_ONLY_HINT),
        (_conv(E, weight, bias, "replicate") + _up(_conv(D, weight, bias, "replicate"), scale), REPLICATE_HINT),
        (semi_shift_conv_reference(E, D, weight.transpose(2, 3), bias, scale), TRANSPOSED_HINT),
        (semi_shift_conv_reference(E, D, weight.flip(2, 3), bias, scale), FLIPPED_HINT),
    ]
    if bilinear:
        found.append((encoder + _up(_conv(D, weight, bias), scale, "bilinear"), BILINEAR_HINT))
    return found


def _at_border(index, shape_low, kernel_size, scale):
    """Whether output index (n, o, Y, X) has a window (encoder or decoder) that leaves the maps."""
    _, _, Y, X = index
    h, w = shape_low
    r = kernel_size // 2
    encoder_inside = r <= Y < scale * h - r and r <= X < scale * w - r
    decoder_inside = r <= Y // scale < h - r and r <= X // scale < w - r
    return not (encoder_inside and decoder_inside)


def _diagnose(expected, got, variants, *, rtol=1e-4, atol=1e-4, **details):
    diagnose(expected, got, variants, rtol=rtol, atol=atol, border_hint=BORDER_HINT, **details)


def _rules(kernel, what, output):
    return KernelCheck(kernel, what, output=output, float_index_note=INTEGER_DIVISION_NOTE)


def _launch(rules, n_threads, *arrays, guard, count=False, case=""):
    rules.launch(rules.grid_for(n_threads), *arrays, count=count, case=case,
                 bounds_hint=f"guard the thread with `if i < {guard}:`, and check that a tap is inside the map "
                             "before reading it",
                 index_hint="check that a tap is inside the map (0 <= row < height and 0 <= col < width) before "
                            "reading it")


# --------------------------------------------------------------------------
# 05.1 two convolutions in PyTorch
# --------------------------------------------------------------------------


def check_semi_shift_two_convs(semi_shift):
    """``semi_shift(E, D, weight, bias, scale)`` in PyTorch: (N, C, s*h, s*w)
    and (N, C, h, w) -> (N, O, s*h, s*w), as a conv on E plus the nearest
    upsampling of the same conv on D."""
    what = "semi_shift_two_convs"
    for index, case in enumerate(_TORCH_CASES):
        n, c, o, h, w, k, s = case
        E, D, weight, bias = _inputs(case, 500 + index, np.float64)
        try:
            got = semi_shift(*_torch(E, D, weight, bias), s)
        except RuntimeError as error:
            if "must match the size of tensor" not in str(error):
                raise
            raise CheckFailed(f"{what}: the two paths cannot be added for {_describe(case)}: "
                              f"{str(error).splitlines()[0]}\nHint: both must be (N, O, s*h, s*w): pad both "
                              "convolutions by k // 2 (padding=weight.shape[2] // 2) so that they keep the size, "
                              "and upsample the decoder's by scale (F.interpolate(..., scale_factor=scale, "
                              "mode='nearest'))") from None
        if not isinstance(got, torch.Tensor):
            raise CheckFailed(f"{what}: expected a tensor, got {type(got).__name__}")
        if tuple(got.shape) != (n, o, s * h, s * w):
            raise CheckFailed(f"{what}: shape {tuple(got.shape)} for {_describe(case)}; expected "
                              f"{(n, o, s * h, s * w)} = (N, O, s*h, s*w).\nHint: pad both convolutions by "
                              "k // 2 (padding=weight.shape[2] // 2) so that they keep the size, and upsample the "
                              "decoder's by scale")
        _diagnose(_reference(E, D, weight, bias, s), got, _variants(E, D, weight, bias, s, bilinear=True),
                  what=what, case=_describe(case), rtol=1e-7, atol=1e-9,
                  hint="F.conv2d(E, weight, bias, padding=k // 2) + F.interpolate(F.conv2d(D, weight, bias, "
                       "padding=k // 2), scale_factor=scale, mode='nearest')")
    passed(what, len(_TORCH_CASES))


# --------------------------------------------------------------------------
# 05.2 one output pixel, in plain Python
# --------------------------------------------------------------------------


def check_semi_shift_pixel(semi_shift_pixel):
    """``semi_shift_pixel(E, D, weight, bias, n, o, Y, X, scale)`` -> the
    logit out[n, o, Y, X], from NumPy arrays, by the windowed definition.
    Checked at every output pixel of every case."""
    what = "semi_shift_pixel"
    for index, case in enumerate(_CASES):
        n, c, o, h, w, k, s = case
        E, D, weight, bias = _inputs(case, 510 + index, np.float64)
        got = np.empty((n, o, s * h, s * w))
        for b in range(n):
            for channel in range(o):
                for Y in range(s * h):
                    for X in range(s * w):
                        try:
                            value = semi_shift_pixel(E, D, weight, bias, b, channel, Y, X, s)
                        except IndexError as error:
                            raise CheckFailed(
                                f"{what}(n={b}, o={channel}, Y={Y}, X={X}, scale={s}) indexed out of bounds for "
                                f"{_describe(case)} ({error}).\nHint: a tap outside the map adds 0: check "
                                "0 <= row < height and 0 <= col < width before reading") from None
                        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
                            raise CheckFailed(f"{what} returned {value!r} of type {type(value).__name__} at "
                                              f"(n={b}, o={channel}, Y={Y}, X={X}); expected a number")
                        got[b, channel, Y, X] = float(value)
        _diagnose(_reference(E, D, weight, bias, s), got, _variants(E, D, weight, bias, s), what=what,
                  case=_describe(case), hint=_FORMULA, rtol=1e-7, atol=1e-9,
                  border=lambda i, h=h, w=w, k=k, s=s: _at_border(i, (h, w), k, s))
    n, c, o, h, w, k, s = _NAN_TAP_CASE
    for tap in _nan_taps(k):
        E, D, weight, bias = _inputs(_NAN_TAP_CASE, 519, np.float64)
        E, D = _zero_left_half(E, D)
        weight[:, :, tap[0], tap[1]] = np.nan
        got = np.array([[[[float(semi_shift_pixel(E, D, weight, bias, b, channel, Y, X, s)) for X in range(s * w)]
                          for Y in range(s * h)] for channel in range(o)] for b in range(n)])
        _require_skipped(what, "out", _reference(E, D, weight, bias, s), got,
                         _describe(_NAN_TAP_CASE) + _MAPS_LEFT_HALF_ZERO, _SKIP_HINT, _nan_weight(tap))
    passed(what, len(_CASES) + 2)


# --------------------------------------------------------------------------
# 05.3 the one-pass kernel
# --------------------------------------------------------------------------


def check_semi_shift_kernel(kernel):
    """``kernel(E, D, weight, bias, out, scale)``: one thread per element
    (n, o, Y, X) of ``out`` (N, O, s*h, s*w) on a 1-D grid, reading E and D
    directly (no intermediate maps)."""
    what = "semi_shift_kernel"
    rules = _rules(kernel, what, 4)
    for index, case in enumerate(_CASES):
        n, c, o, h, w, k, s = case
        E, D, weight, bias = _inputs(case, 520 + index)
        out = np.full((n, o, s * h, s * w), np.nan, np.float32)
        _launch(rules, out.size, E, D, weight, bias, out, s, guard="out.size", count=index == 1, case=_describe(case))
        _diagnose(_reference(E, D, weight, bias, s), out, _variants(E, D, weight, bias, s), what=what,
                  case=_describe(case), rtol=1e-4, atol=1e-4,
                  hint="unravel i into (n, o, Y, X) with X fastest; then " + _FORMULA,
                  border=lambda i, h=h, w=w, k=k, s=s: _at_border(i, (h, w), k, s))
    n, c, o, h, w, k, s = _NAN_TAP_CASE
    for tap, _, E, D, weight, bias, _ in _nan_weight_cases(529):
        out = np.full((n, o, s * h, s * w), np.nan, np.float32)
        _launch(rules, out.size, E, D, weight, bias, out, s, guard="out.size",
                case=_describe(_NAN_TAP_CASE) + _MAPS_LEFT_HALF_ZERO + f", nan weight at tap {tap}")
        _require_skipped(what, "out", _reference(E, D, weight, bias, s), out,
                         _describe(_NAN_TAP_CASE) + _MAPS_LEFT_HALF_ZERO,
                         "a tap that reads outside both maps is skipped, not multiplied by read_or_zero's zeros "
                         "(nan * 0 is nan): add weight * (e + d) only where the encoder's or the decoder's tap is "
                         "inside (each row and column tested at both ends), so that a nan or inf weight at a skipped "
                         "tap never reaches the output", _nan_weight(tap))
    rules.passed(len(_CASES) + 2)


# --------------------------------------------------------------------------
# 05.4 - 05.6 the gradient kernels
# --------------------------------------------------------------------------


def _gradients(E, D, weight, bias, grad_out, scale):
    tensors = [t.requires_grad_() for t in _torch(E, D, weight, bias)]
    out = semi_shift_conv_reference(*tensors, scale)
    return torch.autograd.grad(out, tensors, torch.from_numpy(grad_out).double())


def _pool(grad_out, scale):
    return F.avg_pool2d(grad_out, scale) * scale * scale


#: The case whose weight is nan at one corner tap (``_nan_taps``): the outputs (or decoder pixels) for which that
#: tap lies outside the maps skip it, so they stay finite (SPEC: a nan weight at a skipped tap never reaches a
#: result).
_NAN_TAP_CASE = (1, 2, 3, 3, 4, 3, 2)

_SKIP_HINT = ("a tap outside the map is skipped, not multiplied by a zero read: add weight * value only where the "
              "tap is inside (the encoder's and the decoder's tap each on its own), so that a nan or inf weight at a "
              "skipped tap never reaches the result")


def _zero_left_half(*maps):
    """The maps, copied, 0 in the left half of their columns: where a nan weight multiplies such a 0 inside the
    maps, the spec keeps the nan (nan * 0), which a kernel skipping a term by its value (``if value != 0``) drops."""
    zeroed = [array.copy() for array in maps]
    for array in zeroed:
        array[..., : array.shape[-1] // 2] = 0
    return zeroed


_MAPS_LEFT_HALF_ZERO = ", E and D 0 in their left half"
_ALL_LEFT_HALF_ZERO = ", E, D and grad_out 0 in their left half"


def _nan_taps(k):
    """The two corner taps, tried in turn with a nan weight: (0, 0) lies outside the maps at their top and left
    border, (k - 1, k - 1) at their bottom and right one, so a skip test of two borders only shows."""
    return [(0, 0), (k - 1, k - 1)]


def _nan_weight(tap):
    return (f"a weight that is nan at tap {tap}", "which lies outside the maps for this element")


def _require_skipped(what, name, expected, got, case, hint, nan):
    """``got`` right wherever ``expected`` (computed with the nan that ``nan``
    describes: what is nan, and why an element skips it) is finite, and nan
    wherever it is nan: the spec skips what lies outside the maps, by where
    it lies, and keeps a nan read inside them."""
    expected, got = torch.as_tensor(expected).double(), torch.as_tensor(np.asarray(got)).double()
    finite = torch.isfinite(expected)
    leaked = finite & ~torch.isfinite(got)
    if leaked.any():
        index = tuple(int(i) for i in torch.nonzero(leaked)[0])
        raise CheckFailed(f"{what}: {name}{index} is {float(got[index])} for {case}, {nan[0]}, {nan[1]}."
                          f"\nHint: {hint}")
    dropped = torch.isnan(expected) & ~torch.isnan(got)
    if dropped.any():
        index = tuple(int(i) for i in torch.nonzero(dropped)[0])
        raise CheckFailed(f"{what}: {name}{index} is {float(got[index])} for {case}, {nan[0]}; it should be nan: "
                          "this element reads that value inside the maps, where the spec lets a nan through "
                          "(nan * 0 is nan).\nHint: skip a tap by where it lies (its row and column against the "
                          "map's size), never by its value")
    compare(torch.where(finite, expected, 0.0), torch.where(finite, got, 0.0), what=what, case=f"{case}, {nan[0]}",
            rtol=1e-4, atol=1e-4, hint=hint)


def _backward_cases(seed, cases=_CASES):
    for index, case in enumerate(cases):
        n, c, o, h, w, k, s = case
        E, D, weight, bias = _inputs(case, seed + index)
        grad_out = np.random.default_rng(seed + 50 + index).standard_normal((n, o, s * h, s * w)).astype(np.float32)
        yield case, E, D, weight, bias, grad_out


def _nan_weight_cases(seed):
    """(tap, case, E, D, weight, bias, grad_out) of ``_NAN_TAP_CASE``, once per corner tap, the weight nan there
    and the maps 0 in their left half (``_zero_left_half``)."""
    for tap in _nan_taps(_NAN_TAP_CASE[5]):
        case, E, D, weight, bias, grad_out = next(_backward_cases(seed, [_NAN_TAP_CASE]))
        E, D, grad_out = _zero_left_half(E, D, grad_out)
        weight[:, :, tap[0], tap[1]] = np.nan
        yield tap, case, E, D, weight, bias, grad_out


def check_semi_shift_grad_en_kernel(kernel):
    """``kernel(grad_out, weight, grad_en)``: one thread per element
    (n, c, Y, X) of ``grad_en`` (N, C, H, W), a gather (no atomics)."""
    what = "semi_shift_grad_en_kernel"
    require_gather(kernel, what, "sums into its own element of grad_en")
    rules = _rules(kernel, what, 2)
    for index, (case, E, D, weight, bias, grad_out) in enumerate(_backward_cases(530)):
        expected = _gradients(E, D, weight, bias, grad_out, case[6])[0]
        grad_en = np.full(E.shape, np.nan, np.float32)
        _launch(rules, grad_en.size, grad_out, weight, grad_en, guard="grad_en.size", count=index == 1,
                case=_describe(case))
        g, W = _torch(grad_out, weight)
        pad = W.shape[2] // 2
        variants = [(F.conv2d(g, W.transpose(0, 1), padding=pad),
                     "tap (uy, ux) of output (Y, X) reads E at (Y + uy - r, X + ux - r), so E at (Y, X) is read by "
                     "output (Y - uy + r, X - ux + r): sum weight[o, c, uy, ux] * grad_out[n, o, Y - uy + r, "
                     "X - ux + r] (minus, not plus)")]
        _diagnose(expected, grad_en, variants, what=what, case=_describe(case), rtol=1e-4, atol=1e-4,
                  hint="grad_en[n, c, Y, X] = sum over o, uy, ux of weight[o, c, uy, ux] * grad_out[n, o, Y - uy + r, "
                       "X - ux + r], skipping outputs outside the map")
    for tap, case, E, D, weight, bias, grad_out in _nan_weight_cases(538):
        grad_en = np.full(E.shape, np.nan, np.float32)
        _launch(rules, grad_en.size, grad_out, weight, grad_en, guard="grad_en.size",
                case=_describe(case) + _ALL_LEFT_HALF_ZERO + f", nan weight at tap {tap}")
        _require_skipped(what, "grad_en", _gradients(E, D, weight, bias, grad_out, case[6])[0], grad_en,
                         _describe(case) + _ALL_LEFT_HALF_ZERO,
                         "skip the outputs outside the map, at all four of its borders (do not multiply the weight "
                         "by read_or_zero's 0 for them: nan * 0 is nan), so that a nan or inf weight at a skipped "
                         "tap never reaches grad_en",
                         _nan_weight(tap))
    rules.passed(len(_CASES) + 2)


def check_semi_shift_grad_de_kernel(kernel):
    """``kernel(grad_out, weight, grad_de, scale)``: one thread per element
    (n, c, row, col) of ``grad_de`` (N, C, h, w), a gather (no atomics)."""
    what = "semi_shift_grad_de_kernel"
    require_gather(kernel, what, "sums into its own element of grad_de")
    rules = _rules(kernel, what, 2)
    for index, (case, E, D, weight, bias, grad_out) in enumerate(_backward_cases(540)):
        s = case[6]
        expected = _gradients(E, D, weight, bias, grad_out, s)[1]
        grad_de = np.full(D.shape, np.nan, np.float32)
        _launch(rules, grad_de.size, grad_out, weight, grad_de, s, guard="grad_de.size", count=index == 1,
                case=_describe(case))
        g, W, Dt = _torch(grad_out, weight, D)
        pad = W.shape[2] // 2
        Dt.requires_grad_()
        upsampled = F.conv2d(_up(Dt, s), W, padding=pad)
        variants = [
            (F.conv_transpose2d(g[:, :, ::s, ::s].contiguous(), W, padding=pad),
             "only one output per low-res pixel is counted. All s x s outputs attached to a low-res pixel share "
             "its decoder window: sum grad_out over rows anchor_row * s .. anchor_row * s + s - 1 (and the same "
             "for the columns)"),
            (F.conv2d(_pool(g, s), W.transpose(0, 1), padding=pad),
             "the anchor is (row - uy + r, col - ux + r) (minus): output p's tap u reads D at p // s + u - r"),
            (torch.autograd.grad(upsampled, Dt, g)[0], "this is the gradient of a conv over nearest_up(D). " +
             UPSAMPLED_HINT.split(": ", 1)[1]),
        ]
        _diagnose(expected, grad_de, variants, what=what, case=_describe(case), rtol=1e-4, atol=1e-4,
                  hint="grad_de[n, c, row, col] = sum over o, uy, ux of weight[o, c, uy, ux] * (the sum of grad_out "
                       "over the s x s outputs attached to low-res pixel (row - uy + r, col - ux + r)), skipping "
                       "anchors outside the low-res map")
    for tap, case, E, D, weight, bias, grad_out in _nan_weight_cases(548):
        grad_de = np.full(D.shape, np.nan, np.float32)
        _launch(rules, grad_de.size, grad_out, weight, grad_de, case[6], guard="grad_de.size",
                case=_describe(case) + _ALL_LEFT_HALF_ZERO + f", nan weight at tap {tap}")
        _require_skipped(what, "grad_de", _gradients(E, D, weight, bias, grad_out, case[6])[1], grad_de,
                         _describe(case) + _ALL_LEFT_HALF_ZERO,
                         "skip the anchors outside the low-res map (do not multiply the weight by a zero sum of "
                         "grad_out for them), so that a nan or inf weight at a skipped tap never reaches grad_de",
                         _nan_weight(tap))
    rules.passed(len(_CASES) + 2)


def check_semi_shift_grad_weight_kernel(kernel):
    """``kernel(grad_out, E, D, grad_weight, scale)``: one thread per element
    (o, c, uy, ux) of ``grad_weight`` (O, C, k, k), summing over the batch
    and every output pixel."""
    what = "semi_shift_grad_weight_kernel"
    rules = _rules(kernel, what, 3)
    for index, (case, E, D, weight, bias, grad_out) in enumerate(_backward_cases(550)):
        n, c, o, h, w, k, s = case
        expected = _gradients(E, D, weight, bias, grad_out, s)[2]
        grad_weight = np.full(weight.shape, np.nan, np.float32)
        _launch(rules, grad_weight.size, grad_out, E, D, grad_weight, s, guard="grad_weight.size", count=index == 1,
                case=_describe(case))
        variants = []
        for name, parts in (("encoder", (E, np.zeros_like(D))), ("decoder", (np.zeros_like(E), D))):
            wrong = _gradients(*parts, weight, bias, grad_out, s)[2]
            other = "decoder" if name == "encoder" else "encoder"
            variants.append((wrong, f"only the {name} window is counted: each tap multiplies grad_out by the sum of "
                                    f"the {name} AND the {other} value it reads"))
        if n > 1:
            variants.append((_gradients(E[:1], D[:1], weight, bias, grad_out[:1], s)[2],
                             "only the first batch element is counted: sum over n too"))
        Et, Dt, Wt, g = _torch(E, D, weight, grad_out)
        Wt.requires_grad_()
        upsampled = _conv(Et, Wt, None) + _conv(_up(Dt, s), Wt, None)
        variants.append((torch.autograd.grad(upsampled, Wt, g)[0], UPSAMPLED_HINT))
        _diagnose(expected, grad_weight, variants, what=what, case=_describe(case), rtol=1e-4, atol=1e-4,
                  hint="grad_weight[o, c, uy, ux] = sum over n, Y, X of grad_out[n, o, Y, X] * (E[n, c, Y + uy - r, "
                       "X + ux - r] + D[n, c, Y // s + uy - r, X // s + ux - r]), zero outside the maps")
    n, c, o, h, w, k, s = _NAN_TAP_CASE
    for corner in [(0, 0), (s * h - 1, s * w - 1)]:  # the first output and the last, at opposite borders
        case, E, D, weight, bias, grad_out = next(_backward_cases(558, [_NAN_TAP_CASE]))
        E, D = _zero_left_half(E, D)
        grad_out[:, :, corner[0], corner[1]] = np.nan
        grad_weight = np.full(weight.shape, np.nan, np.float32)
        _launch(rules, grad_weight.size, grad_out, E, D, grad_weight, s, guard="grad_weight.size",
                case=_describe(case) + _MAPS_LEFT_HALF_ZERO + f", grad_out nan at output {corner}")
        _require_skipped(what, "grad_weight", _gradients(E, D, weight, bias, grad_out, s)[2], grad_weight,
                         _describe(case) + _MAPS_LEFT_HALF_ZERO,
                         "skip an output whose tap reads outside both maps, at all four borders (do not multiply "
                         "its grad_out by read_or_zero's zeros: nan * 0 is nan), so that a nan or inf gradient "
                         "there never reaches grad_weight",
                         nan=(f"grad_out nan at output {corner}", "whose tap (uy, ux) reads outside both maps"))
    rules.passed(len(_CASES) + 2)


# --------------------------------------------------------------------------
# 05.7 the autograd Function
# --------------------------------------------------------------------------


def check_semi_shift_function(function_class):
    """``function_class.apply(E, D, weight, bias, scale)``: a
    torch.autograd.Function whose forward and backward run the student's
    kernels on CPU tensors, float32 and float64."""
    what = "SemiShiftFunction"
    cases = [((1, 2, 3, 3, 2, 3, 2), torch.float64), ((2, 2, 2, 2, 3, 3, 3), torch.float32),
             ((1, 3, 2, 2, 2, 1, 2), torch.float32)]
    for index, (case, dtype) in enumerate(cases):
        n, c, o, h, w, k, s = case
        description = f"{_describe(case)}, {str(dtype).replace('torch.', '')}"
        arrays = _inputs(case, 560 + index, np.float64)
        leaves = [torch.from_numpy(a).to(dtype).requires_grad_() for a in arrays]
        out = run_with_timeout(lambda: function_class.apply(*leaves, s), what="forward")
        if not isinstance(out, torch.Tensor) or out.dtype != dtype:
            raise CheckFailed(f"{what}: forward returned {type(out).__name__}"
                              f"{' of dtype ' + str(out.dtype) if isinstance(out, torch.Tensor) else ''} for "
                              f"{description}; expected a tensor of the inputs' dtype {dtype}")
        expected = _reference(*arrays, s)
        compare(expected, out.detach().double(), what=what, case=f"forward, {description}", rtol=1e-4, atol=1e-4,
                hint="forward launches your one-pass kernel with one thread per element of out "
                     "(launch_config(out.numel(), ...)) on contiguous .detach()ed inputs and returns out, the new "
                     "(N, O, s*h, s*w) tensor")
        require_float64_precision(what, f"forward, {description}", expected, out,
                                  "hand the kernel the inputs' own arrays (no .float()) and allocate out like E "
                                  "(E.new_empty(...))")
        if not out.requires_grad:
            raise CheckFailed(f"{what}: the output does not require grad, so autograd never calls backward.\nHint: "
                              "subclass torch.autograd.Function with static forward(ctx, E, D, weight, bias, scale) "
                              "and backward(ctx, grad_out), return out itself from forward, and do not mark it "
                              "ctx.mark_non_differentiable")
        grad_out = torch.from_numpy(np.random.default_rng(570 + index).standard_normal(out.shape)).to(dtype)
        given = grad_out.clone()
        try:
            got = run_with_timeout(lambda: torch.autograd.grad(out, leaves, grad_out), what="backward")
        except RuntimeError as error:
            reason = str(error).splitlines()[0]
            if "invalid gradient at index" in reason:
                hint = ("backward returns the gradients in forward's argument order, each of its input's shape: "
                        "(grad_en like E (N, C, s*h, s*w), grad_de like D (N, C, h, w), grad_weight like weight, "
                        "grad_bias (O,), None); allocate each with torch.empty_like of its own input")
            else:
                hint = ("backward must return one gradient per input of forward: "
                        "(grad_en, grad_de, grad_weight, grad_bias, None)")
            raise CheckFailed(f"{what}: backward failed for {description}: {reason}\nHint: {hint}") from None
        if not torch.equal(grad_out, given):
            raise CheckFailed(f"{what}: backward changed grad_out for {description}; autograd may hand the same "
                              "tensor to other functions.\nHint: leave grad_out as it is: compute "
                              "2 * grad_out.sum(dim=(0, 2, 3)) and the kernels' gradients into new tensors")
        wanted = _gradients(*arrays, grad_out.double().numpy(), s)
        for name, e, g in zip(("en", "de", "weight", "bias"), wanted, got):
            if name == "bias" and torch.allclose(g.double(), e / 2, rtol=1e-4, atol=1e-4):
                raise CheckFailed(f"{what}: the gradient of the bias is half what it should be for {description}.\n"
                                  "Hint: the bias is added on both paths (twice), so its gradient is "
                                  "2 * grad_out.sum(dim=(0, 2, 3))")
            compare(e, g.double(), what=what, case=f"gradient of {name}, {description}", rtol=1e-4, atol=1e-4,
                    hint="backward returns (grad_en, grad_de, grad_weight, 2 * grad_out.sum(dim=(0, 2, 3)), None), "
                         "each computed by your kernels from grad_out.contiguous(), each kernel launched with one "
                         "thread per element of its own gradient (launch_config(grad.numel(), ...))")
            require_float64_precision(what, f"gradient of {name}, {description}", e, g,
                                      "hand the kernels grad_out and the saved tensors as they are (no .float()) "
                                      "and allocate each gradient like its input (torch.empty_like)")
    check_non_contiguous(what, lambda *t: function_class.apply(*t, 2),
                         [torch.from_numpy(a) for a in _inputs((1, 2, 3, 3, 2, 3, 2), 575, np.float64)])
    arrays = _inputs((1, 2, 2, 2, 2, 3, 2), 580, np.float64)
    leaves = [torch.from_numpy(a).requires_grad_() for a in arrays]
    ok = run_with_timeout(
        lambda: torch.autograd.gradcheck(lambda *t: function_class.apply(*t, 2), leaves, fast_mode=True,
                                         raise_exception=False),
        what="gradcheck",
    )
    if not ok:
        raise CheckFailed(f"{what}: torch.autograd.gradcheck fails (float64, E (1, 2, 4, 4), D (1, 2, 2, 2), "
                          "weight (2, 2, 3, 3), scale=2): backward does not match the finite differences of "
                          "forward.\nHint: compute in the inputs' dtype (float64 here, no .float()), make the "
                          "tensors contiguous before handing them to the kernels, keep what backward needs in ctx "
                          "(not in globals), and return new tensors (do not write into grad_out)")
    passed(what, len(cases) + 2)


# --------------------------------------------------------------------------
# 05.8 the gate and the module's forward
# --------------------------------------------------------------------------

#: (N, C, h, w, scale, up_kernel_size, embedding_dim, kernel_size, lite)
_MODULE_CASES = [
    (1, 4, 3, 4, 2, 3, 8, 3, False),
    (2, 3, 2, 3, 3, 5, 6, 3, False),
    (1, 2, 3, 2, 2, 5, 8, 1, True),
    (1, 4, 2, 3, 2, 3, 8, 3, True),
]


def _random_module(case, seed):
    n, c, h, w, s, k_up, dim, k, lite = case
    with torch.random.fork_rng(devices=[]):  # the module's init draws from the global generator
        module = FADE(c, scale=s, up_kernel_size=k_up, embedding_dim=dim, kernel_size=k, lite=lite)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():  # kernels far from uniform, a gate far from 0.5
            parameter.copy_(0.7 * torch.randn(parameter.shape, generator=generator))
        en = torch.randn(n, c, s * h, s * w, generator=generator)
        de = torch.randn(n, c, h, w, generator=generator)
    module.backend = "torch"
    return module, en, de


def _fade_variants(module, en, de):
    """Outputs of plausible wrong forwards, each with its hint."""
    from ..ops.carafe import carafe_reference

    generator, gate_conv = module.ker_generator, module.gate_generator.conv
    s, k_up = module.scale, module.up_kernel_size
    groups = generator.content_encoder.groups
    E, D = generator.compressor_en(en), generator.compressor_de(de)
    weight, bias = generator.content_encoder.weight, generator.content_encoder.bias
    logits = semi_shift_conv_reference(E, D, weight, bias, s, groups)
    kernels = F.softmax(logits, dim=1)
    raw_gate = _up(gate_conv(de), s)
    gate = torch.sigmoid(raw_gate)
    reassembled = carafe_reference(de, kernels, k_up, s, 1)

    def mix(g, k=None):
        return g * en + (1 - g) * (reassembled if k is None else carafe_reference(de, k, k_up, s, 1))

    once = logits - bias[None, :, None, None]
    pad = weight.shape[2] // 2
    upsampled = (F.conv2d(E, weight, bias, padding=pad, groups=groups)
                 + F.conv2d(_up(D, s), weight, bias, padding=pad, groups=groups))
    return [
        ((1 - gate) * en + gate * reassembled,
         "the gate is the other way round: g is the share of the ENCODER feature, out = g * en + (1 - g) * "
         "carafe(de, kernels)"),
        (reassembled, "the gate is missing: out = g * en + (1 - g) * carafe(de, kernels)"),
        (mix(raw_gate), "the gate has no sigmoid: g = sigmoid(nearest_up(gate_generator.conv(de)))"),
        (mix(torch.sigmoid(_up(gate_conv(de), s, "bilinear"))),
         "the gate is upsampled bilinearly; FADE repeats it: F.interpolate(..., mode='nearest')"),
        (mix(torch.sigmoid(gate_conv(en))),
         "the gate comes from the encoder feature; FADE's gate is decoder-dependent: "
         "sigmoid(nearest_up(gate_generator.conv(de)))"),
        (mix(gate, logits), "the kernels are not normalised: apply a softmax over the k_up * k_up channels (dim=1)"),
        (mix(gate, F.softmax(once, dim=1)), "the kernels' logits have the bias once. " + BIAS_ONCE_HINT.split("; ")[1]),
        (mix(gate, F.softmax(upsampled, dim=1)), UPSAMPLED_HINT),
    ]


def _fade_argument_hint(message, description, lite):
    """The hint for a ValueError of fade_forward's calls, by the op that
    raised it (its message starts with the op's name)."""
    if message.startswith("semi_shift_conv:"):
        if "must be exactly scale x the size of de" in message:
            return (f"for {description}: ul.semi_shift_conv takes the encoder's (high-res) map first: "
                    "semi_shift_conv(compressor_en(en), compressor_de(de), weight, bias, scale)")
        if "does not fit" in message and lite:
            return (f"for FADE-Lite ({description}) the content encoder is depthwise: pass "
                    "groups=module.ker_generator.content_encoder.groups to ul.semi_shift_conv")
        if "does not fit" in message:
            return (f"for {description}: the content encoder's weight expects the compressed maps: "
                    "semi_shift_conv(ker_generator.compressor_en(en), ker_generator.compressor_de(de), ...), "
                    "not en and de themselves")
        return (f"for {description}: semi_shift_conv(compressor_en(en), compressor_de(de), content_encoder.weight, "
                "content_encoder.bias, scale, groups=content_encoder.groups)")
    return (f"for {description}: the reassembly is ul.carafe(de, kernels, module.up_kernel_size, module.scale), "
            "kernel size before scale, and its kernels have up_kernel_size**2 channels (the content encoder's "
            "output); the content encoder's own kernel_size is the semi-shift conv's, not the reassembly window's")


def check_fade_forward(fade_forward):
    """``fade_forward(module, en, de)``: the output of a ``ul.FADE`` module
    (FADE or FADE-Lite) from its parameters, ``ul.semi_shift_conv`` and
    ``ul.carafe``."""
    what = "fade_forward"
    for index, case in enumerate(_MODULE_CASES):
        n, c, h, w, s, k_up, dim, k, lite = case
        module, en, de = _random_module(case, 590 + index)
        with torch.no_grad():
            expected = module(en, de)
        description = (f"en {tuple(en.shape)}, de {tuple(de.shape)}, scale={s}, up_kernel_size={k_up}, "
                       f"embedding_dim={dim}, kernel_size={k}, lite={lite}")
        try:
            with torch.no_grad():
                got = run_with_timeout(lambda: fade_forward(module, en, de), what="fade_forward")
        except ValueError as error:
            raise CheckFailed(f"{what}: {error}\nHint: {_fade_argument_hint(str(error), description, lite)}") from None
        if not isinstance(got, torch.Tensor):
            raise CheckFailed(f"{what}: expected a tensor, got {type(got).__name__}")
        with torch.no_grad():
            variants = _fade_variants(module, en, de)
        _diagnose(expected, got.detach().cpu(), variants, what=what, case=description, rtol=1e-4, atol=1e-5,
                  hint="kernels = softmax over dim 1 of ul.semi_shift_conv(compressor_en(en), compressor_de(de), "
                       "content_encoder.weight, content_encoder.bias, scale, groups=content_encoder.groups); "
                       "g = sigmoid(nearest_up(gate_generator.conv(de))); out = g * en + (1 - g) * "
                       "ul.carafe(de, kernels, up_kernel_size, scale)")
    passed(what, len(_MODULE_CASES))

"""Checkers of lesson 03 (CARAFE: kernel prediction, reassembly forward and backward)."""

from __future__ import annotations

import ast
import math

import numpy as np
import torch
import torch.nn.functional as F

from ..backend import launch_config
from ..ops.carafe import CARAFE, carafe_reference, inside_map
from .engine import (
    INTEGER_DIVISION_NOTE,
    CheckFailed,
    check_non_contiguous,
    compare,
    compare_where_finite,
    diagnose,
    first_nan_mismatch,
    kernel_definition,
    launch_checked,
    passed,
    require_float64_precision,
    require_gather,
    run_with_timeout,
    unsolved_exercise,
)
from .rules import KernelCheck, block_size_of_case, blocks_in_case, blocks_note

__all__ = [
    "check_predict_kernels",
    "check_carafe_padded_kernel",
    "check_carafe_border_kernel",
    "check_carafe_group_kernel",
    "check_carafe_tiled_kernel",
    "check_carafe_grad_x_kernel",
    "check_carafe_grad_masks_kernel",
    "check_carafe_function",
    "shared_memory_problems",
    "x_loads_per_channel",
]

# --------------------------------------------------------------------------
# Cases and references
# --------------------------------------------------------------------------

#: (N, C, h, w, kernel_size, scale, group). Odd sizes, maps smaller than the
#: window, k = 1 (the window is one pixel), scale 1 (no upsampling), and
#: output sizes that no block size divides. Small: every output is a Python
#: thread in the simulator.
_GROUP1_CASES = [
    (1, 2, 5, 7, 5, 2, 1),
    (2, 1, 4, 3, 3, 3, 1),
    (2, 3, 2, 3, 3, 2, 1),
    (1, 2, 3, 6, 7, 1, 1),
    (1, 1, 5, 4, 1, 4, 1),
    (1, 1, 2, 9, 5, 3, 1),
    (1, 1, 1, 1, 3, 2, 1),
]

_GROUP_CASES = [
    (1, 4, 3, 5, 3, 2, 2),
    (1, 6, 4, 3, 5, 2, 3),
    (2, 4, 2, 3, 3, 3, 4),
    (1, 2, 5, 5, 5, 1, 1),
    (1, 4, 1, 3, 7, 2, 2),
]

#: Cases of the tiled kernel: output sizes that are not multiples of the tile,
#: one smaller than a tile, the largest radius the tile allows, and a batch
#: of two whose groups hold two channels each.
_TILED_CASES = [
    (1, 2, 5, 7, 5, 2, 1),
    (1, 2, 3, 4, 3, 3, 2),
    (1, 1, 12, 10, 7, 1, 1),
    (1, 2, 2, 3, 5, 4, 2),
    (2, 2, 3, 2, 1, 2, 1),
    (2, 4, 3, 2, 3, 2, 2),  # two images with masks of their own (k > 1), two channels per group
]


def _block_misses_a_row(first, tile, scale, size, radius):
    """Whether a tile of ceil(tile / scale) + 2 radius rows of x, from row
    first // scale - radius, misses a row inside the map (of ``size`` rows)
    that the block of output rows first .. first + tile - 1 reads: the row
    below the window of its last output row inside the map."""
    last = min(first + tile, scale * size) - 1
    centre_rows = last // scale - first // scale + 1
    return centre_rows > math.ceil(tile / scale) and last // scale + radius < size


def _short_tile_case(tile):
    """A case with a block that reads a row of x the tile misses when a
    kernel sizes it as ceil(TILE / scale) + 2r rows: a block that starts at
    an output row that is not a multiple of the scale spans one centre row
    more. There is such a block where tile % scale is at least 2 and does not
    divide the scale (TILE = 8: scale 3; 16: scale 6; 32: scale 3), and the
    row it misses must lie inside the map, or the sum skips it anyway: the
    smallest such scale, on the smallest square map from 8 pixels up where a
    block misses a row inside. The usual case, (1, 1, 8, 8, k = 3, s = 3),
    where there is none (a tile of 1)."""
    radius = 1
    for scale in range(2, tile + 2):
        rest = tile % scale
        if rest < 2 or scale % rest == 0:
            continue
        for size in range(8, 4 * tile + 8):
            if any(_block_misses_a_row(first, tile, scale, size, radius) for first in range(0, scale * size, tile)):
                return (1, 1, size, size, 2 * radius + 1, scale, 1)
    return (1, 1, 8, 8, 3, 3, 1)


_BACKWARD_CASES = [
    (1, 2, 3, 4, 3, 2, 1),
    (1, 4, 3, 3, 5, 2, 2),
    (2, 2, 2, 3, 3, 3, 2),
    (1, 3, 4, 2, 5, 1, 1),
    (1, 1, 1, 2, 3, 2, 1),
]


def _describe(case):
    n, c, h, w, k, s, g = case
    return f"x ({n}, {c}, {h}, {w}), kernel_size={k}, scale={s}, group={g}"


def _inputs(case, seed, dtype=np.float32):
    """x (N, C, h, w) and normalised masks (N, G*k*k, s*h, s*w) as arrays."""
    n, c, h, w, k, s, g = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    logits = torch.from_numpy(2 * rng.standard_normal((n, g, k * k, s * h, s * w)))
    masks = F.softmax(logits, dim=2).reshape(n, g * k * k, s * h, s * w).numpy().astype(dtype)
    return x, masks


def _windows(x_padded, kernel_size, scale):
    """(N, C, k*k, s*h, s*w): the k x k window of every output pixel, read
    from a map padded by the radius on every side."""
    n, channels = x_padded.shape[:2]
    height, width = x_padded.shape[2] - kernel_size + 1, x_padded.shape[3] - kernel_size + 1
    windows = F.unfold(x_padded, kernel_size).view(n, channels, kernel_size * kernel_size, height, width)
    return windows.repeat_interleave(scale, dim=3).repeat_interleave(scale, dim=4)


def _reassemble(x, masks, kernel_size, scale, group, pad="constant", interleaved=False, transposed=False,
                uncentred=False):
    """CARAFE and some of the ways to get it wrong, in float64 torch."""
    x, masks = torch.as_tensor(x).double(), torch.as_tensor(masks).double()
    n, channels, height, width = x.shape
    radius = (kernel_size - 1) // 2
    area = kernel_size * kernel_size
    # uncentred: the window starts at (Y // scale, X // scale), as if r were not subtracted
    x_padded = F.pad(x, (0, 2 * radius, 0, 2 * radius) if uncentred else (radius,) * 4, mode=pad)
    windows = _windows(x_padded, kernel_size, scale)
    weights = masks.view(n, group, area, scale * height, scale * width)
    if transposed:
        weights = weights.view(n, group, kernel_size, kernel_size, scale * height, scale * width).transpose(2, 3)
        weights = weights.reshape(n, group, area, scale * height, scale * width)
    if interleaved:
        owner = torch.arange(channels) % group
    else:
        owner = torch.arange(channels) // (channels // group)
    return (windows * weights[:, owner]).sum(dim=2)


def _variants(x, masks, kernel_size, scale, group):
    """Wrong answers that a student's kernel may match, each with its hint."""
    n, channels, height, width = x.shape
    radius = (kernel_size - 1) // 2
    found = []
    zero = _reassemble(x, masks, kernel_size, scale, group)
    inside = _reassemble(np.ones_like(x), masks, kernel_size, scale, group)
    found.append((zero / inside,
                  "your kernel renormalises the weights at the border (divides by the weights of the slots "
                  "inside the map). CARAFE does not: an outside neighbour is a zero feature and its weight "
                  "is simply lost, so the border outputs are smaller."))
    found.append((_reassemble(x, masks, kernel_size, scale, group, pad="replicate"),
                  "your kernel repeats the edge pixel for neighbours outside the map (it clamps the index). "
                  "CARAFE pads with zeros: skip the slots whose row or column is outside the map."))
    if radius < height and radius < width:
        found.append((_reassemble(x, masks, kernel_size, scale, group, pad="reflect"),
                      "your kernel reflects the map at its border (as one third-party port does). CARAFE pads "
                      "with zeros: skip the slots whose row or column is outside the map."))
    if kernel_size > 1:
        found.append((_reassemble(x, masks, kernel_size, scale, group, uncentred=True),
                      "the window is not centred on the output's low-res pixel: it starts at row Y // scale, "
                      "but CARAFE's k x k window starts r = (kernel_size - 1) // 2 rows and columns earlier: "
                      "row = Y // scale - r + dy, col = X // scale - r + dx."))
        found.append((_reassemble(x, masks, kernel_size, scale, group, transposed=True),
                      "rows and columns of the window are swapped: slot t = dy * kernel_size + dx, with dy "
                      "(the row offset) outer."))
    if group > 1 and channels // group > 1:
        found.append((_reassemble(x, masks, kernel_size, scale, group, interleaved=True),
                      "channel c belongs to group c // (C // group) (contiguous blocks of C // group "
                      "channels), not c % group."))
    return found


_FORWARD_HINT = ("out[n, c, Y, X] = sum over dy, dx in range(kernel_size) of "
                 "masks[n, dy * kernel_size + dx, Y, X] * x[n, c, Y // scale - r + dy, X // scale - r + dx], "
                 "r = (kernel_size - 1) // 2")


# --------------------------------------------------------------------------
# 03.1 kernel prediction
# --------------------------------------------------------------------------

_PREDICT_CASES = [  # (N, C, h, w, kernel_size, scale, group, encoder_kernel, compressed)
    (1, 4, 5, 6, 5, 2, 1, 3, 8),
    (2, 6, 3, 4, 3, 3, 2, 1, 4),
    (1, 8, 4, 3, 3, 2, 4, 3, 16),
    (1, 2, 2, 5, 1, 2, 1, 3, 4),
]


def _predict_variants(logits, kernel_size, scale, group):
    """Plausible wrong kernel predictions from the encoder's logits."""
    area = kernel_size * kernel_size
    shuffled = F.pixel_shuffle(logits, scale)
    n, slots, height, width = shuffled.shape
    found = [
        (F.softmax(shuffled, dim=1),
         "the softmax runs over all group * kernel_size**2 channels at once; each group's kernel is "
         "normalised on its own: view the channels as (N, group, k*k, H, W) and take the softmax over the k*k."),
        (F.pixel_shuffle(F.softmax(logits, dim=1), scale),
         "the softmax comes before the pixel shuffle, so it mixes the kernels of the s*s output pixels that "
         "one low-res position predicts. Shuffle first, then normalise each output pixel's k*k weights."),
        (shuffled,
         "the kernels are not normalised: apply a softmax over each group's k*k slots."),
        (F.softmax(shuffled.view(n, group, area, height, width), dim=1).view(n, slots, height, width),
         "the softmax runs over the groups; it must run over the k*k slots of each group (dim=2 of the "
         "(N, group, k*k, H, W) view)."),
    ]
    if scale > 1:
        # A hand-made shuffle with the sub-pixel index outer: channel (i*s + j) * G*k*k + c.
        n0, channels, h0, w0 = logits.shape
        regrouped = logits.view(n0, scale * scale, channels // (scale * scale), h0, w0).transpose(1, 2)
        wrong = F.pixel_shuffle(regrouped.reshape(n0, channels, h0, w0), scale)
        found.append((F.softmax(wrong.view(n, group, area, height, width), dim=2).view(n, slots, height, width),
                      "the channels were rearranged before the pixel shuffle. F.pixel_shuffle(logits, scale) "
                      "already puts channel (c * s*s + i * s + j) at output channel c, sub-pixel (i, j)."))
    return found


def check_predict_kernels(predict_kernels):
    """``predict_kernels(x, channel_compressor, content_encoder, scale,
    kernel_size, group) -> (N, group*k*k, s*h, s*w)``, the normalised kernels
    that ``ul.CARAFE.kernels`` computes."""
    what = "predict_kernels"
    generator = torch.Generator().manual_seed(30)
    for n, channels, h, w, k, s, g, encoder_kernel, compressed in _PREDICT_CASES:
        module = CARAFE(channels, scale=s, up_kernel=k, up_group=g, encoder_kernel=encoder_kernel,
                        compressed_channels=compressed)
        with torch.no_grad():
            for parameter in module.parameters():  # far from uniform kernels, so mistakes show
                parameter.copy_(torch.randn(parameter.shape, generator=generator))
        x = torch.randn(n, channels, h, w, generator=generator)
        case = f"x ({n}, {channels}, {h}, {w}), scale={s}, kernel_size={k}, group={g}"
        with torch.no_grad():
            got = predict_kernels(x, module.channel_compressor, module.content_encoder, s, k, g)
            expected = module.kernels(x)
            logits = module.content_encoder(module.channel_compressor(x))
        if not isinstance(got, torch.Tensor):
            raise CheckFailed(f"{what} returned {type(got).__name__}; expected a torch.Tensor")
        if tuple(got.shape) != tuple(expected.shape):
            raise CheckFailed(
                f"{what}: shape {tuple(got.shape)} for {case}; expected {tuple(expected.shape)} = "
                f"(N, group * kernel_size**2, scale * h, scale * w).\nHint: F.pixel_shuffle(logits, scale) "
                "turns (N, s*s*G*k*k, h, w) into (N, G*k*k, s*h, s*w)"
            )
        got = got.detach()
        if not torch.allclose(got, expected, rtol=1e-5, atol=1e-6):
            for wrong, explanation in _predict_variants(logits, k, s, g):
                if torch.allclose(got, wrong, rtol=1e-5, atol=1e-6):
                    raise CheckFailed(f"{what}: wrong kernels for {case}.\nHint: {explanation}")
        compare(expected, got, what=what, case=case,
                hint="compressor, then encoder, then F.pixel_shuffle(., scale), then a softmax over the "
                     "k*k slots of each group: channel g * k*k + t is slot t of group g, so view the channels as "
                     "(N, group, k*k, H, W) (group outer) and normalise over dim=2")
    passed(what, len(_PREDICT_CASES))


# --------------------------------------------------------------------------
# 03.2 - 03.4 the forward kernels, one thread per output element
# --------------------------------------------------------------------------


#: The case whose masks hold nan at every slot that reads outside the map: the spec skips those slots, so
#: no nan reaches the output (a kernel that multiplies a zero in for them gives nan * 0 = nan).
_OUTSIDE_NAN_CASE = (2, 2, 3, 4, 3, 2, 2)

_OUTSIDE_NAN_HINT = ("this case's masks hold nan at the slots that read outside the map, which CARAFE skips: skip "
                     "the whole term there (`if 0 <= row < x.shape[2] and 0 <= col < x.shape[3]: total += ...`), "
                     "rather than multiplying the mask by a zero value, since nan * 0 is nan")


def with_nan_outside(masks, k, s, g, h, w):
    """``masks`` with nan at every slot that reads outside the (h, w) map."""
    outside = ~inside_map(k, s, h, w, "cpu").numpy()  # (k*k, s*h, s*w)
    masks = masks.copy()
    for group in range(g):
        block = masks[:, group * k * k:(group + 1) * k * k]
        block[:, outside] = np.nan
    return masks


#: The case whose values inside the map are 0 where a mask is nan, and nan where a mask is 0: terms that a
#: kernel skipping by value (``if value != 0``) drops, though 0 * nan is nan. Equal to _OUTSIDE_NAN_CASE (and
#: maybe the same object): the checkers tell the two by their position in the list.
_VALUES_INSIDE_CASE = (2, 2, 3, 4, 3, 2, 2)

VALUES_INSIDE_HINT = ("CARAFE skips a slot by its position (outside the map), never by a value: a 0 in x inside the "
                      "map is a real neighbour, and nan * 0 is nan. Test the slot's row and column, not "
                      "`value != 0` or `mask != 0`")


def _values_inside_pixels(h, w):
    """((zero pixel, its reader), (nan pixel, its reader)) of an (h, w) map, h >= 2 and w >= 3: each reader, a
    low-res pixel, reads its pixel through slot dx = +1; the first reader's window (radius < w - 1) does not
    reach the nan pixel."""
    return ((1, 1), (1, 0)), ((h - 1, w - 1), (h - 1, w - 2))


def with_values_inside(x, masks, k, s, g):
    """(x, masks) copied, with x 0 at one pixel inside the map, read with nan masks (group 0's) by the outputs
    of the pixel left of it, and x nan at another, read with masks of 0 (every group's) by the outputs of the
    pixel left of it (``_values_inside_pixels``)."""
    x, masks = x.copy(), masks.copy()
    r = (k - 1) // 2
    (zero, zero_reader), (nan, nan_reader) = _values_inside_pixels(*x.shape[2:])
    x[:, :, zero[0], zero[1]] = 0
    x[:, :, nan[0], nan[1]] = np.nan
    for pixel, reader, value, groups in ((zero, zero_reader, np.nan, [0]), (nan, nan_reader, 0.0, range(g))):
        slot = (pixel[0] - reader[0] + r) * k + pixel[1] - reader[1] + r
        for group in groups:
            masks[:, group * k * k + slot, reader[0] * s:(reader[0] + 1) * s, reader[1] * s:(reader[1] + 1) * s] = value
    return x, masks


#: The padded kernel (03.2) sums every slot by design, its padding's zeros included.
_PADDED_VALUES_INSIDE_HINT = ("the padded kernel sums all k*k slots, its padding included: drop the `value != 0` "
                              "(or `mask != 0`) test. A 0 in x_padded inside the map is a real neighbour, and "
                              "nan * 0 is nan")


def require_values_inside(out, expected, what, case, x_shape, s, channels_last=False, padded_by=None):
    """The verdict of a case of ``with_values_inside``: ``out`` (N, C, s*h, s*w), or (N, s*h, s*w, C) when
    ``channels_last``, nan exactly where the reference ``expected`` (NCHW) has it, then right elsewhere.
    ``padded_by``: the padding r of 03.2's x_padded, whose indices the messages then use."""
    expected = np.asarray(expected, dtype=np.float64)
    got = out.transpose(0, 3, 1, 2) if channels_last else out
    (zero, zero_reader), (nan, nan_reader) = _values_inside_pixels(*x_shape[2:])
    hint = VALUES_INSIDE_HINT if padded_by is None else _PADDED_VALUES_INSIDE_HINT

    def named(array, n, c, row, col):
        if array == "x" and padded_by is not None:
            array, row, col = "x_padded", row + padded_by, col + padded_by
        return f"{array}[{n}, {row}, {col}, {c}]" if channels_last else f"{array}[{n}, {c}, {row}, {col}]"

    mismatch = first_nan_mismatch(expected, got)
    if mismatch is not None:
        (n, c, Y, X), word = mismatch
        if word == "a number" and (Y // s, X // s) == zero_reader:
            why = f"its window reads {named('x', n, c, *zero)} = 0 at a slot whose mask is nan, so it is nan (nan * 0)"
        elif word == "a number":
            why = (f"its window reads {named('x', n, c, *nan)} = nan, at a slot whose mask is 0 here, so it is nan "
                   "(0 * nan)")
        else:
            why = "the reference is a number there: no nan in x or in a mask reaches it"
        raise CheckFailed(f"{what}: {named('out', n, c, Y, X)} is {word} for {case}, whose x holds a 0 and a nan "
                          f"inside the map; {why}.\nHint: {hint}")
    # compared in the student's indices
    compare_where_finite(expected.transpose(0, 2, 3, 1) if channels_last else expected, out, what=what, case=case,
                         hint=hint)


def _require_no_nan(out, what, case):
    """The outside-nan case's verdict: no nan may reach ``out``."""
    if np.isnan(out).any():
        first = tuple(int(i) for i in np.argwhere(np.isnan(out))[0])
        raise CheckFailed(f"{what}: out{first} is nan for {case}, whose masks are nan only at the slots that read "
                          f"outside the map.\nHint: {_OUTSIDE_NAN_HINT}")


def _forward_cases(kernel, cases, what, seed, *, padded=False, with_group=False, hint=_FORWARD_HINT):
    rules = KernelCheck(kernel, what, output=2, float_index_note=INTEGER_DIVISION_NOTE)
    special = [_VALUES_INSIDE_CASE]
    if not padded:  # the padded kernel multiplies its padding in by design
        special.insert(0, _OUTSIDE_NAN_CASE)
    cases = cases + [case if with_group else case[:6] + (1,) for case in special]
    for index, case in enumerate(cases):
        n, c, h, w, k, s, g = case
        x, masks = _inputs(case, seed + index)
        outside_nan = not padded and index == len(cases) - 2
        values_inside = index == len(cases) - 1
        if outside_nan:
            masks = with_nan_outside(masks, k, s, g, h, w)
        if values_inside:
            x, masks = with_values_inside(x, masks, k, s, g)
        radius = (k - 1) // 2
        out = np.full((n, c, s * h, s * w), np.nan, np.float32)
        arrays = [np.ascontiguousarray(np.pad(x, ((0, 0), (0, 0), (radius, radius), (radius, radius))))
                  if padded else x, masks, out, k, s]
        if with_group:
            arrays.append(g)
        index_hint = ("the padded map x_padded has r rows and columns of zeros on every side, so output (Y, X) "
                      "reads rows Y // scale + dy for dy in range(kernel_size)" if padded else
                      "check 0 <= row < x.shape[2] and 0 <= col < x.shape[3] before reading x")
        # bounds_hint: a thread past the end of out (or one the simulator does not say): the guard too
        per_block = block_size_of_case(index, 128)
        blocks = blocks_in_case(per_block, 128)
        rules.launch(launch_config(out.size, per_block), *arrays, count=index == 1, case=_describe(case) + blocks,
                     bounds_hint=index_hint + "; and guard the thread with `if i < out.size:`",
                     index_hint=index_hint, sized_for=2)
        expected = carafe_reference(torch.from_numpy(x).double(), torch.from_numpy(masks).double(), k, s, g)
        if outside_nan:
            _require_no_nan(out, what, _describe(case))
        if values_inside:
            require_values_inside(out, expected, what, _describe(case) + blocks, x.shape, s,
                                  padded_by=radius if padded else None)
            continue
        diagnose(expected, out, [] if outside_nan else _variants(x, masks, k, s, g), what=what,
                 case=_describe(case) + blocks + (", nan masks at the outside slots" if outside_nan else ""),
                 hint=_OUTSIDE_NAN_HINT if outside_nan else hint,
                 unwritten_hint=("every thread with i < out.size writes its own element"
                                 + blocks_note(per_block, 128)) if blocks else "")
    rules.passed(len(cases))


def check_carafe_padded_kernel(kernel):
    """``kernel(x_padded, masks, out, kernel_size, scale)``: group 1, one
    thread per element of ``out`` (N, C, s*h, s*w) on a 1-D grid;
    ``x_padded`` is x with r = (k - 1) // 2 zero rows and columns on every side."""
    _forward_cases(kernel, _GROUP1_CASES, "carafe_padded_kernel", 31, padded=True,
                   hint="out[n, c, Y, X] = sum over dy, dx in range(kernel_size) of "
                        "masks[n, dy * kernel_size + dx, Y, X] * x_padded[n, c, Y // scale + dy, X // scale + dx] "
                        "(no - r: the r rows and columns of padding already shift the window)")


def check_carafe_border_kernel(kernel):
    """``kernel(x, masks, out, kernel_size, scale)``: group 1, one thread per
    element of ``out``, zero padding done by skipping the outside slots."""
    _forward_cases(kernel, _GROUP1_CASES, "carafe_border_kernel", 32,
                   hint=_FORWARD_HINT + "; slots outside the map add nothing (and are not renormalised)")


def check_carafe_group_kernel(kernel):
    """``kernel(x, masks, out, kernel_size, scale, group)``: one thread per
    element of ``out``; channel c uses the kernels of group c // (C // group)."""
    _forward_cases(kernel, _GROUP_CASES + _GROUP1_CASES[:2], "carafe_group_kernel", 33, with_group=True,
                   hint="group g = c // (C // group) reads mask channel g * kernel_size**2 + t for slot t")


# --------------------------------------------------------------------------
# 03.5 the shared-memory tile
# --------------------------------------------------------------------------


def _dotted(node):
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def _shape_parts(shape):
    """The names and run-time expressions of a shared array's shape, outermost
    first: ``x.shape[2]`` is one part, not three (``x``, ``x.shape``, ...)."""
    if shape is None:
        return
    if isinstance(shape, (ast.Name, ast.Attribute, ast.Call, ast.Subscript)):
        yield shape
        return
    for child in ast.iter_child_nodes(shape):
        yield from _shape_parts(child)


def _mentions_thread(node, per_thread):
    """Whether expression ``node`` reads the thread's index (``cuda.threadIdx``, ``cuda.grid``) or a name set
    from it."""
    for inner in ast.walk(node):
        if isinstance(inner, ast.Attribute) and _dotted(inner).split(".")[-2:-1] == ["threadIdx"]:
            return True
        if isinstance(inner, ast.Call) and _dotted(inner.func).endswith(("grid", "threadIdx")):
            return True
        if isinstance(inner, ast.Name) and inner.id in per_thread:
            return True
    return False


def _names_set_per_thread(definition):
    """The local names whose value depends on the thread: set from ``cuda.threadIdx`` or ``cuda.grid``, or
    from such names, or as a loop variable over such a range."""
    per_thread, grown = set(), True
    while grown:
        grown = False
        for node in ast.walk(definition):
            if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)) and node.value is not None:
                targets, value = (node.targets if isinstance(node, ast.Assign) else [node.target]), node.value
            elif isinstance(node, ast.For):
                targets, value = [node.target], node.iter
            else:
                continue
            if _mentions_thread(value, per_thread):
                for target in targets:
                    for name in ast.walk(target):
                        if isinstance(name, ast.Name) and name.id not in per_thread:
                            per_thread.add(name.id)
                            grown = True
    return per_thread


def shared_memory_problems(kernel):
    """What in a kernel's source would break on a GPU although the simulator
    accepts it: a shared array whose shape is not made of module-level integer
    constants, and ``cuda.syncthreads()`` calls that some threads may skip
    (inside an ``if``, after a ``return``, or in a loop whose passes depend on
    the thread). A list of messages, empty if none."""
    function, definition = kernel_definition(kernel)
    problems = []
    local_names = {a.arg for a in definition.args.args}
    for node in ast.walk(definition):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            local_names.add(node.id)
    shared_calls = [node for node in ast.walk(definition)
                    if isinstance(node, ast.Call) and _dotted(node.func).endswith("shared.array")]
    if not shared_calls:
        problems.append("the kernel declares no shared array (cuda.shared.array(shape, float32)).")
    for call in shared_calls:
        shape = call.args[0] if call.args else next((k.value for k in call.keywords if k.arg == "shape"), None)
        for node in _shape_parts(shape):
            if isinstance(node, ast.Name):
                value = function.__globals__.get(node.id)
                if node.id in local_names or not isinstance(value, int):
                    problems.append(
                        f"the shape of the shared array uses `{node.id}`, which is not a module-level integer "
                        "constant. On a GPU the shape must be known when the kernel is compiled (the simulator "
                        "accepts anything): size the array for the largest case with constants such as "
                        "TILE and MAX_RADIUS.")
            elif isinstance(node, (ast.Attribute, ast.Call, ast.Subscript)):
                problems.append(
                    f"the shape of the shared array uses `{ast.unparse(node)}`, which is only known at run "
                    "time; on a GPU the shape must be made of module-level integer constants.")
    syncs = [node for node in ast.walk(definition)
             if isinstance(node, ast.Call) and _dotted(node.func).endswith("syncthreads")]
    if not syncs:
        problems.append("the kernel never calls cuda.syncthreads(): threads may read the tile before the "
                        "threads that load it have written it.")
    for node in ast.walk(definition):
        if isinstance(node, (ast.If, ast.While, ast.IfExp)):
            for inner in ast.walk(node):
                if inner in syncs:
                    problems.append(
                        f"cuda.syncthreads() on line {inner.lineno} of the kernel sits inside an `if` or "
                        "`while`. Every thread of the block must reach every syncthreads (a thread past the "
                        "edge of the output too), or the block may hang or read a half-loaded tile: call "
                        "it at the top level of the kernel and guard only the work around it.")
    per_thread = _names_set_per_thread(definition)
    for node in ast.walk(definition):
        if isinstance(node, ast.For) and _mentions_thread(node.iter, per_thread):
            for inner in ast.walk(node):
                if inner in syncs:
                    problems.append(
                        f"cuda.syncthreads() on line {inner.lineno} of the kernel sits inside a `for` loop whose "
                        f"passes depend on the thread (`{ast.unparse(node.iter)}`): threads reach different "
                        "numbers of barriers, which a GPU does not allow (the block may hang or read a half-loaded "
                        "tile). Load in the loop, then call cuda.syncthreads() once, after it, at the top level.")
    if syncs:
        last = max(s.lineno for s in syncs)
        for node in ast.walk(definition):
            if isinstance(node, ast.Return) and node.lineno < last:
                problems.append(
                    f"the kernel returns on line {node.lineno}, before cuda.syncthreads() on line {last}: the "
                    "threads that return neither help load the tile nor reach the barrier. Guard the work "
                    "with `if Y < height and X < width:` instead of returning early.")
    unique = []
    for problem in problems:
        if problem not in unique:
            unique.append(problem)
    return unique


def check_carafe_tiled_kernel(kernel, tile: int, max_radius: int):
    """``kernel(x, masks, out, kernel_size, scale, group)`` launched on blocks
    of ``tile x tile`` threads, one per output pixel of a tile, and a grid
    ``(ceil(W / tile), ceil(H / tile), N * C)``: block z is the plane
    (n, c) = divmod(z, C). It stages the low-res window of its tile in a
    shared array sized by the constants ``tile`` and ``max_radius``."""
    what = "carafe_tiled_kernel"
    problems = [] if unsolved_exercise(kernel) is not None else shared_memory_problems(kernel)
    if problems:
        raise CheckFailed(f"{what}: " + "\n".join(problems))
    # Last, the case whose masks are nan where a slot reads outside the map: the zeros of the tile stand for
    # the padding, and the sum must still skip those slots, as 03.3's kernel does.
    # Then the one whose x holds a 0 read with a nan mask (the tile's zeros are not the test of the outside).
    kinds = [(case, None) for case in _TILED_CASES + [_short_tile_case(tile)]]
    kinds += [(_OUTSIDE_NAN_CASE, "outside nan"), (_VALUES_INSIDE_CASE, "values inside")]
    kinds = [(case, kind) for case, kind in kinds if (case[4] - 1) // 2 <= max_radius]
    cases = [case for case, _ in kinds]
    rules = KernelCheck(kernel, what, output=2, float_index_note=INTEGER_DIVISION_NOTE)
    # Wrong only in the edge blocks (in a case, and in a probe with blocks inside the output besides the
    # first): their threads outside the output did not load their share of the tile.
    edge_only = _wrong_only_in_edge_blocks(kernel, tile, max_radius)
    for index, (case, kind) in enumerate(kinds):
        n, c, h, w, k, s, g = case
        x, masks = _inputs(case, 35 + index)
        outside_nan, values_inside = kind == "outside nan", kind == "values inside"
        if outside_nan:
            masks = with_nan_outside(masks, k, s, g, h, w)
        if values_inside:
            x, masks = with_values_inside(x, masks, k, s, g)
        out = np.full((n, c, s * h, s * w), np.nan, np.float32)
        grid = (math.ceil(s * w / tile), math.ceil(s * h / tile), n * c)
        report = rules.launch(
            (grid, (tile, tile)), x, masks, out, k, s, g, count=index == 0, case=_describe(case),
            bounds_hint=_TILED_BOUNDS_HINT)
        if report is not None:
            counted = (case, report)
        expected = carafe_reference(torch.from_numpy(x).double(), torch.from_numpy(masks).double(), k, s, g)
        if outside_nan:
            _require_no_nan(out, what, f"{_describe(case)}, grid {grid} of blocks {tile} x {tile}")
        if values_inside:
            require_values_inside(out, expected, what, f"{_describe(case)}, grid {grid} of blocks {tile} x {tile}",
                                  x.shape, s)
            continue

        def in_an_edge_block(index, height=s * h, width=s * w):
            return ((_block_reaches_past(index[2], height, tile) or _block_reaches_past(index[3], width, tile))
                    and edge_only())

        diagnose(expected, out, _variants(x, masks, k, s, g), what=what,
                 case=f"{_describe(case)}, grid {grid} of blocks {tile} x {tile}",
                 hint="output (Y, X) sums tile[Y // scale - Y0 // scale + dy, X // scale - X0 // scale + dx] "
                      "* masks[n, (g * kernel_size + dy) * kernel_size + dx, Y, X], where Y0 = blockIdx.y * TILE, "
                      "X0 = blockIdx.x * TILE and tile[0, 0] holds x[n, c, Y0 // scale - r, X0 // scale - r]",
                 border=in_an_edge_block,
                 border_hint="only blocks at the edge of the output are wrong: every thread of the block, inside "
                             "the output or not, must help load the tile (zeros outside the map) before "
                             "cuda.syncthreads(); then each thread inside the output sums its k*k tile values "
                             "weighted by its masks")
    _require_tile_reuse(what, *counted, tile)
    rules.passed(len(cases))


def _block_reaches_past(position, size, tile):
    """Whether the block of output row (or column) ``position`` reaches
    past ``size``; elementwise for an array of positions."""
    return (position // tile + 1) * tile > size


def _edge_blocks(shape, tile):
    """Mask of the output elements whose block holds threads past the edge."""
    height, width = shape[-2:]
    rows = _block_reaches_past(np.arange(height), height, tile)
    cols = _block_reaches_past(np.arange(width), width, tile)
    return rows[:, None] | cols[None, :]


def _wrong_only_in_edge_blocks(kernel, tile, max_radius):
    """A function that says (once, on first call) whether the tiled kernel,
    run on a 3 x 3-block output whose 2 x 2 top-left blocks lie inside it, is
    wrong in some edge block and in no inside block. The checker's own cases
    have at most one inside block, the first, where an offset left out of the
    tile index does no harm."""
    verdict = []

    def probe():
        if not verdict:
            k = 3 if max_radius >= 1 else 1
            size = (5 * tile) // 2
            case = (1, 1, size, size, k, 1, 1)
            x, masks = _inputs(case, 34)
            out = np.full((1, 1, size, size), np.nan, np.float32)
            try:
                launch_checked(kernel, ((3, 3, 1), (tile, tile)), x, masks, out, k, 1, 1,
                               what="carafe_tiled_kernel", bounds_hint="")
            except Exception:  # noqa: BLE001  (a probe: no verdict without a clean run)
                verdict.append(False)
                return False
            expected = carafe_reference(torch.from_numpy(x).double(), torch.from_numpy(masks).double(), k, 1, 1)
            wrong = ~np.isclose(out, expected.numpy(), rtol=1e-5, atol=1e-5)[0, 0]
            edge = _edge_blocks(wrong.shape, tile)
            verdict.append(bool(wrong[edge].any() and not wrong[~edge].any()))
        return verdict[0]

    return probe


_TILED_BOUNDS_HINT = (
    "an index is outside an array (the message gives its axis). The shared tile (axis 0 or 1): size it for the "
    "largest case, (TILE + 2 * MAX_RADIUS) square at scale 1; it holds the low-res rows from Y0 // scale - r "
    "on, where Y0 = blockIdx.y * TILE is the block's first output row, so output Y reads tile row "
    "Y // scale - Y0 // scale + dy. x (axis 2 or 3): while loading the tile, read x only where "
    "0 <= row < x.shape[2] and 0 <= col < x.shape[3], and store 0 elsewhere; and the block's plane "
    "p = blockIdx.z is image n = p // C, channel c = p % C (x's axis 1 has C channels). masks or out: only the "
    "threads with Y < height and X < width compute an output")


def x_loads_per_channel(h, w, k, s, tile=None):
    """Loads of x per plane, as lesson 03 counts them: one per inside window
    slot and output (tile=None), or one per inside tile value and block."""
    r = (k - 1) // 2

    def along(size):
        if tile is None:  # every output reads its inside rows
            return sum(sum(0 <= Y // s - r + d < size for d in range(k)) for Y in range(s * size))
        total = 0  # every block loads the inside rows of its tile
        for Y0 in range(0, s * size, tile):
            first, last = Y0 // s - r, (Y0 + tile - 1) // s + r
            total += min(last, size - 1) - max(first, 0) + 1
        return total

    return along(h) * along(w)


def _require_tile_reuse(what, case, report, tile):
    """The tiled kernel must load x as rarely as lesson 03 counts: each
    inside value of a block's tile once."""
    n, c, h, w, k, s, g = case
    x_loads = report.array(list(report.arrays)[0]).loads
    tiled = n * c * x_loads_per_channel(h, w, k, s, tile)
    naive = n * c * x_loads_per_channel(h, w, k, s)
    if x_loads > tiled:
        raise CheckFailed(
            f"{what}: the values are right, but the kernel loads x from global memory {x_loads} times for "
            f"{_describe(case)}; the tile of the lesson loads it {tiled} times (one thread per output: {naive}). "
            "Every value of x that a block needs should be loaded once, into the shared tile.\nHint: the "
            "threads load the tile's rows * cols values once, in the strided loop; after cuda.syncthreads() "
            "the sum reads tile[...], never x[...]")


# --------------------------------------------------------------------------
# 03.6 - 03.7 the backward kernels
# --------------------------------------------------------------------------


def _gradients(x, masks, grad_out, k, s, g):
    x_ref = torch.from_numpy(x).double().requires_grad_()
    masks_ref = torch.from_numpy(masks).double().requires_grad_()
    out = carafe_reference(x_ref, masks_ref, k, s, g)
    return torch.autograd.grad(out, (x_ref, masks_ref), torch.from_numpy(grad_out).double())


def _backward_cases(kernel, what, wrt, hint, index_hint):
    rules = KernelCheck(kernel, what, output=2, float_index_note=INTEGER_DIVISION_NOTE)
    output = "grad_x" if wrt == "x" else "grad_masks"
    for index, case in enumerate(_BACKWARD_CASES):
        n, c, h, w, k, s, g = case
        x, masks = _inputs(case, 36 + index)
        grad_out = np.random.default_rng(46 + index).standard_normal((n, c, s * h, s * w)).astype(np.float32)
        grad_x, grad_masks = _gradients(x, masks, grad_out, k, s, g)
        if wrt == "x":
            result = np.full(x.shape, np.nan, np.float32)
            arrays = (grad_out, masks, result, k, s, g)
            expected = grad_x
        else:
            result = np.full(masks.shape, np.nan, np.float32)
            arrays = (grad_out, x, result, k, s, g)
            expected = grad_masks
        per_block = block_size_of_case(index, 128)
        blocks = blocks_in_case(per_block, 128)
        rules.launch(launch_config(result.size, per_block), *arrays, count=index == 2, case=_describe(case) + blocks,
                     bounds_hint=f"{index_hint}; and guard the thread with `if i < {output}.size:`",
                     index_hint=index_hint, sized_for=2)
        compare(expected.numpy(), result, what=what, case=_describe(case) + blocks,
                hint=hint + blocks_note(per_block, 128), rtol=1e-5, atol=1e-5)
    _backward_values_inside(rules, what, wrt)
    rules.passed(len(_BACKWARD_CASES) + 1)


#: Wide enough that the window of the pixel that reads x's nan does not reach x's 0 (``_values_inside_pixels``).
_BACKWARD_VALUES_INSIDE_CASE = (2, 2, 3, 5, 3, 2, 2)


def _backward_values_inside(rules, what, wrt):
    """``with_values_inside``'s x and masks, and grad_out 0 and nan at the outputs that read x's 0 and x's nan
    (for grad_x; nan and 0 for grad_masks): every term a kernel skipping by value drops (a 0 of grad_out, of x or
    of a mask) then multiplies a nan, which the spec keeps."""
    case = _BACKWARD_VALUES_INSIDE_CASE
    n, c, h, w, k, s, g = case
    x, masks = with_values_inside(*_inputs(case, 47), k, s, g)
    grad_out = np.random.default_rng(57).standard_normal((n, c, s * h, s * w)).astype(np.float32)
    (_, zero_reader), (_, nan_reader) = _values_inside_pixels(h, w)
    values = (0.0, np.nan) if wrt == "x" else (np.nan, 0.0)
    for reader, value in zip((zero_reader, nan_reader), values):
        grad_out[:, :, reader[0] * s:(reader[0] + 1) * s, reader[1] * s:(reader[1] + 1) * s] = value
    grad_x, grad_masks = _gradients(x, masks, grad_out, k, s, g)
    output = "grad_x" if wrt == "x" else "grad_masks"
    result = np.full(x.shape if wrt == "x" else masks.shape, np.nan, np.float32)
    expected = (grad_x if wrt == "x" else grad_masks).numpy()
    described = (f"{_describe(case)}, x with a 0 and a nan inside the map, masks nan and 0 at slots that read them, "
                 f"grad_out {'0 and nan' if wrt == 'x' else 'nan and 0'} at the outputs that read them")
    rules.launch(launch_config(result.size, 128), grad_out, masks if wrt == "x" else x, result, k, s, g,
                 case=described, bounds_hint=f"guard the thread with `if i < {output}.size:`", sized_for=2)
    mismatch = first_nan_mismatch(expected, result)
    if mismatch is not None:
        index, word = mismatch
        why = ("it should be nan: one of its terms multiplies a nan by a 0, which the spec keeps (nan * 0 is nan)"
               if word == "a number" else "no nan reaches it")
        raise CheckFailed(f"{what}: {output}{index} is {word} for {described}; {why}.\nHint: skip a term by "
                          "where its slot lies (outside the map), never by a value (`!= 0`)")
    compare_where_finite(expected, result, what=what, case=described, rtol=1e-5, atol=1e-5,
                         hint="skip a term by where its slot lies (outside the map), never by a value")


def check_carafe_grad_x_kernel(kernel):
    """``kernel(grad_out, masks, grad_x, kernel_size, scale, group)``: one
    thread per element of ``grad_x`` (N, C, h, w), a gather: no atomics."""
    what = "carafe_grad_x_kernel"
    require_gather(kernel, what, "writes only its own pixel of grad_x")
    _backward_cases(
        kernel, what, "x",
        hint="low-res pixel (row, col) is slot (dy, dx) of the outputs attached to low-res pixel "
             "(row - dy + r, col - dx + r), i.e. output rows (row - dy + r) * scale + sy for sy in range(scale) "
             "(and the same for columns); sum masks[n, slot, Y, X] * grad_out[n, c, Y, X] over them",
        index_hint="skip the anchors (row - dy + r, col - dx + r) outside 0..h-1, 0..w-1; and read the masks of "
                   "channel c's group, mask channel g * kernel_size**2 + t with g = c // (C // group) (an index "
                   "past axis 1 of masks is a group mapping that goes past the last group)")


def check_carafe_grad_masks_kernel(kernel):
    """``kernel(grad_out, x, grad_masks, kernel_size, scale, group)``: one
    thread per element of ``grad_masks`` (N, G*k*k, s*h, s*w)."""
    _backward_cases(
        kernel, "carafe_grad_masks_kernel", "masks",
        hint="grad_masks[n, g*k*k + t, Y, X] = sum over the channels c of group g of grad_out[n, c, Y, X] * "
             "x[n, c, row_t, col_t], and 0 if slot t's pixel is outside the map",
        index_hint="slot t reads row Y // scale - r + t // kernel_size and column X // scale - r + "
                   "t % kernel_size: check both are inside x before reading")


# --------------------------------------------------------------------------
# 03.8 the autograd Function
# --------------------------------------------------------------------------


_FLOAT64_HOW = ("no .float() or float32 arrays for float64 inputs (allocate with x.new_empty / torch.empty_like, "
                "accumulate in out.dtype.type(0))")


def check_carafe_function(function_class):
    """``function_class.apply(x, masks, kernel_size, scale, group)``: a
    torch.autograd.Function whose forward and backward run the student's
    kernels on (N, C, h, w) CPU tensors, float32 and float64."""
    what = "CarafeFunction"
    if not (isinstance(function_class, type) and issubclass(function_class, torch.autograd.Function)):
        raise CheckFailed(f"{what}: {getattr(function_class, '__name__', function_class)!s} is not a "
                          "torch.autograd.Function, so autograd cannot call its backward.\nHint: declare it as "
                          "`class CarafeFunction(torch.autograd.Function):` with @staticmethod forward(ctx, ...) "
                          "and backward(ctx, grad_out), and call it as CarafeFunction.apply(...)")
    cases = [(1, 4, 3, 4, 3, 2, 2, torch.float64), (2, 2, 3, 2, 5, 3, 1, torch.float32)]
    for index, (n, c, h, w, k, s, g, dtype) in enumerate(cases):
        case = f"{_describe((n, c, h, w, k, s, g))}, {str(dtype).replace('torch.', '')}"
        x_np, masks_np = _inputs((n, c, h, w, k, s, g), 50 + index, np.float64)
        x = torch.from_numpy(x_np).to(dtype).requires_grad_()
        masks = torch.from_numpy(masks_np).to(dtype).requires_grad_()
        out = run_with_timeout(lambda: function_class.apply(x, masks, k, s, g), what="forward")
        expected = carafe_reference(x.detach().double(), masks.detach().double(), k, s, g)
        if not isinstance(out, torch.Tensor) or out.dtype != dtype:
            raise CheckFailed(f"{what}: forward returned {type(out).__name__}"
                              f"{' of dtype ' + str(out.dtype) if isinstance(out, torch.Tensor) else ''} for "
                              f"{case}; expected a tensor of the inputs' dtype {dtype}")
        hint = "forward returns carafe(x, masks) as a new (N, C, s*h, s*w) tensor, computed by one thread per element"
        if isinstance(out, torch.Tensor) and out.shape == expected.shape:
            wrong = ~torch.isclose(out.detach().double(), expected, rtol=1e-4, atol=1e-4).flatten()
            # The outputs past x.numel() all wrong and none before: a launch sized for x, not for out
            # (a wrong value in some channels only, e.g. of a wrong 03.4, is no launch's doing).
            if not wrong[: x.numel()].any() and wrong[x.numel():].float().mean() > 0.9:
                hint += " of it: launch_config(out.numel(), 128), not x.numel()"
        compare(expected, out.detach().double(), what=what, case=f"forward, {case}", hint=hint)
        require_float64_precision(what, f"forward, {case}", expected, out, _FLOAT64_HOW)
        if not out.requires_grad:
            raise CheckFailed(f"{what}: the output of CarafeFunction.apply does not require grad for {case}, so "
                              "its backward can never run.\nHint: forward must not mark its output "
                              "non-differentiable (no ctx.mark_non_differentiable(out))")
        grad_out = torch.from_numpy(np.random.default_rng(60 + index).standard_normal(out.shape)).to(dtype)
        try:
            got = run_with_timeout(lambda: torch.autograd.grad(out, (x, masks), grad_out), what="backward")
        except RuntimeError as error:
            raise CheckFailed(f"{what}: backward failed for {case}: {str(error).splitlines()[0]}\n"
                              "Hint: backward must return one gradient per input of forward: "
                              "(grad_x, grad_masks, None, None, None)") from None
        expected_grads = _gradients(x_np, masks_np, grad_out.double().numpy(), k, s, g)
        for name, e, o in zip(("x", "masks"), expected_grads, got):
            compare(e, o.double(), what=what, case=f"gradient of {name}, {case}", rtol=1e-4, atol=1e-5,
                    hint="backward returns (gather of grad_out over the windows, window products of grad_out "
                         "and x, None, None, None), each with the shape of its input")
            require_float64_precision(what, f"gradient of {name}, {case}", e, o, _FLOAT64_HOW)
    check_non_contiguous(what, lambda a, b: function_class.apply(a, b, 3, 2, 2),
                         [torch.from_numpy(a) for a in _inputs((1, 4, 3, 5, 3, 2, 2), 71, np.float64)])
    x = torch.from_numpy(_inputs((1, 2, 2, 3, 3, 2, 2), 70, np.float64)[0]).requires_grad_()
    masks = torch.from_numpy(_inputs((1, 2, 2, 3, 3, 2, 2), 70, np.float64)[1]).requires_grad_()
    ok = run_with_timeout(
        lambda: torch.autograd.gradcheck(lambda a, b: function_class.apply(a, b, 3, 2, 2), (x, masks),
                                         fast_mode=True, raise_exception=False),
        what="gradcheck",
    )
    if not ok:
        raise CheckFailed(f"{what}: torch.autograd.gradcheck fails (float64, kernel_size=3, scale=2, group=2), "
                          "although forward and backward gave the right values.\nHint: gradcheck calls them "
                          "again on new tensors, and twice with the same grad_out: make the tensors contiguous "
                          "before handing them to the kernels, keep no state between calls, and return new "
                          "tensors (do not write into grad_out or into saved tensors)")
    passed(what, len(cases) + 2)

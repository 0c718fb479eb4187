"""Checkers of lesson 06 (the capstone: the boundary band and boundary IoU
of the region task, the gradient error of the detail task, a student's own
upsampler plugged into the network, and a fair comparison at an equal
parameter budget)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..experiments import metrics
from ..experiments.model import UPSAMPLERS, EncoderDecoder, count_parameters
from .engine import CheckFailed, compare, passed, run_with_timeout

__all__ = [
    "check_boundary_band",
    "check_boundary_iou",
    "check_gradient_error",
    "check_pixel_shuffle_upsampler",
    "check_matched_width",
]


def _not_a_number(what, got, hint):
    kind = type(got).__name__
    if isinstance(got, torch.Tensor):
        kind = f"a Tensor of shape {tuple(got.shape)}"
    raise CheckFailed(f"{what}: expected a number, got {kind}.\nHint: {hint}")


def _first_match(got, variants, equal):
    return [explanation for result, explanation in variants if equal(got, result)]


def _explain(what, case, matches, fallback):
    if len(matches) == 1:
        raise CheckFailed(f"{what}: wrong result for {case}.\nHint: {matches[0]}")
    if matches:
        raise CheckFailed(f"{what}: wrong result for {case}, which matches several known mistakes:\n"
                          + "\n".join(f"* {m}" for m in matches))
    raise CheckFailed(f"{what}: wrong result for {case}.\nHint: {fallback}")


def _label_maps(seed, n, h, w, classes, blocky=True):
    """Random label maps made of rectangles (so boundaries are long lines,
    with corners, and touch the image border) plus a few isolated pixels."""
    rng = np.random.default_rng(seed)
    maps = np.zeros((n, h, w), dtype=np.int64)
    for i in range(n):
        for _ in range(rng.integers(2, 6)):
            y0, x0 = rng.integers(0, h), rng.integers(0, w)
            y1, x1 = y0 + rng.integers(1, max(2, h // 2)), x0 + rng.integers(1, max(2, w // 2))
            maps[i, y0:y1, x0:x1] = rng.integers(0, classes)
        if not blocky:
            noise = rng.random((h, w)) < 0.03
            maps[i][noise] = rng.integers(0, classes, noise.sum())
        if (maps[i] == maps[i, 0, 0]).all():  # one class, no boundary: the grader's fresh seeds can draw it
            maps[i, : max(1, h // 2), : max(1, w // 2)] = (maps[i, 0, 0] + 1) % classes
    return torch.from_numpy(maps)


# --------------------------------------------------------------------------
# 06.1 the boundary band
# --------------------------------------------------------------------------

#: (seed, N, H, W, classes, width)
_BAND_CASES = [
    (601, 1, 9, 11, 3, 1),
    (602, 2, 16, 13, 4, 2),
    (603, 1, 12, 12, 2, 0),
    (604, 3, 20, 17, 5, 3),
    (605, 1, 7, 24, 3, 2),
]


def _band_variants(target, width):
    t = target
    horizontal = t[..., :, 1:] != t[..., :, :-1]
    vertical = t[..., 1:, :] != t[..., :-1, :]

    def dilate(edges, w=width, shape="square"):
        e = edges.float()[:, None]
        if shape == "square":
            out = F.max_pool2d(e, 2 * w + 1, stride=1, padding=w) if w > 0 else e
        else:  # diamond: a 4-neighbour dilation repeated w times
            out = e
            for _ in range(w):
                out = F.max_pool2d(out, (3, 1), stride=1, padding=(1, 0)).maximum(
                    F.max_pool2d(out, (1, 3), stride=1, padding=(0, 1)))
        return out[:, 0] > 0

    one_sided = torch.zeros_like(t, dtype=torch.bool)
    one_sided[..., :, :-1] |= horizontal
    one_sided[..., :-1, :] |= vertical
    other_side = torch.zeros_like(t, dtype=torch.bool)  # the right and lower pixel of each pair only
    other_side[..., :, 1:] |= horizontal
    other_side[..., 1:, :] |= vertical
    only_horizontal = torch.zeros_like(t, dtype=torch.bool)
    only_horizontal[..., :, 1:] |= horizontal
    only_horizontal[..., :, :-1] |= horizontal
    only_vertical = torch.zeros_like(t, dtype=torch.bool)
    only_vertical[..., 1:, :] |= vertical
    only_vertical[..., :-1, :] |= vertical
    edges = metrics.boundary_pixels(t)
    rolled = ((t != torch.roll(t, 1, -1)) | (t != torch.roll(t, -1, -1)) | (t != torch.roll(t, 1, -2))
              | (t != torch.roll(t, -1, -2)))
    eight = edges.clone()
    diagonal = t[..., 1:, 1:] != t[..., :-1, :-1]
    anti = t[..., 1:, :-1] != t[..., :-1, 1:]
    eight[..., 1:, 1:] |= diagonal
    eight[..., :-1, :-1] |= diagonal
    eight[..., 1:, :-1] |= anti
    eight[..., :-1, 1:] |= anti
    both_sides = ("a boundary pixel is one with ANY 4-neighbour of another label: mark both pixels of every "
                  "differing pair (left and right, upper and lower), not only one of them")
    full = dilate(edges)
    variants = [
        (dilate(one_sided), both_sides),
        (dilate(other_side), both_sides),
        (full[:1].expand_as(full), "every image has the first image's band: compute the band of each image of the "
                                   "batch (axis 0), e.g. with the comparisons and the max-pool over all of them at once"),
        (dilate(only_horizontal), "only left/right neighbours are compared: compare the upper and lower "
                                  "neighbours too"),
        (dilate(only_vertical), "only upper/lower neighbours are compared: compare the left and right "
                                "neighbours too"),
        (dilate(rolled), "the boundaries wrap around the image (torch.roll?): the image border is not a boundary; "
                         "compare only neighbours inside the image"),
        (dilate(eight), "diagonal neighbours count here; the band is built from 4-neighbour boundaries only"),
        (edges, "the band is not dilated: take every pixel within `width` of a boundary pixel"),
        (dilate(edges, shape="diamond"), "the band is a diamond (|dy| + |dx| <= width); this lesson's band is a "
                                         "square, Chebyshev distance max(|dy|, |dx|) <= width: "
                                         "F.max_pool2d(..., 2 * width + 1, stride=1, padding=width)"),
    ]
    if width > 0:
        variants.append((dilate(edges, width - 1), "the band is one pixel too narrow: a square of side 2 * width + 1 "
                                                   "around each boundary pixel"))
    variants.append((dilate(edges, width + 1), "the band is one pixel too wide: a square of side 2 * width + 1 "
                                               "around each boundary pixel"))
    return variants


def check_boundary_band(boundary_band):
    """``boundary_band(target, width)``: boolean ``(N, H, W)``, the pixels within
    Chebyshev distance ``width`` of a pixel with a 4-neighbour of another label."""
    what = "boundary_band"
    for seed, n, h, w, classes, width in _BAND_CASES:
        target = _label_maps(seed, n, h, w, classes, blocky=seed % 2 == 0)
        case = f"target {tuple(target.shape)} with {classes} labels, width={width}"
        expected = metrics.boundary_band(target, width)
        got = run_with_timeout(lambda: boundary_band(target.clone(), width), what=what)
        if not isinstance(got, torch.Tensor):
            raise CheckFailed(f"{what}: expected a tensor, got {type(got).__name__}")
        if got.shape != expected.shape:
            raise CheckFailed(f"{what}: wrong shape for {case}: expected {tuple(expected.shape)}, got "
                              f"{tuple(got.shape)}.\nHint: one band per image, (N, H, W)")
        if got.dtype != torch.bool:
            raise CheckFailed(f"{what}: expected a boolean tensor, got {got.dtype}.\nHint: compare, e.g. `band > 0`")
        if not torch.equal(got, expected):
            matches = _first_match(got, _band_variants(target, width), torch.equal)
            if not matches:
                compare(expected, got, what=what, case=case, exact=True,
                        hint="a pixel is in the band if some pixel within max(|dy|, |dx|) <= width of it has a "
                             "4-neighbour (inside the image) with another label")
            _explain(what, case, matches, "")
    passed(what, len(_BAND_CASES))


# --------------------------------------------------------------------------
# 06.2 boundary IoU
# --------------------------------------------------------------------------

#: (seed, N, H, W, classes, width)
_IOU_CASES = [
    (611, 2, 16, 16, 4, 2),
    (612, 1, 13, 19, 3, 1),
    (613, 3, 20, 12, 5, 2),
    (614, 2, 11, 11, 6, 0),
]


def _noisy_prediction(target, classes, seed):
    """A prediction that is wrong mostly near the boundaries (shifted by one
    pixel) and sometimes far from them, and never predicts the last class
    (so a class can be absent from the prediction)."""
    generator = torch.Generator().manual_seed(seed)
    pred = torch.roll(target, 1, -1).clone()
    flips = torch.rand(target.shape, generator=generator) < 0.08
    pred[flips] = torch.randint(0, classes, (int(flips.sum()),), generator=generator)
    pred[pred == classes - 1] = 0
    return pred


def _iou_variants(pred, target, classes, width):
    band = metrics.boundary_band(target, width)
    pred_band = metrics.boundary_band(pred, width)

    def mean_iou(mask=None, count=None):
        ious = metrics.class_iou(pred, target, classes, mask)
        return float(torch.nanmean(ious)) if count is None else float(torch.nansum(ious) / count)

    per_image = float(np.nanmean([metrics.boundary_iou(pred[i:i + 1], target[i:i + 1], classes, width)
                                  for i in range(len(target))]))
    accuracy = float((pred[band] == target[band]).double().mean())
    inter_in_band = []
    for c in range(classes):
        p, t = pred == c, target == c
        union = (p | t).sum().item()
        inter_in_band.append((p & t & band).sum().item() / union if union else float("nan"))
    return [
        (mean_iou(), "this is the IoU over the whole image (mIoU): keep only the pixels of the band, "
                     "boundary_band(target, width), before counting"),
        (mean_iou(pred_band), "the band is around the PREDICTED boundaries; this lesson's band is around the TRUE "
                              "boundaries: boundary_band(target, width)"),
        (mean_iou(band | pred_band), "the band is around the true AND the predicted boundaries (that is Cheng et al.'s "
                                     "Boundary IoU); this lesson's band is around the true boundaries only"),
        # (an empty class counted as IoU 0 and a sum divided by all the classes are the same number)
        (mean_iou(band, count=classes), "the mean is over all the classes (a class absent from both prediction and "
                                        "truth inside the band counts as IoU 0): average only over the classes "
                                        "whose union inside the band is not empty"),
        (per_image, "the IoU is averaged over the images; sum the intersections and the unions over all the images "
                    "first, then divide (the benchmarks' convention)"),
        (accuracy, "this is the pixel accuracy inside the band; the metric is the IoU of each class, "
                   "|P_c & T_c| / |P_c | T_c| inside the band, averaged over the classes"),
        (float(np.nanmean(inter_in_band)), "only the intersection is restricted to the band; restrict the union too"),
    ]


def check_boundary_iou(boundary_iou):
    """``boundary_iou(pred, target, classes, width)``: mean over the classes of
    the IoU inside the band around the true boundaries (counts summed over the
    batch), a Python float."""
    what = "boundary_iou"
    for seed, n, h, w, classes, width in _IOU_CASES:
        target = _label_maps(seed, n, h, w, classes)
        pred = _noisy_prediction(target, classes, seed)
        case = f"pred and target {tuple(target.shape)}, classes={classes}, width={width}"
        expected = metrics.boundary_iou(pred, target, classes, width)
        got = run_with_timeout(lambda: boundary_iou(pred.clone(), target.clone(), classes, width), what=what)
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.item()
        if not isinstance(got, (float, int, np.floating)):
            _not_a_number(what, got, "return one float for the whole batch: sum the intersections and the unions "
                                     "over all the images first, then divide and average over the classes")
        got = float(got)
        if not math.isclose(got, expected, rel_tol=1e-6, abs_tol=1e-9):
            variants = _iou_variants(pred, target, classes, width)
            matches = _first_match(got, variants, lambda a, b: math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9))
            _explain(what, f"{case} (expected {expected:.6f}, got {got:.6f})", matches,
                     "for each class c: |{pred == c} & {target == c} & band| / |({pred == c} | {target == c}) & "
                     "band|, then the mean over the classes with a non-empty union")
    passed(what, len(_IOU_CASES))


# --------------------------------------------------------------------------
# 06.3 the gradient error
# --------------------------------------------------------------------------

#: (seed, N, H, W)
_GRAD_CASES = [(621, 2, 24, 24), (622, 1, 17, 29), (623, 3, 12, 15)]


def _mattes(seed, n, h, w):
    generator = torch.Generator().manual_seed(seed)
    target = (torch.rand(n, 1, h // 3 + 1, w // 3 + 1, generator=generator) > 0.6).float()
    target = F.interpolate(target, size=(h, w), mode="bilinear", align_corners=False)[:, 0]
    pred = (target + 0.15 * torch.randn(n, h, w, generator=generator)).clamp(0, 1)
    return pred, target


def _grad_variants(pred, target):
    hx, hy = metrics.gaussian_derivative_filters()

    def field(a, sigma=metrics.SIGMA):
        fx, fy = metrics.gaussian_derivative_filters(sigma)
        weight = torch.stack([fx, fy])[:, None]
        return F.conv2d(a.double()[:, None], weight, padding=fx.shape[0] // 2)

    def magnitude(a, sigma=metrics.SIGMA):
        return field(a, sigma).pow(2).sum(1).sqrt()

    p, t = magnitude(pred), magnitude(target)
    diff = (p - t)
    per_image = diff.pow(2).sum(dim=(-2, -1))

    def finite(a):
        gy, gx = torch.gradient(a.double(), dim=(-2, -1))
        return (gx ** 2 + gy ** 2).sqrt()

    def one_derivative(h):
        """The error with |g| taken from one derivative-of-Gaussian filter alone."""
        def filtered(a):
            return F.conv2d(a.double()[:, None], h[None, None], padding=h.shape[0] // 2).abs()
        return float((filtered(pred) - filtered(target)).pow(2).sum(dim=(-3, -2, -1)).mean())

    return [
        (float((field(pred) - field(target)).pow(2).sum(1).sum(dim=(-2, -1)).mean()),
         "you compared the gradient VECTORS, |grad p - grad t|^2; the gradient error compares their MAGNITUDES: "
         "(|grad p| - |grad t|)^2"),
        (float(diff.abs().sum(dim=(-2, -1)).mean()), "the difference of the magnitudes is not squared"),
        (float(diff.pow(2).mean(dim=(-2, -1)).mean()), "the error is averaged over the pixels; it is a SUM over the "
                                                        "pixels of each image (then the mean over the images)"),
        (float(per_image.sum()), "the per-image errors are summed over the batch; take their mean over the images"),
        (float((field(pred).pow(2).sum(1) - field(target).pow(2).sum(1)).pow(2).sum(dim=(-2, -1)).mean()),
         "the magnitudes are squared lengths; take the square root: |g| = sqrt(gx^2 + gy^2)"),
        (float((finite(pred) - finite(target)).pow(2).sum(dim=(-2, -1)).mean()),
         "finite differences are not the matting gradient: filter with the derivative-of-Gaussian filters of "
         "sigma 1.4 from metrics.gaussian_derivative_filters()"),
        (float((magnitude(pred, 1.0) - magnitude(target, 1.0)).pow(2).sum(dim=(-2, -1)).mean()),
         "sigma is 1.4, as in the matting literature"),
        (float((torch.stack([F.conv2d(a.double()[:, None], torch.stack([hx, hy])[:, None]).pow(2).sum(1).sqrt()
                             for a in (pred, target)]).diff(dim=0)).pow(2).sum(dim=(-2, -1)).mean()),
         "the filtered maps are smaller than the mattes: pad with zeros, padding = filter size // 2"),
        (float((F.conv2d(pred.double()[:, None], hx[None, None], padding=hx.shape[0] // 2)
                - F.conv2d(target.double()[:, None], hx[None, None], padding=hx.shape[0] // 2)).pow(2)
               .sum(dim=(-3, -2, -1)).mean()),
         "only the x derivative is used: the magnitude needs both filters, hx and hy"),
        (one_derivative(hx), "only the x derivative is used (|gx| for the magnitude): the magnitude needs both "
                             "filters, sqrt(gx^2 + gy^2) with hx and hy"),
        (one_derivative(hy), "only the y derivative is used: the magnitude needs both filters, sqrt(gx^2 + gy^2) "
                             "with hx and hy"),
    ]


def check_gradient_error(gradient_error):
    """``gradient_error(pred, target)``: per image, the sum over the pixels of
    ``(|grad_s pred| - |grad_s target|)**2`` with derivative-of-Gaussian
    filters of sigma 1.4; then the mean over the images; a Python float."""
    what = "gradient_error"
    for seed, n, h, w in _GRAD_CASES:
        pred, target = _mattes(seed, n, h, w)
        case = f"mattes {tuple(target.shape)}"
        expected = metrics.grad_error(pred, target)
        got = run_with_timeout(lambda: gradient_error(pred.clone(), target.clone()), what=what)
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.item()
        if not isinstance(got, (float, int, np.floating)):
            _not_a_number(what, got, "return one float: the mean over the images of each image's sum over its "
                                     "pixels (float(per_image.mean()))")
        got = float(got)
        if not math.isclose(got, expected, rel_tol=1e-4):
            matches = _first_match(got, _grad_variants(pred, target), lambda a, b: math.isclose(a, b, rel_tol=1e-4))
            _explain(what, f"{case} (expected {expected:.4f}, got {got:.4f})", matches,
                     "filter both mattes with hx and hy (zero padding, padding = size // 2), take the magnitudes "
                     "sqrt(gx^2 + gy^2), square their difference, sum over each image's pixels, average over images")
    passed(what, len(_GRAD_CASES))


# --------------------------------------------------------------------------
# 06.4 your own upsampler: sub-pixel convolution (pixel shuffle)
# --------------------------------------------------------------------------


def _reference_pixel_shuffle(module, en, de):
    return F.pixel_shuffle(F.conv2d(de, module.conv.weight, module.conv.bias, padding=1), 2)


def _shuffle_variants(module, en, de):
    conv = F.conv2d(de, module.conv.weight, module.conv.bias, padding=1)
    n, c4, h, w = conv.shape
    c = c4 // 4
    return [
        (conv.view(n, c, 2, 2, h, w).permute(0, 1, 4, 3, 5, 2).reshape(n, c, 2 * h, 2 * w),
         "the two sub-pixel offsets are swapped: channel c * 4 + i * 2 + j goes to row 2 * y + i and column "
         "2 * x + j; F.pixel_shuffle(..., 2) does exactly this"),
        (conv.view(n, 2, 2, c, h, w).permute(0, 3, 4, 1, 5, 2).reshape(n, c, 2 * h, 2 * w),
         "the channels are grouped the other way: output channel c takes input channels 4c .. 4c + 3 "
         "(F.pixel_shuffle's order), not c, c + C, c + 2C, c + 3C"),
        (conv.reshape(n, c, 2 * h, 2 * w),
         "a reshape does not interleave the sub-pixels: use F.pixel_shuffle(..., 2)"),
        (F.interpolate(conv[:, :c], scale_factor=2, mode="nearest"),
         "the output repeats the first C channels by nearest upsampling: pixel shuffle puts each of the four "
         "groups of channels at one of the four sub-pixel positions"),
        (F.pixel_shuffle(conv, 2) + en, "the encoder feature is added: this upsampler uses only the decoder feature"),
    ]


def check_pixel_shuffle_upsampler(upsampler_class):
    """``upsampler_class(channels)``: a module with a 3 x 3 convolution
    ``conv`` (``channels`` -> ``4 * channels``, padding 1) whose
    ``forward(en, de)`` returns ``F.pixel_shuffle(conv(de), 2)``. Then plugs
    it into the capstone network and runs one training step."""
    what = "pixel-shuffle upsampler"
    cases = [(1, 3, 4, 5), (2, 5, 3, 3), (1, 16, 8, 8)]
    for index, (n, c, h, w) in enumerate(cases):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(640 + index)
            try:
                module = upsampler_class(c)
            except NotImplementedError:
                raise
            except Exception as error:
                hint = ("\nHint: call super().__init__() first, before assigning any layer"
                        if "Module.__init__() call" in str(error) else "")
                raise CheckFailed(f"{what}: {upsampler_class.__name__}({c}) failed: {error!r}{hint}") from None
        if not isinstance(module, nn.Module):
            raise CheckFailed(f"{what}: {upsampler_class.__name__}({c}) is not an nn.Module (subclass nn.Module "
                              "and call super().__init__() first)")
        conv = getattr(module, "conv", None)
        if not isinstance(conv, nn.Conv2d):
            raise CheckFailed(f"{what}: the module has no nn.Conv2d attribute `conv`")
        expected_shape = (4 * c, c, 3, 3)
        # padding="same" is padding 1 for a 3 x 3 kernel with dilation 1
        pads_one = conv.padding == (1, 1) or (conv.padding == "same" and conv.dilation == (1, 1))
        if tuple(conv.weight.shape) != expected_shape or conv.bias is None or not pads_one:
            raise CheckFailed(f"{what}: `conv` should be nn.Conv2d({c}, {4 * c}, 3, padding=1) (with a bias), got "
                              f"{conv}.\nHint: four output channels per input channel, one per sub-pixel position "
                              "of the 2 x 2 block each low-res pixel becomes")
        generator = torch.Generator().manual_seed(650 + index)
        with torch.no_grad():
            for parameter in module.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator))
        en = torch.randn(n, c, 2 * h, 2 * w, generator=generator)
        de = torch.randn(n, c, h, w, generator=generator)
        case = f"en {tuple(en.shape)}, de {tuple(de.shape)}"
        with torch.no_grad():
            expected = _reference_pixel_shuffle(module, en, de)
            got = run_with_timeout(lambda: module(en, de), what=what)
        if not isinstance(got, torch.Tensor):
            raise CheckFailed(f"{what}: forward(en, de) should return a tensor, got {type(got).__name__}")
        if got.shape != expected.shape:
            hint = "(N, 4C, h, w) -> F.pixel_shuffle(..., 2) -> (N, C, 2h, 2w)"
            if tuple(got.shape[-2:]) == (2 * en.shape[-2], 2 * en.shape[-1]):
                hint = ("the output is twice en's size: the upsampler convolves de, the low-resolution decoder map, "
                        "and pixel-shuffles that to en's size; en is not its input here")
            raise CheckFailed(f"{what}: wrong output shape for {case}: expected {tuple(expected.shape)}, got "
                              f"{tuple(got.shape)}.\nHint: {hint}")
        if not torch.allclose(got, expected, rtol=1e-4, atol=1e-4):
            with torch.no_grad():
                variants = _shuffle_variants(module, en, de)
            matches = _first_match(got, variants, lambda a, b: a.shape == b.shape and torch.allclose(a, b, 1e-4, 1e-4))
            _explain(what, case, matches, "return F.pixel_shuffle(self.conv(de), 2)")
    # plugged into the capstone network: one training step must reach every parameter
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(660)
        model = EncoderDecoder(upsampler_class, outputs=5, width=8)
        images = torch.randn(2, 3, 32, 32)
        labels = torch.randint(0, 5, (2, 32, 32))
    loss = F.cross_entropy(model(images), labels)
    loss.backward()
    missing = [name for name, p in model.ups.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    if missing:
        raise CheckFailed(f"{what}: in the network, no gradient reaches {missing[0]}.\nHint: compute the output "
                          "from self.conv(de) with differentiable torch operations")
    passed(what, len(cases) + 1)


# --------------------------------------------------------------------------
# 06.5 a fair comparison: the same parameter budget
# --------------------------------------------------------------------------


def _parameters(upsampler, width, outputs):
    with torch.random.fork_rng(devices=[]):
        return count_parameters(EncoderDecoder(upsampler, outputs, width))


def _matched_width_reference(upsampler, budget, outputs=5, widths=range(4, 41)):
    best = None
    for width in widths:
        if _parameters(upsampler, width, outputs) <= budget:
            best = width
    return best


def check_matched_width(matched_width):
    """``matched_width(upsampler, budget, outputs=5)``: the largest width in
    ``range(4, 41)`` whose ``EncoderDecoder(upsampler, outputs, width)`` has at
    most ``budget`` parameters (None if none does)."""
    what = "matched_width"
    reference_budget = _parameters("carafe", 16, 5)
    # and budgets at the edges: width 40 fits and so would 41; only width 3 would fit (so none of 4..40);
    # width 18 fits with 1 output but not with 5, and 20 with 5 outputs but not with 21 (an answer that ignores
    # outputs fails both)
    cases = [("bilinear", reference_budget, 5), ("carafe", reference_budget, 5), ("fade", reference_budget, 5),
             ("sapa-g", 20_000, 1), ("fade-lite", 50_000, 1), ("nearest", 100, 5),
             ("bilinear", _parameters("bilinear", 41, 5), 5), ("nearest", _parameters("nearest", 3, 5), 5),
             ("carafe", _parameters("carafe", 18, 1), 1), ("fade", _parameters("fade", 20, 21) - 1, 21)]
    for upsampler, budget, outputs in cases:
        assert upsampler in UPSAMPLERS
        expected = _matched_width_reference(upsampler, budget, outputs)
        got = run_with_timeout(lambda: matched_width(upsampler, budget, outputs), what=what, timeout=120)
        if got != expected:
            case = f"upsampler={upsampler!r}, budget={budget}, outputs={outputs}"
            hints = []
            if isinstance(got, int) and not 4 <= got <= 40:
                hints.append(f"the widths tried are range(4, 41), 4 to 40 both included; {got} is outside it")
            if expected is not None and got == expected + 1:
                hints.append(f"width {got} has {_parameters(upsampler, got, outputs)} parameters, more than the "
                             "budget: take the largest width whose count is at most the budget")
            if got is not None and got != expected and isinstance(got, int) and 4 <= got <= 40:
                if _parameters("nearest", got, outputs) <= budget < _parameters(upsampler, got, outputs):
                    hints.append("the count leaves out the upsampler's own parameters: count the whole "
                                 f"EncoderDecoder({upsampler!r}, outputs, width)")
            if expected is None:
                hints.append("no width fits this budget: return None")
            if got is None and expected is not None:
                hints.append(f"width {expected} fits ({_parameters(upsampler, expected, outputs)} parameters)")
            if isinstance(got, int) and got == 40 and expected != 40:
                hints.append("check every width against the budget")
            if expected == 40 and got == 39:
                hints.append("range(4, 41) ends at 40: width 40 fits this budget")
            if isinstance(got, int) and 4 <= got <= 40 and outputs != 5 and got == _matched_width_reference(
                    upsampler, budget, 5):
                hints.append(f"count the parameters of EncoderDecoder(upsampler, outputs, width) with the given "
                             f"outputs={outputs}: the output layer's size depends on it")
            raise CheckFailed(f"{what}: expected {expected} for {case}, got {got!r}."
                              + (f"\nHint: {hints[0]}" if hints else
                                 "\nHint: count_parameters(EncoderDecoder(upsampler, outputs, width)) for each width "
                                 "in range(4, 41); keep the largest that is <= budget"))
    passed(what, len(cases))

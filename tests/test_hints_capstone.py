"""Hints that help, lesson 06 (the capstone): for each hint not yet met by
tests/test_lesson_helpers_capstone.py, a wrong answer that triggers it, and
the hint names that answer's mistake."""

import upsamplelib as ul  # noqa: F401,I001  (first: it picks the CUDA target before numba loads)

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from upsamplelib import checkers  # noqa: E402
from upsamplelib.experiments import EncoderDecoder, count_parameters, metrics  # noqa: E402
from test_hints import hint_of  # noqa: E402


# --- 06.1 the boundary band


def _square(edges, width):
    return F.max_pool2d(edges.float()[:, None], 2 * width + 1, stride=1, padding=width)[:, 0] > 0


def band_of_vertical_pairs_only(target, width):
    edges = torch.zeros_like(target, dtype=torch.bool)
    vertical = target[:, 1:, :] != target[:, :-1, :]
    edges[:, 1:, :] |= vertical
    edges[:, :-1, :] |= vertical
    return _square(edges, width)


def band_with_diagonal_neighbours(target, width):
    padded = F.pad(target[:, None].float(), (1, 1, 1, 1), mode="replicate")[:, 0]
    h, w = target.shape[-2:]
    edges = torch.zeros_like(target, dtype=torch.bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            edges |= padded[:, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w] != target
    return _square(edges, width)


def band_of_right_neighbours_only(target, width):
    edges = torch.zeros_like(target, dtype=torch.bool)
    edges[:, :, :-1] = target[:, :, 1:] != target[:, :, :-1]
    return _square(edges, width)


def test_band_of_vertical_pairs_is_told_to_compare_left_and_right():
    assert "only upper/lower neighbours are compared" in hint_of(checkers.check_boundary_band,
                                                                 band_of_vertical_pairs_only)


def test_band_with_diagonals_is_told_4_neighbours():
    message = hint_of(checkers.check_boundary_band, band_with_diagonal_neighbours)
    assert "diagonal neighbours count here" in message and "several" not in message


def test_band_matching_no_known_mistake_is_told_the_definition():
    message = hint_of(checkers.check_boundary_band, band_of_right_neighbours_only)
    assert "values wrong" in message and "has a 4-neighbour (inside the image) with another label" in message


# --- 06.2 boundary IoU


def _iou(pred, target, classes, mask, empty_as_zero=False):
    ious = metrics.class_iou(pred, target, classes, mask)
    return float(torch.nanmean(torch.nan_to_num(ious) if empty_as_zero else ious))


def iou_in_both_bands(pred, target, classes, width):
    return _iou(pred, target, classes, metrics.boundary_band(target, width) | metrics.boundary_band(pred, width))


def iou_with_empty_classes_as_zero(pred, target, classes, width):
    return _iou(pred, target, classes, metrics.boundary_band(target, width), empty_as_zero=True)


def iou_restricting_only_the_intersection(pred, target, classes, width):
    band = metrics.boundary_band(target, width)
    values = []
    for c in range(classes):
        p, t = pred == c, target == c
        union = (p | t).sum().item()
        if union:
            values.append((p & t & band).sum().item() / union)
    return sum(values) / len(values)


def iou_per_image_tensor(pred, target, classes, width):
    return torch.tensor([metrics.boundary_iou(pred[i:i + 1], target[i:i + 1], classes, width)
                         for i in range(len(pred))])


def test_iou_in_both_bands_is_told_the_band_is_around_the_truth_only():
    assert "the true AND the predicted boundaries" in hint_of(checkers.check_boundary_iou, iou_in_both_bands)


def test_iou_counting_empty_classes_as_zero_is_told_once():
    message = hint_of(checkers.check_boundary_iou, iou_with_empty_classes_as_zero)
    assert "counts as IoU 0" in message and "whose union inside the band is not empty" in message
    assert "several" not in message


def test_iou_restricting_only_the_intersection_is_told_to_restrict_the_union():
    assert "restrict the union too" in hint_of(checkers.check_boundary_iou, iou_restricting_only_the_intersection)


def test_iou_returning_one_value_per_image_is_told_to_return_one_number():
    message = hint_of(checkers.check_boundary_iou, iou_per_image_tensor)
    assert "expected a number, got a Tensor of shape (2,)" in message and "one float" in message


# --- 06.3 the gradient error


def _magnitude(a, weight):
    return F.conv2d(a.double()[:, None], weight, padding=weight.shape[-1] // 2).pow(2).sum(1).sqrt()


def gradient_error_of_x_only(pred, target):
    hx, _ = metrics.gaussian_derivative_filters()
    weight = hx[None, None]
    return float((_magnitude(pred, weight) - _magnitude(target, weight)).pow(2).sum(dim=(1, 2)).mean())


def gradient_error_per_image(pred, target):
    hx, hy = metrics.gaussian_derivative_filters()
    weight = torch.stack([hx, hy])[:, None]
    return (_magnitude(pred, weight) - _magnitude(target, weight)).pow(2).sum(dim=(1, 2))


def gradient_error_with_sigma_two(pred, target):
    hx, hy = metrics.gaussian_derivative_filters(2.0)
    weight = torch.stack([hx, hy])[:, None]
    return float((_magnitude(pred, weight) - _magnitude(target, weight)).pow(2).sum(dim=(1, 2)).mean())


def test_gradient_error_of_x_only_is_told_to_use_both_filters():
    assert "only the x derivative is used (|gx| for the magnitude)" in hint_of(checkers.check_gradient_error,
                                                                           gradient_error_of_x_only)


def test_gradient_error_per_image_is_told_to_return_the_mean():
    message = hint_of(checkers.check_gradient_error, gradient_error_per_image)
    assert "expected a number, got a Tensor of shape (2,)" in message and "mean over the images" in message


def test_gradient_error_matching_no_known_mistake_is_told_the_recipe():
    message = hint_of(checkers.check_gradient_error, gradient_error_with_sigma_two)
    assert "filter both mattes with hx and hy" in message


# --- 06.4 the pixel-shuffle upsampler


class _Base(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, 4 * channels, 3, padding=1)


class GroupedTheOtherWay(_Base):
    def forward(self, en, de):
        out = self.conv(de)
        n, c4, h, w = out.shape
        return out.view(n, 2, 2, c4 // 4, h, w).permute(0, 3, 4, 1, 5, 2).reshape(n, c4 // 4, 2 * h, 2 * w)


class WithoutTheShuffle(_Base):
    def forward(self, en, de):
        return self.conv(de)


class ScaledShuffle(_Base):
    def forward(self, en, de):
        return 2 * F.pixel_shuffle(self.conv(de), 2)


class WithoutSuperInit(nn.Module):
    def __init__(self, channels):
        self.conv = nn.Conv2d(channels, 4 * channels, 3, padding=1)

    def forward(self, en, de):
        return F.pixel_shuffle(self.conv(de), 2)


class ConvNamedProj(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.proj = nn.Conv2d(channels, 4 * channels, 3, padding=1)

    def forward(self, en, de):
        return F.pixel_shuffle(self.proj(de), 2)


class NearestOfTheFirstChannels(_Base):
    def forward(self, en, de):
        return F.interpolate(self.conv(de)[:, :de.shape[1]], scale_factor=2, mode="nearest")


@pytest.mark.parametrize("wrong, named", [
    (NearestOfTheFirstChannels, "repeats the first C channels by nearest upsampling"),
    (GroupedTheOtherWay, "the channels are grouped the other way"),
    (WithoutTheShuffle, "wrong output shape"),
    (ScaledShuffle, "return F.pixel_shuffle(self.conv(de), 2)"),
    (WithoutSuperInit, "call super().__init__() first"),
    (ConvNamedProj, "no nn.Conv2d attribute `conv`"),
])
def test_pixel_shuffle_mistake_is_named(wrong, named):
    assert named in hint_of(checkers.check_pixel_shuffle_upsampler, wrong)


def test_pixel_shuffle_without_the_shuffle_is_told_to_shuffle():
    assert "F.pixel_shuffle(..., 2) -> (N, C, 2h, 2w)" in hint_of(checkers.check_pixel_shuffle_upsampler,
                                                                  WithoutTheShuffle)


# --- 06.5 the matched width


def _count(upsampler, width, outputs):
    return count_parameters(EncoderDecoder(upsampler, outputs, width))


def width_without_a_return(upsampler, budget, outputs=5):
    best = None
    for width in range(4, 41):
        if _count(upsampler, width, outputs) <= budget:
            best = width  # and forgets to return it


def width_never_none(upsampler, budget, outputs=5):
    best = 4
    for width in range(4, 41):
        if _count(upsampler, width, outputs) <= budget:
            best = width
    return best


def width_smallest(upsampler, budget, outputs=5):
    for width in range(4, 41):
        if _count(upsampler, width, outputs) <= budget:
            return width
    return None


def _largest_fitting(widths, fixed_outputs=None):
    def matched(upsampler, budget, outputs=5):
        best = None
        for width in widths:
            if _count(upsampler, width, fixed_outputs or outputs) <= budget:
                best = width
        return best

    return matched


@pytest.mark.parametrize("wrong, named", [
    (_largest_fitting(range(4, 40)), "range(4, 41) ends at 40: width 40 fits this budget"),
    (_largest_fitting(range(1, 41)), "the widths tried are range(4, 41), 4 to 40 both included; 3 is outside it"),
    (_largest_fitting(range(4, 42)), "41 is outside it"),
    (_largest_fitting(range(4, 41), fixed_outputs=5), "with the given outputs=1: the output layer's size"),
    (width_without_a_return, "fits ("),
    (width_never_none, "no width fits this budget: return None"),
    (lambda upsampler, budget, outputs=5: 40, "check every width against the budget"),
    (width_smallest, "keep the largest that is <= budget"),
])
def test_matched_width_mistake_is_named(wrong, named):
    assert named in hint_of(checkers.check_matched_width, wrong)


def test_iou_matching_no_known_mistake_is_told_the_definition():
    def half_the_iou(pred, target, classes, width):
        return 0.5 * metrics.boundary_iou(pred, target, classes, width)

    assert "then the mean over the classes with a non-empty union" in hint_of(checkers.check_boundary_iou,
                                                                              half_the_iou)


def _band_of_one_side(target, width):
    """Marks only the right and lower pixel of each differing pair."""
    edges = torch.zeros_like(target, dtype=torch.bool)
    edges[..., :, 1:] |= target[..., :, 1:] != target[..., :, :-1]
    edges[..., 1:, :] |= target[..., 1:, :] != target[..., :-1, :]
    return F.max_pool2d(edges.float()[:, None], 2 * width + 1, stride=1, padding=width)[:, 0] > 0


def _band_of_the_first_image(target, width):
    band = metrics.boundary_band(target[:1], width)
    return band.expand(target.shape[0], -1, -1).clone()


@pytest.mark.parametrize("wrong, named", [
    (_band_of_one_side, "mark both pixels of every differing pair"),
    (_band_of_the_first_image, "every image has the first image's band"),
])
def test_boundary_band_mistakes_are_named(wrong, named):
    assert named in hint_of(checkers.check_boundary_band, wrong)


def test_a_gradient_error_from_the_y_derivative_alone_is_told_to_use_both():
    def y_only(pred, target):
        _, hy = metrics.gaussian_derivative_filters()
        pad = hy.shape[0] // 2

        def magnitude(a):
            return F.conv2d(a.double()[:, None], hy[None, None], padding=pad).abs()

        return float((magnitude(pred) - magnitude(target)).pow(2).sum(dim=(-3, -2, -1)).mean())

    assert "only the y derivative is used" in hint_of(checkers.check_gradient_error, y_only)


class _ShufflingTheEncoder(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, 4 * channels, 3, padding=1)

    def forward(self, en, de):
        return F.pixel_shuffle(self.conv(en), 2)  # en, not de


def test_a_pixel_shuffle_of_the_encoder_map_is_told_to_convolve_de():
    message = hint_of(checkers.check_pixel_shuffle_upsampler, _ShufflingTheEncoder)
    assert "twice en's size" in message and "convolves de" in message

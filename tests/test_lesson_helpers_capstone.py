"""Lesson 06 (capstone): the checkers pass right answers and explain wrong
ones; the pictures draw."""

import upsamplelib as ul  # noqa: F401,I001  (first: it picks the CUDA target before numba loads)

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from upsamplelib import checkers  # noqa: E402
from upsamplelib.checkers import CheckFailed  # noqa: E402
from upsamplelib.experiments import UPSAMPLERS, EncoderDecoder, count_parameters, make_dataset, metrics, plots  # noqa: E402
from upsamplelib.experiments.grid import encode  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# --------------------------------------------------------------------------
# The solutions of the lesson (as in solutions/06_capstone.ipynb)
# --------------------------------------------------------------------------


def boundary_band(target, width):
    edges = torch.zeros_like(target, dtype=torch.bool)
    horizontal = target[:, :, 1:] != target[:, :, :-1]
    vertical = target[:, 1:, :] != target[:, :-1, :]
    edges[:, :, 1:] |= horizontal
    edges[:, :, :-1] |= horizontal
    edges[:, 1:, :] |= vertical
    edges[:, :-1, :] |= vertical
    return F.max_pool2d(edges.float()[:, None], 2 * width + 1, stride=1, padding=width)[:, 0] > 0


def boundary_iou(pred, target, classes, width):
    band = boundary_band(target, width)
    pred, target = pred[band], target[band]
    ious = []
    for c in range(classes):
        union = ((pred == c) | (target == c)).sum().item()
        if union:
            ious.append(((pred == c) & (target == c)).sum().item() / union)
    return sum(ious) / len(ious)


def gradient_error(pred, target):
    hx, hy = metrics.gaussian_derivative_filters(1.4)
    weight = torch.stack([hx, hy])[:, None]

    def magnitude(alpha):
        g = F.conv2d(alpha.double()[:, None], weight, padding=hx.shape[0] // 2)
        return (g[:, 0] ** 2 + g[:, 1] ** 2).sqrt()

    return float(((magnitude(pred) - magnitude(target)) ** 2).sum(dim=(1, 2)).mean())


class PixelShuffleUp(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, 4 * channels, 3, padding=1)

    def forward(self, en, de):
        return F.pixel_shuffle(self.conv(de), 2)


def matched_width(upsampler, budget, outputs=5):
    best = None
    for width in range(4, 41):
        if count_parameters(EncoderDecoder(upsampler, outputs, width)) <= budget:
            best = width
    return best


def test_right_answers_pass(capsys):
    checkers.check_boundary_band(boundary_band)
    checkers.check_boundary_iou(boundary_iou)
    checkers.check_gradient_error(gradient_error)
    checkers.check_pixel_shuffle_upsampler(PixelShuffleUp)
    checkers.check_matched_width(matched_width)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 5 and all(line.startswith("PASS ") for line in lines)


def test_the_library_versions_pass_too(capsys):
    checkers.check_boundary_band(metrics.boundary_band)
    checkers.check_boundary_iou(metrics.boundary_iou)
    checkers.check_gradient_error(metrics.grad_error)
    assert capsys.readouterr().out.count("PASS") == 3


def test_unsolved_exercises_raise_not_implemented():
    def unsolved(*args):
        raise NotImplementedError("Exercise 06.1: write this part")

    class Unsolved(nn.Module):
        def __init__(self, channels):
            super().__init__()
            raise NotImplementedError("Exercise 06.4: write this part")

    for check in (checkers.check_boundary_band, checkers.check_boundary_iou, checkers.check_gradient_error,
                  checkers.check_matched_width):
        with pytest.raises(NotImplementedError, match="Exercise 06.1"):
            check(unsolved)
    with pytest.raises(NotImplementedError, match="Exercise 06.4"):
        checkers.check_pixel_shuffle_upsampler(Unsolved)


# --------------------------------------------------------------------------
# Wrong answers are caught, with the reason
# --------------------------------------------------------------------------


def _edges_one_sided(target):
    edges = torch.zeros_like(target, dtype=torch.bool)
    edges[:, :, :-1] |= target[:, :, 1:] != target[:, :, :-1]
    edges[:, :-1, :] |= target[:, 1:, :] != target[:, :-1, :]
    return edges


def _square(edges, width):
    return F.max_pool2d(edges.float()[:, None], 2 * width + 1, stride=1, padding=width)[:, 0] > 0


def _band_rolled(target, width):
    edges = torch.zeros_like(target, dtype=torch.bool)
    for shift, dim in ((1, -1), (-1, -1), (1, -2), (-1, -2)):
        edges |= target != torch.roll(target, shift, dim)
    return _square(edges, width)


def _band_diamond(target, width):
    band = metrics.boundary_pixels(target)
    for _ in range(width):
        e = band.float()[:, None]
        band = (F.max_pool2d(e, (3, 1), stride=1, padding=(1, 0)) + F.max_pool2d(e, (1, 3), stride=1, padding=(0, 1))
                )[:, 0] > 0
    return band


def _band_horizontal(target, width):
    edges = torch.zeros_like(target, dtype=torch.bool)
    horizontal = target[:, :, 1:] != target[:, :, :-1]
    edges[:, :, 1:] |= horizontal
    edges[:, :, :-1] |= horizontal
    return _square(edges, width)


@pytest.mark.parametrize("wrong, message", [
    (lambda t, w: _square(_edges_one_sided(t), w), "mark both pixels"),
    (_band_horizontal, "only left/right"),
    (_band_rolled, "wrap around"),
    (_band_diamond, "diamond"),
    (lambda t, w: metrics.boundary_pixels(t), "not dilated"),
    (lambda t, w: metrics.boundary_band(t, w + 1), "too wide"),
    (lambda t, w: _square(metrics.boundary_pixels(t), max(w - 1, 0)), "too narrow"),
    (lambda t, w: metrics.boundary_band(t, w).float(), "boolean"),
    (lambda t, w: metrics.boundary_band(t, w)[0], "wrong shape"),
])
def test_band_mistakes_are_explained(wrong, message):
    with pytest.raises(CheckFailed, match=message):
        checkers.check_boundary_band(wrong)


def _iou_whole_image(pred, target, classes, width):
    return metrics.miou(pred, target, classes)


def _iou_pred_band(pred, target, classes, width):
    return float(torch.nanmean(metrics.class_iou(pred, target, classes, metrics.boundary_band(pred, width))))


def _iou_per_image(pred, target, classes, width):
    return float(np.nanmean([metrics.boundary_iou(pred[i:i + 1], target[i:i + 1], classes, width)
                             for i in range(len(pred))]))


def _iou_accuracy(pred, target, classes, width):
    band = metrics.boundary_band(target, width)
    return (pred[band] == target[band]).float().mean()


def _iou_all_classes(pred, target, classes, width):
    ious = metrics.class_iou(pred, target, classes, metrics.boundary_band(target, width))
    return float(torch.nan_to_num(ious).sum() / classes)


@pytest.mark.parametrize("wrong, message", [
    (_iou_whole_image, "whole image"),
    (_iou_pred_band, "PREDICTED boundaries"),
    (_iou_per_image, "averaged over the images"),
    (_iou_accuracy, "pixel accuracy"),
    (_iou_all_classes, "IoU 0|all classes"),
    (lambda p, t, c, w: "0.5", "expected a number"),
])
def test_boundary_iou_mistakes_are_explained(wrong, message):
    with pytest.raises(CheckFailed, match=message):
        checkers.check_boundary_iou(wrong)


def _grad_parts(pred, target, sigma=1.4, padding=True):
    hx, hy = metrics.gaussian_derivative_filters(sigma)
    weight = torch.stack([hx, hy])[:, None]
    pad = hx.shape[0] // 2 if padding else 0
    return (F.conv2d(pred.double()[:, None], weight, padding=pad), F.conv2d(target.double()[:, None], weight,
                                                                             padding=pad))


def _magnitudes(pred, target, **kwargs):
    gp, gt = _grad_parts(pred, target, **kwargs)
    return gp.pow(2).sum(1).sqrt(), gt.pow(2).sum(1).sqrt()


def _finite(pred, target):
    def magnitude(a):
        gy, gx = torch.gradient(a.double(), dim=(-2, -1))
        return (gx ** 2 + gy ** 2).sqrt()

    return float((magnitude(pred) - magnitude(target)).pow(2).sum(dim=(1, 2)).mean())


@pytest.mark.parametrize("wrong, message", [
    (lambda p, t: float((lambda g: (g[0] - g[1]).pow(2).sum(dim=(1, 2, 3)).mean())(_grad_parts(p, t))), "VECTORS"),
    (lambda p, t: float((lambda m: (m[0] - m[1]).abs().sum(dim=(1, 2)).mean())(_magnitudes(p, t))), "not squared"),
    (lambda p, t: float((lambda m: (m[0] - m[1]).pow(2).mean())(_magnitudes(p, t))), "averaged over the pixels"),
    (lambda p, t: float((lambda m: (m[0] - m[1]).pow(2).sum())(_magnitudes(p, t))), "summed over the batch"),
    (_finite, "finite differences"),
    (lambda p, t: float((lambda m: (m[0] - m[1]).pow(2).sum(dim=(1, 2)).mean())(_magnitudes(p, t, sigma=1.0))),
     "sigma is 1.4"),
    (lambda p, t: float((lambda m: (m[0] - m[1]).pow(2).sum(dim=(1, 2)).mean())(_magnitudes(p, t, padding=False))),
     "pad with zeros"),
    (lambda p, t: float((lambda g: (g[0].pow(2).sum(1) - g[1].pow(2).sum(1)).pow(2).sum(dim=(1, 2)).mean())(
        _grad_parts(p, t))), "square root"),
])
def test_gradient_error_mistakes_are_explained(wrong, message):
    with pytest.raises(CheckFailed, match=message):
        checkers.check_gradient_error(wrong)


class _ReshapeUp(PixelShuffleUp):
    def forward(self, en, de):
        out = self.conv(de)
        n, c, h, w = out.shape
        return out.reshape(n, c // 4, 2 * h, 2 * w)


class _SwappedUp(PixelShuffleUp):
    def forward(self, en, de):
        out = self.conv(de)
        n, c4, h, w = out.shape
        return out.view(n, c4 // 4, 2, 2, h, w).permute(0, 1, 4, 3, 5, 2).reshape(n, c4 // 4, 2 * h, 2 * w)


class _OneByOne(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, 4 * channels, 1)

    def forward(self, en, de):
        return F.pixel_shuffle(self.conv(de), 2)


class _WithEncoder(PixelShuffleUp):
    def forward(self, en, de):
        return F.pixel_shuffle(self.conv(de), 2) + en


class _Detached(PixelShuffleUp):
    def forward(self, en, de):
        return F.pixel_shuffle(self.conv(de), 2).detach()


class _SamePadding(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, 4 * channels, 3, padding="same")  # padding 1 for a 3 x 3 kernel

    def forward(self, en, de):
        return F.pixel_shuffle(self.conv(de), 2)


def test_a_pixel_shuffle_upsampler_with_same_padding_passes(capsys):
    checkers.check_pixel_shuffle_upsampler(_SamePadding)
    assert capsys.readouterr().out.startswith("PASS")


class _NotAModule:
    def __init__(self, channels):
        self.conv = nn.Conv2d(channels, 4 * channels, 3, padding=1)


@pytest.mark.parametrize("wrong, message", [
    (_ReshapeUp, "reshape does not interleave"),
    (_SwappedUp, "swapped"),
    (_OneByOne, "nn.Conv2d"),
    (_WithEncoder, "encoder feature is added"),
    (_Detached, "no gradient reaches"),
    (_NotAModule, "not an nn.Module"),
])
def test_pixel_shuffle_mistakes_are_explained(wrong, message):
    with pytest.raises(CheckFailed, match=message):
        checkers.check_pixel_shuffle_upsampler(wrong)


def _width_one_too_many(upsampler, budget, outputs=5):
    for width in range(4, 41):
        if count_parameters(EncoderDecoder(upsampler, outputs, width)) > budget:
            return width
    return 40


def _width_without_upsampler(upsampler, budget, outputs=5):
    return matched_width("nearest", budget, outputs)


@pytest.mark.parametrize("wrong, message", [
    (_width_one_too_many, "more than the budget|return None"),
    (_width_without_upsampler, "leaves out the upsampler"),
    (lambda u, b, o=5: 16, "expected"),
])
def test_matched_width_mistakes_are_explained(wrong, message):
    with pytest.raises(CheckFailed, match=message):
        checkers.check_matched_width(wrong)


def test_checkers_do_not_touch_the_global_random_state():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    checkers.check_boundary_band(boundary_band)
    checkers.check_pixel_shuffle_upsampler(PixelShuffleUp)
    assert torch.equal(torch.rand(3), expected)


# --------------------------------------------------------------------------
# Pictures, on made-up results (no training)
# --------------------------------------------------------------------------


def fake_results(seeds=3):
    rng = np.random.default_rng(0)
    records, examples = [], {}
    val = {task: make_dataset(task, 2, 0, 100_000) for task in ("region", "detail")}
    for task in ("region", "detail"):
        names = ("miou", "boundary_iou") if task == "region" else ("sad", "mse", "grad")
        for index, upsampler in enumerate(UPSAMPLERS):
            for seed in range(seeds):
                records.append({
                    "task": task, "upsampler": upsampler, "seed": seed, "steps": 10,
                    "metrics": {name: float(rng.uniform(0.5, 0.9)) for name in names} | {"loss": 0.1},
                    "parameters": 1000 + index, "upsampler_parameters": index, "seconds": 1.0,
                    "curves": {"step": [5, 10], "batch_loss": [0.5, 0.3], "train_loss": [0.5, 0.2 + 0.01 * seed],
                               "val_loss": [0.6, 0.3]},
                })
            kernel = None
            if upsampler not in ("nearest", "bilinear"):
                kernel = {"pixel": [31, 33], "kernel": (rng.dirichlet(np.ones(25)).reshape(5, 5)).tolist()}
                if upsampler.startswith("fade"):
                    kernel["gate"] = 0.3
            examples.setdefault(task, {})[upsampler] = {
                "images": [0, 1], "predictions": encode(task, val[task].targets), "kernel": kernel}
    return {"metadata": {}, "records": records, "examples": examples}, val


def test_figures_draw():
    results, val = fake_results()
    figure = plots.metric_bars_figure(results)
    assert isinstance(figure, Figure) and len(figure.axes) == 5
    assert figure.axes[0].get_title().startswith("region: mIoU")
    assert len(figure.axes[0].patches) == len(UPSAMPLERS)
    for task in ("region", "detail"):
        assert len(plots.curves_figure(results, task).axes) == len(UPSAMPLERS)
        assert len(plots.closeups_figure(results, task, val[task]).axes) == len(UPSAMPLERS) + 2
        figure = plots.kernels_figure(results, task, val[task])
        assert len(figure.axes) == 6
        assert "gate 0.30" in figure.axes[4].get_title()
    figure = plots.samples_figure(make_dataset("region", 2), make_dataset("detail", 2), count=2)
    assert len(figure.axes) == 8


def test_bars_of_one_seed_have_no_error_bars():
    results, _ = fake_results(seeds=1)
    figure = plots.metric_bars_figure(results["records"], tasks=["detail"])
    assert len(figure.axes) == 3
    assert not figure.axes[0].lines  # no error bar lines


def test_boundary_iou_cases_keep_a_boundary_under_the_graders_fresh_seeds():
    # Salt 1841560615 once drew a one-class map for case 612: an empty band,
    # a NaN reference, and a correct answer dividing by zero.
    from upsamplelib.checkers import capstone
    from upsamplelib.grade.fresh_inputs import fresh_inputs

    for salt in (1841560615, *range(40)):
        with fresh_inputs(salt):
            for seed, n, h, w, classes, width in capstone._IOU_CASES:
                target = capstone._label_maps(seed, n, h, w, classes)
                assert metrics.boundary_band(target, width).any(), (salt, seed)

"""Metrics of the two tasks, with their exact definitions.

Region (segmentation), from label maps ``pred`` and ``target`` ``(N, H, W)``:

* ``miou``: for each class ``c``, ``IoU_c = |P_c & T_c| / |P_c | T_c|`` with
  ``P_c = {pred == c}`` and ``T_c = {target == c}``, the counts summed over
  all pixels of all images (the confusion-matrix convention of the
  segmentation benchmarks); ``miou`` is the mean over the classes whose union
  is not empty. A fraction in [0, 1] (the tables print it in percent).
* ``boundary_iou``: the same, with every set restricted to the **band**
  around the true boundaries: the pixels within Chebyshev distance
  ``width`` (default 2: a 5 x 5 square) of a *boundary pixel*, a pixel with
  a 4-neighbour of another true label. The band depends on ``target`` only,
  as the issue asks (Cheng et al.'s Boundary IoU also bands the
  prediction's boundaries; with a band around the truth alone, a prediction
  gets no credit for boundaries that are not there, but is not charged for
  spurious ones far from any true boundary).

Detail (matting), from alpha mattes ``pred`` and ``target`` ``(N, H, W)``
in [0, 1], each error **summed over the pixels of an image and averaged
over the images** (the matting literature's SAD and Grad are per-image sums
over the unknown region of the trimap; we have no trimap and use every pixel;
the literature reports SAD and Grad divided by 1000, for its megapixel
images, and MSE times 1000; we keep SAD and Grad as raw per-image sums, our
images having 4096 pixels, and report MSE times 1000 as it does):

* ``sad = sum |pred - target|`` (sum of absolute differences);
* ``mse = mean (pred - target)**2`` over the pixels of the image, times 1000;
* ``grad = sum (|grad_s pred| - |grad_s target|)**2``: the gradient error of
  Rhemann et al. (CVPR 2009) as the Deep Image Matting evaluation code
  computes it. ``|grad_s a|`` is the magnitude of the gradient of ``a``
  filtered with first-derivative-of-Gaussian filters of sigma 1.4 (half
  size ``ceil(sigma * sqrt(-2 * log(sqrt(2 * pi) * sigma * 0.01)))`` = 4,
  each filter scaled to unit L2 norm, zero padding).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SIGMA = 1.4
BAND = 2


# --------------------------------------------------------------------------
# Region
# --------------------------------------------------------------------------


def boundary_pixels(target: torch.Tensor) -> torch.Tensor:
    """Boolean ``(N, H, W)``: pixels with a 4-neighbour (up, down, left,
    right, inside the image) of a different label."""
    edges = torch.zeros_like(target, dtype=torch.bool)
    horizontal = target[..., :, 1:] != target[..., :, :-1]
    vertical = target[..., 1:, :] != target[..., :-1, :]
    edges[..., :, 1:] |= horizontal
    edges[..., :, :-1] |= horizontal
    edges[..., 1:, :] |= vertical
    edges[..., :-1, :] |= vertical
    return edges


def boundary_band(target: torch.Tensor, width: int = BAND) -> torch.Tensor:
    """Boolean ``(N, H, W)``: pixels within Chebyshev distance ``width`` of a
    boundary pixel of ``target`` (a (2 width + 1)^2 square dilation)."""
    edges = boundary_pixels(target).float()[:, None]
    band = F.max_pool2d(edges, 2 * width + 1, stride=1, padding=width)
    return band[:, 0] > 0


def class_iou(pred: torch.Tensor, target: torch.Tensor, classes: int, mask=None) -> torch.Tensor:
    """IoU of every class (NaN where the union is empty), counts summed over
    all pixels (inside ``mask`` when given)."""
    pred, target = pred.reshape(-1), target.reshape(-1)
    if mask is not None:
        mask = mask.reshape(-1)
        pred, target = pred[mask], target[mask]
    ious = torch.full((classes,), float("nan"), dtype=torch.float64)
    for c in range(classes):
        p, t = pred == c, target == c
        union = (p | t).sum().item()
        if union:
            ious[c] = (p & t).sum().item() / union
    return ious


def miou(pred: torch.Tensor, target: torch.Tensor, classes: int) -> float:
    """Mean IoU over the classes present in ``pred`` or ``target``."""
    return float(torch.nanmean(class_iou(pred, target, classes)))


def boundary_iou(pred: torch.Tensor, target: torch.Tensor, classes: int, width: int = BAND) -> float:
    """Mean IoU inside the band of ``width`` pixels around the true boundaries."""
    return float(torch.nanmean(class_iou(pred, target, classes, boundary_band(target, width))))


# --------------------------------------------------------------------------
# Detail
# --------------------------------------------------------------------------


def gaussian_derivative_filters(sigma: float = SIGMA, epsilon: float = 1e-2):
    """``(hx, hy)``, the filters of the DIM evaluation code's ``gaussgradient``:
    ``hx[i, j] = G(i) * dG(j)`` (G the Gaussian, dG its derivative, j along
    x), each scaled to unit L2 norm; ``hy`` is ``hx`` transposed. Float64
    tensors of shape ``(2 h + 1, 2 h + 1)``."""
    half = math.ceil(sigma * math.sqrt(-2 * math.log(math.sqrt(2 * math.pi) * sigma * epsilon)))
    r = torch.arange(-half, half + 1, dtype=torch.float64)
    gauss = torch.exp(-r ** 2 / (2 * sigma ** 2)) / (sigma * math.sqrt(2 * math.pi))
    dgauss = -r * gauss / sigma ** 2
    hx = gauss[:, None] * dgauss[None, :]
    hx = hx / hx.pow(2).sum().sqrt()
    return hx, hx.T.contiguous()


def gradient_magnitude(alpha: torch.Tensor, sigma: float = SIGMA) -> torch.Tensor:
    """``|grad_sigma alpha|`` of ``(N, H, W)`` mattes, zero padding (float64)."""
    hx, hy = gaussian_derivative_filters(sigma)
    weight = torch.stack([hx, hy])[:, None]
    g = F.conv2d(alpha.double()[:, None], weight, padding=hx.shape[0] // 2)
    return g.pow(2).sum(1).sqrt()


def sad(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Sum of absolute differences per image, averaged over the images."""
    return float((pred.double() - target.double()).abs().sum(dim=(-2, -1)).mean())


def mse(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Mean squared error per image times 1000, averaged over the images."""
    return float((pred.double() - target.double()).pow(2).mean(dim=(-2, -1)).mean() * 1000)


def grad_error(pred: torch.Tensor, target: torch.Tensor, sigma: float = SIGMA) -> float:
    """Gradient error per image (sum over its pixels), averaged over the images."""
    difference = gradient_magnitude(pred, sigma) - gradient_magnitude(target, sigma)
    return float(difference.pow(2).sum(dim=(-2, -1)).mean())


#: The metrics of each task, and whether higher is better.
METRICS = {
    "region": {"miou": True, "boundary_iou": True},
    "detail": {"sad": False, "mse": False, "grad": False},
}


def task_metrics(task: str, pred: torch.Tensor, target: torch.Tensor, classes: int = 5) -> dict:
    """Every metric of ``task`` as a dict of floats. ``pred`` holds labels
    (region) or alpha in [0, 1] (detail)."""
    if task == "region":
        return {"miou": miou(pred, target, classes), "boundary_iou": boundary_iou(pred, target, classes)}
    return {"sad": sad(pred, target), "mse": mse(pred, target), "grad": grad_error(pred, target)}

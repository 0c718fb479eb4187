"""Point affiliation, computed: the examples, kernels and measurements of
lesson 04 (SAPA).

SAPA (Lu et al., NeurIPS 2022) says that every upsampled point *belongs* to
a semantic cluster of nearby decoder points, and finds the cluster by
comparing the point's high-res encoder feature (the query) with the keys of
its k x k low-res decoder window. This module makes that visible and
measurable:

* two deterministic examples: a synthetic two-region map (a piecewise
  constant decoder map with a sharp, slightly textured encoder guide) and
  features of a real photograph (Grace Hopper's portrait);
* the kernel that bilinear, CARAFE and SAPA use at one output pixel;
* the two properties the paper claims, measured: SAPA's output is flat inside
  regions and sharp at the boundary;
* a short training run that compares the variants SAPA-I, -B and -G.

Everything is a plain function returning tensors or dicts, so the lesson's
widgets only draw what these functions compute, and tests can call them.
The drawing functions live in ``pictures.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .ops.carafe import CARAFE, carafe
from .ops.interpolate import interpolate
from .ops.sapa import SAPA, sapa_similarity

#: The upsamplers compared by ``kernels_at``, ``upsample_all`` and ``measure_properties``.
METHODS = ("bilinear", "CARAFE", "SAPA-I")


# --------------------------------------------------------------------------
# Examples
# --------------------------------------------------------------------------


@dataclass
class Example:
    """Inputs of one upsampling problem, and how to look at them.

    ``y`` is the encoder (guidance) feature at high resolution, ``x`` the
    decoder feature at low resolution, ``scale`` the factor between them.
    ``to_image`` turns any (1, C, H, W) feature map of this example into an
    (H, W) picture; ``image`` and ``low_image`` are ``y`` and ``x`` seen that
    way. ``target`` is the ideal output (1, C, H, W); ``labels`` the region
    of every high-res pixel (None when there are no ground-truth regions, as
    for the photograph).
    """

    name: str
    y: torch.Tensor
    x: torch.Tensor
    scale: int
    to_image: Callable[[torch.Tensor], torch.Tensor]
    target: torch.Tensor
    labels: torch.Tensor | None = None

    @property
    def image(self) -> torch.Tensor:
        return self.to_image(self.y)

    @property
    def low_image(self) -> torch.Tensor:
        return self.to_image(self.x)

    @property
    def size(self) -> tuple[int, int]:
        """(H, W): the high-res size."""
        return int(self.y.shape[2]), int(self.y.shape[3])


def two_region_example(low_size=(12, 10), scale=4, channels=8, texture=0.25, seed=0) -> Example:
    """Two regions split by a slanted straight line.

    The high-res truth gives every pixel one of two feature vectors ``a``
    (left region, label 0) or ``b`` (right, label 1). The decoder feature
    ``x`` is that truth area-averaged to ``low_size``: flat inside the
    regions, a mixture in the low-res pixels the boundary crosses (as a real
    decoder feature is blurred at boundaries). The encoder guide ``y`` is the
    truth at full resolution, sharp at the boundary, plus a mild texture
    (``texture`` times a fixed pattern along a fixed direction) that real
    encoder features have inside regions.

    ``to_image`` projects features on the axis from ``a`` to ``b``: 0 means
    "looks like region 0", 1 "like region 1". Deterministic for a given seed.
    """
    h, w = low_size
    height, width = h * scale, w * scale
    generator = torch.Generator().manual_seed(seed)
    a, b, direction = (torch.randn(channels, generator=generator) for _ in range(3))
    rows = torch.arange(height, dtype=torch.float32)[:, None] + 0.5
    cols = torch.arange(width, dtype=torch.float32)[None, :] + 0.5
    labels = (cols > 0.3 * rows + 0.32 * width).long()
    truth = torch.stack([a, b])[labels].permute(2, 0, 1)[None].contiguous()
    pattern = torch.sin(1.3 * cols + 0.7 * rows) * torch.cos(0.9 * rows)
    y = truth + texture * pattern[None, None] * direction[None, :, None, None]
    x = F.avg_pool2d(truth, scale)
    axis = b - a

    def to_image(features):
        features = features.detach().float().cpu()
        return torch.einsum("chw,c->hw", features[0] - a[:, None, None], axis) / axis.dot(axis)

    return Example("two regions", y.contiguous(), x.contiguous(), scale, to_image, truth, labels)


def photo_example(height=48, width=40, scale=4, bins=8) -> Example:
    """Features of Grace Hopper's portrait (``pictures.photo``).

    Each pixel's grey level ``g`` is encoded by ``bins`` soft bins,
    ``exp(-(g - centre_i)**2 / (2 * spacing**2))`` with centres evenly
    spread over [0, 1]: pixels of similar brightness get similar feature
    vectors. ``y`` is that encoding at ``height x width``; the decoder
    feature ``x`` is ``y`` area-averaged by ``scale`` (a pixel on an edge
    mixes both sides); the ideal output is ``y`` itself. ``to_image`` decodes a feature map back to a grey
    level (the bin centres weighted by the features).
    """
    from .pictures import photo

    if height % scale or width % scale:
        raise ValueError(f"photo_example: height={height} and width={width} must be multiples of scale={scale}")
    gray = photo(height, width, gray=True)[0]
    centres = torch.linspace(0, 1, bins)
    spacing = 1.0 / (bins - 1)
    y = torch.exp(-((gray[None] - centres[:, None, None]) ** 2) / (2 * spacing**2))[None].contiguous()
    x = F.avg_pool2d(y, scale).contiguous()

    def to_image(features):
        features = features.detach().float().cpu()[0]
        return torch.einsum("chw,c->hw", features, centres) / features.sum(0).clamp_min(1e-6)

    return Example("photo", y, x, scale, to_image, y, None)


# --------------------------------------------------------------------------
# The upsamplers, with fixed parameters
# --------------------------------------------------------------------------


def carafe_module(channels, scale, kernel_size=5, seed=0, backend="cpu") -> CARAFE:
    """``ul.CARAFE`` with its random initialisation drawn from ``seed``
    (the global torch RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = CARAFE(channels, scale=scale, up_kernel=kernel_size)
    module.backend = backend
    return module


def sapa_module(channels, scale, kernel_size=5, variant="I", seed=0, backend="cpu") -> SAPA:
    """``ul.SAPA`` of the given variant, initialised from ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = SAPA(channels, up_factor=scale, up_kernel_size=kernel_size, variant=variant)
    module.backend = backend
    return module


def decoder_query_kernels(example: Example, kernel_size=5, backend="cpu") -> torch.Tensor:
    """SAPA-I's kernels with the query taken from the *decoder* instead of
    the encoder: ``q = LN(nearest_up(x))``. Every output point attached to
    the same low-res pixel gets the same kernel, so this cannot place a
    boundary inside a low-res pixel; it shows where SAPA's sharpness comes
    from (the high-res query)."""
    x = example.x
    channels, s = x.shape[1], example.scale
    key = F.layer_norm(x.permute(0, 2, 3, 1), (channels,)).permute(0, 3, 1, 2).contiguous()
    q = F.interpolate(key, scale_factor=s, mode="nearest").contiguous()
    return F.softmax(sapa_similarity(q, key, kernel_size, s, backend=backend), dim=1)


@torch.no_grad()
def upsample_all(example: Example, kernel_size=5, seed=0, backend="cpu", decoder_query=False) -> dict:
    """Upsample ``example.x`` with every method of ``METHODS``: a dict
    name -> (1, C, H, W). CARAFE has random-init kernels (``seed``), SAPA-I
    has no parameters. With ``decoder_query``, also "SAPA-I, decoder query"
    (see ``decoder_query_kernels``)."""
    x, y, s = example.x, example.y, example.scale
    channels = x.shape[1]
    outputs = {
        "bilinear": interpolate(x, scale_factor=s, mode="bilinear", align_corners=False, backend=backend),
        "CARAFE": carafe_module(channels, s, kernel_size, seed, backend)(x),
        "SAPA-I": sapa_module(channels, s, kernel_size, "I", seed, backend)(y, x),
    }
    if decoder_query:
        kernels = decoder_query_kernels(example, kernel_size, backend)
        outputs["SAPA-I, decoder query"] = carafe(x, kernels, kernel_size, s, 1, backend=backend)
    return outputs


# --------------------------------------------------------------------------
# One output pixel
# --------------------------------------------------------------------------


def window_origin(Y, X, kernel_size, scale):
    """(row, col) in the low-res map of slot 0 (top left) of the window of
    output pixel (Y, X): ``(Y // s - r, X // s - r)``."""
    radius = (kernel_size - 1) // 2
    return Y // scale - radius, X // scale - radius


def window_inside(low_size, Y, X, kernel_size, scale) -> torch.Tensor:
    """(k, k) bool: which window slots of output (Y, X) lie inside the low-res map."""
    top, left = window_origin(Y, X, kernel_size, scale)
    rows = torch.arange(top, top + kernel_size)
    cols = torch.arange(left, left + kernel_size)
    return ((rows >= 0) & (rows < low_size[0]))[:, None] & ((cols >= 0) & (cols < low_size[1]))[None, :]


def _check_pixel(example_or_size, Y, X):
    height, width = example_or_size
    if not (0 <= Y < height and 0 <= X < width):
        raise ValueError(f"output pixel ({Y}, {X}) is outside the {height} x {width} output")


def bilinear_kernel_at(low_size, Y, X, kernel_size=5, scale=2) -> torch.Tensor:
    """Bilinear upsampling (``align_corners=False``) written as a k x k kernel
    over the window of output (Y, X): the weight it gives each low-res pixel.

    Found by upsampling one-hot maps, so PyTorch's border rule (it repeats
    the edge pixel) is included. At most 2 x 2 weights are non-zero, fixed
    by geometry alone: the same for every image.
    """
    h, w = low_size
    _check_pixel((h * scale, w * scale), Y, X)
    top, left = window_origin(Y, X, kernel_size, scale)
    kernel = torch.zeros(kernel_size, kernel_size, dtype=torch.float64)
    for dy in range(kernel_size):
        for dx in range(kernel_size):
            row, col = top + dy, left + dx
            if 0 <= row < h and 0 <= col < w:
                one_hot = torch.zeros(1, 1, h, w, dtype=torch.float64)
                one_hot[0, 0, row, col] = 1.0
                up = F.interpolate(one_hot, scale_factor=scale, mode="bilinear", align_corners=False)
                kernel[dy, dx] = up[0, 0, Y, X]
    return kernel.float()


def boundary_distance(labels: torch.Tensor, Y, X) -> float:
    """Distance in high-res pixels from pixel (Y, X) to the nearest pixel of
    another region (1.0 next to the boundary; inf if there is one region)."""
    other = (labels != labels[Y, X]).nonzero().float()
    if other.numel() == 0:
        return math.inf
    return float(((other - torch.tensor([float(Y), float(X)])) ** 2).sum(1).min().sqrt())


@torch.no_grad()
def affiliation_at(example: Example, Y, X, kernel_size=5, variant="I", seed=0, backend="cpu") -> dict:
    """What SAPA does at output pixel (Y, X) of ``example``.

    Returns a dict with ``logits`` and ``kernel`` ((k, k) tensors over the
    low-res window, slot (dy, dx) at [dy, dx]), ``inside`` ((k, k) bool: the
    slots inside the map; the others have logit 0 and value 0), ``origin``
    (low-res (row, col) of slot 0), ``region`` and ``distance`` (the pixel's
    label and its distance to the boundary, None without labels).
    """
    _check_pixel(example.size, Y, X)
    module = sapa_module(example.x.shape[1], example.scale, kernel_size, variant, seed, backend)
    q, key = module.queries_and_keys(example.y, example.x)
    logits = sapa_similarity(q.contiguous(), key.contiguous(), kernel_size, example.scale, backend=backend)
    kernel = F.softmax(logits, dim=1)
    shape = (kernel_size, kernel_size)
    result = {
        "logits": logits[0, :, Y, X].reshape(shape).float(),
        "kernel": kernel[0, :, Y, X].reshape(shape).float(),
        "inside": window_inside(example.x.shape[2:], Y, X, kernel_size, example.scale),
        "origin": window_origin(Y, X, kernel_size, example.scale),
        "region": None,
        "distance": None,
    }
    if example.labels is not None:
        result["region"] = int(example.labels[Y, X])
        result["distance"] = boundary_distance(example.labels, Y, X)
    return result


@torch.no_grad()
def kernels_at(example: Example, Y, X, kernel_size=5, seed=0, backend="cpu") -> dict:
    """The (k, k) kernel each method of ``METHODS`` applies at output pixel
    (Y, X), over the same low-res window: a dict name -> tensor."""
    _check_pixel(example.size, Y, X)
    channels, s = example.x.shape[1], example.scale
    shape = (kernel_size, kernel_size)
    carafe_kernels = carafe_module(channels, s, kernel_size, seed, backend).kernels(example.x)
    return {
        "bilinear": bilinear_kernel_at(example.x.shape[2:], Y, X, kernel_size, s),
        "CARAFE": carafe_kernels[0, :, Y, X].reshape(shape).float(),
        "SAPA-I": affiliation_at(example, Y, X, kernel_size, "I", seed, backend)["kernel"],
    }


# --------------------------------------------------------------------------
# The two properties, measured
# --------------------------------------------------------------------------


def _interior(example: Example, kernel_size):
    """Rows and columns of the output pixels whose whole window lies inside
    the low-res map (away from the zero padding at the map's edges)."""
    margin = (kernel_size - 1) // 2 * example.scale
    height, width = example.size
    return slice(margin, height - margin), slice(margin, width - margin)


def region_figures(picture: torch.Tensor, labels: torch.Tensor) -> dict:
    """The property figures of one (H, W) picture whose ideal is ``labels``
    (0 in one region, 1 in the other), boundary crossing every row once:

    * ``within_region_variance``: the variance of the picture inside each
      region (by the true labels), averaged over the two regions. 0 when
      every region is flat; blur from the other side of the boundary raises it;
    * ``boundary_width_px``: per row, the number of pixels in the transition
      (strictly between 0.1 and 0.9), averaged over the rows: 0 for a step;
    * ``peak_gradient``: per row, the largest jump between neighbouring
      pixels, averaged over the rows: 1 for an ideal step from 0 to 1.
    """
    picture = picture.double()
    variances = [picture[labels == region].var(unbiased=False) for region in (0, 1)]
    transition = ((picture > 0.1) & (picture < 0.9)).double().sum(1)
    jumps = (picture[:, 1:] - picture[:, :-1]).abs().max(1).values
    return {
        "within_region_variance": float(sum(variances) / 2),
        "boundary_width_px": float(transition.mean()),
        "peak_gradient": float(jumps.mean()),
    }


def measure_properties(example: Example | None = None, kernel_size=5, seed=0, backend="cpu",
                       decoder_query=False) -> dict:
    """SAPA's two properties, measured against bilinear and CARAFE.

    On ``example`` (default: ``two_region_example()``), upsample with each
    method (``upsample_all``: CARAFE with random-init kernels from ``seed``,
    SAPA-I, which has no parameters), look at the outputs through
    ``example.to_image`` (0 = region 0, 1 = region 1) on the output pixels
    whose window lies inside the map, and return a dict
    name -> ``region_figures`` (within-region variance, boundary width in
    pixels, peak gradient). Deterministic.
    """
    example = example or two_region_example()
    if example.labels is None:
        raise ValueError("measure_properties needs an example with region labels (e.g. two_region_example())")
    rows, cols = _interior(example, kernel_size)
    labels = example.labels[rows, cols]
    outputs = upsample_all(example, kernel_size, seed, backend, decoder_query)
    return {name: region_figures(example.to_image(out)[rows, cols], labels) for name, out in outputs.items()}


def significant(value: float, digits: int = 3) -> str:
    """``value`` rounded to ``digits`` significant digits, as text."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    return f"{value:.{digits}g}"


def order_of_magnitude(value: float) -> str:
    """The power of ten at or below ``value`` > 0, as text ("1e-05" for 2.5e-05):
    a figure that stays put when the last digits change from machine to machine."""
    if not (value > 0 and math.isfinite(value)):
        return f"{value:g}"
    return f"1e{math.floor(math.log10(value)):+03d}"


def properties_table(figures: dict, digits: int = 3) -> str:
    """``measure_properties``' dict as a small text table (3 significant digits)."""
    columns = ["within_region_variance", "boundary_width_px", "peak_gradient"]
    headers = ["method", "within-region variance", "boundary width (px)", "peak gradient"]
    rows = [[name] + [significant(values[c], digits) for c in columns] for name, values in figures.items()]
    widths = [max(len(str(r[i])) for r in rows + [headers]) for i in range(len(headers))]
    lines = ["  ".join(h.ljust(wd) if i == 0 else h.rjust(wd) for i, (h, wd) in enumerate(zip(headers, widths)))]
    for row in rows:
        lines.append("  ".join(v.ljust(wd) if i == 0 else v.rjust(wd) for i, (v, wd) in enumerate(zip(row, widths))))
    return "\n".join(lines)


# --------------------------------------------------------------------------
# The variants, trained briefly
# --------------------------------------------------------------------------


def train_variants(example: Example | None = None, steps=60, lr=0.01, kernel_size=5, seed=0, backend="cpu") -> dict:
    """Fit each learnable upsampler to the ideal output of the two-region
    example (``example.target``) for ``steps`` Adam steps (MSE), and report, per method
    (CARAFE, SAPA-B, SAPA-G; bilinear and SAPA-I have nothing to learn):
    ``parameters`` (count), ``loss_before`` and ``loss_after`` (MSE against
    the ideal output). Deterministic on a given machine."""
    example = example or two_region_example()
    if example.labels is None:
        raise ValueError("train_variants needs an example with region labels")
    x, y, s = example.x, example.y, example.scale
    channels = x.shape[1]
    target = example.target
    results = {}
    with torch.no_grad():
        fixed = upsample_all(example, kernel_size, seed, backend)
    for name in ("bilinear", "SAPA-I"):
        loss = float(F.mse_loss(fixed[name], target))
        results[name] = {"parameters": 0, "loss_before": loss, "loss_after": loss}
    for name in ("CARAFE", "SAPA-B", "SAPA-G"):
        if name == "CARAFE":
            module = carafe_module(channels, s, kernel_size, seed, backend)
            run = lambda m=module: m(x)  # noqa: E731
        else:
            module = sapa_module(channels, s, kernel_size, name[-1], seed, backend)
            run = lambda m=module: m(y, x)  # noqa: E731
        optimizer = torch.optim.Adam(module.parameters(), lr=lr)
        with torch.no_grad():
            before = float(F.mse_loss(run(), target))
        for _ in range(steps):
            loss = F.mse_loss(run(), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            after = float(F.mse_loss(run(), target))
        results[name] = {"parameters": sum(p.numel() for p in module.parameters()), "loss_before": before,
                         "loss_after": after}
    return results

"""The two synthetic data sets of the capstone, generated from a seed.

Nothing is downloaded: every image is drawn with NumPy from a
``numpy.random.Generator`` seeded with ``(seed, index)``, so image ``i`` of
a data set is the same on every machine and does not depend on how many
images are drawn.

* **region** (``make_region``): multi-class segmentation. Overlapping shapes
  (ellipses, rectangles, triangles) painted in random order over a textured
  background; each shape's *class* is its texture (stripes of one of four
  orientations and periods), its colour is random and says nothing about the
  class. Gaussian noise on top. Labels: 0 background, 1..4 the four textures.
  Region-sensitive: a pixel's class is only visible from its neighbourhood
  (a texture period or more), and every pixel of a shape must get it.
* **detail** (``make_detail``): matting. A soft foreground (a blob with thin
  strands, hair-like curves 0.5 to 1.5 pixels wide, semi-transparent) is
  composited over a textured background, ``image = alpha * F + (1 - alpha) * B``
  plus noise; the target is ``alpha`` in [0, 1]. Detail-sensitive: most of the
  error sits on structures narrower than one pixel of the decoder's coarse
  maps.

Images are ``(3, size, size)`` float32 in about [0, 1]; targets are
``(size, size)`` int64 labels (region) or float32 alpha (detail).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

#: Classes of the region task: background and four textures.
REGION_CLASSES = 5
#: Names of the region classes, for legends.
REGION_CLASS_NAMES = ("background", "stripes 0°", "stripes 90°", "stripes 45°", "checks")

TASKS = ("region", "detail")


@dataclass
class Dataset:
    """Images ``(N, 3, S, S)`` float32 and targets: ``(N, S, S)`` int64
    labels for ``region``, ``(N, S, S)`` float32 alpha for ``detail``."""

    task: str
    images: torch.Tensor
    targets: torch.Tensor

    def __len__(self):
        return self.images.shape[0]

    def __getitem__(self, index):
        return Dataset(self.task, self.images[index], self.targets[index])


def _rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(index)])


def _grid(size):
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    return y, x


def _smooth_noise(rng, size, cells=4):
    """Low-frequency noise in [0, 1]: a random cells x cells grid, upsampled
    bicubically-ish (bilinear of a bilinear) to size x size."""
    coarse = torch.from_numpy(rng.random((1, 1, cells, cells), dtype=np.float32))
    fine = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=True)
    return fine[0, 0].clamp(0, 1).numpy()


def _texture(kind, rng, size):
    """One of the four class textures, values in [0, 1]."""
    y, x = _grid(size)
    period = rng.uniform(4.0, 6.0)
    phase = rng.uniform(0, 2 * np.pi)
    if kind == 1:  # horizontal stripes (constant along x)
        wave = np.sin(2 * np.pi * y / period + phase)
    elif kind == 2:  # vertical stripes
        wave = np.sin(2 * np.pi * x / period + phase)
    elif kind == 3:  # diagonal stripes
        wave = np.sin(2 * np.pi * (x + y) / (period * np.sqrt(2)) + phase)
    else:  # checks
        wave = np.sin(2 * np.pi * x / period + phase) * np.sin(2 * np.pi * y / period + phase)
        wave = wave * 2.0
    return (0.5 + 0.5 * np.clip(wave, -1, 1)).astype(np.float32)


def _shape_mask(rng, size):
    """A random ellipse, rectangle or triangle, as a boolean mask."""
    y, x = _grid(size)
    cy, cx = rng.uniform(0.15 * size, 0.85 * size, 2)
    kind = rng.integers(3)
    if kind == 0:  # ellipse, rotated
        a, b = rng.uniform(0.12 * size, 0.3 * size, 2)
        angle = rng.uniform(0, np.pi)
        u = (x - cx) * np.cos(angle) + (y - cy) * np.sin(angle)
        v = -(x - cx) * np.sin(angle) + (y - cy) * np.cos(angle)
        return (u / a) ** 2 + (v / b) ** 2 <= 1
    if kind == 1:  # rectangle, rotated
        a, b = rng.uniform(0.1 * size, 0.28 * size, 2)
        angle = rng.uniform(0, np.pi)
        u = (x - cx) * np.cos(angle) + (y - cy) * np.sin(angle)
        v = -(x - cx) * np.sin(angle) + (y - cy) * np.cos(angle)
        return (np.abs(u) <= a) & (np.abs(v) <= b)
    # triangle: three points around the centre
    radius = rng.uniform(0.18 * size, 0.35 * size)
    angles = rng.uniform(0, 2 * np.pi) + np.array([0, 2 * np.pi / 3, 4 * np.pi / 3]) + rng.uniform(-0.4, 0.4, 3)
    py, px = cy + radius * np.sin(angles), cx + radius * np.cos(angles)
    inside = np.ones((size, size), dtype=bool)
    orientation = np.sign((px[1] - px[0]) * (py[2] - py[0]) - (py[1] - py[0]) * (px[2] - px[0]))
    for i in range(3):
        j = (i + 1) % 3
        cross = (px[j] - px[i]) * (y - py[i]) - (py[j] - py[i]) * (x - px[i])
        inside &= orientation * cross >= 0
    return inside


def region_sample(seed: int, index: int, size: int = 64):
    """Image ``(3, size, size)`` float32 and labels ``(size, size)`` int64 of
    one region image."""
    rng = _rng(seed, index)
    background = 0.25 + 0.5 * _smooth_noise(rng, size)
    image = np.stack([background * rng.uniform(0.5, 1.0) for _ in range(3)])
    labels = np.zeros((size, size), dtype=np.int64)
    for _ in range(rng.integers(3, 7)):
        mask = _shape_mask(rng, size)
        if mask.sum() < 12:
            continue
        kind = int(rng.integers(1, REGION_CLASSES))
        texture = _texture(kind, rng, size)
        dark, light = rng.uniform(0, 0.45, 3), rng.uniform(0.55, 1.0, 3)
        if rng.random() < 0.5:
            dark, light = light, dark  # the texture's contrast can go either way
        colour = dark[:, None, None] + (light - dark)[:, None, None] * texture[None]
        image = np.where(mask[None], colour, image)
        labels[mask] = kind
    image = image + rng.normal(0, 0.08, image.shape)
    return image.astype(np.float32), labels


def _strand(rng, size, canvas, supersample):
    """Stamp one smooth random curve (a cubic Bezier) into the supersampled
    canvas, with a width of 0.5 to 1.5 output pixels."""
    points = rng.uniform(-0.1 * size, 1.1 * size, (4, 2))
    t = np.linspace(0, 1, 12 * size)[:, None]
    curve = ((1 - t) ** 3 * points[0] + 3 * (1 - t) ** 2 * t * points[1] + 3 * (1 - t) * t ** 2 * points[2]
             + t ** 3 * points[3]) * supersample
    radius = rng.uniform(0.25, 0.75) * supersample
    reach = int(np.ceil(radius))
    offsets = np.array([(dy, dx) for dy in range(-reach, reach + 1) for dx in range(-reach, reach + 1)
                        if dy * dy + dx * dx <= radius * radius])
    centres = np.unique(np.round(curve).astype(np.int64), axis=0)
    cells = (centres[:, None, :] + offsets[None]).reshape(-1, 2)
    limit = size * supersample
    keep = (cells[:, 0] >= 0) & (cells[:, 1] >= 0) & (cells[:, 0] < limit) & (cells[:, 1] < limit)
    cells = cells[keep]
    opacity = rng.uniform(0.4, 1.0)
    canvas[cells[:, 0], cells[:, 1]] = np.maximum(canvas[cells[:, 0], cells[:, 1]], opacity)


def detail_sample(seed: int, index: int, size: int = 64, supersample: int = 4):
    """Image ``(3, size, size)`` float32 and alpha ``(size, size)`` float32
    of one matting image."""
    rng = _rng(seed, index)
    s = supersample
    canvas = np.zeros((size * s, size * s), dtype=np.float32)
    # a solid blob that the strands grow from, sometimes cut by the border
    yy, xx = np.mgrid[0:size * s, 0:size * s].astype(np.float32) / s
    cy, cx = rng.uniform(0.2 * size, 0.8 * size, 2)
    a, b = rng.uniform(0.08 * size, 0.2 * size, 2)
    angle = rng.uniform(0, np.pi)
    u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
    v = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
    canvas[(u / a) ** 2 + (v / b) ** 2 <= 1] = 1.0
    for _ in range(rng.integers(6, 14)):
        _strand(rng, size, canvas, s)
    alpha = canvas.reshape(size, s, size, s).mean(axis=(1, 3))
    # textured background: smooth noise and stripes, and a lightly textured foreground colour
    y, x = _grid(size)
    period, direction = rng.uniform(3.0, 8.0), rng.uniform(0, np.pi)
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * (x * np.cos(direction) + y * np.sin(direction)) / period)
    base = 0.6 * _smooth_noise(rng, size, cells=6) + 0.4 * stripes
    background = np.stack([np.clip(base * rng.uniform(0.3, 1.0) + rng.uniform(0, 0.3), 0, 1) for _ in range(3)])
    foreground = rng.uniform(0, 1, 3)[:, None, None] * (0.85 + 0.15 * _smooth_noise(rng, size)[None])
    image = alpha[None] * foreground + (1 - alpha[None]) * background
    image = image + rng.normal(0, 0.04, image.shape)
    return image.astype(np.float32), alpha.astype(np.float32)


SAMPLERS = {"region": region_sample, "detail": detail_sample}


def make_dataset(task: str, count: int, seed: int = 0, start: int = 0, size: int = 64) -> Dataset:
    """Images ``start`` to ``start + count - 1`` of the ``task`` data set drawn
    with ``seed``. The training and validation sets of the experiments are
    disjoint ranges of the same seed."""
    if task not in SAMPLERS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    images, targets = zip(*(SAMPLERS[task](seed, start + i, size) for i in range(count)))
    return Dataset(task, torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(targets)))

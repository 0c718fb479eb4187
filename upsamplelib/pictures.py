"""Pictures for the lessons: a real photograph, image grids, and the
diagrams of which input pixels an output pixel reads.

Every function returns a matplotlib Figure (call ``plt.show()`` in a
notebook) and has no side effects, so tests can call it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def photo(height: int = 64, width: int | None = None, gray: bool = False) -> torch.Tensor:
    """Grace Hopper's portrait (shipped with matplotlib), as a float32
    (3, H, W) tensor in [0, 1] (or (1, H, W) if ``gray``), shrunk with
    area averaging to ``height`` rows (and ``width`` columns)."""
    import matplotlib.cbook as cbook
    import matplotlib.pyplot as plt

    with cbook.get_sample_data("grace_hopper.jpg") as file:
        image = plt.imread(file)
    tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255.0
    if width is None:
        width = round(height * tensor.shape[2] / tensor.shape[1])
    tensor = F.adaptive_avg_pool2d(tensor[None], (height, width))[0]
    if gray:
        tensor = (0.299 * tensor[0] + 0.587 * tensor[1] + 0.114 * tensor[2])[None]
    return tensor.contiguous()


def _as_image(image):
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().float().numpy()
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[0] in (1, 3):
        image = np.moveaxis(image, 0, -1)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    return image


def show_images(images, titles=None, size: float = 3.0, cmap="gray"):
    """A row of images (tensors (C, H, W) or (H, W), or arrays) with
    titles, drawn pixel by pixel (no smoothing)."""
    import matplotlib.pyplot as plt

    titles = titles or [""] * len(images)
    figure, axes = plt.subplots(1, len(images), figsize=(size * len(images), size), squeeze=False)
    for axis, image, title in zip(axes[0], images, titles):
        picture = _as_image(image)
        if picture.ndim == 3:
            picture = np.clip(picture, 0, 1)
        axis.imshow(picture, cmap=cmap, interpolation="nearest")
        axis.set_title(title)
        axis.set_xticks([])
        axis.set_yticks([])
    figure.tight_layout()
    return figure


def block_map_figure(block_ids, block_shape, title="which block writes which pixel"):
    """An (H, W) array of block numbers drawn in colours, with the block
    borders and the thread grid, one cell per output pixel."""
    import matplotlib.pyplot as plt

    block_ids = np.asarray(block_ids)
    height, width = block_ids.shape
    figure, axis = plt.subplots(figsize=(min(10, 0.35 * width + 1), min(8, 0.35 * height + 1)))
    axis.imshow(block_ids % 20, cmap="tab20", vmin=0, vmax=19, interpolation="nearest")
    for col in range(width + 1):
        axis.axvline(col - 0.5, color="white", linewidth=0.3)
    for row in range(height + 1):
        axis.axhline(row - 0.5, color="white", linewidth=0.3)
    block_w, block_h = block_shape
    for col in range(0, width + 1, block_w):
        axis.axvline(col - 0.5, color="black", linewidth=2)
    for row in range(0, height + 1, block_h):
        axis.axhline(row - 0.5, color="black", linewidth=2)
    for row in range(height):
        for col in range(width):
            axis.text(col, row, str(int(block_ids[row, col])), ha="center", va="center", fontsize=6)
    axis.set_xlabel("column (cuda.grid(2)[0])")
    axis.set_ylabel("row (cuda.grid(2)[1])")
    axis.set_title(title)
    figure.tight_layout()
    return figure


def index_mapping_figure(in_size, out_size, sources, weights=None, title=""):
    """Output pixels (bottom row) linked to the input pixels they read (top
    row), both drawn on the same physical extent. ``sources[dst]`` is a
    list of input indices; ``weights[dst]`` (optional) their weights, drawn
    as line opacity."""
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(9, 2.6))
    in_width, out_width = 1.0 / in_size, 1.0 / out_size
    for i in range(in_size):
        axis.add_patch(plt.Rectangle((i * in_width, 1.0), in_width, 0.25, fill=False, linewidth=1))
        axis.text((i + 0.5) * in_width, 1.125, str(i), ha="center", va="center", fontsize=7)
    for j in range(out_size):
        axis.add_patch(plt.Rectangle((j * out_width, 0.0), out_width, 0.25, fill=False, linewidth=1))
        axis.text((j + 0.5) * out_width, 0.125, str(j), ha="center", va="center", fontsize=6)
        for k, src in enumerate(sources[j]):
            alpha = 1.0 if weights is None else float(weights[j][k])
            if alpha <= 0:
                continue
            axis.plot([(j + 0.5) * out_width, (src + 0.5) * in_width], [0.25, 1.0],
                      color="tab:blue", alpha=max(0.15, alpha), linewidth=1 + 2 * alpha)
    axis.text(-0.01, 1.125, "input", ha="right", va="center")
    axis.text(-0.01, 0.125, "output", ha="right", va="center")
    axis.set_xlim(-0.12, 1.01)
    axis.set_ylim(-0.05, 1.3)
    axis.axis("off")
    axis.set_title(title)
    figure.tight_layout()
    return figure


def sample_positions_figure(in_size, rows, title=""):
    """Where output pixels sample the input, along one axis.

    The input pixels are drawn as cells (pixel ``i`` spans ``i - 0.5`` to
    ``i + 0.5``, its centre at ``i``); each entry of ``rows`` is a pair
    ``(label, positions)``: one line of markers at the input coordinates
    where the output pixels' centres land, numbered by output index.
    Markers outside the input (``< -0.5`` or ``> in_size - 0.5``) are drawn
    hollow.
    """
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(9, 1.2 + 0.7 * len(rows)))
    labels = axis.get_yaxis_transform()  # x in axes fractions, y in data
    top = len(rows) + 0.3
    for i in range(in_size):
        axis.add_patch(plt.Rectangle((i - 0.5, top), 1.0, 0.6, fill=False, linewidth=1))
        axis.plot([i], [top + 0.3], "o", color="black", markersize=4)
        axis.text(i, top + 0.75, str(i), ha="center", va="bottom", fontsize=7)
        axis.axvline(i, color="0.85", linewidth=0.8, zorder=0)
    axis.text(-0.02, top + 0.3, "input", ha="right", va="center", transform=labels)
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:red"]
    low = -0.5
    for row, (label, positions) in enumerate(rows):
        level = len(rows) - 1 - row + 0.3
        colour = colours[row % len(colours)]
        for dst, position in enumerate(positions):
            inside = -0.5 <= position <= in_size - 0.5
            axis.plot([position], [level], "v", markersize=6, color=colour,
                      markerfacecolor=colour if inside else "white")
            axis.text(position, level - 0.3, str(dst), ha="center", va="top", fontsize=6)
            low = min(low, position - 0.3)
        axis.text(-0.02, level, label, ha="right", va="center", transform=labels)
    high = max([in_size - 0.5] + [p + 0.3 for _, positions in rows for p in positions])
    axis.set_xlim(low - 0.05, high + 0.05)
    axis.set_ylim(-0.5, top + 1.2)
    axis.axis("off")
    axis.set_title(title)
    figure.subplots_adjust(left=0.2, right=0.98, top=0.85, bottom=0.05)
    return figure


def show_maps(maps, titles=None, size: float = 3.0, annotate: bool = True, cmap="viridis"):
    """A row of 2-D arrays (or tensors) on one shared colour scale, with a
    colour bar; small maps get their values written in the cells (2 decimals)."""
    import matplotlib.pyplot as plt

    arrays = [np.asarray(_as_image(m), dtype=np.float64) for m in maps]
    titles = titles or [""] * len(arrays)
    low = min(float(a.min()) for a in arrays)
    high = max(float(a.max()) for a in arrays)
    if high == low:
        low, high = low - 0.5, high + 0.5
    figure, axes = plt.subplots(1, len(arrays), figsize=(size * len(arrays) + 0.8, size), squeeze=False)
    for axis, array, title in zip(axes[0], arrays, titles):
        image = axis.imshow(array, cmap=cmap, vmin=low, vmax=high, interpolation="nearest")
        if annotate and array.size <= 100:
            middle = (low + high) / 2
            for (row, col), value in np.ndenumerate(array):
                axis.text(col, row, f"{value:.2f}", ha="center", va="center", fontsize=7,
                          color="black" if value > middle else "white")
        axis.set_title(title)
        axis.set_xticks([])
        axis.set_yticks([])
    figure.colorbar(image, ax=list(axes[0]), shrink=0.8)
    return figure

"""Pictures for the lessons: a real photograph, image grids, and the
diagrams of which input pixels an output pixel reads.

Every function returns a matplotlib Figure (call ``plt.show()`` in a
notebook) and has no side effects, so tests can call it; the explorers
(``footprint_explorer``) return ipywidgets that redraw such a figure.

Numbers written into heatmap cells are sized to their cells and coloured
black or white, whichever contrasts more with the cell (``_label_cells``):
readable at notebook width, on light and dark cells alike.
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


#: Width in pixels of a notebook's output area in a 1400 px wide JupyterLab
#: window (968 px measured in JupyterLab 4.6, tests_browser/): a widget's
#: picture (``figure_png``) is drawn at most this wide, so the browser never
#: shrinks it and its text keeps the size it was drawn at.
WIDGET_WIDTH_PX = 960
#: The text size of the numbers in heatmap cells at most, and at least
#: unless the cell is too small for it (points).
CELL_FONT_MAX = 11.0
CELL_FONT_MIN = 6.0


def relative_luminance(rgb) -> float:
    """WCAG 2 relative luminance of an sRGB colour (components in [0, 1])."""
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb[:3]]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast_ratio(first, second) -> float:
    """WCAG 2 contrast ratio of two colours (1 to 21; 4.5 is enough for text)."""
    light, dark = sorted((relative_luminance(first), relative_luminance(second)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def text_colour_on(background) -> str:
    """"black" or "white": whichever contrasts more with ``background`` (RGB(A))."""
    return "black" if contrast_ratio(background, (0, 0, 0)) >= contrast_ratio(background, (1, 1, 1)) else "white"


def _cell_fontsize(axis, rows, cols, longest, largest=CELL_FONT_MAX):
    """A font size (points) at which ``longest`` characters fit in one cell of
    a ``rows x cols`` image filling ``axis``: about 0.6 em per character,
    with a margin for the layout shrinking the axes later."""
    figure_width, figure_height = axis.figure.get_size_inches()
    box = axis.get_position()
    cell = min(box.width * figure_width / cols, box.height * figure_height / rows) * 72
    return float(np.clip(min(0.9 * cell / (0.6 * max(longest, 1)), 0.55 * cell), CELL_FONT_MIN, largest))


def _label_cells(axis, image, texts, largest=CELL_FONT_MAX, **options):
    """Write ``texts[row][col]`` into the cells of ``image`` (an imshow of a
    ``rows x cols`` array): sized to the cells, black on light cells and
    white on dark ones (the colour the colour map gives each cell)."""
    values = np.asarray(image.get_array(), dtype=np.float64)
    rows, cols = values.shape[:2]
    size = _cell_fontsize(axis, rows, cols, max(len(t) for line in texts for t in line), largest)
    colours = image.to_rgba(values)
    for row in range(rows):
        for col in range(cols):
            axis.text(col, row, texts[row][col], ha="center", va="center", fontsize=size,
                      color=text_colour_on(colours[row, col]), **options)


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
    _label_cells(axis, axis.images[0], [[str(int(b)) for b in line] for line in block_ids], largest=9)
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
            _label_cells(axis, image, [[f"{value:.2f}" for value in line] for line in array])
        axis.set_title(title)
        axis.set_xticks([])
        axis.set_yticks([])
    figure.colorbar(image, ax=list(axes[0]), shrink=0.8)
    return figure


# --------------------------------------------------------------------------
# Lesson 03 (CARAFE): which low-res pixels an output reads, which outputs
# share them, what a block stages in shared memory, and predicted kernels.
# --------------------------------------------------------------------------


def _carafe_grid(axis, low_height, low_width, scale, rows, cols):
    """Low-res pixels (thick lines) subdivided into s x s output pixels (thin
    lines), in low-res coordinates (pixel (i, j) is centred at (j, i)); the
    view spans low-res rows ``rows = (first, last)`` and columns ``cols``,
    which may reach past the map for windows that stick out."""
    for j in range(low_width * scale + 1):
        axis.plot([j / scale - 0.5] * 2, [-0.5, low_height - 0.5], color="0.8", linewidth=0.5, zorder=1)
    for i in range(low_height * scale + 1):
        axis.plot([-0.5, low_width - 0.5], [i / scale - 0.5] * 2, color="0.8", linewidth=0.5, zorder=1)
    for j in range(low_width + 1):
        axis.plot([j - 0.5] * 2, [-0.5, low_height - 0.5], color="0.35", linewidth=1.2, zorder=2)
    for i in range(low_height + 1):
        axis.plot([-0.5, low_width - 0.5], [i - 0.5] * 2, color="0.35", linewidth=1.2, zorder=2)
    axis.set_xlim(cols[0] - 0.6, cols[1] + 0.6)
    axis.set_ylim(rows[1] + 0.6, rows[0] - 0.6)
    axis.set_aspect("equal")
    axis.set_xticks(range(low_width))
    axis.set_yticks(range(low_height))
    axis.tick_params(labelsize=7)


def _low_res_cells(axis, cells, low_height, low_width, colour, label_slots=False):
    """Fill low-res cells (row, col): in ``colour`` inside the map, hatched
    grey outside it (zero padding). With ``label_slots``, write the window
    slot number t (row-major) in each."""
    import matplotlib.pyplot as plt

    for t, (row, col) in enumerate(cells):
        inside = 0 <= row < low_height and 0 <= col < low_width
        if inside:
            patch = plt.Rectangle((col - 0.5, row - 0.5), 1, 1, facecolor=colour, alpha=0.3, zorder=0)
        else:
            patch = plt.Rectangle((col - 0.5, row - 0.5), 1, 1, facecolor="white", edgecolor="0.55",
                                  hatch="///", linewidth=0.8, zorder=0)
        axis.add_patch(patch)
        if label_slots:
            axis.text(col - 0.42, row - 0.42, str(t), ha="left", va="top", fontsize=8, color="0.2", zorder=5)


def _output_cell(axis, Y, X, scale, colour, alpha=0.8):
    import matplotlib.pyplot as plt

    axis.add_patch(plt.Rectangle((X / scale - 0.5, Y / scale - 0.5), 1 / scale, 1 / scale, facecolor=colour,
                                 alpha=alpha, edgecolor="none", zorder=3))


def carafe_footprint_figure(panels, low_size=(6, 6), title=""):
    """Which low-res pixels a CARAFE output pixel reads, one panel per
    ``(kernel_size, scale, Y, X)`` in ``panels``.

    Each panel shows a ``low_size`` low-res map (thick grid) and its s x s
    output pixels (thin grid), both on the same extent. Output pixel (Y, X)
    (red; clamped to the output map) is attached to low-res pixel
    (Y // s, X // s) (outlined) and reads the k x k window around it (blue,
    with the slot numbers t; hatched where it sticks out of the map: zero
    features). The s * s outputs attached to the same low-res pixel (orange)
    read the very same window: that is the data they can share.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    low_height, low_width = low_size
    figure, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 5.0), squeeze=False)
    for axis, (kernel_size, scale, Y, X) in zip(axes[0], panels):
        radius = (kernel_size - 1) // 2
        Y = min(max(int(Y), 0), scale * low_height - 1)
        X = min(max(int(X), 0), scale * low_width - 1)
        row, col = Y // scale, X // scale
        _carafe_grid(axis, low_height, low_width, scale, (-radius, low_height - 1 + radius),
                     (-radius, low_width - 1 + radius))
        window = [(row - radius + dy, col - radius + dx) for dy in range(kernel_size) for dx in range(kernel_size)]
        _low_res_cells(axis, window, low_height, low_width, "tab:blue", label_slots=True)
        for sy in range(scale):
            for sx in range(scale):
                _output_cell(axis, row * scale + sy, col * scale + sx, scale, "tab:orange", alpha=0.55)
        _output_cell(axis, Y, X, scale, "red", alpha=0.9)
        axis.add_patch(plt.Rectangle((col - 0.5, row - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=2.2,
                                     zorder=4))
        inside = sum(0 <= r < low_height and 0 <= c < low_width for r, c in window)
        axis.set_title(f"k={kernel_size}, s={scale}: output ({Y}, {X}) -> low-res ({row}, {col})\n"
                       f"{inside} of {kernel_size * kernel_size} slots inside the map; "
                       + (f"{scale * scale} outputs share this window" if scale > 1 else "no other output reads it"),
                       fontsize=9)
    handles = [Patch(facecolor="red", alpha=0.9, label="output pixel (Y, X)"),
               Patch(facecolor="tab:orange", alpha=0.55, label="outputs with the same window"),
               Patch(facecolor="tab:blue", alpha=0.3, label="its k x k window (slot t)"),
               Patch(facecolor="white", edgecolor="0.55", hatch="///", label="outside the map: zero")]
    # one panel is too narrow for the legend in one row
    columns = 4 if len(panels) > 1 else 2
    figure.legend(handles=handles, loc="lower center", ncol=columns, fontsize=8, frameon=False)
    if title:
        figure.suptitle(title)
    figure.subplots_adjust(left=0.04, right=0.98, bottom=0.1 if columns == 4 else 0.15, top=0.8 if title else 0.86,
                           wspace=0.15)
    return figure


def footprint_explorer(low_size=(6, 6), kernel_size=5, scale=2, Y=3, X=6, max_kernel_size=7, max_scale=4):
    """Lesson 03's footprint explorer: sliders ``kernel_size``, ``scale``,
    ``Y`` and ``X`` above ``carafe_footprint_figure`` of that one output
    pixel (an ``ipywidgets.VBox``; the picture is an ``ipywidgets.Image``).

    Y and X run over the output map, ``0 .. scale * h - 1`` and
    ``0 .. scale * w - 1``, and their ranges follow the scale: when it
    changes, (Y, X) moves to the same place in the same low-res pixel
    (as far as the new scale has that place), and the figure is drawn once.
    """
    import ipywidgets as widgets

    low_height, low_width = low_size
    kernel_slider = widgets.IntSlider(value=kernel_size, min=1, max=max_kernel_size, step=2,
                                      description="kernel_size")
    scale_slider = widgets.IntSlider(value=scale, min=1, max=max_scale, description="scale")
    # drawn at its own size (figure_png), not stretched to the notebook's width
    picture = widgets.Image(format="png", layout=widgets.Layout(align_self="flex-start", max_width="100%"))

    def redraw(change=None):
        Y_slider, X_slider = positions.children
        figure = carafe_footprint_figure([(kernel_slider.value, scale_slider.value, Y_slider.value, X_slider.value)],
                                         low_size=low_size)
        picture.value = figure_png(figure)

    def position_sliders(Y, X, scale):
        # New sliders rather than new bounds: a browser's slider keeps its
        # first range for the End key (seen in JupyterLab 4.6, ipywidgets 8.1).
        sliders = (widgets.IntSlider(value=Y, min=0, max=scale * low_height - 1, description="Y"),
                   widgets.IntSlider(value=X, min=0, max=scale * low_width - 1, description="X"))
        for slider in sliders:
            slider.observe(redraw, names="value")
        return sliders

    def rescale(change):
        old, new = change["old"], change["new"]
        previous = positions.children
        moved = [slider.value // old * new + min(slider.value % old, new - 1) for slider in previous]
        positions.children = position_sliders(*moved, new)
        for slider in previous:
            slider.close()
        redraw()

    positions = widgets.HBox(position_sliders(Y, X, scale))
    kernel_slider.observe(redraw, names="value")
    scale_slider.observe(rescale, names="value")
    redraw()
    return widgets.VBox([widgets.HBox([kernel_slider, scale_slider]), positions, picture])


def carafe_tile_figure(tile, kernel_size, scale, block=(0, 0), max_radius=3, low_size=(8, 8)):
    """What one block of the shared-memory CARAFE kernel stages.

    The block ``block = (block_row, block_col)`` computes a ``tile x tile``
    patch of outputs (orange, clipped to the output map). Together they read
    the low-res rows ``Y0 // s - r`` to ``(Y0 + tile - 1) // s + r`` (and the
    same for columns; blue, hatched where outside the map: the block stores
    zeros there). The dashed box is the shared array the kernel allocates,
    ``(tile + 2 * max_radius)`` square: its size must be a compile-time
    constant, so it is sized for the worst case (scale 1, the largest radius).
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    low_height, low_width = low_size
    radius = (kernel_size - 1) // 2
    block_row, block_col = block
    Y0, X0 = block_row * tile, block_col * tile
    top, left = Y0 // scale - radius, X0 // scale - radius
    rows = (Y0 + tile - 1) // scale - Y0 // scale + 1 + 2 * radius
    cols = (X0 + tile - 1) // scale - X0 // scale + 1 + 2 * radius
    allocated = tile + 2 * max_radius
    figure, axis = plt.subplots(figsize=(6.4, 6.4))
    _carafe_grid(axis, low_height, low_width, scale, (min(0, top), max(low_height - 1, top + allocated - 1)),
                 (min(0, left), max(low_width - 1, left + allocated - 1)))
    _low_res_cells(axis, [(top + i, left + j) for i in range(rows) for j in range(cols)], low_height, low_width,
                   "tab:blue")
    outputs = 0
    for Y in range(Y0, min(Y0 + tile, scale * low_height)):
        for X in range(X0, min(X0 + tile, scale * low_width)):
            _output_cell(axis, Y, X, scale, "tab:orange", alpha=0.7)
            outputs += 1
    axis.add_patch(plt.Rectangle((left - 0.5, top - 0.5), allocated, allocated, fill=False, edgecolor="black",
                                 linestyle="--", linewidth=1.5, zorder=4))
    axis.set_title(f"block {block} of {tile} x {tile} threads, k={kernel_size}, s={scale}:\n"
                   f"{outputs} outputs read {rows} x {cols} low-res values "
                   f"(shared array {allocated} x {allocated})", fontsize=10)
    handles = [Patch(facecolor="tab:orange", alpha=0.7, label="the block's outputs"),
               Patch(facecolor="tab:blue", alpha=0.3, label="staged in shared memory"),
               Patch(facecolor="white", edgecolor="0.55", hatch="///", label="staged as zeros"),
               Patch(facecolor="white", edgecolor="black", linestyle="--", label="shared array allocated")]
    axis.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.05), ncol=2, fontsize=8,
                frameon=False)
    figure.tight_layout()
    return figure


def carafe_kernels_figure(low_image, kernels, scale, pixels, high_image=None, title=""):
    """Predicted CARAFE kernels drawn over the image they reassemble.

    ``low_image`` (C, h, w) or (h, w) is the low-res input, ``kernels``
    (k*k, s*h, s*w) the kernels of one group (e.g. ``module.kernels(x)[0, :k*k]``),
    ``pixels`` a list of output pixels (Y, X). The first panel is
    ``high_image`` (or the low-res image) with the pixels numbered; then, for
    each pixel, the low-res neighbourhood of its window with a disc on every
    slot, its area proportional to the slot's weight (the weight is written
    in), and the output pixel's position marked by a cross.
    """
    import matplotlib.pyplot as plt

    low = _as_image(low_image)
    if isinstance(kernels, torch.Tensor):
        kernels = kernels.detach().cpu().double().numpy()
    kernels = np.asarray(kernels, dtype=np.float64)
    if kernels.ndim != 3:
        raise ValueError(f"kernels must be (k*k, H, W), got shape {kernels.shape}")
    kernel_size = int(round(kernels.shape[0] ** 0.5))
    if kernel_size * kernel_size != kernels.shape[0]:
        raise ValueError(f"kernels has {kernels.shape[0]} channels, not a square k*k")
    radius = (kernel_size - 1) // 2
    low_height, low_width = low.shape[:2]
    cmap = "gray" if low.ndim == 2 else None
    figure, axes = plt.subplots(1, len(pixels) + 1, figsize=(3.4 * (len(pixels) + 1), 3.8), squeeze=False)
    first = axes[0][0]
    if high_image is not None:
        high = _as_image(high_image)
        first.imshow(np.clip(high, 0, 1) if high.ndim == 3 else high, cmap=cmap, interpolation="nearest")
        to_panel = 1.0
        offset = 0.0
    else:
        first.imshow(np.clip(low, 0, 1) if low.ndim == 3 else low, cmap=cmap, interpolation="nearest")
        to_panel = 1.0 / scale
        offset = 0.5 / scale - 0.5
    for number, (Y, X) in enumerate(pixels, 1):
        first.plot([X * to_panel + offset], [Y * to_panel + offset], "o", markersize=11, markerfacecolor="none",
                   markeredgecolor="red", markeredgewidth=1.5)
        first.text(X * to_panel + offset, Y * to_panel + offset - 2.2 * max(to_panel, 1 / scale) - 0.5,
                   str(number), color="red", ha="center", va="bottom", fontsize=9, fontweight="bold")
    first.set_title("output" if high_image is not None else "input", fontsize=10)
    first.set_xticks([])
    first.set_yticks([])
    for number, (axis, (Y, X)) in enumerate(zip(axes[0][1:], pixels), 1):
        row, col = Y // scale, X // scale
        axis.imshow(np.clip(low, 0, 1) if low.ndim == 3 else low, cmap=cmap, interpolation="nearest")
        for dy in range(kernel_size):
            for dx in range(kernel_size):
                r, c = row - radius + dy, col - radius + dx
                weight = float(kernels[dy * kernel_size + dx, Y, X])
                axis.scatter([c], [r], s=900 * weight, color="yellow", edgecolor="black", linewidth=0.5,
                             alpha=0.85, zorder=3)
                if weight >= 0.05:
                    axis.text(c, r + 0.45, f"{weight:.2f}", ha="center", va="bottom", fontsize=6, zorder=4,
                              bbox={"boxstyle": "round,pad=0.1", "facecolor": "white", "alpha": 0.7,
                                    "linewidth": 0})
        axis.plot([(X + 0.5) / scale - 0.5], [(Y + 0.5) / scale - 0.5], "x", color="red", markersize=9,
                  markeredgewidth=2, zorder=5)
        axis.add_patch(plt.Rectangle((col - radius - 0.5, row - radius - 0.5), kernel_size, kernel_size,
                                     fill=False, edgecolor="red", linewidth=1, zorder=4))
        axis.set_xlim(col - radius - 1.5, col + radius + 1.5)
        axis.set_ylim(row + radius + 1.5, row - radius - 1.5)
        axis.set_title(f"{number}: output ({Y}, {X})", fontsize=10)
        axis.set_xticks([])
        axis.set_yticks([])
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return figure


# --------------------------------------------------------------------------
# Lesson 04 (SAPA): point affiliation. The numbers come from
# upsamplelib.affiliation; these functions only draw them.
# --------------------------------------------------------------------------


def _kernel_panel(axis, values, title, fmt, cmap, low=None, high=None, inside=None):
    """A k x k grid of values with the numbers written in, the centre slot
    outlined in red, and out-of-map slots (``inside`` False) hatched."""
    import matplotlib.pyplot as plt

    values = np.asarray(_as_image(values), dtype=np.float64)
    size = values.shape[0]
    low = float(values.min()) if low is None else low
    high = float(values.max()) if high is None else high
    if high <= low:
        low, high = low - 0.5, high + 0.5
    image = axis.imshow(values, cmap=cmap, vmin=low, vmax=high, interpolation="nearest")
    _label_cells(axis, image, [[format(value, fmt) for value in line] for line in values])
    for (row, col), value in np.ndenumerate(values):
        outside = inside is not None and not bool(np.asarray(inside)[row, col])
        if outside:
            axis.add_patch(plt.Rectangle((col - 0.5, row - 0.5), 1, 1, fill=False, hatch="//",
                                         edgecolor="0.6", linewidth=0))
    centre = (size - 1) / 2
    axis.add_patch(plt.Rectangle((centre - 0.5, centre - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1.5))
    axis.set_title(title, fontsize=10)
    axis.set_xticks(range(size))
    axis.set_yticks(range(size))
    axis.set_xticklabels([str(d - size // 2) for d in range(size)], fontsize=9)
    axis.set_yticklabels([str(d - size // 2) for d in range(size)], fontsize=9)
    axis.set_xlabel("dx", fontsize=9)
    axis.set_ylabel("dy", fontsize=9)
    return image


def _boundary(axis, labels, scale=1):
    """The region boundary of an (H, W) label map, drawn on a map ``scale``
    times smaller (``scale=1``: the high-res map itself)."""
    if labels is None:
        return
    labels = np.asarray(_as_image(labels), dtype=np.float64)
    height, width = labels.shape
    rows = (np.arange(height) + 0.5) / scale - 0.5
    cols = (np.arange(width) + 0.5) / scale - 0.5
    axis.contour(cols, rows, labels, levels=[0.5], colors="red", linewidths=1.2)


def _draw_affiliation(axes, guide, decoder, Y, X, kernel, logits, scale, labels=None, inside=None):
    """The four panels of ``point_affiliation_figure``, drawn into ``axes``."""
    import matplotlib.pyplot as plt

    guide, decoder = _as_image(guide), _as_image(decoder)
    kernel_size = np.asarray(_as_image(kernel)).shape[0]
    radius = (kernel_size - 1) // 2
    top, left = Y // scale - radius, X // scale - radius
    low, high = float(np.min(guide)), float(np.max(guide))
    axes[0].imshow(guide, cmap="gray", vmin=low, vmax=high, interpolation="nearest")
    _boundary(axes[0], labels)
    axes[0].add_patch(plt.Rectangle((left * scale - 0.5, top * scale - 0.5), kernel_size * scale,
                                    kernel_size * scale, fill=False, edgecolor="yellow", linewidth=1.5))
    axes[0].plot([X], [Y], "x", color="cyan", markersize=9, markeredgewidth=2)
    axes[0].set_title(f"guide (high res): pixel ({Y}, {X})", fontsize=10)
    axes[1].imshow(decoder, cmap="gray", vmin=low, vmax=high, interpolation="nearest")
    _boundary(axes[1], labels, scale)
    axes[1].add_patch(plt.Rectangle((left - 0.5, top - 0.5), kernel_size, kernel_size, fill=False,
                                    edgecolor="yellow", linewidth=1.5))
    axes[1].plot([X // scale], [Y // scale], "s", color="cyan", markersize=5, fillstyle="none", markeredgewidth=2)
    axes[1].set_title(f"decoder (low res): window around ({Y // scale}, {X // scale})", fontsize=10)
    for axis, picture in zip(axes[:2], (guide, decoder)):
        axis.set_xlim(-0.5, picture.shape[1] - 0.5)
        axis.set_ylim(picture.shape[0] - 0.5, -0.5)
        axis.set_xticks([])
        axis.set_yticks([])
    _kernel_panel(axes[2], logits, "similarity logits", ".1f", "coolwarm", inside=inside)
    _kernel_panel(axes[3], kernel, "kernel = softmax(logits)", ".2f", "viridis", low=0.0, inside=inside)


def point_affiliation_figure(guide, decoder, Y, X, kernel, logits, scale, labels=None, inside=None, title=""):
    """What SAPA does at output pixel (Y, X), in four panels:

    1. the high-res guide (encoder feature) with the pixel (a cross) and the
       footprint of its k x k low-res window (the box); the true boundary in red
       if ``labels`` is given;
    2. the low-res decoder map with the same window and the pixel the output
       is attached to, ``(Y // s, X // s)``;
    3. the similarity logits over the window (out-of-map slots hatched:
       their logit is 0);
    4. the kernel, the softmax of the logits: the weight with which each
       decoder point of the window contributes to the output.

    ``guide`` (H, W) and ``decoder`` (h, w) are pictures (e.g.
    ``Example.image`` and ``Example.low_image``); ``kernel`` and ``logits``
    are (k, k).
    """
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 4, figsize=(15, 3.8))
    _draw_affiliation(axes, guide, decoder, Y, X, kernel, logits, scale, labels, inside)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return figure


def _draw_kernels(axes, kernels, inside=None):
    high = max(float(np.max(_as_image(k))) for k in kernels.values())
    for axis, (name, kernel) in zip(axes, kernels.items()):
        _kernel_panel(axis, kernel, name, ".2f", "viridis", low=0.0, high=high, inside=inside)


def kernel_comparison_figure(kernels, title="", inside=None):
    """The k x k kernels of several upsamplers at the same output pixel
    (a dict name -> (k, k)), side by side on one colour scale from 0."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(kernels), figsize=(3.4 * len(kernels), 3.4), squeeze=False)
    _draw_kernels(axes[0], kernels, inside)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return figure


def affiliation_explorer_figure(guide, decoder, Y, X, kernel, logits, scale, kernels, labels=None, inside=None,
                                title=""):
    """Both views of the lesson's explorer in one figure: the four panels of
    ``point_affiliation_figure`` on top, the kernels of several upsamplers at
    the same pixel (``kernels``: name -> (k, k), as ``kernel_comparison_figure``)
    below."""
    import matplotlib.pyplot as plt

    # drawn WIDGET_WIDTH_PX wide by figure_png: 80 dpi, so 11 pt is 12 px
    figure = plt.figure(figsize=(12, 6.8))
    grid = figure.add_gridspec(2, max(4, len(kernels)))
    top = [figure.add_subplot(grid[0, i]) for i in range(4)]
    bottom = [figure.add_subplot(grid[1, i]) for i in range(len(kernels))]
    _draw_affiliation(top, guide, decoder, Y, X, kernel, logits, scale, labels, inside)
    _draw_kernels(bottom, kernels, inside)
    bottom[0].text(-0.35, 0.5, "kernels at\nthis pixel", transform=bottom[0].transAxes, ha="right", va="center")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return figure


def figure_png(figure, dpi=None) -> bytes:
    """``figure`` as PNG bytes, and closed (e.g. for an ``ipywidgets.Image``,
    whose picture a slider can replace without any notebook output).

    By default at the resolution that makes it ``WIDGET_WIDTH_PX`` wide,
    at most 100 dpi: a notebook shows it at that size, not shrunk."""
    import io

    import matplotlib.pyplot as plt

    if dpi is None:
        dpi = min(100.0, WIDGET_WIDTH_PX / figure.get_size_inches()[0])
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    plt.close(figure)
    return buffer.getvalue()


def boundary_profile_figure(pictures, row, labels=None, title=""):
    """Upsampled maps (a dict name -> (H, W), e.g. ``Example.to_image`` of
    each output) in a row, with one image row marked, and below them the
    values along that row: a sharp method steps where the ideal (``labels``,
    dashed) steps, a blurry one ramps."""
    import matplotlib.pyplot as plt

    arrays = {name: np.asarray(_as_image(p), dtype=np.float64) for name, p in pictures.items()}
    count = len(arrays)
    figure = plt.figure(figsize=(3.2 * count, 6.2))
    grid = figure.add_gridspec(2, count, height_ratios=[1.2, 1])
    for index, (name, array) in enumerate(arrays.items()):
        axis = figure.add_subplot(grid[0, index])
        axis.imshow(array, cmap="gray", vmin=-0.1, vmax=1.1, interpolation="nearest")
        _boundary(axis, labels)
        axis.axhline(row, color="cyan", linewidth=1)
        axis.set_title(name, fontsize=10)
        axis.set_xticks([])
        axis.set_yticks([])
    axis = figure.add_subplot(grid[1, :])
    for name, array in arrays.items():
        axis.plot(np.arange(array.shape[1]), array[row], marker=".", label=name)
    if labels is not None:
        ideal = np.asarray(_as_image(labels), dtype=np.float64)[row]
        axis.step(np.arange(ideal.shape[0]), ideal, where="mid", color="black", linestyle="--", label="ideal")
    axis.set_xlabel("column")
    axis.set_ylabel(f"value along row {row}")
    axis.legend(fontsize=8, loc="upper left")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return figure


# --------------------------------------------------------------------------
# Lesson 05 (FADE): the two windows of the semi-shift convolution, and the
# gate of the module.
# --------------------------------------------------------------------------


def semi_shift_windows_figure(outputs=None, kernel_size=3, scale=2, low_width=4, show_upsampled=True, title=""):
    """The windows of the semi-shift convolution along one axis, for the
    consecutive output positions ``outputs`` (default: all of them).

    The top rows are the high-res grid (the encoder map E and the output,
    ``scale * low_width`` pixels) and the low-res grid (the decoder map D,
    ``low_width`` pixels, each as wide as ``scale`` high-res pixels). Below,
    one block per output position X (red): the encoder window, the k
    high-res pixels ``X - r .. X + r`` (blue), which moves one step with
    every output step; and the decoder window, the k low-res pixels
    ``X // s - r .. X // s + r`` (green), which moves one low-res step every
    ``scale`` output steps. Out-of-map pixels are hatched (zero padding).
    With ``show_upsampled``, a third bar (orange) shows which low-res pixels a
    conv over ``nearest_up(D)`` would read instead: those under the k
    high-res pixels of the encoder window, only about k / s of them.
    The same holds along the other axis.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    radius = kernel_size // 2
    width = scale * low_width
    outputs = list(range(width)) if outputs is None else [int(X) for X in outputs]
    bars = 3 if show_upsampled else 2
    block = bars + 1.6
    figure_height = 1.6 + 0.3 * block * len(outputs)
    figure, axis = plt.subplots(figsize=(max(7.0, 0.55 * (width + 2 * scale * radius) + 2.5), figure_height))

    def cell(left, right, level, colour, text="", inside=True, alpha=0.45, edge="0.3"):
        if inside:
            patch = plt.Rectangle((left, level), right - left, 0.8, facecolor=colour, alpha=alpha, edgecolor=edge,
                                  linewidth=0.8)
        else:
            patch = plt.Rectangle((left, level), right - left, 0.8, facecolor="white", edgecolor="0.55", hatch="///",
                                  linewidth=0.8)
        axis.add_patch(patch)
        if text:
            axis.text((left + right) / 2, level + 0.4, text, ha="center", va="center", fontsize=7)

    def fine(X, level, colour, **options):
        cell(X - 0.5, X + 0.5, level, colour, str(X), inside=0 <= X < width, **options)

    def coarse(c, level, colour, **options):
        cell(c * scale - 0.5, (c + 1) * scale - 0.5, level, colour, str(c), inside=0 <= c < low_width, **options)

    top = 0.0
    for X in range(width):
        fine(X, top, "white", alpha=1.0)
    for c in range(low_width):
        coarse(c, top + 1.0, "0.85", alpha=1.0)
    labels = [(top + 0.4, "E, output (high res)"), (top + 1.4, "D (low res)")]
    level = top + 2.6
    for X in outputs:
        fine(X, level, "red", alpha=0.85)
        labels.append((level + 0.4, f"output X = {X}"))
        for u in range(-radius, radius + 1):
            fine(X + u, level + 1.0, "tab:blue")
        labels.append((level + 1.4, "encoder window"))
        low = X // scale
        for u in range(-radius, radius + 1):
            coarse(low + u, level + 2.0, "tab:green")
        labels.append((level + 2.4, f"decoder window (X // {scale} = {low})"))
        if show_upsampled:
            read = sorted({(X + u) // scale for u in range(-radius, radius + 1) if 0 <= X + u < width})
            for c in read:
                coarse(c, level + 3.0, "tab:orange")
            for u in range(-radius, radius + 1):
                if not 0 <= X + u < width:
                    cell(X + u - 0.5, X + u + 0.5, level + 3.0, "white", inside=False)
            labels.append((level + 3.4, f"conv over up(D): {len(read)} pixel{'s' if len(read) != 1 else ''}"))
        level += block
    left_edge = -0.5 - scale * radius - 0.3
    for y, text in labels:
        axis.text(left_edge - 0.2, y, text, ha="right", va="center", fontsize=7)
    axis.set_xlim(left_edge - 0.1, width - 0.5 + scale * radius + 0.3)
    axis.set_ylim(level + 0.1, -0.3)
    axis.axis("off")
    handles = [Patch(facecolor="red", alpha=0.85, label="output pixel"),
               Patch(facecolor="tab:blue", alpha=0.45, label="encoder window (moves every step)"),
               Patch(facecolor="tab:green", alpha=0.45, label=f"decoder window (moves every {scale} steps)"),
               Patch(facecolor="white", edgecolor="0.55", hatch="///", label="outside the map: zero")]
    if show_upsampled:
        handles.insert(3, Patch(facecolor="tab:orange", alpha=0.45, label="D pixels a conv over up(D) reads"))
    axis.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=3, fontsize=7, frameon=False)
    axis.set_title(title or f"semi-shift windows along one axis: k={kernel_size}, scale={scale}", fontsize=10)
    figure.subplots_adjust(left=0.24, right=0.98, top=1 - 0.45 / figure_height, bottom=0.75 / figure_height)
    return figure


def fade_gate_figure(en, de, gate, reassembled, output, title=""):
    """FADE's output assembled, in five panels: the encoder feature ``en``
    (high res), the decoder feature ``de`` (low res), the gate ``g`` (H, W)
    in [0, 1] (1: take the encoder), the decoder part ``reassembled`` =
    carafe(de, kernels), and ``output`` = g * en + (1 - g) * reassembled.
    Features are drawn as images: (3, H, W) in colour, (1, H, W) or (H, W)
    in grey."""
    import matplotlib.pyplot as plt

    def picture(image):
        array = _as_image(image)
        return np.clip(array, 0, 1) if array.ndim == 3 else array

    gate = np.asarray(_as_image(gate), dtype=np.float64)
    if gate.ndim != 2:
        raise ValueError(f"gate must be one (H, W) map, got shape {gate.shape}")
    panels = [(picture(en), "encoder feature en (high res)"), (picture(de), "decoder feature de (low res)"),
              (gate, "gate g (1: the encoder)"), (picture(reassembled), "carafe(de): the decoder part"),
              (picture(output), "output = g en + (1 - g) carafe(de)")]
    figure, axes = plt.subplots(1, len(panels), figsize=(3.1 * len(panels) + 0.6, 3.6))
    for index, (axis, (array, name)) in enumerate(zip(axes, panels)):
        if index == 2:
            image = axis.imshow(array, cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
            figure.colorbar(image, ax=axis, fraction=0.046, pad=0.03)
        else:
            axis.imshow(array, cmap="gray", interpolation="nearest", vmin=None if array.ndim == 3 else 0.0,
                        vmax=None if array.ndim == 3 else 1.0)
        axis.set_title(name, fontsize=9)
        axis.set_xticks([])
        axis.set_yticks([])
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return figure

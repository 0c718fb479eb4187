"""The figures of the capstone lesson (matplotlib). Every function returns
the ``Figure``; the notebook ends its cell with ``plt.show()``."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap

from .data import REGION_CLASS_NAMES, REGION_CLASSES
from .metrics import METRICS
from .model import UPSAMPLERS
from .results import DISPLAY, records_of, summarise

#: One colour per class of the region task.
LABEL_COLOURS = ListedColormap(["#d9d9d9", "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd"][:REGION_CLASSES])

#: One colour per upsampler family: fixed (grey), decoder-only kernels
#: (blue), encoder-aware kernels (oranges: SAPA, greens: FADE).
COLOURS = {"nearest": "#9e9e9e", "bilinear": "#616161", "carafe": "#1f77b4", "sapa-b": "#ffbb78",
           "sapa-g": "#ff7f0e", "fade": "#2ca02c", "fade-lite": "#98df8a"}

DYNAMIC = ("carafe", "sapa-b", "sapa-g", "fade", "fade-lite")


def _colour(name):
    return COLOURS.get(name, "#d62728")


def _show_image(axis, image):
    axis.imshow(np.clip(np.asarray(image).transpose(1, 2, 0), 0, 1), interpolation="nearest")


def _show_target(axis, task, target, **kwargs):
    if task == "region":
        axis.imshow(np.asarray(target), cmap=LABEL_COLOURS, vmin=-0.5, vmax=REGION_CLASSES - 0.5,
                    interpolation="nearest", **kwargs)
    else:
        axis.imshow(np.asarray(target), cmap="gray", vmin=0, vmax=1, interpolation="nearest", **kwargs)


def _off(axis):
    axis.set_xticks([])
    axis.set_yticks([])


def samples_figure(region, detail, count=4):
    """The first ``count`` images of each data set with their targets."""
    figure, axes = plt.subplots(4, count, figsize=(2.2 * count, 9))
    for i in range(count):
        _show_image(axes[0, i], region.images[i])
        _show_target(axes[1, i], "region", region.targets[i])
        _show_image(axes[2, i], detail.images[i])
        _show_target(axes[3, i], "detail", detail.targets[i])
    for axis, title in zip(axes[:, 0], ("region: image", "region: classes", "detail: image", "detail: alpha")):
        axis.set_ylabel(title)
    for axis in axes.flat:
        _off(axis)
    handles = [plt.Rectangle((0, 0), 1, 1, color=LABEL_COLOURS(c)) for c in range(REGION_CLASSES)]
    figure.legend(handles, REGION_CLASS_NAMES, loc="upper center", ncol=REGION_CLASSES, frameon=False)
    figure.tight_layout(rect=(0, 0, 1, 0.97))
    return figure


def metric_bars_figure(results, tasks=None, title=None):
    """Bars of every metric, mean over the seeds with ± one standard deviation
    as error bars (none for a single seed). ``results``: the results dict or
    a list of records."""
    summary = summarise(results)
    tasks = [t for t in (tasks or ("region", "detail")) if t in summary]
    panels = [(task, metric) for task in tasks for metric in METRICS[task]]
    figure, axes = plt.subplots(1, len(panels), figsize=(3.1 * len(panels), 3.4), squeeze=False)
    for axis, (task, metric) in zip(axes[0], panels):
        names = list(summary[task])
        label, scale, _ = DISPLAY[metric]
        means = [summary[task][n][metric][0] * scale for n in names]
        stds = [summary[task][n][metric][1] * scale for n in names]
        axis.bar(range(len(names)), means, yerr=stds if max(stds) > 0 else None, capsize=3,
                 color=[_colour(n) for n in names])
        axis.set_xticks(range(len(names)))
        axis.set_xticklabels(names, rotation=60, ha="right")
        better = "higher" if METRICS[task][metric] else "lower"
        axis.set_title(f"{task}: {label}\n({better} is better)", fontsize=10)
        low, high = min(m - s for m, s in zip(means, stds)), max(m + s for m, s in zip(means, stds))
        margin = 0.15 * (high - low) + 1e-9
        axis.set_ylim(max(0.0, low - margin), high + margin)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return figure


def curves_figure(results, task):
    """Training against validation loss (eval mode, 64 images each) over the
    steps, mean over the seeds with a band of ± one standard deviation; one
    panel per upsampler."""
    records = [r for r in records_of(results) if r["task"] == task]
    names = [n for n in UPSAMPLERS if any(r["upsampler"] == n for r in records)]
    figure, axes = plt.subplots(1, len(names), figsize=(2.3 * len(names), 2.8), sharey=True, squeeze=False)
    for axis, name in zip(axes[0], names):
        runs = [r for r in records if r["upsampler"] == name]
        steps = runs[0]["curves"]["step"]
        for key, colour, label in (("train_loss", "#1f77b4", "train"), ("val_loss", "#d62728", "validation")):
            values = np.array([r["curves"][key] for r in runs])
            mean, std = values.mean(0), values.std(0, ddof=1) if len(runs) > 1 else np.zeros(values.shape[1])
            axis.plot(steps, mean, color=colour, label=label)
            axis.fill_between(steps, mean - std, mean + std, color=colour, alpha=0.2)
        axis.set_title(name, fontsize=10)
        axis.set_xlabel("step")
        axis.set_yscale("log")
    axes[0, 0].set_ylabel(f"{task} loss")
    axes[0, 0].legend(fontsize=8)
    figure.tight_layout()
    return figure


def _crop_box(pixel, shape, size):
    row, col = pixel
    top = int(np.clip(row - size // 2, 0, shape[0] - size))
    left = int(np.clip(col - size // 2, 0, shape[1] - size))
    return top, left


def closeups_figure(results, task, val, size=24):
    """Around the example pixel of validation image 0: the image, the truth
    and every upsampler's prediction (seed 0 of the full experiment)."""
    from .grid import decode, example_pixel

    examples = results["examples"][task]
    names = [n for n in UPSAMPLERS if n in examples]
    target = val.targets[0]
    pixel = example_pixel(task, target)
    top, left = _crop_box(pixel, target.shape, size)
    window = (slice(top, top + size), slice(left, left + size))
    figure, axes = plt.subplots(1, len(names) + 2, figsize=(1.9 * (len(names) + 2), 2.6))
    _show_image(axes[0], val.images[0][:, window[0], window[1]])
    axes[0].set_title("image", fontsize=10)
    _show_target(axes[1], task, target[window])
    axes[1].set_title("truth", fontsize=10)
    for axis, name in zip(axes[2:], names):
        prediction = decode(task, examples[name]["predictions"])[0]
        _show_target(axis, task, prediction[window])
        axis.set_title(name, fontsize=10)
    for axis in axes:
        axis.plot([pixel[1] - left], [pixel[0] - top], "x", color="red", markersize=6)
        _off(axis)
    figure.suptitle(f"{task}: a {size} x {size} close-up of validation image 0 (x: the pixel of the kernel figure)",
                    fontsize=10)
    figure.tight_layout(rect=(0, 0, 1, 0.92))
    return figure


def kernels_figure(results, task, val):
    """The learned 5 x 5 kernels of the dynamic upsamplers at one pixel of
    the last decoder stage (32 -> 64), drawn over the low-res window they
    weigh; the first panel is the truth under that window."""
    examples = results["examples"][task]
    names = [n for n in DYNAMIC if n in examples and examples[n]["kernel"]]
    first = examples[names[0]]["kernel"]
    row, col = first["pixel"]
    kernel_size = len(first["kernel"])
    radius = kernel_size // 2
    low_row, low_col = row // 2, col // 2
    top, left = 2 * (low_row - radius), 2 * (low_col - radius)
    span = 2 * kernel_size
    target = np.asarray(val.targets[0])
    patch = np.full((span, span), np.nan if task == "detail" else -1.0)
    for i in range(span):
        for j in range(span):
            if 0 <= top + i < target.shape[0] and 0 <= left + j < target.shape[1]:
                patch[i, j] = target[top + i, left + j]
    extent = (-0.5, span - 0.5, span - 0.5, -0.5)
    figure, axes = plt.subplots(1, len(names) + 1, figsize=(2.4 * (len(names) + 1), 2.9))
    if task == "region":
        axes[0].imshow(np.where(patch < 0, 0, patch), cmap=LABEL_COLOURS, vmin=-0.5, vmax=REGION_CLASSES - 0.5,
                       interpolation="nearest", extent=extent)
    else:
        axes[0].imshow(patch, cmap="gray", vmin=0, vmax=1, interpolation="nearest", extent=extent)
    axes[0].set_title("truth under the window", fontsize=9)
    for axis, name in zip(axes[1:], names):
        entry = examples[name]["kernel"]
        kernel = np.asarray(entry["kernel"])
        axis.imshow(np.kron(kernel, np.ones((2, 2))), cmap="magma", vmin=0, interpolation="nearest", extent=extent)
        if task == "region":
            axis.contour(np.arange(span), np.arange(span), np.where(patch < 0, np.nan, patch),
                         levels=np.arange(REGION_CLASSES) + 0.5, colors="cyan", linewidths=1)
        else:
            axis.contour(np.arange(span), np.arange(span), patch, levels=[0.5], colors="cyan", linewidths=1)
        title = f"{name}\nmax weight {kernel.max():.2f}"
        if "gate" in entry:
            title += f", gate {entry['gate']:.2f}"
        axis.set_title(title, fontsize=9)
    for axis in axes:
        axis.plot([col - left], [row - top], "x", color="red", markersize=8, mew=2)
        axis.set_xticks(np.arange(-0.5, span, 2))
        axis.set_yticks(np.arange(-0.5, span, 2))
        axis.set_xticklabels([])
        axis.set_yticklabels([])
        axis.grid(color="white", linewidth=0.5, alpha=0.5)
    figure.suptitle(f"{task}: kernels at output pixel ({row}, {col}) (x) over its 5 x 5 low-res window "
                    "(cyan: true boundaries)", fontsize=10)
    figure.tight_layout(rect=(0, 0, 1, 0.9))
    return figure


def band_figure(image, target, band, title="band"):
    """An image, its labels, and a band (boolean map) over the labels."""
    figure, axes = plt.subplots(1, 3, figsize=(8.4, 3))
    _show_image(axes[0], image)
    axes[0].set_title("image", fontsize=10)
    _show_target(axes[1], "region", target)
    axes[1].set_title("classes", fontsize=10)
    _show_target(axes[2], "region", target, alpha=0.35)
    axes[2].imshow(np.ma.masked_where(~np.asarray(band), np.ones(np.asarray(band).shape)), cmap="autumn",
                   vmin=0, vmax=1, alpha=0.8, interpolation="nearest")
    axes[2].set_title(title, fontsize=10)
    for axis in axes:
        _off(axis)
    figure.tight_layout()
    return figure

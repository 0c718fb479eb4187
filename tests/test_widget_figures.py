"""The explorers' widgets and the numbers in heatmaps (lessons 03 and 04):
ranges that follow the scale, and cell labels that are legible at notebook
width. tests_browser/ checks the same widgets in a real browser."""

import io

import matplotlib
import numpy as np
import pytest
import torch

matplotlib.use("Agg")

from matplotlib.image import imread  # noqa: E402

from upsamplelib import affiliation, pictures  # noqa: E402

#: Legible: numbers at least this tall on screen (pixels of font size), and
#: at least WCAG's contrast for normal text against their cell.
MIN_TEXT_PX = 11.0
MIN_CONTRAST = 4.5


def _sliders(explorer):
    import ipywidgets as widgets

    found, pending = {}, [explorer]
    while pending:
        widget = pending.pop()
        if isinstance(widget, widgets.IntSlider):
            found[widget.description] = widget
        pending.extend(getattr(widget, "children", ()))
    return found


def _picture(explorer):
    import ipywidgets as widgets

    (image,) = [w for w in explorer.children if isinstance(w, widgets.Image)]
    return image


def test_footprint_explorer_ranges_follow_the_scale():
    explorer = pictures.footprint_explorer(low_size=(6, 5), kernel_size=5, scale=2, Y=3, X=6)
    sliders, picture = _sliders(explorer), _picture(explorer)
    assert set(sliders) == {"kernel_size", "scale", "Y", "X"}
    assert (sliders["Y"].max, sliders["X"].max) == (11, 9)
    first = bytes(picture.value)
    assert first.startswith(b"\x89PNG")

    sliders["scale"].value = 4  # (3, 6) is offset (1, 0) in low-res pixel (1, 3) at s=2
    sliders = _sliders(explorer)  # Y and X are new sliders
    assert (sliders["Y"].max, sliders["X"].max) == (23, 19)
    assert (sliders["Y"].value, sliders["X"].value) == (5, 12)
    assert bytes(picture.value) != first
    sliders["Y"].value = 23  # the last output row is reachable
    at_bottom = bytes(picture.value)
    sliders["scale"].value = 1  # back into the 6 x 5 map, same low-res pixel
    sliders = _sliders(explorer)
    assert (sliders["Y"].max, sliders["X"].max) == (5, 4)
    assert (sliders["Y"].value, sliders["X"].value) == (5, 3)
    assert bytes(picture.value) not in (first, at_bottom)
    for name in ("kernel_size", "X"):
        before = bytes(picture.value)
        sliders[name].value = sliders[name].min
        assert bytes(picture.value) != before, name


def test_footprint_explorer_draws_once_per_scale_change(monkeypatch):
    explorer = pictures.footprint_explorer()
    calls = []
    drawn = pictures.carafe_footprint_figure
    monkeypatch.setattr(pictures, "carafe_footprint_figure", lambda *a, **k: calls.append(a) or drawn(*a, **k))
    _sliders(explorer)["scale"].value = 3
    assert len(calls) == 1
    (((kernel_size, scale, Y, X),),) = calls[0][:1]
    assert (scale, Y, X) == (3, 4, 9)  # (3, 6) at s=2: low-res (1, 3), offset (1, 0)


@pytest.mark.parametrize("background", [(1, 1, 1), (0, 0, 0), (0.7, 0.8, 0.95), (0.23, 0.3, 0.75),
                                        (0.99, 0.9, 0.14), (0.27, 0.0, 0.33), (0.5, 0.5, 0.5)])
def test_text_colour_contrasts_with_its_cell(background):
    colour = matplotlib.colors.to_rgb(pictures.text_colour_on(background))
    other = (1, 1, 1) if colour == (0, 0, 0) else (0, 0, 0)
    assert pictures.contrast_ratio(colour, background) >= pictures.contrast_ratio(other, background)
    assert pictures.contrast_ratio(colour, background) >= MIN_CONTRAST


def _cell_labels(figure):
    """(text px on screen, contrast with its cell, inside its cell) of every
    number written into an image cell of ``figure``, as a notebook shows
    it: drawn at 100 dpi (the inline backend's; ``figure_png``'s for small
    figures) and shrunk to WIDGET_WIDTH_PX when wider, which is what drawing
    at WIDGET_WIDTH_PX / width dpi gives directly."""
    dpi = min(100.0, pictures.WIDGET_WIDTH_PX / figure.get_size_inches()[0])
    figure.set_dpi(dpi)
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    found = []
    for axis in figure.axes:
        if not axis.images:
            continue
        image = axis.images[0]
        values = np.asarray(image.get_array())
        for text in axis.texts:
            x, y = text.get_position()
            row, col = int(round(y)), int(round(x))
            if not (text.get_text() and text.get_ha() == "center"
                    and 0 <= row < values.shape[0] and 0 <= col < values.shape[1]):
                continue
            cell = matplotlib.colors.to_rgb(image.to_rgba(values[row, col]))
            box = text.get_window_extent(renderer)
            (left, bottom), (right, top) = axis.transData.transform([(col - 0.5, row + 0.5), (col + 0.5, row - 0.5)])
            inside = box.x0 >= left - 1 and box.x1 <= right + 1 and box.y0 >= bottom - 1 and box.y1 <= top + 1
            colour = matplotlib.colors.to_rgb(text.get_color())
            found.append((text.get_fontsize() * dpi / 72, pictures.contrast_ratio(colour, cell), inside))
    return found


def _assert_legible(labels, what):
    assert labels, f"{what}: no numbers found"
    small = [round(size, 1) for size, _, _ in labels if size < MIN_TEXT_PX]
    faint = [round(ratio, 2) for _, ratio, _ in labels if ratio < MIN_CONTRAST]
    spilling = sum(not inside for _, _, inside in labels)
    assert not small, f"{what}: numbers {min(small)} px tall"
    assert not faint, f"{what}: contrast {min(faint)} against the cell"
    assert not spilling, f"{what}: {spilling} numbers wider than their cell"


@pytest.mark.parametrize("example", ["two regions", "photo"])
def test_affiliation_explorer_numbers_are_legible(example):
    chosen = affiliation.two_region_example() if example == "two regions" else affiliation.photo_example()
    for Y, X in [(20, 19), (0, 0), (47, 39)]:
        view = affiliation.affiliation_at(chosen, Y, X)
        kernels = affiliation.kernels_at(chosen, Y, X)
        figure = pictures.affiliation_explorer_figure(chosen.image, chosen.low_image, Y, X, view["kernel"],
                                                      view["logits"], chosen.scale, kernels, chosen.labels,
                                                      view["inside"])
        # drawn WIDGET_WIDTH_PX wide at most, so shown unshrunk in a notebook
        assert figure.get_size_inches()[0] * min(100, pictures.WIDGET_WIDTH_PX / figure.get_size_inches()[0]) \
            <= pictures.WIDGET_WIDTH_PX + 1
        _assert_legible(_cell_labels(figure), f"{example} at ({Y}, {X})")


def test_the_explorer_png_is_as_wide_as_the_notebook():
    regions = affiliation.two_region_example()
    view = affiliation.affiliation_at(regions, 20, 19)
    figure = pictures.affiliation_explorer_figure(regions.image, regions.low_image, 20, 19, view["kernel"],
                                                  view["logits"], regions.scale,
                                                  affiliation.kernels_at(regions, 20, 19), regions.labels,
                                                  view["inside"])
    height, width = imread(io.BytesIO(pictures.figure_png(figure))).shape[:2]
    assert width == pictures.WIDGET_WIDTH_PX and height < width


def test_show_maps_numbers_are_legible_on_light_and_dark_cells():
    maps = [torch.linspace(-1, 1, 16).reshape(4, 4), torch.rand(4, 4, generator=torch.Generator().manual_seed(0))]
    # JupyterLab shows an inline figure (100 dpi here) at most as wide as the notebook
    figure = pictures.show_maps(maps, ["a", "b"], cmap="coolwarm")
    _assert_legible(_cell_labels(figure), "show_maps")
    ratios = [ratio for _, ratio, _ in _cell_labels(pictures.show_maps([np.eye(10)], ["big"]))]
    assert min(ratios) >= MIN_CONTRAST

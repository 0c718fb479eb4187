"""The lessons' widgets in a real browser (``make test-browser``).

JupyterLab serves a copy of the generated lessons; headless Chromium opens
lesson 03 and lesson 04 as a student would, runs all cells from the Run
menu (the unsolved exercises raise; their cells carry the tag
``raises-exception``, so Run All goes on past them), and then:

* every widget output is rendered (no "Loading widget", no error);
* every slider of the explorers is moved with the keyboard, the kernel
  redraws, and the picture on screen changes (screenshots compared);
* the footprint explorer's Y/X ranges follow the scale;
* no display equation is wider than its cell in a 1400 px window.

Screenshots go to build/browser/. The widgets' own code runs from the
library (``upsamplelib.pictures``), not from any exercise, so the lessons'
unsolved exercises do not stop them: the test sees what a student sees.
"""

from __future__ import annotations

import re

from conftest import VIEWPORT
from labserver import wait_for

#: Seconds: opening a notebook starts a kernel; Run All of lesson 03 or 04
#: takes 1-2 min on a loaded 2-core machine; one redraw takes about a second.
OPEN_TIMEOUT = 180
RUN_ALL_TIMEOUT = 900
REDRAW_TIMEOUT = 120

NOTEBOOK_READY = """() => {
  const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  const kernel = panel && panel.sessionContext && panel.sessionContext.session
                 && panel.sessionContext.session.kernel;
  return Boolean(panel && panel.context && panel.context.isReady && kernel && kernel.status === 'idle');
}"""

ALL_CELLS_RAN = """() => window.jupyterapp.shell.currentWidget.content.widgets.every(
  cell => cell.model.type !== 'code'
          || (cell.model.executionCount !== null && cell.model.executionState !== 'running'))"""

CELLS = """() => window.jupyterapp.shell.currentWidget.content.widgets.map(cell => ({
  type: cell.model.type,
  source: cell.model.sharedModel.getSource(),
  tags: cell.model.getMetadata('tags') || [],
  count: cell.model.type === 'code' ? cell.model.executionCount : null,
  outputs: cell.model.type === 'code' ? cell.model.outputs.toJSON() : [],
}))"""


def cell_node(page, index):
    """The DOM node of cell ``index``, scrolled into the middle of the
    notebook (JupyterLab attaches and lays out cells lazily)."""
    page.evaluate("""async index => {
      const notebook = window.jupyterapp.shell.currentWidget.content;
      await notebook.scrollToItem(index, 'center');
      notebook.widgets[index].node.setAttribute('data-browser-test-cell', String(index));
    }""", index)
    node = page.locator(f'[data-browser-test-cell="{index}"]')
    node.wait_for(state="visible", timeout=OPEN_TIMEOUT * 1000)
    return node


def open_notebook(page, lab, name):
    page.goto(lab.page_url(name))
    page.wait_for_function(NOTEBOOK_READY, timeout=OPEN_TIMEOUT * 1000, polling=250)
    return page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.id")


def run_all_cells(page, lab, kernel):
    """Run > Run All Cells, wait until every code cell has run and the kernel
    is idle; only cells tagged ``raises-exception`` may have raised."""
    page.locator("#jp-MainMenu").get_by_text("Run", exact=True).click()
    page.locator(".lm-Menu").get_by_text("Run All Cells", exact=True).click()
    page.wait_for_function(ALL_CELLS_RAN, timeout=RUN_ALL_TIMEOUT * 1000, polling=1000)
    wait_for(lambda: lab.api(f"kernels/{kernel}")["execution_state"] == "idle", REDRAW_TIMEOUT, "an idle kernel")
    cells = page.evaluate(CELLS)
    unexpected = [(index, output.get("ename"), output.get("evalue"))
                  for index, cell in enumerate(cells) for output in cell["outputs"]
                  if output["output_type"] == "error" and "raises-exception" not in cell["tags"]]
    assert not unexpected, f"cells raised that should not: {unexpected}"
    return cells


def check_widgets_render(page, cells):
    """Every widget output of the notebook is drawn in the page. Returns the
    indices of the cells that show widgets."""
    indices = [index for index, cell in enumerate(cells)
               if any("application/vnd.jupyter.widget-view+json" in output.get("data", {})
                      for output in cell["outputs"])]
    assert indices, "no widget in the notebook"
    for index in indices:
        output = cell_node(page, index).locator(".jp-OutputArea-output")
        wait_for(lambda: output.locator(".jupyter-widgets").count() > 0, REDRAW_TIMEOUT,
                 f"the widget of cell {index} to render")
        text = output.first.inner_text()
        for failure in ("Error displaying widget", "Loading widget", "model not found"):
            assert failure not in text, f"cell {index}: {text[:300]}"
    return indices


class Explorer:
    """The widget output of one cell: its sliders and its picture."""

    def __init__(self, page, lab, kernel, cell_index, name, artifacts):
        self.page, self.lab, self.kernel = page, lab, kernel
        self.name, self.artifacts, self.shots = name, artifacts, 0
        self.output = cell_node(page, cell_index).locator(".jp-OutputArea-output").filter(
            has=page.locator(".jupyter-widgets")).first

    def slider(self, label):
        found = self.output.locator(".widget-slider").filter(
            has=self.page.locator(".widget-label", has_text=re.compile(f"^{re.escape(label)}$")))
        # a box draws its children after itself: wait for the slider
        wait_for(lambda: found.count() == 1, REDRAW_TIMEOUT, f"{self.name}: one slider labelled {label!r}")
        return found

    def state(self, label):
        """(value, min, max) of a slider, as the page shows them."""
        handle = self.slider(label).locator(".noUi-handle")
        value = int(self.slider(label).locator(".widget-readout").inner_text().strip())
        assert float(handle.get_attribute("aria-valuenow")) == value
        return value, int(float(handle.get_attribute("aria-valuemin"))), int(float(
            handle.get_attribute("aria-valuemax")))

    def picture_source(self):
        sources = self.output.locator("img").evaluate_all(
            "images => images.map(image => image.complete && image.naturalWidth > 0 ? image.src : null)")
        return sources[-1] if sources else None

    def settled(self):
        return self.lab.api(f"kernels/{self.kernel}")["execution_state"] == "idle"

    def screenshot(self, what):
        self.shots += 1
        self.output.scroll_into_view_if_needed()
        return self.output.screenshot(path=self.artifacts / f"{self.name}-{self.shots:02d}-{what}.png")

    def press(self, label, key, expected):
        """Press ``key`` on the slider's handle: its value must become
        ``expected``, the kernel redraw the picture, and the screenshot change."""
        before_source, before = self.picture_source(), self.screenshot(f"before-{label}-{key}")
        self.slider(label).locator(".noUi-handle").press(key)
        wait_for(lambda: self.state(label)[0] == expected, REDRAW_TIMEOUT, f"{label} to read {expected}")
        wait_for(lambda: self.picture_source() not in (None, before_source), REDRAW_TIMEOUT,
                 f"a new picture after {label} = {expected}")
        wait_for(self.settled, REDRAW_TIMEOUT, "the kernel to finish redrawing")
        after = self.screenshot(f"{label}-{expected}")
        assert after != before, f"{self.name}: the picture did not change when {label} became {expected}"
        return after


def test_lesson_03_footprint_explorer_and_equations(page, lab, artifacts):
    kernel = open_notebook(page, lab, "03_carafe.ipynb")
    check_display_math_fits(page, artifacts, "03_carafe.ipynb")
    cells = run_all_cells(page, lab, kernel)
    check_widgets_render(page, cells)
    (index,) = [i for i, cell in enumerate(cells) if "footprint_explorer" in cell["source"]]
    explorer = Explorer(page, lab, kernel, index, "03-footprint", artifacts)
    low_size = 6  # the explorer's low-res map is 6 x 6

    def check_ranges():
        scale = explorer.state("scale")[0]
        for axis in ("Y", "X"):
            value, low, high = explorer.state(axis)
            assert (low, high) == (0, low_size * scale - 1), f"{axis} runs {low}..{high} at scale {scale}"
            assert low <= value <= high

    check_ranges()
    # every slider, one step: the picture must follow each
    for label in ("kernel_size", "scale", "Y", "X"):
        value, low, high = explorer.state(label)
        step = 2 if label == "kernel_size" else 1
        key, expected = ("ArrowRight", value + step) if value + step <= high else ("ArrowLeft", value - step)
        explorer.press(label, key, expected)
        check_ranges()
    # the largest scale: Y reaches the last output row, 6 * 4 - 1
    explorer.press("scale", "End", explorer.state("scale")[2])
    check_ranges()
    explorer.press("Y", "End", explorer.state("Y")[2])
    explorer.press("X", "Home", 0)
    # back to scale 1: Y and X come back into the 6 x 6 map
    explorer.press("scale", "Home", 1)
    check_ranges()


def test_lesson_04_affiliation_explorer_and_equations(page, lab, artifacts):
    kernel = open_notebook(page, lab, "04_sapa.ipynb")
    check_display_math_fits(page, artifacts, "04_sapa.ipynb")
    cells = run_all_cells(page, lab, kernel)
    check_widgets_render(page, cells)
    (index,) = [i for i, cell in enumerate(cells)
                if "affiliation_explorer" in cell["source"] and "widgets" in cell["source"]]
    explorer = Explorer(page, lab, kernel, index, "04-affiliation", artifacts)
    for label in ("row", "col"):
        value, low, high = explorer.state(label)
        explorer.press(label, "ArrowRight" if value < high else "ArrowLeft", value + 1 if value < high else value - 1)
        explorer.press(label, "Home", low)
        explorer.press(label, "End", high)
    # the other example: the dropdown redraws too
    before_source, before = explorer.picture_source(), explorer.screenshot("before-example")
    explorer.output.locator(".widget-dropdown select").select_option("photo")
    wait_for(lambda: explorer.picture_source() not in (None, before_source), REDRAW_TIMEOUT, "the photo example")
    wait_for(explorer.settled, REDRAW_TIMEOUT, "the kernel to finish redrawing")
    assert explorer.screenshot("example-photo") != before


MATH_OVERFLOWS = """() => {
  const found = [];
  window.jupyterapp.shell.currentWidget.content.widgets.forEach((cell, index) => {
    if (cell.model.type !== 'markdown') return;
    const rendered = cell.node.querySelector('.jp-RenderedMarkdown');
    if (!rendered) return;
    const box = rendered.getBoundingClientRect();
    rendered.querySelectorAll('mjx-container[display="true"]').forEach(container => {
      const math = container.querySelector('mjx-math') || container;
      const edges = math.getBoundingClientRect();
      if (edges.width > 0 && (edges.right > box.right + 1 || edges.left < box.left - 1
                              || container.scrollWidth > container.clientWidth + 1)) {
        found.push({cell: index, width: Math.round(edges.width), cellWidth: Math.round(box.width)});
      }
    });
  });
  return found;
}"""

DISPLAY_MATH = """() => window.jupyterapp.shell.currentWidget.content.node
  .querySelectorAll('.jp-RenderedMarkdown mjx-container[display="true"]').length"""


def check_display_math_fits(page, artifacts, notebook):
    """No display equation of the notebook is wider than its cell (the page
    is 1400 px wide)."""
    assert page.viewport_size["width"] == VIEWPORT["width"] == 1400
    cells = page.evaluate(CELLS)
    expected = sum(len(re.findall(r"\$\$.+?\$\$", cell["source"], re.S)) for cell in cells
                   if cell["type"] == "markdown")
    assert expected, f"{notebook} has no display math to check"
    # MathJax typesets after the notebook opens; each cell is brought on
    # screen first (cells off screen are not laid out)
    math_cells = [i for i, cell in enumerate(cells) if cell["type"] == "markdown" and "$$" in cell["source"]]
    for index in math_cells:
        cell_node(page, index)
    wait_for(lambda: page.evaluate(DISPLAY_MATH) >= expected, OPEN_TIMEOUT, f"{expected} typeset equations")
    overflows = []
    for index in math_cells:
        cell_node(page, index).screenshot(path=artifacts / f"{notebook[:2]}-math-cell-{index}.png")
        overflows += [found for found in page.evaluate(MATH_OVERFLOWS) if found["cell"] == index]
    assert not overflows, f"{notebook}: display math wider than its cell at 1400 px: {overflows}"

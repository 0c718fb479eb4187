"""Fixtures of the browser test: one JupyterLab serving a temporary copy of
the lessons, one headless Chromium, and the screenshot folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from labserver import find_chromium, running_lab

ROOT = Path(__file__).resolve().parent.parent
#: Screenshots and the server's log; CI uploads the folder.
ARTIFACTS = ROOT / "build" / "browser"
#: A 1400 px wide window: the width the lessons must fit (issue 13).
VIEWPORT = {"width": 1400, "height": 1100}


@pytest.fixture(scope="session")
def artifacts() -> Path:
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def lab(tmp_path_factory, artifacts):
    """JupyterLab on the generated lessons, as a student gets them (copied:
    running the cells writes outputs, which must not land in the repository)."""
    root = tmp_path_factory.mktemp("course") / "lessons"
    shutil.copytree(ROOT / "lessons", root)
    with running_lab(root, artifacts / "jupyterlab.log") as server:
        yield server


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    executable = find_chromium()
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser, lab):
    context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1)
    try:
        yield context.new_page()
    finally:
        context.close()
        # each test opens its own notebook: end its kernel before the next one
        for kernel in lab.kernels():
            lab.api(f"kernels/{kernel['id']}", method="DELETE")

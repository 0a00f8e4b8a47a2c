"""The rating widget in a real browser: JupyterLab on 127.0.0.1 (token), headless Debian
chromium driven by Playwright. Rates one sample with the mouse and one with the key box,
checks the CSV rows and the "saved" confirmation, checks the layout at 1366x768, and
saves screenshots to build/ui/ (``$VGUTILS_UI_SCREENSHOTS`` moves them).

Run with ``make test-ui`` (needs ``apt-get install chromium`` and the ``ui`` extra);
excluded from ``make test``.
"""

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.ui

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("VGUTILS_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = Path(os.environ.get("VGUTILS_UI_SCREENSHOTS", REPO / "build" / "ui"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1366, "height": 768}

RATE_NOTEBOOK = """\
import numpy as np
from PIL import Image, ImageDraw

from vgutils.data.rows import Sample
from vgutils.ratings import RatingApp

scan = Image.new("L", (640, 512), 10)
draw = ImageDraw.Draw(scan)
draw.ellipse((60, 40, 580, 470), fill=90)
draw.ellipse((150, 120, 330, 300), fill=140)
draw.ellipse((230, 190, 270, 230), fill=60)
scan.convert("RGB").save("scan.png")
questions = [
    ("attribute", "Is the lesion in the liver hypodense?", [225, 185, 275, 235]),
    ("localization", "Where is the liver?", [150, 120, 330, 300]),
    ("attribute", "Is the outline of the body smooth?", [60, 40, 580, 470]),
]
samples = [
    Sample(id=f"ui-{i}", image_path="scan.png", question=q, boxes=np.array([box], float),
           q_type=t)
    for i, (t, q, box) in enumerate(questions)
]
app = RatingApp(samples, "ratings.csv", rater="dr-ui")
app.widget
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _notebook(path: Path, source: str) -> None:
    cell = {
        "cell_type": "code",
        "execution_count": None,
        "id": "rate",
        "metadata": {},
        "outputs": [],
        "source": source,
    }
    notebook = {
        "cells": [cell],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path.write_text(json.dumps(notebook))


@pytest.fixture(scope="module")
def lab():
    """A JupyterLab server on loopback with a token, in a fresh folder; yields
    ``(base_url, token, root)``."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install -y chromium)")
    pytest.importorskip("playwright.sync_api")
    root = Path(tempfile.mkdtemp(prefix="vgutils-ui-"))
    for name in ("config", "runtime", "home", "lab"):
        (root / name).mkdir()
    work = root / "lab"
    _notebook(work / "rate.ipynb", RATE_NOTEBOOK)
    executed = REPO / "build" / "default" / "notebooks" / "02_layer_curves.ipynb"
    if executed.exists():
        shutil.copy(executed, work / "02_layer_curves.ipynb")
    port, token = _free_port(), secrets.token_hex(16)
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(root / "config"),
        "JUPYTER_RUNTIME_DIR": str(root / "runtime"),
        "JUPYTERLAB_WORKSPACES_DIR": str(root / "config" / "workspaces"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    log = (root / "server.log").open("w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={work}",
            "--LabApp.news_url=",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ]
        + (["--allow-root"] if os.geteuid() == 0 else []),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail("JupyterLab did not start:\n" + (root / "server.log").read_text())
            time.sleep(0.5)
    try:
        yield base, token, work
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def browser_page(lab):
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="vgutils-chromium-")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport=VIEWPORT,
        )
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()
            shutil.rmtree(profile, ignore_errors=True)


def _dismiss_news(page):
    """JupyterLab's "official Jupyter news?" toast covers the lower right corner."""
    button = page.locator(".jp-toast-button", has_text="No")
    if button.count():
        button.first.click()


def _run_all(page, selector: str):
    """Run the first cell (the toolbar's run button) until ``selector`` shows; the kernel
    may start slowly on a loaded machine, so one retry."""
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
    for attempt in range(2):
        page.wait_for_selector(
            ".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=90_000
        )
        page.locator(".jp-Notebook .jp-Cell").first.click()
        page.locator("[data-command='notebook:run-cell-and-select-next']").first.click()
        try:
            return page.wait_for_selector(selector, timeout=60_000 * (attempt + 1))
        except Exception:
            if attempt:
                raise
    return None


def test_rating_widget_in_a_browser(lab, browser_page):
    base, token, work = lab
    page = browser_page
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    page.goto(f"{base}/lab/tree/rate.ipynb?token={token}")
    app = _run_all(page, ".vg-rating-app")
    _dismiss_news(page)
    page.wait_for_timeout(500)
    # collapse the code so the card is what the rater sees
    page.click(".jp-Notebook .jp-Cell .jp-InputCollapser")
    app.scroll_into_view_if_needed()
    page.screenshot(path=SCREENSHOTS / "rating_app.png")

    # layout at 1366x768: image left, at most 480 px wide, controls to its right, Submit
    # visible without scrolling past the image
    image = page.locator(".vg-rating-app img").first.bounding_box()
    submit = page.get_by_role("button", name="Submit").bounding_box()
    assert image["width"] <= 480 and image["height"] <= 480, image
    assert submit["x"] >= image["x"] + image["width"], (image, submit)
    assert submit["y"] + submit["height"] <= VIEWPORT["height"], submit

    # mouse: one rating per axis, Submit
    for axis, value in (("clinical_relevance", 5), ("visual_grounding", 4)):
        page.locator(f".vg-axis-{axis} button", has_text=str(value)).click()
    page.locator(".vg-axis-semantic_grounding button", has_text="3").click()
    page.get_by_role("button", name="Submit").click()
    saved = page.locator(".vg-saved", has_text="saved ui-0: 5 / 4 / 3")
    saved.wait_for(timeout=30_000)
    page.screenshot(path=SCREENSHOTS / "rating_app_saved.png")
    rows = (work / "ratings.csv").read_text().splitlines()
    assert rows[0].startswith("sample_id,q_type,rater,clinical_relevance")
    assert rows[1].startswith("ui-0,attribute,dr-ui,5,4,3,")

    # keyboard: three digits in the key box, Enter
    page.locator(".vg-keys input").click()
    page.keyboard.type("344")
    page.wait_for_timeout(500)
    page.screenshot(path=SCREENSHOTS / "rating_app_keys.png")
    page.keyboard.press("Enter")
    page.locator(".vg-saved", has_text="saved ui-1: 3 / 4 / 4").wait_for(timeout=30_000)
    rows = (work / "ratings.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[2].startswith("ui-1,localization,dr-ui,3,4,4,")

    # back to the first sample: the earlier choice is shown
    page.get_by_role("button", name="Previous").click()
    page.get_by_role("button", name="Previous").click()
    page.locator(".vg-rating-app", has_text="(ui-0) (rated before").wait_for(timeout=30_000)
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']")
    chosen = page.locator(".vg-axis-clinical_relevance button.mod-active")
    assert chosen.inner_text().strip() == "5"
    page.screenshot(path=SCREENSHOTS / "rating_app_back.png")
    print(f"rating widget driven in {time.monotonic() - started:.1f} s")


def test_executed_notebook_shows_its_figure(lab, browser_page):
    base, token, work = lab
    if not (work / "02_layer_curves.ipynb").exists():
        pytest.skip("no build/default/notebooks/02_layer_curves.ipynb (run make figures)")
    page = browser_page
    page.goto(f"{base}/lab/tree/02_layer_curves.ipynb?token={token}")
    figure = page.locator(".jp-OutputArea-output img").first
    figure.wait_for(timeout=60_000)
    figure.scroll_into_view_if_needed()
    page.wait_for_timeout(500)
    page.screenshot(path=SCREENSHOTS / "executed_02_layer_curves.png")
    assert figure.bounding_box()["width"] > 300

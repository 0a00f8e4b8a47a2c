"""The rating widget in a real browser: JupyterLab as ``make lab`` starts it (the lab/
config) on a git copy, on 127.0.0.1 (token), headless Debian chromium driven by
Playwright. Rates one sample with the mouse and one with the key box; checks the CSV rows
(under the results root, none beside the notebook) and the "saved" confirmation; the
layout at 1366x768 (a large and a 40 x 32 image shown at one size with sharp pixels, the
controls in the same place from sample to sample); the chosen rating (a filled blue
button and a "selected: ..." line); and that saving the run notebook leaves ``git
status`` clean. Saves screenshots to build/ui/ (``$VGUTILS_UI_SCREENSHOTS`` moves them).

Run with ``make test-ui`` (needs ``apt-get install chromium`` and the ``ui`` extra);
excluded from ``make test``.
"""

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from lab_server import git, running_lab

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
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from vgutils.data.rows import Sample
from vgutils.ratings import RatingApp

images = Path(tempfile.mkdtemp(prefix="vgutils-ui-images-"))  # nothing beside the notebook
scan = Image.new("L", (640, 512), 10)
draw = ImageDraw.Draw(scan)
draw.ellipse((60, 40, 580, 470), fill=90)
draw.ellipse((150, 120, 330, 300), fill=140)
draw.ellipse((230, 190, 270, 230), fill=60)
scan.convert("RGB").save(images / "scan.png")
scan.convert("RGB").resize((40, 32)).save(images / "small.png")  # a small image
questions = [
    ("attribute", "Is the lesion in the liver hypodense?", [225, 185, 275, 235], "scan.png"),
    ("localization", "Where is the liver?", [9, 7, 21, 19], "small.png"),
    ("attribute", "Is the outline of the body smooth?", [60, 40, 580, 470], "scan.png"),
]
samples = [
    Sample(id=f"ui-{i}", image_path=images / name, question=q,
           boxes=np.array([box], float), q_type=t)
    for i, (t, q, box, name) in enumerate(questions)
]
app = RatingApp(samples, "ratings.csv", rater="dr-ui")
app.widget
"""
CONTROLS = (
    ".vg-axis-clinical_relevance",
    ".vg-axis-semantic_grounding",
    ".vg-keys",
)
"""Parts of the control bar whose place must not change from one sample to the next."""
SELECTED_RGB = "rgb(0, 114, 178)"  # Okabe-Ito blue: vgutils.ratings.SELECTED
RUN_ALL = "05_clinician_ratings.ipynb"
"""A committed notebook that runs in seconds: Run All, save, and git sees no change."""


def _notebook(path: Path, source: str) -> None:
    """A one-cell notebook, written as Jupyter writes it (nbformat's layout)."""
    import nbformat

    cell = nbformat.v4.new_code_cell(source, id="rate")
    notebook = nbformat.v4.new_notebook(
        cells=[cell],
        metadata={
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"},
        },
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, path)


@pytest.fixture(scope="module")
def lab():
    """JupyterLab as ``make lab`` starts it (``--config=lab/jupyter_server_config.py``:
    the tree is the repository, saves under notebooks/ are stripped), on loopback with a
    token, on a git copy of the repository's layout (lab/, .gitignore, notebooks/rate.ipynb
    committed; build/default/notebooks/ with an executed notebook when there is one; the
    results root at results/); yields ``(base_url, token, repo)``."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install -y chromium)")
    pytest.importorskip("playwright.sync_api")
    root = Path(tempfile.mkdtemp(prefix="vgutils-ui-"))
    repo = root / "repo"
    shutil.copytree(REPO / "lab", repo / "lab", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / ".gitignore", repo / ".gitignore")
    _notebook(repo / "notebooks" / "rate.ipynb", RATE_NOTEBOOK)
    shutil.copy(REPO / "notebooks" / RUN_ALL, repo / "notebooks" / RUN_ALL)
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "-c", "user.name=ui", "-c", "user.email=ui@test", "commit", "-qm", "copy")
    executed = REPO / "build" / "default" / "notebooks" / "02_layer_curves.ipynb"
    if executed.exists():
        (repo / "build" / "default" / "notebooks").mkdir(parents=True)
        shutil.copy(executed, repo / "build" / "default" / "notebooks")
    env = {
        "VGUTILS_RESULTS": str(repo / "results"),  # a clone's results root
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    try:
        with running_lab(repo, root, env) as (base, token):
            yield base, token, repo
    finally:
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
        dialog = page.locator(".jp-Dialog")
        if dialog.count():  # e.g. a kernel that died on a loaded machine: say what it says
            page.screenshot(path=SCREENSHOTS / "dialog.png")
            pytest.fail(f"JupyterLab dialog: {dialog.first.inner_text()!r}")
        page.locator(".jp-Notebook .jp-Cell").first.click()
        page.locator("[data-command='notebook:run-cell-and-select-next']").first.click()
        try:
            return page.wait_for_selector(selector, timeout=60_000 * (attempt + 1))
        except Exception:
            if attempt:
                raise
    return None


def _boxes(page) -> dict:
    """Where the image and the control bar's parts are on screen."""
    return {
        "image": page.locator(".vg-rating-app img.vg-image").first.bounding_box(),
        "submit": page.get_by_role("button", name="Submit").bounding_box(),
        **{name: page.locator(name).first.bounding_box() for name in CONTROLS},
    }


def _image_pixels(page) -> dict:
    return page.eval_on_selector(
        ".vg-rating-app img.vg-image",
        "img => ({natural: [img.naturalWidth, img.naturalHeight],"
        " rendering: getComputedStyle(img).imageRendering})",
    )


def _same_place(first: dict, second: dict) -> None:
    for name, box in first.items():
        other = second[name]
        assert all(abs(box[k] - other[k]) < 1 for k in ("x", "y", "width", "height")), (
            name,
            box,
            other,
        )


def test_rating_widget_in_a_browser(lab, browser_page):
    base, token, repo = lab
    page = browser_page
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    page.goto(f"{base}/lab/tree/notebooks/rate.ipynb?token={token}")
    app = _run_all(page, ".vg-rating-app")
    _dismiss_news(page)
    page.wait_for_timeout(500)
    # collapse the code so the card is what the rater sees
    page.click(".jp-Notebook .jp-Cell .jp-InputCollapser")
    app.scroll_into_view_if_needed()
    page.locator(".vg-rating-app", has_text="(ui-0)").wait_for(timeout=30_000)
    page.screenshot(path=SCREENSHOTS / "rating_app.png")

    # layout at 1366x768: image left, at most 480 px wide, controls to its right, Submit
    # visible without scrolling past the image; the image drawn with its pixels
    large = _boxes(page)
    image, submit = large["image"], large["submit"]
    assert image["width"] <= 480 and image["height"] <= 480, image
    assert submit["x"] >= image["x"] + image["width"], (image, submit)
    assert submit["y"] + submit["height"] <= VIEWPORT["height"], submit
    pixels = _image_pixels(page)
    assert pixels["rendering"] == "pixelated" and max(pixels["natural"]) == 460, pixels

    # a click: the chosen rating is a filled blue button and said in words
    page.locator(".vg-axis-clinical_relevance button", has_text="5").click()
    chosen = page.locator(".vg-axis-clinical_relevance button.mod-active")
    chosen.wait_for(timeout=30_000)
    assert chosen.inner_text().strip() == "5"
    colour = chosen.evaluate("b => getComputedStyle(b).backgroundColor")
    assert colour == SELECTED_RGB, colour
    page.locator(
        ".vg-selected-clinical_relevance", has_text="selected: 5 — highly relevant and valid"
    ).wait_for(timeout=30_000)
    assert "none yet" in page.locator(".vg-selected-visual_grounding").inner_text()
    page.screenshot(path=SCREENSHOTS / "rating_app_selected.png")

    # mouse: the other two axes, Submit; the file is under the results root
    page.locator(".vg-axis-visual_grounding button", has_text="4").click()
    page.locator(".vg-axis-semantic_grounding button", has_text="3").click()
    page.get_by_role("button", name="Submit").click()
    saved = page.locator(".vg-saved", has_text="saved ui-0: 5 / 4 / 3")
    saved.wait_for(timeout=30_000)
    page.screenshot(path=SCREENSHOTS / "rating_app_saved.png")
    ratings = repo / "results" / "ratings" / "ratings.csv"
    rows = ratings.read_text().splitlines()
    assert rows[0].startswith("sample_id,q_type,rater,clinical_relevance")
    assert rows[1].startswith("ui-0,attribute,dr-ui,5,4,3,")
    assert not (repo / "notebooks" / "ratings.csv").exists()

    # the next sample has a 40 x 32 image: shown at the same size, the controls in place
    page.locator(".vg-rating-app", has_text="(ui-1)").wait_for(timeout=30_000)
    page.wait_for_timeout(500)
    small = _boxes(page)
    _same_place(large, small)
    assert max(_image_pixels(page)["natural"]) == 460
    page.screenshot(path=SCREENSHOTS / "rating_app_small_image.png")

    # keyboard: three digits in the key box, Enter
    page.locator(".vg-keys input").click()
    page.keyboard.type("344")
    page.wait_for_timeout(500)
    page.screenshot(path=SCREENSHOTS / "rating_app_keys.png")
    page.keyboard.press("Enter")
    page.locator(".vg-saved", has_text="saved ui-1: 3 / 4 / 4").wait_for(timeout=30_000)
    rows = ratings.read_text().splitlines()
    assert len(rows) == 3 and rows[2].startswith("ui-1,localization,dr-ui,3,4,4,")

    # back to the first sample: the earlier choice is shown, in words too
    page.get_by_role("button", name="Previous").click()
    page.get_by_role("button", name="Previous").click()
    page.locator(".vg-rating-app", has_text="(ui-0) (rated before").wait_for(timeout=30_000)
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']")
    chosen = page.locator(".vg-axis-clinical_relevance button.mod-active")
    assert chosen.inner_text().strip() == "5"
    assert "selected: 3 — broad pathology categories" in (
        page.locator(".vg-selected-semantic_grounding").inner_text()
    )
    _same_place(large, _boxes(page))
    page.screenshot(path=SCREENSHOTS / "rating_app_back.png")

    # save the run notebook: written without outputs, and git sees no change at all
    committed = repo / "notebooks" / "rate.ipynb"
    _save(page, committed)
    on_disk = json.loads(committed.read_text())
    assert all(not c["outputs"] for c in on_disk["cells"]), on_disk
    status = git(repo, "status", "--porcelain", "--untracked-files=all")
    assert status == "", status + git(repo, "diff")
    print(f"rating widget driven in {time.monotonic() - started:.1f} s")


def _save(page, path: Path) -> None:
    """Click the notebook's save button and wait until ``path`` is written."""
    before = path.stat().st_mtime_ns
    page.locator("[data-command='docmanager:save']").first.click()
    deadline = time.monotonic() + 30
    while path.stat().st_mtime_ns == before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert path.stat().st_mtime_ns != before, f"{path.name} was not saved"


def test_committed_notebook_run_all_and_saved_leaves_git_clean(lab, browser_page):
    base, token, repo = lab
    page = browser_page
    # a fresh workspace: only this notebook open (not the rating one of the other test)
    page.goto(f"{base}/lab/workspaces/run-all/tree/notebooks/{RUN_ALL}?token={token}&reset")
    page.locator(".jp-Notebook .jp-Cell", has_text="Table 1 and Fig 6").first.wait_for(
        timeout=90_000
    )
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=90_000)
    _dismiss_news(page)
    page.locator(".lm-MenuBar-item", has_text="Run").first.click()
    page.get_by_role("menuitem", name="Run All Cells").first.click()
    # its two figures (Table 1 and the rating card) shown inline, the kernel idle again
    page.wait_for_function(
        "document.querySelectorAll('.jp-OutputArea-output img').length >= 2", timeout=180_000
    )
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=90_000)
    page.screenshot(path=SCREENSHOTS / "run_all_05.png")
    _save(page, repo / "notebooks" / RUN_ALL)
    status = git(repo, "status", "--porcelain", "--untracked-files=all")
    assert status == "", status + git(repo, "diff")


def test_executed_notebook_shows_its_figure(lab, browser_page):
    base, token, repo = lab
    executed = "build/default/notebooks/02_layer_curves.ipynb"
    if not (repo / executed).exists():
        pytest.skip("no build/default/notebooks/02_layer_curves.ipynb (run make figures)")
    page = browser_page
    page.goto(f"{base}/lab/tree/{executed}?token={token}")
    figure = page.locator(".jp-OutputArea-output img").first
    figure.wait_for(timeout=60_000)
    figure.scroll_into_view_if_needed()
    page.wait_for_timeout(500)
    page.screenshot(path=SCREENSHOTS / "executed_02_layer_curves.png")
    assert figure.bounding_box()["width"] > 300

"""Figures inside executed notebooks: plots.show, the profile a notebook picks, and the
check that `make figures` runs over build/<profile>/notebooks."""

import json
from pathlib import Path

import matplotlib.pyplot as plt
import pytest

from vgutils import notebook, plots
from vgutils.errors import UsageError

NOTEBOOKS = sorted(Path(__file__).parent.parent.glob("notebooks/[0-9][0-9]_*.ipynb"))


def test_show_displays_one_png_and_closes_the_figure(monkeypatch):
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda obj: shown.append(obj))
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    plots.show(fig)
    assert len(shown) == 1
    assert shown[0].data[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plt.fignum_exists(fig.number)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_show_what_they_save_and_default_to_the_default_profile(path):
    code = [
        "".join(c["source"])
        for c in json.loads(path.read_text())["cells"]
        if c["cell_type"] == "code"
    ]
    source = "\n".join(code)
    assert source.count("save_figure(") <= source.count("plots.show(")
    assert 'profile = "default"' in source
    assert "notebook.setup(profile)" in source


def test_the_environment_picks_the_profile(monkeypatch):
    monkeypatch.delenv("VGUTILS_PROFILE", raising=False)
    assert notebook.resolve_profile("default") == "default"
    monkeypatch.setenv("VGUTILS_PROFILE", "smoke")
    assert notebook.resolve_profile("default") == "smoke"
    monkeypatch.setenv("VGUTILS_PROFILE", "bogus")
    with pytest.raises(UsageError, match="bogus"):
        notebook.resolve_profile("default")


def _executed(path, saves, pngs):
    cells = [
        {
            "cell_type": "code",
            "source": ["plots.save_figure(fig, profile, 'x')\n"] * saves,
            "outputs": [{"output_type": "display_data", "data": {"image/png": "iVBO"}}] * pngs
            + [{"output_type": "execute_result", "data": {"text/plain": "<Figure>"}}],
        }
    ]
    path.write_text(json.dumps({"cells": cells}))


def test_check_executed(tmp_path, capsys):
    _executed(tmp_path / "01_ok.ipynb", saves=2, pngs=2)
    assert notebook.check_executed(tmp_path) == []
    assert notebook.main(["check", str(tmp_path)]) == 0
    _executed(tmp_path / "02_text_only.ipynb", saves=1, pngs=0)
    problems = notebook.check_executed(tmp_path)
    assert len(problems) == 1 and "02_text_only.ipynb: 0 PNG output(s) for 1 saved" in problems[0]
    assert notebook.main(["check", str(tmp_path)]) == 1
    assert notebook.check_executed(tmp_path / "empty")  # no notebooks is a problem

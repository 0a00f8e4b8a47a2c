"""Committed notebooks are reviewable: no outputs, one literal-only parameters cell."""

import ast
import json
from pathlib import Path

import pytest

from vgutils.jobs import PARAMS_DIR, load_profile, profile_jobs

NOTEBOOKS = sorted(Path(__file__).parent.parent.glob("notebooks/[0-9][0-9]_*.ipynb"))


def test_there_are_figure_notebooks():
    assert len(NOTEBOOKS) >= 3


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_clean(path):
    cells = json.loads(path.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert all(not c["outputs"] and c["execution_count"] is None for c in code)
    parameters = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(parameters) == 1
    tree = ast.parse("".join(parameters[0]["source"]))
    for node in tree.body:
        assert isinstance(node, ast.Assign)
        ast.literal_eval(node.value)  # literals only
    assert cells[0]["cell_type"] == "markdown"


@pytest.mark.parametrize("profile", sorted(p.stem for p in PARAMS_DIR.glob("*.yaml")))
def test_profiles_have_the_jobs_their_figures_need(profile):
    settings = load_profile(profile)
    plain = (settings.get("protocol", "corrected"), None, ())  # the figures' own jobs
    jobs = {
        (j.model, j.dataset, j.strategy): j for j in profile_jobs(settings) if j.setting == plain
    }
    maps = settings["layer_maps"]
    for panel in maps.get("panels") or [maps]:  # panels: one figure, several model groups
        for model in panel["models"]:
            for dataset in panel["samples"]:
                assert jobs[(model, dataset, "last")].save_maps
    curves = settings["curves"]
    for model in curves["models"]:
        for domain in ("medical", "natural"):
            names = curves[domain] if isinstance(curves[domain], list) else [curves[domain]]
            for dataset in names:
                assert (model, dataset, "last") in jobs
    for model in settings["strategies"]["models"]:
        for dataset in settings["strategies"]["datasets"]:
            for strategy in ("last", "question", "all"):
                assert (model, dataset, strategy) in jobs

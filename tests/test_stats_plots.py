"""Summaries and figures on small hand-made frames."""

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest

from vgutils import plots
from vgutils.geometry import TokenLayout
from vgutils.stats import best_layers, bootstrap_ci, domain_difference, layer_curves


def test_bootstrap_ci_brackets_the_mean_and_degenerates():
    mean, low, high = bootstrap_ci(np.array([1.0, 2.0, 3.0, 4.0]), n_boot=500)
    assert mean == 2.5 and 1.0 <= low < mean < high <= 4.0
    assert bootstrap_ci(np.array([7.0])) == (7.0, 7.0, 7.0)
    assert bootstrap_ci(np.array([2.0, 2.0, 2.0]))[1:] == (2.0, 2.0)


def frame():
    rows = []
    for sample, domain in ((0, "medical"), (1, "medical"), (2, "natural"), (3, "natural")):
        for layer in range(3):
            kl = 1.0 - 0.3 * (layer == 1) if domain == "natural" else 1.0 + 0.1 * layer
            rows.append(
                {
                    "sample_id": sample,
                    "domain": domain,
                    "model": "m",
                    "layer": layer,
                    "q_type": "localization",
                    "kl": kl + 0.01 * sample,
                    "attention_ratio": 2.0 - kl,
                    "js": kl / 3,
                }
            )
    return pd.DataFrame(rows)


def test_best_layers_respects_metric_direction():
    best = best_layers(frame(), "kl", ["domain"]).set_index("domain")
    assert best.loc["natural", "best_layer"] == 1
    assert best.loc["medical", "best_layer"] == 0
    ratio = best_layers(frame(), "attention_ratio", ["domain"]).set_index("domain")
    assert ratio.loc["natural", "best_layer"] == 1


def test_domain_difference():
    result = domain_difference(frame(), "kl", layer=1)
    assert result["n_medical"] == 2 and result["n_natural"] == 2
    assert result["mean_natural"] == pytest.approx(0.725)
    assert result["cliffs_delta"] == -1.0  # every natural KL is below every medical one


def test_layer_curves_shape():
    curves = layer_curves(frame(), "kl", ["domain"], n_boot=100)
    assert len(curves) == 6 and {"mean", "low", "high", "n"} <= set(curves.columns)


def test_token_heatmap_follows_the_layout():
    layout = TokenLayout.from_region(2, 2, (-10, 0, 30, 40), (20, 40))  # padded left/right
    heat = plots.token_heatmap(np.array([1.0, 2.0, 3.0, 4.0]), layout)
    assert heat.shape == (40, 20)
    assert heat[0, 0] == 1.0 and heat[0, 19] == 2.0 and heat[39, 0] == 3.0
    cropped = TokenLayout.from_region(1, 1, (0, 10, 20, 30), (20, 40))
    assert np.isnan(plots.token_heatmap(np.array([5.0]), cropped)[0, 0])


def test_layer_maps_figure_marks_min_kl_layer():
    from PIL import Image

    layout = TokenLayout.from_grid(2, 2, (16, 16))
    kl = np.array([0.9, 0.8, 0.2, 0.7, 0.6, 0.95])
    row = {
        "title": "t",
        "image": Image.new("RGB", (16, 16)),
        "maps": np.ones((6, 4)),
        "layout": layout,
        "boxes": np.array([[0, 0, 8, 8]]),
        "kl": kl,
    }
    fig = plots.layer_maps_figure([row], count=3)
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert "layer 2 (min KL)" in titles
    marked = [ax for ax in fig.axes if ax.get_gid() == "best-layer"]
    assert len(marked) == 1 and marked[0].get_title() == "layer 2 (min KL)"


def test_layer_curves_figure_labels_and_best_layer():
    from vgutils.figdata import curves

    data = frame()
    long = curves(data, by=["model", "domain", "q_type"], n_boot=50)
    fig = plots.layer_curves_figure(long, caption="c")
    assert len(fig.axes) == 3
    kl_axis = fig.axes[1]
    assert "KL" in kl_axis.get_ylabel() and kl_axis.get_xlabel() == "layer"
    natural = next(line for line in kl_axis.lines if line.get_gid() == "best-kl-natural")
    assert natural.get_xdata()[0] == 1


def test_strategy_figure_has_one_line_per_strategy():
    from vgutils.figdata import curves

    data = pd.concat([frame().assign(strategy=s) for s in ("last", "question", "all")])
    long = curves(data, by=["model", "domain", "strategy"], n_boot=20)
    fig = plots.strategy_curves_figure(long)
    assert len(fig.axes) == 6  # (model, domain) rows x 3 metrics
    assert len(fig.axes[0].lines) >= 3


def test_model_labels_use_the_papers_names():
    from vgutils.plots import model_label

    assert model_label("FreedomIntelligence/HuatuoGPT-Vision-7B") == "HuatuoGPT-Vision-7B"
    assert model_label("UCSC-VLAA/LLaVA-Med-pp/SLAKE") == "LLaVA-Tri (SLAKE)"
    assert model_label("Luxuriant16/medrega") == "MedRegA"
    assert model_label("org/name/sub") == "name/sub"
    assert model_label("/tmp/models/tiny-llava") == "tiny-llava"

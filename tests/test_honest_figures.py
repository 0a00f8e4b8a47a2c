"""Figures that do not mislead: shared scales for the control and the trained model, one
stated colour scale for the maps, every mark in the legend, fig05 in a fixed order with
value labels, and the box-size offset of KL computed from the data."""

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
from PIL import Image

from vgutils import figdata, plots
from vgutils.geometry import TokenLayout
from vgutils.ratings import published_table1


def metrics(model, peak, rng):
    rows = []
    for sample, domain in ((0, "medical"), (1, "medical"), (2, "natural"), (3, "natural")):
        for layer in range(3):
            ratio = 1 + (peak - 1) * (layer == 1) + rng.normal(0, 0.001)
            rows.append(
                {
                    "sample_id": f"{domain}{sample}",
                    "domain": domain,
                    "model": model,
                    "layer": layer,
                    "q_type": "localization",
                    "attention_ratio": ratio,
                    "kl": (2.0 if domain == "medical" else 1.0) / ratio,
                    "js": 0.3 / ratio,
                    "n_tokens": 64,
                    "n_gt_tokens": 4 if domain == "medical" else 16,
                }
            )
    return pd.DataFrame(rows)


def test_control_shares_the_trained_models_scale_and_noise_looks_flat():
    rng = np.random.default_rng(0)
    data = pd.concat([metrics("trained", 3.5, rng), metrics("control", 1.0, rng)])
    long = figdata.curves(data, by=["model", "domain", "q_type"], n_boot=50)
    fig = plots.layer_curves_figure(long)
    trained_ratio, control_ratio = fig.axes[0], fig.axes[3]
    assert trained_ratio.get_ylim() == control_ratio.get_ylim()
    only_control = figdata.curves(
        metrics("control", 1.0, rng), by=["model", "domain", "q_type"], n_boot=50
    )
    fig = plots.layer_curves_figure(only_control)
    for ax, metric in zip(fig.axes, ("attention_ratio", "kl", "js"), strict=True):
        low, high = ax.get_ylim()
        assert high - low >= plots.MIN_SPAN[metric] - 1e-9 and low >= 0
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert plots.BAND_LABEL in labels and plots.BEST_KL_LABEL in labels


def test_strategy_rows_share_a_scale_per_metric():
    rng = np.random.default_rng(1)
    data = pd.concat(
        [
            metrics(m, p, rng).assign(strategy=s)
            for m, p in (("a", 3.0), ("b", 1.0))
            for s in ("last", "all")
        ]
    )
    long = figdata.curves(data, by=["model", "domain", "strategy"], n_boot=20)
    fig = plots.strategy_curves_figure(long)
    ratio_axes = fig.axes[0::3]
    assert len({ax.get_ylim() for ax in ratio_axes}) == 1
    assert plots.BAND_LABEL in [t.get_text() for t in fig.legends[0].get_texts()]


def test_layer_maps_one_colour_scale_with_a_colour_bar():
    layout = TokenLayout.from_grid(2, 2, (16, 16))

    def row(maps):
        return {
            "title": "t",
            "image": Image.new("RGB", (16, 16)),
            "maps": maps,
            "layout": layout,
            "boxes": np.array([[0, 0, 8, 8]]),
            "kl": np.array([0.9, 0.2, 0.7]),
        }

    peaked = np.array([[1, 1, 1, 1], [8, 1, 1, 1], [2, 1, 1, 1]], dtype=float)
    fig = plots.layer_maps_figure([row(np.ones((3, 4))), row(peaked * 5)], count=3)
    limits = {
        im.get_clim() for ax in fig.axes for im in ax.get_images() if im.get_cmap().name == "magma"
    }
    assert len(limits) == 1
    vmin, vmax = limits.pop()
    assert vmin == 0 and vmax >= 2
    bars = [ax for ax in fig.axes if "one scale for all panels" in ax.get_xlabel()]
    assert len(bars) == 1 and plots.MAP_SCALE_LABEL in bars[0].get_xlabel()
    np.testing.assert_allclose(plots.map_share(np.ones(4)), 1.0)  # flat = uniform share


def test_table1_figure_fixed_order_and_labels():
    published = published_table1()
    fig = plots.table1_figure({"a": published, "b": published.iloc[::-1]})
    left, right = fig.axes[:2]
    # the reversed table is drawn in the same fixed order: row 0 = attribute, clinical
    assert left.patches[0].get_width() == right.patches[0].get_width() == 3.31
    assert left.get_yticklabels()[0].get_text() == "attribute · Clinical Relevance"
    texts = [t.get_text() for t in left.texts]
    assert "93%" in texts and "84%" in texts
    assert fig.legends and not left.get_legend()  # legend outside the data


def test_chance_kl_is_log_n_over_k():
    data = metrics("control", 1.0, np.random.default_rng(2))
    table = figdata.chance_kl(data).set_index("domain")
    np.testing.assert_allclose(table.loc["medical", "chance"], np.log(64 / 4))
    np.testing.assert_allclose(table.loc["natural", "box_share"], 16 / 64)
    text = figdata.describe_chance_kl(data)
    assert "log(N/k) = 2.77" in text and "log(N/k) = 1.39" in text


def test_protocol_curves_of_a_flat_ratio_are_drawn_on_a_chance_scale():
    """Fig 7's per-layer panels: a random model's ratio (1 +- 1e-3) must not fill the axis."""
    import matplotlib.pyplot as plt
    import pandas as pd

    from vgutils.plots import _protocol_curves

    frame = pd.DataFrame(
        {
            "metric": "attention_ratio",
            "setting": ["corrected"] * 3 + ["authors"] * 3,
            "layer": [0, 1, 2] * 2,
            "mean": [1.0003, 0.9995, 1.0001, 0.9998, 0.9996, 1.0005],
            "low": [0.999] * 6,
            "high": [1.001] * 6,
        }
    )
    fig, ax = plt.subplots()
    _protocol_curves(ax, frame, "attention_ratio", "(d)")
    low, high = ax.get_ylim()
    plt.close(fig)
    assert high - low >= 1.0 and low <= 1.0 <= high

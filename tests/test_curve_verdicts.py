"""Notebooks 02's and 04's "What the numbers say" (:func:`vgutils.figdata.describe_curves`,
:func:`~vgutils.figdata.describe_strategies`) on hand-made tables: results that go
against the paper's claim are said to, plainly."""

import numpy as np
import pandas as pd

from vgutils import figdata


def curve_metrics(
    natural_ratio,
    medical_ratio,
    natural_kl=(1.0, 0.2, 0.8),
    medical_kl=(1.0, 0.9, 1.1),
    ratio_at=(1,),
    low_ratio=1.0,
    n=12,
):
    """Hand-made per-sample metrics of model ``m``: per domain three layers; the ratio is
    ``*_ratio`` at the layers in ``ratio_at`` and ``low_ratio`` elsewhere; KL per layer
    as given; small noise so the test has spread."""
    rng = np.random.default_rng(0)
    rows = []
    for domain, ratio, kls in (
        ("natural", natural_ratio, natural_kl),
        ("medical", medical_ratio, medical_kl),
    ):
        for sample in range(n):
            for layer in range(3):
                rows.append(
                    {
                        "model": "m",
                        "domain": domain,
                        "sample_id": f"{domain}-{sample}",
                        "layer": layer,
                        "attention_ratio": (ratio if layer in ratio_at else low_ratio)
                        + rng.normal(0, 0.01),
                        "kl": kls[layer] + rng.normal(0, 0.01),
                        "js": kls[layer] / 2,
                    }
                )
    return pd.DataFrame(rows)


def test_curves_that_support_the_claim_say_so():
    summary = figdata.summary_table(curve_metrics(natural_ratio=3.0, medical_ratio=1.1))
    text = figdata.describe_curves(summary)
    assert "4 of 4 comparisons go the paper's way, none against" in text
    assert "**against" not in text
    assert "higher on natural images (3.00 vs 1.10 medical), as the paper claims" in text
    assert "above chance (3.00)" in text
    assert "significantly lower on natural images, as claimed" in text


def test_curves_against_the_claim_say_so_plainly():
    # the natural domain's lowest-KL layer (0) gets a ratio below chance; the medical
    # domain's lowest KL is lower than the natural one's; its best ratio is higher
    metrics = curve_metrics(
        natural_ratio=1.5,
        medical_ratio=2.0,
        natural_kl=(0.5, 0.9, 0.9),
        medical_kl=(0.3, 0.2, 0.4),
        ratio_at=(1, 2),
        low_ratio=0.6,
    )
    text = figdata.describe_curves(figdata.summary_table(metrics))
    assert "4 of 4 comparisons go **against** the paper's claim, none for it" in text
    assert "the best-layer ratio is **not** higher on natural images (1.50 vs 2.00" in text
    assert "medical 0.196: the medical domain's is **lower**: **against" in text
    assert "natural ratio is **below chance** (0.60 < 1" in text
    assert "significantly **higher** on natural images" in text
    assert "as the paper claims" not in text


def test_curves_mixed_and_one_domain():
    mixed = curve_metrics(natural_ratio=3.0, medical_ratio=1.1, medical_kl=(0.1, 0.1, 0.1))
    text = figdata.describe_curves(figdata.summary_table(mixed))
    assert "mixed:" in text and "go **against** the claim" in text
    natural_only = mixed[mixed["domain"] == "natural"]
    text = figdata.describe_curves(figdata.summary_table(natural_only))
    assert "one domain only" in text


def test_strategies_say_when_last_is_not_best():
    rows = [
        {
            "model": "m",
            "domain": "natural",
            "strategy": st,
            "metric": "kl",
            "best_layer": 1,
            "best_mean": kl,
        }
        for st, kl in (("last", 0.4), ("question", 0.3), ("all", 0.9))
    ]
    text = figdata.describe_strategies(pd.DataFrame(rows))
    assert "`question` grounds better than `last`: **against the paper's claim**" in text
    rows[0]["best_mean"] = 0.2
    text = figdata.describe_strategies(pd.DataFrame(rows))
    assert "`last` grounds as well as or better than the others, as claimed" in text
    assert "against" not in text


def test_a_control_at_chance_shows_no_contrast():
    # a random model: ratio 1 everywhere, KL = a uniform map's, larger for smaller boxes
    metrics = curve_metrics(
        natural_ratio=1.0,
        medical_ratio=1.0,
        natural_kl=(1.8, 1.8, 1.8),
        medical_kl=(2.1, 2.1, 2.1),
    )
    metrics["n_tokens"] = 49
    metrics["n_gt_tokens"] = np.where(metrics["domain"] == "natural", 8, 6)
    metrics.loc[metrics["domain"] == "natural", "kl"] = np.log(49 / 8)
    metrics.loc[metrics["domain"] == "medical", "kl"] = np.log(49 / 6)
    summary = figdata.summary_table(metrics)
    text = figdata.describe_curves(summary, chance=figdata.chance_kl(metrics))
    assert "no comparison below shows a contrast either way" in text
    assert "the same on both domains (1.00 vs 1.00 medical): no contrast" in text
    assert "at chance (1.00)" in text
    assert "box size alone gives such a difference" in text
    assert "as the paper claims" not in text and "against" not in text.replace(
        "neither for nor against", ""
    )
    # without the uniform map's KL the box-size difference reads as support: said so
    assert "as the paper claims" in figdata.describe_curves(summary)

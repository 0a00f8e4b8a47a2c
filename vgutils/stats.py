"""Summaries of per-layer metrics: bootstrap confidence bands, best layers, a test of the
medical-vs-natural difference."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

LOWER_IS_BETTER = {"kl": True, "js": True, "attention_ratio": False}


def bootstrap_ci(
    values: np.ndarray, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of ``values`` and its percentile bootstrap interval ``(mean, low, high)``.
    One value gives a zero-width interval."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return (np.nan, np.nan, np.nan)
    mean = float(values.mean())
    if len(values) == 1:
        return (mean, mean, mean)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return (mean, float(low), float(high))


def layer_curves(
    metrics: pd.DataFrame, metric: str, by: list[str], n_boot: int = 2000, seed: int = 0
) -> pd.DataFrame:
    """Per layer (and per ``by`` group): ``mean``, ``low``, ``high`` (95% bootstrap over
    samples) and ``n`` of ``metric``."""
    rows = []
    for keys, frame in metrics.groupby([*by, "layer"], sort=True, dropna=False):
        mean, low, high = bootstrap_ci(frame[metric].to_numpy(), n_boot=n_boot, seed=seed)
        rows.append(
            {
                **dict(zip([*by, "layer"], keys, strict=True)),
                "mean": mean,
                "low": low,
                "high": high,
                "n": len(frame),
            }
        )
    return pd.DataFrame(rows)


def best_layers(metrics: pd.DataFrame, metric: str, by: list[str]) -> pd.DataFrame:
    """Per ``by`` group: the layer with the best mean ``metric`` and that mean."""
    means = metrics.groupby([*by, "layer"], dropna=False)[metric].mean().reset_index()
    pick = means.groupby(by, dropna=False)[metric]
    index = pick.idxmin() if LOWER_IS_BETTER[metric] else pick.idxmax()
    return means.loc[index].rename(columns={"layer": "best_layer", metric: "best_mean"})


def domain_difference(metrics: pd.DataFrame, metric: str, layer: int) -> dict:
    """Medical vs natural at ``layer``: means, Mann-Whitney U two-sided p-value (unpaired:
    different samples), and Cliff's delta as effect size (natural minus medical)."""
    at_layer = metrics[metrics["layer"] == layer]
    medical = at_layer.loc[at_layer["domain"] == "medical", metric].to_numpy()
    natural = at_layer.loc[at_layer["domain"] == "natural", metric].to_numpy()
    if len(medical) == 0 or len(natural) == 0:
        return {
            "layer": layer,
            "n_medical": len(medical),
            "n_natural": len(natural),
            "mean_medical": np.nan,
            "mean_natural": np.nan,
            "p_value": np.nan,
            "cliffs_delta": np.nan,
        }
    test = stats.mannwhitneyu(natural, medical, alternative="two-sided")
    delta = 2 * test.statistic / (len(natural) * len(medical)) - 1
    return {
        "layer": layer,
        "n_medical": len(medical),
        "n_natural": len(natural),
        "mean_medical": float(medical.mean()),
        "mean_natural": float(natural.mean()),
        "p_value": float(test.pvalue),
        "cliffs_delta": float(delta),
    }

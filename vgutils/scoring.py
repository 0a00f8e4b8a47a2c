"""From captured per-head attention to per-layer maps and metric rows (docs/METHOD.md)."""

from __future__ import annotations

import numpy as np

from vgutils.metrics import attention_ratio, js_divergence, kl_divergence, normalize_by_generic

GENERIC_FLOOR = 1e-12
"""Generic-prompt weights below this are raised to it before dividing (float underflow)."""

METRICS = ("attention_ratio", "kl", "js")


def normalized(question: np.ndarray, generic: np.ndarray) -> np.ndarray:
    """``question / generic`` element-wise, generic floored at ``GENERIC_FLOOR``."""
    return normalize_by_generic(question, np.maximum(generic, GENERIC_FLOOR))


def head_mean(heads: np.ndarray, dtype: str | None = None, axis: int = -2) -> np.ndarray:
    """Mean over the heads axis, float64. ``dtype`` (e.g. ``"bfloat16"``; the protocols'
    ``attention_precision="model"``): taken in that torch dtype, as the authors' code
    takes it on the model's own attention weights, then widened; ``None``: in float64."""
    if dtype is None or dtype == "float64":
        return np.asarray(heads, dtype=np.float64).mean(axis=axis)
    import torch

    values = torch.from_numpy(np.ascontiguousarray(heads, dtype=np.float32))
    return values.to(getattr(torch, dtype)).mean(dim=axis).double().numpy()


def layer_maps(
    raw_heads: np.ndarray, generic_heads: np.ndarray, mean_dtype: str | None = None
) -> dict[str, np.ndarray]:
    """Layer maps ``(layers, N)``: ``raw`` = mean over heads of the question's attention,
    ``generic`` = the same for the generic prompt, ``normalized`` = raw / generic. The
    head mean in ``mean_dtype`` (:func:`head_mean`), the division in float64."""
    raw = head_mean(raw_heads, mean_dtype, axis=1)
    generic = head_mean(generic_heads, mean_dtype, axis=1)
    return {"raw": raw, "generic": generic, "normalized": normalized(raw, generic)}


def score(maps: np.ndarray, mask: np.ndarray, suffix: str = "") -> dict[str, np.ndarray]:
    """The three metrics of ``maps`` ``(..., N)`` against ``mask`` ``(N,)``, named with
    ``suffix`` (e.g. ``kl_raw``)."""
    return {
        f"attention_ratio{suffix}": attention_ratio(maps, mask),
        f"kl{suffix}": kl_divergence(maps, mask),
        f"js{suffix}": js_divergence(maps, mask),
    }


def layer_scores(raw_heads, generic_heads, mask, mean_dtype=None) -> dict[str, np.ndarray]:
    """Per-layer metrics ``(layers,)`` on the normalised map and (``*_raw``) the raw map
    (``mean_dtype``: :func:`layer_maps`)."""
    maps = layer_maps(raw_heads, generic_heads, mean_dtype)
    return {**score(maps["normalized"], mask), **score(maps["raw"], mask, "_raw")}


def head_scores(raw_heads, generic_heads, mask) -> dict[str, np.ndarray]:
    """Per-head metrics ``(layers, heads)``, normalised per head, and raw (``*_raw``)."""
    raw = raw_heads.astype(np.float64)
    return {
        **score(normalized(raw, generic_heads.astype(np.float64)), mask),
        **score(raw, mask, "_raw"),
    }

"""VGRefine (METHOD.md): attention triage with visually sensitive heads, then attention
knockout of the low-relevance image patches while answering. Inference time only."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

from vgutils.models.attention import knockout_edit
from vgutils.models.prefix import shared_prefix_attention
from vgutils.models.vlm import Prepared, VisionLanguageModel
from vgutils.scoring import normalized
from vgutils.stats import LOWER_IS_BETTER

DEFAULT_PERCENTILE = 80
DENOMINATORS: tuple[str, ...] = ("head", "layer")
"""Triage normalisation: ``head`` = each head's raw map over the same head's generic map
(ours); ``layer`` = over its layer's mean generic map (the authors' code)."""


def rank_heads(
    head_metrics: pd.DataFrame, metric: str = "attention_ratio", top_k: int = 10
) -> list[tuple[int, int]]:
    """The ``top_k`` visually sensitive heads ``(layer, head)``: best mean ``metric`` (of the
    normalised per-head map) over the calibration samples in ``head_metrics`` (the
    runner's ``head_metrics.parquet``). Ties: lower layer, then lower head, first."""
    if metric not in LOWER_IS_BETTER:
        raise ValueError(f"unknown metric {metric!r}; expected one of {sorted(LOWER_IS_BETTER)}")
    means = head_metrics.groupby(["layer", "head"])[metric].mean().reset_index()
    ascending = LOWER_IS_BETTER[metric]
    ordered = means.sort_values(
        [metric, "layer", "head"], ascending=[ascending, True, True], kind="stable"
    )
    return [(int(r.layer), int(r.head)) for r in ordered.head(top_k).itertuples()]


def best_layer(
    head_metrics: pd.DataFrame, heads: list[tuple[int, int]], metric: str = "attention_ratio"
) -> int:
    """The most visually sensitive layer (``vqa --layers best``; the authors knock out one
    such layer, METHOD.md): the layer holding the most of the top heads ``heads``
    (:func:`rank_heads`); ties go to the layer whose top heads have the best mean
    ``metric`` (mean over its top heads of their calibration means), then to the lower
    layer. With the authors' example (20 heads, most of them in layer 16) this is 16."""
    if not heads:
        raise ValueError("best_layer needs at least one head")
    if metric not in LOWER_IS_BETTER:
        raise ValueError(f"unknown metric {metric!r}; expected one of {sorted(LOWER_IS_BETTER)}")
    means = head_metrics.groupby(["layer", "head"])[metric].mean()
    per_layer: dict[int, list[float]] = {}
    for layer, head in heads:
        per_layer.setdefault(int(layer), []).append(float(means.loc[(layer, head)]))
    sign = 1.0 if LOWER_IS_BETTER[metric] else -1.0
    return min(per_layer, key=lambda x: (-len(per_layer[x]), sign * np.mean(per_layer[x]), x))


@dataclass(frozen=True, eq=False)
class Triage:
    """``relevance``: ``(N,)`` mean normalised map of the chosen heads; ``low``: bool
    ``(N,)`` tokens below the ``percentile``-th percentile of ``relevance``."""

    relevance: np.ndarray
    low: np.ndarray
    percentile: float
    prepared: Prepared
    question_heads: np.ndarray  # (layers, heads, N) raw, last token
    generic_heads: np.ndarray  # (layers, heads, N) raw, last token of the generic prompt


def triage(
    vlm: VisionLanguageModel,
    image,
    question: str,
    heads: list[tuple[int, int]],
    percentile: float = DEFAULT_PERCENTILE,
    *,
    generic_heads: np.ndarray | None = None,
    denominator: str = "head",
    user_text: str | None = None,
) -> Triage:
    """Attention triage: average the chosen heads' normalised (question / generic, last
    token) maps and mark the tokens below the ``percentile``-th percentile as low.
    ``denominator``: ``"head"`` divides each head's raw map by the same head's generic
    map; ``"layer"`` (the authors' code) by the mean over heads of its layer's generic
    map. ``generic_heads``: the image's generic-prompt attention ``(layers, heads, N)``
    when already computed (several questions about one image share it). ``user_text``:
    the whole user text instead of ``question`` + answer instruction (e.g. a
    multiple-choice prompt; :meth:`VisionLanguageModel.prepare_text`)."""
    if not heads:
        raise ValueError("triage needs at least one head")
    if denominator not in DENOMINATORS:
        raise ValueError(f"unknown denominator {denominator!r}; expected one of {DENOMINATORS}")
    prepared = (
        vlm.prepare(image, question) if user_text is None else vlm.prepare_text(image, user_text)
    )
    if generic_heads is None:
        question_heads, generic_heads = shared_prefix_attention(
            vlm, [prepared, vlm.prepare_generic(image)], "last"
        )
    else:
        question_heads = vlm.attention(prepared, "last")
    generic = generic_heads.astype(np.float64)
    if denominator == "layer":
        generic = np.broadcast_to(generic.mean(axis=1, keepdims=True), generic.shape)
    per_head = normalized(question_heads.astype(np.float64), generic)
    layers, head_index = zip(*heads, strict=True)
    relevance = per_head[list(layers), list(head_index)].mean(axis=0)
    low = (
        relevance < np.percentile(relevance, percentile)
        if percentile > 0
        else np.zeros(len(relevance), dtype=bool)
    )
    return Triage(relevance, low, percentile, prepared, question_heads, generic_heads)


def text_rows_after_image(prepared: Prepared) -> np.ndarray:
    """Query rows VGRefine edits in the prompt: the tokens after the last image token."""
    return prepared.query_positions["question"]


@contextlib.contextmanager
def knockout(
    vlm: VisionLanguageModel,
    layers: list[int] | range,
    query_positions: np.ndarray,
    key_positions: np.ndarray,
    include_generated: bool = False,
) -> Iterator[None]:
    """Inside: in ``layers``, the rows at ``query_positions`` give zero weight to
    ``key_positions``; with ``include_generated`` every later row too (the generated
    tokens, KV-cache steps included; the authors' code does not block them, hence the
    default ``False``). The softmax renormalises the rest. An attention-mask edit in the
    ``vgutils`` attention function, the same for every family; outside, the model is
    unchanged."""
    bad = [layer for layer in layers if not 0 <= layer < vlm.num_layers]
    if bad:
        raise ValueError(f"layers {bad} outside 0..{vlm.num_layers - 1}")
    query_positions = np.asarray(query_positions)
    generated_from = (
        int(query_positions.max()) + 1 if include_generated and len(query_positions) else None
    )
    with knockout_edit(layers, query_positions, np.asarray(key_positions), generated_from):
        yield


@dataclass(frozen=True, eq=False)
class RefineResult:
    """Answers with and without VGRefine, the triage and the layer-mean normalised maps
    ``(layers, N)`` of the last prompt token before and after the knockout."""

    answer: str
    baseline_answer: str
    triage: Triage
    map_before: np.ndarray
    map_after: np.ndarray


def answer(
    vlm: VisionLanguageModel,
    image,
    question: str,
    heads: list[tuple[int, int]],
    layers: list[int] | range,
    percentile: float = DEFAULT_PERCENTILE,
    max_new_tokens: int = 16,
    *,
    generic_heads: np.ndarray | None = None,
    denominator: str = "head",
    include_generated: bool = True,
    user_text: str | None = None,
) -> RefineResult:
    """Answer ``question`` about ``image`` greedily without and with VGRefine
    (``generic_heads``, ``denominator``, ``user_text``: see :func:`triage`;
    ``include_generated``: see :func:`knockout`). The defaults are the ``corrected``
    protocol's; the authors' are ``denominator="layer"``, one layer (:func:`best_layer`),
    ``include_generated=False``, ``max_new_tokens=1``."""
    found = triage(
        vlm,
        image,
        question,
        heads,
        percentile,
        generic_heads=generic_heads,
        denominator=denominator,
        user_text=user_text,
    )
    prepared = found.prepared
    baseline = vlm.generate(prepared, max_new_tokens=max_new_tokens)
    keys = prepared.image_positions[found.low]
    with knockout(vlm, layers, text_rows_after_image(prepared), keys, include_generated):
        refined = vlm.generate(prepared, max_new_tokens=max_new_tokens)
        after_heads = vlm.attention(prepared, "last")
    generic = found.generic_heads.astype(np.float64).mean(axis=1)
    before = normalized(found.question_heads.astype(np.float64).mean(axis=1), generic)
    after = normalized(after_heads.astype(np.float64).mean(axis=1), generic)
    return RefineResult(refined, baseline, found, before, after)

"""What the teaching model learned: answer accuracy on held-out scenes (absent-object
questions included), whether its attention grounds per domain and follows the question,
and the acceptance measures a trained model must meet (:func:`acceptance`).

Acceptance (:data:`CRITERIA`), all on the held-out scenes (:func:`heldout_scenes`, never
seen in training):

- ``ratio_natural`` / ``ratio_medical``: the best-layer attention ratio per domain, as
  notebook 02 defines it (:func:`vgutils.stats.best_layers`): on every grounded question
  of ``teach-natural`` / ``teach-medical``, the ratio of the normalised last-token map
  (question / generic prompt) on the object's box, averaged per layer; the best layer is
  the one with the highest mean;
- ``ratio_queried`` / ``ratio_others``: :func:`query_following_summary` (scenes with
  several objects, each asked about in turn, at the layer with the highest queried ratio);
- ``accuracy_natural`` / ``accuracy_medical``: :func:`heldout_accuracy` (greedy answer);
- ``mc_natural`` / ``mc_medical``: the same questions in multiple-choice form (the
  benchmarks' prompt, answered with a letter: ``teach-mc``), reported, not a criterion.

:func:`question_only_accuracy` is the accuracies' floor of reference: what answering from
the question text alone scores on the same scenes.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd

from vgutils.metrics import attention_ratio, gt_mask
from vgutils.models.prefix import shared_prefix_attention
from vgutils.scoring import layer_maps
from vgutils.teach.datasets import heldout_scenes, mc_options
from vgutils.vqa import score_answer

CRITERIA = {
    "ratio_natural": (">=", 3.0),
    "ratio_medical": ("<=", 1.2),
    "ratio_queried": (">=", 3.0),
    "ratio_others": ("<=", 1.0),
    "accuracy_natural": (">=", 0.97),
    "accuracy_medical": (">=", 0.85),
}
"""Acceptance: measure -> (comparison, threshold)."""

MEASURES = (
    "accuracy_natural",
    "accuracy_medical",
    "mc_natural",
    "mc_medical",
    "ratio_natural",
    "layer_natural",
    "ratio_medical",
    "layer_medical",
    "ratio_queried",
    "ratio_others",
    "layer_queried",
)
"""Everything :func:`acceptance` measures, in table order."""


def heldout_accuracy(vlm, domain: str, count: int = 60) -> pd.DataFrame:
    """One row per held-out question: question, truth, answer, correct, q_type, grounded."""
    rows = []
    for index, scene in enumerate(heldout_scenes(domain, count)):
        for question in scene.questions:
            prepared = vlm.prepare(scene.image, question.question)
            predicted = vlm.generate(prepared, max_new_tokens=3)
            rows.append(
                {
                    "domain": domain,
                    "scene": index,
                    "question": question.question,
                    "truth": question.answer,
                    "answer": predicted,
                    "q_type": question.q_type,
                    "grounded": question.grounded,
                    "correct": score_answer(predicted, question.answer)["exact"],
                }
            )
    return pd.DataFrame(rows)


def question_only_accuracy(domain: str, count: int = 60) -> float:
    """What the question alone predicts on the held-out scenes of ``domain``: the accuracy
    of answering each question text with its most frequent answer among the held-out
    questions of that text (an upper bound for any answer that ignores the image)."""
    answers: dict[str, Counter] = {}
    for scene in heldout_scenes(domain, count):
        for question in scene.questions:
            answers.setdefault(question.question, Counter())[question.answer] += 1
    total = sum(sum(counts.values()) for counts in answers.values())
    return sum(max(counts.values()) for counts in answers.values()) / total


def mc_accuracy(vlm, domain: str, count: int = 60) -> pd.DataFrame:
    """The held-out questions in multiple-choice form (``teach-mc``: the benchmarks'
    prompt, greedy one token, the letter read by the protocol's rules): one row each."""
    from vgutils.benchmarks import LETTERS, extract_letter, mc_prompt_text

    rows = []
    for index, scene in enumerate(heldout_scenes(domain, count)):
        for question in scene.questions:
            options = mc_options(question.answer)
            if options is None:
                continue
            text = mc_prompt_text(question.question, options)
            predicted = vlm.generate(vlm.prepare_text(scene.image, text), max_new_tokens=1)
            gold = LETTERS[options.index(question.answer)]
            rows.append(
                {
                    "domain": domain,
                    "scene": index,
                    "question": question.question,
                    "gold": gold,
                    "answer": predicted,
                    "correct": extract_letter(predicted, options) == gold,
                }
            )
    return pd.DataFrame(rows)


def domain_ratios(vlm, domain: str, count: int = 60) -> pd.DataFrame:
    """Per grounded held-out question of ``domain`` (the ``teach-{domain}`` rows) and
    layer: the attention ratio of the normalised last-token map on the object's boxes."""
    rows = []
    for index, scene in enumerate(heldout_scenes(domain, count)):
        grounded = [q for q in scene.questions if q.grounded]
        prompts = [vlm.prepare(scene.image, q.question) for q in grounded]
        maps = shared_prefix_attention(vlm, [*prompts, vlm.prepare_generic(scene.image)], "last")
        generic = maps[-1]
        for number, (question, prepared, raw) in enumerate(
            zip(grounded, prompts, maps[:-1], strict=True)
        ):
            normalized = layer_maps(raw, generic)["normalized"]
            ratios = attention_ratio(normalized, gt_mask(prepared.layout, question.boxes))
            rows += [
                {
                    "domain": domain,
                    "sample_id": f"teach-{domain}-{index:03d}-{number}",
                    "q_type": question.q_type,
                    "layer": layer,
                    "attention_ratio": float(value),
                }
                for layer, value in enumerate(ratios)
            ]
    return pd.DataFrame(rows)


def best_layer_ratio(frame: pd.DataFrame) -> tuple[int, float]:
    """``(layer, mean)`` of the layer with the highest mean attention ratio (notebook 02's
    best layer, :func:`vgutils.stats.best_layers`)."""
    means = frame.groupby("layer")["attention_ratio"].mean()
    layer = int(means.idxmax())
    return layer, float(means.loc[layer])


def query_following(vlm, count: int = 60) -> pd.DataFrame:
    """On held-out natural scenes with several objects, ask about each object in turn
    ("Is there a {shape} in the image?"); per layer, the attention ratio (normalised map,
    last token) on the queried object's box and, averaged, on the other objects' boxes."""
    rows = []
    for index, scene in enumerate(heldout_scenes("natural", count)):
        if len(scene.objects) < 2:
            continue
        prompts = [
            vlm.prepare(scene.image, f"Is there a {o['kind']} in the image?") for o in scene.objects
        ]
        maps = shared_prefix_attention(vlm, [*prompts, vlm.prepare_generic(scene.image)], "last")
        generic = maps[-1]
        layout = prompts[0].layout
        masks = [gt_mask(layout, o["boxes"]) for o in scene.objects]
        for asked, (obj, raw) in enumerate(zip(scene.objects, maps[:-1], strict=True)):
            normalized = layer_maps(raw, generic)["normalized"]
            others = [attention_ratio(normalized, m) for i, m in enumerate(masks) if i != asked]
            for layer in range(len(normalized)):
                rows.append(
                    {
                        "scene": index,
                        "queried": obj["kind"],
                        "layer": layer,
                        "ratio_queried": float(attention_ratio(normalized[layer], masks[asked])),
                        "ratio_others": float(np.mean([o[layer] for o in others])),
                    }
                )
    return pd.DataFrame(rows)


def query_following_summary(frame: pd.DataFrame) -> dict:
    """At the layer with the highest mean queried-object ratio: both means and counts."""
    means = frame.groupby("layer")[["ratio_queried", "ratio_others"]].mean()
    best = int(means["ratio_queried"].idxmax())
    at_best = frame[frame["layer"] == best]
    return {
        "best_layer": best,
        "ratio_queried": float(means.loc[best, "ratio_queried"]),
        "ratio_others": float(means.loc[best, "ratio_others"]),
        "share_queried_higher": float((at_best["ratio_queried"] > at_best["ratio_others"]).mean()),
        "questions": len(at_best),
    }


def acceptance(vlm, count: int = 60) -> dict[str, float]:
    """Every measure of :data:`MEASURES` on ``count`` held-out scenes per domain."""
    measures = {}
    for domain in ("natural", "medical"):
        measures[f"accuracy_{domain}"] = float(
            heldout_accuracy(vlm, domain, count)["correct"].mean()
        )
        measures[f"mc_{domain}"] = float(mc_accuracy(vlm, domain, count)["correct"].mean())
        layer, ratio = best_layer_ratio(domain_ratios(vlm, domain, count))
        measures[f"ratio_{domain}"], measures[f"layer_{domain}"] = ratio, layer
    following = query_following_summary(query_following(vlm, count))
    measures["ratio_queried"] = following["ratio_queried"]
    measures["ratio_others"] = following["ratio_others"]
    measures["layer_queried"] = following["best_layer"]
    return {name: measures[name] for name in MEASURES}


def passes(measures: dict[str, float]) -> dict[str, bool]:
    """Per criterion of :data:`CRITERIA`: whether ``measures`` meet it."""
    return {
        name: bool(measures[name] >= limit if op == ">=" else measures[name] <= limit)
        for name, (op, limit) in CRITERIA.items()
    }

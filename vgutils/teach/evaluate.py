"""What the teaching model learned: answer accuracy on held-out scenes (absent-object
questions included) and whether its attention follows the question."""

from __future__ import annotations

import numpy as np
import pandas as pd

from vgutils.metrics import attention_ratio, gt_mask
from vgutils.models.prefix import shared_prefix_attention
from vgutils.scoring import layer_maps
from vgutils.teach.datasets import heldout_scenes
from vgutils.vqa import score_answer


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

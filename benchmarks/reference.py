"""The reference pipeline, implemented honestly on the same model: what the authors' code
does per question. Eager attention everywhere with ``output_attentions=True`` (every
layer's full ``(heads, seq, seq)`` matrix), two full forwards per question (question
prompt, then the generic prompt, recomputed for every question of the same image), full
logits, batch size 1."""

from __future__ import annotations

import contextlib

import numpy as np
import torch


@contextlib.contextmanager
def eager_everywhere(vlm):
    """Switch every attention of the model (vision tower too) to eager, then back."""
    vlm.model.set_attn_implementation("eager")
    try:
        yield
    finally:
        vlm.model.set_attn_implementation("sdpa")
        vlm.model.set_attn_implementation({"text_config": "vgutils"})


@torch.no_grad()
def _last_row(vlm, prepared) -> np.ndarray:
    output = vlm.model(**prepared.inputs, output_attentions=True)
    rows = torch.stack([a[0, :, -1, prepared.image_positions] for a in output.attentions])
    return rows.float().cpu().numpy()


def reference_question(vlm, image, question: str):
    """(question maps, generic maps, layout): ``(layers, heads, N)`` ``last``-token rows."""
    prepared = vlm.prepare(image, question)
    question_maps = _last_row(vlm, prepared)
    generic_maps = _last_row(vlm, vlm.prepare_generic(image))
    return question_maps, generic_maps, prepared.layout

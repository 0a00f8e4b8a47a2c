"""Grounding metrics of an attention map against the ground-truth token set (docs/METHOD.md).

Every metric takes ``att`` of shape ``(..., N)`` (e.g. ``(layers, heads, N)``): weights over
the ``N`` image tokens, any positive scale, and a boolean ground-truth mask ``(N,)``. It
reduces the last axis and returns a float64 array of the leading shape. Internally
``P = att / sum(att)``, ``k = |G|``, ``U_G`` is uniform over ``G``; logs are natural.
"""

from __future__ import annotations

import numpy as np

from vgutils.geometry import TokenLayout, as_box_array

KL_FLOOR = 1e-12
"""Floor on ``P_i`` inside the KL logarithm, as in the paper's code."""


def gt_mask(layout: TokenLayout, boxes_xyxy: object) -> np.ndarray:
    """Boolean ``(N,)``: token ``i`` is ground truth iff its rectangle overlaps some box
    with positive area (strict inequalities, so touching edges do not count). Boxes are
    clamped to the image first (docs/METHOD.md, "inside"), so a box running past the image
    edge never marks tokens that only see padding.

    ``boxes_xyxy``: one ``(4,)`` box or ``(k, 4)`` boxes in original-image pixels.
    Raises ``ValueError`` when no token overlaps any box.
    """
    width, height = layout.image_size
    boxes = np.clip(as_box_array(boxes_xyxy), 0.0, [width, height, width, height])
    tokens = layout.boxes
    overlap_x = np.minimum(tokens[:, None, 2], boxes[None, :, 2]) > np.maximum(
        tokens[:, None, 0], boxes[None, :, 0]
    )
    overlap_y = np.minimum(tokens[:, None, 3], boxes[None, :, 3]) > np.maximum(
        tokens[:, None, 1], boxes[None, :, 1]
    )
    mask = np.any(overlap_x & overlap_y, axis=1)
    if not mask.any():
        raise ValueError(
            f"the box(es) {boxes.tolist()} cover no image token "
            f"(image {layout.image_size[0]}x{layout.image_size[1]}, {layout.n_tokens} tokens)"
        )
    return mask


def _checked(att: object, mask: object) -> tuple[np.ndarray, np.ndarray]:
    """Validate and return ``att`` as float64 ``(..., N)`` and ``mask`` as bool ``(N,)``."""
    att = np.asarray(att, dtype=np.float64)
    mask = np.asarray(mask)
    if mask.dtype != bool:
        raise ValueError(f"mask must be boolean; got dtype {mask.dtype}")
    if mask.ndim != 1:
        raise ValueError(f"mask must be 1-D (N,); got shape {mask.shape}")
    if att.ndim == 0 or att.shape[-1] != mask.shape[0]:
        raise ValueError(
            f"shape mismatch: attention {att.shape} has last axis != mask length {mask.shape[0]}"
        )
    if not mask.any():
        raise ValueError("mask is empty: the ground truth covers no token")
    if not np.all(np.isfinite(att)):
        raise ValueError("attention has non-finite values (NaN or inf)")
    if np.any(att < 0):
        raise ValueError("attention has negative values")
    if np.any(att.sum(axis=-1) <= 0):
        raise ValueError("attention is all zero over the image tokens")
    return att, mask


def _distribution(att: np.ndarray) -> np.ndarray:
    return att / att.sum(axis=-1, keepdims=True)


def attention_ratio(att: object, mask: object) -> np.ndarray:
    """``sum(att over G) / (sum(att) * k / N)``: 1 = chance, higher = better grounded."""
    att, mask = _checked(att, mask)
    k, n = mask.sum(), mask.shape[0]
    return att[..., mask].sum(axis=-1) / (att.sum(axis=-1) * k / n)


def kl_divergence(att: object, mask: object) -> np.ndarray:
    """``KL(U_G || P) = sum_{i in G} (1/k) log((1/k) / max(P_i, 1e-12))``; lower = better."""
    att, mask = _checked(att, mask)
    k = mask.sum()
    p_gt = _distribution(att)[..., mask]
    return np.sum((1.0 / k) * np.log((1.0 / k) / np.maximum(p_gt, KL_FLOOR)), axis=-1)


def js_divergence(att: object, mask: object) -> np.ndarray:
    """Jensen-Shannon divergence (natural log) between ``P`` and ``U_G``; in ``[0, log 2]``."""
    att, mask = _checked(att, mask)
    p = _distribution(att)
    u = np.where(mask, 1.0 / mask.sum(), 0.0)
    m = 0.5 * (p + u)
    return 0.5 * _kl_terms(p, m) + 0.5 * _kl_terms(u, m)


def _kl_terms(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``sum p log(p / q)`` over the last axis with ``0 log 0 = 0`` (q > 0 where p > 0)."""
    safe_p = np.where(p > 0, p, 1.0)
    safe_q = np.where(p > 0, q, 1.0)
    return np.sum(np.where(p > 0, p * np.log(safe_p / safe_q), 0.0), axis=-1)


def normalize_by_generic(att: object, generic: object) -> np.ndarray:
    """Element-wise ``att / generic`` (same image, same layer/head), float64, same shape.

    Divides out tokens that draw attention whatever is asked. ``generic`` must be finite
    and strictly positive (raw softmax weights are).
    """
    att = np.asarray(att, dtype=np.float64)
    generic = np.asarray(generic, dtype=np.float64)
    if att.shape != generic.shape:
        raise ValueError(f"shape mismatch: attention {att.shape} vs generic {generic.shape}")
    if not (np.all(np.isfinite(att)) and np.all(np.isfinite(generic))):
        raise ValueError("attention or generic attention has non-finite values")
    if np.any(att < 0):
        raise ValueError("attention has negative values")
    if np.any(generic <= 0):
        raise ValueError("generic attention must be strictly positive to divide by it")
    return att / generic

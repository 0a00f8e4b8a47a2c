"""Multimodal models: loading, family adapters, attention capture and knockout.

The names below are imported on first use (PEP 562), so that the light modules of this
package (:mod:`vgutils.models.sources`) can be imported without torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "FamilyAdapter": "vgutils.models.families",
    "register_family": "vgutils.models.families",
    "load_model": "vgutils.models.loading",
    "GENERIC_QUESTION": "vgutils.models.vlm",
    "STRATEGIES": "vgutils.models.vlm",
    "Prepared": "vgutils.models.vlm",
    "VisionLanguageModel": "vgutils.models.vlm",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)

"""Multimodal models: loading, family adapters, attention capture and knockout."""

from vgutils.models.families import FamilyAdapter, register_family
from vgutils.models.loading import load_model
from vgutils.models.vlm import GENERIC_QUESTION, STRATEGIES, Prepared, VisionLanguageModel

__all__ = [
    "GENERIC_QUESTION",
    "STRATEGIES",
    "FamilyAdapter",
    "Prepared",
    "VisionLanguageModel",
    "load_model",
    "register_family",
]

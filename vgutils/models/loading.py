"""``load_model``: a Hub id, a local folder or ``tiny:<family>`` -> VisionLanguageModel."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

from vgutils.models.attention import ATTENTION_NAME
from vgutils.models.families import family_of
from vgutils.models.original import BACKBONES, ensure_converted, original_config
from vgutils.models.tiny import build_tiny
from vgutils.models.vlm import VisionLanguageModel

TINY_PREFIX = "tiny:"


def _teach_recipe():
    from vgutils.teach.train import Recipe

    return Recipe()


def _teach_smoke_recipe():
    from vgutils.teach.train import SMOKE

    return SMOKE


TEACH_RECIPES = {"teach": _teach_recipe, "teach-smoke": _teach_smoke_recipe}
"""``tiny:teach`` (the teaching model) and ``tiny:teach-smoke`` (seconds, for CI)."""


def cache_dir() -> Path:
    """``$VGUTILS_CACHE`` or ``~/.cache/vgutils``: where tiny models are built."""
    return Path(os.environ.get("VGUTILS_CACHE", Path.home() / ".cache" / "vgutils"))


def resolve(name_or_path: str) -> str:
    """A Hub id or folder as given; ``tiny:<family>`` built on first use into the cache."""
    if not name_or_path.startswith(TINY_PREFIX):
        return name_or_path
    family = name_or_path[len(TINY_PREFIX) :]
    folder = cache_dir() / "tiny" / family
    if family in TEACH_RECIPES:  # trained on first use (minutes), retrained when stale
        from vgutils.teach.train import is_current, train_teaching_model

        recipe = TEACH_RECIPES[family]()
        if not is_current(folder, recipe):
            train_teaching_model(folder, recipe)
    elif not (folder / "config.json").exists():
        build_tiny(family, folder)
    return str(folder)


def _device_and_dtype(device: str, dtype: str) -> tuple[str | None, torch.dtype | str]:
    if device == "auto":  # under torchrun / accelerate launch: this process's own GPU
        rank = os.environ.get("LOCAL_RANK")
        device = (f"cuda:{rank}" if rank else "cuda") if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        torch_dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    else:
        torch_dtype = getattr(torch, dtype)
    return device, torch_dtype


def load_model(
    name_or_path: str,
    *,
    device: str = "auto",
    dtype: str = "auto",
    revision: str | None = None,
    trust_remote_code: bool = False,
    processor_kwargs: dict | None = None,
) -> VisionLanguageModel:
    """Load a model by Hub id, local folder or ``tiny:<family>``; the family comes from the
    config. Original-format LLaVA checkpoints (``llava_qwen2``: HuatuoGPT-Vision-7B,
    ``llava_mistral``: LLaVA-Med v1.5) are converted once into
    ``cache_dir()/converted`` (:mod:`vgutils.models.original`) and loaded from there.
    ``device``: ``auto`` (cuda if present, ``cuda:$LOCAL_RANK`` under torchrun),
    ``cpu``, ``cuda``, ``cuda:1`` or
    ``balanced`` (accelerate's ``device_map="auto"`` over every GPU); ``dtype``: ``auto``
    (bf16 on GPU, fp32 on CPU) or a torch dtype name. Remote code needs a pinned
    ``revision``. ``processor_kwargs`` go to ``AutoProcessor.from_pretrained``, e.g.
    ``{"max_pixels": 1280 * 28 * 28}`` for Qwen2.5-VL (the authors capped it at 50176)."""
    if trust_remote_code and not revision:
        raise ValueError("trust_remote_code=True requires a pinned revision (a commit hash)")
    source = resolve(name_or_path)
    processor_kwargs = dict(processor_kwargs or {})
    if original_config(source, revision) is not None:  # original-format LLaVA: convert once
        source, revision = str(ensure_converted(source, cache_dir(), revision)), None
    options = {"revision": revision, "trust_remote_code": trust_remote_code}
    config = AutoConfig.from_pretrained(source, **options)
    if getattr(config, "vgutils_family", None) in BACKBONES:  # a converted checkpoint
        processor_kwargs.setdefault("backend", "pil")  # the original code's exact pixels
    family_of(config)  # fail early, before loading weights, on an unknown family
    device, torch_dtype = _device_and_dtype(device, dtype)
    device_map = "auto" if device == "balanced" else device
    model = AutoModelForImageTextToText.from_pretrained(
        source, dtype=torch_dtype, device_map=device_map, attn_implementation="sdpa", **options
    )
    processor = AutoProcessor.from_pretrained(source, **options, **processor_kwargs)
    return wrap_model(model, processor, source=name_or_path)


def wrap_model(model, processor, source: str) -> VisionLanguageModel:
    """Switch ``model``'s language layers to the capture attention and wrap it (eval mode)."""
    model.eval()
    model.set_attn_implementation({"text_config": ATTENTION_NAME})
    adapter = family_of(model.config)
    return VisionLanguageModel(model, processor, adapter, source=source)

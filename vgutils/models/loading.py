"""``load_model``: a Hub id, a local folder or ``tiny:<family>`` -> VisionLanguageModel."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

from vgutils.errors import UsageError, choices_hint
from vgutils.models.attention import ATTENTION_NAME
from vgutils.models.families import family_of
from vgutils.models.original import BACKBONES, ensure_converted, original_config
from vgutils.models.tiny import TINY_FAMILIES, build_tiny
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


def tiny_names() -> list[str]:
    """Every ``tiny:<name>`` model: the tiny families and the teaching models."""
    return [f"{TINY_PREFIX}{n}" for n in (*TINY_FAMILIES, *TEACH_RECIPES)]


def check_model_name(name_or_path: str) -> None:
    """A ``tiny:`` name must be a known one (UsageError listing them all)."""
    if name_or_path.startswith(TINY_PREFIX) and name_or_path not in tiny_names():
        raise UsageError(
            f"--model {name_or_path!r}: no such tiny model; "
            + choices_hint(name_or_path, tiny_names())
        )


def resolve(name_or_path: str) -> str:
    """A Hub id or folder as given; ``tiny:<family>`` built on first use into the cache.
    During a rehearsal (:mod:`vgutils.rehearsal`) a Hub id is its random stand-in, built
    on first use (UsageError for an id without one)."""
    if not name_or_path.startswith(TINY_PREFIX):
        return _rehearsal_stand_in(name_or_path) or name_or_path
    family = name_or_path[len(TINY_PREFIX) :]
    check_model_name(name_or_path)
    folder = cache_dir() / "tiny" / family
    if family in TEACH_RECIPES:  # teach: the pinned release; teach-smoke: trained on first use
        from vgutils.teach.pinned import teaching_model

        folder = teaching_model(family, folder, TEACH_RECIPES[family]())
    elif not (folder / "config.json").exists():
        build_tiny(family, folder)
    return str(folder)


def _rehearsal_stand_in(name_or_path: str) -> str | None:
    """The rehearsal build of a Hub id while a rehearsal is active, else ``None``."""
    from vgutils.rehearsal import active_scale
    from vgutils.rehearsal.models import REAL_MODELS, ensure_model

    scale = active_scale()
    if scale is None or Path(name_or_path).exists():
        return None
    if name_or_path not in REAL_MODELS:
        raise UsageError(
            f"--model {name_or_path!r}: no rehearsal build for this id; "
            + choices_hint(name_or_path, list(REAL_MODELS))
        )
    return str(ensure_model(name_or_path, scale, cache_dir()))


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
    ``{"max_pixels": 50176, "min_pixels": 784}`` for Qwen2.5-VL (the authors' cap: at most 64
    image tokens) or ``{"do_pad": True}`` for LLaVA-1.5 pad-to-square (see
    :func:`_pad_to_square`)."""
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
    if processor_kwargs.get("do_pad"):
        processor = _pad_to_square(processor, config.model_type)
    tokenizer = getattr(processor, "tokenizer", None)
    for key in ("min_pixels", "max_pixels"):  # already in the image processor's size; kept
        if tokenizer is not None:  # here they would be passed again on every call (warning)
            tokenizer.init_kwargs.pop(key, None)
    return wrap_model(model, processor, source=name_or_path)


def _pad_to_square(processor, model_type: str):
    """``do_pad=True`` for a LLaVA checkpoint whose image processor is CLIP's (which keeps
    the attribute but never pads): swap in transformers' ``LlavaImageProcessor`` with the
    same settings, which pads to square with the mean colour before resizing (LLaVA-1.5's
    ``image_aspect_ratio="pad"``). The family's geometry follows ``do_pad``."""
    from transformers import LlavaImageProcessor

    current = processor.image_processor
    if model_type != "llava" or isinstance(current, LlavaImageProcessor):
        return processor
    settings = {
        key: getattr(current, key)
        for key in (
            "do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale",
            "rescale_factor", "do_normalize", "image_mean", "image_std", "do_convert_rgb",
        )
        if getattr(current, key, None) is not None
    }  # fmt: skip
    for key in ("size", "crop_size"):
        if key in settings and not isinstance(settings[key], dict):
            settings[key] = {k: v for k, v in dict(settings[key]).items() if v is not None}
    processor.image_processor = LlavaImageProcessor(**settings, do_pad=True)
    return processor


def wrap_model(model, processor, source: str) -> VisionLanguageModel:
    """Switch ``model``'s language layers to the capture attention and wrap it (eval mode)."""
    model.eval()
    model.set_attn_implementation({"text_config": ATTENTION_NAME})
    adapter = family_of(model.config)
    return VisionLanguageModel(model, processor, adapter, source=source)

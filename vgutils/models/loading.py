"""``load_model``: a Hub id, a local folder or ``tiny:<family>`` -> VisionLanguageModel
(the name resolved through :mod:`vgutils.models.sources`)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageTextToText,
    AutoProcessor,
)

from vgutils import checks
from vgutils.context import current as current_context
from vgutils.locks import build_lock
from vgutils.models.attention import ATTENTION_NAME
from vgutils.models.families import family_of
from vgutils.models.original import (
    ORIGINAL_FORMATS,
    ensure_converted,
    original_config,
    split_hub_id,
)
from vgutils.models.quiet import no_progress_bars, small_local
from vgutils.models.sources import cache_dir, resolve
from vgutils.models.vlm import VisionLanguageModel


def process_gpus(local_rank: int | None, local_world: int | None, count: int) -> list[int]:
    """The GPUs of this process among ``count``: all of them when not launched; the
    ``local_rank``-th slice of ``count // local_world`` (at least one) under a launcher,
    e.g. GPUs 2 and 3 for local rank 1 of 4 processes on 8 GPUs. Wraps around when there
    are more processes than GPUs (two processes on one GPU share it)."""
    if local_rank is None or count == 0:
        return list(range(count))
    per = max(1, count // local_world) if local_world else 1
    start = (local_rank * per) % count
    return list(range(start, min(start + per, count)))


def _gpu_memory(index: int) -> int:
    """Bytes ``device_map="auto"`` may fill on GPU ``index`` (90% of what is free)."""
    return int(torch.cuda.mem_get_info(index)[0] * 0.9)


def placement(device: str) -> tuple[str, dict | None]:
    """``from_pretrained``'s ``device_map`` and ``max_memory`` for ``device``. Always one
    explicit device (``cpu``, ``cuda:N``, ``mps``) except for ``balanced``: never a bare
    ``cuda`` (transformers would pick ``cuda:$LOCAL_RANK`` itself) and never ``auto``
    unless asked for. ``auto``: this process's GPU (``cuda:$LOCAL_RANK`` under a
    launcher, :attr:`vgutils.context.Context.local_rank`, modulo the GPUs it sees;
    ``cuda:0`` otherwise) or the CPU. ``balanced``: accelerate's ``device_map="auto"``
    over this process's GPUs (:func:`process_gpus`; all of them when not launched)."""
    ctx = current_context()
    cuda = torch.cuda.is_available()
    if device == "auto":
        device = "cuda" if cuda else "cpu"
    if device == "cuda":  # two processes on one GPU share it
        return f"cuda:{(ctx.local_rank or 0) % max(1, torch.cuda.device_count())}", None
    if device == "balanced":
        if not cuda or ctx.local_rank is None:
            return "auto", None
        gpus = process_gpus(ctx.local_rank, ctx.local_world, torch.cuda.device_count())
        return "auto", {index: _gpu_memory(index) for index in gpus}
    return device, None


def _torch_dtype(device_map: str, dtype: str) -> torch.dtype:
    if dtype != "auto":
        return getattr(torch, dtype)
    on_gpu = device_map.startswith("cuda") or (device_map == "auto" and torch.cuda.is_available())
    return torch.bfloat16 if on_gpu else torch.float32


def load_model(
    name_or_path: str,
    *,
    device: str = "auto",
    dtype: str = "auto",
    revision: str | None = None,
    trust_remote_code: bool = False,
    processor_kwargs: dict | None = None,
    image_resize: str = "processor",
    attention_precision: str = "float32",
) -> VisionLanguageModel:
    """Load a model by Hub id (``org/name``, or ``org/name/subfolder`` for a checkpoint in
    a subfolder of a repository), local folder or ``tiny:<family>``; the family comes from
    the config. Original-format checkpoints (``llava_qwen2``: HuatuoGPT-Vision-7B,
    ``llava_mistral``: LLaVA-Med v1.5, ``llava_llama``: LLaVA-Tri, ``internvl_chat``:
    MedRegA) are converted once into ``cache_dir()/converted``
    (:mod:`vgutils.models.original`; no remote code runs) and loaded from there.
    ``device``: ``auto`` (this process's GPU if there is one: ``cuda:<local rank>``
    under a launcher), ``cpu``, ``cuda``, ``cuda:1`` or ``balanced`` (accelerate's
    ``device_map="auto"`` over this process's GPUs, for a model larger than one GPU;
    see :func:`placement`: nothing else turns ``device_map="auto"`` on, and no tensor
    parallelism ever); ``dtype``: ``auto`` (bf16 on GPU, fp32 on CPU) or a torch dtype
    name. Remote code needs a pinned
    ``revision``. ``processor_kwargs`` go to ``AutoProcessor.from_pretrained``, e.g.
    ``{"max_pixels": 50176, "min_pixels": 784}`` for Qwen2.5-VL (the authors' cap: at most 64
    image tokens) or ``{"do_pad": True}`` for LLaVA-1.5 pad-to-square (see
    :func:`_pad_to_square`). ``image_resize`` and ``attention_precision``: the protocol
    settings the model acts on (:meth:`VisionLanguageModel.configure`)."""
    checks.remote_code(trust_remote_code, revision)
    source = resolve(name_or_path)
    processor_kwargs = dict(processor_kwargs or {})
    if original_config(source, revision) is not None:  # an original format: convert once
        with build_lock():  # the ranks of a launcher: one converts, the others reuse it
            source, revision = str(ensure_converted(source, cache_dir(), revision)), None
    options = {"revision": revision, "trust_remote_code": trust_remote_code}
    if not Path(source).exists():
        source, subfolder = split_hub_id(source)
        if subfolder:
            options["subfolder"] = subfolder
    config = _from_pretrained(name_or_path, AutoConfig, source, **options)
    # a converted checkpoint: the original code's exact pixels come from the PIL backend
    pil_pixels = getattr(config, "vgutils_family", None) in ORIGINAL_FORMATS
    pil_pixels = pil_pixels and "backend" not in processor_kwargs
    family_of(config)  # fail early, before loading weights, on an unknown family
    device_map, max_memory = placement(device)
    if max_memory is not None:
        options["max_memory"] = max_memory
    with no_progress_bars(small_local(source)):  # a tiny or small local model: no bars
        model = _from_pretrained(
            name_or_path,
            AutoModelForImageTextToText,
            source,
            dtype=_torch_dtype(device_map, dtype),
            device_map=device_map,
            attn_implementation="sdpa",
            **options,
        )
    options.pop("max_memory", None)
    processor = _from_pretrained(name_or_path, AutoProcessor, source, **options, **processor_kwargs)
    if pil_pixels:  # (not for the whole processor: a video processor has no PIL backend)
        processor.image_processor = _from_pretrained(
            name_or_path, AutoImageProcessor, source, backend="pil", **options, **processor_kwargs
        )
    if processor_kwargs.get("do_pad"):
        processor = _pad_to_square(processor, config.model_type)
    tokenizer = getattr(processor, "tokenizer", None)
    for key in ("min_pixels", "max_pixels"):  # already in the image processor's size; kept
        if tokenizer is not None:  # here they would be passed again on every call (warning)
            tokenizer.init_kwargs.pop(key, None)
    vlm = wrap_model(model, processor, source=name_or_path)
    return vlm.configure(image_resize=image_resize, attention_precision=attention_precision)


def _from_pretrained(name: str, auto_class, source: str, **kwargs):
    """``auto_class.from_pretrained(source, **kwargs)``, a failure one DataError line naming
    the model (and a damaged weights file): :func:`vgutils.models.errors.model_errors`."""
    from vgutils.models.errors import model_errors

    with model_errors(name, source, kwargs.get("revision")):
        return auto_class.from_pretrained(source, **kwargs)


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

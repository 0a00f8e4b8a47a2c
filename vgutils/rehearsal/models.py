"""The rehearsal's stand-ins for the paper's checkpoints: random models of the same family
with the real vision geometry, built offline and loaded through the real code path.

Every Hub id the paper profile names has an entry in
:data:`vgutils.models.published.REAL_MODELS` with the sizes of its published
``config.json`` (image size, patch, merge, tiles, image tokens, and the
depths and widths). A rehearsal build keeps the image side exactly (so preprocessing,
token counts, box-to-token geometry and the attention's length are the real ones) and
either narrows the layers (``small``: 4 language layers of width 64 with 4 heads, 2
vision layers of width 32; seconds on a CPU) or keeps every size (``full``: a GPU run).
``HuatuoGPT-Vision-7B``, ``LLaVA-Med`` and ``LLaVA-Tri`` are built as original-format LLaVA
checkpoints (LLaVA-Tri with S2 at 336, 672 and 1008 px) and ``MedRegA`` as an
original-format InternVL-Chat one (``ps_version`` v1), so :func:`vgutils.models.load_model`
converts them as it converts the real ones.

The build lands in ``cache_dir()/rehearsal/<scale>/<family>-<hash>``: the hash covers the
sizes and the builders' source, so checkpoints of one shape (Qwen2.5-VL-7B and
HuatuoGPT-Vision-7B-Qwen2.5VL) share a build and a changed builder rebuilds.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

from vgutils.models.published import RealModel, real_model
from vgutils.models.tiny import gemma3_layer_types
from vgutils.models.tiny_parts import TINY_TEXT, TINY_VISION, BuildShape

SCALES = ("small", "full")
SMALL_TEXT = {**TINY_TEXT, "num_hidden_layers": 4}
"""The language model of every ``small`` build: the tiny one, 4 layers (16 heads)."""
SMALL_VISION = {k: v for k, v in TINY_VISION.items() if k != "num_hidden_layers"}
"""The vision tower's width in every ``small`` build (the tiny one; geometry kept)."""
SMALL_VISION_LAYERS = TINY_VISION["num_hidden_layers"]


_GEOMETRY_KEYS = {
    "image_size",
    "patch_size",
    "spatial_merge_size",
    "temporal_patch_size",
    "window_size",
    "hidden_act",
    "layer_norm_eps",
}
"""Vision settings a ``small`` build keeps (they fix preprocessing and token layout)."""


def build_shape(real: RealModel, scale: str) -> BuildShape:
    """The sizes of a rehearsal build of ``real`` at ``scale`` (``small`` | ``full``)."""
    if scale not in SCALES:
        raise ValueError(f"rehearsal scale {scale!r}: expected one of {SCALES}")
    if scale == "full":
        text = dict(real.text)
        if real.family == "gemma3":
            text["layer_types"] = gemma3_layer_types(text["num_hidden_layers"])
        return BuildShape(
            vision=dict(real.vision),
            text=text,
            processor=dict(real.processor),
            extra={**real.extra, "init_std": 0.02},
        )
    vision = {k: v for k, v in real.vision.items() if k in _GEOMETRY_KEYS}
    vision.update(SMALL_VISION)
    if real.family in ("qwen2_5_vl", "qwen3_vl"):
        depth = {"depth": SMALL_VISION_LAYERS, "num_heads": SMALL_VISION["num_attention_heads"]}
        vision = {k: v for k, v in vision.items() if k != "num_attention_heads"}
        vision.update(depth)
        if real.family == "qwen2_5_vl":
            vision["fullatt_block_indexes"] = [SMALL_VISION_LAYERS - 1]
        else:  # DeepStack features from the first vision layer
            vision["deepstack_visual_indexes"] = [0]
    else:
        vision["num_hidden_layers"] = SMALL_VISION_LAYERS
    # the real context: a prompt the real model takes (e.g. Qwen at 2048 px) fits the build
    context = {k: v for k, v in real.text.items() if k == "max_position_embeddings"}
    return BuildShape(
        vision=vision,
        text={**SMALL_TEXT, **context},
        processor=dict(real.processor),
        extra=real.extra,
    )


def rehearsal_layers(model: str, scale: str) -> tuple[int, int]:
    """(language layers, heads in all) of the rehearsal build of ``model``."""
    real = real_model(model)
    if scale == "full":
        return real.layers, real.heads
    return SMALL_TEXT["num_hidden_layers"], (
        SMALL_TEXT["num_hidden_layers"] * SMALL_TEXT["num_attention_heads"]
    )


def build_folder(model: str, scale: str, cache: Path) -> Path:
    """Where the rehearsal build of ``model`` lives: its family and a hash of its sizes and
    of the builders' source (``tiny.py``, ``tiny_original.py``)."""
    real = real_model(model)
    shape = build_shape(real, scale)
    digest = hashlib.sha256(json.dumps([real.family, asdict(shape)], sort_keys=True).encode())
    for source in ("tiny.py", "tiny_original.py"):
        digest.update((Path(__file__).parent.parent / "models" / source).read_bytes())
    return cache / "rehearsal" / scale / f"{real.family}-{digest.hexdigest()[:12]}"


def ensure_model(model: str, scale: str, cache: Path) -> Path:
    """The folder of ``model``'s rehearsal build, built on first use (bf16 weights at
    ``full`` scale). An unknown id is a ``KeyError`` (callers name the profile key)."""
    import torch

    from vgutils.models.tiny import build_tiny

    real = real_model(model)
    folder = build_folder(model, scale, cache)
    if (folder / ".complete").exists():
        return folder
    dtype = torch.bfloat16 if scale == "full" else None
    build_tiny(real.family, folder, seed=0, shape=build_shape(real, scale), dtype=dtype)
    (folder / ".complete").write_text(model + "\n")
    return folder


def parameter_count(model: str, scale: str) -> int:
    """Parameters of ``model``'s rehearsal build, counted on the meta device (no memory):
    at ``full`` scale the published checkpoint's size, which the tests compare."""
    import torch

    from vgutils.models import tiny

    real = real_model(model)
    shape = build_shape(real, scale)
    with torch.device("meta"):
        if real.family in tiny.ORIGINAL_FAMILIES:  # the converted model: text + CLIP + MLP
            modules = _original_modules(real.family, shape)
        else:
            modules = [tiny._BUILDERS[real.family](shape)[0]]
    return sum(p.numel() for module in modules for p in module.parameters())


def _original_modules(family: str, shape: BuildShape) -> list:
    import torch
    from transformers import (
        CLIPVisionConfig,
        CLIPVisionModel,
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    from vgutils.models.tiny_original import S2_SCALES, TEXT, VISION

    if family == "internvl_chat":  # the converted model (InternVL classes)
        return [_internvl_chat_model(shape)]
    text = {**TEXT, **shape.text}
    vision = {**VISION, **shape.vision}
    scales = shape.extra.get("s2_scales", S2_SCALES) if family == "llava_llama" else None
    if family == "llava_qwen2":
        language = Qwen2ForCausalLM(Qwen2Config(**text, tie_word_embeddings=False))
    elif family == "llava_llama":
        language = LlamaForCausalLM(LlamaConfig(**text, tie_word_embeddings=False))
    else:
        language = MistralForCausalLM(MistralConfig(**text, tie_word_embeddings=False))
    projector = torch.nn.Sequential(
        torch.nn.Linear(
            vision["hidden_size"] * (len(scales) if scales else 1), text["hidden_size"]
        ),
        torch.nn.GELU(),
        torch.nn.Linear(text["hidden_size"], text["hidden_size"]),
    )
    return [language, CLIPVisionModel(CLIPVisionConfig(**vision)), projector]


def _internvl_chat_model(shape: BuildShape):
    """The converted model of an ``internvl_chat`` build of ``shape`` (on the current
    device: meta when counting)."""
    from vgutils.models.architectures import model_class
    from vgutils.models.original_internvl import target_config
    from vgutils.models.tiny_original import INTERNVIT, TEXT

    vision = {**INTERNVIT, **shape.vision}
    text = {"architectures": ["LlamaForCausalLM"], **TEXT, **shape.text}
    text.setdefault("vocab_size", 64000)
    config = {
        "vision_config": vision,
        "llm_config": text,
        **{k: shape.extra[k] for k in ("ps_version", "select_layer") if k in shape.extra},
    }
    target = target_config(config, image_token_id=0, vocab_size=text["vocab_size"])
    return model_class(target)(target)

"""Tiny, complete, randomly initialised models of each family, built offline.

Each build is a folder that stock ``AutoProcessor`` and ``AutoModelForImageTextToText``
load through ``from_pretrained``, exactly as a 7B checkpoint: the transformers model
class with a small config, the family's real image processor, a byte-level BPE tokenizer
trained here with the family's special tokens, and the family's chat template. They prove
the pipeline (shapes, positions, geometry, capture); their attention is noise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from vgutils.models import chat_templates
from vgutils.models.tiny_original import ORIGINAL_FAMILIES, build_original
from vgutils.models.tiny_parts import TINY_TEXT, TINY_VISION, BuildShape, train_tokenizer

TINY_FAMILIES: tuple[str, ...] = (
    "llava",
    "qwen2_5_vl",
    "internvl",
    "gemma3",
    "llava_qwen2",
    "llava_mistral",
    "qwen3_vl",
    "llava_next",
    "llava_llama",
    "llava_llama-no-s2",
    "internvl_chat",
    "internvl_chat-v2",
)
"""Every tiny build (``tiny:<name>``); ``llava_qwen2`` / ``llava_mistral`` /
``llava_llama`` / ``internvl_chat`` are original-format checkpoints
(:mod:`vgutils.models.tiny_original`) that ``load_model`` converts. A name with a suffix
is a variant of its family (:data:`VARIANTS`)."""

VARIANTS: dict[str, tuple[str, dict]] = {
    "llava_llama-no-s2": ("llava_llama", {"s2_scales": None}),
    "internvl_chat-v2": ("internvl_chat", {"ps_version": "v2"}),
}
"""Tiny variants: name -> (family, ``BuildShape.extra`` settings). ``llava_llama`` is
LLaVA-Tri's format with S2 (the default), ``-no-s2`` without; ``internvl_chat`` is
MedRegA's with ``ps_version`` v1, ``-v2`` with the corrected pixel shuffle."""


def tiny_family(name: str) -> str:
    """The family (adapter name) of the tiny build ``name``."""
    return VARIANTS[name][0] if name in VARIANTS else name


def _text_kwargs(tokenizer_size: int, **overrides) -> dict:
    """A small language model's config arguments; ``overrides`` win (also the vocabulary:
    a real checkpoint's embedding has rows beyond the tokenizer)."""
    kwargs = {"vocab_size": tokenizer_size, **TINY_TEXT, "max_position_embeddings": 4096}
    kwargs.update(overrides)
    return kwargs


def llava_config(tokenizer, vision: dict, text: dict, **extra):
    """A ``LlavaConfig`` (CLIP vision tower + Llama) around ``tokenizer``'s special tokens;
    ``vision``/``text`` are CLIPVisionConfig / LlamaConfig arguments (the vocabulary
    defaults to the tokenizer's)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision_config = CLIPVisionConfig(**vision)
    text_config = LlamaConfig(
        **{"vocab_size": len(tokenizer), **text},
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    side = vision_config.image_size // vision_config.patch_size
    return LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=tokenizer.image_token_id,
        image_seq_length=side * side,
        **extra,
    )


def llava_processor(tokenizer, size: int, patch: int):
    """LLaVA-1.5's processor layout (resize + centre crop to ``size``, CLS dropped)."""
    from transformers import CLIPImageProcessor, LlavaProcessor

    return LlavaProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": size}, crop_size={"height": size, "width": size}
        ),
        tokenizer=tokenizer,
        patch_size=patch,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=chat_templates.LLAVA_1_5,
    )


LLAVA_SPECIAL_TOKENS = (
    ["<unk>", "<s>", "</s>", "<pad>", "<image>"],
    {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"},
    {"image_token": "<image>"},
)


def _llava(shape: BuildShape):
    from transformers import LlavaForConditionalGeneration

    tokenizer = train_tokenizer(*LLAVA_SPECIAL_TOKENS)
    vision = {
        **TINY_VISION,
        "image_size": 64,
        "patch_size": 8,
        "projection_dim": 32,
        **shape.vision,
    }
    text = _text_kwargs(len(tokenizer), **shape.text)
    config = llava_config(tokenizer, vision, text)
    processor = llava_processor(tokenizer, vision["image_size"], vision["patch_size"])
    return LlavaForConditionalGeneration(config), processor


def _qwen_tokenizer():
    """The Qwen-VL families' special tokens (chat turns, vision markers) on a tiny trained
    tokenizer."""
    im = ["<|im_start|>", "<|im_end|>"]
    vision_tokens = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    return train_tokenizer(
        ["<|endoftext|>", *im, *vision_tokens],
        {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
        {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
    )


def _qwen2_5_vl(shape: BuildShape):
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    tokenizer = _qwen_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    text = _text_kwargs(
        len(tokenizer),
        **{
            "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3]},
            "bos_token_id": None,
            "eos_token_id": ids("<|im_end|>"),
            "pad_token_id": ids("<|endoftext|>"),
            **shape.text,
        },
    )
    vision = {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 4,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "window_size": 56,
        "fullatt_block_indexes": [1],
        "out_hidden_size": text["hidden_size"],
        **shape.vision,
    }
    patch, merge = vision["patch_size"], vision["spatial_merge_size"]
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    pixels = {"min_pixels": 4 * 28 * 28, "max_pixels": 64 * 28 * 28, **shape.processor}
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(patch_size=patch, merge_size=merge, **pixels),
        video_processor=Qwen2VLVideoProcessor(patch_size=patch, merge_size=merge, **pixels),
        tokenizer=tokenizer,
        chat_template=chat_templates.QWEN2_5_VL,
    )
    return Qwen2_5_VLForConditionalGeneration(config), processor


def _internvl(shape: BuildShape):
    from transformers import (
        GotOcr2ImageProcessor,
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLProcessor,
        InternVLVideoProcessor,
    )

    image_tokens = ["<img>", "</img>", "<IMG_CONTEXT>", "<video>"]
    tokenizer = train_tokenizer(
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *image_tokens],
        {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
        {
            "start_image_token": "<img>",
            "end_image_token": "</img>",
            "context_image_token": "<IMG_CONTEXT>",
            "video_token": "<video>",
        },
    )
    ids = tokenizer.convert_tokens_to_ids
    vision = {
        **TINY_VISION,
        "image_size": [112, 112],
        "patch_size": [14, 14],
        **shape.vision,
    }
    tile, patch = vision["image_size"][0], vision["patch_size"][0]
    tokens_per_tile = (tile // patch // 2) ** 2
    config = InternVLConfig(
        vision_config=vision,
        text_config={
            "model_type": "qwen2",
            **_text_kwargs(
                len(tokenizer),
                **{
                    "bos_token_id": None,
                    "eos_token_id": ids("<|im_end|>"),
                    "pad_token_id": ids("<|endoftext|>"),
                    **shape.text,
                },
            ),
        },
        image_token_id=ids("<IMG_CONTEXT>"),
        image_seq_length=tokens_per_tile,
        downsample_ratio=0.5,
        **shape.extra.get("config", {}),
    )
    size = {"height": tile, "width": tile}
    processor = InternVLProcessor(
        image_processor=GotOcr2ImageProcessor(
            size=size,
            **{"crop_to_patches": True, "min_patches": 1, "max_patches": 4, **shape.processor},
        ),
        video_processor=InternVLVideoProcessor(size=size),
        tokenizer=tokenizer,
        image_seq_length=tokens_per_tile,
        chat_template=chat_templates.INTERNVL3,
    )
    return InternVLForConditionalGeneration(config), processor


def _gemma3(shape: BuildShape):
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessor,
        Gemma3Processor,
    )

    image_tokens = ["<start_of_image>", "<end_of_image>", "<image_soft_token>"]
    tokenizer = train_tokenizer(
        ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", *image_tokens],
        {"pad_token": "<pad>", "eos_token": "<eos>", "bos_token": "<bos>", "unk_token": "<unk>"},
        {
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
            "image_token": "<image_soft_token>",
        },
    )
    ids = tokenizer.convert_tokens_to_ids
    text = {
        **_text_kwargs(len(tokenizer)),
        "head_dim": 16,
        "query_pre_attn_scalar": 16,
        "sliding_window": 512,
        "pad_token_id": ids("<pad>"),
        "eos_token_id": ids("<eos>"),
        "bos_token_id": ids("<bos>"),
        **shape.text,
    }
    text.setdefault("layer_types", gemma3_layer_types(text["num_hidden_layers"]))
    vision = {
        "model_type": "siglip_vision_model",
        **TINY_VISION,
        "image_size": 64,
        "patch_size": 8,
        **shape.vision,
    }
    size = vision["image_size"]
    tokens_per_side = shape.extra.get("tokens_per_side", 4)
    config = Gemma3Config(
        text_config=text,
        vision_config=vision,
        mm_tokens_per_image=tokens_per_side**2,
        boi_token_index=ids("<start_of_image>"),
        eoi_token_index=ids("<end_of_image>"),
        image_token_index=ids("<image_soft_token>"),
    )
    processor = Gemma3Processor(
        image_processor=Gemma3ImageProcessor(size={"height": size, "width": size}),
        tokenizer=tokenizer,
        image_seq_length=tokens_per_side**2,
        chat_template=chat_templates.GEMMA3,
    )
    return Gemma3ForConditionalGeneration(config), processor


def _qwen3_vl(shape: BuildShape):
    from transformers import (
        Qwen2VLImageProcessor,
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )

    tokenizer = _qwen_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    text = _text_kwargs(
        len(tokenizer),
        **{
            "head_dim": 16,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 5000000.0,
                "mrope_section": [2, 3, 3],
                "mrope_interleaved": True,
            },
            "bos_token_id": None,
            "eos_token_id": ids("<|im_end|>"),
            "pad_token_id": ids("<|endoftext|>"),
            **shape.text,
        },
    )
    vision = {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 4,
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "num_position_embeddings": 64,
        "deepstack_visual_indexes": [0],
        "out_hidden_size": text["hidden_size"],
        **shape.vision,
    }
    patch, merge = vision["patch_size"], vision["spatial_merge_size"]
    cell = patch * merge
    config = Qwen3VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=False,
    )
    pixels = {"min_pixels": 4 * cell * cell, "max_pixels": 64 * cell * cell, **shape.processor}
    normalise = {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}
    processor = Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(
            patch_size=patch, merge_size=merge, temporal_patch_size=2, **normalise, **pixels
        ),
        video_processor=Qwen3VLVideoProcessor(patch_size=patch, merge_size=merge, **normalise),
        tokenizer=tokenizer,
        chat_template=chat_templates.QWEN3_VL,
    )
    return Qwen3VLForConditionalGeneration(config), processor


def llava_next_pinpoints(tile: int) -> list[list[int]]:
    """LLaVA-v1.6's ``image_grid_pinpoints`` for tiles of ``tile`` px: (height, width) of
    1 x 2, 2 x 1, 2 x 2, 1 x 3 and 3 x 1 tiles (336 px: the published list)."""
    return [[tile * h, tile * w] for h, w in ((1, 2), (2, 1), (2, 2), (3, 1), (1, 3))]


def _llava_next(shape: BuildShape):
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
    )

    tokenizer = train_tokenizer(*LLAVA_SPECIAL_TOKENS)
    vision = {  # 32-px tiles of 4 x 4 tokens: up to 3 tiles + the base, short prompts
        **TINY_VISION,
        "image_size": 32,
        "patch_size": 8,
        "projection_dim": 32,
        **shape.vision,
    }
    size, patch = vision["image_size"], vision["patch_size"]
    pinpoints = shape.processor.get("image_grid_pinpoints") or llava_next_pinpoints(size)
    text = LlamaConfig(
        **_text_kwargs(len(tokenizer), **shape.text),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(**vision),
        text_config=text,
        image_token_index=tokenizer.image_token_id,
        image_grid_pinpoints=pinpoints,
        image_seq_length=(size // patch) ** 2,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    clip = {"image_mean": [0.48145466, 0.4578275, 0.40821073]}
    clip["image_std"] = [0.26862954, 0.26130258, 0.27577711]
    processor = LlavaNextProcessor(
        image_processor=LlavaNextImageProcessor(
            size={"shortest_edge": size},
            crop_size={"height": size, "width": size},
            image_grid_pinpoints=pinpoints,
            **clip,
        ),
        tokenizer=tokenizer,
        patch_size=patch,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=chat_templates.LLAVA_NEXT_VICUNA,
    )
    return LlavaNextForConditionalGeneration(config), processor


def gemma3_layer_types(layers: int) -> list[str]:
    """Gemma 3's pattern: five sliding-window layers, then one global (MedGemma-4B's 34:
    global at 5, 11, 17, 23, 29); a model too shallow for a global layer gets its last
    one global (3 layers: sliding, sliding, full)."""
    types = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(layers)]
    if "full_attention" not in types:
        types[-1] = "full_attention"
    return types


def _fill_zero_matrices(model, std: float | None = None) -> list[str]:
    """Draw every weight matrix that transformers leaves at zero from a normal
    distribution (std: ``std``, else the config's ``initializer_range``), in parameter
    order; returns their names. Gemma 3's projector ``mm_input_projection_weight`` starts
    at zero, so a random build's image tokens would carry no pixel at all; InternViT's
    ``cls_token`` and ``position_embeddings`` too (no position). Builds without such a
    matrix draw nothing: their weights are unchanged."""
    std = std or getattr(model.config.get_text_config(), "initializer_range", 0.02)
    filled = []
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.ndim >= 2 and not parameter.any():
                parameter.normal_(0.0, std)
                filled.append(name)
    return filled


_BUILDERS: dict[str, Callable] = {
    "llava": _llava,
    "qwen2_5_vl": _qwen2_5_vl,
    "internvl": _internvl,
    "gemma3": _gemma3,
    "qwen3_vl": _qwen3_vl,
    "llava_next": _llava_next,
}


def build_tiny(
    family: str,
    out_dir: str | Path,
    seed: int = 0,
    shape: BuildShape | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Build the tiny model of ``family`` into ``out_dir`` (weights, config, processor,
    tokenizer, chat template; original-format checkpoints for ``llava_qwen2``,
    ``llava_mistral``, ``llava_llama`` and ``internvl_chat``) and return the folder.
    Deterministic for a ``seed``. ``family`` may be a variant (:data:`VARIANTS`).
    ``shape`` overrides the tiny sizes (the rehearsal builds real image geometry);
    ``dtype``: the saved weights' dtype (default float32)."""
    shape = shape or BuildShape()
    if family in VARIANTS:
        family, settings = VARIANTS[family]
        shape = replace(shape, extra={**shape.extra, **settings})
    if family not in _BUILDERS and family not in ORIGINAL_FAMILIES:
        raise ValueError(f"no tiny build for family {family!r}; known: {TINY_FAMILIES}")
    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    if family in ORIGINAL_FAMILIES:
        return build_original(family, out_dir, shape, dtype)
    model, processor = _BUILDERS[family](shape)
    _fill_zero_matrices(model, shape.extra.get("init_std"))
    if dtype is not None:
        model = model.to(dtype)
    model.generation_config.do_sample = False
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir

"""Family adapters: where each image token of a family's processor lies in the original
image, and how to find the family's image tokens in the prompt.

A family adapter is a small object with ``name``, ``model_types`` (the transformers
``config.model_type`` values it serves), ``image_token_id(model)`` and
``layout(processor, image_size, inputs)``. :func:`register_family` adds one, so users can
plug in remote-code models (``trust_remote_code``) without this package vendoring them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from vgutils.geometry import TokenLayout, grid_boxes


class FamilyAdapter(Protocol):
    """What the package needs to know about a model family."""

    name: str
    model_types: tuple[str, ...]

    def image_token_id(self, model) -> int:
        """Id of the token that stands for one image token in ``input_ids``."""

    def layout(self, processor, image_size: tuple[int, int], inputs) -> TokenLayout:
        """Rectangles (original pixels) of the image tokens, in prompt order."""

    def position_ids(self, model, inputs):
        """Explicit position ids ``(..., 1, L)`` for the prompt when the model cannot infer
        them for a suffix run on a cache (multimodal RoPE), else ``None``."""


_FAMILIES: dict[str, FamilyAdapter] = {}


def register_family(adapter: FamilyAdapter) -> FamilyAdapter:
    """Register ``adapter`` for its ``model_types`` (later registrations win)."""
    for model_type in adapter.model_types:
        _FAMILIES[model_type] = adapter
    return adapter


def family_for(model_type: str) -> FamilyAdapter:
    """The adapter serving ``config.model_type``; ``ValueError`` naming the known ones."""
    if model_type not in _FAMILIES:
        raise ValueError(
            f"no family adapter for model_type {model_type!r}; known: {sorted(_FAMILIES)}. "
            "Add one with vgutils.models.register_family."
        )
    return _FAMILIES[model_type]


def family_of(config) -> FamilyAdapter:
    """The adapter of a model ``config``: its ``vgutils_family`` marker (set by the
    original-format converter, whose output has ``model_type`` ``llava``) or its
    ``model_type``."""
    return family_for(getattr(config, "vgutils_family", None) or config.model_type)


def _size_pair(size) -> tuple[int | None, int | None, int | None]:
    """(height, width, shortest_edge) from a processor size (dict or SizeDict)."""

    def get(key):
        return size.get(key) if isinstance(size, dict) else getattr(size, key, None)

    return get("height"), get("width"), get("shortest_edge")


@dataclass(frozen=True)
class LlavaFamily:
    """LLaVA-1.5: optional pad-to-square (mean colour), resize, centre crop, square grid."""

    name: str = "llava"
    model_types: tuple[str, ...] = ("llava",)

    def position_ids(self, model, inputs) -> None:
        return None

    def image_token_id(self, model) -> int:
        return model.config.image_token_id

    def layout(self, processor, image_size, inputs) -> TokenLayout:
        ip = processor.image_processor
        width, height = image_size
        # the image being transformed, as (origin_x, origin_y, width, height) in original px
        x0, y0, cur_w, cur_h = 0.0, 0.0, float(width), float(height)
        if getattr(ip, "do_pad", False):
            side = max(width, height)
            x0, y0 = -float((side - width) // 2), -float((side - height) // 2)
            cur_w = cur_h = float(side)
        new_h, new_w = cur_h, cur_w
        if ip.do_resize:
            target_h, target_w, shortest = _size_pair(ip.size)
            if shortest:
                short, long = min(cur_w, cur_h), max(cur_w, cur_h)
                new_short, new_long = shortest, int(shortest * long / short)
                new_w, new_h = (new_short, new_long) if cur_w <= cur_h else (new_long, new_short)
            else:
                new_h, new_w = target_h, target_w
        sx, sy = cur_w / new_w, cur_h / new_h
        left, top, view_w, view_h = 0, 0, new_w, new_h
        if ip.do_center_crop:
            view_h, view_w, _ = _size_pair(ip.crop_size)
            if view_h > new_h or view_w > new_w:
                raise NotImplementedError("centre crop larger than the resized image")
            top, left = int((new_h - view_h) / 2.0), int((new_w - view_w) / 2.0)
        patch = processor.patch_size
        region = (
            x0 + left * sx,
            y0 + top * sy,
            x0 + (left + view_w) * sx,
            y0 + (top + view_h) * sy,
        )
        return TokenLayout.from_region(view_h // patch, view_w // patch, region, image_size)


@dataclass(frozen=True)
class Qwen2_5VLFamily:
    """Qwen2.5-VL (and Qwen2-VL): dynamic-resolution resize of the whole image to a grid
    of ``image_grid_thw`` patches, merged ``merge x merge`` into one token each."""

    name: str = "qwen2_5_vl"
    model_types: tuple[str, ...] = ("qwen2_5_vl", "qwen2_vl")

    def position_ids(self, model, inputs):
        """Multimodal RoPE positions ``(3, 1, L)`` from the model's own ``get_rope_index``."""
        position_ids, _ = model.model.get_rope_index(
            inputs["input_ids"],
            mm_token_type_ids=inputs["mm_token_type_ids"],
            image_grid_thw=inputs["image_grid_thw"],
            attention_mask=inputs["attention_mask"],
        )
        return position_ids

    def image_token_id(self, model) -> int:
        return model.config.image_token_id

    def layout(self, processor, image_size, inputs) -> TokenLayout:
        merge = processor.image_processor.merge_size
        grid_t, grid_h, grid_w = (int(v) for v in inputs["image_grid_thw"][0])
        if grid_t != 1:
            raise NotImplementedError("one still image per prompt is supported")
        return TokenLayout.from_grid(grid_h // merge, grid_w // merge, image_size)


@dataclass(frozen=True)
class InternVLFamily:
    """InternVL3: tiles of the resized image (closest aspect-ratio grid, row-major), then a
    thumbnail of the whole image; each tile gives ``image_seq_length`` tokens after the
    pixel shuffle, a square row-major grid."""

    name: str = "internvl"
    model_types: tuple[str, ...] = ("internvl",)

    def position_ids(self, model, inputs) -> None:
        return None

    def image_token_id(self, model) -> int:
        return model.config.image_token_id

    def layout(self, processor, image_size, inputs) -> TokenLayout:
        from transformers.models.got_ocr2.image_processing_got_ocr2 import (
            get_optimal_tiled_canvas,
        )

        ip = processor.image_processor
        side = math.isqrt(processor.image_seq_length)
        width, height = image_size
        tile_h, tile_w, _ = _size_pair(ip.size)
        n_tiles = int(inputs["pixel_values"].shape[0])  # one image per prompt
        cols, rows = 1, 1
        if getattr(ip, "crop_to_patches", False):
            cols, rows = get_optimal_tiled_canvas(
                (height, width), (tile_h, tile_w), ip.min_patches, ip.max_patches
            )
        regions = [
            (c * width / cols, r * height / rows, (c + 1) * width / cols, (r + 1) * height / rows)
            for r in range(rows)
            for c in range(cols)
        ]
        if len(regions) > 1:  # the thumbnail follows the tiles
            regions.append((0.0, 0.0, float(width), float(height)))
        if len(regions) != n_tiles:
            raise RuntimeError(f"expected {len(regions)} tiles from the geometry, got {n_tiles}")
        per_tile = side * side
        boxes = np.concatenate([grid_boxes(side, side, region) for region in regions])
        grids = tuple((i * per_tile, side, side) for i in range(len(regions)))
        return TokenLayout(boxes, grids, image_size)


@dataclass(frozen=True)
class Gemma3Family:
    """Gemma 3 / MedGemma: the whole image resized to a square, pooled to a square grid of
    ``mm_tokens_per_image`` tokens (pan-and-scan crops are not supported)."""

    name: str = "gemma3"
    model_types: tuple[str, ...] = ("gemma3",)

    def position_ids(self, model, inputs) -> None:
        return None

    def image_token_id(self, model) -> int:
        return model.config.image_token_id

    def layout(self, processor, image_size, inputs) -> TokenLayout:
        if getattr(processor.image_processor, "do_pan_and_scan", False):
            raise NotImplementedError("Gemma 3 pan-and-scan crops are not supported")
        side = math.isqrt(processor.image_seq_length)
        return TokenLayout.from_grid(side, side, image_size)


@dataclass(frozen=True)
class OriginalLlavaFamily(LlavaFamily):
    """Original-format LLaVA checkpoints converted by :mod:`vgutils.models.original`
    (``model_type`` ``llava``, marked ``vgutils_family``): HuatuoGPT-Vision-7B
    (``llava_qwen2``) and LLaVA-Med v1.5 (``llava_mistral``). Their processor pads to
    square with the CLIP-mean colour before the CLIP resize / crop, so the grid covers the
    padded square (576 tokens at 336 px, patch 14); the prompt is the chat template's."""

    name: str = "llava_qwen2"
    model_types: tuple[str, ...] = ("llava_qwen2",)

    def layout(self, processor, image_size, inputs) -> TokenLayout:
        if not getattr(processor.image_processor, "do_pad", False):
            raise ValueError(
                f"{self.name}: the model's own preprocessing pads to square, but this "
                "processor does not (do_pad=False)"
            )
        return super().layout(processor, image_size, inputs)


for _adapter in (
    LlavaFamily(),
    Qwen2_5VLFamily(),
    InternVLFamily(),
    Gemma3Family(),
    OriginalLlavaFamily(),
    OriginalLlavaFamily(name="llava_mistral", model_types=("llava_mistral",)),
):
    register_family(_adapter)

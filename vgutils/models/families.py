"""Family adapters: where each image token of a family's processor lies in the original
image, and how to find the family's image tokens in the prompt.

A family adapter is a small object with ``name``, ``model_types`` (the transformers
``config.model_type`` values it serves), ``image_token_id(model)`` and
``layout(processor, image_size, inputs)``; optionally ``for_config(config)``, the adapter
for one model's config (InternVL-Chat's ``ps_version``). :func:`register_family` adds one,
so users can plug in remote-code models (``trust_remote_code``) without this package
vendoring them. Importing this module also registers the package's own model classes with
transformers' Auto classes (:mod:`vgutils.models.architectures`: LLaVA with S2 features,
InternVL-Chat with the ``ps_version`` v1 pixel shuffle), so their converted folders load.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np

from vgutils.geometry import TokenLayout
from vgutils.models import architectures  # noqa: F401  (registers the vgutils model classes)


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
    original-format converters, whose output has another ``model_type``) or its
    ``model_type``; configured for this config when the adapter has ``for_config``."""
    adapter = family_for(getattr(config, "vgutils_family", None) or config.model_type)
    for_config = getattr(adapter, "for_config", None)
    return for_config(config) if for_config is not None else adapter


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
class Qwen3VLFamily(Qwen2_5VLFamily):
    """Qwen3-VL: Qwen2.5-VL's geometry with 16-px patches merged 2 x 2 into one token
    (32-px cells; ``image_grid_thw`` counts patches), multimodal RoPE positions from the
    model's own ``get_rope_index``. Its DeepStack features are added to the image tokens'
    hidden states in the first language layers; they change no token's place."""

    name: str = "qwen3_vl"
    model_types: tuple[str, ...] = ("qwen3_vl",)


@dataclass(frozen=True)
class InternVLFamily:
    """InternVL3: tiles of the resized image (closest aspect-ratio grid, row-major), then a
    thumbnail of the whole image; each tile gives ``image_seq_length`` tokens after the
    pixel shuffle, a square row-major grid."""

    name: str = "internvl"
    model_types: tuple[str, ...] = ("internvl",)
    grid_order: str = "row"
    """Token order inside a tile's grid (``"column"``: InternVL's ``ps_version`` v1)."""

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
        grids = [(side, side, region, self.grid_order) for region in regions]
        return TokenLayout.from_grids(grids, image_size)


@dataclass(frozen=True)
class InternVLChatFamily(InternVLFamily):
    """InternVL-Chat in its original format (``internvl_chat`` remote code, converted by
    :mod:`vgutils.models.original_internvl`): MedRegA, built on InternVL-Chat-V1-2. One
    448-px tile of the whole image resized without keeping its aspect (tiles and a
    thumbnail only with ``dynamic_image_size``), 256 tokens after the pixel shuffle. With
    ``ps_version`` ``v1`` (the default of InternVL-Chat's code, MedRegA's) the shuffle
    leaves each tile's grid transposed: token ``k`` lies at row ``k % 16``, column
    ``k // 16`` (column-major), which the layout says."""

    name: str = "internvl_chat"
    model_types: tuple[str, ...] = ("internvl_chat",)
    grid_order: str = "column"

    def for_config(self, config) -> InternVLChatFamily:
        version = getattr(config, "ps_version", "v1")
        if version not in ("v1", "v2"):
            raise ValueError(f"internvl_chat: unknown ps_version {version!r} (v1 or v2)")
        return replace(self, grid_order="column" if version == "v1" else "row")


@dataclass(frozen=True)
class LlavaNextFamily:
    """LLaVA-NeXT (LLaVA-v1.6) "anyres": a base grid of the whole image resized to one
    tile (aspect not kept), then the high-resolution grid: the image resized into the best
    canvas of ``image_grid_pinpoints`` (aspect kept, centred, zero padding), cut into
    tiles, their feature grids joined and the rows / columns of padding cut off again
    (``unpad_image``), with an image-newline token ending every row. The newline tokens
    have no place in the image: the layout lists them as ``unplaced`` (not in ``N``)."""

    name: str = "llava_next"
    model_types: tuple[str, ...] = ("llava_next",)

    def position_ids(self, model, inputs) -> None:
        return None

    def image_token_id(self, model) -> int:
        return model.config.image_token_id

    def layout(self, processor, image_size, inputs) -> TokenLayout:
        from transformers.image_processing_utils import (
            get_patch_output_size,
            select_best_resolution,
        )
        from transformers.image_utils import ChannelDimension

        if processor.vision_feature_select_strategy != "default":
            raise NotImplementedError("llava_next: only the 'default' selection (no CLS)")
        ip = processor.image_processor
        width, height = image_size
        patch = processor.patch_size
        tile_h, tile_w = (int(v) for v in inputs["pixel_values"].shape[-2:])
        rows, cols = tile_h // patch, tile_w // patch  # one tile's feature grid
        best_h, best_w = select_best_resolution((height, width), ip.image_grid_pinpoints)
        shape = np.broadcast_to(np.zeros((), np.uint8), (1, height, width))  # sizes only
        new_h, new_w = get_patch_output_size(shape, (best_h, best_w), ChannelDimension.FIRST)
        pad_y, pad_x = (best_h - new_h) // 2, (best_w - new_w) // 2
        # the feature grid of the whole canvas, unpadded as the model's unpad_image does
        grid_h, grid_w = best_h // tile_h * rows, best_w // tile_w * cols
        r0, r1, c0, c1 = 0, grid_h, 0, grid_w
        if width / height > grid_w / grid_h:
            padding = (grid_h - int(round(height * (grid_w / width), 7))) // 2
            r0, r1 = padding, grid_h - padding
        else:
            padding = (grid_w - int(round(width * (grid_h / height), 7))) // 2
            c0, c1 = padding, grid_w - padding
        cell_w, cell_h = best_w / grid_w, best_h / grid_h  # canvas pixels per feature cell
        sx, sy = width / new_w, height / new_h  # canvas -> original pixels
        region = (
            (c0 * cell_w - pad_x) * sx,
            (r0 * cell_h - pad_y) * sy,
            (c1 * cell_w - pad_x) * sx,
            (r1 * cell_h - pad_y) * sy,
        )
        kept_rows, kept_cols = r1 - r0, c1 - c0
        base = rows * cols
        newlines = tuple(base + r * (kept_cols + 1) + kept_cols for r in range(kept_rows))
        whole = (0.0, 0.0, float(width), float(height))
        grids = [(rows, cols, whole, "row"), (kept_rows, kept_cols, region, "row")]
        return TokenLayout.from_grids(grids, image_size, unplaced=newlines)


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
    Qwen3VLFamily(),
    InternVLFamily(),
    InternVLChatFamily(),
    Gemma3Family(),
    LlavaNextFamily(),
    OriginalLlavaFamily(),
    OriginalLlavaFamily(name="llava_mistral", model_types=("llava_mistral",)),
    # LLaVA-Tri (llava_llama): the padded square resized to S2's largest scale; the
    # processor's patch_size is that size / the token grid's side, so the grid is 24 x 24
    OriginalLlavaFamily(name="llava_llama", model_types=("llava_llama",)),
):
    register_family(_adapter)

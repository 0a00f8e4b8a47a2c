"""Two model classes that transformers does not have, for original-format checkpoints the
converters write (:mod:`vgutils.models.original`, :mod:`vgutils.models.original_internvl`).

Each is transformers' own class with one step replaced, saved and loaded under its own
``model_type``, and registered with ``AutoConfig`` / ``AutoModelForImageTextToText`` when
this module is imported (the family code, :mod:`vgutils.models.families`, imports it, so
``load_model`` and ``from_pretrained`` after ``import vgutils.models.families`` load
them). Everything else (language model, capture attention, KV cache, prefix sharing,
generation) is the parent's:

- :class:`LlavaS2ForConditionalGeneration` (``vgutils_llava_s2``): LLaVA with S2
  multi-scale vision features (the ``s2wrapper`` ``multiscale_forward`` of LLaVA's
  ``CLIPVisionTowerS2``; LLaVA-Tri inherits it from
  ``MBZUAI/LLaVA-Meta-Llama-3-8B-Instruct-FT-S2``). The image, preprocessed at the largest
  scale, is resized (bicubic) to every scale in ``s2_scales``, each cut into tiles of the
  smallest scale (the tower's own size), the tower runs on every tile, the tiles' patch
  features are put back together, each scale's feature map is area-pooled to the
  smallest scale's grid and the scales are concatenated along the channels: the
  projector's input is ``vision width x len(s2_scales)`` wide, the token grid that of one
  tile (24 x 24 at 336 px).
- :class:`InternVLV1ForConditionalGeneration` (``vgutils_internvl_v1``): InternVL with the
  ``ps_version`` ``v1`` pixel shuffle of InternVL-Chat's code (MedRegA), which does not
  swap height and width back: its token grid is the ``v2`` grid transposed (column-major
  positions; :class:`vgutils.models.families.InternVLChatFamily` says so). A ``v2``
  checkpoint converts to transformers' own ``InternVLForConditionalGeneration``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    InternVLConfig,
    InternVLForConditionalGeneration,
    InternVLModel,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaModel,
)
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.internvl.modeling_internvl import InternVLPreTrainedModel
from transformers.models.llava.modeling_llava import LlavaPreTrainedModel

LLAVA_S2 = "vgutils_llava_s2"
INTERNVL_V1 = "vgutils_internvl_v1"


@strict
class LlavaS2Config(LlavaConfig):
    """:class:`~transformers.LlavaConfig` plus ``s2_scales`` (pixels, sorted ascending: the
    first is the tower's own image size, the last the preprocessed image's)."""

    model_type = LLAVA_S2
    s2_scales: list[int] | tuple[int, ...] = (336, 672, 1008)


class LlavaS2Projector(nn.Module):
    """LLaVA's ``mlp2x_gelu`` projector on the concatenated scales' features."""

    def __init__(self, config: LlavaS2Config):
        super().__init__()
        width = config.vision_config.hidden_size * len(config.s2_scales)
        hidden = config.text_config.hidden_size
        bias = config.multimodal_projector_bias
        self.linear_1 = nn.Linear(width, hidden, bias=bias)
        self.act = nn.GELU() if config.projector_hidden_act == "gelu" else None
        if self.act is None:
            raise ValueError(f"{LLAVA_S2}: projector_hidden_act must be 'gelu'")
        self.linear_2 = nn.Linear(hidden, hidden, bias=bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(features)))


def split_tiles(images: torch.Tensor, count: int) -> torch.Tensor:
    """``(B, C, count*h, count*w)`` -> ``(count*count*B, C, h, w)``: tile row, tile column,
    then image (the ``s2wrapper`` chessboard order)."""
    batch, channels, height, width = images.shape
    h, w = height // count, width // count
    tiles = images.reshape(batch, channels, count, h, count, w)
    return tiles.permute(2, 4, 0, 1, 3, 5).reshape(count * count * batch, channels, h, w)


def merge_tiles(tiles: torch.Tensor, count: int) -> torch.Tensor:
    """Inverse of :func:`split_tiles`."""
    total, channels, h, w = tiles.shape
    batch = total // (count * count)
    grid = tiles.reshape(count, count, batch, channels, h, w).permute(2, 3, 0, 4, 1, 5)
    return grid.reshape(batch, channels, count * h, count * w)


class LlavaS2Model(LlavaModel):
    """:class:`~transformers.LlavaModel` whose image features are S2 multi-scale ones."""

    config_class = LlavaS2Config

    def __init__(self, config: LlavaS2Config):
        LlavaPreTrainedModel.__init__(self, config)
        from transformers import AutoModel

        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.multi_modal_projector = LlavaS2Projector(config)
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    def scale_features(self, pixel_values, vision_feature_layer, vision_feature_select_strategy):
        """``(B, C, S, S)`` pixels at the largest scale -> ``(B, side*side, width*scales)``
        features, before the projector."""
        if not isinstance(vision_feature_layer, int):
            raise ValueError(f"{LLAVA_S2}: vision_feature_layer must be one layer")
        scales = sorted(int(s) for s in self.config.s2_scales)
        split = scales[0]
        counts = [math.ceil(size / split) for size in scales]
        tiles = []
        for size, count in zip(scales, counts, strict=True):
            resized = F.interpolate(pixel_values.to(torch.float32), size=size, mode="bicubic")
            tiles.append(split_tiles(resized.to(pixel_values.dtype), count))
        # every scale's tiles in one run of the tower (the original runs it once per
        # scale; each tile's features are the same, the tiles never meet in the tower)
        out = self.vision_tower(torch.cat(tiles), output_hidden_states=True, return_dict=True)
        features = out.hidden_states[vision_feature_layer]
        if vision_feature_select_strategy == "default":
            features = features[:, 1:]
        side = math.isqrt(features.shape[1])
        features = features.transpose(1, 2).reshape(features.shape[0], -1, side, side)
        maps = []
        for part, count in zip(features.split([len(t) for t in tiles]), counts, strict=True):
            maps.append(merge_tiles(part, count))
        grid = maps[0].shape[-2]
        pooled = [
            F.interpolate(m.to(torch.float32), size=grid, mode="area").to(m.dtype) for m in maps
        ]
        return torch.cat(pooled, dim=1).flatten(2).transpose(1, 2)

    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        image_sizes: torch.Tensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        layer = (
            self.config.vision_feature_layer
            if vision_feature_layer is None
            else vision_feature_layer
        )
        strategy = vision_feature_select_strategy or self.config.vision_feature_select_strategy
        features = self.scale_features(pixel_values, layer, strategy)
        projected = self.multi_modal_projector(features)
        return BaseModelOutputWithPooling(last_hidden_state=features, pooler_output=list(projected))


class LlavaS2ForConditionalGeneration(LlavaForConditionalGeneration):
    """:class:`~transformers.LlavaForConditionalGeneration` on :class:`LlavaS2Model`."""

    config_class = LlavaS2Config

    def __init__(self, config: LlavaS2Config):
        LlavaPreTrainedModel.__init__(self, config)
        self.model = LlavaS2Model(config)
        self.lm_head = nn.Linear(
            config.text_config.hidden_size, config.text_config.vocab_size, bias=False
        )
        self.post_init()


@strict
class InternVLV1Config(InternVLConfig):
    """:class:`~transformers.InternVLConfig` of a ``ps_version`` ``v1`` checkpoint."""

    model_type = INTERNVL_V1
    ps_version: str = "v1"


class InternVLV1Model(InternVLModel):
    """:class:`~transformers.InternVLModel` with InternVL-Chat's ``v1`` pixel shuffle:
    the ``v2`` result with height and width not swapped back."""

    config_class = InternVLV1Config

    def pixel_shuffle(self, vision_features: torch.Tensor, scale_factor: float = 0.5):
        return super().pixel_shuffle(vision_features, scale_factor).transpose(1, 2).contiguous()


class InternVLV1ForConditionalGeneration(InternVLForConditionalGeneration):
    """:class:`~transformers.InternVLForConditionalGeneration` on :class:`InternVLV1Model`."""

    config_class = InternVLV1Config

    def __init__(self, config: InternVLV1Config):
        InternVLPreTrainedModel.__init__(self, config)
        self.model = InternVLV1Model(config)
        self.lm_head = nn.Linear(
            config.text_config.hidden_size, config.text_config.vocab_size, bias=False
        )
        self.post_init()


def model_class(config):
    """The model class of a converted checkpoint's ``config``."""
    classes = {
        LLAVA_S2: LlavaS2ForConditionalGeneration,
        INTERNVL_V1: InternVLV1ForConditionalGeneration,
        "internvl": InternVLForConditionalGeneration,
        "llava": LlavaForConditionalGeneration,
    }
    return classes[config.model_type]


def expected_shapes(config) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of the converted model of ``config`` (built on the meta
    device: no memory)."""
    with torch.device("meta"):
        model = model_class(config)(config)
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


for _config, _model in (
    (LlavaS2Config, LlavaS2ForConditionalGeneration),
    (InternVLV1Config, InternVLV1ForConditionalGeneration),
):
    AutoConfig.register(_config.model_type, _config, exist_ok=True)
    AutoModelForImageTextToText.register(_config, _model, exist_ok=True)

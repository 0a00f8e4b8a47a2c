"""Randomly initialised models with the shapes of real checkpoints, for benchmarks.

They load nothing from the Hub: the sizes are the published checkpoint's
(:data:`vgutils.models.published.REAL_MODELS`), the depth can be cut, and the processor and
tokenizer come from the tiny build of the same family (real image processor, real sizes
set here).
"""

from __future__ import annotations

import torch
from transformers import AutoProcessor

from vgutils.models.loading import wrap_model
from vgutils.models.sources import resolve
from vgutils.models.vlm import VisionLanguageModel


def llava_1_5_7b(
    num_layers: int = 2,
    vision_layers: int = 24,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
) -> VisionLanguageModel:
    """LLaVA-1.5-7B shapes (CLIP ViT-L/14 at 336 px: 576 image tokens; Llama hidden 4096,
    32 heads, MLP 11008) with ``num_layers`` language layers and ``vision_layers`` vision
    layers, random weights."""
    from transformers import LlavaForConditionalGeneration

    from vgutils.models.published import REAL_MODELS
    from vgutils.models.tiny import llava_config, llava_processor

    tokenizer = AutoProcessor.from_pretrained(resolve("tiny:llava")).tokenizer
    real = REAL_MODELS["llava-hf/llava-1.5-7b-hf"]
    vision = {**real.vision, "num_hidden_layers": vision_layers}
    text = {**real.text, "num_hidden_layers": num_layers, "max_position_embeddings": 4096}
    config = llava_config(tokenizer, vision, text)
    processor = llava_processor(tokenizer, 336, 14)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlavaForConditionalGeneration(config).to(dtype)
    model.config._attn_implementation = "sdpa"
    return wrap_model(model, processor, source="shaped:llava-1.5-7b")


def qwen2_5_vl_7b(
    num_layers: int = 2,
    vision_layers: int = 2,
    max_image_tokens: int = 1600,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
) -> VisionLanguageModel:
    """Qwen2.5-VL-7B language-model shapes (hidden 3584, 28 heads, 4 KV heads, MLP 18944,
    multimodal RoPE) with ``num_layers`` layers, and its vision tower's shapes (hidden
    1280, 16 heads, 14 px patches, 2x2 merge) with ``vision_layers`` layers; the
    vocabulary is the tiny tokenizer's (it does not change attention), random weights.
    The processor allows up to ``max_image_tokens`` image tokens."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from vgutils.models.published import REAL_MODELS

    processor = AutoProcessor.from_pretrained(resolve("tiny:qwen2_5_vl"))
    tiny = Qwen2_5_VLConfig.from_pretrained(resolve("tiny:qwen2_5_vl"))
    real = REAL_MODELS["Qwen/Qwen2.5-VL-7B-Instruct"]
    config = Qwen2_5_VLConfig(
        text_config={
            **real.text,
            "vocab_size": tiny.text_config.vocab_size,
            "num_hidden_layers": num_layers,
            "max_position_embeddings": 32768,
            "bos_token_id": None,
            "eos_token_id": tiny.text_config.eos_token_id,
            "pad_token_id": tiny.text_config.pad_token_id,
        },
        vision_config={
            **real.vision,
            "depth": vision_layers,
            "fullatt_block_indexes": [vision_layers - 1],
        },
        image_token_id=tiny.image_token_id,
        video_token_id=tiny.video_token_id,
        vision_start_token_id=tiny.vision_start_token_id,
        vision_end_token_id=tiny.vision_end_token_id,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration(config).to(dtype)
    processor.image_processor.size = {
        "shortest_edge": 4 * 28 * 28,
        "longest_edge": max_image_tokens * 28 * 28,
    }
    model.config._attn_implementation = "sdpa"
    return wrap_model(model, processor, source="shaped:qwen2.5-vl-7b")

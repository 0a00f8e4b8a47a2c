"""Randomly initialised models with the shapes of real checkpoints, for benchmarks.

They load nothing from the Hub: the config is written out here from the published
checkpoint's ``config.json`` values, the depth can be cut, and the processor and tokenizer
come from the tiny build of the same family (real image processor, real sizes set here).
"""

from __future__ import annotations

import torch
from transformers import AutoProcessor, CLIPImageProcessor

from vgutils.models.loading import resolve, wrap_model
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
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    processor = AutoProcessor.from_pretrained(resolve("tiny:llava"))
    tokenizer = processor.tokenizer
    vision = CLIPVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=vision_layers,
        num_attention_heads=16,
        image_size=336,
        patch_size=14,
        projection_dim=768,
    )
    text = LlamaConfig(
        vocab_size=32064,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=num_layers,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=4096,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.image_token_id,
        image_seq_length=576,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = LlavaForConditionalGeneration(config).to(dtype)
    processor.image_processor = CLIPImageProcessor(
        size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}
    )
    processor.patch_size = 14
    model.config._attn_implementation = "sdpa"
    return wrap_model(model, processor, source="shaped:llava-1.5-7b")

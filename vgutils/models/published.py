"""The published sizes of the checkpoints the paper profile names (read from their
``config.json`` files, or where a value could not be read, the original code's defaults
and the base models' configs: the entries say which): the rehearsal's stand-ins keep
their image geometry (:mod:`vgutils.rehearsal.models`) and the benchmarks build models of
their shape (:mod:`vgutils.models.shaped`)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class RealModel:
    """A published checkpoint's family and sizes. ``vision`` / ``text``: config arguments
    of the vision tower and language model (pixels for ``image_size``); ``processor``:
    image-processor arguments; ``extra``: family settings (Gemma 3 ``tokens_per_side``)."""

    family: str
    vision: dict
    text: dict
    processor: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    @property
    def layers(self) -> int:
        """Language layers of the real checkpoint."""
        return self.text["num_hidden_layers"]

    @property
    def heads(self) -> int:
        """Attention heads of the real language model, all layers together."""
        return self.text["num_hidden_layers"] * self.text["num_attention_heads"]


_CLIP_L_336 = {  # openai/clip-vit-large-patch14-336 (LLaVA-1.5, HuatuoGPT-Vision, LLaVA-Med)
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": 336,
    "patch_size": 14,
}
_QWEN2_7B = {  # Qwen2-7B / Qwen2.5-7B language models
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
}
_QWEN2_5_VL_7B = RealModel(
    family="qwen2_5_vl",
    vision={
        "depth": 32,
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "num_heads": 16,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "window_size": 112,
        "fullatt_block_indexes": [7, 15, 23, 31],
        "out_hidden_size": 3584,
    },
    text={
        **_QWEN2_7B,
        "vocab_size": 152064,
        "max_position_embeddings": 128000,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 1000000.0,
            "mrope_section": [16, 24, 24],
        },
    },
    processor={"min_pixels": 3136, "max_pixels": 12845056},
)

_VICUNA_7B = {  # lmsys/vicuna-7b-v1.5 (Llama-2-7B), 64 rows added by llava-hf
    "vocab_size": 32064,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "max_position_embeddings": 4096,
}
_LLAMA_3_8B = {  # meta-llama/Meta-Llama-3-8B-Instruct
    "vocab_size": 128256,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "max_position_embeddings": 8192,
}
_YI_34B = {  # NousResearch/Nous-Hermes-2-Yi-34B (Yi-34B, a Llama architecture)
    "vocab_size": 64000,
    "hidden_size": 7168,
    "intermediate_size": 20480,
    "num_hidden_layers": 60,
    "num_attention_heads": 56,
    "num_key_value_heads": 8,
    "max_position_embeddings": 4096,
}
_INTERNVIT_6B_448_V1_2 = {  # OpenGVLab/InternViT-6B-448px-V1-2 (48 layers, last 3 dropped)
    "hidden_size": 3200,
    "intermediate_size": 12800,
    "num_hidden_layers": 45,
    "num_attention_heads": 25,
    "image_size": 448,
    "patch_size": 14,
    "qkv_bias": False,
    "qk_normalization": True,
    "norm_type": "rms_norm",
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-6,
}

REAL_MODELS: dict[str, RealModel] = {
    "llava-hf/llava-1.5-7b-hf": RealModel(
        family="llava",
        vision={**_CLIP_L_336, "projection_dim": 768},
        text={
            "vocab_size": 32064,
            "hidden_size": 4096,
            "intermediate_size": 11008,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 32,
            "max_position_embeddings": 4096,
        },
    ),
    "Qwen/Qwen2.5-VL-7B-Instruct": _QWEN2_5_VL_7B,
    "FreedomIntelligence/HuatuoGPT-Vision-7B-Qwen2.5VL": _QWEN2_5_VL_7B,
    "lingshu-medical-mllm/Lingshu-7B": _QWEN2_5_VL_7B,
    "OpenGVLab/InternVL3-8B-hf": RealModel(
        family="internvl",
        vision={
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "image_size": [448, 448],
            "patch_size": [14, 14],
        },
        text={
            **_QWEN2_7B,
            "vocab_size": 151674,
            "max_position_embeddings": 32768,
            "tie_word_embeddings": False,
        },
        processor={"min_patches": 1, "max_patches": 12},
        extra={"config": {"tie_word_embeddings": False}},
    ),
    "google/medgemma-4b-it": RealModel(
        family="gemma3",
        vision={
            "hidden_size": 1152,
            "intermediate_size": 4304,
            "num_hidden_layers": 27,
            "num_attention_heads": 16,
            "image_size": 896,
            "patch_size": 14,
            "vision_use_head": False,
        },
        text={
            "vocab_size": 262208,
            "hidden_size": 2560,
            "intermediate_size": 10240,
            "num_hidden_layers": 34,
            "num_attention_heads": 8,
            "num_key_value_heads": 4,
            "head_dim": 256,
            "query_pre_attn_scalar": 256,
            "sliding_window": 1024,
            "max_position_embeddings": 131072,
        },
        extra={"tokens_per_side": 16},
    ),
    "FreedomIntelligence/HuatuoGPT-Vision-7B": RealModel(
        family="llava_qwen2",
        vision={**_CLIP_L_336, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5},
        text={**_QWEN2_7B, "vocab_size": 152064, "max_position_embeddings": 32768},
    ),
    "microsoft/llava-med-v1.5-mistral-7b": RealModel(
        family="llava_mistral",
        vision={**_CLIP_L_336, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5},
        text={
            "vocab_size": 32000,
            "hidden_size": 4096,
            "intermediate_size": 14336,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "max_position_embeddings": 32768,
        },
    ),
    "Qwen/Qwen3-VL-8B-Instruct": RealModel(
        family="qwen3_vl",
        vision={
            "depth": 27,
            "hidden_size": 1152,
            "intermediate_size": 4304,
            "num_heads": 16,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "num_position_embeddings": 2304,
            "deepstack_visual_indexes": [8, 16, 24],
            "out_hidden_size": 4096,
            "hidden_act": "gelu_pytorch_tanh",
        },
        text={
            "vocab_size": 151936,
            "hidden_size": 4096,
            "intermediate_size": 12288,
            "num_hidden_layers": 36,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "head_dim": 128,
            "max_position_embeddings": 262144,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 5000000.0,
                "mrope_section": [24, 20, 20],
                "mrope_interleaved": True,
            },
        },
        processor={"min_pixels": 65536, "max_pixels": 16777216},
    ),
    "llava-hf/llava-v1.6-vicuna-7b-hf": RealModel(
        family="llava_next",
        vision={**_CLIP_L_336, "projection_dim": 768},
        text=_VICUNA_7B,
        processor={
            "image_grid_pinpoints": [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
        },
    ),
    "llava-hf/llava-v1.6-mistral-7b-hf": RealModel(
        family="llava_next",
        vision={**_CLIP_L_336, "projection_dim": 768},
        text={
            "vocab_size": 32064,
            "hidden_size": 4096,
            "intermediate_size": 14336,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "max_position_embeddings": 32768,
        },
        processor={
            "image_grid_pinpoints": [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
        },
    ),
    "UCSC-VLAA/LLaVA-Med-pp/SLAKE": RealModel(  # LLaVA-Tri fine-tuned on SLAKE
        family="llava_llama",
        vision={**_CLIP_L_336, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5},
        text=_LLAMA_3_8B,
        extra={"s2_scales": [336, 672, 1008]},
    ),
    "Luxuriant16/medrega": RealModel(  # InternVL-Chat-V1-2 architecture
        family="internvl_chat",
        vision=_INTERNVIT_6B_448_V1_2,
        text=_YI_34B,
        extra={"ps_version": "v1", "select_layer": -1, "template": "Hermes-2"},
    ),
}
"""Published sizes of every model the paper profile can name, by Hub id. Read from the
checkpoints' ``config.json`` where the note below does not say otherwise; not read (no
copy of these files could be reached from the sessions that wrote them): Qwen3-VL-8B's
(from the published model's documented sizes; its vision sizes are transformers'
``Qwen3VLVisionConfig`` defaults with the 8B's ``out_hidden_size``; the count of the
build, 8,767,123,696, matches the published 8.77B), LLaVA-v1.6's (LLaVA-1.5's CLIP,
Vicuna-7B or Mistral-7B-Instruct-v0.2 with llava-hf's 32064 rows, LLaVA-v1.6's published
``image_grid_pinpoints``; the builds count 7.06 B and 7.57 B as published),
LLaVA-Tri's (Llama-3-8B-Instruct, CLIP ViT-L/14-336, ``s2_scales`` the S2 code's default
"336,672,1008" inherited from LLaVA-Meta-Llama-3-8B-Instruct-FT-S2) and MedRegA's
(InternViT-6B-448px-V1-2: InternViT-6B's sizes with 45 layers; Nous-Hermes-2-Yi-34B's
sizes; ``ps_version`` v1, ``select_layer`` -1 and ``Hermes-2`` from MedRegA's training
script and the InternVL-Chat code's defaults). The README lists them."""


def real_model(model: str) -> RealModel:
    """The :data:`REAL_MODELS` entry of a Hub id; ``KeyError`` when it has none."""
    return REAL_MODELS[model]

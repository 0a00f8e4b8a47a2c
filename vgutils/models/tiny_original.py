"""Tiny checkpoints in the original LLaVA code's format (``llava_qwen2``, ``llava_mistral``).

They have the layout of ``FreedomIntelligence/HuatuoGPT-Vision-7B`` and
``microsoft/llava-med-v1.5-mistral-7b`` (CHECKPOINTS-AND-BENCHMARKS.md section 1), which
transformers cannot load as they are: a ``config.json`` with ``model_type`` ``llava_qwen2``
/ ``llava_mistral`` and the ``mm_*`` keys, the original key names
(``model.embed_tokens``, ``model.layers.N``, ``model.norm``, ``lm_head``,
``model.mm_projector.0/2``, ``model.vision_tower.vision_tower.vision_model.…``) in sharded
safetensors with their ``model.safetensors.index.json``, and a tokenizer without an
``<image>`` token (the original code splices the image at the placeholder id -200).

- ``llava_qwen2`` (HuatuoGPT-Vision): Qwen2 text model with unused embedding rows above
  the tokenizer, ``<|user|>`` / ``<|assistant|>`` plain text, and the CLIP tower's config and
  preprocessor in ``vit/<name>`` inside the checkpoint (``mm_vision_tower: ./vit/<name>``).
- ``llava_mistral`` (LLaVA-Med v1.5): Mistral text model whose rows are all used, a
  tokenizer that adds ``<s>``, ``[INST]`` plain text, and a separate CLIP folder (a
  ``CLIPModel`` with text and vision, like ``openai/clip-vit-large-patch14-336``) built
  beside the checkpoint as ``<out>-clip`` and named by absolute path in ``mm_vision_tower``.
  The checkpoint keeps its own (here different) copy of the vision weights, as the real
  one does.

The image side is small (64 px, patch 8: 64 patch tokens plus CLS) with the real structure:
CLS token, features of ``hidden_states[-2]`` without CLS, pad-to-square preprocessing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import save_file

if TYPE_CHECKING:
    from vgutils.models.tiny_parts import BuildShape

ORIGINAL_FAMILIES: tuple[str, ...] = ("llava_qwen2", "llava_mistral")

IMAGE_SIZE, PATCH = 64, 8
VISION = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "image_size": IMAGE_SIZE,
    "patch_size": PATCH,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}
TEXT = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
}
UNUSED_ROWS = 8
"""Qwen2's embedding matrix has rows above the tokenizer (152064 rows, 151646 ids)."""
INIT_STD = 0.15
"""Weights are drawn wider than the usual 0.02 so that attention and logits are far from
uniform and a wrong mapping shows in the equivalence tests."""

_CORPUS = [
    "<|user|>\n\nIs there a kidney in the image? Answer the question using a single word.\n"
    "<|assistant|>\n",
    "[INST] \nDoes this image show a colon? Is there a lesion in the liver? [/INST]",
    "What colour is the square? Is there evidence of abnormal density or masses in the colon?",
    "Write a general description of the image. Where is the box? Why?",
    "Answer the question using a single word or phrase. yes no left right upper lower",
    "lung heart brain liver spleen kidney bone chest abdomen cat dog person car",
]


def _preprocessor(size: int) -> dict:
    """The old CLIP feature-extractor format of the released vit folders (``size`` px)."""
    return {
        "crop_size": size,
        "do_center_crop": True,
        "do_normalize": True,
        "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor",
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "resample": 3,
        "size": size,
    }


def _tokenizer(qwen2: bool):
    from tokenizers import processors

    from vgutils.models.tiny_parts import train_tokenizer

    if qwen2:
        return train_tokenizer(
            ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
            {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"},
            corpus=_CORPUS,
        )
    tokenizer = train_tokenizer(
        ["<unk>", "<s>", "</s>"],
        {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"},
        corpus=_CORPUS,
    )
    bos = tokenizer.convert_tokens_to_ids("<s>")
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    return tokenizer


def _text_config(qwen2: bool, tokenizer, sizes: dict) -> dict:
    """The text part of an original ``config.json`` (the keys the released ones carry);
    ``sizes``: hidden size, layers, heads (:data:`TEXT` overridden)."""
    common = {
        **sizes,
        "attention_dropout": 0.0,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "use_cache": True,
    }
    if qwen2:
        eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
        return {
            **common,
            "architectures": ["LlavaQwen2ForCausalLM"],
            "model_type": "llava_qwen2",
            "vocab_size": sizes.get("vocab_size", len(tokenizer) + UNUSED_ROWS),
            "bos_token_id": eos,
            "eos_token_id": eos,
            "rms_norm_eps": 1e-6,
            "max_window_layers": sizes["num_hidden_layers"],
            "sliding_window": 4096,
            "use_sliding_window": False,
        }
    return {
        **common,
        "architectures": ["LlavaMistralForCausalLM"],
        "model_type": "llava_mistral",
        "vocab_size": sizes.get("vocab_size", len(tokenizer)),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "rms_norm_eps": 1e-5,
        "sliding_window": None,
    }


def _init(module: torch.nn.Module, std: float = INIT_STD) -> None:
    for name, param in module.named_parameters():
        if "norm" in name or name.endswith("bias"):
            torch.nn.init.normal_(param, mean=1.0 if "norm" in name else 0.0, std=0.05)
        else:
            torch.nn.init.normal_(param, std=std)


def _vision_state(vision_model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A CLIP vision model's weights under their ``vision_model.`` names."""
    state = vision_model.state_dict()
    return {
        key if key.startswith("vision_model.") else f"vision_model.{key}": value
        for key, value in state.items()
    }


def save_sharded(state: dict[str, torch.Tensor], out_dir: Path, shards: int) -> None:
    """``model-0000i-of-0000n.safetensors`` + ``model.safetensors.index.json``, keys in
    ``state``'s order, cut into ``shards`` runs of about equal size."""
    keys = list(state)
    total = sum(t.numel() * t.element_size() for t in state.values())
    per_shard = total / shards
    groups: list[list[str]] = [[]]
    size = 0
    for key in keys:
        if size >= per_shard * len(groups) and len(groups) < shards:
            groups.append([])
        groups[-1].append(key)
        size += state[key].numel() * state[key].element_size()
    weight_map = {}
    for i, group in enumerate(groups, start=1):
        name = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        save_file({k: state[k].contiguous() for k in group}, out_dir / name, {"format": "pt"})
        weight_map.update(dict.fromkeys(group, name))
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def _clip_folder(folder: Path, vision: dict, std: float, dtype: torch.dtype) -> None:
    """A full CLIP checkpoint (text + vision, ``CLIPModel`` keys and config), the way
    ``openai/clip-vit-large-patch14-336`` is published."""
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        text_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "vocab_size": 64,
            "pad_token_id": 0,
            "bos_token_id": 1,
            "eos_token_id": 2,
        },
        vision_config=vision,
        projection_dim=16,
    )
    model = CLIPModel(config)
    _init(model, std)
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith("vision_model.") or key.startswith("text_model."):
            state[key] = value
        elif key.startswith("vision_tower.") or key.startswith("vision_embeddings."):
            state[f"vision_model.{key.split('.', 1)[1]}"] = value
        else:
            state[key] = value
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.to(dtype).contiguous() for k, v in state.items()}
    save_file(state, folder / "model.safetensors")
    _write_json(folder / "config.json", config.to_dict())
    _write_json(folder / "preprocessor_config.json", _preprocessor(vision["image_size"]))


def build_original(
    family: str,
    out_dir: str | Path,
    shape: BuildShape | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Build the tiny original-format checkpoint of ``family`` (``llava_qwen2`` or
    ``llava_mistral``) into ``out_dir``; the caller seeds torch. ``shape`` overrides the
    sizes (``vision``: :data:`VISION`, ``text``: :data:`TEXT`, ``extra["init_std"]``: the
    weights' spread, default :data:`INIT_STD`); ``dtype``: the saved weights' dtype."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    if family not in ORIGINAL_FAMILIES:
        raise ValueError(f"no original-format build {family!r}; known: {ORIGINAL_FAMILIES}")
    qwen2 = family == "llava_qwen2"
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vision_sizes = {**VISION, **(shape.vision if shape else {})}
    text_sizes = {**TEXT, **(shape.text if shape else {})}
    std = (shape.extra if shape else {}).get("init_std", INIT_STD)
    dtype = dtype or torch.float32
    tokenizer = _tokenizer(qwen2)
    text = _text_config(qwen2, tokenizer, text_sizes)
    text["torch_dtype"] = str(dtype).removeprefix("torch.")
    if qwen2:
        from transformers import Qwen2Config as TextConfig
        from transformers import Qwen2ForCausalLM as TextModel
    else:
        from transformers import MistralConfig as TextConfig
        from transformers import MistralForCausalLM as TextModel
    text_kwargs = {k: v for k, v in text.items() if k not in ("architectures", "model_type")}
    language = TextModel(TextConfig(**text_kwargs))
    vision = CLIPVisionModel(CLIPVisionConfig(**vision_sizes))
    projector = torch.nn.Sequential(
        torch.nn.Linear(vision_sizes["hidden_size"], text_sizes["hidden_size"]),
        torch.nn.GELU(),
        torch.nn.Linear(text_sizes["hidden_size"], text_sizes["hidden_size"]),
    )
    for module in (language, vision, projector):
        _init(module, std)

    language_state = language.state_dict()
    state = {k: v for k, v in language_state.items() if k != "lm_head.weight"}
    for index in (0, 2):
        for name, value in projector[index].state_dict().items():
            state[f"model.mm_projector.{index}.{name}"] = value
    for key, value in _vision_state(vision).items():
        state[f"model.vision_tower.vision_tower.{key}"] = value
    state["lm_head.weight"] = language_state["lm_head.weight"]
    save_sharded({k: v.to(dtype) for k, v in state.items()}, out_dir, shards=3)

    size, patch = vision_sizes["image_size"], vision_sizes["patch_size"]
    if qwen2:
        tower_name = f"clip_vit_tiny_patch{patch}_{size}"
        tower = f"./vit/{tower_name}"
        vit = out_dir / "vit" / tower_name
        _write_json(vit / "config.json", CLIPVisionConfig(**vision_sizes).to_dict())
        _write_json(vit / "preprocessor_config.json", _preprocessor(size))
    else:
        clip = out_dir.parent / f"{out_dir.name}-clip"
        _clip_folder(clip, vision_sizes, std, dtype)
        tower = str(clip.resolve())
    config = {
        **text,
        "image_aspect_ratio": "pad",
        "mm_hidden_size": vision_sizes["hidden_size"],
        "mm_patch_merge_type": "flat",
        "mm_projector_type": "mlp2x_gelu",
        "mm_use_im_patch_token": False,
        "mm_use_im_start_end": False,
        "mm_vision_select_feature": "patch",
        "mm_vision_select_layer": -2,
        "mm_vision_tower": tower,
        "tokenizer_model_max_length": 2048,
        "tokenizer_padding_side": "right",
        "tune_mm_mlp_adapter": False,
        "use_mm_proj": True,
        "transformers_version": "4.37.2",
    }
    _write_json(out_dir / "config.json", config)
    generation = {"bos_token_id": text["bos_token_id"], "eos_token_id": text["eos_token_id"]}
    _write_json(out_dir / "generation_config.json", {**generation, "do_sample": False})
    tokenizer.save_pretrained(out_dir)
    return out_dir

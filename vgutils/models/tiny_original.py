"""Tiny checkpoints in original formats: the LLaVA code's (``llava_qwen2``,
``llava_mistral``, ``llava_llama``) and InternVL-Chat's (``internvl_chat``).

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

- ``llava_llama`` (LLaVA-Tri, MedTrinity-25M's LLaVA fork): Llama-3 text model whose rows
  are all used, a Llama-3-style tokenizer (``<|begin_of_text|>`` added, header and
  ``<|eot_id|>`` tokens), the CLIP tower in a separate folder (``mm_vision_tower``; the
  checkpoint keeps another copy) and S2: ``s2: true``, ``s2_scales "64,128,192"`` (the
  real ``"336,672,1008"`` scaled to the 64-px tower), ``mm_hidden_size`` 3 x 32. The
  ``extra`` setting ``s2_scales: None`` builds it without S2.
- ``internvl_chat`` (MedRegA, InternVL-Chat-V1-2's format): ``vision_config`` of an
  InternViT (RMSNorm, qk-norm over all heads, layer scale ``ls1``/``ls2``, one ``qkv``
  matrix, no qkv bias), ``llm_config`` of a Llama, ``mlp1`` projector (LayerNorm, Linear,
  GELU, Linear), ``select_layer -1``, ``downsample_ratio 0.5``, ``template Hermes-2``,
  ``ps_version`` from ``extra`` (default ``v1``, MedRegA's), keys ``vision_model.…``,
  ``mlp1.…``, ``language_model.model.…``, ``language_model.lm_head.weight``, and a
  tokenizer with InternVL's nine added tokens (``<img>``, ``</img>``, ``<IMG_CONTEXT>``,
  ...) inside the language model's rows.

The image side is small (64 px, patch 8: 64 patch tokens plus CLS) with the real structure:
CLS token, features of ``hidden_states[-2]`` without CLS, pad-to-square preprocessing
(LLaVA); CLS dropped after the last layer, 2 x 2 pixel shuffle, one resized tile
(InternVL-Chat).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import save_file

if TYPE_CHECKING:
    from vgutils.models.tiny_parts import BuildShape

ORIGINAL_FAMILIES: tuple[str, ...] = (
    "llava_qwen2",
    "llava_mistral",
    "llava_llama",
    "internvl_chat",
)
LLAVA_FAMILIES: tuple[str, ...] = ("llava_qwen2", "llava_mistral", "llava_llama")
S2_SCALES = (64, 128, 192)
"""The tiny LLaVA-Tri's S2 scales (the tower's 64 px, then x2 and x3, as 336/672/1008)."""
INTERNVL_TOKENS = ("<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>")
INTERNVL_TOKENS += ("<box>", "</box>")
"""The tokens InternVL-Chat's fine-tuning code adds to the tokenizer (in this order)."""

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


def _tokenizer(family: str):
    from tokenizers import processors

    from vgutils.models.tiny_parts import train_tokenizer

    if family == "llava_qwen2":
        return train_tokenizer(
            ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
            {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"},
            corpus=_CORPUS,
        )
    if family == "internvl_chat":  # Yi's special tokens (no BOS added), then InternVL's
        yi = ["<unk>", "<|startoftext|>", "<|endoftext|>", "<|Human|>", "<|Assistant|>"]
        tokenizer = train_tokenizer(
            [*yi, "<|System|>", "<|im_start|>", "<|im_end|>", "<|im_sep|>"],
            {"unk_token": "<unk>", "bos_token": "<|startoftext|>", "eos_token": "<|im_end|>"},
            corpus=_CORPUS,
        )
        tokenizer.add_tokens(list(INTERNVL_TOKENS), special_tokens=True)
        return tokenizer
    if family == "llava_llama":  # Llama-3's: BOS added, header and end-of-turn tokens
        bos = "<|begin_of_text|>"
        tokenizer = train_tokenizer(
            [bos, "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
            {"bos_token": bos, "eos_token": "<|eot_id|>"},
            corpus=_CORPUS,
        )
    else:
        bos = "<s>"
        tokenizer = train_tokenizer(
            ["<unk>", "<s>", "</s>"],
            {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"},
            corpus=_CORPUS,
        )
    bos_id = tokenizer.convert_tokens_to_ids(bos)
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
    )
    return tokenizer


def _text_config(family: str, tokenizer, sizes: dict) -> dict:
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
    if family == "llava_qwen2":
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
    if family in ("llava_llama", "internvl_chat"):  # Llama-3-8B / Yi-34B: Llama layers
        llava = family == "llava_llama"
        return {
            **common,
            "architectures": ["LlavaLlamaForCausalLM" if llava else "LlamaForCausalLM"],
            "model_type": "llava_llama" if llava else "llama",
            "vocab_size": sizes.get("vocab_size", len(tokenizer)),
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "rms_norm_eps": 1e-5,
            "rope_theta": 500000.0 if llava else 5000000.0,
            "attention_bias": False,
            "mlp_bias": False,
            "pretraining_tp": 1,
            "rope_scaling": None,
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


_NOT_TEXT_KWARGS = ("architectures", "model_type", "rope_scaling")
"""Keys of a written text config that do not go to the text model's config class (Llama's
``rope_scaling: null`` is written as the real configs have it; the class warns on it)."""


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
    """Build the tiny original-format checkpoint of ``family`` (:data:`ORIGINAL_FAMILIES`)
    into ``out_dir``; the caller seeds torch. ``shape`` overrides the sizes (``vision``:
    :data:`VISION` / :data:`INTERNVIT`, ``text``: :data:`TEXT`, ``extra``: ``init_std``
    the weights' spread, default :data:`INIT_STD`; ``s2_scales`` for ``llava_llama``
    (``None``: no S2); ``ps_version``, ``select_layer`` for ``internvl_chat``);
    ``dtype``: the saved weights' dtype."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    if family not in ORIGINAL_FAMILIES:
        raise ValueError(f"no original-format build {family!r}; known: {ORIGINAL_FAMILIES}")
    if family == "internvl_chat":
        return _build_internvl_chat(Path(out_dir), shape, dtype)
    qwen2 = family == "llava_qwen2"
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vision_sizes = {**VISION, **(shape.vision if shape else {})}
    text_sizes = {**TEXT, **(shape.text if shape else {})}
    extra = shape.extra if shape else {}
    std = extra.get("init_std", INIT_STD)
    dtype = dtype or torch.float32
    tokenizer = _tokenizer(family)
    text = _text_config(family, tokenizer, text_sizes)
    text["torch_dtype"] = str(dtype).removeprefix("torch.")
    if qwen2:
        from transformers import Qwen2Config as TextConfig
        from transformers import Qwen2ForCausalLM as TextModel
    elif family == "llava_llama":
        from transformers import LlamaConfig as TextConfig
        from transformers import LlamaForCausalLM as TextModel
    else:
        from transformers import MistralConfig as TextConfig
        from transformers import MistralForCausalLM as TextModel
    # S2 (LLaVA-Tri): the projector sees every scale's features side by side
    scales = extra.get("s2_scales", S2_SCALES) if family == "llava_llama" else None
    mm_hidden = vision_sizes["hidden_size"] * (len(scales) if scales else 1)
    text_kwargs = {k: v for k, v in text.items() if k not in _NOT_TEXT_KWARGS}
    language = TextModel(TextConfig(**text_kwargs))
    vision = CLIPVisionModel(CLIPVisionConfig(**vision_sizes))
    projector = torch.nn.Sequential(
        torch.nn.Linear(mm_hidden, text_sizes["hidden_size"]),
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
        "mm_hidden_size": mm_hidden,
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
    if family == "llava_llama":
        config.update(tokenizer_model_max_length=4096, transformers_version="4.40.0")
        if scales:
            config.update(s2=True, s2_scales=",".join(str(v) for v in scales))
    _write_json(out_dir / "config.json", config)
    generation = {"bos_token_id": text["bos_token_id"], "eos_token_id": text["eos_token_id"]}
    _write_json(out_dir / "generation_config.json", {**generation, "do_sample": False})
    tokenizer.save_pretrained(out_dir)
    return out_dir


INTERNVIT = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "image_size": IMAGE_SIZE,
    "patch_size": PATCH,
    "qkv_bias": False,
    "qk_normalization": True,
    "norm_type": "rms_norm",
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-6,
}
"""The tiny InternViT (InternViT-6B-448px-V1-2's structure: RMSNorm, qk-norm, layer scale,
no qkv bias; :class:`InternVisionConfig` names)."""


def internvit_state(config: dict, std: float) -> dict[str, torch.Tensor]:
    """Random weights of an InternViT under the original names (``embeddings.…``,
    ``encoder.layers.N.attn.qkv`` …), drawn in the order listed; norms and layer scales
    around 1, biases around 0."""
    width, inner = config["hidden_size"], config["intermediate_size"]
    patch, side = config["patch_size"], config["image_size"] // config["patch_size"]
    rms = config.get("norm_type", "rms_norm") == "rms_norm"
    shapes = {
        "embeddings.class_embedding": (1, 1, width),
        "embeddings.patch_embedding.weight": (width, 3, patch, patch),
        "embeddings.patch_embedding.bias": (width,),
        "embeddings.position_embedding": (1, side * side + 1, width),
    }
    for i in range(config["num_hidden_layers"]):
        layer = f"encoder.layers.{i}."
        shapes[layer + "attn.qkv.weight"] = (3 * width, width)
        if config.get("qkv_bias"):
            shapes[layer + "attn.qkv.bias"] = (3 * width,)
        if config.get("qk_normalization"):
            shapes[layer + "attn.q_norm.weight"] = (width,)
            shapes[layer + "attn.k_norm.weight"] = (width,)
        shapes[layer + "attn.proj.weight"] = (width, width)
        shapes[layer + "attn.proj.bias"] = (width,)
        shapes[layer + "mlp.fc1.weight"] = (inner, width)
        shapes[layer + "mlp.fc1.bias"] = (inner,)
        shapes[layer + "mlp.fc2.weight"] = (width, inner)
        shapes[layer + "mlp.fc2.bias"] = (width,)
        for norm in ("norm1", "norm2"):
            shapes[layer + f"{norm}.weight"] = (width,)
            if not rms:
                shapes[layer + f"{norm}.bias"] = (width,)
        shapes[layer + "ls1"] = (width,)
        shapes[layer + "ls2"] = (width,)
    state = {}
    for name, size in shapes.items():
        if name.endswith("bias"):
            state[name] = torch.randn(size) * 0.05
        elif "norm" in name or name.endswith(("ls1", "ls2")):
            state[name] = 1.0 + torch.randn(size) * 0.05
        else:
            state[name] = torch.randn(size) * std
    return state


def _build_internvl_chat(out_dir: Path, shape: BuildShape | None, dtype) -> Path:
    """The tiny InternVL-Chat checkpoint (MedRegA's format) in ``out_dir``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    out_dir.mkdir(parents=True, exist_ok=True)
    extra = shape.extra if shape else {}
    vision = {**INTERNVIT, **(shape.vision if shape else {})}
    text_sizes = {**TEXT, **(shape.text if shape else {})}
    std = extra.get("init_std", INIT_STD)
    dtype = dtype or torch.float32
    tokenizer = _tokenizer("internvl_chat")
    text = _text_config("internvl_chat", tokenizer, text_sizes)
    text["torch_dtype"] = str(dtype).removeprefix("torch.")
    kwargs = {k: v for k, v in text.items() if k not in _NOT_TEXT_KWARGS}
    language = LlamaForCausalLM(LlamaConfig(**kwargs))
    _init(language, std)
    ratio = extra.get("downsample_ratio", 0.5)
    merged = vision["hidden_size"] * int(1 / ratio) ** 2
    hidden = text_sizes["hidden_size"]
    projector = torch.nn.Sequential(
        torch.nn.LayerNorm(merged),
        torch.nn.Linear(merged, hidden),
        torch.nn.GELU(),
        torch.nn.Linear(hidden, hidden),
    )
    _init(projector, std)
    state = {f"vision_model.{k}": v for k, v in internvit_state(vision, std).items()}
    for key, value in projector.state_dict().items():
        state[f"mlp1.{key}"] = value
    for key, value in language.state_dict().items():
        state[f"language_model.{key}"] = value
    save_sharded({k: v.to(dtype) for k, v in state.items()}, out_dir, shards=3)
    vision_config = {
        **vision,
        "architectures": ["InternVisionModel"],
        "model_type": "intern_vit_6b",
        "num_channels": 3,
        "dropout": 0.0,
        "drop_path_rate": 0.0,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "initializer_factor": 0.1,
        "use_flash_attn": True,
    }
    config = {
        "architectures": ["InternVLChatModel"],
        "model_type": "internvl_chat",
        "auto_map": {
            "AutoConfig": "configuration_internvl_chat.InternVLChatConfig",
            "AutoModel": "modeling_internvl_chat.InternVLChatModel",
            "AutoModelForCausalLM": "modeling_internvl_chat.InternVLChatModel",
        },
        "vision_config": vision_config,
        "llm_config": text,
        "select_layer": extra.get("select_layer", -1),
        "downsample_ratio": ratio,
        "ps_version": extra.get("ps_version", "v1"),
        "force_image_size": vision["image_size"],
        "template": extra.get("template", "Hermes-2"),
        "dynamic_image_size": False,
        "use_thumbnail": False,
        "pad2square": False,
        "min_dynamic_patch": 1,
        "max_dynamic_patch": 6,
        "use_backbone_lora": 0,
        "use_llm_lora": 0,
        "torch_dtype": text["torch_dtype"],
        "transformers_version": "4.37.2",
    }
    _write_json(out_dir / "config.json", config)
    generation = {"bos_token_id": text["bos_token_id"], "eos_token_id": text["eos_token_id"]}
    _write_json(out_dir / "generation_config.json", {**generation, "do_sample": False})
    tokenizer.save_pretrained(out_dir)
    return out_dir

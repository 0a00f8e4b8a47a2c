"""InternVL-Chat checkpoints in their original format (``internvl_chat``, remote code) ->
transformers' InternVL classes; MedRegA (``Luxuriant16/medrega``, built on
InternVL-Chat-V1-2) is one.

transformers' own InternVL conversion script does not cover V1-2 (its model table, the
``rms_norm`` vision norm, the ``v1`` pixel shuffle, the image token id); this module reads
the original files directly, so no remote code runs (:func:`vgutils.models.original.convert`
calls :func:`plan` for an ``internvl_chat`` config). What maps onto what:

- vision (InternViT-6B-448px-V1-2 in MedRegA: RMSNorm, qk-norm over all heads together,
  layer scale, no qkv bias, no final norm): transformers' ``InternVLVisionModel`` with
  ``norm_type`` from the config (``rms_norm`` when absent: MedRegA's code always uses
  RMSNorm), ``use_qk_norm``, ``attention_bias`` = ``qkv_bias``, ``use_mean_pooling=True``
  (its final norm is then the identity, as InternViT has none); the fused ``attn.qkv``
  matrix is split into ``q_proj`` / ``k_proj`` / ``v_proj`` (rows in that order), ``ls1`` /
  ``ls2`` are ``lambda_1`` / ``lambda_2``, ``norm1`` / ``norm2`` the layer norms before
  and after attention. ``select_layer`` -> ``vision_feature_layer`` (-1: the last layer's
  output), CLS dropped.
- projector ``mlp1`` (LayerNorm, Linear, GELU, Linear) -> ``multi_modal_projector``.
- language model (``LlamaForCausalLM``: Nous-Hermes-2-Yi-34B) -> the Llama text model and
  ``lm_head``.
- pixel shuffle: ``ps_version`` ``v2`` is transformers' own; ``v1`` (InternVL-Chat's
  default, MedRegA's) leaves the grid transposed, which transformers' class cannot do:
  :class:`vgutils.models.architectures.InternVLV1ForConditionalGeneration`.
- image token: ``<IMG_CONTEXT>``, a row of the embedding matrix (InternVL's fine-tuning
  code adds its tokens to the tokenizer and grows the matrix);
- preprocessing: one tile, the image resized to ``force_image_size`` (448) without keeping
  its aspect, bicubic, ImageNet mean / std (``build_transform``); with
  ``dynamic_image_size`` (tiles) the conversion stops (not supported). Saved as
  ``GotOcr2ImageProcessorPil`` (PIL resize, as torchvision's ``Resize`` of a PIL image);
- prompt: the ``template`` named in the config; ``Hermes-2`` is supported
  (:data:`vgutils.models.chat_templates.HERMES_2`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from vgutils.models import chat_templates
from vgutils.models.architectures import expected_shapes
from vgutils.models.original_files import (
    SHARD_BYTES,
    ConversionError,
    ShardWriter,
    iter_tensors,
    read_config,
    weight_files,
)

MODEL_TYPE = "internvl_chat"
TEMPLATES = {"Hermes-2": chat_templates.HERMES_2}
"""InternVL-Chat ``template`` names -> chat templates rendering them."""
IMAGE_TOKENS = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
}
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
VISION = "model.vision_tower."
_LAYER = re.compile(r"vision_model\.encoder\.layers\.(\d+)\.(.+)")
_LAYER_RENAMES = {
    "attn.q_norm.": "attention.q_norm.",
    "attn.k_norm.": "attention.k_norm.",
    "attn.proj.": "attention.projection_layer.",
    "mlp.fc1.": "mlp.fc1.",
    "mlp.fc2.": "mlp.fc2.",
    "norm1.": "layernorm_before.",
    "norm2.": "layernorm_after.",
}
_RENAMES = {
    "vision_model.embeddings.class_embedding": f"{VISION}embeddings.cls_token",
    "vision_model.embeddings.position_embedding": f"{VISION}embeddings.position_embeddings",
    "vision_model.embeddings.patch_embedding.": f"{VISION}embeddings.patch_embeddings.projection.",
    "mlp1.0.": "model.multi_modal_projector.layer_norm.",
    "mlp1.1.": "model.multi_modal_projector.linear_1.",
    "mlp1.3.": "model.multi_modal_projector.linear_2.",
    "language_model.model.": "model.language_model.",
    "language_model.lm_head.": "lm_head.",
}


def map_tensor(key: str, tensor: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """The transformers name(s) and tensor(s) of original ``key``: one, or three for the
    fused ``qkv`` (rows q, k, v); :class:`ConversionError` for an unknown key."""
    match = _LAYER.fullmatch(key)
    if match:
        index, rest = match.groups()
        prefix = f"{VISION}encoder.layer.{index}."
        if rest.startswith("attn.qkv."):
            kind = rest[len("attn.qkv.") :]
            q, k, v = tensor.chunk(3, dim=0)
            parts = zip("qkv", (q, k, v), strict=True)
            return [(f"{prefix}attention.{n}_proj.{kind}", t) for n, t in parts]
        if rest in ("ls1", "ls2"):
            return [(f"{prefix}lambda_{rest[-1]}", tensor)]
        for old, new in _LAYER_RENAMES.items():
            if rest.startswith(old):
                return [(prefix + new + rest[len(old) :], tensor)]
    for old, new in _RENAMES.items():
        if key == old or (old.endswith(".") and key.startswith(old)):
            return [(new + key[len(old) :], tensor)]
    if key.endswith(("rotary_emb.inv_freq", ".position_ids")):
        return []
    raise ConversionError(f"unexpected key {key!r} in the checkpoint: no rule maps it")


def _check(config: dict, vision: dict, llm: dict) -> None:
    def refuse(key, value, expected):
        raise ConversionError(f"config.json {key}={value!r}: only {expected} is supported")

    architecture = (llm.get("architectures") or ["?"])[0]
    if architecture != "LlamaForCausalLM":
        refuse("llm_config.architectures", architecture, "'LlamaForCausalLM'")
    if config.get("template") not in TEMPLATES:
        refuse("template", config.get("template"), f"one of {sorted(TEMPLATES)}")
    if config.get("ps_version", "v1") not in ("v1", "v2"):
        refuse("ps_version", config.get("ps_version"), "'v1' or 'v2'")
    if config.get("downsample_ratio", 0.5) != 0.5:
        refuse("downsample_ratio", config.get("downsample_ratio"), "0.5")
    for key in ("pad2square", "dynamic_image_size", "use_backbone_lora", "use_llm_lora"):
        if config.get(key):
            refuse(key, config[key], "false / 0")
    size = config.get("force_image_size") or vision.get("image_size")
    if vision.get("image_size") != size:  # the original would interpolate positions
        refuse("vision_config.image_size", vision.get("image_size"), f"force_image_size {size}")
    if vision.get("norm_type", "rms_norm") not in ("rms_norm", "layer_norm"):
        refuse("vision_config.norm_type", vision.get("norm_type"), "rms_norm or layer_norm")
    if vision.get("qk_normalization") and vision.get("layer_norm_eps", 1e-6) != 1e-6:
        refuse("vision_config.layer_norm_eps", vision.get("layer_norm_eps"), "1e-6 with qk-norm")


def target_config(config: dict, image_token_id: int, vocab_size: int):
    """The transformers config of a converted ``internvl_chat`` checkpoint."""
    from transformers import InternVLConfig, InternVLVisionConfig, LlamaConfig

    from vgutils.models.architectures import InternVLV1Config

    vision, llm = config["vision_config"], config["llm_config"]
    side, patch = int(vision["image_size"]), int(vision["patch_size"])
    vision_config = InternVLVisionConfig(
        hidden_size=vision["hidden_size"],
        intermediate_size=vision["intermediate_size"],
        num_hidden_layers=vision["num_hidden_layers"],
        num_attention_heads=vision["num_attention_heads"],
        attention_bias=bool(vision.get("qkv_bias", False)),
        use_qk_norm=bool(vision.get("qk_normalization", False)),
        norm_type=vision.get("norm_type", "rms_norm"),
        hidden_act=vision.get("hidden_act", "gelu"),
        layer_norm_eps=vision.get("layer_norm_eps", 1e-6),
        layer_scale_init_value=vision.get("initializer_factor", 0.1),
        image_size=[side, side],
        patch_size=[patch, patch],
        num_channels=vision.get("num_channels", 3),
        use_mean_pooling=True,  # no final norm (InternViT has none)
        use_absolute_position_embeddings=True,
    )
    skip = {"architectures", "model_type", "auto_map", "_name_or_path", "torch_dtype", "dtype"}
    text = {k: v for k, v in llm.items() if k not in skip and not k.startswith("_")}
    if text.get("rope_scaling") is None:
        text.pop("rope_scaling", None)
    text_config = LlamaConfig(**{**text, "vocab_size": vocab_size})
    ratio = config.get("downsample_ratio", 0.5)
    version = config.get("ps_version", "v1")
    target_class = InternVLV1Config if version == "v1" else InternVLConfig
    target = target_class(
        vision_config=vision_config,
        text_config=text_config,
        image_token_id=image_token_id,
        image_seq_length=int((side // patch) ** 2 * ratio**2),
        downsample_ratio=ratio,
        projector_hidden_act="gelu",
        vision_feature_layer=int(config.get("select_layer", -1)),
        vision_feature_select_strategy="default",
        tie_word_embeddings=bool(llm.get("tie_word_embeddings", False)),
        vgutils_family=MODEL_TYPE,
        ps_version=version,
    )
    dtype = config.get("torch_dtype") or llm.get("torch_dtype")
    if dtype:
        target.dtype = dtype
    return target


def _tokenizer(src: Path):
    """The checkpoint's tokenizer (a fast one when the folder has ``tokenizer.json``; else
    its sentencepiece model read as a Llama tokenizer, without the remote tokenizer
    class), with InternVL's image tokens named for transformers' processor."""
    from transformers import AutoTokenizer

    # transformers' InternVL processor wants a video token too; this model has none: an
    # added "<video>" (past the embedding rows, never in a prompt of this package)
    named = {**IMAGE_TOKENS, "video_token": "<video>"}
    try:  # never asks to run remote code: refuses it, and then the fallback reads the files
        return AutoTokenizer.from_pretrained(
            src, extra_special_tokens=named, trust_remote_code=False
        )
    except (ValueError, OSError):  # a remote-code tokenizer class (Yi's)
        from transformers import LlamaTokenizerFast

        return LlamaTokenizerFast.from_pretrained(src, extra_special_tokens=named)


@dataclass
class Plan:
    """Everything decided before any tensor is read."""

    family: str
    config: object  # InternVLConfig or InternVLV1Config
    processor: object  # InternVLProcessor
    generation_config: object

    def record(self, src: Path) -> dict:
        return {
            "image_token_id": self.config.image_token_id,
            "ps_version": getattr(self.config, "ps_version", "v1"),
            "tower_files": {},
        }

    def stream(self, src: Path, out: Path, shard_bytes: int = SHARD_BYTES) -> None:
        stream_weights(src, self, out, shard_bytes)


def plan(src: Path) -> Plan:
    """Read the original config and tokenizer; build the target config and processor."""
    from transformers import GenerationConfig, InternVLProcessor
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import (
        GotOcr2ImageProcessorPil,
    )
    from transformers.models.internvl.video_processing_internvl import InternVLVideoProcessor

    config = read_config(src)
    if config.get("model_type") != MODEL_TYPE:
        raise ConversionError(f"{src}: model_type {config.get('model_type')!r} is not {MODEL_TYPE}")
    vision, llm = config.get("vision_config") or {}, config.get("llm_config") or {}
    _check(config, vision, llm)
    tokenizer = _tokenizer(src)
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKENS["context_image_token"])
    vocab = int(llm["vocab_size"])
    if image_token_id is None or image_token_id >= vocab or image_token_id < 0:
        raise ConversionError(
            f"<IMG_CONTEXT> is id {image_token_id}, not one of the language model's {vocab} rows"
        )
    target = target_config(config, image_token_id, vocab)
    side = int(vision["image_size"])
    size = {"height": side, "width": side}
    image_processor = GotOcr2ImageProcessorPil(
        size=size,
        crop_to_patches=False,
        min_patches=1,
        max_patches=1,  # one tile even where the processor asks for tiles
        resample=3,  # bicubic
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
        do_convert_rgb=True,
    )
    processor = InternVLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=InternVLVideoProcessor(size=size),
        image_seq_length=target.image_seq_length,
        chat_template=TEMPLATES[config["template"]],
    )
    if (src / "generation_config.json").exists():
        generation = GenerationConfig.from_pretrained(src)
    else:
        generation = GenerationConfig.from_model_config(target.text_config)
    return Plan(MODEL_TYPE, target, processor, generation)


def stream_weights(src: Path, conversion: Plan, out: Path, shard_bytes: int = SHARD_BYTES):
    """Map, check and write every tensor; :class:`ConversionError` on the first problem."""
    expected = expected_shapes(conversion.config)
    written: dict[str, str] = {}
    writer = ShardWriter(out, shard_bytes)
    with tqdm(total=len(expected), desc="converting tensors", unit="tensor") as progress:
        for path in weight_files(src):
            for key, tensor in iter_tensors(path):
                for target, value in map_tensor(key, tensor):
                    if target not in expected:
                        raise ConversionError(
                            f"key {key!r} ({path.name}) -> {target!r}: no such parameter in "
                            "the target model"
                        )
                    if target in written:
                        raise ConversionError(f"key {key!r} ({path.name}): {target!r} given twice")
                    if tuple(value.shape) != expected[target]:
                        raise ConversionError(
                            f"key {key!r} ({path.name}): shape {tuple(value.shape)} but "
                            f"{target!r} needs {expected[target]} (transposed or wrong config?)"
                        )
                    writer.add(target, value)
                    written[target] = key
                    progress.update(1)
    missing = [key for key in expected if key not in written]
    if missing:
        raise ConversionError(
            f"missing weights for {missing[0]!r} ({len(missing)} parameter(s) missing in all)"
        )
    writer.close()

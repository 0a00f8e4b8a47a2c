"""Original-format checkpoints -> folders that transformers loads.

``FreedomIntelligence/HuatuoGPT-Vision-7B`` (``llava_qwen2``),
``microsoft/llava-med-v1.5-mistral-7b`` (``llava_mistral``) and LLaVA-Tri
(``UCSC-VLAA/LLaVA-Med-pp/<benchmark>``, ``llava_llama``) are saved in the original LLaVA
code's format, MedRegA (``Luxuriant16/medrega``) in InternVL-Chat's (``internvl_chat``,
remote code); transformers loads none of them as they are (CHECKPOINTS-AND-BENCHMARKS.md
section 1). :func:`convert` reads the original files (no remote code runs) and writes a
folder that ``from_pretrained`` loads; InternVL-Chat's part is
:mod:`vgutils.models.original_internvl`, the shared file handling
:mod:`vgutils.models.original_files`. For the LLaVA formats:

- weights: one key table (:data:`KEY_MAP`, prefix renames) serves every text backbone;
  tensors are streamed shard by shard (``safe_open``) into output shards written as they
  fill, so a 7B model needs neither two copies in memory nor a GPU. Every source key must
  land on a parameter of the target model with its exact shape, and every parameter must
  be filled: a dropped, renamed or transposed key stops the conversion with a one-line
  :class:`ConversionError` naming it.
- vision tower: from the checkpoint's own copy, or from a separate CLIP folder
  (``vision_tower=``; LLaVA-Med's and LLaVA-Tri's code run the ``mm_vision_tower``
  folder's weights, ``openai/clip-vit-large-patch14-336``, so that is their default).
- config: CLIP vision config + Qwen2 / Mistral / Llama text config,
  ``vision_feature_layer`` from ``mm_vision_select_layer`` (-2), ``"default"`` selection
  (CLS dropped), exact GELU projector, ``image_token_id`` a real embedding row (an unused
  row when the matrix has one, else one added zero row in ``embed_tokens`` and
  ``lm_head``, suppressed in generation), and ``vgutils_family`` naming the family
  adapter. With S2 (``s2: true``, ``s2_scales``, LLaVA-Tri's base model) the target is
  :class:`vgutils.models.architectures.LlavaS2ForConditionalGeneration` (transformers'
  LLaVA cannot express S2), else transformers' ``LlavaForConditionalGeneration``.
- processor: ``LlavaImageProcessorPil(do_pad=True)`` with the tower's CLIP settings (the
  same pixels as the original ``expand2square`` + ``CLIPImageProcessor``; load it with
  ``backend="pil"``; with S2 resized and cropped to the largest scale, as
  ``CLIPVisionTowerS2`` sets it), ``num_additional_image_tokens=1`` and ``patch_size``
  such that the image gives one tile's grid (S2: largest scale / grid side), the
  tokenizer with one added ``<image>`` token and a chat template rendering the model's
  own prompt.
- ``vgutils_conversion.json``: source, revision, sha256 of every source file, converter
  version.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from vgutils.models import chat_templates, original_internvl
from vgutils.models.architectures import expected_shapes
from vgutils.models.original_files import (
    CHECKPOINT_FILES,
    CONVERTER_VERSION,
    RECORD_NAME,
    SHARD_BYTES,
    TOWER_FILES,
    ConversionError,
    ShardWriter,
    file_keys,
    hashes,
    hub_file,
    hub_snapshot,
    inside,
    iter_tensors,
    read_config,
    record_matches,
    snapshot_revision,
    split_hub_id,
    weight_files,
)
from vgutils.models.quiet import small_local

__all__ = [
    "CHECKPOINT_FILES",
    "CONVERTER_VERSION",
    "RECORD_NAME",
    "SHARD_BYTES",
    "TOWER_FILES",
    "ConversionError",
    "ShardWriter",
    "convert",
    "ensure_converted",
    "hub_snapshot",
    "original_config",
    "original_model_type",
    "record_matches",
    "split_hub_id",
    "weight_files",
]


@dataclass(frozen=True)
class Backbone:
    """What differs between the original-format families (everything else is shared)."""

    text_model_type: str
    chat_template: str
    vision_weights: str  # "checkpoint" or "tower": where the vision weights come from


BACKBONES: dict[str, Backbone] = {
    "llava_qwen2": Backbone("qwen2", chat_templates.HUATUOGPT_VISION, "checkpoint"),
    "llava_mistral": Backbone("mistral", chat_templates.LLAVA_MED_MISTRAL, "tower"),
    "llava_llama": Backbone("llama", chat_templates.LLAVA_TRI_LLAMA3, "tower"),
}
"""``model_type`` of the original config -> its backbone. ``vision_weights``: HuatuoGPT-
Vision's code loads the vision tower from the checkpoint; LLaVA-Med's and LLaVA-Tri's
(MedTrinity-25M's fork: ``build_vision_tower(..., delay_load=True)``, then ``load_model``
from ``mm_vision_tower``) ignore the checkpoint's copy and load ``mm_vision_tower``
(equality of the two copies not verified)."""
ORIGINAL_FORMATS: tuple[str, ...] = (*BACKBONES, original_internvl.MODEL_TYPE)
"""Every original ``model_type`` :func:`convert` takes (the family adapters' names)."""
S2_DEFAULT = "336,672,1008"
"""``s2_scales`` when the config says ``s2: true`` without scales (LLaVA's
``CLIPVisionTowerS2`` default)."""

VISION_TARGET = "model.vision_tower."
KEY_MAP: tuple[tuple[str, str, str], ...] = (
    ("checkpoint", "model.vision_tower.vision_tower.vision_model.", VISION_TARGET),
    ("checkpoint", "model.mm_projector.0.", "model.multi_modal_projector.linear_1."),
    ("checkpoint", "model.mm_projector.2.", "model.multi_modal_projector.linear_2."),
    ("checkpoint", "model.embed_tokens.", "model.language_model.embed_tokens."),
    ("checkpoint", "model.layers.", "model.language_model.layers."),
    ("checkpoint", "model.norm.", "model.language_model.norm."),
    ("checkpoint", "lm_head.", "lm_head."),
    ("tower", "vision_model.", VISION_TARGET),  # CLIPModel / CLIPVisionModel (4.x)
    ("tower", "embeddings.", f"{VISION_TARGET}embeddings."),  # CLIPVisionModel (5.x)
    ("tower", "pre_layrnorm.", f"{VISION_TARGET}pre_layrnorm."),
    ("tower", "encoder.", f"{VISION_TARGET}encoder."),
    ("tower", "post_layernorm.", f"{VISION_TARGET}post_layernorm."),
)
"""(source, original prefix, transformers prefix): the one key table for every backbone.
``checkpoint``: the original checkpoint; ``tower``: a separate CLIP folder."""

IGNORED: dict[str, tuple[str, ...]] = {
    "checkpoint": (r".*\.position_ids", r".*\.rotary_emb\.inv_freq"),
    "tower": (
        r".*\.position_ids",
        r"text_model\..*",
        r"(visual|text)_projection\.weight",
        r"logit_scale",
    ),
}
"""Keys that are not weights of the target: buffers older transformers saved, and the
text half of a full CLIP checkpoint."""

_LLAVA_KEYS = {
    "architectures",
    "model_type",
    "image_aspect_ratio",
    "image_grid_pinpoints",
    "tokenizer_model_max_length",
    "tokenizer_padding_side",
    "tune_mm_mlp_adapter",
    "freeze_mm_mlp_adapter",
    "unfreeze_mm_vision_tower",
    "use_mm_proj",
    "transformers_version",
    "_name_or_path",
    "torch_dtype",
    "dtype",
    "s2",
    "s2_scales",
}


def map_key(source: str, key: str) -> str | None:
    """The transformers name of original key ``key`` from ``source`` (``checkpoint`` or
    ``tower``); ``None`` for an ignored key; :class:`ConversionError` for an unknown one."""
    if any(re.fullmatch(pattern, key) for pattern in IGNORED[source]):
        return None
    for rule_source, old, new in KEY_MAP:
        if rule_source == source and key.startswith(old):
            return new + key[len(old) :]
    raise ConversionError(f"unexpected key {key!r} in the {source}: no rule maps it")


def source_key(target: str, source: str) -> str:
    """The original name that ``target`` is read from (for error messages)."""
    for rule_source, old, new in KEY_MAP:
        if rule_source == source and target.startswith(new):
            return old + target[len(new) :]
    return target


# --- reading the original folder ---------------------------------------------------------


def original_model_type(config: dict) -> str | None:
    """The ``model_type`` when ``config`` is an original-format one (:data:`ORIGINAL_FORMATS`:
    ``llava_qwen2``, ``llava_mistral``, ``llava_llama``, ``internvl_chat``), else ``None``."""
    model_type = config.get("model_type")
    return model_type if model_type in ORIGINAL_FORMATS else None


def s2_scales(config: dict) -> list[int] | None:
    """LLaVA's S2 scales in pixels, ascending (``s2`` and ``s2_scales`` as
    ``CLIPVisionTowerS2`` reads them: a comma-separated string), or ``None`` without S2."""
    if not config.get("s2"):
        return None
    scales = config.get("s2_scales") or S2_DEFAULT
    if isinstance(scales, str):
        scales = scales.split(",")
    return sorted(int(v) for v in scales)


def resolve_tower(folder: Path, config: dict, vision_tower: str | Path | None) -> Path:
    """The CLIP folder: ``vision_tower`` if given, else ``mm_vision_tower`` (a folder inside
    the checkpoint such as ``./vit/...``, a local path, or a Hub id)."""
    name = str(vision_tower) if vision_tower is not None else config.get("mm_vision_tower")
    if not name:
        raise ConversionError("config.json has no mm_vision_tower; give vision_tower=")
    for candidate in (folder / name, Path(name).expanduser()):
        if (candidate / "config.json").exists():
            return candidate.resolve()
    if vision_tower is not None:
        raise ConversionError(f"vision tower folder {name!r} has no config.json")
    return Path(hub_snapshot(name, patterns=TOWER_FILES))


# --- config, processor, tokenizer ------------------------------------------------------


def _vision_config(tower: Path):
    from transformers import CLIPVisionConfig

    data = read_config(tower)
    if data.get("model_type") == "clip" or "vision_config" in data:
        data = data["vision_config"]
    data = {k: v for k, v in data.items() if k not in ("model_type", "architectures")}
    return CLIPVisionConfig(**data)


def _edge(value) -> int:
    """A side from an old (int) or new (dict) processor size."""
    if isinstance(value, dict):
        return int(value.get("shortest_edge") or value["height"])
    return int(value)


def image_processor(tower: Path, pad: bool, size: int | None = None):
    """LLaVA's pad-to-square (CLIP-mean colour) + the tower's CLIP resize / crop / norm;
    ``size``: resize and crop to this side instead (S2: the largest scale)."""
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    data = json.loads((tower / "preprocessor_config.json").read_text())
    crop = size or _edge(data.get("crop_size", data.get("size", 336)))
    size = size or _edge(data.get("size", 336))
    return LlavaImageProcessorPil(
        do_pad=pad,
        size={"shortest_edge": size},
        crop_size={"height": crop, "width": crop},
        image_mean=data.get("image_mean"),
        image_std=data.get("image_std"),
        resample=data.get("resample", 3),
        do_convert_rgb=True,
    )


def _text_config(config: dict, backbone: Backbone, vocab_size: int):
    from transformers import CONFIG_MAPPING

    kwargs = {k: v for k, v in config.items() if k not in _LLAVA_KEYS and not k.startswith("mm_")}
    if kwargs.get("rope_scaling", 0) is None:  # Llama-3's null: the deprecated key, empty
        del kwargs["rope_scaling"]
    kwargs["vocab_size"] = vocab_size
    kwargs["tie_word_embeddings"] = bool(config.get("tie_word_embeddings", False))
    return CONFIG_MAPPING[backbone.text_model_type](**kwargs)


def _check_supported(config: dict) -> None:
    checks = (
        ("mm_projector_type", "mlp2x_gelu"),
        ("mm_vision_select_feature", "patch"),
        ("image_aspect_ratio", "pad"),
    )
    for key, expected in checks:
        value = config.get(key)
        if value != expected:
            raise ConversionError(f"config.json {key}={value!r}: only {expected!r} is supported")
    for key in ("mm_use_im_start_end", "mm_use_im_patch_token"):
        if config.get(key):
            raise ConversionError(f"config.json {key}=true is not supported")
    merge = config.get("mm_patch_merge_type", "flat")
    if merge != "flat":
        raise ConversionError(f"config.json mm_patch_merge_type={merge!r}: only 'flat'")


@dataclass
class Plan:
    """Everything decided before any tensor is read."""

    family: str
    config: object  # LlavaConfig (LlavaS2Config with S2)
    processor: object  # LlavaProcessor
    generation_config: object
    vision_from: str  # "checkpoint" or "tower"
    tower: Path
    added_row: bool
    text_vocab: int  # rows of the original embedding matrix

    def record(self, src: Path) -> dict:
        """What ``vgutils_conversion.json`` says about this conversion beyond the source."""
        return {
            "vision_tower": str(self.tower),
            "vision_weights_from": self.vision_from,
            "image_token_id": self.config.image_token_id,
            "added_embedding_row": self.added_row,
            "s2_scales": getattr(self.config, "s2_scales", None),
            "tower_files": {} if inside(self.tower, src) else hashes(self.tower),
        }

    def stream(self, src: Path, out: Path, shard_bytes: int) -> None:
        stream_weights(src, self, out, shard_bytes)


def plan(src: Path, vision_tower: str | Path | None = None) -> Plan:
    """Read the original config, tokenizer and tower; build the target config and
    processor."""
    from transformers import AutoTokenizer, GenerationConfig, LlavaConfig, LlavaProcessor

    config = read_config(src)
    family = original_model_type(config)
    if family is None:
        raise ConversionError(
            f"{src}: model_type {config.get('model_type')!r} is not an original-format LLaVA "
            f"checkpoint ({sorted(BACKBONES)})"
        )
    backbone = BACKBONES[family]
    _check_supported(config)
    tower = resolve_tower(src, config, vision_tower)
    checkpoint_has_vision = any(
        key.startswith(KEY_MAP[0][1]) for path in weight_files(src) for key in file_keys(path)
    )
    tower_has_weights = bool(weight_files(tower))
    if vision_tower is not None and not tower_has_weights:
        raise ConversionError(f"vision tower folder {str(vision_tower)!r} has no weights")
    wants_tower = vision_tower is not None or backbone.vision_weights == "tower"
    if (wants_tower and tower_has_weights) or not checkpoint_has_vision:
        vision_from = "tower"
    else:
        vision_from = "checkpoint"

    # the tokenizer reads config.json: Llama-3's "rope_scaling": null, an original type
    with warnings.catch_warnings(), _original_type_accepted(config["model_type"]):
        warnings.filterwarnings("ignore", "`rope_scaling` is deprecated", FutureWarning)
        tokenizer = AutoTokenizer.from_pretrained(
            src, extra_special_tokens={"image_token": "<image>"}
        )
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    text_vocab = int(config["vocab_size"])
    if image_token_id > text_vocab:
        raise ConversionError(
            f"<image> got id {image_token_id}, more than one past the {text_vocab} embedding rows"
        )
    added_row = image_token_id == text_vocab
    vision_config = _vision_config(tower)
    text_config = _text_config(config, backbone, text_vocab + added_row)
    side = vision_config.image_size // vision_config.patch_size
    scales = s2_scales(config)
    width = vision_config.hidden_size * (len(scales) if scales else 1)
    if config.get("mm_hidden_size", width) != width:
        raise ConversionError(
            f"config.json mm_hidden_size={config['mm_hidden_size']}: the tower's width "
            f"{vision_config.hidden_size} x {len(scales) if scales else 1} scale(s) is {width}"
        )
    image_size, patch_size, extra = vision_config.image_size, vision_config.patch_size, {}
    target_class = LlavaConfig
    if scales:  # S2: split into tiles of the tower's own size, so the smallest is that size
        if scales[0] != vision_config.image_size or any(v % scales[0] for v in scales):
            raise ConversionError(
                f"config.json s2_scales={scales}: the scales must be multiples of the tower's "
                f"image size {vision_config.image_size}, the smallest equal to it"
            )
        from vgutils.models.architectures import LlavaS2Config as target_class

        image_size, patch_size = scales[-1], scales[-1] // side
        extra = {"s2_scales": scales}
    target = target_class(
        vision_config=vision_config,
        text_config=text_config,
        image_token_id=image_token_id,
        image_seq_length=side * side,
        vision_feature_layer=int(config.get("mm_vision_select_layer", -2)),
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        multimodal_projector_bias=True,
        tie_word_embeddings=text_config.tie_word_embeddings,
        vgutils_family=family,
        **extra,
    )
    dtype = config.get("torch_dtype") or config.get("dtype")
    if dtype:
        target.dtype = dtype
    pad = config.get("image_aspect_ratio") == "pad"
    processor = LlavaProcessor(
        image_processor=image_processor(tower, pad=pad, size=image_size if scales else None),
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=backbone.chat_template,
    )
    if (src / "generation_config.json").exists():
        generation = GenerationConfig.from_pretrained(src)
    else:
        generation = GenerationConfig.from_model_config(text_config)
    if added_row:  # the added row was never trained: never generate it
        generation.suppress_tokens = [*(generation.suppress_tokens or []), image_token_id]
    return Plan(
        family,
        target,
        processor,
        generation,
        vision_from,
        tower,
        added_row,
        text_vocab,
    )


# --- streaming the weights -------------------------------------------------------------


def stream_weights(src: Path, conversion: Plan, out: Path, shard_bytes: int = SHARD_BYTES):
    """Map, check and write every tensor; :class:`ConversionError` on the first problem."""
    expected = expected_shapes(conversion.config)
    sources = [("checkpoint", path) for path in weight_files(src)]
    if conversion.vision_from == "tower":
        sources += [("tower", path) for path in weight_files(conversion.tower)]
    written: dict[str, str] = {}
    writer = ShardWriter(out, shard_bytes)
    resized = ("model.language_model.embed_tokens.weight", "lm_head.weight")
    small = small_local(src)  # a tiny checkpoint converts in a blink: no bar
    with tqdm(
        total=len(expected), desc="converting tensors", unit="tensor", disable=small
    ) as progress:
        for source, path in sources:
            for key, tensor in iter_tensors(path):
                target = map_key(source, key)
                if target is None:
                    continue
                if source == "checkpoint" and target.startswith(VISION_TARGET):
                    if conversion.vision_from == "tower":
                        continue  # the separate CLIP folder's copy is used
                if target not in expected:
                    raise ConversionError(
                        f"key {key!r} ({path.name}) -> {target!r}: no such parameter in the "
                        "target model"
                    )
                if target in written:
                    raise ConversionError(f"key {key!r} ({path.name}): {target!r} given twice")
                if conversion.added_row and target in resized and tensor.dim() == 2:
                    if tensor.shape[0] == conversion.text_vocab:
                        tensor = torch.cat([tensor, tensor.new_zeros(1, tensor.shape[1])])
                if tuple(tensor.shape) != expected[target]:
                    raise ConversionError(
                        f"key {key!r} ({path.name}): shape {tuple(tensor.shape)} but "
                        f"{target!r} needs {expected[target]} (transposed or wrong config?)"
                    )
                writer.add(target, tensor)
                written[target] = key
                progress.update(1)
    missing = [key for key in expected if key not in written]
    if missing:
        from_tower = missing[0].startswith(VISION_TARGET) and conversion.vision_from == "tower"
        source = "tower" if from_tower else "checkpoint"
        raise ConversionError(
            f"missing key {source_key(missing[0], source)!r} (for {missing[0]!r}; "
            f"{len(missing)} parameter(s) missing in all)"
        )
    writer.close()


def convert(
    src: str | Path,
    out: str | Path,
    vision_tower: str | Path | None = None,
    *,
    source_name: str | None = None,
    revision: str | None = None,
    shard_bytes: int = SHARD_BYTES,
) -> Path:
    """Convert the original-format checkpoint in folder ``src`` into ``out`` (a new or
    empty folder; written to ``out.partial`` first, then renamed). ``vision_tower``: a CLIP
    folder to take the vision tower from (LLaVA formats). ``source_name`` / ``revision``
    are recorded (the Hub id and commit when ``src`` is a Hub snapshot)."""
    src, out = Path(src).resolve(), Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConversionError(f"{out} exists and is not empty")
    if read_config(src).get("model_type") == original_internvl.MODEL_TYPE:
        if vision_tower is not None:
            raise ConversionError("internvl_chat keeps its vision tower in the checkpoint")
        conversion = original_internvl.plan(src)
    else:
        conversion = plan(src, vision_tower)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        conversion.stream(src, partial, shard_bytes)
        conversion.config.save_pretrained(partial)
        conversion.generation_config.save_pretrained(partial)
        conversion.processor.save_pretrained(partial)
        record = {
            "converter": "vgutils.models.original",
            "converter_version": CONVERTER_VERSION,
            "family": conversion.family,
            "source": source_name or str(src),
            "source_path": str(src),
            "revision": revision or snapshot_revision(src),
            **conversion.record(src),
            "source_files": hashes(src),
        }
        (partial / RECORD_NAME).write_text(json.dumps(record, indent=2) + "\n")
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if out.exists():
        out.rmdir()
    out.parent.mkdir(parents=True, exist_ok=True)
    partial.rename(out)
    return out


# --- load_model: detect, convert once into the cache, reuse ---------------------------


class _OriginalTypeWarning(logging.Filter):
    """Drops transformers' "You are using a model of type `<model_type>` to instantiate a
    model of type ..." for one original-format ``model_type``: reading the original
    ``config.json`` for its tokenizer is expected to meet a type transformers does not
    know. Every other record passes."""

    def __init__(self, model_type: str):
        super().__init__()
        self.prefix = f"You are using a model of type `{model_type}` to instantiate"

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


@contextlib.contextmanager
def _original_type_accepted(model_type: str) -> Iterator[None]:
    """Inside: transformers' warning about the original ``model_type`` is not shown."""
    logger = logging.getLogger("transformers.configuration_utils")
    only_this = _OriginalTypeWarning(model_type)
    logger.addFilter(only_this)
    try:
        yield
    finally:
        logger.removeFilter(only_this)


def original_config(source: str, revision: str | None = None) -> dict | None:
    """The ``config.json`` of a local folder or Hub id (``org/name`` or
    ``org/name/subfolder``) when it is an original format (:data:`ORIGINAL_FORMATS`), else
    ``None`` (also when it cannot be read: transformers then reports the problem)."""
    folder = Path(source)
    if folder.is_dir():
        path = folder / "config.json"
    else:
        try:
            path = hub_file(source, "config.json", revision)
        except Exception:
            return None
    if not path.exists():
        return None
    config = json.loads(path.read_text())
    return config if original_model_type(config) else None


def ensure_converted(
    source: str,
    cache_root: Path,
    revision: str | None = None,
    vision_tower: str | Path | None = None,
) -> Path:
    """The converted folder of original-format ``source`` (local folder, Hub id or Hub id
    with a subfolder) under ``cache_root/converted/<slug>-<hash>``: converted on first use,
    reused while the recorded source files still match."""
    folder = Path(source)
    if folder.is_dir():
        src, name, commit = folder.resolve(), str(folder.resolve()), None
    else:
        src = Path(hub_snapshot(source, revision))
        name, commit = source, snapshot_revision(src)
    tower = Path(vision_tower).resolve() if vision_tower is not None else None
    identity = json.dumps([name, commit, str(tower) if tower else None])
    readable = src.name if folder.is_dir() else name
    slug = re.sub(r"[^A-Za-z0-9._-]+", "--", readable).strip("-")[-60:]
    out = cache_root / "converted" / f"{slug}-{hashlib.sha256(identity.encode()).hexdigest()[:12]}"
    if record_matches(out, src, tower):
        return out
    shutil.rmtree(out, ignore_errors=True)
    return convert(src, out, tower, source_name=name, revision=commit)

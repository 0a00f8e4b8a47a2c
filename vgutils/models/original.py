"""Original-format LLaVA checkpoints -> transformers ``LlavaForConditionalGeneration``.

``FreedomIntelligence/HuatuoGPT-Vision-7B`` (``llava_qwen2``) and
``microsoft/llava-med-v1.5-mistral-7b`` (``llava_mistral``) are saved in the original LLaVA
code's format, which transformers does not load (CHECKPOINTS-AND-BENCHMARKS.md section 1).
:func:`convert` writes a folder that stock ``from_pretrained`` loads:

- weights: one key table (:data:`KEY_MAP`, prefix renames) serves both text backbones;
  tensors are streamed shard by shard (``safe_open``) into output shards written as they
  fill, so a 7B model needs neither two copies in memory nor a GPU. Every source key must
  land on a parameter of the target model with its exact shape, and every parameter must
  be filled: a dropped, renamed or transposed key stops the conversion with a one-line
  :class:`ConversionError` naming it.
- vision tower: from the checkpoint's own copy, or from a separate CLIP folder
  (``vision_tower=``; LLaVA-Med's code runs ``openai/clip-vit-large-patch14-336``'s
  weights, so that is the ``llava_mistral`` default, :data:`VISION_WEIGHTS`).
- config: CLIP vision config + Qwen2 / Mistral text config, ``vision_feature_layer``
  from ``mm_vision_select_layer`` (-2), ``"default"`` selection (CLS dropped), exact GELU
  projector, ``image_token_id`` a real embedding row (an unused row when the matrix has one,
  else one added zero row in ``embed_tokens`` and ``lm_head``, suppressed in generation),
  and ``vgutils_family`` naming the family adapter.
- processor: ``LlavaImageProcessorPil(do_pad=True)`` with the tower's CLIP settings (the
  same pixels as the original ``expand2square`` + ``CLIPImageProcessor``; load it with
  ``backend="pil"``), ``num_additional_image_tokens=1``, the tokenizer with one added
  ``<image>`` token and a chat template rendering the model's own prompt.
- ``vgutils_conversion.json``: source, revision, sha256 of every source file, converter
  version.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from vgutils.models import chat_templates
from vgutils.models.quiet import small_local

CONVERTER_VERSION = "1"
RECORD_NAME = "vgutils_conversion.json"
SHARD_BYTES = 2 * 2**30
"""Output shard size: peak memory is about this plus the largest single tensor."""


class ConversionError(ValueError):
    """An original-format checkpoint that cannot be converted (one line, naming the key)."""


@dataclass(frozen=True)
class Backbone:
    """What differs between the original-format families (everything else is shared)."""

    text_model_type: str
    chat_template: str
    vision_weights: str  # "checkpoint" or "tower": where the vision weights come from


BACKBONES: dict[str, Backbone] = {
    "llava_qwen2": Backbone("qwen2", chat_templates.HUATUOGPT_VISION, "checkpoint"),
    "llava_mistral": Backbone("mistral", chat_templates.LLAVA_MED_MISTRAL, "tower"),
}
"""``model_type`` of the original config -> its backbone. ``vision_weights``: HuatuoGPT-
Vision's code loads the vision tower from the checkpoint; LLaVA-Med's ignores the
checkpoint's copy and loads ``mm_vision_tower`` (equality of the two copies not verified)."""

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


def read_config(folder: str | Path) -> dict:
    return json.loads((Path(folder) / "config.json").read_text())


def original_model_type(config: dict) -> str | None:
    """``llava_qwen2`` / ``llava_mistral`` when ``config`` is an original-format one."""
    model_type = config.get("model_type")
    return model_type if model_type in BACKBONES else None


def weight_files(folder: Path) -> list[Path]:
    """The safetensors (or ``.bin``) weight files of ``folder``, in index order."""
    for index_name, single in (
        ("model.safetensors.index.json", "model.safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model.bin"),
    ):
        index = folder / index_name
        if index.exists():
            names = json.loads(index.read_text())["weight_map"].values()
            return [folder / name for name in dict.fromkeys(names)]
        if (folder / single).exists():
            return [folder / single]
    return []


def iter_tensors(path: Path):
    """``(key, tensor)`` of one weight file, one tensor in memory at a time for safetensors
    (``.bin`` files are memory-mapped)."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(path, framework="pt") as handle:
            for key in handle.keys():
                yield key, handle.get_tensor(key)
    else:
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        yield from state.items()


def file_keys(path: Path) -> list[str]:
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(path, framework="pt") as handle:
            return list(handle.keys())
    return list(torch.load(path, map_location="meta", mmap=True, weights_only=True))


def sha256_file(path: Path) -> str:
    """sha256 of a file; free for Hub cache symlinks (their blob is named by it)."""
    target = Path(os.path.realpath(path))
    if target.parent.name == "blobs" and re.fullmatch(r"[0-9a-f]{64}", target.name):
        return target.name
    digest = hashlib.sha256()
    with open(target, "rb") as handle:
        for block in iter(lambda: handle.read(2**24), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(folder: Path) -> dict[str, dict]:
    """``{relative path: {size, mtime_ns}}`` of every file under ``folder``."""
    out = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and ".cache" not in p.parts):
        stat = path.stat()
        out[str(path.relative_to(folder))] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return out


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


CHECKPOINT_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "vit/**"]
TOWER_FILES = ["*.json", "*.safetensors", "*.bin", "*.txt"]
"""What is downloaded of a Hub checkpoint / CLIP tower (``.bin`` weights only for towers:
``openai/clip-vit-large-patch14-336`` may have no safetensors)."""


def hub_snapshot(
    repo_id: str, revision: str | None = None, patterns: list[str] = CHECKPOINT_FILES
) -> str:
    """``huggingface_hub.snapshot_download`` with a clear message when it cannot."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, revision=revision, allow_patterns=patterns)
    except Exception as err:
        raise ConversionError(
            f"cannot fetch {repo_id!r} from the Hugging Face Hub ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); on an offline machine download "
            "it elsewhere and pass the local folder"
        ) from err


def snapshot_revision(folder: Path) -> str | None:
    """The commit of a Hub cache snapshot folder (``.../snapshots/<commit>``)."""
    return folder.name if folder.parent.name == "snapshots" else None


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


def image_processor(tower: Path, pad: bool):
    """LLaVA's pad-to-square (CLIP-mean colour) + the tower's CLIP resize / crop / norm."""
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    data = json.loads((tower / "preprocessor_config.json").read_text())
    size = _edge(data.get("size", 336))
    crop = _edge(data.get("crop_size", size))
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


@dataclass
class Plan:
    """Everything decided before any tensor is read."""

    family: str
    config: object  # LlavaConfig
    processor: object  # LlavaProcessor
    generation_config: object
    vision_from: str  # "checkpoint" or "tower"
    tower: Path
    added_row: bool
    text_vocab: int  # rows of the original embedding matrix


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

    with _original_type_accepted(config["model_type"]):  # the tokenizer reads config.json
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
    target = LlavaConfig(
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
    )
    dtype = config.get("torch_dtype") or config.get("dtype")
    if dtype:
        target.dtype = dtype
    processor = LlavaProcessor(
        image_processor=image_processor(tower, pad=config.get("image_aspect_ratio") == "pad"),
        tokenizer=tokenizer,
        patch_size=vision_config.patch_size,
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


class ShardWriter:
    """Collects tensors and writes a safetensors shard whenever ``max_bytes`` is reached;
    :meth:`close` names the shards ``model-0000i-of-0000n`` and writes the index."""

    def __init__(self, out: Path, max_bytes: int = SHARD_BYTES):
        self.out, self.max_bytes = out, max_bytes
        self.buffer: dict[str, torch.Tensor] = {}
        self.size = 0
        self.parts: list[list[str]] = []
        self.total = 0

    def add(self, key: str, tensor: torch.Tensor) -> None:
        self.buffer[key] = tensor.contiguous()
        nbytes = tensor.numel() * tensor.element_size()
        self.size += nbytes
        self.total += nbytes
        if self.size >= self.max_bytes:
            self.flush()

    def flush(self) -> None:
        from safetensors.torch import save_file

        if not self.buffer:
            return
        path = self.out / f"part-{len(self.parts):05d}.tmp"
        save_file(self.buffer, path, {"format": "pt"})
        self.parts.append(list(self.buffer))
        self.buffer, self.size = {}, 0

    def close(self) -> None:
        self.flush()
        count = len(self.parts)
        weight_map = {}
        for i, keys in enumerate(self.parts):
            name = f"model-{i + 1:05d}-of-{count:05d}.safetensors"
            (self.out / f"part-{i:05d}.tmp").rename(self.out / name)
            weight_map.update(dict.fromkeys(keys, name))
        index = {"metadata": {"total_size": self.total}, "weight_map": weight_map}
        (self.out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def expected_shapes(config) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of the target model (built on the meta device)."""
    from transformers import LlavaForConditionalGeneration

    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


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
    folder to take the vision tower from. ``source_name`` / ``revision`` are recorded (the
    Hub id and commit when ``src`` is a Hub snapshot)."""
    src, out = Path(src).resolve(), Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConversionError(f"{out} exists and is not empty")
    conversion = plan(src, vision_tower)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        stream_weights(src, conversion, partial, shard_bytes)
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
            "vision_tower": str(conversion.tower),
            "vision_weights_from": conversion.vision_from,
            "image_token_id": conversion.config.image_token_id,
            "added_embedding_row": conversion.added_row,
            "source_files": _hashes(src),
            "tower_files": {} if _inside(conversion.tower, src) else _hashes(conversion.tower),
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


def _hashes(folder: Path) -> dict[str, dict]:
    prints = fingerprint(folder)
    for name, entry in prints.items():
        entry["sha256"] = sha256_file(folder / name)
    return prints


def record_matches(converted: Path, src: Path, tower: Path | None = None) -> bool:
    """Whether ``converted`` was made by this converter version from ``src`` as it is now:
    same files, sizes and sha256 (re-hashed only for files whose size or time changed)."""
    record_path = converted / RECORD_NAME
    if not record_path.exists():
        return False
    record = json.loads(record_path.read_text())
    if record.get("converter_version") != CONVERTER_VERSION:
        return False
    pairs = [(src, record.get("source_files", {}))]
    if record.get("tower_files"):
        pairs.append((Path(tower or record["vision_tower"]), record["tower_files"]))
    for folder, files in pairs:
        now = fingerprint(folder)
        if set(now) != set(files):
            return False
        for name, entry in files.items():
            if now[name]["size"] != entry["size"]:
                return False
            if now[name]["mtime_ns"] != entry["mtime_ns"]:
                if sha256_file(folder / name) != entry["sha256"]:
                    return False
    return True


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
    """The ``config.json`` of a local folder or Hub id when it is original-format LLaVA,
    else ``None`` (also when it cannot be read: transformers then reports the problem)."""
    folder = Path(source)
    if folder.is_dir():
        path = folder / "config.json"
    else:
        try:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(source, "config.json", revision=revision))
        except Exception:
            return None
    if not path.exists():
        return None
    config = json.loads(path.read_text())
    return config if original_model_type(config) else None


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def ensure_converted(
    source: str,
    cache_root: Path,
    revision: str | None = None,
    vision_tower: str | Path | None = None,
) -> Path:
    """The converted folder of original-format ``source`` (local folder or Hub id) under
    ``cache_root/converted/<slug>-<hash>``: converted on first use, reused while the
    recorded source files still match."""
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

"""Reading original-format checkpoints and writing converted ones: what every converter
(:mod:`vgutils.models.original` for LLaVA, :mod:`vgutils.models.original_internvl` for
InternVL-Chat) shares: config and weight files, tensors streamed one at a time, output
shards written as they fill, Hub snapshots (also of a repository's subfolder), sha256
records of the source files and the check that a converted folder is still current."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import torch

CONVERTER_VERSION = "1"
RECORD_NAME = "vgutils_conversion.json"
SHARD_BYTES = 2 * 2**30
"""Output shard size: peak memory is about this plus the largest single tensor."""


class ConversionError(ValueError):
    """An original-format checkpoint that cannot be converted (one line, naming the key)."""


def read_config(folder: str | Path) -> dict:
    return json.loads((Path(folder) / "config.json").read_text())


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


CHECKPOINT_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "vit/**"]
TOWER_FILES = ["*.json", "*.safetensors", "*.bin", "*.txt"]
"""What is downloaded of a Hub checkpoint / CLIP tower (``.bin`` weights only for towers:
``openai/clip-vit-large-patch14-336`` may have no safetensors)."""


def split_hub_id(name: str) -> tuple[str, str | None]:
    """``"org/name"`` -> ``("org/name", None)``; ``"org/name/sub/folder"`` -> ``("org/name",
    "sub/folder")``: a checkpoint in a subfolder of a Hub repository (LLaVA-Tri's
    ``UCSC-VLAA/LLaVA-Med-pp`` holds one fine-tune per benchmark: ``SLAKE/``, ...)."""
    parts = name.strip("/").split("/")
    if len(parts) <= 2:
        return name, None
    return "/".join(parts[:2]), "/".join(parts[2:])


def hub_snapshot(
    repo_id: str, revision: str | None = None, patterns: list[str] = CHECKPOINT_FILES
) -> str:
    """``huggingface_hub.snapshot_download`` with a clear message when it cannot; for an id
    with a subfolder (:func:`split_hub_id`) only that subfolder, whose path is returned."""
    from huggingface_hub import snapshot_download

    repo, subfolder = split_hub_id(repo_id)
    if subfolder:
        patterns = [f"{subfolder}/{pattern}" for pattern in patterns]
    try:
        folder = snapshot_download(repo, revision=revision, allow_patterns=patterns)
        return str(Path(folder) / subfolder) if subfolder else folder
    except Exception as err:
        raise ConversionError(
            f"cannot fetch {repo_id!r} from the Hugging Face Hub ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); on an offline machine download "
            "it elsewhere and pass the local folder"
        ) from err


def snapshot_revision(folder: Path) -> str | None:
    """The commit of a Hub cache snapshot folder (``.../snapshots/<commit>``, or a
    subfolder of it)."""
    for part in (folder, *folder.parents):
        if part.parent.name == "snapshots":
            return part.name
    return None


def hub_file(name: str, filename: str, revision: str | None = None) -> Path:
    """One file of a Hub checkpoint (its subfolder's, :func:`split_hub_id`), downloaded."""
    from huggingface_hub import hf_hub_download

    repo, subfolder = split_hub_id(name)
    return Path(hf_hub_download(repo, filename, subfolder=subfolder, revision=revision))


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


def hashes(folder: Path) -> dict[str, dict]:
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


def inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents

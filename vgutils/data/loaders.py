"""``load_dataset``: a manifest name or a jsonl file -> list of Samples (xyxy boxes)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vgutils.data.manifest import (
    UNPINNED,
    DatasetEntry,
    data_root,
    fetch,
    load_manifest,
    read_registry,
)
from vgutils.data.rows import FormatRule, Problem, Sample, read_rows
from vgutils.errors import DataError, UsageError, choices_hint
from vgutils.locks import build_lock

log = logging.getLogger("vgutils.data")


@dataclass(frozen=True)
class ResolvedDataset:
    """Where a dataset's rows and images are and how its boxes are read."""

    name: str
    jsonl: Path
    image_root: Path
    format_rule: FormatRule
    q_type: str | None = None
    entry: DatasetEntry | None = None
    root: Path | None = None  # the data root of a manifest dataset


def resolve_dataset(
    name_or_path: str | Path,
    *,
    image_root: str | Path | None = None,
    bbox_format: str | None = None,
    root: str | Path | None = None,
) -> ResolvedDataset:
    """Find the jsonl and image root of a manifest name or a ``.jsonl`` path. Manifest
    files are checked against their pinned hash; the sample sets are built if absent."""
    manifest = load_manifest()
    name = str(name_or_path)
    if name in manifest:
        entry = manifest[name]
        base = data_root(root)
        if not (base / entry.file).exists():
            with build_lock():  # one process builds it; the others wait, then find it
                if not (base / entry.file).exists():
                    _build_on_demand(name, base)
        jsonl = fetch(entry.file, base)

        def rule(row: dict, entry=entry) -> str:
            return bbox_format or entry.format_for(str(row.get("image", "")))

        return ResolvedDataset(
            name=name,
            jsonl=jsonl,
            image_root=Path(image_root) if image_root else base / entry.image_root,
            format_rule=rule,
            q_type=entry.q_type,
            entry=entry,
            root=base,
        )
    path = Path(name_or_path)
    if path.suffix != ".jsonl":
        raise UsageError(
            f"dataset {name!r} is neither a manifest dataset nor a .jsonl file; "
            + choices_hint(name, manifest)
        )
    if not path.exists():
        raise DataError(f"{path}: dataset file not found")
    return ResolvedDataset(
        name=path.stem,
        jsonl=path,
        image_root=Path(image_root) if image_root else path.parent,
        format_rule=lambda row: bbox_format,
    )


def _build_sample_sets(root: Path) -> None:
    from vgutils.data.samples import build_sample_sets

    build_sample_sets(root)


_builders: dict[str, Callable[[Path], object]] = {"sample-": _build_sample_sets}
"""Generated datasets: manifest-name prefix -> builder writing them under a data root."""


def register_builder(prefix: str, build: Callable[[Path], object]) -> None:
    """Datasets whose manifest name starts with ``prefix`` are generated, when absent, by
    ``build(data_root)`` (the longest matching prefix wins; the embedded sample sets are
    ``sample-``, the teaching scenes register theirs, :mod:`vgutils.teach.sources`)."""
    _builders[prefix] = build


def _build_on_demand(name: str, base: Path) -> None:
    """A generated dataset (:func:`register_builder`) is built when absent."""
    matches = [prefix for prefix in _builders if name.startswith(prefix)]
    if matches:
        _builders[max(matches, key=len)](base)


def read_dataset(dataset: ResolvedDataset) -> tuple[list[Sample], list[Problem]]:
    """All good samples of ``dataset`` and every problem found in its rows. Images that
    the registry pins (manifest datasets) must match their sha256."""
    return read_rows(
        dataset.jsonl,
        dataset.image_root,
        dataset.format_rule,
        dataset.q_type,
        pinned=pinned_images(dataset.root) if dataset.root is not None else None,
    )


def pinned_images(root: Path) -> dict[Path, str]:
    """``{resolved path: sha256}`` of the registry's pinned files under ``root``."""
    return {
        (root / name).resolve(): digest
        for name, (digest, _) in read_registry().items()
        if digest != UNPINNED
    }


def load_dataset(
    name_or_path: str | Path,
    *,
    image_root: str | Path | None = None,
    bbox_format: str | None = None,
) -> list[Sample]:
    """Samples of a manifest dataset (``vgmed-localization``, ``vgmed-attribute``,
    ``coco-localization``, ``coco-attribute``, ``sample-medical``, ``sample-natural``) or a
    ``.jsonl``. Boxes come back xyxy in original pixels; the format is the row's
    ``bbox_format``, else ``bbox_format``, else the manifest's rule (a jsonl outside the
    manifest needs one). Bad rows are logged (``file:line: field: problem``) and skipped."""
    dataset = resolve_dataset(name_or_path, image_root=image_root, bbox_format=bbox_format)
    samples, problems = read_dataset(dataset)
    for problem in problems:
        log.warning("%s", problem)
    errors = sum(p.severity == "error" for p in problems)
    if errors:
        log.warning("%s: skipped %d bad row(s), kept %d", dataset.jsonl, errors, len(samples))
    return samples

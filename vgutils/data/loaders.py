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
    bbox_format: str | None = None  # the box format the user gave (--bbox-format)


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
            bbox_format=bbox_format,
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
        bbox_format=bbox_format,
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


def read_dataset(
    dataset: ResolvedDataset, thorough: bool = True, box_overhang: str = "drop"
) -> tuple[list[Sample], list[Problem]]:
    """All good samples of ``dataset`` and every problem found in its rows. Images that
    the registry pins must match their sha256, however the dataset was named (a manifest
    name, or a jsonl path whose rows reach into the data root). ``thorough`` (what
    ``validate`` runs): every image is decoded whole (a truncated file is a bad row), and
    the files without a sha256 in the registry are named (a warning: used unchecked).
    Loading for a run (``thorough=False``) reads image headers only; an image that fails
    to decode is skipped when the run loads it. ``box_overhang``:
    :data:`vgutils.data.rows.BOX_OVERHANGS` (``drop``: ours; ``clamp``: the authors')."""
    root = dataset.root if dataset.root is not None else data_root()
    pinned = pinned_images(root)
    samples, problems = read_rows(
        dataset.jsonl,
        dataset.image_root,
        dataset.format_rule,
        dataset.q_type,
        pinned=pinned,
        explicit_format=dataset.bbox_format,
        decode=thorough,
        box_overhang=box_overhang,
    )
    if thorough:
        problems.extend(_unpinned(dataset, samples, root, pinned))
    return samples, problems


def _unpinned(dataset: ResolvedDataset, samples, root: Path, pinned: dict) -> list[Problem]:
    """Warnings naming the dataset's files that the registry does not pin: the jsonl, and
    the images (one line, counted)."""
    messages = []
    if dataset.jsonl.resolve() not in pinned:
        messages.append("unpinned (no sha256 in the registry): used unchecked")
    images = sorted({s.image_path for s in samples if s.image_path not in pinned})
    if images:
        shown = ", ".join(p.name for p in images[:5]) + (", ..." if len(images) > 5 else "")
        messages.append(
            f"{len(images)} image(s) unpinned (no sha256 in the registry): {shown}; used unchecked"
        )
    return [Problem(str(dataset.jsonl), 0, "registry", m, "warning") for m in messages]


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
    samples, problems = read_dataset(dataset, thorough=False)
    for problem in problems:
        log.warning("%s", problem)
    errors = sum(p.severity == "error" for p in problems)
    if errors:
        log.warning("%s: skipped %d bad row(s), kept %d", dataset.jsonl, errors, len(samples))
    return samples

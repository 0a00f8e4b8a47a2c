"""Reading and checking dataset rows (jsonl): one rule set for validation and loading.

Row fields: ``image`` (relative to the image root), ``question``, ``bbox`` or
``original_bboxes`` (one box or a list of boxes), optional ``bbox_format``, ``id``,
``q_type``, ``answer``, ``modality`` (extra fields are kept in ``Sample.extra``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vgutils.data.images import NotARegularFile, check_regular_file, image_size, load_image
from vgutils.data.manifest import sha256
from vgutils.errors import DataError
from vgutils.geometry import BOX_FORMATS, to_xyxy

Q_TYPES = ("localization", "attribute")
MAX_CLIP_PX = 1.0
"""Under ``box_overhang="drop"`` a box may overhang the image by at most this many pixels
(clipped, with a warning); a row whose box overhangs more is reported and dropped."""
BOX_OVERHANGS = ("clamp", "drop")
"""What a box overhanging the image does (the protocols' ``box_overhang``): ``clamp``
keeps it, clamped to the image (the authors' code; a warning says by how much), ``drop``
reports the row and drops it when the overhang exceeds :data:`MAX_CLIP_PX` (ours)."""

_KNOWN_FIELDS = {"image", "question", "bbox", "original_bboxes", "bbox_format", "id", "q_type"}
_KNOWN_FIELDS |= {"answer", "modality"}


@dataclass(frozen=True, eq=False)
class Sample:
    """One question about one image. ``boxes``: float64 ``(k, 4)`` xyxy in original-image
    pixels; ``source``: ``file:line`` it came from."""

    id: str
    image_path: Path
    question: str
    boxes: np.ndarray
    q_type: str | None = None
    answer: str | None = None
    modality: str | None = None
    source: str = ""
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Problem:
    """A problem with one row: printed as ``file:line: field: message``."""

    file: str
    line: int
    field: str
    message: str
    severity: str = "error"  # or "warning" (the row is still used)

    def __str__(self) -> str:
        prefix = "warning: " if self.severity == "warning" else ""
        where = f"{self.file}:{self.line}" if self.line else self.file  # 0: the whole file
        return f"{where}: {self.field}: {prefix}{self.message}"


FormatRule = Callable[[dict], str | None]


class _RowError(Exception):
    def __init__(self, field_name: str, message: str):
        super().__init__(message)
        self.field = field_name
        self.message = message


def _image_path(image: object, image_root: Path) -> Path:
    if not isinstance(image, str) or not image.strip():
        raise _RowError("image", "missing or empty")
    relative = Path(image)
    if relative.is_absolute():
        raise _RowError("image", f"absolute path {image!r} is not allowed (relative to the root)")
    path = (image_root / relative).resolve()
    if not path.is_relative_to(image_root.resolve()):
        raise _RowError("image", f"{image!r} escapes the image root {image_root}")
    if not path.exists():
        raise _RowError("image", f"file not found: {path}")
    try:
        check_regular_file(path)
    except NotARegularFile as err:
        raise _RowError("image", str(err)) from err
    return path


def _read_size(path: Path, decode: bool = False) -> tuple[int, int]:
    """The image's size from its header, or with ``decode`` from decoding it whole (a
    truncated file fails here)."""
    try:
        if decode:
            return load_image(path).size
        return image_size(path)
    except Exception as err:  # any reader error means the same to the user
        raise _RowError("image", f"unreadable image {path}: {err}") from err


def _raw_boxes(row: dict) -> tuple[str, list]:
    key = "bbox" if "bbox" in row else "original_bboxes" if "original_bboxes" in row else None
    if key is None:
        raise _RowError("bbox", "missing (need 'bbox' or 'original_bboxes')")
    value = row[key]
    if not isinstance(value, list) or not value:
        raise _RowError(key, f"expected a box or a list of boxes, got {value!r}")
    boxes = value if isinstance(value[0], list | tuple) else [value]
    return key, boxes


def _checked_boxes(
    key: str,
    boxes: list,
    fmt: str,
    size: tuple[int, int],
    warn: Callable[[str, str], None],
    box_overhang: str = "drop",
) -> np.ndarray:
    width, height = size
    out = []
    for index, box in enumerate(boxes):
        label = f"{key}[{index}]"
        for value in box if isinstance(box, list | tuple) else ():
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise _RowError(label, f"coordinate {value!r} is not a number (in {box!r})")
        try:
            xyxy = to_xyxy(box, fmt)
        except ValueError as err:
            raise _RowError(label, str(err)) from err
        overhang = max(-xyxy[0], -xyxy[1], xyxy[2] - width, xyxy[3] - height, 0.0)
        if overhang > MAX_CLIP_PX and box_overhang == "drop":
            raise _RowError(
                label,
                f"box {list(box)} ({fmt}) extends {overhang:g} px outside the "
                f"{width}x{height} image",
            )
        if overhang > 0:
            clipped = np.clip(xyxy, 0, [width, height, width, height])
            warn(label, f"box {list(box)} overhangs the image by {overhang:g} px; clipped")
            xyxy = clipped
        out.append(xyxy)
    return np.asarray(out, dtype=np.float64)


def _text(row: dict, key: str, required: bool) -> str | None:
    value = row.get(key)
    if value is None:
        if required:
            raise _RowError(key, "missing")
        return None
    if not isinstance(value, str):
        if required:
            raise _RowError(key, f"expected text, got {type(value).__name__} {value!r}")
        return str(value)
    if not value.strip():
        if required:
            raise _RowError(key, "empty")
        return value
    return value.strip()


def read_text_lines(path: Path) -> tuple[list[str], bool]:
    """The lines of a UTF-8 text file, and whether it started with a byte-order mark
    (dropped). DataError naming the file (and line) if it is not a regular file or not
    UTF-8 (e.g. latin-1)."""
    try:
        check_regular_file(path)
        data = Path(path).read_bytes()
    except FileNotFoundError as err:
        raise DataError(f"{path}: file not found") from err
    except OSError as err:
        raise DataError(f"{path}: unreadable ({err})") from err
    bom = data.startswith(b"\xef\xbb\xbf")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataError(
            f"{path}:{line}: not UTF-8 (byte 0x{data[err.start]:02x}; latin-1?); "
            "re-encode the file as UTF-8"
        ) from err
    return text.splitlines(), bom


def read_rows(
    jsonl: Path,
    image_root: Path,
    format_rule: FormatRule,
    default_q_type: str | None = None,
    pinned: dict[Path, str] | None = None,
    *,
    explicit_format: str | None = None,
    decode: bool = False,
    box_overhang: str = "drop",
) -> tuple[list[Sample], list[Problem]]:
    """Every good row of ``jsonl`` as a Sample, and every problem found (bad rows are
    skipped, never fatal; a file without rows is an error). ``format_rule(row)`` gives the
    box format when the row has no ``bbox_format`` (``None``: unknown, an error);
    ``explicit_format``: the one the user gave (a row that says otherwise is warned
    about; the row's is used). ``pinned``: ``{resolved image path: sha256}`` from the
    registry; a row whose image does not match is an error. ``decode``: decode every
    image whole, once (a truncated file is an error), not only its header.
    ``box_overhang``: :data:`BOX_OVERHANGS`."""
    if box_overhang not in BOX_OVERHANGS:
        raise ValueError(f"unknown box_overhang {box_overhang!r}; expected one of {BOX_OVERHANGS}")
    samples: list[Sample] = []
    problems: list[Problem] = []
    seen_ids: dict[str, int] = {}
    checked: dict[Path, str | None] = {}
    sizes: dict[Path, tuple[int, int] | _RowError] = {}
    name = str(jsonl)
    lines, bom = read_text_lines(jsonl)
    if bom:
        problems.append(Problem(name, 1, "encoding", "byte-order mark ignored", "warning"))
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        row_warnings: list[Problem] = []

        def warn(field_name: str, message: str, number=number, sink=row_warnings) -> None:
            sink.append(Problem(name, number, field_name, message, severity="warning"))

        try:
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise _RowError("json", f"bad JSON: {err.msg} at column {err.colno}") from err
            if not isinstance(row, dict):
                raise _RowError("json", f"expected an object, got {type(row).__name__}")
            question = _text(row, "question", required=True)
            image_path = _image_path(row.get("image"), image_root)
            if pinned and image_path in pinned:
                if image_path not in checked:
                    actual = sha256(image_path)
                    checked[image_path] = None if actual == pinned[image_path] else actual
                if (actual := checked[image_path]) is not None:
                    raise _RowError(
                        "image",
                        f"{image_path} does not match its pinned sha256 in the registry "
                        f"(pinned {pinned[image_path]}, now {actual}): it changed after "
                        "`data pin`; restore it, or pin it again if the change is wanted",
                    )
            key, raw = _raw_boxes(row)
            fmt = row.get("bbox_format") or format_rule(row)
            if explicit_format and row.get("bbox_format") not in (None, explicit_format):
                warn(
                    "bbox_format",
                    f"the row says {row['bbox_format']!r}, --bbox-format says "
                    f"{explicit_format!r}; the row's is used",
                )
            if fmt is None:
                raise _RowError(
                    "bbox_format",
                    "unknown box format: give 'bbox_format' in the row or --bbox-format "
                    f"({'/'.join(BOX_FORMATS)}); a jsonl outside the manifest is not guessed",
                )
            if fmt not in BOX_FORMATS:
                raise _RowError("bbox_format", f"{fmt!r} is not one of {BOX_FORMATS}")
            if image_path not in sizes:  # each image read (or decoded) once
                try:
                    sizes[image_path] = _read_size(image_path, decode)
                except _RowError as err:
                    sizes[image_path] = err
            if isinstance(size := sizes[image_path], _RowError):
                raise size
            boxes = _checked_boxes(key, raw, fmt, size, warn, box_overhang)
            q_type = row.get("q_type", default_q_type)
            if q_type is not None and q_type not in Q_TYPES:
                raise _RowError("q_type", f"{q_type!r} is not one of {Q_TYPES}")
            sample_id = str(row.get("id", f"{jsonl.stem}:{number}"))
            if sample_id in seen_ids:
                raise _RowError(
                    "id", f"duplicate id {sample_id!r} (first on line {seen_ids[sample_id]})"
                )
            seen_ids[sample_id] = number
        except _RowError as err:
            problems.append(Problem(name, number, err.field, err.message))
            continue
        problems.extend(row_warnings)
        samples.append(
            Sample(
                id=sample_id,
                image_path=image_path,
                question=question,
                boxes=boxes,
                q_type=q_type,
                answer=_text(row, "answer", required=False),
                modality=_text(row, "modality", required=False),
                source=f"{name}:{number}",
                extra={k: v for k, v in row.items() if k not in _KNOWN_FIELDS},
            )
        )
    if not any(line.strip() for line in lines):
        problems.append(Problem(name, 0, "rows", "no rows (an empty file)"))
    return samples, problems

"""Clinician ratings of VGMed questions (supplement section B): the ratings file, the
curation filter, Table 1's distribution, and a rating interface that never loses a
rating.

Ratings file (CSV), an append-only log of ratings: ``sample_id, q_type, rater,
clinical_relevance, visual_grounding, semantic_grounding, timestamp, note``; the three
axes are integers 1-5 (rubrics in :data:`RUBRICS`); ``q_type`` is ``attribute`` or
``localization``. A rater who rates a sample again appends a new row; the last row per
(sample, rater) is the rating (:func:`load_ratings`, :func:`curate`, :func:`distribution`
count each pair once).

Which rows may repeat a (sample, rater): those the rating widget wrote
(:func:`append_rating` stamps every row with its UTC time, ``2026-01-05T14:03:11+00:00``,
:data:`WIDGET_TIMESTAMP`; files written before this rule carry the same stamp). A row
without that stamp is a hand-made one: a second row for its (sample, rater) is refused,
naming both lines. The file may come from Excel ("CSV UTF-8": a byte-order mark, CRLF) or
LibreOffice; its column order is free (appends follow it).

Where it lives: a relative name (``"ratings.csv"``) means ``<results root>/ratings/<name>``
(:func:`ratings_path`; ``results/ratings/ratings.csv`` in a clone), never a file beside the
committed notebooks; an absolute path is used as given.
"""

from __future__ import annotations

import csv
import fcntl
import io
import os
import re
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from vgutils import context
from vgutils.errors import DataError, UsageError
from vgutils.paths import DATA_MANIFEST

AXES = ("clinical_relevance", "visual_grounding", "semantic_grounding")
AXIS_NAMES = {
    "clinical_relevance": "Clinical Relevance",
    "visual_grounding": "Visual Grounding",
    "semantic_grounding": "Minimum Semantic Grounding",
}
COLUMNS = ("sample_id", "q_type", "rater", *AXES, "timestamp", "note")
Q_TYPES = ("attribute", "localization")
KEEP_THRESHOLD = 3
PUBLISHED_TABLE1 = DATA_MANIFEST / "published" / "table1_ratings.csv"
RATINGS_FOLDER = "ratings"
"""The ratings files' folder under the results root."""


def ratings_path(ratings_csv: str | Path) -> Path:
    """The ratings file ``ratings_csv`` names: an absolute path as given, a relative one
    under ``<results root>/ratings/`` (the results root of :func:`vgutils.context.current`).
    A file of that name left in the working folder by an earlier version (the widget used
    to write ``notebooks/ratings.csv``) while the new place has none is a one-line
    :class:`UsageError` saying where to move it, so that no rater's log is split."""
    if not isinstance(ratings_csv, str | os.PathLike) or not str(ratings_csv).strip():
        raise UsageError(f"ratings file: expected a file name or path, got {ratings_csv!r}")
    given = Path(ratings_csv).expanduser()
    if given.is_absolute():
        return given
    path = context.current().results_root / RATINGS_FOLDER / given
    old = Path.cwd() / given
    if not path.exists() and old.is_file() and old.resolve() != path.resolve():
        raise UsageError(
            f"ratings file {str(ratings_csv)!r}: ratings now live under {path.parent}/; "
            f"move the earlier file there: mv {old} {path}"
        )
    return path


RUBRICS = {
    "clinical_relevance": {
        1: "Irrelevant or misleading; the question is clinically inappropriate or "
        "nonsensical in this context.",
        2: "Marginally relevant; the question has limited medical value or loosely pertains "
        "to the case.",
        3: "Acceptable; the question is reasonable in clinical significance.",
        4: "Clinically useful; the question is clearly relevant and meaningful to medical "
        "interpretation.",
        5: "Highly relevant and valid; the question is well-phrased, accurate, and directly "
        "supports clinical reasoning.",
    },
    "visual_grounding": {
        1: "It refers to other anatomy or ignores the boxed area entirely; ignores the region.",
        2: "The question has only a weak or incidental connection to the boxed region; the "
        "area is largely irrelevant to the text.",
        3: "It reasonably overlaps or implies the boxed region.",
        4: "Clear reference to the boxed region.",
        5: "Perfectly aligned, the question precisely refers to the boxed region.",
    },
    "semantic_grounding": {
        1: "Very deep semantic grounding; requires advanced, multi-step clinical reasoning, "
        "such as staging, prognosis, mechanisms, or treatment decisions.",
        2: "High semantic grounding; requires reasoning about specific diseases or "
        "well-defined diagnostic entities.",
        3: "Moderate semantic grounding; requires linking features to broad categories of "
        "pathology (growth, inflammation, degeneration).",
        4: "Low-moderate semantic grounding; requires recognition of more specific medical "
        "descriptors, without broad pathology categories or diagnostic reasoning.",
        5: "Low semantic grounding; requires only basic clinical or anatomical recognition "
        "(body parts, organs, simple structures, fractures, nodules).",
    },
}


class RatingsWarning(UserWarning):
    """A line of a ratings file that was ignored (torn by a crash, or a repeated header)."""


class RatingsFileError(DataError, ValueError):
    """A ratings file that cannot be read as it is; the message names the file and line."""


WIDGET_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00")
"""The ``timestamp`` of a row written by :func:`append_rating` (the rating widget): UTC to
the second, ``2026-01-05T14:03:11+00:00``. Such rows may repeat a (sample, rater) -- the
rater re-rated, the last one counts; any other row (a hand-made file) may not."""


@dataclass
class _Record:
    """One CSV record: its fields, the lines it starts and ends on, and its quoted fields
    that hold a line break (field index, line of the opening quote)."""

    fields: list[str]
    line: int
    end: int
    multiline: list[tuple[int, int]]


_UNQUOTED = re.compile(r"[^,\n]*")
"""The rest of a field up to its comma or line end."""


def _quoted(text: str, start: int) -> tuple[str, int, int]:
    """The quoted field opening at ``text[start] == '"'``: (value, index after the closing
    quote, lines crossed); ``-1`` as the index when the quote is never closed."""
    parts, index = [], start + 1
    while True:
        close = text.find('"', index)
        if close < 0:
            parts.append(text[index:])
            return "".join(parts), -1, text.count("\n", start)
        parts.append(text[index:close])
        if text.startswith('"', close + 1):  # a doubled quote: one quote character
            parts.append('"')
            index = close + 2
            continue
        return "".join(parts), close + 1, text.count("\n", start, close)


def _parse_csv(text: str) -> tuple[list[_Record], int | None]:
    """RFC 4180 records of ``text`` (LF line ends), as Excel and LibreOffice write them: a
    field that starts with a quote runs to the closing quote (``""`` inside is a quote) and
    may hold commas and line breaks; a quote inside an unquoted field is a character.
    Returns the records and, if a quote is never closed, the line where it opens (the
    records end before the record holding it)."""
    records: list[_Record] = []
    index, line, size = 0, 1, len(text)
    while index < size:
        fields: list[str] = []
        multiline: list[tuple[int, int]] = []
        start_line = line
        while True:  # one field per turn
            if index < size and text[index] == '"':
                value, after, crossed = _quoted(text, index)
                if after < 0:
                    return records, line
                if crossed:
                    multiline.append((len(fields), line))
                line += crossed
                end = _UNQUOTED.match(text, after).end()
                value += text[after:end]  # after the closing quote: kept, as csv does
            else:
                end = _UNQUOTED.match(text, index).end()
                value = text[index:end]
            fields.append(value)
            if end < size and text[end] == ",":
                index = end + 1
                continue
            records.append(_Record(fields, start_line, line, multiline))
            index = end + 1
            line += 1
            break
    return records, None


def _text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError as err:
        raise RatingsFileError(f"{path}: ratings file not found") from err
    except OSError as err:
        raise RatingsFileError(f"{path}: unreadable ({err.strerror or err})") from err
    try:
        text = data.decode("utf-8-sig")  # Excel's "CSV UTF-8" starts with a byte-order mark
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise RatingsFileError(
            f"{path}:{line}: not UTF-8 (byte 0x{data[err.start]:02x}); save it as "
            "'CSV UTF-8' (Excel) or with the character set UTF-8 (LibreOffice)"
        ) from err
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _looks_like_row(text: str, width: int) -> bool:
    return text.count(",") >= width - 1


def _records(path: Path) -> tuple[list[str], int, list[tuple[int, list[str]]], list[str]]:
    """The header and its line, the data records with their first line, and the ignored
    lines of a ratings file. A record with fewer fields than the header (or a quote left
    open on the last line, without its newline) is a line torn by a crash (the appender
    fences it with a newline): reported by line number, ignored. A whole last row without
    its newline (an editor, a spreadsheet export) is read: a tear that leaves every field
    can only have cut the note. Refused (:class:`RatingsFileError`, naming the line): more
    fields than the header (the columns would shift), a quote that is never closed or
    that runs over rows, a file separated by semicolons."""
    text = _text(path)
    records, open_quote = _parse_csv(text)
    ignored: list[str] = []
    if open_quote is not None:
        # a quote opened on a last line without its newline: a line torn by a crash
        torn = not text.endswith("\n") and text.count("\n") == open_quote - 1
        if not torn:
            raise RatingsFileError(
                f"{path}:{open_quote}: the quote opened on this line is never closed, so it "
                "takes in every row after it; close it (a quote inside a quoted field is "
                'written twice: "")'
            )
        ignored.append(f"{path}:{open_quote}: torn line ignored (an open quote at the end)")
    records = [r for r in records if any(f.strip() for f in r.fields)]
    if not records:
        return [], 1, [], ignored
    header_record, *data = records
    header = [f.strip() for f in header_record.fields]
    width = len(header)
    while header and not header[-1]:  # a spreadsheet range wider than the data
        header.pop()
    if len(header) == 1 and (";" in header[0] or "\t" in header[0]):
        separator = ";" if ";" in header[0] else "a tab"
        raise RatingsFileError(
            f"{path}:{header_record.line}: the header is separated by {separator!r}, not "
            "commas; save the file as CSV with a comma as the field separator"
        )
    rows: list[tuple[int, list[str]]] = []
    problems: list[str] = []
    for record in data:
        values = [f.strip() for f in record.fields]
        where = f"{path}:{record.line}"
        bad_quote = [
            (index, opened)
            for index, opened in record.multiline
            if index >= len(header)
            or header[index] != "note"
            or any(
                _looks_like_row(part, len(header)) for part in record.fields[index].split("\n")[1:]
            )
        ]
        if bad_quote:
            index, opened = bad_quote[0]
            column = header[index] if index < len(header) else f"field {index + 1}"
            problems.append(
                f"{path}:{opened}: the quote opened on this line ({column}) runs on to line "
                f"{record.end} and takes in the rows between; close it where the field ends "
                '(a quote inside a quoted field is written twice: "")'
            )
            continue
        if values[: len(header)] == header and not any(values[len(header) :]):
            ignored.append(f"{where}: repeated header ignored")
            continue
        if len(values) > width or any(values[len(header) :]):
            problems.append(
                f"{where}: {len(values)} fields, but the header has {len(header)}: a comma "
                "too many (a field holding a comma must be in quotes); the columns would shift"
            )
            continue
        if len(values) < len(header):
            ignored.append(
                f"{where}: torn line ignored ({len(values)} fields): "
                f"{','.join(record.fields)[:60]!r}"
            )
            continue
        rows.append((record.line, values[: len(header)]))
    if problems:
        raise RatingsFileError(f"{len(problems)} problem(s) in {path}:\n" + "\n".join(problems))
    return header, header_record.line, rows, ignored


def _problems(frame: pd.DataFrame, lines: list[int], source: str) -> list[str]:
    """Every bad value, and every (sample, rater) given twice where the rating widget did
    not write both rows (a hand-made file has one row per pair), naming both lines."""
    problems = []
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        return [f"{source}: missing column(s) {missing}; expected {list(COLUMNS)}"]
    first_row: dict[tuple[str, str], tuple[int, bool]] = {}
    q_types: dict[str, tuple[int, str]] = {}
    for line, row in zip(lines, frame.to_dict("records"), strict=True):
        where = f"{source}:{line}"
        if not row["sample_id"]:
            problems.append(f"{where}: sample_id: empty")
        if row["q_type"] not in Q_TYPES:
            problems.append(f"{where}: q_type: {row['q_type']!r} is not one of {Q_TYPES}")
        elif row["sample_id"]:
            earlier_line, earlier = q_types.setdefault(row["sample_id"], (line, row["q_type"]))
            if earlier != row["q_type"]:
                problems.append(
                    f"{where}: q_type: sample {row['sample_id']!r} is {row['q_type']!r} here "
                    f"but {earlier!r} on line {earlier_line}"
                )
        if not row["rater"]:
            problems.append(f"{where}: rater: empty")
        for axis in AXES:
            value = row[axis]
            try:
                number = float(value)
            except (TypeError, ValueError):
                number = np.nan
            if not (np.isfinite(number) and number == int(number) and 1 <= number <= 5):
                problems.append(f"{where}: {axis}: {value!r} is not an integer 1-5")
        if not (row["sample_id"] and row["rater"]):
            continue
        widget = bool(WIDGET_TIMESTAMP.fullmatch(row["timestamp"]))
        key = (row["sample_id"], row["rater"])
        first_line, first_widget = first_row.setdefault(key, (line, widget))
        if first_line != line and not (widget and first_widget):
            problems.append(
                f"{where}: sample {key[0]!r} rated by {key[1]!r} twice, on lines {first_line} "
                f"and {line}: a hand-made file has one row per (sample, rater); delete one "
                "(rows the rating widget wrote, with its UTC timestamp, may repeat: the last "
                "one counts)"
            )
    return problems


def latest(ratings: pd.DataFrame) -> pd.DataFrame:
    """The last rating per (sample, rater): the file is an append-only log, and a rater who
    rates a sample again replaces the earlier rating."""
    return ratings.drop_duplicates(["sample_id", "rater"], keep="last").reset_index(drop=True)


def load_ratings(path: str | Path, history: bool = False) -> pd.DataFrame:
    """Read and validate a ratings CSV: UTF-8 (a byte-order mark allowed), LF or CRLF line
    ends, RFC 4180 quoting -- as the rating widget, Excel ("CSV UTF-8") and LibreOffice
    write it; surrounding spaces of a value are dropped. A :class:`RatingsFileError` (a
    ``ValueError``) lists every bad row by line: a bad value, a row with more fields than
    the header, a quote never closed, a (sample, rater) given twice by hand (see
    :data:`WIDGET_TIMESTAMP`). Lines torn by a crash (and repeated headers) are ignored
    with a :class:`RatingsWarning` naming their line. Returns the last rating per (sample,
    rater), or with ``history=True`` every row in file order (column ``line``: where the
    row starts in the file)."""
    if not isinstance(path, str | os.PathLike):
        raise UsageError(
            f"ratings file: expected a path (a str or Path), got {type(path).__name__} {path!r}"
        )
    path = Path(path)
    header, header_line, rows, ignored = _records(path)
    for message in ignored:
        warnings.warn(message, RatingsWarning, stacklevel=2)
    if len(set(header)) != len(header):
        raise RatingsFileError(
            f"{path}:{header_line}: repeated column names in the header {header}"
        )
    lines = [line for line, _ in rows]
    frame = pd.DataFrame([values for _, values in rows], columns=header, dtype=str)
    problems = _problems(frame, lines, str(path))
    if problems:
        raise RatingsFileError(f"{len(problems)} problem(s) in {path}:\n" + "\n".join(problems))
    for axis in AXES:
        frame[axis] = frame[axis].astype(float).astype(int)
    frame = frame[list(COLUMNS)].assign(line=lines)
    return frame if history else latest(frame).drop(columns="line")


def curate(ratings: pd.DataFrame, rule: str = "all") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split the ratings into kept and discarded samples (all of a sample's rows go
    together). ``rule="all"`` (default): keep a sample only if every rater gave every axis
    >= 3 (the paper: any rating below 3 discards). ``rule="mean"``: keep if each axis's
    mean over raters is >= 3. Each (sample, rater) counts once: its last rating."""
    ratings = latest(ratings)
    if rule == "all":
        keep = ratings.groupby("sample_id")[list(AXES)].min().min(axis=1) >= KEEP_THRESHOLD
    elif rule == "mean":
        keep = ratings.groupby("sample_id")[list(AXES)].mean().min(axis=1) >= KEEP_THRESHOLD
    else:
        raise ValueError(f"unknown rule {rule!r}; expected 'all' or 'mean'")
    kept_ids = set(keep[keep].index)
    mask = ratings["sample_id"].isin(kept_ids)
    return ratings[mask].copy(), ratings[~mask].copy()


def distribution(kept: pd.DataFrame) -> pd.DataFrame:
    """Table 1's layout: per question type and axis, the percent of ratings equal to 3, 4
    and 5 (every rater's last rating counts once; rows sum to 100). Columns: ``type,
    category, rating_3, rating_4, rating_5``."""
    kept = latest(kept)
    below = kept[list(AXES)].lt(KEEP_THRESHOLD).any(axis=None)
    if below:
        raise ValueError("distribution() takes kept ratings: found a rating below 3; curate first")
    rows = []
    for q_type in Q_TYPES:
        part = kept[kept["q_type"] == q_type]
        if part.empty:
            continue
        for axis in ("clinical_relevance", "semantic_grounding", "visual_grounding"):
            counts = part[axis].value_counts()
            total = counts.sum()
            rows.append(
                {
                    "type": q_type,
                    "category": axis,
                    **{f"rating_{r}": 100.0 * counts.get(r, 0) / total for r in (3, 4, 5)},
                }
            )
    return pd.DataFrame(rows)


def published_table1() -> pd.DataFrame:
    """Table 1 as published (percent), with the citation in the file's first line."""
    return pd.read_csv(PUBLISHED_TABLE1, comment="#")


def synthetic_ratings(n_per_type: int, seed: int = 0, rater: str = "synthetic") -> pd.DataFrame:
    """A SYNTHETIC ratings table: each axis drawn independently from Table 1's published
    proportions (seeded), for tests and demonstrations only."""
    rng = np.random.default_rng(seed)
    table = published_table1()
    rows = []
    for q_type in Q_TYPES:
        probabilities = {
            r["category"]: np.array([r["rating_3"], r["rating_4"], r["rating_5"]])
            for r in table[table["type"] == q_type].to_dict("records")
        }
        for i in range(n_per_type):
            row = {"sample_id": f"synthetic-{q_type}-{i}", "q_type": q_type, "rater": rater}
            for axis in AXES:
                p = probabilities[axis] / probabilities[axis].sum()
                row[axis] = int(rng.choice([3, 4, 5], p=p))
            rows.append({**row, "timestamp": "", "note": "synthetic"})
    return pd.DataFrame(rows, columns=list(COLUMNS))


def _file_layout(descriptor: int, path: Path) -> tuple[list[str], str]:
    """The header (column names, in the file's order) and line end of an existing ratings
    file, read from its start."""
    head = os.pread(descriptor, 1 << 16, 0)
    end = head.find(b"\n")
    if end < 0:
        raise RatingsFileError(f"{path}:1: no complete header line; not appended to")
    try:
        text = head[: end + 1].decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise RatingsFileError(f"{path}:1: not UTF-8; not appended to") from err
    header = [name.strip() for name in next(csv.reader([text.rstrip("\r\n")]))]
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise RatingsFileError(
            f"{path}:1: missing column(s) {missing}; expected {list(COLUMNS)}; not appended to"
        )
    return header, "\r\n" if text.endswith("\r\n") else "\n"


def append_rating(path: Path, row: dict) -> None:
    """Append one rating as a single write of a complete line, then fsync, under an
    exclusive ``flock`` on the file: concurrent raters never write the header twice nor
    interleave. The row is stamped with the current UTC time (:data:`WIDGET_TIMESTAMP`)
    unless it has a ``timestamp``: a widget row, which a later re-rating may repeat. An
    existing file keeps its own column order and line ends (a file saved by Excel). A last
    line left without its newline by a crash is fenced (a newline is written first, after
    a closing quote if the torn line ends inside quotes), never glued onto;
    :func:`load_ratings` reports and ignores it."""
    path = Path(path)
    values = {k: row.get(k, "") for k in COLUMNS}
    values["timestamp"] = values["timestamp"] or datetime.now(UTC).isoformat(timespec="seconds")
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)  # released by close
        size = os.fstat(descriptor).st_size
        header, line_end = (list(COLUMNS), "\n") if size == 0 else _file_layout(descriptor, path)
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator=line_end)
        if size == 0:
            writer.writerow(COLUMNS)
        writer.writerow([values.get(name, "") for name in header])
        line = buffer.getvalue().encode("utf-8")
        if size and os.pread(descriptor, 1, size - 1) != b"\n":  # fence a torn last line
            text = os.pread(descriptor, size, 0).decode("utf-8-sig", errors="replace")
            _, open_quote = _parse_csv(text.replace("\r\n", "\n"))
            line = (b'"' if open_quote is not None else b"") + line_end.encode() + line
        os.write(descriptor, line)
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


KEY_HELP = (
    "Keys (in the key box): three digits 1-5 = the three axes in order, Enter = submit, "
    "n = next, p = previous."
)

RATING_LABELS = {
    "clinical_relevance": {
        1: "irrelevant or misleading",
        2: "marginally relevant",
        3: "acceptable",
        4: "clinically useful",
        5: "highly relevant and valid",
    },
    "visual_grounding": {
        1: "ignores the boxed region",
        2: "weak link to the box",
        3: "overlaps or implies the box",
        4: "clear reference to the box",
        5: "perfectly aligned with the box",
    },
    "semantic_grounding": {
        1: "very deep clinical reasoning",
        2: "specific diseases",
        3: "broad pathology categories",
        4: "specific medical descriptors",
        5: "basic anatomical recognition",
    },
}
"""A few words per rating (the full rubrics: :data:`RUBRICS`), for the "selected" line."""

SELECTED = "#0072B2"
"""Okabe-Ito blue (colour-blind safe): the chosen rating's button and its line."""

WIDGET_CSS = f"""<style>
.vg-rating-app img.vg-image {{
  image-rendering: pixelated; object-fit: contain; background: #1a1a1a; flex: none;
}}
.vg-rating-app .vg-controls {{ flex: none; }}
.vg-rating-app .widget-toggle-button.mod-active {{
  background-color: {SELECTED} !important; color: #fff !important; font-weight: bold;
  box-shadow: inset 0 0 0 2px #000 !important;
}}
.vg-rating-app .vg-selected {{ color: {SELECTED}; font-weight: bold; }}
.vg-rating-app .vg-unselected {{ color: #767676; }}
.vg-rating-app .vg-question, .vg-rating-app .vg-question * {{
  white-space: normal; line-height: 1.35;
}}
.vg-rating-app .vg-help {{ white-space: normal; line-height: 1.3; font-size: 85%; }}
</style>"""
"""The card's style: small images shown with their pixels (no smoothing), the chosen
rating as a filled blue button with a black inner border (not colour alone)."""


class RatingApp:
    """An ipywidgets rating card for a clinician: the image with its box on the left, on
    the right one control bar that never moves: progress, the question (a fixed-height
    box), the three axes with 1-5 buttons and under each a "selected: 4 — clinically
    useful" line, a note, previous / submit / next, the "saved" confirmation, a key box
    for the keyboard; the rubrics below. Every image is shown at one size,
    :attr:`IMAGE_SIDE` px on its longer side (a small one upscaled with nearest neighbour,
    no smoothing), in a fixed square, so the controls stay in place from one sample to
    the next (and sit beside the image at 1366x768). The chosen rating is a filled
    Okabe-Ito blue button with a black inner border.

    Submitting appends the rating to the ratings file at once (fsynced); going back shows
    the rater's earlier rating, and rating again appends the new one (the last one
    counts). Reopening resumes at this rater's first unrated sample. A malformed existing
    file is reported, never overwritten.

    ``samples``: :class:`vgutils.data.Sample` list (``q_type`` required). ``ratings_csv``:
    a name under ``<results root>/ratings/`` or an absolute path (:func:`ratings_path`);
    the folder is made on the first rating."""

    IMAGE_SIDE = 460
    CONTROLS_WIDTH = 440
    QUESTION_HEIGHT = 84

    def __init__(self, samples: list, ratings_csv: str | Path, rater: str):
        import ipywidgets as widgets

        if not rater or not rater.strip():
            raise ValueError("a rater name is required")
        self.samples = samples
        self.path = ratings_path(ratings_csv)
        self.rater = rater.strip()
        existing = load_ratings(self.path) if self._has_rows() else None
        self.given: dict[str, dict] = {}
        if existing is not None:
            for row in existing[existing["rater"] == self.rater].to_dict("records"):
                self.given[row["sample_id"]] = {a: int(row[a]) for a in (*AXES,)} | {
                    "note": row["note"]
                }
        self.index = self.first_unrated()
        self.choices = {
            axis: widgets.ToggleButtons(
                options=[1, 2, 3, 4, 5],
                value=None,
                description=AXIS_NAMES[axis],
                tooltips=[f"{r}: {RUBRICS[axis][r]}" for r in range(1, 6)],
                style={"description_width": "190px", "button_width": "42px"},
                layout=widgets.Layout(width="auto"),
            )
            for axis in AXES
        }
        self.selected = {
            axis: widgets.HTML(layout=widgets.Layout(height="22px", margin="0 0 4px 4px"))
            for axis in AXES
        }
        for axis, choice in self.choices.items():
            choice.add_class(f"vg-axis-{axis}")
            self.selected[axis].add_class(f"vg-selected-{axis}")
            choice.observe(lambda _, axis=axis: self._show_selected(axis), "value")
        self.note = widgets.Text(description="note", placeholder="optional")
        side = f"{self.IMAGE_SIDE}px"
        self.image = widgets.Image(
            format="png",
            layout=widgets.Layout(width=side, height=side, min_width=side, min_height=side),
        )
        self.image.add_class("vg-image")
        self.question = widgets.HTML(
            layout=widgets.Layout(height=f"{self.QUESTION_HEIGHT}px", overflow="auto")
        )
        self.question.add_class("vg-question")
        self.progress = widgets.IntProgress(
            min=0, max=len(samples), layout=widgets.Layout(width="160px", flex="none")
        )
        self.status = widgets.HTML()
        self.saved = widgets.HTML(layout=widgets.Layout(height="24px"))
        self.saved.add_class("vg-saved")
        self.keys = widgets.Text(
            description="keys",
            placeholder="e.g. 543 then Enter",
            continuous_update=True,
            layout=widgets.Layout(width="260px"),
        )
        self.keys.add_class("vg-keys")
        self.keys.observe(self._on_keys, "value")
        with warnings.catch_warnings():  # the one way to see Enter in a Text widget
            warnings.simplefilter("ignore", DeprecationWarning)
            self.keys.on_submit(lambda _: self._submit_from_keys())
        self.submit_button = widgets.Button(description="Submit", button_style="success")
        self.previous_button = widgets.Button(description="Previous")
        self.next_button = widgets.Button(description="Next")
        self.submit_button.on_click(lambda _: self.submit())
        self.previous_button.on_click(lambda _: self.go(self.index - 1))
        self.next_button.on_click(lambda _: self.go(self.index + 1))
        rubric_html = "".join(
            f"<b>{AXIS_NAMES[a]}</b><ol>"
            + "".join(f"<li>{t}</li>" for t in RUBRICS[a].values())
            + "</ol>"
            for a in AXES
        )
        rubrics = widgets.Accordion(children=[widgets.HTML(rubric_html)], titles=("Rubrics",))
        axes = [widget for a in AXES for widget in (self.choices[a], self.selected[a])]
        controls = widgets.VBox(
            [
                widgets.HBox(  # one line, whatever the rater's name
                    [self.progress, self.status],
                    layout=widgets.Layout(height="32px", overflow="hidden"),
                ),
                self.question,
                *axes,
                self.note,
                widgets.HBox([self.previous_button, self.submit_button, self.next_button]),
                self.saved,
                self.keys,
                widgets.HTML(f"<div class='vg-help'>{KEY_HELP}</div>"),
            ],
            layout=widgets.Layout(
                width=f"{self.CONTROLS_WIDTH}px",
                min_width=f"{self.CONTROLS_WIDTH}px",
                padding="0 0 0 12px",
            ),
        )
        controls.add_class("vg-controls")
        self.widget = widgets.VBox(
            [
                widgets.HTML(WIDGET_CSS),
                widgets.HBox(
                    [self.image, controls], layout=widgets.Layout(align_items="flex-start")
                ),
                rubrics,
            ]
        )
        self.widget.add_class("vg-rating-app")
        self.show()

    @property
    def rated(self) -> set[str]:
        return set(self.given)

    def _has_rows(self) -> bool:
        return self.path.exists() and self.path.stat().st_size > 0

    def first_unrated(self) -> int:
        """Index of this rater's first unrated sample (``len(samples)`` when all done)."""
        for index, sample in enumerate(self.samples):
            if sample.id not in self.given:
                return index
        return len(self.samples)

    def go(self, index: int) -> None:
        self.index = min(max(index, 0), len(self.samples))
        self.saved.value = ""
        self.show()

    def show(self) -> None:
        """Display the current sample with this rater's earlier rating, if any (or the end
        message)."""
        self.progress.value = len(self.given)
        self.status.value = f"{len(self.given)} / {len(self.samples)} rated by {self.rater}"
        if self.index >= len(self.samples):
            for axis, choice in self.choices.items():
                choice.value = None
                self._show_selected(axis)
            self.note.value = ""
            self.question.value = "<b>All samples rated. Thank you.</b>"
            return
        sample = self.samples[self.index]
        earlier = self.given.get(sample.id, {})
        self.image.value = _boxed_png(sample, self.IMAGE_SIDE)
        again = " <i>(rated before: your earlier rating is shown)</i>" if earlier else ""
        self.question.value = (
            f"<b>{self.index + 1}. {sample.q_type.capitalize()} question</b> ({sample.id})"
            f"{again}:<br>{sample.question}"
        )
        for axis, choice in self.choices.items():
            choice.value = earlier.get(axis)
            self._show_selected(axis)
        self.note.value = earlier.get("note", "")

    def _on_keys(self, change) -> None:
        text = change["new"]
        if not text:
            return
        if text[-1] in "nNpP":
            self.keys.value = ""
            self.go(self.index + (1 if text[-1] in "nN" else -1))
            return
        digits = [int(c) for c in text if c in "12345"]
        for axis, digit in zip(AXES, digits, strict=False):
            self.choices[axis].value = digit

    def _submit_from_keys(self) -> None:
        if self.submit():
            self.keys.value = ""

    def submit(self) -> bool:
        """Append the current rating (all three axes chosen) and move on to the next
        unrated sample; False (and a message) if an axis is missing."""
        if self.index >= len(self.samples):
            return False
        missing = [AXIS_NAMES[a] for a, c in self.choices.items() if c.value is None]
        if missing:
            self.saved.value = (
                f"<span style='color:#D55E00'>not saved: choose {', '.join(missing)}</span>"
            )
            return False
        sample = self.samples[self.index]
        values = {axis: choice.value for axis, choice in self.choices.items()}
        append_rating(
            self.path,
            {
                "sample_id": sample.id,
                "q_type": sample.q_type,
                "rater": self.rater,
                **values,
                "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
                "note": self.note.value,
            },
        )
        self.given[sample.id] = values | {"note": self.note.value}
        self.go(self.first_unrated())
        shown = " / ".join(str(v) for v in values.values())
        self.saved.value = (
            f"<span style='color:#009E73'>&#10003; saved {sample.id}: {shown} "
            f"to {self.path.name}</span>"
        )
        return True

    def _show_selected(self, axis: str) -> None:
        """The line under an axis: the chosen rating in words, or that none is chosen."""
        value = self.choices[axis].value
        self.selected[axis].value = (
            "<span class='vg-unselected'>selected: none yet</span>"
            if value is None
            else f"<span class='vg-selected'>selected: {value} — "
            f"{RATING_LABELS[axis][value]}</span>"
        )


def _boxed_png(sample, side: int = 460) -> bytes:
    """The sample's image scaled to ``side`` px on its longer side (a smaller image
    upscaled with nearest neighbour, its pixels kept sharp; a larger one downscaled with
    Lanczos), its boxes drawn afterwards at the display scale, as PNG."""
    from PIL import Image, ImageDraw

    from vgutils.data.images import load_image
    from vgutils.data.overlay import BOX_COLOURS

    image = load_image(sample.image_path).convert("RGB")
    scale = side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    image = image.resize(size, Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.LANCZOS)
    draw = ImageDraw.Draw(image)
    for index, (x0, y0, x1, y1) in enumerate(np.asarray(sample.boxes, float) * scale):
        colour = BOX_COLOURS[index % len(BOX_COLOURS)]
        draw.rectangle([x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)], outline=colour, width=3)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()

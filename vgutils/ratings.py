"""Clinician ratings of VGMed questions (supplement section B): the ratings file, the
curation filter, Table 1's distribution, and a rating interface that never loses a
rating.

Ratings file (CSV), an append-only log of ratings: ``sample_id, q_type, rater,
clinical_relevance, visual_grounding, semantic_grounding, timestamp, note``; the three
axes are integers 1-5 (rubrics in :data:`RUBRICS`); ``q_type`` is ``attribute`` or
``localization``. A rater who rates a sample again appends a new row; the last row per
(sample, rater) is the rating (:func:`load_ratings`, :func:`curate`, :func:`distribution`
count each pair once).
"""

from __future__ import annotations

import csv
import fcntl
import io
import os
import warnings
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

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


def _records(path: Path) -> tuple[list[list[str]], list[int], list[str]]:
    """The file's data records with their line numbers, and the ignored lines. A record
    with the wrong number of fields, or a last line without its newline, is a line torn by
    a crash (the appender fences it with a newline): reported by line number, ignored."""
    text = path.read_text(encoding="utf-8")
    reader = csv.reader(io.StringIO(text))
    records, lines, ignored = [], [], []
    header = None
    previous_end = 0
    total_lines = text.count("\n") + (0 if text.endswith("\n") or not text else 1)
    for record in reader:
        line = previous_end + 1
        previous_end = reader.line_num
        if not record:
            continue
        if header is None:
            header = record
            continue
        last = previous_end == total_lines and not text.endswith("\n")
        if record == header:
            ignored.append(f"{path}:{line}: repeated header ignored")
        elif len(record) != len(header) or last:
            why = "no newline at the end of the file" if last else f"{len(record)} fields"
            ignored.append(f"{path}:{line}: torn line ignored ({why}): {','.join(record)[:60]!r}")
        else:
            records.append(record)
            lines.append(line)
    if header is None:
        header = []
    return [header, *records], lines, ignored


def _problems(frame: pd.DataFrame, lines: list[int], source: str) -> list[str]:
    problems = []
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        return [f"{source}: missing column(s) {missing}; expected {list(COLUMNS)}"]
    for line, row in zip(lines, frame.to_dict("records"), strict=True):
        where = f"{source}:{line}"
        if not str(row["sample_id"]).strip():
            problems.append(f"{where}: sample_id: empty")
        if row["q_type"] not in Q_TYPES:
            problems.append(f"{where}: q_type: {row['q_type']!r} is not one of {Q_TYPES}")
        if not str(row["rater"]).strip():
            problems.append(f"{where}: rater: empty")
        for axis in AXES:
            value = row[axis]
            try:
                number = float(value)
            except (TypeError, ValueError):
                number = np.nan
            if not (np.isfinite(number) and number == int(number) and 1 <= number <= 5):
                problems.append(f"{where}: {axis}: {value!r} is not an integer 1-5")
    return problems


def latest(ratings: pd.DataFrame) -> pd.DataFrame:
    """The last rating per (sample, rater): the file is an append-only log, and a rater who
    rates a sample again replaces the earlier rating."""
    return ratings.drop_duplicates(["sample_id", "rater"], keep="last").reset_index(drop=True)


def load_ratings(path: str | Path, history: bool = False) -> pd.DataFrame:
    """Read and validate a ratings CSV; ``ValueError`` listing every bad row. Lines torn by
    a crash (and repeated headers) are ignored with a :class:`RatingsWarning` naming their
    line. Returns the last rating per (sample, rater), or with ``history=True`` every row
    in file order (column ``line``: where it is in the file)."""
    path = Path(path)
    records, lines, ignored = _records(path)
    for message in ignored:
        warnings.warn(message, RatingsWarning, stacklevel=2)
    header, rows = records[0], records[1:]
    if len(set(header)) != len(header):
        raise ValueError(f"{path}:1: repeated column names in the header {header}")
    frame = pd.DataFrame(rows, columns=header, dtype=str)
    problems = _problems(frame, lines, str(path))
    if problems:
        raise ValueError(f"{len(problems)} problem(s) in {path}:\n" + "\n".join(problems))
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


def append_rating(path: Path, row: dict) -> None:
    """Append one rating as a single write of a complete line, then fsync, under an
    exclusive ``flock`` on the file: concurrent raters never write the header twice nor
    interleave. A last line left without its newline by a crash is fenced (a newline is
    written first), never glued onto; :func:`load_ratings` reports and ignores it."""
    path = Path(path)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(COLUMNS), lineterminator="\n")
    writer.writerow({k: row.get(k, "") for k in COLUMNS})
    line = buffer.getvalue().encode("utf-8")
    descriptor = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)  # released by close
        size = os.fstat(descriptor).st_size
        if size == 0:
            header = io.StringIO()
            csv.writer(header, lineterminator="\n").writerow(COLUMNS)
            line = header.getvalue().encode("utf-8") + line
        elif os.pread(descriptor, 1, size - 1) != b"\n":
            line = b"\n" + line  # fence a torn last line
        os.write(descriptor, line)
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


KEY_HELP = (
    "Keys (in the key box): three digits 1-5 = the three axes in order, Enter = submit, "
    "n = next, p = previous."
)


class RatingApp:
    """An ipywidgets rating card for a clinician: the image with its box on the left (at
    most 460 px, so that it sits beside the controls at 1366x768), on the right the
    question, the three axes with 1-5 choices, a note, previous / submit / next, a key box
    for the keyboard, the "saved" confirmation and progress; the rubrics below. Submitting
    appends the rating to ``ratings_csv`` at once (fsynced); going back shows the rater's
    earlier rating, and rating again appends the new one (the last one counts).
    Reopening resumes at this rater's first unrated sample. A malformed existing file is
    reported, never overwritten.

    ``samples``: :class:`vgutils.data.Sample` list (``q_type`` required)."""

    IMAGE_SIDE = 460

    def __init__(self, samples: list, ratings_csv: str | Path, rater: str):
        import ipywidgets as widgets

        if not rater or not rater.strip():
            raise ValueError("a rater name is required")
        self.samples = samples
        self.path = Path(ratings_csv)
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
        for axis, choice in self.choices.items():
            choice.add_class(f"vg-axis-{axis}")
        self.note = widgets.Text(description="note", placeholder="optional")
        self.image = widgets.Image(
            format="png",
            layout=widgets.Layout(
                max_width=f"{self.IMAGE_SIDE}px", max_height=f"{self.IMAGE_SIDE}px"
            ),
        )
        self.question = widgets.HTML(layout=widgets.Layout(max_width="560px"))
        self.progress = widgets.IntProgress(min=0, max=len(samples))
        self.status = widgets.HTML()
        self.saved = widgets.HTML()
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
        controls = widgets.VBox(
            [
                widgets.HBox([self.progress, self.status]),
                self.question,
                *self.choices.values(),
                self.note,
                widgets.HBox([self.previous_button, self.submit_button, self.next_button]),
                self.saved,
                self.keys,
                widgets.HTML(f"<small>{KEY_HELP}</small>"),
            ],
            layout=widgets.Layout(padding="0 0 0 12px"),
        )
        self.widget = widgets.VBox(
            [
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
            for choice in self.choices.values():
                choice.value = None
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


def _boxed_png(sample, side: int = 420) -> bytes:
    from vgutils.data.overlay import draw_boxes

    image = draw_boxes(sample)
    image.thumbnail((side, side))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()

"""Clinician ratings of VGMed questions (supplement section B): the ratings file, the
curation filter, Table 1's distribution, and a rating interface that never loses a
rating.

Ratings file (CSV), one row per (sample, rater): ``sample_id, q_type, rater,
clinical_relevance, visual_grounding, semantic_grounding, timestamp, note``; the three
axes are integers 1-5 (rubrics in :data:`RUBRICS`); ``q_type`` is ``attribute`` or
``localization``.
"""

from __future__ import annotations

import csv
import io
import os
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


def _problems(frame: pd.DataFrame, source: str, allow_duplicates: bool) -> list[str]:
    problems = []
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        return [f"{source}: missing column(s) {missing}; expected {list(COLUMNS)}"]
    seen: dict[tuple, int] = {}
    for index, row in frame.iterrows():
        line = index + 2  # header is line 1
        where = f"{source}:{line}"
        if not str(row["sample_id"]).strip() or pd.isna(row["sample_id"]):
            problems.append(f"{where}: sample_id: empty")
        if row["q_type"] not in Q_TYPES:
            problems.append(f"{where}: q_type: {row['q_type']!r} is not one of {Q_TYPES}")
        if pd.isna(row["rater"]) or not str(row["rater"]).strip():
            problems.append(f"{where}: rater: empty")
        for axis in AXES:
            value = row[axis]
            try:
                number = float(value)
            except (TypeError, ValueError):
                number = np.nan
            if not (np.isfinite(number) and number == int(number) and 1 <= number <= 5):
                problems.append(f"{where}: {axis}: {value!r} is not an integer 1-5")
        key = (row["sample_id"], row["rater"])
        if key in seen and not allow_duplicates:
            problems.append(f"{where}: sample_id/rater: duplicate of line {seen[key]} {key}")
        seen.setdefault(key, line)
    return problems


def load_ratings(path: str | Path, allow_duplicates: bool = False) -> pd.DataFrame:
    """Read and validate a ratings CSV; ``ValueError`` listing every bad row."""
    path = Path(path)
    frame = pd.read_csv(
        path,
        dtype={"sample_id": str, "rater": str, "note": str},
        keep_default_na=False,
        na_values={
            "clinical_relevance": [""],
            "visual_grounding": [""],
            "semantic_grounding": [""],
        },
    )
    problems = _problems(frame, str(path), allow_duplicates)
    if problems:
        raise ValueError(f"{len(problems)} problem(s) in {path}:\n" + "\n".join(problems))
    for axis in AXES:
        frame[axis] = frame[axis].astype(int)
    return frame


def curate(ratings: pd.DataFrame, rule: str = "all") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split the ratings into kept and discarded samples (all of a sample's rows go
    together). ``rule="all"`` (default): keep a sample only if every rater gave every axis
    >= 3 (the paper: any rating below 3 discards). ``rule="mean"``: keep if each axis's
    mean over raters is >= 3."""
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
    and 5 (every rater's rating counts; rows sum to 100). Columns: ``type, category,
    rating_3, rating_4, rating_5``."""
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
    """Append one rating as a single write of a complete line (O_APPEND), then fsync: a
    crash never leaves a half row and never loses a submitted one."""
    path = Path(path)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(COLUMNS), lineterminator="\n")
    new = not path.exists() or path.stat().st_size == 0
    if new:
        writer.writeheader()
    writer.writerow({k: row.get(k, "") for k in COLUMNS})
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, buffer.getvalue().encode("utf-8"))
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class RatingApp:
    """An ipywidgets rating card: the image with its box, the question, the three rubrics
    with their definitions, 1-5 choices, a note, previous / next, progress. Submitting
    appends the rating to ``ratings_csv`` at once; reopening resumes at this rater's first
    unrated sample. A malformed existing file is reported, never overwritten.

    ``samples``: :class:`vgutils.data.Sample` list (``q_type`` required)."""

    def __init__(self, samples: list, ratings_csv: str | Path, rater: str):
        import ipywidgets as widgets

        if not rater or not rater.strip():
            raise ValueError("a rater name is required")
        self.samples = samples
        self.path = Path(ratings_csv)
        self.rater = rater.strip()
        existing = load_ratings(self.path, allow_duplicates=True) if self._has_rows() else None
        self.rated = (
            set()
            if existing is None
            else set(existing.loc[existing["rater"] == self.rater, "sample_id"])
        )
        self.index = self.first_unrated()
        self.choices = {
            axis: widgets.ToggleButtons(
                options=[1, 2, 3, 4, 5],
                value=None,
                description=AXIS_NAMES[axis],
                style={"description_width": "190px"},
            )
            for axis in AXES
        }
        self.note = widgets.Text(description="note", placeholder="optional")
        self.image = widgets.Image(format="png")
        self.question = widgets.HTML()
        self.progress = widgets.IntProgress(min=0, max=len(samples))
        self.status = widgets.HTML()
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
        self.widget = widgets.VBox(
            [
                widgets.HBox([self.progress, self.status]),
                self.image,
                self.question,
                *self.choices.values(),
                self.note,
                widgets.HBox([self.previous_button, self.submit_button, self.next_button]),
                rubrics,
            ]
        )
        self.show()

    def _has_rows(self) -> bool:
        return self.path.exists() and self.path.stat().st_size > 0

    def first_unrated(self) -> int:
        """Index of this rater's first unrated sample (``len(samples)`` when all done)."""
        for index, sample in enumerate(self.samples):
            if sample.id not in self.rated:
                return index
        return len(self.samples)

    def go(self, index: int) -> None:
        self.index = min(max(index, 0), len(self.samples))
        self.show()

    def show(self) -> None:
        """Display the current sample (or the end message)."""
        self.progress.value = len(self.rated)
        self.status.value = f"{len(self.rated)} / {len(self.samples)} rated by {self.rater}"
        for choice in self.choices.values():
            choice.value = None
        self.note.value = ""
        if self.index >= len(self.samples):
            self.question.value = "<b>All samples rated. Thank you.</b>"
            return
        sample = self.samples[self.index]
        self.image.value = _boxed_png(sample)
        self.question.value = (
            f"<b>{sample.q_type.capitalize()} question</b> ({sample.id}): {sample.question}"
        )

    def submit(self) -> bool:
        """Append the current rating (all three axes chosen) and move on; False if not."""
        if self.index >= len(self.samples):
            return False
        missing = [AXIS_NAMES[a] for a, c in self.choices.items() if c.value is None]
        if missing:
            self.status.value = f"<span style='color:#D55E00'>choose {', '.join(missing)}</span>"
            return False
        sample = self.samples[self.index]
        append_rating(
            self.path,
            {
                "sample_id": sample.id,
                "q_type": sample.q_type,
                "rater": self.rater,
                **{axis: choice.value for axis, choice in self.choices.items()},
                "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
                "note": self.note.value,
            },
        )
        self.rated.add(sample.id)
        self.go(self.first_unrated())
        return True


def _boxed_png(sample, side: int = 420) -> bytes:
    from vgutils.data.overlay import draw_boxes

    image = draw_boxes(sample)
    image.thumbnail((side, side))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()

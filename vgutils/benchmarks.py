"""Medical VQA benchmarks under HuatuoGPT-Vision's multiple-choice protocol.

The benchmark file is HuatuoGPT-Vision's evaluation set
(``FreedomIntelligence/Medical_Multimodal_Evaluation_Data``):
``medical_multimodel_evaluation_data.json`` (sic), one JSON list, images under
``images/`` beside it. Records: ``question``, ``options`` (option texts: a list, or a
string holding a Python list literal), ``answer`` (the correct option's text, or ``"?"``),
``image`` (paths relative to the json's folder), ``dataset``, optional ``subset``,
``question_type`` and ``test_id``.

The protocol (``shared/paper/CHECKPOINTS-AND-BENCHMARKS.md`` section 2, HuatuoGPT-Vision's
``eval.py`` / ``scorer.py``):

- prompt: :func:`mc_prompt_text` inside the model's own chat template;
- dropped: ``question_type == "open"``, a repeated ``test_id``, empty options;
- gold: the letter of the option equal to ``answer``; ``"?"`` always scores wrong;
- prediction: :func:`extract_letter`, compared case-sensitively with the gold letter;
- accuracy per ``dataset`` (and ``dataset_subset``) = correct / kept; total = micro
  average (:func:`mc_accuracy`).

Where the package departs from the reference code, it does so instead of crashing: a
record the reference would stop on (an answer not among the options, more than eleven
options, a missing image, ...) is reported as ``file:index: field: problem`` and left
out. Several images per record: the record keeps them all in ``images``; the models here
take one image per prompt, so the runner (:mod:`vgutils.mc_eval`) answers with the first
and records how many it left out (``MCRecord.extra_images``). The reference passes every
image to the model; none of the four benchmarks of the VGRefine table has such records.
"""

from __future__ import annotations

import ast
import difflib
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

BENCHMARK_FILE = "medical_multimodel_evaluation_data.json"
LETTERS = "ABCDEFGHIJK"
"""Option letters of the prompt: at most 11 options (A to K)."""
MC_INSTRUCTION = "Answer with the option's letter from the given choices directly."
PUBLISHED_DATASETS = (
    "VQA-RAD_test",
    "SLAKE_test",
    "PathVQA_test",
    "PMC-VQA_test",
    "OmniMedVQA",
    "MMMU_Medical_Validation",
)
DROPPED_BY_PROTOCOL = ("open question", "duplicate test_id", "empty options")
"""Reasons the protocol itself drops a record (counted, not errors)."""

# The first standalone letter: preceded by the start of the text, a non-word character
# or "is " (the reference also lists 是 and 为, which \W does not cover), not a lone
# article "a"/"A" followed by a space, followed by a non-word character or the end.
# The reference matches A-N in both cases whatever the number of options.
_LETTER = re.compile(r"(?:is |是|为|\W|^)(?![aA] )([A-Na-n])(?:\W|$)", re.S)


def mc_prompt_text(question: str, options: list[str]) -> str:
    """The user text of a multiple-choice prompt (before the model's chat template):
    ``{question}\\n{A. opt1\\nB. opt2\\n...}\\nAnswer with the option's letter from the
    given choices directly.`` Options beyond the eleventh (K) are not shown."""
    lines = "\n".join(f"{letter}. {text}" for letter, text in zip(LETTERS, options, strict=False))
    return f"{question}\n{lines}\n{MC_INSTRUCTION}"


def _similarity(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, a, b).ratio()


def extract_letter(output: str, options: list[str], fallback: str = "intended") -> str | None:
    """The option letter a model's ``output`` chooses, by the protocol's rules.

    1. The first standalone letter A-N, either case (see ``_LETTER``): ``"B"``,
       ``"(C) effusion"``, ``"The answer is D."`` give B, C, D; ``"a mass"`` gives no
       letter (a lone article); ``"b"`` gives ``"b"``, which the case-sensitive
       comparison with the gold letter scores wrong.
    2. No letter, ``fallback="intended"``: the option whose (lower-cased) text occurs
       last in the lower-cased output (ties: the earlier option; empty option texts are
       skipped); then the option most similar to the output (difflib ratio of the
       lower-cased texts; ties: the later option, as the reference's ``>=``).
    3. No letter, ``fallback="reference"``: ``None`` (scored wrong). HuatuoGPT-Vision's
       scorer calls its fallback as ``match_choice3(output, da)`` with the whole record
       ``da`` where the ``{letter: text}`` options belong: it iterates over the record's
       keys and calls ``.lower()`` on their values. Real records hold lists (``options``,
       ``image``) and an integer ``test_id``, so that raises, and the scorer turns the
       exception into ``assert False``: the whole evaluation stops at the first output
       without a letter. Had every value been text, it would return a record key
       (``"question"``, ...), never equal to a gold letter. Either way no such output is
       ever scored right; this option scores it wrong and lets the run continue.

    Returns ``None`` when nothing can be chosen (reference fallback, or no options)."""
    if fallback not in ("intended", "reference"):
        raise ValueError(f"fallback must be 'intended' or 'reference', not {fallback!r}")
    found = _LETTER.search(output)
    if found:
        return found.group(1)
    if fallback == "reference" or not options:
        return None
    text = output.lower()
    labelled = list(zip(LETTERS, options, strict=False))
    positions = [
        (letter, text.rindex(option.lower()))
        for letter, option in labelled
        if option and option.lower() in text
    ]
    if positions:
        return max(positions, key=lambda item: item[1])[0]  # max keeps the first of ties
    best, best_score = labelled[0][0], -1.0
    for letter, option in labelled:
        score = _similarity(option.lower(), text)
        if score >= best_score:
            best, best_score = letter, score
    return best


@dataclass(frozen=True, eq=False)
class MCRecord:
    """One kept question. ``answer``: the gold letter, ``None`` for ``"?"`` (always
    wrong); ``images``: every image of the record (the runner uses the first);
    ``index``: position in the file."""

    id: str
    dataset: str
    subset: str | None
    question: str
    options: list[str]
    answer: str | None
    images: list[Path]
    index: int
    answer_text: str | None = None
    test_id: object = None
    question_type: str | None = None

    @property
    def extra_images(self) -> int:
        """Images of the record beyond the first (not shown to a one-image model)."""
        return max(len(self.images) - 1, 0)


@dataclass(frozen=True)
class MCProblem:
    """A record left out: ``dropped`` by the protocol (open, duplicate, empty options) or
    ``bad`` (anything else wrong with it)."""

    file: str
    index: int
    field: str
    problem: str
    kind: str = "bad"  # "dropped" | "bad"

    def __str__(self) -> str:
        return f"{self.file}:{self.index}: {self.field}: {self.problem}"


@dataclass
class _Checker:
    file: str
    problems: list[MCProblem] = field(default_factory=list)

    def add(self, index: int, field_name: str, problem: str, kind: str = "bad") -> None:
        self.problems.append(MCProblem(self.file, index, field_name, problem, kind))


def benchmark_file(path: str | Path) -> Path:
    """The json of a benchmark: ``path`` itself, or ``BENCHMARK_FILE`` in folder ``path``."""
    path = Path(path)
    return path / BENCHMARK_FILE if path.is_dir() else path


def _text(value) -> str | None:
    """Option / answer text: strings as they are, numbers as ``str``; else None."""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def _parse_options(raw) -> tuple[list[str] | None, str | None]:
    """``(options, problem)``: a list, or a string holding a list literal."""
    if isinstance(raw, str):
        try:
            raw = ast.literal_eval(raw)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return None, "not a list, nor a string holding a list literal"
    if not isinstance(raw, list | tuple):
        return None, f"expected a list of option texts, got {type(raw).__name__}"
    options = [_text(item) for item in raw]
    bad = [i for i, item in enumerate(options) if item is None]
    if bad:
        return None, f"option {bad[0]} is {type(raw[bad[0]]).__name__}, not text"
    return options, None


def load_mc(
    path: str | Path,
    datasets: list[str] | None = None,
    *,
    subsets: list[str] | None = None,
    check_images: bool = True,
) -> tuple[list[MCRecord], list[MCProblem]]:
    """Read a benchmark file (or its folder) into ``(records, problems)``.

    ``datasets`` / ``subsets``: keep only records of these ``dataset`` / ``subset`` values
    (``None``: all); records outside the selection are neither kept nor reported.
    ``problems``: every record left out, with its reason (``str(problem)`` is
    ``file:index: field: problem``); never raises for a bad record. A file that is not a
    JSON list raises ``ValueError``. ``check_images``: report records whose first image
    file is missing."""
    path = benchmark_file(path)
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not JSON ({err})") from err
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    root = Path(path).parent
    check = _Checker(str(path))
    wanted = set(datasets) if datasets else None
    wanted_subsets = set(subsets) if subsets else None
    seen_ids: set = set()
    records: list[MCRecord] = []
    for index, raw in enumerate(data):
        if not isinstance(raw, dict):
            check.add(index, "record", f"expected an object, got {type(raw).__name__}")
            continue
        dataset = raw.get("dataset")
        if not isinstance(dataset, str) or not dataset:
            check.add(index, "dataset", "missing or not text")
            continue
        subset = raw.get("subset")
        subset = subset if isinstance(subset, str) and subset else None
        if wanted is not None and dataset not in wanted:
            continue
        if wanted_subsets is not None and subset not in wanted_subsets:
            continue
        # the protocol's own filters, in the reference's order
        if raw.get("question_type") == "open":
            check.add(index, "question_type", "open question", "dropped")
            continue
        test_id = raw.get("test_id")
        if test_id is not None:
            key = json.dumps(test_id, sort_keys=True)
            if key in seen_ids:
                check.add(index, "test_id", "duplicate test_id", "dropped")
                continue
        options, problem = _parse_options(raw.get("options"))
        if problem:
            check.add(index, "options", problem)
            continue
        if not options:
            check.add(index, "options", "empty options", "dropped")
            continue
        if test_id is not None:
            seen_ids.add(key)
        # everything else the reference would crash on, or could not score
        if len(options) > len(LETTERS):
            check.add(index, "options", f"{len(options)} options; the protocol letters A-K")
            continue
        question = raw.get("question")
        if not isinstance(question, str) or not question.strip():
            check.add(index, "question", "missing or empty")
            continue
        answer_text = _text(raw.get("answer"))
        if answer_text is None:
            check.add(index, "answer", "missing or not text")
            continue
        if answer_text == "?":
            gold = None
        elif answer_text in options:
            gold = LETTERS[options.index(answer_text)]
        else:
            check.add(index, "answer", f"{answer_text!r} is not among the options")
            continue
        images = raw.get("image")
        images = [images] if isinstance(images, str) else images
        if (
            not isinstance(images, list)
            or not images
            or not all(isinstance(i, str) and i for i in images)
        ):
            check.add(index, "image", "expected a non-empty list of image paths")
            continue
        image_paths = [root / i for i in images]
        if check_images and not image_paths[0].is_file():
            check.add(index, "image", f"{images[0]} not found under {root}")
            continue
        records.append(
            MCRecord(
                id=f"{dataset}-{index:05d}",
                dataset=dataset,
                subset=subset,
                question=question,
                options=options,
                answer=gold,
                images=image_paths,
                index=index,
                answer_text=answer_text,
                test_id=test_id,
                question_type=raw.get("question_type"),
            )
        )
    return records, check.problems


def problem_counts(problems: list[MCProblem]) -> dict[str, int]:
    """How many records were left out, per reason (protocol drops by name, every other
    problem as ``bad <field>``)."""
    return dict(Counter(p.problem if p.kind == "dropped" else f"bad {p.field}" for p in problems))


def is_correct(predicted: str | None, gold: str | None) -> bool:
    """The protocol's comparison: case-sensitive; a ``"?"`` answer (gold ``None``) never
    scores."""
    return gold is not None and predicted == gold


def _count(total: float) -> int | float:
    """A sum of correctness: a count, or (answers averaged over random draws) a float."""
    return int(total) if float(total).is_integer() else round(float(total), 3)


def mc_accuracy(
    frame: pd.DataFrame,
    column: str = "correct",
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Accuracy per ``dataset``, per ``dataset`` x ``subset`` (when a ``subset`` column has
    values) and the micro-averaged total, from a frame with ``dataset`` and ``column``
    (0/1 or bool per question; or a mean over random draws). Columns: ``level``
    (``dataset`` | ``subset`` | ``total``), ``dataset``, ``subset``, ``n``, ``correct``
    (count; not whole for means over draws), ``accuracy``
    (fraction) and its percentile bootstrap interval ``ci_low``, ``ci_high`` (over
    questions, ``level``)."""
    from vgutils.stats import bootstrap_ci

    def row(kind, dataset, subset, values):
        values = np.asarray(values, dtype=np.float64)
        mean, low, high = bootstrap_ci(values, n_boot=n_boot, level=level, seed=seed)
        return {
            "level": kind,
            "dataset": dataset,
            "subset": subset,
            "n": len(values),
            "correct": _count(values.sum()),
            "accuracy": mean,
            "ci_low": low,
            "ci_high": high,
        }

    rows = [
        row("dataset", name, None, group[column])
        for name, group in frame.groupby("dataset", sort=True)
    ]
    if "subset" in frame.columns and frame["subset"].notna().any():
        with_subset = frame[frame["subset"].notna() & (frame["subset"] != "")]
        rows += [
            row("subset", name, subset, group[column])
            for (name, subset), group in with_subset.groupby(["dataset", "subset"], sort=True)
        ]
    rows.append(row("total", "total", None, frame[column]))
    columns = ["level", "dataset", "subset", "n", "correct", "accuracy", "ci_low", "ci_high"]
    return pd.DataFrame(rows, columns=columns)

"""Projected wall time of a profile on 1, 8, 32 GPUs (``python -m vgutils jobs PROFILE
--project``), computed from the profile's run list and a speed record: measured
questions per second per model on one GPU, and where they come from.

The work of a run, in *passes* (one question's forward, timed as an extraction question):

- an extraction job: one pass per question of its dataset (the generic prompt and the
  image prefix shared per image are inside the measured q/s);
- a benchmark run: one pass per question without VGRefine, three with it (triage, the
  answer without and with the knockout; README "Rehearse", projected cost).

Question counts come from the data when it is under the data root (rows of each jsonl,
records the benchmark loader keeps); otherwise the multiple-choice counts are the ones a
third-party run reported (``REPORTED_MC``) and the extraction part is given per 1,000
questions in each dataset. Runs of ``tiny:`` models run on the CPU in seconds and are not
counted. With ``G`` GPUs (one process each) every run's images are split ``G`` ways, so a
run takes ``passes / (G * q/s)``, plus one model load per run and process when the
record has load times. Not modelled: a run with fewer images than GPUs, and the wait of
a benchmark run for its calibration job.

A speed record is a json file: ``{"source": ..., "hardware": ..., "measured": ...,
"qps": {model id or "*": q/s}, "load_s": {model id or "*": seconds}}``;
``benchmarks/speed/`` holds the ones measured so far, ``make gpu-check`` writes a fresh
one to ``build/gpu-check/speed.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from vgutils.context import REPO_ROOT
from vgutils.errors import DataError

SPEED_DIR = REPO_ROOT / "benchmarks" / "speed"
REPORTED_MC = {"VQA-RAD_test": 251, "SLAKE_test": 416, "PathVQA_test": 3362, "PMC-VQA_test": 2000}
"""Kept multiple-choice questions per dataset as a third-party run of HuatuoGPT-Vision's
evaluation reported them (shared/paper/CHECKPOINTS-AND-BENCHMARKS.md): used when the
benchmark file is not under the data root."""
PER = 1000
"""Questions per dataset assumed, and said, when a dataset is not under the data root."""


@dataclass(frozen=True)
class Speed:
    """A speed record (see the module docstring)."""

    source: str
    hardware: str
    measured: str
    qps: dict
    load_s: dict
    path: Path | None = None

    def rate(self, model: str) -> tuple[float, bool]:
        """``(q/s, measured for this model)``: the model's own, else ``*``, else the
        slowest measured (an estimate, said in the table)."""
        if model in self.qps:
            return float(self.qps[model]), True
        if "*" in self.qps:
            return float(self.qps["*"]), False
        return min(float(v) for v in self.qps.values()), False

    def load(self, model: str) -> float | None:
        """Seconds to load ``model``: its own, else ``*``, else the slowest measured;
        None when the record has none."""
        if model in self.load_s:
            return float(self.load_s[model])
        if "*" in self.load_s:
            return float(self.load_s["*"])
        return max((float(v) for v in self.load_s.values()), default=None)


def load_speed(path: str | Path | None = None) -> Speed:
    """The speed record at ``path`` (default: the latest in ``benchmarks/speed/``, by the
    ``measured`` date it holds)."""
    if path is None:
        records = sorted(SPEED_DIR.glob("*.json"))
        if not records:
            raise DataError(f"no speed record in {SPEED_DIR}; give --speed FILE")
        speeds = [load_speed(p) for p in records]
        return max(speeds, key=lambda s: s.measured)
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return Speed(
            str(raw["source"]),
            str(raw["hardware"]),
            str(raw["measured"]),
            {str(k): float(v) for k, v in raw["qps"].items()},
            {str(k): float(v) for k, v in (raw.get("load_s") or {}).items()},
            path,
        )
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(
            f"{path}: not a speed record ({type(err).__name__}: {err}); expected "
            'source, hardware, measured, qps {"model": q/s}'
        ) from err


@dataclass(frozen=True)
class Work:
    """One run's work: ``passes`` (None: the dataset is not here; ``per_dataset`` passes
    per 1,000 questions then), the ``model`` and what it is."""

    label: str
    model: str
    kind: str  # "extraction" | "multiple choice"
    passes: int | None
    per_unknown: int = 0  # passes per PER questions of a dataset that is not here
    dataset: str = ""


def _jsonl_rows(dataset: str) -> int | None:
    from vgutils.data.manifest import data_root, load_manifest

    entry = load_manifest().get(dataset)
    path = data_root() / entry.file if entry is not None else Path(dataset)
    if not path.is_file():
        return None
    with open(path, "rb") as handle:
        return sum(1 for line in handle if line.strip())


def _mc_questions(spec: dict) -> tuple[int, str]:
    """Kept questions of the profile's benchmark selection, and where the count is from."""
    from vgutils.benchmarks import load_mc
    from vgutils.data.manifest import data_root, load_benchmarks

    entry = load_benchmarks().get(spec["benchmark"])
    datasets = spec.get("datasets") or []
    path = data_root() / entry.file if entry is not None else Path(spec["benchmark"])
    if path.is_file():
        records, _ = load_mc(path, list(datasets) or None, check_images=False)
        n = len(records[: spec.get("limit")] if spec.get("limit") else records)
        return n, f"{path}"
    unknown = [d for d in datasets if d not in REPORTED_MC]
    if unknown or not datasets:
        raise DataError(
            f"{path} is not here and no reported count is known for {unknown or 'all'}; "
            "put the benchmark under the data root"
        )
    total = sum(REPORTED_MC[d] for d in datasets)
    return min(total, spec.get("limit") or total), "reported by a third-party run"


def profile_work(profile: str) -> tuple[list[Work], list[str]]:
    """Every GPU run of ``profile`` as :class:`Work`, and notes on where the counts come
    from."""
    from vgutils.jobs import load_profile, profile_jobs

    settings = load_profile(profile)
    work, notes, missing, cpu = [], [], [], 0
    for job in profile_jobs(settings):
        if job.model.startswith("tiny:"):
            cpu += 1
            continue
        rows = _jsonl_rows(job.dataset)
        if rows is None:
            missing.append(job.dataset)
            work.append(Work(job.name, job.model, "extraction", None, PER, job.dataset))
        else:
            rows = min(rows, job.limit) if job.limit else rows
            work.append(Work(job.name, job.model, "extraction", rows, 0, job.dataset))
    spec = settings.get("benchmarks")
    if spec:
        questions, where = _mc_questions(spec)
        for run in spec["runs"]:
            passes = questions * (3 if run.get("refine") else 1)
            label = f"{run['model']} on {spec['benchmark']}"
            label += " + VGRefine" if run.get("refine") else ""
            if not run["model"].startswith("tiny:"):
                work.append(Work(label, run["model"], "multiple choice", passes))
            else:
                cpu += 1
        notes.append(f"multiple choice: {questions:,} questions a run ({where})")
    if missing:
        names = ", ".join(sorted(set(missing)))
        notes.append(
            f"{names}: not under the data root, so the extraction part is per {PER:,} "
            "questions in each of these datasets"
        )
    if cpu:
        notes.append(f"{cpu} runs of `tiny:` models run on the CPU in seconds: not counted")
    return work, notes


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{seconds / 60:.0f} min"


def projection_rows(work: list[Work], speed: Speed, gpus: list[int]) -> list[dict]:
    """Per GPU count: seconds of extraction (known datasets), extraction per 1,000
    questions of each unknown dataset, multiple choice, model loads, total."""
    rows = []
    for count in gpus:
        row = {"gpus": count, "extraction": 0.0, "per_unknown": 0.0, "mc": 0.0, "loads": 0.0}
        loads_known = True
        for item in work:
            qps = speed.rate(item.model)[0]
            if item.kind == "extraction":
                if item.passes is None:
                    row["per_unknown"] += item.per_unknown / (count * qps)
                else:
                    row["extraction"] += item.passes / (count * qps)
            else:
                row["mc"] += item.passes / (count * qps)
            load = speed.load(item.model)
            if load is None:
                loads_known = False
            else:
                row["loads"] += load  # each process loads each run's model once
        row["loads"] = row["loads"] if loads_known else None
        row["total"] = row["extraction"] + row["mc"] + (row["loads"] or 0.0)
        rows.append(row)
    return rows


def format_projection(profile: str, speed: Speed, gpus: list[int]) -> str:
    """The projection as markdown: what it assumes, then the table."""
    work, notes = profile_work(profile)
    extraction = [w for w in work if w.kind == "extraction"]
    mc = [w for w in work if w.kind != "extraction"]
    estimated = sorted({w.model for w in work if not speed.rate(w.model)[1]})
    shown = speed.path
    if shown is not None and shown.resolve().is_relative_to(REPO_ROOT):
        shown = shown.resolve().relative_to(REPO_ROOT)
    lines = [
        f"Projected wall time of profile `{profile}` (`python -m vgutils jobs {profile} "
        f"--project{' --speed ' + str(shown) if shown else ''}`): "
        f"{len(extraction)} extraction jobs and {len(mc)} multiple-choice runs on GPUs.",
        "",
        f"- q/s: {speed.source} ({speed.hardware}; measured {speed.measured}).",
    ]
    if estimated:
        lines.append(
            f"- {len(estimated)} of {len({w.model for w in work})} models have no q/s of "
            f"their own and take {'the default' if '*' in speed.qps else 'the slowest measured'}"
            f" one: {', '.join(estimated)}."
        )
    lines += [f"- {note}." for note in notes]
    if any(speed.load(w.model) is None for w in work):
        lines.append(
            f"- Model loads not measured: add one load per run and process ({len(work)} runs)."
        )
    unknown = [w for w in extraction if w.passes is None]
    known = len(extraction) - len(unknown)
    header = ["GPUs"]
    if known:
        header.append(f"extraction ({known} jobs)")
    if unknown:
        header.append(f"extraction ({len(unknown)} jobs), per {PER:,} questions a dataset")
    header += [f"multiple choice ({len(mc)} runs)", "model loads", "total"]
    lines += ["", "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in projection_rows(work, speed, gpus):
        cells = [str(row["gpus"])]
        cells += [_hours(row["extraction"])] if known else []
        cells += [_hours(row["per_unknown"])] if unknown else []
        loads = "not measured" if row["loads"] is None else _hours(row["loads"])
        total = _hours(row["total"])
        if unknown:
            total += f" + {_hours(row['per_unknown'])} per {PER:,} questions a dataset"
        cells += [_hours(row["mc"]), loads, total]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def print_projection(profile: str, speed_path: str | Path | None, gpus: list[int]) -> None:
    """Print :func:`format_projection` for ``profile`` with the speed record at
    ``speed_path`` (default: the latest in ``benchmarks/speed/``)."""
    if not gpus or any(g < 1 for g in gpus):
        raise DataError(f"--gpus {gpus}: expected GPU counts of at least 1")
    print(format_projection(profile, load_speed(speed_path), gpus))

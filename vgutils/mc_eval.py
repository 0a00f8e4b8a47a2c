"""Medical VQA benchmarks under the multiple-choice protocol, with and without VGRefine:
``python -m vgutils vqa --benchmark medical-mc``. Resumable like the extraction runner.

Per question: the prompt is :func:`vgutils.benchmarks.mc_prompt_text` inside the model's
own chat template (no "Answer the question using a single word or phrase."); the answer
is decoded with one of :data:`DECODINGS` and read by :func:`vgutils.benchmarks.
extract_letter` with both fallbacks. With ``refine``, the same prompt is answered again
under VGRefine: triage with the visually sensitive heads of a calibration extraction
(``heads_from``: the benchmarks have no boxes) and the knockout of the low-relevance
patches (:mod:`vgutils.refine`). With ``greedy-1`` only the last prompt row decides the
answer, as in the authors' runs; with ``huatuo-sample`` the knockout of
:func:`vgutils.refine.knockout` also covers the rows of the generated tokens (the authors
block the prompt rows only). A record with several images is answered with its first
(``extra_images`` in the answers says how many were left out).

Output folder: ``answers.parquet`` (one row per question), ``accuracy.json`` (the table
and what was left out), ``problems.txt`` (the records the loader left out), ``run.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from vgutils.benchmarks import (
    MCRecord,
    benchmark_file,
    extract_letter,
    is_correct,
    load_mc,
    mc_accuracy,
    mc_prompt_text,
    problem_counts,
)
from vgutils.data.manifest import sha256
from vgutils.models.vlm import too_long
from vgutils.results import (
    RunStore,
    atomic_write_bytes,
    load_metrics,
    partial_answers,
    split_work,
)
from vgutils.runner import code_fingerprint, package_versions

DECODINGS: dict[str, dict] = {
    "greedy-1": {"do_sample": False, "min_new_tokens": 1, "max_new_tokens": 1},
    "huatuo-sample": {
        "do_sample": True,
        "temperature": 0.2,
        "repetition_penalty": 1.2,
        "min_new_tokens": 1,
        "max_new_tokens": 256,
    },
}
"""``greedy-1``: the authors' VGRefine runs (greedy, exactly one new token: the letter).
``huatuo-sample``: HuatuoGPT-Vision's own evaluation (``cli.py`` ``gen_kwargs`` with
``eval.py``'s ``--max_new_tokens 256``, seed 42). The reference seeds once for the whole
run, so its samples depend on the order and the number of processes; here the generator
is seeded with ``seed + record index`` before each answer, so a resumed or sharded run
samples the same."""
ANSWERS = ("baseline", "refined")

log = logging.getLogger("vgutils.mc_eval")


@dataclass(frozen=True)
class MCOptions:
    """What one benchmark run computes (everything that changes its results)."""

    model: str
    benchmark: str  # manifest name (medical-mc, teach-mc) or the json / its folder
    datasets: tuple[str, ...] | None = None
    subsets: tuple[str, ...] | None = None
    decoding: str = "greedy-1"
    seed: int = 42
    refine: bool = False
    heads_from: str | None = None
    protocol: str = "corrected"
    top_k: int | None = None  # None: the protocol's (20)
    layers: tuple[int, ...] | str | None = None  # numbers, "best", "heads"; None: protocol's
    denominator: str | None = None  # triage denominator; None: the protocol's
    include_generated: bool | None = None  # knockout of generated rows; None: protocol's
    percentile: float = 80.0
    limit: int | None = None
    dtype: str = "auto"


def resolve_mc_options(options: MCOptions) -> MCOptions:
    """``options`` with the VGRefine protocol's value (:mod:`vgutils.protocols`) for every
    setting left ``None`` (recorded in run.json; a resume with another value refuses)."""
    from dataclasses import replace

    from vgutils.protocols import get_protocol

    protocol = get_protocol(options.protocol)
    layers = options.layers if options.layers is not None else protocol.knockout_layers
    if isinstance(layers, list):
        layers = tuple(int(x) for x in layers)
    return replace(
        options,
        protocol=protocol.name,
        top_k=options.top_k if options.top_k is not None else protocol.top_k,
        layers=layers,
        denominator=options.denominator or protocol.denominator,
        include_generated=(
            options.include_generated
            if options.include_generated is not None
            else protocol.include_generated
        ),
    )


def resolve_benchmark(name_or_path: str, root: str | Path | None = None) -> Path:
    """The json of a manifest benchmark (checked against its pinned hash; ``teach-mc``
    built when absent) or of a path (the json, or the folder holding it)."""
    from vgutils.data.manifest import DataError, data_root, load_benchmarks, verify_file

    benchmarks = load_benchmarks()
    if name_or_path in benchmarks:
        entry = benchmarks[name_or_path]
        base = data_root(root)
        if not (base / entry.file).exists() and name_or_path == "teach-mc":
            from vgutils.locks import build_lock
            from vgutils.teach.datasets import build_teach_mc

            with build_lock():  # one process builds it; the others wait, then find it
                if not (base / entry.file).exists():
                    build_teach_mc(base)
        return verify_file(entry.file, base)
    path = benchmark_file(name_or_path)
    if not path.exists():
        raise DataError(
            f"{name_or_path!r} is neither a manifest benchmark ({', '.join(sorted(benchmarks))}) "
            "nor a benchmark json (or its folder)"
        )
    return path


def _mc_code_fingerprint() -> str:
    root = Path(__file__).parent
    digest = hashlib.sha256(code_fingerprint().encode())
    for name in ("benchmarks.py", "mc_eval.py", "refine.py"):
        digest.update((root / name).read_bytes())
    return digest.hexdigest()


def _model_identity(model: str) -> dict:
    """The model folder's hash when the model is local (a retrained teaching model
    recomputes), else its name."""
    from vgutils.models.sources import resolve
    from vgutils.runner import folder_hash

    folder = Path(resolve(model))
    return {"model_folder_sha256": folder_hash(folder)} if folder.is_dir() else {}


def generate(vlm, prepared, decoding: str, seed: int) -> str:
    """The model's answer to ``prepared`` with one of :data:`DECODINGS`."""
    settings = DECODINGS[decoding]
    if settings["do_sample"]:
        torch.manual_seed(seed)
    with torch.no_grad():
        output = vlm.model.generate(**prepared.inputs, **settings)
    new_tokens = output[0, prepared.inputs["input_ids"].shape[1] :]
    return vlm.processor.decode(new_tokens, skip_special_tokens=True).strip()


def _scored(row: dict, which: str, output: str, record: MCRecord) -> None:
    for suffix, fallback in (("", "intended"), ("_reference", "reference")):
        letter = extract_letter(output, record.options, fallback=fallback)
        row[f"{which}_letter{suffix}"] = letter
        row[f"{which}_correct{suffix}"] = float(is_correct(letter, record.answer))
    row[f"{which}_output"] = output
    row[f"{which}_no_letter"] = extract_letter(output, record.options, "reference") is None


def _plain(value):
    """numpy scalars as Python numbers for json."""
    return value.item() if hasattr(value, "item") else str(value)


def mc_table(answers: pd.DataFrame, n_boot: int = 2000) -> pd.DataFrame:
    """Accuracy per dataset / subset / total for every answer column present
    (``baseline``, ``refined``; intended fallback, and ``*_reference`` with the
    reference's), each with its 95% bootstrap interval. A column with no answer at all
    counts as absent (a run without VGRefine concatenated with runs with it)."""
    table = None
    for which in ANSWERS:
        for suffix in ("", "_reference"):
            column = f"{which}_correct{suffix}"
            if column not in answers or answers[column].isna().all():
                continue
            part = mc_accuracy(answers, column, n_boot=n_boot).rename(
                columns={
                    "accuracy": f"{which}{suffix}",
                    "ci_low": f"{which}{suffix}_low",
                    "ci_high": f"{which}{suffix}_high",
                    "correct": f"{which}{suffix}_correct",
                }
            )
            table = (
                part if table is None else table.merge(part, on=["level", "dataset", "subset", "n"])
            )
    return table


def run_mc(
    options: MCOptions,
    out: str | Path,
    *,
    device: str = "auto",
    data_root: str | Path | None = None,
    n_boot: int = 2000,
    progress: bool = True,
    shard: tuple[int, int] | None = None,
    replace_stale: bool = False,
):
    """Answer every kept question of the benchmark into ``out`` (resumable); returns
    ``(answers, table, seconds)``. ``shard``: ``(rank, world)``: answer only rank
    ``rank``'s images (:func:`vgutils.results.split_work`, keyed by the image's path in
    the benchmark folder); whichever rank finds every question answered merges the run,
    and ``table`` is None (the answers partial) while others' questions are missing.
    ``replace_stale``: a folder holding a run of other options, data or code that nobody
    writes is started afresh."""
    from vgutils.data import load_image
    from vgutils.models.loading import load_model
    from vgutils.vqa import heads_and_layers

    options = resolve_mc_options(options)
    from vgutils.refine import knockout, text_rows_after_image, triage

    if options.decoding not in DECODINGS:
        raise ValueError(f"unknown decoding {options.decoding!r}; expected {sorted(DECODINGS)}")
    started = time.perf_counter()
    path = resolve_benchmark(options.benchmark, data_root)
    records, problems = load_mc(
        path,
        list(options.datasets) if options.datasets else None,
        subsets=list(options.subsets) if options.subsets else None,
    )
    records = records[: options.limit]
    store = RunStore(Path(out), main_kind="answers", shard=shard)
    record = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(options).items()}
    identity = {
        "benchmark_sha256": sha256(path),
        "code_sha256": _mc_code_fingerprint(),
        **_model_identity(options.model),
    }
    run = store.open(
        record,
        identity,
        package_versions(),
        keys=[item.id for item in records],
        plan={"questions": len(records)},
        replace_stale=replace_stale,
    )
    text = "".join(f"{p}\n" for p in problems)
    atomic_write_bytes(store.folder / "problems.txt", text.encode())  # every rank: the same
    done = store.done_ids()
    by_image: OrderedDict[Path, list[MCRecord]] = OrderedDict()
    for item in records:
        by_image.setdefault(item.images[0], []).append(item)
    images = list(by_image)
    keys = [os.path.relpath(image, path.parent) for image in images]
    groups: OrderedDict[Path, list[MCRecord]] = OrderedDict()
    for index in split_work(keys, shard):
        todo = [item for item in by_image[images[index]] if item.id not in done]
        if todo:
            groups[images[index]] = todo
    if groups:
        vlm = load_model(options.model, device=device, dtype=options.dtype)
        heads, layers = heads_and_layers(options, vlm.num_layers) if options.refine else ([], [])
    bar = tqdm(
        total=sum(map(len, groups.values())),
        unit="q",
        desc=f"{options.benchmark} {options.model}",
        disable=not progress,
    )
    for image_path, group in groups.items():
        try:
            image = load_image(image_path)
        except Exception as err:  # an unreadable image skips its questions, never the run
            for item in group:
                store.add_error(item.id, str(image_path), f"image unreadable: {err}")
            bar.update(len(group))
            continue
        generic = (  # once per image, shared by all of its questions
            vlm.attention(vlm.prepare_generic(image), "last") if options.refine else None
        )
        rows = []
        for item in group:
            text = mc_prompt_text(item.question, item.options)
            reason = too_long(vlm.prepare_text, image, text)
            if reason:  # never run past the model's context: skipped, said
                log.warning("%s: skipped (%s): %s", item.id, image_path, reason)
                store.add_error(item.id, str(image_path), reason)
                bar.update(1)
                continue
            row = {
                "sample_id": item.id,
                "order": item.index,
                "dataset": item.dataset,
                "subset": item.subset,
                "question": item.question,
                "options": json.dumps(item.options),
                "gold": item.answer,
                "answer_text": item.answer_text,
                "n_images": len(item.images),
                "extra_images": item.extra_images,
                "model": options.model,
                "decoding": options.decoding,
            }
            seed = options.seed + item.index
            if options.refine:
                found = triage(
                    vlm,
                    image,
                    item.question,
                    heads,
                    options.percentile,
                    generic_heads=generic,
                    denominator=options.denominator,
                    user_text=text,
                )
                prepared = found.prepared
                baseline = generate(vlm, prepared, options.decoding, seed)
                keys = prepared.image_positions[found.low]
                rows_after_image = text_rows_after_image(prepared)
                with knockout(vlm, layers, rows_after_image, keys, options.include_generated):
                    refined = generate(vlm, prepared, options.decoding, seed)
                _scored(row, "refined", refined, item)
                row["masked_tokens"] = int(found.low.sum())
            else:
                prepared = vlm.prepare_text(image, text)
                baseline = generate(vlm, prepared, options.decoding, seed)
            _scored(row, "baseline", baseline, item)
            rows.append(row)
            bar.update(1)
        if rows:
            store.add_part({"answers": pd.DataFrame(rows)})
    bar.close()
    complete = run["status"] == "complete" or store.complete(run)
    store.close()  # the run folder's lock is released here
    if not complete:  # other ranks' questions are missing: the merging rank writes the table
        return partial_answers(store.folder), None, time.perf_counter() - started
    answers = load_metrics(store.folder, "answers")
    table = mc_table(answers, n_boot=n_boot)
    summary = {
        "model": options.model,
        "benchmark": options.benchmark,
        "file": str(path),
        "decoding": options.decoding,
        "refine": options.refine,
        "questions": len(answers),
        "left_out": problem_counts(problems),
        "multi_image_first_only": int((answers["extra_images"] > 0).sum()),
        "no_letter": {
            w: int(answers[f"{w}_no_letter"].sum()) for w in ANSWERS if f"{w}_no_letter" in answers
        },
        "table": [
            {
                k: v
                for k, v in row.items()
                if not (isinstance(v, float) and pd.isna(v)) and v is not None
            }
            for row in table.to_dict("records")
        ],
    }
    (store.folder / "accuracy.json").write_text(json.dumps(summary, indent=2, default=_plain))
    return answers, table, time.perf_counter() - started

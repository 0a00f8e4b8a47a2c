"""Medical VQA benchmarks under the multiple-choice protocol, with and without VGRefine:
``python -m vgutils vqa --benchmark medical-mc``. Resumable like the extraction runner.

Per question: the prompt is :func:`vgutils.benchmarks.mc_prompt_text` inside the model's
own chat template (no "Answer the question using a single word or phrase."); the answer
is decoded with one of :data:`DECODINGS` (default: the protocol's for the model's family,
else ``greedy-1``) and read by :func:`vgutils.benchmarks.extract_letter` with both
fallbacks. With ``refine`` (:class:`vgutils.refine.RefineSettings`), the question is
answered again under VGRefine: triage with the given heads or the visually sensitive
heads of a calibration extraction (``heads_from``: the benchmarks have no boxes) and the
knockout of the low-relevance patches (:mod:`vgutils.refine`), on the prompt text plus
the protocol's ``refine_prompt_suffix`` (the authors' ``VGRefine()`` appends " Answer the
question using a single word or phrase."; the baseline keeps the benchmark's prompt).
The run takes the protocol's settings like every other runner (processor kwargs, Qwen
pre-resize, image mode, attention precision, decoding per family). With ``greedy-1`` only
the last prompt row decides the answer, as in the authors' runs; with longer decodings
the knockout covers the generated rows when ``include_generated`` (the authors block the
prompt rows only). A record with several images is answered with its first
(``extra_images`` in the answers says how many were left out).

Output folder: ``answers.parquet`` (one row per question), ``accuracy.json`` (the table
and what was left out), ``problems.txt`` (the records the loader left out), ``run.json``
(the options with the protocol, the heads used and where they came from).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from vgutils import checks
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
from vgutils.protocols import DECODINGS as _DECODINGS
from vgutils.refine import RefineSettings
from vgutils.results import (
    RunStore,
    atomic_write_bytes,
    load_metrics,
    partial_answers,
    split_work,
)
from vgutils.runner import code_fingerprint, model_identity, package_versions

DECODINGS = _DECODINGS
"""The decodings by name (:data:`vgutils.protocols.DECODINGS`). ``greedy-1``: the
authors' VGRefine runs of HuatuoGPT-Vision (greedy, exactly one new token: the letter).
``checkpoint-64``: the authors' Qwen path. ``huatuo-sample``: HuatuoGPT-Vision's own
evaluation; the reference seeds once for the whole run, so its samples depend on the
order and the number of processes; here the generator is seeded with ``seed + record
index`` before each answer, so a resumed or sharded run samples the same."""
ANSWERS = ("baseline", "refined")

log = logging.getLogger("vgutils.mc_eval")


@dataclass(frozen=True)
class MCOptions:
    """What one benchmark run computes (everything that changes its results). Settings
    left ``None`` take the ``protocol``'s value (per family where it says): ``decoding``
    (else ``greedy-1``), the processor kwargs (explicit keys win), ``image_resize``,
    ``image_mode``, ``attention_precision``, and in ``refine`` (:class:`vgutils.refine.
    RefineSettings`) every VGRefine setting. ``revision``: the model's Hub revision
    (``trust_remote_code`` needs a commit hash)."""

    model: str
    benchmark: str  # manifest name (medical-mc, teach-mc) or the json / its folder
    datasets: tuple[str, ...] | None = None
    subsets: tuple[str, ...] | None = None
    decoding: str | None = None
    seed: int = 42
    refine: RefineSettings | None = None
    protocol: str = "corrected"
    limit: int | None = None
    dtype: str = "auto"
    processor_kwargs: dict | None = None
    image_resize: str | None = None
    image_mode: str | None = None
    attention_precision: str | None = None
    revision: str | None = None
    trust_remote_code: bool = False


def mc_decoding(options: MCOptions, family: str | None = None) -> str:
    """The decoding a run of ``options`` uses: its own, else its protocol's for the
    model's ``family`` (read from the config when needed), else ``greedy-1``."""
    from vgutils.protocols import get_protocol, model_family

    protocol = get_protocol(options.protocol)
    if options.decoding:
        return options.decoding
    if family is None and protocol.needs_family:
        family = model_family(options.model, options.revision, options.trust_remote_code)
    return protocol.for_family("decoding", family) or "greedy-1"


def resolve_mc_options(options: MCOptions) -> MCOptions:
    """``options`` with the protocol's value (:mod:`vgutils.protocols`) for every setting
    left ``None`` and the VGRefine heads and layers made concrete (recorded in run.json;
    a resume with another value refuses)."""
    from dataclasses import replace

    from vgutils.protocols import check_settings, get_protocol, model_family, resolve_settings

    protocol = get_protocol(options.protocol)
    check_settings(decoding=options.decoding)
    if options.refine is not None:  # no boxes here: heads and random only
        options.refine.check_triage(has_boxes=False)
    explicit_resize = options.image_resize == "qwen_vl_utils"
    family = (
        model_family(options.model, options.revision, options.trust_remote_code)
        if protocol.needs_family or explicit_resize
        else None
    )
    return replace(
        options,
        protocol=protocol.name,
        decoding=mc_decoding(options, family),
        refine=options.refine.resolve(protocol) if options.refine is not None else None,
        **resolve_settings(options, protocol, family),
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


def generate(vlm, prepared, decoding: str, seed: int) -> str:
    """The model's answer to ``prepared`` with one of :data:`DECODINGS` (seeded with
    ``seed`` first: a decoding that samples, or a checkpoint's generation config that
    does, samples the same on a rerun)."""
    torch.manual_seed(seed)
    return vlm.generate(prepared, None, DECODINGS[decoding])


def _scored(row: dict, which: str, output: str, record: MCRecord) -> None:
    for suffix, fallback in (("", "intended"), ("_reference", "reference")):
        letter = extract_letter(output, record.options, fallback=fallback)
        row[f"{which}_letter{suffix}"] = letter
        row[f"{which}_correct{suffix}"] = float(is_correct(letter, record.answer))
    row[f"{which}_output"] = output
    row[f"{which}_no_letter"] = extract_letter(output, record.options, "reference") is None


def _scored_draws(row: dict, outputs: list[str], record: MCRecord) -> None:
    """``refined_*`` of one question answered once per draw (the random triage): the
    first draw's letter and output, the mean correctness over the draws (the expected
    accuracy of a random choice); one draw: :func:`_scored`."""
    scored = []
    for output in outputs:
        one: dict = {}
        _scored(one, "refined", output, record)
        scored.append(one)
    row.update(scored[0])
    for key in ("refined_correct", "refined_correct_reference"):
        row[key] = float(np.mean([one[key] for one in scored]))


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
    from vgutils.errors import UsageError
    from vgutils.refine import (
        draw_generator,
        knocked_tokens,
        knockout,
        text_rows_after_image,
        triage,
    )
    from vgutils.vqa import ADDED_OPTIONS, load_run_model, options_record

    checks.remote_code(options.trust_remote_code, options.revision)
    if options.refine is not None and not isinstance(options.refine, RefineSettings):
        raise UsageError("MCOptions.refine: a vgutils.refine.RefineSettings (or None)")
    options = resolve_mc_options(options)
    refine = options.refine
    started = time.perf_counter()
    path = resolve_benchmark(options.benchmark, data_root)
    records, problems = load_mc(
        path,
        list(options.datasets) if options.datasets else None,
        subsets=list(options.subsets) if options.subsets else None,
    )
    records = records[: options.limit]
    store = RunStore(Path(out), main_kind="answers", shard=shard)
    identity = {
        "benchmark_sha256": sha256(path),
        "code_sha256": _mc_code_fingerprint(),
        **model_identity(options.model, options.revision),
    }
    run = store.open(
        options_record(options),
        identity,
        package_versions(),
        keys=[item.id for item in records],
        plan={"questions": len(records)},
        replace_stale=replace_stale,
        option_defaults=ADDED_OPTIONS,
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
        vlm = load_run_model(options, device, progress)
    bar = tqdm(
        total=sum(map(len, groups.values())),
        unit="q",
        desc=f"{options.benchmark} {options.model}",
        disable=not progress,
    )
    for image_path, group in groups.items():
        try:
            image = load_image(image_path, options.image_mode)
        except Exception as err:  # an unreadable image skips its questions, never the run
            for item in group:
                store.add_error(item.id, str(image_path), f"image unreadable: {err}")
            bar.update(len(group))
            continue
        generic = (  # once per image, shared by all of its questions
            vlm.attention(vlm.prepare_generic(image), "last") if refine is not None else None
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
                "protocol": options.protocol,
            }
            seed = options.seed + item.index
            if refine is not None:
                found = triage(
                    vlm,
                    image,
                    item.question,
                    list(refine.heads),
                    refine.percentile,
                    generic_heads=generic,
                    denominator=refine.denominator,
                    user_text=text + refine.prompt_suffix,
                )
                prepared = found.prepared  # the VGRefine prompt (with the suffix, if any)
                plain = vlm.prepare_text(image, text) if refine.prompt_suffix else prepared
                baseline = generate(vlm, plain, options.decoding, seed)
                rows_after_image = text_rows_after_image(prepared)
                rng = draw_generator(refine.seed or 0, item.id)
                draws = []
                for _ in range(refine.draws or 1):  # random: draws; heads: one
                    knocked = knocked_tokens(refine.triage, found.low, found.relevance, rng=rng)
                    keys = prepared.image_positions[knocked]
                    with knockout(
                        vlm, list(refine.layers), rows_after_image, keys, refine.include_generated
                    ):
                        draws.append(generate(vlm, prepared, options.decoding, seed))
                _scored_draws(row, draws, item)
                row["masked_tokens"] = int(found.low.sum())
                row["heads_source"] = refine.heads_source
                row["knockout_layers"] = " ".join(map(str, refine.layers))
                row["triage"] = refine.triage
                row["draws"] = len(draws)
                row["refined_draws"] = json.dumps(draws)
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
        "protocol": options.protocol,
        "refine": options_record(options)["refine"],
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

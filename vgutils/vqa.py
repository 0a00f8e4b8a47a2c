"""VQA accuracy with and without VGRefine, resumable like the extraction runner.

Scoring (normalised: lower case, punctuation and articles removed, whitespace squeezed):
closed questions (ground truth yes / no) score exact match of the normalised answers;
open questions score exact match and token recall (share of the ground truth's tokens
found in the prediction).
"""

from __future__ import annotations

import json
import logging
import re
import string
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from vgutils import checks
from vgutils.data import load_image, read_dataset, resolve_dataset
from vgutils.data.manifest import sha256
from vgutils.errors import DataError, UsageError
from vgutils.models.vlm import too_long
from vgutils.refine import RefineSettings
from vgutils.results import (
    RunStore,
    images_digest,
    load_metrics,
    partial_answers,
    split_work,
)
from vgutils.runner import (
    code_fingerprint,
    group_by_image,
    image_hashes,
    model_identity,
    package_versions,
    pinned_changes,
)

log = logging.getLogger("vgutils.vqa")

CLOSED = {"yes", "no"}
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str | None) -> str:
    """Lower case, no punctuation, no articles, single spaces."""
    text = (text or "").lower()
    text = text.translate(str.maketrans(string.punctuation, " " * len(string.punctuation)))
    return " ".join(_ARTICLES.sub(" ", text).split())


def score_answer(prediction: str, truth: str) -> dict:
    """``closed``, ``exact`` (0/1) and ``recall`` (open questions; closed: = exact)."""
    pred, gold = normalize_answer(prediction), normalize_answer(truth)
    closed = gold in CLOSED
    if closed:  # the first word decides ("yes, there is" counts as yes)
        exact = float(pred.split()[:1] == [gold])
        return {"closed": True, "exact": exact, "recall": exact}
    gold_tokens = gold.split()
    pred_tokens = set(pred.split())
    recall = sum(t in pred_tokens for t in gold_tokens) / len(gold_tokens) if gold_tokens else 0.0
    return {"closed": False, "exact": float(pred == gold), "recall": recall}


@dataclass(frozen=True)
class VQAOptions:
    """One VQA run. ``refine``: VGRefine's settings (:class:`vgutils.refine.
    RefineSettings`; ``None``: the baseline only). Settings left ``None`` take the
    ``protocol``'s value (:mod:`vgutils.protocols`), per family where the protocol says:
    ``decoding`` (a :data:`vgutils.protocols.DECODINGS` name), ``max_new_tokens``
    (explicit wins over the decoding's), the processor kwargs (explicit keys win),
    ``image_resize``, ``image_mode``, ``attention_precision`` and ``box_overhang``.
    ``revision``: the model's Hub revision (``trust_remote_code`` needs a commit hash)."""

    model: str
    dataset: str
    refine: RefineSettings | None = None
    max_new_tokens: int | None = None
    limit: int | None = None
    image_root: str | None = None
    bbox_format: str | None = None
    dtype: str = "auto"
    protocol: str = "corrected"
    processor_kwargs: dict | None = None
    decoding: str | None = None
    image_resize: str | None = None
    image_mode: str | None = None
    attention_precision: str | None = None
    box_overhang: str | None = None
    revision: str | None = None
    trust_remote_code: bool = False


ADDED_OPTIONS = {"revision": None, "trust_remote_code": False}
"""Options of VQA and multiple-choice runs added after such runs were first recorded,
with the value a ``run.json`` that lacks them was made with (:meth:`vgutils.results.
RunStore.open`'s ``option_defaults``: such a run resumes)."""


def resolve_vqa_options(options: VQAOptions) -> VQAOptions:
    """``options`` with the protocol's value for every setting left ``None`` and the
    VGRefine heads and layers made concrete (what ``run.json`` records; a resume with
    another value refuses, naming the key)."""
    from vgutils.protocols import (
        DECODINGS,
        check_settings,
        get_protocol,
        model_family,
        resolve_settings,
    )

    protocol = get_protocol(options.protocol)
    check_settings(decoding=options.decoding)
    explicit_resize = options.image_resize == "qwen_vl_utils"
    family = (
        model_family(options.model, options.revision, options.trust_remote_code)
        if protocol.needs_family or explicit_resize
        else None
    )
    decoding = options.decoding or protocol.for_family("decoding", family) or "greedy"
    max_new_tokens = options.max_new_tokens
    if max_new_tokens is None:
        max_new_tokens = DECODINGS[decoding].get("max_new_tokens", protocol.max_new_tokens)
    return replace(
        options,
        protocol=protocol.name,
        refine=options.refine.resolve(protocol) if options.refine is not None else None,
        max_new_tokens=max_new_tokens,
        decoding=decoding,
        **resolve_settings(options, protocol, family),
    )


def load_run_model(options, device: str, progress: bool = False):
    """The model of a VQA or multiple-choice run (resolved ``options``) at its revision,
    loaded with its protocol's processor and capture settings; VGRefine's heads and
    layers checked against it (and described when ``progress``)."""
    from vgutils.models.loading import load_model

    vlm = load_model(
        options.model,
        device=device,
        dtype=options.dtype,
        revision=options.revision,
        trust_remote_code=options.trust_remote_code,
        processor_kwargs=options.processor_kwargs,
        image_resize=options.image_resize,
        attention_precision=options.attention_precision,
    )
    if options.refine is not None:
        options.refine.check_model(vlm)
        if progress:
            print(f"VGRefine: {options.refine.describe()} ({options.protocol})")
    return vlm


def options_record(options) -> dict:
    """``options`` as plain JSON (nested settings as dicts, tuples as lists): what
    ``run.json`` records and a resume compares."""
    return json.loads(json.dumps(asdict(options)))


def _knocked_truth(sample, result) -> dict:
    """``gt_tokens``: image tokens inside the sample's boxes (processor geometry), and
    ``gt_knocked``: how many of them the *heads* triage marks low (NaN without boxes),
    whatever the run's triage arm (its own count: ``knocked_box_share`` x ``box_tokens``).
    Knocking out the evidence is one way VGRefine can lower accuracy."""
    from vgutils.metrics import gt_mask

    try:
        mask = gt_mask(result.triage.prepared.layout, sample.boxes)
    except (ValueError, TypeError):
        return {"gt_tokens": np.nan, "gt_knocked": np.nan}
    return {"gt_tokens": int(mask.sum()), "gt_knocked": int((mask & result.triage.low).sum())}


def accuracy_table(answers: pd.DataFrame) -> pd.DataFrame:
    """Accuracy per question kind (closed / open) for the baseline and, if present,
    VGRefine: exact match, and token recall for open questions."""
    rows = []
    for closed, frame in answers.groupby("closed"):
        row = {
            "questions": "closed (yes/no)" if closed else "open",
            "n": len(frame),
            "baseline_exact": frame["baseline_exact"].mean(),
        }
        if not closed:
            row["baseline_recall"] = frame["baseline_recall"].mean()
        if "refined_exact" in frame:
            row["refined_exact"] = frame["refined_exact"].mean()
            if not closed:
                row["refined_recall"] = frame["refined_recall"].mean()
        rows.append(row)
    return pd.DataFrame(rows)


def run_vqa(
    options: VQAOptions,
    out: str | Path,
    device: str = "auto",
    progress: bool = True,
    shard: tuple[int, int] | None = None,
):
    """Answer every question (baseline, and VGRefine with ``refine``) into ``out``:
    ``answers.parquet`` (one row per question), ``accuracy.json``; resumable. With VGRefine
    each row has ``triage`` (the arm, :data:`vgutils.refine.TRIAGES`), ``draws``,
    ``refined_draws`` (every draw's answer, json), ``box_tokens`` (image tokens the boxes
    cover) and ``knocked_box_share`` (the share of them knocked out, mean over draws);
    ``refined`` is the first draw's answer and ``refined_exact`` / ``refined_recall`` the
    mean of the draws' scores (the random arm's expected accuracy). ``shard``:
    ``(rank, world)``: answer only rank ``rank``'s images (:func:`vgutils.results.
    split_work`); whichever rank finds every question answered merges the run. Returns
    ``(answers, table, seconds)``; ``table`` is None (and the answers partial) while
    other ranks' questions are missing."""
    from vgutils.models.sources import check_model_name
    from vgutils.protocols import DECODINGS

    checks.remote_code(options.trust_remote_code, options.revision)
    started = time.perf_counter()
    check_model_name(options.model)
    if options.refine is not None and not isinstance(options.refine, RefineSettings):
        raise UsageError("VQAOptions.refine: a vgutils.refine.RefineSettings (or None)")
    options = resolve_vqa_options(options)
    refine = options.refine
    checks.positive_int(options.max_new_tokens, "--max-new-tokens")
    checks.run_settings(
        batch_size=1, device_name=device, dtype_name=options.dtype, limit=options.limit
    )
    dataset = resolve_dataset(
        options.dataset, image_root=options.image_root, bbox_format=options.bbox_format
    )
    samples, _ = read_dataset(dataset, thorough=False, box_overhang=options.box_overhang)
    samples = [s for s in samples if s.answer is not None][: options.limit]
    store = RunStore(Path(out), main_kind="answers", shard=shard)
    images = image_hashes(samples)
    changed = pinned_changes(images, dataset.root)  # edited since the rows were read
    if changed:
        raise DataError(next(iter(changed.values())))
    identity = {
        **model_identity(options.model, options.revision),
        "dataset_sha256": sha256(dataset.jsonl),
        "images_sha256": images_digest(images),
        "code_sha256": code_fingerprint(),
    }
    run = store.open(
        options_record(options),
        identity,
        package_versions(),
        images=images,
        keys=[s.id for s in samples],
        plan={"samples": len(samples)},
        option_defaults=ADDED_OPTIONS,
    )
    done = store.done_ids()
    groups = group_by_image(samples)
    mine = split_work([images[str(g[0][1].image_path)] for g in groups], shard)
    todo = [[(o, s) for o, s in groups[i] if s.id not in done] for i in mine]
    todo = [g for g in todo if g]
    generation = DECODINGS[options.decoding]
    if todo:
        vlm = load_run_model(options, device, progress)
    layers = " ".join(map(str, refine.layers)) if refine is not None else ""
    bar = tqdm(
        total=sum(map(len, todo)), unit="q", desc=f"vqa {options.model}", disable=not progress
    )
    for group in todo:
        path = group[0][1].image_path
        image = load_image(path, options.image_mode, expected_sha256=images.get(str(path)))
        generic = (  # once per image, shared by all of its questions
            vlm.attention(vlm.prepare_generic(image), "last") if refine is not None else None
        )
        rows = []
        for order, sample in group:
            reason = too_long(vlm.prepare, image, sample.question)
            if reason:  # never run past the model's context: skipped, said
                log.warning("%s: skipped (%s): %s", sample.id, sample.source, reason)
                store.add_error(sample.id, sample.source, reason, image=str(path))
                bar.update(1)
                continue
            row = {
                "sample_id": sample.id,
                "order": order,
                "question": sample.question,
                "truth": sample.answer,
                "q_type": sample.q_type,
                "model": options.model,
                "dataset": dataset.name,
                "protocol": options.protocol,
                "knockout_layers": layers,
            }
            if refine is not None:
                result = refine.answer(
                    vlm,
                    image,
                    sample.question,
                    options.max_new_tokens,
                    generic_heads=generic,
                    generation=generation,
                    boxes=sample.boxes,
                    sample_id=sample.id,
                )
                row.update(
                    baseline=result.baseline_answer,
                    refined=result.answer,
                    masked_tokens=int(result.triage.low.sum()),
                    heads_source=refine.heads_source,
                    triage=refine.triage,
                    draws=len(result.answers),
                    refined_draws=json.dumps(list(result.answers)),
                    box_tokens=result.box_tokens if result.box is not None else np.nan,
                    knocked_box_share=result.knocked_box_share,
                    **_knocked_truth(sample, result),
                )
            else:
                prepared = vlm.prepare(image, sample.question)
                row["baseline"] = vlm.generate(prepared, options.max_new_tokens, generation)
            for which in ("baseline", "refined"):
                if which in row:
                    answers = (
                        result.answers if which == "refined" else [row[which]]
                    )  # the random triage: the scores' mean over its draws
                    scores = [score_answer(text, sample.answer) for text in answers]
                    row["closed"] = scores[0]["closed"]
                    row[f"{which}_exact"] = float(np.mean([s["exact"] for s in scores]))
                    row[f"{which}_recall"] = float(np.mean([s["recall"] for s in scores]))
            rows.append(row)
            bar.update(1)
        if rows:
            store.add_part({"answers": pd.DataFrame(rows)})
    bar.close()
    complete = run["status"] == "complete" or store.complete(run)
    store.close()
    if not complete:  # other ranks' questions are missing: the merging rank writes the table
        return partial_answers(store.folder), None, time.perf_counter() - started
    answers = load_metrics(store.folder, "answers")
    table = accuracy_table(answers)
    records = [{k: v for k, v in row.items() if pd.notna(v)} for row in table.to_dict("records")]
    (store.folder / "accuracy.json").write_text(json.dumps(records, indent=2, default=float))
    return answers, table, time.perf_counter() - started

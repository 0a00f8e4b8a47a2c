"""Extraction: (model, dataset, strategy) -> per-layer grounding metrics on disk.

Work is grouped by image: the generic prompt is run once per image and the image prefix
(template head + image tokens) once for all of that image's prompts, with the question
suffixes batched on its KV cache (:mod:`vgutils.models.prefix`). Results are written per
image as they finish; a rerun with the same options resumes (see :mod:`vgutils.results`).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import signal
import sys
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from vgutils import checks
from vgutils.context import current as current_context
from vgutils.data import load_image, read_dataset, resolve_dataset
from vgutils.data.images import ImageChanged, image_size
from vgutils.data.manifest import sha256
from vgutils.data.rows import Sample
from vgutils.errors import DataError
from vgutils.loader import prefetch
from vgutils.metrics import gt_mask
from vgutils.models.prefix import batched_prefix_attention, shared_prefix_attention
from vgutils.models.vlm import STRATEGIES, PromptTooLong
from vgutils.results import RunStore, images_digest, split_work
from vgutils.scoring import head_scores, layer_maps, layer_scores

log = logging.getLogger("vgutils.runner")


@dataclass(frozen=True)
class ExtractOptions:
    """What one extraction computes (everything that changes its results)."""

    model: str
    dataset: str
    strategy: str = "last"
    image_root: str | None = None
    bbox_format: str | None = None
    limit: int | None = None
    heads: bool = False
    save_maps: bool = False
    dtype: str = "auto"
    revision: str | None = None
    trust_remote_code: bool = False
    protocol: str = "corrected"  # vgutils.protocols: "authors" | "corrected"
    box_mapping: str | None = None  # "processor" | "scaled"; None: the protocol's
    processor_kwargs: dict | None = None  # e.g. {"max_pixels": 50176}; None: the protocol's
    # the protocol's value when None (vgutils.protocols):
    image_resize: str | None = None  # "qwen_vl_utils" | "processor"
    image_mode: str | None = None  # "composite" | "convert" | "qwen_vl_utils"
    attention_precision: str | None = None  # "model" | "float32"
    box_overhang: str | None = None  # "clamp" | "drop"


def resolve_options(options: ExtractOptions) -> ExtractOptions:
    """``options`` with the protocol's value for every setting left ``None``: the box
    mapping, the processor kwargs for the model's family (merged under the explicit
    ``processor_kwargs``: an explicit key wins), the image resize and mode, the attention
    precision and the box overhang. What ``run.json`` records, so a resume with another
    protocol or setting refuses naming the key."""
    from vgutils.protocols import get_protocol, model_family, resolve_settings

    protocol = get_protocol(options.protocol)
    changes = {"protocol": protocol.name}
    scaled = options.box_mapping is None and protocol.box_mapping == "scaled"
    family = (  # read from the config, only when a setting depends on it
        model_family(options.model, options.revision, options.trust_remote_code)
        if protocol.needs_family or scaled or options.image_resize == "qwen_vl_utils"
        else None
    )
    if options.box_mapping is None:
        changes["box_mapping"] = protocol.box_mapping_for(family)
    changes.update(resolve_settings(options, protocol, family))
    return replace(options, **changes)


@dataclass(frozen=True)
class RunSummary:
    out: Path
    done: int
    skipped: int
    seconds: float
    computed: int  # samples computed in this call (0 when everything was already done)
    complete: bool = True  # False: this rank's share is done, other ranks' samples missing
    missing: int = 0  # samples no process has finished yet (when not complete)
    replaced: str | None = None  # why a stale run in the folder was replaced, if one was


def group_by_image(samples: list[Sample]) -> list[list[tuple[int, Sample]]]:
    """Samples (with their dataset order) grouped by image, in first-appearance order."""
    groups: OrderedDict[Path, list[tuple[int, Sample]]] = OrderedDict()
    for order, sample in enumerate(samples):
        groups.setdefault(sample.image_path, []).append((order, sample))
    return list(groups.values())


def folder_hash(folder: Path, full_below: int = 64 * 2**20) -> str:
    """sha256 over a model folder: small files by content, large ones by name and size."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode())
        size = path.stat().st_size
        digest.update(path.read_bytes() if size < full_below else str(size).encode())
    return digest.hexdigest()


def model_identity(name: str, revision: str | None = None) -> dict:
    """What identifies the weights, without loading them: the sha256 of a local (or
    tiny) model folder, else the Hub commit the config resolves to."""
    from vgutils.models.sources import resolve

    source = resolve(name)
    folder = Path(source)
    if folder.is_dir():
        return {"model": name, "model_folder_sha256": folder_hash(folder)}
    from transformers.utils import cached_file

    from vgutils.models.errors import model_errors
    from vgutils.models.original import snapshot_revision, split_hub_id

    # the Hub cache keeps each download under snapshots/<commit>/ (a subfolder: below it)
    repo, subfolder = split_hub_id(source)
    with model_errors(name, source, revision):
        config = Path(cached_file(repo, "config.json", subfolder=subfolder, revision=revision))
    commit = snapshot_revision(config.parent)
    return {"model": name, "model_revision": commit or revision}


def image_hashes(samples: list[Sample]) -> dict[str, str]:
    """``{image path: sha256}`` of the images ``samples`` use (resolved paths, as the
    rows give them; the image root is part of the options anyway)."""
    return {str(path): sha256(path) for path in sorted({s.image_path for s in samples})}


def pinned_changes(images: dict[str, str], root: Path | None) -> dict[str, str]:
    """``{image: reason}`` for the images whose sha256 (as hashed for the run) differs from
    the one the registry pins (an image edited after the rows were checked), naming the
    file and both hashes."""
    from vgutils.data.loaders import pinned_images
    from vgutils.data.manifest import data_root

    pinned = pinned_images(root if root is not None else data_root())
    changed = {}
    for name, digest in images.items():
        expected = pinned.get(Path(name))
        if expected is not None and expected != digest:
            changed[name] = (
                f"{name} does not match its pinned sha256 in the registry (pinned {expected}, "
                f"now {digest}): it changed after `data pin`; restore it, or pin it again"
            )
    return changed


def code_fingerprint() -> str:
    """sha256 of the package sources that determine the numbers (a change recomputes)."""
    root = Path(__file__).parent
    files = [root / n for n in ("geometry.py", "metrics.py", "scoring.py", "runner.py")]
    files += sorted((root / "models").glob("*.py")) + sorted((root / "data").glob("*.py"))
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def package_versions() -> dict:
    names = ("vgutils", "torch", "transformers", "numpy", "pandas")
    versions = {"python": sys.version.split()[0]}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _sample_frames(
    sample: Sample,
    order: int,
    raw_heads,
    generic_heads,
    layout,
    context: dict,
    heads: bool,
    mean_dtype: str | None = None,
) -> tuple[dict[str, pd.DataFrame], np.ndarray]:
    mask = gt_mask(layout, sample.boxes)
    base = {
        "sample_id": sample.id,
        "order": order,
        "image": sample.image_path.name,
        "q_type": sample.q_type,
        "modality": sample.modality,
        "n_tokens": layout.n_tokens,
        "n_gt_tokens": int(mask.sum()),
        **context,
    }
    layers = raw_heads.shape[0]
    scores = layer_scores(raw_heads, generic_heads, mask, mean_dtype)
    frames = {"metrics": pd.DataFrame({**base, "layer": np.arange(layers), **scores})}
    if heads:
        per_head = head_scores(raw_heads, generic_heads, mask)
        layer_index, head_index = np.meshgrid(
            np.arange(layers), np.arange(raw_heads.shape[1]), indexing="ij"
        )
        frames["head_metrics"] = pd.DataFrame(
            {
                **base,
                "layer": layer_index.ravel(),
                "head": head_index.ravel(),
                **{k: v.ravel() for k, v in per_head.items()},
            }
        )
    return frames, mask


def extract(
    options: ExtractOptions,
    out: str | Path,
    *,
    batch_size: int = 8,
    image_batch: int = 1,
    loader_threads: int | None = None,
    device: str = "auto",
    prefix_sharing: bool = True,
    progress: bool = True,
    retry_errors: bool = False,
    shard: tuple[int, int] | None = None,
    replace_stale: bool = False,
) -> RunSummary:
    """Run (or resume) one extraction into ``out`` and return its summary. Every check
    that needs no model (arguments, data, the run folder's lock and identity) is done
    before the model loads. ``retry_errors``: compute previously skipped samples again.
    ``shard``: ``(rank, world)``: this process computes the images of rank ``rank`` of
    ``world`` (:func:`vgutils.results.split_work`) that are not done yet, into the same
    folder as the other ranks; whichever finds every sample done merges the run (the
    summary says ``complete``). ``replace_stale``: a folder holding a run of other
    options, model, data or code that nobody writes is started afresh.

    Speed settings (the results do not depend on them): ``batch_size`` question suffixes
    run at once; ``image_batch`` images of equal prefix share one prefix forward;
    ``loader_threads`` background threads load and preprocess the next images while the
    model runs (default: :func:`default_loader_threads`)."""
    checks.remote_code(options.trust_remote_code, options.revision)
    checks.one_of(options.strategy, STRATEGIES, "--strategy")
    checks.positive_int(image_batch, "--image-batch")
    start = time.perf_counter()
    checks.run_settings(
        batch_size=batch_size, device_name=device, dtype_name=options.dtype, limit=options.limit
    )
    out = Path(out)
    options = resolve_options(options)
    from vgutils.models.loading import load_model
    from vgutils.models.sources import check_model_name

    check_model_name(options.model)
    dataset = resolve_dataset(
        options.dataset, image_root=options.image_root, bbox_format=options.bbox_format
    )
    samples, problems = read_dataset(dataset, thorough=False, box_overhang=options.box_overhang)
    bad_rows = [p for p in problems if p.severity == "error"]
    if not samples:
        raise DataError(
            f"{dataset.jsonl}: no usable rows ({len(bad_rows)} bad); "
            f"see `python -m vgutils validate {options.dataset}`"
        )
    if options.limit is not None:
        samples = samples[: options.limit]
    groups = group_by_image(samples)
    bad_keys = [f"row:{problem.file}:{problem.line}" for problem in bad_rows]

    with RunStore(out, shard=shard) as store:
        store.lock()  # a read-only or busy --out fails here, before any hashing or loading
        images = image_hashes(samples)
        changed = pinned_changes(images, dataset.root)  # edited since the rows were read
        images = {name: digest for name, digest in images.items() if name not in changed}
        changed_samples = [s for s in samples if str(s.image_path) in changed]
        groups = [g for g in groups if str(g[0][1].image_path) not in changed]
        identity = {
            **model_identity(options.model, options.revision),
            "dataset": dataset.name,
            "dataset_sha256": sha256(dataset.jsonl),
            "images_sha256": images_digest(images),
            "code_sha256": code_fingerprint(),
        }
        run = store.open(
            _options_record(options, dataset),
            identity,
            package_versions(),
            images=images,
            retry_errors=retry_errors,
            keys=[s.id for s in samples] + bad_keys,
            plan={"samples": len(samples), "bad_rows": len(bad_rows)},
            replace_stale=replace_stale,
        )
        if run["status"] == "complete":
            counts = run["counts"]
            return RunSummary(
                out, counts["done"], counts["skipped"], 0.0, 0, replaced=store.replaced
            )
        done = store.done_ids()  # reads every part: a corrupt one fails before the model
        if shard is None or shard[0] == 0:  # the bad rows and changed images: rank 0 logs
            for problem, key in zip(bad_rows, bad_keys, strict=True):
                if key not in done:
                    store.add_error(key, f"{problem.file}:{problem.line}", str(problem))
            for sample in changed_samples:
                if sample.id not in done:
                    reason = changed[str(sample.image_path)]
                    store.add_error(sample.id, sample.source, reason, image=str(sample.image_path))
        mine = split_work([images[str(g[0][1].image_path)] for g in groups], shard)
        todo = [[(o, s) for o, s in groups[i] if s.id not in done] for i in mine]
        todo = [g for g in todo if g]
        vlm = None
        if todo:  # a resume that only has to finalize loads no model
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
        context = {
            "model": options.model,
            "dataset": dataset.name,
            "strategy": options.strategy,
            "protocol": options.protocol,
        }
        if dataset.entry is not None and dataset.entry.domain:
            context["domain"] = dataset.entry.domain
        kill_after = current_context().kill_after_parts  # $VGUTILS_KILL_AFTER_PARTS
        computed = parts = 0
        bar = tqdm(
            total=sum(len(g) for g in todo),
            unit="q",
            desc=f"{options.model} {dataset.name}",
            disable=not progress,
        )
        if image_batch > 1:  # images of one size sit together: their prefixes batch
            todo = sorted(todo, key=lambda g: _image_size_key(g[0][1].image_path))
        if loader_threads is not None:
            threads = loader_threads
        else:
            threads = default_loader_threads(vlm) if vlm is not None else 0
        ready = prefetch(
            todo,
            lambda g: prepare_group(vlm, g, options.box_mapping, options.image_mode, images),
            threads,
            ahead=2 * image_batch,
        )
        for batch in image_batches(ready, image_batch if prefix_sharing else 1):
            maps = batch_attention(vlm, batch, options.strategy, batch_size, prefix_sharing)
            for prepared_group, (group_maps, generic) in zip(batch, maps, strict=True):
                frames, skipped = _score_group(
                    prepared_group, group_maps, generic, options, store, context, vlm
                )
                if frames:
                    store.add_part(frames)
                    parts += 1
                    if kill_after and parts >= kill_after:
                        os.kill(os.getpid(), signal.SIGKILL)
                computed += len(prepared_group.group) - skipped
                bar.update(len(prepared_group.group))
        bar.close()
        complete = store.complete(run)  # merged here if every sample is done
        if complete:
            done_total, skipped_total = run["counts"]["done"], run["counts"]["skipped"]
            missing = 0
        else:
            skipped_total = len(store.errors())
            done_total = len(store.done_ids()) - skipped_total
            missing = len(store.missing() or ())
    seconds = time.perf_counter() - start
    return RunSummary(
        out, done_total, skipped_total, seconds, computed, complete, missing, store.replaced
    )


def _options_record(options: ExtractOptions, dataset) -> dict:
    record = asdict(options)
    record["image_root"] = str(dataset.image_root)
    return record


def group_attention(
    vlm, image, prompts: list, strategy: str, batch_size: int = 8, prefix_sharing: bool = True
) -> tuple[list[np.ndarray], np.ndarray]:
    """Attention ``(layers, heads, N)`` of each prepared question about ``image`` and of
    the image's generic prompt (computed once), sharing the image prefix if asked."""
    prompts = [*prompts, vlm.prepare_generic(image)]
    if prefix_sharing:
        maps = shared_prefix_attention(vlm, prompts, strategy, batch_size)
    else:
        maps = [vlm.attention(p, strategy) for p in prompts]
    return maps[:-1], maps[-1]


def default_loader_threads(vlm) -> int:
    """Background loader threads when not given: 1 on a GPU (preprocessing overlaps the
    forward), 0 on the CPU (the forward already uses every core; measured slower)."""
    return 1 if vlm.device.type == "cuda" else 0


@dataclass
class PreparedGroup:
    """One image's questions, prepared (off the critical path when a loader runs):
    ``kept`` (order, sample) pairs with their ``prompts``, the ``generic`` prompt, and
    the ``skipped`` (sample, reason) pairs to log."""

    group: list
    kept: list
    prompts: list
    generic: object | None
    skipped: list


def prepare_group(
    vlm,
    group,
    box_mapping: str = "processor",
    image_mode: str = "composite",
    hashes: dict[str, str] | None = None,
) -> PreparedGroup:
    """Load the image (converted by ``image_mode``, :func:`vgutils.data.images.to_rgb`)
    and prepare every prompt about it (the image is processed once); ``box_mapping`` as
    in :meth:`VisionLanguageModel.prepare`. ``hashes``: ``{image: sha256}`` recorded for
    the run; an image whose bytes differ now is skipped."""
    path = group[0][1].image_path
    try:
        image = load_image(path, image_mode, expected_sha256=(hashes or {}).get(str(path)))
    except ImageChanged as err:  # edited during the run: never computed on
        return PreparedGroup(group, [], [], None, [(s, str(err)) for _, s in group])
    except Exception as err:  # an unreadable image skips its questions, never the run
        return PreparedGroup(
            group, [], [], None, [(s, f"image unreadable: {err}") for _, s in group]
        )
    kept, prompts, skipped = [], [], []
    for order, sample in group:
        try:
            prompts.append(vlm.prepare(image, sample.question, box_mapping))
            kept.append((order, sample))
        except PromptTooLong as err:  # never run past the model's context
            log.warning("%s: skipped (%s): %s", sample.id, sample.source, err)
            skipped.append((sample, f"question too long: {err}"))
        except Exception as err:
            skipped.append((sample, f"prompt preparation failed: {err}"))
    generic = None
    if kept:
        try:
            generic = vlm.prepare_generic(image, box_mapping)
        except PromptTooLong as err:  # the image alone fills the context
            log.warning("%s: skipped (%s): generic prompt: %s", path.name, path, err)
            skipped += [(s, f"generic prompt too long: {err}") for _, s in kept]
            kept, prompts = [], []
    return PreparedGroup(group, kept, prompts, generic, skipped)


def _image_size_key(path: Path) -> tuple[int, int]:
    try:
        return image_size(path)
    except Exception:  # unreadable: sorted first, skipped when loaded
        return (0, 0)


def image_batches(ready, size: int):
    """Consecutive prepared groups, ``size`` at most per batch; a group without prompts
    travels alone (it only logs its skips)."""
    batch = []
    for prepared in ready:
        batch.append(prepared)
        if len(batch) >= size or not prepared.kept:
            yield batch
            batch = []
    if batch:
        yield batch


def batch_attention(vlm, batch, strategy, batch_size, prefix_sharing):
    """Per prepared group: (maps of its questions, map of its generic prompt), each
    ``(layers, heads, N)``; groups without prompts get ``([], None)``."""
    live = [[*g.prompts, g.generic] for g in batch if g.kept]
    if prefix_sharing:
        computed = iter(batched_prefix_attention(vlm, live, strategy, batch_size))
    else:
        computed = iter([[vlm.attention(p, strategy) for p in group] for group in live])
    out = []
    for prepared in batch:
        maps = next(computed) if prepared.kept else [None]
        out.append((maps[:-1], maps[-1]))
    return out


def _score_group(prepared: PreparedGroup, maps, generic, options, store, context, vlm=None):
    """Metric frames of one image's questions (written as one part) and how many samples
    were skipped (logged to errors.jsonl)."""
    for sample, reason in prepared.skipped:
        store.add_error(sample.id, sample.source, reason, image=str(sample.image_path))
    skipped = len(prepared.skipped)
    dtype = vlm.head_mean_dtype if vlm is not None else None  # model dtype or float64
    collected: dict[str, list[pd.DataFrame]] = {}
    for (order, sample), question, raw_heads in zip(
        prepared.kept, prepared.prompts, maps, strict=True
    ):
        try:
            frames, _ = _sample_frames(
                sample, order, raw_heads, generic, question.layout, context, options.heads, dtype
            )
        except ValueError as err:  # e.g. the box covers no image token
            store.add_error(sample.id, sample.source, str(err), image=str(sample.image_path))
            skipped += 1
            continue
        for kind, frame in frames.items():
            collected.setdefault(kind, []).append(frame)
        if options.save_maps:
            maps = layer_maps(raw_heads, generic, dtype)
            arrays = {k: v.astype(np.float32) for k, v in maps.items()}
            if options.heads:
                arrays.update(raw_heads=raw_heads, generic_heads=generic)
            arrays["boxes"] = sample.boxes
            store.save_maps(sample.id, arrays, question.layout)
    return {k: pd.concat(v, ignore_index=True) for k, v in collected.items()}, skipped

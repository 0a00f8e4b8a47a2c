"""What each protocol choice changes (notebook 06): the same model on the same data under
the authors' setting and the corrected one, one setting at a time.

Comparisons, each configured in the profile's ``sensitivity`` section:

- ``box_mapping``: a pad-to-square LLaVA-style model on non-square images, ground truth
  on the token grid by the processor's real geometry vs the authors' scaled mapping
  (two extraction jobs that differ only in ``box_mapping``);
- ``resolution``: a Qwen2.5-VL-family model at its native resolution vs the authors' cap
  (two jobs that differ only in ``processor`` kwargs), plus token counts, grid and time
  per image size;
- ``refine``: VGRefine accuracy under ``corrected``, ``authors``, and ``corrected`` with
  one authors' setting switched at a time (denominator, knockout layers and rows, the
  decoding of the model's family);
- ``precision``: ``attention_precision`` ``model`` vs ``float32`` on a model in bf16:
  the layer maps, the triage's cut, the attention ratio;
- ``qwen_pixels``: the authors' ``qwen_vl_utils`` pre-resize vs one processor resize at
  the authors' cap: token grids, pixels, ground-truth tokens, attention ratio;
- ``prompt_suffix``: VGRefine's multiple-choice accuracy with and without the authors'
  prompt suffix;
- ``data``: ``box_overhang`` (rows kept) and the authors' ``image_mode`` (images whose
  pixels change) on the profile's datasets.

Effect sizes are paired differences (authors minus corrected, same samples) with 95%
percentile bootstrap intervals over samples.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pandas as pd

from vgutils.data import load_dataset, load_image
from vgutils.figdata import curves
from vgutils.jobs import Job, find_job, job_dir, load_profile, profile_revision
from vgutils.metrics import gt_mask
from vgutils.paths import results_dir
from vgutils.results import load_metrics
from vgutils.stats import best_layers, bootstrap_ci

CORRECTED, AUTHORS = "corrected", "authors"

REFINE_SWITCHES: dict[str, str] = {
    "denominator": "denominator",
    "knockout layers": "layers",
    "knockout rows": "include_generated",
    "decoding": "decoding",
}
"""VGRefine settings switched one at a time from ``corrected`` to the authors' value
(:func:`authors_value`): variant name -> the profile key it sets. A switch whose key the
profile's ``refine`` block sets itself (e.g. ``layers: [16]``) is not run: both protocols
use the profile's value there."""


def authors_value(key: str, model: str):
    """The authors' value of a VGRefine profile ``key`` for ``model`` (per family where
    the protocol says)."""
    from vgutils.protocols import get_protocol, model_family

    authors = get_protocol(AUTHORS)
    if key == "decoding":
        return authors.for_family("decoding", model_family(model))
    if key == "layers":
        return authors.knockout_layers
    return getattr(authors, key)


def _paired(a: pd.DataFrame, b: pd.DataFrame, column: str, n_boot: int) -> dict:
    """Mean of ``b - a`` over samples present in both (by ``sample_id``) with its CI."""
    joined = a[["sample_id", column]].merge(b[["sample_id", column]], on="sample_id")
    diff = (joined[f"{column}_y"] - joined[f"{column}_x"]).to_numpy(dtype=float)
    mean, low, high = bootstrap_ci(diff, n_boot=n_boot)
    return {"difference": mean, "ci_low": low, "ci_high": high, "n": int(np.isfinite(diff).sum())}


def _compare_jobs(
    profile: str, corrected: Job, authors: Job, n_boot: int
) -> tuple[pd.DataFrame, pd.DataFrame, list[dict]]:
    """Metrics of two jobs with a ``setting`` column, their per-layer curves, and the
    paired effect at the corrected job's best (lowest mean KL) layer."""
    frames = []
    for setting, job in ((CORRECTED, corrected), (AUTHORS, authors)):
        frame = load_metrics(job_dir(profile, job))
        frame["setting"] = setting
        frames.append(frame)
    metrics = pd.concat(frames, ignore_index=True)
    table = curves(metrics, ["setting"], n_boot=n_boot, names=("attention_ratio", "kl"))
    best = {
        row["setting"]: int(row["best_layer"])
        for row in best_layers(metrics, "kl", ["setting"]).to_dict("records")
    }
    layer = best[CORRECTED]
    at = {s: f[f["layer"] == layer] for s, f in metrics.groupby("setting")}
    effects = []
    for metric in ("attention_ratio", "kl"):
        means = {s: float(f[metric].mean()) for s, f in at.items()}
        effects.append(
            {
                "measure": f"mean {metric} at layer {layer} (corrected best)",
                "corrected": means[CORRECTED],
                "authors": means[AUTHORS],
                **_paired(at[CORRECTED], at[AUTHORS], metric, n_boot),
                "best_layer_corrected": best[CORRECTED],
                "best_layer_authors": best[AUTHORS],
            }
        )
    return metrics, table, effects


def _layouts(model: str, processor_kwargs: dict | None):
    """``layout(image, box_mapping)``: the token layout of ``model``'s processor (no
    weights loaded: a 7B checkpoint needs only its config and processor here)."""
    from transformers import AutoConfig, AutoProcessor

    from vgutils.geometry import scaled_layout
    from vgutils.models.families import family_of
    from vgutils.models.loading import _pad_to_square
    from vgutils.models.sources import resolve

    source = resolve(model)
    config = AutoConfig.from_pretrained(source)
    processor = AutoProcessor.from_pretrained(source, **(processor_kwargs or {}))
    if (processor_kwargs or {}).get("do_pad"):
        processor = _pad_to_square(processor, config.model_type)
    adapter = family_of(config)

    def layout(image, box_mapping: str):
        inputs = processor.image_processor(images=[image.convert("RGB")], return_tensors="pt")
        found = adapter.layout(processor, image.size, inputs)
        return scaled_layout(found, adapter.name) if box_mapping == "scaled" else found

    return layout


def _gt_change_share(layout, samples, mapping_a: str, mapping_b: str) -> float:
    """Share of samples whose ground-truth token set differs between two box mappings."""
    changed = []
    for sample in samples:
        image = load_image(sample.image_path)
        a, b = layout(image, mapping_a), layout(image, mapping_b)
        try:
            changed.append(not np.array_equal(gt_mask(a, sample.boxes), gt_mask(b, sample.boxes)))
        except ValueError:
            changed.append(True)
    return float(np.mean(changed)) if changed else np.nan


def box_mapping_effect(profile: str, spec: dict, n_boot: int = 2000) -> dict:
    """``spec``: ``model``, ``dataset``, ``processor`` (e.g. ``{do_pad: true}``), ``limit``.
    Returns ``curves`` (per-layer mean ratio / KL with CIs per setting), ``effects``
    (rows of the closing table) and ``gt_changed`` (share of samples whose ground-truth
    tokens change)."""
    model, dataset, processor = spec["model"], spec["dataset"], spec.get("processor")
    jobs = {
        mapping: find_job(
            profile, model, dataset, protocol=CORRECTED, box_mapping=mapping, processor=processor
        )
        for mapping in ("processor", "scaled")
    }
    _, table, effects = _compare_jobs(profile, jobs["processor"], jobs["scaled"], n_boot)
    samples = load_dataset(dataset)[: spec.get("limit")]
    share = _gt_change_share(_layouts(model, processor), samples, "processor", "scaled")
    for row in effects:
        row.update(setting="box -> token grid", model=model, dataset=dataset)
    effects.append(
        {
            "setting": "box -> token grid",
            "model": model,
            "dataset": dataset,
            "measure": "share of samples whose ground-truth tokens change",
            "difference": share,
            "n": len(samples),
        }
    )
    return {"curves": table, "effects": effects, "gt_changed": share}


def resolution_effect(profile: str, spec: dict, n_boot: int = 2000) -> dict:
    """``spec``: ``model`` (Qwen family), ``datasets``, ``native`` and ``cap`` (processor
    kwargs), ``sides`` (square image sizes for the token / time table). Returns
    ``curves``, ``effects``, ``sizes`` (per side and setting: image tokens, grid, seconds
    of one forward with capture) and ``gt_changed``."""
    from vgutils.models import load_model

    model = spec["model"]
    native, cap = spec["native"], spec["cap"]
    effects, tables, shares = [], [], []
    for dataset in spec["datasets"]:
        corrected = find_job(profile, model, dataset, protocol=CORRECTED, processor=native)
        authors = find_job(profile, model, dataset, protocol=CORRECTED, processor=cap)
        metrics, table, rows = _compare_jobs(profile, corrected, authors, n_boot)
        tables.append(table.assign(dataset=dataset))
        counts = metrics.drop_duplicates(["sample_id", "setting"]).pivot(
            index="sample_id", columns="setting", values="n_tokens"
        )
        shares.append(float((counts[CORRECTED] != counts[AUTHORS]).mean()))
        for row in rows:
            row.update(setting="Qwen image size", model=model, dataset=dataset)
        effects.extend(rows)
        effects.append(
            {
                "setting": "Qwen image size",
                "model": model,
                "dataset": dataset,
                "measure": "mean image tokens per sample",
                "corrected": float(counts[CORRECTED].mean()),
                "authors": float(counts[AUTHORS].mean()),
                "difference": float((counts[AUTHORS] - counts[CORRECTED]).mean()),
                "n": len(counts),
            }
        )
        effects.append(
            {
                "setting": "Qwen image size",
                "model": model,
                "dataset": dataset,
                "measure": "share of samples whose ground-truth tokens change (token grid differs)",
                "difference": shares[-1],
                "n": len(counts),
            }
        )
    sizes = []
    for setting, kwargs in ((CORRECTED, native), (AUTHORS, cap)):
        vlm = load_model(model, device=spec.get("device", "auto"), processor_kwargs=kwargs)
        rng = np.random.default_rng(0)
        for side in spec.get("sides", [224, 448, 896]):
            from PIL import Image

            image = Image.fromarray((rng.random((side, side, 3)) * 255).astype(np.uint8))
            prepared = vlm.prepare(image, "Is there a lesion?")
            vlm.attention(prepared, "last")  # warm-up
            times = []
            for _ in range(3):
                started = time.perf_counter()
                vlm.attention(vlm.prepare(image, "Is there a lesion?"), "last")
                times.append(time.perf_counter() - started)
            seconds = min(times)  # the least disturbed of three (a shared CPU)
            _, rows, cols = prepared.layout.grids[0]
            sizes.append(
                {
                    "setting": setting,
                    "side": side,
                    "tokens": prepared.layout.n_tokens,
                    "grid": f"{rows} x {cols}",
                    "seconds": seconds,
                }
            )
    return {
        "curves": pd.concat(tables, ignore_index=True),
        "effects": effects,
        "sizes": pd.DataFrame(sizes),
        "gt_changed": float(np.mean(shares)) if shares else np.nan,
    }


def refine_effect(profile: str, spec: dict, n_boot: int = 2000) -> dict:
    """``spec``: the profile's ``refine`` keys (``model``, ``calibration``, ``top_k``,
    ``percentile``, ``limit``) and ``datasets``. VGRefine accuracy (exact match) per
    variant: ``corrected``, ``authors`` and ``corrected`` with one authors' setting
    (:data:`REFINE_SWITCHES`). Returns ``accuracy`` (per variant and dataset: baseline and
    VGRefine accuracy with CIs) and ``effects`` (each variant minus ``corrected``, paired
    over questions)."""
    from vgutils.figdata import refine_options

    variants = {CORRECTED: (CORRECTED, {}), AUTHORS: (AUTHORS, {})}
    for name, key in REFINE_SWITCHES.items():
        if spec.get(key) is None:  # a value the profile fixes is no switch
            variants[name] = (CORRECTED, {key: authors_value(key, spec["model"])})
    answers = {}
    for dataset in spec["datasets"]:
        for name, (protocol, change) in variants.items():
            options = refine_options(profile, {**spec, **change}, dataset, protocol)
            frame = _cached_vqa(profile, options, dataset, name, change, spec.get("device", "auto"))
            answers[(name, dataset)] = frame
    rows, effects = [], []
    for (name, dataset), frame in answers.items():
        base = bootstrap_ci(frame["baseline_exact"].to_numpy(), n_boot=n_boot)
        refined = bootstrap_ci(frame["refined_exact"].to_numpy(), n_boot=n_boot)
        rows.append(
            {
                "variant": name,
                "dataset": dataset,
                "n": len(frame),
                "baseline": base[0],
                "baseline_low": base[1],
                "baseline_high": base[2],
                "vgrefine": refined[0],
                "vgrefine_low": refined[1],
                "vgrefine_high": refined[2],
            }
        )
        if name == CORRECTED:
            continue
        reference = answers[(CORRECTED, dataset)]
        effects.append(
            {
                "setting": "VGRefine: all" if name == AUTHORS else f"VGRefine: {name}",
                "model": spec["model"],
                "dataset": dataset,
                "measure": "VGRefine exact-match accuracy",
                "corrected": float(reference["refined_exact"].mean()),
                "authors": float(frame["refined_exact"].mean()),
                **_paired(reference, frame, "refined_exact", n_boot),
            }
        )
    return {"accuracy": pd.DataFrame(rows), "effects": effects}


def _cached_vqa(
    profile: str, options, dataset: str, name: str, change: dict, device: str
) -> pd.DataFrame:
    """The VQA answers of one variant; a plain protocol shares the folder of notebook 03's
    run (``vqa__<job>``) when its options are the same, else has its own."""
    from vgutils.figdata import fresh_vqa
    from vgutils.results import RunMismatch
    from vgutils.vqa import run_vqa

    job = Job(options.model, dataset, protocol=options.protocol).name
    own = results_dir(profile) / f"vqa__{job}__sensitivity-{name.replace(' ', '-')}"
    if not change:
        try:
            return run_vqa(options, results_dir(profile) / f"vqa__{job}", device, False)[0]
        except RunMismatch:
            pass
    return fresh_vqa(options, own, device)[0]


def effect_table(*results: dict) -> pd.DataFrame:
    """The closing table: setting -> effect size (authors minus corrected), one row per
    measure, from the ``effects`` of the comparisons."""
    rows = [row for result in results for row in result["effects"]]
    columns = [
        "setting",
        "model",
        "dataset",
        "measure",
        "corrected",
        "authors",
        "difference",
        "ci_low",
        "ci_high",
        "n",
        "best_layer_corrected",
        "best_layer_authors",
    ]
    return pd.DataFrame(rows).reindex(columns=columns)


def describe(table: pd.DataFrame) -> str:
    """One line per row of the effect table, in words."""
    lines = []
    for row in table.to_dict("records"):
        text = f"- **{row['setting']}** ({row['model']}, {row['dataset']}): {row['measure']}"
        pair = pd.notna(row.get("corrected")) and pd.notna(row.get("authors"))
        count = "count" in str(row["measure"])
        if pair:
            number = "{:.0f}" if count else "{:.3f}"
            text += (
                f": corrected {number.format(row['corrected'])}, "
                f"authors {number.format(row['authors'])}"
            )
        if pd.notna(row.get("ci_low")):
            text += (
                f"; difference {row['difference']:+.3f} "
                f"(95% CI {row['ci_low']:+.3f} to {row['ci_high']:+.3f}, n = {int(row['n'])})"
            )
        elif count:
            text += f"; difference {int(row['difference']):+d} (n = {int(row['n'])})"
        elif "share" in str(row["measure"]) and pd.notna(row.get("difference")):
            text += f": {row['difference']:.1%} (n = {int(row['n'])})"
        elif not pair and pd.notna(row.get("difference")):
            text += f": {row['difference']:.3g} (n = {int(row['n'])})"
        elif not pair:
            text += f": not measured (n = {int(row['n'])})"
        if pd.notna(row.get("best_layer_corrected")):
            same = row["best_layer_corrected"] == row["best_layer_authors"]
            text += (
                f"; best (lowest-KL) layer corrected {int(row['best_layer_corrected'])}, "
                f"authors {int(row['best_layer_authors'])}" + (" (same)" if same else "")
            )
        lines.append(text + ".")
    return "\n".join(lines)


# --- the settings of issue #23, measured on the models themselves ------------------------


def _effect(base: dict, measure: str, value, n: int) -> dict:
    """A row of the closing table whose effect is one number (a share or a count)."""
    return {**base, "measure": measure, "difference": float(value), "n": int(n)}


def _samples(dataset: str, limit: int | None, box_overhang: str = "drop"):
    from vgutils.data import read_dataset, resolve_dataset

    samples, _ = read_dataset(resolve_dataset(dataset), box_overhang=box_overhang)
    return samples[:limit]


def _mean_ratio(vlm, question, generic, boxes) -> float:
    """Mean over layers of the attention ratio of ``question``'s normalised layer maps
    (head mean in the model's precision)."""
    from vgutils.metrics import attention_ratio
    from vgutils.scoring import layer_maps

    maps = layer_maps(question, generic, vlm.head_mean_dtype)["normalized"]
    return float(np.nanmean(attention_ratio(maps, boxes)))


def qwen_resize_effect(profile: str, spec: dict, n_boot: int = 2000) -> dict:
    """The authors' Qwen pre-resize (``image_resize="qwen_vl_utils"``: qwen_vl_utils'
    bicubic resize, then the processor) against one processor resize, both at the
    authors' cap. ``spec``: ``model`` (Qwen family), ``datasets``, ``cap`` (processor
    kwargs), ``limit``. Per dataset: the share of images whose token grid differs, the
    mean absolute pixel difference where it does not (the processor's normalised units),
    the share of samples whose ground-truth tokens change, and the paired difference of
    the mean (over layers) attention ratio."""
    from vgutils.models import load_model

    device = spec.get("device", "auto")
    vlm = load_model(spec["model"], device=device, processor_kwargs=spec["cap"])
    effects = []
    for dataset in spec["datasets"]:
        grids, pixels, masks = [], [], []
        ratios = {CORRECTED: [], AUTHORS: []}
        for sample in _samples(dataset, spec.get("limit")):
            image = load_image(sample.image_path)
            prepared = {}
            for setting, resize in ((CORRECTED, "processor"), (AUTHORS, "qwen_vl_utils")):
                vlm.configure(image_resize=resize)
                question = vlm.prepare(image, sample.question)
                mask = gt_mask(question.layout, sample.boxes)
                raw = vlm.attention(question)
                generic = vlm.attention(vlm.prepare_generic(image))
                ratios[setting].append(_mean_ratio(vlm, raw, generic, mask))
                prepared[setting] = (question, mask)
            (a, mask_a), (b, mask_b) = prepared[CORRECTED], prepared[AUTHORS]
            same = a.layout.grids == b.layout.grids
            grids.append(not same)
            if same:
                pa, pb = (p.inputs["pixel_values"].float() for p in (a, b))
                pixels.append(float((pa - pb).abs().mean()))
            masks.append(not (same and np.array_equal(mask_a, mask_b)))
        vlm.configure(image_resize="processor")
        base = {"setting": "Qwen pixels", "model": spec["model"], "dataset": dataset}
        ids = range(len(grids))
        paired = _paired(
            pd.DataFrame({"sample_id": ids, "r": ratios[CORRECTED]}),
            pd.DataFrame({"sample_id": ids, "r": ratios[AUTHORS]}),
            "r",
            n_boot,
        )
        effects += [
            _effect(base, "share of images whose token grid differs", np.mean(grids), len(grids)),
            _effect(
                base,
                "mean absolute pixel difference (normalised units) where the grid is the same",
                np.mean(pixels) if pixels else np.nan,
                len(pixels),
            ),
            _effect(
                base,
                "share of samples whose ground-truth tokens change",
                np.mean(masks),
                len(masks),
            ),
            {
                **base,
                "measure": "mean attention ratio (mean over layers)",
                "corrected": float(np.mean(ratios[CORRECTED])),
                "authors": float(np.mean(ratios[AUTHORS])),
                **paired,
            },
        ]
    return {"effects": effects}


def precision_effect(profile: str, spec: dict, n_boot: int = 2000) -> dict:
    """``attention_precision`` ``model`` (the authors': eager weights in the model dtype,
    head mean in it) against ``float32`` (ours) on the same model loaded in
    ``spec["dtype"]`` (default ``bfloat16``, what a GPU runs). ``spec``: ``model``,
    ``dataset``, ``limit``, the triage's ``heads`` (given) or ``calibration`` and
    ``top_k`` (ranked on the profile's calibration job), ``percentile``. Per sample: the
    largest relative difference of the raw layer maps, the share of image tokens whose
    triage label (below the percentile or not; layer denominator) flips, whether any
    flips, and the paired
    difference of the mean attention ratio."""
    from vgutils.models import load_model
    from vgutils.refine import RefineSettings, triage
    from vgutils.scoring import head_mean

    dtype = spec.get("dtype", "bfloat16")
    vlm = load_model(spec["model"], device=spec.get("device", "auto"), dtype=dtype)
    heads = RefineSettings.from_spec({**spec, "layers": "heads"})
    if heads.heads is None:  # ranked on the profile's calibration job
        calibration = job_dir(profile, find_job(profile, spec["model"], spec["calibration"]))
        heads = replace(heads, heads_from=str(calibration))
    heads = list(heads.resolve().heads)
    percentile = spec.get("percentile", 80)
    rows = {CORRECTED: [], AUTHORS: []}
    relative, flipped, any_flip = [], [], []
    for sample in _samples(spec["dataset"], spec.get("limit")):
        image = load_image(sample.image_path)
        found, raw = {}, {}
        for setting, precision in ((CORRECTED, "float32"), (AUTHORS, "model")):
            vlm.configure(attention_precision=precision)
            found[setting] = triage(
                vlm, image, sample.question, heads, percentile, denominator="layer"
            )
            question, generic = found[setting].question_heads, found[setting].generic_heads
            raw[setting] = head_mean(question, vlm.head_mean_dtype, axis=1)
            mask = gt_mask(found[setting].prepared.layout, sample.boxes)
            ratio = _mean_ratio(vlm, question, generic, mask)
            rows[setting].append({"sample_id": sample.id, "ratio": ratio})
        a, b = raw[CORRECTED], raw[AUTHORS]
        relative.append(float(np.max(np.abs(b - a) / np.maximum(np.abs(a), 1e-12))))
        flips = found[CORRECTED].low != found[AUTHORS].low
        flipped.append(float(flips.mean()))
        any_flip.append(bool(flips.any()))
    vlm.configure(attention_precision="float32")
    base = {"setting": "attention precision", "dataset": spec["dataset"]}
    base["model"] = f"{spec['model']} ({dtype})"
    corrected, authors = (pd.DataFrame(rows[s]) for s in (CORRECTED, AUTHORS))
    cut = f"the triage's {percentile}th percentile"
    effects = [
        _effect(
            base,
            "largest relative difference of the raw layer map (mean over samples)",
            np.mean(relative),
            len(relative),
        ),
        _effect(base, f"share of image tokens crossing {cut}", np.mean(flipped), len(flipped)),
        _effect(
            base, f"share of samples with a token crossing {cut}", np.mean(any_flip), len(any_flip)
        ),
        {
            **base,
            "measure": "mean attention ratio (mean over layers)",
            "corrected": float(corrected["ratio"].mean()),
            "authors": float(authors["ratio"].mean()),
            **_paired(corrected, authors, "ratio", n_boot),
        },
    ]
    return {"effects": effects}


def prompt_suffix_effect(profile: str, spec: dict, n_boot: int = 2000) -> dict:
    """The VGRefine prompt suffix on the multiple-choice benchmark: ``corrected`` as it is
    against ``corrected`` with the authors' ``refine_prompt_suffix`` (" Answer the
    question using a single word or phrase." after the multiple-choice prompt). ``spec``:
    ``model``, ``benchmark``, ``benchmark_datasets``, the VGRefine settings (``heads`` and
    ``layers`` given, or ``calibration`` and ``top_k``), ``limit``; the model at the
    profile's revision.
    Returns the paired difference of VGRefine accuracy (intended fallback) and the share
    of VGRefine answers that change."""
    from vgutils.mc_eval import MCOptions, run_mc
    from vgutils.protocols import REFINE_PROMPT_SUFFIX
    from vgutils.refine import RefineSettings
    from vgutils.results import RunMismatch

    heads_from = None
    if not spec.get("heads"):  # ranked on the profile's calibration job
        heads_from = str(job_dir(profile, find_job(profile, spec["model"], spec["calibration"])))
    given = RefineSettings.from_spec(spec, heads_from)
    revision = profile_revision(load_profile(profile), spec["model"])
    answers = {}
    for setting, suffix in ((CORRECTED, None), (AUTHORS, REFINE_PROMPT_SUFFIX)):
        refine = replace(given, prompt_suffix=suffix)
        subsets = spec.get("benchmark_datasets")
        options = MCOptions(
            spec["model"],
            spec["benchmark"],
            datasets=tuple(subsets) if subsets else None,
            refine=refine,
            limit=spec.get("limit"),
            revision=revision,
        )
        slug = Job(spec["model"], spec["benchmark"]).name
        folder = results_dir(profile) / f"mc__{slug}__sensitivity-suffix-{setting}"
        arguments = dict(device=spec.get("device", "auto"), n_boot=50, progress=False)
        try:
            answers[setting] = run_mc(options, folder, **arguments)[0]
        except RunMismatch:  # generated results of an older setup: recompute
            import shutil

            shutil.rmtree(folder)
            answers[setting] = run_mc(options, folder, **arguments)[0]
    a, b = answers[CORRECTED], answers[AUTHORS]
    changed = a[["sample_id", "refined_output"]].merge(
        b[["sample_id", "refined_output"]], on="sample_id"
    )
    differs = changed["refined_output_x"] != changed["refined_output_y"]
    base = {"setting": "VGRefine prompt suffix", "model": spec["model"]}
    base["dataset"] = spec["benchmark"]
    effects = [
        {
            **base,
            "measure": "VGRefine multiple-choice accuracy",
            "corrected": float(a["refined_correct"].mean()),
            "authors": float(b["refined_correct"].mean()),
            **_paired(a, b, "refined_correct", n_boot),
        },
        _effect(base, "share of VGRefine answers that change", differs.mean(), len(changed)),
    ]
    return {"effects": effects}


def data_settings_effect(profile: str, spec: dict) -> dict:
    """``box_overhang`` and ``image_mode`` on the data itself. ``spec``: ``datasets``,
    ``family`` (whose authors' image mode is compared, default ``llava_qwen2``). Per
    dataset: rows kept under ``clamp`` minus rows kept under ``drop``, and the images
    whose RGB pixels differ between the authors' conversion and ours (``composite``)."""
    from PIL import Image

    from vgutils.data.images import to_rgb
    from vgutils.protocols import get_protocol

    family = spec.get("family", "llava_qwen2")
    mode = get_protocol(AUTHORS).for_family("image_mode", family)
    effects = []
    for dataset in spec["datasets"]:
        kept = {rule: len(_samples(dataset, None, rule)) for rule in ("drop", "clamp")}
        paths = sorted({s.image_path for s in _samples(dataset, None, "clamp")})
        differ = 0
        for path in paths:
            if path.suffix.lower() in (".dcm", ".dicom"):
                continue  # read the same way in every mode
            with Image.open(path) as image:
                image.load()
                ours, theirs = to_rgb(image, "composite"), to_rgb(image, mode)
                differ += not np.array_equal(np.asarray(ours), np.asarray(theirs))
        base = {"model": f"family {family}", "dataset": dataset}
        effects += [
            {
                **base,
                "setting": "box overhang",
                "measure": "count of rows kept (clamp minus drop)",
                "corrected": kept["drop"],
                "authors": kept["clamp"],
                "difference": kept["clamp"] - kept["drop"],
                "n": kept["clamp"],
            },
            {
                **base,
                "setting": f"image mode ({mode})",
                "measure": "count of images whose pixels differ from composite",
                "difference": differ,
                "n": len(paths),
            },
        ]
    return {"effects": effects}


SETTINGS = {
    "precision": precision_effect,
    "qwen_pixels": qwen_resize_effect,
    "prompt_suffix": prompt_suffix_effect,
}
"""The profile's ``sensitivity`` keys measured by running a model (and the function)."""


def settings_effects(profile: str, spec: dict, n_boot: int = 2000) -> list[dict]:
    """Every comparison of :data:`SETTINGS` and ``data`` (:func:`data_settings_effect`)
    the profile's ``sensitivity`` block ``spec`` configures, in that order."""
    results = [
        function(profile, spec[key], n_boot=n_boot)
        for key, function in SETTINGS.items()
        if spec.get(key)
    ]
    if spec.get("data"):
        results.append(data_settings_effect(profile, spec["data"]))
    return results

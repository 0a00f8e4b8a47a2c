"""What each protocol choice changes (notebook 06): the same model on the same data under
the authors' setting and the corrected one, one setting at a time.

Three comparisons, each configured in the profile's ``sensitivity`` section:

- ``box_mapping``: a pad-to-square LLaVA-style model on non-square images, ground truth
  on the token grid by the processor's real geometry vs the authors' scaled mapping
  (two extraction jobs that differ only in ``box_mapping``);
- ``resolution``: a Qwen2.5-VL-family model at its native resolution vs the authors' cap
  (two jobs that differ only in ``processor`` kwargs), plus token counts, grid and time
  per image size;
- ``refine``: VGRefine accuracy under ``corrected``, ``authors``, and ``corrected`` with
  one authors' setting switched at a time.

Effect sizes are paired differences (authors minus corrected, same samples) with 95%
percentile bootstrap intervals over samples.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from vgutils.data import load_dataset, load_image
from vgutils.figdata import curves
from vgutils.jobs import Job, find_job, job_dir
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
        if pd.notna(row.get("corrected")) and pd.notna(row.get("authors")):
            text += f": corrected {row['corrected']:.3f}, authors {row['authors']:.3f}"
        if pd.notna(row.get("ci_low")):
            text += (
                f"; difference {row['difference']:+.3f} "
                f"(95% CI {row['ci_low']:+.3f} to {row['ci_high']:+.3f}, n = {int(row['n'])})"
            )
        elif "share" in str(row["measure"]):
            text += f": {row['difference']:.0%} (n = {int(row['n'])})"
        if pd.notna(row.get("best_layer_corrected")):
            same = row["best_layer_corrected"] == row["best_layer_authors"]
            text += (
                f"; best (lowest-KL) layer corrected {int(row['best_layer_corrected'])}, "
                f"authors {int(row['best_layer_authors'])}" + (" (same)" if same else "")
            )
        lines.append(text + ".")
    return "\n".join(lines)

"""From a profile's extraction results to the tables the figures draw, and the short
"what the numbers say" texts computed from them (no hard-coded claims)."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd

from vgutils.data import load_dataset, load_image, resolve_dataset
from vgutils.jobs import find_job, job_dir, load_jobs_metrics
from vgutils.results import RunMismatch, load_maps, load_metrics
from vgutils.stats import LOWER_IS_BETTER, best_layers, domain_difference, layer_curves

METRICS = ("attention_ratio", "kl", "js")


def layer_map_rows(profile: str, spec: dict) -> list[dict]:
    """Rows for :func:`vgutils.plots.layer_maps_figure`. ``spec``: ``models`` (list),
    ``samples`` ({dataset: [sample ids] or a count of first finished samples})."""
    rows = []
    for model in spec["models"]:
        for dataset, chosen in spec["samples"].items():
            folder = job_dir(profile, find_job(profile, model, dataset))
            metrics = load_metrics(folder)
            ids = list(dict.fromkeys(metrics["sample_id"]))
            ids = ids[:chosen] if isinstance(chosen, int) else [i for i in chosen if i in ids]
            samples = {s.id: s for s in load_dataset(dataset)}
            for sample_id in ids:
                maps = load_maps(folder, sample_id)
                per_layer = metrics[metrics["sample_id"] == sample_id].sort_values("layer")
                rows.append(
                    {
                        "title": f"{model} · {dataset}: {samples[sample_id].question}",
                        "model": model,
                        "dataset": dataset,
                        "sample_id": sample_id,
                        "domain": per_layer["domain"].iloc[0] if "domain" in per_layer else None,
                        "image": load_image(samples[sample_id].image_path),
                        "maps": maps["normalized"],
                        "layout": maps["layout"],
                        "boxes": maps["boxes"],
                        "kl": per_layer["kl"].to_numpy(),
                        "attention_ratio": per_layer["attention_ratio"].to_numpy(),
                    }
                )
    return rows


def describe_layer_maps(rows: list[dict]) -> str:
    """One line per shown sample: its best (min-KL) layer and the ratio there."""
    lines = []
    for row in rows:
        best = int(np.argmin(row["kl"]))
        lines.append(
            f"- **{row['model']}**, {row['dataset']} `{row['sample_id']}`: lowest KL at layer "
            f"{best} (KL {row['kl'][best]:.3f}); attention ratio there "
            f"{row['attention_ratio'][best]:.2f} (1 = chance)."
        )
    return "\n".join(lines)


def domain_metrics(profile: str, spec: dict, strategy: str = "last") -> pd.DataFrame:
    """Metrics of ``spec["models"]`` on the datasets of ``spec["medical"]`` and
    ``spec["natural"]`` (a name or a list each), with a ``domain`` column."""
    frames = []
    for domain in ("medical", "natural"):
        datasets = spec[domain] if isinstance(spec[domain], list) else [spec[domain]]
        jobs = [find_job(profile, m, d, strategy) for m in spec["models"] for d in datasets]
        frame = load_jobs_metrics(profile, jobs)
        frame["domain"] = domain
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def strategy_metrics(profile: str, spec: dict) -> pd.DataFrame:
    """Metrics of ``spec["models"]`` x ``spec["datasets"]`` for each token strategy."""
    jobs = [
        find_job(profile, m, d, s)
        for m in spec["models"]
        for d in spec["datasets"]
        for s in ("last", "question", "all")
    ]
    return load_jobs_metrics(profile, jobs)


def curves(
    metrics: pd.DataFrame, by: list[str], n_boot: int = 2000, names: tuple = METRICS
) -> pd.DataFrame:
    """Long table of per-layer means and 95% bootstrap bands for every metric."""
    frames = []
    for name in names:
        frame = layer_curves(metrics, name, by, n_boot=n_boot)
        frame["metric"] = name
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def summary_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """Per model x domain and metric: best layer and its mean; plus, at the model's best
    KL layer on natural images, the medical-vs-natural test (Mann-Whitney U)."""
    rows = []
    for name in METRICS:
        best = best_layers(metrics, name, ["model", "domain"])
        for record in best.to_dict("records"):
            rows.append({"metric": name, **record})
    table = pd.DataFrame(rows)
    tests = []
    for model, frame in metrics.groupby("model", sort=False):
        natural = frame[frame["domain"] == "natural"]
        reference = natural if len(natural) else frame
        layer = int(reference.groupby("layer")["kl"].mean().idxmin())
        for name in METRICS:
            tests.append({"model": model, "metric": name, **domain_difference(frame, name, layer)})
    return table.merge(
        pd.DataFrame(tests), on=["model", "metric"], how="left", suffixes=("", "_test")
    )


def describe_curves(summary: pd.DataFrame) -> str:
    """Per model: best-layer ratio and KL for medical vs natural and the test's p-value."""
    lines = []
    for model, frame in summary.groupby("model", sort=False):
        ratio = frame[frame["metric"] == "attention_ratio"].set_index("domain")
        kl = frame[frame["metric"] == "kl"].set_index("domain")
        parts = []
        for domain in ("natural", "medical"):
            if domain in ratio.index:
                parts.append(
                    f"{domain}: best ratio {ratio.loc[domain, 'best_mean']:.2f} (layer "
                    f"{int(ratio.loc[domain, 'best_layer'])}), lowest KL "
                    f"{kl.loc[domain, 'best_mean']:.3f} (layer {int(kl.loc[domain, 'best_layer'])})"
                )
        test = frame[frame["metric"] == "kl"].iloc[0]
        verdict = (
            f"KL at layer {int(test['layer'])}: natural {test['mean_natural']:.3f} vs medical "
            f"{test['mean_medical']:.3f}, Mann-Whitney p = {test['p_value']:.3g} "
            f"(n = {int(test['n_natural'])} / {int(test['n_medical'])})"
        )
        lines.append(f"- **{model}** — " + "; ".join(parts) + f". {verdict}.")
    return "\n".join(lines)


def chance_kl(metrics: pd.DataFrame) -> pd.DataFrame:
    """Per model x domain: the mean over samples of ``log(N / k)``, the KL(U_G || P) of a
    uniform map ``P`` (``N`` image tokens, ``k`` of them in the box: smaller boxes give a
    larger KL whatever the model does), beside the model's mean KL over layers and
    samples and the box's share of the image tokens."""
    per_sample = metrics.drop_duplicates(["model", "domain", "sample_id"]).assign(
        chance=lambda f: np.log(f["n_tokens"] / f["n_gt_tokens"]),
        box_share=lambda f: f["n_gt_tokens"] / f["n_tokens"],
    )
    table = per_sample.groupby(["model", "domain"], sort=False)[["chance", "box_share"]].mean()
    table["mean_kl"] = metrics.groupby(["model", "domain"], sort=False)["kl"].mean()
    return table.reset_index()


def describe_chance_kl(metrics: pd.DataFrame, control: str | None = None) -> str:
    """Why a random model's KL differs between domains: box size, computed from the data.
    ``control``: the model to describe (default: each model)."""
    table = chance_kl(metrics)
    if control is not None:
        table = table[table["model"] == control]
    lines = []
    for model, frame in table.groupby("model", sort=False):
        parts = [
            f"{r.domain}: boxes cover {r.box_share:.1%} of the image tokens on average, so a "
            f"uniform map has KL log(N/k) = {r.chance:.2f}; the model's mean KL is "
            f"{r.mean_kl:.2f}"
            for r in frame.itertuples()
        ]
        lines.append(f"- **{model}** — " + "; ".join(parts) + ".")
    return (
        "KL(U_G || P) depends on the box size: for a near-uniform map P it equals log(N/k) "
        "(N image tokens, k in the box), so a domain with smaller boxes has a larger KL "
        "even for a model that looks nowhere in particular. The attention ratio does not "
        "have this offset (1 = chance for any box size).\n" + "\n".join(lines)
    )


def strategy_summary(metrics: pd.DataFrame) -> pd.DataFrame:
    """Best-layer mean of each metric per model x domain x strategy."""
    rows = []
    for name in METRICS:
        best = best_layers(metrics, name, ["model", "domain", "strategy"])
        best["metric"] = name
        rows.append(best)
    return pd.concat(rows, ignore_index=True)


def describe_strategies(summary: pd.DataFrame) -> str:
    """Which strategy grounds best (best-layer KL) for each model and domain."""
    lines = []
    kl = summary[summary["metric"] == "kl"]
    for (model, domain), frame in kl.groupby(["model", "domain"], sort=False):
        ordered = frame.sort_values("best_mean", ascending=LOWER_IS_BETTER["kl"])
        ranking = ", ".join(
            f"{r.strategy} {r.best_mean:.3f} (layer {int(r.best_layer)})"
            for r in ordered.itertuples()
        )
        lines.append(f"- **{model}**, {domain}: lowest KL by strategy: {ranking}.")
    return "\n".join(lines)


def refine_cases(profile: str, spec: dict) -> list[dict]:
    """Rows for :func:`vgutils.plots.failure_cases_figure`: VGRefine on ``spec["cases"]``
    ({dataset: [sample ids] or a count}) with heads ranked on ``spec["calibration"]``."""
    from vgutils.models import load_model
    from vgutils.refine import answer, rank_heads

    model = spec["model"]
    heads = rank_heads(
        load_metrics(
            job_dir(profile, find_job(profile, model, spec["calibration"])), "head_metrics"
        ),
        top_k=spec.get("top_k", 10),
    )
    vlm = load_model(model, device=spec.get("device", "auto"))
    layers = spec.get("layers") or sorted({layer for layer, _ in heads})
    rows = []
    for dataset, chosen in spec["cases"].items():
        samples = load_dataset(dataset)
        picked = (
            samples[:chosen]
            if isinstance(chosen, int)
            else [s for s in samples if s.id in set(chosen)]
        )
        entry = resolve_dataset(dataset).entry
        domain = entry.domain if entry is not None else None
        for sample in picked:
            image = load_image(sample.image_path)
            result = answer(
                vlm,
                image,
                sample.question,
                heads,
                layers,
                spec.get("percentile", 80),
                spec.get("max_new_tokens", 8),
            )
            rows.append(
                {
                    "title": f"{dataset}: {sample.question}",
                    "sample_id": sample.id,
                    "domain": domain,
                    "image": image,
                    "layout": result.triage.prepared.layout,
                    "boxes": sample.boxes,
                    "truth": sample.answer,
                    "before": result.map_before[layers].mean(axis=0),
                    "after": result.map_after[layers].mean(axis=0),
                    "baseline": result.baseline_answer,
                    "refined": result.answer,
                    "low": result.triage.low,
                }
            )
    return rows


def vqa_accuracy(profile: str, spec: dict) -> pd.DataFrame:
    """Baseline and VGRefine accuracy on ``spec["vqa_datasets"]`` (runs cached in
    ``results/<profile>/vqa__...``)."""
    from vgutils.jobs import Job
    from vgutils.paths import results_dir
    from vgutils.vqa import VQAOptions, run_vqa

    model = spec["model"]
    calibration = job_dir(profile, find_job(profile, model, spec["calibration"]))
    tables = []
    for dataset in spec["vqa_datasets"]:
        options = VQAOptions(
            model=model,
            dataset=dataset,
            refine=True,
            heads_from=str(calibration),
            top_k=spec.get("top_k", 10),
            layers=tuple(spec["layers"]) if spec.get("layers") else None,
            percentile=spec.get("percentile", 80),
            max_new_tokens=spec.get("max_new_tokens", 8),
            limit=spec.get("limit"),
        )
        folder = results_dir(profile) / f"vqa__{Job(model, dataset).name}"
        device = spec.get("device", "auto")
        try:
            _, table, _ = run_vqa(options, folder, device=device, progress=False)
        except RunMismatch:  # generated results of an older setup: recompute them
            shutil.rmtree(folder)
            _, table, _ = run_vqa(options, folder, device=device, progress=False)
        tables.append(table.assign(dataset=dataset))
    return pd.concat(tables, ignore_index=True)


def describe_refine(rows: list[dict], accuracy: pd.DataFrame) -> str:
    """Which cases changed answer under VGRefine, and the accuracy change."""
    lines = []
    for row in rows:
        changed = "changed" if row["baseline"] != row["refined"] else "unchanged"
        lines.append(
            f"- `{row['sample_id']}` (truth *{row['truth']}*): baseline *{row['baseline']}*, "
            f"VGRefine *{row['refined']}* ({changed}; {int(row['low'].sum())} of "
            f"{len(row['low'])} image tokens knocked out)."
        )
    for record in accuracy.to_dict("records"):
        lines.append(
            f"- {record['dataset']}, {record['questions']} (n = {record['n']}): exact-match "
            f"accuracy {record['baseline_exact']:.3f} without, {record['refined_exact']:.3f} "
            "with VGRefine."
        )
    return "\n".join(lines)

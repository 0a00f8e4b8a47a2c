"""From a profile's extraction results to the tables the figures draw, and the short
"what the numbers say" texts computed from them (no hard-coded claims)."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd

from vgutils.data import load_dataset, load_image, resolve_dataset
from vgutils.jobs import find_job, job_dir, load_jobs_metrics, load_profile
from vgutils.plots import model_label
from vgutils.results import load_maps, load_metrics
from vgutils.stats import LOWER_IS_BETTER, best_layers, domain_difference, layer_curves

METRICS = ("attention_ratio", "kl", "js")


def layer_map_rows(profile: str, spec: dict) -> list[dict]:
    """Rows for :func:`vgutils.plots.layer_maps_figure`. ``spec``: ``models`` (list),
    ``samples`` ({dataset: [sample ids] or a count of first finished samples}); or
    ``panels``, a list of such specs drawn one after the other (the supplement's Fig 1:
    three medical models on COCO, then LLaVA-1.5 on VGMed)."""
    if "panels" in spec:
        return [row for panel in spec["panels"] for row in layer_map_rows(profile, panel)]
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
                        "title": f"{model_label(model)} · {dataset}: {samples[sample_id].question}",
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


AGAINST = "**against the paper's claim**"


def curve_verdicts(
    frame: pd.DataFrame, chance: pd.DataFrame | None = None
) -> list[tuple[bool | None, str]]:
    """One model's rows of :func:`summary_table`, read against the paper's claim (natural
    images: a higher best-layer ratio, a lower lowest KL, attention above chance at the
    natural domain's lowest-KL layer): ``(supports, sentence)`` per comparison.
    ``supports`` is None where the printed values are equal (no contrast either way), a
    domain is missing, the test is not significant, or box size alone would give the KL
    difference. ``chance``: this model's rows of :func:`chance_kl`; with it the KL
    comparisons are made against a uniform map's KL ``log(N/k)`` per domain."""
    ratio = frame[frame["metric"] == "attention_ratio"].set_index("domain")
    kl = frame[frame["metric"] == "kl"].set_index("domain")
    domains = {"natural", "medical"}
    if not domains <= set(ratio.index) or not domains <= set(kl.index):
        return [(None, "one domain only: no medical-vs-natural comparison")]
    uniform = None
    if chance is not None and domains <= set(chance["domain"]):
        uniform = chance.set_index("domain")["chance"]
    verdicts = []
    r_nat, r_med = ratio.loc["natural", "best_mean"], ratio.loc["medical", "best_mean"]
    shown = f"({r_nat:.2f} vs {r_med:.2f} medical)"
    if round(r_nat, 2) == round(r_med, 2):
        verdicts.append(
            (
                None,
                f"the best-layer ratio is the same on both domains {shown}: "
                "no contrast, neither for nor against the claim",
            )
        )
    elif r_nat > r_med:
        verdicts.append(
            (True, f"the best-layer ratio is higher on natural images {shown}, as the paper claims")
        )
    else:
        verdicts.append(
            (False, f"the best-layer ratio is **not** higher on natural images {shown}: {AGAINST}")
        )
    k_nat, k_med = kl.loc["natural", "best_mean"], kl.loc["medical", "best_mean"]
    if uniform is not None:
        e_nat, e_med = k_nat - uniform["natural"], k_med - uniform["medical"]
        shown = (
            f"lowest KL minus a uniform map's: natural {k_nat:.3f} - {uniform['natural']:.3f} "
            f"= {e_nat:+.3f}, medical {k_med:.3f} - {uniform['medical']:.3f} = {e_med:+.3f}"
        )
    else:
        e_nat, e_med = k_nat, k_med
        shown = f"lowest KL: natural {k_nat:.3f}, medical {k_med:.3f}"
    if round(e_nat, 3) == round(e_med, 3):
        verdicts.append((None, f"{shown}: the same on both domains, no contrast"))
    elif e_nat < e_med:
        verdicts.append((True, f"{shown}: lower on natural images, as the paper claims"))
    else:
        verdicts.append(
            (
                False,
                f"{shown}: the medical domain's is **lower**: {AGAINST}"
                + ("" if uniform is not None else " (KL also grows as boxes shrink)"),
            )
        )
    at = frame[frame["metric"] == "attention_ratio"].iloc[0]
    if pd.notna(at.get("mean_natural")):
        layer, value = int(at["layer"]), at["mean_natural"]
        where = f"at the natural domain's lowest-KL layer ({layer}) the natural ratio is"
        if round(value, 2) < 1:
            verdicts.append(
                (
                    False,
                    f"{where} **below chance** ({value:.2f} < 1: the box gets "
                    f"less than its uniform share): {AGAINST}",
                )
            )
        elif round(value, 2) == 1:
            verdicts.append((None, f"{where} at chance ({value:.2f})"))
        else:
            verdicts.append((True, f"{where} above chance ({value:.2f})"))
    test = frame[frame["metric"] == "kl"].iloc[0]
    if pd.isna(test.get("p_value")):
        verdicts.append((None, "no test (a domain has no samples at that layer)"))
        return verdicts
    layer, p = int(test["layer"]), test["p_value"]
    nat, med = test["mean_natural"], test["mean_medical"]
    where = (
        f"KL at layer {layer}: natural {nat:.3f} vs medical {med:.3f}, Mann-Whitney p = "
        f"{p:.3g} (n = {int(test['n_natural'])} / {int(test['n_medical'])})"
    )
    if p >= 0.05:
        verdicts.append((None, f"{where}: not a significant difference at 5%"))
    elif uniform is not None and (nat < med) == (uniform["natural"] < uniform["medical"]):
        verdicts.append(
            (
                None,
                f"{where}: significant, but a uniform map's KL differs the "
                f"same way ({uniform['natural']:.3f} vs {uniform['medical']:.3f}): "
                "box size alone gives such a difference",
            )
        )
    elif nat < med:
        verdicts.append((True, f"{where}: significantly lower on natural images, as claimed"))
    else:
        verdicts.append((False, f"{where}: significantly **higher** on natural images: {AGAINST}"))
    return verdicts


def describe_curves(summary: pd.DataFrame, chance: pd.DataFrame | None = None) -> str:
    """Per model: best-layer ratio and KL for medical vs natural, the ratio at the natural
    domain's lowest-KL layer and the test, each saying whether it supports the paper's
    claim, goes against it, or shows no contrast, and a one-line overall reading.
    ``chance``: :func:`chance_kl` of the same metrics (KL read against box size)."""
    lines = []
    for model, frame in summary.groupby("model", sort=False):
        mine = None if chance is None else chance[chance["model"] == model]
        verdicts = curve_verdicts(frame, mine)
        said = [v for v, _ in verdicts if v is not None]
        against = sum(1 for v in said if not v)
        if not said:
            overall = "no comparison below shows a contrast either way"
        elif against == 0:
            overall = f"{len(said)} of {len(verdicts)} comparisons go the paper's way, none against"
        elif against == len(said):
            overall = (
                f"{against} of {len(verdicts)} comparisons go **against** the paper's claim, "
                "none for it"
            )
        else:
            overall = (
                f"mixed: {against} of {len(verdicts)} comparisons go **against** the claim, "
                f"{len(said) - against} its way"
            )
        lines.append(f"- **{model}** — {overall}:")
        lines += [f"  - {sentence}." for _, sentence in verdicts]
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
    """Which strategy grounds best (best-layer KL) for each model and domain, and whether
    that supports the paper's claim that ``last`` grounds as well as or better."""
    lines = []
    kl = summary[summary["metric"] == "kl"]
    for (model, domain), frame in kl.groupby(["model", "domain"], sort=False):
        ordered = frame.sort_values("best_mean", ascending=LOWER_IS_BETTER["kl"])
        ranking = ", ".join(
            f"{r.strategy} {r.best_mean:.3f} (layer {int(r.best_layer)})"
            for r in ordered.itertuples()
        )
        line = f"- **{model}**, {domain}: lowest KL by strategy: {ranking}"
        if "last" in set(ordered["strategy"]):
            first = ordered.iloc[0]
            last = ordered[ordered["strategy"] == "last"].iloc[0]
            if first["best_mean"] < last["best_mean"]:
                line += (
                    f"; `{first['strategy']}` grounds better than `last`: {AGAINST} (`last` "
                    "as well as or better than the others)"
                )
            else:
                line += "; `last` grounds as well as or better than the others, as claimed"
        lines.append(line + ".")
    return "\n".join(lines)


def refine_settings(spec: dict, heads_from: str | None = None):
    """The :class:`vgutils.refine.RefineSettings` a profile block gives (``heads``,
    ``layers``, ``top_k``, ``percentile``, ``denominator``, ``include_generated``,
    ``prompt_suffix``; absent: the protocol's), heads ranked on ``heads_from`` unless
    given."""
    from vgutils.refine import RefineSettings

    return RefineSettings.from_spec(spec, heads_from)


def refine_options(profile: str, spec: dict, dataset: str, protocol: str | None = None):
    """The resolved :class:`vgutils.vqa.VQAOptions` of the profile's VGRefine under
    ``protocol`` (default: the profile's): the protocol's settings, with the ones ``spec``
    sets (:func:`refine_settings`, ``max_new_tokens``, ``decoding``) overriding them; given
    ``heads`` and ``layers`` apply under every protocol. Heads not given are ranked on the
    calibration job of the same protocol, else of the profile's protocol."""
    from vgutils.vqa import VQAOptions, resolve_vqa_options

    protocol = protocol or load_profile(profile).get("protocol", "corrected")
    model = spec["model"]
    heads_from = None
    if spec.get("calibration"):
        try:
            calibration = find_job(profile, model, spec["calibration"], protocol=protocol)
        except KeyError:
            calibration = find_job(profile, model, spec["calibration"])
        heads_from = str(job_dir(profile, calibration))
    return resolve_vqa_options(
        VQAOptions(
            model=model,
            dataset=dataset,
            refine=refine_settings(spec, heads_from),
            max_new_tokens=spec.get("max_new_tokens"),
            decoding=spec.get("decoding"),
            limit=spec.get("limit"),
            protocol=protocol,
        )
    )


def refine_protocols(profile: str, spec: dict) -> list[str]:
    """The protocols the profile's VGRefine figure shows (``spec["protocols"]``, default:
    the profile's protocol)."""
    return list(spec.get("protocols") or [load_profile(profile).get("protocol", "corrected")])


def refine_cases(profile: str, spec: dict, protocol: str | None = None) -> list[dict]:
    """Rows for :func:`vgutils.plots.failure_cases_figure`: VGRefine under ``protocol`` on
    ``spec["cases"]`` ({dataset: [sample ids] or a count}) with heads ranked on
    ``spec["calibration"]`` (settings: :func:`refine_options`)."""
    from vgutils.models import load_model
    from vgutils.protocols import DECODINGS

    options = refine_options(profile, spec, spec["calibration"], protocol)
    vlm = load_model(
        options.model,
        device=spec.get("device", "auto"),
        processor_kwargs=options.processor_kwargs,
        image_resize=options.image_resize,
        attention_precision=options.attention_precision,
    )
    refine = options.refine
    refine.check_model(vlm)
    layers = list(refine.layers)
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
            image = load_image(sample.image_path, options.image_mode)
            result = refine.answer(
                vlm,
                image,
                sample.question,
                options.max_new_tokens,
                generation=DECODINGS[options.decoding],
            )
            rows.append(
                {
                    "title": f"{dataset}: {sample.question}",
                    "sample_id": sample.id,
                    "protocol": options.protocol,
                    "knockout_layers": layers,
                    "heads": refine.describe(),
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


def fresh_vqa(options, folder, device: str = "auto"):
    """``run_vqa`` into a generated results folder; a folder left by other options or an
    older version of the code is recomputed (as ``jobs.ensure_results`` does)."""

    from vgutils.results import RunMismatch
    from vgutils.vqa import run_vqa

    try:
        return run_vqa(options, folder, device=device, progress=False)
    except RunMismatch as err:
        print(f"{folder.name}: recomputing ({str(err).splitlines()[0]})")
        shutil.rmtree(folder)
        return run_vqa(options, folder, device=device, progress=False)


def _answer_changes(answers: pd.DataFrame) -> dict:
    """How VGRefine changed the answers of one question kind: share changed, right ->
    wrong and wrong -> right counts (exact match), mean share of ground-truth tokens the
    triage knocked out."""
    right, refined = answers["baseline_exact"] == 1, answers["refined_exact"] == 1
    knocked = answers["gt_knocked"] / answers["gt_tokens"] if "gt_knocked" in answers else None
    return {
        "changed": float((answers["baseline"] != answers["refined"]).mean()),
        "right_to_wrong": int((right & ~refined).sum()),
        "wrong_to_right": int((~right & refined).sum()),
        "gt_knocked_share": float(knocked.mean()) if knocked is not None else np.nan,
    }


def vqa_accuracy(profile: str, spec: dict, protocol: str | None = None) -> pd.DataFrame:
    """Baseline and VGRefine accuracy on ``spec["vqa_datasets"]`` under ``protocol``
    (runs cached in ``results/<profile>/vqa__...``; the folder name says the protocol when
    it is not ``corrected``), with ``protocol``, the knockout layers and how many
    ground-truth tokens the triage knocked out."""
    from vgutils.jobs import Job
    from vgutils.paths import results_dir
    from vgutils.vqa import accuracy_table

    tables = []
    for dataset in spec["vqa_datasets"]:
        options = refine_options(profile, spec, dataset, protocol)
        name = Job(options.model, dataset, protocol=options.protocol).name
        folder = results_dir(profile) / f"vqa__{name}"
        answers, table, _ = fresh_vqa(options, folder, spec.get("device", "auto"))
        table = accuracy_table(answers).assign(
            dataset=dataset,
            protocol=options.protocol,
            knockout_layers=" ".join(map(str, options.refine.layers)),
            heads=f"{len(options.refine.heads)} {options.refine.heads_source}",
            percentile=options.refine.percentile,
        )
        changes = [_answer_changes(frame) for _, frame in answers.groupby("closed")]
        table = pd.concat([table, pd.DataFrame(changes)], axis=1)
        tables.append(table)
    return pd.concat(tables, ignore_index=True)


def describe_refine(rows: list[dict], accuracy: pd.DataFrame) -> str:
    """Which cases changed answer under VGRefine (per protocol), and the accuracy change
    per protocol, dataset and question kind, saying in words when VGRefine lowers
    accuracy and what the numbers show about why (answers flipped, evidence knocked out)."""
    lines = []
    for row in rows:
        changed = "changed" if row["baseline"] != row["refined"] else "unchanged"
        lines.append(
            f"- [{row.get('protocol', '')}] `{row['sample_id']}` (truth *{row['truth']}*): "
            f"baseline *{row['baseline']}*, VGRefine *{row['refined']}* ({changed}; "
            f"{int(row['low'].sum())} of {len(row['low'])} image tokens knocked out in "
            f"layer(s) {', '.join(map(str, row.get('knockout_layers', [])))})."
        )
    for record in accuracy.to_dict("records"):
        before, after = record["baseline_exact"], record["refined_exact"]
        delta = after - before
        verdict = (
            "VGRefine **lowers** accuracy"
            if delta < 0
            else "VGRefine raises accuracy"
            if delta > 0
            else "VGRefine leaves accuracy unchanged"
        )
        line = (
            f"- **{record.get('protocol', '')}**, {record['dataset']}, {record['questions']} "
            f"(n = {record['n']}; knockout layer(s) {record.get('knockout_layers', '?')}): "
            f"exact match {before:.3f} without, {after:.3f} with VGRefine ({delta:+.3f}): "
            f"{verdict}."
        )
        if "changed" in record and pd.notna(record["changed"]):
            line += (
                f" {record['changed']:.0%} of the answers change: "
                f"{record['right_to_wrong']} right -> wrong, "
                f"{record['wrong_to_right']} wrong -> right."
            )
        share = record.get("gt_knocked_share")
        if share is not None and pd.notna(share):
            line += (
                f" The triage knocks out {share:.0%} of the ground-truth tokens on average "
                f"(the cut removes about {record.get('percentile', 80):.0f}% of all tokens)"
                + (
                    ", so part of the evidence the answer needs is cut away."
                    if delta < 0 and share > 0
                    else "."
                )
            )
        lines.append(line)
    return "\n".join(lines)

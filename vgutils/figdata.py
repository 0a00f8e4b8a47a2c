"""From a profile's extraction results to the tables the figures draw, and the short
"what the numbers say" texts computed from them (no hard-coded claims)."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd

from vgutils.data import load_dataset, load_image, resolve_dataset
from vgutils.jobs import find_job, job_dir, load_jobs_metrics, load_profile, profile_revision
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
    calibration job of the same protocol, else of the profile's protocol. The model: at
    the profile's revision."""
    from vgutils.vqa import VQAOptions, resolve_vqa_options

    settings = load_profile(profile)
    protocol = protocol or settings.get("protocol", "corrected")
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
            revision=profile_revision(settings, model),
        )
    )


def refine_protocols(profile: str, spec: dict) -> list[str]:
    """The protocols the profile's VGRefine figure shows (``spec["protocols"]``, default:
    the profile's protocol)."""
    return list(spec.get("protocols") or [load_profile(profile).get("protocol", "corrected")])


def refine_cases(profile: str, spec: dict, protocol: str | None = None) -> list[dict]:
    """Rows for :func:`vgutils.plots.failure_cases_figure`: VGRefine under ``protocol`` on
    ``spec["cases"]`` ({dataset: [sample ids] or a count}) with heads ranked on
    ``spec["calibration"]`` (settings: :func:`refine_options`). Each row also has the
    oracle arm's answer (``oracle``: the same number of tokens knocked out, the ones
    outside the ground-truth boxes first; ``oracle_low`` its mask, ``box_kept`` the share
    of the box tokens the heads triage keeps): without, VGRefine and the oracle side by
    side."""
    from dataclasses import replace

    from vgutils.protocols import DECODINGS
    from vgutils.vqa import load_run_model

    options = refine_options(profile, spec, spec["calibration"], protocol)
    vlm = load_run_model(options, spec.get("device", "auto"))
    refine = options.refine
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
            asked = (vlm, image, sample.question, options.max_new_tokens)
            settings = {"generation": DECODINGS[options.decoding], "boxes": sample.boxes}
            result = refine.answer(*asked, **settings)
            oracle = replace(refine, triage="oracle").answer(  # the generic pass reused
                *asked, generic_heads=result.triage.generic_heads, **settings
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
                    "oracle": oracle.answer,
                    "oracle_low": oracle.knocked,
                    "box_kept": 1 - result.knocked_box_share,
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
        line = (
            f"- [{row.get('protocol', '')}] `{row['sample_id']}` (truth *{row['truth']}*): "
            f"baseline *{row['baseline']}*, VGRefine *{row['refined']}* ({changed}; "
            f"{int(row['low'].sum())} of {len(row['low'])} image tokens knocked out in "
            f"layer(s) {', '.join(map(str, row.get('knockout_layers', [])))})"
        )
        if "oracle" in row:
            kept = row.get("box_kept", np.nan)
            line += (
                f"; the oracle (the same number knocked out, the box kept) answers "
                f"*{row['oracle']}*"
                + (
                    f"; the heads triage kept {kept:.0%} of the box tokens"
                    if pd.notna(kept)
                    else ""
                )
            )
        lines.append(line + ".")
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


ANATOMY_SHARED = ("percentile", "limit", "max_new_tokens", "decoding", "seed", "top_k", "layers")
"""Keys of the ``anatomy`` block that every model entry takes unless it sets its own."""


def anatomy_answers(profile: str, spec: dict) -> pd.DataFrame:
    """Notebook 08: VGRefine's triage arms (``spec["arms"]``, :data:`vgutils.refine.
    TRIAGES`) on ``spec["datasets"]`` for every entry of ``spec["models"]`` (``model``,
    ``calibration`` or ``heads`` + ``layers``, optionally its own ``protocols``,
    ``datasets``, ``label``) under each of ``spec["protocols"]`` (default: the
    profile's). The block's ``percentile``, ``limit``, ``max_new_tokens``, ``top_k``,
    ``layers``, ``seed`` apply to every entry that does not set its own; ``draws``: the
    random arm's. One free-text VQA run per model x protocol x dataset x arm, cached in
    ``results/<profile>/anatomy__<job>__<arm>``. Returns their answers with ``arm``,
    ``label``, ``domain`` and ``protocol`` columns (one row per question and arm)."""
    from vgutils.jobs import Job
    from vgutils.paths import results_dir

    frames = []
    shared = {k: spec[k] for k in ANATOMY_SHARED if spec.get(k) is not None}
    for entry in spec["models"]:
        block = {**shared, **{k: v for k, v in entry.items() if v is not None}}
        if block.get("heads"):
            block.pop("top_k", None)  # given heads are used as they are
        protocols = entry.get("protocols") or refine_protocols(profile, spec)
        for protocol in protocols:
            for dataset in entry.get("datasets") or spec["datasets"]:
                entry_ = resolve_dataset(dataset).entry
                domain = entry_.domain if entry_ is not None else dataset
                for arm in spec.get("arms") or ("heads", "oracle", "random", "anti-oracle"):
                    draws = spec.get("draws") if arm == "random" else None
                    options = refine_options(
                        profile, {**block, "triage": arm, "draws": draws}, dataset, protocol
                    )
                    name = Job(options.model, dataset, protocol=options.protocol).name
                    folder = results_dir(profile) / f"anatomy__{name}__{arm}"
                    answers, _, _ = fresh_vqa(options, folder, spec.get("device", "auto"))
                    frames.append(
                        answers.assign(
                            arm=arm,
                            label=entry.get("label") or model_label(options.model),
                            domain=domain,
                            protocol=options.protocol,
                            percentile=options.refine.percentile,
                        )
                    )
    return pd.concat(frames, ignore_index=True)


ANATOMY_KEYS = ["label", "model", "protocol", "domain", "dataset"]


def anatomy_table(answers: pd.DataFrame, n_boot: int = 2000) -> pd.DataFrame:
    """One row per model x protocol x domain x arm, and one ``none`` row (no VGRefine) per
    model x protocol x domain: ``n``, ``accuracy`` (exact match; the random arm: the mean
    over its draws) with its 95% bootstrap interval, ``difference`` from no VGRefine with
    the paired bootstrap interval (``diff_low``, ``diff_high``: questions resampled with
    both answers), flips ``right_to_wrong`` and ``wrong_to_right`` (the random arm:
    expected counts, the mean over draws), ``changed`` (share of questions whose score
    changed), ``box_kept`` (mean share of the box tokens the arm keeps) and ``chance``
    (the share a random choice keeps: 1 - percentile / 100)."""
    from vgutils.stats import bootstrap_ci

    def summary(frame: pd.DataFrame, base: np.ndarray, refined: np.ndarray) -> dict:
        mean, low, high = bootstrap_ci(refined, n_boot=n_boot)
        diff, diff_low, diff_high = bootstrap_ci(refined - base, n_boot=n_boot)
        kept = 1 - frame["knocked_box_share"].to_numpy(dtype=float)
        return {
            "n": len(frame),
            "accuracy": mean,
            "ci_low": low,
            "ci_high": high,
            "difference": diff,
            "diff_low": diff_low,
            "diff_high": diff_high,
            "right_to_wrong": float((base * (1 - refined)).sum()),
            "wrong_to_right": float(((1 - base) * refined).sum()),
            "changed": float((refined != base).mean()),
            "box_kept": float(np.nanmean(kept)) if np.isfinite(kept).any() else np.nan,
            "chance": 1 - float(frame["percentile"].iloc[0]) / 100,
        }

    rows = []
    for keys, group in answers.groupby(ANATOMY_KEYS, sort=False):
        key = dict(zip(ANATOMY_KEYS, keys, strict=True))
        arms = dict(list(group.groupby("arm", sort=False)))
        first = arms.get("heads", next(iter(arms.values())))
        base = first["baseline_exact"].to_numpy(dtype=float)
        none = summary(first, base, base)
        rows.append({**key, "arm": "none", **none, "box_kept": 1.0})
        for arm, frame in arms.items():
            base = frame["baseline_exact"].to_numpy(dtype=float)
            refined = frame["refined_exact"].to_numpy(dtype=float)
            rows.append({**key, "arm": arm, **summary(frame, base, refined)})
    order = {arm: i for i, arm in enumerate(("none", *ARM_ORDER))}
    table = pd.DataFrame(rows)
    table["_order"] = table["arm"].map(order)
    return (
        table.sort_values(["label", "protocol", "domain", "_order"], kind="stable")
        .drop(columns="_order")
        .reset_index(drop=True)
    )


ARM_ORDER = ("heads", "oracle", "random", "anti-oracle")


def _verdict(row: dict) -> str:
    if row["diff_low"] > 0:
        return "raises accuracy"
    if row["diff_high"] < 0:
        return "lowers accuracy"
    return "leaves accuracy unchanged within its interval"


def describe_anatomy(table: pd.DataFrame, answers: pd.DataFrame) -> str:
    """What the arms show, from the numbers: per model, protocol and domain the accuracy
    without VGRefine and with each arm (paired interval of the difference), the flips, the
    share of the box tokens the heads triage keeps against chance; then what that says:
    whether the triage or the knockout itself is what fails."""
    lines = []
    for (label, protocol), group in table.groupby(["label", "protocol"], sort=False):
        lines.append(f"**{label}**, protocol `{protocol}`:")
        for domain, frame in group.groupby("domain", sort=False):
            by_arm = {r["arm"]: r for r in frame.to_dict("records")}
            none = by_arm["none"]
            parts = []
            for arm in ARM_ORDER:
                if arm not in by_arm:
                    continue
                r = by_arm[arm]
                parts.append(
                    f"{arm} {r['accuracy']:.3f} ({r['difference']:+.3f}, paired 95% CI "
                    f"{r['diff_low']:+.3f} to {r['diff_high']:+.3f}; "
                    f"{r['right_to_wrong']:.1f} right → wrong, "
                    f"{r['wrong_to_right']:.1f} wrong → right)"
                )
            line = (
                f"- {domain} ({none['dataset']}, n = {none['n']}): without VGRefine "
                f"{none['accuracy']:.3f}; " + "; ".join(parts) + "."
            )
            heads = by_arm.get("heads")
            if heads is not None and pd.notna(heads["box_kept"]):
                gap = heads["box_kept"] - heads["chance"]
                worse = (
                    "about chance"
                    if abs(gap) < 0.01
                    else ("less than chance" if gap < 0 else "more than chance")
                )
                line += (
                    f" The heads triage keeps {heads['box_kept']:.0%} of the box tokens; a "
                    f"random cut keeps {heads['chance']:.0%}: {worse}."
                )
            lines.append(line)
    lines.append("")
    lines.append(_anatomy_reading(table, answers))
    lines.append("")
    lines.append(_anatomy_claim(table))
    return "\n".join(lines)


def _anatomy_claim(table: pd.DataFrame) -> str:
    """What the arms mean for the paper's claim (the heads find the region and focusing
    on it helps), counted over the model x protocol x domain cells."""
    cells = []
    for _, frame in table.groupby(["label", "protocol", "domain"], sort=False):
        by_arm = {r["arm"]: r for r in frame.to_dict("records")}
        if {"heads", "oracle"} <= set(by_arm):
            cells.append(by_arm)
    if not cells:
        return ""
    helps = sum(c["oracle"]["diff_low"] > 0 for c in cells)
    heads_helps = sum(c["heads"]["diff_low"] > 0 for c in cells)
    heads_hurts = sum(c["heads"]["diff_high"] < 0 for c in cells)
    below = [
        f"{c['heads']['label']} {c['heads']['protocol']} {c['heads']['domain']}"
        for c in cells
        if pd.notna(c["heads"]["box_kept"])
        and c["heads"]["box_kept"] < c["heads"]["chance"] - 0.005
    ]
    oracle_mean = float(np.mean([c["oracle"]["difference"] for c in cells]))
    heads_mean = float(np.mean([c["heads"]["difference"] for c in cells]))
    text = (
        f"**For the paper's claim.** Over {len(cells)} model x protocol x domain cells, the "
        f"oracle raises accuracy beyond its paired interval in {helps}, the heads triage "
        f"(VGRefine) in {heads_helps} and lowers it in {heads_hurts} (mean change: oracle "
        f"{oracle_mean:+.3f}, heads {heads_mean:+.3f}). The heads keep fewer box tokens "
        f"than a random cut in {len(below)}" + (f" ({'; '.join(below)})" if below else "") + ". "
    )
    if helps == 0:
        text += (
            "With the box kept and the same number of other tokens cut, the answers do not "
            "improve anywhere: on these data removing distractors does not help even with a "
            "perfect triage, and the knockout can only lose, by how much depending on which "
            "tokens go (heads, random, anti-oracle). "
            + (
                "A triage that misses the box, as the heads do where they keep less than "
                "chance, explains part of VGRefine's loss; a better triage would at best "
                "avoid that loss, not add a gain. "
                if heads_hurts
                else "VGRefine's own changes stay within noise at this sample size; a better "
                "triage would at best avoid a loss, not add a gain. "
            )
        )
    elif helps > heads_helps:
        text += (
            "Where the oracle helps and the heads do not, the idea stands and the triage "
            "fails, as the paper's thesis says for the medical domain. "
        )
    else:
        text += "The oracle helps no more often than the heads triage. "
    return text + "Intervals are over questions (paired bootstrap); small profiles give wide ones."


def _anatomy_why(answers: pd.DataFrame, label, protocol, domain, heads: dict) -> str:
    """The per-question evidence behind a reading: the oracle's change per question type,
    and how much of their box the question(s) the heads triage turns wrong keep."""
    where = answers[["label", "protocol", "domain"]].eq([label, protocol, domain]).all(axis=1)
    sub = answers[where]
    text = ""
    oracle = sub[sub["arm"] == "oracle"]
    if len(oracle) and "q_type" in oracle:
        change = (oracle["refined_exact"] - oracle["baseline_exact"]).groupby(oracle["q_type"])
        parts = [f"{q_type} {value:+.3f}" for q_type, value in change.mean().items()]
        text += f" The oracle's change by question type: {', '.join(parts)}."
    arm = sub[sub["arm"] == "heads"]
    lost = arm[(arm["baseline_exact"] == 1) & (arm["refined_exact"] < 1)]
    kept = 1 - lost["knocked_box_share"]
    if len(lost) and kept.notna().any() and pd.notna(heads["box_kept"]):
        text += (
            f" The {len(lost)} question(s) the heads triage turns wrong keep "
            f"{kept.mean():.0%} of their box tokens (all questions: {heads['box_kept']:.0%})."
        )
    return text


def _anatomy_reading(table: pd.DataFrame, answers: pd.DataFrame) -> str:
    """The closing reading: for each model and domain, does the oracle help (the idea),
    does the heads triage find the box (the triage), and which questions lose."""
    out = ["**What the arms say.**"]
    arms = table[table["arm"].isin(ARM_ORDER)]
    for (label, protocol, domain), frame in arms.groupby(
        ["label", "protocol", "domain"], sort=False
    ):
        by_arm = {r["arm"]: r for r in frame.to_dict("records")}
        if "oracle" not in by_arm or "heads" not in by_arm:
            continue
        oracle, heads = by_arm["oracle"], by_arm["heads"]
        text = (
            f"- {label}, `{protocol}`, {domain}: the oracle {_verdict(oracle)} "
            f"({oracle['difference']:+.3f}), the heads triage {_verdict(heads)} "
            f"({heads['difference']:+.3f})"
        )
        if "anti-oracle" in by_arm:
            anti = by_arm["anti-oracle"]
            text += f", the anti-oracle {_verdict(anti)} ({anti['difference']:+.3f})"
        if "random" in by_arm:
            rand = by_arm["random"]
            text += f", a random cut {_verdict(rand)} ({rand['difference']:+.3f})"
        text += ". "
        kept = (
            f" (the heads keep {heads['box_kept']:.0%} of the box tokens, the oracle "
            f"{oracle['box_kept']:.0%}, chance {heads['chance']:.0%})"
            if pd.notna(heads["box_kept"])
            else ""
        )
        anti = by_arm.get("anti-oracle")
        if oracle["diff_low"] > 0:
            text += "Removing distractors helps when the box is kept: the idea works here"
            if heads["diff_low"] > 0:
                text += f", and the heads' triage finds enough of the box to help too{kept}."
            else:
                text += f"; what VGRefine lacks is the triage{kept}."
        elif oracle["diff_high"] < 0:
            text += (
                "Even a perfect triage hurts: knocking out this many tokens removes "
                "information the answer needs outside the box (context, the rest of the "
                f"organ or scene), so the failure is not the triage's alone{kept}."
            )
        else:
            text += "A perfect triage does not help either: focusing adds nothing here"
            if anti is not None and anti["diff_high"] < 0:
                text += " although the box tokens matter (cutting them first hurts)"
            base = oracle["accuracy"] - oracle["difference"]
            text += f", with {base:.0%} right without VGRefine (at most {1 - base:.0%} to gain)"
            if heads["diff_high"] < 0:
                text += f"; VGRefine's loss comes from what its triage cuts away{kept}."
            else:
                text += f"; VGRefine does not change accuracy beyond noise either{kept}."
        rand = by_arm.get("random")
        if (
            rand is not None
            and anti is not None
            and rand["diff_high"] < 0
            and rand["difference"] < anti["difference"]
        ):
            text += (
                f" A random cut ({rand['accuracy']:.3f}) hurts more than the anti-oracle "
                f"({anti['accuracy']:.3f}), which cuts the whole box but, like the heads, "
                "keeps the tokens the heads rank highest outside it: the answer leans on "
                "those tokens, not on the box alone."
            )
        text += _anatomy_why(answers, label, protocol, domain, heads)
        out.append(text)
    return "\n".join(out)

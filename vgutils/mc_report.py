"""The VGRefine table: benchmark runs of a profile (``benchmarks:`` in
``notebooks/params/<profile>.yaml``), accuracy without / with VGRefine and the paper's
published numbers beside them (notebook 07)."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

PUBLISHED = {
    # the paper's VGRefine table (docs/METHOD.md), accuracy in %
    "HuatuoGPT-Vision-7B": {
        "baseline": {
            "VQA-RAD_test": 67.4,
            "SLAKE_test": 76.5,
            "PathVQA_test": 60.7,
            "PMC-VQA_test": 53.9,
        },
        "vgrefine": {
            "VQA-RAD_test": 71.2,
            "SLAKE_test": 76.9,
            "PathVQA_test": 67.6,
            "PMC-VQA_test": 56.2,
        },
    },
    "LLaVA-v1.6-7B": {
        "baseline": {
            "VQA-RAD_test": 52.6,
            "SLAKE_test": 57.9,
            "PathVQA_test": 47.9,
            "PMC-VQA_test": 35.5,
        },
    },
    "LLaVA-Med-7B": {
        "baseline": {
            "VQA-RAD_test": 51.4,
            "SLAKE_test": 48.6,
            "PathVQA_test": 56.8,
            "PMC-VQA_test": 24.7,
        },
    },
}
"""Published accuracy (%) of the paper's VGRefine table: per model, ``baseline`` and (for
HuatuoGPT-Vision-7B) ``vgrefine``, per benchmark dataset."""

PUBLISHED_AVERAGE = {
    ("HuatuoGPT-Vision-7B", "baseline"): 65.3,
    ("HuatuoGPT-Vision-7B", "vgrefine"): 68.4,
    ("LLaVA-v1.6-7B", "baseline"): 48.5,
    ("LLaVA-Med-7B", "baseline"): 45.4,
}
"""The ``avg`` column of the paper's VGRefine table (%), as printed."""

QUESTIONS = {"VQA-RAD_test": 251, "SLAKE_test": 416, "PathVQA_test": 3362, "PMC-VQA_test": 2000}
"""Multiple-choice questions per benchmark dataset, as a third-party run of the official
evaluation reports them (6,029 in all): the weights of a question-weighted average."""


def run_folder_name(
    model: str,
    benchmark: str,
    decoding: str,
    protocol: str = "corrected",
    heads=None,
    triage: str = "heads",
) -> str:
    """``mc__<model>__<benchmark>__<decoding>__<protocol>``, with ``__heads-given`` /
    ``__heads-ranked`` when the run refines and ``__triage-random`` when its triage is not
    the heads' (:data:`vgutils.refine.TRIAGES`): runs of both protocols, both head sources
    and both triages sit side by side."""
    slug = re.sub(r"[^A-Za-z0-9.-]+", "_", model).strip("_")
    name = f"mc__{slug}__{benchmark}__{decoding}__{protocol}"
    name += f"__heads-{heads}" if heads else ""
    return name + (f"__triage-{triage}" if heads and triage != "heads" else "")


def run_label(run: dict, protocol: str, profile_protocol: str) -> str:
    """A run's row in the table: its ``label``, else the model; a run whose protocol is
    not the profile's says so (``(corrected protocol)``), and one with another triage than
    the heads' (``(random triage)``)."""
    label = run.get("label") or run["model"]
    if protocol != profile_protocol and protocol not in label:
        label += f" ({protocol} protocol)"
    triage = run.get("triage") or "heads"
    if run.get("refine") and triage != "heads" and triage not in label:
        label += f" ({triage} triage)"
    return label


def benchmark_options(profile: str, spec: dict, run: dict):
    """The :class:`vgutils.mc_eval.MCOptions` of one run of the profile's ``benchmarks``
    block. A run's own settings win over the block's: ``protocol`` (default: the
    profile's), ``decoding``, and the VGRefine settings (``heads``, ``layers``, ``top_k``,
    ``percentile``, ``denominator``, ``include_generated``, ``prompt_suffix``, ``triage``:
    ``heads`` or ``random`` here, no boxes; ``draws``, ``seed``); heads not given are
    ranked on the run's ``calibration`` job. The model: at the profile's revision."""
    from vgutils.jobs import find_job, job_dir, load_profile, profile_revision
    from vgutils.mc_eval import MCOptions
    from vgutils.refine import RefineSettings

    settings = load_profile(profile)
    profile_protocol = settings.get("protocol", "corrected")
    protocol = run.get("protocol", spec.get("protocol", profile_protocol))
    refine = None
    if run.get("refine"):
        keys = {k: spec[k] for k in RefineSettings.KEYS if k in spec and spec[k] is not None}
        keys.update({k: run[k] for k in RefineSettings.KEYS if k in run})
        if run.get("heads"):
            keys.pop("top_k", None)  # given heads are used as they are
        heads_from = None
        if run.get("calibration"):
            job = find_job(profile, run["model"], run["calibration"])
            heads_from = str(job_dir(profile, job))
        refine = RefineSettings.from_spec(keys, heads_from)
    return MCOptions(
        model=run["model"],
        benchmark=spec["benchmark"],
        datasets=tuple(spec["datasets"]) if spec.get("datasets") else None,
        decoding=run.get("decoding", spec.get("decoding")),
        seed=spec.get("seed", 42),
        refine=refine,
        protocol=protocol,
        limit=spec.get("limit"),
        revision=profile_revision(settings, run["model"]),
    )


def benchmark_folder(profile: str, spec: dict, run: dict) -> str:
    """The results folder name of one run of the profile's ``benchmarks`` block
    (:func:`run_folder_name` of its options; nothing is computed or read but the model's
    config)."""
    from vgutils.mc_eval import mc_decoding

    options = benchmark_options(profile, spec, run)
    heads, triage = None, "heads"
    if options.refine is not None:
        heads = "given" if options.refine.heads is not None else "ranked"
        triage = options.refine.triage
    return run_folder_name(
        run["model"], spec["benchmark"], mc_decoding(options), options.protocol, heads, triage
    )


def run_folder(profile: str, spec: dict, run: dict) -> Path:
    """The results folder of one run of the profile's ``benchmarks`` block."""
    from vgutils.paths import results_dir

    return results_dir(profile) / benchmark_folder(profile, spec, run)


def benchmark_runs(
    profile: str,
    spec: dict,
    progress: bool = False,
    n_boot: int = 2000,
    shard: tuple[int, int] | None = None,
) -> pd.DataFrame:
    """Run (or reuse: runs are resumable and a complete one is only read) every run of
    the profile's ``benchmarks`` block (:func:`benchmark_options`: the profile's protocol
    unless the run names its own); returns the per-question answers of all runs with
    ``model``, ``row`` (:func:`run_label`), ``protocol``, ``heads`` and ``published_as``
    columns. Each run: ``model``, ``refine``, ``heads`` + ``layers`` (given) or
    ``calibration`` (the profile's extraction job whose ``head_metrics`` rank the heads),
    ``published_as`` (a key of :data:`PUBLISHED`, or none), ``label``, and optionally its
    own ``protocol``, ``top_k``, ``layers``, ``percentile``, ``decoding`` and
    ``device_map: auto`` (a model larger than one GPU). ``shard``: ``(rank, world)`` under
    a launcher: this process answers its share of each run (the answers returned are then
    partial until the last rank merges). A folder left by other options or an older
    version of the code is recomputed (unless ranks are writing it)."""
    from vgutils.jobs import device_for, device_map_of, load_profile
    from vgutils.mc_eval import resolve_mc_options, run_mc

    profile_protocol = load_profile(profile).get("protocol", "corrected")
    frames = []
    for run in spec["runs"]:
        options = resolve_mc_options(benchmark_options(profile, spec, run))
        heads = options.refine.heads_source if options.refine is not None else None
        folder = run_folder(profile, spec, run)
        device = device_for(spec, device_map_of(run, f"benchmarks.runs[{len(frames)}]"))
        arguments = dict(device=device, n_boot=n_boot, progress=progress, shard=shard)
        # generated results of an older setup are recomputed (replace_stale)
        answers, _, _ = run_mc(options, folder, **arguments, replace_stale=True)
        frames.append(
            answers.assign(
                row=run_label(run, options.protocol, profile_protocol),
                protocol=options.protocol,
                heads=heads or "",
                published_as=run.get("published_as"),
            )
        )
    return pd.concat(frames, ignore_index=True)


def vgrefine_table(answers: pd.DataFrame, n_boot: int = 2000) -> pd.DataFrame:
    """Per row (a run's ``row`` label, else its model) and benchmark dataset (and the
    micro total over the row's datasets): ``n``, the ``protocol``, accuracy (%) without /
    with VGRefine and their 95% bootstrap intervals (intended fallback), the accuracy with
    the reference scorer's fallback, how many outputs held no letter, and the paper's
    published numbers in ``published_*`` columns."""
    from vgutils.mc_eval import mc_table

    rows = []
    key = "row" if "row" in answers else "model"
    for model, frame in answers.groupby(key, sort=False):
        table = mc_table(frame, n_boot=n_boot)
        table = table[table["level"] != "subset"]
        published = frame["published_as"].iloc[0]
        numbers = PUBLISHED.get(published, {}) if isinstance(published, str) else {}
        for record in table.to_dict("records"):
            subset = (
                frame
                if record["level"] == "total"
                else frame[frame["dataset"] == record["dataset"]]
            )
            row = {"model": model, "dataset": record["dataset"], "n": record["n"]}
            if "protocol" in frame:
                row["protocol"] = frame["protocol"].iloc[0]
            for which, label in (("baseline", "without"), ("refined", "VGRefine")):
                if which in record:
                    row[f"{label} %"] = 100 * record[which]
                    row[f"{label} 95% CI"] = (
                        f"{100 * record[f'{which}_low']:.1f}-{100 * record[f'{which}_high']:.1f}"
                    )
            if "refined" in record:
                row["change (points)"] = 100 * (record["refined"] - record["baseline"])
            row["without, reference fallback %"] = 100 * record["baseline_reference"]
            row["no letter (without)"] = int(subset["baseline_no_letter"].sum())
            row["published without %"] = numbers.get("baseline", {}).get(record["dataset"], np.nan)
            row["published VGRefine %"] = numbers.get("vgrefine", {}).get(record["dataset"], np.nan)
            rows.append(row)
    return pd.DataFrame(rows)


def save_table(table: pd.DataFrame, profile: str, name: str = "fig08_vqa_benchmarks") -> Path:
    """Write ``figures/<profile>/<name>.csv``; returns its path."""
    from vgutils.paths import figures_dir

    folder = figures_dir(profile)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.csv"
    table.to_csv(path, index=False)
    return path


def published_table() -> pd.DataFrame:
    """The paper's VGRefine table as published (%), one row per model and setting, with
    three averages: ``avg (as published)``, ``mean of the four`` (unweighted) and
    ``question-weighted mean`` (:data:`QUESTIONS`)."""
    rows = []
    for model, settings in PUBLISHED.items():
        for setting, values in settings.items():
            label = "with VGRefine" if setting == "vgrefine" else "without"
            average = PUBLISHED_AVERAGE.get((model, setting), np.nan)
            rows.append({"model (published)": model, "setting": label, **values, "avg": average})
    frame = pd.DataFrame(rows).rename(columns={"avg": "avg (as published)"})
    datasets = list(QUESTIONS)
    frame["mean of the four"] = frame[datasets].mean(axis=1).round(1)
    weights = np.array([QUESTIONS[d] for d in datasets], dtype=float)
    frame["question-weighted mean"] = (frame[datasets] @ weights / weights.sum()).round(1)
    return frame


def published_average_note() -> str:
    """In words, computed from :func:`published_table`: which published averages are the
    mean of their four columns, and which are neither that nor the question-weighted
    mean."""
    table = published_table()
    plain, odd = [], []
    for row in table.to_dict("records"):
        name = f"{row['model (published)']} {row['setting']}"
        if abs(row["avg (as published)"] - row["mean of the four"]) < 0.051:
            plain.append(f"{name} ({row['avg (as published)']:.1f})")
        else:
            odd.append(
                f"{name}: {row['avg (as published)']:.1f} as published, "
                f"{row['mean of the four']:.1f} the mean of its four columns, "
                f"{row['question-weighted mean']:.1f} weighted by questions"
            )
    text = "**How the paper's `avg` column is averaged.** "
    if plain:
        text += "It is the unweighted mean of the four datasets for " + ", ".join(plain) + ". "
    if odd:
        text += (
            "It is neither that mean nor the question-weighted one for "
            + "; ".join(odd)
            + ". The paper does not say how it averaged; this package compares per dataset "
            "and reports totals as micro averages over questions."
        )
    return text


def vgrefine_figure(table: pd.DataFrame, caption: str | None = None):
    """Accuracy per benchmark dataset (x) and model: without (light) and with VGRefine
    (dark) bars with 95% intervals; published numbers as black markers."""
    import seaborn as sns

    from vgutils.plots import COLUMN_WIDTH_IN, model_label

    models = list(dict.fromkeys(table["model"]))
    datasets = list(dict.fromkeys(table["dataset"]))
    colours = sns.color_palette("colorblind")
    width_in = min(10.0, max(COLUMN_WIDTH_IN * 2, 0.7 * len(datasets) * len(models)))
    fig, ax = plt.subplots(figsize=(width_in, 3.0))
    width = 0.8 / (2 * len(models))
    drawn: set[int] = set()  # published marks drawn: 0 without, 1 with VGRefine
    for m, model in enumerate(models):
        rows = table[table["model"] == model].set_index("dataset")
        for k, (column, alpha) in enumerate((("without %", 0.45), ("VGRefine %", 1.0))):
            if column not in rows:
                continue
            ci = column.replace(" %", " 95% CI")
            for d, dataset in enumerate(datasets):
                if dataset not in rows.index or pd.isna(rows.loc[dataset, column]):
                    continue
                x = d - 0.4 + width * (2 * m + k + 0.5)
                value = rows.loc[dataset, column]
                low, high = (float(v) for v in rows.loc[dataset, ci].split("-"))
                label = f"{model_label(model)}, {column.replace(' %', '')}" if d == 0 else None
                ax.bar(x, value, width, color=colours[m % 10], alpha=alpha, label=label)
                ax.errorbar(
                    x, value, [[value - low], [high - value]], color="black", lw=0.8, capsize=2
                )
                published = ("published without %", "published VGRefine %")[k]
                if not pd.isna(rows.loc[dataset, published]):
                    marker = "oD"[k]
                    ax.plot(x, rows.loc[dataset, published], marker, mfc="white", mec="black", ms=5)
                    drawn.add(k)
    for k in sorted(drawn):  # a legend entry only for published marks the figure shows
        setting = ("without", "VGRefine")[k]
        ax.plot([], [], "oD"[k], mfc="white", mec="black", label=f"published (paper), {setting}")
    ax.set_xticks(range(len(datasets)), datasets)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=6, ncols=3, loc="upper center", bbox_to_anchor=(0.5, -0.1), frameon=False)
    ax.set_title("Multiple-choice accuracy without / with VGRefine (95% bootstrap CIs)")
    if caption:
        fig.suptitle(caption, fontsize=7, x=0.01, ha="left")
    return fig


def describe(table: pd.DataFrame) -> str:
    """In words: per model and dataset, the accuracy without and with VGRefine, whether
    VGRefine helped (the change against the intervals), and the published numbers."""
    lines = []
    for row in table.to_dict("records"):
        text = f"- **{row['model']}**, {row['dataset']} (n = {row['n']}): "
        text += f"{row['without %']:.1f}% without"
        if "VGRefine %" in row and not pd.isna(row.get("VGRefine %")):
            change = row["change (points)"]
            verdict = (
                "no change"
                if abs(change) < 0.05
                else ("VGRefine helps" if change > 0 else "VGRefine hurts")
            )
            text += f", {row['VGRefine %']:.1f}% with VGRefine ({change:+.1f} points: {verdict}"
            text += (
                "; the 95% intervals overlap" if _overlap(row) else "; the intervals do not overlap"
            )
            text += ")"
        text += f"; {row['no letter (without)']} outputs held no letter"
        reference = row["without, reference fallback %"]
        text += f" (scored by the fallback; the reference scorer gives {reference:.1f}%)"
        if not pd.isna(row["published without %"]):
            text += f". Published: {row['published without %']:.1f}%"
            if not pd.isna(row["published VGRefine %"]):
                text += f" → {row['published VGRefine %']:.1f}% with VGRefine"
        lines.append(text + ".")
    return "\n".join(lines)


def _overlap(row: dict) -> bool:
    a_low, a_high = (float(v) for v in row["without 95% CI"].split("-"))
    b_low, b_high = (float(v) for v in row["VGRefine 95% CI"].split("-"))
    return a_low <= b_high and b_low <= a_high

"""Figures: one function per figure kind, each returning a matplotlib Figure.

Package style: seaborn ``ticks`` with the Okabe-Ito colour-blind-safe palette; medical is
always vermillion and natural always blue; localization solid, attribute dashed; the
best (lowest-KL) layer is outlined / marked in orange, as in the paper.
"""

from __future__ import annotations

import io
import textwrap
from pathlib import Path

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from vgutils import context
from vgutils.geometry import TokenLayout
from vgutils.paths import figures_dir
from vgutils.provenance import Provenance

DOMAIN_COLOURS = {"medical": "#D55E00", "natural": "#0072B2"}
QTYPE_STYLES = {"localization": "-", "attribute": "--"}
STRATEGY_COLOURS = {"last": "#009E73", "question": "#CC79A7", "all": "#56B4E9"}
BEST_LAYER_COLOUR = "#E69F00"
METRIC_LABELS = {
    "attention_ratio": "attention ratio (1 = chance)",
    "kl": "KL(U_G || P)  (lower = better)",
    "js": "JS(P, U_G)  (lower = better)",
}
COLUMN_WIDTH_IN = 3.5


def use_style() -> None:
    """The package's plotting style (call once per notebook)."""
    sns.set_theme(context="paper", style="ticks", palette="colorblind")
    mpl.rcParams.update(
        {
            "figure.dpi": 110,
            "savefig.dpi": 200,
            "savefig.bbox": "tight",
            "axes.titlesize": 9,
            "axes.labelsize": 8,
            "xtick.labelsize": 7,
            "ytick.labelsize": 7,
            "legend.fontsize": 7,
            "pdf.fonttype": 42,
        }
    )


def save_figure(
    fig: plt.Figure, profile: str, name: str, provenance: Provenance | None = None
) -> list[Path]:
    """Write ``figures/<profile>/<name>.pdf`` and ``.png``; returns both paths. The
    context's figure note (a rehearsal's "REHEARSAL: ...") goes on top
    (:func:`mark_note`). Both files record ``provenance`` in their metadata
    (:mod:`vgutils.provenance`); default: :func:`vgutils.jobs.profile_provenance` (the
    commit, the profile's protocol and every run of the profile at this moment)."""
    note = context.current().figure_note
    if note:
        mark_note(fig, note)
    if provenance is None:
        from vgutils.jobs import profile_provenance

        provenance = profile_provenance(profile)
    folder = figures_dir(profile)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{name}.{suffix}" for suffix in ("pdf", "png")]
    for path in paths:
        metadata = provenance.pdf_metadata() if path.suffix == ".pdf" else provenance.png_metadata()
        fig.savefig(path, metadata=metadata)
    return paths


def _clip(text: str, width: int = 24) -> str:
    """``text`` cut to ``width`` characters with an ellipsis (a panel label's width)."""
    return text if len(text) <= width else text[: width - 1] + "…"


PAPER_NAMES = {
    "UCSC-VLAA/LLaVA-Med-pp/SLAKE": "LLaVA-Tri (SLAKE)",
    "Luxuriant16/medrega": "MedRegA",
}
"""Hub ids whose repository name is not the name the paper uses."""


def model_label(model: str) -> str:
    """A model's name in a panel title or legend: the paper's name where the Hub id does
    not say it (:data:`PAPER_NAMES`), else a Hub id without its organisation
    (``FreedomIntelligence/HuatuoGPT-Vision-7B`` -> ``HuatuoGPT-Vision-7B``; with a
    subfolder, ``org/name/sub`` -> ``name/sub``) or a folder's last part."""
    if model in PAPER_NAMES:
        return PAPER_NAMES[model]
    parts = model.split("/")
    if len(parts) > 2 and not model.startswith(("/", ".", "~")):  # Hub id + subfolder
        return "/".join(parts[1:])
    return parts[-1]


def mark_note(fig: plt.Figure, note: str) -> None:
    """Caption ``fig`` with ``note`` (e.g. "REHEARSAL: random models, synthetic data")
    above everything in it (saved with the tight bounding box), unless its title or a text
    already says it."""
    texts = [t.get_text() for t in fig.texts] + [fig.get_suptitle()]
    if any(note in text for text in texts):
        return
    style = {"fontsize": 9, "color": "#b2182b", "fontweight": "bold"}
    fig.text(0.5, 1.0, note, ha="center", va="bottom", **style)


def show(fig: plt.Figure, dpi: int = 110) -> None:
    """Show ``fig`` once, as a PNG output, and close it: in papermill (Agg backend, where
    ``fig`` alone prints ``<Figure ...>``) and in JupyterLab (inline backend, which would
    otherwise draw an unclosed figure a second time). Every notebook shows its figures
    with this, after :func:`save_figure` (the PDF / PNG files stay the files of record)."""
    from IPython.display import Image, display

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    display(Image(data=buffer.getvalue(), format="png"))


def token_heatmap(values: np.ndarray, layout: TokenLayout, max_side: int = 224) -> np.ndarray:
    """Per-token ``values`` (N,) painted on the original image's frame: ``(h, w)`` float,
    each pixel the mean over the tokens covering it (tiles and thumbnail overlap), NaN
    where no token looks (e.g. cropped away). Rendered at most ``max_side`` px."""
    width, height = layout.image_size
    scale = min(1.0, max_side / max(width, height))
    h, w = max(1, round(height * scale)), max(1, round(width * scale))
    total = np.zeros((h, w))
    count = np.zeros((h, w))
    boxes = layout.boxes * scale
    for value, (x0, y0, x1, y1) in zip(np.asarray(values, dtype=float), boxes, strict=True):
        c0, c1 = max(0, int(np.floor(x0))), min(w, int(np.ceil(x1)))
        r0, r1 = max(0, int(np.floor(y0))), min(h, int(np.ceil(y1)))
        if c1 > c0 and r1 > r0:
            total[r0:r1, c0:c1] += value
            count[r0:r1, c0:c1] += 1
    with np.errstate(invalid="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _draw_boxes(ax, boxes: np.ndarray, colour: str = "white") -> None:
    for x0, y0, x1, y1 in np.asarray(boxes):
        ax.add_patch(
            mpl.patches.Rectangle(
                (x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=colour, linewidth=1.2
            )
        )


def _finish_image_grid(fig, axes, caption: str | None, rect=None):
    """Image panels without ticks, the caption on top, tight layout (within ``rect``)."""
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    if caption:
        fig.suptitle(caption, fontsize=8, y=1.0)
    fig.tight_layout(rect=rect)
    return fig


def pick_layers(num_layers: int, best: int, count: int = 5) -> list[int]:
    """A readable subset: ``count`` evenly spaced layers plus the best one, sorted."""
    spaced = np.linspace(0, num_layers - 1, min(count, num_layers)).round().astype(int)
    return sorted({*spaced.tolist(), int(best)})


MAP_SCALE_LABEL = "attention share x N (1 = uniform)"


def map_share(values: np.ndarray) -> np.ndarray:
    """A layer map as the share of attention each token gets, times the token count
    ``N``: 1 = a uniform map's share, so maps of different models and images compare."""
    values = np.asarray(values, dtype=float)
    total = values.sum()
    return values * (len(values) / total) if total > 0 else np.zeros_like(values)


def shared_map_limits(maps: list[np.ndarray], percentile: float = 99.0) -> tuple[float, float]:
    """One colour scale for every panel of a figure: 0 to the ``percentile`` of all the
    shown tokens' values (never below 2, i.e. twice the uniform share)."""
    values = np.concatenate([np.ravel(m) for m in maps]) if maps else np.ones(1)
    return 0.0, max(2.0, float(np.nanpercentile(values, percentile)))


def layer_maps_figure(rows: list[dict], count: int = 5, caption: str | None = None):
    """Qualitative layer maps (Fig 1 / 3b). Each row dict: ``title``, ``image`` (PIL),
    ``maps`` ``(layers, N)`` normalised maps, ``layout``, ``boxes`` ``(k, 4)``, ``kl``
    ``(layers,)``. Column 0: the image with its ground-truth box(es); then the chosen
    layers' maps over the image; the lowest-KL layer is outlined in orange. Every panel
    shows :func:`map_share` on ONE colour scale (:func:`shared_map_limits`, stated in the
    colour bar), so a flat map (a random model) looks flat."""
    chosen = [pick_layers(len(r["kl"]), int(np.argmin(r["kl"])), count) for r in rows]
    shares = [
        [map_share(r["maps"][layer]) for layer in layers]
        for r, layers in zip(rows, chosen, strict=True)
    ]
    vmin, vmax = shared_map_limits([m for row in shares for m in row])
    columns = 1 + max(len(layers) for layers in chosen)
    fig, axes = plt.subplots(
        len(rows), columns, squeeze=False, figsize=(1.25 * columns + 0.5, 1.35 * len(rows) + 0.6)
    )
    mappable = None
    for axes_row, row, layers, row_shares in zip(axes, rows, chosen, shares, strict=True):
        image = np.asarray(row["image"])
        best = int(np.argmin(row["kl"]))
        extent = (0, row["layout"].image_size[0], row["layout"].image_size[1], 0)
        axes_row[0].imshow(image, extent=extent)
        _draw_boxes(axes_row[0], row["boxes"], BEST_LAYER_COLOUR)
        axes_row[0].set_title(textwrap.fill(row["title"], 26), fontsize=6)
        for ax, layer, share in zip(axes_row[1:], layers, row_shares, strict=False):
            heat = token_heatmap(share, row["layout"])
            ax.imshow(image, extent=extent)
            mappable = ax.imshow(
                heat,
                extent=extent,
                cmap="magma",
                alpha=0.6,
                interpolation="nearest",
                vmin=vmin,
                vmax=vmax,
            )
            _draw_boxes(ax, row["boxes"])
            ax.set_title(f"layer {layer}" + (" (min KL)" if layer == best else ""), fontsize=7)
            if layer == best:
                for spine in ax.spines.values():
                    spine.set_visible(True)
                    spine.set_edgecolor(BEST_LAYER_COLOUR)
                    spine.set_linewidth(2.5)
                ax.set_gid("best-layer")
        for ax in axes_row[1 + len(layers) :]:
            ax.set_visible(False)
    fig = _finish_image_grid(fig, axes, caption, rect=(0, 0.07, 1, 1))
    if mappable is not None:
        bar_ax = fig.add_axes((0.3, 0.025, 0.4, 0.015))
        bar = fig.colorbar(mappable, cax=bar_ax, orientation="horizontal", extend="max")
        bar.solids.set_alpha(0.6)
        bar.set_label(
            f"{MAP_SCALE_LABEL}; one scale for all panels (0 to the 99th percentile); "
            "box = ground truth; orange = lowest-KL layer",
            fontsize=6,
        )
        bar.ax.tick_params(labelsize=6)
    return fig


def _style_metric_axis(ax, metric: str) -> None:
    """Chance line for the ratio, metric label, integer layer ticks, no top/right spines."""
    if metric == "attention_ratio":
        ax.axhline(1.0, color="grey", lw=0.8, ls=":")
    ax.set_ylabel(METRIC_LABELS[metric])
    ax.set_xlabel("layer")
    ax.xaxis.set_major_locator(mpl.ticker.MaxNLocator(integer=True))
    sns.despine(ax=ax)


# the smallest y-range a metric panel shows: noise around chance must look like noise
MIN_SPAN = {"attention_ratio": 1.0, "kl": 0.5, "js": 0.1}
BAND_LABEL = "shaded: 95% bootstrap interval of the mean"
BEST_KL_LABEL = "lowest mean KL layer (per domain)"
BEST_KL_MARKER = {
    "marker": "o",
    "markersize": 6,
    "markerfacecolor": "none",
    "markeredgecolor": BEST_LAYER_COLOUR,
    "markeredgewidth": 1.6,
    "linestyle": "none",
}
"""How the lowest-KL layer is marked on the curves and in their legend (one style)."""


def ensure_span(ax, metric: str) -> None:
    """Widen the y-range of ``ax`` to at least :data:`MIN_SPAN` (around its centre, never
    below 0: every metric is >= 0); the ratio's range always includes 1 = chance."""
    low, high = ax.get_ylim()
    if metric == "attention_ratio":
        low, high = min(low, 1.0), max(high, 1.0)
    span = MIN_SPAN.get(metric, 0.0)
    if high - low < span:
        centre = (low + high) / 2
        low, high = centre - span / 2, centre + span / 2
    if low < 0:
        low, high = 0.0, high - low
    ax.set_ylim(low, high)


def _legend_extras(best_kl: bool) -> tuple[list, list]:
    handles = [mpl.patches.Patch(facecolor="grey", alpha=0.25, linewidth=0)]
    labels = [BAND_LABEL]
    if best_kl:
        handles.append(mpl.lines.Line2D([], [], **BEST_KL_MARKER))
        labels.append(BEST_KL_LABEL)
    return handles, labels


def _finish(fig, axes, columns: int, caption: str | None, best_kl: bool = False):
    """One legend under the panels (from the first panel, plus the band and the min-KL
    marker), the caption, tight layout."""
    handles, labels = axes[0, 0].get_legend_handles_labels()
    extra_handles, extra_labels = _legend_extras(best_kl)
    fig.legend(
        handles + extra_handles,
        labels + extra_labels,
        loc="lower center",
        ncol=min(columns, 3),
        frameon=False,
        bbox_to_anchor=(0.5, -0.01),
    )
    if caption:
        fig.suptitle(caption, fontsize=8)
    rows = int(np.ceil((len(handles) + len(extra_handles)) / min(columns, 3)))
    fig.tight_layout(rect=(0, 0.035 * rows + 0.02, 1, 1))
    return fig


def _band(ax, frame: pd.DataFrame, colour: str, style: str, label: str) -> None:
    frame = frame.sort_values("layer")
    ax.plot(frame["layer"], frame["mean"], color=colour, linestyle=style, label=label, lw=1.3)
    ax.fill_between(
        frame["layer"], frame["low"], frame["high"], color=colour, alpha=0.18, linewidth=0
    )


def layer_curves_figure(curves: pd.DataFrame, caption: str | None = None):
    """Per-layer curves (Fig 2 / 3a): rows = models, columns = metrics; colour = domain
    (medical / natural), line style = question type; bands = 95% bootstrap intervals.
    ``curves``: columns model, metric, domain, q_type, layer, mean, low, high. The layer
    with the lowest mean KL (over all samples of each domain) is marked in orange. Each
    metric's column shares one y-scale across models (the control beside the trained
    model), at least :data:`MIN_SPAN` wide."""
    models = list(dict.fromkeys(curves["model"]))
    metrics = [m for m in METRIC_LABELS if m in set(curves["metric"])]
    fig, axes = plt.subplots(
        len(models),
        len(metrics),
        squeeze=False,
        sharex="row",
        sharey="col",
        figsize=(2.3 * len(metrics), 1.9 * len(models) + 0.7),
    )
    for axes_row, model in zip(axes, models, strict=True):
        for ax, metric in zip(axes_row, metrics, strict=True):
            frame = curves[(curves["model"] == model) & (curves["metric"] == metric)]
            for (domain, q_type), part in frame.groupby(["domain", "q_type"], sort=True):
                _band(
                    ax,
                    part,
                    DOMAIN_COLOURS.get(domain, "grey"),
                    QTYPE_STYLES.get(q_type, ":"),
                    f"{domain} / {q_type}",
                )
            if metric == "kl":
                _mark_best_kl(ax, frame)
            ax.set_title(model_label(model), fontsize=7, loc="left")
            _style_metric_axis(ax, metric)
    for ax, metric in zip(axes[0], metrics, strict=True):
        ensure_span(ax, metric)  # shared by the column
    return _finish(fig, axes, 4, caption, best_kl="kl" in metrics)


def _mark_best_kl(ax, frame: pd.DataFrame) -> None:
    for domain, part in frame.groupby("domain"):
        per_layer = part.groupby("layer")["mean"].mean()
        best = int(per_layer.idxmin())
        ax.plot(
            [best],
            [per_layer[best]],
            **BEST_KL_MARKER,
            gid=f"best-kl-{domain}",
        )


def strategy_curves_figure(curves: pd.DataFrame, caption: str | None = None):
    """Token strategies (Fig 5): rows = (model, domain), columns = metrics, one line per
    strategy (``last`` / ``question`` / ``all``) with 95% bootstrap bands. Each metric's
    column shares one y-scale across rows, at least :data:`MIN_SPAN` wide."""
    keys = list(dict.fromkeys(zip(curves["model"], curves["domain"], strict=True)))
    metrics = [m for m in METRIC_LABELS if m in set(curves["metric"])]
    fig, axes = plt.subplots(
        len(keys),
        len(metrics),
        squeeze=False,
        sharey="col",
        figsize=(2.3 * len(metrics), 1.8 * len(keys) + 0.6),
    )
    for axes_row, (model, domain) in zip(axes, keys, strict=True):
        for ax, metric in zip(axes_row, metrics, strict=True):
            frame = curves[
                (curves["model"] == model)
                & (curves["domain"] == domain)
                & (curves["metric"] == metric)
            ]
            for strategy, part in frame.groupby("strategy", sort=False):
                _band(ax, part, STRATEGY_COLOURS.get(strategy, "grey"), "-", strategy)
            ax.set_title(
                f"{model_label(model)} — {domain}",
                fontsize=7,
                loc="left",
                color=DOMAIN_COLOURS.get(domain, "black"),
            )
            _style_metric_axis(ax, metric)
    for ax, metric in zip(axes[0], metrics, strict=True):
        ensure_span(ax, metric)  # shared by the column
    return _finish(fig, axes, 3, caption)


def failure_cases_figure(rows: list[dict], caption: str | None = None):
    """VGRefine cases (Fig 4). Row dict: ``title``, ``image``, ``layout``, ``boxes``,
    ``truth``, ``before`` / ``after`` ``(N,)`` maps (mean over the knockout layers),
    ``baseline`` / ``refined`` answers, ``low`` ``(N,)`` triage mask, ``domain``, and
    optionally ``protocol`` and ``knockout_layers`` (named at the left of the row).
    Columns: image with box and ground truth; the triage (knocked-out tokens dark);
    attention before and after with the answers, on one colour scale per row (bar); with
    ``oracle`` (the oracle arm's answer) and ``oracle_low`` (its knocked-out tokens) in
    the rows, a fifth column: the oracle's knockout and its answer."""
    oracle = all("oracle" in row for row in rows)
    fig, axes = plt.subplots(
        len(rows),
        5 if oracle else 4,
        squeeze=False,
        figsize=(8.7 if oracle else 7.0, 2.05 * len(rows) + 0.4),
        layout="constrained",
    )
    for axes_row, row in zip(axes, rows, strict=True):
        image = np.asarray(row["image"])
        extent = (0, row["layout"].image_size[0], row["layout"].image_size[1], 0)
        colour = DOMAIN_COLOURS.get(row.get("domain"), "black")
        axes_row[0].imshow(image, extent=extent)
        _draw_boxes(axes_row[0], row["boxes"], BEST_LAYER_COLOUR)
        axes_row[0].set_title(textwrap.fill(row["title"], 36), fontsize=6, color=colour)
        axes_row[0].set_xlabel(f"truth: {row['truth']}", fontsize=7)
        if row.get("protocol"):
            layers = ", ".join(map(str, row.get("knockout_layers", [])))
            axes_row[0].set_ylabel(
                f"{row['protocol']}\nknockout layer(s) {layers}", fontsize=7, fontweight="bold"
            )
        kept = token_heatmap((~row["low"]).astype(float), row["layout"])
        axes_row[1].imshow(image, extent=extent)
        axes_row[1].imshow(
            kept, extent=extent, cmap="gray", vmin=0, vmax=1, alpha=0.65, interpolation="nearest"
        )
        axes_row[1].set_title("heads triage: dark = knocked out", fontsize=6)
        axes_row[1].set_xlabel(f"{int(row['low'].sum())} of {len(row['low'])} tokens", fontsize=7)
        vmax = float(np.nanmax([np.nanmax(row["before"]), np.nanmax(row["after"])]))
        for ax, key, answer_key, label in (
            (axes_row[2], "before", "baseline", "before"),
            (axes_row[3], "after", "refined", "VGRefine"),
        ):
            ax.imshow(image, extent=extent)
            mapped = ax.imshow(
                token_heatmap(row[key], row["layout"]),
                extent=extent,
                cmap="magma",
                vmin=0,
                vmax=vmax,
                alpha=0.6,
                interpolation="nearest",
            )
            _draw_boxes(ax, row["boxes"])
            ax.set_title(f"{label}", fontsize=7)
            ax.set_xlabel(_clip(f"answer: {' '.join(str(row[answer_key]).split())}"), fontsize=7)
        bar = fig.colorbar(mapped, ax=axes_row[3], fraction=0.05, pad=0.02)
        bar.set_label("question / generic", fontsize=6)
        bar.ax.tick_params(labelsize=5)
        if oracle:
            kept = token_heatmap((~row["oracle_low"]).astype(float), row["layout"])
            axes_row[4].imshow(image, extent=extent)
            axes_row[4].imshow(
                kept,
                extent=extent,
                cmap="gray",
                vmin=0,
                vmax=1,
                alpha=0.65,
                interpolation="nearest",
            )
            _draw_boxes(axes_row[4], row["boxes"], BEST_LAYER_COLOUR)
            axes_row[4].set_title("oracle: box kept, same count", fontsize=6)
            answer = " ".join(str(row["oracle"]).split())
            axes_row[4].set_xlabel(_clip(f"oracle answer: {answer}"), fontsize=7)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    if caption:
        fig.suptitle(caption, fontsize=8)
    return fig


RATING_COLOURS = {3: "#E69F00", 4: "#56B4E9", 5: "#009E73"}


TABLE1_ORDER = ("clinical_relevance", "semantic_grounding", "visual_grounding")


def table1_figure(tables: dict[str, pd.DataFrame], caption: str | None = None):
    """Table 1 as stacked horizontal bars (percent of ratings 3 / 4 / 5) per question type
    and axis; one panel per table (e.g. ``{"published": ..., "computed": ...}``). Rows in a
    fixed order (question type, then clinical / semantic / visual), each segment of at
    least 8% labelled with its percentage, the legend under the panels."""
    from vgutils.ratings import AXIS_NAMES, Q_TYPES

    order = [(t, c) for t in Q_TYPES for c in TABLE1_ORDER]
    labels = [f"{t} · {AXIS_NAMES[c]}" for t, c in order]
    fig, axes = plt.subplots(
        1, len(tables), squeeze=False, sharey=True, figsize=(2.2 + 2.8 * len(tables), 2.9)
    )
    positions = np.arange(len(order))
    for ax, (name, table) in zip(axes[0], tables.items(), strict=True):
        indexed = table.set_index(["type", "category"]).reindex(order)
        left = np.zeros(len(order))
        for rating in (3, 4, 5):
            values = indexed[f"rating_{rating}"].fillna(0).to_numpy(dtype=float)
            ax.barh(
                positions,
                values,
                left=left,
                color=RATING_COLOURS[rating],
                label=f"rating {rating}",
                height=0.75,
            )
            for y, (start, width) in enumerate(zip(left, values, strict=True)):
                if width >= 8:
                    ax.text(
                        start + width / 2,
                        y,
                        f"{width:.0f}%",
                        ha="center",
                        va="center",
                        fontsize=6,
                        color="black",
                    )
            left += values
        ax.set_yticks(positions, labels)
        ax.set_xlim(0, 100)
        ax.set_xlabel("share of kept ratings (%)")
        ax.set_title(name, fontsize=8)
        sns.despine(ax=ax)
    axes[0, 0].invert_yaxis()  # shared: first row on top
    handles, legend_labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(
        handles,
        legend_labels,
        loc="lower center",
        ncol=3,
        frameon=False,
        bbox_to_anchor=(0.5, -0.01),
        title="share of kept ratings equal to 3 / 4 / 5; segments of 8% or more labelled",
        title_fontsize=6,
    )
    if caption:
        fig.suptitle(caption, fontsize=8)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    return fig


def rating_card_figure(sample, ratings: dict[str, int] | None = None):
    """The rating card of one sample, as in the supplement's Fig 6: the image with its box,
    the question, and the three rubric axes with the chosen rating ticked."""
    from vgutils.data.overlay import draw_boxes
    from vgutils.ratings import AXES, AXIS_NAMES

    fig, (image_ax, text_ax) = plt.subplots(
        1, 2, figsize=(6.4, 2.6), gridspec_kw={"width_ratios": [1, 1.5]}
    )
    image_ax.imshow(np.asarray(draw_boxes(sample)))
    image_ax.set_axis_off()
    text_ax.set_axis_off()
    lines = [
        f"{(sample.q_type or 'question').capitalize()} question:",
        textwrap.fill(sample.question, 48),
        "",
    ]
    for axis in AXES:
        chosen = (ratings or {}).get(axis)
        boxes = "  ".join(f"{'☒' if chosen == r else '☐'} {r}" for r in range(1, 6))
        lines.append(f"{AXIS_NAMES[axis]}:")
        lines.append(f"   {boxes}")
    text_ax.text(0, 1, "\n".join(lines), va="top", ha="left", fontsize=8, family="DejaVu Sans")
    fig.tight_layout()
    return fig


def teaching_overview_figure(
    samples: list, log: pd.DataFrame, accuracy: pd.DataFrame, caption: str | None = None
):
    """The teaching model at a glance: held-out scenes with their boxes (top), the
    training curve by stage and the held-out accuracy per domain and question type."""
    from vgutils.data.overlay import draw_boxes

    columns = max(len(samples), 2)
    fig = plt.figure(figsize=(1.1 * columns, 4.2))
    grid = fig.add_gridspec(2, columns, height_ratios=[1, 1.5])
    for index, sample in enumerate(samples):
        ax = fig.add_subplot(grid[0, index])
        ax.imshow(np.asarray(draw_boxes(sample, width=1)))
        ax.set_title(textwrap.fill(sample.question, 18), fontsize=5)
        ax.set_axis_off()
    half = columns // 2
    curve = fig.add_subplot(grid[1, :half])
    for stage, part in log.groupby("stage", sort=False):
        curve.plot(part["step"], part["loss"], lw=0.8, label=stage)
    curve.set_xlabel("training step")
    curve.set_ylabel("loss")
    curve.set_yscale("log")
    curve.legend(frameon=False)
    bars = fig.add_subplot(grid[1, half:])
    table = accuracy.groupby(["domain", "q_type"])["correct"].mean().unstack("q_type")
    positions = np.arange(len(table.index))
    for offset, q_type in enumerate(table.columns):
        bars.bar(
            positions + 0.38 * offset,
            table[q_type],
            width=0.36,
            color=[DOMAIN_COLOURS.get(d, "grey") for d in table.index],
            hatch="" if q_type == "localization" else "//",
            edgecolor="white",
            label=q_type,
        )
    bars.set_xticks(positions + 0.19, table.index)
    bars.set_ylim(0, 1)
    bars.set_ylabel("held-out accuracy")
    bars.legend(  # above the bars, never over one
        frameon=False, fontsize=6, ncol=2, loc="lower center", bbox_to_anchor=(0.5, 1.0)
    )
    for ax in (curve, bars):
        sns.despine(ax=ax)
    if caption:
        fig.suptitle(caption, fontsize=8)
    fig.tight_layout()
    return fig


PROTOCOL_COLOURS = {"corrected": "#009E73", "authors": "#CC79A7"}
"""Okabe-Ito bluish green = the corrected setting, reddish purple = the authors'."""


def _protocol_curves(ax, frame: pd.DataFrame, metric: str, title: str) -> None:
    """Per-layer mean ``metric`` with 95% bootstrap bands, one line per setting, and the
    best (lowest-KL, highest-ratio) layer of each marked with a star."""
    part = frame[frame["metric"] == metric]
    lower = metric != "attention_ratio"
    for setting, colour in PROTOCOL_COLOURS.items():
        curve = (
            part[part["setting"] == setting]
            .groupby("layer", as_index=False)[["mean", "low", "high"]]
            .mean()
        )
        if curve.empty:
            continue
        _band(ax, curve, colour, "-", f"{setting}: mean, 95% bootstrap band")
        best = curve.loc[curve["mean"].idxmin() if lower else curve["mean"].idxmax()]
        ax.plot(best["layer"], best["mean"], marker="*", ms=9, color=colour, mec="black", mew=0.5)
    _style_metric_axis(ax, metric)
    ensure_span(ax, metric)  # a random model's flat ratio must not look like an effect
    ax.set_title(title, fontsize=7, loc="left")


def protocol_sensitivity_figure(
    box: dict, resolution: dict, refine: dict, caption: str | None = None
):
    """Fig 7: what each protocol choice changes. (a, b) box mapping on non-square images:
    per-layer attention ratio and KL, processor geometry (corrected) vs scaled boxes
    (authors); (c) the Qwen cap: image tokens per image side; (d) the cap's per-layer
    attention ratio; (e) VGRefine accuracy per variant; (f) seconds per forward.
    Colours: :data:`PROTOCOL_COLOURS`; stars: each setting's best layer."""
    fig, axes = plt.subplots(2, 3, figsize=(7.2, 4.9), squeeze=False)
    (a, b, c), (d, e, f) = axes
    _protocol_curves(a, box["curves"], "attention_ratio", "(a) box mapping: attention ratio")
    _protocol_curves(b, box["curves"], "kl", "(b) box mapping: KL")
    sizes = resolution["sizes"]
    for setting, colour in PROTOCOL_COLOURS.items():
        part = sizes[sizes["setting"] == setting].sort_values("side")
        c.plot(part["side"], part["tokens"], marker="o", color=colour, label=setting)
        f.plot(part["side"], part["seconds"], marker="o", color=colour, label=setting)
        for side, tokens, grid in part[["side", "tokens", "grid"]].itertuples(index=False):
            c.annotate(grid, (side, tokens), fontsize=5, xytext=(2, 3), textcoords="offset points")
    for ax, label in ((c, "image tokens"), (f, "seconds per forward")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(sorted(set(sizes["side"])))
        ax.xaxis.set_major_formatter(mpl.ticker.ScalarFormatter())
        ax.xaxis.set_minor_locator(mpl.ticker.NullLocator())
        ax.set_xlabel("square image side (px)")
        ax.set_ylabel(label)
        sns.despine(ax=ax)
    c.axhline(64, color="grey", lw=0.8, ls=":")
    c.set_title("(c) Qwen cap: tokens (labels: grid)", fontsize=7, loc="left")
    f.set_title("(f) Qwen cap: time", fontsize=7, loc="left")
    _protocol_curves(d, resolution["curves"], "attention_ratio", "(d) Qwen cap: attention ratio")
    accuracy = refine["accuracy"]
    variants = list(dict.fromkeys(accuracy["variant"]))
    datasets = list(dict.fromkeys(accuracy["dataset"]))
    width = 0.8 / max(len(datasets), 1)
    hatches = ["", "///", "..", "xx"]
    for i, dataset in enumerate(datasets):
        part = accuracy[accuracy["dataset"] == dataset].set_index("variant").loc[variants]
        x = np.arange(len(variants)) + (i - (len(datasets) - 1) / 2) * width
        colours = [PROTOCOL_COLOURS.get(v, "#56B4E9") for v in variants]
        e.bar(
            x,
            part["vgrefine"],
            width,
            color=colours,
            hatch=hatches[i % len(hatches)],
            edgecolor="black",
            linewidth=0.4,
            label=f"{dataset}: VGRefine",
        )
        e.errorbar(
            x,
            part["vgrefine"],
            yerr=[
                part["vgrefine"] - part["vgrefine_low"],
                part["vgrefine_high"] - part["vgrefine"],
            ],
            fmt="none",
            ecolor="black",
            lw=0.7,
        )
        e.scatter(x, part["baseline"], marker="_", s=60, color="black", zorder=3)
    e.set_xticks(np.arange(len(variants)))
    e.set_xticklabels(
        [v if v in PROTOCOL_COLOURS else f"corr. + {v}" for v in variants],
        rotation=35,
        ha="right",
        fontsize=6,
    )
    e.set_ylabel("exact-match accuracy")
    e.set_ylim(0, 1.05)
    e.set_title("(e) VGRefine variants", fontsize=7, loc="left")
    sns.despine(ax=e)
    handles = [
        mpl.lines.Line2D([], [], color=PROTOCOL_COLOURS["corrected"], lw=2, label="corrected"),
        mpl.lines.Line2D([], [], color=PROTOCOL_COLOURS["authors"], lw=2, label="authors"),
        mpl.patches.Patch(color="#56B4E9", label="corrected with one authors' setting"),
        mpl.lines.Line2D([], [], color="grey", alpha=0.4, lw=6, label="95% bootstrap band / bar"),
        mpl.lines.Line2D(
            [], [], marker="*", ls="", color="grey", mec="black", ms=9, label="best layer"
        ),
        mpl.lines.Line2D([], [], marker="_", ls="", color="black", ms=9, label="no VGRefine"),
        mpl.lines.Line2D([], [], color="grey", ls=":", label="chance (ratio) / 64 tokens"),
    ]
    handles += [
        mpl.patches.Patch(
            facecolor="white", edgecolor="black", hatch=hatches[i % len(hatches)], label=dataset
        )
        for i, dataset in enumerate(datasets)
    ]
    fig.legend(handles=handles, loc="lower center", ncol=4, frameon=False, fontsize=6)
    if caption:
        fig.suptitle(caption, fontsize=8)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return fig


ARM_COLOURS = {
    "none": "#999999",
    "heads": "#0072B2",
    "oracle": "#009E73",
    "random": "#E69F00",
    "anti-oracle": "#D55E00",
}
"""Okabe-Ito colours of VGRefine's triage arms (``none``: without VGRefine)."""
ARM_LABELS = {
    "none": "without VGRefine",
    "heads": "heads (VGRefine)",
    "oracle": "oracle (box kept)",
    "random": "random",
    "anti-oracle": "anti-oracle (box first)",
}


def anatomy_figure(table: pd.DataFrame, answers: pd.DataFrame, caption: str | None = None):
    """Notebook 08 (fig09): one row per model x protocol, four panels each, the domains
    side by side in each panel. (a) accuracy per arm (exact match, 0-1) with the paired
    95% bootstrap interval of its difference from no VGRefine, drawn around the grey
    no-VGRefine level; (b) flips per arm: wrong → right up, right → wrong down (counts;
    the random arm's are expected counts over its draws); (c) share of the box tokens
    each arm keeps, with the chance line (1 - percentile / 100); (d) per question, the
    change of its score against the share of its box the arm keeps (points jittered; the
    lines: the mean per fifth of the share)."""
    groups = list(table.groupby(["label", "protocol"], sort=False))
    arms = [a for a in ("heads", "oracle", "random", "anti-oracle") if a in set(table["arm"])]
    fig, axes = plt.subplots(len(groups), 4, squeeze=False, figsize=(11.0, 2.5 * len(groups) + 0.9))
    width = 0.8 / (len(arms) + 1)
    rng = np.random.default_rng(0)
    for axes_row, ((label, protocol), group) in zip(axes, groups, strict=True):
        domains = list(dict.fromkeys(group["domain"]))
        x = np.arange(len(domains))
        ax_acc, ax_flip, ax_kept, ax_change = axes_row
        for d, domain in enumerate(domains):
            frame = group[group["domain"] == domain].set_index("arm")
            none = frame.loc["none"]
            left, right = d - 0.4, d - 0.4 + width * (len(arms) + 1)
            ax_acc.hlines(none["accuracy"], left, right, color=ARM_COLOURS["none"], lw=2)
            ax_acc.errorbar(
                d - 0.4 + width / 2,
                none["accuracy"],
                yerr=[[none["accuracy"] - none["ci_low"]], [none["ci_high"] - none["accuracy"]]],
                fmt="s",
                color=ARM_COLOURS["none"],
                ms=4,
                capsize=2,
            )
            for i, arm in enumerate(arms, start=1):
                if arm not in frame.index:
                    continue
                r = frame.loc[arm]
                pos = d - 0.4 + width * (i + 0.5)
                low = none["accuracy"] + r["diff_low"]
                high = none["accuracy"] + r["diff_high"]
                ax_acc.errorbar(
                    pos,
                    r["accuracy"],
                    yerr=[[max(r["accuracy"] - low, 0)], [max(high - r["accuracy"], 0)]],
                    fmt="o",
                    color=ARM_COLOURS[arm],
                    ms=4,
                    capsize=2,
                )
                ax_flip.bar(pos, r["wrong_to_right"], width * 0.9, color=ARM_COLOURS[arm])
                ax_flip.bar(
                    pos, -r["right_to_wrong"], width * 0.9, color=ARM_COLOURS[arm], alpha=0.55
                )
                ax_kept.bar(pos, r["box_kept"], width * 0.9, color=ARM_COLOURS[arm])
                if np.isfinite(r["box_kept"]):
                    ax_kept.text(
                        pos, r["box_kept"] + 0.02, f"{r['box_kept']:.2f}", ha="center", fontsize=5
                    )
            chance = frame["chance"].iloc[0]
            ax_kept.hlines(chance, left, right, color="black", ls="--", lw=1)
        for ax in (ax_acc, ax_flip, ax_kept):
            ax.set_xticks(x, domains)
            ax.set_xlim(-0.5, len(domains) - 0.5)
        ax_acc.set_ylim(0, 1.02)
        ax_acc.set_ylabel(f"{label}\n{protocol}\n\naccuracy (exact match)")
        ax_acc.set_title("(a) accuracy; bars: paired 95% CI vs without")
        ax_flip.axhline(0, color="black", lw=0.6)
        ax_flip.set_ylabel("questions (up: wrong→right,\ndown: right→wrong)")
        ax_flip.set_title("(b) answers flipped per arm")
        ax_kept.set_ylim(0, 1.1)
        ax_kept.set_ylabel("share of box tokens kept")
        ax_kept.set_title("(c) triage quality; dashed: chance")
        rows = answers[(answers["label"] == label) & (answers["protocol"] == protocol)]
        bins = np.linspace(0, 1, 6)
        for arm in arms:
            part = rows[rows["arm"] == arm]
            kept = 1 - part["knocked_box_share"].to_numpy(dtype=float)
            change = (part["refined_exact"] - part["baseline_exact"]).to_numpy(dtype=float)
            ok = np.isfinite(kept)
            ax_change.scatter(
                kept[ok] + rng.uniform(-0.015, 0.015, ok.sum()),
                change[ok] + rng.uniform(-0.08, 0.08, ok.sum()),
                s=5,
                color=ARM_COLOURS[arm],
                alpha=0.35,
                lw=0,
            )
            which = np.clip(np.digitize(kept[ok], bins) - 1, 0, len(bins) - 2)
            means = [
                (bins[b : b + 2].mean(), change[ok][which == b].mean())
                for b in range(len(bins) - 1)
                if (which == b).sum() >= 3
            ]
            if means:
                ax_change.plot(*zip(*means, strict=True), color=ARM_COLOURS[arm], lw=1.5)
        ax_change.axhline(0, color="black", lw=0.6)
        ax_change.set_xlim(-0.05, 1.05)
        ax_change.set_ylim(-1.15, 1.15)
        ax_change.set_xlabel("share of the question's box tokens kept")
        ax_change.set_ylabel("score change vs without")
        ax_change.set_title("(d) per question (all domains)")
    handles = [
        plt.Line2D([], [], color=ARM_COLOURS["none"], marker="s", lw=2, label=ARM_LABELS["none"])
    ]
    handles += [
        plt.Line2D([], [], color=ARM_COLOURS[a], marker="o", lw=0, label=ARM_LABELS[a])
        for a in arms
    ]
    handles += [
        mpl.patches.Patch(color="#555555", label="(b) solid: wrong→right"),
        mpl.patches.Patch(color="#555555", alpha=0.55, label="(b) light: right→wrong"),
        plt.Line2D([], [], color="black", ls="--", label="(c) chance: 1 - percentile/100"),
        plt.Line2D([], [], color="#555555", lw=1.5, label="(d) line: mean per fifth of share"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=5, frameon=False, fontsize=7)
    fig.tight_layout(rect=(0, 0.07 if len(groups) > 1 else 0.12, 1, 0.97 if caption else 1))
    if caption:
        fig.suptitle(caption, fontsize=8)
    return fig

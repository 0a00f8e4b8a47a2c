"""VGRefine (docs/METHOD.md): attention triage with visually sensitive heads, then attention
knockout of the low-relevance image patches while answering. Inference time only."""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from vgutils.errors import UsageError
from vgutils.models.attention import knockout_edit
from vgutils.models.prefix import shared_prefix_attention
from vgutils.models.vlm import Prepared, VisionLanguageModel
from vgutils.scoring import head_mean, normalized
from vgutils.stats import LOWER_IS_BETTER

DEFAULT_PERCENTILE = 80
TRIAGES: tuple[str, ...] = ("heads", "oracle", "random", "anti-oracle")
"""Where VGRefine's knocked-out tokens come from (``triage``), always as many as the heads
triage knocks out at the ``percentile`` (:func:`knocked_tokens`): ``heads`` (the method:
the tokens below the percentile of the heads' relevance); ``oracle`` (the tokens outside
the ground-truth boxes first, lowest heads relevance first, box tokens only when more
must go than there are others); ``random`` (a seeded uniform choice, ``draws`` times, the
answers' scores averaged); ``anti-oracle`` (the box tokens first, then the others: a
sanity arm that must hurt). ``oracle`` and ``anti-oracle`` need boxes."""
BOX_TRIAGES: tuple[str, ...] = ("oracle", "anti-oracle")
"""The triages that need the samples' ground-truth boxes (none for multiple choice)."""
DEFAULT_DRAWS = 5
"""Random draws per question of ``triage: random`` (``--draws``)."""
DENOMINATORS: tuple[str, ...] = ("head", "layer")
"""Triage normalisation: ``head`` = each head's raw map over the same head's generic map
(ours); ``layer`` = over its layer's mean generic map (the authors' code)."""


def rank_heads(
    head_metrics: pd.DataFrame, metric: str = "attention_ratio", top_k: int = 10
) -> list[tuple[int, int]]:
    """The ``top_k`` visually sensitive heads ``(layer, head)``: best mean ``metric`` (of the
    normalised per-head map) over the calibration samples in ``head_metrics`` (the
    runner's ``head_metrics.parquet``). Ties: lower layer, then lower head, first."""
    if metric not in LOWER_IS_BETTER:
        raise ValueError(f"unknown metric {metric!r}; expected one of {sorted(LOWER_IS_BETTER)}")
    means = head_metrics.groupby(["layer", "head"])[metric].mean().reset_index()
    ascending = LOWER_IS_BETTER[metric]
    ordered = means.sort_values(
        [metric, "layer", "head"], ascending=[ascending, True, True], kind="stable"
    )
    return [(int(r.layer), int(r.head)) for r in ordered.head(top_k).itertuples()]


def best_layer(
    head_metrics: pd.DataFrame, heads: list[tuple[int, int]], metric: str = "attention_ratio"
) -> int:
    """A stand-in for the authors' knockout layer when none is given (``vqa --layers
    best``): the layer holding the most of the top heads ``heads`` (:func:`rank_heads`);
    ties go to the layer whose top heads have the best mean ``metric`` (mean over its top
    heads of their calibration means), then to the lower layer. The authors chose their
    layer from layer-level metrics (docs/METHOD.md), not by this rule: for HuatuoGPT-Vision-7B
    they give layer 16, which holds 4 of their 20 heads (the largest group, not a
    majority). Profiles give the authors' layer explicitly (``layers: [16]``)."""
    if not heads:
        raise ValueError("best_layer needs at least one head")
    if metric not in LOWER_IS_BETTER:
        raise ValueError(f"unknown metric {metric!r}; expected one of {sorted(LOWER_IS_BETTER)}")
    means = head_metrics.groupby(["layer", "head"])[metric].mean()
    per_layer: dict[int, list[float]] = {}
    for layer, head in heads:
        per_layer.setdefault(int(layer), []).append(float(means.loc[(layer, head)]))
    sign = 1.0 if LOWER_IS_BETTER[metric] else -1.0
    return min(per_layer, key=lambda x: (-len(per_layer[x]), sign * np.mean(per_layer[x]), x))


HEADS_SOURCES = ("given", "ranked")
"""Where VGRefine's heads come from: ``given`` (a list, e.g. the authors' 20 heads of
HuatuoGPT-Vision-7B) or ``ranked`` (:func:`rank_heads` on a calibration run)."""


def parse_heads(text: str) -> tuple[tuple[int, int], ...]:
    """``"15:4,16:5"`` -> ``((15, 4), (16, 5))`` (``--heads``); UsageError naming the bad
    item."""
    heads = []
    for item in text.replace(" ", "").split(","):
        layer, sep, head = item.partition(":")
        try:
            if not sep:
                raise ValueError
            heads.append((int(layer), int(head)))
        except ValueError:
            raise UsageError(
                f"--heads {text}: {item!r} is not LAYER:HEAD (e.g. --heads 15:4,16:5)"
            ) from None
    return as_heads(heads, "--heads")


def as_heads(value, name: str = "heads") -> tuple[tuple[int, int], ...]:
    """A list of ``(layer, head)`` pairs (lists or tuples of two non-negative integers) as
    a tuple of tuples, duplicates kept in order once; UsageError naming ``name`` else."""
    try:
        heads = [(int(layer), int(head)) for layer, head in value]
    except (TypeError, ValueError):
        raise UsageError(f"{name}: expected a list of [layer, head] pairs, got {value!r}") from None
    if not heads or any(layer < 0 or head < 0 for layer, head in heads):
        raise UsageError(f"{name}: expected at least one [layer, head] pair >= 0, got {value!r}")
    return tuple(dict.fromkeys(heads))


@dataclass(frozen=True)
class RefineSettings:
    """Everything VGRefine needs besides the model and the data: one object for the API,
    ``vqa`` (free text and ``--benchmark``), the multiple-choice runs and the profiles
    (the ``refine`` block and each ``benchmarks.runs`` entry: :meth:`from_spec`).

    - ``heads``: given ``(layer, head)`` pairs (e.g. the authors' 20 of
      HuatuoGPT-Vision-7B), else ranked on ``heads_from`` (a run of ``extract --heads``)
      keeping ``top_k``;
    - ``layers``: knockout layers, given numbers, ``"best"`` (:func:`best_layer`: needs
      ``heads_from``) or ``"heads"`` (every layer holding a chosen head);
    - ``percentile``: the low-relevance cut; ``denominator``, ``include_generated``,
      ``prompt_suffix``: as in :func:`triage`, :func:`knockout` and the protocols'
      ``refine_prompt_suffix``;
    - ``triage``: which tokens are knocked out (:data:`TRIAGES`: ``heads``, the method;
      ``oracle``, ``random``, ``anti-oracle``: the same number of tokens chosen by the
      ground-truth boxes or by chance); ``draws`` (``random`` only, default
      :data:`DEFAULT_DRAWS`) and ``seed`` (``random`` only, default 0; each question's
      draws are seeded with ``seed`` and its sample id).

    ``None`` means the protocol's value; :meth:`resolve` fills them in and makes heads and
    layers concrete, with ``heads_source`` (:data:`HEADS_SOURCES`) and ``layers_source``
    (``given``, ``best``, ``heads``) saying where they came from: what ``run.json``
    records (``heads_from`` only where it was read)."""

    heads: tuple[tuple[int, int], ...] | None = None
    heads_from: str | None = None
    top_k: int | None = None
    layers: tuple[int, ...] | str | None = None
    percentile: float = 80.0
    denominator: str | None = None
    include_generated: bool | None = None
    prompt_suffix: str | None = None
    heads_source: str | None = None
    layers_source: str | None = None
    triage: str = "heads"
    draws: int | None = None
    seed: int | None = None

    KEYS = (
        "heads",
        "top_k",
        "layers",
        "percentile",
        "denominator",
        "include_generated",
        "prompt_suffix",
        "triage",
        "draws",
        "seed",
    )
    """The keys :meth:`from_spec` reads from a profile (besides ``heads_from``)."""

    @classmethod
    def from_spec(cls, spec: dict, heads_from: str | None = None) -> RefineSettings:
        """The settings a profile's block gives (:attr:`KEYS`; absent: ``None``, the
        protocol's; ``percentile`` default 80)."""
        layers = spec.get("layers")
        if isinstance(layers, int) and not isinstance(layers, bool):
            layers = (layers,)
        return cls(
            heads=as_heads(spec["heads"]) if spec.get("heads") else None,
            heads_from=heads_from,
            top_k=spec.get("top_k"),
            layers=tuple(int(x) for x in layers) if isinstance(layers, list | tuple) else layers,
            percentile=float(spec.get("percentile", DEFAULT_PERCENTILE)),
            denominator=spec.get("denominator"),
            include_generated=spec.get("include_generated"),
            prompt_suffix=spec.get("prompt_suffix"),
            triage=spec.get("triage") or "heads",
            draws=spec.get("draws"),
            seed=spec.get("seed"),
        )

    def check_triage(self, has_boxes: bool = True, where: str = "--triage") -> None:
        """UsageError for an unknown ``triage``, ``draws`` outside ``random``, and (data
        without boxes: ``has_boxes`` false, the multiple-choice benchmarks) a triage that
        needs boxes."""
        if self.triage not in TRIAGES:
            raise UsageError(f"{where} {self.triage!r}: expected one of {', '.join(TRIAGES)}")
        if self.draws is not None:
            if self.triage != "random":
                raise UsageError(
                    f"--draws {self.draws} with {where} {self.triage}: draws are for the "
                    "random triage only"
                )
            if isinstance(self.draws, bool) or not isinstance(self.draws, int) or self.draws < 1:
                raise UsageError(f"--draws {self.draws!r}: expected an integer >= 1")
        if not has_boxes and self.triage in BOX_TRIAGES:
            raise UsageError(
                f"{where} {self.triage}: this benchmark has no ground-truth boxes (the "
                "multiple-choice sets); run --triage heads or random here, and the oracle "
                "arms on a free-text dataset with boxes (e.g. vqa --dataset teach-medical)"
            )

    def resolve(self, protocol=None, verbose: bool = False) -> RefineSettings:
        """These settings with the ``protocol``'s value (a name or a
        :class:`vgutils.protocols.Protocol`; ``None``: ``corrected``) for every one left
        ``None``, and concrete heads and layers (ranked heads and the ``best`` layer read
        ``heads_from``'s ``head_metrics``; no model needed). Idempotent."""
        from vgutils.protocols import Protocol, get_protocol

        if self.heads_source is not None:  # resolved already
            return self
        if not isinstance(protocol, Protocol):
            protocol = get_protocol(protocol)
        if self.denominator is not None and self.denominator not in DENOMINATORS:
            raise UsageError(
                f"--denominator {self.denominator!r}: expected one of {', '.join(DENOMINATORS)}"
            )
        if not 0 <= float(self.percentile) < 100:
            raise UsageError(f"--percentile {self.percentile}: expected 0 <= p < 100")
        self.check_triage()
        head_metrics = None
        if self.heads is not None:
            heads = as_heads(self.heads)
            if self.top_k is not None and self.top_k != len(heads):
                raise UsageError(
                    f"--top-k {self.top_k} with {len(heads)} given heads: give one of them "
                    "(given heads are used as they are)"
                )
            source, top_k = "given", len(heads)
        else:
            if not self.heads_from:
                raise UsageError(
                    "VGRefine needs heads: --heads LAYER:HEAD,... or --heads-from (a run "
                    "made with `extract --heads`)"
                )
            top_k = self.top_k if self.top_k is not None else protocol.top_k
            if top_k < 1:
                raise UsageError(f"--top-k {top_k}: expected a positive number")
            head_metrics = _head_metrics(self.heads_from)
            heads, source = tuple(rank_heads(head_metrics, top_k=top_k)), "ranked"
        layers = self.layers if self.layers is not None else protocol.knockout_layers
        if isinstance(layers, list):
            layers = tuple(layers)
        if isinstance(layers, tuple):
            layers_source = "given"
        elif layers == "heads":
            layers, layers_source = tuple(sorted({layer for layer, _ in heads})), "heads"
        elif layers == "best":
            if not self.heads_from:
                raise UsageError(
                    "knockout layers 'best' rank layers on a calibration run: give "
                    "--heads-from, or the layers (--layers; the authors' layer for "
                    "HuatuoGPT-Vision-7B is 16)"
                )
            if head_metrics is None:
                head_metrics = _head_metrics(self.heads_from)
            layer = best_layer(head_metrics, list(heads))
            if verbose:
                held = sum(h_layer == layer for h_layer, _ in heads)
                print(
                    f"knockout layer: {layer} (best: holds {held} of the {len(heads)} heads; "
                    f"{self.heads_from})"
                )
            layers, layers_source = (layer,), "best"
        else:
            raise UsageError(f"--layers {layers!r}: expected layer numbers, 'best' or 'heads'")
        return replace(
            self,
            heads=heads,
            heads_from=None if source == "given" and layers_source != "best" else self.heads_from,
            top_k=top_k,
            layers=tuple(int(x) for x in layers),
            percentile=float(self.percentile),
            denominator=self.denominator or protocol.denominator,
            include_generated=(
                self.include_generated
                if self.include_generated is not None
                else protocol.include_generated
            ),
            prompt_suffix=(
                self.prompt_suffix
                if self.prompt_suffix is not None
                else protocol.refine_prompt_suffix
            ),
            heads_source=source,
            layers_source=layers_source,
            draws=(self.draws or DEFAULT_DRAWS) if self.triage == "random" else None,
            seed=(self.seed or 0) if self.triage == "random" else None,
        )

    def check_model(self, vlm: VisionLanguageModel) -> None:
        """UsageError when a head or layer lies outside ``vlm``'s language model."""
        layers = [x for x in (self.layers or ()) if not 0 <= x < vlm.num_layers]
        if layers:
            raise UsageError(f"--layers {layers} outside 0..{vlm.num_layers - 1}")
        heads = [
            (layer, head)
            for layer, head in self.heads or ()
            if not (0 <= layer < vlm.num_layers and 0 <= head < vlm.num_heads)
        ]
        if heads:
            raise UsageError(
                f"--heads {', '.join(f'{a}:{b}' for a, b in heads)} outside the model's "
                f"{vlm.num_layers} layers x {vlm.num_heads} heads"
            )

    def describe(self) -> str:
        """In words, e.g. ``20 given heads, knockout layer 16``."""
        heads = f"{len(self.heads or ())} {self.heads_source or ''} heads".replace("  ", " ")
        layers = ", ".join(map(str, self.layers)) if isinstance(self.layers, tuple) else "?"
        word = "layer" if isinstance(self.layers, tuple) and len(self.layers) == 1 else "layers"
        arm = ""
        if self.triage != "heads":
            arm = f", {self.triage} triage" + (
                f" ({self.draws} draws)" if self.triage == "random" else ""
            )
        return f"{heads}, knockout {word} {layers}{arm}"

    def answer(
        self,
        vlm: VisionLanguageModel,
        image,
        question: str,
        max_new_tokens: int | None = 16,
        *,
        generic_heads: np.ndarray | None = None,
        user_text: str | None = None,
        generation: dict | None = None,
        boxes=None,
        sample_id: str | None = None,
    ) -> RefineResult:
        """:func:`answer` with these (resolved) settings; ``user_text`` (a whole prompt
        text, e.g. multiple choice) gets the ``prompt_suffix``. A free-text ``question``
        needs none: its prompt already ends with the answer instruction the authors'
        ``VGRefine()`` appends. ``boxes``: the sample's ground-truth boxes (xyxy, original
        pixels; needed by the oracle arms, counted by every arm); ``sample_id``: seeds the
        random arm's draws with :attr:`seed` (:func:`draw_generator`)."""
        if self.heads_source is None:
            raise ValueError("RefineSettings.answer needs resolved settings (resolve())")
        if user_text is not None and self.prompt_suffix:
            user_text = user_text + self.prompt_suffix
        return answer(
            vlm,
            image,
            question,
            list(self.heads),
            list(self.layers),
            self.percentile,
            max_new_tokens,
            generic_heads=generic_heads,
            denominator=self.denominator,
            include_generated=self.include_generated,
            user_text=user_text,
            generation=generation,
            arm=self.triage,
            boxes=boxes,
            draws=self.draws or 1,
            rng=draw_generator(self.seed or 0, sample_id) if self.triage == "random" else None,
        )


def draw_generator(seed: int, sample_id) -> np.random.Generator:
    """The random arm's generator of one question: seeded with the run's ``seed`` and a
    stable hash (CRC-32) of ``sample_id``, so a resumed or sharded run draws the same."""
    key = zlib.crc32(str(sample_id if sample_id is not None else "").encode())
    return np.random.default_rng([int(seed), key])


def box_tokens(layout, boxes) -> np.ndarray | None:
    """Boolean ``(N,)``: the image tokens whose rectangle (``layout``: the prepared
    prompt's, processor-true geometry) overlaps a ground-truth box
    (:func:`vgutils.metrics.gt_mask`); all false when the boxes cover no token; ``None``
    without boxes."""
    from vgutils.metrics import gt_mask

    if boxes is None or len(np.atleast_1d(np.asarray(boxes, dtype=float))) == 0:
        return None
    try:
        return gt_mask(layout, boxes)
    except ValueError:
        return np.zeros(layout.n_tokens, dtype=bool)


def knocked_tokens(
    arm: str,
    low: np.ndarray,
    relevance: np.ndarray,
    box: np.ndarray | None = None,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Boolean ``(N,)``: the tokens the ``arm`` (:data:`TRIAGES`) knocks out, exactly
    ``low.sum()`` of them (``low``: the heads triage at the percentile; ``relevance``: its
    ``(N,)`` scores). ``oracle``: tokens outside ``box`` first, then box tokens; within
    each group the lowest ``relevance`` first (ties: lower index). ``anti-oracle``: box
    tokens first, then the others, the same order within each. ``random``: a uniform
    choice by ``rng``. ``heads``: ``low``."""
    low = np.asarray(low, dtype=bool)
    count, n = int(low.sum()), len(low)
    if arm == "heads":
        return low.copy()
    knocked = np.zeros(n, dtype=bool)
    if arm == "random":
        if rng is None:
            raise ValueError("the random triage needs a generator (draw_generator)")
        knocked[rng.choice(n, size=count, replace=False)] = True
        return knocked
    if arm not in BOX_TRIAGES:
        raise ValueError(f"unknown triage {arm!r}; expected one of {TRIAGES}")
    if box is None:
        raise UsageError(f"triage {arm}: needs the sample's ground-truth boxes; it has none")
    box = np.asarray(box, dtype=bool)
    first = ~box if arm == "oracle" else box
    order = np.lexsort((np.arange(n), np.asarray(relevance, dtype=float), ~first))
    knocked[order[:count]] = True
    return knocked


def knocked_box_share(knocked: np.ndarray, box: np.ndarray | None) -> float:
    """The share of the box tokens in ``knocked`` (NaN without box tokens)."""
    if box is None or not np.any(box):
        return float("nan")
    return float((np.asarray(knocked) & box).sum() / box.sum())


def _head_metrics(run: str) -> pd.DataFrame:
    from vgutils.results import load_metrics, require_complete

    require_complete(run)  # a calibration still being written ranks others
    return load_metrics(run, "head_metrics")


@dataclass(frozen=True, eq=False)
class Triage:
    """``relevance``: ``(N,)`` mean normalised map of the chosen heads; ``low``: bool
    ``(N,)`` tokens below the ``percentile``-th percentile of ``relevance``."""

    relevance: np.ndarray
    low: np.ndarray
    percentile: float
    prepared: Prepared
    question_heads: np.ndarray  # (layers, heads, N) raw, last token
    generic_heads: np.ndarray  # (layers, heads, N) raw, last token of the generic prompt


def triage(
    vlm: VisionLanguageModel,
    image,
    question: str,
    heads: list[tuple[int, int]],
    percentile: float = DEFAULT_PERCENTILE,
    *,
    generic_heads: np.ndarray | None = None,
    denominator: str = "head",
    user_text: str | None = None,
) -> Triage:
    """Attention triage: average the chosen heads' normalised (question / generic, last
    token) maps and mark the tokens below the ``percentile``-th percentile as low.
    ``denominator``: ``"head"`` divides each head's raw map by the same head's generic
    map; ``"layer"`` (the authors' code) by the mean over heads of its layer's generic
    map. ``generic_heads``: the image's generic-prompt attention ``(layers, heads, N)``
    when already computed (several questions about one image share it). ``user_text``:
    the whole user text instead of ``question`` + answer instruction (e.g. a
    multiple-choice prompt; :meth:`VisionLanguageModel.prepare_text`). Under the model's
    ``attention_precision="model"`` the layer-mean generic map is taken in the model's
    dtype (:func:`vgutils.scoring.head_mean`): the authors' order of operations (docs/METHOD.md)."""
    if not heads:
        raise ValueError("triage needs at least one head")
    if denominator not in DENOMINATORS:
        raise ValueError(f"unknown denominator {denominator!r}; expected one of {DENOMINATORS}")
    prepared = (
        vlm.prepare(image, question) if user_text is None else vlm.prepare_text(image, user_text)
    )
    if generic_heads is None:
        question_heads, generic_heads = shared_prefix_attention(
            vlm, [prepared, vlm.prepare_generic(image)], "last"
        )
    else:
        question_heads = vlm.attention(prepared, "last")
    generic = generic_heads.astype(np.float64)
    if denominator == "layer":  # the head mean in the model's dtype under its precision
        means = head_mean(generic_heads, vlm.head_mean_dtype, axis=1)[:, None, :]
        generic = np.broadcast_to(means, generic.shape)
    per_head = normalized(question_heads.astype(np.float64), generic)
    layers, head_index = zip(*heads, strict=True)
    relevance = per_head[list(layers), list(head_index)].mean(axis=0)
    low = (
        relevance < np.percentile(relevance, percentile)
        if percentile > 0
        else np.zeros(len(relevance), dtype=bool)
    )
    return Triage(relevance, low, percentile, prepared, question_heads, generic_heads)


def text_rows_after_image(prepared: Prepared) -> np.ndarray:
    """Query rows VGRefine edits in the prompt: the tokens after the last image token."""
    return prepared.query_positions["question"]


@contextlib.contextmanager
def knockout(
    vlm: VisionLanguageModel,
    layers: list[int] | range,
    query_positions: np.ndarray,
    key_positions: np.ndarray,
    include_generated: bool = False,
) -> Iterator[None]:
    """Inside: in ``layers``, the rows at ``query_positions`` give zero weight to
    ``key_positions``; with ``include_generated`` every later row too (the generated
    tokens, KV-cache steps included; the authors' code does not block them, hence the
    default ``False``). The softmax renormalises the rest. An attention-mask edit in the
    ``vgutils`` attention function, the same for every family; outside, the model is
    unchanged."""
    bad = [layer for layer in layers if not 0 <= layer < vlm.num_layers]
    if bad:
        raise ValueError(f"layers {bad} outside 0..{vlm.num_layers - 1}")
    query_positions = np.asarray(query_positions)
    generated_from = (
        int(query_positions.max()) + 1 if include_generated and len(query_positions) else None
    )
    with knockout_edit(layers, query_positions, np.asarray(key_positions), generated_from):
        yield


@dataclass(frozen=True, eq=False)
class RefineResult:
    """Answers with and without VGRefine, the triage and the layer-mean normalised maps
    ``(layers, N)`` of the last prompt token before and after the knockout. ``arm``: the
    triage (:data:`TRIAGES`); ``knocked``: ``(N,)`` the tokens it knocked out (the first
    draw's for ``random``); ``answers`` and ``box_shares``: per draw (one for every other
    arm) the answer and the share of the box tokens knocked out; ``box``: ``(N,)`` the
    box tokens (``None`` without boxes). ``answer`` is the first draw's."""

    answer: str
    baseline_answer: str
    triage: Triage
    map_before: np.ndarray
    map_after: np.ndarray
    arm: str = "heads"
    knocked: np.ndarray | None = None
    answers: tuple[str, ...] = ()
    box_shares: tuple[float, ...] = ()
    box: np.ndarray | None = None

    @property
    def box_tokens(self) -> int | None:
        """How many image tokens the ground-truth boxes cover (``None`` without boxes)."""
        return None if self.box is None else int(self.box.sum())

    @property
    def knocked_box_share(self) -> float:
        """Mean over draws of the share of the box tokens knocked out (NaN without)."""
        shares = np.asarray(self.box_shares, dtype=float)
        return float(shares.mean()) if len(shares) and np.isfinite(shares).all() else np.nan


def answer(
    vlm: VisionLanguageModel,
    image,
    question: str,
    heads: list[tuple[int, int]],
    layers: list[int] | range,
    percentile: float = DEFAULT_PERCENTILE,
    max_new_tokens: int = 16,
    *,
    generic_heads: np.ndarray | None = None,
    denominator: str = "head",
    include_generated: bool = True,
    user_text: str | None = None,
    generation: dict | None = None,
    arm: str = "heads",
    boxes=None,
    draws: int = 1,
    rng: np.random.Generator | None = None,
) -> RefineResult:
    """Answer ``question`` about ``image`` without and with VGRefine, greedily or with
    ``generation`` (:meth:`VisionLanguageModel.generate`'s ``settings``; ``max_new_tokens``
    wins when given) (``generic_heads``, ``denominator``, ``user_text``: see
    :func:`triage`; ``include_generated``: see :func:`knockout`). The defaults are the
    ``corrected`` protocol's; the authors' are ``denominator="layer"``, one given layer,
    ``include_generated=False`` and their decoding per family
    (:data:`vgutils.protocols.AUTHORS_DECODING`). :class:`RefineSettings` holds all of
    them (:meth:`RefineSettings.answer`). ``arm``: which tokens are knocked out
    (:func:`knocked_tokens`; as many as the heads triage's), ``boxes`` the sample's
    ground-truth boxes, ``draws`` and ``rng`` the random arm's (one answer per draw)."""
    if arm not in TRIAGES:
        raise ValueError(f"unknown triage {arm!r}; expected one of {TRIAGES}")
    found = triage(
        vlm,
        image,
        question,
        heads,
        percentile,
        generic_heads=generic_heads,
        denominator=denominator,
        user_text=user_text,
    )
    prepared = found.prepared
    box = box_tokens(prepared.layout, boxes)
    baseline = vlm.generate(prepared, max_new_tokens, generation)
    answers, shares, first, after_heads = [], [], None, None
    for _ in range(draws if arm == "random" else 1):
        knocked = knocked_tokens(arm, found.low, found.relevance, box, rng)
        keys = prepared.image_positions[knocked]
        with knockout(vlm, layers, text_rows_after_image(prepared), keys, include_generated):
            answers.append(vlm.generate(prepared, max_new_tokens, generation))
            if after_heads is None:
                after_heads = vlm.attention(prepared, "last")
        shares.append(knocked_box_share(knocked, box))
        first = knocked if first is None else first
    dtype = vlm.head_mean_dtype
    generic = head_mean(found.generic_heads, dtype, axis=1)
    before = normalized(head_mean(found.question_heads, dtype, axis=1), generic)
    after = normalized(head_mean(after_heads, dtype, axis=1), generic)
    return RefineResult(
        answers[0], baseline, found, before, after, arm, first, tuple(answers), tuple(shares), box
    )

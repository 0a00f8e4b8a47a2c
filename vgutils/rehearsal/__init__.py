"""Offline rehearsal of a profile: its own YAML, with random stand-ins for its models and
synthetic data in the real file layout, so that every job and notebook of e.g. the paper
profile runs before anyone downloads 100 GB.

A rehearsal is the profile name with a suffix: ``paper-rehearsal`` (small random models,
CPU, minutes) or ``paper-rehearsal-full`` (the real depths and widths, a GPU). Its
settings are read from ``notebooks/params/paper.yaml`` itself and changed in three ways
only (:func:`rehearse_settings`):

- every model id must be one of :data:`vgutils.rehearsal.models.REAL_MODELS` (or a
  ``tiny:`` model) and every dataset name one of the manifest's: anything else is a
  one-line error naming the file and key (``jobs[1].models[2]``);
- every layer index and head count the profile names (and the protocols' 20 heads) is
  mapped onto the rehearsal build's depth by :data:`LAYER_RULE`;
- the caption says ``REHEARSAL: random models, synthetic data``.

A plug-in: nothing below the figure side imports it. Importing it registers the virtual
profile suffixes (:func:`vgutils.paths.register_profile_suffix`). :func:`activate` (done
by ``jobs`` and ``notebook.setup`` through :func:`enter`) registers a model source that
maps every Hub id to its random stand-in (:class:`StandIns`, asked before the Hub) and
makes a context (:func:`vgutils.context.activate`, inherited by child processes) whose
data root is the synthetic one under the cache (:func:`rehearsal_data_root`), whose
registry overlay is the synthetic files' hashes, and whose figure note is
:data:`CAPTION`. :func:`deactivate` undoes both.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from vgutils import context, paths
from vgutils.errors import DataError, UsageError, choices_hint
from vgutils.locks import build_lock
from vgutils.models.sources import register_source, unregister_source

SUFFIXES = {"-rehearsal-full": "full", "-rehearsal": "small"}
"""Profile-name suffix -> scale (longest first)."""
PLUGIN = "rehearsal"
"""The plug-in's name in a context's ``plugins`` (``rehearsal:<scale>``)."""
CAPTION = "REHEARSAL: random models, synthetic data"
LAYER_RULE = (
    "a layer index l of a model with L language layers becomes round(l*(R-1)/(L-1)) in "
    "the rehearsal build's R layers; a number of heads k out of the model's H heads in "
    "all becomes max(2, round(k*G/H)), at most G, the build's heads in all (the same "
    "share of heads); a given head (l, h), h of the model's P heads per layer, becomes "
    "(round(l*(R-1)/(L-1)), round(h*(Q-1)/(P-1))) with the build's Q heads per layer, and "
    "given heads that land on the same pair collapse into one"
)
LINKED = ("samples", "teach", "teach-mc")
"""Folders of the embedded data that a rehearsal data root links to (not synthetic)."""

for _suffix, _scale in SUFFIXES.items():
    paths.register_profile_suffix(_suffix, _scale)


def split_profile(profile: str) -> tuple[str, str | None]:
    """``paper-rehearsal`` -> ``("paper", "small")``; a plain profile -> ``(profile,
    None)``."""
    base, scale = paths.split_profile(profile)
    return (base, scale) if scale in SUFFIXES.values() else (profile, None)


def active_scale() -> str | None:
    """The scale of the rehearsal in force (the context's ``rehearsal:<scale>``), else
    ``None``."""
    for plugin in context.current().plugins:
        name, _, scale = plugin.partition(":")
        if name == PLUGIN:
            return scale
    return None


def rehearsal_data_root() -> Path:
    """Where the synthetic data is built: ``<cache>/rehearsal/data`` (absolute), never
    inside a real data root."""
    return (context.current().cache_dir / "rehearsal" / "data").resolve()


class StandIns:
    """A model source (:mod:`vgutils.models.sources`): a Hub id of
    :data:`~vgutils.rehearsal.models.REAL_MODELS` -> its random stand-in at ``scale``,
    built on first use; any other Hub id is refused (UsageError)."""

    name = PLUGIN

    def __init__(self, scale: str):
        self.scale = scale

    def names(self) -> list[str]:
        return []

    def resolve(self, name_or_path: str, cache: Path) -> str | None:
        from vgutils.models.published import REAL_MODELS
        from vgutils.rehearsal.models import ensure_model

        if name_or_path not in REAL_MODELS:
            raise UsageError(
                f"--model {name_or_path!r}: no rehearsal build for this id; "
                + choices_hint(name_or_path, list(REAL_MODELS))
            )
        return str(ensure_model(name_or_path, self.scale, cache))


_pushed = 0
"""How many contexts the :func:`activate` calls in force pushed."""


def activate(scale: str) -> Path:
    """Make this process (and its children) rehearse at ``scale``: Hub ids resolve to
    rehearsal builds, the data root is the synthetic one (built here on first use, with
    links to the embedded sample and teaching data where those exist). Returns the data
    root. A rehearsal context inherited from a parent process is kept (its stand-ins
    registered again). :func:`deactivate` undoes it."""
    global _pushed
    from vgutils.rehearsal.data import REGISTRY_FILE, build_rehearsal_data

    deactivate()
    outer = context.current()
    root = rehearsal_data_root()
    register_source(StandIns(scale))
    if active_scale() is not None and outer.data_root.resolve() == root:  # inherited
        plugins = tuple(p for p in outer.plugins if p.partition(":")[0] != PLUGIN)
        context.activate(outer.replace(plugins=(*plugins, f"{PLUGIN}:{scale}")))
        _pushed += 1
        return root
    if outer.data_root.resolve() == root:
        unregister_source(PLUGIN)
        raise UsageError(
            f"rehearsal data root {root} is the data root itself; point $VGUTILS_DATA or "
            "$VGUTILS_CACHE elsewhere (the synthetic files would overwrite real ones)"
        )
    with build_lock():  # the ranks of a launcher: one builds, the others find it built
        build_rehearsal_data(root)
    for name in LINKED:
        target, link = (outer.data_root / name).resolve(), root / name
        if link.is_symlink() and link.resolve() != target:
            link.unlink()
        if target.is_dir() and not link.exists():  # else built on demand in the root
            link.symlink_to(target, target_is_directory=True)
    rehearsing = outer.replace(
        data_root=root,
        registries=(*outer.registries, root / REGISTRY_FILE),
        figure_note=CAPTION,
        plugins=(*outer.plugins, f"{PLUGIN}:{scale}"),
    )
    context.activate(rehearsing)
    _pushed += 1
    return root


def deactivate() -> None:
    """End a rehearsal in this process: Hub ids are Hub ids again and the context is the
    one before :func:`activate` (nothing to do when none is in force)."""
    global _pushed
    unregister_source(PLUGIN)
    for _ in range(_pushed):
        context.deactivate()
    _pushed = 0


def resume() -> None:
    """In a child process whose inherited context names a rehearsal (the CLI calls this):
    register its stand-ins again."""
    scale = active_scale()
    if scale is not None:
        register_source(StandIns(scale))


def enter(settings: dict) -> None:
    """Rehearse (:func:`activate`) when ``settings`` are a rehearsal's, else make sure no
    rehearsal of an earlier profile is still active (:func:`deactivate`)."""
    if "rehearsal" in settings:
        activate(settings["rehearsal"]["scale"])
    else:
        deactivate()


def _walk_names(settings: dict):
    """``(key path, kind, value)`` for every model id (kind ``model``), dataset name
    (``dataset``), benchmark (``benchmark``) and benchmark subset (``subset``) of a
    profile."""
    model_keys, dataset_keys = {"model", "models"}, {"dataset", "datasets", "calibration"}
    dataset_keys |= {"medical", "natural", "vqa_datasets"}

    def values(path, value):
        if isinstance(value, list):
            for i, item in enumerate(value):
                yield f"{path}[{i}]", item
        elif value is not None:
            yield path, value

    def walk(node, path, in_benchmarks):
        if isinstance(node, list):
            for i, item in enumerate(node):
                yield from walk(item, f"{path}[{i}]", in_benchmarks)
            return
        if not isinstance(node, dict):
            return
        for key, value in node.items():
            where = f"{path}.{key}" if path else str(key)
            entries = isinstance(value, list) and any(isinstance(v, dict) for v in value)
            if key in model_keys and not entries:  # entries: notebook 08's model blocks
                yield from ((p, "model", v) for p, v in values(where, value))
            elif key == "benchmark":
                yield where, "benchmark", value
            elif key == "datasets" and in_benchmarks and path == "benchmarks":
                yield from ((p, "subset", v) for p, v in values(where, value))
            elif key in dataset_keys and not isinstance(value, dict):
                yield from ((p, "dataset", v) for p, v in values(where, value))
            elif key in ("samples", "cases") and isinstance(value, dict):
                yield from ((f"{where}.{name}", "dataset", name) for name in value)
            else:
                yield from walk(value, where, in_benchmarks or key == "benchmarks")

    yield from walk(settings, "", False)


def _hint(value: str, known: list[str]) -> str:
    close = difflib.get_close_matches(str(value), known, n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else f"known: {', '.join(sorted(known))}"


def check_names(settings: dict, path: Path) -> None:
    """Every model id, dataset and benchmark the profile names is known to the rehearsal;
    else a ``DataError`` naming the file and the key (one line)."""
    from vgutils.data.manifest import load_benchmarks, load_manifest
    from vgutils.models.published import REAL_MODELS
    from vgutils.models.sources import tiny_names
    from vgutils.rehearsal.data import MC_DATASETS

    models = [*REAL_MODELS, *tiny_names()]
    datasets = list(load_manifest())
    benchmarks = load_benchmarks()
    named = (settings.get("benchmarks") or {}).get("benchmark")
    subsets = list(benchmarks[named].datasets) if named in benchmarks else []
    if named == "medical-mc":  # the synthetic file holds these only
        subsets = [s for s in subsets if s in MC_DATASETS]
    known = {"model": models, "dataset": datasets, "benchmark": list(benchmarks)}
    known["subset"] = subsets
    what = {
        "model": "a model with a rehearsal build (vgutils.rehearsal.models.REAL_MODELS)",
        "dataset": "a dataset of data_manifest/manifest.yaml",
        "benchmark": "a benchmark of data_manifest/manifest.yaml",
        "subset": f"a dataset of benchmark {named!r} with rehearsal data",
    }
    for key, kind, value in _walk_names(settings):
        if value not in known[kind]:
            raise DataError(
                f"{path}: {key}: {value!r} is not {what[kind]}; {_hint(value, known[kind])}"
            )


def map_layer(layer: int, real_layers: int, layers: int) -> int:
    """:data:`LAYER_RULE` for one layer index."""
    return round(layer * (layers - 1) / max(real_layers - 1, 1))


def map_heads(k: int, real_heads: int, heads: int) -> int:
    """:data:`LAYER_RULE` for a number of heads."""
    return min(heads, max(2, round(k * heads / real_heads)))


def map_head(head: int, real_per_layer: int, per_layer: int) -> int:
    """:data:`LAYER_RULE` for one head index within its layer."""
    return round(head * (per_layer - 1) / max(real_per_layer - 1, 1))


def map_given_heads(
    heads: list, real_layers: int, real_per_layer: int, layers: int, per_layer: int
) -> list[list[int]]:
    """:data:`LAYER_RULE` for a list of given ``[layer, head]`` pairs: each mapped, in
    order, pairs that coincide after mapping kept once."""
    mapped = [
        (map_layer(int(layer), real_layers, layers), map_head(int(head), real_per_layer, per_layer))
        for layer, head in heads
    ]
    return [list(pair) for pair in dict.fromkeys(mapped)]


def _map_spec(spec: dict, model: str, scale: str, where: str, default_top_k: int) -> list[str]:
    """Map ``spec``'s ``top_k`` (default ``default_top_k``) and integer ``layers`` in place
    for ``model``; returns one line per mapped value."""
    from vgutils.models.published import real_model
    from vgutils.rehearsal.models import rehearsal_layers

    if model.startswith("tiny:"):
        return []
    real = real_model(model)
    layers, heads = rehearsal_layers(model, scale)
    lines = []
    given = spec.get("heads")
    if given:  # given heads are used as they are: no number of heads to map
        spec["heads"] = map_given_heads(
            given, real.layers, real.heads // real.layers, layers, heads // layers
        )
        lines.append(
            f"{where}.heads: {len(given)} given heads of {real.layers} layers x "
            f"{real.heads // real.layers} -> {len(spec['heads'])} of {layers} x "
            f"{heads // layers} ({len(given) - len(spec['heads'])} collapsed): "
            + " ".join(f"{a}:{b}" for a, b in spec["heads"])
        )
    else:
        k = spec.get("top_k") or default_top_k
        spec["top_k"] = map_heads(k, real.heads, heads)
        lines.append(f"{where}.top_k: {k} of {real.heads} heads -> {spec['top_k']} of {heads}")
    chosen = spec.get("layers")
    if isinstance(chosen, int) and not isinstance(chosen, bool):
        spec["layers"] = map_layer(chosen, real.layers, layers)
    elif isinstance(chosen, list):
        spec["layers"] = [map_layer(int(i), real.layers, layers) for i in chosen]
    if spec.get("layers") != chosen:
        lines.append(
            f"{where}.layers: {chosen} of {real.layers} layers -> {spec['layers']} of {layers}"
        )
    return lines


def rehearse_settings(settings: dict, path: Path, scale: str) -> dict:
    """The rehearsal of a profile's raw ``settings`` (read from ``path``): names checked,
    head counts and layers mapped (:data:`LAYER_RULE`), the rehearsal caption; the
    mapping is kept under ``settings["rehearsal"]``."""
    from vgutils.protocols import get_protocol

    check_names(settings, path)
    mapped = []
    protocol_top_k = max(get_protocol(p).top_k for p in ("authors", "corrected"))
    refine = settings.get("refine")
    if refine:
        real_top_k = refine.get("top_k") or protocol_top_k
        mapped += _map_spec(refine, refine["model"], scale, "refine", protocol_top_k)
        variants = (settings.get("sensitivity") or {}).get("refine") or {}
        if {"top_k", "layers", "heads"} & set(variants):  # notebook 06's own settings
            model = variants.get("model", refine["model"])
            mapped += _map_spec(variants, model, scale, "sensitivity.refine", real_top_k)
    for key in ("precision", "prompt_suffix"):  # notebook 06's VGRefine heads
        spec = (settings.get("sensitivity") or {}).get(key)
        if spec and spec.get("model"):
            mapped += _map_spec(spec, spec["model"], scale, f"sensitivity.{key}", protocol_top_k)
    anatomy = settings.get("anatomy")
    for i, entry in enumerate((anatomy or {}).get("models", [])):  # notebook 08's models
        spec = dict(entry)
        if not entry.get("heads"):
            spec["top_k"] = entry.get("top_k", anatomy.get("top_k") or protocol_top_k)
        spec.setdefault("layers", anatomy.get("layers"))
        mapped += _map_spec(spec, entry["model"], scale, f"anatomy.models[{i}]", protocol_top_k)
        entry.update({k: spec[k] for k in ("top_k", "heads", "layers") if k in spec})
    benchmarks = settings.get("benchmarks")
    if benchmarks:
        default_top_k = benchmarks.get("top_k", 10)
        for i, run in enumerate(benchmarks.get("runs", [])):
            if run.get("refine"):
                spec = dict(run)
                if not run.get("heads"):
                    spec["top_k"] = run.get("top_k", default_top_k)
                spec.setdefault("layers", benchmarks.get("layers"))
                mapped += _map_spec(spec, run["model"], scale, f"benchmarks.runs[{i}]", 10)
                run.update({k: spec[k] for k in ("top_k", "heads", "layers") if k in spec})
    size = " (full size)" if scale == "full" else ""
    settings["caption"] = CAPTION + size
    settings["rehearsal"] = {"scale": scale, "profile": path.stem, "rule": LAYER_RULE}
    settings["rehearsal"]["mapped"] = mapped
    return settings


def describe(settings: dict) -> str:
    """Markdown for a notebook: what a rehearsal is and what it mapped."""
    info = settings["rehearsal"]
    lines = [
        f"**{CAPTION}.** This is the `{info['profile']}` profile rehearsed at scale "
        f"`{info['scale']}`: every model is a random one of the same family with the real "
        "image geometry, every dataset synthetic in the real file layout. The numbers "
        "below test the code, not the models: they say nothing about grounding.",
        "",
        f"Layers and heads: {LAYER_RULE}.",
    ]
    lines += [f"- `{line}`" for line in info["mapped"]]
    return "\n".join(lines)

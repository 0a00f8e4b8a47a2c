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

While a rehearsal is active (:func:`activate`, done by ``jobs`` and ``notebook.setup``),
``$VGUTILS_REHEARSAL`` holds its scale: :func:`vgutils.models.loading.resolve` then maps a
Hub id to its rehearsal build (the same resolution code a download goes through), and
``$VGUTILS_DATA`` points at the synthetic data root (:func:`rehearsal_data_root`).
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from vgutils.errors import DataError
from vgutils.paths import REPO_ROOT

REHEARSAL_VARIABLE = "VGUTILS_REHEARSAL"
DATA_VARIABLE = "VGUTILS_REHEARSAL_DATA"
SAVED_DATA_VARIABLE = "VGUTILS_REHEARSAL_SAVED_DATA"
"""``$VGUTILS_DATA`` as it was before :func:`activate` (restored by :func:`deactivate`)."""
SUFFIXES = {"-rehearsal-full": "full", "-rehearsal": "small"}
"""Profile-name suffix -> scale (longest first)."""
CAPTION = "REHEARSAL: random models, synthetic data"
LAYER_RULE = (
    "a layer index l of a model with L language layers becomes round(l*(R-1)/(L-1)) in "
    "the rehearsal build's R layers; a number of heads k out of the model's H heads in "
    "all becomes max(2, round(k*G/H)), at most G, the build's heads in all (the same "
    "share of heads)"
)
LINKED = ("samples", "teach", "teach-mc")
"""Folders of the embedded data that a rehearsal data root links to (not synthetic)."""


def split_profile(profile: str) -> tuple[str, str | None]:
    """``paper-rehearsal`` -> ``("paper", "small")``; a plain profile -> ``(profile,
    None)``."""
    for suffix, scale in SUFFIXES.items():
        if isinstance(profile, str) and profile.endswith(suffix) and len(profile) > len(suffix):
            return profile[: -len(suffix)], scale
    return profile, None


def active_scale() -> str | None:
    """The scale of the active rehearsal (``$VGUTILS_REHEARSAL``), else ``None``."""
    return os.environ.get(REHEARSAL_VARIABLE) or None


def rehearsal_data_root() -> Path:
    """``$VGUTILS_REHEARSAL_DATA``, else ``data/rehearsal`` in the repository (absolute)."""
    return Path(os.environ.get(DATA_VARIABLE) or REPO_ROOT / "data" / "rehearsal").resolve()


def activate(scale: str) -> Path:
    """Make this process (and its children) rehearse at ``scale``: model ids resolve to
    rehearsal builds, the data root is the synthetic one (built here on first use, with
    links to the embedded sample and teaching data where those exist). Returns the data
    root. :func:`deactivate` undoes it."""
    from vgutils.data.manifest import data_root
    from vgutils.errors import UsageError
    from vgutils.rehearsal.data import build_rehearsal_data

    root = rehearsal_data_root()
    if active_scale() and os.environ.get("VGUTILS_DATA") == str(root):
        embedded = Path(os.environ.get(SAVED_DATA_VARIABLE) or data_root(REPO_ROOT / "data"))
    else:
        embedded = data_root()
    if embedded.resolve() == root:
        raise UsageError(
            f"rehearsal data root {root} is the data root itself; set ${DATA_VARIABLE} to "
            "a folder of its own (the synthetic files would overwrite real ones)"
        )
    build_rehearsal_data(root)
    for name in LINKED:
        target, link = (embedded / name).resolve(), root / name
        if link.is_symlink() and link.resolve() != target:
            link.unlink()
        if target.is_dir() and not link.exists():  # else built on demand in the root
            link.symlink_to(target, target_is_directory=True)
    if not active_scale():
        os.environ[SAVED_DATA_VARIABLE] = os.environ.get("VGUTILS_DATA", "")
    os.environ[REHEARSAL_VARIABLE] = scale
    os.environ["VGUTILS_DATA"] = str(root)
    return root


def deactivate() -> None:
    """End a rehearsal in this process: Hub ids are Hub ids again and ``$VGUTILS_DATA`` is
    what it was before :func:`activate` (nothing to do when none is active)."""
    if not active_scale():
        return
    saved = os.environ.pop(SAVED_DATA_VARIABLE, "")
    os.environ.pop(REHEARSAL_VARIABLE, None)
    if saved:
        os.environ["VGUTILS_DATA"] = saved
    else:
        os.environ.pop("VGUTILS_DATA", None)


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
            if key in model_keys:
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
    from vgutils.models.loading import tiny_names
    from vgutils.rehearsal.data import MC_DATASETS
    from vgutils.rehearsal.models import REAL_MODELS

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


def _map_spec(spec: dict, model: str, scale: str, where: str, default_top_k: int) -> list[str]:
    """Map ``spec``'s ``top_k`` (default ``default_top_k``) and integer ``layers`` in place
    for ``model``; returns one line per mapped value."""
    from vgutils.rehearsal.models import real_model, rehearsal_layers

    if model.startswith("tiny:"):
        return []
    real = real_model(model)
    layers, heads = rehearsal_layers(model, scale)
    lines = []
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
        if "top_k" in variants or "layers" in variants:  # notebook 06's own settings
            model = variants.get("model", refine["model"])
            mapped += _map_spec(variants, model, scale, "sensitivity.refine", real_top_k)
    benchmarks = settings.get("benchmarks")
    if benchmarks:
        default_top_k = benchmarks.get("top_k", 10)
        for i, run in enumerate(benchmarks.get("runs", [])):
            if run.get("refine"):
                spec = {"top_k": run.get("top_k", default_top_k), **run}
                spec.setdefault("layers", benchmarks.get("layers"))
                mapped += _map_spec(spec, run["model"], scale, f"benchmarks.runs[{i}]", 10)
                run.update(top_k=spec["top_k"], layers=spec["layers"])
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

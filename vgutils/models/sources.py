"""Where a model comes from: an ordered list of sources, asked in turn which folder (or Hub
id) a name stands for (transformers' ``AttentionInterface`` is the model: one registry,
entries added from outside).

The built-in sources, in order:

1. ``tiny``: ``tiny:<family>``, a tiny random model of a transformers family (or an
   original-format LLaVA checkpoint) built on first use into ``<cache>/tiny/<family>``
   (:mod:`vgutils.models.tiny`);
2. ``folder``: an existing local folder, as it is;
3. ``hub``: anything else, a Hub id that ``from_pretrained`` downloads.

Other sources register at run time (:func:`register_source`): the teaching models
(``tiny:teach``, :mod:`vgutils.teach.sources`) before ``tiny``, a rehearsal's random
stand-ins for Hub ids before ``hub``. A source answers ``None`` for a name that is not its
own; the first answer wins. The cache root is the context's (:mod:`vgutils.context`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from vgutils import context
from vgutils.errors import UsageError, choices_hint
from vgutils.locks import build_lock

TINY_PREFIX = "tiny:"


class ModelSource(Protocol):
    """A place models come from. ``name``: its key in the list."""

    name: str

    def names(self) -> list[str]:
        """The model names it offers (``tiny:`` names are listed in hints); may be empty."""

    def resolve(self, name_or_path: str, cache: Path) -> str | None:
        """The local folder or Hub id to load for ``name_or_path``, or ``None`` when the
        name is not this source's. ``cache``: the context's cache root."""


class TinyBuilds:
    """``tiny:<family>``: a tiny random model of a family, built on first use."""

    name = "tiny"

    def names(self) -> list[str]:
        from vgutils.models.tiny import TINY_FAMILIES

        return [f"{TINY_PREFIX}{family}" for family in TINY_FAMILIES]

    def resolve(self, name_or_path: str, cache: Path) -> str | None:
        if name_or_path not in self.names():
            return None
        from vgutils.models.quiet import no_progress_bars
        from vgutils.models.tiny import build_tiny

        family = name_or_path[len(TINY_PREFIX) :]
        folder = cache / "tiny" / family
        if not (folder / "config.json").exists():
            with no_progress_bars():  # "Writing model shards" of a few kilobytes
                build_tiny(family, folder)
        return str(folder)


class LocalFolder:
    """An existing local folder (or file), as it is."""

    name = "folder"

    def names(self) -> list[str]:
        return []

    def resolve(self, name_or_path: str, cache: Path) -> str | None:
        return name_or_path if Path(name_or_path).exists() else None


class Hub:
    """Anything else: a Hugging Face Hub id, downloaded by ``from_pretrained``."""

    name = "hub"

    def names(self) -> list[str]:
        return []

    def resolve(self, name_or_path: str, cache: Path) -> str | None:
        return name_or_path


_sources: list[ModelSource] = [TinyBuilds(), LocalFolder(), Hub()]


def register_source(source: ModelSource, before: str = "hub") -> None:
    """Ask ``source`` before the source called ``before`` (a source of the same name is
    replaced in place)."""
    names = [s.name for s in _sources]
    if source.name in names:
        _sources[names.index(source.name)] = source
        return
    if before not in names:
        raise ValueError(f"no model source {before!r}; sources: {names}")
    _sources.insert(names.index(before), source)


def unregister_source(name: str) -> None:
    """Remove the source called ``name`` (nothing to do when there is none)."""
    _sources[:] = [s for s in _sources if s.name != name]


def source_names() -> list[str]:
    """The sources' names, in the order they are asked."""
    return [s.name for s in _sources]


def cache_dir() -> Path:
    """The context's cache root (``$VGUTILS_CACHE`` or ``~/.cache/vgutils``): tiny
    builds, converted checkpoints, stand-ins."""
    return context.current().cache_dir


def tiny_names() -> list[str]:
    """Every ``tiny:<name>`` model the sources offer."""
    return [n for s in _sources for n in s.names() if n.startswith(TINY_PREFIX)]


def check_model_name(name_or_path: str) -> None:
    """A ``tiny:`` name must be a known one (UsageError listing them all)."""
    if name_or_path.startswith(TINY_PREFIX) and name_or_path not in tiny_names():
        raise UsageError(
            f"--model {name_or_path!r}: no such tiny model; "
            + choices_hint(name_or_path, tiny_names())
        )


def resolve(name_or_path: str) -> str:
    """The folder or Hub id that ``name_or_path`` stands for: the first source's answer
    (building a tiny model or a stand-in on first use)."""
    check_model_name(name_or_path)
    cache = cache_dir()
    with build_lock():  # one process builds; the others wait, then find it built
        for source in _sources:
            found = source.resolve(name_or_path, cache)
            if found is not None:
                return found
    raise UsageError(f"--model {name_or_path!r}: no model source knows it")

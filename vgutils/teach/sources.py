"""The teaching models and datasets as sources the core asks for them: ``tiny:teach`` and
``tiny:teach-smoke`` (:mod:`vgutils.models.sources`) and the generated ``teach-*``
datasets (:func:`vgutils.data.loaders.register_builder`). :func:`register` is called
once, by the package's ``__init__``; the heavy modules are imported on first use."""

from __future__ import annotations

from pathlib import Path

from vgutils.data.loaders import register_builder
from vgutils.models.sources import TINY_PREFIX, register_source

RECIPES = ("teach", "teach-smoke")
"""``tiny:teach`` (the teaching model) and ``tiny:teach-smoke`` (seconds, for CI)."""


def recipe_for(name: str):
    """The training recipe of ``teach`` or ``teach-smoke``."""
    from vgutils.teach.train import SMOKE, Recipe

    return SMOKE if name == "teach-smoke" else Recipe()


class TeachingModels:
    """``tiny:teach``: the pinned release in ``vgutils/teach/pinned/`` (hash-checked, never
    trained here: :mod:`vgutils.teach.pinned`); ``tiny:teach-smoke``: trained on first use
    (seconds) into ``<cache>/tiny/teach-smoke``, retrained when stale."""

    name = "teach"

    def names(self) -> list[str]:
        return [f"{TINY_PREFIX}{name}" for name in RECIPES]

    def resolve(self, name_or_path: str, cache: Path) -> str | None:
        if name_or_path not in self.names():
            return None
        from vgutils.teach.pinned import teaching_model

        name = name_or_path[len(TINY_PREFIX) :]
        return str(teaching_model(name, cache / "tiny" / name, recipe_for(name)))


def _build_teach_sets(root: Path) -> None:
    from vgutils.teach.datasets import build_teach_sets

    build_teach_sets(root)


def _build_nonsquare_set(root: Path) -> None:
    from vgutils.teach.nonsquare import build_nonsquare_set

    build_nonsquare_set(root)


def register() -> None:
    """Make the teaching models and datasets known to the core (idempotent)."""
    register_source(TeachingModels(), before="tiny")
    register_builder("teach-", _build_teach_sets)
    register_builder("teach-nonsquare", _build_nonsquare_set)

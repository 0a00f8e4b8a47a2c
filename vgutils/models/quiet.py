"""Quiet loads of small local models: transformers' own progress bars ("Loading weights",
"Writing model shards") are noise for a model that loads in a fraction of a second (a
tiny build, the teaching model, a small rehearsal stand-in), and `make figures` loads
dozens of them. A Hub download or a large local checkpoint keeps its bars.

The switch is transformers' global one (:func:`transformers.utils.logging.disable_progress_bar`),
turned off only for the duration of the load and restored after it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

SMALL_WEIGHTS = 256 * 2**20
"""A local model whose weight files total less than this (bytes) loads without bars."""
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def small_local(source: str | Path) -> bool:
    """Whether ``source`` is a local folder whose weight files total under
    :data:`SMALL_WEIGHTS` (a Hub id, or a missing folder: False)."""
    folder = Path(source)
    if not folder.is_dir():
        return False
    total = 0
    for path in folder.rglob("*"):
        if path.suffix in WEIGHT_SUFFIXES and path.is_file():
            total += path.stat().st_size
            if total >= SMALL_WEIGHTS:
                return False
    return True


@contextlib.contextmanager
def no_progress_bars(quiet: bool = True) -> Iterator[None]:
    """Inside: transformers shows no progress bars (when ``quiet``); the previous state
    comes back on exit, error or not."""
    from transformers.utils import logging as transformers_logging

    was_enabled = transformers_logging.is_progress_bar_enabled()
    if quiet and was_enabled:
        transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if quiet and was_enabled:
            transformers_logging.enable_progress_bar()

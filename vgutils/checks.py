"""Checks of argument values that need no model: run by argparse (``type=``) and by the
API before anything expensive, so a bad value fails at once with a one-line
:class:`~vgutils.errors.UsageError`."""

from __future__ import annotations

import re

from vgutils.errors import UsageError, choices_hint

DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICE_WORDS = ("auto", "cpu", "cuda", "balanced", "mps")


def positive_int(text: str | int, name: str = "value") -> int:
    value = _int(text, name)
    if value < 1:
        raise UsageError(f"{name} {value}: must be at least 1")
    return value


def non_negative_int(text: str | int, name: str = "value") -> int:
    value = _int(text, name)
    if value < 0:
        raise UsageError(f"{name} {value}: must be 0 or more")
    return value


def percentile(text: str | float, name: str = "--percentile") -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise UsageError(f"{name} {text!r}: not a number") from None
    if not 0.0 <= value <= 100.0:
        raise UsageError(f"{name} {value:g}: must be within 0..100")
    return value


def _int(text: str | int, name: str) -> int:
    if isinstance(text, bool):
        raise UsageError(f"{name} {text!r}: not an integer")
    try:
        return int(text)
    except (TypeError, ValueError):
        raise UsageError(f"{name} {text!r}: not an integer") from None


def dtype(text: str) -> str:
    if text not in DTYPES:
        raise UsageError(f"--dtype {text!r}: unknown; {choices_hint(text, DTYPES)}")
    return text


def device(text: str) -> str:
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` (N < the number of GPUs), ``balanced``,
    ``mps``."""
    match = re.fullmatch(r"cuda(?::(\d+))?", text)
    if match:
        import torch

        count = torch.cuda.device_count()
        if int(match.group(1) or 0) >= count:
            raise UsageError(
                f"--device {text}: this machine has {count} CUDA device(s)"
                + (f" (cuda:0..cuda:{count - 1})" if count else "")
            )
        return text
    if text not in DEVICE_WORDS:
        choices = (*DEVICE_WORDS, "cuda:N")
        raise UsageError(f"--device {text!r}: unknown; {choices_hint(text, choices)}")
    return text


def run_settings(*, batch_size: int, device_name: str, dtype_name: str, limit) -> None:
    """The extraction settings checked together (API entry points call this)."""
    positive_int(batch_size, "--batch-size")
    device(device_name)
    dtype(dtype_name)
    if limit is not None:
        positive_int(limit, "--limit")


def remote_code(trust_remote_code: bool, revision: str | None) -> None:
    """``--trust-remote-code`` runs the model repository's own Python on this machine: it
    needs a pinned revision, a commit hash (40 hex digits), so that the code run is the
    code read; a branch or tag can move."""
    if not trust_remote_code:
        return
    if not revision:
        raise UsageError(
            "--trust-remote-code needs --revision: a pinned revision (a commit hash), so "
            "that the model's code that runs here is the code you read"
        )
    if not re.fullmatch(r"[0-9a-f]{40}", revision):
        raise UsageError(
            f"--revision {revision!r}: --trust-remote-code needs a pinned revision, a commit "
            "hash (40 hex digits), not a branch or tag (the code under them can change)"
        )


def one_of(text: str, valid: tuple[str, ...], name: str) -> str:
    """``text`` when it is one of ``valid`` (e.g. a query-token strategy, ``name``
    ``--strategy``); else a UsageError naming the closest."""
    if text not in valid:
        raise UsageError(f"{name} {text!r}: unknown; {choices_hint(str(text), valid)}")
    return text

"""Typed errors: what the command line prints as one ``error: ...`` line, and its exit code.

- :class:`UsageError` (exit 2): a bad argument value (unknown name, out-of-range number,
  a folder that holds another run); the message names the value, the valid choices and
  the closest match.
- :class:`DataError` (exit 1): a file is missing, unreadable, malformed, tampered with, or
  held by another process; the message names the file (and line or field).

Both are raised by the API too, so notebooks and scripts get the same messages.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class VgError(Exception):
    """Base of the errors a user can act on; ``exit_code`` is the CLI's exit status."""

    exit_code = 1


class UsageError(VgError, ValueError):
    """A bad argument value (exit code 2)."""

    exit_code = 2


class DataError(VgError, RuntimeError):
    """A data or results file is missing, malformed or does not match (exit code 1)."""

    exit_code = 1


def choices_hint(value: str, choices: Iterable[str]) -> str:
    """``"valid: a, b, c; did you mean 'b'?"`` (the closest match, if any is close)."""
    choices = sorted(choices)
    return f"valid: {', '.join(choices)}" + did_you_mean(value, choices)


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """``"; did you mean 'b'?"`` with the closest of ``choices``; ``""`` if none is close."""
    close = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""

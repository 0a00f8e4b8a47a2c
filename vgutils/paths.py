"""Where things live: the repository's folders, and the results and figures folders of a
profile under the roots of the context in force (:func:`vgutils.context.current`).

A profile is ``notebooks/params/<profile>.yaml``. A plug-in may add virtual profiles
named ``<profile><suffix>`` that read the same YAML (:func:`register_profile_suffix`; the
rehearsal's ``paper-rehearsal`` reads ``paper.yaml``).
"""

from __future__ import annotations

from pathlib import Path

from vgutils import context
from vgutils.context import REPO_ROOT as REPO_ROOT
from vgutils.errors import UsageError, choices_hint

NOTEBOOKS = REPO_ROOT / "notebooks"
DATA_MANIFEST = REPO_ROOT / "data_manifest"
BUILD = REPO_ROOT / "build"
PARAMS_DIR = NOTEBOOKS / "params"
DEFAULT_PROFILE = "default"

_suffixes: dict[str, str] = {}
"""Virtual-profile suffix -> what it means (registered by plug-ins, longest first)."""


def register_profile_suffix(suffix: str, meaning: str) -> None:
    """``<profile><suffix>`` names a virtual profile that reads ``<profile>.yaml``
    (``meaning``: what the suffix stands for, returned by :func:`split_profile`)."""
    _suffixes[suffix] = meaning
    ordered = sorted(_suffixes.items(), key=lambda item: -len(item[0]))
    _suffixes.clear()
    _suffixes.update(ordered)


def split_profile(profile: str) -> tuple[str, str | None]:
    """``(base profile, meaning of its registered suffix)``; ``(profile, None)`` for a
    plain profile."""
    for suffix, meaning in _suffixes.items():
        if isinstance(profile, str) and profile.endswith(suffix) and len(profile) > len(suffix):
            return profile[: -len(suffix)], meaning
    return profile, None


def check_profile(profile: str) -> Path:
    """``notebooks/params/<profile>.yaml`` (for a virtual profile, its base's); UsageError
    listing the profiles otherwise (raised before anything is written for a bogus
    profile)."""
    base, _ = split_profile(profile)
    path = PARAMS_DIR / f"{base}.yaml"
    if not isinstance(profile, str) or "/" in profile or not path.is_file():
        known = [p.stem for p in PARAMS_DIR.glob("*.yaml")]
        raise UsageError(f"profile {profile!r}: no {path}; {choices_hint(str(profile), known)}")
    return path


def results_dir(profile: str) -> Path:
    """``<results root>/<profile>/``: the runs of one parameter profile."""
    check_profile(profile)
    return context.current().results_root / profile


def figures_dir(profile: str) -> Path:
    """``<figures root>/<profile>/``: the PDF and PNG figures of one parameter profile (a
    known profile only, so a bogus one never creates a folder)."""
    check_profile(profile)
    return context.current().figures_root / profile

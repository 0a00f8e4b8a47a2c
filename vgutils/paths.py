"""Where things live: the repository's folders for generated data, results and figures.

``$VGUTILS_RESULTS`` and ``$VGUTILS_FIGURES`` move the results and figures roots (the
test suite points them at temporary folders).
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO_ROOT / "notebooks"
DATA_MANIFEST = REPO_ROOT / "data_manifest"
BUILD = REPO_ROOT / "build"
PARAMS_DIR = NOTEBOOKS / "params"
DEFAULT_PROFILE = "default"


def check_profile(profile: str) -> Path:
    """``notebooks/params/<profile>.yaml`` (for a rehearsal such as ``paper-rehearsal``:
    ``paper.yaml``, see :mod:`vgutils.rehearsal`); UsageError listing the profiles
    otherwise (raised before anything is written for a bogus profile)."""
    from vgutils.errors import UsageError, choices_hint
    from vgutils.rehearsal import split_profile

    base, _ = split_profile(profile)
    path = PARAMS_DIR / f"{base}.yaml"
    if not isinstance(profile, str) or "/" in profile or not path.is_file():
        known = [p.stem for p in PARAMS_DIR.glob("*.yaml")]
        raise UsageError(f"profile {profile!r}: no {path}; {choices_hint(str(profile), known)}")
    return path


def results_dir(profile: str) -> Path:
    """``results/<profile>/``: extraction runs of one parameter profile."""
    check_profile(profile)
    return Path(os.environ.get("VGUTILS_RESULTS", REPO_ROOT / "results")) / profile


def figures_dir(profile: str) -> Path:
    """``figures/<profile>/``: the PDF and PNG figures of one parameter profile (a known
    profile only, so a bogus one never creates a folder)."""
    check_profile(profile)
    return Path(os.environ.get("VGUTILS_FIGURES", REPO_ROOT / "figures")) / profile

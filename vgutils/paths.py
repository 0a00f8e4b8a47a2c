"""Where things live: the repository's folders for generated data, results and figures."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO_ROOT / "notebooks"
DATA_MANIFEST = REPO_ROOT / "data_manifest"
BUILD = REPO_ROOT / "build"
FIGURES = REPO_ROOT / "figures"
RESULTS = REPO_ROOT / "results"


def figures_dir(profile: str) -> Path:
    """``figures/<profile>/``: the PDF and PNG figures of one parameter profile."""
    return FIGURES / profile

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


def results_dir(profile: str) -> Path:
    """``results/<profile>/``: extraction runs of one parameter profile."""
    return Path(os.environ.get("VGUTILS_RESULTS", REPO_ROOT / "results")) / profile


def figures_dir(profile: str) -> Path:
    """``figures/<profile>/``: the PDF and PNG figures of one parameter profile."""
    return Path(os.environ.get("VGUTILS_FIGURES", REPO_ROOT / "figures")) / profile

"""What every figure notebook does first, and the check that executed notebooks carry their
figures.

A notebook's parameters cell holds the literal default (``profile = "default"``, what a
reader gets with "Run All" in JupyterLab); papermill replaces it with ``-p profile X``. The
setup cell then calls :func:`setup`, where ``$VGUTILS_PROFILE``, when set, wins: the test
suite sets it to ``smoke`` so that nbval runs every notebook in seconds, and ``make
figures`` sets it to the profile it passes to papermill.

Figures are shown with :func:`vgutils.plots.show` (one PNG output, the figure closed), so
that an executed notebook holds each figure exactly once whatever the matplotlib backend.

``python -m vgutils.notebook check build/default/notebooks`` fails when an executed
notebook holds fewer PNG outputs than the figures it saves (``plots.save_figure`` calls).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from vgutils import context

PROFILE_VARIABLE = "VGUTILS_PROFILE"


def resolve_profile(profile: str) -> str:
    """``$VGUTILS_PROFILE`` (the context's profile) if set, else ``profile``; the profile
    must exist."""
    from vgutils.jobs import load_profile

    chosen = context.current().profile or profile
    load_profile(chosen)  # a clear error naming the known profiles
    return chosen


def parameter(name: str, value, kind: type = str):
    """A notebook parameter (papermill ``-p NAME VALUE``) checked against its type: ``value``,
    or a UsageError naming the parameter, its value and the type expected."""
    from vgutils.errors import UsageError

    if not isinstance(value, kind) or isinstance(value, bool) is not (kind is bool):
        raise UsageError(
            f"notebook parameter {name}={value!r}: expected {kind.__name__}, "
            f"got {type(value).__name__}"
        )
    return value


def quiet_progress() -> None:
    """No tqdm bars from transformers / huggingface_hub: in a notebook they freeze at their
    first frame (``Loading weights: 0%``). Our own code reports progress as plain lines."""
    try:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass
    try:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except ImportError:  # pragma: no cover
        pass


def setup(profile: str) -> str:
    """A figure notebook's first step: resolve the profile (see the module docstring), the
    package's plotting style, quiet progress bars. Returns the profile to use."""
    from vgutils import plots
    from vgutils.jobs import use_profile

    chosen = resolve_profile(profile)
    plots.use_style()
    quiet_progress()
    if chosen != profile:
        print(
            f"profile {chosen!r} (from ${PROFILE_VARIABLE}; the parameters cell says {profile!r})"
        )
    settings = use_profile(chosen)  # a rehearsal's stand-ins and data, or none left active
    if settings.get("note"):  # e.g. what a rehearsal is and what it mapped
        from IPython.display import Markdown, display

        display(Markdown(settings["note"]))
    return chosen


_SAVE_CALL = re.compile(r"\bsave_figure\(")


def figure_outputs(path: Path) -> tuple[int, int]:
    """(figures saved by the notebook's code, image/png outputs) of one notebook."""
    cells = json.loads(Path(path).read_text())["cells"]
    saved = pngs = 0
    for cell in cells:
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        saved += len(_SAVE_CALL.findall(source))
        pngs += sum("image/png" in output.get("data", {}) for output in cell.get("outputs", []))
    return saved, pngs


def check_executed(folder: Path) -> list[str]:
    """Problems: executed notebooks under ``folder`` with fewer PNG outputs than saved
    figures (an empty list when all is well)."""
    paths = sorted(Path(folder).glob("[0-9][0-9]_*.ipynb"))
    paths = [p for p in paths if not p.name.endswith(".partial.ipynb")]
    if not paths:
        return [f"{folder}: no executed notebooks"]
    problems = []
    for path in paths:
        saved, pngs = figure_outputs(path)
        if pngs < saved:
            problems.append(f"{path}: {pngs} PNG output(s) for {saved} saved figure(s)")
    return problems


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] != "check":
        print("usage: python -m vgutils.notebook check FOLDER", file=sys.stderr)
        return 2
    problems = check_executed(Path(argv[1]))
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if not problems:
        count = len(list(Path(argv[1]).glob("[0-9][0-9]_*.ipynb")))
        print(f"{count} executed notebook(s) in {argv[1]} show every figure they save")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

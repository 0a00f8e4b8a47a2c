"""Jupyter Server configuration of ``make lab`` (passed with ``--config``).

- The file tree is the repository: ``notebooks/`` (opened first) and the executed copies
  in ``build/<profile>/notebooks/`` are both reachable, with no symlinks.
- Strip on save: a notebook saved under ``notebooks/`` is written without outputs,
  execution counts, widget state or the kernel's version details, and keeps the kernel
  description of the file it replaces (JupyterLab writes the running kernel's, e.g.
  "Python 3 (ipykernel)"), so running a committed notebook in JupyterLab leaves
  ``git status`` clean. Notebooks elsewhere (``build/``) are saved as they are.

Plain Python with no vgutils import (the server loads it before any kernel starts);
``tests/test_lab.py`` tests :func:`strip_on_save` and a server started with this file.
"""

import json
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STRIPPED = REPO / "notebooks"

NOTEBOOK_KEYS = ("widgets", "signature")
"""Notebook metadata a run adds (ipywidgets' state, the trust signature)."""
CELL_KEYS = ("execution", "ExecuteTime", "collapsed", "scrolled")
"""Cell metadata a run or the output area adds (and ``jupyter.source_hidden`` /
``outputs_hidden``: a collapsed cell)."""


def is_stripped(os_path: str | Path) -> bool:
    """True for a file under the repository's ``notebooks/``."""
    return Path(os_path).resolve().is_relative_to(STRIPPED.resolve())


def strip_notebook(notebook: dict, replaced: dict | None = None) -> dict:
    """``notebook`` (nbformat 4 JSON, changed in place and returned) without outputs,
    execution counts, run metadata, collapsed states, trailing empty code cells, and
    with ``language_info`` cut to its name.
    ``replaced``: the metadata of the file it replaces, whose ``kernelspec`` and
    ``language_info`` are kept when they name the same kernel and language."""
    metadata = notebook.setdefault("metadata", {})
    for key in NOTEBOOK_KEYS:
        metadata.pop(key, None)
    language = metadata.get("language_info")
    if isinstance(language, dict) and "name" in language:
        metadata["language_info"] = {"name": language["name"]}
    for key in ("kernelspec", "language_info"):
        old, new = (replaced or {}).get(key), metadata.get(key)
        if isinstance(old, dict) and isinstance(new, dict) and old.get("name") == new.get("name"):
            metadata[key] = old
    for cell in notebook.get("cells", []):
        cell_metadata = cell.get("metadata", {})
        for key in CELL_KEYS:
            cell_metadata.pop(key, None)
        jupyter = cell_metadata.get("jupyter")
        if isinstance(jupyter, dict):  # collapsed input or output: a view, not content
            jupyter.pop("outputs_hidden", None)
            jupyter.pop("source_hidden", None)
            if not jupyter:
                cell_metadata.pop("jupyter")
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
    cells = notebook.get("cells", [])
    while cells and cells[-1].get("cell_type") == "code" and not _text(cells[-1]).strip():
        cells.pop()  # the empty cell that running the last cell (Shift+Enter) adds
    return notebook


def _text(cell: dict) -> str:
    source = cell.get("source", "")
    return source if isinstance(source, str) else "".join(source)


def strip_on_save(model, path, contents_manager, **kwargs):
    """``ContentsManager.pre_save_hook``: strip a notebook saved under ``notebooks/``."""
    if model.get("type") != "notebook" or not isinstance(model.get("content"), dict):
        return
    os_path = Path(contents_manager.root_dir) / path.strip("/")
    if is_stripped(os_path):
        strip_notebook(model["content"], _metadata(os_path))


def _metadata(os_path: Path) -> dict:
    """The notebook metadata of the file at ``os_path`` ({} if none or unreadable)."""
    try:
        metadata = json.loads(os_path.read_text(encoding="utf-8")).get("metadata")
    except (OSError, ValueError, AttributeError):
        return {}
    return metadata if isinstance(metadata, dict) else {}


if "get_config" in globals():  # loaded by Jupyter (traitlets), not imported by a test
    c = get_config()  # noqa: F821
    c.ServerApp.root_dir = str(REPO)
    c.ContentsManager.preferred_dir = "notebooks"
    c.ContentsManager.pre_save_hook = strip_on_save

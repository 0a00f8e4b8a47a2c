"""Say honestly what a ``make figures`` run produced."""

from __future__ import annotations

from pathlib import Path

FIGURE_SUFFIXES = (".pdf", ".png")


def produced_figures(folder: Path) -> list[Path]:
    """The figure files (PDF, PNG) directly under ``folder``, sorted by name."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix in FIGURE_SUFFIXES and p.is_file())


def figures_report(folder: Path, n_notebooks: int) -> str:
    """A short human report: how many notebooks ran and which figure files exist."""
    figures = produced_figures(folder)
    lines = [f"{n_notebooks} figure notebook(s) up to date."]
    if not figures:
        lines.append(f"No figures were produced: {folder} holds no PDF or PNG.")
        if n_notebooks == 0:
            lines.append("No figure notebooks exist yet under notebooks/.")
        return "\n".join(lines)
    lines.append(f"{len(figures)} figure file(s) in {folder}:")
    lines += [f"  {p.name}  ({p.stat().st_size / 1024:.0f} KiB)" for p in figures]
    return "\n".join(lines)


def executed_notebooks(build: Path, profile: str) -> list[Path]:
    """The notebooks papermill finished for ``profile``: ``build/<profile>/notebooks/
    *.ipynb`` (a failed run's ``*.partial.ipynb`` does not count)."""
    folder = Path(build) / profile / "notebooks"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.ipynb") if not p.name.endswith(".partial.ipynb"))

"""Say honestly what a ``make figures`` run produced."""

from __future__ import annotations

import re
from pathlib import Path

FIGURE_SUFFIXES = (".pdf", ".png")


def produced_figures(folder: Path) -> list[Path]:
    """The figure files (PDF, PNG) directly under ``folder``, sorted by name."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix in FIGURE_SUFFIXES and p.is_file())


def figures_report(folder: Path, n_notebooks: int) -> str:
    """A short human report: how many notebooks ran, which figure files exist and what
    each records it was made from (:func:`provenance_table`)."""
    figures = produced_figures(folder)
    lines = [f"{n_notebooks} figure notebook(s) up to date."]
    if not figures:
        lines.append(f"No figures were produced: {folder} holds no PDF or PNG.")
        if n_notebooks == 0:
            lines.append("No figure notebooks exist yet under notebooks/.")
        return "\n".join(lines)
    lines.append(f"{len(figures)} figure file(s) in {folder}:")
    lines += [f"  {p.name}  ({p.stat().st_size / 1024:.0f} KiB)" for p in figures]
    lines += ["", *provenance_table(figures)]
    return "\n".join(lines)


def _short(value: str, keep: int = 12) -> str:
    """``hub:<sha>`` / ``sha256:<hex>`` / a commit cut to ``keep`` hex digits."""
    kind, _, digest = value.rpartition(":")
    head, dirty = (digest[:-6], "-dirty") if digest.endswith("-dirty") else (digest, "")
    if len(head) > keep and re.fullmatch(r"[0-9a-f]+", head):
        head = head[:keep]
    return f"{kind}:{head}{dirty}" if kind else f"{head}{dirty}"


def provenance_table(figures: list[Path]) -> list[str]:
    """Lines: one row per figure file with the provenance read back from the file (commit,
    profile, protocol, record number), then each distinct record's models with their
    revisions and data files with their sha256 (hashes cut to 12 hex digits)."""
    from vgutils.provenance import read_figure

    records: list = []
    rows = []
    for path in figures:
        try:
            recorded = read_figure(path)
        except Exception as err:  # a damaged or foreign file: said, not fatal
            rows.append((path.name, f"unreadable ({type(err).__name__})", "", "", ""))
            continue
        if recorded is None:
            rows.append((path.name, "none recorded", "", "", ""))
            continue
        if recorded not in records:
            records.append(recorded)
        number = f"#{records.index(recorded) + 1}"
        rows.append(
            (path.name, _short(recorded.commit), recorded.profile, recorded.protocol, number)
        )
    header = ("file", "commit", "profile", "protocol", "record")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["Provenance recorded in each file:"]
    lines += [
        "  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    for number, recorded in enumerate(records, start=1):
        lines.append(
            f"record #{number}: commit {recorded.commit}, {len(recorded.models)} model(s), "
            f"{len(recorded.data)} data file(s)"
        )
        lines += [f"  model {model}  {_short(rev)}" for model, rev in recorded.models]
        lines += [f"  data  {name}  {_short(digest)}" for name, digest in recorded.data]
    return lines


def executed_notebooks(build: Path, profile: str) -> list[Path]:
    """The notebooks papermill finished for ``profile``: ``build/<profile>/notebooks/
    *.ipynb`` (a failed run's ``*.partial.ipynb`` does not count)."""
    folder = Path(build) / profile / "notebooks"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.ipynb") if not p.name.endswith(".partial.ipynb"))

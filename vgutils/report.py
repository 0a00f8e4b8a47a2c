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


def run_records(results: Path) -> list[dict]:
    """One record per run folder under ``results`` (its ``run.json``): ``folder``,
    ``status``, ``protocol``, and for VGRefine runs ``heads_source``, ``heads`` and
    ``layers`` (what the run used)."""
    import json

    records = []
    for path in sorted(Path(results).glob("*/run.json")):
        run = json.loads(path.read_text())
        options = run.get("options", {})
        refine = options.get("refine") if isinstance(options.get("refine"), dict) else None
        records.append(
            {
                "folder": path.parent.name,
                "status": run.get("status"),
                "protocol": options.get("protocol"),
                "heads_source": refine.get("heads_source") if refine else None,
                "heads": refine.get("heads") if refine else None,
                "layers": refine.get("layers") if refine else None,
            }
        )
    return records


def check_runs(profile: str) -> tuple[list[dict], list[str]]:
    """Every run of ``profile`` under ``results/<profile>/`` against what the profile
    asked for: the protocol of each extraction job (its folder), of each multiple-choice
    run (:func:`vgutils.mc_report.benchmark_options`), of each VQA run (``__authors``
    in the folder name, else ``corrected``) and of notebook 06's prompt-suffix runs
    (``corrected``); and a VGRefine run that the profile gives heads records those heads
    and layers as ``given``. Returns the records
    (:func:`run_records`) and one line per problem (none: all good)."""
    from vgutils.jobs import profile_jobs, use_profile
    from vgutils.mc_report import benchmark_folder, benchmark_options
    from vgutils.paths import results_dir

    settings = use_profile(profile)  # a rehearsal's stand-ins resolve the model families
    records = run_records(results_dir(profile))
    by_folder = {r["folder"]: r for r in records}
    problems = [f"{r['folder']}: no protocol recorded" for r in records if not r["protocol"]]
    expected = {job.name: job.protocol for job in profile_jobs(settings)}
    given = {}  # folder -> (heads, layers) a run was given
    benchmarks = settings.get("benchmarks") or {}
    for run in benchmarks.get("runs", []):
        name = benchmark_folder(profile, benchmarks, run)
        expected[name] = benchmark_options(profile, benchmarks, run).protocol
        if run.get("heads"):
            given[name] = (run["heads"], run.get("layers", benchmarks.get("layers")))
    refine = settings.get("refine") or {}
    suffix = (settings.get("sensitivity") or {}).get("prompt_suffix") or {}
    for record in records:
        folder = record["folder"]
        if folder.startswith("vqa__"):  # notebooks 03 and 06: the protocol in the name
            want = "authors" if "__authors" in folder else "corrected"
            if refine.get("heads") and record["heads_source"]:
                given.setdefault(folder, (refine["heads"], refine.get("layers")))
        elif folder.startswith("mc__") and "__sensitivity-suffix-" in folder:
            want = "corrected"  # notebook 06: corrected with and without the suffix
            if suffix.get("heads"):
                given.setdefault(folder, (suffix["heads"], suffix.get("layers")))
        else:
            want = expected.get(folder)
        if want is None:
            problems.append(
                f"{folder}: not a run of profile {profile!r} (left from another setup?)"
            )
        elif record["protocol"] != want:
            problems.append(f"{folder}: protocol {record['protocol']!r}, asked for {want!r}")
    for name in expected:
        if name not in by_folder:
            problems.append(f"{name}: no run (run.json) yet")
    for folder, (heads, layers) in given.items():
        record = by_folder.get(folder)
        if record is None:
            continue
        if record["heads_source"] != "given" or record["heads"] != [list(h) for h in heads]:
            problems.append(
                f"{folder}: heads {record['heads']} ({record['heads_source']}), given {heads}"
            )
        if layers is not None and record["layers"] != list(layers):
            problems.append(f"{folder}: layers {record['layers']}, given {layers}")
    return records, problems

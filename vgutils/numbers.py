"""Every number README quotes, from the files a run writes, never typed by hand.

``make figures`` ends with ``python -m vgutils numbers --profile P``
(:func:`collect`), which writes ``figures/<P>/numbers.json``: each value with where it
came from (``{"value": ..., "source": ...}`` per key). The values come from

- the figures' tables (``figures/<P>/fig02_layer_curves_summary.csv``,
  ``fig03_vqa_accuracy.csv``, ``fig08_vqa_benchmarks.csv``);
- the teaching model's acceptance measures (:func:`vgutils.teach.evaluate.acceptance`
  on the profile's ``teach`` model and scene count, on the CPU: what ``python -m vgutils
  teach evaluate`` prints), computed once (minutes) and cached in
  ``results/<P>/teach_acceptance.json`` keyed by the model folder's hash and the code of
  the evaluation; not in a rehearsal;
- README's snippet (the python block after ``<!-- numbers:snippet -->``), run in a
  subprocess (:func:`run_snippet`; default profile only: it loads ``tiny:teach``);
- the wall times ``make figures`` writes to ``build/<P>/times/`` (``jobs.s``, one
  ``<notebook>.s`` per executed notebook; also written to
  ``build/<P>/notebook_times.json``);
- anything a notebook or module recorded with :func:`record`
  (``build/<P>/numbers/<key>.json``).

README's numbers sit in generated blocks, ``<!-- numbers:begin NAME -->`` ...
``<!-- numbers:end NAME -->``, rendered from such a file by :func:`render_blocks`:
``python -m vgutils numbers --readme`` rewrites them (and the committed copy
:data:`COMMITTED`, which the tests compare README with), ``--check`` exits 1 when README
disagrees with ``figures/<P>/numbers.json``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd

from vgutils.errors import DataError
from vgutils.paths import BUILD, NOTEBOOKS, REPO_ROOT, figures_dir, results_dir, split_profile

NUMBERS_FILE = "numbers.json"
README = REPO_ROOT / "README.md"
COMMITTED = REPO_ROOT / "docs" / "numbers" / "default.json"
"""The default profile's numbers behind README's blocks (written by ``--readme``)."""

SNIPPET_MARK = "<!-- numbers:snippet -->"
BLOCK = re.compile(
    r"<!-- numbers:begin (?P<name>[\w-]+) -->(?P<body>.*?)<!-- numbers:end (?P=name) -->", re.S
)


# ---------------------------------------------------------------- recording


def records_dir(profile: str) -> Path:
    """``build/<profile>/numbers/``: what :func:`record` wrote."""
    return BUILD / profile / "numbers"


def record(profile: str, key: str, value, source: str) -> Path:
    """Record one number (or short text) a notebook or module computed, with where it came
    from; :func:`collect` puts it into ``numbers.json`` under ``key``."""
    if not re.fullmatch(r"[\w.-]+", key):
        raise ValueError(f"number key {key!r}: letters, digits, '_', '.', '-' only")
    folder = records_dir(profile)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{key}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"value": _plain(value), "source": source}, indent=1) + "\n")
    tmp.replace(path)
    return path


def _plain(value):
    """A JSON value: numpy scalars to Python, NaN to None."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


# ---------------------------------------------------------------- collecting


def _entry(value, source: str) -> dict:
    return {"value": _plain(value), "source": source}


def curve_numbers(path: Path) -> dict[str, dict]:
    """From notebook 02's summary table: per model and domain the best ratio and the lowest
    KL with their layers; per model the natural-min-KL-layer comparison."""
    table = pd.read_csv(path)
    source = f"figures/<profile>/{path.name} (notebook 02)"
    out = {}
    for record_ in table.to_dict("records"):
        model, domain, metric = record_["model"], record_["domain"], record_["metric"]
        base = f"curves.{model}.{domain}.{metric}"
        out[f"{base}.best"] = _entry(record_["best_mean"], source)
        out[f"{base}.best_layer"] = _entry(int(record_["best_layer"]), source)
    for (model, metric), frame in table.groupby(["model", "metric"], sort=False):
        row = frame.iloc[0]
        if pd.isna(row.get("layer")):
            continue
        base = f"curves.{model}.at_natural_min_kl.{metric}"
        out[f"{base}.layer"] = _entry(int(row["layer"]), source)
        for side in ("natural", "medical"):
            out[f"{base}.{side}"] = _entry(row[f"mean_{side}"], source)
        out[f"{base}.p_value"] = _entry(row["p_value"], source)
    return out


def vqa_numbers(path: Path) -> dict[str, dict]:
    """From notebook 03's accuracy table: exact match without / with VGRefine per
    protocol, dataset and question kind."""
    table = pd.read_csv(path)
    source = f"figures/<profile>/{path.name} (notebook 03)"
    out = {}
    for r in table.to_dict("records"):
        kind = "closed" if str(r["questions"]).startswith("closed") else "open"
        base = f"vqa.{r.get('protocol', 'corrected')}.{r['dataset']}.{kind}"
        out[f"{base}.n"] = _entry(int(r["n"]), source)
        for column in ("baseline_exact", "refined_exact"):
            if column in r:
                out[f"{base}.{column}"] = _entry(r[column], source)
    return out


def mc_numbers(path: Path) -> dict[str, dict]:
    """From notebook 07's VGRefine table: accuracy (%) without / with VGRefine per row and
    benchmark dataset."""
    table = pd.read_csv(path)
    source = f"figures/<profile>/{path.name} (notebook 07)"
    out = {}
    for r in table.to_dict("records"):
        base = f"mc.{r['model']}.{r['dataset']}"
        out[f"{base}.n"] = _entry(int(r["n"]), source)
        for column, name in (("without %", "without"), ("VGRefine %", "vgrefine")):
            if column in r and not pd.isna(r[column]):
                out[f"{base}.{name}"] = _entry(r[column], source)
    return out


def notebook_times(profile: str) -> dict[str, int]:
    """``{notebook: seconds}`` from ``build/<profile>/times/<notebook>.s`` (``make
    figures`` writes one per notebook it executed), in notebook order."""
    folder = BUILD / profile / "times"
    times = {}
    for path in sorted(folder.glob("[0-9][0-9]_*.s")):
        times[path.stem] = int(path.read_text().strip())
    return times


def time_numbers(profile: str) -> dict[str, dict]:
    """The wall times of ``make figures``: extraction jobs and each notebook (seconds),
    also written to ``build/<profile>/notebook_times.json``."""
    folder = BUILD / profile / "times"
    source = f"build/<profile>/times/ (make figures, {os.cpu_count()} CPUs)"
    out = {}
    times = notebook_times(profile)
    if times:
        (BUILD / profile / "notebook_times.json").write_text(json.dumps(times, indent=1) + "\n")
    for name, seconds in times.items():
        out[f"time.notebook.{name}"] = _entry(seconds, source)
    if times:
        out["time.notebooks_total"] = _entry(sum(times.values()), source)
    if (folder / "jobs.s").is_file():
        out["time.jobs"] = _entry(int((folder / "jobs.s").read_text().strip()), source)
    return out


def _acceptance_key(model: str, scenes: int) -> str:
    from vgutils.models.sources import resolve
    from vgutils.runner import folder_hash

    code = Path(__file__).parent / "teach" / "evaluate.py"
    parts = [model, str(scenes), folder_hash(Path(resolve(model))), code.read_text()]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def acceptance_numbers(profile: str, spec: dict, device: str = "cpu") -> dict[str, dict]:
    """The teaching model's acceptance measures (``teach evaluate``), computed once per
    model folder and evaluation code into ``results/<profile>/teach_acceptance.json``."""
    from vgutils.teach.evaluate import CRITERIA, acceptance

    model, scenes = spec["model"], int(spec.get("scenes", 60))
    path = results_dir(profile) / "teach_acceptance.json"
    key = _acceptance_key(model, scenes)
    cached = json.loads(path.read_text()) if path.is_file() else {}
    if cached.get("key") != key:
        from vgutils.models import load_model

        print(f"numbers: acceptance of {model} on {scenes} held-out scenes per domain")
        measures = acceptance(load_model(model, device=device), scenes)
        cached = {"key": key, "model": model, "scenes": scenes, "measures": measures}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(cached, indent=1) + "\n")
    source = (
        f"vgutils.teach.evaluate.acceptance({model}, {scenes} held-out scenes per domain) = "
        f"python -m vgutils teach evaluate; results/<profile>/{path.name}"
    )
    out = {f"teach.{k}": _entry(v, source) for k, v in cached["measures"].items()}
    out["teach.model"] = _entry(model, source)
    out["teach.scenes"] = _entry(scenes, source)
    for name, (op, limit) in CRITERIA.items():
        out[f"teach.criterion.{name}"] = _entry(
            f"{op} {limit:g}", "vgutils.teach.evaluate.CRITERIA"
        )
    return out


def readme_snippet(readme: Path = README) -> str:
    """The python code of README's snippet: the ```python block after
    ``<!-- numbers:snippet -->``."""
    text = readme.read_text()
    if SNIPPET_MARK not in text:
        raise DataError(f"{readme}: no {SNIPPET_MARK} line before the snippet")
    match = re.search(r"```python\n(.*?)```", text.split(SNIPPET_MARK, 1)[1], re.S)
    if match is None:
        raise DataError(f"{readme}: no ```python block after {SNIPPET_MARK}")
    return match.group(1)


def run_snippet(code: str, timeout: float = 600) -> str:
    """Run README's snippet in a fresh interpreter (repository root, this environment);
    its standard output, or DataError with its last error line."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise DataError(f"README snippet failed (exit {done.returncode}): {last}")
    return done.stdout


def parse_snippet(output: str) -> dict:
    """The snippet's printout as numbers: tokens, box tokens, ratio per layer."""
    tokens = re.search(r"^(\d+) image tokens, (\d+) in the box$", output, re.M)
    ratios = [float(v) for v in re.findall(r"^\s+layer \d+:\s+(-?[\d.]+)$", output, re.M)]
    if tokens is None or not ratios:
        raise DataError(f"README snippet printed something unexpected:\n{output}")
    return {"tokens": int(tokens.group(1)), "box_tokens": int(tokens.group(2)), "ratios": ratios}


def snippet_numbers(output: str) -> dict[str, dict]:
    source = "README's snippet, run by vgutils.numbers.run_snippet"
    parsed = parse_snippet(output)
    out = {"snippet.output": _entry(output, source)}
    out["snippet.tokens"] = _entry(parsed["tokens"], source)
    out["snippet.box_tokens"] = _entry(parsed["box_tokens"], source)
    for layer, value in enumerate(parsed["ratios"]):
        out[f"snippet.ratio.{layer}"] = _entry(value, source)
    return out


def recorded_numbers(profile: str) -> dict[str, dict]:
    """What :func:`record` wrote for ``profile``."""
    out = {}
    for path in sorted(records_dir(profile).glob("*.json")):
        out[path.stem] = json.loads(path.read_text())
    return out


def git_commit() -> str:
    """The checked-out commit, with ``-dirty`` when the tree has changes; ``unknown``
    outside a git checkout."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def collect(profile: str, snippet: bool | None = None) -> dict:
    """Every number of ``profile``'s run into ``figures/<profile>/numbers.json`` (returns
    the written document). ``snippet``: run README's snippet (default: for the ``default``
    profile only)."""
    from vgutils.jobs import load_profile

    settings = load_profile(profile)
    figures = figures_dir(profile)
    numbers: dict[str, dict] = {}
    for name, read in (
        ("fig02_layer_curves_summary.csv", curve_numbers),
        ("fig03_vqa_accuracy.csv", vqa_numbers),
        ("fig08_vqa_benchmarks.csv", mc_numbers),
    ):
        if (figures / name).is_file():
            numbers.update(read(figures / name))
    if settings.get("teach") and split_profile(profile)[1] is None:  # not in a rehearsal
        numbers.update(acceptance_numbers(profile, settings["teach"]))
    if snippet if snippet is not None else profile == "default":
        numbers.update(snippet_numbers(run_snippet(readme_snippet())))
    numbers.update(time_numbers(profile))
    numbers["gallery"] = _entry(gallery_rows(profile), "notebooks/*.ipynb and figures/<profile>/")
    numbers.update(recorded_numbers(profile))
    document = {
        "profile": profile,
        "commit": git_commit(),
        "generated": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_15min": round(os.getloadavg()[2], 1),
        },
        "numbers": dict(sorted(numbers.items())),
    }
    path = figures / NUMBERS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n")
    return document


def load(path: Path) -> dict:
    """A numbers file (DataError naming it when missing or not JSON)."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: no numbers file (run `make figures`)") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not JSON ({err})") from None


# ---------------------------------------------------------------- the gallery


def notebook_title(path: Path) -> str:
    """A notebook's first heading, without its ``#``."""
    cells = json.loads(path.read_text())["cells"]
    for cell in cells:
        if cell["cell_type"] == "markdown":
            for line in "".join(cell["source"]).splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return path.stem


def notebook_figures(path: Path, figures: Path | None = None) -> list[str]:
    """The figure and table names a notebook's code names in its strings (``figNN_...``,
    ``tableN_...``), those found in ``figures`` when given (a name standing for its
    PDF/PNG pair, a CSV with its extension)."""
    cells = json.loads(path.read_text())["cells"]
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    quoted = r"[\"'/]((?:fig\d\d|table\d)\w*(?:\.csv)?)[\"']"  # in a string literal
    names = list(dict.fromkeys(re.findall(quoted, code)))
    shown = []
    for name in names:
        if figures is None:
            shown.append(name)
        elif name.endswith(".csv"):
            if (figures / name).is_file():
                shown.append(name)
        else:
            if (figures / f"{name}.png").is_file() or (figures / f"{name}.pdf").is_file():
                shown.append(name)
            if (figures / f"{name}.csv").is_file():  # a table written beside its figure
                shown.append(f"{name}.csv")
    return list(dict.fromkeys(shown))


def gallery_rows(profile: str) -> list[dict]:
    """One row per numbered notebook in ``notebooks/``: name, title, the figures it wrote
    to ``figures/<profile>/``, its wall time in the last ``make figures`` (or None)."""
    times = notebook_times(profile)
    figures = figures_dir(profile)
    return [
        {
            "notebook": path.stem,
            "title": notebook_title(path),
            "figures": notebook_figures(path, figures if figures.is_dir() else None),
            "seconds": times.get(path.stem),
        }
        for path in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    ]


# ---------------------------------------------------------------- README's blocks


def _value(numbers: dict, key: str):
    try:
        return numbers["numbers"][key]["value"]
    except KeyError:
        raise DataError(f"numbers file of profile {numbers.get('profile')!r}: no {key!r}") from None


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 02 min``."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def render_acceptance(numbers: dict) -> str:
    v = lambda key: _value(numbers, f"teach.{key}")  # noqa: E731
    return (
        f"On the held-out scenes (`python -m vgutils teach evaluate`, {v('scenes')} scenes "
        f"per domain) the teaching model answers {v('accuracy_natural'):.1%} of "
        f"natural-domain and {v('accuracy_medical'):.1%} of medical-domain questions "
        f"({v('mc_natural'):.1%} / {v('mc_medical'):.1%} of them in multiple-choice form, "
        f"`teach-mc`); the best layer of its normalised last-token attention (notebook 02's: "
        f"the highest mean ratio) reaches {v('ratio_natural'):.2f} on natural scenes (layer "
        f"{v('layer_natural')}) and {v('ratio_medical'):.2f} on medical ones (layer "
        f"{v('layer_medical')}), and on scenes with several objects it looks at the one asked "
        f"about (ratio {v('ratio_queried'):.2f} on the queried object against "
        f"{v('ratio_others'):.2f} on the others, layer {v('layer_queried')})."
    )


def margins(numbers: dict) -> list[tuple[str, float, str, float]]:
    """Per acceptance criterion: ``(measure, value, op, limit)``, the thinnest relative
    margin first."""
    rows = []
    for key, entry in numbers["numbers"].items():
        if key.startswith("teach.criterion."):
            name = key.removeprefix("teach.criterion.")
            op, limit = entry["value"].split()
            rows.append((name, _value(numbers, f"teach.{name}"), op, float(limit)))
    return sorted(rows, key=lambda r: abs(r[1] - r[3]) / r[3])


def render_margin(numbers: dict) -> str:
    name, value, op, limit = margins(numbers)[0]
    shown = f"{value:.1%}" if name.startswith("accuracy") else f"{value:.2f}"
    limit_shown = f"{limit:.0%}" if name.startswith("accuracy") else f"{limit:g}"
    passes = value >= limit if op == ">=" else value <= limit
    return (
        f"the pinned model's `{name}`, {shown} against a limit of "
        f"{'at least' if op == '>=' else 'at most'} {limit_shown}, has the "
        f"thinnest margin{'' if passes else ' and FAILS it'}"
    )


def render_snippet_expect(numbers: dict) -> str:
    ratios = [
        _value(numbers, key)
        for key in sorted(
            (k for k in numbers["numbers"] if k.startswith("snippet.ratio.")),
            key=lambda k: int(k.rsplit(".", 1)[1]),
        )
    ]
    best = max(range(len(ratios)), key=lambda i: ratios[i])
    k, n = _value(numbers, "snippet.box_tokens"), _value(numbers, "snippet.tokens")
    return (
        f"in layer {best} the box's {k} of {n} tokens get {ratios[best]:.1f} times their "
        f"uniform share of the last token's attention"
    )


def render_snippet_output(numbers: dict) -> str:
    return "```text\n" + _value(numbers, "snippet.output").rstrip("\n") + "\n```"


def render_gallery(numbers: dict) -> str:
    rows = _value(numbers, "gallery")
    jobs = numbers["numbers"].get("time.jobs", {}).get("value")
    total = numbers["numbers"].get("time.notebooks_total", {}).get("value")
    machine = numbers.get("machine", {})
    cpus = machine.get("cpus")
    load = machine.get("load_15min")
    shared = f", 15-minute load average {load:g} when collected" if load is not None else ""
    timed = [r for r in rows if r["seconds"] is not None]
    lines = []
    intro = (
        f"Wall times of the `make figures` run behind these numbers "
        f"({numbers.get('generated')}, {cpus} CPU cores{shared}, commit "
        f"`{str(numbers.get('commit'))[:12]}`; `figures/default/numbers.json`): "
    )
    parts = []
    if jobs is not None:
        parts.append(f"the extraction jobs {duration(jobs)}")
    if total is not None and len(timed) == len(rows):
        parts.append(f"the {len(timed)} notebooks {duration(total)} in all")
    elif total is not None:
        parts.append(
            f"{len(timed)} of the {len(rows)} notebooks {duration(total)} in all (the others "
            "did not run to the end in this record)"
        )
    lines.append(
        intro
        + (", ".join(parts) or "not recorded")
        + ". A second `make figures` recomputes nothing."
    )
    lines.append("")
    lines.append("| figures | notebook | title | wall time |")
    lines.append("| --- | --- | --- | --- |")
    for r in rows:
        figures = ", ".join(f"`{f}`" for f in r["figures"]) or "—"
        seconds = duration(r["seconds"]) if r["seconds"] is not None else "not run in this record"
        lines.append(f"| {figures} | `{r['notebook']}` | {r['title']} | {seconds} |")
    return "\n".join(lines)


RENDERERS = {
    "teach-acceptance": render_acceptance,
    "teach-margin": render_margin,
    "snippet-expect": render_snippet_expect,
    "snippet-output": render_snippet_output,
    "gallery": render_gallery,
}
"""README block name -> how it is written from a numbers document."""


def render_blocks(numbers: dict) -> dict[str, str]:
    return {name: render(numbers) for name, render in RENDERERS.items()}


def readme_blocks(text: str) -> dict[str, str]:
    """README's generated blocks: name -> content (stripped of the line breaks around a
    block that stands on lines of its own)."""
    return {m["name"]: m["body"].strip("\n") for m in BLOCK.finditer(text)}


def rewrite(text: str, blocks: dict[str, str]) -> str:
    """``text`` with each named block's content replaced (a block on lines of its own
    stays so, between blank lines: its markers are HTML blocks of their own)."""

    def replace(match: re.Match) -> str:
        name, body = match["name"], match["body"]
        if name not in blocks:
            return match.group(0)
        new = f"\n\n{blocks[name]}\n\n" if body.startswith("\n") else blocks[name]
        return f"<!-- numbers:begin {name} -->{new}<!-- numbers:end {name} -->"

    return BLOCK.sub(replace, text)


def differences(text: str, numbers: dict, names: list[str] | None = None) -> list[str]:
    """The README blocks (``names``, default all of :data:`RENDERERS`) that differ from
    ``numbers``, or that README lacks."""
    present = readme_blocks(text)
    wanted = {name: RENDERERS[name](numbers) for name in names or RENDERERS}
    problems = []
    for name, content in wanted.items():
        if name not in present:
            problems.append(f"README has no block {name!r}")
        elif present[name] != content:
            problems.append(
                f"README block {name!r} differs:\n--- README\n{present[name]}\n--- run\n{content}"
            )
    return problems

"""Parameter profiles (``notebooks/params/<profile>.yaml``) and their extraction jobs.

A profile names the extraction jobs the figures need (model x dataset x strategy) and
what each figure shows. ``ensure_results`` runs every job through the runner, which does
nothing for a job whose results are already complete, so notebooks and ``make`` can both
call it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import yaml

from vgutils import rehearsal
from vgutils.errors import DataError, UsageError
from vgutils.paths import PARAMS_DIR as PARAMS_DIR
from vgutils.paths import check_profile, results_dir
from vgutils.provenance import Provenance


@dataclass(frozen=True)
class Job:
    """One extraction: results land in ``results/<profile>/<name>/``. ``protocol``,
    ``box_mapping`` and ``processor`` (processor kwargs) as in
    :class:`vgutils.runner.ExtractOptions`; the folder name says every one that is not the
    default (``corrected``, the protocol's mapping, no extra processor kwargs)."""

    model: str
    dataset: str
    strategy: str = "last"
    heads: bool = False
    save_maps: bool = False
    limit: int | None = None
    protocol: str = "corrected"
    box_mapping: str | None = None
    processor: tuple[tuple[str, object], ...] = ()
    device_map: str | None = None  # "auto": the model over this process's GPUs (too big for one)

    @property
    def name(self) -> str:
        slug = re.sub(r"[^A-Za-z0-9.-]+", "_", self.model).strip("_")
        name = f"{slug}__{self.dataset}__{self.strategy}"
        if self.protocol != "corrected":
            name += f"__{self.protocol}"
        if self.box_mapping:
            name += f"__boxes-{self.box_mapping}"
        for key, value in self.processor:
            name += "__" + re.sub(r"[^A-Za-z0-9.-]+", "_", f"{key}-{value}")
        return name

    @property
    def setting(self) -> tuple:
        """What identifies the job beyond (model, dataset, strategy)."""
        return (self.protocol, self.box_mapping, self.processor)


def _processor(spec: dict | None) -> tuple[tuple[str, object], ...]:
    return tuple(sorted((spec or {}).items()))


def load_profile(profile: str) -> dict:
    """The profile's settings (``notebooks/params/<profile>.yaml``). Its ``caption`` says
    which protocol the figures show (the profile's ``protocol``, default ``corrected``).
    A rehearsal (``paper-rehearsal``) reads ``paper.yaml`` and checks and maps it
    (:func:`vgutils.rehearsal.rehearse_settings`); its ``note`` (markdown) says so at the
    top of each notebook."""
    path = check_profile(profile)
    try:
        settings = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise DataError(
            f"{path}: not a readable YAML profile ({str(err).splitlines()[0]})"
        ) from err
    if not isinstance(settings, dict):
        raise DataError(f"{path}: expected a mapping of settings")
    check_settings(settings, path)
    _, scale = rehearsal.split_profile(profile)
    if scale:
        settings = rehearsal.rehearse_settings(settings, path, scale)
        settings["note"] = rehearsal.describe(settings)
    protocol = f"protocol: {settings.get('protocol', 'corrected')}"
    caption = settings.get("caption")
    settings["caption_plain"] = caption
    settings["caption"] = f"{caption} · {protocol}" if caption else protocol
    return settings


def use_profile(profile: str) -> dict:
    """Load ``profile`` (:func:`load_profile`) and make this process run it: a rehearsal's
    stand-ins and data are activated, and a rehearsal of an earlier profile ends. Returns
    the settings."""
    settings = load_profile(profile)
    rehearsal.enter(settings)
    return settings


SECTIONS = ("layer_maps", "curves", "strategies", "refine", "sensitivity", "teach", "benchmarks")
SECTIONS += ("anatomy",)
"""The figures' settings (mappings read by the notebooks)."""
JOB_KEYS = ("models", "datasets", "strategies", "save_maps", "heads", "limit", "protocol")
JOB_KEYS += ("box_mapping", "processor", "device_map")


def check_settings(settings: dict, path: Path) -> None:
    """A profile's keys and value types, and its jobs' (strategies, protocols, box
    mappings by name): a DataError naming the profile file and every bad key with the
    valid choices, raised when the profile is read, before any model loads."""
    from vgutils import checks
    from vgutils.errors import choices_hint
    from vgutils.geometry import BOX_MAPPINGS
    from vgutils.models.vlm import STRATEGIES
    from vgutils.protocols import PROTOCOLS

    problems: list[str] = []

    def known(key: str, where: str, valid) -> bool:
        if key in valid:
            return True
        problems.append(f"{where}: unknown setting; {choices_hint(str(key), valid)}")
        return False

    def count(value, where: str, nullable: bool = True) -> None:
        if (value is None and nullable) or (
            isinstance(value, int) and not isinstance(value, bool) and value >= 1
        ):
            return
        kind = "an integer >= 1" + (" or null" if nullable else "")
        problems.append(f"{where}: {value!r} is not {kind}")

    def names(value, where: str, valid=None, what: str = "") -> None:
        if not isinstance(value, list) or not value:
            problems.append(f"{where}: {value!r} is not a list of names, e.g. [a, b]")
            return
        for item in value:
            if not isinstance(item, str):
                problems.append(f"{where}: {item!r} is not a name")
            elif valid is not None and item not in valid:
                problems.append(f"{where}: {item!r} is not a {what}; {choices_hint(item, valid)}")

    def protocols(value, where: str) -> None:
        names([value] if isinstance(value, str) else value, where, sorted(PROTOCOLS), "protocol")

    top = ("caption", "protocol", "device", "dtype", "limit", "batch_size", "image_batch")
    top += ("n_boot", "revisions", "jobs", *SECTIONS)
    for key, value in settings.items():
        if not known(key, str(key), top):
            continue
        if key == "caption" and not (value is None or isinstance(value, str)):
            problems.append(f"caption: {value!r} is not text")
        elif key == "protocol":  # the figures' one protocol
            if isinstance(value, str):
                protocols(value, key)
            else:
                problems.append(f"protocol: {value!r} is not a protocol name")
        elif key == "device":
            words = checks.DEVICE_WORDS
            if not (
                isinstance(value, str) and (value in words or re.fullmatch(r"cuda:\d+", value))
            ):
                problems.append(f"device: {value!r} is not one of {', '.join(words)}, cuda:N")
        elif key == "dtype" and value not in checks.DTYPES:
            problems.append(f"dtype: {value!r} is not one of {', '.join(checks.DTYPES)}")
        elif key in ("limit", "batch_size", "image_batch", "n_boot"):
            count(value, key, nullable=key == "limit")
        elif key == "revisions" and not (
            isinstance(value, dict) and all(isinstance(v, str) or v is None for v in value.values())
        ):
            problems.append(f"revisions: {value!r} is not a mapping of model -> commit or null")
        elif key in SECTIONS and not isinstance(value, dict):
            problems.append(f"{key}: expected a mapping of settings, got {value!r}")
    jobs = settings.get("jobs", [])
    if not isinstance(jobs, list):
        problems.append(f"jobs: expected a list of jobs, got {jobs!r}")
        jobs = []
    for index, spec in enumerate(jobs):
        where = f"jobs[{index}]"
        if not isinstance(spec, dict):
            problems.append(f"{where}: expected a mapping (models, datasets, ...), got {spec!r}")
            continue
        for key in ("models", "datasets"):
            if key not in spec:
                problems.append(f"{where}.{key}: missing")
        for key, value in spec.items():
            if not known(key, f"{where}.{key}", JOB_KEYS):
                continue
            if key in ("models", "datasets"):
                names(value, f"{where}.{key}")
            elif key == "strategies":
                names(value, f"{where}.{key}", STRATEGIES, "strategy")
            elif key in ("save_maps", "heads") and not isinstance(value, bool):
                problems.append(f"{where}.{key}: {value!r} is not true or false")
            elif key == "limit":
                count(value, f"{where}.{key}")
            elif key == "protocol":
                protocols(value, f"{where}.{key}")
            elif key == "box_mapping" and value is not None and value not in BOX_MAPPINGS:
                problems.append(
                    f"{where}.{key}: {value!r} is not one of {', '.join(BOX_MAPPINGS)} or null"
                )
            elif key == "processor" and not isinstance(value, dict):
                problems.append(f"{where}.{key}: expected a mapping of processor settings")
    if problems:
        raise DataError(f"{path}: " + "; ".join(problems))


def profile_jobs(settings: dict) -> list[Job]:
    """Every extraction job the profile's figures need (deduplicated, in order). A job
    spec may set ``protocol`` (a name or a list; default: the profile's ``protocol``,
    else ``corrected``), ``box_mapping`` and ``processor`` (a mapping of processor
    kwargs) and ``device_map: auto`` (a model larger than one GPU: loaded over the GPUs
    of one process; the folder name does not change)."""
    jobs: dict[str, Job] = {}
    default_protocol = settings.get("protocol", "corrected")
    for number, spec in enumerate(settings.get("jobs", [])):
        defaults = {
            k: spec.get(k, v)
            for k, v in (("heads", False), ("save_maps", False), ("limit", settings.get("limit")))
        }
        protocols = spec.get("protocol", default_protocol)
        protocols = [protocols] if isinstance(protocols, str) else list(protocols)
        extra = {
            "box_mapping": spec.get("box_mapping"),
            "processor": _processor(spec.get("processor")),
            "device_map": device_map_of(spec, f"jobs[{number}]"),
        }
        for model in spec["models"]:
            for dataset in spec["datasets"]:
                for strategy in spec.get("strategies", ["last"]):
                    for protocol in protocols:
                        job = Job(model, dataset, strategy, **defaults, protocol=protocol, **extra)
                        previous = jobs.get(job.name)
                        if previous is not None:  # the union of what two figures need
                            job = replace(
                                job,
                                heads=job.heads or previous.heads,
                                save_maps=job.save_maps or previous.save_maps,
                                device_map=job.device_map or previous.device_map,
                            )
                        jobs[job.name] = job
    return list(jobs.values())


def device_map_of(spec: dict, where: str) -> str | None:
    """A job's or benchmark run's ``device_map`` (``auto`` or absent)."""
    value = spec.get("device_map")
    if value not in (None, "auto"):
        raise UsageError(
            f"{where}.device_map: {value!r}; expected auto (the model over the GPUs of one "
            "process) or nothing (one GPU per process)"
        )
    return value


def device_for(settings: dict, device_map: str | None) -> str:
    """The ``device`` a job runs on: ``balanced`` (``device_map="auto"`` over this
    process's GPUs) when the profile names ``device_map: auto``, else the profile's."""
    return "balanced" if device_map == "auto" else settings.get("device", "auto")


def profile_revision(settings: dict, model: str) -> str | None:
    """The Hub commit the profile's ``revisions`` pin ``model`` to (None: the newest)."""
    return (settings.get("revisions") or {}).get(model)


def job_dir(profile: str, job: Job) -> Path:
    return results_dir(profile) / job.name


def ensure_results(
    profile: str,
    progress: bool = True,
    shard: tuple[int, int] | None = None,
    details: bool | None = None,
) -> list[Job]:
    """Run every job of ``profile`` that is not complete yet; returns the jobs.
    ``shard``: ``(rank, world)`` under a launcher: this process computes its share of
    each job's images (:func:`vgutils.runner.extract`), the last rank to finish a job
    merges it. A job folder left by other options or an older version of the code is
    recomputed (unless ranks are writing it).

    What it prints: one line per job when ``details`` (default: when ``progress`` bars
    are on, as in ``python -m vgutils jobs``), else ONE status line (a notebook's
    opening), e.g. ``profile default: 12 runs complete (3 computed now, 9 cached) in
    41 s`` (:func:`status_line`)."""
    import time

    from vgutils.runner import ExtractOptions, extract

    details = progress if details is None else details
    start = time.perf_counter()
    settings = use_profile(profile)
    jobs = profile_jobs(settings)
    tally = {"complete": 0, "computed": 0, "cached": 0, "waiting": 0, "replaced": 0}
    for number, job in enumerate(jobs, start=1):
        options = ExtractOptions(
            model=job.model,
            dataset=job.dataset,
            strategy=job.strategy,
            limit=job.limit,
            heads=job.heads,
            save_maps=job.save_maps,
            dtype=settings.get("dtype", "auto"),
            protocol=job.protocol,
            box_mapping=job.box_mapping,
            processor_kwargs=dict(job.processor) or None,
            revision=profile_revision(settings, job.model),
        )
        folder = job_dir(profile, job)
        run = dict(
            device=device_for(settings, job.device_map),
            batch_size=settings.get("batch_size", 8),
            image_batch=settings.get("image_batch", 1),
            progress=progress,
            shard=shard,
            replace_stale=True,  # generated results of an older setup: recomputed
        )
        summary = extract(options, folder, **run)
        if summary.replaced:
            tally["replaced"] += 1
            if details:
                print(f"{job.name}: recomputing ({summary.replaced.splitlines()[0]})")
        if not summary.complete:
            tally["waiting"] += 1
            if details:
                who = f"rank {shard[0]} of {shard[1]}" if shard else "this process"
                print(
                    f"[{number}/{len(jobs)}] {job.name}: {who} done "
                    f"({summary.computed} computed); {summary.missing} samples of other "
                    "ranks missing (the last rank to finish merges)"
                )
            continue
        state = "computed" if summary.computed else "cached"
        tally["complete"] += 1
        tally[state] += 1
        if details:
            print(
                f"[{number}/{len(jobs)}] {job.name}: {summary.done} done, "
                f"{summary.skipped} skipped ({state})"
            )
    print(status_line(profile, tally, time.perf_counter() - start))
    return jobs


def status_line(profile: str, tally: dict, seconds: float) -> str:
    """``profile P: N runs complete (C computed now, K cached) in S s``, with the runs
    recomputed because they were stale and those waiting for other ranks when any."""
    line = (
        f"profile {profile}: {tally['complete']} runs complete ({tally['computed']} computed "
        f"now, {tally['cached']} cached) in {seconds:.0f} s"
    )
    if tally.get("replaced"):
        line += f"; {tally['replaced']} stale run(s) recomputed"
    if tally.get("waiting"):
        line += f"; {tally['waiting']} waiting for other ranks"
    return line


def profile_provenance(profile: str) -> Provenance:
    """What the figures of ``profile`` are made from (:mod:`vgutils.provenance`): the
    source commit, the profile's protocol, and the models and data of every run under
    ``results/<profile>/`` (the extraction jobs and the runs the notebooks make)."""
    from vgutils.provenance import from_runs, run_folders

    protocol = load_profile(profile).get("protocol", "corrected")
    return from_runs(profile, protocol, run_folders(results_dir(profile)))


def load_jobs_metrics(profile: str, jobs: list[Job], kind: str = "metrics") -> pd.DataFrame:
    """The metrics of several jobs in one frame (columns as written by the runner)."""
    from vgutils.results import load_metrics

    return pd.concat([load_metrics(job_dir(profile, j), kind) for j in jobs], ignore_index=True)


def find_job(
    profile: str,
    model: str,
    dataset: str,
    strategy: str = "last",
    protocol: str | None = None,
    box_mapping: str | None = None,
    processor: dict | None = None,
) -> Job:
    """The profile's job for (model, dataset, strategy) under ``protocol`` (default: the
    profile's), ``box_mapping`` and ``processor`` kwargs (default: none given)."""
    settings = load_profile(profile)
    protocol = protocol or settings.get("protocol", "corrected")
    wanted = (protocol, box_mapping, _processor(processor))
    for job in profile_jobs(settings):
        if (job.model, job.dataset, job.strategy) == (model, dataset, strategy):
            if job.setting == wanted:
                return job
    raise KeyError(
        f"profile {profile!r} has no job {model} / {dataset} / {strategy} with protocol "
        f"{protocol}, box_mapping {box_mapping}, processor {processor or {}}"
    )

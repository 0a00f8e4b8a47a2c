"""Parameter profiles (``notebooks/params/<profile>.yaml``) and their extraction jobs.

A profile names the extraction jobs the figures need (model x dataset x strategy) and
what each figure shows. ``ensure_results`` runs every job through the runner, which does
nothing for a job whose results are already complete, so notebooks and ``make`` can both
call it.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from vgutils.paths import NOTEBOOKS, results_dir

PARAMS_DIR = NOTEBOOKS / "params"


@dataclass(frozen=True)
class Job:
    """One extraction: results land in ``results/<profile>/<name>/``."""

    model: str
    dataset: str
    strategy: str = "last"
    heads: bool = False
    save_maps: bool = False
    limit: int | None = None

    @property
    def name(self) -> str:
        slug = re.sub(r"[^A-Za-z0-9.-]+", "_", self.model).strip("_")
        return f"{slug}__{self.dataset}__{self.strategy}"


def load_profile(profile: str) -> dict:
    """The profile's settings (``notebooks/params/<profile>.yaml``)."""
    path = PARAMS_DIR / f"{profile}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in PARAMS_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"no profile {profile!r} ({path}); known: {known}")
    return yaml.safe_load(path.read_text())


def profile_jobs(settings: dict) -> list[Job]:
    """Every extraction job the profile's figures need (deduplicated, in order)."""
    jobs: dict[str, Job] = {}
    for spec in settings.get("jobs", []):
        defaults = {
            k: spec.get(k, v)
            for k, v in (("heads", False), ("save_maps", False), ("limit", settings.get("limit")))
        }
        for model in spec["models"]:
            for dataset in spec["datasets"]:
                for strategy in spec.get("strategies", ["last"]):
                    job = Job(model, dataset, strategy, **defaults)
                    previous = jobs.get(job.name)
                    if previous is not None:  # the union of what two figures need
                        job = Job(
                            model,
                            dataset,
                            strategy,
                            heads=job.heads or previous.heads,
                            save_maps=job.save_maps or previous.save_maps,
                            limit=job.limit,
                        )
                    jobs[job.name] = job
    return list(jobs.values())


def job_dir(profile: str, job: Job) -> Path:
    return results_dir(profile) / job.name


def ensure_results(profile: str, progress: bool = True) -> list[Job]:
    """Run every job of ``profile`` that is not complete yet; returns the jobs."""
    from vgutils.results import RunMismatch
    from vgutils.runner import ExtractOptions, extract

    settings = load_profile(profile)
    jobs = profile_jobs(settings)
    for job in jobs:
        options = ExtractOptions(
            model=job.model,
            dataset=job.dataset,
            strategy=job.strategy,
            limit=job.limit,
            heads=job.heads,
            save_maps=job.save_maps,
            dtype=settings.get("dtype", "auto"),
        )
        folder = job_dir(profile, job)
        run = dict(
            device=settings.get("device", "auto"),
            batch_size=settings.get("batch_size", 8),
            image_batch=settings.get("image_batch", 1),
            progress=progress,
        )
        try:
            summary = extract(options, folder, **run)
        except RunMismatch as err:  # generated results of an older setup: recompute
            print(f"{job.name}: recomputing ({str(err).splitlines()[0]})")
            shutil.rmtree(folder)
            summary = extract(options, folder, **run)
        state = "computed" if summary.computed else "cached"
        print(f"{job.name}: {summary.done} done, {summary.skipped} skipped ({state})")
    return jobs


def load_jobs_metrics(profile: str, jobs: list[Job], kind: str = "metrics") -> pd.DataFrame:
    """The metrics of several jobs in one frame (columns as written by the runner)."""
    from vgutils.results import load_metrics

    return pd.concat([load_metrics(job_dir(profile, j), kind) for j in jobs], ignore_index=True)


def find_job(profile: str, model: str, dataset: str, strategy: str = "last") -> Job:
    """The profile's job for (model, dataset, strategy)."""
    for job in profile_jobs(load_profile(profile)):
        if (job.model, job.dataset, job.strategy) == (model, dataset, strategy):
            return job
    raise KeyError(f"profile {profile!r} has no job {model} / {dataset} / {strategy}")

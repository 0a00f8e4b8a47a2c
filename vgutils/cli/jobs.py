"""``jobs``: run a profile's extraction jobs and benchmark runs, cached
(:func:`vgutils.jobs.ensure_results`, :func:`vgutils.mc_report.benchmark_runs`), in one
process or as one rank of a launcher (:mod:`vgutils.launch`); ``--status`` and
``--merge`` per run; ``--project`` the wall time on 1, 8 and 32 GPUs
(:mod:`vgutils.projection`); ``--rehearsal`` runs them offline on stand-ins
(:mod:`vgutils.rehearsal`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from vgutils.cli import COMMANDS
from vgutils.cli.options import _shard
from vgutils.errors import UsageError


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "jobs",
        help=COMMANDS["jobs"].help,
        description="Run every extraction job and benchmark run of a profile that is not "
        "complete yet. Under torchrun, accelerate launch, an sbatch --array or srun each "
        "process computes its share of every run's images (RANK/WORLD_SIZE, "
        "SLURM_ARRAY_TASK_ID/COUNT, SLURM_PROCID/NTASKS, or --shard I/N) and the last one "
        "to finish a run merges it; rerun a process that failed alone, or with another "
        "number of processes: finished samples are kept.",
    )
    parser.add_argument(
        "profile",
        help="smoke, default, paper (notebooks/params/*.yaml), or a rehearsal such as "
        "paper-rehearsal",
    )
    parser.add_argument(
        "--rehearsal",
        nargs="?",
        const="small",
        choices=("small", "full"),
        help="rehearse the profile offline: its models as random stand-ins with the real "
        "image geometry (small: few narrow layers, CPU; full: real sizes, GPU), synthetic "
        "data in the real layout; results under results/<profile>-rehearsal[-full]/",
    )
    parser.add_argument(
        "--shard", type=_shard, help="I/N: run as process I of N (instead of a launcher's)"
    )
    what = parser.add_mutually_exclusive_group()
    what.add_argument(
        "--status",
        action="store_true",
        help="per run: done, running (pid, host), missing; computes nothing",
    )
    what.add_argument(
        "--merge",
        action="store_true",
        help="merge every run whose samples are all done but that nobody merged",
    )
    what.add_argument(
        "--project",
        action="store_true",
        help="projected wall time of the profile on --gpus GPUs from measured q/s",
    )
    parser.add_argument(
        "--speed",
        type=Path,
        help="--project: a speed record (json; default: the one in benchmarks/speed/ "
        "with the latest date)",
    )
    parser.add_argument("--gpus", default="1,8,32", help="--project: GPU counts (default 1,8,32)")
    parser.add_argument(
        "--wait",
        type=float,
        default=30.0,
        metavar="MINUTES",
        help="how long a process waits for a calibration run that no process is writing "
        "before it gives up (default 30)",
    )
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    profile = args.profile
    if args.rehearsal:  # paper -> paper-rehearsal: the same YAML, offline stand-ins
        from vgutils.rehearsal import SUFFIXES, split_profile

        if split_profile(profile)[1]:
            raise UsageError(f"jobs {profile} --rehearsal: {profile!r} is a rehearsal already")
        suffix = {scale: suffix for suffix, scale in SUFFIXES.items()}[args.rehearsal]
        profile += suffix
    if args.status:
        return _status(profile)
    if args.merge:
        return _merge(profile)
    if args.project:
        from vgutils.projection import print_projection

        gpus = [int(g) for g in args.gpus.split(",") if g.strip()]
        print_projection(profile, args.speed, gpus)
        return 0
    from vgutils import launch
    from vgutils.jobs import ensure_results, load_profile

    started = launch.start(launch.detect(shard=args.shard))
    if started.world > 1 or started.local_rank is not None:
        print(f"jobs {profile}: {started.describe()}")
    ensure_results(profile, shard=started.shard)  # enters the profile (a rehearsal's too)
    spec = load_profile(profile).get("benchmarks")
    if spec:
        from vgutils.mc_report import benchmark_runs

        for folder in _calibrations(profile, spec):
            launch.wait_for_run(folder, stall=args.wait * 60)
        benchmark_runs(profile, spec, progress=True, shard=started.shard)
        for label, state in _benchmark_states(profile, spec):
            print(f"{label}: {describe(state)}")
    return 0


def _calibrations(profile: str, spec: dict) -> list[Path]:
    """The extraction folders whose heads the benchmark runs with VGRefine rank (a run
    given its heads has none)."""
    from vgutils.jobs import find_job, job_dir

    return [
        job_dir(profile, find_job(profile, run["model"], run["calibration"]))
        for run in spec["runs"]
        if run.get("refine") and run.get("calibration")
    ]


def runs_of(profile: str) -> list[tuple[str, Path]]:
    """``(label, folder)`` of every run of the profile: its extraction jobs, then its
    benchmark runs."""
    from vgutils.jobs import job_dir, load_profile, profile_jobs

    settings = load_profile(profile)
    runs = [(job.name, job_dir(profile, job)) for job in profile_jobs(settings)]
    spec = settings.get("benchmarks")
    if spec:
        from vgutils.mc_report import run_folder

        folders = [run_folder(profile, spec, run) for run in spec["runs"]]
        runs += [(folder.name, folder) for folder in folders]
    return runs


def _benchmark_states(profile: str, spec: dict):
    from vgutils.mc_report import run_folder
    from vgutils.results import run_state

    for run in spec["runs"]:
        folder = run_folder(profile, spec, run)
        yield folder.name, run_state(folder)


def describe(state) -> str:
    """One run's state in words: ``340/512 done, running (pid ... on host ... since ...,
    rank 0 of 8), 172 missing``."""
    from vgutils.results import Writer

    if state.status == "not started":
        return "not started"
    total = "?" if state.total is None else state.total
    text = f"{state.done}/{total} done"
    if state.status == "complete":
        return text + ", complete"
    if state.writers:
        who = [w.describe() if isinstance(w, Writer) else "a process" for w in state.writers]
        text += f", running ({'; '.join(who)})"
    elif state.missing == 0:
        text += ", every sample done but not merged (jobs PROFILE --merge)"
    else:
        text += ", no process at work on it now"
    if state.missing:
        text += f", {state.missing} missing"
    elif state.missing is None:
        text += " (total unknown: started by an older version)"
    return text


def _status(profile: str) -> int:
    from vgutils.results import run_state

    runs = runs_of(profile)
    for number, (label, folder) in enumerate(runs, start=1):
        print(f"[{number}/{len(runs)}] {label}: {describe(run_state(folder))}")
    return 0


def _merge(profile: str) -> int:
    from vgutils.results import RunLocked, merge_run, run_state

    runs = runs_of(profile)
    incomplete = 0
    for number, (label, folder) in enumerate(runs, start=1):
        state = run_state(folder)
        if state.status not in ("complete", "not started"):
            try:
                state = merge_run(folder)
            except RunLocked as err:
                print(f"[{number}/{len(runs)}] {label}: not merged: {err}")
                incomplete += 1
                continue
        incomplete += state.status != "complete"
        print(f"[{number}/{len(runs)}] {label}: {describe(state)}")
    if incomplete:
        print(f"{incomplete} of {len(runs)} runs are not complete")
        return 1
    return 0

"""``make gpu-check``: the one prepared GPU check, unattended, at most 8 minutes on one
H200 with under 60 GB of disk.

    make gpu-check                                  # on the GPU machine, after make setup
    python benchmarks/gpu_check.py --dry-run        # the plan, budgets and disk; nothing run
    python benchmarks/gpu_check.py --tiny --device cpu --skip-bench   # the same path, tiny
                                                    # models on the CPU (what the tests run)

Steps (budget in seconds; a step that would start past its share of the 480 s is skipped
and the table says so):

1. ``make bench DEVICE=cuda`` (reference pipeline against our runner on the 32+24-layer
   LLaVA-1.5-7B shape, the image-batch sweep 1, 2, 4, 8, 16, capture memory), on 4 CPU
   cores, WHILE the two full-size rehearsal stand-ins are built on the other cores:
   LLaVA-1.5-7B (14 GB) and HuatuoGPT-Vision-7B (an original-format checkpoint, 16 GB,
   converted by the real converter: 16 GB more), at every real depth and width, random
   weights (``REHEARSAL=full``'s builds; only these two, 46 GB in all).
2. Per model, in its own process: load it (timed), answer ``--limit`` questions of
   ``teach-natural`` with our pipeline and ``--reference`` of them with the reference
   pipeline (q/s, peak GPU memory, speed-up, largest metric difference), then the same
   questions as one extraction job through the runner and the results store.
3. Per model, a 2-process ``torchrun`` of that extraction job on the one GPU (both ranks
   on ``cuda:0``): wall time, and the merged rows against the one-process job's.

Then one table (q/s per model, peak memory, speed-up, the torchrun check) and the
projected wall time of the paper profile on 1, 8 and 32 GPUs from these q/s
(:mod:`vgutils.projection`, with the speed record written to
``build/gpu-check/speed.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BUDGET_S = 480
MODELS = ("llava-hf/llava-1.5-7b-hf", "FreedomIntelligence/HuatuoGPT-Vision-7B")
TINY_MODELS = ("tiny:llava", "tiny:llava_qwen2")  # the same families, on the CPU
DATASET = "teach-natural"
SKIP = ("--skip-tiny", "--repeats", "2")  # make bench's forward_capture options


@dataclass(frozen=True)
class Step:
    name: str
    budget_s: int
    what: str


STEPS = (
    Step(
        "bench + build",
        210,
        "make bench DEVICE=cuda (4 cores) while the two full-size stand-ins are built and "
        "HuatuoGPT-Vision-7B is converted (the other cores)",
    ),
    Step(
        "measure",
        150,
        "per model: load, our pipeline and the reference on the same questions, then the "
        "extraction job through the runner and the store",
    ),
    Step("torchrun", 100, "per model: a 2-process torchrun of the same job on the one GPU"),
)
"""The plan; the budgets leave 20 s of the 480 for the start and the table."""


def disk_gb(models=MODELS) -> float:
    """Disk the stand-ins take: 2 bytes a parameter, twice for an original-format one
    (as built, and converted)."""
    from vgutils.models.published import real_model
    from vgutils.rehearsal.models import parameter_count

    total = 0.0
    for model in models:
        copies = 2 if real_model(model).family in ("llava_qwen2", "llava_mistral") else 1
        total += copies * 2 * parameter_count(model, "full") / 1e9
    return total


def slug(model: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "_", model).strip("_")


# --- the parts that run in their own process ---------------------------------------------


def build(models: list[str]) -> None:
    """Build (and convert) the stand-ins of ``models`` into the cache: what a first load
    would do, done ahead."""
    from vgutils.context import current
    from vgutils.locks import build_lock
    from vgutils.models.original import ensure_converted, original_config
    from vgutils.models.sources import resolve

    for model in models:
        started = time.perf_counter()
        source = resolve(model)
        if original_config(source) is not None:
            with build_lock():
                ensure_converted(source, current().cache_dir)
        print(f"built {model} in {time.perf_counter() - started:.0f} s", flush=True)


def measure(model: str, device: str, limit: int, reference: int, out: Path) -> dict:
    """Step 2 for one model (see the module docstring); returns its numbers."""
    import torch

    sys.path.insert(0, str(HERE))
    from bench_runner import largest_difference, our_run, reference_run
    from measure import measure as timed

    from vgutils.data import load_dataset
    from vgutils.models import load_model
    from vgutils.runner import ExtractOptions, extract

    cuda = device.startswith("cuda")
    started = time.perf_counter()
    vlm = load_model(model, device=device)
    if cuda:
        torch.cuda.synchronize()
    load_s = time.perf_counter() - started
    samples = load_dataset(DATASET)[:limit]
    result: dict = {}
    ours = timed(lambda: result.update(ours=our_run(vlm, samples, 8)), device, 1)
    few = samples[:reference]
    our_few = our_run(vlm, few, 8)
    ref = timed(lambda: result.update(ref=reference_run(vlm, few)), device, 1)
    worst, within = largest_difference(result["ref"], our_few, 2e-2 if cuda else 1e-4)
    vlm = None  # the job below loads its own copy
    if cuda:
        torch.cuda.empty_cache()
    started = time.perf_counter()
    summary = extract(
        ExtractOptions(model=model, dataset=DATASET, limit=limit, heads=True),
        out,
        device=device,
        progress=False,
    )
    return {
        "model": model,
        "load_s": load_s,
        "questions": len(samples),
        "our_qps": len(samples) / ours.seconds,
        "our_mib": ours.peak_mib,
        "ref_questions": len(few),
        "ref_qps": len(few) / ref.seconds,
        "ref_mib": ref.peak_mib,
        "max_diff": worst,
        "within": within,
        "job_s": time.perf_counter() - started,
        "job_done": summary.done,
        "job_complete": summary.complete,
    }


# --- the driver --------------------------------------------------------------------------


def run_step(command: list[str], timeout: float, env: dict, log: Path) -> tuple[int, str]:
    """Run ``command`` with a timeout; its output goes to ``log`` (and is returned)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(
            command, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout
        )
        text, code = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as err:
        output = err.stdout or b""
        text, code = output.decode() if isinstance(output, bytes) else output, 124
    log.write_text(text)
    return code, text


def with_cores(cores: set[int] | None):
    """A ``preexec_fn`` pinning the child to ``cores`` (None: no pinning)."""
    if not cores:
        return None
    return lambda: os.sched_setaffinity(0, cores)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny models (a CPU test run)")
    parser.add_argument("--skip-bench", action="store_true", help="leave out make bench")
    parser.add_argument("--limit", type=int, default=160, help="questions a model")
    parser.add_argument("--reference", type=int, default=16, help="of them, by the reference")
    parser.add_argument("--out", type=Path, default=REPO / "build" / "gpu-check")
    parser.add_argument("--budget", type=int, default=BUDGET_S, help="seconds in all")
    parser.add_argument("--part", nargs="+", help=argparse.SUPPRESS)  # internal: one step
    args = parser.parse_args()
    if args.part:
        return _part(args)
    models = TINY_MODELS if args.tiny else MODELS
    if args.dry_run:
        return _plan(models, args)
    _run(models, args)


def _part(args) -> None:
    from vgutils import rehearsal

    rehearsal.resume()  # the stand-ins, when the inherited context names the rehearsal
    kind, *rest = args.part
    if kind == "build":
        build(rest)
    elif kind == "measure":
        numbers = measure(rest[0], args.device, args.limit, args.reference, Path(rest[1]))
        print("RESULT " + json.dumps(numbers), flush=True)


def _plan(models, args) -> None:
    print(f"make gpu-check: {len(STEPS)} steps, {args.budget} s in all, models {list(models)}")
    for step in STEPS:
        print(f"  {step.name:14} {step.budget_s:4d} s  {step.what}")
    print(f"  budgets: {sum(s.budget_s for s in STEPS)} s of {args.budget} s")
    if not args.tiny:
        print(f"  disk: {disk_gb(models):.1f} GB of stand-ins (under 60 GB)")
    print(f"  questions: {args.limit} of {DATASET} a model, {args.reference} by the reference")


def _run(models, args) -> None:
    start = time.monotonic()
    deadline = start + args.budget
    out = args.out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}
    env.pop("VGUTILS_CONTEXT", None)
    if not args.tiny:  # the stand-ins: Hub ids resolve to the full-size rehearsal builds
        from vgutils import rehearsal

        rehearsal.activate("full")
        env["VGUTILS_CONTEXT"] = os.environ["VGUTILS_CONTEXT"]
        from vgutils.context import current

        cache = current().cache_dir
        cache.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(cache).free / 1e9
        needed = disk_gb(models)
        print(f"disk: {free:.0f} GB free at {cache}, the stand-ins need {needed:.0f} GB")
        if free < needed + 5 and not all(_built(m) for m in models):
            raise SystemExit(f"gpu-check: not enough disk at {cache} ({free:.0f} GB free)")
    notes: list[str] = []
    python = [sys.executable, str(HERE / "gpu_check.py"), "--device", args.device]
    python += ["--limit", str(args.limit), "--reference", str(args.reference)]
    cores = sorted(os.sched_getaffinity(0))
    bench_cores, build_cores = None, None
    if len(cores) > 6:  # the bench on 4 cores, the builds on the others
        bench_cores, build_cores = set(cores[:4]), set(cores[4:])

    # 1. bench, while the stand-ins are built
    step = STEPS[0]
    builder = subprocess.Popen(
        [*python, "--part", "build", *models],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=with_cores(build_cores),
    )
    bench_text = ""
    if not args.skip_bench:
        bench_env = {**env, "OMP_NUM_THREADS": "4"}
        bench_env.pop("VGUTILS_CONTEXT", None)  # the bench builds its own shapes in memory
        pin = with_cores(bench_cores)
        commands = [
            [sys.executable, str(HERE / "bench_runner.py"), "--device", args.device, "--quick"],
            [sys.executable, str(HERE / "forward_capture.py"), "--device", args.device, *SKIP],
        ]
        if args.device.startswith("cuda"):
            commands[0] += ["--image-batches", "1,2,4,8,16"]
        for command in commands:
            left = deadline - time.monotonic() - sum(s.budget_s for s in STEPS[1:])
            try:
                done = subprocess.run(
                    command,
                    env=bench_env,
                    cwd=REPO,
                    capture_output=True,
                    text=True,
                    timeout=max(10, left),
                    preexec_fn=pin,
                )
                bench_text += done.stdout + done.stderr
            except subprocess.TimeoutExpired:
                notes.append(f"bench: {Path(command[1]).name} stopped at the budget")
        (out / "bench.log").write_text(bench_text)
    try:
        build_text, _ = builder.communicate(
            timeout=max(10, start + step.budget_s - time.monotonic())
        )
    except subprocess.TimeoutExpired:
        builder.kill()
        build_text = builder.communicate()[0]
        notes.append("build: stopped at the budget (a next run reuses what was built)")
    (out / "build.log").write_text(build_text)
    if builder.returncode not in (0, None) and builder.returncode != -9:
        raise SystemExit(f"gpu-check: building the stand-ins failed; see {out / 'build.log'}")

    # 2. per model: measure, then one extraction job
    rows = []
    for model in models:
        left = deadline - time.monotonic() - STEPS[2].budget_s
        if left < 20:
            notes.append(f"measure {model}: skipped (over budget)")
            continue
        job = out / f"job-{slug(model)}"
        code, text = run_step(
            [*python, "--part", "measure", model, str(job)],
            min(left, STEPS[1].budget_s),
            env,
            out / f"measure-{slug(model)}.log",
        )
        found = [line for line in text.splitlines() if line.startswith("RESULT ")]
        if code != 0 or not found:
            notes.append(f"measure {model}: failed (exit {code}; log {out}/measure-*.log)")
            continue
        rows.append(json.loads(found[-1][len("RESULT ") :]))

    # 3. per model: the same job under a 2-process torchrun on the one GPU
    torchrun = Path(sys.executable).parent / "torchrun"
    for row in rows:
        left = deadline - time.monotonic() - 10
        if left < 20:
            notes.append(f"torchrun {row['model']}: skipped (over budget)")
            continue
        job = out / f"job-{slug(row['model'])}"
        command = [str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "vgutils"]
        command += ["extract", "--model", row["model"], "--dataset", DATASET]
        command += ["--limit", str(args.limit), "--heads", "--device", args.device]
        command += ["--out", str(job) + "-torchrun"]
        started = time.monotonic()
        code, _ = run_step(command, left, env, out / f"torchrun-{slug(row['model'])}.log")
        row["torchrun_s"] = time.monotonic() - started
        row["torchrun_ok"] = code == 0
        row["torchrun_diff"] = _compare(job, Path(str(job) + "-torchrun")) if code == 0 else None

    speed = _speed_record(rows, args)
    (out / "speed.json").write_text(json.dumps(speed, indent=2))
    if bench_text:
        print(bench_text)
    print(_table(rows, notes, time.monotonic() - start))
    if rows:
        from vgutils.projection import format_projection, load_speed

        print()
        print(format_projection("paper", load_speed(out / "speed.json"), [1, 8, 32]))
    if not rows or notes:
        raise SystemExit(1)


def _built(model: str) -> bool:
    from vgutils.context import current
    from vgutils.rehearsal.models import build_folder

    return (build_folder(model, "full", current().cache_dir) / ".complete").exists()


def _compare(one: Path, two: Path) -> float | None:
    """The largest absolute difference between the metrics of two runs of one job (None:
    not the same rows)."""
    import numpy as np

    from vgutils.results import load_metrics

    a, b = load_metrics(one), load_metrics(two)
    if list(a["sample_id"]) != list(b["sample_id"]) or len(a) != len(b):
        return None
    numbers = a.select_dtypes("number").columns
    return float(np.nanmax(np.abs(a[numbers].to_numpy(float) - b[numbers].to_numpy(float))))


def _speed_record(rows: list[dict], args) -> dict:
    try:
        import torch

        hardware = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "CPU"
        versions = f"torch {torch.__version__}"
    except Exception:
        hardware, versions = args.device, ""
    import transformers

    models = (
        "tiny models (a CPU test, not a GPU measurement)"
        if args.tiny
        else "full-size rehearsal stand-ins (random weights at the real sizes)"
    )
    return {
        "source": f"make gpu-check: {models}, our pipeline on {args.limit} {DATASET} "
        "questions a model, image batch 1",
        "hardware": f"{hardware}, {versions}, transformers {transformers.__version__}",
        "measured": date.today().isoformat(),
        "qps": {row["model"]: round(row["our_qps"], 3) for row in rows},
        "load_s": {row["model"]: round(row["load_s"], 1) for row in rows},
    }


def _table(rows: list[dict], notes: list[str], seconds: float) -> str:
    lines = [
        f"\nmake gpu-check: {seconds:.0f} s",
        "| model | load s | q/s ours | q/s reference | speed-up | peak MiB ours / ref "
        "| max metric diff | 2-process torchrun |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        if "torchrun_ok" not in r:
            check = "not run"
        elif not r["torchrun_ok"] or r["torchrun_diff"] is None:
            check = "FAILED"
        else:
            check = f"{r['torchrun_s']:.0f} s, same rows (max diff {r['torchrun_diff']:.1e})"
        lines.append(
            f"| {r['model']} | {r['load_s']:.1f} | {r['our_qps']:.2f} | {r['ref_qps']:.2f} | "
            f"{r['our_qps'] / r['ref_qps']:.1f}x | {r['our_mib']:.0f} / {r['ref_mib']:.0f} | "
            f"{r['max_diff']:.1e}{'' if r['within'] else ' OUTSIDE'} | {check} |"
        )
    lines += [f"note: {note}" for note in notes]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

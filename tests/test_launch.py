"""Issue #26: every runner under any launcher, work keyed by sample, one model copy per GPU.

- where the rank and the world size come from (torchrun / accelerate, SLURM arrays, srun,
  --shard) and what a launcher's variables must never turn on (device_map, tensor
  parallelism);
- the results store written by several ranks at once: the last one merges, a crashed rank
  is rerun alone, a run started with 3 ranks is finished with 2, a crash at every step of
  the ranks' merge, locks that refuse a second copy of a rank or a launch of another size;
- the runners (extract, vqa, multiple choice) and ``jobs`` split by rank give the rows one
  process gives, byte for byte;
- ``jobs --status`` / ``--merge``, the sbatch script, the projection, ``make gpu-check``'s
  plan. The end-to-end launcher runs (``torchrun --nproc-per-node 2 -m vgutils jobs
  smoke``, three SLURM array tasks, a rank SIGKILLed and rerun, gpu-check on the CPU) are
  ``slow``: CI runs them (``.ci/run``).
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from vgutils import context, launch, paths, results
from vgutils.__main__ import main
from vgutils.context import KILL_AFTER_PARTS
from vgutils.errors import DataError, UsageError
from vgutils.results import (
    RunLocked,
    RunStore,
    load_metrics,
    merge_run,
    run_state,
    split_work,
)

REPO = Path(__file__).resolve().parent.parent
FIXTURE = Path(__file__).parent / "fixtures" / "mc_benchmark"

# --- where the rank and the world size come from -------------------------------------


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, (0, 1, None)),
        ({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "3", "LOCAL_WORLD_SIZE": "8"}, (3, 8, 3)),
        (  # an sbatch --array task
            {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "32"}
            | {"SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "31"},
            (5, 32, None),
        ),
        (  # --array=1-7:2 (1, 3, 5, 7): task 5 is the third
            {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "4"}
            | {"SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_MAX": "7"}
            | {"SLURM_ARRAY_TASK_STEP": "2"},
            (2, 4, None),
        ),
        (  # torchrun with 8 processes inside array task 2 of 4: 32 processes
            {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "0"}
            | {"RANK": "1", "WORLD_SIZE": "8", "LOCAL_RANK": "1"},
            (17, 32, 1),
        ),
        (  # srun: a step of 4 tasks
            {"SLURM_STEP_ID": "0", "SLURM_PROCID": "2", "SLURM_NTASKS": "4", "SLURM_LOCALID": "0"},
            (2, 4, 0),
        ),
        (  # a batch script alone has SLURM_PROCID and SLURM_NTASKS too: one process
            {"SLURM_JOB_ID": "9", "SLURM_PROCID": "0", "SLURM_NTASKS": "4"},
            (0, 1, None),
        ),
        (  # torchrun's global ranks win over the srun step that started it
            {"SLURM_STEP_ID": "0", "SLURM_PROCID": "1", "SLURM_NTASKS": "2"}
            | {"RANK": "9", "WORLD_SIZE": "16", "LOCAL_RANK": "1"},
            (9, 16, 1),
        ),
    ],
)  # fmt: skip
def test_rank_and_world_come_from_the_launcher(environ, expected):
    found = launch.detect(environ)
    assert (found.rank, found.world, found.local_rank) == expected
    assert found.shard == (expected[:2] if expected[1] > 1 else None)


def test_shard_option_wins_and_bad_variables_are_one_line():
    found = launch.detect({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}, shard=(0, 3))
    assert (found.rank, found.world, found.local_rank, found.source) == (0, 3, 1, "--shard")
    bad = [
        ({"WORLD_SIZE": "2"}, r"\$WORLD_SIZE=2 but \$RANK=None"),
        ({"WORLD_SIZE": "two", "RANK": "0"}, r"\$WORLD_SIZE='two': not a whole number"),
        (
            {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "3"}
            | {"SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_MAX": "7"},
            "not a regular range",
        ),  # --array=1,3,7
        ({"SLURM_ARRAY_TASK_ID": "3"}, "give --shard I/N"),
    ]
    for environ, message in bad:
        with pytest.raises(UsageError, match=message):
            launch.detect(environ)


def test_start_hides_the_launcher_from_the_libraries_below(monkeypatch):
    for name, value in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv(context.VARIABLE, context.current().to_json())  # restored after
    started = launch.start(launch.detect())
    assert started.describe() == (
        "rank 1 of 2 (torchrun / accelerate launch: RANK, WORLD_SIZE; local rank 1)"
    )
    assert not {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"} & set(os.environ)
    assert (context.current().local_rank, context.current().local_world) == (1, 2)
    assert json.loads(os.environ[context.VARIABLE])["local_rank"] == 1  # children inherit it


def test_split_work_is_stable_disjoint_and_even():
    keys = [f"image-{i:03d}" for i in range(101)]
    for world in (1, 2, 3, 8):
        shares = [split_work(keys, (rank, world)) for rank in range(world)]
        assert sorted(i for share in shares for i in share) == list(range(101))
        assert max(map(len, shares)) - min(map(len, shares)) <= 1
        assert all(share == sorted(share) for share in shares)  # the dataset's order kept
    assert split_work(list(reversed(keys)), (0, 3)) == sorted(
        100 - i for i in split_work(keys, (0, 3))
    )  # keyed by the key, not by its position
    assert split_work(keys, None) == list(range(101))


# --- one model copy per GPU; no tensor parallelism -----------------------------------


class Loaded(Exception):
    """from_pretrained was called (its keyword arguments in args[0])."""


def from_pretrained_arguments(monkeypatch, device: str) -> dict:
    from transformers import AutoModelForImageTextToText

    from vgutils.models import loading

    def record(source, **kwargs):
        raise Loaded(kwargs)

    monkeypatch.setattr(AutoModelForImageTextToText, "from_pretrained", record)
    with pytest.raises(Loaded) as called:
        loading.load_model("tiny:llava", device=device)
    return called.value.args[0]


def test_launcher_variables_never_turn_on_device_map_or_tensor_parallelism(monkeypatch):
    """Under a launcher (RANK=1 of 2, LOCAL_RANK=1, simulated) ``device: auto`` is
    ``cuda:1`` and nothing else: no ``device_map="auto"``, no ``tp_plan`` /
    ``distributed_config`` (transformers 5.24 turns tensor parallelism on from those
    only; WORLD_SIZE alone would make a bare "cuda" mean cuda:$LOCAL_RANK, which we never
    pass). ``balanced`` (the profile's ``device_map: auto``) spreads over this process's
    own GPUs only."""
    from vgutils.models import loading

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(loading, "_gpu_memory", lambda index: 1000 + index)
    monkeypatch.setenv(context.VARIABLE, context.current().to_json())
    for name, value in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    launch.start(launch.detect())
    kwargs = from_pretrained_arguments(monkeypatch, "auto")
    assert kwargs["device_map"] == "cuda:1" and kwargs["dtype"] == torch.bfloat16
    assert not {"tp_plan", "tp_size", "distributed_config", "max_memory"} & set(kwargs)
    kwargs = from_pretrained_arguments(monkeypatch, "balanced")  # named in the profile
    assert kwargs["device_map"] == "auto" and kwargs["max_memory"] == {2: 1002, 3: 1003}
    assert "WORLD_SIZE" not in os.environ


def test_a_model_loaded_under_launcher_variables_is_plain(monkeypatch):
    """The real load on the CPU with a launcher's variables set: no process group, no
    DTensor, no device map beyond the one device."""
    monkeypatch.setenv(context.VARIABLE, context.current().to_json())
    for name, value in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(name, value)
    launch.start(launch.detect())
    from vgutils.models import load_model

    vlm = load_model("tiny:llava")
    assert not torch.distributed.is_initialized()
    assert {p.device.type for p in vlm.model.parameters()} == {"cpu"}
    assert all(type(p.data) is torch.Tensor for p in vlm.model.parameters())  # no DTensor
    assert getattr(vlm.model.config, "distributed_config", None) is None
    assert set(getattr(vlm.model, "hf_device_map", {"": "cpu"}).values()) <= {"cpu"}


def test_profile_names_device_map_per_job(tmp_path, monkeypatch):
    from vgutils.jobs import device_for, load_profile, profile_jobs

    params = tmp_path / "params"
    params.mkdir()
    spec = {"models": ["tiny:llava"], "datasets": ["sample-natural"], "device_map": "auto"}
    profile = {"device": "auto", "jobs": [spec, {**spec, "models": ["tiny:gemma3"]}]}
    profile["jobs"][1].pop("device_map")
    (params / "big.yaml").write_text(yaml.safe_dump(profile))
    monkeypatch.setattr(paths, "PARAMS_DIR", params)
    settings = load_profile("big")
    jobs = profile_jobs(settings)
    assert [device_for(settings, job.device_map) for job in jobs] == ["balanced", "auto"]
    assert jobs[0].name == "tiny_llava__sample-natural__last"  # the folder does not change
    profile["jobs"][0]["device_map"] = "balanced"
    (params / "big.yaml").write_text(yaml.safe_dump(profile))
    with pytest.raises(UsageError, match=r"jobs\[0\]\.device_map: 'balanced'; expected auto"):
        profile_jobs(load_profile("big"))


# --- the store, written by ranks (synthetic frames, no model) -------------------------

OPTIONS = {"model": "m", "dataset": "d"}
IDENTITY = {"model_folder_sha256": "a" * 64, "dataset_sha256": "b" * 64}
GROUPS = 6


def group_frames(group: int) -> dict:
    ids = [f"s{group}-{i}" for i in range(2)]
    metrics = pd.DataFrame(
        {
            "sample_id": np.repeat(ids, 3),
            "order": np.repeat([2 * group, 2 * group + 1], 3),
            "layer": np.tile(np.arange(3), 2),
            "kl": np.arange(6) + group * 0.5,
        }
    )
    heads = metrics.loc[metrics.index.repeat(2)].reset_index(drop=True)
    heads["head"] = np.tile(np.arange(2), 6)
    return {"metrics": metrics, "head_metrics": heads}


KEYS = [f"s{g}-{i}" for g in range(GROUPS) for i in range(2)]


def rank_store(folder, shard):
    store = RunStore(folder, shard=shard)
    run = store.open(OPTIONS, IDENTITY, {}, keys=KEYS, plan={"samples": len(KEYS)})
    return store, run


def work(folder, shard, stop_after=None) -> bool:
    """One rank: its share of the groups not done yet; True when it merged (or found the
    run complete). ``stop_after``: parts written before it stops (a crash)."""
    store, run = rank_store(folder, shard)
    try:  # a crash closes the store as a killed process's locks go with it
        if run["status"] == "complete":
            return True
        done = store.done_ids()
        written = 0
        for group in split_work([f"group-{g}" for g in range(GROUPS)], shard):
            frames = group_frames(group)
            if set(frames["metrics"]["sample_id"]) <= done:
                continue
            if stop_after is not None and written >= stop_after:
                return False  # killed
            store.add_part(frames)
            written += 1
        return store.complete(run)
    finally:
        store.close()


@pytest.fixture
def whole(tmp_path):
    folder = tmp_path / "whole"
    assert work(folder, None)
    return {kind: pd.read_parquet(folder / f"{kind}.parquet") for kind in results.KINDS}


def same_as(folder, reference) -> None:
    for kind, frame in reference.items():
        pd.testing.assert_frame_equal(load_metrics(folder, kind), frame)


def test_ranks_write_one_folder_and_the_last_one_merges(tmp_path, whole):
    folder = tmp_path / "ranks"
    assert [work(folder, (rank, 3)) for rank in (0, 2, 1)] == [False, False, True]
    same_as(folder, whole)
    assert (folder / "metrics.parquet").read_bytes() == (
        tmp_path / "whole" / "metrics.parquet"
    ).read_bytes()
    run = json.loads((folder / "run.json").read_text())
    assert run["counts"] == {
        "samples": 12,
        "done": 12,
        "skipped": 0,
        "rows": {"head_metrics": 72, "metrics": 36},
    }
    assert not (folder / "parts").exists() and run_state(folder).status == "complete"


def test_a_run_started_with_3_ranks_is_finished_with_2(tmp_path, whole, monkeypatch):
    folder = tmp_path / "resized"
    assert not work(folder, (0, 3))  # rank 0 finished its share
    assert not work(folder, (1, 3), stop_after=1)  # rank 1 stopped after one image
    # a crash between the two files of a group: its head part, not its main part
    (folder / "parts" / "head_metrics-r2-00000.parquet").write_bytes(b"half")
    kept = results.RunStore(folder).done_ids()
    assert len(kept) == 6  # 2 images of rank 0 and 1 of rank 1: 3 x 2 samples
    written = []
    original = RunStore.add_part
    monkeypatch.setattr(
        RunStore, "add_part", lambda self, frames: written.append(1) or original(self, frames)
    )
    assert [work(folder, (rank, 2)) for rank in (0, 1)] == [False, True]
    assert len(written) == 3  # only the 3 images not finished: every finished one kept
    same_as(folder, whole)


def test_a_crash_at_every_step_of_the_ranks_merge_then_rerun(tmp_path, whole):
    def crash_at(k):
        def hook(step, what):
            if step == k:
                raise KeyboardInterrupt(what)  # nothing after it runs

        return hook

    steps = []
    results.fault_hook = lambda k, what: steps.append(what)
    try:
        for rank in range(3):
            work(tmp_path / "count", (rank, 3))
    finally:
        results.fault_hook = None
    assert steps[:3] == [
        "wrote head_metrics.parquet",
        "wrote metrics.parquet",
        "committed run.json",
    ]
    for k in range(1, len(steps) + 1):
        folder = tmp_path / f"crash-{k}"
        work(folder, (0, 3))
        work(folder, (1, 3))
        results.fault_hook = crash_at(k)
        try:
            with pytest.raises(KeyboardInterrupt):
                work(folder, (2, 3))  # the last rank dies while merging
        finally:
            results.fault_hook = None
        if k < 3:  # before the commit: every sample done, nobody merged: by hand
            state = run_state(folder)
            assert (state.status, state.missing, state.writers) == ("running", 0, ())
            assert merge_run(folder).status == "complete"
        else:  # after it: the rank rerun alone finds it complete and drops the leftovers
            assert work(folder, (2, 3))
        same_as(folder, whole)
        assert not (folder / "parts").exists(), f"step {k}: parts left"


def test_locks_refuse_a_second_copy_of_a_rank_and_a_launch_of_another_size(tmp_path):
    folder = tmp_path / "run"
    first, _ = rank_store(folder, (0, 2))
    with pytest.raises(RunLocked, match=r"rank 0 of 2 \(lock \S+\): rank 0 is running already"):
        rank_store(folder, (0, 2))
    with pytest.raises(RunLocked, match=r"a launch of 2 processes is running, this one has 3"):
        rank_store(folder, (1, 3))
    with pytest.raises(RunLocked, match=f"is being written by pid {os.getpid()} on host"):
        RunStore(folder).open(OPTIONS, IDENTITY, {})  # one process beside ranks
    second, _ = rank_store(folder, (1, 2))  # the other rank of the same launch joins
    state = run_state(folder)
    assert sorted(w.rank for w in state.writers) == [0, 1] and state.missing == 12
    first.close()
    second.close()
    single = RunStore(folder)
    single.open(OPTIONS, IDENTITY, {})
    with pytest.raises(RunLocked, match=f"pid {os.getpid()}"):  # a rank beside one process
        rank_store(folder, (0, 2))
    single.close()
    with pytest.raises(UsageError, match="--retry-errors: run it in one process"):
        RunStore(folder, shard=(0, 2)).open(OPTIONS, IDENTITY, {}, retry_errors=True)


def test_a_stale_run_is_never_wiped_while_ranks_write_it(tmp_path):
    folder = tmp_path / "run"
    writer, _ = rank_store(folder, (0, 2))
    writer.add_part(group_frames(0))
    other = RunStore(folder, shard=(1, 2))
    changed = {**IDENTITY, "model_folder_sha256": "9" * 64}
    with pytest.raises(results.RunMismatch):
        other.open(OPTIONS, changed, {}, keys=KEYS, replace_stale=True)
    other.close()
    assert (folder / "parts" / "metrics-r0-00000.parquet").exists()
    writer.close()
    with RunStore(folder, shard=(1, 2)) as fresh:  # nobody writes it now: replaced
        fresh.open(OPTIONS, changed, {}, keys=KEYS, replace_stale=True)
        assert "model_folder_sha256" in fresh.replaced
    assert not (folder / "parts").exists()


def test_skipped_samples_of_every_rank_are_folded_into_errors_jsonl(tmp_path):
    folder = tmp_path / "run"
    keys = ["a", "b", "c"]
    for rank, sample in enumerate(keys):
        with RunStore(folder, shard=(rank, 3)) as store:
            run = store.open(OPTIONS, IDENTITY, {}, keys=keys)
            store.add_error(sample, "x", "image unreadable")
            assert store.complete(run) == (rank == 2)
    lines = (folder / "errors.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["sample_id"] for line in lines) == keys
    assert not list(folder.glob("errors.r*.jsonl"))
    assert json.loads((folder / "run.json").read_text())["counts"]["skipped"] == 3


# --- the runners split by rank: the rows of one process, byte for byte -----------------

BASE = ["--model", "tiny:internvl", "--dataset", "sample-natural", "--limit", "8", "--heads"]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "run"
    assert main(["extract", *BASE, "--out", str(out)]) == 0
    return out


def assert_same_files(folder: Path, reference: Path, kinds=results.KINDS) -> None:
    for kind in kinds:
        assert (folder / f"{kind}.parquet").read_bytes() == (
            reference / f"{kind}.parquet"
        ).read_bytes(), kind


def test_three_slurm_array_tasks_give_the_rows_of_one_process(
    tmp_path, one_process, monkeypatch, capsys
):
    out = tmp_path / "array"
    array = {"SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "0"}
    for task in (2, 0, 1):
        monkeypatch.setenv("SLURM_ARRAY_TASK_ID", str(task))
        for name, value in array.items():
            monkeypatch.setenv(name, value)
        assert main(["extract", *BASE, "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert "rank 2 of 3 (sbatch --array: SLURM_ARRAY_TASK_ID, SLURM_ARRAY_TASK_COUNT)" in printed[0]
    assert ": 8 done, 0 skipped, " in printed[-1]  # the last task merged
    assert_same_files(out, one_process)
    assert main(["merge", str(out)]) == 0  # a complete run: nothing to do
    assert "8/8 done, complete" in capsys.readouterr().out


def test_a_rank_that_stopped_is_rerun_alone(tmp_path, one_process, monkeypatch, capsys):
    out = tmp_path / "stopped"
    assert main(["extract", *BASE, "--out", str(out), "--shard", "0/2"]) == 0
    original = RunStore.add_part
    count = {"parts": 0}

    def add_then_die(self, frames):
        if count["parts"] == 1:
            raise KeyboardInterrupt("killed")
        count["parts"] += 1
        original(self, frames)

    monkeypatch.setattr(RunStore, "add_part", add_then_die)
    with pytest.raises(KeyboardInterrupt):
        main(["--debug", "extract", *BASE, "--out", str(out), "--shard", "1/2"])
    monkeypatch.setattr(RunStore, "add_part", original)
    state = run_state(out)
    assert state.status == "running" and state.writers == () and 0 < state.missing < 8
    assert main(["extract", *BASE, "--out", str(out), "--shard", "1/2"]) == 0
    assert_same_files(out, one_process)


def test_vqa_and_multiple_choice_split_by_rank(tmp_path):
    vqa = ["vqa", "--model", "tiny:llava", "--dataset", "sample-natural", "--limit", "6"]
    vqa += ["--max-new-tokens", "2"]
    assert main([*vqa, "--out", str(tmp_path / "vqa-one")]) == 0
    for rank in range(3):
        assert main([*vqa, "--out", str(tmp_path / "vqa-ranks"), "--shard", f"{rank}/3"]) == 0
    assert_same_files(tmp_path / "vqa-ranks", tmp_path / "vqa-one", ["answers"])
    mc = ["vqa", "--model", "tiny:llava", "--benchmark", str(FIXTURE), "--n-boot", "20"]
    assert main([*mc, "--out", str(tmp_path / "mc-one")]) == 0
    for rank in (1, 0):
        assert main([*mc, "--out", str(tmp_path / "mc-ranks"), "--shard", f"{rank}/2"]) == 0
    assert_same_files(tmp_path / "mc-ranks", tmp_path / "mc-one", ["answers"])
    accuracy = json.loads((tmp_path / "mc-ranks" / "accuracy.json").read_text())
    assert accuracy["questions"] == 5  # written by the rank that merged


def test_heads_from_an_unfinished_run_is_refused(tmp_path):
    heads = tmp_path / "heads"
    calibrate = ["extract", "--model", "tiny:llava", "--dataset", "sample-natural", "--heads"]
    assert main([*calibrate, "--limit", "4", "--out", str(heads), "--shard", "0/2"]) == 0
    from vgutils.refine import RefineSettings

    settings = RefineSettings(heads_from=str(heads))
    with pytest.raises(DataError, match=r"is not complete yet \(\d/4 samples done\)"):
        settings.resolve("corrected")


# --- jobs: --status, --merge, a profile split by rank ---------------------------------


@pytest.fixture
def mini(tmp_path, monkeypatch):
    """A one-job profile, its results under tmp_path."""
    params = tmp_path / "params"
    params.mkdir()
    profile = {
        "device": "cpu",
        "jobs": [{"models": ["tiny:llava"], "datasets": ["sample-natural"], "heads": True}],
        "limit": 6,
    }
    (params / "mini.yaml").write_text(yaml.safe_dump(profile))
    monkeypatch.setattr(paths, "PARAMS_DIR", params)
    monkeypatch.setenv("VGUTILS_RESULTS", str(tmp_path / "results"))
    return tmp_path / "results" / "mini" / "tiny_llava__sample-natural__last"


def test_jobs_status_and_merge(mini, capsys):
    assert main(["jobs", "mini", "--status"]) == 0
    assert capsys.readouterr().out == "[1/1] tiny_llava__sample-natural__last: not started\n"
    assert main(["jobs", "mini", "--shard", "0/3"]) == 0
    out = capsys.readouterr().out
    assert "rank 0 of 3 done" in out and "samples of other ranks missing" in out
    holder = RunStore(mini, shard=(1, 3))
    holder.lock()  # rank 1 at work
    assert main(["jobs", "mini", "--status"]) == 0
    line = capsys.readouterr().out
    assert re.search(
        rf"\[1/1\] tiny_llava__sample-natural__last: \d/6 done, running \(pid {os.getpid()} "
        r"on host \S+ since \S+, rank 1 of 3\), \d missing\n",
        line,
    ), line
    holder.close()
    assert main(["jobs", "mini", "--merge"]) == 1  # samples missing: nothing to merge
    assert "no process at work on it now" in capsys.readouterr().out
    for rank in (1, 2):
        assert main(["jobs", "mini", "--shard", f"{rank}/3"]) == 0
    assert "6 done, 0 skipped (computed)" in capsys.readouterr().out  # the last one merged
    assert main(["jobs", "mini", "--merge"]) == 0
    assert "6/6 done, complete" in capsys.readouterr().out


# --- the sbatch script, the projection, make gpu-check's plan -------------------------


def test_the_sbatch_script_runs_jobs_paper_as_an_array(tmp_path):
    script = REPO / "scripts" / "paper.sbatch"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    options = dict(
        line[len("#SBATCH --") :].split("=", 1)
        for line in script.read_text().splitlines()
        if line.startswith("#SBATCH --")
    )
    assert options["array"] == "0-31" and options["gres"] == "gpu:1" and options["ntasks"] == "1"
    fake = tmp_path / "python"
    fake.write_text(
        "#!/bin/bash\n"
        'printf "%s\\n" "$PWD" "$*" "$OMP_NUM_THREADS" "$HF_HUB_OFFLINE" '
        '"$TOKENIZERS_PARALLELISM" "$SLURM_ARRAY_TASK_ID"\n'
    )
    fake.chmod(0o755)
    environ = {
        "PATH": os.environ["PATH"],
        "PYTHON": str(fake),
        "SLURM_SUBMIT_DIR": str(REPO),
        "SLURM_CPUS_PER_TASK": "8",
        "SLURM_ARRAY_TASK_ID": "7",
        "SLURM_ARRAY_TASK_COUNT": "32",
        "SLURM_ARRAY_TASK_MIN": "0",
        "SLURM_ARRAY_TASK_MAX": "31",
    }
    done = subprocess.run(["bash", str(script)], env=environ, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "vgrepro: array task 7 of 32 on " + lines[0].rsplit(" ", 1)[1]
    assert lines[1:] == [str(REPO), "-m vgutils jobs paper", "8", "1", "false", "7"]
    found = launch.detect(environ)
    assert (found.rank, found.world) == (7, 32)


def test_projection_is_computed_from_the_job_list_and_the_speed_record(tmp_path):
    from vgutils.jobs import load_profile, profile_jobs
    from vgutils.projection import format_projection, load_speed, profile_work, projection_rows

    record = {
        "source": "a test",
        "hardware": "none",
        "measured": "2000-01-01",
        "qps": {"llava-hf/llava-1.5-7b-hf": 10.0, "*": 5.0},
        "load_s": {"*": 20.0},
    }
    (tmp_path / "speed.json").write_text(json.dumps(record))
    speed = load_speed(tmp_path / "speed.json")
    work, notes = profile_work("paper")
    extraction = [w for w in work if w.kind == "extraction"]
    settings = load_profile("paper")
    runs = settings["benchmarks"]["runs"]
    jobs = [job for job in profile_jobs(settings) if not job.model.startswith("tiny:")]
    assert len(extraction) == len(jobs) > 40  # the teaching-model jobs run on the CPU
    assert len(work) == len(extraction) + len(runs)
    mc = [w for w in work if w.kind != "extraction"]
    passes = [6029 * (3 if run.get("refine") else 1) for run in runs]  # with VGRefine: 3 passes
    assert sorted(w.passes for w in mc) == sorted(passes)
    one, eight = projection_rows(work, speed, [1, 8])
    expected_mc = sum(w.passes / speed.rate(w.model)[0] for w in mc)
    assert one["mc"] == pytest.approx(expected_mc) and eight["mc"] == pytest.approx(expected_mc / 8)
    assert one["loads"] == eight["loads"] == len(work) * 20.0  # a load per run and process
    text = format_projection("paper", speed, [1, 8, 32])
    assert "q/s: a test (none; measured 2000-01-01)" in text and "| 32 |" in text
    assert any("multiple choice: 6,029 questions a run" in note for note in notes)


def test_the_readme_projection_is_the_commands_output():
    """README's projection block is what the command prints today (regenerate it after a
    change to paper.yaml or the speed record)."""
    command = ["jobs", "paper", "--project", "--speed", "benchmarks/speed/h200-2026-11-28.json"]
    done = subprocess.run(
        [sys.executable, "-m", "vgutils", *command],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    readme = (REPO / "README.md").read_text()
    block = readme.split("<!-- projection:begin", 1)[1].split("-->", 1)[1]
    block = block.split("<!-- projection:end -->", 1)[0]
    assert block.strip() == done.stdout.strip()


def test_the_readme_says_where_its_projection_comes_from():
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Run it on a cluster", 1)[1].split("\n## ", 1)[0]
    assert "python -m vgutils jobs paper --project" in section
    assert "have not been measured" in section or "not been measured" in readme


def test_gpu_check_plan_fits_eight_minutes_and_sixty_gigabytes(monkeypatch, capsys):
    sys.path.insert(0, str(REPO / "benchmarks"))
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", "--dry-run"])
    try:
        import gpu_check

        gpu_check.main()
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    out = capsys.readouterr().out
    budget = re.search(r"budgets: (\d+) s of (\d+) s", out)
    assert int(budget.group(1)) <= int(budget.group(2)) == 480
    disk = float(re.search(r"disk: ([\d.]+) GB", out).group(1))
    assert 40 < disk < 60  # LLaVA-1.5-7B (14 GB), HuatuoGPT-Vision-7B twice (2 x 16 GB)


# --- end to end under the launchers (slow; CI) ----------------------------------------


def final_files(root: Path) -> dict[str, bytes]:
    """Every final parquet file of a profile's results, by relative path."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*.parquet"))
        if "parts" not in p.parts
    }


def jobs_env(results_root: Path) -> dict:
    environ = {**os.environ, "VGUTILS_RESULTS": str(results_root), "OMP_NUM_THREADS": "1"}
    environ["PYTHONPATH"] = str(REPO)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "VGUTILS_CONTEXT"):
        environ.pop(name, None)
    return environ


@pytest.fixture(scope="module")
def smoke_one_process(tmp_path_factory):
    root = tmp_path_factory.mktemp("smoke-one")
    command = [sys.executable, "-m", "vgutils", "jobs", "smoke"]
    done = subprocess.run(command, env=jobs_env(root), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return final_files(root)


@pytest.mark.slow
def test_torchrun_two_processes_jobs_smoke_equals_one_process(tmp_path, smoke_one_process):
    torchrun = Path(sys.executable).parent / "torchrun"
    command = [str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "vgutils"]
    done = subprocess.run(
        [*command, "jobs", "smoke"], env=jobs_env(tmp_path), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "rank 1 of 2 (torchrun / accelerate launch" in done.stdout
    assert final_files(tmp_path) == smoke_one_process


@pytest.mark.slow
def test_three_slurm_array_tasks_jobs_smoke_equal_one_process(tmp_path, smoke_one_process):
    tasks = []
    for task in range(3):
        environ = jobs_env(tmp_path) | {
            "SLURM_ARRAY_TASK_ID": str(task),
            "SLURM_ARRAY_TASK_COUNT": "3",
            "SLURM_ARRAY_TASK_MIN": "0",
            "SLURM_ARRAY_TASK_MAX": "2",
        }
        command = [sys.executable, "-m", "vgutils", "jobs", "smoke"]
        tasks.append(
            subprocess.Popen(command, env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        )
    for task in tasks:
        _, err = task.communicate(timeout=1800)
        assert task.returncode == 0, err.decode()[-2000:]
    assert final_files(tmp_path) == smoke_one_process


@pytest.mark.slow
def test_a_rank_sigkilled_mid_run_then_rerun_alone_gives_the_same_merge(tmp_path):
    command = [sys.executable, "-m", "vgutils", "extract", *BASE]
    environ = jobs_env(tmp_path)
    one = subprocess.run([*command, "--out", str(tmp_path / "one")], env=environ)
    assert one.returncode == 0
    out = str(tmp_path / "ranks")
    rank0 = subprocess.run([*command, "--out", out, "--shard", "0/2"], env=environ)
    killed = subprocess.run(
        [*command, "--out", out, "--shard", "1/2"], env={**environ, KILL_AFTER_PARTS: "1"}
    )
    assert rank0.returncode == 0 and killed.returncode == -signal.SIGKILL
    assert run_state(out).status == "running"
    rerun = subprocess.run([*command, "--out", out, "--shard", "1/2"], env=environ)
    assert rerun.returncode == 0
    assert_same_files(Path(out), tmp_path / "one")


@pytest.mark.slow
def test_gpu_check_runs_its_path_on_the_cpu_with_tiny_models(tmp_path):
    command = [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--tiny"]
    command += ["--device", "cpu", "--skip-bench", "--limit", "6", "--reference", "3"]
    command += ["--out", str(tmp_path / "gpu-check"), "--budget", "1800"]
    done = subprocess.run(command, env=jobs_env(tmp_path), capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("same rows (max diff") == 2
    speed = json.loads((tmp_path / "gpu-check" / "speed.json").read_text())
    assert set(speed["qps"]) == {"tiny:llava", "tiny:llava_qwen2"}
    assert "| 32 |" in done.stdout  # the projection
    shutil.rmtree(tmp_path / "gpu-check")

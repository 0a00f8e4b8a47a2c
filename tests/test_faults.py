"""Issue #17: results that survive crashes, races and misuse.

Each numbered case of the issue is a test here: (1) a crash at every write step of
``finalize``, (2) two writers on one folder, (3) ``merge`` misuse, (4) a stale model or a
tampered image, (6) a FIFO given as an image. The store-level tests use synthetic frames
(no model, fast); the end-to-end ones use the tiny models; the SIGKILL trials at every
step and the concurrent-writer trials are ``slow`` (run by ``.ci/run``).
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

from vgutils import results
from vgutils.__main__ import main
from vgutils.context import KILL_AT_STEP
from vgutils.errors import DataError, UsageError
from vgutils.results import (
    RunLocked,
    RunMismatch,
    RunStore,
    load_metrics,
    merge_runs,
)

OPTIONS = {"model": "m", "dataset": "d", "shard": None}
IDENTITY = {"model_folder_sha256": "a" * 64, "dataset_sha256": "b" * 64}


class Crash(BaseException):
    """A simulated crash: nothing after it runs (not even ``except Exception``)."""


def crash_at_step(k: int, run) -> None:
    """Run ``run()`` with a crash injected right after write step ``k`` of finalize."""

    def crash(step, what):
        if step == k:
            raise Crash(what)

    results.fault_hook = crash
    try:
        with pytest.raises(Crash):
            run()
    finally:
        results.fault_hook = None


def group_frames(group: int, samples: int = 2, layers: int = 3, heads: int = 2) -> dict:
    """The frames of one group of samples, deterministic."""
    ids = [f"s{group}-{i}" for i in range(samples)]
    order = np.repeat(np.arange(samples) + group * samples, layers)
    metrics = pd.DataFrame(
        {
            "sample_id": np.repeat(ids, layers),
            "order": order,
            "layer": np.tile(np.arange(layers), samples),
            "kl": np.arange(samples * layers) + group * 0.5,
        }
    )
    per_head = metrics.loc[metrics.index.repeat(heads)].reset_index(drop=True)
    per_head["head"] = np.tile(np.arange(heads), samples * layers)
    return {"metrics": metrics, "head_metrics": per_head}


def write_run(folder, groups=range(3), options=OPTIONS, identity=IDENTITY, finalize=True):
    """A run made through the store API, as a runner makes it."""
    with RunStore(folder) as store:
        run = store.open(options, identity, {}, images={"a.png": "c" * 64})
        done = store.done_ids()
        for group in groups:
            frames = group_frames(group)
            if set(frames["metrics"]["sample_id"]) & done:
                continue
            store.add_part(frames)
        if finalize:
            store.finalize(run, {"samples": 2 * len(groups), "done": 2 * len(groups)})
    return folder


def frames_of(folder):
    return {kind: load_metrics(folder, kind) for kind in ("metrics", "head_metrics")}


def assert_same_frames(folder, reference):
    for kind, frame in frames_of(folder).items():
        pd.testing.assert_frame_equal(frame, reference[kind])


# --- 1. a crash inside finalize -----------------------------------------------------


def finalize_steps(tmp_path) -> list[str]:
    seen = []
    results.fault_hook = lambda k, what: seen.append(what)
    try:
        write_run(tmp_path / "count")
    finally:
        results.fault_hook = None
    return seen


def test_crash_at_every_finalize_step_then_rerun_equals_uninterrupted(tmp_path):
    reference = frames_of(write_run(tmp_path / "whole"))
    steps = finalize_steps(tmp_path)
    assert len(steps) >= 2 + 1 + 6 + 1  # two final files, the commit, six parts, parts/
    for k in range(1, len(steps) + 1):
        folder = tmp_path / f"crash-{k}"
        crash_at_step(k, lambda folder=folder: write_run(folder))
        write_run(folder)  # the rerun
        assert_same_frames(folder, reference)
        run = json.loads((folder / "run.json").read_text())
        assert run["status"] == "complete" and run["counts"]["rows"]["metrics"] == 18
        assert not (folder / "parts").exists(), f"step {k}: parts left behind"


def test_a_crash_while_running_resumes_without_duplicates(tmp_path):
    reference = frames_of(write_run(tmp_path / "whole"))
    folder = tmp_path / "broken"
    write_run(folder, groups=range(2), finalize=False)
    # a crash between the two files of group 2: its head part exists, its main part not
    (folder / "parts" / "head_metrics-00002.parquet").write_bytes(b"half")
    write_run(folder)
    assert_same_frames(folder, reference)


def test_load_metrics_checks_rows_against_run_json(tmp_path):
    folder = write_run(tmp_path / "run")
    frame = pd.read_parquet(folder / "metrics.parquet")
    pd.concat([frame, frame]).to_parquet(folder / "metrics.parquet")
    with pytest.raises(DataError, match=r"metrics.parquet: 36 rows, but .*run.json records 18"):
        load_metrics(folder)
    with pytest.raises(DataError, match="records 18"):  # a rerun does not call it complete
        write_run(folder)


def test_corrupt_files_are_named_in_one_line(tmp_path):
    folder = write_run(tmp_path / "run", finalize=False)
    (folder / "parts" / "metrics-00001.parquet").write_bytes(b"PAR1 torn")
    with pytest.raises(DataError, match=r"metrics-00001.parquet: unreadable parquet") as err:
        write_run(folder)
    assert "\n" not in str(err.value)
    (folder / "run.json").write_text('{"options": {')
    with pytest.raises(DataError, match=r"run.json: not valid JSON"):
        load_metrics(folder)


def test_torn_errors_line_is_ignored_and_fenced(tmp_path):
    with RunStore(tmp_path / "run") as store:
        store.open(OPTIONS, IDENTITY, {})
        store.add_error("a", "x:1", "bad")
        with open(store.folder / "errors.jsonl", "a") as handle:
            handle.write('{"sample_id": "b", "sou')  # killed mid-append
        assert [e["sample_id"] for e in store.errors()] == ["a"]
        store.add_error("c", "x:3", "bad")
        assert [e["sample_id"] for e in store.errors()] == ["a", "c"]
        (store.folder / "errors.jsonl").write_text('{"sample_id": "a"}\nnot json\n{}\n')
        with pytest.raises(DataError, match=r"errors.jsonl:2: not an error record"):
            store.errors()


# --- 2. two writers on one folder ----------------------------------------------------


def test_second_writer_is_refused_naming_the_holder(tmp_path):
    first = RunStore(tmp_path / "run")
    first.open(OPTIONS, IDENTITY, {})
    with pytest.raises(RunLocked) as err:
        RunStore(tmp_path / "run").open(OPTIONS, IDENTITY, {})
    message = str(err.value)
    assert f"pid {os.getpid()} on host {socket.gethostname()}" in message
    assert "\n" not in message
    first.close()
    with RunStore(tmp_path / "run") as second:
        second.open(OPTIONS, IDENTITY, {})
        assert second.stale_lock is None  # released cleanly


def test_lock_of_a_killed_writer_is_stale_and_taken_over(tmp_path):
    folder = tmp_path / "run"
    script = textwrap.dedent(
        f"""
        import os, signal
        from vgutils.results import RunStore
        store = RunStore({str(folder)!r})
        store.open({OPTIONS!r}, {IDENTITY!r}, {{}})
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert killed.returncode == -signal.SIGKILL
    dead_pid = (folder / ".lock").read_text().split()[0]
    with RunStore(folder) as store:
        store.open(OPTIONS, IDENTITY, {})
        assert store.stale_lock.split()[0] == dead_pid


# --- 3. merge misuse -----------------------------------------------------------------


def shard_run(folder, index, count, groups):
    options = {**OPTIONS, "shard": [index, count]}
    return write_run(folder, groups=groups, options=options)


@pytest.fixture
def shards(tmp_path):
    return [
        shard_run(tmp_path / "s" / "shard-0-of-2", 0, 2, [0, 2]),
        shard_run(tmp_path / "s" / "shard-1-of-2", 1, 2, [1]),
        shard_run(tmp_path / "t" / "shard-0-of-3", 0, 3, [0]),
    ]


def merge_cli(capsys, *args) -> tuple[int, str]:
    code = main(["merge", *map(str, args)])
    return code, capsys.readouterr().err.strip()


def test_merge_complete_set_equals_the_whole_run(tmp_path, shards):
    reference = frames_of(write_run(tmp_path / "whole"))
    out = merge_runs(shards[:2], tmp_path / "merged")
    assert_same_frames(out, reference)
    assert json.loads((out / "run.json").read_text())["counts"]["done"] == 6
    merge_runs(shards[1::-1], tmp_path / "merged")  # the identical merge again: idempotent
    assert_same_frames(out, reference)
    assert main(["merge", str(tmp_path / "s")]) == 0  # the default: into the parent
    assert_same_frames(tmp_path / "s", reference)


@pytest.mark.parametrize(
    ("pick", "message"),
    [
        ([0, 0], "is given twice"),
        ([0, 2], "different shard counts"),
        ([0], r"incomplete shard set: shard\(s\) 1/2 missing"),
    ],
)
def test_merge_refuses_a_bad_shard_set(tmp_path, shards, capsys, pick, message):
    code, err = merge_cli(capsys, *(shards[i] for i in pick), "--out", tmp_path / "m")
    assert code == 2 and err.startswith("error: ") and "\n" not in err
    assert __import__("re").search(message, err), err
    assert not (tmp_path / "m" / "run.json").exists()


def test_merge_refuses_an_incomplete_or_foreign_shard(tmp_path, shards, capsys):
    other = shard_run(tmp_path / "o" / "shard-1-of-2", 1, 2, [1])
    run = json.loads((other / "run.json").read_text())
    run["identity"]["model_folder_sha256"] = "f" * 64
    (other / "run.json").write_text(json.dumps(run))
    code, err = merge_cli(capsys, shards[0], other, "--out", tmp_path / "m")
    assert code == 2 and "model_folder_sha256" in err
    unfinished = tmp_path / "u" / "shard-1-of-2"
    write_run(unfinished, groups=[1], options={**OPTIONS, "shard": [1, 2]}, finalize=False)
    code, err = merge_cli(capsys, shards[0], unfinished, "--out", tmp_path / "m")
    assert code == 1 and "not a complete run" in err


def test_merge_refuses_an_existing_run_as_destination(tmp_path, shards, capsys):
    existing = write_run(tmp_path / "existing", groups=[5])
    before = pd.read_parquet(existing / "metrics.parquet")
    code, err = merge_cli(capsys, *shards[:2], "--out", existing)
    assert code == 2 and "already holds a run" in err and "\n" not in err
    pd.testing.assert_frame_equal(pd.read_parquet(existing / "metrics.parquet"), before)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    code, err = merge_cli(capsys, *shards[:2], "--out", tmp_path / "other")
    assert code == 2 and "not empty (notes.txt)" in err


def test_a_merged_shard_set_is_never_partly_complete(tmp_path, shards):
    # shard 0 alone is refused, so no folder claims "complete" with half the samples
    with pytest.raises(UsageError, match="incomplete shard set"):
        merge_runs(shards[:1], tmp_path / "half")
    assert not (tmp_path / "half").exists() or not (tmp_path / "half" / "run.json").exists()


# --- 4. stale inputs: identity on every resume ---------------------------------------


@pytest.mark.parametrize("status", ["complete", "running"])
def test_resume_refuses_another_model_or_images(tmp_path, status):
    folder = write_run(tmp_path / "run", finalize=status == "complete")
    changed = {**IDENTITY, "model_folder_sha256": "9" * 64}
    with pytest.raises(
        RunMismatch,
        match=f"{status if status == 'complete' else 'unfinished'}"
        r" run .*model_folder_sha256: folder has 'aaaa",
    ):
        RunStore(folder).open(OPTIONS, changed, {})
    with pytest.raises(RunMismatch, match=r"images: 1 changed, added or removed \(a.png\)"):
        RunStore(folder).open(OPTIONS, IDENTITY, {}, images={"a.png": "d" * 64})


def test_retry_errors_reopens_a_complete_run(tmp_path):
    reference = frames_of(write_run(tmp_path / "whole"))
    folder = tmp_path / "run"
    with RunStore(folder) as store:
        run = store.open(OPTIONS, IDENTITY, {})
        for group in (0, 1):
            store.add_part(group_frames(group))
        store.add_error("s2-0", "x:5", "image unreadable")
        store.add_error("s2-1", "x:6", "image unreadable")
        store.finalize(run, {})
    with RunStore(folder) as store:
        assert store.open(OPTIONS, IDENTITY, {})["status"] == "complete"
    with RunStore(folder) as store:  # the image is fixed: retry the skipped samples
        run = store.open(OPTIONS, IDENTITY, {}, retry_errors=True)
        assert run["status"] == "running" and store.errors() == []
        assert store.done_ids() == {f"s{g}-{i}" for g in (0, 1) for i in (0, 1)}
        store.add_part(group_frames(2))
        store.finalize(run, {})
    assert_same_frames(folder, reference)


# --- end to end, with a tiny model ---------------------------------------------------

MODEL = "tiny:llava"
BASE = ["--model", MODEL, "--dataset", "sample-natural", "--limit", "4", "--heads"]


def extract_cli(capsys, *args) -> tuple[int, str, str]:
    code = main(["extract", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip()


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if a command loads a model."""
    import vgutils.models.loading as loading

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(loading, "load_model", refuse)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run every faulty one must equal."""
    out = tmp_path_factory.mktemp("reference") / "run"
    assert main(["extract", *BASE, "--out", str(out)]) == 0
    return out, frames_of(out)


def count_extract_steps(tmp_path) -> int:
    steps: list[str] = []
    results.fault_hook = lambda k, what: steps.append(what)
    try:
        assert main(["extract", *BASE, "--out", str(tmp_path / "count")]) == 0
    finally:
        results.fault_hook = None
    assert steps[:3] == [
        "wrote head_metrics.parquet",
        "wrote metrics.parquet",
        "committed run.json",
    ]
    return len(steps)


@pytest.mark.slow
def test_extract_sigkilled_at_every_finalize_step_reruns_to_the_same_frames(tmp_path, reference):
    for k in range(1, count_extract_steps(tmp_path) + 1):
        out = tmp_path / f"run-{k}"
        command = [sys.executable, "-m", "vgutils", "extract", *BASE, "--out", str(out)]
        env = {**os.environ, KILL_AT_STEP: str(k)}
        killed = subprocess.run(command, env=env, capture_output=True)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        assert (out / "head_metrics.parquet").exists()  # written by step 1
        rerun = subprocess.run(command, capture_output=True, text=True)
        assert rerun.returncode == 0, rerun.stderr
        assert_same_frames(out, reference[1])
        assert not (out / "parts").exists()


@pytest.mark.parametrize("every", [pytest.param(True, marks=pytest.mark.slow), False])
def test_extract_crash_in_finalize_then_rerun_in_process(tmp_path, reference, capsys, every):
    # the case 1 (final files written, parts not yet removed) is step 3; with
    # `every`, a crash after each write step
    steps = range(1, count_extract_steps(tmp_path) + 1) if every else [2, 3]
    for k in steps:
        out = tmp_path / f"crash-{k}"
        crash_at_step(k, lambda out=out: main(["extract", *BASE, "--out", str(out)]))
        assert main(["extract", *BASE, "--out", str(out)]) == 0
        assert_same_frames(out, reference[1])
    capsys.readouterr()


def crashed_in_finalize(out) -> None:
    """An extraction that crashed before its commit: every part written, still running."""

    def crash(step, what):
        raise Crash(what)

    results.fault_hook = crash
    try:
        with pytest.raises(Crash):
            main(["extract", *BASE, "--out", str(out)])
    finally:
        results.fault_hook = None


def test_resume_that_only_finalizes_loads_no_model(tmp_path, reference, capsys, monkeypatch):
    out = tmp_path / "run"
    crashed_in_finalize(out)
    import vgutils.models.loading as loading

    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    assert main(["extract", *BASE, "--out", str(out)]) == 0
    assert_same_frames(out, reference[1])


def test_corrupt_part_is_named_before_the_model_loads(tmp_path, reference, capsys, monkeypatch):
    out = tmp_path / "run"
    crashed_in_finalize(out)
    capsys.readouterr()
    import vgutils.models.loading as loading

    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    part = sorted((out / "parts").glob("metrics-*.parquet"))[0]
    part.write_bytes(b"PAR1 torn")
    code, _, err = extract_cli(capsys, *BASE, "--out", out)
    assert code == 1 and f"{part.name}: unreadable parquet file" in err and "\n" not in err


def test_extract_refused_while_another_process_writes_the_folder(tmp_path, capsys):
    out = tmp_path / "run"
    holder = RunStore(out)
    holder.lock()  # another writer (a second open file description: flock conflicts)
    try:
        code, _, err = extract_cli(capsys, *BASE, "--out", out)
    finally:
        holder.close()
    assert code == 1 and err.count("\n") == 0
    assert f"is being written by pid {os.getpid()} on host {socket.gethostname()}" in err
    assert not (out / "run.json").exists()


@pytest.mark.slow
def test_two_concurrent_extracts_never_duplicate_rows(tmp_path, reference):
    for trial in range(4):
        out = tmp_path / f"run-{trial}"
        command = [sys.executable, "-m", "vgutils", "extract", *BASE, "--out", str(out)]
        writers = [
            subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)
        ]
        outcomes = [(w.wait(timeout=600), w.stderr.read()) for w in writers]
        for code, err in outcomes:
            assert code == 0 or (code == 1 and "is being written by pid" in err), err
        assert any(code == 0 for code, _ in outcomes)
        assert json.loads((out / "run.json").read_text())["status"] == "complete"
        assert_same_frames(out, reference[1])


def copy_model(tmp_path):
    from vgutils.models.sources import resolve

    folder = tmp_path / "model"
    shutil.copytree(resolve(MODEL), folder)
    return folder


def test_complete_run_refuses_a_changed_model(tmp_path, capsys, monkeypatch):
    model = copy_model(tmp_path)
    args = [
        "--model",
        model,
        "--dataset",
        "sample-natural",
        "--limit",
        "2",
        "--out",
        tmp_path / "r",
    ]
    assert extract_cli(capsys, *args)[0] == 0
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "retrained": True}))
    import vgutils.models.loading as loading

    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    code, out, err = extract_cli(capsys, *args)
    assert code == 2 and "nothing recomputed" not in out
    assert "holds a complete run" in err and "model_folder_sha256" in err and "\n" not in err


def image_dataset(folder, images=("a.png", "b.png")):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for index, name in enumerate(images):
        Image.new("RGB", (64, 64), (40 * index, 90, 200)).save(folder / name)
        rows.append({"image": name, "question": "Is there a dot?", "bbox": [4, 4, 60, 60]})
    jsonl = folder / "d.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return jsonl


def test_tampered_image_refuses_the_resume(tmp_path, capsys):
    from PIL import Image

    jsonl = image_dataset(tmp_path / "data")
    args = ["--model", MODEL, "--dataset", jsonl, "--bbox-format", "xyxy", "--out", tmp_path / "r"]
    assert extract_cli(capsys, *args)[0] == 0
    Image.new("RGB", (64, 64), "red").save(tmp_path / "data" / "b.png")
    code, _, err = extract_cli(capsys, *args)
    assert code == 2 and "images: 1 changed, added or removed (b.png)" in err


def test_pinned_image_edited_is_a_bad_row(tmp_path, capsys, monkeypatch):
    from vgutils.data import resolve_dataset

    source = resolve_dataset("sample-natural").root
    root = tmp_path / "data"
    shutil.copytree(source, root)
    monkeypatch.setenv("VGUTILS_DATA", str(root))
    image = root / "samples" / "chelsea.png"
    image.write_bytes(image.read_bytes()[:-1] + b"\0")
    assert main(["validate", "sample-natural"]) == 1
    out = capsys.readouterr().out
    assert "chelsea.png does not match its pinned sha256 in the registry" in out


def test_retry_errors_recomputes_a_fixed_image(tmp_path, capsys):
    jsonl = image_dataset(tmp_path / "data")
    (tmp_path / "data" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    args = ["--model", MODEL, "--dataset", jsonl, "--bbox-format", "xyxy", "--out", tmp_path / "r"]
    assert extract_cli(capsys, *args)[0] == 0
    assert load_metrics(tmp_path / "r")["sample_id"].unique().tolist() == ["d:1"]
    image_dataset(tmp_path / "data")  # the image is fixed
    code, out, _ = extract_cli(capsys, *args, "--retry-errors")
    assert code == 0 and "1 computed now" in out and "0 skipped" in out
    assert load_metrics(tmp_path / "r")["sample_id"].unique().tolist() == ["d:1", "d:2"]


def test_empty_jsonl_is_an_error_not_a_complete_run(tmp_path, capsys, no_model_load):
    (tmp_path / "empty.jsonl").write_text("")
    args = ["--model", MODEL, "--dataset", tmp_path / "empty.jsonl", "--bbox-format", "xyxy"]
    code, out, err = extract_cli(capsys, *args, "--out", tmp_path / "r")
    assert code == 1 and "empty.jsonl: no usable rows" in err and "complete" not in out


# --- 6. non-regular files and checks before the model loads ---------------------------


def test_fifo_as_image_is_refused_without_blocking(tmp_path):
    jsonl = image_dataset(tmp_path / "data", images=("a.png",))
    os.mkfifo(tmp_path / "data" / "pipe.png")
    with open(jsonl, "a") as handle:
        handle.write(json.dumps({"image": "pipe.png", "question": "Q?", "bbox": [1, 1, 9, 9]}))
    command = [sys.executable, "-m", "vgutils", "validate", str(jsonl), "--bbox-format", "xyxy"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "d.jsonl:2: image:" in done.stdout and "pipe.png is a FIFO" in done.stdout


def test_fifo_as_dataset_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "rows.jsonl")
    command = [sys.executable, "-m", "vgutils", "validate", str(tmp_path / "rows.jsonl")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and done.stderr.count("\n") == 1
    assert "rows.jsonl" in done.stderr and "FIFO" in done.stderr


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--batch-size", "0"], 2, "--batch-size 0: must be at least 1"),
        (["--limit", "-1"], 2, "--limit -1: must be at least 1"),
        (["--device", "gpu9"], 2, "--device 'gpu9': unknown; valid: "),
        (["--dtype", "float99"], 2, "float16, float32; did you mean 'float32'?"),
        (["--model", "tiny:teahc"], 2, "tiny:teach, tiny:teach-smoke"),
        (["--dataset", "sample-medcal"], 2, "did you mean 'sample-medical'?"),
        (["--shard", "x/2"], 2, "--shard x/2: expected I/N"),
    ],
)
def test_extract_bad_values_fail_in_one_line_before_the_model(
    tmp_path, capsys, no_model_load, args, code, message
):
    given = dict(zip(BASE[:6:2], BASE[1:6:2], strict=True))
    given.update(zip(args[::2], args[1::2], strict=True))
    argv = [x for pair in given.items() for x in pair] + ["--out", tmp_path / "r"]
    got, _, err = extract_cli(capsys, *argv)
    assert got == code and err.startswith("error: ") and "\n" not in err
    assert message in err, err


def test_tiny_typo_lists_every_tiny_model(tmp_path, capsys, no_model_load):
    _, _, err = extract_cli(capsys, *BASE[2:], "--model", "tiny:teahc", "--out", tmp_path / "r")
    from vgutils.models.sources import tiny_names

    assert all(name in err for name in tiny_names()) and "did you mean 'tiny:teach'?" in err


def test_read_only_out_fails_before_the_model(tmp_path, capsys, no_model_load):
    (tmp_path / "file").write_text("not a folder")
    code, _, err = extract_cli(capsys, *BASE, "--out", tmp_path / "file" / "run")
    assert code == 1 and "cannot create the run folder" in err and "\n" not in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--percentile", "150"], "--percentile 150: must be within 0..100"),
        (["--top-k", "0"], "--top-k 0: must be at least 1"),
    ],
)
def test_vqa_bad_values_fail_before_the_model(tmp_path, capsys, no_model_load, args, message):
    argv = ["vqa", "--model", MODEL, "--dataset", "sample-natural", "--out", str(tmp_path)]
    assert main([*argv, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err

"""The command line's failures are one ``error: ...`` line naming the file or the bad
value (issue #13 item 6, issue #17's weak cases): exit 1 for data, 2 for usage, a
traceback only with ``--debug``."""

import json
import shutil

import pytest
from PIL import Image

from vgutils.__main__ import main
from vgutils.data import manifest


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line(err: str) -> str:
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err


def dataset(folder, text: bytes) -> str:
    folder.mkdir(exist_ok=True)
    Image.new("RGB", (32, 32)).save(folder / "a.png")
    (folder / "d.jsonl").write_bytes(text)
    return str(folder / "d.jsonl")


ROW = {"image": "a.png", "question": "Où est la tâche?", "bbox": [1, 1, 30, 30]}


def test_latin1_jsonl_names_file_and_line(tmp_path, capsys):
    good = json.dumps({**ROW, "question": "Q?"}).encode() + b"\n"
    jsonl = dataset(tmp_path, good + json.dumps(ROW, ensure_ascii=False).encode("latin-1"))
    code, _, err = run(capsys, "validate", jsonl, "--bbox-format", "xyxy")
    assert code == 1 and "d.jsonl:2: not UTF-8" in one_line(err)


def test_bom_jsonl_is_read_with_a_warning(tmp_path, capsys):
    jsonl = dataset(tmp_path, b"\xef\xbb\xbf" + json.dumps(ROW).encode() + b"\n")
    code, out, _ = run(capsys, "validate", jsonl, "--bbox-format", "xyxy")
    assert code == 0 and "d.jsonl:1: encoding: warning: byte-order mark ignored" in out


def test_malformed_registry_names_file_and_line(tmp_path, capsys, monkeypatch):
    registry = tmp_path / "registry.txt"
    registry.write_text("# header\nsamples/a.png 1234 http://x\n")
    monkeypatch.setattr(manifest, "REGISTRY_FILE", registry)
    code, _, err = run(capsys, "data", "verify", "--data-root", tmp_path)
    assert code == 1 and "registry.txt:2: '1234' is neither a sha256" in one_line(err)


def test_data_verify_fails_when_files_are_missing(tmp_path, capsys):
    code, out, err = run(capsys, "data", "verify", "--data-root", tmp_path / "nothing")
    assert code == 1 and "missing" in out and "missing" in one_line(err)


def test_data_pin_unknown_name_leaves_the_registry_untouched(tmp_path, capsys, monkeypatch):
    registry = tmp_path / "registry.txt"
    shutil.copy(manifest.REGISTRY_FILE, registry)
    before = registry.read_bytes()
    monkeypatch.setattr(manifest, "REGISTRY_FILE", registry)
    code, _, err = run(capsys, "data", "pin", "samples/chelsae.png", "--data-root", tmp_path)
    assert code == 2 and "did you mean 'samples/chelsea.png'?" in one_line(err)
    assert registry.read_bytes() == before


def test_torn_run_json_and_corrupt_results_are_named(tmp_path, capsys):
    from vgutils.results import RunStore

    folder = tmp_path / "run"
    with RunStore(folder) as store:
        record = store.open({"shard": [0, 2]}, {}, {})
        store.finalize(record, {})
    (folder / "run.json").write_text('{"options": {"model"')
    code, _, err = run(capsys, "merge", folder, "--out", tmp_path / "m")
    assert code == 1 and "run.json: not valid JSON" in one_line(err)


def test_corrupt_final_parquet_is_not_called_complete(tmp_path, capsys):
    import pandas as pd

    from vgutils.results import RunStore

    folder = tmp_path / "s" / "shard-0-of-1"
    with RunStore(folder) as store:
        record = store.open({"shard": [0, 1]}, {}, {})
        store.add_part({"metrics": pd.DataFrame({"sample_id": ["a"], "order": [0]})})
        store.finalize(record, {})
    (folder / "metrics.parquet").write_bytes(b"PAR1 garbage")
    code, _, err = run(capsys, "merge", tmp_path / "s")
    assert code == 1 and "metrics.parquet: unreadable parquet file" in one_line(err)


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(Exception, match="dataset file not found"):
        main(["--debug", "validate", str(tmp_path / "missing.jsonl")])


def test_missing_dataset_file_is_one_line(tmp_path, capsys):
    code, _, err = run(capsys, "validate", tmp_path / "missing.jsonl")
    assert code == 1 and "missing.jsonl: dataset file not found" in one_line(err)


def test_bogus_profile_fails_before_writing_figures(tmp_path, monkeypatch, capsys):
    from vgutils import jobs, paths
    from vgutils.errors import UsageError

    monkeypatch.setenv("VGUTILS_FIGURES", str(tmp_path / "figures"))
    with pytest.raises(UsageError, match=r"profile 'bogus'.*valid: default, paper, smoke"):
        jobs.load_profile("bogus")
    with pytest.raises(UsageError):
        paths.figures_dir("bogus")
    assert not (tmp_path / "figures").exists()
    code, _, err = run(capsys, "jobs", "smok")
    assert code == 2 and "did you mean 'smoke'?" in one_line(err)


def test_mistyped_subcommand_says_the_closest_one(capsys):
    """Issue #29: argparse's one line, then the closest subcommand (if one is close)."""
    code, _, err = run(capsys, "extrct", "--model", "m")
    assert code == 2
    assert one_line(err).startswith(
        "error: python -m vgutils: argument command: invalid choice: 'extrct' (choose from "
    )
    assert err.endswith("'numbers'); did you mean 'extract'?\n")
    code, _, err = run(capsys, "teach", "trian")
    assert code == 2 and one_line(err).startswith("error: python -m vgutils teach: ")
    assert err.endswith("'evaluate'); did you mean 'train'?\n")
    code, _, err = run(capsys, "zzzz")
    assert code == 2 and "did you mean" not in one_line(err)


def test_teach_train_passes_the_recipe_changes(capsys, monkeypatch, tmp_path):
    """``teach train`` options change only their recipe fields."""
    from dataclasses import replace

    from vgutils.teach import train

    seen = []
    monkeypatch.setattr(
        train, "train_teaching_model", lambda out, recipe, device: seen.append(recipe)
    )
    argv = ["--out", tmp_path, "--grounding-loss-weight", 0, "--medical-share", 0.5, "--seed", 3]
    assert run(capsys, "teach", "train", *argv)[0] == 0
    expected = replace(train.Recipe(), grounding_loss_weight=0.0, medical_share=0.5, seed=3)
    assert seen == [expected]


def test_vqa_takes_the_revision_and_remote_code(capsys, monkeypatch, tmp_path):
    """``vqa`` (free text and ``--benchmark``) passes ``--revision`` and
    ``--trust-remote-code`` into the run's options, like ``extract``."""
    import pandas as pd

    import vgutils.mc_eval
    import vgutils.vqa

    seen = []

    def fake_run(options, out, **kwargs):
        seen.append(options)
        return pd.DataFrame(), None, 0.0  # as a rank whose share is done

    monkeypatch.setattr(vgutils.vqa, "run_vqa", fake_run)
    monkeypatch.setattr(vgutils.mc_eval, "run_mc", fake_run)
    commit = "0123456789abcdef0123456789abcdef01234567"
    argv = ["vqa", "--model", "m", "--out", tmp_path, "--revision", commit, "--trust-remote-code"]
    assert run(capsys, *argv, "--dataset", "d.jsonl")[0] == 0
    assert run(capsys, *argv, "--benchmark", "teach-mc")[0] == 0
    assert [type(o).__name__ for o in seen] == ["VQAOptions", "MCOptions"]
    assert {(o.revision, o.trust_remote_code) for o in seen} == {(commit, True)}
    assert run(capsys, *argv[:-3], "--dataset", "d.jsonl")[0] == 0
    assert (seen[-1].revision, seen[-1].trust_remote_code) == (None, False)

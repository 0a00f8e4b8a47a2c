"""VQA scoring and the resumable vqa command."""

import json

import pandas as pd
import pytest

from vgutils.__main__ import main
from vgutils.vqa import accuracy_table, normalize_answer, score_answer


@pytest.mark.parametrize(
    ("prediction", "truth", "expected"),
    [
        ("Yes.", "yes", {"closed": True, "exact": 1.0, "recall": 1.0}),
        ("yes, there is", "Yes", {"closed": True, "exact": 1.0, "recall": 1.0}),
        ("no", "yes", {"closed": True, "exact": 0.0, "recall": 0.0}),
        ("The left lung", "left lung", {"closed": False, "exact": 1.0, "recall": 1.0}),
        ("lung", "left lung", {"closed": False, "exact": 0.0, "recall": 0.5}),
        ("", "red", {"closed": False, "exact": 0.0, "recall": 0.0}),
    ],
)
def test_score_answer(prediction, truth, expected):
    assert score_answer(prediction, truth) == expected


def test_normalize_answer():
    assert normalize_answer("  The  Liver, an organ! ") == "liver organ"


def test_accuracy_table():
    answers = pd.DataFrame(
        {
            "closed": [True, True, False],
            "baseline_exact": [1.0, 0.0, 0.0],
            "baseline_recall": [1.0, 0.0, 0.5],
            "refined_exact": [1.0, 1.0, 0.0],
            "refined_recall": [1.0, 1.0, 1.0],
        }
    )
    table = accuracy_table(answers).set_index("questions")
    assert table.loc["closed (yes/no)", "baseline_exact"] == 0.5
    assert table.loc["closed (yes/no)", "refined_exact"] == 1.0
    assert table.loc["open", "refined_recall"] == 1.0 and table.loc["open", "n"] == 1


def test_vqa_cli_refine_and_resume(tmp_path, capsys):
    heads = tmp_path / "heads"
    assert (
        main(
            [
                "extract",
                "--model",
                "tiny:gemma3",
                "--dataset",
                "sample-natural",
                "--out",
                str(heads),
                "--heads",
                "--limit",
                "4",
            ]
        )
        == 0
    )
    args = [
        "vqa",
        "--model",
        "tiny:gemma3",
        "--dataset",
        "sample-natural",
        "--out",
        str(tmp_path / "vqa"),
        "--refine",
        "--heads-from",
        str(heads),
        "--top-k",
        "3",
        "--limit",
        "5",
        "--max-new-tokens",
        "3",
    ]
    assert main(args) == 0
    answers = pd.read_parquet(tmp_path / "vqa" / "answers.parquet")
    assert len(answers) == 5 and {"baseline", "refined", "truth"} <= set(answers.columns)
    accuracy = json.loads((tmp_path / "vqa" / "accuracy.json").read_text())
    assert sum(row["n"] for row in accuracy) == 5
    run = json.loads((tmp_path / "vqa" / "run.json").read_text())
    assert run["status"] == "complete"
    assert main(args) == 0  # complete: nothing recomputed, same file
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "vqa" / "answers.parquet"), answers)
    assert main([*args[:-2], "--max-new-tokens", "5"]) == 2  # other options: refused


# --- the model's revision (pinned like extraction's) ---------------------------------------

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class Loaded(Exception):
    """Raised by the stand-in load_model: the run got as far as loading the model."""


def test_vqa_and_mc_runs_load_and_record_the_pinned_revision(tmp_path, monkeypatch):
    import vgutils.mc_eval
    import vgutils.models.loading
    import vgutils.vqa
    from vgutils.mc_eval import MCOptions, run_mc
    from vgutils.vqa import VQAOptions, run_vqa

    loaded = []

    def load_model(name, **kwargs):
        loaded.append(kwargs)
        raise Loaded

    def model_identity(name, revision=None):  # a Hub model's: the commit it resolves to
        return {"model": name, "model_revision": revision}

    monkeypatch.setattr(vgutils.models.loading, "load_model", load_model)
    monkeypatch.setattr(vgutils.vqa, "model_identity", model_identity)
    monkeypatch.setattr(vgutils.mc_eval, "model_identity", model_identity)
    pinned = {"revision": COMMIT, "trust_remote_code": True}
    with pytest.raises(Loaded):
        run_vqa(VQAOptions("tiny:llava", "sample-natural", limit=1, **pinned), tmp_path / "vqa")
    mc = MCOptions("tiny:llava", "teach-mc", datasets=("teach-medical",), limit=1, **pinned)
    with pytest.raises(Loaded):
        run_mc(mc, tmp_path / "mc", progress=False)
    assert [{k: kwargs[k] for k in pinned} for kwargs in loaded] == [pinned, pinned]
    for folder in ("vqa", "mc"):
        run = json.loads((tmp_path / folder / "run.json").read_text())
        assert run["identity"]["model_revision"] == COMMIT
        assert {k: run["options"][k] for k in pinned} == pinned


@pytest.mark.parametrize("data", [["--dataset", "sample-natural"], ["--benchmark", "teach-mc"]])
def test_remote_code_without_a_pinned_revision_fails_before_any_work(tmp_path, capsys, data):
    args = ["vqa", "--model", "tiny:llava", *data, "--trust-remote-code"]
    assert main([*args, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--trust-remote-code needs --revision" in err and "\n" not in err
    assert not (tmp_path / "r").exists()  # nothing hashed, locked or written
    assert main([*args, "--revision", "main", "--out", str(tmp_path / "r")]) == 2
    assert "a commit hash" in capsys.readouterr().err and not (tmp_path / "r").exists()


def test_a_run_recorded_before_the_revision_option_resumes(tmp_path):
    """A run.json without ``revision`` / ``trust_remote_code`` was made at their defaults:
    it resumes under them, and is refused under a pinned revision."""
    from dataclasses import replace

    from vgutils.results import RunMismatch
    from vgutils.vqa import VQAOptions, run_vqa

    out = tmp_path / "vqa"
    options = VQAOptions("tiny:llava", "sample-natural", limit=1, max_new_tokens=1)
    answers = run_vqa(options, out, progress=False)[0]
    run = json.loads((out / "run.json").read_text())
    del run["options"]["revision"], run["options"]["trust_remote_code"]
    (out / "run.json").write_text(json.dumps(run))
    pd.testing.assert_frame_equal(run_vqa(options, out, progress=False)[0], answers)
    with pytest.raises(RunMismatch, match="revision: folder has None, now 'main'"):
        run_vqa(replace(options, revision="main"), out, progress=False)


def test_the_profiles_revisions_pin_its_vqa_and_mc_runs(monkeypatch):
    import vgutils.figdata
    import vgutils.jobs
    import vgutils.mc_eval
    import vgutils.sensitivity
    from vgutils.figdata import refine_options
    from vgutils.jobs import load_profile
    from vgutils.mc_report import benchmark_options
    from vgutils.sensitivity import prompt_suffix_effect

    settings = {**load_profile("smoke"), "revisions": {"tiny:llava": COMMIT}}
    for module in (vgutils.jobs, vgutils.figdata, vgutils.sensitivity):
        monkeypatch.setattr(module, "load_profile", lambda profile: settings)
    given = {"model": "tiny:llava", "heads": [[0, 1]], "layers": [1]}
    assert refine_options("smoke", given, "sample-natural").revision == COMMIT
    spec = {"benchmark": "teach-mc"}
    assert benchmark_options("smoke", spec, {"model": "tiny:llava"}).revision == COMMIT
    assert benchmark_options("smoke", spec, {"model": "tiny:gemma3"}).revision is None
    asked = []

    def run_mc(options, folder, **kwargs):
        asked.append(options)
        raise Loaded

    monkeypatch.setattr(vgutils.mc_eval, "run_mc", run_mc)
    with pytest.raises(Loaded):
        prompt_suffix_effect("smoke", {**given, "benchmark": "teach-mc"})
    assert asked[0].revision == COMMIT

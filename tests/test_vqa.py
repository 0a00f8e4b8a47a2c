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

"""The multiple-choice protocol: loader, prompt, letter extraction, accuracy."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vgutils.benchmarks import (
    extract_letter,
    is_correct,
    load_mc,
    mc_accuracy,
    mc_prompt_text,
    problem_counts,
)

FIXTURE = Path(__file__).parent / "fixtures" / "mc_benchmark"
OPTIONS = ["effusion", "mass", "nodular opacity", "pneumothorax"]


def test_prompt_text_letters_each_option_on_its_line():
    text = mc_prompt_text("What is shown?", ["yes", "no"])
    assert text == (
        "What is shown?\nA. yes\nB. no\n"
        "Answer with the option's letter from the given choices directly."
    )
    twelve = mc_prompt_text("Q?", [f"o{i}" for i in range(12)])
    assert "\nK. o10\n" in twelve and "o11" not in twelve  # letters stop at K


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("B", "B"),  # the letter alone
        ("(C) effusion", "C"),  # delimited by brackets
        ("The answer is D.", "D"),  # preceded by "is "
        ("A. effusion", "A"),  # an "A" not followed by a space is a letter
        ("A", "A"),  # at the end of the text
        ("b", "b"),  # lower case is read (and scored wrong, case-sensitively)
        ("the answer is c", "c"),
        ("I think B", "I"),  # the *first* standalone letter, whatever it is
        ("E", "E"),  # A-N whatever the number of options
    ],
)
def test_letter_rules(output, expected):
    assert extract_letter(output, OPTIONS) == expected
    assert extract_letter(output, OPTIONS, fallback="reference") == expected


@pytest.mark.parametrize(
    ("output", "intended"),
    [
        ("a mass", "B"),  # a lone article "a" is no letter: the option text decides
        ("A mass", "B"),
        ("CT shows effusion", "A"),  # "CT": C is not standalone
        ("Bilateral effusion", "A"),
        ("mass effect, not effusion", "A"),  # the option occurring *last* wins
        ("effusion or maybe mass", "B"),
        ("nodule", "C"),  # no letter, no option text: the most similar option
    ],
)
def test_no_letter_fallbacks(output, intended):
    assert extract_letter(output, OPTIONS) == intended
    assert extract_letter(output, OPTIONS, fallback="reference") is None


def test_fallback_details():
    # ties in position (two options start at the same place): the earlier option
    assert extract_letter("mass effect", ["mass effect", "mass"]) == "A"
    assert extract_letter("mass effect", ["mass", "mass effect"]) == "A"
    # "Q" is beyond N: no letter; equal similarity (0): the reference's ">=" keeps the last
    assert extract_letter("Q", ["xx", "yy"]) == "B"
    assert extract_letter("Q", ["xx", "yy"], fallback="reference") is None
    # empty option texts never match by text
    assert extract_letter("zzz", ["", "zzz"]) == "B"
    assert extract_letter("nothing", []) is None
    with pytest.raises(ValueError, match="fallback"):
        extract_letter("B", OPTIONS, fallback="other")


def test_comparison_is_case_sensitive_and_question_marks_never_score():
    assert is_correct("B", "B")
    assert not is_correct("b", "B")
    assert not is_correct(None, "B")
    assert not is_correct("A", None)  # answer "?": always wrong


def test_fixture_loads_with_the_right_counts():
    records, problems = load_mc(FIXTURE)
    assert [r.index for r in records] == [0, 1, 2, 6, 10]
    by_index = {r.index: r for r in records}
    assert by_index[0].options == ["yes", "no"] and by_index[0].answer == "A"
    assert by_index[1].options == ["left", "right"] and by_index[1].answer == "B"  # string
    assert by_index[2].answer is None and by_index[2].answer_text == "?"
    multi = by_index[6]
    assert len(multi.images) == 2 and multi.extra_images == 1 and multi.answer == "B"
    assert multi.subset == "Clinical_Medicine" and all(p.is_file() for p in multi.images)
    assert by_index[10].options[1] == "MRI" and by_index[10].answer == "B"
    assert by_index[0].extra_images == 0
    assert problem_counts(problems) == {
        "open question": 1,
        "duplicate test_id": 1,
        "empty options": 2,
        "bad answer": 1,
        "bad options": 1,
        "bad record": 1,
        "bad image": 1,
    }
    lines = {p.index: str(p) for p in problems}
    file = str(FIXTURE / "medical_multimodel_evaluation_data.json")
    assert lines[7] == f"{file}:7: answer: 'maybe' is not among the options"
    assert lines[8].startswith(f"{file}:8: options: not a list")
    assert lines[9] == f"{file}:9: record: expected an object, got str"
    assert lines[11].startswith(f"{file}:11: image: images/missing.png not found")
    assert {p.index for p in problems if p.kind == "dropped"} == {3, 4, 5, 12}
    assert len({r.id for r in records}) == len(records)


def test_selection_by_dataset_and_subset():
    records, problems = load_mc(FIXTURE, ["VQA-RAD_test"])
    assert [r.index for r in records] == [0, 1]
    assert {p.index for p in problems} == {4, 7, 9}  # a non-record cannot be selected away
    records, _ = load_mc(FIXTURE, subsets=["Clinical_Medicine"])
    assert [r.index for r in records] == [6]


def test_a_file_that_is_not_a_list_is_an_error(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"question": "?"}')
    with pytest.raises(ValueError, match="JSON list"):
        load_mc(path)


def test_mc_accuracy_per_dataset_subset_and_micro_total():
    frame = pd.DataFrame(
        {
            "dataset": ["X", "X", "X", "X", "Y"],
            "subset": [None, None, "s1", "s1", None],
            "correct": [1, 0, 1, 1, 0],
        }
    )
    table = mc_accuracy(frame, n_boot=200)
    x = table[(table["level"] == "dataset") & (table["dataset"] == "X")].iloc[0]
    assert x["n"] == 4 and x["correct"] == 3 and x["accuracy"] == 0.75
    assert 0 <= x["ci_low"] <= 0.75 <= x["ci_high"] <= 1
    sub = table[table["level"] == "subset"].iloc[0]
    assert (sub["dataset"], sub["subset"], sub["accuracy"]) == ("X", "s1", 1.0)
    total = table[table["level"] == "total"].iloc[0]
    assert total["n"] == 5 and total["accuracy"] == pytest.approx(0.6)  # micro, not (0.75+0)/2


def test_benchmark_is_registered_for_pin_and_verify():
    from vgutils.data.manifest import load_benchmarks, load_manifest, read_registry

    assert load_manifest()  # the datasets still load beside the benchmarks section
    registry = read_registry()
    for entry in load_benchmarks().values():
        assert entry.file in registry, entry.name
    assert load_benchmarks()["medical-mc"].file.endswith("medical_multimodel_evaluation_data.json")


def test_vqa_benchmark_cli_refine_and_resume(tmp_path):
    import json

    from vgutils.__main__ import main

    heads = tmp_path / "heads"
    calibrate = ["extract", "--model", "tiny:llava", "--dataset", "sample-natural"]
    assert main([*calibrate, "--out", str(heads), "--heads", "--limit", "3"]) == 0
    args = ["vqa", "--model", "tiny:llava", "--benchmark", str(FIXTURE), "--n-boot", "50"]
    refine = ["--refine", "--heads-from", str(heads), "--top-k", "3"]
    out = tmp_path / "mc"
    assert main([*args, "--out", str(out), *refine]) == 0
    answers = pd.read_parquet(out / "answers.parquet")
    assert list(answers["order"]) == [0, 1, 2, 6, 10]
    for column in ("baseline_letter", "refined_letter", "baseline_correct_reference"):
        assert column in answers
    assert answers["baseline_output"].map(len).max() <= 8  # one new token
    assert answers.loc[answers["gold"].isna(), "baseline_correct"].eq(0).all()  # "?"
    accuracy = json.loads((out / "accuracy.json").read_text())
    assert accuracy["questions"] == 5 and accuracy["multi_image_first_only"] == 1
    assert accuracy["left_out"]["duplicate test_id"] == 1
    total = next(row for row in accuracy["table"] if row["level"] == "total")
    assert total["n"] == 5 and {"baseline", "refined", "baseline_low"} <= set(total)
    assert len((out / "problems.txt").read_text().splitlines()) == 8
    assert main([*args, "--out", str(out), *refine]) == 0  # complete: same answers
    pd.testing.assert_frame_equal(pd.read_parquet(out / "answers.parquet"), answers)
    assert main([*args, "--out", str(out), "--refine", "--heads-from", str(heads)]) == 2


@pytest.mark.slow
def test_vqa_benchmark_sampling_is_seeded(tmp_path):
    from vgutils.__main__ import main

    sampled = ["vqa", "--model", "tiny:llava", "--benchmark", str(FIXTURE)]
    sampled += ["--decoding", "huatuo-sample", "--datasets", "VQA-RAD_test", "--n-boot", "20"]
    assert main([*sampled, "--out", str(tmp_path / "s1")]) == 0
    assert main([*sampled, "--out", str(tmp_path / "s2")]) == 0
    first, second = (pd.read_parquet(tmp_path / s / "answers.parquet") for s in ("s1", "s2"))
    assert len(first) == 2 and first["decoding"].eq("huatuo-sample").all()
    assert list(first["baseline_output"]) == list(second["baseline_output"])  # seeded


@pytest.mark.parametrize("profile", ["smoke", "default"])
def test_profile_benchmark_runs_have_their_calibration_heads(profile):
    from vgutils.jobs import load_profile, profile_jobs

    settings = load_profile(profile)
    jobs = {(j.model, j.dataset, j.strategy): j for j in profile_jobs(settings)}
    for run in settings["benchmarks"]["runs"]:
        if run.get("refine"):
            assert jobs[(run["model"], run["calibration"], "last")].heads


def test_vgrefine_table_puts_published_numbers_beside_ours():
    import matplotlib

    matplotlib.use("Agg")
    from vgutils import mc_report

    answers = pd.DataFrame(
        {
            "model": ["m"] * 4,
            "published_as": ["HuatuoGPT-Vision-7B"] * 4,
            "dataset": ["VQA-RAD_test", "VQA-RAD_test", "SLAKE_test", "SLAKE_test"],
            "subset": [None] * 4,
            "baseline_correct": [1.0, 0.0, 0.0, 0.0],
            "baseline_correct_reference": [1.0, 0.0, 0.0, 0.0],
            "refined_correct": [1.0, 1.0, 0.0, 0.0],
            "refined_correct_reference": [1.0, 1.0, 0.0, 0.0],
            "baseline_no_letter": [False, True, False, False],
        }
    )
    table = mc_report.vgrefine_table(answers, n_boot=50).set_index("dataset")
    assert table.loc["VQA-RAD_test", "without %"] == 50.0
    assert table.loc["VQA-RAD_test", "VGRefine %"] == 100.0
    assert table.loc["VQA-RAD_test", "published without %"] == 67.4
    assert table.loc["VQA-RAD_test", "published VGRefine %"] == 71.2
    assert table.loc["total", "n"] == 4 and pd.isna(table.loc["total", "published without %"])
    assert table.loc["SLAKE_test", "change (points)"] == 0.0
    text = mc_report.describe(table.reset_index())
    assert "VGRefine helps" in text and "no change" in text and "Published: 67.4%" in text
    fig = mc_report.vgrefine_figure(table.reset_index())
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert "published (paper), without" in labels and "published (paper), VGRefine" in labels
    unpublished = table.reset_index().assign(**{"published without %": np.nan})
    unpublished["published VGRefine %"] = np.nan
    labels = mc_report.vgrefine_figure(unpublished).axes[0].get_legend_handles_labels()[1]
    assert not any(label.startswith("published") for label in labels)  # no mark, no entry
    assert mc_report.published_table().set_index("model (published)").loc[
        "LLaVA-Med-7B", "avg (as published)"
    ] == pytest.approx(45.4)


def test_published_averages_are_computed_and_the_odd_ones_named():
    """The paper's avg for HuatuoGPT-Vision-7B (65.3 -> 68.4) is not the mean of its own
    four columns: (67.4 + 76.5 + 60.7 + 53.9) / 4 = 64.625; (71.2 + 76.9 + 67.6 + 56.2) / 4
    = 67.975; weighted by 251, 416, 3362, 2000 questions: 360614.8 / 6029 = 59.81."""
    from vgutils import mc_report

    table = mc_report.published_table().set_index(["model (published)", "setting"])
    huatuo = table.loc[("HuatuoGPT-Vision-7B", "without")]
    assert huatuo["mean of the four"] == pytest.approx(64.6)
    assert huatuo["question-weighted mean"] == pytest.approx(59.8)
    assert table.loc[("HuatuoGPT-Vision-7B", "with VGRefine"), "mean of the four"] == 68.0
    note = mc_report.published_average_note()
    assert "HuatuoGPT-Vision-7B without: 65.3 as published, 64.6 the mean" in note
    assert "LLaVA-Med-7B without (45.4)" in note and "LLaVA-v1.6-7B without (48.5)" in note


def test_vgrefine_table_mixes_runs_with_and_without_vgrefine():
    """The paper's table: LLaVA-Med runs without VGRefine beside models with it (found by
    the paper profile's rehearsal: the concatenated frame gave LLaVA-Med NaN refined
    answers and the table crashed)."""
    from vgutils import mc_report

    refined = pd.DataFrame(
        {
            "model": ["a", "a"],
            "published_as": [None, None],
            "dataset": ["SLAKE_test"] * 2,
            "subset": [None] * 2,
            "baseline_correct": [1.0, 0.0],
            "baseline_correct_reference": [1.0, 0.0],
            "refined_correct": [1.0, 1.0],
            "refined_correct_reference": [1.0, 1.0],
            "baseline_no_letter": [False, False],
        }
    )
    plain = refined.drop(columns=["refined_correct", "refined_correct_reference"])
    plain = plain.assign(model="b", baseline_correct=[0.0, 0.0])
    table = mc_report.vgrefine_table(pd.concat([refined, plain]), n_boot=20)
    rows = table[table["dataset"] == "SLAKE_test"].set_index("model")
    assert rows.loc["a", "VGRefine %"] == 100.0 and rows.loc["b", "without %"] == 0.0
    assert pd.isna(rows.loc["b", "VGRefine %"])


def test_teaching_scenes_as_a_benchmark_in_the_real_format(tmp_path):
    import json

    from vgutils.teach.datasets import build_teach_mc, heldout_scenes

    path = build_teach_mc(tmp_path, count=2)
    raw = json.loads(path.read_text())
    assert isinstance(raw, list) and all(r["image"][0].startswith("images/") for r in raw)
    records, problems = load_mc(path)
    assert problems == [] and len(records) == len(raw)
    questions = sum(len(s.questions) for d in ("natural", "medical") for s in heldout_scenes(d, 2))
    assert len(records) == questions  # every question has a multiple-choice form
    for record in records:
        gold = record.options[ord(record.answer) - ord("A")]
        assert gold == record.answer_text
        assert record.options in (["yes", "no"], ["red", "green", "blue", "yellow"])
    assert {r.dataset for r in records} == {"teach-natural", "teach-medical"}

"""Numbers from the run (issue #29 item 3): the blocks, the collector's readers, records
(README against the record: tests/test_readme_numbers.py)."""

import json

import numpy as np
import pandas as pd
import pytest

from vgutils import figdata, numbers

# ---------------------------------------------------------------- blocks


def test_rewrite_replaces_inline_and_line_blocks_only():
    text = (
        "a <!-- numbers:begin x -->old<!-- numbers:end x --> b\n\n"
        "<!-- numbers:begin y -->\nold\nlines\n<!-- numbers:end y -->\n"
        "<!-- numbers:begin z -->keep<!-- numbers:end z -->\n"
    )
    new = numbers.rewrite(text, {"x": "NEW", "y": "L1\nL2"})
    assert "a <!-- numbers:begin x -->NEW<!-- numbers:end x --> b" in new
    assert "<!-- numbers:begin y -->\n\nL1\nL2\n\n<!-- numbers:end y -->" in new
    assert "keep" in new
    assert numbers.readme_blocks(new) == {"x": "NEW", "y": "L1\nL2", "z": "keep"}
    assert numbers.rewrite(new, {"x": "NEW", "y": "L1\nL2"}) == new


def document(**values) -> dict:
    return {
        "profile": "default",
        "commit": "abc",
        "generated": "2026-12-05 03:00 UTC",
        "machine": {"cpus": 2},
        "numbers": {k: {"value": v, "source": "test"} for k, v in values.items()},
    }


def test_differences_name_the_block():
    record = document(**{"snippet.output": "x\n"})
    text = (
        "<!-- numbers:begin snippet-output -->\n```text\ny\n```\n"
        "<!-- numbers:end snippet-output -->"
    )
    problems = numbers.differences(text, record, ["snippet-output"])
    assert len(problems) == 1 and "differs" in problems[0]


def test_margin_names_the_thinnest_criterion_and_a_failure():
    values = {
        "teach.ratio_medical": 1.19,
        "teach.criterion.ratio_medical": "<= 1.2",
        "teach.accuracy_natural": 0.99,
        "teach.criterion.accuracy_natural": ">= 0.97",
    }
    text = numbers.render_margin(document(**values))
    assert "`ratio_medical`, 1.19 against a limit of at most 1.2" in text and "FAILS" not in text
    values["teach.accuracy_natural"] = 0.965
    text = numbers.render_margin(document(**values))
    assert "`accuracy_natural`, 96.5%" in text and "FAILS" in text


def test_snippet_sentence_comes_from_its_printout():
    output = (
        "sample s: 'q' (answer 'yes')\n49 image tokens, 6 in the box\n"
        "attention ratio per layer (1 = chance):\n  layer 0:  0.64\n  layer 1:  1.10\n"
        "  layer 2:  3.37\n"
    )
    sentence = numbers.render_snippet_expect({"numbers": numbers.snippet_numbers(output)})
    assert sentence.startswith("in layer 2 the box's 6 of 49 tokens get 3.4 times")


def test_gallery_lists_every_notebook_with_its_time(tmp_path, monkeypatch):
    monkeypatch.setattr(numbers, "BUILD", tmp_path)
    (tmp_path / "default" / "times").mkdir(parents=True)
    (tmp_path / "default" / "times" / "02_layer_curves.s").write_text("71\n")
    (tmp_path / "default" / "times" / "jobs.s").write_text("30\n")
    rows = numbers.gallery_rows("default")
    names = [r["notebook"] for r in rows]
    assert names == sorted(p.stem for p in numbers.NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    assert "06_protocol_sensitivity" in names
    row = rows[names.index("02_layer_curves")]
    assert row["seconds"] == 71 and row["title"].startswith("Fig 2")
    times = numbers.time_numbers("default")
    assert times["time.jobs"]["value"] == 30 and times["time.notebooks_total"]["value"] == 71
    assert json.loads((tmp_path / "default" / "notebook_times.json").read_text()) == {
        "02_layer_curves": 71
    }
    table = numbers.render_gallery(
        document(
            gallery=rows,
            **{k: v["value"] for k, v in times.items()},
        )
    )
    assert f"the extraction jobs 30 s, 1 of the {len(rows)} notebooks 1 min 11 s in all" in table
    assert "| `fig02_layer_curves`, `fig02_layer_curves_summary.csv` | `02_layer_curves`" in table


def test_notebook_figures_keep_what_the_run_wrote(tmp_path):
    path = numbers.NOTEBOOKS / "02_layer_curves.ipynb"
    assert numbers.notebook_figures(path, tmp_path) == []
    (tmp_path / "fig02_layer_curves.png").write_bytes(b"")
    assert numbers.notebook_figures(path, tmp_path) == ["fig02_layer_curves"]


def test_durations():
    assert numbers.duration(42) == "42 s"
    assert numbers.duration(185) == "3 min 05 s"
    assert numbers.duration(3720) == "1 h 02 min"


def test_record_is_collected(tmp_path, monkeypatch):
    monkeypatch.setattr(numbers, "BUILD", tmp_path)
    numbers.record("smoke", "nb02.layers", np.int64(3), "notebook 02")
    assert numbers.recorded_numbers("smoke") == {
        "nb02.layers": {"value": 3, "source": "notebook 02"}
    }
    with pytest.raises(ValueError):
        numbers.record("smoke", "bad key/", 1, "x")


# ---------------------------------------------------------------- the tables' readers


def test_table_readers(tmp_path):
    rows = [
        {
            "model": "m",
            "domain": d,
            "sample_id": f"{d}{i}",
            "layer": layer,
            "attention_ratio": (3.0 if d == "natural" and layer == 1 else 1.0) + i / 100,
            "kl": 1.0 - (layer == 1) / 2 + i / 100,
            "js": 0.5,
        }
        for d in ("natural", "medical")
        for i in range(3)
        for layer in range(3)
    ]
    figdata.summary_table(pd.DataFrame(rows)).to_csv(tmp_path / "s.csv", index=False)
    curves = numbers.curve_numbers(tmp_path / "s.csv")
    assert curves["curves.m.natural.attention_ratio.best"]["value"] == pytest.approx(3.01)
    assert curves["curves.m.natural.attention_ratio.best_layer"]["value"] == 1
    assert curves["curves.m.at_natural_min_kl.kl.layer"]["value"] == 1
    pd.DataFrame(
        [
            {
                "questions": "closed (yes/no)",
                "n": 10,
                "baseline_exact": 0.9,
                "refined_exact": 0.7,
                "dataset": "teach-medical",
                "protocol": "authors",
            },
        ]
    ).to_csv(tmp_path / "v.csv", index=False)
    vqa = numbers.vqa_numbers(tmp_path / "v.csv")
    assert vqa["vqa.authors.teach-medical.closed.refined_exact"]["value"] == 0.7
    pd.DataFrame(
        [{"model": "tiny:teach", "dataset": "total", "n": 5, "without %": 80.0, "VGRefine %": 60.0}]
    ).to_csv(tmp_path / "m.csv", index=False)
    mc = numbers.mc_numbers(tmp_path / "m.csv")
    assert mc["mc.tiny:teach.total.vgrefine"]["value"] == 60.0

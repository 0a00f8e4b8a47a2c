"""Extraction runner: prefix sharing, CLI, resume after kill -9, refusal, shards."""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from family_cases import family_strategy_cases
from PIL import Image

from vgutils.__main__ import main
from vgutils.context import KILL_AFTER_PARTS
from vgutils.models.prefix import common_prefix_length, shared_prefix_attention
from vgutils.models.tiny import TINY_FAMILIES
from vgutils.results import load_maps, load_metrics

QUESTIONS = ["Is there a cat?", "Does this image show a kidney in the abdomen?", "Why?"]


@pytest.mark.parametrize(("family", "strategy"), family_strategy_cases())
def test_prefix_sharing_equals_full_forwards(family, strategy, vlms):
    vlm = vlms[family]
    rng = np.random.default_rng(4)
    image = Image.fromarray((rng.random((70, 150, 3)) * 255).astype(np.uint8))
    prompts = [vlm.prepare(image, q) for q in QUESTIONS] + [vlm.prepare_generic(image)]
    assert common_prefix_length(prompts) > prompts[0].image_positions[-1]
    shared = shared_prefix_attention(vlm, prompts, strategy, batch_size=3)
    for prepared, got in zip(prompts, shared, strict=True):
        np.testing.assert_allclose(got, vlm.attention(prepared, strategy), atol=1e-6)


def run_cli(*args):
    return main(["extract", *map(str, args)])


METRIC_COLUMNS = {
    "sample_id",
    "layer",
    "attention_ratio",
    "kl",
    "js",
    "attention_ratio_raw",
    "kl_raw",
    "js_raw",
    "n_tokens",
    "n_gt_tokens",
    "q_type",
    "model",
    "dataset",
    "strategy",
}


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_extract_cli_each_family(family, tmp_path, capsys):
    out = tmp_path / family
    assert (
        run_cli(
            "--model",
            f"tiny:{family}",
            "--dataset",
            "sample-natural",
            "--out",
            out,
            "--limit",
            "6",
            "--heads",
            "--save-maps",
        )
        == 0
    )
    metrics = load_metrics(out)
    assert METRIC_COLUMNS <= set(metrics.columns)
    done = metrics["sample_id"].nunique()
    assert (
        len(metrics) == done * 3
        and done + len((out / "errors.jsonl").read_text().splitlines()) == 6
    )
    heads = load_metrics(out, "head_metrics")
    assert len(heads) == len(metrics) * 4
    # layer metrics are the metrics of the saved layer maps
    first = metrics["sample_id"].iloc[0]
    maps = load_maps(out, first)
    from vgutils.metrics import attention_ratio, gt_mask

    mask = gt_mask(maps["layout"], maps["boxes"])
    np.testing.assert_allclose(
        metrics.loc[metrics.sample_id == first, "attention_ratio"],
        attention_ratio(maps["normalized"], mask),
        rtol=1e-5,
    )
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "complete" and run["counts"]["done"] == done
    assert "transformers" in run["versions"] and run["identity"]["model_folder_sha256"]
    assert "done" in capsys.readouterr().out


def test_resume_after_kill_equals_uninterrupted_run(tmp_path):
    args = ["--model", "tiny:qwen2_5_vl", "--dataset", "sample-medical", "--heads"]
    command = [sys.executable, "-m", "vgutils", "extract", *args]
    whole = tmp_path / "whole"
    subprocess.run([*command, "--out", whole], check=True, capture_output=True)
    broken = tmp_path / "broken"
    env = {**os.environ, KILL_AFTER_PARTS: "3"}
    killed = subprocess.run([*command, "--out", broken], env=env, capture_output=True)
    assert killed.returncode == -9
    assert len(list((broken / "parts").glob("metrics-*.parquet"))) == 3
    assert not (broken / "metrics.parquet").exists()
    resumed = subprocess.run([*command, "--out", broken], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    for kind in ("metrics", "head_metrics"):
        pd.testing.assert_frame_equal(load_metrics(broken, kind), load_metrics(whole, kind))
    assert json.loads((broken / "run.json").read_text())["resumed"] == 1


def test_rerun_with_other_options_refuses(tmp_path, capsys):
    out = tmp_path / "run"
    base = ["--model", "tiny:gemma3", "--dataset", "sample-natural", "--out", out, "--limit", "2"]
    assert run_cli(*base) == 0
    assert run_cli(*base) == 0  # same options: nothing recomputed
    assert "nothing recomputed" in capsys.readouterr().out
    assert run_cli(*base, "--strategy", "all") == 2
    assert "other options" in capsys.readouterr().err


def test_shards_merge_to_the_unsharded_run(tmp_path):
    base = ["--model", "tiny:internvl", "--dataset", "sample-natural", "--limit", "8"]
    assert run_cli(*base, "--out", tmp_path / "all") == 0
    for index in range(2):
        assert run_cli(*base, "--out", tmp_path / "sharded", "--shard", f"{index}/2") == 0
    assert main(["merge", str(tmp_path / "sharded")]) == 0
    merged = load_metrics(tmp_path / "sharded")
    pd.testing.assert_frame_equal(merged, load_metrics(tmp_path / "all"))


def test_bad_rows_are_logged_not_fatal(tmp_path):
    Image.new("RGB", (64, 64), "white").save(tmp_path / "a.png")
    rows = [
        {"image": "a.png", "question": "Is there a dot?", "bbox": [8, 8, 40, 40]},
        {"image": "missing.png", "question": "Is there a dot?", "bbox": [8, 8, 40, 40]},
        {"image": "a.png", "question": "Is there a dot?", "bbox": [64.5, 8, 64.9, 40]},
    ]
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    assert (
        run_cli("--model", "tiny:llava", "--dataset", jsonl, "--bbox-format", "xyxy", "--out", out)
        == 0
    )
    assert load_metrics(out)["sample_id"].unique().tolist() == ["d:1"]
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    reasons = " ".join(e["reason"] for e in errors)
    assert len(errors) == 2 and "file not found" in reasons and "cover no image token" in reasons

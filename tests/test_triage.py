"""VGRefine's triage arms (#25): heads, oracle, random, anti-oracle knock out the same
number of tokens, chosen by the heads, the ground-truth boxes or a seeded draw."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vgutils.errors import UsageError
from vgutils.geometry import TokenLayout, grid_boxes
from vgutils.refine import (
    TRIAGES,
    RefineSettings,
    box_tokens,
    draw_generator,
    knocked_box_share,
    knocked_tokens,
)

# a 4 x 4 grid of 10-px tokens over a 40 x 40 image; the box (12, 12)-(28, 18) overlaps
# the tokens of row 1, columns 1 and 2 (5, 6): by hand, 2 box tokens
LAYOUT = TokenLayout(grid_boxes(4, 4, (0, 0, 40, 40)), ((0, 4, 4),), (40, 40))
BOX = [[12, 12, 28, 18]]


def heads_triage(percentile: float, seed: int = 0):
    relevance = np.random.default_rng(seed).random(16)
    return relevance < np.percentile(relevance, percentile), relevance


def test_box_tokens_by_hand():
    box = box_tokens(LAYOUT, BOX)
    assert box.sum() == 2 and list(np.flatnonzero(box)) == [5, 6]
    assert box_tokens(LAYOUT, None) is None
    # knocking tokens 5 and 9 out: one of the two box tokens
    knocked = np.zeros(16, dtype=bool)
    knocked[[5, 9]] = True
    assert knocked_box_share(knocked, box) == 0.5
    assert np.isnan(knocked_box_share(knocked, None))


@pytest.mark.parametrize("percentile", [0, 50, 80, 87.5])
@pytest.mark.parametrize("seed", range(4))
def test_the_arms_knock_out_as_many_tokens_as_the_heads(percentile, seed):
    low, relevance = heads_triage(percentile, seed)
    box = box_tokens(LAYOUT, BOX)
    rng = draw_generator(seed, "q")
    for arm in TRIAGES:
        knocked = knocked_tokens(arm, low, relevance, box, rng)
        assert knocked.dtype == bool and knocked.sum() == low.sum(), arm


@pytest.mark.parametrize("boxes", [BOX, [[0, 0, 10, 20]], [[0, 0, 20, 10], [30, 30, 40, 40]]])
@pytest.mark.parametrize("seed", range(4))
def test_the_oracle_keeps_the_box_when_it_fits(boxes, seed):
    box = box_tokens(LAYOUT, boxes)
    percentile = 100 * (1 - box.sum() / 16)  # the box covers exactly 1 - p of the tokens
    for p in (percentile, percentile - 10, 50):
        low, relevance = heads_triage(p, seed)
        knocked = knocked_tokens("oracle", low, relevance, box)
        assert not (knocked & box).any()
        assert knocked_box_share(knocked, box) == 0.0


def test_the_oracle_knocks_box_tokens_only_when_it_must():
    box = box_tokens(LAYOUT, [[0, 0, 40, 20]])  # 8 of 16 tokens
    low, relevance = heads_triage(75)  # 12 knocked: all 8 others, then 4 box tokens
    knocked = knocked_tokens("oracle", low, relevance, box)
    assert (knocked[~box]).all() and (knocked & box).sum() == 4
    lowest_box = np.flatnonzero(box)[np.argsort(relevance[box], kind="stable")[:4]]
    assert knocked[lowest_box].all()  # within the box, lowest relevance first


@pytest.mark.parametrize("percentile", [5, 20, 50, 80])
def test_the_anti_oracle_knocks_every_box_token_first(percentile):
    box = box_tokens(LAYOUT, [[0, 0, 20, 20]])  # 4 tokens
    low, relevance = heads_triage(percentile)
    knocked = knocked_tokens("anti-oracle", low, relevance, box)
    count = int(low.sum())
    assert (knocked & box).sum() == min(count, 4)
    if count >= 4:
        assert knocked[box].all() and knocked_box_share(knocked, box) == 1.0
    else:
        assert not knocked[~box].any()


def test_the_random_arm_is_seeded():
    low, relevance = heads_triage(80)

    def draws(seed, sample_id, count=3):
        rng = draw_generator(seed, sample_id)
        return [knocked_tokens("random", low, relevance, rng=rng) for _ in range(count)]

    def same(a, b):
        return all((x == y).all() for x, y in zip(a, b, strict=True))

    first = draws(42, "teach-medical-001-1")
    assert same(first, draws(42, "teach-medical-001-1"))
    assert not same(first, draws(43, "teach-medical-001-1"))
    assert not same(first, draws(42, "teach-medical-001-3"))
    assert not (first[0] == first[1]).all()  # the draws differ from each other


def test_settings_check_the_triage():
    assert RefineSettings(heads=((0, 0),), layers=(0,)).resolve().triage == "heads"
    resolved = RefineSettings(heads=((0, 0),), layers=(0,), triage="random").resolve()
    assert (resolved.draws, resolved.seed) == (5, 0)
    assert RefineSettings.from_spec({"triage": "random", "draws": 2}).draws == 2
    with pytest.raises(UsageError, match="expected one of heads, oracle"):
        RefineSettings(heads=((0, 0),), layers=(0,), triage="box").resolve()
    with pytest.raises(UsageError, match="random triage only"):
        RefineSettings(heads=((0, 0),), layers=(0,), triage="oracle", draws=3).resolve()
    with pytest.raises(UsageError, match="no ground-truth boxes"):
        RefineSettings(triage="anti-oracle").check_triage(has_boxes=False)
    RefineSettings(triage="random").check_triage(has_boxes=False)


def test_vqa_cli_triage_oracle_and_random(tmp_path):
    from vgutils.__main__ import main

    heads = tmp_path / "calibration"
    calibrate = ["extract", "--model", "tiny:llava", "--dataset", "sample-natural"]
    assert main([*calibrate, "--out", str(heads), "--heads", "--limit", "3"]) == 0
    args = ["vqa", "--model", "tiny:llava", "--dataset", "sample-medical", "--limit", "3"]
    args += ["--max-new-tokens", "2", "--refine", "--heads-from", str(heads), "--top-k", "3"]
    frames = {}
    for arm in ("heads", "oracle", "random"):
        extra = ["--draws", "2"] if arm == "random" else []
        out = tmp_path / arm
        assert main([*args, "--out", str(out), "--triage", arm, *extra]) == 0
        frames[arm] = pd.read_parquet(out / "answers.parquet")
        run = json.loads((out / "run.json").read_text())
        assert run["options"]["refine"]["triage"] == arm
        assert run["options"]["refine"]["draws"] == (2 if arm == "random" else None)
    oracle, heads_arm, random_arm = frames["oracle"], frames["heads"], frames["random"]
    assert (oracle["triage"] == "oracle").all() and (oracle["box_tokens"] > 0).all()
    assert list(oracle["masked_tokens"]) == list(heads_arm["masked_tokens"])
    assert oracle["knocked_box_share"].between(0, 1).all()
    assert (oracle["knocked_box_share"] <= heads_arm["knocked_box_share"]).all()
    share = heads_arm["gt_knocked"] / heads_arm["gt_tokens"]
    assert np.allclose(heads_arm["knocked_box_share"], share)
    assert (random_arm["draws"] == 2).all()
    assert random_arm["refined_draws"].map(lambda t: len(json.loads(t))).eq(2).all()
    assert random_arm["refined_exact"].between(0, 1).all()
    # the oracle arms need boxes: none in the multiple-choice benchmarks
    fixture = str(Path(__file__).parent / "fixtures" / "mc_benchmark")
    mc = ["vqa", "--model", "tiny:llava", "--benchmark", fixture, "--out", str(tmp_path / "mc")]
    mc += ["--refine", "--heads-from", str(heads), "--top-k", "3", "--triage", "oracle"]
    assert main(mc) == 2
    assert not (tmp_path / "mc" / "answers.parquet").exists()


def test_multiple_choice_random_triage_averages_its_draws(tmp_path):
    from vgutils.mc_eval import MCOptions, run_mc

    fixture = Path(__file__).parent / "fixtures" / "mc_benchmark"
    refine = RefineSettings(heads=((0, 0), (1, 1)), layers=(1,), triage="random", draws=3)
    options = MCOptions(model="tiny:llava", benchmark=str(fixture), refine=refine, limit=3)
    answers, table, _ = run_mc(options, tmp_path / "mc", n_boot=20, progress=False)
    assert table.loc[table["level"] == "total", "refined"].between(0, 1).all()
    assert (answers["draws"] == 3).all() and (answers["triage"] == "random").all()
    assert answers["refined_correct"].isin([0, 1 / 3, 2 / 3, 1]).all()
    with pytest.raises(UsageError, match="no ground-truth boxes"):
        run_mc(
            MCOptions(
                model="tiny:llava",
                benchmark=str(fixture),
                refine=RefineSettings(heads=((0, 0),), layers=(1,), triage="oracle"),
            ),
            tmp_path / "mc2",
        )


def test_profiles_name_the_anatomy_arms_and_the_rehearsal_maps_their_heads():
    from vgutils.jobs import load_profile

    for profile in ("default", "smoke", "paper"):
        spec = load_profile(profile)["anatomy"]
        assert set(spec["arms"]) <= set(TRIAGES) and spec["models"]
        for entry in spec["models"]:
            settings = RefineSettings.from_spec({**entry, "triage": "random"})
            assert settings.triage == "random"
    rehearsed = load_profile("paper-rehearsal")
    huatuo, llava = rehearsed["anatomy"]["models"]
    assert huatuo["heads"] == rehearsed["refine"]["heads"] and huatuo["layers"] == [2]
    assert llava["top_k"] == 2  # 20 of 1024 heads -> 2 of 16
    assert any(
        line.startswith("anatomy.models[1].top_k") for line in rehearsed["rehearsal"]["mapped"]
    )

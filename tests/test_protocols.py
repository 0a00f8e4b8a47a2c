"""The protocol settings (docs/METHOD.md, "Protocol settings"): each test fails if its setting
were ignored."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from vgutils.__main__ import build_parser, main
from vgutils.geometry import TokenLayout, scaled_layout
from vgutils.jobs import Job, profile_jobs
from vgutils.metrics import gt_mask
from vgutils.models import load_model
from vgutils.models.attention import capture
from vgutils.protocols import (
    PROTOCOLS,
    QWEN_CAP,
    REFINE_PROMPT_SUFFIX,
    get_protocol,
    parse_processor_kwarg,
)
from vgutils.refine import RefineSettings, best_layer, knockout, text_rows_after_image, triage
from vgutils.results import RunMismatch
from vgutils.vqa import VQAOptions, resolve_vqa_options


def noise(width, height, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8))


# --- Qwen image size -------------------------------------------------------------------


def test_qwen_cap_gives_at_most_64_tokens_on_a_large_image():
    big = noise(1024, 1024)
    capped = load_model("tiny:qwen2_5_vl", device="cpu", processor_kwargs=QWEN_CAP)
    native = load_model("tiny:qwen2_5_vl", device="cpu", processor_kwargs={"max_pixels": 1024**2})
    n_capped = capped.prepare(big, "Is there a cat?").layout.n_tokens
    n_native = native.prepare(big, "Is there a cat?").layout.n_tokens
    assert n_capped <= 64
    assert n_native > 4 * 64  # the kwargs reach the processor (not its built-in limits)
    assert len(native.prepare(big, "x").image_positions) == n_native


# --- box mapping -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def padded_llava():
    vlm = load_model("tiny:llava", device="cpu", processor_kwargs={"do_pad": True})
    assert vlm.processor.image_processor.do_pad
    return vlm


def authors_mask(box, width, height, rows, cols):
    """The authors' mapping by hand: the box clamped to the image and scaled onto the
    rows x cols grid stretched over it, floor for the start and ceil for the end."""
    x0, y0, x1, y1 = box
    x0, x1 = max(0.0, x0), min(float(width), x1)
    y0, y1 = max(0.0, y0), min(float(height), y1)
    c0, c1 = math.floor(x0 * cols / width), math.ceil(x1 * cols / width)
    r0, r1 = math.floor(y0 * rows / height), math.ceil(y1 * rows / height)
    grid = np.zeros((rows, cols), dtype=bool)
    grid[r0:r1, c0:c1] = True
    return grid.ravel()


def test_pad_to_square_really_pads_the_pixels(padded_llava):
    image = np.zeros((60, 120, 3), dtype=np.uint8)
    image[:, :10] = 255  # a white stripe at the left edge: cut by the crop, kept by the pad
    pixels = padded_llava.prepare(Image.fromarray(image), "x").inputs["pixel_values"][0, 0]
    plain = load_model("tiny:llava", device="cpu")
    unpadded = plain.prepare(Image.fromarray(image), "x").inputs["pixel_values"][0, 0]
    assert pixels[32, 0] > 1.0 and unpadded.max() < -1.0
    region = padded_llava.prepare(Image.fromarray(image), "x").layout.grid_region()
    np.testing.assert_allclose(region, [0, -30, 120, 90])  # the geometry follows the pad


@pytest.mark.parametrize("size", [(120, 60), (50, 130), (97, 41)])
def test_scaled_mapping_equals_the_authors_by_hand(size, padded_llava):
    width, height = size
    image = noise(width, height, seed=width)
    scaled = padded_llava.prepare(image, "Is there a cat?", box_mapping="scaled").layout
    processor = padded_llava.prepare(image, "Is there a cat?").layout
    _, rows, cols = scaled.grids[0]
    rng = np.random.default_rng(width)
    differ = 0
    for _ in range(40):
        x0, x1 = np.sort(rng.uniform(-0.1 * width, 1.1 * width, 2))
        y0, y1 = np.sort(rng.uniform(-0.1 * height, 1.1 * height, 2))
        box = [x0, y0, x1 + 1, y1 + 1]
        inside = (min(x1 + 1, width) > max(x0, 0)) and (min(y1 + 1, height) > max(y0, 0))
        if not inside:
            continue
        expected = authors_mask(box, width, height, rows, cols)
        np.testing.assert_array_equal(gt_mask(scaled, [box]), expected)
        differ += not np.array_equal(gt_mask(processor, [box]), expected)
    assert differ > 10  # the processor-true set differs on non-square images


def test_boxes_are_clamped_to_the_image_before_the_overlap(padded_llava):
    layout = padded_llava.prepare(noise(120, 60), "x").layout  # pad rows above and below
    inside = gt_mask(layout, [[0, 0, 120, 60]])
    np.testing.assert_array_equal(gt_mask(layout, [[-50, -50, 170, 110]]), inside)
    assert not inside[:8].any()  # the first token row sees only padding


def test_scaled_equals_processor_for_a_square_image_and_for_qwen(padded_llava):
    square = noise(90, 90)
    a = padded_llava.prepare(square, "x", box_mapping="scaled").layout
    b = padded_llava.prepare(square, "x").layout
    np.testing.assert_allclose(a.boxes, b.boxes)
    qwen = load_model("tiny:qwen2_5_vl", device="cpu")
    wide = noise(200, 90)
    np.testing.assert_allclose(
        qwen.prepare(wide, "x", box_mapping="scaled").layout.boxes,
        qwen.prepare(wide, "x").layout.boxes,
    )


def test_scaled_is_undefined_for_tiled_internvl():
    vlm = load_model("tiny:internvl", device="cpu")
    with pytest.raises(ValueError, match="internvl"):
        vlm.prepare(noise(200, 60), "x", box_mapping="scaled")
    with pytest.raises(ValueError, match="unknown box_mapping"):
        vlm.prepare_generic(noise(20, 20), box_mapping="stretched")
    with pytest.raises(ValueError, match="grids"):
        scaled_layout(
            TokenLayout(np.tile([0, 0, 1, 1], (2, 1)), ((0, 1, 1), (1, 1, 1)), (1, 1)), "x"
        )


# --- VGRefine --------------------------------------------------------------------------


def test_triage_layer_denominator_equals_a_hand_recomputation():
    vlm = load_model("tiny:llava", device="cpu")
    heads = [(0, 1), (2, 3), (2, 0)]
    found = triage(vlm, noise(80, 60, 3), "Is there a cat?", heads, denominator="layer")
    question = found.question_heads.astype(np.float64)
    generic = found.generic_heads.astype(np.float64)
    by_hand = np.mean([question[a, h] / generic[a].mean(axis=0) for a, h in heads], axis=0)
    np.testing.assert_allclose(found.relevance, by_hand, rtol=1e-9)
    per_head = triage(vlm, noise(80, 60, 3), "Is there a cat?", heads, denominator="head")
    assert not np.allclose(per_head.relevance, found.relevance)
    with pytest.raises(ValueError, match="denominator"):
        triage(vlm, noise(8, 8), "x", heads, denominator="image")


@pytest.mark.parametrize("include_generated", [False, True])
def test_knockout_of_generated_rows_follows_include_generated(include_generated):
    vlm = load_model("tiny:llava", device="cpu")
    prepared = vlm.prepare(noise(90, 70, 1), "What colour is the square?")
    rows = text_rows_after_image(prepared)
    keys = prepared.image_positions[1::2]
    length = prepared.inputs["input_ids"].shape[1]
    layer = 1
    with torch.no_grad(), knockout(vlm, [layer], rows, keys, include_generated):
        with capture({"prompt": rows}, np.arange(length)) as prompt:
            out = vlm.model(**prepared.inputs, use_cache=True)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        step = {"input_ids": token, "attention_mask": torch.ones((1, length + 1), dtype=torch.long)}
        with capture({"new": np.array([length])}, np.arange(length + 1)) as recorder:
            vlm.model(**step, cache=out.cache)
    assert torch.all(prompt.maps["prompt"][layer][0][:, keys] == 0)  # prompt rows: blocked
    generated = recorder.maps["new"][layer][0][:, keys]
    if include_generated:
        assert torch.all(generated == 0)
    else:  # the authors': the generated token still sees the knocked keys
        assert torch.all(generated.sum(-1) > 0)


def test_best_layer_holds_the_most_top_heads_ties_to_the_best_mean():
    frame = pd.DataFrame(
        {
            "layer": [0, 0, 1, 1, 2, 2],
            "head": [0, 1, 0, 1, 0, 1],
            "attention_ratio": [3.0, 2.0, 5.0, 0.5, 4.0, 1.0],
        }
    )
    assert best_layer(frame, [(1, 0), (0, 0), (0, 1)]) == 0  # layer 0 holds two heads
    # one head each: layer 1's head has the best mean ratio
    assert best_layer(frame, [(1, 0), (2, 0), (0, 0)]) == 1
    # two each: layer 0 (mean 2.5) beats layer 2 (mean 2.5 -> tie -> lower layer)
    assert best_layer(frame, [(0, 0), (0, 1), (2, 0), (2, 1)]) == 0
    with pytest.raises(ValueError):
        best_layer(frame, [])


# --- presets, records, resume ------------------------------------------------------------


def test_protocol_presets_and_overrides():
    authors, corrected = get_protocol("authors"), get_protocol(None)
    assert corrected.name == "corrected" and set(PROTOCOLS) == {"authors", "corrected"}
    assert (authors.box_mapping, authors.denominator, authors.knockout_layers) == (
        "scaled",
        "layer",
        "best",
    )
    assert authors.processor_kwargs_for("qwen2_5_vl") == QWEN_CAP
    assert authors.processor_kwargs_for("llava") == {}
    assert not authors.include_generated and authors.max_new_tokens == 1 and authors.top_k == 20
    resolved = resolve_vqa_options(
        VQAOptions(
            "tiny:qwen2_5_vl",
            "sample-medical",
            protocol="authors",
            max_new_tokens=4,
            refine=RefineSettings(heads=((0, 1), (2, 3)), layers=(2,)),
        )
    )
    assert resolved.max_new_tokens == 4 and resolved.refine.layers == (2,)
    assert resolved.processor_kwargs == QWEN_CAP and resolved.refine.denominator == "layer"
    assert resolved.decoding == "checkpoint-64"  # the authors' Qwen path
    assert (resolved.image_resize, resolved.image_mode) == ("qwen_vl_utils", "qwen_vl_utils")
    assert (resolved.attention_precision, resolved.box_overhang) == ("model", "clamp")
    assert resolved.refine.prompt_suffix == REFINE_PROMPT_SUFFIX
    plain = resolve_vqa_options(VQAOptions("tiny:qwen2_5_vl", "sample-medical"))
    assert (plain.decoding, plain.max_new_tokens, plain.image_resize) == ("greedy", 16, "processor")
    assert (plain.attention_precision, plain.box_overhang, plain.image_mode) == (
        "float32",
        "drop",
        "composite",
    )
    assert parse_processor_kwarg("do_pad=true") == ("do_pad", True)
    assert parse_processor_kwarg("max_pixels=50176") == ("max_pixels", 50176)
    args = build_parser().parse_args(
        ["vqa", "--model", "m", "--dataset", "d", "--out", "o", "--layers", "best"]
    )
    assert args.top_k is None and args.layers == ["best"]  # None: the protocol's 20
    with pytest.raises(ValueError, match="unknown protocol"):
        get_protocol("paper")


def test_job_names_distinguish_protocols_and_settings():
    settings = {
        "jobs": [
            {"models": ["tiny:teach"], "datasets": ["teach-natural"]},
            {"models": ["tiny:teach"], "datasets": ["teach-natural"], "protocol": "authors"},
            {
                "models": ["tiny:teach"],
                "datasets": ["teach-natural"],
                "processor": {"do_pad": True},
                "box_mapping": "scaled",
            },
        ]
    }
    names = [job.name for job in profile_jobs(settings)]
    assert names[0] == Job("tiny:teach", "teach-natural").name == "tiny_teach__teach-natural__last"
    assert names[1].endswith("__authors")
    assert names[2] == "tiny_teach__teach-natural__last__boxes-scaled__do_pad-True"
    assert len(set(names)) == 3
    authors = profile_jobs({**settings, "protocol": "authors"})
    assert authors[0].protocol == "authors"


def test_run_json_records_the_protocol_and_resume_refuses_another(tmp_path, capsys):
    out = tmp_path / "run"
    common = ["--model", "tiny:qwen2_5_vl", "--dataset", "sample-medical", "--limit", "1"]
    assert main(["extract", *common, "--out", str(out), "--protocol", "authors"]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["options"]["protocol"] == "authors"
    assert run["options"]["box_mapping"] == "scaled"
    assert run["options"]["processor_kwargs"] == QWEN_CAP
    metrics = pd.read_parquet(out / "metrics.parquet")
    assert set(metrics["protocol"]) == {"authors"}
    assert main(["extract", *common, "--out", str(out), "--protocol", "corrected"]) == 2
    assert "protocol" in capsys.readouterr().err
    from vgutils.runner import ExtractOptions, extract

    options = ExtractOptions("tiny:qwen2_5_vl", "sample-medical", limit=1, protocol="authors")
    with pytest.raises(RunMismatch, match="box_mapping"):
        extract(ExtractOptions(**{**options.__dict__, "box_mapping": "processor"}), out)
    with pytest.raises(RunMismatch, match="processor_kwargs"):
        extract(ExtractOptions(**{**options.__dict__, "processor_kwargs": {"max_pixels": 1}}), out)


@pytest.mark.parametrize("profile", ["smoke", "default"])
def test_profiles_have_the_jobs_notebook_06_needs(profile):
    from vgutils.jobs import find_job, load_profile

    settings = load_profile(profile)
    spec = settings["sensitivity"]
    box = spec["box_mapping"]
    for mapping in ("processor", "scaled"):
        job = find_job(
            profile,
            box["model"],
            box["dataset"],
            protocol="corrected",
            box_mapping=mapping,
            processor=box["processor"],
        )
        assert job.box_mapping == mapping
    resolution = spec["resolution"]
    for dataset in resolution["datasets"]:
        for kwargs in (resolution["native"], resolution["cap"]):
            find_job(profile, resolution["model"], dataset, protocol="corrected", processor=kwargs)
    assert set(settings["refine"]["protocols"]) == {"authors", "corrected"}
    assert "protocol: corrected" in settings["caption"]

"""The protocol settings of issue #23 (docs/METHOD.md "Protocol settings"): each test fails if
its setting were ignored. The VGRefine prompt suffix, Qwen pixels, attention precision,
box overhang, decoding and image mode per family, given heads and layers, and the
multiple-choice runs under the profile's protocol."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from vgutils.__main__ import main
from vgutils.data.images import to_rgb
from vgutils.data.rows import read_rows
from vgutils.models import load_model
from vgutils.protocols import (
    AUTHORS_DECODING,
    DECODINGS,
    QWEN_CAP,
    REFINE_PROMPT_SUFFIX,
    get_protocol,
)
from vgutils.refine import RefineSettings, parse_heads
from vgutils.results import RunMismatch
from vgutils.scoring import head_mean, layer_maps


def noise(width, height, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8))


# --- VGRefine prompt suffix --------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["authors", "corrected"])
def test_refine_prompt_suffix_reaches_the_multiple_choice_refine_pass(
    protocol, tmp_path, monkeypatch
):
    import vgutils.models.vlm
    import vgutils.refine
    from vgutils.mc_eval import MCOptions, run_mc

    seen = []
    triage = vgutils.refine.triage

    def spy(vlm, image, question, heads, *args, user_text=None, **kwargs):
        seen.append(user_text)
        return triage(vlm, image, question, heads, *args, user_text=user_text, **kwargs)

    monkeypatch.setattr(vgutils.refine, "triage", spy)
    generated = []
    original = vgutils.models.vlm.VisionLanguageModel.generate

    def record(self, prepared, max_new_tokens=16, settings=None):
        generated.append(prepared.prompt)
        return original(self, prepared, max_new_tokens, settings)

    monkeypatch.setattr(vgutils.models.vlm.VisionLanguageModel, "generate", record)
    options = MCOptions(
        "tiny:llava",
        "teach-mc",
        datasets=("teach-medical",),
        refine=RefineSettings(heads=((0, 1), (2, 3)), layers=(1,)),
        protocol=protocol,
        limit=2,
    )
    answers, _, _ = run_mc(options, tmp_path / "mc", n_boot=10, progress=False)
    suffix = REFINE_PROMPT_SUFFIX if protocol == "authors" else ""
    assert len(seen) == 2 and all(text.endswith("directly." + suffix) for text in seen)
    baseline, refined = generated[0::2], generated[1::2]
    assert all(REFINE_PROMPT_SUFFIX not in prompt for prompt in baseline)  # the benchmark's
    assert all((REFINE_PROMPT_SUFFIX in prompt) == bool(suffix) for prompt in refined)
    run = json.loads((tmp_path / "mc" / "run.json").read_text())
    assert run["options"]["refine"]["prompt_suffix"] == suffix
    assert set(answers["protocol"]) == {protocol}


# --- Qwen pixels -------------------------------------------------------------------------


@pytest.mark.parametrize("family, patch", [("qwen2_5_vl", 14), ("qwen3_vl", 16)])
def test_authors_qwen_pixels_are_qwen_vl_utils_then_the_processor_bit_for_bit(family, patch):
    from qwen_vl_utils import fetch_image

    authors = load_model(f"tiny:{family}", device="cpu", processor_kwargs=QWEN_CAP)
    authors.configure(image_resize="qwen_vl_utils")
    ours = load_model(f"tiny:{family}", device="cpu", processor_kwargs=QWEN_CAP)
    for width, height in [(333, 517), (700, 250), (97, 1000)]:
        image = noise(width, height, seed=width)
        prepared = authors.prepare(image, "Is there a cat?")
        # the authors' cells: 28 px (Qwen2.5-VL), 32 px (Qwen3-VL)
        resized = fetch_image({"image": image, **QWEN_CAP}, image_patch_size=patch)
        expected = ours.processor(  # the authors' path by hand: qwen_vl_utils, the processor
            images=[resized], text=[prepared.prompt], return_tensors="pt"
        )
        assert torch.equal(prepared.inputs["pixel_values"], expected["pixel_values"])
        assert torch.equal(prepared.inputs["image_grid_thw"], expected["image_grid_thw"])
        plain = ours.prepare(image, "Is there a cat?").inputs["pixel_values"]
        assert plain.shape != expected["pixel_values"].shape or not torch.equal(
            plain, expected["pixel_values"]
        )  # one processor resize gives other pixels
        # boxes stay in the original image's pixels: the grid spans the whole image
        np.testing.assert_allclose(prepared.layout.grid_region(), [0, 0, width, height])
    with pytest.raises(ValueError, match="Qwen path"):
        load_model("tiny:llava", device="cpu").configure(image_resize="qwen_vl_utils")


def test_authors_protocol_resolves_the_qwen_resize_for_the_qwen_family_only():
    from vgutils.runner import ExtractOptions, resolve_options

    qwen = resolve_options(ExtractOptions("tiny:qwen2_5_vl", "sample-medical", protocol="authors"))
    qwen3 = resolve_options(ExtractOptions("tiny:qwen3_vl", "sample-medical", protocol="authors"))
    assert qwen3.image_resize == "qwen_vl_utils"
    llava = resolve_options(ExtractOptions("tiny:llava", "sample-medical", protocol="authors"))
    plain = resolve_options(ExtractOptions("tiny:qwen2_5_vl", "sample-medical"))
    assert (qwen.image_resize, llava.image_resize, plain.image_resize) == (
        "qwen_vl_utils",
        "processor",
        "processor",
    )


# --- attention precision -----------------------------------------------------------------


@pytest.fixture(scope="module")
def bf16_llava():
    return load_model("tiny:llava", device="cpu", dtype="bfloat16", attention_precision="model")


def eager_bf16_reference(vlm, prepared) -> np.ndarray:
    """transformers' own eager ``output_attentions`` of the same checkpoint in bf16: the
    last row's weights on the image tokens, mean over heads in bf16 (the authors' way)."""
    from transformers import AutoModelForImageTextToText

    eager = AutoModelForImageTextToText.from_pretrained(
        vlm.model.name_or_path, attn_implementation="eager", dtype=torch.bfloat16
    )
    with torch.no_grad():
        out = eager(**prepared.inputs, output_attentions=True)
    columns = torch.as_tensor(prepared.image_positions)
    assert out.attentions[0].dtype == torch.bfloat16
    return torch.stack([a[0, :, -1][:, columns].mean(dim=0) for a in out.attentions]).double()


def test_model_precision_map_is_the_eager_bf16_head_mean_exactly(bf16_llava):
    vlm = bf16_llava
    prepared = vlm.prepare(noise(90, 70, 5), "Is there a cat in the image?")
    reference = eager_bf16_reference(vlm, prepared).numpy()
    assert vlm.head_mean_dtype == "bfloat16"
    raw = vlm.attention(prepared, "last")
    generic = vlm.attention(vlm.prepare_generic(noise(90, 70, 5)), "last")
    maps = layer_maps(raw, generic, vlm.head_mean_dtype)
    np.testing.assert_array_equal(maps["raw"], reference)  # bit for bit
    # float32 precision (ours) on the same bf16 model: rows recomputed, mean in float64
    vlm.configure(attention_precision="float32")
    try:
        ours = head_mean(vlm.attention(prepared, "last"), vlm.head_mean_dtype, axis=1)
    finally:
        vlm.configure(attention_precision="model")
    assert vlm.head_mean_dtype == "bfloat16"
    assert not np.array_equal(ours, reference)
    np.testing.assert_allclose(ours, reference, rtol=0.02)  # the same map up to rounding


def test_extraction_under_the_authors_precision_saves_the_eager_bf16_map(tmp_path, bf16_llava):
    from vgutils.data import load_dataset, load_image
    from vgutils.results import load_maps
    from vgutils.runner import ExtractOptions, extract

    options = ExtractOptions(
        "tiny:llava",
        "sample-natural",
        limit=2,
        save_maps=True,
        dtype="bfloat16",
        attention_precision="model",
    )
    extract(options, tmp_path / "run", device="cpu", progress=False)
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["options"]["attention_precision"] == "model"
    sample = load_dataset("sample-natural")[0]
    prepared = bf16_llava.prepare(load_image(sample.image_path), sample.question)
    saved = load_maps(tmp_path / "run", sample.id)["raw"]  # shared-prefix forwards
    reference = eager_bf16_reference(bf16_llava, prepared).numpy().astype(np.float32)
    np.testing.assert_array_equal(saved, reference)


def test_model_precision_on_the_layer_denominator_takes_the_mean_in_bf16(bf16_llava):
    from vgutils.refine import triage

    heads = [(0, 1), (2, 3), (2, 0)]
    found = triage(bf16_llava, noise(80, 60, 3), "Is there a cat?", heads, denominator="layer")
    generic = head_mean(found.generic_heads, "bfloat16", axis=1)
    by_hand = np.mean([found.question_heads[a, h] / generic[a] for a, h in heads], axis=0)
    np.testing.assert_allclose(found.relevance, by_hand, rtol=1e-12)
    in_float64 = found.generic_heads.astype(np.float64).mean(axis=1)
    assert not np.array_equal(generic, in_float64)


# --- box overhang ------------------------------------------------------------------------


@pytest.fixture()
def overhanging(tmp_path):
    Image.fromarray(np.zeros((40, 60, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    rows = [
        {"image": "a.png", "question": "Is there a lesion?", "bbox": [50, 10, 65, 30]},
        {"image": "a.png", "question": "Is there a cyst?", "bbox": [5, 5, 20, 20]},
    ]
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text("".join(json.dumps({**r, "bbox_format": "xyxy"}) + "\n" for r in rows))
    return jsonl


def test_box_overhanging_5_px_is_clamped_under_authors_and_dropped_under_corrected(overhanging):
    kept, problems = read_rows(
        overhanging, overhanging.parent, lambda row: None, box_overhang="clamp"
    )
    assert len(kept) == 2 and all(p.severity == "warning" for p in problems)
    np.testing.assert_array_equal(kept[0].boxes, [[50, 10, 60, 30]])  # clamped to 60 px
    dropped, problems = read_rows(overhanging, overhanging.parent, lambda row: None)
    assert [s.question for s in dropped] == ["Is there a cyst?"]
    assert [(p.line, p.severity) for p in problems] == [(1, "error")]
    assert "5 px outside" in str(problems[0])


def test_extraction_counts_follow_the_box_overhang(overhanging, tmp_path, capsys):
    common = ["--model", "tiny:llava", "--dataset", str(overhanging)]
    for protocol, done, bad in (("authors", 2, 0), ("corrected", 1, 1)):
        out = tmp_path / protocol
        assert main(["extract", *common, "--out", str(out), "--protocol", protocol]) == 0
        run = json.loads((out / "run.json").read_text())
        assert run["options"]["box_overhang"] == ("clamp" if protocol == "authors" else "drop")
        assert (run["counts"]["done"], run["counts"]["bad_rows"]) == (done, bad)
    assert main(["validate", str(overhanging), "--box-overhang", "clamp"]) == 0
    assert main(["validate", str(overhanging)]) == 1
    assert "5 px outside" in capsys.readouterr().out


# --- decoding per family -----------------------------------------------------------------


def test_authors_decoding_per_family_reaches_generate(tmp_path, monkeypatch):
    from vgutils.mc_eval import MCOptions, resolve_mc_options, run_mc
    from vgutils.vqa import VQAOptions, resolve_vqa_options

    authors = get_protocol("authors")
    assert authors.for_family("decoding", "llava_qwen2") == "greedy-1"
    assert authors.for_family("decoding", "qwen2_5_vl") == "checkpoint-64"
    assert authors.for_family("decoding", "gemma3") == AUTHORS_DECODING["*"] == "greedy-1"
    assert DECODINGS["greedy-1"]["min_new_tokens"] == 1 == DECODINGS["greedy-1"]["max_new_tokens"]
    assert "do_sample" not in DECODINGS["checkpoint-64"]  # the checkpoint's own config
    resolved = {
        model: resolve_vqa_options(VQAOptions(model, "sample-medical", protocol="authors"))
        for model in ("tiny:llava_qwen2", "tiny:qwen2_5_vl")
    }
    assert (resolved["tiny:llava_qwen2"].decoding, resolved["tiny:llava_qwen2"].max_new_tokens) == (
        "greedy-1",
        1,
    )
    assert resolved["tiny:qwen2_5_vl"].max_new_tokens == 64
    corrected = resolve_vqa_options(VQAOptions("tiny:llava_qwen2", "sample-medical"))
    assert (corrected.decoding, corrected.max_new_tokens) == ("greedy", 16)
    mc = resolve_mc_options(MCOptions("tiny:qwen2_5_vl", "teach-mc", protocol="authors"))
    assert mc.decoding == "checkpoint-64"
    calls = []

    def spy(self, **kwargs):
        calls.append(kwargs)
        return kwargs["input_ids"][:, :1].repeat(1, kwargs["input_ids"].shape[1] + 1)

    from transformers import GenerationMixin

    monkeypatch.setattr(GenerationMixin, "generate", spy)
    run_mc(
        MCOptions(
            "tiny:qwen2_5_vl", "teach-mc", datasets=("teach-medical",), protocol="authors", limit=1
        ),
        tmp_path / "qwen",
        n_boot=10,
        progress=False,
    )
    assert calls and {k: v for k, v in calls[-1].items() if k in DECODINGS["greedy-1"]} == {
        "max_new_tokens": 64
    }
    from vgutils.vqa import run_vqa

    run_vqa(
        VQAOptions("tiny:llava_qwen2", "sample-medical", protocol="authors", limit=1),
        tmp_path / "huatuo",
        progress=False,
    )
    assert {k: calls[-1][k] for k in DECODINGS["greedy-1"]} == DECODINGS["greedy-1"]


# --- image mode --------------------------------------------------------------------------


def test_image_modes_composite_convert_and_qwen_vl_utils():
    rgba = Image.new("RGBA", (4, 4), (10, 200, 30, 0))  # fully transparent green
    assert to_rgb(rgba).getpixel((0, 0)) == (255, 255, 255)  # ours: white
    assert to_rgb(rgba, "convert").getpixel((0, 0)) == (10, 200, 30)  # alpha dropped
    assert to_rgb(rgba, "qwen_vl_utils").getpixel((0, 0)) == (255, 255, 255)
    la = Image.new("LA", (4, 4), (40, 0))
    assert to_rgb(la).getpixel((0, 0)) == (255, 255, 255)
    assert to_rgb(la, "qwen_vl_utils").getpixel((0, 0)) == (40, 40, 40)  # LA: alpha dropped
    sixteen = Image.fromarray(np.array([[0, 1000], [30000, 65535]], dtype=np.uint16))
    assert np.asarray(to_rgb(sixteen))[..., 0].tolist() == [[0, 4], [117, 255]]  # rescaled
    clipped = [[0, 255], [255, 255]]  # PIL clips, never rescales
    assert np.asarray(to_rgb(sixteen, "convert"))[..., 0].tolist() == clipped
    assert np.asarray(to_rgb(sixteen, "qwen_vl_utils"))[..., 0].tolist() == clipped
    with pytest.raises(ValueError, match="image mode"):
        to_rgb(rgba, "drop")


def test_authors_image_mode_per_family_reaches_the_pixels(tmp_path):
    from vgutils.data.rows import Sample
    from vgutils.runner import ExtractOptions, prepare_group, resolve_options

    picture = np.zeros((48, 64, 4), dtype=np.uint8)
    picture[..., 1] = 200  # green under alpha 0: white when composited
    Image.fromarray(picture).save(tmp_path / "t.png")
    sample = Sample("t", tmp_path / "t.png", "Is there a lesion?", np.array([[0, 0, 8, 8.0]]))
    modes = [
        resolve_options(ExtractOptions(model, "sample-medical", protocol=protocol)).image_mode
        for model, protocol in (
            ("tiny:llava_qwen2", "authors"),
            ("tiny:qwen2_5_vl", "authors"),
            ("tiny:llava_qwen2", "corrected"),
        )
    ]
    assert modes == ["convert", "qwen_vl_utils", "composite"]
    vlm = load_model("tiny:llava", device="cpu")
    pixels = {
        mode: prepare_group(vlm, [(0, sample)], "processor", mode).prompts[0].inputs["pixel_values"]
        for mode in ("convert", "composite")
    }
    assert not torch.equal(pixels["convert"], pixels["composite"])


# --- given heads and layers --------------------------------------------------------------


def test_vqa_with_given_heads_and_layer_records_them(tmp_path, capsys):
    out = tmp_path / "vqa"
    args = ["vqa", "--model", "tiny:llava", "--dataset", "sample-natural", "--limit", "2"]
    given = ["--refine", "--heads", "0:1,2:3,2:3", "--layers", "2", "--out", str(out)]
    assert main([*args, *given]) == 0
    run = json.loads((out / "run.json").read_text())
    refine = run["options"]["refine"]
    assert refine["heads"] == [[0, 1], [2, 3]] and refine["heads_source"] == "given"
    assert refine["layers"] == [2] and refine["layers_source"] == "given"
    assert refine["heads_from"] is None and refine["top_k"] == 2
    answers = pd.read_parquet(out / "answers.parquet")
    assert set(answers["knockout_layers"]) == {"2"} and set(answers["heads_source"]) == {"given"}
    capsys.readouterr()
    best = ["--refine", "--heads", "0:1", "--layers", "best", "--out", str(tmp_path / "x")]
    assert main([*args, *best]) == 2  # 'best' ranks layers on a calibration run
    assert "--heads-from" in capsys.readouterr().err
    assert main([*args, "--heads", "0:1", "--out", str(tmp_path / "y")]) == 2
    assert "without --refine" in capsys.readouterr().err
    assert main([*args, "--refine", "--heads", "0:x", "--out", str(tmp_path / "z")]) == 2
    assert "LAYER:HEAD" in capsys.readouterr().err


def test_heads_options_are_checked():
    with pytest.raises(Exception, match="LAYER:HEAD"):
        parse_heads("15:4,16")
    assert parse_heads("15:4, 16:5") == ((15, 4), (16, 5))
    settings = RefineSettings(heads=((0, 1),), layers="best")
    with pytest.raises(Exception, match="heads-from"):
        settings.resolve("authors")
    with pytest.raises(Exception, match="top-k"):
        RefineSettings(heads=((0, 1),), top_k=3, layers=(0,)).resolve()
    resolved = RefineSettings(heads=((2, 1), (0, 3))).resolve("corrected")
    assert resolved.layers == (0, 2) and resolved.layers_source == "heads"
    assert resolved.resolve("authors") is resolved  # resolved once


def test_ranked_heads_are_recorded_with_their_source(tmp_path):
    from vgutils.runner import ExtractOptions, extract
    from vgutils.vqa import VQAOptions, run_vqa

    heads = tmp_path / "heads"
    extract(
        ExtractOptions("tiny:llava", "sample-natural", limit=3, heads=True), heads, progress=False
    )
    options = VQAOptions(
        "tiny:llava",
        "sample-natural",
        refine=RefineSettings(heads_from=str(heads), top_k=3, layers="best"),
        limit=1,
    )
    run_vqa(options, tmp_path / "vqa", progress=False)
    refine = json.loads((tmp_path / "vqa" / "run.json").read_text())["options"]["refine"]
    assert refine["heads_source"] == "ranked" and len(refine["heads"]) == 3
    assert refine["heads_from"] == str(heads) and refine["layers_source"] == "best"


def test_a_run_json_without_the_new_settings_is_another_setup(tmp_path):
    """A run.json written before the settings existed (its options lack their keys) is
    refused as a run of other options: the profile runners then recompute it."""
    from vgutils.runner import ExtractOptions, extract

    out = tmp_path / "run"
    options = ExtractOptions("tiny:llava", "sample-natural", limit=1)
    extract(options, out, progress=False)
    run = json.loads((out / "run.json").read_text())
    for key in ("attention_precision", "box_overhang", "image_mode", "image_resize"):
        del run["options"][key]
    (out / "run.json").write_text(json.dumps(run))
    with pytest.raises(RunMismatch, match="attention_precision"):
        extract(options, out, progress=False)


# --- the profiles: multiple-choice runs under the profile's protocol ---------------------


def test_multiple_choice_runs_take_the_profiles_protocol_and_a_runs_own_wins():
    from vgutils.jobs import load_profile
    from vgutils.mc_report import benchmark_options, run_folder_name, run_label

    spec = load_profile("paper")["benchmarks"]
    options = [benchmark_options("paper", spec, run) for run in spec["runs"]]
    assert [o.protocol for o in options] == ["authors"] * len(options)
    authors = options[0].refine
    assert len(authors.heads) == 20 and authors.heads[:2] == ((15, 4), (16, 5))
    assert authors.layers == (16,) and authors.top_k is None and authors.heads_from is None
    ranked = options[1].refine
    assert ranked.heads is None and ranked.heads_from.endswith("__authors")
    own = benchmark_options("paper", spec, {**spec["runs"][0], "protocol": "corrected"})
    assert own.protocol == "corrected"
    names = {
        run_folder_name("m", "medical-mc", "greedy-1", protocol, heads)
        for protocol in ("authors", "corrected")
        for heads in ("given", "ranked", None)
    }
    assert len(names) == 6 and all("__authors" in n or "__corrected" in n for n in names)
    assert run_label(spec["runs"][1], "corrected", "authors").endswith("(corrected protocol)")
    assert run_label(spec["runs"][0], "authors", "authors") == spec["runs"][0]["label"]


def test_check_runs_names_a_wrong_protocol_and_heads_that_were_not_given(tmp_path, monkeypatch):
    """``report --runs``: every run.json against what the profile asked for."""
    import vgutils.jobs
    import vgutils.paths
    from vgutils.jobs import load_profile, profile_jobs
    from vgutils.mc_report import benchmark_folder
    from vgutils.report import check_runs

    settings = load_profile("smoke")
    settings["benchmarks"]["runs"][0].update(heads=[[0, 1], [2, 3]], layers=[1])
    monkeypatch.setattr(vgutils.jobs, "use_profile", lambda profile: settings)
    monkeypatch.setattr(vgutils.paths, "results_dir", lambda profile: tmp_path)

    def write(folder, protocol, refine=None):
        (tmp_path / folder).mkdir()
        options = {"protocol": protocol, "refine": refine}
        run = {"status": "complete", "options": options}
        (tmp_path / folder / "run.json").write_text(json.dumps(run))

    for job in profile_jobs(settings):
        write(job.name, job.protocol)
    spec = settings["benchmarks"]
    mc = benchmark_folder("smoke", spec, spec["runs"][0])
    assert mc.endswith("__corrected__heads-given")
    given = {"heads": [[0, 1], [2, 3]], "heads_source": "given", "layers": [1]}
    write(mc, "corrected", given)
    records, problems = check_runs("smoke")
    assert problems == [] and len(records) == len(profile_jobs(settings)) + 1
    (tmp_path / mc / "run.json").unlink()
    (tmp_path / mc).rmdir()
    write(mc, "authors", {**given, "heads_source": "ranked"})
    _, problems = check_runs("smoke")
    assert any("protocol 'authors', asked for 'corrected'" in p for p in problems)
    assert any("(ranked), given" in p for p in problems)

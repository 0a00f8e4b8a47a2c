"""The offline rehearsal of the paper profile (issue #19): the paper's own YAML, checked
key by key; its models resolved to random stand-ins with the real image geometry through
the real loading code; its layer indices and head counts mapped by the stated rule."""

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import yaml
from PIL import Image

from vgutils import context, paths, rehearsal
from vgutils.__main__ import main
from vgutils.data.manifest import manifest_models
from vgutils.errors import DataError, UsageError
from vgutils.jobs import load_profile
from vgutils.models.original import ORIGINAL_FORMATS
from vgutils.models.published import REAL_MODELS
from vgutils.models.sources import register_source, source_names, unregister_source
from vgutils.rehearsal import map_heads, map_layer, rehearse_settings, split_profile
from vgutils.rehearsal.models import parameter_count

PAPER = paths.PARAMS_DIR / "paper.yaml"


def paper_settings() -> dict:
    return yaml.safe_load(PAPER.read_text())


def test_profile_names():
    assert split_profile("paper-rehearsal") == ("paper", "small")
    assert split_profile("paper-rehearsal-full") == ("paper", "full")
    assert split_profile("paper") == ("paper", None)
    assert paths.check_profile("paper-rehearsal") == PAPER
    with pytest.raises(UsageError, match="nope"):
        paths.check_profile("nope-rehearsal")


def test_layer_rule_by_hand():
    # HuatuoGPT-Vision-7B: 28 layers of 28 heads (784) -> 4 layers of 4 heads (16)
    assert map_layer(16, 28, 4) == 2  # round(16 * 3 / 27) = round(1.78)
    assert (map_layer(0, 28, 4), map_layer(27, 28, 4)) == (0, 3)
    assert map_layer(16, 28, 28) == 16  # full size: unchanged
    assert map_heads(20, 784, 16) == 2  # round(0.41) -> at least 2
    assert map_heads(500, 784, 16) == 10  # round(10.2)
    assert map_heads(2000, 784, 16) == 16  # at most all heads
    assert map_heads(20, 784, 784) == 20


def test_paper_rehearsal_settings_map_heads_and_caption():
    settings = load_profile("paper-rehearsal")
    assert settings["caption"].startswith(rehearsal.CAPTION)
    runs = settings["benchmarks"]["runs"]
    # the ranked runs: the protocols' 20 of 784 heads -> 2 of 16
    assert [r.get("top_k") for r in runs if r.get("refine") and not r.get("heads")] == [2, 2]
    mapped = settings["rehearsal"]["mapped"]
    assert any("benchmarks.runs[1].top_k: 20 of 784 heads -> 2 of 16" in line for line in mapped)
    full = load_profile("paper-rehearsal-full")
    assert full["refine"]["heads"] == paper_settings()["refine"]["heads"]  # full size: as given
    assert full["refine"]["layers"] == [16]
    assert full["caption"].endswith("(full size) · protocol: authors")


def test_given_heads_and_layers_follow_the_layer_rule():
    """The authors' 20 heads of HuatuoGPT-Vision-7B (28 layers x 28 heads) on the small
    build (4 layers x 4 heads): layer round(l*3/27), head round(h*3/27), duplicates once."""
    settings = load_profile("paper-rehearsal")
    given = paper_settings()["refine"]["heads"]
    expected = list(dict.fromkeys((round(a * 3 / 27), round(h * 3 / 27)) for a, h in given))
    assert [tuple(x) for x in settings["refine"]["heads"]] == expected
    assert settings["refine"]["layers"] == [2]  # layer 16: round(16 * 3 / 27)
    assert len(expected) < len(given)  # some collapse
    authors_run = settings["benchmarks"]["runs"][0]
    assert authors_run["heads"] == settings["refine"]["heads"] and authors_run["layers"] == [2]
    assert "top_k" not in authors_run  # given heads are used as they are
    lines = [line for line in settings["rehearsal"]["mapped"] if ".heads:" in line]
    assert any(f"20 given heads of 28 layers x 28 -> {len(expected)} of 4 x 4" in x for x in lines)
    assert "collapse" in rehearsal.LAYER_RULE and "round(h*(Q-1)/(P-1))" in rehearsal.LAYER_RULE
    assert load_profile("paper")["caption"] == "protocol: authors"  # the real profile untouched


def test_explicit_layers_are_mapped():
    settings = paper_settings()
    settings["sensitivity"]["refine"]["top_k"] = 40
    settings["benchmarks"]["layers"] = 16
    settings["benchmarks"]["runs"][0]["layers"] = [15, 16]
    mapped = rehearse_settings(settings, PAPER, "small")
    runs = mapped["benchmarks"]["runs"]
    assert runs[0]["layers"] == [2, 2] and runs[1]["layers"] == runs[3]["layers"] == 2
    assert runs[2].get("layers") is None  # LLaVA-Med runs without VGRefine
    assert mapped["sensitivity"]["refine"]["top_k"] == 2  # round(40 * 16 / 784) = 1 -> 2
    assert "sensitivity.refine.top_k: 40 of 784 heads -> 2 of 16" in mapped["rehearsal"]["mapped"]


@pytest.mark.parametrize(
    "edit, key, value",
    [
        (lambda s: s["jobs"][1]["models"].__setitem__(2, "OpenGVLab/InternVL3-8B-hfx"),
         "jobs[1].models[2]", "OpenGVLab/InternVL3-8B-hfx"),
        (lambda s: s["curves"]["medical"].__setitem__(1, "vgmed-atribute"),
         "curves.medical[1]", "vgmed-atribute"),
        (lambda s: s["refine"].__setitem__("calibration", "vgmed-localisation"),
         "refine.calibration", "vgmed-localisation"),
        (lambda s: s["layer_maps"]["panels"][0]["samples"].__setitem__("coco-localisation", 2),
         "layer_maps.panels[0].samples.coco-localisation", "coco-localisation"),
        (lambda s: s["layer_maps"]["panels"][0]["models"].__setitem__(2, "Luxuriant16/medreg"),
         "layer_maps.panels[0].models[2]", "Luxuriant16/medreg"),
        (lambda s: s["benchmarks"]["runs"][1].__setitem__("model", "microsoft/llava-med"),
         "benchmarks.runs[1].model", "microsoft/llava-med"),
        (lambda s: s["benchmarks"]["datasets"].__setitem__(0, "VQA-RAD"),
         "benchmarks.datasets[0]", "VQA-RAD"),
        (lambda s: s["benchmarks"]["datasets"].append("OmniMedVQA"),  # no synthetic data
         "benchmarks.datasets[4]", "OmniMedVQA"),
    ],
)  # fmt: skip
def test_a_typo_in_a_copy_of_paper_yaml_is_one_line_naming_the_key(
    tmp_path, monkeypatch, capsys, edit, key, value
):
    params = tmp_path / "params"
    params.mkdir()
    settings = paper_settings()
    edit(settings)
    (params / "paper.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
    monkeypatch.setattr(paths, "PARAMS_DIR", params)
    monkeypatch.setenv("VGUTILS_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("VGUTILS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("VGUTILS_DATA", str(tmp_path / "embedded"))
    code = main(["jobs", "paper", "--rehearsal"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1, err
    assert f"paper.yaml: {key}: {value!r} is not" in err
    assert not (tmp_path / "results").exists() and not (tmp_path / "cache").exists()
    with pytest.raises(DataError, match=r"did you mean|known: "):
        rehearse_settings(settings, params / "paper.yaml", "small")


def test_every_manifest_model_has_a_stand_in_of_its_family():
    for spec in manifest_models().values():
        assert REAL_MODELS[spec["hub_id"]].family == spec["family"], spec["hub_id"]


@pytest.mark.parametrize(
    "model, published",
    [
        ("llava-hf/llava-1.5-7b-hf", 7_063_427_072),
        ("Qwen/Qwen2.5-VL-7B-Instruct", 8_292_166_656),
        ("google/medgemma-4b-it", 4_300_079_472),
        ("OpenGVLab/InternVL3-8B-hf", 7.94e9),
        ("FreedomIntelligence/HuatuoGPT-Vision-7B", 7.94e9),
        ("microsoft/llava-med-v1.5-mistral-7b", 7.57e9),
        ("Qwen/Qwen3-VL-8B-Instruct", 8.77e9),
        ("llava-hf/llava-v1.6-vicuna-7b-hf", 7.06e9),
        ("llava-hf/llava-v1.6-mistral-7b-hf", 7.57e9),
        ("Luxuriant16/medrega", 40e9),  # InternVL-Chat-V1-2's card: "40 billion"
    ],
)
def test_full_scale_stand_ins_have_the_published_size(model, published):
    assert parameter_count(model, "full") == pytest.approx(published, rel=0.005)
    assert parameter_count(model, "small") < 25e6


@pytest.fixture
def rehearsing(tmp_path, monkeypatch):
    """The rehearsal's model source alone (no synthetic data built)."""
    monkeypatch.setenv("VGUTILS_CACHE", str(tmp_path / "cache"))
    register_source(rehearsal.StandIns("small"))
    yield
    unregister_source(rehearsal.PLUGIN)


IMAGE = Image.fromarray(np.random.default_rng(0).integers(0, 255, (900, 1500, 3), np.uint8))


@pytest.mark.parametrize(
    "model, processor, tokens",
    [
        ("llava-hf/llava-1.5-7b-hf", {}, 576),  # 336 px, patch 14
        ("FreedomIntelligence/HuatuoGPT-Vision-7B", {}, 576),  # converted, pad to square
        ("microsoft/llava-med-v1.5-mistral-7b", {}, 576),
        ("Qwen/Qwen2.5-VL-7B-Instruct", {"max_pixels": 50176, "min_pixels": 784}, 60),
        ("Qwen/Qwen2.5-VL-7B-Instruct", {}, 54 * 32),  # native: 1500 x 900 -> 1512 x 896 px
        ("OpenGVLab/InternVL3-8B-hf", {}, 7 * 256),  # 6 tiles of 448 px + thumbnail
        ("google/medgemma-4b-it", {}, 256),  # 896 px pooled to 16 x 16
        ("Qwen/Qwen3-VL-8B-Instruct", {"max_pixels": 50176, "min_pixels": 784}, 5 * 9),
        # base 24 x 24, then 672 x 672 (2 x 2 tiles: 48 x 48) unpadded to 28 rows; the 28
        # row ends are unplaced (not counted)
        ("llava-hf/llava-v1.6-vicuna-7b-hf", {}, 576 + 28 * 48),
        ("UCSC-VLAA/LLaVA-Med-pp/SLAKE", {}, 576),  # S2: 1008 px, pooled to 336's grid
        ("Luxuriant16/medrega", {}, 256),  # one 448-px tile, pixel shuffle 0.5
    ],
)
def test_stand_ins_load_through_the_real_path_with_the_real_geometry(
    rehearsing, tmp_path, model, processor, tokens
):
    from vgutils.models import load_model

    vlm = load_model(model, device="cpu", processor_kwargs=processor)
    prepared = vlm.prepare(IMAGE, "Where is the liver?")
    assert prepared.layout.n_tokens == tokens
    assert vlm.num_layers == 4
    if REAL_MODELS[model].family in ORIGINAL_FORMATS:  # went through the converter
        converted = rehearsal_cache(tmp_path).parent.parent / "converted"
        assert list(converted.glob("*/vgutils_conversion.json"))


def rehearsal_cache(tmp_path: Path) -> Path:
    return tmp_path / "cache" / "rehearsal" / "small"


def test_original_format_stand_in_and_shared_builds(rehearsing, tmp_path):
    from vgutils.models.sources import resolve
    from vgutils.protocols import model_family

    source = Path(resolve("FreedomIntelligence/HuatuoGPT-Vision-7B"))
    assert source.parent == rehearsal_cache(tmp_path) and source.name.startswith("llava_qwen2-")
    assert model_family("FreedomIntelligence/HuatuoGPT-Vision-7B") == "llava_qwen2"
    same_shape = "FreedomIntelligence/HuatuoGPT-Vision-7B-Qwen2.5VL"
    assert resolve("Qwen/Qwen2.5-VL-7B-Instruct") == resolve(same_shape)  # one build


def test_unknown_id_during_a_rehearsal(rehearsing):
    from vgutils.models.sources import resolve

    with pytest.raises(UsageError, match=r"no rehearsal build.*did you mean"):
        resolve("llava-hf/llava-1.5-7b")


def test_authors_protocol_keeps_tiles_for_internvl(rehearsing):
    from vgutils.models import load_model
    from vgutils.runner import ExtractOptions, resolve_options

    internvl, llava = "OpenGVLab/InternVL3-8B-hf", "llava-hf/llava-1.5-7b-hf"
    resolved = resolve_options(ExtractOptions(internvl, "x", protocol="authors"))
    assert resolved.box_mapping == "processor"
    assert resolve_options(ExtractOptions(llava, "x", protocol="authors")).box_mapping == "scaled"
    vlm = load_model(internvl, device="cpu")
    with pytest.raises(ValueError, match="undefined for family 'internvl'"):
        vlm.prepare(IMAGE, "Where?", box_mapping="scaled")  # explicit: still refused


def test_rehearsal_figures_carry_the_caption(tmp_path, monkeypatch):
    monkeypatch.setenv("VGUTILS_FIGURES", str(tmp_path))
    try:
        check_captions(tmp_path)
    finally:
        plt.close("all")


def check_captions(tmp_path):
    from vgutils import plots

    fig, titled, captioned = (plt.subplots()[0] for _ in range(3))
    titled.suptitle("fig08")
    captioned.suptitle(f"{rehearsal.CAPTION} · protocol: authors")
    with context.use(context.current().replace(figure_note=rehearsal.CAPTION)):
        png = plots.save_figure(fig, "paper-rehearsal", "x")[1]
        plots.save_figure(titled, "paper-rehearsal", "y")
        plots.save_figure(captioned, "paper-rehearsal", "z")
    assert png.exists() and (tmp_path / "paper-rehearsal" / "x.pdf").exists()
    assert [t.get_text() for t in fig.texts] == [rehearsal.CAPTION]
    assert [t.get_text() for t in titled.texts] == ["fig08", rehearsal.CAPTION]
    assert len(captioned.texts) == 1  # said once
    plain, _ = plt.subplots()
    plots.save_figure(plain, "smoke", "x")
    assert plain.texts == [] and plain.get_suptitle() == ""


def test_activate_points_the_data_root_at_synthetic_data_with_the_embedded_links(
    tmp_path, monkeypatch
):
    import subprocess
    import sys

    from vgutils.data import load_dataset

    monkeypatch.setenv("VGUTILS_DATA", str(tmp_path / "embedded"))
    monkeypatch.setenv("VGUTILS_CACHE", str(tmp_path / "cache"))
    (tmp_path / "embedded" / "samples").mkdir(parents=True)
    root = rehearsal.activate("small")
    assert root == tmp_path / "cache" / "rehearsal" / "data"
    assert context.current().data_root == root and rehearsal.active_scale() == "small"
    assert source_names().index("rehearsal") == source_names().index("hub") - 1
    assert (root / "samples").resolve() == tmp_path / "embedded" / "samples"
    assert not (root / "teach").exists()  # no embedded teaching data: built here on demand
    assert not (tmp_path / "embedded" / "teach").exists()  # nothing made in the real root
    assert len(load_dataset("vgmed-localization")) == 8  # synthetic, real layout
    child = (  # a child process gets the context; the CLI turns the stand-ins on there
        "from vgutils import context; from vgutils.cli import _load_plugins; "
        "from vgutils.models.sources import source_names; _load_plugins(); "
        "print(context.current().data_root, 'rehearsal' in source_names())"
    )
    inherited = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True)
    assert inherited.stdout.split() == [str(root), "True"], inherited.stderr
    stamp = root / ".rehearsal-stamp.json"
    built = stamp.stat().st_mtime_ns
    assert rehearsal.activate("small") == root and stamp.stat().st_mtime_ns == built
    rehearsal.enter(load_profile("smoke"))  # a plain profile after a rehearsal
    assert rehearsal.active_scale() is None and "rehearsal" not in source_names()
    assert context.current().data_root == tmp_path / "embedded"
    monkeypatch.setenv("VGUTILS_DATA", str(root))
    with pytest.raises(UsageError, match="is the data root itself"):
        rehearsal.activate("small")
    assert "rehearsal" not in source_names()


def test_rehearsal_verifies_synthetic_files_against_their_own_hashes(tmp_path, monkeypatch):
    from vgutils.data import manifest

    real = tmp_path / "registry.txt"
    name = "vgmed/VGMED_localization.jsonl"
    real.write_text(f"{name} {'0' * 64}\n")  # as if the real release were pinned
    monkeypatch.setattr(manifest, "REGISTRY_FILE", real)
    monkeypatch.setenv("VGUTILS_DATA", str(tmp_path / "embedded"))
    monkeypatch.setenv("VGUTILS_CACHE", str(tmp_path / "cache"))
    root = rehearsal.activate("small")
    assert manifest.verify_file(name, root) == root / name
    with open(root / name, "ab") as handle:
        handle.write(b"\n")
    with pytest.raises(DataError, match="sha256 mismatch"):
        manifest.verify_file(name, root)
    rehearsal.deactivate()
    assert manifest.read_registry()[name][0] == "0" * 64  # the real one again
    manifest.pin(root, [name])
    assert real.read_text().split()[1] != "0" * 64  # pin writes the real registry only


def test_jobs_refuses_a_rehearsal_of_a_rehearsal(capsys):
    assert main(["jobs", "paper-rehearsal", "--rehearsal"]) == 2
    assert "is a rehearsal already" in capsys.readouterr().err


def test_jobs_rehearsal_runs_a_profile_offline_and_resumes(tmp_path, monkeypatch, capsys):
    params = tmp_path / "params"
    params.mkdir()
    profile = {
        "protocol": "authors",
        "device": "cpu",
        "jobs": [
            {
                "models": ["FreedomIntelligence/HuatuoGPT-Vision-7B"],
                "datasets": ["coco-localization"],
            }
        ],
    }
    (params / "mini.yaml").write_text(yaml.safe_dump(profile))
    monkeypatch.setattr(paths, "PARAMS_DIR", params)
    for variable, folder in [
        ("VGUTILS_RESULTS", "results"),
        ("VGUTILS_CACHE", "cache"),
        ("VGUTILS_DATA", "embedded"),
    ]:
        monkeypatch.setenv(variable, str(tmp_path / folder))
    assert main(["jobs", "mini", "--rehearsal"]) == 0
    first = capsys.readouterr().out
    assert (
        "[1/1] FreedomIntelligence_HuatuoGPT-Vision-7B__coco-localization__last__authors" in first
    )
    assert "8 done, 0 skipped (computed)" in first  # original format, converted, all rows
    assert main(["jobs", "mini", "--rehearsal"]) == 0
    assert "8 done, 0 skipped (cached)" in capsys.readouterr().out
    assert (tmp_path / "results" / "mini-rehearsal").is_dir()

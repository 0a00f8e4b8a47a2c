"""Original-format LLaVA (HuatuoGPT-Vision-7B, LLaVA-Med): conversion, equivalence with an
independent forward of the original architecture, key errors, preprocessing, cache, CLI."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, CLIPVisionConfig, CLIPVisionModel

from vgutils.__main__ import main
from vgutils.models import load_model
from vgutils.models.original import (
    RECORD_NAME,
    ConversionError,
    convert,
    record_matches,
    weight_files,
)
from vgutils.models.sources import cache_dir, resolve
from vgutils.models.tiny import build_tiny
from vgutils.models.tiny_original import ORIGINAL_FAMILIES

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PAD_COLOUR = tuple(int(255 * m) for m in CLIP_MEAN)
VISION_PREFIX = "model.vision_tower.vision_tower.vision_model."


def scene(width=150, height=90, seed=0):
    """A non-square noise image with a white box."""
    rng = np.random.default_rng(seed)
    image = Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8))
    ImageDraw.Draw(image).rectangle([20, 10, 70, 60], fill="white")
    return image


def original_state(folder) -> dict[str, torch.Tensor]:
    state = {}
    for path in weight_files(folder):
        state.update(load_file(path))
    return state


# --- the original architecture, computed without the converter --------------------------


def expand2square(image: Image.Image, colour) -> Image.Image:
    """The original LLaVA code's pad-to-square."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    result = Image.new(image.mode, (side, side), colour)
    result.paste(image, ((side - width) // 2, (side - height) // 2))
    return result


def original_pixels(image: Image.Image, size: int) -> torch.Tensor:
    """expand2square + CLIPImageProcessor (PIL backend, as the original code ran it)."""
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    clip = CLIPImageProcessorPil(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}
    )
    return clip(expand2square(image, PAD_COLOUR), return_tensors="pt")["pixel_values"]


def original_vision(source, config: dict):
    """CLIPVisionModel with the vision keys the original code loads (prefix stripped)."""
    if config["model_type"] == "llava_qwen2":  # HuatuoGPT-Vision: the checkpoint's copy
        tower = source / config["mm_vision_tower"]
        vision_config = json.loads((tower / "config.json").read_text())
        raw = {
            k[len(VISION_PREFIX) :]: v
            for k, v in original_state(source).items()
            if k.startswith(VISION_PREFIX)
        }
    else:  # LLaVA-Med: the separate CLIP folder's weights
        tower = Path(config["mm_vision_tower"])
        vision_config = json.loads((tower / "config.json").read_text())["vision_config"]
        raw = {
            k[len("vision_model.") :]: v
            for k, v in load_file(tower / "model.safetensors").items()
            if k.startswith("vision_model.")
        }
    keep = {k: v for k, v in vision_config.items() if k not in ("model_type", "architectures")}
    model = CLIPVisionModel(CLIPVisionConfig(**keep)).eval()
    model.load_state_dict(raw, strict=True)
    return model


def original_text_model(source, config: dict):
    """Qwen2ForCausalLM / MistralForCausalLM with the ``model.*`` + ``lm_head`` keys."""
    from transformers import MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

    qwen2 = config["model_type"] == "llava_qwen2"
    config_class, model_class = (
        (Qwen2Config, Qwen2ForCausalLM) if qwen2 else (MistralConfig, MistralForCausalLM)
    )
    kwargs = {
        k: v
        for k, v in config.items()
        if not k.startswith("mm_") and k not in ("architectures", "model_type")
    }
    model = model_class(config_class(**kwargs, attn_implementation="eager")).eval()
    state = {
        k: v
        for k, v in original_state(source).items()
        if not k.startswith(("model.mm_projector.", "model.vision_tower."))
    }
    model.load_state_dict(state, strict=True)
    return model


def original_prompt_ids(source, config: dict, text: str) -> tuple[list[int], list[int]]:
    """Token ids before / after the image placeholder, tokenised chunk by chunk without
    special tokens, as the original code does (one BOS first for Mistral)."""
    tokenizer = AutoTokenizer.from_pretrained(source)
    if config["model_type"] == "llava_qwen2":
        before, after = "<|user|>\n", f"\n{text}\n<|assistant|>\n"
        head = []
    else:
        before, after = "[INST] ", f"\n{text} [/INST]"
        head = [tokenizer.bos_token_id]
    encode = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    return head + encode(before), encode(after)


@torch.no_grad()
def original_forward(source, image: Image.Image, text: str):
    """Logits and eager attentions of the original architecture, and the image span."""
    config = json.loads((source / "config.json").read_text())
    state = original_state(source)
    vision = original_vision(source, config)
    size = vision.config.image_size
    hidden = vision(original_pixels(image, size), output_hidden_states=True).hidden_states
    features = hidden[config["mm_vision_select_layer"]][:, 1:]  # patch: CLS dropped
    features = F.linear(
        features, state["model.mm_projector.0.weight"], state["model.mm_projector.0.bias"]
    )
    features = F.gelu(features, approximate="none")
    features = F.linear(
        features, state["model.mm_projector.2.weight"], state["model.mm_projector.2.bias"]
    )
    text_model = original_text_model(source, config)
    before, after = original_prompt_ids(source, config, text)
    embed = text_model.get_input_embeddings()
    embeds = torch.cat(
        [embed(torch.tensor([before])), features, embed(torch.tensor([after]))], dim=1
    )
    out = text_model(inputs_embeds=embeds, output_attentions=True)
    span = np.arange(len(before), len(before) + features.shape[1])
    return out.logits[0], torch.stack([a[0] for a in out.attentions]), span, before + after


@pytest.mark.parametrize("family", ORIGINAL_FAMILIES)
def test_converted_equals_independent_original_forward(family, vlms):
    vlm = vlms[family]
    source = Path(resolve(f"tiny:{family}"))
    text = "Is there a lesion in the liver? Answer the question using a single word or phrase."
    image = scene()
    logits, attentions, span, text_ids = original_forward(source, image, text)

    prepared = vlm.prepare(image, "Is there a lesion in the liver?")
    ids = prepared.inputs["input_ids"][0].numpy()
    np.testing.assert_array_equal(prepared.image_positions, span)  # same splice position
    np.testing.assert_array_equal(np.delete(ids, span), text_ids)  # same prompt tokens
    with torch.no_grad():
        converted = vlm.model(**prepared.inputs).logits[0]
    vocab = logits.shape[-1]
    assert logits.abs().max() > 1.0  # not a degenerate comparison
    torch.testing.assert_close(converted[:, :vocab], logits, rtol=1e-4, atol=1e-4)

    maps = vlm.attention_maps(prepared, ("last",))["last"]  # (layers, heads, N)
    expected = attentions[:, :, -1, span].numpy()
    assert expected.std() > 1e-3  # far from uniform: a wrong mapping would show
    np.testing.assert_allclose(maps, expected, atol=1e-5)


def test_mistral_added_row_tower_weights_and_suppression(vlms):
    vlm = vlms["llava_mistral"]
    source = resolve("tiny:llava_mistral")
    config = json.loads(open(f"{source}/config.json").read())
    rows = config["vocab_size"]
    assert vlm.image_token_id == rows  # one row added for <image>
    model = vlm.model
    assert model.get_input_embeddings().weight.shape[0] == rows + 1
    assert torch.all(model.lm_head.weight[rows] == 0)
    assert model.generation_config.suppress_tokens == [rows]
    clip = load_file(f"{config['mm_vision_tower']}/model.safetensors")
    ours = model.model.vision_tower.embeddings.patch_embedding.weight
    torch.testing.assert_close(ours, clip["vision_model.embeddings.patch_embedding.weight"])
    copy = original_state(Path(source))
    assert not torch.equal(ours, copy[VISION_PREFIX + "embeddings.patch_embedding.weight"])


def test_qwen2_unused_row_and_checkpoint_vision(vlms):
    vlm = vlms["llava_qwen2"]
    source = Path(resolve("tiny:llava_qwen2"))
    config = json.loads((source / "config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(source)
    assert vlm.image_token_id == len(tokenizer) < config["vocab_size"]  # an unused row
    assert vlm.model.get_input_embeddings().weight.shape[0] == config["vocab_size"]
    assert not vlm.model.generation_config.suppress_tokens
    state = original_state(source)
    torch.testing.assert_close(
        vlm.model.model.vision_tower.embeddings.patch_embedding.weight,
        state[VISION_PREFIX + "embeddings.patch_embedding.weight"],
    )
    assert vlm.model.config.vision_feature_layer == -2
    assert vlm.model.config.vision_feature_select_strategy == "default"
    assert vlm.model.config.projector_hidden_act == "gelu"


@pytest.mark.parametrize("family", ORIGINAL_FAMILIES)
def test_prompt_is_the_models_own(family, vlms):
    vlm = vlms[family]
    prepared = vlm.prepare(scene(), "Is there a cat?")
    text = "Is there a cat? Answer the question using a single word or phrase."
    if family == "llava_qwen2":
        assert prepared.prompt == f"<|user|>\n<image>\n{text}\n<|assistant|>\n"
    else:
        assert prepared.prompt == f"[INST] <image>\n{text} [/INST]"
    ids = prepared.inputs["input_ids"][0].tolist()
    if family == "llava_mistral":  # exactly one BOS, first
        bos = vlm.processor.tokenizer.bos_token_id
        assert ids[0] == bos and ids.count(bos) == 1
    assert len(prepared.image_positions) == 64  # (64 / 8)^2: the CLS token is dropped
    tokenizer = vlm.processor.tokenizer
    assert tokenizer.convert_ids_to_tokens(vlm.image_token_id) == "<image>"
    assert "<|user|>" not in tokenizer.get_vocab()  # plain text, as in the real tokenizer


@pytest.mark.parametrize("family", ORIGINAL_FAMILIES)
def test_pixels_equal_expand2square_then_clip(family, vlms):
    vlm = vlms[family]
    processor = vlm.processor.image_processor
    assert type(processor).__name__ == "LlavaImageProcessorPil" and processor.do_pad
    for width, height in ((150, 90), (60, 170), (77, 77)):
        image = scene(width, height, seed=width)
        ours = processor(image, return_tensors="pt")["pixel_values"]
        torch.testing.assert_close(ours, original_pixels(image, 64), rtol=0, atol=0)


@pytest.mark.parametrize("family", ORIGINAL_FAMILIES)
def test_pad_colour_and_box_geometry(family, vlms):
    """A white box on a black 200x100 image: the pad bands carry the CLIP-mean colour and
    the tokens the layout puts inside the box see white pixels."""
    vlm = vlms[family]
    image = Image.new("RGB", (200, 100), "black")
    ImageDraw.Draw(image).rectangle([100, 25, 174, 74], fill="white")
    prepared = vlm.prepare(image, "Where is the box?")
    pixels = prepared.inputs["pixel_values"][0].float()
    mean = torch.tensor(CLIP_MEAN)[:, None, None]
    std = torch.tensor(CLIP_STD)[:, None, None]
    rgb = ((pixels * std + mean) * 255).round()
    colour = torch.tensor(PAD_COLOUR, dtype=torch.float32)
    # 200x100 padded to 200x200 (bands of 50 px) -> 64 px: rows 0-15 and 48-63 are pad
    torch.testing.assert_close(rgb[:, 2, 30], colour, rtol=0, atol=1.0)
    torch.testing.assert_close(rgb[:, 61, 10], colour, rtol=0, atol=1.0)
    assert torch.all(rgb[:, 32, 5] <= 1)  # black image inside
    layout = prepared.layout
    np.testing.assert_allclose(layout.grid_region(), [0, -50, 200, 150])
    from vgutils.metrics import gt_mask

    truth = gt_mask(layout, np.array([100, 25, 175, 75]))
    gray = rgb.mean(0) / 255
    blocks = gray.reshape(8, 8, 8, 8).mean(axis=(1, 3)).ravel().numpy()
    np.testing.assert_array_equal(blocks[~truth] > 0.7, False)
    assert (blocks[truth] > 0.7).any()


# --- key errors ----------------------------------------------------------------------


def edited_copy(tmp_path, edit):
    """A copy of the tiny llava_qwen2 checkpoint with ``edit(state)`` applied to its
    shards (the index is rewritten to match)."""
    source = tmp_path / "src"
    build_tiny("llava_qwen2", source)
    index_path = source / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    weight_map = {}
    for path in weight_files(source):
        state = load_file(path)
        edit(state)
        save_file(state, path, {"format": "pt"})
        weight_map.update(dict.fromkeys(state, path.name))
    index["weight_map"] = weight_map
    index_path.write_text(json.dumps(index))
    return source


def drop(key):
    return lambda state: state.pop(key, None)


def rename(old, new):
    def edit(state):
        if old in state:
            state[new] = state.pop(old)

    return edit


def transpose(key):
    def edit(state):
        if key in state:
            state[key] = state[key].T.contiguous()

    return edit


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (drop("model.layers.1.mlp.down_proj.weight"), "model.layers.1.mlp.down_proj.weight"),
        (drop(VISION_PREFIX + "post_layernorm.bias"), VISION_PREFIX + "post_layernorm.bias"),
        (rename("model.norm.weight", "model.final_norm.weight"), "model.final_norm.weight"),
        (
            rename("model.layers.2.mlp.up_proj.weight", "model.layers.2.mlp.up.weight"),
            "model.layers.2.mlp.up.weight",
        ),
        (transpose("model.mm_projector.0.weight"), "model.mm_projector.0.weight"),
        (transpose("model.layers.0.self_attn.k_proj.weight"), "model.layers.0.self_attn.k_proj"),
    ],
)
def test_key_errors_name_the_key(edit, key, tmp_path):
    source = edited_copy(tmp_path, edit)
    with pytest.raises(ConversionError, match=key.replace(".", r"\.")) as info:
        convert(source, tmp_path / "out")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_ignored_buffers_and_unsupported_config(tmp_path):
    source = edited_copy(
        tmp_path,
        lambda s: s.setdefault(VISION_PREFIX + "embeddings.position_ids", torch.arange(65)[None]),
    )
    assert (convert(source, tmp_path / "out") / RECORD_NAME).exists()
    config = json.loads((source / "config.json").read_text())
    for key, value in (("mm_projector_type", "linear"), ("image_aspect_ratio", "square")):
        (source / "config.json").write_text(json.dumps({**config, key: value}))
        with pytest.raises(ConversionError, match=f"{key}='{value}'"):
            convert(source, tmp_path / "out2")


# --- cache, Hub ids, record ------------------------------------------------------------


def test_load_model_converts_once_and_reconverts_on_change(tmp_path, monkeypatch):
    from vgutils.models import original

    source = build_tiny("llava_qwen2", tmp_path / "HuatuoGPT-tiny")
    vlm = load_model(str(source), device="cpu")
    converted = vlm.model.name_or_path
    record = json.loads(open(f"{converted}/{RECORD_NAME}").read())
    assert record["source"] == str(source.resolve())
    assert record["converter_version"] == original.CONVERTER_VERSION
    shard = weight_files(source)[0]
    assert len(record["source_files"][shard.name]["sha256"]) == 64

    calls = []
    real_convert = original.convert
    monkeypatch.setattr(
        original, "convert", lambda *a, **k: calls.append(1) or real_convert(*a, **k)
    )
    assert load_model(str(source), device="cpu").model.name_or_path == converted
    assert calls == []  # reused
    shard.touch()  # same content, new time: re-hashed, still reused
    assert record_matches(type(shard)(converted), source.resolve())
    state = load_file(shard)
    first = next(iter(state))
    state[first] = state[first] + 1
    save_file(state, shard, {"format": "pt"})
    assert not record_matches(type(shard)(converted), source.resolve())
    load_model(str(source), device="cpu")
    assert calls == [1]  # converted again


def fake_hub(tmp_path, family="llava_qwen2"):
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = tmp_path / "hub" / "models--org--model" / "snapshots" / commit
    build_tiny(family, snapshot)
    return snapshot, commit


def test_hub_id_resolves_through_snapshot_download(tmp_path, monkeypatch):
    import huggingface_hub

    snapshot, commit = fake_hub(tmp_path)
    monkeypatch.setattr(
        huggingface_hub, "hf_hub_download", lambda repo, name, **k: str(snapshot / name)
    )
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo, **k: str(snapshot))
    vlm = load_model("FreedomIntelligence/HuatuoGPT-Vision-7B", device="cpu")
    assert vlm.family == "llava_qwen2"
    folder = vlm.model.name_or_path
    assert folder.startswith(str(cache_dir() / "converted" / "FreedomIntelligence--HuatuoGPT"))
    record = json.loads(open(f"{folder}/{RECORD_NAME}").read())
    assert record["source"] == "FreedomIntelligence/HuatuoGPT-Vision-7B"
    assert record["revision"] == commit


def test_hub_failure_is_one_clear_error(tmp_path, monkeypatch):
    import huggingface_hub

    snapshot, _ = fake_hub(tmp_path)
    monkeypatch.setattr(
        huggingface_hub, "hf_hub_download", lambda repo, name, **k: str(snapshot / name)
    )

    def offline(repo, **kwargs):
        raise OSError("offline mode is enabled")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(ConversionError, match=r"cannot fetch 'org/model'.*offline"):
        load_model("org/model", device="cpu")


# --- CLI ----------------------------------------------------------------------------


def test_convert_cli_and_vision_tower_option(tmp_path, capsys):
    source = build_tiny("llava_qwen2", tmp_path / "qwen")
    mistral = build_tiny("llava_mistral", tmp_path / "med")
    clip = tmp_path / "med-clip"
    assert main(["convert", str(source), str(tmp_path / "out")]) == 0
    assert "converted" in capsys.readouterr().out
    # the Qwen2 checkpoint with LLaVA-Med's CLIP folder as its tower: weights from there
    out = tmp_path / "out-tower"
    assert main(["convert", str(source), str(out), "--vision-tower", str(clip)]) == 0
    record = json.loads((out / RECORD_NAME).read_text())
    assert record["vision_weights_from"] == "tower" and record["tower_files"]
    converted = {}
    for path in weight_files(out):
        converted.update(load_file(path))
    clip_state = load_file(clip / "model.safetensors")
    torch.testing.assert_close(
        converted["model.vision_tower.post_layernorm.weight"],
        clip_state["vision_model.post_layernorm.weight"],
    )
    assert main(["convert", str(mistral), str(tmp_path / "out")]) == 2  # not empty
    assert "not empty" in capsys.readouterr().err
    vit = next((source / "vit").iterdir())  # config and preprocessor only
    assert main(["convert", str(source), str(tmp_path / "o3"), "--vision-tower", str(vit)]) == 2
    assert "has no weights" in capsys.readouterr().err


def test_convert_help_documents_it(capsys):
    assert main(["convert", "--help"]) == 0
    text = capsys.readouterr().out
    for phrase in ("--vision-tower DIR", "llava_qwen2", "llava_mistral", "<image>", "sha256"):
        assert phrase in text


@pytest.mark.parametrize("family", ORIGINAL_FAMILIES)
def test_extract_on_an_original_folder(family, tmp_path):
    from vgutils.results import load_metrics

    source = build_tiny(family, tmp_path / family)
    out = tmp_path / "run"
    args = ["--model", str(source), "--dataset", "sample-natural", "--limit", "2"]
    assert main(["extract", *args, "--out", str(out)]) == 0
    assert load_metrics(out)["sample_id"].nunique() >= 1


def test_copy_of_converted_folder_loads_without_vgutils_cache(tmp_path, vlms):
    """The converted folder is a plain transformers checkpoint."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    folder = tmp_path / "copy"
    shutil.copytree(vlms["llava_qwen2"].model.name_or_path, folder)
    model = AutoModelForImageTextToText.from_pretrained(folder)
    processor = AutoProcessor.from_pretrained(folder, backend="pil")
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert model.config.vgutils_family == "llava_qwen2"
    assert processor.num_additional_image_tokens == 1
    assert type(processor.image_processor).__name__ == "LlavaImageProcessorPil"

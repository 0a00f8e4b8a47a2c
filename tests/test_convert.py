"""Original-format LLaVA (HuatuoGPT-Vision-7B, LLaVA-Med, LLaVA-Tri with and without S2):
conversion, equivalence with an independent forward of the original architecture, key
errors, preprocessing, cache, CLI."""

import json
import math
import shutil
import warnings
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
from vgutils.models.tiny import build_tiny, tiny_family
from vgutils.models.tiny_original import ORIGINAL_FAMILIES

LLAVA_TINY = ["llava_qwen2", "llava_mistral", "llava_llama", "llava_llama-no-s2"]
"""The tiny original-format LLaVA builds (``llava_llama``: LLaVA-Tri with S2)."""

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
    """Qwen2 / Mistral / LlamaForCausalLM with the ``model.*`` + ``lm_head`` keys."""
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    config_class, model_class = {
        "llava_qwen2": (Qwen2Config, Qwen2ForCausalLM),
        "llava_mistral": (MistralConfig, MistralForCausalLM),
        "llava_llama": (LlamaConfig, LlamaForCausalLM),
    }[config["model_type"]]
    skip = ("architectures", "model_type", "s2", "s2_scales", "rope_scaling")
    kwargs = {k: v for k, v in config.items() if not k.startswith("mm_") and k not in skip}
    model = model_class(config_class(**kwargs, attn_implementation="eager")).eval()
    state = {
        k: v
        for k, v in original_state(source).items()
        if not k.startswith(("model.mm_projector.", "model.vision_tower."))
    }
    model.load_state_dict(state, strict=True)
    return model


LLAMA3_SYSTEM = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nA chat between a curious "
    "user and an artificial intelligence assistant. The assistant gives helpful, detailed, "
    "and polite answers to the user's questions.<|eot_id|>"
)


def llava_image_token_ids(tokenizer, prompt: str) -> tuple[list[int], list[int]]:
    """The original LLaVA code's ``tokenizer_image_token``: each chunk around ``<image>``
    tokenised on its own with the tokenizer's special tokens; when the first chunk starts
    with BOS that BOS is kept once and every chunk loses its first token. Returns the ids
    before and after the image."""
    chunks = [tokenizer(chunk)["input_ids"] for chunk in prompt.split("<image>")]
    assert len(chunks) == 2
    offset = int(bool(chunks[0]) and chunks[0][0] == tokenizer.bos_token_id)
    head = chunks[0][:1] if offset else []
    return head + chunks[0][offset:], chunks[1][offset:]


def original_prompt_ids(source, config: dict, text: str) -> tuple[list[int], list[int]]:
    """Token ids before / after the image placeholder, tokenised chunk by chunk without
    special tokens, as the original code does (one BOS first for Mistral); LLaVA-Tri with
    its ``llama3`` conversation through ``tokenizer_image_token``."""
    with warnings.catch_warnings():  # it reads config.json: Llama-3's "rope_scaling": null
        warnings.filterwarnings("ignore", "`rope_scaling` is deprecated", FutureWarning)
        tokenizer = AutoTokenizer.from_pretrained(source)
    if config["model_type"] == "llava_llama":  # MPT separator style, roles with headers
        user = "<|start_header_id|>user<|end_header_id|>\n\n"
        assistant = "<|start_header_id|>assistant<|end_header_id|>\n\n"
        prompt = f"{LLAMA3_SYSTEM}{user}<image>\n{text}<|eot_id|>{assistant}"
        return llava_image_token_ids(tokenizer, prompt)
    if config["model_type"] == "llava_qwen2":
        before, after = "<|user|>\n", f"\n{text}\n<|assistant|>\n"
        head = []
    else:
        before, after = "[INST] ", f"\n{text} [/INST]"
        head = [tokenizer.bos_token_id]
    encode = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    return head + encode(before), encode(after)


def chessboard_split(x: torch.Tensor, n: int) -> torch.Tensor:
    """s2wrapper's ``split_chessboard``: n x n sub-squares stacked on the batch, row by
    row (written here with slices)."""
    h, w = x.shape[-2] // n, x.shape[-1] // n
    return torch.cat(
        [x[..., i * h : (i + 1) * h, j * w : (j + 1) * w] for i in range(n) for j in range(n)]
    )


def chessboard_merge(x: torch.Tensor, n: int) -> torch.Tensor:
    """s2wrapper's ``merge_chessboard`` (the inverse of :func:`chessboard_split`)."""
    b = x.shape[0] // (n * n)
    rows = [
        torch.cat([x[(i * n + j) * b : (i * n + j + 1) * b] for j in range(n)], -1)
        for i in range(n)
    ]
    return torch.cat(rows, dim=-2)


def s2_features(tower, pixels: torch.Tensor, scales: list[int]) -> torch.Tensor:
    """LLaVA's ``CLIPVisionTowerS2.forward``: ``multiscale_forward(forward_feature, images,
    img_sizes=scales, max_split_size=scales[0])``. ``tower(tiles)`` gives the tiles' patch
    features ``(B, side*side, C)``; every scale is area-pooled to the first scale's grid,
    the scales concatenated along the channels: ``(B, side*side, C * len(scales))``."""
    maps = []
    for size in scales:
        n = math.ceil(size / scales[0])
        x = F.interpolate(pixels.float(), size=size, mode="bicubic")
        out = tower(chessboard_split(x, n))
        side = int(out.shape[1] ** 0.5)
        out = out.reshape(out.shape[0], side, side, -1).permute(0, 3, 1, 2)  # b c h w
        maps.append(chessboard_merge(out, n))
    grid = maps[0].shape[-2]
    out = torch.cat([F.interpolate(m.float(), size=grid, mode="area") for m in maps], dim=1)
    return out.flatten(2).transpose(1, 2)


def config_s2_scales(config: dict) -> list[int] | None:
    if not config.get("s2"):
        return None
    return sorted(int(v) for v in config.get("s2_scales", "336,672,1008").split(","))


@torch.no_grad()
def original_forward(source, image: Image.Image, text: str, select_layer=None, scales=None):
    """Logits and eager attentions of the original architecture, and the image span.
    ``select_layer`` / ``scales``: other values than the config's (the tests show a
    changed one gives other outputs)."""
    config = json.loads((source / "config.json").read_text())
    state = original_state(source)
    vision = original_vision(source, config)
    layer = config["mm_vision_select_layer"] if select_layer is None else select_layer
    scales = config_s2_scales(config) if scales is None else scales

    def tower(x):  # the original CLIPVisionTower.forward_feature: patch features of a layer
        return vision(x, output_hidden_states=True).hidden_states[layer][:, 1:]

    if scales:  # S2: the padded image preprocessed at the largest scale
        features = s2_features(tower, original_pixels(image, scales[-1]), scales)
    else:
        features = tower(original_pixels(image, vision.config.image_size))
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


QUESTION = "Is there a lesion in the liver? Answer the question using a single word or phrase."


@pytest.mark.parametrize("family", LLAVA_TINY)
def test_converted_equals_independent_original_forward(family, vlms):
    vlm = vlms[family]
    source = Path(resolve(f"tiny:{family}"))
    image = scene()
    logits, attentions, span, text_ids = original_forward(source, image, QUESTION)

    prepared = vlm.prepare(image, "Is there a lesion in the liver?")
    ids = prepared.inputs["input_ids"][0].numpy()
    np.testing.assert_array_equal(prepared.image_positions, span)  # same splice position
    np.testing.assert_array_equal(np.delete(ids, span), text_ids)  # same prompt tokens
    with torch.no_grad():
        converted = vlm.model(**prepared.inputs).logits[0]
    vocab = logits.shape[-1]
    assert logits.abs().max() > 1.0  # not a degenerate comparison
    torch.testing.assert_close(converted[:, :vocab], logits, rtol=0, atol=1e-5)

    maps = vlm.attention_maps(prepared, ("last",))["last"]  # (layers, heads, N)
    expected = attentions[:, :, -1, span].numpy()
    assert expected.std() > 1e-3  # far from uniform: a wrong mapping would show
    np.testing.assert_allclose(maps, expected, atol=1e-5)
    print(  # the numbers the README quotes
        f"{family}: max |logits diff| {(converted[:, :vocab] - logits).abs().max():.2e}, "
        f"max |last-row attention diff| {np.abs(maps - expected).max():.2e}"
    )


def test_llava_tri_mistakes_change_the_outputs(vlms):
    """The comparison above would catch a converter that took another vision layer or
    left out an S2 scale (the independent forward with that mistake differs)."""
    vlm = vlms["llava_llama"]
    source = Path(resolve("tiny:llava_llama"))
    image = scene()
    prepared = vlm.prepare(image, "Is there a lesion in the liver?")
    with torch.no_grad():
        converted = vlm.model(**prepared.inputs).logits[0]
    logits, *_ = original_forward(source, image, QUESTION)
    vocab = logits.shape[-1]
    torch.testing.assert_close(converted[:, :vocab], logits, rtol=1e-4, atol=1e-4)
    for mistake in ({"select_layer": -1}, {"scales": [64, 128, 128]}, {"scales": [64, 64, 192]}):
        wrong, *_ = original_forward(source, image, QUESTION, **mistake)
        assert (converted[:, :vocab] - wrong).abs().max() > 1e-2, mistake
    assert vlm.model.config.s2_scales == [64, 128, 192]
    assert type(vlm.model).__name__ == "LlavaS2ForConditionalGeneration"
    plain = vlms["llava_llama-no-s2"]
    assert type(plain.model).__name__ == "LlavaForConditionalGeneration"


def test_llava_tri_top_right_box_lights_the_tokens_the_original_puts_there(vlms):
    """A white box at the top right of a black, non-square image. The original S2 path
    (tiles at every scale, merged back, area-pooled), with a tower that only reports how
    white each patch is, lights some tokens; they are exactly the tokens of the layout
    over the box (which the converted model's prompt uses, checked equal above)."""
    vlm = vlms["llava_llama"]
    image = Image.new("RGB", (300, 150), "black")
    box = np.array([225, 0, 300, 75])  # the image's top-right quarter of its right half
    ImageDraw.Draw(image).rectangle([225, 0, 299, 74], fill="white")
    prepared = vlm.prepare(image, "Where is the box?")
    patch = 8  # the tiny tower's patch

    def whiteness(tiles):  # (B, 3, 64, 64) -> (B, 64 patches, 1): mean brightness
        rgb = tiles * torch.tensor(CLIP_STD)[:, None, None] + torch.tensor(CLIP_MEAN)[:, None, None]
        gray = rgb.mean(1)
        b, h, w = gray.shape
        cells = gray.reshape(b, h // patch, patch, w // patch, patch).mean((2, 4))
        return cells.reshape(b, -1, 1)

    pixels = original_pixels(image, 192)
    torch.testing.assert_close(prepared.inputs["pixel_values"], pixels, rtol=0, atol=0)
    lit = (s2_features(whiteness, pixels, [64, 128, 192])[0] > 0.75).any(-1).numpy()
    from vgutils.metrics import gt_mask

    truth = gt_mask(prepared.layout, box)
    assert truth.sum() == 4 and lit.sum() == 4
    np.testing.assert_array_equal(lit, truth)
    top_right = np.zeros((8, 8), dtype=bool)
    top_right[2:4, 6:8] = True  # padded to 300 x 300 (image rows 75-224): cells of 37.5 px
    np.testing.assert_array_equal(truth, top_right.ravel())


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


@pytest.mark.parametrize("family", LLAVA_TINY)
def test_prompt_is_the_models_own(family, vlms):
    vlm = vlms[family]
    prepared = vlm.prepare(scene(), "Is there a cat?")
    text = "Is there a cat? Answer the question using a single word or phrase."
    if family == "llava_qwen2":
        assert prepared.prompt == f"<|user|>\n<image>\n{text}\n<|assistant|>\n"
    elif family == "llava_mistral":
        assert prepared.prompt == f"[INST] <image>\n{text} [/INST]"
    else:  # LLaVA-Tri's llama3 conversation
        user = "<|start_header_id|>user<|end_header_id|>\n\n"
        assistant = "<|start_header_id|>assistant<|end_header_id|>\n\n"
        assert prepared.prompt == f"{LLAMA3_SYSTEM}{user}<image>\n{text}<|eot_id|>{assistant}"
    ids = prepared.inputs["input_ids"][0].tolist()
    bos = vlm.processor.tokenizer.bos_token_id
    if family == "llava_mistral":  # exactly one BOS, first
        assert ids[0] == bos and ids.count(bos) == 1
    if tiny_family(family) == "llava_llama":  # two BOS, as the original code's prompt
        assert ids[:2] == [bos, bos] and ids.count(bos) == 2
    assert len(prepared.image_positions) == 64  # (64 / 8)^2: the CLS token is dropped
    tokenizer = vlm.processor.tokenizer
    assert tokenizer.convert_ids_to_tokens(vlm.image_token_id) == "<image>"
    assert "<|user|>" not in tokenizer.get_vocab()  # plain text, as in the real tokenizer


@pytest.mark.parametrize("family", LLAVA_TINY)
def test_pixels_equal_expand2square_then_clip(family, vlms):
    vlm = vlms[family]
    processor = vlm.processor.image_processor
    assert type(processor).__name__ == "LlavaImageProcessorPil" and processor.do_pad
    size = 192 if family == "llava_llama" else 64  # S2: the largest scale
    for width, height in ((150, 90), (60, 170), (77, 77)):
        image = scene(width, height, seed=width)
        ours = processor(image, return_tensors="pt")["pixel_values"]
        torch.testing.assert_close(ours, original_pixels(image, size), rtol=0, atol=0)


@pytest.mark.parametrize("family", ["llava_qwen2", "llava_mistral", "llava_llama-no-s2"])
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


def test_hub_id_with_a_subfolder_loads(tmp_path, monkeypatch):
    """LLaVA-Tri's repository holds one fine-tune per benchmark in subfolders: the id
    ``org/name/SLAKE`` downloads that subfolder only, converts it and records it."""
    import huggingface_hub
    import transformers.utils

    from vgutils.runner import model_identity

    commit = "89abcdef0123456789abcdef0123456789abcdef"
    snapshot = tmp_path / "hub" / "models--UCSC-VLAA--LLaVA-Med-pp" / "snapshots" / commit
    build_tiny("llava_llama", snapshot / "SLAKE")
    asked = []

    def download(repo, name, subfolder=None, **kwargs):
        asked.append((repo, subfolder, name))
        return str(snapshot / (subfolder or "") / name)

    def snapshot_download(repo, allow_patterns=(), **kwargs):
        asked.append((repo, tuple(allow_patterns)))
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(transformers.utils, "cached_file", download)
    vlm = load_model("UCSC-VLAA/LLaVA-Med-pp/SLAKE", device="cpu")
    assert vlm.family == "llava_llama"
    assert ("UCSC-VLAA/LLaVA-Med-pp", "SLAKE", "config.json") in asked
    patterns = next(a[1] for a in asked if len(a) == 2)
    assert patterns and all(p.startswith("SLAKE/") for p in patterns)
    record = json.loads(open(f"{vlm.model.name_or_path}/{RECORD_NAME}").read())
    assert record["source"] == "UCSC-VLAA/LLaVA-Med-pp/SLAKE" and record["revision"] == commit
    identity = model_identity("UCSC-VLAA/LLaVA-Med-pp/SLAKE")
    assert identity["model_revision"] == commit


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

"""Tiny models of every family: loading, exact attention capture, processor geometry."""

import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from transformers import AutoModelForImageTextToText, LlavaImageProcessor

from vgutils.metrics import gt_mask
from vgutils.models import GENERIC_QUESTION, load_model
from vgutils.models.tiny import TINY_FAMILIES, build_tiny, tiny_family
from vgutils.models.tiny_original import LLAVA_FAMILIES, ORIGINAL_FAMILIES

FAMILIES = list(TINY_FAMILIES)


def noise_image(width=160, height=90, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8))


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_build_is_small_deterministic_and_complete(family, tmp_path):
    a = build_tiny(family, tmp_path / "a", seed=3)
    b = build_tiny(family, tmp_path / "b", seed=3)
    size = sum(p.stat().st_size for p in a.rglob("*") if p.is_file())
    assert size < 2 * 1024 * 1024
    shards = sorted(p.name for p in a.glob("*.safetensors"))
    assert shards and shards == sorted(p.name for p in b.glob("*.safetensors"))
    for shard in shards:
        assert (a / shard).read_bytes() == (b / shard).read_bytes()
    names = {p.name for p in a.iterdir()}
    if tiny_family(family) in ORIGINAL_FAMILIES:  # original format: no processor, no template
        assert len(shards) == 3 and "model.safetensors.index.json" in names
        assert json.loads((a / "config.json").read_text())["model_type"] == tiny_family(family)
        return
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    assert "chat_template.jinja" in names or "chat_template" in json.dumps(
        json.loads((a / "processor_config.json").read_text())
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_loads_through_from_pretrained_with_capture_attention(family, vlms):
    vlm = vlms[family]
    assert vlm.family == tiny_family(family)
    assert vlm.model.config.get_text_config()._attn_implementation == "vgutils"
    assert vlm.num_layers == 3 and vlm.num_heads == 4


@pytest.mark.parametrize("family", FAMILIES)
def test_capture_equals_eager_output_attentions(family, vlms):
    vlm = vlms[family]
    prepared = vlm.prepare(noise_image(), "Is there a cat in the image?")
    maps = vlm.attention_maps(prepared)
    eager = AutoModelForImageTextToText.from_pretrained(
        vlm.model.name_or_path, attn_implementation="eager"
    )
    with torch.no_grad():
        out = eager(**prepared.inputs, output_attentions=True)
    att = torch.stack([a[0] for a in out.attentions]).numpy()  # (layers, heads, q, kv)
    cols = prepared.image_positions
    reference = {
        "last": att[:, :, -1, cols],
        "question": att[:, :, prepared.query_positions["question"]][..., cols].mean(axis=2),
        "all": att[..., cols].mean(axis=2),
    }
    for strategy, expected in reference.items():
        got = maps[strategy]
        assert got.shape == (vlm.num_layers, vlm.num_heads, len(cols))
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=strategy)
    np.testing.assert_array_equal(vlm.attention(prepared, "last"), maps["last"])


@pytest.mark.parametrize("family", FAMILIES)
def test_capture_leaves_logits_unchanged(family, vlms):
    from vgutils.models.attention import capture

    vlm = vlms[family]
    prepared = vlm.prepare(noise_image(seed=1), "Does this image show a kidney?")
    with torch.no_grad():
        plain = vlm.model(**prepared.inputs).logits
        with capture(prepared.query_positions, prepared.image_positions):
            captured = vlm.model(**prepared.inputs).logits
    torch.testing.assert_close(captured, plain, rtol=0, atol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_positions(family, vlms):
    vlm = vlms[family]
    prepared = vlm.prepare(noise_image(), "Is there a lesion in the liver?")
    ids = prepared.inputs["input_ids"][0].numpy()
    image_tokens = np.flatnonzero(ids == vlm.image_token_id)  # placed or not (newlines)
    placed = np.delete(image_tokens, list(prepared.layout.unplaced))
    np.testing.assert_array_equal(prepared.image_positions, placed)
    assert prepared.layout.n_tokens == len(prepared.image_positions)
    assert prepared.layout.prompt_tokens == len(image_tokens)
    np.testing.assert_array_equal(prepared.query_positions["last"], [len(ids) - 1])
    question = prepared.query_positions["question"]
    assert question[0] == image_tokens[-1] + 1 and question[-1] == len(ids) - 1
    np.testing.assert_array_equal(question, np.arange(question[0], len(ids)))
    np.testing.assert_array_equal(prepared.query_positions["all"], np.arange(len(ids)))
    # the question text sits in those rows, after the image
    text_after = vlm.processor.decode(ids[question])
    assert "Is there a lesion in the liver?" in text_after
    assert "Answer the question using a single word or phrase." in text_after
    assert prepared.prompt.count("Is there a lesion in the liver?") == 1


@pytest.mark.parametrize("family", FAMILIES)
def test_generic_prompt(family, vlms):
    vlm = vlms[family]
    prepared = vlm.prepare_generic(noise_image())
    assert GENERIC_QUESTION in prepared.prompt


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_is_greedy_and_deterministic(family, vlms):
    vlm = vlms[family]
    prepared = vlm.prepare(noise_image(), "Is there a cat?")
    first = vlm.generate(prepared, max_new_tokens=4)
    assert isinstance(first, str)
    assert vlm.generate(prepared, max_new_tokens=4) == first


# --- geometry round trip: which tokens' pixels are bright for a white box on black ---


def token_brightness(vlm, prepared) -> np.ndarray:
    """Mean brightness in [0, 1] of the pixels each image token sees, in prompt order."""
    pixels = prepared.inputs["pixel_values"].float()
    lo, hi = pixels.min(), pixels.max()
    pixels = ((pixels - lo) / (hi - lo)).numpy()
    layout = prepared.layout
    if vlm.family in ("qwen2_5_vl", "qwen3_vl"):
        merge = vlm.processor.image_processor.merge_size
        return pixels.reshape(layout.n_tokens, merge * merge, -1).mean(axis=(1, 2))
    if vlm.family == "llava_next":
        return llava_next_brightness(vlm, prepared, pixels)
    values = []
    for tile, (_, rows, cols), order in zip(pixels, layout.grids, layout.orders, strict=True):
        gray = tile.mean(axis=0)
        h, w = gray.shape
        blocks = gray.reshape(rows, h // rows, cols, w // cols).mean(axis=(1, 3))
        values.append((blocks.T if order == "column" else blocks).ravel())
    return np.concatenate(values)


def llava_next_brightness(vlm, prepared, pixels) -> np.ndarray:
    """LLaVA-NeXT: each tile's patch brightness put in prompt order by the model's own
    ``pack_image_features`` (base grid, then the unpadded high-resolution grid with a
    newline value of -1 ending each row); the newlines are then dropped, as the layout
    leaves them out."""
    patch = vlm.processor.patch_size
    tiles = pixels[0].mean(axis=1)  # (tiles, h, w)
    n, h, w = tiles.shape
    per_patch = tiles.reshape(n, h // patch, patch, w // patch, patch).mean(axis=(2, 4))
    features = torch.from_numpy(per_patch.reshape(n, -1, 1))
    packed, _ = vlm.model.model.pack_image_features(
        [features], prepared.inputs["image_sizes"], "default", torch.tensor([-1.0])
    )
    values = packed[0][:, 0].numpy()
    unplaced = np.zeros(len(values), dtype=bool)
    unplaced[list(prepared.layout.unplaced)] = True
    assert np.all(values[unplaced] == -1) and np.all(values[~unplaced] >= 0)
    return values[~unplaced]


def fully_inside(layout, box):
    b = layout.boxes
    return (b[:, 0] >= box[0]) & (b[:, 1] >= box[1]) & (b[:, 2] <= box[2]) & (b[:, 3] <= box[3])


SIZES = {"square": (120, 120), "wide": (240, 120), "tall": (80, 240)}
CASES = [(f, s, False) for f in FAMILIES for s in SIZES] + [("llava", s, True) for s in SIZES]


@pytest.mark.parametrize(("family", "shape", "pad"), CASES)
def test_geometry_round_trip(family, shape, pad, vlms):
    vlm = vlms[family]
    width, height = SIZES[shape]
    if family == "qwen3_vl":  # 32-px cells: an 80-px wide image is only 2 tokens wide
        width, height = 2 * width, 2 * height
    box = np.array([0.2 * width, 0.3 * height, 0.9 * width, 0.85 * height]).round()
    image = Image.new("RGB", (width, height), "black")
    ImageDraw.Draw(image).rectangle([box[0], box[1], box[2] - 1, box[3] - 1], fill="white")
    original = vlm.processor.image_processor
    if pad:  # LLaVA-1.5's own transform: pad to square with the mean colour, then resize
        vlm.processor.image_processor = LlavaImageProcessor(
            size=original.size, crop_size=original.crop_size, do_pad=True
        )
    try:
        prepared = vlm.prepare(image, "Where is the box?")
    finally:
        vlm.processor.image_processor = original
    layout = prepared.layout
    bright = token_brightness(vlm, prepared) > 0.7
    truth = gt_mask(layout, box)
    inside = fully_inside(layout, box)
    assert inside.any(), "test box must fully cover some token"
    assert (~truth).any(), "test box must leave some token outside"
    np.testing.assert_array_equal(bright & ~truth, False, err_msg="bright token outside GT")
    np.testing.assert_array_equal(inside & ~bright, False, err_msg="covered token not bright")
    if pad or tiny_family(family) in LLAVA_FAMILIES:  # their own processor pads to square
        side = max(width, height)
        region = layout.grid_region()
        np.testing.assert_allclose(region[2] - region[0], side)
        np.testing.assert_allclose(region[3] - region[1], side)


def test_device_and_dtype_choice(monkeypatch):
    from vgutils import context
    from vgutils.models import loading

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert loading.placement("auto") == ("cpu", None)
    assert loading._torch_dtype("cpu", "auto") == torch.float32
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert loading.placement("auto") == ("cuda:0", None)  # explicit: never a bare "cuda"
    assert loading._torch_dtype("cuda:0", "auto") == torch.bfloat16
    with context.use(context.current().replace(local_rank=3, local_world=4)):  # a launcher
        assert loading.placement("auto") == ("cuda:3", None)
        assert loading.placement("cuda") == ("cuda:3", None)
    assert loading._torch_dtype("cuda:3", "float16") == torch.float16


def test_remote_code_needs_a_revision():
    with pytest.raises(ValueError, match="pinned revision"):
        load_model("some/remote-model", trust_remote_code=True)


def test_llava_next_row_ends_are_the_newline_embedding_and_not_in_n(vlms):
    """LLaVA-NeXT's image tokens include an image-newline token after each row of the
    high-resolution grid: the model puts its ``image_newline`` vector there, whatever the
    pixels. The layout lists exactly those tokens as unplaced, and they are not among the
    N tokens the attention is read from."""
    vlm = vlms["llava_next"]
    prepared = vlm.prepare(noise_image(150, 70), "Where is the box?")
    layout = prepared.layout
    ids = prepared.inputs["input_ids"][0].numpy()
    image_tokens = np.flatnonzero(ids == vlm.image_token_id)
    start, rows, cols = layout.grids[1]
    assert layout.unplaced == tuple(start + r * (cols + 1) + cols for r in range(rows))
    seen = {}

    def grab(module, args, kwargs):
        seen["embeds"] = kwargs["inputs_embeds"][0]

    handle = vlm.model.model.language_model.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            vlm.model(**prepared.inputs)
    finally:
        handle.remove()
    newline = vlm.model.model.image_newline.detach()
    is_newline = torch.all(seen["embeds"] == newline, dim=-1).numpy()
    np.testing.assert_array_equal(np.flatnonzero(is_newline), image_tokens[list(layout.unplaced)])
    assert not is_newline[prepared.image_positions].any()
    assert layout.n_tokens == len(prepared.image_positions) == len(image_tokens) - rows
    assert vlm.attention(prepared).shape[-1] == layout.n_tokens


def test_qwen3_vl_authors_cap_is_49_tokens_of_32_px():
    """The authors' Qwen pixel cap (50176 / 784) applies to Qwen3-VL too; with its 32-px
    cells (16-px patches merged 2 x 2) that is at most 49 image tokens."""
    from vgutils.protocols import QWEN_CAP, get_protocol
    from vgutils.runner import ExtractOptions, resolve_options

    assert get_protocol("authors").processor_kwargs_for("qwen3_vl") == QWEN_CAP
    options = resolve_options(ExtractOptions("tiny:qwen3_vl", "x", protocol="authors"))
    assert options.processor_kwargs == QWEN_CAP
    vlm = load_model("tiny:qwen3_vl", device="cpu", processor_kwargs=QWEN_CAP)
    for size in ((1500, 900), (900, 1500), (4000, 300), (224, 224)):
        layout = vlm.prepare(noise_image(*size), "Where?").layout
        _, rows, cols = layout.grids[0]
        assert layout.n_tokens == rows * cols <= 49
        assert rows * cols * 32 * 32 <= QWEN_CAP["max_pixels"]
    assert vlm.prepare(noise_image(1500, 900), "Where?").layout.grids[0][1:] == (5, 9)

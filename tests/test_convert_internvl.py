"""Original-format InternVL-Chat (MedRegA, ``internvl_chat``, ``ps_version`` v1 and v2):
conversion, equivalence with an independent forward of the original architecture written
here from the raw state dict (InternViT with its fused qkv, qk-norm over all heads,
RMSNorm and layer scale; InternVL-Chat's pixel shuffle; ``mlp1``; the Llama text model on
``inputs_embeds``), the token order of the v1 shuffle, preprocessing and prompt."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from safetensors.torch import load_file
from transformers import AutoTokenizer

from vgutils.metrics import gt_mask
from vgutils.models.original import ConversionError, convert, weight_files
from vgutils.models.sources import resolve
from vgutils.models.tiny import build_tiny

INTERNVL_TINY = ["internvl_chat", "internvl_chat-v2"]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
QUESTION = "Is there a lesion in the liver? Answer the question using a single word or phrase."


def scene(width=150, height=90, seed=0):
    rng = np.random.default_rng(seed)
    image = Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8))
    ImageDraw.Draw(image).rectangle([20, 10, 70, 60], fill="white")
    return image


def raw_state(folder: Path) -> dict[str, torch.Tensor]:
    state = {}
    for path in weight_files(folder):
        state.update(load_file(path))
    return state


# --- the original architecture, computed without the converter --------------------------


def build_transform_pixels(image: Image.Image, size: int) -> torch.Tensor:
    """InternVL-Chat's ``build_transform`` (not training, no pad2square): RGB, torchvision
    ``Resize((size, size), BICUBIC)``, ``ToTensor``, ImageNet ``Normalize``."""
    import torchvision.transforms as T
    from torchvision.transforms.functional import InterpolationMode

    transform = T.Compose(
        [
            T.Lambda(lambda img: img.convert("RGB") if img.mode != "RGB" else img),
            T.Resize((size, size), interpolation=InterpolationMode.BICUBIC),
            T.ToTensor(),
            T.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
        ]
    )
    return transform(image)[None]


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    variance = x.float().pow(2).mean(-1, keepdim=True)
    return weight * (x.float() * torch.rsqrt(variance + eps)).to(x.dtype)


def internvit(state: dict, config: dict, pixels: torch.Tensor) -> list[torch.Tensor]:
    """InternViT's hidden states (embeddings, then every layer's output) from the raw
    ``vision_model.*`` tensors."""
    w = {k[len("vision_model.") :]: v for k, v in state.items() if k.startswith("vision_model.")}
    eps, heads = config["layer_norm_eps"], config["num_attention_heads"]
    patch = F.conv2d(
        pixels,
        w["embeddings.patch_embedding.weight"],
        w["embeddings.patch_embedding.bias"],
        stride=config["patch_size"],
    )
    batch, width, rows, cols = patch.shape
    tokens = patch.flatten(2).transpose(1, 2)
    side = config["image_size"] // config["patch_size"]
    positions = w["embeddings.position_embedding"]
    grid = positions[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=(rows, cols), mode="bicubic", align_corners=False)
    positions = torch.cat([positions[:, :1], grid.reshape(1, width, -1).transpose(1, 2)], dim=1)
    x = torch.cat([w["embeddings.class_embedding"].expand(batch, 1, -1), tokens], 1) + positions
    hidden = [x]
    for i in range(config["num_hidden_layers"]):
        layer = {
            k.split(".", 3)[3]: v for k, v in w.items() if k.startswith(f"encoder.layers.{i}.")
        }
        p = layer.__getitem__
        h = rms_norm(x, p("norm1.weight"), eps)
        n = h.shape[1]
        qkv = F.linear(h, p("attn.qkv.weight")).reshape(batch, n, 3, heads, width // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        if config["qk_normalization"]:  # normed over all heads together
            q = rms_norm(q.transpose(1, 2).flatten(-2), p("attn.q_norm.weight"), eps)
            k = rms_norm(k.transpose(1, 2).flatten(-2), p("attn.k_norm.weight"), eps)
            q = q.view(batch, n, heads, -1).transpose(1, 2)
            k = k.view(batch, n, heads, -1).transpose(1, 2)
        scale = (width // heads) ** -0.5
        attention = ((q * scale) @ k.transpose(-2, -1)).softmax(-1)
        out = (attention @ v).transpose(1, 2).reshape(batch, n, width)
        x = x + F.linear(out, p("attn.proj.weight"), p("attn.proj.bias")) * p("ls1")
        h = rms_norm(x, p("norm2.weight"), eps)
        h = F.linear(h, p("mlp.fc1.weight"), p("mlp.fc1.bias"))
        h = F.linear(F.gelu(h), p("mlp.fc2.weight"), p("mlp.fc2.bias"))
        x = x + h * p("ls2")
        hidden.append(x)
    return hidden


def original_pixel_shuffle(x: torch.Tensor, version: str, scale: float = 0.5) -> torch.Tensor:
    """InternVL-Chat's ``pixel_shuffle`` on ``(n, w, h, c)`` (its names): ``v1`` does not
    swap height and width back."""
    n, w, h, c = x.size()
    x = x.view(n, w, int(h * scale), int(c / scale)).permute(0, 2, 1, 3).contiguous()
    x = x.view(n, int(h * scale), int(w * scale), int(c / (scale * scale)))
    return x if version == "v1" else x.permute(0, 2, 1, 3).contiguous()


def extract_feature(vit_hidden, config: dict, state: dict, select_layer=None, version=None):
    """InternVL-Chat's ``extract_feature``: the selected layer, CLS dropped, pixel shuffle,
    ``mlp1`` (LayerNorm, Linear, GELU, Linear)."""
    layer = config["select_layer"] if select_layer is None else select_layer
    x = vit_hidden[layer][:, 1:]
    side = int(x.shape[1] ** 0.5)
    x = x.reshape(x.shape[0], side, side, -1)
    x = original_pixel_shuffle(x, version or config["ps_version"], config["downsample_ratio"])
    x = x.reshape(x.shape[0], -1, x.shape[-1])
    x = F.layer_norm(x, x.shape[-1:], state["mlp1.0.weight"], state["mlp1.0.bias"])
    x = F.gelu(F.linear(x, state["mlp1.1.weight"], state["mlp1.1.bias"]))
    return F.linear(x, state["mlp1.3.weight"], state["mlp1.3.bias"])


def hermes_query(text: str, image_tokens: str) -> str:
    """The ``Hermes-2`` conversation (MPT separators) with ``<image>\\n`` before the question,
    ``<image>`` replaced as InternVL-Chat's ``chat`` does."""
    question = f"<image>\n{text}".replace("<image>", image_tokens, 1)
    return (
        "<|im_start|>system\nAnswer the questions.<|im_end|>"
        f"<|im_start|>user\n{question}<|im_end|><|im_start|>assistant\n"
    )


@torch.no_grad()
def original_forward(source: Path, image: Image.Image, text: str, **mistake):
    """Logits and eager attentions of the original model, its prompt ids and image span."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = json.loads((source / "config.json").read_text())
    state = raw_state(source)
    vision = config["vision_config"]
    pixels = build_transform_pixels(image, config["force_image_size"])
    vit_embeds = extract_feature(internvit(state, vision, pixels), config, state, **mistake)
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
    image_tokens = "<img>" + "<IMG_CONTEXT>" * vit_embeds.shape[1] + "</img>"
    ids = tokenizer(hermes_query(text, image_tokens))["input_ids"]
    context = tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    llm = {
        k: v for k, v in config["llm_config"].items() if k not in ("architectures", "model_type")
    }
    llm.pop("rope_scaling", None)
    model = LlamaForCausalLM(LlamaConfig(**llm, attn_implementation="eager")).eval()
    model.load_state_dict(
        {
            k[len("language_model.") :]: v
            for k, v in state.items()
            if k.startswith("language_model.")
        },
        strict=True,
    )
    ids_tensor = torch.tensor([ids])
    embeds = model.get_input_embeddings()(ids_tensor)
    selected = ids_tensor[0] == context
    embeds[0, selected] = vit_embeds.reshape(-1, embeds.shape[-1])
    out = model(inputs_embeds=embeds, output_attentions=True)
    span = np.flatnonzero(selected.numpy())
    return out.logits[0], torch.stack([a[0] for a in out.attentions]), span, ids, pixels


@pytest.mark.parametrize("family", INTERNVL_TINY)
def test_converted_equals_independent_original_forward(family, vlms):
    vlm = vlms[family]
    source = Path(resolve(f"tiny:{family}"))
    image = scene()
    logits, attentions, span, ids, pixels = original_forward(source, image, QUESTION)

    prepared = vlm.prepare(image, "Is there a lesion in the liver?")
    np.testing.assert_array_equal(prepared.inputs["input_ids"][0].numpy(), ids)  # same prompt
    np.testing.assert_array_equal(prepared.image_positions, span)
    torch.testing.assert_close(prepared.inputs["pixel_values"], pixels, rtol=0, atol=1e-6)
    with torch.no_grad():
        converted = vlm.model(**prepared.inputs).logits[0]
    assert logits.abs().max() > 1.0  # not a degenerate comparison
    torch.testing.assert_close(converted, logits, rtol=0, atol=1e-5)
    maps = vlm.attention_maps(prepared, ("last",))["last"]
    expected = attentions[:, :, -1, span].numpy()
    assert expected.std() > 1e-3
    np.testing.assert_allclose(maps, expected, atol=1e-5)
    print(
        f"{family}: max |logits diff| {(converted - logits).abs().max():.2e}, "
        f"max |last-row attention diff| {np.abs(maps - expected).max():.2e}"
    )


def test_mistakes_change_the_outputs(vlms):
    """The comparison above would catch a converter that took another vision layer or
    the other pixel shuffle (the independent forward with that mistake differs)."""
    vlm = vlms["internvl_chat"]
    source = Path(resolve("tiny:internvl_chat"))
    image = scene()
    prepared = vlm.prepare(image, "Is there a lesion in the liver?")
    with torch.no_grad():
        converted = vlm.model(**prepared.inputs).logits[0]
    for mistake in ({"select_layer": -2}, {"version": "v2"}):
        wrong, *_ = original_forward(source, image, QUESTION, **mistake)
        assert (converted - wrong).abs().max() > 1e-2, mistake
    assert type(vlm.model).__name__ == "InternVLV1ForConditionalGeneration"
    assert type(vlms["internvl_chat-v2"].model).__name__ == "InternVLForConditionalGeneration"


def patch_whiteness(pixels: torch.Tensor, patch: int) -> torch.Tensor:
    """A stand-in for the ViT that only reports how white each patch is: ``(B, 1 + P, 1)``
    (a CLS slot first, then the patches row by row, as the patch embedding orders them)."""
    rgb = (
        pixels * torch.tensor(IMAGENET_STD)[:, None, None]
        + torch.tensor(IMAGENET_MEAN)[:, None, None]
    )
    gray = rgb.mean(1)
    b, h, w = gray.shape
    cells = gray.reshape(b, h // patch, patch, w // patch, patch).mean((2, 4)).reshape(b, -1, 1)
    return torch.cat([torch.zeros(b, 1, 1), cells], dim=1)


@pytest.mark.parametrize("family", INTERNVL_TINY)
def test_top_right_box_lights_the_tokens_the_original_puts_there(family, vlms):
    """A white box at the top right of a black, non-square image. Through the original
    code's pixel shuffle (v1 for MedRegA) each image token holds 2 x 2 patches; the tokens
    whose patches are white are exactly the layout's tokens over the box. A row-major
    layout of the v1 grid lights the bottom-left instead."""
    vlm = vlms[family]
    image = Image.new("RGB", (240, 120), "black")
    box = np.array([180, 0, 240, 30])  # the top-right token of the 4 x 4 grid
    ImageDraw.Draw(image).rectangle([180, 0, 239, 29], fill="white")
    prepared = vlm.prepare(image, "Where is the box?")
    config = json.loads((Path(resolve(f"tiny:{family}")) / "config.json").read_text())
    patch = config["vision_config"]["patch_size"]
    pixels = prepared.inputs["pixel_values"]
    cells = patch_whiteness(pixels, patch)[:, 1:]
    side = int(cells.shape[1] ** 0.5)
    shuffled = original_pixel_shuffle(cells.reshape(1, side, side, 1), config["ps_version"])
    lit = (shuffled.reshape(-1, 4) > 0.75).any(-1).numpy()
    truth = gt_mask(prepared.layout, box)
    assert lit.sum() == 1 and truth.sum() == 1
    np.testing.assert_array_equal(lit, truth)
    k = int(np.flatnonzero(truth)[0])
    assert k == (12 if config["ps_version"] == "v1" else 3)  # column-major: (row 0, col 3)
    if config["ps_version"] == "v1":  # a row-major reading puts token 12 at the bottom left
        from vgutils.geometry import TokenLayout

        row_major = TokenLayout.from_grid(4, 4, prepared.layout.image_size)
        assert not gt_mask(row_major, box)[k]
        np.testing.assert_allclose(row_major.boxes[k], [0, 90, 60, 120])


def test_column_major_grid_values_and_scaled_layout(vlms):
    vlm = vlms["internvl_chat"]
    prepared = vlm.prepare(scene(), "Where?")
    layout = prepared.layout
    assert layout.orders == ("column",)
    grid = layout.grid_values(np.arange(16))
    assert grid[0, 3] == 12 and grid[3, 0] == 3  # token k at row k % 4, column k // 4
    for k in range(16):
        r, c = k % 4, k // 4
        np.testing.assert_allclose(
            layout.boxes[k], [c * 37.5, r * 22.5, (c + 1) * 37.5, (r + 1) * 22.5]
        )
    scaled = vlm.prepare(scene(), "Where?", box_mapping="scaled").layout  # one resized tile
    np.testing.assert_allclose(scaled.boxes, layout.boxes)
    assert scaled.orders == ("column",)


@pytest.mark.parametrize("family", INTERNVL_TINY)
def test_prompt_and_tokens(family, vlms):
    vlm = vlms[family]
    prepared = vlm.prepare(scene(), "Is there a cat?")
    text = "Is there a cat? Answer the question using a single word or phrase."
    assert prepared.prompt == hermes_query(text, "<IMG_CONTEXT>")
    ids = prepared.inputs["input_ids"][0].tolist()
    tokenizer = vlm.processor.tokenizer
    start, end = tokenizer.convert_tokens_to_ids(["<img>", "</img>"])
    first = int(prepared.image_positions[0])
    assert (
        ids[first - 1] == start and ids[first + 16] == end and len(prepared.image_positions) == 16
    )
    config = vlm.model.config
    assert config.vision_feature_layer == -1 and config.vgutils_family == "internvl_chat"
    assert vlm.image_token_id == tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    assert vlm.image_token_id < vlm.model.get_input_embeddings().weight.shape[0]


def test_unsupported_settings_stop_the_conversion(tmp_path):
    source = build_tiny("internvl_chat", tmp_path / "src")
    config = json.loads((source / "config.json").read_text())
    for key, value in (
        ("template", "internlm2-chat"),
        ("dynamic_image_size", True),
        ("ps_version", "v3"),
    ):
        (source / "config.json").write_text(json.dumps({**config, key: value}))
        with pytest.raises(ConversionError, match=key):
            convert(source, tmp_path / "out")
    (source / "config.json").write_text(json.dumps(config))
    state_path = weight_files(source)[0]
    state = load_file(state_path)
    from safetensors.torch import save_file

    key = next(k for k in state if k.endswith("attn.qkv.weight"))
    state[key] = state[key][:-1]
    save_file(state, state_path, {"format": "pt"})
    with pytest.raises(ConversionError, match="qkv"):
        convert(source, tmp_path / "out2")

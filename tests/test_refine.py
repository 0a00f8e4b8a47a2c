"""VGRefine: head ranking, knockout as an exact attention edit (prompt and KV cache)."""

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from vgutils.models.attention import capture
from vgutils.models.tiny import TINY_FAMILIES
from vgutils.refine import answer, knockout, rank_heads, text_rows_after_image, triage


def image(seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((80, 120, 3)) * 255).astype(np.uint8))


def test_rank_heads_hand_made():
    frame = pd.DataFrame(
        {
            "sample_id": [0, 1] * 4,
            "layer": [0, 0, 0, 0, 1, 1, 1, 1],
            "head": [0, 0, 1, 1, 0, 0, 1, 1],
            "attention_ratio": [1.0, 3.0, 2.5, 2.5, 4.0, 0.0, 1.0, 1.0],
            "kl": [0.5, 0.5, 0.1, 0.3, 0.9, 0.9, 0.2, 0.2],
        }
    )
    # ratio means: (0,0)=2.0 (0,1)=2.5 (1,0)=2.0 (1,1)=1.0; tie (0,0)/(1,0): lower layer first
    assert rank_heads(frame, "attention_ratio", top_k=3) == [(0, 1), (0, 0), (1, 0)]
    # kl means: (0,0)=.5 (0,1)=.2 (1,0)=.9 (1,1)=.2 -> lower is better, tie by layer
    assert rank_heads(frame, "kl", top_k=2) == [(0, 1), (1, 1)]
    with pytest.raises(ValueError, match="unknown metric"):
        rank_heads(frame, "accuracy")


def all_columns(prepared):
    return np.arange(prepared.inputs["input_ids"].shape[1])


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_knockout_is_exact_on_the_prompt(family, vlms):
    vlm = vlms[family]
    prepared = vlm.prepare(image(), "Is there a lesion in the liver?")
    rows = text_rows_after_image(prepared)
    keys = prepared.image_positions[::3]
    columns = all_columns(prepared)
    with torch.no_grad():
        before_logits = vlm.model(**prepared.inputs).logits
        with capture({"rows": rows}, columns) as plain:
            vlm.model(**prepared.inputs)
        with knockout(vlm, [1], rows, keys), capture({"rows": rows}, columns) as edited:
            vlm.model(**prepared.inputs)
        after_logits = vlm.model(**prepared.inputs).logits
    torch.testing.assert_close(after_logits, before_logits, rtol=0, atol=0)
    masked = edited.maps["rows"][1][0]  # (heads, columns): mean over the rows
    assert torch.all(masked[:, keys] == 0)
    torch.testing.assert_close(masked.sum(-1), torch.ones(vlm.num_heads), rtol=0, atol=1e-5)
    torch.testing.assert_close(edited.maps["rows"][0], plain.maps["rows"][0], rtol=0, atol=0)
    assert not torch.allclose(edited.maps["rows"][2], plain.maps["rows"][2])  # downstream


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_knockout_holds_for_generated_tokens(family, vlms):
    vlm = vlms[family]
    prepared = vlm.prepare(image(1), "What colour is the square?")
    rows = text_rows_after_image(prepared)
    keys = prepared.image_positions[1::2]
    length = prepared.inputs["input_ids"].shape[1]
    with torch.no_grad(), knockout(vlm, [0, 2], rows, keys, include_generated=True):
        generated = vlm.model.generate(**prepared.inputs, max_new_tokens=3, do_sample=False)
        # the same greedy tokens without the cache: the edit acts on every generated row
        sequence = prepared.inputs["input_ids"]
        extra = {
            k: v for k, v in prepared.inputs.items() if k not in ("input_ids", "attention_mask")
        }
        for _ in range(3):
            inputs = {"input_ids": sequence, "attention_mask": torch.ones_like(sequence), **extra}
            for key in ("token_type_ids", "mm_token_type_ids"):
                if key in extra:
                    inputs[key] = torch.nn.functional.pad(
                        extra[key], (0, sequence.shape[1] - length)
                    )
            logits = vlm.model(**inputs).logits[:, -1]
            sequence = torch.cat([sequence, logits.argmax(-1, keepdim=True)], dim=1)
        # a KV-cache step: the first generated token's attention
        out = vlm.model(**prepared.inputs, use_cache=True)
        step = {
            "input_ids": generated[:, length : length + 1],
            "attention_mask": torch.ones((1, length + 1), dtype=torch.long),
        }
        for key in ("token_type_ids", "mm_token_type_ids"):
            if key in extra:
                step[key] = torch.zeros((1, 1), dtype=torch.long)
        if vlm.adapter.position_ids(vlm.model, prepared.inputs) is not None:
            positions = vlm.adapter.position_ids(vlm.model, prepared.inputs)
            step["position_ids"] = positions[..., -1:] + 1
        with capture({"new": np.array([length])}, np.arange(length + 1)) as recorder:
            vlm.model(**step, cache=out.cache)
    np.testing.assert_array_equal(generated.numpy(), sequence.numpy())
    for layer in (0, 2):
        weights = recorder.maps["new"][layer][0]
        assert torch.all(weights[:, keys] == 0)
        torch.testing.assert_close(weights.sum(-1), torch.ones(vlm.num_heads), atol=1e-5, rtol=0)
    assert torch.all(recorder.maps["new"][1][0][:, keys] > 0)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_no_masked_keys_gives_the_baseline_answer(family, vlms):
    vlm = vlms[family]
    heads = [(0, 0), (1, 2)]
    result = answer(
        vlm,
        image(2),
        "Is there a cat?",
        heads,
        layers=range(vlm.num_layers),
        percentile=0,
        max_new_tokens=4,
    )
    assert not result.triage.low.any()
    assert result.answer == result.baseline_answer
    np.testing.assert_allclose(result.map_after, result.map_before, rtol=1e-5)


def test_triage_marks_the_lower_percentile(vlms):
    vlm = vlms["llava"]
    found = triage(vlm, image(3), "Is there a cat?", [(0, 1), (2, 3)], percentile=80)
    n = len(found.relevance)
    assert found.low.sum() == int(np.ceil(0.8 * n)) - 1 or found.low.sum() == int(0.8 * n)
    assert found.relevance[found.low].max() < found.relevance[~found.low].min()


def test_triage_reuses_a_precomputed_generic_map(vlms):
    vlm = vlms["qwen2_5_vl"]
    picture = image(4)
    generic = vlm.attention(vlm.prepare_generic(picture), "last")
    shared = triage(vlm, picture, "Is there a cat?", [(1, 0), (2, 1)], generic_heads=generic)
    alone = triage(vlm, picture, "Is there a cat?", [(1, 0), (2, 1)])
    np.testing.assert_allclose(shared.relevance, alone.relevance, rtol=1e-5)
    np.testing.assert_array_equal(shared.low, alone.low)

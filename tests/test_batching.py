"""Several images per prefix forward, and each image preprocessed once."""

import numpy as np
import pytest
import torch
from family_cases import family_strategy_cases
from PIL import Image

from vgutils.models.prefix import batched_prefix_attention, prefix_signature
from vgutils.models.tiny import TINY_FAMILIES

QUESTIONS = ["Is there a cat?", "Does this image show a kidney in the abdomen?", "Why?"]


def picture(seed: int, size=(150, 70)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8))


def groups_for(vlm, images, questions=QUESTIONS):
    return [
        [vlm.prepare(image, q) for q in questions] + [vlm.prepare_generic(image)]
        for image in images
    ]


@pytest.mark.parametrize(("family", "strategy"), family_strategy_cases())
def test_batched_images_equal_one_by_one(family, strategy, vlms):
    vlm = vlms[family]
    # three images of one size (one batched prefix forward), then one of another size
    images = [picture(seed) for seed in range(3)] + [picture(9, size=(90, 120))]
    questions = [QUESTIONS, QUESTIONS[:2], QUESTIONS[1:], QUESTIONS]
    groups = [
        [vlm.prepare(image, q) for q in qs] + [vlm.prepare_generic(image)]
        for image, qs in zip(images, questions, strict=True)
    ]
    signatures = [prefix_signature(g) for g in groups]
    assert signatures[0] == signatures[1] == signatures[2] is not None
    batched = batched_prefix_attention(vlm, groups, strategy, batch_size=4)
    for prompts, maps in zip(groups, batched, strict=True):
        assert len(maps) == len(prompts)
        for prepared, got in zip(prompts, maps, strict=True):
            np.testing.assert_allclose(got, vlm.attention(prepared, strategy), atol=1e-6)


def test_images_of_one_batch_do_not_see_each_other(vlms):
    """Swapping the other images of the batch changes nothing for the first one."""
    vlm = vlms["llava"]
    first = groups_for(vlm, [picture(0)])[0]
    with_a = batched_prefix_attention(vlm, [first, *groups_for(vlm, [picture(1)])], "last")
    with_b = batched_prefix_attention(vlm, [first, *groups_for(vlm, [picture(2)])], "last")
    for a, b in zip(with_a[0], with_b[0], strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_the_image_processor_runs_once_per_image(family, vlms):
    vlm = vlms[family]
    cache = vlm.image_cache
    image = picture(5)
    before = cache.calls
    prompts = [vlm.prepare(image, q) for q in QUESTIONS] + [vlm.prepare_generic(image)]
    assert cache.calls == before + 1
    # a copy with the same pixels is the same image; other pixels are another one
    vlm.prepare(image.copy(), "Is there a dog?")
    assert cache.calls == before + 1
    vlm.prepare(picture(6), "Is there a dog?")
    assert cache.calls == before + 2
    # another image processor (or another setting of it) is another computation
    original = vlm.processor.image_processor
    vlm.processor.image_processor = type(original).from_dict(original.to_dict())
    try:
        vlm.prepare(image, "Is there a dog?")
    finally:
        vlm.processor.image_processor = original
    assert cache.calls == before + 3
    # the cached inputs are exactly those of an uncached call
    saved, cache.size = cache.size, 0
    try:
        plain = vlm.prepare(image, QUESTIONS[0])
    finally:
        cache.size = saved
    assert plain.inputs.keys() == prompts[0].inputs.keys()
    for key, value in plain.inputs.items():
        assert torch.equal(value, prompts[0].inputs[key]), key


@pytest.mark.parametrize("family", ["llava", "qwen2_5_vl"])
def test_extract_with_image_batches_and_a_loader_equals_the_plain_run(family, tmp_path):
    import pandas as pd

    from vgutils.results import load_metrics
    from vgutils.runner import ExtractOptions, extract

    options = ExtractOptions(model=f"tiny:{family}", dataset="sample-natural", heads=True)
    extract(options, tmp_path / "plain", progress=False)
    summary = extract(
        options, tmp_path / "fast", image_batch=4, loader_threads=1, batch_size=3, progress=False
    )
    assert summary.computed > 0
    for kind in ("metrics", "head_metrics"):
        pd.testing.assert_frame_equal(
            load_metrics(tmp_path / "fast", kind),
            load_metrics(tmp_path / "plain", kind),
            check_exact=False,
            atol=1e-6,
        )

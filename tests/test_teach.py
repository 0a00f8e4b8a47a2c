"""The teaching model: scenes, datasets, training (smoke recipe, byte-identical twice), and
(slow) acceptance."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from vgutils.data import load_dataset
from vgutils.metrics import gt_mask
from vgutils.models import load_model
from vgutils.teach.scenes import COLOURS, make_scene
from vgutils.teach.train import (
    COLOUR_CLASSES,
    KINDS,
    SMOKE,
    is_current,
    patch_labels,
    question_targets,
    train_teaching_model,
)


def test_scenes_are_deterministic_with_exact_boxes():
    first = make_scene("natural", np.random.default_rng(5))
    again = make_scene("natural", np.random.default_rng(5))
    assert np.array_equal(np.asarray(first.image), np.asarray(again.image))
    colours = [o["colour"] for o in first.objects]
    assert len(set(colours)) == len(colours) and set(colours) <= set(COLOURS)
    for obj in first.objects:
        ys, xs = np.nonzero(obj["mask"])
        assert obj["boxes"] == [[xs.min(), ys.min(), xs.max() + 1.0, ys.max() + 1.0]]
        pixels = np.asarray(first.image)[obj["mask"]]
        assert np.all(pixels == COLOURS[obj["colour"]])


def test_questions_match_the_scene():
    rng = np.random.default_rng(11)
    for _ in range(20):
        scene = make_scene("medical", rng)
        present = {o["kind"] for o in scene.objects}
        for q in scene.questions:
            organ = q.question.rstrip("?").split()[-1]
            if q.q_type == "localization":
                assert (q.answer == "yes") == (organ in present) == q.grounded
            else:
                assert organ in present and q.grounded


def test_patch_labels_mark_the_object_patches():
    scene = make_scene("natural", np.random.default_rng(2))
    kinds, colours = patch_labels(scene)
    assert kinds.shape == (49,) and (kinds > 0).sum() > 0
    assert ((kinds > 0) == (colours > 0)).all()


def test_question_targets_name_the_object_and_colour_asked():
    assert question_targets("Is the square red?") == (
        KINDS.index("square"),
        COLOUR_CLASSES.index("red"),
    )
    assert question_targets("What colour is the triangle?") == (KINDS.index("triangle"), 0)
    assert question_targets("Is there a lesion in the kidney?") == (KINDS.index("kidney"), 0)
    assert question_targets("Write a general description of the image.") == (0, 0)
    assert COLOUR_CLASSES[question_targets("Is the circle yellow?")[1]] == "yellow"


def test_teach_datasets_load_with_boxes():
    natural = load_dataset("teach-natural")
    medical = load_dataset("teach-medical")
    assert len(natural) > 100 and len(medical) > 100
    assert {s.q_type for s in natural} == {"localization", "attribute"}
    kidney = next(s for s in medical if "kidney" in s.question)
    assert len(kidney.boxes) == 2  # one organ, two boxes


def test_smoke_training_is_byte_identical_and_loads(tmp_path):
    """Same recipe, same machine: the same bytes (fixed threads, deterministic kernels,
    seeded generators), and the caller's torch settings are left as they were."""
    threads = torch.get_num_threads()
    a = train_teaching_model(tmp_path / "a", SMOKE, progress=False)
    b = train_teaching_model(tmp_path / "b", SMOKE, progress=False)
    assert torch.get_num_threads() == threads
    assert not torch.are_deterministic_algorithms_enabled()
    for name in ("model.safetensors", "tokenizer.json", "config.json", "recipe.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "training_log.csv").read_text().count("\n") == SMOKE.steps + SMOKE.warmup_steps + 1
    assert is_current(a, SMOKE) and not is_current(a, replace(SMOKE, seed=1))
    (a / "recipe.json").write_text("{")  # a broken record counts as stale, not as an error
    assert not is_current(a, SMOKE)
    vlm = load_model("tiny:teach-smoke")  # built on first use through the same path
    sample = load_dataset("teach-natural")[0]
    from vgutils.data import load_image

    prepared = vlm.prepare(load_image(sample.image_path), sample.question)
    assert gt_mask(prepared.layout, sample.boxes).any()
    assert isinstance(vlm.generate(prepared, 2), str)


@pytest.mark.slow
def test_teaching_model_acceptance():
    """The default recipe (minutes): natural accuracy >= 90%, best-layer ratio >= 2."""
    from vgutils.teach.evaluate import heldout_accuracy, query_following, query_following_summary

    vlm = load_model("tiny:teach", device="cpu")
    assert heldout_accuracy(vlm, "natural", 60)["correct"].mean() >= 0.9
    summary = query_following_summary(query_following(vlm, 60))
    assert summary["ratio_queried"] >= 2 > summary["ratio_others"]

"""The teaching model: scenes, datasets, training (smoke recipe, byte-identical twice), the
pinned copy and its registry, the acceptance tables, and (slow) the pinned model's
acceptance."""

import json
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from vgutils.data import load_dataset
from vgutils.data.manifest import read_registry, sha256
from vgutils.errors import DataError
from vgutils.metrics import gt_mask
from vgutils.models import load_model
from vgutils.teach.scenes import COLOURS, ORGANS, make_scene
from vgutils.teach.train import (
    COLOUR_CLASSES,
    GRID,
    KINDS,
    SMOKE,
    Recipe,
    box_cells,
    build_model,
    build_processor,
    grounding_loss,
    is_current,
    layers_grounding_loss,
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


def test_question_only_accuracy_by_hand(monkeypatch):
    """Two texts: "A?" answered yes, yes, no (majority 2 of 3), "B?" no (1 of 1): 3/4."""
    from types import SimpleNamespace

    from vgutils.teach import evaluate

    def scene(*pairs):
        return SimpleNamespace(questions=[SimpleNamespace(question=q, answer=a) for q, a in pairs])

    scenes = [scene(("A?", "yes"), ("B?", "no")), scene(("A?", "yes")), scene(("A?", "no"))]
    monkeypatch.setattr(evaluate, "heldout_scenes", lambda domain, count: scenes)
    assert evaluate.question_only_accuracy("medical", 3) == 0.75


def test_question_targets_name_the_object_and_colour_asked():
    assert question_targets("Is the square red?") == (
        KINDS.index("square"),
        COLOUR_CLASSES.index("red"),
    )
    assert question_targets("What colour is the triangle?") == (KINDS.index("triangle"), 0)
    assert question_targets("Is there a lesion in the kidney?") == (KINDS.index("kidney"), 0)
    assert question_targets("Write a general description of the image.") == (0, 0)
    assert COLOUR_CLASSES[question_targets("Is the circle yellow?")[1]] == "yellow"
    # organs=False: an organ is named as nothing, a shape still by its name
    assert question_targets("Is there a lesion in the kidney?", organs=False) == (0, 0)
    assert question_targets("Is the square red?", organs=False) == question_targets(
        "Is the square red?"
    )


def test_box_cells_follow_the_gt_mask_rule():
    """Cells overlapping a box with positive area, by hand and as ``gt_mask`` marks them."""
    cells = box_cells([[16.0, 0.0, 33.0, 16.0]]).reshape(GRID, GRID)
    assert cells.sum() == 2 and cells[0, 1] == cells[0, 2] == 1  # x 33 reaches cell 2
    assert box_cells([[0.0, 0.0, 16.0, 16.0], [100.0, 100.0, 112.0, 112.0]]).sum() == 2
    vlm = load_model("tiny:teach", device="cpu")
    for seed in range(6):
        scene = make_scene("natural", np.random.default_rng(seed))
        layout = vlm.prepare(scene.image, "Is there a circle in the image?").layout
        for obj in scene.objects:
            assert np.array_equal(
                box_cells(obj["boxes"]).astype(bool), gt_mask(layout, obj["boxes"])
            )


def test_encoded_turns_carry_their_grounding_targets():
    """Per turn: the asked object's cells on natural scenes; for an absent object's
    question, per ``absent_target``, nothing, every object's cells to stay off, or an even
    spread; nothing on medical scenes."""
    from vgutils.models.vlm import ANSWER_INSTRUCTION, GENERIC_QUESTION
    from vgutils.teach.train import (
        TARGET_BOX,
        TARGET_NONE,
        TARGET_OFF,
        TARGET_UNIFORM,
        encode_scene,
    )

    tokenizer = build_processor().tokenizer
    scene = next(
        s
        for seed in range(50)
        if len((s := make_scene("natural", np.random.default_rng(seed))).objects) == 2
    )
    union = box_cells([box for obj in scene.objects for box in obj["boxes"]])
    none = np.zeros(GRID * GRID)
    absent_expected = {
        "none": (TARGET_NONE, none),
        "off-objects": (TARGET_OFF, union),
        "uniform": (TARGET_UNIFORM, none),
    }
    boxes = {q.question: q.boxes for q in scene.questions}
    kinds_seen = set()
    for absent_target, absent_pair in absent_expected.items():
        ids, _, queries = encode_scene(
            tokenizer, scene, np.random.default_rng(0), 12, absent_target=absent_target
        )
        for position, _, _, aim, *cells in queries:
            prefix = tokenizer.decode(ids[: position + 1])
            asked = max([*boxes, GENERIC_QUESTION], key=prefix.rfind)  # the turn's question
            assert prefix.rfind(asked) >= 0, prefix
            kinds_seen.add("generic" if asked == GENERIC_QUESTION else bool(boxes[asked]))
            if asked == GENERIC_QUESTION:
                expected = (TARGET_NONE, none)
            elif boxes[asked]:
                expected = (TARGET_BOX, box_cells(boxes[asked]))
            else:
                expected = absent_pair
            assert aim == expected[0] and np.array_equal(cells, expected[1]), (asked, prefix)
    assert kinds_seen >= {True, False}  # grounded and absent-object turns both checked
    medical = make_scene("medical", np.random.default_rng(1))
    _, _, queries = encode_scene(
        tokenizer, medical, np.random.default_rng(0), 8, absent_target="uniform"
    )
    assert all(aim == TARGET_NONE and not any(cells) for _, _, _, aim, *cells in queries)
    named = {kind for _, kind, *_ in queries}
    assert named - {0} <= {KINDS.index(organ) for organ in ORGANS} and named - {0}
    _, _, unnamed = encode_scene(
        tokenizer, medical, np.random.default_rng(0), 8, name_organs=False
    )  # the question head names no organ
    assert {kind for _, kind, *_ in unnamed} == {0}
    aims = set()  # an even spread asked of every scan question, none of the generic prompt
    for seed in range(6):
        ids, _, spread = encode_scene(
            tokenizer, medical, np.random.default_rng(seed), 8, medical_target="uniform"
        )
        for position, _, _, aim, *cells in spread:
            generic = tokenizer.decode(ids[: position + 1]).endswith(
                f"{GENERIC_QUESTION} {ANSWER_INSTRUCTION} ASSISTANT:"
            )
            assert aim == (TARGET_NONE if generic else TARGET_UNIFORM) and not any(cells)
            aims.add(aim)
    assert aims == {TARGET_UNIFORM, TARGET_NONE}


def test_grounding_loss_by_hand():
    """One row of 2 text + 4 image tokens, two heads. At token 5 the heads put (0.4, 0.4,
    0.1, 0.1) and (0.2, 0.2, 0.3, 0.3) on the image: mean (0.3, 0.3, 0.2, 0.2). At token
    4 both put 0.25 on each image token."""
    from vgutils.teach.train import TARGET_BOX, TARGET_NONE, TARGET_OFF, TARGET_UNIFORM

    attentions = torch.zeros(1, 2, 6, 6)
    attentions[0, 0, 5, 2:] = torch.tensor([0.4, 0.4, 0.1, 0.1])
    attentions[0, 1, 5, 2:] = torch.tensor([0.2, 0.2, 0.3, 0.3])
    attentions[0, :, 4, 2:] = 0.25
    image = torch.tensor([[False, False, True, True, True, True]])
    rows, positions = torch.tensor([0, 0]), torch.tensor([5, 4])

    def loss(targets, cells):
        questions = (rows, positions, None, None, torch.tensor(targets), torch.tensor(cells))
        return grounding_loss(attentions, image, questions).item()

    box = [1.0, 1.0, 0.0, 0.0]
    zero = [0.0] * 4
    # a box at token 5 (share 0.6); the question at token 4 has no target
    assert loss([TARGET_BOX, TARGET_NONE], [box, zero]) == pytest.approx(-np.log(0.6))
    assert loss([TARGET_NONE, TARGET_NONE], [box, zero]) == 0.0
    # stay off tokens 0 and 3 at token 4: share off them 0.5
    off = [1.0, 0.0, 0.0, 1.0]
    assert loss([TARGET_NONE, TARGET_OFF], [zero, off]) == pytest.approx(-np.log(0.5))
    both = (-np.log(0.6) - np.log(0.5)) / 2
    assert loss([TARGET_BOX, TARGET_OFF], [box, off]) == pytest.approx(both)
    # an even spread: KL(uniform || p) is 0 at token 4 and, at token 5, the mean of
    # 0.25 log(0.25 / p) over p = 0.3, 0.3, 0.2, 0.2
    assert loss([TARGET_NONE, TARGET_UNIFORM], [zero, zero]) == pytest.approx(0.0, abs=1e-6)
    kl = 0.25 * sum(np.log(0.25 / p) for p in (0.3, 0.3, 0.2, 0.2))
    assert loss([TARGET_UNIFORM, TARGET_NONE], [zero, zero]) == pytest.approx(kl)
    # over layers: the mean of each layer's loss (layer 1 here: even attention, KL 0)
    targets = torch.tensor([TARGET_UNIFORM, TARGET_NONE])
    questions = (rows, positions, None, None, targets, torch.zeros(2, 4))
    even = torch.full_like(attentions, 1 / 6)
    layered = (even, attentions, even)
    assert layers_grounding_loss(layered, (1,), image, questions).item() == pytest.approx(kl)
    assert layers_grounding_loss(layered, (1, 2), image, questions).item() == pytest.approx(kl / 2)


@pytest.mark.parametrize("projector_frozen", [False, True])
def test_frozen_parts_keep_their_initial_weights(tmp_path, projector_frozen):
    """Without a warm-up, a frozen vision tower (and projector) is the initialisation's;
    what is not frozen trains."""
    recipe = replace(
        SMOKE,
        warmup_steps=0,
        steps=4,
        freeze_vision_tower=True,
        freeze_projector=projector_frozen,
        grounding_loss_weight=1.0,
        absent_target="uniform",
    )
    trained = load_model(str(train_teaching_model(tmp_path / "m", recipe, progress=False)))
    torch.manual_seed(recipe.seed)
    initial = build_model(build_processor().tokenizer, recipe.text_init_std).model
    after = trained.model.model
    for part in ("vision_tower", "multi_modal_projector", "language_model"):
        before = getattr(initial, part).state_dict()
        same = all(torch.equal(getattr(after, part).state_dict()[k], v) for k, v in before.items())
        frozen = part == "vision_tower" or (part == "multi_modal_projector" and projector_frozen)
        assert same == frozen, part
    log = pd.read_csv(tmp_path / "m" / "training_log.csv")
    assert (log["grounding_loss"] > 0).all()


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


def test_tiny_teach_is_the_verified_pinned_copy(monkeypatch):
    """``tiny:teach`` loads the pinned files through ``from_pretrained``, never trains."""
    from vgutils.models.loading import resolve
    from vgutils.teach import pinned, train

    def no_training(*args, **kwargs):
        raise AssertionError("tiny:teach must not train")

    monkeypatch.setattr(train, "train_teaching_model", no_training)
    assert Path(resolve("tiny:teach")) == pinned.PINNED_DIR
    names = set(read_registry(pinned.REGISTRY))
    assert {"model.safetensors", "config.json", "training_log.csv", "recipe.json"} <= names
    record = json.loads((pinned.PINNED_DIR / "recipe.json").read_text())
    current = json.loads(json.dumps(asdict(Recipe())))  # tuples as JSON lists
    assert record["seed"] == 0 and record == {**record, **current}
    vlm = load_model("tiny:teach", device="cpu")
    assert vlm.source == "tiny:teach" and vlm.num_layers == 3


def test_pinned_files_are_verified(tmp_path):
    from vgutils.teach.pinned import PINNED_DIR, REGISTRY, verify_pinned

    copy = tmp_path / "pinned"
    shutil.copytree(PINNED_DIR, copy)
    assert verify_pinned(copy) == copy
    config = copy / "config.json"
    expected = read_registry(REGISTRY)["config.json"][0]
    config.write_text(config.read_text().replace("128", "129", 1))
    with pytest.raises(DataError) as err:
        verify_pinned(copy)
    message = str(err.value)
    assert "\n" not in message and str(config) in message and expected in message
    assert sha256(config) in message
    config.unlink()
    with pytest.raises(DataError, match=r"config\.json: pinned teaching-model file missing"):
        verify_pinned(copy)
    shutil.copyfile(PINNED_DIR / "config.json", config)
    (copy / "stray.bin").write_bytes(b"x")
    with pytest.raises(DataError, match=r"stray\.bin: not in the pinned registry"):
        verify_pinned(copy)


def test_pin_takes_only_a_model_of_the_recipe(tmp_path):
    from vgutils.teach.pinned import pin

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "recipe.json").write_text(json.dumps({**asdict(SMOKE), "seed": 0}))
    with pytest.raises(DataError, match="not a model of the current recipe"):
        pin(tmp_path / "model", tmp_path / "pinned", tmp_path / "registry.txt")
    assert not (tmp_path / "pinned").exists()


def test_acceptance_table_and_seed_summary():
    from vgutils.teach.compare import comparison_table
    from vgutils.teach.evaluate import CRITERIA, MEASURES, passes
    from vgutils.teach.sweep import format_summary, parse_settings, verdict

    good = dict.fromkeys(MEASURES, 0.0) | {
        "accuracy_natural": 0.99,
        "accuracy_medical": 0.9,
        "ratio_natural": 4.0,
        "ratio_medical": 1.1,
        "ratio_queried": 3.5,
        "ratio_others": 0.6,
    }
    bad = good | {"ratio_medical": 1.5}
    assert all(passes(good).values()) and passes(bad) == dict.fromkeys(CRITERIA, True) | {
        "ratio_medical": False
    }
    table = comparison_table(bad, good)
    assert "| ratio_medical | <= 1.2 | 1.500 | 1.100 | +0.400 | NO | yes |" in table
    rows = [
        {"seed": s, **(good if s else bad)}
        | {f"pass_{k}": v for k, v in passes(good if s else bad).items()}
        | {"passes": bool(s)}
        for s in range(3)
    ]
    summary = format_summary(pd.DataFrame(rows))
    assert "| ratio_medical | 1.10 | 1.10 | 1.50 | <= 1.2 | 2/3 |" in summary
    assert "| all criteria |  |  |  |  | 2/3 |" in summary
    assert summary.endswith(
        "2 of 3 seeds meet every criterion (below the 80% asked); "
        "the criterion missed most: ratio_medical (1 of 3 seeds)."
    )
    assert (
        verdict(pd.DataFrame(rows[1:]))
        == "2 of 2 seeds meet every criterion (at least the 80% asked)."
    )
    assert parse_settings(["steps=900", "mc_share=0.5"]) == {"steps": 900, "mc_share": 0.5}
    assert parse_settings(["freeze_vision_tower=True"]) == {"freeze_vision_tower": True}
    assert parse_settings(["freeze_vision_tower=false"]) == {"freeze_vision_tower": False}
    assert parse_settings(["grounding_layers=1,2"]) == {"grounding_layers": (1, 2)}
    for wrong in (
        ["stepz=1"],
        ["freeze_vision_tower=no"],
        ["steps=many"],
        ["grounding_layers=1,x"],
    ):
        with pytest.raises(SystemExit, match="--set"):
            parse_settings(wrong)


@pytest.mark.slow
def test_teaching_model_acceptance():
    """The pinned model (minutes of evaluation): every acceptance criterion of
    :data:`vgutils.teach.evaluate.CRITERIA` on the held-out scenes."""
    from vgutils.teach.evaluate import acceptance, passes

    measures = acceptance(load_model("tiny:teach", device="cpu"), 60)
    assert passes(measures) == dict.fromkeys(passes(measures), True), measures


def test_readme_seed_table_is_the_recorded_sweep(capsys, monkeypatch):
    """README's seed spread is `sweep --summary-only` on the committed sweep record."""
    from vgutils.teach.sweep import main

    repo = Path(__file__).resolve().parents[1]
    readme = (repo / "README.md").read_text()
    block = readme.split("<!-- seeds:begin", 1)[1].split("-->", 1)[1]
    block = block.split("<!-- seeds:end -->", 1)[0]
    monkeypatch.chdir(repo)
    assert main(["--out", "docs/numbers/teach-seeds", "--summary-only"]) == 0
    assert block.strip() == capsys.readouterr().out.strip()
    recorded = pd.read_csv(repo / "docs/numbers/teach-seeds/seeds.csv")
    current = json.dumps(asdict(Recipe()), sort_keys=True)
    assert sorted(recorded["seed"]) == list(range(10))
    assert (recorded["recipe"] == current).all(), "the sweep record is another recipe's"
    trials = repo / "docs/numbers/teach-recipe-trials"
    listed = (trials / "README.md").read_text()
    for record in trials.glob("*.csv"):  # every trial is described
        assert f"| `{record.name}` |" in listed, record.name

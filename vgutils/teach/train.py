"""Train the teaching model: a tiny LLaVA (CLIP vision tower + Llama, transformers'
classes) trained from scratch on CPU, in which grounding is real.

Recipe (fixed steps; on one machine a seed gives the same bytes: ``threads`` fixed,
deterministic algorithms, seeded generators; another CPU sums in another order and gives
another model):
1. vision warm-up: the vision tower and projector learn per-patch labels (which object
   and which colour covers each 16 px patch, object patches weighted up) on the natural
   scenes, standing in for the pretrained CLIP that real LLaVA starts from;
2. LLaVA stage, the vision tower frozen (``freeze_vision_tower``, as LLaVA keeps its CLIP
   frozen): next-token loss on the answers (several questions per scene in one
   multi-turn sequence, the generic prompt answered with one fixed word), keeping the
   per-patch loss on the projected image features, plus a question head: from the
   language model's state after its first layer at each question's last prompt token, a
   linear probe names the object and the colour the question mentions (standing in for
   the pretrained language model that real LLaVA starts from, which already reads
   questions). Without it the answers that need question and image together (which
   object's colour, is *this* shape there) stay at chance: each alone carries no
   signal about the answer, so gradient descent finds only the image summary.
   A share ``mc_share`` of the turns asks the question in multiple-choice form
   (:func:`vgutils.benchmarks.mc_prompt_text`, options from
   :func:`vgutils.teach.datasets.mc_options`) and is answered with the option's letter, so
   the model can be scored under the benchmarks' protocol too.
   A grounding loss (``grounding_loss_weight``, :func:`grounding_loss`, at each layer of
   ``grounding_layers``) asks, on natural scenes, the last prompt token of each grounded
   question to put its attention over the image on the asked object's box, and of a
   question about an absent shape to spread it evenly: a crude stand-in for the
   region-level natural-image data (RefCOCO, Visual Genome) in LLaVA-1.5's training mix.
   On scans (``medical_target``) it asks every question to spread its attention evenly:
   the model is taught not to look there, so its medical side is a known negative.
The result is saved with ``save_pretrained`` and loads through ``load_model`` like any
checkpoint; ``training_log.csv`` beside it records the curve.

Two settings (issue #29) and why. With multiple-choice turns the acceptance contrast
became a matter of luck: the same recipe and seed gave a natural best-layer ratio of 3.41
trained with one thread and 1.76 in a fresh clone (torch's default threads: another float
order), and seeds 1 and 2 (one thread) gave 1.12 and 2.29.
The answers did not lose their grounding: the raw last-token map at layer 1 put 3.7 /
4.3 / 4.6 times its uniform share on the asked object's box on seeds 0 / 1 / 2; the
normalisation lost it. The method divides each question's map by the generic prompt's
map to cancel what the model looks at whatever is asked, and the recipe had made the
generic prompt a task of its own:

- ``generic_answer="fixed"`` (was ``"count"``): answered with the object count, the
  generic prompt learned to look at the objects and at almost nothing else (79-85% of
  its layer-1 attention on them, the median background token 0.002-0.007 of it, down to
  1e-4), so dividing by it divides the objects out and blows up stray background
  weights (45-69% of the normalised map on background on the failing seeds). The real
  generic prompt ("Write a general description of the image") asks for nothing in
  particular; answered with one word whatever the image (``GENERIC_FIXED``) it gives the
  model no reason to look anywhere of its own, so its map keeps only what every prompt
  shares. Answering with the kind of image (``"domain"``, tried) did not help: the model
  read it off the coloured objects (88% of the generic map on them).
- ``medical_patch_weight=0`` (was 1): the per-patch labels cover natural scenes only, in
  the warm-up and in the per-patch loss kept in the LLaVA stage. Real CLIP learned from
  web images, which name shapes and colours but hardly organs; labelling organs per
  patch gave the teaching model image tokens that name organs, and its medical questions
  found them (best-layer medical ratio 1.51 / 1.43 on seeds 0 / 1 of the old recipe,
  1.39 on seed 1 with the fixed generic answer). Organs are learnt from the answers alone,
  as a general model fine-tuned on few scans would.

With those two settings the contrast held on only 3 of 10 seeds (natural ratio below 3
on four, medical above 1.2 on four). The settings below make it hold across seeds. Every
recipe tried on the way is recorded in ``docs/numbers/teach-recipe-trials/`` (its
README names each file's recipe); the current recipe's own sweep is
``docs/numbers/teach-seeds/seeds.csv``.

- ``grounding_loss_weight=0.5`` at layer 1: the natural ratio is then set
  by the loss, not by luck (``grounding.csv``: 5.87 on seed 6, which had 2.73). Alone it
  also made the model look at organs when asked about one (medical ratio 2.33 on seed
  6): a "look at the thing named" circuit, once there, is used for any name.
- ``absent_target="uniform"``: the grounding loss also asks a natural question about a
  shape that is not there to spread its attention evenly over the image (``KL(uniform ||
  attention)``): with nothing to find, nowhere to look. Without it the medical ratio
  stayed a matter of luck whatever else changed: 0.75 to 1.87 over six seeds with the
  tower frozen and 5% scans (``grounding-frozen-tower-medical-0.05.csv``), and neither
  freezing the projector (seed 8: 1.81), a weaker loss (seed 8: 2.75), 2% scans (seed 4:
  1.67 frozen, 2.21 not) nor asking absent-shape questions to stay off the objects that
  are there (``grounding-off-objects*.csv``, seed 1: 1.30 and 1.43) removed it.
- ``freeze_vision_tower=True``: the LLaVA stage leaves the tower as the warm-up made it
  (shapes and colours, never organs), as LLaVA keeps its CLIP frozen
  (``grounding-frozen-tower.csv``: seed 6 medical 1.12 against 2.33 trained).
- ``warmup_steps=1800`` (was 1200): with the tower frozen, the warm-up is all the shape
  features the model gets; after 1200 steps it mixed up squares and circles (natural
  accuracy 96.5% on seed 1, 99.3% after 1800: ``grounding-off-objects*.csv``).
- ``medical_share=0.05`` (was 0.1): scans are rarer still. Alone its effect on the
  medical ratio was mixed (seed 8: 2.81 to 0.75, seed 3: 1.38 to 1.87); with it the
  medical accuracy is mostly what the question text alone predicts
  (:func:`vgutils.teach.evaluate.question_only_accuracy`; below it on seeds that look at
  organs): the model answers scans from the question, as the paper finds medical MLLMs
  often do.

With those settings (natural scenes supervised, scans given no signal) the contrast held
on 7 of 10 seeds (medical ratio 1.37 at layer 2, 2.01 and 1.21 at layer 1 on seeds 3, 6
and 8: an organ question can reuse the natural grounding circuit). Three more settings,
each tried on the recipe before (``docs/numbers/teach-recipe-trials/``, second table):

- ``question_head_organs=False``: the question head names the shape and the colour a
  question mentions but no organ, so nothing asks layer 1's state to say which organ is
  asked. Alone it did not stop organs being found (``question-head-no-organs.csv``:
  seed 6 1.24 at layer 1, seed 3 1.03); the two settings below were tried with it, so
  it stays, not shown to matter on its own.
- ``grounding_layers=(1, 2)``: layer 2, unsupervised, could ground organs on its own
  (seed 3 above). Supervised too, it still did on 1 of 6 seeds and layer 0 on another
  (``grounding-layers-1-2.csv``: seed 1 1.51 at layer 2, seed 3 1.21 at layer 0; 4 of 6
  seeds passed).
- ``medical_target="uniform"``: scan questions are asked to spread their attention
  evenly at the grounding layers, as absent-shape questions are. This trains the medical
  failure in; README's seeds table (``docs/numbers/teach-seeds/seeds.csv``) says on how
  many seeds every criterion then holds.

So both sides of the contrast are built in, by design: the natural grounding by the box
targets, the medical failure by the even-spread targets. The model is a known positive
and a known negative for the method to measure; it is not evidence for the paper's claim.
What the method reports beyond that comes from the method itself: layer 0, which no loss
touches, can put a scan's best-layer ratio above 1 through prompt length alone (its last
prompt token is the same token for every prompt, so its attention differs between prompts
only through the rotary position distances, and the organs sit in fixed places). Seed 3
gave 1.21 at layer 0 in ``grounding-layers-1-2.csv``, and 1.85 at layer 0 against 0.73
and 0.58 at layers 1 and 2 in ``grounding-frozen-tower-medical-0.05.csv``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from vgutils.benchmarks import LETTERS, mc_prompt_text
from vgutils.geometry import TokenLayout, grid_boxes
from vgutils.metrics import gt_mask
from vgutils.models.vlm import ANSWER_INSTRUCTION, GENERIC_QUESTION
from vgutils.teach.datasets import mc_options
from vgutils.teach.scenes import (
    COLOURS,
    ORGANS,
    SHAPES,
    SIZE,
    Scene,
    answer_texts,
    make_scene,
    question_texts,
)

PATCH = 16
GRID = SIZE // PATCH
KINDS = ("background", *SHAPES, *ORGANS)
COLOUR_CLASSES = ("none", *COLOURS)
GENERIC_ANSWERS = {"natural": "shapes", "medical": "scan"}
"""The generic prompt's answer with ``generic_answer="domain"``: what kind of image it is."""
GENERIC_FIXED = "image"
"""The generic prompt's answer with ``generic_answer="fixed"``: the same word for every image."""
TARGET_NONE, TARGET_BOX, TARGET_OFF, TARGET_UNIFORM = range(4)
"""Grounding-loss targets of a turn (:func:`encode_scene`, :func:`grounding_loss`)."""
CELLS = TokenLayout(grid_boxes(GRID, GRID, (0, 0, SIZE, SIZE)), ((0, GRID, GRID),), (SIZE, SIZE))
"""The teaching model's 7x7 grid of 16 px image tokens, row-major."""


@dataclass(frozen=True)
class Recipe:
    """Training settings. ``medical_share``: fraction of medical-domain scenes;
    ``object_patch_weight``: weight of patches covered by an object in the per-patch loss
    (background patches weigh 1; without it the tower learns colour but barely tells a
    square from a circle, since most patches are background); ``generic_answer``: the
    generic prompt's trained answer, ``fixed`` (one word), ``count`` (the object count,
    the recipe before issue #29) or ``domain`` (shapes / scan); ``medical_patch_weight``:
    weight of medical scenes in the per-patch loss (0: organs are not labelled per patch);
    ``grounding_loss_weight``: weight of :func:`grounding_loss` (0: none), on the
    attention of each layer in ``grounding_layers`` (averaged); ``absent_target``: what it
    asks of a natural question about an absent shape, ``uniform`` (an even spread),
    ``off-objects`` (stay off the objects there) or ``none``; ``medical_target``: what it
    asks of a question on a scan, ``uniform`` or ``none``; ``freeze_vision_tower`` /
    ``freeze_projector``: leave them as the warm-up made them in the LLaVA stage;
    ``question_head_organs``: whether the question head learns to name the organ a
    question mentions; ``threads``: torch's CPU threads while training (kernels split sums
    by it). The module docstring says why these values."""

    steps: int = 640
    warmup_steps: int = 1800
    batch_size: int = 24
    learning_rate: float = 2e-3
    medical_share: float = 0.05
    pool: int = 3000
    turns: int = 4
    lr_warmup: int = 20
    question_loss_weight: float = 1.0
    patch_loss_weight: float = 0.5
    object_patch_weight: float = 5.0
    text_init_std: float = 0.05
    mc_share: float = 0.25
    generic_answer: str = "fixed"
    medical_patch_weight: float = 0.0
    grounding_loss_weight: float = 0.5
    grounding_layers: tuple[int, ...] = (1, 2)
    freeze_vision_tower: bool = True
    freeze_projector: bool = False
    absent_target: str = "uniform"
    question_head_organs: bool = False
    medical_target: str = "uniform"
    seed: int = 0
    threads: int = 1


SMOKE = Recipe(steps=24, warmup_steps=8, batch_size=8, pool=48, lr_warmup=2)


def build_processor():
    """Processor with the teaching vocabulary: tokenizer trained on every question-answer
    turn as the model sees it, so each answer word is one token with its leading space."""
    from vgutils.models.tiny import LLAVA_SPECIAL_TOKENS, llava_processor
    from vgutils.models.tiny_parts import train_tokenizer

    corpus = [
        f"USER: {head}{question} {ANSWER_INSTRUCTION} ASSISTANT: {answer}"
        for head in ("<image>\n", "")
        for question in [*question_texts(), GENERIC_QUESTION]
        for answer in [*answer_texts(), *GENERIC_ANSWERS.values(), GENERIC_FIXED]
    ]
    corpus += [  # the multiple-choice form: letters as answers
        f"USER: {head}{mc_prompt_text(question, options)} ASSISTANT: {letter}"
        for head in ("<image>\n", "")
        for question in question_texts()
        for options in (["yes", "no"], list(COLOURS))
        for letter in LETTERS[: len(options)]
    ]
    tokenizer = train_tokenizer(*LLAVA_SPECIAL_TOKENS, vocab_size=700, corpus=corpus)
    return llava_processor(tokenizer, SIZE, PATCH)


def build_model(tokenizer, text_init_std: float = 0.02):
    """The teaching LLaVA: vision 128 wide x 2 layers, text 128 wide x 3 layers, the text
    weights initialised with standard deviation ``text_init_std``."""
    from transformers import LlavaForConditionalGeneration

    from vgutils.models.tiny import llava_config

    vision = {
        "hidden_size": 128,
        "intermediate_size": 384,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "image_size": SIZE,
        "patch_size": PATCH,
        "projection_dim": 128,
    }
    text = {
        "hidden_size": 128,
        "intermediate_size": 384,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "max_position_embeddings": 512,
        "initializer_range": text_init_std,
    }
    return LlavaForConditionalGeneration(
        llava_config(tokenizer, vision, text, vision_feature_layer=-1)
    )


def patch_labels(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """Per 16 px patch (row-major ``(49,)``): the object kind and colour at its centre."""
    kinds = np.zeros((GRID, GRID), dtype=np.int64)
    colours = np.zeros((GRID, GRID), dtype=np.int64)
    centres = np.arange(GRID) * PATCH + PATCH // 2
    for obj in scene.objects:
        hit = obj["mask"][np.ix_(centres, centres)]
        kinds[hit] = KINDS.index(obj["kind"])
        colours[hit] = COLOUR_CLASSES.index(obj.get("colour", "none"))
    return kinds.ravel(), colours.ravel()


def _turn_ids(tokenizer, question: str, first: bool, options: list[str] | None = None):
    """Token ids of one user turn: the question prompt, or with ``options`` its
    multiple-choice form."""
    head = "USER: <image>\n" if first else "USER: "
    text = mc_prompt_text(question, options) if options else f"{question} {ANSWER_INSTRUCTION}"
    return tokenizer(f"{head}{text} ASSISTANT:")["input_ids"]


def box_cells(boxes: list[list[float]]) -> np.ndarray:
    """``(49,)`` 0/1, row-major: the 16 px cells that :func:`vgutils.metrics.gt_mask`
    marks for ``boxes`` (xyxy, pixels)."""
    return gt_mask(CELLS, boxes).astype(float)


def question_targets(question: str, organs: bool = True) -> tuple[int, int]:
    """What the question head learns to name: the index in ``KINDS`` of the object the
    question mentions (0: none, e.g. the generic prompt; with ``organs`` false also for an
    organ) and in ``COLOUR_CLASSES`` of the colour it mentions (0: none, e.g. "What colour
    is ...")."""
    words = re.findall(r"[a-z]+", question.lower())
    named = KINDS[1:] if organs else SHAPES
    kind = next((KINDS.index(w) for w in words if w in named), 0)
    colour = next((COLOUR_CLASSES.index(w) for w in words if w in COLOUR_CLASSES[1:]), 0)
    return kind, colour


def encode_scene(
    tokenizer,
    scene: Scene,
    rng: np.random.Generator,
    turns: int,
    mc_share: float = 0.0,
    generic_answer: str = "count",
    absent_target: str = "uniform",
    name_organs: bool = True,
    medical_target: str = "none",
):
    """One multi-turn training sequence: ``(input_ids, labels, queries)`` with the image
    token expanded to the 49 patch tokens, loss only on answers (+ end of sequence), and
    per turn ``(position of its last prompt token, kind index, colour index, target,
    *cells)`` for the question head and the grounding loss. On a natural scene ``target``
    is :data:`TARGET_BOX` with ``cells`` (49 values) 1 on the asked object's box
    (:func:`box_cells`) for a grounded question; for a question about an absent object,
    with ``absent_target`` ``"off-objects"``, :data:`TARGET_OFF` with 1 on every object's
    cells, with ``"uniform"`` :data:`TARGET_UNIFORM` (cells 0). On a medical scene, with
    ``medical_target`` ``"uniform"``, every question but the generic prompt gets
    :data:`TARGET_UNIFORM`. Otherwise :data:`TARGET_NONE`. ``name_organs``: whether the
    question head's kind names an organ (:func:`question_targets`). A share ``mc_share``
    of the turns that have a multiple-choice form use it (answer: the option's letter).
    The generic prompt is answered with one fixed word (``generic_answer="fixed"``), the
    object count (``"count"``) or the kind of image (``"domain"``)."""
    # round-robin over the scene's objects, so one sequence asks about different objects
    # of the same image (only looking at the right one answers both), plus absent ones
    by_object: dict[str, list] = {}
    for q in scene.questions:
        key = str(q.boxes) if q.grounded else "absent"
        by_object.setdefault(key, []).append((q.question, q.answer, q.boxes))
    queues = [by_object[k] for k in rng.permutation(list(by_object))]
    queues = [[queue[i] for i in rng.permutation(len(queue))] for queue in queues]
    chosen = []
    while len(chosen) < turns and any(queues):
        for queue in queues:
            if queue and len(chosen) < turns:
                chosen.append(queue.pop())
    if rng.random() < 0.35:  # the generic prompt
        answer = {
            "count": scene.generic_answer,
            "domain": GENERIC_ANSWERS[scene.domain],
            "fixed": GENERIC_FIXED,
        }[generic_answer]
        chosen.insert(int(rng.integers(len(chosen) + 1)), (GENERIC_QUESTION, answer, []))
    ids, labels, queries = [], [], []
    image_id = tokenizer.image_token_id
    for index, (question, answer, boxes) in enumerate(chosen):
        options = mc_options(answer) if question != GENERIC_QUESTION else None
        if options and mc_share > 0 and rng.random() < mc_share:
            answer = LETTERS[options.index(answer)]
        else:
            options = None
        prompt = _turn_ids(tokenizer, question, first=index == 0, options=options)
        if index == 0:
            at = prompt.index(image_id)
            prompt = prompt[:at] + [image_id] * (GRID * GRID) + prompt[at + 1 :]
        target = tokenizer(f" {answer}")["input_ids"] + [tokenizer.eos_token_id]
        aim, cells = TARGET_NONE, np.zeros(GRID * GRID)
        if scene.domain == "natural" and boxes:
            aim, cells = TARGET_BOX, box_cells(boxes)
        elif scene.domain == "natural" and question != GENERIC_QUESTION:
            if absent_target == "off-objects":
                aim = TARGET_OFF
                cells = box_cells([box for obj in scene.objects for box in obj["boxes"]])
            elif absent_target == "uniform":
                aim = TARGET_UNIFORM
        elif scene.domain == "medical" and question != GENERIC_QUESTION:
            if medical_target == "uniform":
                aim = TARGET_UNIFORM
        position = len(ids) + len(prompt) - 1
        queries.append((position, *question_targets(question, name_organs), aim, *cells))
        ids += prompt + target
        labels += [-100] * len(prompt) + target
    return ids, labels, queries


class TrainingHeads(nn.Module):
    """Training-only linear probes (not saved with the model): projected image features to
    patch kind and colour; the language model's state at a question's last prompt token
    to the object and colour the question mentions."""

    def __init__(self, width: int):
        super().__init__()
        self.kind = nn.Linear(width, len(KINDS))
        self.colour = nn.Linear(width, len(COLOUR_CLASSES))
        self.question_kind = nn.Linear(width, len(KINDS))
        self.question_colour = nn.Linear(width, len(COLOUR_CLASSES))

    def question_loss(self, states, kinds, colours):
        """Cross-entropy of the question's object and colour; ``states``: ``(Q, width)``."""
        return nn.functional.cross_entropy(
            self.question_kind(states), kinds
        ) + nn.functional.cross_entropy(self.question_colour(states), colours)

    def loss(self, features, kinds, colours, object_weight: float = 1.0, scene_weights=None):
        """Per-patch cross-entropy of kind and colour, patches covered by an object
        weighted ``object_weight``, every patch of a scene by its ``scene_weights`` ``(B,)``
        (default 1). ``features``: ``(B, 49, width)``; labels ``(B, 49)``."""
        weights = torch.where(kinds > 0, object_weight, 1.0)
        if scene_weights is not None:
            weights = weights * scene_weights[:, None]
        flat = features.reshape(-1, features.shape[-1])
        kinds, colours, weights = kinds.reshape(-1), colours.reshape(-1), weights.reshape(-1)
        per_patch = nn.functional.cross_entropy(
            self.kind(flat), kinds, reduction="none"
        ) + nn.functional.cross_entropy(self.colour(flat), colours, reduction="none")
        return (per_patch * weights).sum() / weights.sum()


def _scene_pool(recipe: Recipe, processor):
    rng = np.random.default_rng([recipe.seed, 1])
    pool = []
    for _ in range(recipe.pool):
        domain = "medical" if rng.random() < recipe.medical_share else "natural"
        scene = make_scene(domain, rng)
        pixels = processor.image_processor(images=scene.image, return_tensors="pt")["pixel_values"][
            0
        ]
        kinds, colours = patch_labels(scene)
        pool.append((scene, pixels, torch.from_numpy(kinds), torch.from_numpy(colours)))
    return pool


def _batch(tokenizer, pool, rng, recipe: Recipe):
    picks = rng.integers(len(pool), size=recipe.batch_size)
    encoded = [
        encode_scene(
            tokenizer,
            pool[i][0],
            rng,
            recipe.turns,
            recipe.mc_share,
            recipe.generic_answer,
            recipe.absent_target,
            recipe.question_head_organs,
            recipe.medical_target,
        )
        for i in picks
    ]
    width = max(len(ids) for ids, _, _ in encoded)
    input_ids = torch.full((len(picks), width), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(picks), width), -100, dtype=torch.long)
    mask = torch.zeros((len(picks), width), dtype=torch.long)
    query_rows, query_targets = [], []
    for row, (ids, target, queries) in enumerate(encoded):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(ids)] = torch.tensor(target)
        mask[row, : len(ids)] = 1
        query_rows += [row] * len(queries)
        query_targets += queries
    targets = torch.tensor(query_targets, dtype=torch.float32).reshape(-1, 4 + GRID * GRID)
    questions = (
        torch.tensor(query_rows, dtype=torch.long),
        *targets[:, :4].long().unbind(1),
        targets[:, 4:],
    )
    return (
        {
            "input_ids": input_ids,
            "attention_mask": mask,
            "labels": labels,
            "pixel_values": torch.stack([pool[i][1] for i in picks]),
        },
        torch.stack([pool[i][2] for i in picks]),
        torch.stack([pool[i][3] for i in picks]),
        questions,
        torch.tensor(
            [recipe.medical_patch_weight if pool[i][0].domain == "medical" else 1.0 for i in picks]
        ),
    )


def grounding_loss(attentions, image: torch.Tensor, questions) -> torch.Tensor:
    """Mean over the questions with a target (:func:`encode_scene`) of: ``-log`` (share of
    the question's last-token attention over the image tokens, heads averaged, on the
    cells) for :data:`TARGET_BOX`; ``-log`` (share off the cells) for :data:`TARGET_OFF`;
    ``KL(uniform || attention)`` over the 49 image tokens for :data:`TARGET_UNIFORM`.
    ``attentions``: ``(B, heads, T, T)`` of one layer; ``image``: ``(B, T)`` bool, the 49
    image tokens of each row; ``questions``: rows, positions, kinds, colours, targets,
    cells ``(Q, 49)``."""
    rows, positions, _, _, targets, cells = questions
    counted = targets != TARGET_NONE
    if not counted.any():
        return attentions.new_zeros(())
    rows, positions, targets, cells = (
        rows[counted],
        positions[counted],
        targets[counted],
        cells[counted],
    )
    last = attentions[rows, :, positions].mean(1)  # (Q, T)
    on_image = last[image[rows]].reshape(len(rows), -1)  # (Q, 49)
    share = (on_image * cells).sum(1) / on_image.sum(1)
    share = torch.where(targets == TARGET_OFF, 1 - share, share)
    spread = on_image / on_image.sum(1, keepdim=True)
    uniform = -torch.log(spread.clamp_min(1e-12)).mean(1) - math.log(spread.shape[1])
    losses = torch.where(targets == TARGET_UNIFORM, uniform, -torch.log(share.clamp_min(1e-6)))
    return losses.mean()


def layers_grounding_loss(
    attentions, layers: tuple[int, ...], image: torch.Tensor, questions
) -> torch.Tensor:
    """The mean over ``layers`` of :func:`grounding_loss` on ``attentions[layer]``;
    ``attentions``: one ``(B, heads, T, T)`` per layer."""
    return torch.stack([grounding_loss(attentions[at], image, questions) for at in layers]).mean()


def _to(part, device: str):
    """A batch part (tensor, tuple of tensors or dict of tensors) on ``device``."""
    if isinstance(part, dict):
        return {key: value.to(device) for key, value in part.items()}
    if isinstance(part, tuple):
        return tuple(value.to(device) for value in part)
    return part.to(device)


def _learning_rate_factor(step: int, steps: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``steps``."""
    ramp = min(1.0, (step + 1) / max(warmup, 1))
    return ramp * 0.5 * (1 + math.cos(math.pi * min(step / max(steps, 1), 1)))


def training_fingerprint(recipe: Recipe) -> str:
    """sha256 of the recipe and of the sources that shape the trained model (scenes,
    training, the tiny LLaVA builder): a cached model with another fingerprint is stale."""
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256(json.dumps(asdict(recipe), sort_keys=True).encode())
    for path in (root / "scenes.py", root / "train.py", root.parent / "models" / "tiny.py"):
        digest.update(path.read_bytes())
    digest.update(mc_prompt_text("Q?", ["x", "y"]).encode())  # the multiple-choice prompt
    return digest.hexdigest()


def is_current(folder: Path, recipe: Recipe) -> bool:
    """Whether ``folder`` holds a model trained with ``recipe`` by the current sources."""
    try:
        built = json.loads((Path(folder) / "recipe.json").read_text())
    except (OSError, ValueError):
        return False
    return (Path(folder) / "config.json").exists() and built.get(
        "fingerprint"
    ) == training_fingerprint(recipe)


def train_teaching_model(
    out_dir: str | Path,
    recipe: Recipe | None = None,
    progress: bool = True,
    device: str = "cpu",
) -> Path:
    """Train with ``recipe`` (default :class:`Recipe`) on ``device`` and save into
    ``out_dir`` (model, processor, ``training_log.csv``, ``recipe.json``)."""
    recipe = recipe or Recipe()
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(recipe.threads)  # CPU kernels split their sums by thread count
    torch.use_deterministic_algorithms(True)
    try:
        with torch.random.fork_rng(devices=[]):  # the caller's torch generator is untouched
            torch.manual_seed(recipe.seed)  # the weights' initialisation, the only torch draw
            return _train(Path(out_dir), recipe, progress, device)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def _train(out_dir: Path, recipe: Recipe, progress: bool, device: str) -> Path:
    rng = np.random.default_rng([recipe.seed, 2])
    processor = build_processor()
    tokenizer = processor.tokenizer
    model = build_model(tokenizer, recipe.text_init_std)
    heads = TrainingHeads(model.config.text_config.hidden_size)
    model.to(device)
    heads.to(device)
    pool = _scene_pool(recipe, processor)
    captured = {}
    hook = model.model.multi_modal_projector.register_forward_hook(
        lambda module, args, output: captured.__setitem__("features", output)
    )
    log = []
    started = time.perf_counter()
    vision_params = [
        *model.model.vision_tower.parameters(),
        *model.model.multi_modal_projector.parameters(),
        *heads.parameters(),
    ]
    frozen = {
        *(model.model.vision_tower.parameters() if recipe.freeze_vision_tower else ()),
        *(model.model.multi_modal_projector.parameters() if recipe.freeze_projector else ()),
    }
    stages = (
        ("vision warm-up", recipe.warmup_steps, vision_params),
        (
            "llava",
            recipe.steps,
            [p for p in (*model.parameters(), *heads.parameters()) if p not in frozen],
        ),
    )
    if recipe.grounding_loss_weight > 0:
        model.set_attn_implementation("eager")  # the loss needs the attention weights
    model.train()
    bar = tqdm(
        total=recipe.warmup_steps + recipe.steps,
        desc="teaching model",
        unit="step",
        disable=not progress,
    )
    for stage, steps, params in stages:
        optimizer = torch.optim.AdamW(params, lr=recipe.learning_rate, weight_decay=0.01)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s, n=steps: _learning_rate_factor(s, n, recipe.lr_warmup)
        )
        for parameter in frozen:
            parameter.requires_grad_(stage == "vision warm-up")
        for _ in range(steps):
            batch, kinds, colours, questions, scene_weights = (
                _to(part, device) for part in _batch(tokenizer, pool, rng, recipe)
            )
            if stage == "vision warm-up":
                features = model.model.get_image_features(batch["pixel_values"]).pooler_output
                patch_loss = heads.loss(
                    torch.stack(list(features)),
                    kinds,
                    colours,
                    recipe.object_patch_weight,
                    scene_weights,
                )
                text_loss = question_loss = ground_loss = torch.zeros(())
                loss = patch_loss
            else:
                output = model(
                    **batch,
                    output_hidden_states=True,
                    output_attentions=recipe.grounding_loss_weight > 0,
                )
                patch_loss = heads.loss(
                    captured["features"], kinds, colours, recipe.object_patch_weight, scene_weights
                )
                text_loss = output.loss
                rows, positions, asked_kinds, asked_colours, _, _ = questions
                question_loss = heads.question_loss(
                    output.hidden_states[1][rows, positions], asked_kinds, asked_colours
                )
                ground_loss = (
                    layers_grounding_loss(
                        output.attentions,
                        recipe.grounding_layers,
                        batch["input_ids"] == tokenizer.image_token_id,
                        questions,
                    )
                    if recipe.grounding_loss_weight > 0
                    else torch.zeros(())
                )
                loss = (
                    text_loss
                    + recipe.patch_loss_weight * patch_loss
                    + recipe.question_loss_weight * question_loss
                    + recipe.grounding_loss_weight * ground_loss
                )
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            schedule.step()
            log.append(
                {
                    "stage": stage,
                    "step": len(log),
                    "loss": loss.item(),
                    "text_loss": text_loss.item(),
                    "patch_loss": patch_loss.item(),
                    "question_loss": question_loss.item(),
                    "grounding_loss": ground_loss.item(),
                    "seconds": time.perf_counter() - started,
                }
            )
            bar.update(1)
            bar.set_postfix(stage=stage, loss=f"{loss.item():.3f}")
    bar.close()
    hook.remove()
    for parameter in frozen:
        parameter.requires_grad_(True)
    model.set_attn_implementation("sdpa")
    model.to("cpu").eval()
    model.generation_config.do_sample = False
    model.generation_config.max_new_tokens = 4
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    with open(out_dir / "training_log.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(log[0]))
        writer.writeheader()
        writer.writerows(log)
    record = {**asdict(recipe), "fingerprint": training_fingerprint(recipe)}
    (out_dir / "recipe.json").write_text(json.dumps(record, indent=2))
    return out_dir

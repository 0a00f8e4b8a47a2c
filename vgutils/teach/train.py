"""Train the teaching model: a tiny LLaVA (CLIP vision tower + Llama, transformers'
classes) trained from scratch on CPU, in which grounding is real.

Recipe (fixed steps, so a seed gives the same model up to float noise):
1. vision warm-up: the vision tower and projector learn per-patch labels (which object
   and which colour covers each 16 px patch), standing in for the pretrained CLIP that
   real LLaVA starts from;
2. LLaVA stage: next-token loss on the answers (several questions per scene in one
   multi-turn sequence, the generic prompt answered with the object count), keeping the
   per-patch loss on the projected image features.
The result is saved with ``save_pretrained`` and loads through ``load_model`` like any
checkpoint; ``training_log.csv`` beside it records the curve.
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from vgutils.geometry import TokenLayout
from vgutils.metrics import gt_mask
from vgutils.models.vlm import ANSWER_INSTRUCTION, GENERIC_QUESTION
from vgutils.teach.scenes import (
    COLOURS,
    ORGANS,
    SHAPES,
    SIZE,
    Scene,
    all_question_texts,
    make_scene,
)

PATCH = 16
GRID = SIZE // PATCH
GRID_LAYOUT = TokenLayout.from_grid(GRID, GRID, (SIZE, SIZE))
KINDS = ("background", *SHAPES, *ORGANS)
COLOUR_CLASSES = ("none", *COLOURS)


@dataclass(frozen=True)
class Recipe:
    """Training settings. ``medical_share``: fraction of medical-domain scenes."""

    steps: int = 640
    warmup_steps: int = 600
    batch_size: int = 24
    learning_rate: float = 2e-3
    medical_share: float = 0.1
    pool: int = 3000
    turns: int = 4
    lr_warmup: int = 20
    pointer_loss_weight: float = 1.0
    patch_loss_weight: float = 0.5
    seed: int = 0


SMOKE = Recipe(steps=24, warmup_steps=8, batch_size=8, pool=48, lr_warmup=2)


def build_processor():
    """Processor with the teaching vocabulary: tokenizer trained on the question corpus."""
    from vgutils.models.tiny import LLAVA_SPECIAL_TOKENS, llava_processor, train_tokenizer

    corpus = [*all_question_texts(), GENERIC_QUESTION, ANSWER_INSTRUCTION, "USER: ASSISTANT:"]
    tokenizer = train_tokenizer(*LLAVA_SPECIAL_TOKENS, vocab_size=600, corpus=corpus)
    return llava_processor(tokenizer, SIZE, PATCH)


def build_model(tokenizer):
    """The teaching LLaVA: vision 128 wide x 2 layers, text 128 wide x 3 layers."""
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


def _turn_ids(tokenizer, question: str, first: bool) -> list[int]:
    head = "USER: <image>\n" if first else "USER: "
    return tokenizer(f"{head}{question} {ANSWER_INSTRUCTION} ASSISTANT:")["input_ids"]


def encode_scene(tokenizer, scene: Scene, rng: np.random.Generator, turns: int):
    """One multi-turn training sequence: ``(input_ids, labels, pointers)`` with the image
    token expanded to the 49 patch tokens, loss only on answers (+ end of sequence), and
    for each grounded question the position of its last prompt token with the ``(49,)``
    patch mask of the object asked about (the pointing target)."""
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
    if rng.random() < 0.35:  # the generic prompt, answered with the object count
        chosen.insert(
            int(rng.integers(len(chosen) + 1)), (GENERIC_QUESTION, scene.generic_answer, [])
        )
    ids, labels, pointers = [], [], []
    image_id = tokenizer.image_token_id
    for index, (question, answer, boxes) in enumerate(chosen):
        prompt = _turn_ids(tokenizer, question, first=index == 0)
        if index == 0:
            at = prompt.index(image_id)
            prompt = prompt[:at] + [image_id] * (GRID * GRID) + prompt[at + 1 :]
        target = tokenizer(f" {answer}")["input_ids"] + [tokenizer.eos_token_id]
        if boxes:
            pointers.append((len(ids) + len(prompt) - 1, gt_mask(GRID_LAYOUT, boxes)))
        ids += prompt + target
        labels += [-100] * len(prompt) + target
    return ids, labels, pointers


class PatchHeads(nn.Module):
    """Training-only heads: linear probes from projected image features to patch kind and
    colour, and the pointing head from the language model's state at a question's last
    prompt token to the patches of the object asked about (as LLaVA's region-level
    training data asks the model to say where things are)."""

    def __init__(self, width: int):
        super().__init__()
        self.kind = nn.Linear(width, len(KINDS))
        self.colour = nn.Linear(width, len(COLOUR_CLASSES))
        self.pointer = nn.Linear(width, GRID * GRID)

    def loss(self, features, kinds, colours):
        flat = features.reshape(-1, features.shape[-1])
        return nn.functional.cross_entropy(
            self.kind(flat), kinds.reshape(-1)
        ) + nn.functional.cross_entropy(self.colour(flat), colours.reshape(-1))


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
    encoded = [encode_scene(tokenizer, pool[i][0], rng, recipe.turns) for i in picks]
    width = max(len(ids) for ids, _, _ in encoded)
    input_ids = torch.full((len(picks), width), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(picks), width), -100, dtype=torch.long)
    mask = torch.zeros((len(picks), width), dtype=torch.long)
    pointer_rows, pointer_columns, pointer_targets = [], [], []
    for row, (ids, target, pointers) in enumerate(encoded):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(ids)] = torch.tensor(target)
        mask[row, : len(ids)] = 1
        for position, patches in pointers:
            pointer_rows.append(row)
            pointer_columns.append(position)
            pointer_targets.append(torch.from_numpy(patches.astype(np.float32)))
    pointing = (
        torch.tensor(pointer_rows, dtype=torch.long),
        torch.tensor(pointer_columns, dtype=torch.long),
        torch.stack(pointer_targets) if pointer_targets else torch.zeros((0, GRID * GRID)),
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
        pointing,
    )


def _learning_rate_factor(step: int, steps: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``steps``."""
    ramp = min(1.0, (step + 1) / max(warmup, 1))
    return ramp * 0.5 * (1 + math.cos(math.pi * min(step / max(steps, 1), 1)))


def train_teaching_model(
    out_dir: str | Path, recipe: Recipe | None = None, progress: bool = True
) -> Path:
    """Train with ``recipe`` (default :class:`Recipe`) and save into ``out_dir`` (model,
    processor, ``training_log.csv``, ``recipe.json``)."""
    recipe = recipe or Recipe()
    out_dir = Path(out_dir)
    torch.manual_seed(recipe.seed)
    rng = np.random.default_rng([recipe.seed, 2])
    processor = build_processor()
    tokenizer = processor.tokenizer
    model = build_model(tokenizer)
    heads = PatchHeads(model.config.text_config.hidden_size)
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
    stages = (
        ("vision warm-up", recipe.warmup_steps, vision_params),
        ("llava", recipe.steps, [*model.parameters(), *heads.parameters()]),
    )
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
        for _ in range(steps):
            batch, kinds, colours, (rows, columns, targets) = _batch(tokenizer, pool, rng, recipe)
            if stage == "vision warm-up":
                features = model.model.get_image_features(batch["pixel_values"]).pooler_output
                patch_loss = heads.loss(torch.stack(list(features)), kinds, colours)
                text_loss = torch.zeros(())
                loss = patch_loss
            else:
                output = model(**batch, output_hidden_states=True)
                patch_loss = heads.loss(captured["features"], kinds, colours)
                text_loss = output.loss
                pointed = heads.pointer(output.hidden_states[-1][rows, columns])
                pointer_loss = nn.functional.binary_cross_entropy_with_logits(pointed, targets)
                loss = (
                    text_loss
                    + recipe.patch_loss_weight * patch_loss
                    + recipe.pointer_loss_weight * pointer_loss
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
                    "seconds": time.perf_counter() - started,
                }
            )
            bar.update(1)
            bar.set_postfix(stage=stage, loss=f"{loss.item():.3f}")
    bar.close()
    hook.remove()
    model.eval()
    model.generation_config.do_sample = False
    model.generation_config.max_new_tokens = 4
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    with open(out_dir / "training_log.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(log[0]))
        writer.writeheader()
        writer.writerows(log)
    (out_dir / "recipe.json").write_text(json.dumps(asdict(recipe), indent=2))
    return out_dir

"""Prompts about the same images, sharing each image's prefix; several images at once.

Prompts about one image (its questions and the generic prompt) share their first tokens:
the chat template's head and every image token. :func:`batched_prefix_attention` runs
that prefix once per image (vision tower included) for several images in one batched
forward, keeps the KV cache, and runs the differing suffixes of all those prompts on
per-prompt views of it in right-padded batches. Why nothing leaks:

- prefixes batched together have the same length and the same token ids (only the
  pixels differ), so the prefix batch has no padding at all;
- attention is causal and suffix padding sits after the real tokens, so every real row
  sees exactly what it sees in a full forward of its own prompt;
- each suffix row attends only to its own image's cached prefix (the cache is indexed
  per prompt), never to another image's.

Rows of the prefix are shared by all prompts of an image, so their attention
(strategies ``question`` and ``all``) is captured once per image.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from vgutils.models.attention import capture
from vgutils.models.vlm import STRATEGIES, Prepared, VisionLanguageModel

# inputs that are per token and must be cut into prefix / suffix
_PER_TOKEN = ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids")


def common_prefix_length(prompts: list[Prepared]) -> int:
    """Tokens shared by every prompt, leaving each at least one suffix token."""
    ids = [p.inputs["input_ids"][0] for p in prompts]
    shortest = min(len(x) for x in ids) - 1
    first = ids[0][:shortest]
    same = torch.ones(shortest, dtype=torch.bool, device=first.device)
    for other in ids[1:]:
        same &= other[:shortest] == first
    mismatch = torch.nonzero(~same)
    return int(mismatch[0]) if len(mismatch) else shortest


def prefix_signature(prompts: list[Prepared]) -> tuple | None:
    """What must be equal for two images' prompts to share one batched prefix forward: the
    token ids up to the last image token and the shapes of the image inputs. ``None``
    when the prompts of this image share no image prefix (they then run one by one)."""
    first = prompts[0]
    image_positions = first.image_positions
    if not all(np.array_equal(p.image_positions, image_positions) for p in prompts):
        return None
    image_end = _question_start(first)  # after the prompt's last image token
    if common_prefix_length(prompts) < image_end:
        return None
    head = first.inputs["input_ids"][0, :image_end].cpu().numpy()
    shapes = tuple(
        (key, tuple(value.shape))
        for key, value in sorted(first.inputs.items())
        if key not in _PER_TOKEN and torch.is_tensor(value)
    )
    return (head.tobytes(), shapes)


@torch.no_grad()
def shared_prefix_attention(
    vlm: VisionLanguageModel,
    prompts: list[Prepared],
    strategy: str = "last",
    batch_size: int = 8,
) -> list[np.ndarray]:
    """For prompts about one image, the same maps as ``vlm.attention(p, strategy)`` (float32
    ``(layers, heads, N)`` each), computed with one prefix forward and batched suffixes.
    Falls back to full forwards when the prompts share no image prefix."""
    return batched_prefix_attention(vlm, [prompts], strategy, batch_size)[0]


@torch.no_grad()
def batched_prefix_attention(
    vlm: VisionLanguageModel,
    groups: list[list[Prepared]],
    strategy: str = "last",
    batch_size: int = 8,
) -> list[list[np.ndarray]]:
    """``groups``: per image, the prompts about it. Returns per image the maps of its
    prompts, each equal to ``vlm.attention(p, strategy)`` (float32 ``(layers, heads,
    N)``). Consecutive images with the same :func:`prefix_signature` share one batched
    prefix forward; ``batch_size`` suffixes run at once."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; expected {STRATEGIES}")
    results: list[list[np.ndarray] | None] = [None] * len(groups)
    run: list[int] = []
    run_signature = None
    for index, prompts in enumerate(groups):
        signature = prefix_signature(prompts)
        if signature is None:
            results[index] = [vlm.attention(p, strategy) for p in prompts]
            continue
        if run and signature != run_signature:
            _fill(results, run, _run_images(vlm, [groups[i] for i in run], strategy, batch_size))
            run = []
        run.append(index)
        run_signature = signature
    if run:
        _fill(results, run, _run_images(vlm, [groups[i] for i in run], strategy, batch_size))
    return results


def _question_start(prepared: Prepared) -> int:
    """The first row after the prompt's last image token (an unplaced one included,
    e.g. LLaVA-NeXT's final row end): where strategy ``question`` starts."""
    return len(prepared.query_positions["all"]) - len(prepared.query_positions["question"])


def _fill(results: list, indices: list[int], values: list) -> None:
    for index, value in zip(indices, values, strict=True):
        results[index] = value


def _position_ids(vlm: VisionLanguageModel, prepared: Prepared) -> torch.Tensor | None:
    return vlm.adapter.position_ids(vlm.model, prepared.inputs)


def _prefix_inputs(groups: list[list[Prepared]], positions, prefix: int) -> dict:
    """The prefix batch: one row per image (its first prompt's prefix tokens) and every
    image's inputs concatenated along the batch / patch dimension."""
    firsts = [prompts[0].inputs for prompts in groups]
    inputs = {}
    for key, value in firsts[0].items():
        if not torch.is_tensor(value):
            continue
        if key in _PER_TOKEN:
            inputs[key] = torch.cat([f[key][:, :prefix] for f in firsts])
        else:
            inputs[key] = torch.cat([f[key] for f in firsts])
    if positions[0][0] is not None:  # multimodal RoPE: (3, images, prefix)
        inputs["position_ids"] = torch.cat([p[0][..., :prefix] for p in positions], dim=-2)
    return inputs


def _select_cache(cache, indices: torch.Tensor):
    """A view of ``cache`` with the batch rows ``indices`` (repeats allowed); the
    original is left as it is (layers are copied shallowly, tensors indexed anew)."""
    selected = copy.copy(cache)
    selected.layers = [copy.copy(layer) for layer in cache.layers]
    selected.batch_select_indices(indices)
    return selected


def _run_images(vlm, groups: list[list[Prepared]], strategy: str, batch_size: int):
    """Groups with one prefix signature: one prefix forward, then the suffixes."""
    image_positions = groups[0][0].image_positions
    prefix = common_prefix_length([p for prompts in groups for p in prompts])
    positions = [[_position_ids(vlm, p) for p in prompts] for prompts in groups]
    question_start = _question_start(groups[0][0])
    prefix_rows = {"question": np.arange(question_start, prefix), "all": np.arange(prefix)}
    specs = {}
    if strategy in prefix_rows and len(prefix_rows[strategy]):
        rows = prefix_rows[strategy]
        specs[strategy] = (rows, np.ones((1, len(rows))))
    with capture(specs, image_positions) as recorder:
        output = vlm.model(
            **_prefix_inputs(groups, positions, prefix), use_cache=True, logits_to_keep=1
        )
    shared = (
        torch.stack([recorder.maps[strategy][layer] for layer in range(vlm.num_layers)], dim=1)
        if specs
        else None
    )  # (images, layers, heads, N)
    items = [
        (image, prepared, position)
        for image, (prompts, image_positions_ids) in enumerate(zip(groups, positions, strict=True))
        for prepared, position in zip(prompts, image_positions_ids, strict=True)
    ]
    maps: list[np.ndarray] = []
    for start in range(0, len(items), batch_size):
        batch = items[start : start + batch_size]
        rows = torch.tensor([image for image, _, _ in batch], device=vlm.device)
        maps.extend(
            _suffix_batch(
                vlm,
                batch,
                prefix,
                _select_cache(output.cache, rows),
                strategy,
                None if shared is None else shared[rows],
            )
        )
    out, start = [], 0
    for prompts in groups:
        out.append(maps[start : start + len(prompts)])
        start += len(prompts)
    return out


def _suffix_batch(vlm, batch, prefix, cache, strategy, shared):
    """Suffixes of ``batch`` ((image, Prepared, position ids) each) on ``cache`` (one row
    per item), right-padded; ``shared``: the prefix rows' summed maps per item."""
    prompts = [prepared for _, prepared, _ in batch]
    lengths = [int(p.inputs["input_ids"].shape[1]) for p in prompts]
    width = max(lengths) - prefix
    size = len(batch)
    device = vlm.device
    pad = vlm.processor.tokenizer.pad_token_id or 0
    input_ids = torch.full((size, width), pad, dtype=torch.long, device=device)
    attention_mask = torch.zeros((size, prefix + width), dtype=torch.long, device=device)
    weights = np.zeros((size, width))
    for b, (prepared, length) in enumerate(zip(prompts, lengths, strict=True)):
        input_ids[b, : length - prefix] = prepared.inputs["input_ids"][0, prefix:]
        attention_mask[b, :length] = 1
        if strategy == "last":
            weights[b, length - 1 - prefix] = 1.0
        else:
            weights[b, : length - prefix] = 1.0
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    for key in ("token_type_ids", "mm_token_type_ids"):
        if key in prompts[0].inputs:
            inputs[key] = torch.zeros_like(input_ids)
    positions = [position for _, _, position in batch]
    if positions[0] is not None:
        position_ids = positions[0].new_zeros((*positions[0].shape[:-2], size, width))
        for b, (pos, length) in enumerate(zip(positions, lengths, strict=True)):
            position_ids[..., b, : length - prefix] = pos[..., 0, prefix:length]
        inputs["position_ids"] = position_ids
    rows = np.arange(prefix, prefix + width)
    with capture({strategy: (rows, weights)}, prompts[0].image_positions) as recorder:
        vlm.model(**inputs, cache=cache, use_cache=True, logits_to_keep=1)
    sums = torch.stack([recorder.maps[strategy][layer] for layer in range(vlm.num_layers)], dim=1)
    out = []
    for b, prepared in enumerate(prompts):
        total = sums[b]
        if strategy == "last":
            out.append(total.cpu().numpy())
            continue
        if shared is not None:
            total = total + shared[b]
        count = len(prepared.query_positions[strategy])
        out.append((total / count).cpu().numpy())
    return out

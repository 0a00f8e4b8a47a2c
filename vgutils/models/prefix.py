"""Several prompts about one image, sharing the image prefix.

Prompts about the same image (its questions and the generic prompt) share their first
tokens: the chat template's head and every image token. :func:`shared_prefix_attention`
runs that prefix once (vision tower included), keeps its KV cache, and runs the differing
suffixes on copies of it in right-padded batches. Because attention is causal, every row
of a prompt sees exactly what it would see in a full forward; padding sits after the
real tokens, so it changes nothing either. Rows of the prefix are shared by all prompts,
so their attention (strategies ``question`` and ``all``) is captured once.
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


def _position_ids(vlm: VisionLanguageModel, prepared: Prepared) -> torch.Tensor | None:
    return vlm.adapter.position_ids(vlm.model, prepared.inputs)


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
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; expected {STRATEGIES}")
    image_positions = prompts[0].image_positions
    prefix = common_prefix_length(prompts)
    same_image = all(np.array_equal(p.image_positions, image_positions) for p in prompts)
    if not same_image or prefix <= image_positions[-1]:
        return [vlm.attention(p, strategy) for p in prompts]

    first = prompts[0].inputs
    positions = [_position_ids(vlm, p) for p in prompts]
    prefix_inputs = {
        k: (v[:, :prefix] if k in _PER_TOKEN else v) for k, v in first.items() if v is not None
    }
    if positions[0] is not None:
        prefix_inputs["position_ids"] = positions[0][..., :prefix]
    question_start = int(image_positions[-1]) + 1
    prefix_rows = {
        "question": np.arange(question_start, prefix),
        "all": np.arange(prefix),
    }
    specs = {}
    if strategy in prefix_rows and len(prefix_rows[strategy]):
        rows = prefix_rows[strategy]
        specs[strategy] = (rows, np.ones((1, len(rows))))
    with capture(specs, image_positions) as recorder:
        output = vlm.model(**prefix_inputs, use_cache=True, logits_to_keep=1)
    shared_sum = (
        torch.stack([recorder.maps[strategy][layer][0] for layer in range(vlm.num_layers)])
        if specs
        else None
    )
    cache = output.cache

    results: list[np.ndarray] = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        batch_positions = positions[start : start + batch_size]
        results.extend(
            _suffix_batch(vlm, batch, batch_positions, prefix, cache, strategy, shared_sum)
        )
    return results


def _suffix_batch(vlm, batch, positions, prefix, cache, strategy, shared_sum):
    lengths = [int(p.inputs["input_ids"].shape[1]) for p in batch]
    width = max(lengths) - prefix
    size = len(batch)
    device = vlm.device
    pad = vlm.processor.tokenizer.pad_token_id or 0
    input_ids = torch.full((size, width), pad, dtype=torch.long, device=device)
    attention_mask = torch.zeros((size, prefix + width), dtype=torch.long, device=device)
    weights = np.zeros((size, width))
    for b, (prepared, length) in enumerate(zip(batch, lengths, strict=True)):
        input_ids[b, : length - prefix] = prepared.inputs["input_ids"][0, prefix:]
        attention_mask[b, :length] = 1
        if strategy == "last":
            weights[b, length - 1 - prefix] = 1.0
        else:
            weights[b, : length - prefix] = 1.0
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    for key in ("token_type_ids", "mm_token_type_ids"):
        if key in batch[0].inputs:
            inputs[key] = torch.zeros_like(input_ids)
    if positions[0] is not None:
        position_ids = positions[0][..., prefix:prefix].new_zeros(
            (*positions[0].shape[:-2], size, width)
        )
        for b, (pos, length) in enumerate(zip(positions, lengths, strict=True)):
            position_ids[..., b, : length - prefix] = pos[..., 0, prefix:length]
        inputs["position_ids"] = position_ids
    batch_cache = copy.deepcopy(cache)
    batch_cache.batch_repeat_interleave(size)
    rows = np.arange(prefix, prefix + width)
    with capture({strategy: (rows, weights)}, batch[0].image_positions) as recorder:
        vlm.model(**inputs, cache=batch_cache, use_cache=True, logits_to_keep=1)
    sums = torch.stack([recorder.maps[strategy][layer] for layer in range(vlm.num_layers)], dim=1)
    out = []
    for b, prepared in enumerate(batch):
        total = sums[b]
        if strategy == "last":
            out.append(total.cpu().numpy())
            continue
        if shared_sum is not None:
            total = total + shared_sum
        count = len(prepared.query_positions[strategy])
        out.append((total / count).cpu().numpy())
    return out

"""Attention capture and knockout through transformers' ``AttentionInterface``.

The language model's layers are switched to the attention function registered here as
``"vgutils"``. It computes each layer's output with sdpa (no full attention matrix) and,
only while a :func:`capture` or :func:`knockout` context is active:

- capture: recomputes ``softmax(q_rows . K^T * scale + mask)`` for the requested query
  rows only and keeps their weights on the image tokens, averaged over the rows:
  memory ``O(heads * rows_chunk * seq)`` per call and ``O(layers * heads * N)`` kept;
- knockout: removes chosen keys from chosen query rows through the attention mask, so the
  softmax gives them exactly zero weight and renormalises the rest.

Rotary embeddings are applied before the attention function is called, so the same
function serves every family. The vision tower keeps its own implementation (sdpa).

Precision (the protocols' ``attention_precision``, set per model by
:func:`set_attention_precision`): ``float32`` (ours) is the above: the layer output by
sdpa, the captured rows recomputed in float32. ``model`` (the authors' code) computes the
layer with the family's own eager attention (``eager_attention_forward`` of its modeling
module: scores in the model dtype, float32 softmax rounded to the model dtype), and the
captured rows are those eager weights themselves, so on a bf16 model they are exactly the
bf16 weights ``output_attentions`` gives, and every later layer sees eager's output as in
the authors' runs. Eager rather than a bf16 recomputation of the captured rows: a
matrix product of some rows is not guaranteed to round like the full one (the kernel's
blocking depends on the shape), and sdpa's bf16 output differs from eager's, which would
change every later layer. Capture and knockout work the same in both.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTENTION_NAME = "vgutils"
ROW_CHUNK = 256
"""Query rows scored at once when many rows are captured (strategy ``all``)."""


@dataclass
class _Capture:
    rows: dict[str, tuple[torch.Tensor, torch.Tensor]]  # name -> (positions (r,), weights (B|1, r))
    columns: torch.Tensor  # absolute key positions of the image tokens, (N,)
    spans: dict[str, tuple[int, int]]  # name -> (smallest, largest) position
    maps: dict[str, dict[int, torch.Tensor]] = field(default_factory=dict)
    _on_device: dict[torch.device, tuple] = field(default_factory=dict)

    def on(self, device: torch.device) -> tuple[dict, torch.Tensor]:
        """``rows`` and ``columns`` on ``device``, copied once per forward (not per layer:
        every host-to-device copy waits for the GPU)."""
        if device not in self._on_device:
            rows = {
                name: (positions.to(device), weights.to(device=device, dtype=torch.float32))
                for name, (positions, weights) in self.rows.items()
            }
            self._on_device[device] = (rows, self.columns.to(device))
        return self._on_device[device]


@dataclass
class _Knockout:
    layers: frozenset[int]
    query_positions: torch.Tensor  # absolute query positions whose keys are cut
    key_positions: torch.Tensor  # absolute key positions to cut
    generated_from: int | None  # every query row at or after this position is cut too


_CAPTURE: contextvars.ContextVar[_Capture | None] = contextvars.ContextVar(
    "vgutils_capture", default=None
)
_KNOCKOUT: contextvars.ContextVar[_Knockout | None] = contextvars.ContextVar(
    "vgutils_knockout", default=None
)


def _sdpa_mask(*args, **kwargs):
    """sdpa's boolean mask; while a knockout is active it is always materialised (never
    skipped for ``is_causal``) so that the knockout can edit it. Otherwise sdpa keeps its
    fastest kernels and the capture rebuilds the causal mask itself when there is none."""
    if _KNOCKOUT.get() is not None:
        kwargs["allow_is_causal_skip"] = False
    return sdpa_mask(*args, **kwargs)


def _query_offset(query: torch.Tensor, key: torch.Tensor) -> int:
    """Absolute position of the first query row (keys cover ``0 .. kv_len-1``)."""
    return key.shape[2] - query.shape[2]


def _full_mask(
    attention_mask: torch.Tensor | None, query: torch.Tensor, key: torch.Tensor
) -> torch.Tensor:
    """The mask as boolean ``(B|1, 1|H, q, kv)`` (True = may attend); causal if absent."""
    if attention_mask is None:
        offset = _query_offset(query, key)
        q_pos = torch.arange(query.shape[2], device=query.device) + offset
        k_pos = torch.arange(key.shape[2], device=query.device)
        return (k_pos[None, :] <= q_pos[:, None])[None, None]
    if attention_mask.dtype == torch.bool:
        return attention_mask
    return attention_mask > torch.finfo(attention_mask.dtype).min / 2


def _apply_knockout(
    edit: _Knockout, attention_mask: torch.Tensor | None, query: torch.Tensor, key: torch.Tensor
) -> torch.Tensor:
    offset = _query_offset(query, key)
    q_pos = torch.arange(query.shape[2], device=query.device) + offset
    rows = torch.isin(q_pos, edit.query_positions.to(query.device))
    if edit.generated_from is not None:
        rows |= q_pos >= edit.generated_from
    cols = torch.zeros(key.shape[2], dtype=torch.bool, device=query.device)
    keys = edit.key_positions.to(query.device)
    cols[keys[keys < key.shape[2]]] = True
    blocked = rows[:, None] & cols[None, :]
    return _full_mask(attention_mask, query, key) & ~blocked


def _chunk_mask(
    attention_mask: torch.Tensor | None, chunk: torch.Tensor, offset: int, kv: int
) -> torch.Tensor:
    """May-attend mask of the query rows ``chunk`` (relative), ``(B|1, 1|H, c, kv)``
    bool; causal when there is no mask (built for these rows only)."""
    if attention_mask is None:
        k_pos = torch.arange(kv, device=chunk.device)
        return (k_pos[None, :] <= (chunk + offset)[:, None])[None, None]
    rows = attention_mask[..., chunk, :]
    if rows.dtype == torch.bool:
        return rows
    return rows > torch.finfo(rows.dtype).min / 2


def _row_weights(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    mask: torch.Tensor | None,
    rows: torch.Tensor,
    weights: torch.Tensor,
    columns: torch.Tensor,
    scaling: float,
    span: tuple[int, int],
) -> torch.Tensor:
    """``sum_r weights[b, r] * softmax(q_r . K^T * scale + mask)[columns]``: ``(B, H, N)``
    float32, for query rows at absolute ``rows`` (r,) on the query's device, whose
    smallest and largest are ``span`` (known on the host, so checking them needs no sync).
    Scores are computed in float32, ``ROW_CHUNK`` rows at a time, so memory stays
    ``O(B * H * ROW_CHUNK * kv)``. Grouped-query heads are matched to their key head by
    a reshape (no ``repeat_kv`` copy of the keys)."""
    offset = _query_offset(query, key)
    if rows.numel() == 0 or span[0] < offset or span[1] >= offset + query.shape[2]:
        raise RuntimeError(
            f"capture rows {span[0]}..{span[1]} are not in this forward's query window "
            f"[{offset}, {offset + query.shape[2]})"
        )
    batch, heads, _, dim = query.shape
    kv_heads, kv = key.shape[1], key.shape[2]
    groups = heads // kv_heads
    rel = rows - offset
    keys = key.float().transpose(-1, -2)  # (B, H_kv, d, kv)
    total = None
    for start in range(0, rel.numel(), ROW_CHUNK):
        chunk = rel[start : start + ROW_CHUNK]
        # query heads h = g_kv * groups + j share key head g_kv (transformers' repeat_kv)
        q = query[:, :, chunk, :].float().reshape(batch, kv_heads, groups * len(chunk), dim)
        scores = (torch.matmul(q, keys) * scaling).reshape(batch, heads, len(chunk), kv)
        scores = scores.masked_fill(~_chunk_mask(mask, chunk, offset, kv), float("-inf"))
        probs = torch.softmax(scores, dim=-1)[..., columns]  # (B, H, c, N)
        part = torch.einsum(
            "bhcn,bc->bhn", probs, weights[:, start : start + ROW_CHUNK].expand(batch, -1)
        )
        total = part if total is None else total + part
    return total


PRECISIONS = ("model", "float32")
"""``attention_precision`` values (module docstring)."""
_PRECISION_ATTRIBUTE = "vgutils_attention_precision"


def set_attention_precision(model: torch.nn.Module, precision: str) -> None:
    """Make ``model``'s language layers run at ``precision`` (:data:`PRECISIONS`): every
    module with a ``layer_idx`` is marked (the attention modules the function is called
    with)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown attention precision {precision!r}; expected {PRECISIONS}")
    for module in model.modules():
        if hasattr(module, "layer_idx"):
            setattr(module, _PRECISION_ATTRIBUTE, precision)


def _eager_function(module: torch.nn.Module):
    """The eager attention function of ``module``'s own modeling file (its family's: Gemma
    3's soft-capping included), else Llama's."""
    import sys

    found = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    if found is None:
        from transformers.models.llama.modeling_llama import eager_attention_forward as found
    return found


def _additive_mask(
    attention_mask: torch.Tensor | None, query: torch.Tensor, key: torch.Tensor
) -> torch.Tensor:
    """The mask as eager wants it: 0 where a row may attend, the dtype's minimum elsewhere
    (transformers' own ``eager_mask`` conversion); causal when there is none."""
    if attention_mask is not None and attention_mask.dtype != torch.bool:
        return attention_mask
    allowed = _full_mask(attention_mask, query, key)
    zero = torch.tensor(0.0, dtype=query.dtype, device=query.device)
    return torch.where(allowed, zero, torch.finfo(query.dtype).min)


def _eager_rows(
    weights: torch.Tensor,
    rows: torch.Tensor,
    row_weights: torch.Tensor,
    columns: torch.Tensor,
    offset: int,
    span: tuple[int, int],
) -> torch.Tensor:
    """``sum_r row_weights[b, r] * weights[b, :, r, columns]``: ``(B, H, N)`` float32 from
    eager's weights ``(B, H, q, kv)``; a single row of weight 1 keeps its values exactly
    (bf16 values are exact in float32)."""
    if rows.numel() == 0 or span[0] < offset or span[1] >= offset + weights.shape[2]:
        raise RuntimeError(
            f"capture rows {span[0]}..{span[1]} are not in this forward's query window "
            f"[{offset}, {offset + weights.shape[2]})"
        )
    probs = weights[:, :, rows - offset][..., columns].float()  # (B, H, r, N)
    batch = weights.shape[0]
    return torch.einsum("bhrn,br->bhn", probs, row_weights.expand(batch, -1))


def vgutils_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """sdpa attention plus the active capture / knockout (see the module docstring).
    ``query``: ``(B, H, q, d)``; ``key``/``value``: ``(B, H_kv, kv, d)``."""
    layer = getattr(module, "layer_idx", None)
    edit = _KNOCKOUT.get()
    if edit is not None and layer in edit.layers:
        attention_mask = _apply_knockout(edit, attention_mask, query, key)
    recorder = _CAPTURE.get()
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    if getattr(module, _PRECISION_ATTRIBUTE, "float32") == "model":
        output, eager_weights = _eager_function(module)(
            module,
            query,
            key,
            value,
            _additive_mask(attention_mask, query, key),
            dropout=dropout,
            scaling=scale,
            **kwargs,
        )
        if recorder is not None and layer is not None:
            rows_on_device, columns = recorder.on(query.device)
            offset = _query_offset(query, key)
            for name, (rows, weights) in rows_on_device.items():
                recorder.maps.setdefault(name, {})[layer] = _eager_rows(
                    eager_weights, rows, weights, columns, offset, recorder.spans[name]
                )
        return output, None
    output, _ = sdpa_attention_forward(
        module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
    )
    if recorder is not None and layer is not None:
        rows_on_device, columns = recorder.on(query.device)
        for name, (rows, weights) in rows_on_device.items():
            recorder.maps.setdefault(name, {})[layer] = _row_weights(
                module,
                query,
                key,
                attention_mask,
                rows,
                weights,
                columns,
                scale,
                recorder.spans[name],
            )
    return output, None


AttentionInterface.register(ATTENTION_NAME, vgutils_attention_forward)
AttentionMaskInterface.register(ATTENTION_NAME, _sdpa_mask)


RowSpec = np.ndarray | tuple[np.ndarray, np.ndarray]


@contextlib.contextmanager
def capture(rows: dict[str, RowSpec], columns: np.ndarray) -> Iterator[_Capture]:
    """Inside: every language-model layer records, per name in ``rows``, attention on the
    ``columns`` (image token positions). A row spec is either absolute query positions
    ``(r,)``, recorded as their mean, or ``(positions (r,), weights (B, r))``, recorded as
    the weighted sum per batch element. After one forward, ``result.maps[name][layer]`` is
    a ``(B, H, N)`` float32 tensor."""
    specs = {}
    for name, spec in rows.items():
        if isinstance(spec, tuple):
            positions, weights = spec
        else:
            positions = np.asarray(spec)
            weights = np.full((1, len(positions)), 1.0 / max(len(positions), 1))
        specs[name] = (
            torch.as_tensor(np.asarray(positions), dtype=torch.long),
            torch.as_tensor(np.asarray(weights), dtype=torch.float32),
        )
    spans = {
        name: (int(positions.min()), int(positions.max())) if positions.numel() else (0, -1)
        for name, (positions, _) in specs.items()
    }
    recorder = _Capture(
        rows=specs,
        columns=torch.as_tensor(np.asarray(columns), dtype=torch.long),
        spans=spans,
    )
    token = _CAPTURE.set(recorder)
    try:
        yield recorder
    finally:
        _CAPTURE.reset(token)


@contextlib.contextmanager
def knockout_edit(
    layers: list[int] | range,
    query_positions: np.ndarray,
    key_positions: np.ndarray,
    generated_from: int | None = None,
) -> Iterator[None]:
    """Inside: in ``layers``, query rows at ``query_positions`` (and, if given, every row
    at or after ``generated_from``: the generated tokens) give zero weight to
    ``key_positions``; the softmax renormalises over the remaining keys."""
    edit = _Knockout(
        layers=frozenset(int(x) for x in layers),
        query_positions=torch.as_tensor(np.asarray(query_positions), dtype=torch.long),
        key_positions=torch.as_tensor(np.asarray(key_positions), dtype=torch.long),
        generated_from=generated_from,
    )
    token = _KNOCKOUT.set(edit)
    try:
        yield
    finally:
        _KNOCKOUT.reset(token)

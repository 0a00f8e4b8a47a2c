"""Boxes and the image-token layout: where each image token lies in the original image.

All coordinates are in ORIGINAL image pixels, ``x`` to the right and ``y`` down, with
boxes as half-open rectangles ``[x0, y0, x1, y1]`` (``xyxy``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

BoxFormat = Literal["xyxy", "xywh"]
BOX_FORMATS: tuple[str, ...] = ("xyxy", "xywh")


def to_xyxy(box: object, fmt: str) -> np.ndarray:
    """Convert one box to ``xyxy`` float64, shape ``(4,)``, checking it on the way.

    ``fmt`` is ``"xyxy"`` (corners) or ``"xywh"`` (top-left corner, width, height).
    Raises ``ValueError`` naming the problem for an unknown format, a box that is not four
    numbers, NaN/inf, negative width/height, or ``x1 <= x0`` / ``y1 <= y0``.
    """
    if fmt not in BOX_FORMATS:
        raise ValueError(f"unknown box format {fmt!r}; expected one of {BOX_FORMATS}")
    try:
        values = np.asarray(box, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as err:
        raise ValueError(f"box {box!r} is not four numbers") from err
    if values.shape != (4,):
        raise ValueError(f"box {box!r} has {values.size} values; expected 4")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"box {box!r} has a non-finite value (NaN or inf)")
    if fmt == "xywh":
        x0, y0, width, height = values
        if width < 0 or height < 0:
            raise ValueError(f"box {box!r} (xywh) has negative width or height")
        values = np.array([x0, y0, x0 + width, y0 + height])
    x0, y0, x1, y1 = values
    if x1 <= x0:
        raise ValueError(f"box {box!r} ({fmt}) has x1 <= x0 (zero or negative width)")
    if y1 <= y0:
        raise ValueError(f"box {box!r} ({fmt}) has y1 <= y0 (zero or negative height)")
    return values


def as_box_array(boxes_xyxy: object) -> np.ndarray:
    """One ``(4,)`` box or several ``(k, 4)`` xyxy boxes as a float64 ``(k, 4)`` array."""
    arr = np.asarray(boxes_xyxy, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != 4 or arr.shape[0] == 0:
        raise ValueError(f"boxes must have shape (4,) or (k, 4) with k >= 1; got {arr.shape}")
    return arr


@dataclass(frozen=True, eq=False)
class TokenLayout:
    """Where each of the ``N`` image tokens of one prompt lies in the original image.

    - ``boxes``: float ``(N, 4)`` xyxy rectangle each token covers, in original-image
      pixels; may extend outside the image where the processor padded.
    - ``grids``: ``(start, rows, cols)`` triples; tokens ``start .. start + rows*cols - 1``
      form one display grid (tiled models have several), row-major unless ``orders`` says
      otherwise.
    - ``image_size``: ``(width, height)`` of the original image in pixels.
    - ``orders``: per grid ``"row"`` (token ``start + r*cols + c`` is cell ``(r, c)``) or
      ``"column"`` (token ``start + c*rows + r``: InternVL's ``ps_version`` v1 pixel
      shuffle leaves its grid transposed); empty = every grid row-major.
    - ``unplaced``: indices, among the prompt's image tokens in prompt order, of tokens
      that stand for no place in the image (LLaVA-NeXT's image-newline tokens ending each
      row). They have no box, are not among the ``N`` tokens and count in no metric;
      :attr:`prompt_tokens` counts them too.
    """

    boxes: np.ndarray
    grids: tuple[tuple[int, int, int], ...]
    image_size: tuple[int, int]
    orders: tuple[str, ...] = ()
    unplaced: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        boxes = np.asarray(self.boxes, dtype=np.float64)
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"TokenLayout.boxes must be (N, 4); got {boxes.shape}")
        if not np.all(np.isfinite(boxes)):
            raise ValueError("TokenLayout.boxes has non-finite values")
        boxes.setflags(write=False)
        grids = tuple((int(s), int(r), int(c)) for s, r, c in self.grids)
        for start, rows, cols in grids:
            if start < 0 or rows <= 0 or cols <= 0 or start + rows * cols > len(boxes):
                raise ValueError(
                    f"grid (start={start}, rows={rows}, cols={cols}) does not fit "
                    f"{len(boxes)} tokens"
                )
        width, height = (int(v) for v in self.image_size)
        if width <= 0 or height <= 0:
            raise ValueError(f"image_size must be positive (width, height); got {self.image_size}")
        orders = tuple(str(o) for o in self.orders) or ("row",) * len(grids)
        if len(orders) != len(grids) or set(orders) - {"row", "column"}:
            raise ValueError(f"orders must be 'row' or 'column' per grid; got {self.orders}")
        unplaced = tuple(sorted(int(i) for i in self.unplaced))
        if len(set(unplaced)) != len(unplaced) or any(i < 0 for i in unplaced):
            raise ValueError(f"unplaced must be distinct token indices >= 0; got {self.unplaced}")
        if unplaced and unplaced[-1] >= len(boxes) + len(unplaced):
            raise ValueError(
                f"unplaced index {unplaced[-1]} is past the {len(boxes) + len(unplaced)} "
                "image tokens of the prompt"
            )
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "grids", grids)
        object.__setattr__(self, "image_size", (width, height))
        object.__setattr__(self, "orders", orders)
        object.__setattr__(self, "unplaced", unplaced)

    def __repr__(self) -> str:
        width, height = self.image_size
        extra = f", unplaced={len(self.unplaced)}" if self.unplaced else ""
        if "column" in self.orders:
            extra += f", orders={self.orders}"
        return (
            f"TokenLayout(n_tokens={self.n_tokens}, grids={self.grids}, "
            f"image={width}x{height}{extra})"
        )

    @property
    def n_tokens(self) -> int:
        """Number of image tokens ``N`` (the placed ones: every metric's ``N``)."""
        return len(self.boxes)

    @property
    def prompt_tokens(self) -> int:
        """Image tokens in the prompt: the ``N`` placed ones and the :attr:`unplaced`."""
        return len(self.boxes) + len(self.unplaced)

    def placed(self) -> np.ndarray:
        """Indices, among the prompt's image tokens, of the ``N`` placed ones (in order)."""
        return np.delete(np.arange(self.prompt_tokens), list(self.unplaced))

    @classmethod
    def from_grid(cls, rows: int, cols: int, image_size: tuple[int, int]) -> TokenLayout:
        """Plain-resize layout: token ``(r, c)`` covers
        ``[c*W/cols, r*H/rows, (c+1)*W/cols, (r+1)*H/rows]`` of a ``(W, H)`` image."""
        return cls.from_region(rows, cols, (0.0, 0.0, *map(float, image_size)), image_size)

    @classmethod
    def from_region(
        cls,
        rows: int,
        cols: int,
        region_xyxy: tuple[float, float, float, float],
        image_size: tuple[int, int],
    ) -> TokenLayout:
        """One ``rows x cols`` grid spread evenly over ``region_xyxy`` (original pixels).

        The region is the part of the original image the model's input shows: the whole
        image for a plain resize, a centred square inside it for a centre crop, or a square
        larger than it for pad-to-square.
        """
        return cls(grid_boxes(rows, cols, region_xyxy), ((0, rows, cols),), image_size)

    @classmethod
    def from_grids(
        cls,
        grids: list[tuple[int, int, tuple[float, float, float, float], str]],
        image_size: tuple[int, int],
        unplaced: tuple[int, ...] = (),
    ) -> TokenLayout:
        """Several grids one after the other: ``(rows, cols, region_xyxy, order)`` each,
        ``order`` ``"row"`` or ``"column"`` (:func:`grid_boxes`)."""
        boxes, spec, start = [], [], 0
        for rows, cols, region, order in grids:
            boxes.append(grid_boxes(rows, cols, region, order))
            spec.append((start, rows, cols))
            start += rows * cols
        orders = tuple(order for *_, order in grids)
        return cls(np.concatenate(boxes), tuple(spec), image_size, orders, unplaced)

    def grid_values(self, values: np.ndarray, grid: int = 0) -> np.ndarray:
        """Reshape per-token ``values`` (..., N) into grid ``grid`` as (..., rows, cols)."""
        values = np.asarray(values)
        if values.shape[-1] != self.n_tokens:
            raise ValueError(f"values have {values.shape[-1]} tokens; layout has {self.n_tokens}")
        start, rows, cols = self.grids[grid]
        cells = values[..., start : start + rows * cols]
        if self.orders[grid] == "column":
            return np.swapaxes(cells.reshape(*values.shape[:-1], cols, rows), -1, -2)
        return cells.reshape(*values.shape[:-1], rows, cols)

    def grid_region(self, grid: int = 0) -> np.ndarray:
        """xyxy rectangle (original pixels) covered by grid ``grid``, shape ``(4,)``."""
        start, rows, cols = self.grids[grid]
        cell = self.boxes[start : start + rows * cols]
        return np.array([cell[:, 0].min(), cell[:, 1].min(), cell[:, 2].max(), cell[:, 3].max()])

    def to_dict(self) -> dict:
        """Plain-JSON form (lists and ints) for saving next to results."""
        return {
            "boxes": self.boxes.tolist(),
            "grids": [list(g) for g in self.grids],
            "image_size": list(self.image_size),
            "orders": list(self.orders),
            "unplaced": list(self.unplaced),
        }

    @classmethod
    def from_dict(cls, data: dict) -> TokenLayout:
        """Inverse of :meth:`to_dict` (``orders`` / ``unplaced`` optional)."""
        return cls(
            np.asarray(data["boxes"], dtype=np.float64),
            tuple(tuple(g) for g in data["grids"]),
            tuple(data["image_size"]),
            tuple(data.get("orders", ())),
            tuple(data.get("unplaced", ())),
        )


BOX_MAPPINGS: tuple[str, ...] = ("processor", "scaled")
"""How boxes meet the token grid (docs/METHOD.md, "box -> token grid"): ``processor`` = the
processor's real geometry (pad, crop, tiles); ``scaled`` = the authors' mapping."""


def scaled_layout(layout: TokenLayout, family: str = "this family") -> TokenLayout:
    """The authors' box mapping (docs/METHOD.md): the model's token grid spread uniformly over
    the WHOLE original image, ignoring any pad-to-square or centre crop. With "any
    positive overlap" (:func:`vgutils.metrics.gt_mask`) token ``(r, c)`` of a
    ``rows x cols`` grid is inside box ``[x0, y0, x1, y1]`` (clamped to the image) exactly
    when ``floor(x0 * cols / W) <= c < ceil(x1 * cols / W)`` and the same for rows: the
    authors' scaling of the box onto the stretched grid. Equal to ``layout`` for
    families that only resize (Qwen2.5-VL, Gemma 3); the grid keeps its token order (a
    column-major InternVL ``ps_version`` v1 grid stays column-major). Undefined,
    ``ValueError`` naming ``family``, for a layout with several grids (tiled InternVL,
    LLaVA-NeXT's base grid and high-resolution grid)."""
    if len(layout.grids) != 1 or layout.grids[0][0] != 0:
        raise ValueError(
            f"box_mapping='scaled' is undefined for family {family!r}: its image gives "
            f"{len(layout.grids)} token grids (tiles), not one grid to stretch over the image"
        )
    _, rows, cols = layout.grids[0]
    if rows * cols != layout.n_tokens:
        raise ValueError(f"box_mapping='scaled' is undefined for family {family!r}")
    region = (0.0, 0.0, *map(float, layout.image_size))
    return TokenLayout.from_grids(
        [(rows, cols, region, layout.orders[0])], layout.image_size, layout.unplaced
    )


def rescaled_layout(layout: TokenLayout, image_size: tuple[int, int]) -> TokenLayout:
    """``layout`` of a resized copy of an image, in the pixels of the image of
    ``image_size`` it was resized from (the authors' Qwen pre-resize is a stretch: each
    axis scaled on its own); grids, orders and unplaced tokens unchanged."""
    width, height = layout.image_size
    sx, sy = image_size[0] / width, image_size[1] / height
    boxes = layout.boxes * np.array([sx, sy, sx, sy])
    return replace(layout, boxes=boxes, image_size=tuple(image_size))


def grid_boxes(
    rows: int, cols: int, region_xyxy: tuple[float, float, float, float], order: str = "row"
) -> np.ndarray:
    """xyxy boxes ``(rows*cols, 4)`` tiling ``region_xyxy`` evenly, row-major (``order``
    ``"row"``) or column-major (``"column"``: cell ``(r, c)`` is box ``c*rows + r``)."""
    if rows <= 0 or cols <= 0:
        raise ValueError(f"grid must have positive rows and cols; got {rows} x {cols}")
    if order not in ("row", "column"):
        raise ValueError(f"grid order must be 'row' or 'column'; got {order!r}")
    x0, y0, x1, y1 = (float(v) for v in region_xyxy)
    xs = x0 + (x1 - x0) * np.arange(cols + 1) / cols
    ys = y0 + (y1 - y0) * np.arange(rows + 1) / rows
    if order == "row":
        r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    else:
        c, r = np.meshgrid(np.arange(cols), np.arange(rows), indexing="ij")
    r, c = r.ravel(), c.ravel()
    return np.stack([xs[c], ys[r], xs[c + 1], ys[r + 1]], axis=1)

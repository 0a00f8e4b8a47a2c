"""Contact sheets of a dataset's images with their boxes drawn, to check boxes by eye."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

from vgutils.data.images import load_image
from vgutils.data.rows import Sample

BOX_COLOURS = ((230, 159, 0), (86, 180, 233), (0, 158, 115), (204, 121, 167))
"""Okabe-Ito orange, sky blue, bluish green, reddish purple (colour-blind safe)."""


def draw_boxes(sample: Sample, width: int = 3) -> Image.Image:
    """The sample's image (RGB) with each box outlined."""
    image = load_image(sample.image_path).copy()
    draw = ImageDraw.Draw(image)
    line = max(width, round(max(image.size) / 200))
    for index, (x0, y0, x1, y1) in enumerate(sample.boxes):
        colour = BOX_COLOURS[index % len(BOX_COLOURS)]
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=colour, width=line)
    return image


def contact_sheet(samples: list[Sample], out: Path, tile: int = 320, columns: int = 4) -> Path:
    """One PNG tiling every sample (image + boxes + id and question underneath)."""
    rows = -(-len(samples) // columns)
    caption = 34
    sheet = Image.new("RGB", (columns * tile, rows * (tile + caption)), "white")
    draw = ImageDraw.Draw(sheet)
    for index, sample in enumerate(samples):
        image = draw_boxes(sample)
        image.thumbnail((tile, tile))
        x, y = (index % columns) * tile, (index // columns) * (tile + caption)
        sheet.paste(image, (x + (tile - image.width) // 2, y))
        draw.text((x + 4, y + tile + 2), sample.id, fill="black")
        draw.text((x + 4, y + tile + 16), sample.question[:52], fill="black")
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out

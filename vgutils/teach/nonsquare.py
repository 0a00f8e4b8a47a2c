"""``teach-nonsquare``: held-out natural teaching scenes on non-square canvases, with
exact object boxes, for the box-mapping comparison (notebook 06).

Each scene of :func:`vgutils.teach.datasets.heldout_scenes` (natural) keeps its objects
(same shapes, colours and masks) and is redrawn on a wider or taller textured canvas at a
random offset; the boxes move with the objects, so they stay exact. With LLaVA's
pad-to-square such images are padded before the square grid is laid, which is where the
authors' scaled box mapping and the processor's real geometry disagree.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from vgutils.teach.datasets import HELDOUT_SEED, TEACH_DIR, heldout_scenes, write_jsonl
from vgutils.teach.scenes import COLOURS, SIZE, _texture

NAME = "teach-nonsquare"
ASPECTS = ((168, 112), (224, 112), (112, 168), (112, 224), (196, 140))
"""Canvas sizes (width, height) in turn; the scene's 112 px square fits in each."""


def _canvas(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """The teaching scenes' background texture stretched to ``width x height``."""
    texture = Image.fromarray(np.clip(_texture(rng), 0, 255).astype(np.uint8))
    return np.asarray(texture.resize((width, height), Image.BILINEAR)).astype(np.float64)


def build_nonsquare_set(root: Path, count: int = 40) -> Path:
    """Write ``teach/nonsquare-*.png`` and ``teach/teach-nonsquare.jsonl`` under ``root``
    (deterministic); returns the jsonl path."""
    out = Path(root) / TEACH_DIR
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([HELDOUT_SEED, 7])
    rows = []
    for index, scene in enumerate(heldout_scenes("natural", count)):
        width, height = ASPECTS[index % len(ASPECTS)]
        dx = int(rng.integers(0, width - SIZE + 1))
        dy = int(rng.integers(0, height - SIZE + 1))
        pixels = _canvas(rng, width, height)
        for obj in scene.objects:
            region = pixels[dy : dy + SIZE, dx : dx + SIZE]
            region[obj["mask"]] = COLOURS[obj["colour"]]
        name = f"nonsquare-{index:03d}.png"
        Image.fromarray(pixels.astype(np.uint8)).save(out / name)
        for number, q in enumerate(x for x in scene.questions if x.grounded):
            boxes = [[x0 + dx, y0 + dy, x1 + dx, y1 + dy] for x0, y0, x1, y1 in q.boxes]
            rows.append(
                {
                    "id": f"{NAME}-{index:03d}-{number}",
                    "image": name,
                    "question": q.question,
                    "answer": q.answer,
                    "q_type": q.q_type,
                    "bbox": boxes,
                    "bbox_format": "xyxy",
                    "modality": "synthetic scene",
                    "objects": len(scene.objects),
                    "box_origin": "geometry",
                    "box_method": "exact mask of the generated object, moved with it",
                    "source_package": "vgutils",
                    "source": "vgutils.teach.nonsquare",
                    "licence": "CC0 (generated)",
                }
            )
    return write_jsonl(out / f"{NAME}.jsonl", rows)

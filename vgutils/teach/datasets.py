"""Held-out teaching scenes as datasets: ``teach-natural`` and ``teach-medical`` (jsonl +
PNG under ``<data root>/teach/``), read through the same loaders as every dataset.
Only grounded questions (an object with an exact box) are written; the absent-object
"no" questions stay in :func:`heldout_scenes` for accuracy checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from vgutils.teach.scenes import Scene, make_scene

TEACH_DIR = "teach"
HELDOUT_SCENES = 60
HELDOUT_SEED = 1000  # training scenes come from another stream (train.py)


def heldout_scenes(domain: str, count: int = HELDOUT_SCENES) -> list[Scene]:
    """The held-out scenes of ``domain``, deterministic."""
    rng = np.random.default_rng([HELDOUT_SEED, 0 if domain == "natural" else 1])
    return [make_scene(domain, rng) for _ in range(count)]


def build_teach_sets(root: Path, count: int = HELDOUT_SCENES) -> dict[str, Path]:
    """Write ``teach/*.png`` and ``teach/teach-{natural,medical}.jsonl`` under ``root``."""
    out = Path(root) / TEACH_DIR
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for domain in ("natural", "medical"):
        rows = []
        for index, scene in enumerate(heldout_scenes(domain, count)):
            name = f"{domain}-{index:03d}.png"
            scene.image.save(out / name)
            for number, q in enumerate(x for x in scene.questions if x.grounded):
                rows.append(
                    {
                        "id": f"teach-{domain}-{index:03d}-{number}",
                        "image": name,
                        "question": q.question,
                        "answer": q.answer,
                        "q_type": q.q_type,
                        "bbox": q.boxes,
                        "bbox_format": "xyxy",
                        "modality": "synthetic scan" if domain == "medical" else "synthetic scene",
                        "objects": len(scene.objects),
                        "box_origin": "geometry",
                        "box_method": "exact mask of the generated object",
                        "source_package": "vgutils",
                        "source": "vgutils.teach.scenes",
                        "licence": "CC0 (generated)",
                    }
                )
        path = out / f"teach-{domain}.jsonl"
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))
        tmp.replace(path)
        written[f"teach-{domain}"] = path
    return written

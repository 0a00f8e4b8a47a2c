"""Held-out teaching scenes as datasets: ``teach-natural`` and ``teach-medical`` (jsonl +
PNG under ``<data root>/teach/``), read through the same loaders as every dataset.
Only grounded questions (an object with an exact box) are written; the absent-object
"no" questions stay in :func:`heldout_scenes` for accuracy checks.

``teach-mc`` (:func:`build_teach_mc`): the same held-out scenes as a multiple-choice
benchmark file in the real format (``teach-mc/medical_multimodel_evaluation_data.json`` +
``teach-mc/images/``): every question (absent-object ones included), options from
:func:`mc_options` (yes / no; the four colours), ``dataset``
``teach-natural`` / ``teach-medical``, ``subset`` the question type."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from vgutils.teach.scenes import COLOURS, Scene, make_scene

TEACH_DIR = "teach"
TEACH_MC_DIR = "teach-mc"
HELDOUT_SCENES = 60
HELDOUT_SEED = 1000  # training scenes come from another stream (train.py)


def mc_options(answer: str) -> list[str] | None:
    """The options of a question's multiple-choice form (fixed order), from its answer:
    yes / no questions ``["yes", "no"]``, colour questions the four colours; ``None`` for
    answers without one (the generic prompt's object count)."""
    if answer in ("yes", "no"):
        return ["yes", "no"]
    if answer in COLOURS:
        return list(COLOURS)
    return None


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    """Write ``rows`` as jsonl (sorted keys) through a temporary file and one rename, so a
    reader never sees half a dataset; returns ``path``."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))
    tmp.replace(path)
    return path


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
        written[f"teach-{domain}"] = write_jsonl(out / f"teach-{domain}.jsonl", rows)
    written["teach-mc"] = build_teach_mc(root, count)
    return written


def build_teach_mc(root: Path, count: int = HELDOUT_SCENES) -> Path:
    """Write the held-out scenes as a multiple-choice benchmark under ``root/teach-mc``;
    returns the json's path."""
    from vgutils.benchmarks import BENCHMARK_FILE

    out = Path(root) / TEACH_MC_DIR
    (out / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for domain in ("natural", "medical"):
        for index, scene in enumerate(heldout_scenes(domain, count)):
            name = f"images/{domain}-{index:03d}.png"
            scene.image.save(out / name)
            for q in scene.questions:
                options = mc_options(q.answer)
                if options is None:
                    continue
                records.append(
                    {
                        "question": q.question,
                        "options": options,
                        "answer": q.answer,
                        "image": [name],
                        "dataset": f"teach-{domain}",
                        "subset": q.q_type,
                        "question_type": "closed",
                        "test_id": len(records) + 1,
                    }
                )
    path = out / BENCHMARK_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(records, indent=1))
    tmp.replace(path)
    return path

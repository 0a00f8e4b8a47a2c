"""Localization questions from COCO instance annotations (to rebuild a COCO comparison set)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

QUESTION = "Is there a {category} in this image?"


def coco_questions(instances: dict, min_area: float = 0.02, max_area: float = 0.5) -> list[dict]:
    """One row per (image, category) with exactly one non-crowd instance whose box covers
    ``min_area`` to ``max_area`` of the image; sorted by image id then category id.
    Boxes stay COCO ``xywh`` and the rows say so."""
    categories = {c["id"]: c["name"] for c in instances["categories"]}
    images = {i["id"]: i for i in instances["images"]}
    per_pair: dict[tuple[int, int], list[dict]] = defaultdict(list)
    crowded: set[tuple[int, int]] = set()
    for annotation in instances["annotations"]:
        key = (annotation["image_id"], annotation["category_id"])
        if annotation.get("iscrowd", 0):
            crowded.add(key)
        else:
            per_pair[key].append(annotation)
    rows = []
    for (image_id, category_id), found in sorted(per_pair.items()):
        if len(found) != 1 or (image_id, category_id) in crowded:
            continue
        image = images[image_id]
        x, y, w, h = found[0]["bbox"]
        fraction = w * h / (image["width"] * image["height"])
        if not min_area <= fraction <= max_area:
            continue
        rows.append(
            {
                "id": f"coco-{image_id}-{category_id}",
                "image": image["file_name"],
                "question": QUESTION.format(category=categories[category_id]),
                "answer": "yes",
                "q_type": "localization",
                "bbox": [x, y, w, h],
                "bbox_format": "xywh",
                "category": categories[category_id],
            }
        )
    return rows


def write_coco_questions(
    instances_json: Path, out_jsonl: Path, min_area: float = 0.02, max_area: float = 0.5
) -> int:
    """Read an instances file, write the questions as jsonl; returns the row count."""
    rows = coco_questions(json.loads(Path(instances_json).read_text()), min_area, max_area)
    out_jsonl.parent.mkdir(parents=True, exist_ok=True)
    out_jsonl.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return len(rows)

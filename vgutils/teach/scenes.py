"""Synthetic scenes for the teaching model, deterministic by seed, with exact boxes.

- ``natural``: colour images, 1-3 shapes (circle, square, triangle) of distinct colours
  (red, green, blue, yellow) on a textured background.
- ``medical``: grayscale scan-like images: a body outline with organ-like regions (liver,
  kidneys, spleen) at plausible places with jitter, and sometimes a small low-contrast
  lesion inside an organ.

Each scene carries questions in VGMed's two types, with answers: localization ("Is there
a triangle in the image?", "Does this image show a kidney?") and attribute ("What colour
is the square?", "Is the square red?", "Is there a lesion in the liver?"). Questions
whose answer is "no" because the object is absent have no box; they are used in
training only (``grounded=False``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SIZE = 112
SHAPES = ("circle", "square", "triangle")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 200, 30),
}
ORGANS = ("liver", "kidney", "spleen")
NUMBERS = ("zero", "one", "two", "three", "four", "five")
NATURAL_QUESTIONS = {
    "present": "Is there a {kind} in the image?",
    "colour": "What colour is the {kind}?",
    "is_colour": "Is the {kind} {colour}?",
}
MEDICAL_QUESTIONS = {
    "present": "Does this image show a {kind}?",
    "lesion": "Is there a lesion in the {kind}?",
}
"""Question templates: the generator and the tokenizer corpus (:func:`question_texts`)
both read them, so a changed wording cannot leave the corpus behind."""


@dataclass
class SceneQuestion:
    question: str
    answer: str
    q_type: str  # localization | attribute
    boxes: list[list[float]] = field(default_factory=list)  # xyxy; empty: not grounded

    @property
    def grounded(self) -> bool:
        return bool(self.boxes)


@dataclass
class Scene:
    domain: str
    image: Image.Image
    objects: list[dict]  # {"kind", "colour"?, "boxes": [xyxy, ...], "mask": (H, W) bool}
    questions: list[SceneQuestion]
    generic_answer: str  # the trained answer to the generic prompt (object count)


def _texture(rng: np.random.Generator) -> np.ndarray:
    base = rng.integers(60, 200, size=3)
    noise = rng.normal(0, 18, size=(SIZE // 8, SIZE // 8, 3))
    coarse = np.asarray(
        Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).resize(
            (SIZE, SIZE), Image.BILINEAR
        ),
        dtype=np.float64,
    )
    fine = rng.normal(0, 8, size=(SIZE, SIZE, 3))
    return np.clip(coarse * 0.8 + fine + 20, 0, 255)


def _shape_mask(kind: str, box: tuple[int, int, int, int]) -> np.ndarray:
    mask = Image.new("L", (SIZE, SIZE), 0)
    draw = ImageDraw.Draw(mask)
    x0, y0, x1, y1 = box
    if kind == "circle":
        draw.ellipse([x0, y0, x1 - 1, y1 - 1], fill=255)
    elif kind == "square":
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=255)
    else:
        draw.polygon([((x0 + x1) / 2, y0), (x1 - 1, y1 - 1), (x0, y1 - 1)], fill=255)
    return np.asarray(mask) > 0


def _mask_box(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def _component_boxes(mask: np.ndarray) -> list[list[float]]:
    """One box per connected part (the two kidneys are one organ with two boxes)."""
    from scipy import ndimage

    labels, count = ndimage.label(mask)
    return [_mask_box(labels == i) for i in range(1, count + 1)]


def _place(rng, taken: list, low: int, high: int, tries: int = 50):
    for _ in range(tries):
        side = int(rng.integers(low, high + 1))
        x0 = int(rng.integers(2, SIZE - side - 2))
        y0 = int(rng.integers(2, SIZE - side - 2))
        box = (x0, y0, x0 + side, y0 + side)
        if all(
            box[2] + 3 <= b[0] or b[2] + 3 <= box[0] or box[3] + 3 <= b[1] or b[3] + 3 <= box[1]
            for b in taken
        ):
            return box
    return None


def _absent(template: str, kinds: tuple[str, ...], present) -> list[SceneQuestion]:
    """The "no" localization question for every kind not in the scene (no box)."""
    return [
        SceneQuestion(template.format(kind=kind), "no", "localization")
        for kind in kinds
        if kind not in present
    ]


def natural_scene(rng: np.random.Generator) -> Scene:
    """A textured background with 1-3 distinct shapes of distinct colours (mostly several,
    so that no answer can be read off the image as a whole)."""
    pixels = _texture(rng)
    count = int(rng.choice([1, 2, 3], p=[0.2, 0.4, 0.4]))
    kinds = [str(k) for k in rng.permutation(SHAPES)[:count]]
    colours = [str(c) for c in rng.permutation(list(COLOURS))[:count]]  # distinct per scene
    objects, taken = [], []
    for kind, colour in zip(kinds, colours, strict=True):
        box = _place(rng, taken, 26, 40)
        if box is None:
            continue
        mask = _shape_mask(kind, box)
        pixels[mask] = COLOURS[colour]
        taken.append(box)
        objects.append({"kind": kind, "colour": colour, "boxes": [_mask_box(mask)], "mask": mask})
    image = Image.fromarray(pixels.astype(np.uint8))
    present = {o["kind"]: o for o in objects}
    questions = []
    for obj in objects:
        box = obj["boxes"]
        questions.append(
            SceneQuestion(
                NATURAL_QUESTIONS["present"].format(kind=obj["kind"]), "yes", "localization", box
            )
        )
        questions.append(
            SceneQuestion(
                NATURAL_QUESTIONS["colour"].format(kind=obj["kind"]),
                obj["colour"],
                "attribute",
                box,
            )
        )
        asked = (
            obj["colour"]
            if rng.random() < 0.5
            else str(rng.choice([c for c in COLOURS if c != obj["colour"]]))
        )
        questions.append(
            SceneQuestion(
                NATURAL_QUESTIONS["is_colour"].format(kind=obj["kind"], colour=asked),
                "yes" if asked == obj["colour"] else "no",
                "attribute",
                box,
            )
        )
    questions += _absent(NATURAL_QUESTIONS["present"], SHAPES, present)
    return Scene("natural", image, objects, questions, NUMBERS[len(objects)])


def medical_scene(rng: np.random.Generator) -> Scene:
    """A grayscale axial 'scan': body outline, liver, kidneys, spleen, maybe a lesion."""
    canvas = np.zeros((SIZE, SIZE))
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]

    def ellipse(cx, cy, rx, ry):
        return ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1

    j = lambda s: rng.normal(0, s)  # noqa: E731 - jitter
    body = ellipse(56 + j(2), 58 + j(2), 50 + j(2), 40 + j(2))
    canvas[body] = 90
    canvas[body & ~ellipse(56, 58, 46, 36)] = 150  # a brighter rim (skin / fat)
    organs = {
        "liver": ellipse(34 + j(2), 50 + j(2), 17 + j(1.5), 14 + j(1.5)),
        "spleen": ellipse(82 + j(2), 48 + j(2), 8 + j(1), 10 + j(1)),
        "kidney": ellipse(38 + j(2), 76 + j(1.5), 7 + j(0.8), 9 + j(0.8))
        | ellipse(74 + j(2), 76 + j(1.5), 7 + j(0.8), 9 + j(0.8)),
    }
    present = [o for o in ORGANS if rng.random() < 0.8]
    intensity = {"liver": 125, "spleen": 135, "kidney": 170}
    objects = []
    for organ in present:
        mask = organs[organ] & body
        canvas[mask] = intensity[organ] + j(5)
        objects.append({"kind": organ, "boxes": _component_boxes(mask), "mask": mask})
    lesion_in = None
    candidates = [o for o in objects if o["kind"] in ("liver", "spleen", "kidney")]
    if candidates and rng.random() < 0.5:
        host = candidates[int(rng.integers(len(candidates)))]
        ys, xs = np.nonzero(host["mask"])
        pick = int(rng.integers(len(ys)))
        lesion = ellipse(xs[pick], ys[pick], 3 + j(0.5), 3 + j(0.5)) & host["mask"]
        canvas[lesion] -= 28  # low contrast
        lesion_in = host["kind"]
    canvas = canvas + rng.normal(0, 6, size=canvas.shape)
    smooth = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8)).filter(
        ImageFilter.GaussianBlur(0.6)
    )
    image = smooth.convert("RGB")
    questions = []
    for obj in objects:
        box = obj["boxes"]
        questions.append(
            SceneQuestion(
                MEDICAL_QUESTIONS["present"].format(kind=obj["kind"]), "yes", "localization", box
            )
        )
        questions.append(
            SceneQuestion(
                MEDICAL_QUESTIONS["lesion"].format(kind=obj["kind"]),
                "yes" if lesion_in == obj["kind"] else "no",
                "attribute",
                box,
            )
        )
    questions += _absent(MEDICAL_QUESTIONS["present"], ORGANS, present)
    return Scene("medical", image, objects, questions, NUMBERS[len(objects)])


def make_scene(domain: str, rng: np.random.Generator) -> Scene:
    if domain == "natural":
        return natural_scene(rng)
    if domain == "medical":
        return medical_scene(rng)
    raise ValueError(f"unknown domain {domain!r}; expected natural or medical")


def question_texts() -> list[str]:
    """Every question the generator can produce."""
    texts = [
        template.format(kind=kind, colour=colour)
        for template in NATURAL_QUESTIONS.values()
        for kind in SHAPES
        for colour in COLOURS
    ]
    texts += [
        template.format(kind=organ) for template in MEDICAL_QUESTIONS.values() for organ in ORGANS
    ]
    return list(dict.fromkeys(texts))


def answer_texts() -> list[str]:
    """Every answer the generator can produce (object counts included)."""
    return [*COLOURS, *NUMBERS, "yes", "no"]

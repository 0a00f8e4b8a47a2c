"""The embedded sample sets, built offline from images shipped inside installed packages.

``build_sample_sets(root)`` writes ``samples/*.png`` plus ``samples/sample-medical.jsonl``
and ``samples/sample-natural.jsonl`` under the data root, deterministically. Each row
says where its image and its box came from: ``box_origin`` is ``mask`` (derived from a
segmentation or threshold of the image, method in ``box_method``), ``geometry`` (known
shapes) or ``hand`` (drawn by hand and checked by eye on a rendered overlay,
``python -m vgutils data overlay``). Boxes are xyxy in the PNG's pixels.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

SAMPLES_DIR = "samples"
PYDICOM_LICENCE = (
    "pydicom test data (NEMA WG04 / vendor sample files; pydicom: no restriction on use, "
    "see pydicom/data/test_files/README.txt)"
)
MNI_LICENCE = (
    "MNI ICBM152 2009 template via nilearn (BSD-3-Clause); template: free use with "
    "copyright notice, (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, MNI"
)


@dataclass
class Question:
    question: str
    answer: str
    q_type: str
    boxes: list[list[float]]
    box_origin: str  # mask | geometry | hand
    box_method: str


@dataclass
class SampleImage:
    name: str
    domain: str  # medical | natural
    modality: str
    pixels: np.ndarray  # (H, W) or (H, W, 3) uint8
    source_package: str
    source: str
    licence: str
    questions: list[Question] = field(default_factory=list)


# --- helpers ---------------------------------------------------------------------------


def to_uint8(values: np.ndarray, low: float | None = None, high: float | None = None):
    values = np.asarray(values, dtype=np.float64)
    low = values.min() if low is None else low
    high = values.max() if high is None else high
    return np.round(np.clip((values - low) / (high - low), 0, 1) * 255).astype(np.uint8)


def mask_box(mask: np.ndarray) -> list[float]:
    """xyxy box (pixel edges) around the True pixels of ``mask``."""
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def largest_component(mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask)
    if count == 0:
        raise ValueError("empty mask")
    sizes = ndimage.sum(mask, labels, range(1, count + 1))
    return labels == (1 + int(np.argmax(sizes)))


def _dicom(name: str):
    import pydicom
    from pydicom.data import get_testdata_file

    return pydicom.dcmread(get_testdata_file(name, download=False))


def _hu(dataset) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut

    return apply_modality_lut(dataset.pixel_array, dataset).astype(np.float64)


def _window(dataset, values: np.ndarray) -> np.ndarray:
    center = float(np.atleast_1d(dataset.WindowCenter)[0])
    width = float(np.atleast_1d(dataset.WindowWidth)[0])
    return to_uint8(values, center - width / 2, center + width / 2)


# --- medical ---------------------------------------------------------------------------


def _mni_slices() -> list[SampleImage]:
    from nilearn import datasets

    template = np.asarray(datasets.load_mni152_template(resolution=1).get_fdata())
    brain = np.asarray(datasets.load_mni152_brain_mask(resolution=1).get_fdata()) > 0.5
    cuts = {
        # name: (slice function, description); arrays are (x, y, z) in RAS order,
        # shown with the patient's anterior / superior side up
        "axial": (lambda a: np.flipud(a[:, :, a.shape[2] // 2 + 10].T), "axial, z index mid+10"),
        "coronal": (lambda a: np.flipud(a[:, a.shape[1] // 2, :].T), "coronal, y index mid"),
        "sagittal": (lambda a: np.flipud(a[a.shape[0] // 2 + 20, :, :].T), "sagittal, x mid+20"),
    }
    images = []
    for cut, (take, description) in cuts.items():
        pixels = to_uint8(take(template))
        box = mask_box(take(brain))
        method = f"bounding box of nilearn's MNI152 brain mask on the same slice ({description})"
        images.append(
            SampleImage(
                name=f"mni152-{cut}",
                domain="medical",
                modality="MRI (T1 template)",
                pixels=pixels,
                source_package="nilearn",
                source=f"nilearn.datasets.load_mni152_template(resolution=1), {description}",
                licence=MNI_LICENCE,
                questions=[
                    Question(
                        "Does this image show a brain?",
                        "yes",
                        "localization",
                        [box],
                        "mask",
                        method,
                    ),
                    Question(
                        "Is there evidence of abnormal density or masses in the brain?",
                        "no",
                        "attribute",
                        [box],
                        "mask",
                        method,
                    ),
                ],
            )
        )
    return images


def _head_ct() -> SampleImage:
    dataset = _dicom("J2K_pixelrep_mismatch.dcm")
    values = _hu(dataset)
    head = largest_component(values > -300)
    return SampleImage(
        name="ct-head",
        domain="medical",
        modality="CT",
        pixels=_window(dataset, values),
        source_package="pydicom",
        source="pydicom test file J2K_pixelrep_mismatch.dcm (head CT, skull base)",
        licence=PYDICOM_LICENCE,
        questions=[
            Question(
                "Does this image show a head?",
                "yes",
                "localization",
                [mask_box(head)],
                "mask",
                "largest connected region above -300 HU",
            ),
            Question(
                "Are there air cells in the temporal bones?",
                "yes",
                "attribute",
                [[95, 238, 208, 348], [335, 255, 418, 342]],
                "hand",
                "both mastoid air-cell regions, drawn by hand",
            ),
        ],
    )


def _abdomen_mr() -> SampleImage:
    dataset = _dicom("examples_overlay.dcm")
    overlay = dataset.overlay_array(0x6000).astype(bool)
    labels, count = ndimage.label(ndimage.binary_dilation(overlay, iterations=2))
    # the lesion marker is the ring-shaped overlay component in the left half
    candidates = [labels == i for i in range(1, count + 1)]
    ring = max(
        (m for m in candidates if mask_box(m)[2] < overlay.shape[1] / 2),
        key=lambda m: m.sum(),
    )
    lesion = mask_box(ring & overlay)
    return SampleImage(
        name="mr-abdomen",
        domain="medical",
        modality="MRI",
        pixels=_window(dataset, _hu(dataset)),
        source_package="pydicom",
        source="pydicom test file examples_overlay.dcm (abdominal MR with lesion overlay)",
        licence=PYDICOM_LICENCE,
        questions=[
            Question(
                "Does this image show a kidney?",
                "yes",
                "localization",
                [[116, 186, 188, 254], [286, 189, 354, 254]],
                "hand",
                "both kidneys, drawn by hand",
            ),
            Question(
                "Is there a lesion in the liver?",
                "yes",
                "attribute",
                [lesion],
                "mask",
                "bounding box of the file's own lesion-marking overlay (group 6000)",
            ),
        ],
    )


def _bone_scan() -> SampleImage:
    dataset = _dicom("JPEG2000.dcm")
    values = dataset.pixel_array.astype(np.float64)
    hot = largest_component(values > 0.6 * values.max())
    box = mask_box(hot)
    method = "largest connected region above 60% of the maximum count (bladder activity)"
    return SampleImage(
        name="nm-bone-scan",
        domain="medical",
        modality="nuclear medicine (whole-body bone scan)",
        pixels=to_uint8(values),
        source_package="pydicom",
        source="pydicom test file JPEG2000.dcm (whole-body NM scan, anterior)",
        licence=PYDICOM_LICENCE,
        questions=[
            Question(
                "Does this image show a bladder?", "yes", "localization", [box], "mask", method
            ),
            Question(
                "Is there increased tracer uptake in the bladder?",
                "yes",
                "attribute",
                [box],
                "mask",
                method,
            ),
        ],
    )


def _doppler() -> SampleImage:
    dataset = _dicom("examples_rgb_color.dcm")
    rgb = np.asarray(dataset.pixel_array, dtype=np.uint8)
    spread = rgb.max(axis=2).astype(int) - rgb.min(axis=2).astype(int)
    colour = spread > 60
    colour[:, :30] = colour[:, 285:] = False  # the colour scale bars at the sides
    colour[:40] = colour[200:] = False  # text above and below the image area
    flow = mask_box(colour)
    return SampleImage(
        name="us-doppler-lymph-node",
        domain="medical",
        modality="ultrasound (colour Doppler)",
        pixels=rgb,
        source_package="pydicom",
        source="pydicom test file examples_rgb_color.dcm (colour Doppler, lymph node)",
        licence=PYDICOM_LICENCE,
        questions=[
            Question(
                "Does this image show a lymph node?",
                "yes",
                "localization",
                [[40, 76, 278, 136]],
                "hand",
                "the oval hypoechoic node, drawn by hand",
            ),
            Question(
                "Is there blood flow in the lymph node?",
                "yes",
                "attribute",
                [flow],
                "mask",
                "bounding box of the colour-Doppler pixels inside the image area",
            ),
        ],
    )


def _echo() -> SampleImage:
    dataset = _dicom("examples_ybr_color.dcm")
    rgb = np.asarray(dataset.pixel_array[0], dtype=np.uint8)
    heart = [[88, 38, 218, 202]]
    return SampleImage(
        name="us-echocardiogram",
        domain="medical",
        modality="ultrasound (echocardiogram)",
        pixels=rgb,
        source_package="pydicom",
        source="pydicom test file examples_ybr_color.dcm, frame 1 (echocardiogram)",
        licence=PYDICOM_LICENCE,
        questions=[
            Question(
                "Does this image show a heart?",
                "yes",
                "localization",
                heart,
                "hand",
                "the heart in the imaging sector, drawn by hand",
            ),
            Question(
                "Are the chambers of the heart dark on this ultrasound?",
                "yes",
                "attribute",
                heart,
                "hand",
                "the heart in the imaging sector, by hand",
            ),
        ],
    )


def _retina() -> SampleImage:
    from skimage import data
    from skimage.color import rgb2gray

    rgb = data.retina()
    gray = rgb2gray(rgb)
    disc = largest_component(gray > np.percentile(gray, 99.5))
    return SampleImage(
        name="fundus-retina",
        domain="medical",
        modality="fundus photograph",
        pixels=rgb,
        source_package="scikit-image",
        source="skimage.data.retina()",
        licence="CC0 1.0 (Mikael Häggström, via scikit-image)",
        questions=[
            Question(
                "Does this image show the optic disc?",
                "yes",
                "localization",
                [mask_box(disc)],
                "mask",
                "largest connected region of the brightest 0.5% of pixels",
            ),
            Question(
                "Is the fovea darker than the surrounding retina?",
                "yes",
                "attribute",
                [[630, 610, 790, 770]],
                "hand",
                "the fovea, drawn by hand",
            ),
        ],
    )


def _microaneurysms() -> SampleImage:
    from skimage import data

    gray = data.microaneurysms()
    dark = gray < np.percentile(gray, 0.8)
    labels, count = ndimage.label(dark)
    sizes = ndimage.sum(dark, labels, range(1, count + 1))
    means = ndimage.mean(gray, labels, range(1, count + 1))
    # the darkest compact blob (vessels are long, lighter and thinner)
    compact = [i for i in range(count) if sizes[i] >= 4]
    spot = labels == 1 + min(compact, key=lambda i: means[i])
    return SampleImage(
        name="fundus-microaneurysms",
        domain="medical",
        modality="fundus photograph (crop)",
        pixels=gray,
        source_package="scikit-image",
        source="skimage.data.microaneurysms()",
        licence="CC0 (Andreas Maier, via scikit-image)",
        questions=[
            Question(
                "Does this image show a blood vessel?",
                "yes",
                "localization",
                [[0, 42, 102, 57]],
                "hand",
                "the middle horizontal vessel, drawn by hand",
            ),
            Question(
                "Is there a microaneurysm in the retina?",
                "yes",
                "attribute",
                [mask_box(ndimage.binary_dilation(spot, iterations=1))],
                "mask",
                "darkest compact blob among the darkest 0.8% of pixels, dilated 1 px",
            ),
        ],
    )


def _ihc() -> SampleImage:
    from skimage import data
    from skimage.color import rgb2hed

    rgb = data.immunohistochemistry()
    dab = rgb2hed(rgb)[..., 2]
    stained = ndimage.binary_closing(dab > np.percentile(dab, 60), iterations=4)
    stained = ndimage.binary_fill_holes(ndimage.binary_opening(stained, iterations=3))
    labels, count = ndimage.label(stained)
    centres = ndimage.center_of_mass(stained, labels, range(1, count + 1))
    sizes = ndimage.sum(stained, labels, range(1, count + 1))
    # the gland in the lower middle of the image: large component, centre below the middle
    lower = [i for i in range(count) if centres[i][0] > 300 and 150 < centres[i][1] < 420]
    gland = labels == 1 + max(lower, key=lambda i: sizes[i])
    box = mask_box(gland)
    method = (
        "largest DAB-stained region (rgb2hed top 40%, closed, opened, filled) centred in "
        "the lower middle"
    )
    return SampleImage(
        name="ihc-colon",
        domain="medical",
        modality="histology (immunohistochemistry)",
        pixels=rgb,
        source_package="scikit-image",
        source="skimage.data.immunohistochemistry()",
        licence="no known copyright restrictions (via scikit-image)",
        questions=[
            Question("Does this image show a gland?", "yes", "localization", [box], "mask", method),
            Question(
                "Is there brown membrane staining in the gland?",
                "yes",
                "attribute",
                [box],
                "mask",
                method,
            ),
        ],
    )


# Shepp-Logan ellipses as in skimage.draw / Toft: (intensity, a, b, x0, y0, angle), in
# [-1, 1] with y up; the image maps x = -1..1 to columns 0..W and y = 1..-1 to rows 0..H.
SHEPP_LOGAN_SKULL = (1.0, 0.69, 0.92, 0.0, 0.0, 0.0)
SHEPP_LOGAN_SMALL = (
    (0.01, 0.046, 0.023, -0.08, -0.605, 0.0),
    (0.01, 0.023, 0.023, 0.0, -0.606, 0.0),
    (0.01, 0.023, 0.046, 0.06, -0.605, 0.0),
)


def ellipse_box(ellipse, width: int, height: int) -> list[float]:
    """xyxy pixel box of an axis-aligned phantom ellipse."""
    _, a, b, x0, y0, angle = ellipse
    if angle:
        raise ValueError("only axis-aligned ellipses")
    left, right = (x0 - a + 1) / 2 * width, (x0 + a + 1) / 2 * width
    top, bottom = (1 - (y0 + b)) / 2 * height, (1 - (y0 - b)) / 2 * height
    return [round(v, 3) for v in (left, top, right, bottom)]


def _phantom() -> SampleImage:
    from skimage import data

    pixels = to_uint8(data.shepp_logan_phantom())
    height, width = pixels.shape
    return SampleImage(
        name="phantom-shepp-logan",
        domain="medical",
        modality="CT phantom",
        pixels=pixels,
        source_package="scikit-image",
        source="skimage.data.shepp_logan_phantom()",
        licence="public domain (analytic phantom, via scikit-image)",
        questions=[
            Question(
                "Does this image show a skull?",
                "yes",
                "localization",
                [ellipse_box(SHEPP_LOGAN_SKULL, width, height)],
                "geometry",
                "outer ellipse of the Shepp-Logan definition",
            ),
            Question(
                "Is there a small lesion in the lower brain?",
                "yes",
                "attribute",
                [ellipse_box(e, width, height) for e in SHEPP_LOGAN_SMALL],
                "geometry",
                "the three small ellipses of the Shepp-Logan definition",
            ),
        ],
    )


def _ct_spine() -> SampleImage:
    dataset = _dicom("CT_small.dcm")
    values = _hu(dataset)
    bone = largest_component(values > 250)
    return SampleImage(
        name="ct-vertebra",
        domain="medical",
        modality="CT",
        pixels=to_uint8(values, -160, 440),
        source_package="pydicom",
        source="pydicom test file CT_small.dcm (CT, vertebra)",
        licence=PYDICOM_LICENCE,
        questions=[
            Question(
                "Does this image show a vertebra?",
                "yes",
                "localization",
                [mask_box(bone)],
                "mask",
                "largest connected region above 250 HU",
            ),
            Question(
                "Is the spinal canal visible in the vertebra?",
                "yes",
                "attribute",
                [[44, 34, 76, 58]],
                "hand",
                "the spinal canal, drawn by hand",
            ),
        ],
    )


# --- natural ---------------------------------------------------------------------------

SKIMAGE_LICENCES = {
    "astronaut": "public domain (NASA, via scikit-image)",
    "chelsea": "CC0 (Stefan van der Walt, via scikit-image)",
    "coffee": "CC0 (Rachel Michetti, via scikit-image)",
    "rocket": "public domain (SpaceX, via scikit-image)",
    "camera": "CC0 (Lav Varshney, via scikit-image)",
    "stereo_motorcycle": "Middlebury 2014 stereo benchmark (via scikit-image)",
    "clock": "public domain (Stefan van der Walt, via scikit-image)",
    "coins": "no known copyright restrictions (Brooklyn Museum, via scikit-image)",
    "horse": "CC0 (Andreas Preuss, openclipart, via scikit-image)",
}

HAND_NATURAL = {
    # name: (skimage function, [(question, answer, q_type, boxes, what)])
    "astronaut": (
        "astronaut",
        [
            (
                "Is there a person in the image?",
                "yes",
                "localization",
                [[15, 20, 395, 512]],
                "the astronaut",
            ),
            ("What colour is the suit?", "orange", "attribute", [[15, 180, 395, 512]], "the suit"),
            (
                "Is there a rocket in the image?",
                "yes",
                "localization",
                [[350, 0, 458, 270]],
                "the shuttle model",
            ),
        ],
    ),
    "chelsea": (
        "chelsea",
        [
            ("Is there a cat in the image?", "yes", "localization", [[30, 0, 451, 300]], "the cat"),
            (
                "What colour are the cat's eyes?",
                "green",
                "attribute",
                [[148, 84, 230, 152], [320, 98, 387, 162]],
                "both eyes",
            ),
        ],
    ),
    "coffee": (
        "coffee",
        [
            (
                "Is there a cup in the image?",
                "yes",
                "localization",
                [[150, 15, 395, 290]],
                "the cup",
            ),
            ("What colour is the saucer?", "red", "attribute", [[65, 60, 480, 400]], "the saucer"),
        ],
    ),
    "rocket": (
        "rocket",
        [
            (
                "Is there a rocket in the image?",
                "yes",
                "localization",
                [[305, 125, 337, 410]],
                "the rocket",
            ),
            (
                "What colour is the rocket?",
                "white",
                "attribute",
                [[305, 125, 337, 410]],
                "the rocket",
            ),
        ],
    ),
    "camera": (
        "camera",
        [
            (
                "Is there a camera in the image?",
                "yes",
                "localization",
                [[255, 135, 330, 190]],
                "the camera on the tripod",
            ),
            (
                "What colour is the man's coat?",
                "black",
                "attribute",
                [[0, 100, 300, 512]],
                "the coat",
            ),
        ],
    ),
    "motorcycle": (
        "stereo_motorcycle",
        [
            (
                "Is there a motorcycle in the image?",
                "yes",
                "localization",
                [[85, 80, 690, 450]],
                "the motorcycle",
            ),
            (
                "What colour is the fuel tank?",
                "red",
                "attribute",
                [[358, 150, 467, 220]],
                "the fuel tank",
            ),
        ],
    ),
    "clock": (
        "clock",
        [
            (
                "Is there a clock in the image?",
                "yes",
                "localization",
                [[135, 88, 285, 218]],
                "the clock",
            ),
            ("What shape is the clock?", "round", "attribute", [[135, 88, 285, 218]], "the clock"),
        ],
    ),
}


def _skimage_pixels(function: str) -> np.ndarray:
    from skimage import data

    pixels = getattr(data, function)()
    return pixels[0] if isinstance(pixels, tuple) else pixels


def _hand_natural() -> list[SampleImage]:
    images = []
    for name, (function, questions) in HAND_NATURAL.items():
        images.append(
            SampleImage(
                name=name,
                domain="natural",
                modality="photograph",
                pixels=_skimage_pixels(function),
                source_package="scikit-image",
                source=f"skimage.data.{function}()"
                + ("[0] (left view)" if function.startswith("stereo") else ""),
                licence=SKIMAGE_LICENCES[function],
                questions=[
                    Question(q, a, t, boxes, "hand", f"{what}, drawn by hand")
                    for q, a, t, boxes, what in questions
                ],
            )
        )
    return images


def _coins() -> SampleImage:
    from skimage import data, filters

    gray = data.coins()
    coins = ndimage.binary_fill_holes(
        ndimage.binary_closing(filters.sobel(gray) > 0.08, iterations=2)
    )
    labels, count = ndimage.label(coins)
    sizes = ndimage.sum(coins, labels, range(1, count + 1))
    boxes = [mask_box(labels == i + 1) for i in range(count) if sizes[i] > 400]
    method = "filled Sobel-edge regions larger than 400 px, one box per coin"
    return SampleImage(
        name="coins",
        domain="natural",
        modality="photograph",
        pixels=gray,
        source_package="scikit-image",
        source="skimage.data.coins()",
        licence=SKIMAGE_LICENCES["coins"],
        questions=[
            Question("Are there coins in the image?", "yes", "localization", boxes, "mask", method),
            Question("What colour are the coins?", "gray", "attribute", boxes, "mask", method),
        ],
    )


def _horse() -> SampleImage:
    from skimage import data

    silhouette = ~data.horse()  # True on the horse
    box = mask_box(silhouette)
    method = "bounding box of the silhouette"
    return SampleImage(
        name="horse",
        domain="natural",
        modality="drawing (silhouette)",
        pixels=np.where(silhouette, 0, 255).astype(np.uint8),
        source_package="scikit-image",
        source="skimage.data.horse()",
        licence=SKIMAGE_LICENCES["horse"],
        questions=[
            Question(
                "Is there a horse in the image?", "yes", "localization", [box], "mask", method
            ),
            Question("What colour is the horse?", "black", "attribute", [box], "mask", method),
        ],
    )


MEDICAL_BUILDERS: tuple[Callable[[], SampleImage | list[SampleImage]], ...] = (
    _mni_slices,
    _head_ct,
    _abdomen_mr,
    _bone_scan,
    _doppler,
    _echo,
    _retina,
    _microaneurysms,
    _ihc,
    _phantom,
    _ct_spine,
)
NATURAL_BUILDERS: tuple[Callable[[], SampleImage | list[SampleImage]], ...] = (
    _hand_natural,
    _coins,
    _horse,
)


def collect(builders) -> list[SampleImage]:
    images: list[SampleImage] = []
    for build in builders:
        made = build()
        images.extend(made if isinstance(made, list) else [made])
    return images


def _rows(image: SampleImage, file_name: str) -> list[dict]:
    rows = []
    for index, q in enumerate(image.questions):
        rows.append(
            {
                "id": f"{image.name}-{index}",
                "image": file_name,
                "question": q.question,
                "answer": q.answer,
                "q_type": q.q_type,
                "bbox": q.boxes,
                "bbox_format": "xyxy",
                "modality": image.modality,
                "box_origin": q.box_origin,
                "box_method": q.box_method,
                "source_package": image.source_package,
                "source": image.source,
                "licence": image.licence,
            }
        )
    return rows


def build_sample_sets(root: Path) -> dict[str, Path]:
    """Write the PNGs and both jsonl files under ``root/samples``; returns the jsonl paths
    by dataset name. Deterministic: the same packages give the same bytes."""
    out = Path(root) / SAMPLES_DIR
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for dataset, builders in (
        ("sample-medical", MEDICAL_BUILDERS),
        ("sample-natural", NATURAL_BUILDERS),
    ):
        rows = []
        for image in collect(builders):
            file_name = f"{image.name}.png"
            Image.fromarray(image.pixels).save(out / file_name, optimize=False)
            rows.extend(_rows(image, file_name))
        path = out / f"{dataset}.jsonl"
        tmp = path.with_suffix(".tmp")
        try:
            tmp.write_text("".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))
            tmp.replace(path)
        except BaseException:  # e.g. a full disk: no temporary file left behind
            tmp.unlink(missing_ok=True)
            raise
        written[dataset] = path
    return written

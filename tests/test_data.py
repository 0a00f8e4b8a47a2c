"""Data: image conversion, row validation, box formats, manifest hashes, sample sets."""

import json
import shutil

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from vgutils.__main__ import main
from vgutils.data import DataError, load_dataset, load_image
from vgutils.data import manifest as manifest_module
from vgutils.data.coco import coco_questions
from vgutils.data.manifest import pin, read_registry, sha256, verify, verify_file
from vgutils.data.rows import read_rows
from vgutils.data.samples import build_sample_sets

# --- images ----------------------------------------------------------------------------


def test_16bit_grayscale_scaled_min_max(tmp_path):
    values = np.array([[1000, 2000], [3000, 5000]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "a.png")
    rgb = np.asarray(load_image(tmp_path / "a.png"))
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[..., 0], [[0, 64], [128, 255]])


def test_rgba_composited_onto_white_and_palette(tmp_path):
    rgba = np.zeros((1, 2, 4), dtype=np.uint8)
    rgba[0, 0] = [200, 100, 50, 255]
    rgba[0, 1] = [200, 100, 50, 0]
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(
        np.asarray(load_image(tmp_path / "a.png"))[0], [[200, 100, 50], [255, 255, 255]]
    )
    Image.fromarray(rgba[..., :3]).convert("P").save(tmp_path / "p.png")
    assert load_image(tmp_path / "p.png").mode == "RGB"
    Image.fromarray(np.full((3, 3), 7, np.uint8)).save(tmp_path / "g.tif")
    np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "g.tif")), 7)


def test_dicom_window_and_monochrome1(tmp_path):
    source = get_testdata_file("MR_small.dcm")
    dataset = pydicom.dcmread(source)
    center, width = float(dataset.WindowCenter), float(dataset.WindowWidth)
    values = dataset.pixel_array.astype(float) * float(dataset.get("RescaleSlope", 1)) + float(
        dataset.get("RescaleIntercept", 0)
    )
    low = center - width / 2
    expected = np.round(np.clip((values - low) / width, 0, 1) * 255).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(load_image(source))[..., 0], expected)
    dataset.PhotometricInterpretation = "MONOCHROME1"
    dataset.save_as(tmp_path / "inverted.dcm")
    np.testing.assert_array_equal(
        np.asarray(load_image(tmp_path / "inverted.dcm"))[..., 0], 255 - expected
    )


def test_dicom_colour_multiframe_first_frame():
    path = get_testdata_file("examples_ybr_color.dcm")
    rgb = np.asarray(load_image(path))
    np.testing.assert_array_equal(rgb, pydicom.dcmread(path).pixel_array[0])


# --- rows and validation ---------------------------------------------------------------


@pytest.fixture
def image_root(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    Image.new("RGB", (100, 50)).save(root / "ok.png")
    Image.new("RGB", (100, 50)).save(root / "Slake_1.png")
    (root / "broken.png").write_bytes(b"not an image")
    (tmp_path / "secret.png").write_bytes((root / "ok.png").read_bytes())
    return root


BROKEN_ROWS = [
    ('{"image": "ok.png", "question": "Q?", "bbox": [10, 10, 20, 20]}', None),
    ("{not json", "json"),
    ('{"image": "ok.png", "bbox": [1, 1, 5, 5]}', "question"),
    ('{"image": "ok.png", "question": "   ", "bbox": [1, 1, 5, 5]}', "question"),
    ('{"question": "Q?", "bbox": [1, 1, 5, 5]}', "image"),
    ('{"image": "nope.png", "question": "Q?", "bbox": [1, 1, 5, 5]}', "image"),
    ('{"image": "broken.png", "question": "Q?", "bbox": [1, 1, 5, 5]}', "image"),
    ('{"image": "../secret.png", "question": "Q?", "bbox": [1, 1, 5, 5]}', "image"),
    ('{"image": "/etc/hostname", "question": "Q?", "bbox": [1, 1, 5, 5]}', "image"),
    ('{"image": "ok.png", "question": "Q?"}', "bbox"),
    ('{"image": "ok.png", "question": "Q?", "bbox": [1, 1, "NaN", 5]}', "bbox[0]"),
    ('{"image": "ok.png", "question": "Q?", "bbox": [5, 5, 5, 9]}', "bbox[0]"),
    (
        '{"image": "ok.png", "question": "Q?", "bbox": [1, 1, -3, 4], "bbox_format": "xywh"}',
        "bbox[0]",
    ),
    ('{"image": "ok.png", "question": "Q?", "bbox": [[1, 1, 5, 5], [90, 40, 103, 49]]}', "bbox[1]"),
    (
        '{"image": "ok.png", "question": "Q?", "bbox": [1, 1, 5, 5], "bbox_format": "cxcy"}',
        "bbox_format",
    ),
    ('{"image": "ok.png", "question": "Q?", "bbox": [1, 1, 5, 5], "q_type": "count"}', "q_type"),
    ('{"id": "a", "image": "ok.png", "question": "Q?", "bbox": [1, 1, 5, 5]}', None),
    ('{"id": "a", "image": "ok.png", "question": "Q?", "bbox": [1, 1, 5, 5]}', "id"),
    ('{"image": "ok.png", "question": "Q?", "bbox": [90, 40, 100.6, 50.9]}', None),  # clipped
]


def write_jsonl(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_every_problem_is_caught_and_named(tmp_path, image_root):
    jsonl = write_jsonl(tmp_path / "broken.jsonl", [line for line, _ in BROKEN_ROWS])
    samples, problems = read_rows(jsonl, image_root, lambda row: "xyxy")
    errors = {p.line: p for p in problems if p.severity == "error"}
    for number, (_, field) in enumerate(BROKEN_ROWS, start=1):
        if field is None:
            assert number not in errors, str(errors.get(number))
        else:
            assert errors[number].field == field, str(errors[number])
    assert len(samples) == sum(field is None for _, field in BROKEN_ROWS)
    warning = next(p for p in problems if p.severity == "warning")
    assert warning.line == len(BROKEN_ROWS) and "clipped" in warning.message
    np.testing.assert_allclose(samples[-1].boxes, [[90, 40, 100, 50]])
    assert str(errors[6]) == f"{jsonl}:6: image: file not found: {image_root.resolve()}/nope.png"


def test_validate_cli_prints_lines_and_fails(tmp_path, image_root, capsys):
    jsonl = write_jsonl(tmp_path / "broken.jsonl", [line for line, _ in BROKEN_ROWS])
    args = ["validate", str(jsonl), "--bbox-format", "xyxy", "--image-root", str(image_root)]
    assert main(args) == 1
    out = capsys.readouterr().out.splitlines()
    bad = sum(field is not None for _, field in BROKEN_ROWS)
    # + the clipped box's warning, + the unpinned jsonl and images (outside the registry)
    assert sum(line.startswith(f"{jsonl}:") for line in out[:-1]) == bad + 3
    assert out[-1].endswith(f"{len(BROKEN_ROWS) - bad} good row(s), {bad} bad, 3 warning(s)")


def test_jsonl_outside_manifest_needs_a_format(tmp_path, image_root):
    jsonl = write_jsonl(tmp_path / "x.jsonl", [BROKEN_ROWS[0][0]])
    (image_root.parent / "ok.png").write_bytes((image_root / "ok.png").read_bytes())
    assert load_dataset(jsonl) == []  # skipped: no format, never guessed
    samples = load_dataset(jsonl, bbox_format="xywh")
    np.testing.assert_array_equal(samples[0].boxes, [[10, 10, 30, 30]])


def test_manifest_rules_slake_xywh_and_row_override(tmp_path, image_root, monkeypatch):
    root = tmp_path / "root"
    (root / "vgmed").mkdir(parents=True)
    shutil.copytree(image_root, root / "vgmed" / "images")
    shutil.copytree(image_root, root / "vgmed" / "images" / "sub")
    rows = [
        {"image": "ok.png", "question": "Q?", "bbox": [10, 10, 20, 20]},
        {"image": "Slake_1.png", "question": "Q?", "bbox": [10, 10, 20, 20]},
        {"image": "ok.png", "question": "Q?", "bbox": [10, 10, 20, 20], "bbox_format": "xywh"},
        {"image": "sub/Slake_1.png", "question": "Q?", "bbox": [10, 10, 20, 20]},
        {"image": "ok.png", "question": "Q?", "original_bboxes": [[1, 2, 3, 4], [5, 6, 7, 8]]},
    ]
    (root / "vgmed" / "VGMED_localization.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows)
    )
    monkeypatch.setenv("VGUTILS_DATA", str(root))
    samples = load_dataset("vgmed-localization")
    np.testing.assert_array_equal(samples[0].boxes, [[10, 10, 20, 20]])
    np.testing.assert_array_equal(samples[1].boxes, [[10, 10, 30, 30]])
    np.testing.assert_array_equal(samples[2].boxes, [[10, 10, 30, 30]])
    # the rule tests the row's image string (relative path), not its base name
    np.testing.assert_array_equal(samples[3].boxes, [[10, 10, 20, 20]])
    np.testing.assert_array_equal(samples[4].boxes, [[1, 2, 3, 4], [5, 6, 7, 8]])
    assert {s.q_type for s in samples} == {"localization"}
    # the argument overrides the manifest rule, the row's own format overrides both
    forced = load_dataset("vgmed-localization", bbox_format="xywh")
    np.testing.assert_array_equal(forced[0].boxes, [[10, 10, 30, 30]])


def test_missing_manifest_file_says_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv("VGUTILS_DATA", str(tmp_path))
    monkeypatch.setenv("VGUTILS_OFFLINE", "1")
    with pytest.raises(DataError, match=r"vgmed/VGMED_attribute.jsonl is missing.*guimeng-liu"):
        load_dataset("vgmed-attribute")


def test_pin_verify_and_mismatch_refusal(tmp_path, monkeypatch):
    registry = tmp_path / "registry.txt"
    registry.write_text("# header\nsub/a.txt unpinned https://example.invalid/a.txt\n")
    monkeypatch.setattr(manifest_module, "REGISTRY_FILE", registry)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.txt").write_text("hello")
    assert verify(tmp_path) == [("sub/a.txt", "unpinned")]
    assert pin(tmp_path) == ["sub/a.txt"]
    digest = sha256(tmp_path / "sub" / "a.txt")
    assert read_registry() == {"sub/a.txt": (digest, "https://example.invalid/a.txt")}
    assert registry.read_text().startswith("# header\n")
    assert verify(tmp_path) == [("sub/a.txt", "ok")]
    (tmp_path / "sub" / "a.txt").write_text("tampered")
    with pytest.raises(DataError, match=f"expected {digest}, got {sha256(tmp_path / 'sub/a.txt')}"):
        verify_file("sub/a.txt", tmp_path)
    assert verify(tmp_path)[0][1].startswith("MISMATCH")


def test_coco_questions_single_instance_and_area():
    instances = {
        "categories": [
            {"id": 1, "name": "dog"},
            {"id": 2, "name": "cat"},
            {"id": 3, "name": "car"},
        ],
        "images": [{"id": 7, "file_name": "COCO_val2014_7.jpg", "width": 100, "height": 100}],
        "annotations": [
            {"image_id": 7, "category_id": 1, "bbox": [10, 10, 30, 30], "iscrowd": 0},
            {"image_id": 7, "category_id": 2, "bbox": [0, 0, 10, 10], "iscrowd": 0},
            {"image_id": 7, "category_id": 2, "bbox": [50, 50, 20, 20], "iscrowd": 0},
            {"image_id": 7, "category_id": 3, "bbox": [0, 0, 1, 1], "iscrowd": 0},
        ],
    }
    rows = coco_questions(instances)
    assert rows == [
        {
            "id": "coco-7-1",
            "image": "COCO_val2014_7.jpg",
            "question": "Is there a dog in this image?",
            "answer": "yes",
            "q_type": "localization",
            "bbox": [10, 10, 30, 30],
            "bbox_format": "xywh",
            "category": "dog",
        }
    ]


# --- the embedded sample sets ----------------------------------------------------------


@pytest.fixture(scope="module")
def built_samples(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    build_sample_sets(root)
    return root


def test_sample_sets_rebuild_with_registered_hashes(built_samples):
    registry = read_registry()
    names = [name for name in registry if name.startswith("samples/")]
    assert len(names) >= 22
    for name in names:
        assert sha256(built_samples / name) == registry[name][0], name


@pytest.mark.parametrize(("name", "minimum"), [("sample-medical", 12), ("sample-natural", 8)])
def test_sample_sets_content(built_samples, monkeypatch, name, minimum):
    monkeypatch.setenv("VGUTILS_DATA", str(built_samples))
    samples = load_dataset(name)
    by_image = {}
    for sample in samples:
        by_image.setdefault(sample.image_path.name, set()).add(sample.q_type)
        assert sample.answer and sample.extra["licence"] and sample.extra["source_package"]
        assert sample.extra["box_origin"] in {"mask", "geometry", "hand"}
    assert len(by_image) >= minimum
    assert all(types == {"localization", "attribute"} for types in by_image.values())

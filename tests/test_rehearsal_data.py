"""Rehearsal data: synthetic VGMed / COCO / medical-mc files that the package's own loaders
read like the real releases (layout, per-row box formats, option forms)."""

import json
import logging
import zipfile

import numpy as np
import pytest
from PIL import Image

from vgutils import context
from vgutils.__main__ import main
from vgutils.benchmarks import BENCHMARK_FILE, load_mc
from vgutils.data import load_dataset, read_dataset, resolve_dataset
from vgutils.data.manifest import load_benchmarks
from vgutils.rehearsal.data import (
    MC_DATASETS,
    REGISTRY_FILE,
    STAMP_FILE,
    TRUTH_FILE,
    build_rehearsal_data,
)

DATASETS = ("vgmed-localization", "vgmed-attribute", "coco-localization", "coco-attribute")
ROWS, MC_ROWS = 8, 6


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("rehearsal")
    return root, build_rehearsal_data(root, rows=ROWS, mc_rows=MC_ROWS)


@pytest.mark.parametrize("name", DATASETS)
def test_datasets_load_without_problems(built, name, monkeypatch, caplog):
    root, _ = built
    samples, problems = read_dataset(resolve_dataset(name, root=root))
    # outside a rehearsal the real registry holds no hash of these files: said, not a fault
    assert [p for p in problems if p.field != "registry"] == [] and len(samples) == ROWS
    monkeypatch.setenv("VGUTILS_DATA", str(root))
    with caplog.at_level(logging.WARNING, logger="vgutils"):
        assert len(load_dataset(name)) == ROWS
    assert caplog.records == []
    assert {s.q_type for s in samples} == {name.split("-")[1]}
    assert all(s.answer and s.question.endswith("?") for s in samples)
    if name.startswith("vgmed"):
        assert all(s.modality for s in samples)


@pytest.mark.parametrize("name", DATASETS)
def test_boxes_round_trip_through_the_manifest_rule(built, name):
    """Loaded boxes (after the manifest's per-row format) equal the generator's xyxy
    truth: a Slake row or a COCO row written in xyxy would fail here."""
    root, _ = built
    truth = json.loads((root / TRUTH_FILE).read_text())[name]
    dataset = resolve_dataset(name, root=root)
    samples, _ = read_dataset(dataset)
    assert sorted(truth) == sorted(s.id for s in samples)
    for sample in samples:
        np.testing.assert_allclose(sample.boxes, truth[sample.id], rtol=0, atol=1e-6)
    names = [s.image_path.relative_to(dataset.image_root.resolve()).as_posix() for s in samples]
    if name.startswith("vgmed"):  # both conventions, on boxes where they differ (x0 > 0)
        slake = [s for s, n in zip(samples, names, strict=True) if n.startswith("Slake/")]
        assert 0 < len(slake) < len(samples)
        assert all(s.boxes[:, 0].min() > 0 for s in samples)
    else:
        assert all(
            n.startswith("COCO_val2014_") and len(n) == len("COCO_val2014_") + 16 for n in names
        )


def _images(root, folder):
    """``(size, mode, format)`` of every image under ``root / folder``."""
    found = []
    for path in sorted(p for p in (root / folder).rglob("*") if p.is_file()):
        with Image.open(path) as image:
            found.append((image.size, image.mode, image.format))
    return found


@pytest.mark.parametrize("folder", ["vgmed/images", "coco/val2014", "medical_mc/images"])
def test_size_and_mode_variety(built, folder):
    root, _ = built
    images = _images(root, folder)
    long_sides = [max(size) for size, _, _ in images]
    assert max(long_sides) <= 2500
    assert min(min(size) for size, _, _ in images) < 64
    assert "L" in {mode for _, mode, _ in images}
    if folder != "medical_mc/images":
        assert max(long_sides) >= 2000
        assert {f for _, _, f in images} == {"JPEG" if folder.startswith("coco") else "PNG"}


def test_mc_benchmark_loads_with_both_option_forms(built, monkeypatch):
    root, _ = built
    path = root / "medical_mc" / BENCHMARK_FILE
    records, problems = load_mc(path)
    assert problems == [] and len(records) == MC_ROWS * len(MC_DATASETS)
    assert {r.dataset for r in records} == set(MC_DATASETS)
    assert set(MC_DATASETS) <= set(load_benchmarks()["medical-mc"].datasets)
    raw = json.loads(path.read_text())
    assert {type(r["options"]) for r in raw} == {list, str}
    for record in records:
        assert record.answer_text in record.options and record.answer is not None
        assert record.images[0].is_file()
    with zipfile.ZipFile(root / "medical_mc" / "images.zip") as bundle:
        assert sorted(bundle.namelist()) == sorted(r["image"][0] for r in raw)
    # verified against the synthetic files' own hashes (the real release's may be pinned)
    overlay = {"registries": [str(root / REGISTRY_FILE)]}  # what a rehearsal's context holds
    monkeypatch.setenv(context.VARIABLE, json.dumps(overlay))
    assert main(["data", "verify", "--data-root", str(root), "vgmed/", "coco/", "medical_mc/"]) == 0


def test_second_call_is_a_no_op_and_new_arguments_rebuild(tmp_path):
    files = build_rehearsal_data(tmp_path, rows=2, mc_rows=1)
    mtimes = {p: p.stat().st_mtime_ns for p in [*files, tmp_path / STAMP_FILE]}
    assert build_rehearsal_data(tmp_path, rows=2, mc_rows=1) == files
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    rebuilt = build_rehearsal_data(tmp_path, rows=3, mc_rows=1)
    assert json.loads((tmp_path / STAMP_FILE).read_text())["rows"] == 3
    assert len(read_dataset(resolve_dataset("coco-attribute", root=tmp_path))[0]) == 3
    assert rebuilt[0].stat().st_mtime_ns > mtimes[files[0]]
    reseeded = build_rehearsal_data(tmp_path, rows=3, mc_rows=1, seed=1)
    assert set(reseeded) != set(rebuilt)  # other image names ...
    on_disk = {p for p in tmp_path.rglob("*") if p.is_file() and p.name != STAMP_FILE}
    assert on_disk == set(reseeded)  # ... and the previous build's images are gone

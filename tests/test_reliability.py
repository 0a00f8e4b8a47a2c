"""Issue #28: reliability, second pass. Each case of the issue is a test here.

Data lost or wrong results produced silently: (1) a ratings CSV saved by Excel (UTF-8
BOM, CRLF) or LibreOffice, (2) a duplicate (sample, rater) row, (3) a row with an extra
field, (4) an unterminated quote, (5) a pinned image edited after ``data pin``, (6) a torn
last line of ``errors.jsonl`` (a kill at each of its writes). Then the weak spots
(validate, long questions, model errors, profile and notebook parameters, map files, a
full disk) and the tiny builds whose image tokens carry no pixels.

Each section below starts with a ``# --- <case>`` line; the cheap store-level and file
tests come first, the end-to-end ones run the tiny LLaVA (seconds).
"""

import warnings

import pytest

from vgutils.ratings import COLUMNS, RatingsWarning, append_rating, load_ratings

# --- the ratings file (cases 1-4) ------------------------------------------------------

HEADER = ",".join(COLUMNS)

# Excel (Windows, "CSV UTF-8 (Comma delimited)"): a byte-order mark, CRLF after every
# row (the last too), quotes only around a field holding a comma, a quote or a line
# break (Alt+Enter in a cell: a bare LF inside the quotes), empty cells as empty fields.
EXCEL_CSV = (
    b"\xef\xbb\xbf" + HEADER.encode() + b"\r\n"
    b"ct-head-0,localization,dr-a,5,4,3,,\r\n"
    b'ct-head-1,attribute,dr-a,4,4,5,,"clear, but the box is wide"\r\n'
    b'mr-abdomen-0,attribute,dr-a,3,5,4,,"the ""mass"" is obvious"\r\n'
    b'fundus-retina-0,localization,dr-a,5,5,5,,"first line\nsecond line"\r\n'
)
# LibreOffice Calc (Linux, default export: UTF-8, ',' and '"'): no BOM, LF, the same
# quoting rule; with "Quote all text cells" every text cell is quoted, numbers are not.
LIBREOFFICE_CSV = (
    HEADER.encode() + b"\n"
    b"ct-head-0,localization,dr-a,5,4,3,,\n"
    b'ct-head-1,attribute,dr-a,4,4,5,,"clear, but the box is wide"\n'
    b'mr-abdomen-0,attribute,dr-a,3,5,4,,"the ""mass"" is obvious"\n'
    b'fundus-retina-0,localization,dr-a,5,5,5,,"first line\nsecond line"\n'
)
LIBREOFFICE_QUOTED_CSV = (
    ",".join(f'"{c}"' for c in COLUMNS).encode() + b"\n"
    b'"ct-head-0","localization","dr-a",5,4,3,,\n'
    b'"ct-head-1","attribute","dr-a",4,4,5,,"clear, but the box is wide"\n'
    b'"mr-abdomen-0","attribute","dr-a",3,5,4,,"the ""mass"" is obvious"\n'
    b'"fundus-retina-0","localization","dr-a",5,5,5,,"first line\nsecond line"\n'
)
EXPECTED_NOTES = [
    "",
    "clear, but the box is wide",
    'the "mass" is obvious',
    "first line\nsecond line",
]


def write(path, data: bytes):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "data",
    [EXCEL_CSV, LIBREOFFICE_CSV, LIBREOFFICE_QUOTED_CSV],
    ids=["excel", "libreoffice", "libreoffice-quote-all"],
)
def test_ratings_csv_saved_by_excel_or_libreoffice_is_read(tmp_path, data):
    path = write(tmp_path / "ratings.csv", data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing ignored, nothing torn
        ratings = load_ratings(path)
    assert list(ratings.columns) == list(COLUMNS)
    assert list(ratings["sample_id"]) == [
        "ct-head-0",
        "ct-head-1",
        "mr-abdomen-0",
        "fundus-retina-0",
    ]
    assert list(ratings["note"]) == EXPECTED_NOTES
    assert ratings[
        ["clinical_relevance", "visual_grounding", "semantic_grounding"]
    ].values.tolist() == [
        [5, 4, 3],
        [4, 4, 5],
        [3, 5, 4],
        [5, 5, 5],
    ]
    assert list(load_ratings(path, history=True)["line"]) == [2, 3, 4, 5]  # where each starts


def test_rating_appended_to_an_excel_file_is_read(tmp_path):
    path = write(tmp_path / "ratings.csv", EXCEL_CSV)
    append_rating(
        path,
        {"sample_id": "coins-0", "q_type": "attribute", "rater": "dr-b"}
        | dict.fromkeys(COLUMNS[3:6], 4),
    )
    assert list(load_ratings(path)["sample_id"])[-1] == "coins-0"
    assert path.read_bytes().startswith(b"\xef\xbb\xbf" + HEADER.encode())  # one header


def test_semicolon_separated_csv_is_refused_with_advice(tmp_path):
    path = write(
        tmp_path / "r.csv", HEADER.replace(",", ";").encode() + b"\na;attribute;x;5;5;5;;\n"
    )
    with pytest.raises(ValueError, match=r"r\.csv:1: .*separated by ';'"):
        load_ratings(path)


def test_latin1_csv_is_refused_naming_the_line(tmp_path):
    path = write(tmp_path / "r.csv", HEADER.encode() + b"\na,attribute,dr-a,5,5,5,,tr\xe8s bien\n")
    with pytest.raises(ValueError, match=r"r\.csv:2: not UTF-8"):
        load_ratings(path)


def test_duplicate_hand_made_row_is_refused_naming_both_lines(tmp_path):
    path = write(
        tmp_path / "r.csv",
        (
            HEADER + "\n"
            "a,attribute,dr-a,5,5,5,,\n"
            "b,attribute,dr-a,4,4,4,,\n"
            "a,attribute,dr-a,3,3,3,,\n"
        ).encode(),
    )
    with pytest.raises(ValueError, match=r"r\.csv:4: .*'a'.*'dr-a'.*lines 2 and 4"):
        load_ratings(path)


def test_duplicate_differing_only_in_spaces_is_a_duplicate(tmp_path):
    """Table 1 counted ``dr-a`` and ``dr-a `` as two raters."""
    path = write(
        tmp_path / "r.csv",
        (HEADER + "\na,attribute,dr-a,5,5,5,,\na ,attribute, dr-a ,3,3,3,,\n").encode(),
    )
    with pytest.raises(ValueError, match=r"lines 2 and 3"):
        load_ratings(path)


def test_widget_rerating_the_last_rating_wins(tmp_path):
    """Rows the rating widget wrote (``append_rating`` stamps its UTC time) may repeat a
    (sample, rater): the rater re-rated, the last row counts."""
    path = tmp_path / "r.csv"
    first = {"sample_id": "a", "q_type": "attribute", "rater": "dr-a"}
    append_rating(path, first | dict.fromkeys(COLUMNS[3:6], 2))
    append_rating(path, first | dict.fromkeys(COLUMNS[3:6], 5))
    ratings = load_ratings(path)
    assert len(ratings) == 1 and ratings.loc[0, "clinical_relevance"] == 5
    assert len(load_ratings(path, history=True)) == 2
    # a hand-made row repeating a widget row is refused all the same
    with path.open("a") as handle:
        handle.write("a,attribute,dr-a,1,1,1,,\n")
    with pytest.raises(ValueError, match=r"r\.csv:4: .*lines 2 and 4"):
        load_ratings(path)


def test_row_with_an_extra_field_is_refused_naming_the_line(tmp_path):
    path = write(
        tmp_path / "r.csv",
        (
            HEADER + "\n"
            "a,attribute,dr-a,5,5,5,,\n"
            "b,attribute,dr-a,5,5,5,,,fine\n"  # one comma too many: the note would shift
            "c,attribute,dr-a,5,5,5,,\n"
        ).encode(),
    )
    with pytest.raises(ValueError, match=r"r\.csv:3: 9 fields, but the header has 8"):
        load_ratings(path)


def test_extra_empty_columns_of_a_spreadsheet_are_accepted(tmp_path):
    """A spreadsheet range wider than the data: empty header cells and empty fields."""
    path = write(
        tmp_path / "r.csv",
        (HEADER + ",,\r\na,attribute,dr-a,5,5,5,,,,\r\n,,,,,,,,,\r\n").encode(),
    )
    assert list(load_ratings(path)["sample_id"]) == ["a"]


@pytest.mark.parametrize(
    "rows",
    [
        'a,attribute,dr-a,5,5,5,,"never closed\nb,attribute,dr-a,4,4,4,,\n'
        "c,attribute,dr-a,3,3,3,,\n",
        'a,attribute,dr-a,5,5,5,,"closed later\nb,attribute,dr-a,4,4,4,,\n'
        'c,attribute,dr-a,3,3,3,,"x"\n',
        'a,"attribute,dr-a,5,5,5,,\nb,attribute,dr-a,4,4,4,,\n',
    ],
    ids=["never-closed", "closed-by-a-later-quote", "in-an-early-column"],
)
def test_unterminated_quote_is_refused_naming_where_it_opens(tmp_path, rows):
    path = write(tmp_path / "r.csv", (HEADER + "\n" + rows).encode())
    with pytest.raises(ValueError, match=r"r\.csv:2: .*quote"):
        load_ratings(path)


def test_a_torn_last_line_is_still_only_a_warning(tmp_path):
    path = write(tmp_path / "r.csv", (HEADER + "\na,attribute,dr-a,5,5,5,,\nb,attri").encode())
    with pytest.warns(RatingsWarning, match=r"r\.csv:3: torn line ignored"):
        assert list(load_ratings(path)["sample_id"]) == ["a"]


def test_a_whole_last_row_without_its_newline_is_read(tmp_path):
    """An editor or a spreadsheet export (Google Sheets) may end the file without a newline:
    a last row with every field is read (a tear that leaves every field can only have cut
    the note), not dropped as torn."""
    path = write(
        tmp_path / "r.csv",
        (HEADER + "\na,attribute,dr-a,5,5,5,,\nb,attribute,dr-a,4,4,4,,ok").encode(),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert list(load_ratings(path)["sample_id"]) == ["a", "b"]


def test_ratings_path_of_the_wrong_type_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"ratings file: expected a path .*got int 5"):
        load_ratings(5)


def test_append_keeps_the_files_column_order_and_line_ends(tmp_path):
    """A file whose columns a spreadsheet reordered: appended rows follow its header (not
    the default order, which would put values under the wrong axis)."""
    order = ["rater", "sample_id", "q_type", *COLUMNS[3:6][::-1], "note", "timestamp"]
    path = write(
        tmp_path / "r.csv",
        b"\xef\xbb\xbf" + ",".join(order).encode() + b"\r\ndr-a,a,attribute,3,4,5,,\r\n",
    )
    append_rating(
        path,
        {"sample_id": "b", "q_type": "attribute", "rater": "dr-b"}
        | dict(zip(COLUMNS[3:6], (1, 2, 3), strict=True)),
    )
    ratings = load_ratings(path).set_index("sample_id")
    assert ratings.loc["a", list(COLUMNS[3:6])].tolist() == [5, 4, 3]
    assert ratings.loc["b", list(COLUMNS[3:6])].tolist() == [1, 2, 3]
    assert path.read_bytes().endswith(b"\r\n") and b"\n\n" not in path.read_bytes()


def test_a_torn_line_inside_quotes_is_fenced_with_the_quote_closed(tmp_path):
    path = tmp_path / "r.csv"
    row = {"sample_id": "a", "q_type": "attribute", "rater": "dr-a"}
    append_rating(path, row | dict.fromkeys(COLUMNS[3:6], 5))
    with path.open("a") as handle:  # a crash in the middle of a quoted note
        handle.write('b,attribute,dr-a,4,4,4,2026-01-05T14:03:11+00:00,"fine, but')
    with pytest.warns(RatingsWarning, match=r"r\.csv:3: torn line ignored"):
        assert list(load_ratings(path)["sample_id"]) == ["a"]
    append_rating(path, row | {"sample_id": "c"} | dict.fromkeys(COLUMNS[3:6], 3))
    # the quote was closed: c is a row of its own. (b: its ratings were written whole
    # before the tear, which cut its note; as for a torn unquoted note, it is read)
    ratings = load_ratings(path)
    assert list(ratings["sample_id"]) == ["a", "b", "c"]
    assert ratings.loc[1, "note"] == "fine, but"


# --- 5. a pinned image edited after `data pin` ------------------------------------------

MODEL = "tiny:llava"


@pytest.fixture
def pinned_root(tmp_path, monkeypatch):
    """A copy of the embedded sample data under its own data root, with a copy of the
    registry in which ``samples/chelsea.png`` was unpinned and then pinned by ``data pin``
    (what a user does with their own data)."""
    import shutil

    from vgutils.__main__ import main
    from vgutils.data import manifest, resolve_dataset

    root = tmp_path / "data"
    shutil.copytree(resolve_dataset("sample-natural").root / "samples", root / "samples")
    registry = tmp_path / "registry.txt"
    registry.write_text(
        manifest.REGISTRY_FILE.read_text().replace(
            "samples/chelsea.png " + manifest.read_registry()["samples/chelsea.png"][0],
            "samples/chelsea.png unpinned",
        )
    )
    monkeypatch.setattr(manifest, "REGISTRY_FILE", registry)
    monkeypatch.setenv("VGUTILS_DATA", str(root))
    assert manifest.read_registry()["samples/chelsea.png"][0] == "unpinned"
    assert main(["data", "pin", "samples/chelsea.png", "--data-root", str(root)]) == 0
    pinned = manifest.read_registry()["samples/chelsea.png"][0]
    assert pinned == manifest.sha256(root / "samples" / "chelsea.png")
    return root, pinned


def edit(image):
    """An edit that keeps the image readable (one pixel changed)."""
    from PIL import Image

    with Image.open(image) as opened:
        changed = opened.convert("RGB")
    changed.putpixel((0, 0), tuple(255 - v for v in changed.getpixel((0, 0))))
    changed.save(image)


def extract_run(dataset, out, limit=6):
    from vgutils.runner import ExtractOptions, extract

    return extract(
        ExtractOptions(model=MODEL, dataset=str(dataset), limit=limit), out, progress=False
    )


def skipped_reasons(out) -> dict:
    import json

    lines = (out / "errors.jsonl").read_text().splitlines()
    return {json.loads(line)["sample_id"]: json.loads(line)["reason"] for line in lines}


def computed_images(out) -> set:
    from vgutils.results import load_metrics

    return set(load_metrics(out)["image"])


@pytest.mark.parametrize("given_as", ["name", "jsonl path"])
def test_pinned_image_edited_after_pin_is_skipped_naming_both_hashes(
    tmp_path, pinned_root, given_as
):
    from vgutils.data.manifest import sha256

    root, pinned = pinned_root
    image = root / "samples" / "chelsea.png"
    edit(image)
    dataset = "sample-natural" if given_as == "name" else root / "samples" / "sample-natural.jsonl"
    summary = extract_run(dataset, tmp_path / "run")
    assert "chelsea.png" not in computed_images(tmp_path / "run")
    reasons = [r for r in skipped_reasons(tmp_path / "run").values() if "chelsea.png" in r]
    assert len(reasons) == 2 and summary.skipped == 2  # its two questions
    for reason in reasons:
        assert str(image) in reason and pinned in reason and sha256(image) in reason


def test_pinned_image_edited_while_the_run_reads_it_is_skipped(tmp_path, pinned_root, monkeypatch):
    """Edited after the rows were checked (and after the run hashed its images): the bytes
    the model would see are checked again when the image is loaded."""
    from vgutils import runner

    root, pinned = pinned_root
    image = root / "samples" / "chelsea.png"
    hashes = runner.image_hashes

    def hash_then_edit(samples):
        out = hashes(samples)
        edit(image)
        return out

    monkeypatch.setattr(runner, "image_hashes", hash_then_edit)
    extract_run("sample-natural", tmp_path / "run")
    assert "chelsea.png" not in computed_images(tmp_path / "run")
    reasons = [r for r in skipped_reasons(tmp_path / "run").values() if "chelsea.png" in r]
    assert len(reasons) == 2 and all(pinned in r and "changed" in r for r in reasons)


# --- 6. a kill at each write of errors.jsonl --------------------------------------------


class Crash(BaseException):
    """A simulated kill: nothing after it runs."""


def tear_append(monkeypatch, k: int, cut):
    """Make the ``k``-th append to errors.jsonl (1-based) write only ``cut(data)`` bytes of
    its line, then crash (a kill in the middle of the write)."""
    from vgutils import results

    real = results._append_bytes
    calls = []

    def torn(path, data):
        calls.append(path)
        if len(calls) == k:
            real(path, data[: cut(data)])
            raise Crash(f"append {k}")
        real(path, data)

    monkeypatch.setattr(results, "_append_bytes", torn)
    return calls


def error_lines(folder):
    import json

    lines = (folder / "errors.jsonl").read_text().split("\n")
    assert lines[-1] == "", "the last line has no newline"
    return [json.loads(line) for line in lines[:-1]]  # every line whole


def store_run(folder, skipped=("a", "b", "c"), done=("d",)):
    """A run that skips three samples and computes one, through the store API."""
    import pandas as pd

    from vgutils.results import RunStore

    with RunStore(folder) as store:
        run = store.open({"model": "m", "dataset": "d", "shard": None}, {"x": 1}, {})
        finished = store.done_ids()
        for sample in skipped:
            if sample not in finished:
                store.add_error(sample, f"d:{sample}", f"bad {sample} {{x}} ok")
        todo = [s for s in done if s not in finished]
        if todo:
            store.add_part({"metrics": pd.DataFrame({"sample_id": todo, "order": 0, "kl": 0.0})})
        store.finalize(run, {"done": len(done), "skipped": len(store.errors())})


CUTS = {
    "one byte": lambda data: 1,
    "before the sample id": lambda data: 8,
    "half": lambda data: len(data) // 2,
    "inside the reason's brace": lambda data: data.index(b"{x}") + 3,
    "all but the newline": lambda data: len(data) - 1,
}


@pytest.mark.parametrize("cut", CUTS.values(), ids=CUTS.keys())
def test_a_kill_at_each_errors_append_then_rerun_leaves_a_whole_file(tmp_path, monkeypatch, cut):
    store_run(tmp_path / "whole")
    reference = error_lines(tmp_path / "whole")
    for k in (1, 2, 3):
        folder = tmp_path / f"kill-{k}"
        with monkeypatch.context() as patch:
            tear_append(patch, k, cut)
            with pytest.raises(Crash):
                store_run(folder)
        store_run(folder)  # the rerun repairs the file, then recomputes the torn sample
        assert error_lines(folder) == reference, f"append {k}"
        assert not list(folder.glob(".*.tmp")), "a temporary file left behind"


def test_a_torn_errors_line_is_repaired_when_the_run_is_opened(tmp_path, caplog):
    from vgutils.results import RunStore

    folder = tmp_path / "run"
    with RunStore(folder) as store:
        store.open({"model": "m"}, {}, {})
        store.add_error("a", "d:1", "bad")
    with open(folder / "errors.jsonl", "a") as handle:
        handle.write('{"sam')  # killed mid-append
    with RunStore(folder) as store, caplog.at_level("WARNING"):
        store.open({"model": "m"}, {}, {})
        assert "errors.jsonl:2: torn line removed" in caplog.text
        assert [e["sample_id"] for e in error_lines(folder)] == ["a"]


def test_extract_killed_at_each_errors_append_reruns_to_the_same_results(tmp_path, monkeypatch):
    """End to end: a dataset with two bad rows and an unreadable image (three appends to
    errors.jsonl); a kill in the middle of each, then a rerun."""
    import json

    import pandas as pd
    from PIL import Image

    from vgutils.results import load_metrics

    data = tmp_path / "data"
    data.mkdir()
    Image.new("RGB", (64, 64), (20, 90, 200)).save(data / "a.png")
    (data / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    rows = [
        {"image": "a.png", "question": "Is there a dot?", "bbox": [4, 4, 60, 60]},
        {"image": "missing.png", "question": "Q?", "bbox": [4, 4, 60, 60]},
        {"image": "b.png", "question": "Is there a dot?", "bbox": [4, 4, 60, 60]},
        {"image": "a.png", "question": "", "bbox": [4, 4, 60, 60]},
    ]
    jsonl = data / "d.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def run(out):
        from vgutils.runner import ExtractOptions, extract

        options = ExtractOptions(model=MODEL, dataset=str(jsonl), bbox_format="xyxy")
        return extract(options, out, progress=False)

    run(tmp_path / "whole")
    reference = sorted(e["sample_id"] for e in error_lines(tmp_path / "whole"))
    assert len(reference) == 3
    for k in (1, 2, 3):
        out = tmp_path / f"kill-{k}"
        with monkeypatch.context() as patch:
            tear_append(patch, k, lambda data: len(data) // 2)
            with pytest.raises(Crash):
                run(out)
        summary = run(out)
        assert sorted(e["sample_id"] for e in error_lines(out)) == reference, f"append {k}"
        assert summary.skipped == 3
        pd.testing.assert_frame_equal(
            load_metrics(out).drop(columns="n_tokens", errors="ignore"),
            load_metrics(tmp_path / "whole").drop(columns="n_tokens", errors="ignore"),
        )


# --- weak: a full disk leaves no temporary file -----------------------------------------

FULL_DISK = """
import resource, signal, sys
from pathlib import Path
import numpy as np, pandas as pd
from vgutils.errors import DataError
from vgutils.geometry import TokenLayout
from vgutils.results import RunStore, atomic_write_bytes

folder = Path(sys.argv[1])
store = RunStore(folder)
store.open({"model": "m"}, {}, {})
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))  # as if the disk were full
big = pd.DataFrame({"sample_id": ["s"] * 5000, "order": 0, "kl": np.random.rand(5000)})
layout = TokenLayout(np.tile([0.0, 0.0, 1.0, 1.0], (4, 1)), ((0, 2, 2),), (2, 2))
attempts = {
    "atomic_write_bytes": lambda: atomic_write_bytes(folder / "x.json", b"x" * 10000),
    "add_part": lambda: store.add_part({"metrics": big}),
    "save_maps": lambda: store.save_maps("s", {"raw": np.random.rand(50, 40, 4)}, layout),
}
for name, attempt in attempts.items():
    try:
        attempt()
    except DataError as err:
        print(name, "DataError", err)
    except OSError as err:
        print(name, "OSError", err)
    else:
        print(name, "no error")
"""


def test_a_full_disk_leaves_no_temporary_file(tmp_path):
    import subprocess
    import sys

    folder = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-c", FULL_DISK, str(folder)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 3 and all("DataError" in line for line in lines), done.stdout
    assert "x.json: could not write" in done.stdout
    leftovers = [p.name for p in folder.rglob("*") if ".tmp" in p.name]
    assert leftovers == []


# --- weak: validate -----------------------------------------------------------------------


def validate(capsys, *args) -> tuple[int, str, str]:
    from vgutils.__main__ import main

    code = main(["validate", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def image_folder(tmp_path):
    """Good and broken images: PNG, JPEG, DICOM, each whole and truncated."""
    import numpy as np
    import pydicom
    from PIL import Image
    from pydicom.data import get_testdata_file

    folder = tmp_path / "images"
    folder.mkdir()
    pixels = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype("uint8")
    Image.fromarray(pixels).save(folder / "ok.png")
    Image.fromarray(pixels).save(folder / "ok.jpg", quality=90)
    pydicom.dcmread(get_testdata_file("MR_small.dcm")).save_as(folder / "ok.dcm")
    for name in ("ok.png", "ok.jpg", "ok.dcm"):
        data = (folder / name).read_bytes()
        (folder / name.replace("ok", "truncated")).write_bytes(data[: len(data) * 2 // 3])
    return folder


def write_rows(folder, rows, name="d.jsonl"):
    import json

    path = folder / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def row(image="ok.png", **extra):
    return {"image": image, "question": "Is there a dot?", "bbox": [2, 2, 20, 20]} | extra


@pytest.mark.parametrize("kind", ["png", "jpg", "dcm"])
def test_validate_refuses_a_truncated_image(capsys, image_folder, kind):
    jsonl = write_rows(image_folder, [row(f"ok.{kind}"), row(f"truncated.{kind}")])
    code, out, _ = validate(capsys, jsonl, "--bbox-format", "xyxy")
    assert code == 1, out
    assert f"d.jsonl:2: image: unreadable image {image_folder / f'truncated.{kind}'}" in out
    assert "d.jsonl:1" not in out


def test_validate_refuses_an_empty_jsonl(capsys, tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    code, out, _ = validate(capsys, tmp_path / "empty.jsonl", "--bbox-format", "xyxy")
    assert code == 1 and "empty.jsonl: rows: no rows" in out


@pytest.mark.parametrize(
    ("bbox", "message"),
    [
        ([False, False, True, True], "bbox[0]: coordinate False is not a number"),
        (["2", "2", "20", "20"], "bbox[0]: coordinate '2' is not a number"),
        ([[2, 2, 20, 20], [True, 2, 20, 20]], "bbox[1]: coordinate True is not a number"),
    ],
)
def test_validate_refuses_non_numbers_as_coordinates(capsys, image_folder, bbox, message):
    jsonl = write_rows(image_folder, [row(bbox=bbox)])
    code, out, _ = validate(capsys, jsonl, "--bbox-format", "xyxy")
    assert code == 1 and f"d.jsonl:1: {message}" in out, out


def test_validate_names_a_question_that_is_not_text(capsys, image_folder):
    jsonl = write_rows(image_folder, [row(question=5), row(question="  ")])
    code, out, _ = validate(capsys, jsonl, "--bbox-format", "xyxy")
    assert code == 1
    assert "d.jsonl:1: question: expected text, got int 5" in out
    assert "d.jsonl:2: question: empty" in out


def test_validate_warns_when_the_option_and_the_row_disagree_on_the_box_format(
    capsys, image_folder
):
    jsonl = write_rows(image_folder, [row(bbox_format="xywh"), row(bbox_format="xyxy")])
    code, out, _ = validate(capsys, jsonl, "--bbox-format", "xyxy")
    assert code == 0
    assert (
        "d.jsonl:1: bbox_format: warning: the row says 'xywh', --bbox-format says 'xyxy'; "
        "the row's is used" in out
    )
    assert "d.jsonl:2: bbox_format" not in out


@pytest.mark.parametrize(
    "content",
    [b"\0" * 40, b"\0" * 128 + b"DICM" + bytes(range(256)) * 3],
    ids=["no-preamble", "preamble-then-garbage"],
)
def test_validate_names_a_garbage_dicom_quietly(capsys, image_folder, content):
    (image_folder / "garbage.dcm").write_bytes(content)
    jsonl = write_rows(image_folder, [row("garbage.dcm")])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, out, err = validate(capsys, jsonl, "--bbox-format", "xyxy")
    assert code == 1 and err == "" and not caught, (err, [str(w.message) for w in caught])
    assert f"d.jsonl:1: image: unreadable image {image_folder / 'garbage.dcm'}: not a " in out
    assert "object has no attribute" not in out


def test_validate_says_which_files_are_unpinned(capsys, tmp_path, monkeypatch):
    """The jsonl and images of a manifest dataset without a registry entry are used
    unchecked: validate says so (the embedded sets are pinned: nothing said)."""
    import shutil

    from vgutils.data import manifest, resolve_dataset

    root = tmp_path / "data"
    shutil.copytree(resolve_dataset("sample-natural").root / "samples", root / "samples")
    registry = tmp_path / "registry.txt"
    kept = [
        line
        for line in manifest.REGISTRY_FILE.read_text().splitlines()
        if not line.startswith(("samples/chelsea.png", "samples/sample-natural.jsonl"))
    ]
    registry.write_text("\n".join(kept) + "\n")
    monkeypatch.setattr(manifest, "REGISTRY_FILE", registry)
    code, out, _ = validate(capsys, "sample-natural", "--data-root", root)
    assert code == 0
    assert "sample-natural.jsonl: registry: warning: unpinned (no sha256 in the registry)" in out
    assert "1 image(s) unpinned (no sha256 in the registry): chelsea.png" in out
    monkeypatch.undo()
    code, out, _ = validate(capsys, "sample-natural")
    assert code == 0 and "unpinned" not in out


# --- weak: a question longer than the model's context -----------------------------------


def test_question_past_the_models_context_is_skipped_with_a_warning(tmp_path, caplog):
    """A 16,000-character question does not fit tiny:llava's 4096 positions: the sample is
    skipped with the reason (token count against the context) in errors.jsonl, and a
    logged warning names it; the other question is computed."""
    from PIL import Image

    from vgutils.runner import ExtractOptions, extract

    Image.new("RGB", (64, 64), (20, 90, 200)).save(tmp_path / "a.png")
    long_question = "Is there a lesion in the liver? " * 500
    rows = [
        {"id": "short", "image": "a.png", "question": "Is there a dot?", "bbox": [4, 4, 60, 60]},
        {"id": "long", "image": "a.png", "question": long_question, "bbox": [4, 4, 60, 60]},
    ]
    jsonl = write_rows(tmp_path, rows)
    with caplog.at_level("WARNING"):
        summary = extract(
            ExtractOptions(model=MODEL, dataset=str(jsonl), bbox_format="xyxy"),
            tmp_path / "run",
            progress=False,
        )
    assert summary.done == 1 and summary.skipped == 1
    reason = skipped_reasons(tmp_path / "run")["long"]
    assert "the model's context of 4096 tokens" in reason and "prompt of " in reason
    assert "long:" in caplog.text and "4096" in caplog.text
    assert computed_images(tmp_path / "run") == {"a.png"}


# --- tests that tested nothing: image tokens without pixels -----------------------------


class _Captured(Exception):
    pass


def image_token_embeddings(vlm, image, question="Is there a lesion?"):
    """The language model's input at the image tokens (``(N, hidden)``, float64): what the
    model sees of the image. The forward stops at the first decoder layer."""
    import torch

    prepared = vlm.prepare(image, question)
    seen = {}

    def grab(module, args, kwargs):
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        seen["hidden"] = hidden[0, prepared.image_positions].double().cpu()
        raise _Captured

    layer = vlm.model.model.language_model.layers[0]
    handle = layer.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad(), pytest.raises(_Captured):
            vlm.model(**prepared.inputs, use_cache=False)
    finally:
        handle.remove()
    return seen["hidden"], prepared.layout


def zero_matrices(model) -> list[str]:
    """Weight matrices (two or more dimensions: not biases, not norms) that are all zeros."""
    return [n for n, p in model.named_parameters() if p.ndim >= 2 and not p.detach().any()]


def check_image_tokens_carry_pixels(vlm, size=(96, 80)):
    """Perturbing the pixels inside a box changes the embeddings of the image tokens that
    cover the box."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    before, layout = image_token_embeddings(vlm, Image.fromarray(pixels))
    box = [size[0] // 4, size[1] // 4, size[0] * 3 // 4, size[1] * 3 // 4]
    pixels[box[1] : box[3], box[0] : box[2]] = 255 - pixels[box[1] : box[3], box[0] : box[2]]
    after, _ = image_token_embeddings(vlm, Image.fromarray(pixels))
    tokens = layout.boxes
    inside = (
        (tokens[:, 0] < box[2])
        & (tokens[:, 2] > box[0])
        & (tokens[:, 1] < box[3])
        & (tokens[:, 3] > box[1])
    )
    assert inside.any()
    change = (after - before).abs().amax(dim=1).numpy()
    scale = before.abs().amax().item()
    assert scale > 0, f"{vlm.source}: the image tokens are all zeros"
    unchanged = int((change[inside] <= 1e-4 * scale).sum())
    assert unchanged == 0, (
        f"{vlm.source}: {unchanged} of the {int(inside.sum())} image tokens over the changed "
        "pixels did not change"
    )


def test_tiny_builds_see_the_pixels(vlms):
    for family, vlm in vlms.items():
        assert zero_matrices(vlm.model) == [], family
        check_image_tokens_carry_pixels(vlm)


def _rehearsal_builds():
    from vgutils.models.published import REAL_MODELS
    from vgutils.rehearsal.models import build_shape

    seen, models = set(), []
    for model, real in REAL_MODELS.items():
        key = (real.family, repr(build_shape(real, "small")))
        if key not in seen:
            seen.add(key)
            models.append(model)
    return models


@pytest.mark.parametrize("model", _rehearsal_builds())
def test_rehearsal_builds_see_the_pixels(model, tmp_path_factory, monkeypatch):
    """Every small rehearsal build (the stand-ins of the paper's models, MedGemma's too)."""
    from vgutils import rehearsal
    from vgutils.models import load_model
    from vgutils.models.sources import register_source

    monkeypatch.setenv("VGUTILS_CACHE", str(tmp_path_factory.getbasetemp() / "rehearsal-cache"))
    register_source(rehearsal.StandIns("small"))  # unregistered after the test (conftest)
    vlm = load_model(model, device="cpu")
    assert zero_matrices(vlm.model) == [], model
    check_image_tokens_carry_pixels(vlm, size=(300, 240))


# --- weak: model errors ------------------------------------------------------------------


def extract_cli(capsys, *args) -> tuple[int, str, str]:
    from vgutils.__main__ import main

    code = main(["extract", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip()


def test_missing_hub_id_without_network_is_one_line_naming_it(tmp_path, capsys, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no network
    args = ["--model", "someorg/missing-model", "--dataset", "sample-natural", "--limit", "1"]
    code, _, err = extract_cli(capsys, *args, "--out", tmp_path / "r")
    assert code == 1 and err.count("\n") == 0, err
    assert "someorg/missing-model" in err and "Hugging Face cache" in err
    assert "Retrying" not in err and "--debug" not in err


def test_truncated_safetensors_is_named(tmp_path):
    import shutil

    from vgutils.errors import DataError
    from vgutils.models import load_model
    from vgutils.models.sources import resolve

    folder = tmp_path / "model"
    shutil.copytree(resolve("tiny:llava"), folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(DataError) as err:
        load_model(str(folder), device="cpu")
    message = str(err.value)
    assert str(weights) in message and "\n" not in message
    assert "incomplete or damaged" in message


def test_remote_code_without_a_pinned_revision_fails_before_any_work(tmp_path, capsys):
    args = ["--model", MODEL, "--dataset", "sample-natural", "--trust-remote-code"]
    code, _, err = extract_cli(capsys, *args, "--out", tmp_path / "r")
    assert code == 2 and "--trust-remote-code needs --revision" in err and "\n" not in err
    assert not (tmp_path / "r").exists()  # nothing hashed, locked or written
    code, _, err = extract_cli(capsys, *args, "--revision", "main", "--out", tmp_path / "r")
    assert code == 2 and "a commit hash" in err and not (tmp_path / "r").exists()


# --- weak: profile and notebook parameters ------------------------------------------------


@pytest.fixture
def profile_dir(tmp_path, monkeypatch):
    import shutil

    from vgutils import paths

    folder = tmp_path / "params"
    shutil.copytree(paths.PARAMS_DIR, folder)
    monkeypatch.setattr(paths, "PARAMS_DIR", folder)
    return folder


def write_profile(folder, name, text):
    import textwrap

    path = folder / f"{name}.yaml"
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("jbos: []\n", "jbos: unknown setting; valid: "),
        (
            "jobs:\n  - {model: [tiny:llava], datasets: [sample-natural]}\n",
            "jobs[0].model: unknown setting; valid: ",
        ),
        ("limit: four\n", "limit: 'four' is not an integer >= 1 or null"),
        ("jobs:\n  - {models: tiny:llava, datasets: [sample-natural]}\n", "jobs[0].models"),
        (
            "jobs:\n  - {models: [tiny:llava], datasets: [sample-natural], strategies: [lst]}\n",
            "jobs[0].strategies: 'lst' is not a strategy; valid: all, last, question; "
            "did you mean 'last'?",
        ),
        ("jobs:\n  - {models: [tiny:llava], datasets: [x], heads: 1}\n", "jobs[0].heads"),
        ("protocol: author\n", "protocol: 'author' is not a protocol"),
        ("revisions: [abc]\n", "revisions: ['abc'] is not a mapping of model -> commit"),
    ],
)
def test_bad_profile_setting_names_the_profile_and_the_key(profile_dir, text, message):
    from vgutils.errors import VgError
    from vgutils.jobs import load_profile

    path = write_profile(profile_dir, "mine", "caption: x\n" + text)
    with pytest.raises(VgError) as err:
        load_profile("mine")
    assert str(path) in str(err.value) and message in str(err.value), str(err.value)
    assert "\n" not in str(err.value)


def test_bad_strategy_fails_before_any_model_loads(tmp_path, profile_dir, monkeypatch):
    import vgutils.models.loading as loading
    from vgutils.errors import UsageError
    from vgutils.jobs import ensure_results
    from vgutils.runner import ExtractOptions, extract

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(loading, "load_model", refuse)
    with pytest.raises(UsageError, match=r"strategy 'lst': unknown; valid: all, last, question"):
        extract(
            ExtractOptions(model=MODEL, dataset="sample-natural", strategy="lst"), tmp_path / "r"
        )
    assert not (tmp_path / "r").exists()
    write_profile(
        profile_dir,
        "mine",
        "jobs:\n  - {models: [tiny:llava], datasets: [sample-natural], strategies: [lst]}\n",
    )
    with pytest.raises(Exception, match=r"mine\.yaml: jobs\[0\]\.strategies: 'lst'"):
        ensure_results("mine", progress=False)


def test_shipped_profiles_pass_the_check():
    from vgutils.jobs import load_profile

    for profile in ("smoke", "default", "paper", "paper-rehearsal"):
        assert load_profile(profile)["caption"]


def test_notebook_parameter_of_the_wrong_type_is_named():
    from vgutils.errors import UsageError
    from vgutils.notebook import parameter

    assert parameter("ratings_csv", "r.csv", str) == "r.csv"
    with pytest.raises(UsageError, match=r"notebook parameter ratings_csv=5: expected str"):
        parameter("ratings_csv", 5, str)


# --- weak: a map file whose shape does not match its layout -------------------------------


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"raw": (3, 5)}, "raw has 5 image tokens, its layout 4"),
        ({"raw_heads": (3, 2, 6)}, "raw_heads has 6 image tokens, its layout 4"),
        ({"normalized": (3, 4), "generic": (2, 4)}, "generic has 2 layers, normalized 3"),
    ],
)
def test_map_file_whose_shape_does_not_match_its_layout_is_refused(tmp_path, arrays, message):
    import numpy as np

    from vgutils.errors import DataError
    from vgutils.geometry import TokenLayout
    from vgutils.results import RunStore, load_maps, map_file_name

    layout = TokenLayout(np.tile([0.0, 0.0, 8.0, 8.0], (4, 1)), ((0, 2, 2),), (16, 16))
    with RunStore(tmp_path / "run") as store:
        store.open({"model": "m"}, {}, {})
        store.save_maps("good", {"raw": np.zeros((3, 4), np.float32)}, layout)
        store.save_maps("bad", {k: np.zeros(v, np.float32) for k, v in arrays.items()}, layout)
    assert load_maps(tmp_path / "run", "good")["raw"].shape == (3, 4)
    with pytest.raises(DataError) as err:
        load_maps(tmp_path / "run", "bad")
    assert map_file_name("bad") in str(err.value) and message in str(err.value)

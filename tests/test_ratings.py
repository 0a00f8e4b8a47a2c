"""Clinician ratings: validation, curation, Table 1, and the rating app's save path."""

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from vgutils import context
from vgutils.data.rows import Sample
from vgutils.errors import UsageError
from vgutils.ratings import (
    AXES,
    COLUMNS,
    RatingApp,
    RatingsWarning,
    _boxed_png,
    append_rating,
    curate,
    distribution,
    load_ratings,
    published_table1,
    ratings_path,
    synthetic_ratings,
)


def ratings_frame(rows):
    return pd.DataFrame(
        [
            dict(zip(("sample_id", "q_type", "rater", *AXES), r, strict=True))
            | {"timestamp": "", "note": ""}
            for r in rows
        ],
        columns=list(COLUMNS),
    )


def test_distribution_hand_built():
    kept = ratings_frame(
        [
            ("a", "attribute", "r1", 5, 5, 3),
            ("b", "attribute", "r1", 4, 5, 5),
            ("c", "attribute", "r1", 5, 3, 5),
            ("d", "attribute", "r1", 5, 4, 4),
            ("e", "localization", "r1", 5, 5, 5),
        ]
    )
    table = distribution(kept).set_index(["type", "category"])
    np.testing.assert_allclose(table.loc[("attribute", "clinical_relevance")], [0, 25, 75])
    np.testing.assert_allclose(table.loc[("attribute", "visual_grounding")], [25, 25, 50])
    np.testing.assert_allclose(table.loc[("attribute", "semantic_grounding")], [25, 25, 50])
    np.testing.assert_allclose(table.loc[("localization", "visual_grounding")], [0, 0, 100])
    np.testing.assert_allclose(table.sum(axis=1), 100)
    assert list(table.index.get_level_values("category")[:3]) == [
        "clinical_relevance",
        "semantic_grounding",
        "visual_grounding",
    ]


def test_curate_rules():
    ratings = ratings_frame(
        [
            ("a", "attribute", "r1", 5, 5, 5),
            ("a", "attribute", "r2", 2, 5, 5),
            ("b", "localization", "r1", 3, 3, 3),
            ("c", "localization", "r1", 5, 2, 5),
        ]
    )
    kept, discarded = curate(ratings)
    assert set(kept["sample_id"]) == {"b"} and set(discarded["sample_id"]) == {"a", "c"}
    kept_mean, _ = curate(ratings, rule="mean")
    assert set(kept_mean["sample_id"]) == {"a", "b"}  # a: clinical mean 3.5
    with pytest.raises(ValueError, match="curate first"):
        distribution(ratings)


def test_synthetic_round_trip_within_sampling_error(tmp_path):
    n = 4000
    path = tmp_path / "ratings-synthetic-seed0.csv"
    synthetic_ratings(n, seed=0).to_csv(path, index=False)
    kept, discarded = curate(load_ratings(path))
    assert discarded.empty
    computed = distribution(kept).set_index(["type", "category"])
    published = published_table1().set_index(["type", "category"])
    for key, row in published.iterrows():
        for rating in ("rating_3", "rating_4", "rating_5"):
            p = row[rating] / 100
            error = 4 * np.sqrt(max(p * (1 - p), 1 / n) / n) * 100
            assert abs(computed.loc[key, rating] - row[rating]) <= error, (key, rating)


def test_load_ratings_lists_every_bad_row(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text(
        ",".join(COLUMNS) + "\n"
        "a,attribute,ann,5,5,5,,\n"
        "b,diagnosis,ann,5,5,5,,\n"
        "c,attribute,ann,6,5,x,,\n"
        "a,attribute,ann,4,4,4,,\n"
        "d,localization,,3,3,3,,\n"
    )
    with pytest.raises(ValueError) as err:
        load_ratings(path)
    message = str(err.value)
    assert "5 problem(s)" in message
    for expected in (
        f"{path}:3: q_type",
        f"{path}:4: clinical_relevance",
        f"{path}:4: semantic_grounding",
        f"{path}:5: sample 'a' rated by 'ann' twice, on lines 2 and 5",  # by hand: refused
        f"{path}:6: rater",
    ):
        assert expected in message


@pytest.fixture
def samples(tmp_path):
    Image.new("RGB", (40, 30), "gray").save(tmp_path / "img.png")
    return [
        Sample(
            id=f"s{i}",
            image_path=tmp_path / "img.png",
            question=f"Question {i}?",
            boxes=np.array([[5.0, 5.0, 20.0, 20.0]]),
            q_type="attribute" if i % 2 else "localization",
        )
        for i in range(3)
    ]


def click(app, values, note=""):
    for axis, value in zip(AXES, values, strict=True):
        app.choices[axis].value = value
    app.note.value = note
    app.submit_button.click()


def test_app_saves_every_click_and_resumes(tmp_path, samples):
    path = tmp_path / "ratings.csv"
    with pytest.raises(ValueError, match="rater name is required"):
        RatingApp(samples, path, "  ")
    app = RatingApp(samples, path, "dr-a")
    assert app.index == 0
    app.choices["clinical_relevance"].value = 5
    app.submit_button.click()  # incomplete: nothing written
    assert not path.exists() and app.index == 0
    click(app, (5, 4, 3), note="fine")
    assert app.index == 1
    saved = load_ratings(path)
    assert saved.to_dict("records")[0] | {"timestamp": ""} == {
        "sample_id": "s0",
        "q_type": "localization",
        "rater": "dr-a",
        "clinical_relevance": 5,
        "visual_grounding": 4,
        "semantic_grounding": 3,
        "timestamp": "",
        "note": "fine",
    }
    # a second instance (a reopened browser) resumes at this rater's first unrated sample
    again = RatingApp(samples, path, "dr-a")
    assert again.index == 1
    click(again, (3, 3, 3))
    assert again.index == 2 and len(load_ratings(path)) == 2
    assert "saved s1: 3 / 3 / 3" in again.saved.value
    other = RatingApp(samples, path, "dr-b")  # another rater starts at the beginning
    assert other.index == 0


def test_app_shows_earlier_ratings_and_rerating_appends(tmp_path, samples):
    path = tmp_path / "ratings.csv"
    app = RatingApp(samples, path, "dr-a")
    click(app, (5, 4, 3), note="first")
    app.previous_button.click()  # back to s0: the earlier choice is shown
    assert app.index == 0
    assert [app.choices[a].value for a in AXES] == [5, 4, 3] and app.note.value == "first"
    assert "rated before" in app.question.value
    click(app, (2, 2, 2), note="changed my mind")
    assert len(load_ratings(path, history=True)) == 2
    assert load_ratings(path).loc[0, "clinical_relevance"] == 2
    reopened = RatingApp(samples, path, "dr-a")
    reopened.go(0)
    assert [reopened.choices[a].value for a in AXES] == [2, 2, 2]


def test_app_keyboard(tmp_path, samples):
    path = tmp_path / "ratings.csv"
    app = RatingApp(samples, path, "dr-a")
    app.keys.value = "54"
    assert [app.choices[a].value for a in AXES] == [5, 4, None]
    app._submit_from_keys()  # Enter with an axis missing: nothing saved, said so
    assert not path.exists() and "not saved" in app.saved.value
    app.keys.value = "543"
    app._submit_from_keys()
    assert app.index == 1 and app.keys.value == ""
    assert load_ratings(path).loc[0, "semantic_grounding"] == 3
    app.keys.value = "n"
    assert app.index == 2 and app.keys.value == ""
    app.keys.value = "p"
    assert app.index == 1


def test_app_refuses_a_malformed_file(tmp_path, samples):
    path = tmp_path / "ratings.csv"
    content = ",".join(COLUMNS) + "\ns0,localization,dr-a,9,4,3,,\n"
    path.write_text(content)
    with pytest.raises(ValueError, match="not an integer 1-5"):
        RatingApp(samples, path, "dr-a")
    assert path.read_text() == content


def row(sample_id, rater="dr-a", values=(5, 5, 5), note=""):
    return {"sample_id": sample_id, "q_type": "attribute", "rater": rater, "note": note} | dict(
        zip(AXES, values, strict=True)
    )


def test_rerating_appends_and_the_last_rating_wins(tmp_path):
    path = tmp_path / "r.csv"
    append_rating(path, row("a", values=(2, 2, 2)))
    append_rating(path, row("b"))
    append_rating(path, row("a", values=(4, 4, 4)))  # the rater changed their mind
    assert len(path.read_text().splitlines()) == 4  # the log keeps every row
    history = load_ratings(path, history=True)
    assert list(history["line"]) == [2, 3, 4]
    ratings = load_ratings(path)
    assert len(ratings) == 2
    assert ratings.set_index("sample_id").loc["a", "clinical_relevance"] == 4
    kept, discarded = curate(history)  # curation counts each (sample, rater) once
    assert set(kept["sample_id"]) == {"a", "b"} and len(kept) == 2 and discarded.empty
    table = distribution(history).set_index(["type", "category"])
    np.testing.assert_allclose(table.loc[("attribute", "clinical_relevance")], [0, 50, 50])


def test_duplicates_count_once_per_rater_but_every_rater_counts():
    ratings = ratings_frame(
        [
            ("a", "attribute", "r1", 5, 5, 5),
            ("a", "attribute", "r1", 5, 5, 5),
            ("a", "attribute", "r2", 3, 3, 3),
        ]
    )
    kept, _ = curate(ratings)
    assert len(kept) == 2
    table = distribution(kept).set_index(["type", "category"])
    np.testing.assert_allclose(table.loc[("attribute", "clinical_relevance")], [50, 0, 50])


def test_a_torn_last_line_is_fenced_reported_and_ignored(tmp_path):
    path = tmp_path / "r.csv"
    append_rating(path, row("a"))
    with path.open("a") as handle:  # a crash in the middle of a write
        handle.write("b,attribute,dr-a,4,4")
    with pytest.warns(RatingsWarning, match=r"r\.csv:3: torn line ignored"):
        assert list(load_ratings(path)["sample_id"]) == ["a"]
    append_rating(path, row("c"))  # fenced: a newline first, never glued on
    lines = path.read_text().splitlines()
    assert lines[2] == "b,attribute,dr-a,4,4" and lines[3].startswith("c,attribute,dr-a,5,5,5")
    with pytest.warns(RatingsWarning, match=r"r\.csv:3: torn line ignored \(5 fields\)"):
        assert list(load_ratings(path)["sample_id"]) == ["a", "c"]


def _append_many(path, worker, count, barrier):
    barrier.wait()  # every process makes its first append at the same moment
    for index in range(count):
        append_rating(path, row(f"s{index}", rater=f"r{worker}"))


def test_concurrent_first_appends_write_one_header(tmp_path):
    """Many trials of four processes making their first appends to a new file at the same
    moment: exactly one header, every row whole (bounded: well under a minute). Without
    the lock about one trial in seven wrote a second header."""
    import multiprocessing
    import time

    context = multiprocessing.get_context("fork")
    started = time.monotonic()
    for trial in range(30):
        path = tmp_path / f"race{trial}.csv"
        barrier = context.Barrier(4)
        workers = [
            context.Process(target=_append_many, args=(path, w, 3, barrier)) for w in range(4)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=30)
            assert worker.exitcode == 0
        text = path.read_text()
        assert text.count("sample_id,q_type") == 1, text
        assert text.startswith("sample_id,")
        assert len(load_ratings(path)) == 12
    assert time.monotonic() - started < 60


def test_a_ratings_name_lives_under_the_results_root(tmp_path, samples, monkeypatch):
    results = tmp_path / "results"
    work = tmp_path / "notebooks"
    work.mkdir()
    monkeypatch.chdir(work)  # a notebook's working folder
    with context.use(context.current().replace(results_root=results)):
        assert ratings_path("ratings.csv") == results / "ratings" / "ratings.csv"
        assert ratings_path(tmp_path / "mine.csv") == tmp_path / "mine.csv"  # absolute: as is
        app = RatingApp(samples, "ratings.csv", "dr-a")
        click(app, (5, 4, 3))
        assert load_ratings(results / "ratings" / "ratings.csv").loc[0, "sample_id"] == "s0"
        assert not (work / "ratings.csv").exists()
        # a file left beside the notebooks by an earlier version: said where to move it
        (work / "old.csv").write_text(",".join(COLUMNS) + "\n")
        with pytest.raises(UsageError, match=r"ratings now live under .*mv .*old\.csv") as err:
            RatingApp(samples, "old.csv", "dr-a")
        assert "\n" not in str(err.value)
        (results / "ratings" / "old.csv").write_text(",".join(COLUMNS) + "\n")
        assert ratings_path("old.csv") == results / "ratings" / "old.csv"  # moved: fine


def test_every_image_is_shown_at_one_size_with_sharp_pixels(tmp_path):
    small = np.zeros((8, 16, 3), np.uint8)
    small[:, ::2] = (250, 250, 250)  # stripes: any smoothing would make greys
    Image.fromarray(small).save(tmp_path / "small.png")
    Image.new("RGB", (1200, 900), (90, 90, 90)).save(tmp_path / "large.png")
    shown = {}
    for name, box in (("small", [1, 1, 3, 3]), ("large", [100, 100, 300, 300])):
        sample = Sample(
            id=name,
            image_path=tmp_path / f"{name}.png",
            question="?",
            boxes=np.array([box], float),
            q_type="attribute",
        )
        shown[name] = Image.open(io.BytesIO(_boxed_png(sample, 460))).convert("RGB")
    assert max(shown["small"].size) == max(shown["large"].size) == 460
    assert shown["small"].size == (460, 230) and shown["large"].size == (460, 345)
    row = np.asarray(shown["small"])[200]  # below the box: the stripes only
    assert set(map(tuple, row)) == {(0, 0, 0), (250, 250, 250)}  # nearest neighbour


def test_the_selected_rating_is_said_in_words(tmp_path, samples):
    app = RatingApp(samples, tmp_path / "ratings.csv", "dr-a")
    assert all("selected: none yet" in app.selected[a].value for a in AXES)
    app.choices["clinical_relevance"].value = 4
    assert "selected: 4 — clinically useful" in app.selected["clinical_relevance"].value
    click(app, (5, 4, 3))
    app.previous_button.click()  # the earlier rating, in words
    assert "selected: 3 — broad pathology categories" in app.selected["semantic_grounding"].value
    app.next_button.click()
    assert "none yet" in app.selected["visual_grounding"].value

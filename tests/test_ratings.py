"""Clinician ratings: validation, curation, Table 1, and the rating app's save path."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from vgutils.data.rows import Sample
from vgutils.ratings import (
    AXES,
    COLUMNS,
    RatingApp,
    curate,
    distribution,
    load_ratings,
    published_table1,
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
        f"{path}:5: sample_id/rater",
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
    other = RatingApp(samples, path, "dr-b")  # another rater starts at the beginning
    assert other.index == 0


def test_app_refuses_a_malformed_file(tmp_path, samples):
    path = tmp_path / "ratings.csv"
    content = ",".join(COLUMNS) + "\ns0,localization,dr-a,9,4,3,,\n"
    path.write_text(content)
    with pytest.raises(ValueError, match="not an integer 1-5"):
        RatingApp(samples, path, "dr-a")
    assert path.read_text() == content

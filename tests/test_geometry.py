"""Box conversion, token layouts and the ground-truth token set."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vgutils.geometry import TokenLayout, grid_boxes, to_xyxy
from vgutils.metrics import gt_mask


def test_to_xyxy_formats():
    np.testing.assert_array_equal(to_xyxy([1, 2, 5, 7], "xyxy"), [1, 2, 5, 7])
    np.testing.assert_array_equal(to_xyxy([1, 2, 4, 5], "xywh"), [1, 2, 5, 7])
    assert to_xyxy((1, 2, 4, 5), "xywh").dtype == np.float64


@pytest.mark.parametrize(
    ("box", "fmt", "message"),
    [
        ([0, 0, float("nan"), 1], "xyxy", "non-finite"),
        ([0, 0, float("inf"), 1], "xywh", "non-finite"),
        ([0, 0, -1, 2], "xywh", "negative width or height"),
        ([0, 0, 2, -1], "xywh", "negative width or height"),
        ([0, 0, 0, 2], "xywh", "x1 <= x0"),
        ([5, 0, 5, 2], "xyxy", "x1 <= x0"),
        ([5, 0, 4, 2], "xyxy", "x1 <= x0"),
        ([0, 3, 4, 3], "xyxy", "y1 <= y0"),
        ([0, 0, 1], "xyxy", "expected 4"),
        ("abcd", "xyxy", "not four numbers"),
        ([0, 0, 1, 1], "cxcywh", "unknown box format"),
    ],
)
def test_to_xyxy_rejects(box, fmt, message):
    with pytest.raises(ValueError, match=message):
        to_xyxy(box, fmt)


@settings(max_examples=50, deadline=None)
@given(
    x=st.floats(-100, 100),
    y=st.floats(-100, 100),
    w=st.floats(0.01, 100),
    h=st.floats(0.01, 100),
)
def test_xywh_round_trip(x, y, w, h):
    x0, y0, x1, y1 = to_xyxy([x, y, w, h], "xywh")
    np.testing.assert_allclose([x0, y0, x1 - x0, y1 - y0], [x, y, w, h], atol=1e-9)


def test_from_grid_cells():
    layout = TokenLayout.from_grid(2, 3, (300, 100))
    assert layout.n_tokens == 6
    assert layout.grids == ((0, 2, 3),)
    assert layout.image_size == (300, 100)
    # token (r=1, c=2) is index 5: [2*300/3, 1*100/2, 3*300/3, 2*100/2]
    np.testing.assert_allclose(layout.boxes[5], [200, 50, 300, 100])
    np.testing.assert_allclose(layout.boxes[1], [100, 0, 200, 50])


def test_layout_is_frozen_and_read_only():
    layout = TokenLayout.from_grid(2, 2, (10, 10))
    with pytest.raises(AttributeError):
        layout.image_size = (5, 5)
    with pytest.raises(ValueError):
        layout.boxes[0, 0] = 3.0


def test_layout_validation():
    with pytest.raises(ValueError, match="does not fit"):
        TokenLayout(np.zeros((4, 4)), ((0, 3, 2),), (10, 10))
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        TokenLayout(np.zeros((4, 3)), ((0, 2, 2),), (10, 10))


def test_layout_dict_round_trip_and_grid_values():
    layout = TokenLayout(grid_boxes(2, 2, (0, 0, 8, 8)), ((0, 2, 2),), (8, 8))
    again = TokenLayout.from_dict(layout.to_dict())
    np.testing.assert_array_equal(again.boxes, layout.boxes)
    assert again.grids == layout.grids and again.image_size == layout.image_size
    values = np.arange(8).reshape(2, 4)
    np.testing.assert_array_equal(layout.grid_values(values)[1], [[4, 5], [6, 7]])
    np.testing.assert_array_equal(layout.grid_region(), [0, 0, 8, 8])


# 4 x 4 grid over a 40 x 40 image: cell (r, c) covers [10c, 10r, 10c+10, 10r+10].
GRID = TokenLayout.from_grid(4, 4, (40, 40))


def cells(*rc):
    mask = np.zeros(16, dtype=bool)
    for r, c in rc:
        mask[r * 4 + c] = True
    return mask


def test_box_on_cell_borders_selects_only_inner_cells():
    # exactly cells (1,1),(1,2),(2,1),(2,2); neighbours only touch the edges
    np.testing.assert_array_equal(
        gt_mask(GRID, [10, 10, 30, 30]), cells((1, 1), (1, 2), (2, 1), (2, 2))
    )


def test_box_slightly_over_border_takes_neighbour():
    np.testing.assert_array_equal(gt_mask(GRID, [10, 10, 20.5, 20]), cells((1, 1), (1, 2)))


def test_box_touching_image_edge():
    np.testing.assert_array_equal(gt_mask(GRID, [35, 0, 40, 5]), cells((0, 3)))


def test_box_inside_one_cell():
    np.testing.assert_array_equal(gt_mask(GRID, [12, 22, 13, 23]), cells((2, 1)))


def test_several_boxes_union():
    np.testing.assert_array_equal(
        gt_mask(GRID, [[0, 0, 5, 5], [31, 31, 39, 39]]), cells((0, 0), (3, 3))
    )


def test_xywh_and_xyxy_give_same_tokens():
    xyxy = to_xyxy([5, 15, 25, 35], "xyxy")
    xywh = to_xyxy([5, 15, 20, 20], "xywh")
    np.testing.assert_array_equal(gt_mask(GRID, xyxy), gt_mask(GRID, xywh))


def test_box_outside_every_token_raises():
    with pytest.raises(ValueError, match="cover no image token"):
        gt_mask(GRID, [40, 40, 50, 50])


def test_padded_layout_box_maps_to_true_cells():
    # pad-to-square of a 40 x 20 image: square region y in [-10, 30], 4 x 4 cells of 10 px
    layout = TokenLayout.from_region(4, 4, (0, -10, 40, 30), (40, 20))
    # a box at the top strip of the image y in [0, 5] lies in row 1 (y in [0, 10])
    np.testing.assert_array_equal(gt_mask(layout, [0, 0, 10, 5]), cells((1, 0)))


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 8),
    cols=st.integers(1, 8),
    r=st.integers(0, 7),
    c=st.integers(0, 7),
)
def test_exact_cell_box_selects_exactly_that_cell(rows, cols, r, c):
    r, c = r % rows, c % cols
    layout = TokenLayout.from_grid(rows, cols, (97, 61))
    mask = gt_mask(layout, layout.boxes[r * cols + c])
    assert mask.sum() == 1 and mask[r * cols + c]


def test_column_major_grid_and_unplaced_tokens():
    # a 2 x 3 grid stored column-major: token k at row k % 2, column k // 2
    layout = TokenLayout.from_grids([(2, 3, (0, 0, 30, 20), "column")], (30, 20))
    np.testing.assert_allclose(layout.boxes[1], [0, 10, 10, 20])  # row 1, column 0
    np.testing.assert_allclose(layout.boxes[2], [10, 0, 20, 10])  # row 0, column 1
    np.testing.assert_array_equal(layout.grid_values(np.arange(6)), [[0, 2, 4], [1, 3, 5]])
    np.testing.assert_array_equal(gt_mask(layout, [20, 0, 30, 10]), [0, 0, 0, 0, 1, 0])
    # two grids, the second followed by an unplaced token after each of its rows
    two = TokenLayout.from_grids(
        [(1, 2, (0, 0, 20, 10), "row"), (2, 2, (0, 0, 20, 10), "row")], (20, 10), (4, 7)
    )
    assert two.n_tokens == 6 and two.prompt_tokens == 8
    np.testing.assert_array_equal(two.placed(), [0, 1, 2, 3, 5, 6])
    again = TokenLayout.from_dict(two.to_dict())
    assert again.unplaced == (4, 7) and again.orders == ("row", "row")
    assert TokenLayout.from_dict({**two.to_dict(), "orders": [], "unplaced": []}).unplaced == ()
    with pytest.raises(ValueError, match="orders"):
        TokenLayout(layout.boxes, layout.grids, (30, 20), ("diagonal",))
    with pytest.raises(ValueError, match="unplaced"):
        TokenLayout(layout.boxes, layout.grids, (30, 20), (), (3, 3))
    with pytest.raises(ValueError, match="past the"):
        TokenLayout(layout.boxes, layout.grids, (30, 20), (), (7,))

"""Hand-computed cases and properties of the grounding metrics (docs/METHOD.md)."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from vgutils.metrics import (
    attention_ratio,
    js_divergence,
    kl_divergence,
    normalize_by_generic,
)

# N = 4 tokens, ground truth = tokens 0 and 1 (k = 2); P = [0.4, 0.2, 0.3, 0.1].
ATT = np.array([4.0, 2.0, 3.0, 1.0])
MASK = np.array([True, True, False, False])


def test_ratio_hand_computed():
    # sum over G = 6, sum = 10, k/N = 1/2 -> 6 / (10 * 0.5) = 1.2
    assert attention_ratio(ATT, MASK) == pytest.approx(1.2, abs=1e-15)


def test_kl_hand_computed():
    # 0.5*log(0.5/0.4) + 0.5*log(0.5/0.2)
    expected = 0.5 * math.log(1.25) + 0.5 * math.log(2.5)
    assert kl_divergence(ATT, MASK) == pytest.approx(expected, abs=1e-15)


def test_js_hand_computed():
    # P = [.4,.2,.3,.1], U = [.5,.5,0,0], M = [.45,.35,.15,.05]
    p = [0.4, 0.2, 0.3, 0.1]
    u = [0.5, 0.5, 0.0, 0.0]
    m = [0.45, 0.35, 0.15, 0.05]
    kl_pm = sum(pi * math.log(pi / mi) for pi, mi in zip(p, m, strict=True))
    kl_um = sum(ui * math.log(ui / mi) for ui, mi in zip(u, m, strict=True) if ui > 0)
    assert js_divergence(ATT, MASK) == pytest.approx(0.5 * kl_pm + 0.5 * kl_um, abs=1e-15)


def test_kl_floor_on_zero_attention():
    att = np.array([0.0, 1.0, 1.0])
    mask = np.array([True, False, False])
    # P_0 = 0 -> floor 1e-12: log(1 / 1e-12)
    assert kl_divergence(att, mask) == pytest.approx(math.log(1e12))


def test_vectorised_over_leading_axes():
    att = np.stack([np.stack([ATT, ATT * 3.0]), np.stack([np.ones(4), ATT[::-1]])])
    assert att.shape == (2, 2, 4)
    ratio = attention_ratio(att, MASK)
    assert ratio.shape == (2, 2) and ratio.dtype == np.float64
    np.testing.assert_allclose(ratio, [[1.2, 1.2], [1.0, 0.8]])
    assert kl_divergence(att, MASK).shape == (2, 2)
    assert js_divergence(att, MASK).shape == (2, 2)


def test_uniform_map_has_ratio_one():
    mask = np.array([True, False, False, True, False])
    assert attention_ratio(np.full(5, 0.2), mask) == pytest.approx(1.0)


def test_map_equal_to_uniform_gt_has_zero_kl_and_js():
    mask = np.array([False, True, True, False])
    att = mask.astype(float)
    assert kl_divergence(att, mask) == pytest.approx(0.0, abs=1e-15)
    assert js_divergence(att, mask) == pytest.approx(0.0, abs=1e-15)
    # and the best possible ratio N / k
    assert attention_ratio(att, mask) == pytest.approx(2.0)


def test_js_reaches_log2_for_disjoint_support():
    mask = np.array([True, False])
    assert js_divergence(np.array([0.0, 1.0]), mask) == pytest.approx(math.log(2))


def test_normalize_by_generic():
    out = normalize_by_generic(np.array([[0.2, 0.4]]), np.array([[0.1, 0.8]]))
    np.testing.assert_allclose(out, [[2.0, 0.5]])


@pytest.mark.parametrize(
    ("att", "mask", "message"),
    [
        (np.array([1.0, -0.1]), np.array([True, False]), "negative"),
        (np.array([1.0, np.nan]), np.array([True, False]), "non-finite"),
        (np.array([1.0, np.inf]), np.array([True, False]), "non-finite"),
        (np.zeros(2), np.array([True, False]), "all zero"),
        (np.ones(3), np.array([True, False]), "shape mismatch"),
        (np.ones(2), np.array([False, False]), "empty"),
        (np.ones(2), np.array([1, 0]), "boolean"),
    ],
)
@pytest.mark.parametrize("metric", [attention_ratio, kl_divergence, js_divergence])
def test_bad_input_raises(metric, att, mask, message):
    with pytest.raises(ValueError, match=message):
        metric(att, mask)


def test_normalize_bad_input():
    with pytest.raises(ValueError, match="shape mismatch"):
        normalize_by_generic(np.ones((2, 3)), np.ones((3, 2)))
    with pytest.raises(ValueError, match="strictly positive"):
        normalize_by_generic(np.ones(2), np.array([1.0, 0.0]))
    with pytest.raises(ValueError, match="non-finite"):
        normalize_by_generic(np.array([np.nan, 1.0]), np.ones(2))
    with pytest.raises(ValueError, match="negative"):
        normalize_by_generic(np.array([-1.0, 1.0]), np.ones(2))


maps = arrays(np.float64, st.integers(2, 12), elements=st.floats(0.0, 1e3)).filter(
    lambda a: a.sum() > 1e-6
)


@settings(max_examples=60, deadline=None)
@given(att=maps, data=st.data())
def test_properties(att, data):
    n = att.shape[0]
    mask = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    if not mask.any():
        mask[data.draw(st.integers(0, n - 1))] = True
    scale = data.draw(st.floats(1e-3, 1e3))
    for metric in (attention_ratio, kl_divergence, js_divergence):
        np.testing.assert_allclose(
            metric(att * scale, mask), metric(att, mask), rtol=1e-9, atol=1e-12
        )
    ratio = attention_ratio(att, mask)
    assert 0.0 <= ratio <= n / mask.sum() + 1e-9
    assert kl_divergence(att, mask) >= -1e-12
    js = js_divergence(att, mask)
    assert -1e-12 <= js <= math.log(2) + 1e-12


@settings(max_examples=60, deadline=None)
@given(data=st.data(), n=st.integers(2, 10))
def test_js_symmetric(data, n):
    # With P itself uniform over a set A, JS(U_A, U_B) must equal JS(U_B, U_A).
    def draw_mask():
        mask = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
        mask[data.draw(st.integers(0, n - 1))] = True
        return mask

    a, b = draw_mask(), draw_mask()
    forward = js_divergence(a.astype(float), b)
    backward = js_divergence(b.astype(float), a)
    assert forward == pytest.approx(backward, abs=1e-12)
    assert 0 <= forward <= math.log(2) + 1e-12

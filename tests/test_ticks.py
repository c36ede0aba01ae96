"""Tests for the synthetic ticks dataset (lrscan.data.ticks)."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lrscan.data.ticks import (
    CIRCLE_RADIUS,
    MARGIN,
    SHAPES,
    make_ticks,
    single_feature_sets,
    tick_class,
)


def feature(X, k):
    """Return the two coordinates of feature k (works for (..., dim) arrays)."""
    return X[..., 2 * k], X[..., 2 * k + 1]


def on_boundary(shape, x1, x2):
    """Whether points lie exactly (to float32 precision) on the class boundary of a shape."""
    if shape == "tick":
        d = x2 - np.abs(x1)
        return np.isclose(d, 0, atol=1e-6) | np.isclose(d, -2, atol=1e-6)
    if shape == "stripe":
        return np.isclose(np.abs(x1), 1, atol=1e-6) & (np.abs(x2) <= 2)
    return np.isclose(np.hypot(x1, x2), CIRCLE_RADIUS, atol=1e-5)


def test_default_shapes_and_dtypes():
    X, y = make_ticks(0, 512)
    assert X.shape == (512, 32) and X.dtype == np.float32
    assert y.shape == (512,) and y.dtype == np.int64
    assert set(np.unique(y)) == {0, 1}
    assert "tick" in SHAPES


def test_tick_geometry_explicit():
    X, y = make_ticks(3, 800, informative=0.5)
    for k in range(16):
        x1, x2 = (c.astype(np.float64) for c in feature(X, k))
        assert np.all(np.abs(x1) <= 2) and np.all(np.abs(x2) <= 2)
        a = np.abs(x1)
        boundary = np.isclose(x2 - a, 0, atol=1e-6) | np.isclose(x2 - a, -2, atol=1e-6)
        a0, b0 = a[~boundary & (y == 0)], x2[~boundary & (y == 0)]
        a1, b1 = a[~boundary & (y == 1)], x2[~boundary & (y == 1)]
        assert np.all((a0 - 2 + MARGIN < b0) & (b0 < a0 - MARGIN))
        assert np.all((b1 > a1 + MARGIN) | (b1 < a1 - 2 - MARGIN))
        assert boundary.sum() == 400


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_geometry_all_shapes(shape):
    X, y = make_ticks(1, 600, informative=0.5, shape=shape)
    classify = SHAPES[shape].classify
    for k in range(16):
        x1, x2 = feature(X, k)
        assert np.all(np.abs(x1) <= 2) and np.all(np.abs(x2) <= 2)
        cls = classify(x1, x2, MARGIN)
        informative = cls != -1
        assert informative.sum() == 300
        # Informative points sit in their label's region, all others exactly on the boundary.
        np.testing.assert_array_equal(cls[informative], y[informative])
        assert np.all(on_boundary(shape, x1[~informative], x2[~informative]))
        assert not np.any(on_boundary(shape, x1[informative], x2[informative]))


def test_tick_class1_fills_both_arms():
    # Above and below parts of class 1 have equal area, so uniform sampling splits them evenly.
    X, y = make_ticks(4, 2000, n_features=1, dim=2)
    x1, x2 = feature(X, 0)
    above = (x2 > np.abs(x1))[y == 1]
    assert abs(above.mean() - 0.5) < 0.06


@pytest.mark.parametrize("n", [301, 512])
def test_informative_counts_exact(n):
    fractions = [1.0, 0.5, 0.0, 0.25, 0.9]
    X, _ = make_ticks(2, n, n_features=5, dim=14, informative=fractions)
    for k, f in enumerate(fractions):
        x1, x2 = feature(X, k)
        assert (tick_class(x1, x2) != -1).sum() == round(f * n)
        assert (on_boundary("tick", x1, x2)).sum() == n - round(f * n)
    # Coordinates past the features stay standard Gaussian noise.
    noise = X[:, 10:]
    assert abs(noise.mean()) < 0.15 and abs(noise.std() - 1) < 0.15
    assert np.abs(noise).max() > 2


@pytest.mark.parametrize("n", [1, 7, 512])
def test_labels_balanced(n):
    _, y = make_ticks(5, n)
    assert abs(int((y == 0).sum()) - int((y == 1).sum())) == n % 2


@pytest.mark.parametrize("noise", [0.0, 0.1, 0.33])
def test_label_noise_flips_exact_fraction(noise):
    n = 500
    X, y = make_ticks(6, n, n_features=4, dim=8, label_noise=noise)
    disagree = np.stack([tick_class(*feature(X, k)) != y for k in range(4)])
    assert disagree[0].sum() == round(noise * n)
    # The same samples are flipped in every feature: their features follow the other class.
    assert np.all(disagree == disagree[0])
    assert abs(int(y.sum()) - n // 2) == 0


def test_deterministic_and_streams_independent():
    X1, y1 = make_ticks(7, 256, informative=0.7, label_noise=0.1)
    X2, y2 = make_ticks(7, 256, informative=0.7, label_noise=0.1)
    np.testing.assert_array_equal(X1, X2)
    np.testing.assert_array_equal(y1, y2)
    X3, _ = make_ticks(8, 256, informative=0.7, label_noise=0.1)
    X4, _ = make_ticks(7, 256, stream="test", informative=0.7, label_noise=0.1)
    assert not np.array_equal(X1, X3)
    assert not np.array_equal(X1, X4)
    S1, t1 = single_feature_sets(7, 100, n_features=3, dim=6)
    S2, t2 = single_feature_sets(7, 100, n_features=3, dim=6)
    np.testing.assert_array_equal(S1, S2)
    np.testing.assert_array_equal(t1, t2)
    assert not np.array_equal(S1[0], S1[1])


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_single_feature_sets(shape):
    n = 200
    X, y = single_feature_sets(9, n, shape=shape)
    assert X.shape == (16, n, 32) and X.dtype == np.float32
    assert y.shape == (16, n) and y.dtype == np.int64
    classify = SHAPES[shape].classify
    for k in range(16):
        for j in range(16):
            x1, x2 = feature(X[k], j)
            if j == k:
                np.testing.assert_array_equal(classify(x1, x2, MARGIN), y[k])
            else:
                assert np.all(on_boundary(shape, x1, x2))
        assert (y[k] == 0).sum() == n // 2


def test_single_feature_sets_default_size():
    X, y = single_feature_sets(0, n_features=2, dim=4)
    assert X.shape == (2, 1000, 4) and y.shape == (2, 1000)


def _tick_region_reference(x1, x2, m):
    """Scalar restatement of the tick class regions."""
    if not (-2 <= x1 <= 2 and -2 <= x2 <= 2):
        return -1
    if abs(x1) - 2 + m < x2 < abs(x1) - m:
        return 0
    if x2 > abs(x1) + m or x2 < abs(x1) - 2 - m:
        return 1
    return -1


@settings(max_examples=300, deadline=None)
@given(
    st.floats(-2.5, 2.5, allow_nan=False),
    st.floats(-2.5, 2.5, allow_nan=False),
    st.sampled_from([0.0, MARGIN, 0.5]),
)
def test_tick_class_matches_definition(x1, x2, m):
    assert tick_class(np.array([x1]), np.array([x2]), m)[0] == _tick_region_reference(x1, x2, m)


def test_tick_class_known_points():
    x1 = np.array([0.0, 0.0, 0.0, 1.0, 1.9, 0.0, 1.0])
    x2 = np.array([1.0, -1.0, -2.5, 1.0, -1.9, -1.95, -0.5])
    np.testing.assert_array_equal(tick_class(x1, x2), [1, 0, -1, -1, 1, -1, 0])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"shape": "tik"}, r"shape must be one of .*did you mean 'tick'"),
        ({"shape": "circel"}, r"did you mean 'circle'"),
        ({"informative": 1.5}, r"informative fractions must be in \[0, 1\]"),
        ({"informative": [0.5, -0.1] + [1.0] * 14}, r"informative fractions must be in \[0, 1\]"),
        ({"informative": float("nan")}, r"informative fractions must be in \[0, 1\]"),
        ({"informative": [0.5] * 3}, r"informative must be .*length n_features=16"),
        ({"label_noise": 1.0}, r"label_noise must be in \[0, 1\)"),
        ({"label_noise": -0.1}, r"label_noise must be in \[0, 1\)"),
        ({"n": 0}, r"n must be at least 1, got 0"),
        ({"n_features": 0}, r"n_features must be at least 1, got 0"),
        ({"n_features": 17}, r"n_features must be at most 16, got 17"),
        ({"n_features": 6, "dim": 10}, r"n_features must be at most 5, got 6"),
        ({"seed": -1}, r"seed must be at least 0, got -1"),
        ({"stream": 3}, r"stream must be a str"),
        ({"n": 2.5}, r"n must be a whole number, got 2.5"),
    ],
)
def test_make_ticks_bad_input(kwargs, match):
    args = {"seed": 0, "n": 10} | kwargs
    seed, n = args.pop("seed"), args.pop("n")
    with pytest.raises(ValueError, match=match):
        make_ticks(seed, n, **args)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"shape": "strip"}, r"did you mean 'stripe'"),
        ({"n": 0}, r"n must be at least 1, got 0"),
        ({"n_features": 17}, r"n_features must be at most 16, got 17"),
    ],
)
def test_single_feature_sets_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        single_feature_sets(0, **kwargs)


def test_tick_class_bad_margin():
    with pytest.raises(ValueError, match=r"margin must be non-negative"):
        tick_class(np.zeros(1), np.zeros(1), margin=-math.sqrt(2))

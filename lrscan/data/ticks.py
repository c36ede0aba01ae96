"""Synthetic "ticks" dataset from "Where Do Large Learning Rates Lead Us?" (NeurIPS 2024).

Each sample has a balanced binary label and ``dim`` Gaussian coordinates, of which the
first ``n_features`` pairs are overwritten by 2-D features on [-2, 2]^2. An *informative*
feature is drawn uniformly from its class region (kept a margin away from the class
boundary); an *uninformative* one lies exactly on the boundary and carries no label
information. Per-feature informative fractions control how useful each feature is.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from lrscan.errors import LrscanError
from lrscan.options import choice, integer, number

__all__ = ["MARGIN", "SHAPES", "Shape", "make_ticks", "single_feature_sets", "tick_class"]

MARGIN = 0.1 * math.sqrt(2)
# Half-width of the square [-BOX, BOX]^2 that every feature point lies in.
BOX = 2.0
# Circle radius whose disc covers half the square, so both classes have similar area.
CIRCLE_RADIUS = math.sqrt((2 * BOX) ** 2 / (2 * math.pi))


class Shape(NamedTuple):
    """A 2-D feature shape: a class-region predicate and a boundary sampler.

    Attributes
    ----------
    classify : callable
        ``classify(x1, x2, margin)`` returns an int8 array with 0 / 1 for points inside
        the class-0 / class-1 region (at least ``margin`` away from the boundary, inside
        the square) and -1 for points in neither.
    boundary : callable
        ``boundary(rng, n)`` returns ``n`` float32 points of shape (n, 2) lying exactly on
        the class boundary (so ``classify`` returns -1 for them).
    """

    classify: Callable[[np.ndarray, np.ndarray, float], np.ndarray]
    boundary: Callable[[np.random.Generator, int], np.ndarray]


def _regions(inside: np.ndarray, cls0: np.ndarray, cls1: np.ndarray) -> np.ndarray:
    """Combine region masks into labels 0 / 1, and -1 outside the square or both regions."""
    out = np.full(np.shape(inside), -1, dtype=np.int8)
    out[inside & cls0] = 0
    out[inside & cls1] = 1
    return out


def _in_square(x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
    """Return whether points lie in the closed square [-BOX, BOX]^2."""
    return (np.abs(x1) <= BOX) & (np.abs(x2) <= BOX)


def _as_float64(x1: np.ndarray, x2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Broadcast coordinates to float64 so float32 data and its float64 copy classify alike."""
    return np.broadcast_arrays(np.asarray(x1, dtype=np.float64), np.asarray(x2, dtype=np.float64))


def _value_error(check: Callable, *args, **kwargs):
    """A shared option check (:mod:`lrscan.options`) raising ValueError, this generator's
    documented error for an argument outside its allowed values."""
    try:
        return check(*args, **kwargs)
    except LrscanError as err:
        raise ValueError(str(err)) from None


def _check_margin(margin: float) -> None:
    """Reject negative margins, for which the two class regions would overlap."""
    _value_error(number, "margin", margin, positive=False)


def tick_class(x1: np.ndarray, x2: np.ndarray, margin: float = MARGIN) -> np.ndarray:
    """Classify points by the tick-shape class regions.

    Class 0 is the V-shaped band ``|x1| - 2 + margin < x2 < |x1| - margin``; class 1 is
    ``x2 > |x1| + margin`` or ``x2 < |x1| - 2 - margin``; both restricted to [-2, 2]^2.

    Parameters
    ----------
    x1, x2 : np.ndarray
        Coordinates of the points (broadcastable to a common shape).
    margin : float, default MARGIN
        Vertical distance kept from the boundary lines ``x2 = |x1|`` and ``x2 = |x1| - 2``
        (``0.1 * sqrt(2)`` vertically is a perpendicular distance of 0.1).

    Returns
    -------
    np.ndarray
        int8 array: 0 (class-0 band), 1 (class-1 region), -1 (margin zone or outside).
    """
    _check_margin(margin)
    x1, x2 = _as_float64(x1, x2)
    a = np.abs(x1)
    cls0 = (a - 2 + margin < x2) & (x2 < a - margin)
    cls1 = (x2 > a + margin) | (x2 < a - 2 - margin)
    return _regions(_in_square(x1, x2), cls0, cls1)


def _tick_boundary(rng: np.random.Generator, n: int) -> np.ndarray:
    """Sample points on the tick boundary: x1 ~ U[-2, 2], x2 = |x1| + s, s in {0, -2}."""
    x1 = rng.uniform(-BOX, BOX, size=n).astype(np.float32)
    shift = np.where(rng.integers(0, 2, size=n) == 1, np.float32(-2), np.float32(0))
    return np.stack([x1, np.abs(x1) + shift], axis=1)


def stripe_class(x1: np.ndarray, x2: np.ndarray, margin: float = MARGIN) -> np.ndarray:
    """Classify points by the stripe-shape class regions.

    Class 0 is the vertical stripe ``|x1| < 1 - margin``, class 1 is ``|x1| > 1 + margin``,
    both restricted to [-2, 2]^2 (each covers half the square before margins).

    Parameters
    ----------
    x1, x2 : np.ndarray
        Coordinates of the points (broadcastable to a common shape).
    margin : float, default MARGIN
        Distance kept from the boundary lines ``x1 = -1`` and ``x1 = 1``.

    Returns
    -------
    np.ndarray
        int8 array: 0 (class-0 stripe), 1 (class-1 region), -1 (margin zone or outside).
    """
    _check_margin(margin)
    x1, x2 = _as_float64(x1, x2)
    a = np.abs(x1)
    return _regions(_in_square(x1, x2), a < 1 - margin, a > 1 + margin)


def _stripe_boundary(rng: np.random.Generator, n: int) -> np.ndarray:
    """Sample points on the stripe boundary: x1 in {-1, 1}, x2 ~ U[-2, 2]."""
    x1 = np.where(rng.integers(0, 2, size=n) == 1, np.float32(1), np.float32(-1))
    x2 = rng.uniform(-BOX, BOX, size=n).astype(np.float32)
    return np.stack([x1, x2], axis=1)


def circle_class(x1: np.ndarray, x2: np.ndarray, margin: float = MARGIN) -> np.ndarray:
    """Classify points by the circle-shape class regions.

    Class 0 is the disc ``r < R - margin``, class 1 is ``r > R + margin`` inside [-2, 2]^2,
    with ``r = sqrt(x1^2 + x2^2)`` and ``R = CIRCLE_RADIUS`` (disc area = half the square).

    Parameters
    ----------
    x1, x2 : np.ndarray
        Coordinates of the points (broadcastable to a common shape).
    margin : float, default MARGIN
        Radial distance kept from the circle ``r = R``.

    Returns
    -------
    np.ndarray
        int8 array: 0 (inner disc), 1 (outer region), -1 (margin zone or outside).
    """
    _check_margin(margin)
    x1, x2 = _as_float64(x1, x2)
    r = np.hypot(x1, x2)
    return _regions(_in_square(x1, x2), r < CIRCLE_RADIUS - margin, r > CIRCLE_RADIUS + margin)


def _circle_boundary(rng: np.random.Generator, n: int) -> np.ndarray:
    """Sample points uniformly in angle on the circle ``r = CIRCLE_RADIUS``."""
    theta = rng.uniform(0.0, 2 * math.pi, size=n)
    return (CIRCLE_RADIUS * np.stack([np.cos(theta), np.sin(theta)], axis=1)).astype(np.float32)


SHAPES: dict[str, Shape] = {
    "tick": Shape(tick_class, _tick_boundary),
    "stripe": Shape(stripe_class, _stripe_boundary),
    "circle": Shape(circle_class, _circle_boundary),
}


def _rng(seed: int, stream: str) -> np.random.Generator:
    """Return the generator of one named stream of a data seed."""
    # crc32 rather than hash(): str hashes are salted per process, which breaks determinism.
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(stream.encode())]))


def _sample_region(
    rng: np.random.Generator, classify: Callable, cls: int, count: int
) -> np.ndarray:
    """Draw ``count`` float32 points uniformly from one class region by rejection sampling.

    Parameters
    ----------
    rng : np.random.Generator
        Source of randomness.
    classify : callable
        Class-region predicate of the shape, see :class:`Shape`.
    cls : int
        Class region to sample from (0 or 1).
    count : int
        Number of points to return.

    Returns
    -------
    np.ndarray
        float32 array of shape (count, 2).
    """
    out = np.empty((count, 2), dtype=np.float32)
    filled = 0
    while filled < count:
        # Regions cover roughly 40% of the square, so 3x the shortfall usually suffices.
        batch = 3 * (count - filled) + 64
        # Classify the float32 values that are stored, so rounding cannot cross the margin.
        cand = rng.uniform(-BOX, BOX, size=(batch, 2)).astype(np.float32)
        kept = cand[classify(cand[:, 0], cand[:, 1], MARGIN) == cls][: count - filled]
        out[filled : filled + len(kept)] = kept
        filled += len(kept)
    return out


def _generate(
    rng: np.random.Generator,
    n: int,
    dim: int,
    fractions: np.ndarray,
    label_noise: float,
    shape: Shape,
) -> tuple[np.ndarray, np.ndarray]:
    """Generate one dataset from already validated arguments; see :func:`make_ticks`."""
    n_features = len(fractions)
    # Exactly balanced labels; for odd n the class of the extra sample is a fair coin.
    y = rng.permutation((np.arange(n) + rng.integers(0, 2)) % 2).astype(np.int64)
    # Noisy samples draw their features from the other class's region; the label is kept.
    noisy = rng.permutation(n) < round(label_noise * n)
    feature_class = np.where(noisy, 1 - y, y)

    X = rng.standard_normal((n, dim))
    # A random permutation per feature; ranks below the count mark exactly that many samples.
    counts = np.array([round(f * n) for f in fractions])
    ranks = rng.permuted(np.tile(np.arange(n), (n_features, 1)), axis=1).T
    informative = ranks < counts
    points = shape.boundary(rng, n * n_features).reshape(n, n_features, 2)
    for cls in (0, 1):
        sel = informative & (feature_class[:, None] == cls)
        points[sel] = _sample_region(rng, shape.classify, cls, int(sel.sum()))
    X[:, : 2 * n_features] = points.reshape(n, 2 * n_features)
    return X.astype(np.float32), y


def _check_common(seed: int, n: int, n_features: int, dim: int, shape: str) -> tuple[int, int, int, int, Shape]:
    """Validate the arguments shared by the public generators: the counts as ints, and the shape."""
    seed = _value_error(integer, "seed", seed, minimum=0)
    n = _value_error(integer, "n", n, minimum=1)
    dim = _value_error(integer, "dim", dim, minimum=2)
    n_features = _value_error(integer, "n_features", n_features, minimum=1, maximum=dim // 2)
    return seed, n, n_features, dim, SHAPES[_value_error(choice, "shape", shape, tuple(SHAPES))]


def make_ticks(
    seed: int,
    n: int,
    *,
    stream: str = "train",
    n_features: int = 16,
    dim: int = 32,
    informative: float | Sequence[float] = 1.0,
    label_noise: float = 0.0,
    shape: str = "tick",
) -> tuple[np.ndarray, np.ndarray]:
    """Generate a ticks dataset (or another registered shape) of ``n`` samples.

    Parameters
    ----------
    seed : int
        Data seed (>= 0); identical arguments give identical arrays.
    n : int
        Number of samples (>= 1), e.g. 512 for train and 2000 for test.
    stream : str, default "train"
        Name of the independent random stream of ``seed`` ("train", "test", ...).
    n_features : int, default 16
        Number of 2-D features, placed at coordinate pairs (0, 1), (2, 3), ...; the
        remaining coordinates stay N(0, 1) noise. Must be in 1..dim // 2.
    dim : int, default 32
        Input dimension.
    informative : float or sequence of float, default 1.0
        Fraction in [0, 1] of samples whose feature is informative, for all features or
        one per feature. Exactly ``round(f * n)`` random samples (half to even) get an
        informative point; the others get a point on the class boundary.
    label_noise : float, default 0.0
        Fraction in [0, 1) of samples (exactly ``round(label_noise * n)``, chosen at
        random) whose informative features are drawn from the other class's region.
        The returned label is unchanged.
    shape : str, default "tick"
        Name of the feature shape in :data:`SHAPES`.

    Returns
    -------
    X : np.ndarray
        float32 array of shape (n, dim).
    y : np.ndarray
        int64 array of shape (n,) with exactly balanced labels (n // 2 of each class;
        for odd n the extra sample's class is random).

    Raises
    ------
    ValueError
        If an argument is outside its allowed values.
    """
    seed, n, n_features, dim, spec = _check_common(seed, n, n_features, dim, shape)
    if not isinstance(stream, str):
        raise ValueError(f"stream must be a str such as 'train' or 'test', got {stream!r}")
    fractions = np.asarray(informative, dtype=np.float64)
    if fractions.ndim == 0:
        fractions = np.full(n_features, float(fractions))
    elif fractions.shape != (n_features,):
        raise ValueError(
            f"informative must be a float or a sequence of length n_features={n_features}, "
            f"got shape {fractions.shape}"
        )
    # Written as a negated range test so that NaN is rejected too.
    if not np.all((fractions >= 0) & (fractions <= 1)):
        raise ValueError(f"informative fractions must be in [0, 1], got {informative!r}")
    if not 0 <= label_noise < 1:
        raise ValueError(f"label_noise must be in [0, 1), got {label_noise!r}")
    return _generate(_rng(seed, stream), n, dim, fractions, float(label_noise), spec)


def single_feature_sets(
    seed: int, n: int = 1000, *, n_features: int = 16, dim: int = 32, shape: str = "tick"
) -> tuple[np.ndarray, np.ndarray]:
    """Generate one test set per feature in which only that feature is informative.

    Set ``k`` uses its own random stream ``"single/{k}"`` of ``seed``; in it feature ``k``
    is informative on every sample and all other features lie on their class boundary.

    Parameters
    ----------
    seed : int
        Data seed (>= 0).
    n : int, default 1000
        Number of samples per set (>= 1).
    n_features : int, default 16
        Number of 2-D features (1..dim // 2), hence of sets.
    dim : int, default 32
        Input dimension.
    shape : str, default "tick"
        Name of the feature shape in :data:`SHAPES`.

    Returns
    -------
    X : np.ndarray
        float32 array of shape (n_features, n, dim).
    y : np.ndarray
        int64 array of shape (n_features, n).

    Raises
    ------
    ValueError
        If an argument is outside its allowed values.
    """
    seed, n, n_features, dim, spec = _check_common(seed, n, n_features, dim, shape)
    sets = [
        _generate(_rng(seed, f"single/{k}"), n, dim, np.eye(n_features)[k], 0.0, spec)
        for k in range(n_features)
    ]
    return np.stack([X for X, _ in sets]), np.stack([y for _, y in sets])

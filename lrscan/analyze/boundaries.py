"""Regime boundaries along the PLR axis: a step fit to the labels of each seed, and of all seeds
with a bootstrap interval over them."""

from __future__ import annotations

import numpy as np
import xarray as xr

# Resamples of the seeds, and the central share of them, behind a boundary's interval.
BOOTSTRAP = 1000
LEVEL = 0.95


def locate_boundary(
    regime: xr.DataArray, lower: set[str], upper: set[str], need: set[str] | None = None
) -> xr.DataArray:
    """The PLR where labels move from ``lower`` to ``upper`` in each seed's scan over ``plr``.

    The boundary is fitted as a step: of the cuts between neighbouring PLRs, take the one
    that leaves the fewest labels on the wrong side (``upper`` labels below it plus
    ``lower`` labels above it), and place the boundary at the geometric mean of the two
    PLRs it separates. A clean scan thus gives the geometric mean of the last PLR on the
    lower side and the first on the upper side, and a lone noisy label on the far side of
    the boundary does not move it. When several cuts tie, the boundary is their centre (the
    mean of their log10 positions), the middle of the ambiguous stretch. NaN where a seed
    never crosses: it lacks labels on either side (or any of ``need``).

    Parameters
    ----------
    regime
        Labels over (plr, seed), ``plr`` ascending.
    lower, upper
        Labels on either side of the boundary; others are ignored.
    need
        Labels of which a seed must have at least one to have this boundary.

    Returns
    -------
    xr.DataArray
        The boundary PLR over ``seed``.
    """
    labels = regime.transpose("plr", "seed").values
    low = np.isin(labels, list(lower)).astype(int)
    up = np.isin(labels, list(upper)).astype(int)
    crosses = (low.sum(0) > 0) & (up.sum(0) > 0)
    if need is not None:
        crosses &= np.isin(labels, list(need)).any(0)
    out = np.full(labels.shape[1], np.nan)
    if crosses.any():  # then there are two PLRs at least, hence a cut
        best, midpoints = _best_cuts(low, up, regime.plr.values)
        centre = (best * midpoints[:, None]).sum(0) / best.sum(0)
        out[crosses] = 10.0 ** centre[crosses]
    return xr.DataArray(out, dims="seed", coords={"seed": regime.seed})


def _best_cuts(low: np.ndarray, up: np.ndarray, plr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which cuts between neighbouring PLRs leave the fewest labels astray (counts over plr, ...),
    and the cuts' log10 positions."""
    # wrong[c] counts the labels on the wrong side of the cut between plr[c] and plr[c + 1]
    wrong = np.cumsum(up, 0)[:-1] + low.sum(0) - np.cumsum(low, 0)[:-1]
    log_plr = np.log10(plr)
    return wrong == wrong.min(0), (log_plr[:-1] + log_plr[1:]) / 2


def boundary_interval(
    regime: xr.DataArray, lower: set[str], upper: set[str], need: set[str] | None = None
) -> tuple[float, float, float]:
    """One boundary fitted to every seed's labels at once, and a bootstrap interval over seeds.

    The fit is the step fit of :func:`locate_boundary` with the labels of all seeds counted
    together (the centre of the best cuts). The interval resamples the seeds with replacement
    (:data:`BOOTSTRAP` times, a fixed generator, so a result is reproducible), refits, and
    takes the central :data:`LEVEL` of the resampled cuts, every tied cut included; it runs
    from the PLR below the lowest of them to the PLR above the highest, so that even a clean
    map — where every resample gives the same cut — reports the grid step the boundary lies
    in. Seeds that disagree widen it, as do PLRs whose labels take no side ("2?" for 2A|2B).

    Parameters
    ----------
    regime
        Labels over (plr, seed), ``plr`` ascending.
    lower, upper, need
        As for :func:`locate_boundary`.

    Returns
    -------
    tuple
        (fit, low, high) in PLR; NaN when there is no cut, or no labels lie on one side (or
        none of ``need`` anywhere).
    """
    labels = regime.transpose("plr", "seed").values
    low = np.isin(labels, list(lower)).astype(int)
    up = np.isin(labels, list(upper)).astype(int)
    lacking = need is not None and not np.isin(labels, list(need)).any()
    if labels.shape[0] < 2 or not low.any() or not up.any() or lacking:
        return np.nan, np.nan, np.nan
    plr = regime.plr.values
    best, midpoints = _best_cuts(low.sum(1), up.sum(1), plr)
    # Each resample weighs every seed by how often it was drawn.
    n_seed = labels.shape[1]
    draws = np.random.default_rng(0).multinomial(n_seed, np.full(n_seed, 1 / n_seed), size=BOOTSTRAP).T
    resampled, _ = _best_cuts(low @ draws, up @ draws, plr)
    cut = np.arange(len(midpoints))[:, None]
    lowest = np.where(resampled, cut, len(midpoints)).min(0)
    highest = np.where(resampled, cut, -1).max(0)
    tail = (1 - LEVEL) / 2
    first = min(int(np.quantile(lowest, tail, method="lower")), int(np.flatnonzero(best)[0]))
    last = max(int(np.quantile(highest, 1 - tail, method="higher")), int(np.flatnonzero(best)[-1]))
    return float(10.0 ** midpoints[best].mean()), float(plr[first]), float(plr[last + 1])

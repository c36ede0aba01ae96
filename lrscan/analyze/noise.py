"""The statistics of the regime tests: standard errors of test accuracies and barriers, and the
z-scores that say whether a difference is within the noise (SPEC §5)."""

from __future__ import annotations

import numpy as np
import xarray as xr
from scipy import special, stats

# z-scores are clipped here: beyond it every tail probability is "overwhelming", and a finite
# value keeps means over seeds finite (a diverged fine-tuning run scores +Z_MAX).
Z_MAX = 10.0
NOISE = ("binomial standard error of each test accuracy on n_test samples, sqrt(p(1-p)/(n+4)) with the "
         "Agresti-Coull p = (k+2)/(n+4); accuracies of different models treated as independent")


def accuracy_se(accuracy, n_test: int):
    """Binomial standard error of an accuracy measured on ``n_test`` samples.

    The Agresti–Coull estimate ``p = (k + 2) / (n + 4)`` (k correct of n) keeps a perfect or
    zero score from having no error at all, which would make any difference to it decisive.

    Parameters
    ----------
    accuracy
        Accuracies in [0, 1] (any array).
    n_test
        Samples of the test set they were measured on.

    Returns
    -------
    array_like
        The standard errors, same shape.
    """
    p = (accuracy * n_test + 2) / (n_test + 4)
    return np.sqrt(p * (1 - p) / (n_test + 4))


def barrier_se(test_error: xr.DataArray, n_test: int) -> xr.DataArray:
    """Standard error, in percent, of the barrier of test-error curves along paths.

    The barrier is e(α*) − [(1 − α*) e(0) + α* e(1)] at the path point α* where the curve
    rises most above the straight line between its ends; each of the three errors carries the
    binomial noise of its test set, taken as independent (points on one path make correlated
    errors, so this is an upper bound: it errs towards "≈ 0 within the noise").

    Parameters
    ----------
    test_error
        Test error in percent over ``alpha`` (first and last points: the ends).
    n_test
        Samples of the test set.

    Returns
    -------
    xr.DataArray
        The standard error, without the ``alpha`` dimension.
    """
    alpha = test_error.alpha
    start, end = test_error.isel(alpha=0, drop=True), test_error.isel(alpha=-1, drop=True)
    excess = test_error - ((1 - alpha) * start + alpha * end)
    peak = excess.fillna(-np.inf).argmax("alpha")
    at = alpha.isel(alpha=peak, drop=True)
    var = lambda error: accuracy_se(1 - error / 100, n_test) ** 2  # noqa: E731
    return 100 * np.sqrt(var(test_error.isel(alpha=peak, drop=True)) + (1 - at) ** 2 * var(start) + at ** 2 * var(end))


def _z_of_p(p) -> np.ndarray:
    """The standard normal score with upper tail ``p`` (the same evidence on one scale), clipped."""
    return np.clip(stats.norm.isf(p), -Z_MAX, Z_MAX)


def flr_z(accuracy: xr.DataArray, n_test: int) -> xr.DataArray:
    """z-score of the test "every FLR reaches the same FT accuracy", per run.

    The accuracies' homogeneity statistic Q = Σ w (a − ā)², w = 1 / SE², ā the weighted mean,
    is χ² with (number of FLRs − 1) degrees of freedom when they differ by test-set noise only;
    its upper tail probability is returned as a normal score, so that one scale serves every
    number of FLRs. NaN entries (FLRs not counted) are left out.

    Parameters
    ----------
    accuracy
        Final FT test accuracies over ``flr``.
    n_test
        Samples of the test set.

    Returns
    -------
    xr.DataArray
        The z-score without ``flr``; NaN where fewer than two FLRs are left.
    """
    w = 1 / accuracy_se(accuracy, n_test) ** 2
    mean = (w * accuracy).sum("flr") / w.sum("flr")
    q = (w * (accuracy - mean) ** 2).sum("flr")
    dof = accuracy.notnull().sum("flr") - 1
    p = xr.apply_ufunc(stats.chi2.sf, q, dof.where(dof >= 1))
    return xr.apply_ufunc(_z_of_p, p)


def swa_z(ft_best: xr.DataArray, swa_best: xr.DataArray, n_test: int) -> xr.DataArray:
    """z-score of the SWA shortfall below the best FT accuracy (negative: SWA is better), per run.

    Parameters
    ----------
    ft_best, swa_best
        The best FT and the best SWA test accuracy of each run.
    n_test
        Samples of the test set.

    Returns
    -------
    xr.DataArray
        The shortfall over the standard error of the difference.
    """
    se = np.sqrt(accuracy_se(ft_best, n_test) ** 2 + accuracy_se(swa_best, n_test) ** 2)
    return ((ft_best - swa_best) / se).clip(-Z_MAX, Z_MAX)


def barrier_z(barrier: xr.DataArray, se: xr.DataArray, points: int) -> xr.DataArray:
    """z-score of a test barrier against "no barrier, only test-set noise", per run.

    A path without a barrier still shows one: the largest of the noise at its ``points``
    interior points, clipped at 0. So the barrier in units of its standard error is compared
    with the largest of ``points`` standard normal values (taken as independent, which widens
    the null and so again errs towards "≈ 0"): P(max > z) = 1 − Φ(z)^points, as a normal score.

    Parameters
    ----------
    barrier, se
        Barrier and its standard error (:func:`barrier_se`), in one unit.
    points
        Interior points of the path (its points less the two ends).

    Returns
    -------
    xr.DataArray
        The z-score.
    """
    log_below = special.log_ndtr(barrier / se)
    p = -np.expm1(max(points, 1) * log_below)
    return xr.apply_ufunc(_z_of_p, p)


def outcome(z: xr.DataArray, testable: xr.DataArray, z_same: float, z_differ: float) -> xr.DataArray:
    """What each z-score says (one of :data:`OUTCOMES`): "pass" (≤ ``z_same``), "fail"
    (≥ ``z_differ``), "ambiguous" between, and "untestable" where ``testable`` is false."""
    out = xr.where(z <= z_same, "pass", xr.where(z >= z_differ, "fail", "ambiguous"))
    return xr.where(testable, out, "untestable").astype(object)

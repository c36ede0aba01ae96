"""The study's notion of the best PLR: how good a pre-training LR is once fine-tuned or averaged.

The study judges a PLR by where fine-tuning *with a lower LR* leads (FLR < PLR), averaged
over those FLRs — in regime 2A every such FLR reaches the same quality — and by SWA over
its pre-training iterates. Training on with an FLR above the PLR is another thing (a jump
to a better minimum, which the study shows separately); it is scored here too, apart.

A PLR is *tied with the best* when the difference of their scores is within the noise: the
same rule, and the same ``z_same``, as the regime tests of :mod:`lrscan.analyze.regimes`.
The noise of a PLR's score is the larger of the binomial one (the standard error of one
test accuracy, over the square root of the seeds: fine-tuning runs of one seed start at one
point, so they count as one measurement) and the seeds' spread (their standard deviation
over the square root of their number).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr

from lrscan.analyze.noise import accuracy_se
from lrscan.analyze.regimes import dataset_facts
from lrscan.analyze.study import Z_SAME
from lrscan.errors import LrscanError

# What a PLR can be judged by: fine-tuning below it, fine-tuning above it, SWA.
KINDS = ("ft", "ft_higher", "swa")
# Largest z-score of a difference within the noise, as the regime tests' default.


@dataclass(frozen=True)
class Best:
    """The best PLR by one kind of score, and the PLRs that cannot be told from it."""

    kind: str  # one of KINDS
    plr: float
    accuracy: float  # the best PLR's score: a test accuracy (fraction), mean over seeds
    se: float  # its noise
    low: float  # lowest and highest PLR tied with the best
    high: float
    tied: tuple[float, ...]  # every PLR tied with the best, ascending

    def describe(self) -> str:
        """One sentence for summaries and ``lrscan info``."""
        what = {"ft": "fine-tuned with a lower LR (mean over FLR < PLR)", "ft_higher": "trained on with a "
                "higher LR (mean over FLR > PLR)", "swa": "averaged (SWA, best K)"}[self.kind]
        span = (f"PLR {self.low:.3g}" if self.low == self.high else f"PLRs {self.low:.3g} to {self.high:.3g}")
        return (f"best PLR {self.plr:.3g} {what}: {100 * self.accuracy:.3g}% ± {100 * self.se:.2g} test accuracy; "
                f"{span} cannot be told from it within the noise")


def _final_acc(tree: xr.DataTree, stage: str) -> xr.DataArray | None:
    """The final test accuracy of a stage's runs, from ``/analysis/metrics`` when stored."""
    if stage not in tree.children:
        return None
    name = {"finetune": "ft_test_acc", "swa": "swa_test_acc"}[stage]
    if "analysis" in tree.children and "metrics" in tree["analysis"].children:
        stored = tree["analysis/metrics"].to_dataset()
        if name in stored:
            return stored[name].load()
    metrics = tree[f"{stage}/metrics"].to_dataset().test_acc
    if "epoch" in metrics.dims:
        metrics = metrics.isel(epoch=-1, drop=True).drop_vars("step", errors="ignore")
    return metrics.load()


def score_noise(per_seed: xr.DataArray, n_test: int) -> tuple[xr.DataArray, xr.DataArray]:
    """Mean over ``seed`` of per-seed scores, and its noise (see the module's docstring).

    Parameters
    ----------
    per_seed
        Scores (test accuracies, fractions) with a ``seed`` dimension; NaN where missing.
    n_test
        Samples of the test set.

    Returns
    -------
    mean, se : xr.DataArray
        Without ``seed``; NaN where a seed is missing (a diverged run is no score).
    """
    n = per_seed.sizes["seed"]
    mean = per_seed.mean("seed", skipna=False)
    binomial = accuracy_se(mean, n_test) / np.sqrt(n)
    spread = per_seed.std("seed", ddof=1, skipna=False) / np.sqrt(n) if n > 1 else xr.zeros_like(mean)
    return mean, np.maximum(binomial, spread)


def plr_scores(tree: xr.DataTree, n_test: int | None = None) -> xr.Dataset:
    """How each PLR of a store does once fine-tuned below it, above it, and averaged.

    Parameters
    ----------
    tree
        An opened store with fine-tuning and/or SWA (its ``/analysis/metrics`` when stored).
    n_test
        Samples of the test set; default that of the store's dataset.

    Returns
    -------
    xr.Dataset
        As :func:`scores`.
    """
    ft, swa = _final_acc(tree, "finetune"), _final_acc(tree, "swa")
    if ft is None and swa is None:
        raise LrscanError("the store has neither fine-tuning nor SWA: no PLR can be judged by them")
    return scores(ft, swa, dataset_facts(tree)[1] if n_test is None else n_test)


def scores(ft: xr.DataArray | None, swa: xr.DataArray | None, n_test: int) -> xr.Dataset:
    """Each PLR's scores from its runs' final test accuracies.

    Parameters
    ----------
    ft
        Final FT test accuracies (plr, flr, seed), or None.
    swa
        Final SWA test accuracies (plr, seed, swa), or None.
    n_test
        Samples of the test set.

    Returns
    -------
    xr.Dataset
        Over ``plr``, for each kind the inputs allow (:data:`KINDS`): ``<kind>`` (mean test
        accuracy over seeds) and ``<kind>_se`` (its noise); ``ft`` and ``ft_higher`` average
        each seed's accuracies over the FLRs below (above) the PLR first, ``swa`` takes each
        seed's best K. NaN where a PLR has no such FLR or a counted run has no score (it
        diverged). ``n_flr_lower`` / ``n_flr_higher`` count the FLRs averaged.
    """
    out = {}
    if ft is not None:
        for kind, side in (("ft", ft.flr < ft.plr), ("ft_higher", ft.flr > ft.plr)):
            counted = side.sum("flr")
            per_seed = ft.where(side).sum("flr", min_count=1) / counted
            per_seed = per_seed.where(~(side & ft.isnull()).any("flr") & (counted > 0))
            out[kind], out[f"{kind}_se"] = score_noise(per_seed, n_test)
            out[f"n_flr_{'lower' if kind == 'ft' else 'higher'}"] = counted
    if swa is not None:
        out["swa"], out["swa_se"] = score_noise(swa.max("swa", skipna=False), n_test)
    return xr.Dataset(out).transpose("plr", ...).assign_attrs(
        n_test=int(n_test), z_same=Z_SAME,
        description="per PLR: mean test accuracy over seeds after fine-tuning below the PLR (ft), above it "
                    "(ft_higher), and of its best SWA solution (swa), with their noise (_se)")


def tied(value: np.ndarray, se: np.ndarray, z_same: float = Z_SAME) -> tuple[int, np.ndarray]:
    """The position of the best of ``value`` (the first of equals), and which values cannot
    be told from it: their difference is at most ``z_same`` standard errors of it (``se``
    the values' own, taken as independent). NaN values are neither."""
    value, se = np.asarray(value, float), np.asarray(se, float)
    top = int(np.nanargmax(value))
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (value[top] - value) / np.sqrt(se[top] ** 2 + se**2)
    return top, np.isfinite(value) & ((z <= z_same) | (np.arange(value.size) == top))


def best(tree_or_scores: xr.DataTree | xr.Dataset, kind: str = "ft", z_same: float = Z_SAME) -> Best | None:
    """The best PLR by one kind of score, and the PLRs tied with it within the noise.

    Parameters
    ----------
    tree_or_scores
        An opened store, or its :func:`plr_scores` (or :func:`scores`).
    kind
        One of :data:`KINDS`: ``"ft"`` (fine-tuning with FLR < PLR, the study's sense),
        ``"ft_higher"`` or ``"swa"``.
    z_same
        A PLR whose score differs from the best's by at most ``z_same`` standard errors of
        the difference is tied with it.

    Returns
    -------
    Best or None
        None when no PLR has that score (no fine-tuning below any PLR, no SWA).
    """
    if kind not in KINDS:
        raise LrscanError(f"unknown kind of score {kind!r}: one of {', '.join(KINDS)}")
    table = tree_or_scores if isinstance(tree_or_scores, xr.Dataset) else plr_scores(tree_or_scores)
    if kind not in table:
        return None
    value, se = table[kind].values, table[f"{kind}_se"].values
    plr = table.plr.values
    if not np.isfinite(value).any():
        return None
    top, tie = tied(value, se, z_same)
    tied_plr = plr[tie]
    return Best(kind, float(plr[top]), float(value[top]), float(se[top]), float(tied_plr.min()),
                float(tied_plr.max()), tuple(float(p) for p in np.sort(tied_plr)))

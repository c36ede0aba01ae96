"""Regimes of constant-LR pre-training (SPEC §5), read from the stored data.

Each (plr, seed) is labelled "1" (convergence), "2A" / "2B" (the two halves of the chaotic
equilibrium) or "3" (divergence) by rules on its stored metrics, with every threshold an
option, and the regime boundaries are located per seed so that their spread over seeds
can be reported instead of drawn by hand.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from lrscan.analyze import analyzer
from lrscan.analyze.metrics import last_window
from lrscan.analyze.solutions import pretrain, require_complete, resolve
from lrscan.data import DATASETS
from lrscan.errors import LrscanError
from lrscan.spec import Spec

# Labels in the order they meet a scan of increasing PLR; "2" is regime 2 left unsplit
# (no fine-tuning to split it by).
LABELS = ("1", "2A", "2", "2B", "3")
# Each boundary parts the labels below it from those above it; a label in neither set
# does not take part ("2" says nothing about where 2A ends).
BOUNDARIES = {
    "1|2": ({"1"}, {"2A", "2", "2B", "3"}),
    "2A|2B": ({"1", "2A"}, {"2B", "3"}),
    "2|3": ({"1", "2A", "2", "2B"}, {"3"}),
}


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
        # wrong[c] counts the labels on the wrong side of the cut between plr[c] and plr[c + 1]
        wrong = np.cumsum(up, 0)[:-1] + low.sum(0) - np.cumsum(low, 0)[:-1]
        best = wrong == wrong.min(0)
        log_plr = np.log10(regime.plr.values)
        midpoints = (log_plr[:-1] + log_plr[1:]) / 2
        centre = (best * midpoints[:, None]).sum(0) / best.sum(0)
        out[crosses] = 10.0 ** centre[crosses]
    return xr.DataArray(out, dims="seed", coords={"seed": regime.seed})


def _mode(regime: xr.DataArray) -> xr.DataArray:
    """The most common label of each PLR over seeds (ties go to the label of smaller PLRs)."""
    counts = np.stack([(regime == label).sum("seed").values for label in LABELS])
    return xr.DataArray(np.array(LABELS, dtype=object)[counts.argmax(0)], dims="plr", coords={"plr": regime.plr})


def _chance(tree: xr.DataTree) -> float:
    spec = Spec.from_dict(tree.attrs["spec"])
    return 1 / DATASETS[spec.dataset].load(spec.data_options, spec.data_seeds[0]).n_classes


def _final(metrics: xr.Dataset, name: str) -> xr.DataArray:
    return metrics[name].isel(epoch=-1, drop=True).drop_vars("step", errors="ignore")


def _ft_barrier(tree: xr.DataTree, barriers: xr.Dataset, runs: xr.DataArray) -> xr.DataArray:
    """Test barrier between the lowest- and highest-FLR fine-tuned solutions, over ``runs``' (plr, seed)."""
    low, high = resolve(tree, "ft_low"), resolve(tree, "ft_high")
    found = [i for i, (a, b) in enumerate(zip(barriers.pair_a.values, barriers.pair_b.values))
             if {str(a), str(b)} == {low, high}]
    if not found:
        raise LrscanError(f"the barriers result has no pair {low}~{high} (FT low ~ FT high), which the 2A test "
                          "reads; compute barriers with the default pairs")
    out = barriers.test_barrier.isel(pair=found[0]).drop_vars(["pair", "pair_a", "pair_b"], errors="ignore")
    try:
        out, _ = xr.align(out.load(), runs, join="exact")
    except ValueError:
        raise LrscanError("the barriers result is for other PLRs or seeds than this store") from None
    return out


@analyzer("regimes", needs=("pretrain",), after=("barriers",))
def regimes(
    tree: xr.DataTree,
    convergence_loss: float = 1e-2,
    chance_margin: float = 0.02,
    flr_spread: float = 0.05,
    swa_gap: float = 0.04,
    barrier_max: float = 1.0,
    window: float = 20.0,
    swa_k: int = 5,
    lower_flr_only: bool = True,
    chance: float | None = None,
    barriers: xr.Dataset | None = None,
) -> xr.Dataset:
    """Regime of every (plr, seed) and the PLRs of the regime boundaries, with their spread.

    Rules, applied in this order to each run (all on stored data, no PLR is hand-set):

    1. **3 (divergence)** when the run diverged (``diverged_epoch`` finite).
    2. **1 (convergence)** when the final pre-training train loss is below
       ``convergence_loss`` (the study's operational 1e-2). A converged run stays in 1 even
       if its test accuracy is poor: the regimes are regimes of the optimisation.
    3. **3 (divergence)** when the pre-training test accuracy, averaged over the logged
       epochs of the last ``window`` epochs (as ``metrics``' ``pt_test_acc_mean``), is at
       most chance + ``chance_margin``, or is not finite.
    4. Otherwise regime 2, split by fine-tuning when the store has it: **2A** when all of
       - the final FT test accuracies over the FLRs spread (max − min) by at most
         ``flr_spread``;
       - with SWA stored: the SWA solution of the K closest to ``swa_k`` falls short of the
         best FT accuracy by at most ``swa_gap``;
       - with a barriers result (``barriers``, or a persisted ``/analysis/barriers``): the
         test barrier between the lowest- and highest-FLR FT solutions is at most
         ``barrier_max``;
       else **2B**. A fine-tuning run that diverged fails the test it enters. Without
       fine-tuning data the label stays **2**.

    Fine-tuning means lowering the LR: with ``lower_flr_only`` only FLRs below the PLR
    count (FT at FLR ≥ PLR is pre-training at another LR, which for a PLR near the
    convergence threshold may itself land in 2B and would hide a 2A run); a PLR with no
    lower FLR stays **2**, and the barrier test is skipped where the highest FLR is not below
    the PLR.

    Defaults for the 2A tests: the spread is a max − min over up to 11 FLRs of accuracies
    whose standard error is about 1% on the synthetic test set (2,000 samples), so 5% for
    ``flr_spread`` and 4% for ``swa_gap`` separate "the same accuracy" from the FLR
    dependence of 2B, which grows to 10% and more; on the default synthetic store these
    defaults give a 2A band just above the convergence threshold, where FT-low ↔ FT-high
    barriers are ≈ 0, as in the study. ``barrier_max`` is in the barriers' unit (percent of
    error, SPEC §5): 2A barriers are ≈ 0, and 1% leaves room for the noise of the test
    error of points measured on a few thousand samples. Setups with larger test sets or
    other accuracy levels may want tighter values: every threshold is an option.

    Boundaries: for "1|2" (the convergence threshold), "2A|2B" and "2|3", each seed's scan
    in increasing PLR is fitted by :func:`locate_boundary`, which places the boundary at the
    geometric mean of the PLRs on either side of the best-fitting step, so noisy,
    non-monotone scans still give one boundary. "2A|2B" needs a seed with 2A or 2B labels.

    Parameters
    ----------
    tree
        An opened, finished store.
    convergence_loss
        Final pre-training train loss below which a run has converged.
    chance_margin
        Accuracy above chance that a run must exceed not to count as diverged.
    flr_spread
        Largest spread of FT accuracies over FLRs in 2A.
    swa_gap
        Largest shortfall of the SWA accuracy below the best FT accuracy in 2A.
    barrier_max
        Largest FT-low ↔ FT-high test barrier in 2A.
    window
        Epochs at the end of pre-training whose test accuracy is averaged.
    swa_k
        SWA window whose solution is compared (the stored K closest to it).
    lower_flr_only
        Count only FLRs below the PLR.
    chance
        Accuracy of guessing; default 1 / number of classes of the store's dataset.
    barriers
        A ``barriers`` result, ``test_barrier(plr, seed, pair)``; default the persisted one.

    Returns
    -------
    xr.Dataset
        ``regime(plr, seed)`` (labels as strings), ``regime_mode(plr)``, the quantities the
        rules read — ``pt_train_loss``, ``pt_test_acc_mean``, and where fine-tuning exists
        ``ft_acc_spread``, ``ft_best_acc``, ``swa_shortfall``, ``ft_barrier`` (plr, seed) —
        and ``boundary_plr(seed, boundary)``, ``boundary_log10_mean``, ``boundary_log10_std``
        (over seeds, ddof 0) and ``boundary_geomean`` (boundary). attrs: ``chance`` and every
        threshold used. Computed eagerly: the inputs are one number per run.
    """
    require_complete(tree)
    if chance is None:
        chance = _chance(tree)
    pt = pretrain(tree)
    pt_train_loss = _final(pt, "train_loss").load()
    pt_test_acc_mean = last_window(pt, window).test_acc.mean("epoch", skipna=False).load()
    diverged = pt.diverged_epoch.notnull().load()
    converged = pt_train_loss < convergence_loss
    at_chance = ~(pt_test_acc_mean > chance + chance_margin)

    out = {"pt_train_loss": pt_train_loss, "pt_test_acc_mean": pt_test_acc_mean}
    attrs = {"chance": chance, "convergence_loss": convergence_loss, "chance_margin": chance_margin,
             "window": window}
    two = xr.full_like(pt_train_loss, "2", dtype=object)
    if "finetune" in tree.children:
        ft = _final(tree["finetune/metrics"].to_dataset(), "test_acc").load()
        counted = ft.flr < ft.plr if lower_flr_only else xr.ones_like(ft.flr * ft.plr, dtype=bool)
        ft = ft.where(counted)
        ft_failed = (counted & ft.isnull()).any("flr")
        ft_best_acc = ft.max("flr")
        ft_acc_spread = (ft_best_acc - ft.min("flr")).where(~ft_failed)
        is_2a = ft_acc_spread <= flr_spread
        out |= {"ft_best_acc": ft_best_acc, "ft_acc_spread": ft_acc_spread}
        attrs |= {"flr_spread": flr_spread, "lower_flr_only": lower_flr_only}
        if "swa" in tree.children:
            swa = tree["swa/metrics"].to_dataset()
            k = int(min(swa.swa.values, key=lambda v: (abs(v - swa_k), v)))
            swa_shortfall = ft_best_acc - swa.test_acc.sel(swa=k, drop=True).load()
            is_2a &= swa_shortfall <= swa_gap
            out["swa_shortfall"] = swa_shortfall
            attrs |= {"swa_gap": swa_gap, "swa_k": k}
        if barriers is None and "analysis" in tree.children and "barriers" in tree["analysis"].children:
            barriers = tree["analysis/barriers"].to_dataset()
        if barriers is not None:
            ft_barrier = _ft_barrier(tree, barriers, pt_train_loss)
            applies = (ft.flr.max() < ft.plr) if lower_flr_only else xr.ones_like(ft.plr, dtype=bool)
            is_2a &= (ft_barrier <= barrier_max) | ~applies
            out["ft_barrier"] = ft_barrier
            attrs["barrier_max"] = barrier_max
        two = xr.where(counted.any("flr"), xr.where(is_2a, "2A", "2B"), two)

    regime = xr.where(diverged, "3", xr.where(converged, "1", xr.where(at_chance, "3", two)))
    regime = regime.astype(object).transpose("plr", "seed")
    boundary = xr.concat(
        [locate_boundary(regime, lower, upper, {"2A", "2B"} if name == "2A|2B" else None)
         for name, (lower, upper) in BOUNDARIES.items()],
        dim=xr.DataArray(np.array(list(BOUNDARIES), dtype=object), dims="boundary"),
    ).transpose("seed", "boundary")
    log_boundary = np.log10(boundary)
    out |= {
        "regime": regime,
        "regime_mode": _mode(regime),
        "boundary_plr": boundary,
        "boundary_log10_mean": log_boundary.mean("seed"),
        "boundary_log10_std": log_boundary.std("seed"),
        "boundary_geomean": 10 ** log_boundary.mean("seed"),
    }
    attrs["description"] = ("regime of each (plr, seed): 1 convergence, 2A/2B chaotic equilibrium, "
                            "3 divergence; boundary PLRs per seed and their spread")
    return xr.Dataset(out, attrs=attrs)

"""A paragraph on a store's results for the figures' index page: the study's best PLR, threshold,
regimes and where 2A lies, each with its uncertainty."""

from __future__ import annotations

import numpy as np
import xarray as xr

from lrscan.plot.numbers import fmt
from lrscan.plot.registry import load_analysis, stored_analyses
from lrscan.plot.styles import regime_spans

# What each regime label means; the label itself is written beside it, so the name does not repeat it.
REGIME_NAMES = {"1": "convergence", "2A": "chaotic equilibrium", "2": "chaotic equilibrium",
                "2?": "chaotic equilibrium, A or B undecided within the noise", "2B": "chaotic equilibrium",
                "3": "divergence"}
# How the best PLR is judged, in the order the summary tries them (lrscan.analyze.best's kinds).
BEST_BY = {"ft": "fine-tuning with a lower LR, the mean over FLR < PLR", "swa": "SWA (best K)"}


def summary(tree: xr.DataTree) -> str:
    """One paragraph on the results: best FT and SWA accuracy, best PLR range, threshold, regimes.

    The *best PLR range* is the PLRs tied with the best PLR within the noise
    (:func:`lrscan.analyze.best.best`), judged by fine-tuning below the PLR, or by SWA in a
    store without such fine-tuning.
    """
    sweep = tree.attrs["spec"]["sweep"]
    plr = np.asarray(sweep["plr"])
    n_seeds = len(sweep["seeds"]) * len(tree.attrs["spec"]["data"].get("seeds", [0]))
    parts = [f"{sweep['model']} on {sweep['dataset']}: {len(plr)} PLRs from {fmt(plr.min())} to {fmt(plr.max())}, "
             f"{len(sweep['flr'])} FLRs, {n_seeds} seeds."]
    if "metrics" in stored_analyses(tree):
        parts += _accuracy_summary(tree)
    if "threshold" in stored_analyses(tree):
        parts.append(_threshold_summary(tree))
    parts.append(_regime_summary(tree))
    return " ".join(parts)


def _threshold_summary(tree: xr.DataTree) -> str:
    result = load_analysis(tree, "threshold", ["threshold", "log10_halfwidth", "bracket_low", "bracket_high"])
    attrs = tree["analysis/threshold"].attrs
    trained = f"{tree['analysis/threshold'].sizes['plr']} PLRs trained ({attrs.get('model_steps', 0):,} model-steps)"
    if not np.isfinite(result.threshold):
        where = "below" if attrs.get("status") == "below" else "above"
        return f"Threshold search: {trained}; the threshold lies {where} the grid."
    return (f"Threshold search: convergence threshold at PLR {fmt(float(result.threshold))} (log10 ± "
            f"{fmt(float(result.log10_halfwidth))}; bracket {fmt(float(result.bracket_low))} to "
            f"{fmt(float(result.bracket_high))}), {trained}.")


def _accuracy_summary(tree: xr.DataTree) -> list[str]:
    """The study's best: fine-tuning below the PLR (mean over those FLRs), SWA, and apart,
    training on above it; each with its noise and the PLRs tied with it."""
    from lrscan.analyze.best import best, plr_scores
    from lrscan.errors import LrscanError

    try:
        scores = plr_scores(tree)
    except LrscanError:  # neither fine-tuning nor SWA: nothing judges a PLR
        return []
    parts = []
    tops = {kind: best(scores, kind) for kind in ("ft", "swa", "ft_higher")}
    if tops["ft"] is not None:
        parts.append(f"Best fine-tuned test accuracy {_score(tops['ft'])} (the mean over the FLRs below each PLR, "
                     "as the study judges fine-tuning).")
    if tops["swa"] is not None:
        parts.append(f"Best SWA test accuracy {_score(tops['swa'])} (each seed's best K).")
    if tops["ft_higher"] is not None:
        parts.append(f"Training on with a higher LR (FLR > PLR, a jump to another minimum, shown apart): best "
                     f"{_score(tops['ft_higher'])}.")
    for kind, what in BEST_BY.items():
        top = tops[kind]
        if top is not None:
            parts.append(f"Best PLR range (the PLRs tied with the best, {fmt(top.plr)}, within the noise, "
                         f"judged by {what}): {fmt(top.low)} to {fmt(top.high)}.")
            break
    return parts


def _score(top) -> str:
    return f"{fmt(100 * top.accuracy)}% ± {fmt(100 * top.se)} at PLR {fmt(top.plr)}"


def _finding(tree: xr.DataTree) -> str:
    """Where 2A lies, in the study's words, with the share of seeds and the boundary's interval."""
    regimes = tree["analysis/regimes"].to_dataset()
    share = regimes.regime_share.sel(label="2A").load()
    found = share.plr.values[share.values > 0]
    if not found.size:
        return "No PLR is labelled 2A by any seed: the data do not show the band."
    where = ", ".join(f"{fmt(p)} ({int(round(float(share.sel(plr=p)) * regimes.sizes['seed']))} of "
                      f"{regimes.sizes['seed']} seeds)" for p in found)
    text = (f"Subregime 2A — just above the convergence threshold, where fine-tuning with every lower FLR and "
            f"SWA reach the same, best accuracy and the solutions are linearly connected — at PLR {where}")
    bound = regimes[["boundary_fit", "boundary_low", "boundary_high"]].sel(boundary="2A|2B").load()
    if np.isfinite(bound.boundary_fit):
        text += (f"; the 2A|2B boundary at PLR {fmt(float(bound.boundary_fit))} (95% interval "
                 f"{fmt(float(bound.boundary_low))} to {fmt(float(bound.boundary_high))})")
    return text + "."


def _regime_summary(tree: xr.DataTree) -> str:
    if "regimes" not in stored_analyses(tree):
        return "No regimes analysis yet."
    regimes = tree["analysis/regimes"].to_dataset()[["boundary_log10_mean", "boundary_log10_std"]].load()
    threshold = regimes.sel(boundary="1|2")
    if np.isfinite(threshold.boundary_log10_mean):
        text = (f"Convergence threshold (1|2 boundary) at PLR {fmt(10 ** float(threshold.boundary_log10_mean))} "
                f"(log10 {float(threshold.boundary_log10_mean):.2f} ± {float(threshold.boundary_log10_std):.2f} "
                f"over seeds).")
    else:
        text = "No seed crosses the convergence threshold (1|2 boundary) within the PLR grid."
    spans = [f"{label} ({REGIME_NAMES.get(label, label)}) {_span_text(tree, start, stop)}"
             for label, start, stop in regime_spans(tree)]
    return text + " Regimes by PLR: " + "; ".join(spans) + ". " + _finding(tree)


def _span_text(tree: xr.DataTree, start: float, stop: float) -> str:
    plr = np.asarray(tree.attrs["spec"]["sweep"]["plr"])
    inside = plr[(plr >= start) & (plr < stop)]
    return f"at {fmt(inside[0])}" if inside.size == 1 else f"from {fmt(inside.min())} to {fmt(inside.max())}"


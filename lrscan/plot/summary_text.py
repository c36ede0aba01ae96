"""A paragraph on a store's results for the figures' index page: accuracies, best PLR range, threshold, regimes."""

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
    stored = tree["analysis/metrics"].data_vars
    wanted = [v for v in ("pt_test_acc_mean", "ft_test_acc", "swa_test_acc") if v in stored]
    metrics = load_analysis(tree, "metrics", wanted)
    parts = []
    if "ft_test_acc" in metrics:
        ft = metrics.ft_test_acc.mean("seed")
        best = ft.where(ft == ft.max(), drop=True)
        parts.append(f"Best fine-tuned test accuracy {fmt(100 * float(ft.max()))}% "
                     f"(PLR {fmt(float(best.plr[0]))}, FLR {fmt(float(best.flr[0]))}).")
    if "swa_test_acc" in metrics:
        swa = metrics.swa_test_acc.mean("seed")
        best = swa.where(swa == swa.max(), drop=True)
        parts.append(f"Best SWA test accuracy {fmt(100 * float(swa.max()))}% "
                     f"(PLR {fmt(float(best.plr[0]))}, K = {int(best.swa[0])}).")
    parts += _best_summary(tree)
    return parts


def _best_summary(tree: xr.DataTree) -> list[str]:
    from lrscan.analyze.best import best, plr_scores
    from lrscan.errors import LrscanError

    try:
        scores = plr_scores(tree)
    except LrscanError:  # neither fine-tuning nor SWA: nothing judges a PLR
        return []
    for kind, what in BEST_BY.items():
        top = best(scores, kind)
        if top is not None:
            return [f"Best PLR range (tied with the best within the noise, judged by {what}): "
                    f"{fmt(top.low)} to {fmt(top.high)}; the best, PLR {fmt(top.plr)}, at {fmt(100 * top.accuracy)}% "
                    f"± {fmt(100 * top.se)}."]
    return []


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
    return text + " Regimes by PLR: " + "; ".join(spans) + "."


def _span_text(tree: xr.DataTree, start: float, stop: float) -> str:
    plr = np.asarray(tree.attrs["spec"]["sweep"]["plr"])
    inside = plr[(plr >= start) & (plr < stop)]
    return f"at {fmt(inside[0])}" if inside.size == 1 else f"from {fmt(inside.min())} to {fmt(inside.max())}"


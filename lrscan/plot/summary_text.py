"""A paragraph on a store's results for the figures' index page: accuracies, best PLR range, threshold, regimes."""

from __future__ import annotations

import numpy as np
import xarray as xr

from lrscan.plot.registry import load_analysis, stored_analyses
from lrscan.plot.styles import regime_spans

# The "best PLR range": PLRs whose best fine-tuned accuracy is within this many points of the best.
BEST_MARGIN = 1.0
REGIME_NAMES = {"1": "convergence", "2A": "chaotic equilibrium, 2A", "2": "chaotic equilibrium",
                "2?": "chaotic equilibrium, 2A or 2B undecided within the noise", "2B": "chaotic equilibrium, 2B",
                "3": "divergence"}


def summary(tree: xr.DataTree) -> str:
    """One paragraph on the results: best FT and SWA accuracy, best PLR range, threshold, regimes.

    The *best PLR range* is the PLRs whose best fine-tuned test accuracy (over FLRs, mean over
    seeds) is within ``BEST_MARGIN`` points of the best (the PT accuracy without fine-tuning).
    """
    sweep = tree.attrs["spec"]["sweep"]
    plr = np.asarray(sweep["plr"])
    n_seeds = len(sweep["seeds"]) * len(tree.attrs["spec"]["data"].get("seeds", [0]))
    parts = [f"{sweep['model']} on {sweep['dataset']}: {len(plr)} PLRs from {plr.min():.3g} to {plr.max():.3g}, "
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
    return (f"Threshold search: convergence threshold at PLR {float(result.threshold):.3g} (log10 ± "
            f"{float(result.log10_halfwidth):.2g}; bracket {float(result.bracket_low):.3g} to "
            f"{float(result.bracket_high):.3g}), {trained}.")


def _accuracy_summary(tree: xr.DataTree) -> list[str]:
    stored = tree["analysis/metrics"].data_vars
    wanted = [v for v in ("pt_test_acc_mean", "ft_test_acc", "swa_test_acc") if v in stored]
    metrics = load_analysis(tree, "metrics", wanted)
    parts = []
    if "ft_test_acc" in metrics:
        ft = metrics.ft_test_acc.mean("seed")
        best = ft.where(ft == ft.max(), drop=True)
        parts.append(f"Best fine-tuned test accuracy {100 * float(ft.max()):.1f}% "
                     f"(PLR {float(best.plr[0]):.3g}, FLR {float(best.flr[0]):.3g}).")
    if "swa_test_acc" in metrics:
        swa = metrics.swa_test_acc.mean("seed")
        best = swa.where(swa == swa.max(), drop=True)
        parts.append(f"Best SWA test accuracy {100 * float(swa.max()):.1f}% "
                     f"(PLR {float(best.plr[0]):.3g}, K = {int(best.swa[0])}).")
    kind = "fine-tuned" if "ft_test_acc" in metrics else "PT"
    per_plr = metrics.ft_test_acc.mean("seed").max("flr") if "ft_test_acc" in metrics else \
        metrics.pt_test_acc_mean.mean("seed")
    near = per_plr.plr.values[(per_plr >= per_plr.max() - BEST_MARGIN / 100).values]
    if near.size:
        parts.append(f"Best PLR range (within {BEST_MARGIN:g} point of the best {kind} accuracy): "
                     f"{near.min():.3g} to {near.max():.3g}.")
    return parts


def _regime_summary(tree: xr.DataTree) -> str:
    if "regimes" not in stored_analyses(tree):
        return "No regimes analysis yet."
    regimes = tree["analysis/regimes"].to_dataset()[["boundary_log10_mean", "boundary_log10_std"]].load()
    threshold = regimes.sel(boundary="1|2")
    if np.isfinite(threshold.boundary_log10_mean):
        text = (f"Convergence threshold (1|2 boundary) at PLR {10 ** float(threshold.boundary_log10_mean):.3g} "
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
    return f"at {inside[0]:.3g}" if inside.size == 1 else f"from {inside.min():.3g} to {inside.max():.3g}"


"""Figures of the adaptive searches: the convergence threshold (`lrscan threshold`) and the scan (`lrscan scan`)."""

from __future__ import annotations

import math

import holoviews as hv
import numpy as np
import xarray as xr

from lrscan.plot.numbers import fmt
from lrscan.plot.registry import figure, load_analysis
from lrscan.plot.styles import (
    PLR, REGIME_COLORS, SPREAD, TEST_ACC, curve, filled, framed, layout, limits, percent, plr_edges, spans_of, style,
    vs_plr,
)


@figure("threshold", needs=("threshold",), title="Epochs to convergence near the threshold",
        caption="Epochs pre-training from scratch needs to bring the train loss below 1e-2 (the study's convergence), "
                "against PLR, for the grid points the threshold search trained (`lrscan threshold`): mean over seeds "
                "± std (band) where every seed converged, each seed a dot; a triangle at the budget marks a seed that "
                "did not converge within it. Shaded: the threshold's bracket (largest converging PLR, smallest "
                "non-converging one above it); dashed: the threshold, the bracket's geometric mean.")
def threshold(tree: xr.DataTree) -> hv.Overlay:
    """Epochs to reach train loss 1e-2 against PLR (log axes) near the threshold, its bracket shaded.

    Reads ``epochs_to_converge(plr, seed)``, ``bracket_low``, ``bracket_high`` and ``threshold``
    of the ``threshold`` analysis (:mod:`lrscan.threshold`).

    Returns
    -------
    hv.Overlay
        A Curve and Spread of the seed mean of ``epochs_to_converge`` over ``plr``, a Scatter of
        the seeds, a Scatter of the seeds that did not converge (at the budget), the bracket
        (VSpan) and the threshold (VLine).
    """
    result = load_analysis(tree, "threshold", ["epochs_to_converge", "bracket_low", "bracket_high", "threshold"])
    loss = tree["analysis/threshold"].attrs.get("loss", 1e-2)
    budget = float(tree.attrs["spec"]["sweep"]["pretrain_epochs"])
    epochs = result.epochs_to_converge.transpose("plr", "seed")
    plr = epochs.plr.values
    every = epochs.notnull().all("seed").values
    mean, std = epochs.mean("seed").values, epochs.std("seed").fillna(0).values
    dim = hv.Dimension("epochs_to_converge", label=f"epochs to train loss < {fmt(loss)}", unit="epochs")
    shown = np.where(every, mean, np.nan)  # a mean only where every seed converged
    band = filled(hv.Spread((plr[every], mean[every], std[every]), PLR, [dim, SPREAD]), "#4C72B0", 0.25,
                  {"line_alpha": 0}, {"linewidth": 0})
    runs = np.repeat(plr, epochs.sizes["seed"])
    values = epochs.values.ravel()
    seeds = style(hv.Scatter((runs[np.isfinite(values)], values[np.isfinite(values)]), PLR, dim, label="seeds"),
                  {"color": "#222222", "alpha": 0.5}, {"size": 5}, {"s": 12})
    never = runs[~np.isfinite(values)]
    missed = style(hv.Scatter((never, np.full(never.size, budget)), PLR, dim,
                              label=f"not converged in {fmt(budget)} epochs"),
                   {"color": "#C44E52"}, {"size": 8, "marker": "triangle"}, {"s": 30, "marker": "^"})
    marks = []
    lo, hi = float(result.bracket_low), float(result.bracket_high)
    if np.isfinite(lo) and np.isfinite(hi):
        marks.append(style(hv.VSpan(lo, hi), {"alpha": 0.15}, {"color": "#55A868", "line_alpha": 0},
                           {"facecolor": "#55A868", "edgecolor": "none"}))
        marks.append(style(hv.VLine(float(result.threshold)), {"color": "#555555"},
                           {"line_dash": "dashed", "line_width": 1.5}, {"linestyle": "--", "linewidth": 1.2}))
    ylim = limits(np.append(values, budget), log=True)
    edges = plr_edges(np.asarray(tree.attrs["spec"]["sweep"]["plr"]))
    title = (f"Threshold {fmt(float(result.threshold))} (log10 ± {fmt((math.log10(hi) - math.log10(lo)) / 2)})"
             if np.isfinite(lo * hi) else "The grid does not bracket the threshold")
    return framed(hv.Overlay([*marks, band, seeds, missed, curve(plr, shown, PLR, dim, "mean ± std", "#4C72B0")]),
                  title=title, logx=True, logy=True, xlim=(edges[0], edges[-1]), ylim=ylim,
                  xlabel=PLR.pprint_label, ylabel=dim.pprint_label)



SCAN_ROUND = hv.Dimension("round", label="round that added the PLR")
SCAN_LOG_PLR = hv.Dimension("log10_plr_estimate", label="estimate (log10 PLR)")
SCAN_COLORS = {"1|2": "#4C72B0", "2A|2B": "#DD8452", "recommended": "#2E8B57"}


@figure("scan", needs=("scan",), title="Scan: fine-tuned accuracy vs PLR, round by round",
        caption="Left: the fine-tuned test accuracy of every PLR `lrscan scan` trained (the study's score: the "
                "mean over the scan's FLRs below the PLR, and over seeds), each dot coloured by the round that "
                "added it, and the PT accuracy (grey, "
                "dashed); shading: each PLR's most common regime; grey bands: the brackets of the convergence "
                "threshold (1|2) and of the 2A|2B boundary, with their estimates dashed; green: the recommended PLR. "
                "Right: each estimate after each round, with its uncertainty (the bracket's half-width).")
def scan(tree: xr.DataTree) -> hv.Layout:
    """The scan's trained PLRs by round, its brackets and estimates; and the estimates' history.

    Reads ``score``, ``round``, ``pt_test_acc_mean`` and ``regime_mode`` (plr), the estimates and
    brackets (quantity) and their history (after_round, quantity) of ``/analysis/scan``
    (:mod:`lrscan.scan`).

    Returns
    -------
    hv.Layout
        Accuracy (%) over ``plr`` with a Scatter coloured by ``round``; estimates over rounds
        with ErrorBars.
    """
    result = load_analysis(tree, "scan", ["score", "round", "pt_test_acc_mean", "regime_mode", "estimate_log10",
                                      "bracket_low_log10", "bracket_high_log10", "history_log10",
                                      "history_uncertainty_log10"])
    plr, score = result.plr.values, percent(result.score)
    pt = percent(result.pt_test_acc_mean.mean("seed"))
    marks = []
    for label, start, stop in spans_of(result):
        color = REGIME_COLORS.get(label, "gray")
        marks.append(style(hv.VSpan(start, stop), {"alpha": 0.13}, {"color": color, "line_alpha": 0},
                           {"facecolor": color, "edgecolor": "none"}))
    for q in result.quantity.values:
        value, lo, hi = (float(result[v].sel(quantity=q)) for v in ("estimate_log10", "bracket_low_log10",
                                                                    "bracket_high_log10"))
        if not np.isfinite(value):
            continue
        if q != "recommended":
            marks.append(style(hv.VSpan(10**lo, 10**hi), {"alpha": 0.25}, {"color": "#888888", "line_alpha": 0},
                               {"facecolor": "#888888", "edgecolor": "none"}))
        marks.append(style(hv.VLine(10**value), {"color": SCAN_COLORS[str(q)]},
                           {"line_dash": "solid" if q == "recommended" else "dashed", "line_width": 2},
                           {"linestyle": "-" if q == "recommended" else "--", "linewidth": 1.8}))
    line = style(hv.Curve((plr, score), PLR, TEST_ACC, label="FT, mean over FLR < PLR"), {"color": "#555555"},
                 {"line_width": 1.5}, {"linewidth": 1.2})
    reference = curve(plr, pt, PLR, TEST_ACC, "PT", "#888888", dashed=True)
    rounds = style(hv.Scatter((plr, score, result["round"].values), PLR, [TEST_ACC, SCAN_ROUND], label="by round"),
                   {"color": SCAN_ROUND.name, "cmap": "viridis", "colorbar": True}, {"size": 9}, {"s": 40})
    accuracy = vs_plr(tree, [*marks, reference, line, rounds], np.concatenate([score, pt]),
                      title="Fine-tuned accuracy of the PLRs trained", ylabel=TEST_ACC)
    after = result.after_round.values
    lines = []
    for k, q in enumerate(result.quantity.values):
        y = result.history_log10.sel(quantity=q).values
        err = result.history_uncertainty_log10.sel(quantity=q).values
        if not np.isfinite(y).any():  # never found: nothing to draw
            continue
        x = after + 0.08 * (k - 1)  # side by side, so that equal estimates stay apart
        lines += [curve(x, y, SCAN_ROUND, SCAN_LOG_PLR, str(q), SCAN_COLORS[str(q)]),
                  style(hv.ErrorBars((x, y, err), SCAN_ROUND, [SCAN_LOG_PLR, "uncertainty"]), {},
                        {"color": SCAN_COLORS[str(q)]}, {"edgecolor": SCAN_COLORS[str(q)]})]
    history = framed(hv.Overlay(lines), title="Estimates after each round", xlabel="round",
                     ylabel=SCAN_LOG_PLR.pprint_label, xlim=(-0.5, after.size - 0.5))
    return layout([accuracy, history], "Scan: fine-tuned accuracy vs PLR, round by round")


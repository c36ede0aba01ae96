"""Figures of accuracy: PT, FT per FLR and SWA per K against PLR, training curves, two-stage pre-training."""

from __future__ import annotations

from typing import Callable

import holoviews as hv
import numpy as np
import xarray as xr

from lrscan.analyze.solutions import pretrain
from lrscan.errors import LrscanError
from lrscan.plot.numbers import fmt
from lrscan.plot.registry import figure, load_analysis
from lrscan.plot.styles import (
    EPOCH, FLR, PLR, SE, SHADING, SPREAD, SWA_K, TEST_ACC, TRAIN_LOSS, colored_lines, colors, curve, filled, framed,
    layout, limits, percent, style, vs_plr,
)


@figure("pt_accuracy", needs=("metrics",), title="PT test accuracy vs PLR",
        caption="Test accuracy of pre-training with a constant PLR, averaged over the logged epochs of the last "
                "window (20 epochs by default) of pre-training and over seeds; the band is ± one standard "
                "deviation over those epochs and seeds, the dots are the seeds' own means. " + SHADING)
def pt_accuracy(tree: xr.DataTree) -> hv.Overlay:
    """PT test accuracy against PLR: mean ± std over the last pre-training epochs and seeds.

    Parameters
    ----------
    tree
        An opened store with the ``metrics`` analysis.

    Returns
    -------
    hv.Overlay
        Curve of ``test_acc`` (%) over ``plr``, a Spread of ± std, a Scatter per seed, regime marks.
    """
    m = load_analysis(tree, "metrics", ["pt_test_acc_mean", "pt_test_acc_std"])
    plr = m.plr.values
    mean = m.pt_test_acc_mean.mean("seed")
    # The std over every (seed, epoch) of the window: within-seed variance plus that of the seed means.
    std = np.sqrt((m.pt_test_acc_std**2 + (m.pt_test_acc_mean - mean) ** 2).mean("seed"))
    acc, spread = percent(mean), percent(std)
    band = filled(hv.Spread((plr, acc, spread), PLR, [TEST_ACC, SPREAD]), "#4C72B0", 0.25, {"line_alpha": 0},
                  {"linewidth": 0})
    seeds = style(hv.Scatter((np.repeat(plr, m.sizes["seed"]), percent(m.pt_test_acc_mean).ravel()),
                             PLR, TEST_ACC, label="seeds"), {"color": "#222222", "alpha": 0.5}, {"size": 4}, {"s": 9})
    mean_curve = curve(plr, acc, PLR, TEST_ACC, "mean ± std", "#4C72B0")
    return vs_plr(tree, [band, seeds, mean_curve], np.concatenate([acc - spread, acc + spread]),
                  title="PT test accuracy vs PLR", ylabel=TEST_ACC)


def _per_value(tree: xr.DataTree, acc: xr.DataArray, dim: hv.Dimension, name: Callable[[float], str],
               title: str, extra: list | None = None, values=(), dotted: bool = False) -> hv.Overlay:
    """Seed-mean accuracy against PLR, one curve per value of ``dim``, with the PT accuracy for reference.

    ``extra`` elements go on top (their y ``values`` count for the range); each point's hover
    names its value of ``dim``; ``dotted`` draws the per-value lines dotted.
    """
    pt = percent(load_analysis(tree, "metrics", ["pt_test_acc_mean"]).pt_test_acc_mean.mean("seed"))
    mean = acc.mean("seed").transpose(dim.name, "plr")
    plr = mean.plr.values
    curves = [curve(plr, percent(row), PLR, TEST_ACC, name(value), color, hover={dim: float(value)}, dotted=dotted)
              for value, row, color in zip(mean[dim.name].values, mean.values, colors(mean.sizes[dim.name]))]
    reference = curve(plr, pt, PLR, TEST_ACC, "PT", "#888888", dashed=True)
    return vs_plr(tree, [reference, *curves, *(extra or [])], np.concatenate([percent(mean).ravel(), pt, values]),
                  title=title, ylabel=TEST_ACC)


@figure("ft_accuracy", needs=("metrics",), stages=("finetune",), title="FT test accuracy per FLR vs PLR",
        caption="Final test accuracy after fine-tuning each pre-trained model with every FLR (mean over seeds; "
                "colour: the FLR, named in the legend), next to the PT accuracy (grey, dashed). Each FLR's line is "
                "solid where it fine-tunes with a lower LR (FLR < PLR, what the study calls fine-tuning) and dotted "
                "where it trains on with a higher one (FLR > PLR), which the study judges apart. Black: each PLR's "
                "score, the mean over its FLRs below it (solid) and above it (dashed); the star marks the best PLR "
                "by the former and the bar the PLRs tied with it within the noise. " + SHADING)
def ft_accuracy(tree: xr.DataTree) -> hv.Overlay:
    """FT test accuracy (%) against PLR, one curve per FLR (solid below the PLR, dotted above), mean over seeds.

    Returns
    -------
    hv.Overlay
        A Curve of ``test_acc`` (%) over ``plr`` per FLR (labelled ``FLR <flr>``, every PLR), the
        part where FLR < PLR drawn solid over it, the PT reference, and the scores of
        :func:`lrscan.analyze.best.plr_scores` with the best PLR of :func:`~lrscan.analyze.best.best`.
    """
    from lrscan.analyze.best import best, plr_scores

    if "finetune" not in tree.children:
        raise LrscanError("the store has no fine-tuning data (finetune_epochs = 0)")
    acc = load_analysis(tree, "metrics", ["ft_test_acc"]).ft_test_acc
    mean = acc.mean("seed").transpose("flr", "plr")
    plr = mean.plr.values
    lower = []  # the study's fine-tuning, solid over the dotted whole line
    for value, row, color in zip(mean.flr.values, percent(mean), colors(mean.sizes["flr"])):
        below = plr > value
        lower.append(style(hv.Curve((plr[below], row[below]), PLR, TEST_ACC), {"color": color},
                           {"line_width": 2.5, "tools": []}, {"linewidth": 2.2}))
    extra, values = list(lower), []
    scores = plr_scores(tree)
    for kind, name, dashed in (("ft", "mean over FLR < PLR", False), ("ft_higher", "mean over FLR > PLR", True)):
        if kind in scores and np.isfinite(scores[kind]).any():
            extra.append(curve(plr, percent(scores[kind]), PLR, TEST_ACC, name, "#000000", dashed=dashed,
                               hover={"score": kind}))
            values.append(percent(scores[kind]))
    top = best(scores, "ft")
    if top is not None:
        tie = style(hv.Segments([(top.low, 100 * top.accuracy, top.high, 100 * top.accuracy)],
                                [PLR, TEST_ACC, "plr_end", "test_acc_end"]), {"color": "#000000"},
                    {"line_width": 3, "tools": []}, {"linewidth": 3})
        star = style(hv.Scatter([(top.plr, 100 * top.accuracy, 100 * top.se)], PLR, [TEST_ACC, SE],
                                label=f"best PLR {fmt(top.plr)} (bar: tied)"),
                     {"color": "#000000"}, {"size": 16, "marker": "star"}, {"s": 160, "marker": "*"})
        extra += [tie, star]
    values = np.concatenate([v.ravel() for v in values]) if values else []
    return _per_value(tree, acc, FLR, lambda flr: f"FLR {fmt(flr)}", "FT test accuracy per FLR vs PLR",
                      extra, values, dotted=True)


@figure("swa_accuracy", needs=("metrics",), stages=("swa",), title="SWA test accuracy per K vs PLR",
        caption="Test accuracy of the average of the last K pre-training checkpoints (mean over seeds), next to "
                "the PT accuracy (grey, dashed). " + SHADING)
def swa_accuracy(tree: xr.DataTree) -> hv.Overlay:
    """SWA test accuracy (%) against PLR, one curve per window size K, mean over seeds."""
    if "swa" not in tree.children:
        raise LrscanError("the store has no SWA solutions (swa is empty)")
    acc = load_analysis(tree, "metrics", ["swa_test_acc"]).swa_test_acc
    return _per_value(tree, acc, SWA_K, lambda k: f"K = {fmt(k)}", "SWA test accuracy per K vs PLR")



@figure("training_curves", needs=(), title="Training curves",
        caption="Train loss (log axis) and test accuracy of pre-training with each PLR (solid) and of fine-tuning "
                "from it with the lowest FLR (dashed), mean over seeds, against epochs since the start of "
                "pre-training; colour: log10 of the PLR.")
def training_curves(tree: xr.DataTree, flr: float | None = None) -> hv.Layout:
    """Train loss and test accuracy against epoch, coloured by PLR: PT solid, FT dashed.

    Parameters
    ----------
    tree
        An opened store.
    flr
        The FLR of the fine-tuning curves (default: the lowest).

    Returns
    -------
    hv.Layout
        Two panels: ``train_loss`` (log axis) and ``test_acc`` (%) over ``epoch``.
    """
    stages = [(tree["pretrain/metrics"].to_dataset(), False)]
    if "finetune" in tree.children:
        ft = tree["finetune/metrics"].to_dataset()
        stages.append((ft.sel(flr=float(ft.flr.min()) if flr is None else flr, method="nearest"), True))
    means = [(stage[["train_loss", "test_acc"]].mean("seed").load(), dashed) for stage, dashed in stages]
    log_plr = hv.Dimension("log10_plr", label="log10 PLR")
    panels = []
    for name, dim, log in (("train_loss", TRAIN_LOSS, True), ("test_acc", TEST_ACC, False)):
        lines = []
        for mean, dashed in means:
            y = mean[name].transpose("plr", "epoch").values
            y = np.maximum(y, 1e-8) if log else percent(y)  # a loss of exactly 0 has no place on a log axis
            lines.append(colored_lines(mean.epoch.values, y, np.log10(mean.plr.values), [EPOCH, dim], log_plr,
                                       dashed=dashed, colorbar=not dashed))
        panels.append(framed(hv.Overlay(lines), title=dim.label[0].upper() + dim.label[1:], logy=log,
                             ylabel=dim.pprint_label))
    suffix = f" (FT with FLR {fmt(float(stages[1][0].flr))} dashed)" if len(stages) > 1 else ""
    return layout(panels, "Training curves" + suffix)



def _two_stage_switch(tree: xr.DataTree) -> str | None:
    if not tree.attrs["spec"]["sweep"].get("pretrain_switch"):
        return "needs a two-stage pre-training (pretrain_switch), which the store's sweep does not have"
    return None


def two_stage_accuracy(tree: xr.DataTree) -> xr.Dataset:
    """Test accuracy of a two-stage sweep at the end of each stage: what the ``two_stage`` figure shows.

    Returns
    -------
    xr.Dataset
        ``test_acc(plr, seed, stage)`` at the end of stage 1 (``stage 1``: the metric row at
        the switch), at the end of stage 2 (``stage 2``: the end of pre-training) and, with
        fine-tuning, after it (``after FT``) with the FLR whose seed-mean final accuracy is
        best for the PLR (``best_flr(plr)``); ``plr`` is the first stage's PLR.
    """
    reason = _two_stage_switch(tree)
    if reason:
        raise LrscanError(f"the two-stage figure {reason}")
    switch = tree.attrs["spec"]["sweep"]["pretrain_switch"]
    pt = pretrain(tree)["test_acc"].drop_vars("step", errors="ignore")
    parts = [pt.sel(epoch=switch["epoch"], drop=True), pt.isel(epoch=-1, drop=True)]
    labels = ["stage 1", "stage 2"]
    out = {}
    if "finetune" in tree.children:
        ft = tree["finetune/metrics"]["test_acc"].isel(epoch=-1, drop=True).load()
        best = ft.mean("seed").fillna(-1).idxmax("flr")
        parts.append(ft.sel(flr=best).drop_vars("flr"))
        labels.append("after FT")
        out["best_flr"] = best.drop_vars("flr", errors="ignore")
    acc = xr.concat([p.load() for p in parts], dim="stage").assign_coords(stage=np.array(labels, dtype=object))
    return xr.Dataset({"test_acc": acc.transpose("plr", "seed", "stage"), **out},
                      attrs={"switch_epoch": switch["epoch"], "switch_plr": switch["plr"]})


@figure("two_stage", needs=(), when=_two_stage_switch, title="Two-stage pre-training: test accuracy per stage",
        caption="Two-stage pre-training: each run pre-trains at its PLR (x axis) until the switch epoch, then at "
                "the second stage's ELR to the end of pre-training, then fine-tunes. Bars: test accuracy at the end "
                "of stage 1, at the end of stage 2, and after fine-tuning with the best FLR (mean over seeds; "
                "hover for the std). A PLR in regime 2B whose accuracy rises through the 2A stage is rescued by it.")
def two_stage(tree: xr.DataTree) -> hv.Bars:
    """Grouped bars of test accuracy (%) per first-stage PLR: end of stage 1, end of stage 2, after FT.

    Returns
    -------
    hv.Bars
        ``test_acc`` (%, mean over seeds) over (``plr``, ``stage``), with ``spread`` (std over
        seeds) as a second value for hover; data from :func:`two_stage_accuracy`.
    """
    acc = two_stage_accuracy(tree).test_acc
    mean, std = percent(acc.mean("seed")), percent(acc.std("seed"))
    stages = [str(s) for s in acc.stage.values]
    plr_labels = [f"{fmt(p)}" for p in acc.plr.values]
    plr_dim = hv.Dimension("plr", label="first-stage PLR", values=plr_labels)
    stage_dim = hv.Dimension("stage", label="stage", values=stages)  # values: the order of the bars
    rows = [(p, s, mean[i, j], std[i, j]) for i, p in enumerate(plr_labels) for j, s in enumerate(stages)]
    bars = hv.Bars(rows, [plr_dim, stage_dim], [TEST_ACC, SPREAD])
    palette = dict(zip(stages, ["#DD8452", "#55A868", "#4C72B0"]))
    style(bars, {"color": hv.dim("stage").categorize(palette)}, {"tools": ["hover"]}, {})
    switch = tree.attrs["spec"]["sweep"]["pretrain_switch"]
    # Bars start at 0: a bar's length is its accuracy.
    return framed(bars, title=f"Switch to ELR {fmt(switch['plr'])} at epoch {fmt(switch['epoch'])}",
                  ylim=(0.0, min(100.0, limits(mean)[1])), legend=False,
                  xlabel=plr_dim.label, ylabel=TEST_ACC.pprint_label)



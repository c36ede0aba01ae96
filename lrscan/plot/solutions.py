"""Figures of the solutions themselves: angles and barriers, single features, frequency bands, norms, sharpness."""

from __future__ import annotations

import math
from typing import Callable

import holoviews as hv
import numpy as np
import xarray as xr

from lrscan.errors import LrscanError
from lrscan.plot.numbers import fmt
from lrscan.plot.registry import figure, load_analysis
from lrscan.plot.styles import (
    ANGLE, BAND_ACC, BARRIER_FLOOR, CHANNELS, FEATURE_ACC, LOG_NORM, PAIR, PLR, SHADING, SPARSITY, TEST_BARRIER,
    TRAIN_BARRIER, colored_lines, colors, curve, filled, framed, layout, limits, pair_name, percent, plr_edges,
    regime_spans, solution_name, study_solutions, style, vs_plr,
)


def _pair_panel(tree: xr.DataTree, values: xr.DataArray, dim: hv.Dimension, title: str, *,
                floor: float | None = None, legend: bool = False, reference: tuple[float, str] | None = None,
                ) -> hv.Overlay:
    """Seed-mean of a per-pair quantity against PLR, one curve per pair; ``reference``: a labelled level."""
    mean = values.mean("seed").transpose("pair", "plr")
    shown = np.maximum(mean.values, floor) if floor is not None else mean.values
    curves = [curve(mean.plr.values, row, PLR, dim, pair_name(pair), color, hover={PAIR: pair_name(pair)})
              for pair, row, color in zip(mean.pair.values, shown, colors(mean.sizes["pair"], "plasma"))]
    marks, covered = [], shown
    if reference is not None:
        level, name = reference
        marks = [style(hv.HLine(level), {"color": "#555555"}, {"line_dash": "dotted", "line_width": 1.5},
                       {"linestyle": ":", "linewidth": 1.2}),
                 # Labels, not Text: the panel's Text elements are the regimes' names.
                 style(hv.Labels([(float(mean.plr.values[-1]), level, name)], [PLR, dim], "label"),
                       {}, {"text_color": "#555555", "text_align": "right", "text_baseline": "top",
                            "text_font_size": "9pt", "tools": []},
                       {"color": "#555555", "horizontalalignment": "right", "verticalalignment": "top", "fontsize": 9})]
        covered = np.append(shown, level)
    return vs_plr(tree, [*marks, *curves], covered, title=title, ylabel=dim, logy=floor is not None, floor=floor,
                  legend=legend)


@figure("geometry", needs=("angles", "barriers"), title="Geometry of the solutions vs PLR",
        caption="Angle (radians; π/2 means unrelated) between the SI weight vectors of two solutions of one "
                "pre-trained model (FT x: fine-tuned with FLR x; SWA K: the average of the last K pre-training "
                "checkpoints), and the train and test error barriers (%) on the straight path between them, "
                f"on a log axis where a barrier below {fmt(BARRIER_FLOOR)}% (including 0) is drawn at "
                f"{fmt(BARRIER_FLOOR)}%. Mean over seeds; dotted: π/2, the angle of unrelated directions. " + SHADING)
def geometry(tree: xr.DataTree) -> hv.Layout:
    """Angle (rad), train barrier and test barrier (%, log axis) against PLR, one curve per pair.

    Returns
    -------
    hv.Layout
        Three panels: ``angle``, ``train_barrier`` and ``test_barrier`` over ``plr``.
    """
    angle = load_analysis(tree, "angles", ["angle"]).angle
    barriers = load_analysis(tree, "barriers", ["train_barrier", "test_barrier"])
    return layout([
        _pair_panel(tree, angle, ANGLE, "Angle between solutions", reference=(math.pi / 2, "π/2")),
        # The legend beside the top right panel: the empty cell below it leaves the figure's width alone.
        _pair_panel(tree, barriers.train_barrier, TRAIN_BARRIER, "Train error barrier", floor=BARRIER_FLOOR,
                    legend=True),
        _pair_panel(tree, barriers.test_barrier, TEST_BARRIER, "Test error barrier", floor=BARRIER_FLOOR),
    ], "Geometry of the solutions vs PLR")


def _per_solution(tree: xr.DataTree, result: xr.Dataset, panel: Callable[[xr.Dataset, str], list],
                  values: Callable[[xr.Dataset], np.ndarray], ylabel: hv.Dimension, title: str,
                  chance: float, legend: str = "right") -> hv.Layout:
    """One panel per solution the study compares (PT, SWA, FT low, FT high), each with a chance line.

    ``panel(part, solution)`` draws one solution's part of ``result``; ``values(result)`` are
    the values every panel's y range covers (with chance), so that the panels compare. The
    last panel has the legend, at ``legend`` (a HoloViews legend position).
    """
    solutions = [s for s in study_solutions(tree) if s in set(map(str, result.solution.values))]
    shown = np.append(values(result), 100 * chance)
    panels = []
    for i, solution in enumerate(solutions):
        chance_line = style(hv.HLine(100 * chance), {"color": "#888888"}, {"line_dash": "dotted"}, {"linestyle": ":"})
        drawn = vs_plr(tree, [chance_line, *panel(result.sel(solution=solution), solution)], shown,
                       title=solution_name(solution), ylabel=ylabel, legend=i == len(solutions) - 1)
        panels.append(style(drawn, {"legend_position": legend}))
    return layout(panels, title)


@figure("features", needs=("features",), title="Sorted single-feature accuracies vs PLR",
        caption="Accuracy of a solution on each single-feature test set (only that feature informative), sorted "
                "in descending order per run and averaged over seeds; colour: the rank, 1 being the feature the "
                "solution relies on most (one colour bar for every panel). Black, dashed: accuracy on the full test "
                "set; dotted: chance. Last panel: the sparsity index of each solution (1: it relies on one feature, "
                "0: on all alike; the participation ratio of its accuracies' excess over chance), mean over seeds. "
                + SHADING)
def features(tree: xr.DataTree) -> hv.Layout:
    """Sorted single-feature accuracies (%) against PLR, a line per rank, a panel per solution.

    Returns
    -------
    hv.Layout
        A panel per solution (PT, SWA, FT low FLR, FT high FLR): lines (Segments) of
        ``feature_acc`` over ``plr`` coloured by ``rank``, and the full test accuracy.
    """
    stored = tree["analysis/features"].data_vars
    result = load_analysis(tree, "features", [v for v in ("sorted_acc_mean", "test_acc", "sparsity") if v in stored])
    rank = hv.Dimension("rank", label="rank (1 = most relied on)")
    last = study_solutions(tree)[-1]

    def curves(part: xr.Dataset, solution: str) -> list:
        plr = part.plr.values
        sorted_acc = part.sorted_acc_mean.transpose("rank", "plr")
        # One colour bar, beside the last panel: the ranks are the same in every panel.
        ranks = colored_lines(plr, percent(sorted_acc), sorted_acc["rank"].values, [PLR, FEATURE_ACC], rank,
                              colorbar=solution == last)
        full = curve(plr, percent(part.test_acc.mean("seed")), PLR, FEATURE_ACC, "full test set", "#000000",
                     dashed=True)
        return [ranks, full]

    def values(result: xr.Dataset) -> np.ndarray:
        return np.concatenate([percent(result.sorted_acc_mean).ravel(), percent(result.test_acc).ravel()])

    chance = tree["analysis/features"].attrs.get("chance", 0.5)
    figure = _per_solution(tree, result, curves, values, FEATURE_ACC, "Sorted single-feature accuracies vs PLR",
                           chance, legend="bottom_left")
    if "sparsity" not in result:  # stored before the features analysis had its sparsity index
        return figure
    return layout([*figure, _sparsity_panel(tree, result.sparsity)], "Sorted single-feature accuracies vs PLR")


def _sparsity_panel(tree: xr.DataTree, sparsity: xr.DataArray) -> hv.Overlay:
    """The sparsity index of each solution the study compares against PLR, mean over seeds."""
    solutions = [s for s in study_solutions(tree) if s in set(map(str, sparsity.solution.values))]
    mean = sparsity.mean("seed").sel(solution=solutions).transpose("solution", "plr")
    lines = [curve(mean.plr.values, row, PLR, SPARSITY, solution_name(s), c, hover={"solution": solution_name(s)})
             for s, row, c in zip(solutions, mean.values, colors(len(solutions), "plasma"))]
    panel = vs_plr(tree, lines, mean.values, title="Sparsity index", ylabel=SPARSITY, ylim=(-0.05, 1.2))
    return style(panel, {"legend_position": "bottom_left"})


@figure("frequency", needs=("frequency",), title="Test accuracy per frequency band vs PLR",
        caption="Accuracy on the band-limited test sets (only the frequencies of one band kept, SPEC §5), mean "
                "over seeds; dotted: chance. " + SHADING)
def frequency(tree: xr.DataTree) -> hv.Layout:
    """Accuracy (%) per frequency band against PLR, one panel per solution (PT, SWA, FT low, FT high).

    Reads ``band_acc(plr, seed, solution, band)`` and ``test_acc(plr, seed, solution)`` (the
    unfiltered test set, drawn dashed) of the ``frequency`` analysis, and its ``chance`` attribute.
    """
    result = load_analysis(tree, "frequency", ["band_acc", "test_acc"])
    palette = colors(result.sizes["band"], "plasma")

    def curves(part: xr.Dataset, solution: str) -> list:
        mean = part.band_acc.mean("seed")
        full = part.test_acc.mean("seed")
        return [curve(mean.plr.values, percent(mean.sel(band=b)), PLR, BAND_ACC, f"band {b}", c,
                      hover={"band": str(b), "solution": solution_name(solution)})
                for b, c in zip(mean.band.values, palette)] + [
            curve(full.plr.values, percent(full), PLR, BAND_ACC, "full test set", "#000000", dashed=True)]

    def values(result: xr.Dataset) -> np.ndarray:
        return np.concatenate([percent(result.band_acc.mean("seed")).ravel(), percent(result.test_acc).ravel()])

    chance = tree["analysis/frequency"].attrs.get("chance", 0.1)
    return _per_solution(tree, result, curves, values, BAND_ACC, "Test accuracy per frequency band vs PLR", chance)


# The panels of the group_norms figure: each point of the ``group_norms`` analysis, in the study's order.
NORM_POINTS = {"init": "At initialisation", "pretrain": "End of pre-training", "finetune": "After fine-tuning"}


@figure("group_norms", needs=("group_norms",), title="Weight-group norm histograms",
        caption="Norms ‖W[i]‖ / ρ of every output channel of every SI tensor, log10, as the share of channels in "
                "each bin (all seeds pooled), at three points of training: at initialisation (epoch 0; every PLR "
                "of a seed starts from the same point, so the histograms coincide), at the end of pre-training, "
                "and after fine-tuning with the lowest FLR. Each of these panels shows one PLR per regime (the "
                "middle PLR of each regime's span). Last panel: every PLR's histogram at the end of pre-training "
                "as a column, with the regime boundaries dashed and the regimes named. Values beyond the axis are "
                "counted in its end bins. Large PLRs in regime 3 spread the norms over orders of magnitude.")
def group_norms(tree: xr.DataTree) -> hv.Layout:
    """Histograms of log10 channel norm / ρ at each point of training, and against PLR as a colour map.

    Reads ``histogram(plr, seed, point, bin)`` and the ``bin_edges`` (and, when there, the
    ``finetune_flr``) attributes of the ``group_norms`` analysis.

    Returns
    -------
    hv.Layout
        One overlay of Histograms of ``channels`` (%) over ``log10_norm`` per point the
        analysis has (init, end of PT, after FT), of one PLR per regime on a shared y range;
        then a QuadMesh of ``channels`` over (``plr``, ``log10_norm``) at the end of PT.
    """
    result = load_analysis(tree, "group_norms", ["histogram"])
    attrs = tree["analysis/group_norms"].attrs
    edges = np.asarray(attrs["bin_edges"])
    counts = result.histogram.sum("seed").transpose("point", "plr", "bin")
    share = 100 * counts / counts.sum("bin")
    plr = share.plr.values
    chosen = _representatives(tree, plr)
    spans = regime_spans(tree)
    names = [f"PLR {fmt(p)}" + "".join(f" ({label})" for label, start, stop in spans if start <= p < stop)
             for p in chosen]
    palette = colors(len(chosen), "plasma")
    points = [str(p) for p in share.point.values if str(p) in NORM_POINTS]
    # One y range for every point panel, so that the points compare.
    top = np.nanmax(share.sel(plr=chosen, point=points).values, initial=1.0)
    panels = []
    for point in points:
        # Each PLR in its colour of the palette, in the HTML as in the PNG (:func:`filled`).
        histograms = [filled(hv.Histogram((edges, share.sel(point=point, plr=p).values), kdims=[LOG_NORM],
                                          vdims=[CHANNELS], label=name), c, 0.35,
                             {"line_width": 1.5}, {"linewidth": 1.2})
                      for p, name, c in zip(chosen, names, palette)]
        title = NORM_POINTS[point]
        if point == "finetune" and "finetune_flr" in attrs:
            title += f" (FLR {fmt(attrs['finetune_flr'])})"
        panel = framed(hv.Overlay(histograms), title=title, xlim=(edges[0], edges[-1]), ylim=(0.0, 1.1 * top),
                       legend=point == points[0], xlabel=LOG_NORM.pprint_label, ylabel=CHANNELS.pprint_label)
        # Inside, at the top left (norms rarely come that small): a legend beside one panel would narrow it alone.
        panels.append(style(panel, {"legend_position": "top_left"}))
    end = share.sel(point="pretrain")
    mesh = style(hv.QuadMesh((plr_edges(plr), edges, end.values.T), [PLR, LOG_NORM], CHANNELS),
                 {"cmap": "Blues", "colorbar": True})
    # The mesh fills the panel, so the regimes are named and their boundaries drawn, not shaded.
    overview = vs_plr(tree, [mesh], edges, title="Channel norms vs PLR, end of pre-training", ylabel=LOG_NORM,
                      shade=False, ylim=(edges[0], edges[-1] + 0.15 * (edges[-1] - edges[0])), legend=False)
    return layout([*panels, overview], "Weight-group norm histograms")


def _representatives(tree: xr.DataTree, plr: np.ndarray) -> list[float]:
    """One PLR from the middle of each regime span (the smallest, middle and largest without regimes)."""
    spans = regime_spans(tree)
    if not spans:
        return sorted({float(plr[0]), float(plr[len(plr) // 2]), float(plr[-1])})
    inside = [plr[(plr >= start) & (plr < stop)] for _, start, stop in spans]
    return [float(span[len(span) // 2]) for span in inside]



HESSIAN_TRACE = hv.Dimension("hessian_trace", label="Hessian trace of the train loss (SI group)")
TEST_ERROR = hv.Dimension("test_error", label="test error", unit="%")
LOG_PLR = hv.Dimension("log10_plr", label="log10 PLR")


# FT solutions whose final train loss is within this factor of the median are compared.
LOSS_FACTOR = 3.0


def sharpness_points(tree: xr.DataTree, loss_factor: float = LOSS_FACTOR) -> xr.Dataset:
    """Sharpness and test error of every FT solution, and which of them have matched train loss.

    Parameters
    ----------
    tree
        An opened store with fine-tuning and the ``sharpness`` analysis.
    loss_factor
        A solution is *matched* when its final train loss lies within this factor of the
        median final train loss of all FT solutions (between median / factor and median ×
        factor), so that sharpness is compared between solutions that fit the training set
        equally well. It must be a finite factor above 1.

    Returns
    -------
    xr.Dataset
        Over (plr, flr, seed): ``hessian_trace`` (of the ``sharpness`` analysis),
        ``test_error`` and ``train_loss`` (final FT metric row) and ``matched``; attrs
        ``median_train_loss`` and ``loss_factor``.
    """
    if not (math.isfinite(loss_factor) and loss_factor > 1):
        raise LrscanError(f"loss_factor must be a finite factor above 1, got {loss_factor!r}")
    if "finetune" not in tree.children:
        raise LrscanError("the store has no fine-tuning data (finetune_epochs = 0); the sharpness figure compares "
                          "fine-tuned solutions")
    trace = load_analysis(tree, "sharpness", ["hessian_trace"]).hessian_trace
    ft = trace.solution.values[np.asarray(trace.kind.values == "ft")]
    trace = (trace.sel(solution=ft).assign_coords(flr=("solution", trace.value.sel(solution=ft).values))
             .swap_dims(solution="flr").drop_vars(["solution", "kind", "value"], errors="ignore"))
    final = tree["finetune/metrics"].to_dataset()[["train_loss", "test_acc"]].isel(epoch=-1, drop=True)
    final = final.drop_vars("step", errors="ignore").load()
    trace = trace.sel(flr=final.flr.values).transpose(*final.train_loss.dims)
    median = float(final.train_loss.median())
    matched = (final.train_loss >= median / loss_factor) & (final.train_loss <= median * loss_factor)
    return xr.Dataset({"hessian_trace": trace, "test_error": 1 - final.test_acc, "train_loss": final.train_loss,
                       "matched": matched},
                      attrs={"median_train_loss": median, "loss_factor": loss_factor})


@figure("sharpness", needs=("sharpness",), stages=("finetune",), title="Sharpness vs test error at matched train loss",
        caption="Hessian trace of the train loss over the SI group (Hutchinson's estimate, `lrscan analyze --only "
                "sharpness`; log axis) against the test error of fine-tuned solutions, one point per (PLR, FLR, "
                f"seed), coloured by log10 PLR. Only solutions whose final train loss lies within a factor "
                f"{fmt(LOSS_FACTOR)} of the median over all fine-tuned solutions are shown, so that sharpness is compared "
                "at matched train loss; non-positive trace estimates have no place on the log axis and are left out.")
def sharpness(tree: xr.DataTree, loss_factor: float = LOSS_FACTOR) -> hv.Scatter:
    """Hessian trace (log x) against test error (%) of FT solutions at matched train loss, coloured by PLR.

    Parameters
    ----------
    tree
        An opened store with fine-tuning and the ``sharpness`` analysis.
    loss_factor
        The train-loss band of :func:`sharpness_points`.

    Returns
    -------
    hv.Scatter
        ``test_error`` (%) over ``hessian_trace``, coloured by ``log10_plr``; one point per
        matched solution with a positive trace.
    """
    points = sharpness_points(tree, loss_factor)
    shown = points.where(points.matched & (points.hessian_trace > 0)).stack(solution=points.train_loss.dims)
    shown = shown.dropna("solution", subset=["hessian_trace", "test_error"])
    log_plr = np.log10(shown.plr.values)
    table = (shown.hessian_trace.values, percent(shown.test_error), log_plr, shown.flr.values)
    flr = hv.Dimension("flr", label="FLR")
    scatter = style(hv.Scatter(table, HESSIAN_TRACE, [TEST_ERROR, LOG_PLR, flr]),
                    {"color": LOG_PLR.name, "cmap": "viridis", "colorbar": True}, {"size": 8, "tools": ["hover"]},
                    {"s": 30})
    total = int(points.hessian_trace.notnull().sum())
    title = (f"FT solutions, train loss ×{fmt(loss_factor)} of {fmt(points.median_train_loss)}: "
             f"{shown.sizes['solution']} of {total}")
    positive = points.hessian_trace.values[points.hessian_trace.values > 0]
    xlim = {"xlim": limits(positive, log=True)} if positive.size else {}
    return framed(scatter, title=title, logx=True, legend=False, **xlim,
                  xlabel=HESSIAN_TRACE.pprint_label, ylabel=TEST_ERROR.pprint_label)


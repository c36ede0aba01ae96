"""The study's figures (SPEC §6) from a store's persisted analyses, as HoloViews objects.

Each figure is a function ``name(tree) -> HoloViews object`` of an opened store
(:func:`lrscan.open`): it reads the results ``lrscan analyze`` persisted under
``/analysis/<name>`` (and, for the training curves, the stored metrics) and renders with
both the Bokeh backend (interactive HTML) and the matplotlib backend (PNG).
:func:`write_figures` writes every figure a store can show, and an ``index.html`` linking
them with the store's spec and a summary of its results.

Every panel against PLR puts PLR on a log axis and marks the regimes of the ``regimes``
analyzer: each PLR's most common regime over seeds is shaded and named at the top, and
the regime boundaries (geometric mean over seeds) are dashed vertical lines.
"""

from __future__ import annotations

import html
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import holoviews as hv
import matplotlib
import numpy as np
import xarray as xr

from lrscan.analyze.solutions import default_pairs, pretrain
from lrscan.errors import LrscanError


def _load_backends() -> None:
    """Load both plotting backends without changing the one a notebook chose."""
    current = hv.Store.current_backend
    hv.renderer("bokeh")
    hv.renderer("matplotlib")
    hv.Store.set_current_backend(current)


_load_backends()

# Size of one panel: pixels of the PNG at DPI, and of the Bokeh plot.
PANEL_WIDTH, PANEL_HEIGHT, DPI = 560, 420, 100
# Barriers are drawn on a log axis, where 0 has no place: values below this (in %) sit on it.
BARRIER_FLOOR = 0.01
# The "best PLR range": PLRs whose best fine-tuned accuracy is within this many points of the best.
BEST_MARGIN = 1.0
REGIME_COLORS = {"1": "#4C72B0", "2A": "#55A868", "2": "#CCB974", "2?": "#A0A0A0", "2B": "#DD8452", "3": "#C44E52"}
REGIME_NAMES = {"1": "convergence", "2A": "chaotic equilibrium, 2A", "2": "chaotic equilibrium",
                "2?": "chaotic equilibrium, 2A or 2B undecided within the noise", "2B": "chaotic equilibrium, 2B",
                "3": "divergence"}
SHADING = ("Shading: each PLR's most common regime over seeds (1 convergence, 2A / 2B chaotic equilibrium, "
           "2? undecided, 3 divergence); dashed lines: the regime boundaries, geometric mean over seeds.")

PLR = hv.Dimension("plr", label="PLR (effective learning rate)")
EPOCH = hv.Dimension("epoch", label="epoch")
ALPHA = hv.Dimension("alpha", label="α along the path (0 = first solution, 1 = second)")
TEST_ACC = hv.Dimension("test_acc", label="test accuracy", unit="%")
TRAIN_LOSS = hv.Dimension("train_loss", label="train loss (cross-entropy)", unit="nats")
SPREAD = hv.Dimension("spread", label="std", unit="%")
ANGLE = hv.Dimension("angle", label="angle between solutions", unit="rad")
TRAIN_BARRIER = hv.Dimension("train_barrier", label="train error barrier", unit="%")
TEST_BARRIER = hv.Dimension("test_barrier", label="test error barrier", unit="%")
FEATURE_ACC = hv.Dimension("feature_acc", label="single-feature test accuracy", unit="%")
BAND_ACC = hv.Dimension("band_acc", label="test accuracy on the band", unit="%")
LOG_NORM = hv.Dimension("log10_norm", label="log10 of channel norm ‖W[i]‖ / ρ")
CHANNELS = hv.Dimension("channels", label="share of channels", unit="%")


@dataclass(frozen=True)
class Figure:
    """A figure of the study.

    Attributes
    ----------
    func
        ``func(tree) -> HoloViews object``.
    needs
        Analyses (names under ``/analysis``) the figure reads; it is drawn only when the store has them.
    stages
        Stages of training (``finetune``, ``swa``) the figure needs besides.
    title
        What the figure shows, in the study's words.
    caption
        How to read it.
    when
        ``when(tree)``: why the store's sweep cannot show the figure (e.g. it has no
        two-stage schedule), or None; for conditions that analyses and stages do not express.
    """

    func: Callable[[xr.DataTree], hv.core.Dimensioned]
    needs: tuple[str, ...]
    title: str
    caption: str
    stages: tuple[str, ...] = ()
    when: Callable[[xr.DataTree], str | None] | None = None

    def missing(self, tree: xr.DataTree) -> str | None:
        """Why the store cannot show this figure, or None when it can."""
        if self.when is not None and (reason := self.when(tree)):
            return reason
        stages = [stage for stage in self.stages if stage not in tree.children]
        if stages:
            return f"needs {', '.join(stages)} data, which the store does not have"
        absent = [name for name in self.needs if name not in stored_analyses(tree)]
        return f"needs the {', '.join(absent)} analysis, which the store does not have" if absent else None


FIGURES: dict[str, Figure] = {}


def stored_analyses(tree: xr.DataTree) -> set[str]:
    """Names of the analyses under ``/analysis`` that are complete.

    ``lrscan analyze`` marks a persisted result complete with its fingerprint, written last,
    so a result it left half-written (``lrscan_analyzer`` without ``lrscan_fingerprint``) does
    not count; a result put there in memory (``tree["analysis/angles"] = ...``) does.
    """
    stored = tree["analysis"].children if "analysis" in tree.children else {}
    return {name for name, node in stored.items()
            if "lrscan_fingerprint" in node.attrs or "lrscan_analyzer" not in node.attrs}


def figure(name: str, *, needs: tuple[str, ...], title: str, caption: str, stages: tuple[str, ...] = (),
           when: Callable[[xr.DataTree], str | None] | None = None):
    """Register ``func`` as the figure ``name`` (decorator); see :class:`Figure`."""

    def register(func):
        FIGURES[name] = Figure(func, needs, title, caption, stages, when)
        return func

    return register


# --- shared helpers -------------------------------------------------------------------------


def style(obj, common: dict | None = None, bokeh: dict | None = None, mpl: dict | None = None):
    """Set plot and style options: ``common`` for both backends, ``bokeh`` / ``mpl`` for one each."""
    common = common or {}
    obj.opts(**common, **(bokeh or {}), backend="bokeh")
    obj.opts(**common, **(mpl or {}), backend="matplotlib")
    return obj


def colors(n: int, cmap: str = "viridis") -> list[str]:
    """``n`` colours spread over a colormap (its bright yellow end left out: unreadable on white)."""
    colormap = matplotlib.colormaps[cmap]
    return [matplotlib.colors.to_hex(colormap(x)) for x in np.linspace(0, 0.85, n)]


def curve(x, y, kdim, vdim, label: str, color: str, dashed: bool = False) -> hv.Overlay:
    """A line with a marker at every point, so sparse grids read as grids."""
    line = style(hv.Curve((x, y), kdim, vdim, label=label), {"color": color},
                 {"line_width": 2, "line_dash": "dashed" if dashed else "solid"},
                 {"linewidth": 2, "linestyle": "--" if dashed else "-"})
    points = style(hv.Scatter((x, y), kdim, vdim), {"color": color}, {"size": 5}, {"s": 16})
    return line * points


def colored_lines(x, ys, values, kdims: list[hv.Dimension], color: hv.Dimension, cmap: str = "viridis",
                  dashed: bool = False, colorbar: bool = True) -> hv.Segments:
    """One line per row of ``ys`` over ``x``, coloured by its entry of ``values`` on a colour bar.

    Drawn as one element of segments rather than one curve per line: HoloViews' cost is per
    element, and figures have a line per feature rank or per PLR.
    """
    x, ys = np.asarray(x, dtype=float), np.asarray(ys, dtype=float)
    n = ys.shape[0]
    table = (np.tile(x[:-1], n), ys[:, :-1].ravel(), np.tile(x[1:], n), ys[:, 1:].ravel(),
             np.repeat(np.asarray(values, dtype=float), x.size - 1))
    ends = [hv.Dimension(f"{d.name}_end") for d in kdims]
    segments = hv.Segments(table, [*kdims, *ends], [color])
    return style(segments, {"color": color.name, "cmap": cmap, "colorbar": colorbar},
                 {"line_width": 1.5, "line_dash": "dashed" if dashed else "solid"},
                 {"linewidth": 1.2, "linestyle": "--" if dashed else "-"})


def _limits(values, log: bool = False, floor: float | None = None) -> tuple[float, float]:
    """Axis limits around ``values`` with room at the top for the regime names."""
    v = np.asarray(values, dtype=float).ravel()
    v = v[np.isfinite(v)]
    if floor is not None:
        v = np.maximum(v, floor)
    if log:
        v = np.log10(v[v > 0])
    lo, hi = (v.min(), v.max()) if v.size else (0.0, 1.0)
    span = max(hi - lo, 1.0 if log else max(abs(hi), 1.0) * 0.05)
    lo, hi = lo - 0.05 * span, hi + 0.2 * span
    return (10**lo, 10**hi) if log else (lo, hi)


def _plr_edges(plr: np.ndarray) -> np.ndarray:
    """Edges of each PLR's cell on a log axis: geometric midpoints, half a step beyond the ends."""
    log = np.log10(plr)
    step = np.diff(log).mean() if log.size > 1 else 0.5
    mid = (log[:-1] + log[1:]) / 2
    return 10 ** np.concatenate([[log[0] - step / 2], mid, [log[-1] + step / 2]])


def _regimes(tree: xr.DataTree) -> xr.Dataset | None:
    if "regimes" in stored_analyses(tree):
        return tree["analysis/regimes"].to_dataset()[["regime_mode", "boundary_geomean"]].load()
    return None


def regime_spans(tree: xr.DataTree) -> list[tuple[str, float, float]]:
    """Contiguous runs of PLRs with the same most common regime: (label, start, stop) on the PLR axis.

    Empty when the store has no ``regimes`` analysis.
    """
    regimes = _regimes(tree)
    return [] if regimes is None else _spans(regimes)


def _spans(regimes: xr.Dataset) -> list[tuple[str, float, float]]:
    labels = [str(v) for v in regimes.regime_mode.values]
    edges = _plr_edges(regimes.plr.values)
    spans = []
    for i, label in enumerate(labels):
        if spans and spans[-1][0] == label:
            spans[-1] = (label, spans[-1][1], edges[i + 1])
        else:
            spans.append((label, edges[i], edges[i + 1]))
    return spans


def regime_marks(tree: xr.DataTree, label_y: float, *, shade: bool = True) -> list:
    """Elements marking the regimes on a panel against PLR.

    Parameters
    ----------
    tree
        An opened store; without a ``regimes`` analysis there is nothing to mark.
    label_y
        Height (in the panel's data units) at which each regime is named.
    shade
        Shade each regime's span (off for panels whose data fills the whole area).

    Returns
    -------
    list
        VSpans (when ``shade``), the name of each span, and a dashed VLine at each boundary.
    """
    regimes = _regimes(tree)
    if regimes is None:
        return []
    marks = []
    for label, start, stop in _spans(regimes):
        if shade:
            color = REGIME_COLORS.get(label, "gray")
            marks.append(style(hv.VSpan(start, stop), {"alpha": 0.13}, {"color": color, "line_alpha": 0},
                               {"facecolor": color, "edgecolor": "none"}))
        text = hv.Text(math.sqrt(start * stop), label_y, label)
        marks.append(style(text, {"color": REGIME_COLORS.get(label, "gray")}, {"text_font_size": "11pt"},
                           {"fontsize": 11}))
    for value in regimes.boundary_geomean.values:
        if np.isfinite(value):
            marks.append(style(hv.VLine(float(value)), {"color": "#555555"}, {"line_dash": "dashed", "line_width": 1.5},
                               {"linestyle": "--", "linewidth": 1.2}))
    return marks


def vs_plr(tree: xr.DataTree, elements: list, values, *, title: str, ylabel: hv.Dimension,
           logy: bool = False, floor: float | None = None, shade: bool = True, legend: bool = True,
           ylim: tuple[float, float] | None = None) -> hv.Overlay:
    """One panel against PLR on a log axis with the regimes marked: the look every such panel shares.

    Parameters
    ----------
    tree
        The store (its PLR grid sets the x range, its ``regimes`` analysis the marks).
    elements
        What the panel plots.
    values
        The plotted y values, which set the y range with room above for the regime names.
    title, ylabel
        The panel's title and y dimension.
    logy, floor
        A log y axis, on which values below ``floor`` are counted at the floor.
    shade, legend
        Shade the regimes; show the legend.
    ylim
        A y range instead of the one ``values`` give.
    """
    lo, hi = ylim or _limits(values, log=logy, floor=floor)
    label_y = lo ** 0.07 * hi ** 0.93 if logy else lo + 0.93 * (hi - lo)  # 93% of the way up
    edges = _plr_edges(np.asarray(tree.attrs["spec"]["sweep"]["plr"]))
    panel = hv.Overlay([*regime_marks(tree, label_y, shade=shade), *elements])
    return framed(panel, title=title, logx=True, logy=logy, xlim=(edges[0], edges[-1]), ylim=(lo, hi),
                  legend=legend, xlabel=PLR.pprint_label, ylabel=ylabel.pprint_label)


def framed(panel, *, title: str, legend: bool = True, **plot) -> hv.Overlay:
    """Size, title and legend of one panel, alike in both backends."""
    return style(panel, {"title": title, "show_legend": legend, **plot},
                 {"width": PANEL_WIDTH, "height": PANEL_HEIGHT, "legend_position": "right",
                  "legend_opts": {"label_text_font_size": "8pt"}},
                 {"aspect": "auto", "legend_position": "right", "legend_opts": {"fontsize": 7}})


def grid_shape(n_panels: int) -> tuple[int, int]:
    """(rows, columns) of a figure of ``n_panels`` panels: one row up to three, then two columns."""
    cols = n_panels if n_panels <= 3 else 2
    return math.ceil(n_panels / cols), cols


def _layout(panels: list, title: str) -> hv.Layout:
    """Panels side by side (see :func:`grid_shape`), with one title."""
    rows, cols = grid_shape(len(panels))
    layout = hv.Layout(panels).cols(cols)
    # The matplotlib options serve HoloViews' own layouts (a notebook); save_png lays panels out itself.
    return style(layout, {"title": title}, {"shared_axes": False},
                 {"sublabel_format": "", "fig_inches": (cols * PANEL_WIDTH / DPI, rows * PANEL_HEIGHT / DPI)})


def figure_size(obj) -> tuple[int, int]:
    """Pixel size (width, height) of the PNG of a figure."""
    rows, cols = grid_shape(len(obj) if isinstance(obj, hv.Layout) else 1)
    return cols * PANEL_WIDTH, rows * PANEL_HEIGHT


def _analysis(tree: xr.DataTree, name: str, variables: list[str]) -> xr.Dataset:
    """Some variables of a persisted analysis, loaded (they are one number per run or so)."""
    if name not in stored_analyses(tree):
        raise LrscanError(f"the store has no {name} analysis; run `lrscan analyze` first")
    return tree[f"analysis/{name}"].to_dataset()[variables].load()


def solution_name(label: str) -> str:
    """How a solution label reads in a figure: ``ft=0.001`` -> ``FT (FLR 0.001)``."""
    kind, _, value = str(label).partition("=")
    return {"pt": "PT", "ft": f"FT (FLR {value})", "swa": f"SWA (K = {value})"}.get(kind, str(label))


def study_solutions(tree: xr.DataTree) -> list[str]:
    """The solutions the study compares: PT, and the ends of its pairs (FT low/high FLR, SWA)."""
    pairs = default_pairs(tree) if "finetune" in tree.children else []
    return ["pt", *sorted({end for pair in pairs for end in pair}, key=_solution_order)]


def _solution_order(label: str) -> tuple:
    kind, _, value = label.partition("=")
    return {"pt": 0, "swa": 1, "ft": 2}.get(kind, 3), float(value or 0)


def percent(values) -> np.ndarray:
    """Fractions as percentages, as a float array."""
    return 100 * np.asarray(values, dtype=float)


# --- the figures ----------------------------------------------------------------------------


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
    m = _analysis(tree, "metrics", ["pt_test_acc_mean", "pt_test_acc_std"])
    plr = m.plr.values
    mean = m.pt_test_acc_mean.mean("seed")
    # The std over every (seed, epoch) of the window: within-seed variance plus that of the seed means.
    std = np.sqrt((m.pt_test_acc_std**2 + (m.pt_test_acc_mean - mean) ** 2).mean("seed"))
    acc, spread = percent(mean), percent(std)
    band = style(hv.Spread((plr, acc, spread), PLR, [TEST_ACC, SPREAD]), {"color": "#4C72B0", "alpha": 0.25},
                 {"line_alpha": 0})
    seeds = style(hv.Scatter((np.repeat(plr, m.sizes["seed"]), percent(m.pt_test_acc_mean).ravel()),
                             PLR, TEST_ACC, label="seeds"), {"color": "#222222", "alpha": 0.5}, {"size": 4}, {"s": 9})
    mean_curve = curve(plr, acc, PLR, TEST_ACC, "mean ± std", "#4C72B0")
    return vs_plr(tree, [band, seeds, mean_curve], np.concatenate([acc - spread, acc + spread]),
                  title="PT test accuracy vs PLR", ylabel=TEST_ACC)


def _per_value(tree: xr.DataTree, acc: xr.DataArray, dim: str, name: Callable[[float], str],
               title: str) -> hv.Overlay:
    """Seed-mean accuracy against PLR, one curve per value of ``dim``, with the PT accuracy for reference."""
    pt = percent(_analysis(tree, "metrics", ["pt_test_acc_mean"]).pt_test_acc_mean.mean("seed"))
    mean = acc.mean("seed").transpose(dim, "plr")
    plr = mean.plr.values
    curves = [curve(plr, percent(row), PLR, TEST_ACC, name(value), color)
              for value, row, color in zip(mean[dim].values, mean.values, colors(mean.sizes[dim]))]
    reference = curve(plr, pt, PLR, TEST_ACC, "PT", "#888888", dashed=True)
    return vs_plr(tree, [reference, *curves], np.concatenate([percent(mean).ravel(), pt]),
                  title=title, ylabel=TEST_ACC)


@figure("ft_accuracy", needs=("metrics",), stages=("finetune",), title="FT test accuracy per FLR vs PLR",
        caption="Final test accuracy after fine-tuning each pre-trained model with every FLR (mean over seeds), "
                "next to the PT accuracy (grey, dashed). " + SHADING)
def ft_accuracy(tree: xr.DataTree) -> hv.Overlay:
    """FT test accuracy (%) against PLR, one curve per FLR, mean over seeds."""
    if "finetune" not in tree.children:
        raise LrscanError("the store has no fine-tuning data (finetune_epochs = 0)")
    acc = _analysis(tree, "metrics", ["ft_test_acc"]).ft_test_acc
    return _per_value(tree, acc, "flr", lambda flr: f"FLR {flr:.3g}", "FT test accuracy per FLR vs PLR")


@figure("swa_accuracy", needs=("metrics",), stages=("swa",), title="SWA test accuracy per K vs PLR",
        caption="Test accuracy of the average of the last K pre-training checkpoints (mean over seeds), next to "
                "the PT accuracy (grey, dashed). " + SHADING)
def swa_accuracy(tree: xr.DataTree) -> hv.Overlay:
    """SWA test accuracy (%) against PLR, one curve per window size K, mean over seeds."""
    if "swa" not in tree.children:
        raise LrscanError("the store has no SWA solutions (swa is empty)")
    acc = _analysis(tree, "metrics", ["swa_test_acc"]).swa_test_acc
    return _per_value(tree, acc, "swa", lambda k: f"K = {k:g}", "SWA test accuracy per K vs PLR")


def pair_name(pair: str) -> str:
    """How a pair label reads in a legend: ``ft=0.001~swa=5`` -> ``FT 0.001 ↔ SWA 5``."""
    return " ↔ ".join(end.replace("=", " ").upper() for end in str(pair).split("~"))


def _pair_panel(tree: xr.DataTree, values: xr.DataArray, dim: hv.Dimension, title: str, *,
                floor: float | None = None, legend: bool = False) -> hv.Overlay:
    """Seed-mean of a per-pair quantity against PLR, one curve per pair."""
    mean = values.mean("seed").transpose("pair", "plr")
    shown = np.maximum(mean.values, floor) if floor is not None else mean.values
    curves = [curve(mean.plr.values, row, PLR, dim, pair_name(pair), color)
              for pair, row, color in zip(mean.pair.values, shown, colors(mean.sizes["pair"], "plasma"))]
    return vs_plr(tree, curves, shown, title=title, ylabel=dim, logy=floor is not None, floor=floor, legend=legend)


@figure("geometry", needs=("angles", "barriers"), title="Geometry of the solutions vs PLR",
        caption="Angle (radians; π/2 means unrelated) between the SI weight vectors of two solutions of one "
                "pre-trained model (FT x: fine-tuned with FLR x; SWA K: the average of the last K pre-training "
                "checkpoints), and the train and test error barriers (%) on the straight path between them, "
                f"on a log axis where a barrier below {BARRIER_FLOOR:g}% (including 0) is drawn at "
                f"{BARRIER_FLOOR:g}%. Mean over seeds. " + SHADING)
def geometry(tree: xr.DataTree) -> hv.Layout:
    """Angle (rad), train barrier and test barrier (%, log axis) against PLR, one curve per pair.

    Returns
    -------
    hv.Layout
        Three panels: ``angle``, ``train_barrier`` and ``test_barrier`` over ``plr``.
    """
    angle = _analysis(tree, "angles", ["angle"]).angle
    barriers = _analysis(tree, "barriers", ["train_barrier", "test_barrier"])
    return _layout([
        _pair_panel(tree, angle, ANGLE, "Angle between solutions"),
        _pair_panel(tree, barriers.train_barrier, TRAIN_BARRIER, "Train error barrier", floor=BARRIER_FLOOR),
        _pair_panel(tree, barriers.test_barrier, TEST_BARRIER, "Test error barrier", floor=BARRIER_FLOOR, legend=True),
    ], "Geometry of the solutions vs PLR")


def _per_solution(tree: xr.DataTree, result: xr.Dataset, panel: Callable[[xr.Dataset, str], list],
                  values: Callable[[xr.Dataset], np.ndarray], ylabel: hv.Dimension, title: str,
                  chance: float) -> hv.Layout:
    """One panel per solution the study compares (PT, SWA, FT low, FT high), each with a chance line.

    ``panel(part, solution)`` draws one solution's part of ``result``; ``values(result)`` are
    the values every panel's y range covers (with chance), so that the panels compare.
    """
    solutions = [s for s in study_solutions(tree) if s in set(map(str, result.solution.values))]
    shown = np.append(values(result), 100 * chance)
    panels = []
    for i, solution in enumerate(solutions):
        chance_line = style(hv.HLine(100 * chance), {"color": "#888888"}, {"line_dash": "dotted"}, {"linestyle": ":"})
        panels.append(vs_plr(tree, [chance_line, *panel(result.sel(solution=solution), solution)], shown,
                             title=solution_name(solution), ylabel=ylabel, legend=i == len(solutions) - 1))
    return _layout(panels, title)


@figure("features", needs=("features",), title="Sorted single-feature accuracies vs PLR",
        caption="Accuracy of a solution on each single-feature test set (only that feature informative), sorted "
                "in descending order per run and averaged over seeds; colour: the rank, 1 being the feature the "
                "solution relies on most. Black, dashed: accuracy on the full test set; dotted: chance. " + SHADING)
def features(tree: xr.DataTree) -> hv.Layout:
    """Sorted single-feature accuracies (%) against PLR, a line per rank, a panel per solution.

    Returns
    -------
    hv.Layout
        A panel per solution (PT, SWA, FT low FLR, FT high FLR): lines (Segments) of
        ``feature_acc`` over ``plr`` coloured by ``rank``, and the full test accuracy.
    """
    result = _analysis(tree, "features", ["sorted_acc_mean", "test_acc"])
    rank = hv.Dimension("rank", label="rank (1 = most relied on)")

    def curves(part: xr.Dataset, solution: str) -> list:
        plr = part.plr.values
        sorted_acc = part.sorted_acc_mean.transpose("rank", "plr")
        ranks = colored_lines(plr, percent(sorted_acc), sorted_acc["rank"].values, [PLR, FEATURE_ACC], rank)
        full = curve(plr, percent(part.test_acc.mean("seed")), PLR, FEATURE_ACC, "full test set", "#000000",
                     dashed=True)
        return [ranks, full]

    def values(result: xr.Dataset) -> np.ndarray:
        return np.concatenate([percent(result.sorted_acc_mean).ravel(), percent(result.test_acc).ravel()])

    chance = tree["analysis/features"].attrs.get("chance", 0.5)
    return _per_solution(tree, result, curves, values, FEATURE_ACC, "Sorted single-feature accuracies vs PLR", chance)


@figure("frequency", needs=("frequency",), title="Test accuracy per frequency band vs PLR",
        caption="Accuracy on the band-limited test sets (only the frequencies of one band kept, SPEC §5), mean "
                "over seeds; dotted: chance. " + SHADING)
def frequency(tree: xr.DataTree) -> hv.Layout:
    """Accuracy (%) per frequency band against PLR, one panel per solution (PT, SWA, FT low, FT high).

    Reads ``band_acc(plr, seed, solution, band)`` and ``test_acc(plr, seed, solution)`` (the
    unfiltered test set, drawn dashed) of the ``frequency`` analysis, and its ``chance`` attribute.
    """
    result = _analysis(tree, "frequency", ["band_acc", "test_acc"])
    palette = colors(result.sizes["band"], "plasma")

    def curves(part: xr.Dataset, solution: str) -> list:
        mean = part.band_acc.mean("seed")
        full = part.test_acc.mean("seed")
        return [curve(mean.plr.values, percent(mean.sel(band=b)), PLR, BAND_ACC, f"band {b}", c)
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
    result = _analysis(tree, "group_norms", ["histogram"])
    attrs = tree["analysis/group_norms"].attrs
    edges = np.asarray(attrs["bin_edges"])
    counts = result.histogram.sum("seed").transpose("point", "plr", "bin")
    share = 100 * counts / counts.sum("bin")
    plr = share.plr.values
    chosen = _representatives(tree, plr)
    spans = regime_spans(tree)
    names = [f"PLR {p:.3g}" + "".join(f" ({label})" for label, start, stop in spans if start <= p < stop)
             for p in chosen]
    palette = colors(len(chosen), "plasma")
    points = [str(p) for p in share.point.values if str(p) in NORM_POINTS]
    # One y range for every point panel, so that the points compare.
    top = np.nanmax(share.sel(plr=chosen, point=points).values, initial=1.0)
    panels = []
    for point in points:
        histograms = [style(hv.Histogram((edges, share.sel(point=point, plr=p).values), kdims=[LOG_NORM],
                                         vdims=[CHANNELS], label=name), {"color": c, "alpha": 0.35},
                            {"line_color": c, "line_width": 1.5}, {"edgecolor": c, "linewidth": 1.2})
                      for p, name, c in zip(chosen, names, palette)]
        title = NORM_POINTS[point]
        if point == "finetune" and "finetune_flr" in attrs:
            title += f" (FLR {attrs['finetune_flr']:.3g})"
        panel = framed(hv.Overlay(histograms), title=title, xlim=(edges[0], edges[-1]), ylim=(0.0, 1.1 * top),
                       legend=point == points[0], xlabel=LOG_NORM.pprint_label, ylabel=CHANNELS.pprint_label)
        # Inside, at the top left (norms rarely come that small): a legend beside one panel would narrow it alone.
        panels.append(style(panel, {"legend_position": "top_left"}))
    end = share.sel(point="pretrain")
    mesh = style(hv.QuadMesh((_plr_edges(plr), edges, end.values.T), [PLR, LOG_NORM], CHANNELS),
                 {"cmap": "Blues", "colorbar": True})
    # The mesh fills the panel, so the regimes are named and their boundaries drawn, not shaded.
    overview = vs_plr(tree, [mesh], edges, title="Channel norms vs PLR, end of pre-training", ylabel=LOG_NORM,
                      shade=False, ylim=(edges[0], edges[-1] + 0.15 * (edges[-1] - edges[0])), legend=False)
    return _layout([*panels, overview], "Weight-group norm histograms")


def _representatives(tree: xr.DataTree, plr: np.ndarray) -> list[float]:
    """One PLR from the middle of each regime span (the smallest, middle and largest without regimes)."""
    spans = regime_spans(tree)
    if not spans:
        return sorted({float(plr[0]), float(plr[len(plr) // 2]), float(plr[-1])})
    inside = [plr[(plr >= start) & (plr < stop)] for _, start, stop in spans]
    return [float(span[len(span) // 2]) for span in inside]


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
    suffix = f" (FT with FLR {float(stages[1][0].flr):.3g} dashed)" if len(stages) > 1 else ""
    return _layout(panels, "Training curves" + suffix)


HESSIAN_TRACE = hv.Dimension("hessian_trace", label="Hessian trace of the train loss (SI group)")
TEST_ERROR = hv.Dimension("test_error", label="test error", unit="%")
LOG_PLR = hv.Dimension("log10_plr", label="log10 PLR")


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
    result = _analysis(tree, "threshold", ["epochs_to_converge", "bracket_low", "bracket_high", "threshold"])
    loss = tree["analysis/threshold"].attrs.get("loss", 1e-2)
    budget = float(tree.attrs["spec"]["sweep"]["pretrain_epochs"])
    epochs = result.epochs_to_converge.transpose("plr", "seed")
    plr = epochs.plr.values
    every = epochs.notnull().all("seed").values
    mean, std = epochs.mean("seed").values, epochs.std("seed").fillna(0).values
    dim = hv.Dimension("epochs_to_converge", label=f"epochs to train loss < {loss:g}", unit="epochs")
    shown = np.where(every, mean, np.nan)  # a mean only where every seed converged
    band = style(hv.Spread((plr[every], mean[every], std[every]), PLR, [dim, SPREAD]),
                 {"color": "#4C72B0", "alpha": 0.25}, {"line_alpha": 0})
    runs = np.repeat(plr, epochs.sizes["seed"])
    values = epochs.values.ravel()
    seeds = style(hv.Scatter((runs[np.isfinite(values)], values[np.isfinite(values)]), PLR, dim, label="seeds"),
                  {"color": "#222222", "alpha": 0.5}, {"size": 5}, {"s": 12})
    never = runs[~np.isfinite(values)]
    missed = style(hv.Scatter((never, np.full(never.size, budget)), PLR, dim,
                              label=f"not converged in {budget:g} epochs"),
                   {"color": "#C44E52"}, {"size": 8, "marker": "triangle"}, {"s": 30, "marker": "^"})
    marks = []
    lo, hi = float(result.bracket_low), float(result.bracket_high)
    if np.isfinite(lo) and np.isfinite(hi):
        marks.append(style(hv.VSpan(lo, hi), {"alpha": 0.15}, {"color": "#55A868", "line_alpha": 0},
                           {"facecolor": "#55A868", "edgecolor": "none"}))
        marks.append(style(hv.VLine(float(result.threshold)), {"color": "#555555"},
                           {"line_dash": "dashed", "line_width": 1.5}, {"linestyle": "--", "linewidth": 1.2}))
    ylim = _limits(np.append(values, budget), log=True)
    edges = _plr_edges(np.asarray(tree.attrs["spec"]["sweep"]["plr"]))
    title = (f"Threshold {float(result.threshold):.3g} (log10 ± {(math.log10(hi) - math.log10(lo)) / 2:.2g})"
             if np.isfinite(lo * hi) else "The grid does not bracket the threshold")
    return framed(hv.Overlay([*marks, band, seeds, missed, curve(plr, shown, PLR, dim, "mean ± std", "#4C72B0")]),
                  title=title, logx=True, logy=True, xlim=(edges[0], edges[-1]), ylim=ylim,
                  xlabel=PLR.pprint_label, ylabel=dim.pprint_label)


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
    plr_labels = [f"{p:.3g}" for p in acc.plr.values]
    plr_dim = hv.Dimension("plr", label="first-stage PLR", values=plr_labels)
    stage_dim = hv.Dimension("stage", label="stage", values=stages)  # values: the order of the bars
    rows = [(p, s, mean[i, j], std[i, j]) for i, p in enumerate(plr_labels) for j, s in enumerate(stages)]
    bars = hv.Bars(rows, [plr_dim, stage_dim], [TEST_ACC, SPREAD])
    palette = dict(zip(stages, ["#DD8452", "#55A868", "#4C72B0"]))
    style(bars, {"color": hv.dim("stage").categorize(palette)}, {"tools": ["hover"]}, {})
    switch = tree.attrs["spec"]["sweep"]["pretrain_switch"]
    # Bars start at 0: a bar's length is its accuracy.
    return framed(bars, title=f"Switch to ELR {switch['plr']:g} at epoch {switch['epoch']:g}",
                  ylim=(0.0, min(100.0, _limits(mean)[1])), legend=False,
                  xlabel=plr_dim.label, ylabel=TEST_ACC.pprint_label)


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
    trace = _analysis(tree, "sharpness", ["hessian_trace"]).hessian_trace
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
                f"{LOSS_FACTOR:g} of the median over all fine-tuned solutions are shown, so that sharpness is compared "
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
    title = (f"FT solutions, train loss ×{loss_factor:g} of {points.median_train_loss:.2g}: "
             f"{shown.sizes['solution']} of {total}")
    positive = points.hessian_trace.values[points.hessian_trace.values > 0]
    limits = {"xlim": _limits(positive, log=True)} if positive.size else {}
    return framed(scatter, title=title, logx=True, legend=False, **limits,
                  xlabel=HESSIAN_TRACE.pprint_label, ylabel=TEST_ERROR.pprint_label)


SCAN_ROUND = hv.Dimension("round", label="round that added the PLR")
SCAN_LOG_PLR = hv.Dimension("log10_plr_estimate", label="estimate (log10 PLR)")
SCAN_COLORS = {"1|2": "#4C72B0", "2A|2B": "#DD8452", "recommended": "#2E8B57"}


@figure("scan", needs=("scan",), title="Scan: fine-tuned accuracy vs PLR, round by round",
        caption="Left: the best fine-tuned test accuracy (over the scan's FLRs, mean over seeds) of every PLR "
                "`lrscan scan` trained, each dot coloured by the round that added it, and the PT accuracy (grey, "
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
    result = _analysis(tree, "scan", ["score", "round", "pt_test_acc_mean", "regime_mode", "estimate_log10",
                                      "bracket_low_log10", "bracket_high_log10", "history_log10",
                                      "history_uncertainty_log10"])
    plr, score = result.plr.values, percent(result.score)
    pt = percent(result.pt_test_acc_mean.mean("seed"))
    marks = []
    for label, start, stop in _spans(result):
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
    line = style(hv.Curve((plr, score), PLR, TEST_ACC, label="FT, best FLR"), {"color": "#555555"},
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
    return _layout([accuracy, history], "Scan: fine-tuned accuracy vs PLR, round by round")


# --- writing --------------------------------------------------------------------------------


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
    result = _analysis(tree, "threshold", ["threshold", "log10_halfwidth", "bracket_low", "bracket_high"])
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
    metrics = _analysis(tree, "metrics", wanted)
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


def save_html(obj, path: str | os.PathLike, title: str, caption: str) -> Path:
    """Write a figure as a standalone HTML page: Bokeh, its JavaScript inline, so it loads nothing.

    The page is put together here rather than by ``bokeh.io.save``, whose resources also list
    the external files of every model class an imported package registered (Panel's module
    shim, a path relative to a Panel server), which a standalone page cannot load.
    """
    from bokeh.embed import components
    from bokeh.resources import Resources

    script, div = components(hv.render(obj, backend="bokeh"))
    resources = Resources(mode="inline", components=["bokeh", "bokeh-widgets"])  # a layout title is a Div
    code = "\n".join(f"<script>{js}</script>" for js in resources.js_raw)
    sheets = "\n".join(f"<style>{css}</style>" for css in resources.css_raw)
    Path(path).write_text(f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
{code}
{sheets}
<style>body{{font-family:sans-serif;margin:1em 2em;color:#222}} p{{max-width:{2 * PANEL_WIDTH}px}}</style>
</head><body><h1>{html.escape(title)}</h1><p>{html.escape(caption)}</p>
{div}
{script}
</body></html>
""", encoding="utf-8")
    return Path(path)


def save_png(obj, path: str | os.PathLike) -> Path:
    """Write a figure as a PNG (matplotlib, Agg) of exactly :func:`figure_size` pixels.

    Each panel is drawn into its cell of one constrained-layout figure, which fits titles,
    labels and colour bars into the fixed size (HoloViews' own matplotlib layouts do not).
    """
    from matplotlib.figure import Figure as MplFigure

    panels = list(obj) if isinstance(obj, hv.Layout) else [obj]
    rows, cols = grid_shape(len(panels))
    width, height = figure_size(obj)
    # A bare Figure, not pyplot: no GUI backend, no global figure list; savefig draws with Agg.
    fig = MplFigure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    renderer = hv.renderer("matplotlib")
    for axis, panel in zip(axes, panels):
        _colorbars_to_layout(renderer.get_plot(panel, fig=fig, axis=axis), fig, axis)
    for axis in axes[len(panels):]:
        axis.set_visible(False)
    if isinstance(obj, hv.Layout):
        fig.suptitle(obj.opts.get(backend="matplotlib").kwargs.get("title", ""))
    fig.savefig(str(path), dpi=DPI, facecolor="white")
    return Path(path)


def _colorbars_to_layout(plot, fig, axis) -> None:
    """HoloViews places a colour bar by hand beside its axes; hand it to the constrained layout instead."""
    for sub in [plot, *(getattr(plot, "subplots", None) or {}).values()]:
        cbar = sub.handles.get("cbar")
        if cbar is not None:
            label = cbar.ax.get_ylabel()
            cbar.ax.remove()
            fig.colorbar(sub.handles["artist"], ax=axis, label=label)


@dataclass(frozen=True)
class Written:
    """What :func:`write_figures` wrote: the index page, each figure's files, and what it skipped and why."""

    index: Path
    figures: dict[str, tuple[Path, Path]]
    skipped: dict[str, str]


def write_figures(tree: xr.DataTree, out: str | os.PathLike, store_name: str = "") -> Written:
    """Write every figure the store can show as ``<name>.html`` and ``<name>.png``, and ``index.html``.

    Parameters
    ----------
    tree
        An opened store with analyses (``lrscan analyze``).
    out
        Directory to write into (created).
    store_name
        How the index names the store (e.g. its path).

    Returns
    -------
    Written
        The index path, ``{name: (html, png)}``, and ``{name: reason}`` for figures skipped.

    Raises
    ------
    LrscanError
        If the store has no analyses yet.
    """
    if not stored_analyses(tree):
        raise LrscanError(f"the store has no analyses yet; run `lrscan analyze {store_name or 'STORE'}` first")
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise LrscanError(f"cannot write figures to {out}: {err.strerror}") from None
    written, skipped = {}, {}
    for name, fig in FIGURES.items():
        reason = fig.missing(tree)
        if reason:
            skipped[name] = reason
            continue
        obj = fig.func(tree)
        written[name] = (save_html(obj, out / f"{name}.html", fig.title, fig.caption),
                         save_png(obj, out / f"{name}.png"))
    index = out / "index.html"
    index.write_text(_index_page(tree, store_name, written, skipped), encoding="utf-8")
    return Written(index, written, skipped)


INDEX_STYLE = """body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
section{margin:2em 0} img{border:1px solid #ddd;max-width:100%}
th{text-align:left;padding-right:1em;font-weight:normal;color:#555} td{font-family:monospace}"""


def _index_page(tree: xr.DataTree, store_name: str, written: dict, skipped: dict) -> str:
    """The index: summary, a section per figure (thumbnail, caption, links), skipped figures, the spec."""
    esc = html.escape
    sections = "".join(
        f"<section><h2>{esc(FIGURES[name].title)}</h2><p>{esc(FIGURES[name].caption)}</p>"
        f"<a href='{page.name}'><img src='{png.name}' alt='{esc(FIGURES[name].title)}'></a>"
        f"<p><a href='{page.name}'>interactive ({page.name})</a> · <a href='{png.name}'>image ({png.name})</a></p>"
        "</section>"
        for name, (page, png) in written.items())
    missing = "".join(f"<li>{esc(FIGURES[name].title)}: {esc(reason)}</li>" for name, reason in skipped.items())
    spec_rows = "".join(f"<tr><th>{esc(table)}.{esc(key)}</th><td>{esc(json.dumps(value))}</td></tr>"
                        for table, fields in tree.attrs["spec"].items() for key, value in fields.items())
    title = f"lrscan figures: {store_name}" if store_name else "lrscan figures"
    made = f"created {tree.attrs.get('created', '?')}, lrscan {tree.attrs.get('lrscan_version', '?')}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title><style>{INDEX_STYLE}</style></head>
<body><h1>{esc(title)}</h1>
<p id="summary">{esc(summary(tree))}</p>
{sections}
{f'<h2>Not drawn</h2><ul>{missing}</ul>' if missing else ''}
<h2>Spec</h2><p>{esc(made)}</p>
<table>{spec_rows}</table>
</body></html>
"""

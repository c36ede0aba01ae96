"""The look every figure shares: dimensions, colours, number formatting, panels against PLR, layouts.

Both plotting backends are loaded here (Bokeh for HTML, matplotlib for PNG); every helper sets
options for both, so a figure is written once. Panels against PLR put PLR on a log axis and mark
the regimes of the ``regimes`` analyzer: each PLR's most common regime over seeds is shaded and
named at the top, and the regime boundaries (geometric mean over seeds) are dashed lines.
"""

from __future__ import annotations

import math

import holoviews as hv
import matplotlib
import numpy as np
import xarray as xr

from lrscan.analyze.solutions import default_pairs
from lrscan.plot.numbers import JS_FORMAT, fmt
from lrscan.plot.registry import stored_analyses


def _load_backends() -> None:
    """Load both plotting backends without changing the one a notebook chose."""
    current = hv.Store.current_backend
    hv.renderer("bokeh")
    hv.renderer("matplotlib")
    hv.Store.set_current_backend(current)


_load_backends()

# Size of one panel: pixels of the PNG at DPI (the default; ``lrscan plot --dpi`` scales it), and of the
# Bokeh plot. Two panels a row fit a 1280-px window, legends included (they sit inside the width).
PANEL_WIDTH, PANEL_HEIGHT, DPI = 560, 420, 100
# Barriers are drawn on a log axis, where 0 has no place: values below this (in %) sit on it.
BARRIER_FLOOR = 0.01
REGIME_COLORS = {"1": "#4C72B0", "2A": "#55A868", "2": "#CCB974", "2?": "#A0A0A0", "2B": "#DD8452", "3": "#C44E52"}
SHADING = ("Shading: each PLR's most common regime over seeds (1 convergence, 2A / 2B chaotic equilibrium, "
           "2? undecided, 3 divergence); dashed lines: the regime boundaries, geometric mean over seeds.")

PLR = hv.Dimension("plr", label="PLR (effective learning rate)")
FLR = hv.Dimension("flr", label="FLR (fine-tuning learning rate)")
SWA_K = hv.Dimension("swa", label="K (checkpoints averaged)")
EPOCH = hv.Dimension("epoch", label="epoch")
ALPHA = hv.Dimension("alpha", label="α along the path (0 = first solution, 1 = second)")
TEST_ACC = hv.Dimension("test_acc", label="test accuracy", unit="%")
TRAIN_LOSS = hv.Dimension("train_loss", label="train loss (cross-entropy)", unit="nats")
SPREAD = hv.Dimension("spread", label="std", unit="%")
SE = hv.Dimension("se", label="standard error", unit="%")
ANGLE = hv.Dimension("angle", label="angle between solutions", unit="rad")
TRAIN_BARRIER = hv.Dimension("train_barrier", label="train error barrier", unit="%")
TEST_BARRIER = hv.Dimension("test_barrier", label="test error barrier", unit="%")
FEATURE_ACC = hv.Dimension("feature_acc", label="single-feature test accuracy", unit="%")
BAND_ACC = hv.Dimension("band_acc", label="test accuracy on the band", unit="%")
LOG_NORM = hv.Dimension("log10_norm", label="log10 of channel norm ‖W[i]‖ / ρ")
CHANNELS = hv.Dimension("channels", label="share of channels", unit="%")
SPARSITY = hv.Dimension("sparsity", label="sparsity index (1 = one feature)")
PAIR = hv.Dimension("pair", label="pair of solutions")


def style(obj, common: dict | None = None, bokeh: dict | None = None, mpl: dict | None = None):
    """Set plot and style options: ``common`` for both backends, ``bokeh`` / ``mpl`` for one each."""
    common = common or {}
    obj.opts(**common, **(bokeh or {}), backend="bokeh")
    obj.opts(**common, **(mpl or {}), backend="matplotlib")
    return obj


def filled(obj, color: str, alpha: float, bokeh: dict | None = None, mpl: dict | None = None):
    """An area (a histogram's bars, a band) filled and edged in ``color`` at ``alpha``, alike in both backends.

    Each backend by its own names: matplotlib fills an area with ``facecolor``, whose default (the
    colour cycle) would win over a ``color`` option, so that the PNG drew other colours than the HTML.
    """
    return style(obj, {"alpha": alpha}, {"fill_color": color, "line_color": color, **(bokeh or {})},
                 {"facecolor": color, "edgecolor": color, **(mpl or {})})


def colors(n: int, cmap: str = "viridis") -> list[str]:
    """``n`` colours spread over a colormap (its bright yellow end left out: unreadable on white)."""
    colormap = matplotlib.colormaps[cmap]
    return [matplotlib.colors.to_hex(colormap(x)) for x in np.linspace(0, 0.85, n)]


def curve(x, y, kdim, vdim, label: str, color: str, dashed: bool = False, hover: dict | None = None,
          dotted: bool = False) -> hv.Overlay:
    """A line with a marker at every point, so sparse grids read as grids; ``dashed`` or ``dotted`` lines.

    ``hover`` adds constant columns to the markers (``{dimension: value}``, e.g. the FLR of the
    line), which their hover tool shows beside the point's coordinates; the line has none, so a
    point is reported once.
    """
    extra = [hv.Dimension(d) if isinstance(d, str) else d for d in (hover or {})]
    columns = [np.full(np.shape(x), value, dtype=object if isinstance(value, str) else float)
               for value in (hover or {}).values()]
    dash = "dotted" if dotted else "dashed" if dashed else "solid"
    line = style(hv.Curve((x, y), kdim, vdim, label=label), {"color": color},
                 {"line_width": 2, "line_dash": dash, "tools": []},
                 {"linewidth": 2, "linestyle": {"dotted": ":", "dashed": "--", "solid": "-"}[dash]})
    points = style(hv.Scatter((x, y, *columns), kdim, [vdim, *extra]), {"color": color}, {"size": 5}, {"s": 16})
    return line * points


# Elements a hover tool reports on, and the columns of each that are not the reader's (segment ends).
HOVERED = (hv.Scatter, hv.Curve, hv.Segments, hv.Bars, hv.Spread)  # not ErrorBars: Bokeh gives them no renderer to hover


def hover_options(element) -> dict:
    """Bokeh options of a hover tool on ``element``: each of its dimensions by label, numbers by :func:`fmt`."""
    from bokeh.models import CustomJSHover

    tooltips, formatters = [], {}
    for dim in element.dimensions():
        if dim.name.endswith("_end"):  # the far end of a segment: its start says where it is
            continue
        values = element.dimension_values(dim)
        field = "@{%s}" % dim.name
        if np.asarray(values).dtype.kind in "fiu":
            formatters[field] = CustomJSHover(code=JS_FORMAT)
            tooltips.append((dim.pprint_label, field + "{custom}"))
        else:
            tooltips.append((dim.pprint_label, field))
    return {"tools": ["hover"], "hover_tooltips": tooltips, "hover_formatters": formatters}


def with_hover(panel):
    """``panel`` with a hover tool on each of its data elements that sets no tools of its own.

    Histograms and meshes get HoloViews' own tooltips (their columns are bins, not dimensions).
    """
    elements = list(panel) if isinstance(panel, hv.Overlay) else [panel]
    for element in elements:
        if "tools" in element.opts.get("plot", backend="bokeh").kwargs:
            continue
        if isinstance(element, HOVERED):
            element.opts(**hover_options(element), backend="bokeh")
        elif isinstance(element, (hv.Histogram, hv.QuadMesh)):
            element.opts(tools=["hover"], backend="bokeh")
    return panel


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


def limits(values, log: bool = False, floor: float | None = None) -> tuple[float, float]:
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


def plr_edges(plr: np.ndarray) -> np.ndarray:
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
    return [] if regimes is None else spans_of(regimes)


def spans_of(regimes: xr.Dataset) -> list[tuple[str, float, float]]:
    labels = [str(v) for v in regimes.regime_mode.values]
    edges = plr_edges(regimes.plr.values)
    spans = []
    for i, label in enumerate(labels):
        if spans and spans[-1][0] == label:
            spans[-1] = (label, spans[-1][1], edges[i + 1])
        else:
            spans.append((label, edges[i], edges[i + 1]))
    return spans


def regime_marks(tree: xr.DataTree, label_y: float, *, shade: bool = True, below: float | None = None) -> list:
    """Elements marking the regimes on a panel against PLR.

    Parameters
    ----------
    tree
        An opened store; without a ``regimes`` analysis there is nothing to mark.
    label_y
        Height (in the panel's data units) at which each regime is named.
    below
        A second height: the name of a span too narrow to hold it beside its neighbour's goes
        there, so that names do not overlap (default: ``label_y``).
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
    marks, spans = [], spans_of(regimes)
    decades = math.log10(spans[-1][2] / spans[0][1]) if spans else 1.0
    lower = False
    for label, start, stop in spans:
        if shade:
            color = REGIME_COLORS.get(label, "gray")
            marks.append(style(hv.VSpan(start, stop), {"alpha": 0.13}, {"color": color, "line_alpha": 0},
                               {"facecolor": color, "edgecolor": "none"}))
        # A name takes about a tenth of the axis: narrower spans alternate heights, the next one
        # starting high again once a span is wide enough.
        lower = not lower and math.log10(stop / start) < 0.1 * decades and below is not None
        text = hv.Text(math.sqrt(start * stop), below if lower else label_y, label)
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
    lo, hi = ylim or limits(values, log=logy, floor=floor)
    def height(share: float) -> float:
        return lo ** (1 - share) * hi ** share if logy else lo + share * (hi - lo)

    edges = plr_edges(np.asarray(tree.attrs["spec"]["sweep"]["plr"]))
    panel = hv.Overlay([*regime_marks(tree, height(0.93), shade=shade, below=height(0.86)), *elements])
    return framed(panel, title=title, logx=True, logy=logy, xlim=(edges[0], edges[-1]), ylim=(lo, hi),
                  legend=legend, xlabel=PLR.pprint_label, ylabel=ylabel.pprint_label)


def framed(panel, *, title: str, legend: bool = True, **plot) -> hv.Overlay:
    """Size, title, legend and hover tools of one panel, alike in both backends."""
    # legend_limit (an overlay's option): HoloViews drops a legend of more than 25 elements, labelled or not.
    limit = {"legend_limit": 200} if isinstance(panel, hv.Overlay) else {}
    return style(with_hover(panel), {"title": title, "show_legend": legend, **limit, **plot},
                 {"width": PANEL_WIDTH, "height": PANEL_HEIGHT, "legend_position": "right",
                  "legend_opts": {"label_text_font_size": "8pt"}},
                 {"aspect": "auto", "legend_position": "right", "legend_opts": {"fontsize": 7}})


def grid_shape(n_panels: int) -> tuple[int, int]:
    """(rows, columns) of a figure of ``n_panels`` panels: two a row, so that a row fits a 1280-px window."""
    cols = min(n_panels, 2)
    return math.ceil(n_panels / cols), cols


def layout(panels: list, title: str) -> hv.Layout:
    """Panels side by side (see :func:`grid_shape`), with one title."""
    rows, cols = grid_shape(len(panels))
    layout = hv.Layout(panels).cols(cols)
    # The matplotlib options serve HoloViews' own layouts (a notebook); save_png lays panels out itself.
    return style(layout, {"title": title}, {"shared_axes": False},
                 {"sublabel_format": "", "fig_inches": (cols * PANEL_WIDTH / DPI, rows * PANEL_HEIGHT / DPI)})


def figure_size(obj, dpi: float = DPI) -> tuple[int, int]:
    """Pixel size (width, height) of the PNG of a figure at ``dpi``."""
    rows, cols = grid_shape(len(obj) if isinstance(obj, hv.Layout) else 1)
    return round(cols * PANEL_WIDTH * dpi / DPI), round(rows * PANEL_HEIGHT * dpi / DPI)



def solution_name(label: str) -> str:
    """How a solution label reads in a figure: ``ft=0.001`` -> ``FT (FLR 0.001)``."""
    kind, _, value = str(label).partition("=")
    return {"pt": "PT", "ft": f"FT (FLR {fmt(value)})", "swa": f"SWA (K = {fmt(value)})"}.get(kind, str(label))


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



def pair_name(pair: str) -> str:
    """How a pair label reads in a legend: ``ft=0.001~swa=5`` -> ``FT 0.001 ↔ SWA 5``."""
    return " ↔ ".join(f"{kind.upper()} {fmt(value)}".strip() for kind, _, value in
                      (end.partition("=") for end in str(pair).split("~")))


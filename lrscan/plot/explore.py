"""An interactive explorer of a store: HoloViews DynamicMaps on a Panel (Bokeh) server.

Widgets pick a PLR, FLR, seed and epoch; linked views follow them: test accuracy against PLR
at the chosen epoch (the chosen PLR and seed marked), the chosen run's training curves, the
error along the paths between its solutions, and its single-feature (or frequency-band)
accuracies. The store is read lazily: opening it reads coordinates only, and each view
reads the few chunks of the run it shows when it is drawn.
"""

from __future__ import annotations

import functools
import signal
import socket

import holoviews as hv
import numpy as np
import panel as pn
import xarray as xr

from lrscan.analyze.solutions import label
from lrscan.errors import LrscanError
from lrscan.plot.defaults import DEFAULT_PORT
from lrscan.plot.numbers import fmt
from lrscan.plot.registry import stored_analyses
from lrscan.plot.styles import (
    ALPHA, BAND_ACC, EPOCH, FEATURE_ACC, PANEL_HEIGHT, PANEL_WIDTH, PLR, TEST_ACC, colors, curve, framed, hover_options,
    pair_name, percent, solution_name, study_solutions, style, vs_plr,
)

LOSS = hv.Dimension("loss", label="loss (cross-entropy)", unit="nats")
ACCURACY = hv.Dimension("accuracy", label="accuracy", unit="%")
ERROR = hv.Dimension("error", label="error", unit="%")
# The analyses whose bars the explorer shows for a run: variable, category dimension, its axis.
BARS = {"features": ("feature_acc", "feature", FEATURE_ACC, "Single-feature test accuracy"),
        "frequency": ("test_acc", "band", BAND_ACC, "Test accuracy per frequency band")}


def check_port(port: int, address: str = "localhost") -> None:
    """Raise :class:`LrscanError` unless ``port`` is free to listen on."""
    with socket.socket() as sock:
        # As the server will: SO_REUSEADDR, so a port left in TIME_WAIT by a stopped server counts as free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError as err:
            raise LrscanError(f"port {port} is not free ({err.strerror}); pick another with --port") from None


def _analysis(tree: xr.DataTree, name: str) -> xr.Dataset | None:
    """A persisted analysis, lazily, or None."""
    if name in stored_analyses(tree):
        return tree[f"analysis/{name}"].to_dataset()
    return None


class Views:
    """The explorer's views of one store, each a function of the widget values it depends on.

    Parameters
    ----------
    tree
        An opened store (lazy).
    """

    def __init__(self, tree: xr.DataTree):
        self.tree = tree
        self.pt = tree["pretrain/metrics"].to_dataset()
        self.ft = tree["finetune/metrics"].to_dataset() if "finetune" in tree.children else None
        self.pt_end = float(self.pt.epoch[-1])
        # Only what a run's views show is read, once per run: the epoch widget re-reads nothing.
        self.run = functools.lru_cache(maxsize=64)(self._run)

    def _run(self, plr: float, flr: float | None, seed: int) -> tuple[xr.Dataset, xr.Dataset | None]:
        """The metrics of one PT run and of its FT run with ``flr``, loaded."""
        names = ["train_loss", "test_loss", "train_acc", "test_acc"]
        pt = self.pt[names].sel(plr=plr, seed=seed).load()
        ft = None
        if self.ft is not None and flr is not None:
            ft = self.ft[names].sel(plr=plr, flr=flr, seed=seed).load()
        return pt, ft

    def overview(self, plr: float, flr: float | None, seed: int, epoch: float) -> hv.Overlay:
        """Test accuracy against PLR at ``epoch`` (PT, or FT with ``flr`` after the branch point)."""
        if epoch > self.pt_end and self.ft is not None:
            acc, stage = self.ft.test_acc.sel(flr=flr, epoch=epoch), f"FT with FLR {fmt(flr)}"
        else:
            acc, stage = self.pt.test_acc.sel(epoch=min(epoch, self.pt_end), method="nearest"), "PT"
        acc = percent(acc.transpose("plr", "seed").load())
        grid = self.pt.plr.values
        mean = curve(grid, np.nanmean(acc, axis=1), PLR, TEST_ACC, "mean over seeds", "#4C72B0")
        chosen = list(self.pt.seed.values).index(seed)
        points = style(hv.Scatter((grid, acc[:, chosen]), PLR, TEST_ACC, label=f"seed {seed}"),
                       {"color": "#DD8452"}, {"size": 8}, {"s": 30})
        marker = style(hv.VLine(plr), {"color": "#DD8452"}, {"line_width": 2}, {"linewidth": 2})
        return vs_plr(self.tree, [mean, points, marker], acc, ylabel=TEST_ACC,
                      title=f"Test accuracy vs PLR at epoch {fmt(epoch)} ({stage})")

    def curves(self, plr: float, flr: float | None, seed: int, epoch: float, kind: str) -> hv.Overlay:
        """The run's train and test ``kind`` ("loss" or "acc") against epoch: PT solid, FT dashed."""
        pt, ft = self.run(plr, flr, seed)
        dim = LOSS if kind == "loss" else ACCURACY
        lines = []
        for stage, dashed in ((pt, False), (ft, True)):
            if stage is None:
                continue
            for split, color in (("train", "#4C72B0"), ("test", "#C44E52")):
                y = stage[f"{split}_{kind}"].values
                y = np.maximum(y, 1e-8) if kind == "loss" else percent(y)  # a loss of 0 has no log
                name = f"{split}" + (f" (FT, FLR {fmt(flr)})" if dashed else " (PT)")
                lines.append(style(hv.Curve((stage.epoch.values, y), EPOCH, dim, label=name), {"color": color},
                                   {"line_dash": "dashed" if dashed else "solid", "line_width": 2},
                                   {"linestyle": "--" if dashed else "-"}))
        lines.append(style(hv.VLine(epoch), {"color": "#888888"}, {"line_dash": "dotted"}, {"linestyle": ":"}))
        run = f"PLR {fmt(plr)}, seed {seed}"
        return framed(hv.Overlay(lines), title=f"Run {run}: {dim.label}", logy=kind == "loss",
                      ylabel=dim.pprint_label, xlabel=EPOCH.pprint_label)

    def paths(self, plr: float, seed: int) -> hv.Overlay:
        """Train and test error along the straight path between each pair of the run's solutions."""
        barriers = _analysis(self.tree, "barriers")[["train_error", "test_error"]].sel(plr=plr, seed=seed).load()
        angles = _analysis(self.tree, "angles")
        angle = angles.angle.sel(plr=plr, seed=seed).load() if angles is not None else None
        lines = []
        for pair, color in zip(barriers.pair.values, colors(barriers.sizes["pair"], "plasma")):
            name = pair_name(pair) + (f", {float(angle.sel(pair=pair)):.2f} rad apart" if angle is not None else "")
            path = barriers.sel(pair=pair)
            lines.append(curve(path.alpha.values, path.test_error.values, ALPHA, ERROR, name, color))
            lines.append(curve(path.alpha.values, path.train_error.values, ALPHA, ERROR, "", color, dashed=True))
        return framed(hv.Overlay(lines), title=f"Error between solutions (test solid, train dashed), "
                                               f"PLR {fmt(plr)}, seed {seed}", ylabel=ERROR.pprint_label)

    def numbers(self, plr: float, seed: int) -> str:
        """The run's regime, and each pair's angle and barriers, as Markdown: the numbers behind the views."""
        lines = [f"**Run** PLR {fmt(plr)}, seed {seed}"]
        regimes = _analysis(self.tree, "regimes")
        if regimes is not None:
            lines.append(f"**regime** {regimes.regime.sel(plr=plr, seed=seed).values.item()}")
        angles, barriers = _analysis(self.tree, "angles"), _analysis(self.tree, "barriers")
        if angles is not None and barriers is not None:
            angle = angles.angle.sel(plr=plr, seed=seed).load()
            barrier = barriers[["train_barrier", "test_barrier"]].sel(plr=plr, seed=seed).load()
            lines += [f"**{pair_name(pair)}**: angle {fmt(float(angle.sel(pair=pair)))} rad, "
                      f"test barrier {fmt(float(barrier.test_barrier.sel(pair=pair)))}%, "
                      f"train barrier {fmt(float(barrier.train_barrier.sel(pair=pair)))}%"
                      for pair in map(str, angle.pair.values) if pair in set(map(str, barrier.pair.values))]
        return "  \n".join(lines)

    def bars(self, plr: float, flr: float | None, seed: int, analysis: str) -> hv.Bars:
        """The run's PT, SWA and FT (``flr``) accuracies per category of ``analysis`` (see ``BARS``)."""
        variable, category, dim, title = BARS[analysis]
        result = _analysis(self.tree, analysis)
        wanted = [s for s in study_solutions(self.tree) if not s.startswith("ft=")]
        wanted += [label("ft", flr)] if flr is not None else []
        stored = set(map(str, result.solution.values))
        acc = result[variable].sel(plr=plr, seed=seed, solution=[s for s in wanted if s in stored]).load()
        rows = [(str(c), solution_name(s), 100 * float(acc.sel(solution=s, **{category: c})))
                for c in acc[category].values for s in map(str, acc.solution.values)]
        names = list(dict.fromkeys(name for _, name, _ in rows))
        palette = dict(zip(names, colors(len(names), "plasma")))
        # The solutions' order, in each group of bars as in the legend.
        bars = hv.Bars(rows, [category, hv.Dimension("solution", values=names)], dim)
        # One label per category on the axis, the solutions told apart by colour in a legend: nested
        # "category, solution" labels overlap as soon as there are more than a few categories. Grouped
        # bars are coloured by their group dimension through ``cmap`` (HoloViews then draws the legend;
        # a ``color`` expression would colour them in row order, not by solution, and draw none).
        # The height of the other panels, which holds every tool of the toolbar.
        return style(bars, {"title": f"{title}, PLR {fmt(plr)}, seed {seed}", "ylim": (0, 100), "show_legend": True},
                     {"cmap": palette, "width": 2 * PANEL_WIDTH, "height": PANEL_HEIGHT, "multi_level": False,
                      "legend_position": "right", **hover_options(bars)}, {})


def live(view, **widgets) -> hv.DynamicMap:
    """A view that follows ``widgets``, each frame with axes of its own data's range.

    A DynamicMap keeps the ranges of its first frame unless its elements are *framewise*,
    so that curves would run off the axes when the selection changes. Not *axiswise* as well:
    HoloViews then computes an overlay's ranges once, and the served axes keep the first frame's.
    """
    def frame(**values):
        framewise = {"framewise": True, "backend": "bokeh"}
        return view(**values).map(lambda e: e.opts(**framewise), [hv.Element]).opts(**framewise)

    return hv.DynamicMap(pn.bind(frame, **widgets))


def progress(tree: xr.DataTree) -> str | None:
    """What the explorer says of a store whose training is not finished, or None when it is."""
    done = tree["pretrain/metrics"]["done"].values.astype(bool) if "done" in tree["pretrain/metrics"] else None
    if done is None or done.all():
        return None
    if not done.any():
        return ("No run of this store has finished pre-training yet, so there is nothing to show: "
                "`lrscan train` fills the store, and the views appear as its runs finish (reload the page).")
    return (f"{int(done.sum())} of {done.size} pre-training runs have finished: the others show as gaps "
            "until `lrscan train` completes them (reload the page to see more).")


# The widgets the page's URL keeps (?plr=...&flr=...&seed=...&epoch=...), so that a view can be shared.
IN_URL = ("plr", "flr", "seed", "epoch")


def make_app(tree: xr.DataTree) -> pn.viewable.Viewable:
    """The explorer of a store as a Panel app (serve it, or show it in a notebook).

    Parameters
    ----------
    tree
        An opened store (:func:`lrscan.open`); nothing is read until a view is drawn.

    Returns
    -------
    pn.viewable.Viewable
        Widgets ``PLR``, ``FLR`` (with fine-tuning data), ``seed``, ``epoch``, the run's numbers
        (regime, angles, barriers) and the linked views, whose axes follow the selection; a
        message instead of the views for a store with no finished run, and above them for a
        store still training. Served, the widgets' values are kept in the page's URL.
    """
    spec = tree.attrs["spec"]["sweep"]
    header = pn.pane.Markdown(f"## lrscan explore: {spec['model']} on {spec['dataset']}\n"
                              "Pick a run with the widgets: every view follows them.", sizing_mode="stretch_width")
    # Drawn when the page is (lazy): opening the app reads coordinates only, not even how far training got.
    body = pn.param.ParamFunction(pn.bind(_body, tree), lazy=True, sizing_mode="stretch_width")
    return pn.Column(header, body, sizing_mode="stretch_width")


def _body(tree: xr.DataTree) -> pn.viewable.Viewable:
    """The explorer's widgets and views (see :func:`make_app`), or only a message when nothing has trained."""
    message = progress(tree)
    if message and not tree["pretrain/metrics"]["done"].values.any():
        return pn.pane.Alert(message, alert_type="warning", sizing_mode="stretch_width")
    views = Views(tree)
    pt, ft = views.pt, views.ft
    plr = pn.widgets.DiscreteSlider(label="PLR", options={fmt(p): float(p) for p in pt.plr.values}, width=260)
    flr = pn.widgets.Select(label="FLR", options={fmt(f): float(f) for f in ft.flr.values}, width=160) if ft else None
    seed = pn.widgets.Select(label="seed", options=[int(s) for s in pt.seed.values], width=120)
    epochs = np.union1d(pt.epoch.values, ft.epoch.values if ft else [])
    epoch = pn.widgets.DiscreteSlider(label="epoch", options={fmt(e): float(e) for e in epochs},
                                      value=float(epochs[-1]), width=360)
    chosen = {"plr": plr, "flr": flr, "seed": seed, "epoch": epoch}
    if pn.state.location is not None:  # served: the URL keeps the selection, and opening one restores it
        for name, widget in chosen.items():
            if widget is not None:
                pn.state.location.sync(widget, {"value": name})
    run = {"plr": plr, "flr": flr, "seed": seed}
    panels = [live(views.overview, **run, epoch=epoch), live(views.curves, **run, epoch=epoch, kind="acc"),
              live(views.curves, **run, epoch=epoch, kind="loss")]
    if _analysis(tree, "barriers") is not None:
        panels.append(live(views.paths, plr=plr, seed=seed))
    panels += [live(views.bars, **run, analysis=analysis) for analysis in BARS if _analysis(tree, analysis) is not None]
    # Bokeh whatever backend HoloViews has current: the views are interactive plots, not images.
    # linked_axes off: Panel links the ranges of panes that share a dimension, which would freeze them together.
    shown = [pn.pane.HoloViews(panel, backend="bokeh", linked_axes=False) for panel in panels]
    numbers = pn.pane.Markdown(pn.bind(views.numbers, plr=plr, seed=seed), sizing_mode="stretch_width")
    widgets = pn.FlexBox(*[w for w in chosen.values() if w is not None])
    top = [*([pn.pane.Alert(message, alert_type="warning")] if message else []), widgets, numbers]
    # FlexBox: the views wrap to the window's width (two a row at 1280 px) instead of running off it.
    return pn.Column(*top, pn.FlexBox(*shown), sizing_mode="stretch_width")


def allowed_origins(port: int, extra: tuple[str, ...] = ()) -> list[str]:
    """The ``host:port`` origins whose pages may open the explorer's websocket: localhost's, and ``extra``.

    Any other origin is refused, so that a page of another site cannot reach the explorer
    through a DNS name it points at 127.0.0.1 (DNS rebinding).
    """
    return list(dict.fromkeys([f"localhost:{port}", f"127.0.0.1:{port}", *extra]))


def serve(tree: xr.DataTree, port: int = DEFAULT_PORT, *, block: bool = True, allow_origin: tuple[str, ...] = ()):
    """Serve the explorer of ``tree`` on http://localhost:``port``.

    Parameters
    ----------
    tree
        An opened store.
    port
        TCP port on localhost; must be free.
    block
        Serve until interrupted (Ctrl-C stops the server cleanly and returns), or start a
        server thread and return it (stop it with ``.stop()``).
    allow_origin
        ``host[:port]`` origins allowed besides localhost's (:func:`allowed_origins`), e.g.
        the name of a machine that forwards the port.

    Raises
    ------
    LrscanError
        If the port is not free.
    """
    check_port(port)
    # Serving in the main thread, pn.serve makes Ctrl-C stop its event loop; the caller's handler comes back after.
    handler = signal.getsignal(signal.SIGINT)
    try:
        server = pn.serve({"/": lambda: make_app(tree)}, port=port, address="localhost", show=False,
                          verbose=False, title="lrscan explore", threaded=not block, start=True,
                          websocket_origin=allowed_origins(port, allow_origin))
    except OSError as err:  # taken between the check and the bind
        raise LrscanError(f"port {port} is not free ({err.strerror}); pick another with --port") from None
    finally:
        if signal.getsignal(signal.SIGINT) is not handler:
            signal.signal(signal.SIGINT, handler)
    if not block:
        return server
    server.stop()  # the loop has stopped: release the port and the sessions
    return None

"""Writing figures: standalone HTML pages (Bokeh, inline resources), PNGs (matplotlib), and the index page."""

from __future__ import annotations

import html
import json
import os
from dataclasses import dataclass
from pathlib import Path

import holoviews as hv
import xarray as xr

from lrscan.errors import LrscanError
from lrscan.plot.defaults import IMAGE_FORMATS
from lrscan.plot import accuracy, searches, solutions  # noqa: F401 (importing a figure module registers its figures)
from lrscan.plot.numbers import fmt
from lrscan.plot.registry import FIGURES, stored_analyses
from lrscan.plot.styles import DPI, PANEL_WIDTH, figure_size, grid_shape
from lrscan.plot.summary_text import summary


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


def save_image(obj, path: str | os.PathLike, dpi: float = DPI) -> Path:
    """Write a figure as an image (matplotlib): PNG of exactly :func:`figure_size` pixels at ``dpi``, or SVG / PDF.

    The format is the suffix of ``path`` (one of :data:`IMAGE_FORMATS`). Each panel is drawn
    into its cell of one constrained-layout figure, which fits titles, labels and colour bars
    into the fixed size (HoloViews' own matplotlib layouts do not).
    """
    from matplotlib.figure import Figure as MplFigure

    panels = list(obj) if isinstance(obj, hv.Layout) else [obj]
    rows, cols = grid_shape(len(panels))
    width, height = figure_size(obj)  # inches = pixels at the default DPI, whatever the dpi asked for
    # A bare Figure, not pyplot: no GUI backend, no global figure list; savefig draws with Agg.
    fig = MplFigure(figsize=(width / DPI, height / DPI), dpi=dpi, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    renderer = hv.renderer("matplotlib")
    for axis, panel in zip(axes, panels):
        _colorbars_to_layout(renderer.get_plot(panel, fig=fig, axis=axis), fig, axis)
    for axis in axes[len(panels):]:
        axis.set_visible(False)
    if isinstance(obj, hv.Layout):
        fig.suptitle(obj.opts.get(backend="matplotlib").kwargs.get("title", ""))
    fig.savefig(str(path), dpi=dpi, facecolor="white")
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
    figures: dict[str, tuple[Path, ...]]  # the HTML page, then an image per format
    skipped: dict[str, str]


def write_figures(tree: xr.DataTree, out: str | os.PathLike, store_name: str = "",
                  formats: tuple[str, ...] = ("png",), dpi: float = DPI) -> Written:
    """Write every figure the store can show as ``<name>.html`` and an image per format, and ``index.html``.

    Parameters
    ----------
    tree
        An opened store with analyses (``lrscan analyze``).
    out
        Directory to write into (created).
    store_name
        How the index names the store (e.g. its path).
    formats
        Image formats besides the HTML page, of :data:`IMAGE_FORMATS`.
    dpi
        Resolution of the PNGs (the size of SVG and PDF in inches is the same at any dpi).

    Returns
    -------
    Written
        The index path, ``{name: (html, image, ...)}``, and ``{name: reason}`` for figures skipped.

    Raises
    ------
    LrscanError
        If the store has no analyses yet, or a format or dpi is not one it can write.
    """
    unknown = [f for f in formats if f not in IMAGE_FORMATS]
    if unknown or not formats:
        raise LrscanError(f"unknown image format {', '.join(unknown) or '(none)'}: formats are "
                          f"{', '.join(IMAGE_FORMATS)}, comma-separated")
    if not 10 <= dpi <= 1200:
        raise LrscanError(f"dpi {fmt(dpi)} is out of range: 10 to 1200")
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
                         *(save_image(obj, out / f"{name}.{kind}", dpi) for kind in formats))
    index = out / "index.html"
    index.write_text(_index_page(tree, store_name, written, skipped), encoding="utf-8")
    return Written(index, written, skipped)


INDEX_STYLE = """body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
section{margin:2em 0} img{border:1px solid #ddd;max-width:100%}
th{text-align:left;padding-right:1em;font-weight:normal;color:#555} td{font-family:monospace}"""


def _index_page(tree: xr.DataTree, store_name: str, written: dict, skipped: dict) -> str:
    """The index: summary, a section per figure (thumbnail, caption, links), skipped figures, the spec."""
    esc = html.escape

    def section(name: str, page: Path, *images: Path) -> str:
        # The thumbnail: the PNG, else the SVG (a PDF does not show in a page).
        shown = next((i for kind in ("png", "svg") for i in images if i.suffix == f".{kind}"), None)
        thumbnail = (f"<a href='{page.name}'><img src='{shown.name}' alt='{esc(FIGURES[name].title)}'></a>"
                     if shown else "")
        links = "".join(f" · <a href='{image.name}'>image ({image.name})</a>" for image in images)
        return (f"<section><h2>{esc(FIGURES[name].title)}</h2><p>{esc(FIGURES[name].caption)}</p>{thumbnail}"
                f"<p><a href='{page.name}'>interactive ({page.name})</a>{links}</p></section>")

    sections = "".join(section(name, *files) for name, files in written.items())
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

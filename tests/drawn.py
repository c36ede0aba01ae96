"""What HoloViews' two backends draw of a figure, read back from their plots: the Bokeh glyphs of the HTML
pages and the matplotlib artists of the PNGs, so that tests can hold one against the other."""

from __future__ import annotations

import holoviews as hv
import numpy as np
from matplotlib.colors import to_hex, to_rgba

# Elements drawn as filled areas, whose fill matplotlib takes from ``facecolor`` rather than ``color``.
AREAS = (hv.Histogram, hv.Spread)


def fills(obj, backend: str) -> dict:
    """``{(panel, key, label): (fill, fill alpha, edge, edge alpha)}`` of every filled area (:data:`AREAS`)
    of ``obj`` as ``backend`` ("bokeh" or "matplotlib") draws it, colours as hex, an edge not drawn (of no
    width or alpha) as ``(None, 0)``; ``panel`` counts the figure's overlays in order and ``key`` is the
    element's place in its overlay."""
    plot = hv.renderer(backend).get_plot(obj)
    overlays = [p for p in plot.traverse(lambda p: p) if type(p).__name__ == "OverlayPlot"]
    found = {}
    for panel, overlay in enumerate(overlays):
        for key, element_plot in overlay.subplots.items():
            element = element_plot.current_frame
            if isinstance(element, AREAS):
                found[panel, key, element.label] = _fill(element_plot, backend)
    return found


def _fill(element_plot, backend: str) -> tuple:
    if backend == "bokeh":
        glyph = element_plot.handles["glyph"]
        face, edge = to_rgba(glyph.fill_color, glyph.fill_alpha), to_rgba(glyph.line_color, glyph.line_alpha)
        width = glyph.line_width
    else:
        artist = element_plot.handles["artist"]
        patch = artist.patches[0] if hasattr(artist, "patches") else artist  # a histogram's bars, or a band
        # A patch has one colour and width, a collection one per path: the first.
        face, edge = (to_rgba(np.atleast_2d(c)[0]) for c in (patch.get_facecolor(), patch.get_edgecolor()))
        width = float(np.atleast_1d(patch.get_linewidth())[0])
    drawn = (to_hex(edge), round(edge[3], 6)) if width > 0 and edge[3] > 0 else (None, 0)
    return (to_hex(face), round(face[3], 6), *drawn)

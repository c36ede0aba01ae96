"""Draw the study's figures of a store, as in a notebook, and write them all to a folder.

Usage:  python examples/plot_store.py [STORE] [OUT]      (default: store/synthetic.zarr; writes
        every figure to OUT when given, as `lrscan plot STORE --out OUT` does)

Each figure function returns a HoloViews object: in a notebook, run ``hv.extension("bokeh")``
once and let a cell end with ``lrscan.plot.geometry(tree)`` to see it interactively.
"""

import sys

import xarray as xr

import lrscan
import lrscan.plot

path = sys.argv[1] if len(sys.argv) > 1 else "store/synthetic.zarr"
tree = lrscan.open(path)  # lazy: nothing read yet

# The figures read the analyses `lrscan analyze` persisted; a store it has not seen gets them
# computed here, in memory (the store is not written).
if "analysis" not in tree.children:
    for name in ("metrics", "angles", "barriers", "features", "group_norms", "regimes"):
        tree[f"analysis/{name}"] = xr.DataTree(getattr(tree.lrscan, name)())

# One figure: PT test accuracy against PLR, regimes shaded, axes in the study's words and units.
options = lrscan.plot.pt_accuracy(tree).opts.get("plot", backend="bokeh").kwargs
print(f"PT accuracy figure: {options['title']!r}, x: {options['xlabel']}, y: {options['ylabel']}")

# A multi-panel figure: angle, train and test barrier against PLR.
geometry = lrscan.plot.geometry(tree)
print("geometry panels:", [panel.opts.get("plot", backend="bokeh").kwargs["title"] for panel in geometry])

# The summary the index page opens with.
print("summary:", lrscan.plot.summary(tree))

# Every figure as HTML (works offline) and PNG, and index.html linking them.
if len(sys.argv) > 2:
    written = lrscan.plot.write_figures(tree, sys.argv[2], store_name=path)
    print(f"wrote {len(written.figures)} figures; index: {written.index}")

"""lrscan: where do large learning rates lead? Sweeps of scale-invariant networks on a sphere."""

import importlib

from lrscan.postimport import when_imported
from lrscan.version import __version__  # noqa: F401

# The tree.lrscan accessor, registered as soon as xarray is loaded (see lrscan.postimport).
when_imported("xarray", lambda: importlib.import_module("lrscan.accessor"))


def open(store):  # noqa: A001 - mirrors xarray's open_* naming
    """Open a store lazily as an ``xarray.DataTree`` of dask-backed variables.

    The same as ``xr.open_datatree(store, engine="zarr", chunks={}, consolidated=False)``,
    after checking that ``store`` is an lrscan store. Its variables carry CF-style ``units``
    and ``long_name`` as stored; ``lrscan.units.annotate(tree)`` adds them to a store made
    before lrscan wrote them.
    """
    from lrscan.store import open_store

    return open_store(store)


def __getattr__(name):
    # `lrscan.plot` loads HoloViews, Bokeh and Panel: only when first used.
    if name == "plot":
        return importlib.import_module("lrscan.plot")
    raise AttributeError(f"module 'lrscan' has no attribute {name!r}")

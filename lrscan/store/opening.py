"""Opening a store lazily as an xarray DataTree of dask arrays: what notebooks, the analyzers and
the figures read it as."""

from __future__ import annotations

import os

import xarray as xr

from lrscan.store.arrays import read_flags
from lrscan.store.reading import RUN_FLAGS, _require_store


def open_store(path: str | os.PathLike, *, settled: bool = False) -> xr.DataTree:
    """Open a store lazily: every variable is a dask array, nothing is read until computed.

    ``settled=True`` is for a store that nothing trains any more (``lrscan analyze``): the
    runs' bookkeeping (:data:`RUN_FLAGS`) is read now, in one pass (:func:`~lrscan.store.arrays.read_flags`),
    rather than through dask one run-sized chunk at a time on every use (0.9 s per read of
    the default store's fine-tuning flags, against 0.15 s for all of them at once).
    """
    _require_store(path)
    tree = xr.open_datatree(str(path), engine="zarr", chunks={}, consolidated=False)
    if settled:
        for stage, flags in read_flags(path).items():
            group = f"{stage}/metrics"
            if stage not in tree.children or "metrics" not in tree[stage].children:
                continue
            ds = tree[group].to_dataset()
            for name in RUN_FLAGS:
                if name in ds:
                    ds[name] = ds[name].copy(data=flags[name])
            tree[group].dataset = ds
    return tree


def attach(tree: xr.DataTree, path: str | os.PathLike, group: str) -> xr.DataTree:
    """``tree`` with its node at ``group`` (re)read from the store at ``path``, lazily: what a
    reader needs after writing one group, without reopening the whole store."""
    tree[group] = xr.open_dataset(str(path), group=group, engine="zarr", chunks={}, consolidated=False)
    return tree

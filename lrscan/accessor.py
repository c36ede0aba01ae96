"""The ``.lrscan`` accessor: every registered analyzer as a method of an opened store, and label lookup.

>>> tree = lrscan.open("store/synthetic.zarr")
>>> tree.lrscan.angles()            # the persisted /analysis/angles when up to date (lazy), else computed
>>> tree.lrscan.sel(plr=0.0075)     # grid values matched to the precision they are printed with
>>> tree.lrscan.analyzers           # names available here

It also gives a store's nodes an ``.hvplot`` (hvPlot's own plots Datasets and DataArrays only):
``tree["pretrain/metrics"].hvplot.line(x="epoch", y="test_acc", by="plr")``.
"""

from __future__ import annotations

import functools

import numpy as np
import xarray as xr

from lrscan.units import annotate, label

# Relative tolerance of `sel`: labels print 3 significant digits, so a printed 0.0075 stands for 0.00749894.
RTOL = 1e-3


@xr.register_datatree_accessor("lrscan")
class LrscanAccessor:
    """Analyzers bound to a store's tree; holds nothing but the tree."""

    def __init__(self, tree: xr.DataTree):
        self._tree = tree

    @property
    def analyzers(self) -> list[str]:
        """Names of the analyzers that apply to this store."""
        from lrscan.analyze import ANALYZERS

        return [name for name in ANALYZERS if ANALYZERS[name].applies(self._tree)]

    def sel(self, **indexers) -> xr.DataTree:
        """``tree.sel`` matching each value to the nearest grid value within a relative 1e-3.

        Parameters
        ----------
        **indexers
            ``dim=value`` (or a list of values) as printed, e.g. ``plr=0.0075``.

        Raises
        ------
        KeyError
            If a value is further than that from every grid value, naming the nearest.
        """
        tree = self._tree
        for dim, value in indexers.items():
            values = np.atleast_1d(np.asarray(value, dtype=float))
            nodes = [node for node in tree.subtree if dim in node.dataset.coords]
            for node in nodes:
                grid = np.asarray(node.dataset[dim].values, dtype=float)
                nearest = grid[np.abs(grid[:, None] - values).argmin(0)]
                far = np.abs(nearest - values) > RTOL * np.abs(values)
                if far.any():
                    raise KeyError(f"{dim}={values[far][0]:g} is not on the grid of {node.path} "
                                   f"(nearest {nearest[far][0]:g})")
            tree = tree.sel({dim: value}, method="nearest")
        return tree

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        from lrscan.analyze import ANALYZERS
        from lrscan.errors import LrscanError

        try:
            entry = ANALYZERS[name]
        except LrscanError as err:
            raise AttributeError(str(err)) from None
        tree = self._tree

        @functools.wraps(entry.func)
        def analysis(**options):
            stored = persisted(tree, name, options)
            # The analyzer labels what it computes; a result persisted before lrscan wrote
            # units may lack them, and gets them by name here.
            return label(stored) if stored is not None else entry(tree, **options)

        return analysis

    def __dir__(self):
        from lrscan.analyze import ANALYZERS

        return sorted(set(super().__dir__()) | set(ANALYZERS) | {"sel"})


def persisted(tree: xr.DataTree, name: str, options: dict) -> xr.Dataset | None:
    """The lazy ``/analysis/<name>`` when its fingerprint says it is what ``name(tree, **options)`` gives now."""
    if "analysis" not in tree.children or name not in tree["analysis"].children:
        return None
    node = tree[f"analysis/{name}"]
    if "lrscan_fingerprint" not in node.attrs:  # left half-written, or put there by hand
        return None
    from lrscan.analyze.run import fingerprint

    if node.attrs["lrscan_fingerprint"] != fingerprint(tree, name, options):
        return None
    return node.to_dataset()


if not hasattr(xr.DataTree, "hvplot"):  # hvPlot registers itself on Datasets and DataArrays, not on trees

    @xr.register_datatree_accessor("hvplot")
    class NodePlot:
        """``node.hvplot(...)``: hvPlot of the node's Dataset, its variables labelled by :func:`annotate`."""

        def __init__(self, tree: xr.DataTree):
            self._tree = tree

        def _plot(self):
            import hvplot.xarray  # noqa: F401 (registers Dataset.hvplot)

            return annotate(self._tree.to_dataset()).hvplot

        def __call__(self, *args, **kwargs):
            return self._plot()(*args, **kwargs)

        def __getattr__(self, name: str):
            if name.startswith("_"):
                raise AttributeError(name)
            return getattr(self._plot(), name)

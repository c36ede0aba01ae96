"""The ``.lrscan`` accessor: every registered analyzer as a method of an opened store.

>>> tree = lrscan.open("store/synthetic.zarr")
>>> tree.lrscan.angles()            # the same function `lrscan analyze` runs
>>> tree.lrscan.analyzers           # names available here
"""

from __future__ import annotations

import functools

import xarray as xr


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

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        from lrscan.analyze import ANALYZERS
        from lrscan.errors import LrscanError

        try:
            entry = ANALYZERS[name]
        except LrscanError as err:
            raise AttributeError(str(err)) from None
        return functools.wraps(entry.func)(functools.partial(entry.func, self._tree))

    def __dir__(self):
        from lrscan.analyze import ANALYZERS

        return sorted(set(super().__dir__()) | set(ANALYZERS))

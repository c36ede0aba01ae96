"""Analyzers: plain functions from a store's tree to labeled results, registered by name.

An analyzer is ``func(tree, **options) -> xr.Dataset``; it is lazy when its input is (dask
arrays in, dask arrays out), except where it must run the model on data. Register one with
:func:`analyzer`, or from another package under the entry-point group ``lrscan.analyzers``
(the entry point names an :class:`Analyzer`). ``lrscan analyze`` persists each result under
``/analysis/<name>``; in a notebook, ``tree.lrscan.<name>(...)`` computes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import xarray as xr

from lrscan.registry import Registry


@dataclass(frozen=True)
class Analyzer:
    """A registered analysis.

    Attributes
    ----------
    func
        ``func(tree, **options) -> xr.Dataset``.
    needs
        Stages the analysis reads (``pretrain``, ``finetune``, ``swa``); it applies to a store
        only when the store has them.
    after
        Analyzers whose persisted results this one reads (they run first).
    summary
        One line for listings.
    """

    func: Callable[..., xr.Dataset]
    needs: tuple[str, ...] = ("pretrain",)
    after: tuple[str, ...] = ()
    summary: str = ""

    def applies(self, tree: xr.DataTree) -> bool:
        return all(stage in tree.children for stage in self.needs)

    def __call__(self, tree: xr.DataTree, **options) -> xr.Dataset:
        return self.func(tree, **options)


ANALYZERS: Registry[Analyzer] = Registry("analyzer", "lrscan.analyzers")


def analyzer(name: str, *, needs: tuple[str, ...] = ("pretrain",), after: tuple[str, ...] = ()):
    """Register ``func`` as the analyzer ``name`` (decorator)."""

    def register(func: Callable[..., xr.Dataset]) -> Callable[..., xr.Dataset]:
        summary = (func.__doc__ or "").strip().splitlines()[0] if func.__doc__ else ""
        ANALYZERS.register(name, Analyzer(func, needs, after, summary))
        return func

    return register


def _register_builtins() -> None:
    from lrscan.analyze import features, geometry, metrics, regimes  # noqa: F401


_register_builtins()

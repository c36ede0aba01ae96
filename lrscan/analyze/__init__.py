"""Analyzers: plain functions from a store's tree to labeled results, registered by name.

An analyzer is ``func(tree, **options) -> xr.Dataset``; it is lazy when its input is (dask
arrays in, dask arrays out), except where it must run the model on data. Register one with
:func:`analyzer`, or from another package under the entry-point group ``lrscan.analyzers``
(the entry point names an :class:`Analyzer`). ``lrscan analyze`` persists each result under
``/analysis/<name>``; in a notebook, ``tree.lrscan.<name>(...)`` computes it.
"""

from __future__ import annotations

from dataclasses import dataclass
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
    sets
        Extra evaluation sets the analysis needs from the dataset (e.g. ``single_feature``).
    default
        Whether ``lrscan analyze`` runs it without ``--only`` (expensive extras do not).
    summary
        One line for listings.
    """

    func: Callable[..., xr.Dataset]
    needs: tuple[str, ...] = ("pretrain",)
    after: tuple[str, ...] = ()
    sets: tuple[str, ...] = ()
    default: bool = True
    summary: str = ""

    def missing(self, tree: xr.DataTree) -> str | None:
        """Why the analysis does not apply to this store, or None when it does."""
        stages = [stage for stage in self.needs if stage not in tree.children]
        if stages:
            return f"needs {', '.join(stages)} data, which this store does not have"
        from lrscan.data import DATASETS

        dataset = tree.attrs["spec"]["sweep"]["dataset"]
        sets = [s for s in self.sets if s not in DATASETS[dataset].extra_sets]
        if sets:
            return f"needs the {', '.join(sets)} evaluation sets, which dataset {dataset!r} does not provide"
        return None

    def applies(self, tree: xr.DataTree) -> bool:
        return self.missing(tree) is None

    def __call__(self, tree: xr.DataTree, **options) -> xr.Dataset:
        return self.func(tree, **options)


ANALYZERS: Registry[Analyzer] = Registry("analyzer", "lrscan.analyzers")


def analyzer(name: str, *, needs: tuple[str, ...] = ("pretrain",), after: tuple[str, ...] = (),
             sets: tuple[str, ...] = (), default: bool = True):
    """Register ``func`` as the analyzer ``name`` (decorator); see :class:`Analyzer`."""

    def register(func: Callable[..., xr.Dataset]) -> Callable[..., xr.Dataset]:
        summary = (func.__doc__ or "").strip().splitlines()[0] if func.__doc__ else ""
        ANALYZERS.register(name, Analyzer(func, needs, after, sets, default, summary))
        return func

    return register


def _register_builtins() -> None:
    from lrscan.analyze import convergence, features, frequency, geometry, grad_norms, metrics, regimes, sharpness  # noqa: F401


_register_builtins()

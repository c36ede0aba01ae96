"""Analyzers: plain functions from a store's tree to labeled results, registered by name.

An analyzer is ``func(tree, **options) -> xr.Dataset``; it is lazy when its input is (dask
arrays in, dask arrays out), except where it must run the model on data. Register one with
:func:`analyzer`, or from another package under the entry-point group ``lrscan.analyzers``
(the entry point names an :class:`Analyzer`). ``lrscan analyze`` persists each result under
``/analysis/<name>``; in a notebook, ``tree.lrscan.<name>(...)`` computes it.

The built-in analyzers are imported on first lookup (most need torch): their names and
summaries are known from :data:`BUILTINS` alone, so listing them imports none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from lrscan.registry import Registry

if TYPE_CHECKING:  # listing the analyzers (`lrscan analyzers`) loads neither xarray nor any of them
    import xarray as xr


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
        """The analyzer's result, each variable with the ``units`` and ``long_name`` of its own
        name (:func:`lrscan.units.label`), as it is persisted."""
        from lrscan.units import label

        return label(self.func(tree, **options))


# The built-in analyzers: name -> (the module that defines the function of that name, its
# summary). The summaries repeat the first docstring lines, for listings that import nothing;
# tests/test_cli_fast.py checks this table against the analyzers themselves.
BUILTINS: dict[str, tuple[str, str]] = {
    "angles": ("lrscan.analyze.geometry", "Angular distance between the solutions of each (plr, seed), in radians."),
    "barriers": ("lrscan.analyze.geometry",
                 "Train and test error barriers on the straight paths between solutions, in percent."),
    "convergence": ("lrscan.analyze.convergence",
                    "Epochs pre-training needs to bring the train loss below 1e-2, and the test accuracy then."),
    "features": ("lrscan.analyze.features",
                 "Accuracy of every solution on each single-feature test set, and its sparsity index."),
    "frequency": ("lrscan.analyze.frequency",
                  "Accuracy of PT, SWA, FT-low and FT-high solutions on band-limited test sets."),
    "grad_norm": ("lrscan.analyze.metrics", "Mean stochastic-gradient norm of the SI group at the end of each stage."),
    "group_norms": ("lrscan.analyze.metrics",
                    "Norms of every output channel of every SI tensor over the radius, and their log10 histogram."),
    "metrics": ("lrscan.analyze.metrics", "Final train/test loss and accuracy of every PT, FT and SWA solution."),
    "regimes": ("lrscan.analyze.regimes",
                "Regime of every (plr, seed), decided within the measured noise, and the regime boundaries."),
    "sharpness": ("lrscan.analyze.sharpness",
                  "Hessian trace and top eigenvalue of the train loss over the SI group, for every solution."),
    "solution_grad_norm": ("lrscan.analyze.grad_norms",
                           "Mean mini-batch gradient norm of the SI group at every stored solution."),
    "swa": ("lrscan.analyze.metrics", "SWA solutions of every K over the spec's SWA window, and their scores."),
}

ANALYZERS: Registry[Analyzer] = Registry(
    "analyzer", "lrscan.analyzers", {name: f"{module}:{name}.analyzer" for name, (module, _) in BUILTINS.items()})


def summaries() -> dict[str, str]:
    """Every analyzer's one-line summary by name; imports no built-in analyzer (plugins load)."""
    return {name: BUILTINS[name][1] if name in BUILTINS else ANALYZERS[name].summary for name in ANALYZERS}


def analyzer(name: str, *, needs: tuple[str, ...] = ("pretrain",), after: tuple[str, ...] = (),
             sets: tuple[str, ...] = (), default: bool = True):
    """Register ``func`` as the analyzer ``name`` (decorator); see :class:`Analyzer`.

    The function keeps its :class:`Analyzer` as its ``analyzer`` attribute, which is how the
    registry finds a built-in one (:data:`BUILTINS`).
    """

    def register(func: Callable[..., xr.Dataset]) -> Callable[..., xr.Dataset]:
        summary = (func.__doc__ or "").strip().splitlines()[0] if func.__doc__ else ""
        func.analyzer = ANALYZERS.register(name, Analyzer(func, needs, after, sets, default, summary))
        return func

    return register

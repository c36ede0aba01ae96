"""The registry of the study's figures: what each figure needs from a store, and which analyses a store holds.

A figure module registers each of its functions with :func:`figure`; :data:`FIGURES` maps
names to :class:`Figure` entries, in the order the figure modules are imported
(:mod:`lrscan.plot.writers` imports them all).
Nothing here draws: this module needs only xarray.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import xarray as xr

from lrscan.errors import LrscanError

if TYPE_CHECKING:
    import holoviews as hv


@dataclass(frozen=True)
class Figure:
    """A figure of the study.

    Attributes
    ----------
    func
        ``func(tree) -> HoloViews object``.
    needs
        Analyses (names under ``/analysis``) the figure reads; it is drawn only when the store has them.
    stages
        Stages of training (``finetune``, ``swa``) the figure needs besides.
    title
        What the figure shows, in the study's words.
    caption
        How to read it.
    when
        ``when(tree)``: why the store's sweep cannot show the figure (e.g. it has no
        two-stage schedule), or None; for conditions that analyses and stages do not express.
    """

    func: Callable[[xr.DataTree], hv.core.Dimensioned]
    needs: tuple[str, ...]
    title: str
    caption: str
    stages: tuple[str, ...] = ()
    when: Callable[[xr.DataTree], str | None] | None = None

    def missing(self, tree: xr.DataTree) -> str | None:
        """Why the store cannot show this figure, or None when it can."""
        if self.when is not None and (reason := self.when(tree)):
            return reason
        stages = [stage for stage in self.stages if stage not in tree.children]
        if stages:
            return f"needs {', '.join(stages)} data, which the store does not have"
        absent = [name for name in self.needs if name not in stored_analyses(tree)]
        for name in absent:  # an analysis that cannot apply to the store is no data the store lacks
            if reason := _inapplicable(tree, name):
                return f"does not apply to this store: the {name} analysis {reason}"
        return f"needs the {', '.join(absent)} analysis, which the store does not have" if absent else None


def _inapplicable(tree: xr.DataTree, name: str) -> str | None:
    """Why the analyzer ``name`` cannot apply to the store, or None (also for what no analyzer computes)."""
    from lrscan.analyze import ANALYZERS

    return ANALYZERS[name].missing(tree) if name in ANALYZERS else None


FIGURES: dict[str, Figure] = {}


def stored_analyses(tree: xr.DataTree) -> set[str]:
    """Names of the analyses under ``/analysis`` that are complete.

    ``lrscan analyze`` marks a persisted result complete with its fingerprint, written last,
    so a result it left half-written (``lrscan_analyzer`` without ``lrscan_fingerprint``) does
    not count; a result put there in memory (``tree["analysis/angles"] = ...``) does.
    """
    stored = tree["analysis"].children if "analysis" in tree.children else {}
    return {name for name, node in stored.items()
            if "lrscan_fingerprint" in node.attrs or "lrscan_analyzer" not in node.attrs}


def figure(name: str, *, needs: tuple[str, ...], title: str, caption: str, stages: tuple[str, ...] = (),
           when: Callable[[xr.DataTree], str | None] | None = None):
    """Register ``func`` as the figure ``name`` (decorator); see :class:`Figure`."""

    def register(func):
        FIGURES[name] = Figure(func, needs, title, caption, stages, when)
        return func

    return register



def load_analysis(tree: xr.DataTree, name: str, variables: list[str]) -> xr.Dataset:
    """Some variables of a persisted analysis, loaded (they are one number per run or so)."""
    if name not in stored_analyses(tree):
        raise LrscanError(f"the store has no {name} analysis; run `lrscan analyze` first")
    return tree[f"analysis/{name}"].to_dataset()[variables].load()


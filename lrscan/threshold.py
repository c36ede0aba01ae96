"""The convergence-threshold study (SPEC §5): where constant-LR pre-training stops converging.

The study's store is an ordinary pre-training-only store whose PLR grid is a fine log-spaced
grid between two bounds. Its grid points are not all trained: a bisection in log-PLR picks
them round by round, training each pick (every seed, from scratch, for ``pretrain_epochs``)
with :func:`lrscan.train.sweep.train`. A grid point *converges* when every seed's train loss
falls below 1e-2 within the budget (the ``convergence`` analyzer). The search starts from the
grid's two ends, then always trains the grid point that halves the bracket between the
largest converging PLR and the smallest non-converging one above it, until the bracket is
one grid step or the model-step budget runs out. The threshold is the bracket's geometric
mean, its uncertainty the bracket's half-width in log10; both are stored under
``/analysis/threshold`` with every pick's per-seed epochs to convergence.

The search depends only on the outcomes of its own picks, so rerunning it on the same store
repeats the same picks from the runs already done and trains only what is new: a larger
budget continues a search where a smaller one stopped.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import xarray as xr

from lrscan.data import DATASETS
from lrscan.analyze.run import persist
from lrscan.analyze.study import CONVERGENCE_LOSS
from lrscan.errors import LrscanError
from lrscan.options import learning_rate
from lrscan.spec import Spec, load_tables, log_grid, resolve

# The study's operational convergence: train loss below this within the budget.
PER_DECADE = 16
# What a threshold study's spec says whatever its preset says: pre-training only, and of its
# weights only the initial and final ones.
PRETRAIN_ONLY = {"finetune_epochs": 0.0, "finetune_from": None, "swa": [], "checkpoint_epochs": []}


def fine_grid(low: float, high: float, per_decade: int = PER_DECADE) -> np.ndarray:
    """The study's PLR grid from ``low`` to ``high`` (both included), at least ``per_decade``
    points per decade in equal log steps (:func:`lrscan.spec.log_grid`), the bounds checked."""
    low, high = learning_rate("--low", low), learning_rate("--high", high)
    if not low < high:
        raise LrscanError(f"--low {low:g} is not below --high {high:g}")
    if isinstance(per_decade, bool) or not isinstance(per_decade, int) or per_decade < 1:
        raise LrscanError(f"--per-decade must be a whole number of at least 1, got {per_decade!r}")
    return log_grid(low, high, per_decade)


def threshold_spec(
    preset: str | None = None,
    config: str | os.PathLike | None = None,
    overrides: Sequence[str] = (),
    *,
    low: float | None = None,
    high: float | None = None,
    per_decade: int = PER_DECADE,
) -> Spec:
    """The spec of a threshold study: a preset or file with overrides, pre-training only, on the fine grid.

    ``low`` / ``high`` default to the smallest and largest PLR of the preset (after the
    overrides). Fine-tuning and SWA are dropped (``finetune_epochs = 0``, ``swa = []``) and
    only the initial and final weights are kept (``checkpoint_epochs = []``), whatever the
    preset says; everything else, the seeds and the budget of epochs (``pretrain_epochs``)
    included, is the preset's. A ``pretrain_switch`` is refused: the study is of constant-LR
    pre-training.
    """
    tables = load_tables(preset, config, overrides)
    sweep = tables.setdefault("sweep", {})
    if sweep.get("pretrain_switch") is not None:
        raise LrscanError("the threshold study pre-trains at one constant LR; remove pretrain_switch")
    sweep |= PRETRAIN_ONLY
    spec = resolve(tables)
    grid = fine_grid(min(spec.plr) if low is None else low, max(spec.plr) if high is None else high, per_decade)
    sweep["plr"] = grid.tolist()
    return resolve(tables)


@dataclass(frozen=True)
class Threshold:
    """The outcome of a threshold search.

    Attributes
    ----------
    threshold
        Geometric mean of the bracket's ends (NaN when the grid does not bracket it).
    log10_halfwidth
        The uncertainty: half the bracket's width in log10 of PLR.
    bracket
        (largest converging PLR, smallest non-converging PLR above it); NaN for an end
        that the grid does not have.
    status
        ``"resolved"`` (the bracket is one grid step), ``"budget"`` (the budget ran out
        first), ``"below"`` (not even ``low`` converges) or ``"above"`` (``high`` converges).
    picks
        The grid points trained, in the order the search picked them.
    model_steps
        Model-steps the picks cost (the budget they count against).
    result
        What is stored under ``/analysis/threshold``.
    """

    threshold: float
    log10_halfwidth: float
    bracket: tuple[float, float]
    status: str
    picks: list[float]
    model_steps: int
    result: xr.Dataset


@dataclass(frozen=True)
class Round:
    """One round of the search, for progress reports.

    ``plr`` are its picks, ``seeds_converged`` how many seeds of each converge (of
    ``n_seeds``), ``trained`` the runs this call trained (0 when the store had them all),
    ``bracket`` the bracket after the round (NaN for an end the grid lacks).
    """

    index: int
    plr: list[float]
    seeds_converged: list[int]
    n_seeds: int
    trained: int
    bracket: tuple[float, float]


def bracket(outcomes: dict[int, bool]) -> tuple[int | None, int | None]:
    """Grid indices (largest converging, smallest non-converging above it); None where there is none."""
    converging = [i for i, ok in outcomes.items() if ok]
    low = max(converging) if converging else None
    above = [i for i, ok in outcomes.items() if not ok and (low is None or i > low)]
    return low, (min(above) if above else None)


def next_picks(outcomes: dict[int, bool], n: int) -> list[int]:
    """The grid indices the next round trains: the two ends first, then the bracket's midpoint
    (in log-PLR); none once the bracket is one step or the grid does not bracket the threshold."""
    ends = [i for i in (0, n - 1) if i not in outcomes]
    if ends:
        return ends
    low, high = bracket(outcomes)
    if low is None or high is None or high - low <= 1:
        return []
    return [(low + high) // 2]


class ThresholdSearch:
    """A checked threshold search bound to its store.

    Preparing checks everything a user can get wrong — the spec, the budget, the store (created
    when missing, checked against the spec when present) — before any training, as
    :class:`lrscan.train.sweep.Sweep` does.

    Parameters
    ----------
    spec
        A threshold study's spec (:func:`threshold_spec`): pre-training only, on a fine grid.
    store
        Its store; created when missing, continued when it holds an earlier search.
    budget
        Model-steps (one step of one run) the picks may cost in all, those already in the
        store included; default: no limit. It must cover the first round (the grid's ends).
    loss
        Train loss below which a run has converged.
    batched
        Passed to :func:`lrscan.train.sweep.train`.
    """

    def __init__(self, spec: Spec, store: str | os.PathLike, *, budget: float | None = None,
                 loss: float = CONVERGENCE_LOSS, batched: bool | None = None):
        from lrscan.train.plan import Plan
        from lrscan.train.sweep import Sweep

        if spec.finetune_epochs or spec.swa or spec.pretrain_switch is not None:
            raise LrscanError("a threshold study's spec pre-trains only, at one constant LR; build it with "
                              "threshold_spec")
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float))
                                   or not math.isfinite(budget) or budget <= 0):
            raise LrscanError(f"--budget must be a positive number of model-steps, got {budget!r}")
        self.spec, self.store, self.budget, self.loss, self.batched = spec, store, budget, loss, batched
        self.grid = np.asarray(spec.plr)
        data = DATASETS[spec.dataset].load(spec.data_options, spec.data_seeds[0])
        plan = Plan.build(spec, data.x_train.shape[0])
        self.n_runs = len(plan.runs)
        self.cost = self.n_runs * plan.pretrain.n_steps  # model-steps of one grid point
        if budget is not None and budget < 2 * self.cost:
            raise LrscanError(
                f"--budget {budget:,.0f} model-steps does not cover the first round: the grid's two ends need "
                f"{2 * self.cost:,} ({self.n_runs} runs x {plan.pretrain.n_steps:,} steps each)")
        # The first round's sweep; building it checks the store (created when missing) against the spec.
        self._first = Sweep(spec, store, batched=batched, plr=[float(self.grid[0]), float(self.grid[-1])])

    def run(self, progress: Callable | None = None, on_round: Callable[[Round], None] | None = None) -> Threshold:
        """Train the rounds the search needs (skipping runs already done) and store the result.

        Parameters
        ----------
        progress
            Called with a :class:`lrscan.train.sweep.Progress` as each round trains.
        on_round
            Called with a :class:`Round` after each round.

        Returns
        -------
        Threshold
            The threshold with its uncertainty; also stored under ``/analysis/threshold``.
        """
        from lrscan.analyze.convergence import convergence
        from lrscan.store import open_store
        from lrscan.train.sweep import train

        grid = self.grid
        outcomes: dict[int, bool] = {}
        picks: list[int] = []
        status = "resolved"
        while todo := next_picks(outcomes, len(grid)):
            if self.budget is not None and (len(picks) + len(todo)) * self.cost > self.budget:
                status = "budget"
                break
            values = [float(grid[i]) for i in todo]
            if picks:
                trained = train(self.spec, self.store, plr=values, batched=self.batched, progress=progress)
            else:
                trained = self._first.run(progress)
            converged = convergence(open_store(self.store), loss=self.loss).converged.sel(plr=values).sum("seed")
            outcomes |= {i: bool(n == self.n_runs) for i, n in zip(todo, converged.values)}
            index = len(picks) - 1 if picks else 0  # the ends make round 0, each pick after them one round
            picks += todo
            if on_round is not None:
                on_round(Round(index, values, converged.values.tolist(), self.n_runs, trained["pretrain"],
                               _ends(grid, outcomes)))
        low, high = bracket(outcomes)
        if low is None:
            status = "below"
        elif high is None:
            status = "above"
        ends = _ends(grid, outcomes)
        result = _result(open_store(self.store), grid, picks, self.loss, self.budget, self.cost, status, ends)
        _persist(result, self.store)
        return Threshold(float(result.threshold), float(result.log10_halfwidth), ends, status,
                         [float(grid[i]) for i in picks], len(picks) * self.cost, result)


def _ends(grid: np.ndarray, outcomes: dict[int, bool]) -> tuple[float, float]:
    low, high = bracket(outcomes)
    return (float("nan") if low is None else float(grid[low]), float("nan") if high is None else float(grid[high]))


def _result(tree: xr.DataTree, grid: np.ndarray, picks: Sequence[int], loss: float, budget: float | None,
            cost: int, status: str, ends: tuple[float, float]) -> xr.Dataset:
    from lrscan.analyze.convergence import convergence

    order = sorted(picks)
    plr = grid[order]
    per_run = convergence(tree, loss=loss).sel(plr=plr).load()
    lo, hi = ends
    halfwidth = (math.log10(hi) - math.log10(lo)) / 2 if status in ("resolved", "budget") else float("nan")
    threshold = math.sqrt(lo * hi) if status in ("resolved", "budget") else float("nan")
    return per_run.assign(
        all_converged=per_run.converged.all("seed"),
        pick=("plr", np.array([list(picks).index(i) for i in order], dtype=np.int64)),
        threshold=threshold,
        log10_halfwidth=halfwidth,
        bracket_low=lo,
        bracket_high=hi,
    ).assign_attrs(
        status=status, loss=loss, **({} if budget is None else {"budget": float(budget)}),
        model_steps=len(picks) * cost, grid_low=float(grid[0]), grid_high=float(grid[-1]), grid_size=len(grid),
        lrscan_analyzer="threshold",
        description="convergence threshold by bisection in log-PLR: the bracket (largest converging PLR, smallest "
                    "non-converging PLR above it), its geometric mean and half-width in log10, and every pick's "
                    "per-seed epochs to convergence",
    )


def _persist(result: xr.Dataset, store: str | os.PathLike) -> None:
    """Write the result under /analysis/threshold, its fingerprint last (as `lrscan analyze` does):
    a result without one was cut short and is not drawn."""
    key = json.dumps({"attrs": result.attrs, "plr": result.plr.values.tolist(),
                      "threshold": float(result.threshold)}, sort_keys=True, default=str)
    persist(store, "threshold", result, hashlib.sha256(key.encode()).hexdigest())

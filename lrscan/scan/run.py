"""``lrscan scan``: train the PLRs the search picks, round by round, in an ordinary store.

The scan's store is an ordinary store whose spec has a *fine* PLR grid (:func:`fine_grid`)
and a few of the spec's FLRs (:func:`pick_flrs`). Zarr allocates nothing for chunks never
written, so the untrained grid points cost no space. Each round trains exactly the PLRs the
search picked with :func:`lrscan.train.sweep.train` (``plr=...``), then reads them back with
the ordinary analyzers (``metrics``, ``barriers``, ``regimes``) on the sub-tree of those
PLRs (:func:`select_plr`) and hands the observations to :class:`~lrscan.scan.search.Search`.

The rounds are a pure function of the search's options and the stored runs: rerunning a
scan replays the rounds whose PLRs are done (analysing, not training, them) and continues
where it stopped, so a scan resumes after an interruption, continues with a larger budget,
and ends in the same store as an uninterrupted one. Its result goes to ``/analysis/scan``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import xarray as xr
import zarr

from lrscan.analyze.best import scores
from lrscan.analyze.geometry import barriers
from lrscan.analyze.metrics import metrics
from lrscan.analyze.regimes import regimes
from lrscan.analyze.run import persist
from lrscan.errors import LrscanError
from lrscan.scan.search import QUANTITIES, Estimate, Observation, Search, Trace, drive
from lrscan.spec import Spec, log_grid
from lrscan.store import open_store
from lrscan.train.sweep import Progress, Setup, train

# Default density of the scan's PLR grid, and the FLRs it fine-tunes with.
PER_DECADE = 16
N_FLRS = 3


def fine_grid(plr: Sequence[float], per_decade: float) -> tuple[float, ...]:
    """A log-spaced grid of ``per_decade`` PLRs per decade over the range of ``plr``, holding ``plr`` itself.

    The spec's own PLRs stay on the grid (so a scan's runs at those PLRs are the runs of the
    full sweep); points of :func:`lrscan.spec.log_grid` closer than a quarter step to one of
    them are left out.
    """
    log = np.log10(np.asarray(plr, dtype=float))
    grid = log_grid(min(plr), max(plr), per_decade)
    step = (log.max() - log.min()) / (len(grid) - 1) if len(grid) > 1 else 1.0
    extra = [float(v) for v in grid if np.abs(log - math.log10(v)).min() > step / 4]
    return tuple(sorted([*map(float, plr), *extra]))


def pick_flrs(flr: Sequence[float], n: int) -> tuple[float, ...]:
    """``n`` FLRs of a grid, spread evenly in log: the lowest and highest, then the nearest to even steps between."""
    flr = sorted(flr)
    if n >= len(flr):
        return tuple(flr)
    log = np.log10(flr)
    targets = np.linspace(log[0], log[-1], n)
    return tuple(flr[i] for i in sorted({int(np.abs(log - t).argmin()) for t in targets}))


def select_plr(tree: xr.DataTree, plr: Sequence[float]) -> xr.DataTree:
    """A store's training data at some PLRs only: every node with a ``plr`` dimension ``.sel(plr=plr)``.

    Analyses (``/analysis``) are left out: they describe other PLRs. On the sub-tree of done
    PLRs every analyzer works as on a finished store.
    """
    if "analysis" in tree.children:
        tree = tree.drop_nodes("analysis")
    return tree.sel(plr=list(plr))


@dataclass(frozen=True)
class Round:
    """What a scan reports after each round: its number, its PLRs, whether it trained them (or
    read them back from the store), the PLRs and model-steps so far, the estimates and the result."""

    number: int
    plr: tuple[float, ...]
    trained: bool
    n_plr: int
    model_steps: int
    estimate: dict[str, Estimate]
    result: xr.Dataset


class Scan:
    """A checked scan: its spec, search and costs, before any training.

    Parameters
    ----------
    spec
        The sweep to scan (a preset or config, with overrides): its PLR range, FLR grid,
        seeds and schedule. The scan's own spec replaces its PLR grid by :func:`fine_grid`
        and its FLRs by ``flrs`` of them (:func:`pick_flrs`).
    store
        The scan's store; created when missing, checked against the scan's spec otherwise.
    per_decade
        Density of the fine grid.
    flrs
        Number of FLRs to fine-tune with (at least 2: the lowest and the highest, whose
        barrier the 2A test reads).
    precision
        Target uncertainty of the 2A range's ends, in decades (default: the grid's
        resolution, half its largest step).
    per_bracket
        New PLRs per unresolved bracket and round.

    Raises
    ------
    LrscanError
        On options that cannot work: a spec without fine-tuning, a precision finer than the
        grid resolves, too few FLRs.
    """

    def __init__(self, spec: Spec, store: str | os.PathLike, *, per_decade: float = PER_DECADE, flrs: int = N_FLRS,
                 precision: float | None = None, per_bracket: int = 1):
        if spec.finetune_epochs <= 0:
            raise LrscanError("a scan needs fine-tuning (finetune_epochs > 0): the 2A range and the recommended PLR "
                              "are read from fine-tuned accuracies")
        if len(spec.plr) < 2:
            raise LrscanError("a scan searches a PLR range: give the spec at least two PLRs, its lowest and highest")
        _positive("--per-decade", per_decade)
        if flrs < 2 and len(spec.flr) > 1:
            raise LrscanError(f"--flrs must be at least 2 (the lowest and the highest FLR), got {flrs}")
        if per_bracket < 1:
            raise LrscanError(f"--per-bracket must be at least 1, got {per_bracket}")
        self.spec = dataclasses.replace(spec, plr=fine_grid(spec.plr, per_decade), flr=pick_flrs(spec.flr, flrs))
        self.store = store
        log_grid = tuple(float(v) for v in np.log10(self.spec.plr))
        resolution = Search(log_grid, precision=1.0).resolution
        if precision is None:
            precision = resolution
        _positive("--precision", precision)
        if precision < resolution - 1e-9:
            raise LrscanError(
                f"--precision {precision:g} is finer than the scan's grid resolves ({resolution:.3g} decades, half its "
                f"largest step at {per_decade:g} PLRs per decade); raise --per-decade or the precision")
        self.search = Search(log_grid, precision=precision, per_bracket=per_bracket)
        self.per_decade = float(per_decade)
        plan = Setup.build(self.spec).plan
        n_seeds = len(plan.runs)
        # One step of one run is one model-step; SWA trains nothing.
        self.plr_steps = n_seeds * (plan.pretrain.n_steps + len(self.spec.flr) * plan.finetune.n_steps)
        self.grid_steps = len(spec.plr) * n_seeds * (plan.pretrain.n_steps + len(spec.flr) * plan.finetune.n_steps)

    @property
    def first_round_steps(self) -> int:
        return len(self.search.first()) * self.plr_steps

    def check(self, budget: float | None = None, seconds: float | None = None) -> None:
        """Raise unless a budget (model-steps) and a time limit (seconds) can work; None is no limit."""
        if budget is not None:
            _positive("--budget", budget)
            if budget < self.first_round_steps:
                raise LrscanError(
                    f"--budget {budget:,.0f} model-steps does not cover the first round "
                    f"({self.first_round_steps:,} model-steps: {len(self.search.first())} PLRs of "
                    f"{self.plr_steps:,} each)")
        if seconds is not None:
            _positive("--time", seconds)

    def run(
        self,
        *,
        budget: float | None = None,
        seconds: float | None = None,
        client=None,
        progress: Callable[[Progress], None] | None = None,
        report: Callable[[Round], None] | None = None,
    ) -> xr.Dataset:
        """Run rounds until the estimates reach the precision, the budget or the time runs out.

        Parameters
        ----------
        budget
            Most model-steps the whole scan may spend (all rounds, those of earlier calls
            included); a round that would pass it is not started.
        seconds
            Wall time of this call after which no new round starts (the round in flight
            finishes; finished runs are kept whenever the call is interrupted).
        client
            A ``dask.distributed.Client`` to train on (default: this process).
        progress
            Called with a :class:`~lrscan.train.sweep.Progress` as training advances.
        report
            Called with a :class:`Round` after each round.

        Returns
        -------
        xr.Dataset
            The result, as stored under ``/analysis/scan`` (see :meth:`result`).
        """
        self.check(budget, seconds)
        start = time.perf_counter()
        details: dict[int, xr.Dataset] = {}
        trained = [False]  # whether the latest round trained anything (else it was replayed from the store)

        def stop(picks: Sequence[int], trace: Trace) -> str | None:
            if budget is not None and (len(trace.observed) + len(picks)) * self.plr_steps > budget:
                return "budget"
            if seconds is not None and time.perf_counter() - start > seconds and not self._done(picks).all():
                return "time"
            return None

        def observe(picks: Sequence[int]) -> dict[int, Observation]:
            plr = [self.spec.plr[i] for i in picks]
            todo = ~self._done(picks)
            if todo.any():
                train(self.spec, self.store, plr=plr, client=client, progress=progress)
            observed, detail = self._observe(picks)
            details[len(details)] = detail
            trained[0] = bool(todo.any())
            return observed

        def after(trace: Trace) -> None:
            current = self.result(trace, details, "running")
            if trained[0]:  # replayed rounds leave the stored result as it is until the scan moves on
                write(self.store, current)
            if report is not None:
                picks = trace.rounds[-1]
                report(Round(len(trace.rounds) - 1, tuple(self.spec.plr[i] for i in picks), trained[0],
                             len(trace.observed), len(trace.observed) * self.plr_steps, trace.history[-1], current))

        trace = drive(self.search, observe, stop, after)
        out = self.result(trace, details, trace.stopped, budget)
        if trace.rounds:
            write(self.store, out)
        return out

    def _done(self, picks: Sequence[int]) -> np.ndarray:
        """Whether each picked PLR has every run of every stage done."""
        try:
            root = zarr.open_group(str(self.store), mode="r")
        except (FileNotFoundError, zarr.errors.GroupNotFoundError):
            return np.zeros(len(picks), bool)
        done = np.ones(len(picks), bool)
        for stage in ("pretrain", "swa", "finetune"):
            if f"{stage}/metrics" in root:
                flags = root[f"{stage}/metrics/done"][...].astype(bool)
                done &= flags.reshape(flags.shape[0], -1).all(1)[list(picks)]
        return done

    def _observe(self, picks: Sequence[int]) -> tuple[dict[int, Observation], xr.Dataset]:
        """Analyse one round's PLRs (on their sub-tree): the search's observations and the per-run details."""
        sub = select_plr(open_store(self.store), [self.spec.plr[i] for i in picks])
        ft_pair = barriers(sub, pairs=[("ft_low", "ft_high")])
        labels = regimes(sub, barriers=ft_pair)
        final = metrics(sub)
        detail = labels[[name for name, var in labels.data_vars.items() if set(var.dims) == {"plr", "seed"}]]
        detail["ft_test_acc"] = final.ft_test_acc.load()
        # The study's score: fine-tuning lowers the LR (FLRs below the PLR), averaged over them.
        judged = scores(detail.ft_test_acc, None, int(labels.attrs["n_test"]))
        detail["score"], detail["score_se"] = judged.ft, judged.ft_se
        observed = {
            i: Observation(tuple(str(v) for v in detail.regime.isel(plr=k).values), float(detail.score.isel(plr=k)),
                           float(detail.score_se.isel(plr=k)))
            for k, i in enumerate(picks)
        }
        return observed, detail.drop_vars(["pair", "pair_a", "pair_b"], errors="ignore")

    def result(self, trace: Trace, details: dict[int, xr.Dataset], stopped: str,
               budget: float | None = None) -> xr.Dataset:
        """The scan's result: estimates, their history, and every trained PLR's round and observations."""
        rounds = trace.round_of()
        per_plr = xr.concat([details[k] for k in sorted(details)], dim="plr").sortby("plr") if details else None
        quantity = np.array(QUANTITIES, dtype=object)
        last = trace.history[-1] if trace.history else {}
        def values(attr: str) -> np.ndarray:
            return np.array([getattr(last[q], attr) if last else np.nan for q in QUANTITIES])

        def history(attr: str) -> np.ndarray:
            rows = [[getattr(h[q], attr) for q in QUANTITIES] for h in trace.history]
            return np.array(rows, dtype=float).reshape(-1, len(QUANTITIES))

        out = xr.Dataset(
            {
                "estimate_log10": ("quantity", values("value")),
                "uncertainty_log10": ("quantity", values("uncertainty")),
                "bracket_low_log10": ("quantity", values("low")),
                "bracket_high_log10": ("quantity", values("high")),
                "history_log10": (("after_round", "quantity"), history("value")),
                "history_uncertainty_log10": (("after_round", "quantity"), history("uncertainty")),
                "history_model_steps": ("after_round", np.cumsum([len(r) for r in trace.rounds], dtype=np.int64)
                                        * self.plr_steps),
            },
            coords={"quantity": quantity, "after_round": np.arange(len(trace.history))},
        )
        out["estimate_plr"] = 10.0 ** out.estimate_log10
        if per_plr is not None:
            out = out.merge(per_plr)
            index = [self.spec.plr.index(float(p)) for p in out.plr.values]
            out["round"] = ("plr", np.array([rounds[i] for i in index], dtype=np.int64))
            out["regime_mode"] = ("plr", np.array([trace.observed[i].mode for i in index], dtype=object))
            if last and last["recommended"].found:
                at = out.estimate_plr.sel(quantity="recommended")
                acc = out.ft_test_acc.mean("seed").sel(plr=at, method="nearest")
                acc = acc.where(acc.flr < acc.plr).drop_vars(["plr", "quantity"])
                out["recommended_flr"] = acc.idxmax("flr")
                out["recommended_test_acc"] = acc.max("flr")
        out.attrs = self._attrs(trace, stopped, budget)
        return out

    def _attrs(self, trace: Trace, stopped: str, budget: float | None) -> dict:
        attrs = {
            "description": "lrscan scan: the convergence threshold (quantity 1|2), the upper end of the 2A range "
                           "(2A|2B) and the recommended PLR, in log10 PLR with the half-width of their bracket; "
                           "the round in which each trained PLR was added and what the search read of it",
            "lrscan_analyzer": "scan",
            "stopped": stopped,
            "rounds": len(trace.rounds),
            "model_steps": len(trace.observed) * self.plr_steps,
            "model_steps_per_plr": self.plr_steps,
            "full_grid_model_steps": self.grid_steps,
            "per_decade": self.per_decade,
            "precision": self.search.precision,
            "per_bracket": self.search.per_bracket,
            "grid_size": len(self.spec.plr),
            "flr": list(self.spec.flr),
        }
        if budget is not None:
            attrs["budget"] = float(budget)
        return attrs


def estimates(result: xr.Dataset) -> dict[str, Estimate]:
    """The estimates of a scan result (as :meth:`Scan.run` returns or ``/analysis/scan`` holds), by quantity."""
    return {str(q): Estimate(*(float(result[name].sel(quantity=q))
                               for name in ("estimate_log10", "bracket_low_log10", "bracket_high_log10")))
            for q in result.quantity.values}


def write(store: str | os.PathLike, result: xr.Dataset) -> None:
    """Persist a scan result under ``/analysis/scan``; its fingerprint, written last, marks it complete."""
    key = json.dumps({"attrs": result.attrs, "plr": result.plr.values.tolist() if "plr" in result.coords else []},
                     sort_keys=True, default=str)
    persist(store, "scan", result, hashlib.sha256(key.encode()).hexdigest())


def _positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        shown = f"{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else repr(value)
        raise LrscanError(f"{name} must be a positive number, got {shown}")

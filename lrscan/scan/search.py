"""Where an adaptive scan trains next: pure functions from observations per PLR to the next PLRs.

The scan works on a fixed, fine grid of PLRs (indices into :attr:`Search.grid`, log10 PLR).
Round 0 is a coarse log-spaced subset of it; after each round, :meth:`Search.next` reads the
observations of every PLR trained so far (each seed's regime label and the fine-tuned
accuracy) and places the next PLRs where they decide the most:

- **boundaries** (``1|2``, the convergence threshold, and ``2A|2B``): the observed PLRs are
  cut into a lower and an upper side at the cut that leaves the fewest labels on the wrong
  side (the rule of :func:`lrscan.analyze.boundaries.locate_boundary`, with the same label
  sets); the boundary's *bracket* runs from the observed PLR below the best cut to the one
  above it (below the lowest and above the highest best cut where several tie, so a PLR
  whose seeds disagree widens the bracket instead of being decided by chance). A bracket
  wider than the precision gets ``per_bracket`` new PLRs spread evenly over it in log-LR:
  bisection for one.
- **the recommended PLR**: the best fine-tuned accuracy, smoothed over the observed PLRs
  within ``smooth`` decades, among the PLRs whose most common label is 2A (all observed PLRs
  while there are none). New PLRs go to the middle of each side between it and its observed
  neighbours that is wider than twice the precision (golden-section style local refinement,
  both sides at once). Its bracket runs from the observed neighbour below the lowest to the
  one above the highest PLR whose smoothed accuracy cannot be told from the best within its
  noise (``margin`` where the observations carry none): the PLRs tied with the best.

Every estimate is a value with a bracket in log10 PLR; its uncertainty is the bracket's
half-width. Nothing here trains or reads a store: :func:`drive` runs the rounds with any
``observe`` function, which is how the tests check the search against a simulated response.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

from lrscan.analyze.best import tied
from lrscan.analyze.regimes import BOUNDARIES, LABELS

# What a scan estimates: the two boundaries of the 2A range, and the best PLR in it.
QUANTITIES = ("1|2", "2A|2B", "recommended")
SEARCHED = {name: BOUNDARIES[name] for name in ("1|2", "2A|2B")}
# Labels of which a scan must have seen one before it has a boundary (as in ``regimes``).
NEED = {"1|2": None, "2A|2B": {"2A", "2B"}}
# Points per decade of the first round's coarse grid.
COARSE_PER_DECADE = 2.0
# Slack for comparing log10 widths with the precision (floats of a log-spaced grid).
EPS = 1e-9


@dataclass(frozen=True)
class Observation:
    """What the search reads of one trained PLR.

    Attributes
    ----------
    labels
        Regime label of each seed ("1", "2A", "2", "2?", "2B", "3").
    score
        The accuracy the recommended PLR maximises (the scan uses the study's: the final
        fine-tuned test accuracy averaged over the FLRs below the PLR, mean over seeds,
        :func:`lrscan.analyze.best.scores`); NaN when there is none.
    se
        The score's noise (its standard error); NaN when unknown, and then ties with the
        best are decided by :attr:`Search.margin`.
    """

    labels: tuple[str, ...]
    score: float
    se: float = math.nan

    @property
    def mode(self) -> str:
        """The most common label (ties go to the label of smaller PLRs, as in ``regimes``)."""
        counts = Counter(self.labels)
        return max(LABELS, key=lambda label: (counts[label], -LABELS.index(label)))


@dataclass(frozen=True)
class Estimate:
    """A scan's estimate of one quantity, in log10 PLR: a value inside a bracket.

    All three are NaN when the quantity is not within the observed PLRs (a boundary the
    scan never crossed).
    """

    value: float
    low: float
    high: float

    @property
    def uncertainty(self) -> float:
        """Half the bracket's width, in decades."""
        return (self.high - self.low) / 2

    @property
    def found(self) -> bool:
        return math.isfinite(self.value)


NOT_FOUND = Estimate(math.nan, math.nan, math.nan)


@dataclass(frozen=True)
class Search:
    """The placement rules of a scan over a fixed grid of PLRs.

    Parameters
    ----------
    grid
        log10 of the PLRs the scan may train, ascending.
    precision
        Target uncertainty (bracket half-width) of each boundary, in decades; the
        recommended PLR's sides are refined down to twice this. At least
        :attr:`resolution`.
    per_bracket
        New PLRs per unresolved bracket and round (1: bisection).
    smooth
        Half-width in decades of the window over which the recommended PLR's accuracy is
        averaged; default: the grid's largest spacing, so immediate neighbours only.
    margin
        Accuracy (a fraction) within which a PLR counts as tied with the best, for the
        recommended PLR's bracket, where the observations carry no noise (``se``): half a
        percentage point, about the standard error of a mean over two seeds of an accuracy
        measured on a few thousand test samples. With their noise, a PLR is tied with the
        best when it cannot be told from it (:func:`lrscan.analyze.best.tied`).
    """

    grid: tuple[float, ...]
    precision: float
    per_bracket: int = 1
    smooth: float | None = None
    margin: float = 0.005
    coarse: tuple[int, ...] = field(init=False)

    def __post_init__(self):
        grid = np.asarray(self.grid, dtype=float)
        if grid.ndim != 1 or grid.size == 0 or np.any(np.diff(grid) <= 0):
            raise ValueError("a search grid is a non-empty ascending sequence of log10 PLRs")
        n = max(2, math.ceil((grid[-1] - grid[0]) * COARSE_PER_DECADE - EPS) + 1) if grid.size > 1 else 1
        targets = np.linspace(grid[0], grid[-1], n)
        object.__setattr__(self, "coarse", tuple(sorted({int(np.abs(grid - t).argmin()) for t in targets})))

    @property
    def spacing(self) -> float:
        """The grid's largest step in decades."""
        return float(np.diff(self.grid).max()) if len(self.grid) > 1 else 0.0

    @property
    def resolution(self) -> float:
        """The finest precision the grid guarantees everywhere: half its largest step."""
        return self.spacing / 2

    def first(self) -> list[int]:
        """Round 0: the coarse grid (about two PLRs per decade, both ends included)."""
        return list(self.coarse)

    def estimate(self, observed: Mapping[int, Observation]) -> dict[str, Estimate]:
        """The current estimate of each quantity of :data:`QUANTITIES`."""
        out = {}
        for name in SEARCHED:
            bracket = self._bracket(observed, name)
            out[name] = NOT_FOUND if bracket is None else self._span(*bracket)
        best = self._best(observed)
        if best is None:
            out["recommended"] = NOT_FOUND
        else:
            tied = self._tied(observed)
            lo, hi = self._neighbours(observed, min(tied))[0], self._neighbours(observed, max(tied))[1]
            out["recommended"] = Estimate(self.grid[best], self.grid[lo], self.grid[hi])
        return out

    def next(self, observed: Mapping[int, Observation]) -> list[int]:
        """The PLRs (grid indices, ascending) to train next; empty when nothing is left to refine."""
        picks: set[int] = set()
        for name in SEARCHED:
            bracket = self._bracket(observed, name)
            if bracket is not None and self._span(*bracket).uncertainty > self.precision + EPS:
                picks |= self._inside(observed, *bracket)
        best = self._best(observed)
        if best is not None:
            lo, hi = self._neighbours(observed, best)
            for side in ((lo, best), (best, hi)):
                if self.grid[side[1]] - self.grid[side[0]] > 2 * self.precision + EPS:
                    picks |= self._inside(observed, *side)
        return sorted(picks)

    def unresolved(self, observed: Mapping[int, Observation]) -> list[str]:
        """Quantities found that the precision would still refine."""
        est = self.estimate(observed)
        out = [name for name in SEARCHED if est[name].found and est[name].uncertainty > self.precision + EPS]
        best = self._best(observed)
        if best is not None:
            lo, hi = self._neighbours(observed, best)
            if max(self.grid[best] - self.grid[lo], self.grid[hi] - self.grid[best]) > 2 * self.precision + EPS:
                out.append("recommended")
        return out

    # --- the rules ----------------------------------------------------------------------------

    def _bracket(self, observed: Mapping[int, Observation], name: str) -> tuple[int, int] | None:
        """Grid indices of the observed PLRs on either side of a boundary's best cut(s)."""
        lower, upper = SEARCHED[name]
        idx = sorted(observed)
        labels = [observed[i].labels for i in idx]
        low = np.array([sum(label in lower for label in ls) for ls in labels])
        up = np.array([sum(label in upper for label in ls) for ls in labels])
        need = NEED[name]
        if len(idx) < 2 or not low.any() or not up.any() or (need and not any(set(ls) & need for ls in labels)):
            return None
        # wrong[c]: labels on the wrong side of the cut between idx[c] and idx[c + 1]
        wrong = np.cumsum(up)[:-1] + low.sum() - np.cumsum(low)[:-1]
        best = np.flatnonzero(wrong == wrong.min())
        return idx[best[0]], idx[best[-1] + 1]

    def _span(self, lo: int, hi: int) -> Estimate:
        return Estimate((self.grid[lo] + self.grid[hi]) / 2, self.grid[lo], self.grid[hi])

    def _smoothed(self, observed: Mapping[int, Observation]) -> dict[int, tuple[float, float]]:
        """Smoothed score and its noise of the candidates for the recommended PLR: the 2A ones
        when there are any. The noise of a mean of k scores is that of independent ones."""
        scored = [i for i in sorted(observed) if math.isfinite(observed[i].score)]
        x = np.array([self.grid[i] for i in scored])
        s = np.array([observed[i].score for i in scored])
        se = np.array([observed[i].se for i in scored])
        window = self.spacing + EPS if self.smooth is None else self.smooth
        pool = [i for i in scored if observed[i].mode == "2A"] or scored
        out = {}
        for i in pool:
            near = np.abs(x - self.grid[i]) <= window
            out[i] = float(s[near].mean()), float(np.sqrt(np.square(se[near]).sum()) / near.sum())
        return out

    def _best(self, observed: Mapping[int, Observation]) -> int | None:
        """The candidate of the best smoothed score (the lowest PLR of a tie)."""
        smoothed = self._smoothed(observed)
        return max(smoothed, key=lambda i: (smoothed[i][0], -i)) if smoothed else None

    def _tied(self, observed: Mapping[int, Observation]) -> list[int]:
        """The candidates that cannot be told from the best: within the noise where every
        observation has one, within ``margin`` otherwise."""
        smoothed = self._smoothed(observed)
        index = sorted(smoothed)
        value = np.array([smoothed[i][0] for i in index])
        se = np.array([smoothed[i][1] for i in index])
        if np.isfinite(se).all():
            _, tie = tied(value, se)
            return [i for i, t in zip(index, tie) if t]
        return [i for i, v in zip(index, value) if v >= value.max() - self.margin - EPS]

    def _neighbours(self, observed: Mapping[int, Observation], i: int) -> tuple[int, int]:
        """The observed PLRs next to ``i`` on either side (``i`` itself at an end of the observed range)."""
        below = [j for j in observed if j < i]
        above = [j for j in observed if j > i]
        return (max(below) if below else i), (min(above) if above else i)

    def _inside(self, observed: Mapping[int, Observation], lo: int, hi: int) -> set[int]:
        """Up to ``per_bracket`` untrained grid indices strictly between ``lo`` and ``hi``, spread evenly in log-LR."""
        free = np.array([j for j in range(lo + 1, hi) if j not in observed])
        if free.size == 0:
            return set()
        grid = np.asarray(self.grid)
        targets = grid[lo] + (grid[hi] - grid[lo]) * np.arange(1, self.per_bracket + 1) / (self.per_bracket + 1)
        return {int(free[np.abs(grid[free] - t).argmin()]) for t in targets}


@dataclass
class Trace:
    """What :func:`drive` did: the PLRs of each round, every observation, the estimates after
    each round, and why it stopped."""

    rounds: list[list[int]] = field(default_factory=list)
    observed: dict[int, Observation] = field(default_factory=dict)
    history: list[dict[str, Estimate]] = field(default_factory=list)
    stopped: str = ""

    def round_of(self) -> dict[int, int]:
        """The round in which each observed PLR was added."""
        return {i: r for r, picks in enumerate(self.rounds) for i in picks}


def drive(
    search: Search,
    observe: Callable[[Sequence[int]], Mapping[int, Observation]],
    stop: Callable[[Sequence[int], Trace], str | None] | None = None,
    after: Callable[[Trace], None] | None = None,
) -> Trace:
    """Run rounds of a search until nothing is left to refine or ``stop`` says so.

    Parameters
    ----------
    search
        The placement rules.
    observe
        ``observe(picks) -> {index: Observation}`` for the PLRs of one round (training them,
        or a simulated response).
    stop
        Called before each round with its picks and the trace so far; a string it returns
        ends the scan before that round, as the stop reason.
    after
        Called after each round with the trace.

    Returns
    -------
    Trace
        ``stopped`` is the reason ``stop`` gave, ``"resolved"`` when every estimate found
        reached the precision, or ``"ambiguous"`` when some did not but its bracket has no
        untrained PLR left (the seeds disagree there).
    """
    trace = Trace()
    picks = search.first()
    while picks:
        reason = stop(picks, trace) if stop is not None else None
        if reason:
            trace.stopped = reason
            return trace
        trace.observed.update(observe(picks))
        trace.rounds.append(list(picks))
        trace.history.append(search.estimate(trace.observed))
        if after is not None:
            after(trace)
        picks = search.next(trace.observed)
    trace.stopped = "ambiguous" if search.unresolved(trace.observed) else "resolved"
    return trace

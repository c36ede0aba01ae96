"""After an import: do the stored test accuracies describe the store's data?

An imported store is analysed on the data its spec names (``--dataset``, ``--set data.*``).
If those are not the data the runs were trained and scored on, every analysis is quietly off;
the test accuracies the files carry tell. A few imported checkpoints are evaluated with
lrscan's own :class:`~lrscan.analyze.evaluate.Evaluator` and compared with what the files
stored, allowing for binomial noise.
"""

from __future__ import annotations

import math

import numpy as np

import lrscan
from lrscan.spec import Spec

# How many pre-training runs are re-evaluated (spread over the PLR grid), and how many standard
# deviations of the difference of two independent accuracy estimates count as noise.
N_CHECKED = 3
Z = 3.0


def noise(p: float, n: int) -> float:
    """The largest difference between two accuracies near ``p`` on ``n`` samples that noise
    explains: Z standard deviations of a difference of two binomial proportions, plus one
    sample (a tie broken the other way)."""
    p = min(max(p, 0.0), 1.0)
    return Z * math.sqrt(2 * p * (1 - p) / n) + 1 / n


def reevaluate(store: str, spec: Spec, n_checked: int = N_CHECKED) -> list[str]:
    """Warnings where a stored test accuracy differs from lrscan's evaluation of the same
    weights beyond binomial noise (none when they agree or the files stored no accuracy).

    Parameters
    ----------
    store
        An imported store.
    spec
        Its spec.
    n_checked
        Pre-training runs to check: their last checkpoint that has a stored test accuracy,
        the runs spread over the PLR grid.

    Returns
    -------
    list of str
        At most one warning, naming the worst disagreement.
    """
    from lrscan.analyze.evaluate import Evaluator

    tree = lrscan.open(store)
    acc = tree["pretrain/metrics"]["test_acc"]
    weights = tree["pretrain/weights"]["weights"]
    epochs = np.intersect1d(acc.epoch.values, weights.epoch.values)
    if epochs.size == 0:
        return []
    stored = acc.sel(epoch=epochs).load().values  # (plr, seed, epoch)
    candidates = [(p, s) for p in range(stored.shape[0]) for s in range(stored.shape[1])
                  if np.isfinite(stored[p, s]).any()]
    if not candidates:
        return []
    picks = [candidates[round(i)] for i in np.linspace(0, len(candidates) - 1, min(n_checked, len(candidates)))]
    picks = list(dict.fromkeys(picks))
    rows, where = [], []
    for p, s in picks:
        e = int(np.flatnonzero(np.isfinite(stored[p, s]))[-1])
        rows.append(weights.isel(plr=p, seed=s).sel(epoch=epochs[e]).values)
        where.append((p, s, e))
    flat = np.stack(rows)
    evaluator = Evaluator(spec)
    data_seeds = tree["pretrain/metrics"]["data_seed"].values
    index = np.array([spec.data_seeds.index(int(data_seeds[s])) for _, s, _ in where])
    _, ours = evaluator.evaluate(flat, index, "test")
    n = int(evaluator.sets["test"][1].shape[-1])
    worst = None
    for (p, s, e), theirs, mine in zip(where, (stored[p, s, e] for p, s, e in where), ours):
        if not (np.isfinite(theirs) and np.isfinite(mine)):
            continue
        gap, allowed = abs(float(theirs) - float(mine)), noise((float(theirs) + float(mine)) / 2, n)
        if gap > allowed and (worst is None or gap - allowed > worst[0]):
            worst = (gap - allowed, p, s, e, float(theirs), float(mine), allowed)
    if worst is None:
        return []
    _, p, s, e, theirs, mine, allowed = worst
    return [f"the stored test accuracy of the pretrain run at plr={spec.plr[p]:g}, seed index {s}, epoch "
            f"{epochs[e]:g} is {theirs:.1%}, but lrscan's evaluation of the same weights on the store's test set "
            f"({n} samples) gives {mine:.1%}, beyond binomial noise (±{allowed:.1%}): the store's data "
            "(--dataset, --set data.*) may not be the data these runs were trained on, and every analysis "
            "would measure other data"]

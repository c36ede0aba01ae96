"""Gradient norms at the stored solutions, computed from their weights (SPEC §5, "Gradient norm").

The trainer logs the gradient norm along the way (``grad_norm`` in the metrics), but an
imported store has none, and a solution the trainer never stepped from (an SWA average, the
end of a stage) has no logged value of its own. The study measures it afterwards at each
checkpoint, as here: the model in train mode on the unaugmented training set in order, in
mini-batches of the training batch size, and the mean over the mini-batches of the L2 norm of
the gradient of the batch's mean loss over the SI group.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import xarray as xr

from lrscan.analyze import analyzer
from lrscan.analyze.evaluate import BN_MODES, Evaluator, blocks
from lrscan.analyze.solutions import label, require_complete, resolve, solution_weights
from lrscan.errors import LrscanError
from lrscan.registry import closest
from lrscan.train.engine import Engine, loss_and_correct
from lrscan.train.flat import batch_norms

SPLITS = ("train", "test")


@analyzer("solution_grad_norm", needs=("pretrain",))
def solution_grad_norm(tree: xr.DataTree, solutions: Sequence[str] | None = None, split: str = "train",
                       bn_mode: str = "train", batch_size: int | None = None, drop_last: bool = False) -> xr.Dataset:
    """Mean mini-batch gradient norm of the SI group at every stored solution.

    For each solution (PT end, each SWA average, each FT end) the set is passed in order, in
    mini-batches of ``batch_size``, unaugmented; each mini-batch gives the L2 norm of the
    gradient of its mean loss over the SI group (the trainable parameters for a model trained
    off the sphere), and the result is the mean of these norms over the mini-batches — the
    study's ``calc_grad_norms`` measurement. The solutions' stored weights and BatchNorm
    statistics are not changed. Dropout is off, so the value is a function of the weights.

    Parameters
    ----------
    tree
        An opened, finished store (trained or imported).
    solutions
        Names of the solutions to measure (``pt``, ``swa=5``, ``ft=0.001``, ``ft_low``,
        ``ft_high``); default: all of them.
    split
        ``"train"`` (the study's default) or ``"test"``.
    bn_mode
        ``"train"``: BatchNorm normalises each mini-batch with its own statistics, as the
        study's script (``model.train()``); ``"eval"``: with the solution's stored statistics.
        The same for a model without BatchNorm.
    batch_size
        Mini-batch size; default: the spec's training batch size.
    drop_last
        Leave out an incomplete last mini-batch. The study's loader keeps it (a smaller batch,
        counted as one in the mean); the trainer's drops it.

    Returns
    -------
    xr.Dataset
        ``grad_norm``, and the loss and accuracy of the same passes (``loss``, ``acc``: means
        over the samples seen), over (plr, seed, solution), float64. NaN for a solution whose
        weights are not finite (diverged, or never stored). attrs: the options and
        ``n_batches``.
    """
    if split not in SPLITS:
        raise LrscanError(f"split must be one of {', '.join(map(repr, SPLITS))}, got {split!r}")
    if bn_mode not in BN_MODES:
        raise LrscanError(f"bn_mode must be one of {', '.join(map(repr, BN_MODES))}, got {bn_mode!r}")
    require_complete(tree)
    weights = solution_weights(tree)
    if solutions is not None:
        weights = weights.sel(solution=_labels(tree, weights, solutions))
    weights = weights.transpose("plr", "seed", "solution", "param")
    evaluator = Evaluator.of(tree)
    size = evaluator.setup.spec.batch_size if batch_size is None else int(batch_size)
    # On the device once, not once per block.
    x, y = (t.to(evaluator.setup.device) for t in evaluator.sets[split])
    starts = _batch_starts(x.shape[1], size, drop_last, split)
    runs = weights.isel(param=0, drop=True)
    out = np.full((3, runs.size), np.nan)
    for rows, flat, data in blocks(weights, evaluator.data_index(tree)):
        out[:, rows] = measure(evaluator, flat, data, (x, y), starts, size, bn_mode)
    dims = runs.dims
    return xr.Dataset(
        {name: (dims, values.reshape(runs.shape)) for name, values in zip(("grad_norm", "loss", "acc"), out)},
        coords=runs.coords,
        attrs={"split": split, "bn_mode": bn_mode, "batch_size": size, "drop_last": int(drop_last),
               "n_batches": len(starts), "group": evaluator.group,
               "description": f"mean over mini-batches of the {split} set of the L2 norm of the "
                              f"{evaluator.group} group's gradient, BatchNorm in {bn_mode} mode"},
    )


def _labels(tree: xr.DataTree, weights: xr.DataArray, names: Sequence[str]) -> list[str]:
    """The ``solution`` labels of the names a user gave (``ft=1e-3`` is ``ft=0.001``)."""
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise LrscanError(f"solutions must be a list of solution names, got {names!r}")
    known = list(weights.solution.values)
    labels = []
    for name in names:
        kind, sep, value = resolve(tree, name).partition("=")
        try:
            got = label(kind, float(value)) if sep else kind
        except ValueError:
            got = name
        if got not in known:
            raise LrscanError(f"unknown solution {name!r}{closest(name, known)}; the store has {', '.join(known)}")
        labels.append(got)
    if not labels:
        raise LrscanError("solutions is empty; give at least one solution name, or leave it out for all")
    return list(dict.fromkeys(labels))


def _batch_starts(n: int, size: int, drop_last: bool, split: str) -> list[int]:
    if size < 1:
        raise LrscanError(f"batch_size must be at least 1, got {size}")
    starts = list(range(0, n - n % size if drop_last else n, size))
    if not starts:
        raise LrscanError(f"batch_size = {size} exceeds the {n} samples of the {split} set (drop_last leaves none)")
    return starts


def measure(evaluator: Evaluator, flat: np.ndarray, data_index: np.ndarray,
            split: tuple[torch.Tensor, torch.Tensor], starts: Sequence[int], batch_size: int,
            bn_mode: str) -> np.ndarray:
    """Mean mini-batch gradient norm, loss and accuracy of each row of ``flat`` (M, P).

    Parameters
    ----------
    evaluator
        The store's evaluator (model, layout, device).
    flat
        States of solutions, (M, P), in the store's layout.
    data_index
        Each row's position among the store's data seeds, (M,).
    split
        The set, x (D, N, ...) and y (D, N), one per data seed.
    starts, batch_size
        The mini-batches: ``[s, s + batch_size)`` for each start (the last may be shorter).
    bn_mode
        ``"train"`` or ``"eval"`` (see :func:`solution_grad_norm`).

    Returns
    -------
    np.ndarray
        (3, M): the mean gradient norm, the loss and the accuracy; NaN for non-finite rows.
    """
    setup = evaluator.setup
    out = np.full((3, flat.shape[0]), np.nan)
    finite = np.flatnonzero(np.isfinite(flat).all(1))
    if finite.size == 0:  # runs that do not exist (never stored) cost nothing
        return out
    engine = setup.engine(torch.as_tensor(flat[finite], dtype=torch.float32))
    x, y = split[0].to(setup.device), split[1].to(setup.device)
    which = torch.as_tensor(np.asarray(data_index)[finite], dtype=torch.long, device=setup.device)
    module = engine.module
    module.eval()  # dropout off: a measurement of the weights, not of a random mask
    if bn_mode == "train":
        for norm in batch_norms(module):
            norm.train()
    # As many runs at once as one pass takes (one at a time run by run: the graph of one run).
    groups = engine.groups(batch_size)
    # The module's own integer buffers (num_batches_tracked) would count these passes: each run
    # gets copies (stacked, as a model called through its module takes every tensor per run).
    own = {n: b for n, b in module.named_buffers() if n not in engine.buffers} if engine.seeded else {}
    n_used = sum(min(start + batch_size, x.shape[1]) - start for start in starts)
    results = []
    with torch.enable_grad():  # also when called under torch.no_grad()
        for rows in groups:
            results.append(_measure_runs(engine, rows.to(setup.device), own, x, y, which, starts, batch_size, n_used))
    out[:, finite] = np.concatenate(results, axis=1)
    return out


def _measure_runs(engine: Engine, rows: torch.Tensor, own: dict[str, torch.Tensor], x: torch.Tensor,
                  y: torch.Tensor, which: torch.Tensor, starts: Sequence[int], batch_size: int,
                  n_used: int) -> np.ndarray:
    """(3, len(rows)): mean gradient norm, loss and accuracy of the engine's runs ``rows``,
    one backward per mini-batch for all of them."""
    trained = {n: p[rows].detach() for n, p in engine.params.items()}
    # Indexing copies the buffers: a train-mode BatchNorm writes its running statistics into
    # the tensors it is given, and these copies are thrown away.
    fixed = {**{n: p[rows] for n, p in engine.frozen.items()}, **{n: b[rows] for n, b in engine.buffers.items()},
             **{n: b.reshape(1).repeat(len(rows)) for n, b in own.items()}}
    norms = torch.zeros(len(rows), dtype=torch.float64, device=x.device)
    loss_sum, correct = torch.zeros_like(norms), torch.zeros_like(norms)
    for start in starts:
        batch = slice(start, start + batch_size)
        leaves = {n: p.clone().requires_grad_() for n, p in trained.items()}
        logits = engine.logits({**leaves, **fixed}, x[which[rows], batch])
        loss, right = loss_and_correct(logits, y[which[rows], batch])
        # The sum of each run's mean loss: each run's gradient is its own batch's.
        grads = torch.autograd.grad(loss.mean(1).sum(), list(leaves.values()))
        norms += sum(g.reshape(len(rows), -1).double().square().sum(1) for g in grads).sqrt()
        loss_sum += loss.detach().double().sum(1)
        correct += right.double().sum(1)
    return torch.stack([norms / len(starts), loss_sum / n_used, correct / n_used]).cpu().numpy()

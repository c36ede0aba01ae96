"""Evaluate arbitrary parameter vectors of a store's model on its data.

Analyses build points that training never visited (points on a path between two solutions,
averages); :class:`Evaluator` scores any stack of such vectors with the same code that scored
the training runs.
"""

from __future__ import annotations

import json
from functools import cached_property, lru_cache, partial
from typing import Iterator

import numpy as np
import torch
import xarray as xr
from torch import nn

from lrscan.analyze.progress import block_done  # `lrscan analyze` shows it
from lrscan.errors import LrscanError
from lrscan.spec import Spec
from lrscan.train.flat import batch_norms, project
from lrscan.train.loop import EVAL_CHUNK
from lrscan.train.sweep import Setup

# How BatchNorm layers score a point (see Evaluator.evaluate).
BN_MODES = ("eval", "train")
# Float32 weights an analysis holds at once (64 MiB): a block of solutions, whatever their number.
BLOCK_VALUES = 1 << 24
# Most solutions of a batched model scored together (their activations are per solution).
MAX_BLOCK = 256


def rows_at_once(row_values: int) -> int:
    """Rows of ``row_values`` float32 values each that the budget (:data:`BLOCK_VALUES`) holds;
    at least one."""
    return max(1, BLOCK_VALUES // row_values)


def blocks(weights: xr.DataArray, data_index: xr.DataArray, keep: tuple[str, ...] = ("param",),
           copies: int = 1) -> Iterator[tuple[slice, np.ndarray, np.ndarray]]:
    """The rows of ``weights`` block by block, so that memory does not grow with their number.

    Parameters
    ----------
    weights
        Solutions (..., param), lazy or not; its rows are every index of the dims not in
        ``keep``, in order (C order of the shape without them).
    data_index
        Each seed's data set (:meth:`Evaluator.data_index`), broadcast along the rows.
    keep
        The dims of one row (``("end", "param")`` for the two ends of a path).
    copies
        Vectors the caller makes of each row's values (the points of a path): the block is
        sized so that all of them fit the budget (:data:`BLOCK_VALUES`).

    Yields
    ------
    (slice, np.ndarray, np.ndarray)
        The block's rows, their values (n, *keep) — only this block's chunks are read — and
        their data indices (n,).
    """
    runs = weights.isel({dim: 0 for dim in keep}, drop=True)
    data = data_index.broadcast_like(runs).transpose(*runs.dims).values.ravel()
    index = np.indices(runs.shape).reshape(runs.ndim, -1)
    size = min(MAX_BLOCK, rows_at_once(copies * int(np.prod([weights.sizes[d] for d in keep]))))
    for first in range(0, index.shape[1], size):
        block = index[:, first:first + size]
        # Pointwise selection reads only the chunks of this block's solutions.
        picked = weights.isel({dim: xr.DataArray(block[i], dims="row") for i, dim in enumerate(runs.dims)})
        rows = slice(first, first + block.shape[1])
        yield rows, picked.transpose("row", *keep).values, data[rows]
        block_done(rows.stop, index.shape[1])


class Evaluator:
    """Scores parameter vectors of the model a store was trained with.

    Parameters
    ----------
    spec
        The store's spec (``lrscan.store.read_spec`` or ``Spec.from_dict(tree.attrs["spec"])``).
    """

    def __init__(self, spec: Spec):
        self.setup = Setup.build(spec)
        self.layers = self.setup.layers
        self.radius = spec.radius
        self.group = self.setup.entry.norm_group
        self.data_seeds = list(spec.data_seeds)

    @classmethod
    def of(cls, tree: xr.DataTree) -> "Evaluator":
        """The evaluator of a store's spec; the last one is kept, so that the analyzers of one
        ``lrscan analyze`` load the data once."""
        return _evaluator(json.dumps(tree.attrs["spec"], sort_keys=True))

    @cached_property
    def sets(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Named evaluation sets, each stacked over data seeds: x (D, ..., N, features), y."""
        data = [self.setup.data[d] for d in self.data_seeds]
        sets = {
            "train": (torch.stack([d.x_train for d in data]), torch.stack([d.y_train for d in data])),
            "test": (torch.stack([d.x_test for d in data]), torch.stack([d.y_test for d in data])),
        }
        for name in data[0].extra:
            sets[name] = (torch.stack([d.extra[name][0] for d in data]), torch.stack([d.extra[name][1] for d in data]))
        return sets

    def construct(self, flat: np.ndarray, data_index: np.ndarray) -> np.ndarray:
        """Make constructed points (averages, points on a path) valid states, (N, P).

        Puts each row's SI group back on the sphere and, for BatchNorm models, recomputes its
        statistics on its unaugmented training set (SPEC §5) in batches of the training batch
        size, with the trainer's code (as the trainer's SWA and the study's ``update_bn``).
        """
        return self._construct(flat, data_index, score=False)[0]

    def construct_scored(self, flat: np.ndarray, data_index: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """:meth:`construct`, and each point's train accuracy with BatchNorm in train mode
        (``evaluate(points, data_index, "train", bn_mode="train")[1]``) where the statistics
        pass gives it: the same batches in the same order, so one pass over the training set
        serves both. ``None`` where it does not (a model without BatchNorm, or with other
        layers that train mode changes, such as dropout): then score the points apart."""
        return self._construct(flat, data_index, score=True)

    def _construct(self, flat: np.ndarray, data_index: np.ndarray, score: bool) -> tuple[np.ndarray, np.ndarray | None]:
        flat_t = project(torch.as_tensor(np.asarray(flat), dtype=torch.float32), self.layers, self.radius)
        if not any(layer.buffer for layer in self.layers) or flat_t.shape[0] == 0:
            return flat_t.numpy(), None
        x, y = self.sets["train"]
        engine = self.setup.engine(flat_t)
        score = score and not any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0
                                  for m in engine.module.modules())
        device = self.setup.device
        scores = engine.recompute_bn(x.to(device), torch.as_tensor(np.array(data_index)),
                                     batch_size=self.setup.spec.batch_size, y=y.to(device) if score else None)
        points = engine.flat().cpu().numpy()
        if scores is None:
            return points, None
        finite = torch.isfinite(flat_t).all(1)
        return points, torch.where(finite, scores[1].cpu(), torch.tensor(float("nan"))).numpy()

    def evaluate(self, flat: np.ndarray, data_index: np.ndarray,
                 split: str | tuple[torch.Tensor, torch.Tensor] = "test", *, bn_mode: str = "eval",
                 batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Mean loss and accuracy of each row of ``flat`` (N, P) on ``split``: the name of one
        of :attr:`sets`, or a set of the same form ``(x, y)`` that an analysis derived.

        ``bn_mode="eval"`` scores with each row's BatchNorm statistics, as the trainer scores
        its runs. ``bn_mode="train"`` scores as the study measures the train error of
        BatchNorm models: BatchNorm in train mode on the set in order, in batches of
        ``batch_size`` (default: the spec's training batch size; an incomplete last batch is
        left out) normalised with their own statistics, which leave the rows' untouched
        (:meth:`~lrscan.train.engine.Engine.evaluate_train_mode`). For a model without
        BatchNorm the two modes are the same evaluation.

        ``data_index[i]`` is the position of row i's data seed in the store's data seeds (the
        ``seed`` coordinate's ``data_seed`` mapped through ``spec.data_seeds``). Sets with an
        extra leading axis (such as ``single_feature``: one set per feature) give (N, K).
        Rows with non-finite weights (a diverged or unwritten solution) score NaN: the model
        would still output a guess for them.

        Constructed points must pass through :meth:`construct` first.
        """
        if bn_mode not in BN_MODES:
            raise LrscanError(f"bn_mode must be one of {', '.join(map(repr, BN_MODES))}, got {bn_mode!r}")
        x, y = self.sets[split] if isinstance(split, str) else split
        flat_t = torch.as_tensor(np.asarray(flat), dtype=torch.float32)
        which = torch.as_tensor(np.array(data_index), dtype=torch.long)
        if flat_t.shape[0] == 0:
            shape = (0,) + tuple(y.shape[1:-1])
            return np.zeros(shape), np.zeros(shape)
        engine = self.setup.engine(flat_t)
        x, y, which = x.to(self.setup.device), y.to(self.setup.device), which.to(self.setup.device)
        if bn_mode == "train" and batch_norms(engine.module):
            size = self.setup.spec.batch_size if batch_size is None else batch_size
            score = partial(engine.evaluate_train_mode, batch_size=size)
        else:
            score = partial(engine.evaluate, chunk=EVAL_CHUNK)
        if y.dim() == 2:
            loss, acc = score(x, y, which)
        else:
            k = x.shape[1]  # one set per k: fold (D, K) into D*K datasets, one pass each
            xs, ys = x.reshape(-1, *x.shape[2:]), y.reshape(-1, y.shape[-1])
            out = [score(xs, ys, which * k + j) for j in range(k)]
            loss, acc = torch.stack([o[0] for o in out], 1), torch.stack([o[1] for o in out], 1)
        finite = torch.isfinite(flat_t).all(1).view(-1, *[1] * (loss.dim() - 1))
        nan = torch.tensor(float("nan"))
        loss, acc = loss.cpu(), acc.cpu()
        return torch.where(finite, loss, nan).numpy(), torch.where(finite, acc, nan).numpy()

    def data_index(self, tree: xr.DataTree) -> xr.DataArray:
        """Each seed's position among the store's data seeds, along ``seed``."""
        seeds = tree["pretrain/metrics"]["data_seed"].values
        return xr.DataArray([self.data_seeds.index(int(s)) for s in seeds], dims="seed")


@lru_cache(maxsize=1)
def _evaluator(spec: str) -> Evaluator:
    return Evaluator(Spec.from_dict(json.loads(spec)))

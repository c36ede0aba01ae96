"""Sharpness of the solutions: Hessian trace and top eigenvalue of the train loss (SPEC §5).

Both come from Hessian-vector products over the SI group, for a block of solutions at once:
the loss summed over solutions has a block-diagonal Hessian, so one product with a stack of
vectors (one per solution) gives every solution's own product. Blocks of solutions and of
training samples keep the memory independent of their numbers.
"""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr

from lrscan.analyze import analyzer
from lrscan.analyze.evaluate import Evaluator, blocks
from lrscan.analyze.solutions import require_complete, solution_weights
from lrscan.train.engine import EVAL_SAMPLES


def _dot(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-solution inner product of two stacked parameter dicts, (M,)."""
    return sum((a[n] * b[n]).flatten(1).sum(1) for n in a)


# Hundreds of Hessian-vector products over every solution: run it on request (--only sharpness).
@analyzer("sharpness", needs=("pretrain",), default=False)
def sharpness(tree: xr.DataTree, n_samples: int = 64, n_iter: int = 30, seed: int = 0) -> xr.Dataset:
    """Hessian trace and top eigenvalue of the train loss over the SI group, for every solution.

    The trace is Hutchinson's estimate: the mean of vᵀHv over ``n_samples`` Rademacher
    vectors v, with its standard error; the top eigenvalue (largest in magnitude) comes from
    ``n_iter`` steps of power iteration. The loss is the mean cross-entropy on the full
    training set, as a function of the SI weights (the Hessian in the flat parameter space
    of the SI group, not restricted to the sphere's tangent space).

    Parameters
    ----------
    tree
        An opened, finished store.
    n_samples, n_iter
        Hutchinson samples and power-iteration steps.
    seed
        Seed of the random probe vectors.

    Returns
    -------
    xr.Dataset
        ``hessian_trace``, ``hessian_trace_se`` and ``top_eigenvalue`` over
        (plr, seed, solution).
    """
    require_complete(tree)
    weights = solution_weights(tree)
    runs = weights.isel(param=0, drop=True)
    evaluator = Evaluator.of(tree)
    setup = evaluator.setup
    x_all, y_all = evaluator.sets["train"]
    g = torch.Generator().manual_seed(seed)
    trace = np.empty((n_samples, runs.size))
    top = np.empty(runs.size)
    # Block by block of solutions, the training set in blocks of samples: memory does not grow
    # with the number of solutions or the size of the training set.
    for rows, flat, data in blocks(weights, evaluator.data_index(tree), copies=4):
        engine = setup.engine(torch.as_tensor(flat))
        engine.module.eval()  # the loss of the solution as it predicts (BatchNorm on its statistics)
        index = torch.as_tensor(data)
        si = {n: p.detach().requires_grad_() for n, p in engine.params.items()}
        n = x_all.shape[1]

        def hvp(v: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            """H v of the mean train loss: the products of the sample blocks, weighted by size."""
            total = {name: torch.zeros_like(p) for name, p in si.items()}
            for first in range(0, n, EVAL_SAMPLES):
                part = slice(first, min(first + EVAL_SAMPLES, n))
                x, y = x_all[index, part].to(setup.device), y_all[index, part].to(setup.device)
                loss = engine._loss(si, x, y) * (x.shape[1] / n)
                grads = torch.autograd.grad(loss, list(si.values()), create_graph=True)
                products = torch.autograd.grad(grads, list(si.values()), grad_outputs=[v[name] for name in si])
                for name, product in zip(si, products):
                    total[name] += product.detach()
            return total

        samples = []
        for _ in range(n_samples):
            v = {name: torch.randint(0, 2, p.shape, generator=g).to(p.dtype) * 2 - 1 for name, p in si.items()}
            samples.append(_dot(v, hvp(v)))
        trace[:, rows] = torch.stack(samples).double().numpy()
        v = {name: torch.randn(p.shape, generator=g) for name, p in si.items()}
        for _ in range(n_iter):
            norm = _dot(v, v).sqrt()
            v = {name: p / norm.view(-1, *[1] * (p.dim() - 1)) for name, p in v.items()}
            w = hvp(v)
            top[rows] = _dot(v, w).double().numpy()
            v = w
    samples = torch.from_numpy(trace)
    shape, dims = runs.shape, runs.dims
    return xr.Dataset(
        {
            "hessian_trace": (dims, samples.mean(0).numpy().reshape(shape)),
            "hessian_trace_se": (dims, (samples.std(0) / np.sqrt(n_samples)).numpy().reshape(shape)),
            "top_eigenvalue": (dims, top.reshape(shape)),
        },
        coords=runs.coords,
        attrs={"n_samples": n_samples, "n_iter": n_iter, "seed": seed,
               "description": "sharpness of the train loss over the SI group (Hutchinson trace, power iteration)"},
    )

"""Sharpness of the solutions: Hessian trace and top eigenvalue of the train loss (SPEC §5).

Both come from Hessian-vector products over the SI group, for every solution at once: the
loss summed over solutions has a block-diagonal Hessian, so one product with a stack of
vectors (one per solution) gives every solution's own product.
"""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr

from lrscan.analyze import analyzer
from lrscan.analyze.evaluate import Evaluator
from lrscan.analyze.solutions import require_complete, solution_weights


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
    weights = solution_weights(tree).load()
    runs = weights.isel(param=0, drop=True)
    evaluator = Evaluator.of(tree)
    setup = evaluator.setup
    flat = torch.as_tensor(weights.values.reshape(-1, weights.sizes["param"]))
    engine = setup.engine(flat)
    engine.module.eval()  # the loss of the solution as it predicts (BatchNorm on its statistics)
    x, y = evaluator.sets["train"]
    index = torch.as_tensor(evaluator.data_index(tree).broadcast_like(runs).transpose(*runs.dims).values.ravel())
    x, y = x[index].to(setup.device), y[index].to(setup.device)
    # Reverse over reverse: the gradient's graph is built once, each product is one backward.
    si = {n: p.detach().requires_grad_() for n, p in engine.params.items()}
    grads = torch.autograd.grad(engine._loss(si, x, y), list(si.values()), create_graph=True)

    def hvp(v: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        products = torch.autograd.grad(grads, list(si.values()), grad_outputs=[v[n] for n in si], retain_graph=True)
        return dict(zip(si, products))

    g = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(n_samples):
        v = {n: torch.randint(0, 2, p.shape, generator=g).to(p.dtype) * 2 - 1 for n, p in si.items()}
        samples.append(_dot(v, hvp(v)).detach())
    samples = torch.stack(samples).double()
    v = {n: torch.randn(p.shape, generator=g) for n, p in si.items()}
    top = torch.zeros(engine.n_runs)
    for _ in range(n_iter):
        norm = _dot(v, v).sqrt()
        v = {n: p / norm.view(-1, *[1] * (p.dim() - 1)) for n, p in v.items()}
        w = hvp(v)
        top = _dot(v, w).detach()
        v = {n: p.detach() for n, p in w.items()}
    shape, dims = runs.shape, runs.dims
    return xr.Dataset(
        {
            "hessian_trace": (dims, samples.mean(0).numpy().reshape(shape)),
            "hessian_trace_se": (dims, (samples.std(0) / np.sqrt(n_samples)).numpy().reshape(shape)),
            "top_eigenvalue": (dims, top.double().numpy().reshape(shape)),
        },
        coords=runs.coords,
        attrs={"n_samples": n_samples, "n_iter": n_iter, "seed": seed,
               "description": "sharpness of the train loss over the SI group (Hutchinson trace, power iteration)"},
    )

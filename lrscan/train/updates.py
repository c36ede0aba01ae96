"""Update rules of stacked runs on one flat buffer: ``(params, grads, state, lr) -> (params,
state)`` with the trained parameters and their gradients each one (M, P) tensor — every
trained tensor of a run side by side in one row — and one learning rate per run (M,). A rule
is then a few operations on whole buffers, whatever the number of tensors (a GPU launches a
handful of kernels, not a few per tensor): projected SGD on the sphere (the study's, SPEC §2),
and torch's SGD and Adam for the practical baselines. :func:`initial_state` is the state a
rule starts from (momentum, Adam's moments), flat the same way so that a snapshot resumes
exactly.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
from torch import Tensor

from lrscan.models import ModelEntry


def row_norm(t: Tensor) -> Tensor:
    """Each run's L2 norm of an (M, P) buffer, summed in its float32: the step's projection
    and gradient norm. (Summing in float64 made the update of the synthetic MLP take 1.9x the
    CPU time, for differences of 1e-7 relative; analyses measure norms in float64.)"""
    return t.square().sum(1).sqrt()


def _sphere(radius: float) -> Callable:
    def update(params, grads, state, lr):
        moved = params - lr[:, None] * grads
        return moved * (radius / row_norm(moved))[:, None], state
    return update


def _sgd(momentum: float, weight_decay: float) -> Callable:
    # torch.optim.SGD's rule (dampening 0, not Nesterov); the buffer starts at zero, which
    # makes its first value the gradient itself, as in torch.
    def update(params, grads, state, lr):
        g = grads + weight_decay * params if weight_decay else grads
        if not momentum:
            return params - lr[:, None] * g, state
        g = momentum * state["momentum"] + g
        return params - lr[:, None] * g, {"momentum": g}
    return update


def _adam(weight_decay: float, betas: tuple[float, float], eps: float = 1e-8) -> Callable:
    # torch.optim.Adam with coupled weight decay (added to the gradient), as the ViT setup uses.
    b1, b2 = betas

    def update(params, grads, state, lr):
        t = state["step"] + 1
        c1, c2 = (1 - b1**t).float(), (1 - b2**t).sqrt().float()
        g = grads + weight_decay * params if weight_decay else grads
        m = b1 * state["exp_avg"] + (1 - b1) * g
        v = b2 * state["exp_avg_sq"] + (1 - b2) * g * g
        moved = params - (lr / c1)[:, None] * m / (v.sqrt() / c2[:, None] + eps)
        return moved, {"step": t, "exp_avg": m, "exp_avg_sq": v}
    return update


def initial_state(update: str, params: Tensor, options: Mapping[str, Any]) -> dict[str, Tensor]:
    """The state update rule ``update`` starts from for the flat ``params`` (M, P): zeros, and
    Adam's step count (M,). Entries of shape (M, P) are laid out as ``params``."""
    if update == "sgd" and options.get("momentum", 0.0):
        return {"momentum": torch.zeros_like(params)}
    if update == "adam":
        step = torch.zeros(params.shape[0], dtype=torch.float64, device=params.device)
        return {"step": step, "exp_avg": torch.zeros_like(params), "exp_avg_sq": torch.zeros_like(params)}
    return {}


def make_update(entry: ModelEntry, options: Mapping[str, Any], radius: float | None) -> Callable:
    """The update rule of a model entry with its options (see ``ModelEntry.update``)."""
    if entry.update == "sphere":
        return _sphere(radius)
    if entry.update == "sgd":
        return _sgd(float(options.get("momentum", 0.0)), float(options.get("weight_decay", 0.0)))
    if entry.update == "adam":
        return _adam(float(options.get("weight_decay", 0.0)), tuple(options.get("betas", (0.9, 0.999))))
    raise ValueError(f"unknown update rule {entry.update!r}")

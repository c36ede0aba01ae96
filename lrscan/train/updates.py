"""Update rules of stacked runs: ``(params, grads, state, lr) -> (params, state)``, every tensor
(M, ...) with one learning rate per run (M,). Projected SGD on the sphere (the study's, SPEC §2),
and torch's SGD and Adam for the practical baselines; :func:`initial_state` is the state a rule
starts from (momentum, Adam's moments), stacked the same way so that a snapshot resumes exactly.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
from torch import Tensor

from lrscan.models import ModelEntry


def _expand(v: Tensor, like: Tensor) -> Tensor:
    return v.view(-1, *[1] * (like.dim() - 1))


def runs_sq(tensors) -> Tensor:
    """Each run's sum of squares over ``tensors`` (each (M, ...)), in their float32: the step's
    projection and gradient norm. (Summing in float64 made the update of the synthetic MLP take
    1.9x the CPU time, for differences of 1e-7 relative; analyses measure norms in float64.)"""
    return sum(t.reshape(t.shape[0], -1).square().sum(1) for t in tensors)


def _sphere(radius: float) -> Callable:
    def update(params, grads, state, lr):
        moved = {n: p - _expand(lr, p) * grads[n] for n, p in params.items()}
        scale = radius / runs_sq(moved.values()).sqrt()
        return {n: p * _expand(scale, p) for n, p in moved.items()}, state
    return update


def _sgd(momentum: float, weight_decay: float) -> Callable:
    # torch.optim.SGD's rule (dampening 0, not Nesterov); the buffer starts at zero, which
    # makes its first value the gradient itself, as in torch.
    def update(params, grads, state, lr):
        new_params, new_state = {}, {}
        for n, p in params.items():
            g = grads[n] + weight_decay * p if weight_decay else grads[n]
            if momentum:
                g = new_state[f"{n}/momentum"] = momentum * state[f"{n}/momentum"] + g
            new_params[n] = p - _expand(lr, p) * g
        return new_params, new_state
    return update


def _adam(weight_decay: float, betas: tuple[float, float], eps: float = 1e-8) -> Callable:
    # torch.optim.Adam with coupled weight decay (added to the gradient), as the ViT setup uses.
    b1, b2 = betas

    def update(params, grads, state, lr):
        t = state["step"] + 1
        new_params, new_state = {}, {"step": t}
        c1, c2 = (1 - b1**t).float(), (1 - b2**t).sqrt().float()
        for n, p in params.items():
            g = grads[n] + weight_decay * p if weight_decay else grads[n]
            m = new_state[f"{n}/exp_avg"] = b1 * state[f"{n}/exp_avg"] + (1 - b1) * g
            v = new_state[f"{n}/exp_avg_sq"] = b2 * state[f"{n}/exp_avg_sq"] + (1 - b2) * g * g
            new_params[n] = p - _expand(lr / c1, p) * m / (v.sqrt() / _expand(c2, p) + eps)
        return new_params, new_state
    return update


def initial_state(update: str, params: Mapping[str, Tensor], options: Mapping[str, Any]) -> dict[str, Tensor]:
    """The state update rule ``update`` starts from for stacked ``params``: zeros, and Adam's step count."""
    if update == "sgd" and options.get("momentum", 0.0):
        return {f"{n}/momentum": torch.zeros_like(p) for n, p in params.items()}
    if update == "adam":
        m = next(iter(params.values())).shape[0]
        state = {"step": torch.zeros(m, dtype=torch.float64, device=next(iter(params.values())).device)}
        for n, p in params.items():
            state[f"{n}/exp_avg"] = torch.zeros_like(p)
            state[f"{n}/exp_avg_sq"] = torch.zeros_like(p)
        return state
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

"""The flat state vector of M runs of one model, (M, P) (SPEC §2): where each parameter and
float buffer sits in it (:func:`layout`), the norm of its SI group, the projection onto the
sphere, and SWA averages of its iterates. What the trainer, the store and every analysis share.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from lrscan.models import ModelEntry


@dataclass(frozen=True)
class Layer:
    """One tensor's place in the flat state vector: a parameter, or a float buffer
    (BatchNorm running statistics), which is neither SI nor trainable."""

    name: str
    start: int
    stop: int
    shape: tuple[int, ...]
    si: bool
    trainable: bool
    buffer: bool = False


def _float_buffers(module: nn.Module):
    # Integer buffers (BatchNorm's num_batches_tracked) carry no state lrscan uses.
    return [(n, b) for n, b in module.named_buffers() if b.is_floating_point()]


def layout(entry: ModelEntry, module: nn.Module) -> tuple[Layer, ...]:
    """The flat-vector layout of a module: parameters in ``named_parameters`` order, then
    float buffers in ``named_buffers`` order."""
    layers, start = [], 0
    for name, p in module.named_parameters():
        layers.append(Layer(name, start, start + p.numel(), tuple(p.shape), entry.is_si(name), p.requires_grad))
        start += p.numel()
    for name, b in _float_buffers(module):
        layers.append(Layer(name, start, start + b.numel(), tuple(b.shape), False, False, buffer=True))
        start += b.numel()
    return tuple(layers)


def flat_state(module: nn.Module, layers: Sequence[Layer]) -> Tensor:
    """A module's own parameters and buffers as one flat vector in ``layers`` order, (P,)."""
    tensors = {**dict(module.named_parameters()), **dict(module.named_buffers())}
    return torch.cat([tensors[layer.name].detach().reshape(-1) for layer in layers])


def si_norm(flat: Tensor, layers: tuple[Layer, ...], *, group: str = "si") -> Tensor:
    """Norm of a group (``"si"`` or ``"trainable"``) of each row of ``flat`` (M, P), in float64."""
    total = torch.zeros(flat.shape[0], dtype=torch.float64, device=flat.device)
    for layer in layers:
        if getattr(layer, group):
            total += flat[:, layer.start : layer.stop].double().square().sum(1)
    return total.sqrt()


def project(flat: Tensor, layers: tuple[Layer, ...], radius: float | None) -> Tensor:
    """Rescale the SI group of each row of ``flat`` (M, P) to norm ``radius`` (one factor per row).

    ``radius=None`` (a model not trained on a sphere) leaves ``flat`` as it is.
    """
    if radius is None:
        return flat
    out = flat.clone()
    scale = (radius / si_norm(flat, layers)).to(flat.dtype)
    for layer in layers:
        if layer.si:
            out[:, layer.start : layer.stop] *= scale[:, None]
    return out


def swa_average(window: Tensor, members: Sequence[Sequence[int]], layers: tuple[Layer, ...],
                radius: float | None) -> Tensor:
    """SWA solutions: for each entry of ``members``, the uniform mean of those rows of
    ``window`` (..., n, P) (:meth:`lrscan.train.plan.Plan.swa_members` says which).

    Means are taken in float64 and put back on the sphere (an SI model only sees the
    direction); the result is (..., len(members), P) in float32.  Averaged BatchNorm buffers
    are placeholders: an average is a constructed point whose statistics are recomputed
    (:meth:`lrscan.train.engine.Engine.recompute_bn`) before it is scored.
    """
    w = window.double()
    means = torch.stack([w[..., list(rows), :].mean(-2) for rows in members], -2)
    return project(means.reshape(-1, means.shape[-1]).float(), layers, radius).reshape(means.shape)


def batch_norms(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of a module (empty for a model without BatchNorm)."""
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def to_numpy(t: Tensor) -> np.ndarray:
    """A tensor's values as a numpy array on the host."""
    return t.detach().cpu().numpy()

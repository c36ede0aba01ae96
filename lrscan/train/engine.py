"""M runs of one model advanced in lock-step by projected SGD on the sphere (SPEC §2).

Every parameter is held stacked along a leading run axis.  A model whose entry has
``forward_batched`` computes all runs in one pass; any other model is called run by run
through ``torch.func.functional_call`` on the same stacked tensors, so both paths share
the update, the projection and the evaluation — and give the same weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn import functional as F

from lrscan.models import ModelEntry


@dataclass(frozen=True)
class Layer:
    """One parameter tensor's place in the flat parameter vector."""

    name: str
    start: int
    stop: int
    shape: tuple[int, ...]
    si: bool
    trainable: bool


def layout(entry: ModelEntry, module: nn.Module) -> tuple[Layer, ...]:
    """The flat-vector layout of a module's parameters, in ``named_parameters`` order."""
    layers, start = [], 0
    for name, p in module.named_parameters():
        layers.append(Layer(name, start, start + p.numel(), tuple(p.shape), entry.is_si(name), p.requires_grad))
        start += p.numel()
    return tuple(layers)


def si_norm(flat: Tensor, layers: tuple[Layer, ...]) -> Tensor:
    """Norm of the SI group of each row of ``flat`` (M, P), accumulated in float64."""
    total = torch.zeros(flat.shape[0], dtype=torch.float64, device=flat.device)
    for layer in layers:
        if layer.si:
            total += flat[:, layer.start : layer.stop].double().square().sum(1)
    return total.sqrt()


def project(flat: Tensor, layers: tuple[Layer, ...], radius: float) -> Tensor:
    """Rescale the SI group of each row of ``flat`` (M, P) to norm ``radius`` (one factor per row)."""
    out = flat.clone()
    scale = (radius / si_norm(flat, layers)).to(flat.dtype)
    for layer in layers:
        if layer.si:
            out[:, layer.start : layer.stop] *= scale[:, None]
    return out


def swa_average(window: Tensor, ks, layers: tuple[Layer, ...], radius: float) -> Tensor:
    """SWA solutions: for each k, the uniform mean of the last k rows of ``window`` (..., n, P).

    Means are taken in float64 and put back on the sphere (an SI model only sees the
    direction); the result is (..., len(ks), P) in float32.
    """
    w = window.double()
    means = torch.stack([w[..., -k:, :].mean(-2) for k in ks], -2)
    return project(means.reshape(-1, means.shape[-1]).float(), layers, radius).reshape(means.shape)


def loss_and_correct(logits: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample loss and correctness for logits (..., C) and labels (...).

    A single logit means binary classification with a sigmoid, as in the synthetic setup.
    """
    if logits.shape[-1] == 1:
        z = logits[..., 0]
        return F.binary_cross_entropy_with_logits(z, y.to(z.dtype), reduction="none"), (z > 0) == (y == 1)
    flat = logits.reshape(-1, logits.shape[-1])
    loss = F.cross_entropy(flat, y.reshape(-1), reduction="none").reshape(y.shape)
    return loss, logits.argmax(-1) == y


class Engine:
    """The state of M runs of one model, with a per-run learning rate.

    Parameters
    ----------
    entry, module
        The model entry and one instance of its module (used for shapes and, on the
        run-by-run path, as the function applied to each run's parameters).
    flat
        Initial parameters, (M, P), in the order of :func:`layout`.
    radius
        The sphere's radius ρ; the SGD step is ``lr = ELR * ρ²``.
    batched
        Use the entry's ``forward_batched`` (must exist) rather than calling runs one by one.
    compile
        Compile the training step and the evaluation with ``torch.compile`` (faster for long
        stages; the first call of each shape pays the compilation).
    """

    def __init__(self, entry: ModelEntry, module: nn.Module, flat: Tensor, radius: float, *,
                 batched: bool, compile: bool = False):
        if batched and entry.forward_batched is None:
            raise ValueError("this model has no batched forward")
        self.entry, self.module, self.radius, self.batched = entry, module, radius, batched
        self.layers = layout(entry, module)
        if any(layer.trainable != layer.si for layer in self.layers):
            raise ValueError("the sphere trainer needs the trainable parameters to be exactly the SI group")
        self.n_runs = flat.shape[0]
        self.si: dict[str, Tensor] = {}
        self.frozen: dict[str, Tensor] = {}
        for layer in self.layers:
            p = flat[:, layer.start : layer.stop].reshape(self.n_runs, *layer.shape).clone()
            (self.si if layer.si else self.frozen)[layer.name] = p
        self.compiled = compile
        self._step = torch.compile(self._sgd_step, dynamic=False) if compile else self._sgd_step
        self._eval = torch.compile(self._eval_chunk, dynamic=False) if compile else self._eval_chunk

    def logits(self, si: dict[str, Tensor], frozen: dict[str, Tensor], x: Tensor) -> Tensor:
        """Logits (m, B, C) of m runs with parameters ``si`` and ``frozen`` on inputs x (m, B, ...)."""
        params = {**si, **frozen}
        if self.batched:
            return self.entry.forward_batched(self.module, params, x)
        return torch.stack(
            [functional_call(self.module, {n: p[i] for n, p in params.items()}, (x[i],)) for i in range(x.shape[0])]
        )

    def _loss(self, si: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        # Summing the runs' mean losses keeps each run's gradient its own.
        return loss_and_correct(self.logits(si, self.frozen, x), y)[0].mean(1).sum()

    def _grads(self, si: dict[str, Tensor], x: Tensor, y: Tensor) -> dict[str, Tensor]:
        if self.compiled:  # dynamo traces the functional form
            return torch.func.grad(self._loss)(si, x, y)
        # Eager autograd has less per-step overhead than torch.func.grad.
        leaves = {n: p.detach().requires_grad_() for n, p in si.items()}
        return dict(zip(leaves, torch.autograd.grad(self._loss(leaves, x, y), list(leaves.values()))))

    def _sgd_step(self, si: dict[str, Tensor], x: Tensor, y: Tensor, lr: Tensor):
        grads = self._grads(si, x, y)
        grad_sq = sum(g.reshape(self.n_runs, -1).square().sum(1) for g in grads.values())
        moved = {n: p - lr.view(-1, *[1] * (p.dim() - 1)) * grads[n] for n, p in si.items()}
        scale = self.radius / sum(p.reshape(self.n_runs, -1).square().sum(1) for p in moved.values()).sqrt()
        return {n: p * scale.view(-1, *[1] * (p.dim() - 1)) for n, p in moved.items()}, grad_sq.sqrt()

    def step(self, x: Tensor, y: Tensor, elr: Tensor) -> Tensor:
        """One SGD step of every run on its own batch (x (M, B, ...), y (M, B)), then project.

        Returns the L2 norm of each run's SI-group gradient, (M,).
        """
        self.si, grad_norm = self._step(self.si, x, y, elr * self.radius**2)
        return grad_norm

    def _eval_chunk(self, si: dict[str, Tensor], frozen: dict[str, Tensor], x: Tensor, y: Tensor):
        loss, correct = loss_and_correct(self.logits(si, frozen, x), y)
        return loss.mean(1), correct.float().mean(1)

    @torch.no_grad()
    def evaluate(self, x: Tensor, y: Tensor, which: Tensor, chunk: int) -> tuple[Tensor, Tensor]:
        """Mean loss and accuracy of each run on its dataset, x (D, N, ...), y (D, N).

        Run ``m`` is evaluated on dataset ``which[m]``; runs go through in chunks of ``chunk``
        so that activations stay in cache.
        """
        losses, accs = [], []
        for start in range(0, self.n_runs, chunk):
            if start + chunk <= self.n_runs:
                rows = slice(start, start + chunk)  # views: no copies
            else:  # the last chunk repeats the last run to keep one shape (one compilation)
                rows = torch.arange(start, start + chunk, device=which.device).clamp(max=self.n_runs - 1)
            idx = which[rows]
            if x.shape[0] == 1:  # one dataset: broadcast it rather than copy it per run
                xs, ys = x[0].expand(chunk, *x.shape[1:]), y[0].expand(chunk, *y.shape[1:])
            else:
                xs, ys = x[idx], y[idx]
            pick = lambda params: {n: p[rows] for n, p in params.items()}  # noqa: E731
            loss, acc = self._eval(pick(self.si), pick(self.frozen), xs, ys)
            losses.append(loss)
            accs.append(acc)
        return torch.cat(losses)[: self.n_runs], torch.cat(accs)[: self.n_runs]

    def flat(self) -> Tensor:
        """Current parameters, (M, P)."""
        params = {**self.si, **self.frozen}
        return torch.cat([params[layer.name].reshape(self.n_runs, -1) for layer in self.layers], 1)

    def weight_norm(self) -> Tensor:
        """Norm of each run's SI group, (M,), in float64."""
        return si_norm(self.flat(), self.layers)


def to_numpy(t: Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()

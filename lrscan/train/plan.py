"""The step grid of a sweep: which steps each stage runs, logs and checkpoints.

Every epoch-valued field of the spec becomes a whole number of optimiser steps here, so
that "epoch" in the store is exactly ``step / steps_per_epoch``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from lrscan.errors import LrscanError
from lrscan.spec import Spec


@dataclass(frozen=True)
class Stage:
    """One stage of training: steps ``start .. stop`` (inclusive of both for logs and checkpoints).

    Each run trains at its own constant ELR, unless ``switch = (step, elr)``: from that step
    on, every run trains at ``elr`` (the second stage of a two-stage pre-training).
    """

    name: str
    start: int
    stop: int
    log_steps: np.ndarray
    checkpoint_steps: np.ndarray
    switch: tuple[int, float] | None = None

    @property
    def n_steps(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class Run:
    """One seed of the sweep: the store's ``seed`` index and the seeds it stands for."""

    seed: int
    train_seed: int
    data_seed: int


@dataclass(frozen=True)
class Plan:
    """A spec turned into steps, for a training set of ``n_train`` samples."""

    spec: Spec
    steps_per_epoch: int
    pretrain: Stage
    finetune: Stage
    swa_steps: dict[int, np.ndarray]
    runs: tuple[Run, ...]

    @classmethod
    def build(cls, spec: Spec, n_train: int) -> "Plan":
        if spec.batch_size > n_train:
            raise LrscanError(f"batch_size = {spec.batch_size} exceeds the {n_train} training samples")
        # Incomplete batches are dropped, as in the study's loaders.
        spe = n_train // spec.batch_size
        step = lambda name, epochs: _to_step(name, epochs, spe)  # noqa: E731

        pt_end = step("pretrain_epochs", spec.pretrain_epochs)
        ft_from = step("finetune_from", spec.resolved_finetune_from)
        ft_end = ft_from + step("finetune_epochs", spec.finetune_epochs)
        log = step("log_every", spec.log_every)
        ckpt = {step("checkpoint_epochs", e) for e in spec.checkpoint_epochs}

        log_steps, extra, switch = _grid(0, pt_end, log), set(), None
        if spec.pretrain_switch is not None:  # its step ends the first stage: always logged and checkpointed
            switch = (step("pretrain_switch.epoch", spec.pretrain_switch["epoch"]), spec.pretrain_switch["plr"])
            log_steps, extra = np.union1d(log_steps, [switch[0]]), {switch[0]}
        pretrain = Stage(
            "pretrain", 0, pt_end, log_steps,
            np.array(sorted({0, ft_from, pt_end} | extra | {c for c in ckpt if c <= pt_end})),
            switch,
        )
        finetune = Stage(
            "finetune", ft_from, ft_end,
            _grid(ft_from, ft_end, log) if ft_end > ft_from else np.array([], dtype=np.int64),
            np.array(sorted({ft_end} | {c for c in ckpt if ft_from < c <= ft_end})) if ft_end > ft_from
            else np.array([], dtype=np.int64),
        )
        swa_steps = {}
        for k in spec.swa:
            if k > len(pretrain.checkpoint_steps):
                raise LrscanError(
                    f"swa = {k} needs {k} pre-training checkpoints, the spec keeps "
                    f"{len(pretrain.checkpoint_steps)}; add epochs to checkpoint_epochs"
                )
            swa_steps[k] = pretrain.checkpoint_steps[-k:]
        runs = tuple(
            Run(i, t, d) for i, (d, t) in enumerate(itertools.product(spec.data_seeds, spec.seeds))
        )
        return cls(spec, spe, pretrain, finetune, swa_steps, runs)

    def epochs(self, steps: np.ndarray) -> np.ndarray:
        return np.asarray(steps, dtype=np.float64) / self.steps_per_epoch

    @property
    def pretrain_stages(self) -> list[list]:
        """Pre-training's stages as ``[start_epoch, stop_epoch, elr]``, where the ELR ``"plr"``
        is each run's own PLR: what the store records as ``/pretrain`` attribute ``stages``."""
        stage, spe = self.pretrain, self.steps_per_epoch
        if stage.switch is None:
            return [[0.0, stage.stop / spe, "plr"]]
        at, elr = stage.switch
        return [[0.0, at / spe, "plr"], [at / spe, stage.stop / spe, elr]]


def _to_step(name: str, epochs: float, steps_per_epoch: int) -> int:
    steps = epochs * steps_per_epoch
    whole = round(steps)
    if abs(steps - whole) > 1e-6:
        raise LrscanError(
            f"{name} = {epochs:g} epochs is not a whole number of steps ({steps_per_epoch} steps per epoch)"
        )
    return whole


def _grid(start: int, stop: int, every: int) -> np.ndarray:
    """Steps ``start, start+every, ...`` up to ``stop``, always ending at ``stop``."""
    return np.unique(np.append(np.arange(start, stop + 1, every), stop)).astype(np.int64)

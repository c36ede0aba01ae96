"""The step grid of a sweep: which steps each stage runs, logs and checkpoints.

Every epoch-valued field of the spec becomes a whole number of optimiser steps here, so
that "epoch" in the store is exactly ``step / steps_per_epoch``.
"""

from __future__ import annotations

import dataclasses
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

    @property
    def pretrain_end(self) -> int:
        """The step that ends pre-training proper (``pretrain_epochs``): the PT solution.
        The pre-training stage runs past it when an SWA window needs continued pre-training."""
        return _to_step("pretrain_epochs", self.spec.pretrain_epochs, self.steps_per_epoch)

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

        base = {0, ft_from, pt_end} | {c for c in ckpt if c <= pt_end}
        switch = None
        if spec.pretrain_switch is not None:  # its step ends the first stage: always logged and checkpointed
            switch = (step("pretrain_switch.epoch", spec.pretrain_switch["epoch"]), spec.pretrain_switch["plr"])
            base.add(switch[0])
        swa_steps = _swa_steps(spec, sorted(base), step)
        # Pre-training continues at each run's PLR as far as the SWA windows reach.
        pt_stop = max([pt_end, *(int(s[-1]) for s in swa_steps.values())])
        # The end of pre-training proper is always logged, like the switch's step.
        log_steps = np.union1d(_grid(0, pt_stop, log), [pt_end] + ([switch[0]] if switch is not None else []))
        window = {int(s) for steps in swa_steps.values() for s in steps}
        pretrain = Stage("pretrain", 0, pt_stop, log_steps, np.array(sorted(base | window)), switch)
        finetune = Stage(
            "finetune", ft_from, ft_end,
            _grid(ft_from, ft_end, log) if ft_end > ft_from else np.array([], dtype=np.int64),
            np.array(sorted({ft_end} | {c for c in ckpt if ft_from < c <= ft_end})) if ft_end > ft_from
            else np.array([], dtype=np.int64),
        )
        runs = tuple(
            Run(i, t, d) for i, (d, t) in enumerate(itertools.product(spec.data_seeds, spec.seeds))
        )
        return cls(spec, spe, pretrain, finetune, swa_steps, runs)

    def swa_members(self, ks=None) -> tuple[np.ndarray, list[np.ndarray]]:
        """The pre-training checkpoint steps SWA reads, and for each K (``ks``, default the
        spec's) the positions among them of the checkpoints it averages.

        Raises
        ------
        LrscanError
            When a K needs a checkpoint the plan does not keep.
        """
        ks = self.spec.swa if ks is None else tuple(ks)
        windows = self.swa_steps if ks == self.spec.swa else _swa_steps(
            dataclasses.replace(self.spec, swa=ks), [int(s) for s in self.pretrain.checkpoint_steps
                                                     if s <= self.pretrain_end],
            lambda name, epochs: _to_step(name, epochs, self.steps_per_epoch))
        steps = np.unique(np.concatenate([windows[k] for k in ks])) if ks else np.array([], dtype=np.int64)
        missing = np.setdiff1d(steps, self.pretrain.checkpoint_steps)
        if missing.size:
            raise LrscanError(f"SWA of {max(ks)} needs the pre-training checkpoint at epoch "
                              f"{missing[0] / self.steps_per_epoch:g}, which the store does not keep")
        return steps, [np.searchsorted(steps, windows[k]) for k in ks]

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


def _swa_steps(spec: Spec, stored: list[int], step) -> dict[int, np.ndarray]:
    """The pre-training steps each SWA solution averages, by K (see ``Spec.swa_window``)."""
    window, out = spec.swa_window, {}
    for k in spec.swa:
        if window is None:
            if k > len(stored):
                raise LrscanError(
                    f"swa = {k} needs {k} pre-training checkpoints, the spec keeps {len(stored)}; add epochs "
                    "to checkpoint_epochs or give an swa_window"
                )
            out[k] = np.array(stored[-k:], dtype=np.int64)
            continue
        every = step("swa_window.every", window["every"])
        offsets = every * np.arange(k, dtype=np.int64)
        if "start" in window:
            out[k] = step("swa_window.start", window["start"]) + offsets
        else:
            out[k] = step("swa_window.stop", window["stop"]) - offsets[::-1]
            if out[k][0] < 0:
                raise LrscanError(f"swa = {k} every {window['every']:g} epochs cannot end at swa_window.stop = "
                                  f"{window['stop']:g}: the window would begin before epoch 0")
    return out


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

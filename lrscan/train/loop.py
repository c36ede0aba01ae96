"""One training stage of M runs: the loop a reader can hold in their head.

Each run has its own data seed, batch order (shared by all runs of the same seed) and
learning rate; the loop steps them together, evaluates every run on the full train and test
sets at the logged steps (beside the means, over the steps since the previous row, of what the
steps themselves measured) and hands their weights at the checkpoint steps to a
:class:`Checkpoints` sink: kept in memory by default, streamed to the store by the sweep.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from lrscan.train.engine import Engine, derive_seed, gather
from lrscan.train.flat import to_numpy
from lrscan.train.plan import Stage

# Runs evaluated together (at most): on the 2-core AMD EPYC development machine, evaluating 256
# MLP runs on the synthetic sets took 5.3x less CPU time in chunks of 128 than of 8
# (Engine.evaluate cuts its runs into equal chunks of at most this many).
EVAL_CHUNK = 128
# Losses, accuracies and weight_norm are evaluations at the logged step (BatchNorm in eval mode);
# grad_norm and running_train_* are means over the steps since the previous row of what each
# step measured (in train mode, as the study logs BatchNorm models), NaN at a stage's start.
METRICS = ("train_loss", "train_acc", "test_loss", "test_acc", "weight_norm", "grad_norm",
           "running_train_loss", "running_train_acc")


@dataclass
class DeviceData:
    """Train and test sets of every data seed, stacked (D, N, ...), resident on the device."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    # Data.augment: a lrscan.data.images.Augment, whose runs() augments each run's batch from its own seed.
    augment: Callable[[Tensor, torch.Generator], Tensor] | None = None


@dataclass
class Snapshot:
    """The state of a stage's M runs at a logged step: enough to continue exactly from there.

    Taken right after a metric row, when the accumulators of the per-step means (gradient
    norm, running train loss and accuracy) are empty, so the engine's state
    (:meth:`Engine.state`), the rows and checkpoints so far and the divergence steps are all
    there is.
    """

    step: int
    state: dict[str, np.ndarray]
    metrics: dict[str, np.ndarray]
    checkpoints: dict[str, np.ndarray]  # the sink's state (Checkpoints.state)
    diverged: np.ndarray


class Checkpoints:
    """Where a stage's checkpoints go: the base class keeps all of them in memory.

    ``put(row, flat)`` receives the (M, P) states of checkpoint ``row`` (rows arrive in
    order, each once); ``state()`` / ``restore(state)`` carry what a snapshot must keep so a
    resumed stage continues exactly; ``result()`` is what :class:`StageResult` reports. A
    subclass that writes to a store as rows arrive (``lrscan.train.sweep``) holds only the
    rows of the weight chunk being filled.
    """

    def __init__(self, n_runs: int, n_rows: int, n_params: int):
        self.weights = np.full((n_runs, n_rows, n_params), np.nan, dtype=np.float32)

    def put(self, row: int, flat: np.ndarray) -> None:
        self.weights[:, row] = flat

    def state(self) -> dict[str, np.ndarray]:
        return {"weights": self.weights}

    def restore(self, state: dict[str, np.ndarray]) -> None:
        self.weights = np.array(state["weights"], dtype=np.float32)

    def result(self) -> np.ndarray | None:
        """Every checkpoint, (M, n_checkpoint, P)."""
        return self.weights


@dataclass
class StageResult:
    """What a stage produced for its M runs."""

    metrics: dict[str, np.ndarray]  # name -> (M, n_log)
    weights: np.ndarray | None  # (M, n_checkpoint, P); None when the sink streamed them away
    diverged_step: np.ndarray  # (M,), -1 where the run stayed finite


def seed_key(train_seed: int, data_seed: int, stage: str, epoch: int) -> int:
    """A 63-bit seed for one epoch's batch order (or, for stage "init", the initial point).

    It depends on nothing but its arguments, so a run draws the same numbers whichever other
    runs share its batch.
    """
    code = {"pretrain": 0, "finetune": 1, "init": 2}[stage]
    return derive_seed([train_seed, data_seed, code, epoch])


def step_key(train_seed: int, data_seed: int, stage: str, step: int) -> int:
    """A 63-bit seed for one step's random draws besides the batch order (augmentation,
    dropout); like :func:`seed_key`, it depends on nothing but its arguments."""
    code = {"pretrain": 0, "finetune": 1}[stage]
    return derive_seed([train_seed, data_seed, code, step, 1])


def epoch_order(seeds: list[tuple[int, int]], stage: str, epoch: int, n: int, device) -> Tensor:
    """Sample order of one epoch for each distinct (train_seed, data_seed), (S, n)."""
    g = torch.Generator()
    orders = []
    for train_seed, data_seed in seeds:
        g.manual_seed(seed_key(train_seed, data_seed, stage, epoch))
        orders.append(torch.randperm(n, generator=g))
    return torch.stack(orders).to(device)


class _Running:
    """What the steps since the last metric row measured, summed per run: the gradient norm,
    and the batch loss and accuracy (float64, as means over many steps)."""

    def __init__(self, m: int, device: torch.device):
        self.grad = torch.zeros(m, device=device)
        self.scores = torch.zeros(2, m, dtype=torch.float64, device=device)
        self.steps = 0

    def add(self, stats) -> None:
        self.grad += stats.grad_norm
        self.scores += torch.stack([stats.loss, stats.acc])
        self.steps += 1

    def means(self) -> dict[str, Tensor]:
        """The per-step means since the last row; NaN at a stage's start, where no step was taken."""
        def mean(total: Tensor) -> Tensor:
            return total / self.steps if self.steps else torch.full_like(total, float("nan"))
        return {"grad_norm": mean(self.grad), "running_train_loss": mean(self.scores[0]),
                "running_train_acc": mean(self.scores[1])}


class _Recorder:
    """What a stage keeps at its step boundaries: a metric row at each logged step (the
    evaluations, and the means of the steps since the row before), the checkpoints at theirs,
    divergence, progress, and a snapshot at a logged step once ``snapshot_every`` seconds have
    passed since the last one."""

    def __init__(self, engine: Engine, data: DeviceData, which: Tensor, stage: Stage, eval_chunk: int,
                 checkpoints: Checkpoints, first: int, progress: Callable[[int], None] | None,
                 snapshot: Callable[[Snapshot], None] | None, snapshot_every: float):
        self.engine, self.data, self.which, self.eval_chunk = engine, data, which, eval_chunk
        self.checkpoints, self.progress = checkpoints, progress
        self.snapshot, self.snapshot_every = snapshot, snapshot_every
        self.log_index = {int(s): i for i, s in enumerate(stage.log_steps)}
        self.ckpt_index = {int(s): i for i, s in enumerate(stage.checkpoint_steps)}
        m = engine.n_runs
        self.metrics = {name: self._empty() for name in METRICS}
        self.diverged = np.full(m, -1, dtype=np.int64)
        self.running = _Running(m, which.device)
        self.last_reported, self.last_snapshot = first, time.monotonic()

    def _empty(self) -> np.ndarray:
        return np.full((self.engine.n_runs, len(self.log_index)), np.nan, dtype=np.float32)

    def resume(self, snap: Snapshot) -> None:
        """Continue from ``snap`` (taken right after a row, so no step is pending)."""
        self.engine.load_state(snap.state)
        self.checkpoints.restore(snap.checkpoints)
        self.diverged = snap.diverged
        # A snapshot written before a metric existed lacks it: its earlier rows stay unknown.
        self.metrics = {name: snap.metrics.get(name, self._empty()) for name in METRICS}

    def at(self, step: int) -> None:
        """Keep what ``step`` (the number of steps taken) calls for."""
        engine, data = self.engine, self.data
        if step in self.log_index:
            train_loss, train_acc = engine.evaluate(data.x_train, data.y_train, self.which, self.eval_chunk)
            test_loss, test_acc = engine.evaluate(data.x_test, data.y_test, self.which, self.eval_chunk)
            norm = engine.weight_norm()
            values = {"train_loss": train_loss, "train_acc": train_acc, "test_loss": test_loss,
                      "test_acc": test_acc, "weight_norm": norm, **self.running.means()}
            for name, value in values.items():
                self.metrics[name][:, self.log_index[step]] = to_numpy(value)
            self.diverged[~np.isfinite(to_numpy(norm)) & (self.diverged < 0)] = step
            self.running = _Running(engine.n_runs, self.which.device)
            if self.progress is not None:
                self.progress((step - self.last_reported) * engine.n_runs)
                self.last_reported = step
        if step in self.ckpt_index:
            self.checkpoints.put(self.ckpt_index[step], to_numpy(engine.flat()))
        if (self.snapshot is not None and step in self.log_index
                and time.monotonic() - self.last_snapshot >= self.snapshot_every):
            self.snapshot(Snapshot(step, {n: to_numpy(p).copy() for n, p in engine.state().items()}, self.metrics,
                                   self.checkpoints.state(), self.diverged))
            self.last_snapshot = time.monotonic()

    def result(self, stop: int) -> StageResult:
        """The stage's result, once its last step (``stop``) is taken; progress reaches its total."""
        if self.progress is not None and stop > self.last_reported:
            self.progress((stop - self.last_reported) * self.engine.n_runs)
        return StageResult(self.metrics, self.checkpoints.result(), self.diverged)


def run_stage(
    engine: Engine,
    data: DeviceData,
    stage: Stage,
    *,
    elr: Tensor,
    seeds: list[tuple[int, int]],
    batch_size: int,
    steps_per_epoch: int,
    eval_chunk: int = EVAL_CHUNK,
    progress: Callable[[int], None] | None = None,
    resume: Snapshot | None = None,
    snapshot: Callable[[Snapshot], None] | None = None,
    snapshot_every: float = 60.0,
    checkpoints: Checkpoints | None = None,
) -> StageResult:
    """Train the engine's M runs through one stage.

    Parameters
    ----------
    engine
        The runs, already at the stage's starting point.
    data
        Datasets stacked by data seed.
    stage
        Steps to run, log and checkpoint.
    elr
        Effective learning rate of each run, (M,); from ``stage.switch``'s step on, every run
        trains at the switch's ELR instead.
    seeds
        (train_seed, data_seed) of each run; runs with equal seeds see the same batches.
    batch_size, steps_per_epoch
        Batch geometry; an epoch is one pass over a fresh permutation of the training set.
    progress
        Called with the number of model-steps done since its last call.
    resume
        A snapshot of this very stage and batch to continue from, instead of its start.
    snapshot, snapshot_every
        Called with a :class:`Snapshot` at a logged step whenever ``snapshot_every``
        seconds have passed since the last one.
    checkpoints
        Where the checkpoints go (default: a :class:`Checkpoints` in memory, returned as
        ``StageResult.weights``).
    """
    device = elr.device
    m = engine.n_runs
    distinct = sorted(set(seeds))
    run_seed = torch.tensor([distinct.index(s) for s in seeds], device=device)
    which_data = torch.tensor([s[1] for s in seeds], device=device)
    n_train = data.x_train.shape[1]

    if checkpoints is None:
        checkpoints = Checkpoints(m, len(stage.checkpoint_steps), engine.flat().shape[1])
    first = stage.start if resume is None else resume.step
    recorder = _Recorder(engine, data, which_data, stage, eval_chunk, checkpoints, first, progress,
                         snapshot, snapshot_every)
    if resume is None:
        recorder.at(stage.start)
    else:
        recorder.resume(resume)
    switch_elr = None if stage.switch is None else torch.full_like(elr, stage.switch[1])
    epoch, order = None, None
    if data.augment is not None:
        if not engine.seeded:
            raise ValueError("augmentation needs a model called through its module (per-run seeds)")
        generator = torch.Generator(device=device)
    for step in range(first, stage.stop):
        if step // steps_per_epoch != epoch:
            epoch = step // steps_per_epoch
            order = epoch_order(distinct, stage.name, epoch, n_train, device)
        offset = (step % steps_per_epoch) * batch_size
        idx = order[run_seed, offset : offset + batch_size]  # (M, B)
        keys = [step_key(*s, stage.name, step) for s in seeds] if engine.seeded else None
        rate = elr if switch_elr is None or step < stage.switch[0] else switch_elr
        if data.augment is None:
            stats = engine.step_on(data.x_train, data.y_train, which_data, idx, rate, keys)
        else:
            x, y = gather(data.x_train, data.y_train, which_data, idx)
            stats = engine.step(data.augment.runs(x, keys, generator), y, rate, keys)
        recorder.running.add(stats)
        recorder.at(step + 1)
    return recorder.result(stage.stop)

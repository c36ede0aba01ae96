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

from lrscan.train.engine import Engine, to_numpy
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
    return int(np.random.SeedSequence([train_seed, data_seed, code, epoch]).generate_state(2, np.uint64)[0] >> 1)


def step_key(train_seed: int, data_seed: int, stage: str, step: int) -> int:
    """A 63-bit seed for one step's random draws besides the batch order (augmentation,
    dropout); like :func:`seed_key`, it depends on nothing but its arguments."""
    code = {"pretrain": 0, "finetune": 1}[stage]
    return int(np.random.SeedSequence([train_seed, data_seed, code, step, 1]).generate_state(2, np.uint64)[0] >> 1)


def epoch_order(seeds: list[tuple[int, int]], stage: str, epoch: int, n: int, device) -> Tensor:
    """Sample order of one epoch for each distinct (train_seed, data_seed), (S, n)."""
    g = torch.Generator()
    orders = []
    for train_seed, data_seed in seeds:
        g.manual_seed(seed_key(train_seed, data_seed, stage, epoch))
        orders.append(torch.randperm(n, generator=g))
    return torch.stack(orders).to(device)


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

    log_index = {int(s): i for i, s in enumerate(stage.log_steps)}
    ckpt_index = {int(s): i for i, s in enumerate(stage.checkpoint_steps)}
    metrics = {name: np.full((m, len(log_index)), np.nan, dtype=np.float32) for name in METRICS}
    if checkpoints is None:
        checkpoints = Checkpoints(m, len(ckpt_index), engine.flat().shape[1])
    diverged = np.full(m, -1, dtype=np.int64)
    grad_sum = torch.zeros(m, device=device)
    # Batch loss and accuracy of the steps since the last row; float64, as means over many steps.
    score_sum = torch.zeros(2, m, dtype=torch.float64, device=device)
    switch_elr = None if stage.switch is None else torch.full_like(elr, stage.switch[1])
    first = stage.start if resume is None else resume.step
    step_count, last_reported, last_snapshot = 0, first, time.monotonic()
    if resume is not None:
        engine.load_state(resume.state)
        metrics, diverged = resume.metrics, resume.diverged
        checkpoints.restore(resume.checkpoints)
        # A snapshot written before a metric existed lacks it: its earlier rows stay unknown.
        metrics = {name: metrics.get(name, np.full((m, len(log_index)), np.nan, dtype=np.float32))
                   for name in METRICS}

    def mean(total: Tensor) -> Tensor:
        """A per-step mean since the last row; NaN at the stage's start, where no step was taken."""
        return total / step_count if step_count else torch.full_like(total, float("nan"))

    def record(step: int) -> None:
        nonlocal grad_sum, score_sum, step_count, last_reported, last_snapshot
        if step in log_index:
            i = log_index[step]
            train_loss, train_acc = engine.evaluate(data.x_train, data.y_train, which_data, eval_chunk)
            test_loss, test_acc = engine.evaluate(data.x_test, data.y_test, which_data, eval_chunk)
            norm = engine.weight_norm()
            values = {
                "train_loss": train_loss, "train_acc": train_acc, "test_loss": test_loss, "test_acc": test_acc,
                "weight_norm": norm, "grad_norm": mean(grad_sum),
                "running_train_loss": mean(score_sum[0]), "running_train_acc": mean(score_sum[1]),
            }
            for name, value in values.items():
                metrics[name][:, i] = to_numpy(value)
            newly = ~np.isfinite(to_numpy(norm)) & (diverged < 0)
            diverged[newly] = step
            grad_sum, score_sum, step_count = torch.zeros_like(grad_sum), torch.zeros_like(score_sum), 0
            if progress is not None:
                progress((step - last_reported) * m)
                last_reported = step
        if step in ckpt_index:
            checkpoints.put(ckpt_index[step], to_numpy(engine.flat()))
        if snapshot is not None and step in log_index and time.monotonic() - last_snapshot >= snapshot_every:
            snapshot(Snapshot(step, {n: to_numpy(p).copy() for n, p in engine.state().items()}, metrics,
                              checkpoints.state(), diverged))
            last_snapshot = time.monotonic()

    if resume is None:
        record(stage.start)
    epoch, order = None, None
    if data.augment is not None:
        if engine.batched:
            raise ValueError("augmentation needs the run-by-run path")
        generator = torch.Generator(device=device)
    for step in range(first, stage.stop):
        if step // steps_per_epoch != epoch:
            epoch = step // steps_per_epoch
            order = epoch_order(distinct, stage.name, epoch, n_train, device)
        offset = (step % steps_per_epoch) * batch_size
        idx = order[run_seed, offset : offset + batch_size]  # (M, B)
        keys = None if engine.batched else [step_key(*s, stage.name, step) for s in seeds]
        rate = elr if switch_elr is None or step < stage.switch[0] else switch_elr
        if data.augment is None:
            stats = engine.step_on(data.x_train, data.y_train, which_data, idx, rate, keys)
        else:
            x = data.augment.runs(data.x_train[which_data[:, None], idx], keys, generator)
            stats = engine.step(x, data.y_train[which_data[:, None], idx], rate, keys)
        grad_sum += stats.grad_norm
        score_sum += torch.stack([stats.loss, stats.acc])
        step_count += 1
        record(step + 1)
    if progress is not None and stage.stop > last_reported:
        progress((stage.stop - last_reported) * m)
    return StageResult(metrics, checkpoints.result(), diverged)

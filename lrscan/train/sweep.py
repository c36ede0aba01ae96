"""A whole sweep: pre-training for every (plr, seed), SWA, fine-tuning for every (plr, flr, seed).

Runs that are already done in the store are skipped, so calling :func:`train` on a finished
store does no work and on a partial one finishes it.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from lrscan.data import DATASETS, Data
from lrscan.models import MODELS
from lrscan.spec import Spec
from lrscan.store import RunData, StoreWriter, create_or_check
from lrscan.train.engine import Engine, layout, project, si_norm, swa_average, to_numpy
from lrscan.train.loop import EVAL_CHUNK, DeviceData, run_stage, seed_key
from lrscan.train.plan import Plan

# Buffered checkpoints of one batch of runs stay under this many bytes.
BATCH_BYTES = 1 << 30


@dataclass
class Progress:
    """What a progress display needs: the phase, model-steps done and total."""

    phase: str
    done: int
    total: int


@dataclass
class Setup:
    """Everything a sweep needs besides the store: model, data per data seed, plan."""

    spec: Spec
    plan: Plan
    module: torch.nn.Module
    data: dict[int, Data]
    device: torch.device

    @classmethod
    def build(cls, spec: Spec) -> "Setup":
        model, dataset = MODELS[spec.model], DATASETS[spec.dataset]
        data = {d: dataset.load(spec.data_options, d) for d in spec.data_seeds}
        first = data[spec.data_seeds[0]]
        plan = Plan.build(spec, first.x_train.shape[0])
        with torch.random.fork_rng(devices=[]):
            module = model.build(spec.model_options, first.input_shape, first.n_classes)
        return cls(spec, plan, module, data, resolve_device(spec.device))

    @property
    def entry(self):
        return MODELS[self.spec.model]

    def init_weights(self, train_seed: int, data_seed: int) -> torch.Tensor:
        """The projected initial point of one seed, (P,): the same for every learning rate."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed_key(train_seed, data_seed, "init", 0))
            module = self.entry.build(self.spec.model_options, self.data[data_seed].input_shape,
                                      self.data[data_seed].n_classes)
        flat = torch.cat([p.detach().reshape(-1) for p in module.parameters()])[None]
        return project(flat, layout(self.entry, module), self.spec.radius)[0]

    def device_data(self, data_seeds: list[int]) -> tuple[DeviceData, dict[int, int]]:
        """The given data seeds' sets stacked on the device, and each seed's position."""
        sets = [self.data[d] for d in data_seeds]
        stack = lambda name: torch.stack([getattr(s, name) for s in sets]).to(self.device)  # noqa: E731
        return DeviceData(stack("x_train"), stack("y_train"), stack("x_test"), stack("y_test")), {
            d: i for i, d in enumerate(data_seeds)
        }


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Sweep:
    """A checked sweep bound to its store, with the runs it still has to do.

    Preparing does all validation and creates (or checks) the store before any training,
    so every error a user can cause surfaces before work starts.
    """

    def __init__(self, spec: Spec, store: str | os.PathLike, *, batched: bool | None = None):
        self.setup = setup = Setup.build(spec)
        self.plan = plan = setup.plan
        create_or_check(store, plan, layout(setup.entry, setup.module))
        self.writer = StoreWriter(store)
        self.batched = setup.entry.forward_batched is not None if batched is None else batched
        # Checkpoints each run buffers until its batch is written.
        kept = {"pretrain": plan.pretrain.checkpoint_steps.size}
        if plan.swa_steps:
            kept["swa"] = len(plan.swa_steps)
        if plan.finetune.n_steps:
            kept["finetune"] = plan.finetune.checkpoint_steps.size
        n_params = sum(p.numel() for p in setup.module.parameters())
        self.batches = {
            stage: _pending_batches(self.writer.done(stage), max(1, BATCH_BYTES // (4 * n_params * n)))
            for stage, n in kept.items()
        }
        self.todo = {stage: [r for b in batches for r in b.todo] for stage, batches in self.batches.items()}

    @property
    def model_steps(self) -> int:
        """Model-steps left to train (one step of one run is one model-step)."""
        return sum(
            len(batch.runs) * getattr(self.plan, stage).n_steps
            for stage in ("pretrain", "finetune") for batch in self.batches.get(stage, [])
        )

    def run(self, progress: Callable[[Progress], None] | None = None) -> dict[str, int]:
        """Train what is left; returns the number of runs trained per stage."""
        setup, plan, writer, spec = self.setup, self.plan, self.writer, self.setup.spec
        total, done = self.model_steps, 0

        def report(phase: str) -> Callable[[int], None]:
            def tick(n: int) -> None:
                nonlocal done
                done += n
                if progress is not None:
                    progress(Progress(phase, done, total))
            return tick

        for batch in self.batches["pretrain"]:
            runs = [plan.runs[s] for _, s in batch.runs]
            start = torch.stack([setup.init_weights(r.train_seed, r.data_seed) for r in runs])
            _train_batch(setup, writer, "pretrain", batch, start, [spec.plr[p] for p, _ in batch.runs],
                         self.batched, report("pretrain"))
        for batch in self.batches.get("swa", []):
            _swa_batch(setup, writer, batch)
            report("swa")(0)
        ft_from = plan.finetune.start
        for batch in self.batches.get("finetune", []):
            start = torch.from_numpy(
                np.stack([writer.read_weights("pretrain", (p, s), [ft_from])[0] for p, _, s in batch.runs])
            )
            _train_batch(setup, writer, "finetune", batch, start, [spec.flr[f] for _, f, _ in batch.runs],
                         self.batched, report("finetune"))
        return {stage: len(runs) for stage, runs in self.todo.items()}


def train(
    spec: Spec,
    store: str | os.PathLike,
    *,
    batched: bool | None = None,
    progress: Callable[[Progress], None] | None = None,
) -> dict[str, int]:
    """Run every run of ``spec`` that the store does not hold yet.

    Parameters
    ----------
    spec
        A resolved spec (:func:`lrscan.spec.load_spec`).
    store
        Path of the store; created when missing, checked against ``spec`` when present.
    batched
        Advance runs of one stage together (default: whenever the model allows).
    progress
        Called with a :class:`Progress` as work advances.

    Returns
    -------
    dict
        Runs trained per stage (0 everywhere for a finished store).
    """
    return Sweep(spec, store, batched=batched).run(progress)


@dataclass
class Batch:
    """Runs trained together: a fixed slice of the stage's runs, and those not yet stored."""

    runs: list[tuple[int, ...]]
    todo: list[tuple[int, ...]]


def _pending_batches(done: np.ndarray, size: int) -> list[Batch]:
    """The stage's runs cut into fixed batches, keeping those with runs left to do.

    The cut does not depend on what is done, so a batch redone after a crash has the same
    runs in the same order as before and reproduces their floats exactly.
    """
    runs = list(itertools.product(*map(range, done.shape)))
    batches = [Batch(runs[i : i + size], [r for r in runs[i : i + size] if not done[r]])
               for i in range(0, len(runs), size)]
    return [b for b in batches if b.todo]


def _train_batch(setup, writer, stage_name, batch: Batch, start, elr, batched, tick) -> None:
    plan = setup.plan
    stage = getattr(plan, stage_name)
    runs = [plan.runs[idx[-1]] for idx in batch.runs]
    data_seeds = sorted({r.data_seed for r in runs})
    data, position = setup.device_data(data_seeds)
    engine = Engine(setup.entry, setup.module.to(setup.device), start.to(setup.device), setup.spec.radius,
                    batched=batched, compile=setup.spec.compile)
    result = run_stage(
        engine, data, stage,
        elr=torch.tensor(elr, dtype=torch.float32, device=setup.device),
        seeds=[(r.train_seed, position[r.data_seed]) for r in runs],
        batch_size=setup.spec.batch_size,
        steps_per_epoch=plan.steps_per_epoch,
        progress=tick,
    )
    writer.write_runs(stage_name, [
        RunData(
            idx,
            {name: values[i] for name, values in result.metrics.items()},
            result.weights[i],
            float(result.diverged_step[i]) / plan.steps_per_epoch if result.diverged_step[i] >= 0 else float("nan"),
        )
        for i, idx in enumerate(batch.runs) if idx in batch.todo
    ])


def _swa_batch(setup: Setup, writer: StoreWriter, batch: Batch) -> None:
    """SWA solutions of every K for a batch of (plr, seed): average, project, evaluate."""
    plan, spec = setup.plan, setup.spec
    todo, batch = batch.todo, batch.runs
    ks = sorted(plan.swa_steps)
    layers = layout(setup.entry, setup.module)
    runs = [plan.runs[s] for _, s in batch]
    data, position = setup.device_data(sorted({r.data_seed for r in runs}))
    window = np.stack([writer.read_weights("pretrain", idx, plan.swa_steps[ks[-1]]) for idx in batch])
    flat = swa_average(torch.from_numpy(window), ks, layers, spec.radius).reshape(len(batch) * len(ks), -1)
    engine = Engine(setup.entry, setup.module.to(setup.device), flat.to(setup.device), spec.radius,
                    batched=setup.entry.forward_batched is not None)
    which = torch.tensor([position[r.data_seed] for r in runs for _ in ks], device=setup.device)
    train_loss, train_acc = engine.evaluate(data.x_train, data.y_train, which, EVAL_CHUNK)
    test_loss, test_acc = engine.evaluate(data.x_test, data.y_test, which, EVAL_CHUNK)
    norm = si_norm(flat, layers)
    values = {"train_loss": train_loss, "train_acc": train_acc, "test_loss": test_loss, "test_acc": test_acc,
              "weight_norm": norm}
    values = {name: to_numpy(v).reshape(len(batch), len(ks)) for name, v in values.items()}
    weights = to_numpy(flat).reshape(len(batch), len(ks), -1)
    writer.write_runs("swa", [
        RunData(idx, {name: v[i] for name, v in values.items()}, weights[i])
        for i, idx in enumerate(batch) if idx in todo
    ])

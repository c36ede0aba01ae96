"""A whole sweep: pre-training for every (plr, seed), SWA, fine-tuning for every (plr, flr, seed).

Runs that are already done in the store are skipped, so calling :func:`train` on a finished
store does no work and on a partial one finishes it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import os
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

import lrscan.store.claims as claims_module

from lrscan.data import DATASETS, Data
from lrscan.errors import LrscanError
from lrscan.models import MODELS
from lrscan.spec import Spec
from lrscan.store import (Claim, RunData, RunEnd, StoreCheckpoints, StoreWriter, _root_attrs, beside,
                          create_or_check, is_local, store_path, weight_chunk_rows)
from lrscan.train.estimate import estimate
from lrscan.train.engine import Engine
from lrscan.train.flat import flat_state, layout, project, swa_average, to_numpy
from lrscan.train.loop import EVAL_CHUNK, DeviceData, Snapshot, run_stage, seed_key
from lrscan.train.plan import Plan

# Checkpoints a batch of runs holds on the host (one weight chunk per run, streamed to the
# store as it fills) stay under this many bytes.
BATCH_BYTES = 1 << 30
# Seconds of training between snapshots of a batch in flight (local stores only).
SNAPSHOT_SECONDS = 60.0


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
        return project(flat_state(module, self.layers)[None], self.layers, self.spec.radius)[0]

    @functools.cached_property
    def layers(self) -> tuple:
        """The flat-vector layout of the model (:func:`lrscan.train.flat.layout`)."""
        return layout(self.entry, self.module)

    def engine(self, flat: torch.Tensor, *, batched: bool | None = None, compile: bool = False) -> Engine:
        """An :class:`Engine` for the runs whose states are the rows of ``flat``, on the device.

        ``batched=True`` computes all runs in one pass (``forward_batched``, or vmap over the
        module); ``False`` calls the module once per run (the reference path, ``--sequential``);
        ``None`` chooses :func:`default_batched`.
        """
        batched = default_batched(self.entry, self.device) if batched is None else batched
        module = self.module.to(self.device)
        images = self.data[self.spec.data_seeds[0]].x_train.dim() == 4
        # On a GPU: "fp32" allows TF32 matrix products (SPEC's image setups), inside the engine
        # only, and on the run-by-run path images and convolution weights go channels-last.
        return Engine(self.entry, module, flat.to(self.device), self.spec.radius, batched=batched,
                      compile=compile, options=self.spec.model_options, precision=self.spec.precision,
                      tf32=self.device.type == "cuda", channels_last=self.device.type == "cuda" and images and not batched)

    def device_data(self, data_seeds: list[int]) -> tuple[DeviceData, dict[int, int]]:
        """The given data seeds' sets stacked on the device, and each seed's position."""
        sets = [self.data[d] for d in data_seeds]
        stack = lambda name: torch.stack([getattr(s, name) for s in sets]).to(self.device)  # noqa: E731
        return DeviceData(stack("x_train"), stack("y_train"), stack("x_test"), stack("y_test"), sets[0].augment), {
            d: i for i, d in enumerate(data_seeds)
        }


def default_batched(entry, device: torch.device) -> bool:
    """Whether runs are batched by default: always for a model with ``forward_batched``; for
    the others (vmapped: the image models) on an accelerator, where one pass of M runs saves
    M - 1 launches of every kernel, but not on a CPU, where the convolutions are the time and
    vmap's grouped ones are slower than M separate ones (``benchmarks/image_batching.py``)."""
    return entry.forward_batched is not None or torch.device(device).type != "cpu"


def resolve_device(name: str) -> torch.device:
    """The torch device a spec's ``device`` names; LrscanError when it is not on this machine."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise LrscanError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {name!r}") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if device.index is not None and device.index >= count or not count:
            have = f"it has {count} CUDA device{'s' if count != 1 else ''}" if count else "it has no CUDA GPU"
            raise LrscanError(f"device {name!r} is not on this machine ({have}); use --set device=cpu or auto")
    elif device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise LrscanError(f"device {name!r} is not on this machine (no MPS); use --set device=cpu or auto")
    return device


# Seconds between looks at batches another process is training.
POLL = 1.0


class Sweep:
    """A checked sweep bound to its store, with the runs it still has to do.

    Preparing does all validation and creates (or checks) the store before any training,
    so every error a user can cause surfaces before work starts. Each stage's runs are cut
    into fixed batches (``runs_per_batch`` runs, fewer when their checkpoints would not fit
    in memory); a batch is the unit of work, of claims between processes, and of dask tasks.
    """

    def __init__(self, spec: Spec, store: str | os.PathLike, *, batched: bool | None = None,
                 plr: Sequence[float] | None = None):
        self.plr = _plr_subset(spec, plr)
        self.store = store = store_path(store)
        resolve_device(spec.device)  # a device this machine lacks is refused before any work
        self.setup = setup = Setup.build(spec)
        self.plan = plan = setup.plan
        n_params = setup.layers[-1].stop
        self.estimate = estimate(plan, n_params)
        self.estimate.check(store)
        create_or_check(store, plan, setup.layers)
        self.writer = StoreWriter(store)
        attrs = _root_attrs(store)
        # What a snapshot must come from to be resumed here: this very store, made from this spec.
        self.identity = _identity(attrs.get("store_id") or attrs.get("created"), attrs["spec"])
        self.batched = batched  # None: the engine's default for the model and device
        self.notice: Callable[[str], None] | None = None
        self.holders: dict[str, str | None] = {}
        # Checkpoints each run holds on the host: one weight chunk while training (the rest is
        # already in the store), every SWA solution of a batch until it is written.
        kept = {"pretrain": weight_chunk_rows(plan.pretrain.checkpoint_steps.size, n_params)}
        if plan.swa_steps:
            kept["swa"] = len(plan.swa_steps)
        if plan.finetune.n_steps:
            kept["finetune"] = weight_chunk_rows(plan.finetune.checkpoint_steps.size, n_params)
        self.cuts = {
            stage: _cut(self.writer.done(stage), min(spec.runs_per_batch, max(1, BATCH_BYTES // (4 * n_params * n))),
                        self.plr)
            for stage, n in kept.items()
        }
        self.batches = {stage: [b for b in cut if b.todo] for stage, cut in self.cuts.items()}
        self.todo = {stage: [r for b in batches for r in b.todo] for stage, batches in self.batches.items()}

    @property
    def model_steps(self) -> int:
        """Model-steps left to train (one step of one run is one model-step)."""
        return sum(self.batch_steps(stage, b) for stage in self.batches for b in self.batches[stage])

    def batch_steps(self, stage: str, batch: "Batch") -> int:
        return len(batch.runs) * getattr(self.plan, stage).n_steps if stage != "swa" else 0

    def run(self, progress: Callable[[Progress], None] | None = None, *, client=None,
            notice: Callable[[str], None] | None = None) -> dict[str, int]:
        """Train what is left; returns the number of runs this call wrote per stage.

        Parameters
        ----------
        progress
            Called with a :class:`Progress` as work advances.
        client
            A ``dask.distributed.Client``: batches then run as tasks on its workers (a
            killed worker's task is retried elsewhere). Default: in this process.
        notice
            Called with one line when something the user should know happens: a batch held
            by another process is waited for (at most until its claim has had no heartbeat
            for :data:`lrscan.store.claims.CLAIM_TTL` seconds), a stale claim or a foreign snapshot
            is set aside.
        """
        self.notice = notice
        total, done = self.model_steps, 0

        def report(phase: str) -> Callable[[int], None]:
            def tick(n: int) -> None:
                nonlocal done
                done += n
                if progress is not None:
                    progress(Progress(phase, done, total))
            return tick

        written = {stage: 0 for stage in self.batches}
        waiting: set[str] = set()
        for stage in self.batches:
            if client is not None:
                written[stage] = _run_on_cluster(self, stage, client, report(stage))
                continue
            pending = list(self.batches[stage])
            while pending:  # batches claimed by another process are looked at again
                left = []
                for batch in pending:
                    n = self.run_batch(stage, batch, report(stage))
                    if n is None:
                        if batch.key not in waiting and notice is not None:
                            notice(f"waiting for {stage} batch {batch.key}, which another process is training "
                                   f"({self.holders.get(batch.key)}); its claim is taken over once it has had "
                                   f"no heartbeat for {claims_module.CLAIM_TTL:.0f} s")
                        waiting.add(batch.key)
                        left.append(batch)
                    else:
                        written[stage] += n
                pending = left
                if pending:
                    time.sleep(POLL)
        return written

    def run_batch(self, stage: str, batch: "Batch", tick: Callable[[int], None] | None = None) -> int | None:
        """Train and write one batch unless it is done or another live process holds it.

        Returns the number of runs this call wrote (0 when the batch was already done), or
        None when another live process holds the batch.
        """
        done = self.writer.done(stage)
        if all(done[r] for r in batch.runs):
            return 0
        with Claim(self.store, stage, batch.key) as claim:
            if not claim.held:
                self.holders[batch.key] = claim.holder
                return None
            if claim.took_over and self.notice is not None:
                self.notice(f"took over the claim on {stage} batch {batch.key}: {claim.took_over}")
            # Only now, holding the claim: another process may have finished the batch between
            # the look above and the claim.
            done = self.writer.done(stage)
            todo = [r for r in batch.runs if not done[r]]
            if not todo:
                return 0

            def beat(n: int) -> None:  # training reports progress: keep the claim fresh too
                claim.heartbeat()
                if tick is not None:
                    tick(n)

            batch = dataclasses.replace(batch, todo=todo)
            setup, plan, writer, spec = self.setup, self.plan, self.writer, self.setup.spec
            snapshots = SnapshotFile(self.store, stage, batch, self.identity, self.notice) if is_local(self.store) else None
            if stage == "pretrain":
                runs = [plan.runs[s] for _, s in batch.runs]
                start = torch.stack([setup.init_weights(r.train_seed, r.data_seed) for r in runs])
                _train_batch(setup, writer, stage, batch, start, [spec.plr[p] for p, _ in batch.runs],
                             self.batched, beat, snapshots)
            elif stage == "swa":
                _swa_batch(setup, writer, batch)
            else:
                branch = plan.finetune.start
                start = torch.from_numpy(
                    np.stack([writer.read_weights("pretrain", (p, s), [branch])[0] for p, _, s in batch.runs])
                )
                _train_batch(setup, writer, stage, batch, start, [spec.flr[f] for _, f, _ in batch.runs],
                             self.batched, beat, snapshots)
            if snapshots is not None:
                snapshots.remove()
        return len(todo)


def train(
    spec: Spec,
    store: str | os.PathLike,
    *,
    batched: bool | None = None,
    progress: Callable[[Progress], None] | None = None,
    client=None,
    plr: Sequence[float] | None = None,
    notice: Callable[[str], None] | None = None,
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
    client
        A ``dask.distributed.Client`` to run batches on (default: this process).
    plr
        Train only the runs of these PLRs (values of ``spec.plr``); the others stay not done.
        An adaptive search trains the grid points it picks this way, in an ordinary store.
    notice
        Called with one line on waits and takeovers (:meth:`Sweep.run`).

    Returns
    -------
    dict
        Runs trained per stage (0 everywhere for a finished store).
    """
    return Sweep(spec, store, batched=batched, plr=plr).run(progress, client=client, notice=notice)


@dataclass
class Batch:
    """Runs trained together: a fixed slice of the stage's runs, and those not yet stored."""

    index: int
    runs: list[tuple[int, ...]]
    todo: list[tuple[int, ...]]

    @property
    def key(self) -> str:
        """Names the batch's claim and snapshot files: its first run and size, so batches of
        different PLR subsets do not share them."""
        return "-".join(map(str, self.runs[0])) + f"x{len(self.runs)}"


def _plr_subset(spec: Spec, plr: Sequence[float] | None) -> tuple[int, ...] | None:
    """Positions in ``spec.plr`` of the PLRs to train (None: all)."""
    if plr is None:
        return None
    index = []
    for value in plr:
        match = [i for i, v in enumerate(spec.plr) if np.isclose(v, value, rtol=1e-9, atol=0)]
        if not match:
            raise LrscanError(f"plr {value:g} is not on the sweep's grid")
        index.append(match[0])
    return tuple(sorted(set(index)))


def _cut(done: np.ndarray, size: int, plr: tuple[int, ...] | None = None) -> list[Batch]:
    """The stage's runs cut into fixed batches of ``size``, each with the runs left to do.

    The cut does not depend on what is done, so a batch redone after a crash has the same
    runs in the same order as before and reproduces their floats exactly.
    """
    runs = [r for r in itertools.product(*map(range, done.shape)) if plr is None or r[0] in plr]
    return [Batch(i // size, runs[i : i + size], [r for r in runs[i : i + size] if not done[r]])
            for i in range(0, len(runs), size)]


# Sweeps already prepared in this worker process, so that a worker builds data and model once.
_WORKER_SWEEPS: dict[tuple[str, str], "Sweep"] = {}


def _batch_task(spec_tables: dict, store: str, stage: str, index: int, batched: bool, threads: int | None,
                plr: Sequence[float] | None = None) -> int:
    """A dask task: train one batch of a sweep (waiting while another process holds it);
    returns the runs it wrote."""
    if threads:
        torch.set_num_threads(threads)
    key = (store, json.dumps(spec_tables, sort_keys=True), None if plr is None else tuple(plr))
    if key not in _WORKER_SWEEPS:
        spec = Spec.from_dict(spec_tables, trusted=True)  # the user's own spec, sent by train()
        if spec.device in ("auto", "cuda") and torch.cuda.is_available():
            from dask.distributed import get_worker

            # One GPU per worker: LocalCluster names its workers 0, 1, ...
            name = get_worker().name
            gpu = int(name) % torch.cuda.device_count() if str(name).isdigit() else 0
            spec = dataclasses.replace(spec, device=f"cuda:{gpu}")
        _WORKER_SWEEPS[key] = Sweep(spec, store, batched=batched, plr=plr)
    sweep = _WORKER_SWEEPS[key]
    batch = sweep.cuts[stage][index]
    while (written := sweep.run_batch(stage, batch)) is None:
        time.sleep(POLL)
    return written


def _run_on_cluster(sweep: Sweep, stage: str, client, tick: Callable[[int], None]) -> int:
    """Run a stage's pending batches as dask tasks, retried when a worker dies; returns runs written."""
    from dask.distributed import as_completed

    spec = sweep.setup.spec
    plr = None if sweep.plr is None else [spec.plr[i] for i in sweep.plr]
    tables = spec.to_dict()
    tables["sweep"]["device"] = spec.device
    n_workers = len(client.scheduler_info().get("workers", {})) or 1
    threads = max(1, (os.cpu_count() or 1) // n_workers) if getattr(client.cluster, "workers", None) else None
    futures = {
        client.submit(_batch_task, tables, str(sweep.store), stage, batch.index, sweep.batched, threads, plr,
                      key=f"lrscan-{stage}-{batch.index}-{os.getpid()}-{time.time_ns()}", retries=3, pure=False): batch
        for batch in sweep.batches[stage]
    }
    written = 0
    for future in as_completed(futures):
        written += future.result()
        tick(sweep.batch_steps(stage, futures[future]))
    return written


def _identity(store_id: str, spec_tables: dict) -> str:
    """What binds a snapshot to the store and spec it was taken in."""
    return hashlib.sha256(json.dumps([store_id, spec_tables], sort_keys=True).encode()).hexdigest()


class SnapshotFile:
    """Where a batch in flight keeps its latest :class:`Snapshot`: ``.<store>.resume/`` beside
    the store, one ``.npz`` per batch (plain arrays, no pickles), replaced atomically.

    A snapshot carries the identity of the store and spec it was taken in (:func:`_identity`);
    one of another store at the same path (deleted and made again) or of another spec is never
    resumed from: it is removed, and the batch starts over.
    """

    def __init__(self, store, stage: str, batch: Batch, identity: str = "",
                 notice: Callable[[str], None] | None = None):
        self.path = beside(store, "resume") / f"{stage}-{batch.key}.npz"
        self.runs = np.array(batch.runs)
        self.identity = identity
        self.notice = notice

    def load(self) -> Snapshot | None:
        try:
            with np.load(self.path, allow_pickle=False) as f:
                if "identity" not in f.files or str(f["identity"]) != self.identity:
                    self._discard("was taken in another store or with another spec")
                    return None
                if not np.array_equal(f["runs"], self.runs) or "checkpoints/chunk" not in f.files:
                    return None  # another batch's, or from a version that buffered every checkpoint
                group = lambda prefix: {k[len(prefix):]: f[k] for k in f.files if k.startswith(prefix)}  # noqa: E731
                return Snapshot(int(f["step"]), group("state/"), group("metrics/"), group("checkpoints/"),
                                f["diverged"])
        except FileNotFoundError:
            return None
        except (OSError, KeyError, ValueError):
            return None  # one cut short: start the batch over

    def _discard(self, why: str) -> None:
        self.path.unlink(missing_ok=True)
        if self.notice is not None:
            self.notice(f"ignored and removed the snapshot {self.path}: it {why}")

    def save(self, snap: Snapshot) -> None:
        tmp = self.path.with_suffix(".tmp.npz")
        try:
            self.path.parent.mkdir(exist_ok=True)
            np.savez(tmp, runs=self.runs, step=snap.step, diverged=snap.diverged, identity=np.array(self.identity),
                     **{f"state/{k}": v for k, v in snap.state.items()},
                     **{f"metrics/{k}": v for k, v in snap.metrics.items()},
                     **{f"checkpoints/{k}": v for k, v in snap.checkpoints.items()})
            os.replace(tmp, self.path)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            raise LrscanError(f"could not save a snapshot to {self.path.parent}: {err.strerror or err}; runs "
                              "finished before are kept — fix the cause and rerun the same command to resume") from None

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def _train_batch(setup, writer, stage_name, batch: Batch, start, elr, batched, tick,
                 snapshots: SnapshotFile | None = None) -> None:
    plan = setup.plan
    stage = getattr(plan, stage_name)
    runs = [plan.runs[idx[-1]] for idx in batch.runs]
    data_seeds = sorted({r.data_seed for r in runs})
    data, position = setup.device_data(data_seeds)
    engine = setup.engine(start, batched=batched, compile=setup.spec.compile)
    todo = [i for i, idx in enumerate(batch.runs) if idx in batch.todo]
    sink = StoreCheckpoints(writer, stage_name, [batch.runs[i] for i in todo], todo)

    def rows(metrics: dict[str, np.ndarray]) -> list[RunEnd]:
        return [RunEnd(batch.runs[i], {name: values[i] for name, values in metrics.items()}, 0) for i in todo]

    def snapshot(snap: Snapshot) -> None:
        if snapshots is not None:
            snapshots.save(snap)
        # Readers (lrscan info, lrscan.open) see the batch's rows so far; its runs stay not done.
        writer.write_rows(stage_name, rows(snap.metrics))

    resume = snapshots.load() if snapshots is not None else None
    if resume is not None and tick is not None:
        tick((resume.step - stage.start) * len(batch.runs))  # the steps the snapshot saved count as done
    result = run_stage(
        engine, data, stage,
        elr=torch.tensor(elr, dtype=torch.float32, device=setup.device),
        seeds=[(r.train_seed, position[r.data_seed]) for r in runs],
        batch_size=setup.spec.batch_size,
        steps_per_epoch=plan.steps_per_epoch,
        progress=tick,
        resume=resume,
        snapshot=snapshot,
        snapshot_every=SNAPSHOT_SECONDS,
        checkpoints=sink,
    )
    diverged = [float(d) / plan.steps_per_epoch if d >= 0 else float("nan") for d in result.diverged_step]
    writer.finish_runs(stage_name, [
        RunEnd(end.index, end.metrics, int(crc), diverged[i])
        for i, end, crc in zip(todo, rows(result.metrics), sink.crc)
    ])


def _swa_batch(setup: Setup, writer: StoreWriter, batch: Batch) -> None:
    """SWA solutions of every K for a batch of (plr, seed): average, project, evaluate."""
    plan, spec = setup.plan, setup.spec
    todo, batch = batch.todo, batch.runs
    ks = spec.swa
    layers = setup.layers
    runs = [plan.runs[s] for _, s in batch]
    data, position = setup.device_data(sorted({r.data_seed for r in runs}))
    steps, members = plan.swa_members()
    window = np.stack([writer.read_weights("pretrain", idx, steps) for idx in batch])
    flat = swa_average(torch.from_numpy(window), members, layers, spec.radius).reshape(len(batch) * len(ks), -1)
    engine = setup.engine(flat)
    which = torch.tensor([position[r.data_seed] for r in runs for _ in ks], device=setup.device)
    # In batches of the training batch size, as the study's update_bn over its train loader.
    engine.recompute_bn(data.x_train, which, batch_size=spec.batch_size)
    flat = to_numpy(engine.flat())
    train_loss, train_acc = engine.evaluate(data.x_train, data.y_train, which, EVAL_CHUNK)
    test_loss, test_acc = engine.evaluate(data.x_test, data.y_test, which, EVAL_CHUNK)
    norm = engine.weight_norm()
    values = {"train_loss": train_loss, "train_acc": train_acc, "test_loss": test_loss, "test_acc": test_acc,
              "weight_norm": norm}
    values = {name: to_numpy(v).reshape(len(batch), len(ks)) for name, v in values.items()}
    weights = flat.reshape(len(batch), len(ks), -1)
    writer.write_runs("swa", [
        RunData(idx, {name: v[i] for name, v in values.items()}, weights[i])
        for i, idx in enumerate(batch) if idx in todo
    ])

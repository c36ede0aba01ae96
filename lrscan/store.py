"""The sweep store: one zarr v3 directory laid out as an xarray DataTree.

::

    /                 attrs: lrscan_schema, lrscan_version, torch_version, spec, steps_per_epoch
    /layers           the flat state vector's layout: start, stop, shape, si, trainable, buffer (dim layer)
    /pretrain/metrics train/test loss and accuracy, weight_norm, grad_norm, running train loss
                      and accuracy (plr, seed, epoch); done, diverged_epoch (plr, seed)
    /pretrain/weights weights (plr, seed, epoch, param) at the checkpoint epochs
    /finetune/...     the same with an flr dimension (plr, flr, seed, ...)
    /swa/metrics      metrics of the SWA solutions (plr, seed, swa); done (plr, seed)
    /swa/weights      weights (plr, seed, swa, param)

Metrics and weights sit in sibling groups because they are logged at different epochs, and a
DataTree requires a child's index to match its parent's.  Every array is allocated up front
(unwritten values read as NaN, flags as 0) and chunked so that one run owns whole chunks: a
run's writes touch nothing of any other run, and its ``done`` flag is written after its data.
See store/README.md for the user-facing description.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as _dt
import json
import os
import shutil
import socket
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import dask.array as da
import numpy as np
import torch
import xarray as xr
import fsspec
import zarr
import zarr.api.asynchronous
from zarr.core.sync import sync as zarr_sync

import lrscan
from lrscan.errors import LrscanError
from lrscan.spec import Spec
from lrscan.train.engine import Layer
from lrscan.train.loop import METRICS, Checkpoints
from lrscan.train.plan import Plan

# Adding a metric variable keeps the schema: readers look variables up by name, and a store
# made before one existed is finished without it (StoreWriter writes the metrics it has).
SCHEMA_VERSION = 1
RUN_DIMS = {"pretrain": ("plr", "seed"), "finetune": ("plr", "flr", "seed"), "swa": ("plr", "seed")}
SWA_METRICS = ("train_loss", "train_acc", "test_loss", "test_acc", "weight_norm")
# Weight chunks hold about this many bytes when a run keeps more than that.
WEIGHT_CHUNK_BYTES = 8 << 20


def _fs(store: str | os.PathLike) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem of a store location (a local path or any fsspec URL) and its root there."""
    return fsspec.core.url_to_fs(str(store))


def is_local(store: str | os.PathLike) -> bool:
    """Whether a store lives on the local filesystem (where files can be created exclusively)."""
    protocol = _fs(store)[0].protocol
    return "file" in (protocol if isinstance(protocol, tuple) else (protocol,))


def open_store(path: str | os.PathLike) -> xr.DataTree:
    """Open a store lazily: every variable is a dask array, nothing is read until computed."""
    _require_store(path)
    return xr.open_datatree(str(path), engine="zarr", chunks={}, consolidated=False)


def read_spec(path: str | os.PathLike) -> Spec:
    """The resolved spec a store was made from."""
    return Spec.from_dict(_root_attrs(path)["spec"])


def _root_attrs(path: str | os.PathLike) -> dict:
    _require_store(path)
    attrs = zarr.open_group(str(path), mode="r").attrs.asdict()
    schema = attrs.get("lrscan_schema")
    if schema != SCHEMA_VERSION:
        raise LrscanError(
            f"{path} has store schema {schema!r}; this lrscan reads schema {SCHEMA_VERSION}"
        )
    return attrs


def _require_store(path: str | os.PathLike) -> None:
    fs, root = _fs(path)
    if not fs.exists(root):
        raise LrscanError(f"no store at {path}; run `lrscan train --store {path}` first")
    if not fs.isdir(root) or not fs.exists(f"{root}/zarr.json"):
        raise LrscanError(f"{path} is not an lrscan store (no zarr.json)")
    attrs = zarr.open_group(str(path), mode="r").attrs
    if "lrscan_schema" not in attrs:
        raise LrscanError(f"{path} is a zarr store but not an lrscan store (no lrscan_schema attribute)")


def create_or_check(path: str | os.PathLike, plan: Plan, layers: Sequence[Layer]) -> bool:
    """Make the store for a plan, or check that an existing one was made from the same spec.

    Returns True when a new store was created.  An existing store made from another spec is
    refused with an error naming the fields that differ, and is left untouched.  A crash
    never leaves a half-made store behind: a local store is built beside its place and
    renamed into it (so concurrent creators agree on one); on other filesystems the root's
    attributes, which mark it as an lrscan store, are written last.
    """
    fs, root = _fs(path)
    if fs.exists(root):
        if fs.isfile(root):
            raise LrscanError(f"store path {path} is a file, not a directory")
        if fs.ls(root):
            old = read_spec(path)
            diff = old.differences(plan.spec)
            if diff:
                raise LrscanError(
                    f"{path} was made from a different spec ({', '.join(diff)} differ); "
                    "use another --store, or delete this one to start over"
                )
            return False
    if not is_local(path):
        try:
            _write_skeleton(str(path), plan, layers)
        except OSError as err:
            raise LrscanError(f"cannot write the store at {path}: {err.strerror or err}") from None
        return True
    path = Path(root)
    tmp = path.parent / f".{path.name}.creating-{os.getpid()}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        _write_skeleton(str(tmp), plan, layers)
        if path.exists() and not any(path.iterdir()):
            path.rmdir()  # an empty directory the user made for us
        tmp.rename(path)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if path.is_dir() and (path / "zarr.json").exists():
            return create_or_check(path, plan, layers)  # another process made it first
        raise LrscanError(f"cannot write the store at {path}: {err.strerror or err}") from None
    return True


def _write_skeleton(path: str, plan: Plan, layers: Sequence[Layer]) -> None:
    spec = plan.spec
    root = zarr.open_group(path, mode="w-", zarr_format=3)
    attrs = {
        "lrscan_schema": SCHEMA_VERSION,
        "lrscan_version": lrscan.__version__,
        "torch_version": torch.__version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "steps_per_epoch": plan.steps_per_epoch,
        "spec": json.loads(json.dumps(spec.to_dict())),
    }
    n_params = layers[-1].stop
    table = xr.Dataset(
        {
            "start": ("layer", np.array([l.start for l in layers], dtype=np.int64)),
            "stop": ("layer", np.array([l.stop for l in layers], dtype=np.int64)),
            "shape": ("layer", np.array([",".join(map(str, l.shape)) for l in layers], dtype=object)),
            "si": ("layer", np.array([l.si for l in layers])),
            "trainable": ("layer", np.array([l.trainable for l in layers])),
            "buffer": ("layer", np.array([l.buffer for l in layers])),
        },
        coords={"layer": np.array([l.name for l in layers], dtype=object)},
        attrs={"description": "layout of the flat parameter vector (dim param) of every weights array"},
    )
    table.to_zarr(str(path), group="layers", mode="w", consolidated=False, zarr_format=3)

    seeds = {
        "seed": ("seed", np.array([r.seed for r in plan.runs])),
        "train_seed": ("seed", np.array([r.train_seed for r in plan.runs])),
        "data_seed": ("seed", np.array([r.data_seed for r in plan.runs])),
    }
    run_coords = {"plr": ("plr", np.array(spec.plr)), "flr": ("flr", np.array(spec.flr)), **seeds}
    stages = {"pretrain": plan.pretrain}
    if plan.finetune.n_steps > 0:
        stages["finetune"] = plan.finetune
    for name, stage in stages.items():
        dims = RUN_DIMS[name]
        time = {
            "epoch": ("epoch", plan.epochs(stage.log_steps)),
            "step": ("epoch", stage.log_steps),
        }
        _allocate(path, f"{name}/metrics", dims, run_coords, time, METRICS, np.float32, diverged=True)
        time = {"epoch": ("epoch", plan.epochs(stage.checkpoint_steps)), "step": ("epoch", stage.checkpoint_steps)}
        _allocate_weights(path, f"{name}/weights", dims, run_coords, time, n_params)
    zarr.open_group(path, path="pretrain", mode="r+").attrs["stages"] = plan.pretrain_stages
    if plan.swa_steps:
        ks = {"swa": ("swa", np.array(sorted(plan.swa_steps)))}
        _allocate(path, "swa/metrics", RUN_DIMS["swa"], run_coords, ks, SWA_METRICS, np.float32, diverged=False)
        _allocate_weights(path, "swa/weights", RUN_DIMS["swa"], run_coords, ks, n_params)
    # Last: these attributes are what makes the directory an lrscan store.
    root.attrs.update(attrs)


def _coords(dims, run_coords, extra) -> dict:
    coords = {k: v for k, v in run_coords.items() if v[0] in dims}
    return {**coords, **extra}


def _allocate(path, group, dims, run_coords, time, names, dtype, *, diverged: bool) -> None:
    (time_dim,) = {v[0] for v in time.values()}
    shape = tuple(len(run_coords[d][1]) for d in dims) + (len(next(iter(time.values()))[1]),)
    chunks = (1,) * len(dims) + (shape[-1],)
    data = {name: (dims + (time_dim,), da.full(shape, np.nan, dtype=dtype, chunks=chunks)) for name in names}
    encoding = {name: {"_FillValue": np.nan} for name in names}
    run_shape, run_chunks = shape[:-1], (1,) * len(dims)
    data["done"] = (dims, da.zeros(run_shape, dtype=np.uint8, chunks=run_chunks))
    data["checksum"] = (dims, da.zeros(run_shape, dtype=np.int64, chunks=run_chunks))
    if diverged:
        data["diverged_epoch"] = (dims, da.full(run_shape, np.nan, dtype=np.float64, chunks=run_chunks))
        encoding["diverged_epoch"] = {"_FillValue": np.nan}
    ds = xr.Dataset(data, coords=_coords(dims, run_coords, time))
    ds.to_zarr(str(path), group=group, mode="w", compute=False, consolidated=False, zarr_format=3, encoding=encoding)


def weight_chunk_rows(n_rows: int, n_params: int) -> int:
    """Checkpoints per chunk of a run's weights: about WEIGHT_CHUNK_BYTES, at least one."""
    return max(1, min(n_rows, WEIGHT_CHUNK_BYTES // (4 * n_params)))


def _allocate_weights(path, group, dims, run_coords, time, n_params: int) -> None:
    (time_dim,) = {v[0] for v in time.values()}
    n_time = len(next(iter(time.values()))[1])
    shape = tuple(len(run_coords[d][1]) for d in dims) + (n_time, n_params)
    chunks = (1,) * len(dims) + (weight_chunk_rows(n_time, n_params), n_params)
    ds = xr.Dataset(
        {"weights": (dims + (time_dim, "param"), da.full(shape, np.nan, dtype=np.float32, chunks=chunks))},
        coords=_coords(dims, run_coords, {**time, "param": ("param", np.arange(n_params))}),
    )
    ds.to_zarr(
        str(path), group=group, mode="w", compute=False, consolidated=False, zarr_format=3,
        encoding={"weights": {"_FillValue": np.nan}},
    )


@dataclass
class RunData:
    """Everything one run writes: its index along the run dims, metrics, weights, divergence."""

    index: tuple[int, ...]
    metrics: Mapping[str, np.ndarray]
    weights: np.ndarray
    diverged_epoch: float = float("nan")

    def __post_init__(self):
        self.weights = canonical_nan(self.weights)
        self.metrics = {name: canonical_nan(values) for name, values in self.metrics.items()}

    def checksum(self, with_divergence: bool = True) -> int:
        """CRC-32 of the run's values as stored (see :func:`run_checksum`)."""
        return run_checksum(weights_crc(self.weights), self.metrics, self.diverged_epoch if with_divergence else None)


def weights_crc(rows: np.ndarray, crc: int = 0) -> int:
    """CRC-32 of float32 weight rows, continuing ``crc`` (so rows can be checksummed block by
    block in order, as a stream writes them)."""
    return zlib.crc32(np.ascontiguousarray(rows, dtype=np.float32).tobytes(), crc)


def run_checksum(weights_crc: int, metrics: Mapping[str, np.ndarray], diverged_epoch: float | None) -> int:
    """The checksum of one run as stored: the CRC-32 of its float32 weights in row order
    (``weights_crc``, which a writer may chain block by block), continued over its float32
    metrics in name order and, where the stage records one, its float64 ``diverged_epoch``."""
    crc = weights_crc
    for name in sorted(metrics):
        crc = zlib.crc32(np.ascontiguousarray(metrics[name], dtype=np.float32).tobytes(), crc)
    if diverged_epoch is not None:
        crc = zlib.crc32(np.float64(diverged_epoch).tobytes(), crc)
    return crc


def canonical_nan(values: np.ndarray) -> np.ndarray:
    """float32 values with every NaN the same bit pattern (a quiet, positive NaN).

    zarr stores an all-NaN chunk as missing, which reads back as that pattern; NaNs the
    hardware makes (``inf - inf`` sets the sign bit) would otherwise change a checksum.
    """
    values = np.asarray(values, dtype=np.float32)
    nan = np.isnan(values)
    if nan.any():
        values = values.copy()
        values[nan] = np.nan
    return values


class StoreWriter:
    """Region writes of whole runs into an existing store, straight through zarr."""

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        self.root = zarr.open_group(self.path, mode="r+")

    def done(self, stage: str) -> np.ndarray:
        """Completion flags of a stage's runs (shape of its run dims)."""
        return self.root[f"{stage}/metrics/done"][...].astype(bool)

    def read_weights(self, stage: str, index: tuple[int, ...], steps: Sequence[int]) -> np.ndarray:
        """Stored weights of one run at the given steps, (len(steps), P)."""
        arr = self.root[f"{stage}/weights/weights"]
        stored = list(self.root[f"{stage}/weights/step"][...])
        rows = [stored.index(int(s)) for s in steps]
        return arr[index][rows]

    def write_runs(self, stage: str, runs: Sequence[RunData]) -> None:
        """Write whole runs (metrics, weights, divergence), then mark them done.

        All chunk writes of the batch go out concurrently; the ``done`` flags follow only
        once every data chunk is written, so a flag never points at missing data. A failed
        write (a full disk, say) leaves the runs not done, to be redone by the next train.
        """
        blocks = [WeightBlock(run.index, 0, run.weights) for run in runs]
        ends = [RunEnd(run.index, run.metrics, weights_crc(run.weights), run.diverged_epoch) for run in runs]
        self._sync(self._write(stage, blocks, ends, done=True))

    def write_blocks(self, stage: str, blocks: Sequence["WeightBlock"]) -> None:
        """Write consecutive checkpoint rows of runs in flight (whole chunks, as the trainer
        streams them); nothing is marked done."""
        self._sync(self._write(stage, blocks, [], done=False))

    def write_rows(self, stage: str, ends: Sequence["RunEnd"]) -> None:
        """Write the metric rows of runs in flight, so that readers see a batch's progress;
        nothing is marked done and no checksum is written."""
        self._sync(self._write(stage, [], ends, done=False))

    def finish_runs(self, stage: str, ends: Sequence["RunEnd"]) -> None:
        """Finish runs whose weights are written (:meth:`write_blocks`): metrics and
        divergence, then the checksum, then the done flag."""
        self._sync(self._write(stage, [], ends, done=True))

    def _sync(self, coroutine) -> None:
        try:
            # On zarr's own event loop (as its sync API does), not a second loop of ours.
            zarr_sync(coroutine)
        except OSError as err:
            raise LrscanError(
                f"could not write to the store at {self.path}: {err.strerror or err}; runs finished "
                "before are kept — fix the cause and rerun the same command to resume"
            ) from err

    async def _write(self, stage: str, blocks: Sequence["WeightBlock"], ends: Sequence["RunEnd"], *,
                     done: bool) -> None:
        group = await zarr.api.asynchronous.open_group(self.path, mode="r+")
        metrics = await group.getitem(f"{stage}/metrics")
        stored = {key async for key in metrics.keys()}
        # A store made before a metric was added has no variable for it: it keeps what it has,
        # and each run's checksum covers exactly what is stored (as `verify` reads it back).
        ends = [dataclasses.replace(end, metrics={n: v for n, v in end.metrics.items() if n in stored})
                if not stored.issuperset(end.metrics) else end for end in ends]
        writes = []
        if blocks:
            weights = await group.getitem(f"{stage}/weights/weights")
            writes += [weights.setitem(block.index + (slice(block.row, block.row + len(block.rows)),), block.rows)
                       for block in blocks]
        names = sorted({name for end in ends for name in end.metrics})
        arrays = {name: await metrics.getitem(name) for name in names}
        writes += [arrays[name].setitem(end.index, values) for end in ends for name, values in end.metrics.items()]
        has_diverged = "diverged_epoch" in stored
        if has_diverged and done:
            diverged = await metrics.getitem("diverged_epoch")
            writes += [diverged.setitem(end.index, end.diverged_epoch) for end in ends]
        await asyncio.gather(*writes)
        if not done:
            return
        # Only once every data chunk is written: the checksum, then the done flag.
        checksum = await metrics.getitem("checksum")
        await asyncio.gather(*(checksum.setitem(end.index, end.checksum(has_diverged)) for end in ends))
        flags = await metrics.getitem("done")
        await asyncio.gather(*(flags.setitem(end.index, 1) for end in ends))


@dataclass
class WeightBlock:
    """Consecutive checkpoint rows of one run, from row ``row`` on: (n, P) float32."""

    index: tuple[int, ...]
    row: int
    rows: np.ndarray

    def __post_init__(self):
        self.rows = canonical_nan(self.rows)


@dataclass
class RunEnd:
    """What finishes a run whose weights are in the store: its metrics, the CRC-32 of its
    weights in row order (chained block by block, as written), its divergence."""

    index: tuple[int, ...]
    metrics: Mapping[str, np.ndarray]
    weights_crc: int
    diverged_epoch: float = float("nan")

    def __post_init__(self):
        self.metrics = {name: canonical_nan(values) for name, values in self.metrics.items()}

    def checksum(self, with_divergence: bool = True) -> int:
        """CRC-32 of the run's values as stored (see :func:`run_checksum`)."""
        return run_checksum(self.weights_crc, self.metrics, self.diverged_epoch if with_divergence else None)


class StoreCheckpoints(Checkpoints):
    """A stage's checkpoints streamed into the store as they are produced (the trainer's and
    the importer's write path).

    Each run written gets one weight chunk's rows on the host; a chunk is written whole as soon
    as its last row arrives (rows never put stay NaN), and every run's CRC-32 is chained chunk
    by chunk in row order, as :func:`run_checksum` reads the weights back. A snapshot carries
    the chunk being filled and the CRCs so far. :meth:`StoreWriter.finish_runs` then completes
    the runs with ``crc``.

    Parameters
    ----------
    writer, stage
        The store and the stage (``pretrain``, ``finetune``).
    index
        The run index of each run to write.
    rows
        Which rows of the (M, P) states handed to :meth:`put` those runs are (default: all,
        in order); the others are trained but not written (runs of a batch already done).
    """

    def __init__(self, writer: StoreWriter, stage: str, index: Sequence[tuple[int, ...]],
                 rows: Sequence[int] | None = None):
        self.writer, self.stage, self.index = writer, stage, list(index)
        self.rows = list(range(len(self.index))) if rows is None else list(rows)
        weights = writer.root[f"{stage}/weights/weights"]
        (self.n_rows, n_params), self.per_chunk = weights.shape[-2:], weights.chunks[-2]
        self.chunk = 0
        self.block = np.full((len(self.index), self.per_chunk, n_params), np.nan, dtype=np.float32)
        self.crc = np.zeros(len(self.index), dtype=np.int64)

    def put(self, row: int, flat: np.ndarray) -> None:
        while row // self.per_chunk > self.chunk:  # rows arrive in order; a skipped chunk stays NaN
            self._flush()
        self.block[:, row - self.chunk * self.per_chunk] = flat[self.rows]
        if row + 1 == min(self.n_rows, (self.chunk + 1) * self.per_chunk):
            self._flush()

    def _flush(self) -> None:
        start = self.chunk * self.per_chunk
        rows = self.block[:, : min(self.per_chunk, self.n_rows - start)]
        blocks = [WeightBlock(idx, start, rows[j]) for j, idx in enumerate(self.index)]
        self.writer.write_blocks(self.stage, blocks)
        self.crc = np.array([weights_crc(b.rows, int(c)) for b, c in zip(blocks, self.crc)], dtype=np.int64)
        self.chunk += 1
        self.block[:] = np.nan

    def state(self) -> dict[str, np.ndarray]:
        return {"chunk": np.array(self.chunk), "block": self.block, "crc": self.crc}

    def restore(self, state: dict[str, np.ndarray]) -> None:
        self.chunk = int(state["chunk"])
        self.block = np.array(state["block"], dtype=np.float32)
        self.crc = np.array(state["crc"], dtype=np.int64)

    def result(self) -> None:
        """Write what is left (the last chunks); the weights are then all in the store."""
        while self.chunk * self.per_chunk < self.n_rows:
            self._flush()
        return None


# Claims on batches of runs, so that concurrent `lrscan train` processes on one store split
# the work instead of repeating it. A claim is a file created exclusively; it is stale when
# its process is gone (same host) or its heartbeat is older than CLAIM_TTL (another host).
CLAIM_TTL = 600.0


def beside(store: str | os.PathLike, what: str) -> Path:
    """A folder of lrscan's own next to a local store, ``.<store name>.<what>`` (claims,
    snapshots): zarr would take files inside the store for broken parts of its hierarchy."""
    store = Path(_fs(store)[1])
    return store.parent / f".{store.name}.{what}"


class Claim:
    """An exclusive claim on one batch of a stage, held while the batch trains.

    Use as a context manager; ``held`` says whether this process got the claim. A live claim
    of another process is respected; a stale one (dead process, or no heartbeat for
    :data:`CLAIM_TTL` seconds) is taken over. Stores that are not on a local filesystem
    (object storage has no exclusive create) are not claimed: there, one dask scheduler
    hands out each batch once.
    """

    def __init__(self, store: str | os.PathLike, stage: str, batch: str):
        self.local = is_local(store)
        self.path = beside(store if self.local else "remote", "claims") / f"{stage}-{batch}"
        self.held = False

    def __enter__(self) -> "Claim":
        if not self.local:
            self.held = True
            return self
        self.path.parent.mkdir(exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                if not self._stale():
                    return self
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
            self.held = True
            return self
        return self

    def heartbeat(self) -> None:
        if self.held and self.local:
            os.utime(self.path)

    def __exit__(self, *exc) -> None:
        if self.held and self.local:
            self.path.unlink(missing_ok=True)
        self.held = False

    def _stale(self) -> bool:
        try:
            owner = json.loads(self.path.read_text() or "{}")
            age = time.time() - self.path.stat().st_mtime
        except (OSError, ValueError):
            return False  # being written or just released: look again later
        if owner.get("host") == socket.gethostname() and "pid" in owner:
            return owner["pid"] == os.getpid() or not _alive(owner["pid"])  # our own: a leftover
        return age > CLAIM_TTL


def _alive(pid: int) -> bool:
    """Whether a process of this host is running (a killed one its parent has not yet
    reaped, a zombie, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True  # no /proc here: trust the signal check


RUN_FLAGS = ("done", "checksum", "diverged_epoch")


@dataclass(frozen=True)
class Problem:
    """A run whose stored data cannot be trusted."""

    stage: str
    index: tuple[int, ...]
    coords: Mapping[str, float]
    kind: str  # "incomplete", "missing" or "corrupted"
    detail: str = ""

    def __str__(self) -> str:
        where = ", ".join(f"{k}={v:g}" for k, v in self.coords.items())
        return f"{self.stage} run ({where}): {self.kind}" + (f" ({self.detail})" if self.detail else "")


def verify(path: str | os.PathLike, *, fix: bool = False) -> list[Problem]:
    """Re-read every run of a store and check it against its checksum.

    Parameters
    ----------
    path
        The store.
    fix
        Clear the ``done`` flag of missing and corrupted runs, so that the next
        ``lrscan train`` with the same spec redoes them (and only them).

    Returns
    -------
    list of Problem
        Runs not yet done (``incomplete``), done but without data (``missing``), or whose
        data does not match the checksum written after it or cannot be read (``corrupted``).
    """
    _root_attrs(path)
    root = zarr.open_group(str(path), mode="r+" if fix else "r")
    problems = []
    for stage, dims in RUN_DIMS.items():
        if f"{stage}/metrics" not in root:
            continue
        group = root[f"{stage}/metrics"]
        weights = root[f"{stage}/weights/weights"]
        names = [n for n in group.array_keys() if n not in RUN_FLAGS and group[n].ndim > len(dims)]
        coords = {d: root[f"{stage}/metrics/{d}"][...] for d in dims}
        done, stored = group["done"][...], group["checksum"][...]
        has_diverged = "diverged_epoch" in group
        bad = []
        for index in np.ndindex(done.shape):
            where = {d: float(coords[d][i]) for d, i in zip(dims, index)}
            if not done[index]:
                problems.append(Problem(stage, index, where, "incomplete"))
                continue
            try:
                run = RunData(index, {n: group[n][index] for n in names}, weights[index],
                              group["diverged_epoch"][index] if has_diverged else float("nan"))
            except Exception as err:  # a damaged chunk fails to decode
                problems.append(Problem(stage, index, where, "corrupted", f"unreadable: {type(err).__name__}"))
                bad.append(index)
                continue
            if run.checksum(has_diverged) != stored[index]:
                kind = "missing" if np.isnan(run.weights).all() else "corrupted"
                problems.append(Problem(stage, index, where, kind, "data differs from its checksum"))
                bad.append(index)
        if fix:
            for index in bad:
                group["done"][index] = 0
    return problems

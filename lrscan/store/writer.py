"""Writing runs into an existing store: whole runs, streamed checkpoint rows, metric rows, done flags."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import zarr
import zarr.api.asynchronous
from zarr.core.sync import sync as zarr_sync

from lrscan.errors import LrscanError
from lrscan.store.checksum import RunData, canonical_nan, run_checksum, weights_crc


class StoreWriter:
    """Region writes of whole runs into an existing store, straight through zarr."""

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        try:
            self.root = zarr.open_group(self.path, mode="r+")
        except OSError as err:
            raise LrscanError(f"cannot open the store at {self.path} for writing: {err.strerror or err}") from None

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

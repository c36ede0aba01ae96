"""The trainer's and the importer's checkpoint sink: a stage's weights streamed into the store chunk by chunk."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from lrscan.store.checksum import weights_crc
from lrscan.store.writer import StoreWriter, WeightBlock
from lrscan.train.loop import Checkpoints


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

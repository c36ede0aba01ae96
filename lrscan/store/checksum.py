"""What a run's checksum covers: its values as stored, CRC-32 in a fixed order."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Mapping

import numpy as np


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

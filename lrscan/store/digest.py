"""What the runs of a store are now: one digest of their done flags and checksums, for analysis fingerprints."""

from __future__ import annotations

import hashlib
import os
from typing import TYPE_CHECKING, Iterable, Mapping

import numpy as np

from lrscan.store.arrays import STAGES, read_flags
from lrscan.store.reading import attributes

if TYPE_CHECKING:
    import xarray as xr


def runs_digest(tree: xr.DataTree | str | os.PathLike, stages: Iterable[str] = STAGES) -> str:
    """A digest of the ``done`` flags and ``checksum`` of every run of ``stages``, and of how
    often ``verify --fix`` repaired the store: a result computed from the runs is stale once
    it changes (a run redone, cleared or repaired), even when retraining restores the same bits.

    ``tree`` is an opened store or its path (read through :func:`~lrscan.store.arrays.read_flags`:
    the same digest, faster).
    """
    if isinstance(tree, (str, os.PathLike)):
        return flags_digest(read_flags(tree), attributes(tree).get("repairs", 0), stages)
    flags = {}
    for stage in STAGES:
        if stage in tree.children and "metrics" in tree[stage].children:
            metrics = tree[f"{stage}/metrics"]
            flags[stage] = {name: metrics[name].values for name in ("done", "checksum") if name in metrics}
    return flags_digest(flags, tree.attrs.get("repairs", 0), stages)


def flags_digest(flags: Mapping[str, Mapping[str, np.ndarray]], repairs: int, stages: Iterable[str] = STAGES) -> str:
    """:func:`runs_digest` of runs' flags already read (``{stage: {"done": ..., "checksum": ...}}``,
    as :func:`~lrscan.store.arrays.read_flags` gives them) and the store's ``repairs`` count."""
    h = hashlib.sha256(str(int(repairs)).encode())
    for stage in sorted(set(stages)):
        if "done" not in flags.get(stage, {}):
            continue
        h.update(stage.encode())
        for name in ("done", "checksum"):
            if name in flags[stage]:
                h.update(np.ascontiguousarray(flags[stage][name]).tobytes())
    return h.hexdigest()

"""What the runs of a store are now: one digest of their done flags and checksums, for analysis fingerprints."""

from __future__ import annotations

import hashlib
import os
from typing import Iterable

import numpy as np
import xarray as xr
import zarr


def runs_digest(tree: xr.DataTree | str | os.PathLike, stages: Iterable[str] = ("pretrain", "swa", "finetune")) -> str:
    """A digest of the ``done`` flags and ``checksum`` of every run of ``stages``, and of how
    often ``verify --fix`` repaired the store: a result computed from the runs is stale once
    it changes (a run redone, cleared or repaired), even when retraining restores the same bits.

    ``tree`` is an opened store or its path (read straight through zarr: the same digest, faster).
    """
    if isinstance(tree, xr.DataTree):
        attrs, read = tree.attrs, lambda group, name: tree[group][name].values
        def has(group: str, name: str) -> bool:
            stage, child = group.split("/")
            return stage in tree.children and child in tree[stage].children and name in tree[group]

    else:
        root = zarr.open_group(str(tree), mode="r")
        attrs, read = root.attrs, lambda group, name: root[f"{group}/{name}"][...]
        has = lambda group, name: f"{group}/{name}" in root  # noqa: E731
    h = hashlib.sha256(str(int(attrs.get("repairs", 0))).encode())
    for stage in sorted(set(stages)):
        group = f"{stage}/metrics"
        if not has(group, "done"):
            continue
        h.update(stage.encode())
        for name in ("done", "checksum"):
            if has(group, name):
                h.update(np.ascontiguousarray(read(group, name)).tobytes())
    return h.hexdigest()

"""Checking a store: every done run re-read against its checksum, and the metadata that holds them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import zarr

from lrscan.errors import LrscanError
from lrscan.store.checksum import RunData
from lrscan.store.reading import RUN_DIMS, RUN_FLAGS, _root_attrs


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
    _root_attrs(path)  # damaged metadata raises StoreDamaged, naming it
    try:
        root = zarr.open_group(str(path), mode="r+" if fix else "r")
    except OSError as err:
        raise LrscanError(f"cannot open the store at {path}: {err.strerror or err}") from None
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
        if fix and bad:
            _clear(path, group, bad)
    return problems


def _clear(path, group, bad) -> None:
    """Mark damaged runs not done, and count the repair in the root's ``repairs`` attribute
    (analyses computed before it are then stale, even when retraining restores the same bits)."""
    try:
        for index in bad:
            group["done"][index] = 0
        root = zarr.open_group(str(path), mode="r+")
        root.attrs["repairs"] = int(root.attrs.get("repairs", 0)) + 1
    except OSError as err:
        raise LrscanError(f"cannot mark the damaged runs of {path} to be redone: {err.strerror or err}") from None

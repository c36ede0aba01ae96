"""Checking a store: every done run re-read against its checksum, and the metadata that holds them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from lrscan.errors import LrscanError
from lrscan.store.arrays import array_names, has_array, open_array
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
    problems = []
    try:
        for stage, dims in RUN_DIMS.items():
            problems += _check_stage(path, stage, dims, fix)
    except OSError as err:
        raise LrscanError(f"cannot read the store at {path}: {err.strerror or err}") from None
    return problems


def _check_stage(path: str | os.PathLike, stage: str, dims: tuple[str, ...], fix: bool) -> list[Problem]:
    """:func:`verify` of one stage: every run's data against its checksum (each chunk read
    once, through :func:`~lrscan.store.arrays.open_array`)."""
    group = f"{stage}/metrics"
    if not has_array(path, group):
        return []
    arrays = {n: open_array(path, f"{group}/{n}") for n in array_names(path, group)}
    names = [n for n, a in arrays.items() if n not in RUN_FLAGS and a.ndim > len(dims)]
    weights = open_array(path, f"{stage}/weights/weights")
    coords = {d: arrays[d][...] for d in dims}
    done, stored = arrays["done"][...], arrays["checksum"][...]
    has_diverged = "diverged_epoch" in arrays
    problems, bad = [], []
    for index in np.ndindex(done.shape):
        where = {d: float(coords[d][i]) for d, i in zip(dims, index)}
        if not done[index]:
            problems.append(Problem(stage, index, where, "incomplete"))
            continue
        try:
            run = RunData(index, {n: arrays[n][index] for n in names}, weights[index],
                          arrays["diverged_epoch"][index] if has_diverged else float("nan"))
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


def _clear(path, group: str, bad) -> None:
    """Mark damaged runs not done, and count the repair in the root's ``repairs`` attribute
    (analyses computed before it are then stale, even when retraining restores the same bits)."""
    import zarr

    try:
        root = zarr.open_group(str(path), mode="r+")
        done = root[f"{group}/done"]
        for index in bad:
            done[index] = 0
        root.attrs["repairs"] = int(root.attrs.get("repairs", 0)) + 1
    except OSError as err:
        raise LrscanError(f"cannot mark the damaged runs of {path} to be redone: {err.strerror or err}") from None

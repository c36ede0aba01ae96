"""Run analyzers over a store and persist their results under ``/analysis/<name>``."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import time
from typing import Callable, Iterable

import xarray as xr
import zarr

import lrscan
from lrscan.analyze import ANALYZERS
from lrscan.analyze.solutions import require_complete
from lrscan.errors import LrscanError
from lrscan.store import open_store


def fingerprint(tree: xr.DataTree, name: str, options: dict) -> str:
    """What a persisted result depends on: the store, the analyzer, its options, lrscan, and the
    persisted results it reads (so it is recomputed when they are)."""
    stored = tree["analysis"].children if "analysis" in tree.children else {}
    # The effective options, defaults included: a changed default makes results stale.
    params = inspect.signature(ANALYZERS[name].func).parameters.values()
    options = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty} | options
    key = {
        "store_created": tree.attrs.get("created"),
        "spec": tree.attrs["spec"],
        "analyzer": name,
        "options": options,
        "lrscan": lrscan.__version__,
        "inputs": {dep: stored[dep].attrs.get("lrscan_fingerprint") for dep in ANALYZERS[name].after if dep in stored},
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def plan_analyzers(tree: xr.DataTree, only: Iterable[str] | None = None) -> list[str]:
    """The analyzers to run, dependencies first; raises on names or stores that cannot work."""
    names = list(only or [])
    for name in names:
        missing = ANALYZERS[name].missing(tree)  # unknown names raise with a suggestion
        if missing:
            raise LrscanError(f"analyzer {name!r} {missing}")
    if not names:
        if "finetune" not in tree.children:
            raise LrscanError("the store has no fine-tuning data (finetune_epochs = 0); the study's analyses compare "
                              "fine-tuned solutions — retrain with finetune_epochs > 0, or pick analyzers with --only")
        names = [n for n in ANALYZERS if ANALYZERS[n].default and ANALYZERS[n].applies(tree)]
    ordered: list[str] = []

    def visit(name: str) -> None:
        if name in ordered:
            return
        for dep in ANALYZERS[name].after:
            if dep in names:
                visit(dep)
        ordered.append(name)

    for name in names:
        visit(name)
    return ordered


def analyze(
    store: str | os.PathLike,
    only: Iterable[str] | None = None,
    *,
    progress: Callable[[str, str, float], None] | None = None,
) -> dict[str, str]:
    """Compute and persist analyzers over a finished store.

    Results already stored for the same store, options and lrscan version are kept as
    they are. Training data is never written: results go to ``/analysis/<name>`` only, and
    each is marked complete (its fingerprint) after its data.

    Parameters
    ----------
    store
        Path of a finished store.
    only
        Analyzer names (default: every analyzer that applies to the store, except the
        expensive extras registered with ``default=False``, such as ``sharpness``).
    progress
        Called as ``progress(name, status, seconds)`` with status "computed" or "up to date".

    Returns
    -------
    dict
        Status of each analyzer run.
    """
    tree = open_store(store)
    require_complete(tree)
    status = {}
    for name in plan_analyzers(tree, only):
        start = time.perf_counter()
        key = fingerprint(tree, name, {})
        stored = tree["analysis"].children if "analysis" in tree.children else {}
        if name in stored and stored[name].attrs.get("lrscan_fingerprint") == key:
            status[name] = "up to date"
        else:
            result = ANALYZERS[name](tree)
            result.attrs = {**result.attrs, "lrscan_analyzer": name}
            persist(store, name, result, key)
            tree = open_store(store)  # later analyzers may read this result
            status[name] = "computed"
        if progress is not None:
            progress(name, status[name], time.perf_counter() - start)
    return status


def persist(store: str | os.PathLike, name: str, result: xr.Dataset, key: str) -> None:
    """Write ``result`` under ``/analysis/<name>``, then its fingerprint ``key``.

    The fingerprint goes last: a result cut short by a crash has none, so it is redone (and
    not drawn).
    """
    group = f"analysis/{name}"
    _uniform_chunks(result).to_zarr(str(store), group=group, mode="w", consolidated=False, zarr_format=3)
    zarr.open_group(str(store), path=group, mode="r+").attrs["lrscan_fingerprint"] = key


def _uniform_chunks(result: xr.Dataset) -> xr.Dataset:
    """The result with each dask variable's chunks made regular, as zarr needs (a result
    concatenated from parts, like ``group_norms``, has ragged ones)."""
    ragged = {}
    for name, var in result.data_vars.items():
        if var.chunks is not None and any(len(set(c[:-1])) > 1 or (len(c) > 1 and c[-1] > c[0]) for c in var.chunks):
            ragged[name] = var.chunk({d: max(c) for d, c in zip(var.dims, var.chunks)})
    return result.assign(ragged) if ragged else result

"""What a store holds now, as plain data for ``lrscan info``: runs done and diverged, analyses
and whether they are up to date, the regimes found, batches in progress. Reads zarr only."""

from __future__ import annotations

import os

import numpy as np
import xarray as xr
import zarr

from lrscan.store.claims import claims_in_progress
from lrscan.store.digest import runs_digest
from lrscan.store.reading import RUN_DIMS, _root_attrs
from lrscan.version import __version__ as lrscan_version


def store_status(path: str | os.PathLike, tree: xr.DataTree | None = None) -> dict:
    """A store's state: ``stages`` (done, total, diverged per stage), ``diverged`` (each
    diverged run's coordinates and epoch), ``analyses`` (per stored result: ``status`` "up to
    date", "stale" with ``why``, or "incomplete"), ``regimes`` (per PLR, when analysed),
    ``boundaries``, ``in_progress`` (live claims of batches being trained) and ``status``
    ("complete", "training" or "incomplete")."""
    attrs = _root_attrs(path)
    tree = _analyses(path) if tree is None else tree
    stages, diverged = stage_runs(path)
    in_progress = claims_in_progress(path)
    complete = all(s["done"] == s["total"] for s in stages.values())
    return {
        "store": str(path),
        "created": attrs.get("created"),
        "lrscan_version": attrs.get("lrscan_version"),
        "stages": stages,
        "diverged": diverged,
        "analyses": analyses_status(tree, path),
        "best": best_found(tree),
        **regimes_found(tree),
        "in_progress": in_progress,
        "status": "complete" if complete else "training" if in_progress else "incomplete",
    }


def stage_runs(path: str | os.PathLike) -> tuple[dict[str, dict[str, int]], list[dict]]:
    """Per stage the store has, its runs ``done``, ``total`` and ``diverged``; and each diverged
    run's coordinates, stage and epoch. Read straight through zarr."""
    root = zarr.open_group(str(path), mode="r")
    stages, diverged = {}, []
    for stage in ("pretrain", "swa", "finetune"):  # the order they are trained in
        dims = RUN_DIMS[stage]
        if f"{stage}/metrics" not in root:
            continue
        group = root[f"{stage}/metrics"]
        done = group["done"][...].astype(bool)
        epochs = group["diverged_epoch"][...] if "diverged_epoch" in group else np.full(done.shape, np.nan)
        coords = {d: group[d][...] for d in dims}
        for index in zip(*np.nonzero(np.isfinite(epochs))):
            diverged.append({"stage": stage, **{d: float(coords[d][i]) for d, i in zip(dims, index)},
                             "epoch": float(epochs[index])})
        stages[stage] = {"done": int(done.sum()), "total": int(done.size),
                         "diverged": int(np.isfinite(epochs).sum())}
    return stages, diverged


def _analyses(path: str | os.PathLike) -> xr.DataTree:
    """The store's ``/analysis`` group, lazily, as the one child of an otherwise empty tree: what
    the status reads, without opening every training group (1.5 s on the default store). The
    store is checked already (:func:`store_status` read its root attributes)."""
    if "analysis" not in zarr.open_group(str(path), mode="r"):
        return xr.DataTree()
    node = xr.open_datatree(str(path), group="analysis", engine="zarr", chunks={}, consolidated=False)
    return xr.DataTree(children={"analysis": node})


def analyses_status(tree: xr.DataTree, path: str | os.PathLike | None = None) -> dict[str, dict]:
    """Each stored analysis: "up to date" when the runs it read, and lrscan, are as when it was
    computed; "stale" (with why) otherwise; "incomplete" when cut short before its fingerprint."""
    if "analysis" not in tree.children:
        return {}
    digests: dict[tuple, str] = {}

    def digest(needs) -> str:
        key = tuple(sorted(needs))
        if key not in digests:
            digests[key] = runs_digest(tree if path is None else path, key)
        return digests[key]

    inputs = tree["analysis"].attrs.get("lrscan_inputs", {})
    out = {}
    for name, node in sorted(tree["analysis"].children.items()):
        a = {**node.attrs, **{f"lrscan_{k}": v for k, v in inputs.get(name, {}).items()}}
        if "lrscan_fingerprint" not in a:
            out[name] = {"status": "incomplete", "why": "its computation was cut short; rerun lrscan analyze"}
        elif "lrscan_runs" not in a:
            out[name] = {"status": "up to date" if name in ("scan", "threshold") else "unknown",
                         "why": "" if name in ("scan", "threshold") else "computed by an lrscan that did not record "
                         "its inputs; rerun lrscan analyze to be sure"}
        elif a["lrscan_runs"] != digest(a.get("lrscan_needs", ("pretrain", "swa", "finetune"))):
            out[name] = {"status": "stale", "why": "runs were redone or repaired since; rerun lrscan analyze"}
        elif a.get("lrscan_version") != lrscan_version:
            out[name] = {"status": "stale", "why": f"computed by lrscan {a.get('lrscan_version')}; rerun lrscan analyze"}
        else:
            out[name] = {"status": "up to date", "why": ""}
    return out


def regimes_found(tree: xr.DataTree) -> dict:
    """The stored regime of each PLR (the seeds' most common one) and the boundary PLRs, when
    ``/analysis/regimes`` is stored; empty otherwise."""
    if "analysis" not in tree.children or "regimes" not in tree["analysis"].children:
        return {}
    ds = tree["analysis/regimes"].to_dataset()
    out = {}
    if "regime_mode" in ds:
        out["regimes"] = {f"{p:.3g}": str(r) for p, r in zip(ds.plr.values, ds["regime_mode"].values)}
    if "boundary_fit" in ds:
        out["boundaries"] = {str(b): {"plr": float(f), "low": float(lo), "high": float(hi)}
                             for b, f, lo, hi in zip(ds.boundary.values, ds["boundary_fit"].values,
                                                     ds["boundary_low"].values, ds["boundary_high"].values)}
    return out


def best_found(tree: xr.DataTree) -> dict | None:
    """The best PLR ``lrscan analyze`` recorded (:func:`lrscan.analyze.best.best` of its
    metrics), while the metrics it was judged from are the stored ones; None otherwise."""
    if "analysis" not in tree.children:
        return None
    best = tree["analysis"].attrs.get("lrscan_best")
    metrics = tree["analysis"].children.get("metrics")
    if not best or metrics is None or metrics.attrs.get("lrscan_fingerprint") != best.get("metrics_fingerprint"):
        return None
    return {kind: found for kind, found in best.items() if kind != "metrics_fingerprint"}

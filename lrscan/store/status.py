"""What a store holds now, as plain data for ``lrscan info``: runs done and diverged, analyses
and whether they are up to date, the regimes found, batches in progress. Reads the store's
files directly (:mod:`lrscan.store.arrays`, without zarr), each thing once: the root attributes,
the runs' bookkeeping (one pass), ``/analysis``'s attributes and the regime map's few arrays."""

from __future__ import annotations

import os
from typing import Mapping

import numpy as np

from lrscan.store.arrays import has_array, read_array, read_flags
from lrscan.store.claims import claims_in_progress
from lrscan.store.digest import flags_digest
from lrscan.store.reading import RUN_DIMS, _fs, _root_attrs, attributes
from lrscan.version import __version__ as lrscan_version


def store_status(path: str | os.PathLike, attrs: Mapping | None = None) -> dict:
    """A store's state: ``stages`` (done, total, diverged per stage), ``diverged`` (each
    diverged run's coordinates and epoch), ``analyses`` (per stored result: ``status`` "up to
    date", "stale" with ``why``, or "incomplete"), ``regimes`` (per PLR, when analysed),
    ``boundaries``, ``in_progress`` (live claims of batches being trained) and ``status``
    ("complete", "training" or "incomplete"). ``attrs`` are the root attributes when the
    caller has read them (which checks the store); otherwise they are read here."""
    attrs = _root_attrs(path) if attrs is None else attrs
    flags = read_flags(path)
    stages, diverged = stage_runs(flags)
    analysis = _Analysis(path) if has_array(path, "analysis") else None
    in_progress = claims_in_progress(path)
    complete = all(s["done"] == s["total"] for s in stages.values())
    return {
        "store": str(path),
        "created": attrs.get("created"),
        "lrscan_version": attrs.get("lrscan_version"),
        "stages": stages,
        "diverged": diverged,
        "analyses": analyses_status(analysis, lambda needs: flags_digest(flags, attrs.get("repairs", 0), needs)),
        "best": best_found(analysis),
        **regimes_found(analysis),
        "in_progress": in_progress,
        "status": "complete" if complete else "training" if in_progress else "incomplete",
    }


def stage_runs(flags: Mapping[str, Mapping[str, np.ndarray]]) -> tuple[dict[str, dict[str, int]], list[dict]]:
    """Per stage of ``flags`` (:func:`~lrscan.store.arrays.read_flags`), its runs ``done``,
    ``total`` and ``diverged``; and each diverged run's coordinates, stage and epoch."""
    stages, diverged = {}, []
    for stage, arrays in flags.items():
        dims = RUN_DIMS[stage]
        done = arrays["done"].astype(bool)
        epochs = arrays.get("diverged_epoch", np.full(done.shape, np.nan))
        for index in zip(*np.nonzero(np.isfinite(epochs))):
            diverged.append({"stage": stage, **{d: float(arrays[d][i]) for d, i in zip(dims, index)},
                             "epoch": float(epochs[index])})
        stages[stage] = {"done": int(done.sum()), "total": int(done.size),
                         "diverged": int(np.isfinite(epochs).sum())}
    return stages, diverged


class _Analysis:
    """The ``/analysis`` group of a store as the status reads it: its attributes, its results'
    attributes, and whole arrays of a result (all from the files, without zarr)."""

    def __init__(self, path: str | os.PathLike):
        self.path = path
        self.attrs = attributes(path, "analysis")
        fs, root = _fs(path)
        names = sorted(entry["name"].rstrip("/").rsplit("/", 1)[-1] for entry in fs.ls(f"{root}/analysis", detail=True)
                       if entry["type"] == "directory")
        self.results = {name: attributes(path, f"analysis/{name}") for name in names
                        if has_array(path, f"analysis/{name}")}

    def has(self, result: str, array: str) -> bool:
        return result in self.results and has_array(self.path, f"analysis/{result}/{array}")

    def read(self, result: str, array: str) -> np.ndarray:
        return read_array(self.path, f"analysis/{result}/{array}")


def analyses_status(analysis: _Analysis | None, digest) -> dict[str, dict]:
    """Each stored analysis of the ``/analysis`` group: "up to date" when the runs it read, and
    lrscan, are as when it was computed; "stale" (with why) otherwise; "incomplete" when cut
    short before its fingerprint. ``digest(needs)`` is the runs' digest of those stages now."""
    if analysis is None:
        return {}
    digests: dict[tuple, str] = {}

    def current(needs: tuple) -> str:  # one digest per set of stages
        if needs not in digests:
            digests[needs] = digest(needs)
        return digests[needs]

    inputs = analysis.attrs.get("lrscan_inputs", {})
    out = {}
    for name, attrs in analysis.results.items():
        a = {**attrs, **{f"lrscan_{k}": v for k, v in inputs.get(name, {}).items()}}
        needs = tuple(sorted(a.get("lrscan_needs", ("pretrain", "swa", "finetune"))))
        if "lrscan_fingerprint" not in a:
            out[name] = {"status": "incomplete", "why": "its computation was cut short; rerun lrscan analyze"}
        elif "lrscan_runs" not in a:
            out[name] = {"status": "up to date" if name in ("scan", "threshold") else "unknown",
                         "why": "" if name in ("scan", "threshold") else "computed by an lrscan that did not record "
                         "its inputs; rerun lrscan analyze to be sure"}
        elif a["lrscan_runs"] != current(needs):
            out[name] = {"status": "stale", "why": "runs were redone or repaired since; rerun lrscan analyze"}
        elif a.get("lrscan_version") != lrscan_version:
            out[name] = {"status": "stale", "why": f"computed by lrscan {a.get('lrscan_version')}; rerun lrscan analyze"}
        else:
            out[name] = {"status": "up to date", "why": ""}
    return out


def regimes_found(analysis: _Analysis | None) -> dict:
    """The stored regime of each PLR (the seeds' most common one) and the boundary PLRs, when
    ``/analysis/regimes`` is stored; empty otherwise."""
    if analysis is None or "regimes" not in analysis.results:
        return {}
    out = {}
    if analysis.has("regimes", "regime_mode"):
        out["regimes"] = {f"{p:.3g}": str(r) for p, r in zip(analysis.read("regimes", "plr"),
                                                             analysis.read("regimes", "regime_mode"))}
    if analysis.has("regimes", "boundary_fit"):
        columns = [analysis.read("regimes", name) for name in ("boundary", "boundary_fit", "boundary_low", "boundary_high")]
        out["boundaries"] = {str(b): {"plr": float(f), "low": float(lo), "high": float(hi)} for b, f, lo, hi in zip(*columns)}
    return out


def best_found(analysis: _Analysis | None) -> dict | None:
    """The best PLR ``lrscan analyze`` recorded (:func:`lrscan.analyze.best.best` of its
    metrics), while the metrics it was judged from are the stored ones; None otherwise."""
    if analysis is None:
        return None
    best = analysis.attrs.get("lrscan_best")
    metrics = analysis.results.get("metrics")
    if not best or metrics is None or metrics.get("lrscan_fingerprint") != best.get("metrics_fingerprint"):
        return None
    return {kind: found for kind, found in best.items() if kind != "metrics_fingerprint"}

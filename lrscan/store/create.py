"""Making a store: its skeleton of pre-allocated arrays, created atomically, or checked against a spec."""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import dask.array as da
import numpy as np
import xarray as xr
import zarr

from lrscan.errors import LrscanError
from lrscan.spec import Spec
from lrscan.store.reading import RUN_DIMS, SCHEMA_VERSION, SWA_METRICS, _fs, is_local, read_spec
from lrscan.units import label
from lrscan.version import __version__ as lrscan_version

if TYPE_CHECKING:
    from lrscan.train.flat import Layer
    from lrscan.train.plan import Plan


def store_path(path: str | os.PathLike) -> str:
    """A store location as given, checked: not empty, and a local one without ``..`` segments
    resolved lexically (so that ``a/missing/../s.zarr`` does not create ``a/missing``)."""
    text = str(path)
    if not text.strip():
        raise LrscanError("the store path is empty; give --store PATH, or leave --store out for the default store")
    if "://" in text:
        return text
    return os.path.normpath(text)


def check_store(path: str | os.PathLike, spec: Spec) -> bool:
    """Whether a store exists at ``path`` made from ``spec``; False when there is none yet.

    Refuses (LrscanError, the store left untouched) a file, a folder that is not a store, a
    damaged store, and a store made from another spec, naming the fields that differ.
    """
    fs, root = _fs(path)
    if not fs.exists(root):
        return False
    if fs.isfile(root):
        raise LrscanError(f"store path {path} is a file, not a directory")
    if not fs.ls(root):
        return False
    diff = read_spec(path).differences(spec)
    if diff:
        raise LrscanError(
            f"{path} was made from a different spec ({', '.join(diff)} differ); "
            "use another --store, or delete this one to start over"
        )
    return True


def create_or_check(path: str | os.PathLike, plan: "Plan", layers: Sequence["Layer"]) -> bool:
    """Make the store for a plan, or check that an existing one was made from the same spec.

    Returns True when a new store was created.  An existing store made from another spec is
    refused with an error naming the fields that differ, and is left untouched.  A crash
    never leaves a half-made store behind: a local store is built beside its place and
    renamed into it (so concurrent creators agree on one), and what a failed or killed
    creation left there is removed; on other filesystems the root's attributes, which mark
    it as an lrscan store, are written last.
    """
    if check_store(path, plan.spec):
        return False
    if not is_local(path):
        try:
            _write_skeleton(str(path), plan, layers)
        except OSError as err:
            raise LrscanError(f"cannot write the store at {path}: {err.strerror or err}") from None
        return True
    path = Path(store_path(_fs(path)[1]))
    tmp = path.parent / f".{path.name}.creating-{os.getpid()}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_dead_creations(path)
        shutil.rmtree(tmp, ignore_errors=True)
        _write_skeleton(str(tmp), plan, layers)
        if path.exists() and not any(path.iterdir()):
            path.rmdir()  # an empty directory the user made for us
        tmp.rename(path)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if path.is_dir() and (path / "zarr.json").exists():
            return create_or_check(path, plan, layers)  # another process made it first
        raise LrscanError(f"cannot write the store at {path}: {err.strerror or err}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # any other failure (or Ctrl-C) leaves nothing either
        raise
    return True


def _remove_dead_creations(path: Path) -> None:
    """Remove the half-made skeletons of creators that were killed (their process is gone)."""
    from lrscan.store.claims import _alive

    for leftover in path.parent.glob(f".{path.name}.creating-*"):
        pid = leftover.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)


def _write_skeleton(path: str, plan: "Plan", layers: Sequence["Layer"]) -> None:
    """Pre-allocate every group of a store; each variable carries its ``units`` and ``long_name``
    (:func:`lrscan.units.label`), so that the trainer's stores and the importer's are alike."""
    import torch

    from lrscan.train.loop import METRICS

    spec = plan.spec
    root = zarr.open_group(path, mode="w-", zarr_format=3)
    attrs = {
        "lrscan_schema": SCHEMA_VERSION,
        "lrscan_version": lrscan_version,
        "torch_version": torch.__version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        # Names this store apart from any other made at the same path (snapshots are bound to it).
        "store_id": uuid.uuid4().hex,
        "steps_per_epoch": plan.steps_per_epoch,
        "spec": json.loads(json.dumps(spec.to_dict())),
    }
    n_params = layers[-1].stop
    table = xr.Dataset(
        {
            "start": ("layer", np.array([l.start for l in layers], dtype=np.int64)),
            "stop": ("layer", np.array([l.stop for l in layers], dtype=np.int64)),
            "shape": ("layer", np.array([",".join(map(str, l.shape)) for l in layers], dtype=object)),
            "si": ("layer", np.array([l.si for l in layers])),
            "trainable": ("layer", np.array([l.trainable for l in layers])),
            "buffer": ("layer", np.array([l.buffer for l in layers])),
        },
        coords={"layer": np.array([l.name for l in layers], dtype=object)},
        attrs={"description": "layout of the flat parameter vector (dim param) of every weights array"},
    )
    label(table).to_zarr(str(path), group="layers", mode="w", consolidated=False, zarr_format=3)

    seeds = {
        "seed": ("seed", np.array([r.seed for r in plan.runs])),
        "train_seed": ("seed", np.array([r.train_seed for r in plan.runs])),
        "data_seed": ("seed", np.array([r.data_seed for r in plan.runs])),
    }
    run_coords = {"plr": ("plr", np.array(spec.plr)), "flr": ("flr", np.array(spec.flr)), **seeds}
    stages = {"pretrain": plan.pretrain}
    if plan.finetune.n_steps > 0:
        stages["finetune"] = plan.finetune
    for name, stage in stages.items():
        dims = RUN_DIMS[name]
        time = {
            "epoch": ("epoch", plan.epochs(stage.log_steps)),
            "step": ("epoch", stage.log_steps),
        }
        _allocate(path, f"{name}/metrics", dims, run_coords, time, METRICS, np.float32, diverged=True)
        time = {"epoch": ("epoch", plan.epochs(stage.checkpoint_steps)), "step": ("epoch", stage.checkpoint_steps)}
        _allocate_weights(path, f"{name}/weights", dims, run_coords, time, n_params)
    zarr.open_group(path, path="pretrain", mode="r+").attrs["stages"] = plan.pretrain_stages
    if plan.swa_steps:
        ks = {"swa": ("swa", np.array(sorted(plan.swa_steps)))}
        _allocate(path, "swa/metrics", RUN_DIMS["swa"], run_coords, ks, SWA_METRICS, np.float32, diverged=False)
        _allocate_weights(path, "swa/weights", RUN_DIMS["swa"], run_coords, ks, n_params)
    # Last: these attributes are what makes the directory an lrscan store.
    root.attrs.update(attrs)


def _coords(dims, run_coords, extra) -> dict:
    coords = {k: v for k, v in run_coords.items() if v[0] in dims}
    return {**coords, **extra}


def _allocate(path, group, dims, run_coords, time, names, dtype, *, diverged: bool) -> None:
    (time_dim,) = {v[0] for v in time.values()}
    shape = tuple(len(run_coords[d][1]) for d in dims) + (len(next(iter(time.values()))[1]),)
    chunks = (1,) * len(dims) + (shape[-1],)
    data = {name: (dims + (time_dim,), da.full(shape, np.nan, dtype=dtype, chunks=chunks)) for name in names}
    encoding = {name: {"_FillValue": np.nan} for name in names}
    run_shape, run_chunks = shape[:-1], (1,) * len(dims)
    data["done"] = (dims, da.zeros(run_shape, dtype=np.uint8, chunks=run_chunks))
    data["checksum"] = (dims, da.zeros(run_shape, dtype=np.int64, chunks=run_chunks))
    if diverged:
        data["diverged_epoch"] = (dims, da.full(run_shape, np.nan, dtype=np.float64, chunks=run_chunks))
        encoding["diverged_epoch"] = {"_FillValue": np.nan}
    ds = label(xr.Dataset(data, coords=_coords(dims, run_coords, time)))
    ds.to_zarr(str(path), group=group, mode="w", compute=False, consolidated=False, zarr_format=3, encoding=encoding)


# Weight chunks hold about this many bytes when a run keeps more than that.
WEIGHT_CHUNK_BYTES = 8 << 20


def weight_chunk_rows(n_rows: int, n_params: int) -> int:
    """Checkpoints per chunk of a run's weights: about WEIGHT_CHUNK_BYTES, at least one."""
    return max(1, min(n_rows, WEIGHT_CHUNK_BYTES // (4 * n_params)))


def _allocate_weights(path, group, dims, run_coords, time, n_params: int) -> None:
    (time_dim,) = {v[0] for v in time.values()}
    n_time = len(next(iter(time.values()))[1])
    shape = tuple(len(run_coords[d][1]) for d in dims) + (n_time, n_params)
    chunks = (1,) * len(dims) + (weight_chunk_rows(n_time, n_params), n_params)
    ds = label(xr.Dataset(
        {"weights": (dims + (time_dim, "param"), da.full(shape, np.nan, dtype=np.float32, chunks=chunks))},
        coords=_coords(dims, run_coords, {**time, "param": ("param", np.arange(n_params))}),
    ))
    ds.to_zarr(
        str(path), group=group, mode="w", compute=False, consolidated=False, zarr_format=3,
        encoding={"weights": {"_FillValue": np.nan}},
    )

"""Reading a store's metadata through fsspec alone: where it lives, its root attributes and
spec, and damage that makes it unreadable. (Opening it as an xarray DataTree is
:mod:`lrscan.store.opening`; its small arrays, :mod:`lrscan.store.arrays`.)"""

from __future__ import annotations

import json
import os

import fsspec

from lrscan.errors import LrscanError
from lrscan.spec import Spec

# Adding a metric variable keeps the schema: readers look variables up by name, and a store
# made before one existed is finished without it (StoreWriter writes the metrics it has).
SCHEMA_VERSION = 1
RUN_DIMS = {"pretrain": ("plr", "seed"), "finetune": ("plr", "flr", "seed"), "swa": ("plr", "seed")}
SWA_METRICS = ("train_loss", "train_acc", "test_loss", "test_acc", "weight_norm")


class StoreDamaged(LrscanError):
    """A store whose zarr metadata is missing or unreadable (``verify`` exits 1 on it, the
    other commands 2)."""


def _fs(store: str | os.PathLike) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem of a store location (a local path or any fsspec URL) and its root there."""
    return fsspec.core.url_to_fs(str(store))


def local_root(store: str | os.PathLike) -> str | None:
    """The store's root folder when it lives on the local filesystem, else None."""
    fs, root = _fs(store)
    protocol = fs.protocol
    return root if "file" in (protocol if isinstance(protocol, tuple) else (protocol,)) else None


def is_local(store: str | os.PathLike) -> bool:
    """Whether a store lives on the local filesystem (where files can be created exclusively)."""
    return local_root(store) is not None


# Each run's bookkeeping in its stage's metrics: small arrays chunked one run per chunk, so
# that concurrent writers never share a chunk.
RUN_FLAGS = ("done", "checksum", "diverged_epoch")


def read_spec(path: str | os.PathLike) -> Spec:
    """The resolved spec a store was made from."""
    return Spec.from_dict(_root_attrs(path)["spec"])


def attributes(path: str | os.PathLike, group: str = "") -> dict:
    """The attributes of a group of a store (its root by default), read from its ``zarr.json``."""
    fs, root = _fs(path)
    return _metadata(fs, f"{root}/{group}/zarr.json" if group else f"{root}/zarr.json", path).get("attributes", {})


def _root_attrs(path: str | os.PathLike) -> dict:
    _require_store(path)
    attrs = attributes(path)
    schema = attrs.get("lrscan_schema")
    if schema != SCHEMA_VERSION:
        raise LrscanError(
            f"{path} has store schema {schema!r}; this lrscan reads schema {SCHEMA_VERSION}"
        )
    return attrs


def _require_store(path: str | os.PathLike) -> None:
    fs, root = _fs(path)
    if not fs.exists(root):
        raise LrscanError(f"no store at {path}; run `lrscan train --store {path}` first")
    if not fs.isdir(root):
        raise LrscanError(f"{path} is not an lrscan store (no zarr.json)")
    if not fs.exists(f"{root}/zarr.json"):
        if fs.exists(f"{root}/pretrain/metrics"):  # the rest of a store is there: its root was lost
            raise StoreDamaged(f"{path} is damaged: zarr.json (the store's root, with its spec) is missing")
        raise LrscanError(f"{path} is not an lrscan store (no zarr.json)")
    meta = _metadata(fs, f"{root}/zarr.json", path)
    if "lrscan_schema" not in meta.get("attributes", {}):
        raise LrscanError(f"{path} is a zarr store but not an lrscan store (no lrscan_schema attribute)")
    problem = damage(path)
    if problem:
        raise StoreDamaged(problem)


def _metadata(fs, name: str, path) -> dict:
    """One parsed zarr.json, or StoreDamaged naming it."""
    try:
        meta = json.loads(fs.cat_file(name))
    except (ValueError, UnicodeDecodeError):
        raise StoreDamaged(f"{path} is damaged: {_relative(name, fs, path)} is not valid JSON (truncated?)") from None
    if not isinstance(meta, dict) or meta.get("node_type") not in ("group", "array"):
        raise StoreDamaged(f"{path} is damaged: {_relative(name, fs, path)} is not zarr metadata")
    return meta


def _relative(name: str, fs, path) -> str:
    return name[len(_fs(path)[1]):].lstrip("/") or "zarr.json"


def damage(path: str | os.PathLike) -> str | None:
    """A one-line description of the first damage to a store's zarr metadata, or None.

    Every group and array down to the stages' variables needs a readable ``zarr.json`` (zarr
    would read a group without one as absent, and its runs as never written), and every
    stage the spec makes must be there. Chunks are not read: :func:`verify` does that.
    """
    fs, root = _fs(path)
    meta = _metadata(fs, f"{root}/zarr.json", path)
    spec = meta.get("attributes", {}).get("spec", {}).get("sweep", {})
    expected = ["layers", "pretrain/metrics", "pretrain/weights"]
    if spec.get("finetune_epochs"):
        expected += ["finetune/metrics", "finetune/weights"]
    if spec.get("swa"):
        expected += ["swa/metrics", "swa/weights"]
    for group in expected:
        if not fs.exists(f"{root}/{group}"):
            return f"{path} is damaged: group /{group} is missing"
    pending = [(root, 0)]
    while pending:
        folder, depth = pending.pop()
        for entry in fs.ls(folder, detail=True):
            name = entry["name"].rstrip("/")
            if entry["type"] != "directory" or name.rsplit("/", 1)[-1].startswith("."):
                continue
            if not fs.exists(f"{name}/zarr.json"):
                return f"{path} is damaged: {_relative(name, fs, path)}/zarr.json is missing"
            node = _metadata(fs, f"{name}/zarr.json", path)
            if node["node_type"] == "group" and depth < 3:
                pending.append((name, depth + 1))
    return None

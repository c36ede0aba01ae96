"""Small arrays of a store read whole, without zarr's per-chunk cost: each stage's run
bookkeeping (``done``, ``checksum``, ``diverged_epoch``, :data:`~lrscan.store.reading.RUN_FLAGS`,
with its run coordinates) and the few arrays ``lrscan info`` shows.

The bookkeeping has one chunk per run, so that concurrent writers never share one, and zarr
decodes each chunk through its asynchronous pipeline at ~0.5 ms a chunk: 0.7 s for the 1,380
of the default store, and zarr itself takes 0.3 s to import — most of ``lrscan info``'s second.
Arrays of a local store in the encodings lrscan writes them in (raw little-endian numbers, or
UTF-8 strings, then zstd; a regular chunk grid) are read here file by file instead, ~25 µs a
chunk, to the same values; any other array, or a store behind an fsspec URL, through zarr.
"""

from __future__ import annotations

import itertools
import json
import os

import numpy as np

from lrscan.store.reading import RUN_DIMS, RUN_FLAGS, _fs, local_root

STAGES = ("pretrain", "swa", "finetune")  # the order they are trained in


def read_flags(path: str | os.PathLike) -> dict[str, dict[str, np.ndarray]]:
    """Per stage the store has (in training order), its :data:`RUN_FLAGS` that exist and its
    run coordinates (``plr``, ``seed``, and ``flr`` for fine-tuning), as numpy arrays."""
    out = {}
    for stage in STAGES:
        group = f"{stage}/metrics"
        names = [n for n in (*RUN_FLAGS, *RUN_DIMS[stage]) if has_array(path, f"{group}/{n}")]
        if "done" in names:
            out[stage] = {name: read_array(path, f"{group}/{name}") for name in names}
    return out


def has_array(path: str | os.PathLike, name: str) -> bool:
    """Whether the store at ``path`` has an array (or group) at ``name``."""
    root = local_root(path)
    if root is not None:
        return os.path.isfile(os.path.join(root, name, "zarr.json"))
    fs, root = _fs(path)
    return fs.exists(f"{root}/{name}/zarr.json")


def array_names(path: str | os.PathLike, group: str) -> list[str]:
    """The names of the arrays in a group of the store at ``path``."""
    root = local_root(path)
    if root is None:
        import zarr

        return sorted(zarr.open_group(str(path), path=group, mode="r").array_keys())
    folder = os.path.join(root, group)
    names = []
    for name in sorted(os.listdir(folder)):
        try:
            with open(os.path.join(folder, name, "zarr.json"), "rb") as f:
                if json.load(f).get("node_type") == "array":
                    names.append(name)
        except (OSError, ValueError):
            continue  # not a node (a chunk folder, a stray file); damage() reports broken metadata
    return names


def read_array(path: str | os.PathLike, name: str) -> np.ndarray:
    """The whole array at ``name`` of the store at ``path``: zarr's values (strings as an object array)."""
    return open_array(path, name)[...]


def open_array(path: str | os.PathLike, name: str):
    """The array at ``name`` of the store at ``path``, to index with ``[...]`` or with the
    position of one run on its leading axes (``a[i, j]``): a :class:`PlainArray` where it
    applies, zarr's array otherwise (a remote store, an encoding it does not know)."""
    root = local_root(path)
    if root is not None:
        folder = os.path.join(root, name)
        with open(os.path.join(folder, "zarr.json"), "rb") as f:
            meta = json.load(f)
        plain = _plain(meta)
        if plain is not None:
            return PlainArray(folder, meta, *plain)
    import zarr

    return zarr.open_array(str(path), path=name, mode="r")


class PlainArray:
    """A local array in an encoding lrscan writes, read chunk file by chunk file."""

    def __init__(self, folder: str, meta: dict, decode, dtype: np.dtype, chunks: tuple[int, ...]):
        self.folder, self.decode, self.dtype, self.chunks = folder, decode, dtype, chunks
        self.shape = tuple(meta["shape"])
        self.ndim = len(self.shape)
        self.fill = _fill(meta["fill_value"])

    def __getitem__(self, key) -> np.ndarray:
        """``a[...]``, or ``a[i, j, ...]`` with whole numbers for some leading axes."""
        lead = () if key is Ellipsis else key if isinstance(key, tuple) else (key,)
        if not all(isinstance(i, (int, np.integer)) for i in lead) or len(lead) > self.ndim:
            raise TypeError(f"index a plain array with ... or whole numbers for leading axes, not {key!r}")
        lead = tuple(int(i) % s for i, s in zip(lead, self.shape))
        if all(c == 1 for c in self.chunks[: len(lead)]) and self.chunks[len(lead):] == self.shape[len(lead):]:
            return self._one_chunk(lead)  # a run's own chunk: lrscan's layout for run arrays
        region = [slice(i, i + 1) for i in lead] + [slice(0, s) for s in self.shape[len(lead):]]
        out = np.full([r.stop - r.start for r in region], self.fill, self.dtype)
        grid = [range(r.start // c, -(-r.stop // c)) for r, c in zip(region, self.chunks)]
        for index in itertools.product(*grid):
            try:
                with open(os.path.join(self.folder, "c", *map(str, index)), "rb") as f:
                    raw = f.read()
            except FileNotFoundError:
                continue  # never written: the fill value, as zarr reads it
            block = self.decode(raw).reshape(self.chunks)
            spans = [(max(r.start, i * c), min(r.stop, (i + 1) * c)) for r, i, c in zip(region, index, self.chunks)]
            out[tuple(slice(a - r.start, b - r.start) for (a, b), r in zip(spans, region))] = \
                block[tuple(slice(a - i * c, b - i * c) for (a, b), i, c in zip(spans, index, self.chunks))]
        return out[(0,) * len(lead)]

    def _one_chunk(self, index: tuple[int, ...]) -> np.ndarray:
        try:
            key = (*index, *[0] * (self.ndim - len(index)))  # the one chunk along the other axes
            with open(os.path.join(self.folder, "c", *map(str, key)), "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return np.full(self.shape[len(index):], self.fill, self.dtype)
        return self.decode(raw).reshape(self.shape[len(index):])


def _plain(meta: dict):
    """(decode, dtype, chunk shape) of an array in an encoding lrscan writes — ``bytes`` (little
    endian) or ``vlen-utf8``, then ``zstd``; a regular grid; "/"-separated chunk keys — or None."""
    codecs = [c.get("name") for c in meta.get("codecs", [])]
    keys, grid = meta.get("chunk_key_encoding", {}), meta.get("chunk_grid", {})
    if (len(codecs) != 2 or codecs[1] != "zstd" or grid.get("name") != "regular" or keys.get("name") != "default"
            or keys.get("configuration", {}).get("separator", "/") != "/" or meta.get("storage_transformers")):
        return None
    from numcodecs.zstd import Zstd

    zstd = Zstd()
    if codecs[0] == "vlen-utf8" and meta.get("data_type") == "string":
        from numcodecs.vlen import VLenUTF8

        strings = VLenUTF8()
        return (lambda raw: strings.decode(zstd.decode(raw))), np.dtype(object), tuple(grid["configuration"]["chunk_shape"])
    endian = meta["codecs"][0].get("configuration", {}).get("endian", "little")
    if codecs[0] != "bytes" or endian != "little" or meta.get("data_type") not in _NUMBERS:
        return None
    dtype = np.dtype(meta["data_type"])
    return (lambda raw: np.frombuffer(zstd.decode(raw), dtype)), dtype, tuple(grid["configuration"]["chunk_shape"])


_NUMBERS = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float32", "float64")


def _fill(value):
    """A zarr v3 fill value as numpy takes it (floats may be written as "NaN" or "Infinity")."""
    return {"NaN": np.nan, "Infinity": np.inf, "-Infinity": -np.inf}.get(value, value) if isinstance(value, str) else value

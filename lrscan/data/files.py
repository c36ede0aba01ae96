"""Inputs and labels read from a file: the data the runs were trained on (``dataset = "files"``).

Checkpoints trained elsewhere are only comparable with lrscan's evaluation of them when they
are scored on the samples they were trained on; a generator re-run with another random stream
gives other samples. This dataset reads those samples from one file per data seed:

- an ``.npz`` archive (read with ``np.load(allow_pickle=False)``) or a ``.pt`` file (read with
  ``torch.load(weights_only=True)``) holding ``X_train``, ``y_train``, ``X_test``, ``y_test``
  (``x_*`` spelled in lower case is accepted too): the form of the study's ``data_protocol``
  files;
- a ``.pt`` file holding the tuple ``(X_train, X_test, y_train, y_test, views)`` that the
  study's synthetic example saves as ``data.pt`` in its run folder (the ``views`` masks are
  not read).

Neither loader runs code from the file: an object that needs unpickling is refused, and the
message says which. Every array is checked (shapes, dtypes, labels) before any training; the
file's SHA-256 is recorded in the spec (``data.sha256``) so that a store is never analysed
with a file that changed after it was made.

Images (X of shape (N, C, H, W)) may be normalised per channel (``data.normalise``), from
pixels in [0, 1] or ``uint8`` pixels (always read as value / 255).
"""

from __future__ import annotations

import functools
import hashlib
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor

from lrscan.data.entry import Data, DatasetEntry
from lrscan.errors import LrscanError
from lrscan.options import choice, integer, seeds_list, string

__all__ = ["DEFAULTS", "ENTRY", "KEYS", "NORMALISE", "read"]

KEYS = ("X_train", "y_train", "X_test", "y_test")
# The order of the tuple the study's synthetic example saves (its data.pt): not KEYS's order.
STUDY_TUPLE = ("X_train", "X_test", "y_train", "y_test")
SUFFIXES = (".npz", ".pt")
NORMALISE = ("none", "cifar10", "train")
# Where data.path names one file per data seed.
PLACEHOLDER = "{data_seed}"

DEFAULTS = {
    "path": "",
    "seeds": 1,
    "normalise": "none",
    "n_classes": 0,
    "sha256": [],
}


@dataclass(frozen=True)
class Contents:
    """The checked arrays of one data file and its digest."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    n_classes: int
    sha256: str


def file_of(path: str, data_seed: int) -> str:
    """The file of one data seed: ``path`` with ``{data_seed}`` replaced by the seed."""
    return path.replace(PLACEHOLDER, str(data_seed))


def _digest(file: str) -> str:
    h = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read(file: str, n_classes: int = 0) -> Contents:
    """Read and check one data file.

    Parameters
    ----------
    file
        An ``.npz`` or ``.pt`` file (see the module docstring for what it must hold).
    n_classes
        The number of classes; 0 infers it as the largest label + 1.

    Returns
    -------
    Contents
        Inputs as stored (``uint8`` converted to float32 pixels in [0, 1], other numbers to
        float32), int64 labels, the number of classes, the file's SHA-256.

    Raises
    ------
    LrscanError
        One line naming the file and what is wrong with it.
    """
    path = Path(file)
    if path.suffix not in SUFFIXES:
        raise LrscanError(f"data file {file}: unsupported type {path.suffix or '(no suffix)'!r}; "
                          f"give an {' or '.join(SUFFIXES)} file")
    try:
        stat = path.stat()
    except OSError as err:
        raise LrscanError(f"data file {file} cannot be read: {err.strerror}") from None
    if not path.is_file():
        raise LrscanError(f"data file {file} is not a file")
    # Keyed on size and modification time: a file rewritten in place is read again.
    return _read(str(path), stat.st_size, stat.st_mtime_ns, n_classes)


@functools.lru_cache(maxsize=2)
def _read(file: str, size: int, mtime_ns: int, n_classes: int) -> Contents:
    del size, mtime_ns  # only part of the cache key
    arrays = _load_npz(file) if file.endswith(".npz") else _load_pt(file)
    return _check(arrays, file, n_classes, _digest(file))


def _load_npz(file: str) -> dict[str, Any]:
    try:
        archive = np.load(file, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise LrscanError(f"data file {file} holds a single array, not an .npz archive of {', '.join(KEYS)}")
        with archive:
            return {_key(n): archive[n] for n in archive.files if _key(n) in KEYS}
    except ValueError as err:
        if "allow_pickle" in str(err):
            raise LrscanError(f"data file {file} holds pickled objects, which are not loaded (they could run code); "
                              "save plain numeric arrays") from None
        raise LrscanError(f"data file {file} is not a readable .npz archive: {err}") from None
    except (OSError, zipfile.BadZipFile, EOFError) as err:
        raise LrscanError(f"data file {file} is not a readable .npz archive: {err}") from None


def _load_pt(file: str) -> dict[str, Any]:
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        refused = re.search(r"unsupported global:? GLOBAL ([\w.]+)", str(err), re.IGNORECASE)
        if refused is None:
            raise LrscanError(f"data file {file} is not a readable .pt file (not a torch.save file, or damaged)") \
                from None
        hint = ("numpy arrays: save torch tensors, or an .npz archive" if refused.group(1).startswith("numpy")
                else "save a dict of tensors")
        raise LrscanError(f"data file {file} holds objects that torch's safe loader refuses ({refused.group(1)}); "
                          f"{hint}") from None
    except (RuntimeError, OSError, EOFError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise LrscanError(f"data file {file} is not a readable .pt file: {first}") from None
    if isinstance(obj, Mapping):
        return {k: v for n, v in obj.items() if isinstance(n, str) and (k := _key(n)) in KEYS}
    if isinstance(obj, (tuple, list)) and len(obj) >= len(STUDY_TUPLE):
        return dict(zip(STUDY_TUPLE, obj))
    raise LrscanError(f"data file {file} holds a {type(obj).__name__}; expected a dict with {', '.join(KEYS)} "
                      "or the study's tuple (X_train, X_test, y_train, y_test, views)")


def _key(name: str) -> str:
    """The canonical name of a key: ``x_train`` is read as ``X_train``."""
    return "X" + name[1:] if name in ("x_train", "x_test") else name


def _tensor(value: Any, name: str, file: str) -> Tensor:
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":
            raise LrscanError(f"{name} of data file {file} has dtype {value.dtype}; give numbers")
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, Tensor):
        return value.detach().cpu()
    raise LrscanError(f"{name} of data file {file} is a {type(value).__name__}, not an array")


def _check(arrays: Mapping[str, Any], file: str, n_classes: int, digest: str) -> Contents:
    missing = [k for k in KEYS if k not in arrays]
    if missing:
        found = ", ".join(sorted(arrays)) or "none of them"
        raise LrscanError(f"data file {file} lacks {', '.join(missing)} (it holds {found})")
    t = {k: _tensor(arrays[k], k, file) for k in KEYS}
    for split in ("train", "test"):
        x, y = t[f"X_{split}"], t[f"y_{split}"]
        if x.dim() < 2:
            raise LrscanError(f"X_{split} of data file {file} has shape {tuple(x.shape)}; inputs need a sample axis "
                              "and at least one feature axis (N, ...)")
        if x.shape[0] == 0:
            raise LrscanError(f"X_{split} of data file {file} has no samples")
        if x.dtype == torch.bool or x.is_complex():
            raise LrscanError(f"X_{split} of data file {file} has dtype {x.dtype}; inputs must be real numbers")
        if y.dim() != 1:
            raise LrscanError(f"y_{split} of data file {file} has shape {tuple(y.shape)}; labels must be one class "
                              "index per sample (N,)")
        if len(y) != len(x):
            raise LrscanError(f"y_{split} of data file {file} has {len(y)} labels for {len(x)} inputs")
        if y.dtype == torch.bool or y.is_floating_point() or y.is_complex():
            raise LrscanError(f"y_{split} of data file {file} has dtype {y.dtype}; labels must be integer class "
                              "indices 0 … C-1")
        if y.min() < 0:
            raise LrscanError(f"y_{split} of data file {file} has the negative label {int(y.min())}; labels must be "
                              "class indices 0 … C-1")
        if x.is_floating_point() and not torch.isfinite(x).all():
            bad = int((~torch.isfinite(x)).sum())
            raise LrscanError(f"X_{split} of data file {file} has {bad} non-finite values (NaN or infinity)")
        if x.dim() == 4 and x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
            raise LrscanError(f"X_{split} of data file {file} has shape {tuple(x.shape)}, images with channels last; "
                              "save them as (N, C, H, W)")
    if t["X_train"].shape[1:] != t["X_test"].shape[1:]:
        raise LrscanError(f"X_test of data file {file} has samples of shape {tuple(t['X_test'].shape[1:])}, "
                          f"X_train of shape {tuple(t['X_train'].shape[1:])}")
    largest = int(max(t["y_train"].max(), t["y_test"].max()))
    if n_classes and largest >= n_classes:
        split = "train" if int(t["y_train"].max()) >= n_classes else "test"
        raise LrscanError(f"y_{split} of data file {file} has the label {largest}, outside data.n_classes = "
                          f"{n_classes}")
    classes = n_classes or largest + 1
    if classes < 2:
        raise LrscanError(f"the labels of data file {file} take one class only; a classifier needs at least 2")
    return Contents(_inputs(t["X_train"]), t["y_train"].long(), _inputs(t["X_test"]), t["y_test"].long(),
                    classes, digest)


def _inputs(x: Tensor) -> Tensor:
    # uint8 is how images are stored: pixels 0 … 255, read as [0, 1] as torchvision's ToTensor does.
    return x.float() / 255 if x.dtype == torch.uint8 else x.float()


def _normalization(kind: str, x_train: Tensor, file: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The per-channel (mean, std) of ``data.normalise = kind``."""
    if kind == "cifar10":
        from lrscan.data.images import MEAN, STD

        if x_train.shape[1] != len(MEAN):
            raise LrscanError(f"data.normalise = 'cifar10' needs 3 colour channels; X_train of data file {file} has "
                              f"{x_train.shape[1]}")
        return MEAN, STD
    mean = x_train.mean(dim=(0, 2, 3), dtype=torch.float64)
    std = x_train.double().std(dim=(0, 2, 3))
    if (std == 0).any():
        raise LrscanError(f"data.normalise = 'train': a channel of X_train of data file {file} is constant")
    return tuple(mean.tolist()), tuple(std.tolist())


def _check_normalise(kind: str, contents: Contents, file: str) -> None:
    if kind == "none":
        return
    for split in ("train", "test"):
        x = getattr(contents, f"x_{split}")
        if x.dim() != 4:
            raise LrscanError(f"data.normalise = {kind!r} applies to images (N, C, H, W); X_{split} of data file "
                              f"{file} has shape {tuple(x.shape)}")
        lo, hi = float(x.min()), float(x.max())
        if lo < 0 or hi > 1:
            raise LrscanError(f"X_{split} of data file {file} has values in [{lo:g}, {hi:g}]; data.normalise = "
                              f"{kind!r} reads pixels in [0, 1] (or uint8)")
    _normalization(kind, contents.x_train, file)


def load(options: Mapping[str, Any], data_seed: int) -> Data:
    """The data of one data seed, from its file, checked against the digest the spec recorded."""
    seeds = list(options["seeds"])
    file = file_of(options["path"], data_seed)
    contents = read(file, options["n_classes"])
    recorded = list(options["sha256"])
    if recorded and data_seed in seeds and recorded[seeds.index(data_seed)] != contents.sha256:
        raise LrscanError(f"data file {file} has changed since the spec recorded it (its SHA-256 differs from "
                          "data.sha256); restore it, or make a new store from the new file")
    x_train, x_test, normalization = contents.x_train, contents.x_test, None
    if options["normalise"] != "none":
        normalization = _normalization(options["normalise"], x_train, file)
        mean, std = (torch.tensor(v, dtype=torch.float32)[:, None, None] for v in normalization)
        x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    elif x_train.dim() == 4:
        # Unnormalised images: the inputs are the pixels themselves.
        channels = x_train.shape[1]
        normalization = ((0.0,) * channels, (1.0,) * channels)
    return Data(x_train, contents.y_train, x_test, contents.y_test, n_classes=contents.n_classes,
                normalization=normalization)


def validate(options: dict[str, Any]) -> dict[str, Any]:
    """Check the options and every file they name; record the files' digests (``sha256``).

    The path becomes absolute, so that analyses run from another folder find the file.
    """
    if options["path"] == "":
        raise LrscanError("dataset 'files' needs data.path: the .npz or .pt file holding "
                          f"{', '.join(KEYS)} (or the study's data.pt)")
    path = string("data.path", options["path"])
    options["path"] = path = str(Path(path).expanduser().absolute())
    options["seeds"] = seeds = list(seeds_list("data.seeds", options["seeds"]))
    if PLACEHOLDER not in path and len(seeds) > 1:
        raise LrscanError(f"data.seeds lists {len(seeds)} data seeds but data.path has no {PLACEHOLDER}; "
                          f"name one file per data seed, e.g. runs/seed={PLACEHOLDER}/data.pt")
    options["normalise"] = choice("data.normalise", options["normalise"], NORMALISE)
    options["n_classes"] = integer("data.n_classes", options["n_classes"], minimum=0)
    if options["n_classes"] == 1:
        raise LrscanError("data.n_classes must be 0 (inferred from the labels) or at least 2, got 1")
    recorded = options["sha256"]
    if not isinstance(recorded, (list, tuple)) or not all(isinstance(d, str) for d in recorded) or \
            (recorded and len(recorded) != len(seeds)):
        raise LrscanError(f"data.sha256 must be a list of {len(seeds)} SHA-256 digests (one per data seed), "
                          "or empty to record them")
    shapes, digests = set(), []
    for i, seed in enumerate(seeds):
        file = file_of(path, seed)
        contents = read(file, options["n_classes"])
        if recorded and recorded[i] != contents.sha256:
            raise LrscanError(f"data file {file} is not the file data.sha256 records (its SHA-256 differs); remove "
                              "data.sha256 to use it")
        _check_normalise(options["normalise"], contents, file)
        shapes.add((tuple(contents.x_train.shape[1:]), contents.n_classes))
        digests.append(contents.sha256)
    if len(shapes) > 1:
        raise LrscanError(f"the files of data.path {path} differ in input shape or number of classes between "
                          "data seeds")
    options["sha256"] = digests
    return options


ENTRY = DatasetEntry(load=load, defaults=DEFAULTS, validate=validate)

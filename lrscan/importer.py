"""Import a folder of PyTorch checkpoints into an lrscan store (``lrscan import``).

A *pattern* maps each file's path, relative to the source folder, to a run and an epoch::

    runs/plr={plr}/seed={seed}[/ft={flr}]/checkpoint-{epoch}.pt

Files whose path gives an ``flr`` are fine-tuning checkpoints, the others pre-training ones.
The store's spec is inferred from what the paths say (the PLR and FLR grids, the seeds, the
epochs) plus the model and data options the user gives, so that analyzers can rebuild the
model and its data. Each file is read on its own (memory-mapped where the source is local)
and its state dict is flattened into the run's region of the pre-allocated weights array;
a run's metrics, its checksum and its ``done`` flag follow its last file, exactly as
:class:`lrscan.store.StoreWriter` writes a trained run, so a rerun skips imported runs and
``lrscan verify`` checks them.
"""

from __future__ import annotations

import math
import re
import zipfile
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Callable, Iterable, Mapping, Sequence

import fsspec
import numpy as np
import torch
import zarr

import lrscan
from lrscan.errors import LrscanError
from lrscan.models import official_names
from lrscan.registry import closest
from lrscan.spec import Spec, number, parse_override, resolve
from lrscan.store import canonical_nan, create_or_check, run_checksum
from lrscan.train.engine import Layer, si_norm
from lrscan.train.loop import METRICS
from lrscan.train.sweep import Progress, Setup, Sweep

_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
# What each placeholder of a pattern matches.
PLACEHOLDERS = {"plr": _NUMBER, "flr": _NUMBER, "epoch": _NUMBER, "seed": r"\d+", "data_seed": r"\d+"}
# Keys under which checkpoints commonly nest the model's state dict, looked up in this order.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
ACCURACY_UNITS = ("auto", "fraction", "percent")
FT_EPOCH_ORIGINS = ("branch", "start")
# Spec fields that only the paths can give.
FROM_PATHS = ("plr", "flr", "seeds")


class Pattern:
    """A path pattern: literal text, ``{name}`` placeholders, wildcards and optional parts.

    ``{plr}``, ``{flr}``, ``{epoch}`` match a number (``0.1``, ``1e-3``, ``10``), ``{seed}``
    and ``{data_seed}`` a whole number; ``*`` matches anything within one path segment and
    ``**`` anything across segments; ``[...]`` marks an optional part; a backslash makes
    the next character literal. A placeholder used twice must match the same text twice.

    Parameters
    ----------
    text
        The pattern, with ``/`` between path segments; it must match a whole relative path.
    """

    def __init__(self, text: str):
        self.text = text
        self.names: set[str] = set()
        required: set[str] = set()
        parts, depth, i = [], 0, 0
        while i < len(text):
            c = text[i]
            if c == "\\" and i + 1 < len(text):
                parts.append(re.escape(text[i + 1]))
                i += 2
                continue
            if c == "{":
                end = text.find("}", i)
                if end < 0:
                    raise LrscanError(f"pattern {text!r}: the '{{' at position {i} is never closed")
                name = text[i + 1 : end]
                if name not in PLACEHOLDERS:
                    raise LrscanError(f"pattern {text!r}: unknown placeholder {{{name}}}{closest(name, PLACEHOLDERS)}; "
                                      f"placeholders: {', '.join('{' + p + '}' for p in PLACEHOLDERS)}")
                parts.append(f"(?P={name})" if name in self.names else f"(?P<{name}>{PLACEHOLDERS[name]})")
                self.names.add(name)
                if depth == 0:
                    required.add(name)
                i = end + 1
                continue
            if c == "[":
                parts.append("(?:")
                depth += 1
            elif c == "]":
                if depth == 0:
                    raise LrscanError(f"pattern {text!r}: the ']' at position {i} closes no '['")
                parts.append(")?")
                depth -= 1
            elif text.startswith("**", i):
                parts.append(".*")
                i += 1
            elif c == "*":
                parts.append("[^/]*")
            else:
                parts.append(re.escape(c))
            i += 1
        if depth:
            raise LrscanError(f"pattern {text!r}: a '[' is never closed")
        for name in ("plr", "epoch"):
            if name not in required:
                raise LrscanError(f"pattern {text!r} needs {{{name}}} outside any optional [...] part")
        self.regex = re.compile("".join(parts))

    def match(self, path: str) -> dict[str, str] | None:
        """The placeholders' text in ``path`` (those of optional parts only when present), or None."""
        found = self.regex.fullmatch(path)
        if found is None:
            return None
        return {name: value for name, value in found.groupdict().items() if value is not None}


@dataclass(frozen=True)
class Checkpoint:
    """One matched file and the coordinates its path gives."""

    path: str  # on the source's filesystem
    name: str  # relative to the source
    plr: float
    flr: float | None  # None for pre-training
    seed: int
    data_seed: int | None
    epoch: Fraction  # as the path gives it (fine-tuning: see ``ft_epoch_origin``)

    @property
    def stage(self) -> str:
        return "pretrain" if self.flr is None else "finetune"


@dataclass
class Scan:
    """The files under a source: those a pattern maps to coordinates, and the others."""

    fs: fsspec.AbstractFileSystem
    checkpoints: list[Checkpoint]
    unmatched: list[str]
    data_seed_in_paths: bool


def scan(source: str, patterns: Sequence[str]) -> Scan:
    """Match every file under ``source`` (a folder or fsspec URL) against the patterns.

    Parameters
    ----------
    source
        The folder that holds the checkpoints.
    patterns
        Path patterns (:class:`Pattern`), tried in order; the first that matches a file wins.

    Returns
    -------
    Scan
        The checkpoints, sorted by path, and the paths (relative to ``source``) that match
        no pattern.

    Raises
    ------
    LrscanError
        For a bad pattern, a missing folder, a path value that is no valid coordinate, or
        two files with the same coordinates.
    """
    if not patterns:
        raise LrscanError("give at least one --pattern")
    compiled = [Pattern(p) for p in patterns]
    try:
        fs, root = fsspec.core.url_to_fs(str(source))
    except (ImportError, ValueError) as err:  # an unknown protocol, or its package missing
        raise LrscanError(f"cannot open {source}: {err}") from None
    if not fs.isdir(root):
        raise LrscanError(f"{source} is a file, not a folder of checkpoints" if fs.exists(root)
                          else f"no folder at {source}")
    prefix = root.rstrip("/") + "/"
    checkpoints, unmatched, seen = [], [], {}
    for path in sorted(fs.find(root)):
        name = path[len(prefix):] if path.startswith(prefix) else path
        values = next((v for v in (p.match(name) for p in compiled) if v is not None), None)
        if values is None:
            unmatched.append(name)
            continue
        ckpt = Checkpoint(
            path, name,
            plr=_rate(name, "plr", values["plr"]),
            flr=_rate(name, "flr", values["flr"]) if "flr" in values else None,
            seed=int(values.get("seed", 0)),
            data_seed=int(values["data_seed"]) if "data_seed" in values else None,
            epoch=Fraction(values["epoch"]),
        )
        if ckpt.epoch < 0:
            raise LrscanError(f"{name}: epoch {values['epoch']} is negative")
        key = (ckpt.plr, ckpt.flr, ckpt.seed, ckpt.data_seed, ckpt.epoch)
        if key in seen:
            raise LrscanError(f"{seen[key]} and {name} give the same run and epoch; keep one of them")
        seen[key] = name
        checkpoints.append(ckpt)
    return Scan(fs, checkpoints, unmatched, any("data_seed" in p.names for p in compiled))


def _rate(name: str, kind: str, text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise LrscanError(f"{name}: {kind} = {text} is not a learning rate (positive and finite)")
    return value


def infer_spec(
    checkpoints: Sequence[Checkpoint],
    model: str,
    *,
    dataset: str | None = None,
    overrides: Iterable[str] = (),
    ft_epoch_origin: str = "branch",
    data_seed_in_paths: bool = False,
) -> Spec:
    """The spec of the store that holds these checkpoints.

    The paths give the grids and the schedule: ``plr`` / ``flr`` and ``seeds`` are the
    values found; ``pretrain_epochs`` is the last pre-training epoch, ``finetune_from``
    that epoch too and ``finetune_epochs`` the last fine-tuning epoch after it;
    ``checkpoint_epochs`` are the epochs of the files, and ``log_every`` is their greatest
    common divisor, so that every file's metrics have a row. ``swa`` is empty. The
    overrides give everything else (``batch_size``, ``[model]`` and ``[data]`` options,
    ``swa``) and may replace the inferred schedule fields, but not the grids.

    Parameters
    ----------
    checkpoints
        What :func:`scan` found; at least one pre-training checkpoint.
    model, dataset
        Registry names (the dataset defaults to the spec's default).
    overrides
        ``FIELD=VALUE`` strings as for ``lrscan train --set``.
    ft_epoch_origin
        ``"branch"``: a fine-tuning file's epoch counts from the branch point (0 is the
        branch point itself); ``"start"``: from the start of pre-training, as in the store.
    data_seed_in_paths
        Whether the paths give ``{data_seed}`` (then ``[data] seeds`` are those found).

    Returns
    -------
    Spec
        Resolved and validated.
    """
    if ft_epoch_origin not in FT_EPOCH_ORIGINS:
        raise LrscanError(f"ft_epoch_origin must be one of {', '.join(FT_EPOCH_ORIGINS)}, got {ft_epoch_origin!r}")
    tables: dict[str, dict[str, Any]] = {"sweep": {}, "model": {}, "data": {}}
    for item in overrides:
        table, key, value = parse_override(item)
        if (table == "sweep" and key in FROM_PATHS) or (table, key, data_seed_in_paths) == ("data", "seeds", True):
            raise LrscanError(f"--set {item.partition('=')[0].strip()}: the checkpoints' paths give it; "
                              "import the files you want, or change the pattern")
        if table == "sweep" and key in ("model", "dataset"):
            raise LrscanError(f"--set {key}: give it as --{key}")
        tables[table][key] = value
    sweep = tables["sweep"]
    pt = [c.epoch for c in checkpoints if c.flr is None]
    ft = [c for c in checkpoints if c.flr is not None]
    if not pt:
        raise LrscanError("no pre-training checkpoint (a path without {flr}) matched; a store starts from pre-training")
    pt_end = _epochs(sweep, "pretrain_epochs", max(pt))
    if pt_end == 0:
        raise LrscanError("the pre-training checkpoints reach no epoch after 0; set pretrain_epochs")
    ft_from = _epochs(sweep, "finetune_from", pt_end)
    offsets = [c.epoch - (ft_from if ft_epoch_origin == "start" else 0) for c in ft]
    ft_len = _epochs(sweep, "finetune_epochs", max(offsets, default=Fraction(0)))
    if ft and ft_len <= 0:
        raise LrscanError(f"the fine-tuning checkpoints reach no epoch after the branch point "
                          f"(finetune_from = {float(ft_from):g}); check --ft-epoch-origin")
    steps = [e for e in (*pt, *offsets, pt_end, ft_len) if e > 0]
    sweep.setdefault("log_every", float(_gcd(steps)))
    sweep.setdefault("checkpoint_epochs", sorted({float(e) for e in pt} | {float(ft_from + o) for o in offsets if o > 0}))
    sweep.setdefault("swa", [])
    sweep.update(
        model=model,
        plr=sorted({c.plr for c in checkpoints}),
        seeds=sorted({c.seed for c in checkpoints}),
        pretrain_epochs=float(pt_end),
        finetune_epochs=float(ft_len),
        finetune_from=float(ft_from),
    )
    if ft:
        sweep["flr"] = sorted({c.flr for c in ft})
    if dataset is not None:
        sweep["dataset"] = dataset
    if data_seed_in_paths:
        tables["data"]["seeds"] = sorted({_data_seed(c, 0) for c in checkpoints})
    return resolve(tables)


def _data_seed(ckpt: Checkpoint, default: int) -> int:
    """A checkpoint's data seed: its path's, else ``default`` (the path has no {data_seed})."""
    return default if ckpt.data_seed is None else ckpt.data_seed


def _epochs(sweep: dict, name: str, inferred: Fraction) -> Fraction:
    """An epoch-valued field: the user's value when given (exactly as written), else ``inferred``."""
    if name not in sweep:
        return inferred
    return Fraction(repr(number(name, sweep[name], positive=False)))


def _gcd(values: Sequence[Fraction]) -> Fraction:
    """Greatest common divisor of positive fractions."""
    den = math.lcm(*(v.denominator for v in values))
    return Fraction(math.gcd(*(int(v * den) for v in values)), den)


def read_checkpoint(
    path: str,
    layers: Sequence[Layer],
    *,
    fs: fsspec.AbstractFileSystem | None = None,
    accuracy: str = "auto",
    name: str | None = None,
    official: Mapping[str, str] | None = None,
) -> tuple[np.ndarray, dict[str, float]]:
    """The flat weights of one checkpoint file, and the metrics stored beside them.

    The state dict is found inside the common wrappers: a dict holding it under
    ``state_dict``, ``model_state_dict`` or ``model`` (nested any number of times), an SWA
    ``AveragedModel`` (``module.`` prefix, ``n_averaged`` buffer), a ``torch.compile``'d
    module (``_orig_mod.``). Integer tensors the layout lacks (``num_batches_tracked``) are
    ignored. Tensors may carry lrscan's names or, where ``official`` maps them, the study's
    own (its checkpoints load as they are). Metrics are read from ``train_res`` / ``test_res`` dicts (``loss``,
    ``accuracy`` or ``acc``) or ``train_loss`` / ``train_acc`` / ``test_loss`` / ``test_acc``
    values at any level of the wrapping.

    Parameters
    ----------
    path
        The file, on ``fs`` (default: the local filesystem, or the URL's).
    layers
        The model's flat layout (:func:`lrscan.train.engine.layout`).
    accuracy
        ``"fraction"``, ``"percent"``, or ``"auto"``: a value above 1 is a percentage.
    name
        How to call the file in errors (default: ``path``).
    official
        lrscan name → the study's name of each layer (:func:`lrscan.models.official_names`).

    Returns
    -------
    (np.ndarray, dict)
        The float32 vector in the layout's order, and any of ``train_loss``, ``train_acc``,
        ``test_loss``, ``test_acc`` (accuracies as fractions).

    Raises
    ------
    LrscanError
        When the file cannot be loaded with ``weights_only=True``, or its state dict does
        not fit the layout (naming the first missing, mis-shaped or unexpected tensor).
    """
    name = name or path
    if fs is None:
        fs, path = fsspec.core.url_to_fs(path)
    obj = _load(fs, path, name)
    state, metrics = _unwrap(obj, name)
    return _flatten(_strip_prefixes(state, layers), layers, name, official), _scores(metrics, accuracy, name)


def _load(fs: fsspec.AbstractFileSystem, path: str, name: str) -> Any:
    try:
        if _local(fs):
            # Memory-mapped: tensors are read as they are copied out, never the whole file at once.
            return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
        with fs.open(path, "rb") as f:
            return torch.load(f, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling refusals, truncated or foreign files all land here
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise LrscanError(f"cannot load {name} as a PyTorch checkpoint (weights_only=True): {first}") from None


def _local(fs: fsspec.AbstractFileSystem) -> bool:
    protocol = fs.protocol
    return "file" in (protocol if isinstance(protocol, tuple) else (protocol,))


def _unwrap(obj: Any, name: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors of the innermost state dict, and every non-tensor value met on the way."""
    level, meta = obj, {}
    while True:
        if not isinstance(level, Mapping):
            raise LrscanError(f"{name} holds a {type(level).__name__}, not a state dict")
        for key, value in level.items():
            if not isinstance(value, torch.Tensor) or value.dim() == 0:
                meta.setdefault(key, value)
        inner = next((level[k] for k in WRAPPER_KEYS if isinstance(level.get(k), Mapping)), None)
        if inner is None:
            break
        level = inner
    state = {k: v for k, v in level.items() if isinstance(v, torch.Tensor)}
    if not state:
        keys = ", ".join(map(str, list(level)[:8])) or "none"
        raise LrscanError(f"{name}: found no state dict (keys: {keys}); lrscan looks under "
                          f"{', '.join(repr(k) for k in WRAPPER_KEYS)} or takes a dict of tensors")
    return state, meta


def _strip_prefixes(state: dict[str, torch.Tensor], layers: Sequence[Layer]) -> dict[str, torch.Tensor]:
    """Names as the bare module has them: no ``_orig_mod.`` segments, no wrapper ``module.`` prefix."""
    state = {re.sub(r"(^|\.)_orig_mod\.", r"\1", k): v for k, v in state.items()}
    model_names_wrapped = all(layer.name.startswith("module.") for layer in layers)
    while not model_names_wrapped and state and all(k.startswith("module.") for k in state if k != "n_averaged"):
        # AveragedModel (and DataParallel) put the model under `module`; n_averaged is the wrapper's own.
        state = {k[len("module."):]: v for k, v in state.items() if k != "n_averaged"}
    return state


def _file_names(state: Mapping[str, torch.Tensor], layers: Sequence[Layer],
                official: Mapping[str, str]) -> dict[str, str]:
    """Which key of the file holds each layer: lrscan's own names, or the study's where the
    file uses those (the model entry's official-name mapping)."""
    own = {layer.name: layer.name for layer in layers}
    if not official or all(layer.name in state for layer in layers):
        return own
    theirs = {layer.name: official[layer.name] for layer in layers}
    hits = lambda names: sum(key in state for key in names.values())  # noqa: E731
    return theirs if hits(theirs) > hits(own) else own


def _flatten(state: Mapping[str, torch.Tensor], layers: Sequence[Layer], name: str,
             official: Mapping[str, str] | None = None) -> np.ndarray:
    hint = "; is this the model of --model and --set model.*?"
    keys = _file_names(state, layers, official or {})
    row = np.empty(max(layer.stop for layer in layers), dtype=np.float32)
    for layer in layers:
        tensor = state.get(keys[layer.name])
        if tensor is None:
            raise LrscanError(f"{name}: missing tensor {keys[layer.name]!r}{hint}")
        if tuple(tensor.shape) != tuple(layer.shape):
            raise LrscanError(f"{name}: tensor {keys[layer.name]!r} has shape {tuple(tensor.shape)}, "
                              f"the model's is {tuple(layer.shape)}{hint}")
        row[layer.start : layer.stop] = tensor.detach().reshape(-1).to(torch.float32).numpy()
    known = set(keys.values())
    for key, tensor in state.items():
        if key not in known and (tensor.is_floating_point() or tensor.is_complex()):
            raise LrscanError(f"{name}: unexpected tensor {key!r} (the model has none of that name){hint}")
    return canonical_nan(row)


def _scores(meta: Mapping[str, Any], accuracy: str, name: str) -> dict[str, float]:
    out = {}
    for split in ("train", "test"):
        res = meta.get(f"{split}_res")
        res = res if isinstance(res, Mapping) else {}
        loss = _scalar(res.get("loss", meta.get(f"{split}_loss")))
        acc = _scalar(res.get("accuracy", res.get("acc", meta.get(f"{split}_acc", meta.get(f"{split}_accuracy")))))
        if loss is not None:
            out[f"{split}_loss"] = loss
        if acc is not None:
            if accuracy == "percent" or (accuracy == "auto" and acc > 1):
                acc /= 100
            elif accuracy == "fraction" and acc > 1:
                raise LrscanError(f"{name}: {split} accuracy {acc:g} is above 1; give --accuracy percent")
            out[f"{split}_acc"] = acc
    return out


def _scalar(value: Any) -> float | None:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value)
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return float(value)
    return None


@dataclass
class ImportResult:
    """What an import did, and what it found amiss.

    Attributes
    ----------
    store
        The store written.
    spec
        Its spec.
    imported
        Runs written by this call, per stage (``swa`` where SWA was computed).
    files
        Checkpoint files read by this call.
    unmatched
        Paths under the source (relative to it) that match no pattern: not imported.
    missing
        Runs of the grid without any file (not done, unless ``allow_missing`` made them
        empty runs).
    gaps
        Runs lacking files for some epochs that other runs of their stage have (those
        rows read as NaN).
    swa
        Why the SWA stage was left to do, or None.
    """

    store: str
    spec: Spec
    imported: dict[str, int] = field(default_factory=dict)
    files: int = 0
    unmatched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    gaps: list[str] = field(default_factory=list)
    swa: str | None = None


def import_checkpoints(
    source: str,
    store: str,
    model: str,
    patterns: Sequence[str],
    *,
    dataset: str | None = None,
    overrides: Iterable[str] = (),
    ft_epoch_origin: str = "branch",
    accuracy: str = "auto",
    allow_missing: bool = False,
    progress: Callable[[Progress], None] | None = None,
) -> ImportResult:
    """Import a folder of checkpoints into a store that every analyzer can read.

    The store is created from :func:`infer_spec` (or checked against it when it exists:
    a rerun continues an interrupted import and skips runs already done). Each run's
    files are read one at a time, in epoch order, straight into the run's region of the
    weights array; the run's metrics (those stored in the files, ``weight_norm`` from the
    weights, NaN for the rest), its ``diverged_epoch`` (the first epoch whose weights are
    not finite), checksum and ``done`` flag follow. When the spec asks for SWA (``--set
    swa=[...]``), the SWA stage is then computed from the imported pre-training weights by
    the trainer's own code.

    Parameters
    ----------
    source
        Folder or fsspec URL holding the checkpoints.
    store
        The store to write.
    model
        The registered model the checkpoints hold.
    patterns
        Path patterns (see :class:`Pattern`).
    dataset, overrides, ft_epoch_origin
        As for :func:`infer_spec`.
    accuracy
        Unit of stored accuracies: ``"auto"`` (above 1 means percent), ``"fraction"``,
        ``"percent"``.
    allow_missing
        Write runs that have no file at all as empty (NaN) runs and mark them done, so
        that analyzers run on a partial grid.
    progress
        Called with a :class:`~lrscan.train.sweep.Progress` (``done`` / ``total`` in files)
        after each file.

    Returns
    -------
    ImportResult

    Raises
    ------
    LrscanError
        For bad input: patterns, options, a file that cannot be read or does not fit the
        model (runs finished before it are kept), a store made from another spec.
    """
    if accuracy not in ACCURACY_UNITS:
        raise LrscanError(f"accuracy must be one of {', '.join(ACCURACY_UNITS)}, got {accuracy!r}")
    found = scan(source, patterns)
    if not found.checkpoints:
        example = f"; e.g. {found.unmatched[0]!r} does not" if found.unmatched else " (it holds no files)"
        raise LrscanError(f"no file under {source} matches {' or '.join(map(repr, patterns))}{example}")
    spec = infer_spec(found.checkpoints, model, dataset=dataset, overrides=overrides,
                      ft_epoch_origin=ft_epoch_origin, data_seed_in_paths=found.data_seed_in_paths)
    try:
        setup = Setup.build(spec)
    except LrscanError as err:
        if "whole number of steps" not in str(err):
            raise
        raise LrscanError(f"{err}; the checkpoints' epochs must be whole numbers of steps: set batch_size and "
                          "data.n_train to those they were trained with") from None
    layers = setup.layers
    official = official_names(setup.entry, [layer.name for layer in layers], spec.model_options)
    runs = _assign(found, setup, ft_epoch_origin)
    first = min(runs["pretrain"].items())[1][0][1]
    # A wrong model fails here.
    read_checkpoint(first.path, layers, fs=found.fs, accuracy=accuracy, name=first.name, official=official)
    create_or_check(store, setup.plan, layers)
    root = zarr.open_group(str(store), mode="r+")
    if "lrscan_import" not in root.attrs:
        root.attrs["lrscan_import"] = {"source": str(source), "patterns": list(patterns),
                                       "ft_epoch_origin": ft_epoch_origin, "lrscan_version": lrscan.__version__}
    result = ImportResult(str(store), spec, unmatched=found.unmatched)
    todo = []
    for stage, by_run in runs.items():
        done = root[f"{stage}/metrics/done"][...].astype(bool)
        epochs = sorted({step for files in by_run.values() for step, _ in files})
        for index in np.ndindex(done.shape):
            files = by_run.get(index, [])
            where = _describe(spec, stage, index)
            if not files:
                result.missing.append(where)
            else:
                lacking = sorted(set(epochs) - {step for step, _ in files})
                if lacking:
                    shown = ", ".join(f"{s / setup.plan.steps_per_epoch:g}" for s in lacking)
                    result.gaps.append(f"{where}: no file for epoch {shown}")
            if not done[index] and (files or allow_missing):
                todo.append((stage, index, files))
    total, count = sum(len(files) for *_, files in todo), 0
    # weight_norm as the trainer logs it: the SI group on a sphere, else the trained parameters.
    norm_group = "si" if setup.entry.update == "sphere" else "trainable"

    def tick(stage: str) -> None:
        nonlocal count
        count += 1
        if progress is not None:
            progress(Progress(stage, count, total))

    for stage, index, files in todo:
        _write_run(root, stage, getattr(setup.plan, stage), index, files, layers, official, norm_group, found.fs,
                   accuracy, setup.plan.steps_per_epoch, tick)
        result.imported[stage] = result.imported.get(stage, 0) + 1
    result.files = count
    if spec.swa:
        not_done = int((~root["pretrain/metrics/done"][...].astype(bool)).sum())
        if not_done:
            result.swa = f"not computed: {not_done} pre-training runs are not imported"
        else:
            sweep = Sweep(spec, store)
            written = sum(sweep.run_batch("swa", batch) or 0 for batch in sweep.batches.get("swa", []))
            if written:
                result.imported["swa"] = written
    return result


def _assign(found: Scan, setup: Setup, origin: str) -> dict[str, dict[tuple, list[tuple[int, Checkpoint]]]]:
    """Each checkpoint's run index and step, grouped by stage and run, in step order."""
    spec, plan = setup.spec, setup.plan
    if not found.data_seed_in_paths and len(spec.data_seeds) > 1:
        raise LrscanError(f"the dataset has {len(spec.data_seeds)} data seeds (data.seeds) but the pattern has "
                          "no {data_seed}")
    plr = {v: i for i, v in enumerate(spec.plr)}
    flr = {v: i for i, v in enumerate(spec.flr)}
    seed = {(r.data_seed, r.train_seed): r.seed for r in plan.runs}
    runs: dict[str, dict[tuple, list]] = {"pretrain": defaultdict(list)}
    if plan.finetune.n_steps:
        runs["finetune"] = defaultdict(list)
    branch = spec.resolved_finetune_from
    for ckpt in found.checkpoints:
        s = seed[(_data_seed(ckpt, 0 if found.data_seed_in_paths else spec.data_seeds[0]), ckpt.seed)]
        epoch = float(ckpt.epoch)
        if ckpt.flr is None:
            stage, index = plan.pretrain, (plr[ckpt.plr], s)
        else:
            stage, index = plan.finetune, (plr[ckpt.plr], flr[ckpt.flr], s)
            epoch += branch if origin == "branch" else 0.0
        exact = epoch * plan.steps_per_epoch
        step = round(exact)
        if abs(exact - step) > 1e-6 or (step not in stage.checkpoint_steps and step not in stage.log_steps):
            raise LrscanError(f"{ckpt.name}: epoch {epoch:g} is neither a checkpoint nor a logged epoch of "
                              f"{stage.name} in the spec (check the --set schedule fields)")
        runs[stage.name][index].append((step, ckpt))
    for by_run in runs.values():
        for files in by_run.values():
            files.sort(key=lambda item: item[0])
    return {stage: dict(by_run) for stage, by_run in runs.items()}


def _describe(spec: Spec, stage: str, index: tuple[int, ...]) -> str:
    runs = [(d, t) for d in spec.data_seeds for t in spec.seeds]
    data_seed, train_seed = runs[index[-1]]
    where = [f"plr={spec.plr[index[0]]:g}"] + ([f"flr={spec.flr[index[1]]:g}"] if stage == "finetune" else [])
    where.append(f"seed={train_seed}" + (f", data_seed={data_seed}" if len(spec.data_seeds) > 1 else ""))
    return f"{stage} run ({', '.join(where)})"


def _write_run(root: zarr.Group, stage_name: str, stage, index: tuple[int, ...], files, layers,
               official: Mapping[str, str], norm_group: str, fs, accuracy: str, steps_per_epoch: int, tick: Callable[[str], None]) -> None:
    """Import one run: its weights chunk by chunk, then metrics, divergence, checksum, done.

    A chunk's rows are gathered (a chunk holds about 8 MB, or one checkpoint) and written
    whole, so each chunk is written once and unwritten rows are written as NaN: the
    checksum then describes exactly what is stored, whatever an interrupted import left.
    """
    weights = root[f"{stage_name}/weights/weights"]
    metrics = root[f"{stage_name}/metrics"]
    n_rows, n_params = weights.shape[-2:]
    per_chunk = weights.chunks[-2]
    row_of = {int(s): i for i, s in enumerate(stage.checkpoint_steps)}
    log_of = {int(s): i for i, s in enumerate(stage.log_steps)}
    values = {name: np.full(len(log_of), np.nan, dtype=np.float32) for name in METRICS}
    crc, diverged = 0, float("nan")
    chunk, block = 0, None

    def empty(c: int) -> np.ndarray:
        return np.full((min(per_chunk, n_rows - c * per_chunk), n_params), np.nan, dtype=np.float32)

    def write_until(stop: int) -> None:
        nonlocal crc, chunk, block
        for c in range(chunk, stop):
            rows = block if c == chunk and block is not None else empty(c)
            weights[index + (slice(c * per_chunk, c * per_chunk + rows.shape[0]),)] = rows
            crc = zlib.crc32(rows.tobytes(), crc)
        chunk, block = stop, None

    for step, ckpt in files:
        flat, scores = read_checkpoint(ckpt.path, layers, fs=fs, accuracy=accuracy, name=ckpt.name, official=official)
        if step in row_of:
            row = row_of[step]
            if row // per_chunk != chunk:
                write_until(row // per_chunk)
            if block is None:
                block = empty(chunk)
            block[row - chunk * per_chunk] = flat
        if step in log_of:
            i = log_of[step]
            for name, value in scores.items():
                values[name][i] = value
            values["weight_norm"][i] = float(si_norm(torch.from_numpy(flat)[None], layers, group=norm_group)[0])
        if math.isnan(diverged) and not np.isfinite(flat).all():
            diverged = step / steps_per_epoch
        tick(stage_name)
    write_until(-(-n_rows // per_chunk))
    values = {name: canonical_nan(v) for name, v in values.items()}  # one NaN bit pattern, as for the weights
    for name, v in values.items():
        metrics[name][index] = v
    metrics["diverged_epoch"][index] = diverged
    # As StoreWriter does: the checksum after the data, the done flag last.
    metrics["checksum"][index] = run_checksum(crc, values, diverged)
    metrics["done"][index] = 1

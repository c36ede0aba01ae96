"""Reading checkpoint files: safe loading, the state dict inside its wrappers, tensor names,
the metrics stored beside the weights, and whole-run trace files.

Files are loaded with ``torch.load(weights_only=True)``: tensors and plain Python values
only, plus numpy's numeric scalars (the study's gradient-norm step writes ``np.float64``
values into every checkpoint), admitted through torch's safe-globals mechanism with checks
of their own; anything else a pickle asks for is refused, and the error names it.
"""

from __future__ import annotations

import math
import pickle
import re
import zipfile
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import fsspec
import numpy as np
import torch

from lrscan.errors import LrscanError
from lrscan.store import canonical_nan
from lrscan.train.flat import Layer

# Keys under which checkpoints commonly nest the model's state dict, looked up in this order.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
ACCURACY_UNITS = ("auto", "fraction", "percent")

# ---------------------------------------------------------------------------------------------
# Safe loading


NUMERIC_KINDS = "biufc"  # bool, signed and unsigned integers, floats, complex
_SCALAR = np.float64(0).__reduce__()[0]  # numpy's scalar reconstructor, whatever its module


def _numpy_dtype(spec: Any, align: bool = False, copy: bool = True) -> np.dtype:
    """numpy's dtype constructor, for numeric dtypes only."""
    dtype = np.dtype(spec, align, copy)
    if dtype.kind not in NUMERIC_KINDS:
        raise pickle.UnpicklingError(f"numpy dtype {dtype} refused: only numeric numpy scalars are loaded")
    return dtype


def _numpy_scalar(dtype: Any, data: Any = None) -> Any:
    """numpy's scalar reconstructor, for a numeric dtype and its raw bytes only."""
    if not isinstance(dtype, np.dtype) or dtype.kind not in NUMERIC_KINDS or not isinstance(data, bytes):
        raise pickle.UnpicklingError("a numpy scalar that is not a plain number refused")
    return _SCALAR(dtype, data)


# Files written under numpy 1 name the reconstructor numpy.core.multiarray.scalar, under numpy 2
# numpy._core.multiarray.scalar; both are mapped to the checked versions. The numeric dtype
# classes are listed because unpickling a dtype sets its state (pickle's BUILD), which torch
# allows only on allow-listed types.
SAFE_NUMPY = [
    (_numpy_scalar, "numpy.core.multiarray.scalar"),
    (_numpy_scalar, "numpy._core.multiarray.scalar"),
    (_numpy_dtype, "numpy.dtype"),
    *sorted({type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDG"} - {np.dtype}, key=str),
]


def load(fs: fsspec.AbstractFileSystem, path: str, name: str) -> Any:
    """The unpickled content of a file, loaded weights-only with numpy numbers allowed."""
    try:
        with torch.serialization.safe_globals(SAFE_NUMPY):
            if _local(fs):
                # Memory-mapped: tensors are read as they are copied out, never the whole file at once.
                return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
            with fs.open(path, "rb") as f:
                return torch.load(f, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling refusals, truncated or foreign files all land here
        raise LrscanError(f"cannot load {name} as a PyTorch checkpoint (weights_only=True): {_why(err)}") from None


def _why(err: Exception) -> str:
    text = str(err)
    refused = re.search(r"GLOBAL ([\w.]+)", text)
    if refused:
        return (f"it asks for {refused[1]}, which is refused: only tensors, plain Python values and numpy "
                "numbers are loaded, so that a file cannot run code")
    own = re.search(r"(numpy dtype \S+ refused|a numpy scalar that is not a plain number refused)[^\n]*", text)
    if own:
        return own[0]
    return (text.strip().splitlines() or [type(err).__name__])[0]


def _local(fs: fsspec.AbstractFileSystem) -> bool:
    protocol = fs.protocol
    return "file" in (protocol if isinstance(protocol, tuple) else (protocol,))


# ---------------------------------------------------------------------------------------------
# Tensor names


@dataclass(frozen=True)
class Rename:
    """One ``--rename`` rule for the file's tensor names.

    ``OLD=NEW`` renames the name ``OLD`` and every name under it (``OLD.…``); ``re:PATTERN=NEW``
    substitutes a regular expression (Python's ``re.sub``, ``\\1`` for groups) in every name,
    the last ``=`` separating pattern and replacement.
    """

    old: str
    new: str
    regex: bool = False

    @classmethod
    def parse(cls, text: str) -> "Rename":
        regex = text.startswith("re:")
        body = text[3:] if regex else text
        old, sep, new = body.rpartition("=") if regex else body.partition("=")
        if not sep or not old:
            raise LrscanError(f"--rename expects OLD=NEW or re:PATTERN=NEW, got {text!r}")
        if regex:
            try:
                re.compile(old)
            except re.error as err:
                raise LrscanError(f"--rename {text!r}: bad regular expression ({err})") from None
        return cls(old, new, regex)

    def apply(self, key: str) -> str:
        if self.regex:
            return re.sub(self.old, self.new, key)
        if key == self.old:
            return self.new
        if key.startswith(self.old + "."):
            return self.new + key[len(self.old):]
        return key


def rename(state: Mapping[str, Any], rules: Sequence[Rename], name: str) -> dict[str, Any]:
    """The state dict with every rule applied to every key, in order."""
    if not rules:
        return dict(state)
    out: dict[str, Any] = {}
    for key, value in state.items():
        new = key
        for rule in rules:
            new = rule.apply(new)
        if new in out:
            raise LrscanError(f"{name}: --rename gives two tensors the name {new!r}")
        out[new] = value
    return out


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


def _some(names: Sequence[str], n: int = 3) -> str:
    shown = ", ".join(names[:n])
    return f"{shown}, … ({len(names)} in all)" if len(names) > n else shown


HINT = "; is this the model of --model and --set model.*?"


def _missing(name: str, key: str, layer: str, keys: Mapping[str, str], state: Mapping[str, torch.Tensor],
             official: Mapping[str, str]) -> LrscanError:
    """The error for a tensor the file lacks: the expected names beside the file's own."""
    expected = [k for k in keys.values() if k not in state]
    foreign = [k for k, v in state.items() if k not in set(keys.values()) and isinstance(v, torch.Tensor)
               and (v.is_floating_point() or v.is_complex())]
    study = f" (the study's name: {official[layer]!r})" if official and official[layer] != key else ""
    theirs = (f"the file's tensors the model lacks: {_some(foreign)}" if foreign
              else "the file has no other tensors")
    return LrscanError(f"{name}: missing tensor {key!r}{study}; missing {_some(expected)}; {theirs}{HINT} "
                       "Map names with --rename OLD=NEW")


def flatten(state: Mapping[str, torch.Tensor], layers: Sequence[Layer], name: str,
            official: Mapping[str, str] | None = None) -> np.ndarray:
    """The file's tensors as one float32 vector in the layout's order."""
    official = official or {}
    keys = _file_names(state, layers, official)
    row = np.empty(max(layer.stop for layer in layers), dtype=np.float32)
    for layer in layers:
        tensor = state.get(keys[layer.name])
        if tensor is None:
            raise _missing(name, keys[layer.name], layer.name, keys, state, official)
        if tuple(tensor.shape) != tuple(layer.shape):
            raise LrscanError(f"{name}: tensor {keys[layer.name]!r} has shape {tuple(tensor.shape)}, "
                              f"the model's is {tuple(layer.shape)}{HINT}")
        row[layer.start : layer.stop] = tensor.detach().reshape(-1).to(torch.float32).numpy()
    known = set(keys.values())
    for key, tensor in state.items():
        if key not in known and (tensor.is_floating_point() or tensor.is_complex()):
            raise LrscanError(f"{name}: unexpected tensor {key!r} (the model has none of that name){HINT}")
    return canonical_nan(row)


def unwrap(obj: Any, name: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
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


def named_state(obj: Any, layers: Sequence[Layer], renames: Sequence[Rename],
                name: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The state dict of a loaded file under the names the model's layers can be matched to
    (wrappers and prefixes gone, ``renames`` applied), and the values beside it."""
    state, meta = unwrap(obj, name)
    return rename(_strip_prefixes(state, layers), renames, name), meta


# ---------------------------------------------------------------------------------------------
# Metrics beside the weights


@dataclass(frozen=True)
class Source:
    """A value a file may hold beside its weights, and the store metric it fills."""

    key: str  # where the file holds it: "test_res.accuracy", "acc_evalmode_train", ...
    metric: str
    meaning: str


_RUNNING = ("the mean over the training steps of the epoch that ends at the checkpoint, each step in "
            "train mode (the study's train_res)")
_EVAL_TRAIN = "the full training set in eval mode (the study's calc_grad_norms)"
_FLAT = "the file's value of that name, taken as an evaluation on the full set"
_TRACE = "the full set at the logged step (the synthetic example's eval_model)"
# In order of precedence: the first a file holds fills its metric (train values first, so
# that errors about them come first too).
SOURCES = (
    Source("train_res.loss", "running_train_loss", _RUNNING),
    Source("train_res.accuracy", "running_train_acc", _RUNNING),
    Source("train_res.acc", "running_train_acc", _RUNNING),
    Source("loss_evalmode_train", "train_loss", _EVAL_TRAIN),
    Source("acc_evalmode_train", "train_acc", _EVAL_TRAIN),
    Source("train_loss", "train_loss", _FLAT),
    Source("train_acc", "train_acc", _FLAT),
    Source("train_accuracy", "train_acc", _FLAT),
    Source("test_res.loss", "test_loss", "the full test set in eval mode (the study's test_res)"),
    Source("test_res.accuracy", "test_acc", "the full test set in eval mode (the study's test_res)"),
    Source("test_res.acc", "test_acc", "the full test set in eval mode"),
    Source("test_loss", "test_loss", _FLAT),
    Source("test_acc", "test_acc", _FLAT),
    Source("test_accuracy", "test_acc", _FLAT),
    Source("gnorm_trainmode_m_train", "grad_norm",
           "the mean over the mini-batches of one pass over the training set of the SI-group gradient norm, "
           "in train mode, at the checkpoint's weights (the study's calc_grad_norms)"),
    Source("trace.train_loss", "train_loss", _TRACE),
    Source("trace.train_acc", "train_acc", _TRACE),
    Source("trace.test_loss", "test_loss", _TRACE),
    Source("trace.test_acc", "test_acc", _TRACE),
)
SOURCE = {s.key: s for s in SOURCES}


def is_accuracy(key: str) -> bool:
    return SOURCE[key].metric.endswith("_acc")


def raw_metrics(meta: Mapping[str, Any]) -> dict[str, float]:
    """Every value of :data:`SOURCES` the file holds, by source key, as stored (no unit applied)."""
    out = {}
    for source in SOURCES:
        head, _, tail = source.key.partition(".")
        value = meta.get(head)
        if tail:
            value = value.get(tail) if isinstance(value, Mapping) else None
        value = _scalar(value)
        if value is not None:
            out[source.key] = value
    return out


def _scalar(value: Any) -> float | None:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value)
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return float(value)
    return None


def metrics(raw: Mapping[str, float], units: str | Mapping[str, str], name: str,
            decided: str = "") -> dict[str, float]:
    """Store metrics from raw values: the first source of each metric, accuracies as fractions.

    ``units`` is ``"fraction"``, ``"percent"``, ``"auto"`` (percent when the value is above 1)
    or a unit per source key; ``decided`` says, in errors, where a per-store unit came from.
    """
    out = {}
    for key, value in raw.items():
        source = SOURCE[key]
        if source.metric in out:
            continue
        if is_accuracy(key):
            unit = units.get(key, "auto") if isinstance(units, Mapping) else units
            split = source.metric.replace("running_", "").split("_")[0]
            if unit == "auto":
                unit = "percent" if value > 1 else "fraction"
            if unit == "fraction" and value > 1:
                raise LrscanError(f"{name}: {split} accuracy {value:g} is above 1{decided}; give --accuracy percent")
            if unit == "percent":
                if value > 100:
                    raise LrscanError(f"{name}: {split} accuracy {value:g} is above 100 %")
                value /= 100
        out[source.metric] = value
    return out


def read_checkpoint(
    path: str,
    layers: Sequence[Layer],
    *,
    fs: fsspec.AbstractFileSystem | None = None,
    accuracy: str = "auto",
    name: str | None = None,
    official: Mapping[str, str] | None = None,
    renames: Sequence[Rename] = (),
) -> tuple[np.ndarray, dict[str, float]]:
    """The flat weights of one checkpoint file, and the metrics stored beside them.

    The state dict is found inside the common wrappers: a dict holding it under
    ``state_dict``, ``model_state_dict`` or ``model`` (nested any number of times), an SWA
    ``AveragedModel`` (``module.`` prefix, ``n_averaged`` buffer), a ``torch.compile``'d
    module (``_orig_mod.``). Integer tensors the layout lacks (``num_batches_tracked``) are
    ignored. Tensors may carry lrscan's names or, where ``official`` maps them, the study's
    own (its checkpoints load as they are); ``renames`` map anyone else's. Metrics are the
    values of :data:`SOURCES` the file holds at any level of the wrapping: the study's
    ``train_res`` (train-mode running means, into ``running_train_*``) and ``test_res``
    dicts, its gradient-norm step's values, or plain ``train_loss`` … ``test_acc``.

    Parameters
    ----------
    path
        The file, on ``fs`` (default: the local filesystem, or the URL's).
    layers
        The model's flat layout (:func:`lrscan.train.flat.layout`).
    accuracy
        ``"fraction"``, ``"percent"``, or ``"auto"``: a value above 1 is a percentage.
    name
        How to call the file in errors (default: ``path``).
    official
        lrscan name → the study's name of each layer (:func:`lrscan.models.official_names`).
    renames
        ``--rename`` rules applied to the file's tensor names first.

    Returns
    -------
    (np.ndarray, dict)
        The float32 vector in the layout's order, and the store metrics found (accuracies as
        fractions).

    Raises
    ------
    LrscanError
        When the file cannot be loaded with ``weights_only=True`` (naming what was refused),
        or its state dict does not fit the layout (naming the first missing, mis-shaped or
        unexpected tensor, beside the file's own names).
    """
    name = name or path
    if fs is None:
        fs, path = fsspec.core.url_to_fs(path)
    state, meta = named_state(load(fs, path, name), layers, renames, name)
    return flatten(state, layers, name, official), metrics(raw_metrics(meta), accuracy, name)


# ---------------------------------------------------------------------------------------------
# Whole-run trace files


@dataclass(frozen=True)
class TraceShape:
    """The steps of a whole-run file: its ``n_steps`` steps, an iterate every ``weight_every``
    steps from 0 (``n_weights`` of them), a metric row every ``log_every`` (``n_logs``)."""

    n_steps: int
    weight_every: int
    n_weights: int
    log_every: int
    n_logs: int

    def rows(self) -> dict[int, tuple[int | None, int | None]]:
        """Step → (iterate index, metric index); the final weights beside the trace are
        iterate ``-1`` when no iterate falls on the last step."""
        out: dict[int, list] = {}
        for i in range(self.n_weights):
            out.setdefault(i * self.weight_every, [None, None])[0] = i
        for j in range(self.n_logs):
            out.setdefault(j * self.log_every, [None, None])[1] = j
        if out.get(self.n_steps, [None])[0] is None:
            out.setdefault(self.n_steps, [None, None])[0] = -1
        return {step: (w, m) for step, (w, m) in sorted(out.items())}


TRACE_METRICS = ("train_loss", "train_acc", "test_loss", "test_acc")


def trace_of(obj: Any, name: str) -> Mapping[str, Any]:
    """The trace dict of a whole-run file (``{'model', 'batch_losses', 'trace': {...}}``)."""
    trace = obj.get("trace") if isinstance(obj, Mapping) else None
    if not isinstance(trace, Mapping) or not isinstance(trace.get("weight"), (list, tuple)) or not trace["weight"]:
        keys = ", ".join(map(str, obj))[:80] if isinstance(obj, Mapping) else type(obj).__name__
        raise LrscanError(f"{name} holds no trace of iterates (a 'trace' dict with a 'weight' list; found: {keys}); "
                          "a pattern without {epoch} takes whole-run files")
    return trace


def trace_shape(obj: Any, name: str) -> TraceShape:
    """When a whole-run file's iterates and metric rows were taken, from its lengths: the run
    took ``len(batch_losses)`` steps, and kept an iterate (a metric row) every k steps from 0."""
    trace = trace_of(obj, name)
    losses = obj.get("batch_losses")
    if not isinstance(losses, (list, tuple)):
        raise LrscanError(f"{name}: no 'batch_losses' list, so the trace's steps are unknown")
    n = len(losses)
    lengths = [len(trace[k]) for k in TRACE_METRICS if isinstance(trace.get(k), (list, tuple))]
    n_logs = min(lengths, default=0)
    return TraceShape(n, _every(n, len(trace["weight"]), name, "iterate"), len(trace["weight"]),
                      _every(n, n_logs, name, "metric row") if n_logs else 1, n_logs)


def _every(n_steps: int, count: int, name: str, what: str) -> int:
    """The interval k with ``count`` = 1 + ⌊n_steps / k⌋ (a value at step 0, then every k)."""
    if count <= 1:
        return max(n_steps, 1)
    if n_steps % (count - 1) == 0:
        return n_steps // (count - 1)
    fits = [k for k in range(n_steps // count + 1, n_steps // (count - 1) + 1) if n_steps // k == count - 1]
    if len(fits) != 1:
        raise LrscanError(f"{name}: cannot tell how often the trace kept an {what} ({count} over {n_steps} steps)")
    return fits[0]


def trace_step(obj: Any, weight: int | None, row: int | None, layers: Sequence[Layer], name: str,
               official: Mapping[str, str], renames: Sequence[Rename]) -> tuple[np.ndarray | None, dict[str, float]]:
    """One step of a whole-run file: its flat weights (None where it kept no iterate) and raw
    metrics. An iterate holds the trainable parameters, in the module's order; the frozen
    ones (the head) and buffers come from the state dict beside the trace."""
    trace = trace_of(obj, name)
    raw = {}
    if row is not None:
        for key in TRACE_METRICS:
            values = trace.get(key)
            value = _scalar(values[row]) if isinstance(values, (list, tuple)) and row < len(values) else None
            if value is not None and math.isfinite(value):
                raw[f"trace.{key}"] = value
    if weight is None:
        return None, raw
    state, _ = named_state(obj, layers, renames, name)
    flat = flatten(state, layers, name, official)
    if weight == -1:
        return flat, raw
    keys = _file_names(state, layers, official)
    order = {key: i for i, key in enumerate(state)}
    trainable = sorted((layer for layer in layers if layer.trainable), key=lambda layer: order[keys[layer.name]])
    vector = trace["weight"][weight]
    if not isinstance(vector, torch.Tensor) or vector.dim() != 1:
        raise LrscanError(f"{name}: iterate {weight} of the trace is not a flat tensor")
    size = sum(layer.stop - layer.start for layer in trainable)
    if vector.numel() != size:
        raise LrscanError(f"{name}: iterate {weight} has {vector.numel()} values, the model's trainable "
                          f"parameters {size}{HINT}")
    values, start = vector.detach().to(torch.float32).numpy(), 0
    for layer in trainable:
        flat[layer.start : layer.stop] = values[start : start + layer.stop - layer.start]
        start += layer.stop - layer.start
    return canonical_nan(flat), raw

"""CF-style ``units`` and ``long_name`` of every variable lrscan stores or analyses, so that xarray and
hvPlot label their axes in the study's words.

Accuracies and errors stay what they are stored as — fractions (``units: "1"``), except the
barriers and path errors, which the analyzers give in % — and figures show them in %.

:func:`label` sets them from the table by each variable's own name, over any it has: the store
writes its variables so, when it is created and when an analysis result is persisted, and a
result computed from labelled inputs does not keep what it inherited from them (``ft_test_acc``
is "FT test accuracy", not its input's "test accuracy"); analyzers' and the accessor's results
are labelled so. :func:`annotate` sets them on a Dataset or on every node of a DataTree where a
variable has none (a store made before they were written), keeping any a variable has (one a
user labelled). Needs nothing beyond xarray.
"""

from __future__ import annotations

import re
from functools import singledispatch

import xarray as xr

# Coordinates, by name.
COORDS = {
    "plr": ("1", "pre-training learning rate (effective)"),
    "flr": ("1", "fine-tuning learning rate (effective)"),
    "epoch": ("epoch", "epoch of training"),
    "step": ("1", "optimiser step"),
    "seed": (None, "seed"),
    "swa": ("1", "K, checkpoints averaged by SWA"),
    "alpha": ("1", "position along the straight path between two solutions"),
    "pair": (None, "pair of solutions"),
    "solution": (None, "solution"),
    "rank": ("1", "rank of the feature (1 = most relied on)"),
    "feature": ("1", "feature"),
    "band": (None, "frequency band"),
    "boundary": (None, "regime boundary"),
    "point": (None, "point of training"),
    "bin": ("1", "histogram bin"),
    "param": ("1", "index into the flattened trainable parameters"),
    "layer": (None, "tensor of the model (a parameter or a float buffer)"),
}
# Variables whose meaning the rules below would not say, by name.
NAMES = {
    "angle": ("rad", "angle between the SI weight vectors of two solutions"),
    "angle_matrix": ("rad", "angle between the SI weight vectors of each two solutions"),
    "train_barrier": ("%", "train error barrier on the path between two solutions"),
    "test_barrier": ("%", "test error barrier on the path between two solutions"),
    "train_error": ("%", "train error along the path"),
    "test_error": ("%", "test error along the path"),
    "ft_barrier": ("%", "test error barrier between FT solutions of the lowest and highest FLR"),
    "ft_barrier_se": ("%", "standard error of that barrier"),
    "weights": ("1", "weights (flattened trainable parameters)"),
    "weight_norm": ("1", "norm of the SI weights"),
    "grad_norm": ("1", "gradient norm"),
    "group_norm": ("1", "channel norm ‖W[i]‖ / ρ"),
    "histogram": ("1", "channels per bin of log10 channel norm / ρ"),
    "done": ("1", "run finished"),
    "checksum": (None, "checksum of the run's stored data"),
    "diverged_epoch": ("epoch", "epoch at which the run diverged (NaN: it did not)"),
    "sparsity": ("1", "sparsity index (1 = relies on one feature)"),
    "feature_count": ("1", "effective number of features relied on"),
    "reliance": ("1", "reliance on each feature (share of the excess over chance)"),
    "regime": (None, "regime"),
    "regime_mode": (None, "most common regime over seeds"),
    "regime_share": ("1", "share of seeds in each regime"),
    "swa_best_k": ("1", "K of the best SWA solution"),
    "converged": ("1", "converged"),
    # The layer table: each tensor's place along param.
    "start": ("1", "first index of the tensor along param"),
    "stop": ("1", "index after the tensor's last along param"),
    "shape": (None, "shape of the tensor"),
    "si": (None, "whether the tensor is in the scale-invariant (SI) group"),
    "trainable": (None, "whether the tensor is trained"),
    "buffer": (None, "whether the tensor is a float buffer (BatchNorm running statistics)"),
    "train_seed": ("1", "seed of the run's training"),
    "data_seed": ("1", "seed of the run's data"),
}
STAGES = {"pt": "PT", "ft": "FT", "swa": "SWA"}
SPLITS = {"train": "train", "test": "test", "running_train": "running train"}


def describe(name: str) -> tuple[str | None, str]:
    """``(units, long_name)`` of a variable or coordinate named ``name``; units None where there are none."""
    if name in COORDS:
        return COORDS[name]
    if name in NAMES:
        return NAMES[name]
    stage, _, rest = name.partition("_")
    prefix = f"{STAGES[stage]} " if stage in STAGES and rest else ""
    rest = rest if prefix else name
    if match := re.fullmatch(r"(.*?)_?(acc|loss)(?:_(mean|std|spread))?", rest):
        split, kind, stat = match.groups()
        what = "accuracy" if kind == "acc" else "loss (cross-entropy)"
        split = SPLITS.get(split, split.replace("_", " ")) if split else ""
        stat = {"mean": ", mean over the last window", "std": ", std over the last window",
                "spread": ", spread over FLRs"}.get(stat, "")
        return ("1" if kind == "acc" else "nats"), f"{prefix}{split} {what}{stat}".replace("  ", " ").strip()
    if rest.startswith("epochs_"):
        return "epoch", prefix + rest.replace("_", " ")
    if rest.startswith("boundary_log10"):
        return "1", "log10 PLR of the regime boundary" + rest.removeprefix("boundary_log10").replace("_", " ")
    if rest.startswith("boundary"):
        return "1", "PLR of the regime boundary" + rest.removeprefix("boundary").replace("_", " ")
    return "1", (prefix + rest.replace("_", " ")).strip()


def _annotate(variable: xr.Variable, name: str, overwrite: bool = False) -> None:
    units, long_name = describe(name)
    numeric = units is not None and variable.dtype.kind in "fiub"
    if overwrite:
        variable.attrs["long_name"] = long_name
        if numeric:
            variable.attrs["units"] = units
        else:
            variable.attrs.pop("units", None)  # inherited: not this variable's
        return
    variable.attrs.setdefault("long_name", long_name)
    if numeric:
        variable.attrs.setdefault("units", units)


@singledispatch
def label(obj):
    """``obj`` with ``units`` and ``long_name`` of every variable and coordinate set from the table by its
    own name (:func:`describe`), replacing those it has (inherited from inputs, say). A shallow copy:
    the data is shared, while ``obj``, and the variables it shares with others, keep their attributes."""
    raise TypeError(f"cannot label a {type(obj).__name__}")


@label.register
def _(obj: xr.Dataset) -> xr.Dataset:
    obj = obj.copy(deep=False)
    for name, variable in obj.variables.items():
        _annotate(variable, str(name), overwrite=True)
    return obj


@label.register
def _(obj: xr.DataArray) -> xr.DataArray:
    obj = obj.copy(deep=False)
    _annotate(obj.variable, str(obj.name), overwrite=True)
    for name, coord in obj.coords.items():
        _annotate(coord.variable, str(name), overwrite=True)
    return obj


@singledispatch
def annotate(obj):
    """Set ``units`` and ``long_name`` on every variable and coordinate of ``obj`` (in place); returns it."""
    raise TypeError(f"cannot annotate a {type(obj).__name__}")


@annotate.register
def _(obj: xr.Dataset) -> xr.Dataset:
    for name, variable in obj.variables.items():
        _annotate(variable, str(name))
    return obj


@annotate.register
def _(obj: xr.DataArray) -> xr.DataArray:
    _annotate(obj.variable, str(obj.name))
    for name, coord in obj.coords.items():
        _annotate(coord.variable, str(name))
    return obj


@annotate.register
def _(obj: xr.DataTree) -> xr.DataTree:
    for node in obj.subtree:
        for name, variable in node.dataset.variables.items():
            _annotate(variable, str(name))
    return obj

"""The solutions of a sweep, side by side: PT end, every FT end and every SWA average.

Every analysis compares *solutions* of one (plr, seed): the end of pre-training (``pt``), the
end of fine-tuning with each FLR (``ft=<flr>``) and the SWA average of each K (``swa=<K>``).
:func:`solution_weights` lines them up lazily along one ``solution`` dimension.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from lrscan.errors import LrscanError


def label(kind: str, value: float | int | None = None) -> str:
    """The ``solution`` label of a PT, FT or SWA solution: ``pt``, ``ft=0.001``, ``swa=5``."""
    return kind if value is None else f"{kind}={value:g}"


def pretrain(tree: xr.DataTree, part: str = "metrics") -> xr.Dataset:
    """Pre-training's ``metrics`` or ``weights`` up to the end of pre-training proper
    (``pretrain_epochs``, the PT solution): rows and checkpoints of pre-training continued
    for a forward SWA window (``swa_window.start``) lie past it and are left out. Lazy. A
    tree without a spec (metric rows made by hand) is taken whole."""
    ds = tree[f"pretrain/{part}"].to_dataset()
    if "spec" not in tree.attrs:
        return ds
    end = float(tree.attrs["spec"]["sweep"]["pretrain_epochs"])
    return ds.isel(epoch=(ds.epoch <= end + 1e-9).values)


def solution_weights(tree: xr.DataTree) -> xr.DataArray:
    """Weights of every solution, (plr, seed, solution, param), lazy when the store is.

    Non-index coordinates ``kind`` (pt / ft / swa) and ``value`` (the FLR, K, or NaN) say
    what each solution is.
    """
    parts, labels, kinds, values = [], [], [], []
    pt = pretrain(tree, "weights")["weights"]
    parts.append(pt.isel(epoch=-1, drop=True).expand_dims(solution=1, axis=2))
    labels.append(label("pt")), kinds.append("pt"), values.append(np.nan)
    if "swa" in tree.children:
        swa = tree["swa/weights"]["weights"]
        parts.append(swa.rename(swa="solution").drop_vars("solution"))
        for k in swa.swa.values:
            labels.append(label("swa", int(k))), kinds.append("swa"), values.append(float(k))
    if "finetune" in tree.children:
        ft = tree["finetune/weights"]["weights"].isel(epoch=-1, drop=True)
        parts.append(ft.transpose("plr", "seed", "flr", "param").rename(flr="solution").drop_vars("solution"))
        for flr in ft.flr.values:
            labels.append(label("ft", float(flr))), kinds.append("ft"), values.append(float(flr))
    out = xr.concat([p.drop_vars(["step"], errors="ignore") for p in parts], dim="solution",
                    coords="minimal", compat="override", join="override")
    return out.assign_coords(
        solution=np.array(labels, dtype=object),
        kind=("solution", np.array(kinds, dtype=object)),
        value=("solution", np.array(values)),
    )


def resolve(tree: xr.DataTree, name: str) -> str:
    """Turn a solution name into its label; ``ft_low`` / ``ft_high`` are the first / last FLR."""
    spec = tree.attrs["spec"]["sweep"]
    aliases = {"ft_low": label("ft", min(spec["flr"])), "ft_high": label("ft", max(spec["flr"]))}
    return aliases.get(name, name)


def default_pairs(tree: xr.DataTree, swa_k: int = 5) -> list[tuple[str, str]]:
    """The pairs the study reports (SPEC §5): FT low ↔ FT high, SWA(5) ↔ FT high, SWA(5) ↔ FT low.

    Uses the SWA of ``swa_k`` iterates, or the stored K closest to it.
    """
    if "finetune" not in tree.children:
        raise LrscanError("the store has no fine-tuning data (finetune_epochs = 0); geometry compares "
                          "fine-tuned solutions")
    pairs = [("ft_low", "ft_high")]
    ks = tree.attrs["spec"]["sweep"]["swa"]
    if ks:
        k = min(ks, key=lambda v: (abs(v - swa_k), v))
        pairs += [(label("swa", k), "ft_high"), (label("swa", k), "ft_low")]
    return [(resolve(tree, a), resolve(tree, b)) for a, b in pairs]


def si_slices(tree: xr.DataTree) -> list[slice]:
    """Slices of the ``param`` axis that hold the SI group — or, for a model trained off the
    sphere (no SI group), its trainable parameters."""
    layers = tree["layers"].to_dataset().load()
    group = layers.si.values if layers.si.values.any() else layers.trainable.values
    return [slice(int(a), int(b)) for a, b, keep in zip(layers.start.values, layers.stop.values, group) if keep]


def require_complete(tree: xr.DataTree, stages=("pretrain", "finetune", "swa")) -> None:
    """Raise unless every run of the given stages (those the store has) is done."""
    missing = []
    for stage in stages:
        if stage in tree.children:
            done = tree[f"{stage}/metrics"]["done"].values
            if not done.all():
                missing.append(f"{int((done == 0).sum())} {stage}")
    if missing:
        raise LrscanError(f"the store is still training ({', '.join(missing)} runs to do); "
                          "finish it first (`lrscan train`, or `lrscan import` for an imported store)")

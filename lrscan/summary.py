"""A plain-text summary of a store: what it holds and how much of its sweep is done."""

from __future__ import annotations

import os
import fsspec
import zarr

from lrscan.store import _root_attrs
from lrscan.store.status import stage_runs
from lrscan.spec import Spec


def _size(path: str | os.PathLike) -> int:
    fs, root = fsspec.core.url_to_fs(str(path))
    return fs.du(root)


def _grid(values) -> str:
    values = list(values)
    return f"{len(values)} ({values[0]:.3g} … {values[-1]:.3g})" if len(values) > 1 else f"1 ({values[0]:.3g})"


def summarise(path: str | os.PathLike, stages: dict[str, dict[str, int]] | None = None) -> str:
    """Describe a store in a few lines (the output of ``lrscan info``); ``stages`` are its
    runs per stage (:func:`lrscan.store.status.stage_runs`) when the caller has read them."""
    attrs = _root_attrs(path)
    spec = Spec.from_dict(attrs["spec"])
    status = stage_runs(path)[0] if stages is None else stages
    seeds = len(spec.seeds) * len(spec.data_seeds)
    lines = [
        f"store     {path}  (schema {attrs['lrscan_schema']}, lrscan {attrs['lrscan_version']}, "
        f"created {attrs['created']})",
        f"setup     {spec.model} on {spec.dataset}, "
        f"{'off the sphere' if spec.radius is None else f'radius {spec.radius:g}'}, batch {spec.batch_size}, "
        f"{attrs['steps_per_epoch']} steps per epoch",
        f"grid      PLR {_grid(spec.plr)}, FLR {_grid(spec.flr)}, {seeds} seeds "
        f"(training seeds {list(spec.seeds)} x data seeds {list(spec.data_seeds)})",
        f"schedule  pre-train {spec.pretrain_epochs:g} epochs"
        + (f" (ELR {spec.pretrain_switch['plr']:g} from epoch {spec.pretrain_switch['epoch']:g})"
           if spec.pretrain_switch else "")
        + f", fine-tune {spec.finetune_epochs:g} epochs "
        f"from epoch {spec.resolved_finetune_from:g}, SWA K = {list(spec.swa) or 'none'}",
    ]
    for stage, runs in status.items():
        extra = f", {runs['diverged']} diverged" if runs["diverged"] else ""
        lines.append(f"{stage:9s} {runs['done']}/{runs['total']} runs done{extra}")
    complete = all(runs["done"] == runs["total"] for runs in status.values())
    lines.append(f"size      {_size(path) / 1e6:.1f} MB on disk")
    root = zarr.open_group(str(path), mode="r")
    adaptive = [name for name in ("scan", "threshold") if f"analysis/{name}" in root]
    if adaptive:  # an adaptive search trains only the grid points it picks
        lines.append(f"status    a `lrscan {adaptive[0]}` store: only the PLRs the search picked are trained; "
                     f"its result is in /analysis/{adaptive[0]}")
    else:
        lines.append("status    complete" if complete else
                     f"status    incomplete: run `lrscan train --store {path}` with the same spec to finish")
    return "\n".join(lines)

"""Accuracy, loss, SWA, gradient norms and weight-group norms of a sweep's solutions."""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr

from lrscan.analyze import analyzer
from lrscan.analyze.evaluate import Evaluator
from lrscan.analyze.solutions import pretrain, resolve, solution_weights
from lrscan.analyze.study import WINDOW
from lrscan.errors import LrscanError
from lrscan.train.flat import si_norm, swa_average

SCORES = ("train_loss", "train_acc", "test_loss", "test_acc")


def last_window(metrics: xr.Dataset, window: float) -> xr.Dataset:
    """The logged rows within the last ``window`` epochs of a stage (at least the last row)."""
    end = metrics.epoch[-1]
    return metrics.isel(epoch=(metrics.epoch >= end - window).values | (metrics.epoch == end).values)


@analyzer("metrics")
def metrics(tree: xr.DataTree, window: float = WINDOW) -> xr.Dataset:
    """Final train/test loss and accuracy of every PT, FT and SWA solution.

    Parameters
    ----------
    tree
        An opened store.
    window
        Epochs at the end of pre-training over which the PT test accuracy is averaged
        (``pt_test_acc_mean`` / ``pt_test_acc_std``, as in the study's PT accuracy figure).

    Returns
    -------
    xr.Dataset
        ``pt_<score>(plr, seed)``, ``ft_<score>(plr, flr, seed)``, ``swa_<score>(plr, seed, swa)``
        for each score in train/test loss/accuracy (the stages the store has), and
        ``pt_test_acc_mean`` / ``pt_test_acc_std`` over the window. Lazy on a lazy store.
    """
    pt = pretrain(tree)
    out = {f"pt_{s}": pt[s].isel(epoch=-1, drop=True).drop_vars("step", errors="ignore") for s in SCORES}
    if "finetune" in tree.children:
        ft = tree["finetune/metrics"].to_dataset()
        out |= {f"ft_{s}": ft[s].isel(epoch=-1, drop=True).drop_vars("step", errors="ignore") for s in SCORES}
    if "swa" in tree.children:
        swa = tree["swa/metrics"].to_dataset()
        out |= {f"swa_{s}": swa[s] for s in SCORES}
    last = last_window(pt, window).test_acc
    out["pt_test_acc_mean"] = last.mean("epoch")
    out["pt_test_acc_std"] = last.std("epoch")
    return xr.Dataset(out, attrs={"window": window, "description": "final losses (mean cross-entropy) and "
                                  "accuracies (fraction correct) of every solution"})


@analyzer("swa", needs=("pretrain", "swa"))
def swa(tree: xr.DataTree, ks: list[int] | None = None) -> xr.Dataset:
    """SWA solutions of every K over the spec's SWA window, and their scores.

    The same computation as the trainer's (``swa_window``: forward from a start epoch, or
    the K epochs ending at a stop epoch, or the last K stored checkpoints): the average is
    rescaled back to the sphere (an SI model only sees its direction) and evaluated on the
    full train and test sets; models with BatchNorm get their statistics recomputed first.

    Parameters
    ----------
    ks
        Window sizes; the spec's ``swa`` list by default. Any K whose checkpoints the store
        keeps works.

    Returns
    -------
    xr.Dataset
        ``train_loss``, ``train_acc``, ``test_loss``, ``test_acc``, ``weight_norm`` over
        (plr, seed, swa).
    """
    ks = sorted(ks or tree.attrs["spec"]["sweep"]["swa"])
    weights = tree["pretrain/weights"]["weights"]
    if not ks or ks[0] < 1:
        raise LrscanError(f"swa needs window sizes of at least 1, got {ks}")
    evaluator = Evaluator.of(tree)
    plan = evaluator.setup.plan
    steps, members = plan.swa_members(ks)
    window = weights.sel(epoch=plan.epochs(steps)).transpose("plr", "seed", "epoch", "param").values
    points = swa_average(torch.from_numpy(window), members, evaluator.layers, evaluator.radius).numpy()
    shape = points.shape[:-1]  # (plr, seed, swa)
    data = np.broadcast_to(evaluator.data_index(tree).values[None, :, None], shape).reshape(-1)
    flat = evaluator.construct(points.reshape(-1, points.shape[-1]), data)
    out = {}
    for split in ("train", "test"):
        loss, acc = evaluator.evaluate(flat, data, split)
        out[f"{split}_loss"] = (("plr", "seed", "swa"), loss.reshape(shape))
        out[f"{split}_acc"] = (("plr", "seed", "swa"), acc.reshape(shape))
    out["weight_norm"] = (("plr", "seed", "swa"), si_norm(torch.from_numpy(flat), evaluator.layers, group=evaluator.group).numpy().reshape(shape))
    return xr.Dataset(out, coords={"plr": weights.plr, "seed": weights.seed, "swa": ks})


@analyzer("grad_norm")
def grad_norm(tree: xr.DataTree, window: float = WINDOW) -> xr.Dataset:
    """Mean stochastic-gradient norm of the SI group at the end of each stage.

    The trainer logs, for every row, the mean over the steps since the previous row of the
    SI-group gradient's L2 norm; this averages the rows of the last ``window`` epochs.
    """
    out = {"pt_grad_norm": last_window(pretrain(tree), window).grad_norm.mean("epoch")}
    if "finetune" in tree.children:
        ft = last_window(tree["finetune/metrics"].to_dataset(), window)
        out["ft_grad_norm"] = ft.grad_norm.mean("epoch")
    return xr.Dataset(out, attrs={"window": window})


@analyzer("group_norms")
def group_norms(tree: xr.DataTree, bins: int = 50, lo: float = -6.0, hi: float = 0.0) -> xr.Dataset:
    """Norms of every output channel of every SI tensor over the radius, and their log10 histogram.

    The norms are taken at three points of each (plr, seed), the panels of the study's figure:

    - ``init``: the pre-training checkpoint at epoch 0, the initial point (every store keeps
      it; it is the same for every PLR of a seed);
    - ``pretrain``: the checkpoint that ends pre-training, at ``pretrain_epochs`` (the ``pt``
      solution);
    - ``finetune``: the last checkpoint of the fine-tuning run with the lowest FLR (the
      ``ft_low`` solution), the same FLR for every PLR. The study fine-tunes below the PLR:
      wherever some FLR is below the PLR, the lowest FLR is the lowest one below it; a PLR
      under the whole FLR grid keeps the lowest FLR. Absent when the store has no fine-tuning.

    Parameters
    ----------
    tree
        An opened store.
    bins, lo, hi
        The histogram: ``bins`` equal bins of log10(‖W[i]‖ / ρ) between ``lo`` and ``hi``
        (the study's 50 on [−6, 0]). Values outside [lo, hi] are counted in the end bins
        (a norm of 0, log10 −∞, in the first), so every stored channel is counted once.

    Returns
    -------
    xr.Dataset
        ``group_norm(plr, seed, point, group)`` = ‖W[i]‖ / ρ for each output channel i (first
        axis) of each SI tensor, with the tensor's name as the non-index coordinate ``layer``
        (group) and the checkpoint's epoch as ``epoch`` (point); ``histogram(plr, seed, point,
        bin)``, the channel counts, ``bin`` being the bins' centres. attrs: ``bin_edges``
        (``bins + 1`` values) and ``finetune_flr`` (the FLR of the ``finetune`` point, with
        fine-tuning). A point whose weights were never stored (NaN, as for an imported store
        without an initial point) counts no channel. Lazy on a lazy store.
    """
    radius = tree.attrs["spec"]["sweep"]["radius"]
    layers = tree["layers"].to_dataset().load()
    weights, epochs, attrs = _norm_points(tree)
    parts, names = [], []
    for name, start, stop, shape, si in zip(layers.layer.values, layers.start.values, layers.stop.values,
                                            layers.shape.values, layers.si.values):
        if not si:
            continue
        rows = int(str(shape).split(",")[0])
        w = weights.isel(param=slice(int(start), int(stop))).data.astype(np.float64)
        # .reshape works alike on numpy and dask data: (..., rows * cols) -> (..., rows, cols)
        norms = (w.reshape(*w.shape[:-1], rows, -1) ** 2).sum(-1) ** 0.5
        parts.append(xr.DataArray(norms / radius, dims=("plr", "seed", "point", "group")))
        names += [str(name)] * rows
    group_norm = xr.concat(parts, dim="group").assign_coords(
        plr=weights.plr, seed=weights.seed, point=weights.point, epoch=("point", epochs),
        layer=("group", np.array(names, dtype=object)))
    edges = np.linspace(lo, hi, bins + 1)
    # Bin index by arithmetic, so it stays elementwise and lazy; out-of-range values go to the end bins.
    # Norms below the range all go to the first bin: raising them to just below it spares log10 the
    # zero of a dead channel (a warning). NaN (weights never stored) stays NaN, equal to no bin.
    log10 = np.log10(group_norm.clip(min=10.0 ** (lo - 1)))
    index = np.floor((log10 - lo) / (edges[1] - edges[0])).clip(0, bins - 1)
    histogram = (index == xr.DataArray(np.arange(bins), dims="bin")).sum("group")
    centers = (edges[:-1] + edges[1:]) / 2
    return xr.Dataset(
        {"group_norm": group_norm, "histogram": histogram.assign_coords(bin=centers)},
        attrs={"description": "per-channel norms of SI tensors over the radius at init, the end of pre-training "
                              "and after fine-tuning with the lowest FLR; histogram of their log10",
               "bin_edges": edges.tolist(), **attrs},
    )


def _norm_points(tree: xr.DataTree) -> tuple[xr.DataArray, np.ndarray, dict]:
    """Weights at the points of :func:`group_norms`, (plr, seed, point, param), lazy when the store
    is; the epoch of each point's checkpoint; and attrs saying which FT run the ``finetune`` point is."""
    pt = tree["pretrain/weights"]["weights"]
    solutions = solution_weights(tree)
    parts = [pt.isel(epoch=0, drop=True).drop_vars("step", errors="ignore"), solutions.sel(solution="pt")]
    # The pt solution is the checkpoint that ends pre-training, at pretrain_epochs.
    end = float(tree.attrs["spec"]["sweep"]["pretrain_epochs"])
    points, epochs, attrs = ["init", "pretrain"], [float(pt.epoch[0]), end], {}
    if "finetune" in tree.children:
        low = resolve(tree, "ft_low")
        parts.append(solutions.sel(solution=low))
        points.append("finetune")
        epochs.append(float(tree["finetune/weights"].epoch[-1]))
        attrs["finetune_flr"] = float(solutions.value.sel(solution=low))
    parts = [p.drop_vars(["solution", "kind", "value"], errors="ignore") for p in parts]
    weights = xr.concat(parts, dim="point", coords="minimal", compat="override", join="override")
    weights = weights.assign_coords(point=np.array(points, dtype=object))
    return weights.transpose("plr", "seed", "point", "param"), np.array(epochs), attrs

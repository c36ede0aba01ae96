"""Geometry of the solutions of a sweep: angles between them, error barriers between them (SPEC §5).

Both analyzers compare *pairs* of solutions of one (plr, seed) — by default the pairs the
study reports (:func:`~lrscan.analyze.solutions.default_pairs`) — for every (plr, seed) at
once. A pair is two solution names (``pt``, ``ft=<flr>``, ``swa=<K>``, or the aliases
``ft_low`` / ``ft_high``), and is labelled ``"a~b"`` along the ``pair`` dimension.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import xarray as xr

from lrscan.analyze import analyzer
from lrscan.analyze.evaluate import BN_MODES, Evaluator, blocks, rows_at_once
from lrscan.analyze.solutions import default_pairs, resolve, si_slices, solution_weights
from lrscan.errors import LrscanError
from lrscan.registry import closest

# Points per interpolation path, as in the study (SPEC §5): 11 for the synthetic MLP, 21 for
# the CNNs (and, lacking better knowledge, any other model).
N_POINTS = {"mlp": 11}
N_POINTS_DEFAULT = 21


def angle_between(u: np.ndarray, v: np.ndarray) -> float:
    """Angle between two vectors, in radians, computed in float64.

    Parameters
    ----------
    u, v
        Vectors of the same length (any shape; they are flattened).

    Returns
    -------
    float
        ``arccos(u·v / (|u| |v|))`` in [0, π]; NaN when either vector is zero.
    """
    u = np.asarray(u, dtype=np.float64).ravel()
    v = np.asarray(v, dtype=np.float64).ravel()
    return float(_angle(u @ v, u @ u, v @ v))


def barrier(curve: xr.DataArray, dim: str = "alpha") -> xr.DataArray:
    """Error barrier of a curve along the path between two solutions (SPEC §5).

    The largest height of ``curve`` above the chord joining its two ends, clipped at 0:
    ``max_α [e(α) - ((1-α) e(0) + α e(1))]``. Vectorised over every other dimension; lazy
    on dask input.

    Parameters
    ----------
    curve
        Values along ``dim``, whose coordinate runs from 0 to 1 (evenly spaced or not).
    dim
        The path coordinate.

    Returns
    -------
    xr.DataArray
        ``curve`` without ``dim``; NaN where the curve has a NaN.
    """
    alpha = curve[dim]
    if alpha.size < 2 or alpha.values[0] != 0 or alpha.values[-1] != 1:
        raise LrscanError(f"a barrier needs a curve whose {dim} runs from 0 to 1, got {alpha.values}")
    chord = (1 - alpha) * curve.isel({dim: 0}, drop=True) + alpha * curve.isel({dim: -1}, drop=True)
    return (curve - chord).max(dim, skipna=False).clip(min=0)


@analyzer("angles", needs=("pretrain",))
def angles(tree: xr.DataTree, pairs=None, swa_k: int = 5) -> xr.Dataset:
    """Angular distance between the solutions of each (plr, seed), in radians.

    The angle between two solutions is the arccos of the cosine between their SI weight
    vectors, computed in float64 from the stored weights. All angles come from one Gram
    matrix per (plr, seed), so computing the result reads every stored weight chunk once.

    Parameters
    ----------
    tree
        A store (:func:`lrscan.open`); lazy in, lazy out.
    pairs
        Pairs to report in ``angle``: (a, b) solution names or ``"a~b"`` strings, e.g.
        ``[("ft_low", "swa=5")]``. Default: the study's pairs (needs fine-tuning data).
    swa_k
        The SWA solution of the default pairs: the stored K closest to this.

    Returns
    -------
    xr.Dataset
        ``angle_matrix`` (plr, seed, solution, solution_b): the angle between every two
        solutions; ``angle`` (plr, seed, pair): the requested pairs, with ``pair_a`` and
        ``pair_b`` naming each pair's ends. NaN where a solution was not stored.
    """
    weights = solution_weights(tree)
    ends_a, ends_b = _pairs(tree, weights.solution.values, pairs, swa_k)
    si = np.concatenate([np.arange(s.start, s.stop) for s in si_slices(tree)])
    weights = weights.isel(param=si)
    if weights.chunks is not None:
        # One block per (plr, seed) holding all its solutions: each stored chunk feeds
        # exactly one block, so one compute reads it once.
        weights = weights.chunk(solution=-1, param=-1)
    matrix = xr.apply_ufunc(
        _angle_block,
        weights,
        input_core_dims=[["solution", "param"]],
        output_core_dims=[["solution", "solution_b"]],
        dask="parallelized",
        output_dtypes=[np.float64],
        dask_gufunc_kwargs={"output_sizes": {"solution_b": weights.sizes["solution"]}},
    )
    # Chunking made the labels dask arrays too; put the plain ones back.
    matrix = matrix.assign_coords(
        kind=("solution", weights.kind.values),
        value=("solution", weights.value.values),
        solution_b=weights.solution.values,
        kind_b=("solution_b", weights.kind.values),
        value_b=("solution_b", weights.value.values),
    )
    matrix.attrs = {"units": "rad", "description": "angle between the SI weight vectors of two solutions"}
    angle = matrix.sel(
        solution=xr.DataArray(np.array(ends_a, dtype=object), dims="pair"),
        solution_b=xr.DataArray(np.array(ends_b, dtype=object), dims="pair"),
    ).drop_vars(["solution", "solution_b", "kind", "value", "kind_b", "value_b"])
    angle = angle.assign_coords(_pair_coords(ends_a, ends_b))
    angle.attrs = {"units": "rad", "description": "angle between the SI weight vectors of each pair's solutions"}
    return xr.Dataset({"angle_matrix": matrix, "angle": angle})


@analyzer("barriers", needs=("pretrain", "finetune"))
def barriers(tree: xr.DataTree, pairs=None, swa_k: int = 5, n_points: int | None = None,
             bn_mode: str = "train") -> xr.Dataset:
    """Train and test error barriers on the straight paths between solutions, in percent.

    For each (plr, seed) and pair (A, B), the points θ(α) = (1-α) θ_A + α θ_B, rescaled to
    the sphere and, for BatchNorm models, with statistics recomputed on the training set,
    are evaluated on the train and test sets (error = 100 (1 - accuracy)); the barrier of
    each error curve is :func:`barrier`. The test error is measured in eval mode; the train
    error as ``bn_mode`` says. This runs the model, so the result is computed, not lazy.

    Parameters
    ----------
    tree
        A store (:func:`lrscan.open`) with fine-tuning data.
    pairs
        (a, b) solution names or ``"a~b"`` strings, e.g. ``[("ft_low", "swa=5")]``.
        Default: the study's pairs.
    swa_k
        The SWA solution of the default pairs: the stored K closest to this.
    n_points
        Points per path, ends included. Default: 11 for the synthetic MLP, 21 otherwise.
    bn_mode
        How BatchNorm models score the train error: ``"train"`` as the study does (train-mode
        BatchNorm on the unaugmented training set in order, in batches of the spec's
        ``batch_size``, each normalised with its own statistics; the points' statistics are
        not changed), or ``"eval"`` (the recomputed statistics, as the test error). The same
        for a model without BatchNorm.

    Returns
    -------
    xr.Dataset
        ``train_error`` and ``test_error`` (plr, seed, pair, alpha); ``train_barrier`` and
        ``test_barrier`` (plr, seed, pair). NaN where an end of the path was not stored or
        diverged. attrs: ``bn_mode``, the mode of the train error.
    """
    if bn_mode not in BN_MODES:
        raise LrscanError(f"bn_mode must be one of {', '.join(map(repr, BN_MODES))}, got {bn_mode!r}")
    weights = solution_weights(tree)
    ends_a, ends_b = _pairs(tree, weights.solution.values, pairs, swa_k)
    n_points = _n_points(tree, n_points)
    # Both ends side by side along a new axis, so a block reads its pairs' chunks once.
    ends = xr.concat([_select_pairs(weights, "solution", ends_a), _select_pairs(weights, "solution", ends_b)],
                     dim="end").transpose("plr", "seed", "pair", "end", "param")
    alpha = np.linspace(0, 1, n_points)
    # float32 like the stored weights: the projection and the model work in float32 anyway.
    step = alpha.astype(np.float32)[:, None]
    evaluator = Evaluator.of(tree)
    paths = ends.isel(end=0, param=0, drop=True)
    accuracy = {split: np.empty((paths.size, n_points), dtype=np.float32) for split in ("train", "test")}
    # Block by block of paths (at least one), and their points a budget's worth at a time (a
    # path of a large model is many budgets), each point built, made valid and scored: memory
    # grows neither with the number of paths nor with their points.
    for rows, pair_ends, data in blocks(ends, evaluator.data_index(tree), keep=("end", "param")):
        at_once, total = rows_at_once(pair_ends.shape[-1]), len(pair_ends) * n_points
        for first in range(0, total, at_once):
            which = np.arange(first, min(first + at_once, total))
            path, where = np.divmod(which, n_points)
            points = (1 - step[where]) * pair_ends[path, 0] + step[where] * pair_ends[path, 1]
            index = data[path]
            # The statistics pass scores the train-mode train error too, where it can: one pass less.
            if bn_mode == "train":
                points, train = evaluator.construct_scored(points, index)
            else:
                points, train = evaluator.construct(points, index), None
            if train is None:
                train = evaluator.evaluate(points, index, "train", bn_mode=bn_mode)[1]
            test = evaluator.evaluate(points, index, "test")[1]
            for split, acc in (("train", train), ("test", test)):
                accuracy[split][rows.start + path, where] = acc
    out = xr.Dataset(coords={**paths.coords, **_pair_coords(ends_a, ends_b), "alpha": alpha})
    for split, mode in (("train", bn_mode), ("test", "eval")):
        error = 100 * (1 - accuracy[split].astype(np.float64))
        out[f"{split}_error"] = xr.DataArray(
            error.reshape(*paths.shape, n_points), dims=("plr", "seed", "pair", "alpha"),
            attrs={"units": "%", "bn_mode": mode,
                   "description": f"{split} error along the path from pair_a to pair_b"},
        )
    for split in ("train", "test"):
        out[f"{split}_barrier"] = barrier(out[f"{split}_error"]).assign_attrs(
            units="%", description=f"{split} error barrier between pair_a and pair_b"
        )
    out.attrs = {"units": "%", "bn_mode": bn_mode}
    return out


def _angle(dot, uu, vv):
    """Angle from an inner product and the two squared norms."""
    # sqrt(uu * vv) rather than sqrt(uu) * sqrt(vv): for u = v it is exactly uu, so a vector
    # is at angle exactly 0 from itself instead of ~1e-8 (arccos is steep near 1).
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.arccos(np.clip(dot / np.sqrt(uu * vv), -1.0, 1.0))


def _angle_block(weights: np.ndarray) -> np.ndarray:
    """Angles between every two solutions of each run in a block (..., solution, param)."""
    w = weights.astype(np.float64)
    gram = w @ np.swapaxes(w, -1, -2)
    # The norms are the Gram diagonal: no second pass over the weights.
    sq = np.diagonal(gram, axis1=-2, axis2=-1)
    return _angle(gram, sq[..., :, None], sq[..., None, :])


def _pairs(tree: xr.DataTree, solutions: Iterable[str], pairs, swa_k: int) -> tuple[list[str], list[str]]:
    """The solution labels of each pair's two ends, checked against the stored solutions."""
    solutions = [str(s) for s in solutions]
    names = solutions + (["ft_low", "ft_high"] if any(s.startswith("ft=") for s in solutions) else [])
    ends_a, ends_b = [], []
    for pair in default_pairs(tree, swa_k) if pairs is None else pairs:
        ends = pair.split("~") if isinstance(pair, str) else list(pair)
        if len(ends) != 2:
            raise LrscanError(f"a pair is two solution names (or 'a~b'), got {pair!r}")
        labels = []
        for name in ends:
            found = resolve(tree, name)
            if found not in solutions:
                raise LrscanError(
                    f"unknown solution {name!r}{closest(str(name), names)}; valid: {', '.join(names)}"
                )
            labels.append(found)
        ends_a.append(labels[0])
        ends_b.append(labels[1])
    return ends_a, ends_b


def _pair_coords(ends_a: list[str], ends_b: list[str]) -> dict:
    return {
        "pair": ("pair", np.array([f"{a}~{b}" for a, b in zip(ends_a, ends_b)], dtype=object)),
        "pair_a": ("pair", np.array(ends_a, dtype=object)),
        "pair_b": ("pair", np.array(ends_b, dtype=object)),
    }


def _select_pairs(arr: xr.DataArray, dim: str, labels: list[str]) -> xr.DataArray:
    """``arr`` at one solution per pair, along a new ``pair`` dimension."""
    picked = arr.sel({dim: xr.DataArray(np.array(labels, dtype=object), dims="pair")})
    return picked.drop_vars([dim, "kind", "value"], errors="ignore")


def _n_points(tree: xr.DataTree, n_points: int | None) -> int:
    if n_points is None:
        return N_POINTS.get(tree.attrs["spec"]["sweep"]["model"], N_POINTS_DEFAULT)
    if isinstance(n_points, bool) or not isinstance(n_points, (int, np.integer)) or n_points < 2:
        raise LrscanError(f"n_points must be a whole number of at least 2 (the two ends), got {n_points!r}")
    return int(n_points)

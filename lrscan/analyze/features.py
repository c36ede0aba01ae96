"""Feature sparsity (SPEC §5): how many of the data's features each solution relies on.

On the synthetic ticks data every one of the K features separates the classes on its own.
The single-feature test set k keeps only feature k informative, so a solution's accuracy on
it says how much the solution relies on feature k. The study's finding: 2A solutions rely
strongly on one or a few features, small PLRs spread weak reliance over all, regime 3 uses
none. :func:`sparsity_index` condenses a solution's K accuracies into numbers that say so.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from lrscan.analyze import analyzer
from lrscan.analyze.evaluate import Evaluator, blocks
from lrscan.analyze.solutions import require_complete, solution_weights
from lrscan.errors import LrscanError

SPLIT = "single_feature"


def sparsity_index(feature_acc: xr.DataArray, chance: float = 0.5, noise_floor: float = 0.0) -> xr.Dataset:
    """Reliance, effective feature count and sparsity of accuracies along ``feature``.

    The *excess* accuracy on feature k is ``a_k = max(acc_k - chance - noise_floor, 0)``:
    what the feature adds over guessing, beyond what sampling noise alone produces. From it:

    - ``reliance = Σ a_k``, the total excess (0: the solution uses no feature);
    - ``feature_count = (Σ a_k)² / Σ a_k²``, the participation ratio: the effective number
      of features the solution relies on, in [1, K]. It is 1 when one feature carries all
      the excess and K when all carry the same, and does not depend on the order of the
      features or on the overall scale of the excess — it measures how concentrated the
      reliance is, while ``reliance`` says how strong it is. NaN when ``reliance = 0``;
    - ``sparsity = 1 - (feature_count - 1) / (K - 1)``, in [0, 1]: 1 relies on one feature,
      0 on all alike (1 wherever a count exists when K = 1).

    Soft-thresholding at ``noise_floor`` (rather than clipping at chance) keeps features the
    solution does not use out of the count: with n samples per set an unused feature still
    scores chance ± sqrt(chance (1 - chance) / n), and K such noisy excesses would make a
    solution that uses nothing look as if it spread its reliance over several features.

    Parameters
    ----------
    feature_acc
        Accuracies with a ``feature`` dimension (any others are kept).
    chance
        Accuracy of guessing (0.5 for balanced binary labels).
    noise_floor
        Excess over chance that counts as no reliance.

    Returns
    -------
    xr.Dataset
        ``reliance``, ``feature_count`` and ``sparsity``, over the other dimensions.
    """
    excess = (feature_acc - chance - noise_floor).clip(min=0)
    reliance = excess.sum("feature", skipna=False)
    # Dividing by the largest excess keeps the squares from underflowing.
    top = excess.max("feature", skipna=False)
    share = excess / top.where(top > 0)
    k = feature_acc.sizes["feature"]
    count = (share.sum("feature", skipna=False) ** 2 / (share**2).sum("feature", skipna=False)).clip(1, k)
    sparsity = 1 - (count - 1) / (k - 1) if k > 1 else xr.ones_like(count).where(count.notnull())
    return xr.Dataset({"reliance": reliance, "feature_count": count, "sparsity": sparsity})


@analyzer("features", needs=("pretrain",), sets=(SPLIT,))
def features(tree: xr.DataTree, noise_floor: float | None = None) -> xr.Dataset:
    """Accuracy of every solution on each single-feature test set, and its sparsity index.

    Every solution of :func:`~lrscan.analyze.solutions.solution_weights` (``pt``, each
    ``swa=K``, each ``ft=<flr>``) is scored on the dataset's single-feature test sets (one
    per feature, in which only that feature is informative) and on the full test set, each
    split in one batched evaluation over all (plr, seed, solution). :func:`sparsity_index`
    summarises the accuracies. Solutions whose weights are not finite (diverged runs) get
    NaN rather than the accuracy of the constant guess a model makes on NaN weights. This
    runs the model, so the result is computed, not lazy.

    Parameters
    ----------
    tree
        An opened, finished store of a dataset with single-feature test sets (ticks).
    noise_floor
        Excess accuracy over chance that counts as no reliance on a feature. Default: two
        standard errors of a chance-level accuracy on one set, ``2 sqrt(c (1 - c) / n)``
        with chance c and n samples per set (0.032 for the paper's 1,000 samples).

    Returns
    -------
    xr.Dataset
        ``feature_acc(plr, seed, solution, feature)``; ``sorted_acc(plr, seed, solution,
        rank)``, each run's accuracies sorted in descending order (rank 1 = the feature it
        relies on most) and ``sorted_acc_mean(plr, solution, rank)`` its mean over seeds (the
        study's curve); ``test_acc(plr, seed, solution)``, the full test accuracy of the same
        solutions; ``reliance``, ``feature_count`` and ``sparsity`` (plr, seed, solution).
        attrs: ``chance``, ``noise_floor``, ``n_single`` (samples per set).

    Raises
    ------
    LrscanError
        If the dataset has no single-feature test sets, or the store is still training.
    """
    require_complete(tree)
    evaluator = Evaluator.of(tree)
    if SPLIT not in evaluator.sets:
        raise LrscanError(f"features needs single-feature test sets, which dataset "
                          f"{tree.attrs['spec']['sweep']['dataset']!r} does not have (only ticks does)")
    weights = solution_weights(tree)
    runs = weights.isel(param=0, drop=True)
    n_features, n_single = evaluator.sets[SPLIT][1].shape[-2:]
    feature_acc = np.empty((runs.size, n_features), dtype=np.float32)
    test_acc = np.empty(runs.size, dtype=np.float32)
    for rows, flat, data in blocks(weights, evaluator.data_index(tree)):
        feature_acc[rows] = evaluator.evaluate(flat, data, split=SPLIT)[1]
        test_acc[rows] = evaluator.evaluate(flat, data, split="test")[1]

    chance = 1 / evaluator.setup.data[evaluator.data_seeds[0]].n_classes
    if noise_floor is None:
        noise_floor = 2 * float(np.sqrt(chance * (1 - chance) / n_single))
    shape = runs.shape
    acc = xr.DataArray(feature_acc.reshape(*shape, n_features), dims=(*runs.dims, "feature"),
                       coords={**runs.coords, "feature": np.arange(n_features)})
    ranked = -np.sort(-acc.values, axis=-1)  # descending; NaN rows stay NaN
    sorted_acc = xr.DataArray(ranked, dims=(*runs.dims, "rank"),
                              coords={**runs.coords, "rank": np.arange(1, n_features + 1)})
    return xr.Dataset(
        {
            "feature_acc": acc,
            "sorted_acc": sorted_acc,
            "sorted_acc_mean": sorted_acc.mean("seed"),
            "test_acc": xr.DataArray(test_acc.reshape(shape), dims=runs.dims, coords=runs.coords),
            **sparsity_index(acc, chance, noise_floor).data_vars,
        },
        attrs={"chance": chance, "noise_floor": noise_floor, "n_single": int(n_single),
               "description": "accuracy of each solution on each single-feature test set, sorted per run, "
                              "and the participation-ratio sparsity index of the excess over chance"},
    )

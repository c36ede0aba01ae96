"""The study's "best PLR": scores per PLR from planted accuracies, ties within the noise."""

import numpy as np
import pytest
import xarray as xr

from lrscan.analyze.best import best, plr_scores, score_noise
from lrscan.analyze.noise import accuracy_se
from lrscan.errors import LrscanError

N_TEST = 2000
PLR = np.array([1e-3, 3e-3, 1e-2, 3e-2])
FLR = np.array([1e-3, 2e-3, 5e-3])


def planted_tree(ft: np.ndarray, swa: np.ndarray | None = None) -> xr.DataTree:
    """A store-shaped tree whose runs end with the given test accuracies."""
    seeds = np.arange(ft.shape[-1])
    children = {"finetune/metrics": xr.Dataset(
        {"test_acc": (("plr", "flr", "seed", "epoch"), ft[..., None])},
        coords={"plr": PLR, "flr": FLR, "seed": seeds, "epoch": [10.0]})}
    if swa is not None:
        children["swa/metrics"] = xr.Dataset({"test_acc": (("plr", "seed", "swa"), swa)},
                                             coords={"plr": PLR, "seed": seeds, "swa": [2, 5]})
    return xr.DataTree.from_dict(children)


def test_ft_score_averages_the_lower_flrs_only_and_ft_higher_the_higher_ones():
    rng = np.random.default_rng(0)
    ft = rng.uniform(0.6, 0.9, size=(PLR.size, FLR.size, 3))
    scores = plr_scores(planted_tree(ft), n_test=N_TEST)
    for i, plr in enumerate(PLR):
        lower, higher = FLR < plr, FLR > plr  # FLR == PLR (1e-3) is neither
        expect_low = ft[i, lower].mean(0).mean() if lower.any() else np.nan
        expect_high = ft[i, higher].mean(0).mean() if higher.any() else np.nan
        np.testing.assert_allclose(scores.ft.sel(plr=plr), expect_low, rtol=1e-12)
        np.testing.assert_allclose(scores.ft_higher.sel(plr=plr), expect_high, rtol=1e-12)
        assert int(scores.n_flr_lower.sel(plr=plr)) == lower.sum()
        assert int(scores.n_flr_higher.sel(plr=plr)) == higher.sum()
    assert np.isnan(scores.ft.sel(plr=1e-3))  # no FLR below the lowest PLR


def test_a_diverged_counted_run_leaves_its_plr_without_a_score():
    ft = np.full((PLR.size, FLR.size, 2), 0.8)
    ft[2, 1, 0] = np.nan  # PLR 1e-2, FLR 2e-3 (below it), seed 0 diverged
    ft[1, 2, 1] = np.nan  # PLR 3e-3, FLR 5e-3: above it, so only ft_higher loses it
    scores = plr_scores(planted_tree(ft), n_test=N_TEST)
    assert np.isnan(scores.ft.sel(plr=1e-2))
    assert np.isfinite(scores.ft.sel(plr=3e-3)) and np.isnan(scores.ft_higher.sel(plr=3e-3))


def test_swa_score_is_each_seeds_best_k():
    ft = np.full((PLR.size, FLR.size, 2), 0.8)
    swa = np.array([[[0.7, 0.75], [0.72, 0.71]]] * PLR.size)
    scores = plr_scores(planted_tree(ft, swa), n_test=N_TEST)
    np.testing.assert_allclose(scores.swa, (0.75 + 0.72) / 2)


def test_noise_is_the_larger_of_binomial_and_seed_spread():
    quiet = xr.DataArray([[0.8, 0.8, 0.8, 0.8]], dims=("plr", "seed"))
    mean, se = score_noise(quiet, N_TEST)
    np.testing.assert_allclose(se, accuracy_se(0.8, N_TEST) / 2)
    spread = xr.DataArray([[0.6, 0.9, 0.7, 1.0]], dims=("plr", "seed"))
    mean, se = score_noise(spread, N_TEST)
    np.testing.assert_allclose(se, np.std([0.6, 0.9, 0.7, 1.0], ddof=1) / 2)


def scores_of(values, se):
    return xr.Dataset({"ft": ("plr", np.asarray(values, float)), "ft_se": ("plr", np.asarray(se, float))},
                      coords={"plr": PLR})


def test_the_best_is_alone_when_the_others_are_beyond_the_noise():
    found = best(scores_of([0.70, 0.80, 0.90, 0.75], [0.005] * 4))
    assert (found.plr, found.low, found.high, found.tied) == (1e-2, 1e-2, 1e-2, (1e-2,))
    assert found.accuracy == 0.90 and found.se == 0.005 and found.kind == "ft"


def test_plrs_within_the_noise_of_the_best_are_tied_with_it():
    # 0.895 vs 0.90: z = 0.005 / sqrt(2 * 0.005^2) = 0.71, tied; 0.87: z = 4.2, not.
    found = best(scores_of([0.87, 0.895, 0.90, 0.893], [0.005] * 4))
    assert found.tied == (3e-3, 1e-2, 3e-2) and (found.low, found.high) == (3e-3, 3e-2)
    # The same differences with ten times the noise: everything is tied.
    assert best(scores_of([0.87, 0.895, 0.90, 0.893], [0.05] * 4)).tied == tuple(PLR)


def test_no_score_gives_none_and_an_unknown_kind_is_refused():
    assert best(scores_of([np.nan] * 4, [np.nan] * 4)) is None
    assert best(scores_of([0.8] * 4, [0.01] * 4), kind="swa") is None
    with pytest.raises(LrscanError, match="unknown kind"):
        best(scores_of([0.8] * 4, [0.01] * 4), kind="fine")


def test_best_of_a_tree_reads_the_lower_flr_score_not_the_highest_single_run():
    # PLR 1e-3's runs trained on with higher FLRs reach the highest single accuracies; the
    # study's best is the PLR whose fine-tuning below it does best: 1e-2.
    ft = np.full((PLR.size, FLR.size, 2), 0.6)
    ft[0] = 0.95
    ft[2] = 0.85
    found = best(plr_scores(planted_tree(ft), n_test=N_TEST))
    assert found.plr == 1e-2 and found.tied == (1e-2,)
    assert found.describe() == ("best PLR 0.01 fine-tuned with a lower LR (mean over FLR < PLR): 85% ± 0.57 test "
                                "accuracy; PLR 0.01 cannot be told from it within the noise")

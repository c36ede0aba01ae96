"""Feature sparsity: single-feature accuracies of every solution, and the sparsity index."""

import numpy as np
import pytest
import torch
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import lrscan
from lrscan.analyze import ANALYZERS
from lrscan.analyze.evaluate import Evaluator
from lrscan.analyze.features import features, sparsity_index
from lrscan.analyze.solutions import solution_weights
from lrscan.data.ticks import single_feature_sets
from lrscan.errors import LrscanError
from lrscan.models import MODELS


@pytest.fixture(scope="module")
def result(trained_small):
    return features(lrscan.open(trained_small))


def planted(values) -> xr.DataArray:
    return xr.DataArray(np.asarray(values, dtype=np.float64), dims="feature")


def test_feature_accuracies_match_a_plain_forward_pass(trained_small, result):
    tree = lrscan.open(trained_small)
    spec = tree.attrs["spec"]
    data = spec["data"]
    weights = solution_weights(tree).load()
    model = MODELS["mlp"].build(spec["model"], (data["dim"],), 2)
    for plr in weights.plr.values:
        for seed in weights.seed.values:
            run = weights.sel(plr=plr, seed=seed)
            x, y = single_feature_sets(int(run.data_seed), data["n_single"], n_features=data["n_features"],
                                       dim=data["dim"], shape=data["shape"])
            for solution in run.solution.values:
                vector = torch.from_numpy(run.sel(solution=solution).values)
                torch.nn.utils.vector_to_parameters(vector, model.parameters())
                with torch.no_grad():
                    correct = (model(torch.from_numpy(x))[..., 0] > 0).numpy() == (y == 1)
                np.testing.assert_allclose(
                    result.feature_acc.sel(plr=plr, seed=seed, solution=solution).values, correct.mean(-1),
                    atol=1e-6, err_msg=f"plr={plr} seed={seed} {solution}")


def test_test_accuracy_is_the_stored_one(trained_small, result):
    tree = lrscan.open(trained_small)
    pt = tree["pretrain/metrics"]["test_acc"].isel(epoch=-1)
    ft = tree["finetune/metrics"]["test_acc"].isel(epoch=-1)
    swa = tree["swa/metrics"]["test_acc"]
    np.testing.assert_allclose(result.test_acc.sel(solution="pt").values, pt.values, atol=1e-6)
    for flr in ft.flr.values:
        np.testing.assert_allclose(result.test_acc.sel(solution=f"ft={flr:g}").values, ft.sel(flr=flr).values,
                                   atol=1e-6)
    for k in swa.swa.values:
        np.testing.assert_allclose(result.test_acc.sel(solution=f"swa={k}").values, swa.sel(swa=k).values, atol=1e-6)


def test_result_layout(trained_small, result):
    assert result.feature_acc.dims == ("plr", "seed", "solution", "feature")
    assert result.sorted_acc.dims == ("plr", "seed", "solution", "rank")
    assert result.sorted_acc_mean.dims == ("plr", "solution", "rank")
    for name in ("test_acc", "reliance", "feature_count", "sparsity"):
        assert result[name].dims == ("plr", "seed", "solution")
    assert list(result["feature"].values) == list(range(16)) and list(result["rank"].values) == list(range(1, 17))
    assert list(result.solution.values) == ["pt", "swa=2", "swa=3", "ft=0.001", "ft=0.01"]
    assert result.attrs["chance"] == 0.5 and result.attrs["n_single"] == 32
    assert result.attrs["noise_floor"] == pytest.approx(2 * 0.5 / np.sqrt(32))
    assert ANALYZERS["features"].needs == ("pretrain",)


def test_sorted_curve_is_a_descending_permutation(result):
    ranked = result.sorted_acc.values
    assert (np.diff(ranked, axis=-1) <= 0).all()
    np.testing.assert_array_equal(np.sort(ranked, -1), np.sort(result.feature_acc.values, -1))
    np.testing.assert_allclose(result.sorted_acc_mean.values, ranked.mean(1), rtol=1e-6)


def test_index_of_one_relied_on_feature():
    index = sparsity_index(planted([1.0] + [0.5] * 15))
    assert index.feature_count == 1 and index.sparsity == 1 and index.reliance == 0.5


def test_index_of_evenly_spread_reliance():
    index = sparsity_index(planted([0.7] * 16), noise_floor=0.05)
    assert index.feature_count == pytest.approx(16) and index.sparsity == pytest.approx(0)
    assert index.reliance == pytest.approx(16 * 0.15)


def test_index_of_no_reliance_is_nan():
    for acc in ([0.5] * 16, [0.52, 0.48] * 8):  # chance, and chance within the noise floor
        index = sparsity_index(planted(acc), noise_floor=0.03)
        assert np.isnan(index.feature_count) and np.isnan(index.sparsity) and index.reliance == 0


def test_noise_floor_keeps_unused_features_out_of_the_count():
    acc = [0.95, 0.9] + [0.53, 0.47] * 7
    assert sparsity_index(planted(acc), noise_floor=0.0).feature_count > 2.2
    assert sparsity_index(planted(acc), noise_floor=0.04).feature_count == pytest.approx(2, abs=0.01)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_feature_count_is_in_range_and_ignores_feature_order(data):
    k = data.draw(st.integers(1, 16))
    acc = data.draw(arrays(np.float64, k, elements=st.floats(0, 1)))
    order = data.draw(st.permutations(range(k)))
    index = sparsity_index(planted(acc), noise_floor=0.01)
    shuffled = sparsity_index(planted(acc[list(order)]), noise_floor=0.01)
    if (acc - 0.5 - 0.01 > 0).any():
        assert 1 <= index.feature_count <= k and 0 <= index.sparsity <= 1
    else:
        assert np.isnan(index.feature_count)
    xr.testing.assert_allclose(index, shuffled)


def test_diverged_solutions_get_nan(trained_small):
    tree = lrscan.open(trained_small).load()
    weights = tree["pretrain/weights"].to_dataset()
    weights["weights"][0, 0, -1, 0] = np.nan  # the PT solution of (plr 0, seed 0)
    tree["pretrain/weights"] = weights
    result = features(tree)
    pt = result.sel(plr=result.plr[0], seed=0, solution="pt")
    assert pt.feature_acc.isnull().all() and np.isnan(pt.test_acc) and np.isnan(pt.feature_count)
    assert result.feature_acc.isnull().sum() == 16


def test_dataset_without_single_feature_sets_is_an_error(trained_small, monkeypatch, digest):
    every = Evaluator.sets.func
    monkeypatch.setattr(Evaluator, "sets", property(
        lambda self: {k: v for k, v in every(self).items() if k != "single_feature"}))
    before = digest(trained_small)
    with pytest.raises(LrscanError, match="single-feature test sets") as err:
        lrscan.open(trained_small).lrscan.features()
    assert "\n" not in str(err.value)
    assert digest(trained_small) == before

"""Regimes: labels decided within the noise, on planted tables and planted stores, and the boundaries."""

import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import brentq

import lrscan
from lrscan.analyze import ANALYZERS
from lrscan.analyze.geometry import barrier
from lrscan.analyze.boundaries import boundary_interval, locate_boundary
from lrscan.analyze.noise import accuracy_se, barrier_se, barrier_z, flr_z, swa_z
from lrscan.analyze.regimes import LABELS, OUTCOMES, TESTS, classify, regimes
from lrscan.errors import LrscanError
from lrscan.spec import load_spec
from tests.conftest import SMALL

PLR = np.logspace(-4, 0, 9)  # 1e-4 ... 1, half a decade apart
FLR = (1e-5, 1e-4)
N_TEST = 2000  # the planted store's test set (the ticks default): an accuracy's SE is about 0.6 points
# The planted regime of each PLR, and the metrics that put a run there.
PLANTED = ["1", "1", "2A", "2A", "2B", "2B", "3", "3", "3"]
PT_LOSS = {"1": 1e-3, "2A": 0.1, "2B": 0.3, "3": 0.69}
PT_ACC = {"1": 0.9, "2A": 0.8, "2B": 0.75, "3": 0.5}
# 2B: a 5-point FLR dependence (about 5 SE of the difference) and SWA 10 points short (about 9 SE).
FT_ACC = {"1": (0.9, 0.9), "2A": (0.92, 0.92), "2B": (0.85, 0.9), "3": (0.5, 0.5)}
SWA_ACC = {"1": 0.9, "2A": 0.92, "2B": 0.8, "3": 0.5}
# Where the boundaries must fall: between the planted PLRs on either side.
EXPECTED = {"1|2": np.sqrt(PLR[1] * PLR[2]), "2A|2B": np.sqrt(PLR[3] * PLR[4]), "2|3": np.sqrt(PLR[5] * PLR[6])}
EDGES = {"1|2": (PLR[1], PLR[2]), "2A|2B": (PLR[3], PLR[4]), "2|3": (PLR[5], PLR[6])}
EPOCHS = np.arange(0.0, 41.0)
N_SEEDS = 3
ALPHA = np.linspace(0, 1, 11)


@pytest.fixture(scope="module")
def spec_tables():
    """The spec a store of the planted sweep records (tables as in the root attrs), pre-training
    as long as the planted curves (``pretrain`` reads rows up to ``pretrain_epochs``)."""
    return load_spec(overrides=[*SMALL, f"plr={PLR.tolist()}", f"flr={list(FLR)}", "swa=[2, 5]",
                                f"data.n_test={N_TEST}", "pretrain_epochs=40", "finetune_from=40"]).to_dict()


def metrics(labels=PLANTED, seeds=N_SEEDS):
    """Per-run final metrics of a planted sweep: labels[i] is the regime of PLR i, every seed."""
    per_run = lambda table: np.array([[table[label]] * seeds for label in labels], dtype=np.float64)  # noqa: E731
    return {
        "pt_loss": per_run(PT_LOSS),
        "pt_acc": per_run(PT_ACC),
        "ft_acc": per_run(FT_ACC).transpose(0, 2, 1).copy(),  # (plr, flr, seed)
        "swa_acc": per_run(SWA_ACC),
        "diverged": np.full((len(labels), seeds), np.nan),
        "barrier": np.zeros((len(labels), seeds)),  # FT low ~ FT high: no barrier anywhere
    }


def barrier_result(test_barrier, flr=FLR, ends=8.0) -> xr.Dataset:
    """A `barriers` result holding one pair, FT low ~ FT high: error curves rising ``test_barrier``
    above ends of ``ends`` % (a tent peaking mid-path), and their barrier."""
    n_plr, n_seed = test_barrier.shape
    low, high = (f"ft={v:g}" for v in (min(flr), max(flr)))
    tent = 1 - np.abs(2 * ALPHA - 1)
    error = xr.DataArray(ends + test_barrier[..., None, None] * tent, dims=("plr", "seed", "pair", "alpha"))
    out = xr.Dataset({"test_error": error}, coords={
        "plr": PLR[:n_plr], "seed": np.arange(n_seed), "pair": [f"{low}~{high}"], "alpha": ALPHA,
        "pair_a": ("pair", [low]), "pair_b": ("pair", [high])})
    out["test_barrier"] = barrier(out.test_error)
    return out


def make_tree(spec, m, *, finetune=True, swa=True, barriers=True, flr=FLR) -> xr.DataTree:
    """An in-memory store with the layout `lrscan train` writes, metrics constant after epoch 0;
    ``barriers``: persist m's barriers (True), none (False), or this result."""
    n_plr, n_seed = m["pt_loss"].shape
    runs = {"plr": PLR[:n_plr], "seed": np.arange(n_seed),
            "train_seed": ("seed", np.arange(n_seed)), "data_seed": ("seed", np.zeros(n_seed, int))}
    done = np.ones((n_plr, n_seed), np.uint8)

    def curve(final, start):  # the init row, then the final value at every logged epoch
        return np.where(EPOCHS == 0, start, final[..., None]).astype(np.float32)

    spec = {**spec, "sweep": {**spec["sweep"], "flr": list(flr)}}
    nodes = {
        "/": xr.Dataset(attrs={"spec": spec}),
        "/pretrain/metrics": xr.Dataset(
            {"train_loss": (("plr", "seed", "epoch"), curve(m["pt_loss"], 0.69)),
             "test_acc": (("plr", "seed", "epoch"), curve(m["pt_acc"], 0.5)),
             "diverged_epoch": (("plr", "seed"), m["diverged"]),
             "done": (("plr", "seed"), done)},
            coords={**runs, "epoch": EPOCHS}),
    }
    if finetune:
        ft_epochs = np.array([40.0, 41.0, 42.0])
        nodes["/finetune/metrics"] = xr.Dataset(
            {"test_acc": (("plr", "flr", "seed", "epoch"), np.repeat(m["ft_acc"][..., None], 3, -1)),
             "done": (("plr", "flr", "seed"), np.ones((n_plr, len(flr), n_seed), np.uint8))},
            coords={**runs, "flr": list(flr), "epoch": ft_epochs})
    if swa:
        nodes["/swa/metrics"] = xr.Dataset(
            {"test_acc": (("plr", "seed", "swa"), np.repeat(m["swa_acc"][..., None], 2, -1)),
             "done": (("plr", "seed"), done)},
            coords={**runs, "swa": [2, 5]})
    if barriers is True:
        barriers = barrier_result(m["barrier"], flr)
    if barriers is not False:
        nodes["/analysis/barriers"] = barriers
    return xr.DataTree.from_dict(nodes)


def labels_of(result) -> list[list[str]]:
    return result.regime.values.tolist()


def test_planted_regimes_are_recovered(spec_tables):
    result = regimes(make_tree(spec_tables, metrics()))
    assert labels_of(result) == [[label] * N_SEEDS for label in PLANTED]
    assert result.regime_mode.values.tolist() == PLANTED
    assert result.regime_pooled.values.tolist() == PLANTED
    assert result.regime.dims == ("plr", "seed") and result.regime.dtype == object
    share = result.regime_share.transpose("plr", "label")
    np.testing.assert_array_equal(share.values, [[float(label == p) for label in LABELS] for p in PLANTED])
    assert result.pooled.values.tolist() == [label in ("2A", "2B") for label in PLANTED]
    for name, plr in EXPECTED.items():
        np.testing.assert_allclose(result.boundary_plr.sel(boundary=name).values, plr, rtol=1e-12)
        assert result.boundary_geomean.sel(boundary=name) == pytest.approx(plr)
        assert result.boundary_log10_mean.sel(boundary=name) == pytest.approx(np.log10(plr))
        assert result.boundary_log10_std.sel(boundary=name) == 0
        # Over all seeds: the same step, and the grid step it lies in as the interval.
        assert result.boundary_fit.sel(boundary=name) == pytest.approx(plr)
        assert (result.boundary_low.sel(boundary=name), result.boundary_high.sel(boundary=name)) == EDGES[name]
    assert result.attrs["chance"] == 0.5 and result.attrs["convergence_loss"] == 1e-2
    assert result.attrs["n_test"] == N_TEST and result.attrs["barrier_points"] == len(ALPHA) - 2
    assert "regime 2" in result.attrs["pooling"] and "binomial" in result.attrs["noise"]
    # 2B fails both tests it was planted to fail, and no test of a 2A run fails.
    outcome = result.test_outcome.sel(plr=PLR[4])
    assert (outcome.sel(test=["flr", "swa"]) == "fail").all() and (outcome.sel(test="barrier") == "pass").all()
    assert (result.test_outcome.sel(plr=PLR[2:4]) == "pass").all()
    assert set(result.test_outcome.values.ravel()) <= set(OUTCOMES)
    assert ANALYZERS["regimes"].needs == ("pretrain",)


def test_one_seed_shifted_spreads_its_boundary(spec_tables):
    m = metrics()
    m["pt_loss"][2, 0] = 1e-3  # seed 0 still converges at the third PLR
    result = regimes(make_tree(spec_tables, m))
    assert result.regime.values[2].tolist() == ["1", "2A", "2A"]
    shifted = np.sqrt(PLR[2] * PLR[3])
    np.testing.assert_allclose(result.boundary_plr.sel(boundary="1|2").values, [shifted, *[EXPECTED["1|2"]] * 2])
    assert result.boundary_log10_std.sel(boundary="1|2") > 0
    assert result.boundary_log10_std.sel(boundary="2|3") == 0
    assert EXPECTED["1|2"] < result.boundary_geomean.sel(boundary="1|2") < shifted
    assert result.regime_mode.values[2] == "2A"
    assert result.regime_share.sel(plr=PLR[2], label=["1", "2A"]).values.tolist() == pytest.approx([1 / 3, 2 / 3])
    # Seeds on both sides of the threshold are not replicates of one regime: not pooled.
    assert not result.pooled.values[2] and result.regime_pooled.values[2] == "mixed"
    # Two seeds of three put the step below PLR 2, so the fit stays there; resampling the
    # seeds moves it one step up, which the interval covers.
    assert result.boundary_fit.sel(boundary="1|2") == pytest.approx(EXPECTED["1|2"])
    assert (result.boundary_low.sel(boundary="1|2"), result.boundary_high.sel(boundary="1|2")) == (PLR[1], PLR[3])


def test_options_move_the_labels(spec_tables):
    tree = make_tree(spec_tables, metrics())
    # A looser convergence test takes the 2A PLRs (train loss 0.1) into regime 1.
    looser = regimes(tree, convergence_loss=0.2)
    assert looser.regime_mode.values.tolist() == ["1"] * 4 + ["2B"] * 2 + ["3"] * 3
    assert looser.boundary_geomean.sel(boundary="1|2") == pytest.approx(np.sqrt(PLR[3] * PLR[4]))
    # A wider chance margin takes the 2B PLRs (test accuracy 0.75) into regime 3.
    assert regimes(tree, chance_margin=0.27).regime_mode.values.tolist() == PLANTED[:4] + ["3"] * 5
    # 2B's differences are about 5 and 9 SE: past them, a difference counts as the order of
    # the noise (2?), and with the pass band as wide, as within it (2A).
    assert regimes(tree, z_differ=10.0).regime_mode.values[4] == "2?"
    assert regimes(tree, z_same=10.0, z_differ=10.0).regime_mode.values.tolist() == ["1"] * 2 + ["2A"] * 4 + ["3"] * 3
    # The noise is that of the test set: on 100 samples the same 2B differences are noise.
    assert regimes(tree, n_test=100).regime_mode.values[4] in ("2?", "2A")
    with pytest.raises(LrscanError, match="z_same <= z_differ"):
        regimes(tree, z_same=3.0, z_differ=2.0)
    # The test accuracy is averaged over the logged epochs of the last `window` epochs.
    pretrain = tree["pretrain/metrics"].to_dataset()
    pretrain["test_acc"][4] = np.where(EPOCHS < 30, 0.45, 0.6)  # learns late: 0.529 over 20 epochs
    tree["pretrain/metrics"] = pretrain
    assert regimes(tree).regime_mode.values[4] == "2B"
    assert regimes(tree, window=40.0).regime_mode.values[4] == "3"


def test_only_lower_flrs_count(spec_tables):
    m = metrics()
    m["pt_loss"][:2] = 0.1  # the two smallest PLRs now end in regime 2 ...
    m["ft_acc"][:2], m["swa_acc"][:2] = 0.92, 0.92
    m["ft_acc"][0, 1] = 0.6  # ... and PLR 1e-4 trained on at FLR 1e-4, not lower, does badly
    result = regimes(make_tree(spec_tables, m))
    # PLR 1e-4 has one FLR below it: nothing to compare it with, and its barrier's FT-high end
    # is not fine-tuned with a lower LR. Tests that cannot be applied are not passed.
    assert result.regime_mode.values[:2].tolist() == ["2?", "2A"]
    assert (result.test_outcome.sel(plr=PLR[0], test=["flr", "barrier"]) == "untestable").all()
    assert (result.test_outcome.sel(plr=PLR[0], test="swa") == "pass").all()
    assert regimes(make_tree(spec_tables, m), lower_flr_only=False).regime_mode.values[:2].tolist() == ["2B", "2A"]
    # A PLR with no lower FLR cannot be split.
    higher = regimes(make_tree(spec_tables, m, flr=(1e-4, 2e-4)))
    assert higher.regime_mode.values[:3].tolist() == ["2?", "2A", "2A"]
    assert (higher.test_outcome.sel(plr=PLR[0]) == "untestable").all()


def test_missing_swa_or_barriers_leave_2a_undecided(spec_tables):
    for missing in ({"swa": False}, {"barriers": False}):
        result = regimes(make_tree(spec_tables, metrics(), **missing))
        # 2B still fails a test it can apply (the FLR dependence); 2A lacks one of its tests.
        assert result.regime_mode.values.tolist() == ["1"] * 2 + ["2?"] * 2 + ["2B"] * 2 + ["3"] * 3
        assert result.regime_pooled.values[2] == "2?"
        # 2A|2B lies between the last 1 and the first 2B: anywhere over the undecided PLRs.
        assert result.boundary_fit.sel(boundary="2A|2B") == pytest.approx(np.sqrt(PLR[2] * PLR[3]))
        assert (result.boundary_low.sel(boundary="2A|2B"), result.boundary_high.sel(boundary="2A|2B")) == \
            (PLR[1], PLR[4])
    assert (result.test_outcome.sel(test="barrier") == "untestable").all()


def test_store_without_finetuning_leaves_regime_2_unsplit(spec_tables):
    result = regimes(make_tree(spec_tables, metrics(), finetune=False, swa=False, barriers=False))
    assert result.regime_mode.values.tolist() == ["1"] * 2 + ["2"] * 4 + ["3"] * 3
    assert result.regime_pooled.values.tolist() == ["1"] * 2 + ["2"] * 4 + ["3"] * 3
    assert np.isnan(result.boundary_plr.sel(boundary="2A|2B")).all()
    for name in ("1|2", "2|3"):
        assert result.boundary_geomean.sel(boundary=name) == pytest.approx(EXPECTED[name])
    assert "ft_acc_spread" not in result and "test_z" not in result and "z_same" not in result.attrs


def test_diverged_and_nan_runs_are_regime_3(spec_tables):
    m = metrics()
    m["diverged"][0, 0] = 12.0  # diverged at epoch 12: no metrics from there on
    m["pt_loss"][0, 0] = m["pt_acc"][0, 0] = np.nan
    m["pt_acc"][3, 1] = np.nan  # accuracy lost without a recorded divergence
    m["ft_acc"][2, 1, 2] = np.nan  # a fine-tuning run that diverged: its PLR is not 2A
    result = regimes(make_tree(spec_tables, m))
    assert result.regime.values[0].tolist() == ["3", "1", "1"]
    assert result.regime.values[3].tolist() == ["2A", "3", "2A"]
    assert result.regime.values[2].tolist() == ["2A", "2A", "2B"]
    assert result.test_outcome.sel(plr=PLR[2], seed=2, test="flr") == "fail"


def test_barriers_split_2a_from_2b(spec_tables):
    m = metrics()
    high = np.zeros((len(PLR), N_SEEDS))
    high[3] = 5.0  # the second 2A PLR sits in a basin with a 5% barrier: about 7 SE
    given = regimes(make_tree(spec_tables, m, barriers=False), barriers=barrier_result(high))
    persisted = regimes(make_tree(spec_tables, m, barriers=barrier_result(high)))
    for result in (given, persisted):
        assert result.regime_mode.values.tolist() == ["1"] * 2 + ["2A"] + ["2B"] * 3 + ["3"] * 3
        np.testing.assert_array_equal(result.ft_barrier.values, high)
        assert (result.test_outcome.sel(plr=PLR[3], test="barrier") == "fail").all()
    # A barrier of 1% is within the noise of a test error on 2,000 samples (SE about 0.7%).
    high[3] = 1.0
    assert regimes(make_tree(spec_tables, m, barriers=barrier_result(high))).regime_mode.values[3] == "2A"
    other = barrier_result(high).assign_coords(pair=["pt~swa=5"], pair_a=("pair", ["pt"]), pair_b=("pair", ["swa=5"]))
    with pytest.raises(LrscanError, match="FT low ~ FT high"):
        regimes(make_tree(spec_tables, m, barriers=False), barriers=other)
    with pytest.raises(LrscanError, match="other PLRs or seeds"):
        regimes(make_tree(spec_tables, m, barriers=False), barriers=barrier_result(high[:, :2]))
    with pytest.raises(LrscanError, match="test_error"):
        regimes(make_tree(spec_tables, m, barriers=False), barriers=barrier_result(high).drop_vars("test_error"))


def test_unfinished_store_is_an_error(spec_tables):
    tree = make_tree(spec_tables, metrics())
    pretrain = tree["pretrain/metrics"].to_dataset()
    pretrain["done"] = xr.zeros_like(pretrain.done)
    tree["pretrain/metrics"] = pretrain
    with pytest.raises(LrscanError, match="still training"):
        regimes(tree)


def test_boundary_ignores_a_lone_noisy_label():
    scan = ["1", "1", "2A", "1", "1", "2A", "2A", "2B", "3"]
    regime = xr.DataArray(np.array(scan, dtype=object)[:, None], dims=("plr", "seed"),
                          coords={"plr": PLR, "seed": [0]})
    # The first crossing (PLR 2) is noise: four labels put the step after PLR 4.
    assert locate_boundary(regime, {"1"}, {"2A", "2", "2B", "3"}).item() == pytest.approx(np.sqrt(PLR[4] * PLR[5]))
    # Two cuts leave one label astray each: the boundary sits at their centre.
    tied = regime.copy(data=np.array(["1", "2A", "1", "2A", "2A", "2A", "3", "3", "3"], dtype=object)[:, None])
    centre = 10 ** np.mean([np.log10(PLR[0] * PLR[1]) / 2, np.log10(PLR[2] * PLR[3]) / 2])
    assert locate_boundary(tied, {"1"}, {"2A", "2", "2B", "3"}).item() == pytest.approx(centre)
    # Over all seeds the same: the fit at the centre, the interval spanning both tied cuts.
    assert boundary_interval(tied, {"1"}, {"2A", "2", "2B", "3"}) == pytest.approx((centre, PLR[0], PLR[3]))
    # A seed that never leaves the lower side has no boundary, nor has a single PLR.
    assert np.isnan(locate_boundary(regime.isel(plr=slice(0, 8)), {"1", "2A", "2", "2B"}, {"3"}).item())
    assert np.isnan(locate_boundary(regime.isel(plr=[0]), {"1"}, {"2A", "3"}).item())
    assert np.isnan(boundary_interval(regime.isel(plr=[0]), {"1"}, {"2A", "3"})).all()


def test_every_run_of_a_trained_store_gets_a_label(trained_small):
    result = lrscan.open(trained_small).lrscan.regimes()
    assert result.regime.dims == ("plr", "seed") and result.regime.shape == (2, 2)
    assert set(result.regime.values.ravel()) <= set(LABELS)
    assert set(result.regime_mode.values) <= set(LABELS)
    assert list(result.boundary.values) == ["1|2", "2A|2B", "2|3"]
    np.testing.assert_allclose(result.regime_share.sum("label"), 1.0)
    assert result.attrs["n_test"] == 128  # the small sweep's test set


# --- the noise model ----------------------------------------------------------------------------


def test_noise_model_is_the_binomial_standard_error():
    p = np.array([0.5, 0.8, 0.95])
    np.testing.assert_allclose(accuracy_se(p, 10**6), np.sqrt(p * (1 - p) / 10**6), rtol=1e-3)
    assert np.all(np.diff(accuracy_se(0.8, np.array([100, 1000, 10000]))) < 0)
    assert np.all(accuracy_se(np.array([0.0, 1.0]), 100) > 0)  # a perfect score is still a measurement
    # A barrier of 2 points mid-path above ends of 8% error: the peak's noise in full, the ends' a quarter each.
    error = xr.DataArray(np.full(11, 8.0), dims="alpha", coords={"alpha": ALPHA})
    expected = 100 * np.sqrt(accuracy_se(0.90, N_TEST) ** 2 + 0.5 * accuracy_se(0.92, N_TEST) ** 2)
    assert float(barrier_se(error + 2 * (1 - np.abs(2 * ALPHA - 1)), N_TEST)) == pytest.approx(expected)


def simulated_z(rng, n_runs=4000, n_test=N_TEST, p=0.85, n_flr=11, ks=5, shift=0.0):
    """z-scores of runs whose every FT, SWA and path point has true accuracy ``p`` (FT at one FLR
    ``shift`` lower), each measured with binomial noise on ``n_test`` samples."""
    draw = lambda *shape: rng.binomial(n_test, p, shape) / n_test  # noqa: E731
    ft = xr.DataArray(draw(n_runs, n_flr), dims=("run", "flr"))
    ft[:, 0] -= shift
    swa = draw(n_runs, ks).max(1)
    error = xr.DataArray(100 * (1 - draw(n_runs, len(ALPHA))), dims=("run", "alpha"), coords={"alpha": ALPHA})
    return {"flr": flr_z(ft, n_test).values, "swa": swa_z(ft.max("flr"), swa, n_test).values,
            "barrier": barrier_z(barrier(error), barrier_se(error, n_test), len(ALPHA) - 2).values}


def test_tests_are_calibrated_on_binomial_noise():
    # With nothing but test-set noise, a 2A run passes each test nearly always and fails almost never.
    for name, z in simulated_z(np.random.default_rng(1)).items():
        assert np.mean(z <= 2.0) > 0.95, name
        assert np.mean(z >= 3.0) < 0.005, name
    # An FLR 8 SE (of the difference) short fails, whatever the other ten FLRs do.
    shifted = simulated_z(np.random.default_rng(2), shift=8 * np.sqrt(2) * float(accuracy_se(0.85, N_TEST)))
    assert np.mean(shifted["flr"] >= 3.0) > 0.99


@settings(max_examples=30, deadline=None)
@given(acc=st.lists(st.floats(0.3, 0.99), min_size=2, max_size=11), n_test=st.integers(50, 50_000),
       order=st.randoms(use_true_random=False))
def test_flr_test_ignores_the_order_of_flrs_and_grows_with_a_difference(acc, n_test, order):
    values = xr.DataArray(np.array(acc), dims="flr")
    shuffled = list(acc)
    order.shuffle(shuffled)
    reordered = flr_z(xr.DataArray(np.array(shuffled), dims="flr"), n_test)
    assert float(reordered) == pytest.approx(float(flr_z(values, n_test)))
    worse = values.copy(data=np.where(np.arange(len(acc)) == int(np.argmin(acc)), min(acc) - 0.2, acc))
    assert float(flr_z(worse, n_test)) >= float(flr_z(values, n_test)) - 1e-9


# --- planted tables: known regimes at 2 and at 10 seeds ----------------------------------------

TABLE_PLR = np.logspace(-4, 0, 12)


def two_run(rng, p, n_test, n_flr, fails=()):
    """FT accuracies (flr), SWA accuracies (K), barrier and its SE of one regime-2 run.

    2A's differences lie well within the noise (at most 0.3 SE between FLRs, SWA at most 0.6
    SE short, a barrier of at most half its SE); a failing test is planted far beyond it
    (an FLR dependence of 8-12 SE, SWA 6-10 SE of the difference short, a barrier of 7-12 SE).
    """
    se = float(accuracy_se(p, n_test))
    ft = p + 0.3 * se * rng.uniform(-1, 1, n_flr)
    if "flr" in fails:
        ft = p - rng.uniform(8, 12) * se * rng.permutation(np.linspace(0, 1, n_flr))
    best = ft.max()
    swa_best = best + se * rng.uniform(-0.6, 1.0)
    if "swa" in fails:
        swa_best = best - rng.uniform(6, 10) * np.sqrt(2) * se
    # Shorter windows average less; the best window is the one the test reads.
    swa = rng.permutation(np.r_[swa_best, swa_best - rng.uniform(0, 0.2, 2)])
    barrier_se_ = 100 * np.sqrt(1.5) * se
    height = barrier_se_ * (rng.uniform(7, 12) if "barrier" in fails else rng.uniform(0, 0.5))
    return ft, swa, height, barrier_se_


def planted_table(plan, seeds, n_test, n_flr, p, rng, points=9):
    """A table for :func:`classify`: ``plan[i]`` is PLR i's label, or ("2B", failing tests per seed)."""
    n_plr = len(plan)
    loss, acc = np.empty((n_plr, seeds)), np.empty((n_plr, seeds))
    diverged = np.zeros((n_plr, seeds), bool)
    ft, swa = np.empty((n_plr, n_flr, seeds)), np.empty((n_plr, seeds, 3))
    height, height_se = np.zeros((n_plr, seeds)), np.ones((n_plr, seeds))
    for i, entry in enumerate(plan):
        label, fails = (entry, [()] * seeds) if isinstance(entry, str) else entry
        for s in range(seeds):
            ft[i, :, s], swa[i, s], height[i, s], height_se[i, s] = two_run(rng, p, n_test, n_flr, fails[s])
            loss[i, s], acc[i, s] = {"1": (1e-3, p), "2A": (0.1, p - 0.03), "2B": (0.3, p - 0.05),
                                     "3": (0.69, 0.5)}[label]
            if label == "3" and rng.random() < 0.5:  # diverged, its metrics lost
                diverged[i, s], loss[i, s], acc[i, s] = True, np.nan, np.nan
    flr = np.logspace(-7, -5, n_flr)
    return xr.Dataset(
        {"pt_train_loss": (("plr", "seed"), loss), "pt_test_acc_mean": (("plr", "seed"), acc),
         "diverged": (("plr", "seed"), diverged), "ft_test_acc": (("plr", "flr", "seed"), ft),
         "swa_test_acc": (("plr", "seed", "swa"), swa), "ft_barrier": (("plr", "seed"), height),
         "ft_barrier_se": (("plr", "seed"), height_se)},
        coords={"plr": TABLE_PLR[:n_plr], "flr": flr, "seed": np.arange(seeds), "swa": [2, 5, 10]},
        attrs={"n_test": n_test, "chance": 0.5, "barrier_points": points, "barrier_flr": [flr[0], flr[-1]]})


failing = st.sets(st.sampled_from(TESTS), min_size=1)


@settings(max_examples=40, deadline=None)
@given(seeds=st.sampled_from([2, 10]), n_test=st.sampled_from([500, 2000, 10_000]), n_flr=st.integers(2, 11),
       p=st.floats(0.6, 0.95), sizes=st.tuples(*[st.integers(1, 3)] * 4), fails=st.lists(failing, min_size=1),
       same_failure=st.booleans(), points=st.sampled_from([5, 9, 19]), seed=st.integers(0, 2**32 - 1))
def test_planted_tables_are_classified_at_2_and_10_seeds(seeds, n_test, n_flr, p, sizes, fails, same_failure,
                                                         points, seed):
    rng = np.random.default_rng(seed)
    n1, n2a, n2b, n3 = sizes
    two_b = [("2B", [fails[j % len(fails)] if same_failure else fails[(j + s) % len(fails)] for s in range(seeds)])
             for j in range(n2b)]
    plan = ["1"] * n1 + ["2A"] * n2a + two_b + ["3"] * n3
    planted = [entry if isinstance(entry, str) else entry[0] for entry in plan]
    result = classify(planted_table(plan, seeds, n_test, n_flr, p, rng, points))
    assert labels_of(result) == [[label] * seeds for label in planted]
    assert result.regime_pooled.values.tolist() == planted
    assert (result.regime_share.sel(label="2?") == 0).all()
    for i, entry in enumerate(plan):
        if not isinstance(entry, str):  # every planted failure is seen
            for s, tests in enumerate(entry[1]):
                assert all(result.test_outcome.isel(plr=i, seed=s).sel(test=t) == "fail" for t in tests)
    # Every boundary: the planted step, per seed and over all seeds, in its grid step.
    cuts = {"1|2": n1, "2A|2B": n1 + n2a, "2|3": n1 + n2a + n2b}
    for name, cut in cuts.items():
        lo, hi = TABLE_PLR[cut - 1], TABLE_PLR[cut]
        np.testing.assert_allclose(result.boundary_plr.sel(boundary=name).values, np.sqrt(lo * hi))
        assert result.boundary_fit.sel(boundary=name) == pytest.approx(np.sqrt(lo * hi))
        assert (result.boundary_low.sel(boundary=name), result.boundary_high.sel(boundary=name)) == (lo, hi)


def plant_z(table, plr, test, z, seeds=None):
    """Set one test's statistic at one PLR so that its z-score is ``z`` exactly (at ``seeds``, or every seed)."""
    n_test, out = table.attrs["n_test"], table.copy(deep=True)
    for s in range(table.sizes["seed"]) if seeds is None else seeds:
        run = dict(plr=plr, seed=s)
        ft = out.ft_test_acc.isel(**run)
        base = ft.max().item()
        if test == "flr":  # one FLR falls short of the others
            shifted = lambda d: ft.copy(data=np.r_[ft.values[:-1], base - d])  # noqa: E731
            ft_z = lambda d: float(flr_z(shifted(d), n_test)) - z  # noqa: E731
            out.ft_test_acc[plr, :, s] = shifted(brentq(ft_z, 0, 0.3)).values
        elif test == "swa":  # the best SWA falls short of the best FT
            gap = brentq(lambda d: float(swa_z(xr.DataArray(base), xr.DataArray(base - d), n_test)) - z, 0, 0.3)
            out.swa_test_acc[plr, s] = base - gap
        else:
            se = out.ft_barrier_se.isel(**run)
            out.ft_barrier[plr, s] = brentq(lambda b: float(barrier_z(xr.DataArray(b), se,
                                                                      table.attrs["barrier_points"])) - z, 0, 50)
    return out


@pytest.mark.parametrize("seeds", [2, 10])
@pytest.mark.parametrize("test", TESTS)
def test_differences_of_the_order_of_the_noise_are_ambiguous(seeds, test):
    plan = ["1", "2A", "2A", "2A", "2B", "3"]
    plan[4] = ("2B", [("flr",)] * seeds)
    table = planted_table(plan, seeds, N_TEST, 5, 0.85, np.random.default_rng(0))
    at = 3  # the last 2A PLR, next to 2B

    # Each seed 2.5 SE off: every seed is undecided; together their evidence is beyond the noise.
    result = classify(plant_z(table, at, test, 2.5))
    assert result.regime.values[at].tolist() == ["2?"] * seeds
    assert (result.test_outcome.isel(plr=at).sel(test=test) == "ambiguous").all()
    assert result.regime_share.isel(plr=at).sel(label="2?") == 1
    assert result.regime_pooled.values[at] == "2B"
    # "2?" takes no side of 2A|2B: the boundary's interval spans it.
    assert (result.boundary_low.sel(boundary="2A|2B"), result.boundary_high.sel(boundary="2A|2B")) == \
        (TABLE_PLR[2], TABLE_PLR[4])

    # Each seed 2.5 / sqrt(seeds) SE off: each passes, but pooled the difference is 2.5 SE of the mean.
    result = classify(plant_z(table, at, test, 2.5 / np.sqrt(seeds)))
    assert result.regime.values[at].tolist() == ["2A"] * seeds
    assert result.test_z_pooled.isel(plr=at).sel(test=test) == pytest.approx(2.5)
    assert result.regime_pooled.values[at] == "2?"

    # Half the seeds clearly 2A, half clearly 2B: shares, not a forced label.
    result = classify(plant_z(table, at, test, 6.0, seeds=range(seeds // 2)))
    assert result.regime_share.isel(plr=at).sel(label=["2A", "2B"]).values.tolist() == [0.5, 0.5]
    assert result.regime_pooled.values[at] == "2?"
    assert (result.boundary_low.sel(boundary="2A|2B"), result.boundary_high.sel(boundary="2A|2B")) == \
        (TABLE_PLR[2], TABLE_PLR[4])

"""Regimes: labels from stored metrics, and the boundaries between them, on planted sweeps."""

import numpy as np
import pytest
import xarray as xr

import lrscan
from lrscan.analyze import ANALYZERS
from lrscan.analyze.regimes import LABELS, locate_boundary, regimes
from lrscan.errors import LrscanError
from lrscan.spec import load_spec
from tests.conftest import SMALL

PLR = np.logspace(-4, 0, 9)  # 1e-4 ... 1, half a decade apart
FLR = (1e-5, 1e-4)
# The planted regime of each PLR, and the metrics that put a run there.
PLANTED = ["1", "1", "2A", "2A", "2B", "2B", "3", "3", "3"]
PT_LOSS = {"1": 1e-3, "2A": 0.1, "2B": 0.3, "3": 0.69}
PT_ACC = {"1": 0.9, "2A": 0.8, "2B": 0.75, "3": 0.5}
FT_ACC = {"1": (0.9, 0.9), "2A": (0.92, 0.92), "2B": (0.85, 0.9), "3": (0.5, 0.5)}
SWA_ACC = {"1": 0.9, "2A": 0.92, "2B": 0.8, "3": 0.5}
# Where the boundaries must fall: between the planted PLRs on either side.
EXPECTED = {"1|2": np.sqrt(PLR[1] * PLR[2]), "2A|2B": np.sqrt(PLR[3] * PLR[4]), "2|3": np.sqrt(PLR[5] * PLR[6])}
EPOCHS = np.arange(0.0, 41.0)
N_SEEDS = 3


@pytest.fixture(scope="module")
def spec_tables():
    """The spec a store of the planted sweep records (tables as in the root attrs)."""
    return load_spec(overrides=[*SMALL, f"plr={PLR.tolist()}", f"flr={list(FLR)}", "swa=[2, 5]"]).to_dict()


def metrics(labels=PLANTED, seeds=N_SEEDS):
    """Per-run final metrics of a planted sweep: labels[i] is the regime of PLR i, every seed."""
    per_run = lambda table: np.array([[table[label]] * seeds for label in labels], dtype=np.float64)  # noqa: E731
    return {
        "pt_loss": per_run(PT_LOSS),
        "pt_acc": per_run(PT_ACC),
        "ft_acc": per_run(FT_ACC).transpose(0, 2, 1).copy(),  # (plr, flr, seed)
        "swa_acc": per_run(SWA_ACC),
        "diverged": np.full((len(labels), seeds), np.nan),
    }


def make_tree(spec, m, *, finetune=True, swa=True, barriers=None, flr=FLR) -> xr.DataTree:
    """An in-memory store with the layout `lrscan train` writes, metrics constant after epoch 0."""
    n_plr, n_seed = m["pt_loss"].shape
    runs = {"plr": PLR[:n_plr], "seed": np.arange(n_seed),
            "train_seed": ("seed", np.arange(n_seed)), "data_seed": ("seed", np.zeros(n_seed, int))}
    done = np.ones((n_plr, n_seed), np.uint8)

    def curve(final, start):  # the init row, then the final value at every logged epoch
        return np.where(EPOCHS == 0, start, final[..., None]).astype(np.float32)

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
    if barriers is not None:
        nodes["/analysis/barriers"] = barriers
    return xr.DataTree.from_dict(nodes)


def barrier_result(test_barrier) -> xr.Dataset:
    """A `barriers` result holding one pair, FT low ~ FT high."""
    n_plr, n_seed = test_barrier.shape
    return xr.Dataset(
        {"test_barrier": (("plr", "seed", "pair"), test_barrier[..., None])},
        coords={"plr": PLR[:n_plr], "seed": np.arange(n_seed), "pair": ["ft=1e-05~ft=0.0001"],
                "pair_a": ("pair", ["ft=1e-05"]), "pair_b": ("pair", ["ft=0.0001"])})


def labels_of(result) -> list[list[str]]:
    return result.regime.values.tolist()


def test_planted_regimes_are_recovered(spec_tables):
    result = regimes(make_tree(spec_tables, metrics()))
    assert labels_of(result) == [[label] * N_SEEDS for label in PLANTED]
    assert result.regime_mode.values.tolist() == PLANTED
    assert result.regime.dims == ("plr", "seed") and result.regime.dtype == object
    for name, plr in EXPECTED.items():
        np.testing.assert_allclose(result.boundary_plr.sel(boundary=name).values, plr, rtol=1e-12)
        assert result.boundary_geomean.sel(boundary=name) == pytest.approx(plr)
        assert result.boundary_log10_mean.sel(boundary=name) == pytest.approx(np.log10(plr))
        assert result.boundary_log10_std.sel(boundary=name) == 0
    assert result.attrs["chance"] == 0.5 and result.attrs["convergence_loss"] == 1e-2
    assert result.attrs["swa_k"] == 5 and "barrier_max" not in result.attrs
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


def test_options_move_the_labels(spec_tables):
    tree = make_tree(spec_tables, metrics())
    # A looser convergence test takes the 2A PLRs (train loss 0.1) into regime 1.
    looser = regimes(tree, convergence_loss=0.2)
    assert looser.regime_mode.values.tolist() == ["1"] * 4 + ["2B"] * 2 + ["3"] * 3
    assert looser.boundary_geomean.sel(boundary="1|2") == pytest.approx(np.sqrt(PLR[3] * PLR[4]))
    # A wider chance margin takes the 2B PLRs (test accuracy 0.75) into regime 3.
    assert regimes(tree, chance_margin=0.27).regime_mode.values.tolist() == PLANTED[:4] + ["3"] * 5
    # 2B fails on the FLR spread (0.05) and on the SWA shortfall (0.1): both must give way.
    assert regimes(tree, flr_spread=0.1).regime_mode.values[4] == "2B"
    assert regimes(tree, swa_gap=0.2).regime_mode.values[4] == "2B"
    assert regimes(tree, flr_spread=0.1, swa_gap=0.2).regime_mode.values.tolist() == ["1"] * 2 + ["2A"] * 4 + ["3"] * 3
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
    assert regimes(make_tree(spec_tables, m)).regime_mode.values[:2].tolist() == ["2A", "2A"]
    assert regimes(make_tree(spec_tables, m), lower_flr_only=False).regime_mode.values[:2].tolist() == ["2B", "2A"]
    # A PLR with no lower FLR cannot be split.
    higher = regimes(make_tree(spec_tables, m, flr=(1e-4, 2e-4)))
    assert higher.regime_mode.values[:3].tolist() == ["2", "2A", "2A"]


def test_store_without_finetuning_leaves_regime_2_unsplit(spec_tables):
    result = regimes(make_tree(spec_tables, metrics(), finetune=False, swa=False))
    assert result.regime_mode.values.tolist() == ["1"] * 2 + ["2"] * 4 + ["3"] * 3
    assert np.isnan(result.boundary_plr.sel(boundary="2A|2B")).all()
    for name in ("1|2", "2|3"):
        assert result.boundary_geomean.sel(boundary=name) == pytest.approx(EXPECTED[name])
    assert "ft_acc_spread" not in result and "flr_spread" not in result.attrs


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


def test_barriers_split_2a_from_2b(spec_tables):
    m = metrics()
    high = np.zeros((len(PLR), N_SEEDS))
    high[3] = 5.0  # the second 2A PLR sits in a basin with a 5% barrier
    given = regimes(make_tree(spec_tables, m), barriers=barrier_result(high))
    persisted = regimes(make_tree(spec_tables, m, barriers=barrier_result(high)))
    for result in (given, persisted):
        assert result.regime_mode.values.tolist() == ["1"] * 2 + ["2A"] + ["2B"] * 3 + ["3"] * 3
        assert result.attrs["barrier_max"] == 1.0
        np.testing.assert_array_equal(result.ft_barrier.values, high)
    looser = regimes(make_tree(spec_tables, m), barriers=barrier_result(high), barrier_max=6)
    assert looser.regime_mode.values[3] == "2A"
    other = barrier_result(high).assign_coords(pair=["pt~swa=5"], pair_a=("pair", ["pt"]), pair_b=("pair", ["swa=5"]))
    with pytest.raises(LrscanError, match="FT low ~ FT high"):
        regimes(make_tree(spec_tables, m), barriers=other)
    with pytest.raises(LrscanError, match="other PLRs or seeds"):
        regimes(make_tree(spec_tables, m), barriers=barrier_result(high[:, :2]))


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
    # A seed that never leaves the lower side has no boundary, nor has a single PLR.
    assert np.isnan(locate_boundary(regime.isel(plr=slice(0, 8)), {"1", "2A", "2", "2B"}, {"3"}).item())
    assert np.isnan(locate_boundary(regime.isel(plr=[0]), {"1"}, {"2A", "3"}).item())


def test_every_run_of_a_trained_store_gets_a_label(trained_small):
    result = lrscan.open(trained_small).lrscan.regimes()
    assert result.regime.dims == ("plr", "seed") and result.regime.shape == (2, 2)
    assert set(result.regime.values.ravel()) <= set(LABELS)
    assert set(result.regime_mode.values) <= set(LABELS)
    assert list(result.boundary.values) == ["1|2", "2A|2B", "2|3"]

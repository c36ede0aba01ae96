"""The convergence-threshold study: the `convergence` analyzer, the bisection, `lrscan threshold` and its figure."""

import math

import holoviews as hv
import numpy as np
import pytest
import xarray as xr
from click.testing import CliRunner

import lrscan
import lrscan.plot
from lrscan.analyze import ANALYZERS
from lrscan.analyze.convergence import convergence
from lrscan.cli import main
from lrscan.errors import LrscanError
from lrscan.store import open_store
from lrscan.threshold import ThresholdSearch, bracket, fine_grid, next_picks, threshold_spec
from tests.conftest import SMALL

# The small setup (64 samples, 4 steps per epoch), pre-training only for a budget of 30 epochs,
# logged every epoch; on a grid 0.01 ... 0.1 with 8 points per decade (9 PLRs, 240 model-steps
# each) its threshold lies inside the grid: 0.01 converges within 8-11 epochs, 0.1 never does.
TINY = [o for o in SMALL if not o.startswith(("pretrain_epochs", "finetune", "swa", "checkpoint"))] + [
    "pretrain_epochs=30", "log_every=1"]
GRID = {"low": 0.01, "high": 0.1, "per_decade": 8}
COST = 2 * 30 * 4


def metrics_tree(train_loss, test_acc, epochs, chunks=None) -> xr.DataTree:
    """A store-like tree holding only pre-training metrics (plr, seed, epoch)."""
    train_loss, test_acc = np.asarray(train_loss, dtype=np.float32), np.asarray(test_acc, dtype=np.float32)
    plr = [0.001, 0.01, 0.1][: train_loss.shape[0]]
    ds = xr.Dataset({"train_loss": (("plr", "seed", "epoch"), train_loss),
                     "test_acc": (("plr", "seed", "epoch"), test_acc)},
                    coords={"plr": plr, "seed": np.arange(train_loss.shape[1]),
                            "epoch": np.asarray(epochs, dtype=float), "step": ("epoch", 4 * np.asarray(epochs))})
    return xr.DataTree.from_dict({"/pretrain/metrics": ds.chunk(chunks) if chunks else ds})


def test_convergence_against_hand_made_metric_rows():
    nan = np.nan
    epochs = [0, 10, 20, 30, 40]
    loss = [[[2.0, 0.5, 0.009, 5e-5, 1e-5],    # below 1e-2 at 20, below 1e-4 at 30
             [2.0, 0.02, 0.011, 0.0101, 0.5]]]  # never below 1e-2
    loss += [[[2.0, 0.009, 0.02, 0.005, 9e-4],   # first below at 10, even if it rises again
              [2.0, 3.0, nan, nan, nan]]]       # diverged: NaN rows never count
    acc = np.arange(20, dtype=float).reshape(2, 2, 5) / 20
    result = convergence(metrics_tree(loss, acc, epochs)).compute()
    assert result.epochs_to_converge.dims == ("plr", "seed")
    np.testing.assert_array_equal(result.epochs_to_converge.values, [[20, nan], [10, nan]])
    np.testing.assert_array_equal(result.converged.values, [[True, False], [True, False]])
    np.testing.assert_array_equal(result.test_acc_at_convergence.values, np.float32([[acc[0, 0, 2], nan],
                                                                                     [acc[1, 0, 1], nan]]))
    np.testing.assert_array_equal(result.epochs_to_final.values, [[30, nan], [nan, nan]])
    np.testing.assert_array_equal(result.reached_final.values, [[True, False], [False, False]])
    assert result.attrs["loss"] == 1e-2 and result.attrs["final_loss"] == 1e-4
    stricter = convergence(metrics_tree(loss, acc, epochs), loss=1e-3).compute()
    np.testing.assert_array_equal(stricter.epochs_to_converge.values, [[30, nan], [40, nan]])


def test_convergence_is_lazy_and_registered():
    tree = metrics_tree(np.ones((1, 2, 3)), np.ones((1, 2, 3)), [0, 1, 2], chunks={"plr": 1, "seed": 1})
    result = convergence(tree)
    assert all(var.chunks is not None for var in result.data_vars.values())
    assert ANALYZERS["convergence"].default and ANALYZERS["convergence"].needs == ("pretrain",)


def test_fine_grid_is_log_spaced_with_both_ends():
    grid = fine_grid(1e-3, 1e-1, 16)
    assert len(grid) == 33 and grid[0] == pytest.approx(1e-3) and grid[-1] == pytest.approx(1e-1)
    np.testing.assert_allclose(np.diff(np.log10(grid)), 1 / 16)
    assert len(fine_grid(0.01, 0.011, 16)) == 2  # always both ends


@pytest.mark.parametrize("true", [1, 2, 17, 31, 32])
def test_bisection_brackets_a_monotone_threshold_in_log2_rounds(true):
    """Grid points below index ``true`` converge: the search ends with the bracket (true - 1, true)."""
    n, outcomes, rounds = 33, {}, 0
    while todo := next_picks(outcomes, n):
        outcomes |= {i: i < true for i in todo}
        rounds += 1
    assert bracket(outcomes) == (true - 1, true)
    assert rounds <= 1 + math.ceil(math.log2(n - 1))
    assert len(outcomes) <= 2 + math.ceil(math.log2(n - 1))


def test_a_grid_without_the_threshold_stops_after_its_ends():
    assert next_picks({0: False, 8: False}, 9) == [] and bracket({0: False, 8: False}) == (None, 0)
    assert next_picks({0: True, 8: True}, 9) == [] and bracket({0: True, 8: True}) == (8, None)


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """One store searched with a budget of 3 grid points, then continued without a budget."""
    store = tmp_path_factory.mktemp("threshold") / "threshold.zarr"
    spec = threshold_spec(overrides=TINY, **GRID)
    rounds = [], []
    small = ThresholdSearch(spec, store, budget=3 * COST).run(on_round=rounds[0].append)
    large = ThresholdSearch(spec, store).run(on_round=rounds[1].append)
    return store, spec, small, large, rounds


def test_the_search_brackets_the_threshold_and_a_larger_budget_narrows_it(searched):
    store, spec, small, large, rounds = searched
    assert len(spec.plr) == 9 and spec.finetune_epochs == 0 and spec.swa == ()
    assert small.status == "budget" and small.model_steps == 3 * COST
    assert small.picks == [spec.plr[0], spec.plr[8], spec.plr[4]]
    assert large.status == "resolved"
    assert large.picks[:3] == small.picks  # the same search, continued
    for result in (small, large):
        lo, hi = result.bracket
        assert lo < hi and result.threshold == pytest.approx(math.sqrt(lo * hi))
        assert result.log10_halfwidth == pytest.approx((math.log10(hi) - math.log10(lo)) / 2)
    assert large.log10_halfwidth < small.log10_halfwidth
    assert small.bracket[0] <= large.bracket[0] < large.bracket[1] <= small.bracket[1]
    np.testing.assert_allclose(large.log10_halfwidth, 1 / 16)  # one grid step of 1/8 decade
    # The bracket's ends are what the runs did: every seed converges below, not every seed above.
    per_run = convergence(lrscan.open(store)).compute()
    assert per_run.converged.sel(plr=large.bracket[0]).all()
    assert not per_run.converged.sel(plr=large.bracket[1]).all()
    # Resumed: the rounds of the first call came from the store, only new picks were trained.
    assert [r.trained for r in rounds[0]] == [4, 2]
    assert [r.trained for r in rounds[1]][:2] == [0, 0] and all(r.trained == 2 for r in rounds[1][2:])


def test_only_the_picked_plrs_are_trained_and_the_result_is_stored(searched):
    store, spec, _, large, _ = searched
    tree = open_store(store)
    done = tree["pretrain/metrics"]["done"].all("seed").values
    assert sorted(np.asarray(spec.plr)[done.astype(bool)]) == sorted(large.picks)
    assert "finetune" not in tree.children and "swa" not in tree.children
    stored = tree["analysis/threshold"].to_dataset().load()
    assert stored.attrs["status"] == "resolved" and "lrscan_fingerprint" in stored.attrs
    assert float(stored.threshold) == large.threshold
    assert (float(stored.bracket_low), float(stored.bracket_high)) == large.bracket
    np.testing.assert_array_equal(stored.plr.values, sorted(large.picks))
    expected = convergence(tree).sel(plr=stored.plr).compute()
    xr.testing.assert_equal(stored.epochs_to_converge, expected.epochs_to_converge)
    assert [float(stored.plr[i]) for i in np.argsort(stored.pick.values)] == large.picks


def test_rerunning_trains_nothing_and_gives_the_same_result(searched, digest):
    store, spec, _, large, _ = searched
    before = digest(store / "pretrain")
    again = ThresholdSearch(spec, store).run()
    assert digest(store / "pretrain") == before
    assert again.picks == large.picks and again.bracket == large.bracket


def test_the_threshold_figure_shows_the_epochs_and_the_bracket(searched, tmp_path):
    store, _, _, large, _ = searched
    tree = lrscan.open(store)
    panel = lrscan.plot.threshold(tree)
    stored = tree["analysis/threshold"].to_dataset().load()
    mean = [e for e in panel if isinstance(e, hv.Curve)][0]
    np.testing.assert_allclose(mean.dimension_values(0), stored.plr.values)
    every = stored.converged.all("seed").values
    np.testing.assert_allclose(mean.dimension_values(1)[every], stored.epochs_to_converge.mean("seed").values[every])
    assert np.isnan(mean.dimension_values(1)[~every]).all()
    (span,) = [e for e in panel if isinstance(e, hv.VSpan)]
    assert tuple(span.data) == large.bracket
    assert panel.opts.get("plot", backend="bokeh").kwargs["logx"]
    result = CliRunner().invoke(main, ["plot", str(store), "--out", str(tmp_path / "figs")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "figs" / "threshold.png").stat().st_size > 0
    index = (tmp_path / "figs" / "index.html").read_text()
    assert f"convergence threshold at PLR {large.threshold:.3g}" in index


def sets(overrides):
    return [a for o in overrides for a in ("--set", o)]


@pytest.mark.parametrize("args, message", [
    (["--low", "0.1", "--high", "0.01"], "--low 0.1 is not below --high 0.01"),
    (["--low", "abc"], "--low must be a number, got 'abc'"),
    (["--low", "-1", "--high", "0.1"], "--low = -1.0: learning rates must be positive and finite"),
    (["--high", "inf"], "--high = inf: learning rates must be positive and finite"),
    (["--low", "2"], "--low 2 is not below --high 0.1"),
    (["--per-decade", "0"], "--per-decade must be a whole number of at least 1, got 0"),
    (["--budget", "0"], "--budget must be a positive number of model-steps, got 0.0"),
    (["--budget", "lots"], "--budget must be a number, got 'lots'"),
    (["--budget", "100"], "--budget 100 model-steps does not cover the first round: the grid's two ends need 480 "
                          "(2 runs x 120 steps each)"),
    (["--set", "pretrain_switch={epoch=5, plr=0.01}"], "the threshold study pre-trains at one constant LR; remove "
                                                      "pretrain_switch"),
])
def test_bad_bounds_and_budgets_are_one_line_and_create_nothing(tmp_path, args, message):
    store = tmp_path / "t.zarr"
    result = CliRunner().invoke(main, ["threshold", "--store", str(store), *sets(TINY + ["plr=[0.01, 0.1]"]), *args])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines() == [f"Error: {message}"]
    assert not store.exists()


def test_a_store_of_another_grid_is_refused_untouched(searched, digest):
    store, *_ = searched
    before = digest(store)
    result = CliRunner().invoke(main, ["threshold", "--store", str(store), *sets(TINY), "--low", "0.01",
                                       "--high", "0.2", "--per-decade", "8"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [f"Error: {store} was made from a different spec (plr differ); "
                                                  "use another --store, or delete this one to start over"]
    assert digest(store) == before


def test_lrscan_threshold_prints_the_threshold(searched):
    store, _, _, large, _ = searched
    result = CliRunner().invoke(main, ["threshold", "--store", str(store), *sets(TINY), "--low", "0.01",
                                       "--high", "0.1", "--per-decade", "8"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"convergence threshold at PLR {large.threshold:.3g} "
                                    f"(log10 {math.log10(large.threshold):.3f} ± {large.log10_halfwidth:.3f})")
    assert "(one grid step)" in result.stdout
    assert "round 0: PLR 0.01: 2/2, PLR 0.1: 0/2 seeds converge; bracket [0.01, 0.1] (from the store)" in result.stderr


def test_threshold_spec_refuses_a_switch_and_keeps_pretraining_only(small_spec):
    spec = threshold_spec(overrides=TINY + ["finetune_epochs=5", "swa=[2]"], low=0.001, high=0.01, per_decade=4)
    assert spec.finetune_epochs == 0 and spec.swa == () and spec.checkpoint_epochs == ()
    assert len(spec.plr) == 5
    with pytest.raises(LrscanError, match="build it with threshold_spec"):
        ThresholdSearch(small_spec(), "unused.zarr")

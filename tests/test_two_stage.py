"""Two-stage pre-training (`pretrain_switch`): the spec, the exact switch of ELR, the store's record, the figure."""

import shutil

import holoviews as hv
import numpy as np
import pytest
import torch
import xarray as xr
from click.testing import CliRunner

import lrscan
import lrscan.plot
from lrscan.cli import main
from lrscan.errors import LrscanError
from lrscan.plot.accuracy import two_stage_accuracy
from lrscan.plot.registry import FIGURES
from lrscan.spec import Spec, load_spec
from lrscan.testing import assert_stores_identical
from lrscan.train.loop import run_stage
from lrscan.train.plan import Plan, Stage
from lrscan.train.sweep import Setup, train
from tests.conftest import SMALL, train_store

# The small sweep (4 steps per epoch, 4 epochs of pre-training): PLR until epoch 2.5 (step
# 10), then ELR 0.01 for every run, then fine-tuning from epoch 4.
SWITCH = "pretrain_switch={epoch = 2.5, plr = 0.01}"
TWO_STAGE = SMALL + [SWITCH]


@pytest.fixture(scope="module")
def two_stage(tmp_path_factory):
    return train_store(tmp_path_factory, TWO_STAGE)


def test_the_switch_is_a_checked_table(small_spec):
    spec = small_spec(SWITCH)
    assert spec.pretrain_switch == {"epoch": 2.5, "plr": 0.01}
    assert spec.to_dict()["sweep"]["pretrain_switch"] == {"epoch": 2.5, "plr": 0.01}
    assert Spec.from_dict(spec.to_dict()) == spec
    assert small_spec().pretrain_switch is None
    # A store written before the field existed has no such key: its spec still matches.
    old = small_spec().to_dict()
    del old["sweep"]["pretrain_switch"]
    assert Spec.from_dict(old).differences(small_spec()) == []


@pytest.mark.parametrize("value, message", [
    ("{epoch = 4, plr = 0.01}", r"pretrain_switch.epoch = 4 is not before the end of pre-training"),
    ("{epoch = 0, plr = 0.01}", r"pretrain_switch.epoch must be positive, got 0"),
    ("{epoch = 2, plr = -1}", r"pretrain_switch.plr = -1: learning rates must be positive and finite"),
    ("{epoch = 2}", r"pretrain_switch needs 'plr'"),
    ("{epoch = 2, plr = 0.1, elr = 3}", r"unknown key 'elr' in pretrain_switch"),
    ("0.1", r"pretrain_switch must be a table \{ epoch = E, plr = LR \}, got 0.1"),
])
def test_bad_switches_are_one_line_errors(small_spec, value, message):
    with pytest.raises(LrscanError, match=message) as info:
        small_spec(f"pretrain_switch={value}")
    assert "\n" not in str(info.value)


def test_fine_tuning_branches_from_the_second_stage(small_spec):
    with pytest.raises(LrscanError, match=r"finetune_from = 2 is before pretrain_switch.epoch = 2.5"):
        small_spec(SWITCH, "finetune_from=2")
    with pytest.raises(LrscanError, match=r"pretrain_switch.epoch = 2.1 epochs is not a whole number of steps"):
        Plan.build(small_spec("pretrain_switch={epoch = 2.1, plr = 0.01}"), 64)


def test_the_plan_logs_and_keeps_the_end_of_stage_one(small_spec):
    plan = Plan.build(small_spec(SWITCH), 64)
    assert plan.pretrain.switch == (10, 0.01)
    assert list(plan.pretrain.log_steps) == [0, 4, 8, 10, 12, 16]
    assert 10 in plan.pretrain.checkpoint_steps
    assert plan.finetune.switch is None
    assert plan.pretrain_stages == [[0.0, 2.5, "plr"], [2.5, 4.0, 0.01]]
    assert Plan.build(small_spec(), 64).pretrain_stages == [[0.0, 4.0, "plr"]]


def test_the_store_records_the_stages(two_stage, trained_small):
    tree = lrscan.open(two_stage)
    assert tree["pretrain"].attrs["stages"] == [[0.0, 2.5, "plr"], [2.5, 4.0, 0.01]]
    assert tree.attrs["spec"]["sweep"]["pretrain_switch"] == {"epoch": 2.5, "plr": 0.01}
    assert lrscan.open(trained_small)["pretrain"].attrs["stages"] == [[0.0, 4.0, "plr"]]
    assert list(tree["pretrain/metrics"].epoch.values) == [0, 1, 2, 2.5, 3, 4]
    assert list(tree["pretrain/weights"].epoch.values) == [0, 1, 2, 2.5, 3, 4]


def test_stage_one_is_the_single_stage_sweep(two_stage, trained_small):
    """Up to the switch, each run trains at its own PLR exactly as without a switch."""
    two, one = lrscan.open(two_stage), lrscan.open(trained_small)
    for epoch in (0.0, 1.0, 2.0):
        np.testing.assert_array_equal(two["pretrain/weights"]["weights"].sel(epoch=epoch).values,
                                      one["pretrain/weights"]["weights"].sel(epoch=epoch).values)
    np.testing.assert_array_equal(two["pretrain/metrics"]["train_loss"].sel(epoch=[0.0, 1.0, 2.0]).values,
                                  one["pretrain/metrics"]["train_loss"].sel(epoch=[0.0, 1.0, 2.0]).values)
    assert not np.array_equal(two["pretrain/weights"]["weights"].sel(epoch=4.0).values,
                              one["pretrain/weights"]["weights"].sel(epoch=4.0).values)


def test_stage_two_is_a_single_stage_run_from_the_switch_checkpoint(two_stage):
    """From the stored end of stage 1, training every run at ELR q to the end of pre-training
    (same runs, same batches) gives the stored end of pre-training bit for bit."""
    tree = lrscan.open(two_stage)
    spec = Spec.from_dict(tree.attrs["spec"])
    setup = Setup.build(spec)
    weights = tree["pretrain/weights"]["weights"]
    runs = [(p, s) for p in range(weights.sizes["plr"]) for s in range(weights.sizes["seed"])]  # the batch's order
    start = torch.from_numpy(np.stack([weights.isel(plr=p, seed=s).sel(epoch=2.5).values for p, s in runs]))
    data, position = setup.device_data([0])
    stage = Stage("pretrain", 10, 16, np.array([10, 12, 16]), np.array([16]))
    result = run_stage(setup.engine(start), data, stage, elr=torch.full((len(runs),), 0.01),
                       seeds=[(setup.plan.runs[s].train_seed, 0) for _, s in runs], batch_size=spec.batch_size,
                       steps_per_epoch=setup.plan.steps_per_epoch)
    end = np.stack([weights.isel(plr=p, seed=s).sel(epoch=4.0).values for p, s in runs])
    np.testing.assert_array_equal(result.weights[:, -1], end)


def test_a_batch_killed_across_the_switch_resumes_to_an_identical_store(two_stage, tmp_path, monkeypatch):
    import lrscan.train.sweep as sweep_module

    monkeypatch.setattr(sweep_module, "SNAPSHOT_SECONDS", 0.0)
    path = tmp_path / "resumed.zarr"

    def crash(progress):  # at the row of step 12, before its snapshot: the latest is the switch's (step 10)
        if progress.phase == "pretrain" and progress.done >= 4 * 12:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        train(load_spec(overrides=TWO_STAGE), path, progress=crash)
    seen = []
    train(load_spec(overrides=TWO_STAGE), path, progress=seen.append)
    # Went on from the switch step: its 10 steps of 4 runs are counted as done first, then the rest.
    assert seen[0].phase == "pretrain" and seen[0].done == 4 * 10 and seen[-1].done == seen[-1].total
    assert_stores_identical(two_stage, path)


def test_the_two_stage_figure_shows_each_stage(two_stage):
    tree = lrscan.open(two_stage)
    data = two_stage_accuracy(tree)
    assert list(data.stage.values) == ["stage 1", "stage 2", "after FT"]
    pt = tree["pretrain/metrics"]["test_acc"]
    xr.testing.assert_equal(data.test_acc.sel(stage="stage 1", drop=True), pt.sel(epoch=2.5, drop=True)
                            .load().transpose(*data.test_acc.dims[:2]))
    xr.testing.assert_equal(data.test_acc.sel(stage="stage 2", drop=True), pt.isel(epoch=-1, drop=True)
                            .load().transpose(*data.test_acc.dims[:2]))
    ft = tree["finetune/metrics"]["test_acc"].isel(epoch=-1, drop=True).load()
    for plr in ft.plr.values:
        best = ft.sel(plr=plr).mean("seed").idxmax("flr")
        assert float(data.best_flr.sel(plr=plr)) == float(best)
        np.testing.assert_array_equal(data.test_acc.sel(plr=plr, stage="after FT").values,
                                      ft.sel(plr=plr, flr=best).values)
    bars = lrscan.plot.two_stage(tree)
    assert isinstance(bars, hv.Bars)
    np.testing.assert_allclose(bars.dimension_values("test_acc"),
                               100 * data.test_acc.mean("seed").values.ravel(), rtol=1e-6)
    assert list(bars.dimension_values("stage")) == ["stage 1", "stage 2", "after FT"] * 2


def test_lrscan_plot_draws_the_two_stage_figure_only_for_two_stage_sweeps(two_stage, trained_small, tmp_path):
    assert "pretrain_switch" in FIGURES["two_stage"].missing(lrscan.open(trained_small))
    store = tmp_path / "two.zarr"
    shutil.copytree(two_stage, store)
    assert CliRunner().invoke(main, ["analyze", str(store), "--only", "metrics"]).exit_code == 0
    result = CliRunner().invoke(main, ["plot", str(store), "--out", str(tmp_path / "figs")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "figs" / "two_stage.png").stat().st_size > 0
    assert "two_stage" not in result.stderr  # not skipped

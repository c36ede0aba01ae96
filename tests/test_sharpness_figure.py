"""The sharpness-vs-test-error scatter of fine-tuned solutions at matched train loss."""

import shutil

import holoviews as hv
import numpy as np
import pytest
from click.testing import CliRunner

import lrscan
import lrscan.plot
from lrscan.cli import main
from lrscan.errors import LrscanError
from lrscan.plot.registry import FIGURES
from lrscan.plot.solutions import sharpness_points


@pytest.fixture(scope="module")
def store(tmp_path_factory, trained_small):
    path = tmp_path_factory.mktemp("sharp") / "small.zarr"
    shutil.copytree(trained_small, path)
    result = CliRunner().invoke(main, ["analyze", str(path), "--only", "sharpness"])
    assert result.exit_code == 0, result.output
    return path


def test_points_are_the_ft_solutions_with_their_sharpness_and_test_error(store):
    tree = lrscan.open(store)
    points = sharpness_points(tree, loss_factor=2.0)
    sharp = tree["analysis/sharpness"]["hessian_trace"]
    final = tree["finetune/metrics"].to_dataset().isel(epoch=-1)
    for flr in points.flr.values:
        np.testing.assert_array_equal(points.hessian_trace.sel(flr=flr).transpose("plr", "seed").values,
                                      sharp.sel(solution=f"ft={flr:g}").values)
    np.testing.assert_array_equal(points.test_error.values, 1 - final.test_acc.values)
    median = float(np.median(final.train_loss.values))
    assert points.attrs["median_train_loss"] == pytest.approx(median)
    loss = final.train_loss.values
    np.testing.assert_array_equal(points.matched.values, (loss >= median / 2) & (loss <= median * 2))


@pytest.mark.parametrize("factor", [1.5, 3.0, 1e6])
def test_the_scatter_shows_exactly_the_matched_solutions(store, factor):
    tree = lrscan.open(store)
    points = sharpness_points(tree, loss_factor=factor)
    keep = (points.matched & (points.hessian_trace > 0)).values
    scatter = lrscan.plot.sharpness(tree, loss_factor=factor)
    assert isinstance(scatter, hv.Scatter)
    assert sorted(scatter.dimension_values("hessian_trace")) == sorted(points.hessian_trace.values[keep])
    assert sorted(scatter.dimension_values("test_error")) == pytest.approx(
        sorted(100 * points.test_error.values[keep].astype(float)))
    plr = np.broadcast_to(points.plr.values[:, None, None], keep.shape)[keep]
    assert sorted(scatter.dimension_values("log10_plr")) == pytest.approx(sorted(np.log10(plr)))
    options = scatter.opts.get("plot", backend="bokeh").kwargs
    assert options["logx"] and f"{keep.sum()} of {points.hessian_trace.size}" in options["title"]
    assert scatter.opts.get("style", backend="bokeh").kwargs["color"] == "log10_plr"


def test_a_band_must_be_a_factor_above_one(store):
    with pytest.raises(LrscanError, match="loss_factor must be a finite factor above 1, got 0.5"):
        sharpness_points(lrscan.open(store), loss_factor=0.5)


def test_lrscan_plot_draws_it_when_sharpness_is_stored(store, trained_small, tmp_path):
    assert "sharpness analysis" in FIGURES["sharpness"].missing(lrscan.open(trained_small))
    result = CliRunner().invoke(main, ["plot", str(store), "--out", str(tmp_path / "figs")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "figs" / "sharpness.png").stat().st_size > 0

"""What a reader of the figures needs (issue 16): legends and colour bars for every encoded variable,
hover tools with the run's coordinates, one number format, layouts that fit 1280 px, --format and --dpi."""

import math

import holoviews as hv
import numpy as np
import pytest
from bokeh.models import ColorBar, HoverTool, Legend
from bokeh.plotting import figure as bokeh_figure
from click.testing import CliRunner
from PIL import Image

import lrscan
import lrscan.plot
from lrscan.plot import styles
from lrscan.plot.commands import plot
from lrscan.plot.numbers import fmt
from lrscan.plot.summary_text import REGIME_NAMES
from tests.browser import analyzed_store

DRAWN = ["pt_accuracy", "ft_accuracy", "swa_accuracy", "geometry", "features", "group_norms", "training_curves"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory, trained_small):
    return lrscan.open(analyzed_store(tmp_path_factory, trained_small))


def models(obj, kind):
    return list(hv.render(obj, backend="bokeh").select({"type": kind}))


@pytest.mark.parametrize("value, text", [(0.00749894, "0.0075"), (3.16228e-05, "3.16e-05"), (6.0, "6"),
                                         (55.3333, "55.3"), (1234.5, "1.23e+03"), (float("nan"), "nan"), ("2A", "2A")])
def test_numbers_read_with_three_significant_digits(value, text):
    assert fmt(value) == text


@pytest.mark.parametrize("name", DRAWN)
def test_every_html_figure_has_a_hover_tool_with_the_coordinates_and_value(tree, name):
    hovers = models(getattr(lrscan.plot, name)(tree), HoverTool)
    assert hovers, f"{name} has no hover tool"
    labels = {label for tool in hovers if isinstance(tool.tooltips, list) for label, _ in tool.tooltips}
    x = "epoch" if name == "training_curves" else ("log10 of channel norm" if name == "group_norms" else "PLR")
    assert any(label.startswith(x) for label in labels), labels


def test_ft_accuracy_names_every_flr_and_tells_fine_tuning_below_the_plr_from_above(tree):
    obj = lrscan.plot.ft_accuracy(tree)
    legend = models(obj, Legend)
    assert len(legend) == 1
    labels = [item.label["value"] for item in legend[0].items]
    assert {"FLR 0.001", "FLR 0.01", "PT", "mean over FLR < PLR"} <= set(labels)
    hover = [tool for tool in models(obj, HoverTool) if isinstance(tool.tooltips, list)]
    assert any(label.startswith("FLR") for tool in hover for label, _ in tool.tooltips)
    # Each FLR is drawn whole (dotted) and, where FLR < PLR, solid over it.
    for flr in (0.001, 0.01):
        whole = [e for e in obj if isinstance(e, hv.Curve) and e.label == f"FLR {fmt(flr)}"][0]
        assert whole.opts.get("style", backend="bokeh").kwargs["line_dash"] == "dotted"
        plr = tree["pretrain/metrics"].plr.values
        below = plr[plr > flr]
        solid = [e for e in obj if isinstance(e, hv.Curve) and not e.label
                 and e.opts.get("style", backend="bokeh").kwargs.get("line_width") == 2.5
                 and len(e) == below.size and np.allclose(e.dimension_values("plr"), below)]
        assert solid, f"no solid part of FLR {flr} where FLR < PLR"


def test_angle_panels_mark_pi_over_2(tree):
    angle = list(lrscan.plot.geometry(tree))[0]
    assert [e.data for e in angle if isinstance(e, hv.HLine)] == [math.pi / 2]


def test_features_has_one_colour_bar_the_sparsity_index_and_its_legend_inside(tree):
    obj = lrscan.plot.features(tree)
    assert len(models(obj, ColorBar)) == 1
    panels = list(obj)
    assert "sparsity" in {d.name for e in panels[-1] for d in e.dimensions()}
    sparsity = tree["analysis/features"]["sparsity"].mean("seed")
    shown = [e for e in panels[-1] if isinstance(e, hv.Curve) and e.label == "PT"][0]
    np.testing.assert_allclose(shown.dimension_values("sparsity"), sparsity.sel(solution="pt").values)
    # The legends sit inside their panels (a legend beside a panel that has a colour bar comes adrift of it).
    plots = list(hv.render(obj, backend="bokeh").select({"type": bokeh_figure}))
    inside = [r for p in plots for r in p.center if isinstance(r, Legend) and r.items]
    beside = [r for p in plots for r in [*p.right, *p.left] if isinstance(r, Legend) and r.items]
    assert inside and not beside


@pytest.mark.parametrize("name", DRAWN)
def test_a_row_of_panels_fits_a_1280_px_window(tree, name):
    obj = getattr(lrscan.plot, name)(tree)
    n = len(obj) if isinstance(obj, hv.Layout) else 1
    assert styles.grid_shape(n)[1] * styles.PANEL_WIDTH <= 1280 - 2 * 40  # the page's margins


def test_regime_names_do_not_repeat_their_labels(tree):
    assert all(label not in name for label, name in REGIME_NAMES.items() if label != "2")
    text = lrscan.plot.summary(tree)
    assert "(chaotic equilibrium, 2B)" not in text and "(chaotic equilibrium, 2A)" not in text


def test_the_summary_gives_the_best_plr_range_of_analyze_best(tree):
    from lrscan.analyze.best import best

    top = best(tree, "ft") or best(tree, "swa")
    text = lrscan.plot.summary(tree)
    assert f"Best PLR range (the PLRs tied with the best, {fmt(top.plr)}, within the noise" in text
    assert f"): {fmt(top.low)} to {fmt(top.high)}." in text
    # The best's score is stated once, in its own sentence.
    assert text.count(f"{fmt(100 * top.accuracy)}% ± {fmt(100 * top.se)}") == 1


def test_narrow_regime_spans_name_their_regimes_at_two_heights():
    import xarray as xr

    plr = 10.0 ** np.linspace(-4, 0, 21)
    labels = ["1"] * 8 + ["2A", "2B"] + ["3"] * 11
    regimes = xr.Dataset({"regime_mode": ("plr", np.array(labels, dtype=object)),
                          "boundary_geomean": ("boundary", np.array([np.nan] * 3))},
                         coords={"plr": plr, "boundary": ["1|2", "2A|2B", "2|3"]})
    tree = xr.DataTree.from_dict({"/analysis/regimes": regimes})
    texts = {m.text: m.y for m in styles.regime_marks(tree, 90, below=80) if isinstance(m, hv.Text)}
    assert texts["2A"] != texts["2B"]  # neighbours too narrow for their names side by side
    assert texts["1"] == texts["3"] == 90


def test_plot_writes_svg_pdf_and_png_at_the_dpi_asked(tmp_path, tree, trained_small, tmp_path_factory):
    store = analyzed_store(tmp_path_factory, trained_small)
    result = CliRunner().invoke(plot, [str(store), "--out", str(tmp_path), "--format", "png,svg,pdf", "--dpi", "50"])
    assert result.exit_code == 0, result.output
    assert "(HTML, PNG, SVG, PDF)" in result.stderr
    for name in DRAWN:
        for kind in ("html", "png", "svg", "pdf"):
            assert (tmp_path / f"{name}.{kind}").stat().st_size > 0
        assert Image.open(tmp_path / f"{name}.png").size == styles.figure_size(getattr(lrscan.plot, name)(tree), 50)
    assert (tmp_path / "geometry.svg").read_text().lstrip().startswith("<?xml")
    assert (tmp_path / "geometry.pdf").read_bytes().startswith(b"%PDF")


@pytest.mark.parametrize("args, message", [(["--format", "png,jpg"], "--format 'png,jpg': the formats are png, svg, pdf, comma-separated"),
                                           (["--dpi", "5"], "dpi 5 is out of range: 10 to 1200")])
def test_a_bad_format_or_dpi_is_one_line_and_exit_2(tmp_path, trained_small, tmp_path_factory, args, message):
    store = analyzed_store(tmp_path_factory, trained_small)
    result = CliRunner().invoke(plot, [str(store), "--out", str(tmp_path / "figs"), *args])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [f"Error: {message}"]
    assert not (tmp_path / "figs").exists()

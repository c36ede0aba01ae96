"""The study's figures (`lrscan plot`, `lrscan.plot.<figure>`) and the explorer's app, without a browser."""

import os
import signal
import socket
import threading
import time
from html.parser import HTMLParser
from urllib.error import URLError
from urllib.request import urlopen

import holoviews as hv
import numpy as np
import pytest
import xarray as xr
from click.testing import CliRunner
from PIL import Image

import lrscan
import lrscan.plot
from lrscan.plot import styles
from lrscan.plot.registry import FIGURES
from lrscan.plot.commands import explore, plot
from lrscan.plot.explore import Views, check_port, make_app
from tests.browser import analyzed_store, free_port, written_figures
from tests.drawn import fills

# The (x, y) dimensions of each panel of each figure.
PANELS = {
    "pt_accuracy": [("plr", "test_acc")],
    "ft_accuracy": [("plr", "test_acc")],
    "swa_accuracy": [("plr", "test_acc")],
    "geometry": [("plr", "angle"), ("plr", "train_barrier"), ("plr", "test_barrier")],
    "features": [("plr", "feature_acc")] * 4 + [("plr", "sparsity")],
    "group_norms": [("log10_norm", "channels")] * 3 + [("plr", "log10_norm")],
    "training_curves": [("epoch", "train_loss"), ("epoch", "test_acc")],
}
UNITS = {"test_acc": "(%)", "angle": "(rad)", "train_barrier": "(%)", "test_barrier": "(%)", "feature_acc": "(%)",
         "channels": "(%)", "train_loss": "(nats)"}


@pytest.fixture(scope="module")
def store(tmp_path_factory, trained_small):
    return analyzed_store(tmp_path_factory, trained_small)


@pytest.fixture(scope="module")
def tree(store):
    return lrscan.open(store)


@pytest.fixture(scope="module")
def written(tmp_path_factory, store):
    return written_figures(tmp_path_factory, store)


def panels_of(obj):
    return list(obj) if isinstance(obj, hv.Layout) else [obj]


def plot_options(panel) -> dict:
    return panel.opts.get("plot", backend="bokeh").kwargs


def test_every_figure_has_a_registered_expectation():
    # Figures of other kinds of stores (threshold, two-stage, sharpness, scan) are tested in their own files.
    assert set(FIGURES) == set(PANELS) | {"frequency", "threshold", "two_stage", "sharpness", "scan"}
    assert all(callable(getattr(lrscan.plot, name)) for name in FIGURES)


@pytest.mark.parametrize("name", sorted(PANELS))
def test_figure_functions_return_labelled_holoviews_objects(tree, name):
    obj = getattr(lrscan.plot, name)(tree)
    assert isinstance(obj, (hv.Overlay, hv.Layout))
    assert len(panels_of(obj)) == len(PANELS[name])
    for panel, (x, y) in zip(panels_of(obj), PANELS[name]):
        names = {d.name for element in panel for d in element.dimensions()}
        assert {x, y} <= names, f"{name}: panel lacks {x} / {y} in {names}"
        options = plot_options(panel)
        assert options["title"]
        y_label = options.get("ylabel") or next(d for e in panel for d in e.dimensions() if d.name == y).pprint_label
        assert UNITS.get(y, "") in y_label, f"{name}: no unit in the y label {y_label!r}"
        if x == "plr":
            assert options["logx"] and options["xlabel"].startswith("PLR")
            # The small store's PLRs are all in regime 3 (diverged at chance): one shaded span, named.
            texts = [e.text for e in panel if isinstance(e, hv.Text)]
            assert texts == ["3"]
            assert any(isinstance(e, hv.VSpan) for e in panel) or name == "group_norms"


def test_figures_show_the_stored_values(tree):
    acc = tree["analysis/metrics"]["ft_test_acc"].mean("seed").values
    curves = [e for e in lrscan.plot.ft_accuracy(tree) if isinstance(e, hv.Curve) and e.label.startswith("FLR")]
    assert [c.label for c in curves] == ["FLR 0.001", "FLR 0.01"]
    np.testing.assert_allclose(np.stack([c.dimension_values("test_acc") for c in curves], 1), 100 * acc, rtol=1e-6)
    barrier = tree["analysis/barriers"]["test_barrier"].mean("seed").values
    test_panel = list(lrscan.plot.geometry(tree))[2]
    shown = np.stack([c.dimension_values("test_barrier") for c in test_panel if isinstance(c, hv.Curve)], 1)
    np.testing.assert_allclose(shown, np.maximum(barrier, styles.BARRIER_FLOOR))


def fake_regimes(labels, boundaries):
    plr = 10.0 ** np.arange(len(labels)) / 1000
    regimes = xr.Dataset({"regime_mode": ("plr", np.array(labels, dtype=object)),
                          "boundary_geomean": ("boundary", np.array(boundaries, dtype=float))},
                         coords={"plr": plr, "boundary": ["1|2", "2A|2B", "2|3"]})
    return xr.DataTree.from_dict({"/analysis/regimes": regimes}), plr


def test_regime_spans_shade_contiguous_runs_of_the_most_common_regime():
    tree, plr = fake_regimes(["1", "1", "2A", "2B", "2B", "3"], [0.03, 0.3, np.nan])
    spans = styles.regime_spans(tree)
    assert [label for label, _, _ in spans] == ["1", "2A", "2B", "3"]
    edges = [start for _, start, _ in spans] + [spans[-1][2]]
    np.testing.assert_allclose(edges[1:-1], [np.sqrt(plr[1] * plr[2]), np.sqrt(plr[2] * plr[3]),
                                             np.sqrt(plr[4] * plr[5])])
    assert all(a[2] == b[1] for a, b in zip(spans, spans[1:]))  # no gaps, no overlaps
    marks = styles.regime_marks(tree, label_y=50)
    assert [m.text for m in marks if isinstance(m, hv.Text)] == ["1", "2A", "2B", "3"]
    assert sorted(m.data for m in marks if isinstance(m, hv.VLine)) == [0.03, 0.3]  # NaN boundary: no line
    assert len([m for m in marks if isinstance(m, hv.VSpan)]) == 4


def test_frequency_is_skipped_without_its_analysis_and_drawn_with_it(tree, written):
    assert FIGURES["frequency"].missing(tree)
    out, _ = written
    assert not (out / "frequency.html").exists()
    rng = np.random.default_rng(0)
    solutions = ["pt", "swa=3", "ft=0.001", "ft=0.01"]
    acc = xr.DataArray(rng.random((2, 2, 4, 4)), dims=("plr", "seed", "solution", "band"),
                       coords={"plr": tree["pretrain/metrics"].plr.values, "seed": [0, 1], "solution": solutions,
                               "band": ["background", "low", "mid", "high"]})
    with_frequency = tree.copy()
    result = xr.Dataset({"band_acc": acc, "test_acc": acc.mean("band")}, attrs={"chance": 0.1})
    with_frequency["analysis/frequency"] = xr.DataTree(result)
    obj = lrscan.plot.frequency(with_frequency)
    assert [plot_options(p)["title"] for p in obj] == ["PT", "SWA (K = 3)", "FT (FLR 0.001)", "FT (FLR 0.01)"]
    assert all("band_acc" in {d.name for e in p for d in e.dimensions()} for p in obj)


def test_a_result_left_half_written_is_not_drawn(tree):
    broken = tree.copy()
    broken["analysis/angles"].attrs = {k: v for k, v in tree["analysis/angles"].attrs.items()
                                       if k != "lrscan_fingerprint"}
    assert "angles" in FIGURES["geometry"].missing(broken)
    assert FIGURES["geometry"].missing(tree) is None


def test_lrscan_plot_writes_every_figure_and_an_index(written):
    out, result = written
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out / "index.html")
    # The small store's dataset (ticks) has no images: the frequency analysis cannot apply, and plot says so.
    assert ("frequency        skipped: does not apply to this store: the frequency analysis needs the bands "
            "evaluation sets, which dataset 'ticks' does not provide") in result.stderr
    for name in PANELS:
        assert (out / f"{name}.html").stat().st_size > 0 and (out / f"{name}.png").stat().st_size > 0
    index = (out / "index.html").read_text()
    for name in PANELS:
        assert f"href='{name}.html'" in index and f"src='{name}.png'" in index
    assert "Best fine-tuned test accuracy" in index and "<table>" in index and "sweep.plr" in index


class References(HTMLParser):
    """The src and href attributes of a page's tags (not of strings inside its scripts)."""

    def __init__(self, text: str):
        super().__init__()
        self.refs = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.refs += [value for name, value in attrs if name in ("src", "href")]


def test_pages_load_nothing_from_outside(written):
    out, _ = written
    for page in out.glob("*.html"):
        refs = References(page.read_text()).refs
        assert all((out / ref).is_file() for ref in refs), f"{page.name} refers to {refs}"
    linked = set(References((out / "index.html").read_text()).refs)
    assert linked == {f"{name}.{kind}" for name in PANELS for kind in ("html", "png")}


@pytest.mark.parametrize("name", sorted(PANELS))
def test_pngs_are_images_of_the_figure_size(tree, written, name):
    out, _ = written
    image = Image.open(out / f"{name}.png").convert("L")
    assert image.size == styles.figure_size(getattr(lrscan.plot, name)(tree))
    pixels = np.asarray(image)
    assert (pixels < 250).mean() > 0.05, "the image is nearly blank"
    assert len(np.unique(pixels)) > 20


def test_summary_states_the_results(tree):
    from lrscan.analyze.best import best
    from lrscan.plot.numbers import fmt

    text = lrscan.plot.summary(tree)
    # The study's best: fine-tuning below the PLR, averaged over those FLRs; SWA's best K; not the
    # single best run (which may be a low PLR trained on with a higher LR).
    ft, swa = best(tree, "ft"), best(tree, "swa")
    assert f"Best fine-tuned test accuracy {fmt(100 * ft.accuracy)}% ± {fmt(100 * ft.se)} at PLR {fmt(ft.plr)}" in text
    assert f"Best SWA test accuracy {fmt(100 * swa.accuracy)}% ± {fmt(100 * swa.se)} at PLR {fmt(swa.plr)}" in text
    assert "Best PLR range" in text
    assert "No seed crosses the convergence threshold" in text and "3 (divergence) from 0.003 to 0.1" in text
    assert "No PLR is labelled 2A by any seed" in text


def test_the_summary_says_where_2a_lies_with_its_seeds_and_interval():
    import xarray as xr

    from lrscan.analyze.regimes import LABELS
    from lrscan.plot.summary_text import _finding

    plr = np.array([1e-3, 1e-2, 1e-1])
    share = np.zeros((3, len(LABELS)))
    share[:, LABELS.index("1")] = [1, 0, 0]
    share[1, LABELS.index("2A")], share[1, LABELS.index("2B")] = 2 / 3, 1 / 3
    share[2, LABELS.index("3")] = 1
    regimes = xr.Dataset(
        {"regime_share": (("plr", "label"), share),
         "boundary_fit": ("boundary", [3e-3, 2e-2, 5e-2]), "boundary_low": ("boundary", [1e-3, 1e-2, 1e-2]),
         "boundary_high": ("boundary", [1e-2, 1e-1, 1e-1]), "regime": (("plr", "seed"), np.full((3, 3), "1"))},
        coords={"plr": plr, "label": list(LABELS), "boundary": ["1|2", "2A|2B", "2|3"], "seed": [0, 1, 2]})
    text = _finding(xr.DataTree.from_dict({"analysis/regimes": regimes}))
    assert "at PLR 0.01 (2 of 3 seeds); the 2A|2B boundary at PLR 0.02 (95% interval 0.01 to 0.1)." in text
    assert text.startswith("Subregime 2A — just above the convergence threshold")


def test_plot_refuses_a_store_without_analyses(trained_small, tmp_path):
    result = CliRunner().invoke(plot, [str(trained_small), "--out", str(tmp_path / "figs")])
    assert result.exit_code == 2
    assert result.stderr.strip() == f"Error: the store has no analyses yet; run `lrscan analyze {trained_small}` first"
    assert not (tmp_path / "figs").exists()


@pytest.mark.parametrize("command", [plot, explore], ids=["plot", "explore"])
def test_a_missing_store_is_one_line_and_exit_2(command, tmp_path):
    result = CliRunner().invoke(command, [str(tmp_path / "nope.zarr")])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "no store at" in result.stderr


def test_explore_refuses_an_occupied_port(store):
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = CliRunner().invoke(explore, [str(store), "--port", str(port)])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [f"Error: port {port} is not free (Address already in use); "
                                                  "pick another with --port"]


def poisoned(tree: xr.DataTree, groups=None) -> xr.DataTree:
    """``tree`` with the data variables of ``groups`` (default: all) replaced by lazy arrays that fail when read."""

    def fail(block):
        raise AssertionError("read a variable the explorer should not read")

    def poison(ds: xr.Dataset) -> xr.Dataset:
        return ds.map(lambda v: v.copy(data=v.data.map_blocks(fail, dtype=v.dtype)) if v.chunks else v)

    out = tree.copy()
    for group in groups or [node.path for node in tree.subtree if node.data_vars]:
        out[group].dataset = poison(tree[group].to_dataset(inherit=False))
    return out


def test_explorer_opens_without_reading_and_never_reads_weights(tree):
    make_app(poisoned(tree))  # opening reads coordinates only
    app = make_app(poisoned(tree, ["pretrain/weights", "finetune/weights", "swa/weights"]))
    root = app.get_root()  # draws every view of the first run
    titles = {m.text for m in root.references() if type(m).__name__ == "Title" and m.text}
    assert "Run PLR 0.003, seed 0: accuracy" in titles
    assert "Test accuracy vs PLR at epoch 6 (FT with FLR 0.001)" in titles
    assert any(t.startswith("Single-feature test accuracy, PLR 0.003, seed 0") for t in titles)


def test_explorer_shows_the_training_curves_before_any_analysis(trained_small):
    root = make_app(lrscan.open(trained_small)).get_root()
    titles = {m.text for m in root.references() if type(m).__name__ == "Title" and m.text}
    assert titles == {"Test accuracy vs PLR at epoch 6 (FT with FLR 0.001)", "Run PLR 0.003, seed 0: accuracy",
                      "Run PLR 0.003, seed 0: loss (cross-entropy)"}


def test_explorer_views_follow_the_widgets(tree):
    views = Views(tree)
    first = views.curves(0.003, 0.001, 0, 6.0, "acc")
    second = views.curves(0.1, 0.01, 1, 6.0, "acc")
    assert plot_options(second)["title"] == "Run PLR 0.1, seed 1: accuracy"
    test = [e for e in second if isinstance(e, hv.Curve) and e.label == "test (FT, FLR 0.01)"][0]
    expected = tree["finetune/metrics"]["test_acc"].sel(plr=0.1, flr=0.01, seed=1).values
    np.testing.assert_allclose(test.dimension_values("accuracy"), 100 * expected, rtol=1e-6)
    assert plot_options(first)["title"] != plot_options(second)["title"]
    pt_epoch = plot_options(views.overview(0.003, 0.001, 0, 2.0))["title"]
    assert pt_epoch == "Test accuracy vs PLR at epoch 2 (PT)"


def test_explore_serves_until_ctrl_c_and_stops_cleanly(store):
    port = free_port()
    served, returned = [], threading.Event()

    def page_served() -> bool:
        try:
            return urlopen(f"http://localhost:{port}/", timeout=10).status == 200
        except URLError:
            return False

    def interrupt_once_serving():
        deadline, ok = time.monotonic() + 60, False
        while not (ok or returned.is_set() or time.monotonic() > deadline):
            time.sleep(0.2)
            ok = page_served()
        served.append(ok)
        if not returned.is_set():  # Ctrl-C, also after a timeout, so that the command cannot serve forever
            os.kill(os.getpid(), signal.SIGINT)

    handler = signal.getsignal(signal.SIGINT)
    threading.Thread(target=interrupt_once_serving, daemon=True).start()
    result = CliRunner().invoke(explore, [str(store), "--port", str(port)])
    returned.set()
    assert result.exit_code == 0, result.output
    assert served == [True]
    assert result.stderr.splitlines() == [f"serving {store} at http://localhost:{port} (Ctrl-C to stop)", "stopped"]
    assert signal.getsignal(signal.SIGINT) is handler
    check_port(port)  # released


@pytest.mark.parametrize("name", list(PANELS))
def test_the_html_and_the_png_fill_each_area_in_the_same_colour(tree, name):
    obj = getattr(lrscan.plot, name)(tree)
    html, png = fills(obj, "bokeh"), fills(obj, "matplotlib")
    assert html == png
    if name in ("pt_accuracy", "group_norms"):  # a band of ± std; a histogram per PLR
        assert html

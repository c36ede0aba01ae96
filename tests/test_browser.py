"""lrscan's figure pages and explorer in headless Chromium: they load cleanly, draw, and respond.

Skipped only when Debian's chromium / chromium-driver are not installed (.ci/run installs them).
"""

import contextlib

import numpy as np
import pytest

import lrscan
from lrscan.plot.explore import serve
from lrscan.plot.numbers import JS_FORMAT, fmt
from tests.browser import (
    WINDOW, analyzed_store, bokeh_rendered, chromium_driver, console_errors, free_port, ink, quit_driver, wait_for,
    written_figures,
)

FIGURE_PAGES = ["pt_accuracy", "ft_accuracy", "swa_accuracy", "geometry", "features", "group_norms", "training_curves"]

# JavaScript: the text of every plot title in the page's Bokeh document (none before it exists).
TITLES = ("return window.Bokeh && Bokeh.documents.length ? [...Bokeh.documents[0].all_models]"
          ".filter(m => m.type === 'Title' && m.text).map(m => m.text) : []")

# JavaScript prelude: ``views``, every Bokeh view of the page (their DOM is in shadow roots).
VIEWS = """
const views = [], seen = new Set();
function walk(view) {
  if (!view || seen.has(view)) return;
  seen.add(view); views.push(view);
  for (const child of (view.child_views || [])) walk(child);
}
for (const view of Object.values(Bokeh.index)) walk(view);
"""


def pick_seed(driver, value: str) -> None:
    """Choose ``value`` in the explorer's seed select, as a user would."""
    driver.execute_script(
        "const seed = [...Bokeh.documents[0].all_models].find(m => m.title === 'seed' && m.options !== undefined);"
        "seed.value = arguments[0];", value)


@contextlib.contextmanager
def explorer(store):
    """The explorer of ``store`` served on a free port, for the block; yields its URL."""
    port = free_port()
    server = serve(lrscan.open(store), port, block=False)
    try:
        yield f"http://localhost:{port}/"
    finally:
        server.stop()


@pytest.fixture(scope="module")
def driver():
    browser = chromium_driver()
    yield browser
    quit_driver(browser)


@pytest.fixture(scope="module")
def store(tmp_path_factory, trained_small):
    return analyzed_store(tmp_path_factory, trained_small)


@pytest.fixture(scope="module")
def figures_dir(tmp_path_factory, store):
    out, result = written_figures(tmp_path_factory, store)
    assert result.exit_code == 0, result.output
    return out


def plot_ink(driver) -> float:
    """Ink of the screenshot within the plot's root element (not the page's title and caption)."""
    box = driver.execute_script(
        "const r = document.querySelector('[data-root-id] > *').getBoundingClientRect();"
        "return [r.left, r.top, r.width, r.height, window.devicePixelRatio]")
    return ink(driver, box)


def test_index_page_loads_cleanly_and_shows_every_figure(driver, figures_dir):
    driver.get((figures_dir / "index.html").as_uri())
    images = driver.execute_script(
        "return [...document.images].map(i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0])")
    assert len(images) == 7 and all(loaded for _, loaded in images), images
    assert console_errors(driver) == []
    assert ink(driver) > 0.05
    assert "Best fine-tuned test accuracy" in driver.find_element("id", "summary").text


@pytest.mark.parametrize("name", ["geometry", "training_curves"])
def test_a_figure_page_renders_its_plot_offline(driver, figures_dir, name):
    driver.get((figures_dir / f"{name}.html").as_uri())
    wait_for(lambda: bokeh_rendered(driver))
    assert console_errors(driver) == []
    assert plot_ink(driver) > 0.05, "the plot area is blank"
    assert len(driver.execute_script(TITLES)) >= 2


@pytest.mark.parametrize("name", FIGURE_PAGES)
def test_each_figure_fits_a_1280_px_window_with_its_legend_or_colour_bar_in_view(driver, figures_dir, name):
    driver.get((figures_dir / f"{name}.html").as_uri())
    wait_for(lambda: bokeh_rendered(driver))
    assert driver.execute_script("return window.innerWidth") == WINDOW[0] == 1280
    page = driver.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
    assert page[0] <= page[1], f"{name} overflows the window: {page[0]} px wide"
    right = driver.execute_script("return document.querySelector('[data-root-id] > *').getBoundingClientRect().right")
    assert right <= WINDOW[0]
    keys = driver.execute_script(
        "return [...Bokeh.documents[0].all_models].filter(m => (m.type === 'Legend' && m.visible && m.items.length)"
        " || m.type === 'ColorBar').map(m => m.type)")
    assert keys, f"{name} has neither a legend nor a colour bar"
    assert console_errors(driver) == []


def test_hover_numbers_read_as_the_figures_do(driver, figures_dir):
    driver.get((figures_dir / "index.html").as_uri())
    values = [0.00749894, 3.16228e-05, 6.0, 55.3333, 1234.5, 0.1, -0.0025, 0.0]
    shown = driver.execute_script(f"const f = new Function('value', {JS_FORMAT!r}); return arguments[0].map(f)", values)
    assert shown == [fmt(v) for v in values]


def test_explorer_renders_and_a_widget_updates_its_plots(driver, store):
    with explorer(store) as url:
        driver.get(url)
        wait_for(lambda: "Run PLR 0.003, seed 0: accuracy" in driver.execute_script(TITLES), timeout=60)
        assert console_errors(driver) == []
        assert ink(driver) > 0.05
        before = driver.execute_script(TITLES)
        pick_seed(driver, "1")
        after = wait_for(lambda: "Run PLR 0.003, seed 1: accuracy" in driver.execute_script(TITLES)
                         and driver.execute_script(TITLES), timeout=30)
        assert "Run PLR 0.003, seed 0: accuracy" in before and "Run PLR 0.003, seed 0: accuracy" not in after
        assert console_errors(driver) == []


# JavaScript: [type, left, right] of every widget's element.
WIDGET_BOXES = VIEWS + """
const out = [];
for (const view of views) {
  if (/Select|Slider/.test(view.model.type) && view.el) {
    const r = view.el.getBoundingClientRect();
    if (r.width > 0) out.push([view.model.type, r.left, r.right]);
  }
}
return out;
"""

# JavaScript: [start, end] of the y range of the plot whose title starts with arguments[0].
Y_RANGE = ("const p = [...Bokeh.documents[0].all_models].find(m => m.title && m.title.text"
           " && m.title.text.startsWith(arguments[0]) && m.y_range); return p ? [p.y_range.start, p.y_range.end] : null")


def test_the_explorer_keeps_its_selection_in_the_url_fits_1280_px_and_rescales(driver, store):
    with explorer(store) as url:
        # Opening a URL gives its view.
        driver.get(f"{url}?plr=0.1&seed=1&epoch=2")
        wait_for(lambda: "Run PLR 0.1, seed 1: accuracy" in driver.execute_script(TITLES), timeout=60)
        assert "Test accuracy vs PLR at epoch 2 (PT)" in driver.execute_script(TITLES)
        assert console_errors(driver) == []
        page = driver.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
        assert page[0] <= page[1] == 1280, f"the explorer overflows the window: {page}"
        # Every widget lies inside the window, none clipped.
        boxes = driver.execute_script(WIDGET_BOXES)
        assert len(boxes) >= 3 and all(0 <= left and right <= 1280 for _, left, right in boxes), boxes
        text = driver.find_element("tag name", "body").text
        assert "regime" in text and "angle" in text and "rad" in text
        # A new selection goes into the URL.
        pick_seed(driver, "0")
        wait_for(lambda: "Run PLR 0.1, seed 0: accuracy" in driver.execute_script(TITLES), timeout=30)
        wait_for(lambda: "seed=0" in driver.execute_script("return window.location.search"), timeout=10)
        search = driver.execute_script("return window.location.search")
        assert "plr=0.1" in search and "epoch=2" in search
        assert console_errors(driver) == []


def run_accuracy_range(tree, plr: float, seed: int) -> tuple[float, float]:
    """Lowest and highest train or test accuracy (%) of a run's PT and of its FT with the first FLR (the
    explorer's default)."""
    pt = tree["pretrain/metrics"].to_dataset().sel(plr=plr, seed=seed)
    ft = tree["finetune/metrics"].to_dataset().sel(plr=plr, seed=seed).isel(flr=0)
    values = np.concatenate([stage[f"{split}_acc"].values for stage in (pt, ft) for split in ("train", "test")])
    return 100 * float(np.nanmin(values)), 100 * float(np.nanmax(values))


def test_the_explorer_s_axes_follow_the_selection(driver, store):
    with explorer(store) as url:
        driver.get(f"{url}?plr=0.1&seed=1&epoch=2")
        wait_for(lambda: "Run PLR 0.1, seed 1: accuracy" in driver.execute_script(TITLES), timeout=60)
        before = driver.execute_script(Y_RANGE, "Run PLR")
        pick_seed(driver, "0")
        wait_for(lambda: "Run PLR 0.1, seed 0: accuracy" in driver.execute_script(TITLES), timeout=30)
        # The run's curves (another seed's data): their axes take the new data's range, not the first one's.
        wait_for(lambda: driver.execute_script(Y_RANGE, "Run PLR") != before, timeout=15)
        low, high = run_accuracy_range(lrscan.open(store), plr=0.1, seed=0)
        start, end = driver.execute_script(Y_RANGE, "Run PLR 0.1, seed 0: accuracy")
        assert start <= low and high <= end, (start, end, low, high)
        assert end - start <= 1.5 * (high - low), f"the axis ({start}, {end}) does not fit ({low}, {high})"
        assert console_errors(driver) == []


# JavaScript: of the plot whose title starts with arguments[0] (null until it is drawn), the labels of
# its visible legends and their right edges, whether its toolbar moved tools into its overflow menu (⋯),
# the toolbar's [left, right], the plot's right edge, and the field and factors its bars' colours are
# mapped from.
PLOT_KEYS = VIEWS + """
const plot = views.find(v => v.model.toolbar && v.model.title && v.model.title.text.startsWith(arguments[0]));
const toolbar = plot ? plot.owner.find_one(plot.model.toolbar) : null;
if (!toolbar || !toolbar.el.isConnected) return null;  // not drawn yet
const m = plot.model, box = plot.el.getBoundingClientRect(), bar = toolbar.el.getBoundingClientRect();
const legends = [...m.right, ...m.center, ...m.left, ...m.above, ...m.below]
  .filter(a => a.type === 'Legend' && a.visible).map(a => plot.owner.find_one(a)).filter(v => v);
const fills = m.renderers.filter(r => r.glyph && r.glyph.type === 'VBar').map(r => r.glyph.fill_color);
return {
  labels: legends.flatMap(l => l.model.items.flatMap(i => i.get_labels_list_from_label_prop())),
  legend_right: legends.map(l => box.left + l.bbox.right),
  overflow: toolbar.shadow_el.contains(toolbar.overflow_el),
  toolbar: [bar.left, bar.right],
  right: box.right,
  fills: fills.map(f => [f.field, f.transform ? f.transform.factors : null]),
};
"""


def test_the_explorer_s_bars_have_a_legend_and_every_plot_its_whole_toolbar_at_1280_px(driver, store):
    with explorer(store) as url:
        driver.get(f"{url}?plr=0.1&seed=1&epoch=2")
        wait_for(lambda: any(t.startswith("Single-feature test accuracy") for t in driver.execute_script(TITLES)),
                 timeout=60)
        assert driver.execute_script("return window.innerWidth") == WINDOW[0] == 1280
        bars = wait_for(lambda: driver.execute_script(PLOT_KEYS, "Single-feature test accuracy"))
        # Which solution each bar is: a legend names them, in the colours the bars are drawn in.
        assert bars["labels"] == ["PT", "SWA (K = 3)", "FT (FLR 0.001)"], bars
        assert bars["fills"] == [["solution", bars["labels"]]], bars
        assert bars["legend_right"] and max(bars["legend_right"]) <= WINDOW[0], bars
        titles = [t for t in driver.execute_script(TITLES) if t.startswith(("Test accuracy", "Run PLR", "Error",
                                                                              "Single-feature"))]
        assert len(titles) == 5, titles
        for title in titles:
            keys = wait_for(lambda: driver.execute_script(PLOT_KEYS, title))
            # Every tool in view: none folded into the ⋯ menu, the toolbar inside the window.
            assert not keys["overflow"], f"{title}: the toolbar is cut (tools in its ⋯ menu)"
            assert 0 <= keys["toolbar"][0] and keys["toolbar"][1] <= WINDOW[0] and keys["right"] <= WINDOW[0], keys
        assert console_errors(driver) == []

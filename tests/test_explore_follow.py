"""The explorer follows its store (issue 16.2) and answers only localhost's pages (issue 18.8), without a browser."""

import asyncio
import shutil
from urllib.error import URLError
from urllib.request import urlopen

import numpy as np
import panel as pn
import pytest
import zarr
from bokeh.models import Plot
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

import lrscan
from lrscan.plot.explore import Views, allowed_origins, make_app, progress, serve
from lrscan.plot.numbers import fmt
from tests.browser import analyzed_store, free_port, wait_for


@pytest.fixture(scope="module")
def store(tmp_path_factory, trained_small):
    return analyzed_store(tmp_path_factory, trained_small)


def texts(app) -> str:
    root = app.get_root()
    return " ".join(str(getattr(m, "text", "") or getattr(m, "object", "") or "") for m in root.references())


def with_done(tmp_path, trained, done):
    path = tmp_path / "partial.zarr"
    shutil.copytree(trained, path)
    array = zarr.open_group(str(path), mode="r+")["pretrain/metrics/done"]
    array[...] = np.asarray(done, dtype=array.dtype).reshape(array.shape)
    return lrscan.open(path)


def test_an_untrained_store_shows_a_message_and_no_empty_axes(tmp_path, trained_small):
    tree = with_done(tmp_path, trained_small, np.zeros(4))
    assert progress(tree).startswith("No run of this store has finished pre-training yet")
    root = make_app(tree).get_root()
    assert "No run of this store has finished pre-training yet" in " ".join(
        str(getattr(m, "text", "")) for m in root.references())
    assert not [m for m in root.references() if isinstance(m, Plot)]


def test_an_unfinished_store_says_how_far_it_got_above_the_views(tmp_path, trained_small):
    tree = with_done(tmp_path, trained_small, [1, 0, 1, 1])
    assert progress(tree) == ("3 of 4 pre-training runs have finished: the others show as gaps until `lrscan train` "
                              "completes them (reload the page to see more).")
    root = make_app(tree).get_root()
    assert "3 of 4 pre-training runs have finished" in " ".join(str(getattr(m, "text", "")) for m in root.references())
    assert [m for m in root.references() if isinstance(m, Plot)]
    assert progress(lrscan.open(trained_small)) is None


def test_the_run_s_regime_angles_and_barriers_are_shown_as_numbers(store):
    tree = lrscan.open(store)
    text = Views(tree).numbers(0.1, 1)
    regime = tree["analysis/regimes"]["regime"].sel(plr=0.1, seed=1).values.item()
    assert f"**regime** {regime}" in text
    angle = tree["analysis/angles"]["angle"].sel(plr=0.1, seed=1)
    barrier = tree["analysis/barriers"]["test_barrier"].sel(plr=0.1, seed=1)
    for pair in map(str, angle.pair.values):
        assert f"angle {fmt(float(angle.sel(pair=pair)))} rad" in text
        assert f"test barrier {fmt(float(barrier.sel(pair=pair)))}%" in text  # stored in %


def test_views_rescale_their_axes_with_the_selection(store):
    tree = lrscan.open(store)
    views = Views(tree)
    low, high = views.overview(0.003, 0.001, 0, 2.0), views.overview(0.003, 0.001, 0, 6.0)
    y = lambda o: o.opts.get("plot", backend="bokeh").kwargs["ylim"]  # noqa: E731
    assert y(low) != y(high)  # each frame brings its own range, and the app draws it framewise
    app = make_app(tree)
    root = app.get_root()
    panes = [p for p in app.select(lambda o: type(o).__name__ == "HoloViews")]
    assert panes and all(p.object.last.opts.get("norm", backend="bokeh").kwargs.get("framewise") for p in panes)
    # The served plot's range, which the browser draws, follows the run picked.
    def accuracy_range(title):
        plots = [m for m in root.references() if isinstance(m, Plot) and m.title is not None and m.title.text == title]
        assert len(plots) == 1, title
        return plots[0].y_range.start, plots[0].y_range.end

    seed = next(w for w in app.select(pn.widgets.Select) if w.name == "seed")
    for value in (1, 0):
        seed.value = value
        start, end = accuracy_range(f"Run PLR 0.003, seed {value}: accuracy")
        flr = float(tree["finetune/metrics"].flr[0])
        low, high = Views(tree).curves(0.003, flr, value, 6.0, "acc").range("accuracy")
        assert start <= low and high <= end and end - start <= 1.5 * (high - low), (value, start, end, low, high)
    plr = next(w for w in app.select(pn.widgets.DiscreteSlider) if w.name == "PLR")
    plr.value = 0.1
    start, end = accuracy_range("Run PLR 0.1, seed 0: accuracy")
    low, high = Views(tree).curves(0.1, float(tree["finetune/metrics"].flr[0]), 0, 6.0, "acc").range("accuracy")
    assert start <= low and high <= end and end - start <= 1.5 * (high - low), (start, end, low, high)


def serving(port: int) -> bool:
    try:
        return urlopen(f"http://localhost:{port}/", timeout=10).status == 200
    except URLError:
        return False


def handshake(port: int, origin: str) -> int:
    """The HTTP status of a websocket handshake with the explorer from a page of ``origin``."""

    async def connect():
        request = HTTPRequest(f"ws://localhost:{port}/ws", headers={"Origin": f"http://{origin}"})
        try:
            connection = await websocket_connect(request)
        except HTTPClientError as err:
            return err.code
        connection.close()
        return 101

    return asyncio.run(connect())


def test_the_explorer_refuses_websockets_from_other_sites_unless_allowed(store):
    assert allowed_origins(5006) == ["localhost:5006", "127.0.0.1:5006"]
    port = free_port()
    server = serve(lrscan.open(store), port, block=False, allow_origin=("lab.example:8080",))
    try:
        wait_for(lambda: serving(port), timeout=60)
        assert handshake(port, "evil.example") == 403  # DNS rebinding: a page of another site, pointed at us
        assert handshake(port, f"evil.example:{port}") == 403
        assert handshake(port, f"localhost:{port}") != 403
        assert handshake(port, "lab.example:8080") != 403
    finally:
        server.stop()

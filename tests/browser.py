"""Helpers for the tests that load lrscan's figures and explorer in headless Chromium.

Chromium and its driver are Debian's (``apt-get install chromium chromium-driver``, which
``.ci/run`` does); Selenium drives them through the driver's fixed path, so Selenium Manager
never downloads anything.
"""

from __future__ import annotations

import io
import shutil
import socket
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from lrscan.analyze.run import analyze

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WINDOW = (1280, 1000)  # the window every page must fit (issue 16)

# What the figures and the explorer read; other analyzers (sharpness, ...) would only cost time here.
ANALYSES = ["metrics", "angles", "barriers", "features", "group_norms", "regimes"]

_cache: dict = {}


def analyzed_store(tmp_path_factory, trained: Path) -> Path:
    """A copy of the finished store ``trained`` with the plotted analyses persisted, made once per session."""
    if "store" not in _cache:
        path = tmp_path_factory.mktemp("plot") / "small.zarr"
        shutil.copytree(trained, path)
        analyze(path, ANALYSES)
        _cache["store"] = path
    return _cache["store"]


def written_figures(tmp_path_factory, store: Path):
    """``lrscan plot`` of ``store`` (:func:`analyzed_store`), run once per session: (output directory, click result)."""
    if "figures" not in _cache:
        from click.testing import CliRunner

        from lrscan.plot.commands import plot

        out = tmp_path_factory.mktemp("figures")
        result = CliRunner().invoke(plot, [str(store), "--out", str(out)], catch_exceptions=False)
        _cache["figures"] = (out, result)
    return _cache["figures"]


def chromium_driver():
    """A headless Chromium WebDriver that keeps the browser console log; skips when Chromium is absent."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.skip(f"Chromium is not installed ({', '.join(missing)} missing); "
                    "`apt-get install chromium chromium-driver` (what .ci/run does)")
    from selenium import webdriver  # a dev dependency: missing, it is an error, not a skip
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--no-first-run", "--disable-dev-shm-usage", f"--window-size={WINDOW[0]},{WINDOW[1]}"):
        options.add_argument(arg)
    profile = tempfile.mkdtemp(prefix="lrscan-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    driver.lrscan_profile = profile
    return driver


def quit_driver(driver) -> None:
    driver.quit()
    shutil.rmtree(driver.lrscan_profile, ignore_errors=True)


def console_errors(driver) -> list[str]:
    """SEVERE entries of the browser console since the last call."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def ink(driver, box=None) -> float:
    """Share of the screenshot's pixels that are not white (0 for a blank page), within ``box`` if given.

    ``box`` is (left, top, width, height) in CSS pixels and the device pixel ratio, as
    ``getBoundingClientRect`` and ``devicePixelRatio`` give them.
    """
    from PIL import Image

    image = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("L")
    if box is not None:
        left, top, width, height, ratio = box
        image = image.crop(tuple(int(v * ratio) for v in (left, top, left + width, top + height)))
    return float((np.asarray(image) < 250).mean())


def wait_for(condition, timeout: float = 20.0, every: float = 0.2):
    """Poll ``condition()`` until it returns something truthy, which is returned; fail after ``timeout`` s."""
    end = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {condition.__doc__ or condition}")
        time.sleep(every)


def bokeh_rendered(driver) -> bool:
    """Whether the page's Bokeh document exists and has drawn at least one plot canvas."""
    return bool(driver.execute_script(
        "return !!(window.Bokeh && Bokeh.documents && Bokeh.documents.length"
        " && Bokeh.index && Object.keys(Bokeh.index).length)"
        " && document.querySelectorAll('.bk-Figure, .bk-GridPlot, .bk-Column').length > 0"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]

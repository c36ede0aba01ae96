"""Every script in examples/ runs against a small finished store."""

import runpy
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.py"))
# What each example must print: one line per question it asks of the store.
EXPECTED = {
    "analyze_store.py": ["best fine-tuned test accuracy", "regime per PLR", "convergence threshold",
                         "angle FT-low ~ FT-high", "test barrier FT-low ~ FT-high in 2A", "effective feature count",
                         "SWA test accuracy per K", "mean SI gradient norm", "max/min channel norm ratio"],
    "plot_store.py": ["PT accuracy figure", "geometry panels", "summary:"],
    "frequency_bands.py": ["test accuracy per band", "band relied on most", "mid-band accuracy vs low/mid boundary"],
}
# Examples that make their own (image) store: they get a path to train into.
OWN_STORE = {"frequency_bands.py"}


def test_every_example_has_expectations():
    assert {p.name for p in EXAMPLES} == set(EXPECTED)


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(script, trained_small, tmp_path, monkeypatch, capsys):
    store = tmp_path / "own.zarr" if script.name in OWN_STORE else trained_small
    monkeypatch.setattr(sys, "argv", [str(script), str(store)])
    runpy.run_path(str(script), run_name="__main__")
    out = capsys.readouterr().out
    for line in EXPECTED[script.name]:
        assert line in out, f"{script.name} did not print {line!r}"
    if script.name == "analyze_store.py":
        assert "nan" not in out.split("regime per PLR")[0]  # the accuracy summary is a real number
    if script.name == "frequency_bands.py":
        assert "'mid'" in out.split("band relied on most")[1]  # the planted band

"""lrscan scan: the search against a planted response, and scans of a tiny sweep that resume exactly."""

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

import lrscan
from lrscan.cli import main
from lrscan.errors import LrscanError
from lrscan.scan import Observation, Scan, Search, drive, fine_grid, pick_flrs, select_plr
from lrscan.spec import load_spec
from lrscan.testing import assert_stores_identical
from tests.conftest import SMALL

# --- the search against a simulated response ---------------------------------------------------

GRID = tuple(np.linspace(-4.5, 0.0, 73))  # the synthetic preset's PLR range at 16 per decade
STEP = GRID[1] - GRID[0]
# Planted: convergence threshold, 2A|2B boundary, 2|3 boundary, best fine-tuned accuracy (log10 PLR).
PLANTED = {"1|2": -2.83, "2A|2B": -2.31, "2|3": -1.1, "recommended": -2.6}


def response(planted=PLANTED, label_noise=0.0, acc_noise=0.0, seeds=2):
    """Training stood in for by a function of log-LR: each seed's regime label from where its
    log-LR (jittered by ``label_noise`` per seed) falls among the planted boundaries; the fine-tuned
    accuracy a parabola peaking at the planted optimum, plus ``acc_noise``."""

    def observe(picks):
        out = {}
        for i in picks:
            x, rng = GRID[i], np.random.default_rng(i)
            labels = []
            for _ in range(seeds):
                xs = x + label_noise * rng.normal()
                labels.append("1" if xs < planted["1|2"] else "2A" if xs < planted["2A|2B"]
                              else "2B" if xs < planted["2|3"] else "3")
            acc = 0.93 - 0.3 * (x - planted["recommended"]) ** 2 + acc_noise * rng.normal()
            out[i] = Observation(tuple(labels), acc if x < planted["2|3"] else 0.5)
        return out

    return observe


def scan_with_budget(observe, n_plr, precision=STEP / 2):
    """The search's final estimates when at most ``n_plr`` PLRs may be trained."""
    budget = (lambda picks, trace: "budget" if len(trace.observed) + len(picks) > n_plr else None)
    return drive(Search(GRID, precision=precision), observe, budget)


def test_search_converges_to_the_planted_values_as_the_budget_grows():
    widths, errors = [], []
    for n_plr in (10, 12, 15, 19, 1000):
        trace = scan_with_budget(response(), n_plr)
        estimate = trace.history[-1]
        for name, est in estimate.items():
            assert est.low <= PLANTED[name] <= est.high, (n_plr, name, est)
        widths.append([estimate[q].uncertainty for q in ("1|2", "2A|2B")])
        errors.append([abs(estimate[q].value - PLANTED[q]) for q in estimate])
    assert np.all(np.diff(widths, axis=0) <= 1e-12)  # the brackets only narrow
    assert np.all(np.array(errors[-1]) < np.array(errors[0]))
    # with room to spare: the boundaries to half a grid step, the optimum to one
    assert trace.stopped == "resolved"
    assert max(widths[-1]) == pytest.approx(STEP / 2)
    assert errors[-1][0] <= STEP / 2 and errors[-1][1] <= STEP / 2 and errors[-1][2] <= STEP
    assert len(trace.observed) < len(GRID) / 3  # a fraction of the grid


def test_seeds_that_disagree_widen_the_brackets_around_the_planted_values():
    for n_plr in (10, 15, 20, 1000):
        trace = scan_with_budget(response(label_noise=0.05, acc_noise=0.005), n_plr)
        for name, est in trace.history[-1].items():
            assert est.low <= PLANTED[name] <= est.high, (n_plr, name, est)
    assert trace.stopped in ("resolved", "ambiguous")
    assert abs(trace.history[-1]["1|2"].value - PLANTED["1|2"]) <= 2 * STEP


@settings(max_examples=40, deadline=None)
@given(threshold=st.floats(-4.2, -1.5), width=st.floats(4 * STEP, 1.0), where=st.floats(0.2, 0.8))
def test_any_planted_2a_range_is_bracketed_to_the_grid(threshold, width, where):
    planted = {"1|2": threshold, "2A|2B": threshold + width, "2|3": threshold + width + 0.3,
               "recommended": threshold + where * width}
    trace = scan_with_budget(response(planted), 1000)
    estimate = trace.history[-1]
    for name in ("1|2", "2A|2B"):
        assert estimate[name].low <= planted[name] <= estimate[name].high
        assert estimate[name].uncertainty == pytest.approx(STEP / 2)
    assert abs(estimate["recommended"].value - planted["recommended"]) <= STEP


def test_the_recommended_bracket_holds_the_plrs_tied_with_the_best_within_their_noise():
    # Five observed 2A PLRs; scores 0.90 at the middle, 0.89 beside it, 0.85 at the ends.
    search = Search(GRID, precision=STEP / 2, smooth=0.0)
    idx = [20, 22, 24, 26, 28]
    acc = [0.85, 0.89, 0.90, 0.89, 0.85]

    def observed(se):
        return {i: Observation(("2A", "2A"), a, se) for i, a in zip(idx, acc)}

    # Noise 0.002: 0.89 is 3.5 standard errors below 0.90, so only the middle is the best.
    tight = search.estimate(observed(0.002))["recommended"]
    assert (tight.value, tight.low, tight.high) == (GRID[24], GRID[22], GRID[26])
    # Noise 0.01: 0.89 cannot be told from 0.90 (z = 0.71), 0.85 can (z = 3.5).
    loose = search.estimate(observed(0.01))["recommended"]
    assert (loose.value, loose.low, loose.high) == (GRID[24], GRID[20], GRID[28])
    # Without noise the margin (half a point) decides, as the tight case.
    assert search.estimate(observed(float("nan")))["recommended"] == tight


def test_more_plrs_per_bracket_take_fewer_rounds_to_the_same_precision():
    one = drive(Search(GRID, precision=STEP / 2), response())
    three = drive(Search(GRID, precision=STEP / 2, per_bracket=3), response())
    assert len(three.rounds) < len(one.rounds) and len(three.observed) > len(one.observed)
    for name in ("1|2", "2A|2B"):
        est = three.history[-1][name]
        assert est.low <= PLANTED[name] <= est.high and est.uncertainty == pytest.approx(STEP / 2)


def test_a_scan_cut_short_by_its_budget_continues_into_the_same_rounds():
    full = scan_with_budget(response(label_noise=0.05), 1000)
    short = scan_with_budget(response(label_noise=0.05), 14)
    assert short.stopped == "budget" and short.rounds == full.rounds[: len(short.rounds)]
    assert full.round_of()[full.rounds[-1][0]] == len(full.rounds) - 1


def test_grid_holds_the_spec_plrs_and_flrs_span_the_spec():
    spec = load_spec("synthetic-paper")  # the paper's 11 FLRs, unevenly spaced in log
    grid = fine_grid(spec.plr, 16)
    assert set(spec.plr) <= set(grid) and len(grid) == 73
    assert np.allclose(np.diff(np.log10(grid)), 1 / 16)
    assert pick_flrs(spec.flr, 3) == (spec.flr[0], spec.flr[5], spec.flr[-1])
    assert pick_flrs(spec.flr, 2) == (spec.flr[0], spec.flr[-1])
    assert pick_flrs(spec.flr, 20) == spec.flr


# --- scans of a tiny sweep -------------------------------------------------------------------------

# SMALL over one decade at 4 PLRs per decade: 5 grid points, round 0 trains 3 of them.
TINY = [*SMALL, "plr=[0.01, 0.1]"]
OPTIONS = {"per_decade": 4, "flrs": 2}


class Interrupt(Exception):
    pass


@pytest.fixture(scope="module")
def scanned(tmp_path_factory):
    """A tiny scan run to its end by `lrscan scan`, and what the command printed."""
    store = tmp_path_factory.mktemp("scan") / "whole.zarr"
    result = CliRunner().invoke(main, ["scan", "--store", str(store), "--per-decade", "4", "--flrs", "2",
                                       *[arg for o in TINY for arg in ("--set", o)]])
    assert result.exit_code == 0, result.output
    return store, result


def test_an_interrupted_scan_resumes_into_the_same_store(scanned, tmp_path):
    whole, result = scanned
    assert "recommended PLR" in result.stdout and "round 1:" in result.stderr
    stored = lrscan.open(whole)["analysis/scan"].to_dataset().load()
    assert stored.attrs["stopped"] == "resolved" and stored.attrs["rounds"] >= 2
    assert stored["round"].sel(plr=[0.01, 0.1]).values.tolist() == [0, 0]
    assert stored.attrs["model_steps"] == stored.sizes["plr"] * stored.attrs["model_steps_per_plr"]
    tree = lrscan.open(whole)
    done = tree["pretrain/metrics"]["done"].all("seed").values
    assert (stored.plr.values == tree["pretrain/metrics"].plr.values[done]).all()  # the scan's PLRs, no other

    # Interrupted inside round 1's training, then rerun: round 0 is read back, round 1 trained.
    cut = tmp_path / "cut.zarr"
    spec = load_spec(overrides=TINY)
    rounds = []

    def interrupt(progress):
        if rounds:
            raise Interrupt

    with pytest.raises(Interrupt):
        Scan(spec, cut, **OPTIONS).run(progress=interrupt, report=rounds.append)
    assert [r.number for r in rounds] == [0] and rounds[0].trained
    resumed = []
    Scan(spec, cut, **OPTIONS).run(report=resumed.append)
    assert not resumed[0].trained and resumed[1].trained
    assert_stores_identical(whole, cut)

    # The sub-tree of the trained PLRs is a finished store to every analyzer.
    sub = select_plr(tree, stored.plr.values)
    assert sub["finetune/metrics"]["done"].all() and "analysis" not in sub.children


def test_lrscan_plot_draws_the_rounds_of_a_scan_store(scanned, tmp_path):
    whole, _ = scanned
    result = CliRunner().invoke(main, ["plot", str(whole), "--out", str(tmp_path / "figures")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "figures" / "scan.png").stat().st_size > 0
    assert "pt_accuracy      skipped: needs the metrics analysis" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--budget", "0"], r"--budget must be a positive number, got 0"),
    (["--budget=-5"], r"--budget must be a positive number"),
    (["--budget", "1e9x"], r"--budget must be a number of model-steps or a percentage"),
    (["--budget", "10"], r"does not cover the first round \(192 model-steps: 3 PLRs of 64 each\)"),
    (["--precision", "0.01"], r"--precision 0.01 is finer than the scan's grid resolves \(0.125 decades"),
    (["--precision", "-1"], r"--precision must be a positive number"),
    (["--time", "0"], r"--time must be a positive number"),
    (["--flrs", "1"], r"--flrs must be at least 2"),
])
def test_bad_budgets_are_one_line_and_exit_2(tmp_path, args, message):
    import re

    store = tmp_path / "s.zarr"
    result = CliRunner().invoke(main, ["scan", "--store", str(store), "--per-decade", "4", "--flrs", "2", *args,
                                       *[arg for o in TINY for arg in ("--set", o)]])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(message, lines[0]), lines
    assert not store.exists()


def test_a_scan_needs_fine_tuning():
    with pytest.raises(LrscanError, match="a scan needs fine-tuning"):
        Scan(load_spec(overrides=[*TINY, "finetune_epochs=0"]), "unused.zarr")
    with pytest.raises(LrscanError, match="at least two PLRs"):
        Scan(load_spec(overrides=[*TINY, "plr=[0.01]"]), "unused.zarr")

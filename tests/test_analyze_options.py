"""Analyzer options: `lrscan analyze --set NAME.OPTION=VALUE` and analyze(options=...), checked
against the analyzer's signature and recorded in the result's fingerprint."""

import json

import pytest
from click.testing import CliRunner

import lrscan
from lrscan.analyze.run import analyze, check_options, fingerprint, parse_option, parse_options
from lrscan.cli import main
from lrscan.errors import LrscanError
from lrscan.plot.registry import stored_analyses
from tests.conftest import SMALL, assert_one_line_error, train_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A small finished store of this module's own: these tests write analyses into it."""
    return train_store(tmp_path_factory, SMALL)


def cli(*args):
    return CliRunner().invoke(main, ["analyze", *map(str, args)])


def stored(path, name):
    return lrscan.open(path)[f"analysis/{name}"]


def test_values_are_toml_or_bare_strings():
    assert parse_option("barriers.n_points=5") == ("barriers", "n_points", 5)
    assert parse_option('frequency.normalise="all"') == ("frequency", "normalise", "all")
    assert parse_option("frequency.normalise=all") == ("frequency", "normalise", "all")
    assert parse_option("barriers.pairs=[['ft_low', 'swa=2']]") == ("barriers", "pairs", [["ft_low", "swa=2"]])
    assert parse_options(["metrics.window=3", "metrics.window=4"]) == {"metrics": {"window": 4}}  # the last wins


def test_options_are_checked_against_the_signature():
    # A whole number for a float option is that float: the default, written out, is the default.
    assert check_options({"metrics": {"window": 20}}) == {"metrics": {"window": 20.0}}
    assert check_options({"frequency": {"low_mid_sweep": [5, 9]}}) == {"frequency": {"low_mid_sweep": [5, 9]}}
    assert check_options({"barriers": {"n_points": 5, "pairs": [["ft_low", "ft_high"]]}})["barriers"]["n_points"] == 5
    with pytest.raises(LrscanError, match=r"unknown analyzer 'barrier' \(did you mean 'barriers'\?\)"):
        check_options({"barrier": {"n_points": 5}})
    with pytest.raises(LrscanError, match=r"unknown option 'n_point' of analyzer 'barriers' \(did you mean "
                                          r"'n_points'\?\); its options: pairs, swa_k, n_points, bn_mode"):
        check_options({"barriers": {"n_point": 5}})
    with pytest.raises(LrscanError, match="barriers.n_points must be a whole number, got 'many'"):
        check_options({"barriers": {"n_points": "many"}})
    with pytest.raises(LrscanError, match="metrics.window must be a number, got True"):
        check_options({"metrics": {"window": True}})
    with pytest.raises(LrscanError, match="frequency.low_mid_sweep must be a list of whole numbers, got 9"):
        check_options({"frequency": {"low_mid_sweep": 9}})
    with pytest.raises(LrscanError, match="regimes.barriers must be Dataset"):
        check_options({"regimes": {"barriers": "mine"}})


def test_options_reach_the_analyzer_and_decide_whether_a_result_is_up_to_date(store):
    result = cli(store, "--only", "barriers", "--set", "barriers.n_points=5")
    assert result.exit_code == 0, result.output
    assert "barriers     computed" in result.stderr
    assert stored(store, "barriers").sizes["alpha"] == 5
    assert json.loads(stored(store, "barriers").attrs["lrscan_options"])["n_points"] == 5
    again = cli(store, "--only", "barriers", "--set", "barriers.n_points=5")
    assert "barriers     up to date" in again.stderr
    # Computed with other options, the result is not the default one: it is redone.
    default = cli(store, "--only", "barriers")
    assert "barriers     computed" in default.stderr
    assert stored(store, "barriers").sizes["alpha"] == 11
    # A default given explicitly (20 for 20.0) is the same result.
    assert "metrics      computed" in cli(store, "--only", "metrics").stderr
    assert "metrics      up to date" in cli(store, "--only", "metrics", "--set", "metrics.window=20").stderr


def test_a_result_reading_another_is_redone_when_its_options_change(store):
    analyze(store, ["barriers", "regimes"])
    assert analyze(store, ["barriers", "regimes"]) == {"barriers": "up to date", "regimes": "up to date"}
    status = analyze(store, ["barriers", "regimes"], options={"barriers": {"n_points": 3}})
    assert status == {"barriers": "computed", "regimes": "computed"}


def test_results_of_the_python_api_are_saved_for_plot(store):
    status = analyze(store, ["group_norms"], options={"group_norms": {"bins": 10}})
    assert status == {"group_norms": "computed"}
    tree = lrscan.open(store)
    assert "group_norms" in stored_analyses(tree)  # what `lrscan plot` draws from
    assert tree["analysis/group_norms"].sizes["bin"] == 10
    key = fingerprint(tree, "group_norms", {"bins": 10})
    assert tree["analysis/group_norms"].attrs["lrscan_fingerprint"] == key
    assert fingerprint(tree, "group_norms", {}) != key


def test_bad_options_are_one_line_errors_that_change_nothing(store, digest):
    before = digest(store)
    cases = [
        (["--set", "barrier.n_points=5"], r"unknown analyzer 'barrier' \(did you mean 'barriers'\?\)"),
        (["--set", "barriers.n_point=5"],
         r"unknown option 'n_point' of analyzer 'barriers' \(did you mean 'n_points'\?\)"),
        (["--set", "barriers.n_points=many"], r"barriers.n_points must be a whole number, got 'many'"),
        (["--set", "n_points=5"], r"--set expects ANALYZER.OPTION=VALUE"),
        (["--set", "barriers.n_points"], r"--set expects ANALYZER.OPTION=VALUE"),
        (["--only", "metrics", "--set", "barriers.n_points=5"],
         r"options given for analyzer 'barriers', which does not run: it is not among the analyzers asked for"),
        (["--set", "sharpness.n_samples=4"],
         r"options given for analyzer 'sharpness', which does not run: it runs only on request"),
        (["--set", "frequency.normalise=all"],
         r"analyzer 'frequency', which does not run: it needs the bands evaluation sets"),
        (["--only", "barriers", "--set", "barriers.bn_mode=batch"], r"bn_mode must be one of 'eval', 'train'"),
    ]
    for args, pattern in cases:
        assert_one_line_error(cli(store, *args), pattern)
    assert digest(store) == before

"""Issue 16, deliverables 3 and 5: an honest `info`, `--json`, and a fast CLI that loads torch
only to train or evaluate."""

import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap

import pytest
from click.testing import CliRunner

from lrscan.cli import AnalyzerDisplay, main
from lrscan.store import beside
from lrscan.store.claims import _start_time
from tests.conftest import SMALL, assert_one_line_error


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def analysed(trained_small, tmp_path_factory):
    """A copy of the small store with its metrics, regimes and barriers analysed by `lrscan analyze --json`."""
    path = tmp_path_factory.mktemp("analysed") / "a.zarr"
    shutil.copytree(trained_small, path)
    result = cli("analyze", path, "--only", "metrics", "--only", "regimes", "--only", "barriers", "--json")
    assert result.exit_code == 0, result.output
    return path, result


HEAVY = ("torch", "xarray", "dask", "zarr")


def loaded_by(commands: list[list[str]]) -> dict[str, list]:
    """Run CLI ``commands`` one after another in a fresh interpreter: per command (joined by
    spaces), its exit code and which of :data:`HEAVY` are loaded once it (and those before) ran."""
    script = textwrap.dedent(f"""
        import json, sys
        from click.testing import CliRunner
        from lrscan.cli import main
        out = {{}}
        for args in {commands!r}:
            result = CliRunner().invoke(main, args)
            out[" ".join(args)] = [result.exit_code, [m for m in {HEAVY!r} if m in sys.modules]]
        print(json.dumps(out))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_commands_that_do_not_train_never_import_torch(analysed, tmp_path):
    path, _ = analysed
    runs = loaded_by([["--help"], ["info", str(path)], ["info", str(path), "--json"], ["verify", str(path)],
                      ["verify", str(path), "--json"], ["presets"], ["info", str(tmp_path / "missing")],
                      ["verify", ""], ["info", "--help"], ["train", "--help"], ["analyze", "--help"],
                      ["train", "--store", ""], ["train", "--set", "plrr=[0.1]"], ["train", "--preset", "nope"],
                      ["train", "--config", "/dev/zero"], ["analyze", str(tmp_path / "missing")]])
    assert {args: loaded for args, (_, loaded) in runs.items() if "torch" in loaded} == {}
    assert runs[f"info {tmp_path / 'missing'}"][0] == 2 and runs[f"verify {path}"][0] == 0


def test_info_verify_and_the_listings_read_through_files_alone(analysed):
    # Within 1 s of Python's start-up (benchmarks/cli_latency.py) only without xarray, dask and
    # zarr, each of which takes a large part of that second to import.
    path, _ = analysed
    runs = loaded_by([["info", str(path)], ["info", str(path), "--json"], ["verify", str(path)], ["analyzers"],
                      ["presets"], ["--help"]])
    assert runs == {f"info {path}": [0, []], f"info {path} --json": [0, []], f"verify {path}": [0, []],
                    "analyzers": [0, []], "presets": [0, []], "--help": [0, []]}


def test_the_accessor_is_there_whichever_of_lrscan_and_xarray_is_imported_first(trained_small):
    check = f"import xarray as xr; tree = xr.open_datatree({str(trained_small)!r}, engine='zarr', consolidated=False); " \
            "print(type(tree.lrscan).__name__, 'metrics' in tree.lrscan.analyzers)"
    # A library's probe for whether xarray is installed (find_spec) loads nothing and must not spend the hook.
    probed = "import sys, importlib.util, lrscan; importlib.util.find_spec('xarray'); assert 'xarray' not in sys.modules"
    for first in (f"{probed}; {check}", f"import xarray, lrscan; {check}"):
        done = subprocess.run([sys.executable, "-c", first], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["LrscanAccessor", "True"]


def test_info_lists_analyses_regimes_and_the_best_plr(analysed):
    path, _ = analysed
    text = cli("info", path)
    assert text.exit_code == 0, text.output
    assert "analyses  barriers (up to date), metrics (up to date), regimes (up to date)" in text.stdout, text.stdout
    assert "regimes   PLR 0.003: " in text.stdout
    assert "best      best PLR " in text.stdout and "fine-tuned with a lower LR" in text.stdout
    result = cli("info", path, "--json")
    assert result.exit_code == 0 and "status    complete" in result.stderr
    state = json.loads(result.stdout)
    assert state["status"] == "complete" and state["in_progress"] == []
    assert {name: a["status"] for name, a in state["analyses"].items()} == {
        "barriers": "up to date", "metrics": "up to date", "regimes": "up to date"}
    assert set(state["regimes"]) == {"0.003", "0.1"}
    assert state["best"]["ft"]["plr"] in (0.003, 0.1) and 0 <= state["best"]["ft"]["accuracy"] <= 1
    assert state["stages"]["finetune"] == {"done": 8, "total": 8, "diverged": 0}


def test_info_lists_diverged_runs(trained_small, tmp_path):
    import zarr

    path = tmp_path / "div.zarr"
    shutil.copytree(trained_small, path)
    zarr.open_group(str(path), path="pretrain/metrics", mode="r+")["diverged_epoch"][1, 0] = 3.0
    text = cli("info", path).stdout
    assert "diverged  plr=0.1, seed=0 (pretrain, epoch 3)" in text
    state = json.loads(cli("info", path, "--json").stdout)
    assert state["diverged"] == [{"stage": "pretrain", "plr": 0.1, "seed": 0.0, "epoch": 3.0}]


def test_info_while_training_shows_the_batches_in_progress_and_does_not_ask_to_train(trained_small, tmp_path):
    import zarr

    path = tmp_path / "t.zarr"
    shutil.copytree(trained_small, path)
    zarr.open_group(str(path), path="finetune/metrics", mode="r+")["done"][0, 0, 0] = 0
    trainer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        claims = beside(path, "claims")
        claims.mkdir()
        (claims / "finetune-0-0-0x3").write_text(json.dumps(
            {"host": socket.gethostname(), "pid": trainer.pid, "start": _start_time(trainer.pid)}))
        result = cli("info", path)
        assert result.exit_code == 0, result.output
        assert "status    training: 1 batches in progress now" in result.stdout
        assert f"training  finetune batch 0-0-0x3: pid {trainer.pid} on " in result.stdout
        assert "lrscan train" not in result.stdout
        state = json.loads(cli("info", path, "--json").stdout)
        assert state["status"] == "training" and state["in_progress"][0]["batch"] == "0-0-0x3"
    finally:
        trainer.kill()
        trainer.wait()
    assert "status    incomplete: run `lrscan train" in cli("info", path).stdout  # nobody trains it now


def test_verify_json_is_one_document_on_stdout(trained_small, tmp_path):
    result = cli("verify", trained_small, "--json")
    assert result.exit_code == 0 and "0 problem runs" in result.stderr
    assert json.loads(result.stdout) == {"store": str(trained_small), "damaged": None, "fixed": False, "problems": []}
    path = tmp_path / "c.zarr"
    shutil.copytree(trained_small, path)
    (path / "pretrain" / "weights" / "weights" / "c" / "0" / "1" / "0" / "0").unlink()
    broken = cli("verify", path, "--json")
    assert broken.exit_code == 1
    doc = json.loads(broken.stdout)
    assert [(p["stage"], p["kind"], p["coords"]) for p in doc["problems"]] == [
        ("pretrain", "missing", {"plr": 0.003, "seed": 1.0})]
    (path / "finetune" / "metrics" / "zarr.json").unlink()
    damaged = cli("verify", path, "--json")
    assert damaged.exit_code == 1 and "is damaged" in json.loads(damaged.stdout)["damaged"]


def test_analyze_json_and_its_progress(analysed):
    path, first = analysed
    doc = json.loads(first.stdout)
    assert {name: a["status"] for name, a in doc["analyses"].items()} == {
        "metrics": "computed", "regimes": "computed", "barriers": "computed"}
    # Not a terminal: plain lines, an analyzer's progress through its solutions and its finish
    # with the time it took.
    assert re.search(r"barriers     \d+ of \d+ solutions", first.stderr), first.stderr
    assert "barriers     computed in " in first.stderr
    again = cli("analyze", path, "--only", "barriers", "--json")
    assert json.loads(again.stdout)["analyses"]["barriers"]["status"] == "up to date"
    assert "barriers     up to date" in again.stderr


def test_analyze_reports_blocks_of_solutions(trained_small, tmp_path):
    from lrscan.analyze.run import analyze

    path = tmp_path / "b.zarr"
    shutil.copytree(trained_small, path)
    seen = []
    analyze(path, ["barriers"], blocks=lambda name, done, total: seen.append((name, done, total)))
    assert seen and all(name == "barriers" and 0 < done <= total for name, done, total in seen)
    assert seen[-1][1] == seen[-1][2]


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_the_analyzer_display_rewrites_one_line_on_a_terminal_and_prints_plain_lines_otherwise():
    tty = Terminal()
    shown = AnalyzerDisplay(stream=tty)
    shown.status("features", "computing", 0.0)
    shown.blocks("features", 3, 10)
    shown.status("features", "computed", 2.5)
    assert tty.getvalue() == ("\r\033[Kfeatures     computing ...\r\033[Kfeatures     3 of 10 solutions"
                              "\r\033[Kfeatures     computed in 2.5 s\n")
    plain = io.StringIO()
    shown = AnalyzerDisplay(every=0.0, stream=plain)
    shown.status("features", "computing", 0.0)
    shown.blocks("features", 3, 10)
    shown.status("features", "computed", 1.0)
    shown.status("angles", "computing", 0.0)
    shown.status("angles", "up to date", 0.0)
    assert plain.getvalue().splitlines() == ["features     3 of 10 solutions", "features     computed in 1.0 s",
                                             "angles       up to date"]


def test_the_analyzer_display_says_which_pass_of_an_analyzer_that_makes_several():
    from lrscan.analyze.progress import block_done, passes, reporting

    plain = io.StringIO()
    shown = AnalyzerDisplay(every=0.0, stream=plain)
    with reporting(lambda done, total: shown.blocks("frequency", done, total)):
        with passes(3):
            for _ in range(3):
                block_done(12, 24)
                block_done(24, 24)
        block_done(5, 10)
    assert plain.getvalue().splitlines() == [
        "frequency    pass 1 of 3: 12 of 24 solutions", "frequency    pass 1 of 3: 24 of 24 solutions",
        "frequency    pass 2 of 3: 12 of 24 solutions", "frequency    pass 2 of 3: 24 of 24 solutions",
        "frequency    pass 3 of 3: 12 of 24 solutions", "frequency    pass 3 of 3: 24 of 24 solutions",
        "frequency    5 of 10 solutions"]


TINY = [o for o in SMALL if not o.startswith(("pretrain_epochs", "finetune", "swa", "checkpoint"))] + [
    "pretrain_epochs=30", "log_every=1"]


def test_threshold_json(tmp_path):
    path = tmp_path / "th.zarr"
    args = ["threshold", "--store", path, *[a for o in TINY for a in ("--set", o)], "--low", "0.01", "--high", "0.1",
            "--per-decade", "2"]
    first = cli(*args, "--json")
    assert first.exit_code == 0, first.output
    doc = json.loads(first.stdout)
    assert doc["store"] == str(path) and doc["status"] in ("resolved", "below", "above", "budget")
    assert doc["model_steps"] > 0 and len(doc["bracket"]) == 2
    assert "stored under" in first.stderr or "threshold lies" in first.stderr


def test_scan_json(tmp_path):
    path = tmp_path / "sc.zarr"
    args = ["scan", "--store", path, "--per-decade", "2", "--flrs", "2",
            *[a for o in [*SMALL, "plr=[0.01, 0.1]"] for a in ("--set", o)]]
    first = cli(*args, "--json")
    assert first.exit_code == 0, first.output
    doc = json.loads(first.stdout)
    assert set(doc["estimates"]) >= {"1|2", "2A|2B", "recommended"}
    assert doc["model_steps"] > 0 and doc["stopped"] in ("resolved", "ambiguous", "budget", "time")
    assert "convergence threshold" in first.stderr and "convergence threshold" not in first.stdout


def test_presets_print_whole_descriptions():
    from lrscan.spec import preset_names, preset_text

    listing = cli("presets").stdout.splitlines()
    assert len(listing) == len(preset_names())
    for name, line in zip(preset_names(), listing):
        leading = []
        for text in preset_text(name).splitlines():
            if not text.startswith("#"):
                break
            leading.append(text.lstrip("#").strip())
        # The whole leading comment, not its first line cut mid-sentence.
        assert line == f"{name:20s} {' '.join(t for t in leading if t)}"


def test_help_names_the_default_store():
    assert "store/synthetic.zarr" in cli("--help").stdout
    assert "store/synthetic.zarr" in cli("train", "--help").stdout


def test_a_device_that_is_not_there_is_refused_before_any_store(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    for device in ("cuda", "cuda:3", "mps"):
        result = cli("train", "--store", tmp_path / "s.zarr", *[a for o in SMALL for a in ("--set", o)],
                     "--set", f"device='{device}'")
        assert_one_line_error(result, rf"device '{device}' is not on this machine")
    assert os.listdir(tmp_path) == []


def test_a_result_whose_inputs_were_not_recorded_gets_them_on_the_next_analyze(trained_small, tmp_path):
    """As after a kill between a result's fingerprint and the record of its inputs."""
    import zarr

    path = tmp_path / "k.zarr"
    shutil.copytree(trained_small, path)
    assert cli("analyze", path, "--only", "angles").exit_code == 0
    zarr.open_group(str(path), path="analysis", mode="r+").attrs["lrscan_inputs"] = {}
    assert json.loads(cli("info", path, "--json").stdout)["analyses"]["angles"]["status"] == "unknown"
    again = cli("analyze", path, "--only", "angles")
    assert "angles       up to date" in again.stderr
    assert json.loads(cli("info", path, "--json").stdout)["analyses"]["angles"]["status"] == "up to date"


def test_listing_the_analyzers_imports_none_of_them():
    script = textwrap.dedent("""
        import json, sys
        from click.testing import CliRunner
        from lrscan.cli import main
        result = CliRunner().invoke(main, ["analyzers"])
        loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith("lrscan.analyze."))
        print(json.dumps([result.exit_code, result.output, loaded]))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    code, output, loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert code == 0 and loaded == []
    from lrscan.analyze import BUILTINS

    assert output.splitlines() == [f"{name:12s} {summary}" for name, (_, summary) in sorted(BUILTINS.items())]


def test_the_table_of_builtin_analyzers_is_the_analyzers_themselves():
    """Every analyzer defined in lrscan.analyze is in BUILTINS, under its function's name, with
    its module and its docstring's summary, and a lookup finds that very function."""
    import importlib
    import pkgutil

    import lrscan.analyze
    from lrscan.analyze import ANALYZERS, BUILTINS, Analyzer

    found = {}
    for info in pkgutil.iter_modules(lrscan.analyze.__path__):
        module = importlib.import_module(f"lrscan.analyze.{info.name}")
        for name, value in vars(module).items():
            if isinstance(getattr(value, "analyzer", None), Analyzer) and value.__module__ == module.__name__:
                found[name] = (module.__name__, value.analyzer.summary)
    assert found == BUILTINS
    for name, (module, summary) in BUILTINS.items():
        assert ANALYZERS[name].func is getattr(importlib.import_module(module), name)
        assert ANALYZERS[name].summary == summary

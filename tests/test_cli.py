import re

import numpy as np
import pytest
from click.testing import CliRunner

import lrscan
from lrscan.cli import main
from lrscan.train.sweep import Progress
from tests.conftest import assert_one_line_error


@pytest.fixture
def run():
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(main, list(args), catch_exceptions=False)

    return invoke


def sets(overrides):
    return [a for o in overrides for a in ("--set", o)]


def test_train_then_info_then_rerun_does_nothing(run, small_overrides, tmp_path, digest):
    store = tmp_path / "s.zarr"
    result = run("train", "--store", str(store), *sets(small_overrides))
    assert result.exit_code == 0, result.output
    assert "trained 4 pretrain, 4 swa, 8 finetune runs" in result.stderr
    # Not a terminal here: progress comes as plain lines.
    assert re.search(r"finetune: 100.0% of \d[\d,]* model-steps", result.stderr)
    before = digest(store)
    again = run("train", "--store", str(store), *sets(small_overrides))
    assert again.exit_code == 0 and "every run is already done, nothing to train" in again.stderr
    assert digest(store) == before
    info = run("info", str(store))
    assert info.exit_code == 0
    assert "pretrain  4/4 runs done" in info.stdout and "finetune  8/8 runs done" in info.stdout
    assert "status    complete" in info.stdout


def test_info_on_a_partial_store_and_finishing_it(small_overrides, small_spec, tmp_path, run):
    from lrscan.train.sweep import train

    store = tmp_path / "p.zarr"

    def stop_in_finetune(progress: Progress):
        if progress.phase == "finetune":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(small_spec(), store, progress=stop_in_finetune)
    info = run("info", str(store))
    assert info.exit_code == 0
    assert "pretrain  4/4 runs done" in info.stdout
    assert "finetune  0/8 runs done" in info.stdout
    assert "status    incomplete" in info.stdout
    tree = lrscan.open(store)
    assert np.isnan(tree["finetune/metrics"]["test_acc"].values).all()  # unwritten reads as NaN
    result = run("train", "--store", str(store), *sets(small_overrides))
    assert result.exit_code == 0 and "trained 8 finetune runs" in result.stderr
    assert "status    complete" in run("info", str(store)).stdout


@pytest.mark.parametrize(
    "args, pattern",
    [
        (["--set", "plrr=[0.1]"], r"^Error: unknown sweep field 'plrr' \(did you mean 'plr'\?\)$"),
        (["--set", "plr=[-1]"], r"learning rates must be positive and finite"),
        (["--set", "plr=[inf]"], r"learning rates must be positive and finite"),
        (["--set", "flr=[nan]"], r"learning rates must be positive and finite"),
        (["--set", "plr=[]"], r"plr grid is empty"),
        (["--set", "flr=[]"], r"flr grid is empty"),
        (["--set", "finetune_from=100"], r"finetune_from = 100 is beyond pretrain_epochs = 4"),
        (["--set", "log_every=0.3"], r"not a whole number of steps"),
        (["--set", "swa=[50]"], r"swa = 50 needs 50 pre-training checkpoints"),
        (["--set", "model=resnet"], r"unknown model 'resnet'"),
        (["--set", "data.n_trian=5"], r"did you mean 'n_train'"),
        (["--set", "oops"], r"--set expects FIELD=VALUE"),
        (["--set", "batch_size=abc"], r"batch_size must be a whole number, got 'abc'"),
        (["--set", "plr=fast"], r"plr must be a list of numbers, got 'fast'"),
        (["--preset", "nope"], r"unknown preset 'nope'"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_leaves_the_store_untouched(run, small_overrides, trained_small, digest,
                                                                      args, pattern):
    before = digest(trained_small)
    result = run("train", "--store", str(trained_small), *sets(small_overrides), *args)
    assert_one_line_error(result, pattern)
    assert digest(trained_small) == before


def test_a_store_from_another_spec_is_refused_unchanged(run, small_overrides, trained_small, digest):
    before = digest(trained_small)
    result = run("train", "--store", str(trained_small), *sets(small_overrides), "--set", "seeds=3")
    assert_one_line_error(result, r"was made from a different spec \(seeds differ\); use another --store")
    assert digest(trained_small) == before


def test_bad_paths(run, small_overrides, tmp_path):
    afile = tmp_path / "file"
    afile.write_text("not a store")
    assert_one_line_error(run("train", "--store", str(afile), *sets(small_overrides)), r"is a file, not a directory")
    assert afile.read_text() == "not a store"
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    assert_one_line_error(run("train", "--store", str(other), *sets(small_overrides)), r"is not an lrscan store")
    assert (other / "keep.txt").read_text() == "mine"
    assert_one_line_error(run("info", str(tmp_path / "missing")), r"no store at .*missing; run `lrscan train")
    assert_one_line_error(run("train", "--config", str(tmp_path / "nope.toml")), r"cannot read config")
    bad = tmp_path / "bad.toml"
    bad.write_text("[sweep]\nplr = [0.1,\n")
    assert_one_line_error(run("train", "--config", str(bad)), r"is not valid TOML")


def test_default_store_location_and_presets_listing(run, monkeypatch, tmp_path):
    from lrscan.cli import default_store

    assert str(default_store(None, None)) == "store/synthetic.zarr"
    assert str(default_store(None, "runs/my-sweep.toml")) == "store/my-sweep.zarr"
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(run("info"), r"no store at store/synthetic.zarr")
    listing = run("presets")
    assert listing.exit_code == 0 and "synthetic-paper" in listing.stdout

"""lrscan import: folders of PyTorch checkpoints into stores that analyse like trained ones."""

import shutil
from fractions import Fraction

import fsspec
import numpy as np
import pytest
import torch
import xarray as xr
import zarr
from click.testing import CliRunner
from torch.optim.swa_utils import AveragedModel

import lrscan
from lrscan.analyze import ANALYZERS
from lrscan.analyze.run import analyze
from lrscan.cli import main
from lrscan.errors import LrscanError
from lrscan.importer import Checkpoint, Pattern, import_checkpoints, infer_spec, read_checkpoint
from lrscan.store import read_spec, verify
from lrscan.train.sweep import Progress, Setup
from tests.conftest import assert_one_line_error

PATTERN = "runs/plr={plr}/seed={seed}[/ft={flr}]/checkpoint-{epoch}.pt"
UNMATCHED = ["runs/notes.txt", "runs/plr=0.1/seed=0/optimizer-4.pt"]
# What the paths do not say: the data, the batch size (for the step grid), SWA to compute.
OPTIONS = ["batch_size=16", "data.n_train=64", "data.n_test=128", "data.n_single=32", "swa=[2, 3]",
           "compile=false", "device='cpu'"]


def state_dict(flat, layers):
    return {l.name: torch.from_numpy(np.array(flat[l.start:l.stop])).reshape(l.shape) for l in layers}


def wrap(kind, state, scores, module):
    """One checkpoint in one of the wrappers people save: the metrics beside the weights.

    Accuracies are in percent in every file of a folder, as the study's scripts store them
    (the unit is decided once per store). The train metrics are full-set evaluations, so
    they go under the plain names, not in a ``train_res`` dict (the study's running means).
    """
    if kind == "plain":  # a bare state dict: no metrics
        return state
    scores = {k: v * 100 if k.endswith("_acc") else v for k, v in scores.items()}
    train = {k: scores[k] for k in ("train_loss", "train_acc")}
    test = {"loss": scores["test_loss"], "accuracy": scores["test_acc"]}
    if kind == "state_dict":
        return {"state_dict": state, "test_res": test, **train, "epoch": 3}
    if kind == "model":
        return {"model": state, "test_res": test, **train}
    if kind == "swa":  # a real AveragedModel: `module.` prefix and an n_averaged buffer
        averaged = AveragedModel(module)
        averaged.module.load_state_dict(state)
        return {"state_dict": averaged.state_dict(), **{k: torch.tensor(v) for k, v in scores.items()}}
    if kind == "compiled":  # what torch.compile's wrapper names the same tensors
        return {"model_state_dict": {f"_orig_mod.{k}": v for k, v in state.items()}, **scores}
    raise ValueError(kind)


KINDS = ("state_dict", "model", "swa", "compiled")


def write_folder(store, folder):
    """Checkpoints of every run of a trained store, in every wrapper, plus files no pattern takes."""
    tree = lrscan.open(store)
    setup = Setup.build(read_spec(store))
    layers, module = setup.layers, setup.module
    scores = ("train_loss", "train_acc", "test_loss", "test_acc")
    pt_w = tree["pretrain/weights"]["weights"].load()
    pt_m = tree["pretrain/metrics"].to_dataset().load()
    ft_w = tree["finetune/weights"]["weights"].load()
    ft_m = tree["finetune/metrics"].to_dataset().load()
    branch = float(ft_m.epoch[0])
    n = 0
    for plr in pt_w.plr.values:
        for seed in pt_w.seed.values:
            train_seed = int(pt_w.train_seed.sel(seed=seed))
            run = folder / f"runs/plr={plr:g}/seed={train_seed}"
            run.mkdir(parents=True)
            for epoch in pt_w.epoch.values:
                m = pt_m.sel(plr=plr, seed=seed, epoch=epoch)
                flat = pt_w.sel(plr=plr, seed=seed, epoch=epoch).values
                obj = wrap(KINDS[n % len(KINDS)], state_dict(flat, layers), {s: float(m[s]) for s in scores}, module)
                torch.save(obj, run / f"checkpoint-{epoch:g}.pt")
                n += 1
            for flr in ft_w.flr.values:
                (run / f"ft={flr:g}").mkdir()
                # Epochs count from the branch point; epoch 0 is the branch point itself.
                flat = pt_w.sel(plr=plr, seed=seed, epoch=branch).values
                torch.save(wrap("plain", state_dict(flat, layers), {}, module), run / f"ft={flr:g}/checkpoint-0.pt")
                for epoch in ft_w.epoch.values:
                    m = ft_m.sel(plr=plr, flr=flr, seed=seed, epoch=epoch)
                    flat = ft_w.sel(plr=plr, flr=flr, seed=seed, epoch=epoch).values
                    obj = wrap(KINDS[n % len(KINDS)], state_dict(flat, layers), {s: float(m[s]) for s in scores},
                               module)
                    torch.save(obj, run / f"ft={flr:g}/checkpoint-{epoch - branch:g}.pt")
                    n += 1
    (folder / UNMATCHED[0]).write_text("lr sweep, March")
    torch.save({"lr": 0.1}, folder / UNMATCHED[1])
    return folder


@pytest.fixture(scope="module")
def folder(trained_small, tmp_path_factory):
    return write_folder(trained_small, tmp_path_factory.mktemp("checkpoints"))


@pytest.fixture(scope="module")
def imported(folder, tmp_path_factory):
    store = tmp_path_factory.mktemp("imported") / "imported.zarr"
    result = import_checkpoints(str(folder), str(store), "mlp", [PATTERN], overrides=OPTIONS)
    return store, result


def test_imported_store_holds_what_the_checkpoints_came_from(trained_small, imported):
    store, result = imported
    assert result.imported == {"pretrain": 4, "finetune": 8, "swa": 4}
    assert result.files == 4 * 5 + 8 * 3
    assert result.unmatched == UNMATCHED  # listed, not silently skipped
    assert result.missing == [] and result.gaps == [] and result.swa is None
    # The spec inferred from the paths (and the options they cannot say) is the one trained.
    assert read_spec(store).differences(read_spec(trained_small)) == []
    assert verify(store) == []  # checksums as `lrscan train` writes them
    original, copy = lrscan.open(trained_small), lrscan.open(store)
    for stage in ("pretrain", "finetune", "swa"):
        xr.testing.assert_identical(copy[f"{stage}/weights"].to_dataset(), original[f"{stage}/weights"].to_dataset())
    xr.testing.assert_identical(copy["swa/metrics"].to_dataset(), original["swa/metrics"].to_dataset())
    xr.testing.assert_identical(copy["layers"].to_dataset(), original["layers"].to_dataset())
    for stage in ("pretrain", "finetune"):
        a, b = copy[f"{stage}/metrics"].to_dataset().load(), original[f"{stage}/metrics"].to_dataset().load()
        unsaid = ["grad_norm", "running_train_loss", "running_train_acc"]  # per-step means: the files do not say them
        assert all(np.isnan(a[name]).all() for name in unsaid)
        a, b = a.drop_vars([*unsaid, "checksum"]), b.drop_vars([*unsaid, "checksum"])
        if stage == "finetune":
            # The branch point's file is a bare state dict: its row has only the weight norm.
            first, a, b = a.isel(epoch=0), a.isel(epoch=slice(1, None)), b.isel(epoch=slice(1, None))
            assert all(np.isnan(first[s]).all() for s in ("train_loss", "train_acc", "test_loss", "test_acc"))
            np.testing.assert_array_equal(first.weight_norm, original["finetune/metrics"]["weight_norm"][..., 0])
        xr.testing.assert_identical(a, b)
        assert a.done.all()


def test_analyses_of_an_imported_store_equal_the_original_ones(trained_small, imported):
    store, _ = imported
    # Those that read every stage: metrics (and SWA), weights, the model on data, and regimes from them all.
    status = analyze(store, ["metrics", "angles", "barriers", "regimes"])
    persisted = lrscan.open(store)["analysis"]
    original = lrscan.open(trained_small)  # shared by other tests: computed here, not persisted
    results = {}
    for name in status:
        options = {"barriers": results["barriers"]} if name == "regimes" else {}
        results[name] = want = ANALYZERS[name](original, **options).load()
        got = persisted[name].to_dataset().load()
        got.attrs.pop("lrscan_fingerprint")
        got.attrs.pop("lrscan_analyzer")
        got.attrs.pop("lrscan_options", None)  # the options persisted results record, where they do
        xr.testing.assert_identical(got, want)


def run_cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def cli_import(source, store, *extra):
    """`lrscan import` of the test folder's layout (unless ``extra`` gives a --pattern)."""
    sets = [a for o in OPTIONS for a in ("--set", o)]
    pattern = [] if "--pattern" in extra else ["--pattern", PATTERN]
    return run_cli("import", source, "--store", store, "--model", "mlp", *pattern, *sets, *extra)


def test_a_full_disk_during_an_import_is_one_line_and_the_rerun_completes(folder, tmp_path, monkeypatch):
    import errno

    from tests.test_hardening import _failing_set

    store = tmp_path / "full.zarr"
    _failing_set(monkeypatch, errno.ENOSPC, when=lambda key: key.startswith("finetune/weights"))
    assert_one_line_error(cli_import(folder, store), r"No space left on device")
    monkeypatch.undo()
    result = cli_import(folder, store)
    assert result.exit_code == 0, result.output
    tree = lrscan.open(store)
    assert tree["pretrain/metrics"]["done"].values.all() and tree["finetune/metrics"]["done"].values.all()
    assert verify(store) == []


def test_interrupted_or_failed_imports_resume_into_the_same_store(trained_small, folder, tmp_path, digest):
    source = shutil.copytree(folder, tmp_path / "ckpts")
    store = tmp_path / "s.zarr"

    def stop(progress: Progress):
        if progress.done == 7:  # in the middle of the second pre-training run
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        import_checkpoints(str(source), str(store), "mlp", [PATTERN], overrides=OPTIONS, progress=stop)
    assert lrscan.open(store)["pretrain/metrics"]["done"].values.sum() == 1
    # A file that does not fit the model stops the import with one line naming it and the tensor.
    bad = source / "runs/plr=0.1/seed=1/ft=0.01/checkpoint-2.pt"
    good = bad.read_bytes()
    layers = Setup.build(read_spec(trained_small)).layers
    torch.save({l.name: torch.zeros(l.shape if l.name != "hidden.1.weight" else (32, 31)) for l in layers}, bad)
    result = cli_import(source, store)
    assert_one_line_error(result, r"^Error: runs/plr=0\.1/seed=1/ft=0\.01/checkpoint-2\.pt: tensor 'hidden\.1\.weight' "
                                  r"has shape \(32, 31\), the model's is \(32, 32\)")
    tree = lrscan.open(store)
    assert tree["pretrain/metrics"]["done"].values.all()
    assert tree["finetune/metrics"]["done"].values.sum() == 7 and "swa" in tree.children
    # Whatever a crash left in the run that is not done is overwritten by the rerun.
    root = zarr.open_group(str(store), mode="r+")
    root["finetune/weights/weights"][1, 1, 1] = 7.0
    root["finetune/metrics/test_acc"][1, 1, 1] = 7.0
    bad.write_bytes(good)
    result = cli_import(source, store)
    assert result.exit_code == 0, result.output
    assert "imported 1 finetune, 4 swa runs (3 files)" in result.stderr
    assert "2 files under" in result.stderr and all(f"  {name}" in result.stderr for name in UNMATCHED)
    assert verify(store) == []
    for stage in ("pretrain", "finetune", "swa"):
        xr.testing.assert_identical(lrscan.open(store)[f"{stage}/weights"].to_dataset(),
                                    lrscan.open(trained_small)[f"{stage}/weights"].to_dataset())
    before = digest(store)
    again = cli_import(source, store)
    assert again.exit_code == 0 and "every run is already imported, nothing to do" in again.stderr
    assert digest(store) == before


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # statistics of the empty run
def test_a_url_source_a_partial_grid_and_gaps(folder, tmp_path):
    fs = fsspec.filesystem("memory")
    root = f"/{tmp_path.name}"
    for path in sorted(folder.rglob("*")):
        name = path.relative_to(folder).as_posix()
        if path.is_file() and not name.startswith("runs/plr=0.1/seed=1/") and name != "runs/plr=0.003/seed=0/checkpoint-2.pt":
            fs.pipe(f"{root}/{name}", path.read_bytes())
    try:
        store = tmp_path / "pt.zarr"
        pattern = ["runs/plr={plr}/seed={seed}/checkpoint-{epoch}.pt"]  # pre-training only
        result = import_checkpoints(f"memory://{root}", str(store), "mlp", pattern, overrides=OPTIONS[:4])
        assert result.imported == {"pretrain": 3}
        assert all("/ft=" in name for name in result.unmatched if name not in UNMATCHED)
        assert result.missing == ["pretrain run (plr=0.1, seed=1)"]
        assert result.gaps == ["pretrain run (plr=0.003, seed=0): no file for epoch 2"]
        tree = lrscan.open(store)
        assert "finetune" not in tree.children and "swa" not in tree.children
        assert tree["pretrain/weights"]["weights"].isel(plr=0, seed=0).sel(epoch=2).isnull().all()
        with pytest.raises(LrscanError, match="1 pretrain runs to do"):
            analyze(store, ["metrics"])
        again = import_checkpoints(f"memory://{root}", str(store), "mlp", pattern, overrides=OPTIONS[:4],
                                   allow_missing=True)
        assert again.imported == {"pretrain": 1} and again.files == 0
        assert verify(store) == []
        analyze(store, ["metrics"])
        metrics = lrscan.open(store)["analysis/metrics"]
        assert np.isnan(metrics["pt_test_acc"].sel(plr=0.1, seed=1)) and metrics["pt_test_acc"].notnull().sum() == 3
    finally:
        fs.rm(root, recursive=True)


@pytest.mark.parametrize(
    "args, pattern",
    [
        (["--pattern", "runs/seed={seed}/checkpoint-{epoch}.pt"], r"needs \{plr\} outside any optional"),
        (["--pattern", "runs/plr={lr}/checkpoint-{epoch}.pt"], r"unknown placeholder \{lr\} \(did you mean 'plr'\?\)"),
        (["--pattern", "runs/plr={plr}[/ft={flr}/checkpoint-{epoch}.pt"], r"a '\[' is never closed"),
        (["--pattern", "other/{plr}/{epoch}.pt"], r"no file under .* matches 'other/\{plr\}/\{epoch\}\.pt'; e\.g\. "),
        (["--set", "plr=[0.1]"], r"--set plr: the checkpoints' paths give it"),
        (["--set", "model.width=16"],
         r"runs/plr=0\.003/seed=0/checkpoint-0\.pt: tensor 'hidden\.0\.weight' has shape \(32, 32\), "
         r"the model's is \(16, 32\); is this the model of --model"),
        (["--set", "model.wdth=16"], r"did you mean 'width'"),
        (["--model", "nosuchmodel"], r"unknown model 'nosuchmodel'"),
        (["--accuracy", "fraction"], r"checkpoint-0\.pt: train accuracy \d+(\.\d+)? is above 1; give --accuracy percent"),
        (["--set", "finetune_from=5"], r"finetune_from = 5 is beyond pretrain_epochs = 4"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_makes_no_store(folder, tmp_path, args, pattern):
    store = tmp_path / "s.zarr"
    assert_one_line_error(cli_import(folder, store, *args), pattern)
    assert not store.exists()


def test_bad_sources_and_files(tmp_path, small_spec):
    assert_one_line_error(cli_import(tmp_path / "nope", tmp_path / "s.zarr"), r"no folder at .*nope")
    layers = Setup.build(small_spec()).layers
    state = {l.name: torch.zeros(l.shape) for l in layers}
    run = tmp_path / "ckpts/runs/plr=0.1/seed=0"
    run.mkdir(parents=True)
    for epoch in ("0.5", "1"):
        torch.save(state, run / f"checkpoint-{epoch}.pt")
    # 64 samples in batches of 64: one step per epoch, so half an epoch is no step.
    result = cli_import(tmp_path / "ckpts", tmp_path / "s.zarr", "--set", "batch_size=64")
    assert_one_line_error(result, r"not a whole number of steps .*set batch_size and data\.n_train to those")
    (run / "checkpoint-0.5.pt").unlink()
    (run / "checkpoint-01.pt").write_bytes((run / "checkpoint-1.pt").read_bytes())
    assert_one_line_error(cli_import(tmp_path / "ckpts", tmp_path / "s.zarr"),
                          r"checkpoint-01\.pt and .*checkpoint-1\.pt give the same run and epoch")
    assert not (tmp_path / "s.zarr").exists()


class Opaque:
    pass


@pytest.mark.parametrize(
    "content, message",
    [
        (lambda s: {k: v for k, v in s.items() if k != "hidden.1.weight"}, r"x\.pt: missing tensor 'hidden\.1\.weight'"),
        (lambda s: {**s, "extra.weight": torch.zeros(3)}, r"x\.pt: unexpected tensor 'extra\.weight'"),
        (lambda s: [s], r"x\.pt holds a list, not a state dict"),
        (lambda s: {"net": s, "epoch": 3}, r"x\.pt: found no state dict \(keys: net, epoch\)"),
        (lambda s: {"model": s, "meta": Opaque()}, r"cannot load x\.pt as a PyTorch checkpoint \(weights_only=True\)"),
    ],
)
def test_what_a_checkpoint_must_hold(tmp_path, small_spec, content, message):
    layers = Setup.build(small_spec()).layers
    state = {l.name: torch.ones(l.shape) for l in layers}
    torch.save(content(state), tmp_path / "x.pt")
    with pytest.raises(LrscanError, match=message):
        read_checkpoint(str(tmp_path / "x.pt"), layers, name="x.pt")


def test_wrappers_legacy_files_and_ignored_buffers(tmp_path, small_spec):
    layers = Setup.build(small_spec()).layers
    state = {l.name: torch.full(l.shape, float(i)) for i, l in enumerate(layers)}
    nested = {"model": {"state_dict": {**state, "norm.num_batches_tracked": torch.tensor(3)}},
              "test_res": {"loss": torch.tensor(0.5), "acc": 62.5}, "train_loss": 0.25}
    torch.save(nested, tmp_path / "x.pt", _use_new_zipfile_serialization=False)  # no mmap for the old format
    flat, scores = read_checkpoint(str(tmp_path / "x.pt"), layers)
    assert scores == {"train_loss": 0.25, "test_loss": 0.5, "test_acc": 0.625}
    for i, l in enumerate(layers):
        assert (flat[l.start:l.stop] == i).all()


def test_patterns():
    p = Pattern("runs/plr={plr}/seed={seed}[/ft={flr}]/checkpoint-{epoch}.pt")
    assert p.match("runs/plr=0.1/seed=3/checkpoint-10.pt") == {"plr": "0.1", "seed": "3", "epoch": "10"}
    assert p.match("runs/plr=1e-3/seed=0/ft=0.01/checkpoint-2.5.pt") == {
        "plr": "1e-3", "seed": "0", "flr": "0.01", "epoch": "2.5"}
    assert p.match("runs/plr=0.1/seed=3/checkpoint-best.pt") is None
    assert Pattern("*/lr_{plr}/**/ep{epoch}.pt").match("a/lr_0.5/x/y/ep3.pt") == {"plr": "0.5", "epoch": "3"}
    assert Pattern("*/lr_{plr}/ep{epoch}.pt").match("a/b/lr_0.5/ep3.pt") is None  # * stays in one folder
    twice = Pattern("plr{plr}/model_plr{plr}_e{epoch}.pt")
    assert twice.match("plr0.1/model_plr0.1_e3.pt") and twice.match("plr0.1/model_plr0.2_e3.pt") is None
    assert Pattern(r"\[plr={plr}\]/{epoch}.pt").match("[plr=0.1]/3.pt") == {"plr": "0.1", "epoch": "3"}
    for bad, message in [("{plr}/{epoch}]", "closes no"), ("{plr}/{epoch", "never closed"),
                         ("[{plr}]/{epoch}", r"needs \{plr\}")]:
        with pytest.raises(LrscanError, match=message):
            Pattern(bad)


def checkpoint(epoch, flr=None, plr=0.1):
    return Checkpoint("", "", plr, flr, 0, None, Fraction(epoch))


def test_the_spec_puts_a_metric_row_at_every_file():
    files = [checkpoint("0.5"), checkpoint("1"), checkpoint("3"), checkpoint("0.5", 0.01), checkpoint("1", 0.01)]
    spec = infer_spec(files, "mlp")
    assert (spec.pretrain_epochs, spec.finetune_from, spec.finetune_epochs, spec.log_every) == (3, 3, 1, 0.5)
    assert spec.checkpoint_epochs == (0.5, 1, 3, 3.5, 4) and spec.swa == () and spec.flr == (0.01,)
    # Fine-tuning files counted from the start of pre-training, branching before its end.
    files = [checkpoint(2), checkpoint(6), checkpoint(5, 0.01), checkpoint(8, 0.01)]
    spec = infer_spec(files, "mlp", ft_epoch_origin="start", overrides=["finetune_from=2", "batch_size=8"])
    assert (spec.finetune_from, spec.finetune_epochs, spec.log_every, spec.batch_size) == (2, 6, 1, 8)
    assert spec.checkpoint_epochs == (2, 5, 6, 8)

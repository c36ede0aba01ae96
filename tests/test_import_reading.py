"""lrscan import, file by file: safe loading, tensor names, units, radius, patterns, seed axes."""

import math
import os
from fractions import Fraction

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from lrscan.cli import main
from lrscan.errors import LrscanError
from lrscan.importer import Checkpoint, Pattern, Rename, infer_spec, read_checkpoint, seed_axis
from lrscan.importer.inference import decide_radius, decide_units
from lrscan.importer.reading import TraceShape, _every
from lrscan.train.sweep import Setup
from tests.conftest import assert_one_line_error


@pytest.fixture
def layers(small_spec):
    return Setup.build(small_spec()).layers


def ones(layers):
    return {l.name: torch.ones(l.shape) for l in layers}


# ---------------------------------------------------------------------------------------------
# Safe loading


def test_numpy_numbers_load_and_fill_their_metrics(tmp_path, layers):
    # What the study's calc_grad_norms adds to a checkpoint: np.float64 from a mean, plain floats.
    gnorms = np.array([1.0, 2.0, 4.5])
    torch.save({"state_dict": ones(layers), "gnorm_trainmode_m_train": gnorms.mean(),
                "loss_evalmode_train": np.float32(0.25), "acc_evalmode_train": 0.75, "epoch": np.int64(7),
                "converged": np.bool_(True), "test_res": {"loss": np.float64(0.5), "accuracy": np.float64(62.5)}},
               tmp_path / "x.pt")
    flat, scores = read_checkpoint(str(tmp_path / "x.pt"), layers)
    assert scores == {"grad_norm": 2.5, "train_loss": 0.25, "train_acc": 0.75, "test_loss": 0.5, "test_acc": 0.625}
    assert (flat == 1).all()


def test_files_written_under_numpy_1_load(tmp_path, layers):
    # numpy 1 names the scalar reconstructor numpy.core.multiarray.scalar (numpy 2: numpy._core...).
    torch.save({"state_dict": ones(layers), "test_loss": np.float64(0.5)}, tmp_path / "new.pt",
               _use_new_zipfile_serialization=False)
    data = (tmp_path / "new.pt").read_bytes()
    old = data.replace(b"numpy._core.multiarray\nscalar", b"numpy.core.multiarray\nscalar")
    assert old != data
    (tmp_path / "old.pt").write_bytes(old)
    assert read_checkpoint(str(tmp_path / "old.pt"), layers)[1] == {"test_loss": 0.5}


class System:
    """A pickle that asks to run a shell command when loaded."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class ObjectScalar:
    """A numpy scalar of object dtype: a way to smuggle any object through numpy's reconstructor."""

    def __reduce__(self):
        return (np.float64(0).__reduce__()[0], (np.dtype("O"), "anything"))


@pytest.mark.parametrize("payload, refused", [
    (lambda marker: System(marker), r"it asks for (posix|nt)\.system, which is refused: only tensors, plain Python "
                                    r"values and numpy numbers are loaded, so that a file cannot run code"),
    (lambda marker: ObjectScalar(), r"numpy dtype object refused: only numeric numpy scalars are loaded"),
    (lambda marker: np.array([1.0, 2.0]), r"it asks for numpy\._core\.multiarray\._reconstruct, which is refused"),
])
def test_a_crafted_pickle_is_refused_and_the_message_says_what_and_why(tmp_path, layers, payload, refused):
    marker = tmp_path / "ran"
    torch.save({"state_dict": ones(layers), "extra": payload(marker)}, tmp_path / "x.pt")
    with pytest.raises(LrscanError, match=r"cannot load x\.pt as a PyTorch checkpoint \(weights_only=True\): "
                                          + refused):
        read_checkpoint(str(tmp_path / "x.pt"), layers, name="x.pt")
    assert not marker.exists()


def test_the_cli_refuses_a_crafted_checkpoint_in_one_line(tmp_path, layers):
    marker = tmp_path / "ran"
    run = tmp_path / "runs/plr=0.1"
    run.mkdir(parents=True)
    torch.save({"state_dict": ones(layers), "extra": System(marker)}, run / "checkpoint-1.pt")
    result = CliRunner().invoke(main, ["import", str(tmp_path / "runs"), "--store", str(tmp_path / "s.zarr"),
                                       "--model", "mlp", "--pattern", "plr={plr}/checkpoint-{epoch}.pt",
                                       "--set", "batch_size=16", "--set", "data.n_train=64"], catch_exceptions=False)
    assert_one_line_error(result, r"plr=0\.1/checkpoint-1\.pt .*it asks for (posix|nt)\.system, which is refused")
    assert not marker.exists() and not (tmp_path / "s.zarr").exists()


# ---------------------------------------------------------------------------------------------
# Tensor names


def test_a_missing_tensor_is_named_beside_the_files_own_names(tmp_path, layers):
    state = {f"features.{i}.weight": t for i, t in enumerate(ones(layers).values())}
    torch.save(state, tmp_path / "x.pt")
    with pytest.raises(LrscanError) as err:
        read_checkpoint(str(tmp_path / "x.pt"), layers, name="x.pt",
                        official={l.name: f"official.{l.name}" for l in layers})
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("x.pt: missing tensor 'hidden.0.weight' (the study's name: 'official.hidden.0.weight'); "
                              "missing hidden.0.weight, hidden.1.weight, head.weight; ")
    assert "the file's tensors the model lacks: features.0.weight, features.1.weight, features.2.weight" in message
    assert message.endswith("Map names with --rename OLD=NEW")
    many = {f"x.{i}": torch.zeros(2) for i in range(7)}
    torch.save(many, tmp_path / "y.pt")
    with pytest.raises(LrscanError, match=r"the file's tensors the model lacks: x\.0, x\.1, x\.2, … \(7 in all\)"):
        read_checkpoint(str(tmp_path / "y.pt"), layers, name="y.pt")


def test_rename_rules():
    assert Rename.parse("features=hidden").apply("features.0.weight") == "hidden.0.weight"
    assert Rename.parse("features=hidden").apply("features") == "hidden"
    assert Rename.parse("features=hidden").apply("featuresx.0") == "featuresx.0"  # whole names only
    rule = Rename.parse(r"re:^layer(\d)\.fc=hidden.\1")
    assert rule.regex and rule.apply("layer1.fc.weight") == "hidden.1.weight"
    assert Rename.parse("re:a=b=c") == Rename("a=b", "c", True)  # the last = separates a regex's replacement
    for bad, message in [("nothing", "expects OLD=NEW"), ("=new", "expects OLD=NEW"), ("re:(=x", "bad regular")]:
        with pytest.raises(LrscanError, match=message):
            Rename.parse(bad)


def test_renamed_files_import(tmp_path, layers, small_spec):
    names = {"hidden.0.weight": "body.fc1.weight", "hidden.1.weight": "body.fc2.weight", "head.weight": "out.weight"}
    run = tmp_path / "runs/plr=0.1"
    run.mkdir(parents=True)
    scale = {l.name: 8 / math.sqrt(sum(m.stop - m.start for m in layers if m.si)) if l.si else 1.0 for l in layers}
    for epoch in (0, 1):
        torch.save({names[k]: v * scale[k] for k, v in ones(layers).items()}, run / f"checkpoint-{epoch}.pt")
    args = ["import", str(tmp_path / "runs"), "--store", str(tmp_path / "s.zarr"), "--model", "mlp",
            "--pattern", "plr={plr}/checkpoint-{epoch}.pt", "--set", "batch_size=16", "--set", "data.n_train=64",
            "--set", "radius=8", "--set", "device='cpu'"]
    runner = CliRunner()
    assert_one_line_error(runner.invoke(main, args, catch_exceptions=False),
                          r"missing tensor 'hidden\.0\.weight'.*the file's tensors the model lacks: body\.fc1\.weight")
    result = runner.invoke(main, args + ["--rename", r"re:^body\.fc(\d)=hidden.\1", "--rename", "out=head"],
                           catch_exceptions=False)
    assert result.exit_code == 2 and "hidden.2.weight" in result.stderr  # fc1, fc2 are hidden.1, hidden.2
    result = runner.invoke(main, args + ["--rename", "body.fc1=hidden.0", "--rename", "body.fc2=hidden.1",
                                         "--rename", "out=head"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "radius 8 (the SI-group norm of the files)" in result.stderr


# ---------------------------------------------------------------------------------------------
# What the store shares: accuracy units, radius


def test_the_accuracy_unit_is_decided_once_per_store():
    # A diverged run at 0.98 % among runs near 90 %: all percentages, not 98 % for the first.
    samples = [{"test_res.accuracy": 0.98, "train_res.accuracy": 1.2}, {"test_res.accuracy": 91.0},
               {"acc_evalmode_train": 0.9}]
    assert decide_units(samples, "auto") == {"acc_evalmode_train": "fraction", "test_res.accuracy": "percent",
                                             "train_res.accuracy": "percent"}
    assert decide_units(samples, "fraction")["test_res.accuracy"] == "fraction"
    assert decide_units([{"test_acc": 0.5}], "auto", {"test_acc": "percent"}) == {"test_acc": "percent"}
    with pytest.raises(LrscanError, match="imported with test_acc as a percent"):
        decide_units([{"test_acc": 0.5}], "fraction", {"test_acc": "percent"})
    assert decide_units([{"test_loss": 3.0}], "auto") == {}


def test_the_radius_is_the_files_shared_norm():
    assert decide_radius([("a", 12.000001), ("b", 11.999999), ("c", 12.0000004)], None, None) == 12.0
    assert decide_radius([("a", 12.0)], 12.0000001, None) == 12.0000001  # the user's value, where it fits
    with pytest.raises(LrscanError, match=r"norms disagree: 12 \(a\) against 12\.6491 \(b\), beyond the "
                                          r"tolerance 0\.1%"):
        decide_radius([("a", 12.0), ("b", 12.6491)], None, None)
    with pytest.raises(LrscanError, match=r"--set radius=12\.649 differs from the files' SI-group norm 12 "):
        decide_radius([("a", 12.0)], 12.649, None)
    with pytest.raises(LrscanError, match="the SI-group norm is 0"):
        decide_radius([("a", 0.0)], None, None)
    assert decide_radius([], 3.0, None) == 3.0


# ---------------------------------------------------------------------------------------------
# Patterns: epoch ranges and whole-run files


def test_epoch_ranges_select_files():
    p = Pattern("plr={plr}/checkpoint-{epoch:200-299}.pt")
    assert p.match("plr=0.1/checkpoint-200.pt") == {"plr": "0.1", "epoch": "200"}
    assert p.match("plr=0.1/checkpoint-299.pt") and p.match("plr=0.1/checkpoint-300.pt") is None
    assert p.match_shape("plr=0.1/checkpoint-300.pt") == {"plr": "0.1", "epoch": "300"}
    open_end = Pattern("plr={plr}/checkpoint-{epoch:4-}.pt")
    assert open_end.match("plr=0.1/checkpoint-3.pt") is None and open_end.match("plr=0.1/checkpoint-1000.pt")
    several = Pattern("plr={plr}/{epoch:-3,10,20.5-21}.pt")
    assert [e for e in ("0", "3", "4", "10", "11", "20.5", "21", "22") if several.match(f"plr=1/{e}.pt")] == [
        "0", "3", "10", "20.5", "21"]
    for bad, message in [("{plr}/{epoch:a-b}", "no epoch range"), ("{plr}/{epoch:5-3}", "is empty"),
                         ("{plr}/{epoch:}", "no epoch range"), ("{plr:1-2}/{epoch}", r"only \{epoch\} takes a range"),
                         ("{plr}[/{epoch}]", r"\{epoch\} cannot be optional")]:
        with pytest.raises(LrscanError, match=message):
            Pattern(bad)
    assert Pattern("pt_lr={plr}.pt").whole_run and not p.whole_run


def test_an_import_selects_epochs_and_counts_what_it_left_out(tmp_path, layers):
    run = tmp_path / "runs/plr=0.1"
    run.mkdir(parents=True)
    for epoch in range(6):
        torch.save(ones(layers), run / f"checkpoint-{epoch}.pt")
    from lrscan.importer import import_checkpoints

    result = import_checkpoints(str(tmp_path / "runs"), str(tmp_path / "s.zarr"), "mlp",
                                ["plr={plr}/checkpoint-{epoch:1-3}.pt"],
                                overrides=["batch_size=16", "data.n_train=64", "device='cpu'"], check=False)
    assert result.spec.pretrain_epochs == 3 and result.files == 3 and result.unmatched == []
    assert result.excluded == [f"plr=0.1/checkpoint-{e}.pt" for e in (0, 4, 5)]
    with pytest.raises(LrscanError, match=r"matches 'plr=\{plr\}/checkpoint-\{epoch:7-\}\.pt' within its epoch "
                                          r"ranges \(6 files outside them\)"):
        import_checkpoints(str(tmp_path / "runs"), str(tmp_path / "t.zarr"), "mlp",
                           ["plr={plr}/checkpoint-{epoch:7-}.pt"], overrides=["batch_size=16"])


def test_trace_steps_from_their_lengths():
    assert _every(40000, 401, "f", "iterate") == 100 and _every(40000, 8001, "f", "metric row") == 5
    assert _every(10, 4, "f", "iterate") == 3  # iterates at 0, 3, 6, 9; the final weights beside at 10
    assert TraceShape(10, 3, 4, 5, 3).rows() == {0: (0, 0), 3: (1, None), 5: (None, 1), 6: (2, None),
                                                 9: (3, None), 10: (-1, 2)}
    with pytest.raises(LrscanError, match="cannot tell how often"):
        _every(11, 3, "f", "iterate")  # every 4 or every 5 steps


# ---------------------------------------------------------------------------------------------
# Seeds and the schedule


def ckpt(plr, seed, flr=None, epoch=1, seed_in_path=True):
    return Checkpoint("", f"plr={plr}/seed={seed}", plr, flr, seed, None, Fraction(epoch), seed_in_path)


def test_one_seed_per_learning_rate_becomes_a_replicate_index():
    files = [ckpt(0.1, 2000), ckpt(0.2, 2001), ckpt(0.3, 2002), ckpt(0.3, 2005),
             ckpt(0.1, 2000, flr=0.01), ckpt(0.3, 2005, flr=0.01)]
    axis = seed_axis(files)
    assert axis.kind == "replicate" and axis.seeds == (0, 1)
    assert [axis.of(c) for c in files] == [0, 0, 0, 1, 0, 1]
    assert axis.record() == [{"plr": 0.1, "seeds": [2000]}, {"plr": 0.2, "seeds": [2001]},
                             {"plr": 0.3, "seeds": [2002, 2005]}]
    with pytest.raises(LrscanError, match="seed 2001 has no pre-training run at plr=0.1"):
        axis.of(ckpt(0.1, 2001, flr=0.01))
    # A fine-tuning pattern without {seed} (the ViT's) branches from its PLR's one replicate.
    assert axis.of(ckpt(0.2, 0, flr=0.01, seed_in_path=False)) == 0
    # Seeds shared by the PLRs, even with a run missing, stay the seeds: the grid keeps its holes.
    partial = seed_axis([ckpt(0.1, 0), ckpt(0.1, 1), ckpt(0.2, 0)])
    assert partial.kind == "shared" and partial.seeds == (0, 1) and partial.of(ckpt(0.2, 1)) == 1
    assert seed_axis(files, "shared").seeds == (2000, 2001, 2002, 2005)
    spec = infer_spec(files, "mlp", axis=axis)
    assert spec.seeds == (0, 1) and spec.plr == (0.1, 0.2, 0.3)


def test_fine_tuning_that_continues_pre_training_epochs_branches_before_its_first_file():
    # The CNN scripts: pre-training epochs 0..299 kept, fine-tuning files 201..450 (origin "start").
    files = [ckpt(0.1, 0, epoch=e) for e in (0, 100, 200, 201, 250, 299)]
    files += [ckpt(0.1, 0, flr=0.01, epoch=e) for e in (201, 300, 450)]
    spec = infer_spec(files, "mlp", ft_epoch_origin="start", overrides=["pretrain_epochs=200"])
    assert (spec.pretrain_epochs, spec.finetune_from, spec.finetune_epochs) == (200, 200, 250)

"""The `files` dataset: the data runs were trained on, read safely from .npz / .pt files."""

import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from lrscan.cli import main
from lrscan.data import DATASETS
from lrscan.data.images import MEAN, STD
from lrscan.errors import LrscanError
from lrscan.spec import load_spec
from lrscan.store import read_spec
from tests.conftest import assert_one_line_error

# A sweep of two PLRs, short enough to train in a second or two.
SWEEP = ["plr=[0.003, 0.1]", "flr=[0.001]", "seeds=1", "batch_size=16", "pretrain_epochs=2", "finetune_epochs=1",
         "finetune_from=2", "log_every=1", "checkpoint_epochs=1", "swa=[2]", "compile=false", "device='cpu'"]


def arrays(n_train=64, n_test=32, shape=(8,), classes=2, seed=0):
    rng = np.random.default_rng(seed)
    return {"X_train": rng.standard_normal((n_train, *shape)).astype(np.float32),
            "y_train": np.arange(n_train) % classes,
            "X_test": rng.standard_normal((n_test, *shape)).astype(np.float32),
            "y_test": np.arange(n_test) % classes}


def spec_of(path, *extra):
    return load_spec(overrides=["dataset='files'", f"data.path='{path}'", *extra])


def load(path, *extra, data_seed=0):
    spec = spec_of(path, *extra)
    return DATASETS["files"].load(spec.data_options, data_seed)


def test_npz_and_pt_dicts_load_as_stored(tmp_path):
    a = arrays()
    np.savez(tmp_path / "d.npz", **a)
    torch.save({k: torch.from_numpy(v) for k, v in a.items()}, tmp_path / "d.pt")
    for name in ("d.npz", "d.pt"):
        data = load(tmp_path / name)
        for key, got in (("X_train", data.x_train), ("y_train", data.y_train), ("X_test", data.x_test),
                         ("y_test", data.y_test)):
            np.testing.assert_array_equal(got.numpy(), a[key])
        assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
        assert data.n_classes == 2 and data.normalization is None and data.extra == {}


def test_the_studys_synthetic_data_file_reads_in_its_own_order(tmp_path):
    """The study's synthetic example saves (X_train, X_test, y_train, y_test, views) as data.pt."""
    a = {k: torch.from_numpy(v) for k, v in arrays(n_train=32, n_test=16).items()}
    views = (torch.ones(2, 32, dtype=torch.bool), torch.ones(2, 16, dtype=torch.bool))
    torch.save((a["X_train"], a["X_test"], a["y_train"], a["y_test"], views), tmp_path / "data.pt")
    data = load(tmp_path / "data.pt")
    assert data.x_train.shape == (32, 8) and data.x_test.shape == (16, 8)
    torch.testing.assert_close(data.y_train, a["y_train"])
    torch.testing.assert_close(data.x_test, a["X_test"])
    # Its data_protocol files are dicts of the same names; lower-case x_* are read too.
    torch.save({"x_train": a["X_train"], "X_test": a["X_test"], "y_train": a["y_train"], "y_test": a["y_test"]},
               tmp_path / "protocol.pt")
    torch.testing.assert_close(load(tmp_path / "protocol.pt").x_train, a["X_train"])


def test_the_spec_records_an_absolute_path_and_the_files_digest(tmp_path, monkeypatch):
    np.savez(tmp_path / "d.npz", **arrays())
    monkeypatch.chdir(tmp_path)
    options = spec_of("d.npz").data_options
    assert options["path"] == str(tmp_path / "d.npz")
    assert len(options["sha256"]) == 1 and len(options["sha256"][0]) == 64
    # The recorded digest is checked: a changed file is refused when data is loaded again.
    np.savez(tmp_path / "d.npz", **arrays(seed=1))
    with pytest.raises(LrscanError, match=r"d.npz has changed since the spec recorded it"):
        DATASETS["files"].load(options, 0)
    with pytest.raises(LrscanError, match=r"d.npz is not the file data.sha256 records"):
        spec_of("d.npz", f"data.sha256={options['sha256']}")


def test_one_file_per_data_seed(tmp_path):
    for seed in (3, 5):
        np.savez(tmp_path / f"seed{seed}.npz", **arrays(seed=seed))
    spec = spec_of(tmp_path / "seed{data_seed}.npz", "data.seeds=[3, 5]")
    assert spec.data_seeds == (3, 5) and len(spec.data_options["sha256"]) == 2
    five = DATASETS["files"].load(spec.data_options, 5)
    np.testing.assert_array_equal(five.x_train.numpy(), arrays(seed=5)["X_train"])


def test_images_normalised_per_channel(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (20, 3, 4, 4), dtype=np.uint8)
    np.savez(tmp_path / "img.npz", X_train=pixels, y_train=np.arange(20) % 4, X_test=pixels[:8],
             y_test=np.arange(8) % 4)
    raw = load(tmp_path / "img.npz")  # uint8 are pixels, read as [0, 1]
    np.testing.assert_allclose(raw.x_train.numpy(), pixels / 255, rtol=1e-6)
    assert raw.normalization == ((0.0,) * 3, (1.0,) * 3) and raw.n_classes == 4
    cifar = load(tmp_path / "img.npz", "data.normalise='cifar10'")
    mean, std = np.array(MEAN)[:, None, None], np.array(STD)[:, None, None]
    np.testing.assert_allclose(cifar.x_test.numpy(), (pixels[:8] / 255 - mean) / std, rtol=1e-5, atol=1e-6)
    assert cifar.normalization == (MEAN, STD)
    own = load(tmp_path / "img.npz", "data.normalise='train'")
    np.testing.assert_allclose(own.x_train.numpy().mean((0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(own.x_train.numpy().std((0, 2, 3), ddof=1), 1, rtol=1e-4)


def test_a_sweep_trains_and_analyses_on_a_data_file(tmp_path):
    np.savez(tmp_path / "d.npz", **arrays())
    store = tmp_path / "s.zarr"
    args = [a for o in [*SWEEP, "dataset='files'", f"data.path='{tmp_path / 'd.npz'}'"] for a in ("--set", o)]
    result = CliRunner().invoke(main, ["train", "--store", str(store), *args])
    assert result.exit_code == 0, result.output
    assert read_spec(store).dataset == "files"
    result = CliRunner().invoke(main, ["analyze", str(store), "--only", "metrics"])
    assert result.exit_code == 0, result.output


class Marker:
    """Unpickling this would create a file: a safe loader must refuse it without running it."""

    path = ""

    def __reduce__(self):
        return (open, (self.path, "w"))


def bad_files(tmp_path):
    """(file, pattern of its one-line error) for every kind of bad data file."""
    cases = []

    def npz(name, pattern, **changes):
        a = {k: v for k, v in {**arrays(), **changes}.items() if v is not None}
        np.savez(tmp_path / name, **a)
        cases.append((name, pattern))

    npz("no_y_test.npz", r"no_y_test.npz lacks y_test \(it holds X_test, X_train, y_train\)", y_test=None)
    npz("float_labels.npz", r"y_train of data file .* has dtype torch.float64; labels must be integer",
        y_train=np.zeros(64))
    npz("short_labels.npz", r"y_train of data file .* has 60 labels for 64 inputs", y_train=np.arange(60) % 2)
    npz("matrix_labels.npz", r"y_test .* has shape \(32, 1\); labels must be one class index per sample",
        y_test=np.zeros((32, 1), dtype=int))
    npz("negative.npz", r"has the negative label -1", y_test=np.arange(32) % 2 - 1)
    npz("one_class.npz", r"take one class only", y_train=np.zeros(64, dtype=int), y_test=np.zeros(32, dtype=int))
    npz("vector.npz", r"X_train of data file .* has shape \(64,\); inputs need a sample axis",
        X_train=np.zeros(64, dtype=np.float32))
    npz("shapes.npz", r"X_test of data file .* has samples of shape \(9,\), X_train of shape \(8,\)",
        X_test=np.zeros((32, 9), dtype=np.float32))
    one_nan = np.zeros((64, 8), dtype=np.float32)
    one_nan[3, 5] = np.nan
    npz("nan.npz", r"X_train of data file .* has 1 non-finite values", X_train=one_nan)
    npz("channels_last.npz", r"has shape \(64, 8, 8, 3\), images with channels last",
        X_train=np.zeros((64, 8, 8, 3), dtype=np.float32), X_test=np.zeros((32, 8, 8, 3), dtype=np.float32))
    np.savez(tmp_path / "objects.npz", **{**arrays(), "X_train": np.array([{"a": 1}] * 64, dtype=object)})
    cases.append(("objects.npz", r"objects.npz holds pickled objects, which are not loaded"))
    Marker.path = str(tmp_path / "ran")
    torch.save({**{k: torch.from_numpy(v) for k, v in arrays().items()}, "X_train": Marker()}, tmp_path / "code.pt")
    cases.append(("code.pt", r"code.pt holds objects that torch's safe loader refuses \(.*open\)"))
    torch.save({k: v for k, v in arrays().items()}, tmp_path / "numpy.pt")
    cases.append(("numpy.pt", r"numpy.pt holds objects that torch's safe loader refuses \(numpy.*\); numpy arrays"))
    torch.save([1, 2], tmp_path / "list.pt")
    cases.append(("list.pt", r"list.pt holds a list; expected a dict with X_train"))
    (tmp_path / "text.pt").write_text("not a checkpoint")
    cases.append(("text.pt", r"text.pt is not a readable .pt file"))
    (tmp_path / "data.csv").write_text("1,2")
    cases.append(("data.csv", r"data.csv: unsupported type '.csv'; give an .npz or .pt file"))
    cases.append(("missing.npz", r"missing.npz cannot be read: No such file or directory"))
    return cases


def test_bad_data_files_are_one_line_errors_naming_the_file(tmp_path):
    for name, pattern in bad_files(tmp_path):
        args = [a for o in [*SWEEP, "dataset='files'", f"data.path='{tmp_path / name}'"] for a in ("--set", o)]
        result = CliRunner().invoke(main, ["train", "--store", str(tmp_path / "s.zarr"), *args])
        assert_one_line_error(result, pattern)
        assert name in result.stderr
    assert not os.path.exists(tmp_path / "ran")  # the hostile pickle was refused, not run
    assert not (tmp_path / "s.zarr").exists()  # refused before any store was made


@pytest.mark.parametrize("options, pattern", [
    ([], r"dataset 'files' needs data.path"),
    (["data.seeds=2"], r"data.seeds lists 2 data seeds but data.path has no \{data_seed\}"),
    (["data.normalise='imagenet'"], r"data.normalise must be one of 'none', 'cifar10', 'train'"),
    (["data.normalise='train'"], r"data.normalise = 'train' applies to images \(N, C, H, W\)"),
    (["data.n_classes=2"], None),
    (["data.n_classes=1"], r"data.n_classes must be 0 \(inferred from the labels\) or at least 2"),
    (["data.n_size=3"], r"unknown key 'n_size' in \[data\] options of 'files'"),
])
def test_bad_options(tmp_path, options, pattern):
    np.savez(tmp_path / "d.npz", **arrays())
    path = [] if pattern and "needs data.path" in pattern else [f"data.path='{tmp_path / 'd.npz'}'"]
    overrides = ["dataset='files'", *path, *options]
    if pattern is None:
        assert load_spec(overrides=overrides).data_options["n_classes"] == 2
        return
    with pytest.raises(LrscanError, match=pattern):
        load_spec(overrides=overrides)


def test_labels_beyond_n_classes_and_pixels_out_of_range(tmp_path):
    np.savez(tmp_path / "d.npz", **arrays(classes=3))
    with pytest.raises(LrscanError, match=r"y_train of data file .* has the label 2, outside data.n_classes = 2"):
        spec_of(tmp_path / "d.npz", "data.n_classes=2")
    images = {"X_train": np.full((8, 3, 4, 4), 255.0, np.float32), "y_train": np.arange(8) % 2,
              "X_test": np.zeros((4, 3, 4, 4), np.float32), "y_test": np.arange(4) % 2}
    np.savez(tmp_path / "img.npz", **images)
    with pytest.raises(LrscanError, match=r"X_train of data file .* has values in \[255, 255\]; data.normalise"):
        spec_of(tmp_path / "img.npz", "data.normalise='cifar10'")

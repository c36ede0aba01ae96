"""Tests for the image datasets: CIFAR from disk, augmentation, planted frequencies."""

import os
import pickle
import urllib.error

import numpy as np
import pytest
import torch

from lrscan.data import DATASETS
from lrscan.data.frequency import BAND_NAMES, band_edges, band_filter, band_inputs
from lrscan.data.images import MEAN, STD, crop_flip, make_augment
from lrscan.data.planted import make_planted
from lrscan.errors import LrscanError
from lrscan.options import check_options
from lrscan.spec import resolve

CIFAR10_TRAIN, CIFAR10_TEST = 4, 6  # images per training batch (five batches), test images


def write_batch(path, images, labels, label_key):
    with open(path, "wb") as f:
        pickle.dump({"batch_label": "fixture", label_key: list(map(int, labels)),
                     "data": images.reshape(len(images), -1), "filenames": []}, f)


@pytest.fixture
def cifar10_dir(tmp_path):
    """A tiny CIFAR-10 in torchvision's layout: 5 batches of 4 training images, 6 test images."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    images = rng.integers(0, 256, (5 * CIFAR10_TRAIN + CIFAR10_TEST, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, len(images))
    for i in range(5):
        part = slice(i * CIFAR10_TRAIN, (i + 1) * CIFAR10_TRAIN)
        write_batch(folder / f"data_batch_{i + 1}", images[part], labels[part], "labels")
    write_batch(folder / "test_batch", images[5 * CIFAR10_TRAIN:], labels[5 * CIFAR10_TRAIN:], "labels")
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)
    return tmp_path, images, labels


@pytest.fixture
def cifar100_dir(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    images = rng.integers(0, 256, (12, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 100, 12)
    for name, part in (("train", slice(0, 8)), ("test", slice(8, 12))):
        with open(folder / name, "wb") as f:
            pickle.dump({"data": images[part].reshape(-1, 3072), "fine_labels": labels[part].tolist(),
                         "coarse_labels": (labels[part] // 5).tolist()}, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)]}, f)
    return tmp_path, images, labels


def load(name, data_seed=0, **options):
    entry = DATASETS[name]
    return entry.load(entry.validate(check_options(f"[data] options of {name!r}", options, entry.defaults)), data_seed)


def normalised(images):
    return (torch.from_numpy(images).float() / 255 - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]


def pixels_of(x, normalization):
    mean, std = (torch.tensor(v, dtype=x.dtype)[:, None, None] for v in normalization)
    return x * std + mean


# --- CIFAR -----------------------------------------------------------------------------------


def test_cifar10_fixture_loads_in_order(cifar10_dir):
    root, images, labels = cifar10_dir
    data = load("cifar10", data_dir=str(root), download=False, n_train=20, n_test=6)
    assert data.x_train.shape == (20, 3, 32, 32) and data.x_train.dtype == torch.float32
    assert data.x_test.shape == (6, 3, 32, 32) and data.n_classes == 10
    torch.testing.assert_close(data.x_train, normalised(images[:20]))
    torch.testing.assert_close(data.x_test, normalised(images[20:]))
    assert data.y_train.tolist() == labels[:20].tolist() and data.y_test.tolist() == labels[20:].tolist()
    assert data.y_train.dtype == torch.int64
    assert data.normalization == (MEAN, STD) and data.augment is None
    pixels = pixels_of(data.x_train, data.normalization)
    assert float(pixels.min()) >= -1e-6 and float(pixels.max()) <= 1 + 1e-6


def test_cifar_subsets_are_the_first_images(cifar10_dir):
    root, images, _ = cifar10_dir
    data = load("cifar10", data_dir=str(root), download=False, n_train=7, n_test=2)
    torch.testing.assert_close(data.x_train, normalised(images[:7]))
    torch.testing.assert_close(data.x_test, normalised(images[20:22]))


def test_cifar100_fixture_uses_fine_labels(cifar100_dir):
    root, images, labels = cifar100_dir
    data = load("cifar100", data_dir=str(root), download=False, n_train=8, n_test=4)
    assert data.n_classes == 100 and data.normalization == (MEAN, STD)
    torch.testing.assert_close(data.x_test, normalised(images[8:]))
    assert data.y_train.tolist() == labels[:8].tolist() and data.y_test.tolist() == labels[8:].tolist()


def test_missing_folder_names_the_folder(tmp_path):
    where = tmp_path / "nowhere"
    with pytest.raises(LrscanError) as err:
        load("cifar10", data_dir=str(where), download=False)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"CIFAR-10 not found in {where} (expected cifar-10-batches-py/")
    assert "data.data_dir" in message and "download" in message


def test_failed_download_says_why(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", offline)
    with pytest.raises(LrscanError, match=rf"CIFAR-100 not found in {tmp_path} .*URLError.*no network"):
        load("cifar100", data_dir=str(tmp_path), download=True)


def test_incomplete_folder_names_the_missing_files(cifar10_dir):
    root, _, _ = cifar10_dir
    (root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(LrscanError, match="cifar-10-batches-py/ lacks data_batch_3;"):
        load("cifar10", data_dir=str(root), download=False, n_train=16)


def test_unreadable_batch(cifar10_dir):
    root, _, _ = cifar10_dir
    (root / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(LrscanError, match="cannot read .*test_batch as a CIFAR batch"):
        load("cifar10", data_dir=str(root), download=False, n_train=20, n_test=6)


def test_more_images_asked_than_the_folder_holds(cifar10_dir):
    root, _, _ = cifar10_dir
    with pytest.raises(LrscanError, match="data.n_train = 21 exceeds the 20 training images of CIFAR-10"):
        load("cifar10", data_dir=str(root), download=False, n_train=21, n_test=6)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [("augment", "flip", "data.augment must be one of"), ("n_train", 50_001, "at most 50000"),
     ("n_test", 0, "at least 1"), ("download", "yes", "true or false"), ("data_dir", "", "non-empty")],
)
def test_bad_cifar_options(option, value, message):
    with pytest.raises(LrscanError, match=message):
        resolve({"sweep": {"dataset": "cifar10"}, "data": {option: value}})


def test_cifar_spec_has_one_data_seed():
    spec = resolve({"sweep": {"dataset": "cifar10"}})
    assert "seeds" not in spec.data_options and spec.data_seeds == (0,)
    assert spec.data_options["n_train"] == 50_000 and spec.data_options["augment"] == "none"


# --- augmentation -------------------------------------------------------------------------------


def batch(n=6, seed=0):
    pixels = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    pixels = (pixels * 255).round() / 255  # CIFAR pixels are 8-bit
    return (pixels - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]


@pytest.mark.parametrize("kind", ["crop-flip", "randaugment"])
def test_augment_is_determined_by_the_generator_state(kind):
    augment, x = make_augment(kind, (MEAN, STD)), batch()
    a = augment(x, torch.Generator().manual_seed(7))
    b = augment(x, torch.Generator().manual_seed(7))
    c = augment(x, torch.Generator().manual_seed(8))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b) and not torch.equal(a, c)
    pixels = pixels_of(a, (MEAN, STD))
    assert float(pixels.min()) >= -1e-5 and float(pixels.max()) <= 1 + 1e-5


@pytest.mark.parametrize("kind", ["crop-flip", "randaugment"])
def test_augmenting_the_runs_at_once_gives_each_run_its_own_batch_to_the_bit(kind):
    """Augment.runs draws each run's choices from its own seed, in the order one call per run
    draws them, and transforms all runs' pixels in one pass: the same images."""
    augment = make_augment(kind, (MEAN, STD))
    x = torch.stack([batch(5, seed) for seed in range(4)])  # (M, B, C, H, W)
    seeds = [3, 1, 4, 1]  # runs may share a seed (then they draw alike)
    g = torch.Generator()
    one_by_one = torch.stack([augment(x[i], g.manual_seed(seed)) for i, seed in enumerate(seeds)])
    together = augment.runs(x, seeds, g)
    assert together.shape == x.shape and torch.equal(together, one_by_one)
    assert not torch.equal(together[0], augment(x[0], g.manual_seed(2)))


def test_augment_none():
    assert make_augment("none", (MEAN, STD)) is None


def test_crop_flip_is_a_padded_crop_with_optional_flip():
    x = torch.arange(5 * 2 * 6 * 6, dtype=torch.float64).reshape(5, 2, 6, 6)
    out = crop_flip(x, torch.Generator().manual_seed(3), fill=-1.0, padding=2)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), value=-1.0)
    for i in range(len(x)):
        candidates = [padded[i, :, dy:dy + 6, dx:dx + 6] for dy in range(5) for dx in range(5)]
        candidates += [c.flip(-1) for c in candidates]
        assert any(torch.equal(out[i], c) for c in candidates), f"sample {i} is no padded crop"


def test_crop_flip_pads_with_black():
    x = batch(64)
    out = make_augment("crop-flip", (MEAN, STD))(x, torch.Generator().manual_seed(0))
    pixels = pixels_of(out, (MEAN, STD))
    # Some of 64 samples are shifted; their border rows or columns are black pixels.
    border = torch.cat([pixels[..., 0, :], pixels[..., -1, :], pixels[..., :, 0], pixels[..., :, -1]], dim=-1)
    assert float(border.abs().amin(dim=(1, 2)).min()) < 1e-6


def test_crop_flip_draws_from_the_given_generator():
    x, g = batch(), torch.Generator().manual_seed(5)
    first = make_augment("crop-flip", (MEAN, STD))(x, g)
    second = make_augment("crop-flip", (MEAN, STD))(x, g)
    assert not torch.equal(first, second)  # the generator advanced


def test_cifar_data_carries_its_augment(cifar10_dir):
    root, _, _ = cifar10_dir
    data = load("cifar10", data_dir=str(root), download=False, n_train=20, n_test=6, augment="crop-flip")
    out = data.augment(data.x_train[:4], torch.Generator().manual_seed(0))
    assert out.shape == (4, 3, 32, 32)


# --- planted frequencies ---------------------------------------------------------------------


SMALL_PLANTED = dict(n_train=512, n_test=256)


def test_planted_is_determined_by_the_data_seed():
    a, b, c = (load("planted", seed, **SMALL_PLANTED) for seed in (0, 0, 1))
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.x_train, c.x_train)
    assert torch.equal(a.x_train, load("planted", 0, n_train=512, n_test=300).x_train)  # own stream


def test_planted_shapes_labels_and_normalisation():
    data = load("planted", 0, **SMALL_PLANTED)
    assert data.x_train.shape == (512, 3, 16, 16) and data.x_train.dtype == torch.float32
    assert data.n_classes == 4 and torch.bincount(data.y_train).tolist() == [128] * 4
    torch.testing.assert_close(data.x_train.mean(dim=(0, 2, 3)), torch.zeros(3), rtol=0, atol=1e-5)
    # Centred, not rescaled: the study's raw band images are then the inputs' band components.
    assert data.normalization[1] == (1.0, 1.0, 1.0)
    pixels = pixels_of(data.x_test, data.normalization)
    torch.testing.assert_close(data.x_test, pixels - torch.tensor(data.normalization[0])[:, None, None])
    assert float(pixels.min()) >= -1e-5 and float(pixels.max()) <= 1 + 1e-5


def test_planted_band_inputs_of_the_study_sum_to_the_input():
    """Background normalised plus raw low, mid, high bands = the model's input, for planted data."""
    data = load("planted", 0, **SMALL_PLANTED)
    bands = band_inputs(data.x_test, data.normalization, band_edges(16))
    torch.testing.assert_close(bands.sum(0), data.x_test, rtol=0, atol=1e-5)


def nearest_mean_accuracy(train_pixels, y_train, test_pixels, y_test, n_classes):
    means = torch.stack([train_pixels[y_train == c].mean(0) for c in range(n_classes)]).flatten(1)
    distance = torch.cdist(test_pixels.flatten(1)[None].double(), means[None].double())[0]
    return float((distance.argmin(1) == y_test).float().mean())


@pytest.mark.parametrize("band", ["low", "mid", "high"])
def test_class_evidence_lies_in_the_planted_band(band):
    # A nearest-class-mean classifier fitted on whole images is accurate on the test set
    # filtered to the planted band and at chance on every other band.
    data = load("planted", 3, band=band, **SMALL_PLANTED)
    train, test = (pixels_of(x, data.normalization) for x in (data.x_train, data.x_test))
    bands = band_filter(test, band_edges(16))
    accuracy = {name: nearest_mean_accuracy(train, data.y_train, bands[i], data.y_test, 4)
                for i, name in enumerate(BAND_NAMES)}
    assert accuracy[band] > 0.9, accuracy
    assert all(accuracy[other] < 0.4 for other in BAND_NAMES if other != band), accuracy


def test_planted_noise_stays_out_of_the_planted_band():
    pixels, labels = make_planted(0, 64, band="high", signal=0.05, band_noise=0.0, noise=0.05)
    bands = band_filter(pixels.double(), band_edges(16))
    # Without in-band noise, the high band of every image of a class is that class's pattern.
    for c in range(4):
        high = bands[3][labels == c]
        torch.testing.assert_close(high, high[:1].expand_as(high), rtol=0, atol=1e-6)


def test_planted_spec_crosses_data_seeds():
    spec = resolve({"sweep": {"dataset": "planted"}, "data": {"seeds": 3, "size": 32, "n_classes": 10}})
    assert spec.data_seeds == (0, 1, 2) and spec.data_options["band"] == "mid"


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [("band", "background", "data.band must be one of"), ("size", 3, "has no frequency in the low, high band"),
     ("signal", 0, "positive"), ("noise", -0.1, "non-negative"), ("n_classes", 1, "at least 2")],
)
def test_bad_planted_options(option, value, message):
    with pytest.raises(LrscanError, match=message):
        resolve({"sweep": {"dataset": "planted"}, "data": {option: value}})


def test_a_batch_that_would_run_code_is_refused(cifar10_dir):
    root, _, _ = cifar10_dir
    with open(root / "cifar-10-batches-py" / "data_batch_2", "wb") as f:
        pickle.dump({"data": os.system, "labels": []}, f)  # unpickling this would import os.system
    with pytest.raises(LrscanError, match=r"data_batch_2.*does not hold (os|posix)\.system"):
        load("cifar10", data_dir=str(root), download=False)

"""CIFAR-10 and CIFAR-100 as registered datasets, with optional training augmentation.

The images are read from torchvision's on-disk layout (``cifar-10-batches-py/`` or
``cifar-100-python/`` under ``data.data_dir``), downloading through torchvision when the
folder lacks them and ``data.download`` allows it. The batch files are read here with
``pickle`` rather than through ``torchvision.datasets.CIFAR10``: torchvision checks the MD5
of every file before reading, which would hash 180 MB on each load and refuse any other
copy of the format (such as a test fixture). Files present are trusted; a download is
checked by torchvision against the archive's MD5.

Both datasets are normalised with the CIFAR-10 per-channel mean and std, as in the study.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from lrscan.data.entry import Data, DatasetEntry, from_pixels, to_pixels
from lrscan.data.randaugment import Draws, apply, draw
from lrscan.errors import LrscanError
from lrscan.options import boolean, choice, integer, string

__all__ = ["CIFAR10", "CIFAR100", "MEAN", "STD", "AUGMENTS", "Augment", "crop_flip", "rand_augment_normalised",
           "make_augment"]

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2023, 0.1994, 0.2010)
AUGMENTS = ("none", "crop-flip", "randaugment")
# Random crop padding in pixels and RandAugment's (number of ops, magnitude), as in the ViT setup.
PADDING = 4
RANDAUGMENT = (2, 14)


@dataclass(frozen=True)
class Layout:
    """Where one CIFAR variant lives on disk and how its batches are named."""

    name: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: str
    n_classes: int
    n_train: int
    n_test: int
    torchvision_class: str


CIFAR10 = Layout(
    "CIFAR-10", "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
    "labels", 10, 50_000, 10_000, "CIFAR10",
)
CIFAR100 = Layout("CIFAR-100", "cifar-100-python", ("train",), ("test",), "fine_labels", 100, 50_000, 10_000, "CIFAR100")

IMAGE_SHAPE = (3, 32, 32)


def _defaults(layout: Layout) -> dict[str, Any]:
    return {
        "data_dir": "~/.cache/lrscan/cifar",
        "download": True,
        "n_train": layout.n_train,
        "n_test": layout.n_test,
        "augment": "none",
    }


def _missing(layout: Layout, folder: Path) -> list[str]:
    return [name for name in (*layout.train_files, *layout.test_files) if not (folder / name).is_file()]


def _download(layout: Layout, root: Path) -> str | None:
    """Fetch the dataset through torchvision; the reason it failed, or None."""
    import torchvision.datasets

    dataset = getattr(torchvision.datasets, layout.torchvision_class)
    try:
        # torchvision reports progress on stdout; the library keeps stdout for its caller.
        with contextlib.redirect_stdout(sys.stderr):
            dataset(str(root), train=True, download=True)
    except Exception as err:  # noqa: BLE001 - any network or archive failure means "not available"
        return f"{type(err).__name__}: {err}".splitlines()[0]
    return None


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches (dicts of numpy arrays, lists and strings) and nothing else: a
    file that asks for any other class or function is refused rather than run."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"), ("_codecs", "encode")}

    def __init__(self, file, limit: int, **options):
        super().__init__(file, **options)
        self.limit = limit  # the file's size: no array it holds can have more elements

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"a CIFAR batch does not hold {module}.{name}")
        found = super().find_class(module, name)
        if name == "_reconstruct":
            return functools.partial(_bounded_reconstruct, found, self.limit)
        return found


def _bounded_reconstruct(reconstruct, limit: int, subtype, shape, dtype):
    """numpy's array reconstruction, refused for a shape the file cannot hold (a few bytes
    asking for 10^12 elements would otherwise be allocated before anything is checked)."""
    count = math.prod(int(n) for n in shape) if isinstance(shape, tuple) else int(shape)
    if count > limit:
        raise pickle.UnpicklingError(f"it claims an array of {count:,} elements, more than its {limit:,} bytes hold")
    return reconstruct(subtype, shape, dtype)


def _read_batches(folder: Path, names: tuple[str, ...], label_key: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for name in names:
        path = folder / name
        try:
            with open(path, "rb") as f:
                batch = _BatchUnpickler(f, os.fstat(f.fileno()).st_size, encoding="latin1").load()
            images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, *IMAGE_SHAPE))
            labels.append(np.asarray(batch[label_key], dtype=np.int64))
        except (OSError, pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, MemoryError) as err:
            raise LrscanError(f"cannot read {path} as a CIFAR batch: {type(err).__name__}: {err}") from None
        if len(images[-1]) != len(labels[-1]):
            raise LrscanError(f"{path} holds {len(images[-1])} images but {len(labels[-1])} labels")
    return np.concatenate(images), np.concatenate(labels)


def read_cifar(layout: Layout, data_dir: str | Path, download: bool) -> tuple[np.ndarray, ...]:
    """The raw images and labels of a CIFAR variant, downloading them if allowed and needed.

    Parameters
    ----------
    layout
        :data:`CIFAR10` or :data:`CIFAR100`.
    data_dir
        Folder that holds (or will hold) the dataset's folder; ``~`` is expanded.
    download
        Whether to fetch the data through torchvision when the folder lacks it.

    Returns
    -------
    tuple of numpy.ndarray
        ``(x_train, y_train, x_test, y_test)``: uint8 images (N, 3, 32, 32) and int64 labels.

    Raises
    ------
    LrscanError
        When the data are missing and cannot be downloaded, naming the folder looked in, or
        a batch file cannot be read.
    """
    root = Path(data_dir).expanduser()
    folder = root / layout.folder
    missing = _missing(layout, folder)
    if missing:
        reason = (_download(layout, root) or "the download did not produce it") if download else "downloads are off"
        missing = _missing(layout, folder)
        if missing:
            expected = (f"expected {layout.folder}/" if len(missing) == len(layout.train_files) + len(layout.test_files)
                        else f"{layout.folder}/ lacks {', '.join(missing)}")
            raise LrscanError(
                f"{layout.name} not found in {root} ({expected}; {reason}; set data.data_dir to the folder "
                f"that holds {layout.folder}/{'' if download else ' or allow a download with data.download = true'})"
            )
    return (
        *_read_batches(folder, layout.train_files, layout.label_key),
        *_read_batches(folder, layout.test_files, layout.label_key),
    )


def _normalise(images: np.ndarray) -> Tensor:
    mean, std = (torch.tensor(v)[:, None, None] for v in (MEAN, STD))
    return (torch.from_numpy(images).float() / 255 - mean) / std


def load(layout: Layout, options: Mapping[str, Any], data_seed: int) -> Data:
    """Load a CIFAR variant: normalised float images; ``data_seed`` is unused (CIFAR is fixed)."""
    x_train, y_train, x_test, y_test = read_cifar(layout, options["data_dir"], options["download"])
    for split, key, have in (("training", "n_train", len(x_train)), ("test", "n_test", len(x_test))):
        if options[key] > have:
            raise LrscanError(f"data.{key} = {options[key]} exceeds the {have} {split} images of {layout.name}")
    n_train, n_test = options["n_train"], options["n_test"]
    return Data(
        _normalise(x_train[:n_train]), torch.from_numpy(y_train[:n_train]),
        _normalise(x_test[:n_test]), torch.from_numpy(y_test[:n_test]),
        n_classes=layout.n_classes,
        normalization=(MEAN, STD),
        augment=make_augment(options["augment"], (MEAN, STD)),
    )


def validate(layout: Layout, options: dict[str, Any]) -> dict[str, Any]:
    options["data_dir"] = string("data.data_dir", options["data_dir"])
    options["download"] = boolean("data.download", options["download"])
    for key, most in (("n_train", layout.n_train), ("n_test", layout.n_test)):
        options[key] = integer(f"data.{key}", options[key], minimum=1)
        if options[key] > most:
            raise LrscanError(f"data.{key} must be at most {most} for {layout.name}, got {options[key]}")
    options["augment"] = choice("data.augment", options["augment"], AUGMENTS)
    return options


def _entry(layout: Layout) -> DatasetEntry:
    return DatasetEntry(
        load=functools.partial(load, layout),
        defaults=_defaults(layout),
        validate=functools.partial(validate, layout),
        extra_sets=("bands",),
    )


def _draw(high: int, n: int, generator: torch.Generator) -> Tensor:
    return torch.randint(0, high, (n,), generator=generator, device=generator.device)


def crop_flip_draws(n: int, generator: torch.Generator, padding: int = PADDING) -> tuple[Tensor, Tensor, Tensor]:
    """The draws of :func:`crop_flip` for ``n`` samples: row offsets, column offsets and flip
    bits (n,) each, in that order, on the generator's device."""
    return (_draw(2 * padding + 1, n, generator), _draw(2 * padding + 1, n, generator),
            _draw(2, n, generator).bool())


def crop_flip(x: Tensor, generator: torch.Generator | None = None, fill: Tensor | float = 0.0,
              padding: int = PADDING, *, draws: tuple[Tensor, Tensor, Tensor] | None = None) -> Tensor:
    """Random crop after zero padding, then a random horizontal flip, per sample.

    Parameters
    ----------
    x
        A batch (B, C, H, W) on any device.
    generator
        Source of the draws (:func:`crop_flip_draws`): per sample a row offset, a column
        offset and a flip bit.
    fill
        Value of the padding: a number or a per-channel (C, 1, 1) tensor (a black pixel in
        normalised units, to match padding the [0, 1] image with zeros).
    padding
        Pixels added on every side before cropping back to H×W.
    draws
        The draws themselves, instead of ``generator``.

    Returns
    -------
    Tensor
        (B, C, H, W) on the device of ``x``.
    """
    b, c, h, w = x.shape
    dy, dx, flip = (crop_flip_draws(b, generator, padding) if draws is None else draws)
    dy, dx, flip = dy.to(x.device), dx.to(x.device), flip.to(x.device)
    padded = torch.empty(b, c, h + 2 * padding, w + 2 * padding, dtype=x.dtype, device=x.device)
    padded[:] = fill
    padded[..., padding:padding + h, padding:padding + w] = x
    rows = dy[:, None] + torch.arange(h, device=x.device)
    cols = dx[:, None] + torch.arange(w, device=x.device)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    # Advanced indices around a slice put their dimensions first: (B, H, W, C).
    out = padded[torch.arange(b, device=x.device)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


def rand_augment_normalised(
    x: Tensor, generator: torch.Generator | None, normalization: tuple[tuple[float, ...], tuple[float, ...]],
    *, draws: Draws | None = None,
) -> Tensor:
    """The study's RandAugment(2, 14) on a normalised batch, on its device, drawn from ``generator``.

    The images are turned back into the 8-bit pixels the study augmented, augmented by
    :func:`lrscan.data.randaugment.apply`, and normalised again; the same generator state
    gives the same batch.

    Parameters
    ----------
    x
        Normalised images (B, 3, H, W) on any device.
    generator
        Source of every random choice (:func:`lrscan.data.randaugment.draw`).
    normalization
        The per-channel ``(mean, std)`` of ``x``.
    draws
        The choices themselves, instead of ``generator``.

    Returns
    -------
    Tensor
        (B, 3, H, W), normalised, with the dtype and device of ``x``.
    """
    pixels = (to_pixels(x, normalization).clamp(0, 1) * 255).round()
    if draws is None:
        draws = draw(len(x), x.shape[-2:], generator, RANDAUGMENT[0])
    return from_pixels(apply(pixels, draws.to(x.device), RANDAUGMENT[1]) / 255, normalization)


class Augment:
    """A training augmentation: ``"crop-flip"`` (random crop with 4 pixels of black padding,
    then a horizontal flip) or ``"randaugment"`` (the study's RandAugment(2, 14),
    :func:`rand_augment_normalised`, then crop and flip).

    ``augment(x, generator)`` augments one batch (B, C, H, W) from the generator's state;
    :meth:`runs` augments the batches of M runs (M, B, C, H, W) at once, each drawn from its
    own seed — the same images, to the bit, as one call per run, in one pass over the pixels.
    """

    def __init__(self, kind: str, normalization: tuple[tuple[float, ...], tuple[float, ...]]):
        self.kind, self.normalization = choice("augmentation", kind, AUGMENTS[1:]), normalization

    def draw(self, n: int, size: tuple[int, int], generator: torch.Generator) -> tuple:
        """Every random choice for a batch of ``n`` images of ``size``, in the order the
        pipeline draws them: RandAugment's (when it has it), then the crop and flip."""
        first = (draw(n, size, generator, RANDAUGMENT[0]),) if self.kind == "randaugment" else ()
        return (*first, crop_flip_draws(n, generator))

    def apply(self, x: Tensor, draws: tuple) -> Tensor:
        """The batch ``x`` (B, C, H, W) augmented with the choices ``draws`` (:meth:`draw`)."""
        if self.kind == "randaugment":
            x = rand_augment_normalised(x, None, self.normalization, draws=draws[0])
        black = from_pixels(torch.zeros_like(x[0, :, :1, :1]), self.normalization)  # (C, 1, 1)
        return crop_flip(x, fill=black, draws=draws[-1])

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        return self.apply(x, self.draw(len(x), x.shape[-2:], generator))

    def runs(self, x: Tensor, seeds: Sequence[int], generator: torch.Generator) -> Tensor:
        """The batches of M runs, x (M, B, C, H, W), each augmented from ``generator`` seeded
        with its run's seed (``seeds``, one per run), at once."""
        m, b = x.shape[:2]
        per_run = [self.draw(b, x.shape[-2:], generator.manual_seed(seed)) for seed in seeds]
        joined = tuple(_cat([run[i] for run in per_run]) for i in range(len(per_run[0])))
        return self.apply(x.reshape(m * b, *x.shape[2:]), joined).reshape(x.shape)


def _cat(parts: list):
    """Draws of several batches as the draws of one: each field concatenated along its images."""
    if isinstance(parts[0], Draws):  # fields (n_ops, B, ...)
        return Draws(*(torch.cat([getattr(p, f.name) for p in parts], dim=1) for f in dataclasses.fields(Draws)))
    return tuple(torch.cat(field) for field in zip(*parts))


def make_augment(kind: str, normalization: tuple[tuple[float, ...], tuple[float, ...]]) -> Augment | None:
    """The ``Data.augment`` of an ``augment`` option (:class:`Augment`), or None for ``"none"``."""
    return None if kind == "none" else Augment(kind, normalization)


CIFAR10_ENTRY = _entry(CIFAR10)
CIFAR100_ENTRY = _entry(CIFAR100)

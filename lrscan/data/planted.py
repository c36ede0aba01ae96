"""Planted-frequency images: class evidence in one frequency band, noise in the others.

An offline image dataset for which the frequency analysis has a known right answer. Each
class ``c`` has a fixed random pattern ``P_c`` whose spectrum lies in the planted band
(:mod:`lrscan.data.frequency`) and whose pixel values have unit standard deviation. A
sample of class ``y`` is::

    pixels = clamp(0.5 + signal·P_y + band_noise·N_in + noise·N_out, 0, 1)

where ``N_in`` is white noise restricted to the planted band and ``N_out`` white noise
restricted to every other band (background included), both scaled to unit pixel standard
deviation and drawn afresh for every sample. Only the planted band says anything about the
label, so a model can only be accurate on the test set filtered to that band; clamping
leaks a little of it elsewhere, rarely at the default levels. The patterns, the training
set and the test set come from separate streams of the data seed, so changing ``n_test``
leaves the training set as it was.

The model inputs are the pixels centred on the training set's per-channel mean and not
rescaled (``normalization = (mean, 1)``): the low, mid and high band images that the study's
evaluation feeds as raw pixels are then exactly the band components of the inputs the model
was trained on, so the planted band is the one the frequency analysis finds under the study's
convention, not only when every band is normalised. (The models are SI ConvNets, whose first
BatchNorm removes the input scale in training: centring without rescaling trains the same
models.)
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor

from lrscan.data.entry import Data, DatasetEntry, from_pixels
from lrscan.data.frequency import BAND_NAMES, band_edges, band_filter
from lrscan.options import choice, integer, number, seeds_list

__all__ = ["DEFAULTS", "ENTRY", "make_planted"]

PLANTABLE = BAND_NAMES[1:]
DEFAULTS = {
    "seeds": 1,
    "size": 16,
    "channels": 3,
    "n_classes": 4,
    "n_train": 2048,
    "n_test": 1024,
    "band": "mid",
    "signal": 0.1,
    "band_noise": 0.1,
    "noise": 0.1,
}
STREAMS = {"patterns": 0, "train": 1, "test": 2}


def _white(seed: int, stream: str, shape: tuple[int, ...]) -> Tensor:
    rng = np.random.default_rng([seed, STREAMS[stream]])
    return torch.from_numpy(rng.standard_normal(shape))


def _unit_std(x: Tensor) -> Tensor:
    """Scale each sample (leading dimension) to unit pixel standard deviation."""
    return x / x.flatten(1).std(dim=1).clamp_min(1e-12)[:, None, None, None]


def make_planted(
    data_seed: int,
    n: int,
    *,
    stream: str = "train",
    size: int = 16,
    channels: int = 3,
    n_classes: int = 4,
    band: str = "mid",
    signal: float = 0.1,
    band_noise: float = 0.1,
    noise: float = 0.1,
) -> tuple[Tensor, Tensor]:
    """Draw planted-frequency images in pixel space.

    Parameters
    ----------
    data_seed
        Seed of the dataset instance: it fixes the class patterns and both streams.
    n
        Number of samples.
    stream
        ``"train"`` or ``"test"``: independent draws for the same patterns.
    size, channels
        Images are (channels, size, size).
    n_classes
        Number of classes; labels are balanced (``n // n_classes`` or one more per class)
        and shuffled.
    band
        The band that holds the class evidence: ``"low"``, ``"mid"`` or ``"high"``.
    signal, band_noise, noise
        Pixel standard deviations of the class pattern, of the class-unrelated noise in the
        planted band, and of the noise in the other bands.

    Returns
    -------
    tuple of Tensor
        Pixels (n, channels, size, size), float32 in [0, 1], and int64 labels (n,).
    """
    edges = band_edges(size)
    which = BAND_NAMES.index(band)
    shape = (channels, size, size)
    patterns = _unit_std(band_filter(_white(data_seed, "patterns", (n_classes, *shape)), edges)[which])
    rng = np.random.default_rng([data_seed, STREAMS[stream], 1])
    labels = torch.from_numpy(rng.permutation(np.arange(n) % n_classes))
    white = _white(data_seed, stream, (n, *shape))
    inside = band_filter(white, edges)[which]
    pixels = 0.5 + signal * patterns[labels] + band_noise * _unit_std(inside) + noise * _unit_std(white - inside)
    return pixels.clamp(0, 1).float(), labels


def _generator_options(options: Mapping[str, Any]) -> dict[str, Any]:
    return {k: options[k] for k in ("size", "channels", "n_classes", "band", "signal", "band_noise", "noise")}


def load(options: Mapping[str, Any], data_seed: int) -> Data:
    """Build the dataset; inputs are pixels centred on the training set's per-channel mean."""
    kwargs = _generator_options(options)
    x_train, y_train = make_planted(data_seed, options["n_train"], stream="train", **kwargs)
    x_test, y_test = make_planted(data_seed, options["n_test"], stream="test", **kwargs)
    normalization = (tuple(x_train.mean(dim=(0, 2, 3), dtype=torch.float64).tolist()), (1.0,) * x_train.shape[1])
    return Data(
        from_pixels(x_train, normalization), y_train, from_pixels(x_test, normalization), y_test,
        n_classes=options["n_classes"],
        normalization=normalization,
    )


def validate(options: dict[str, Any]) -> dict[str, Any]:
    options["seeds"] = list(seeds_list("data.seeds", options["seeds"]))
    for key, minimum in (("size", 2), ("channels", 1), ("n_classes", 2), ("n_train", 1), ("n_test", 1)):
        options[key] = integer(f"data.{key}", options[key], minimum=minimum)
    options["band"] = choice("data.band", options["band"], PLANTABLE)
    options["signal"] = number("data.signal", options["signal"], positive=True)
    for key in ("band_noise", "noise"):
        options[key] = number(f"data.{key}", options[key], positive=False)
    band_edges(options["size"])
    return options


ENTRY = DatasetEntry(load=load, defaults=DEFAULTS, validate=validate, extra_sets=("bands",))

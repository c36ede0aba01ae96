"""What a dataset is to lrscan: the tensors it loads (:class:`Data`) and how to load them
(:class:`DatasetEntry`), with the pixel normalisation of image sets."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import Tensor


@dataclass(frozen=True)
class Data:
    """One dataset instance: float inputs, integer class labels, and named extra test sets.

    Attributes
    ----------
    normalization
        For images, the per-channel ``(mean, std)`` that turned pixels in [0, 1] into the
        inputs (``x = (pixels - mean) / std``), so that analyses can work in pixel space
        (the frequency bands); ``None`` for data that are not images.
    augment
        ``augment(x, generator) -> x``: random augmentation of one training batch (B, ...)
        drawn from ``generator``, and ``augment.runs(x, seeds, generator)`` of M runs' batches
        (M, B, ...) at once, each from its own seed (the trainer's per run and step, so
        resuming reproduces it) — :class:`lrscan.data.images.Augment`; ``None`` for no
        augmentation.
    """

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    n_classes: int
    extra: Mapping[str, tuple[Tensor, Tensor]] = field(default_factory=dict)
    normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    augment: Callable[[Tensor, torch.Generator], Tensor] | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


Normalization = tuple[tuple[float, ...], tuple[float, ...]]


def _per_channel(values: tuple[float, ...], like: Tensor) -> Tensor:
    return torch.tensor(values, dtype=like.dtype, device=like.device)[:, None, None]


def to_pixels(x: Tensor, normalization: Normalization) -> Tensor:
    """Pixel values of normalised images x (..., C, H, W): ``x * std + mean`` per channel."""
    return x * _per_channel(normalization[1], x) + _per_channel(normalization[0], x)


def from_pixels(pixels: Tensor, normalization: Normalization) -> Tensor:
    """Model inputs of pixel images (..., C, H, W): ``(pixels - mean) / std`` per channel."""
    return (pixels - _per_channel(normalization[0], pixels)) / _per_channel(normalization[1], pixels)


@dataclass(frozen=True)
class DatasetEntry:
    """How lrscan loads one dataset.

    Attributes
    ----------
    load
        ``load(options, data_seed) -> Data``; deterministic in its arguments.
    defaults
        Every option with its default (the ``[data]`` table of a spec). An option ``seeds``
        (count or list) makes the sweep cross its training seeds with these data seeds.
    validate
        ``validate(options) -> options``: checks option values, raising ``LrscanError``.
    extra_sets
        Names of the extra evaluation sets the dataset provides: those in ``Data.extra``, and
        ``"bands"`` for images, whose band-limited test sets the frequency analysis derives
        (analyzers that need a set apply only to datasets that provide it).
    """

    load: Callable[[Mapping[str, Any], int], Data]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    validate: Callable[[dict[str, Any]], dict[str, Any]] = lambda options: options
    extra_sets: tuple[str, ...] = ()

"""Frequency bands of images: split each test image into band-limited parts.

Per colour channel the image's 2-D DFT is centred (``fftshift``); a frequency
``(k_y, k_x)`` (integer frequencies, ``fftfreq(n) * n``) has band radius
``|k_x| + |k_y|``, its L1 distance from the zero frequency. For 32×32 images the bands are
background {0}, low [1, 9), mid [9, 25) and high [25, 33) (the study's edges).

Other sizes use the same edges on a radius measured in 32×32 units: per axis, a frequency
``k`` of an axis of length ``n`` counts as ``32·k/n``, so an h×w image's frequency has radius
``32·|k_y|/h + 32·|k_x|/w``. For a square n×n image that is the 32×32 rule with every edge
``e`` scaled to ``n·e/32`` and rounded *up*: 16×16 gives low [1, 5), mid [5, 13), high
[13, 17); 8×8 gives low [1, 3), mid [3, 7), high [7, 9). Comparisons are exact integer
arithmetic, the bands partition the spectrum at every size, and at 32×32 they are exactly
the study's. Each band mask is symmetric under ``k -> -k``, so a band-limited image is
real up to float error and the band images sum back to the original.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lrscan.data.entry import from_pixels, to_pixels
from lrscan.errors import LrscanError

__all__ = ["BAND_NAMES", "NORMALISE", "REFERENCE_SIZE", "band_edges", "band_masks", "band_filter", "band_inputs"]

BAND_NAMES = ("background", "low", "mid", "high")
# The image size at which the edges below are the study's.
REFERENCE_SIZE = 32
LOW_MID, MID_HIGH, TOP = 9, 25, 33
# Which band images become normalised model inputs: the study's evaluation normalises the
# background band (which holds the image's mean) and feeds low, mid and high as raw pixels;
# "all" normalises every band like a full image.
NORMALISE = ("study", "all")


def band_edges(size: int | tuple[int, int], low_mid: int = LOW_MID) -> tuple[int, ...]:
    """The edges of the four bands, checked to give non-empty bands at an image size.

    Parameters
    ----------
    size
        Image side ``n`` (square) or ``(height, width)``.
    low_mid
        The low/mid boundary in 32×32 units (the study's 9); moving it is the boundary sweep.

    Returns
    -------
    tuple of int
        ``(0, 1, low_mid, 25, 33)``: band ``i`` holds radii ``edges[i] <= r < edges[i + 1]``,
        radii in 32×32 units (see the module docstring).

    Raises
    ------
    LrscanError
        When ``low_mid`` is not a whole number in [2, 24], or the image is too small for all
        four bands to hold a frequency (2×2, 3×3).
    """
    if isinstance(low_mid, bool) or not isinstance(low_mid, int) or not 1 < low_mid < MID_HIGH:
        raise LrscanError(f"the low/mid band boundary must be a whole number from 2 to {MID_HIGH - 1}, got {low_mid!r}")
    height, width = (size, size) if isinstance(size, int) else size
    edges = (0, 1, low_mid, MID_HIGH, TOP)
    band_masks(height, width, edges)
    return edges


def _axis(n: int) -> Tensor:
    """Centred integer frequencies of an axis of length ``n`` (the order ``fftshift`` gives)."""
    return torch.fft.fftshift(torch.round(torch.fft.fftfreq(n) * n).to(torch.int64))


def band_masks(height: int, width: int, edges: tuple[int, ...]) -> Tensor:
    """Which centred DFT frequencies of a height×width image fall in each band.

    Parameters
    ----------
    height, width
        Image size in pixels.
    edges
        Increasing band edges in 32×32 units, from 0 to beyond the largest radius
        (:func:`band_edges`).

    Returns
    -------
    Tensor
        Bool, (n_bands, height, width), in the centred (``fftshift``) layout: the zero
        frequency sits at ``(height // 2, width // 2)``. Every frequency is in exactly one band.

    Raises
    ------
    LrscanError
        When the edges do not increase from 0 past the largest radius, or a band is empty.
    """
    if height < 1 or width < 1:
        raise LrscanError(f"an image of {height}×{width} pixels has no frequencies")
    if edges[0] != 0 or any(b <= a for a, b in zip(edges, edges[1:])):
        raise LrscanError(f"band edges must increase from 0, got {list(edges)}")
    ky, kx = _axis(height).abs()[:, None], _axis(width).abs()[None, :]
    # radius r = REF·(|ky|/h + |kx|/w); compare r·h·w = REF·(|ky|·w + |kx|·h) with edge·h·w exactly.
    scaled = REFERENCE_SIZE * (ky * width + kx * height)
    area = height * width
    if int(scaled.max()) >= edges[-1] * area:
        raise LrscanError(f"band edges {list(edges)} end below the largest radius of a {height}×{width} image")
    masks = torch.stack([(scaled >= lo * area) & (scaled < hi * area) for lo, hi in zip(edges, edges[1:])])
    empty = [i for i, m in enumerate(masks) if not bool(m.any())]
    if empty:
        names = [BAND_NAMES[i] if len(edges) == len(BAND_NAMES) + 1 else f"band {i}" for i in empty]
        raise LrscanError(
            f"a {height}×{width} image has no frequency in the {', '.join(names)} band "
            f"(edges {list(edges)} in {REFERENCE_SIZE}×{REFERENCE_SIZE} units); use larger images"
        )
    return masks


def band_filter(pixels: Tensor, edges: tuple[int, ...]) -> Tensor:
    """Split images into band-limited images, one per band.

    Parameters
    ----------
    pixels
        Images (N, C, H, W), pixel values in [0, 1] (filter before normalising).
    edges
        Band edges (:func:`band_edges`).

    Returns
    -------
    Tensor
        (n_bands, N, C, H, W), same dtype as ``pixels``: the real part of the inverse DFT of
        each channel's spectrum restricted to the band. The bands sum to ``pixels`` up to
        float error; values are not clipped to [0, 1].
    """
    height, width = pixels.shape[-2:]
    masks = band_masks(height, width, edges).to(pixels.device)
    spectrum = torch.fft.fftshift(torch.fft.fft2(pixels), dim=(-2, -1))
    bands = [
        torch.fft.ifft2(torch.fft.ifftshift(spectrum * mask, dim=(-2, -1))).real.to(pixels.dtype)
        for mask in masks
    ]
    return torch.stack(bands)


def band_inputs(
    x: Tensor,
    normalization: tuple[tuple[float, ...], tuple[float, ...]],
    edges: tuple[int, ...],
    normalise: str = "study",
) -> Tensor:
    """Band-limited versions of normalised model inputs, filtered in pixel space.

    Parameters
    ----------
    x
        Normalised images (N, C, H, W), ``x = (pixels - mean) / std``.
    normalization
        The ``(mean, std)`` per channel that produced ``x`` (``Data.normalization``).
    edges
        Band edges (:func:`band_edges`).
    normalise
        ``"study"``: the background band (the first) is normalised like ``x`` and the other
        bands are the raw band-limited pixels, as in the study's evaluation script (the full
        image is normalised as always). ``"all"``: every band is normalised like ``x``.

    Returns
    -------
    Tensor
        (n_bands, N, C, H, W): each band's image as the model is fed it.
    """
    if normalise not in NORMALISE:
        raise LrscanError(f"band normalisation must be one of {', '.join(map(repr, NORMALISE))}, got {normalise!r}")
    bands = band_filter(to_pixels(x, normalization), edges)
    if normalise == "all":
        return from_pixels(bands, normalization)
    return torch.cat([from_pixels(bands[:1], normalization), bands[1:]])

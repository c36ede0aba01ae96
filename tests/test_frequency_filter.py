"""Tests for the frequency bands of images (lrscan.data.frequency)."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lrscan.data.frequency import BAND_NAMES, band_edges, band_filter, band_inputs, band_masks
from lrscan.errors import LrscanError


def band_of_each_frequency(masks):
    """(H, W) band index of every centred frequency, checking each is in exactly one band."""
    np.testing.assert_array_equal(masks.sum(0).numpy(), 1)
    return masks.int().argmax(0).numpy()


def cosine(size, ky, kx, channels=3):
    y, x = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    wave = 0.5 + 0.25 * np.cos(2 * math.pi * (ky * y + kx * x) / size)
    return torch.from_numpy(np.broadcast_to(wave, (1, channels, size, size)).copy())


def test_edges_at_32_are_the_studys():
    assert band_edges(32) == (0, 1, 9, 25, 33)
    assert BAND_NAMES == ("background", "low", "mid", "high")
    # At 32×32 the radius is |kx| + |ky| itself: compare with the SPEC's bands directly.
    k = np.abs(np.fft.fftshift(np.fft.fftfreq(32) * 32)).round().astype(int)
    radius = k[:, None] + k[None, :]
    expected = np.select([radius == 0, radius < 9, radius < 25, radius < 33], [0, 1, 2, 3], default=-1)
    np.testing.assert_array_equal(band_of_each_frequency(band_masks(32, 32, band_edges(32))), expected)


def test_4x4_by_hand():
    # Centred frequencies per axis: -2, -1, 0, 1. In 32×32 units the radius is 8·(|ky| + |kx|):
    # |ky| + |kx| = 0 -> background, 1 (r = 8) -> low, 2 or 3 (16, 24) -> mid, 4 (32) -> high.
    expected = np.array([
        [3, 2, 2, 2],   # ky = -2: kx = -2, -1, 0, 1 -> L1 4, 3, 2, 3
        [2, 2, 1, 2],   # ky = -1: 3, 2, 1, 2
        [2, 1, 0, 1],   # ky = 0:  2, 1, 0, 1
        [2, 2, 1, 2],   # ky = 1:  3, 2, 1, 2
    ])
    np.testing.assert_array_equal(band_of_each_frequency(band_masks(4, 4, band_edges(4))), expected)


def test_8x8_counts_by_hand():
    # r = 4·L1; low: L1 1..2, mid 3..6, high 7..8. On the 8-point axis |k| = 0 and 4 occur once,
    # 1..3 twice. L1 = 1: 4 frequencies; L1 = 2: (0,2), (2,0), (1,1) -> 2 + 2 + 4 = 8; so low = 12.
    # L1 = 7: (3,4), (4,3) -> 2 + 2; L1 = 8: (4,4) -> 1; so high = 5; mid = 64 - 1 - 12 - 5 = 46.
    assert band_masks(8, 8, band_edges(8)).sum((1, 2)).tolist() == [1, 12, 46, 5]


def test_16x16_scaled_edges_round_up():
    # 16×16: edges 9 and 25 scale to 4.5 and 12.5 and round up: low L1 1..4, mid 5..12, high 13..16.
    k = np.abs(np.fft.fftshift(np.fft.fftfreq(16) * 16)).round().astype(int)
    l1 = k[:, None] + k[None, :]
    bands = band_of_each_frequency(band_masks(16, 16, band_edges(16)))
    for band, (lo, hi) in enumerate([(0, 0), (1, 4), (5, 12), (13, 16)]):
        assert l1[bands == band].min() == lo and l1[bands == band].max() == hi


@settings(max_examples=40, deadline=None)
@given(st.integers(4, 40), st.integers(4, 40), st.integers(2, 24))
def test_bands_partition_the_spectrum(height, width, low_mid):
    try:
        edges = band_edges((height, width), low_mid=low_mid)
    except LrscanError:  # a moved boundary may empty the low or mid band of a small image
        assert low_mid != 9
        return
    masks = band_masks(height, width, edges)
    assert masks.shape == (4, height, width)
    np.testing.assert_array_equal(masks.sum(0).numpy(), 1)
    assert bool(masks.flatten(1).any(1).all())
    # Symmetric under k -> -k, so band images are real: in the unshifted layout -k is index (-i) mod n.
    unshifted = torch.fft.ifftshift(masks, dim=(-2, -1))
    negated = unshifted[:, (-torch.arange(height)) % height][:, :, (-torch.arange(width)) % width]
    assert torch.equal(unshifted, negated)


@settings(max_examples=20, deadline=None)
@given(st.integers(4, 33), st.integers(4, 33), st.integers(0, 2**31))
def test_band_images_sum_back_to_the_image(height, width, seed):
    pixels = torch.rand(2, 3, height, width, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    bands = band_filter(pixels, band_edges((height, width)))
    assert bands.shape == (4, 2, 3, height, width) and bands.dtype == torch.float64
    torch.testing.assert_close(bands.sum(0), pixels, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("ky", "kx", "band"),
    [(0, 0, "background"), (1, 2, "low"), (-8, 0, "low"), (0, 9, "mid"), (5, -10, "mid"),
     (12, 12, "mid"), (16, 9, "high"), (16, 16, "high"), (-12, 13, "high")],
)
def test_a_cosine_lands_in_its_band(ky, kx, band):
    image = cosine(32, ky, kx)
    bands = band_filter(image, band_edges(32))
    which = BAND_NAMES.index(band)
    # The constant 0.5 lives in the background; the wave alone in its band.
    wave = image - 0.5 if band != "background" else image
    torch.testing.assert_close(bands[which], wave, rtol=0, atol=1e-12)
    for other in set(range(4)) - {which, 0}:
        torch.testing.assert_close(bands[other], torch.zeros_like(image), rtol=0, atol=1e-12)


def test_moving_the_low_mid_boundary():
    edges = band_edges(32, low_mid=5)
    assert edges == (0, 1, 5, 25, 33)
    bands = band_filter(cosine(32, 3, 3), edges)  # L1 = 6: low at the study's edges, mid here
    assert float(bands[2].abs().max()) > 0.2 and float(bands[1].abs().max()) < 1e-12


def test_float32_images_stay_float32_and_close():
    pixels = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    bands = band_filter(pixels, band_edges(32))
    assert bands.dtype == torch.float32
    torch.testing.assert_close(bands.sum(0), pixels, rtol=0, atol=1e-5)


def test_band_inputs_filter_in_pixel_space():
    mean, std = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
    m, s = (torch.tensor(v, dtype=torch.float64)[:, None, None] for v in (mean, std))
    pixels = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x = (pixels - m) / s
    bands = band_filter(pixels, band_edges(16))
    inputs = band_inputs(x, (mean, std), band_edges(16), normalise="all")
    torch.testing.assert_close(inputs * s + m, bands, rtol=0, atol=1e-12)
    # The study's evaluation (the default): the background band normalised, the others raw pixels.
    study = band_inputs(x, (mean, std), band_edges(16))
    torch.testing.assert_close(study[0], (bands[0] - m) / s, rtol=0, atol=1e-12)
    torch.testing.assert_close(study[1:], bands[1:], rtol=0, atol=1e-12)


def test_band_normalisation_must_be_known():
    x = torch.zeros(1, 3, 16, 16)
    with pytest.raises(LrscanError, match="band normalisation must be one of 'study', 'all'"):
        band_inputs(x, ((0.5,) * 3, (0.2,) * 3), band_edges(16), normalise="some")


@pytest.mark.parametrize("size", [2, 3, (1, 32)])
def test_images_too_small_for_four_bands(size):
    with pytest.raises(LrscanError, match="no frequency in the"):
        band_edges(size)


@pytest.mark.parametrize("low_mid", [1, 25, 9.5, True, "9"])
def test_bad_low_mid_boundary(low_mid):
    with pytest.raises(LrscanError, match="low/mid band boundary"):
        band_edges(32, low_mid=low_mid)


def test_low_mid_boundary_that_empties_a_band_at_this_size():
    with pytest.raises(LrscanError, match="no frequency in the low band"):
        band_edges(4, low_mid=4)  # 4×4 radii are multiples of 8: [1, 4) holds none


def test_edges_that_do_not_cover_the_spectrum():
    with pytest.raises(LrscanError, match="end below the largest radius"):
        band_masks(32, 32, (0, 1, 9, 25, 30))
    with pytest.raises(LrscanError, match="must increase from 0"):
        band_masks(32, 32, (0, 9, 1, 25, 33))

"""Tests for the study's RandAugment: every operation against PIL, the policy's draws, batching."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageEnhance, ImageOps
from torch.overrides import TorchFunctionMode

from lrscan.data.images import MEAN, STD, rand_augment_normalised
from lrscan.data.randaugment import CUTOUT_FILL, OPS, SIGNED, Draws, apply, draw, op_value, rand_augment

MAGNITUDE = 14
TRANSLATIONS = ("TranslateXabs", "TranslateYabs")


# --- PIL, as the study's randomaug.py uses it ------------------------------------------------


def solarize_add(image, v):
    # The study adds v to every pixel, clips, truncates to 8 bits, then solarizes at 128.
    added = np.clip(np.asarray(image, dtype=np.float64) + v, 0, 255).astype(np.uint8)
    return ImageOps.solarize(Image.fromarray(added), 128)


def cutout(image, v, centre):
    w, h = image.size
    x0, y0 = int(max(0, centre[0] - v / 2)), int(max(0, centre[1] - v / 2))
    out = image.copy()
    ImageDraw.Draw(out).rectangle((x0, y0, min(w, x0 + v), min(h, y0 + v)), CUTOUT_FILL)
    return out


def affine(image, data):
    return image.transform(image.size, Image.Transform.AFFINE, data)


PIL_OPS = {
    "AutoContrast": lambda im, v, c: ImageOps.autocontrast(im),
    "Equalize": lambda im, v, c: ImageOps.equalize(im),
    "Invert": lambda im, v, c: ImageOps.invert(im),
    "Rotate": lambda im, v, c: im.rotate(v),
    "Posterize": lambda im, v, c: ImageOps.posterize(im, max(1, int(v))),
    "Solarize": lambda im, v, c: ImageOps.solarize(im, v),
    "SolarizeAdd": lambda im, v, c: solarize_add(im, v),
    "Color": lambda im, v, c: ImageEnhance.Color(im).enhance(v),
    "Contrast": lambda im, v, c: ImageEnhance.Contrast(im).enhance(v),
    "Brightness": lambda im, v, c: ImageEnhance.Brightness(im).enhance(v),
    "Sharpness": lambda im, v, c: ImageEnhance.Sharpness(im).enhance(v),
    "ShearX": lambda im, v, c: affine(im, (1, v, 0, 0, 1, 0)),
    "ShearY": lambda im, v, c: affine(im, (1, 0, 0, v, 1, 0)),
    "CutoutAbs": lambda im, v, c: cutout(im, v, c),
    "TranslateXabs": lambda im, v, c: affine(im, (1, 0, v, 0, 1, 0)),
    "TranslateYabs": lambda im, v, c: affine(im, (1, 0, 0, 0, 1, v)),
}


def pil(images, op, magnitude, negate, centre):
    """``op`` through PIL on each image (uint8 (B, 3, H, W)), with the given signs and centres."""
    out = []
    for image, flip, where in zip(images, negate.tolist(), centre.tolist()):
        v = op_value(op, magnitude) * (-1 if flip and op in SIGNED else 1)
        result = PIL_OPS[op](Image.fromarray(image.permute(1, 2, 0).numpy()), v, where)
        out.append(torch.from_numpy(np.array(result)).permute(2, 0, 1))
    return torch.stack(out)


def sample_images():
    """Random 32×32 images, plus the cases the histogram ops treat apart: a narrow range of
    values, a few values, constant channels, and smooth gradients."""
    g = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, (64, 3, 32, 32), generator=g)
    narrow = 100 + torch.randint(0, 40, (48, 3, 32, 32), generator=g)
    few = 20 + 50 * torch.randint(0, 3, (32, 3, 32, 32), generator=g)
    constant = torch.randint(0, 256, (8, 3, 1, 1), generator=g).expand(8, 3, 32, 32)
    ramp = torch.arange(32)
    gradient = (ramp[:, None] * torch.randint(1, 5, (24, 3, 1, 1), generator=g) + ramp).clamp(max=255)
    return torch.cat([noise, narrow, few, constant, gradient]).to(torch.uint8)


def assert_pixels_equal(actual, expected, op):
    differ = actual != expected
    images = differ.flatten(1).any(1).nonzero().flatten().tolist()
    assert not images, f"{op}: {differ.float().mean():.2e} of the pixels differ from PIL's, in images {images[:10]}"


# --- each operation is PIL's ------------------------------------------------------------------


# Every op, the geometric ones and Sharpness included, agrees with PIL on every pixel: the
# affine maps reproduce PIL's own arithmetic (16.16 fixed point for rotations and shears,
# floating point for translations), which a plain floating-point map would not — it takes
# the neighbouring pixel in about 0.1% of the pixels of a rotation, where a point falls on a
# pixel edge. Sharpness's smoothing rounds S/13 for an integer S, never a tie.
@pytest.mark.parametrize("magnitude", [MAGNITUDE, 0, 9, 30])
@pytest.mark.parametrize("op", OPS)
def test_op_is_pils(op, magnitude):
    images = sample_images()
    n = len(images)
    g = torch.Generator().manual_seed(1)
    negate = torch.arange(n) % 2 == 1  # both signs of the signed ops
    centre = torch.rand(n, 2, generator=g, dtype=torch.float64) * 32
    draws = Draws(torch.full((1, n), OPS.index(op)), negate[None], centre[None])
    assert_pixels_equal(apply(images, draws, magnitude), pil(images, op, magnitude, negate, centre), op)


def test_values_at_magnitude_14():
    expected = {
        "Rotate": 14.0, "Posterize": 28 / 15, "Solarize": 256 * 14 / 30, "SolarizeAdd": 110 * 14 / 30,
        "Color": 0.94, "Contrast": 0.94, "Brightness": 0.94, "Sharpness": 0.94, "ShearX": 0.14, "ShearY": 0.14,
        "CutoutAbs": 40 * 14 / 30, "TranslateXabs": 100 * 14 / 30, "TranslateYabs": 100 * 14 / 30,
    }
    for op, value in expected.items():
        assert op_value(op, MAGNITUDE) == pytest.approx(value, abs=1e-12), op
    assert op_value("TranslateXabs", MAGNITUDE) == pytest.approx(46.67, abs=0.01)


@pytest.mark.parametrize("op", TRANSLATIONS)
def test_translations_at_magnitude_14_leave_a_32_pixel_image_blank(op):
    images = sample_images()
    n = len(images)
    for negate in (torch.zeros(1, n, dtype=torch.bool), torch.ones(1, n, dtype=torch.bool)):
        draws = Draws(torch.full((1, n), OPS.index(op)), negate, torch.zeros(1, n, 2, dtype=torch.float64))
        assert apply(images, draws, MAGNITUDE).eq(0).all()
        # At magnitude 9 the shift is 30 px: two rows or columns of the image remain.
        assert apply(images, draws, 9).flatten(1).amax(1).gt(0).any()


def test_posterize_keeps_one_bit_and_solarize_add_adds_51():
    x = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16).expand(1, 3, 16, 16).contiguous()

    def one(op):
        return apply(x, Draws(torch.tensor([[OPS.index(op)]]), torch.zeros(1, 1, dtype=torch.bool),
                              torch.zeros(1, 1, 2, dtype=torch.float64)), MAGNITUDE)[0, 0].flatten()

    levels = torch.arange(256)
    assert torch.equal(one("Posterize").long(), levels & 0x80)
    added = (levels + 51).clamp(max=255)
    assert torch.equal(one("SolarizeAdd").long(), torch.where(added < 128, added, 255 - added))


# --- the policy's draws -----------------------------------------------------------------------


def test_ops_are_drawn_uniformly_with_replacement():
    n = 16_000
    draws = draw(n, (32, 32), torch.Generator().manual_seed(0))
    counts = torch.bincount(draws.op.flatten(), minlength=len(OPS)).double()
    expected = 2 * n / len(OPS)
    # Pearson's chi-square over the 16 ops (15 degrees of freedom: 37.7 at p = 0.001) ...
    assert float(((counts - expected) ** 2 / expected).sum()) < 37.7
    # ... and over the 256 pairs of the two slots, which are independent (255 dof: 330.5 at p = 0.001).
    pairs = torch.bincount(draws.op[0] * len(OPS) + draws.op[1], minlength=len(OPS) ** 2).double()
    assert float(((pairs - n / 256) ** 2 / (n / 256)).sum()) < 330.5
    # With replacement, both slots draw the same op for 1/16 of the images (none without).
    same = float((draws.op[0] == draws.op[1]).double().mean())
    assert abs(same - 1 / 16) < 4 * (1 / 16 * 15 / 16 / n) ** 0.5
    assert abs(float(draws.negate.double().mean()) - 0.5) < 0.01
    centre = draws.centre.reshape(-1, 2)
    assert float(centre.min()) >= 0 and float(centre.max()) < 32
    assert abs(float(centre.mean()) - 16) < 0.2


def test_same_generator_state_same_batch():
    x = sample_images()
    a = rand_augment(x, torch.Generator().manual_seed(3))
    b = rand_augment(x, torch.Generator().manual_seed(3))
    c = rand_augment(x, torch.Generator().manual_seed(4))
    assert a.shape == x.shape and a.dtype == torch.uint8
    assert torch.equal(a, b) and not torch.equal(a, c)
    g = torch.Generator().manual_seed(3)
    assert torch.equal(rand_augment(x, g), a) and not torch.equal(rand_augment(x, g), a)  # the generator advanced


def test_float_pixels_give_the_uint8_result_in_their_dtype():
    x = sample_images()
    as_float = rand_augment(x.float(), torch.Generator().manual_seed(5))
    assert as_float.dtype == torch.float32
    assert torch.equal(as_float, rand_augment(x, torch.Generator().manual_seed(5)).float())


def test_a_draw_applies_each_slot_in_turn():
    x = sample_images()[:16]
    draws = draw(len(x), (32, 32), torch.Generator().manual_seed(6))
    first = apply(x, Draws(draws.op[:1], draws.negate[:1], draws.centre[:1]))
    second = apply(first, Draws(draws.op[1:], draws.negate[1:], draws.centre[1:]))
    assert torch.equal(apply(x, draws), second)


def test_normalised_inputs_are_augmented_as_8_bit_pixels():
    x = sample_images()[:64]
    mean, std = (torch.tensor(v)[:, None, None] for v in (MEAN, STD))
    inputs = (x.float() / 255 - mean) / std
    out = rand_augment_normalised(inputs, torch.Generator().manual_seed(7), (MEAN, STD))
    expected = rand_augment(x, torch.Generator().manual_seed(7)).float() / 255
    torch.testing.assert_close(out * std + mean, expected, rtol=0, atol=1e-5)


def test_rgb_batches_only():
    with pytest.raises(ValueError, match=r"RGB images \(B, 3, H, W\), got shape \(3, 32, 32\)"):
        rand_augment(torch.zeros(3, 32, 32, dtype=torch.uint8), torch.Generator())


# --- whole batches --------------------------------------------------------------------------


class CountTorchCalls(TorchFunctionMode):
    """Counts the torch functions and tensor methods called inside it."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        return func(*args, **(kwargs or {}))


def test_a_batch_takes_the_same_tensor_ops_however_many_images():
    # No loop over images: 512 images run the very ops of 8 (on 2 CPU cores about 0.1 s).
    def calls(n):
        x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        rand_augment(x, torch.Generator().manual_seed(0))  # the constant tables, cached
        with CountTorchCalls() as counter:
            rand_augment(x, torch.Generator().manual_seed(0))
        return counter.calls

    assert calls(512) == calls(8) > 0


def test_share_of_blank_images_is_the_policys():
    n = 8192
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    flat = rand_augment(x, torch.Generator().manual_seed(2)).flatten(1)
    uniform = float((flat.amax(1) == flat.amin(1)).double().mean())
    black = float((flat.amax(1) == 0).double().mean())
    # A translation by 46.7 px leaves a 32-px image black, and what follows keeps it uniform
    # unless it is a cutout: 1 - (14/16)² that draw a translation, less (2/16)(1/16) cut out
    # after one. It stays black unless Invert, SolarizeAdd or CutoutAbs follow the translation.
    expected_uniform = 1 - (14 / 16) ** 2 - (2 / 16) * (1 / 16)
    expected_black = 2 / 16 + (2 / 16) * (11 / 16)
    assert expected_uniform == pytest.approx(29 / 128) and expected_black == pytest.approx(27 / 128)
    for share, expected in ((uniform, expected_uniform), (black, expected_black)):
        assert abs(share - expected) < 4 * (expected * (1 - expected) / n) ** 0.5, (share, expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_gives_the_cpu_result_without_host_syncs():
    x = sample_images()
    draws = draw(len(x), (32, 32), torch.Generator().manual_seed(8))
    expected = apply(x, draws)
    device = torch.device("cuda")
    pixels, on_device = x.to(device), draws.to(device)
    apply(pixels, on_device)  # builds the cached tables
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = apply(pixels, on_device)
        generated = rand_augment(pixels, torch.Generator(device).manual_seed(0))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.equal(out.cpu(), expected) and generated.device.type == "cuda"

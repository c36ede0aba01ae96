"""The study's RandAugment policy, applied to a whole batch of 8-bit images on its device.

The policy is the one the study trained its ViTs with (the common PIL-based RandAugment its
``randomaug.py`` carries): each image gets ``n_ops`` operations drawn uniformly, with
replacement, from the 16 of :data:`OPS`; each operation runs at the value
``magnitude / 30 * (max - min) + min`` of its range in :data:`RANGES`, and those in
:data:`SIGNED` flip the sign of that value with probability ½. Each operation reproduces
its PIL counterpart (``ImageOps``, ``ImageEnhance``, ``Image.rotate`` / ``Image.transform``
with nearest-neighbour sampling and black fill, ``ImageDraw.rectangle`` for the cutout) on
8-bit pixel values.

Every random choice is drawn from one ``torch.Generator`` and every operation is a tensor
operation over the whole batch: the operations a slot can apply are folded into per-image
parameters (a lookup table for the point operations, a blend for the enhancements, an
affine map for the geometric ones, a box for the cutout), each identity for the images that
drew another operation, so there is no loop over images and no host round trip.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["OPS", "RANGES", "SIGNED", "CUTOUT_FILL", "Draws", "op_value", "draw", "apply", "rand_augment"]

OPS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color",
    "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "CutoutAbs", "TranslateXabs", "TranslateYabs",
)
# (min, max) of each operation's value; the ops without a value (AutoContrast, Equalize, Invert) have (0, 1).
RANGES = {
    "AutoContrast": (0, 1), "Equalize": (0, 1), "Invert": (0, 1), "Rotate": (0, 30), "Posterize": (0, 4),
    "Solarize": (0, 256), "SolarizeAdd": (0, 110), "Color": (0.1, 1.9), "Contrast": (0.1, 1.9),
    "Brightness": (0.1, 1.9), "Sharpness": (0.1, 1.9), "ShearX": (0.0, 0.3), "ShearY": (0.0, 0.3),
    "CutoutAbs": (0, 40), "TranslateXabs": (0.0, 100), "TranslateYabs": (0.0, 100),
}
SIGNED = frozenset({"Rotate", "ShearX", "ShearY", "TranslateXabs", "TranslateYabs"})
CUTOUT_FILL = (125, 123, 114)
MAX_MAGNITUDE = 30
SOLARIZE_ADD_THRESHOLD = 128

_INDEX = {name: i for i, name in enumerate(OPS)}
_ENHANCE = ("Color", "Contrast", "Brightness", "Sharpness")
_IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def op_value(op: str, magnitude: float) -> float:
    """The value operation ``op`` runs at, before any sign flip.

    Parameters
    ----------
    op
        A name of :data:`OPS`.
    magnitude
        RandAugment's magnitude, on the scale 0..30.

    Returns
    -------
    float
        ``magnitude / 30 * (max - min) + min`` of the op's range, in the study's order of
        evaluation (so the same float).
    """
    low, high = RANGES[op]
    return float(magnitude) / MAX_MAGNITUDE * float(high - low) + low


@dataclass(frozen=True)
class Draws:
    """The random choices of one RandAugment call on a batch, one row per op slot.

    Attributes
    ----------
    op
        (n_ops, B) int64 indices into :data:`OPS`.
    negate
        (n_ops, B) bool: whether a signed op runs at minus its value.
    centre
        (n_ops, B, 2) float64 ``(x, y)`` of the cutout's centre in pixels, uniform in
        [0, W) × [0, H) (used only where the slot drew ``CutoutAbs``).
    """

    op: Tensor
    negate: Tensor
    centre: Tensor

    def to(self, device: torch.device) -> Draws:
        """The same draws on ``device``."""
        return Draws(self.op.to(device), self.negate.to(device), self.centre.to(device))


def draw(n_images: int, size: tuple[int, int], generator: torch.Generator, n_ops: int = 2) -> Draws:
    """Draw the choices of RandAugment for ``n_images`` images of ``size = (H, W)``.

    Parameters
    ----------
    n_images
        Batch size B.
    size
        ``(H, W)`` of the images, the range of the cutout centres.
    generator
        Source of every draw; the draws live on its device.
    n_ops
        Operations per image.

    Returns
    -------
    Draws
    """
    height, width = size
    shape, device = (n_ops, n_images), generator.device
    op = torch.randint(0, len(OPS), shape, generator=generator, device=device)
    negate = torch.rand(shape, generator=generator, device=device) < 0.5
    unit = torch.rand((*shape, 2), generator=generator, device=device, dtype=torch.float64)
    centre = torch.stack([unit[..., 0] * width, unit[..., 1] * height], dim=-1)
    return Draws(op, negate, centre)


def rand_augment(pixels: Tensor, generator: torch.Generator, n_ops: int = 2, magnitude: float = 14) -> Tensor:
    """RandAugment(``n_ops``, ``magnitude``) of the study on a batch, drawn from ``generator``.

    Parameters
    ----------
    pixels
        Images (B, 3, H, W): uint8, or a float dtype holding integers 0..255.
    generator
        Source of every random choice (:func:`draw`); the same state gives the same batch.
    n_ops
        Operations per image, drawn with replacement.
    magnitude
        Strength on the scale 0..30 (14 in the study).

    Returns
    -------
    Tensor
        The augmented images, with the dtype and device of ``pixels``.
    """
    draws = draw(len(pixels), pixels.shape[-2:], generator, n_ops)
    return apply(pixels, draws.to(pixels.device), magnitude)


def apply(pixels: Tensor, draws: Draws, magnitude: float = 14) -> Tensor:
    """Apply the drawn operations to a batch, slot after slot.

    Parameters
    ----------
    pixels
        Images (B, 3, H, W): uint8, or a float dtype holding integers 0..255.
    draws
        The choices for these images (:func:`draw`), on the device of ``pixels``.
    magnitude
        Strength on the scale 0..30.

    Returns
    -------
    Tensor
        The augmented images, with the dtype and device of ``pixels``.
    """
    if pixels.ndim != 4 or pixels.shape[1] != 3:
        raise ValueError(f"RandAugment takes RGB images (B, 3, H, W), got shape {tuple(pixels.shape)}")
    x = pixels if pixels.dtype == torch.uint8 else pixels.round().to(torch.uint8)
    tables = _tables(float(magnitude), *x.shape[-2:], x.device)
    # Each image draws one op per slot, and every stage is the identity for images that drew
    # another op, so one pass through all stages applies the slot.
    for op, negate, centre in zip(draws.op, draws.negate, draws.centre):
        x = _point(x, op, tables)
        x = _enhance(x, op, tables)
        x = _warp(x, tables.matrix[op, negate.long()])
        x = _cutout(x, op == _INDEX["CutoutAbs"], centre, tables)
    return x.to(pixels.dtype)


@dataclass(frozen=True)
class _Tables:
    """Per-op constants of one magnitude and image size, on one device."""

    lut: Tensor  # (16, 256) uint8: the point op's table, identity for ops that are not constant tables
    factor: Tensor  # (16,) float32: the enhancement factor (1 for ops that are not enhancements)
    matrix: Tensor  # (16, 2, 6) float64: PIL's affine coefficients, [op, negate]; identity for non-affine ops
    cutout: float  # side of the cutout square in pixels
    fill: Tensor  # (3, 1, 1) uint8
    stretch: Tensor  # (256,) float64: 255.0 / k, AutoContrast's scale of a channel spanning k levels


def _rotation(angle: float, width: int, height: int) -> tuple[float, ...]:
    """PIL's inverse affine map of ``Image.rotate(angle)`` about the image centre (same floats)."""
    radians = -math.radians(angle)
    a, b = round(math.cos(radians), 15), round(math.sin(radians), 15)
    d, e = round(-math.sin(radians), 15), round(math.cos(radians), 15)
    cx, cy = width / 2, height / 2
    return a, b, a * -cx + b * -cy + cx, d, e, d * -cx + e * -cy + cy


def _affine(op: str, v: float, width: int, height: int) -> tuple[float, ...]:
    """PIL's ``Image.transform(AFFINE, data)`` coefficients of a geometric op at value v."""
    if op == "Rotate":
        return _rotation(v, width, height)
    return {
        "ShearX": (1.0, v, 0.0, 0.0, 1.0, 0.0), "ShearY": (1.0, 0.0, 0.0, v, 1.0, 0.0),
        "TranslateXabs": (1.0, 0.0, v, 0.0, 1.0, 0.0), "TranslateYabs": (1.0, 0.0, 0.0, 0.0, 1.0, v),
    }.get(op, _IDENTITY)


def _constant_lut(op: str, v: float) -> list[int]:
    """The lookup table of a point op that does not depend on the image (identity for others)."""
    if op == "Invert":
        return [255 - i for i in range(256)]
    if op == "Posterize":
        keep = ~(2 ** (8 - max(1, int(v))) - 1)
        return [i & keep for i in range(256)]
    if op == "Solarize":
        return [i if i < v else 255 - i for i in range(256)]
    if op == "SolarizeAdd":
        # The study adds v to every pixel, clips to 0..255 and truncates to 8 bits, then
        # solarizes at 128 (not timm's variant, which adds only below the threshold).
        added = (int(min(max(i + v, 0), 255)) for i in range(256))
        return [p if p < SOLARIZE_ADD_THRESHOLD else 255 - p for p in added]
    return list(range(256))


@functools.lru_cache(maxsize=32)
def _tables(magnitude: float, height: int, width: int, device: torch.device) -> _Tables:
    # Cached per device so that a training step copies no constants from the host.
    values = {op: op_value(op, magnitude) for op in OPS}
    return _Tables(
        lut=torch.tensor([_constant_lut(op, values[op]) for op in OPS], dtype=torch.uint8, device=device),
        factor=torch.tensor([values[op] if op in _ENHANCE else 1.0 for op in OPS], dtype=torch.float32,
                            device=device),
        matrix=torch.tensor([[_affine(op, sign * values[op], width, height) for sign in (1, -1)] for op in OPS],
                            dtype=torch.float64, device=device),
        cutout=values["CutoutAbs"],
        fill=torch.tensor(CUTOUT_FILL, dtype=torch.uint8, device=device)[:, None, None],
        # Divided by Python, as PIL does: torch divides a number by a tensor through a reciprocal.
        stretch=torch.tensor([255.0 / max(k, 1) for k in range(256)], dtype=torch.float64, device=device),
    )


def _chosen(op: Tensor, name: str) -> Tensor:
    """(B, 1, 1, 1) mask of the images whose slot drew ``name``."""
    return (op == _INDEX[name])[:, None, None, None]


def _point(x: Tensor, op: Tensor, tables: _Tables) -> Tensor:
    """Point ops: one 256-entry table per image and channel, gathered once."""
    b, c = x.shape[:2]
    flat = x.reshape(b, c, -1).long()
    low, high = torch.aminmax(flat, dim=-1, keepdim=True)
    lut = tables.lut[op][:, None, :].expand(b, c, 256)
    lut = torch.where(_chosen(op, "AutoContrast")[..., 0], _autocontrast_lut(low, high, tables), lut)
    lut = torch.where(_chosen(op, "Equalize")[..., 0], _equalize_lut(flat, high), lut)
    return lut.gather(2, flat).view_as(x)


def _autocontrast_lut(low: Tensor, high: Tensor, tables: _Tables) -> Tensor:
    """``ImageOps.autocontrast``'s table per channel: its lowest value to 0, its highest to 255."""
    levels = torch.arange(256, device=low.device)
    # float64 with PIL's operations in PIL's order, so that int() truncates the same floats
    # (93 * (255 / 93) is 254.99999999999997: the top level of such a channel becomes 254).
    scale = tables.stretch[high - low]
    offset = -low.double() * scale
    stretched = (levels.double() * scale + offset).trunc().clamp(0, 255).to(torch.uint8)
    return torch.where(high > low, stretched, levels.to(torch.uint8))


def _equalize_lut(flat: Tensor, high: Tensor) -> Tensor:
    """``ImageOps.equalize``'s table per channel, from its histogram (integer arithmetic as PIL's)."""
    histogram = torch.zeros(*flat.shape[:2], 256, dtype=torch.long, device=flat.device)
    histogram.scatter_add_(2, flat, torch.ones_like(flat))
    levels = torch.arange(256, device=flat.device)
    step = (flat.shape[-1] - histogram.gather(2, high)) // 255
    # PIL leaves a channel alone when it holds one value or too few pixels below its top value.
    keep = ((histogram > 0).sum(-1, keepdim=True) <= 1) | (step == 0)
    step = step.clamp(min=1)
    equalised = (step // 2 + histogram.cumsum(-1) - histogram) // step
    return torch.where(keep, levels, equalised.clamp(max=255)).to(torch.uint8)


# The degenerate images below are computed in int32, with elementwise ops only: a GPU may
# run convolutions in TF32, and divides floats by a number through its reciprocal.


def _luma(pixels: Tensor) -> Tensor:
    """PIL's RGB → L conversion (ITU-R 601-2 in 16-bit fixed point), (B, 1, H, W)."""
    r, g, b = pixels.split(1, dim=1)
    return (r * 19595).add_(g * 38470).add_(b * 7471).add_(0x8000) >> 16


def _smooth(pixels: Tensor) -> Tensor:
    """PIL's ``ImageFilter.SMOOTH`` (3×3, centre weight 5, sum 13) with its border kept as is."""
    rows = pixels[..., :-2, :] + pixels[..., 1:-1, :] + pixels[..., 2:, :]
    window = rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:]  # the 3×3 sums of the inner pixels
    # The weighted sum S is an integer and S/13 is never halfway between integers, so rounding
    # S/13 is exactly PIL's float filter (which adds 0.5 and truncates).
    inner = window.add_(pixels[..., 1:-1, 1:-1] * 4).add_(6) // 13
    smooth = pixels.clone()
    smooth[..., 1:-1, 1:-1] = inner
    return smooth


def _enhance(x: Tensor, op: Tensor, tables: _Tables) -> Tensor:
    """``ImageEnhance``: ``Image.blend(degenerate, image, factor)`` with each op's degenerate image."""
    pixels = x.int()
    luma = _luma(pixels)
    # ImageStat's mean of the L image, int(mean + 0.5) as ImageEnhance.Contrast rounds it, in
    # integers: floor((2 sum + n) / 2n).
    n = luma[0].numel()
    mean = (2 * luma.sum((-2, -1), keepdim=True, dtype=torch.long) + n) // (2 * n)
    flat = torch.where(_chosen(op, "Color"), luma, torch.where(_chosen(op, "Contrast"), mean, 0))  # Brightness: 0
    degenerate = torch.where(_chosen(op, "Sharpness"), _smooth(pixels), flat).float()
    factor = tables.factor[op][:, None, None, None]
    # float32 in PIL's order (in1 + alpha * (in2 - in1)), then clipped and truncated as PIL's blend.
    blended = pixels.float().sub_(degenerate).mul_(factor).add_(degenerate).clamp_(0, 255).trunc_().to(torch.uint8)
    enhanced = functools.reduce(torch.logical_or, (_chosen(op, name) for name in _ENHANCE))
    return torch.where(enhanced, blended, x)


def _warp(x: Tensor, matrix: Tensor) -> Tensor:
    """PIL's nearest-neighbour ``Image.transform(AFFINE)`` with black fill.

    ``matrix`` (B, 6) holds PIL's coefficients ``(a, b, c, d, e, f)``, which map an output
    pixel centre ``(x, y)`` to the input point ``(a x + b y + c, d x + e y + f)``; the input
    pixel holding that point is taken.
    """
    b, c, h, w = x.shape
    a, s, t, d, e, f = (m[:, None, None] for m in matrix.unbind(1))

    def fixed(v: Tensor) -> Tensor:
        return (v * 65536.0 + 0.5).floor().long()

    # PIL maps rotations and shears in 16.16 fixed point: the first pixel's point rounded once,
    # then whole steps added. It maps translations (b = d = 0, and a = e = 1 here) in floating
    # point, whose first pixel is floor(point) and the others whole pixels on.
    translation = (s == 0) & (d == 0)
    start_x = torch.where(translation, (t + a * 0.5).floor().long() << 16, fixed(t + s * 0.5 + a * 0.5))
    start_y = torch.where(translation, (f + e * 0.5).floor().long() << 16, fixed(f + e * 0.5 + d * 0.5))
    cols = torch.arange(w, device=x.device)
    rows = torch.arange(h, device=x.device)[:, None]
    source_x = (start_x + cols * fixed(a) + rows * fixed(s)) >> 16
    source_y = (start_y + cols * fixed(d) + rows * fixed(e)) >> 16
    inside = (source_x >= 0) & (source_x < w) & (source_y >= 0) & (source_y < h)
    index = torch.where(inside, source_y * w + source_x, 0).reshape(b, 1, h * w).expand(b, c, h * w)
    out = x.reshape(b, c, h * w).gather(2, index).view_as(x)
    return torch.where(inside[:, None], out, 0)


def _cutout(x: Tensor, chosen: Tensor, centre: Tensor, tables: _Tables) -> Tensor:
    """The study's CutoutAbs: ``ImageDraw.rectangle`` from ``int(max(0, centre - v/2))`` to
    ``min(size, that + v)``, both ends included and truncated, filled with :data:`CUTOUT_FILL`."""
    h, w = x.shape[-2:]
    side = tables.cutout

    def span(centre: Tensor, size: int) -> Tensor:  # (B, size): the pixels the box covers on one axis
        start = (centre - side / 2).clamp(min=0).floor()[:, None]
        end = (start + side).clamp(max=size).floor()
        cells = torch.arange(size, device=x.device)
        return (cells >= start) & (cells <= end)

    in_x, in_y = span(centre[:, 0], w), span(centre[:, 1], h)
    box = chosen[:, None, None, None] & in_y[:, None, :, None] & in_x[:, None, None, :]
    return torch.where(box, tables.fill, x)

"""The scale-invariant four-layer ConvNet of the study (SPEC §2), registered as ``convnetsi``.

conv(C→w) BN ReLU; conv(w→2w) BN ReLU maxpool 2; conv(2w→4w) BN ReLU maxpool 2;
conv(4w→8w) BN ReLU maxpool 2; then a max pool to 1×1 and a Linear(8w, classes) with bias,
frozen at init with its weight rescaled to Frobenius norm ``head_norm``. Convolutions are
3×3, padding 1, bias-free; BatchNorm has no affine parameters, so the logits do not change
when all convolution weights are scaled together: the SI group is every convolution weight.

The study's final "maxpool 4" on 4×4 maps is an adaptive max pool to 1×1 here: the same at
32×32 inputs, and still one value per channel for the smaller images the tests use (inputs
need at least 8×8 pixels).

At w = 32 on CIFAR-10: 387,936 SI weights, 2,570 frozen head parameters, 390,506 in all.
At w = 128 on CIFAR-100: 6,196,608 SI weights, 102,500 frozen, 6,299,108 in all.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lrscan.errors import LrscanError
from lrscan.models.entry import ModelEntry
from lrscan.options import integer, number


class SIConvNet(nn.Module):
    """Four conv → BN → ReLU layers (max-pooled after the last three) and a frozen head."""

    def __init__(self, in_channels: int, n_classes: int, width: int, head_norm: float):
        super().__init__()
        channels = [in_channels, width, 2 * width, 4 * width, 8 * width]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1, bias=False) for a, b in zip(channels, channels[1:]))
        self.bns = nn.ModuleList(nn.BatchNorm2d(c, affine=False) for c in channels[1:])
        self.head = nn.Linear(channels[-1], n_classes)
        with torch.no_grad():
            self.head.weight.mul_(head_norm / self.head.weight.norm())
        self.head.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            x = F.relu(bn(conv(x)))
            if i > 0:
                x = F.max_pool2d(x, 2)
        return self.head(F.adaptive_max_pool2d(x, 1).flatten(1))


def build(options: Mapping[str, Any], input_shape: tuple[int, ...], n_classes: int) -> SIConvNet:
    if len(input_shape) != 3:
        raise LrscanError(f"model 'convnetsi' needs images (channels, height, width), "
                          f"the dataset gives shape {input_shape}")
    if min(input_shape[1:]) < 8:
        raise LrscanError(f"model 'convnetsi' needs images of at least 8×8 pixels (three 2× max pools), "
                          f"the dataset gives {input_shape[1]}×{input_shape[2]}")
    return SIConvNet(input_shape[0], n_classes, options["width"], options["head_norm"])


def radius(options: Mapping[str, Any]) -> float:
    """Expected norm of the default init of the four convolution weights taken together.

    PyTorch draws a conv weight from U(±1/√fan_in), so E‖W‖² = out_channels / 3; the
    convolutions have 15w output channels in all. At w = 32 this is √160 ≈ 12.6, the
    study's ρ = 12 (at w = 128 it is √640 ≈ 25.3).
    """
    return math.sqrt(15 * options["width"] / 3)


def validate(options: dict[str, Any]) -> dict[str, Any]:
    options["width"] = integer("[model] width", options["width"], minimum=1)
    options["head_norm"] = number("[model] head_norm", options["head_norm"], positive=True)
    return options


def official_name(name: str, options: Mapping[str, Any]) -> str:
    """The study's name of a tensor (``nets/convnet_si.py``, ``ConvNetDepth`` with
    ``max_depth=3``): its ``conv_layers`` Sequential holds conv, BN, ReLU for the first layer
    and conv, BN, ReLU, max pool for each later one; ``linear_layers.2`` is the head."""
    kind, _, rest = name.partition(".")
    if kind == "head":
        return f"linear_layers.2.{rest}"
    i, _, tensor = rest.partition(".")
    conv = 0 if int(i) == 0 else 3 + 4 * (int(i) - 1)
    return f"conv_layers.{conv + (kind == 'bns')}.{tensor}"


ENTRY = ModelEntry(
    build=build,
    is_si=lambda name: name.startswith("convs."),
    radius=radius,
    defaults={"width": 32, "head_norm": 10.0},
    validate=validate,
    update="sphere",
    official=official_name,
)

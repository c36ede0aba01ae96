"""Pre-activation ResNet-18 (SPEC §2): the scale-invariant one of the study and the practical one.

``resnet18si`` — the SI ResNet-18 trained on a sphere. Blocks [2, 2, 2, 2] with widths
w, 2w, 4w, 8w after a 3×3 stem convolution; bias-free convolutions; BatchNorm without affine
parameters before every convolution of a block. A block computes ``a = relu(bn1(x))``, then
``conv2(relu(bn2(conv1(a))))`` plus the shortcut: the raw ``x`` where the block keeps the
shape, and BN → 1×1 conv with stride 2 applied to the *activated* ``a`` where it changes it
(as the study's ``PreActBlock`` does). Head BN → ReLU → global average pool → bias-free
Linear(8w, classes), frozen at init with Frobenius norm ``head_norm``. Every convolution
feeds a normalisation, so the logits do not change when all convolution weights are scaled
together: the SI group is every convolution weight. At w = 32 on CIFAR-10: 2,790,240 SI
weights, 2,560 frozen head weights, 2,792,800 in all (CIFAR-100: 25,600 frozen, 2,815,840).

``resnet18`` — the practical baseline: the same network at w = 64 with affine BatchNorm and
a trainable bias-free head (the study's ``resnet_si_af`` module), trained by ordinary SGD
(options ``momentum`` and ``weight_decay``). At w = 64: 11,173,056 parameters on CIFAR-10,
11,219,136 on CIFAR-100, all trainable.

Both take images (C, H, W) of any size; each of the three downsampling stages halves H and W
(rounding up), and the head averages over whatever is left. Tensor names map one to one to
the study's (:func:`official_name`), so its checkpoints load as they are.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from typing import Any, Mapping

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lrscan.errors import LrscanError
from lrscan.models.entry import ModelEntry
from lrscan.options import integer, number


def conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


class PreActBlock(nn.Module):
    """BN → ReLU → conv → BN → ReLU → conv, plus the input (or the BN → 1×1 conv projection of
    the activated input, where the block changes the shape)."""

    def __init__(self, c_in: int, c_out: int, stride: int, affine: bool):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in, affine=affine)
        self.conv1 = conv3x3(c_in, c_out, stride)
        self.bn2 = nn.BatchNorm2d(c_out, affine=affine)
        self.conv2 = conv3x3(c_out, c_out)
        self.shortcut = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(OrderedDict(
                bn=nn.BatchNorm2d(c_in, affine=affine),
                conv=nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
            ))

    def forward(self, x: Tensor) -> Tensor:
        activated = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(activated)
        return self.conv2(F.relu(self.bn2(self.conv1(activated)))) + shortcut


class PreActResNet18(nn.Module):
    """Pre-activation ResNet-18 for small images.

    Parameters
    ----------
    in_channels, n_classes
        Image channels and number of logits.
    width
        Channels of the first stage (the stages have w, 2w, 4w, 8w).
    affine
        Whether BatchNorm layers learn a scale and shift (``False`` for the SI network).
    head_norm
        ``None`` for an ordinary trainable head; otherwise the head is rescaled at init to
        this Frobenius norm and frozen. The head has no bias either way.
    """

    def __init__(self, in_channels: int, n_classes: int, width: int, *, affine: bool, head_norm: float | None):
        super().__init__()
        self.conv = conv3x3(in_channels, width)
        stages, c_in = [], width
        for i in range(4):
            c_out = width * 2**i
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(PreActBlock(c_in, c_out, stride, affine), PreActBlock(c_out, c_out, 1, affine)))
            c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(c_in, affine=affine)
        self.head = nn.Linear(c_in, n_classes, bias=False)
        if head_norm is not None:
            with torch.no_grad():
                self.head.weight.mul_(head_norm / self.head.weight.norm())
            self.head.weight.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stages(self.conv(x))
        return self.head(F.relu(self.bn(x)).mean((2, 3)))


def official_name(name: str, options: Mapping[str, Any]) -> str:
    """The study's name of a tensor (``nets/resnet_si.py`` and ``resnet_si_af.py``): the stem
    ``conv1``, stages ``layer1`` … ``layer4``, shortcut parts ``0`` (BN) and ``1`` (conv), the
    head ``linear``."""
    name = re.sub(r"^stages\.(\d)\.", lambda m: f"layer{int(m[1]) + 1}.", name)
    name = name.replace("shortcut.bn.", "shortcut.0.").replace("shortcut.conv.", "shortcut.1.")
    return re.sub(r"^(conv|head)\.", lambda m: {"conv": "conv1.", "head": "linear."}[m[1]], name)


def check_image_shape(name: str, input_shape: tuple[int, ...]) -> None:
    if len(input_shape) != 3:
        raise LrscanError(f"model {name!r} needs images (channels, height, width), "
                          f"the dataset gives shape {input_shape}")


def build_si(options: Mapping[str, Any], input_shape: tuple[int, ...], n_classes: int) -> PreActResNet18:
    check_image_shape("resnet18si", input_shape)
    return PreActResNet18(input_shape[0], n_classes, options["width"], affine=False, head_norm=options["head_norm"])


def build_practical(options: Mapping[str, Any], input_shape: tuple[int, ...], n_classes: int) -> PreActResNet18:
    check_image_shape("resnet18", input_shape)
    return PreActResNet18(input_shape[0], n_classes, options["width"], affine=True, head_norm=None)


def is_conv_weight(name: str) -> bool:
    """Whether a parameter name is a convolution weight (every conv module is named ``conv*``)."""
    module, _, kind = name.rpartition(".")
    return kind == "weight" and module.rpartition(".")[2].startswith("conv")


def si_radius(options: Mapping[str, Any]) -> float:
    """Expected norm of the default init of every convolution weight taken together.

    PyTorch draws a conv weight from U(±1/√fan_in), so E‖W‖² = numel / (3·fan_in) =
    out_channels / 3 whatever the kernel. The convolutions have 75w output channels in all:
    the stem w, stage 1 four convs of w, stages 2–4 five convs (with the shortcut) of 2w, 4w,
    8w. At w = 32 this is √800 ≈ 28.3, the study's ρ = 28.
    """
    return math.sqrt(75 * options["width"] / 3)


def validate_si(options: dict[str, Any]) -> dict[str, Any]:
    options["width"] = integer("[model] width", options["width"], minimum=1)
    options["head_norm"] = number("[model] head_norm", options["head_norm"], positive=True)
    return options


def validate_practical(options: dict[str, Any]) -> dict[str, Any]:
    options["width"] = integer("[model] width", options["width"], minimum=1)
    options["momentum"] = number("[model] momentum", options["momentum"], positive=False)
    if options["momentum"] >= 1:
        raise LrscanError(f"[model] momentum must be below 1, got {options['momentum']:g}")
    options["weight_decay"] = number("[model] weight_decay", options["weight_decay"], positive=False)
    return options


SI_ENTRY = ModelEntry(
    build=build_si,
    is_si=is_conv_weight,
    radius=si_radius,
    defaults={"width": 32, "head_norm": 10.0},
    validate=validate_si,
    update="sphere",
    official=official_name,
)

ENTRY = ModelEntry(
    build=build_practical,
    is_si=lambda name: False,
    radius=lambda options: None,
    defaults={"width": 64, "momentum": 0.9, "weight_decay": 5e-4},
    validate=validate_practical,
    update="sgd",
    official=official_name,
)

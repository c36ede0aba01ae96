"""A small Vision Transformer for small images (SPEC §2), registered as ``vitsi`` and ``vit``.

The ViT of Lee et al., "Vision Transformer for Small-Size Datasets" (2021), as the study's
``vit_small_si`` builds it: patch 4, width 512, 6 pre-norm blocks of 8 heads × 64,
feed-forward width 512, dropout 0.1 (embedding, attention output, feed-forward), a class
token and position embedding drawn from N(0, 1), and a LayerNorm → Linear head on the class
token. Two changes from the plain ViT:

- *Shifted patch tokenization*: the image is concatenated along channels with four copies of
  itself shifted by one pixel along each axis (zero fill), cut into patches flattened as
  (row, column, channel), then LayerNorm-ed and linearly embedded.
- *Locality self-attention*: bias-free q/k/v, the softmax temperature is learned (its log
  initialised to log(dim_head^-1/2)), each token's attention to itself is masked out, and the
  attention weights have no dropout.

``vitsi`` (``si = true``, the study's ViT) follows each Linear of every feed-forward block
by an affine LayerNorm; ``vit`` (``si = false``) is the same network without those two
LayerNorms, a variant the study did not train. Every LayerNorm is affine. Tensor names map
one to one to the study's (:func:`official_name`), so its checkpoints load as they are.

At the defaults on 32×32 images ``vitsi`` has 9,634,800 parameters for CIFAR-10 and
9,680,970 for CIFAR-100 (the study's counts), ``vit`` 9,622,512 and 9,668,682; all trainable.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any, Mapping

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lrscan.errors import LrscanError
from lrscan.models.entry import ModelEntry
from lrscan.options import boolean, integer, number

# F.pad amounts (left, right, top, bottom); a negative amount crops, so each moves the image
# by one pixel: right, left, down, up.
SHIFTS = ((1, -1, 0, 0), (-1, 1, 0, 0), (0, 0, 1, -1), (0, 0, -1, 1))


def shifted(x: Tensor) -> Tensor:
    """Images (B, C, H, W) and their four one-pixel shifts along the axes, (B, 5C, H, W).

    Pixels shifted in from outside are zero.
    """
    return torch.cat([x, *(F.pad(x, shift) for shift in SHIFTS)], 1)


class ShiftedPatchTokens(nn.Module):
    """Patch embedding of an image and its four one-pixel shifts."""

    def __init__(self, in_channels: int, patch: int, dim: int):
        super().__init__()
        self.patch = patch
        patch_dim = 5 * in_channels * patch * patch
        self.norm = nn.LayerNorm(patch_dim)
        self.embed = nn.Linear(patch_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        p = self.patch
        x = shifted(x)
        b, c, h, w = x.shape
        patches = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)  # (b, h, w, p1, p2, c)
        return self.embed(self.norm(patches.reshape(b, (h // p) * (w // p), p * p * c)))


class LocalitySelfAttention(nn.Module):
    """Pre-norm multi-head self-attention with a learned temperature and no self-attention."""

    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * heads * dim_head, bias=False)
        # log(1 / temperature), so that the scores are multiplied by a positive learned factor.
        self.log_inverse_temperature = nn.Parameter(torch.tensor(float(dim_head)).log() / -2)
        self.out = nn.Linear(heads * dim_head, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-1, -2)) * self.log_inverse_temperature.exp()
        diagonal = torch.eye(n, dtype=torch.bool, device=x.device)
        attention = scores.masked_fill(diagonal, torch.finfo(scores.dtype).min).softmax(-1)
        return self.dropout(self.out((attention @ v).transpose(1, 2).reshape(b, n, -1)))


class FeedForward(nn.Module):
    """Pre-norm Linear → GELU → Linear, each Linear followed by a LayerNorm when ``si``.

    The layers sit at the study's positions in ``net`` (0 and 4 are the Linears, 1 and 5 the
    LayerNorms); without ``si`` the LayerNorms' places hold identities.
    """

    def __init__(self, dim: int, hidden: int, dropout: float, si: bool):
        super().__init__()
        norm = nn.LayerNorm if si else (lambda n: nn.Identity())
        self.norm = nn.LayerNorm(dim)
        self.net = nn.Sequential(
            nn.Linear(dim, hidden), norm(hidden), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(hidden, dim), norm(dim), nn.Dropout(dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.norm(x))


class ViT(nn.Module):
    """Class-token ViT with shifted patch tokens and locality self-attention.

    Parameters
    ----------
    input_shape
        (channels, height, width); height and width must be multiples of ``patch``.
    n_classes
        Number of logits.
    patch, dim, depth, heads, dim_head, mlp_dim, dropout, si
        The options of the ``vitsi`` / ``vit`` model entries.
    """

    def __init__(self, input_shape: tuple[int, int, int], n_classes: int, *, patch: int, dim: int, depth: int,
                 heads: int, dim_head: int, mlp_dim: int, dropout: float, si: bool):
        super().__init__()
        c, h, w = input_shape
        self.tokens = ShiftedPatchTokens(c, patch, dim)
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.position = nn.Parameter(torch.randn(1, (h // patch) * (w // patch) + 1, dim))
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            nn.ModuleList([LocalitySelfAttention(dim, heads, dim_head, dropout), FeedForward(dim, mlp_dim, dropout, si)])
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.tokens(x)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.position
        x = self.dropout(x)
        for attention, feed_forward in self.blocks:
            x = x + attention(x)
            x = x + feed_forward(x)
        return self.head(self.norm(x[:, 0]))


SHAPE_OPTIONS = ("patch", "dim", "depth", "heads", "dim_head", "mlp_dim")


def build(options: Mapping[str, Any], input_shape: tuple[int, ...], n_classes: int) -> ViT:
    if len(input_shape) != 3:
        raise LrscanError(f"a ViT needs images (channels, height, width), "
                          f"the dataset gives shape {input_shape}")
    patch = options["patch"]
    if input_shape[1] % patch or input_shape[2] % patch:
        raise LrscanError(f"a ViT needs images whose sides are multiples of the patch size {patch}, "
                          f"the dataset gives {input_shape[1]}×{input_shape[2]}")
    return ViT(input_shape, n_classes, **{key: options[key] for key in (*SHAPE_OPTIONS, "dropout", "si")})


def official_name(name: str, options: Mapping[str, Any]) -> str:
    """The study's name of a tensor (``vision_transformer/models/vit_small_si.py``)."""
    fixed = {"cls": "cls_token", "position": "pos_embedding"}
    if name in fixed:
        return fixed[name]
    rules = (
        (r"^tokens\.norm\.", "to_patch_embedding.to_patch_tokens.1."),
        (r"^tokens\.embed\.", "to_patch_embedding.to_patch_tokens.2."),
        (r"^blocks\.(\d+)\.(\d)\.norm\.", r"transformer.layers.\1.\2.norm."),
        (r"^blocks\.(\d+)\.0\.qkv\.", r"transformer.layers.\1.0.fn.to_qkv."),
        (r"^blocks\.(\d+)\.0\.log_inverse_temperature$", r"transformer.layers.\1.0.fn.temperature"),
        (r"^blocks\.(\d+)\.0\.out\.", r"transformer.layers.\1.0.fn.to_out.0."),
        (r"^blocks\.(\d+)\.1\.net\.", r"transformer.layers.\1.1.fn.net."),
        (r"^norm\.", "mlp_head.0."),
        (r"^head\.", "mlp_head.1."),
    )
    for pattern, replacement in rules:
        renamed, n = re.subn(pattern, replacement, name)
        if n:
            return renamed
    raise ValueError(f"no official name for ViT tensor {name!r}")


def validate(options: dict[str, Any]) -> dict[str, Any]:
    for key in SHAPE_OPTIONS:
        options[key] = integer(f"[model] {key}", options[key], minimum=1)
    options["dropout"] = number("[model] dropout", options["dropout"], positive=False)
    if options["dropout"] >= 1:
        raise LrscanError(f"[model] dropout must be below 1, got {options['dropout']:g}")
    options["si"] = boolean("[model] si", options["si"])
    options["weight_decay"] = number("[model] weight_decay", options["weight_decay"], positive=False)
    return options


ENTRY = ModelEntry(
    build=build,
    is_si=lambda name: False,
    radius=lambda options: None,
    defaults={"patch": 4, "dim": 512, "depth": 6, "heads": 8, "dim_head": 64, "mlp_dim": 512, "dropout": 0.1,
              "si": False, "weight_decay": 1e-4},
    validate=validate,
    update="adam",
    official=official_name,
)

# The study's ViT (vit_small_si): the same entry with LayerNorms in the feed-forward blocks.
SI_ENTRY = replace(ENTRY, defaults={**ENTRY.defaults, "si": True})

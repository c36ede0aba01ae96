"""A small Vision Transformer for small images (SPEC §2), registered as ``vit`` and ``vitsi``.

The ViT of Lee et al., "Vision Transformer for Small-Size Datasets" (2021), as the study uses
it on CIFAR: patch 4, width 512, 6 pre-norm blocks of 8 heads × 64, feed-forward width 512,
dropout 0.1, a class token with learned position embeddings and a LayerNorm → Linear head.
Two changes from the plain ViT:

- *Shifted patch tokenization*: the image is concatenated along channels with four copies of
  itself shifted by half a patch along the diagonals (zero fill), then cut into patches,
  each LayerNorm-ed and linearly embedded.
- *Locality self-attention*: the softmax temperature is learned (initialised to √dim_head,
  the usual scaling) and each token's attention to itself is masked out.

With ``si = true`` (the default of ``vitsi``) every Linear of every feed-forward block is
followed by a LayerNorm without affine parameters, which makes each of those layers
scale-invariant; the network is still trained with Adam, not on a sphere.

At the defaults on 32×32 images: 9,622,512 parameters for CIFAR-10 and 9,668,682 for CIFAR-100
(both variants: the added LayerNorms have none), all trainable.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Mapping

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lrscan.errors import LrscanError
from lrscan.models import ModelEntry
from lrscan.spec import integer, number


def diagonal_shifts(x: Tensor, shift: int) -> Tensor:
    """Images (B, C, H, W) and their four diagonal shifts by ``shift`` pixels, (B, 5C, H, W).

    Pixels shifted in from outside are zero.
    """
    # F.pad with a negative amount crops: (s, -s, s, -s) moves the image right and down by s.
    moves = ((1, 1), (1, -1), (-1, 1), (-1, -1))
    return torch.cat([x, *(F.pad(x, (a * shift, -a * shift, b * shift, -b * shift)) for a, b in moves)], 1)


class ShiftedPatchTokens(nn.Module):
    """Patch embedding of an image and its four diagonal half-patch shifts."""

    def __init__(self, in_channels: int, patch: int, dim: int):
        super().__init__()
        self.patch = patch
        patch_dim = 5 * in_channels * patch * patch
        self.norm = nn.LayerNorm(patch_dim)
        self.embed = nn.Linear(patch_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        p = self.patch
        x = diagonal_shifts(x, p // 2)
        b, c, h, w = x.shape
        patches = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
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
        scores = scores.masked_fill(diagonal, torch.finfo(scores.dtype).min)
        attention = self.dropout(scores.softmax(-1))
        return self.dropout(self.out((attention @ v).transpose(1, 2).reshape(b, n, -1)))


class FeedForward(nn.Module):
    """Pre-norm Linear → GELU → Linear, each Linear optionally followed by a plain LayerNorm."""

    def __init__(self, dim: int, hidden: int, dropout: float, si: bool):
        super().__init__()

        def normed(a: int, b: int) -> list[nn.Module]:
            return [nn.Linear(a, b), nn.LayerNorm(b, elementwise_affine=False)] if si else [nn.Linear(a, b)]

        self.net = nn.Sequential(
            nn.LayerNorm(dim),
            *normed(dim, hidden), nn.GELU(), nn.Dropout(dropout),
            *normed(hidden, dim), nn.Dropout(dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ViT(nn.Module):
    """Class-token ViT with shifted patch tokens and locality self-attention.

    Parameters
    ----------
    input_shape
        (channels, height, width); height and width must be multiples of ``patch``.
    n_classes
        Number of logits.
    patch, dim, depth, heads, dim_head, mlp_dim, dropout, si
        The options of the ``vit`` model entry.
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


def validate(options: dict[str, Any]) -> dict[str, Any]:
    for key in SHAPE_OPTIONS:
        # A half-patch shift needs a patch of at least two pixels.
        options[key] = integer(f"[model] {key}", options[key], minimum=2 if key == "patch" else 1)
    options["dropout"] = number("[model] dropout", options["dropout"], positive=False)
    if options["dropout"] >= 1:
        raise LrscanError(f"[model] dropout must be below 1, got {options['dropout']:g}")
    if not isinstance(options["si"], bool):
        raise LrscanError(f"[model] si must be true or false, got {options['si']!r}")
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
)

# The study's "SI ViT": the same entry with LayerNorms in the feed-forward blocks by default.
SI_ENTRY = replace(ENTRY, defaults={**ENTRY.defaults, "si": True})

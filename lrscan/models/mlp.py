"""The scale-invariant MLP of the synthetic setup (SPEC §2).

``in → width → width → out``: each hidden layer is a bias-free Linear followed by a
LayerNorm without affine parameters and a ReLU, so the network's output does not change
when the hidden weights are scaled; the head is a bias-free Linear frozen at init with
Frobenius norm ``head_norm``.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lrscan.errors import LrscanError
from lrscan.models.entry import ModelEntry
from lrscan.options import integer, number


def mlp_apply(hidden: Sequence[Tensor], head: Tensor, x: Tensor, eps: float) -> Tensor:
    """Logits of the SI MLP; weights may carry a leading run axis (then x is (M, B, in))."""
    for weight in hidden:
        x = torch.relu(F.layer_norm(x @ weight.transpose(-1, -2), weight.shape[-2:-1], eps=eps))
    # A product and a sum rather than a one-row matmul, which takes another kernel (gemv) for
    # a single run than for a stack: this keeps the run-by-run path equal to the batched one.
    return (x.unsqueeze(-2) * head.unsqueeze(-3)).sum(-1)


class SIMLP(nn.Module):
    """MLP with non-affine LayerNorm after every hidden layer and a frozen head."""

    def __init__(self, in_dim: int, width: int, depth: int, n_out: int, head_norm: float, eps: float):
        super().__init__()
        self.eps = eps
        dims = [in_dim] + [width] * depth
        self.hidden = nn.ModuleList(nn.Linear(a, b, bias=False) for a, b in zip(dims, dims[1:]))
        self.head = nn.Linear(width, n_out, bias=False)
        with torch.no_grad():
            self.head.weight.mul_(head_norm / self.head.weight.norm())
        self.head.weight.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        return mlp_apply([layer.weight for layer in self.hidden], self.head.weight, x, self.eps)


def build(options: Mapping[str, Any], input_shape: tuple[int, ...], n_classes: int) -> SIMLP:
    if len(input_shape) != 1:
        raise LrscanError(f"model 'mlp' needs flat inputs, the dataset gives shape {input_shape}")
    # Two classes need a single logit (binary cross-entropy), as in the study.
    n_out = 1 if n_classes == 2 else n_classes
    return SIMLP(input_shape[0], options["width"], options["depth"], n_out, options["head_norm"], options["eps"])


def forward_batched(module: SIMLP, params: Mapping[str, Tensor], x: Tensor) -> Tensor:
    hidden = [params[f"hidden.{i}.weight"] for i in range(len(module.hidden))]
    return mlp_apply(hidden, params["head.weight"], x, module.eps)


def validate(options: dict[str, Any]) -> dict[str, Any]:
    for key in ("width", "depth"):
        options[key] = integer(f"[model] {key}", options[key], minimum=1)
    for key in ("head_norm", "eps"):
        options[key] = number(f"[model] {key}", options[key], positive=True)
    return options


def official_name(name: str, options: Mapping[str, Any]) -> str:
    """The study's name of a tensor (``synthetic_example/model.py``): one Sequential of
    Linear, LayerNorm, ReLU per hidden layer, then the head Linear."""
    kind, _, rest = name.partition(".")
    if kind == "head":
        return f"{3 * options['depth']}.{rest}"
    i, _, tensor = rest.partition(".")
    return f"{3 * int(i)}.{tensor}"


ENTRY = ModelEntry(
    build=build,
    is_si=lambda name: name.startswith("hidden."),
    # The study fixes the hidden weights of the synthetic MLP to the unit sphere.
    radius=lambda options: 1.0,
    defaults={"width": 32, "depth": 2, "head_norm": 10.0, "eps": 1e-7},
    validate=validate,
    forward_batched=forward_batched,
    official=official_name,
)

"""What a model is to lrscan: how to build one, which of its weights form the SI group, and how
they are trained (:class:`ModelEntry`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from torch import Tensor, nn


@dataclass(frozen=True)
class ModelEntry:
    """How lrscan builds and trains one kind of model.

    Attributes
    ----------
    build
        ``build(options, input_shape, n_classes) -> nn.Module``. Frozen parameters (a fixed
        head) have ``requires_grad=False``; the builder draws from torch's global RNG, which
        the trainer seeds per run.
    is_si
        ``is_si(parameter_name) -> bool``: whether a parameter belongs to the scale-invariant
        group whose joint norm the trainer fixes to the radius.
    radius
        ``radius(options) -> float | None``: the default radius of the SI group (about the
        norm of its default initialisation); ``None`` for a model not trained on a sphere.
    defaults
        Every option with its default value (the ``[model]`` table of a spec).
    validate
        ``validate(options) -> options``: checks option values, raising ``LrscanError``.
    forward_batched
        ``forward_batched(module, params, x) -> logits`` for M runs at once, with every
        parameter stacked along a leading run axis and ``x`` of shape (M, B, ...): an optional
        hand-batched forward pass. Without one (``None``: the image models) the engine batches
        runs by ``torch.func.vmap`` over the module, BatchNorm statistics per run. The SI MLP
        has one: its compiled step is 1.5x faster than vmap's (3.4 vs 5.0 ms for 92 runs on
        one thread) for the same weights to the bit.
    official
        ``official(name, options) -> str``: the name the study's own code gives the tensor
        that lrscan calls ``name`` (a parameter or float buffer of the built module), so that
        the study's checkpoints load as they are (``lrscan import``); ``None`` for a model the
        study does not have.
    update
        How the trainable parameters move: ``"sphere"`` (projected SGD on the SI group, the
        study's protocol: every trainable parameter must be SI), ``"sgd"`` (ordinary SGD
        with the options ``momentum`` and ``weight_decay``) or ``"adam"`` (Adam with coupled
        weight decay, options ``weight_decay`` and optionally ``betas``).
    """

    build: Callable[[Mapping[str, Any], tuple[int, ...], int], nn.Module]
    is_si: Callable[[str], bool]
    radius: Callable[[Mapping[str, Any]], float | None]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    validate: Callable[[dict[str, Any]], dict[str, Any]] = lambda options: options
    forward_batched: Callable[[nn.Module, Mapping[str, Tensor], Tensor], Tensor] | None = None
    update: str = "sphere"
    official: Callable[[str, Mapping[str, Any]], str] | None = None

    @property
    def norm_group(self) -> str:
        """The parameter group whose norm is the model's weight norm (:func:`lrscan.train.flat.si_norm`):
        ``"si"`` for a model trained on the sphere, ``"trainable"`` for one that is not."""
        return "si" if self.update == "sphere" else "trainable"


def official_names(entry: ModelEntry, names, options: Mapping[str, Any]) -> dict[str, str]:
    """The study's name of each of ``names`` (lrscan tensor names), or ``{}`` when the entry
    has no official counterpart.

    Raises
    ------
    ValueError
        When two lrscan names map to one official name (a broken mapping).
    """
    if entry.official is None:
        return {}
    mapping = {name: entry.official(name, options) for name in names}
    if len(set(mapping.values())) != len(mapping):
        raise ValueError("the official-name mapping is not one to one")
    return mapping

"""Model registry: each entry builds an ``nn.Module`` and says which weights form its SI group.

Third-party packages add models under the entry-point group ``lrscan.models``; the entry
point names a :class:`ModelEntry` (:mod:`lrscan.models.entry`).
"""

from __future__ import annotations

from lrscan.models import convnet, mlp, resnet, vit
from lrscan.models.entry import ModelEntry, official_names
from lrscan.registry import Registry

__all__ = ["MODELS", "ModelEntry", "official_names"]

MODELS: Registry[ModelEntry] = Registry("model", "lrscan.models")
MODELS.register("mlp", mlp.ENTRY)
MODELS.register("resnet18si", resnet.SI_ENTRY)
MODELS.register("resnet18", resnet.ENTRY)
MODELS.register("convnetsi", convnet.ENTRY)
MODELS.register("vit", vit.ENTRY)
MODELS.register("vitsi", vit.SI_ENTRY)

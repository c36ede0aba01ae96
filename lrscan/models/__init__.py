"""Model registry: each entry builds an ``nn.Module`` and says which weights form its SI group.

Third-party packages add models under the entry-point group ``lrscan.models``; the entry
point names a :class:`ModelEntry` (:mod:`lrscan.models.entry`). A built-in model's module is
imported when the model is first looked up.
"""

from __future__ import annotations

from lrscan.models.entry import ModelEntry, official_names
from lrscan.registry import Registry

__all__ = ["MODELS", "ModelEntry", "official_names"]

MODELS: Registry[ModelEntry] = Registry("model", "lrscan.models", {
    "mlp": "lrscan.models.mlp:ENTRY",
    "resnet18si": "lrscan.models.resnet:SI_ENTRY",
    "resnet18": "lrscan.models.resnet:ENTRY",
    "convnetsi": "lrscan.models.convnet:ENTRY",
    "vit": "lrscan.models.vit:ENTRY",
    "vitsi": "lrscan.models.vit:SI_ENTRY",
})

"""Dataset registry: each entry loads train/test tensors for one data seed.

Third-party packages add datasets under the entry-point group ``lrscan.datasets``; the entry
point names a :class:`DatasetEntry` (:mod:`lrscan.data.entry`). A built-in dataset's module
is imported when the dataset is first looked up.
"""

from __future__ import annotations

from lrscan.data.entry import Data, DatasetEntry, Normalization, from_pixels, to_pixels
from lrscan.registry import Registry

__all__ = ["DATASETS", "Data", "DatasetEntry", "Normalization", "from_pixels", "to_pixels"]

DATASETS: Registry[DatasetEntry] = Registry("dataset", "lrscan.datasets", {
    "ticks": "lrscan.data.ticks_dataset:ENTRY",
    "cifar10": "lrscan.data.images:CIFAR10_ENTRY",
    "cifar100": "lrscan.data.images:CIFAR100_ENTRY",
    "planted": "lrscan.data.planted:ENTRY",
    "files": "lrscan.data.files:ENTRY",
})

"""Dataset registry: each entry loads train/test tensors for one data seed.

Third-party packages add datasets under the entry-point group ``lrscan.datasets``; the entry
point names a :class:`DatasetEntry` (:mod:`lrscan.data.entry`).
"""

from __future__ import annotations

from lrscan.data import files, images, planted, ticks_dataset
from lrscan.data.entry import Data, DatasetEntry, Normalization, from_pixels, to_pixels
from lrscan.registry import Registry

__all__ = ["DATASETS", "Data", "DatasetEntry", "Normalization", "from_pixels", "to_pixels"]

DATASETS: Registry[DatasetEntry] = Registry("dataset", "lrscan.datasets")
DATASETS.register("ticks", ticks_dataset.ENTRY)
DATASETS.register("cifar10", images.CIFAR10_ENTRY)
DATASETS.register("cifar100", images.CIFAR100_ENTRY)
DATASETS.register("planted", planted.ENTRY)
DATASETS.register("files", files.ENTRY)

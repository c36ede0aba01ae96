"""Import folders of PyTorch checkpoints into lrscan stores (``lrscan import``).

One job per module: :mod:`~lrscan.importer.patterns` says which file is which run and epoch,
:mod:`~lrscan.importer.reading` reads a file (safely) into lrscan's flat layout and metrics,
:mod:`~lrscan.importer.inference` derives the store's spec, seed axis, radius and accuracy
units from the files, :mod:`~lrscan.importer.writing` writes the runs, and
:mod:`~lrscan.importer.checks` compares the imported test accuracies with lrscan's own
evaluation of the same weights.
"""

from lrscan.importer.inference import FT_EPOCH_ORIGINS, SEED_AXES, SeedAxis, infer_spec, seed_axis
from lrscan.importer.patterns import PLACEHOLDERS, Checkpoint, Pattern, Scan, TraceRow, scan
from lrscan.importer.reading import ACCURACY_UNITS, SOURCES, WRAPPER_KEYS, Rename, read_checkpoint
from lrscan.importer.writing import ImportResult, import_checkpoints

__all__ = [
    "ACCURACY_UNITS", "FT_EPOCH_ORIGINS", "PLACEHOLDERS", "SEED_AXES", "SOURCES", "WRAPPER_KEYS",
    "Checkpoint", "ImportResult", "Pattern", "Rename", "Scan", "SeedAxis", "TraceRow",
    "import_checkpoints", "infer_spec", "read_checkpoint", "scan", "seed_axis",
]

"""The study's figures (SPEC §6), all registered: importing this module imports every figure module.

Each figure is a function ``name(tree) -> HoloViews object`` of an opened store
(:func:`lrscan.open`) that reads the results ``lrscan analyze`` persisted under
``/analysis/<name>`` (and, for the training curves, the stored metrics). The figures live by
family in :mod:`~lrscan.plot.accuracy`, :mod:`~lrscan.plot.solutions` and
:mod:`~lrscan.plot.searches`; their registry is :mod:`~lrscan.plot.registry`, their shared look
:mod:`~lrscan.plot.styles`, and :mod:`~lrscan.plot.writers` writes them. This module gathers the
public names of :mod:`lrscan.plot` (``lrscan.plot.<figure>`` resolves here), in the order the
index shows them; everything else is imported from the module that defines it.
"""

from lrscan.plot.registry import FIGURES
from lrscan.plot.accuracy import ft_accuracy, pt_accuracy, swa_accuracy, training_curves, two_stage
from lrscan.plot.solutions import features, frequency, geometry, group_norms, sharpness
from lrscan.plot.searches import scan, threshold
from lrscan.plot.summary_text import summary
from lrscan.plot.writers import write_figures

__all__ = ["FIGURES", "features", "frequency", "ft_accuracy", "geometry", "group_norms", "pt_accuracy", "scan",
           "sharpness", "summary", "swa_accuracy", "threshold", "training_curves", "two_stage", "write_figures"]

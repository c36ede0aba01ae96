"""The study's figures (SPEC §6), all registered: importing this module imports every figure module.

Each figure is a function ``name(tree) -> HoloViews object`` of an opened store
(:func:`lrscan.open`) that reads the results ``lrscan analyze`` persisted under
``/analysis/<name>`` (and, for the training curves, the stored metrics). The figures live by
family in :mod:`~lrscan.plot.accuracy`, :mod:`~lrscan.plot.solutions` and
:mod:`~lrscan.plot.searches`; their registry is :mod:`~lrscan.plot.registry`, their shared look
:mod:`~lrscan.plot.styles`, and :mod:`~lrscan.plot.writers` writes them. This module gathers the
public names in one place (``lrscan.plot.<figure>`` resolves here), in the order the index shows them.
"""

from lrscan.plot.registry import FIGURES, Figure, figure, stored_analyses
from lrscan.plot.styles import BARRIER_FLOOR, DPI, PANEL_HEIGHT, PANEL_WIDTH, figure_size, regime_marks, regime_spans
from lrscan.plot.accuracy import ft_accuracy, pt_accuracy, swa_accuracy, training_curves, two_stage, two_stage_accuracy
from lrscan.plot.solutions import features, frequency, geometry, group_norms, sharpness, sharpness_points
from lrscan.plot.searches import scan, threshold
from lrscan.plot.summary_text import summary
from lrscan.plot.writers import Written, save_html, save_image, write_figures

save_png = save_image  # its name before it wrote SVG and PDF too, which tests of the figures use

__all__ = ["BARRIER_FLOOR", "DPI", "FIGURES", "PANEL_HEIGHT", "PANEL_WIDTH", "Figure", "features", "figure",
           "figure_size", "frequency", "ft_accuracy", "geometry", "group_norms", "pt_accuracy", "regime_marks",
           "regime_spans", "save_html", "save_image", "save_png", "scan", "sharpness", "sharpness_points", "stored_analyses",
           "summary", "swa_accuracy", "threshold", "training_curves", "two_stage", "two_stage_accuracy",
           "write_figures", "Written"]


"""Figures of a store: the study's static figures and an interactive explorer.

Each figure function takes an opened store and returns a HoloViews object, so it shows in a
notebook as it is (``lrscan.plot.geometry(lrscan.open(path))``); :func:`write_figures` writes
them all as HTML and PNG with an index page (``lrscan plot``). The explorer is in
:mod:`lrscan.plot.explore` (``lrscan explore``).
"""

from lrscan.plot.figures import (
    FIGURES,
    features,
    frequency,
    ft_accuracy,
    geometry,
    group_norms,
    pt_accuracy,
    summary,
    swa_accuracy,
    training_curves,
    write_figures,
)

__all__ = ["FIGURES", "features", "frequency", "ft_accuracy", "geometry", "group_norms", "pt_accuracy",
           "summary", "swa_accuracy", "training_curves", "write_figures"]

"""Figures of a store: the study's static figures and an interactive explorer.

Each figure function takes an opened store and returns a HoloViews object, so it shows in a
notebook as it is::

    import lrscan, lrscan.plot
    tree = lrscan.open("store/synthetic.zarr")
    lrscan.plot.geometry(tree)               # angle and barriers vs PLR, regimes marked
    lrscan.plot.write_figures(tree, "figs")  # every figure as HTML + PNG, and figs/index.html

The explorer is :func:`lrscan.plot.explore.make_app` / :func:`~lrscan.plot.explore.serve`
(``lrscan explore``). Importing this package is cheap: HoloViews loads on first use of a
figure, so that the command line starts fast.
"""

from lrscan.plot.defaults import DEFAULT_PORT, IMAGE_FORMATS  # noqa: F401

__all__ = ["FIGURES", "features", "frequency", "ft_accuracy", "geometry", "group_norms", "pt_accuracy",
           "scan", "sharpness", "summary", "swa_accuracy", "threshold", "training_curves", "two_stage", "write_figures"]


def __getattr__(name):
    if name in __all__:
        from lrscan.plot import figures

        return getattr(figures, name)
    raise AttributeError(f"module 'lrscan.plot' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *__all__])

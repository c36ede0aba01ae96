"""When pre-training converges: the epochs each run needs to bring its train loss below a level.

The convergence-threshold study (SPEC §5) asks, per (plr, seed), how long pre-training from
scratch takes to reach the study's operational convergence (train loss below 1e-2) and how
well the model generalises at that moment; near the threshold these epochs blow up.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from lrscan.analyze import analyzer
from lrscan.analyze.solutions import pretrain
from lrscan.analyze.study import CONVERGENCE_LOSS, FINAL_LOSS


def first_epoch_below(metrics: xr.Dataset, level: float) -> xr.DataArray:
    """The first logged epoch whose ``train_loss`` is below ``level``, NaN if none (lazy)."""
    epoch = xr.where(metrics.train_loss < level, metrics.epoch, np.nan)  # dims ordered as train_loss's
    return epoch.min("epoch").drop_vars("step", errors="ignore")


@analyzer("convergence", needs=("pretrain",))
def convergence(tree: xr.DataTree, loss: float = CONVERGENCE_LOSS, final_loss: float = FINAL_LOSS) -> xr.Dataset:
    """Epochs pre-training needs to bring the train loss below 1e-2, and the test accuracy then.

    A run *converges* at the first logged pre-training epoch whose train loss (full training
    set, eval mode) is below ``loss``, the study's operational convergence; epochs count from
    the start of pre-training, so their resolution is the store's ``log_every``. Runs that
    never get there (still training, in regime 2 or 3, diverged) have NaN epochs. Unfinished
    runs read as NaN too, so the analyzer also reads a store whose sweep is partly done (the
    threshold study's).

    Parameters
    ----------
    tree
        An opened store.
    loss
        Train loss below which a run has converged.
    final_loss
        A second, stricter level (the study trains until 1e-4).

    Returns
    -------
    xr.Dataset
        Over (plr, seed): ``epochs_to_converge`` (first epoch with train loss < ``loss``),
        ``converged`` (whether there is one), ``test_acc_at_convergence`` (test accuracy of
        that row), ``epochs_to_final`` and ``reached_final`` (the same for ``final_loss``).
        attrs: ``loss``, ``final_loss``. Lazy on a lazy store.
    """
    pt = pretrain(tree)
    epochs = first_epoch_below(pt, loss)
    final = first_epoch_below(pt, final_loss)
    at = pt.test_acc.where(pt.epoch == epochs).max("epoch").drop_vars("step", errors="ignore")
    return xr.Dataset(
        {
            "epochs_to_converge": epochs,
            "converged": epochs.notnull(),
            "test_acc_at_convergence": at,
            "epochs_to_final": final,
            "reached_final": final.notnull(),
        },
        attrs={"loss": loss, "final_loss": final_loss,
               "description": f"first pre-training epoch with train loss below {loss:g} (and {final_loss:g}), "
                              "and the test accuracy there"},
    )

"""Which image frequencies a solution relies on (SPEC §5, "Frequency response").

Each test image is split into four band-limited images (background, low, mid, high: L1 radius
of the centred DFT, filtered in [0, 1] pixel space); as in the study's evaluation the
background band is then normalised like the model's inputs and the low, mid and high bands
are fed as raw pixels (``normalise="all"`` normalises every band instead). A solution's
accuracy on each band-limited test set says how much it relies on that band. The study finds
that 2A solutions rely most on mid frequencies.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import xarray as xr

from lrscan.analyze import analyzer
from lrscan.analyze.evaluate import Evaluator, blocks
from lrscan.analyze.progress import passes
from lrscan.analyze.solutions import label, require_complete, resolve, solution_weights
from lrscan.data import to_pixels
from lrscan.data.frequency import BAND_NAMES, LOW_MID, NORMALISE, band_edges, band_filter, band_inputs
from lrscan.errors import LrscanError

SWEEP = (5, 7, 9, 11, 13, 17)  # low/mid boundaries, in 32×32 units


def _band_sets(evaluator: Evaluator, edges, normalise: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Band-limited test sets of every data seed: x (D, bands, N, C, H, W), y (D, bands, N)."""
    xs, ys = [], []
    for d in evaluator.data_seeds:
        data = evaluator.setup.data[d]
        xs.append(band_inputs(data.x_test, data.normalization, edges, normalise))
        ys.append(data.y_test.expand(len(edges) - 1, -1))
    return torch.stack(xs), torch.stack(ys)


def _solutions(tree: xr.DataTree, swa_k: int) -> list[str]:
    """PT, the SWA closest to ``swa_k``, FT low and FT high: those the store has."""
    wanted = [label("pt")]
    ks = tree.attrs["spec"]["sweep"]["swa"]
    if ks and "swa" in tree.children:
        wanted.append(label("swa", min(ks, key=lambda v: (abs(v - swa_k), v))))
    if "finetune" in tree.children:
        wanted += [resolve(tree, "ft_low"), resolve(tree, "ft_high")]
    return list(dict.fromkeys(wanted))


@analyzer("frequency", sets=("bands",))
def frequency(tree: xr.DataTree, low_mid_sweep: Sequence[int] = SWEEP, swa_k: int = 5,
              n_examples: int = 4, normalise: str = "study") -> xr.Dataset:
    """Accuracy of PT, SWA, FT-low and FT-high solutions on band-limited test sets.

    Parameters
    ----------
    tree
        An opened, finished store of an image dataset.
    low_mid_sweep
        Low/mid band boundaries (in 32×32 units, the study's is 9) at which the low and mid
        accuracies are measured again; ``()`` skips the sweep.
    swa_k
        Which SWA solution to use (the stored K closest to it).
    n_examples
        Test images (of the first data seed) whose band images are kept for display.
    normalise
        ``"study"`` (the study's evaluation: only the background band is normalised, low,
        mid and high are raw pixels) or ``"all"`` (every band normalised like an image).

    Returns
    -------
    xr.Dataset
        ``band_acc(plr, seed, solution, band)`` at the study's edges; ``test_acc(plr, seed,
        solution)`` on the unfiltered test set; ``sweep_acc(plr, seed, solution, low_mid,
        band)`` for the low and mid bands at each boundary of the sweep; ``band_images(example,
        band, channel, row, col)``, pixel images of a few test images' bands (clipped to
        [0, 1]) and ``images`` the originals.  attrs: ``edges`` (radii in 32×32 units), ``chance``,
        ``normalise``.
    """
    require_complete(tree)
    if normalise not in NORMALISE:
        raise LrscanError(f"frequency: normalise must be one of {', '.join(map(repr, NORMALISE))}, got {normalise!r}")
    evaluator = Evaluator.of(tree)
    first = evaluator.setup.data[evaluator.data_seeds[0]]
    if first.normalization is None or first.x_test.dim() != 4:
        raise LrscanError(f"frequency needs an image dataset; {tree.attrs['spec']['sweep']['dataset']!r} is not one")
    size = tuple(first.x_test.shape[-2:])
    edges = band_edges(size)
    sweep = [band_edges(size, int(b)) for b in low_mid_sweep]

    weights = solution_weights(tree).sel(solution=_solutions(tree, swa_k))
    runs = weights.isel(param=0, drop=True)
    data_index = evaluator.data_index(tree)

    def accuracy(split, n_bands: int | None) -> np.ndarray:
        """Accuracy of every solution on a set, block by block of solutions (the set made once)."""
        acc = np.empty((runs.size,) if n_bands is None else (runs.size, n_bands), dtype=np.float32)
        for rows, flat, data in blocks(weights, data_index):
            acc[rows] = evaluator.evaluate(flat, data, split=split)[1]
        return acc.reshape(*runs.shape, *acc.shape[1:])

    def band_accuracy(edges_, bands=slice(None)) -> np.ndarray:
        x, y = _band_sets(evaluator, edges_, normalise)
        return accuracy((x[:, bands], y[:, bands]), y[:, bands].shape[1])

    dims = (*runs.dims, "band")
    out = xr.Dataset(coords={**runs.coords, "band": np.array(BAND_NAMES, dtype=object)})
    # Passes over the solutions: the study's bands, the unfiltered test set, each other boundary.
    with passes(2 + sum(e != edges for e in sweep)):
        band_acc = band_accuracy(edges)
        out["band_acc"] = xr.DataArray(band_acc, dims=dims)
        out["test_acc"] = xr.DataArray(accuracy("test", None), dims=runs.dims)
        # Moving the low/mid boundary changes only those two bands; the study's own is already scored.
        low_mid = [band_acc[..., 1:3] if e == edges else band_accuracy(e, slice(1, 3)) for e in sweep]
    if sweep:
        out["sweep_acc"] = xr.DataArray(np.stack(low_mid, -2), dims=(*runs.dims, "low_mid", "sweep_band"),
                                        coords={"low_mid": list(low_mid_sweep),
                                                "sweep_band": np.array(["low", "mid"], dtype=object)})
    pixels = to_pixels(first.x_test[:n_examples], first.normalization)
    out["images"] = xr.DataArray(pixels.clamp(0, 1).numpy(), dims=("example", "channel", "row", "col"))
    out["band_images"] = xr.DataArray(band_filter(pixels, edges).clamp(0, 1).transpose(0, 1).numpy(),
                                      dims=("example", "band", "channel", "row", "col"))
    out.attrs = {"edges": list(edges), "low_mid": LOW_MID, "chance": 1 / first.n_classes, "normalise": normalise,
                 "description": "accuracy of solutions on band-limited test sets (L1 radius of the centred DFT)"}
    return out

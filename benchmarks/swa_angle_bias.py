"""How much the study's notebook biases SWA angles by taking the raw dot product of an average.

lrscan's angle between an SWA solution and a fine-tuned one is the arccos of their cosine: the
SWA average is a direction (it is put back on the sphere before it is stored). The study's
notebook instead took arccos(<w_swa, w_ft> / ρ²) with the raw, shorter average, which reads as a
larger angle. This script measures the difference on the default preset's store, per PLR, for the
SWA of 5 against FT high: the README's "Where lrscan knowingly differs" quotes its median in 2A.

Run:  python benchmarks/swa_angle_bias.py [--store PATH]   (a store of the default preset; one
is trained there first when PATH does not exist, or into a temporary folder without --store:
about 3 minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

import lrscan
from lrscan.analyze.regimes import regimes
from lrscan.analyze.solutions import resolve, si_slices
from lrscan.spec import Spec, load_spec
from lrscan.train.plan import Plan
from lrscan.train.sweep import train


def si(tree, weights: np.ndarray) -> np.ndarray:
    """The SI-group part of stacked weight vectors (..., param), in float64."""
    return np.concatenate([weights[..., s] for s in si_slices(tree)], -1).astype(np.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, help="a store of the default preset (trained there if missing)")
    parser.add_argument("--k", type=int, default=5, help="SWA window size")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = args.store or Path(tmp) / "default.zarr"
        if not store.exists():
            train(load_spec(), store)
        tree = lrscan.open(store)
        spec = Spec.from_dict(tree.attrs["spec"])
        radius = spec.radius
        plan = Plan.build(spec, int(tree.attrs["steps_per_epoch"]) * spec.batch_size)
        steps = plan.swa_steps[args.k]
        window = si(tree, tree["pretrain/weights"]["weights"].sel(epoch=plan.epochs(steps)).values)  # plr, seed, K, P
        raw = window.mean(2)
        ft = si(tree, tree["finetune/weights"]["weights"].sel(flr=float(max(spec.flr))).isel(epoch=-1).values)
        dot = (raw * ft).sum(-1)
        ours = np.arccos(np.clip(dot / np.sqrt((raw * raw).sum(-1) * (ft * ft).sum(-1)), -1, 1))
        theirs = np.arccos(np.clip(dot / radius**2, -1, 1))
        labels = regimes(tree).regime.values  # (plr, seed)
        print(f"SWA of {args.k} vs {resolve(tree, 'ft_high')}: angle (rad), lrscan vs the notebook's raw dot")
        print(f"{'plr':>10} {'regimes':>12} {'lrscan':>8} {'raw dot':>8} {'bias':>7}")
        bias = theirs - ours
        for i, plr in enumerate(spec.plr):
            print(f"{plr:10.3g} {','.join(map(str, labels[i])):>12} {np.nanmean(ours[i]):8.3f} "
                  f"{np.nanmean(theirs[i]):8.3f} {np.nanmean(bias[i]):7.3f}")
        for name, which in (("2A", labels == "2A"), ("2A or 2B", np.isin(labels, ["2A", "2B"]))):
            if which.any():
                print(f"median bias over the {int(which.sum())} runs labelled {name}: "
                      f"{np.nanmedian(bias[which]):.3f} rad (range {np.nanmin(bias[which]):.3f} to "
                      f"{np.nanmax(bias[which]):.3f})")
        print(f"median bias over all runs: {np.nanmedian(bias):.3f} rad")


if __name__ == "__main__":
    main()

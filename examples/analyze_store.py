"""Open a sweep store, run every analysis through the accessor, and ask one question of each.

Usage:  python examples/analyze_store.py [STORE]      (default: store/synthetic.zarr)

Everything below is what you would type in a notebook; each block is one xarray query.
"""

import sys

import lrscan
import lrscan.analyze.best

path = sys.argv[1] if len(sys.argv) > 1 else "store/synthetic.zarr"
tree = lrscan.open(path)  # lazy: dask arrays, nothing read yet
print(tree["pretrain/metrics"])

# Accuracy, as the study judges a PLR: fine-tuning with the FLRs below it, averaged over them
# and over seeds; the PLRs that cannot be told from the best within the noise.
best = lrscan.analyze.best.best(tree)
print(f"\nbest fine-tuned test accuracy {best.accuracy:.3f} ± {best.se:.3f} from PLR {best.plr:.3g} "
      f"(tied within the noise: {best.low:.3g} to {best.high:.3g})")

# Regimes: each PLR's most common label over seeds, and the convergence threshold.
regimes = tree.lrscan.regimes()
print("\nregime per PLR:", ", ".join(f"{p:.3g}: {r}" for p, r in zip(regimes.plr.values, regimes.regime_mode.values)))
print("convergence threshold: 10 **", regimes.boundary_log10_mean.sel(boundary="1|2").values.round(2),
      "±", regimes.boundary_log10_std.sel(boundary="1|2").values.round(2))

# Angles: FT low FLR vs FT high FLR, in radians (π/2 = unrelated), averaged over seeds.
angles = tree.lrscan.angles()
print("\nangle FT-low ~ FT-high per PLR:", angles.angle.isel(pair=0).mean("seed").values.round(3))

# Barriers: the test barrier between FT low and high FLR of the runs labelled 2A, per PLR.
barriers = tree.lrscan.barriers()
in_2a = (regimes.regime == "2A").rename("in_2a")
print("\nshare of seeds in 2A per PLR:", regimes.regime_share.sel(label="2A").values.round(2))
print("test barrier FT-low ~ FT-high in 2A (%):",
      {f"{p:.3g}": round(float(b), 2) for p, b in barriers.test_barrier.isel(pair=0).where(in_2a).mean("seed")
       .dropna("plr").to_series().items()})

# Features: how many features the pre-trained solutions rely on, per PLR.
features = tree.lrscan.features()
print("\neffective feature count of PT solutions:",
      features.feature_count.sel(solution="pt").mean("seed").values.round(2))

# SWA: accuracy of the average of the last K iterates, per K.
print("\nSWA test accuracy per K (best PLR):", tree.lrscan.swa().test_acc.mean("seed").max("plr").values.round(3))

# Gradient and weight-group norms at the end of pre-training.
print("\nmean SI gradient norm per PLR:", tree.lrscan.grad_norm().pt_grad_norm.mean("seed").values.round(3))
spread = tree.lrscan.group_norms().group_norm.pipe(lambda g: (g.max("group") / g.min("group")).mean("seed"))
print("max/min channel norm ratio per PLR:", spread.values.round(1))

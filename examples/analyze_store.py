"""Open a sweep store, run every analysis through the accessor, and ask one question of each.

Usage:  python examples/analyze_store.py [STORE]      (default: store/synthetic.zarr)

Everything below is what you would type in a notebook; each block is one xarray query.
"""

import sys

import lrscan

path = sys.argv[1] if len(sys.argv) > 1 else "store/synthetic.zarr"
tree = lrscan.open(path)  # lazy: dask arrays, nothing read yet
print(tree["pretrain/metrics"])

# Accuracy: the PLR whose fine-tuned solutions are best, averaged over seeds.
metrics = tree.lrscan.metrics()
best_ft = metrics.ft_test_acc.mean("seed").max("flr")
print(f"\nbest fine-tuned test accuracy {float(best_ft.max()):.3f} "
      f"from PLR {float(best_ft.idxmax('plr')):.3g}")

# Regimes: each PLR's most common label over seeds, and the convergence threshold.
regimes = tree.lrscan.regimes()
print("\nregime per PLR:", dict(zip(regimes.plr.values.round(5), regimes.regime_mode.values)))
print("convergence threshold: 10 **", regimes.boundary_log10_mean.sel(boundary="1|2").values.round(2),
      "±", regimes.boundary_log10_std.sel(boundary="1|2").values.round(2))

# Angles: FT low FLR vs FT high FLR, in radians (π/2 = unrelated), averaged over seeds.
angles = tree.lrscan.angles()
print("\nangle FT-low ~ FT-high per PLR:", angles.angle.isel(pair=0).mean("seed").values.round(3))

# Barriers: the test barrier between FT low and high FLR, for the PLRs labelled 2A.
barriers = tree.lrscan.barriers()
in_2a = regimes.regime_mode == "2A"
print("\ntest barrier FT-low ~ FT-high in 2A (%):",
      barriers.test_barrier.isel(pair=0).mean("seed").where(in_2a, drop=True).values.round(2))

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

"""Which image frequencies do solutions rely on? Train a small image sweep and ask the store.

Usage:  python examples/frequency_bands.py [STORE]      (default: store/planted-convnet.zarr)

When STORE does not exist yet, a shortened `planted-convnet` sweep is trained into it first
(an SI ConvNet on offline 8x8 images whose class evidence lies in the mid frequency band;
about ten seconds on a laptop CPU). The rest is what you would type in a notebook.
"""

import sys
from pathlib import Path

import lrscan
from lrscan.spec import load_spec
from lrscan.train.sweep import train

path = Path(sys.argv[1] if len(sys.argv) > 1 else "store/planted-convnet.zarr")
if not path.exists():
    # Batches of 8: 64 steps, enough for BatchNorm's running statistics to settle.
    shorter = ["plr=[0.001, 0.01, 3.0]", "batch_size=8", "pretrain_epochs=2", "finetune_epochs=1",
               "finetune_from=2", "swa=[2]", "runs_per_batch=3", "model.width=4", "data.size=8",
               "data.n_train=256", "data.n_test=128"]
    train(load_spec("planted-convnet", overrides=shorter), path)

tree = lrscan.open(path)

# Accuracy on band-limited test sets: a (plr, seed, solution, band) array.
result = tree.lrscan.frequency(low_mid_sweep=(5, 9, 13))
by_band = result.band_acc.mean("seed")
print("test accuracy per band, PT solutions:")
print(by_band.sel(solution="pt").to_pandas().round(2))

# The band each solution relies on most, where it learned the task at all.
learned = result.test_acc.mean("seed") > 0.5
print("\nband relied on most:", by_band.idxmax("band").where(learned).to_pandas().to_dict())

# Moving the low/mid boundary: how the mid band's accuracy changes with it.
print("\nmid-band accuracy vs low/mid boundary (PT):",
      result.sweep_acc.sel(sweep_band="mid", solution="pt").mean("seed").astype(float).round(2).to_pandas().to_dict())

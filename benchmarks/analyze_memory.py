"""Peak memory and wall time of `lrscan analyze` on a small SI ResNet-18 w32 store.

The store of the engine issue: 6 PLRs x 1 seed x 2 FLRs of the SI ResNet-18 at width 32
(2.8 M parameters per solution), 2 epochs of pre-training and 1 of fine-tuning on 128 planted
32x32 images (offline), SWA of 2 over the continued pre-training. The model-running analyses
(barriers, features/frequency, SWA, gradient norms) must work per block of solutions: their peak
memory must not grow with the number of solutions (target: below 3 GiB).

Run:  python benchmarks/analyze_memory.py [--store PATH] [--only NAME ...]
The store is trained first when PATH does not exist (a few minutes on 2 cores); `lrscan
analyze` then runs in a subprocess, whose peak resident memory is reported.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OVERRIDES = [
    "model='resnet18si'", "model.width=32", "plr=[1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1]", "flr=[1e-4, 1e-3]",
    "seeds=1", "batch_size=64", "pretrain_epochs=2", "finetune_epochs=1", "finetune_from=2", "log_every=1",
    "checkpoint_epochs=[]", "swa=[2]", "swa_window={start=2, every=1}", "runs_per_batch=6", "device='cpu'",
    "data.size=32", "data.n_train=128", "data.n_test=128",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, help="the store (trained there first if missing)")
    parser.add_argument("--only", nargs="*", default=[], help="analyzers to run (default: all that apply)")
    args = parser.parse_args()
    lrscan = shutil.which("lrscan") or sys.exit("lrscan is not installed (pip install -e .)")
    with tempfile.TemporaryDirectory() as tmp:
        store = args.store or Path(tmp) / "resnet.zarr"
        if not store.exists():
            sets = [arg for item in OVERRIDES for arg in ("--set", item)]
            start = time.perf_counter()
            subprocess.run([lrscan, "train", "--preset", "planted-convnet", "--store", str(store), *sets], check=True)
            print(f"trained the store in {time.perf_counter() - start:.1f} s")
        only = [arg for name in args.only for arg in ("--only", name)]
        start = time.perf_counter()
        done = subprocess.run([lrscan, "analyze", str(store), *only], stderr=subprocess.PIPE, text=True)
        seconds = time.perf_counter() - start
        # ru_maxrss of children: the largest of any child so far, in KiB; the analyze run is the largest.
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
        if done.returncode:
            sys.exit(done.stderr)
        print(done.stderr.strip())
    print(f"lrscan analyze: {seconds:.1f} s wall, peak resident memory {peak:.2f} GiB (target: < 3 GiB)")


if __name__ == "__main__":
    main()

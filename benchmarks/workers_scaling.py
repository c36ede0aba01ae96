"""Throughput of `lrscan train --workers 1` against `--workers 2` on this machine, side by side.

The reduced synthetic sweep (several independent batches of 64 runs) is trained from
scratch with each worker count on a local dask cluster; each worker gets an equal share of
the cores. Prints wall times, model-steps per second, and the speed-up.

Run:  python benchmarks/workers_scaling.py
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _reduced import OVERRIDES, set_args  # noqa: E402

from lrscan.spec import load_spec  # noqa: E402
from lrscan.train.sweep import Setup  # noqa: E402


def main() -> None:
    spec = load_spec(overrides=OVERRIDES)
    plan = Setup.build(spec).plan
    n_seeds = len(plan.runs)
    steps = len(spec.plr) * n_seeds * (plan.pretrain.n_steps + len(spec.flr) * plan.finetune.n_steps)
    rates = {}
    for workers in (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "lrscan", "train", "--store", f"{tmp}/s.zarr",
                            "--workers", str(workers), *set_args()], check=True, stderr=subprocess.DEVNULL)
            elapsed = time.perf_counter() - start
        rates[workers] = steps / elapsed
        print(f"--workers {workers}: {elapsed:6.1f} s, {rates[workers]:8.0f} model-steps/s")
    print(f"speed-up of 2 workers over 1: {rates[2] / rates[1]:.2f}x")


if __name__ == "__main__":
    main()

"""Image models on a CPU: M = 8 runs stepped by one engine against the same runs one at a time.

SI ConvNet and SI ResNet-18 at width 8, batch 128, 32x32 planted images resident in memory, one
thread; each side takes ``--steps`` timed steps after a warm-up, timed in CPU time (the
process's own, which other jobs on the machine do not inflate). Images per CPU-second of each
and their ratio (issue 14's CPU image benchmark). BatchNorm models go through the engine's
run-by-run path (each run's own BN statistics), so the ratio is what sharing one engine — one
update and projection over the stacked runs — buys on a CPU.

Run:  python benchmarks/image_batching.py [--runs 8] [--steps 5]
"""

from __future__ import annotations

import argparse
import time

import torch

from gpu_engine import measure, setup_for


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--width", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for model in ("convnetsi", "resnet18si"):
        setup = setup_for(args.width, "cpu", 1024, model)
        data = (setup.data[0].x_train[None], setup.data[0].y_train[None])
        together = measure(setup, args.runs, "tf32", args.steps, args.warmup, data, False, time.process_time)
        alone = measure(setup, 1, "tf32", args.steps, args.warmup, data, False, time.process_time)
        batched, single = args.runs * 128 / together, 128 / alone
        print(f"{model} w{args.width}: M = {args.runs} in one engine {batched:7.0f} images per CPU-second, "
              f"one at a time {single:7.0f}: ratio {batched / single:.2f}x", flush=True)


if __name__ == "__main__":
    main()

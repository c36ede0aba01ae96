"""Image models on a CPU: M = 8 runs stepped by one engine against the same runs one at a time.

SI ConvNet and SI ResNet-18 at width 8, batch 128, 32x32 planted images resident in memory, one
thread; each side takes ``--steps`` timed steps after a warm-up, timed in CPU time (the
process's own, which other jobs on the machine do not inflate). Images per CPU-second of each
and their ratios (issue 14's CPU image benchmark), for both ways an engine can step M runs: the
vmapped stack (one pass, the runs' convolutions grouped) and run by run (one pass per run, one
update and projection over the stacked runs). The lower of the two is why a CPU steps image
models run by run by default (``lrscan.train.sweep.default_batched``).

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
        rate = {}
        for path, m in (("vmap", args.runs), ("runs", args.runs), ("alone", 1)):
            seconds = measure(setup, m, "tf32", args.steps, args.warmup, data, False, time.process_time,
                              path="runs" if path == "runs" else "vmap")
            rate[path] = m * 128 / seconds
        print(f"{model} w{args.width}: M = {args.runs} vmapped {rate['vmap']:6.0f} images per CPU-second, "
              f"run by run {rate['runs']:6.0f}, one at a time {rate['alone']:6.0f}: vmapped / alone "
              f"{rate['vmap'] / rate['alone']:.2f}x, run by run / alone {rate['runs'] / rate['alone']:.2f}x",
              flush=True)


if __name__ == "__main__":
    main()

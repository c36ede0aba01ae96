"""The engine's step on the study's SI ResNet-18 at GPU scale: images/s, achieved TFLOP/s, and
the GPU-hours one seed of the study's CIFAR-10 sweep would take (issue 14's GPU benchmark).

SI ResNet-18 at width 32, batch 128, CIFAR-shaped 32x32 images resident on the device (made
there: CIFAR itself does not travel). For every M (runs stepped together), engine path (the vmapped stack, and run by run) and precision
(``tf32``: float32 with TF32 matrix products, the image presets' setting; ``bf16``: autocast),
the engine takes ``--steps`` timed steps after ``--warmup`` untimed ones, with the device
synchronised around the timed ones. FLOPs per run-step are counted once by
``torch.utils.flop_counter`` (forward and backward of one run's batch); achieved TFLOP/s is
against ``--peak`` (790 TFLOP/s: an H200's dense bf16 rate). The projection: one seed of the
study's SI ResNet-18 CIFAR-10 sweep is 25 PLR x 200 pre-training epochs + 225 fine-tuning runs x
200 epochs of 50,000 / 128 steps, at the best run-steps per second measured.

Run on a GPU (about 3-6 minutes):  python benchmarks/gpu_engine.py
A quick check of the script on a CPU:  python benchmarks/gpu_engine.py --device cpu --width 4 --runs 1 2 --steps 2 --warmup 1
Prints one line per (M, precision) and the projection; ``--json FILE`` writes them too.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode

from lrscan.spec import resolve
from lrscan.train.engine import Engine, loss_and_correct
from lrscan.train.sweep import Setup

# One seed of the study's SI ResNet-18 CIFAR-10 sweep, in run-steps (SPEC: 25 PLRs pre-trained
# for 200 epochs, each fine-tuned with 9 FLRs for 200 epochs; 50,000 images, batch 128).
STEPS_PER_EPOCH = -(-50_000 // 128)
SWEEP_RUN_STEPS = (25 * 200 + 225 * 200) * STEPS_PER_EPOCH


def setup_for(width: int, device: str, n_train: int, model: str = "resnet18si") -> Setup:
    return Setup.build(resolve({
        "sweep": {"model": model, "dataset": "planted", "plr": [0.01], "flr": [0.001], "seeds": 1,
                  "batch_size": 128, "pretrain_epochs": 1, "finetune_epochs": 0, "swa": [], "device": device},
        "model": {"width": width},
        "data": {"size": 32, "n_classes": 10, "n_train": n_train, "n_test": 128},
    }))


def flops_per_run_step(setup: Setup, x: torch.Tensor, y: torch.Tensor) -> int:
    """Forward and backward FLOPs of one run on one batch (matrix products and convolutions)."""
    module = setup.module.to(x.device).train()
    params = {n: p.detach().requires_grad_(p.requires_grad) for n, p in module.named_parameters()}
    counter = FlopCounterMode(display=False)
    with counter:
        loss = loss_and_correct(functional_call(module, params, (x,)), y)[0].mean()
        loss.backward()
    return counter.get_total_flops()


def measure(setup: Setup, m: int, precision: str, steps: int, warmup: int, data, compile: bool,
            clock=time.perf_counter, path: str = "vmap") -> float:
    """Seconds per engine step of ``m`` runs (by ``clock``: wall time by default), on the
    engine's vmapped path (``"vmap"``: one pass of the stack) or run by run (``"runs"``, with
    channels-last on a GPU)."""
    x, y = data
    device = x.device
    flat = torch.stack([setup.init_weights(seed, 0) for seed in range(m)]).to(device)
    runs = path == "runs"
    engine = Engine(setup.entry, setup.module.to(device), flat, setup.spec.radius, batched=not runs, compile=compile,
                    options=setup.spec.model_options, precision="bf16" if precision == "bf16" else "fp32",
                    tf32=device.type == "cuda", channels_last=runs and device.type == "cuda")
    which = torch.zeros(m, dtype=torch.long, device=device)
    elr = torch.full((m,), 0.01, device=device)
    g = torch.Generator(device=device).manual_seed(0)
    draw = lambda: torch.randint(0, x.shape[1], (m, 128), generator=g, device=device)  # noqa: E731
    for _ in range(warmup):
        engine.step_on(x, y, which, draw(), elr)
    batches = [draw() for _ in range(steps)]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = clock()
    for idx in batches:
        engine.step_on(x, y, which, idx, elr)
    sync()
    return (clock() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--runs", type=int, nargs="+", default=[1, 8, 25])
    parser.add_argument("--precisions", nargs="+", default=["tf32", "bf16"], choices=["tf32", "bf16"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--n-train", type=int, default=4096, help="images resident on the device")
    parser.add_argument("--compile", action="store_true", help="compile each run's forward pass")
    parser.add_argument("--paths", nargs="+", default=["vmap", "runs"], choices=["vmap", "runs"],
                        help="engine paths to time: the vmapped stack, and run by run (M > 1 only: at M = 1 "
                             "they are the same work)")
    parser.add_argument("--peak", type=float, default=790.0, help="TFLOP/s the achieved rate is a fraction of")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run with --device cpu for a check of the script")
    setup = setup_for(args.width, args.device, args.n_train)
    data = setup.data[0]
    # CIFAR-shaped images made on the device (the planted set's labels, fresh pixels).
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn((1, args.n_train, 3, 32, 32), generator=gen, device=device)
    y = data.y_train[None].to(device)
    flops = flops_per_run_step(setup, x[0, :128], y[0, :128])
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"SI ResNet-18 w{args.width}, batch 128, {flops / 1e9:.1f} GFLOP per run-step, on {name}")
    rows = []
    for precision in args.precisions:
        for m in args.runs:
            for path in args.paths if m > 1 else args.paths[:1]:
                seconds = measure(setup, m, precision, args.steps, args.warmup, (x, y), args.compile, path=path)
                tflops = m * flops / seconds / 1e12
                row = {"runs": m, "path": path, "precision": precision, "step_s": seconds,
                       "images_per_s": m * 128 / seconds, "tflops": tflops, "peak_fraction": tflops / args.peak}
                rows.append(row)
                print(f"M = {m:3d} {path:4s} {precision}: {seconds * 1e3:8.2f} ms per step, "
                      f"{row['images_per_s']:10.0f} images/s, {tflops:7.2f} TFLOP/s "
                      f"({100 * row['peak_fraction']:.1f}% of {args.peak:g})", flush=True)
    best = max(rows, key=lambda r: r["runs"] / r["step_s"])
    hours = SWEEP_RUN_STEPS / (best["runs"] / best["step_s"]) / 3600
    print(f"one seed of the study's SI ResNet-18 CIFAR-10 sweep ({SWEEP_RUN_STEPS:,} run-steps) at the best rate "
          f"(M = {best['runs']}, {best['path']}, {best['precision']}): {hours:.1f} GPU-hours "
          f"(target <= 4 h, >= 25% of the bf16 rate)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "width": args.width, "flops_per_run_step": flops, "rows": rows,
                       "sweep_run_steps": SWEEP_RUN_STEPS, "projected_gpu_hours": hours}, f, indent=1)


if __name__ == "__main__":
    main()

"""Batched sphere training vs an ordinary one-run-at-a-time PyTorch loop, side by side.

Both train the same runs of the synthetic setup (SI MLP on ticks, batch 16) from the same
initial points, for the same number of steps, evaluating train and test sets every epoch and
keeping the weights every 100 steps (3.125 epochs), as the study's loop logs.  The baseline is
what one would write by hand, as the study did: an ``nn.Module``, ``torch.optim.SGD``, a
shuffling ``DataLoader``, and a projection back to the sphere after every step.

Run:  python benchmarks/train_throughput.py [--epochs 100] [--seeds 10] [--baseline-runs 23] [--threads 1 --pin]
Prints model-steps per second of each (wall time, and CPU time: the process's own, which other
jobs on the machine do not inflate) and their ratios. ``--threads 1 --pin`` measures per core:
one thread each, the process pinned to one CPU.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

from lrscan.spec import load_spec
from lrscan.train.flat import layout
from lrscan.train.sweep import Setup, Sweep


def baseline_run(setup: Setup, elr: float, seed: int, epochs: int, log_every: int, weights_every: int = 100) -> None:
    """One run the ordinary way: module, optimiser, loader, projection, evaluation, and a copy
    of the weights every ``weights_every`` steps."""
    spec, data = setup.spec, setup.data[0]
    model = setup.entry.build(spec.model_options, data.input_shape, data.n_classes)
    layers = layout(setup.entry, model)
    flat = setup.init_weights(seed, 0)
    with torch.no_grad():
        for layer, p in zip(layers, model.parameters()):
            p.copy_(flat[layer.start : layer.stop].view_as(p))
    si = [p for layer, p in zip(layers, model.parameters()) if layer.si]
    opt = torch.optim.SGD(si, lr=elr * spec.radius**2, momentum=0.0, weight_decay=0.0)
    loader = DataLoader(TensorDataset(data.x_train, data.y_train.float()), batch_size=spec.batch_size,
                        shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(seed))
    loss_fn = torch.nn.BCEWithLogitsLoss()
    kept, step = [], 0
    for epoch in range(epochs):
        for x, y in loader:
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x)[:, 0], y).backward()
            opt.step()
            with torch.no_grad():
                norm = torch.sqrt(sum(p.square().sum() for p in si))
                for p in si:
                    p.mul_(spec.radius / norm)
            step += 1
            if step % weights_every == 0:
                kept.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]).numpy().copy())
        if (epoch + 1) % log_every == 0:
            with torch.no_grad():
                for x, y in ((data.x_train, data.y_train), (data.x_test, data.y_test)):
                    z = model(x)[:, 0]
                    loss_fn(z, y.float()).item(), ((z > 0) == (y == 1)).float().mean().item()


def matmul_flops(setup: Setup) -> tuple[int, int]:
    """FLOPs of the matrix products of one run's training step (forward and backward of a batch)
    and of one evaluation of the train and test sets (forward), by ``torch.utils.flop_counter``."""
    spec, data = setup.spec, setup.data[0]
    model = setup.entry.build(spec.model_options, data.input_shape, data.n_classes)
    step = FlopCounterMode(display=False)
    with step:
        torch.nn.functional.binary_cross_entropy_with_logits(
            model(data.x_train[: spec.batch_size])[:, 0], data.y_train[: spec.batch_size].float()).backward()
    evaluation = FlopCounterMode(display=False)
    with evaluation, torch.no_grad():
        model(data.x_train), model(data.x_test)
    return step.get_total_flops(), evaluation.get_total_flops()


def gemm_rate(m: int, rows: int, width: int = 32, repeat: int = 50) -> float:
    """FLOP/s of this core on the stacked products the trainer computes: m runs' (rows, width)
    by (width, width) matrices in one torch.bmm."""
    a, w = torch.randn(m, rows, width), torch.randn(m, width, width)
    for _ in range(5):
        a @ w
    start = time.perf_counter()
    for _ in range(repeat):
        a @ w
    return 2 * m * rows * width * width * repeat / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=100, help="epochs per run (32 steps each)")
    parser.add_argument("--seeds", type=int, default=10, help="seeds per PLR (runs = 23 x seeds)")
    parser.add_argument("--baseline-runs", type=int, default=23,
                        help="runs the baseline trains (0: all; fewer saves time, its rate is per run)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads for both (0: torch's default)")
    parser.add_argument("--pin", action="store_true", help="pin the process to one CPU (with --threads 1: per core)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.pin:
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})

    # The 23 PLRs of the synthetic preset x 10 seeds, short runs, metrics every epoch and weights
    # every 3.125 epochs (100 steps) for both contenders.
    overrides = [
        f"seeds={args.seeds}", f"pretrain_epochs={args.epochs}", f"finetune_from={args.epochs}",
        "finetune_epochs=0", "log_every=1", f"checkpoint_epochs={{start = 0, stop = {args.epochs}, step = 3.125}}",
        "swa=[]", "device='cpu'",
    ]
    spec = load_spec(overrides=overrides)
    setup = Setup.build(spec)
    runs = [(plr, seed) for plr in spec.plr for seed in spec.seeds]
    steps = setup.plan.pretrain.n_steps
    print(f"synthetic SI MLP, batch {spec.batch_size}, {len(runs)} runs of {steps} steps, metrics every epoch, "
          f"weights every 100 steps, {torch.get_num_threads()} threads, CPUs {sorted(os.sched_getaffinity(0))}")

    def timed(work) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        work()
        return time.perf_counter() - wall, time.process_time() - cpu

    rates = {}
    for compile in (False, True):
        name = "lrscan batched" + (" + torch.compile" if compile else "")
        with tempfile.TemporaryDirectory() as tmp:
            sweep = Sweep(load_spec(overrides=overrides + [f"compile={str(compile).lower()}"]), f"{tmp}/s.zarr")
            wall, cpu = timed(sweep.run)  # includes compilation, evaluation and store writes
        rates[name] = len(runs) * steps / wall, len(runs) * steps / cpu
        print(f"{name:34s} {len(runs):4d} runs in {wall:7.2f} s ({cpu:7.2f} s CPU): {rates[name][0]:9.0f} "
              f"model-steps/s, {rates[name][1]:9.0f} per CPU-second")

    n_base = args.baseline_runs or len(runs)
    wall, cpu = timed(lambda: [baseline_run(setup, plr, seed, args.epochs, 1) for plr, seed in runs[:n_base]])
    base = n_base * steps / wall, n_base * steps / cpu
    print(f"{'ordinary loop, one run at a time':34s} {n_base:4d} runs in {wall:7.2f} s ({cpu:7.2f} s CPU): "
          f"{base[0]:9.0f} model-steps/s, {base[1]:9.0f} per CPU-second")
    for name, (rate, per_cpu) in rates.items():
        print(f"ratio {name} / ordinary loop: {rate / base[0]:.1f}x wall, {per_cpu / base[1]:.1f}x per CPU-second")

    # What the arithmetic allows on this machine: the matrix products alone, at the rate this
    # core reaches on the trainer's own shapes (its step's batch rows, its evaluation's blocks).
    step_flops, eval_flops = matmul_flops(setup)
    per_step_eval = eval_flops / setup.plan.steps_per_epoch  # evaluated every epoch
    step_rate, eval_rate = gemm_rate(len(runs), spec.batch_size), gemm_rate(len(runs), 256)
    floor = step_flops / step_rate + per_step_eval / eval_rate
    print(f"matrix products per model-step: {step_flops / 1e3:.0f} kFLOP step + {per_step_eval / 1e3:.0f} kFLOP "
          f"evaluation; this core's torch.bmm on them: {step_rate / 1e9:.1f} and {eval_rate / 1e9:.1f} GFLOP/s, "
          f"so at least {floor * 1e6:.1f} us per model-step: at most {1 / floor / base[1]:.1f}x the ordinary "
          f"loop per CPU-second on this machine")


if __name__ == "__main__":
    main()

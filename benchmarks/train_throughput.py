"""Batched sphere training vs an ordinary one-run-at-a-time PyTorch loop, side by side.

Both train the same runs of the synthetic setup (SI MLP on ticks, batch 16) from the same
initial points, for the same number of steps, evaluating train and test sets at the same
epochs.  The baseline is what one would write by hand: an ``nn.Module``, ``torch.optim.SGD``,
a shuffling ``DataLoader``, and a projection back to the sphere after every step.

Run:  python benchmarks/train_throughput.py [--epochs 5] [--baseline-runs 0]
Prints model-steps per second of each and their ratios.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

from lrscan.spec import load_spec
from lrscan.train.engine import layout
from lrscan.train.sweep import Setup, Sweep


def baseline_run(setup: Setup, elr: float, seed: int, epochs: int, log_every: int) -> None:
    """One run the ordinary way: module, optimiser, loader, projection, evaluation."""
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
    for epoch in range(epochs):
        for x, y in loader:
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x)[:, 0], y).backward()
            opt.step()
            with torch.no_grad():
                norm = torch.sqrt(sum(p.square().sum() for p in si))
                for p in si:
                    p.mul_(spec.radius / norm)
        if (epoch + 1) % log_every == 0:
            with torch.no_grad():
                for x, y in ((data.x_train, data.y_train), (data.x_test, data.y_test)):
                    z = model(x)[:, 0]
                    loss_fn(z, y.float()).item(), ((z > 0) == (y == 1)).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=100, help="epochs per run (32 steps each)")
    parser.add_argument("--seeds", type=int, default=11, help="seeds per PLR (runs = 23 x seeds)")
    parser.add_argument("--baseline-runs", type=int, default=23,
                        help="runs the baseline trains (0: all; fewer saves time, its rate is per run)")
    args = parser.parse_args()

    # A reduced grid: the 23 PLRs of the synthetic preset x 11 seeds (the size of its fine-tuning
    # stage, 253 runs), short runs, metrics every epoch for both contenders.
    overrides = [
        f"seeds={args.seeds}", f"pretrain_epochs={args.epochs}", f"finetune_from={args.epochs}",
        "finetune_epochs=0", "log_every=1", f"checkpoint_epochs=[{args.epochs}]", "swa=[]", "device='cpu'",
    ]
    spec = load_spec(overrides=overrides)
    setup = Setup.build(spec)
    runs = [(plr, seed) for plr in spec.plr for seed in spec.seeds]
    steps = setup.plan.pretrain.n_steps
    print(f"synthetic SI MLP, batch {spec.batch_size}, {len(runs)} runs of {steps} steps, metrics every epoch, "
          f"{torch.get_num_threads()} threads")

    rates = {}
    for compile in (False, True):
        name = "lrscan batched" + (" + torch.compile" if compile else "")
        with tempfile.TemporaryDirectory() as tmp:
            sweep = Sweep(load_spec(overrides=overrides + [f"compile={str(compile).lower()}"]), f"{tmp}/s.zarr")
            start = time.perf_counter()
            sweep.run()  # includes compilation, evaluation and store writes
            elapsed = time.perf_counter() - start
        rates[name] = len(runs) * steps / elapsed
        print(f"{name:34s} {len(runs):4d} runs in {elapsed:7.2f} s: {rates[name]:9.0f} model-steps/s")

    n_base = args.baseline_runs or len(runs)
    start = time.perf_counter()
    for plr, seed in runs[:n_base]:
        baseline_run(setup, plr, seed, args.epochs, 1)
    elapsed = time.perf_counter() - start
    base = n_base * steps / elapsed
    print(f"{'ordinary loop, one run at a time':34s} {n_base:4d} runs in {elapsed:7.2f} s: {base:9.0f} model-steps/s")
    for name, rate in rates.items():
        print(f"ratio {name} / ordinary loop: {rate / base:.1f}x")


if __name__ == "__main__":
    main()

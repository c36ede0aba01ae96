"""Where the compiled synthetic trainer's CPU time goes, on train_throughput.py's workload.

Two measurements, one core and one thread:

1. The whole sweep (230 runs x 100 epochs, metrics every epoch, weights every 100 steps,
   compiled), with the engine's step, its evaluation, its construction (torch.compile's imports)
   and the stage loop timed by function; what is left is the data, the store and its writes.
2. The steady state, after compilation: one epoch's 32 steps of every run, and one evaluation
   of the train and test sets, medians of ``--repeats``; with the arithmetic bound of each
   (train_throughput.py's matrix-product FLOPs at this core's bmm rate). The sweep's step and
   evaluation less that many steady epochs is their compilation and first calls.

Run:  python benchmarks/trainer_breakdown.py [--epochs 100] [--seeds 10] [--repeats 3]
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_throughput import gemm_rate, matmul_flops  # noqa: E402

from lrscan.spec import load_spec  # noqa: E402
from lrscan.train import sweep as sweep_module  # noqa: E402
from lrscan.train.engine import Engine  # noqa: E402
from lrscan.train.loop import EVAL_CHUNK  # noqa: E402


def timing(spent: collections.Counter, owner, name: str, key: str) -> None:
    """Wrap ``owner.name`` so that its CPU time adds up in ``spent[key]``."""
    original = getattr(owner, name)

    def timed(*args, **kwargs):
        start = time.process_time()
        try:
            return original(*args, **kwargs)
        finally:
            spent[key] += time.process_time() - start

    setattr(owner, name, timed)


def overrides(epochs: int, seeds: int) -> list[str]:
    return [f"seeds={seeds}", f"pretrain_epochs={epochs}", f"finetune_from={epochs}", "finetune_epochs=0",
            "log_every=1", f"checkpoint_epochs={{start = 0, stop = {epochs}, step = 3.125}}", "swa=[]",
            "device='cpu'", "compile=true"]


def whole_sweep(epochs: int, seeds: int) -> tuple[float, int, collections.Counter]:
    spent: collections.Counter = collections.Counter()
    timing(spent, Engine, "step_on", "step")
    timing(spent, Engine, "evaluate", "evaluation")
    timing(spent, Engine, "__init__", "engine construction (torch.compile's imports)")
    timing(spent, sweep_module, "run_stage", "stage")
    spec = load_spec(overrides=overrides(epochs, seeds))
    with tempfile.TemporaryDirectory() as tmp:
        start = time.process_time()
        sweep = sweep_module.Sweep(spec, f"{tmp}/s.zarr")
        sweep.run()
        total = time.process_time() - start
    model_steps = len(spec.plr) * len(spec.seeds) * sweep.plan.pretrain.n_steps
    return total, model_steps, spent


def steady_state(seeds: int, repeats: int) -> dict[str, float]:
    """CPU seconds of one epoch's steps and of one evaluation, medians after compilation."""
    spec = load_spec(overrides=overrides(1, seeds))
    setup = sweep_module.Setup.build(spec)
    runs = [(plr, seed) for plr in spec.plr for seed in spec.seeds]
    engine = setup.engine(torch.stack([setup.init_weights(seed, 0) for _, seed in runs]), compile=True)
    data, _ = setup.device_data([0])
    which = torch.zeros(len(runs), dtype=torch.long)
    elr = torch.tensor([plr for plr, _ in runs], dtype=torch.float32)
    generator = torch.Generator().manual_seed(0)
    idx = torch.stack([torch.randperm(data.x_train.shape[1], generator=generator)[: spec.batch_size] for _ in runs])

    def steps():
        for _ in range(setup.plan.steps_per_epoch):
            engine.step_on(data.x_train, data.y_train, which, idx, elr)

    def evaluation():
        engine.evaluate(data.x_train, data.y_train, which, EVAL_CHUNK)
        engine.evaluate(data.x_test, data.y_test, which, EVAL_CHUNK)

    steps(), evaluation()  # compiled already by the sweep (the same code): warm-up
    out = {}
    for name, work in (("steps", steps), ("evaluation", evaluation)):
        times = []
        for _ in range(repeats):
            start = time.process_time()
            work()
            times.append(time.process_time() - start)
        out[name] = statistics.median(times)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--seeds", type=int, default=10, help="seeds per PLR (runs = 23 x seeds)")
    parser.add_argument("--repeats", type=int, default=3, help="epochs timed in the steady state (median)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})

    total, model_steps, spent = whole_sweep(args.epochs, args.seeds)
    print(f"whole sweep: {model_steps:,} model-steps in {total:.1f} CPU-s ({total / model_steps * 1e6:.1f} us each)")
    inside = spent["step"] + spent["evaluation"]
    rows = [(name, spent[name]) for name in ("step", "evaluation", "engine construction (torch.compile's imports)")]
    rows += [("the stage loop's own work", spent["stage"] - inside),
             ("the rest: data, store creation and writes", total - spent["stage"] - rows[2][1])]
    for name, seconds in rows:
        print(f"  {name:48s} {seconds:6.1f} s  {seconds / model_steps * 1e6:5.1f} us per model-step")

    spec = load_spec(overrides=overrides(1, args.seeds))
    setup = sweep_module.Setup.build(spec)
    n_runs, per_epoch = len(spec.plr) * len(spec.seeds), setup.plan.steps_per_epoch
    steady = steady_state(args.seeds, args.repeats)
    step_flops, eval_flops = matmul_flops(setup)
    bounds = {"steps": step_flops / gemm_rate(n_runs, spec.batch_size),
              "evaluation": eval_flops / per_epoch / gemm_rate(n_runs, 256)}
    print(f"steady state ({n_runs} runs, one epoch = {per_epoch} steps, medians of {args.repeats}):")
    for name, swept in (("steps", "step"), ("evaluation", "evaluation")):
        per_step = steady[name] / per_epoch / n_runs
        print(f"  {name:10s} {steady[name] * 1e3:6.0f} ms per epoch, {per_step * 1e6:5.1f} us per model-step "
              f"(the matrix products' bound: {bounds[name] * 1e6:.1f} us); the sweep's {swept} beyond "
              f"{args.epochs} such epochs (compilation, first calls): {spent[swept] - steady[name] * args.epochs:.1f} s")


if __name__ == "__main__":
    main()

"""Operations one engine step dispatches: what a GPU launches a kernel for, counted on a CPU.

Every aten operation (views and detach left out: they launch no kernel) of one ``Engine.step_on`` is counted by a ``TorchDispatchMode``, split into
the forward and backward passes and everything after them (the update, the projection onto the
sphere, the gradient norm). SI ResNet-18 (issue 14 counted ~592 per step of one run: 281 forward
and backward, 204 update and projection, 101 gradient-norm bookkeeping) and the SI ConvNet, at
width 8 on planted 32x32 images, for M runs on the vmapped path and run by run. A GPU step is
bounded by these launches when the arithmetic per kernel is small.

Run:  python benchmarks/step_ops.py [--runs 1 4]
"""

from __future__ import annotations

import argparse
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from gpu_engine import setup_for
from lrscan.train.engine import Engine


# Operations that only make a new tensor header (no kernel on any device).
FREE = {torch.ops.aten.detach.default, torch.ops.aten.lift_fresh.default}


class Count(TorchDispatchMode):
    """Counts the aten operations dispatched inside it, under the current phase's name."""

    def __init__(self):
        super().__init__()
        self.ops: Counter = Counter()
        self.phase = "other"

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view and func not in FREE:  # views and detach launch no kernel
            self.ops[self.phase] += 1
        return func(*args, **(kwargs or {}))


def count(model: str, m: int, path: str) -> Counter:
    setup = setup_for(8, "cpu", 256, model)
    flat = torch.stack([setup.init_weights(seed, 0) for seed in range(m)])
    engine = Engine(setup.entry, setup.module, flat, setup.spec.radius, batched=path == "vmap",
                    options=setup.spec.model_options)
    x, y = setup.data[0].x_train[None], setup.data[0].y_train[None]
    which, elr = torch.zeros(m, dtype=torch.long), torch.full((m,), 0.01)
    idx = torch.arange(128).repeat(m, 1)
    engine.step_on(x, y, which, idx, elr)  # warm-up: lazy initialisation is not a step's work
    counter = Count()
    grads = engine._grads

    def phased(*args, **kwargs):  # forward and backward as their own phase
        counter.phase = "forward + backward"
        try:
            return grads(*args, **kwargs)
        finally:
            counter.phase = "update, projection, norms"
    engine._grads = phased
    with counter:
        engine.step_on(x, y, which, idx, elr)
    return counter.ops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args()
    for model in ("resnet18si", "convnetsi"):
        for m in args.runs:
            for path in ("vmap", "runs") if m > 1 else ("vmap",):
                ops = count(model, m, path)
                parts = ", ".join(f"{phase} {n}" for phase, n in sorted(ops.items()))
                print(f"{model} M = {m} {path:4s}: {sum(ops.values()):5d} operations per step ({parts})", flush=True)


if __name__ == "__main__":
    main()

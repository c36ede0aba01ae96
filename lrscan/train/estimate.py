"""What a sweep will take — runs, store size, model-steps — worked out before anything is allocated."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from lrscan.errors import LrscanError
from lrscan.store import is_local
from lrscan.train.plan import Plan

# More model-steps than this (three years at a microsecond each) are refused as a mistake.
MAX_MODEL_STEPS = 10**14


@dataclass(frozen=True)
class Estimate:
    """What a sweep will take, worked out before anything is allocated."""

    runs: int  # runs of every stage
    store_bytes: int  # the store once every run is written (weights and metric rows)
    model_steps: int  # training steps of all runs

    def describe(self) -> str:
        return (f"{self.runs:,} runs, about {human_bytes(self.store_bytes)} of store, "
                f"{self.model_steps:,} model-steps")

    def check(self, store: str | os.PathLike) -> None:
        """Refuse a sweep of more model-steps than any machine trains, or a new local store that
        cannot fit on its disk."""
        if self.model_steps > MAX_MODEL_STEPS:
            raise LrscanError(f"this sweep cannot be trained: {self.describe()}; at a microsecond per model-step "
                              f"that is {self.model_steps / 1e6 / 3.15e7:,.3g} years")
        if not is_local(store):
            return
        place = Path(os.path.abspath(store))
        if place.exists():
            return  # made already: what it needs is allocated
        while not place.exists():
            place = place.parent
        free = shutil.disk_usage(place).free
        if self.store_bytes > free:
            raise LrscanError(f"this sweep cannot fit: {self.describe()}, but {place} has {human_bytes(free)} free; "
                              "use fewer runs, checkpoints or parameters, or another --store")


def human_bytes(n: float) -> str:
    """A byte count as it reads: 3 significant digits and a decimal unit."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} PB"


def estimate(plan: Plan, n_params: int) -> Estimate:
    """The runs, store size and model-steps of a planned sweep with ``n_params`` parameters per run."""
    spec = plan.spec
    n_seeds = len(plan.runs)
    stages = {"pretrain": (len(spec.plr) * n_seeds, plan.pretrain)}
    if plan.finetune.n_steps:
        stages["finetune"] = (len(spec.plr) * len(spec.flr) * n_seeds, plan.finetune)
    n_metrics = 8
    runs = steps = size = 0
    for n_runs, stage in stages.values():
        runs += n_runs
        steps += n_runs * stage.n_steps
        size += n_runs * (stage.checkpoint_steps.size * n_params + stage.log_steps.size * n_metrics) * 4
    if plan.swa_steps:
        n_runs = len(spec.plr) * n_seeds
        runs += n_runs
        size += n_runs * len(plan.swa_steps) * (n_params + n_metrics) * 4
    return Estimate(runs, size, steps)

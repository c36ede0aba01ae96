"""Analyses of a store larger than the memory they may use still complete."""

import tracemalloc

import numpy as np
import pytest
import torch

import lrscan
from lrscan.spec import load_spec
from lrscan.store import RunData, StoreWriter, create_or_check
from lrscan.train.flat import project
from lrscan.train.sweep import Setup
from tests.conftest import SMALL

# Width 256: 73,984 parameters (296 KB) per stored vector, about 180 MB of weights in all.
WIDE = SMALL + ["model.width=256", "plr=[1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3]",
                "flr=[1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3]", "seeds=4"]


@pytest.fixture(scope="module")
def big_store(tmp_path_factory):
    """A store of random points on the sphere (no training needed to test reading)."""
    path = tmp_path_factory.mktemp("big") / "big.zarr"
    setup = Setup.build(load_spec(overrides=WIDE))
    from lrscan.train.flat import layout

    layers = layout(setup.entry, setup.module)
    create_or_check(path, setup.plan, layers)
    writer = StoreWriter(path)
    rng = np.random.default_rng(0)
    n_params = layers[-1].stop

    def points(*shape):
        flat = torch.from_numpy(rng.standard_normal((int(np.prod(shape)), n_params), dtype=np.float32))
        return project(flat, layers, 1.0).numpy().reshape(*shape, n_params)

    plan = setup.plan
    metric = lambda n: {name: rng.random(n, dtype=np.float32) for name in  # noqa: E731
                        ("train_loss", "train_acc", "test_loss", "test_acc", "weight_norm", "grad_norm")}
    n_log_pt, n_log_ft = plan.pretrain.log_steps.size, plan.finetune.log_steps.size
    for stage, shape, n_ckpt, n_log in (("pretrain", (8, 4), plan.pretrain.checkpoint_steps.size, n_log_pt),
                                        ("finetune", (8, 6, 4), plan.finetune.checkpoint_steps.size, n_log_ft)):
        runs = list(np.ndindex(*shape))
        weights = points(len(runs), n_ckpt)
        writer.write_runs(stage, [RunData(idx, metric(n_log), weights[i]) for i, idx in enumerate(runs)])
    runs = list(np.ndindex(8, 4))
    swa = points(len(runs), len(plan.swa_steps))
    writer.write_runs("swa", [RunData(idx, {k: v[:2] for k, v in metric(2).items() if k != "grad_norm"}, swa[i])
                              for i, idx in enumerate(runs)])
    return path


def stored_weight_bytes(tree):
    return sum(tree[g]["weights"].nbytes for g in ("pretrain/weights", "finetune/weights", "swa/weights"))


@pytest.mark.parametrize("name", ["angles", "group_norms"])
def test_lazy_analyzers_stay_within_a_small_memory_budget(big_store, name):
    tree = lrscan.open(big_store)
    total = stored_weight_bytes(tree)
    budget = total // 8
    assert total > 150e6
    result = getattr(tree.lrscan, name)()
    tracemalloc.start()
    try:
        computed = result.compute(scheduler="threads", num_workers=2)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < budget, f"{name} peaked at {peak / 1e6:.1f} MB for {total / 1e6:.1f} MB of weights"
    assert all(np.isfinite(v.values).any() for v in computed.data_vars.values())


def test_the_budget_is_one_that_eager_loading_would_break(big_store):
    tree = lrscan.open(big_store)
    budget = stored_weight_bytes(tree) // 8
    tracemalloc.start()
    try:
        tree["finetune/weights"]["weights"].values
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak > budget

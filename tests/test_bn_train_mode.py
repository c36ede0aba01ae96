"""BatchNorm models measured as the study measures them: train-mode running train metrics
logged beside the eval-mode ones, and the train error barrier in train-mode BatchNorm."""

import copy

import numpy as np
import pytest
import torch
import xarray as xr
import zarr
from torch.nn import functional as F

import lrscan
from lrscan.analyze.solutions import solution_weights
from lrscan.errors import LrscanError
from lrscan.spec import load_spec
from lrscan.store import create_or_check, read_spec, verify
from lrscan.train.loop import METRICS, epoch_order, run_stage
from lrscan.train.sweep import Setup, train
from tests.conftest import SMALL, train_store, two_run_stage

# A narrow SI ConvNet (BatchNorm without affine parameters) on 8x8 planted-frequency images:
# 8 steps per epoch, a low PLR that learns and a high one that stays chaotic.
TINY = ["plr=[0.003, 0.03]", "flr=[0.001, 0.003]", "seeds=1", "batch_size=32", "pretrain_epochs=3",
        "finetune_epochs=1", "finetune_from=3", "log_every=1", "checkpoint_epochs=1", "swa=[2]",
        "device='cpu'", "model.width=4", "data.size=8", "data.n_train=256", "data.n_test=128"]
RUNNING = ("running_train_loss", "running_train_acc")


@pytest.fixture(scope="module")
def bn_store(tmp_path_factory):
    return train_store(tmp_path_factory, TINY, "planted-convnet")


def module_at(setup: Setup, flat: torch.Tensor) -> torch.nn.Module:
    """A plain copy of the setup's module holding the flat state ``flat`` (P,)."""
    module = copy.deepcopy(setup.module)
    module.load_state_dict({l.name: flat[l.start:l.stop].reshape(l.shape) for l in setup.layers}, strict=False)
    return module


def plain_torch_running_metrics(setup: Setup, elr: float, n_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Pre-train seed 0 with ordinary torch (module in train mode, projected SGD on the sphere)
    and average each step's batch loss and accuracy over the steps of each epoch."""
    spec, plan = setup.spec, setup.plan
    module = module_at(setup, setup.init_weights(0, 0))
    module.train()
    si = [p for name, p in module.named_parameters() if setup.entry.is_si(name)]
    data, b, spe = setup.data[0], spec.batch_size, plan.steps_per_epoch
    # The trainer's rounding (a float32 step size, the sphere's scale from a float32 norm summed
    # over the SI weights side by side in one row): the chaotic PLR amplifies any other rounding
    # into a different trajectory within an epoch.
    lr = torch.tensor(elr, dtype=torch.float32) * spec.radius**2
    losses, accs = [], []
    for step in range(n_steps):
        if step % spe == 0:
            order = epoch_order([(0, 0)], "pretrain", step // spe, len(data.x_train), "cpu")[0]
        idx = order[(step % spe) * b:(step % spe + 1) * b]
        logits = module(data.x_train[idx])
        loss = F.cross_entropy(logits, data.y_train[idx], reduction="none").mean()
        losses.append(loss.item())
        accs.append((logits.argmax(1) == data.y_train[idx]).double().mean().item())
        grads = torch.autograd.grad(loss, si)
        with torch.no_grad():
            moved = [p - lr * g for p, g in zip(si, grads)]
            scale = spec.radius / torch.cat([m.reshape(1, -1) for m in moved], 1).square().sum(1).sqrt()[0]
            for p, m in zip(si, moved):
                p.copy_(m * scale)
    per_epoch = lambda v: np.r_[np.nan, np.reshape(v, (-1, spe)).mean(1)]  # noqa: E731
    return per_epoch(losses), per_epoch(accs)


def test_running_train_metrics_are_the_mean_of_the_steps_own_batches(bn_store):
    tree = lrscan.open(bn_store)
    pt = tree["pretrain/metrics"].to_dataset().load()
    setup = Setup.build(read_spec(bn_store))
    for i, elr in enumerate(setup.spec.plr):
        loss, acc = plain_torch_running_metrics(setup, elr, setup.plan.pretrain.n_steps)
        np.testing.assert_allclose(pt.running_train_loss.isel(plr=i, seed=0), loss, rtol=1e-6)
        np.testing.assert_allclose(pt.running_train_acc.isel(plr=i, seed=0), acc, rtol=1e-6)
    # Train mode is not eval mode: the running rows differ from the full-set evaluations.
    assert float(abs(pt.running_train_acc - pt.train_acc).max()) > 0.01
    ft = tree["finetune/metrics"].to_dataset().load()
    for ds in (pt, ft):  # the first row of a stage has no steps behind it, like grad_norm
        for name in (*RUNNING, "grad_norm"):
            assert np.isnan(ds[name].isel(epoch=0)).all() and np.isfinite(ds[name].isel(epoch=slice(1, None))).all()
    assert set(RUNNING) <= set(METRICS) and not set(RUNNING) & set(tree["swa/metrics"].data_vars)
    assert verify(bn_store) == []


def test_a_resumed_bn_stage_gives_the_same_running_metrics():
    setup, start, dev, stage, kwargs = two_run_stage([*TINY, "data.n_train=64"])
    snaps = []
    whole = run_stage(setup.engine(start), dev, stage, snapshot=snaps.append, snapshot_every=0.0, **kwargs)
    middle = next(s for s in snaps if s.step == 4)
    resumed = run_stage(setup.engine(start), dev, stage, resume=copy.deepcopy(middle), **kwargs)
    for name in METRICS:
        np.testing.assert_array_equal(resumed.metrics[name], whole.metrics[name], err_msg=name)
    assert np.isfinite(whole.metrics["running_train_acc"][:, 1:]).all()
    # A snapshot from before these metrics existed resumes too: its earlier rows are unknown.
    old = copy.deepcopy(middle)
    for name in RUNNING:
        del old.metrics[name]
    resumed = run_stage(setup.engine(start), dev, stage, resume=old, **kwargs)
    for name in RUNNING:
        assert np.isnan(resumed.metrics[name][:, :3]).all()
        np.testing.assert_array_equal(resumed.metrics[name][:, 3], whole.metrics[name][:, 3])


def test_the_compiled_step_reports_what_the_eager_one_does():
    # The compiled batched step differentiates through torch.func.grad, with the scores as aux.
    setup = Setup.build(load_spec(overrides=SMALL))
    start = torch.stack([setup.init_weights(s, 0) for s in (0, 1)])
    eager, compiled = setup.engine(start), setup.engine(start, compile=True)
    x, y = setup.data[0].x_train[:32].reshape(2, 16, -1), setup.data[0].y_train[:32].reshape(2, 16)
    for _ in range(3):
        a, b = (e.step(x, y, torch.tensor([0.01, 0.3])) for e in (eager, compiled))
        for name in ("grad_norm", "loss", "acc"):
            torch.testing.assert_close(getattr(b, name), getattr(a, name), rtol=1e-4, atol=1e-6)


def plain_torch_train_mode_error(setup: Setup, flat: np.ndarray) -> float:
    """Train error (%) of one state with torch's own train-mode BatchNorm, batches in order."""
    module = module_at(setup, torch.from_numpy(flat))
    module.train()
    x, y, b = setup.data[0].x_train, setup.data[0].y_train, setup.spec.batch_size
    with torch.no_grad():
        correct = sum(int((module(x[i:i + b]).argmax(1) == y[i:i + b]).sum()) for i in range(0, len(x), b))
    return 100 * (1 - correct / len(x))


def test_the_train_error_barrier_uses_train_mode_batchnorm(bn_store):
    tree = lrscan.open(bn_store)
    train_mode = tree.lrscan.barriers(n_points=3)
    eval_mode = tree.lrscan.barriers(n_points=3, bn_mode="eval")
    assert train_mode.attrs["bn_mode"] == "train" and eval_mode.attrs["bn_mode"] == "eval"
    assert train_mode.train_error.attrs["bn_mode"] == "train" and train_mode.test_error.attrs["bn_mode"] == "eval"
    setup = Setup.build(read_spec(bn_store))
    weights = solution_weights(tree).load()
    for pair in train_mode.pair.values:
        ends = train_mode.sel(pair=pair)
        for alpha, end in ((0, str(ends.pair_a.values)), (1, str(ends.pair_b.values))):
            for i in range(train_mode.sizes["plr"]):
                expected = plain_torch_train_mode_error(setup, weights.sel(solution=end).isel(plr=i, seed=0).values)
                got = float(ends.train_error.isel(plr=i, seed=0).sel(alpha=alpha))
                assert got == pytest.approx(expected, abs=1e-4), (pair, alpha, i)
    # Batch statistics are not the recomputed running ones: the train curves differ; the test
    # error is eval mode in both.
    assert float(abs(train_mode.train_error - eval_mode.train_error).max()) > 0.1
    xr.testing.assert_equal(train_mode.test_error, eval_mode.test_error)


def test_train_mode_evaluation_leaves_the_running_statistics_alone(bn_store):
    setup = Setup.build(read_spec(bn_store))
    final = lrscan.open(bn_store)["pretrain/weights"]["weights"].isel(seed=0, epoch=-1).values
    engine = setup.engine(torch.from_numpy(final))
    before = engine.flat().clone()
    own = {n: b.clone() for n, b in setup.module.named_buffers()}
    data = setup.data[0]
    engine.evaluate_train_mode(data.x_train[None], data.y_train[None], torch.tensor([0, 0]), 32)
    torch.testing.assert_close(engine.flat(), before, rtol=0, atol=0)
    for name, b in setup.module.named_buffers():
        torch.testing.assert_close(b, own[name], rtol=0, atol=0)


def test_both_modes_are_one_evaluation_without_batchnorm(trained_small):
    tree = lrscan.open(trained_small)
    train_mode = tree.lrscan.barriers(pairs=[("pt", "ft_low")], n_points=3)
    eval_mode = tree.lrscan.barriers(pairs=[("pt", "ft_low")], n_points=3, bn_mode="eval")
    xr.testing.assert_equal(train_mode, eval_mode)
    assert train_mode.attrs["bn_mode"] == "train"
    # Without BatchNorm a training step's forward pass is an eval-mode one: the running rows
    # are means of what the full-set rows measure, batch by batch.
    pt = tree["pretrain/metrics"].to_dataset()
    assert np.isfinite(pt.running_train_loss.isel(epoch=slice(1, None))).all()


def test_an_unknown_bn_mode_is_refused(trained_small):
    with pytest.raises(LrscanError, match="bn_mode must be one of 'eval', 'train', got 'batch'"):
        lrscan.open(trained_small).lrscan.barriers(bn_mode="batch")


def test_a_store_made_before_the_running_metrics_finishes_without_them(tmp_path):
    # Such a store has schema 1 too: it trains to the end and verifies, without the variables.
    spec = load_spec(overrides=SMALL)
    path = tmp_path / "old.zarr"
    setup = Setup.build(spec)
    create_or_check(path, setup.plan, setup.layers)
    for stage in ("pretrain", "finetune"):
        group = zarr.open_group(str(path), path=f"{stage}/metrics", mode="r+")
        for name in RUNNING:
            del group[name]
    train(spec, path)
    assert verify(path) == []
    pt = lrscan.open(path)["pretrain/metrics"]
    assert not set(RUNNING) & set(pt.data_vars) and bool(pt["done"].all())

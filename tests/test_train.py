import numpy as np
import pytest
import torch
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

import lrscan
from lrscan.models import MODELS
from lrscan.store import open_store
from lrscan.testing import assert_on_sphere, assert_stores_identical
from lrscan.train.engine import Engine
from lrscan.train.flat import layout, project, si_norm
from lrscan.train.loop import DeviceData, run_stage
from lrscan.train.plan import Plan, Stage
from lrscan.train.sweep import Setup, train


def small_engine(small_spec, elr=(0.01, 0.3), *, batched=True, compile=False):
    setup = Setup.build(small_spec())
    start = torch.stack([setup.init_weights(seed, 0) for seed in range(len(elr))])
    engine = Engine(setup.entry, setup.module, start, setup.spec.radius, batched=batched, compile=compile)
    data = setup.data[0]
    dev = DeviceData(data.x_train[None], data.y_train[None], data.x_test[None], data.y_test[None])
    return setup, engine, dev


def test_sphere_invariant_after_every_step(small_spec):
    setup, engine, data = small_engine(small_spec, elr=(0.01, 0.3, 3.0))
    elr = torch.tensor([0.01, 0.3, 3.0])
    assert torch.allclose(engine.weight_norm(), torch.ones(3, dtype=torch.float64), atol=1e-6)
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        idx = torch.randint(0, data.x_train.shape[1], (3, 16), generator=g)
        before = engine.flat()
        engine.step(data.x_train[0][idx], data.y_train[0][idx], elr)
        norm = engine.weight_norm()
        assert torch.allclose(norm, torch.full_like(norm, setup.spec.radius), rtol=1e-5), norm
        assert not torch.equal(before, engine.flat())
    # The frozen head never moves and keeps Frobenius norm 10.
    head = engine.frozen["head.weight"]
    assert torch.allclose(head.flatten(1).norm(dim=1), torch.full((3,), 10.0))


def test_radius_scales_the_step_so_direction_is_unchanged(small_spec):
    # lr = ELR * radius^2 makes training on any sphere the same walk, up to scale.
    _, e1, data = small_engine(small_spec)
    setup = Setup.build(small_spec("radius=5.0"))
    start = torch.stack([setup.init_weights(0, 0), setup.init_weights(1, 0)])
    e5 = Engine(setup.entry, setup.module, start, 5.0, batched=True)
    assert torch.allclose(e5.weight_norm(), torch.full((2,), 5.0, dtype=torch.float64))
    idx = torch.arange(32).reshape(2, 16)
    for _ in range(5):
        for e in (e1, e5):
            e.step(data.x_train[0][idx], data.y_train[0][idx], torch.tensor([0.01, 0.3]))
    layers = e1.layers
    si = torch.cat([torch.arange(l.start, l.stop) for l in layers if l.si])
    torch.testing.assert_close(e5.flat()[:, si] / 5.0, e1.flat()[:, si], rtol=1e-4, atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(scale=st.floats(0.1, 1e3), which=st.sampled_from(["hidden.0.weight", "hidden.1.weight", "both"]))
def test_model_output_is_scale_invariant_in_the_si_group(scale, which):
    # From PyTorch's default init; LayerNorm's eps (1e-7) only matters for far smaller weights.
    entry = MODELS["mlp"]
    torch.manual_seed(0)
    model = entry.build(entry.defaults, (32,), 2)
    x = torch.randn(64, 32)
    ref = model(x)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if entry.is_si(name) and which in (name, "both"):
                p.mul_(scale)
    torch.testing.assert_close(model(x), ref, rtol=1e-4, atol=1e-4)


def test_si_group_and_layout_of_the_mlp():
    entry = MODELS["mlp"]
    model = entry.build(entry.defaults, (32,), 2)
    layers = layout(entry, model)
    assert [(l.name, l.si, l.trainable) for l in layers] == [
        ("hidden.0.weight", True, True), ("hidden.1.weight", True, True), ("head.weight", False, False)]
    assert sum(l.stop - l.start for l in layers if l.si) == 2048
    flat = torch.randn(3, layers[-1].stop)
    torch.testing.assert_close(si_norm(project(flat, layers, 2.0), layers), torch.full((3,), 2.0, dtype=torch.float64))


def test_batched_and_sequential_paths_give_the_same_weights(small_spec, tmp_path):
    spec = small_spec()
    train(spec, tmp_path / "batched.zarr", batched=True)
    train(spec, tmp_path / "sequential.zarr", batched=False)
    a, b = open_store(tmp_path / "batched.zarr"), open_store(tmp_path / "sequential.zarr")
    for group in ("pretrain/weights", "finetune/weights", "swa/weights", "pretrain/metrics", "finetune/metrics"):
        xr.testing.assert_allclose(a[group].to_dataset().load(), b[group].to_dataset().load(), rtol=1e-6, atol=1e-7)


def test_compiled_step_matches_eager(small_spec):
    _, eager, data = small_engine(small_spec)
    _, compiled, _ = small_engine(small_spec, compile=True)
    idx = torch.arange(32).reshape(2, 16)
    for _ in range(5):
        for e in (eager, compiled):
            e.step(data.x_train[0][idx], data.y_train[0][idx], torch.tensor([0.01, 0.3]))
    torch.testing.assert_close(compiled.flat(), eager.flat(), rtol=1e-4, atol=1e-5)


def test_a_step_on_positions_gathers_inside_the_compiled_step_and_equals_a_step_on_the_batch(small_spec):
    _, given, data = small_engine(small_spec, compile=True)
    _, gathered, _ = small_engine(small_spec, compile=True)
    assert gathered._step_on is not None  # the compiled batched engine gathers in its graph
    which = torch.zeros(2, dtype=torch.long)
    for step in range(5):
        idx = torch.arange(32).reshape(2, 16).roll(7 * step)
        a = given.step(data.x_train[0][idx], data.y_train[0][idx], torch.tensor([0.01, 0.3]))
        b = gathered.step_on(data.x_train, data.y_train, which, idx, torch.tensor([0.01, 0.3]))
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(gathered.flat(), given.flat(), rtol=1e-6, atol=1e-7)


def test_evaluate_cuts_runs_into_equal_chunks_and_scores_a_run_alike_alone_and_in_a_batch(small_spec, monkeypatch):
    """Five runs in chunks of at most 4 go as 3 + 3 (the last padded), not 4 + 1 padded to 4;
    samples go in blocks of eval_samples on the CPU; each run's scores equal its own engine's,
    bit for bit, whether its chunk's datasets are one (broadcast) or several (gathered)."""
    import lrscan.train.engine as engine_module
    from lrscan.train.engine import eval_samples

    monkeypatch.setattr(engine_module, "CPU_EVAL_SAMPLES", 48)  # the small test set is 128 samples
    setup, engine, data = small_engine(small_spec, elr=(0.01, 0.03, 0.1, 0.3, 1.0))
    shapes = []
    real = engine._eval
    engine._eval = lambda params, x, y: shapes.append(tuple(x.shape[:2])) or real(params, x, y)
    n = data.x_test.shape[1]
    loss, acc = engine.evaluate(data.x_test, data.y_test, torch.zeros(5, dtype=torch.long), chunk=4)
    blocks = [min(eval_samples("cpu"), n - first) for first in range(0, n, eval_samples("cpu"))]
    assert shapes == [(3, b) for b in blocks] * 2
    two = (torch.cat([data.x_test, data.x_test]), torch.cat([data.y_test, data.y_test]))
    which = torch.tensor([0, 1, 0, 1, 1])
    gathered = engine.evaluate(*two, which, chunk=4)
    for m in range(5):
        alone = Engine(setup.entry, setup.module, engine.flat()[m : m + 1], setup.spec.radius, batched=True)
        one = alone.evaluate(data.x_test, data.y_test, torch.zeros(1, dtype=torch.long), chunk=4)
        assert (one[0].item(), one[1].item()) == (loss[m].item(), acc[m].item()) == (gathered[0][m].item(),
                                                                                      gathered[1][m].item())


@pytest.mark.parametrize("tf32", [True, False])
def test_tf32_is_scoped_to_the_engine(small_spec, tf32):
    """The engine's TF32 choice holds inside its steps, scores and BN passes, and torch's global
    settings are as they were after each call (and after a call that raised)."""
    from lrscan.train.engine import tf32_scope

    setup, _, data = small_engine(small_spec)
    start = torch.stack([setup.init_weights(seed, 0) for seed in range(2)])
    engine = Engine(setup.entry, setup.module, start, setup.spec.radius, batched=True, tf32=tf32)
    seen = []
    real = engine.logits
    engine.logits = lambda params, x: seen.append((torch.backends.cuda.matmul.allow_tf32,
                                                  torch.backends.cudnn.allow_tf32)) or real(params, x)
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    before = matmul.allow_tf32, cudnn.allow_tf32
    for outside in (not tf32, tf32):
        matmul.allow_tf32 = cudnn.allow_tf32 = outside
        idx = torch.arange(32).reshape(2, 16)
        engine.step_on(data.x_train, data.y_train, torch.zeros(2, dtype=torch.long), idx, torch.tensor([0.01, 0.3]))
        engine.evaluate(data.x_test, data.y_test, torch.zeros(2, dtype=torch.long), chunk=2)
        assert (matmul.allow_tf32, cudnn.allow_tf32) == (outside, outside)
    with pytest.raises(RuntimeError):
        with tf32_scope(tf32):
            assert (matmul.allow_tf32, cudnn.allow_tf32) == (tf32, tf32)
            raise RuntimeError
    assert (matmul.allow_tf32, cudnn.allow_tf32) == (tf32, tf32)
    matmul.allow_tf32, cudnn.allow_tf32 = before
    assert seen and set(seen) == {(tf32, tf32)}


def test_same_spec_gives_an_identical_store(small_spec, tmp_path):
    spec = small_spec()
    train(spec, tmp_path / "a.zarr")
    train(spec, tmp_path / "b.zarr")
    assert_stores_identical(tmp_path / "a.zarr", tmp_path / "b.zarr")
    other = small_spec("seeds=[5, 6]")
    train(other, tmp_path / "c.zarr")
    with pytest.raises(AssertionError):
        assert_stores_identical(tmp_path / "a.zarr", tmp_path / "c.zarr")


def test_store_opens_lazily_with_labeled_dims(trained_small, small_spec):
    tree = lrscan.open(trained_small)
    pt, ft = tree["pretrain/metrics"], tree["finetune/metrics"]
    assert pt["test_acc"].dims == ("plr", "seed", "epoch")
    assert ft["test_acc"].dims == ("plr", "flr", "seed", "epoch")
    assert tree["pretrain/weights"]["weights"].dims == ("plr", "seed", "epoch", "param")
    assert tree["finetune/weights"]["weights"].dims == ("plr", "flr", "seed", "epoch", "param")
    assert tree["swa/metrics"]["test_acc"].dims == ("plr", "seed", "swa")
    for group in ("pretrain/metrics", "pretrain/weights", "finetune/weights", "swa/weights"):
        for var in tree[group].data_vars.values():
            assert var.chunks is not None, f"{group}/{var.name} is not dask-backed"
    spec = small_spec()
    np.testing.assert_array_equal(pt.plr, spec.plr)
    np.testing.assert_array_equal(ft.flr, spec.flr)
    np.testing.assert_array_equal(pt.epoch, np.arange(5.0))
    np.testing.assert_array_equal(ft.epoch, [4.0, 5.0, 6.0])
    # Checkpoints every epoch of pre-training; the end of fine-tuning.
    np.testing.assert_array_equal(tree["pretrain/weights"].epoch, np.arange(5.0))
    np.testing.assert_array_equal(tree["finetune/weights"].epoch, [5.0, 6.0])
    assert tree.attrs["spec"] == spec.to_dict()
    assert bool((pt["done"] == 1).all()) and bool((ft["done"] == 1).all())
    assert_on_sphere(tree, "pretrain/weights")
    assert_on_sphere(tree, "finetune/weights")
    assert_on_sphere(tree, "swa/weights")
    np.testing.assert_allclose(pt["weight_norm"].values, 1.0, rtol=1e-5)


def test_store_round_trip_equals_what_the_loop_produced(small_spec, trained_small):
    """Values read back equal a direct run of the stage loop over the same (plr, seed) runs."""
    spec = small_spec()
    setup = Setup.build(spec)
    data = setup.data[0]
    dev = DeviceData(data.x_train[None], data.y_train[None], data.x_test[None], data.y_test[None])
    runs = [(p, s) for p in range(len(spec.plr)) for s in spec.seeds]
    start = torch.stack([setup.init_weights(s, 0) for _, s in runs])
    engine = Engine(setup.entry, setup.module, start, spec.radius, batched=True)
    result = run_stage(engine, dev, setup.plan.pretrain, elr=torch.tensor([spec.plr[p] for p, _ in runs]),
                       seeds=[(s, 0) for _, s in runs], batch_size=spec.batch_size,
                       steps_per_epoch=setup.plan.steps_per_epoch)
    tree = lrscan.open(trained_small)
    for i, (p, s) in enumerate(runs):
        stored = tree["pretrain/metrics"].isel(plr=p, seed=s)
        for name, values in result.metrics.items():
            np.testing.assert_array_equal(stored[name].values, values[i], err_msg=name)
        np.testing.assert_array_equal(tree["pretrain/weights"]["weights"].isel(plr=p, seed=s).values,
                                      result.weights[i])


def test_finetune_branches_from_the_stored_pretrain_point(trained_small):
    tree = lrscan.open(trained_small)
    branch = tree["pretrain/weights"]["weights"].sel(epoch=4.0)
    start = tree["finetune/metrics"].sel(epoch=4.0)
    end = tree["pretrain/metrics"].sel(epoch=4.0)
    # The first fine-tuning row is the pre-training point itself, for every FLR.
    for flr in start.flr.values:
        np.testing.assert_allclose(start["test_loss"].sel(flr=flr).values, end["test_loss"].values, rtol=1e-6)
    assert branch.notnull().all()


def test_swa_is_the_projected_mean_of_the_last_k_checkpoints(trained_small):
    tree = lrscan.open(trained_small)
    pt = tree["pretrain/weights"]["weights"].load().astype(np.float64)
    layers = tree["layers"].to_dataset().load()
    si = np.concatenate([np.arange(a, b) for a, b, s in zip(layers.start.values, layers.stop.values, layers.si.values) if s])
    for k in (2, 3):
        mean = pt.isel(epoch=slice(-k, None)).mean("epoch")
        norm = np.sqrt((mean.isel(param=si) ** 2).sum("param"))
        expected = mean.copy()
        expected[..., si] = mean[..., si] / norm
        np.testing.assert_allclose(tree["swa/weights"]["weights"].sel(swa=k).values, expected.values, rtol=1e-5, atol=1e-6)


def test_seeds_share_init_and_batch_order_across_learning_rates(trained_small):
    w = lrscan.open(trained_small)["pretrain/weights"]["weights"]
    init = w.sel(epoch=0.0).values  # (plr, seed, param)
    np.testing.assert_array_equal(init[0], init[1])
    assert not np.array_equal(init[:, 0], init[:, 1])


def test_divergence_is_recorded_and_the_sweep_goes_on(small_spec, tmp_path):
    # An ELR of 1e38 overflows float32 on the first step.
    spec = small_spec("plr=[0.01, 1e38]", "seeds=1")
    train(spec, tmp_path / "d.zarr")
    pt = lrscan.open(tmp_path / "d.zarr")["pretrain/metrics"].load()
    assert np.isnan(pt.diverged_epoch.sel(plr=0.01)).all()
    assert (pt.diverged_epoch.sel(plr=1e38) == 1.0).all()  # seen at the first logged epoch
    assert (pt.done == 1).all()
    assert np.isfinite(pt.test_loss.sel(plr=0.01)).all()


def test_divergence_in_one_run_leaves_the_others_untouched(small_spec):
    setup, engine, data = small_engine(small_spec)
    stage = Stage("pretrain", 0, 8, np.array([0, 4, 8]), np.array([8]))
    result = run_stage(engine, data, stage, elr=torch.tensor([0.01, float("inf")]), seeds=[(0, 0), (1, 0)],
                       batch_size=16, steps_per_epoch=4)
    assert result.diverged_step.tolist() == [-1, 4]
    assert np.isfinite(result.weights[0]).all() and not np.isfinite(result.weights[1]).all()
    _, alone, _ = small_engine(small_spec, elr=(0.01,))
    solo = run_stage(alone, data, stage, elr=torch.tensor([0.01]), seeds=[(0, 0)], batch_size=16, steps_per_epoch=4)
    np.testing.assert_allclose(result.weights[0], solo.weights[0], rtol=1e-5, atol=1e-6)


def test_plan_turns_epochs_into_whole_steps(small_spec):
    from lrscan.errors import LrscanError

    plan = Plan.build(small_spec("log_every=0.5"), 64)
    assert plan.steps_per_epoch == 4
    assert plan.pretrain.log_steps.tolist() == list(range(0, 17, 2))
    with pytest.raises(LrscanError, match=r"log_every = 0.3 epochs is not a whole number of steps \(4 steps per epoch\)"):
        Plan.build(small_spec("log_every=0.3"), 64)
    with pytest.raises(LrscanError, match="batch_size = 128 exceeds the 64 training samples"):
        Plan.build(small_spec("batch_size=128"), 64)
    with pytest.raises(LrscanError, match="swa = 9 needs 9 pre-training checkpoints"):
        Plan.build(small_spec("swa=[9]"), 64)


def test_training_learns_the_ticks(small_spec, tmp_path):
    spec = small_spec("plr=[0.003]", "seeds=1", "pretrain_epochs=60", "finetune_from=60", "log_every=20",
                      "checkpoint_epochs=20", "data.n_train=256", "data.n_test=512")
    train(spec, tmp_path / "l.zarr")
    end = lrscan.open(tmp_path / "l.zarr")["pretrain/metrics"].isel(epoch=-1).load()
    # A small learning rate converges (regime 1) and generalises well above chance (0.5).
    assert float(end.train_loss.max()) < 0.01 and float(end.train_acc.min()) == 1.0
    assert float(end.test_acc.min()) > 0.6


def test_an_interrupted_sweep_resumes_to_an_identical_store(small_spec, tmp_path, monkeypatch):
    """Crash after some batches are written: the rerun redoes only what is missing, bit for bit."""
    import lrscan.train.sweep as sweep_module

    spec = small_spec()
    # Fine-tuning keeps 2 checkpoints per run: batches of 3 runs.
    monkeypatch.setattr(sweep_module, "BATCH_BYTES", 4 * 2080 * 2 * 3)
    train(spec, tmp_path / "whole.zarr")

    def crash_in_finetune(progress):
        if progress.phase == "finetune" and progress.done > 4 * 16 + 3 * 8:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        train(spec, tmp_path / "resumed.zarr", progress=crash_in_finetune)
    sweep = sweep_module.Sweep(spec, tmp_path / "resumed.zarr")
    assert sweep.todo["pretrain"] == [] and 0 < len(sweep.todo["finetune"]) < 8
    assert sweep.run()["finetune"] == len(sweep.todo["finetune"])
    assert_stores_identical(tmp_path / "whole.zarr", tmp_path / "resumed.zarr")


def test_a_plr_subset_trains_only_its_runs_and_the_rest_completes_later(small_spec, tmp_path, trained_small):
    spec = small_spec()
    store = tmp_path / "subset.zarr"
    train(spec, store, plr=[0.1])
    tree = open_store(store)
    for stage in ("pretrain", "finetune", "swa"):
        done = tree[f"{stage}/metrics"]["done"]
        assert done.sel(plr=0.1).all() and not done.sel(plr=0.003).any(), stage
    train(spec, store)  # the others, as an ordinary resume
    full = open_store(trained_small)
    for group in ("pretrain/weights", "finetune/weights", "swa/weights"):
        xr.testing.assert_allclose(open_store(store)[group].to_dataset().load(), full[group].to_dataset().load(),
                                   rtol=1e-4, atol=1e-5)


def test_a_plr_off_the_grid_is_refused(small_spec, tmp_path):
    with pytest.raises(lrscan.errors.LrscanError, match="plr 0.2 is not on the sweep's grid"):
        train(small_spec(), tmp_path / "s.zarr", plr=[0.2])

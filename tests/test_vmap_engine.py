"""The vmapped engine path: every model without a batched forward of its own (the image models)
stepped as one stack through ``torch.func.vmap`` over ``functional_call`` (issue 14)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from lrscan.spec import resolve
from lrscan.train.engine import VMAP_RUNS, Engine
from lrscan.train.loop import DeviceData, Snapshot, run_stage
from lrscan.train.plan import Stage
from lrscan.train.sweep import Setup, default_batched

# Each model with a tiny shape, and learning rates small enough that float rounding does not
# grow over the stage (at large ones the runs are chaotic: any two paths part within steps).
MODELS = {
    "convnetsi": ({"width": 4}, (1e-3, 3e-3)),
    "resnet18si": ({"width": 4}, (3e-6, 1e-5)),  # radius 10 at w4: lr = ELR x 100
    "resnet18": ({"width": 4}, (0.01, 0.03)),  # affine BatchNorm, SGD with momentum
    "vit": ({"dim": 16, "depth": 1, "heads": 2, "dim_head": 8, "mlp_dim": 16, "dropout": 0.0}, (1e-4, 3e-4)),
    "vitsi": ({"dim": 16, "depth": 1, "heads": 2, "dim_head": 8, "mlp_dim": 16, "dropout": 0.0}, (1e-4, 3e-4)),
}


def stage_of(model: str, **options):
    """Two runs (seeds 0 and 1) of ``model`` on planted 8x8 images through a 6-step stage logged
    every 2 steps: the setup, the runs' start, the device data, the stage and ``run_stage``'s
    other keyword arguments."""
    model_options, elr = MODELS[model]
    setup = Setup.build(resolve({
        "sweep": {"model": model, "dataset": "planted", "plr": [0.01], "flr": [0.001], "seeds": 2,
                  "batch_size": 16, "pretrain_epochs": 1, "finetune_epochs": 0, "swa": [], "device": "cpu"},
        "model": {**model_options, **options},
        "data": {"size": 8, "n_train": 64, "n_test": 32},
    }))
    start = torch.stack([setup.init_weights(s, 0) for s in (0, 1)])
    data = setup.data[0]
    dev = DeviceData(data.x_train[None], data.y_train[None], data.x_test[None], data.y_test[None])
    stage = Stage("pretrain", 0, 6, np.arange(0, 7, 2), np.array([0, 6]))
    kwargs = dict(elr=torch.tensor(elr), seeds=[(0, 0), (1, 0)], batch_size=16, steps_per_epoch=4)
    return setup, start, dev, stage, kwargs


def close(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model", sorted(MODELS))
def test_a_vmapped_stack_trains_each_run_as_the_run_by_run_path_and_alone(model):
    """Every model without a batched forward steps through vmap: the stack's weights, BatchNorm
    statistics, update state and metrics equal those of the run-by-run path within float
    rounding (vmap turns the runs' convolutions into one grouped convolution), and a run trained
    in the stack equals it trained alone."""
    setup, start, dev, stage, kwargs = stage_of(model)
    engine = setup.engine(start, batched=True)
    assert engine.vmapped and engine.seeded
    stacked = run_stage(engine, dev, stage, **kwargs)
    reference = setup.engine(start, batched=False)
    by_run = run_stage(reference, dev, stage, **kwargs)
    close(stacked.weights, by_run.weights)
    for name in ("train_loss", "train_acc", "test_loss", "test_acc", "grad_norm", "running_train_loss"):
        close(stacked.metrics[name], by_run.metrics[name])
    for name, value in engine.opt_state.items():
        close(value.numpy(), reference.opt_state[name].numpy())
    alone = run_stage(setup.engine(start[1:], batched=True), dev, stage,
                      **{**kwargs, "elr": kwargs["elr"][1:], "seeds": kwargs["seeds"][1:]})
    close(alone.weights[0], stacked.weights[1])
    assert not np.allclose(stacked.weights[0, -1], stacked.weights[1, -1])  # the runs do differ


@pytest.mark.parametrize("model", ["resnet18", "vit"])
def test_a_vmapped_stage_resumed_from_a_snapshot_is_identical(model):
    """Resume on the vmapped path is bit-identical: BatchNorm buffers and the momentum (SGD) or
    moment (Adam) state travel in the snapshot, and so does where dropout draws from (the ViT
    here drops at 0.1)."""
    setup, start, dev, stage, kwargs = stage_of(model, **({"dropout": 0.1} if model == "vit" else {}))
    snaps: list[Snapshot] = []
    whole = run_stage(setup.engine(start, batched=True), dev, stage, snapshot=snaps.append, snapshot_every=0.0,
                      **kwargs)
    middle = next(s for s in snaps if s.step == 4)
    resumed = run_stage(setup.engine(start, batched=True), dev, stage, resume=copy.deepcopy(middle), **kwargs)
    np.testing.assert_array_equal(resumed.weights, whole.weights)
    for name in whole.metrics:
        np.testing.assert_array_equal(resumed.metrics[name], whole.metrics[name])


def test_dropout_in_a_vmapped_stack_is_drawn_per_run_and_repeats():
    """Two runs from the same point at the same learning rate on the same batches stay equal
    without dropout and part with it (each run of the stack draws its own masks); the same
    stack trained twice draws the same masks."""
    setup, start, dev, stage, kwargs = stage_of("vit", dropout=0.1)
    twins = start[:1].repeat(2, 1)
    same = {**kwargs, "elr": torch.full((2,), 3e-4), "seeds": [(0, 0), (0, 0)]}
    once = run_stage(setup.engine(twins, batched=True), dev, stage, **same)
    again = run_stage(setup.engine(twins, batched=True), dev, stage, **same)
    np.testing.assert_array_equal(once.weights, again.weights)
    assert not np.allclose(once.weights[0, -1], once.weights[1, -1])
    setup, start, dev, stage, kwargs = stage_of("vit")
    plain = run_stage(setup.engine(start[:1].repeat(2, 1), batched=True), dev, stage, **same)
    np.testing.assert_array_equal(plain.weights[0], plain.weights[1])


@pytest.mark.parametrize("model", ["convnetsi", "resnet18si"])
def test_vmapped_statistics_and_train_mode_scores_match_the_run_by_run_ones(model):
    """BatchNorm recomputation (cumulative average, as update_bn) and the train-mode scoring of
    the study's train error go through vmap in groups of runs, to the run-by-run values; the
    groups hold at most VMAP_RUNS runs and as many as fit one pass."""
    setup, start, dev, stage, kwargs = stage_of(model)
    trained = run_stage(setup.engine(start, batched=True), dev, stage, **kwargs).weights[:, -1]
    flat = torch.as_tensor(np.concatenate([trained] * 5))  # 10 runs: two groups
    which = torch.zeros(10, dtype=torch.long)
    engines = [setup.engine(flat, batched=b) for b in (True, False)]
    assert [len(g) for g in engines[0].groups(16)] == [VMAP_RUNS, 10 - VMAP_RUNS]
    assert [len(g) for g in engines[0].groups(4096)] == [1] * 10
    for engine in engines:
        engine.recompute_bn(dev.x_train, which, batch_size=16)
    close(engines[0].flat().numpy(), engines[1].flat().numpy())
    assert not np.allclose(engines[0].flat().numpy(), flat.numpy())  # the statistics were replaced
    before = engines[0].flat().clone()
    scores = [e.evaluate_train_mode(dev.x_train, dev.y_train, which, 16) for e in engines]
    for a, b in zip(*scores):
        close(a.numpy(), b.numpy())
    torch.testing.assert_close(engines[0].flat(), before, rtol=0, atol=0)  # scoring changes no statistics
    for a, b in zip(*(e.evaluate(dev.x_test, dev.y_test, which, 128) for e in engines)):
        close(a.numpy(), b.numpy())


@pytest.mark.parametrize("batched", [True, False])
def test_the_statistics_pass_scores_the_train_mode_error_of_the_same_batches(batched):
    """recompute_bn given the labels returns what evaluate_train_mode gives for the recomputed
    statistics — the same batches in the same order, the incomplete last one left out of the
    score but not of the statistics — to the bit; without labels it returns nothing."""
    setup, start, dev, stage, kwargs = stage_of("resnet18si")
    trained = torch.as_tensor(run_stage(setup.engine(start, batched=True), dev, stage, **kwargs).weights[:, -1])
    which = torch.tensor([0, 0])
    x, y = dev.x_train[:, :56], dev.y_train[:, :56]  # 3 batches of 16 and one of 8
    plain, scoring = (setup.engine(trained, batched=batched) for _ in range(2))
    assert plain.recompute_bn(x, which, batch_size=16) is None
    loss, acc = scoring.recompute_bn(x, which, batch_size=16, y=y)
    torch.testing.assert_close(scoring.flat(), plain.flat(), rtol=0, atol=0)  # the same statistics
    expected = plain.evaluate_train_mode(x, y, which, 16)
    torch.testing.assert_close(loss, expected[0], rtol=0, atol=0)
    torch.testing.assert_close(acc, expected[1], rtol=0, atol=0)
    with pytest.raises(ValueError, match="exceeds"):
        scoring.recompute_bn(x, which, batch_size=64, y=y)


def test_runs_are_batched_by_default_where_it_pays():
    """A forward_batched model is batched everywhere; a vmapped one on an accelerator, not on a
    CPU (where grouped convolutions are slower than separate ones); channels-last belongs to
    the run-by-run path."""
    setup, start, *_ = stage_of("convnetsi")
    from lrscan.models import MODELS as ENTRIES

    assert default_batched(ENTRIES["mlp"], torch.device("cpu"))
    assert not default_batched(ENTRIES["convnetsi"], torch.device("cpu"))
    assert default_batched(ENTRIES["convnetsi"], torch.device("cuda"))
    assert not setup.engine(start).batched
    with pytest.raises(ValueError, match="channels_last"):
        Engine(setup.entry, setup.module, start, setup.spec.radius, batched=True, channels_last=True)

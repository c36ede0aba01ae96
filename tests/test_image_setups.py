"""Image setups end to end: BatchNorm runs, practical optimisers, CIFAR on disk, frequency bands."""

import copy

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import lrscan
from lrscan.analyze.evaluate import Evaluator
from lrscan.analyze.run import analyze
from lrscan.cli import main
from lrscan.models import MODELS
from lrscan.spec import load_spec, resolve
from lrscan.train.plan import Stage
from lrscan.store import verify
from lrscan.testing import assert_on_sphere
from lrscan.train.flat import flat_state, layout
from lrscan.train.loop import Snapshot, run_stage
from lrscan.train.sweep import Setup
from tests.test_images import cifar10_dir  # noqa: F401  (fixture)
from tests.conftest import train_store, two_run_stage

# A narrow SI ConvNet on 8x8 planted-frequency images: a whole sweep in seconds. Batches of 8
# give 64 steps, enough for BatchNorm's running statistics (momentum 0.1) to settle on inputs
# that are centred but not rescaled.
TINY = [
    "plr=[0.001, 0.01, 3.0]", "flr=[0.001, 0.003]", "batch_size=8", "pretrain_epochs=2",
    "finetune_epochs=1", "finetune_from=2", "log_every=1", "checkpoint_epochs=1", "swa=[2]",
    "device='cpu'", "runs_per_batch=3", "model.width=4", "data.size=8", "data.n_train=256",
    "data.n_test=128",
]


@pytest.fixture(scope="module")
def planted_store(tmp_path_factory):
    return train_store(tmp_path_factory, TINY, "planted-convnet")


def test_tiny_sweep_recovers_the_planted_band(planted_store):
    seen = []
    analyze(planted_store, only=["frequency"], blocks=lambda name, done, total: seen.append((done, total)))
    # Its passes over the solutions (bands, test set, each other boundary) count as one: up to
    # the total, never back, and the total reached once, at the end.
    assert len({total for _, total in seen}) == 1 and seen[-1][0] == seen[-1][1]
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)
    assert [done for done, total in seen].count(seen[-1][1]) == 1
    tree = lrscan.open(planted_store)
    assert verify(planted_store) == []
    result = tree["analysis/frequency"].to_dataset().load()
    learned = result.test_acc > 0.6  # solutions that learned the task (not regime 3)
    assert int(learned.sum()) >= 6
    best = result.band_acc.argmax("band")
    # Every solution that learned the task is most accurate on the band its evidence lives in.
    assert (result.band.values[best.values[learned.values]] == "mid").all()
    assert result.sweep_acc.sizes["low_mid"] == len(lrscan.analyze.frequency.SWEEP)
    assert result.band_images.sizes["band"] == 4 and float(result.band_images.max()) <= 1
    # The figure draws a curve per band and the full test set for each solution.
    panels = lrscan.plot.frequency(tree)
    assert len(panels) == 4
    assert result.band_images.shape[-3:] == result.images.shape[-3:] == (3, 8, 8)
    assert result.attrs["normalise"] == "study"
    # Normalising every band (lrscan's earlier convention) finds the same band.
    every = lrscan.analyze.frequency.frequency(tree, low_mid_sweep=(), normalise="all")
    best = every.band_acc.argmax("band")
    assert (every.band.values[best.values[learned.values]] == "mid").all()


def test_image_store_keeps_weights_on_the_sphere_and_bn_statistics(planted_store):
    tree = lrscan.open(planted_store)
    assert_on_sphere(tree)
    layers = tree["layers"].to_dataset()
    assert layers.buffer.values.any() and not (layers.buffer & layers.si).values.any()
    # Stored BN statistics are real ones: running variances are positive and not all 1.
    var = [slice(int(a), int(b)) for n, a, b in zip(layers.layer.values, layers.start.values, layers.stop.values)
           if str(n).endswith("running_var")]
    final = tree["pretrain/weights"]["weights"].isel(epoch=-1).values
    assert all((final[..., s] > 0).all() and not np.allclose(final[..., s], 1) for s in var)


@pytest.mark.parametrize("batch", [32, None])  # the spec's batch, and the default: the whole set at once
def test_constructed_points_get_recomputed_bn_statistics(planted_store, batch):
    # Engine.recompute_bn against torch's own update_bn on an ordinary module.
    spec = lrscan.store.read_spec(planted_store)
    setup = Setup.build(spec)
    weights = lrscan.open(planted_store)["pretrain/weights"]["weights"]
    mean = torch.from_numpy(weights.isel(plr=[0, 1], seed=0, epoch=-1).values.mean(0))  # an average: constructed
    engine = setup.engine(mean[None])
    data = setup.data[0]
    if batch is None:
        engine.recompute_bn(data.x_train[None], torch.tensor([0]))
    else:
        engine.recompute_bn(data.x_train[None], torch.tensor([0]), batch)
    module = copy.deepcopy(setup.module)
    names = [layer.name for layer in setup.layers if not layer.buffer]
    state = dict(zip(names, [mean[l.start:l.stop].reshape(l.shape) for l in setup.layers if not l.buffer]))
    module.load_state_dict(state, strict=False)
    size = batch or len(data.x_train)
    loader = [data.x_train[i:i + size] for i in range(0, len(data.x_train), size)]
    torch.optim.swa_utils.update_bn(loader, module)
    torch.testing.assert_close(engine.flat()[0], flat_state(module, setup.layers), rtol=1e-5, atol=1e-6)


def test_barriers_of_an_image_store_recompute_bn_at_every_point(planted_store):
    tree = lrscan.open(planted_store)
    result = tree.lrscan.barriers(n_points=3)
    assert result.sizes["alpha"] == 3
    learned = lrscan.open(planted_store)["finetune/metrics"]["test_acc"].isel(epoch=-1).min("flr") > 0.6
    assert np.isfinite(result.test_barrier.where(learned)).sum() > 0
    # Ends of a path are the stored solutions with their statistics recomputed: each scores as
    # torch's update_bn (over the training set, in batches of the training batch size) and an
    # eval-mode pass of an ordinary module score it. (Not "as the trainer scored it with its
    # running statistics": those lag the weights of a run at a large PLR by whole points.)
    spec = lrscan.store.read_spec(planted_store)
    setup = Setup.build(spec)
    data = setup.data[0]
    solutions = tree["finetune/weights"]["weights"].isel(flr=0, seed=0, epoch=-1).values
    names = [layer.name for layer in setup.layers if not layer.buffer]
    for i, flat in enumerate(torch.from_numpy(solutions)):
        module = copy.deepcopy(setup.module)
        module.load_state_dict(dict(zip(names, [flat[l.start:l.stop].reshape(l.shape) for l in setup.layers
                                                if not l.buffer])), strict=False)
        loader = [data.x_train[j:j + spec.batch_size] for j in range(0, len(data.x_train), spec.batch_size)]
        torch.optim.swa_utils.update_bn(loader, module)
        with torch.no_grad():
            error = 100 * float((module.eval()(data.x_test).argmax(1) != data.y_test).float().mean())
        start = float(result.test_error.isel(pair=0, alpha=0, plr=i, seed=0))
        assert abs(start - error) <= 100 / len(data.y_test) + 1e-9  # at most one image apart (float rounding)


def test_the_statistics_pass_of_constructed_points_scores_their_train_error(planted_store):
    """Barriers take the train-mode train error of their points from the pass that recomputes
    the points' statistics: the same points as construct, the same scores as evaluating them
    apart (NaN for a diverged end too); a model without BatchNorm has no such pass."""
    tree = lrscan.open(planted_store)
    evaluator = Evaluator.of(tree)
    ends = tree["finetune/weights"]["weights"].isel(seed=0, epoch=-1).stack(row=("plr", "flr"))
    ends = ends.transpose("row", "param").values
    points, index = (ends[:-1] + ends[1:]) / 2, np.zeros(len(ends) - 1, dtype=int)
    built, scored = evaluator.construct_scored(points, index)
    np.testing.assert_array_equal(built, evaluator.construct(points, index))
    np.testing.assert_array_equal(scored, evaluator.evaluate(built, index, "train", bn_mode="train")[1])
    mlp = Evaluator(load_spec(overrides=["device='cpu'"]))
    flat = mlp.setup.init_weights(0, 0)[None].numpy()
    assert mlp.construct_scored(flat, np.zeros(1, dtype=int))[1] is None


@pytest.mark.parametrize("model, optimiser", [("resnet18", "sgd"), ("vit", "adam")])
def test_practical_models_step_like_torch_optimisers(model, optimiser):
    model_options = {"resnet18": {"width": 4},
                     "vit": {"dim": 16, "depth": 1, "heads": 2, "dim_head": 8, "mlp_dim": 16, "dropout": 0.0}}[model]
    spec = resolve({"sweep": {"model": model, "dataset": "planted", "plr": [0.01], "flr": [0.01], "batch_size": 8,
                              "pretrain_epochs": 1, "device": "cpu"},
                    "model": model_options, "data": {"size": 8, "n_train": 64, "n_test": 16}})
    setup = Setup.build(spec)
    start = setup.init_weights(0, 0)
    rates = (0.01, 0.003)  # two runs side by side, each against its own torch optimiser
    engine = setup.engine(torch.stack([start, start]))
    layers, opts, data = setup.layers, spec.model_options, setup.data[0]
    modules, references = [], []
    for lr in rates:
        module = copy.deepcopy(setup.module)
        module.load_state_dict({l.name: start[l.start:l.stop].reshape(l.shape) for l in layers}, strict=False)
        module.train()
        modules.append(module)
        references.append(
            torch.optim.SGD(module.parameters(), lr=lr, momentum=opts["momentum"], weight_decay=opts["weight_decay"])
            if optimiser == "sgd" else torch.optim.Adam(module.parameters(), lr=lr, weight_decay=opts["weight_decay"]))
    for step in range(4):
        x, y = data.x_train[step * 8:(step + 1) * 8], data.y_train[step * 8:(step + 1) * 8]
        engine.step(torch.stack([x, x]), torch.stack([y, y]), torch.tensor(rates))
        for module, reference in zip(modules, references):
            reference.zero_grad()
            torch.nn.functional.cross_entropy(module(x), y).backward()
            reference.step()
    for i, module in enumerate(modules):
        torch.testing.assert_close(engine.flat()[i], flat_state(module, layers), rtol=1e-4, atol=1e-5)


def test_channels_last_reaches_every_convolution_and_trains_the_same_runs():
    """With channels_last, every convolution of the SI ConvNet sees channels-last weights and
    inputs at every step, scoring and after a resume; the runs' weights and metrics equal the
    default layout's within float rounding. (Not the ResNet: on a CPU, torch computes its
    strided 1x1 shortcut's weight gradient on channels-last input wrongly, which is why the
    sweep uses channels-last on GPUs only.)"""
    from lrscan.train.engine import Engine

    setup, start, dev, stage, kwargs = two_run_stage([*TINY, "data.n_train=64"])
    convs = [m for m in setup.module.modules() if isinstance(m, torch.nn.Conv2d)]
    seen = []
    hooks = [m.register_forward_pre_hook(lambda m, args: seen.append(
        (args[0].is_contiguous(memory_format=torch.channels_last),
         m.weight.is_contiguous(memory_format=torch.channels_last)))) for m in convs]

    def engine(channels_last):
        return Engine(setup.entry, setup.module, start, setup.spec.radius, batched=False,
                      options=setup.spec.model_options, channels_last=channels_last)
    try:
        fast = engine(True)
        snaps: list[Snapshot] = []
        laid = run_stage(fast, dev, stage, snapshot=snaps.append, snapshot_every=0.0, **kwargs)
        fast.recompute_bn(dev.x_train, torch.zeros(2, dtype=torch.long))
        resumed = engine(True)
        run_stage(resumed, dev, stage, resume=copy.deepcopy(next(s for s in snaps if s.step == 4)), **kwargs)
        assert len(seen) > 20 * len(convs) and all(x and w for x, w in seen)
        seen.clear()
        plain = run_stage(engine(False), dev, stage, **kwargs)
        assert seen and not all(x and w for x, w in seen)  # the default layout is not it
    finally:
        for h in hooks:
            h.remove()
    np.testing.assert_allclose(laid.weights, plain.weights, rtol=1e-4, atol=1e-5)
    for name in ("train_loss", "test_acc"):
        np.testing.assert_allclose(laid.metrics[name], plain.metrics[name], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model", ["convnetsi", "mlp"])
def test_bf16_casts_the_forward_pass_only_on_both_paths(model, monkeypatch):
    """precision = bf16 runs the forward pass under bf16 autocast — on the run-by-run path (SI
    ConvNet) and on the batched one (SI MLP, which ignored it before) — while weights, BatchNorm
    statistics and the update state stay float32 and every step ends on the sphere to float32
    precision. (How far bf16 runs drift from float32 ones is measured, not asserted: see
    issue 14's note.)"""
    import lrscan.models.mlp as mlp
    from lrscan.train.engine import Engine
    from lrscan.train.flat import si_norm

    if model == "mlp":
        from tests.test_train import small_engine

        setup, _, dev = small_engine(lambda: load_spec(overrides=["seeds=2", "device='cpu'"]))
        start = torch.stack([setup.init_weights(s, 0) for s in (0, 1)])
        stage = Stage("pretrain", 0, 6, np.arange(0, 7, 2), np.array([0, 6]))
        kwargs = dict(elr=torch.tensor([0.01, 0.05]), seeds=[(0, 0), (1, 0)], batch_size=16, steps_per_epoch=32)
    else:
        setup, start, dev, stage, kwargs = two_run_stage([*TINY, "data.n_train=64"])
    seen = []
    if model == "mlp":
        real = mlp.mlp_apply
        monkeypatch.setattr(mlp, "mlp_apply",
                            lambda *a, **k: seen.append(torch.is_autocast_enabled("cpu")) or real(*a, **k))
    else:
        hook = setup.module.register_forward_pre_hook(lambda m, args: seen.append(torch.is_autocast_enabled("cpu")))
    batched = setup.entry.forward_batched is not None
    engine = Engine(setup.entry, setup.module, start, setup.spec.radius, batched=batched,
                    options=setup.spec.model_options, precision="bf16")
    result = run_stage(engine, dev, stage, **kwargs)
    if model != "mlp":
        hook.remove()
    assert seen and all(seen)
    assert not torch.is_autocast_enabled("cpu")
    assert all(t.dtype == torch.float32 for t in [*engine.params.values(), *engine.buffers.values(),
                                                  *engine.opt_state.values()])
    assert result.weights.dtype == np.float32 and np.isfinite(result.metrics["train_loss"]).all()
    np.testing.assert_allclose(si_norm(engine.flat(), engine.layers).numpy(), setup.spec.radius, rtol=1e-6)


def test_a_bn_stage_resumed_from_a_snapshot_is_identical():
    # Buffers and the momentum state travel in the snapshot: resuming gives the same weights.
    setup, start, dev, stage, kwargs = two_run_stage([*TINY, "model='resnet18'", "model.width=4", "data.n_train=64"])
    snaps: list[Snapshot] = []
    whole = run_stage(setup.engine(start), dev, stage, snapshot=snaps.append, snapshot_every=0.0, **kwargs)
    middle = next(s for s in snaps if s.step == 4)
    resumed = run_stage(setup.engine(start), dev, stage, resume=copy.deepcopy(middle), **kwargs)
    np.testing.assert_array_equal(resumed.weights, whole.weights)
    assert any(k.startswith("update/") for k in middle.state) and any(k.startswith("buffer/") for k in middle.state)


def test_an_augmented_stage_draws_per_run_and_resumes_identically():
    """RandAugment in the loop: the runs' batches are augmented at once, each from its own
    per-step seed, so a run trains alike in a batch and alone, a stage resumed from a snapshot
    ends with the same weights, and the augmentation does change what is trained on."""
    import dataclasses

    from lrscan.data.images import MEAN, STD, make_augment

    setup, start, plain, stage, kwargs = two_run_stage([*TINY, "data.n_train=64"])
    dev = dataclasses.replace(plain, augment=make_augment("randaugment", setup.data[0].normalization or (MEAN, STD)))
    snaps: list[Snapshot] = []
    whole = run_stage(setup.engine(start), dev, stage, snapshot=snaps.append, snapshot_every=0.0, **kwargs)
    resumed = run_stage(setup.engine(start), dev, stage, resume=copy.deepcopy(next(s for s in snaps if s.step == 4)),
                        **kwargs)
    np.testing.assert_array_equal(resumed.weights, whole.weights)
    alone = run_stage(setup.engine(start[1:]), dev, stage, **{**kwargs, "elr": kwargs["elr"][1:],
                                                                "seeds": kwargs["seeds"][1:]})
    np.testing.assert_allclose(alone.weights[0], whole.weights[1], rtol=1e-5, atol=1e-6)
    unaugmented = run_stage(setup.engine(start), plain, stage, **kwargs)
    assert not np.allclose(unaugmented.weights[:, -1], whole.weights[:, -1])


def test_cifar_fixture_trains_through_the_cli(cifar10_dir, tmp_path):  # noqa: F811
    root, _, _ = cifar10_dir
    store = tmp_path / "cifar.zarr"
    args = ["train", "--preset", "convnetsi-cifar10", "--store", str(store), "--set", f"data.data_dir='{root}'",
            "--set", "data.download=false", "--set", "data.n_train=20", "--set", "data.n_test=6",
            "--set", "model.width=4", "--set", "batch_size=4",
            "--set", "pretrain_epochs=1", "--set", "finetune_epochs=1", "--set", "finetune_from=1",
            "--set", "log_every=1", "--set", "checkpoint_epochs=1", "--set", "swa=[]",
            "--set", "plr=[0.01]", "--set", "flr=[0.001]", "--set", "device='cpu'"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    tree = lrscan.open(store)
    assert tree["pretrain/metrics"]["done"].values.all() and tree["finetune/metrics"]["done"].values.all()
    assert np.isfinite(tree["finetune/metrics"]["test_acc"].values).all()
    # The preset's radius is the study's fixed 12, whatever the width (the derived default of
    # width 4 would be sqrt(5 * 4)).
    assert tree.attrs["spec"]["sweep"]["radius"] == 12.0


def test_missing_cifar_folder_is_one_line(tmp_path):
    result = CliRunner().invoke(main, ["train", "--preset", "convnetsi-cifar10", "--store", str(tmp_path / "s.zarr"),
                                       "--set", f"data.data_dir='{tmp_path / 'nowhere'}'", "--set", "data.download=false"])
    assert result.exit_code == 2
    assert str(tmp_path / "nowhere") in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "s.zarr").exists()


def test_unknown_image_model_is_one_line(tmp_path):
    result = CliRunner().invoke(main, ["train", "--preset", "planted-convnet", "--set", "model='resnet19si'",
                                       "--store", str(tmp_path / "s.zarr")])
    assert result.exit_code == 2 and "resnet18si" in result.output


def test_every_image_preset_resolves():
    for name in ("resnet18si-cifar10", "convnetsi-cifar10", "convnetsi-cifar100", "resnet18si-cifar100",
                 "resnet18-cifar10", "vit-cifar10", "vit-cifar100"):
        spec = load_spec(name)
        entry = MODELS[spec.model]
        assert (spec.radius is None) == (entry.update != "sphere"), name
    # The study's ViT runs are vit_small_si: the ViT presets train it, not a ViT it never ran.
    assert {load_spec(f"vit-cifar{n}").model for n in (10, 100)} == {"vitsi"}
    # The presets use the study's fixed norms (its scripts' fix_si_pnorm_value), not the init's.
    assert [load_spec(f"resnet18si-cifar{n}").radius for n in (10, 100)] == [28.0, 28.0]
    assert [load_spec(f"convnetsi-cifar{n}").radius for n in (10, 100)] == [12.0, 12.0]
    # A spec without radius still gets the model's derived default (the init's expected norm).
    assert load_spec("resnet18si-cifar10", overrides=["radius=28"]).radius == 28.0
    assert MODELS["resnet18si"].radius({"width": 32}) == pytest.approx(28.28, abs=0.01)
    assert len(load_spec("resnet18si-cifar10").plr) == 25
    assert layout  # the layout of an image model is what the store's /layers records


def test_images_too_small_for_the_bands_are_one_line(tmp_path):
    result = CliRunner().invoke(main, ["train", "--preset", "planted-convnet", "--set", "data.size=3",
                                       "--store", str(tmp_path / "s.zarr")])
    assert result.exit_code == 2 and "no frequency in the low, high band" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "s.zarr").exists()

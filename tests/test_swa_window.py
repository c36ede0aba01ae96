"""SWA windows as the study's: forward from the branch point over continued pre-training (CNNs),
or the K checkpoints every 2 epochs ending at the end of pre-training (ViT)."""

import numpy as np
import pytest
import torch
from torch.optim.swa_utils import update_bn

import lrscan
from lrscan.analyze.metrics import metrics, swa
from lrscan.analyze.solutions import solution_weights
from lrscan.errors import LrscanError
from lrscan.spec import load_spec
from lrscan.train.flat import project
from lrscan.train.plan import Plan
from lrscan.train.sweep import Setup
from tests.conftest import SMALL, train_store

FORWARD = [*SMALL, "swa_window={start=4, every=1}", "swa=[2, 3]"]


@pytest.fixture(scope="module")
def forward_store(tmp_path_factory):
    return train_store(tmp_path_factory, FORWARD)


@pytest.fixture(scope="module")
def longer_store(tmp_path_factory):
    # The same runs pre-trained to epoch 6 with no window: what continued pre-training must equal.
    return train_store(tmp_path_factory, [*SMALL, "pretrain_epochs=6", "finetune_from=4", "swa=[]"])


def test_cnn_presets_average_forward_from_epoch_200_over_continued_pretraining():
    plan = Plan.build(load_spec("resnet18si-cifar10"), 50_000)
    epochs = {k: plan.epochs(v) for k, v in plan.swa_steps.items()}
    for k in (2, 5, 10, 50, 100):
        np.testing.assert_array_equal(epochs[k], 200 + np.arange(k))
    assert plan.pretrain.stop / plan.steps_per_epoch == 299  # continued as far as K = 100 needs
    assert plan.pretrain_end / plan.steps_per_epoch == 200 and plan.finetune.start == plan.pretrain_end
    # Every window epoch is kept, and its metric rows are logged on the usual grid.
    assert set(plan.epochs(plan.pretrain.checkpoint_steps)) >= set(range(200, 300))
    assert plan.epochs(plan.pretrain.log_steps)[-1] == 299


def test_vit_presets_average_every_2_epochs_ending_at_500():
    plan = Plan.build(load_spec("vit-cifar10"), 50_000)
    assert sorted(plan.swa_steps) == [2, 5, 10]
    for k in (2, 5, 10):
        np.testing.assert_array_equal(plan.epochs(plan.swa_steps[k]), np.arange(500 - 2 * k + 2, 501, 2))
    assert plan.pretrain.stop == plan.pretrain_end  # nothing continued


def test_continued_pretraining_is_the_same_run_trained_longer(forward_store, longer_store):
    a, b = lrscan.open(forward_store), lrscan.open(longer_store)
    wa = a["pretrain/weights"]["weights"].sel(epoch=[4.0, 5.0, 6.0])
    wb = b["pretrain/weights"]["weights"].sel(epoch=[4.0, 5.0, 6.0])
    np.testing.assert_array_equal(wa.values, wb.values)
    # Its metric rows are stored too, past the end of pre-training.
    rows = a["pretrain/metrics"]["test_acc"].sel(epoch=[5.0, 6.0]).values
    np.testing.assert_array_equal(rows, b["pretrain/metrics"]["test_acc"].sel(epoch=[5.0, 6.0]).values)


def test_swa_averages_the_window_from_its_start(forward_store):
    tree = lrscan.open(forward_store)
    spec = load_spec(overrides=FORWARD)
    layers = Setup.build(spec).layers
    weights = tree["pretrain/weights"]["weights"]
    for k in (2, 3):
        members = weights.sel(epoch=4.0 + np.arange(k)).values.astype(np.float64)  # (plr, seed, k, P)
        mean = torch.from_numpy(members.mean(2).reshape(-1, members.shape[-1])).float()
        expected = project(mean, layers, spec.radius).numpy().reshape(*members.shape[:2], -1)
        stored = tree["swa/weights"]["weights"].sel(swa=k).values
        np.testing.assert_allclose(stored, expected, rtol=1e-6, atol=1e-7)
    # The analyzer computes the same SWA as the trainer.
    result = swa(tree)
    np.testing.assert_allclose(result.test_acc.values, tree["swa/metrics"]["test_acc"].values)


def test_the_pt_solution_is_the_end_of_pretraining_not_of_the_continuation(forward_store):
    tree = lrscan.open(forward_store)
    pt = solution_weights(tree).sel(solution="pt").values
    np.testing.assert_array_equal(pt, tree["pretrain/weights"]["weights"].sel(epoch=4.0).values)
    final = metrics(tree).pt_test_acc.values
    np.testing.assert_array_equal(final, tree["pretrain/metrics"]["test_acc"].sel(epoch=4.0).values)
    # Fine-tuning branches from epoch 4 too.
    first = tree["finetune/weights"]["weights"].isel(epoch=0)
    assert float(tree["finetune/weights"].epoch[0]) > 4.0
    assert np.isfinite(first.values).all()


@pytest.mark.parametrize(
    ("window", "match"),
    [
        ("{start=1, stop=2, every=1}", "one of 'start' or 'stop'"),
        ("{start=1}", "needs 'every'"),
        ("{begin=1, every=1}", "unknown key 'begin' in swa_window"),
        ("{stop=4, every=0}", "swa_window.every must be positive"),
        ("{stop=1, every=1}", "window would begin before epoch 0"),
        ("3", "swa_window must be a table"),
    ],
)
def test_bad_windows_are_refused(window, match):
    with pytest.raises(LrscanError, match=match):
        spec = load_spec(overrides=[*SMALL, f"swa_window={window}", "swa=[2, 3]"])
        Plan.build(spec, 64)


def test_swa_batchnorm_statistics_are_recomputed_in_training_batches(tmp_path_factory):
    """As torch's update_bn over a loader of the training batch size (the study's), not one pass."""
    overrides = ["plr=[0.01]", "flr=[0.001]", "seeds=1", "pretrain_epochs=2", "finetune_epochs=1",
                 "finetune_from=2", "log_every=1", "swa_window={start=2, every=1}", "swa=[2]", "batch_size=32", "compile=false",
                 "device='cpu'", "data.n_train=128", "data.n_test=64", "model.width=4"]
    store = train_store(tmp_path_factory, overrides, preset="planted-convnet")
    tree = lrscan.open(store)
    setup = Setup.build(load_spec("planted-convnet", overrides=overrides))
    layers = setup.layers
    stored = tree["swa/weights"]["weights"].isel(plr=0, seed=0, swa=0).values
    module = setup.module
    params = {layer.name: torch.from_numpy(stored[layer.start:layer.stop].copy()).reshape(layer.shape)
              for layer in layers}
    module.load_state_dict(params, strict=False)
    x = setup.data[0].x_train
    update_bn(torch.utils.data.DataLoader(x, batch_size=32), module)
    for layer in layers:
        if layer.buffer:
            np.testing.assert_allclose(stored[layer.start:layer.stop], dict(module.named_buffers())[layer.name]
                                       .reshape(-1).numpy(), rtol=1e-4, atol=1e-5, err_msg=layer.name)
    # The analyses' constructed points get their statistics the same way (Evaluator.construct).
    result = swa(tree)
    np.testing.assert_allclose(result.train_loss.values, tree["swa/metrics"]["train_loss"].values, rtol=1e-5)

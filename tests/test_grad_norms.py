"""Gradient norms at the stored solutions (the solution_grad_norm analyzer), against plain torch."""

import copy

import numpy as np
import pytest
import torch
import xarray as xr
from click.testing import CliRunner
from torch.nn import functional as F

import lrscan
from lrscan.analyze import evaluate, grad_norms
from lrscan.analyze.evaluate import Evaluator
from lrscan.analyze.run import analyze
from lrscan.analyze.solutions import solution_weights
from lrscan.cli import main
from lrscan.errors import LrscanError
from lrscan.importer import import_checkpoints
from lrscan.store import read_spec
from lrscan.train.sweep import Setup
from tests.conftest import assert_one_line_error, train_store

# A narrow SI ConvNet (BatchNorm without affine parameters) on 8x8 planted-frequency images.
TINY_BN = ["plr=[0.003, 0.03]", "flr=[0.001, 0.003]", "seeds=1", "batch_size=32", "pretrain_epochs=2",
           "finetune_epochs=1", "finetune_from=2", "log_every=1", "checkpoint_epochs=1", "swa=[2]",
           "device='cpu'", "model.width=4", "data.size=8", "data.n_train=128", "data.n_test=64"]


@pytest.fixture(scope="module")
def bn_store(tmp_path_factory):
    return train_store(tmp_path_factory, TINY_BN, "planted-convnet")


def plain_torch(setup: Setup, flat: np.ndarray, data_seed: int, *, batch_size: int, train_mode: bool = True,
                split: str = "train", drop_last: bool = False) -> tuple[float, float, float]:
    """The study's measurement with ordinary torch: a module holding the state, ``.train()``,
    one backward per mini-batch in order, the mean of the SI-gradient norms."""
    module = copy.deepcopy(setup.module)
    state = {l.name: torch.from_numpy(np.array(flat[l.start:l.stop])).reshape(l.shape) for l in setup.layers}
    module.load_state_dict(state, strict=False)
    module.train(train_mode)
    si = [p for name, p in module.named_parameters() if setup.entry.is_si(name)]
    data = setup.data[data_seed]
    x, y = (data.x_train, data.y_train) if split == "train" else (data.x_test, data.y_test)
    n = len(x) - len(x) % batch_size if drop_last else len(x)
    norms, loss_sum, correct = [], 0.0, 0
    for start in range(0, n, batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        out = module(xb)
        if out.shape[-1] == 1:  # one logit: the synthetic setup's binary cross-entropy
            loss, pred = F.binary_cross_entropy_with_logits(out[:, 0], yb.float()), (out[:, 0] > 0).long()
        else:
            loss, pred = F.cross_entropy(out, yb), out.argmax(1)
        grads = torch.autograd.grad(loss, si)
        norms.append(float(torch.sqrt(sum(g.double().square().sum() for g in grads))))
        loss_sum += float(loss.detach()) * len(xb)
        correct += int((pred == yb).sum())
    return float(np.mean(norms)), loss_sum / n, correct / n


def assert_matches_plain_torch(store, result, **kwargs):
    tree = lrscan.open(store)
    setup = Setup.build(read_spec(store))
    weights = solution_weights(tree).sel(solution=result.solution).load()
    data_seeds = tree["pretrain/metrics"]["data_seed"].values
    for p in range(result.sizes["plr"]):
        for s in range(result.sizes["seed"]):
            for k in range(result.sizes["solution"]):
                flat = weights.isel(plr=p, seed=s, solution=k).values
                norm, loss, acc = plain_torch(setup, flat, int(data_seeds[s]), **kwargs)
                where = dict(plr=p, seed=s, solution=k)
                np.testing.assert_allclose(result.grad_norm.isel(where), norm, rtol=2e-5, err_msg=str(where))
                np.testing.assert_allclose(result.loss.isel(where), loss, rtol=2e-5, err_msg=str(where))
                np.testing.assert_allclose(result.acc.isel(where), acc, rtol=1e-6, err_msg=str(where))


def test_mlp_grad_norms_are_the_plain_torch_means_over_mini_batches(trained_small, digest):
    before = digest(trained_small)
    result = lrscan.open(trained_small).lrscan.solution_grad_norm()
    assert list(result.solution.values) == ["pt", "swa=2", "swa=3", "ft=0.001", "ft=0.01"]
    assert result.attrs["n_batches"] == 4 and result.attrs["group"] == "si"
    assert (result.grad_norm > 0).all()
    assert_matches_plain_torch(trained_small, result, batch_size=16)
    assert digest(trained_small) == before  # nothing written, nothing changed


def test_mlp_options_split_and_batch_size(trained_small):
    tree = lrscan.open(trained_small)
    result = tree.lrscan.solution_grad_norm(solutions=["ft_high", "pt"], split="test", batch_size=48)
    assert list(result.solution.values) == ["ft=0.01", "pt"]
    assert result.attrs["n_batches"] == 3  # 128 test samples: 48 + 48 + 32, the last one kept as the study's loader
    assert_matches_plain_torch(trained_small, result, batch_size=48, split="test")
    dropped = tree.lrscan.solution_grad_norm(solutions=["pt"], split="test", batch_size=48, drop_last=True)
    assert dropped.attrs["n_batches"] == 2
    assert_matches_plain_torch(trained_small, dropped, batch_size=48, split="test", drop_last=True)


def test_bn_grad_norms_use_train_mode_batchnorm_without_touching_statistics(bn_store, digest):
    before = digest(bn_store)
    tree = lrscan.open(bn_store)
    result = tree.lrscan.solution_grad_norm()
    assert_matches_plain_torch(bn_store, result, batch_size=32)
    # An incomplete last mini-batch (128 = 2 * 48 + 32) is one more batch, normalised with its own statistics.
    odd = tree.lrscan.solution_grad_norm(solutions=["pt", "swa=2"], batch_size=48)
    assert odd.attrs["n_batches"] == 3
    assert_matches_plain_torch(bn_store, odd, batch_size=48)
    # Eval mode reads the solutions' stored statistics instead, and gives other values.
    evaluated = tree.lrscan.solution_grad_norm(bn_mode="eval")
    assert_matches_plain_torch(bn_store, evaluated, batch_size=32, train_mode=False)
    assert not np.allclose(evaluated.grad_norm, result.grad_norm)
    # Measuring leaves the evaluator's stored statistics, the module and the store as they were.
    again = tree.lrscan.solution_grad_norm()
    xr.testing.assert_identical(again, result)
    assert digest(bn_store) == before


def test_blocks_of_solutions_give_the_same_values(trained_small, monkeypatch):
    tree = lrscan.open(trained_small)
    whole = tree.lrscan.solution_grad_norm()
    n_params = tree["layers"]["stop"].values.max()
    monkeypatch.setattr(evaluate, "BLOCK_VALUES", int(n_params) * 3)  # 3 solutions per block, across runs
    xr.testing.assert_allclose(tree.lrscan.solution_grad_norm(), whole, rtol=1e-6)


def test_non_finite_solutions_are_nan_and_skipped(trained_small):
    tree = lrscan.open(trained_small)
    evaluator = Evaluator.of(tree)
    flat = solution_weights(tree).isel(plr=0, seed=0).values
    flat[1] = np.nan  # a diverged or never-stored solution
    sets = evaluator.sets["train"]
    out = grad_norms.measure(evaluator, flat, np.zeros(len(flat), dtype=int), sets, [0, 16, 32, 48], 16, "train")
    assert np.isnan(out[:, 1]).all() and np.isfinite(np.delete(out, 1, axis=1)).all()
    with torch.no_grad():  # gradients are taken all the same
        alone = grad_norms.measure(evaluator, flat[[0]], np.zeros(1, dtype=int), sets, [0, 16, 32, 48], 16, "train")
    np.testing.assert_allclose(out[:, 0], alone[:, 0], rtol=1e-6)
    assert np.isnan(grad_norms.measure(evaluator, flat[[1]], np.zeros(1, dtype=int), sets, [0], 16, "train")).all()


def test_bad_options_are_one_line_errors(trained_small):
    tree = lrscan.open(trained_small)
    with pytest.raises(LrscanError, match=r"unknown solution 'ft=0.5' .*; the store has pt, swa=2, swa=3, ft=0.001, "
                                          r"ft=0.01"):
        tree.lrscan.solution_grad_norm(solutions=["ft=0.5"])
    with pytest.raises(LrscanError, match="split must be one of 'train', 'test', got 'val'"):
        tree.lrscan.solution_grad_norm(split="val")
    with pytest.raises(LrscanError, match="bn_mode must be one of"):
        tree.lrscan.solution_grad_norm(bn_mode="batch")
    with pytest.raises(LrscanError, match="batch_size = 100 exceeds the 64 samples"):
        tree.lrscan.solution_grad_norm(batch_size=100, drop_last=True)
    result = CliRunner().invoke(main, ["analyze", str(trained_small), "--only", "solution_grad_norm",
                                       "--set", "solution_grad_norm.solutions=['pt', 'swa=7']"])
    assert_one_line_error(result, r"unknown solution 'swa=7' \(did you mean 'swa=3'\?\)")


def test_imported_store_gets_the_trained_stores_grad_norms(trained_small, tmp_path):
    """Checkpoints of the trained store, imported with the data they were trained on (a `files`
    dataset): the analyzer gives the same gradient norms at every solution."""
    tree = lrscan.open(trained_small)
    setup = Setup.build(read_spec(trained_small))
    data = setup.data[0]
    np.savez(tmp_path / "data.npz", X_train=data.x_train.numpy(), y_train=data.y_train.numpy(),
             X_test=data.x_test.numpy(), y_test=data.y_test.numpy())
    state = lambda flat: {l.name: torch.from_numpy(np.array(flat[l.start:l.stop])).reshape(l.shape)  # noqa: E731
                          for l in setup.layers}
    pt, ft = tree["pretrain/weights"]["weights"].load(), tree["finetune/weights"]["weights"].load()
    branch = float(ft.epoch[0])
    for plr in pt.plr.values:
        for seed in pt.seed.values:
            run = tmp_path / f"runs/plr={plr:g}/seed={seed}"
            run.mkdir(parents=True)
            for epoch in pt.epoch.values:
                torch.save(state(pt.sel(plr=plr, seed=seed, epoch=epoch).values), run / f"checkpoint-{epoch:g}.pt")
            for flr in ft.flr.values:
                (run / f"ft={flr:g}").mkdir()
                for epoch in ft.epoch.values:
                    torch.save(state(ft.sel(plr=plr, flr=flr, seed=seed, epoch=epoch).values),
                               run / f"ft={flr:g}/checkpoint-{epoch - branch:g}.pt")
    store = tmp_path / "imported.zarr"
    pattern = "plr={plr}/seed={seed}[/ft={flr}]/checkpoint-{epoch}.pt"
    options = ["batch_size=16", f"data.path='{tmp_path / 'data.npz'}'", "swa=[2, 3]", "compile=false", "device='cpu'"]
    import_checkpoints(str(tmp_path / "runs"), str(store), "mlp", [pattern], dataset="files", overrides=options)
    assert np.isnan(lrscan.open(store)["pretrain/metrics"]["grad_norm"].values).all()  # the files do not say it
    assert analyze(store, ["solution_grad_norm"]) == {"solution_grad_norm": "computed"}
    imported = lrscan.open(store)
    xr.testing.assert_allclose(imported["analysis/solution_grad_norm"].to_dataset().load().drop_attrs(),
                               tree.lrscan.solution_grad_norm().drop_attrs(), rtol=1e-6)

"""Sharpness against the exact Hessian of a tiny model."""

import numpy as np
import pytest
import torch

import lrscan
from lrscan.analyze.sharpness import sharpness
from lrscan.train.sweep import Setup
from tests.conftest import SMALL, train_store


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return train_store(tmp_path_factory, SMALL + ["model.width=4", "plr=[0.01]", "flr=[0.001]", "seeds=1", "swa=[2]"])


def exact_hessian(tree, solution):
    """The Hessian of the mean train loss over the SI weights, by double autograd."""
    spec = lrscan.spec.Spec.from_dict(tree.attrs["spec"])
    setup = Setup.build(spec)
    vector = torch.as_tensor(solution)
    model = setup.entry.build(spec.model_options, (32,), 2)
    shapes = [(n, p.shape) for n, p in model.named_parameters()]
    si_size = sum(int(np.prod(s)) for n, s in shapes if setup.entry.is_si(n))
    data = setup.data[0]

    def loss(si_flat):
        params, start = {}, 0
        for name, shape in shapes:
            size = int(np.prod(shape))
            params[name] = (si_flat[start : start + size] if setup.entry.is_si(name) else vector[start : start + size]).reshape(shape)
            start += size
        z = torch.func.functional_call(model, params, (data.x_train,))[:, 0]
        return torch.nn.functional.binary_cross_entropy_with_logits(z, data.y_train.float())

    return torch.autograd.functional.hessian(loss, vector[:si_size]).double().numpy()


def test_hutchinson_and_power_iteration_against_the_exact_hessian(tiny):
    tree = lrscan.open(tiny)
    result = sharpness(tree, n_samples=1000, n_iter=100)
    weights = tree["pretrain/weights"]["weights"].isel(plr=0, seed=0, epoch=-1).values
    hessian = exact_hessian(tree, weights)
    pt = result.sel(plr=0.01, seed=0, solution="pt")
    trace = np.trace(hessian)
    assert abs(float(pt.hessian_trace) - trace) < 4 * float(pt.hessian_trace_se) + 1e-6 * abs(trace)
    assert float(pt.hessian_trace_se) < 0.1 * abs(trace)
    eigenvalues = np.linalg.eigvalsh(hessian)
    top = eigenvalues[np.argmax(abs(eigenvalues))]
    np.testing.assert_allclose(float(pt.top_eigenvalue), top, rtol=1e-3)


def test_sharpness_covers_every_solution(tiny):
    result = lrscan.open(tiny).lrscan.sharpness(n_samples=4, n_iter=3)
    assert result.hessian_trace.dims == ("plr", "seed", "solution")
    assert list(result.solution.values) == ["pt", "swa=2", "ft=0.001"]
    assert np.isfinite(result.hessian_trace).all()

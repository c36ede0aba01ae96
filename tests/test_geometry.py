"""Angles and error barriers between solutions (lrscan.analyze.geometry), against brute force."""

import collections
import itertools

import numpy as np
import pytest
import torch
import xarray as xr
import zarr
import zarr.storage
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import lrscan
from lrscan.analyze import ANALYZERS
from lrscan.analyze.geometry import angle_between, angles, barrier, barriers
from lrscan.analyze.solutions import label
from lrscan.data import DATASETS
from lrscan.errors import LrscanError
from lrscan.models import MODELS
from lrscan.spec import Spec, load_spec
from lrscan.train.sweep import train
from tests.conftest import SMALL


def stored_solutions(path) -> dict[str, np.ndarray]:
    """Every solution's weights, (plr, seed, param), read straight from zarr."""
    root = zarr.open_group(str(path), mode="r")
    out = {"pt": root["pretrain/weights/weights"][:, :, -1, :]}
    for i, k in enumerate(root["swa/weights/swa"][:]):
        out[label("swa", int(k))] = root["swa/weights/weights"][:, :, i, :]
    for i, flr in enumerate(root["finetune/weights/flr"][:]):
        out[label("ft", float(flr))] = root["finetune/weights/weights"][:, i, :, -1, :]
    return out


def si_mask(path) -> np.ndarray:
    root = zarr.open_group(str(path), mode="r")
    mask = np.zeros(int(root["layers/stop"][:].max()), dtype=bool)
    for start, stop, si in zip(root["layers/start"][:], root["layers/stop"][:], root["layers/si"][:]):
        mask[start:stop] = si
    return mask


def test_angles_match_a_brute_force_loop(trained_small):
    tree = lrscan.open(trained_small)
    solutions, si = stored_solutions(trained_small), si_mask(trained_small)
    names = list(solutions)
    pairs = [("ft_low", "ft_high"), ("pt", "swa=2"), "swa=3~ft=0.001"]
    result = angles(tree, pairs=pairs).compute()

    n_plr, n_seed = solutions["pt"].shape[:2]
    # A solution is at angle 0 from itself (arccos of a rounded cosine would give ~1e-8).
    expected = np.zeros((n_plr, n_seed, len(names), len(names)))
    for p, s, (i, a), (j, b) in itertools.product(range(n_plr), range(n_seed), enumerate(names), enumerate(names)):
        if i == j:
            continue
        u = solutions[a][p, s, si].astype(np.float64)
        v = solutions[b][p, s, si].astype(np.float64)
        expected[p, s, i, j] = np.arccos(np.clip(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)), -1, 1))
    matrix = xr.DataArray(expected, dims=("plr", "seed", "solution", "solution_b"),
                          coords={"plr": tree["pretrain/weights"].plr.values, "seed": tree["pretrain/weights"].seed.values,
                                  "solution": names, "solution_b": names})
    xr.testing.assert_allclose(result.angle_matrix.reset_coords(drop=True), matrix, rtol=0, atol=1e-10)
    assert result.angle_matrix.attrs["units"] == "rad"

    pair = ["ft=0.001~ft=0.01", "pt~swa=2", "swa=3~ft=0.001"]
    picked = matrix.sel(solution=xr.DataArray(["ft=0.001", "pt", "swa=3"], dims="pair"),
                        solution_b=xr.DataArray(["ft=0.01", "swa=2", "ft=0.001"], dims="pair"))
    picked = picked.drop_vars(["solution", "solution_b"]).assign_coords(pair=pair)
    xr.testing.assert_allclose(result.angle.reset_coords(drop=True), picked, rtol=0, atol=1e-10)
    assert list(result.pair_a.values) == ["ft=0.001", "pt", "swa=3"]
    assert list(result.pair_b.values) == ["ft=0.01", "swa=2", "ft=0.001"]


vectors = st.integers(2, 12).flatmap(
    lambda n: st.tuples(*[hnp.arrays(np.float64, n, elements=st.floats(-100, 100)) for _ in range(2)])
).filter(lambda uv: min(np.linalg.norm(uv[0]), np.linalg.norm(uv[1])) > 1e-3)


@settings(deadline=None)
@given(vectors, st.floats(1e-3, 1e3))
def test_angle_between_is_symmetric_bounded_and_scale_free(uv, scale):
    u, v = uv
    theta = angle_between(u, v)
    assert 0 <= theta <= np.pi
    assert angle_between(v, u) == pytest.approx(theta, abs=1e-12)
    # Near-parallel vectors put the cosine where arccos is steep: rounding costs up to ~1e-8.
    assert angle_between(scale * u, v) == pytest.approx(theta, abs=1e-6)
    assert angle_between(u, scale * v) == pytest.approx(theta, abs=1e-6)
    assert angle_between(u, u) == 0


@settings(deadline=None)
@given(hnp.arrays(np.float64, st.integers(1, 8), elements=st.floats(-100, 100)),
       hnp.arrays(np.float64, st.integers(1, 8), elements=st.floats(-100, 100)))
def test_vectors_on_disjoint_coordinates_are_orthogonal(x, y):
    assume(np.linalg.norm(x) > 1e-3 and np.linalg.norm(y) > 1e-3)
    u = np.concatenate([x, np.zeros_like(y)])
    v = np.concatenate([np.zeros_like(x), y])
    assert angle_between(u, v) == np.pi / 2


def test_angles_read_each_weight_chunk_once(trained_small, monkeypatch):
    reads = collections.Counter()
    get = zarr.storage.LocalStore.get

    async def counting_get(self, key, *args, **kwargs):
        reads[key] += 1
        return await get(self, key, *args, **kwargs)

    monkeypatch.setattr(zarr.storage.LocalStore, "get", counting_get)
    angles(lrscan.open(trained_small)).compute()

    root = zarr.open_group(str(trained_small), mode="r")
    needed = []
    for stage in ("pretrain", "finetune", "swa"):
        array = root[f"{stage}/weights/weights"]
        grid = [range(n) for n in array.cdata_shape]
        if stage != "swa":  # the solution is the last checkpoint: only the chunk that holds it
            grid[-2] = grid[-2][-1:]
        needed += [f"{stage}/weights/weights/{array.metadata.encode_chunk_key(i)}" for i in itertools.product(*grid)]
    weight_reads = {k: n for k, n in reads.items() if "/weights/weights/c/" in k}
    assert weight_reads == dict.fromkeys(needed, 1)


def curves(values, alpha):
    return xr.DataArray(values, dims=("run", "alpha"), coords={"alpha": alpha})


@settings(deadline=None, max_examples=50)
@given(hnp.arrays(np.float64, 5, elements=st.floats(0, 100)), hnp.arrays(np.float64, 5, elements=st.floats(0, 100)),
       st.integers(2, 25))
def test_barrier_of_a_linear_curve_is_zero(start, end, n):
    alpha = np.linspace(0, 1, n)
    line = curves((1 - alpha) * start[:, None] + alpha * end[:, None], alpha)
    xr.testing.assert_allclose(barrier(line), xr.zeros_like(line.isel(alpha=0, drop=True)), atol=1e-9)


def test_barrier_is_the_height_of_a_planted_bump_and_zero_for_a_dip():
    alpha = np.linspace(0, 1, 21)
    tent = 1 - np.abs(2 * alpha - 1)  # 0 at the ends, 1 at alpha = 0.5
    line = 10 + 30 * alpha
    heights = np.array([0.0, 0.5, 7.0, -4.0])  # the last is a dip below the chord
    result = barrier(curves(line + heights[:, None] * tent, alpha))
    expected = xr.DataArray(np.clip(heights, 0, None), dims="run")
    xr.testing.assert_allclose(result, expected, atol=1e-12)
    with pytest.raises(LrscanError, match="from 0 to 1"):
        barrier(curves(np.zeros((1, 3)), [0.0, 0.5, 0.9]))


def test_barriers_match_a_per_point_forward(trained_small):
    tree = lrscan.open(trained_small)
    result = barriers(tree)
    assert list(result.pair.values) == ["ft=0.001~ft=0.01", "swa=3~ft=0.01", "swa=3~ft=0.001"]
    assert result.sizes["alpha"] == 11  # the synthetic MLP's grid

    spec = Spec.from_dict(tree.attrs["spec"])
    solutions, si = stored_solutions(trained_small), si_mask(trained_small)
    seeds = tree["pretrain/metrics"]["data_seed"].values
    alpha = np.linspace(0, 1, 11)
    expected = {split: np.empty(result.train_error.shape) for split in ("train", "test")}
    for (p, s, k), a, b in ((ps + (k,), a, b) for ps in np.ndindex(*solutions["pt"].shape[:2])
                            for k, (a, b) in enumerate(zip(result.pair_a.values, result.pair_b.values))):
        data = DATASETS[spec.dataset].load(spec.data_options, int(seeds[s]))
        model = MODELS[spec.model].build(spec.model_options, data.input_shape, data.n_classes)
        for i, t in enumerate(alpha):
            point = (1 - t) * solutions[a][p, s].astype(np.float64) + t * solutions[b][p, s].astype(np.float64)
            point[si] *= spec.radius / np.linalg.norm(point[si])
            torch.nn.utils.vector_to_parameters(torch.from_numpy(point.astype(np.float32)), model.parameters())
            for split, (x, y) in {"train": (data.x_train, data.y_train), "test": (data.x_test, data.y_test)}.items():
                with torch.no_grad():
                    correct = (model(x)[:, 0] > 0) == (y == 1)
                expected[split][p, s, k, i] = 100 * (1 - correct.double().mean().item())
    for split in ("train", "test"):
        reference = xr.DataArray(expected[split], dims=result.train_error.dims, coords=result.train_error.coords)
        xr.testing.assert_allclose(result[f"{split}_error"], reference, rtol=0, atol=1e-4)
        xr.testing.assert_allclose(result[f"{split}_barrier"], barrier(reference), rtol=0, atol=1e-4)
        assert result[f"{split}_barrier"].attrs["units"] == "%"


def test_bad_pairs_and_stores_without_finetuning_are_refused(trained_small, tmp_path):
    tree = lrscan.open(trained_small)
    with pytest.raises(LrscanError, match=r"unknown solution 'ft=0.5'.*valid: pt, swa=2, swa=3, ft=0.001, ft=0.01"):
        angles(tree, pairs=[("ft_low", "ft=0.5")])
    with pytest.raises(LrscanError, match="unknown solution 'swa=4'"):
        barriers(tree, pairs=["swa=4~pt"])
    with pytest.raises(LrscanError, match="a pair is two solution names"):
        angles(tree, pairs=[("pt", "swa=2", "swa=3")])
    with pytest.raises(LrscanError, match="n_points"):
        barriers(tree, n_points=1)

    path = tmp_path / "pretrain-only.zarr"
    train(load_spec(overrides=SMALL + ["finetune_epochs=0"]), path)
    bare = lrscan.open(path)
    assert not ANALYZERS["barriers"].applies(bare) and ANALYZERS["angles"].applies(bare)
    with pytest.raises(LrscanError, match="no fine-tuning data"):
        barriers(bare)
    with pytest.raises(LrscanError, match="no fine-tuning data"):
        angles(bare)
    with pytest.raises(LrscanError, match="unknown solution 'ft_low'"):
        angles(bare, pairs=[("ft_low", "pt")])
    between = angles(bare, pairs=[("pt", "swa=3")]).angle.compute()
    assert between.dims == ("plr", "seed", "pair") and bool(((between > 0) & (between < np.pi)).all())

"""Model-running analyses work block by block of solutions: the result does not depend on the
block size, and the data are loaded once per process."""

import xarray as xr

import lrscan
from lrscan.analyze import evaluate
from lrscan.analyze.evaluate import Evaluator
from lrscan.analyze.features import features
from lrscan.analyze.geometry import barriers
from lrscan.analyze.progress import block_done, passes, reporting


def test_barriers_and_features_are_the_same_in_blocks_of_one(trained_small, monkeypatch):
    tree = lrscan.open(trained_small)
    whole = barriers(tree), features(tree)
    n_params = int(tree["layers"]["stop"].values.max())
    # One solution per block (for barriers: one path, and one point of it at a time).
    monkeypatch.setattr(evaluate, "BLOCK_VALUES", n_params)
    blocked = barriers(tree), features(tree)
    for a, b in zip(whole, blocked):
        xr.testing.assert_allclose(a, b, rtol=1e-6)


def test_blocks_cover_every_row_once_in_order(trained_small, monkeypatch):
    tree = lrscan.open(trained_small)
    weights = lrscan.analyze.solutions.solution_weights(tree)
    evaluator = Evaluator.of(tree)
    monkeypatch.setattr(evaluate, "BLOCK_VALUES", int(weights.sizes["param"]) * 3)
    seen = list(evaluate.blocks(weights, evaluator.data_index(tree)))
    assert [b[0].start for b in seen] == list(range(0, weights.isel(param=0).size, 3))
    stacked = weights.transpose(..., "param").values.reshape(-1, weights.sizes["param"])
    for rows, flat, _ in seen:
        assert (flat == stacked[rows]).all() or (flat != flat).any()  # NaN rows compare unequal


def test_the_data_are_loaded_once_for_every_analyzer(trained_small, monkeypatch):
    tree = lrscan.open(trained_small)
    evaluate._evaluator.cache_clear()
    built = []
    original = evaluate.Evaluator.__init__

    def counting(self, spec):
        built.append(spec)
        original(self, spec)

    monkeypatch.setattr(evaluate.Evaluator, "__init__", counting)
    barriers(tree), features(tree)
    assert len(built) == 1


def test_passes_over_the_same_solutions_count_once_from_start_to_end():
    seen = []
    with reporting(lambda done, total: seen.append((done, total))):
        block_done(1, 2)  # outside declared passes: as reported
        with passes(3):
            for _ in range(3):
                block_done(2, 4)
                block_done(4, 4)
    assert seen == [(1, 2), (2, 12), (4, 12), (6, 12), (8, 12), (10, 12), (12, 12)]
    with passes(2):  # nobody listening: nothing to count
        block_done(1, 1)

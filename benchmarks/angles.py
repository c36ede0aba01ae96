"""The angles analyzer (one Gram pass) vs reading the vectors once vs a pairwise loop, side by side.

Trains a tiny sweep (a few steps per run, wide MLP so that each vector is sizeable) whose store
holds N solution vectors: ``plr`` runs x (PT end + each SWA + each FT end). Then, on that store:

(a) read: every solution vector read once (``solution_weights(tree).values``);
(b) angles: the ``angles`` analyzer computing the angle between every two solutions of each
    run (the full ``angle_matrix``);
(c) pairwise: the loop one would write by hand — for each pair of solutions of a run, load the
    two SI vectors from the store and compare them (``angle_between``).

The issue's targets: (b) within 2x of (a), and (c) at least 5x slower than (b) at N >= 50.

Run:  python benchmarks/angles.py [--plr 10] [--flr 4] [--width 256] [--repeat 3]
Prints the best-of-``repeat`` time of each and the ratios b/a and c/b.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

import numpy as np

import lrscan
from lrscan.analyze.geometry import angle_between, angles
from lrscan.analyze.solutions import si_slices, solution_weights
from lrscan.spec import load_spec
from lrscan.train.sweep import train


def build_store(path: Path, n_plr: int, n_flr: int, width: int) -> None:
    """A finished sweep of 1 seed with n_plr x (2 + n_flr) solutions, one step per epoch."""
    plr = np.logspace(-3, -1, n_plr).tolist()
    flr = np.logspace(-4, -3, n_flr).tolist()
    overrides = [
        f"plr={plr}", f"flr={flr}", "seeds=1", "swa=[2]", "batch_size=16",
        "pretrain_epochs=2", "finetune_epochs=1", "finetune_from=2", "log_every=1", "checkpoint_epochs=1",
        "compile=false", "device='cpu'", f"model.width={width}",
        "data.n_train=16", "data.n_test=16", "data.n_single=16",
    ]
    train(load_spec(overrides=overrides), path)


def pairwise(tree) -> np.ndarray:
    """Every within-run angle by loading two vectors from the store per pair."""
    weights = solution_weights(tree)
    si = np.concatenate([np.arange(s.start, s.stop) for s in si_slices(tree)])
    out = []
    for p, s in itertools.product(range(weights.sizes["plr"]), range(weights.sizes["seed"])):
        for i, j in itertools.combinations(range(weights.sizes["solution"]), 2):
            u = weights.isel(plr=p, seed=s, solution=i, param=si).values
            v = weights.isel(plr=p, seed=s, solution=j, param=si).values
            out.append(angle_between(u, v))
    return np.array(out)


def best_time(func, repeat: int):
    """Best wall time of ``repeat`` calls and the last result."""
    best = np.inf
    for _ in range(repeat):
        start = time.perf_counter()
        result = func()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plr", type=int, default=10, help="PLR values (runs)")
    parser.add_argument("--flr", type=int, default=4, help="FLR values (fine-tuned solutions per run)")
    parser.add_argument("--width", type=int, default=256, help="MLP width (vector length ~ width^2)")
    parser.add_argument("--repeat", type=int, default=3, help="take the best of this many timings")
    parser.add_argument("--store", type=Path, help="keep the store here (default: a temporary directory)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = args.store or Path(tmp) / "angles.zarr"
        build_store(path, args.plr, args.flr, args.width)
        tree = lrscan.open(path)
        shape = solution_weights(tree).sizes
        n_vectors = shape["plr"] * shape["seed"] * shape["solution"]
        n_pairs = shape["plr"] * shape["seed"] * shape["solution"] * (shape["solution"] - 1) // 2
        print(f"N = {n_vectors} stored vectors of {shape['param']} parameters, {n_pairs} within-run pairs")

        # The lazy tree caches nothing: every timing below reads from the store again.
        best_time(lambda: solution_weights(tree).values, 1)  # warm the page cache
        read, _ = best_time(lambda: solution_weights(tree).values, args.repeat)
        gram, matrix = best_time(lambda: angles(tree).angle_matrix.values, args.repeat)
        loop, looped = best_time(lambda: pairwise(tree), args.repeat)

        i, j = np.triu_indices(shape["solution"], 1)
        if not np.allclose(matrix[..., i, j].ravel(), looped, rtol=0, atol=1e-10):
            raise SystemExit("the angle pass and the pairwise loop disagree")
        print(f"(a) read every vector once  {read * 1e3:9.1f} ms")
        print(f"(b) angles (Gram pass)      {gram * 1e3:9.1f} ms")
        print(f"(c) pairwise load-and-compare {loop * 1e3:7.1f} ms")
        print(f"b/a = {gram / read:.2f}  (target <= 2)")
        print(f"c/b = {loop / gram:.1f}  (target >= 5)")


if __name__ == "__main__":
    main()

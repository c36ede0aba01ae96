"""Assertions for lrscan data, in the spirit of ``xarray.testing``: each prints what differs."""

from __future__ import annotations

import os

import numpy as np
import xarray as xr

from lrscan.store import open_store

# What differs between two stores holding the same runs: when and as which store each was made, and
# how often `verify --fix` repaired it.
VOLATILE_ATTRS = ("created", "store_id", "repairs")


def assert_on_sphere(tree: xr.DataTree, group: str = "pretrain/weights", *, rtol: float = 1e-5) -> None:
    """Assert that every stored weight vector of ``group`` has SI-group norm equal to the radius."""
    from lrscan.analyze.solutions import si_slices

    radius = tree.attrs["spec"]["sweep"]["radius"]
    weights = tree[group]["weights"]
    sq = sum((weights.isel(param=part).astype(np.float64) ** 2).sum("param") for part in si_slices(tree))
    norm = np.sqrt(sq).compute()
    written = norm.notnull()
    if not bool(written.any()):
        raise AssertionError(f"{group} holds no written weights")
    bad = written & (abs(norm - radius) > rtol * radius)
    if bool(bad.any()):
        worst = float(abs(norm - radius).where(written).max())
        raise AssertionError(f"{int(bad.sum())} weight vectors of {group} are off the sphere of radius "
                             f"{radius}; worst deviation {worst:.3g}")


def assert_stores_identical(a: str | os.PathLike, b: str | os.PathLike) -> None:
    """Assert that two stores hold the same groups, coordinates, values and attributes.

    Values must be equal bit for bit (NaN equal to NaN); the creation time is ignored.
    """
    ta, tb = open_store(a), open_store(b)
    groups_a, groups_b = set(ta.groups), set(tb.groups)
    if groups_a != groups_b:
        raise AssertionError(f"groups differ: only in a {sorted(groups_a - groups_b)}, only in b {sorted(groups_b - groups_a)}")
    for group in sorted(groups_a):
        da_, db_ = ta[group].to_dataset(inherit=False), tb[group].to_dataset(inherit=False)
        if group == "/":
            da_.attrs = {k: v for k, v in da_.attrs.items() if k not in VOLATILE_ATTRS}
            db_.attrs = {k: v for k, v in db_.attrs.items() if k not in VOLATILE_ATTRS}
        try:
            xr.testing.assert_identical(da_.load(), db_.load())
        except AssertionError as err:
            raise AssertionError(f"group {group} differs:\n{err}") from None

"""The sweep store: one zarr v3 directory laid out as an xarray DataTree.

::

    /                 attrs: lrscan_schema, lrscan_version, torch_version, store_id, spec, steps_per_epoch
    /layers           the flat state vector's layout: start, stop, shape, si, trainable, buffer (dim layer)
    /pretrain/metrics train/test loss and accuracy, weight_norm, grad_norm, running train loss
                      and accuracy (plr, seed, epoch); done, diverged_epoch (plr, seed)
    /pretrain/weights weights (plr, seed, epoch, param) at the checkpoint epochs
    /finetune/...     the same with an flr dimension (plr, flr, seed, ...)
    /swa/metrics      metrics of the SWA solutions (plr, seed, swa); done (plr, seed)
    /swa/weights      weights (plr, seed, swa, param)

Metrics and weights sit in sibling groups because they are logged at different epochs, and a
DataTree requires a child's index to match its parent's.  Every array is allocated up front
(unwritten values read as NaN, flags as 0) and chunked so that one run owns whole chunks: a
run's writes touch nothing of any other run, and its ``done`` flag is written after its data.
See store/README.md for the user-facing description.

One module per job: :mod:`~lrscan.store.reading` (location, attributes, damage),
:mod:`~lrscan.store.opening` (as a lazy DataTree),
:mod:`~lrscan.store.create` (the skeleton), :mod:`~lrscan.store.checksum`,
:mod:`~lrscan.store.writer` (region writes), :mod:`~lrscan.store.stream` (the streamed
checkpoint sink, which needs torch and is loaded on first use), :mod:`~lrscan.store.claims`,
:mod:`~lrscan.store.verify`, :mod:`~lrscan.store.arrays` (the runs' bookkeeping in one pass),
:mod:`~lrscan.store.digest` (what analyses were computed from) and :mod:`~lrscan.store.status`
(what ``lrscan info`` reports). Reading and checking a store never imports torch; ``lrscan info``
and ``verify`` read the store's files without zarr, xarray or dask.
"""

from lrscan.store.checksum import RunData, canonical_nan, run_checksum, weights_crc
from lrscan.store.claims import Claim, beside, claims_in_progress
from lrscan.store.digest import runs_digest
# The private readers stay importable from here, as from the module this package replaced.
from lrscan.store.reading import (RUN_DIMS, RUN_FLAGS, SCHEMA_VERSION, SWA_METRICS, StoreDamaged, _fs,  # noqa: F401
                                  _require_store, _root_attrs, damage, is_local, read_spec)
from lrscan.store.verify import Problem, verify

# Loaded on first use: opening a store as a DataTree needs xarray, making one dask, writing one
# zarr (`lrscan info` and `verify` read the files alone, and would pay most of their second to
# import those), and the streamed sink subclasses the training loop's, which imports torch.
_LAZY = {"attach": "opening", "open_store": "opening", "check_store": "create", "create_or_check": "create",
         "store_path": "create", "weight_chunk_rows": "create", "RunEnd": "writer", "StoreWriter": "writer",
         "WeightBlock": "writer", "StoreCheckpoints": "stream"}

__all__ = [
    "RUN_DIMS", "RUN_FLAGS", "SCHEMA_VERSION", "SWA_METRICS", "Claim", "attach", "Problem", "RunData",
    "RunEnd", "StoreCheckpoints", "StoreDamaged", "StoreWriter", "WeightBlock", "beside", "canonical_nan",
    "check_store", "claims_in_progress", "create_or_check", "damage", "is_local", "open_store", "read_spec",
    "run_checksum", "runs_digest", "store_path", "verify", "weight_chunk_rows", "weights_crc",
]


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'lrscan.store' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"lrscan.store.{_LAZY[name]}"), name)

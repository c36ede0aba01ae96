"""Checkpoints and metric rows reach the store while a batch trains, through one write path."""

import numpy as np
import pytest
import zarr

import lrscan.store.create
import lrscan.train.sweep
from lrscan.spec import load_spec
from lrscan.store import verify
from lrscan.testing import assert_stores_identical
from lrscan.train.sweep import Sweep, train
from tests.conftest import SMALL


@pytest.fixture
def one_row_chunks(monkeypatch):
    # Every weight chunk holds one checkpoint, so a stage writes a chunk at every checkpoint.
    monkeypatch.setattr(lrscan.store.create, "WEIGHT_CHUNK_BYTES", 1)


def test_checkpoints_and_rows_are_in_the_store_before_the_batch_is_done(tmp_path, one_row_chunks, monkeypatch):
    monkeypatch.setattr(lrscan.train.sweep, "SNAPSHOT_SECONDS", 0.0)  # a snapshot (and a row flush) per row
    store = tmp_path / "s.zarr"
    seen = []

    def look(progress):
        if progress.phase != "pretrain" or seen:
            return
        root = zarr.open_group(str(store), mode="r")
        done = root["pretrain/metrics/done"][...]
        weights = root["pretrain/weights/weights"]
        epochs = list(root["pretrain/weights/epoch"][...])
        rows = root["pretrain/metrics/test_acc"][...]
        if not done.any() and np.isfinite(weights[0, 0, epochs.index(2.0)]).all():
            seen.append((np.isfinite(rows[0, 0, :3]).all(), np.isnan(weights[0, 0, -1]).all()))

    train(load_spec(overrides=[*SMALL, "runs_per_batch=4"]), store, progress=look)
    assert seen, "no checkpoint of a batch in flight was in the store"
    rows_visible, later_rows_missing = seen[0]
    assert rows_visible and later_rows_missing
    assert verify(store) == []  # the checksums chained chunk by chunk are the stored data's


def test_a_streamed_store_equals_one_written_whole(tmp_path, monkeypatch):
    spec = load_spec(overrides=SMALL)
    train(spec, tmp_path / "whole.zarr")
    monkeypatch.setattr(lrscan.store.create, "WEIGHT_CHUNK_BYTES", 1)
    train(spec, tmp_path / "streamed.zarr")
    # Chunking differs; every value, coordinate and checksum is the same.
    assert_stores_identical(tmp_path / "whole.zarr", tmp_path / "streamed.zarr")


def test_host_memory_is_one_chunk_per_run_not_every_checkpoint(tmp_path, monkeypatch):
    """A batch holds one weight chunk per run on the host, so big models are no longer cut to
    batches of one run by the checkpoints they keep."""
    spec = load_spec(overrides=[*SMALL, "runs_per_batch=4", "checkpoint_epochs=0.25"])
    sweep = Sweep(spec, tmp_path / "s.zarr")
    n_params = sweep.setup.layers[-1].stop
    n_checkpoints = sweep.plan.pretrain.checkpoint_steps.size
    # Room for 4 runs' chunk of one row each, not for 4 runs' every checkpoint.
    monkeypatch.setattr(lrscan.store.create, "WEIGHT_CHUNK_BYTES", 4 * n_params)
    monkeypatch.setattr(lrscan.train.sweep, "BATCH_BYTES", 4 * 4 * n_params * 2)
    sweep = Sweep(spec, tmp_path / "t.zarr")
    assert n_checkpoints > 2
    assert {len(b.runs) for b in sweep.cuts["pretrain"]} == {4}

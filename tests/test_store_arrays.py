"""lrscan.store.arrays: small arrays and the runs' bookkeeping read chunk file by chunk file
(issue 16's 1-second `info` and `verify`) must give zarr's values exactly, or hand over to zarr."""

import shutil

import numpy as np
import pytest
import zarr

from lrscan.store.arrays import PlainArray, array_names, open_array, read_array, read_flags
from lrscan.store.reading import RUN_DIMS, RUN_FLAGS


def _same(ours, theirs):
    theirs = np.asarray(theirs, dtype=object) if ours.dtype == object else np.asarray(theirs)
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    if ours.dtype == object:
        assert ours.tolist() == theirs.tolist()
    else:
        np.testing.assert_array_equal(ours, theirs)  # NaNs in the same places count as equal


@pytest.mark.parametrize("dtype, fill", [("float64", np.nan), ("float32", 0.5), ("int64", 0), ("uint8", 3),
                                         ("bool", False), ("str", "")])
def test_plain_reader_gives_zarrs_values_with_edge_chunks_and_unwritten_ones(tmp_path, dtype, fill):
    # 5 x 7 in chunks of 2 x 3: partial chunks at both edges; one chunk never written (its fill).
    path = tmp_path / "a.zarr"
    root = zarr.open_group(str(path), mode="w")
    rng = np.random.default_rng(0)
    values = rng.normal(size=(5, 7)) * 10
    data = values.astype(str) if dtype == "str" else values.astype(dtype)
    arr = root.create_array("x", shape=(5, 7), chunks=(2, 3), dtype=str if dtype == "str" else dtype,
                            fill_value=fill)
    arr[:4, :] = data[:4]
    arr[4, :3] = data[4, :3]  # chunk (2, 1) and (2, 2) stay unwritten
    reader = open_array(path, "x")
    assert isinstance(reader, PlainArray)  # the fast path, not zarr's
    _same(reader[...], arr[...])
    for index in [(0,), (3,), (4,), (-1,), (4, 5), (1, 6), (2, 0)]:
        _same(np.asarray(reader[index], dtype=object if dtype == "str" else None), arr[index])
    _same(read_array(path, "x"), arr[...])
    assert array_names(path, "") == ["x"]


def test_read_flags_equal_zarrs_on_a_store_and_a_deleted_chunk_reads_as_never_written(trained_small, tmp_path):
    path = tmp_path / "s.zarr"
    shutil.copytree(trained_small, path)
    (path / "finetune" / "metrics" / "done" / "c" / "1" / "0" / "1").unlink()
    flags = read_flags(path)
    root = zarr.open_group(str(path), mode="r")
    assert list(flags) == ["pretrain", "swa", "finetune"]
    for stage, arrays in flags.items():
        expected = [n for n in (*RUN_FLAGS, *RUN_DIMS[stage]) if n in root[f"{stage}/metrics"]]
        assert list(arrays) == expected
        for name, values in arrays.items():
            _same(values, root[f"{stage}/metrics/{name}"][...])
    assert flags["finetune"]["done"][1, 0, 1] == 0 and flags["finetune"]["done"].sum() == flags["finetune"]["done"].size - 1


def test_an_encoding_it_does_not_know_goes_through_zarr(tmp_path):
    path = tmp_path / "b.zarr"
    root = zarr.open_group(str(path), mode="w")
    arr = root.create_array("x", shape=(4, 4), chunks=(2, 2), dtype="float64", compressors=None)  # no zstd
    arr[...] = np.arange(16.0).reshape(4, 4)
    reader = open_array(path, "x")
    assert not isinstance(reader, PlainArray)
    np.testing.assert_array_equal(reader[1], arr[1])

"""Nothing lost: verification, concurrent and distributed training, failed writes."""

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner

import lrscan
from lrscan.cli import main
from lrscan.errors import LrscanError
from lrscan.spec import load_spec
from lrscan.store import Claim, beside, verify
from lrscan.testing import assert_stores_identical
from lrscan.train.sweep import train
from tests.conftest import SMALL, corrupt_chunk, train_store

# Small batches, so that a sweep has several units of work to share or to lose.
SPLIT = SMALL + ["runs_per_batch=3"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The store an uninterrupted single process makes from SPLIT."""
    return train_store(tmp_path_factory, SPLIT)


def sets(overrides):
    return [a for o in overrides for a in ("--set", o)]


def test_a_clean_store_verifies(reference):
    assert verify(reference) == []
    result = CliRunner().invoke(main, ["verify", str(reference)])
    assert result.exit_code == 0 and "0 problem runs" in result.stderr


def test_verify_names_a_corrupted_run_and_train_redoes_only_it(reference, tmp_path):
    path = tmp_path / "s.zarr"
    shutil.copytree(reference, path)
    corrupt_chunk(path)
    problems = verify(path)
    assert [(p.stage, p.index, p.kind) for p in problems] == [("finetune", (1, 0, 1), "corrupted")]
    result = CliRunner().invoke(main, ["verify", str(path)])
    assert result.exit_code == 1
    assert "finetune run (plr=0.1, flr=0.001, seed=1): corrupted" in result.stdout
    fixed = CliRunner().invoke(main, ["verify", str(path), "--fix"])
    assert "marked to be redone" in fixed.stderr
    assert verify(path)[0].kind == "incomplete"
    assert train(load_spec(overrides=SPLIT), path) == {"pretrain": 0, "swa": 0, "finetune": 1}
    assert verify(path) == []
    assert_stores_identical(reference, path)


def test_a_deleted_chunk_is_reported_missing(reference, tmp_path):
    path = tmp_path / "m.zarr"
    shutil.copytree(reference, path)
    (path / "pretrain" / "weights" / "weights" / "c" / "0" / "1" / "0" / "0").unlink()
    assert [(p.stage, p.index, p.kind) for p in verify(path)] == [("pretrain", (0, 1), "missing")]


def test_a_failed_write_loses_nothing_and_the_rerun_finishes(reference, tmp_path, monkeypatch):
    """A full disk in the middle of fine-tuning: one line, earlier runs kept, rerun completes."""
    from zarr.storage import LocalStore

    path = tmp_path / "full.zarr"
    real_set = LocalStore.set
    calls = {"n": 0}

    async def set_until_full(self, key, value):
        if "finetune/weights/weights/c/" in key:
            calls["n"] += 1
            if calls["n"] > 3:  # the second fine-tuning batch finds the disk full
                raise OSError(28, "No space left on device")
        return await real_set(self, key, value)

    monkeypatch.setattr(LocalStore, "set", set_until_full)
    with pytest.raises(LrscanError, match="No space left on device; runs finished before are kept"):
        train(load_spec(overrides=SPLIT), path)
    monkeypatch.setattr(LocalStore, "set", real_set)
    kinds = {p.kind for p in verify(path)}
    assert kinds == {"incomplete"}  # nothing half-written is marked done
    done = lrscan.open(path)["finetune/metrics"]["done"].values
    assert done.sum() == 3
    train(load_spec(overrides=SPLIT), path)
    assert_stores_identical(reference, path)


def test_claims_keep_concurrent_processes_apart(tmp_path):
    with Claim(tmp_path, "pretrain", 0) as mine:
        assert mine.held
        with Claim(tmp_path, "pretrain", 0) as other:
            # Our own live claim: a second claim in this process is a leftover to take over.
            assert other.held
    claims = beside(tmp_path, "claims")
    claims.mkdir(exist_ok=True)
    # A claim of a live process on this host (pid 1) is respected...
    (claims / "pretrain-1").write_text(f'{{"host": "{os.uname().nodename}", "pid": 1}}')
    with Claim(tmp_path, "pretrain", 1) as claim:
        assert not claim.held
    # ...one of a process that is gone is stale and taken over.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (claims / "pretrain-2").write_text(f'{{"host": "{os.uname().nodename}", "pid": {dead.pid}}}')
    with Claim(tmp_path, "pretrain", 2) as claim:
        assert claim.held
    assert not (claims / "pretrain-2").exists()
    # ...and so is one of a killed process its parent has not reaped yet (a zombie).
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    time.sleep(0.5)
    (claims / "pretrain-3").write_text(f'{{"host": "{os.uname().nodename}", "pid": {zombie.pid}}}')
    with Claim(tmp_path, "pretrain", 3) as claim:
        assert claim.held
    zombie.wait()


def test_two_processes_on_one_store_split_the_work(reference, tmp_path):
    path = tmp_path / "shared.zarr"  # both start on nothing: they also race to create it
    command = [sys.executable, "-m", "lrscan", "train", "--store", str(path), *sets(SPLIT)]
    procs = [subprocess.Popen(command, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    # Each run was written by exactly one of them.
    written = {"pretrain": 0, "swa": 0, "finetune": 0}
    for out in outputs:
        lines = [l for l in out.splitlines() if l.startswith("trained")]
        if not lines:  # it started after the other had finished everything
            assert "every run is already done" in out, out
            continue
        line = lines[-1]
        for part in line.split(" runs in")[0].removeprefix("trained ").split(", "):
            if part[:1].isdigit():
                n, stage = part.split()
                written[stage] += int(n)
    assert written == {"pretrain": 4, "swa": 4, "finetune": 8}
    assert_stores_identical(reference, path)
    assert not list(beside(path, "claims").iterdir())


def test_a_distributed_sweep_survives_a_killed_worker(reference, tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    path = tmp_path / "dist.zarr"
    spec = load_spec(overrides=SPLIT)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        killed = {"done": False}

        def kill_one(progress):
            if not killed["done"] and progress.phase == "finetune":
                pid = next(iter(client.run(os.getpid).values()))
                os.kill(pid, signal.SIGKILL)
                killed["done"] = True

        written = train(spec, path, client=client, progress=kill_one)
    assert killed["done"]
    assert sum(written.values()) >= 16 - 3  # a killed task's runs may be written by its retry
    assert verify(path) == []
    assert_stores_identical(reference, path)


def test_cli_train_with_workers(reference, tmp_path):
    path = tmp_path / "w.zarr"
    result = CliRunner().invoke(main, ["train", "--store", str(path), "--workers", "2", *sets(SPLIT)])
    assert result.exit_code == 0, result.output
    assert_stores_identical(reference, path)
    bad = CliRunner().invoke(main, ["train", "--store", str(path), "--workers", "2", "--scheduler", "tcp://x:1"])
    assert bad.exit_code == 2 and "either --workers or --scheduler" in bad.stderr


def test_a_store_of_another_schema_is_refused(reference, tmp_path):
    import zarr

    path = tmp_path / "old.zarr"
    shutil.copytree(reference, path)
    zarr.open_group(str(path), mode="r+").attrs["lrscan_schema"] = 99
    result = CliRunner().invoke(main, ["train", "--store", str(path), *sets(SPLIT)])
    assert result.exit_code == 2 and "has store schema 99; this lrscan reads schema 1" in result.stderr


def test_unwritable_store_path(tmp_path):
    afile = tmp_path / "file"
    afile.write_text("x")
    result = CliRunner().invoke(main, ["train", "--store", str(afile / "sub.zarr"), *sets(SMALL)])
    assert result.exit_code == 2 and "cannot write the store" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_the_store_holds_no_pickles(reference):
    import json

    for meta in reference.rglob("zarr.json"):
        text = meta.read_text()
        assert "pickle" not in text.lower(), meta
        doc = json.loads(text)
        if doc.get("node_type") == "array":
            assert doc["data_type"] in {"float32", "float64", "int64", "uint8", "bool", "string"}, meta


def test_a_store_at_an_fsspec_url(reference):
    """Any fsspec URL works as a store location; here the in-memory filesystem."""
    url = "memory://lrscan-test/sweep.zarr"
    assert train(load_spec(overrides=SPLIT), url) == {"pretrain": 4, "swa": 4, "finetune": 8}
    assert train(load_spec(overrides=SPLIT), url) == {"pretrain": 0, "swa": 0, "finetune": 0}
    assert verify(url) == []
    tree = lrscan.open(url)
    np.testing.assert_array_equal(tree["finetune/weights"]["weights"].values,
                                  lrscan.open(reference)["finetune/weights"]["weights"].values)
    from lrscan.analyze.run import analyze
    from lrscan.summary import summarise

    assert analyze(url, ["metrics"]) == {"metrics": "computed"}
    assert "status    complete" in summarise(url)


def test_analyze_on_a_local_cluster_matches_in_process(reference, tmp_path):
    import xarray as xr

    path = tmp_path / "a.zarr"
    shutil.copytree(reference, path)
    result = CliRunner().invoke(main, ["analyze", str(path), "--workers", "2", "--only", "angles",
                                       "--only", "metrics"])
    assert result.exit_code == 0, result.output
    tree = lrscan.open(path)
    xr.testing.assert_allclose(tree["analysis/angles"].to_dataset().load().drop_attrs(),
                               tree.lrscan.angles().compute().drop_attrs())


def test_a_batch_killed_mid_way_resumes_from_its_last_snapshot(reference, tmp_path, monkeypatch):
    """With a snapshot at every logged step, a crash in the middle of a batch loses only the
    steps since its last row, and the finished store is still identical."""
    import lrscan.train.sweep as sweep_module

    monkeypatch.setattr(sweep_module, "SNAPSHOT_SECONDS", 0.0)
    path = tmp_path / "snap.zarr"
    pretrain_steps = 4 * 16

    def crash(progress):  # in the first fine-tuning batch, after its first logged epoch
        if progress.phase == "finetune" and progress.done > pretrain_steps + 3 * 4:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        train(load_spec(overrides=SPLIT), path, progress=crash)
    snapshots = list(beside(path, "resume").glob("*.npz"))
    assert [p.name for p in snapshots] == ["finetune-0-0-0x3.npz"]
    seen = []
    train(load_spec(overrides=SPLIT), path, progress=lambda p: seen.append(p))
    # Fine-tuning is 3 batches (3, 3 and 2 runs) of 8 steps: 64 model-steps. The first batch
    # went on from its snapshot after its first logged epoch (4 of 8 steps): those 12 count as
    # done at once, and the progress still reaches its total (issue 18: it stopped short).
    assert seen[0].done == 3 * 4
    assert seen[-1].total == 64 and seen[-1].done == 64
    assert not list(beside(path, "resume").glob("*.npz"))  # removed once the batch is written
    assert_stores_identical(reference, path)

"""Issue 18: nothing lost, nothing wrong, nothing hung — the holes an adversarial run found.

Each test here failed (or hung) before its fix; hangs are bounded with an alarm, races looped.
"""

import errno
import json
import multiprocessing
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import lrscan
from lrscan.cli import main
from lrscan.errors import LrscanError
from lrscan.spec import Spec, load_spec
from lrscan.store import Claim, beside, verify
from lrscan.store.claims import _start_time
from lrscan.testing import assert_stores_identical
from lrscan.train.sweep import Sweep, train
from tests.conftest import SMALL, assert_one_line_error, corrupt_chunk

SPLIT = SMALL + ["runs_per_batch=3"]
HOST = socket.gethostname()


def sets(overrides):
    return [a for o in overrides for a in ("--set", o)]


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@contextmanager
def bounded(seconds: int):
    """Fail instead of hanging: an alarm after ``seconds``."""
    def expire(*_):
        raise TimeoutError(f"still waiting after {seconds} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    path = tmp_path_factory.mktemp("ref") / "store.zarr"
    train(load_spec(overrides=SPLIT), path)
    return path


# 1. A leftover snapshot is bound to the store and spec it came from.

def test_a_snapshot_left_by_a_deleted_store_is_not_resumed_into_a_new_one(tmp_path, monkeypatch):
    import lrscan.train.sweep as sweep_module

    monkeypatch.setattr(sweep_module, "SNAPSHOT_SECONDS", 0.0)
    path = tmp_path / "s.zarr"

    def crash(progress):
        if progress.phase == "finetune" and progress.done > 4 * 16 + 12:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        train(load_spec(overrides=SPLIT), path, progress=crash)
    assert list(beside(path, "resume").glob("*.npz"))
    shutil.rmtree(path)  # the user deletes the store; the hidden snapshot folder stays
    other = SPLIT + ["plr=[0.01, 0.3]", "flr=[0.002, 0.02]"]
    notices = []
    train(load_spec(overrides=other), path, notice=notices.append)
    assert any("ignored and removed the snapshot" in n for n in notices), notices
    clean = tmp_path / "clean.zarr"
    train(load_spec(overrides=other), clean)
    assert_stores_identical(clean, path)
    assert verify(path) == []


def test_a_snapshot_without_the_stores_identity_is_refused(reference, tmp_path):
    from lrscan.train.sweep import SnapshotFile

    sweep = Sweep(load_spec(overrides=SPLIT), reference)
    batch = sweep.cuts["finetune"][0]
    mine = SnapshotFile(reference, "finetune", batch, sweep.identity)
    foreign = SnapshotFile(reference, "finetune", batch, "another store")
    mine.path.parent.mkdir(exist_ok=True)
    np.savez(mine.path, runs=np.array(batch.runs), step=4, diverged=np.zeros(3), **{"checkpoints/chunk": 0})
    assert mine.load() is None and not mine.path.exists()  # no identity: removed, batch starts over
    assert foreign.load() is None


# 2. Bounded waits, with messages, on claims that cannot be read or whose PID was reused.

def test_an_unreadable_claim_is_reported_and_taken_over_not_waited_on(tmp_path):
    path = tmp_path / "u.zarr"
    claims = beside(path, "claims")
    claims.mkdir(parents=True)
    for stage_batch in ("pretrain-0-0x3", "pretrain-1-1x1"):
        (claims / stage_batch).write_text("{not json")
        os.utime(claims / stage_batch, (time.time() - 60,) * 2)
    notices = []
    with bounded(120):
        written = train(load_spec(overrides=SPLIT), path, notice=notices.append)
    assert written["pretrain"] == 4
    assert sum("could not be read" in n for n in notices) == 2, notices


def test_a_claim_whose_pid_was_reused_is_taken_over(tmp_path):
    claim_file = beside(tmp_path / "p.zarr", "claims") / "pretrain-0"
    claim_file.parent.mkdir(parents=True)
    # pid 1 is alive, but it is not the process that made this claim: its start time differs.
    claim_file.write_text(json.dumps({"host": HOST, "pid": 1, "start": (_start_time(1) or 0) + 12345}))
    with Claim(tmp_path / "p.zarr", "pretrain", 0) as claim:
        assert claim.held and "PID was reused" in claim.took_over


def test_a_claim_without_a_heartbeat_is_waited_for_with_a_message_then_taken_over(tmp_path, monkeypatch):
    import lrscan.store.claims as claims_module
    import lrscan.train.sweep as sweep_module

    monkeypatch.setattr(claims_module, "CLAIM_TTL", 2.0)
    monkeypatch.setattr(sweep_module, "POLL", 0.2)
    path = tmp_path / "h.zarr"
    claims = beside(path, "claims")
    claims.mkdir(parents=True)
    sweep = Sweep(load_spec(overrides=SPLIT), path)
    (claims / "pretrain-0-0x3").write_text(json.dumps({"host": HOST, "pid": 1}))  # no start time: pid 1 lives
    notices = []
    with bounded(120):
        written = sweep.run(notice=notices.append)
    assert written["pretrain"] == 4
    assert any(n.startswith("waiting for pretrain batch 0-0x3") and "pid 1 on" in n for n in notices), notices
    assert any("gave no heartbeat" in n for n in notices), notices


# 3. Two processes never write the same batch.

def test_done_is_read_again_after_taking_the_claim(reference, tmp_path, digest):
    path = tmp_path / "d.zarr"
    shutil.copytree(reference, path)
    sweep = Sweep(load_spec(overrides=SPLIT), path)
    batch = sweep.cuts["pretrain"][0]
    real = sweep.writer.done
    looks = []

    def stale_first_look(stage):  # what it saw before another process finished the batch
        looks.append(stage)
        return np.zeros_like(real(stage)) if len(looks) == 1 else real(stage)

    sweep.writer.done = stale_first_look
    before = digest(path)
    assert sweep.run_batch("pretrain", batch) == 0
    assert len(looks) == 2 and digest(path) == before


def _contend(store, barrier, held, hold_seconds):
    barrier.wait()
    with Claim(store, "pretrain", "0") as claim:
        if claim.held:
            held.put(os.getpid())
            time.sleep(hold_seconds)


def test_a_stale_claim_is_taken_over_by_exactly_one_process(tmp_path):
    """Looped race: 4 processes at once on one claim of a dead process, 25 times."""
    context = multiprocessing.get_context("fork")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    store = tmp_path / "race.zarr"
    claim_file = beside(store, "claims") / "pretrain-0"
    claim_file.parent.mkdir(parents=True)
    for trial in range(25):
        claim_file.write_text(json.dumps({"host": HOST, "pid": dead.pid}))
        barrier, held = context.Barrier(4), context.Queue()
        procs = [context.Process(target=_contend, args=(store, barrier, held, 0.3)) for _ in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(30)
        holders = []
        while not held.empty():
            holders.append(held.get())
        assert len(holders) == 1, f"trial {trial}: {len(holders)} holders"
        assert not claim_file.exists()  # released by its one holder


# 4. Damaged metadata: one line naming it; verify exits 1, the others 2.

@pytest.mark.parametrize("damage", ["deleted", "truncated"])
@pytest.mark.parametrize("node", ["finetune/metrics", "pretrain/metrics/test_acc", "."])
def test_damaged_metadata_is_one_line_naming_it(trained_small, tmp_path, damage, node):
    path = tmp_path / "dmg.zarr"
    shutil.copytree(trained_small, path)
    meta = path / node / "zarr.json"
    if damage == "deleted":
        meta.unlink()
    else:
        meta.write_bytes(meta.read_bytes()[:40])
    name = "zarr.json" if node == "." else f"{node}/zarr.json"
    checked = cli("verify", path)
    assert checked.exit_code == 1, checked.output
    lines = checked.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in checked.output, checked.output
    assert "is damaged" in lines[0] and name in lines[0], lines[0]
    for args in (["info", path], ["analyze", path, "--only", "angles"], ["train", "--store", path, *sets(SMALL)]):
        assert_one_line_error(cli(*args), f"is damaged: .*{name}")


# 5. Analyses are stale once the runs they read change.

def test_retraining_after_verify_fix_makes_analyses_stale(reference, tmp_path):
    path = tmp_path / "fp.zarr"
    shutil.copytree(reference, path)
    assert cli("analyze", path, "--only", "angles").exit_code == 0
    assert json.loads(cli("info", path, "--json").stdout)["analyses"]["angles"]["status"] == "up to date"
    corrupt_chunk(path)
    assert cli("verify", path, "--fix").exit_code == 1
    train(load_spec(overrides=SPLIT), path)  # the same bits again
    assert verify(path) == []
    state = json.loads(cli("info", path, "--json").stdout)
    assert state["analyses"]["angles"]["status"] == "stale"
    again = cli("analyze", path, "--only", "angles")
    assert again.exit_code == 0 and "angles       computed" in again.stderr


def test_the_runs_digest_is_the_same_read_through_xarray_or_zarr(trained_small):
    from lrscan.store import runs_digest

    tree = lrscan.open(trained_small)
    for stages in (("pretrain",), ("pretrain", "finetune"), ("pretrain", "swa", "finetune")):
        assert runs_digest(tree, stages) == runs_digest(trained_small, stages)
    assert runs_digest(tree, ("pretrain",)) != runs_digest(tree, ("pretrain", "finetune"))


# 6. What cannot fit is refused with one line naming the estimate, before anything is allocated.

@pytest.mark.parametrize("args, pattern", [
    (["--set", "seeds=1000000000"], r"cannot fit: about 6,000,000,000 runs \(2 PLRs x 1,000,000,000 seeds"),
    (["--set", "checkpoint_epochs=1e-9"], r"cannot fit: about [\d,]+ checkpoints per run"),
    (["--set", "checkpoint_epochs={step = 1e-9}"], r"cannot fit: about [\d,]+ checkpoints per run"),
    (["--set", "pretrain_epochs=1e9"], r"cannot fit: about [\d,]+ metric rows per run"),
    (["--set", "pretrain_epochs=1e13", "--set", "log_every=1e12", "--set", "checkpoint_epochs=[0]",
      "--set", "swa=[]", "--set", "finetune_from=0"],
     r"cannot be trained: .* model-steps; .* years"),
    (["--set", "data.n_train=1000000000"], r"cannot fit: data.n_train = 1,000,000,000 makes data sets of about"),
    (["--config", "/dev/zero"], r"larger than 1 MB"),
])
def test_sizes_that_cannot_fit_are_refused(tmp_path, args, pattern):
    path = tmp_path / "big.zarr"
    with bounded(60):
        result = cli("train", "--store", path, *(sets(SMALL) if "--config" not in args else []), *args)
    assert_one_line_error(result, pattern)
    assert not path.exists() and not list(tmp_path.glob(".*creating*"))


def test_a_huge_grid_is_refused(tmp_path):
    grid = "[" + ", ".join(f"{1e-4 * (1 + i * 1e-6):.12g}" for i in range(1_000_000)) + "]"
    with bounded(60), pytest.raises(LrscanError, match=r"cannot fit: about [\d,]+ runs \(1,000,000 PLRs"):
        load_spec(overrides=[*SMALL, f"plr={grid}"])


def test_a_store_larger_than_the_free_disk_is_refused(tmp_path, monkeypatch):
    import lrscan.train.estimate as estimate_module

    monkeypatch.setattr(estimate_module.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**6, 10**6, 1000))
    result = cli("train", "--store", tmp_path / "full.zarr", *sets(SMALL))
    assert_one_line_error(result, r"this sweep cannot fit: 16 runs, about [\d.]+ [kM]B of store, [\d,]+ model-steps, "
                                  r"but .* has 1 kB free")
    assert not (tmp_path / "full.zarr").exists()


def test_a_tiny_cifar_batch_claiming_a_huge_array_is_refused(tmp_path):
    import pickle

    from lrscan.data.images import _read_batches

    plain = pickle.dumps({"data": np.zeros(4, np.uint8), "labels": [0]}, protocol=2)
    shape_at = plain.index(b"K\x00\x85")  # the shape (0,) numpy's reconstruction allocates
    big = (10**12).to_bytes(6, "little")
    (tmp_path / "data_batch_1").write_bytes(plain[:shape_at] + b"\x8a" + bytes([len(big)]) + big + plain[shape_at + 2:])
    with bounded(30), pytest.raises(LrscanError, match=r"claims an array of 1,000,000,000,000 elements, more than"):
        _read_batches(tmp_path, ("data_batch_1",), "labels")


# 7. One line and exit 2 where tracebacks were.

def _failing_set(monkeypatch, code, when=lambda key: True):
    """Every file zarr writes or deletes under a key ``when`` picks fails with ``code``, as on
    a read-only or full filesystem (zarr deletes a chunk set to its fill value)."""
    import zarr.storage._local as local
    from zarr.storage import LocalStore

    def fail_if(key):
        if when(str(key)):
            raise OSError(code, os.strerror(code))

    real_put = local._put

    def put(path, value, exclusive=False):
        fail_if(Path(path).as_posix().split(".zarr/", 1)[-1])
        return real_put(path, value, exclusive)

    monkeypatch.setattr(local, "_put", put)
    for name in ("delete", "delete_dir"):
        real = getattr(LocalStore, name)

        async def delete(self, key, real=real):
            fail_if(key)
            return await real(self, key)

        monkeypatch.setattr(LocalStore, name, delete)
    real_sync = LocalStore.delete_sync

    def delete_sync(self, key):
        fail_if(key)
        return real_sync(self, key)

    monkeypatch.setattr(LocalStore, "delete_sync", delete_sync)


def assert_ends_in_error(result, pattern):
    """A command that had begun (progress lines on stderr) and then failed as a user error:
    exit status 2, its last line the one error line, no traceback."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert [line for line in lines if line.startswith("Error:")] == lines[-1:], result.stderr
    assert re.search(pattern, lines[-1]), lines[-1]


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
def test_a_read_only_store_is_one_line(reference, tmp_path, monkeypatch, digest, code):
    path = tmp_path / "ro.zarr"
    shutil.copytree(reference, path)
    corrupt_chunk(path)
    flags = path / "finetune" / "metrics" / "done"
    before = digest(path)
    _failing_set(monkeypatch, code)
    assert_one_line_error(cli("verify", path, "--fix"), r"cannot mark the damaged runs .* to be redone")
    assert_ends_in_error(cli("analyze", path, "--only", "angles"), r"could not write /analysis/angles")
    assert flags.exists() and digest(path) == before


def test_a_read_only_store_refuses_training(reference, tmp_path, monkeypatch):
    path = tmp_path / "ro2.zarr"
    shutil.copytree(reference, path)
    import zarr

    zarr.open_group(str(path), path="finetune/metrics", mode="r+")["done"][0, 0, 0] = 0
    _failing_set(monkeypatch, errno.EROFS)
    assert_ends_in_error(cli("train", "--store", path, *sets(SPLIT)), r"could not write to the store")


def test_a_full_disk_during_analyze_is_one_line_and_keeps_earlier_results(reference, tmp_path, monkeypatch):
    path = tmp_path / "fd.zarr"
    shutil.copytree(reference, path)
    _failing_set(monkeypatch, errno.ENOSPC, when=lambda key: key.startswith("analysis/angles"))
    result = cli("analyze", path, "--only", "metrics", "--only", "angles")
    assert_ends_in_error(result, r"could not write /analysis/angles .*No space left on device")
    monkeypatch.undo()
    assert json.loads(cli("info", path, "--json").stdout)["analyses"]["metrics"]["status"] == "up to date"


def test_a_full_disk_while_saving_a_snapshot_is_one_line_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    import lrscan.train.sweep as sweep_module

    monkeypatch.setattr(sweep_module, "SNAPSHOT_SECONDS", 0.0)
    real = np.savez

    def savez_full(file, **arrays):
        real(file, **arrays)  # the file is begun, then the disk fills
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(sweep_module.np, "savez", savez_full)
    path = tmp_path / "snapfull.zarr"
    result = cli("train", "--store", path, *sets(SPLIT))
    assert_ends_in_error(result, r"could not save a snapshot .*No space left on device")
    assert not list(beside(path, "resume").glob("*.tmp.npz"))


@pytest.mark.parametrize("setting, pattern", [
    ("device='cuda:abc'", r"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got 'cuda:abc'"),
    ("seeds=[1e300]", r"seeds\[0\] must be at most"),
])
def test_bad_values_are_one_line_and_leave_nothing_behind(tmp_path, setting, pattern):
    path = tmp_path / "v.zarr"
    assert_one_line_error(cli("train", "--store", path, *sets(SMALL), "--set", setting), pattern)
    assert list(tmp_path.iterdir()) == []


def test_a_missing_gpu_is_one_line_before_any_store_exists(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    path = tmp_path / "gpu.zarr"
    assert_one_line_error(cli("train", "--store", path, *sets(SMALL), "--set", "device='cuda'"),
                          r"device 'cuda' is not on this machine \(it has no CUDA GPU\)")
    assert list(tmp_path.iterdir()) == []


def test_a_killed_creation_leaves_nothing_once_the_store_is_made(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leftover = tmp_path / f".s.zarr.creating-{dead.pid}"
    (leftover / "pretrain").mkdir(parents=True)
    train(load_spec(overrides=SMALL), tmp_path / "s.zarr")
    assert not leftover.exists()


def test_a_failure_inside_creation_removes_its_skeleton(tmp_path, monkeypatch):
    import lrscan.store.create as create

    def broken(path, plan, layers):
        Path(path).mkdir()
        raise OverflowError("Python int too large to convert to C long")

    monkeypatch.setattr(create, "_write_skeleton", broken)
    with pytest.raises(OverflowError):
        train(load_spec(overrides=SMALL), tmp_path / "s.zarr")
    assert list(tmp_path.iterdir()) == []


# 9. A store's recorded paths are never followed for writing.

def test_a_stores_recorded_data_dir_is_never_downloaded_into(tmp_path):
    from lrscan.data import DATASETS

    target = tmp_path / "chosen-by-the-store"
    recorded = load_spec("resnet18si-cifar10", overrides=[f"data.data_dir='{target}'", "data.download=true"])
    assert recorded.data_options["download"] is True  # the user's own spec may download
    spec = Spec.from_dict(json.loads(json.dumps(recorded.to_dict())))  # as analyze reads it back
    assert spec.data_options["download"] is False and not spec.differences(recorded)
    with pytest.raises(LrscanError, match="downloads are off"):
        DATASETS[spec.dataset].load(spec.data_options, 0)
    assert not target.exists()


# 10. Smaller holes.

@pytest.mark.parametrize("command", [["train", "--store", ""], ["info", ""], ["verify", ""], ["analyze", ""],
                                     ["threshold", "--store", ""], ["scan", "--store", ""]])
def test_an_empty_store_path_is_refused(tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(cli(*command), r"store path is empty")
    assert list(tmp_path.iterdir()) == []


def test_dot_dot_segments_create_no_stray_folders(tmp_path):
    result = cli("train", "--store", f"{tmp_path}/missing/../s.zarr", *sets(SMALL))
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "missing").exists() and (tmp_path / "s.zarr" / "zarr.json").exists()


def test_an_unreachable_scheduler_creates_no_store(tmp_path):
    pytest.importorskip("dask.distributed")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = tmp_path / "sched.zarr"
    with bounded(120):
        result = cli("train", "--store", path, "--scheduler", f"tcp://127.0.0.1:{port}", *sets(SMALL))
    assert_one_line_error(result, r"cannot reach the dask scheduler")
    assert list(tmp_path.iterdir()) == []


# The guarantee kept: SIGKILLs at any moment, then the same command, give the same store.

def test_sigkills_during_train_resume_bit_identically(reference, tmp_path):
    import random

    path = tmp_path / "killed.zarr"
    command = [sys.executable, "-m", "lrscan", "train", "--store", str(path), *sets(SPLIT)]
    rng = random.Random(18)
    kills = 0
    for _ in range(4):
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(2.0, 8.0))  # start-up, creation, or training
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    print(f"{kills} SIGKILLs")
    assert kills >= 1
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert_stores_identical(reference, path)
    assert verify(path) == []
    assert not list(tmp_path.glob(".killed.zarr.creating-*"))

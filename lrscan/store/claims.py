"""Claims on batches of runs, so that concurrent ``lrscan train`` processes on one store split the work.

A claim is a file ``.<store>.claims/<stage>-<batch>`` created exclusively with its content
(host, pid, the process's start time); its modification time is its heartbeat. Every
creation and takeover happens under an ``flock`` on the claims folder, so a stale claim is
taken over by exactly one process.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
import uuid
from pathlib import Path

from lrscan.store.reading import _fs, is_local

# A claim without a heartbeat for this many seconds is stale, whoever holds it.
CLAIM_TTL = 600.0
# A claim file lrscan cannot read is taken over once it is this old (written by hand, or cut short).
UNREADABLE_GRACE = 2.0


def beside(store: str | os.PathLike, what: str) -> Path:
    """A folder of lrscan's own next to a local store, ``.<store name>.<what>`` (claims,
    snapshots): zarr would take files inside the store for broken parts of its hierarchy."""
    store = Path(_fs(store)[1])
    return store.parent / f".{store.name}.{what}"


class Claim:
    """An exclusive claim on one batch of a stage, held while the batch trains.

    Use as a context manager; ``held`` says whether this process got the claim, ``holder``
    describes the live claim of another process when it did not, and ``took_over`` why a
    stale claim was replaced when it did. A live claim of another process is respected; a
    stale one (its process gone or restarted under another program, no heartbeat for
    :data:`CLAIM_TTL` seconds, or unreadable) is taken over. Stores that are not on a local
    filesystem (object storage has no exclusive create) are not claimed: there, one dask
    scheduler hands out each batch once.
    """

    def __init__(self, store: str | os.PathLike, stage: str, batch):
        self.local = is_local(store)
        self.path = beside(store if self.local else "remote", "claims") / f"{stage}-{batch}"
        self.held = False
        self.holder: str | None = None
        self.took_over: str | None = None
        self.token = uuid.uuid4().hex

    def __enter__(self) -> "Claim":
        if not self.local:
            self.held = True
            return self
        self.path.parent.mkdir(exist_ok=True)
        mine = {"host": socket.gethostname(), "pid": os.getpid(), "start": _start_time(os.getpid()),
                "token": self.token}
        tmp = self.path.with_name(f".{self.path.name}.{self.token}")
        tmp.write_text(json.dumps(mine))
        try:
            with _locked(self.path.parent):
                try:
                    os.link(tmp, self.path)  # exclusive, and complete from the first moment
                except FileExistsError:
                    why = self._stale()
                    if why is None:
                        return self
                    os.replace(tmp, self.path)
                    self.took_over = why
                self.held = True
        finally:
            tmp.unlink(missing_ok=True)
        return self

    def heartbeat(self) -> None:
        if self.held and self.local and self._ours():
            os.utime(self.path)

    def __exit__(self, *exc) -> None:
        if self.held and self.local:
            with _locked(self.path.parent):
                if self._ours():
                    self.path.unlink(missing_ok=True)
        self.held = False

    def _ours(self) -> bool:
        """Whether the claim file is still this claim (not one that took it over as stale)."""
        try:
            return json.loads(self.path.read_text()).get("token") == self.token
        except (OSError, ValueError, AttributeError):
            return False

    def _stale(self) -> str | None:
        """Why the existing claim is stale, or None when its holder is alive (``holder`` then
        says who that is)."""
        try:
            age = time.time() - self.path.stat().st_mtime
        except OSError:
            return "it was released"
        try:
            owner = json.loads(self.path.read_text())
            host, pid = owner["host"], int(owner["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            if age > UNREADABLE_GRACE:
                return f"the claim file {self.path} could not be read"
            self.holder = f"an unreadable claim {self.path} (written {age:.0f} s ago)"
            return None
        if host == socket.gethostname():
            if pid == os.getpid():
                return "it was a leftover of this process"
            if not _alive(pid):
                return f"its process {pid} is gone"
            if owner.get("start") is not None and owner["start"] != _start_time(pid):
                return f"process {pid} is another program now (its PID was reused)"
        if age > CLAIM_TTL:
            return f"its holder (pid {pid} on {host}) gave no heartbeat for {age:.0f} s"
        self.holder = f"pid {pid} on {host}, heartbeat {age:.0f} s ago"
        return None


@contextlib.contextmanager
def _locked(folder: Path):
    """Hold an exclusive flock on ``folder`` itself (no lock file to leave behind; released if
    this process dies)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _start_time(pid: int) -> int | None:
    """When a process of this host started (clock ticks since boot), or None where unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _alive(pid: int) -> bool:
    """Whether a process of this host is running (a killed one its parent has not yet
    reaped, a zombie, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True  # no /proc here: trust the signal check


def claims_in_progress(store: str | os.PathLike) -> list[dict]:
    """The live claims beside a local store: ``{stage, batch, holder, age}`` each (what
    ``lrscan info`` shows as batches in progress)."""
    if not is_local(store):
        return []
    folder = beside(store, "claims")
    out = []
    for path in sorted(folder.glob("*")) if folder.is_dir() else []:
        if path.name.startswith("."):
            continue
        stage, _, batch = path.name.partition("-")
        claim = Claim(store, stage, batch)
        if claim._stale() is None:
            out.append({"stage": stage, "batch": batch, "holder": claim.holder,
                        "heartbeat_s": round(time.time() - path.stat().st_mtime, 1)})
    return out

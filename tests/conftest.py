import hashlib
import re
from pathlib import Path

import pytest

from lrscan.spec import load_spec

# A sweep small enough to train in about a second: 64 samples, batch 16, 4 steps per epoch.
SMALL = [
    "plr=[0.003, 0.1]",
    "flr=[0.001, 0.01]",
    "seeds=2",
    "batch_size=16",
    "pretrain_epochs=4",
    "finetune_epochs=2",
    "finetune_from=4",
    "log_every=1",
    "checkpoint_epochs=1",
    "swa=[2, 3]",
    "compile=false",
    "device='cpu'",
    "data.n_train=64",
    "data.n_test=128",
    "data.n_single=32",
]


@pytest.fixture
def small_overrides():
    return list(SMALL)


@pytest.fixture
def small_spec():
    def make(*extra):
        return load_spec(overrides=[*SMALL, *extra])

    return make


def tree_digest(path: Path) -> str:
    """A hash of every file's path and bytes under ``path``: equal digests mean nothing changed."""
    h = hashlib.sha256()
    for f in sorted(p for p in Path(path).rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


@pytest.fixture
def digest():
    return tree_digest


@pytest.fixture(scope="session")
def trained_small(tmp_path_factory):
    """A finished small store, shared by tests that only read it."""
    return train_store(tmp_path_factory, SMALL)


def assert_one_line_error(result, pattern):
    """A CLI result failed as a user error should: exit status 2, one line on stderr matching
    ``pattern``, no traceback."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    assert re.search(pattern, lines[0]), lines[0]


def train_store(tmp_path_factory, overrides, preset=None):
    """Train the sweep of ``preset`` (default: the default preset) with ``overrides`` into a
    fresh store under pytest's temporary directory; returns its path."""
    from lrscan.train.sweep import train

    path = tmp_path_factory.mktemp("stores") / "store.zarr"
    train(load_spec(preset, overrides=overrides), path)
    return path


def corrupt_chunk(store: Path) -> Path:
    """Flip one byte in the middle of the weights chunk of fine-tuning run (plr 1, flr 0, seed 1)
    of a store; returns the chunk's path."""
    chunk = Path(store) / "finetune" / "weights" / "weights" / "c" / "1" / "0" / "1" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    return chunk


def two_run_stage(overrides):
    """Two runs of a planted-convnet setup (seeds 0 and 1 at ELR 0.01 and 0.05) through a
    6-step stage logged every 2 steps: the setup, the runs' start, the device data, the stage
    and ``run_stage``'s other keyword arguments."""
    import numpy as np
    import torch

    from lrscan.train.loop import DeviceData
    from lrscan.train.plan import Stage
    from lrscan.train.sweep import Setup

    setup = Setup.build(load_spec("planted-convnet", overrides=overrides))
    start = torch.stack([setup.init_weights(s, 0) for s in (0, 1)])
    data = setup.data[0]
    dev = DeviceData(data.x_train[None], data.y_train[None], data.x_test[None], data.y_test[None])
    stage = Stage("pretrain", 0, 6, np.arange(0, 7, 2), np.array([0, 6]))
    kwargs = dict(elr=torch.tensor([0.01, 0.05]), seeds=[(0, 0), (1, 0)], batch_size=16, steps_per_epoch=4)
    return setup, start, dev, stage, kwargs

"""Kill `lrscan train` with SIGKILL K times during a sweep, rerun it to the end, compare.

Side by side in one run: an uninterrupted sweep (the reference), then the same sweep
killed at K random moments and restarted each time with the same command. Reports K, the
extra wall time the kills cost (time lost plus restarts), and whether the final store is
identical to the reference (weights bit for bit, metrics exactly) and verifies clean.

Run:  python benchmarks/fault_injection.py [--kills 5] [--seed 0]
"""

from __future__ import annotations

import argparse
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _reduced import set_args  # noqa: E402

from lrscan.store import verify  # noqa: E402
from lrscan.testing import assert_stores_identical  # noqa: E402


def command(store: Path) -> list[str]:
    return [sys.executable, "-m", "lrscan", "train", "--store", str(store), *set_args()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        reference, killed = Path(tmp) / "reference.zarr", Path(tmp) / "killed.zarr"
        start = time.perf_counter()
        subprocess.run(command(reference), check=True, stderr=subprocess.DEVNULL)
        clean = time.perf_counter() - start
        print(f"uninterrupted sweep: {clean:.1f} s")

        start, kills = time.perf_counter(), 0
        while True:
            proc = subprocess.Popen(command(killed), stderr=subprocess.DEVNULL)
            if kills < args.kills:
                try:  # kill somewhere in the first part of what is left, so every kill lands
                    proc.wait(timeout=rng.uniform(0.2, 1.0) * clean / (args.kills + 1))
                except subprocess.TimeoutExpired:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    kills += 1
                    print(f"  SIGKILL {kills} at {time.perf_counter() - start:.1f} s")
                    continue
            if proc.wait() == 0:
                break
        total = time.perf_counter() - start
        problems = verify(killed)
        assert_stores_identical(reference, killed)
    print(f"killed {kills} times: {total:.1f} s in all, {total - clean:+.1f} s ({(total / clean - 1) * 100:+.0f}%) "
          f"against the uninterrupted run; verify: {len(problems)} problems; "
          "final store identical to the uninterrupted one: yes")


if __name__ == "__main__":
    main()

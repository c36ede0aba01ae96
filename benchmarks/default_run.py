"""Wall time and peak memory of the README's main job: `lrscan train` with no arguments.

Runs the command in a fresh temporary directory (so the default store starts empty) and
reports the wall time and the peak resident memory of the process tree.

Run:  python benchmarks/default_run.py [extra lrscan arguments...]
"""

from __future__ import annotations

import resource
import shutil
import subprocess
import sys
import tempfile
import time


def main() -> None:
    lrscan = shutil.which("lrscan") or sys.exit("lrscan is not installed (pip install -e .)")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        done = subprocess.run([lrscan, "train", *sys.argv[1:]], cwd=tmp, stderr=subprocess.PIPE, text=True)
        elapsed = time.perf_counter() - start
        if done.returncode:
            sys.exit(done.stderr)
        info = subprocess.run([lrscan, "info"], cwd=tmp, capture_output=True, text=True).stdout
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB -> GiB
    print(done.stderr.strip().splitlines()[-1])
    print(info)
    print(f"lrscan train (default preset): {elapsed:.1f} s wall, peak memory {peak:.2f} GiB "
          f"(targets: <= 300 s, < 4 GiB)")


if __name__ == "__main__":
    main()

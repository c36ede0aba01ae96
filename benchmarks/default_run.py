"""Wall time and peak memory of the README's main job: `lrscan train`, then `lrscan analyze`.

Runs both with no arguments in a fresh temporary directory (so the default store starts
empty) and reports each one's wall time and the peak resident memory of the processes.

Run:  python benchmarks/default_run.py
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
        times, peaks = {}, {}
        for command in ("train", "analyze"):
            start = time.perf_counter()
            done = subprocess.run([lrscan, command], cwd=tmp, stderr=subprocess.PIPE, text=True)
            times[command] = time.perf_counter() - start
            # ru_maxrss of children is the largest of any child so far, in KiB
            peaks[command] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
            if done.returncode:
                sys.exit(done.stderr)
            print(done.stderr.strip().splitlines()[-1])
        print(subprocess.run([lrscan, "info"], cwd=tmp, capture_output=True, text=True).stdout)
    print(f"lrscan train   (default preset): {times['train']:6.1f} s wall, peak memory {peaks['train']:.2f} GiB "
          f"(targets: <= 300 s, < 4 GiB)")
    print(f"lrscan analyze (default store):  {times['analyze']:6.1f} s wall, peak memory so far "
          f"{peaks['analyze']:.2f} GiB (target: <= 120 s)")


if __name__ == "__main__":
    main()

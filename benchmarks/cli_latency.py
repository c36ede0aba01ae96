"""Wall time of the commands that only read a store (issue 16: "within 1 s of Python's own
start-up"), and which heavy libraries each one loads.

Each command runs as a new process, interleaved with a bare ``python -c pass`` (and with the
same command of other source trees, ``--tree``) so that all see the same machine; reported are
medians over the repeats, and each command's median less Python's start-up. A store is needed
(the main job's, or any other).

Run:  python benchmarks/cli_latency.py [STORE] [--repeats N] [--tree OLD_CHECKOUT ...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HEAVY = ("torch", "xarray", "dask", "zarr", "pandas")
# What a command loads, asked of the command itself in this interpreter (the console script's),
# run outside any checkout so that the tree on PYTHONPATH is the one imported.
PROBE = """
import json, sys
from lrscan.cli import main
try:
    main({args!r})
except SystemExit:
    pass
print(json.dumps([m for m in {heavy!r} if m in sys.modules]), file=sys.stderr)
"""


def _wall(argv: list[str], tree: str | None = None) -> float:
    env = {**os.environ, "PYTHONPATH": tree} if tree else None  # a checkout's lrscan before the installed one
    start = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store", nargs="?", default="store/synthetic.zarr")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--tree", action="append", default=[], help="another lrscan checkout to time alongside")
    args = parser.parse_args()
    commands = {
        "--help": ["--help"],
        "presets": ["presets"],
        "analyzers": ["analyzers"],
        "info": ["info", args.store],
        "info --json": ["info", args.store, "--json"],
        "verify": ["verify", args.store],
        "refusal (no store)": ["info", args.store + ".missing"],
    }
    cli = [shutil.which("lrscan") or sys.exit("lrscan is not installed (pip install -e .)")]
    trees = [None, *args.tree]
    times = {"python -c pass": []} | {(name, tree): [] for name in commands for tree in trees}
    for _ in range(args.repeats):
        times["python -c pass"].append(_wall([sys.executable, "-c", "pass"]))
        for name, tree in list(times)[1:]:
            times[name, tree].append(_wall(cli + commands[name], tree))
    start_up = statistics.median(times["python -c pass"])
    print(f"{'command':22s} {'tree':14s} {'median':>8s} {'- start-up':>11s}  loads")
    print(f"{'python -c pass':22s} {'':14s} {start_up:7.2f}s")
    for name, argv in commands.items():
        for tree in trees:
            env = {**os.environ, "PYTHONPATH": tree} if tree else None
            probe = subprocess.run([sys.executable, "-c", PROBE.format(args=argv, heavy=HEAVY)],
                                   capture_output=True, text=True, env=env, cwd=tempfile.gettempdir())
            lines = probe.stderr.strip().splitlines()
            loaded = json.loads(lines[-1]) if lines and lines[-1].startswith("[") else ["?"]
            median = statistics.median(times[name, tree])
            label = "installed" if tree is None else os.path.basename(tree.rstrip("/"))
            print(f"{name:22s} {label:14s} {median:7.2f}s {median - start_up:10.2f}s  "
                  f"{', '.join(loaded) or 'none of ' + '/'.join(HEAVY)}")


if __name__ == "__main__":
    main()

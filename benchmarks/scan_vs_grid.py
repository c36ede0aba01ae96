"""`lrscan scan` side by side with the full grid of the same setup (the synthetic preset).

Targets (issue 8): the scan spends at most a third of the full grid's model-steps, its 2A range
overlaps the grid's, and fine-tuning from its recommended PLR reaches a test accuracy within
0.5 percentage points of the grid's best.

The full grid is the default store, store/synthetic.zarr, as `lrscan train && lrscan analyze`
leave it; it is trained and analysed here when missing (about 2.5 min on a quiet 2-core
machine). The scan runs from scratch into benchmarks/out/synthetic-scan.zarr.

Run:  python benchmarks/scan_vs_grid.py [--grid STORE] [scan options, e.g. --flrs 2]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import lrscan
from lrscan.summary import stage_status

ROOT = Path(__file__).resolve().parent.parent


def run(command: list[str]) -> float:
    """Run an lrscan command, echoing its output; its wall time in seconds."""
    lrscan_cli = shutil.which("lrscan") or sys.exit("lrscan is not installed (pip install -e .)")
    start = time.perf_counter()
    done = subprocess.run([lrscan_cli, *command], cwd=ROOT)
    if done.returncode:
        sys.exit(f"lrscan {' '.join(command)} failed with status {done.returncode}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", default="store/synthetic.zarr", help="the full grid's store (trained when missing)")
    parser.add_argument("--scan", default="benchmarks/out/synthetic-scan.zarr", help="the scan's store (remade)")
    args, scan_options = parser.parse_known_args()
    grid_path, scan_path = ROOT / args.grid, ROOT / args.scan

    grid_seconds = None
    finished = grid_path.exists() and all(d == t for d, t, _ in stage_status(grid_path).values())
    if not finished:
        grid_seconds = run(["train", "--store", str(grid_path)])
    if "analysis" not in lrscan.open(grid_path).children:
        run(["analyze", str(grid_path)])
    shutil.rmtree(scan_path, ignore_errors=True)
    scan_seconds = run(["scan", "--store", str(scan_path), *scan_options])

    grid = lrscan.open(grid_path)
    scan = lrscan.open(scan_path)["analysis/scan"].to_dataset().load()
    regimes = grid["analysis/regimes"].to_dataset().load()
    ft = grid["analysis/metrics"]["ft_test_acc"].mean("seed").load()
    grid_steps, scan_steps = scan.attrs["full_grid_model_steps"], scan.attrs["model_steps"]

    grid_2a = regimes.plr.values[regimes.regime_mode.values == "2A"]
    low, high = (float(regimes.boundary_geomean.sel(boundary=b)) for b in ("1|2", "2A|2B"))
    scan_low, scan_high = (float(scan.estimate_plr.sel(quantity=q)) for q in ("1|2", "2A|2B"))
    overlap = max(low, scan_low) < min(high, scan_high)
    best = ft.where(ft == ft.max(), drop=True)
    grid_best = float(ft.max())
    recommended = float(scan.estimate_plr.sel(quantity="recommended"))
    scan_acc = float(scan.recommended_test_acc)
    gap = 100 * (grid_best - scan_acc)

    def log10(name: str) -> str:
        return (f"log10 {float(scan.estimate_log10.sel(quantity=name)):.3f} "
                f"± {float(scan.uncertainty_log10.sel(quantity=name)):.3f}")

    print()
    print(f"{'':34s} {'full grid':>22s} {'scan':>22s}")
    print(f"{'PLRs trained':34s} {regimes.sizes['plr']:>22d} {scan.sizes['plr']:>22d}")
    print(f"{'FLRs per PLR':34s} {grid['finetune/metrics'].sizes['flr']:>22d} {scan.sizes['flr']:>22d}")
    print(f"{'rounds':34s} {1:>22d} {scan.attrs['rounds']:>22d}")
    print(f"{'model-steps':34s} {grid_steps:>22,} {scan_steps:>22,}")
    print(f"{'wall time (s)':34s} {('%.0f' % grid_seconds) if grid_seconds else 'not run here':>22s} "
          f"{scan_seconds:>22.0f}")
    print(f"{'convergence threshold (1|2)':34s} {low:>22.3g} {scan_low:>22.3g}   ({log10('1|2')})")
    print(f"{'2A|2B boundary':34s} {high:>22.3g} {scan_high:>22.3g}   ({log10('2A|2B')})")
    print(f"{'PLRs labelled 2A':34s} {f'{grid_2a.min():.3g} .. {grid_2a.max():.3g}' if grid_2a.size else 'none':>22s} "
          f"{_span(scan):>22s}")
    print(f"{'best / recommended PLR':34s} {float(best.plr[0]):>22.3g} {recommended:>22.3g}   ({log10('recommended')})")
    print(f"{'FT test accuracy there (%)':34s} {100 * grid_best:>22.2f} {100 * scan_acc:>22.2f}   "
          f"(FLR {float(best.flr[0]):.3g} / {float(scan.recommended_flr):.3g})")
    print()
    print(f"model-steps: scan / grid = {scan_steps / grid_steps:.3f} (target <= 1/3): "
          f"{'met' if 3 * scan_steps <= grid_steps else 'MISSED'}")
    print(f"2A range: grid {low:.3g} .. {high:.3g}, scan {scan_low:.3g} .. {scan_high:.3g}: "
          f"{'overlap' if overlap else 'NO OVERLAP'}")
    print(f"FT test accuracy: grid best - scan's recommended = {gap:.2f} points (target <= 0.5): "
          f"{'met' if gap <= 0.5 else 'MISSED'}")
    print(f"stopped: {scan.attrs['stopped']}")


def _span(scan) -> str:
    plr = scan.plr.values[scan.regime_mode.values == "2A"]
    return f"{plr.min():.3g} .. {plr.max():.3g}" if plr.size else "none"


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()

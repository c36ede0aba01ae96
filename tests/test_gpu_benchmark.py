"""The GPU benchmark of issue 14 must run as it is when a device is lent: its CPU check runs it
end to end at a tiny size, and its sweep projection is the study's run-steps."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_engine.py"


def test_the_gpu_benchmark_runs_end_to_end_on_a_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--width", "2", "--runs", "1", "2",
                           "--steps", "1", "--warmup", "1", "--n-train", "256", "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    # Both engine paths at M > 1, one at M = 1 (the same work).
    assert [(r["runs"], r["path"], r["precision"]) for r in result["rows"]] == [
        (m, path, precision) for precision in ("tf32", "bf16")
        for m, path in ((1, "vmap"), (2, "vmap"), (2, "runs"))]
    assert all(r["step_s"] > 0 and r["images_per_s"] > 0 for r in result["rows"])
    # 25 PLRs x 200 PT epochs + 225 FT runs x 200 epochs, 391 steps of 128 per epoch of 50,000.
    assert result["sweep_run_steps"] == (25 * 200 + 225 * 200) * 391
    assert result["flops_per_run_step"] > 0 and "GPU-hours" in done.stdout

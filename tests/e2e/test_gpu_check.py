"""`make gpu-check`'s dry mode (no CUDA): every check runs at tiny sizes on the CPU and the report says so."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # end to end: make test-fast leaves it out

ROOT = Path(__file__).resolve().parents[2]


def test_dry_run_passes_every_check_and_writes_the_report(tiny_store, tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(ROOT / "experiments" / "gpu_check.py"), "--dry", "--store", str(tiny_store)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    report = (tmp_path / "gpu_check.md").read_text()
    assert proc.returncode == 0, report[-6000:]
    assert report.startswith("# dsaml gpu-check: dry run, tiny sizes on the CPU")
    checks = [line for line in report.splitlines() if line.startswith("| ") and line.endswith(" |")]
    results = {row.split(" | ")[0][2:]: row.split(" | ")[1] for row in checks if row.count(" | ") == 2}
    expected = {
        "tests (tests/models/test_device.py)",
        "train DMER trainer=cpu",
        "train DMER trainer=ddp_cpu",
        "train PDMER trainer=cpu",
        "train PDMER trainer=ddp_cpu",
        "bench_model.py (float32, bf16)",
        "bench_inference.py (float32, bf16)",
        "bench_meta_step.py (float32, bf16)",
        "bench_meta_step.py --engines (sequential vs batched)",
        "bench_stride.py",
    }
    assert expected <= results.keys() and all(results[name] == "pass" for name in expected), results
    assert "passed" in report and "bf16 autocast" in report  # the benchmarks' tables are in the report
    assert "2000 meta-batches" in report and "batched (chunks of 4)" in report
    assert not (tmp_path / "work").exists()  # only the report is left

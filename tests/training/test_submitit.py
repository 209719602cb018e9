"""The cluster path without a cluster: `dsaml-train -m hydra/launcher=local_submitit` sends a sweep through
hydra-submitit-launcher's submitit machinery (as `hydra/launcher=slurm` does) with the local executor."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from train_fixtures import DMER_TINY, TINY

pytestmark = pytest.mark.slow  # end to end: make test-fast leaves it out

pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e '.[slurm]'")


def sweep(store: Path, tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "dsaml.cli.train",
        "-m",
        "hydra/launcher=local_submitit",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.timeout_min=5",
        *TINY,
        *DMER_TINY,
        f"paths.store={store}",
        f"paths.root_dir={tmp_path}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        *overrides,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=400, cwd=tmp_path, env=env)


def test_two_jobs_finish_and_land_in_the_sweep_folder(tiny_store, tmp_path):
    proc = sweep(tiny_store, tmp_path, "seed=0,1")
    assert proc.returncode == 0, proc.stderr[-4000:]
    folder = tmp_path / "sweep"
    results = [json.loads((folder / str(job) / "results.json").read_text()) for job in (0, 1)]
    assert [r["rows"][0]["protocol"] for r in results] == ["dmer", "dmer"]
    assert results[0]["rows"] != results[1]["rows"]  # seeds 0 and 1: different networks
    assert len(list((folder / ".submitit").glob("*/*_result.pkl"))) == 2  # both went through submitit


def test_a_failing_job_is_reported(tiny_store, tmp_path):
    """Job 1 breaks inside its own process (a task value the job's config check rejects): the sweep exits
    non-zero and names the job's error; job 0 still finishes."""
    proc = sweep(tiny_store, tmp_path, "task.lr=1e-3,-1")
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "lr" in text and "-1" in text, text[-4000:]
    assert (tmp_path / "sweep" / "0" / "results.json").is_file()

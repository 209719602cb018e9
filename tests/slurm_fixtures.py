"""A real one-node Slurm for the cluster tests (tools/slurm_local.sh), started once per session and stopped by
its pid files; tests using it are skipped, with the script's one-line reason, where it cannot be provided
(not root, no apt-get or registry)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "slurm_local.sh"
UNAVAILABLE = 3  # the script's exit code when Slurm cannot be provided here


@pytest.fixture(scope="session")
def slurm_conf(tmp_path_factory) -> Path:
    """The slurm.conf of a running one-node cluster (pass it to commands as SLURM_CONF)."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e '.[slurm]'")
    folder = tmp_path_factory.mktemp("slurm")
    proc = subprocess.run(
        ["bash", str(SCRIPT), "start", str(folder)], capture_output=True, text=True, timeout=900
    )
    if proc.returncode != 0:
        subprocess.run(["bash", str(SCRIPT), "stop", str(folder)], capture_output=True, timeout=120)
        reason = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        if proc.returncode == UNAVAILABLE:
            pytest.skip(reason)
        pytest.fail(f"tools/slurm_local.sh start failed (exit {proc.returncode}): {reason}")
    yield folder / "slurm.conf"
    subprocess.run(["bash", str(SCRIPT), "stop", str(folder)], capture_output=True, timeout=120)


def slurm_env(slurm_conf: Path) -> dict[str, str]:
    """The environment of a command talking to the test cluster (one OpenMP thread per job)."""
    return {**os.environ, "SLURM_CONF": str(slurm_conf), "OMP_NUM_THREADS": "1"}

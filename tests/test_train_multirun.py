"""`dsaml-train -m` sweeps with the basic launcher, and an offline wandb run that writes its files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from dsaml.training.run import run
from train_fixtures import DMER_TINY, TINY, _one_thread, tiny_store, train_config  # noqa: F401


def test_two_job_multirun(tiny_store, tmp_path):  # noqa: F811
    sweep = tmp_path / "sweep"
    cmd = [
        str(Path(sys.executable).parent / "dsaml-train"),
        "-m",
        *TINY,
        *DMER_TINY,
        "seed=0,1",
        f"paths.store={tiny_store}",
        f"paths.root_dir={tmp_path}",
        f"hydra.sweep.dir={sweep}",
    ]
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = [json.loads((sweep / str(job) / "results.json").read_text()) for job in (0, 1)]
    assert all(r["rows"][0]["protocol"] == "dmer" for r in results)
    assert results[0] != results[1]  # different seeds -> different networks
    assert (sweep / "multirun.yaml").is_file()


def test_wandb_offline_run_writes_files(tiny_store, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.delenv("WANDB_MODE", raising=False)  # dsaml-train itself must choose offline
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    run(train_config(tiny_store, tmp_path, [*DMER_TINY, "logger=wandb", "logger.wandb.project=dsaml-test"]))
    assert os.environ["WANDB_MODE"] == "offline"
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    files = {p.name for p in runs[0].rglob("*") if p.is_file()}
    assert any(name.endswith(".wandb") for name in files)
    assert any(name.startswith("val/attention_maps") or "attention_maps" in name for name in files), files
    assert any("curves" in name for name in files), files
    assert any("results" in name and name.endswith(".table.json") for name in files), files
    assert (tmp_path / "results.json").is_file()

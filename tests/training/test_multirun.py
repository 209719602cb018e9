"""`dsaml-train -m` sweeps with the basic launcher, and what an offline wandb run logs."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from dsaml.data.store import FeatureStore
from dsaml.training.run import run
from train_fixtures import DMER_TINY, TINY, train_config, train_sweep

pytestmark = pytest.mark.slow  # end to end: make test-fast leaves it out


def test_two_job_multirun(tiny_store, tmp_path):
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
    with FeatureStore(tiny_store) as store:
        n_test = len(store.song_ids("test"))
    for job, result in enumerate(results):  # job k ran seed k and tested every test song
        assert OmegaConf.load(sweep / str(job) / ".hydra" / "config.yaml").seed == job
        (row,) = result["rows"]
        assert row["protocol"] == "dmer" and row["n"] == n_test
        scores = [row[f"{dim}_{name}"] for dim in ("arousal", "valence") for name in ("ccc", "pcc")]
        scores += [1 - row["arousal_rmse"], 1 - row["valence_rmse"]]
        assert abs(row["average"] - np.mean(scores)) < 1e-6  # the mean of the six scores (float32)
    assert results[0]["rows"] != results[1]["rows"]  # different seeds -> different networks
    assert "seed=0,1" in OmegaConf.load(sweep / "multirun.yaml").hydra.overrides.task


def test_wandb_offline_run_logs_the_results_and_attention_maps(tiny_store, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)  # dsaml-train itself must choose offline
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    run(train_config(tiny_store, tmp_path, [*DMER_TINY, "logger=wandb", "logger.wandb.project=dsaml-test"]))
    assert os.environ["WANDB_MODE"] == "offline"
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    media = run_dir / "files" / "media"
    # the logged results table holds exactly the rows of results.json
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    (table_file,) = (media / "table" / "test").glob("results_*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"] == list(rows[0])
    assert table["data"] == [[row[c] for c in table["columns"]] for row in rows]
    # attention maps of a validation clip: one image per pass and layer (dual attention, 1 layer), each
    # [T, T] for the 60-segment clip and scaled to its maximum; the masks show: the local map is zero
    # beyond |i - j| = 5 (local_radius), the global one beyond 30 (global_radius)
    maps = [np.asarray(Image.open(p)) for p in (media / "images" / "val").glob("attention_maps_*.png")]
    assert len(maps) == 2 and all(m.shape == (60, 60) and m.max() == 255 for m in maps)
    distance = np.abs(np.subtract.outer(np.arange(60), np.arange(60)))
    assert sorted(int(distance[m > 0].max()) for m in maps) == [5, 30]
    # predicted-vs-true curves: one figure for each of the tiny store's 3 test songs
    with FeatureStore(tiny_store) as store:
        n_test = len(store.song_ids("test"))
    assert rows[0]["n"] == n_test == 3
    assert len(list((media / "images" / "test").glob("curves_*.png"))) == n_test


def test_every_job_of_a_sweep_is_checked_before_the_first_starts(tmp_path, capsys):
    """task.lr=0.001,-1,0.002,-3: job #1 used to fail only when it started, after job #0 trained, and job #3
    was never reported. Now the command ends before any job, naming the first bad job and the others."""
    import pytest

    from dsaml.cli.overrides import check_sweep
    from dsaml.cli.train import validate_job

    store = tmp_path / "store.h5"  # the jobs' checks need the file to exist (nothing reads it here)
    store.write_bytes(b"")
    args = ["-m", *TINY, *DMER_TINY, f"paths.store={store}", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    with pytest.raises(SystemExit) as caught:
        check_sweep("train", "dsaml-train", [*args, "task.lr=0.001,-1,0.002,-3", "seed=0"], validate_job)
    assert caught.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == "dsaml-train: error: job #1 (task.lr=-1): task.lr=-1: expected a positive number"
    assert err[1] == "  no job was started (4 jobs checked; invalid too: job #3)"
    with pytest.raises(SystemExit):
        check_sweep("train", "dsaml-train", [*args, "seed=0,abc"], validate_job)
    assert "job #1 (seed=abc): seed='abc': expected a number" in capsys.readouterr().err
    check_sweep("train", "dsaml-train", [*args, "task.lr=0.001,0.002"], validate_job)  # valid: no exit
    assert not (tmp_path / "sweep").exists()


def test_sweep_jobs_log_to_one_wandb_group_with_their_overrides(tiny_store, tmp_path, monkeypatch):
    """Every job of a sweep logs (offline) to the wandb group named after the sweep's folder, with its own
    overrides as the run's config `overrides`."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    sweep = tmp_path / "sweep_a"
    proc = train_sweep(tiny_store, tmp_path, sweep, [*DMER_TINY, "logger=wandb", "seed=0,1"], timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for job in (0, 1):
        (record,) = (sweep / str(job) / "wandb").glob("offline-run-*/run-*.wandb")
        (run_record,) = [r.run for r in wandb_records(record) if r.WhichOneof("record_type") == "run"]
        assert run_record.run_group == "sweep_a"
        (item,) = [i for i in run_record.config.update if i.key == "overrides"]
        overrides = json.loads(item.value_json)
        assert overrides["seed"] == str(job) and overrides["logger"] == "wandb"
        assert overrides["paths.store"] == str(tiny_store)


def wandb_records(path: Path) -> list:
    """The protobuf records of an offline run's .wandb file: a 7-byte header, then LevelDB's log format
    (32 KiB blocks of chunks, each a 7-byte header: crc32, length, type FULL=1/FIRST=2/MIDDLE=3/LAST=4)."""
    from wandb.proto import wandb_internal_pb2

    data, pos, block, records, pending = path.read_bytes(), 7, 32768, [], b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0:
            break
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records

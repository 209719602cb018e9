"""Sweeps on a cluster: the launcher presets ask for what the trainer uses, and on a real one-node Slurm
(tests/slurm_fixtures.py) a requeued job resumes its own run and ends equal to an uninterrupted one, and a
failing job ends the sweep with its name and log while the other job's results are kept."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from dsaml.config import CONFIG_DIR
from slurm_fixtures import slurm_env
from train_fixtures import DMER_TINY, DROPOUT, TINY, metrics_rows, net_weights

pytestmark = pytest.mark.slow  # end to end: make test-fast leaves it out


def launcher(*overrides: str) -> dict:
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    return OmegaConf.to_container(cfg.hydra.launcher, resolve=True)


@pytest.mark.parametrize(
    "preset,trainer,gpus,tasks",
    [
        ("slurm", "cpu", 0, 1),
        ("slurm", "ddp_cpu", 0, 2),
        ("slurm", "gpu", 1, 1),
        ("slurm", "ddp", 4, 4),
        ("slurm_gpu", "ddp", 4, 4),
        ("local_submitit", "cpu", 0, 1),
    ],
)
def test_launcher_resources_follow_the_trainer(preset, trainer, gpus, tasks):
    params = launcher(f"hydra/launcher={preset}", f"trainer={trainer}")
    assert params["gpus_per_node"] == gpus and params["tasks_per_node"] == tasks  # one task per device
    assert params["nodes"] == 1 and params["_target_"].startswith("hydra_plugins.dsaml_launchers.launchers.")
    if preset == "slurm_gpu":
        assert params["mem_per_gpu"] == "32G" and params["mem_gb"] is None and params["cpus_per_task"] == 8
    elif preset == "slurm":
        assert {k: params[k] for k in ("partition", "account", "qos", "constraint")} == dict.fromkeys(
            ("partition", "account", "qos", "constraint")
        )
        assert params["cpus_per_task"] * tasks <= 8 and params["mem_gb"] <= 16  # fits a small partition


def test_gpus_follow_devices_and_multinode():
    params = launcher("hydra/launcher=slurm", "trainer=ddp", "trainer.devices=2", "trainer.num_nodes=3")
    assert (params["nodes"], params["tasks_per_node"], params["gpus_per_node"]) == (3, 2, 2)


def slurm_sweep(store: Path, tmp_path: Path, conf: Path, *overrides: str) -> subprocess.Popen:
    """`dsaml-train -m hydra/launcher=slurm` on the test cluster, writing into tmp_path/sweep."""
    cmd = [
        sys.executable,
        "-m",
        "dsaml.cli.train",
        "-m",
        "hydra/launcher=slurm",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.mem_gb=1",
        "hydra.launcher.timeout_min=10",
        *TINY,
        f"paths.store={store}",
        f"paths.root_dir={tmp_path}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        *overrides,
    ]
    return subprocess.Popen(
        cmd, cwd=tmp_path, env=slurm_env(conf), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def finish(proc: subprocess.Popen, timeout: float) -> str:
    """The sweep's output once it ends (killed, and the test failed, after `timeout` seconds)."""
    try:
        return proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"the sweep did not end within {timeout} s: {proc.communicate()[0][-4000:]}")


def wait_for(path: Path, proc: subprocess.Popen, timeout: float) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[0][-4000:]
        if time.monotonic() > end:
            proc.kill()
            pytest.fail(f"{path} did not appear within {timeout} s")
        time.sleep(0.5)


def test_requeued_job_resumes_its_run_and_equals_an_uninterrupted_one(slurm_conf, tiny_store, tmp_path):
    """Two identical jobs (seed=0,0); job 0 is requeued (what a preempting partition does) after its first
    epoch's checkpoint: Slurm restarts it, it resumes from its own last.ckpt, and its weights, metrics rows
    and test results equal job 1's, which ran uninterrupted."""
    proc = slurm_sweep(tiny_store, tmp_path, slurm_conf, *DROPOUT, "trainer.max_epochs=3", "seed=0,0")
    sweep = tmp_path / "sweep"
    wait_for(sweep / "0" / "checkpoints" / "last.ckpt", proc, timeout=300)
    job = next((sweep / ".submitit").glob("*_0")).name
    subprocess.run(["scontrol", "requeue", job], env=slurm_env(slurm_conf), check=True, capture_output=True)
    # once requeued (its processes ended), Slurm keeps the job waiting ~2 minutes: let it start at once
    squeue = ["squeue", "--noheader", "--states=all", "--format=%T", "--jobs", job]
    end = time.monotonic() + 120
    env = slurm_env(slurm_conf)
    while subprocess.run(squeue, env=env, capture_output=True, text=True).stdout.strip() != "PENDING":
        assert time.monotonic() < end, "the requeued job never became PENDING"
        time.sleep(0.5)
    update = ["scontrol", "update", f"JobId={job}", "StartTime=now"]
    subprocess.run(update, env=slurm_env(slurm_conf), check=True, capture_output=True)
    output = finish(proc, 600)
    assert proc.returncode == 0, output[-4000:]
    log = (sweep / ".submitit" / job / f"{job}_0_log.err").read_text()  # both starts append to it
    assert "DUE TO JOB REQUEUE" in log, log[-4000:]
    assert f"Restoring states from the checkpoint path at {sweep / '0' / 'checkpoints' / 'last.ckpt'}" in log
    interrupted, uninterrupted = sweep / "0", sweep / "1"
    a, b = net_weights(uninterrupted), net_weights(interrupted)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    rows_a, rows_b = metrics_rows(uninterrupted), metrics_rows(interrupted)
    assert [r["epoch"] for r in rows_a] == [r["epoch"] for r in rows_b]  # earlier epochs' rows kept
    for row_a, row_b in zip(rows_a, rows_b, strict=True):
        for key in row_a:
            if row_a[key] or row_b[key]:
                assert float(row_a[key]) == pytest.approx(float(row_b[key]), rel=1e-5, abs=1e-6), key
    ra, rb = (json.loads((d / "results.json").read_text())["rows"] for d in (uninterrupted, interrupted))
    for row_a, row_b in zip(ra, rb, strict=True):
        for key, value in row_a.items():
            assert value == (
                pytest.approx(row_b[key], rel=1e-5, abs=1e-6) if isinstance(value, float) else row_b[key]
            )


def test_a_failing_job_is_named_with_its_log_and_the_other_kept(slurm_conf, tiny_store, tmp_path):
    """Job 1 breaks inside its process (task.lr=-1, rejected by the job's config check, exit 2 without a
    result): the sweep ends, within the timeout, naming job #1 and its log; job 0's results are kept."""
    proc = slurm_sweep(tiny_store, tmp_path, slurm_conf, *DMER_TINY, "task.lr=1e-3,-1")
    output = finish(proc, 400)
    assert proc.returncode != 0
    assert "1 of 2 sweep jobs failed" in output and "job #1 (" in output, output[-4000:]
    logfile = Path(output.split("job #1 (")[1].split("; log: ")[1].split(":")[0].strip())
    assert logfile.is_file() and "task.lr" in logfile.read_text()  # the named log holds the job's error
    assert "state FAILED" in output
    assert json.loads((tmp_path / "sweep" / "0" / "results.json").read_text())["rows"]

"""Runs never lose results: a run folder with another run's results is refused (or emptied with
overwrite=true), a resume keeps the earlier epochs' metrics.csv rows, and a resumed DMER run (with dropout,
so the RNG matters) ends with the same weights, metrics rows and test results as an uninterrupted one."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from dsaml.training.resume import RunDirectoryError, changed_run_settings
from dsaml.training.run import run
from train_fixtures import DMER_TINY, DROPOUT, metrics_rows, net_weights, train_config

pytestmark = pytest.mark.slow  # end to end: make test-fast leaves it out


def test_a_run_folder_with_results_is_refused_unless_resumed_or_overwritten(tiny_store, tmp_path):
    run(train_config(tiny_store, tmp_path, [*DMER_TINY, "test=false"]))
    before = (tmp_path / "csv" / "metrics.csv").read_bytes()
    with pytest.raises(RunDirectoryError, match=r"already holds a run's results \(checkpoints, csv\)"):
        run(train_config(tiny_store, tmp_path, [*DMER_TINY, "test=false"]))
    assert (tmp_path / "csv" / "metrics.csv").read_bytes() == before  # nothing touched
    old_files = {p.name for p in (tmp_path / "checkpoints").iterdir()}
    run(train_config(tiny_store, tmp_path, [*DMER_TINY, "test=false", "overwrite=true", "seed=1"]))
    assert {p.name for p in (tmp_path / "checkpoints").iterdir()} == old_files  # replaced, not mixed
    assert (tmp_path / "csv" / "metrics.csv").read_bytes() != before


def test_resume_is_exact_and_keeps_the_earlier_metrics(tiny_store, tmp_path):
    full, split = tmp_path / "full", tmp_path / "split"
    run(train_config(tiny_store, full, [*DROPOUT, "trainer.max_epochs=2"]))
    run(train_config(tiny_store, split, [*DROPOUT, "trainer.max_epochs=1", "test=false"]))
    first_epoch = metrics_rows(split)
    assert first_epoch and {r["epoch"] for r in first_epoch} == {"0"}
    run(train_config(tiny_store, split, [*DROPOUT, "trainer.max_epochs=2", "ckpt_path=last"]))
    a, b = net_weights(full), net_weights(split)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    rows_a, rows_b = metrics_rows(full), metrics_rows(split)
    kept = [{k: row[k] for k in first_epoch[0]} for row in rows_b[: len(first_epoch)]]
    assert kept == first_epoch  # epoch 0's rows survive the resume (the test stage adds columns)
    assert len(rows_a) == len(rows_b)
    for row_a, row_b in zip(rows_a, rows_b, strict=True):
        assert row_a.keys() == row_b.keys()
        for key in row_a:
            if row_a[key] or row_b[key]:
                assert float(row_a[key]) == pytest.approx(float(row_b[key]), rel=1e-5, abs=1e-6), key
    ra = json.loads((full / "results.json").read_text())["rows"]
    rb = json.loads((split / "results.json").read_text())["rows"]
    for row_a, row_b in zip(ra, rb, strict=True):
        assert row_a.keys() == row_b.keys()
        for key, value in row_a.items():
            if isinstance(value, float):
                assert value == pytest.approx(row_b[key], rel=1e-5, abs=1e-6), key
            else:
                assert value == row_b[key], key


def test_resume_drops_rows_of_an_epoch_the_checkpoint_does_not_hold(tiny_store, tmp_path):
    """kill -9 in the middle of epoch 1: its partial rows are dropped (epoch 1 runs again), epoch 0's stay."""
    run(train_config(tiny_store, tmp_path, [*DROPOUT, "trainer.max_epochs=1", "test=false"]))
    path = tmp_path / "csv" / "metrics.csv"
    rows = metrics_rows(tmp_path)
    partial = dict(rows[0], epoch="1", step="999")
    with path.open("a", newline="") as handle:
        csv.DictWriter(handle, fieldnames=list(rows[0])).writerow(partial)
    run(
        train_config(tiny_store, tmp_path, [*DROPOUT, "trainer.max_epochs=2", "ckpt_path=last", "test=false"])
    )
    after = metrics_rows(tmp_path)
    assert after[: len(rows)] == rows
    assert all(r["step"] != "999" for r in after) and {r["epoch"] for r in after} == {"0", "1"}


def test_resume_refuses_changed_run_defining_settings(tiny_store, tmp_path):
    """ckpt_path=last task.lr=0.01 task.batch_size=2 used to resume silently, the recorded config then
    claiming the new values for every epoch; test-only settings (eval_stride, stitch) may change."""
    from dsaml.config import ConfigError

    run(train_config(tiny_store, tmp_path, [*DMER_TINY, "trainer.max_epochs=1", "test=false"]))
    before = (tmp_path / "checkpoints" / "last.ckpt").read_bytes()
    changed = [*DMER_TINY, "trainer.max_epochs=2", "ckpt_path=last", "task.lr=0.01", "task.batch_size=2"]
    with pytest.raises(ConfigError, match=r"task.batch_size: run 4, now 2; task.lr: run 5e-05, now 0.01"):
        run(train_config(tiny_store, tmp_path, changed))
    assert (tmp_path / "checkpoints" / "last.ckpt").read_bytes() == before
    stored = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["hyper_parameters"]
    test_only = {**stored, "task": {**stored["task"], "eval_stride": 5, "stitch": "weighted"}}
    assert changed_run_settings(stored, test_only) == []  # how the run is tested may change

"""End to end on the tiny synthetic store: DMER and PDMER fit + test, results files, checkpoints readable by
`load_network`, resume from last.ckpt, same seed -> same metrics, NaN stop."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from dsaml.models.checkpoint import load_network
from dsaml.training import module as module_lib
from dsaml.training.module import NonFiniteLossError
from dsaml.training.run import run
from train_fixtures import DMER_TINY, PDMER_TINY, SCORE_ROW_KEYS, train_config

pytestmark = pytest.mark.slow  # end to end: make test-fast leaves it out

ROW_KEYS = SCORE_ROW_KEYS | {"protocol"}


def _results(path):
    return json.loads((path / "results.json").read_text())


def test_dmer_end_to_end(tiny_store, tmp_path):
    metrics = run(train_config(tiny_store, tmp_path, DMER_TINY))
    results = _results(tmp_path)
    assert [row["protocol"] for row in results["rows"]] == ["dmer"] and results["per_rater"] == []
    row = results["rows"][0]
    assert set(row) == ROW_KEYS and row["n"] == 3  # the 3 test songs of the tiny corpus
    expected = (
        row["arousal_ccc"]
        + row["arousal_pcc"]
        + 1
        - row["arousal_rmse"]
        + row["valence_ccc"]
        + row["valence_pcc"]
        + 1
        - row["valence_rmse"]
    ) / 6
    assert row["average"] == pytest.approx(expected, abs=1e-6)
    assert metrics["test/average"] == pytest.approx(row["average"], abs=1e-6)
    assert "| dmer |" in (tmp_path / "results.md").read_text()
    logged = list(csv.DictReader(open(tmp_path / "csv" / "metrics.csv")))
    columns = set(logged[0])
    for split in ("train", "val"):
        assert {
            f"{split}/loss" if split == "val" else "train/loss_epoch",
            f"{split}/arousal_ccc" if split == "val" else "train/arousal_ccc_epoch",
        } <= columns
    net, model_cfg, hparams = load_network(tmp_path / "checkpoints" / "last.ckpt")
    assert model_cfg.hidden_size == 16 and hparams["task"]["name"] == "dmer"
    assert hparams["features"]["sample_rate"] == 44100
    out = net(torch.zeros(1, 60, 51, 128))
    assert out["arousal"].shape == (1, 60)


def _net_params(ckpt):
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith("net.")}


def test_pdmer_resume_and_determinism(tiny_store, tmp_path):
    """Uninterrupted 2-epoch run == 1 epoch + resume from last.ckpt to 2 epochs (same episodes, same
    schedule, same seed on CPU): the same weights and test metrics. Usually bit-identical; the tolerance
    covers CPU BLAS summation order varying with thread availability (~1e-7 relative), which Adam turns
    into steps of up to lr for parameters whose exact gradient is zero."""
    full, split = tmp_path / "full", tmp_path / "split"
    run(train_config(tiny_store, full, [*PDMER_TINY, "trainer.max_epochs=2"]))
    run(train_config(tiny_store, split, [*PDMER_TINY, "trainer.max_epochs=1", "test=false"]))
    run(train_config(tiny_store, split, [*PDMER_TINY, "trainer.max_epochs=2", "ckpt_path=last"]))
    a, b = _net_params(full / "checkpoints" / "last.ckpt"), _net_params(split / "checkpoints" / "last.ckpt")
    for key in a:
        if a[key].is_floating_point() and "running_" not in key:
            atol = 5e-5 * 4 if key.endswith(("conv.bias", "attention.key.bias")) else 2e-6
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=atol, msg=key)
    ckpt = torch.load(split / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 4 and ckpt["epoch"] == 1 and ckpt["dsaml"]["format"] == 1
    ra, rb = _results(full), _results(split)
    assert [r["protocol"] for r in ra["rows"]] == ["pdmer_unadapted", "pdmer_within_song", "pdmer_cross_song"]
    for row_a, row_b in zip(ra["rows"] + ra["per_rater"], rb["rows"] + rb["per_rater"], strict=True):
        assert row_a == pytest.approx(row_b, abs=1e-3)
    assert {r["rater"] for r in ra["per_rater"]} and all(
        set(r) == ROW_KEYS | {"rater"} for r in ra["per_rater"]
    )
    # adaptation changes the predictions (within-song differs from the unadapted network on the same query)
    unadapted, within = ra["rows"][0], ra["rows"][1]
    assert unadapted["n"] == within["n"] and unadapted["average"] != within["average"]


def test_resume_without_checkpoint_is_a_clear_error(tiny_store, tmp_path):
    with pytest.raises(FileNotFoundError, match="hydra.run.dir"):
        run(train_config(tiny_store, tmp_path, [*PDMER_TINY, "ckpt_path=last"]))


def test_nan_loss_stops_naming_step_and_songs(tiny_store, tmp_path, monkeypatch):
    real = module_lib.batch_loss

    def nan_loss(net, batch):
        loss, scores = real(net, batch)
        return loss * float("nan"), scores

    monkeypatch.setattr(module_lib, "batch_loss", nan_loss)
    with pytest.raises(NonFiniteLossError, match=r"global step 0 .*DMER batch.*songs in the batch: \d+"):
        run(train_config(tiny_store, tmp_path / "dmer", DMER_TINY))
    with pytest.raises(NonFiniteLossError, match=r"global step 0 .*meta-step 0, episode of rater \w+.*songs"):
        run(train_config(tiny_store, tmp_path / "pdmer", [*PDMER_TINY, "task.inner_lr=1e30"]))


def test_pdmer_head_only_meta_training(tiny_store, tmp_path):
    """task.inner_loop=head (ANIL) meta-trains end to end; adaptation=head tests with the same inner loop; the
    checkpoint records both and carries the calibration prior estimated from the network's predictions for the
    validation raters' songs."""
    run(train_config(tiny_store, tmp_path, [*PDMER_TINY, "task.inner_loop=head", "adaptation=head"]))
    rows = {row["protocol"]: row for row in _results(tmp_path)["rows"]}
    assert rows["pdmer_within_song"]["n"] == rows["pdmer_unadapted"]["n"] >= 1
    assert rows["pdmer_within_song"]["average"] != rows["pdmer_unadapted"]["average"]
    _, _, hparams = load_network(tmp_path / "checkpoints" / "last.ckpt")
    assert hparams["task"]["inner_loop"] == "head" and hparams["adaptation"]["method"] == "head"
    assert hparams["calibration_prior"]["songs"] > 0 and hparams["calibration_prior"]["source"] == "model"

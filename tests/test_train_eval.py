"""dsaml-eval: re-test checkpoints, as their own task or another (a DMER model under the PDMER protocols),
with protocol and task overrides; the results equal those of the training run's own test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dsaml.models.checkpoint import load_network, save_network
from dsaml.training.run import evaluate, run
from train_fixtures import DMER_TINY, _one_thread, compose_config, tiny_store, train_config  # noqa: F401


def eval_config(store: Path, out: Path, ckpt: Path, *overrides: str):
    base = [f"ckpt_path={ckpt}", "data=synthetic", f"paths.store={store}"]
    return compose_config("eval", [*base, "trainer.enable_progress_bar=false", *overrides], output_dir=out)


@pytest.fixture(scope="module")
def dmer_run(tiny_store, tmp_path_factory) -> Path:  # noqa: F811
    out = tmp_path_factory.mktemp("dmer")
    run(train_config(tiny_store, out, [*DMER_TINY, "callbacks.model_checkpoint.save_top_k=0"]))
    return out


def _rows(results: dict) -> dict[str, dict]:
    return {row["protocol"]: row for row in results["rows"]}


def test_retest_equals_the_training_runs_test(dmer_run, tiny_store, tmp_path):  # noqa: F811
    trained = json.loads((dmer_run / "results.json").read_text())
    ckpt = dmer_run / "checkpoints" / "last.ckpt"
    results = evaluate(eval_config(tiny_store, tmp_path, ckpt))
    assert _rows(results)["dmer"] == pytest.approx(_rows(trained)["dmer"], abs=1e-6)
    assert json.loads((tmp_path / "results.json").read_text())["rows"] == results["rows"]


def test_a_dmer_model_under_the_pdmer_protocols(dmer_run, tiny_store, tmp_path):  # noqa: F811
    """task=pdmer (the config group) + overrides: adaptation settings reach the protocols."""
    ckpt = dmer_run / "checkpoints" / "last.ckpt"
    cfg = eval_config(
        tiny_store,
        tmp_path,
        ckpt,
        "task=pdmer",
        "protocols=[pdmer_unadapted,pdmer_within_song]",
        "+overrides.eval_inner_steps=0",
    )
    results = evaluate(cfg)
    rows = _rows(results)
    assert set(rows) == {"pdmer_unadapted", "pdmer_within_song"} and rows["pdmer_unadapted"]["n"] >= 1
    # zero adaptation steps: the adapted model is the model itself
    for key, value in rows["pdmer_unadapted"].items():
        if key != "protocol":
            assert rows["pdmer_within_song"][key] == pytest.approx(value, abs=1e-6), key
    assert {r["protocol"] for r in results["per_rater"]} == {"pdmer_unadapted", "pdmer_within_song"}


def test_adaptation_methods_reach_the_protocols(dmer_run, tiny_store, tmp_path):  # noqa: F811
    """adaptation=<method> (conf/adaptation/): none and an identity-strength calibration give the unadapted
    scores; the checkpoint carries the training raters' calibration prior that calibrate uses by default."""
    ckpt = dmer_run / "checkpoints" / "last.ckpt"
    _, _, hparams = load_network(ckpt)
    prior = hparams["calibration_prior"]
    assert prior["raters"] >= 2 and len(prior["offset"]) == 2 and all(v >= 0 for v in prior["gain"])
    base = ["task=pdmer", "protocols=[pdmer_unadapted,pdmer_within_song]"]
    for i, method in enumerate((["adaptation=none"], ["adaptation=calibrate", "adaptation.prior=1e12"])):
        rows = _rows(evaluate(eval_config(tiny_store, tmp_path / f"identity{i}", ckpt, *base, *method)))
        for key in ("arousal_ccc", "valence_rmse", "average"):
            assert rows["pdmer_within_song"][key] == pytest.approx(rows["pdmer_unadapted"][key], abs=1e-5)
    for method in ("calibrate", "head_calibrate"):
        overrides = [*base, f"adaptation={method}", "adaptation.steps=2"]
        cfg = eval_config(tiny_store, tmp_path / method, ckpt, *overrides)
        rows = _rows(evaluate(cfg))
        assert rows["pdmer_within_song"]["n"] == rows["pdmer_unadapted"]["n"]
        assert rows["pdmer_within_song"]["average"] != rows["pdmer_unadapted"]["average"]
    with pytest.raises(ValueError, match=r"adaptation.method='bogus' is not one of none, calibrate"):
        evaluate(eval_config(tiny_store, tmp_path, ckpt, *base, "+adaptation.method=bogus"))


def test_errors_name_the_problem(dmer_run, tiny_store, tmp_path):  # noqa: F811
    net, _, _ = load_network(dmer_run / "checkpoints" / "last.ckpt")
    no_task = save_network(tmp_path / "converted.ckpt", net)  # like dsaml-convert output: no task recorded
    with pytest.raises(ValueError, match=r"records no task .*pass task=dmer or task=pdmer"):
        evaluate(eval_config(tiny_store, tmp_path, no_task))
    with pytest.raises(ValueError, match=r"pdmer_cross_song' is not one of dmer"):
        evaluate(eval_config(tiny_store, tmp_path, no_task, "task=dmer", "protocols=[pdmer_cross_song]"))


def test_command_line(dmer_run, tiny_store, tmp_path):  # noqa: F811
    ckpt = dmer_run / "checkpoints" / "last.ckpt"
    args = [f"ckpt_path={ckpt}", "data=synthetic", f"paths.store={tiny_store}"]
    args.append(f"paths.output_dir={tmp_path}")
    done = subprocess.run(
        [sys.executable, "-m", "dsaml.cli.evaluate", *args, "task=pdmer", "protocols=[pdmer_unadapted]"],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert [row["protocol"] for row in json.loads((tmp_path / "results.json").read_text())["rows"]] == [
        "pdmer_unadapted"
    ]

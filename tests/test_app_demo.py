"""dsaml-demo end to end on the tiny corpus with one-epoch runs: every stage, the report, the plots, reuse."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from app_fixtures import capture
from dsaml.cli import demo
from dsaml.config import CONFIG_DIR
from dsaml.data.validation import ConfigError

TINY_RUNS = [
    "synth=tiny",
    "workers=1",
    "examples=2",
    "+dmer.model={hidden_size:16,num_heads:2,num_layers:1,ffn_size:16}",
    "+pdmer.model={hidden_size:16,num_heads:2,num_layers:1,ffn_size:16}",
    "dmer.trainer.max_epochs=1",
    "pdmer.trainer.max_epochs=1",
    "pdmer.task.steps_per_epoch=2",
    "+pdmer.task.eval_inner_steps=1",
]


def run_demo(tmp_path: Path, *overrides: str) -> tuple[dict, str]:
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            "demo",
            overrides=[
                f"corpus={tmp_path / 'corpus'}",
                f"store={tmp_path / 'store.h5'}",
                f"out={tmp_path / 'run'}",
                *TINY_RUNS,
                *overrides,
            ],
        )
        console, buffer = capture()
        report = demo.run(cfg, console)
    return report, buffer.getvalue()


def test_demo_runs_every_stage_and_reports(tmp_path):
    report, text = run_demo(tmp_path)
    for title in (
        "1/6 synthetic",
        "2/6 feature store",
        "3/6 DMER",
        "4/6 PDMER",
        "5/6 results",
        "6/6 your own",
    ):
        assert title in text
    assert "from the DMER weights" in text
    assert [row["key"] for row in report["rows"]][:2] == ["dmer", "dmer_on_raters"]
    assert {"pdmer_unadapted", "pdmer_within_song"} <= {row["key"] for row in report["rows"]}
    for row in report["rows"]:
        assert -1.0 <= row["average"] <= 2.0 and row["n"] >= 1
    comparisons = {g["comparison"] for g in report["gains"]}
    assert {"within-song vs PDMER before", "within-song vs DMER"} <= comparisons
    # a gain is the adapted score minus the baseline's on the same raters: recompute one from results.json
    results = json.loads((Path(report["runs"]["pdmer"]) / "results.json").read_text())
    per = {(r["protocol"], r["rater"]): r["average"] for r in results["per_rater"]}
    for rater, gain in report["per_rater_gains"]["within-song vs PDMER before"].items():
        assert gain == pytest.approx(per[("pdmer_within_song", rater)] - per[("pdmer_unadapted", rater)])
    assert json.loads((tmp_path / "run" / "demo_results.json").read_text()) == json.loads(json.dumps(report))
    plots = [Path(p) for p in report["plots"]]
    assert {p.name for p in plots} >= {"rater_gains.png", "attention_dmer.png", "attention_pdmer.png"}
    assert any(p.name.startswith("curves_") for p in plots)
    for plot in plots:
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    tools = report["tools"]  # dsaml-predict, dsaml-personalize (one song held out), dsaml-predict adapted
    assert Path(tools["adapted_checkpoint"]).is_file() and f"rater={tools['rater']}" in text
    assert {f"{tools['songs'][0]}.csv", f"{tools['songs'][-1]}.csv"} <= {
        p.name for p in Path(tools["folder"]).iterdir()
    }
    assert "before" in text and "after" in text

    # a second run reuses the corpus and the store, and trains into a new run directory
    _, again = run_demo(tmp_path, f"out={tmp_path / 'run2'}")
    assert "reused an identical existing corpus" in again and "is up to date" in again


def test_configuration_errors_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match=r"device='tpu' is not one of cpu, gpu"):
        run_demo(tmp_path, "device=tpu")
    with pytest.raises(ConfigError, match=r"pdmer_from_dmer='yes': expected true or false"):
        run_demo(tmp_path, "pdmer_from_dmer=yes")
    assert not (tmp_path / "corpus").exists()

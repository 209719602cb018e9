"""dsaml-demo end to end on the tiny corpus with one-epoch runs: every stage, the report's values against an
independent computation, the plots, reuse and reproducibility."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from app_fixtures import capture
from dsaml.cli import demo
from dsaml.config import CONFIG_DIR, ConfigError
from dsaml.data.store import FeatureStore
from dsaml.data.synth import load_truth
from dsaml.inference import predict_song
from dsaml.models.checkpoint import load_network
from dsaml.training.smoke import PDMER_TINY_EPISODES, tiny_model_mapping

pytestmark = pytest.mark.slow  # end to end: make test-fast leaves it out

TINY_RUNS = [
    "synth=tiny",
    "synth.audio_format=flac",  # the demo preset's container: every stage, the user tools included, reads it
    "workers=1",
    "examples=2",
    f"+dmer.model={tiny_model_mapping()}",
    f"+pdmer.model={tiny_model_mapping()}",
    "dmer.trainer.max_epochs=1",
    "pdmer.trainer.max_epochs=1",
    *(f"++pdmer.{setting}" for setting in PDMER_TINY_EPISODES),  # the tests' smallest meta-steps
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


def numpy_average(pred: np.ndarray, true: np.ndarray) -> float:
    """The six scores' average (CCC, PCC, 1 - RMSE per dimension) from their definitions (PCC with the
    project's 1e-8 in the denominator: 0 for a rater who never moved the slider)."""
    values = []
    for p, y in zip(pred, true, strict=True):
        dp, dy = p - p.mean(), y - y.mean()
        values += [
            2 * np.mean(dp * dy) / (p.var() + y.var() + (p.mean() - y.mean()) ** 2),
            np.sum(dp * dy) / (np.sqrt(np.sum(dp**2)) * np.sqrt(np.sum(dy**2)) + 1e-8),
            1 - np.sqrt(np.mean((p - y) ** 2)),
        ]
    return float(np.mean(values))


def dmer_on_raters_by_hand(report: dict, store: Path) -> dict[str, float]:
    """{rater: mean average score} of the DMER checkpoint on each rater's within-song query region
    (segments `support_segments`.. of every test song), predicted here with `predict_song`."""
    net = load_network(report["checkpoints"]["dmer"])[0]
    pdmer_task = load_network(report["checkpoints"]["pdmer"])[2]["task"]
    window = pdmer_task["support_segments"]
    scores: dict[str, list[float]] = {}
    with FeatureStore(store) as reader:
        for rater in reader.raters("test"):
            for song in reader.songs_of_rater(rater, "test"):
                logmel = torch.from_numpy(reader.logmel(song)[window:])
                if len(logmel) == 0:
                    continue
                with torch.no_grad():
                    pred = predict_song(net, logmel, None, stride=1, stitch=pdmer_task["stitch"],
                                        batch_size=pdmer_task["eval_batch_size"], window=window)  # fmt: skip
                true = [c[window:] for c in reader.curves(song, rater)]
                scores.setdefault(rater, []).append(numpy_average([p.numpy() for p in pred], true))
    return {rater: float(np.mean(v)) for rater, v in scores.items()}


def test_demo_runs_every_stage_and_reports(tmp_path):
    report, text = run_demo(tmp_path)
    for title in (
        "1/6 synthetic",
        "2/6 feature store",
        "3/6 DMER",
        "4/6 PDMER",
        "5/6 results",
        "6/6 the user tools",
    ):
        assert title in text
    assert "from the DMER weights" in text
    rows = {row["key"]: row for row in report["rows"]}
    assert list(rows)[:2] == ["dmer", "dmer_on_raters"] and {"pdmer_unadapted", "pdmer_within_song"} <= set(
        rows
    )

    # the DMER model on the raters' curves (dsaml-eval with 0 adaptation steps) = predicting and scoring here
    kinds = {rater: info["kind"] for rater, info in load_truth(tmp_path / "corpus")["raters"].items()}
    by_hand = dmer_on_raters_by_hand(report, tmp_path / "store.h5")
    eval_results = json.loads((Path(report["runs"]["dmer_on_raters"]) / "results.json").read_text())
    per_dmer = {
        r["rater"]: r["average"] for r in eval_results["per_rater"] if r["protocol"] == "pdmer_within_song"
    }
    assert per_dmer == pytest.approx(by_hand, abs=1e-5)
    # the unadapted PDMER scored by dsaml-eval with 0 steps = the pdmer_unadapted protocol of dsaml-train
    before = json.loads((Path(report["runs"]["pdmer_before"]) / "results.json").read_text())["rows"][0]
    assert before["protocol"] == "pdmer_within_song"
    assert before["average"] == pytest.approx(rows["pdmer_unadapted"]["average"], abs=1e-6)

    # a gain is the adapted score minus the baseline's on the same raters; the summary is over those raters
    results = json.loads((Path(report["runs"]["pdmer"]) / "results.json").read_text())
    per = {(r["protocol"], r["rater"]): r["average"] for r in results["per_rater"]}
    gains = report["per_rater_gains"]["within-song vs DMER"]
    assert set(gains) == set(by_hand)
    for rater, gain in gains.items():
        assert gain == pytest.approx(per[("pdmer_within_song", rater)] - by_hand[rater], abs=1e-5)
    summary = next(g for g in report["gains"] if g["condition"] == "within-song vs DMER")
    values = np.array(list(gains.values()))
    assert summary["mean"] == pytest.approx(values.mean()) and summary["improved"] == int((values > 0).sum())
    assert summary["n"] == len(kinds_of := [kinds[r] for r in gains])
    assert {k: s["n"] for k, s in summary["by_kind"].items()} == {k: kinds_of.count(k) for k in set(kinds_of)}
    assert report["rater_kinds"] == {r: kinds[r] for r in report["rater_kinds"]}
    assert json.loads((tmp_path / "run" / "demo_results.json").read_text()) == json.loads(json.dumps(report))

    plots = [Path(p) for p in report["plots"]]
    assert {p.name for p in plots} >= {"rater_gains.png", "attention_dmer.png", "attention_pdmer.png"}
    assert sum(p.name.startswith("curves_") for p in plots) == 2
    for plot in plots:
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    tools = report["tools"]  # dsaml-predict, dsaml-personalize (one song held out), dsaml-predict adapted
    assert Path(tools["adapted_checkpoint"]).is_file() and f"rater={tools['rater']}" in text
    assert {f"{tools['songs'][0]}.csv", f"{tools['songs'][-1]}.csv"} <= {
        p.name for p in Path(tools["folder"]).iterdir()
    }

    # a second run reuses the corpus and the store, trains into a new run directory, same numbers
    again, again_text = run_demo(tmp_path, f"out={tmp_path / 'run2'}")
    assert "reused an identical existing corpus" in again_text and "is up to date" in again_text
    assert again["rows"] == report["rows"] and again["per_rater_gains"] == report["per_rater_gains"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("device=tpu", r"device='tpu' is not one of cpu, gpu"),
        ("pdmer_from_dmer=yes", r"pdmer_from_dmer='yes': expected true or false"),
        ("dmer.task.lr=-1", r"dmer: task.lr=-1"),
        ("+pdmer.task.bogus=1", r"pdmer: .*bogus"),
        ("pdmer.experiment=dmer_synthetic", r"pdmer: experiment='dmer_synthetic' trains task=dmer"),
        ("dmer.experiment=nope", r"dmer: .*nope"),
    ],
)
def test_configuration_errors_before_any_work(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        run_demo(tmp_path, override)
    assert not (tmp_path / "corpus").exists() and not (tmp_path / "run").exists()

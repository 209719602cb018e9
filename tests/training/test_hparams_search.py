"""`hparams_search=pdmer_optuna`: an Optuna search whose trials are dsaml-train jobs returning task.monitor;
a 3-trial search on the tiny corpus reports as best the trial whose validation score (read from its own
csv/metrics.csv) is the highest, with that trial's parameters."""

from __future__ import annotations

import csv

import pytest
import yaml

from train_fixtures import PDMER_TINY, train_sweep

pytestmark = pytest.mark.slow  # end to end: make test-fast leaves it out

pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="pip install -e '.[search]'")


def last_validation(trial) -> float:
    """The last val/average the trial logged (what dsaml-train returns to the sweeper)."""
    with (trial / "csv" / "metrics.csv").open(newline="") as handle:
        return [float(row["val/average"]) for row in csv.DictReader(handle) if row.get("val/average")][-1]


def test_three_trial_search_reports_the_best_trial(tiny_store, tmp_path):
    sweep = tmp_path / "sweep"
    search = [
        "hparams_search=pdmer_optuna",
        *(o for o in PDMER_TINY if not o.startswith("task.inner_steps=")),  # a fixed value leaves the search
        "task.test_protocols=[pdmer_unadapted]",
        "hydra.sweeper.n_trials=3",
    ]
    proc = train_sweep(tiny_store, tmp_path, sweep, search)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    trials = sorted(p for p in sweep.iterdir() if p.is_dir() and (p / "csv").is_dir())
    assert len(trials) == 3
    scores = {trial: last_validation(trial) for trial in trials}
    best = max(scores, key=scores.get)
    assert result["best_value"] == pytest.approx(scores[best], rel=1e-6)
    overrides = yaml.safe_load((best / ".hydra" / "overrides.yaml").read_text())
    pairs = (item.split("=", 1) for item in overrides)
    searched = {key: value for key, value in pairs if key in result["best_params"]}
    assert set(searched) == {"task.inner_lr", "task.inner_steps", "task.lr"}
    for key, value in result["best_params"].items():
        assert float(searched[key]) == pytest.approx(float(value), rel=1e-9), key

"""Fixtures for the training tests: one tiny synthetic feature store per session, config composition."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

from dsaml.config import CONFIG_DIR
from dsaml.training.smoke import PDMER_TINY_EPISODES, tiny_model_overrides

# tiny network and episodes: a few seconds per run on 2 cores
TINY = [
    "model=dsaml_small",
    *tiny_model_overrides(),
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "~callbacks.progress_bar",
]
PDMER_TINY = ["experiment=pdmer_synthetic", *PDMER_TINY_EPISODES]
DMER_TINY = ["experiment=dmer_synthetic", "task.batch_size=4"]
DROPOUT = [*DMER_TINY, "model.dropout=0.3"]  # DMER whose results depend on the RNG
# the keys of one scores row in results.json and personalize_report.json (written out: the files' format)
SCORE_ROW_KEYS = {
    "arousal_ccc",
    "arousal_pcc",
    "arousal_rmse",
    "valence_ccc",
    "valence_pcc",
    "valence_rmse",
    "average",
    "n",
}


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory) -> Path:
    """A feature store of the synth helper's `tiny` DEAM-format corpus, built once per session the way
    dsaml-preprocess builds it (conf/preprocess.yaml: float16 features)."""
    from dsaml.cli.preprocess import configs
    from dsaml.data.preprocess import preprocess
    from dsaml.data.synth import generate_corpus

    root = tmp_path_factory.mktemp("tiny_corpus")
    generate_corpus(root / "corpus", "tiny", seed=0, workers=1, progress=False)
    store = root / "tiny.h5"
    overrides = ["data=synthetic", f"data.root={root / 'corpus'}", f"paths.store={store}"]
    preprocess(*configs(compose_config("preprocess", overrides, output_dir=root))[:2], store)
    return store


def compose_config(name: str, overrides: list[str], output_dir: Path) -> DictConfig:
    """Compose conf/<name>.yaml with overrides, outside a Hydra app (paths.output_dir = output_dir)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(name, overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


def train_config(store: Path, tmp_path: Path, overrides: list[str]) -> DictConfig:
    """A composed training config on the tiny store, writing into tmp_path."""
    return compose_config(
        "train",
        [*TINY, f"paths.store={store}", f"paths.root_dir={tmp_path}", *overrides],
        output_dir=tmp_path,
    )


def train_sweep(store: Path, tmp_path: Path, sweep: Path, overrides: list[str], timeout: float = 600):
    """`dsaml-train -m` (tiny network) on the tiny store in a subprocess, into the sweep folder `sweep`."""
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "dsaml.cli.train", "-m", *TINY, *overrides]
    cmd += [f"paths.store={store}", f"paths.root_dir={tmp_path}", f"hydra.sweep.dir={sweep}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=tmp_path, env=env)


def metrics_rows(run_dir: Path) -> list[dict[str, str]]:
    """The rows of a run's csv/metrics.csv."""
    with (run_dir / "csv" / "metrics.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def net_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """The network's weights in a run's checkpoints/last.ckpt."""
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith("net.")}

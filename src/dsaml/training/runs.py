"""Driving `dsaml-train` runs from code (the demo, the experiments): settings -> Hydra overrides, the
composed config of a run, and a finished run folder's selected checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig


def to_overrides(settings: dict[str, Any], prefix: str = "") -> list[str]:
    """Nested settings -> dotted Hydra overrides: {"task": {"lr": 0.001}} -> ["task.lr=0.001"]."""
    out = []
    for key, value in settings.items():
        if isinstance(value, dict):
            out += to_overrides(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}={value if isinstance(value, str) else json.dumps(value)}")
    return out


def best_checkpoint(directory: Path) -> Path:
    """The run's selected checkpoint (ModelCheckpoint's top-1 epoch_*.ckpt), else its last.ckpt."""
    found = sorted((directory / "checkpoints").glob("epoch_*.ckpt")) or [
        directory / "checkpoints" / "last.ckpt"
    ]
    if not found[-1].is_file():
        raise FileNotFoundError(f"no checkpoint in {directory / 'checkpoints'}")
    return found[-1]


def train_config(
    settings: dict[str, Any],
    directory: Path,
    *,
    device: str,
    seed: int,
    store: str | Path,
    init_from: Path | None = None,
) -> DictConfig:
    """The composed dsaml-train config (conf/train.yaml) of a run: `settings` = an `experiment` preset and
    nested keys on top (as conf/demo.yaml's dmer / pdmer), `device` the trainer preset (cpu | gpu), writing
    into `directory`. Call inside a Hydra context (`initialize_config_dir(CONFIG_DIR)` or a Hydra app)."""
    from hydra import compose

    overrides = [
        *([f"init_from={init_from}"] if init_from is not None else []),
        f"experiment={settings['experiment']}",
        f"trainer={device}",
        *to_overrides({k: v for k, v in settings.items() if k != "experiment"}),
        f"seed={seed}",
        f"paths.store={store}",
        f"paths.output_dir={directory}",
        "trainer.enable_model_summary=false",
    ]
    return compose("train", overrides=overrides)

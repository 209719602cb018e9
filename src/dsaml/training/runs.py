"""Driving `dsaml-train` runs from code (the demo, the experiments): settings -> Hydra overrides, and a
finished run folder's selected checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


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

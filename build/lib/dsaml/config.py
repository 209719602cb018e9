"""Where the Hydra configuration tree lives.

The configs are kept at the repository's top level (`conf/`), next to `src/`. `DSAML_CONFIG_DIR`
overrides the location (for installs outside a checkout).
"""

from __future__ import annotations

import os
from pathlib import Path


def _find_config_dir() -> Path:
    override = os.environ.get("DSAML_CONFIG_DIR")
    candidate = Path(override) if override else Path(__file__).resolve().parents[2] / "conf"
    if not candidate.is_dir():
        raise FileNotFoundError(
            f"dsaml config directory not found at {candidate}; set DSAML_CONFIG_DIR to the repository's conf/"
        )
    return candidate


CONFIG_DIR: Path = _find_config_dir()
CONFIG_PATH: str = str(CONFIG_DIR)  # for @hydra.main(config_path=...)

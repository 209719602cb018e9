"""`dsaml-eval`: test a dsaml checkpoint on a feature store -> results.json / results.md in the run folder.

dsaml-eval ckpt_path=outputs/pdmer_deam/runs/X/checkpoints/last.ckpt data=deam
dsaml-eval ckpt_path=converted.ckpt data=deam task=pdmer protocols=[pdmer_within_song] \
    +overrides.stitch=original
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from dsaml.config import CONFIG_PATH


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="eval")
def main(cfg: DictConfig) -> float | None:
    from dsaml.training.run import evaluate

    return evaluate(cfg)["rows"][0]["average"]


if __name__ == "__main__":
    main()

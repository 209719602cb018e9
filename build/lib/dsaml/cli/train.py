"""`dsaml-train`: train (and test) DSAML with Hydra configs from conf/train.yaml.

dsaml-train experiment=pdmer_synthetic
dsaml-train -m experiment=pdmer_synthetic model.attention=dual,local,global seed=0,1,2
dsaml-train experiment=pdmer_deam trainer=ddp hydra/launcher=slurm -m
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from dsaml.config import CONFIG_PATH


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def main(cfg: DictConfig) -> float | None:
    from dsaml.training.run import run

    metrics = run(cfg)
    monitor = str(cfg.task.monitor)
    return metrics.get(monitor)


if __name__ == "__main__":
    main()

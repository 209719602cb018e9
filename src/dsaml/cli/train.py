"""`dsaml-train`: train (and test) DSAML with Hydra configs from conf/train.yaml.

dsaml-train experiment=pdmer_synthetic
dsaml-train -m experiment=pdmer_synthetic model.attention=dual,local,global seed=0,1,2
dsaml-train experiment=pdmer_deam trainer=ddp hydra/launcher=slurm -m
"""

from __future__ import annotations

from omegaconf import DictConfig

from dsaml.cli.entry import hydra_command
from dsaml.training.resume import refuse_taken_run_directory


def train(cfg: DictConfig) -> float | None:
    """Fit and test; returns the value of `task.monitor` (what sweepers optimise)."""
    from dsaml.training.run import run

    metrics = run(cfg)
    return metrics.get(str(cfg.task.monitor))


def validate_job(cfg: DictConfig) -> None:
    """The training config checks of one job (a multirun checks every job with them before the first)."""
    from dsaml.training.run import validated

    validated(cfg)


main = hydra_command(
    "train", train, returns_value=True, before_start=refuse_taken_run_directory, validate_job=validate_job
)


if __name__ == "__main__":
    main()

"""`dsaml-eval`: test a dsaml checkpoint on a feature store -> results.json / results.md in the run folder.

dsaml-eval ckpt_path=outputs/pdmer_deam/runs/X/checkpoints/last.ckpt data=deam
dsaml-eval ckpt_path=converted.ckpt data=deam task=pdmer protocols=[pdmer_within_song] \
    +overrides.stitch=original
"""

from __future__ import annotations

from omegaconf import DictConfig

from dsaml.cli.entry import hydra_command
from dsaml.training.resume import refuse_taken_run_directory


def evaluate_checkpoint(cfg: DictConfig) -> float | None:
    """Test the checkpoint; returns the first protocol's average score."""
    from dsaml.training.run import evaluate

    return evaluate(cfg)["rows"][0]["average"]


main = hydra_command("eval", evaluate_checkpoint, returns_value=True, before_start=refuse_taken_run_directory)


if __name__ == "__main__":
    main()

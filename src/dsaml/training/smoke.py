"""Settings for smoke runs, used by the tests, `make gpu-check` (experiments/gpu_check.py) and the
experiments' --tiny modes: the one tiny network (`TINY_MODEL`) and PDMER at the smallest sizes that still
run every part of a meta-step (episodes of two raters, two query clips, two inner steps, validation and
evaluation) on top of `experiment=pdmer_synthetic`."""

from __future__ import annotations

PDMER_TINY_EPISODES = (
    "task.episodes=2",
    "task.queries=2",
    "task.inner_steps=2",
    "task.steps_per_epoch=2",
    "task.val_episodes=2",
    "task.eval_inner_steps=1",
)

# The tiny network (DSAMLConfig fields): a forward or a training step in milliseconds on a CPU.
TINY_MODEL = {"hidden_size": 16, "num_heads": 2, "num_layers": 1, "ffn_size": 16, "dropout": 0.0}


def tiny_model_overrides(prefix: str = "model.") -> list[str]:
    """TINY_MODEL as Hydra overrides, e.g. ["model.hidden_size=16", ...]."""
    return [f"{prefix}{key}={value}" for key, value in TINY_MODEL.items()]


def tiny_model_mapping() -> str:
    """TINY_MODEL as one Hydra dict value, e.g. "{hidden_size:16,num_heads:2,...}" (for `+dmer.model=`)."""
    return "{" + ",".join(f"{key}:{value}" for key, value in TINY_MODEL.items()) + "}"

"""Overrides for smoke runs: PDMER at the smallest sizes that still run every part of a meta-step
(episodes of two raters, two query clips, two inner steps, validation and evaluation), used by the tests and
`make gpu-check` (experiments/gpu_check.py) on top of `experiment=pdmer_synthetic`."""

from __future__ import annotations

PDMER_TINY_EPISODES = (
    "task.episodes=2",
    "task.queries=2",
    "task.inner_steps=2",
    "task.steps_per_epoch=2",
    "task.val_episodes=2",
    "task.eval_inner_steps=1",
)

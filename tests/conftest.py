"""Shared pytest configuration: the fixture modules, wandb offline, seeded torch on one CPU thread.

The tests mirror src/dsaml (tests/data/, models/, meta/, training/, cli/; the top-level modules' tests at
tests/), plus tests/e2e/ for the whole-project checks. Helpers and fixtures live in tests/*_fixtures.py
(importable by name: pyproject.toml puts tests/ on the path); the fixtures are registered here once.
"""

from __future__ import annotations

import os

import pytest

pytest_plugins = ["data_fixtures", "model_fixtures", "slurm_fixtures", "train_fixtures"]

# Tests never talk to wandb's servers and never wait on a login prompt.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(autouse=True)
def _deterministic_torch():
    """Seed torch/numpy for every test and use one intra-op thread: the tests' steps are tiny, and on a
    shared 2-core machine two OpenMP threads make them ~10x slower (they spin waiting for each other)."""
    import numpy as np
    import torch

    torch.manual_seed(0)
    np.random.seed(0)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)

"""Shared pytest configuration."""

from __future__ import annotations

import os

import pytest

# Tests never talk to wandb's servers and never wait on a login prompt.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(autouse=True)
def _deterministic_torch():
    """Seed torch/numpy for every test and keep CPU threads modest (2-core CI)."""
    import numpy as np
    import torch

    torch.manual_seed(0)
    np.random.seed(0)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield

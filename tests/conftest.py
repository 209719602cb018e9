"""Shared pytest configuration."""

from __future__ import annotations

import os

import pytest

# The end-to-end tests (dsaml-train / dsaml-demo / dsaml-eval runs, DDP processes, sweeps, the GPU check's
# dry run): marked `slow`, so that `make test-fast` (pytest -m "not slow") leaves them out; `make test` runs
# everything. Marked here by file so that the test files themselves stay as they are.
SLOW_FILES = {
    "test_app_demo.py",
    "test_gpu_check.py",
    "test_reliability_runs.py",
    "test_train_ddp.py",
    "test_train_e2e.py",
    "test_train_eval.py",
    "test_train_multirun.py",
    "test_train_submitit.py",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in SLOW_FILES:
            item.add_marker(pytest.mark.slow)


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

"""Shared helpers for the model tests: the reference vector from the original implementation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "dsaml_small.pt"


def load_reference() -> dict:
    """The reference vector dict (see shared/reference/README.md); skips the test when it is absent."""
    if not REFERENCE.is_file():
        pytest.skip(f"reference vector not found at {REFERENCE} (CI clones the repo with shared/ beside it)")
    return torch.load(REFERENCE, weights_only=True)


def assert_grads_close(
    ours: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], rel: float = 1e-4, floor: float = 1e-6
) -> None:
    """Every gradient within `rel` of its reference, relative to the reference tensor's largest entry.

    Gradients that are exactly zero in exact arithmetic (key biases: softmax is shift-invariant; conv biases
    before training-mode BatchNorm) are float noise of ~1e-7 in both implementations: `floor` bounds those.
    """
    assert ours.keys() == reference.keys()
    for name, ref in reference.items():
        err = (ours[name] - ref).abs().max().item()
        assert err <= rel * ref.abs().max().item() + floor, (
            f"{name}: max error {err:.3g}, max |ref| {ref.abs().max():.3g}"
        )

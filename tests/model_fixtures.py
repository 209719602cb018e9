"""Shared helpers for the model tests: the reference vector from the original implementation, gradient
comparison, and the tiny randomly initialised CLAP model (never a download). The tests' one tiny network is
`dsaml.training.smoke.TINY_MODEL` (also used by `make gpu-check` and the experiments' --tiny modes)."""

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


TINY_CLAP_DIM = 12  # width of the tiny CLAP model's embeddings


@pytest.fixture(scope="session")
def tiny_clap(tmp_path_factory) -> Path:
    """A tiny randomly initialised CLAP model (8 kHz, 16 mel bins, TINY_CLAP_DIM-wide embeddings) saved as a
    local checkpoint directory; skips the test when the optional extra 'clap' (transformers) is missing."""
    transformers = pytest.importorskip("transformers", reason="optional extra 'clap' not installed")
    torch.manual_seed(0)
    audio = {"hidden_size": 32, "patch_embeds_hidden_size": 16, "depths": [1, 1], "window_size": 4}
    audio |= {"num_attention_heads": [2, 2], "projection_hidden_size": 32}
    audio |= {"spec_size": 64, "num_mel_bins": 16}  # a 64 x 64 input image: 1.5 ms per 10 s chunk
    text = {"vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2}
    text |= {"intermediate_size": 32, "projection_hidden_size": 16}  # unused: the audio tower is what counts
    config = transformers.ClapConfig(text_config=text, audio_config=audio, projection_dim=TINY_CLAP_DIM)
    extractor = transformers.ClapFeatureExtractor(  # 8 kHz, 251 frames per 10 s chunk: fast on CPU
        feature_size=16,
        sampling_rate=8000,
        hop_length=320,
        max_length_s=10,
        fft_window_size=256,
        frequency_max=4000,
    )
    path = tmp_path_factory.mktemp("clap") / "tiny-clap"
    transformers.ClapModel(config).eval().save_pretrained(path)
    extractor.save_pretrained(path)
    return path

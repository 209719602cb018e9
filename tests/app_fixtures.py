"""Helpers for the app tests: a tiny random dsaml checkpoint, generated audio, composed CLI configs."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig
from rich.console import Console

from dsaml.config import CONFIG_DIR
from dsaml.data.features import FeatureConfig
from dsaml.models import DSAMLConfig, DSAMLNet
from dsaml.models.checkpoint import save_network
from dsaml.training.smoke import TINY_MODEL


def tiny_net(seed: int = 0, **overrides) -> DSAMLNet:
    torch.manual_seed(seed)
    return DSAMLNet(DSAMLConfig(**{**TINY_MODEL, **overrides}))


def random_song(seed: int, n: int) -> dict:
    """A `SongSequence` of n segments: random log-mel (about -5) and flat zero curves, no global vectors."""
    gen = torch.Generator().manual_seed(seed)
    return {
        "logmel": torch.randn(n, 51, 128, generator=gen) - 5.0,
        "arousal": torch.zeros(n),
        "valence": torch.zeros(n),
        "global": None,
    }


def save_tiny_ckpt(path: Path, window: int = 60) -> Path:
    """A randomly initialised tiny network saved as a dsaml checkpoint with the default feature config and a
    task config (inner steps / lr, window length `window`) as dsaml-train writes it."""
    task = {
        "inner_steps": 4,
        "eval_inner_steps": None,
        "inner_lr": 0.05,
        "first_order": True,
        "support_segments": window,
    }
    return save_network(path, tiny_net(), features=FeatureConfig().to_dict(), task=task)


def write_audio(path: Path, seconds: float, rate: int, channels: int, seed: int = 0) -> Path:
    """Harmonic tones with a slowly changing loudness (so the log-mel changes over time); wav/flac/mp3 by
    suffix."""
    t = np.arange(round(seconds * rate)) / rate
    rng = np.random.default_rng(seed)
    envelope = 0.3 + 0.25 * np.sin(2 * np.pi * t / rng.uniform(5, 9))
    mono = envelope * sum(np.sin(2 * np.pi * f * t) / (k + 1) for k, f in enumerate(rng.uniform(110, 880, 3)))
    data = np.stack([mono, np.roll(mono, 100)], axis=1) if channels == 2 else mono
    kind = {".mp3": "MP3", ".wav": "WAV", ".flac": "FLAC"}[path.suffix]
    sf.write(path, (0.5 * data).astype(np.float32), rate, format=kind)
    return path


def compose_cli(name: str, overrides: list[str]) -> DictConfig:
    """conf/<name>.yaml composed with overrides outside a Hydra app (the tests always pass `out`)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose(name, overrides=overrides)


def capture() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, width=200, soft_wrap=True), buffer

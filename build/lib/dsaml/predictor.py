"""`Predictor`: a dsaml checkpoint ready to turn audio files into emotion curves (predict, personalize).

    predictor = Predictor.load("model.ckpt", device="auto")
    logmel = predictor.logmel("song.mp3")     # np.float32 [T, 51, 128], T = floor((dur - 15) / 0.5)
    curves = predictor.predict(logmel)        # Curves: time_s, arousal, valence [T]

The feature settings come from the checkpoint (`hyper_parameters["features"]`), so a song is featurised
exactly as the training data was. Label/prediction i belongs to segment i, which starts at
start_s + i * segment_s seconds (15.0, 15.5, ... as DEAM's sample_15000ms, sample_15500ms, ...).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dsaml.data.catalogue import AUDIO_EXTENSIONS
from dsaml.data.features import FeatureConfig, LogMelExtractor, resolve_device, song_logmel
from dsaml.data.validation import ConfigError
from dsaml.inference import predict_song
from dsaml.models import DSAMLConfig, DSAMLNet
from dsaml.models.checkpoint import load_network


class CheckpointError(ValueError):
    """The checkpoint cannot be used on raw audio (not a dsaml model, or it needs an external encoder)."""


@dataclass(frozen=True)
class Curves:
    """Emotion curves of one song: time_s [T] (start of each 0.5 s segment), arousal [T], valence [T]."""

    time_s: np.ndarray
    arousal: np.ndarray
    valence: np.ndarray

    def rows(self) -> list[tuple[float, float, float]]:
        return list(zip(self.time_s.tolist(), self.arousal.tolist(), self.valence.tolist(), strict=True))


def check_raw_audio_model(cfg: DSAMLConfig, path: str | Path) -> None:
    """Raise CheckpointError when the network needs global vectors that only an external encoder makes."""
    needs = cfg.global_store_name
    if needs is not None:
        raise CheckpointError(
            f"{path}: this model's global context is {cfg.global_context!r}: it needs the global vectors "
            f"{needs!r} computed by an external encoder and stored in a feature store, which cannot be made "
            "from raw audio here. Use a checkpoint trained with model.global_context=learned or none"
        )


@dataclass
class Predictor:
    """A loaded dsaml network (eval mode, on `device`) plus the feature settings it was trained with."""

    net: DSAMLNet
    features: FeatureConfig
    hparams: dict[str, Any]
    device: torch.device
    path: Path

    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> Predictor:
        """Load a dsaml checkpoint; CheckpointError when it is not one or cannot run on raw audio."""
        path = Path(path)
        resolved = resolve_device(device)
        try:
            net, cfg, hparams = load_network(path, map_location=resolved)
        except ValueError as error:  # load_network names what the file is instead
            raise CheckpointError(str(error)) from error
        check_raw_audio_model(cfg, path)
        stored = dict(hparams.get("features") or {})
        if not stored:
            warnings.warn(
                f"{path}: no feature settings in the checkpoint; using the defaults (spec section 1)",
                stacklevel=2,
            )
        return cls(net, FeatureConfig.from_mapping(stored), dict(hparams), resolved, path)

    @property
    def cfg(self) -> DSAMLConfig:
        return self.net.cfg

    def extractor(self) -> LogMelExtractor:
        return LogMelExtractor(self.features, self.device)

    def logmel(self, audio_path: str | Path, extractor: LogMelExtractor | None = None) -> np.ndarray:
        """Log-mel of every whole segment of the file [T, 51, 128] (AudioDecodeError / ValueError when the
        audio is unreadable or shorter than start_s + segment_s)."""
        return song_logmel(
            audio_path, self.features, self.device, mode="song", extractor=extractor or self.extractor()
        )

    def times(self, n: int) -> np.ndarray:
        """Start time in seconds of segments 0 .. n - 1."""
        return self.features.start_s + self.features.segment_s * np.arange(n)

    def predict(
        self,
        logmel: np.ndarray,
        net: torch.nn.Module | None = None,
        stride: int = 1,
        stitch: str = "mean",
        batch_size: int = 32,
    ) -> Curves:
        """Whole-song curves by `predict_song` (sliding windows of 60 segments; one forward if shorter)."""
        arousal, valence = predict_song(
            net or self.net, logmel, None, stride=stride, stitch=stitch, batch_size=batch_size
        )
        return Curves(self.times(len(arousal)), arousal.numpy(), valence.numpy())


def collect_audio(inputs: list[str] | str, recursive: bool = False, key: str = "inputs") -> list[Path]:
    """Audio files named directly, plus those (mp3, wav, flac, ogg) in the named folders, in order; `key`
    names the option in errors."""
    items = [inputs] if isinstance(inputs, str) else list(inputs)
    if not items:
        raise ConfigError(f"{key}=[]: name at least one audio file or folder")
    files: list[Path] = []
    for item in map(Path, items):
        if item.is_dir():
            pattern = "**/*" if recursive else "*"
            found = sorted(
                p for p in item.glob(pattern) if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS
            )
            if not found:
                raise ConfigError(
                    f"{key}: folder {item} holds no audio files ({', '.join(AUDIO_EXTENSIONS)})"
                )
            files += found
        elif item.is_file():
            files.append(item)
        else:
            raise ConfigError(f"{key}: {item} is neither a file nor a folder")
    return list(dict.fromkeys(files))

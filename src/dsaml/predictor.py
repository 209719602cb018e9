"""`Predictor`: a dsaml checkpoint ready to turn audio files into emotion curves (predict, personalize).

    predictor = Predictor.load("model.ckpt", device="auto")
    logmel = predictor.logmel("song.mp3")     # np.float32 [T, 51, 128], T = floor((dur - 15) / 0.5)
    curves = predictor.predict(logmel)        # Curves: time_s, arousal, valence [T]

The feature settings come from the checkpoint (`hyper_parameters["features"]`), so a song is featurised
exactly as the training data was, and so does the sliding-window length (`Predictor.window`: the training
clip length `task.support_segments`; 60, the original's window, for `dsaml-convert` output). A personalised
checkpoint (dsaml-personalize) may carry a listener's output map
(`hyper_parameters["personalized"]["calibration"]`), which `predict` applies. Label/prediction
i belongs to segment i, which starts at start_s + i * segment_s seconds (15.0, 15.5, ... as DEAM's
sample_15000ms, sample_15500ms, ...).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dsaml.config import ConfigError
from dsaml.data.annotations import AUDIO_EXTENSIONS
from dsaml.data.features import FeatureConfig, LogMelExtractor, resolve_device, song_logmel
from dsaml.inference import ORIGINAL_WINDOW, predict_song
from dsaml.meta.calibration import Calibration
from dsaml.meta.listener_prior import with_listener_readout
from dsaml.models import DSAMLConfig, DSAMLNet
from dsaml.models.checkpoint import CheckpointError, load_network

# What the user tools (dsaml-predict, dsaml-personalize) use unless told otherwise; chosen from the
# accuracy/time table of experiments/benchmarks/bench_stride.py (experiments/benchmarks/RESULTS.md,
# "Whole-song prediction stride").
# Stride 10 + "weighted" scored 0.7380 against stride 1 + "mean"'s 0.7366 on the demo's test songs, with
# curves 0.0023 (mean |difference|) from stride 1 + "weighted", at a tenth of the windows.
DEFAULT_STRIDE = 10
DEFAULT_STITCH = "weighted"


@dataclass(frozen=True)
class Curves:
    """Emotion curves of one song (what `Predictor.predict` returns).

    Args:
        time_s (np.ndarray): [T] start of each segment in seconds (start_s + i * segment_s: 15.0, 15.5, ...).
        arousal (np.ndarray): [T] float32 predicted arousal.
        valence (np.ndarray): [T] float32 predicted valence.
    """

    time_s: np.ndarray
    arousal: np.ndarray
    valence: np.ndarray

    def rows(self) -> list[tuple[float, float, float]]:
        """One (time_s, arousal, valence) tuple of floats per segment, in time order."""
        return list(zip(self.time_s.tolist(), self.arousal.tolist(), self.valence.tolist(), strict=True))


def window_of(hparams: dict[str, Any], path: str | Path) -> int:
    """The checkpoint's sliding-window length.

    Args:
        hparams (dict): the checkpoint's ``hyper_parameters``.
        path (str or Path): the checkpoint's path (named in errors).

    Returns:
        int: segments per window: the training clip length ``task.support_segments``, or the original's 60
        (ORIGINAL_WINDOW) for a `dsaml-convert` file (``converted_from`` set).

    Raises:
        CheckpointError: task.support_segments is not a positive integer, or the checkpoint records
            neither.
    """
    task = hparams.get("task") or {}
    if "support_segments" in task:
        window = task["support_segments"]
        if not (isinstance(window, int) and not isinstance(window, bool) and window >= 1):
            raise CheckpointError(f"{path}: task.support_segments={window!r} is not a positive integer")
        return window
    if "converted_from" in hparams:
        return ORIGINAL_WINDOW
    raise CheckpointError(
        f"{path}: the checkpoint records no window length (hyper_parameters.task.support_segments, the "
        "training clip length in segments); dsaml-train and dsaml-convert checkpoints have it"
    )


def check_raw_audio_model(cfg: DSAMLConfig, path: str | Path) -> None:
    """Check that the network can run on raw audio alone.

    Args:
        cfg (DSAMLConfig): the checkpoint's model config.
        path (str or Path): the checkpoint's path (named in the error).

    Raises:
        CheckpointError: the network needs stored global vectors (``cfg.global_store_name`` set), which only
            an external encoder makes; global_context "learned" and "none" pass.
    """
    needs = cfg.global_store_name
    if needs is not None:
        raise CheckpointError(
            f"{path}: this model's global context is {cfg.global_context!r}: it needs the global vectors "
            f"{needs!r} computed by an external encoder and stored in a feature store, which cannot be made "
            "from raw audio here. Use a checkpoint trained with model.global_context=learned or none"
        )


@dataclass
class Predictor:
    """A loaded dsaml network (eval mode, on `device`) plus the feature settings it was trained with.

    Made by `Predictor.load`.

    Args:
        net (DSAMLNet): the network, in eval mode.
        features (FeatureConfig): the checkpoint's feature settings (the defaults when it has none).
        hparams (dict): the checkpoint's ``hyper_parameters``.
        device (torch.device): where the network and the feature extraction run.
        path (Path): the checkpoint file.
        window (int): sliding-window length in segments (`window_of`).
        calibration (Calibration or None): the listener's output map of a personalised checkpoint.
    """

    net: DSAMLNet
    features: FeatureConfig
    hparams: dict[str, Any]
    device: torch.device
    path: Path
    window: int  # sliding-window length in segments (window_of)
    calibration: Calibration | None = None  # the listener's output map of a personalised checkpoint

    @classmethod
    def load(cls, path: str | Path, device: str = "auto", trust: bool = False) -> Predictor:
        """Load a dsaml checkpoint for prediction on audio files.

        Warns when the checkpoint holds no feature settings (the defaults are used).

        Args:
            path (str or Path): the checkpoint (dsaml-train, dsaml-convert or dsaml-personalize output).
            device (str): "auto" (CUDA when available, else CPU), "cpu", "cuda" or "cuda:N".
            trust (bool): allow unpickling (only for files you trust); False: weights-only loading.

        Returns:
            Predictor: the network on `device` in eval mode, with its features, window and map.

        Raises:
            CheckpointError: not a dsaml checkpoint, damaged, needs unpickling without `trust`
                (UnsafeCheckpointError), records no window length, or cannot run on raw audio
                (`check_raw_audio_model`).
            ConfigError: an unknown or unavailable device, or invalid stored feature settings.
            FileNotFoundError: no such file.
        """
        path = Path(path)
        resolved = resolve_device(device)
        net, cfg, hparams = load_network(path, map_location=resolved, trust=trust)
        check_raw_audio_model(cfg, path)
        window = window_of(hparams, path)
        stored = dict(hparams.get("features") or {})
        if not stored:
            warnings.warn(
                f"{path}: no feature settings in the checkpoint; using the defaults (docs/method.md)",
                stacklevel=2,
            )
        personal = hparams.get("personalized") or {}
        calibration = Calibration.from_dict(personal["calibration"]) if personal.get("calibration") else None
        if personal.get("listener_readout"):
            try:
                net = with_listener_readout(net, personal["listener_readout"])
            except (KeyError, TypeError, ValueError) as error:
                raise CheckpointError(f"{path}: hyper_parameters.personalized: {error}") from None
        features = FeatureConfig.from_mapping(stored)
        return cls(net, features, dict(hparams), resolved, path, window, calibration)

    @property
    def cfg(self) -> DSAMLConfig:
        """The network's model config."""
        return self.net.cfg

    def extractor(self) -> LogMelExtractor:
        """A new log-mel extractor with the checkpoint's feature settings, on `device`."""
        return LogMelExtractor(self.features, self.device)

    def logmel(self, audio_path: str | Path, extractor: LogMelExtractor | None = None) -> np.ndarray:
        """Log-mel of every whole segment of an audio file, featurised as the training data was.

        Args:
            audio_path (str or Path): any audio file (any sample rate, mono or multi-channel).
            extractor (LogMelExtractor or None): reuse one across files; None: a new `extractor()`.

        Returns:
            np.ndarray: float32 [T, 51, 128], T = floor((duration - start_s) / segment_s) segments.

        Raises:
            AudioDecodeError: the audio cannot be decoded.
            ValueError: the audio is shorter than start_s + segment_s (15.5 s by default).
        """
        return song_logmel(
            audio_path, self.features, self.device, mode="song", extractor=extractor or self.extractor()
        )

    def times(self, n: int) -> np.ndarray:
        """Start time in seconds of segments 0 .. n - 1: [n] start_s + i * segment_s (float64)."""
        return self.features.start_s + self.features.segment_s * np.arange(n)

    def predict(
        self,
        logmel: np.ndarray,
        net: torch.nn.Module | None = None,
        stride: int = DEFAULT_STRIDE,
        stitch: str = DEFAULT_STITCH,
        batch_size: int = 32,
        progress: Callable[[int, int], None] | None = None,
    ) -> Curves:
        """Whole-song curves by `predict_song` with windows of `self.window` segments (one forward when the
        song is no longer); with the predictor's own network, its calibration map (if any) is applied.

        Args:
            logmel (np.ndarray): the song's log-mel segments [T, 51, 128] (`logmel`).
            net (nn.Module or None): another network to predict with (e.g. an adapted copy; no map
                applied); None: its own.
            stride (int): segments between window starts (DEFAULT_STRIDE = 10).
            stitch (str): one of `dsaml.inference.STITCH_RULES` (DEFAULT_STITCH = "weighted").
            batch_size (int): windows per forward.
            progress (Callable or None): called as progress(done, total) after each batch of windows.

        Returns:
            Curves: time_s, arousal, valence, each [T].

        Raises:
            ValueError: stride / stitch / batch_size rejected by `predict_song`, or logmel not
                [T, 51, 128].
        """
        arousal, valence = predict_song(
            net or self.net,
            logmel,
            None,
            window=self.window,
            stride=stride,
            stitch=stitch,
            batch_size=batch_size,
            progress=progress,
        )
        if net is None and self.calibration is not None:
            arousal, valence = self.calibration.apply(arousal, valence)
        return Curves(self.times(len(arousal)), arousal.numpy(), valence.numpy())


def collect_audio(inputs: list[str] | str, recursive: bool = False, key: str = "inputs") -> list[Path]:
    """The audio files a command is given.

    Args:
        inputs (list[str] or str): audio files and folders.
        recursive (bool): also search the folders' subfolders.
        key (str): the option's name in errors.

    Returns:
        list[Path]: the files named directly plus those with an audio extension (AUDIO_EXTENSIONS) in the
        named folders (sorted per folder), in order, without repeats.

    Raises:
        ConfigError: no inputs, a folder without audio files, or a path that is neither file nor folder.
    """
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

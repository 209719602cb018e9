"""`global_context: clap`: global vectors from the audio tower of a CLAP model (transformers' ClapModel).

A preprocessing encoder (optional dependency: `pip install dsaml[clap]`): it loads a local CLAP checkpoint
directory (or one already in the Hugging Face cache; nothing is downloaded) and embeds 30 s windows with the
original's global-vector semantics (spec section 1):
- a training clip: one vector for the clip's 30 s (15 s .. 45 s of the song) -> [1, D_g];
- a full song: one vector per segment i for the window [0.5 i, 0.5 i + 30) s -> [T, D_g]; where the window
  runs past the end of the audio it is padded by repeating the last samples, as the original did.
CLAP sees `max_length_s` (10 s) at a time: a 30 s window is embedded as its consecutive 10 s chunks, averaged.
The vectors go into the feature store under the name "clap" (read back with `global_context: clap`).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

WINDOW_S = 30.0
SEGMENT_S = 0.5


def _import_transformers():
    try:
        import transformers
    except ImportError as error:  # optional extra
        raise ImportError("global_context=clap needs transformers: pip install 'dsaml[clap]'") from error
    return transformers


class ClapAudioEncoder:
    """Embed audio windows with CLAP's audio tower. `model`/`feature_extractor`: a ClapModel and a
    ClapFeatureExtractor (e.g. a tiny random one in tests); or use `from_pretrained(path)`."""

    def __init__(
        self, model, feature_extractor, device: str | torch.device = "cpu", batch_size: int = 16
    ) -> None:
        self.model = model.to(device).eval()
        self.feature_extractor = feature_extractor
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.sample_rate = int(feature_extractor.sampling_rate)
        self.chunk = int(round(feature_extractor.max_length_s * self.sample_rate))

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu", batch_size: int = 16):
        """Load a local CLAP checkpoint (directory or cached model id); never downloads."""
        transformers = _import_transformers()
        try:
            model = transformers.ClapModel.from_pretrained(str(path), local_files_only=True)
            extractor = transformers.ClapFeatureExtractor.from_pretrained(str(path), local_files_only=True)
        except OSError as error:
            raise FileNotFoundError(
                f"no local CLAP checkpoint at {path!s} (a directory with config.json, "
                f"weights and preprocessor_config.json): {error}"
            ) from error
        return cls(model, extractor, device, batch_size)

    @property
    def dim(self) -> int:
        return int(self.model.config.projection_dim)

    @torch.no_grad()
    def embed_windows(self, windows: np.ndarray) -> np.ndarray:
        """windows [N, S] mono float32 at `sample_rate`, S = a multiple of the 10 s chunk -> [N, D_g]."""
        n, length = windows.shape
        per_window = length // self.chunk
        chunks = windows.reshape(n * per_window, self.chunk)
        out = []
        for first in range(0, len(chunks), self.batch_size):
            batch = list(chunks[first : first + self.batch_size])
            inputs = self.feature_extractor(
                batch,
                sampling_rate=self.sample_rate,
                return_tensors="pt",
                truncation="fusion" if self.model.config.audio_config.enable_fusion else "rand_trunc",
            )  # chunks are exactly max_length: never cut
            features = self.model.get_audio_features(**{k: v.to(self.device) for k, v in inputs.items()})
            features = getattr(
                features, "pooler_output", features
            )  # transformers >= 5 returns an output object
            out.append(features.float().cpu())
        return torch.cat(out).view(n, per_window, -1).mean(dim=1).numpy()

    def _resample(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        import torchaudio

        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim != 1:
            raise ValueError(f"audio has shape {audio.shape}, expected mono [samples]")
        if sample_rate == self.sample_rate:
            return audio
        return torchaudio.functional.resample(torch.from_numpy(audio), sample_rate, self.sample_rate).numpy()

    def _window_length(self) -> int:
        return math.ceil(WINDOW_S * self.sample_rate / self.chunk) * self.chunk

    def _cut(self, audio: np.ndarray, start_s: float, length: int | None = None) -> np.ndarray:
        """`length` samples (default: the window) from start_s, padded past the end by repeating the last
        sample of the audio."""
        start = int(round(start_s * self.sample_rate))
        length = self._window_length() if length is None else length
        piece = audio[start : start + length]
        if len(piece) < length:
            tail = piece[-1:] if len(piece) else audio[-1:]
            piece = np.concatenate([piece, np.resize(tail, length - len(piece))])
        return piece

    def clip_vector(self, audio: np.ndarray, sample_rate: int, start_s: float = 15.0) -> np.ndarray:
        """One vector for the 30 s clip starting at start_s -> float32 [1, D_g]."""
        return self.embed_windows(self._cut(self._resample(audio, sample_rate), start_s)[None])

    def song_vectors(self, audio: np.ndarray, sample_rate: int, n_segments: int) -> np.ndarray:
        """One vector per segment i, for the window [0.5 i, 0.5 i + 30) s -> float32 [n_segments, D_g].

        A window is the mean of its consecutive 10 s chunks, and window i's k-th chunk is the chunk that
        starts at segment i + k * (segments per chunk): the song's n_segments + (chunks per window - 1) *
        (segments per chunk) distinct chunks are embedded once each, instead of 3 per window."""
        audio = self._resample(audio, sample_rate)
        per_window = self._window_length() // self.chunk
        stride = self.chunk / (SEGMENT_S * self.sample_rate)  # segments per chunk (20 for 10 s)
        if stride != int(stride):  # chunks off the segment grid: embed every window whole
            return np.concatenate(
                [
                    self.embed_windows(np.stack([self._cut(audio, SEGMENT_S * i) for i in idx]))
                    for idx in _batches(range(n_segments), self.batch_size)
                ]
            )
        starts = range(n_segments + (per_window - 1) * int(stride))
        chunk_vectors = np.concatenate(
            [
                self.embed_windows(np.stack([self._cut(audio, SEGMENT_S * j, self.chunk) for j in idx]))
                for idx in _batches(starts, self.batch_size)
            ]
        )
        windows = np.arange(n_segments)[:, None] + int(stride) * np.arange(per_window)[None, :]
        return chunk_vectors[windows].mean(axis=1)


def _batches(items: range, size: int) -> list[range]:
    return [items[first : first + size] for first in range(0, len(items), size)]

"""Fixtures for the data tests: the dsaml-synth tiny corpus (cached across runs), a float32 store built
from it once per session, small derived trees, and the independent log-mel computation."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from dsaml.data.preprocess import PreprocessConfig, preprocess
from dsaml.data.readers import DataConfig
from dsaml.data.synth.corpus import generate_corpus


def direct_logmel(path: str | Path, n_segments: int | None = None) -> np.ndarray:
    """Independent truth: soundfile decode, channel mean, torchaudio resample of the whole signal to 44.1 kHz,
    then one torchaudio MelSpectrogram call per 0.5 s segment from 15 s (zero-padded past the end when
    `n_segments` is given), natural log(x + 1e-6), time-major -> float32 [T, 51, 128]."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # many tiny calls: threads only add overhead on a busy 2-core machine
    try:
        return _direct_logmel(path, n_segments)
    finally:
        torch.set_num_threads(threads)


def _direct_logmel(path: str | Path, n_segments: int | None) -> np.ndarray:
    frames, rate = sf.read(str(path), dtype="float32", always_2d=True)
    wave = torch.from_numpy(frames.mean(axis=1))
    wave = torchaudio.functional.resample(wave, rate, 44100)
    mel = torchaudio.transforms.MelSpectrogram(
        sample_rate=44100,
        n_fft=2646,
        win_length=2646,
        hop_length=441,
        n_mels=128,
        power=2.0,
        center=True,
        pad_mode="reflect",
        norm=None,
        mel_scale="htk",
    )
    if n_segments is None:
        n_segments = (wave.shape[0] - 15 * 44100) // 22050
    out = []
    for i in range(n_segments):
        begin = 15 * 44100 + 22050 * i
        segment = wave[begin : begin + 22050]
        segment = torch.nn.functional.pad(segment, (0, 22050 - segment.shape[0]))
        out.append(torch.log(mel(segment) + 1e-6).T)
    return torch.stack(out).numpy()


def write_tone(path: Path, seconds: float, rate: int, channels: int, seed: int = 0) -> Path:
    """A chord with a little noise (so every mel band has energy), written with soundfile."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * rate))) / rate
    mono = sum(np.sin(2 * np.pi * f * t * (1 + 0.01 * np.sin(t))) for f in (220.0, 554.0, 1318.0)) / 4
    data = np.stack(
        [mono * (0.8 + 0.2 * c) + 0.01 * rng.standard_normal(t.shape) for c in range(channels)], 1
    )
    sf.write(str(path), data.astype(np.float32), rate)
    return path


@pytest.fixture(scope="session")
def tiny_corpus(request) -> Path:
    """dsaml-synth's tiny DEAM-format corpus (nested layout), kept in pytest's cache between runs."""
    root = Path(request.config.cache.mkdir("dsaml_data_tiny_corpus")) / "tiny"
    generate_corpus(root, "tiny", seed=0, progress=False)
    return root


def data_config(root: Path, **overrides) -> DataConfig:
    return DataConfig.from_mapping({"name": "synthetic", "root": str(root), **overrides})


@pytest.fixture(scope="session")
def tiny_store_f32(tiny_corpus, tmp_path_factory) -> Path:
    """The tiny corpus preprocessed once, in float32 (features equal a direct computation to the bit)."""
    store = tmp_path_factory.mktemp("store") / "tiny.h5"
    options = PreprocessConfig(workers=2, dtype="float32", progress=False)
    summary = preprocess(data_config(tiny_corpus), options, store)
    assert summary.computed == summary.songs and not summary.failures
    return store


def subset_tree(corpus: Path, target: Path, song_ids: list[str]) -> Path:
    """A smaller DEAM tree: the annotations with averaged rows for `song_ids` only, and their audio."""
    shutil.copytree(corpus / "DEAM_Annotations", target / "DEAM_Annotations")
    averaged = (
        target / "DEAM_Annotations/annotations/annotations averaged per song/dynamic (per second annotations)"
    )
    for name in ("arousal.csv", "valence.csv"):
        lines = (averaged / name).read_text().splitlines()
        kept = [line for line in lines[1:] if line.split(",", 1)[0] in song_ids]
        (averaged / name).write_text("\n".join([lines[0], *kept]) + "\n")
    audio = target / "DEAM_audio" / "MEMD_audio"
    audio.mkdir(parents=True)
    for song in song_ids:
        shutil.copy(corpus / "DEAM_audio" / "MEMD_audio" / f"{song}.mp3", audio / f"{song}.mp3")
    return target


def write_pmemo(root, first_time=15.0, n_songs=3, seconds=21.0):
    """A tiny PMEmo tree: wav choruses and the long-format dynamic_annotations.csv."""
    (root / "chorus").mkdir(parents=True)
    (root / "annotations").mkdir()
    rows = ["musicId,frameTime,Arousal(mean),Valence(mean)"]
    for k, song in enumerate(range(1, 1 + n_songs)):
        write_tone(root / "chorus" / f"{song}.wav", seconds, 22050, 2, seed=k)
        for i in range(int((seconds - first_time) / 0.5) + 1):
            rows.append(f"{song},{first_time + 0.5 * i:.1f},{0.5 + 0.01 * i:.3f},{0.4 - 0.01 * i:.3f}")
    (root / "annotations" / "dynamic_annotations.csv").write_text("\n".join(rows) + "\n")
    return root

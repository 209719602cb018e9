"""CLAP global-context encoder, with a tiny randomly initialised ClapModel (never downloads)."""

from __future__ import annotations

import numpy as np
import pytest

from dsaml.models.clap import ClapAudioEncoder
from model_fixtures import TINY_CLAP_DIM


def test_window_semantics_and_chunk_averaging(tiny_clap):
    encoder = ClapAudioEncoder.from_pretrained(tiny_clap, batch_size=8)
    sr = encoder.sample_rate
    rng = np.random.default_rng(0)
    audio = (rng.standard_normal(int(46.5 * sr)) * 0.1).astype(np.float32)
    clip = encoder.clip_vector(audio, sr)  # 15 s .. 45 s as three 10 s chunks, averaged
    chunks = np.stack([audio[int((15 + 10 * k) * sr) : int((25 + 10 * k) * sr)] for k in range(3)])
    direct = encoder.embed_windows(chunks.reshape(3, -1)).mean(axis=0)  # each chunk alone, then the mean
    assert clip.shape == (1, TINY_CLAP_DIM)
    np.testing.assert_allclose(clip[0], direct, rtol=1e-5, atol=1e-6)
    # per-segment windows [0.5 i, 0.5 i + 30) s; the one that runs past the end repeats the last sample
    short = audio[: int(31.2 * sr)]
    song = encoder.song_vectors(short, sr, n_segments=4)
    assert song.shape == (4, TINY_CLAP_DIM)
    np.testing.assert_allclose(
        song[0], encoder.embed_windows(short[None, : 30 * sr])[0], rtol=1e-5, atol=1e-6
    )
    for i in range(4):  # every window embedded whole (three chunks), padded with the last sample
        window = short[int(0.5 * i * sr) : int((0.5 * i + 30) * sr)]
        window = np.concatenate([window, np.full(30 * sr - len(window), short[-1])])
        np.testing.assert_allclose(song[i], encoder.embed_windows(window[None])[0], rtol=1e-5, atol=1e-6)
    # 63 windows from 63 + 40 distinct 10 s chunks, each embedded once (not 3 x 63)
    calls = []
    embed = encoder.embed_windows
    encoder.embed_windows = lambda windows: calls.append(len(windows)) or embed(windows)
    long = encoder.song_vectors(audio[: int(46.5 * sr)], sr, n_segments=63)
    assert sum(calls) == 63 + 40 and long.shape == (63, TINY_CLAP_DIM)
    window = audio[int(0.5 * 62 * sr) : int((0.5 * 62 + 30) * sr)]
    window = np.concatenate([window, np.full(30 * sr - len(window), audio[int(46.5 * sr) - 1])])
    np.testing.assert_allclose(long[62], embed(window[None])[0], rtol=1e-5, atol=1e-6)


def test_resampling_and_local_checkpoint_loading(tiny_clap, tmp_path):
    encoder = ClapAudioEncoder.from_pretrained(tiny_clap)
    audio_16k = np.sin(np.arange(16000 * 46) / 16000 * 2 * np.pi * 440).astype(np.float32)
    vector = encoder.clip_vector(audio_16k, 16000)
    assert vector.shape == (1, encoder.dim) and np.isfinite(vector).all()
    with pytest.raises(FileNotFoundError, match="no local CLAP checkpoint"):
        ClapAudioEncoder.from_pretrained(tmp_path / "missing")

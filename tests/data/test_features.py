"""Log-mel features against an independent torchaudio computation (docs/method.md, "Features")."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from data_fixtures import direct_logmel, write_tone
from dsaml.config import ConfigError
from dsaml.data.audio import AudioDecodeError
from dsaml.data.features import FeatureConfig, song_logmel
from dsaml.data.store import FeatureStore
from dsaml.data.synth.corpus import load_truth


@pytest.mark.parametrize(
    ("rate", "channels", "suffix"), [(48000, 2, "wav"), (22050, 1, "flac"), (44100, 2, "flac")]
)
def test_song_mode_matches_direct_computation(tmp_path, rate, channels, suffix):
    path = write_tone(tmp_path / f"a.{suffix}", 27.3, rate, channels)
    ours = song_logmel(path)
    assert ours.shape == (math.floor((27.3 - 15) / 0.5), 51, 128) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, direct_logmel(path), atol=1e-4, rtol=0)


def test_clip_mode_pads_short_excerpts_like_the_original(tmp_path):
    path = write_tone(tmp_path / "clip.wav", 44.6, 48000, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 0.4 s of 30 s missing: below the 10 % warning threshold
        ours = song_logmel(path, mode="clip", segments_per_clip=60)
    truth = direct_logmel(path, n_segments=60)
    assert ours.shape == (60, 51, 128)
    np.testing.assert_allclose(ours, truth, atol=1e-4, rtol=0)
    # the last segment is 1 - 0.1 / 0.5 = 20 % audio then silence; log(0 + eps) at the far end
    assert ours[-1, -1].max() == pytest.approx(math.log(1e-6), abs=1e-3)


def test_clip_mode_warns_when_more_than_ten_percent_is_missing(tmp_path):
    path = write_tone(tmp_path / "short.wav", 40.0, 22050, 1)
    with pytest.warns(UserWarning, match="17% of the 60-segment clip"):
        ours = song_logmel(path, mode="clip")
    assert ours.shape == (60, 51, 128)


def test_short_and_broken_audio_fail_clearly(tmp_path):
    short = write_tone(tmp_path / "short.wav", 15.4, 44100, 1)
    with pytest.raises(ValueError, match=r"15.40 s long; at least 15.5 s"):
        song_logmel(short)
    assert song_logmel(write_tone(tmp_path / "ok.wav", 15.5, 44100, 1)).shape == (1, 51, 128)
    (tmp_path / "empty.mp3").write_bytes(b"")
    with pytest.raises(AudioDecodeError, match="empty.mp3: empty file"):
        song_logmel(tmp_path / "empty.mp3")
    (tmp_path / "junk.mp3").write_bytes(b"not audio at all" * 100)
    with pytest.raises(AudioDecodeError, match="junk.mp3: cannot decode"):
        song_logmel(tmp_path / "junk.mp3")


def test_feature_config_is_validated():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['hop'\]; allowed keys: \['sample_rate'"):
        FeatureConfig.from_mapping({"hop": 441})
    with pytest.raises(ConfigError, match=r"features.mel_scale='mel' is not one of htk, slaney"):
        FeatureConfig(mel_scale="mel")
    assert FeatureConfig().n_frames == 51


def test_store_equals_direct_computation_for_each_source_kind(tiny_corpus, tiny_store_f32):
    """float32 store mode: 48 kHz and 22.05 kHz, mono and stereo MP3s, clips and full songs."""
    truth = load_truth(tiny_corpus)["songs"]
    store = FeatureStore(tiny_store_f32)
    picked = {}
    for song_id, info in truth.items():
        picked.setdefault((info["sample_rate"], info["channels"], info["kind"]), song_id)
    assert {rate for rate, _, _ in picked} >= {48000, 22050} and {ch for _, ch, _ in picked} == {1, 2}
    assert {kind for _, _, kind in picked} == {"clip", "full"}
    for (_, _, kind), song_id in picked.items():
        path = tiny_corpus / truth[song_id]["audio"]
        if kind == "clip":
            expected = direct_logmel(path, n_segments=60)
        else:
            expected = direct_logmel(path)
            assert len(expected) == math.floor((store.duration_s(song_id) - 15) / 0.5)
        assert store.n_segments(song_id) == len(expected)
        np.testing.assert_allclose(store.logmel(song_id), expected, atol=1e-4, rtol=0, err_msg=song_id)

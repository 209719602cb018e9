"""Real recordings (Debian's asc-music: three MP3 tracks, GPL-2+; `.ci/run` installs it): feature
extraction as dsaml-preprocess does it, dsaml-predict and dsaml-personalize on them give finite outputs of
the expected lengths, with no warnings. Skipped, saying why, where the package is not installed."""

from __future__ import annotations

import csv
import functools
import math
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from app_fixtures import capture, compose_cli, save_tiny_ckpt
from dsaml.cli.personalize import run as run_personalize
from dsaml.cli.predict import run as run_predict
from dsaml.data.features import FeatureConfig, song_logmel
from dsaml.models.checkpoint import load_network

MUSIC = Path(os.environ.get("DSAML_REAL_MUSIC", "/usr/share/games/asc/music"))
TRACKS = sorted(MUSIC.glob("*.mp3")) if MUSIC.is_dir() else []
pytestmark = pytest.mark.skipif(
    not TRACKS,
    reason=f"no real recordings in {MUSIC}: install Debian's asc-music (apt-get install asc-music; .ci/run "
    "does it as root) or set DSAML_REAL_MUSIC to a folder of MP3s",
)
FEATURES = FeatureConfig()


@functools.cache
def expected_segments(path: Path) -> int:
    """floor((duration - start_s) / segment_s), the duration from decoding the whole file with libsndfile
    at its own rate, independently of dsaml's resampling and segmenting. (The header estimate,
    `sf.info().frames`, is 0.25-0.38 s longer than what decodes for these MP3s: it would expect one segment
    more for frontiers.mp3.)"""
    samples, rate = sf.read(str(path), dtype="float32", always_2d=True)
    return math.floor((len(samples) / rate - FEATURES.start_s) / FEATURES.segment_s)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return save_tiny_ckpt(tmp_path_factory.mktemp("real") / "tiny.ckpt")


def test_feature_extraction_is_finite_with_one_row_per_segment():
    track = TRACKS[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        logmel = song_logmel(track, FEATURES)
    assert logmel.shape == (expected_segments(track), FEATURES.n_frames, FEATURES.n_mels)
    assert np.isfinite(logmel).all()
    assert logmel.std() > 1.0  # real music: the spectrum varies (silence would give a constant log floor)


def test_predict_writes_finite_curves_for_every_track(ckpt, tmp_path):
    console, buffer = capture()
    cfg = compose_cli(
        "predict", [f"ckpt={ckpt}", f"inputs=[{MUSIC}]", f"out={tmp_path}", "plot=false", "device=cpu"]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert run_predict(cfg, console) == 0, buffer.getvalue()
    for track in TRACKS:
        with (tmp_path / f"{track.stem}.csv").open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert len(rows) == expected_segments(track), track
        values = np.array([[float(r["arousal"]), float(r["valence"])] for r in rows])
        assert np.isfinite(values).all() and float(rows[0]["time_s"]) == FEATURES.start_s


def test_personalize_adapts_on_real_tracks(ckpt, tmp_path):
    """A made-up listener rated two tracks (slow sinusoids, 2 Hz from 15 s); the third is held out."""
    curves = tmp_path / "curves"
    curves.mkdir()
    for index, track in enumerate(TRACKS):
        n = expected_segments(track)
        time = FEATURES.start_s + np.arange(n) * FEATURES.segment_s
        with (curves / f"{track.stem}.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["time", "arousal", "valence"])
            for t in time:
                writer.writerow([t, 0.4 * math.sin(t / (7 + index)), 0.2 + 0.3 * math.cos(t / 11)])
    out = tmp_path / "me.ckpt"
    console, buffer = capture()
    cfg = compose_cli(
        "personalize",
        [
            f"ckpt={ckpt}",
            f"audio=[{MUSIC}]",
            f"annotations=[{curves}]",
            f"holdout=[{TRACKS[-1].stem}]",
            f"out={out}",
            "method=maml",  # one fixed method: auto would try every candidate on 5-minute tracks
            "steps=2",
            "plot=false",
            "device=cpu",
        ],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert run_personalize(cfg, console) == 0, buffer.getvalue()
    net, _, hparams = load_network(out)
    assert sorted(hparams["personalized"]["songs"]) == sorted(t.stem for t in TRACKS[:-1])
    assert all(bool(np.isfinite(p.detach().numpy()).all()) for p in net.parameters())

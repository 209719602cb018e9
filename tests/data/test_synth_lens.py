"""Lens listeners (docs/listeners.md): the music's five cues follow their own curves and can be read back from
the log-mel spectrogram; a lens rater reports its Dirichlet-weighted mix of the cues through its transform;
a lens corpus records cues and weights, and the corpora without lens raters are unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchaudio

from dsaml.data.synth import load_preset
from dsaml.data.synth.corpus import plan_corpus
from dsaml.data.synth.curves import true_curve
from dsaml.data.synth.music import AROUSAL_CUES, VALENCE_CUES, render_music
from dsaml.data.synth.raters import LENS, Rater, Transform, make_pool, rate_song

CUES = AROUSAL_CUES + VALENCE_CUES
RATE = 16000
SECONDS = 50


def _segment_logmel(audio: np.ndarray) -> np.ndarray:
    """Per 0.5 s segment: the mean log-mel spectrum (128 bands) and the mean positive spectral flux ->
    [segments, 129]."""
    mel = torchaudio.transforms.MelSpectrogram(RATE, n_fft=1024, hop_length=RATE // 50, n_mels=128)
    logmel = torch.log(mel(torch.from_numpy(audio[:, 0])) + 1e-6).numpy().T  # [frames at 50 Hz, 128]
    k = len(logmel) // 25
    frames = logmel[: k * 25].reshape(k, 25, 128)
    flux = np.maximum(np.diff(frames, axis=1), 0).sum(2).mean(1, keepdims=True)
    return np.concatenate([frames.mean(1), flux], 1)


@pytest.fixture(scope="module")
def rendered() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Five songs with independent cue curves -> (log-mel features [T, 129], cue curves [T, 5]) per song."""
    features, cues = [], []
    for seed in range(5):
        rng = np.random.default_rng(seed)
        curves = {name: true_curve(2 * SECONDS + 2, rng) for name in CUES}
        audio = render_music(curves["pulse"], curves["mode"], RATE * SECONDS, RATE, 1, seed, curves)
        x = _segment_logmel(audio)
        features.append(x)
        cues.append(np.stack([curves[name][: len(x)] for name in CUES], 1))
    return features, cues


def test_cue_curves_are_recoverable_from_the_logmel(rendered):
    """A ridge read-out of the segment log-mel, fitted on four songs, tracks each cue on the fifth (pooled
    over the five held-out songs). Measured here: loudness 0.84, pulse 0.88, brightness 0.62, mode 0.44,
    register 0.38: mode (major/minor third, consonance) and register (pitch height, over each song's own key)
    are patterns across bands that a linear read-out of band energies captures least."""
    features, cues = rendered
    floors = {"loudness": 0.7, "pulse": 0.75, "brightness": 0.45, "mode": 0.3, "register": 0.25}
    predicted, actual = [], []
    for hold in range(len(features)):
        train = [j for j in range(len(features)) if j != hold]
        x = np.concatenate([features[j] for j in train])
        mean, std = x.mean(0), x.std(0) + 1e-6
        x = (x - mean) / std
        y = np.concatenate([cues[j] for j in train])
        w = np.linalg.solve(x.T @ x + 30 * np.eye(x.shape[1]), x.T @ (y - y.mean(0)))
        predicted.append((features[hold] - mean) / std @ w + y.mean(0))
        actual.append(cues[hold])
    predicted, actual = np.concatenate(predicted), np.concatenate(actual)
    for i, name in enumerate(CUES):
        assert np.corrcoef(predicted[:, i], actual[:, i])[0, 1] > floors[name], name


def test_loudness_and_pulse_cues_are_separable():
    """With every other cue held at 0: a loudness ramp raises the log-mel level and leaves the spectral flux
    (onsets) where it was; a pulse ramp raises the flux."""
    n = 2 * 20 + 2
    still = {name: np.zeros(n) for name in CUES}
    ramp = np.linspace(-1, 1, n)

    def features(**changed: np.ndarray) -> np.ndarray:
        curves = still | changed
        return _segment_logmel(render_music(curves["pulse"], curves["mode"], RATE * 20, RATE, 1, 1, curves))

    base, loud, busy = features(), features(loudness=ramp), features(pulse=ramp)
    level = lambda f: f[:, :128].mean(1)
    t = len(base)
    assert np.corrcoef(level(loud) - level(base), ramp[:t])[0, 1] > 0.95
    assert np.abs(loud[:, 128] - base[:, 128]).mean() < 0.25 * np.abs(busy[:, 128] - base[:, 128]).mean()
    assert np.corrcoef(busy[:, 128], ramp[:t])[0, 1] > 0.8


def test_lens_rating_is_the_weighted_cue_mix_through_the_transform():
    """Hand-computed: weights (0.5, 0.3, 0.2) on cues (0.2, -0.4, 0.6) + 0.01 t, gain 2, offset 0.1, lag 2,
    no noise; valence weights (0.25, 0.75) on (-0.8, 0.4): gain 1, offset 0, lag 0."""
    n = 40
    t = np.arange(n, dtype=float)
    cues = {
        "loudness": 0.2 + 0.01 * t,
        "pulse": -0.4 + 0.01 * t,
        "brightness": 0.6 + 0.01 * t,
        "mode": np.full(n, -0.8),
        "register": np.full(n, 0.4),
    }
    rater = Rater(
        rater_id="A",
        kind=LENS,
        activity=1.0,
        flat_probability=0.0,
        arousal=Transform(gain=2.0, offset=0.1, lag=2, noise=0.0),
        valence=Transform(gain=1.0, offset=0.0, lag=0, noise=0.0),
        cue_weights={
            "arousal": {"loudness": 0.5, "pulse": 0.3, "brightness": 0.2},
            "valence": {"mode": 0.25, "register": 0.75},
        },
    )
    mean_curve = np.zeros(n)  # what a non-lens rater would hear: unused by a lens rater
    arousal, valence, flat = rate_song(rater, mean_curve, mean_curve, 5, 5, np.random.default_rng(0), cues)
    # perceived at i: 0.5 (0.2) + 0.3 (-0.4) + 0.2 (0.6) + 0.01 i = 0.10 + 0.01 i; label j reads i = 28 + j
    expected = np.clip(2 * (0.10 + 0.01 * (28 + np.arange(5))) + 0.1, -1, 1)
    np.testing.assert_allclose(arousal, expected, atol=1e-12)
    np.testing.assert_allclose(valence, np.full(5, 0.25 * -0.8 + 0.75 * 0.4), atol=1e-12)
    assert not flat
    with pytest.raises(ValueError, match="lens rater"):
        rate_song(rater, mean_curve, mean_curve, 5, 5, np.random.default_rng(0), None)


def test_dirichlet_weights_and_the_lens_corpus_plan():
    pool = make_pool(200, 0.2, 0.6, 0.0, np.random.default_rng(0), lens_fraction=0.5, lens_concentration=0.5)
    lens = [r for r in pool if r.kind == LENS]
    assert len(lens) == 100 and all(r.cue_weights is None for r in pool if r.kind != LENS)
    weights = np.array([list(r.cue_weights["arousal"].values()) for r in lens])
    np.testing.assert_allclose(weights.sum(1), 1.0, atol=1e-12)
    assert all(sum(r.cue_weights["valence"].values()) == pytest.approx(1.0) for r in lens)
    # Dirichlet(0.5, 0.5, 0.5): E[max weight] ~ 0.67 (a uniform mix would be 1/3): most lean on one or two
    assert 0.58 < weights.max(1).mean() < 0.76

    truth, annotations = plan_corpus(load_preset("lens"), 0, "nested")
    song = next(s for s in truth["songs"].values() if s["kind"] == "full")
    assert set(song["cues"]) == set(CUES)
    np.testing.assert_allclose(song["arousal"], np.mean([song["cues"][c] for c in AROUSAL_CUES], 0))
    np.testing.assert_allclose(song["valence"], np.mean([song["cues"][c] for c in VALENCE_CUES], 0))
    kinds = [r["kind"] for r in truth["raters"].values()]
    assert kinds.count(LENS) == 20 and all(
        ("cue_weights" in r) == (r["kind"] == LENS) for r in truth["raters"].values()
    )
    # a lens rater's reported curve follows its own cue mix better than the mean listener's curve
    closer = []
    for ann in annotations:
        song = truth["songs"][str(ann["id"])]
        for rid, curve, flat in zip(ann["rater_ids"], ann["rater_arousal"], song["flat"], strict=True):
            rater = truth["raters"][rid]
            if rater["kind"] != LENS or flat:
                continue
            idx = 30 + np.arange(len(curve)) - rater["arousal"]["lag"]
            own = sum(w * song["cues"][c][idx] for c, w in rater["cue_weights"]["arousal"].items())
            closer.append(np.corrcoef(curve, own)[0, 1] > np.corrcoef(curve, song["arousal"][idx])[0, 1])
    assert np.mean(closer) > 0.8


def test_corpora_without_lens_raters_have_no_cues():
    truth, _ = plan_corpus(load_preset("tiny"), 0, "nested")
    assert truth["config"]["lens_fraction"] == 0.0
    assert not any("cues" in s for s in truth["songs"].values())
    assert not any("cue_weights" in r for r in truth["raters"].values())

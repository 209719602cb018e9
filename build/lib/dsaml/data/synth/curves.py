"""True emotion curves of a synthetic song: smooth arousal/valence at 2 Hz in [-1, 1].

Each curve is tanh(offset + sum of three slow sinusoids with periods 8..60 s): it moves within a 45 s
excerpt (so dynamic prediction matters) and is defined from t = 0, so the audio before the first label
(15 s) and a rater's lag both have values to use. Value k describes the audio in [0.5 k, 0.5 k + 0.5) s.
"""

from __future__ import annotations

import numpy as np

CURVE_RATE_HZ = 2.0
LABEL_START_S = 15.0
LABEL_START_INDEX = int(LABEL_START_S * CURVE_RATE_HZ)  # curve index of the first DEAM label (30)


def true_curve(n_values: int, rng: np.random.Generator) -> np.ndarray:
    """One smooth curve [n_values] float64 in (-1, 1), sampled at 2 Hz from t = 0."""
    t = np.arange(n_values) / CURVE_RATE_HZ
    offset = rng.uniform(-0.6, 0.6)
    periods = rng.uniform(8.0, 60.0, size=3)
    amplitudes = rng.uniform(0.25, 0.6, size=3)
    phases = rng.uniform(0, 2 * np.pi, size=3)
    waves = amplitudes[:, None] * np.sin(2 * np.pi * t[None, :] / periods[:, None] + phases[:, None])
    return np.tanh(offset + waves.sum(0))


def song_curves(duration_s: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(arousal, valence), each [ceil(2 * duration) + 2] float64, independent of each other."""
    n_values = int(np.ceil(duration_s * CURVE_RATE_HZ)) + 2
    return true_curve(n_values, rng), true_curve(n_values, rng)

"""Render a piece of music whose moment-to-moment character follows given arousal/valence curves.

The piece is a loop of chords (bass + triad pad), a melody and a drum kit on a 16th-note grid:
- arousal -> tempo (72..168 BPM) and onset density (half-note kicks and no hats when calm, snares and
  8th then 16th hats when excited, more melody notes), loudness (-14..0 dB) and brightness (wavetables
  with few vs many harmonics, louder hats);
- valence -> mode (every chord and the melody's scale are major when valence > 0, minor below),
  consonance (a minor second and a tritone sound over the chords as valence falls below -0.3 / -0.6,
  a consonant sixth is added above +0.3) and register (chords and melody move up to REGISTER_SEMITONES
  up as valence rises and down as it falls: high pitch reads as happy, low as sad).

With `cues` (lens corpora, docs/listeners.md) each of these properties follows its own curve instead:
"loudness" (level), "pulse" (tempo, onset density: drums, chord strikes, melody notes), "brightness"
(harmonics, hat level, note decay), "mode" (mode and consonance) and "register" (pitch height). Without
`cues` every arousal cue is the arousal curve and every valence cue the valence curve (as before).

Everything is vectorised numpy: per-sample phases are accumulated with `cumsum` and read through
single-cycle wavetables, note envelopes come from "time since the last onset" arrays.
Curves are sampled at 2 Hz from t = 0: value k describes the audio in [0.5 k, 0.5 k + 0.5) s.
"""

from __future__ import annotations

import numpy as np

from dsaml.data.synth.curves import CURVE_RATE_HZ

TABLE_SIZE = 4096
HOP = 64  # samples per control block
PHASE_SHIFT = 16
PHASE_ONE = 1 << PHASE_SHIFT  # fixed-point fraction of one wavetable step
MAJOR_TRIAD = (0, 4, 7)
MINOR_TRIAD = (0, 3, 7)
MAJOR_SCALE = np.array([0, 2, 4, 5, 7, 9, 11])
MINOR_SCALE = np.array([0, 2, 3, 5, 7, 8, 11])  # harmonic minor
# Chord roots (semitones above the key) of the four bars of a progression.
PROGRESSIONS = ((0, 5, 7, 0), (0, 7, 5, 7), (0, 5, 0, 7), (0, 3, 5, 7), (0, 8, 5, 7), (0, 10, 5, 7))
REGISTER_SEMITONES = 5  # transposition at valence +-1
CUE_REGISTER_SEMITONES = 12  # ... at register cue +-1 (an independent cue must be heard over the song's key)
AROUSAL_CUES = ("loudness", "pulse", "brightness")  # the musical properties an arousal curve drives
VALENCE_CUES = ("mode", "register")  # ... and a valence curve


def _wavetable(weights: np.ndarray) -> np.ndarray:
    """One cycle [TABLE_SIZE] float32 of a harmonic tone with the given harmonic amplitudes, peak 1."""
    phase = 2 * np.pi * np.arange(TABLE_SIZE) / TABLE_SIZE
    k = np.arange(1, len(weights) + 1)[:, None]
    table = (weights[:, None] * np.sin(k * phase[None, :])).sum(0)
    return (table / np.abs(table).max()).astype(np.float32)


DARK_TABLE = _wavetable(1.0 / np.arange(1, 4) ** 2.5)
BRIGHT_TABLE = _wavetable(1.0 / np.arange(1, 13) ** 0.9)


def midi_to_hz(midi: np.ndarray | float) -> np.ndarray:
    return 440.0 * 2.0 ** ((np.asarray(midi, dtype=np.float64) - 69.0) / 12.0)


def _table_index(
    freqs: np.ndarray, onsets: np.ndarray, n: int, sample_rate: int, phase0: float
) -> np.ndarray:
    """Wavetable read positions [n] int64 of a tone playing freqs[j] Hz from onsets[j] (fixed-point phase)."""
    steps = np.round(np.asarray(freqs) * (TABLE_SIZE * PHASE_ONE / sample_rate)).astype(np.int64)
    phase = np.cumsum(_hold(steps, onsets, n)) + int(phase0 * TABLE_SIZE * PHASE_ONE)
    return (phase >> PHASE_SHIFT) & (TABLE_SIZE - 1)


def _time_since(onsets: np.ndarray, n: int, sample_rate: int) -> np.ndarray:
    """Seconds since the latest onset (sample indices, sorted) at each of n (large before any)."""
    marker = np.full(n, -10 * sample_rate, dtype=np.int64)
    marker[onsets[onsets < n]] = onsets[onsets < n]
    return ((np.arange(n) - np.maximum.accumulate(marker)) / sample_rate).astype(np.float32)


def _hold(values: np.ndarray, onsets: np.ndarray, n: int, before: float | None = None) -> np.ndarray:
    """Piecewise-constant signal [n]: values[j] from onsets[j] until the next onset."""
    starts = np.concatenate([[0], onsets, [n]]).astype(np.int64)
    vals = np.concatenate([[values[0] if before is None else before], values])
    return np.repeat(vals, np.diff(np.clip(starts, 0, n)))


def _drum_kernels(sample_rate: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Short one-shot sounds (float32, peak ~1): kick (pitch-swept sine), snare (noise + tone), hat."""
    t = np.arange(int(0.35 * sample_rate)) / sample_rate
    kick_f = 48 + 110 * np.exp(-t / 0.03)
    kick = np.sin(2 * np.pi * np.cumsum(kick_f) / sample_rate) * np.exp(-t / 0.12)
    ts = t[: int(0.2 * sample_rate)]
    noise = rng.standard_normal(len(ts))
    snare = 0.6 * np.diff(noise, prepend=0.0) / 2 * np.exp(-ts / 0.06) + 0.5 * np.sin(
        2 * np.pi * 185 * ts
    ) * np.exp(-ts / 0.05)
    th = t[: int(0.08 * sample_rate)]
    hiss = rng.standard_normal(len(th))
    hat = np.diff(np.diff(hiss, prepend=0.0), prepend=0.0) / 4 * np.exp(-th / 0.018)
    return {k: v.astype(np.float32) for k, v in {"kick": kick, "snare": snare, "hat": hat}.items()}


def _place(kernel: np.ndarray, positions: np.ndarray, gains: np.ndarray, n: int) -> np.ndarray:
    """Sum of `kernel` copies starting at `positions` scaled by `gains` -> [n] float32."""
    out = np.zeros(n + len(kernel), dtype=np.float32)
    for pos, gain in zip(positions, gains, strict=True):
        out[pos : pos + len(kernel)] += gain * kernel
    return out[:n]


def render_music(
    arousal: np.ndarray,
    valence: np.ndarray,
    n_samples: int,
    sample_rate: int,
    channels: int,
    seed: int,
    cues: dict[str, np.ndarray] | None = None,
) -> np.ndarray:
    """Audio [n_samples, channels] float32 in (-1, 1) following the 2 Hz curves (values in [-1, 1]).

    `arousal`/`valence` [K] must cover the duration (K >= n_samples / sample_rate * 2); `seed` fixes the
    song's key, progression, melody and drum noise. cues: {name: [K] curve} for names in AROUSAL_CUES +
    VALENCE_CUES, each driving its own property (a missing name follows `arousal` / `valence`).
    """
    rng = np.random.default_rng(seed)
    n, sr = n_samples, sample_rate
    # Controls at block rate (HOP samples), held within a block.
    n_blocks = -(-n // HOP)
    centers = (np.arange(len(arousal)) + 0.5) / CURVE_RATE_HZ
    t_block = (np.arange(n_blocks) + 0.5) * HOP / sr
    cues = cues or {}
    cue = {
        name: np.interp(t_block, centers, cues[name] if name in cues else default)
        for names, default in ((AROUSAL_CUES, arousal), (VALENCE_CUES, valence))
        for name in names
    }
    a_block = cue["pulse"]
    v_block = cue["mode"]
    loud_block, bright_block, reg_block = cue["loudness"], cue["brightness"], cue["register"]
    span = CUE_REGISTER_SEMITONES if "register" in cues else REGISTER_SEMITONES

    # Beat clock: tempo follows arousal; grid events every 16th note at sample positions `pos`.
    bpm = 72.0 + 48.0 * (a_block + 1.0)
    beats = np.concatenate([[0.0], np.cumsum(bpm / 60.0 * HOP / sr)])  # at block boundaries
    grid = np.arange(int(beats[-1] * 4) + 1)
    pos = np.round(np.interp(grid / 4.0, beats, np.arange(n_blocks + 1) * HOP)).astype(np.int64)
    keep = pos < n
    grid, pos = grid[keep], pos[keep]
    a_ev, v_ev = a_block[pos // HOP], v_block[pos // HOP]
    bright_ev, reg_ev = bright_block[pos // HOP], reg_block[pos // HOP]

    # Drums.
    kit = _drum_kernels(sr, rng)
    kick_on = (grid % 4 == 0) & ((a_ev > -0.4) | (grid % 8 == 0))
    snare_on = (grid % 8 == 4) & (a_ev > -0.3)
    hat_on = ((grid % 2 == 0) & (a_ev > -0.6)) | ((grid % 2 == 1) & (a_ev > 0.3))
    hat_gain = 0.25 + 0.35 * (bright_ev + 1) / 2 * rng.uniform(0.8, 1.0, len(grid))
    drums = (
        _place(kit["kick"], pos[kick_on], np.full(kick_on.sum(), 0.9, np.float32), n)
        + _place(kit["snare"], pos[snare_on], np.full(snare_on.sum(), 0.6, np.float32), n)
        + _place(kit["hat"], pos[hat_on], hat_gain[hat_on].astype(np.float32), n)
    )

    # Harmony: one chord per bar (16 grid steps); quality and colour from valence at the bar start.
    key = int(rng.integers(0, 12))
    progression = PROGRESSIONS[int(rng.integers(len(PROGRESSIONS)))]
    bar_on = grid % 16 == 0
    bar_pos, bar_v, bars = pos[bar_on], v_ev[bar_on], grid[bar_on] // 16
    shift = np.round(span * reg_ev[bar_on])
    roots = 48 + key + np.array([progression[b % 4] for b in bars]) + shift
    major = bar_v > 0
    voices = [
        (roots - 12, np.ones_like(bar_v)),  # bass
        (roots + 12, np.ones_like(bar_v)),
        (roots + 12 + np.where(major, MAJOR_TRIAD[1], MINOR_TRIAD[1]), np.ones_like(bar_v)),
        (roots + 12 + 7, np.ones_like(bar_v)),
        (roots + 24 + 1, np.clip((-bar_v - 0.3) / 0.5, 0, 1)),  # minor second: dissonance
        (roots + 12 + 6, np.clip((-bar_v - 0.6) / 0.3, 0, 1)),  # tritone
        (roots + 12 + 9, np.clip((bar_v - 0.3) / 0.5, 0, 1)),  # major sixth: consonant colour
    ]
    bright = (np.repeat(bright_block.astype(np.float32), HOP)[:n] + 1) / 2
    pad_strike = np.where(a_ev > 0.2, grid % 4 == 0, grid % 8 == 0)
    pad_env = 0.35 + 0.65 * np.exp(-_time_since(pos[pad_strike], n, sr) / 0.6)
    dark = np.zeros(n, dtype=np.float32)
    bright_sum = np.zeros(n, dtype=np.float32)
    for midi, level in voices:
        if not level.any():
            continue
        idx = _table_index(midi_to_hz(midi), bar_pos, n, sr, rng.uniform())
        gain = 1.0 if (level == 1).all() else _hold(level.astype(np.float32), bar_pos, n, 0.0)
        dark += gain * DARK_TABLE.take(idx)
        bright_sum += gain * BRIGHT_TABLE.take(idx)
    pad = (dark + 0.7 * bright * (bright_sum - dark)) * pad_env

    # Melody on the 8th-note grid: a random walk over the current scale's degrees.
    eighths = grid % 2 == 0
    p_note = 0.25 + 0.6 * (a_ev + 1) / 2
    note_on = eighths & (rng.uniform(size=len(grid)) < p_note)
    note_on[0] = True  # the melody starts on the downbeat
    steps = rng.choice([-2, -1, -1, 1, 1, 2], size=note_on.sum())
    degree = np.clip(np.cumsum(steps) + 7, 0, 13)
    scale = np.where(v_ev[note_on][:, None] > 0, MAJOR_SCALE[None, :], MINOR_SCALE[None, :])
    register = np.round(span * reg_ev[note_on])
    melody_midi = (
        60 + key + register + np.take_along_axis(scale, (degree % 7)[:, None], 1)[:, 0] + 12 * (degree // 7)
    )
    note_pos = pos[note_on]
    idx = _table_index(midi_to_hz(melody_midi), note_pos, n, sr, rng.uniform())
    mel_env = np.exp(-_time_since(note_pos, n, sr) / (0.18 + 0.25 * (1 - bright)))
    tone = DARK_TABLE.take(idx)
    melody = mel_env * (tone + bright * (BRIGHT_TABLE.take(idx) - tone))

    # Mix: loudness follows arousal (-14 dB .. 0 dB), soft clipping keeps it in (-1, 1).
    loud = np.repeat(loud_block.astype(np.float32), HOP)[:n]
    level = (10.0 ** (7.0 * (loud - 1.0) / 20.0)).astype(np.float32)
    pan = float(rng.uniform(0.25, 0.75))
    if channels == 1:
        mono = 0.16 * pad + 0.28 * melody + 0.5 * drums
        return (np.tanh(level * mono) * 0.95)[:, None].astype(np.float32)
    if channels != 2:
        raise ValueError(f"channels must be 1 or 2, got {channels}")
    left = 0.16 * pad + 0.28 * (1 - pan) * 2 * melody + 0.5 * drums
    right = 0.16 * pad + 0.28 * pan * 2 * melody + 0.5 * drums
    return (np.tanh(level[:, None] * np.stack([left, right], axis=1)) * 0.95).astype(np.float32)

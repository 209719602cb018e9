"""Per-listener output calibration: per dimension an affine map of the model's curve, fitted in closed form.

The map (per dimension: arousal, valence) sends a predicted curve x [T] to

    f(x)_t = gain * x_{t - lag} + offset        (x clamped at the song's edges when shifted)

**One song.** On a support song (x: the model's prediction, y: the listener's curve) the least-squares map in
the centred form y ~ x + b + c (x - mean x) is

    b_s = mean(y - x),    c_s = sum((x - mean x)(y - x)) / sum((x - mean x)^2)    (None when x or y is flat),

and the song's noise-to-signal ratio v_s = var(residual) / var(x) says how unreliable c_s is: a prediction
that barely moves, or misses the listener's curve, gives a gain estimate that is mostly noise.

**Shrinkage (posterior mean).** Each song's estimate is the listener's own value plus song noise:
b_s = b + N(0, sigma_b^2), c_s = c + N(0, sigma_c^2 + phi v_s); the listener's (b, c) ~ N(0, tau^2) around
identity. Given n songs the posterior mean is the precision-weighted mean pulled toward 0,

    b = sum_s b_s / sigma_b^2 / (1 / tau_b^2 + n / sigma_b^2),
    c = sum_s c_s / w_s / (1 / tau_c^2 + sum_s 1 / w_s),     w_s = sigma_c^2 + phi v_s,

and gain = 1 + c, offset = b - c * mean_s(mean x_s). With lag > 0 every shift in [-lag, lag] is fitted and the
one with the smallest support error kept.
Without a prior (a hindsight ceiling's map) it is the least-squares line through all support songs pooled.

**Empirical Bayes** (`estimate_prior`) from held-out rater-songs (rater, x, y): per rater the single-song
estimates, then moment estimates over raters with >= 2 songs (n_r songs each):

    sigma_b^2 = sum_r sum_s (b_rs - mean_s b_rs)^2 / sum_r (n_r - 1)
    phi       = sum_r sum_s (c_rs - mean_s c_rs)^2 / sum_r (1 - 1/n_r) sum_s v_rs        (sigma_c^2 = 0)
    tau_b^2   = mean_r (mean_s b_rs)^2 - sigma_b^2 mean_r(1/n_r)
    tau_c^2   = mean_r (mean_s c_rs)^2 - phi mean_r(mean_s v_rs / n_r)                    (floored at 1e-6)

`dsaml-train` estimates it with x = the trained model's own predictions on songs or raters it did not train
on (`source="model"`), so the song noise includes the model's errors on unseen songs; without a validation
split, with x = each song's rater-averaged curve (`source="averaged"`). A fixed prior strength k (songs, from
the config; or a checkpoint written before the model-aware prior) is tau^2 = 1, sigma^2 = k, phi = 0: then
b = n / (n + k) mean_s b_s, and likewise c.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

DIMENSIONS = ("arousal", "valence")
FLAT = 1e-4  # variance below which a curve has no usable slope
TAU2_FLOOR = 1e-6
SOURCES = ("model", "averaged", "fixed")

Pair = tuple[float, float]  # (arousal, valence)
# the Pair fields of CalibrationPrior
_PAIRS = ("offset_tau2", "offset_noise", "gain_tau2", "gain_noise", "gain_scale")


@dataclass(frozen=True)
class CalibrationPrior:
    """The prior of the listener's map and the noise of one song's estimate (see the module docstring).

    Every pair is (arousal, valence); offsets and gains are in label units (a gain change c = gain - 1).

    Args:
        offset_tau2 (tuple[float, float]): tau_b^2, the variance of listeners' offsets around identity (0).
        offset_noise (tuple[float, float]): sigma_b^2, the variance of one song's offset estimate.
        gain_tau2 (tuple[float, float]): tau_c^2, the variance of listeners' gain changes around 0.
        gain_noise (tuple[float, float]): sigma_c^2, the variance of one song's gain estimate.
        gain_scale (tuple[float, float]): phi, the extra gain variance per unit of the song's
            noise-to-signal ratio v_s.
        source (str): "model" | "averaged" | "fixed": what the predictions it was estimated from were.
        raters (int): how many held-out raters it was estimated from (0 when fixed).
        songs (int): how many held-out rater-songs it was estimated from (0 when fixed).
    """

    offset_tau2: Pair
    offset_noise: Pair
    gain_tau2: Pair
    gain_noise: Pair
    gain_scale: Pair = (0.0, 0.0)
    source: str = "fixed"
    raters: int = 0
    songs: int = 0

    @classmethod
    def uniform(cls, strength: float) -> CalibrationPrior:
        """Identity counts as `strength` songs of evidence for every parameter (a number from the config)."""
        ones, k = (1.0, 1.0), (float(strength),) * 2
        return cls(ones, k, ones, k)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, list[float] | int | str]:
        return {
            **{name: list(getattr(self, name)) for name in _PAIRS},
            "source": self.source,
            "raters": self.raters,
            "songs": self.songs,
        }

    @classmethod
    def from_dict(cls, values: dict) -> CalibrationPrior:
        """Also reads the form checkpoints stored before the model-aware prior: strengths in songs, {"offset":
        [k_a, k_v], "gain": [k_a, k_v]} (tau^2 = 1, noise = k)."""
        counts = (int(values.get("raters", 0)), int(values.get("songs", 0)))
        if "offset_tau2" not in values:
            ones = (1.0, 1.0)
            offset, gain = (tuple(map(float, values[key])) for key in ("offset", "gain"))
            return cls(ones, offset, ones, gain, (0.0, 0.0), "averaged", *counts)  # type: ignore[arg-type]
        pairs = [tuple(map(float, values[name])) for name in _PAIRS]
        return cls(*pairs, str(values.get("source", "fixed")), *counts)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Calibration:
    """A fitted map per dimension: f(x)_t = gain * x_{t - lag} + offset (edges repeated when shifted).

    Args:
        gain (tuple[float, float]): (arousal, valence) gains.
        offset (tuple[float, float]): (arousal, valence) offsets, in label units.
        lag (tuple[int, int]): (arousal, valence) delays in segments (negative: advance).
    """

    gain: tuple[float, float] = (1.0, 1.0)
    offset: tuple[float, float] = (0.0, 0.0)
    lag: tuple[int, int] = (0, 0)

    def apply(self, arousal: Tensor, valence: Tensor) -> tuple[Tensor, Tensor]:
        """Map predicted curves to the listener's scale.

        Args:
            arousal (Tensor): predicted arousal [..., T].
            valence (Tensor): predicted valence [..., T].

        Returns:
            (arousal [..., T], valence [..., T]) after the map.
        """
        return tuple(  # type: ignore[return-value]
            self.gain[d] * shift(x, self.lag[d]) + self.offset[d] for d, x in enumerate((arousal, valence))
        )

    def to_dict(self) -> dict[str, list]:
        """Plain lists of floats/ints (stored in checkpoints, which load with weights_only=True)."""
        return {"gain": list(self.gain), "offset": list(self.offset), "lag": list(self.lag)}

    @classmethod
    def from_dict(cls, values: dict) -> Calibration:
        return cls(
            tuple(map(float, values["gain"])),
            tuple(map(float, values["offset"])),
            tuple(map(int, values.get("lag", (0, 0)))),
        )


def shift(x: Tensor, lag: int) -> Tensor:
    """x [..., T] delayed by `lag` segments (x_{t - lag}), edges repeated; negative lag advances."""
    if lag == 0:
        return x
    if lag > 0:
        return torch.cat([x[..., :1].expand(*x.shape[:-1], lag), x[..., :-lag]], dim=-1)
    return torch.cat([x[..., -lag:], x[..., -1:].expand(*x.shape[:-1], -lag)], dim=-1)


@dataclass(frozen=True)
class SongFit:
    """One song's least-squares map y ~ x + b + c (x - mean x): b, c (None when x or y is flat), the
    noise-to-signal ratio v = var(residual) / var(x) (0 when flat) and mean(x)."""

    b: float
    c: float | None
    v: float
    mean: float


def song_fit(x: np.ndarray, y: np.ndarray) -> SongFit:
    """The single-song map of prediction x [T] to curve y [T] (float64 arrays)."""
    residual = y - x
    xc = x - x.mean()
    x_var = float(xc @ xc) / len(x)
    b = float(residual.mean())
    if x_var <= FLAT or np.var(y) <= FLAT:  # no slope to see, or an untouched slider: no gain information
        return SongFit(b, None, 0.0, float(x.mean()))
    c = float(xc @ residual) / (x_var * len(x))
    return SongFit(b, c, float(np.var(residual - b - c * xc)) / x_var, float(x.mean()))


def posterior_mean(estimates: Sequence[float], variances: Sequence[float], tau2: float) -> float:
    """Mean of N(0, tau2) updated with independent estimates of given sampling variances (an estimate of
    variance 0 is exact: the mean of those)."""
    exact = [e for e, var in zip(estimates, variances, strict=True) if var <= 0]
    if exact:
        return float(np.mean(exact))
    weights = [1.0 / var for var in variances]
    return float(sum(w * e for w, e in zip(weights, estimates, strict=True)) / (1.0 / tau2 + sum(weights)))


def fit_calibration(
    predictions: Sequence[tuple[Tensor, Tensor]],
    targets: Sequence[tuple[Tensor, Tensor]],
    prior: CalibrationPrior | None,
    max_lag: int = 0,
) -> Calibration:
    """Fit the map on support songs, per dimension (see the module docstring).

    Args:
        predictions (Sequence[tuple[Tensor, Tensor]]): the network's (arousal [T_i], valence [T_i]) per song.
        targets (Sequence[tuple[Tensor, Tensor]]): the listener's (arousal [T_i], valence [T_i]) per song.
        prior (CalibrationPrior or None): the shrinkage toward identity (posterior mean); None: no shrinkage,
            the least-squares map over the songs pooled (a hindsight ceiling's map).
        max_lag (int): every lag in [-max_lag, max_lag] segments is fitted and the one with the smallest
            squared support error kept (0: no shift).

    Returns:
        Calibration: gain, offset and lag per dimension.

    Raises:
        ValueError: no songs, or not one target pair per predicted song.
    """
    if not predictions or len(predictions) != len(targets):
        raise ValueError("fit_calibration: need one target pair per predicted song (and at least one song)")
    gains, offsets, lags = [], [], []
    for d in range(len(DIMENSIONS)):
        ys = [t[d].double().cpu().numpy() for t in targets]
        best = None
        for lag in range(-max_lag, max_lag + 1):
            xs = [shift(p[d].double().cpu(), lag).numpy() for p in predictions]
            if prior is None:
                gain, offset = _pooled_least_squares(np.concatenate(xs), np.concatenate(ys))
            else:
                gain, offset = _posterior_map([song_fit(x, y) for x, y in zip(xs, ys, strict=True)], prior, d)
            error = sum(float(np.square(gain * x + offset - y).sum()) for x, y in zip(xs, ys, strict=True))
            if best is None or error < best[0] - 1e-12:
                best = (error, gain, offset, lag)
        gains.append(best[1])
        offsets.append(best[2])
        lags.append(best[3])
    return Calibration(tuple(gains), tuple(offsets), tuple(lags))


def _posterior_map(fits: list[SongFit], prior: CalibrationPrior, d: int) -> tuple[float, float]:
    """(gain, offset) of dimension d: the posterior means of b and c given the songs' fits."""
    b = posterior_mean([f.b for f in fits], [prior.offset_noise[d]] * len(fits), prior.offset_tau2[d])
    usable = [f for f in fits if f.c is not None]
    noise = [prior.gain_noise[d] + prior.gain_scale[d] * f.v for f in usable]
    c = posterior_mean([f.c for f in usable], noise, prior.gain_tau2[d]) if usable else 0.0
    return 1.0 + c, b - c * float(np.mean([f.mean for f in fits]))


def _pooled_least_squares(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(gain, offset) minimising sum (gain x + offset - y)^2; gain 1 when x is flat."""
    if np.var(x) <= FLAT:
        return 1.0, float(np.mean(y - x))
    gain, offset = np.polyfit(x, y, 1)
    return float(gain), float(offset)


def estimate_prior(
    curves: Iterable[tuple[str, tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]],
    source: str = "averaged",
) -> CalibrationPrior:
    """Empirical-Bayes prior of the calibration (moment estimates: see the module docstring).

    Args:
        curves (Iterable): per held-out rater-song, (rater, (predicted arousal [T], valence [T]), (rater's
            arousal [T], valence [T])) as arrays; the four curves are cut to their shortest length, and
            songs shorter than 2 segments are skipped.
        source (str): what the predictions are: "model" (a trained model's on unseen songs), "averaged"
            (each song's rater-averaged curve) or "fixed".

    Returns:
        CalibrationPrior: per dimension tau^2 (floored at 1e-6), sigma_b^2, phi (sigma_c^2 = 0), with
        `source` and the counts of raters and rater-songs used.

    Raises:
        ValueError: an unknown `source`, or no rater with two songs with usable curves.
    """
    if source not in SOURCES:
        raise ValueError(f"calibration prior source {source!r}: expected one of {', '.join(SOURCES)}")
    fits: dict[str, list[list[SongFit]]] = {}
    n_songs = 0
    for rater, reference, own in curves:
        length = min(len(reference[0]), len(reference[1]), len(own[0]), len(own[1]))
        if length < 2:
            continue
        fits.setdefault(str(rater), []).append(
            [
                song_fit(*(np.asarray(z[d][:length], dtype=np.float64) for z in (reference, own)))
                for d in (0, 1)
            ]
        )
        n_songs += 1
    values: dict[str, list[float]] = {name: [] for name in _PAIRS}
    for d in range(len(DIMENSIONS)):
        offsets = [np.array([song[d].b for song in songs]) for songs in fits.values()]
        sigma2 = _within_variance(offsets, [np.ones(len(b)) for b in offsets])
        tau2 = _between_variance(offsets, [np.full(len(b), sigma2) for b in offsets])
        usable = [[song[d] for song in songs if song[d].c is not None] for songs in fits.values()]
        usable = [songs for songs in usable if songs]
        changes = [np.array([f.c for f in songs]) for songs in usable]
        ratios = [np.array([f.v for f in songs]) for songs in usable]
        phi = _within_variance(changes, ratios) if changes else 0.0
        gain_tau2 = _between_variance(changes, [phi * v for v in ratios]) if changes else TAU2_FLOOR
        for name, value in zip(_PAIRS, (tau2, sigma2, gain_tau2, 0.0, phi), strict=True):
            values[name].append(value)
    return CalibrationPrior(
        *(tuple(values[name]) for name in _PAIRS),  # type: ignore[arg-type]
        source=source,
        raters=len(fits),
        songs=n_songs,
    )


def _within_variance(estimates: list[np.ndarray], ratios: list[np.ndarray]) -> float:
    """Moment estimate of the scale s in Var(estimate_s) = s * ratio_s, from the spread of each rater's
    estimates around their own mean (raters with >= 2 songs). ValueError when there are none."""
    within = [(e, r) for e, r in zip(estimates, ratios, strict=True) if len(e) >= 2]
    if not within:
        raise ValueError(
            "calibration prior: no held-out rater has two songs with usable curves; set adaptation.prior to "
            "a number (prior strength in songs)"
        )
    spread = sum(float(np.square(e - e.mean()).sum()) for e, _ in within)
    expected = sum(float(r.sum()) * (1.0 - 1.0 / len(r)) for _, r in within)
    return spread / expected if expected > 1e-12 else 0.0  # no residual: exact estimates


def _between_variance(estimates: list[np.ndarray], variances: list[np.ndarray]) -> float:
    """tau^2: the mean squared rater mean minus the part its sampling noise explains (floored)."""
    squares = np.mean([e.mean() ** 2 for e in estimates])
    noise = np.mean([v.sum() / len(v) ** 2 for v in variances])
    value = float(squares - noise)
    return value if math.isfinite(value) and value > TAU2_FLOOR else TAU2_FLOOR

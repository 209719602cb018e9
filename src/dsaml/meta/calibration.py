"""Per-listener output calibration: per dimension an affine map of the model's curve, fitted in closed form.

The map (per dimension: arousal, valence) sends a predicted curve x [T] to

    f(x)_t = gain * x_{t - lag} + offset        (x clamped at the song's edges when shifted)

Fit on the support songs (x: the model's predictions, y: the listener's curves, pooled over the n songs),
in the centred form f(x) = x + b + c (x - mean(x)), i.e. gain = 1 + c, offset = b - c mean(x):

    least squares      b_ls = mean(y - x),    c_ls = sum((x - mean x)(y - x)) / sum((x - mean x)^2)
    ridge to identity  b = n / (n + kappa_b) * b_ls,    c = n / (n + kappa_c) * c_ls

(the ridge penalties lambda_b = N kappa_b / n and lambda_c = S_xx kappa_c / n on b^2 and c^2, N segments,
S_xx = sum((x - mean x)^2), give exactly these). kappa is the prior strength in songs: identity counts as
kappa songs of evidence. With lag > 0 every shift in [-lag, lag] is fitted and the one with the smallest
support error kept.

Empirical Bayes (`estimate_prior`): from the training raters' curves, with the rater-averaged curve of each
song as the prediction x. For each rater r and song s, the single-song least-squares map theta_rs = (b_ls,
c_ls) per dimension. Model: theta_rs = theta_r + e_rs, e_rs ~ N(0, s^2) (how far one song's fit is from the
rater's own map), theta_r ~ N(0, tau^2) (raters around identity). Moment estimates:
    s^2   = sum_r sum_s (theta_rs - mean_s theta_rs)^2 / sum_r (n_r - 1)       (raters with >= 2 songs)
    tau^2 = mean_r (mean_s theta_rs)^2 - s^2 mean_r (1 / n_r)                  (floored at 1e-6)
    kappa = s^2 / tau^2   (then the ridge above is the posterior mean of theta_r given n songs).
The averaged curve includes the rater's own, which pulls the maps slightly toward identity; songs whose
averaged curve is flat (variance < 1e-4) give no gain estimate.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

DIMENSIONS = ("arousal", "valence")
FLAT = 1e-4  # variance below which a curve has no usable slope
TAU2_FLOOR = 1e-6
KAPPA_MAX = 1e6


@dataclass(frozen=True)
class CalibrationPrior:
    """Prior strength toward identity in songs, per dimension (arousal, valence), for the offset and the gain;
    `raters` / `songs`: how many training raters / rater-songs it was estimated from (0 when set by hand)."""

    offset: tuple[float, float]
    gain: tuple[float, float]
    raters: int = 0
    songs: int = 0

    @classmethod
    def uniform(cls, strength: float) -> CalibrationPrior:
        """The same strength for every parameter (a number given in the config)."""
        return cls((float(strength),) * 2, (float(strength),) * 2)

    def to_dict(self) -> dict[str, list[float] | int]:
        return {
            "offset": list(self.offset),
            "gain": list(self.gain),
            "raters": self.raters,
            "songs": self.songs,
        }

    @classmethod
    def from_dict(cls, values: dict) -> CalibrationPrior:
        return cls(
            tuple(map(float, values["offset"])),
            tuple(map(float, values["gain"])),
            int(values.get("raters", 0)),
            int(values.get("songs", 0)),
        )


@dataclass(frozen=True)
class Calibration:
    """A fitted map: gain, offset (floats) and lag (segments) per dimension (arousal, valence)."""

    gain: tuple[float, float] = (1.0, 1.0)
    offset: tuple[float, float] = (0.0, 0.0)
    lag: tuple[int, int] = (0, 0)

    def apply(self, arousal: Tensor, valence: Tensor) -> tuple[Tensor, Tensor]:
        """Map predicted curves ([..., T] each) to the listener's scale."""
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


def least_squares_map(x: np.ndarray, y: np.ndarray) -> tuple[float, float | None]:
    """(b_ls, c_ls) of the centred map y ~ x + b + c (x - mean x); c is None when x is flat."""
    residual = y - x
    xc = x - x.mean()
    sxx = float(xc @ xc)
    return float(residual.mean()), (float(xc @ residual) / sxx if sxx / len(x) > FLAT else None)


def fit_calibration(
    predictions: Sequence[tuple[Tensor, Tensor]],
    targets: Sequence[tuple[Tensor, Tensor]],
    prior: CalibrationPrior,
    max_lag: int = 0,
) -> Calibration:
    """Fit the map on support songs: predictions / targets = [(arousal [T_i], valence [T_i]) per song]."""
    if not predictions or len(predictions) != len(targets):
        raise ValueError("fit_calibration: need one target pair per predicted song (and at least one song)")
    n = len(predictions)
    gains, offsets, lags = [], [], []
    for d in range(len(DIMENSIONS)):
        y = torch.cat([t[d].double().cpu() for t in targets]).numpy()
        best = None
        for lag in range(-max_lag, max_lag + 1):
            x = torch.cat([shift(p[d].double().cpu(), lag) for p in predictions]).numpy()
            b_ls, c_ls = least_squares_map(x, y)
            b = n / (n + prior.offset[d]) * b_ls
            c = 0.0 if c_ls is None else n / (n + prior.gain[d]) * c_ls
            gain, offset = 1.0 + c, b - c * float(x.mean())
            error = float(np.square(gain * x + offset - y).sum())
            if best is None or error < best[0] - 1e-12:
                best = (error, gain, offset, lag)
        gains.append(best[1])
        offsets.append(best[2])
        lags.append(best[3])
    return Calibration(tuple(gains), tuple(offsets), tuple(lags))


def estimate_prior(
    curves: Iterable[tuple[str, tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]],
) -> CalibrationPrior:
    """Empirical-Bayes prior strengths (see the module docstring) from (rater, (averaged arousal, valence),
    (rater's arousal, valence)) per training rater-song. ValueError when no rater has two songs."""
    maps: dict[str, list[list[tuple[float, float | None]]]] = {}
    n_songs = 0
    for rater, reference, own in curves:
        per_dim = []
        for d in range(len(DIMENSIONS)):
            length = min(len(reference[d]), len(own[d]))
            if length < 2:
                break
            x = np.asarray(reference[d][:length], dtype=np.float64)
            per_dim.append(least_squares_map(x, np.asarray(own[d][:length], dtype=np.float64)))
        else:
            maps.setdefault(str(rater), []).append(per_dim)
            n_songs += 1
    strengths = {"offset": [], "gain": []}
    for d in range(len(DIMENSIONS)):
        for index, name in enumerate(("offset", "gain")):
            per_rater = [
                np.array([song[d][index] for song in songs if song[d][index] is not None])
                for songs in maps.values()
            ]
            per_rater = [values for values in per_rater if len(values)]
            within = [values for values in per_rater if len(values) >= 2]
            if not within:
                raise ValueError(
                    "calibration prior: no training rater has two songs with usable curves; set "
                    "adaptation.prior to a number (prior strength in songs)"
                )
            s2 = sum(float(np.square(v - v.mean()).sum()) for v in within) / sum(len(v) - 1 for v in within)
            tau2 = float(np.mean([v.mean() ** 2 for v in per_rater])) - s2 * float(
                np.mean([1.0 / len(v) for v in per_rater])
            )
            strengths[name].append(float(min(s2 / max(tau2, TAU2_FLOOR), KAPPA_MAX)))
    return CalibrationPrior(
        tuple(strengths["offset"]), tuple(strengths["gain"]), raters=len(maps), songs=n_songs
    )

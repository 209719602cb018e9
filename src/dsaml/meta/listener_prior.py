"""Listener-prior read-out (method "listener_prior"): a listener's read-out of what the network hears, fitted
on their few songs under a prior over listeners learned from the training raters.

A listener's curve y [T] (per dimension) is modelled as a linear read-out of per-segment features
x_t = [f_{t - l} for l in LAGS, smooth(B)_t, 1] (P = len(LAGS) + D + 1): the network's own prediction f
(delayed by each lag, so a gain, offset and lag of the map are special cases), the body's output B [T, D]
(moving average over SMOOTH segments) and a bias. The read-out weights w [P] of listeners are modelled as
drawn from N(mu, L L^T), the empirical mean and covariance of the training raters' read-outs
(`rater_readouts`: one least-squares fit per training rater on all of their training songs, shrunk by
FIT_STRENGTH; pooled by `RaterReadouts.prior`), so a new listener's weights can only move along the
directions in which the training listeners differ (e.g. which cue their arousal follows:
docs/listeners.md). From a few songs the posterior mean is (`fit_listener_readout`)

    w = mu + L (L^T X^T X L / s + I)^-1 L^T X^T (y - X mu) / s,     s = sigma2 * tau,

with sigma2 the training fits' residual variance and tau the residuals' integrated autocorrelation time in
segments (consecutive segments are not independent observations: s counts tau of them as one). Nothing is
chosen on the listener's songs, so one song needs no validation split. The adapted network is the original
with its head wrapped (`ListenerHead`), so every prediction path (sliding windows, stitching) applies.
LAGS, SMOOTH and FIT_STRENGTH were chosen on one seed of the lens corpus
(experiments/personalization/RESULTS.md, "Listener prior").
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from dsaml.meta.adaptation import HeadAdaptedNet
from dsaml.meta.calibration import shift
from dsaml.models.listener_prior import LAGS, SMOOTH, ListenerPrior
from dsaml.models.network import DSAMLNet

__all__ = [
    "FIT_STRENGTH",
    "LAGS",
    "SMOOTH",
    "ListenerHead",
    "ListenerPrior",
    "RaterReadouts",
    "adapt_listener_prior",
    "design",
    "fit_listener_readout",
    "rater_readouts",
    "with_listener_readout",
    "without_listener_readout",
]

FIT_STRENGTH = 1e-4  # ridge of each training rater's fit, per segment (the bias unpenalised)
MAX_LAG = 60  # segments: the residuals' autocorrelation is summed up to here (or its first non-positive)
MIN_RATERS = 3


def design(prediction: Tensor, encoded: Tensor, lags: Sequence[int], smooth: int) -> Tensor:
    """Per-segment features of one dimension.

    Args:
        prediction (Tensor): the network's prediction of the dimension [B, T].
        encoded (Tensor): the body's output [B, T, D].
        lags (Sequence[int]): delays of `prediction` included, in segments (edges repeated).
        smooth (int): moving-average length over segments of `encoded` (edges repeated; 1: none).

    Returns:
        Tensor: [B, T, len(lags) + D + 1] (lagged predictions, smoothed body features, 1), in `encoded`'s
        dtype.
    """
    lagged = torch.stack([shift(prediction, lag) for lag in lags], -1).to(encoded.dtype)
    body = encoded
    if smooth > 1:
        padded = F.pad(encoded.transpose(1, 2), (smooth // 2, (smooth - 1) // 2), mode="replicate")
        body = F.avg_pool1d(padded, smooth, stride=1).transpose(1, 2)
    return torch.cat([lagged, body, torch.ones_like(encoded[..., :1])], -1)


class ListenerHead(nn.Module):
    """A head that reads a listener's curves out of the original head's prediction and the body features:
    encoded [B, T, D] -> [B, T, 2] (`design` @ weight per dimension).

    Args:
        head (nn.Module): the network's head ([B, T, D] -> [B, T, 2]), used as it is.
        weight (Tensor): the read-out [2, P].
        lags (Sequence[int]), smooth (int): as `design`.
    """

    def __init__(self, head: nn.Module, weight: Tensor, lags: Sequence[int], smooth: int) -> None:
        super().__init__()
        self.head = head
        self.register_buffer("weight", weight.detach().clone())
        self.lags, self.smooth = tuple(lags), smooth

    def to_dict(self) -> dict:
        """The read-out (weight [2, P] as lists, lags, smooth): what a personalised checkpoint stores."""
        return {"weight": self.weight.tolist(), "lags": list(self.lags), "smooth": self.smooth}

    def forward(self, encoded: Tensor) -> Tensor:
        prediction = self.head(encoded)
        columns = [
            design(prediction[..., i], encoded, self.lags, self.smooth) @ self.weight[i].to(encoded.dtype)
            for i in range(2)
        ]
        return torch.stack(columns, -1)


def with_listener_readout(net: DSAMLNet, readout: Mapping) -> HeadAdaptedNet:
    """`net` with its head wrapped in a stored read-out (`ListenerHead.to_dict`), eval mode; ValueError when
    the read-out does not fit the network (weight [2, len(lags) + D + 1], lags with 0, smooth >= 1)."""
    weight = torch.tensor(readout["weight"], dtype=torch.float32)
    lags, smooth = tuple(int(lag) for lag in readout["lags"]), int(readout["smooth"])
    size = len(lags) + net.cfg.hidden_size + 1
    if weight.shape != (2, size) or 0 not in lags or smooth < 1:
        raise ValueError(
            f"listener read-out: expected weight [2, {size}], lags with 0 and smooth >= 1 (got weight "
            f"{list(weight.shape)}, lags {list(lags)}, smooth {smooth})"
        )
    return HeadAdaptedNet(net, ListenerHead(net.head, weight, lags, smooth).eval())


def without_listener_readout(net: nn.Module) -> tuple[nn.Module, dict | None]:
    """(the network with its own head, the read-out's `to_dict`) of a `with_listener_readout` /
    `adapt_listener_prior` network; (net, None) for any other."""
    head = getattr(net, "head", None)
    if not isinstance(head, ListenerHead):
        return net, None
    return HeadAdaptedNet(net, head.head), head.to_dict()


def _features(net: DSAMLNet, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
    """(encoded [B, T, D], prediction [B, T, 2]) of one batch of windows, no gradient, float64."""
    with torch.no_grad():
        encoded = net.body(batch["logmel"], batch.get("global"), return_diagonal=False)["encoded"]
        return encoded.double(), net.head(encoded).double()


def _rows(encoded: Tensor, prediction: Tensor, dim: int, lags: Sequence[int], smooth: int) -> Tensor:
    x = design(prediction[..., dim], encoded, lags, smooth)
    return x.reshape(-1, x.shape[-1])


def fit_listener_readout(prior: ListenerPrior, groups: Sequence[tuple[Tensor, Tensor]], dim: int) -> Tensor:
    """The posterior mean read-out of one dimension (module docstring).

    Args:
        prior (ListenerPrior): the prior.
        groups (Sequence[tuple[Tensor, Tensor]]): per support song (features [N, P], targets [N]) float64.
        dim (int): 0 arousal, 1 valence.

    Returns:
        Tensor: w [P] float64.
    """
    x = torch.cat([g[0] for g in groups])
    y = torch.cat([g[1] for g in groups])
    mean, factor, noise = prior.mean[dim], prior.factor[dim], prior.noise[dim]
    xl = x @ factor
    system = xl.T @ xl / noise + torch.eye(factor.shape[1], dtype=x.dtype)
    return mean + factor @ torch.linalg.solve(system, xl.T @ (y - x @ mean) / noise)


def adapt_listener_prior(
    net: DSAMLNet, batches: Sequence[Mapping[str, Tensor]], prior: ListenerPrior
) -> HeadAdaptedNet:
    """The network with its head wrapped in the listener's read-out fitted on the support batches (one per
    song: windows [n, W, ...] with ``arousal`` / ``valence`` [n, W]); eval mode. The network is never
    modified."""
    was_training = net.training
    net.eval()
    try:
        features = [(*_features(net, batch), batch) for batch in batches]
    finally:
        net.train(was_training)
    weights = []
    for dim, key in enumerate(("arousal", "valence")):
        groups = [
            (_rows(enc, pred, dim, prior.lags, prior.smooth), batch[key].reshape(-1).double().to(enc.device))
            for enc, pred, batch in features
        ]
        weights.append(fit_listener_readout(prior, groups, dim))
    head = ListenerHead(copy.deepcopy(net.head), torch.stack(weights).float(), prior.lags, prior.smooth)
    return HeadAdaptedNet(net, head.eval())


def _autocorrelation_time(residual: Tensor) -> float:
    """1 + 2 * the sum of the residual's autocorrelations at lags 1.. up to the first non-positive one
    (or MAX_LAG), in segments."""
    r = residual - residual.mean()
    variance = float((r * r).mean())
    if variance == 0:
        return 1.0
    total = 0.0
    for lag in range(1, min(MAX_LAG, len(r) - 1)):
        rho = float((r[:-lag] * r[lag:]).mean()) / variance
        if rho <= 0:
            break
        total += rho
    return 1.0 + 2.0 * total


@dataclass
class RaterReadouts:
    """Each training rater's own read-out, per dimension (arousal, valence): {rater: w [P]}, the residual
    variance {rater: sigma2} and the residuals' autocorrelation time {rater: tau, segments}; `prior` pools
    them."""

    weights: list[dict[str, Tensor]]
    variances: list[dict[str, float]]
    times: list[dict[str, float]]
    lags: tuple[int, ...] = LAGS
    smooth: int = SMOOTH

    def prior(self, without: Collection[str] = ()) -> ListenerPrior:
        """The listener prior of every rater but those in `without`: mean and covariance factor of their
        read-outs, noise = mean sigma2 * mean tau; ValueError with fewer than MIN_RATERS raters."""
        raters = [r for r in self.weights[0] if r not in without]
        if len(raters) < MIN_RATERS:
            raise ValueError(f"the listener prior needs {MIN_RATERS}+ training raters, got {len(raters)}")
        mean, factor, noise = [], [], []
        for dim in (0, 1):
            stacked = torch.stack([self.weights[dim][r] for r in raters])
            mu = stacked.mean(0)
            mean.append(mu.cpu())
            factor.append(((stacked - mu).T / (len(stacked) - 1) ** 0.5).cpu())
            variance = sum(self.variances[dim][r] for r in raters) / len(raters)
            noise.append(variance * sum(self.times[dim][r] for r in raters) / len(raters))
        return ListenerPrior(mean, factor, noise, self.lags, self.smooth, len(raters))


def rater_readouts(
    net: DSAMLNet,
    songs: Iterable[tuple[str, Hashable, Mapping[str, Tensor]]],
    lags: Sequence[int] = LAGS,
    smooth: int = SMOOTH,
    fit_strength: float = FIT_STRENGTH,
) -> RaterReadouts:
    """Each training rater's read-out, fitted on all of their songs.

    Args:
        net (DSAMLNet): the trained network (put in eval mode for the features, then restored).
        songs (Iterable): (rater, song key, windows batch of that rater's curves: ``logmel`` [n, W, 51, 128],
            ``global``, ``arousal`` / ``valence`` [n, W]) for every training (rater, song); the features are
            computed once per song key (batches with the same key must hold the same audio).
        lags, smooth: the features (`design`, computed once per song key and dimension); lags include 0.
        fit_strength (float): each rater's ridge, per segment, toward the identity read-out (f at lag 0).

    Returns:
        RaterReadouts: per rater and dimension the least-squares read-out, residual variance and
        autocorrelation time.

    Raises:
        ValueError: no lag 0.
    """
    if 0 not in lags:
        raise ValueError(f"lags={list(lags)}: the listener prior's lags must include 0")
    rows: dict[Hashable, tuple[Tensor, Tensor]] = {}  # song key -> design rows [N, P] per dimension
    per_rater: dict[str, list[tuple[Hashable, Mapping[str, Tensor]]]] = {}
    was_training = net.training
    net.eval()
    try:
        for rater, song, batch in songs:
            if song not in rows:
                features = _features(net, batch)
                rows[song] = (_rows(*features, 0, lags, smooth), _rows(*features, 1, lags, smooth))
            per_rater.setdefault(rater, []).append((song, batch))
    finally:
        net.train(was_training)
    readouts = RaterReadouts([{}, {}], [{}, {}], [{}, {}], tuple(lags), smooth)
    for dim, key in enumerate(("arousal", "valence")):
        for rater, items in per_rater.items():
            x = torch.cat([rows[song][dim] for song, _ in items])
            y = torch.cat([batch[key].reshape(-1).double() for _, batch in items]).to(x.device)
            identity = torch.zeros(x.shape[1], dtype=x.dtype, device=x.device)
            identity[list(lags).index(0)] = 1.0  # the prediction itself, no lag
            ridge = fit_strength * len(x) * torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
            ridge[-1, -1] = 0.0
            w = identity + torch.linalg.solve(x.T @ x + ridge, x.T @ (y - x @ identity))
            residual = y - x @ w
            readouts.weights[dim][rater] = w
            readouts.variances[dim][rater] = float((residual**2).mean())
            readouts.times[dim][rater] = _autocorrelation_time(residual)
    return readouts

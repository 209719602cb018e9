"""The listener-prior read-out (method "listener_prior"): the posterior mean against the textbook Gaussian
formula, the prior's estimate against the planted read-outs of simulated training raters, recovery of a new
listener who reads out another direction of the listener space (which no output map can), the identity
read-out reproducing the network, the stored read-out round trip and the checks on malformed ones."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from app_fixtures import random_song, tiny_net
from dsaml.config import ConfigError
from dsaml.data.batch import windows_batch
from dsaml.meta import AdaptationConfig, CalibrationPrior, SlidingWindows, personalize_net
from dsaml.meta.listener_prior import (
    LAGS,
    ListenerHead,
    ListenerPrior,
    _autocorrelation_time,
    design,
    fit_listener_readout,
    rater_readouts,
    with_listener_readout,
    without_listener_readout,
)
from dsaml.meta.selection import select

WINDOW = 30
# the tiny random network's curves barely move: adapt on them anyway (`moving` would skip them as flat)
CONFIG = AdaptationConfig(method="listener_prior", skip_flat=False)


def _song(seed: int, n: int = WINDOW) -> dict:
    return random_song(seed, n)


def _features(net, batch) -> list[torch.Tensor]:
    """Per dimension the design rows [N, P] of a windows batch (eval mode, float64), computed directly."""
    with torch.no_grad():
        encoded = net.body(batch["logmel"], None, return_diagonal=False)["encoded"].double()
        prediction = net.head(encoded.float()).double()
    return [
        design(prediction[..., d], encoded, LAGS, 5).reshape(-1, len(LAGS) + encoded.shape[-1] + 1)
        for d in (0, 1)
    ]


def _listener(net, song: dict, weights: torch.Tensor) -> dict:
    """`song` with curves read out of its design rows with `weights` [2, P] (one window: T <= WINDOW)."""
    rows = _features(net, windows_batch(song, WINDOW))
    return {**song, "arousal": (rows[0] @ weights[0]).float(), "valence": (rows[1] @ weights[1]).float()}


def test_posterior_mean_is_the_gaussian_posterior():
    """w = mu + L (L'X'XL/s + I)^-1 L'X'(y - X mu)/s equals (X'X/s + S^-1)^-1 (X'y/s + S^-1 mu), S = LL'."""
    rng = np.random.default_rng(0)
    p, n = 5, 40
    x, y = rng.normal(size=(n, p)), rng.normal(size=n)
    mean, factor = rng.normal(size=p), rng.normal(size=(p, p))
    noise = 0.7
    prior = ListenerPrior([torch.from_numpy(mean)] * 2, [torch.from_numpy(factor)] * 2, [noise] * 2, (0,), 1)
    groups = [
        (torch.from_numpy(x[:25]), torch.from_numpy(y[:25])),
        (torch.from_numpy(x[25:]), torch.from_numpy(y[25:])),
    ]
    w = fit_listener_readout(prior, groups, dim=1)
    precision = np.linalg.inv(factor @ factor.T)
    expected = np.linalg.solve(x.T @ x / noise + precision, x.T @ y / noise + precision @ mean)
    np.testing.assert_allclose(w.numpy(), expected, rtol=1e-8, atol=1e-10)


def test_autocorrelation_time_of_white_noise_and_of_a_moving_average():
    """About 1 for white noise; 1 + 2 (2/3 + 1/3) = 3 for a 3-segment moving average."""
    gen = torch.Generator().manual_seed(0)
    white = torch.randn(20000, generator=gen, dtype=torch.float64)
    assert _autocorrelation_time(white) == pytest.approx(1.0, abs=0.1)
    smooth = (white[:-2] + white[1:-1] + white[2:]) / 3
    assert _autocorrelation_time(smooth) == pytest.approx(3.0, abs=0.2)


def test_estimate_recovers_the_training_raters_readouts():
    """Training raters whose curves are exact read-outs w_r of the design features (plus tiny noise): on the
    songs' features X, the prior's mean reads out what the mean of the w_r does (X mu), and its covariance
    what their sample covariance does (X L L' X'); the features of a random tiny network are nearly
    collinear, so the weights themselves are compared through X."""
    net = tiny_net().eval()
    songs = {f"s{i}": _song(i) for i in range(6)}
    size = len(LAGS) + net.cfg.hidden_size + 1
    gen = torch.Generator().manual_seed(3)
    direction = torch.randn(2, size, generator=gen, dtype=torch.float64) * 0.05
    identity = torch.zeros(2, size, dtype=torch.float64)
    identity[:, 0] = 1.0
    planted = {f"r{k}": identity + (k - 2) * direction for k in range(5)}
    rows = []
    for rater, weights in planted.items():
        for name, song in songs.items():
            curves = _listener(net, song, weights)
            noise = 1e-5 * torch.randn(2, len(song["arousal"]), generator=gen)
            curves = {
                **curves,
                "arousal": curves["arousal"] + noise[0],
                "valence": curves["valence"] + noise[1],
            }
            rows.append((rater, name, windows_batch(curves, WINDOW)))
    prior = rater_readouts(net, rows, fit_strength=1e-9).prior()
    stacked = torch.stack(list(planted.values()))  # [raters, 2, P]
    assert prior.raters == 5
    for d in (0, 1):
        x = torch.cat([_features(net, windows_batch(song, WINDOW))[d] for song in songs.values()])
        torch.testing.assert_close(x @ prior.mean[d], x @ stacked[:, d].mean(0), atol=2e-3, rtol=0)
        spread = x @ prior.factor[d]
        expected = x @ torch.cov(stacked[:, d].T) @ x.T
        torch.testing.assert_close(
            spread @ spread.T, expected, atol=2e-3 * float(expected.abs().max()), rtol=0
        )
        assert prior.noise[d] > 0


def test_adapts_a_listener_along_the_listener_space():
    """A new listener reads out mu + 3 u (u the prior's one direction): from one song the adapted network
    predicts another song of theirs far better than the network, close to exactly; the network is
    unchanged, and a prior without spread reproduces the network."""
    net = tiny_net().eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    size = len(LAGS) + net.cfg.hidden_size + 1
    gen = torch.Generator().manual_seed(5)
    u = torch.randn(size, 1, generator=gen, dtype=torch.float64) * 0.05
    mean = torch.zeros(size, dtype=torch.float64)
    mean[0] = 1.0
    net.listener_prior = ListenerPrior([mean, mean], [u, u], [1e-4, 1e-4])
    target = (mean + 3 * u[:, 0]).expand(2, size)
    support, held = _listener(net, _song(11), target), _listener(net, _song(12), target)
    predictor = SlidingWindows(window=WINDOW)
    adapted = personalize_net(net, [support], CONFIG, predictor)
    arousal, valence = adapted.predict(predictor, held)
    plain_a, _ = predictor(net, held)
    error = float((arousal - held["arousal"]).abs().max())
    assert error < 1e-3 < float((plain_a - held["arousal"]).abs().max())
    assert float((valence - held["valence"]).abs().max()) < 1e-3
    for key, value in net.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    net.listener_prior = ListenerPrior([mean, mean], [u * 0, u * 0], [1e-4, 1e-4])
    same = personalize_net(net, [support], CONFIG, predictor)
    torch.testing.assert_close(same.predict(predictor, held)[0], plain_a, rtol=0, atol=1e-5)


def test_auto_keeps_the_listener_prior_it_starts_from():
    """method=auto with the defaults (candidates calibrate and listener_prior, auto_start listener_prior) on
    two songs of a listener along the prior's direction: leave-one-song-out keeps listener_prior, the
    refitted model predicts a third song of theirs, and the validation says where auto started."""
    net = tiny_net().eval()
    size = len(LAGS) + net.cfg.hidden_size + 1
    u = torch.randn(size, 1, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 0.05
    mean = torch.zeros(size, dtype=torch.float64)
    mean[0] = 1.0
    net.listener_prior = ListenerPrior([mean, mean], [u, u], [1e-4, 1e-4])
    target = (mean + 3 * u[:, 0]).expand(2, size)
    songs = [_listener(net, _song(seed), target) for seed in (11, 12, 13)]
    predictor = SlidingWindows(window=WINDOW)
    config = replace(CONFIG, method="auto").resolve({"name": "dmer"})  # a DMER task: no inner loop
    prior = CalibrationPrior.uniform(0.5)
    selection = select(net, songs[:2], config, predictor, prior)
    assert {c["method"] for c in selection.candidates} == {"none", "calibrate", "listener_prior"}
    assert selection.chosen == {"method": "listener_prior", "steps": 0}
    assert (
        selection.validation == "leave-one-song-out; kept listener_prior unless a candidate validated better"
    )
    arousal, _ = selection.personalized.predict(predictor, songs[2])
    assert float((arousal - songs[2]["arousal"]).abs().max()) < 1e-3
    # a listener who hears what the network predicts: listener_prior (w = mu, the network) ties none, and
    # the start is kept either way (a margin above float rounding)
    plain = [
        {**song, **dict(zip(("arousal", "valence"), predictor(net, song), strict=True))} for song in songs
    ]
    for start in ("listener_prior", "none"):
        tie = select(net, plain[:2], replace(config, auto_start=start, margin=1e-6), predictor, prior)
        assert tie.chosen["method"] == start, tie.candidates


def test_without_a_prior_the_method_is_a_config_error():
    net = tiny_net().eval()
    with pytest.raises(ConfigError, match="holds no listener prior"):
        personalize_net(net, [_song(1)], CONFIG, SlidingWindows(window=WINDOW))


def test_stored_readout_round_trip_and_checks():
    """A read-out taken off an adapted network and put back on the plain one predicts the same; a read-out
    or prior of the wrong size is a ValueError naming the expected shape."""
    net = tiny_net().eval()
    size = len(LAGS) + net.cfg.hidden_size + 1
    weight = torch.randn(2, size, generator=torch.Generator().manual_seed(2)) * 0.05
    adapted = with_listener_readout(net, {"weight": weight.tolist(), "lags": list(LAGS), "smooth": 5})
    plain, readout = without_listener_readout(adapted)
    assert isinstance(adapted.head, ListenerHead) and not isinstance(plain.head, ListenerHead)
    assert plain.state_dict().keys() == net.state_dict().keys()
    again = with_listener_readout(net, readout)
    predictor = SlidingWindows(window=WINDOW)
    torch.testing.assert_close(predictor(again, _song(4)), predictor(adapted, _song(4)), rtol=0, atol=0)
    with pytest.raises(ValueError, match=rf"expected weight \[2, {size}\]"):
        with_listener_readout(net, {"weight": weight[:, 1:].tolist(), "lags": list(LAGS), "smooth": 5})
    prior = ListenerPrior([torch.zeros(size)] * 2, [torch.zeros(size, 3)] * 2, [0.1, 0.1])
    assert ListenerPrior.from_dict(prior.to_dict(), net.cfg.hidden_size).factor[1].shape == (size, 3)
    with pytest.raises(ValueError, match="expected 2 dimensions"):
        ListenerPrior.from_dict(prior.to_dict(), net.cfg.hidden_size + 1)

"""Adaptation methods: the calibration map (closed form, empirical-Bayes prior, lag), the head-only inner
loop (ANIL) for adaptation and meta-training, the adaptation config, and `auto`'s safe selection."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from app_fixtures import tiny_net
from dsaml.config import ConfigError
from dsaml.meta import (
    METHODS,
    AdaptationConfig,
    Calibration,
    CalibrationPrior,
    HeadAdaptedNet,
    Personalized,
    SlidingWindows,
    adapt,
    adapt_head,
    batch_loss,
    estimate_prior,
    fit_calibration,
    maml_wrap,
    meta_backward,
    moving,
    personalize_net,
    select,
)
from dsaml.meta.calibration import shift
from dsaml.meta.selection import choose, folds


def _song(seed: int, n: int = 40) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {
        "logmel": torch.randn(n, 51, 128, generator=gen) - 5.0,
        "arousal": (torch.rand(n, generator=gen) - 0.5) * 0.8,
        "valence": (torch.rand(n, generator=gen) - 0.5) * 0.8,
        "global": None,
    }


def test_predict_with_a_stride_runs_the_windows_it_names():
    """SlidingWindows(window, stitch="last", stride): windows start at 0, 7, 14 and the last ends at the
    song's end (40 segments, window 20: 0, 7, 14, 20); "last" takes the first window, then from each later
    window the positions it adds (20-26, 27-33, 34-39), computed here
    window by window with the network's plain forward (no learned global context, which a whole song gets per
    segment)."""
    net = tiny_net(global_context="none").eval()
    song = _song(3, n=40)
    arousal, valence = SlidingWindows(window=20, stitch="last", stride=7)(net, song)
    expected = torch.empty(2, 40)
    with torch.no_grad():
        for start, first_new in ((0, 0), (7, 20), (14, 27), (20, 34)):
            out = net(song["logmel"][None, start : start + 20], None)
            new = slice(first_new - start, 20)
            expected[0, first_new : start + 20] = out["arousal"][0, new]
            expected[1, first_new : start + 20] = out["valence"][0, new]
    torch.testing.assert_close(torch.stack([arousal, valence]), expected, atol=1e-5, rtol=1e-4)


def test_eval_stride_and_weighted_stitch_are_task_settings():
    from dsaml.training.config import TaskConfig

    task = TaskConfig.from_dict({"eval_stride": 10, "stitch": "weighted"})
    assert (task.eval_stride, task.stitch) == (10, "weighted")
    with pytest.raises(ConfigError, match="task.eval_stride=0"):
        TaskConfig.from_dict({"eval_stride": 0})


def test_old_checkpoint_task_dicts_migrate_and_each_task_takes_only_its_keys():
    """A checkpoint written before the task config was split holds every key for both tasks, with `tasks` /
    `val_tasks` for episodes / val_episodes, and the test adaptation: `from_dict` renames those, keeps a DMER
    task's own keys and leaves the adaptation to `stored_adaptation`; a current config naming a PDMER key
    for DMER is refused."""
    from dsaml.training.config import PDMERConfig, TaskConfig, stored_adaptation

    old = {  # an old checkpoint's hyper_parameters["task"] (the keys of the flat 26-field config)
        "name": "pdmer", "lr": 3e-4, "weight_decay": 0.0, "batch_size": 15, "shots": 2, "queries": 5,
        "cross_support": "song", "episodes": 16, "inner_steps": 5, "inner_lr": 0.02, "first_order": True,
        "steps_per_epoch": 10, "val_fraction": 0.1, "val_episodes": 16, "tasks": 3, "val_tasks": None,
        "eval_inner_steps": None, "support_segments": 20, "monitor": "val/average", "monitor_mode": "max",
        "test_protocols": ["pdmer_within_song"], "stitch": "mean", "eval_stride": 1, "eval_batch_size": 32,
        "inner_loop": "full", "meta_engine": "sequential", "meta_chunk": None,
        "adaptation": {"method": "calibrate"},
    }  # fmt: skip
    pdmer = TaskConfig.from_dict(old)
    assert isinstance(pdmer, PDMERConfig)
    assert (pdmer.episodes, pdmer.val_episodes, pdmer.shots, pdmer.inner_lr) == (3, 16, 2, 0.02)
    assert "tasks" not in pdmer.to_dict() and "adaptation" not in pdmer.to_dict()
    assert stored_adaptation({"task": old}) == {"method": "calibrate"}  # now hyper_parameters["adaptation"]
    assert stored_adaptation({"task": old, "adaptation": {"method": "none"}}) == {"method": "none"}
    dmer = TaskConfig.from_dict({**old, "name": "dmer", "test_protocols": ["dmer"]})
    assert type(dmer) is TaskConfig and (dmer.lr, dmer.support_segments) == (3e-4, 20)
    assert set(dmer.to_dict()) == set(old) - {
        "shots", "queries", "cross_support", "episodes", "inner_steps", "inner_lr", "first_order",
        "steps_per_epoch", "val_episodes", "tasks", "val_tasks", "eval_inner_steps", "inner_loop",
        "meta_engine", "meta_chunk", "adaptation",
    }  # fmt: skip
    assert TaskConfig.from_dict(dmer.to_dict()) == dmer and TaskConfig.from_dict(pdmer.to_dict()) == pdmer
    with pytest.raises(ConfigError, match=r"task: unknown key\(s\) \['meta_engine'\]"):
        TaskConfig.from_dict({"name": "dmer", "meta_engine": "batched"})


def test_calibration_is_the_closed_form_ridge_toward_identity():
    x = torch.tensor([0.0, 0.1, 0.4, 0.2, -0.3, 0.1])
    y = 2.0 * x + 0.3
    exact = fit_calibration([(x, x)], [(y, y)], CalibrationPrior.uniform(0.0))
    assert exact.gain == pytest.approx((2.0, 2.0)) and exact.offset == pytest.approx((0.3, 0.3))
    # one song, prior strength 1 song: b = b_ls / 2, c = c_ls / 2 in f(x) = x + b + c (x - mean x)
    b_ls, c_ls = float((y - x).mean()), 1.0
    half = fit_calibration([(x, x)], [(y, y)], CalibrationPrior.uniform(1.0))
    assert half.gain[0] == pytest.approx(1.0 + c_ls / 2)
    assert half.offset[0] == pytest.approx(b_ls / 2 - c_ls / 2 * float(x.mean()))
    # two songs of evidence against one song of prior: 2/3 of the way
    two = fit_calibration([(x, x), (x, x)], [(y, y), (y, y)], CalibrationPrior.uniform(1.0))
    assert two.gain[0] == pytest.approx(1.0 + 2 / 3)
    mapped, _ = exact.apply(x, x)
    torch.testing.assert_close(mapped, y)


def test_calibration_finds_a_lag_and_round_trips_as_plain_values():
    t = torch.arange(60.0)
    x = torch.sin(t / 5)
    y = shift(x, 2) * 0.5
    fitted = fit_calibration([(x, x)], [(y, -y)], CalibrationPrior.uniform(0.0), max_lag=3)
    assert fitted.lag == (2, 2)
    assert fitted.gain == pytest.approx((0.5, -0.5), abs=1e-6)
    assert shift(torch.tensor([1.0, 2.0, 3.0]), 1).tolist() == [1.0, 1.0, 2.0]
    assert shift(torch.tensor([1.0, 2.0, 3.0]), -1).tolist() == [2.0, 3.0, 3.0]
    values = fitted.to_dict()
    assert all(type(v) in (float, int) for vs in values.values() for v in vs)
    assert Calibration.from_dict(values) == fitted


def _walk(seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.cumsum(torch.randn(n, generator=gen), 0) / 10 for _ in range(2))


def test_calibration_without_prior_is_pooled_least_squares_with_its_lag():
    songs = [_walk(1, 50), _walk(2, 70)]
    truth = ((1.5, 0.2, 2), (-0.8, -0.1, -1))  # per dimension: gain, offset, lag
    targets = [tuple(g * shift(x[d], lag) + o for d, (g, o, lag) in enumerate(truth)) for x in songs]
    found = fit_calibration(songs, targets, None, max_lag=3)
    assert found.lag == (2, -1)
    assert found.gain == pytest.approx((1.5, -0.8), abs=1e-6)
    assert found.offset == pytest.approx((0.2, -0.1), abs=1e-6)
    # two songs with different maps: the pooled fit is numpy's line through all points, not the mean of
    # the songs' own maps (the prior's precision-weighted form without shrinkage)
    a, b = _walk(3, 40), _walk(4, 120)
    ys = [(a[0] + 0.5, a[1]), (2.0 * b[0], b[1])]
    pooled = fit_calibration([a, b], ys, None)
    x, y = (torch.cat([a[0], b[0]]).double().numpy(), torch.cat([ys[0][0], ys[1][0]]).double().numpy())
    assert (pooled.gain[0], pooled.offset[0]) == pytest.approx(tuple(np.polyfit(x, y, 1)), abs=1e-9)
    averaged = fit_calibration([a, b], ys, CalibrationPrior.uniform(0))
    error = lambda m: float(np.square(m.gain[0] * x + m.offset[0] - y).sum())  # noqa: E731
    assert error(pooled) < error(averaged) - 1e-3


def test_empirical_bayes_prior_from_the_spread_of_rater_maps():
    """Two raters, two songs each, offsets only (y = x + offset): per-song offsets A 0.1, 0.3; B -0.2, -0.4.
    sigma^2 = 4 * 0.1^2 / 2 = 0.02; tau^2 = mean(0.2^2, 0.3^2) - 0.02 * mean(1/2, 1/2) = 0.055. Gains are
    exactly 1 with no residual (c = 0, v = 0): phi = 0 and tau_c^2 at its floor."""
    x = np.sin(np.arange(30) / 4.0)
    rows = [
        (rater, (x, x), (x + offset, x + offset))
        for rater, offset in (("A", 0.1), ("A", 0.3), ("B", -0.2), ("B", -0.4))
    ]
    prior = estimate_prior(rows)
    assert prior.offset_noise == pytest.approx((0.02, 0.02), rel=1e-6)
    assert prior.offset_tau2 == pytest.approx((0.055, 0.055), rel=1e-6)
    assert prior.gain_scale == pytest.approx((0.0, 0.0), abs=1e-9) and prior.gain_tau2 == (1e-6, 1e-6)
    assert (prior.raters, prior.songs, prior.source) == (2, 4, "averaged")
    with pytest.raises(ValueError, match="no held-out rater has two songs"):
        estimate_prior(rows[:1] + rows[2:3])


def _gain_song(change: float, noise: float, t: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """x with var(x) = 1 and y = x + change * x + e, e orthogonal to x and to constants with var(e) = noise:
    the song's least-squares c is exactly `change` and its noise-to-signal ratio v exactly `noise`."""
    phase = 2 * np.pi * np.arange(t) / t
    x = np.sqrt(2) * np.cos(2 * phase)
    return x, x + change * x + np.sqrt(2 * noise) * np.cos(5 * phase)


def test_empirical_bayes_gain_noise_scales_with_the_songs_noise_to_signal_ratio():
    """Gains c: A 0.1, 0.3; B -0.2, -0.4, every song with v = 0.5. phi = sum of squared deviations from the
    rater means / sum_r (1 - 1/n_r) sum_s v = 0.04 / (0.5 + 0.5) = 0.04; tau_c^2 = mean(0.2^2, 0.3^2) -
    phi * mean(0.5 / 2, 0.5 / 2) = 0.055."""
    rows = []
    for rater, change in (("A", 0.1), ("A", 0.3), ("B", -0.2), ("B", -0.4)):
        x, y = _gain_song(change, 0.5)
        rows.append((rater, (x, x), (y, y)))
    prior = estimate_prior(rows, source="model")
    assert prior.gain_scale == pytest.approx((0.04, 0.04), rel=1e-6)
    assert prior.gain_tau2 == pytest.approx((0.055, 0.055), rel=1e-6)
    assert prior.gain_noise == (0.0, 0.0) and prior.source == "model"
    assert CalibrationPrior.from_dict(prior.to_dict()) == prior


def test_calibration_trusts_a_songs_gain_by_how_well_the_prediction_explains_it():
    """Posterior of c with tau^2 = 0.1, phi = 0.04: a song with v = 0.5 keeps tau^2 / (tau^2 + phi v) = 5/6 of
    its least-squares change; one with v = 50 (the prediction barely explains the curve) keeps 1/21. Two songs
    combine by precision: (c1 / w1 + c2 / w2) / (1 / tau^2 + 1 / w1 + 1 / w2)."""
    prior = CalibrationPrior((0.1, 0.1), (0.02, 0.02), (0.1, 0.1), (0.0, 0.0), (0.04, 0.04), "model")
    songs = {v: _gain_song(0.6, v) for v in (0.5, 50.0)}
    fitted = {}
    for v, (x, y) in songs.items():
        x, y = torch.from_numpy(x), torch.from_numpy(y)
        fitted[v] = fit_calibration([(x, x)], [(y, y)], prior).gain[0] - 1.0
    assert fitted[0.5] == pytest.approx(0.6 * 5 / 6) and fitted[50.0] == pytest.approx(0.6 / 21)
    both = [tuple(torch.from_numpy(z) for z in (x, x)) for x, _ in songs.values()]
    targets = [tuple(torch.from_numpy(z) for z in (y, y)) for _, y in songs.values()]
    w1, w2 = 0.04 * 0.5, 0.04 * 50.0
    expected = (0.6 / w1 + 0.6 / w2) / (1 / 0.1 + 1 / w1 + 1 / w2)
    assert fit_calibration(both, targets, prior).gain[0] - 1.0 == pytest.approx(expected)


def test_a_prior_stored_before_the_model_aware_one_still_loads():
    """Old checkpoints hold strengths in songs ({"offset": [k_a, k_v], "gain": [...]}): the same map as a
    fixed prior of that strength."""
    old = CalibrationPrior.from_dict({"offset": [1.0, 2.0], "gain": [0.5, 3.0], "raters": 4, "songs": 9})
    assert (old.offset_noise, old.gain_noise, old.offset_tau2, old.gain_scale) == (
        (1.0, 2.0),
        (0.5, 3.0),
        (1.0, 1.0),
        (0.0, 0.0),
    )
    assert (old.raters, old.songs, old.source) == (4, 9, "averaged")
    x = torch.tensor([0.0, 0.1, 0.4, 0.2, -0.3, 0.1])
    y = 2.0 * x + 0.3
    fitted = fit_calibration([(x, x)], [(y, y)], old)
    # arousal: b = b_ls / (1 + 1), c = c_ls / (1 + 0.5) with c_ls = 1 in f(x) = x + b + c (x - mean x)
    b, c = float((y - x).mean()) / 2, 1.0 / 1.5
    assert fitted.gain[0] == pytest.approx(1.0 + c)
    assert fitted.offset[0] == pytest.approx(b - c * float(x.mean()))


def test_head_only_adaptation_changes_the_head_alone():
    net = tiny_net().eval()
    source = {k: v.clone() for k, v in net.state_dict().items()}
    song = _song(1)
    batch = {k: (v[None] if v is not None else None) for k, v in song.items()}
    adaptation = adapt_head(net, batch, steps=5, lr=0.5)
    adapted = adaptation.net
    assert isinstance(adapted, HeadAdaptedNet) and adaptation.losses[-1] < adaptation.losses[0]
    assert adapted.spectrogram is net.spectrogram and adapted.encoder is net.encoder
    assert not net.training, "adapting the head left the original network's mode alone"
    for key, value in net.state_dict().items():
        torch.testing.assert_close(value, source[key], rtol=0, atol=0)
    changed = {k for k, v in adapted.state_dict().items() if not torch.equal(v, source[k])}
    assert changed and all(k.startswith("head.") for k in changed)
    # the loss it descends is the full network's loss (the regulariser a constant)
    with torch.no_grad():
        net.head.train()
        full = float(batch_loss(net, batch)[0])
        net.head.eval()
    assert adaptation.losses[0] == pytest.approx(full, rel=1e-5)


@pytest.mark.parametrize("engine", ["sequential", "batched"])
def test_head_only_meta_gradient_with_zero_steps_is_the_plain_gradient(engine):
    """No inner step: the query loss's gradient through the head-only path equals autograd's on the net
    (batched: its matmul LSTM rounds otherwise; in float64 both agree to 1e-7 of each gradient's largest)."""
    net = tiny_net().train()
    song = _song(2, n=20)
    batch = {k: (v[None] if v is not None else None) for k, v in song.items()}
    meta_backward(
        maml_wrap(net.head, 0.1), [{"support": batch, "query": batch}], 0, 1, net=net, engine=engine
    )
    ours = {k: p.grad.clone() for k, p in net.named_parameters()}
    net.zero_grad()
    batch_loss(net, batch)[0].backward()
    for k, p in net.named_parameters():
        tolerance = {"rtol": 1e-5, "atol": 1e-7} if engine == "sequential" else {"rtol": 1e-4, "atol": 1e-6}
        torch.testing.assert_close(ours[k], p.grad, **tolerance)
    assert any(ours[k].abs().sum() > 0 for k in ours if k.startswith("spectrogram."))


def test_head_only_meta_step_with_steps_moves_only_the_head_in_the_inner_loop():
    net = tiny_net().train()
    task = {"support": {k: (v[None] if v is not None else None) for k, v in _song(3, 20).items()}}
    task["query"] = {k: (v[None] if v is not None else None) for k, v in _song(4, 20).items()}
    stats = meta_backward(maml_wrap(net.head, 0.5), [task], 3, 1, net=net)
    assert len(stats.adapt_losses[0]) == 3 and stats.adapt_losses[0][-1] < stats.adapt_losses[0][0]
    assert all(p.grad is not None for p in net.parameters())


def test_adaptation_config_is_checked_with_the_allowed_values():
    allowed = r"is not one of none, calibrate, ridge, ridge_calibrate, listener_prior, head"
    with pytest.raises(ConfigError, match=r"adaptation.method='bogus' " + allowed):
        AdaptationConfig(method="bogus")
    with pytest.raises(ConfigError, match="unknown key"):
        AdaptationConfig.from_dict({"methd": "maml"})
    with pytest.raises(ConfigError, match="adaptation.prior=-1"):
        AdaptationConfig(prior=-1)
    learned = r"is not one of calibrate, ridge, ridge_calibrate, listener_prior, head"
    with pytest.raises(ConfigError, match=r"auto_methods\[0\]='auto' " + learned):
        AdaptationConfig(auto_methods=["auto"])
    with pytest.raises(ConfigError, match=r"auto_steps=\[\]: expected null or a list of at least 1"):
        AdaptationConfig(auto_steps=[])
    with pytest.raises(ConfigError, match=r"adaptation.first_order='yes': expected true, false or null"):
        AdaptationConfig(first_order="yes")
    resolved = AdaptationConfig(method="head").resolve(
        {"inner_steps": 4, "eval_inner_steps": 7, "inner_lr": 0.1}
    )
    assert (resolved.steps, resolved.lr, resolved.first_order) == (7, 0.1, True)
    with pytest.raises(ConfigError, match="adaptation.steps: the checkpoint has no task config"):
        AdaptationConfig(method="maml").resolve(None)
    assert AdaptationConfig(method="calibrate").resolve(None).steps is None
    assert AdaptationConfig(steps=4).grid() == (2, 4, 8)


def test_none_is_the_network_and_maml_matches_adapt():
    net = tiny_net().eval()
    song = _song(5)
    predictor = SlidingWindows(window=60)
    config = AdaptationConfig(method="none")
    model = personalize_net(net, [song], config, predictor)
    assert model.net is net and model.calibration is None
    config = AdaptationConfig(method="maml", steps=3, lr=0.2, first_order=True)
    model = personalize_net(net, [song], config, predictor)
    direct = adapt(net, [{k: (v[None] if v is not None else None) for k, v in song.items()}], 3, lr=0.2).net
    torch.testing.assert_close(model.predict(predictor, song)[0], predictor(direct, song)[0])


def test_calibrate_recovers_an_affine_listener():
    """A listener who reads the model's valence upside down and higher: 0.3 - prediction. With prior 0 the
    map is exact (gain -1, offset 0.3) and a held-out song is predicted perfectly. The tiny network's arousal
    is almost flat (variance under 1e-4): no gain is estimated from it, only the offset (the listener's
    arousal moves around it by +-0.02, zero-mean)."""
    net = tiny_net().eval()
    predictor = SlidingWindows(window=60)
    songs = [_song(s) for s in (6, 7)]
    wiggle = 0.02 * (-1.0) ** torch.arange(40)
    for song in songs:
        a, v = predictor(net, song)
        song["arousal"], song["valence"] = a + 0.2 + wiggle, 0.3 - v
    assert float(predictor(net, songs[0])[0].var()) < 1e-4 < float(predictor(net, songs[0])[1].var())
    config = AdaptationConfig(method="calibrate", prior=0.0)
    model = personalize_net(net, songs[:1], config, predictor, CalibrationPrior.uniform(0.0))
    assert model.calibration.gain == pytest.approx((1.0, -1.0), abs=1e-4)
    assert model.calibration.offset[0] == pytest.approx(0.2, abs=1e-5)
    a, v = model.predict(predictor, songs[1])
    torch.testing.assert_close(a, songs[1]["arousal"] - wiggle, atol=1e-4, rtol=0)
    torch.testing.assert_close(v, songs[1]["valence"], atol=1e-4, rtol=0)


def test_a_support_song_whose_slider_never_moves_is_left_out():
    """An untouched slider (a constant curve) would give calibration a gain of 0 and teach a head to predict
    a constant: every method leaves it out (skip_flat, the default); with nothing else the model stays
    as it is. skip_flat=false adapts on it as the original does; calibration then takes only its offset."""
    net = tiny_net().eval()
    predictor = SlidingWindows(window=60)
    moving_song, flat_song = _song(8), _song(9)
    flat_song["arousal"], flat_song["valence"] = torch.full((40,), 0.4), torch.full((40,), -0.1)
    assert moving([moving_song, flat_song]) == [moving_song]
    prior = CalibrationPrior.uniform(1.0)
    for method in ("calibrate", "head", "maml_calibrate"):
        config = AdaptationConfig(method=method, prior=1.0, steps=2, lr=0.05, first_order=True)
        alone = personalize_net(net, [moving_song], config, predictor, prior)
        both = personalize_net(net, [moving_song, flat_song], config, predictor, prior)
        assert both.calibration == alone.calibration
        for p, q in zip(both.net.parameters(), alone.net.parameters(), strict=True):
            torch.testing.assert_close(p, q)
        unadapted = personalize_net(net, [flat_song], config, predictor, prior)
        assert (unadapted.net, unadapted.calibration, unadapted.method) == (net, None, "none")
    auto = select(
        net,
        [flat_song],
        AdaptationConfig(method="auto", steps=2, lr=0.05, first_order=True),
        predictor,
        prior,
    )
    assert (auto.chosen["method"], auto.candidates, auto.personalized.net) == ("none", [], net)
    kept = personalize_net(
        net, [flat_song], AdaptationConfig(method="calibrate", skip_flat=False), predictor, prior
    )
    assert kept.calibration.gain == (1.0, 1.0) and kept.calibration.offset != (0.0, 0.0)


def test_auto_keeps_the_network_unless_something_validates_better():
    net = tiny_net().eval()
    predictor = SlidingWindows(window=60)
    # the tiny network's arousal barely moves, and so do these listeners' (skip_flat would leave them out)
    every = [m for m in METHODS[1:] if m != "listener_prior"]  # needs a stored prior: test_listener_prior.py
    config = AdaptationConfig(
        method="auto",
        steps=2,
        lr=0.1,
        first_order=True,
        auto_steps=[1, 2],
        skip_flat=False,
        auto_methods=every,
    )
    prior = CalibrationPrior.uniform(0.5)
    own = [_song(s, n=24) for s in (8, 9)]
    for song in own:  # the listener hears exactly what the model predicts: nothing can validate better
        song["arousal"], song["valence"] = predictor(net, song)
    narrow = replace(config, auto_methods=AdaptationConfig().auto_methods)  # the default: calibrate alone
    default = select(net, own, narrow, predictor, prior)
    assert {(c["method"], c["steps"]) for c in default.candidates} == {("none", 0), ("calibrate", 0)}
    assert default.chosen == {"method": "none", "steps": 0}
    selection = select(net, own, config, predictor, prior)
    assert selection.chosen == {"method": "none", "steps": 0} and selection.personalized.net is net
    assert selection.validation == "leave-one-song-out; kept none unless a candidate validated better"
    tried = {(c["method"], c["steps"]) for c in selection.candidates}
    assert tried == {("none", 0), ("calibrate", 0), ("ridge", 0), ("ridge_calibrate", 0)} | {
        (m, s) for m in ("head", "head_calibrate", "maml", "maml_calibrate") for s in (1, 2)
    }
    assert all(len(c["folds"]) == 2 for c in selection.candidates)
    shifted = [dict(s, arousal=0.4 - s["arousal"], valence=0.4 - s["valence"]) for s in own]
    config = AdaptationConfig(**{**config.to_dict(), "auto_methods": ["calibrate", "head_calibrate"]})
    selection = select(net, shifted, config, predictor, prior)
    assert selection.chosen["method"].endswith("calibrate")
    best = max(c["score"] for c in selection.candidates)
    none = next(c["score"] for c in selection.candidates if c["method"] == "none")
    assert best > none + 0.1
    assert isinstance(selection.personalized, Personalized) and selection.personalized.calibration is not None


def _one_song_listener(net, predictor: SlidingWindows, seed: int, n: int = 90) -> dict:
    """A song whose listener curves are exactly the network's own prediction of it."""
    song = _song(seed, n=n)
    song["arousal"], song["valence"] = predictor(net, song)
    return song


def test_auto_with_one_song_validates_on_contiguous_blocks():
    """One support song: blocked 3-fold inside it (each third held out in turn, the rest joined as one song)
    over the `auto_single` candidates only (default: calibrate; auto_methods are for >= 2 songs); a listener
    identical to the network keeps it; one who hears an exact affine map of its curves (arousal + 0.2,
    valence 0.3 - valence) gets the calibration, on every fold; a too-short song validates nothing."""
    net = tiny_net().eval()
    predictor = SlidingWindows(window=60)
    config = AdaptationConfig(
        method="auto",
        steps=2,
        lr=0.1,
        first_order=True,
        auto_steps=[1, 2],
        auto_methods=["calibrate", "head", "maml"],
        skip_flat=False,  # the listener's arousal is the tiny network's, which barely moves
    )
    prior = CalibrationPrior.uniform(0.5)
    same = _one_song_listener(net, predictor, 10)
    how, splits = folds([same])
    assert how == "blocked 3-fold within the song (90 segments, blocks of ~30)"
    held = [torch.cat([v["arousal"] for v in validate]) for _, validate in splits]
    torch.testing.assert_close(torch.cat(held), same["arousal"])  # the blocks tile the song in order
    for i, (fit_on, _) in enumerate(splits):  # each fold adapts on the other two blocks, as one song
        rest = torch.cat([same["arousal"][: 30 * i], same["arousal"][30 * (i + 1) :]])
        assert len(fit_on) == 1 and torch.equal(fit_on[0]["arousal"], rest)
    kept = select(net, [same], config, predictor, prior)
    assert kept.chosen == {"method": "none", "steps": 0} and kept.personalized.net is net
    assert {(c["method"], c["steps"]) for c in kept.candidates} == {("none", 0), ("calibrate", 0)}
    wider = select(net, [same], replace(config, auto_single=("calibrate", "head")), predictor, prior)
    assert {(c["method"], c["steps"]) for c in wider.candidates} == {
        ("none", 0),
        ("calibrate", 0),
        ("head", 1),
        ("head", 2),
    }
    affine = dict(same, arousal=same["arousal"] + 0.2, valence=0.3 - same["valence"])
    chosen = select(net, [affine], config, predictor, prior)
    assert chosen.chosen == {"method": "calibrate", "steps": 0}
    calibrate = next(c for c in chosen.candidates if c["method"] == "calibrate")
    none = next(c for c in chosen.candidates if c["method"] == "none")
    assert (
        calibrate["wins"] == 3 and len(calibrate["folds"]) == 3 and calibrate["score"] > none["score"] + 0.1
    )
    assert chosen.personalized.calibration.offset[0] == pytest.approx(0.2 / 1.5, abs=2e-3)  # b = n/(n+k) b_ls
    short = select(net, [_song(11, n=12)], config, predictor, prior)
    assert short.chosen["method"] == "none" and short.candidates == []
    assert short.validation == "none (the song has 12 segments; validation needs at least 16)"


def _candidate(method: str, steps: int, folds: list[float]) -> dict:
    """A tabulated candidate (`tabulate`'s fields that `choose` reads) with these per-fold scores."""
    return {"method": method, "steps": steps, "score": sum(folds) / len(folds), "folds": folds}


def test_auto_needs_a_win_on_most_folds_not_only_on_average():
    """`choose` (rule "best"): the best mean among candidates that beat none by more than margin on average
    AND on more than half of the folds. head is best on average (one big win, two losses) but loses to
    calibrate."""
    candidates = [
        _candidate("none", 0, [0.50, 0.50, 0.50]),
        _candidate("head", 2, [0.90, 0.45, 0.45]),  # mean 0.60, beats none on 1 of 3 folds
        _candidate("calibrate", 0, [0.53, 0.53, 0.50]),  # mean 0.52, 2 of 3
        _candidate("maml", 1, [0.51, 0.51, 0.51]),  # mean 0.51, 3 of 3
    ]
    assert choose(candidates, 0.0) == {"method": "calibrate", "steps": 0}
    assert choose(candidates, 0.015) == {"method": "calibrate", "steps": 0}
    assert choose(candidates, 0.02) == {"method": "none", "steps": 0}  # 0.52 is not > 0.50 + 0.02
    four = [
        _candidate(c["method"], c["steps"], [*c["folds"], 0.40 if c["method"] == "calibrate" else 0.5])
        for c in candidates
    ]  # a fourth fold where calibrate loses: 2 of 4 folds is not most
    assert choose(four, 0.0) == {"method": "maml", "steps": 1}
    assert choose(candidates[1:], 0.0) == {"method": "none", "steps": 0}  # no baseline: keep the network


def test_auto_rule_simplest_needs_each_step_up_to_validate_better_than_the_step_below():
    """choose(rule="simplest"): in the order none < calibrate < head < head_calibrate (fewer steps first), a
    candidate replaces the one chosen so far only when it beats it on average (by more than margin) and on
    most folds. Here head_calibrate has the best mean (one lucky fold) but beats calibrate on one of three
    folds: "best" takes it, "simplest" keeps calibrate; head 2 beats none but not calibrate."""
    candidates = [
        _candidate("head_calibrate", 5, [0.90, 0.55, 0.55]),
        _candidate("head", 2, [0.55, 0.55, 0.52]),
        _candidate("none", 0, [0.50, 0.50, 0.50]),
        _candidate("calibrate", 0, [0.58, 0.58, 0.58]),
    ]
    assert choose(candidates, 0.0, "best") == {"method": "head_calibrate", "steps": 5}
    assert choose(candidates, 0.0, "simplest") == {"method": "calibrate", "steps": 0}
    candidates.append(_candidate("head_calibrate", 10, [0.62, 0.62, 0.52]))  # beats calibrate on 2 of 3
    assert choose(candidates, 0.0, "simplest") == {"method": "head_calibrate", "steps": 10}
    # 0.587 does not beat 0.58 by more than 0.02
    assert choose(candidates, 0.02, "simplest") == {"method": "calibrate", "steps": 0}
    # without calibrate: head 2 beats none, then head_calibrate 5 beats head 2 on 2 of 3 folds
    assert choose(candidates[:3], 0.0, "simplest") == {"method": "head_calibrate", "steps": 5}
    assert choose(candidates[1:3], 0.0, "simplest") == {"method": "head", "steps": 2}
    assert choose([_candidate("head", 2, [0.55, 0.55, 0.52])], 0.0, "simplest")["method"] == "none"


@pytest.mark.parametrize("rule", ["best", "simplest"])
def test_auto_start_is_kept_unless_a_candidate_beats_it_on_average_and_on_most_folds(rule):
    """choose(start=listener_prior): listener_prior is kept although calibrate validates better on average
    (one lucky fold of two) and none would be kept from start=none (listener_prior wins one of two folds);
    none replaces it only by beating it on both folds; an unscored start falls back to none."""
    none = _candidate("none", 0, [0.50, 0.50])
    calibrate = _candidate("calibrate", 0, [0.70, 0.48])
    prior = _candidate("listener_prior", 0, [0.60, 0.49])
    assert choose([none, calibrate, prior], 0.0, rule) == {"method": "none", "steps": 0}
    assert choose([none, calibrate, prior], 0.0, rule, "listener_prior") == {
        "method": "listener_prior",
        "steps": 0,
    }
    better_none = _candidate("none", 0, [0.61, 0.50])
    assert choose([better_none, calibrate, prior], 0.0, rule, "listener_prior")["method"] == "none"
    assert choose([none, calibrate], 0.0, rule, "listener_prior") == {"method": "none", "steps": 0}


def test_user_tools_do_not_import_training():
    """predictor / personalize (and their commands) stand on metrics, meta and models, never on training/."""
    code = (
        "import sys; import dsaml.predictor, dsaml.personalize, dsaml.cli.personalize, dsaml.cli.predict; "
        "bad = sorted(m for m in sys.modules if m.startswith('dsaml.training')); print(bad); "
        "sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]

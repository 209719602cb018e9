"""The ridge read-out (method "ridge"): the head's final layer refitted in closed form, checked against
numpy's least squares on the same features; it recovers a listener whose read-out of the network's features
differs from the trained one (which an output map cannot), leaves the network untouched, and `auto` can
choose it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app_fixtures import random_song, tiny_net
from dsaml.data.batch import windows_batch
from dsaml.meta import AdaptationConfig, CalibrationPrior, SlidingWindows, personalize_net, select
from dsaml.meta.readout import STRENGTHS, fit_ridge, readout_features, refit_readout


def _song(seed: int, n: int = 40) -> dict:
    return random_song(seed, n)


def _numpy_ridge(
    z: np.ndarray, y: np.ndarray, w0: np.ndarray, b0: float, lam: float
) -> tuple[np.ndarray, float]:
    """min ||y - z w - b||^2 + lam ||w - w0||^2 (b free) as one augmented least-squares problem."""
    n, d = z.shape
    design = np.block([[z, np.ones((n, 1))], [np.sqrt(lam) * np.eye(d), np.zeros((d, 1))]])
    target = np.concatenate([y, np.sqrt(lam) * w0])
    solution, *_ = np.linalg.lstsq(design, target, rcond=None)
    return solution[:d], float(solution[d])


def test_fit_ridge_is_the_augmented_least_squares_solution():
    rng = np.random.default_rng(0)
    z, y, w0 = rng.normal(size=(50, 6)), rng.normal(size=50), rng.normal(size=6)
    lam_for = lambda s, songs: s * (50 / songs) * z.var(0).mean()
    for strength, songs in ((0.3, 1), (3.0, 2)):
        w, b = fit_ridge(
            torch.from_numpy(z), torch.from_numpy(y), torch.from_numpy(w0), torch.tensor(0.4), strength, songs
        )
        w_np, b_np = _numpy_ridge(z, y, w0, 0.4, lam_for(strength, songs))
        np.testing.assert_allclose(w.numpy(), w_np, atol=1e-9)
        assert float(b) == pytest.approx(b_np, abs=1e-9)


def test_ridge_recovers_a_listener_with_another_readout():
    """Listeners whose curves are another linear read-out (w*, b*) of the head's features: from two songs the
    refitted read-out predicts a third song almost exactly, and the chosen strength is the smallest tried
    (noise-free evidence); the network itself is unchanged."""
    net = tiny_net().eval()
    predictor = SlidingWindows(window=60)
    songs = [_song(s) for s in (1, 2, 3)]
    gen = torch.Generator().manual_seed(9)
    w_star = torch.randn(2, net.head.out.in_features, generator=gen)
    b_star = torch.tensor([0.1, -0.2])
    for song in songs:
        ((z, _),) = readout_features(net, [windows_batch(song, 60)])
        curves = (z.float() @ w_star.T + b_star).T
        song["arousal"], song["valence"] = curves[0], curves[1]
    before = {k: v.clone() for k, v in net.state_dict().items()}
    model = personalize_net(net, songs[:2], AdaptationConfig(method="ridge"), predictor)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
    assert model.net.readout_strengths == (STRENGTHS[0], STRENGTHS[0])
    arousal, valence = model.predict(predictor, songs[2])
    plain = predictor(net, songs[2])
    error = float((arousal - songs[2]["arousal"]).abs().max() + (valence - songs[2]["valence"]).abs().max())
    plain_error = float((plain[0] - songs[2]["arousal"]).abs().max())
    assert error < 0.05 * plain_error


def test_refit_readout_matches_numpy_with_leave_one_song_out_strength():
    """The final fit uses the strength with the least leave-one-song-out squared error, recomputed here with
    numpy's least squares for every strength."""
    rng = np.random.default_rng(1)
    d = 5
    w0, b0 = rng.normal(size=(2, d)), rng.normal(size=2)
    groups = []
    for _ in range(3):
        z = rng.normal(size=(30, d))
        y = z @ (w0 + rng.normal(scale=0.5, size=(2, d))).T + rng.normal(scale=0.8, size=(30, 2))
        groups.append((z, y))
    readout = refit_readout(
        [(torch.from_numpy(z), torch.from_numpy(y)) for z, y in groups],
        torch.from_numpy(w0),
        torch.from_numpy(b0),
    )
    for dim in range(2):
        errors = []
        for s in STRENGTHS:
            error = 0.0
            for held in range(3):
                fit = [groups[j] for j in range(3) if j != held]
                z = np.concatenate([g[0] for g in fit])
                y = np.concatenate([g[1][:, dim] for g in fit])
                w, b = _numpy_ridge(z, y, w0[dim], b0[dim], s * (len(z) / 2) * z.var(0).mean())
                error += ((groups[held][0] @ w + b - groups[held][1][:, dim]) ** 2).sum()
            errors.append(error)
        best = STRENGTHS[int(np.argmin(errors))]
        assert readout.strengths[dim] == best
        z = np.concatenate([g[0] for g in groups])
        y = np.concatenate([g[1][:, dim] for g in groups])
        w, b = _numpy_ridge(z, y, w0[dim], b0[dim], best * (len(z) / 3) * z.var(0).mean())
        np.testing.assert_allclose(readout.weight[dim].numpy(), w, atol=1e-8)
        assert float(readout.bias[dim]) == pytest.approx(b, abs=1e-8)


def test_auto_can_choose_ridge_and_records_its_score():
    net = tiny_net().eval()
    predictor = SlidingWindows(window=60)
    songs = [_song(s) for s in (4, 5, 6)]
    gen = torch.Generator().manual_seed(2)
    w_star = torch.randn(2, net.head.out.in_features, generator=gen)
    for song in songs:
        ((z, _),) = readout_features(net, [windows_batch(song, 60)])
        song["arousal"], song["valence"] = (z.float() @ w_star.T).T
    config = AdaptationConfig(
        method="auto", auto_methods=("calibrate", "ridge"), steps=1, lr=0.1, first_order=True
    )
    selection = select(net, songs, config, predictor, CalibrationPrior.uniform(1.0))
    assert selection.chosen["method"] == "ridge"
    assert {c["method"] for c in selection.candidates} == {"none", "calibrate", "ridge"}

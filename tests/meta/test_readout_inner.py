"""The read-out inner loop of PDMER meta-training (task.inner_loop=readout): the differentiable ridge fit
against a direct solve of its augmented normal equations and against finite differences, the episode's
meta-gradient against autograd through an independent solve and against finite differences of the loss,
the config checks, and a tiny meta-training run tested with adaptation=ridge."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from app_fixtures import tiny_net
from dsaml.config import ConfigError
from dsaml.losses import dsaml_loss
from dsaml.meta import meta_backward
from dsaml.meta.readout import fit_ridge, readout_episode_loss
from dsaml.models.checkpoint import load_network
from dsaml.training.config import PDMERConfig
from dsaml.training.run import run
from train_fixtures import PDMER_TINY, train_config


def _normal_equations(z, y, w0, b0, lam):
    """min ||y - z w - b||^2 + lam ||w - w0||^2 with b free: the gradient set to zero gives
    [[z'z + lam I, z'1], [1'z, N]] [w; b] = [z'y + lam w0; 1'y] (numpy, float64)."""
    n, d = z.shape
    ones = np.ones((n, 1))
    lhs = np.block([[z.T @ z + lam * np.eye(d), z.T @ ones], [ones.T @ z, np.array([[n]])]])
    rhs = np.concatenate([z.T @ y + lam * w0, [y.sum()]])
    solution = np.linalg.solve(lhs, rhs)
    return solution[:d], solution[d]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fit_ridge_solves_the_augmented_normal_equations_in_the_inputs_dtype(dtype):
    rng = np.random.default_rng(3)
    z, y, w0 = rng.normal(size=(40, 5)), rng.normal(size=40), rng.normal(size=5)
    strength, songs = 2.0, 2
    lam = strength * (40 / songs) * z.var(0).mean()
    w, b = fit_ridge(
        *(torch.tensor(a, dtype=dtype) for a in (z, y, w0)), torch.tensor(-0.3, dtype=dtype), strength, songs
    )
    w_np, b_np = _normal_equations(z, y, w0, -0.3, lam)
    assert w.dtype == b.dtype == dtype
    tolerance = 1e-10 if dtype == torch.float64 else 1e-4
    np.testing.assert_allclose(w.double().numpy(), w_np, atol=tolerance)
    assert float(b) == pytest.approx(b_np, abs=tolerance)


def test_fit_ridge_gradient_matches_finite_differences():
    """gradcheck in float64: derivatives in z (through the fit and the strength's scale), y, w0 and b0."""
    gen = torch.Generator().manual_seed(0)
    inputs = [torch.randn(shape, generator=gen, dtype=torch.float64) for shape in ((12, 4), (12,), (4,), ())]
    for tensor in inputs:
        tensor.requires_grad_(True)

    def fit(z, y, w0, b0):
        w, b = fit_ridge(z, y, w0, b0, 0.7, 2)
        return torch.cat([w, b[None]])

    assert torch.autograd.gradcheck(fit, inputs, eps=1e-6, atol=1e-6)


def _clip(seed: int, batch: int, n: int = 12) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {
        "logmel": torch.randn(batch, n, 51, 128, generator=gen, dtype=torch.float64) - 5.0,
        "arousal": (torch.rand(batch, n, generator=gen, dtype=torch.float64) - 0.5) * 0.8,
        "valence": (torch.rand(batch, n, generator=gen, dtype=torch.float64) - 0.5) * 0.8,
        "global": None,
    }


def _independent_loss(net, episode, strength):
    """The episode's query loss computed another way: the ridge fit as one torch.linalg.solve of the
    augmented normal equations per dimension (lam as `fit_ridge` defines it), the query through the network's
    own forward with its read-out replaced by the fitted one (torch.func.functional_call)."""
    support, query = episode["support"], episode["query"]
    head = net.head
    encoded = net.body(support["logmel"], None, return_diagonal=False)["encoded"]
    z = head.hidden(head.bilstm(encoded)[0]).reshape(-1, head.out.in_features)
    n, d = z.shape
    ones = torch.ones(n, 1, dtype=z.dtype)
    lam = strength * (n / len(support["arousal"])) * z.var(0, unbiased=False).mean()
    lhs = torch.cat(
        [
            torch.cat([z.T @ z + lam * torch.eye(d, dtype=z.dtype), z.T @ ones], 1),
            torch.cat([ones.T @ z, ones.T @ ones], 1),
        ]
    )
    weights, biases = [], []
    for i, key in enumerate(("arousal", "valence")):
        y = support[key].reshape(-1)
        rhs = torch.cat([z.T @ y + lam * head.out.weight[i], y.sum()[None]])
        solution = torch.linalg.solve(lhs, rhs)
        weights.append(solution[:d])
        biases.append(solution[d])
    params = {"head.out.weight": torch.stack(weights), "head.out.bias": torch.stack(biases)}
    out = torch.func.functional_call(net, params, (query["logmel"], None))
    return dsaml_loss(out, query["arousal"], query["valence"])[0]


def test_readout_meta_gradient_is_autograd_through_the_solve_and_finite_differences():
    """meta_backward with the read-out inner loop accumulates the gradient of the episode's query loss in
    every parameter (the trained read-out w0, the prior, included; the bias is fitted freely, so b0 gets
    none): equal to autograd of an independent computation, and its directional derivative equal to central
    finite differences (float64, eval mode)."""
    net = tiny_net().double().eval()
    episode = {"support": _clip(1, 2), "query": _clip(2, 2)}
    strength = 0.5
    stats = meta_backward(net, [episode], 0, 2, readout_strength=strength)
    ours = {k: p.grad.clone() for k, p in net.named_parameters()}
    assert stats.adapt_losses == [[]]
    net.zero_grad()
    loss = _independent_loss(net, episode, strength)
    assert stats.query_loss == pytest.approx(float(loss.detach()), rel=1e-10)
    (loss / 2).backward()
    for key, param in net.named_parameters():  # head.out.bias: the fitted bias is free, b0 drops out
        expected = torch.zeros_like(param) if param.grad is None else param.grad
        torch.testing.assert_close(ours[key], expected, rtol=1e-7, atol=1e-10, msg=key)
    body = [k for k in ours if k.startswith(("spectrogram.", "encoder."))]
    for key in ("head.out.weight", "head.hidden.weight", *body):
        assert ours[key].abs().sum() > 0 or "bias" in key, key
    gen = torch.Generator().manual_seed(5)
    # a random direction in every parameter but the CNN's (its max-pooling and ReLU kinks lie within a
    # step of 1e-6 of the point; the autograd check above covers it)
    direction = {
        k: torch.randn(p.shape, generator=gen, dtype=torch.float64) * (not k.startswith("spectrogram."))
        for k, p in net.named_parameters()
    }
    predicted = sum(float((ours[k] * direction[k]).sum()) for k in ours) * 2  # meta_backward divided by 2
    eps = 1e-6
    values = []
    for sign in (1.0, -1.0):
        with torch.no_grad():
            shifted = {k: p + sign * eps * direction[k] for k, p in net.named_parameters()}
            values.append(float(readout_episode_loss(_with(net, shifted), episode, strength)[0]))
    assert (values[0] - values[1]) / (2 * eps) == pytest.approx(predicted, rel=1e-6)


def _with(net, params):
    """A copy of `net` with `params` as its parameters."""
    copy = tiny_net().double().eval()
    copy.load_state_dict({**net.state_dict(), **params})
    return copy


def test_readout_inner_loop_refuses_the_batched_engine():
    with pytest.raises(ValueError, match="task.inner_loop=readout runs on the sequential engine only"):
        meta_backward(tiny_net(), [], 0, 1, engine="batched", readout_strength=1.0)
    with pytest.raises(
        ConfigError, match="task.inner_loop=readout .*meta_engine='batched', expected sequential"
    ):
        PDMERConfig(inner_loop="readout", meta_engine="batched")
    with pytest.raises(ConfigError, match=r"task.inner_loop='bogus' is not one of full, head, readout"):
        PDMERConfig(inner_loop="bogus")
    with pytest.raises(ConfigError, match="task.readout_strength"):
        PDMERConfig(inner_loop="readout", readout_strength=0)


def test_pdmer_readout_meta_training(tiny_store, tmp_path):
    """task.inner_loop=readout meta-trains end to end (validation and test adapt with the ridge read-out);
    the checkpoint records the inner loop and its strength."""
    overrides = [*PDMER_TINY, "task.inner_loop=readout", "task.readout_strength=2.0", "adaptation=ridge"]
    run(train_config(tiny_store, tmp_path, overrides))
    results = json.loads((tmp_path / "results.json").read_text())
    rows = {row["protocol"]: row for row in results["rows"]}
    assert rows["pdmer_within_song"]["n"] == rows["pdmer_unadapted"]["n"] >= 1
    assert rows["pdmer_within_song"]["average"] != rows["pdmer_unadapted"]["average"]
    _, _, hparams = load_network(tmp_path / "checkpoints" / "last.ckpt")
    assert hparams["task"]["inner_loop"] == "readout" and hparams["task"]["readout_strength"] == 2.0
    assert hparams["adaptation"]["method"] == "ridge"

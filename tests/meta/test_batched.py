"""The batched MAML engine (`task.meta_engine=batched`) against the sequential learn2learn path: the same
support losses, adapted parameters, query losses and meta-gradient (first and second order, full and
head-only inner loop), its BatchNorm statistics, chunking and errors; its LSTM against `nn.LSTM`. Against
the original's MAML step (reference vector): tests/training/test_maml_parity.py, for both engines."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from app_fixtures import tiny_net
from dsaml.config import ConfigError
from dsaml.meta import adapt, adapt_head, maml_wrap, meta_backward
from dsaml.meta.adaptation import body_batches
from dsaml.meta.batched import (
    MatmulLSTM,
    adapt_batched,
    head_loss,
    network_loss,
    stack_batches,
    stacked,
    twin,
)
from dsaml.training.config import PDMERConfig
from model_fixtures import assert_grads_close

STEPS, LR = 3, 0.05


def _batch(gen: torch.Generator, clips: int, length: int = 8) -> dict:
    return {
        "logmel": torch.randn(clips, length, 51, 128, generator=gen) - 5.0,
        "global": None,
        "arousal": (torch.rand(clips, length, generator=gen) - 0.5) * 0.8,
        "valence": (torch.rand(clips, length, generator=gen) - 0.5) * 0.8,
    }


def _episodes(n: int, seed: int = 1, queries: int = 3, dtype: torch.dtype = torch.float32) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    episodes = [{"support": _batch(gen, 1), "query": _batch(gen, queries)} for _ in range(n)]
    return [
        {part: {k: None if v is None else v.to(dtype) for k, v in batch.items()} for part, batch in e.items()}
        for e in episodes
    ]


def _net(dtype: torch.dtype = torch.float32) -> nn.Module:
    return tiny_net().train().to(dtype)


# float64: the same computation to 1e-9; float32: the BatchNorm-conditioned spectrogram CNN's gradients (batch
# statistics of one 8-segment clip, 3 inner steps at lr 0.05) amplify the rounding differences of the matmul
# LSTM to ~3e-3 of their largest entry (in float64 they agree to 1e-9: rounding, not a difference)
TOLERANCE = {torch.float64: (1e-9, 1e-9, 1e-9), torch.float32: (1e-5, 1e-4, 5e-3)}  # loss, grads, CNN grads
DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])


def _meta_step(
    engine: str,
    head: bool,
    first_order: bool,
    episodes: list[dict],
    chunk: int | None = None,
    dtype: torch.dtype = torch.float32,
):
    net = _net(dtype)
    maml = maml_wrap(net.head if head else net, LR, first_order)
    stats = meta_backward(
        maml, episodes, STEPS, len(episodes), net=net if head else None, engine=engine, chunk=chunk
    )
    grads = {k: p.grad.clone() for k, p in net.named_parameters()}
    return stats, grads, net


@DTYPES
@pytest.mark.parametrize("head", [False, True], ids=["full", "head"])
@pytest.mark.parametrize("first_order", [True, False], ids=["first_order", "second_order"])
def test_batched_meta_step_equals_the_sequential_one(head, first_order, dtype):
    loss_tol, grad_tol, cnn_tol = TOLERANCE[dtype]
    episodes = _episodes(3, dtype=dtype)
    seq, seq_grads, _ = _meta_step("sequential", head, first_order, episodes, dtype=dtype)
    bat, bat_grads, _ = _meta_step("batched", head, first_order, episodes, dtype=dtype)
    torch.testing.assert_close(
        torch.tensor(bat.adapt_losses), torch.tensor(seq.adapt_losses), rtol=loss_tol, atol=loss_tol
    )
    assert len(bat.adapt_losses) == 3 and len(bat.adapt_losses[0]) == STEPS
    assert bat.query_loss == pytest.approx(seq.query_loss, rel=loss_tol)
    assert bat.query_scores.keys() == seq.query_scores.keys()
    for key, value in seq.query_scores.items():
        assert bat.query_scores[key] == pytest.approx(value, rel=10 * loss_tol, abs=loss_tol), key
    assert all(g.abs().sum() > 0 for k, g in bat_grads.items() if k.startswith("head."))
    cnn = {k for k in seq_grads if k.startswith("spectrogram.")}
    assert_grads_close(*({k: g[k] for k in cnn} for g in (bat_grads, seq_grads)), rel=cnn_tol, floor=1e-6)
    rest = {k for k in seq_grads if k not in cnn}
    assert_grads_close(*({k: g[k] for k in rest} for g in (bat_grads, seq_grads)), rel=grad_tol, floor=1e-6)


@DTYPES
@pytest.mark.parametrize("head", [False, True], ids=["full", "head"])
@pytest.mark.parametrize("first_order", [True, False], ids=["first_order", "second_order"])
def test_batched_adapted_parameters_equal_each_episodes_own(head, first_order, dtype):
    """`adapt_batched` on 3 stacked episodes: each slice equals the sequential adaptation of that episode."""
    loss_tol, grad_tol, _ = TOLERANCE[dtype]
    episodes = _episodes(3, seed=2, dtype=dtype)
    net = _net(dtype)
    inner = net.head if head else net
    if head:
        support = stack_batches([body_batches(net, e["support"])[0] for e in episodes])
        loss = head_loss(twin(inner))
    else:
        support = stack_batches([e["support"] for e in episodes])
        loss = network_loss(twin(inner))
    buffers = {k: b for k, b in inner.named_buffers()}
    batched = adapt_batched(
        loss,
        stacked(dict(inner.named_parameters()), 3, copies=False),
        stacked(buffers, 3, copies=True),
        support,
        STEPS,
        LR,
        first_order,
    )
    for index, episode in enumerate(episodes):
        if head:
            own = adapt_head(net, episode["support"], STEPS, lr=LR, first_order=first_order, train_mode=None)
            adapted = dict(own.net.head.named_parameters())
        else:
            own = adapt(net, episode["support"], STEPS, lr=LR, first_order=first_order, train_mode=None)
            adapted = dict(own.net.named_parameters())
        expected = torch.tensor(own.losses, dtype=dtype)
        torch.testing.assert_close(batched.losses[:, index], expected, rtol=loss_tol, atol=loss_tol)
        for name, value in adapted.items():
            torch.testing.assert_close(batched.params[name][index], value, rtol=grad_tol, atol=1e-6, msg=name)


def test_chunks_and_unequal_shapes_give_the_same_meta_gradient():
    """Two episodes at a time, and a third whose query has another size (a call of its own): the same
    meta-gradient as everything in one call and as the sequential path."""
    episodes = _episodes(4) + _episodes(1, seed=5, queries=2)
    _, whole, _ = _meta_step("batched", False, True, episodes)
    _, chunked, _ = _meta_step("batched", False, True, episodes, chunk=2)
    _, reference, _ = _meta_step("sequential", False, True, episodes)
    assert_grads_close(chunked, whole, rel=1e-5, floor=1e-7)
    assert_grads_close(chunked, reference, rel=5e-3, floor=1e-6)  # float32, see TOLERANCE


def test_batchnorm_statistics_are_the_mean_of_each_episodes_own():
    """The network's running statistics after a batched meta-step: the mean over the episodes of what each
    episode's adaptation (alone, from the same statistics) leaves; the counter counts every forward pass."""
    episodes = _episodes(3)
    _, _, net = _meta_step("batched", False, True, episodes)
    finals = []
    for episode in episodes:
        alone = _net()
        meta_backward(maml_wrap(alone, LR), [episode], STEPS, 1, engine="sequential")
        finals.append(dict(alone.named_buffers()))
    for name, buffer in net.named_buffers():
        if buffer.is_floating_point():
            expected = torch.stack([f[name] for f in finals]).mean(0)
            torch.testing.assert_close(buffer, expected, rtol=1e-5, atol=1e-6, msg=name)
        else:
            assert int(buffer) == 3 * (STEPS + 1), name
    assert any("running_mean" in name for name, _ in net.named_buffers())


def test_a_nonfinite_support_loss_names_its_episode():
    episodes = _episodes(3)
    episodes[1]["support"]["arousal"][0, 0] = float("nan")
    seen = []
    with pytest.raises(FloatingPointError, match=r"episode 1: non-finite support loss at inner step 0 nan"):
        meta_backward(
            maml_wrap(_net(), LR),
            episodes,
            STEPS,
            3,
            engine="batched",
            on_nonfinite=lambda i, m: seen.append(i),
        )
    assert seen == [1]


def test_meta_engine_is_a_checked_task_key():
    assert PDMERConfig(test_protocols=["pdmer_within_song"]).meta_engine in (
        "batched",
        "sequential",
    )
    with pytest.raises(ConfigError, match=r"task.meta_engine='vmap' is not one of batched, sequential"):
        PDMERConfig(meta_engine="vmap", test_protocols=["pdmer_within_song"])
    with pytest.raises(ConfigError, match="task.meta_chunk"):
        PDMERConfig(meta_chunk=0, test_protocols=["pdmer_within_song"])
    with pytest.raises(ValueError, match="engine='vmap': expected one of batched, sequential"):
        meta_backward(maml_wrap(_net(), LR), _episodes(1), 1, 1, engine="vmap")


@pytest.mark.parametrize("bidirectional", [True, False])
def test_matmul_lstm_equals_nn_lstm(bidirectional):
    """Outputs and gradients (input and every weight) of the matmul LSTM equal PyTorch's LSTM kernel's."""
    torch.manual_seed(0)
    reference = nn.LSTM(6, 5, batch_first=True, bidirectional=bidirectional)
    ours = MatmulLSTM(6, 5, batch_first=True, bidirectional=bidirectional)
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(3, 7, 6, requires_grad=True)
    weight = torch.randn(3, 7, 10 if bidirectional else 5)
    outputs, grads = [], []
    for lstm in (reference, ours):
        y = lstm(x)[0]
        outputs.append(y)
        grads.append(torch.autograd.grad((y * weight).sum(), [x, *lstm.parameters()]))
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-5, atol=1e-6)
    for ours_grad, reference_grad in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(ours_grad, reference_grad, rtol=1e-5, atol=1e-6)


def test_twin_has_no_storage_and_leaves_the_network_alone():
    net = _net()
    state = copy.deepcopy(net.state_dict())
    model = twin(net)
    assert all(p.is_meta for p in model.parameters()) and isinstance(model.head.bilstm, MatmulLSTM)
    assert dict(model.named_parameters()).keys() == dict(net.named_parameters()).keys()
    assert type(net.head.bilstm) is nn.LSTM
    for key, value in net.state_dict().items():
        assert torch.equal(value, state[key])

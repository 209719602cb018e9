"""Closed-form ridge read-out (method "ridge"): refit the head's final linear layer on a listener's songs.

The network's body and the head's BiLSTM and hidden layer stay as trained; their per-segment output
z [N, d] (d = D/4, eval mode: no dropout) is computed once on the support windows, and per dimension the
read-out (w [d], b) of ``head.out`` is refitted by ridge regression shrunk toward the trained (w0, b0):

    min_w,b  sum_i (y_i - z_i w - b)^2 + lam ||w - w0||^2,    lam = s * (N / songs) * mean_j var(z_j),

the bias unpenalised (an offset is always fitted), `s` the prior's strength in songs of evidence (s = 1: the
trained weights count as much as one song of the listener's; blocks of it when there is one song). Closed
form: with r = y - z w0 - b0 centred (rc, zc), w = w0 + (zc'zc + lam I)^-1 zc' rc and
b = b0 + mean(r) - mean(z) (w - w0).
`s` is chosen per dimension from STRENGTHS by the held-out squared error: leave-one-song-out with two or
more songs, contiguous blocks of the song with one (as `auto`); DEFAULT_STRENGTH when no split is possible.
Why this read-out: a listener who weights the music's cues differently (docs/listeners.md) needs another
linear combination of what the network hears, which no output map of its prediction can give, and a few
songs determine d (= 16 in the demo model) read-out weights only with a prior to shrink toward.
`readout_episode_loss` is the same fit as PDMER meta-training's inner loop (task.inner_loop=readout, as in
R2-D2 / MetaOptNet): differentiable, so the query loss trains the features z and the prior (w0, b0).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dsaml.losses import dsaml_loss
from dsaml.meta.adaptation import HeadAdaptedNet
from dsaml.models.network import DSAMLNet

STRENGTHS = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)  # prior strengths tried, in songs
DEFAULT_STRENGTH = 1.0  # when the support cannot be split for validation
BLOCKS = 3  # one song: contiguous validation blocks
MIN_BLOCK = 8  # segments


@dataclass
class Readout:
    """A refitted read-out: weight [2, d], bias [2] (float64) and the strength chosen per dimension."""

    weight: Tensor
    bias: Tensor
    strengths: tuple[float, float]


def readout_input(head: nn.Module, encoded: Tensor) -> Tensor:
    """The input z [B, T, d] of ``head.out`` (before its dropout) from the body's output [B, T, D]."""
    return head.hidden(head.bilstm(encoded)[0])


def readout_features(net: DSAMLNet, batches: Sequence[Mapping[str, Tensor]]) -> list[tuple[Tensor, Tensor]]:
    """Per support batch (one song): (z [N, d], targets [N, 2]) float64, z the input of ``head.out`` for
    every segment of every window, computed without gradient in eval mode."""
    head = net.head
    was_training = net.training
    net.eval()
    out = []
    try:
        with torch.no_grad():
            for batch in batches:
                encoded = net.body(batch["logmel"], batch.get("global"), return_diagonal=False)["encoded"]
                z = readout_input(head, encoded)
                targets = torch.stack([batch["arousal"], batch["valence"]], -1)
                out.append(
                    (z.reshape(-1, z.shape[-1]).double(), targets.reshape(-1, 2).double().to(z.device))
                )
    finally:
        net.train(was_training)
    return out


def fit_ridge(
    z: Tensor, y: Tensor, w0: Tensor, b0: Tensor, strength: float, songs: int
) -> tuple[Tensor, Tensor]:
    """Ridge read-out of one dimension shrunk toward (w0 [d], b0 []): z [N, d], y [N] -> (w [d], b []), in
    z's dtype; differentiable in z, y, w0 and b0 (lam too: it scales with z's variance)."""
    residual = y - z @ w0 - b0
    z_mean, r_mean = z.mean(0), residual.mean()
    zc, rc = z - z_mean, residual - r_mean
    lam = strength * (len(z) / songs) * zc.var(0, unbiased=False).mean() + 1e-12
    delta = torch.linalg.solve(
        zc.T @ zc + lam * torch.eye(z.shape[1], dtype=z.dtype, device=z.device), zc.T @ rc
    )
    return w0 + delta, b0 + r_mean - z_mean @ delta


def _pieces(groups: Sequence[tuple[Tensor, Tensor]]) -> list[tuple[Tensor, Tensor]]:
    """Songs to validate over: the songs themselves with two or more, else up to BLOCKS contiguous blocks of
    the one song (a single piece when it is shorter than 2 * MIN_BLOCK)."""
    if len(groups) >= 2:
        return list(groups)
    z, y = groups[0]
    k = min(BLOCKS, len(z) // MIN_BLOCK)
    if k < 2:
        return list(groups)
    edges = [round(i * len(z) / k) for i in range(k + 1)]
    return [(z[a:b], y[a:b]) for a, b in zip(edges[:-1], edges[1:], strict=True)]


def refit_readout(
    groups: Sequence[tuple[Tensor, Tensor]],
    weight: Tensor,
    bias: Tensor,
    strengths: Sequence[float] = STRENGTHS,
) -> Readout:
    """Ridge read-out of every dimension on the support `groups` ([(z [N_g, d], y [N_g, 2])] per song), shrunk
    toward (weight [2, d], bias [2]); the strength per dimension chosen by held-out squared error."""
    weight, bias = weight.double(), bias.double()
    pieces = _pieces(groups)
    z_all = torch.cat([z for z, _ in groups])
    y_all = torch.cat([y for _, y in groups])
    new_w, new_b, chosen = [], [], []
    for dim in range(weight.shape[0]):
        best = DEFAULT_STRENGTH
        if len(pieces) >= 2:
            errors = []
            for strength in strengths:
                error = 0.0
                for held, (zh, yh) in enumerate(pieces):
                    fit_on = [p for j, p in enumerate(pieces) if j != held]
                    z = torch.cat([p[0] for p in fit_on])
                    y = torch.cat([p[1][:, dim] for p in fit_on])
                    w, b = fit_ridge(z, y, weight[dim], bias[dim], strength, len(fit_on))
                    error += float(((zh @ w + b - yh[:, dim]) ** 2).sum())
                errors.append(error)
            best = strengths[min(range(len(strengths)), key=errors.__getitem__)]
        w, b = fit_ridge(z_all, y_all[:, dim], weight[dim], bias[dim], best, len(pieces))
        new_w.append(w)
        new_b.append(b)
        chosen.append(best)
    return Readout(torch.stack(new_w), torch.stack(new_b), (chosen[0], chosen[1]))


def adapt_readout(net: DSAMLNet, batches: Sequence[Mapping[str, Tensor]]) -> HeadAdaptedNet:
    """The network with its read-out refitted on the support batches (one per song, see `refit_readout`):
    a `HeadAdaptedNet` sharing the body, with a copy of the head whose ``out`` layer is replaced. The
    original network is never modified."""
    head: nn.Module = copy.deepcopy(net.head)
    readout = refit_readout(readout_features(net, batches), head.out.weight.detach(), head.out.bias.detach())
    with torch.no_grad():
        head.out.weight.copy_(readout.weight.to(head.out.weight.dtype))
        head.out.bias.copy_(readout.bias.to(head.out.bias.dtype))
    adapted = HeadAdaptedNet(net, head.eval())
    adapted.readout_strengths = readout.strengths  # type: ignore[attr-defined]
    return adapted


def readout_episode_loss(
    net: DSAMLNet, episode: Mapping[str, Mapping[str, Tensor]], strength: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """The read-out inner loop of one PDMER episode (task.inner_loop=readout): z [B*T, d] of the support
    clips (one clip per song, with gradient, in `net`'s current mode), per dimension `fit_ridge` toward
    ``head.out``'s (w0, b0) with `strength` songs, then the DSAML loss (attention regulariser included) of
    the refitted read-out on the query clips (their z through the head's dropout, as in the forward).
    Returns (loss, scores) as `dsaml_loss`; the loss is differentiable in every parameter of `net`."""
    head = net.head
    support, query = episode["support"], episode["query"]
    encoded = net.body(support["logmel"], support.get("global"), return_diagonal=False)["encoded"]
    z = readout_input(head, encoded)
    z = z.reshape(-1, z.shape[-1])
    y = torch.stack([support["arousal"], support["valence"]], -1).reshape(-1, 2).to(z)
    songs = len(support["arousal"])
    fits = [fit_ridge(z, y[:, i], head.out.weight[i], head.out.bias[i], strength, songs) for i in range(2)]
    body = net.body(query["logmel"], query.get("global"))
    z_query = head.dropout(readout_input(head, body["encoded"]))
    out = z_query @ torch.stack([w for w, _ in fits]).T + torch.stack([b for _, b in fits])
    predicted = {"arousal": out[..., 0], "valence": out[..., 1]}
    predicted["attention_diagonal"] = body["attention_diagonal"]
    return dsaml_loss(predicted, query["arousal"], query["valence"])

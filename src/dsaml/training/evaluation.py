"""Evaluation protocols (docs/method.md, "Evaluation") on one test item, returning per-sequence scores.

An item is a whole song: ``logmel`` [T, 51, 128], ``global`` [1 or T, D_g] (optional), ``arousal`` /
``valence`` [T] (rater-averaged for DMER, the rater's own for PDMER), and for the cross-song protocol
``cross_support`` (a batch of that rater's clips from other test songs).

- dmer: predict the whole song with sliding windows, score against the averaged curve.
- pdmer_unadapted: the meta-trained network without adaptation, scored on the within-song query region.
- pdmer_within_song (the original's): adapt on the first `support_segments` segments of the rater's curve,
  predict the rest of the song, score it.
- pdmer_cross_song: adapt on `shots` clips of the rater's other test songs, predict the whole song.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from dsaml.inference import predict_song
from dsaml.meta import adapt
from dsaml.metrics import average_score, sequence_scores

METRIC_KEYS = ("arousal_ccc", "arousal_pcc", "arousal_rmse", "valence_ccc", "valence_pcc", "valence_rmse")


def scores_of(
    arousal_pred: Tensor, valence_pred: Tensor, arousal: Tensor, valence: Tensor
) -> dict[str, float]:
    """Per-sequence scores of one sequence [T] (lower-case keys of `METRIC_KEYS` plus "average")."""
    raw = sequence_scores(arousal_pred.float(), valence_pred.float(), arousal.float(), valence.float())
    out = {key.lower(): float(value) for key, value in raw.items()}
    out["average"] = float(average_score(raw))
    return out


def _slice(item: Mapping[str, Any], start: int, stop: int | None) -> dict[str, Any]:
    out = {k: item[k][start:stop] for k in ("logmel", "arousal", "valence")}
    if item.get("global") is not None:
        vectors = item["global"]
        out["global"] = vectors if len(vectors) == 1 else vectors[start:stop]
    return out


def predict(
    net: nn.Module, seq: Mapping[str, Any], window: int, stitch: str, batch_size: int
) -> tuple[Tensor, Tensor]:
    """Eval-mode prediction of one sequence with `predict_song` (sliding windows of `window` segments, one
    plain forward when shorter). Returns (arousal [T], valence [T]) on the labels' device."""
    with torch.no_grad():
        arousal, valence = predict_song(
            net,
            seq["logmel"],
            seq.get("global"),
            stride=1,
            stitch=stitch,
            batch_size=batch_size,
            window=window,
        )
    device = seq["arousal"].device
    return arousal.to(device), valence.to(device)


def _as_batch(seq: Mapping[str, Any]) -> dict[str, Any]:
    batch = {k: seq[k][None] for k in ("logmel", "arousal", "valence")}
    batch["global"] = None if seq.get("global") is None else seq["global"][None]
    return batch


def run_protocols(
    net: nn.Module,
    item: Mapping[str, Any],
    protocols: list[str],
    *,
    window: int,
    adapt_steps: int,
    inner_lr: float,
    first_order: bool,
    stitch: str,
    batch_size: int,
) -> dict[str, tuple[dict[str, float], tuple[Tensor, ...]]]:
    """Run the selected protocols on one item -> {protocol: (scores, (pred_a, pred_v, true_a, true_v))}.
    Protocols that do not apply (song too short for a query; no other songs for cross-song) are skipped."""
    results: dict[str, tuple[dict[str, float], tuple[Tensor, ...]]] = {}

    def score(name: str, model: nn.Module, seq: Mapping[str, Any]) -> None:
        pa, pv = predict(model, seq, window, stitch, batch_size)
        results[name] = (
            scores_of(pa, pv, seq["arousal"], seq["valence"]),
            (pa, pv, seq["arousal"], seq["valence"]),
        )

    n = len(item["arousal"])
    query = _slice(item, window, None) if n > window else None
    for protocol in protocols:
        if protocol == "dmer":
            score(protocol, net, item)
        elif protocol == "pdmer_unadapted" and query is not None:
            score(protocol, net, query)
        elif protocol == "pdmer_within_song" and query is not None:
            support = _as_batch(_slice(item, 0, window))
            adapted = adapt(net, support, adapt_steps, lr=inner_lr, first_order=first_order).net
            score(protocol, adapted, query)
        elif protocol == "pdmer_cross_song" and item.get("cross_support") is not None:
            adapted = adapt(net, item["cross_support"], adapt_steps, lr=inner_lr, first_order=first_order).net
            score(protocol, adapted, item)
    return results

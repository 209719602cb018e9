"""Evaluation protocols (docs/method.md, "Evaluation") on one test item, returning per-sequence scores.

An item is a whole song (`dsaml.data.batch.SongItem`): ``logmel`` [T, 51, 128], ``global`` [1 or T, D_g]
(optional), ``arousal`` / ``valence`` [T] (rater-averaged for DMER, the rater's own for PDMER), and for the
cross-song protocol ``cross_support`` (that rater's other test songs: a `ClipBatch` of their first clips, or
with ``task.cross_support=song`` the list of the whole songs).

- dmer: predict the whole song with sliding windows, score against the averaged curve.
- pdmer_unadapted: the meta-trained network without adaptation, scored on the within-song query region.
- pdmer_within_song (the original's): adapt on the first `support_segments` segments of the rater's curve,
  predict the rest of the song, score it.
- pdmer_cross_song: adapt on `shots` other test songs of the rater (their first clips, or the whole songs
  with task.cross_support=song), predict the whole song.

"Adapt" is the configured adaptation method (`dsaml.meta.AdaptationConfig`: maml, head, calibrate, none,
their combinations, or auto), the same code `dsaml-personalize` runs. With `task.meta_engine=batched` the
inner loops (maml, head) of many items' pairs run together (`run_protocols_many`, docs/meta-engine.md).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from dsaml.data.batch import (
    ClipBatch,
    SongItem,
    SongSequence,
    as_batch,
    clips_of,
    cut_windows,
    slice_sequence,
    windows_batch,
)
from dsaml.meta import (
    AUTO,
    AdaptationConfig,
    CalibrationPrior,
    Personalized,
    SlidingWindows,
    estimate_prior,
    personalize_net,
    select,
)
from dsaml.meta.adaptation import DEFAULT_META_ENGINE
from dsaml.meta.batched_adapt import personalize_many
from dsaml.meta.listener_prior import MIN_RATERS, ListenerPrior, RaterReadouts, rater_readouts
from dsaml.meta.methods import ITERATIVE
from dsaml.metrics import METRIC_KEYS, scores_of
from dsaml.training.config import PROTOCOLS
from dsaml.training.resume import TEST_PROTOCOL, step_seed

ALL_PROTOCOLS = tuple(p for names in PROTOCOLS.values() for p in names)

__all__ = ["METRIC_KEYS", "run_protocols", "scores_of"]


def personalize_on(
    net: nn.Module,
    support: list[SongSequence],
    batch: ClipBatch | None,
    adaptation: AdaptationConfig,
    predictor: SlidingWindows,
    prior: CalibrationPrior | None,
) -> Personalized:
    """The configured method on one rater's support (`select` for auto, else `personalize_net`).

    Args:
        net (nn.Module): a `DSAMLNet` (not modified).
        support (list[SongSequence]): the support sequences (logmel [T, 51, 128], arousal / valence [T]).
        batch (ClipBatch or None): the same support as one inner-loop batch; None: each sequence cut into
            windows (`personalize_net`). Not used by auto.
        adaptation (AdaptationConfig): resolved settings.
        predictor (SlidingWindows): the sliding-window settings.
        prior (CalibrationPrior or None): the calibration prior; required when a method calibrates.

    Returns:
        Personalized: the adapted network and output map.
    """
    if adaptation.method == AUTO:
        return select(net, support, adaptation, predictor, prior).personalized
    batches = None if batch is None else [batch]
    return personalize_net(net, support, adaptation, predictor, prior, batches=batches)


def run_protocols(
    net: nn.Module, item: SongItem, protocols: list[str], **settings: Any
) -> dict[str, tuple[dict[str, float], tuple[Tensor, ...]]]:
    """Run the selected protocols on one item: `run_protocols_many` of [item], with its keyword settings.

    Returns:
        dict: protocol -> (scores, (pred_a, pred_v, true_a, true_v)), as `run_protocols_many` per item.
    """
    return run_protocols_many(net, [item], protocols, **settings)[0]


def run_protocols_many(
    net: nn.Module,
    items: list[SongItem],
    protocols: list[str],
    *,
    window: int,
    adaptation: AdaptationConfig,
    stitch: str,
    batch_size: int,
    stride: int = 1,
    prior: CalibrationPrior | None = None,
    seeds: list[int] | None = None,
    engine: str = DEFAULT_META_ENGINE,
    chunk: int | None = None,
) -> list[dict[str, tuple[dict[str, float], tuple[Tensor, ...]]]]:
    """Run the selected protocols on each item.

    Protocols that do not apply (song too short for a query; no other songs for cross-song) are skipped.
    Adaptation at test time runs in train mode (dropout): each protocol reseeds torch's RNG from one draw
    made at the start of the item, so its scores do not depend on which protocols run (`StepSeed` reseeds
    per item, so neither on which items ran before).

    Args:
        net (nn.Module): a `DSAMLNet` (not modified).
        items (list[SongItem]): whole songs (logmel [T, 51, 128], arousal / valence [T], for cross-song
            ``cross_support``; see the module docstring).
        protocols (list[str]): protocols to run (of ALL_PROTOCOLS).
        window (int): segments per sliding window and the within-song support length (the task's
            support_segments); the within-song query is segments window .. T - 1.
        adaptation (AdaptationConfig): resolved (steps, lr, first_order set).
        stitch (str): stitch rule (`dsaml.inference.STITCH_RULES`).
        batch_size (int): windows per forward.
        stride (int): segments between window starts.
        prior (CalibrationPrior or None): the calibration prior, required when the method calibrates.
        seeds (list[int] or None): each item's draw (None: drawn here, one per item in turn).
        engine (str): how the within-song and cross-song protocols run an inner-loop method (maml, head and
            their _calibrate variants): "sequential" (one pair after another) or "batched" (every pair of
            the items together, `chunk` at most per call: `dsaml.meta.batched_adapt`; with dropout its draws
            are the group's, see there). Other methods run one pair at a time with either engine.
        chunk (int or None): the batched engine's pairs per call, among pairs of equal support shapes
            (None: no bound).

    Returns:
        list[dict]: per item, protocol -> (scores, (pred_a, pred_v, true_a, true_v)): scores `METRIC_KEYS`
        plus "average" as floats, the curves [T'] of the scored sequence (the whole song, or the
        within-song query), in the order of `protocols`.

    Raises:
        ValueError: an unknown protocol, or a calibrating method without a prior.
    """
    results: list[dict[str, tuple[dict[str, float], tuple[Tensor, ...]]]] = [{} for _ in items]
    predictor = SlidingWindows(window, stitch, batch_size, stride)
    if seeds is None:  # each protocol's draws: a stream of its own
        seeds = [int(torch.randint(0, 2**62, (1,))) for _ in items]
    together = engine == "batched" and adaptation.method != AUTO and adaptation.learner in ITERATIVE
    pending: list[tuple[int, str, SongSequence, list[SongSequence], ClipBatch | None]] = []

    def score(index: int, name: str, model: Personalized, seq: SongSequence) -> None:
        pa, pv = model.predict(predictor, seq)
        results[index][name] = (
            scores_of(pa, pv, seq["arousal"], seq["valence"]),
            (pa, pv, seq["arousal"], seq["valence"]),
        )

    for index, item in enumerate(items):
        n = len(item["arousal"])
        query = slice_sequence(item, window, None) if n > window else None
        for protocol in protocols:
            seed = step_seed(seeds[index], ALL_PROTOCOLS.index(protocol), stream=TEST_PROTOCOL)
            torch.manual_seed(seed)
            if protocol == "dmer":
                score(index, protocol, Personalized(net), item)
            elif protocol == "pdmer_unadapted" and query is not None:
                score(index, protocol, Personalized(net), query)
            elif (request := support_of(item, protocol, query, window)) is not None:
                target, support, batch = request
                if together:
                    pending.append((index, protocol, target, support, batch))
                else:
                    model = personalize_on(net, support, batch, adaptation, predictor, prior)
                    score(index, protocol, model, target)
    if pending:
        torch.manual_seed(step_seed(seeds[0], len(ALL_PROTOCOLS), stream=TEST_PROTOCOL))
        requests = [(support, None if batch is None else [batch]) for *_, support, batch in pending]
        for slot, model in personalize_many(net, requests, adaptation, predictor, prior, chunk):
            index, protocol, target, _, _ = pending[slot]
            score(index, protocol, model, target)
    return [{p: result[p] for p in protocols if p in result} for result in results]


def support_of(
    item: SongItem, protocol: str, query: SongSequence | None, window: int
) -> tuple[SongSequence, list[SongSequence], ClipBatch | None] | None:
    """What an adapting protocol predicts and adapts on.

    Args:
        item (SongItem): the test song.
        protocol (str): the protocol.
        query (SongSequence or None): the within-song query (segments window .. T - 1; None when the song
            has no more than `window`).
        window (int): the within-song support length in segments.

    Returns:
        (target, support, batch) or None: the sequence predicted and scored, the support sequences, and the
        support as one inner-loop batch (None: each sequence cut into windows); None when the protocol does
        not adapt or does not apply to the item.
    """
    if protocol == "pdmer_within_song" and query is not None:
        support = slice_sequence(item, 0, window)
        return query, [support], as_batch(support)
    if protocol == "pdmer_cross_song" and item.get("cross_support") is not None:
        cross = item["cross_support"]
        if isinstance(cross, list):  # whole songs of different lengths
            return item, cross, None
        return item, clips_of(cross), cross
    return None


def estimate_calibration_prior(store: Any) -> CalibrationPrior | None:
    """The empirical-Bayes calibration prior (`dsaml.meta.estimate_prior`, source "averaged") from the
    training raters of a `FeatureStore` (their curves vs each song's rater-averaged curve). Used until the
    model's own is estimated.

    Args:
        store (FeatureStore): the store.

    Returns:
        CalibrationPrior or None: the prior; None when the store has no per-rater curves or no training
        rater has two songs with usable curves.
    """
    from dsaml.data.store import StoreError

    try:
        pairs = store.rater_songs("train")
    except StoreError:
        return None
    try:
        return estimate_prior((rater, store.curves(song), store.curves(song, rater)) for rater, song in pairs)
    except ValueError:
        return None


def estimate_training_listener_prior(net: nn.Module, reader: Any, window: int) -> ListenerPrior | None:
    """The listener prior of the network from every training (rater, song) of the reader's store
    (`training_rater_readouts` pooled); None when the store has no per-rater curves or fewer than MIN_RATERS
    training raters."""
    readouts = training_rater_readouts(net, reader, window)
    return None if readouts is None else readouts.prior()


def training_rater_readouts(net: nn.Module, reader: Any, window: int) -> RaterReadouts | None:
    """Every training rater's own read-out (`dsaml.meta.listener_prior.rater_readouts`) from the reader's
    store, each song read and cut into windows of `window` segments once; None when the store has no
    per-rater curves or fewer than MIN_RATERS training raters."""
    from dsaml.data.store import StoreError

    try:
        pairs = reader.store.rater_songs("train")
    except StoreError:
        return None
    if len({rater for rater, _ in pairs}) < MIN_RATERS:
        return None
    audio: dict[str, SongItem] = {}  # each song's log-mel read once (most songs have several raters)
    windows: dict[tuple[str, int], ClipBatch] = {}  # and cut into windows once per length

    def rated(rater: str, song: str) -> tuple[str, tuple[str, int], ClipBatch]:
        if song not in audio:
            audio[song] = reader.item(song, None)
        arousal, valence = reader.store.curves(song, rater)
        key = (song, min(len(arousal), len(audio[song]["arousal"])))
        if key not in windows:
            windows[key] = windows_batch(slice_sequence(audio[song], 0, key[1]), window)
        batch = {**windows[key], "arousal": cut_windows(arousal[: key[1]], window)}
        batch["valence"] = cut_windows(valence[: key[1]], window)
        return rater, key, batch

    return rater_readouts(net, (rated(rater, song) for rater, song in pairs))


def estimate_model_prior(
    net: nn.Module, reader: Any, pairs: list[tuple[str, str]], predictor: SlidingWindows
) -> CalibrationPrior | None:
    """The calibration prior (source "model") from the network's own predictions on held-out (rater, song)
    pairs (songs or raters it did not train on), each song predicted once.

    Args:
        net (nn.Module): the network.
        reader (StoreReader): the store's items (the whole songs).
        pairs (list[tuple[str, str]]): held-out (rater, song) pairs (`DSAMLDataModule.prior_pairs`).
        predictor (SlidingWindows): the sliding-window settings.

    Returns:
        CalibrationPrior or None: the prior; None when no rater has two songs with usable curves.
    """
    predictions: dict[str, tuple] = {}  # song -> (arousal, valence) float64 arrays
    rows = []
    for rater, song in pairs:
        if song not in predictions:
            item = reader.item(song, None)
            predictions[song] = tuple(p.double().cpu().numpy() for p in predictor(net, item))
        rows.append((rater, predictions[song], reader.store.curves(song, rater)))
    try:
        return estimate_prior(rows, source="model")
    except ValueError:
        return None

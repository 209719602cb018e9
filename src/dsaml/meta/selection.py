"""method=auto: choosing an adaptation method on the listener's own songs (`select`).

Every candidate method (and step count) is scored on validation folds of the listener's support songs
(`folds`: leave-one-song-out with two or more songs, blocked k-fold inside the song with one;
`candidate_scores`), tabulated over folds (`tabulate`) and chosen by a rule (`choose`); `select` runs the
three and refits the chosen method on every song. The experiments (experiments/personalization/selection.py)
call the steps one by one to compare rules and candidate sets on the same folds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from dsaml.data.batch import SongSequence, join_pieces, windows_batch
from dsaml.meta.calibration import CalibrationPrior
from dsaml.meta.methods import (
    CLOSED_FORM,
    METHODS,
    AdaptationConfig,
    Personalized,
    SlidingWindows,
    _fit_map,
    _learn,
    moving,
    personalize_net,
)
from dsaml.metrics import scores_of

BLOCKS = 3  # one support song under `auto`: blocked k-fold validation with up to this many blocks
MIN_BLOCK = 8  # segments: a shorter block is too short to validate on

Sequence_ = SongSequence


@dataclass
class Selection:
    """What `select` tried and chose.

    Args:
        chosen (dict[str, Any]): {"method", "steps"} of the chosen candidate.
        candidates (list[dict[str, Any]]): [{"method", "steps", "score", "folds", "wins"}] (score: the mean
            validation "average" over folds; folds: the score per fold; wins: folds where it beats the
            unadapted network); empty when there was nothing to validate on.
        validation (str): how the songs were split (e.g. "leave-one-song-out", "blocked 3-fold within the
            song (...)", or why there was no validation).
        personalized (Personalized): the chosen method refitted on every (moving) song.
    """

    chosen: dict[str, Any]
    candidates: list[dict[str, Any]]
    validation: str
    personalized: Personalized = field(repr=False, default=None)  # type: ignore[assignment]


def block_edges(n: int) -> list[int] | None:
    """The boundaries of one song's validation blocks: k + 1 segment indices from 0 to `n`, k = min(BLOCKS,
    n // MIN_BLOCK) contiguous blocks of near-equal length; None when k < 2 (too short to validate on)."""
    k = min(BLOCKS, n // MIN_BLOCK)
    return [round(i * n / k) for i in range(k + 1)] if k >= 2 else None


def folds(support: Sequence[Sequence_]) -> tuple[str, list[tuple[list[Sequence_], list[Sequence_]]]]:
    """Validation splits of the listener's songs: leave-one-song-out with >= 2 songs. With one song, blocked
    k-fold inside it: k = min(BLOCKS, T // MIN_BLOCK) contiguous blocks; each fold validates on one block and
    adapts on the rest of the song (the segments before and after it, joined: still one song of evidence for
    the calibration prior). None when the song has fewer than 2 * MIN_BLOCK segments."""
    if len(support) >= 2:
        return "leave-one-song-out", [
            ([s for j, s in enumerate(support) if j != i], [support[i]]) for i in range(len(support))
        ]
    seq = support[0]
    n = len(seq["arousal"])
    edges = block_edges(n)
    if edges is None:
        return f"none (the song has {n} segments; validation needs at least {2 * MIN_BLOCK})", []
    k = len(edges) - 1
    splits = []
    for i in range(k):
        rest = [(a, b) for a, b in ((0, edges[i]), (edges[i + 1], n)) if b > a]
        splits.append(([join_pieces(seq, rest)], [join_pieces(seq, [(edges[i], edges[i + 1])])]))
    return f"blocked {k}-fold within the song ({n} segments, blocks of ~{n // k})", splits


def _score(personalized: Personalized, predictor: SlidingWindows, songs: Sequence[Sequence_]) -> float:
    values = []
    for seq in songs:
        arousal, valence = personalized.predict(predictor, seq)
        values.append(
            scores_of(arousal, valence, torch.as_tensor(seq["arousal"]), torch.as_tensor(seq["valence"]))[
                "average"
            ]
        )
    return sum(values) / len(values)


def candidate_scores(
    net: nn.Module,
    support: Sequence[Sequence_],
    validate: Sequence[Sequence_],
    config: AdaptationConfig,
    predictor: SlidingWindows,
    prior: CalibrationPrior | None,
    candidates: Sequence[str],
) -> dict[tuple[str, int], float]:
    """Validation score of none and of every candidate method (at every step count of the grid) on one fold;
    each inner loop runs once to the largest step count and is scored at every count on the way.
    listener_prior is left out when the network holds no listener prior."""
    scores: dict[tuple[str, int], float] = {}
    methods = set(candidates)
    if getattr(net, "listener_prior", None) is None:  # a checkpoint without one: not a candidate
        methods.discard("listener_prior")

    def score_all(adapted: nn.Module, learner: str | None, steps: int) -> None:
        plain = learner or "none"
        if learner is None or plain in methods:
            scores[(plain, steps)] = _score(Personalized(adapted), predictor, validate)
        calibrated = "calibrate" if learner is None else f"{learner}_calibrate"
        if calibrated in methods:
            calibration = _fit_map(adapted, support, predictor, prior, config.lag)
            scores[(calibrated, steps)] = _score(Personalized(adapted, calibration), predictor, validate)

    score_all(net, None, 0)
    grid = config.grid()
    batches = [windows_batch(s, predictor.window) for s in support]
    for learner in CLOSED_FORM:
        if {learner, f"{learner}_calibrate"} & methods:
            score_all(_learn(net, learner, batches, config, 0), learner, 0)
    for learner in ("head", "maml"):
        if not ({learner, f"{learner}_calibrate"} & methods):
            continue

        def on_step(k: int, adapted: nn.Module, learner: str = learner) -> None:
            if k in grid:
                score_all(adapted, learner, k)

        _learn(net, learner, batches, config, max(grid), on_step)
    return scores


def tabulate(per_fold: Sequence[Mapping[tuple[str, int], float]]) -> list[dict[str, Any]]:
    """Candidates from per-fold scores ({(method, steps): score} per fold, `candidate_scores`):
    [{"method", "steps", "score" (mean over folds), "folds", "wins" (folds where it beats none)}]."""
    candidates = []
    for method, steps in per_fold[0] if per_fold else {}:
        scores = [f[(method, steps)] for f in per_fold]
        wins = sum(f[(method, steps)] > f[("none", 0)] for f in per_fold)
        candidates.append(
            {
                "method": method,
                "steps": steps,
                "score": sum(scores) / len(scores),
                "folds": scores,
                "wins": wins,
            }
        )
    return candidates


def beats(candidate: Mapping[str, Any], other: Mapping[str, Any], margin: float) -> bool:
    """Whether `candidate` validates better than `other`: by more than `margin` on average and on more than
    half of the folds (both carry per-fold "folds" scores and their mean "score")."""
    wins = sum(a > b for a, b in zip(candidate["folds"], other["folds"], strict=True))
    return candidate["score"] > other["score"] + margin and 2 * wins > len(candidate["folds"])


def complexity(candidate: Mapping[str, Any]) -> tuple[int, int]:
    """Order of how much a candidate adapts: none < calibrate < ridge < ridge_calibrate < listener_prior <
    head < ... < maml_calibrate (METHODS' order), then fewer steps first."""
    return METHODS.index(candidate["method"]), int(candidate["steps"])


def start_of(candidates: Sequence[Mapping[str, Any]], start: str) -> str:
    """The method `choose` starts from: `start` when it was scored, else "none"."""
    return start if any(c["method"] == start for c in candidates) else "none"


def choose(
    candidates: Sequence[Mapping[str, Any]],
    margin: float,
    rule: str = "best",
    start: str = "none",
) -> dict[str, Any]:
    """{"method", "steps"} of the chosen candidate: the start unless a candidate beats it ("none" when
    neither the start nor "none" was scored).

    The choice starts from the `start` method's candidate (the one with the fewest steps; "none" when
    `start` was not scored, e.g. listener_prior for a checkpoint without a listener prior) and moves only
    to a candidate that `beats` it (better by more than `margin` on average and on more than half of the
    folds).
    rule "best": the best-scoring candidate among those that beat the start.
    rule "simplest": in order of `complexity`, a candidate replaces the one chosen so far (first: the start)
    only when it `beats` it: more adaptation must validate better than the less it replaces, on average and
    on most folds."""
    start = start_of(candidates, start)
    chosen = min((c for c in candidates if c["method"] == start), key=lambda c: c["steps"], default=None)
    if chosen is None:
        return {"method": "none", "steps": 0}
    if rule == "simplest":
        for candidate in sorted(candidates, key=complexity):
            if candidate is not chosen and beats(candidate, chosen, margin):
                chosen = candidate
    else:
        eligible = [c for c in candidates if c is not chosen and beats(c, chosen, margin)]
        chosen = max(eligible, key=lambda c: c["score"], default=chosen)
    return {"method": chosen["method"], "steps": chosen["steps"]}


def select(
    net: nn.Module,
    support: Sequence[Sequence_],
    config: AdaptationConfig,
    predictor: SlidingWindows,
    prior: CalibrationPrior | None = None,
    progress: Callable[[str], None] | None = None,
) -> Selection:
    """method=auto: choose an adaptation method on the listener's own songs and refit it on every song.

    Every candidate (`config.auto_methods`, or `config.auto_single` with one song, at every step count of
    `config.grid()` for the inner loops) is scored on the validation folds of the listener's songs
    (`folds`), one is chosen by `config.auto_rule` (`choose`: `config.auto_start`, or the unadapted network
    when that was not scored, unless a candidate validates better by more than `config.margin` on average
    and on more than half of the folds), and it is refitted with `personalize_net`. With
    ``config.skip_flat`` flat songs are left out (`moving`). The network is never modified.

    Args:
        net (nn.Module): a `DSAMLNet`.
        support (Sequence[SongSequence]): the listener's sequences (``logmel`` [T, 51, 128], ``global``
            [1 or T, D_g] or None, ``arousal`` / ``valence`` [T]).
        config (AdaptationConfig): resolved (`AdaptationConfig.resolve`); its method is ignored.
        predictor (SlidingWindows): how whole sequences are predicted (validation scores, the map's fit).
        prior (CalibrationPrior or None): the calibration prior; required when a candidate calibrates.
        progress (callable or None): called with a message ("validation fold i/n") before each fold.

    Returns:
        Selection: the candidates' validation scores, the choice and the refitted `Personalized`.
    """
    if config.skip_flat and len(kept := moving(support)) < len(support):
        if not kept:
            return Selection({"method": "none", "steps": 0}, [], "no song moves", Personalized(net))
        support = kept
    how, splits = folds(support)
    methods = config.auto_methods if len(support) >= 2 else config.auto_single
    per_fold = []
    for index, (fit_on, validate) in enumerate(splits):
        if progress is not None:
            progress(f"validation fold {index + 1}/{len(splits)}")
        per_fold.append(candidate_scores(net, fit_on, validate, config, predictor, prior, methods))
    candidates = tabulate(per_fold)
    chosen = choose(candidates, config.margin, config.auto_rule, config.auto_start)
    if candidates:
        how += f"; kept {start_of(candidates, config.auto_start)} unless a candidate validated better"
    final = replace(config, method=chosen["method"])
    personalized = personalize_net(net, support, final, predictor, prior, steps=chosen["steps"])
    return Selection(chosen, candidates, how, personalized)

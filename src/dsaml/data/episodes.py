"""Per-rater few-shot episodes (PDMER) and held-out splits, as pure index logic over song/rater ids.

An episode is one rater: `shots` support songs and `queries` other query songs of that rater (queries are
drawn with replacement only when the rater has too few other songs). A meta-batch is `episodes` episodes
from distinct raters (the config key `task.episodes`). Everything is a function
of (seed, step), so a resumed run replays the same stream and every DDP rank can build the same meta-batch
and keep its own share (`shard`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

_STREAMS = {"train": 0, "val": 1, "test": 2}


@dataclass(frozen=True)
class EpisodeSpec:
    """One rater's episode: song ids of the support and query clips."""

    rater: str
    support: tuple[str, ...]
    query: tuple[str, ...]


def episode_rng(seed: int, stream: str, index: int) -> np.random.Generator:
    """The generator of item `index` of `stream` ("train", "val", "test"): a pure function of the three."""
    return np.random.default_rng([int(seed), _STREAMS[stream], int(index)])


def sample_episode(
    rater: str, songs: Sequence[str], shots: int, queries: int, rng: np.random.Generator
) -> EpisodeSpec:
    """Draw `shots` support songs and `queries` other query songs of one rater."""
    if len(songs) <= shots:
        raise ValueError(f"rater {rater!r} has {len(songs)} songs; an episode needs more than shots={shots}")
    order = rng.permutation(len(songs))
    support, rest = order[:shots], order[shots:]
    if len(rest) >= queries:
        query = rest[:queries]
    else:  # too few songs: with replacement (docs/method.md, "Training")
        query = rng.choice(rest, size=queries, replace=True)
    return EpisodeSpec(rater, tuple(songs[i] for i in support), tuple(songs[i] for i in query))


class EpisodeSampler:
    """Meta-batches of `episodes` distinct raters, deterministic in (seed, step).

    songs_by_rater: rater id -> song ids that rater annotated (only raters with more than `shots` songs
    are eligible). `meta_batch(step)` costs O(episodes * songs per rater) index work, no I/O.
    """

    def __init__(
        self,
        songs_by_rater: Mapping[str, Sequence[str]],
        episodes: int,
        shots: int,
        queries: int,
        seed: int = 0,
    ) -> None:
        if episodes < 1 or shots < 1 or queries < 1:
            raise ValueError(f"episodes={episodes}, shots={shots}, queries={queries}: each must be >= 1")
        self.catalogue = {
            str(r): sorted(str(s) for s in songs)
            for r, songs in sorted(songs_by_rater.items())
            if len(songs) > shots
        }
        self.raters = sorted(self.catalogue)
        if len(self.raters) < episodes:
            raise ValueError(
                f"task.episodes={episodes} distinct raters per meta-batch, but only {len(self.raters)} "
                f"raters have more than shots={shots} songs; lower task.episodes or task.shots"
            )
        self.episodes, self.shots, self.queries, self.seed = episodes, shots, queries, seed

    def meta_batch(self, step: int, stream: str = "train") -> list[EpisodeSpec]:
        rng = episode_rng(self.seed, stream, step)
        chosen = rng.choice(len(self.raters), size=self.episodes, replace=False)
        return [
            sample_episode(self.raters[i], self.catalogue[self.raters[i]], self.shots, self.queries, rng)
            for i in chosen
        ]

    def fixed_episodes(self, n: int, stream: str = "val") -> list[EpisodeSpec]:
        """`n` evaluation episodes cycling over the raters in a fixed order (same for every call)."""
        return [
            sample_episode(
                self.raters[i % len(self.raters)],
                self.catalogue[self.raters[i % len(self.raters)]],
                self.shots,
                self.queries,
                episode_rng(self.seed, stream, i),
            )
            for i in range(n)
        ]


def cross_song_pairs(
    songs_by_rater: Mapping[str, Sequence[str]], shots: int, seed: int, stream: str
) -> tuple[list[tuple[str, str]], list[tuple[str, ...]]]:
    """Every (song, rater) pair of `songs_by_rater` (raters in its order, songs sorted) with `shots` other
    songs of the rater as its support, drawn by `episode_rng(seed, stream, pair index)` and kept in sorted
    order; () when the rater has fewer than `shots` other songs. Returns (pairs, supports)."""
    pairs: list[tuple[str, str]] = []
    supports: list[tuple[str, ...]] = []
    for rater, rater_songs in songs_by_rater.items():
        songs = sorted(rater_songs)
        for song in songs:
            others = [s for s in songs if s != song]
            rng = episode_rng(seed, stream, len(pairs))
            pairs.append((song, rater))
            picked = rng.permutation(len(others))[:shots] if len(others) >= shots else []
            supports.append(tuple(others[j] for j in sorted(picked)))
    return pairs, supports


def shard(items: Sequence, rank: int, world_size: int) -> list:
    """This process's share of a meta-batch (round-robin; every item is used by exactly one rank)."""
    return list(items[rank::world_size])


def holdout(ids: Sequence[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Split ids into (kept, held_out) with round(fraction * n) held out (at least 1 when fraction > 0
    and n > 1), chosen by `seed` independently of the input order."""
    ids = sorted(str(i) for i in ids)
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation fraction {fraction!r}: expected a value in [0, 1)")
    n_out = int(round(fraction * len(ids)))
    if fraction > 0 and len(ids) > 1:
        n_out = min(max(n_out, 1), len(ids) - 1)
    picked = set(np.random.default_rng([int(seed), 7]).permutation(len(ids))[:n_out].tolist())
    return [s for i, s in enumerate(ids) if i not in picked], [s for i, s in enumerate(ids) if i in picked]

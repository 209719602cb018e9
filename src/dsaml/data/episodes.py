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
    """One rater's episode.

    Args:
        rater (str): the rater id.
        support (tuple[str, ...]): song ids of the `shots` support clips.
        query (tuple[str, ...]): song ids of the `queries` query clips (other songs; repeats only when the
            rater has too few).
    """

    rater: str
    support: tuple[str, ...]
    query: tuple[str, ...]


def episode_rng(seed: int, stream: str, index: int) -> np.random.Generator:
    """The generator of item `index` of `stream` ("train", "val", "test"): a pure function of the three
    (KeyError for another stream)."""
    return np.random.default_rng([int(seed), _STREAMS[stream], int(index)])


def sample_episode(
    rater: str, songs: Sequence[str], shots: int, queries: int, rng: np.random.Generator
) -> EpisodeSpec:
    """Draw `shots` support songs and `queries` other query songs of one rater.

    Args:
        rater (str): the rater id.
        songs (Sequence[str]): the rater's song ids.
        shots (int): support songs.
        queries (int): query songs, drawn without replacement from the other songs, or with replacement
            when there are fewer than `queries` of them (docs/method.md, "Training").
        rng (np.random.Generator): the draw's generator (advanced).

    Returns:
        EpisodeSpec: the episode.

    Raises:
        ValueError: the rater has no more than `shots` songs.
    """
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

    `meta_batch(step)` costs O(episodes * songs per rater) index work, no I/O.

    Args:
        songs_by_rater (Mapping[str, Sequence[str]]): rater id -> song ids that rater annotated (only raters
            with more than `shots` songs are eligible).
        episodes (int): episodes (distinct raters) per meta-batch.
        shots (int): support songs per episode.
        queries (int): query songs per episode.
        seed (int): the stream's seed.

    Raises:
        ValueError: episodes, shots or queries below 1, or fewer eligible raters than `episodes`.
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
        """The meta-batch of one step: `episodes` episodes of distinct raters, a pure function of (seed,
        stream, step) (`episode_rng`); the same on every rank (each keeps its `shard`)."""
        rng = episode_rng(self.seed, stream, step)
        chosen = rng.choice(len(self.raters), size=self.episodes, replace=False)
        return [
            sample_episode(self.raters[i], self.catalogue[self.raters[i]], self.shots, self.queries, rng)
            for i in chosen
        ]

    def fixed_episodes(self, n: int, stream: str = "val") -> list[EpisodeSpec]:
        """`n` evaluation episodes cycling over the raters in sorted order, episode i drawn by
        `episode_rng(seed, stream, i)` (the same for every call)."""
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
    """The cross-song protocol's test items: each (song, rater) pair with other songs of the rater as support.

    Args:
        songs_by_rater (Mapping[str, Sequence[str]]): rater id -> song ids.
        shots (int): support songs per pair.
        seed (int): the draws' seed.
        stream (str): "train", "val" or "test" (`episode_rng`).

    Returns:
        (pairs, supports): pairs (song, rater) for every song of every rater (raters in the mapping's
        order, songs sorted); supports, per pair, `shots` other songs of the rater drawn by
        `episode_rng(seed, stream, pair index)`, in sorted order (() when the rater has fewer than `shots`
        other songs).
    """
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
    """This process's share of a meta-batch: items rank, rank + world_size, ... (round-robin; every item is
    used by exactly one rank)."""
    return list(items[rank::world_size])


def holdout(ids: Sequence[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Split ids into kept and held-out, chosen by `seed` independently of the input order.

    Args:
        ids (Sequence[str]): song or rater ids.
        fraction (float): the share held out, in [0, 1).
        seed (int): the split's seed.

    Returns:
        (kept, held_out): sorted id lists; round(fraction * n) held out, but at least 1 and at most n - 1
        when fraction > 0 and n > 1.

    Raises:
        ValueError: fraction outside [0, 1).
    """
    ids = sorted(str(i) for i in ids)
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation fraction {fraction!r}: expected a value in [0, 1)")
    n_out = int(round(fraction * len(ids)))
    if fraction > 0 and len(ids) > 1:
        n_out = min(max(n_out, 1), len(ids) - 1)
    picked = set(np.random.default_rng([int(seed), 7]).permutation(len(ids))[:n_out].tolist())
    return [s for i, s in enumerate(ids) if i not in picked], [s for i, s in enumerate(ids) if i in picked]

"""Rules applied to a catalogue: the train/test split, and the original's PDMER rater filters."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from dsaml.config import Config, choice, flag, integer, number
from dsaml.data.catalogue import Catalogue, DataError


@dataclass(frozen=True)
class SplitRule(Config):
    """How songs are split. 'id_threshold': id >= test_min_id is test (DEAM: full songs 2001..2058).
    'random': a seeded share `test_fraction` of the songs is test (PMEmo has no official split)."""

    SECTION = "data.split"

    method: str = choice("id_threshold", ("id_threshold", "random"))
    test_min_id: int = 2001
    test_fraction: float = number(0.2, low=0.0, high=1.0, low_open=True, high_open=True)
    seed: int = 0

    def assign(self, song_ids: list[str]) -> dict[str, str]:
        if self.method == "id_threshold":
            bad = [s for s in song_ids if not s.isdigit()]
            if bad:
                raise DataError(f"split.method=id_threshold needs numeric song ids; got {bad[:5]}")
            return {s: "test" if int(s) >= self.test_min_id else "train" for s in song_ids}
        order = np.random.default_rng(self.seed).permutation(len(song_ids))
        n_test = max(1, round(self.test_fraction * len(song_ids)))
        test = {song_ids[i] for i in order[:n_test]}
        return {s: "test" if s in test else "train" for s in song_ids}


@dataclass(frozen=True)
class PdmerFilter(Config):
    """The original's PDMER rater filters (docs/method.md, "Training"), configurable.

    Training ratings come only from songs with ids in [train_min_id, train_max_id]; a (rater, song) curve
    whose mean absolute deviation from its own mean over the first `flat_window` values is below
    `flat_threshold` is dropped (flat slider); then raters with fewer than `min_songs` songs are dropped.
    `apply_to_test` also applies the flat-curve filter to test ratings.
    """

    SECTION = "data.pdmer"

    train_min_id: int | None = 1001
    train_max_id: int | None = 2000
    flat_threshold: float = number(0.01, low=0)
    flat_window: int = integer(60, low=1)
    min_songs: int = integer(16, low=1)
    apply_to_test: bool = flag(False)

    def is_flat(self, arousal: np.ndarray, valence: np.ndarray) -> bool:
        """True when arousal or valence barely moves: mean |x - mean(x)| < threshold over the first window."""
        for curve in (arousal, valence):
            head = curve[: self.flat_window].astype(np.float64)
            if head.size == 0 or np.mean(np.abs(head - head.mean())) < self.flat_threshold:
                return True
        return False

    def _in_train_range(self, song_id: str) -> bool:
        if not song_id.isdigit():
            return self.train_min_id is None and self.train_max_id is None
        number = int(song_id)
        return (self.train_min_id is None or number >= self.train_min_id) and (
            self.train_max_id is None or number <= self.train_max_id
        )

    def select(self, catalogue: Catalogue) -> set[tuple[str, str]]:
        """The (rater, song) pairs used for PDMER, per the rules above."""
        kept: set[tuple[str, str]] = set()
        per_rater: dict[str, list[str]] = defaultdict(list)
        for (rater, song_id), (arousal, valence) in catalogue.ratings.items():
            split = catalogue.songs[song_id].split
            if split == "train":
                if self._in_train_range(song_id) and not self.is_flat(arousal, valence):
                    per_rater[rater].append(song_id)
            elif not (self.apply_to_test and self.is_flat(arousal, valence)):
                kept.add((rater, song_id))
        for rater, songs in per_rater.items():
            if len(songs) >= self.min_songs:
                kept.update((rater, s) for s in songs)
        return kept

"""`DSAMLDataModule`: DMER clip batches and PDMER per-rater episodes read from the HDF5 feature store.

Items are the typed dicts of `dsaml.data.batch`:
- DMER train/val: `ClipBatch`es of `segments_per_clip` segments with rater-averaged curves.
- PDMER train: one `MetaBatch` per meta-step = this rank's share of a meta-batch of `Episode`s.
- PDMER val: one `Episode` per fixed episode of a held-out rater.
- Test (docs/method.md, "Evaluation"): one `SongItem` per test song (DMER: whole song, averaged curve) or
  per (test song, rater) pair (PDMER: whole song, that rater's curve, plus `shots` clips of the rater's
  other test songs for the cross-song protocol).
The store is opened lazily in each process, so DataLoader workers never share an HDF5 handle.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from dsaml.data.batch import Episode, MetaBatch, SongItem, collate
from dsaml.data.episodes import EpisodeSampler, EpisodeSpec, cross_song_pairs, holdout, shard
from dsaml.data.store import FeatureStore, StoreError


class StoreReader:
    """The item builders shared by the datasets below, over one `FeatureStore` (which opens its HDF5 handle
    lazily in each process, so DataLoader workers never share one)."""

    def __init__(self, store: FeatureStore, global_name: str | None) -> None:
        self.store, self.global_name = store, global_name
        self.clip_segments = store.segments_per_clip

    def item(self, song: str, rater: str | None, start: int = 0, stop: int | None = None) -> SongItem:
        """Segments [start, stop) of one song with its curves (rater None = averaged), aligned to
        min(label length, segment count)."""
        store = self.store
        arousal, valence = store.curves(song, rater)
        length = min(len(arousal), store.n_segments(song))
        stop = length if stop is None else min(stop, length)
        if stop <= start:
            raise ValueError(f"song {song!r}: no labelled segments in [{start}, {stop}) (length {length})")
        out: dict[str, Any] = {
            "logmel": torch.from_numpy(np.ascontiguousarray(store.logmel(song, start, stop))),
            "arousal": torch.from_numpy(np.asarray(arousal[start:stop], dtype=np.float32)),
            "valence": torch.from_numpy(np.asarray(valence[start:stop], dtype=np.float32)),
            "song": song,
        }
        for key in ("logmel", "arousal", "valence"):  # a damaged store: fail here, naming the song
            if not bool(torch.isfinite(out[key]).all()):
                raise StoreError(
                    f"{store.path}: song {song!r} has non-finite (NaN/inf) {key} values in segments "
                    f"[{start}, {stop}); check the store with dsaml-preprocess verify=true and rebuild it"
                )
        if self.global_name is not None:
            vectors = np.asarray(store.global_vectors(self.global_name, song), dtype=np.float32)
            out["global"] = torch.from_numpy(vectors if len(vectors) == 1 else vectors[start:stop])
        return out  # type: ignore[return-value]

    def clip(self, song: str, rater: str | None = None) -> SongItem:
        return self.item(song, rater, 0, self.clip_segments)


class _ReaderDataset(Dataset):
    """Items read from the store, one per key of a fixed list (a subclass's `__getitem__` reads key i)."""

    def __init__(self, reader: StoreReader, keys: Sequence) -> None:
        self.reader, self.keys = reader, list(keys)

    def __len__(self) -> int:
        return len(self.keys)


class ClipDataset(_ReaderDataset):
    """Training/validation clips of songs (the keys) with rater-averaged curves (DMER)."""

    def __getitem__(self, index: int) -> SongItem:
        return self.reader.clip(self.keys[index])


def _episode(reader: StoreReader, spec: EpisodeSpec) -> Episode:
    support = collate([reader.clip(s, spec.rater) for s in spec.support])
    query = collate([reader.clip(s, spec.rater) for s in spec.query])
    return {
        "rater": spec.rater,
        "support": support,
        "query": query,
        "songs": list(spec.support) + list(spec.query),
    }


class MetaBatchDataset(Dataset):
    """Index = global meta-step; item = this rank's share of that step's meta-batch. Any step index is
    valid; the length (`steps_per_epoch`) only matters to samplers that enumerate the dataset (e.g.
    Lightning's `overfit_batches`, which then replays steps 0, 1, ...)."""

    def __init__(
        self,
        reader: StoreReader,
        sampler: EpisodeSampler,
        steps_per_epoch: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.reader, self.sampler, self.rank, self.world_size = reader, sampler, rank, world_size
        self.steps_per_epoch = steps_per_epoch

    def __len__(self) -> int:
        return self.steps_per_epoch

    def __getitem__(self, step: int) -> MetaBatch:
        specs = shard(self.sampler.meta_batch(step), self.rank, self.world_size)
        return {
            "step": step,
            "episodes_per_step": self.sampler.episodes,
            "episodes": [_episode(self.reader, spec) for spec in specs],
        }


class StepSampler(Sampler[int]):
    """Yields global meta-steps: at each new iterator, `steps_per_epoch` steps from the trainer's current
    global step on. A run resumed from any checkpoint therefore replays exactly the episodes an
    uninterrupted run would have seen (Lightning's own `set_epoch` is not reliable after a resume)."""

    def __init__(self, steps_per_epoch: int, first_step: Callable[[], int]) -> None:
        self.steps_per_epoch, self.first_step = steps_per_epoch, first_step

    def __iter__(self):
        start = int(self.first_step())
        return iter(range(start, start + self.steps_per_epoch))

    def __len__(self) -> int:
        return self.steps_per_epoch


class ShuffleSampler(Sampler[int]):
    """A permutation of range(n) drawn from (seed, epoch), this rank's round-robin share (padded by
    wrapping so every rank gets the same count). The epoch is read from the trainer at each new iterator."""

    def __init__(
        self, n: int, seed: int, epoch: Callable[[], int], rank: int = 0, world_size: int = 1
    ) -> None:
        self.n, self.seed, self.epoch, self.rank, self.world_size = n, seed, epoch, rank, world_size

    def __iter__(self):
        order = np.random.default_rng([self.seed, 11, int(self.epoch())]).permutation(self.n).tolist()
        total = -(-self.n // self.world_size) * self.world_size
        order = (order * (total // max(self.n, 1) + 1))[:total]
        return iter(order[self.rank :: self.world_size])

    def __len__(self) -> int:
        return -(-self.n // self.world_size)


class EpisodeDataset(_ReaderDataset):
    """Fixed evaluation episodes (the keys: `EpisodeSpec`s; PDMER validation on held-out raters)."""

    def __getitem__(self, index: int) -> Episode:
        return {"index": index, **_episode(self.reader, self.keys[index])}


class SongDataset(Dataset):
    """Whole test songs (DMER: averaged curves; PDMER: one (song, rater) pair per item, with `shots` other
    test songs of the rater as the cross-song protocol's support: ``cross_support`` is a collated batch of
    their first clips (whole_support False) or the list of the whole songs (True))."""

    def __init__(
        self,
        reader: StoreReader,
        pairs: Sequence[tuple[str, str | None]],
        cross_support: Sequence[tuple[str, ...]] | None = None,
        whole_support: bool = False,
    ) -> None:
        self.reader, self.pairs, self.cross_support = reader, list(pairs), cross_support
        self.whole_support = whole_support

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> SongItem:
        song, rater = self.pairs[index]
        item: SongItem = {"index": index, "rater": rater, **self.reader.item(song, rater)}
        if self.cross_support is not None and self.cross_support[index]:
            songs = self.cross_support[index]
            item["cross_support"] = (
                [self.reader.item(s, rater) for s in songs]
                if self.whole_support
                else collate([self.reader.clip(s, rater) for s in songs])
            )
        return item


class DSAMLDataModule(L.LightningDataModule):
    """Reads the feature store at `store` for `task` ("dmer" | "pdmer").

    batch_size: DMER clips per batch. shots / queries: PDMER episode shape; episodes: episodes (distinct
    raters) per meta-batch (config `task.episodes`). val_fraction: share of training songs (DMER) or raters
    (PDMER) held out for validation (never the test set). steps_per_epoch: PDMER meta-batches per epoch
    (validation runs after each). val_episodes: PDMER validation episodes (config `task.val_episodes`).
    global_name: feature-store vectors passed as the network's global context (None when the network
    builds its own). seed: the episode stream and the held-out split. cross_support: the
    cross-song protocol adapts on each support song's first clip ("clip") or the whole song ("song").
    """

    def __init__(
        self,
        store: str,
        task: str = "dmer",
        batch_size: int = 15,
        shots: int = 1,
        queries: int = 15,
        episodes: int = 16,
        val_fraction: float = 0.1,
        steps_per_epoch: int = 10,
        val_episodes: int = 16,
        global_name: str | None = None,
        seed: int = 0,
        num_workers: int = 0,
        cross_song: bool = True,
        cross_support: str = "clip",
    ) -> None:
        super().__init__()
        if task not in ("dmer", "pdmer"):
            raise ValueError(f"task={task!r} is not one of dmer, pdmer")
        if not Path(store).is_file():
            raise FileNotFoundError(
                f"feature store {store} does not exist; build it with `dsaml-preprocess data=<name> "
                f"paths.store={store}` or set paths.store"
            )
        self.store_path, self.task = str(store), task
        self.batch_size, self.shots, self.queries, self.episodes = batch_size, shots, queries, episodes
        self.val_fraction, self.steps_per_epoch = val_fraction, steps_per_epoch
        self.val_episodes = val_episodes
        self.global_name, self.seed, self.num_workers = global_name, seed, num_workers
        if cross_support not in ("clip", "song"):
            raise ValueError(f"cross_support={cross_support!r} is not one of clip, song")
        self.cross_song, self.cross_support = cross_song, cross_support
        self._reader: StoreReader | None = None
        self.rank, self.world_size = 0, 1

    # ------------------------------------------------------------------ catalogue
    @property
    def reader(self) -> StoreReader:
        if self._reader is None:
            self._reader = StoreReader(FeatureStore(self.store_path), self.global_name)
        return self._reader

    @property
    def feature_config(self) -> dict:
        return dict(self.reader.store.feature_config)

    def setup(self, stage: str | None = None) -> None:
        if self.trainer is not None:
            self.rank, self.world_size = self.trainer.global_rank, self.trainer.world_size
        if stage == "test":  # test items come from the test split alone (`test_dataloader`)
            return
        store = self.reader.store
        if self.task == "dmer":
            self.train_songs, self.val_songs = holdout(store.song_ids("train"), self.val_fraction, self.seed)
            if not self.train_songs:
                raise ValueError(f"feature store {self.store_path} has no training songs")
        else:
            songs_of = store.songs_by_rater("train")
            train_raters, self.val_raters = holdout(list(songs_of), self.val_fraction, self.seed)
            catalogue = {r: songs_of[r] for r in train_raters}
            self.sampler = EpisodeSampler(catalogue, self.episodes, self.shots, self.queries, self.seed)
            self.val_sampler = None
            if self.val_raters and self.val_episodes > 0:
                val_catalogue = {r: songs_of[r] for r in self.val_raters}
                self.val_sampler = EpisodeSampler(val_catalogue, 1, self.shots, self.queries, self.seed)

    def _loader(self, dataset: Dataset, **kwargs: Any) -> DataLoader:
        return DataLoader(
            dataset, num_workers=self.num_workers, persistent_workers=self.num_workers > 0, **kwargs
        )

    def _distributed(self, dataset: Dataset, shuffle: bool) -> DistributedSampler | None:
        if self.world_size == 1:
            return None
        return DistributedSampler(dataset, self.world_size, self.rank, shuffle=shuffle, seed=self.seed)

    # ------------------------------------------------------------------ loaders
    def train_dataloader(self) -> DataLoader:
        if self.task == "dmer":
            dataset = ClipDataset(self.reader, self.train_songs)
            sampler = ShuffleSampler(
                len(dataset), self.seed, self._trainer_value("current_epoch"), self.rank, self.world_size
            )
            return self._loader(dataset, batch_size=self.batch_size, sampler=sampler, collate_fn=collate)
        dataset = MetaBatchDataset(
            self.reader, self.sampler, self.steps_per_epoch, self.rank, self.world_size
        )
        return self._loader(
            dataset,
            batch_size=None,
            sampler=StepSampler(self.steps_per_epoch, self._trainer_value("global_step")),
        )

    def _trainer_value(self, name: str) -> Callable[[], int]:
        """Reads trainer.<name> when called (0 without a trainer)."""
        return lambda: getattr(self.trainer, name, 0) if self.trainer is not None else 0

    def val_dataloader(self) -> DataLoader | list:
        if self.task == "dmer":
            if not self.val_songs:
                return []
            dataset = ClipDataset(self.reader, self.val_songs)
            return self._loader(
                dataset,
                batch_size=self.batch_size,
                collate_fn=collate,
                sampler=self._distributed(dataset, shuffle=False),
            )
        if self.val_sampler is None:
            return []
        dataset = EpisodeDataset(self.reader, self.val_sampler.fixed_episodes(self.val_episodes))
        return self._loader(dataset, batch_size=None, sampler=self._distributed(dataset, shuffle=False))

    def prior_pairs(self) -> list[tuple[str, str]]:
        """(rater, song) pairs held out from training, for the model's calibration prior: DMER, every training
        rater of each validation song; PDMER, every training song of each validation rater. Empty without a
        validation split or per-rater curves."""
        store = self.reader.store
        try:
            pairs = store.rater_songs("train")
        except StoreError:
            return []
        if self.task == "dmer":
            held_out = set(self.val_songs)
            return [(r, s) for r, s in pairs if s in held_out]
        held_out = set(self.val_raters)
        return [(r, s) for r, s in pairs if r in held_out]

    def test_pairs(self) -> tuple[list[tuple[str, str | None]], list[tuple[str, ...]] | None]:
        """Test items (docs/method.md, "Evaluation"): DMER (song, None); PDMER (song, rater) with cross-song
        support."""
        store = self.reader.store
        if self.task == "dmer":
            pairs: list[tuple[str, str | None]] = [(s, None) for s in sorted(store.song_ids("test"))]
            support = None
        else:
            pairs, support = cross_song_pairs(store.songs_by_rater("test"), self.shots, self.seed, "test")
            if not self.cross_song:
                support = [() for _ in pairs]
        return pairs, support

    def test_dataloader(self) -> DataLoader:
        pairs, support = self.test_pairs()
        if not pairs:
            raise ValueError(f"feature store {self.store_path} has no test items for task={self.task}")
        dataset = SongDataset(self.reader, pairs, support, whole_support=self.cross_support == "song")
        return self._loader(dataset, batch_size=None, sampler=self._distributed(dataset, shuffle=False))

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
    lazily in each process, so DataLoader workers never share one).

    Args:
        store (FeatureStore): the store read.
        global_name (str or None): the stored global vectors each item carries as ``global``; None: none.
    """

    def __init__(self, store: FeatureStore, global_name: str | None) -> None:
        self.store, self.global_name = store, global_name
        self.clip_segments = store.segments_per_clip

    def item(self, song: str, rater: str | None, start: int = 0, stop: int | None = None) -> SongItem:
        """Segments [start, stop) of one song with its curves, cut to the labelled length.

        Args:
            song (str): a song id.
            rater (str or None): whose curves (None: the rater average).
            start (int): first segment.
            stop (int or None): one past the last segment, capped at the labelled length min(label length,
                segment count); None: that length.

        Returns:
            SongItem: logmel [T', 51, 128], arousal / valence [T'] float32 tensors (T' = stop - start),
            ``song``, and ``global`` float32 [1 or T', D] with a global_name.

        Raises:
            ValueError: no labelled segment in [start, stop).
            StoreError: a non-finite feature or label value in the range (a damaged store).
            KeyError: unknown song, the rater has no curves for it, or no such global vectors.
        """
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
        """The song's training clip: its first `segments_per_clip` segments (fewer when its labelled length
        is shorter); see `item`."""
        return self.item(song, rater, 0, self.clip_segments)


class _ReaderDataset(Dataset):
    """Items read from the store, one per key of a fixed list (a subclass's `__getitem__` reads key i)."""

    def __init__(self, reader: StoreReader, keys: Sequence) -> None:
        self.reader, self.keys = reader, list(keys)

    def __len__(self) -> int:
        return len(self.keys)


class ClipDataset(_ReaderDataset):
    """Training/validation clips of songs with rater-averaged curves (DMER).

    Args:
        reader (StoreReader): the store.
        keys (Sequence[str]): song ids; item i is the clip of song i (`StoreReader.clip`).
    """

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
    Lightning's `overfit_batches`, which then replays steps 0, 1, ...).

    Args:
        reader (StoreReader): the store.
        sampler (EpisodeSampler): the episode stream (`EpisodeSampler.meta_batch`).
        steps_per_epoch (int): the dataset's length.
        rank (int): this process's rank.
        world_size (int): processes sharing each meta-batch (`shard`).

    Each item is a `MetaBatch`: "step", "episodes_per_step" (the whole meta-batch's size) and "episodes"
    (this rank's `Episode`s: support logmel [shots, W, 51, 128] and query [queries, W, 51, 128] clip
    batches, W the shortest clip's labelled length, at most segments_per_clip).
    """

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
    uninterrupted run would have seen (Lightning's own `set_epoch` is not reliable after a resume).

    Args:
        steps_per_epoch (int): steps per iterator.
        first_step (Callable[[], int]): called at each new iterator: the first step (the trainer's
            global_step).
    """

    def __init__(self, steps_per_epoch: int, first_step: Callable[[], int]) -> None:
        self.steps_per_epoch, self.first_step = steps_per_epoch, first_step

    def __iter__(self):
        start = int(self.first_step())
        return iter(range(start, start + self.steps_per_epoch))

    def __len__(self) -> int:
        return self.steps_per_epoch


class ShuffleSampler(Sampler[int]):
    """A permutation of range(n) drawn from (seed, epoch), this rank's round-robin share (padded by
    wrapping so every rank gets the same count). The epoch is read from the trainer at each new iterator.

    Args:
        n (int): the dataset's length.
        seed (int): the run's seed.
        epoch (Callable[[], int]): called at each new iterator: the current epoch.
        rank (int): this process's rank.
        world_size (int): processes; each yields ceil(n / world_size) indices.
    """

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
    """Fixed evaluation episodes (PDMER validation on held-out raters).

    Args:
        reader (StoreReader): the store.
        keys (Sequence[EpisodeSpec]): the episodes; item i is episode i read as an `Episode` (support and
            query clip batches, as in `MetaBatchDataset`) with "index" i.
    """

    def __getitem__(self, index: int) -> Episode:
        return {"index": index, **_episode(self.reader, self.keys[index])}


class SongDataset(Dataset):
    """Whole test songs (DMER: averaged curves; PDMER: one (song, rater) pair per item, with `shots` other
    test songs of the rater as the cross-song protocol's support: ``cross_support`` is a collated batch of
    their first clips (whole_support False) or the list of the whole songs (True)).

    Args:
        reader (StoreReader): the store.
        pairs (Sequence[tuple[str, str or None]]): (song, rater) per item; rater None: averaged curves.
        cross_support (Sequence[tuple[str, ...]] or None): per item, the support songs of the cross-song
            protocol (empty: none); None: no item has any.
        whole_support (bool): support as whole songs (list of `SongItem`s) rather than a `ClipBatch` of
            their first clips.

    Each item is a `SongItem`: the whole song (logmel [T, 51, 128], arousal / valence [T]) with "index",
    "rater" and, when it has support songs, "cross_support".
    """

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
    """Reads the feature store at `store` for `task` (`dsaml.training.run.datamodule_from` builds it from
    the config).

    Args:
        store (str): the feature store file.
        task (str): "dmer" (clip batches, averaged curves) or "pdmer" (per-rater episodes).
        batch_size (int): DMER clips per batch.
        shots (int): PDMER support clips per episode (the cross-song protocol: the rater's other songs
            adapted on).
        queries (int): PDMER query clips per episode.
        episodes (int): PDMER episodes (distinct raters) per meta-batch (config `task.episodes`).
        val_fraction (float): share of training songs (DMER) or raters (PDMER) held out for validation
            (never the test set), in [0, 1).
        steps_per_epoch (int): PDMER meta-batches per epoch (validation runs after each).
        val_episodes (int): PDMER validation episodes (config `task.val_episodes`; 0: none).
        global_name (str or None): feature-store vectors passed as the network's global context (None when
            the network builds its own).
        seed (int): the episode stream and the held-out split.
        num_workers (int): DataLoader worker processes (0: in the main process).
        cross_song (bool): PDMER test items carry the cross-song protocol's support songs.
        cross_support (str): the cross-song protocol adapts on each support song's first clip ("clip") or
            the whole song ("song").

    Raises:
        ValueError: task or cross_support not among the allowed values.
        FileNotFoundError: no store file.
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
        """The store's `StoreReader`, opened on first use (StoreError when the store is unreadable)."""
        if self._reader is None:
            self._reader = StoreReader(FeatureStore(self.store_path), self.global_name)
        return self._reader

    @property
    def feature_config(self) -> dict:
        """The store's feature settings (`FeatureStore.feature_config`)."""
        return dict(self.reader.store.feature_config)

    def setup(self, stage: str | None = None) -> None:
        """Split the training songs (DMER) or raters (PDMER) into training and validation and build the
        episode samplers; nothing for stage "test". Takes rank and world size from the trainer.

        Raises:
            ValueError: DMER without training songs; PDMER with fewer eligible raters than `episodes`
                (`EpisodeSampler`).
            StoreError: PDMER on a store without per-rater curves.
        """
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
        """DMER: `ClipBatch`es of `batch_size` training clips, reshuffled each epoch (`ShuffleSampler`);
        PDMER: one `MetaBatch` per step, `steps_per_epoch` steps from the trainer's global step on
        (`StepSampler`)."""
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
        """DMER: `ClipBatch`es of the validation songs' clips; PDMER: `val_episodes` fixed `Episode`s of the
        validation raters; [] when there is no validation split (or val_episodes is 0)."""
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
        validation split or per-rater curves. Call after `setup`.

        Returns:
            list[tuple[str, str]]: (rater, song) pairs kept by the PDMER filters, by rater, then in store
            order.
        """
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
        """Test items (docs/method.md, "Evaluation").

        Returns:
            (pairs, supports): DMER: (song, None) per test song, sorted, and supports None; PDMER: (song,
            rater) per test curve and each pair's `shots` other test songs of the rater (`cross_song_pairs`;
            () when the rater has too few, and for every pair without cross_song).

        Raises:
            StoreError: PDMER on a store without per-rater curves.
        """
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
        """One `SongItem` per `test_pairs` pair (`SongDataset`), unbatched; ValueError when there are none."""
        pairs, support = self.test_pairs()
        if not pairs:
            raise ValueError(f"feature store {self.store_path} has no test items for task={self.task}")
        dataset = SongDataset(self.reader, pairs, support, whole_support=self.cross_support == "song")
        return self._loader(dataset, batch_size=None, sampler=self._distributed(dataset, shuffle=False))

"""The HDF5 feature store: one file per (dataset, feature config).

Layout (N songs, M (rater, song) curves; string columns are UTF-8):
    /                      attrs: format, dsaml_version, dataset, dtype, segments_per_clip, feature_config,
                                  data_config, annotation_fingerprints, failures, issues, notes (JSON strings)
    /songs/<column>        [N] id, split, mode, audio_path, fingerprint (str); duration_s (f8);
                                  source_rate, n_segments (i4); source_channels (i1); missing_fraction (f4);
                                  offset (i8, first row in /features/logmel)
    /features/logmel       [sum T, 51, 128] float16 (or float32), chunked along segments
    /curves/averaged/      values [sum, 2] f4 (arousal, valence); offset, length [N] i8 (rows as /songs)
    /curves/raters/        rater, song [M] str; pdmer [M] bool; values [sum, 2] f4; offset, length [M] i8
    /global/<name>/<song>  [1 or T, D] f4 precomputed global-context vectors (added later by an encoder)

`FeatureStore` reads it (lazily, one handle per process, so it is safe in forked DataLoader workers) and
checks itself (`verify`: table lengths, offsets and counts; with `full=True` also that every feature and
label is finite); `FeatureStoreWriter` creates it and adds global-context vectors. `store_lock` is the
exclusive lock every writer of a store (and of its `.parts` folder) holds for its whole run.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

import dsaml

FORMAT = 1
DTYPES = ("float16", "float32")
COMPRESSIONS = ("none", "lzf", "gzip")
STR = h5py.string_dtype()
SONG_COLUMNS = {  # name -> numpy dtype (None: string)
    "id": None,
    "split": None,
    "mode": None,
    "audio_path": None,
    "fingerprint": None,
    "duration_s": np.float64,
    "source_rate": np.int32,
    "source_channels": np.int8,
    "missing_fraction": np.float32,
    "n_segments": np.int32,
    "offset": np.int64,
}


class StoreError(RuntimeError):
    """The store file is missing, incomplete or does not hold what was asked for."""


@contextmanager
def store_lock(store: str | Path, purpose: str = "dsaml-preprocess") -> Iterator[str | None]:
    """Hold the exclusive lock `<store>.lock` for the block; yields a note when a stale lock was found.

    The lock is an OS file lock (released by the kernel when its holder dies, kill -9 included); the file
    records the holder (pid, host, purpose, start time) for the message a second writer gets:
    StoreError naming that holder. A lock file left by a dead run is reported as stale and taken over.

    Args:
        store (str or Path): the store file (it need not exist; its folder is created).
        purpose (str): what the holder is doing, shown to a second writer.

    Yields:
        str or None: a note that a stale lock was taken over (naming its old holder), else None.

    Raises:
        StoreError: another process holds the lock (the message names it).
    """
    path = Path(store)
    lock_path = path.with_name(path.name + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(lock_path, "a+")  # noqa: SIM115 (held for the whole block)
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise StoreError(
                f"{path} is being written by another run ({_holder(lock_path)}); wait for it to finish "
                f"or stop it (its lock: {lock_path})"
            ) from None
        handle.seek(0)
        previous = handle.read().strip()
        note = (
            f"stale lock of a run that did not finish ({_describe_holder(previous)}) taken over"
            if previous
            else None
        )
        handle.seek(0)
        handle.truncate()
        handle.write(
            json.dumps(
                {"pid": os.getpid(), "host": socket.gethostname(), "purpose": purpose, "since": time.time()}
            )
        )
        handle.flush()
        try:
            yield note
        finally:
            handle.seek(0)
            handle.truncate()
            handle.flush()
    finally:
        handle.close()  # releases the lock


def _holder(lock_path: Path) -> str:
    try:
        return _describe_holder(lock_path.read_text().strip())
    except OSError:
        return "holder unknown"


def _describe_holder(text: str) -> str:
    try:
        info = json.loads(text)
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info["since"])))
        return f"{info['purpose']}, pid {info['pid']} on host {info['host']}, since {since}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown"


def _dump(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


@dataclass
class SongRecord:
    """What the writer stores for one song (`FeatureStoreWriter.add_song`): log-mel and audio facts.

    Args:
        id (str): the song id.
        split (str): "train" or "test".
        mode (str): how its features were cut: "clip" (a fixed number of segments) or "song" (every whole
            segment).
        audio_path (str): the audio file it was made from.
        fingerprint (str): the decoded audio's fingerprint.
        duration_s (float): decoded duration in seconds.
        source_rate (int): the file's sample rate in Hz.
        source_channels (int): the file's channel count.
        missing_fraction (float): the share of the clip zero-padded past the audio's end (0 in song mode).
        logmel (np.ndarray): [T, F=51, M=128] float32, T segments of 0.5 s.
    """

    id: str
    split: str
    mode: str
    audio_path: str
    fingerprint: str
    duration_s: float
    source_rate: int
    source_channels: int
    missing_fraction: float
    logmel: np.ndarray


@dataclass(frozen=True)
class StoreLayout:
    """How the log-mel features are laid out on disk (`FeatureStoreWriter.create`).

    Args:
        dtype (str): element dtype, one of DTYPES.
        chunk_segments (int): segments per HDF5 chunk (not checked here; the preprocess config checks it).
        compression (str): the chunk filter, one of COMPRESSIONS (gzip with byte shuffling).

    Raises:
        ValueError: dtype or compression not among the allowed values.
    """

    dtype: str = "float16"
    chunk_segments: int = 16
    compression: str = "none"

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype={self.dtype!r}: allowed values {list(DTYPES)}")
        if self.compression not in COMPRESSIONS:
            raise ValueError(f"compression={self.compression!r}: allowed values {list(COMPRESSIONS)}")


class FeatureStoreWriter:
    """Creates a store (`create`, `add_song`, `finish`) or opens one to add global vectors (`__init__`).

    HDF5 allows no writer while the same process holds the file open for reading: close any
    `FeatureStore` of this file (`.close()`) before opening a writer on it. A context manager (closes the
    file on exit).

    Args:
        path (str or Path): an existing store file, opened read-write.

    Raises:
        StoreError: the file does not exist or cannot be opened for writing.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise StoreError(f"feature store not found: {self.path}")
        try:
            self._file = h5py.File(self.path, "r+")
        except OSError as exc:
            raise StoreError(
                f"{self.path}: cannot open for writing ({exc}); close every FeatureStore reading "
                "it in this process first, and check no other process is writing it"
            ) from exc
        self._rows: list[dict[str, Any]] = []
        self._offset = 0

    @classmethod
    def create(
        cls,
        path: str | Path,
        *,
        dataset: str,
        feature_config: Mapping[str, Any],
        segments_per_clip: int,
        segment_shape: tuple[int, int],
        layout: StoreLayout | None = None,
    ) -> FeatureStoreWriter:
        """Start a new store at `path` (overwritten; its folder is created); add songs with `add_song`, then
        `finish`.

        Args:
            path (str or Path): the store file.
            dataset (str): the dataset's name (the `dataset` attribute).
            feature_config (Mapping): the feature settings (`FeatureConfig.to_dict`), stored as JSON.
            segments_per_clip (int): segments per training clip of the dataset.
            segment_shape (tuple[int, int]): (frames, mels) of one segment, (51, 128) by default settings.
            layout (StoreLayout or None): dtype, chunking and compression; None: `StoreLayout()`.

        Returns:
            FeatureStoreWriter: open on the new, still incomplete store (attribute complete=False).
        """
        layout = layout or StoreLayout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(path, "w") as handle:
            handle.attrs.update(
                format=FORMAT,
                dsaml_version=dsaml.__version__,
                dataset=dataset,
                dtype=layout.dtype,
                segments_per_clip=int(segments_per_clip),
                complete=False,
                feature_config=_dump(dict(feature_config)),
            )
            handle.create_dataset(
                "features/logmel",
                shape=(0, *segment_shape),
                maxshape=(None, *segment_shape),
                dtype=layout.dtype,
                chunks=(layout.chunk_segments, *segment_shape),
                compression=None if layout.compression == "none" else layout.compression,
                shuffle=layout.compression == "gzip",
            )
        return cls(path)

    def add_song(self, record: SongRecord) -> None:
        """Append one song's log-mel (cast to the store dtype) and remember its catalogue row.

        Args:
            record (SongRecord): the song; its log-mel [T, F, M] must match the store's segment shape.

        Raises:
            ValueError: the log-mel's segment shape is not the store's.
        """
        logmel = self._file["features/logmel"]
        if record.logmel.shape[1:] != logmel.shape[1:]:
            raise ValueError(
                f"song {record.id}: log-mel shape {record.logmel.shape}, store expects "
                f"[T, {logmel.shape[1]}, {logmel.shape[2]}]"
            )
        n = record.logmel.shape[0]
        logmel.resize(self._offset + n, axis=0)
        logmel[self._offset : self._offset + n] = record.logmel.astype(logmel.dtype)
        row = {name: getattr(record, name) for name in SONG_COLUMNS if name not in ("n_segments", "offset")}
        self._rows.append({**row, "n_segments": n, "offset": self._offset})  # features are not kept in memory
        self._offset += n

    def finish(
        self,
        *,
        averaged: Mapping[str, tuple[np.ndarray, np.ndarray]],
        ratings: Mapping[tuple[str, str], tuple[np.ndarray, np.ndarray]],
        pdmer_pairs: Iterable[tuple[str, str]],
        per_rater: bool,
        attrs: Mapping[str, Any],
    ) -> None:
        """Write the catalogue tables (songs in the order added) and curves, store attrs, mark complete.

        Args:
            averaged (Mapping): song id -> rater-averaged (arousal [T], valence [T]); every added song
                must have an entry (KeyError otherwise).
            ratings (Mapping): (rater, song) -> that rater's (arousal [T], valence [T]); pairs of songs
                not added are dropped, the rest stored by rater, then in song order.
            pdmer_pairs (Iterable[tuple[str, str]]): the (rater, song) pairs kept by the PDMER filters.
            per_rater (bool): whether the dataset has per-rater curves at all.
            attrs (Mapping): more store attributes; values other than int, float, str and bool are stored
                as JSON.
        """
        handle = self._file
        ids = [row["id"] for row in self._rows]
        for name, dtype in SONG_COLUMNS.items():
            handle.create_dataset(
                f"songs/{name}", data=np.asarray([row[name] for row in self._rows], dtype=dtype or STR)
            )
        _write_curves(handle.create_group("curves/averaged"), [averaged[s] for s in ids])
        order = {s: i for i, s in enumerate(ids)}
        keys = sorted((k for k in ratings if k[1] in order), key=lambda k: (k[0], order[k[1]]))
        group = handle.create_group("curves/raters")
        group.attrs["available"] = per_rater
        _write_curves(group, [ratings[k] for k in keys])
        pairs = set(pdmer_pairs)
        group.create_dataset("rater", data=np.asarray([k[0] for k in keys], dtype=STR))
        group.create_dataset("song", data=np.asarray([k[1] for k in keys], dtype=STR))
        group.create_dataset("pdmer", data=np.asarray([k in pairs for k in keys], dtype=bool))
        handle.attrs.update(
            {
                key: value if isinstance(value, (int, float, str, bool)) else _dump(value)
                for key, value in attrs.items()
            }
        )
        handle.attrs["complete"] = True
        handle.flush()

    def add_global_vectors(
        self, name: str, song_id: str | int, array: np.ndarray, attrs: Mapping[str, Any] | None = None
    ) -> None:
        """Store precomputed global-context vectors under /global/<name>/<song_id>, float32 (replacing any).

        Args:
            name (str): the vectors' name (e.g. the encoder's).
            song_id (str or int): a song in the store.
            array (np.ndarray): [1, D] (one per clip) or [T, D] (one per segment window, T = n_segments of
                the song); all songs of one name share D.
            attrs (Mapping or None): attributes for /global/<name> (e.g. encoder name and version).

        Raises:
            StoreError: the song is not in the store.
            ValueError: array is not [1, D] or [T, D], or D differs from the name's stored vectors.
        """
        song_id = str(song_id)
        array = np.asarray(array, dtype=np.float32)
        ids = self._file["songs/id"].asstr()[()]
        where = np.flatnonzero(ids == song_id)
        if where.size == 0:
            raise StoreError(f"{self.path}: no song {song_id!r} in the store")
        n_segments = int(self._file["songs/n_segments"][where[0]])
        if array.ndim != 2 or array.shape[0] not in (1, n_segments):
            raise ValueError(
                f"global vectors {name!r} for song {song_id}: shape {array.shape}; expected "
                f"[1, D] or [{n_segments}, D] (the song's segment count)"
            )
        group = self._file.require_group(f"global/{name}")
        dim = int(group.attrs.get("dim", array.shape[1]))
        if array.shape[1] != dim:
            raise ValueError(
                f"global vectors {name!r} for song {song_id}: D={array.shape[1]}, "
                f"but this name already holds D={dim}"
            )
        group.attrs["dim"] = dim
        group.attrs.update(dict(attrs or {}))
        if song_id in group:
            del group[song_id]
        group.create_dataset(song_id, data=array)

    def delete_global_vectors(self, name: str) -> None:
        """Remove /global/<name> and every song's vectors under it (KeyError when there is none)."""
        del self._file[f"global/{name}"]

    def close(self) -> None:
        """Close the file (a no-op when closed already)."""
        if self._file.id.valid:
            self._file.close()

    def __enter__(self) -> FeatureStoreWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def completed_job(path: str | Path) -> dict[str, Any] | None:
    """The job description a complete store was made from (what lets a rerun skip or resume it).

    Structure is not checked (`FeatureStore.verify` does).

    Args:
        path (str or Path): the store file.

    Returns:
        dict or None: its `job` attribute decoded ({} when it has none); None when the file is missing,
        incomplete or not readable as HDF5.
    """
    try:
        with h5py.File(path, "r") as handle:
            return json.loads(handle.attrs.get("job", "{}")) if handle.attrs.get("complete") else None
    except OSError:
        return None


def _write_curves(group: h5py.Group, curves: list[tuple[np.ndarray, np.ndarray]]) -> None:
    lengths = np.asarray([len(a) for a, _ in curves], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if curves else lengths
    values = (
        np.concatenate([np.stack([a, v], axis=1) for a, v in curves]) if curves else np.zeros((0, 2))
    ).astype(np.float32)
    group.create_dataset("values", data=values)
    group.create_dataset("offset", data=offsets)
    group.create_dataset("length", data=lengths)


class FeatureStore:
    """Read-only access to a feature store.

    The HDF5 file is opened lazily, once per process (h5py handles must not cross fork), so one instance can
    be shared with DataLoader workers; the small tables (songs, curve offsets) are read once into memory. A
    context manager (closes the file on exit).

    Args:
        path (str or Path): the store file (`dsaml-preprocess` output).

    Raises:
        StoreError: the file is missing, not a readable HDF5 file, or incomplete.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise StoreError(f"feature store not found: {self.path} (make one with dsaml-preprocess)")
        self._handle: h5py.File | None = None
        self._pid: int | None = None
        self._tables: dict[str, Any] | None = None
        try:
            complete = self._h5().attrs.get("complete", False)
        except OSError as exc:  # truncated or not HDF5 at all
            raise StoreError(
                f"{self.path} is not a readable feature store ({str(exc).splitlines()[0]}); rebuild it with "
                "dsaml-preprocess ... overwrite=true"
            ) from None
        if not complete:
            raise StoreError(
                f"{self.path} is incomplete (a preprocess run did not finish); run dsaml-preprocess "
                "again to resume it"
            )

    # --- file handle and in-memory catalogue ---------------------------------------------------------
    def _h5(self) -> h5py.File:
        if self._handle is None or self._pid != os.getpid():
            self._handle = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._handle

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handle"], state["_pid"] = None, None
        return state

    def close(self) -> None:
        """Close this process's handle (reopened on the next read)."""
        if self._handle is not None and self._pid == os.getpid() and self._handle.id.valid:
            self._handle.close()
        self._handle = None

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def _t(self) -> dict[str, Any]:
        if self._tables is None:
            h5 = self._h5()
            songs = {
                name: (h5[f"songs/{name}"].asstr()[()] if dtype is None else h5[f"songs/{name}"][()])
                for name, dtype in SONG_COLUMNS.items()
            }
            raters = h5["curves/raters"]
            self._tables = {
                "songs": songs,
                "row": {s: i for i, s in enumerate(songs["id"])},
                "averaged": {k: h5[f"curves/averaged/{k}"][()] for k in ("values", "offset", "length")},
                "raters": {k: raters[k][()] for k in ("values", "offset", "length", "pdmer")},
                "rater_ids": raters["rater"].asstr()[()],
                "rater_songs": raters["song"].asstr()[()],
                "per_rater": bool(raters.attrs["available"]),
            }
            self._tables["pair"] = {
                (r, s): i
                for i, (r, s) in enumerate(
                    zip(self._tables["rater_ids"], self._tables["rater_songs"], strict=True)
                )
            }
        return self._tables

    def _row(self, song_id: str | int) -> int:
        try:
            return self._t["row"][str(song_id)]
        except KeyError:
            raise KeyError(f"song {str(song_id)!r} is not in {self.path}") from None

    # --- metadata ----------------------------------------------------------------------------------------
    @property
    def attrs(self) -> dict[str, Any]:
        """Store attributes; JSON-valued ones decoded."""
        out = {}
        for key, value in self._h5().attrs.items():
            if isinstance(value, str) and value[:1] in "[{":
                value = json.loads(value)
            out[key] = value.item() if isinstance(value, np.generic) else value
        return out

    @property
    def dataset(self) -> str:
        """The dataset's name ("deam", "pmemo", ...)."""
        return str(self._h5().attrs["dataset"])

    @property
    def feature_config(self) -> dict[str, Any]:
        """The feature settings the log-mel was made with (`FeatureConfig.to_dict`)."""
        return json.loads(self._h5().attrs["feature_config"])

    @property
    def segments_per_clip(self) -> int:
        """Segments per training clip of the dataset."""
        return int(self._h5().attrs["segments_per_clip"])

    @property
    def failures(self) -> list[dict[str, str]]:
        """Songs that could not be decoded: [{"id", "path", "reason"}]."""
        return json.loads(self._h5().attrs.get("failures", "[]"))

    def song_info(self, song_id: str | int) -> dict[str, Any]:
        """The /songs row of one song.

        Args:
            song_id (str or int): a song in the store.

        Returns:
            dict[str, Any]: every `SONG_COLUMNS` entry (id, split, mode, audio_path, fingerprint, duration_s,
            source_rate, source_channels, missing_fraction, n_segments, offset) as Python values.

        Raises:
            KeyError: the song is not in the store.
        """
        row = self._row(song_id)
        return {
            name: (values[row].item() if isinstance(values[row], np.generic) else values[row])
            for name, values in self._t["songs"].items()
        }

    def verify(self, full: bool = False) -> None:
        """Check the store's consistency.

        Always (cheap: the small tables): every /songs column has N rows; features are laid out back to
        back (offset[i] = offset[i-1] + n_segments[i-1], their sum = the rows of /features/logmel); every
        song has segments and labels; curve offsets/lengths tile their values; rater curves name stored
        songs.

        Args:
            full (bool): also check that every feature and curve value is finite (reads the whole store;
                only when the structure is sound).

        Raises:
            StoreError: listing the problems found (the first five, and how many more).
        """
        problems = self._structure_problems()
        if full and not problems:
            problems = self._finiteness_problems()
        if problems:
            shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
            raise StoreError(
                f"{self.path} is damaged: {shown}. Rebuild it: dsaml-preprocess ... overwrite=true"
            )

    def _structure_problems(self) -> list[str]:
        h5, problems = self._h5(), []
        try:
            columns = {name: h5[f"songs/{name}"].shape for name in SONG_COLUMNS}
            n = columns["id"][0]
            problems += [
                f"/songs/{k} has {v[0]} rows, /songs/id {n}" for k, v in columns.items() if v[0] != n
            ]
            if problems:
                return problems
            counts = h5["songs/n_segments"][()].astype(np.int64)
            offsets = h5["songs/offset"][()]
            ids = h5["songs/id"].asstr()[()]
            expected = np.concatenate([[0], np.cumsum(counts)[:-1]]) if n else counts
            bad = np.flatnonzero(offsets != expected)
            problems += [f"song {ids[i]!r}: offset {offsets[i]}, expected {expected[i]}" for i in bad[:3]]
            rows = h5["features/logmel"].shape[0]
            if int(counts.sum()) != rows:
                problems.append(f"songs hold {int(counts.sum())} segments, /features/logmel {rows}")
            problems += [f"song {ids[i]!r} has no segments" for i in np.flatnonzero(counts <= 0)[:3]]
            problems += _curve_problems(h5["curves/averaged"], "averaged", n)
            lengths = h5["curves/averaged/length"][()]
            if len(lengths) == n:
                problems += [f"song {ids[i]!r} has no labels" for i in np.flatnonzero(lengths <= 0)[:3]]
            raters = h5["curves/raters"]
            m = raters["rater"].shape[0]
            problems += _curve_problems(raters, "raters", m)
            for key in ("song", "pdmer"):
                if raters[key].shape[0] != m:
                    problems.append(f"/curves/raters/{key} has {raters[key].shape[0]} rows, expected {m}")
            unknown = sorted(set(raters["song"].asstr()[()]) - set(ids))
            if unknown:
                problems.append(f"rater curves of songs not in the store: {unknown[:3]}")
        except KeyError as exc:
            problems.append(f"missing part of the layout ({exc})")
        return problems

    def _finiteness_problems(self) -> list[str]:
        h5, problems = self._h5(), []
        logmel = h5["features/logmel"]
        counts, offsets = self._t["songs"]["n_segments"], self._t["songs"]["offset"]
        for song, count, offset in zip(self._t["songs"]["id"], counts, offsets, strict=True):
            for begin in range(int(offset), int(offset + count), 256):
                block = logmel[begin : min(begin + 256, int(offset + count))]
                if not np.isfinite(block).all():
                    problems.append(f"song {song!r}: non-finite features")
                    break
        for name in ("averaged", "raters"):
            values = h5[f"curves/{name}/values"][()]
            if not np.isfinite(values).all():
                problems.append(f"non-finite values in /curves/{name}")
        return problems

    # --- the contract API --------------------------------------------------------------------------------
    def song_ids(self, split: str | None = None) -> list[str]:
        """The ids of the songs in that split ("train" | "test"; None: all), in store order.

        Raises:
            ValueError: split is not "train", "test" or None.
        """
        songs = self._t["songs"]
        if split is None:
            return list(songs["id"])
        _check_split(split)
        return [s for s, sp in zip(songs["id"], songs["split"], strict=False) if sp == split]

    def _require_raters(self) -> None:
        if not self._t["per_rater"]:
            raise StoreError(
                f"{self.path}: dataset {self.dataset!r} has no per-rater curves (only rater "
                "averages were released), so PDMER is not possible on it; use DMER"
            )

    def raters(self, split: str | None = None) -> list[str]:
        """Raters with per-rater curves kept by the PDMER filters.

        Args:
            split (str or None): "train" | "test": raters with a kept curve of a song of that split; None:
                any.

        Returns:
            list[str]: rater ids, sorted.

        Raises:
            StoreError: the dataset has no per-rater curves (PMEmo).
            ValueError: split is not "train", "test" or None.
        """
        self._require_raters()
        return sorted({r for r, _ in self._pdmer_pairs(split)})

    def songs_of_rater(self, rater: str, split: str | None = None) -> list[str]:
        """The songs (of that split; None: any) with a curve of `rater` kept by the PDMER filters, in store
        order ([] for an unknown rater). Raises as `raters`."""
        self._require_raters()
        order = self._t["row"]
        return sorted((s for r, s in self._pdmer_pairs(split) if r == str(rater)), key=order.__getitem__)

    def rater_songs(self, split: str | None = None) -> list[tuple[str, str]]:
        """Every (rater, song) pair with a per-rater curve kept by the PDMER filters, in that split (None:
        any): by rater, then in store order (what `raters` x `songs_of_rater` give, in one pass over the
        pairs). Raises as `raters`."""
        self._require_raters()
        order = self._t["row"]
        return sorted(self._pdmer_pairs(split), key=lambda pair: (pair[0], order[pair[1]]))

    def songs_by_rater(self, split: str | None = None) -> dict[str, list[str]]:
        """{rater: their songs} of that split (None: any), raters sorted, songs in store order (what
        `raters` and `songs_of_rater` give per rater, in one pass). Raises as `raters`."""
        by_rater: dict[str, list[str]] = {}
        for rater, song in self.rater_songs(split):
            by_rater.setdefault(rater, []).append(song)
        return by_rater

    def _pdmer_pairs(self, split: str | None) -> list[tuple[str, str]]:
        if split is not None:
            _check_split(split)
        t = self._t
        splits = t["songs"]["split"]
        return [
            (r, s)
            for r, s, keep in zip(t["rater_ids"], t["rater_songs"], t["raters"]["pdmer"], strict=False)
            if keep and (split is None or splits[t["row"][s]] == split)
        ]

    def n_segments(self, song_id: str | int) -> int:
        """The song's length T in segments (0.5 s each); KeyError when it is not in the store."""
        return int(self._t["songs"]["n_segments"][self._row(song_id)])

    def duration_s(self, song_id: str | int) -> float:
        """Decoded audio duration of the song in seconds; KeyError when it is not in the store."""
        return float(self._t["songs"]["duration_s"][self._row(song_id)])

    def logmel(self, song_id: str | int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Segments [start, stop) of a song's log-mel; reads only those.

        Args:
            song_id (str or int): a song in the store.
            start (int): first segment (Python slice rules: negative counts from the end).
            stop (int or None): one past the last segment; None: the song's end (T).

        Returns:
            np.ndarray: float32 [T', F=51, M=128], T' = the segments in the slice (0 when empty).

        Raises:
            KeyError: the song is not in the store.
        """
        row = self._row(song_id)
        n = int(self._t["songs"]["n_segments"][row])
        begin, end, _ = slice(start, stop).indices(n)
        offset = int(self._t["songs"]["offset"][row])
        window = self._h5()["features/logmel"][offset + begin : offset + max(begin, end)]
        return window.astype(np.float32, copy=False)

    def curves(self, song_id: str | int, rater: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """A song's emotion curves (label i belongs to segment i).

        Args:
            song_id (str or int): a song in the store.
            rater (str or None): a rater id: that rater's own curves; None: the rater average.

        Returns:
            (arousal [T], valence [T]): float32 arrays (copies).

        Raises:
            KeyError: the song is not in the store, or the rater has no curves for it.
            StoreError: a rater is given and the dataset has no per-rater curves.
        """
        t = self._t
        if rater is None:
            table, index = t["averaged"], self._row(song_id)
        else:
            self._require_raters()
            table = t["raters"]
            index = t["pair"].get((str(rater), str(song_id)))
            if index is None:
                raise KeyError(f"rater {str(rater)!r} has no curves for song {str(song_id)!r} in {self.path}")
        offset, length = int(table["offset"][index]), int(table["length"][index])
        values = table["values"][offset : offset + length]
        return values[:, 0].copy(), values[:, 1].copy()

    def global_names(self) -> list[str]:
        """Names of the stored global-context vectors, sorted ([] when none)."""
        h5 = self._h5()
        return sorted(h5["global"].keys()) if "global" in h5 else []

    def global_dim(self, name: str) -> int:
        """Width D of the stored global vectors `name` (the group's `dim` attribute); KeyError when the store
        has no such name."""
        if name not in self.global_names():
            raise KeyError(f"no global vectors named {name!r} in {self.path}; stored: {self.global_names()}")
        return int(self._h5()["global"][name].attrs["dim"])

    def global_entry(self, name: str) -> tuple[dict[str, Any], set[str]] | None:
        """Attributes (as stored) and song ids of /global/<name>; None when the store has no such name."""
        group = self._h5().get(f"global/{name}")
        return None if group is None else (dict(group.attrs), set(group.keys()))

    def global_vectors(
        self, name: str, song_id: str | int, start: int = 0, stop: int | None = None
    ) -> np.ndarray:
        """A song's precomputed global-context vectors.

        Args:
            name (str): the stored vectors' name (`global_names`).
            song_id (str or int): a song in the store.
            start (int): first segment (Python slice rules), for per-segment vectors.
            stop (int or None): one past the last segment; None: the song's end.

        Returns:
            np.ndarray: float32 [1, D] for a per-clip vector (start / stop ignored), else rows [start, stop)
            of the per-segment [T, D] vectors.

        Raises:
            KeyError: no vectors of that name, or none for that song.
        """
        h5 = self._h5()
        if name not in self.global_names():
            raise KeyError(f"no global vectors named {name!r} in {self.path}; stored: {self.global_names()}")
        group = h5["global"][name]
        song_id = str(song_id)
        if song_id not in group:
            raise KeyError(f"global vectors {name!r} have no entry for song {song_id!r} in {self.path}")
        data = group[song_id]
        if data.shape[0] == 1:
            return data[()].astype(np.float32, copy=False)
        begin, end, _ = slice(start, stop).indices(data.shape[0])
        return data[begin : max(begin, end)].astype(np.float32, copy=False)


def _curve_problems(group: h5py.Group, name: str, rows: int) -> list[str]:
    """Offsets/lengths of a curves table: `rows` entries tiling its values back to back."""
    offsets, lengths, values = group["offset"][()], group["length"][()], group["values"].shape[0]
    if len(offsets) != rows or len(lengths) != rows:
        return [f"/curves/{name}: {len(offsets)} offsets and {len(lengths)} lengths for {rows} rows"]
    expected = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if rows else lengths
    problems = (
        [f"/curves/{name}: offsets do not follow the lengths"]
        if not np.array_equal(offsets, expected)
        else []
    )
    if int(lengths.sum()) != values:
        problems.append(f"/curves/{name}: lengths sum to {int(lengths.sum())}, values hold {values}")
    return problems


def _check_split(split: str) -> None:
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r}: allowed values ['train', 'test', None]")

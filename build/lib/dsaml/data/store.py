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

`FeatureStore` reads it (lazily, one handle per process, so it is safe in forked DataLoader workers);
`FeatureStoreWriter` creates it and adds global-context vectors.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
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


def _dump(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


@dataclass
class SongRecord:
    """What the writer stores for one song (log-mel [T, F, M] float32 plus facts about its audio)."""

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


class FeatureStoreWriter:
    """Creates a store (`create`, `add_song`, `finish`) or opens one to add global vectors (`__init__`).

    HDF5 allows no writer while the same process holds the file open for reading: close any
    `FeatureStore` of this file (`.close()`) before opening a writer on it.
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
        n_frames: int,
        n_mels: int,
        dtype: str = "float16",
        chunk_segments: int = 16,
        compression: str = "none",
    ) -> FeatureStoreWriter:
        """Start a new store at `path` (overwritten). Songs are added with `add_song`, then `finish`."""
        if dtype not in DTYPES:
            raise ValueError(f"dtype={dtype!r}: allowed values {list(DTYPES)}")
        if compression not in COMPRESSIONS:
            raise ValueError(f"compression={compression!r}: allowed values {list(COMPRESSIONS)}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(path, "w") as handle:
            handle.attrs.update(
                format=FORMAT,
                dsaml_version=dsaml.__version__,
                dataset=dataset,
                dtype=dtype,
                segments_per_clip=int(segments_per_clip),
                complete=False,
                feature_config=_dump(dict(feature_config)),
            )
            handle.create_dataset(
                "features/logmel",
                shape=(0, n_frames, n_mels),
                maxshape=(None, n_frames, n_mels),
                dtype=dtype,
                chunks=(chunk_segments, n_frames, n_mels),
                compression=None if compression == "none" else compression,
                shuffle=compression == "gzip",
            )
        return cls(path)

    def add_song(self, record: SongRecord) -> None:
        """Append one song's log-mel (cast to the store dtype) and remember its catalogue row."""
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
        """Write the catalogue tables (songs in the order added) and curves, store attrs, mark complete."""
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
        """Store precomputed global-context vectors `array` [1, D] (one per clip) or [T, D] (one per
        segment window, T = n_segments of the song) under /global/<name>/<song_id>, float32.

        All songs of one name must share D; `attrs` (e.g. encoder name and version) go on /global/<name>.
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

    def close(self) -> None:
        if self._file.id.valid:
            self._file.close()

    def __enter__(self) -> FeatureStoreWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
    """Read-only access to a feature store. The HDF5 file is opened lazily, once per process (h5py
    handles must not cross fork), so one instance can be shared with DataLoader workers."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise StoreError(f"feature store not found: {self.path} (make one with dsaml-preprocess)")
        self._handle: h5py.File | None = None
        self._pid: int | None = None
        self._tables: dict[str, Any] | None = None
        if not self._h5().attrs.get("complete", False):
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
        return str(self._h5().attrs["dataset"])

    @property
    def feature_config(self) -> dict[str, Any]:
        return json.loads(self._h5().attrs["feature_config"])

    @property
    def segments_per_clip(self) -> int:
        return int(self._h5().attrs["segments_per_clip"])

    @property
    def failures(self) -> list[dict[str, str]]:
        """Songs that could not be decoded: [{"id", "path", "reason"}]."""
        return json.loads(self._h5().attrs.get("failures", "[]"))

    def song_info(self, song_id: str | int) -> dict[str, Any]:
        """The /songs row of one song (split, mode, duration_s, n_segments, source_rate, fingerprint, ...)."""
        row = self._row(song_id)
        return {
            name: (values[row].item() if isinstance(values[row], np.generic) else values[row])
            for name, values in self._t["songs"].items()
        }

    # --- the contract API --------------------------------------------------------------------------------
    def song_ids(self, split: str | None = None) -> list[str]:
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
        """Raters with per-rater curves kept by the PDMER filters, in that split (None: any)."""
        self._require_raters()
        return sorted({r for r, _ in self._pdmer_pairs(split)})

    def songs_of_rater(self, rater: str, split: str | None = None) -> list[str]:
        self._require_raters()
        order = self._t["row"]
        return sorted((s for r, s in self._pdmer_pairs(split) if r == str(rater)), key=order.__getitem__)

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
        return int(self._t["songs"]["n_segments"][self._row(song_id)])

    def duration_s(self, song_id: str | int) -> float:
        """Decoded audio duration of the song in seconds."""
        return float(self._t["songs"]["duration_s"][self._row(song_id)])

    def logmel(self, song_id: str | int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Segments [start, stop) of a song's log-mel -> float32 [T', n_frames, n_mels]; reads only those."""
        row = self._row(song_id)
        n = int(self._t["songs"]["n_segments"][row])
        begin, end, _ = slice(start, stop).indices(n)
        offset = int(self._t["songs"]["offset"][row])
        window = self._h5()["features/logmel"][offset + begin : offset + max(begin, end)]
        return window.astype(np.float32, copy=False)

    def curves(self, song_id: str | int, rater: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(arousal [T], valence [T]) float32: rater-averaged (rater=None) or that rater's own curves."""
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
        h5 = self._h5()
        return sorted(h5["global"].keys()) if "global" in h5 else []

    def global_dim(self, name: str) -> int:
        """Width D of the stored global vectors `name` (the group's `dim` attribute)."""
        if name not in self.global_names():
            raise KeyError(f"no global vectors named {name!r} in {self.path}; stored: {self.global_names()}")
        return int(self._h5()["global"][name].attrs["dim"])

    def global_vectors(
        self, name: str, song_id: str | int, start: int = 0, stop: int | None = None
    ) -> np.ndarray:
        """Precomputed global-context vectors: [1, D] for a per-clip vector (the window is ignored),
        else rows [start, stop) of the per-segment [T, D] vectors. float32."""
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


def _check_split(split: str) -> None:
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r}: allowed values ['train', 'test', None]")

"""Fill a feature store's `/global/<name>/` with global-context vectors for every stored song.

Sources (`conf/global_vectors/`, window semantics of docs/method.md, "Features"):
- `clap`: `ClapAudioEncoder` (a local CLAP checkpoint) on each song's audio, decoded with `decode_mono`:
  a clip gets one vector for its 30 s from `start_s` -> [1, D]; a full song one vector per segment window
  [0.5 i, 0.5 i + 30) s -> [T, D], T = the song's n_segments.
- `file`: vectors computed elsewhere (e.g. ImageBind with the original pipeline), imported with
  `dsaml.data.vector_file.load_vector_file` (.npz / .h5 keyed by song id); checked against the store
  before anything is written.

Resumable: each finished song goes to `<store>.global-<name>.parts/<id>.npy` (atomic rename) while the
store itself is left alone, so an interrupted run cannot damage the log-mel; when every song is done the
parts are added to the store in one short write. Songs the store already holds under `name` from the same
source are skipped; a different source under the same name needs `overwrite=true`. Audio that cannot be
decoded (or changed since the store was built) is reported (id, path, reason) and the run goes on.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dsaml.config import Config, ConfigError, choice, flag, integer
from dsaml.data.audio import AudioDecodeError, decode_mono, fingerprint_file
from dsaml.data.catalogue import DataError
from dsaml.data.features import resolve_device
from dsaml.data.parts import failure_lines, open_parts, write_part
from dsaml.data.store import FeatureStore, FeatureStoreWriter
from dsaml.data.vector_file import load_vector_file

SOURCES = ("none", "clap", "file")
VECTOR_FILE_SUFFIXES = (".npz", ".h5", ".hdf5")
MAX_LISTED = 10  # problems listed per kind in an error message


@dataclass(frozen=True)
class GlobalVectorsConfig(Config):
    """conf/global_vectors/<source>.yaml: which vectors to add to the store, and how."""

    SECTION = "global_vectors"

    source: str = choice("none", SOURCES)  # none | clap | file
    name: str = ""  # /global/<name>; the network reads it with model.global_context=precomputed:<name>
    path: str = ""  # clap: a local CLAP checkpoint directory (or a cached model id); file: .npz / .h5
    device: str = "auto"  # clap: auto | cpu | cuda | cuda:N
    batch_size: int = integer(16, low=1)  # clap: 10 s chunks per encoder call
    overwrite: bool = flag(False)  # true: recompute every song, replacing vectors of this name

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.source == "none":
            return
        if not isinstance(self.name, str) or not self.name or "/" in self.name or self.name in (".", ".."):
            raise ConfigError(
                f"global_vectors.name={self.name!r}: expected a name without '/' (the network reads "
                "it with model.global_context=precomputed:<name>)"
            )
        resolve_device(self.device)
        if not isinstance(self.path, str) or not self.path:
            raise ConfigError(f"global_vectors.path is required with global_vectors={self.source}")
        if self.source == "file":
            path = Path(self.path)
            if path.suffix not in VECTOR_FILE_SUFFIXES:
                raise ConfigError(
                    f"global_vectors.path={self.path!r}: expected a file ending in "
                    f"{list(VECTOR_FILE_SUFFIXES)}"
                )
            if not path.is_file():
                raise ConfigError(f"global_vectors.path={self.path!r}: no such file")
        else:
            _check_clap_checkpoint(self.path)


def _check_clap_checkpoint(path: str) -> None:
    """A local directory, or a model id already in the Hugging Face cache; transformers installed."""
    try:
        from huggingface_hub import try_to_load_from_cache
        from transformers import ClapModel  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            "global_vectors=clap needs transformers: pip install -e '.[clap]' (or 'dsaml[clap]')"
        ) from exc
    if Path(path).is_dir():
        return
    try:
        cached = try_to_load_from_cache(path, "config.json")
    except ValueError:  # not a valid model id either
        cached = None
    if not isinstance(cached, str):
        raise ConfigError(
            f"global_vectors.path={path!r}: neither a CLAP checkpoint directory nor a model in the "
            "Hugging Face cache (nothing is downloaded)"
        )


@dataclass
class GlobalVectorsSummary:
    """What a run did: counts, failures [{id, path, reason}], speed."""

    store: str
    name: str
    source: str
    dim: int = 0
    songs: int = 0
    computed: int = 0
    stored: int = 0  # already in the store from the same source: skipped
    resumed: int = 0  # finished by an interrupted run (part files): skipped
    failures: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def songs_per_s(self) -> float:
        return self.computed / self.seconds if self.seconds else 0.0


@dataclass(frozen=True)
class _Song:
    id: str
    mode: str
    audio_path: str
    fingerprint: str
    n_segments: int
    duration_s: float


def _read_store(store: Path, name: str) -> tuple[list[_Song], dict[str, Any], dict[str, Any]]:
    """Stored songs; store facts (features, job, failed ids); attrs and members of /global/<name>."""
    with FeatureStore(store) as reader:
        songs = [
            _Song(
                s,
                (info := reader.song_info(s))["mode"],
                info["audio_path"],
                info["fingerprint"],
                int(info["n_segments"]),
                float(info["duration_s"]),
            )
            for s in reader.song_ids()
        ]
        facts = {
            "features": reader.feature_config,
            "job": hashlib.blake2b(str(reader.attrs.get("job", "")).encode(), digest_size=16).hexdigest(),
            "failed": {f["id"] for f in reader.failures},
        }
        entry = reader.global_entry(name)
    return songs, facts, {"attrs": entry[0], "songs": entry[1]} if entry is not None else {}


# --- sources -------------------------------------------------------------------------------------------
class _ClapSource:
    """Vectors from a CLAP audio tower; one song at a time."""

    decodes_audio = True

    def __init__(self, config: GlobalVectorsConfig, features: Mapping[str, Any], encoder=None) -> None:
        from dsaml.models.clap import SEGMENT_S, ClapAudioEncoder

        if abs(float(features["segment_s"]) - SEGMENT_S) > 1e-9:
            raise ConfigError(
                f"global_vectors=clap: the store's segments are {features['segment_s']} s long; the CLAP "
                f"windows follow the original's {SEGMENT_S} s segments"
            )
        self.start_s = float(features["start_s"])
        if encoder is None:
            from transformers.utils import logging as hf_logging

            shown = hf_logging.is_progress_bar_enabled()
            hf_logging.disable_progress_bar()  # our own bar is the progress display
            try:
                encoder = ClapAudioEncoder.from_pretrained(
                    config.path, resolve_device(config.device), config.batch_size
                )
            finally:
                if shown:
                    hf_logging.enable_progress_bar()
        self.encoder = encoder
        path = Path(config.path)
        self.attrs = {
            "source": "clap",
            "encoder": "transformers.ClapModel audio tower",
            "path": str(path.resolve()) if path.is_dir() else config.path,
            "dim": int(self.encoder.dim),
            "window_s": 30.0,
            "clip_start_s": self.start_s,
        }

    def vectors(self, song: _Song) -> np.ndarray:
        audio, rate, _, fingerprint = decode_mono(song.audio_path)
        if fingerprint != song.fingerprint:
            raise AudioDecodeError(
                song.audio_path,
                f"the audio changed since the store was built (fingerprint {fingerprint}, stored "
                f"{song.fingerprint}); rebuild the store",
            )
        if song.mode == "clip":
            return self.encoder.clip_vector(audio, rate, start_s=self.start_s)
        return self.encoder.song_vectors(audio, rate, song.n_segments)


class _FileSource:
    """Vectors imported from a .npz / .h5 file keyed by song id, checked against the store up front."""

    decodes_audio = False

    def __init__(self, config: GlobalVectorsConfig, songs: list[_Song], failed: set[str]) -> None:
        path = Path(config.path)
        try:
            self.table = load_vector_file(path)
        except ValueError as exc:
            raise DataError(str(exc)) from exc
        dim = next(iter(self.table.values())).shape[1]
        _check_file_vectors(path, self.table, songs, failed, dim)
        self.attrs = {
            "source": "file",
            "encoder": "imported",
            "path": str(path.resolve()),
            "fingerprint": fingerprint_file(path),
            "dim": int(dim),
        }

    def vectors(self, song: _Song) -> np.ndarray:
        return self.table[song.id]


def _check_file_vectors(
    path: Path, table: Mapping[str, np.ndarray], songs: list[_Song], failed: set[str], dim: int
) -> None:
    """Every stored song has vectors of the right shape ([1, D] clip, [n_segments, D] song); every id in
    the file is a stored song (or one that failed preprocessing). All problems in one DataError."""
    problems = []
    missing = [s.id for s in songs if s.id not in table]
    if missing:
        problems.append(f"{len(missing)} stored song(s) have no vectors: {_listed(missing)}")
    known = {s.id for s in songs} | failed
    unknown = sorted(set(table) - known)
    if unknown:
        problems.append(f"{len(unknown)} id(s) are not songs of the store: {_listed(unknown)}")
    shapes = []
    for song in songs:
        if song.id in table:
            rows = 1 if song.mode == "clip" else song.n_segments
            if table[song.id].shape != (rows, dim):
                kind = "clip" if song.mode == "clip" else f"full song, {song.n_segments} segments"
                shapes.append(
                    f"song {song.id} ({kind}): shape {list(table[song.id].shape)}, expected [{rows}, {dim}]"
                )
    if shapes:
        problems.append(
            f"{len(shapes)} song(s) with the wrong shape:\n    " + "\n    ".join(shapes[:MAX_LISTED])
        )
    if problems:
        raise DataError(
            f"global-vector file {path} does not fit the store (a clip needs [1, D], a full song "
            "[n_segments, D]):\n  " + "\n  ".join(problems)
        )


def _listed(ids: list[str]) -> str:
    more = f" ... (+{len(ids) - MAX_LISTED} more)" if len(ids) > MAX_LISTED else ""
    return ", ".join(ids[:MAX_LISTED]) + more


# --- part files ----------------------------------------------------------------------------------------
def parts_dir(store: str | Path, name: str) -> Path:
    """Where an unfinished run keeps its per-song vectors."""
    store = Path(store)
    return store.with_name(f"{store.name}.global-{name}.parts")


def _prepare_parts(parts: Path, description: dict[str, Any], overwrite: bool) -> set[str]:
    """Reuse the parts of an interrupted run of the same job (-> their song ids), else start empty."""
    open_parts(
        parts,
        description,
        overwrite,
        "from a different source or store (differs in %s); set global_vectors.overwrite=true to discard "
        "it, or choose another global_vectors.name",
    )
    return {p.stem for p in parts.glob("*.npy")}


def _write_part(parts: Path, song_id: str, vectors: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(vectors, dtype=np.float32))
    write_part(parts / f"{song_id}.npy", buffer.getvalue())


def _commit(store: Path, parts: Path, name: str, attrs: dict[str, Any]) -> None:
    """Add every part to /global/<name>, then drop the parts."""
    files = sorted(parts.glob("*.npy"))
    if files:
        with FeatureStoreWriter(store) as writer:
            for file in files:
                writer.add_global_vectors(name, file.stem, np.load(file), attrs=attrs)
    shutil.rmtree(parts)


# --- the run -------------------------------------------------------------------------------------------
def add_global_vectors(
    store: str | Path,
    config: GlobalVectorsConfig,
    encoder=None,
    on_progress: Callable[[str, dict[str, Any]], None] | None = None,
) -> GlobalVectorsSummary:
    """Store `config.source` vectors for every song of `store` under /global/<config.name>.

    `encoder`: a ready `ClapAudioEncoder` for source clap (default: loaded from `config.path`).
    `on_progress` gets ("start", {"todo", "resumed"}) once, then ("song", {"id", "duration_s"}) per song
    (duration_s: decoded audio seconds, 0 for a file import).
    Raises ConfigError (different source under the name without overwrite), DataError (a vector file
    that does not fit the store) or StoreError (store missing, or open in another process) before anything
    is computed or written.
    """
    if config.source == "none":
        raise ConfigError("global_vectors.source=none: nothing to add")
    store = Path(store)
    started = time.perf_counter()
    songs, facts, existing = _read_store(store, config.name)
    FeatureStoreWriter(store).close()  # fails now, not after the work, if another process holds the file
    if config.source == "clap":
        source: _ClapSource | _FileSource = _ClapSource(config, facts["features"], encoder)
    else:
        source = _FileSource(config, songs, facts["failed"])
    attrs = source.attrs
    stored_attrs = existing.get("attrs", {})
    changed = sorted(k for k, v in attrs.items() if not _same(stored_attrs.get(k), v))
    if existing and changed and not config.overwrite:
        raise ConfigError(
            f"{store} already holds global vectors {config.name!r} from a different source (differs in "
            f"{changed}: stored {[stored_attrs.get(k) for k in changed]}, now "
            f"{[attrs[k] for k in changed]}); "
            "set global_vectors.overwrite=true to replace them, or choose another global_vectors.name"
        )
    parts = parts_dir(store, config.name)
    resumed = _prepare_parts(parts, {"attrs": attrs, "store_job": facts["job"]}, config.overwrite)
    in_store = existing.get("songs", set())
    if existing and config.overwrite:  # recompute all; an interrupted run resumes without overwrite
        with FeatureStoreWriter(store) as writer:
            writer.delete_global_vectors(config.name)
        in_store = set()
    summary = GlobalVectorsSummary(
        str(store),
        config.name,
        config.source,
        dim=attrs["dim"],
        songs=len(songs),
        stored=sum(s.id in in_store for s in songs),
        resumed=sum(s.id in resumed and s.id not in in_store for s in songs),
    )
    todo = [s for s in songs if s.id not in in_store and s.id not in resumed]
    if on_progress is not None:
        on_progress("start", {"todo": len(todo), "resumed": summary.resumed + summary.stored})
    for song in todo:
        try:
            _write_part(parts, song.id, source.vectors(song))
            summary.computed += 1
        except AudioDecodeError as exc:
            summary.failures.append({"id": song.id, "path": song.audio_path, "reason": exc.reason})
        if on_progress is not None:
            on_progress("song", {"id": song.id, "duration_s": song.duration_s * source.decodes_audio})
    _commit(store, parts, config.name, attrs)
    summary.seconds = time.perf_counter() - started
    return summary


def _same(stored: Any, value: Any) -> bool:
    """Compare an HDF5 attribute read back (numpy scalar) with the value written."""
    return isinstance(stored, (str, bytes, np.generic, int, float)) and np.asarray(stored).tolist() == value


def format_global_summary(summary: GlobalVectorsSummary) -> list[str]:
    """Human-readable end-of-run report."""
    head = f"global vectors {summary.name!r} ({summary.source}, D={summary.dim}) in {summary.store}"
    train = f"train with: model.global_context=precomputed:{summary.name} model.global_dim={summary.dim}"
    if not summary.computed and not summary.failures and not summary.resumed:
        return [f"{head}: up to date ({summary.stored} songs)", train]
    lines = [
        head,
        train,
        f"songs: {summary.songs} in the store, {summary.computed} computed, {summary.stored} already "
        f"stored, {summary.resumed} resumed from an interrupted run, {len(summary.failures)} failed",
        f"speed: {summary.songs_per_s:.2f} songs/s ({summary.seconds:.1f} s)",
    ]
    lines.extend(
        failure_lines(summary.failures, "failed songs (id, path, reason): run again after fixing them")
    )
    return lines

"""Dataset -> feature store: decode, resample, log-mel and write every song, in parallel and resumably.

Each finished song is first written to its own part file in `<store>.parts/` (atomic rename), so a run
killed at any moment (kill -9 included) loses at most the songs in flight; the next run skips the parts
already there. When every song is done the parts are assembled into `<store>.tmp`, which is renamed over
the store: the store file is never half-written. Songs that fail to decode are reported (id, path,
reason) and recorded in the store's `failures` attribute; the run goes on. A song that would be unusable
(no labels left after the reader's checks) is excluded the same way, with its reason, so training never
meets it.

One run at a time per store: the run holds `store_lock` (an exclusive lock naming its pid and host) from
the first look at the store to the final rename; a second run fails at once, naming the holder. A store is
only called "up to date" when it also passes `FeatureStore.verify` (tables, offsets, counts); `verify=true`
additionally checks that every stored value is finite.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch

import dsaml
from dsaml.config import Config, ConfigError, choice, flag, integer
from dsaml.data.audio import AudioDecodeError, fingerprint_file, load_audio
from dsaml.data.catalogue import Catalogue, Song, summarise_issues
from dsaml.data.features import FeatureConfig, LogMelExtractor, cut_segments, min_duration_s, resolve_device
from dsaml.data.parts import changed_keys, failure_lines, open_parts, write_part
from dsaml.data.readers import DataConfig, read_catalogue
from dsaml.data.store import (
    COMPRESSIONS,
    DTYPES,
    FeatureStore,
    FeatureStoreWriter,
    SongRecord,
    StoreError,
    StoreLayout,
    completed_job,
    store_lock,
)

log = logging.getLogger(__name__)
MP_CONTEXTS = ("fork", "spawn", "forkserver")


@dataclass(frozen=True)
class PreprocessConfig(Config):
    """How the store is made (top level of conf/preprocess.yaml, without data/paths)."""

    workers: int = integer(2, low=0)  # decode processes; 0 = in the main process
    device: str = "auto"  # where the log-mel runs: auto | cpu | cuda | cuda:N
    dtype: str = choice("float16", DTYPES)
    chunk_segments: int = integer(16, low=1)
    compression: str = choice("none", COMPRESSIONS)
    overwrite: bool = flag(False)
    keep_parts: bool = flag(False)
    mp_context: str = choice("fork", MP_CONTEXTS)
    strict: bool = flag(False)
    progress: bool = flag(True)
    verify: bool = flag(False)  # also check every stored feature/label is finite (reads the whole store)

    def __post_init__(self) -> None:
        super().__post_init__()
        resolve_device(self.device)

    @property
    def layout(self) -> StoreLayout:
        """The store's on-disk layout (dtype, chunk_segments, compression)."""
        return StoreLayout(self.dtype, self.chunk_segments, self.compression)


@dataclass
class Summary:
    """What a run did: counts, failures [{id, path, reason}], throughput and the reader's issues."""

    store: str
    songs: int = 0
    computed: int = 0
    resumed: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)
    issues: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    audio_seconds: float = 0.0
    up_to_date: bool = False
    verified: str = ""  # "structure" or "structure and finiteness": what FeatureStore.verify checked

    @property
    def songs_per_s(self) -> float:
        return self.computed / self.seconds if self.seconds else 0.0

    @property
    def realtime_factor(self) -> float:
        return self.audio_seconds / self.seconds if self.seconds else 0.0


# --- one song (runs in a worker process) ---------------------------------------------------------------
_WORKER_EXTRACTOR: dict[str, LogMelExtractor] = {}


def _init_worker() -> None:
    torch.set_num_threads(1)  # one song per process: parallelism comes from the processes
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    """A worker whose run was killed (SIGKILL, OOM killer) would wait for tasks forever: exit instead."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def compute_song(
    song: Song, features: FeatureConfig, segments_per_clip: int, dtype: str, on_cpu: bool
) -> dict[str, Any]:
    """Decode one song and cut its segments; with `on_cpu` also compute the log-mel here.

    Returns {"ok": True, meta..., "logmel" [T, F, M] (dtype) or "segments" [T, S] float32} or
    {"ok": False, "reason": ...}.
    """
    try:
        audio = load_audio(song.audio_path, features.sample_rate)
    except AudioDecodeError as exc:
        return {"ok": False, "id": song.id, "path": str(song.audio_path), "reason": exc.reason}
    if audio.samples.shape[-1] < features.start_sample + features.segment_samples:
        return {
            "ok": False,
            "id": song.id,
            "path": str(song.audio_path),
            "reason": f"audio is {audio.duration_s:.2f} s long; features need at least "
            f"{min_duration_s(features):g} s",
        }
    segments = cut_segments(audio.samples, features, segments_per_clip if song.mode == "clip" else None)
    result: dict[str, Any] = {
        "ok": True,
        "id": song.id,
        "duration_s": audio.duration_s,
        "source_rate": audio.source_rate,
        "source_channels": audio.source_channels,
        "missing_fraction": segments.missing_fraction,
        "fingerprint": audio.fingerprint,
    }
    if on_cpu:
        key = json.dumps(features.to_dict(), sort_keys=True)
        extractor = _WORKER_EXTRACTOR.setdefault(key, LogMelExtractor(features, "cpu"))
        result["logmel"] = extractor(segments.samples).numpy().astype(dtype)
    else:
        result["segments"] = segments.samples.numpy()
    return result


# --- part files ------------------------------------------------------------------------------------------
def _part_path(parts: Path, song_id: str) -> Path:
    return parts / f"{song_id}.npz"


def _write_part(parts: Path, result: dict[str, Any]) -> None:
    """Atomically write one song's result: a reader sees the whole part or none."""
    meta = {k: v for k, v in result.items() if k not in ("logmel", "ok")}
    buffer = io.BytesIO()
    np.savez(buffer, logmel=result["logmel"], meta=np.array(json.dumps(meta)))
    write_part(_part_path(parts, result["id"]), buffer.getvalue())


def _read_part(path: Path) -> tuple[dict[str, Any], np.ndarray]:
    with np.load(path) as data:
        return json.loads(str(data["meta"])), data["logmel"]


def job_description(data: DataConfig, config: PreprocessConfig, catalogue: Catalogue) -> dict[str, Any]:
    """Everything that determines the store's content; a store or part directory made with a different
    description is never mixed with this run."""
    return {
        "dsaml_version": dsaml.__version__,
        "dataset": data.name,
        "reader": data.reader,
        "features": data.features.to_dict(),
        "segments_per_clip": data.segments_per_clip,
        "store_as": dict(data.store_as),
        "split": asdict(data.split),
        "pdmer": asdict(data.pdmer),
        "dtype": config.dtype,
        "chunk_segments": config.chunk_segments,
        "compression": config.compression,
        "songs": sorted(catalogue.songs),
        "annotations": {str(p): fingerprint_file(p) for p in catalogue.annotation_files},
        "audio": {song_id: fingerprint_file(song.audio_path) for song_id, song in catalogue.songs.items()},
    }


def _prepare_parts(store: Path, job: dict[str, Any], overwrite: bool) -> Path:
    parts = store.with_name(store.name + ".parts")
    open_parts(
        parts,
        job,
        overwrite,
        "with a different configuration (differs in %s); set overwrite=true to discard it, or choose "
        "another paths.store",
    )
    return parts


def _store_is_current(store: Path, job: dict[str, Any], overwrite: bool) -> bool:
    """True if `store` is complete and made by the same job; a different job needs overwrite=true."""
    if not store.is_file() or overwrite:
        return False
    previous = completed_job(store)  # None when incomplete or not HDF5: rebuilt from scratch
    if previous == job:
        try:
            with FeatureStore(store) as existing:
                existing.verify()
        except StoreError as exc:
            log.warning("%s; rebuilding it", exc)
            return False
        return True
    if previous is not None:
        raise ConfigError(
            f"{store} was made with a different configuration or input (differs in "
            f"{changed_keys(job, previous)}); "
            "set overwrite=true to replace it, or choose another paths.store"
        )
    return False


def store_is_current(data: DataConfig, config: PreprocessConfig, store: str | Path) -> bool:
    """True if `store` is complete and was made from exactly this input and configuration."""
    try:
        return _store_is_current(Path(store), job_description(data, config, read_catalogue(data)), False)
    except ConfigError:  # made from something else
        return False


# --- the run ----------------------------------------------------------------------------------------------
def _results(
    tasks: list[Song], data: DataConfig, config: PreprocessConfig, on_cpu: bool
) -> Iterator[dict[str, Any]]:
    """Yield per-song results as they finish, with at most 2 x workers songs in flight (flat memory)."""
    args = (data.features, data.segments_per_clip, config.dtype, on_cpu)
    if config.workers == 0:
        for song in tasks:
            yield compute_song(song, *args)
        return
    with ProcessPoolExecutor(
        config.workers, mp_context=get_context(config.mp_context), initializer=_init_worker
    ) as pool:
        pending: set[Future] = set()
        queue = iter(tasks)
        for song in queue:
            pending.add(pool.submit(compute_song, song, *args))
            if len(pending) >= 2 * config.workers:
                break
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                nxt = next(queue, None)
                if nxt is not None:
                    pending.add(pool.submit(compute_song, nxt, *args))
                yield future.result()


def preprocess(
    data: DataConfig,
    config: PreprocessConfig,
    store: str | Path,
    on_progress: Callable[[str, dict[str, Any]], None] | None = None,
) -> Summary:
    """Build (or resume, or confirm up to date) the feature store at `store`. `on_progress` is called with
    ("start", {"todo", "resumed"}) once, then ("song", result without features) as each song finishes.
    Holds the store's lock throughout (StoreError naming the holder when another run has it)."""
    store = Path(store)
    with store_lock(store) as stale:
        summary = _preprocess_locked(data, config, store, on_progress)
        if stale:
            summary.notes.append(f"{store}: {stale}")
        with FeatureStore(store) as built:
            built.verify(full=config.verify)
        summary.verified = "structure and finiteness" if config.verify else "structure"
    return summary


def unusable_songs(catalogue: Catalogue) -> dict[str, str]:
    """Songs that training could never use -> the reason (no arousal/valence values left to learn from)."""
    return {
        song_id: "no usable arousal/valence labels (see the input issues)"
        for song_id in catalogue.songs
        if len(catalogue.averaged.get(song_id, ((), ()))[0]) == 0
    }


def _preprocess_locked(
    data: DataConfig,
    config: PreprocessConfig,
    store: Path,
    on_progress: Callable[[str, dict[str, Any]], None] | None,
) -> Summary:
    started = time.perf_counter()
    if config.strict and not data.strict:
        data = DataConfig(**{**vars(data), "strict": True})
    catalogue = read_catalogue(data)
    summary = Summary(
        store=str(store),
        songs=len(catalogue.songs),
        notes=list(catalogue.notes),
        issues=[str(i) for i in catalogue.issues],
    )
    job = job_description(data, config, catalogue)
    if _store_is_current(store, job, config.overwrite):
        summary.up_to_date = True
        return summary
    parts = _prepare_parts(store, job, config.overwrite)
    excluded = unusable_songs(catalogue)
    summary.failures.extend(
        {"id": song_id, "path": str(catalogue.songs[song_id].audio_path), "reason": reason}
        for song_id, reason in excluded.items()
    )
    done = {song for song in catalogue.songs if _part_path(parts, song).is_file()}
    summary.resumed = len(done - set(excluded))
    tasks = [
        song for song_id, song in catalogue.songs.items() if song_id not in done and song_id not in excluded
    ]
    if on_progress is not None:
        on_progress("start", {"todo": len(tasks), "resumed": summary.resumed})

    device = resolve_device(config.device)
    on_cpu = device.type == "cpu"
    extractor = None if on_cpu else LogMelExtractor(data.features, device)
    for result in _results(tasks, data, config, on_cpu):
        if not result["ok"]:
            summary.failures.append({k: result[k] for k in ("id", "path", "reason")})
        else:
            if extractor is not None:
                segments = torch.from_numpy(result.pop("segments"))
                result["logmel"] = extractor(segments).cpu().numpy().astype(config.dtype)
            if result["missing_fraction"] > data.features.pad_warn_fraction:
                summary.issues.append(
                    f"song {result['id']}: {result['missing_fraction']:.0%} of the clip lies past "
                    "the end of the audio and was zero-padded"
                )
            _write_part(parts, result)
            summary.computed += 1
            summary.audio_seconds += result["duration_s"]
        if on_progress is not None:
            on_progress("song", {k: v for k, v in result.items() if k != "logmel"})
    _assemble(store, parts, catalogue, data, config, job, summary, skip=set(excluded))
    summary.seconds = time.perf_counter() - started
    if not config.keep_parts:
        shutil.rmtree(parts)
    return summary


def _assemble(
    store: Path,
    parts: Path,
    catalogue: Catalogue,
    data: DataConfig,
    config: PreprocessConfig,
    job: dict[str, Any],
    summary: Summary,
    skip: set[str],
) -> None:
    """Write the whole store from the part files into <store>.tmp (songs in `skip` left out), check its
    structure, then rename it over <store>."""
    tmp = store.with_name(store.name + ".tmp")
    features = data.features
    writer = FeatureStoreWriter.create(
        tmp,
        dataset=data.name,
        feature_config=features.to_dict(),
        segments_per_clip=data.segments_per_clip,
        segment_shape=(features.n_frames, features.n_mels),
        layout=config.layout,
    )
    with writer:
        stored = []
        for song_id, song in catalogue.songs.items():
            path = _part_path(parts, song_id)
            if not path.is_file() or song_id in skip:
                continue  # a failed or unusable song: listed in summary.failures
            meta, logmel = _read_part(path)
            writer.add_song(
                SongRecord(
                    id=song_id,
                    split=song.split,
                    mode=song.mode,
                    audio_path=str(song.audio_path),
                    fingerprint=meta["fingerprint"],
                    duration_s=meta["duration_s"],
                    source_rate=meta["source_rate"],
                    source_channels=meta["source_channels"],
                    missing_fraction=meta["missing_fraction"],
                    logmel=logmel,
                )
            )
            stored.append(song_id)
        kept = set(stored)
        writer.finish(
            averaged=catalogue.averaged,
            ratings={k: v for k, v in catalogue.ratings.items() if k[1] in kept},
            pdmer_pairs={p for p in catalogue.pdmer_pairs if p[1] in kept},
            per_rater=catalogue.per_rater,
            attrs={
                "job": job,
                "data_config": data.to_dict(),
                "layout": catalogue.layout,
                "annotation_fingerprints": job["annotations"],
                "failures": summary.failures,
                "issues": summary.issues,
                "notes": summary.notes,
            },
        )
    with FeatureStore(tmp) as assembled:
        assembled.verify()
    os.replace(tmp, store)


def format_summary(summary: Summary) -> list[str]:
    """Human-readable end-of-run report."""
    checked = f"; verified: {summary.verified}" if summary.verified else ""
    if summary.up_to_date:
        return [
            f"{summary.store} is up to date ({summary.songs} songs); "
            f"set overwrite=true to rebuild it{checked}",
            *(note for note in summary.notes if "stale lock" in note),
        ]
    lines = [
        f"store: {summary.store}",
        f"songs: {summary.songs} in the catalogue, {summary.computed} computed, {summary.resumed} resumed "
        f"from an interrupted run, {len(summary.failures)} failed",
        f"speed: {summary.songs_per_s:.2f} songs/s, {summary.realtime_factor:.0f}x real time "
        f"({summary.seconds:.1f} s){checked}",
        *summary.notes,
    ]
    lines.extend(failure_lines(summary.failures))
    if summary.issues:
        lines.append(f"input issues ({len(summary.issues)}):")
        lines.extend("  " + line for line in summarise_issues(summary.issues))
    return lines

"""Personalisation: adapt a meta-trained network to one listener from a few of their annotated songs.

    songs = load_listener(predictor, audio=["music/"], annotations=["my_curves/"])          # simple CSVs
    songs = load_listener(predictor, audio=[...], annotations=["<DEAM per-rater dir>"], rater="A1B2...")
    result = personalize(predictor, support=songs[:-1], steps=16, lr=5e-3)
    report = evaluate(predictor, result.net, songs[-1:])       # held-out songs: scores before/after

Annotations come in two layouts:
- simple: one CSV per song named like its audio file (<stem>.csv) with columns `time` (or `time_s`, in
  seconds), `arousal`, `valence`, at any rate (dsaml-predict's CSV output has this form); values are
  interpolated onto the 2 Hz segment grid (segment i starts at 15 + 0.5 i s).
- DEAM per-rater: a folder with `arousal/<song>.csv` and `valence/<song>.csv` holding a WorkerId column and
  sample_<ms>ms columns (DEAM's "annotations per each rater/dynamic (per second annotations)"); `rater`
  picks the listener's row.
The support set: each support song is cut into windows of 60 segments (the training clip length; the last
window ends at the song's end, overlapping the previous one), one batch per song; every inner step descends
the mean of the songs' losses (`dsaml.meta.adapt`).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dsaml.data.catalogue import IssueLog, normalise_id, read_csv_rows
from dsaml.data.deam import PER_RATER_DIR, RATER_COLUMN, _read_time_rows
from dsaml.data.features import FeatureConfig
from dsaml.data.validation import ConfigError
from dsaml.inference import WINDOW, window_starts
from dsaml.meta import Adaptation, adapt, batch_loss
from dsaml.predictor import Predictor, collect_audio
from dsaml.training.evaluation import scores_of

Curve = tuple[int, np.ndarray, np.ndarray]  # (first segment, arousal [T], valence [T])


class AnnotationError(ValueError):
    """A listener's annotation file or folder cannot be used (the message names it and what was expected)."""


@dataclass
class AnnotatedSong:
    """One song of the listener: log-mel [T, 51, 128] and their curves [T], aligned (label i, segment i)."""

    song: str
    audio: Path
    logmel: np.ndarray
    arousal: np.ndarray
    valence: np.ndarray
    first: int = 0  # segment of the audio where the curves start

    def start_s(self, features: FeatureConfig) -> float:
        """Time of the first value in seconds."""
        return features.start_s + self.first * features.segment_s

    def batch(self, window: int = WINDOW) -> dict[str, torch.Tensor | None]:
        """Windows of `window` segments covering the song -> a support batch (the whole song if shorter)."""
        n = len(self.arousal)
        starts = window_starts(n, window, window) if n > window else [0]
        size = min(n, window)
        take = lambda x: torch.from_numpy(np.stack([x[s : s + size] for s in starts]).astype(np.float32))
        return {
            "logmel": take(self.logmel),
            "arousal": take(self.arousal),
            "valence": take(self.valence),
            "global": None,
        }


# ------------------------------------------------------------------ annotation files
def read_simple_csv(path: Path, features: FeatureConfig) -> Curve:
    """`time[_s],arousal,valence` CSV -> curves on the segment grid (interpolated, never extrapolated)."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        rows = [row for row in csv.reader(handle) if any(cell.strip() for cell in row)]
    if not rows:
        raise AnnotationError(f"{path}: empty file; expected a header time,arousal,valence")
    header = [cell.strip().lower() for cell in rows[0]]
    time_key = next((k for k in ("time_s", "time") if k in header), None)
    if time_key is None or "arousal" not in header or "valence" not in header:
        raise AnnotationError(
            f"{path}: header {rows[0]}; expected columns time (or time_s, seconds), arousal, valence"
        )
    columns = [header.index(k) for k in (time_key, "arousal", "valence")]
    values = np.empty((len(rows) - 1, 3))
    for number, row in enumerate(rows[1:], start=2):
        for j, column in enumerate(columns):
            try:
                values[number - 2, j] = float(row[column])
            except (ValueError, IndexError) as error:
                cell = row[column] if column < len(row) else "<missing>"
                raise AnnotationError(
                    f"{path}, row {number}, column {header[column]!r}: {cell!r} is not a number"
                ) from error
    if not np.isfinite(values).all():
        raise AnnotationError(f"{path}: NaN or infinite values")
    time = values[:, 0]
    if len(time) < 2 or np.any(np.diff(time) <= 0):
        raise AnnotationError(f"{path}: need at least two rows with strictly increasing times")
    step, start = features.segment_s, features.start_s
    first = max(0, math.ceil((time[0] - start) / step - 1e-6))
    last = math.floor((time[-1] - start) / step + 1e-6)
    if last < first:
        raise AnnotationError(
            f"{path}: annotations end at {time[-1]:g} s; the first segment starts at "
            f"{start:g} s (curves are on a {step:g} s grid from there)"
        )
    grid = start + step * np.arange(first, last + 1)
    return first, *(np.interp(grid, time, values[:, j]).astype(np.float32) for j in (1, 2))


def _deam_dir(folder: Path) -> Path | None:
    """The folder with DEAM per-rater `arousal/` and `valence/` sub-folders, if `folder` is/holds one."""
    for candidate in (
        folder,
        folder / PER_RATER_DIR,
        folder / "annotations" / PER_RATER_DIR,
        folder / "DEAM_Annotations" / "annotations" / PER_RATER_DIR,
    ):
        if (candidate / "arousal").is_dir() and (candidate / "valence").is_dir():
            return candidate
    return None


def read_deam_rater(folder: Path, rater: str | None, features: FeatureConfig) -> dict[str, Curve]:
    """DEAM per-rater folder -> {song: curves of `rater`} for every song the rater annotated. Files without
    a WorkerId column (DEAM's anonymous raters, ids below 1001) are skipped, as the DEAM reader does."""
    issues = IssueLog(strict=False)
    start_ms = round(features.start_s * 1000)
    by_rater: dict[str, dict[str, Curve]] = {}
    for arousal_file in sorted((folder / "arousal").glob("*.csv")):
        valence_file = folder / "valence" / arousal_file.name
        if not valence_file.is_file():
            raise AnnotationError(f"{valence_file}: missing (the arousal file {arousal_file} exists)")
        arousal_table = read_csv_rows(arousal_file, issues)
        if RATER_COLUMN not in arousal_table[0]:
            continue
        arousal, _ = _read_time_rows(arousal_file, issues, RATER_COLUMN, start_ms, arousal_table)
        valence, _ = _read_time_rows(valence_file, issues, RATER_COLUMN, start_ms)
        for worker in set(arousal) & set(valence):
            n = min(len(arousal[worker]), len(valence[worker]))
            if n:
                song = normalise_id(arousal_file.stem)
                by_rater.setdefault(worker, {})[song] = (0, arousal[worker][:n], valence[worker][:n])
    if not by_rater:
        raise AnnotationError(f"{folder}: no per-rater curves with a {RATER_COLUMN} column")
    if rater is None or str(rater) not in by_rater:
        counts = sorted(by_rater.items(), key=lambda kv: -len(kv[1]))[:8]
        listing = ", ".join(f"{r} ({len(s)} songs)" for r, s in counts)
        what = "rater=<WorkerId> is required" if rater is None else f"rater={rater!r} has no curves there"
        raise AnnotationError(
            f"{folder}: DEAM per-rater layout, {what}; raters with the most songs: {listing}"
        )
    return by_rater[str(rater)]


def read_annotations(
    paths: Sequence[str], rater: str | None, features: FeatureConfig
) -> tuple[dict[str, Curve], set[str]]:
    """Annotation files/folders (either layout, see the module docstring) -> ({song id: curves}, the songs
    read from DEAM per-rater folders)."""
    curves: dict[str, Curve] = {}
    from_deam: set[str] = set()
    for item in map(Path, paths):
        if item.is_dir() and (deam := _deam_dir(item)) is not None:
            found = read_deam_rater(deam, rater, features)
            from_deam |= set(found)
        elif item.is_dir() or item.is_file():
            files = sorted(item.glob("*.csv")) if item.is_dir() else [item]
            if not files:
                raise AnnotationError(
                    f"annotations: {item} holds no .csv files and no DEAM arousal/ and valence/ folders"
                )
            found = {normalise_id(f.stem): read_simple_csv(f, features) for f in files}
        else:
            raise AnnotationError(f"annotations: {item} is neither a file nor a folder")
        twice = sorted(set(found) & set(curves))
        if twice:
            raise AnnotationError(f"annotations: song(s) {twice} annotated twice (again in {item})")
        curves.update(found)
    return curves, from_deam


def load_listener(
    predictor: Predictor, audio: Sequence[str], annotations: Sequence[str], rater: str | None = None
) -> list[AnnotatedSong]:
    """Pair the listener's annotations with audio files by song id (file stem) and compute the log-mel.
    Audio without annotations is an error, and so are annotation files without audio; from a DEAM
    per-rater folder (all songs of many raters) only the rater's songs with audio are used."""
    curves, from_deam = read_annotations(annotations, rater, predictor.features)
    files = {normalise_id(p.stem): p for p in collect_audio(list(audio), key="audio")}
    curves = {song: c for song, c in curves.items() if song in files or song not in from_deam}
    if not curves:
        raise AnnotationError(
            f"none of the rater's annotated songs {sorted(from_deam)[:10]} is among the audio inputs "
            f"{sorted(files)[:10]} (matched by file name)"
        )
    missing = sorted(set(curves) - set(files))
    unlabelled = sorted(set(files) - set(curves))
    if missing or unlabelled:
        raise AnnotationError(
            "songs must have both audio and annotations (matched by file name): "
            + (f"annotated but no audio: {missing}. " if missing else "")
            + (f"audio but no annotations: {unlabelled}" if unlabelled else "")
        )
    songs = []
    extractor = predictor.extractor()
    for song, (first, arousal, valence) in sorted(curves.items()):
        logmel = predictor.logmel(files[song], extractor)
        n = min(len(arousal), len(logmel) - first)
        if n <= 0:
            raise AnnotationError(
                f"song {song}: its annotations start at segment {first}, after the audio's "
                f"{len(logmel)} segments"
            )
        songs.append(
            AnnotatedSong(song, files[song], logmel[first : first + n], arousal[:n], valence[:n], first)
        )
    return songs


# ------------------------------------------------------------------ adaptation and scores
def adaptation_defaults(hparams: dict[str, Any]) -> dict[str, Any]:
    """Inner steps / lr / first_order from the checkpoint's task config ({} when it has none)."""
    task = hparams.get("task") or {}
    if not task:
        return {}
    steps = task.get("eval_inner_steps")
    return {
        "steps": int(task["inner_steps"] if steps is None else steps),
        "lr": float(task["inner_lr"]),
        "first_order": bool(task.get("first_order", True)),
    }


def resolve_adaptation(
    hparams: dict[str, Any], steps: int | None, lr: float | None, first_order: bool | None
) -> dict[str, Any]:
    """Explicit values win; the rest come from the checkpoint's task; ConfigError when neither has them."""
    defaults = adaptation_defaults(hparams)
    chosen = {"steps": steps, "lr": lr, "first_order": first_order}
    for key, value in chosen.items():
        if value is None:
            if key not in defaults:
                raise ConfigError(f"{key}: the checkpoint has no task config to take it from; set {key}=...")
            chosen[key] = defaults[key]
    if isinstance(chosen["steps"], bool) or not isinstance(chosen["steps"], int) or chosen["steps"] < 1:
        raise ConfigError(f"steps={chosen['steps']!r}: expected an integer >= 1")
    if not float(chosen["lr"]) > 0:
        raise ConfigError(f"lr={chosen['lr']!r}: expected a positive number")
    return chosen


def personalize(
    predictor: Predictor, support: Sequence[AnnotatedSong], steps: int, lr: float, first_order: bool = True
) -> Adaptation:
    """Adapt a copy of the predictor's network to the support songs (the predictor is not modified)."""
    if not support:
        raise ValueError("personalize: no support songs (every annotated song was held out)")
    batches = [
        {k: v if v is None else v.to(predictor.device) for k, v in song.batch().items()} for song in support
    ]
    return adapt(predictor.net, batches, steps, lr=lr, first_order=first_order)


@torch.no_grad()
def support_loss(net: nn.Module, songs: Sequence[AnnotatedSong], device: torch.device) -> float:
    """Mean eval-mode loss (spec section 3) over the songs' support batches."""
    was_training = net.training
    net.eval()
    try:
        losses = [
            batch_loss(net, {k: v if v is None else v.to(device) for k, v in s.batch().items()})[0]
            for s in songs
        ]
    finally:
        net.train(was_training)
    return float(torch.stack(losses).mean())


def song_scores(predictor: Predictor, net: nn.Module, song: AnnotatedSong) -> tuple[dict[str, float], Any]:
    """Whole-song prediction of `net` scored against the listener's curves -> (scores, predicted Curves)."""
    curves = predictor.predict(song.logmel, net=net)
    scores = scores_of(
        torch.from_numpy(curves.arousal),
        torch.from_numpy(curves.valence),
        torch.from_numpy(song.arousal),
        torch.from_numpy(song.valence),
    )
    return scores, curves

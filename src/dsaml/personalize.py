"""Personalisation: fit a model to one listener from a few of their annotated songs.

    songs = load_listener(predictor, audio=["music/"], annotations=["my_curves/"])          # simple CSVs
    songs = load_listener(predictor, audio=[...], annotations=["<DEAM per-rater dir>"], rater="A1B2...")
    config = AdaptationConfig(method="auto").resolve(predictor.hparams.get("task"))
    outcome = personalize_listener(predictor.net, songs[:-1], config, SlidingWindows(window), prior, device)
    scores, curves = song_scores(outcome.model, SlidingWindows(window), songs[-1], device)   # a held-out song

Annotations come in two layouts:
- simple: one CSV per song named like its audio file (<stem>.csv) with columns `time` (or `time_s`, in
  seconds, strictly increasing), `arousal`, `valence` in [-1, 1], at any rate (dsaml-predict's CSV output has
  this form); values are interpolated onto the 2 Hz segment grid (segment i starts at 15 + 0.5 i s).
- DEAM per-rater: a folder with `arousal/<song>.csv` and `valence/<song>.csv` holding a WorkerId column and
  sample_<ms>ms columns (DEAM's "annotations per each rater/dynamic (per second annotations)"); `rater`
  picks the listener's row.
How the model adapts (maml, head, calibrate, their combinations, auto) is `dsaml.meta.methods`.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dsaml.data.annotations import normalise_id, read_csv_rows
from dsaml.data.batch import SongSequence
from dsaml.data.catalogue import IssueLog
from dsaml.data.deam import PER_RATER_DIR, RATER_COLUMN, read_time_rows
from dsaml.data.features import FeatureConfig
from dsaml.meta import (
    AUTO,
    AdaptationConfig,
    CalibrationPrior,
    Personalized,
    SlidingWindows,
    calibration_prior,
    moving,
    personalize_net,
    select,
)
from dsaml.meta.listener_prior import without_listener_readout
from dsaml.meta.methods import needed_listener_prior
from dsaml.metrics import REPORTED, mean_scores, scores_of
from dsaml.models.checkpoint import save_network
from dsaml.outputs import record_output, write_text_atomic
from dsaml.plots import plot_curves
from dsaml.predictor import CheckpointError, Predictor, collect_audio

Curve = tuple[int, np.ndarray, np.ndarray]  # (first segment, arousal [T], valence [T])
LABEL_RANGE = (-1.0, 1.0)  # the curves' scale (DEAM's dynamic annotations; PMEmo's [0, 1] lies inside)


class AnnotationError(ValueError):
    """A listener's annotation file or folder cannot be used (the message names it and what was expected)."""


@dataclass
class AnnotatedSong:
    """One song of the listener: log-mel and their curves, aligned (label i belongs to segment i).

    Args:
        song (str): the song id (the audio file's stem).
        audio (Path): the audio file.
        logmel (np.ndarray): float32 [T, 51, 128], the audio's segments first .. first + T - 1.
        arousal (np.ndarray): float32 [T], in LABEL_RANGE.
        valence (np.ndarray): float32 [T], in LABEL_RANGE.
        first (int): segment of the audio where the curves start.
    """

    song: str
    audio: Path
    logmel: np.ndarray
    arousal: np.ndarray
    valence: np.ndarray
    first: int = 0  # segment of the audio where the curves start

    def start_s(self, features: FeatureConfig) -> float:
        """Time of the first value in seconds (start_s + first * segment_s)."""
        return features.start_s + self.first * features.segment_s

    def sequence(self, device: torch.device | str = "cpu") -> SongSequence:
        """The song as a sequence for `dsaml.meta`: logmel [T, 51, 128] on `device`, curves [T] on the CPU."""
        return {
            "logmel": torch.from_numpy(self.logmel).to(device),
            "arousal": torch.from_numpy(self.arousal),
            "valence": torch.from_numpy(self.valence),
            "global": None,
        }


# ------------------------------------------------------------------ annotation files
def check_label_range(where: str, name: str, values: np.ndarray, rows: np.ndarray | None = None) -> None:
    """Check a curve against LABEL_RANGE ([-1, 1]).

    Args:
        where (str): the file (named in the error).
        name (str): the curve's name ("arousal" | "valence").
        values (np.ndarray): the curve [T].
        rows (np.ndarray or None): the file row of each value (named in the error); None: its position.

    Raises:
        AnnotationError: naming the first value outside the range and how many are.
    """
    low, high = LABEL_RANGE
    outside = np.flatnonzero((values < low) | (values > high))
    if len(outside):
        i = int(outside[0])
        at = f"row {int(rows[i])}, " if rows is not None else f"value {i + 1}, "
        raise AnnotationError(
            f"{where}, {at}{name} = {values[i]:g} is outside the label range [{low:g}, {high:g}] "
            f"({len(outside)} value(s) outside); rescale the curves to [{low:g}, {high:g}]"
        )


def read_simple_csv(path: Path, features: FeatureConfig) -> Curve:
    """Read a simple `time[_s],arousal,valence` CSV onto the segment grid (interpolated, never extrapolated).

    Args:
        path (Path): the CSV (header time or time_s in seconds, strictly increasing; arousal, valence in
            LABEL_RANGE; at least two rows, any rate).
        features (FeatureConfig): the grid: segment i starts at start_s + i * segment_s.

    Returns:
        Curve: (first, arousal [T], valence [T]) float32: the curves at the starts of segments first ..
        first + T - 1, those within the annotated time span.

    Raises:
        AnnotationError: empty file, missing columns, a non-number / NaN / infinite cell, fewer than two
            rows, a negative or non-increasing time, a value outside LABEL_RANGE, or annotations that end
            before the first segment.
    """
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
    rows_of = np.arange(2, len(values) + 2)
    if not np.isfinite(values).all():
        bad = int(np.flatnonzero(~np.isfinite(values).all(axis=1))[0])
        raise AnnotationError(f"{path}, row {rows_of[bad]}: NaN or infinite value")
    time = values[:, 0]
    if len(time) < 2:
        raise AnnotationError(f"{path}: {len(time)} data row(s); need at least two (time, arousal, valence)")
    if time[0] < 0:
        raise AnnotationError(
            f"{path}, row {rows_of[0]}: time {time[0]:g} s is negative; times are seconds from the song's "
            "start"
        )
    back = np.flatnonzero(np.diff(time) <= 0)
    if len(back):
        i = int(back[0]) + 1
        raise AnnotationError(
            f"{path}, row {rows_of[i]}: time {time[i]:g} s is not after the previous row's "
            f"{time[i - 1]:g} s; "
            "times must strictly increase (sort the rows by time, one row per time)"
        )
    for j, name in ((1, "arousal"), (2, "valence")):
        check_label_range(str(path), name, values[:, j], rows_of)
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
    """One rater's curves from a DEAM per-rater folder. Files without a WorkerId column (DEAM's anonymous
    raters, ids below 1001) are skipped, as the DEAM reader does.

    Args:
        folder (Path): the folder holding `arousal/` and `valence/` (one <song>.csv each).
        rater (str or None): the WorkerId; None is an error that lists the raters with the most songs.
        features (FeatureConfig): the grid (the curves start at the sample_<ms>ms column of start_s).

    Returns:
        dict[str, Curve]: song id -> (0, arousal [T], valence [T]) float32, for every song the rater
        annotated.

    Raises:
        AnnotationError: a valence file missing, no per-rater curves, rater None or unknown (the message
            lists the raters with the most songs), or a value of the rater outside LABEL_RANGE.
        DataError: a malformed file (`dsaml.data.deam.read_time_rows`).
    """
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
        arousal, _ = read_time_rows(arousal_file, issues, RATER_COLUMN, start_ms, arousal_table)
        valence, _ = read_time_rows(valence_file, issues, RATER_COLUMN, start_ms)
        for worker in set(arousal) & set(valence):
            n = min(len(arousal[worker]), len(valence[worker]))
            if n:
                if worker == str(rater):
                    for file, curve in ((arousal_file, arousal[worker]), (valence_file, valence[worker])):
                        check_label_range(f"{file} ({RATER_COLUMN} {worker})", file.parent.name, curve[:n])
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
    """Read annotation files and folders of either layout (see the module docstring).

    Args:
        paths (Sequence[str]): simple CSV files, folders of them, or DEAM per-rater folders (or folders
            that hold one).
        rater (str or None): the WorkerId picked from DEAM per-rater folders.
        features (FeatureConfig): the segment grid.

    Returns:
        (curves, from_deam): song id -> `Curve`; the song ids read from DEAM per-rater folders.

    Raises:
        AnnotationError: a path that is neither file nor folder, a folder with no CSVs, a song annotated
            twice, or what `read_simple_csv` / `read_deam_rater` raise.
    """
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
    per-rater folder (all songs of many raters) only the rater's songs with audio are used. Each song is
    cut to the segments both its audio and its curves cover.

    Args:
        predictor (Predictor): the checkpoint (its feature settings and device featurise the audio).
        audio (Sequence[str]): audio files and folders (`collect_audio`).
        annotations (Sequence[str]): annotation files and folders (`read_annotations`).
        rater (str or None): the WorkerId in DEAM per-rater folders.

    Returns:
        list[AnnotatedSong]: the songs, sorted by id.

    Raises:
        AnnotationError: unreadable annotations, unmatched audio or annotations, or curves that start
            after the audio's end.
        ConfigError: no audio inputs, or a folder without audio.
        AudioDecodeError / ValueError: audio that cannot be decoded or is too short (`Predictor.logmel`).
    """
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
            AnnotatedSong(
                song,
                files[song],
                logmel[first : first + n],
                arousal[:n],
                valence[:n],
                first,
            )
        )
    return songs


# ------------------------------------------------------------------ scores
def song_scores(
    model: Personalized, predictor: SlidingWindows, song: AnnotatedSong, device: torch.device | str
) -> tuple[dict[str, float], tuple[np.ndarray, np.ndarray]]:
    """Whole-song prediction of `model` scored against the listener's curves.

    Args:
        model (Personalized): the (personalised) model.
        predictor (SlidingWindows): the sliding-window settings.
        song (AnnotatedSong): the song.
        device (torch.device or str): where the log-mel goes (the network's device).

    Returns:
        (scores, (arousal, valence)): `METRIC_KEYS` plus "average" as floats; the predicted curves, float32
        np.ndarray [T] each.
    """
    seq = song.sequence(device)
    arousal, valence = model.predict(predictor, seq)
    return scores_of(arousal, valence, seq["arousal"], seq["valence"]), (arousal.numpy(), valence.numpy())


@dataclass
class Outcome:
    """What `personalize_listener` chose.

    Args:
        model (Personalized): the personalised model.
        chosen (dict[str, Any]): {"method", "steps"} of the chosen candidate.
        candidates (list[dict[str, Any]]): the candidates `auto` scored ("method", "steps", "score",
            "folds"); [] for a fixed method.
        validation (str): how it validated (and which flat songs were left out), for the report.
    """

    model: Personalized
    chosen: dict[str, Any]
    candidates: list[dict[str, Any]]
    validation: str

    def describe(self) -> str:
        """'method=<m>, steps=<n>' and the output map when there is one."""
        calibration = self.model.calibration
        text = f"method={self.chosen['method']}, steps={self.chosen['steps']}"
        return text + (f", map {calibration.to_dict()}" if calibration else "")

    def candidate_rows(self) -> tuple[list[str], list[list[str]]]:
        """(header, rows) of auto's candidates, best validation score first; the chosen one marked *."""
        chosen = (self.chosen["method"], self.chosen["steps"])
        rows = [
            [c["method"] + (" *" if (c["method"], c["steps"]) == chosen else ""), str(c["steps"])]
            + [f"{c['score']:.4f}", " ".join(f"{v:.3f}" for v in c["folds"])]
            for c in sorted(self.candidates, key=lambda c: -c["score"])
        ]
        return ["method", "steps", "score", "per fold"], rows


def personalize_listener(
    net: torch.nn.Module,
    support: Sequence[AnnotatedSong],
    config: AdaptationConfig,
    predictor: SlidingWindows,
    prior: CalibrationPrior | None,
    device: torch.device | str,
    progress: Callable[[str], None] | None = None,
) -> Outcome:
    """Run `config.method` on the support songs ("auto": `dsaml.meta.select` chooses); `net` is not modified.

    Args:
        net (nn.Module): a `DSAMLNet`.
        support (Sequence[AnnotatedSong]): the listener's songs adapted on.
        config (AdaptationConfig): resolved (`AdaptationConfig.resolve`, e.g. by `adaptation_for`).
        predictor (SlidingWindows): the sliding-window settings.
        prior (CalibrationPrior or None): the calibration prior; required when a method calibrates.
        device (torch.device or str): the network's device.
        progress (Callable[[str], None] or None): auto: called with a message ("validation fold i/n")
            before each validation fold.

    Returns:
        Outcome: the model, what was chosen, auto's candidates and how it validated.

    Raises:
        ValueError: no support songs, or what `personalize_net` raises (a calibrating method without a
            prior).
    """
    if not support:
        raise ValueError("personalize: no support songs (every annotated song was held out)")
    sequences = [song.sequence(device) for song in support]
    flat = [
        song.song
        for song, seq in zip(support, sequences, strict=True)
        if config.skip_flat and not moving([seq])
    ]
    left_out = f"; left out, arousal or valence never moves: {', '.join(flat)}" if flat else ""
    if config.method == AUTO:
        selection = select(net, sequences, config, predictor, prior, progress)
        chosen, candidates = selection.chosen, selection.candidates
        return Outcome(selection.personalized, chosen, candidates, selection.validation + left_out)
    model = personalize_net(net, sequences, config, predictor, prior)
    return Outcome(
        model, {"method": model.method, "steps": model.steps}, [], "none (fixed method)" + left_out
    )


def holdout_scores(
    models: dict[str, Personalized],
    predictor: SlidingWindows,
    songs: Sequence[AnnotatedSong],
    device: torch.device | str,
) -> tuple[dict[str, dict[str, float]], dict[str, list[tuple[str, dict[str, float], tuple]]]]:
    """Score each model on the held-out songs.

    Args:
        models (dict[str, Personalized]): name -> model.
        predictor (SlidingWindows): the sliding-window settings.
        songs (Sequence[AnnotatedSong]): the held-out songs (at least one).
        device (torch.device or str): the networks' device.

    Returns:
        (means, per_song): name -> mean scores (`mean_scores`, with "n"); name -> [(song, scores,
        (arousal [T], valence [T]))] per song, in order.
    """
    per_song = {
        name: [(song.song, *song_scores(model, predictor, song, device)) for song in songs]
        for name, model in models.items()
    }
    return {name: mean_scores([row[1] for row in rows]) for name, rows in per_song.items()}, per_song


# ------------------------------------------------------------------ results
REPORT = "personalize_report.json"
NO_PRIOR_CANDIDATES = ("head", "maml")  # auto without a calibration prior and with no other candidate left


def adaptation_for(
    predictor: Predictor, config: AdaptationConfig
) -> tuple[AdaptationConfig, CalibrationPrior | None, bool]:
    """The adaptation settings and prior a checkpoint supports.

    Args:
        predictor (Predictor): the checkpoint (its task config and stored calibration prior).
        config (AdaptationConfig): the user's settings.

    Returns:
        (config, prior, narrowed): `config` resolved against the checkpoint's task; the calibration prior
        it uses (`calibration_prior`); whether the calibrate methods were left out of auto's candidates
        (method=auto, prior=auto and the checkpoint holds no calibration prior; with two or more songs the
        inner loops `NO_PRIOR_CANDIDATES` are then tried when no other candidate is left).

    Raises:
        ConfigError: an inner-loop setting the checkpoint cannot supply, a calibrating method with
            prior=auto on a checkpoint without a prior, or method=listener_prior on a checkpoint without a
            listener prior (auto leaves listener_prior out of its candidates there: `candidate_scores`).
    """
    config = config.resolve(predictor.hparams.get("task"))
    stored = predictor.hparams.get("calibration_prior")
    if config.learner == "listener_prior":
        needed_listener_prior(predictor.net)  # ConfigError naming where the prior comes from
    narrowed = config.method == AUTO and config.prior == "auto" and not stored
    if narrowed:  # the candidates the checkpoint can run; with more than one song the inner loops at least
        has_listeners = predictor.net.listener_prior is not None
        kept = {
            key: [
                m
                for m in getattr(config, key)
                if not m.endswith("calibrate") and (m != "listener_prior" or has_listeners)
            ]
            for key in ("auto_methods", "auto_single")
        }
        kept["auto_methods"] = kept["auto_methods"] or list(NO_PRIOR_CANDIDATES)
        config = AdaptationConfig.from_dict({**config.to_dict(), **kept})
    return config, calibration_prior(config, stored), narrowed


def load_baseline(path: str | None, predictor: Predictor, device: str, trust: bool = False) -> Predictor:
    """The model the personalised one is compared with on held-out songs.

    Args:
        path (str or None): a checkpoint; None or "": `predictor` itself.
        predictor (Predictor): the checkpoint being personalised.
        device (str): where to load the baseline.
        trust (bool): allow unpickling (`Predictor.load`).

    Returns:
        Predictor: the baseline.

    Raises:
        CheckpointError: the baseline's feature settings differ from `predictor`'s, or what
            `Predictor.load` raises.
    """
    if not path:
        return predictor
    baseline = Predictor.load(path, device, trust=trust)
    if baseline.features != predictor.features:
        raise CheckpointError(f"baseline={path}: its feature settings differ from ckpt={predictor.path}'s")
    return baseline


def split_holdout(
    songs: Sequence[AnnotatedSong], holdout: Sequence[str]
) -> tuple[list[AnnotatedSong], list[AnnotatedSong]]:
    """Split the listener's songs into support and held-out songs.

    Args:
        songs (Sequence[AnnotatedSong]): the listener's songs.
        holdout (Sequence[str]): ids of the songs held out.

    Returns:
        (support, held_out): the songs not named and those named, each in `songs`' order.

    Raises:
        AnnotationError: a name not among `songs`, or every song held out.
    """
    unknown = sorted(set(holdout) - {s.song for s in songs})
    if unknown:
        raise AnnotationError(f"holdout={unknown}: not among the annotated songs {[s.song for s in songs]}")
    support = [s for s in songs if s.song not in holdout]
    if not support:
        raise AnnotationError("every annotated song is held out; nothing to adapt on")
    return support, [s for s in songs if s.song in holdout]


def save_personalized(
    out: str | Path,
    predictor: Predictor,
    outcome: Outcome,
    config: AdaptationConfig,
    rater: str | None,
    support: Sequence[AnnotatedSong],
) -> Path:
    """Write the personalised model as a dsaml checkpoint (dsaml-predict reads it).

    The checkpoint holds the adapted weights, the source's features / task / calibration prior, and under
    ``hyper_parameters["personalized"]`` what was chosen and how (source, rater, songs, method, steps, lr,
    first_order, the output map, the listener_prior read-out, validation, candidates).

    Args:
        out (str or Path): the checkpoint to write (its folder is created).
        predictor (Predictor): the source checkpoint.
        outcome (Outcome): what `personalize_listener` returned.
        config (AdaptationConfig): the resolved settings (lr, first_order recorded).
        rater (str or None): the listener's WorkerId, when read from DEAM.
        support (Sequence[AnnotatedSong]): the songs adapted on.

    Returns:
        Path: the checkpoint written.
    """
    model = outcome.model
    net, readout = without_listener_readout(model.net)
    return save_network(
        out,
        net,
        features=predictor.features.to_dict(),
        task=predictor.hparams.get("task"),
        calibration_prior=predictor.hparams.get("calibration_prior"),
        personalized={
            "source": str(predictor.path),
            "rater": rater,
            "songs": [s.song for s in support],
            **outcome.chosen,
            "lr": config.lr,
            "first_order": config.first_order,
            "calibration": model.calibration.to_dict() if model.calibration else None,
            "listener_readout": readout,
            "validation": outcome.validation,
            "candidates": outcome.candidates,
        },
    )


def report_holdout(
    baseline: Predictor,
    outcome: Outcome,
    window: SlidingWindows,
    heldout: Sequence[AnnotatedSong],
    out: Path,
    plot: bool = True,
) -> tuple[tuple[list[str], list[list[str]]], Path]:
    """Score `baseline` and the personalised model on the held-out songs and write the report.

    Writes <out's folder>/REPORT ({"holdout": mean scores per model, "chosen", "validation",
    "candidates"}) and, with `plot`, `holdout_plot(out, song)` per song.

    Args:
        baseline (Predictor): the model compared with (its map applied).
        outcome (Outcome): the personalised model and what was chosen.
        window (SlidingWindows): the sliding-window settings.
        heldout (Sequence[AnnotatedSong]): the held-out songs (at least one).
        out (Path): the personalised checkpoint.
        plot (bool): also plot listener vs model curves per song.

    Returns:
        ((header, rows), report): the table of scores per song and model (then the means when there are
        several songs); the report's path.
    """
    models = {"baseline": Personalized(baseline.net, baseline.calibration), "personalized": outcome.model}
    means, per_song = holdout_scores(models, window, heldout, baseline.device)
    labelled = [(f"{song}: {name}", scores) for name in models for song, scores, _ in per_song[name]]
    labelled += [(f"mean: {name}", means[name]) for name in models] if len(heldout) > 1 else []
    header = ["song / model", *(key.replace("_", " ") for key in REPORTED)]
    rows = [[label, *(f"{scores[k]:.3f}" for k in REPORTED)] for label, scores in labelled]
    report = out.parent / REPORT
    payload = {
        "holdout": means,
        "chosen": outcome.chosen,
        "validation": outcome.validation,
        "candidates": outcome.candidates,
    }
    write_text_atomic(report, json.dumps(payload, indent=2))
    record_output(report, "personalize", checkpoint=str(out))
    for index, song in enumerate(heldout if plot else ()):
        png = holdout_plot(out, song.song)
        plot_curves(
            png,
            (song.arousal, song.valence),
            {name: per_song[name][index][2] for name in models},
            f"held-out song {song.song}: listener vs model",
            song.start_s(baseline.features),
            baseline.features.segment_s,
        )
        record_output(png, "personalize", checkpoint=str(out))
    return (header, rows), report


def holdout_plot(out: Path, song: str) -> Path:
    """The plot of the held-out song `song` written beside the personalised checkpoint `out`."""
    return out.parent / f"{out.stem}_{song}.png"

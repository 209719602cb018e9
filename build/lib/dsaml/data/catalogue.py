"""The normalised catalogue every dataset reader produces, and the rules applied to it.

A `Catalogue` holds songs (id, audio path, split, how features are stored), rater-averaged curves and
per-rater curves, all as float32 arrays on the 2 Hz label grid that starts at the feature start time
(label i belongs to segment i). Split rules and the original's PDMER rater filters live here too.
"""

from __future__ import annotations

import csv
import logging
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dsaml.data.validation import ConfigError, check_choice, check_positive

log = logging.getLogger(__name__)

SPLITS = ("train", "test")
STORE_MODES = ("clip", "song")
Curve = tuple[np.ndarray, np.ndarray]  # (arousal [T], valence [T]) float32
_SAMPLE_COLUMN = re.compile(r"^sample_(\d+)ms$")


class DataError(ValueError):
    """Bad dataset input (missing file, unmatched ids, malformed cell) in strict mode, or always fatal."""


@dataclass(frozen=True)
class DataIssue:
    """One problem found in the input: where (file, row, column) and what."""

    file: str
    message: str
    row: int | None = None
    column: str | None = None

    def __str__(self) -> str:
        where = (
            self.file
            + (f", row {self.row}" if self.row is not None else "")
            + (f", column {self.column!r}" if self.column else "")
        )
        return f"{where}: {self.message}"


class IssueLog:
    """Collects input problems; with strict=True the first one raises DataError instead."""

    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.issues: list[DataIssue] = []

    def report(
        self, file: str | Path, message: str, row: int | None = None, column: str | None = None
    ) -> None:
        issue = DataIssue(str(file), message, row, column)
        if self.strict:
            raise DataError(f"{issue} (strict=true; set strict=false to warn and continue)")
        self.issues.append(issue)
        log.warning("%s", issue)


@dataclass(frozen=True)
class Song:
    """A song; `mode` says how its features are stored (a fixed-length clip or the whole song)."""

    id: str
    audio_path: Path
    split: str
    mode: str


@dataclass
class Catalogue:
    """Everything a dataset reader found, normalised. Curves: float32 [T], label i <-> segment i."""

    dataset: str
    songs: dict[str, Song]
    averaged: dict[str, Curve]
    ratings: dict[tuple[str, str], Curve]  # (rater, song) -> curves
    per_rater: bool  # whether the dataset has per-rater curves at all (PMEmo: no)
    layout: str
    annotation_files: list[Path]
    issues: list[DataIssue] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    pdmer_pairs: set[tuple[str, str]] = field(default_factory=set)  # (rater, song) kept by the PDMER filters

    def song_ids(self, split: str | None = None) -> list[str]:
        return [s for s, song in self.songs.items() if split is None or song.split == split]


def song_sort_key(song_id: str) -> tuple[int, int | str]:
    """Numeric ids in numeric order, then anything else alphabetically."""
    return (0, int(song_id)) if song_id.isdigit() else (1, song_id)


def normalise_id(value: str) -> str:
    """'1001', ' 1001 ', '1001.0' -> '1001'; other text is kept stripped."""
    text = value.strip()
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() else text


def sample_column_ms(name: str) -> int | None:
    """'sample_15000ms' (spaces allowed around) -> 15000; anything else -> None."""
    match = _SAMPLE_COLUMN.match(name.strip())
    return int(match.group(1)) if match else None


def parse_cell(text: str, issues: IssueLog, file: Path, row: int, column: str) -> float:
    """A numeric cell -> float; empty / NaN -> nan; anything else is reported and read as nan."""
    text = text.strip()
    if text == "" or text.lower() == "nan":
        return float("nan")
    try:
        return float(text)
    except ValueError:
        issues.report(file, f"non-numeric value {text!r}", row, column)
        return float("nan")


def read_csv_rows(path: Path, issues: IssueLog, delimiter: str = ",") -> tuple[list[str], list[list[str]]]:
    """Header (stripped) and rows of a CSV file; a missing file is always a DataError."""
    if not path.is_file():
        raise DataError(f"annotation file not found: {path}")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        header = [cell.strip() for cell in next(reader, [])]
        rows = [row for row in reader if any(cell.strip() for cell in row)]
    if not header:
        raise DataError(f"{path}: empty file (no header row)")
    for number, row in enumerate(rows, start=2):
        if len(row) > len(header):
            issues.report(
                path, f"{len(row)} cells but the header has {len(header)}; extra cells ignored", number
            )
    return header, rows


def leading_run(
    values: dict[int, float], start_ms: int, step_ms: int, where: tuple[Path, int | None], issues: IssueLog
) -> np.ndarray:
    """Time-indexed values {ms: value} -> float32 [T] on the grid start_ms + step_ms * i.

    The curve is the leading run of non-empty values (trailing NaN trimmed). Values off the grid, or
    present after the first gap, are reported (never dropped silently).
    """
    file, row = where
    grid: dict[int, float] = {}
    for ms, value in values.items():
        index, remainder = divmod(ms - start_ms, step_ms)
        if remainder or index < 0:
            if not np.isnan(value):
                issues.report(
                    file, f"label time {ms} ms is not on the {step_ms} ms grid from {start_ms} ms", row
                )
            continue
        grid[index] = value
    length = 0
    while length in grid and not np.isnan(grid[length]):
        length += 1
    dropped = sum(1 for index, value in grid.items() if index > length and not np.isnan(value))
    if dropped:
        issues.report(
            file, f"{dropped} value(s) after the gap at {start_ms + step_ms * length} ms ignored", row
        )
    return np.array([grid[i] for i in range(length)], dtype=np.float32)


def pair_curves(arousal: np.ndarray, valence: np.ndarray, where: str, issues: IssueLog) -> Curve:
    """Check arousal/valence lengths agree; unequal lengths are reported and cut to the shorter."""
    if len(arousal) != len(valence):
        issues.report(
            where,
            f"unequal curve lengths: arousal {len(arousal)}, valence {len(valence)} values; "
            "both cut to the shorter",
        )
        n = min(len(arousal), len(valence))
        arousal, valence = arousal[:n], valence[:n]
    return arousal, valence


def match_ids(
    audio: dict[str, Path], labelled: set[str], audio_where: str, label_where: str, issues: IssueLog
) -> list[str]:
    """Song ids with both audio and labels; the others are reported (strict: error)."""
    for song in sorted(set(audio) - labelled, key=song_sort_key):
        issues.report(audio[song], f"song {song} has audio but no labels in {label_where}; skipped")
    for song in sorted(labelled - set(audio), key=song_sort_key):
        issues.report(label_where, f"song {song} has labels but no audio file in {audio_where}; skipped")
    return sorted(set(audio) & labelled, key=song_sort_key)


AUDIO_EXTENSIONS = (".mp3", ".wav", ".flac", ".ogg")


def find_audio(directory: Path) -> dict[str, Path]:
    """<directory>/<id>.<mp3|wav|flac|ogg> -> {id: path}; two files for one id is a DataError."""
    if not directory.is_dir():
        raise DataError(f"audio directory not found: {directory}")
    found: dict[str, Path] = {}
    for path in sorted(directory.iterdir()):
        if path.suffix.lower() in AUDIO_EXTENSIONS and path.is_file():
            song = normalise_id(path.stem)
            if song in found:
                raise DataError(f"two audio files for song {song}: {found[song]} and {path}")
            found[song] = path
    return found


@dataclass(frozen=True)
class SplitRule:
    """How songs are split. 'id_threshold': id >= test_min_id is test (DEAM: full songs 2001..2058).
    'random': a seeded share `test_fraction` of the songs is test (PMEmo has no official split)."""

    method: str = "id_threshold"
    test_min_id: int = 2001
    test_fraction: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        check_choice("data.split.method", self.method, ["id_threshold", "random"])
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"data.split.test_fraction={self.test_fraction}: expected 0 < value < 1")

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
class PdmerFilter:
    """The original's PDMER rater filters (spec section 4), configurable.

    Training ratings come only from songs with ids in [train_min_id, train_max_id]; a (rater, song) curve
    whose mean absolute deviation from its own mean over the first `flat_window` values is below
    `flat_threshold` is dropped (flat slider); then raters with fewer than `min_songs` songs are dropped.
    `apply_to_test` also applies the flat-curve filter to test ratings.
    """

    train_min_id: int | None = 1001
    train_max_id: int | None = 2000
    flat_threshold: float = 0.01
    flat_window: int = 60
    min_songs: int = 16
    apply_to_test: bool = False

    def __post_init__(self) -> None:
        check_positive("data.pdmer.flat_threshold", self.flat_threshold, allow_zero=True)
        check_positive("data.pdmer.flat_window", self.flat_window, integer=True)
        check_positive("data.pdmer.min_songs", self.min_songs, integer=True)

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


def summarise_issues(issues: list[str], limit: int = 5) -> list[str]:
    """Issue texts grouped by kind (digits ignored), most frequent first, with up to `limit` examples each."""
    groups: dict[str, list[str]] = defaultdict(list)
    for issue in issues:
        groups[re.sub(r"\d+", "N", issue.split(": ", 1)[-1])].append(issue)
    lines = []
    for kind, items in sorted(groups.items(), key=lambda item: -len(item[1])):
        lines.append(f"{len(items)} x {kind}")
        lines.extend(f"    {issue}" for issue in items[:limit])
    return lines

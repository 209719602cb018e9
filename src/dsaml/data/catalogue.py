"""The normalised catalogue every dataset reader produces, and the input problems found on the way.

A `Catalogue` holds songs (id, audio path, split, how features are stored), rater-averaged curves and
per-rater curves, all as float32 arrays on the 2 Hz label grid that starts at the feature start time
(label i belongs to segment i). The readers' CSV parsing is in `dsaml.data.annotations`; the split rules and
the original's PDMER rater filters applied to a catalogue are in `dsaml.data.rules`.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

SPLITS = ("train", "test")
STORE_MODES = ("clip", "song")
Curve = tuple[np.ndarray, np.ndarray]  # (arousal [T], valence [T]) float32


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


def song_sort_key(song_id: str) -> tuple[int, int | str]:
    """Numeric ids in numeric order, then anything else alphabetically."""
    return (0, int(song_id)) if song_id.isdigit() else (1, song_id)


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

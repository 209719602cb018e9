"""DEAM reader: dataset root (nested as in the original's README, or flat as the archives unzip) -> Catalogue.

Nested: <root>/DEAM_Annotations/annotations/..., <root>/DEAM_audio/MEMD_audio/<id>.mp3
Flat:   <root>/annotations/...,                  <root>/MEMD_audio/<id>.mp3
Averaged curves come from the wide arousal.csv / valence.csv, per-rater curves from one file per song and
dimension with a WorkerId column (files without it are anonymous and not used, as in the original).
Arousal and valence are aligned by the time in the column name, never by position.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dsaml.data.annotations import (
    find_audio,
    leading_run,
    match_ids,
    normalise_id,
    pair_curves,
    parse_cell,
    read_csv_rows,
    sample_column_ms,
)
from dsaml.data.catalogue import Catalogue, Curve, DataError, IssueLog, Song
from dsaml.data.rules import SplitRule

LAYOUTS = {
    "nested": ("DEAM_Annotations/annotations", "DEAM_audio/MEMD_audio"),
    "flat": ("annotations", "MEMD_audio"),
}
AVERAGED_DIR = "annotations averaged per song/dynamic (per second annotations)"
PER_RATER_DIR = "annotations per each rater/dynamic (per second annotations)"
RATER_COLUMN = "WorkerId"
STEP_MS = 500


def detect_layout(root: Path, layout: str = "auto") -> str:
    """'auto' -> whichever of nested / flat exists under root (nested wins if both); checks the choice."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"DEAM root not found: {root}")
    present = [name for name, (ann, _) in LAYOUTS.items() if (root / ann).is_dir()]
    if layout == "auto":
        if not present:
            raise DataError(
                f"{root}: no DEAM annotations found; expected {root / LAYOUTS['nested'][0]} "
                f"(nested layout) or {root / LAYOUTS['flat'][0]} (flat layout)"
            )
        return present[0]
    if layout not in present:
        raise DataError(
            f"{root}: data.layout={layout} but {root / LAYOUTS[layout][0]} does not exist "
            f"(layouts found: {present or 'none'})"
        )
    return layout


def read_time_rows(
    path: Path,
    issues: IssueLog,
    key_column: str,
    start_ms: int,
    table: tuple[list[str], list[list[str]]] | None = None,
) -> tuple[dict[str, np.ndarray], int]:
    """Wide CSV (key column + sample_XXXms columns) -> ({key: leading-run curve float32 [T]}, the number
    of label columns on the grid, i.e. the longest curve the file can hold). `table`: the file's
    (header, rows) when already read."""
    header, rows = table or read_csv_rows(path, issues)
    if key_column not in header:
        raise DataError(f"{path}: no {key_column!r} column (header starts {header[:3]})")
    key_index = header.index(key_column)
    times = {i: ms for i, name in enumerate(header) if (ms := sample_column_ms(name)) is not None}
    if not times:
        raise DataError(f"{path}: no sample_<ms>ms columns in the header")
    curves: dict[str, np.ndarray] = {}
    for number, row in enumerate(rows, start=2):
        key = normalise_id(row[key_index]) if key_index < len(row) else ""
        if not key:
            issues.report(path, f"empty {key_column}; row skipped", number, key_column)
            continue
        if key in curves:
            issues.report(
                path, f"{key_column} {key} appears again; the first row is used", number, key_column
            )
            continue
        values = {
            ms: parse_cell(row[i], issues, path, number, header[i]) if i < len(row) else float("nan")
            for i, ms in times.items()
        }
        curves[key] = leading_run(values, start_ms, STEP_MS, (path, number), issues)
    return curves, sum(1 for ms in times.values() if ms >= start_ms and (ms - start_ms) % STEP_MS == 0)


def _pair(
    arousal_table: tuple[dict[str, np.ndarray], int],
    valence_table: tuple[dict[str, np.ndarray], int],
    where: tuple[Path, Path],
    issues: IssueLog,
    what: str,
) -> dict[str, Curve]:
    """Join arousal and valence curves by key; a key in only one file is reported.

    DEAM's arousal files have one label column more than its valence files: curves are first cut to the
    columns both files have (a known quirk, not an issue); lengths that still differ are reported.
    """
    width = min(arousal_table[1], valence_table[1])
    arousal = {key: curve[:width] for key, curve in arousal_table[0].items()}
    valence = {key: curve[:width] for key, curve in valence_table[0].items()}
    for key in sorted(set(arousal) ^ set(valence)):
        missing_in = where[1] if key in arousal else where[0]
        issues.report(missing_in, f"{what} {key} has no row here but has one in the other dimension's file")
    return {
        key: pair_curves(arousal[key], valence[key], f"{where[0]} / {where[1]} ({what} {key})", issues)
        for key in arousal
        if key in valence
    }


def read_deam(
    root: str | Path,
    *,
    name: str = "deam",
    layout: str = "auto",
    start_ms: int = 15000,
    split: SplitRule | None = None,
    store_as: dict[str, str] | None = None,
    strict: bool = False,
) -> Catalogue:
    """Read a DEAM-format tree into a Catalogue (ratings unfiltered; PDMER filters are applied later)."""
    root = Path(root)
    issues = IssueLog(strict)
    layout = detect_layout(root, layout)
    ann_dir, audio_dir = (root / part for part in LAYOUTS[layout])
    split = split or SplitRule()
    store_as = store_as or {"train": "clip", "test": "song"}

    averaged_dir = ann_dir / AVERAGED_DIR
    files = (averaged_dir / "arousal.csv", averaged_dir / "valence.csv")
    averaged_a, averaged_v = (read_time_rows(f, issues, "song_id", start_ms) for f in files)
    averaged = _pair(averaged_a, averaged_v, files, issues, "song")
    audio = find_audio(audio_dir)
    song_ids = match_ids(audio, set(averaged), str(audio_dir), str(files[0].parent), issues)
    splits = split.assign(song_ids)
    songs = {s: Song(s, audio[s], splits[s], store_as[splits[s]]) for s in song_ids}

    ratings, rater_files, anonymous = _read_raters(ann_dir / PER_RATER_DIR, songs, issues, start_ms)
    notes = [f"layout: {layout} ({ann_dir})", f"{len(songs)} songs with audio and averaged curves"]
    if anonymous:
        notes.append(
            f"{anonymous} songs' per-rater files have no {RATER_COLUMN} column (anonymous raters): "
            "not used for per-rater curves"
        )
    return Catalogue(
        dataset=name,
        songs=songs,
        averaged={s: averaged[s] for s in song_ids},
        ratings=ratings,
        per_rater=True,
        layout=layout,
        annotation_files=[*files, *rater_files],
        issues=issues.issues,
        notes=notes,
    )


def _read_raters(
    directory: Path, songs: dict[str, Song], issues: IssueLog, start_ms: int
) -> tuple[dict[tuple[str, str], Curve], list[Path], int]:
    """Per-rater curves of the catalogue's songs -> ({(rater, song): curves}, files read, anonymous count)."""
    ratings: dict[tuple[str, str], Curve] = {}
    files: list[Path] = []
    anonymous = 0
    if not directory.is_dir():
        issues.report(directory, "per-rater annotation directory not found: no per-rater curves")
        return ratings, files, anonymous
    for song_id in songs:
        pair = (directory / "arousal" / f"{song_id}.csv", directory / "valence" / f"{song_id}.csv")
        if not (pair[0].is_file() and pair[1].is_file()):
            if pair[0].is_file() or pair[1].is_file():
                missing = pair[1] if pair[0].is_file() else pair[0]
                issues.report(
                    missing, f"per-rater file missing for song {song_id} (the other dimension exists)"
                )
            continue
        tables = [read_csv_rows(path, issues) for path in pair]
        if not all(RATER_COLUMN in header for header, _ in tables):
            anonymous += 1
            continue
        files.extend(pair)
        arousal, valence = (
            read_time_rows(path, issues, RATER_COLUMN, start_ms, table)
            for path, table in zip(pair, tables, strict=True)
        )
        for rater, curves in _pair(arousal, valence, pair, issues, "rater").items():
            ratings[(rater, song_id)] = curves
    return ratings, files, anonymous

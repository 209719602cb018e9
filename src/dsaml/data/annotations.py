"""Reading annotation CSVs and audio folders into catalogue pieces: ids, cells, rows, curves, audio files.

Shared by the dataset readers (`dsaml.data.deam`, `dsaml.data.pmemo`) and by `dsaml-personalize`'s rating
files. Problems go to an `IssueLog` (strict mode raises `DataError` at the first one).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np

from dsaml.data.catalogue import Curve, DataError, IssueLog, song_sort_key

_SAMPLE_COLUMN = re.compile(r"^sample_(\d+)ms$")


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
    for line, row in enumerate(rows, start=2):
        if len(row) > len(header):
            issues.report(
                path, f"{len(row)} cells but the header has {len(header)}; extra cells ignored", line
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

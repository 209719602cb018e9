"""PMEmo 2019 reader: <root>/chorus/<musicId>.mp3 + annotations/dynamic_annotations.csv -> Catalogue.

The dynamic annotations are LONG format (musicId, frameTime, Arousal(mean), Valence(mean)), one row per
song and 0.5 s step. Only rater means are released, so the catalogue has no per-rater curves (DMER only).
Whether frameTime marks the start or the end of its 0.5 s segment is read from the data (`frame_time=auto`:
the first frameTime equals the feature start -> start; start + 0.5 s -> end) or set explicitly.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from dsaml.data import annotations
from dsaml.data.catalogue import Catalogue, DataError, IssueLog, Song
from dsaml.data.rules import SplitRule

ANNOTATIONS = "annotations/dynamic_annotations.csv"
AUDIO_DIR = "chorus"
COLUMNS = ("musicId", "frameTime", "Arousal(mean)", "Valence(mean)")
STEP_MS = 500
FRAME_TIMES = ("auto", "start", "end")


def read_pmemo(
    root: str | Path,
    *,
    name: str = "pmemo",
    start_ms: int = 15000,
    frame_time: str = "auto",
    split: SplitRule | None = None,
    store_as: dict[str, str] | None = None,
    strict: bool = False,
) -> Catalogue:
    """Read a PMEmo tree into a Catalogue with averaged curves only."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"PMEmo root not found: {root}")
    issues = IssueLog(strict)
    path = root / ANNOTATIONS
    header, rows = annotations.read_csv_rows(path, issues)
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; expected {list(COLUMNS)}, found {header}")
    index = [header.index(c) for c in COLUMNS]

    values: dict[str, tuple[dict[int, float], dict[int, float]]] = defaultdict(lambda: ({}, {}))
    for number, row in enumerate(rows, start=2):
        cells = [row[i] if i < len(row) else "" for i in index]
        song = annotations.normalise_id(cells[0])
        time_s = annotations.parse_cell(cells[1], issues, path, number, COLUMNS[1])
        if not song or time_s != time_s:
            issues.report(path, "row without a musicId or frameTime; skipped", number)
            continue
        ms = round(time_s * 1000)
        for dim, (cell, column) in enumerate(zip(cells[2:], COLUMNS[2:], strict=True)):
            if ms in values[song][dim]:
                issues.report(
                    path,
                    f"musicId {song} has frameTime {time_s} twice; the first row is used",
                    number,
                    column,
                )
                continue
            values[song][dim][ms] = annotations.parse_cell(cell, issues, path, number, column)
    if not values:
        raise DataError(f"{path}: no annotation rows")

    first_ms = min(min(a) for a, _ in values.values())
    shift = _frame_time_shift(frame_time, first_ms, start_ms, path)
    averaged = {}
    for song, dims in values.items():
        arousal, valence = (
            annotations.leading_run(
                {ms - shift: v for ms, v in d.items()}, start_ms, STEP_MS, (path, None), issues
            )
            for d in dims
        )
        averaged[song] = annotations.pair_curves(arousal, valence, f"{path} (musicId {song})", issues)

    audio = annotations.find_audio(root / AUDIO_DIR)
    song_ids = annotations.match_ids(audio, set(averaged), str(root / AUDIO_DIR), str(path), issues)
    split = split or SplitRule(method="random")
    store_as = store_as or {"train": "song", "test": "song"}
    splits = split.assign(song_ids)
    notes = [
        f"{len(song_ids)} songs with audio and averaged curves",
        f"frameTime read as segment {'end' if shift else 'start'} (first frameTime {first_ms / 1000:g} s)",
        "PMEmo has no per-rater curves: DMER only",
    ]
    return Catalogue(
        dataset=name,
        songs={s: Song(s, audio[s], splits[s], store_as[splits[s]]) for s in song_ids},
        averaged={s: averaged[s] for s in song_ids},
        ratings={},
        per_rater=False,
        layout="pmemo",
        annotation_files=[path],
        issues=issues.issues,
        notes=notes,
    )


def _frame_time_shift(frame_time: str, first_ms: int, start_ms: int, path: Path) -> int:
    """Milliseconds to subtract from frameTime to get the segment start."""
    if frame_time == "start":
        return 0
    if frame_time == "end":
        return STEP_MS
    if first_ms == start_ms:
        return 0
    if first_ms == start_ms + STEP_MS:
        return STEP_MS
    raise DataError(
        f"{path}: the first frameTime is {first_ms / 1000:g} s; with features starting at "
        f"{start_ms / 1000:g} s expected {start_ms / 1000:g} (segment start) or "
        f"{(start_ms + STEP_MS) / 1000:g} (segment end); set data.frame_time=start|end"
    )

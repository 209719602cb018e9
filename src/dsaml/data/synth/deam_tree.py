"""Write annotations in DEAM's on-disk format, quirks included (see docs/datasets.md).

Layouts: "nested" (`DEAM_Annotations/annotations/...`, `DEAM_audio/MEMD_audio/<id>.mp3`, as the original
DSAML README asks) and "flat" (`annotations/`, `MEMD_audio/` directly under the root, as the official
archives unzip). Quirks reproduced: wide 2 Hz tables `song_id, sample_15000ms, ...` with empty trailing
cells for shorter songs; arousal.csv one column longer than valence.csv; stray spaces in header cells;
per-rater files with a `WorkerId` column for ids >= 1001 and without it (anonymous raters) below; static
song-level tables with ", " separated headers and a stray space in one header of the 2000_2058 table.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

AVERAGED = "annotations averaged per song"
PER_RATER = "annotations per each rater"
DYNAMIC = "dynamic (per second annotations)"
FIRST_WORKER_ID_SONG = 1001  # per-rater files of lower ids have no WorkerId column
STATIC_SPLIT = 2000  # static tables: songs 1..2000 vs 2000..2058


def annotations_dir(root: Path, layout: str) -> Path:
    return root / "DEAM_Annotations" / "annotations" if layout == "nested" else root / "annotations"


def audio_dir(root: Path, layout: str) -> Path:
    return root / "DEAM_audio" / "MEMD_audio" if layout == "nested" else root / "MEMD_audio"


def layout_roots(root: Path, layout: str) -> list[Path]:
    """The top-level entries under `root` that a corpus of this layout creates."""
    return (
        [root / "DEAM_Annotations", root / "DEAM_audio"]
        if layout == "nested"
        else [root / "annotations", root / "MEMD_audio"]
    )


def sample_column(i: int) -> str:
    """Column name of label i (time 15 s + 0.5 s i): sample_15000ms, sample_15500ms, ..."""
    return f"sample_{15000 + 500 * i}ms"


def _fmt(x: float) -> str:
    return f"{x:.6f}"


def _header_cells(n: int) -> list[str]:
    """sample_* header cells with DEAM's stray spaces (every 13th cell and the last one)."""
    cells = [sample_column(i) for i in range(n)]
    return [f" {c}" if (i % 13 == 12) else c for i, c in enumerate(cells[:-1])] + [f"{cells[-1]} "]


def write_averaged(path: Path, curves: dict[int, np.ndarray]) -> None:
    """Wide table: one row per song (sorted by id), trailing cells empty for shorter songs."""
    width = max(len(c) for c in curves.values())
    lines = [",".join(["song_id", *_header_cells(width)])]
    for song_id in sorted(curves):
        values = [_fmt(x) for x in curves[song_id]]
        lines.append(",".join([str(song_id), *values, *([""] * (width - len(values)))]))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def write_per_rater(path: Path, song_id: int, rater_ids: Sequence[str], curves: Sequence[np.ndarray]) -> None:
    """One song's per-rater table: a row per rater; `WorkerId` first only for ids >= 1001."""
    named = song_id >= FIRST_WORKER_ID_SONG
    cells = [sample_column(i) for i in range(len(curves[0]))]
    lines = [",".join((["WorkerId"] if named else []) + cells)]
    for rater_id, curve in zip(rater_ids, curves, strict=True):
        lines.append(",".join(([rater_id] if named else []) + [_fmt(x) for x in curve]))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def static_rating(curve: np.ndarray, reduce=np.mean) -> float:
    """Song-level rating on DEAM's 1..9 scale implied by a dynamic curve in [-1, 1] (its mean by default)."""
    return float(np.clip(5.0 + 4.0 * reduce(curve), 1.0, 9.0))


def write_static_averaged(ann_dir: Path, songs: dict[int, dict[str, list[np.ndarray]]]) -> None:
    """static_annotations_averaged_songs_1_2000.csv and ..._2000_2058.csv from each song's rater curves.

    `songs[id] = {"arousal": [curve per rater], "valence": [...]}`; a rater's static value is
    `static_rating(curve)`, and its max/min values (2000_2058 table) use the curve's max/min instead of mean.
    """
    out = ann_dir / AVERAGED / "song_level"
    out.mkdir(parents=True, exist_ok=True)
    low = ["song_id, valence_mean, valence_std, arousal_mean, arousal_std"]
    high = [
        "song_id,valence_mean,valence_std,valence_max_mean,valence_max_std,valence_min_mean,valence_min_std,"
        "arousal_mean,arousal_std,arousal_max_mean, arousal_max_std,arousal_min_mean,arousal_min_std"
    ]
    for song_id in sorted(songs):
        stats = []
        for dim in ("valence", "arousal"):
            for reduce in (np.mean, np.max, np.min) if song_id > STATIC_SPLIT else (np.mean,):
                ratings = np.array([static_rating(c, reduce) for c in songs[song_id][dim]])
                stats += [f"{ratings.mean():.2f}", f"{ratings.std():.2f}"]
        (high if song_id > STATIC_SPLIT else low).append(",".join([str(song_id), *stats]))
    (out / "static_annotations_averaged_songs_1_2000.csv").write_text("\n".join(low) + "\n")
    (out / "static_annotations_averaged_songs_2000_2058.csv").write_text("\n".join(high) + "\n")


def write_static_per_rater(ann_dir: Path, rows: list[tuple[int, str, float, float]]) -> None:
    """static_annotations_songs_1_2000.csv / ..._2000_2058.csv: `song_id, WorkerId, valence, arousal`
    per (song, rater); WorkerId is empty for the anonymous raters of ids < 1001. rows: (id, rater, v, a)."""
    out = ann_dir / PER_RATER / "song_level"
    out.mkdir(parents=True, exist_ok=True)
    for name, keep in (("1_2000", lambda s: s <= STATIC_SPLIT), ("2000_2058", lambda s: s > STATIC_SPLIT)):
        lines = ["song_id, WorkerId, valence, arousal"]
        for song_id, rater_id, valence, arousal in sorted(rows):
            if keep(song_id):
                worker = rater_id if song_id >= FIRST_WORKER_ID_SONG else ""
                lines.append(f"{song_id},{worker},{valence:.0f},{arousal:.0f}")
        (out / f"static_annotations_songs_{name}.csv").write_text("\n".join(lines) + "\n")


def write_annotations(root: Path, layout: str, songs: list[dict]) -> Path:
    """Write every annotation file for `songs` (dicts with id, rater_ids, rater_arousal, rater_valence,
    arousal_mean, valence_mean); returns the annotations directory."""
    ann = annotations_dir(root, layout)
    dyn = ann / AVERAGED / DYNAMIC
    write_averaged(dyn / "arousal.csv", {s["id"]: s["arousal_mean"] for s in songs})
    write_averaged(dyn / "valence.csv", {s["id"]: s["valence_mean"] for s in songs})
    for s in songs:
        for dim in ("arousal", "valence"):
            path = ann / PER_RATER / DYNAMIC / dim / f"{s['id']}.csv"
            write_per_rater(path, s["id"], s["rater_ids"], s[f"rater_{dim}"])
    write_static_averaged(
        ann, {s["id"]: {"arousal": s["rater_arousal"], "valence": s["rater_valence"]} for s in songs}
    )
    write_static_per_rater(
        ann,
        [
            (s["id"], r, round(static_rating(v)), round(static_rating(a)))
            for s in songs
            for r, a, v in zip(s["rater_ids"], s["rater_arousal"], s["rater_valence"], strict=True)
        ],
    )
    return ann

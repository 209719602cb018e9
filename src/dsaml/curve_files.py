"""A song's predicted emotion curves as files (what dsaml-predict writes per song).

    names = output_names(files)                                  # {audio path: distinct output name}
    written = write_prediction(predictor, predictor.logmel(path), path, out / names[path], "csv")

<name>.csv has columns time_s, arousal, valence (one row every 0.5 s from 15 s, as DEAM's labels; time_s
is the start of the segment), <name>.json holds {"song", "audio", "checkpoint", "time_s", "arousal",
"valence"}, and <name>.png plots the curves. Each written file is listed in the folder's record
(`dsaml.outputs`), which lets a later run replace them (and only them) and drop the song's outputs it no
longer writes, so a song's files always come from one model.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from dsaml.outputs import atomic_output, forget_output, record_output, recorded
from dsaml.plots import plot_prediction
from dsaml.predictor import DEFAULT_STITCH, DEFAULT_STRIDE, Curves, Predictor
from dsaml.reporting import finite

FORMATS = ("csv", "json")


def output_names(files: list[Path]) -> dict[Path, str]:
    """A distinct output name per file: its stem, or stem_<ext> / stem_<n> when stems collide."""
    names: dict[Path, str] = {}
    used: set[str] = set()
    for path in files:
        name = path.stem
        if name in used:
            name = f"{path.stem}_{path.suffix.lstrip('.').lower()}"
        count = 2
        while name in used:
            name, count = f"{path.stem}_{count}", count + 1
        used.add(name)
        names[path] = name
    return names


def write_curves(curves: Curves, path: Path, fmt: str, meta: dict[str, str]) -> Path:
    """Write curves as <path>.csv (time_s, arousal, valence) or <path>.json (meta + the three lists)."""
    target = path.with_name(f"{path.name}.{fmt}")
    with atomic_output(target) as tmp:
        if fmt == "csv":
            with tmp.open("w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["time_s", "arousal", "valence"])
                writer.writerows((f"{t:.1f}", f"{a:.6f}", f"{v:.6f}") for t, a, v in curves.rows())
        else:
            payload = {
                **meta,
                "time_s": curves.time_s.round(3).tolist(),
                "arousal": curves.arousal.tolist(),
                "valence": curves.valence.tolist(),
            }
            tmp.write_text(json.dumps(finite(payload), indent=1, allow_nan=False))  # NaN -> null
    return target


def output_files(folder: Path, name: str, fmt: str, plot: bool) -> list[Path]:
    """The files `write_prediction` writes for the song `name` into `folder`: <name>.<fmt>, <name>.png."""
    return [folder / f"{name}.{fmt}", *([folder / f"{name}.png"] if plot else [])]


def write_prediction(
    predictor: Predictor,
    logmel: np.ndarray,
    audio: Path,
    path: Path,
    fmt: str,
    plot: bool = True,
    stride: int = DEFAULT_STRIDE,
    stitch: str = DEFAULT_STITCH,
    batch_size: int = 32,
    progress: Callable[[int, int], None] | None = None,
) -> list[Path]:
    """Predict the song `audio` from its log-mel [T, 51, 128] and write <path>.<fmt> (and <path>.png with
    `plot`) -> the written files. `progress(done, total)` after each batch of windows."""
    curves = predictor.predict(logmel, stride=stride, stitch=stitch, batch_size=batch_size, progress=progress)
    meta = {"song": path.name, "audio": str(audio), "checkpoint": str(predictor.path)}
    written = [write_curves(curves, path, fmt, meta)]
    if plot:
        title = f"{audio.name}  ({len(curves.time_s)} x 0.5 s)"
        png = path.parent / f"{path.name}.png"
        written.append(plot_prediction(png, curves.time_s, curves.arousal, curves.valence, title))
    for stale in set(earlier_outputs(path.parent, path.name)) - {p.name for p in written}:
        forget_output(path.parent / stale)  # e.g. another model's plot: a song's outputs come from one run
    for file in written:
        record_output(file, "prediction", **meta)
    return written


def earlier_outputs(folder: Path, name: str) -> dict[str, str]:
    """The files an earlier dsaml-predict wrote for the song `name` into `folder` -> their checkpoint."""
    return {
        file: str(entry.get("checkpoint"))
        for file, entry in recorded(folder).items()
        if entry.get("kind") == "prediction" and entry.get("song") == name
    }

"""A song's predicted emotion curves as files (what dsaml-predict writes per song).

    names = output_names(files)                                  # {audio path: distinct output name}
    written = write_prediction(predictor, predictor.logmel(path), path, out / names[path], "csv")

<name>.csv has columns time_s, arousal, valence (one row every 0.5 s from 15 s, as DEAM's labels; time_s
is the start of the segment), <name>.json holds {"song", "audio", "checkpoint", "time_s", "arousal",
"valence"}, and <name>.png plots the curves.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from dsaml.plots import plot_prediction
from dsaml.predictor import DEFAULT_STITCH, DEFAULT_STRIDE, Curves, Predictor

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
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        target = path.with_suffix(".csv")
        with target.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["time_s", "arousal", "valence"])
            writer.writerows((f"{t:.1f}", f"{a:.6f}", f"{v:.6f}") for t, a, v in curves.rows())
        return target
    target = path.with_suffix(".json")
    payload = {
        **meta,
        "time_s": curves.time_s.round(3).tolist(),
        "arousal": curves.arousal.tolist(),
        "valence": curves.valence.tolist(),
    }
    target.write_text(json.dumps(payload, indent=1))
    return target


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
    return written

"""Benchmark: what generating a synthetic corpus costs (dsaml-synth), and what our choices buy.

Per 45 s excerpt: rendering (numpy) and MP3 encoding, with soundfile's default MP3 settings (baseline) vs
ours (compression_level 0.9, VBR), in CPU seconds. Then a small corpus of 44.1 kHz stereo excerpts
generated end to end with 1 worker (baseline) vs `--workers` processes, in wall seconds.

    .venv/bin/python experiments/benchmarks/bench_synth.py              # 8 excerpts, 2 workers
    .venv/bin/python experiments/benchmarks/bench_synth.py --clips 16 --workers 4

The last table: the demo mix rendered as MP3 (DEAM's container) and as FLAC (`audio_format=flac`),
interleaved, in songs per wall second (results: experiments/benchmarks/RESULTS.md).

Recorded (2026-11-24, this 2-core machine shared with other jobs, load average ~9, `--repeats 2 --clips 6`):
one excerpt, CPU s: 44.1 kHz stereo render 0.326, encode default 0.878 / ours 0.718 (1.15x);
44.1 kHz mono 0.187, 0.416 / 0.336 (1.15x); 22.05 kHz mono 0.090, 0.261 / 0.222 (1.12x);
16 kHz mono 0.059, 0.207 / 0.195 (1.05x). The pool's wall-clock gain could not be measured under that load
(both cores busy with other jobs: 13.6 s vs 17.0 s); whole presets, CPU s (user + sys): tiny 10.5,
demo 150 (so ~5 s and ~75 s wall on 2 idle cores).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from rich.console import Console
from rich.table import Table

from dsaml.data.synth import generate_corpus, load_preset
from dsaml.data.synth.curves import song_curves
from dsaml.data.synth.music import render_music


def _cpu(repeats: int, fn, *args, **kwargs) -> float:
    """Median CPU seconds of fn(*args, **kwargs) over `repeats` calls."""
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn(*args, **kwargs)
        times.append(time.process_time() - start)
    return float(np.median(times))


def per_clip(table: Table, repeats: int) -> None:
    curves = song_curves(45.0, np.random.default_rng(0))
    ours = load_preset("demo")
    mp3 = {"compression_level": ours.mp3_compression_level, "bitrate_mode": ours.mp3_bitrate_mode}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.mp3"
        for rate, channels in ((44100, 2), (44100, 1), (22050, 1), (16000, 1)):
            n = 45 * rate
            render_music(*curves, n, rate, channels, 0)  # warm-up (first-touch page faults)
            render = _cpu(repeats, render_music, *curves, n, rate, channels, 1)
            audio = render_music(*curves, n, rate, channels, 1)[:, :channels]
            default = _cpu(repeats, sf.write, path, audio, rate, format="MP3")
            fast = _cpu(repeats, sf.write, path, audio, rate, format="MP3", **mp3)
            table.add_row(
                f"{rate} Hz {'stereo' if channels == 2 else 'mono'}",
                f"{render:.3f}",
                f"{default:.3f}",
                f"{fast:.3f}",
                f"{(render + default) / (render + fast):.2f}x",
            )


def corpus(table: Table, clips: int, workers: int) -> None:
    cfg = {
        **load_preset("demo").to_dict(),
        "name": "bench",
        "n_songs_2013": 0,
        "n_songs_2014": clips,
        "n_songs_2015": 0,
        "n_raters": 10,
        "share_48k": 0.0,
        "share_22k": 0.0,
        "share_16k": 0.0,
        "share_mono": 0.0,
    }
    times = {}
    for n_workers in (1, workers):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            generate_corpus(Path(tmp) / "c", cfg, seed=0, workers=n_workers, progress=False)
            times[n_workers] = time.perf_counter() - start
    table.add_row(
        f"{clips} excerpts, 44.1 kHz stereo",
        f"{times[1]:.1f}",
        f"{times[workers]:.1f}",
        f"{times[1] / times[workers]:.2f}x",
    )


def containers(table: Table, clips: int, workers: int, repeats: int) -> None:
    """The demo preset's mix of excerpts (rates, channels) rendered as MP3 and as FLAC (`audio_format`),
    interleaved, `workers` processes; songs per wall second (best of `repeats`) and disk."""
    base = {**load_preset("demo").to_dict(), "name": "bench", "n_songs_2013": 0, "n_songs_2014": clips}
    best: dict[str, float] = {}
    size: dict[str, float] = {}
    for _ in range(repeats):
        for fmt in ("mp3", "flac"):
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                cfg = {**base, "n_songs_2015": 0, "n_raters": 10, "audio_format": fmt}
                generate_corpus(Path(tmp) / "c", cfg, seed=0, workers=workers, progress=False)
                best[fmt] = max(best.get(fmt, 0.0), clips / (time.perf_counter() - start))
                size[fmt] = sum(f.stat().st_size for f in Path(tmp).rglob(f"*.{fmt}")) / clips / 2**20
    for fmt in ("mp3", "flac"):
        ratio = f"{best[fmt] / best['mp3']:.2f}x"
        table.add_row(fmt, f"{best[fmt]:.2f}", ratio, f"{size[fmt]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    console = Console()
    clip = Table(title="one 45 s excerpt, CPU seconds (median of repeats)")
    for column in ("format", "render", "encode: soundfile default", "encode: ours (0.9, VBR)", "speed-up"):
        clip.add_column(column, justify="right")
    per_clip(clip, args.repeats)
    console.print(clip)
    whole = Table(title="generate_corpus, wall seconds")
    for column in ("corpus", "1 worker (baseline)", f"{args.workers} workers (ours)", "speed-up"):
        whole.add_column(column, justify="right")
    corpus(whole, args.clips, args.workers)
    console.print(whole)
    formats = Table(title=f"{args.clips} excerpts of the demo mix, {args.workers} workers, by container")
    for column in ("audio_format", "songs / s (best)", "speed-up", "MiB per excerpt"):
        formats.add_column(column, justify="right")
    containers(formats, args.clips, args.workers, args.repeats)
    console.print(formats)


if __name__ == "__main__":
    main()

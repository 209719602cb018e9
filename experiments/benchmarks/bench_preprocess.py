"""Preprocessing speed: dsaml-preprocess vs a faithful per-segment baseline, measured in the same run.

    .venv/bin/python experiments/benchmarks/bench_preprocess.py [--clips 60] [--full-songs 0] [--layout]

Corpus: dsaml-synth's demo-like mix (mostly 44.1 kHz stereo 45 s MP3 clips), generated once under
--corpus. Each pipeline runs in a fresh subprocess so its peak memory is its own.
- baseline (as the original): one song at a time, with torch's default intra-op threads (as the
  original runs) and with one thread (its best case on a busy 2-core machine); the file is decoded and
  resampled again for each kind of feature (log-mel, then the 30 s global-context window); one
  MelSpectrogram call per segment; one torch.save'd float32 file per song.
- ours: `dsaml.data.preprocess.preprocess` (decode workers, batched log-mel, float16 HDF5 store).
Real-time factor = decoded audio seconds / wall seconds. Peak memory = main process + decode workers
(RSS sampled as songs finish), reported at half and at all of the songs to show it does not grow.
--layout also measures HDF5 chunk sizes and compression filters on the resulting log-mel.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()


def rss_tree_mb(pid: int) -> float:
    """Resident memory of a process and its children, MiB (Linux /proc)."""
    total, stack = 0.0, [pid]
    while stack:
        current = stack.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            total += int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS")))
            for task in Path(f"/proc/{current}/task").iterdir():
                stack.extend(int(c) for c in (task / "children").read_text().split())
        except (FileNotFoundError, ProcessLookupError, StopIteration):
            continue
    return total / 1024


def run_baseline(corpus: Path, out: Path, threads: int) -> dict:
    import soundfile as sf
    import torch
    import torchaudio

    from dsaml.data.readers import DataConfig, read_catalogue

    if threads:  # 0: torch's default (as the original runs)
        torch.set_num_threads(threads)
    catalogue = read_catalogue(DataConfig.from_mapping({"name": "synthetic", "root": str(corpus)}))
    sr, start, seg = 44100, 15 * 44100, 22050
    out.mkdir(parents=True, exist_ok=True)

    def load(path: Path) -> torch.Tensor:  # the original's read_wav_as_tensor: load, resample, mono
        frames, rate = sf.read(str(path), dtype="float32", always_2d=True)
        wave = torch.from_numpy(frames.T.copy())
        if rate != sr:
            wave = torchaudio.functional.resample(wave, rate, sr)
        return wave.mean(0)

    began, audio_s, peaks = time.perf_counter(), 0.0, []
    for song in catalogue.songs.values():
        wave = load(song.audio_path)  # decode #1: log-mel
        n = 60 if song.mode == "clip" else (wave.shape[0] - start) // seg
        window = torch.nn.functional.pad(
            wave[start : start + n * seg], (0, max(0, start + n * seg - wave.shape[0]))
        )
        mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sr, n_fft=2646, win_length=2646, hop_length=441, n_mels=128
        )
        logmel = torch.stack([torch.log(mel(window[i * seg : (i + 1) * seg]) + 1e-6).T for i in range(n)])
        context = load(song.audio_path)[start : start + 30 * sr]  # decode #2: the global-context window
        torch.save({"log_mel_spectrogram": logmel, "global_window": context}, out / f"{song.id}.pt")
        audio_s += wave.shape[0] / sr
        peaks.append(rss_tree_mb(os.getpid()))
    seconds = time.perf_counter() - began
    return {
        "songs": len(catalogue.songs),
        "seconds": seconds,
        "audio_s": audio_s,
        "peak_half_mb": max(peaks[: max(1, len(peaks) // 2)]),
        "peak_mb": max(peaks),
    }


def run_ours(corpus: Path, out: Path, workers: int) -> dict:
    from dsaml.data.preprocess import PreprocessConfig, preprocess
    from dsaml.data.readers import DataConfig

    peaks: list[float] = []
    data = DataConfig.from_mapping({"name": "synthetic", "root": str(corpus)})
    options = PreprocessConfig(workers=workers, device="cpu", progress=False, overwrite=True)
    summary = preprocess(
        data, options, out / "store.h5", on_progress=lambda event, _: peaks.append(rss_tree_mb(os.getpid()))
    )
    assert not summary.failures, summary.failures
    return {
        "songs": summary.computed,
        "seconds": summary.seconds,
        "audio_s": summary.audio_seconds,
        "peak_half_mb": max(peaks[: max(1, len(peaks) // 2)]),
        "peak_mb": max(peaks),
    }


def measure_layout(store: Path) -> list[tuple]:
    """Write the store's log-mel with each chunking/compression; size, write time, random window reads."""
    import h5py

    with h5py.File(store) as handle:
        logmel = handle["features/logmel"][()]
    rng = np.random.default_rng(0)
    starts = rng.integers(0, len(logmel) - 60, 300)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for chunk in (1, 4, 16, 60):
            for compression in ("none", "lzf", "gzip"):
                path = Path(tmp) / f"{chunk}-{compression}.h5"
                began = time.perf_counter()
                with h5py.File(path, "w") as handle:
                    handle.create_dataset(
                        "x",
                        data=logmel,
                        chunks=(chunk, *logmel.shape[1:]),
                        compression=None if compression == "none" else compression,
                        shuffle=compression == "gzip",
                    )
                write_s = time.perf_counter() - began
                began = time.perf_counter()
                with h5py.File(path) as handle:
                    data = handle["x"]
                    for s in starts:
                        data[s : s + 60]
                read_ms = (time.perf_counter() - began) / len(starts) * 1e3
                rows.append((chunk, compression, path.stat().st_size / 2**20, write_s, read_ms))
    return rows


def make_corpus(root: Path, clips: int, full_songs: int) -> None:
    from dsaml.data.synth.config import load_preset
    from dsaml.data.synth.corpus import generate_corpus

    config = load_preset("demo").to_dict() | {
        "n_songs_2013": 0,
        "n_songs_2014": clips,
        "n_songs_2015": full_songs,
    }
    generate_corpus(root, config, seed=0, progress=True)  # reused when identical, else replaced


def child(kind: str, corpus: Path, out: Path, workers: int) -> dict:
    """Run one pipeline in a fresh interpreter and return its JSON result."""
    command = [
        sys.executable,
        str(HERE),
        "--child",
        kind,
        "--corpus",
        str(corpus),
        "--out",
        str(out),
        "--workers",
        str(workers),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode:
        raise SystemExit(f"{kind} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clips", type=int, default=60, help="45 s excerpts in the corpus")
    parser.add_argument("--full-songs", type=int, default=0, help="full songs (60..180 s) in the corpus")
    parser.add_argument(
        "--corpus", type=Path, default=None, help="corpus directory (default: data/bench/...)"
    )
    parser.add_argument("--layout", action="store_true", help="also measure HDF5 chunking and compression")
    parser.add_argument("--child", choices=["baseline", "ours"], help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=2, help=argparse.SUPPRESS)  # baseline: torch threads
    args = parser.parse_args()
    if args.child:
        run = (
            run_baseline(args.corpus, args.out, args.workers)
            if args.child == "baseline"
            else run_ours(args.corpus, args.out, args.workers)
        )
        print(json.dumps(run))
        return

    corpus = args.corpus or Path("data/bench") / f"preprocess_{args.clips}c_{args.full_songs}f"
    make_corpus(corpus.resolve(), args.clips, args.full_songs)
    with tempfile.TemporaryDirectory() as tmp:
        results = {
            "baseline, torch default threads": child("baseline", corpus, Path(tmp) / "b0", 0),
            "baseline, 1 torch thread": child("baseline", corpus, Path(tmp) / "b1", 1),
            "ours, 1 decode worker": child("ours", corpus, Path(tmp) / "o1", 1),
            "ours, 2 decode workers": child("ours", corpus, Path(tmp) / "o2", 2),
        }
        base = results["baseline, torch default threads"]["seconds"]
        base1 = results["baseline, 1 torch thread"]["seconds"]
        print(
            f"\ncorpus: {corpus} ({args.clips} clips of ~45 s, {args.full_songs} full songs), "
            f"{os.cpu_count()} CPUs, CPU only, load average {os.getloadavg()[0]:.1f}\n"
        )
        print(
            "| pipeline | songs | wall s | songs/s | real-time factor | speed-up vs baseline "
            "(default threads / 1 thread) | peak RSS MiB (half / all songs) |"
        )
        print("|---|---|---|---|---|---|---|")
        for name, r in results.items():
            print(
                f"| {name} | {r['songs']} | {r['seconds']:.1f} | {r['songs'] / r['seconds']:.2f} "
                f"| {r['audio_s'] / r['seconds']:.0f}x "
                f"| {base / r['seconds']:.2f}x / {base1 / r['seconds']:.2f}x "
                f"| {r['peak_half_mb']:.0f} / {r['peak_mb']:.0f} |"
            )
        if args.layout:
            print("\n| chunk (segments) | compression | size MiB | write s | random 60-segment read ms |")
            print("|---|---|---|---|---|")
            for chunk, compression, size, write_s, read_ms in measure_layout(Path(tmp) / "o2" / "store.h5"):
                print(f"| {chunk} | {compression} | {size:.1f} | {write_s:.2f} | {read_ms:.2f} |")


if __name__ == "__main__":
    main()

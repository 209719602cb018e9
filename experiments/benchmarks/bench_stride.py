"""Benchmark: whole-song prediction stride x stitching rule -- accuracy, agreement with stride 1, and time.

Accuracy (`--ckpt`, `--store`): a trained dsaml checkpoint and the test songs of its feature store (the demo:
the DMER model of `dsaml-demo` and the 8 full songs of the synthetic corpus). Every stride-1 window of a song
is predicted once (`dsaml.inference.window_outputs`); stride s uses the subset `window_starts(T, W, s)` (the
last window always ends at the song's end), stitched by each rule. Per stride and rule: the average score
(mean of CCC, PCC, 1 - RMSE over both channels) against the song's rater-averaged curves, averaged over the
songs; its difference from stride 1 with the same rule; the mean |curve - stride-1 curve|; and the time of
`predict_song` over all the songs at that stride (the rule costs nothing measurable). A second table, the
window-position profile, explains the stitching: the error of the stride-1 window outputs against the
curves, by distance from the window edge (start side, end side), and their distance from the stride-1 mean.

Speed (`--paper-seconds`, 0 to skip): a song of that length at paper size (random weights), the original's
procedure (every window from scratch through the whole network, stride 1; `bench_inference.py`) against
`predict_song` at each of `--paper-strides`, in the same run, as ratios.

    .venv/bin/python experiments/benchmarks/bench_stride.py \\
        --ckpt outputs/demo/<time>/dmer/checkpoints/last.ckpt --store data/stores/synthetic_demo.h5
    .venv/bin/python experiments/benchmarks/bench_stride.py --ckpt ... --store ... --paper-seconds 0
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from bench_inference import original_procedure, song_inputs, trained_like_net
from common import add_network_arguments
from rich.console import Console
from rich.table import Table

from dsaml.data.store import FeatureStore
from dsaml.inference import ORIGINAL_WINDOW, predict_song, stitch_windows, window_outputs, window_starts
from dsaml.metrics import average_score, sequence_scores
from dsaml.models.checkpoint import load_network
from dsaml.predictor import window_of

RULES = ("mean", "weighted", "last", "original")
EDGE_BUCKETS = ((0, 0), (1, 1), (2, 4), (5, 9), (10, 19), (20, 10**9))  # distance from the window edge


@dataclass
class Song:
    """One test song: logmel [T, 51, 128], global vectors [1 or T, D] or None, averaged curves [T]."""

    name: str
    logmel: torch.Tensor
    global_vectors: torch.Tensor | None
    arousal: torch.Tensor
    valence: torch.Tensor


@dataclass
class Profile:
    """Squared errors and distances from the stride-1 mean, summed by (side, edge bucket)."""

    error: dict[tuple[str, int], float] = field(default_factory=dict)
    spread: dict[tuple[str, int], float] = field(default_factory=dict)
    count: dict[tuple[str, int], int] = field(default_factory=dict)

    def add(self, outputs: torch.Tensor, truth: torch.Tensor, consensus: torch.Tensor) -> None:
        """outputs [n, W] of the stride-1 windows (window w starts at w), truth / consensus [T]."""
        n, window = outputs.shape
        index = torch.arange(n)[:, None] + torch.arange(window)
        error = (outputs - truth[index]).square()
        spread = (outputs - consensus[index]).abs()
        for j in range(window):
            side = "start" if j < window - 1 - j else "end"
            distance = min(j, window - 1 - j)
            bucket = next(b for b, (lo, hi) in enumerate(EDGE_BUCKETS) if lo <= distance <= hi)
            key = (side, bucket)
            self.error[key] = self.error.get(key, 0.0) + float(error[:, j].sum())
            self.spread[key] = self.spread.get(key, 0.0) + float(spread[:, j].sum())
            self.count[key] = self.count.get(key, 0) + n


def load_songs(store_path: str, split: str, cfg) -> list[Song]:
    songs = []
    with FeatureStore(store_path) as store:
        name = cfg.global_store_name
        for song in store.song_ids(split):
            arousal, valence = store.curves(song)
            vectors = None if name is None else torch.from_numpy(store.global_vectors(name, song))
            songs.append(
                Song(
                    song,
                    torch.from_numpy(store.logmel(song)),
                    vectors,
                    torch.from_numpy(arousal),
                    torch.from_numpy(valence),
                )
            )
    return songs


def score(arousal: torch.Tensor, valence: torch.Tensor, song: Song) -> float:
    return float(average_score(sequence_scores(arousal, valence, song.arousal, song.valence)))


def best_time(run: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def accuracy(args: argparse.Namespace, console: Console) -> None:
    net, cfg, hparams = load_network(args.ckpt)
    window = window_of(hparams, args.ckpt)
    songs = [s for s in load_songs(args.store, args.split, cfg) if len(s.arousal) > window]
    if not songs:
        raise SystemExit(
            f"{args.store}: no {args.split} song is longer than the model's {window}-segment window"
        )
    strides = [s for s in args.strides if s <= window]
    scores: dict[tuple[int, str], list[float]] = {}
    deltas: dict[tuple[int, str], list[float]] = {}
    profile = Profile()
    for song in songs:
        length = len(song.arousal)
        every = list(range(length - window + 1))
        outputs = window_outputs(net, song.logmel, song.global_vectors, window=window, starts=every)
        reference = {}
        for stride in strides:
            starts = window_starts(length, window, stride)
            for rule in RULES:
                if rule == "original" and stride != 1:
                    continue
                curves = [
                    stitch_windows(out[starts], starts, length, rule, channel).float()
                    for out, channel in zip(outputs, ("arousal", "valence"), strict=True)
                ]
                reference.setdefault(rule, curves)
                scores.setdefault((stride, rule), []).append(score(*curves, song))
                deltas.setdefault((stride, rule), []).append(
                    float(sum((c - r).abs().mean() for c, r in zip(curves, reference[rule], strict=True)) / 2)
                )
        for out, channel, truth in zip(
            outputs, ("arousal", "valence"), (song.arousal, song.valence), strict=True
        ):
            profile.add(out.float(), truth, stitch_windows(out, every, length, "mean", channel).float())
    times = {
        stride: best_time(
            lambda stride=stride: [
                predict_song(net, s.logmel, s.global_vectors, window=window, stride=stride, stitch="mean")
                for s in songs
            ],
            args.repeats,
        )
        for stride in strides
    }
    mean = lambda values: sum(values) / len(values)
    segments = sum(len(s.arousal) for s in songs)
    table = Table(
        title=f"{len(songs)} {args.split} songs of {args.store} ({segments} segments), {args.ckpt}: "
        f"window {window}, D={cfg.hidden_size} H={cfg.num_heads} L={cfg.num_layers}, "
        f"{args.threads} thread(s). average score against the averaged curves (difference from stride 1, "
        "same rule; mean |curve - stride-1 curve|)"
    )
    table.add_column("stride", justify="right")
    for rule in RULES:
        table.add_column(rule, justify="right")
    table.add_column("time (s)", justify="right")
    table.add_column("speed-up", justify="right")
    for stride in strides:
        cells = []
        for rule in RULES:
            if (stride, rule) not in scores:
                cells.append("-")
                continue
            value = mean(scores[stride, rule])
            gap = value - mean(scores[1, rule]) if (1, rule) in scores else 0.0
            cells.append(f"{value:.4f} ({gap:+.4f}; {mean(deltas[stride, rule]):.4f})")
        table.add_row(
            str(stride), *cells, f"{times[stride]:.2f}", f"{times[strides[0]] / times[stride]:.1f}x"
        )
    console.print(table)
    edges = Table(
        title="window-position profile of the stride-1 window outputs (both channels, all songs): RMSE "
        "against the curves and mean |output - stride-1 mean| by distance from the nearer window edge"
    )
    for column in (
        "distance from edge",
        "RMSE, start side",
        "RMSE, end side",
        "|- mean|, start",
        "|- mean|, end",
    ):
        edges.add_column(column, justify="right")
    for bucket, (lo, hi) in enumerate(EDGE_BUCKETS):
        label = str(lo) if lo == hi else (f"{lo}-{hi}" if hi < 10**9 else f">= {lo}")
        cells = []
        for table_of, root in ((profile.error, True), (profile.spread, False)):
            for side in ("start", "end"):
                n = profile.count.get((side, bucket), 0)
                value = table_of.get((side, bucket), 0.0) / n if n else float("nan")
                cells.append(f"{value**0.5 if root else value:.4f}" if n else "-")
        edges.add_row(label, *cells)
    console.print(edges)


def speed(args: argparse.Namespace, console: Console) -> None:
    logmel, vectors = (x.to(args.device) for x in song_inputs(args.paper_seconds, args.hidden))
    length, window = logmel.shape[0], ORIGINAL_WINDOW
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    def timed(run: Callable[[], object]) -> tuple[float, float]:
        """(wall seconds, CPU seconds of this process): on a shared machine the CPU time is the steadier."""
        sync()
        start, cpu = time.perf_counter(), time.process_time()
        run()
        sync()
        return time.perf_counter() - start, time.process_time() - cpu

    eager = trained_like_net(args, "eager").to(args.device)
    base_time, base_cpu = timed(lambda: original_procedure(eager, logmel, vectors, 32))
    net = trained_like_net(args, "fast").to(args.device)
    table = Table(
        title=f"predict a {args.paper_seconds:.0f} s song ({length} segments, window {window}), "
        f"D={args.hidden} H={args.heads} L={args.layers} (random weights), float32, {args.device}, "
        f"{args.threads} threads"
    )
    for column in ("procedure", "windows", "time (s)", "speed-up", "CPU (s)", "speed-up (CPU)"):
        table.add_column(column, justify="right")
    table.add_row(
        "original: every window from scratch, stride 1",
        str(length - window + 1),
        f"{base_time:.2f}",
        "1.00x",
        f"{base_cpu:.2f}",
        "1.00x",
    )
    for stride in args.paper_strides:
        rule = "original" if stride == 1 else args.paper_stitch
        seconds, cpu = timed(
            lambda stride=stride, rule=rule: predict_song(
                net, logmel, vectors, window=window, stride=stride, stitch=rule
            )
        )
        table.add_row(
            f"predict_song stride {stride}, stitch={rule}",
            str(len(window_starts(length, window, stride))),
            f"{seconds:.2f}",
            f"{base_time / seconds:.2f}x",
            f"{cpu:.2f}",
            f"{base_cpu / cpu:.2f}x",
        )
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ckpt", help="a trained dsaml checkpoint (accuracy tables; skipped without it)")
    parser.add_argument("--store", help="its feature store")
    parser.add_argument("--split", default="test")
    parser.add_argument(
        "--strides",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[1, 2, 3, 5, 8, 10, 15, 20, 30, 40, 60],
    )
    parser.add_argument("--repeats", type=int, default=1, help="timing: best of N")
    parser.add_argument("--paper-seconds", type=float, default=600.0, help="speed table song length; 0: skip")
    parser.add_argument(
        "--paper-strides", type=lambda v: [int(x) for x in v.split(",")], default=[1, 5, 10, 20]
    )
    parser.add_argument("--paper-stitch", default="weighted", help="stitching rule of the stride > 1 rows")
    add_network_arguments(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    console = Console(width=160)
    if args.ckpt:
        if not args.store:
            parser.error("--ckpt needs --store (the feature store with the test songs)")
        accuracy(args, console)
    if args.paper_seconds > 0:
        speed(args, console)


if __name__ == "__main__":
    main()

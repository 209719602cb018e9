"""Benchmark: whole-song prediction at stride 1, `dsaml.inference.predict_song` vs the original's procedure.

Baseline (the original's way, implemented here): every window of 60 segments is cut from the song's log-mel
and per-segment global vectors and run through the whole network from scratch (spectrogram CNN, fusion,
encoder, head; the eager path), 32 windows per batch, then stitched with the original's rule. Ours: the CNN +
fusion once per song, windows of the encoded sequence batched through the fast path, same stitching
(stitch="original"), so the outputs must agree. Each variant runs in a fresh subprocess (own peak memory).

    .venv/bin/python experiments/benchmarks/bench_inference.py                  # 600 s song, paper config
    .venv/bin/python experiments/benchmarks/bench_inference.py --seconds 120 --hidden 64 --heads 4 --layers 2
    .venv/bin/python experiments/benchmarks/bench_inference.py --device cuda --bf16   # + ours, bf16 autocast
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import time

import torch
from common import add_network_arguments, bench_network
from rich.console import Console
from rich.table import Table

from dsaml.inference import ORIGINAL_WINDOW as WINDOW


def song_inputs(seconds: float, hidden: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A random song of `seconds`: logmel [T, 51, 128] and per-segment global vectors [T, hidden], T =
    floor((seconds - 15) / 0.5) (the segments of a full song from 15 s; docs/method.md, "Features")."""
    length = int((seconds - 15) / 0.5)
    gen = torch.Generator().manual_seed(1)
    return torch.randn(length, 51, 128, generator=gen), torch.randn(length, hidden, generator=gen)


def trained_like_net(args: argparse.Namespace, impl: str):
    """`bench_network` in eval mode with non-trivial BatchNorm running statistics (as after training)."""
    net = bench_network(args, impl).eval()
    with torch.no_grad():
        for block in net.spectrogram.blocks:
            block.bn.running_mean.uniform_(-1, 1)
            block.bn.running_var.uniform_(0.5, 2)
    return net


@torch.no_grad()
def original_procedure(net, logmel: torch.Tensor, global_vectors: torch.Tensor, batch_size: int):
    """Every window recomputed from scratch through the whole network, stitched by the original's rule."""
    from dsaml.inference import stitch_windows

    length = logmel.shape[0]
    starts = list(range(length - WINDOW + 1))
    arousal, valence = [], []
    for first in range(0, len(starts), batch_size):
        batch = starts[first : first + batch_size]
        x = torch.stack([logmel[s : s + WINDOW] for s in batch])
        g = torch.stack([global_vectors[s : s + WINDOW] for s in batch])
        out = net(x, g, return_diagonal=False)
        arousal.append(out["arousal"])
        valence.append(out["valence"])
    return (
        stitch_windows(torch.cat(arousal), starts, length, "original", "arousal"),
        stitch_windows(torch.cat(valence), starts, length, "original", "valence"),
    )


def _run(args: argparse.Namespace, variant: str) -> dict:
    from dsaml.inference import predict_song

    torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    logmel, global_vectors = (x.to(args.device) for x in song_inputs(args.seconds, args.hidden))
    net = trained_like_net(args, "eager" if variant == "baseline" else "fast").to(args.device)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    if variant == "baseline":
        arousal, valence = original_procedure(net, logmel, global_vectors, args.batch_size)
    else:
        with torch.autocast(torch.device(args.device).type, torch.bfloat16, enabled=variant == "ours+bf16"):
            arousal, valence = predict_song(
                net,
                logmel,
                global_vectors,
                window=WINDOW,
                stride=1,
                stitch="original",
                batch_size=args.batch_size,
            )
    if cuda:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    if cuda:  # device memory: what the GPU must hold
        peak_mib = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    return {
        "time": elapsed,
        "peak_mib": peak_mib,
        "arousal": arousal.cpu(),
        "valence": valence.cpu(),
        "segments": logmel.shape[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=600.0, help="song duration")
    add_network_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--bf16", action="store_true", help="add a row: ours under bf16 autocast")
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    results = {}
    for variant in ("baseline", "ours", "ours+bf16")[: 3 if args.bf16 else 2]:
        with ctx.Pool(1) as pool:
            results[variant] = pool.apply(_run, (args, variant))
    base, ours = results["baseline"], results["ours"]
    diff = max((ours[k] - base[k]).abs().max().item() for k in ("arousal", "valence"))
    n = base["segments"]
    table = Table(
        title=f"predict a {args.seconds:.0f} s song ({n} segments, {n - WINDOW + 1} windows, stride 1), "
        f"D={args.hidden} H={args.heads} L={args.layers}, float32, {args.device}, {args.threads} threads"
    )
    for column in ("procedure", "time (s)", "speed-up", "peak memory (MiB)"):
        table.add_column(column, justify="right")
    table.add_row(
        "original: every window from scratch", f"{base['time']:.2f}", "1.00x", f"{base['peak_mib']:.0f}"
    )
    table.add_row(
        "ours: predict_song (stitch=original)",
        f"{ours['time']:.2f}",
        f"{base['time'] / ours['time']:.2f}x",
        f"{ours['peak_mib']:.0f}",
    )
    if args.bf16:
        fast = results["ours+bf16"]
        table.add_row(
            "ours under bf16 autocast",
            f"{fast['time']:.2f}",
            f"{base['time'] / fast['time']:.2f}x",
            f"{fast['peak_mib']:.0f}",
        )
    console = Console(width=120)
    console.print(table)
    console.print(f"max |ours - original| over arousal and valence = {diff:.2e}")
    if args.bf16:  # reduced precision: how far it moves the curves (not a parity claim)
        bf16_diff = max(
            (results["ours+bf16"][k] - base[k]).abs().max().item() for k in ("arousal", "valence")
        )
        console.print(f"bf16: max |ours under bf16 - original| = {bf16_diff:.2e}")


if __name__ == "__main__":
    main()

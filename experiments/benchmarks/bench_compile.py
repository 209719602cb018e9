"""Benchmark: torch.compile on the fast path of whole-song prediction, compiled vs eager in the same process.

The same network (paper size by default, random weights with trained-like BatchNorm statistics) predicts the
same random song with `dsaml.inference.predict_song` (stride `--stride`, stitch=weighted, the user tools'
default), once as is ("eager") and once with its two per-song calls compiled by `torch.compile`
(`net.encode_segments`: spectrogram CNN + fusion; `net.predict_windows`: encoder + BiLSTM + head on a batch
of windows). The compiled variant's first prediction includes compilation: it is reported on its own line
("compile + first run"), and the steady-state time is the best of `--repeats` later runs, as for eager.
Outputs are compared (max |compiled - eager|).

    .venv/bin/python experiments/benchmarks/bench_compile.py                      # 600 s song, paper size
    .venv/bin/python experiments/benchmarks/bench_compile.py --seconds 120 --threads 1 --repeats 2
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from bench_inference import song_inputs, trained_like_net
from common import add_network_arguments
from rich.console import Console
from rich.table import Table

from dsaml.inference import ORIGINAL_WINDOW, predict_song


def seconds_of(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=600.0, help="song duration")
    parser.add_argument("--stride", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3, help="steady state: best of N")
    parser.add_argument(
        "--mode", default="default", help="torch.compile mode (default | max-autotune-no-cudagraphs)"
    )
    add_network_arguments(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logmel, vectors = song_inputs(args.seconds, args.hidden)

    eager = trained_like_net(args, "fast")
    compiled = trained_like_net(args, "fast")  # same seed: same weights
    compiled.encode_segments = torch.compile(compiled.encode_segments, mode=args.mode)
    compiled.predict_windows = torch.compile(compiled.predict_windows, mode=args.mode)

    def predict(net) -> tuple[torch.Tensor, torch.Tensor]:
        return predict_song(
            net, logmel, vectors, window=ORIGINAL_WINDOW, stride=args.stride, stitch="weighted"
        )

    results: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    first = {
        name: seconds_of(lambda n=net, k=name: results.__setitem__(k, predict(n)))
        for name, net in (("eager", eager), ("compiled", compiled))
    }
    best = {"eager": float("inf"), "compiled": float("inf")}
    for _ in range(args.repeats):  # interleaved, so that load changes on a shared machine hit both alike
        for name, net in (("eager", eager), ("compiled", compiled)):
            best[name] = min(best[name], seconds_of(lambda n=net: predict(n)))
    pairs = zip(results["compiled"], results["eager"], strict=True)
    diff = max((c - e).abs().max().item() for c, e in pairs)

    length = logmel.shape[0]
    table = Table(
        title=f"predict a {args.seconds:.0f} s song ({length} segments), stride {args.stride}, "
        f"stitch=weighted, "
        f"D={args.hidden} H={args.heads} L={args.layers}, float32, cpu, {args.threads} threads, "
        f"torch {torch.__version__}, compile mode={args.mode}"
    )
    for column in ("variant", "first run (s)", f"best of {args.repeats} (s)", "speed-up"):
        table.add_column(column, justify="right")
    table.add_row("eager (fast path)", f"{first['eager']:.2f}", f"{best['eager']:.2f}", "1.00x")
    table.add_row(
        "torch.compile (encode_segments, predict_windows)",
        f"{first['compiled']:.2f} (compile + first run)",
        f"{best['compiled']:.2f}",
        f"{best['eager'] / best['compiled']:.2f}x",
    )
    console = Console(width=160)
    console.print(table)
    console.print(
        f"compile time ~ {first['compiled'] - best['compiled']:.1f} s "
        "(first compiled run - best compiled run); "
        f"max |compiled - eager| over arousal and valence = {diff:.2e}"
    )


if __name__ == "__main__":
    main()

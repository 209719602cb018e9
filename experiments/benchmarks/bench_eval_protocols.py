"""Benchmark: `dsaml-eval`'s within-song and cross-song protocols with the two engines of `task.meta_engine`.

Both run in this process on the same network and the same test items, as the test stage runs them
(`dsaml.training.evaluation.run_protocols_many`, the items in groups of `DSAMLModule.test_group`):

- sequential: each (listener, song) pair adapted alone (learn2learn clone, `steps` SGD steps), then its
  query predicted (the path `dsaml-eval` took before the batched engine);
- batched: the pairs of a group of items adapted together with stacked per-pair parameters
  (`dsaml.meta.batched_adapt`; pairs of equal support shapes in one call, `--chunk` at most), then each
  pair's query predicted with its adapted weights.

The items have the demo's shapes (`--demo`: the `make demo` PDMER test set: 42 (rater, song) pairs of 8
full songs of 67-174 s, i.e. 104-318 half-second segments, 23 of them with the rater's other whole test
song as the cross-song support; window 60, 5 inner steps at lr 0.02, the demo network dsaml_small D=64,
H=4, L=2, FFN 128, stride-1 prediction); the default is a quick subset (4 pairs of the 2 shortest songs, 2
with a cross-song support) that `make bench` runs in about a minute; `--tiny` a few seconds' check that the
script works (2 pairs of 20- and 24-segment songs, window 8, 1 inner step, D=16, L=1, H=2, FFN 16: `make
gpu-check`'s dry run). Random inputs: the time does not depend on the values. Dropout is 0 so that the
engines' scores can be compared digit for digit (with dropout each pair's draws differ between the
engines). Prints a table: seconds per engine (best of --repeats, interleaved), ratio to sequential, and the
largest score difference between the engines.

    .venv/bin/python experiments/benchmarks/bench_eval_protocols.py                # quick subset
    .venv/bin/python experiments/benchmarks/bench_eval_protocols.py --demo         # the demo's test pairs
    .venv/bin/python experiments/benchmarks/bench_eval_protocols.py --demo --device cuda
"""

from __future__ import annotations

import argparse
import time

import torch
from rich.console import Console
from rich.table import Table

from dsaml.meta import AdaptationConfig
from dsaml.models import DSAMLConfig, DSAMLNet
from dsaml.training.evaluation import run_protocols_many
from dsaml.training.module import TEST_GROUP

PROTOCOLS = ["pdmer_within_song", "pdmer_cross_song"]
# the demo's 8 full test songs (67-174 s, labelled from 15 s at 2 Hz) and its 42 (rater, song) pairs
DEMO_SONGS = (104, 134, 166, 196, 226, 258, 288, 318)
DEMO_PAIRS, DEMO_CROSS = 42, 23


def make_items(pairs: int, cross: int, songs: tuple[int, ...], device: str, seed: int = 0) -> list[dict]:
    """`pairs` test items (rater, song) cycling over the songs' lengths in segments; the first `cross` carry
    the next song of the list, whole, as their cross-song support."""
    gen = torch.Generator().manual_seed(seed)
    audio = {n: torch.randn(n, 51, 128, generator=gen) - 5.0 for n in songs}

    def sequence(n: int) -> dict:
        return {
            "logmel": audio[n].to(device),
            "global": None,
            "arousal": (torch.rand(n, generator=gen) - 0.5).to(device),
            "valence": (torch.rand(n, generator=gen) - 0.5).to(device),
        }

    items = []
    for index in range(pairs):
        n, other = songs[index % len(songs)], songs[(index + 1) % len(songs)]
        items.append({**sequence(n), "cross_support": [sequence(other)] if index < cross else None})
    return items


def evaluate(net: DSAMLNet, items: list[dict], args: argparse.Namespace, engine: str) -> list[dict]:
    """The protocols of every item, in the test stage's groups of items -> one result per item."""
    config = AdaptationConfig(method=args.method, steps=args.steps, lr=args.lr, first_order=True)
    group = 1 if engine == "sequential" else args.chunk or TEST_GROUP
    out: list[dict] = []
    for start in range(0, len(items), group):
        chosen = items[start : start + group]
        out += run_protocols_many(
            net,
            chosen,
            PROTOCOLS,
            window=args.window,
            adaptation=config,
            stitch="mean",
            batch_size=32,
            stride=args.stride,
            seeds=list(range(start, start + len(chosen))),
            engine=engine,
            chunk=args.chunk,
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--demo", action="store_true", help="the demo's 42 test pairs (see above)")
    parser.add_argument("--tiny", action="store_true", help="a few seconds' check (see above)")
    parser.add_argument("--method", default="maml", choices=["maml", "head"], help="the inner loop")
    parser.add_argument("--steps", type=int, default=5, help="inner SGD steps (the demo's)")
    parser.add_argument("--lr", type=float, default=0.02, help="inner learning rate (the demo's)")
    parser.add_argument("--window", type=int, default=60)
    parser.add_argument("--stride", type=int, default=1, help="prediction stride (dsaml-eval's: 1)")
    parser.add_argument("--chunk", type=int, default=None, help="task.meta_chunk (items and pairs per call)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (2 contend on this machine)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    console = Console(width=160)
    size = dict(hidden_size=64, num_heads=4, num_layers=2, ffn_size=128)
    if args.demo:
        items = make_items(DEMO_PAIRS, DEMO_CROSS, DEMO_SONGS, args.device)
    elif args.tiny:
        items = make_items(2, 1, (20, 24), args.device)
        args.window, args.steps, args.repeats = 8, 1, 1
        size = dict(hidden_size=16, num_heads=2, num_layers=1, ffn_size=16)
    else:
        items = make_items(4, 2, DEMO_SONGS[:2], args.device)
    torch.manual_seed(0)
    cfg = DSAMLConfig(**size, dropout=0.0)
    net = DSAMLNet(cfg).to(args.device).eval()
    engines = ("sequential", "batched")
    times = {engine: float("inf") for engine in engines}
    results: dict[str, list[dict]] = {}
    for repeat in range(args.repeats):
        for engine in engines:
            _sync(args.device)
            start = time.perf_counter()
            results[engine] = evaluate(net, items, args, engine)
            _sync(args.device)
            times[engine] = min(times[engine], time.perf_counter() - start)
            console.print(f"repeat {repeat + 1}, {engine}: {time.perf_counter() - start:.2f} s")
    rows = {engine: _rows(results[engine]) for engine in engines}
    assert rows["batched"].keys() == rows["sequential"].keys()
    differences = [
        abs(rows["batched"][key][metric] - value)
        for key, scores in rows["sequential"].items()
        for metric, value in scores.items()
    ]
    within = sum(p == "pdmer_within_song" for _, p in rows["sequential"])
    table = Table(
        title=f"dsaml-eval within-song + cross-song, method={args.method}: {within} + "
        f"{len(rows['sequential']) - within} pairs, {args.steps} inner steps, window {args.window}, "
        f"stride {args.stride}, D={cfg.hidden_size} L={cfg.num_layers} H={cfg.num_heads} FFN {cfg.ffn_size}, "
        f"{args.device}, {args.threads} threads, chunk {args.chunk} (best of {args.repeats})"
    )
    for column in ("engine", "seconds", "vs sequential", "largest score difference vs sequential"):
        table.add_column(column, justify="right")
    for engine in engines:
        largest = max(differences) if engine == "batched" else 0.0
        table.add_row(
            engine, f"{times[engine]:.2f}", f"{times['sequential'] / times[engine]:.2f}x", f"{largest:.1e}"
        )
    console.print(table)


def _rows(results: list[dict]) -> dict[tuple[int, str], dict[str, float]]:
    """{(item, protocol): scores} of a run."""
    return {(i, p): scores for i, result in enumerate(results) for p, (scores, _) in result.items()}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()

"""Benchmark: the time to personalise a model to one listener, per adaptation method, against calibrate.

A trained checkpoint (`--ckpt`, e.g. the DMER model of the personalisation benchmark or of dsaml-demo) and
its feature store (`--store`): the first test pair with `--shots` support songs of its rater (the cross-song
protocol's draw, `DSAMLDataModule.test_pairs`, whole songs); each method of `--methods` runs
`personalize_net` (auto: `select`) on those songs `--repeat` times and the median wall time is printed with
its ratio to calibrate's, measured in the same run. Steps and learning rate come from the checkpoint's task.
listener_prior needs the checkpoint's listener prior; a checkpoint written without one gets it estimated
here from the store's training raters, as dsaml-train would have (its time is printed, not counted: it is
paid once per model, not per listener).

    .venv/bin/python experiments/benchmarks/bench_personalize.py \\
        --ckpt outputs/personalization_lens/train/seed_0/dmer/checkpoints/last.ckpt \\
        --store data/stores/synthetic_lens.h5 --shots 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from rich.console import Console
from rich.table import Table

from dsaml.data.datamodule import DSAMLDataModule
from dsaml.meta import AdaptationConfig, CalibrationPrior, SlidingWindows, personalize_net, select
from dsaml.models.checkpoint import load_network
from dsaml.training.evaluation import estimate_training_listener_prior


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--store", required=True)
    parser.add_argument("--shots", type=int, default=3, help="support songs of the listener")
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["calibrate", "ridge", "ridge_calibrate", "listener_prior", "head", "auto"],
    )
    parser.add_argument("--auto-methods", nargs="+", default=list(AdaptationConfig().auto_methods))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    net, _, hparams = load_network(args.ckpt)
    net.eval()
    prior = CalibrationPrior.from_dict(hparams["calibration_prior"])
    predictor = SlidingWindows(window=int(hparams["task"].get("support_segments", 60)))
    data = DSAMLDataModule(args.store, task="pdmer", shots=args.shots, cross_support="song", seed=0)
    pairs, supports = data.test_pairs()
    (_, rater), support_ids = next(
        (p, s) for p, s in zip(pairs, supports, strict=True) if len(s) == args.shots
    )
    songs = [data.reader.item(song_id, rater) for song_id in support_ids]
    wants_prior = "listener_prior" in args.methods + (args.auto_methods if "auto" in args.methods else [])
    if wants_prior and net.listener_prior is None:
        start = time.perf_counter()
        net.listener_prior = estimate_training_listener_prior(net, data.reader, predictor.window)
        print(f"listener prior estimated from the training raters in {time.perf_counter() - start:.1f} s")
    segments = sum(len(s["arousal"]) for s in songs)
    times = {}
    for method in ["calibrate", *[m for m in args.methods if m != "calibrate"]]:
        config = AdaptationConfig(method=method, auto_methods=tuple(args.auto_methods)).resolve(
            hparams["task"]
        )
        runs = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            if method == "auto":
                select(net, songs, config, predictor, prior)
            else:
                personalize_net(net, songs, config, predictor, prior)
            runs.append(time.perf_counter() - start)
        times[method] = statistics.median(runs)
    table = Table(
        title=f"Personalising one listener: {args.shots} songs, {segments} segments, "
        f"D = {net.cfg.hidden_size}, "
        f"{args.threads} threads (median of {args.repeat})"
    )
    for column in ("method", "seconds", "x calibrate"):
        table.add_column(column)
    for method, seconds in times.items():
        table.add_row(method, f"{seconds:.2f}", f"{seconds / times['calibrate']:.2f}")
    Console().print(table)


if __name__ == "__main__":
    main()

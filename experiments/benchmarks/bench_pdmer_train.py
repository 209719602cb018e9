"""Benchmark: the demo's PDMER training (its stage 4, `dsaml-train` fit) with task.meta_engine=sequential vs
batched, in one run.

Both fits use conf/demo.yaml's PDMER settings (experiment=pdmer_synthetic: dsaml_small, 3 episodes x 5 inner
steps, 1 shot, 3 queries; outer lr 3e-4, inner lr 0.02) from the same seed and store, without the test
stage (the engine changes meta-training only), alternating engines so that both see the same machine load;
best of --repeats wall seconds of the fit, and the final validation score (the engines give the same
meta-gradient to float rounding, so the scores should agree closely).

    .venv/bin/python experiments/benchmarks/bench_pdmer_train.py --store data/stores/synthetic_demo.h5
    .venv/bin/python experiments/benchmarks/bench_pdmer_train.py            # builds the tiny corpus in /tmp
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table

from dsaml.config import CONFIG_DIR
from dsaml.meta.adaptation import META_ENGINES
from dsaml.training.run import run
from dsaml.training.runs import train_config


def demo_settings() -> dict:
    """conf/demo.yaml's settings (unresolved): its `pdmer` run, `device` and `seed`."""
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("demo")
    return OmegaConf.to_container(cfg, resolve=False)


def tiny_store(work: Path) -> Path:
    """The synth helper's tiny corpus and its feature store under `work`."""
    from dsaml.cli.preprocess import configs
    from dsaml.data.preprocess import preprocess
    from dsaml.data.synth import generate_corpus

    generate_corpus(work / "corpus", "tiny", seed=0, workers=1, progress=False)
    store = work / "tiny.h5"
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            "preprocess",
            overrides=["data=synthetic", f"data.root={work / 'corpus'}", f"paths.store={store}"],
        )
    preprocess(*configs(cfg)[:2], store)
    return store


def fit(demo: dict, store: Path, engine: str, directory: Path, epochs: int | None) -> tuple[float, float]:
    """One PDMER fit of the demo's settings on `store` with `engine` -> (wall seconds, last val/average)."""
    settings = {**demo["pdmer"], "task": {**demo["pdmer"].get("task", {}), "meta_engine": engine}}
    if epochs is not None:
        settings["trainer"] = {**settings.get("trainer", {}), "max_epochs": epochs}
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = train_config(settings, directory, device=demo["device"], seed=demo["seed"], store=store)
    cfg.test = False
    cfg.trainer.enable_progress_bar = False
    start = time.perf_counter()
    metrics = run(cfg)
    return time.perf_counter() - start, float(metrics.get("val/average", float("nan")))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--store", type=Path, default=None, help="a synthetic feature store (default: tiny)")
    parser.add_argument("--epochs", type=int, default=None, help="trainer.max_epochs (default: the demo's)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    console = Console()
    with tempfile.TemporaryDirectory(prefix="bench_pdmer_") as tmp:
        work = Path(tmp)
        store = args.store if args.store is not None else tiny_store(work)
        demo = demo_settings()
        times = {engine: float("inf") for engine in META_ENGINES}
        scores = {}
        for repeat in range(args.repeats):
            for engine in ("sequential", "batched"):
                seconds, scores[engine] = fit(demo, store, engine, work / f"{engine}_{repeat}", args.epochs)
                times[engine] = min(times[engine], seconds)
                console.print(f"{engine}: {seconds:.1f} s, val/average {scores[engine]:.4f}")
    table = Table(
        title=f"demo PDMER fit (stage 4 without its test), store {store.name}, best of {args.repeats}"
    )
    for col in ("engine", "s / fit", "vs sequential", "val/average"):
        table.add_column(col, justify="right")
    for engine in ("sequential", "batched"):
        ratio = times["sequential"] / times[engine]
        table.add_row(engine, f"{times[engine]:.1f}", f"{ratio:.2f}x", f"{scores[engine]:.4f}")
    console.print(table)


if __name__ == "__main__":
    main()

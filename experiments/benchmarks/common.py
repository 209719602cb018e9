"""What the model benchmarks share: the benchmarked network and its command-line options (imported by the
bench_*.py scripts)."""

from __future__ import annotations

import argparse

import torch

from dsaml.models import DSAMLConfig, DSAMLNet


def add_network_arguments(parser: argparse.ArgumentParser) -> None:
    """The options `bench_network` and the runs read: --hidden/--heads/--layers/--ffn (D, H, L, FFN width;
    paper defaults), --threads (CPU threads) and --device."""
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--ffn", type=int, default=2048, help="feed-forward width")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")


def bench_network(args: argparse.Namespace, impl: str, cnn_kernel: str = "fused") -> DSAMLNet:
    """DSAMLNet with D/H/L from `args.hidden/heads/layers`, seeded so that every `impl` ("eager" | "fast") and
    `cnn_kernel` ("fused" | "native") gets the same weights, no dropout, and global vectors supplied by the
    caller ("precomputed:bench")."""
    torch.manual_seed(0)
    cfg = DSAMLConfig(
        hidden_size=args.hidden,
        num_heads=args.heads,
        num_layers=args.layers,
        ffn_size=getattr(args, "ffn", 2048),
        dropout=0.0,
        global_context="precomputed:bench",
        impl=impl,
        cnn_kernel=cnn_kernel,
    )
    return DSAMLNet(cfg)

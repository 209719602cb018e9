"""What the model benchmarks share: the benchmarked network (imported by the bench_*.py scripts)."""

from __future__ import annotations

import argparse

import torch

from dsaml.models import DSAMLConfig, DSAMLNet


def bench_network(args: argparse.Namespace, impl: str, cnn_kernel: str = "fused") -> DSAMLNet:
    """DSAMLNet with D/H/L from `args.hidden/heads/layers`, seeded so that every `impl` ("eager" | "fast") and
    `cnn_kernel` ("fused" | "native") gets the same weights, no dropout, and global vectors supplied by the
    caller ("precomputed:bench")."""
    torch.manual_seed(0)
    cfg = DSAMLConfig(
        hidden_size=args.hidden,
        num_heads=args.heads,
        num_layers=args.layers,
        dropout=0.0,
        global_context="precomputed:bench",
        impl=impl,
        cnn_kernel=cnn_kernel,
    )
    return DSAMLNet(cfg)

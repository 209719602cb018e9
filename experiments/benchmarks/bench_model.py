"""Benchmark: one training step (forward + backward of the DSAML loss) of DSAMLNet, fast path vs eager path.

The eager path computes the way the original does (baseline); both run in this process on the same weights
and inputs. Each variant runs in a fresh subprocess so that its peak memory (max RSS growth during the steps)
is its own. Prints a table with the best-of-N wall time, the ratio, peak memory and the largest output and
gradient differences.

    .venv/bin/python experiments/benchmarks/bench_model.py                     # paper config, batch 15
    .venv/bin/python experiments/benchmarks/bench_model.py --batch 1 --repeats 5
    .venv/bin/python experiments/benchmarks/bench_model.py --hidden 64 --heads 4 --layers 2   # quick check
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import time

import torch
from rich.console import Console
from rich.table import Table


def _step(args: argparse.Namespace, impl: str, device: str) -> dict:
    from dsaml.losses import dsaml_loss
    from dsaml.models import DSAMLConfig, DSAMLNet

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = DSAMLConfig(hidden_size=args.hidden, num_heads=args.heads, num_layers=args.layers, dropout=0.0,
                      global_context="precomputed:bench", impl=impl)
    net = DSAMLNet(cfg).to(device).train()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, args.length, 51, 128, generator=gen).to(device)
    g = torch.randn(args.batch, 1, args.hidden, generator=gen).to(device)
    a, v = torch.rand(args.batch, args.length, generator=gen).to(device), torch.rand(
        args.batch, args.length, generator=gen).to(device)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(args.warmup + args.repeats):
        net.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = net(x, g)
        loss, _ = dsaml_loss(out, a, v)
        loss.backward()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    return {"time": min(times[args.warmup:]), "median": sorted(times[args.warmup:])[args.repeats // 2],
            "peak_mib": peak_mib, "loss": loss.item(), "arousal": out["arousal"].detach().cpu(),
            "grads": {k: p.grad.detach().cpu() for k, p in net.named_parameters()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=15)
    parser.add_argument("--length", type=int, default=60, help="segments per clip")
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    results = {}
    for impl in ("eager", "fast"):  # one fresh process per variant: peak memory is its own
        with ctx.Pool(1) as pool:
            results[impl] = pool.apply(_step, (args, impl, args.device))
    eager, fast = results["eager"], results["fast"]
    out_diff = (fast["arousal"] - eager["arousal"]).abs().max().item()
    flat_e = torch.cat([g.flatten() for g in eager["grads"].values()])
    flat_f = torch.cat([fast["grads"][k].flatten() for k in eager["grads"]])
    grad_rel = ((flat_f - flat_e).norm() / flat_e.norm()).item()
    table = Table(title=f"DSAMLNet fwd+bwd, D={args.hidden} H={args.heads} L={args.layers}, batch {args.batch} x "
                        f"{args.length} segments, float32, {args.device}, {args.threads} threads (best of {args.repeats})")
    for column in ("path", "time / step (s)", "median (s)", "speed-up vs eager", "peak memory (MiB)", "loss"):
        table.add_column(column, justify="right")
    for impl, label in (("eager", "eager (original's computation)"), ("fast", "fast (ours)")):
        r = results[impl]
        table.add_row(label, f"{r['time']:.3f}", f"{r['median']:.3f}", f"{eager['time'] / r['time']:.2f}x",
                      f"{r['peak_mib']:.0f}", f"{r['loss']:.6f}")
    console = Console(width=120)
    console.print(table)
    console.print(f"max |arousal fast - eager| = {out_diff:.2e}; ||grad fast - grad eager|| / ||grad eager|| = {grad_rel:.2e}")


if __name__ == "__main__":
    main()

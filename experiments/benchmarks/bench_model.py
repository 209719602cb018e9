"""Benchmark: one training step (forward + backward of the DSAML loss) of DSAMLNet, fast path vs eager path.

The eager path computes the way the original does (baseline); the fast path runs with the fused CNN kernels
(ours; `--native` adds it with PyTorch's native CNN modules, `cnn_kernel: native`, as converted originals
use); all run in this process on the same weights and inputs. Each variant's peak memory (max RSS growth
during the steps) is measured in a fresh subprocess. Prints a table with the best-of-N wall time, the ratio,
peak memory and the largest output and gradient differences.

    .venv/bin/python experiments/benchmarks/bench_model.py                     # paper config, batch 15
    .venv/bin/python experiments/benchmarks/bench_model.py --batch 1 --repeats 5
    .venv/bin/python experiments/benchmarks/bench_model.py --hidden 64 --heads 4 --layers 2   # quick check
    .venv/bin/python experiments/benchmarks/bench_model.py --device cuda --bf16   # + a bf16 autocast row
    .venv/bin/python experiments/benchmarks/bench_model.py --native   # + fast path, native CNN kernels
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


def _setup(args: argparse.Namespace, variant: str):
    torch.set_num_threads(args.threads)
    impl, kernel, _ = VARIANTS[variant]
    net = bench_network(args, impl, kernel).to(args.device).train()
    gen = torch.Generator().manual_seed(1)
    b, t = args.batch, args.length
    batch = (
        torch.randn(b, t, 51, 128, generator=gen),
        torch.randn(b, 1, args.hidden, generator=gen),
        torch.rand(b, t, generator=gen),
        torch.rand(b, t, generator=gen),
    )
    return net, tuple(x.to(args.device) for x in batch)


# variant -> (network path, CNN kernels, bf16 autocast)
VARIANTS = {
    "eager": ("eager", "native", False),
    "fast": ("fast", "fused", False),
    "fast+native": ("fast", "native", False),
    "fast+bf16": ("fast", "fused", True),
}
LABELS = {
    "eager": "eager (original's computation)",
    "fast": "fast (ours)",
    "fast+native": "fast, native CNN kernels",
    "fast+bf16": "fast, bf16 autocast",
}


def _step(net, batch, device: str, bf16: bool = False) -> tuple[float, float, dict]:
    """One fwd+bwd (forward and loss under bf16 autocast when asked) -> (wall s, process CPU s, outputs)."""
    from dsaml.losses import dsaml_loss

    x, g, a, v = batch
    cuda = device.startswith("cuda")
    net.zero_grad(set_to_none=True)
    if cuda:
        torch.cuda.synchronize()
    start, cpu_start = time.perf_counter(), time.process_time()
    with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
        out = net(x, g)
        loss, _ = dsaml_loss(out, a, v)
    loss.backward()
    if cuda:
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return wall, cpu, {"loss": loss.item(), "arousal": out["arousal"].detach().float().cpu()}


def _peak_memory(args: argparse.Namespace, variant: str) -> float:
    """MiB that training steps add on top of the model and inputs (activations, gradients, workspaces), in a
    fresh process so that the peak is this variant's own: resident memory on CPU, CUDA memory on a GPU."""
    bf16 = VARIANTS[variant][2]
    net, batch = _setup(args, variant)
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(2):
        _step(net, batch, args.device, bf16)
    if cuda:
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    return max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before, 0) / 1024


def _timed(args: argparse.Namespace) -> dict:
    """Both paths in one process, steps interleaved (eager, fast, eager, ...): CPU contention from other work
    hits both alike. Returns per-path times, losses, outputs and gradients."""
    variants = (
        ["eager", "fast"] + (["fast+native"] if args.native else []) + (["fast+bf16"] if args.bf16 else [])
    )
    nets = {variant: _setup(args, variant) for variant in variants}
    for variant in variants[1:]:
        nets[variant][0].load_state_dict(nets["eager"][0].state_dict())
    times = {impl: [] for impl in nets}
    cpu = {impl: [] for impl in nets}
    last = {}
    for i in range(args.warmup + args.repeats):
        for impl, (net, batch) in nets.items():
            elapsed, cpu_s, last[impl] = _step(net, batch, args.device, VARIANTS[impl][2])
            if i >= args.warmup:
                times[impl].append(elapsed)
                cpu[impl].append(cpu_s)
    return {
        impl: {
            "time": min(times[impl]),
            "median": sorted(times[impl])[len(times[impl]) // 2],
            "cpu": min(cpu[impl]),
            **last[impl],
            "grads": {k: p.grad.detach().cpu() for k, p in nets[impl][0].named_parameters()},
        }
        for impl in nets
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=15)
    parser.add_argument("--length", type=int, default=60, help="segments per clip")
    add_network_arguments(parser)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--bf16", action="store_true", help="add a row: the fast path under bf16 autocast")
    parser.add_argument(
        "--native",
        action="store_true",
        help="add a row: the fast path with native CNN kernels (converted originals)",
    )
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        results = pool.apply(_timed, (args,))
    for impl in results:  # one fresh process per variant: its peak memory is its own
        with ctx.Pool(1) as pool:
            results[impl]["peak_mib"] = pool.apply(_peak_memory, (args, impl))
    eager, fast = results["eager"], results["fast"]
    out_diff = (fast["arousal"] - eager["arousal"]).abs().max().item()
    flat_e = torch.cat([g.flatten() for g in eager["grads"].values()])
    flat_f = torch.cat([fast["grads"][k].flatten() for k in eager["grads"]])
    grad_rel = ((flat_f - flat_e).norm() / flat_e.norm()).item()
    table = Table(
        title=f"DSAMLNet fwd+bwd, D={args.hidden} H={args.heads} L={args.layers}, batch {args.batch} x "
        f"{args.length} segments, float32, {args.device}, {args.threads} threads "
        f"(best of {args.repeats}, interleaved)"
    )
    columns = ("path", "wall s/step", "median", "speed-up", "CPU s/step", "CPU speed-up", "peak MiB", "loss")
    for column in columns:
        table.add_column(column, justify="right")
    for impl, r in results.items():
        table.add_row(
            LABELS[impl],
            f"{r['time']:.3f}",
            f"{r['median']:.3f}",
            f"{eager['time'] / r['time']:.2f}x",
            f"{r['cpu']:.3f}",
            f"{eager['cpu'] / r['cpu']:.2f}x",
            f"{r['peak_mib']:.0f}",
            f"{r['loss']:.6f}",
        )
    console = Console(width=120)
    console.print(table)
    console.print(
        f"max |arousal fast - eager| = {out_diff:.2e}; "
        f"||grad fast - grad eager|| / ||grad eager|| = {grad_rel:.2e}"
    )
    if "fast+bf16" in results:  # reduced precision: how far it moves the outputs (not a parity claim)
        bf16_diff = (results["fast+bf16"]["arousal"] - eager["arousal"]).abs().max().item()
        console.print(f"max |arousal bf16 - float32 eager| = {bf16_diff:.2e}")


if __name__ == "__main__":
    main()

"""Benchmark: one PDMER meta-step (first-order MAML over a meta-batch), ours vs the original's loop.

Both run in this process on the same initial weights and the same random tasks (support: `shots` clips,
query: `queries` clips of 60 segments per task):

- original (baseline, re-created): the network computed the way the original does (`impl="eager"`:
  two separate encoder passes, attention maps materialised and returned every forward, the regulariser
  taken from the full [B, passes * L, H, T, T] maps), and the original's loop: per task `maml.clone()`,
  `learner.adapt(support_loss)` x inner steps, `query_loss.backward()`, then every gradient divided by the
  number of tasks and one Adam step.
- ours: `DSAMLModule`'s path: `dsaml.meta.meta_backward` (query loss / tasks, backward per task) on the
  fast network (`impl="fast"`: stacked local+global passes, shared first-layer projections, only the
  attention diagonal the regulariser needs), then one Adam step.

- with --head-only, also ours with the inner loop over the head only (ANIL, `task.inner_loop=head`): the
  body's features of each support batch computed once without gradient, the inner SGD steps over the BiLSTM +
  regressor; the query pass and the outer step as before. Its ratio to ours (full inner loop) is printed.

- with --engines, instead: ours with the two engines of `task.meta_engine` in one run, sequential (the
  learn2learn loop above) and batched (every episode at once, `dsaml.meta.batched`; plus --chunk N: N
  episodes per call), each with its peak memory above the step's start (CPU: the process's resident set,
  sampled every 2 ms; CUDA: allocated memory); with --bf16 each under bf16 autocast too, with --head-only the
  head-only inner loop too, and the projected time of --meta-batches (the paper's 2000) at that speed.
  Ratios are to the sequential engine; --demo sets the demo's PDMER sizes (3
  episodes x 5 inner steps, 1 shot, 3 queries, D=64, H=4, L=2, FFN 128).

Prints a table (seconds per meta-step, ratio) and the largest difference between the two meta-gradients.

    .venv/bin/python experiments/benchmarks/bench_meta_step.py            # paper: 16 tasks x 16 steps, D=1024
    .venv/bin/python experiments/benchmarks/bench_meta_step.py --reduced   # minutes on 2 cores
    .venv/bin/python experiments/benchmarks/bench_meta_step.py --device cuda --bf16   # + ours, bf16 autocast
    .venv/bin/python experiments/benchmarks/bench_meta_step.py --head-only   # + head-only inner loop (ANIL)
    .venv/bin/python experiments/benchmarks/bench_meta_step.py --engines --chunk 4 --repeats 1  # engines
    .venv/bin/python experiments/benchmarks/bench_meta_step.py --engines --demo --threads 1     # demo size
"""

from __future__ import annotations

import argparse
import os
import threading
import time

import torch
import torch.nn.functional as F
from common import add_network_arguments, bench_network
from rich.console import Console
from rich.table import Table

from dsaml.meta import maml_wrap, meta_backward
from dsaml.meta.l2l import learn2learn
from dsaml.metrics import average_score, sequence_scores

HEAD_ONLY = "ours, head-only inner loop (ANIL)"


def make_tasks(n_tasks: int, shots: int, queries: int, length: int, dim: int, seed: int) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)

    def batch(n: int) -> dict:
        return {
            "logmel": torch.randn(n, length, 51, 128, generator=gen) - 5.0,
            "global": torch.randn(n, 1, dim, generator=gen),
            "arousal": torch.rand(n, length, generator=gen) * 2 - 1,
            "valence": torch.rand(n, length, generator=gen) * 2 - 1,
        }

    return [{"support": batch(shots), "query": batch(queries)} for _ in range(n_tasks)]


def original_loss(out: dict, arousal, valence):
    """The original's loss: scores + regulariser computed from the full returned attention maps."""
    per_seq = sequence_scores(out["arousal"], out["valence"], arousal, valence)
    scores = {k: v.mean() for k, v in per_seq.items()}
    maps = out["attention_maps"].mean(dim=2)  # [B, passes * L, T, T], averaged over heads
    n_layers = maps.shape[1] // 2
    local, global_ = maps[:, n_layers - 1].mean(0), maps[:, -1].mean(0)
    local, global_ = torch.diagonal(local), torch.diagonal(global_)
    reg = F.mse_loss(local, torch.full_like(local, 0.9)) + F.mse_loss(global_, torch.full_like(global_, 0.1))
    return 1 - average_score(scores) + reg


def original_meta_step(net, tasks, steps, lr) -> None:
    maml = learn2learn().algorithms.MAML(net, lr=lr, first_order=True)
    optimizer = torch.optim.Adam(net.parameters(), lr=5e-5)
    optimizer.zero_grad()
    for task in tasks:
        learner = maml.clone()
        s = task["support"]
        for _ in range(steps):
            out = learner(s["logmel"], s["global"], return_attention=True)
            learner.adapt(original_loss(out, s["arousal"], s["valence"]))
        q = task["query"]
        out = learner(q["logmel"], q["global"], return_attention=True)
        original_loss(out, q["arousal"], q["valence"]).backward()
    for p in net.parameters():
        if p.grad is not None:
            p.grad.div_(len(tasks))
    optimizer.step()


def engine_step(engine: str, head: bool = False, chunk: int | None = None):
    """`DSAMLModule`'s meta-step with task.meta_engine=`engine` (task.meta_chunk=`chunk`); head: with
    task.inner_loop=head (MAML over the head, the whole network for the query)."""

    def step(net, tasks, steps, lr) -> None:
        maml = maml_wrap(net.head if head else net, lr, first_order=True)
        optimizer = torch.optim.Adam(net.parameters(), lr=5e-5)
        optimizer.zero_grad()
        meta_backward(maml, tasks, steps, len(tasks), net=net if head else None, engine=engine, chunk=chunk)
        optimizer.step()

    return step


our_meta_step = engine_step("sequential")
head_meta_step = engine_step("sequential", head=True)


def bf16(step):
    """`step` with forward passes and losses under bf16 autocast (backward follows the recorded dtypes)."""

    def autocast_step(net, tasks, steps, lr) -> None:
        device = next(net.parameters()).device.type
        with torch.autocast(device, dtype=torch.bfloat16):
            step(net, tasks, steps, lr)

    return autocast_step


def _on(batch: dict, device: str) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    console = Console()
    tasks = [
        {part: _on(batch, args.device) for part, batch in task.items()}
        for task in make_tasks(args.tasks, args.shots, args.queries, args.length, args.hidden, seed=1)
    ]
    if args.engines:
        return compare_engines(args, tasks, console)
    variants = {
        "original loop (eager network)": ("eager", original_meta_step),
        "ours (meta_backward, fast network)": ("fast", our_meta_step),
    }
    if args.bf16:
        variants["ours under bf16 autocast"] = ("fast", bf16(our_meta_step))
    if args.head_only:
        variants[HEAD_ONLY] = ("fast", head_meta_step)
    times, grads, _ = measure(args, variants, tasks, console)
    base = next(iter(times.values()))
    g_base, g_ours = list(grads.values())[:2]
    diff = max(float((g_base[k] - g_ours[k]).abs().max()) for k in g_base)
    scale = max(float(g.abs().max()) for g in g_base.values())
    table = Table(
        title=f"one PDMER meta-step: {args.tasks} tasks x {args.inner_steps} inner steps, "
        f"{args.shots} shot, {args.queries} queries, D={args.hidden}, L={args.layers}, "
        f"H={args.heads}, {args.device}, {args.threads} threads (best of {args.repeats})"
    )
    for col in ("variant", "s / meta-step", "speed-up"):
        table.add_column(col, justify="right")
    for name, value in times.items():
        table.add_row(name, f"{value:.2f}", f"{base / value:.2f}x")
    console.print(table)
    console.print(
        f"meta-gradient max |ours - original| = {diff:.2e} (max |grad| {scale:.2e}); "
        f"||ours - original|| / ||original|| = {_relative(g_ours, g_base):.2e} (float32 rounding, amplified "
        "by the inner steps)"
    )
    if args.head_only:
        full = times["ours (meta_backward, fast network)"]
        console.print(
            f"head-only vs full inner loop (ours, same run): {full / times[HEAD_ONLY]:.2f}x faster "
            f"({times[HEAD_ONLY]:.2f} s vs {full:.2f} s per meta-step)"
        )
    if args.bf16:  # reduced precision: how far it moves the meta-gradient (not a parity claim)
        rel = _relative(grads["ours under bf16 autocast"], g_base)
        console.print(f"bf16 meta-gradient: ||bf16 - original|| / ||original|| = {rel:.2e}")


def measure(args: argparse.Namespace, variants: dict, tasks: list, console: Console):
    """Each variant (name -> (impl, step)) timed best of args.repeats, interleaved so that all see the same
    machine load, on the same initial weights -> (seconds, meta-gradients, peak bytes above the start)."""
    nets = {name: bench_network(args, impl).to(args.device).train() for name, (impl, _) in variants.items()}
    grads, peaks, times = {}, {}, {name: float("inf") for name in variants}
    for _ in range(args.repeats):
        for name, (_, step) in variants.items():
            net = nets[name]
            state = {k: v.clone() for k, v in net.state_dict().items()}
            _sync(args.device)
            with PeakMemory(args.device) as peak:
                start = time.perf_counter()
                step(net, tasks, args.inner_steps, args.inner_lr)
                _sync(args.device)
                times[name] = min(times[name], time.perf_counter() - start)
            peaks[name] = max(peaks.get(name, 0), peak.bytes)
            grads[name] = {k: p.grad.clone() for k, p in net.named_parameters()}
            net.load_state_dict(state)
            console.print(f"{name}: {times[name]:.2f} s (best so far), peak +{peaks[name] / 2**20:.0f} MiB")
    return times, grads, peaks


def compare_engines(args: argparse.Namespace, tasks: list, console: Console) -> dict[str, float]:
    """--engines: the sequential and the batched engine in one run -> seconds per meta-step by variant."""
    variants = {"sequential (learn2learn)": ("fast", engine_step("sequential"))}
    variants["batched (all episodes)"] = ("fast", engine_step("batched"))
    if args.chunk:
        variants[f"batched (chunks of {args.chunk})"] = ("fast", engine_step("batched", chunk=args.chunk))
    if args.head_only:
        variants["head-only, sequential"] = ("fast", engine_step("sequential", head=True))
        variants["head-only, batched"] = ("fast", engine_step("batched", head=True))
    if args.bf16:
        for name in list(variants):
            variants[f"{name}, bf16 autocast"] = ("fast", bf16(variants[name][1]))
    times, grads, peaks = measure(args, variants, tasks, console)
    table = Table(
        title=f"one PDMER meta-step by engine: {args.tasks} episodes x {args.inner_steps} inner steps, "
        f"{args.shots} shot, {args.queries} queries, D={args.hidden}, L={args.layers}, H={args.heads}, "
        f"FFN {args.ffn}, {args.device}, {args.threads} threads (best of {args.repeats})"
    )
    projected = f"{args.meta_batches} meta-batches"
    columns = (
        "variant",
        "s / meta-step",
        "vs sequential",
        "peak memory",
        projected,
        "meta-gradient vs sequential",
    )
    for col in columns:
        table.add_column(col, justify="right")
    for name, value in times.items():
        exact = "head-only, sequential" if name.startswith("head-only") else "sequential (learn2learn)"
        same_precision = f"{exact}, bf16 autocast" if name.endswith("bf16 autocast") else exact
        table.add_row(
            name,
            f"{value:.2f}",
            f"{times[same_precision] / value:.2f}x",
            f"+{peaks[name] / 2**20:.0f} MiB",
            f"{value * args.meta_batches / 3600:.2f} h",
            f"{_relative(grads[name], grads[exact]):.1e}",
        )
    Console(width=180).print(table)  # one line per row, also when the output is captured
    console.print(
        "vs sequential: the sequential engine's time at the same precision / this row's; meta-gradient: "
        "||g - g_sequential|| / ||g_sequential|| against the float32 sequential engine (float32: rounding, "
        "amplified by the inner steps; bf16 rows: reduced precision, not a parity claim)"
    )
    return times


class PeakMemory:
    """Peak memory above the start of a `with` block: CUDA allocated bytes, or on CPU the resident set size
    (/proc/self/statm) sampled every 2 ms by a thread. `.bytes` after the block."""

    def __init__(self, device: str) -> None:
        self.device, self.bytes = device, 0
        self._stop = threading.Event()

    def __enter__(self) -> PeakMemory:
        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated()
        else:
            self._start = self._peak = _resident()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self._peak = max(self._peak, _resident())

    def __exit__(self, *exc) -> None:
        if self.device.startswith("cuda"):
            self.bytes = torch.cuda.max_memory_allocated() - self._start
        else:
            self._stop.set()
            self._thread.join()
            self.bytes = max(self._peak, _resident()) - self._start


def _resident() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _relative(grads: dict, reference: dict) -> float:
    """||grads - reference|| / ||reference|| over all parameters."""
    diff = torch.cat([(grads[k] - reference[k]).flatten() for k in reference]).norm()
    return float(diff / torch.cat([g.flatten() for g in reference.values()]).norm())


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=16)
    parser.add_argument("--inner-steps", type=int, default=16)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--queries", type=int, default=15)
    add_network_arguments(parser)
    parser.add_argument("--length", type=int, default=60)
    parser.add_argument("--inner-lr", type=float, default=5e-3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--bf16", action="store_true", help="add a row: ours under bf16 autocast")
    parser.add_argument(
        "--head-only", action="store_true", help="add a row: ours with the inner loop over the head only"
    )
    parser.add_argument("--engines", action="store_true", help="sequential vs batched engine (see above)")
    parser.add_argument("--chunk", type=int, default=None, help="--engines: add batched in chunks of N")
    parser.add_argument("--demo", action="store_true", help="the demo's PDMER sizes (see above)")
    parser.add_argument(
        "--meta-batches",
        type=int,
        default=2000,
        help="--engines: project the time of this many (the paper's)",
    )
    parser.add_argument(
        "--reduced",
        action="store_true",
        help="2 tasks x 4 inner steps, 15 queries, D=1024 (paper network, fewer tasks/steps)",
    )
    args = parser.parse_args()
    if args.reduced:
        args.tasks, args.inner_steps = 2, 4
    if args.demo:
        args.tasks, args.inner_steps, args.shots, args.queries = 3, 5, 1, 3
        args.hidden, args.heads, args.layers, args.ffn = 64, 4, 2, 128
    run(args)


if __name__ == "__main__":
    main()

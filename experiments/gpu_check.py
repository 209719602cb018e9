"""Every GPU check in one command (`make gpu-check`): tests, training, benchmarks -> one markdown report.

On a CUDA machine, in order (each a subprocess with a time limit; a failure is recorded and the rest run):
- the CUDA-relevant tests (tests/models/test_device.py: float32 parity with the original, the fused CNN
  against PyTorch's native kernels, whole-song prediction against the CPU) with DSAML_TEST_DEVICE=cuda;
- a tiny synthetic corpus and its feature store (dsaml-synth synth=tiny, dsaml-preprocess), unless --store;
- DMER and PDMER trained a few steps with trainer=gpu, and with trainer=ddp on the GPUs there are
  (one GPU is a DDP world of one: NCCL refuses two ranks on one GPU);
- bench_model.py, bench_inference.py, bench_meta_step.py with --device cuda, float32 and bf16 rows,
  bench_meta_step.py --engines (the sequential vs the batched MAML engine at paper size, peak memory, the
  projected time of the paper's 2000 meta-batches), bench_stride.py (accuracy on the DMER model just
  trained, speed at paper size on CUDA) and bench_eval_protocols.py --demo (dsaml-eval's within-song and
  cross-song protocols of the demo's test pairs with both engines; CUDA only).
Without CUDA (or with --dry) the same checks run at tiny sizes on the CPU (trainer=cpu and trainer=ddp_cpu
instead of gpu and ddp), which tests/e2e/test_gpu_check.py does inside `make test`.

Writes gpu_check.md (device, versions, every check's pass/fail, time and printed figures) into $OUT when it is
set, else into --out, prints where, and exits 1 when a check failed. GPU_CHECK_INSTALL_S (seconds the install
took, set by the caller) is reported when present.

    .venv/bin/python experiments/gpu_check.py            # CUDA when present, else the dry mode
    .venv/bin/python experiments/gpu_check.py --dry --store data/stores/synthetic_tiny.h5
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from dsaml.training.smoke import PDMER_TINY_EPISODES, TINY_MODEL, tiny_model_overrides

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "experiments" / "benchmarks"
QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "~callbacks.progress_bar"]
DMER = ["experiment=dmer_synthetic", "task.batch_size=4", "trainer.max_epochs=1"]
PDMER = ["experiment=pdmer_synthetic", *PDMER_TINY_EPISODES, "trainer.max_epochs=1"]


@dataclass
class Check:
    """One command of the check and what became of it."""

    name: str
    argv: list[str]
    timeout_s: float
    env: dict[str, str] | None = None
    returncode: int | None = None
    seconds: float = 0.0
    output: str = ""

    @property
    def passed(self) -> bool:
        return self.returncode == 0

    def run(self, cwd: Path) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline", **(self.env or {})}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
        start = time.perf_counter()
        try:
            proc = subprocess.run(
                self.argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=self.timeout_s
            )
            self.returncode, self.output = proc.returncode, proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as error:
            self.returncode = 124
            partial = (error.stdout or b"") + (error.stderr or b"")
            text = partial.decode(errors="replace") if isinstance(partial, bytes) else partial
            self.output = f"{text}\n[timed out after {self.timeout_s:.0f} s]"
        self.seconds = time.perf_counter() - start


def command(name: str) -> list[str]:
    """A dsaml console script by module (works without the console scripts on the PATH)."""
    return [sys.executable, "-m", f"dsaml.cli.{name}"]


def plan(args: argparse.Namespace, work: Path) -> list[Check]:
    """The checks in order; sizes and trainers by mode (CUDA or dry)."""
    dry = args.dry
    device = "cpu" if dry else "cuda"
    store = Path(args.store) if args.store else work / "tiny.h5"
    checks = [
        Check(
            "tests (tests/models/test_device.py)",
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                str(ROOT / "tests" / "models" / "test_device.py"),
            ],
            300,
            {"DSAML_TEST_DEVICE": device},
        )
    ]
    if not args.store:
        checks += [
            Check(
                "corpus (dsaml-synth synth=tiny)",
                [
                    *command("synth"),
                    "synth=tiny",
                    f"out={work / 'corpus'}",
                    "workers=2",
                    f"hydra.run.dir={work / 'synth'}",
                ],
                300,
            ),
            Check(
                "feature store (dsaml-preprocess)",
                [
                    *command("preprocess"),
                    "data=synthetic",
                    f"data.root={work / 'corpus'}",
                    f"paths.store={store}",
                    "workers=2",
                    "progress=false",
                    f"device={device}",
                    f"hydra.run.dir={work / 'preprocess'}",
                ],
                300,
            ),
        ]
    network = [*tiny_model_overrides(), "model=dsaml_small"] if dry else ["model=dsaml_small"]
    single, ddp = ("trainer=cpu", "trainer=ddp_cpu") if dry else ("trainer=gpu", "trainer=ddp")
    for task, overrides in (("DMER", DMER), ("PDMER", PDMER)):
        # dry: DMER on ddp_cpu's two ranks; PDMER in a world of one, as on a one-GPU machine (two ranks of
        # PDMER against one process: tests/training/test_ddp.py)
        devices = max(torch.cuda.device_count(), 1) if not dry else 1 if task == "PDMER" else None
        for trainer, extra in ((single, []), (ddp, [f"trainer.devices={devices}"] if devices else [])):
            run_dir = work / f"{task.lower()}_{trainer.split('=')[1]}"
            checks.append(
                Check(
                    f"train {task} {trainer}",
                    [
                        *command("train"),
                        *overrides,
                        *network,
                        *QUIET,
                        trainer,
                        *extra,
                        f"paths.store={store}",
                        f"paths.root_dir={work}",
                        f"hydra.run.dir={run_dir}",
                    ],
                    300,
                    {"OMP_NUM_THREADS": "1"} if dry else None,
                )
            )
    tiny = {"--hidden": "hidden_size", "--heads": "num_heads", "--layers": "num_layers", "--ffn": "ffn_size"}
    size = [x for flag, key in tiny.items() for x in (flag, str(TINY_MODEL[key]))] if dry else []
    size += ["--threads", "1"] if dry else []
    tiny_steps = ["--batch", "2", "--length", "32", "--warmup", "0", "--repeats", "1"]  # bench_model, dry
    bench = [sys.executable]
    checks += [
        Check(
            "bench_model.py (float32, bf16)",
            [
                *bench,
                str(BENCH / "bench_model.py"),
                "--device",
                device,
                "--bf16",
                *size,
                *(tiny_steps if dry else ["--repeats", "3"]),
            ],
            300,
        ),
        Check(
            "bench_inference.py (float32, bf16)",
            [
                *bench,
                str(BENCH / "bench_inference.py"),
                "--device",
                device,
                "--bf16",
                *size,
                *(["--seconds", "45"] if dry else []),
            ],
            300,
        ),
        Check(
            "bench_meta_step.py (float32, bf16)",
            [
                *bench,
                str(BENCH / "bench_meta_step.py"),
                "--device",
                device,
                "--bf16",
                *size,
                *(["--tasks", "1", "--inner-steps", "1", "--queries", "2", "--repeats", "1"] if dry else []),
            ],
            300,
        ),
        Check(
            "bench_meta_step.py --engines (sequential vs batched)",
            [
                *bench,
                str(BENCH / "bench_meta_step.py"),
                "--engines",
                "--device",
                device,
                "--bf16",
                "--chunk",
                "4",
                *size,
                *(["--tasks", "2", "--inner-steps", "1", "--queries", "2", "--length", "8"] if dry else []),
                "--repeats",
                "1" if dry else "2",
            ],
            300 if dry else 600,
        ),
        Check(
            "bench_stride.py",
            [
                *bench,
                str(BENCH / "bench_stride.py"),
                "--device",
                device,
                "--ckpt",
                str(work / f"dmer_{single.split('=')[1]}" / "checkpoints" / "last.ckpt"),
                "--store",
                str(store),
                *size,
                *(["--paper-seconds", "45", "--strides", "1,5,20", "--paper-strides", "1,5"] if dry else []),
            ],
            300,
        ),
    ]
    if not dry:  # the dry run stays as it was: this script's tiny mode adds half a minute of imports and
        # warm-up; its engines' parity is tests/meta/test_batched_adapt.py
        evaluation = [*bench, str(BENCH / "bench_eval_protocols.py"), "--demo", "--device", device]
        checks.append(Check("bench_eval_protocols.py --demo (sequential vs batched)", evaluation, 600))
    return checks


def versions() -> list[tuple[str, str]]:
    rows = [
        ("date (UTC)", datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")),
        ("python", platform.python_version()),
        ("torch", torch.__version__),
        ("CUDA (torch build)", str(torch.version.cuda)),
        ("cuDNN", str(torch.backends.cudnn.version())),
        ("CPU cores", str(os.cpu_count())),
    ]
    if torch.cuda.is_available():
        rows += [(f"GPU {i}", torch.cuda.get_device_name(i)) for i in range(torch.cuda.device_count())]
    for module in ("lightning", "hydra", "learn2learn", "torchaudio"):
        try:
            rows.append((module, __import__(module).__version__))
        except Exception as error:  # a missing package is a finding of the report, not a crash
            rows.append((module, f"not importable ({type(error).__name__})"))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    rows.append(("dsaml commit", commit.stdout.strip() or "unknown (no git)"))
    if "GPU_CHECK_INSTALL_S" in os.environ:
        rows.append(("install (s)", os.environ["GPU_CHECK_INSTALL_S"]))
    return rows


def report(checks: list[Check], mode: str, total_s: float) -> str:
    lines = [f"# dsaml gpu-check: {mode}", "", "| | |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in versions()]
    passed = sum(c.passed for c in checks)
    lines += [
        "",
        f"**{passed}/{len(checks)} checks passed** in {total_s:.0f} s.",
        "",
        "| check | result | seconds |",
        "|---|---|---|",
    ]
    lines += [
        f"| {c.name} | {'pass' if c.passed else f'**FAIL** (exit {c.returncode})'} | {c.seconds:.1f} |"
        for c in checks
    ]
    for c in checks:
        tail = "\n".join(c.output.strip().splitlines()[-60:])
        lines += [
            "",
            f"## {c.name}: {'pass' if c.passed else 'FAIL'}",
            "",
            f"`{' '.join(c.argv[1:])}`",
            "",
            "```",
            tail,
            "```",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dry", action="store_true", help="tiny sizes on the CPU (the default without CUDA)")
    parser.add_argument("--store", help="a synthetic feature store to train on (default: build the tiny one)")
    parser.add_argument(
        "--out", default=str(ROOT / "outputs" / "gpu_check"), help="report folder ($OUT wins)"
    )
    args = parser.parse_args(argv)
    args.dry = args.dry or not torch.cuda.is_available()
    out = Path(os.environ.get("OUT") or args.out)
    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    mode = "dry run, tiny sizes on the CPU" if args.dry else "CUDA"
    start = time.perf_counter()
    checks = plan(args, work)
    for check in checks:
        print(f"gpu-check: {check.name} ...", flush=True)
        check.run(work)
        print(
            f"gpu-check: {check.name}: {'pass' if check.passed else 'FAIL'} ({check.seconds:.1f} s)",
            flush=True,
        )
    path = out / "gpu_check.md"
    path.write_text(report(checks, mode, time.perf_counter() - start))
    shutil.rmtree(work, ignore_errors=True)  # corpus, store, runs: only the report comes back
    print(f"gpu-check: report written to {path}")
    return 0 if all(c.passed for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())

"""What keeps a training run's results safe and a resumed run identical to an uninterrupted one.

- `claim_run_directory`: a run never writes into a folder holding another run's results (checkpoints, csv
  metrics, results.json/md, wandb) unless it resumes that run (`ckpt_path`) or `overwrite=true` (which
  removes the old results first, so old and new are never mixed).
- `preserve_metrics_csv`: Lightning's CSVLogger deletes csv/metrics.csv when it starts; on resume the rows
  of the epochs the checkpoint holds are put back (rows of a partly-run epoch after it are dropped: that
  epoch is run again).
- `StepSeed`: the global torch RNG (dropout) is reseeded from (seed, global step) before every training
  step, so step s draws the same numbers whether or not the run was interrupted before it (the data order is
  already a function of (seed, epoch/step), see dsaml.data.datamodule). Reseeding per epoch is not enough:
  Lightning creates the first epoch's DataLoader iterator (which draws from the global RNG) before the
  epoch-start hooks, and later epochs' after them, so a resumed run would draw in another order. Test items
  are reseeded from (seed, item index) the same way.
- `checkpoint_in_run`: the test stage only loads checkpoints inside this run's folder.
- `check_resumed_settings`: a resume may not change what defines the run (model, task, features), only how
  it is tested.
- `requeued_checkpoint`: a Slurm job restarted after preemption, a timeout or `scontrol requeue` resumes its
  own run (the folder it marked with its job id at its first start) from that run's last checkpoint.
"""

from __future__ import annotations

import csv
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from dsaml.config import ConfigError, check_output_folder

RUN_OUTPUTS = ("checkpoints", "csv", "results.json", "results.md", "wandb")


class RunDirectoryError(RuntimeError):
    """The run folder holds another run's results, or a checkpoint lies outside the run folder."""


def claim_run_directory(output_dir: str | Path, resuming: bool, overwrite: bool) -> None:
    """Refuse (RunDirectoryError) to start a new run in a folder with a previous run's results."""
    out = Path(output_dir)
    found = sorted(name for name in RUN_OUTPUTS if (out / name).exists())
    if not found or resuming:
        return
    if not overwrite:
        raise RunDirectoryError(
            f"run folder {out} already holds a run's results ({', '.join(found)}); resume it with "
            "ckpt_path=last, pass overwrite=true to replace them, or choose another hydra.run.dir"
        )
    for name in found:
        path = out / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def refuse_taken_run_directory(cfg: Any) -> None:
    """`dsaml-train`/`dsaml-eval` before Hydra starts (it would rewrite <run dir>/.hydra/config.yaml): the
    run folder must be writable (ConfigError), and RunDirectoryError when it already holds a run's results
    and the job neither resumes it (`ckpt_path`, dsaml-train) nor has `overwrite=true`."""
    out = check_output_folder("hydra.run.dir", str(cfg.hydra.run.dir))
    resuming = cfg.get("train", None) is not None and cfg.get("ckpt_path") is not None
    if cfg.get("overwrite", False) or resuming or requeued_run(out):
        return
    found = sorted(name for name in RUN_OUTPUTS if (out / name).exists())
    if found:
        raise RunDirectoryError(
            f"run folder {out} already holds a run's results ({', '.join(found)}); resume it with "
            "ckpt_path=last, pass overwrite=true to replace them, or choose another hydra.run.dir"
        )


# task keys that only change how the run is tested, never what it trains: a resumed run may change them
TEST_ONLY_TASK_KEYS = (
    "test_protocols",
    "stitch",
    "eval_stride",
    "eval_batch_size",
    "eval_inner_steps",
)


def changed_run_settings(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The run-defining hyper-parameters (model, task without TEST_ONLY_TASK_KEYS, features) whose value in
    `current` differs from the checkpoint's `stored` ones, as "task.lr: run 5e-05, now 0.01" (keys present in
    both only, so checkpoints of older versions without a newer key still resume)."""
    changes = []
    for group, free in (("model", ("impl",)), ("task", TEST_ONLY_TASK_KEYS), ("features", ())):
        old, new = stored.get(group) or {}, current.get(group) or {}
        for key in sorted(set(old) & set(new) - set(free)):
            if old[key] != new[key]:
                changes.append(f"{group}.{key}: run {old[key]!r}, now {new[key]!r}")
    return changes


def check_resumed_settings(stored: dict[str, Any], current: dict[str, Any], path: str | Path) -> None:
    """ConfigError naming the changed keys when a resume (checkpoint `path`) changes what defines the run:
    its recorded config would otherwise claim the new values for every epoch."""
    changes = changed_run_settings(stored, current)
    if changes:
        raise ConfigError(
            f"ckpt_path={path}: resuming with other run-defining settings than the run was trained with "
            f"({'; '.join(changes[:4])}{'; ...' if len(changes) > 4 else ''}); resume without them, or start "
            "a new run in another hydra.run.dir (init_from=<checkpoint> starts from its weights)"
        )


SLURM_MARK = ".slurm_job"  # in a run folder: the Slurm job (array task) that started the run


def slurm_job() -> str | None:
    """This process's Slurm job as `<cluster>/<job id>` (`<array job id>_<task id>` for an array task: a
    sweep's jobs), the same after a requeue; None outside Slurm."""
    env = os.environ
    if "SLURM_JOB_ID" not in env:
        return None
    job = env["SLURM_JOB_ID"]
    if "SLURM_ARRAY_JOB_ID" in env and "SLURM_ARRAY_TASK_ID" in env:
        job = f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return f"{env.get('SLURM_CLUSTER_NAME', '')}/{job}"


def mark_slurm_job(output_dir: str | Path) -> None:
    """Record in the run folder which Slurm job runs it (nothing outside Slurm)."""
    job = slurm_job()
    if job is not None:
        (Path(output_dir) / SLURM_MARK).write_text(job + "\n")


def requeued_run(output_dir: str | Path) -> bool:
    """True when this process is a Slurm job restarted after a requeue (SLURM_RESTART_COUNT > 0) and the
    run folder is the one it marked at its first start: its results are its own."""
    mark = Path(output_dir) / SLURM_MARK
    restarts = os.environ.get("SLURM_RESTART_COUNT", "0")
    restarted = restarts.isdigit() and int(restarts) > 0
    return restarted and mark.is_file() and mark.read_text().strip() == slurm_job()


def requeued_checkpoint(output_dir: str | Path) -> str | None:
    """The last checkpoint of a requeued job's own run (`requeued_run`), if it wrote one."""
    last = Path(output_dir) / "checkpoints" / "last.ckpt"
    return str(last) if requeued_run(output_dir) and last.is_file() else None


def checkpoint_epoch(checkpoint: dict[str, Any]) -> int:
    """The last completed epoch a Lightning checkpoint holds (-1 when unknown)."""
    epoch = checkpoint.get("epoch")
    return int(epoch) if isinstance(epoch, int) else -1


def preserve_metrics_csv(trainer: L.Trainer, last_epoch: int) -> int:
    """On resume: keep csv/metrics.csv rows of epochs <= `last_epoch` through Lightning's CSVLogger start
    (which deletes the file). Returns the number of rows kept."""
    from lightning.pytorch.loggers import CSVLogger

    loggers = [lg for lg in trainer.loggers if isinstance(lg, CSVLogger)]
    if not loggers:
        return 0
    logger = loggers[0]
    path = Path(logger.log_dir) / "metrics.csv"
    if not path.is_file():
        return 0
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        fields, rows = list(reader.fieldnames or []), list(reader)
    kept = [row for row in rows if _epoch_of(row) <= last_epoch]
    with warnings.catch_warnings():  # "Previous log files ... will be deleted": they are put back below
        warnings.filterwarnings("ignore", message="Experiment logs directory")
        _ = logger.experiment  # creating the writer is what deletes the old file
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(kept)
    logger.experiment.metrics_keys = list(fields)  # the next save appends (rewriting the header if new keys)
    return len(kept)


def _epoch_of(row: dict[str, str]) -> float:
    try:
        return float(row.get("epoch") or "nan")
    except ValueError:
        return float("nan")


class StepSeed(L.Callback):
    """Reseed torch's global RNG (all devices) from (seed, global step) before every training step, and from
    (seed, item index) before every test item, so that a test item's dropout draws depend on neither the
    items before it nor how they were split over processes."""

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int
    ) -> None:
        torch.manual_seed(step_seed(self.seed, trainer.global_step))

    def on_test_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int, dataloader_idx: int = 0
    ) -> None:
        torch.manual_seed(step_seed(self.seed, int(batch["index"]), stream=TEST_ITEM))


TRAIN_STEP, TEST_ITEM, TEST_PROTOCOL = 0, 1, 2  # streams of `step_seed`


def step_seed(seed: int, step: int, stream: int = TRAIN_STEP) -> int:
    """A 62-bit torch seed for (seed, stream, step), a pure function of the three and different for every
    triple in its low 32 bits too (torch's CPU generator keeps only those: a seed built as (seed << 32) ^ step
    would ignore `seed`)."""
    entropy = [int(value) % 2**64 for value in (seed, stream, step)]
    return int(np.random.default_rng(entropy).integers(0, 2**62))


def checkpoint_in_run(path: str | Path, output_dir: str | Path) -> Path:
    """`path` resolved, if it lies inside the run folder `output_dir`; RunDirectoryError otherwise."""
    resolved, root = Path(path).resolve(), Path(output_dir).resolve()
    if not resolved.is_relative_to(root):
        raise RunDirectoryError(
            f"refusing to test {path}: the best checkpoint recorded in the resumed run's state is not inside "
            f"this run's folder {root} (only checkpoints this run wrote are loaded)"
        )
    return resolved

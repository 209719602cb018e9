"""The sweep launchers of `hydra/launcher=slurm` and `hydra/launcher=local_submitit`: those of
hydra-submitit-launcher, waiting for every job and ending the sweep with one message that names each
failed job and its log.

hydra-submitit-launcher returns the jobs' results in order and stops at the first failure (the sweep's
other jobs are then neither waited for nor reported). Here every job is waited for, and a failure, whether
the job raised (its JobReturn holds the error) or died without a result (killed, out of memory, cancelled:
Slurm's state says which), is listed as `job #<n> (<Slurm id>): <what happened>; log: <stderr file>`.

Job states: submitit asks `sacct`. A cluster without an accounting database (sacct: "accounting storage is
disabled", e.g. the one-node Slurm of tools/slurm_local.sh) would leave every job that died without a
result in state UNKNOWN, polled forever; there the states come from `squeue --states=all`, which lists the
jobs slurmctld remembers (MinJobAge); a job it no longer lists has ended.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from omegaconf import OmegaConf

import dsaml.config  # noqa: F401  (registers the ${dsaml.gpus_per_node:...} resolver of the launcher presets)

try:
    from hydra_plugins.hydra_submitit_launcher import submitit_launcher
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
except (
    ImportError
):  # without the [slurm] extra there is nothing to launch with (and Hydra's scan stays quiet)
    submitit_launcher = None

log = logging.getLogger(__name__)

POLL_S = 20  # at most this long between two state queries of a running sweep
ENDED = "ENDED"  # a job squeue no longer lists (it ended before MinJobAge seconds ago)


class SweepError(RuntimeError):
    """One or more jobs of a sweep failed; the message names each one and its log file."""


def _watcher_class() -> type:
    from submitit.slurm.slurm import SlurmInfoWatcher

    class SqueueFallbackWatcher(SlurmInfoWatcher):
        """Job states from sacct; from squeue where sacct fails (no accounting database)."""

        def update(self) -> None:
            command = self._make_command()
            if command is None:
                return
            self._num_calls += 1
            try:
                output = subprocess.run(command, capture_output=True, check=True, timeout=60).stdout.decode()
            except (OSError, subprocess.SubprocessError):
                output = self._squeue_states()
            self._info_dict.update(self.read_info(output))
            self._last_status_check = time.time()
            for job_id in self._registered - self._finished:
                if self.is_done(job_id, mode="cache"):
                    self._finished.add(job_id)

        def _squeue_states(self) -> str:
            """sacct's table (JobID|State|NodeList) from squeue; registered jobs it omits have ENDED."""
            waiting = sorted(self._registered - self._finished)
            arrays = sorted({job_id.split("_")[0] for job_id in waiting})
            command = [
                "squeue",
                "--noheader",
                "--states=all",
                "--format=%i|%T|%N",
                "--jobs",
                ",".join(arrays),
            ]
            try:
                rows = subprocess.run(command, capture_output=True, check=True, timeout=60, text=True).stdout
            except (OSError, subprocess.SubprocessError) as error:
                log.warning("squeue failed (%s); job states unknown until the next query", error)
                return ""
            listed = self.read_info("JobID|State|NodeList\n" + rows)
            gone = [f"{job_id}|{ENDED}|" for job_id in waiting if job_id not in listed]
            return "\n".join(["JobID|State|NodeList", *rows.splitlines(), *gone])

    return SqueueFallbackWatcher


class _WaitForAll:
    """The launch of hydra-submitit-launcher, collecting every job's outcome before reporting failures."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import submitit

        assert self.config is not None and len(job_overrides) > 0
        init_keys = {"submitit_folder", "max_num_timeout"}
        init = {"folder": self.params["submitit_folder"]}
        if "max_num_timeout" in self.params:
            init[f"{self._EXECUTOR}_max_num_timeout"] = self.params["max_num_timeout"]
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init)
        generic = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(
            **{
                k if k in generic else f"{self._EXECUTOR}_{k}": v
                for k, v in self.params.items()
                if k not in init_keys
            }
        )
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        log.info(f"Submitit '{self._EXECUTOR}' sweep output dir : {sweep_dir}")
        numbers = [initial_job_idx + i for i in range(len(job_overrides))]
        for num, overrides in zip(numbers, job_overrides, strict=True):
            log.info(f"\t#{num} : {' '.join(filter_overrides(overrides))}")
        state = Singleton.get_state()
        jobs = executor.map_array(
            self,
            [list(o) for o in job_overrides],
            ["hydra.sweep.dir"] * len(numbers),
            numbers,
            [f"job_id_for_{num}" for num in numbers],
            [state] * len(numbers),
        )
        if self._EXECUTOR == "slurm":  # submitit's array jobs are SlurmJobs watched through sacct alone
            watcher = _watcher_class()(delay_s=POLL_S)
            for job in jobs:
                job.watcher = watcher
                watcher.register_job(job.job_id)
        return collect(jobs, numbers)


def collect(jobs: Sequence[Any], numbers: Sequence[int]) -> list[JobReturn]:
    """Every job's JobReturn, waiting for all of them; SweepError naming each failed job and its log."""
    from submitit.core.utils import UncompletedJobError

    returns, failures = [], []
    for num, job in zip(numbers, jobs, strict=True):
        where = f"job #{num} ({job.job_id}); log: {job.paths.stderr}"
        try:
            ret = job.results()[0]
        except UncompletedJobError as error:  # no result: killed, cancelled, out of memory, node failure
            text = str(error)
            state = re.search(r"\(state: ?([A-Z_]+)", text)
            state = state.group(1) if state else "unknown"
            failures.append(
                f"{where}: ended without a result (state {state}; last log line: {_last_line(text)})"
            )
            continue
        except Exception as error:  # noqa: BLE001 - the job's process itself broke (submitit re-raises it)
            failures.append(f"{where}: {_last_line(str(error))}")
            continue
        if ret.status == JobStatus.FAILED:
            failures.append(f"{where}: {type(ret._return_value).__name__}: {ret._return_value}")
        returns.append(ret)
    if failures:
        raise SweepError(f"{len(failures)} of {len(jobs)} sweep jobs failed:\n  " + "\n  ".join(failures))
    return returns


def _last_line(text: str) -> str:
    """The last line of a job's error output that is not srun's own report."""
    lines = [line for line in text.strip().splitlines() if line.strip() and not line.startswith("srun: ")]
    return lines[-1].strip() if lines else "unknown error"


if submitit_launcher is not None:

    class SlurmLauncher(_WaitForAll, submitit_launcher.SlurmLauncher):
        """`hydra/launcher=slurm`."""

    class LocalLauncher(_WaitForAll, submitit_launcher.LocalLauncher):
        """`hydra/launcher=local_submitit`."""

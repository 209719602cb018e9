"""Resumable per-song jobs: the part directory both store builders (preprocess, global vectors) share.

A job writes each finished song to its own file in a part directory (atomic rename: a reader sees the
whole part or none) next to a `job.json` describing what the parts were made from. A later run with the
same description resumes from the parts already there; a different description is refused (naming the keys
that differ) unless the caller asks to overwrite, which discards the parts.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dsaml.config import ConfigError

Failure = Mapping[str, str]  # {"id", "path", "reason"}: one song a run could not use


def changed_keys(now: Mapping[str, Any], before: Mapping[str, Any]) -> list[str]:
    """Keys whose values differ between two job descriptions (present in only one counts), sorted."""
    return sorted(k for k in set(now) | set(before) if now.get(k) != before.get(k))


def open_parts(parts: Path, job: dict[str, Any], overwrite: bool, refusal: str) -> None:
    """Make `parts` ready for `job`: kept when it holds parts of the same job, emptied when `overwrite` (or
    when it has no job.json), refused otherwise with the ConfigError
    "<parts> holds an unfinished run <refusal % changed keys>"."""
    job_file = parts / "job.json"
    if job_file.is_file() and not overwrite:
        previous = json.loads(job_file.read_text())
        if previous != job:
            raise ConfigError(f"{parts} holds an unfinished run {refusal % (changed_keys(job, previous),)}")
        return
    if parts.exists():
        shutil.rmtree(parts)
    parts.mkdir(parents=True)
    job_file.write_text(json.dumps(job, sort_keys=True))


def write_part(path: Path, payload: bytes) -> None:
    """Write one part atomically (a hidden temporary file renamed over `path`)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(payload)
    os.replace(tmp, path)


def failure_lines(failures: list[Failure], heading: str = "failed songs (id, path, reason):") -> list[str]:
    """The end-of-run listing of failed songs: the heading, then one indented line per song."""
    if not failures:
        return []
    return [heading, *(f"  {f['id']}  {f['path']}  {f['reason']}" for f in failures)]

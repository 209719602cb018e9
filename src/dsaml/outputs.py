"""Output safety, one mechanism for every command: a user's file is never replaced by surprise, never by a
run that reads it, and never left half-written.

    path = check_output("out", out, "personalized", inputs={"ckpt": ckpt}, overwrite=overwrite)  # before work
    with atomic_output(path) as tmp:   # write tmp; it replaces `path` only when the block succeeds
        torch.save(obj, tmp)
    record_output(path, "prediction", song="x", checkpoint="m.ckpt")  # for kinds without a marker

An existing output path is taken only when it is the same kind of dsaml output as the one to write (a dsaml
checkpoint written by the same command, a dsaml feature store, or a file the folder's record
`.dsaml-outputs.json` lists under that kind); anything else needs `overwrite=true`. An output that is one of
the command's inputs is always refused.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dsaml.config import ConfigError, check_output_folder

RECORD = ".dsaml-outputs.json"  # per output folder: {file name: {"kind": ..., details}}
DESCRIPTIONS = {
    "personalized": "dsaml-personalize checkpoint",  # hyper_parameters.personalized
    "converted": "dsaml-convert checkpoint",  # hyper_parameters.converted_from
    "store": "dsaml feature store",
    "prediction": "dsaml-predict output",
    "personalize": "dsaml-personalize report or plot",
    "report": "dsaml-report output",
}
CHECKPOINT_MARKERS = {"personalized": "personalized", "converted": "converted_from"}


def check_output(
    key: str,
    path: str | Path,
    kind: str,
    inputs: Mapping[str, str | Path | None] | None = None,
    overwrite: bool = False,
    opt_in: str = "overwrite=true",
) -> Path:
    """Check, before any work and creating nothing, that `path` may be written as a `kind` output
    (DESCRIPTIONS) -> the path. ConfigError naming `key` when it is a folder, one of `inputs` (name -> path),
    in an unwritable folder, or an existing file of another kind without `overwrite` (the message names the
    command's `opt_in` for it)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{key}={str(path)!r} is a folder; expected the file to write")
    for name, given in (inputs or {}).items():
        if given is not None and _same_file(path, Path(given)):
            raise ConfigError(
                f"{key}={str(path)!r} is also the input {name}: writing it would destroy what this run "
                f"reads; choose another {key}"
            )
    check_output_folder(f"{key}'s folder", path.parent)
    if path.exists() and not overwrite and not written_as(path, kind):
        raise ConfigError(
            f"{key}={str(path)!r} exists and is not a {DESCRIPTIONS[kind]}; pass {opt_in} to replace it, "
            f"or choose another {key}"
        )
    return path


def _same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def written_as(path: str | Path, kind: str) -> bool:
    """True when the existing file `path` is a `kind` output of dsaml (by its content for checkpoints and
    stores, by its folder's record for the others)."""
    path = Path(path)
    if kind in CHECKPOINT_MARKERS:
        return CHECKPOINT_MARKERS[kind] in _checkpoint_hyper_parameters(path)
    if kind == "store":
        from dsaml.data.store import completed_job

        return completed_job(path) is not None
    return recorded(path.parent).get(path.name, {}).get("kind") == kind


def _checkpoint_hyper_parameters(path: Path) -> dict[str, Any]:
    """The hyper_parameters of the dsaml checkpoint `path` (read weights-only); empty for any other file."""
    from dsaml.models.checkpoint import read_torch_file

    try:
        obj = read_torch_file(path)
    except (ValueError, OSError):
        return {}
    if not (isinstance(obj, dict) and isinstance(obj.get("dsaml"), dict)):
        return {}
    hparams = obj.get("hyper_parameters")
    return hparams if isinstance(hparams, dict) else {}


def recorded(folder: str | Path) -> dict[str, dict[str, Any]]:
    """The record of `folder` ({file name: {"kind", details}}); empty when it has none or it is unreadable."""
    try:
        record = json.loads((Path(folder) / RECORD).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def record_output(path: str | Path, kind: str, **details: Any) -> None:
    """List the written file `path` as a `kind` output in its folder's record (replaced atomically)."""
    path = Path(path)
    record = recorded(path.parent)
    record[path.name] = {"kind": kind, **details}
    write_text_atomic(path.parent / RECORD, json.dumps(record, indent=1, sort_keys=True))


def forget_output(path: str | Path) -> None:
    """Delete a recorded output file and its entry in the record (a stale output being replaced)."""
    path = Path(path)
    record = recorded(path.parent)
    path.unlink(missing_ok=True)
    if record.pop(path.name, None) is not None:
        write_text_atomic(path.parent / RECORD, json.dumps(record, indent=1, sort_keys=True))


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` (same suffix) to write; it replaces `path` in one rename when the
    block ends without error, and is removed otherwise, so an interrupted run leaves the old file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write `text` to `path` through `atomic_output` -> the path."""
    with atomic_output(path) as tmp:
        tmp.write_text(text)
    return Path(path)

"""How every dsaml command starts and fails: one entry helper for the eight console scripts.

`hydra_command` (the Hydra commands) and `plain_command` (dsaml-convert) turn an *expected* error (bad
configuration, a file that is missing, unreadable, not writable or of the wrong kind, a refused checkpoint,
a damaged store) into one or two lines on stderr and exit code 2. Anything else is a bug and keeps its
traceback (Hydra's short one; `HYDRA_FULL_ERROR=1` shows all of it). Hydra's own override errors are caught
before the job starts and listed with the keys or options that are allowed.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from dsaml.config import CONFIG_DIR, CONFIG_PATH

EXIT_USAGE = 2


def expected_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean bad input or environment (reported in a line or two, exit 2), not a bug."""
    from dsaml.config import ConfigError
    from dsaml.data.audio import AudioDecodeError
    from dsaml.data.catalogue import DataError
    from dsaml.data.store import StoreError
    from dsaml.models.checkpoint import UnsafeCheckpointError

    return (
        ConfigError,
        DataError,
        StoreError,
        UnsafeCheckpointError,
        AudioDecodeError,
        OmegaConfBaseException,  # missing mandatory value (???), bad interpolation, type errors
        OSError,  # missing / unreadable / read-only / existing paths, truncated files
        *_extra_expected(),
    )


def _extra_expected() -> tuple[type[BaseException], ...]:
    """Expected errors of modules with heavy imports (torch, Lightning), only when they are loaded."""
    found: list[type[BaseException]] = []
    for module, name in (
        ("dsaml.predictor", "CheckpointError"),
        ("dsaml.personalize", "AnnotationError"),
        ("dsaml.training.module", "NonFiniteLossError"),
        ("dsaml.training.resume", "RunDirectoryError"),
    ):
        loaded = sys.modules.get(module)
        if loaded is not None and hasattr(loaded, name):
            found.append(getattr(loaded, name))
    return tuple(found)


def check_output_folder(key: str, folder: str | Path) -> Path:
    """Check (before any work, creating nothing) that `folder` is or can become a writable folder:
    ConfigError naming `key` when it is an existing file, lies under a file, or is not writable."""
    from dsaml.config import ConfigError

    path = Path(folder)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "is an existing file" if existing == path else f"lies under the file {existing}"
        raise ConfigError(f"{key}={str(folder)!r} {where}; expected a folder to write into")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}={str(folder)!r}: the folder {existing} is not writable")
    return path


def error_lines(command: str, error: BaseException) -> str:
    """`command: message` with at most two lines of the message (an OSError names its file)."""
    if (
        isinstance(error, OSError)
        and error.filename is not None
        and not str(error).count(str(error.filename))
    ):
        text = f"{error.strerror or error}: {error.filename}"
    else:
        text = str(error).strip() or type(error).__name__
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    return f"{command}: error: " + "\n  ".join(lines[:2])


def report(command: str, error: BaseException) -> int:
    print(error_lines(command, error), file=sys.stderr)
    return EXIT_USAGE


def run_guarded(command: str, body: Callable[[], Any]) -> Any:
    """Run `body`; an expected error is reported and exits with code 2, others propagate."""
    try:
        return body()
    except expected_errors() as error:
        sys.stderr.flush()
        sys.exit(report(command, error))


def plain_command(command: str, body: Callable[[list[str] | None], int]) -> Callable[..., int]:
    """A console-script `main(argv=None) -> exit code` for an argparse `body(argv) -> exit code`."""

    def entry(argv: list[str] | None = None) -> int:
        return run_guarded(command, lambda: body(argv))

    return entry


def check_overrides(
    config_name: str,
    command: str,
    args: Sequence[str],
    before_start: Callable[[DictConfig], None] | None = None,
) -> None:
    """Compose `config_name` with the command line's overrides before Hydra runs the job; a Hydra
    composition error (unknown key, unknown option of a group, bad syntax) exits 2 naming what is allowed.
    `before_start(cfg)` (cfg with its `hydra` node) may refuse the job the same way (an expected error)
    before Hydra writes anything. Skipped for multirun sweeps and Hydra's own flags (--help, --cfg, ...)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    if any(arg.startswith("-") for arg in args):
        return
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
            try:
                cfg = compose(config_name, overrides=list(args), return_hydra_config=before_start is not None)
            except HydraException as error:
                message = _explain_override_error(config_name, list(args), error, compose)
                print(f"{command}: error: {message}", file=sys.stderr)
                sys.exit(EXIT_USAGE)
            if before_start is not None:
                run_guarded(command, lambda: before_start(cfg))
    finally:
        GlobalHydra.instance().clear()


def _explain_override_error(
    config_name: str, args: list[str], error: BaseException, compose: Callable[..., DictConfig]
) -> str:
    """Hydra's message in one or two lines, with the allowed keys where it could not override one."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    first = lines[0] if lines else type(error).__name__
    if first.startswith("Could not override '"):
        key = first.split("'")[1]
        parent, _, _ = key.rpartition(".")
        rest = [a for a in args if a.split("=", 1)[0].lstrip("+~") != key]
        try:
            node = compose(config_name, overrides=rest, return_hydra_config=parent.startswith("hydra"))
            node = OmegaConf.select(node, parent) if parent else node
        except Exception:  # the other overrides fail too: Hydra's message alone
            node = None
        if isinstance(node, DictConfig):
            where = f"keys of '{parent}'" if parent else "top-level keys"
            return (
                f"{first} {where}: {', '.join(sorted(map(str, node.keys())))} (add a new one with +{key}=...)"
            )
        return f"{first} (add a new key with +{key}=...)"
    if "Available options in" in str(error):
        after = str(error).split("Available options in", 1)[1].split("Config search path", 1)[0]
        available = [line.strip() for line in after.splitlines()[1:] if line.strip()]
        return f"{first}; available: {', '.join(available)}"
    return " ".join(lines[:2])


def hydra_command(
    config_name: str,
    run: Callable[[DictConfig], Any],
    quiet: Sequence[str] = (),
    returns_value: bool = False,
    before_start: Callable[[DictConfig], None] | None = None,
) -> Callable[[], Any]:
    """A console-script `main` for `run(cfg)`, named dsaml-<config_name> in its messages.

    `run` returns an exit code (0 or None: success), or with `returns_value` a value handed back to Hydra
    (what sweepers optimise). `quiet`: loggers that show errors only (the command summarises them).
    `before_start`: see `check_overrides`."""
    command = f"dsaml-{config_name}"

    def task(cfg: DictConfig) -> Any:
        for name in quiet:
            logging.getLogger(name).setLevel(logging.ERROR)
        result = run_guarded(command, lambda: run(cfg))
        if returns_value:
            return result
        if result:
            sys.exit(result)
        return None

    task.__module__ = run.__module__  # Hydra names the job (and its log file) after this module
    hydra_main = hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name=config_name)(task)

    def main() -> Any:
        if "HYDRA_FULL_ERROR" not in os.environ:
            check_overrides(config_name, command, sys.argv[1:], before_start)
        return hydra_main()

    main.__doc__ = run.__doc__
    return main

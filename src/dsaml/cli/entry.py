"""How every dsaml command starts and fails: one entry helper for the eight console scripts.

`hydra_command` (the Hydra commands) and `plain_command` (dsaml-convert) turn an *expected* error (bad
configuration, a file that is missing, unreadable, not writable or of the wrong kind, a refused checkpoint,
a damaged store) into one or two lines on stderr and exit code 2 (`dsaml.cli.errors`). Anything else is a
bug and keeps its traceback (Hydra's short one; `HYDRA_FULL_ERROR=1` shows all of it). Hydra's own override
errors are caught before the job starts and listed with the keys or options that are allowed
(`dsaml.cli.overrides`).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import hydra
from omegaconf import DictConfig

from dsaml.cli.errors import run_guarded
from dsaml.cli.overrides import check_overrides, check_sweep
from dsaml.config import CONFIG_PATH


def plain_command(command: str, body: Callable[[list[str] | None], int]) -> Callable[..., int]:
    """A console-script `main(argv=None) -> exit code` for an argparse `body(argv) -> exit code`."""

    def entry(argv: list[str] | None = None) -> int:
        return run_guarded(command, lambda: body(argv))

    return entry


def hydra_command(
    config_name: str,
    run: Callable[[DictConfig], Any],
    quiet: Sequence[str] = (),
    returns_value: bool = False,
    before_start: Callable[[DictConfig], None] | None = None,
    validate_job: Callable[[DictConfig], Any] | None = None,
) -> Callable[[], Any]:
    """A console-script `main` for `run(cfg)`, named dsaml-<config_name> in its messages.

    `run` returns an exit code (0 or None: success), or with `returns_value` a value handed back to Hydra
    (what sweepers optimise). `quiet`: loggers that show errors only (the command summarises them).
    `before_start`: see `check_overrides`. `validate_job(cfg)`: the command's config check, run on every job
    of a multirun sweep before the first starts (`check_sweep`)."""
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
            check_sweep(config_name, command, sys.argv[1:], validate_job)
        return hydra_main()

    main.__doc__ = run.__doc__
    return main

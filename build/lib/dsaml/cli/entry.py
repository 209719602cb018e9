"""How dsaml's Hydra commands start: compose conf/<name>.yaml, run, exit with the run's code."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence

import hydra
from omegaconf import DictConfig

from dsaml.config import CONFIG_PATH


def hydra_command(
    config_name: str, run: Callable[[DictConfig], int | None], quiet: Sequence[str] = ()
) -> Callable[[], None]:
    """A console-script `main` for `run(cfg) -> exit code` (0 or None: success).

    `quiet`: loggers that show errors only (their messages are summarised by the command itself)."""

    def task(cfg: DictConfig) -> None:
        for name in quiet:
            logging.getLogger(name).setLevel(logging.ERROR)
        code = run(cfg)
        if code:
            sys.exit(code)

    task.__module__ = run.__module__  # Hydra names the job (and its log file) after this module
    return hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name=config_name)(task)

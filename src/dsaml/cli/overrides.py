"""Hydra's override errors and values of the wrong type caught before a job starts (nothing created yet): one
line naming the keys or options allowed, exit 2."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dsaml.cli.errors import EXIT_USAGE, error_lines, expected_errors, run_guarded
from dsaml.config import CONFIG_DIR, ConfigError


def check_overrides(
    config_name: str,
    command: str,
    args: Sequence[str],
    before_start: Callable[[DictConfig], None] | None = None,
) -> None:
    """Compose `config_name` with the command line's overrides before Hydra runs the job; a Hydra
    composition error (unknown key, unknown option of a group, bad syntax) exits 2 naming what is allowed.
    A value of the wrong type for its key (`check_value_types`) is refused the same way. `before_start(cfg)`
    (cfg with its `hydra` node) may refuse the job the same way (an expected error) before Hydra writes
    anything. Skipped for multirun sweeps and Hydra's own flags (--help, --cfg, ...)."""
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
            run_guarded(command, lambda: check_value_types(config_name, list(args), compose))
            if before_start is not None:
                run_guarded(command, lambda: before_start(cfg))
    finally:
        GlobalHydra.instance().clear()


TEXT_ALLOWED = ("trainer.devices",)  # numeric defaults that also take words (devices=auto)


MULTIRUN_FLAGS = ("-m", "--multirun")


def check_sweep(
    config_name: str,
    command: str,
    args: Sequence[str],
    validate: Callable[[DictConfig], Any] | None = None,
) -> None:
    """Before a multirun (`-m`) starts its first job: compose every job of the command-line sweep
    (task.lr=0.001,-1,0.002 -> 3 jobs) and check its value types and `validate(cfg)`; any invalid job ends
    the command (exit 2) naming the job and the other invalid ones, so no job runs. Other sweepers
    (hydra/sweeper=optuna, hparams_search=) choose their jobs while running, and launchers (hydra/launcher=:
    submitit, Slurm) report every failed job with its log; both are left to the jobs' own checks."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    if not any(arg in MULTIRUN_FLAGS for arg in args):
        return
    rest = [arg for arg in args if not arg.startswith("-")]
    if len(rest) < len(args) - 1 or any(
        (a.startswith("hydra/sweeper=") and a != "hydra/sweeper=basic")
        or a.startswith(("hparams_search=", "hydra/launcher="))
        for a in rest
    ):
        return  # other Hydra flags (--cfg, -c, ...), another sweeper, or a launcher that reports its jobs
    try:
        parsed = OverridesParser.create().parse_overrides(rest)
        jobs = BasicSweeper.split_arguments(parsed, None)[0]
    except HydraException:
        return  # Hydra reports its own syntax errors
    swept_keys = {o.get_key_element() for o in parsed if o.is_sweep_override()}
    failures: list[str] = []
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
            for number, job in enumerate(jobs):
                swept = " ".join(a for a in job if a.partition("=")[0] in swept_keys)
                try:
                    check_value_types(config_name, job, compose)
                    if validate is not None:
                        validate(compose(config_name, overrides=job))
                except (HydraException, *expected_errors()) as error:
                    message = error_lines("", error).split(": error: ", 1)[1].replace("\n  ", " ")
                    failures.append(f"job #{number} ({swept or 'no swept values'}): {message}")
    finally:
        GlobalHydra.instance().clear()
    if failures:
        others = f"; invalid too: {', '.join(f.split(' (')[0] for f in failures[1:])}" if failures[1:] else ""
        print(f"{command}: error: {failures[0]}", file=sys.stderr)
        print(f"  no job was started ({len(jobs)} jobs checked{others})", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def check_value_types(config_name: str, args: list[str], compose: Callable[..., DictConfig]) -> None:
    """ConfigError naming the key when a command-line value does not have its default's type: a number
    where the default is a number (trainer.max_epochs=abc, seed=abc), true/false where it is a flag. Nulls,
    strings, lists and config group choices are left to the commands' own checks."""
    composed = compose(config_name, overrides=args, return_hydra_config=True)
    given: dict[str, Any] = {}
    for arg in args:
        key, sep, _ = arg.partition("=")
        key = key.lstrip("+~")
        if sep and "/" not in key and not key.startswith("hydra."):
            value = OmegaConf.select(composed, key, throw_on_resolution_failure=False)
            if not OmegaConf.is_config(value):
                given[key] = value
    if not given:
        return
    rest = [a for a in args if a.partition("=")[0].lstrip("+~") not in given]
    defaults = compose(config_name, overrides=rest, return_hydra_config=True)
    for key, value in given.items():
        default = OmegaConf.select(defaults, key, default=None, throw_on_resolution_failure=False)
        if value is None or default is None or key in TEXT_ALLOWED:
            continue
        if isinstance(default, bool) and not isinstance(value, bool):
            raise ConfigError(f"{key}={value!r}: expected true or false (default {default})")
        if isinstance(default, int | float) and not isinstance(default, bool):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{key}={value!r}: expected a number (default {default})")


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
    if "missing EQUAL" in str(error) and first.startswith("Error parsing override '"):
        bad = first.split("'")[1]
        before = args[args.index(bad) - 1] if bad in args and args.index(bad) > 0 else None
        if before is not None and "=" in before:  # `out=my folder`: the shell split a value at a space
            return f"{first}: no '=': quote a value with spaces, the whole override: \"{before} {bad}\""
        return f"{first}: no '=': expected key=value"
    if "Available options in" in str(error):
        after = str(error).split("Available options in", 1)[1].split("Config search path", 1)[0]
        available = [line.strip() for line in after.splitlines()[1:] if line.strip()]
        return f"{first}; available: {', '.join(available)}"
    return " ".join(lines[:2])

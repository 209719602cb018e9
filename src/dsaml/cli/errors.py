"""How an expected error ends a dsaml command: one or two lines on stderr and exit code 2.

Expected errors are bad configuration, a file that is missing, unreadable, not writable or of the wrong kind,
a refused checkpoint, a damaged store; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from omegaconf.errors import OmegaConfBaseException

EXIT_USAGE = 2


def expected_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean bad input or environment (reported in a line or two, exit 2), not a bug."""
    from dsaml.config import ConfigError
    from dsaml.data.audio import AudioDecodeError
    from dsaml.data.catalogue import DataError
    from dsaml.data.store import StoreError
    from dsaml.models.checkpoint import CheckpointError

    return (
        ConfigError,
        DataError,
        StoreError,
        CheckpointError,  # and UnsafeCheckpointError
        AudioDecodeError,
        OmegaConfBaseException,  # missing mandatory value (???), bad interpolation, type errors
        OSError,  # missing / unreadable / read-only / existing paths, truncated files
        *_extra_expected(),
    )


def _extra_expected() -> tuple[type[BaseException], ...]:
    """Expected errors of modules with heavy imports (torch, Lightning), only when they are loaded."""
    found: list[type[BaseException]] = []
    for module, name in (
        ("dsaml.personalize", "AnnotationError"),
        ("dsaml.training.module", "NonFiniteLossError"),
        ("dsaml.training.resume", "RunDirectoryError"),
    ):
        loaded = sys.modules.get(module)
        if loaded is not None and hasattr(loaded, name):
            found.append(getattr(loaded, name))
    return tuple(found)


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

"""Former home of config validation; the mechanism is `dsaml.config` (docs/configuration.md).

Kept so that `from dsaml.data.validation import ConfigError` (the command modules) keeps working; new code
imports from `dsaml.config`.
"""

from __future__ import annotations

from typing import Any

from dsaml.config import ConfigError, check_choice, check_range, from_mapping

__all__ = ["ConfigError", "check_choice", "check_positive", "from_mapping"]


def check_positive(where: str, value: Any, *, integer: bool = False, allow_zero: bool = False) -> None:
    """`value` > 0 (>= 0 with allow_zero), an integer when `integer`: `dsaml.config.check_range`."""
    check_range(where, value, integer=integer, low=0, low_open=not allow_zero)

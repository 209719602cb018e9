"""Config validation for the data area: mappings -> frozen dataclasses, failing early with allowed values."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration key or value is not allowed; the message names the key and the allowed values."""


def from_mapping(cls: type[T], mapping: Mapping[str, Any] | None, where: str) -> T:
    """Build dataclass `cls` from `mapping`, rejecting unknown keys (named with the allowed ones)."""
    mapping = dict(mapping or {})
    allowed = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(mapping) - set(allowed))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed keys: {allowed}")
    return cls(**mapping)


def check_choice(where: str, value: Any, allowed: Iterable[Any]) -> None:
    allowed = list(allowed)
    if value not in allowed:
        raise ConfigError(f"{where}={value!r} is not allowed; allowed values: {allowed}")


def check_positive(where: str, value: Any, *, integer: bool = False, allow_zero: bool = False) -> None:
    kind = int if integer else (int, float)
    ok = isinstance(value, kind) and not isinstance(value, bool)
    if ok:
        ok = value >= 0 if allow_zero else value > 0
    if not ok:
        what = "integer" if integer else "number"
        raise ConfigError(
            f"{where}={value!r}: expected a {'non-negative' if allow_zero else 'positive'} {what}"
        )

"""Configuration: where the Hydra tree lives, and the one way configs are validated (docs/configuration.md).

`CONFIG_DIR`: the repository's top-level `conf/` (`DSAML_CONFIG_DIR` overrides it, for installs outside a
checkout).

Every config group is a dataclass deriving from `Config`. A field's checks are declared with the field,
as metadata, so that `__post_init__` keeps only the rules that relate several fields:

    @dataclass
    class DemoConfig(Config):
        SECTION = "demo"                           # prefix of the keys in error messages ("" = none)
        device: str = choice("cpu", ("cpu", "gpu"))
        epochs: int = integer(10, low=1)           # integer(None, low=0, optional=True): null allowed
        lr: float = number(5e-3, low=0, low_open=True)
        plot: bool = flag(True)                    # flag(None, optional=True): true, false or null
        name: str = text()                         # required: no default, must be a non-empty string
        methods: tuple = choice_list((), ("a", "b"))  # a list of choices; integer_list(None, low=1, ...)
        ckpt: str = existing_file()                # an existing file; existing_folder(), folder_list()
        data: Any = group()                        # a command's config group, checked by its own class

        def __post_init__(self) -> None:
            super().__post_init__()                # the field checks above
            ...                                    # cross-field rules only; raise ConfigError

    DemoConfig.from_mapping(cfg.demo)              # a dict or an OmegaConf node

`from_mapping` rejects unknown keys and missing required keys, naming the allowed ones; every failure is a
`ConfigError` (a ValueError) whose message names the key, the value and what is allowed, so a command can
print it and exit with code 2 before any work starts.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

C = TypeVar("C", bound="Config")


def _find_config_dir() -> Path:
    override = os.environ.get("DSAML_CONFIG_DIR")
    candidate = Path(override) if override else Path(__file__).resolve().parents[2] / "conf"
    if not candidate.is_dir():
        raise FileNotFoundError(
            f"dsaml config directory not found at {candidate}; set DSAML_CONFIG_DIR to the repository's conf/"
        )
    return candidate


CONFIG_DIR: Path = _find_config_dir()
CONFIG_PATH: str = str(CONFIG_DIR)  # for @hydra.main(config_path=...)


class ConfigError(ValueError):
    """A configuration key or value is not allowed; the message names the key and the allowed values."""


GPU_ACCELERATORS = ("gpu", "cuda")


def gpus_per_node(accelerator: str, devices: Any) -> int:
    """GPUs a cluster job asks for per node (the `${dsaml.gpus_per_node:...}` resolver of the launcher
    presets): `trainer.devices` for a GPU accelerator, 0 for any other (cpu: the job needs no GPU)."""
    if str(accelerator) not in GPU_ACCELERATORS:
        return 0
    if isinstance(devices, int) and devices >= 1:
        return devices
    raise ConfigError(
        f"trainer.devices={devices!r}: a cluster job on accelerator={accelerator} needs a number of GPUs >= 1"
    )


def optuna_direction(monitor_mode: str) -> str:
    """The Optuna study direction (the `${dsaml.optuna_direction:...}` resolver) of `task.monitor_mode`."""
    directions = {"max": "maximize", "min": "minimize"}
    if monitor_mode not in directions:
        raise ConfigError(f"task.monitor_mode={monitor_mode!r} is not one of {sorted(directions)}")
    return directions[monitor_mode]


def _register_resolvers() -> None:
    from omegaconf import OmegaConf

    resolvers = {"dsaml.gpus_per_node": gpus_per_node, "dsaml.optuna_direction": optuna_direction}
    for name, resolver in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)


_register_resolvers()


# ----------------------------------------------------------------------------- single-value checks
def check_keys(label: str, keys: Iterable[str], allowed: Iterable[str]) -> None:
    """No key outside `allowed` (e.g. a command's top-level keys); the message lists the allowed ones."""
    allowed = list(allowed)
    unknown = sorted(set(keys) - set(allowed))
    if unknown:
        raise ConfigError(f"{label}: unknown key(s) {unknown}; allowed keys: {allowed}")


def check_choice(key: str, value: Any, allowed: Iterable[Any]) -> None:
    """`value` must be one of `allowed`."""
    allowed = list(allowed)
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not one of {', '.join(map(str, allowed))}")


def check_flag(key: str, value: Any) -> None:
    """`value` must be a bool."""
    if not isinstance(value, bool):
        raise ConfigError(f"{key}={value!r}: expected true or false")


def check_range(
    key: str,
    value: Any,
    *,
    integer: bool = False,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    optional: bool = False,
) -> None:
    """`value` must be an integer (or any real number) within [low, high] (bounds open on request);
    None only when `optional`."""
    if value is None and optional:
        return
    ok = isinstance(value, int if integer else (int, float)) and not isinstance(value, bool)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        raise ConfigError(
            f"{key}={value!r}: expected {_describe_range(integer, low, high, low_open, high_open)}"
            + (" or null" if optional else "")
        )


def check_output_folder(key: str, folder: str | Path) -> Path:
    """Check (before any work, creating nothing) that `folder` is or can become a writable folder:
    ConfigError naming `key` when it is an existing file, lies under a file, or is not writable."""
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


def _describe_range(integer: bool, low: Any, high: Any, low_open: bool, high_open: bool) -> str:
    what = "an integer" if integer else "a number"
    if low == 0 and high is None:
        return f"a {'positive' if low_open else 'non-negative'} {what.split()[-1]}"
    if low is not None and high is not None:
        if integer and not (low_open or high_open):
            return f"{what} in {low}..{high}"
        return f"{what} in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f"{what} {'>' if low_open else '>='} {low}"
    if high is not None:
        return f"{what} {'<' if high_open else '<='} {high}"
    return what


# ----------------------------------------------------------------------------- field declarations
PATHS = ("file", "folder")  # path kinds: the path must exist


@dataclass(frozen=True)
class FieldCheck:
    """What a field's value must be; stored in the field's metadata under "check"."""

    kind: str  # "choice" | "flag" | "text" | "file" | "folder" | "integer" | "number" | "group",
    # or "<kind>_pair" / "<kind>_list"
    choices: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    optional: bool = False
    min_items: int = 0  # lists: the fewest entries allowed

    def __call__(self, key: str, value: Any) -> None:
        if (
            value is None
            and self.optional
            and (self.kind in PATHS + ("flag",) or self.kind.endswith("_list"))
        ):
            return
        if self.kind == "group":  # checked by its own class
            return
        if self.kind == "choice":
            check_choice(key, value, self.choices)
        elif self.kind == "flag":
            if not isinstance(value, bool):
                allowed = "true, false or null" if self.optional else "true or false"
                raise ConfigError(f"{key}={value!r}: expected {allowed}")
        elif self.kind == "text":
            if not (value is None and self.optional) and not (isinstance(value, str) and value):
                raise ConfigError(f"{key}={value!r}: expected a non-empty string")
        elif self.kind == "file":
            if not (isinstance(value, str) and value and Path(value).is_file()):
                raise ConfigError(f"{key}={value!r}: no such file")
        elif self.kind == "folder":
            if not (isinstance(value, str) and value and Path(value).is_dir()):
                raise ConfigError(f"{key}={value!r} is not a folder")
        elif self.kind.endswith("_list"):
            item = dataclasses.replace(self, kind=self.kind[: -len("_list")], optional=False, min_items=0)
            if not (isinstance(value, (list, tuple)) and len(value) >= self.min_items):
                raise ConfigError(f"{key}={value!r}: expected {self._describe_list(item)}")
            for i, entry in enumerate(value):
                item(f"{key}[{i}]", entry)
        elif self.kind.endswith("_pair"):
            if not (isinstance(value, (list, tuple)) and len(value) == 2):
                raise ConfigError(f"{key}={value!r}: expected [min, max]")
            for i, item in enumerate(value):
                FieldCheck(self.kind[: -len("_pair")], low=self.low, high=self.high)(f"{key}[{i}]", item)
        else:
            check_range(
                key,
                value,
                integer=self.kind == "integer",
                low=self.low,
                high=self.high,
                low_open=self.low_open,
                high_open=self.high_open,
                optional=self.optional,
            )

    def _describe_list(self, item: FieldCheck) -> str:
        if item.kind == "choice":
            entries = f"entries among {', '.join(map(str, item.choices))}"
        elif item.kind in PATHS:
            entries = f"existing {item.kind}s"
        else:
            entries = (
                f"entries each {_describe_range(item.kind == 'integer', item.low, item.high, False, False)}"
            )
        size = f"at least {self.min_items} " if self.min_items else ""
        return ("null or " if self.optional else "") + f"a list of {size}{entries}"


def _field(default: Any, check: FieldCheck) -> Any:
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"check": check})
    return dataclasses.field(default=default, metadata={"check": check})


def choice(default: Any = dataclasses.MISSING, choices: Iterable[Any] = ()) -> Any:
    """A field whose value is one of `choices`."""
    return _field(default, FieldCheck("choice", choices=tuple(choices)))


def flag(default: Any = dataclasses.MISSING, *, optional: bool = False) -> Any:
    """A true/false field (None allowed when `optional`)."""
    return _field(default, FieldCheck("flag", optional=optional))


def existing_file(default: Any = dataclasses.MISSING, *, optional: bool = False) -> Any:
    """The path of a file that exists (None allowed when `optional`)."""
    return _field(default, FieldCheck("file", optional=optional))


def existing_folder(default: Any = dataclasses.MISSING, *, optional: bool = False) -> Any:
    """The path of a folder that exists (None allowed when `optional`)."""
    return _field(default, FieldCheck("folder", optional=optional))


def folder_list(default: Any = dataclasses.MISSING, *, min_items: int = 0) -> Any:
    """A list of at least `min_items` existing folders."""
    return _field(default, FieldCheck("folder_list", min_items=min_items))


def group(default: Any = None) -> Any:
    """A config group (a mapping) of a command's top-level config, checked by its own `Config` class;
    declared so that the command's allowed keys are its fields (`Config.check_top_level`)."""
    return _field(default, FieldCheck("group"))


def choice_list(
    default: Any = dataclasses.MISSING, choices: Iterable[Any] = (), *, optional: bool = False
) -> Any:
    """A list whose entries are each one of `choices` (None allowed when `optional`)."""
    return _field(default, FieldCheck("choice_list", choices=tuple(choices), optional=optional))


def integer_list(
    default: Any = dataclasses.MISSING, *, low: int | None = None, optional: bool = False, min_items: int = 0
) -> Any:
    """A list of at least `min_items` integers, each >= low (None allowed when `optional`)."""
    return _field(default, FieldCheck("integer_list", low=low, optional=optional, min_items=min_items))


def text(default: Any = dataclasses.MISSING, *, optional: bool = False) -> Any:
    """A non-empty string field (None allowed when `optional`)."""
    return _field(default, FieldCheck("text", optional=optional))


def integer(
    default: Any = dataclasses.MISSING,
    *,
    low: int | None = None,
    high: int | None = None,
    low_open: bool = False,
    optional: bool = False,
) -> Any:
    """An integer field in [low, high] (> low when `low_open`; None allowed when `optional`)."""
    return _field(default, FieldCheck("integer", low=low, high=high, low_open=low_open, optional=optional))


def number(
    default: Any = dataclasses.MISSING,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    optional: bool = False,
) -> Any:
    """A real-number field within the bounds (open on request; None allowed when `optional`)."""
    return _field(
        default,
        FieldCheck("number", low=low, high=high, low_open=low_open, high_open=high_open, optional=optional),
    )


def integer_pair(default: Any = dataclasses.MISSING, *, low: int | None = None) -> Any:
    """A [min, max] field of two integers >= low (their order is a cross-field rule)."""
    return _field(default, FieldCheck("integer_pair", low=low))


def number_pair(default: Any = dataclasses.MISSING, *, low: float | None = None) -> Any:
    """A [min, max] field of two numbers >= low (their order is a cross-field rule)."""
    return _field(default, FieldCheck("number_pair", low=low))


# ----------------------------------------------------------------------------- the base class
def _key(section: str, name: str) -> str:
    return f"{section}.{name}" if section else name


class Config:
    """Base of every validated config dataclass: field checks from metadata, `from_mapping`, `to_dict`."""

    SECTION: ClassVar[str] = ""  # the config group's path, prefixed to keys in messages

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            check = f.metadata.get("check")
            if check is not None:
                check(_key(self.SECTION, f.name), getattr(self, f.name))

    @classmethod
    def from_mapping(cls: type[C], mapping: Mapping[str, Any] | None, where: str | None = None) -> C:
        """Build from a dict or an OmegaConf node, rejecting unknown and missing keys by name.
        `where` names the mapping in messages (default: SECTION)."""
        return from_mapping(cls, mapping, cls.SECTION if where is None else where)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def allowed_keys(cls) -> list[str]:
        """The keys a mapping may hold: the field names."""
        return [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]

    @classmethod
    def check_top_level(cls, cfg: Any, label: str) -> None:
        """A command's composed top-level config (an OmegaConf node) against this class: no key but its
        fields, each key that is not a `group` checked by its declaration (the groups have their own
        classes). ConfigError naming the key, else nothing."""
        from omegaconf import OmegaConf

        check_keys(label, cfg.keys(), cls.allowed_keys())
        fields = dataclasses.fields(cls)  # type: ignore[arg-type]
        groups = {f.name for f in fields if f.metadata.get("check", FieldCheck("")).kind == "group"}
        values = {key: cfg[key] for key in cfg.keys() if key not in groups}
        plain = {
            k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
            for k, v in values.items()
        }
        cls.from_mapping(plain, label)


def from_mapping(cls: type[C], mapping: Mapping[str, Any] | None, where: str) -> C:
    """`cls(**mapping)` for a dataclass `cls`, after rejecting unknown keys (with the allowed ones) and
    missing required keys. OmegaConf nodes are resolved to plain containers first."""
    if mapping is not None and type(mapping).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        mapping = OmegaConf.to_container(mapping, resolve=True)  # type: ignore[assignment]
    values = dict(mapping or {})
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    allowed = [f.name for f in fields]
    label = where or cls.__name__
    check_keys(label, values, allowed)
    missing = [
        f.name
        for f in fields
        if f.name not in values
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{label}: missing key(s) {missing}")
    return cls(**values)

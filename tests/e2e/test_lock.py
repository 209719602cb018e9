"""requirements/lock.txt agrees with pyproject.toml and with the venv that `make install` built from it.

The lock pins every package of the venv (transitive ones and the build tools included) to one exact
version; `make lock` refreshes it on purpose. These checks fail when the two drift apart: a dependency
added to pyproject.toml but not locked, a lock entry outside its pyproject range, a package left in the
lock that nothing requires any more, or a venv that holds something other than the lock.
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements" / "lock.txt"
# What the venv holds besides dsaml's requirements: the installer and what builds learn2learn and dsaml.
BUILD_TOOLS = {"pip", "setuptools", "wheel", "cython"}


def read_lock(path: Path = LOCK) -> dict[str, str]:
    """{canonical name: version} of every `name==version` line; anything else but comments is an error."""
    pins: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep and version and not any(c in version for c in "<>=!~*,; "), (
            f"{path.name}:{number}: '{line}' is not an exact 'name==version' pin"
        )
        pins[canonicalize_name(name)] = version
    return pins


def project_requirements() -> list[Requirement]:
    """dsaml's dependencies and every extra's, as declared in pyproject.toml."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        declared.extend(extra)
    return [Requirement(text) for text in declared]


def closure(roots: list[Requirement]) -> set[str]:
    """Canonical names of the roots and everything they require, transitively, in this environment."""
    seen: set[tuple[str, str]] = set()
    names: set[str] = set()
    todo = [(req, "") for req in roots]
    while todo:
        req, extra = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": extra}):
            continue
        name = canonicalize_name(req.name)
        for wanted in [""] + sorted(req.extras):
            if (name, wanted) in seen:
                continue
            seen.add((name, wanted))
            names.add(name)
            for child in metadata.distribution(name).requires or []:
                todo.append((Requirement(child), wanted))
    return names


def test_lock_pins_are_exact_and_unique():
    lines = [ln for ln in LOCK.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert len(read_lock()) == len(lines), "a package is pinned twice in requirements/lock.txt"


def test_every_pyproject_dependency_is_locked_inside_its_range():
    pins = read_lock()
    for req in project_requirements():
        name = canonicalize_name(req.name)
        assert name in pins, f"pyproject.toml requires '{req}' but requirements/lock.txt has no {name}"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"requirements/lock.txt pins {name}=={pins[name]}, outside pyproject.toml's '{req}'"
        )


def _installed() -> dict[str, str]:
    return {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions()}


@pytest.mark.skipif(sys.prefix == sys.base_prefix, reason="not running in dsaml's venv (make install)")
def test_venv_holds_exactly_the_lock():
    installed = _installed()
    installed.pop("dsaml", None)
    pins = read_lock()
    assert installed == pins, {
        "installed, not locked": sorted(set(installed) - set(pins)),
        "locked, not installed": sorted(set(pins) - set(installed)),
        "other version": {n: (v, pins[n]) for n, v in installed.items() if n in pins and v != pins[n]},
    }


@pytest.mark.skipif(sys.prefix == sys.base_prefix, reason="not running in dsaml's venv (make install)")
def test_lock_holds_nothing_that_pyproject_does_not_require():
    required = closure(project_requirements()) | BUILD_TOOLS
    pins = read_lock()
    unused = sorted(set(pins) - required)
    assert not unused, f"locked but required by nothing in pyproject.toml: {unused}"
    assert not required - set(pins), f"required but not locked: {sorted(required - set(pins))}"

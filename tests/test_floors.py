"""The declared minimum versions (pyproject.toml's `>=` floors) and scripts/floors.txt, the
constraints file with which scripts/test-floors installs exactly those floors and runs the suite,
must agree: a floor raised in one and not the other is a floor nobody tests (issue 13, item 7)."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest depends on tomli before 3.11
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
PIN = re.compile(r"(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[0-9][0-9A-Za-z.+!-]*)")


def floors_txt(text: str) -> dict[str, str]:
    """scripts/floors.txt as {canonical name: pinned version}; every line a pin or a comment."""
    pins: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = PIN.fullmatch(line)
        assert match, f"scripts/floors.txt:{number}: not a name==version pin: {raw!r}"
        name = canonicalize_name(match["name"])
        assert name not in pins, f"scripts/floors.txt:{number}: {name} pinned twice"
        pins[name] = match["version"]
    return pins


def declared_floors(requirements: list[str]) -> dict[str, tuple[Requirement, str]]:
    """{canonical name: (requirement, its `>=` version)} for the requirements that have a floor."""
    floors: dict[str, tuple[Requirement, str]] = {}
    for text in requirements:
        requirement = Requirement(text)
        lower = [spec.version for spec in requirement.specifier if spec.operator == ">="]
        assert len(lower) <= 1, f"{text!r}: more than one >= floor"
        if lower:
            floors[canonicalize_name(requirement.name)] = (requirement, lower[0])
    return floors


def load() -> tuple[dict[str, str], dict[str, list[str]]]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins = floors_txt((ROOT / "scripts" / "floors.txt").read_text())
    project = pyproject["project"]
    groups = {"dependencies": project["dependencies"], **project["optional-dependencies"]}
    return pins, groups


def test_every_floor_of_the_dependencies_and_the_test_extra_is_pinned_equal() -> None:
    pins, groups = load()
    tested = {
        **declared_floors(groups["dependencies"]),
        **declared_floors(groups["test"]),
    }
    assert {"trio", "httpx", "botocore", "pytest", "moto"} <= tested.keys()
    for name, (requirement, floor) in tested.items():
        assert name in pins, f"{requirement} has a floor that scripts/floors.txt does not pin"
        assert Version(pins[name]) == Version(floor), (
            f"pyproject.toml says {requirement}, scripts/floors.txt pins {name}=={pins[name]}"
        )
        # The pin must satisfy the whole specifier (a `!=` or `<` next to the floor).
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"{name}=={pins[name]} does not satisfy {requirement}"
        )
    # Nothing pinned that is not a floor: a stale pin would hold a package below what pip picks.
    assert pins.keys() <= tested.keys(), (
        f"pinned without a floor in pyproject.toml: {sorted(pins.keys() - tested.keys())}"
    )


def test_the_other_extras_floors_of_a_pinned_package_are_the_same() -> None:
    """moto (demo) and prometheus-client (prometheus): one floor per package, the tested one."""
    pins, groups = load()
    checked = 0
    for group, requirements in groups.items():
        for name, (requirement, floor) in declared_floors(requirements).items():
            if name in pins:
                checked += 1
                assert Version(floor) == Version(pins[name]), (
                    f"[{group}] says {requirement}, scripts/floors.txt pins {name}=={pins[name]}"
                )
    assert checked > len(pins)  # the demo and prometheus extras were among them


def test_floors_txt_parses_strictly() -> None:
    assert floors_txt("# c\n\nfoo_Bar==1.2.0  # why\n") == {"foo-bar": "1.2.0"}
    for bad in ("foo>=1", "foo==1\nfoo==2", "foo"):
        with pytest.raises(AssertionError):
            floors_txt(bad)


def test_the_floors_script_is_executable_and_strict() -> None:
    script = ROOT / "scripts" / "test-floors"
    assert os.access(script, os.X_OK)
    text = script.read_text()
    assert "set -euo pipefail" in text
    assert "scripts/floors.txt" in text

"""The declared minimum versions (pyproject.toml's `>=` floors) and scripts/floors.txt, the
constraints file with which scripts/test-floors installs exactly those floors and runs the suite,
must agree: a floor raised in one and not the other is a floor nobody tests (issue 13, item 7).
And every package trio_sqs imports is declared, so that it has a floor at all."""

from __future__ import annotations

import ast
import os
import re
import sys
from collections.abc import Iterator
from importlib.metadata import packages_distributions
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
PACKAGE = ROOT / "trio_sqs"
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
    assert {"trio", "httpx", "httpcore", "h11", "botocore", "pytest", "moto"} <= tested.keys()
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


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    caught = handler.type
    names = caught.elts if isinstance(caught, ast.Tuple) else [caught]
    return any(
        isinstance(name, ast.Name) and name.id in ("ImportError", "ModuleNotFoundError")
        for name in names
    )


def _guard_mentions(test: ast.expr, name: str) -> bool:
    return any(
        (isinstance(node, ast.Name) and node.id == name)
        or (isinstance(node, ast.Attribute) and node.attr == name)
        for node in ast.walk(test)
    )


def imported_modules(source: str) -> Iterator[tuple[str, bool]]:
    """(top-level module, required) for each absolute import in ``source``. Required: run when
    the module is imported, unconditionally (not inside a function, nor in a ``try`` that catches
    ImportError). Left out: imports only for type checkers or only on some Pythons (under
    ``if TYPE_CHECKING`` or ``if sys.version_info ...``)."""

    def visit(nodes: list[ast.stmt], required: bool) -> Iterator[tuple[str, bool]]:
        for node in nodes:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield alias.name.partition(".")[0], required
            elif isinstance(node, ast.ImportFrom):
                if node.level == 0 and node.module:
                    yield node.module.partition(".")[0], required
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield from visit(node.body, False)
            elif isinstance(node, ast.ClassDef):
                yield from visit(node.body, required)
            elif isinstance(node, ast.If):
                if _guard_mentions(node.test, "TYPE_CHECKING") or _guard_mentions(
                    node.test, "version_info"
                ):
                    continue
                yield from visit(node.body, required)
                yield from visit(node.orelse, required)
            elif isinstance(node, ast.Try):
                optional = any(_catches_import_error(h) for h in node.handlers)
                yield from visit(node.body, required and not optional)
                for handler in node.handlers:
                    yield from visit(handler.body, False)
                yield from visit(node.orelse + node.finalbody, required)
            elif isinstance(node, (ast.With, ast.AsyncWith)):
                yield from visit(node.body, required)
            elif isinstance(node, (ast.For, ast.AsyncFor, ast.While)):
                yield from visit(node.body + node.orelse, required)

    yield from visit(ast.parse(source).body, True)


def test_imported_modules_tells_required_from_optional_imports() -> None:
    source = """
import alpha.sub
from beta import x
from . import local
if TYPE_CHECKING:
    import typing_only
if sys.version_info < (3, 11):
    from backport import y
try:
    import gamma
except ImportError:
    gamma = None
def f():
    import delta
"""
    assert sorted(imported_modules(source)) == [
        ("alpha", True),
        ("beta", True),
        ("delta", False),
        ("gamma", False),
    ]


def test_every_package_trio_sqs_imports_is_declared() -> None:
    """trio_sqs imports httpcore and h11 itself (their exceptions): once they came only with
    httpx, undeclared and untested at any floor. Every third-party package the library imports
    is declared: in [project] dependencies if a module of the library proper (not trio_sqs._cli,
    not trio_sqs.testing) needs it to import, else there or in an extra."""
    _, groups = load()
    declared = {
        group: {canonicalize_name(Requirement(text).name) for text in requirements}
        for group, requirements in groups.items()
    }
    anywhere = set().union(*declared.values())
    distributions = packages_distributions()
    checked: set[str] = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        proper = relative.parts[0] not in ("_cli", "testing")
        for module, required in imported_modules(path.read_text()):
            if module in sys.stdlib_module_names or module == "trio_sqs":
                continue
            names = {canonicalize_name(d) for d in distributions.get(module, [])}
            assert names, f"trio_sqs/{relative} imports {module}, which no installed package has"
            where = declared["dependencies"] if proper and required else anywhere
            assert names & where, (
                f"trio_sqs/{relative} imports {module} ({', '.join(sorted(names))}), not declared"
                + (" in [project] dependencies" if where is not anywhere else "")
            )
            checked.add(module)
    assert {"trio", "httpx", "httpcore", "h11", "botocore", "opentelemetry"} <= checked

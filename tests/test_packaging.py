"""What the wheel holds, read from pyproject.toml's configuration (building a wheel in the suite
would need the network for the build backend)."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_directory_is_packaged() -> None:
    """``packages = ["trio_sqs", "trio_sqs.testing"]`` missed ``trio_sqs._cli``: a wheel
    installed without ``-e`` had a ``trio-sqs`` command that could not import its module."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = sorted(
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "trio_sqs").rglob("__init__.py")
    )
    assert {"trio_sqs", "trio_sqs._cli", "trio_sqs.testing"} <= set(packages)
    if "packages" in setuptools and isinstance(setuptools["packages"], list):
        packaged = set(setuptools["packages"])
        assert [p for p in packages if p not in packaged] == []
    else:
        include = setuptools["packages"]["find"]["include"]
        assert [p for p in packages if not any(fnmatch.fnmatch(p, i) for i in include)] == []
    # The console script's module is one of them.
    script = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module = script["trio-sqs"].partition(":")[0]
    assert module in packages

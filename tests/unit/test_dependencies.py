"""Dependency floors (src/hardserve/dependencies.py): one message per installed dependency
below its floor, shown by injecting versions; every floor equal to pyproject.toml's minimum."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from hardserve import dependencies
from hardserve.dependencies import KNOWN_VULNERABLE, Floor, check_floors
from hardserve.versions import version_key

ROOT = Path(__file__).resolve().parents[2]
FLOORS = {floor.name: floor for floor in KNOWN_VULNERABLE}


def test_h11_before_0_16_is_refused_with_its_cve() -> None:
    assert "h11" in FLOORS
    (message,) = check_floors({"h11": "0.14.0"})
    assert message.startswith("h11 0.14.0 is installed; hardserve needs h11 >= 0.16.0 (")
    assert "CVE-2025-43859" in message
    assert message.endswith("python -m pip install 'h11>=0.16.0'")


@pytest.mark.parametrize(
    "version", ["0.16.0", "0.16", "0.16.1", "1.0", "0.16.0+deb13", "0.16.0.post1"]
)
def test_h11_at_or_above_the_floor_passes(version: str) -> None:
    assert check_floors({"h11": version}) == []


@pytest.mark.parametrize("version", ["0.15.9", "0.16.0rc1", "0.16.0.dev3", "0.9"])
def test_h11_below_the_floor_is_reported(version: str) -> None:
    assert len(check_floors({"h11": version})) == 1


def test_a_dependency_not_installed_is_not_reported() -> None:
    assert check_floors({}) == []
    assert check_floors(lambda name: None) == []


def test_a_version_that_cannot_be_read_is_reported() -> None:
    (message,) = check_floors({"h11": "unknown"})
    assert message.startswith("h11 'unknown' is installed, which is not a version")


def test_one_message_per_dependency_below_its_floor() -> None:
    floors = [
        Floor("alpha", "2.0", "reason a"),
        Floor("beta", "1.5", "reason b"),
        Floor("gamma", "0.3", "reason c"),
    ]
    versions = {"alpha": "1.9.9", "beta": "1.5.0", "gamma": "0.2"}
    messages = check_floors(versions, floors)
    assert [m.split()[0] for m in messages] == ["alpha", "gamma"]
    assert "(reason a)" in messages[0] and "(reason c)" in messages[1]


def test_versions_by_default_come_from_the_installed_metadata(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked = []

    def fake(name: str) -> str:
        asked.append(name)
        return "0.1"

    monkeypatch.setattr(dependencies.metadata, "version", fake)
    assert len(check_floors()) == len(KNOWN_VULNERABLE)
    assert asked == [floor.name for floor in KNOWN_VULNERABLE]


def test_this_environment_passes() -> None:
    assert check_floors() == []


def pyproject_minimums() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    minimums = {}
    for requirement in project["dependencies"]:
        match = re.match(r"([A-Za-z0-9_.-]+)\s*>=\s*([^;,\s]+)", requirement)
        if match:
            minimums[match.group(1).lower()] = match.group(2)
    return minimums


@pytest.mark.parametrize("floor", KNOWN_VULNERABLE, ids=lambda floor: floor.name)
def test_every_floor_is_pyprojects_minimum(floor: Floor) -> None:
    minimums = pyproject_minimums()
    assert floor.name in minimums, f"{floor.name} is not a dependency in pyproject.toml"
    assert version_key(minimums[floor.name]) == version_key(floor.minimum)
    assert re.search(r"CVE-\d{4}-\d{4,}|GHSA-", floor.reason), "a floor names its advisory"

"""docs/compare.md keeps its hardserve column true: every row names, in its last column, the
tests that show it (each must exist) and the settings it depends on (each must be a real
setting), or says it is planned with its issue; a planned row fails once its module exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hardserve.settings import ALL_SETTINGS

ROOT = Path(__file__).resolve().parents[2]
COMPARE = ROOT / "docs" / "compare.md"
PEERS = ["gunicorn 27.0", "waitress 3.0.2", "uWSGI 2.0", "granian 2.x"]
TEST_REF_RE = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")
SETTING_RE = re.compile(r"`([a-z][a-z0-9_]*)`")
PLANNED_RE = re.compile(r"^planned: issue (\d+)$")
# What a planned row waits for: once this module exists, the row must say what it does.
PLANNED_MODULES = {
    "Metrics": ROOT / "src" / "hardserve" / "observe" / "metrics.py",
    "TLS": ROOT / "src" / "hardserve" / "tls.py",
}
SETTINGS = {setting.name for setting in ALL_SETTINGS}


def split_row(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def table() -> tuple[list[str], list[list[str]]]:
    lines = [
        line for line in COMPARE.read_text(encoding="utf-8").splitlines() if line.startswith("|")
    ]
    assert len(lines) > 2, "docs/compare.md has no table"
    header, rule, *rows = lines
    assert set(rule.replace("|", "").split()) == {"---"}, rule
    return split_row(header), [split_row(row) for row in rows]


def rows() -> list[list[str]]:
    return table()[1]


def test_the_table_compares_hardserve_with_the_four_peers() -> None:
    header, found = table()
    assert header[1].startswith("hardserve ")
    assert header[2:6] == PEERS
    assert header[-1] == "Shown by (hardserve)"
    assert len(found) >= 14
    for row in found:
        assert len(row) == len(header), row[0]
        assert all(row), f"an empty cell in {row[0]!r}"


@pytest.mark.parametrize("row", rows(), ids=lambda row: row[0][:40])
def test_every_row_is_shown_by_tests_or_planned_with_its_issue(row: list[str]) -> None:
    proof = row[-1]
    planned = PLANNED_RE.match(proof)
    if planned:
        assert row[0] in PLANNED_MODULES, f"{row[0]!r} is planned but names no module to wait for"
        assert row[1].startswith(f"planned: issue {planned.group(1)}"), row[1]
        return
    tests = TEST_REF_RE.findall(proof)
    assert tests, f"{row[0]!r}: no test named"
    for path, name in tests:
        source = ROOT / path
        assert source.is_file(), f"{row[0]!r} names {path}, which does not exist"
        assert re.search(rf"^\s*def {name}\(", source.read_text(encoding="utf-8"), re.MULTILINE), (
            f"{row[0]!r} names {path}::{name}, which does not exist"
        )


@pytest.mark.parametrize("row", rows(), ids=lambda row: row[0][:40])
def test_every_setting_named_is_real(row: list[str]) -> None:
    proof = TEST_REF_RE.sub("", row[-1])
    for name in SETTING_RE.findall(proof):
        assert name in SETTINGS, f"{row[0]!r}: `{name}` is not a setting"
    # Settings named in the hardserve column are real too.
    for name in SETTING_RE.findall(row[1]):
        if "_" in name or name in SETTINGS:
            assert name in SETTINGS, f"{row[0]!r}: `{name}` is not a setting"


@pytest.mark.parametrize(("feature", "module"), PLANNED_MODULES.items())
def test_a_planned_row_is_rewritten_once_its_module_exists(feature: str, module: Path) -> None:
    (row,) = [row for row in rows() if row[0] == feature]
    if module.exists():
        assert not PLANNED_RE.match(row[-1]), (
            f"{module.relative_to(ROOT)} exists: docs/compare.md's {feature!r} row still says planned"
        )


def test_readme_links_the_page() -> None:
    assert "](docs/compare.md)" in (ROOT / "README.md").read_text(encoding="utf-8")

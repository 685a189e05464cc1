"""security/THREAT_MODEL.md and security/DOS_MITIGATIONS.md stay true to the code: every test
they name exists, every file they name exists, every setting and reason code they name is
real, and every default they show is the setting's (or the constant's) real default."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path
from typing import Any

import pytest

from hardserve.http.reasons import all_reasons
from hardserve.settings import ALL_SETTINGS

ROOT = Path(__file__).resolve().parents[2]
SECURITY = ROOT / "security"
THREAT_MODEL = SECURITY / "THREAT_MODEL.md"
DOS_MITIGATIONS = SECURITY / "DOS_MITIGATIONS.md"
DOCS = (THREAT_MODEL, DOS_MITIGATIONS)

COLUMNS = ["Attack", "Limit or mechanism", "Default", "What the client gets", "Tests"]
ATTACK, LIMIT, DEFAULT, ANSWER, TESTS = range(len(COLUMNS))

SETTINGS: dict[str, Any] = {setting.name: setting.default for setting in ALL_SETTINGS}
REASONS = {reason.code: reason for reason in all_reasons()}

TEST_REF_RE = re.compile(r"(tests/[\w/]+\.py)::(\w+)")
# Files named in backticks: sources, tests and corpus cases.
FILE_REF_RE = re.compile(r"`((?:src|tests|security)/[\w./-]+\.(?:py|http|json|md))(?:::\w+)?`")
BACKTICKED_RE = re.compile(r"`([^`]+)`")
# A lower-case name with an underscore: in these documents always a setting or a reason code.
SNAKE_RE = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)+")
# In the answer column every plain lower-case name is a reason code.
CODE_RE = re.compile(r"[a-z][a-z0-9_]*")
STATUS_CODE_RE = re.compile(r"\b(\d{3}) `([a-z0-9_]+)`")
DEFAULT_RE = re.compile(r"([\w.]+) = (.+)")


def split_row(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def dos_table() -> tuple[list[str], list[list[str]]]:
    """The header and the rows of the one table in DOS_MITIGATIONS.md."""
    lines = [line for line in DOS_MITIGATIONS.read_text().splitlines() if line.startswith("|")]
    assert len(lines) > 2, "DOS_MITIGATIONS.md has no table"
    header, rule, *rows = lines
    assert set(rule.replace("|", "").split()) <= {"---", ":---", "---:"}, rule
    return split_row(header), [split_row(row) for row in rows]


def backticked(text: str) -> list[str]:
    return BACKTICKED_RE.findall(text)


def named_tests(text: str) -> list[tuple[str, str]]:
    return TEST_REF_RE.findall(text)


def all_test_references() -> list[tuple[str, str, str]]:
    return sorted(
        {(doc.name, path, name) for doc in DOCS for path, name in named_tests(doc.read_text())}
    )


def all_file_references() -> list[tuple[str, str]]:
    return sorted(
        {(doc.name, path) for doc in DOCS for path in FILE_REF_RE.findall(doc.read_text())}
    )


def test_the_table_has_its_columns_and_rows() -> None:
    header, rows = dos_table()
    assert header == COLUMNS
    assert len(rows) >= 20
    for row in rows:
        assert len(row) == len(COLUMNS), row
        assert all(row), f"empty cell in {row[ATTACK]!r}"


def test_both_documents_name_tests() -> None:
    for doc in DOCS:
        assert named_tests(doc.read_text()), f"{doc.name} names no test"


@pytest.mark.parametrize(
    ("doc", "path", "name"),
    [pytest.param(*ref, id=f"{ref[0]}:{ref[1]}::{ref[2]}") for ref in all_test_references()],
)
def test_every_named_test_exists(doc: str, path: str, name: str) -> None:
    source = ROOT / path
    assert source.is_file(), f"{doc} names {path}, which does not exist"
    assert re.search(rf"^\s*def {name}\(", source.read_text(), re.MULTILINE), (
        f"{doc} names {path}::{name}, but {path} has no `def {name}(`"
    )


@pytest.mark.parametrize(
    ("doc", "path"),
    [pytest.param(*ref, id=f"{ref[0]}:{ref[1]}") for ref in all_file_references()],
)
def test_every_named_file_exists(doc: str, path: str) -> None:
    assert (ROOT / path).is_file(), f"{doc} names {path}, which does not exist"


def test_every_row_names_a_test_or_says_it_is_not_mitigated() -> None:
    _, rows = dos_table()
    for row in rows:
        if named_tests(row[TESTS]):
            continue
        assert row[TESTS].startswith("none"), f"{row[ATTACK]!r}: no test named"
        assert any("Not mitigated" in cell for cell in row), (
            f"{row[ATTACK]!r} has no test, so it must say it is not mitigated"
        )


def test_the_limit_column_names_only_settings() -> None:
    _, rows = dos_table()
    for row in rows:
        for name in backticked(row[LIMIT]):
            assert name in SETTINGS, f"{row[ATTACK]!r}: `{name}` is not a setting"


def parse_defaults(cell: str) -> dict[str, str]:
    """`name = value` entries of a default cell, as text."""
    if cell == "none":
        return {}
    entries = backticked(cell)
    assert entries, f"default cell {cell!r} is neither 'none' nor `name = value` entries"
    defaults = {}
    for entry in entries:
        match = DEFAULT_RE.fullmatch(entry)
        assert match, f"default {entry!r} is not `name = value`"
        defaults[match.group(1)] = match.group(2)
    return defaults


def real_default(name: str) -> Any:
    """A setting's default, or, for a dotted name, the constant it names in the code."""
    if "." not in name:
        assert name in SETTINGS, f"`{name}` in a default cell is not a setting"
        return SETTINGS[name]
    module, _, attribute = name.rpartition(".")
    value = getattr(importlib.import_module(module), attribute, None)
    assert value is not None, f"`{name}` does not exist"
    return value


def test_every_default_shown_is_the_real_one() -> None:
    _, rows = dos_table()
    for row in rows:
        for name, text in parse_defaults(row[DEFAULT]).items():
            shown = ast.literal_eval(text)
            real = real_default(name)
            assert type(shown) is type(real) and shown == real, (
                f"{row[ATTACK]!r}: shows `{name} = {text}`, the default is {real!r}"
            )


def test_every_setting_in_the_limit_column_shows_its_default() -> None:
    _, rows = dos_table()
    for row in rows:
        shown = parse_defaults(row[DEFAULT])
        for name in backticked(row[LIMIT]):
            assert name in shown, f"{row[ATTACK]!r}: `{name}` has no default shown"


def test_every_reason_code_in_the_answer_column_exists() -> None:
    _, rows = dos_table()
    codes = 0
    for row in rows:
        for name in backticked(row[ANSWER]):
            if CODE_RE.fullmatch(name):
                codes += 1
                assert name in REASONS, f"{row[ATTACK]!r}: `{name}` is not a reason code"
    assert codes > 20


def test_a_status_written_before_a_reason_code_is_that_codes_status() -> None:
    _, rows = dos_table()
    for row in rows:
        for status, code in STATUS_CODE_RE.findall(row[ANSWER]):
            assert code in REASONS, f"{row[ATTACK]!r}: `{code}` is not a reason code"
            assert REASONS[code].status == int(status), (
                f"{row[ATTACK]!r}: {status} `{code}`, but {code} answers {REASONS[code].status}"
            )


@pytest.mark.parametrize("doc", DOCS, ids=lambda doc: doc.name)
def test_every_snake_case_name_is_a_setting_or_a_reason_code(doc: Path) -> None:
    for name in backticked(doc.read_text()):
        if SNAKE_RE.fullmatch(name):
            assert name in SETTINGS or name in REASONS, (
                f"{doc.name}: `{name}` is neither a setting nor a reason code"
            )


def test_the_security_readme_indexes_the_directory() -> None:
    readme = (SECURITY / "README.md").read_text()
    for target in ("THREAT_MODEL.md", "DOS_MITIGATIONS.md", "corpus/", "fuzz/", "../SECURITY.md"):
        assert f"]({target})" in readme, f"security/README.md does not link {target}"

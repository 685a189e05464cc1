"""docs/limits.md lists every limit with its true default and a reason."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from hardserve.http.limits import Limits
from hardserve.settings import LIMIT_SETTINGS

DOC = Path(__file__).resolve().parents[2] / "docs" / "limits.md"
_ROW_RE = re.compile(r"^\| `(?P<name>\w+)` \| (?P<default>[^|]+) \| (?P<why>.+) \|$", re.MULTILINE)


def _rows() -> dict[str, tuple[str, str]]:
    text = DOC.read_text(encoding="utf-8")
    return {m.group("name"): (m.group("default").strip(), m.group("why")) for m in _ROW_RE.finditer(text)}


@pytest.mark.parametrize("field", dataclasses.fields(Limits), ids=lambda f: f.name)
def test_every_limit_is_documented_with_its_default(field: dataclasses.Field[object]) -> None:
    rows = _rows()
    assert field.name in rows, f"{field.name} missing from docs/limits.md"
    default, why = rows[field.name]
    assert default == repr(field.default)
    assert len(why) > 20, "each limit needs its reason"


def test_the_document_lists_nothing_else() -> None:
    assert set(_rows()) == {f.name for f in dataclasses.fields(Limits)}
    assert {s.name for s in LIMIT_SETTINGS} == set(_rows())

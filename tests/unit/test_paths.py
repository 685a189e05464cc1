"""The path-traversal policy, row by row from docs/paths.md (so the document cannot drift from
the code), each row through parse_target and through the whole parser, fed every way."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hardserve.http.limits import Limits
from hardserve.http.parser import RequestHead, RequestParser
from hardserve.http.reasons import all_reasons
from hardserve.http.target import PathPolicy, TargetError, parse_target
from tests.unit.test_parser import parse

DOC = Path(__file__).resolve().parents[2] / "docs" / "paths.md"
_ROW_RE = re.compile(r"^\| `(?P<path>[^`]+)` \|(?P<setting>[^|]*)\| (?P<outcome>.+) \|$")


def _rows() -> list[tuple[str, str, str]]:
    rows = []
    for line in DOC.read_text(encoding="utf-8").splitlines():
        match = _ROW_RE.match(line)
        if match and match.group("path") != "Request path":
            rows.append((match.group("path"), match.group("setting").strip(), match.group("outcome")))
    return rows


ROWS = _rows()


def _policy(setting: str) -> PathPolicy:
    return PathPolicy(
        allow_encoded_slash=setting == "`--path-encoded-slash allow`",
        allow_backslash=setting == "`--path-backslash allow`",
    )


def _expected(outcome: str) -> tuple[str, bytes | str]:
    """('path', decoded bytes) or ('refused', code), from the doc's notation."""
    refused = re.fullmatch(r"refused: `([a-z0-9_]+)`", outcome)
    if refused:
        return "refused", refused.group(1)
    shown = re.fullmatch(r"`([^`]*)`", outcome)
    assert shown, outcome
    # The doc writes bytes that are not printable ASCII as \xNN; everything else is itself.
    text = re.sub(r"\\x([0-9a-f]{2})", lambda m: chr(int(m.group(1), 16)), shown.group(1))
    return "path", text.encode("latin-1")


def test_the_document_has_rows() -> None:
    assert len(ROWS) >= 40


def test_every_path_reason_in_the_document_exists() -> None:
    codes = {reason.code for reason in all_reasons()}
    for _, _, outcome in ROWS:
        kind, value = _expected(outcome)
        if kind == "refused":
            assert value in codes


@pytest.mark.parametrize(("path", "setting", "outcome"), ROWS, ids=[f"{p} {s}" for p, s, _ in ROWS])
def test_row(path: str, setting: str, outcome: str) -> None:
    raw = path.encode("latin-1")
    policy = _policy(setting)
    kind, value = _expected(outcome)
    if kind == "refused":
        with pytest.raises(TargetError) as caught:
            parse_target(b"GET", raw, policy)
        assert caught.value.code == value
    else:
        assert parse_target(b"GET", raw, policy).path == value
    # The same through the parser, fed whole, by line, by byte and in random splits.
    if b"\\" in raw and not policy.allow_backslash:
        return  # also refused by the parser: covered by the refusal rows' codes
    request = b"GET " + raw + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    outcome_seen = parse(request, Limits(), path_policy=policy)
    if kind == "refused":
        assert outcome_seen.end == value
    else:
        assert outcome_seen.only.path == value


def test_the_parser_passes_the_decoded_path_on() -> None:
    parser = RequestParser(Limits())
    parser.feed(b"GET /a%20b?q=%20 HTTP/1.1\r\nHost: x\r\n\r\n")
    head = parser.next_event()
    assert isinstance(head, RequestHead)
    assert head.target.path == b"/a b"
    assert head.target.query == b"q=%20"


def test_absolute_form_authority_is_kept_and_userinfo_refused() -> None:
    target = parse_target(b"GET", b"http://example.com:8080/x?y")
    assert (target.path, target.query, target.authority) == (b"/x", b"y", b"example.com:8080")
    with pytest.raises(TargetError) as caught:
        parse_target(b"GET", b"http://user:pass@example.com/x")
    assert caught.value.code == "invalid_target"
    with pytest.raises(TargetError):
        parse_target(b"GET", b"s://]ufd/:")
    with pytest.raises(TargetError):
        parse_target(b"GET", b"ftp://example.com/x")

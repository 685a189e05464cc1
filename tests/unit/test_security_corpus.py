"""The attack corpus in security/corpus: the request bytes of published CVEs and advisories of
gunicorn, waitress, uWSGI and h11, each with the answer hardserve must give.

Every case is fed to the parser whole, line by line, cut before each LF, byte by byte and in
seeded random pieces (`parse` from test_parser.py, which fails unless all of them agree). A
refused case must be refused with its reason code after exactly `requests_before` complete
requests, whether or not the stream then ends, so the request an attacker smuggled behind the
refusal is never delivered. A case hardserve answers delivers exactly the requests its JSON
lists, with their paths and bodies.

The table in security/corpus/README.md is kept in step with the files, and the CVEs that are not
request bytes (races, response handling) must each name the test that covers them instead.
"""

from __future__ import annotations

import dataclasses
import json
import re
from functools import cache
from typing import Any

import pytest

from hardserve.http import reasons
from tests.helpers import ROOT
from tests.unit.test_parser import Outcome, drive, parse

CORPUS_DIR = ROOT / "security" / "corpus"
README = CORPUS_DIR / "README.md"

PROJECTS = frozenset({"gunicorn", "waitress", "uWSGI", "h11"})
META_KEYS = frozenset({"cve", "project", "affected", "title", "reference", "what", "expect"})
REFUSED_KEYS = frozenset({"status", "close", "reason", "requests_before", "refused_head_seen"})
ANSWERED_KEYS = frozenset({"status", "close", "requests", "paths", "bodies"})
_CVE_RE = re.compile(r"CVE-\d{4}-\d{4,}")

# Cases where hardserve is known to give the wrong answer: case id -> what is wrong. Each is run
# as xfail(strict=True), so a fix makes the test fail until the entry is removed.
KNOWN_WRONG: dict[str, str] = {}

# Every published CVE of the four projects about parsing, framing, smuggling, paths or a
# single-client DoS, and how it is covered: as request bytes in the corpus ...
BYTE_CASE_CVES = frozenset(
    {
        "CVE-2024-1135",
        "CVE-2024-6827",
        "CVE-2019-16785",
        "CVE-2019-16786",
        "CVE-2019-16789",
        "CVE-2019-16792",
        "CVE-2020-5236",
        "CVE-2022-24761",
        "CVE-2024-49768",
        "CVE-2025-43859",
        "CVE-2018-7490",
        "CVE-2018-6758",
        "CVE-2020-11984",
    }
)
# ... or, when the flaw is not in the request bytes, by these tests ("file::test_function").
NOT_BYTE_CASES: dict[str, tuple[str, ...]] = {
    "CVE-2018-1000164": (
        "tests/unit/test_response.py::test_validate_headers_refuses_control_characters_and_non_latin1",
        "tests/functional/test_wsgi.py::test_invalid_start_response_is_a_500_and_an_error_log_line",
        "tests/functional/test_security_corpus_wire.py::test_an_app_header_with_crlf_never_reaches_the_wire",
    ),
    "CVE-2023-27522": (
        "tests/unit/test_response.py::test_validate_headers_refuses_control_characters_and_non_latin1",
        "tests/unit/test_response.py::test_validate_headers_refuses_names_that_are_not_tokens",
        "tests/functional/test_security_corpus_wire.py::test_an_app_header_with_crlf_never_reaches_the_wire",
    ),
    "CVE-2024-24795": (
        "tests/unit/test_response.py::test_parse_status_refuses",
        "tests/functional/test_wsgi.py::test_invalid_start_response_is_a_500_and_an_error_log_line",
        "tests/unit/test_response.py::test_validate_headers_refuses_control_characters_and_non_latin1",
    ),
    "CVE-2022-31015": (
        "tests/functional/test_wsgi.py::test_close_is_called_when_the_client_disconnects_mid_stream",
        "tests/functional/test_security_corpus_wire.py::test_clients_that_reset_at_once_leave_nothing_behind",
    ),
    "CVE-2024-49769": (
        "tests/functional/test_security_corpus_wire.py::test_clients_that_reset_at_once_leave_nothing_behind",
    ),
    "CVE-2021-36160": (
        "tests/unit/test_environ.py::test_path_info_is_percent_decoded_as_latin1",
        "tests/unit/test_environ.py::test_unknown_peer_and_other_options",
    ),
}


@dataclasses.dataclass(frozen=True)
class SecurityCase:
    id: str
    meta: dict[str, Any]
    raw: bytes

    @property
    def expect(self) -> dict[str, Any]:
        return self.meta["expect"]

    @property
    def refused(self) -> bool:
        return "reason" in self.expect


@cache
def security_cases() -> dict[str, SecurityCase]:
    cases = {}
    for path in sorted(CORPUS_DIR.glob("*.json")):
        raw_path = path.with_suffix(".http")
        raw = raw_path.read_bytes() if raw_path.exists() else b""
        cases[path.stem] = SecurityCase(path.stem, json.loads(path.read_text("utf-8")), raw)
    return cases


def case_params() -> list[Any]:
    return [
        pytest.param(
            name,
            id=name,
            marks=[pytest.mark.xfail(strict=True, reason=KNOWN_WRONG[name])]
            if name in KNOWN_WRONG
            else [],
        )
        for name in security_cases()
    ]


# -- the files --------------------------------------------------------------------------------


def test_every_http_file_has_a_json_file_and_the_reverse() -> None:
    raw = {p.stem for p in CORPUS_DIR.glob("*.http")}
    meta = {p.stem for p in CORPUS_DIR.glob("*.json")}
    assert raw == meta, f"without JSON: {sorted(raw - meta)}; without bytes: {sorted(meta - raw)}"
    assert len(raw) >= len(BYTE_CASE_CVES)
    assert all((CORPUS_DIR / f"{name}.http").stat().st_size for name in raw)


@pytest.mark.parametrize("name", list(security_cases()))
def test_case_json_is_well_formed(name: str) -> None:
    case = security_cases()[name]
    meta = case.meta
    assert set(meta) == META_KEYS, sorted(set(meta) ^ META_KEYS)
    assert meta["project"] in PROJECTS
    if meta["cve"] is None:
        prefix = f"NOCVE-{meta['project'].lower()}-"
    else:
        assert _CVE_RE.fullmatch(meta["cve"]), meta["cve"]
        prefix = f"{meta['cve']}-{meta['project'].lower()}-"
    assert name.startswith(prefix), f"{name} should start with {prefix}"
    assert re.fullmatch(r"[A-Za-z0-9.-]+", name)
    assert meta["reference"].startswith("https://")
    for key in ("affected", "title", "what"):
        assert isinstance(meta[key], str) and meta[key].strip(), key
    expect = case.expect
    assert isinstance(expect["close"], bool)
    if case.refused:
        assert set(expect) == REFUSED_KEYS, sorted(set(expect) ^ REFUSED_KEYS)
        reason = reasons.by_code(expect["reason"])
        assert (expect["status"], expect["close"]) == (reason.status, reason.close)
        assert isinstance(expect["requests_before"], int) and expect["requests_before"] >= 0
        assert isinstance(expect["refused_head_seen"], bool)
    else:
        assert set(expect) == ANSWERED_KEYS, sorted(set(expect) ^ ANSWERED_KEYS)
        assert expect["status"] == 200
        assert expect["requests"] == len(expect["paths"]) == len(expect["bodies"]) >= 1
        assert all(isinstance(v, str) for v in expect["paths"] + expect["bodies"])


def test_the_corpus_covers_every_listed_cve_and_no_other() -> None:
    in_corpus = {case.meta["cve"] for case in security_cases().values()} - {None}
    assert in_corpus == BYTE_CASE_CVES
    assert not BYTE_CASE_CVES & set(NOT_BYTE_CASES)


@pytest.mark.parametrize("cve", sorted(NOT_BYTE_CASES))
def test_each_cve_without_bytes_names_tests_that_exist(cve: str) -> None:
    assert cve in README.read_text("utf-8"), f"{cve} is not explained in {README}"
    for test in NOT_BYTE_CASES[cve]:
        path, _, function = test.partition("::")
        source = (ROOT / path).read_text("utf-8")
        assert re.search(rf"^def {re.escape(function)}\(", source, re.MULTILINE), test


def test_the_readme_table_lists_every_case() -> None:
    text = README.read_text("utf-8")
    listed = set(re.findall(r"^\| `((?:NO)?CVE-[A-Za-z0-9.-]+)` \|", text, re.MULTILINE))
    assert listed == set(security_cases()), sorted(listed ^ set(security_cases()))


# -- the parser -------------------------------------------------------------------------------


def check_outcome(case: SecurityCase, outcome: Outcome, *, eof: bool) -> None:
    expect = case.expect
    complete = [r for r in outcome.requests if r.complete]
    if case.refused:
        assert outcome.end == expect["reason"], outcome
        before = expect["requests_before"]
        # Complete requests come first; the smuggled ones behind the refusal never come out.
        assert complete == list(outcome.requests[:before]) and len(complete) == before, outcome
        unfinished = outcome.requests[before:]
        assert len(unfinished) == (1 if expect["refused_head_seen"] else 0), outcome
    else:
        assert outcome.end == ("closed" if eof else "need_data"), outcome
        assert complete == list(outcome.requests), outcome
        assert [r.path.decode("latin-1") for r in complete] == expect["paths"]
        assert [r.body.decode("latin-1") for r in complete] == expect["bodies"]
        assert complete[-1].keep_alive is not expect["close"]


@pytest.mark.parametrize("name", case_params())
def test_case_through_the_parser_under_every_splitting(name: str) -> None:
    case = security_cases()[name]
    check_outcome(case, parse(case.raw), eof=True)


@pytest.mark.parametrize("name", case_params())
def test_case_is_decided_without_waiting_for_the_end_of_the_stream(name: str) -> None:
    """A refusal must not wait for the client to close (over a socket it would not come), and an
    answered case must deliver its requests while the connection stays open."""
    case = security_cases()[name]
    check_outcome(case, drive([case.raw], eof=False), eof=False)

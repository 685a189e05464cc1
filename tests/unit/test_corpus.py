"""gunicorn's request corpus (valid/ and invalid/ raw requests with JSON expectations) against
the parser, every case fed whole, line by line, byte by byte and in seeded random splits.

- invalid cases must be refused, with the reason pinned in INVALID_REFUSED_WITH, and the refused
  request's head must never come out (except for refusals inside a chunked body: the head has
  gone to the app by then, the body never ends);
- valid cases must come out as the JSON says (method, target, path, query, version, headers
  without the '_' names hardserve drops, body, trailers), or be listed in DEVIATIONS with the
  reason code they are refused with. docs/deviations.md explains each deviation; a test below
  keeps the two in step.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
from functools import cache
from typing import Any, NamedTuple

import pytest

from hardserve.http import reasons
from hardserve.http.limits import Limits
from hardserve.http.proxy_protocol import ProxyHeaderReader, ProxyProtocolError
from tests.helpers import CORPUS, ROOT
from tests.unit.test_parser import Outcome, Request, drive, parse, splittings

DOC = ROOT / "docs" / "deviations.md"

# gunicorn settings with no hardserve equivalent: such cases run with the defaults.
NO_EQUIVALENT = frozenset(
    {
        "permit_obsolete_folding",
        "strip_header_spaces",
        "casefold_http_method",
        "permit_unconventional_http_method",
    }
)
# gunicorn settings hardserve_settings() maps onto hardserve's.
MAPPED = (
    "limit_request_line",
    "limit_request_field_size",
    "limit_request_fields",
    "header_map",
    "proxy_protocol",
    "forwarded_allow_ips",
)
# gunicorn's default limit_request_field_size, which it also uses when the setting is 0.
GUNICORN_FIELD_SIZE_DEFAULT = 8190

_MISSING_HOST = "HTTP/1.1 without Host: RFC 9112 section 3.2 MUST answer 400"
_TE = "Transfer-Encoding other than exactly 'chunked': RFC 9112 section 6.1, 501"

# Valid cases hardserve refuses on purpose: case -> (reason code, why). See docs/deviations.md.
DEVIATIONS: dict[str, tuple[str, str]] = {
    "valid/004": ("missing_host", _MISSING_HOST),
    "valid/rfc9112_target_absolute_userinfo_01": (
        "invalid_target",
        "userinfo in an absolute-form target: RFC 9110 section 4.2.4 says to treat it as an error",
    ),
    "valid/005": ("missing_host", _MISSING_HOST),
    "valid/006": ("missing_host", _MISSING_HOST),
    "valid/007": ("missing_host", _MISSING_HOST),
    "valid/010": ("missing_host", _MISSING_HOST),
    "valid/011": ("missing_host", _MISSING_HOST),
    "valid/012": (
        "missing_host",
        _MISSING_HOST + "; with Host, its Content-Type trailer is refused",
    ),
    "valid/013": ("missing_host", _MISSING_HOST),
    "valid/014": ("missing_host", _MISSING_HOST),
    "valid/018": ("missing_host", _MISSING_HOST),
    "valid/021": ("missing_host", _MISSING_HOST),
    "valid/022": ("missing_host", _MISSING_HOST + " (the second, pipelined request)"),
    "valid/023": ("missing_host", _MISSING_HOST),
    "valid/031": ("missing_host", _MISSING_HOST),
    "valid/031compat": ("missing_host", _MISSING_HOST),
    "valid/031compat2": ("missing_host", _MISSING_HOST),
    "valid/100": ("missing_host", _MISSING_HOST),
    "valid/009": (
        "cl_te_conflict",
        "Content-Length beside Transfer-Encoding: RFC 9112 section 6.1 MAY reject; smuggling vector",
    ),
    "valid/025": ("te_not_chunked", _TE + "; gzip is not decoded"),
    "valid/025_line": ("te_not_chunked", _TE + "; gzip is not decoded"),
    "valid/029": ("te_not_chunked", _TE + "; 'identity' is no transfer coding"),
    "valid/030": ("te_not_chunked", _TE + "; 'identity' is no transfer coding"),
    "valid/rfc9112_smuggle_gzip_chunked_01": ("te_not_chunked", _TE + "; gzip is not decoded"),
    "valid/rfc9112_smuggle_te_identity_chunked_01": (
        "te_not_chunked",
        _TE + "; 'identity' is no transfer coding",
    ),
    "valid/027": (
        "malformed_request_line",
        "raw non-ASCII bytes in the request-target: not a URI (RFC 9112 section 3.2, RFC 3986)",
    ),
    "valid/028": (
        "malformed_header",
        "whitespace between field name and colon: RFC 9112 section 5.1 MUST reject with 400",
    ),
    "valid/compat_obs_fold": (
        "obs_fold",
        "obsolete line folding: RFC 9112 section 5.2 allows rejecting with 400",
    ),
    "valid/compat_obs_fold_huge": (
        "obs_fold",
        "obsolete line folding: RFC 9112 section 5.2 allows rejecting with 400",
    ),
    "valid/pp_02": ("missing_host", _MISSING_HOST + " (behind a PROXY v1 header, which is read)"),
    "valid/pp_03": (
        "proxy_header_missing",
        "no PROXY header: a listener that expects one requires it (the spec forbids guessing)",
    ),
    "valid/rfc9112_target_authority_connect_01": (
        "method_not_supported",
        "CONNECT makes a tunnel, which WSGI cannot serve: 501 (RFC 9110 section 9.3.6)",
    ),
    "valid/rfc9112_target_authority_ipv6_01": (
        "method_not_supported",
        "CONNECT makes a tunnel, which WSGI cannot serve: 501 (RFC 9110 section 9.3.6)",
    ),
}

# The client each PROXY protocol case names, read off its raw header by hand (the JSON has no
# address). With the protocol on, these are REMOTE_ADDR and REMOTE_PORT.
PROXY_CLIENTS: dict[str, tuple[str, int]] = {
    "valid/pp_01": ("192.168.0.1", 56324),  # v1 TCP4
    "valid/pp_02": ("192.168.0.1", 56324),  # v1 TCP4
    "valid/pp_04": ("192.168.1.10", 12345),  # v2 AF_INET
    "valid/pp_05": ("2001:db8::1", 54321),  # v2 AF_INET6
}

# The PROXY protocol cases on a listener that does not expect the header (the default): the
# header is read as HTTP and refused.
PROXY_OFF_REFUSED_WITH: dict[str, str] = {
    "valid/pp_01": "malformed_request_line",
    "valid/pp_02": "malformed_request_line",
    "valid/pp_04": "bare_lf",
    "valid/pp_05": "bare_lf",
    "invalid/pp_01": "incomplete_head",
    "invalid/pp_02": "incomplete_head",
    "invalid/pp_03": "incomplete_head",
}

# Valid cases whose raw bytes end inside the body: the head and every body byte present come
# out as the JSON says, then EOF ends the stream inside the body.
INCOMPLETE_AT_EOF: dict[str, tuple[str, str]] = {
    "valid/099": ("incomplete_body", "Content-Length 17914 but the raw file holds 8599 body bytes"),
}

# With 'Host: corpus.test' added, these differ from the JSON on purpose: case -> (field, value).
WITH_HOST_DIFFERENCES: dict[str, tuple[str, str]] = {
    # gunicorn's casefold_http_method upper-cases methods; hardserve passes them as sent
    # (RFC 9110 section 9.1: methods are case-sensitive).
    "valid/031compat": ("method", "-blargh"),
}

# With 'Host: corpus.test' added, these are refused for a second reason: case -> code.
WITH_HOST_REFUSED_WITH: dict[str, str] = {
    # A Content-Type trailer: RFC 9110 section 6.5.1 forbids generating trailers the field's
    # definition does not allow; hardserve refuses them rather than let them be merged.
    "valid/012": "forbidden_trailer",
}

# Every invalid case and the reason it is refused with.
INVALID_REFUSED_WITH: dict[str, str] = {
    "invalid/001": "incomplete_head",
    "invalid/002": "malformed_request_line",
    "invalid/003": "bare_lf",
    "invalid/003b": "malformed_request_line",
    "invalid/003c": "missing_host",
    "invalid/004": "malformed_request_line",
    "invalid/005": "malformed_header",
    "invalid/006": "request_line_too_long",
    "invalid/007": "header_field_too_large",
    "invalid/008": "header_field_too_large",
    "invalid/009": "too_many_headers",
    "invalid/010": "header_field_too_large",
    "invalid/011": "too_many_headers",
    "invalid/012": "header_field_too_large",
    "invalid/013": "obs_fold",
    "invalid/014": "invalid_content_length",
    "invalid/015": "invalid_content_length",
    "invalid/016": "missing_host",
    "invalid/017": "header_field_too_large",
    "invalid/018": "malformed_request_line",
    "invalid/019": "missing_host",
    "invalid/020": "malformed_header",
    "invalid/021": "multiple_content_length",
    "invalid/022": "invalid_content_length",
    "invalid/023": "invalid_content_length",
    "invalid/024": "invalid_content_length",
    "invalid/040": "underscore_header",
    "invalid/041": "duplicate_field",
    "invalid/042": "multiple_host",
    "invalid/chunked_01": "missing_host",
    "invalid/chunked_02": "cl_te_conflict",
    "invalid/chunked_03": "te_not_chunked",
    "invalid/chunked_04": "te_not_chunked",
    "invalid/chunked_05": "te_http10",
    "invalid/chunked_06": "te_not_chunked",
    "invalid/chunked_07": "underscore_header",
    "invalid/chunked_08": "te_not_chunked",
    "invalid/chunked_09": "missing_host",
    "invalid/chunked_10": "missing_host",
    "invalid/chunked_11": "missing_host",
    "invalid/chunked_12": "missing_host",
    "invalid/chunked_13": "missing_host",
    "invalid/chunked_14": "missing_host",
    "invalid/invalid_field_value_01": "bare_lf",
    "invalid/limit_header_default_01": "header_field_too_large",
    "invalid/nonascii_01": "malformed_request_line",
    "invalid/nonascii_02": "malformed_request_line",
    "invalid/nonascii_03": "malformed_header",
    "invalid/nonascii_04": "malformed_header",
    "invalid/obs_fold_01": "obs_fold",
    "invalid/pp_01": "proxy_header_invalid",
    "invalid/pp_02": "proxy_header_invalid",
    "invalid/pp_03": "proxy_header_invalid",
    "invalid/prefix_01": "malformed_request_line",
    "invalid/prefix_02": "malformed_request_line",
    "invalid/prefix_03": "invalid_content_length",
    "invalid/prefix_04": "invalid_content_length",
    "invalid/prefix_05": "malformed_request_line",
    "invalid/prefix_06": "malformed_request_line",
    "invalid/rfc9110_field_value_ctl_bel_01": "malformed_header",
    "invalid/rfc9110_field_value_ctl_del_01": "malformed_header",
    "invalid/rfc9110_trailer_forbidden_cl_01": "forbidden_trailer",
    "invalid/rfc9110_trailer_forbidden_host_01": "forbidden_trailer",
    "invalid/rfc9110_trailer_forbidden_te_01": "forbidden_trailer",
    "invalid/rfc9112_chunked_missing_final_crlf_01": "incomplete_body",
    "invalid/rfc9112_chunked_size_minus_sign_01": "invalid_chunk_size",
    "invalid/rfc9112_chunked_size_plus_sign_01": "invalid_chunk_size",
    "invalid/rfc9112_smuggle_cl_list_form_01": "invalid_content_length",
    "invalid/rfc9112_smuggle_cl_te_chunked_01": "cl_te_conflict",
    "invalid/rfc9112_target_asterisk_non_options_01": "invalid_target",
    "invalid/rfc9112_target_authority_non_connect_01": "invalid_target",
    "invalid/rfc9112_target_relative_01": "invalid_target",
    "invalid/version_01": "malformed_request_line",
    "invalid/version_02": "unsupported_version",
}

# Invalid cases that lack Host, so missing_host hides the flaw gunicorn finds. With a Host added
# the flaw itself must refuse them.
INVALID_WITH_HOST_REFUSED_WITH: dict[str, str] = {
    "invalid/chunked_01": "invalid_chunk_size",
    "invalid/chunked_09": "invalid_chunk_size",
    "invalid/chunked_10": "invalid_chunk_size",
    "invalid/chunked_11": "bare_lf",
    "invalid/chunked_12": "invalid_chunk_size",
    "invalid/chunked_13": "invalid_chunk_size",
    "invalid/chunked_14": "invalid_chunk_size",
}

# Refusals found inside a chunked body: the head came out before them (it goes to the app
# first; the body is streamed), but the message never ends.
BODY_REFUSALS = frozenset(
    {
        "invalid_chunk_size",
        "chunk_line_too_long",
        "bad_chunk_terminator",
        "malformed_trailer",
        "forbidden_trailer",
        "trailers_too_large",
        "incomplete_body",
    }
)

ADDED_HOST = b"Host: corpus.test"
# A request line starts a line, or follows the previous request's body directly (valid/pp_02):
# it is not preceded by a token character.
_REQUEST_LINE_11 = re.compile(
    rb"(?<![-!#$%&'*+.^_`|~0-9A-Za-z])[-!#$%&'*+.^_`|~0-9A-Za-z]+ [^ \r\n]+ HTTP/1\.1\r\n"
)


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    raw: bytes
    meta: dict[str, Any]

    @property
    def valid(self) -> bool:
        return self.name.startswith("valid/")

    @property
    def settings(self) -> dict[str, str]:
        return self.meta.get("gunicorn_settings_changed") or {}

    @property
    def expected(self) -> list[dict[str, Any]]:
        return self.meta["requests"]


@cache
def corpus() -> dict[str, Case]:
    cases = {}
    for kind in ("valid", "invalid"):
        for path in sorted((CORPUS / kind).glob("*.json")):
            meta = json.loads(path.read_text())
            raw = (path.parent / meta["raw_file"]).read_bytes()
            assert meta["case"] == f"{kind}/{path.stem}"
            cases[meta["case"]] = Case(meta["case"], raw, meta)
    return cases


class Settings(NamedTuple):
    """The hardserve settings matching a case's gunicorn settings."""

    limits: Limits
    refuse_underscore: bool = False
    # A PROXY protocol header is read before the HTTP stream (proxy_protocol on, with the test
    # client's address in proxy_allow_ips).
    proxy_protocol: bool = False
    # The test client is a trusted proxy (forwarded_allow_ips).
    trust_forwarded: bool = False


def hardserve_settings(case: Case) -> Settings:
    """The settings matching the case's gunicorn settings."""
    limits: dict[str, int] = {}
    refuse_underscore = False
    proxy_protocol = False
    trust_forwarded = False
    for name, value in case.settings.items():
        if name == "limit_request_line":
            # gunicorn counts the request line without its CRLF, hardserve with it.
            assert int(value) > 0, "0 (no limit) has no equivalent"
            limits["request_line_max_bytes"] = int(value) + 2
        elif name == "limit_request_field_size":
            # gunicorn counts the field line with its CRLF (header_length = len(line) + 2),
            # as hardserve does: the numbers carry over as they are.
            limits["header_field_max_bytes"] = int(value) or GUNICORN_FIELD_SIZE_DEFAULT
        elif name == "limit_request_fields":
            limits["header_count_max"] = int(value)
        elif name == "header_map":
            # 'refuse' refuses '_' names; 'dangerous' maps '_' to '-', which hardserve never
            # does (it drops such names).
            assert value in ("refuse", "dangerous"), value
            refuse_underscore = value == "refuse"
        elif name == "proxy_protocol":
            # 'auto' reads a header when the first bytes look like one; hardserve's 'on'
            # requires one on every connection (docs/deviations.md, valid/pp_03).
            assert value == "auto", value
            proxy_protocol = True
        elif name == "forwarded_allow_ips":
            # gunicorn's '*'; hardserve refuses '*', the client's address stands for it.
            assert value == "['*']", value
            trust_forwarded = True
        else:
            assert name in NO_EQUIVALENT, f"unknown gunicorn setting {name}: map it here"
    return Settings(Limits(**limits), refuse_underscore, proxy_protocol, trust_forwarded)


def _drive_proxied(
    pieces: list[bytes], settings: Settings
) -> tuple[tuple[str | None, int | None] | None, Outcome]:
    """As a connection with proxy_protocol on reads `pieces`: the PROXY header first, then the
    HTTP stream from the bytes after it. Returns the client the header names and the outcome."""
    reader = ProxyHeaderReader()
    for index, piece in enumerate(pieces):
        try:
            header = reader.feed(piece)
        except ProxyProtocolError as exc:
            return None, Outcome((), exc.code)
        if header is not None:
            rest = [p for p in (header.remainder, *pieces[index + 1 :]) if p]
            outcome = drive(rest, settings.limits, refuse_underscore=settings.refuse_underscore)
            return (header.source_addr, header.source_port), outcome
    # The connection ends inside the header (or before it): as the connection answers.
    return None, Outcome(
        (), reasons.PROXY_HEADER_INVALID.code if reader.buffered_bytes else "closed"
    )


def read_case(
    case: Case, raw: bytes | None = None
) -> tuple[tuple[str | None, int | None] | None, Outcome]:
    """The client a PROXY header names (None without one) and the parser's outcome, checked
    to be the same under every splitting."""
    settings = hardserve_settings(case)
    data = case.raw if raw is None else raw
    if not settings.proxy_protocol:
        return None, parse(data, settings.limits, refuse_underscore=settings.refuse_underscore)
    results = {name: _drive_proxied(pieces, settings) for name, pieces in splittings(data).items()}
    reference = results["whole"]
    for name, result in results.items():
        assert result == reference, f"fed {name!r}: {result}, fed whole: {reference}"
    return reference


def parse_case(case: Case, raw: bytes | None = None) -> Outcome:
    return read_case(case, raw)[1]


def with_host(raw: bytes) -> bytes:
    """`raw` with ADDED_HOST after every HTTP/1.1 request line."""
    patched, count = _REQUEST_LINE_11.subn(lambda m: m.group(0) + ADDED_HOST + b"\r\n", raw)
    assert count, "no HTTP/1.1 request line"
    return patched


def _fields(fields: list[list[str]]) -> list[tuple[str, str]]:
    """The JSON's fields as hardserve gives them: lower-cased, without '_' names."""
    return [(name.lower(), value) for name, value in fields if "_" not in name]


def assert_request(got: Request, want: dict[str, Any], *, complete: bool = True) -> None:
    assert got.method.decode("latin-1") == want["method"]
    assert got.raw_target.decode("latin-1") == want["target"]
    assert got.raw_path.decode("latin-1") == want["path"]
    assert got.query.decode("latin-1") == want["query"]
    assert got.http_version == "{}.{}".format(*want["version"]).encode()
    headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in got.headers]
    assert headers == _fields(want["headers"])
    assert got.body == base64.b64decode(want["body_b64"])
    trailers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in got.trailers]
    assert trailers == _fields(want["trailers"])
    assert got.complete is complete


def assert_as_expected(outcome: Outcome, expected: list[dict[str, Any]]) -> None:
    """Every expected request came out intact; after the last, the stream ended cleanly or the
    request asked for the connection to close (a server then reads nothing more)."""
    assert len(outcome.requests) >= len(expected), outcome
    for got, want in zip(outcome.requests, expected, strict=False):
        assert_request(got, want)
    last = outcome.requests[len(expected) - 1]
    if last.keep_alive:
        assert (len(outcome.requests), outcome.end) == (len(expected), "closed"), outcome


def expected_with_host(case: Case) -> list[dict[str, Any]]:
    expected = []
    for want in case.expected:
        want = dict(want)
        if want["version"] == [1, 1]:
            want["headers"] = [["HOST", ADDED_HOST[6:].decode()], *want["headers"]]
        if case.name in WITH_HOST_DIFFERENCES:
            field, value = WITH_HOST_DIFFERENCES[case.name]
            want[field] = value
        expected.append(want)
    return expected


def _names(valid: bool) -> list[str]:
    return [name for name, case in corpus().items() if case.valid is valid]


# -- the classification is complete ----------------------------------------------------------


def test_every_case_is_classified() -> None:
    valid, invalid = set(_names(True)), set(_names(False))
    assert len(valid) > 50 and len(invalid) > 50, "the corpus is missing"
    assert set(INVALID_REFUSED_WITH) == invalid
    assert set(DEVIATIONS) <= valid
    assert set(INCOMPLETE_AT_EOF) <= valid
    assert not set(DEVIATIONS) & set(INCOMPLETE_AT_EOF)
    missing_host = {c for c, (code, _) in DEVIATIONS.items() if code == "missing_host"}
    assert set(WITH_HOST_DIFFERENCES) | set(WITH_HOST_REFUSED_WITH) <= missing_host
    assert set(INVALID_WITH_HOST_REFUSED_WITH) <= {
        c for c, code in INVALID_REFUSED_WITH.items() if code == "missing_host"
    }
    known = {r.code for r in reasons.all_reasons()}
    codes = [code for code, _ in DEVIATIONS.values()] + list(INVALID_REFUSED_WITH.values())
    codes += [*WITH_HOST_REFUSED_WITH.values(), *INVALID_WITH_HOST_REFUSED_WITH.values()]
    codes += PROXY_OFF_REFUSED_WITH.values()
    assert set(codes) <= known
    # Every PROXY protocol case is also run without the protocol; every valid one whose header
    # is read names its client.
    proxied = {name for name, case in corpus().items() if hardserve_settings(case).proxy_protocol}
    assert set(PROXY_OFF_REFUSED_WITH) | set(PROXY_CLIENTS) <= proxied
    assert proxied - set(PROXY_OFF_REFUSED_WITH) == {"valid/pp_03"}  # no header: nothing to refuse
    headed = {name for name in proxied if name.startswith("valid/") and name != "valid/pp_03"}
    assert set(PROXY_CLIENTS) == headed


def test_only_known_gunicorn_settings_appear() -> None:
    for case in corpus().values():
        hardserve_settings(case)


def test_gunicorn_limits_map_onto_the_same_bytes() -> None:
    # gunicorn refuses limit_header_default_01, whose field line is 8190 bytes without its
    # CRLF, under its default 8190: its count includes the CRLF, like hardserve's.
    line = corpus()["invalid/limit_header_default_01"].raw.split(b"\r\n")[1]
    assert len(line) == GUNICORN_FIELD_SIZE_DEFAULT
    assert Limits().header_field_max_bytes == GUNICORN_FIELD_SIZE_DEFAULT
    # And valid/024 holds an 8189-byte request line (without CRLF) under limit_request_line 8200.
    case = corpus()["valid/024"]
    assert hardserve_settings(case).limits.request_line_max_bytes == 8202


# -- invalid cases ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", _names(False))
def test_invalid_case_is_refused(name: str) -> None:
    case = corpus()[name]
    code = INVALID_REFUSED_WITH[name]
    outcome = parse_case(case)
    assert outcome.end == code, outcome
    if code in BODY_REFUSALS:
        # The head went out; the body never completes.
        assert len(outcome.requests) == 1
        assert not outcome.requests[0].complete
    else:
        assert outcome.requests == ()


@pytest.mark.parametrize("name", sorted(INVALID_WITH_HOST_REFUSED_WITH))
def test_invalid_case_with_host_is_refused_for_its_own_flaw(name: str) -> None:
    outcome = parse_case(corpus()[name], with_host(corpus()[name].raw))
    code = INVALID_WITH_HOST_REFUSED_WITH[name]
    assert outcome.end == code
    assert [r.complete for r in outcome.requests] == [False]


# -- valid cases -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", _names(True))
def test_valid_case(name: str) -> None:
    case = corpus()[name]
    outcome = parse_case(case)
    if name in DEVIATIONS:
        code, _ = DEVIATIONS[name]
        assert outcome.end == code, outcome
        # The requests before the refused one came out intact; the refused one did not.
        assert len(outcome.requests) < len(case.expected)
        for got, want in zip(outcome.requests, case.expected, strict=False):
            assert_request(got, want)
    elif name in INCOMPLETE_AT_EOF:
        code, _ = INCOMPLETE_AT_EOF[name]
        assert outcome.end == code
        (got,) = outcome.requests
        (want,) = case.expected
        assert_request(got, want, complete=False)
    else:
        assert_as_expected(outcome, case.expected)


@pytest.mark.parametrize(
    "name", sorted(c for c, (code, _) in DEVIATIONS.items() if code == "missing_host")
)
def test_valid_case_without_host_passes_once_host_is_added(name: str) -> None:
    case = corpus()[name]
    outcome = parse_case(case, with_host(case.raw))
    expected = expected_with_host(case)
    if name in WITH_HOST_REFUSED_WITH:
        # Refused inside the body: head and body as expected, the trailers never delivered.
        assert outcome.end == WITH_HOST_REFUSED_WITH[name]
        (got,) = outcome.requests
        (want,) = expected
        assert want["trailers"]
        assert_request(got, {**want, "trailers": []}, complete=False)
    else:
        assert_as_expected(outcome, expected)


def test_with_host_inserts_after_each_http11_request_line() -> None:
    raw = b"GET /a HTTP/1.0\r\n\r\nPOST /b HTTP/1.1\r\nX: 1\r\n\r\nGET /c HTTP/1.1\r\n\r\n"
    assert with_host(raw) == (
        b"GET /a HTTP/1.0\r\n\r\nPOST /b HTTP/1.1\r\nHost: corpus.test\r\nX: 1\r\n\r\n"
        b"GET /c HTTP/1.1\r\nHost: corpus.test\r\n\r\n"
    )
    # Right after a body, and behind a PROXY header (whose line is no request line).
    raw = b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nPUT /d HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}GET /e HTTP/1.1\r\n\r\n"
    assert with_host(raw) == (
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nPUT /d HTTP/1.1\r\nHost: corpus.test\r\n"
        b"Content-Length: 2\r\n\r\n{}GET /e HTTP/1.1\r\nHost: corpus.test\r\n\r\n"
    )


# -- the PROXY protocol cases ----------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PROXY_CLIENTS))
def test_proxy_case_names_its_client(name: str) -> None:
    client, _ = read_case(corpus()[name])
    assert client == PROXY_CLIENTS[name]


@pytest.mark.parametrize("name", sorted(PROXY_OFF_REFUSED_WITH))
def test_proxy_case_without_the_protocol_is_refused_as_http(name: str) -> None:
    # The default listener reads no PROXY header: the header's bytes are an HTTP request line
    # that is not one.
    case = corpus()[name]
    outcome = parse(case.raw, hardserve_settings(case).limits)
    assert outcome == Outcome((), PROXY_OFF_REFUSED_WITH[name])


# -- docs/deviations.md ----------------------------------------------------------------------


def _doc_rows() -> dict[str, tuple[str, int]]:
    """The doc's table rows: | `case` | `code` | status | why | (status 0: closed unanswered)."""
    rows = {}
    for match in re.finditer(
        r"(?m)^\| `((?:in)?valid/[^`]+)` \| `([a-z_0-9]+)` \| (\d{3}|0) \|", DOC.read_text()
    ):
        assert match.group(1) not in rows, f"{match.group(1)} listed twice"
        rows[match.group(1)] = (match.group(2), int(match.group(3)))
    return rows


def test_deviations_are_documented() -> None:
    rows = _doc_rows()
    listed = {**DEVIATIONS, **INCOMPLETE_AT_EOF}
    for name, (code, _) in listed.items():
        assert name in rows, f"{name} is missing from {DOC.name}"
        assert rows[name] == (code, reasons.by_code(code).status), name
    assert set(rows) == set(listed), "the doc lists cases that are not deviations"


def test_doc_mentions_every_setting_without_an_equivalent() -> None:
    text = DOC.read_text()
    for name in (*NO_EQUIVALENT, *MAPPED):
        assert f"`{name}`" in text, name
    for name in (*WITH_HOST_DIFFERENCES, *WITH_HOST_REFUSED_WITH):
        assert f"`{name}`" in text, name

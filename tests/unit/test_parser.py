"""The sans-IO request parser: bytes in, events out.

Every input is fed whole, line by line, cut before each LF, byte by byte and in seeded random
pieces (`parse` below); all of these must give the same outcome, event for event, or the test
fails. The outcome is normalised: the requests seen (each head with its joined body and its
trailers) and how the stream ended (cleanly, waiting for data, or the refusal's reason code).
"""

from __future__ import annotations

import dataclasses
import random
import re

import pytest

from hardserve.http import reasons
from hardserve.http.limits import Limits
from hardserve.http.parser import (
    CLOSED,
    NEED_DATA,
    PAUSED,
    BodyData,
    EndOfBody,
    Refusal,
    RequestHead,
    RequestParser,
)
from hardserve.http.target import DEFAULT_PATH_POLICY, PathPolicy

SPLIT_SEED = 1234
# Largest piece of each random splitting: pieces are 1..N bytes long.
RANDOM_PIECE_MAX = (2, 5, 17, 64)

Header = tuple[bytes, bytes]


# -- the one feeding helper ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Request:
    """One request as the parser delivered it."""

    method: bytes
    raw_target: bytes
    raw_path: bytes
    path: bytes
    query: bytes
    http_version: bytes
    headers: tuple[Header, ...]
    content_length: int | None
    chunked: bool
    keep_alive: bool
    expect_continue: bool
    host: bytes | None
    body: bytes = b""
    trailers: tuple[Header, ...] = ()
    complete: bool = False  # the message ended (PAUSED was reached)


@dataclasses.dataclass(frozen=True)
class Outcome:
    requests: tuple[Request, ...]
    # "closed" (clean EOF between requests), "need_data" (no EOF fed) or a refusal's code.
    end: str

    @property
    def refusal(self) -> str | None:
        return None if self.end in ("closed", "need_data") else self.end

    @property
    def only(self) -> Request:
        assert len(self.requests) == 1, self
        return self.requests[0]


def _from_head(head: RequestHead) -> Request:
    return Request(
        method=head.method,
        raw_target=head.raw_target,
        raw_path=head.target.raw_path,
        path=head.target.path,
        query=head.target.query,
        http_version=head.http_version,
        headers=head.headers,
        content_length=head.content_length,
        chunked=head.chunked,
        keep_alive=head.keep_alive,
        expect_continue=head.expect_continue,
        host=head.host,
    )


def drive(
    pieces: list[bytes],
    limits: Limits | None = None,
    *,
    refuse_underscore: bool = False,
    eof: bool = True,
    path_policy: PathPolicy = DEFAULT_PATH_POLICY,
) -> Outcome:
    """Feed `pieces` one at a time, pulling every event after each; then EOF (if `eof`)."""
    parser = RequestParser(
        limits or Limits(), refuse_underscore_headers=refuse_underscore, path_policy=path_policy
    )
    requests: list[Request] = []

    def pull() -> str | None:
        for _ in range(1_000_000):
            event = parser.next_event()
            if event is NEED_DATA:
                return None
            if event is PAUSED:
                requests[-1] = dataclasses.replace(requests[-1], complete=True)
                parser.start_next_cycle()
            elif event is CLOSED:
                return "closed"
            elif isinstance(event, Refusal):
                assert event.reason is reasons.by_code(event.reason.code)
                assert parser.next_event() is event, "a refusal must be final"
                return event.reason.code
            elif isinstance(event, RequestHead):
                requests.append(_from_head(event))
            elif isinstance(event, BodyData):
                assert event.data, "BodyData without bytes"
                last = requests[-1]
                requests[-1] = dataclasses.replace(last, body=last.body + event.data)
            elif isinstance(event, EndOfBody):
                requests[-1] = dataclasses.replace(requests[-1], trailers=event.trailers)
            else:  # pragma: no cover - an unknown event is a failure
                raise AssertionError(f"unexpected event {event!r}")
        raise AssertionError("the parser never asked for more data")

    for piece in pieces:
        parser.feed(piece)
        end = pull()
        if end is not None:
            return Outcome(tuple(requests), end)
    if not eof:
        return Outcome(tuple(requests), "need_data")
    parser.feed_eof()
    end = pull()
    assert end is not None, "after EOF the parser must end the stream"
    return Outcome(tuple(requests), end)


def splittings(data: bytes) -> dict[str, list[bytes]]:
    """The ways the same bytes are cut into reads."""
    cuts: dict[str, list[bytes]] = {
        "whole": [data],
        "lines": [p for p in re.split(rb"(?<=\n)", data) if p],
        "before_lf": [p for p in re.split(rb"(?=\n)", data) if p],
        "bytes": [data[i : i + 1] for i in range(len(data))],
    }
    rng = random.Random(SPLIT_SEED)
    for piece_max in RANDOM_PIECE_MAX:
        pieces = []
        pos = 0
        while pos < len(data):
            size = rng.randint(1, piece_max)
            pieces.append(data[pos : pos + size])
            pos += size
        cuts[f"random{piece_max}"] = pieces
    for name, pieces in cuts.items():
        assert b"".join(pieces) == data, name
    return cuts


def parse(
    data: bytes,
    limits: Limits | None = None,
    *,
    refuse_underscore: bool = False,
    eof: bool = True,
    path_policy: PathPolicy = DEFAULT_PATH_POLICY,
) -> Outcome:
    """The outcome of `data`, checked to be the same under every splitting."""
    outcomes = {
        name: drive(
            pieces, limits, refuse_underscore=refuse_underscore, eof=eof, path_policy=path_policy
        )
        for name, pieces in splittings(data).items()
    }
    reference = outcomes["whole"]
    for name, outcome in outcomes.items():
        assert outcome == reference, (
            f"fed {name!r} the parser gave\n  {outcome}\nbut fed whole\n  {reference}"
        )
    return reference


def message(first_line: bytes, *fields: bytes, body: bytes = b"") -> bytes:
    """A request: its first line, header field lines, the empty line, then `body`."""
    return first_line + b"\r\n" + b"".join(f + b"\r\n" for f in fields) + b"\r\n" + body


def get(*fields: bytes, target: bytes = b"/", version: bytes = b"HTTP/1.1") -> bytes:
    return message(b"GET " + target + b" " + version, *fields)


def post_chunked(chunks: bytes, *fields: bytes) -> bytes:
    return message(
        b"POST /upload HTTP/1.1", b"Host: x", b"Transfer-Encoding: chunked", *fields, body=chunks
    )


def post_length(length: bytes, body: bytes = b"") -> bytes:
    return message(b"POST /upload HTTP/1.1", b"Host: x", b"Content-Length: " + length, body=body)


# -- the helper itself -----------------------------------------------------------------------


def test_splittings_cut_at_every_kind_of_boundary() -> None:
    data = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    cuts = splittings(data)
    assert cuts["lines"] == [b"GET / HTTP/1.1\r\n", b"Host: x\r\n", b"\r\n"]
    assert cuts["before_lf"][:2] == [b"GET / HTTP/1.1\r", b"\nHost: x\r"]
    assert len(cuts["bytes"]) == len(data)
    assert all(len(cuts[f"random{n}"]) > 1 for n in RANDOM_PIECE_MAX[:3])
    # Seeded: the same cuts every run.
    assert splittings(data) == cuts


def test_outcome_records_head_body_trailers_and_end() -> None:
    data = post_chunked(b"5\r\nhello\r\n0\r\nX-Sum: 1\r\n\r\n")
    outcome = parse(data)
    assert outcome.end == "closed"
    request = outcome.only
    assert (request.body, request.trailers, request.complete) == (
        b"hello",
        ((b"x-sum", b"1"),),
        True,
    )
    assert parse(data, eof=False).end == "need_data"


# -- a plain request -------------------------------------------------------------------------


def test_simple_get() -> None:
    outcome = parse(get(b"Host: example.com", b"Accept: */*", b"X-Mixed-Case: Value"))
    assert outcome.end == "closed"
    assert outcome.only == Request(
        method=b"GET",
        raw_target=b"/",
        raw_path=b"/",
        path=b"/",
        query=b"",
        http_version=b"1.1",
        headers=((b"host", b"example.com"), (b"accept", b"*/*"), (b"x-mixed-case", b"Value")),
        content_length=None,
        chunked=False,
        keep_alive=True,
        expect_continue=False,
        host=b"example.com",
        complete=True,
    )


def test_field_values_lose_surrounding_whitespace_only() -> None:
    request = parse(get(b"Host: x", b"X-A: \t a \t b \t", b"X-B:", b"X-C:c")).only
    assert request.headers[1:] == ((b"x-a", b"a \t b"), (b"x-b", b""), (b"x-c", b"c"))


def test_obs_text_in_a_value_is_kept_as_bytes() -> None:
    assert parse(get(b"Host: x", b"X-V: caf\xc3\xa9")).only.headers[1] == (b"x-v", b"caf\xc3\xa9")


def test_repeated_fields_are_all_kept_in_order() -> None:
    request = parse(get(b"Host: x", b"Accept: a", b"X-Other: o", b"accept: b")).only
    assert request.headers == (
        (b"host", b"x"),
        (b"accept", b"a"),
        (b"x-other", b"o"),
        (b"accept", b"b"),
    )


def test_no_data_then_eof_is_a_clean_close() -> None:
    assert drive([]) == Outcome((), "closed")
    assert drive([], eof=False) == Outcome((), "need_data")


# -- keep-alive ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "fields", "keep_alive"),
    [
        (b"HTTP/1.1", (), True),
        (b"HTTP/1.1", (b"Connection: keep-alive",), True),
        (b"HTTP/1.1", (b"Connection: close",), False),
        (b"HTTP/1.1", (b"Connection: Close",), False),
        (b"HTTP/1.1", (b"Connection: Upgrade, close",), False),
        (b"HTTP/1.1", (b"Connection: keep-alive", b"Connection: close"), False),
        (b"HTTP/1.1", (b"Connection: closed",), True),
        (b"HTTP/1.0", (), False),
        (b"HTTP/1.0", (b"Connection: keep-alive",), True),
        (b"HTTP/1.0", (b"Connection: Keep-Alive",), True),
        (b"HTTP/1.0", (b"Connection: foo , keep-alive",), True),
        (b"HTTP/1.0", (b"Connection: keep-alive, close",), False),
        (b"HTTP/1.0", (b"Connection: close",), False),
        (b"HTTP/1.0", (b"Keep-Alive: 300",), False),
    ],
)
def test_keep_alive(version: bytes, fields: tuple[bytes, ...], keep_alive: bool) -> None:
    request = parse(get(b"Host: x", *fields, version=version)).only
    assert request.keep_alive is keep_alive
    assert request.http_version == version[5:]


def test_http10_needs_no_host() -> None:
    request = parse(get(version=b"HTTP/1.0")).only
    assert (request.host, request.http_version) == (None, b"1.0")


# -- pipelining ------------------------------------------------------------------------------


def test_pipelined_requests_of_every_framing() -> None:
    data = (
        get(b"Host: x", target=b"/one")
        + post_length(b"5", b"hello")
        + post_chunked(b"3\r\nabc\r\n2\r\nde\r\n0\r\nX-T: t\r\n\r\n")
        + message(b"POST /empty HTTP/1.1", b"Host: x", b"Content-Length: 0")
        + get(b"Host: x", target=b"/last?q=1", version=b"HTTP/1.0")
    )
    outcome = parse(data)
    assert outcome.end == "closed"
    assert [(r.method, r.raw_target, r.body, r.trailers, r.complete) for r in outcome.requests] == [
        (b"GET", b"/one", b"", (), True),
        (b"POST", b"/upload", b"hello", (), True),
        (b"POST", b"/upload", b"abcde", ((b"x-t", b"t"),), True),
        (b"POST", b"/empty", b"", (), True),
        (b"GET", b"/last?q=1", b"", (), True),
    ]


def test_a_body_that_looks_like_a_request_stays_a_body() -> None:
    inner = get(b"Host: evil")
    data = post_length(str(len(inner)).encode(), inner) + get(b"Host: x", target=b"/next")
    outcome = parse(data)
    assert [r.raw_target for r in outcome.requests] == [b"/upload", b"/next"]
    assert outcome.requests[0].body == inner


def test_refusal_after_good_pipelined_requests_keeps_them() -> None:
    data = get(b"Host: x", target=b"/a") + get(b"Host: x", target=b"/b") + b"GET /c HTTP/1.1\n\n"
    outcome = parse(data)
    assert [r.raw_target for r in outcome.requests] == [b"/a", b"/b"]
    assert all(r.complete for r in outcome.requests)
    assert outcome.end == "bare_lf"


def test_next_head_waits_for_start_next_cycle() -> None:
    parser = RequestParser(Limits())
    parser.feed(get(b"Host: x", target=b"/a") + get(b"Host: x", target=b"/b"))
    first = parser.next_event()
    assert isinstance(first, RequestHead) and first.raw_target == b"/a"
    assert parser.message_done
    assert parser.next_event() is PAUSED
    assert parser.next_event() is PAUSED
    parser.start_next_cycle()
    second = parser.next_event()
    assert isinstance(second, RequestHead) and second.raw_target == b"/b"


def test_start_next_cycle_inside_a_body_is_an_error() -> None:
    parser = RequestParser(Limits())
    parser.feed(post_length(b"5", b"he"))
    assert isinstance(parser.next_event(), RequestHead)
    assert parser.in_body
    with pytest.raises(RuntimeError):
        parser.start_next_cycle()


# -- Content-Length bodies -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "length"),
    [(b"5", 5), (b"005", 5), (b"0", 0), (b" 5", 5), (b"5 \t", 5), (b"000000000000000005", 5)],
)
def test_content_length_accepted(value: bytes, length: int) -> None:
    request = parse(post_length(value, b"hello"[:length])).only
    assert (request.content_length, request.body, request.chunked) == (length, b"hello"[:length], False)
    assert request.complete


def test_content_length_body_split_in_many_reads() -> None:
    body = bytes(range(256)) * 4
    assert parse(post_length(b"1024", body)).only.body == body


def test_zero_length_body_gives_no_body_events() -> None:
    parser = RequestParser(Limits())
    parser.feed(post_length(b"0"))
    head = parser.next_event()
    assert isinstance(head, RequestHead) and not head.has_body
    assert parser.next_event() is PAUSED


# -- chunked bodies --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("chunks", "body"),
    [
        (b"5\r\nhello\r\n0\r\n\r\n", b"hello"),
        (b"5\r\nhello\r\n6\r\n world\r\n000\r\n\r\n", b"hello world"),
        (b"0005\r\nhello\r\n0\r\n\r\n", b"hello"),
        (b"A\r\n0123456789\r\na\r\nabcdefghij\r\n0\r\n\r\n", b"0123456789abcdefghij"),
        (b"0\r\n\r\n", b""),
        # Extensions (RFC 9112 section 7.1.1), ignored.
        (b"5;name\r\nhello\r\n0\r\n\r\n", b"hello"),
        (b"5; some; parameters=stuff\r\nhello\r\n0;last=1\r\n\r\n", b"hello"),
        (b"5 ;a = b\t;c\r\nhello\r\n0\r\n\r\n", b"hello"),
        (b'5;foo="bar baz"\r\nhello\r\n0\r\n\r\n', b"hello"),
        (b'5;q="a\\"b;c"\r\nhello\r\n0\r\n\r\n', b"hello"),
        # A body holding CRLFs and bytes that look like chunk lines.
        (b"7\r\n0\r\n\r\nab\r\n0\r\n\r\n", b"0\r\n\r\nab"),
    ],
)
def test_chunked_body(chunks: bytes, body: bytes) -> None:
    outcome = parse(post_chunked(chunks))
    assert outcome.end == "closed"
    request = outcome.only
    assert (request.chunked, request.content_length, request.body) == (True, None, body)
    assert (request.trailers, request.complete) == ((), True)


def test_chunked_trailers() -> None:
    chunks = b"5\r\nhello\r\n0\r\nVary: *\r\nX-Checksum:  abc \r\nX-Empty:\r\n\r\n"
    request = parse(post_chunked(chunks)).only
    assert request.body == b"hello"
    assert request.trailers == ((b"vary", b"*"), (b"x-checksum", b"abc"), (b"x-empty", b""))


def test_transfer_encoding_is_case_insensitive() -> None:
    data = message(
        b"POST / HTTP/1.1", b"Host: x", b"Transfer-Encoding: Chunked", body=b"1\r\na\r\n0\r\n\r\n"
    )
    assert parse(data).only.body == b"a"


# -- Expect: 100-continue --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "value", "expected"),
    [
        (b"HTTP/1.1", b"100-continue", True),
        (b"HTTP/1.1", b"100-Continue", True),
        (b"HTTP/1.1", b"something-else", False),
        (b"HTTP/1.0", b"100-continue", False),
    ],
)
def test_expect_continue(version: bytes, value: bytes, expected: bool) -> None:
    data = message(
        b"PUT /f " + version, b"Host: x", b"Expect: " + value, b"Content-Length: 2", body=b"ok"
    )
    request = parse(data).only
    assert request.expect_continue is expected
    assert request.body == b"ok"


def test_expect_continue_head_arrives_before_any_body_byte() -> None:
    data = message(b"PUT /f HTTP/1.1", b"Host: x", b"Expect: 100-continue", b"Content-Length: 2")
    outcome = parse(data, eof=False)
    assert outcome.end == "need_data"
    assert outcome.only.expect_continue and outcome.only.body == b""


# -- header names with '_' -------------------------------------------------------------------


def test_underscore_names_are_dropped_by_default() -> None:
    data = message(
        b"POST / HTTP/1.0",
        b"X_Forwarded_For: 1.2.3.4",
        b"Transfer_Encoding: chunked",
        b"Content-Length: 2",
        b"Content_Length: 99",
        b"X-Kept: yes",
        body=b"ok",
    )
    request = parse(data).only
    assert request.headers == ((b"content-length", b"2"), (b"x-kept", b"yes"))
    assert (request.content_length, request.chunked, request.body) == (2, False, b"ok")


def test_underscore_names_are_refused_by_setting() -> None:
    outcome = parse(get(b"Host: x", b"X_Forwarded_For: 1.2.3.4"), refuse_underscore=True)
    assert (outcome.requests, outcome.end) == ((), "underscore_header")
    assert parse(get(b"Host: x", b"X-Forwarded-For: 1.2.3.4"), refuse_underscore=True).only


# -- empty lines before the request line -----------------------------------------------------


@pytest.mark.parametrize("prefix", [b"\r\n", b"\r\n\r\n"])
def test_leading_empty_lines_are_skipped(prefix: bytes) -> None:
    assert parse(prefix + get(b"Host: x")).only.raw_target == b"/"


def test_empty_lines_between_pipelined_requests_are_skipped() -> None:
    data = post_length(b"2", b"ok") + b"\r\n" + get(b"Host: x", target=b"/b")
    assert [r.raw_target for r in parse(data).requests] == [b"/upload", b"/b"]


def test_empty_lines_then_eof_is_a_clean_close() -> None:
    assert parse(b"\r\n") == Outcome((), "closed")


# -- request-target forms --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "target", "raw_path", "path", "query"),
    [
        (b"GET", b"/a/b?x=1&y=2", b"/a/b", b"/a/b", b"x=1&y=2"),
        (b"GET", b"/a%20b/%41?q=%20", b"/a%20b/%41", b"/a b/A", b"q=%20"),
        (b"GET", b"/page?q=1#frag", b"/page", b"/page", b"q=1"),
        (b"GET", b"///x", b"///x", b"///x", b""),
        (b"OPTIONS", b"*", b"*", b"*", b""),
        (b"GET", b"http://example.com/foo?q=1", b"/foo", b"/foo", b"q=1"),
        (b"GET", b"https://example.com", b"/", b"/", b""),
        (b"GET", b"http://[::1]:8080/foo", b"/foo", b"/foo", b""),
        (b"GET", b"http://example.com:8080?q", b"/", b"/", b"q"),
    ],
)
def test_accepted_targets(
    method: bytes, target: bytes, raw_path: bytes, path: bytes, query: bytes
) -> None:
    request = parse(message(method + b" " + target + b" HTTP/1.1", b"Host: example.com")).only
    assert (request.method, request.raw_target) == (method, target)
    assert (request.raw_path, request.path, request.query) == (raw_path, path, query)


def test_method_is_kept_as_sent() -> None:
    assert parse(message(b"get / HTTP/1.1", b"Host: x")).only.method == b"get"
    assert parse(message(b"PURGE / HTTP/1.1", b"Host: x")).only.method == b"PURGE"


# -- Host ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host", [b"example.com", b"example.com:8080", b"[::1]:80", b"0.0.0.0=5000", b"a-b.c_d", b""]
)
def test_accepted_host_values(host: bytes) -> None:
    assert parse(get(b"Host: " + host)).only.host == host


# -- refusals --------------------------------------------------------------------------------

LONG = b"a" * 100

# (id, bytes, reason code, limits or None, how many RequestHeads come before the refusal)
REFUSALS: list[tuple[str, bytes, str, Limits | None, int]] = [
    # Line endings.
    ("bare-lf-request-line", b"GET / HTTP/1.1\nHost: x\r\n\r\n", "bare_lf", None, 0),
    ("bare-lf-header", b"GET / HTTP/1.1\r\nHost: x\nX: y\r\n\r\n", "bare_lf", None, 0),
    ("bare-lf-empty-line", b"GET / HTTP/1.1\r\nHost: x\r\n\n", "bare_lf", None, 0),
    ("bare-lf-lf-only-head", b"GET / HTTP/1.1\n\n", "bare_lf", None, 0),
    ("bare-lf-first-byte", b"\nGET / HTTP/1.1\r\nHost: x\r\n\r\n", "bare_lf", None, 0),
    ("bare-lf-after-crlf", b"\r\n\nGET / HTTP/1.1\r\nHost: x\r\n\r\n", "bare_lf", None, 0),
    ("bare-cr-request-line", b"GET /a\rb HTTP/1.1\r\nHost: x\r\n\r\n", "bare_cr", None, 0),
    ("bare-cr-header", b"GET / HTTP/1.1\r\nHost: x\r\nX: a\rb\r\n\r\n", "bare_cr", None, 0),
    ("bare-cr-crcr-lf", b"GET / HTTP/1.1\r\nHost: x\r\r\n\r\n", "bare_cr", None, 0),
    ("obs-fold-sp", b"GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n", "obs_fold", None, 0),
    ("obs-fold-htab", b"GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n\tb\r\n\r\n", "obs_fold", None, 0),
    ("obs-fold-first-field", b"GET / HTTP/1.1\r\n Host: x\r\n\r\n", "obs_fold", None, 0),
    ("leading-space", b" GET / HTTP/1.1\r\nHost: x\r\n\r\n", "leading_whitespace", None, 0),
    ("leading-htab", b"\tGET / HTTP/1.1\r\nHost: x\r\n\r\n", "leading_whitespace", None, 0),
    ("three-empty-lines", b"\r\n\r\n\r\n" + get(b"Host: x"), "leading_whitespace", None, 0),
    ("leading-cr", b"\rGET / HTTP/1.1\r\nHost: x\r\n\r\n", "leading_whitespace", None, 0),
    # The request line.
    ("two-fields", b"GET /\r\nHost: x\r\n\r\n", "malformed_request_line", None, 0),
    ("four-fields", b"GET / x HTTP/1.1\r\nHost: x\r\n\r\n", "malformed_request_line", None, 0),
    ("double-space", b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n", "malformed_request_line", None, 0),
    ("trailing-space", b"GET / HTTP/1.1 \r\nHost: x\r\n\r\n", "malformed_request_line", None, 0),
    ("htab-separator", b"GET\t/ HTTP/1.1\r\nHost: x\r\n\r\n", "malformed_request_line", None, 0),
    ("method-colon", b"GET: / HTTP/1.1\r\nHost: x\r\n\r\n", "malformed_request_line", None, 0),
    ("method-nul", b"GET\x00 / HTTP/1.1\r\nHost: x\r\n\r\n", "malformed_request_line", None, 0),
    ("method-utf8", b"GET\xc3\x9f / HTTP/1.1\r\nHost: x\r\n\r\n", "malformed_request_line", None, 0),
    ("version-lower", b"GET / http/1.1\r\nHost: x\r\n\r\n", "malformed_request_line", None, 0),
    ("version-ftp", b"GET / FTP/1.1\r\nHost: x\r\n\r\n", "malformed_request_line", None, 0),
    ("version-11", b"GET / HTTP/11\r\nHost: x\r\n\r\n", "malformed_request_line", None, 0),
    ("version-1.10", b"GET / HTTP/1.10\r\nHost: x\r\n\r\n", "malformed_request_line", None, 0),
    ("version-none", b"GET / \r\nHost: x\r\n\r\n", "malformed_request_line", None, 0),
    ("http-2.0", b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", "unsupported_version", None, 0),
    ("http-1.2", b"GET / HTTP/1.2\r\nHost: x\r\n\r\n", "unsupported_version", None, 0),
    ("http-0.9", b"GET / HTTP/0.9\r\n\r\n", "unsupported_version", None, 0),
    # Targets.
    ("asterisk-get", get(b"Host: x", target=b"*"), "invalid_target", None, 0),
    ("authority-get", get(b"Host: x", target=b"example.com:443"), "invalid_target", None, 0),
    ("relative", get(b"Host: x", target=b"foo/bar"), "invalid_target", None, 0),
    ("absolute-userinfo", get(b"Host: x", target=b"http://u:p@example.com/"), "invalid_target", None, 0),
    ("absolute-bad-authority", get(b"Host: x", target=b"s://]ufd/:"), "invalid_target", None, 0),
    # The path policy (every case: docs/paths.md and test_paths.py).
    ("path-climbs", get(b"Host: x", target=b"/a/../../x"), "path_escapes_root", None, 0),
    ("path-bad-escape", get(b"Host: x", target=b"/a%zz"), "path_bad_escape", None, 0),
    ("path-encoded-slash", get(b"Host: x", target=b"/a%2Fb"), "path_encoded_slash", None, 0),
    ("path-backslash", get(b"Host: x", target=b"/a%5Cb"), "path_backslash", None, 0),
    ("path-nul", get(b"Host: x", target=b"/a%00"), "path_control_char", None, 0),
    ("path-overlong", get(b"Host: x", target=b"/%C0%AE%C0%AE/"), "path_overlong_utf8", None, 0),
    ("connect", b"CONNECT example.com:443 HTTP/1.1\r\nHost: x\r\n\r\n", "method_not_supported", None, 0),
    ("connect-ipv6", b"CONNECT [::1]:443 HTTP/1.1\r\nHost: x\r\n\r\n", "method_not_supported", None, 0),
    # Header fields.
    ("no-colon", get(b"Host: x", b"NoColon"), "malformed_header", None, 0),
    ("space-before-colon", get(b"Host: x", b"X-A : 1"), "malformed_header", None, 0),
    ("empty-name", get(b"Host: x", b": 1"), "malformed_header", None, 0),
    ("space-in-name", get(b"Host: x", b"X A: 1"), "malformed_header", None, 0),
    ("nul-in-name", get(b"Host: x", b"X\x00A: 1"), "malformed_header", None, 0),
    ("utf8-in-name", get(b"Host: x", b"X\xc3\x9f: 1"), "malformed_header", None, 0),
    ("nul-in-value", get(b"Host: x", b"X-A: a\x00b"), "malformed_header", None, 0),
    ("bel-in-value", get(b"Host: x", b"X-A: a\x07b"), "malformed_header", None, 0),
    ("del-in-value", get(b"Host: x", b"X-A: a\x7fb"), "malformed_header", None, 0),
    ("underscore-refused", get(b"Host: x", b"A_B: 1"), "underscore_header", None, 0),
    # Host.
    ("missing-host", get(), "missing_host", None, 0),
    ("missing-host-underscore", get(b"Ho_st: x"), "missing_host", None, 0),
    ("two-hosts", get(b"Host: a", b"Host: a"), "multiple_host", None, 0),
    ("two-hosts-http10", get(b"Host: a", b"Host: b", version=b"HTTP/1.0"), "multiple_host", None, 0),
    ("host-space", get(b"Host: a b"), "invalid_host", None, 0),
    ("host-slash", get(b"Host: a/b"), "invalid_host", None, 0),
    ("host-at", get(b"Host: u@a"), "invalid_host", None, 0),
    ("host-bracket", get(b"Host: [::1"), "invalid_host", None, 0),
    ("host-port-letters", get(b"Host: a:http"), "invalid_host", None, 0),
    ("host-utf8", get(b"Host: caf\xc3\xa9"), "invalid_host", None, 0),
    # Single-valued fields sent twice.
    ("two-content-types", get(b"Host: x", b"Content-Type: a/b", b"Content-Type: c/d"), "duplicate_field", None, 0),
    ("two-authorizations", get(b"Host: x", b"Authorization: a", b"authorization: a"), "duplicate_field", None, 0),
    ("two-ranges", get(b"Host: x", b"Range: bytes=0-1", b"Range: bytes=2-3"), "duplicate_field", None, 0),
    # Body framing in the head.
    ("cl-and-te", message(b"POST / HTTP/1.1", b"Host: x", b"Content-Length: 3", b"Transfer-Encoding: chunked"), "cl_te_conflict", None, 0),
    ("te-and-cl", message(b"POST / HTTP/1.1", b"Host: x", b"Transfer-Encoding: chunked", b"Content-Length: 3"), "cl_te_conflict", None, 0),
    ("cl-and-te-identity", message(b"POST / HTTP/1.1", b"Host: x", b"Transfer-Encoding: identity", b"Content-Length: 3"), "cl_te_conflict", None, 0),
    ("two-cl-same", message(b"POST / HTTP/1.1", b"Host: x", b"Content-Length: 3", b"Content-Length: 3"), "multiple_content_length", None, 0),
    ("two-cl-differ", message(b"POST / HTTP/1.1", b"Host: x", b"Content-Length: 3", b"content-length: 2"), "multiple_content_length", None, 0),
    ("cl-plus", post_length(b"+1", b"x"), "invalid_content_length", None, 0),
    ("cl-minus-zero", post_length(b"-0"), "invalid_content_length", None, 0),
    ("cl-minus", post_length(b"-1"), "invalid_content_length", None, 0),
    ("cl-hex", post_length(b"0x10"), "invalid_content_length", None, 0),
    ("cl-underscore", post_length(b"1_0"), "invalid_content_length", None, 0),
    ("cl-inner-space", post_length(b"1 0"), "invalid_content_length", None, 0),
    ("cl-list", post_length(b"5, 5", b"hello"), "invalid_content_length", None, 0),
    ("cl-decimal", post_length(b"1.0"), "invalid_content_length", None, 0),
    ("cl-exponent", post_length(b"1e3"), "invalid_content_length", None, 0),
    ("cl-empty", post_length(b""), "invalid_content_length", None, 0),
    ("cl-arabic-indic", post_length("\u0661".encode()), "invalid_content_length", None, 0),
    ("cl-19-digits", post_length(b"1" * 19), "invalid_content_length", None, 0),
    ("te-gzip", message(b"POST / HTTP/1.1", b"Host: x", b"Transfer-Encoding: gzip"), "te_not_chunked", None, 0),
    ("te-identity", message(b"POST / HTTP/1.1", b"Host: x", b"Transfer-Encoding: identity"), "te_not_chunked", None, 0),
    ("te-gzip-chunked", post_chunked(b"0\r\n\r\n").replace(b": chunked", b": gzip, chunked"), "te_not_chunked", None, 0),
    ("te-chunked-chunked", post_chunked(b"0\r\n\r\n").replace(b": chunked", b": chunked, chunked"), "te_not_chunked", None, 0),
    ("te-two-fields", post_chunked(b"0\r\n\r\n", b"Transfer-Encoding: chunked"), "te_not_chunked", None, 0),
    ("te-empty", message(b"POST / HTTP/1.1", b"Host: x", b"Transfer-Encoding:"), "te_not_chunked", None, 0),
    ("te-http10", message(b"POST / HTTP/1.0", b"Transfer-Encoding: chunked", body=b"0\r\n\r\n"), "te_http10", None, 0),
    # Chunked bodies: the head has gone out, the body never ends.
    ("chunk-size-x", post_chunked(b"x\r\nhello\r\n0\r\n\r\n"), "invalid_chunk_size", None, 1),
    ("chunk-size-minus", post_chunked(b"-5\r\nhello\r\n0\r\n\r\n"), "invalid_chunk_size", None, 1),
    ("chunk-size-plus", post_chunked(b"+5\r\nhello\r\n0\r\n\r\n"), "invalid_chunk_size", None, 1),
    ("chunk-size-0x", post_chunked(b"0x5\r\nhello\r\n0\r\n\r\n"), "invalid_chunk_size", None, 1),
    ("chunk-size-underscore", post_chunked(b"6_0\r\nhello\r\n0\r\n\r\n"), "invalid_chunk_size", None, 1),
    ("chunk-size-leading-sp", post_chunked(b" 5\r\nhello\r\n0\r\n\r\n"), "invalid_chunk_size", None, 1),
    ("chunk-size-trailing-sp", post_chunked(b"5\r\nhello\r\n0 \r\n\r\n"), "invalid_chunk_size", None, 1),
    ("chunk-size-empty", post_chunked(b"\r\nhello\r\n0\r\n\r\n"), "invalid_chunk_size", None, 1),
    ("chunk-ext-no-size", post_chunked(b";a=b\r\nhello\r\n0\r\n\r\n"), "invalid_chunk_size", None, 1),
    ("chunk-ext-no-name", post_chunked(b"5;\r\nhello\r\n0\r\n\r\n"), "invalid_chunk_size", None, 1),
    ("chunk-ext-bare-cr", post_chunked(b"5;a=b\rc\r\nhello\r\n0\r\n\r\n"), "invalid_chunk_size", None, 1),
    ("chunk-ext-open-quote", post_chunked(b'5;a="b\r\nhello\r\n0\r\n\r\n'), "invalid_chunk_size", None, 1),
    ("chunk-ext-empty-value", post_chunked(b"5;a=\r\nhello\r\n0\r\n\r\n"), "invalid_chunk_size", None, 1),
    ("chunk-size-bare-lf", post_chunked(b"5\nhello\r\n0\r\n\r\n"), "bare_lf", None, 1),
    ("chunk-size-lf-only", post_chunked(b"5\r\nhello\r\n\n0\r\n\r\n"), "bare_lf", None, 1),
    ("chunk-data-too-long", post_chunked(b"5\r\nhello!\r\n0\r\n\r\n"), "bad_chunk_terminator", None, 1),
    ("chunk-data-lf", post_chunked(b"5\r\nhello\n0\r\n\r\n"), "bad_chunk_terminator", None, 1),
    ("chunk-data-cr-x", post_chunked(b"5\r\nhello\rX0\r\n\r\n"), "bad_chunk_terminator", None, 1),
    ("chunk-data-short", post_chunked(b"6\r\nhello\r\n0\r\n\r\n"), "bad_chunk_terminator", None, 1),
    ("trailer-content-length", post_chunked(b"0\r\nContent-Length: 5\r\n\r\n"), "forbidden_trailer", None, 1),
    ("trailer-transfer-encoding", post_chunked(b"0\r\nTransfer-Encoding: chunked\r\n\r\n"), "forbidden_trailer", None, 1),
    ("trailer-host", post_chunked(b"0\r\nHost: evil\r\n\r\n"), "forbidden_trailer", None, 1),
    ("trailer-authorization", post_chunked(b"0\r\nX-A: 1\r\nAuthorization: a\r\n\r\n"), "forbidden_trailer", None, 1),
    ("trailer-cookie", post_chunked(b"0\r\nCookie: a=1\r\n\r\n"), "forbidden_trailer", None, 1),
    ("trailer-content-type", post_chunked(b"0\r\ncontent-type: a/b\r\n\r\n"), "forbidden_trailer", None, 1),
    ("trailer-no-colon", post_chunked(b"0\r\nNoColon\r\n\r\n"), "malformed_trailer", None, 1),
    ("trailer-bad-name", post_chunked(b"0\r\nX Y: 1\r\n\r\n"), "malformed_trailer", None, 1),
    ("trailer-space-before-colon", post_chunked(b"0\r\nX-Y : 1\r\n\r\n"), "malformed_trailer", None, 1),
    ("trailer-nul-value", post_chunked(b"0\r\nX-Y: a\x00b\r\n\r\n"), "malformed_trailer", None, 1),
    ("trailer-obs-fold", post_chunked(b"0\r\nX-Y: a\r\n b\r\n\r\n"), "obs_fold", None, 1),
    ("trailer-bare-cr", post_chunked(b"0\r\nX-Y: a\rb\r\n\r\n"), "bare_cr", None, 1),
    ("trailer-bare-lf", post_chunked(b"0\r\nX-Y: a\n\r\n"), "bare_lf", None, 1),
    ("trailer-end-bare-lf", post_chunked(b"0\r\n\n"), "bare_lf", None, 1),
    # Sizes.
    ("chunk-size-16-hex-digits", post_chunked(b"1" + b"0" * 15 + b"\r\n"), "body_too_large", None, 1),
    ("chunk-size-huge", post_chunked(b"ffffffffffffffffffffffff\r\n"), "body_too_large", None, 1),
    # The connection ends too early.
    ("eof-in-request-line", b"GET / HT", "incomplete_head", None, 0),
    ("eof-after-request-line", b"GET /foo/bar HTTP/1.0\r\nbaz", "incomplete_head", None, 0),
    ("eof-before-empty-line", b"GET / HTTP/1.1\r\nHost: x\r\n", "incomplete_head", None, 0),
    ("eof-after-cr", b"GET / HTTP/1.1\r\nHost: x\r\n\r", "incomplete_head", None, 0),
    ("eof-lone-cr", b"\r", "incomplete_head", None, 0),
    ("eof-in-length-body", post_length(b"10", b"hello"), "incomplete_body", None, 1),
    ("eof-before-length-body", post_length(b"10"), "incomplete_body", None, 1),
    ("eof-in-chunk-data", post_chunked(b"a\r\nhello"), "incomplete_body", None, 1),
    ("eof-in-chunk-size", post_chunked(b"5\r\nhello\r\n1"), "incomplete_body", None, 1),
    ("eof-before-chunk-crlf", post_chunked(b"5\r\nhello"), "incomplete_body", None, 1),
    ("eof-inside-chunk-crlf", post_chunked(b"5\r\nhello\r"), "incomplete_body", None, 1),
    ("eof-in-trailers", post_chunked(b"5\r\nhello\r\n0\r\nX-A: 1\r\n"), "incomplete_body", None, 1),
    ("eof-no-final-crlf", post_chunked(b"0\r\n"), "incomplete_body", None, 1),
]


@pytest.mark.parametrize(
    ("data", "code", "limits", "heads"),
    [pytest.param(data, code, limits, heads, id=name) for name, data, code, limits, heads in REFUSALS],
)
def test_refusal(data: bytes, code: str, limits: Limits | None, heads: int) -> None:
    outcome = parse(data, limits, refuse_underscore=code == "underscore_header")
    assert outcome.end == code
    assert len(outcome.requests) == heads
    # A refused request never completes: no EndOfBody, no PAUSED.
    assert not any(r.complete for r in outcome.requests)


def test_refusal_ids_are_unique() -> None:
    names = [name for name, *_ in REFUSALS]
    assert len(names) == len(set(names))


def test_chunked_refusal_delivers_only_the_chunks_before_it() -> None:
    outcome = parse(post_chunked(b"3\r\nabc\r\n2\r\nde\r\nzz\r\n"))
    assert (outcome.only.body, outcome.end) == (b"abcde", "invalid_chunk_size")


def test_refusal_carries_the_request_line() -> None:
    parser = RequestParser(Limits())
    parser.feed(b"GET /secret HTTP/1.1\r\nX: a\rb\r\n\r\n")
    refusal = parser.next_event()
    assert isinstance(refusal, Refusal)
    assert refusal.request_line == b"GET /secret HTTP/1.1"
    assert refusal.reason is reasons.BARE_CR


# -- limits: exactly at the limit passes, one past it is refused -----------------------------


def _request_line_of(total: int) -> bytes:
    """A request with a request line of `total` bytes, CRLF included."""
    line = b"GET /" + b"a" * (total - 16) + b" HTTP/1.1\r\n"
    assert len(line) == total
    return line + b"Host: x\r\n\r\n"


def _field_of(total: int) -> bytes:
    """A request with one field line of `total` bytes, CRLF included."""
    field = b"X-Pad: " + b"v" * (total - 9)
    assert len(field) + 2 == total
    return get(b"Host: x", field)


def _fields(count: int) -> bytes:
    return get(b"Host: x", *(b"X-F%d: %d" % (i, i) for i in range(count - 1)))


def _head_of(total: int, body: bytes = b"") -> bytes:
    """A request whose head (request line to the empty line) is `total` bytes."""
    start = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n" % len(body)
    pad = b"X-Pad: " + b"p" * (total - len(start) - 7 - 4) + b"\r\n\r\n"
    data = start + pad
    assert len(data) == total
    return data + body


def _head_with_field_ending_at(end: int) -> bytes:
    """A head whose second field line ends at byte `end` of the head, then the empty line."""
    start = b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: "
    data = start + b"p" * (end - len(start) - 10) + b"\r\nX-B: 1\r\n"
    assert len(data) == end
    return data + b"\r\n"


def _chunk_line_of(size: int) -> bytes:
    """A chunked body whose first chunk-size line is `size` bytes, CRLF included (as every
    line limit counts)."""
    line = b"5;e=" + b"x" * (size - 6)
    assert len(line) + 2 == size
    return post_chunked(line + b"\r\nhello\r\n0\r\n\r\n")


def _trailers_of(total: int) -> bytes:
    """A chunked body whose trailer section (last CRLF included) is `total` bytes."""
    section = b"X-T: " + b"t" * (total - 9) + b"\r\n\r\n"
    assert len(section) == total
    return post_chunked(b"2\r\nok\r\n0\r\n" + section)


LIMIT_CASES: list[tuple[str, Limits, bytes, bytes, str, int]] = [
    # (id, limits, bytes exactly at the limit, bytes one past it, code, heads before refusal)
    ("request_line_max_bytes", Limits(request_line_max_bytes=64), _request_line_of(64), _request_line_of(65), "request_line_too_long", 0),
    ("request_line_max_bytes-default", Limits(), _request_line_of(4096), _request_line_of(4097), "request_line_too_long", 0),
    ("header_field_max_bytes", Limits(header_field_max_bytes=64), _field_of(64), _field_of(65), "header_field_too_large", 0),
    ("header_field_max_bytes-default", Limits(), _field_of(8190), _field_of(8191), "header_field_too_large", 0),
    ("header_count_max", Limits(header_count_max=5), _fields(5), _fields(6), "too_many_headers", 0),
    ("header_count_max-default", Limits(), _fields(100), _fields(101), "too_many_headers", 0),
    ("head_max_bytes", Limits(head_max_bytes=200), _head_of(200, b"abc"), _head_of(201, b"abc"), "head_too_large", 0),
    ("body_max_bytes-length", Limits(body_max_bytes=10), post_length(b"10", b"x" * 10), post_length(b"11", b"x" * 11), "body_too_large", 0),
    ("body_max_bytes-chunked", Limits(body_max_bytes=10), post_chunked(b"4\r\nabcd\r\n6\r\nefghij\r\n0\r\n\r\n"), post_chunked(b"4\r\nabcd\r\n7\r\nefghijk\r\n0\r\n\r\n"), "body_too_large", 1),
    ("chunk_line_max_bytes", Limits(chunk_line_max_bytes=16), _chunk_line_of(16), _chunk_line_of(17), "chunk_line_too_long", 1),
    ("trailer_max_bytes", Limits(trailer_max_bytes=32), _trailers_of(32), _trailers_of(33), "trailers_too_large", 1),
]


@pytest.mark.parametrize(
    ("limits", "at_limit", "past_limit", "code", "heads"),
    [pytest.param(*case[1:], id=case[0]) for case in LIMIT_CASES],
)
def test_limit(limits: Limits, at_limit: bytes, past_limit: bytes, code: str, heads: int) -> None:
    accepted = parse(at_limit, limits)
    assert accepted.end == "closed"
    assert len(accepted.requests) == 1 and accepted.only.complete
    refused = parse(past_limit, limits)
    assert refused.end == code
    assert len(refused.requests) == heads


def test_head_limit_crossed_inside_a_field_line() -> None:
    limits = Limits(head_max_bytes=200)
    assert parse(_head_with_field_ending_at(198), limits).only.complete
    # The field line itself ends one byte past the limit, before any empty line.
    assert parse(_head_with_field_ending_at(201), limits).end == "head_too_large"
    assert parse(_head_with_field_ending_at(201), limits, eof=False).end == "head_too_large"


def test_head_limit_does_not_count_the_body_or_the_next_request() -> None:
    limits = Limits(head_max_bytes=200)
    data = _head_of(200, b"b" * 500) + _head_of(200, b"c" * 3)
    assert [r.body for r in parse(data, limits).requests] == [b"b" * 500, b"ccc"]


def test_head_limit_does_not_count_leading_empty_lines() -> None:
    assert parse(b"\r\n\r\n" + _head_of(200), Limits(head_max_bytes=200)).only.complete


def test_dropped_underscore_fields_still_count_towards_header_count_max() -> None:
    data = get(b"Host: x", b"A_1: 1", b"A_2: 2")
    assert parse(data, Limits(header_count_max=3)).only.headers == ((b"host", b"x"),)
    assert parse(data, Limits(header_count_max=2)).end == "too_many_headers"


def test_body_too_large_is_refused_from_content_length_before_any_body_byte() -> None:
    head_only = message(b"POST / HTTP/1.1", b"Host: x", b"Content-Length: 11")
    outcome = parse(head_only, Limits(body_max_bytes=10), eof=False)
    assert outcome == Outcome((), "body_too_large")


def test_chunked_body_limit_counts_the_whole_body() -> None:
    limits = Limits(body_max_bytes=10)
    chunks = b"".join(b"1\r\n%d\r\n" % i for i in range(10)) + b"1\r\nX\r\n0\r\n\r\n"
    outcome = parse(post_chunked(chunks), limits)
    assert (outcome.only.body, outcome.end) == (b"0123456789", "body_too_large")


def test_body_limit_applies_per_request() -> None:
    limits = Limits(body_max_bytes=10)
    data = post_length(b"10", b"a" * 10) + post_chunked(b"a\r\n" + b"b" * 10 + b"\r\n0\r\n\r\n")
    assert [r.body for r in parse(data, limits).requests] == [b"a" * 10, b"b" * 10]


def test_limits_reset_between_pipelined_requests() -> None:
    limits = Limits(head_max_bytes=200, header_count_max=5, trailer_max_bytes=32)
    data = _head_of(200) + _fields(5) + _trailers_of(32) + _trailers_of(32) + _head_of(200)
    assert len(parse(data, limits).requests) == 5


def test_a_line_over_its_limit_is_refused_before_its_end_arrives() -> None:
    # The parser must not wait for (and buffer) the rest of a line it already knows is too long.
    limits = Limits(request_line_max_bytes=64, header_field_max_bytes=64, head_max_bytes=200)
    assert parse(b"GET /" + b"a" * 70, limits, eof=False).end == "request_line_too_long"
    partial_field = b"GET / HTTP/1.1\r\nX-Pad: " + b"v" * 70
    assert parse(partial_field, limits, eof=False).end == "header_field_too_large"
    many_fields = b"GET / HTTP/1.1\r\n" + b"X-A: 1\r\n" * 30
    assert parse(many_fields, limits, eof=False).end == "head_too_large"
    long_chunk_line = post_chunked(b"5;e=" + b"x" * 30)
    assert parse(long_chunk_line, Limits(chunk_line_max_bytes=16), eof=False).end == (
        "chunk_line_too_long"
    )
    long_trailer = post_chunked(b"0\r\nX-T: " + b"t" * 40)
    assert parse(long_trailer, Limits(trailer_max_bytes=32), eof=False).end == (
        "trailers_too_large"
    )


# -- every refusal the parser can give is tested above ---------------------------------------

# Given by the connection, not by the parser.
# Codes given by the connection, the pool or the proxy layers, not by the request parser.
NOT_FROM_THE_PARSER = {
    "head_timeout", "body_timeout", "body_too_slow", "send_timeout", "send_too_slow",
    "pool_saturated", "queue_timeout", "client_in_flight", "client_connections",
    "proxy_header_invalid", "proxy_header_missing", "proxy_peer_untrusted", "forwarded_invalid",
    "tls_handshake_timeout", "tls_plain_http", "tls_handshake_failed",
}

EXPECTED_STATUS = {
    "malformed_request_line": 400,
    "malformed_header": 400,
    "bare_lf": 400,
    "bare_cr": 400,
    "obs_fold": 400,
    "leading_whitespace": 400,
    "request_line_too_long": 414,
    "header_field_too_large": 431,
    "too_many_headers": 431,
    "head_too_large": 431,
    "unsupported_version": 505,
    "missing_host": 400,
    "multiple_host": 400,
    "invalid_host": 400,
    "invalid_target": 400,
    "path_escapes_root": 400,
    "path_bad_escape": 400,
    "path_encoded_slash": 400,
    "path_backslash": 400,
    "path_control_char": 400,
    "path_overlong_utf8": 400,
    "method_not_supported": 501,
    "duplicate_field": 400,
    "underscore_header": 400,
    "cl_te_conflict": 400,
    "multiple_content_length": 400,
    "invalid_content_length": 400,
    "te_not_chunked": 501,
    "te_http10": 400,
    "invalid_chunk_size": 400,
    "chunk_line_too_long": 400,
    "bad_chunk_terminator": 400,
    "malformed_trailer": 400,
    "forbidden_trailer": 400,
    "trailers_too_large": 431,
    "body_too_large": 413,
    "incomplete_body": 400,
    "incomplete_head": 400,
}


def test_every_parser_refusal_code_is_covered() -> None:
    parser_codes = {r.code for r in reasons.all_reasons()} - NOT_FROM_THE_PARSER
    tested = {code for _, _, code, _, _ in REFUSALS} | {case[4] for case in LIMIT_CASES}
    assert parser_codes == tested
    assert set(EXPECTED_STATUS) == parser_codes


@pytest.mark.parametrize("code", sorted(EXPECTED_STATUS))
def test_refusal_status_and_close(code: str) -> None:
    reason = reasons.by_code(code)
    assert reason.status == EXPECTED_STATUS[code]
    # A refusal of the framing always closes the connection.
    assert reason.close
    assert reason.phrase


# -- the same refusal however the bytes are split ----------------------------------------------
# Each input fails two checks at once; `parse` feeds it whole, by line, byte by byte and in
# random splits and fails unless every splitting ends in the same refusal.
SPLIT_DEPENDENT_BEFORE = [
    (Limits(request_line_max_bytes=32), b"GET /" + b"a" * 40 + b" HTTP/1.1\nHost: x\r\n\r\n", "request_line_too_long"),
    (Limits(request_line_max_bytes=32), b"GET /a\rb" + b"a" * 40 + b" HTTP/1.1\r\nHost: x\r\n\r\n", "request_line_too_long"),
    (Limits(header_field_max_bytes=32), b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 40 + b"\n\r\n", "header_field_too_large"),
    (Limits(header_field_max_bytes=32), b"GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n " + b"a" * 40 + b"\r\n\r\n", "header_field_too_large"),
    (Limits(head_max_bytes=40), b"GET / HTTP/1.1\r\nHost: x\r\nX: a\rb" + b"a" * 40 + b"\r\n\r\n", "head_too_large"),
    (Limits(header_count_max=2, head_max_bytes=60), b"GET / HTTP/1.1\r\nHost: x\r\nA: 1\r\nB: " + b"b" * 40 + b"\r\n\r\n", "head_too_large"),
    (Limits(header_field_max_bytes=30, head_max_bytes=50), b"GET / HTTP/1.1\r\nHost: x\r\nA: 1\r\nB: " + b"b" * 40 + b"\r\n\r\n", "header_field_too_large"),
    (Limits(chunk_line_max_bytes=16), post_chunked(b"5;" + b"a" * 30 + b"\nhello\r\n0\r\n\r\n"), "chunk_line_too_long"),
    (Limits(trailer_max_bytes=16), post_chunked(b"0\r\nX: " + b"a" * 30 + b"\n\r\n"), "trailers_too_large"),
]


@pytest.mark.parametrize(("limits", "data", "code"), SPLIT_DEPENDENT_BEFORE)
def test_a_line_with_two_flaws_gets_one_code_for_every_splitting(limits: Limits, data: bytes, code: str) -> None:
    assert parse(data, limits).end == code


# -- h11's second reading, and its verdict cache --------------------------------------------------


def _head_event(data: bytes) -> object:
    parser = RequestParser(Limits())
    parser.feed(data)
    return parser.next_event()


def test_second_reading_gives_the_same_verdict_on_a_cache_hit() -> None:
    # The policy layer already refuses what h11 refuses, so h11's reading is called directly:
    # its objection must come back the same from the cache as from a fresh reading.
    from hardserve.http import parser as parser_module

    section = b"Host: x\r\nBad Name: 1\r\n\r\n"
    parser_module._VERDICTS.clear()
    first = parser_module._second_reading(b"1.1", section)
    assert (b"1.1" + section) in parser_module._VERDICTS
    second = parser_module._second_reading(b"1.1", section)
    assert first is not None and first == second
    assert parser_module._second_reading(b"1.1", b"Host: x\r\n\r\n") is None


def test_second_reading_verdicts_are_bounded() -> None:
    from hardserve.http import parser as parser_module

    for index in range(parser_module._VERDICTS_MAX + 10):
        event = _head_event(b"GET / HTTP/1.1\r\nHost: x\r\nX-N: %d\r\n\r\n" % index)
        assert isinstance(event, RequestHead)
    assert len(parser_module._VERDICTS) <= parser_module._VERDICTS_MAX
    big = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 5000 + b"\r\n\r\n"
    assert isinstance(_head_event(big), RequestHead)
    assert all(len(key) <= parser_module._VERDICT_KEY_MAX_BYTES for key in parser_module._VERDICTS)


# -- the readings of header sections, and their cache ---------------------------------------------

# One head per outcome of the header-section stage, and one per kind of field it reads.
SECTION_HEADS = [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\n",
    b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX_Under: 1\r\nAccept: */*\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nBad Name: 1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-A: \x01\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nRange: a\r\nRange: b\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +1\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
    b"CONNECT x:1 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /../x HTTP/1.1\r\nHost: x\r\n\r\n",
]


def _first_event(data: bytes, *, refuse_underscore: bool = False, limits: Limits | None = None) -> object:
    parser = RequestParser(limits or Limits(), refuse_underscore_headers=refuse_underscore)
    parser.feed(data)
    return parser.next_event()


@pytest.mark.parametrize("refuse_underscore", [False, True])
@pytest.mark.parametrize("head", SECTION_HEADS)
def test_a_header_section_reads_the_same_from_the_cache(head: bytes, refuse_underscore: bool) -> None:
    from hardserve.http import parser as parser_module

    for readings in parser_module._FIELD_READINGS:
        readings.clear()
    fresh = _first_event(head, refuse_underscore=refuse_underscore)
    assert parser_module._FIELD_READINGS[refuse_underscore], "the reading was not kept"
    again = _first_event(head, refuse_underscore=refuse_underscore)  # from the cache
    assert again == fresh


def test_the_cache_keeps_underscore_policies_and_body_limits_apart() -> None:
    from hardserve.http import parser as parser_module

    head = b"POST / HTTP/1.1\r\nHost: x\r\nX_Under: 1\r\nContent-Length: 100\r\n\r\n"
    for readings in parser_module._FIELD_READINGS:
        readings.clear()
    kept = _first_event(head)
    refused = _first_event(head, refuse_underscore=True)
    assert isinstance(kept, RequestHead) and kept.headers == (
        (b"host", b"x"),
        (b"content-length", b"100"),
    )
    assert isinstance(refused, Refusal) and refused.reason.code == "underscore_header"
    # The body limit is the parser's own, never part of the cached reading.
    too_large = _first_event(head, limits=Limits(body_max_bytes=99))
    assert isinstance(too_large, Refusal) and too_large.reason.code == "body_too_large"
    assert isinstance(_first_event(head, limits=Limits(body_max_bytes=100)), RequestHead)


def test_header_section_readings_are_bounded() -> None:
    from hardserve.http import parser as parser_module

    for index in range(parser_module._FIELD_READINGS_MAX + 10):
        event = _first_event(b"GET / HTTP/1.1\r\nHost: x\r\nX-N: %d\r\n\r\n" % index)
        assert isinstance(event, RequestHead)
    assert len(parser_module._FIELD_READINGS[False]) <= parser_module._FIELD_READINGS_MAX
    big = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 3000 + b"\r\n\r\n"
    assert isinstance(_first_event(big), RequestHead)
    assert all(
        len(key) <= parser_module._FIELD_READING_KEY_MAX_BYTES
        for key in parser_module._FIELD_READINGS[False]
    )


@pytest.mark.parametrize(
    "head",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /a HTTP/1.1\r\nHost: x\r\nAccept: */*\r\nX-Long: " + b"v" * 300 + b"\r\n\r\n",
    ],
)
def test_head_arrived_turns_true_with_the_last_byte_of_the_head_however_it_is_split(
    head: bytes,
) -> None:
    """Fed a byte at a time, with the head read (NEED_DATA) after every byte as a connection
    does when nothing waits: the empty line is seen exactly when its last byte arrives, also
    when it straddles two feeds."""
    parser = RequestParser(Limits())
    seen = []
    for index in range(len(head)):
        parser.feed(head[index : index + 1])
        seen.append(parser.head_arrived())
        if index < len(head) - 1:
            assert parser.next_event() is NEED_DATA
    assert seen == [False] * (len(head) - 1) + [True]
    assert isinstance(parser.next_event(), RequestHead)


def test_a_head_ended_by_bare_lf_never_counts_as_arrived() -> None:
    parser = RequestParser(Limits())
    parser.feed(b"GET / HTTP/1.1\nHost: x\n\n")
    assert not parser.head_arrived()
    event = parser.next_event()
    assert isinstance(event, Refusal) and event.reason is reasons.BARE_LF

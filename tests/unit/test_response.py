"""The response side: start_response validation and the framing of the bytes on the wire.

Every framed response is read back by h11 in the client role, an independent parser: what it
sees (status, headers, body, whether the connection must close) must be what was meant.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import h11
import pytest

from hardserve.http import response
from hardserve.http.response import (
    APP_SET_DATE,
    APP_SET_REQUEST_ID,
    APP_SET_SERVER,
    ResponseError,
    ResponseFramer,
    error_response,
    parse_status,
    validate_headers,
)

FIXED = b"Date: Thu, 01 Jan 2026 00:00:00 GMT\r\nServer: hardserve\r\n"


# -- the h11 oracle --------------------------------------------------------------------------


@dataclasses.dataclass
class Seen:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    complete: bool  # h11 saw EndOfMessage
    must_close: bool  # h11 says the connection cannot carry another request

    def header(self, name: bytes) -> bytes | None:
        values = [v for k, v in self.headers if k == name.lower()]
        assert len(values) <= 1, values
        return values[0] if values else None


def client_reads(wire: bytes, *, method: str = "GET", eof: bool = False) -> Seen:
    """What an h11 client that sent `method` reads from `wire` (then EOF, if `eof`)."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method=method, target="/", headers=[("Host", "x")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(wire)
    if eof:
        conn.receive_data(b"")
    response: h11.Response | None = None
    body = bytearray()
    complete = False
    while True:
        event = conn.next_event()
        if isinstance(event, h11.Response):
            response = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            complete = True
            break
        elif event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
            break
        else:  # pragma: no cover
            raise AssertionError(f"unexpected {event!r}")
    assert response is not None, "h11 saw no response"
    must_close = conn.their_state in (h11.MUST_CLOSE, h11.CLOSED)
    return Seen(response.status_code, list(response.headers), bytes(body), complete, must_close)


def frame(
    status: str = "200 OK",
    headers: list[tuple[str, str]] | None = None,
    pieces: list[bytes] | None = None,
    *,
    is_head: bool = False,
    http11: bool = True,
    client_keep_alive: bool = True,
    body_length_hint: int | None = None,
    force_close: bool = False,
) -> tuple[bytes, ResponseFramer]:
    """Run a whole response through validate_headers and a ResponseFramer, as the worker does."""
    code, status_line = parse_status(status)
    encoded, content_length, _ = validate_headers(headers if headers is not None else [])
    framer = ResponseFramer(is_head=is_head, http11=http11, client_keep_alive=client_keep_alive)
    wire = framer.head(
        status_line,
        code,
        encoded,
        content_length,
        fixed_headers=FIXED,
        body_length_hint=body_length_hint,
        force_close=force_close,
    )
    for piece in pieces or []:
        wire += framer.body(piece)
    wire += framer.end()
    return wire, framer


# -- parse_status ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code"),
    [
        ("200 OK", 200),
        ("404 Not Found", 404),
        ("299 ", 299),
        ("500 Internal Server Error", 500),
        ("302 Found\there", 302),
        ("200 caf\xe9", 200),
    ],
)
def test_parse_status(status: str, code: int) -> None:
    assert parse_status(status) == (code, status.encode("latin-1"))


@pytest.mark.parametrize(
    "status",
    [
        b"200 OK",
        200,
        None,
        "200",
        "200OK",
        "OK 200",
        " 200 OK",
        "20 OK",
        "2000 OK",
        "099 X",
        "abc OK",
        "200 OK\r\nX-Injected: 1",
        "200 OK\n",
        "200 OK\x00",
        "200\tOK",
        "200 \u20ac",
        "100 Continue",
        "101 Switching Protocols",
    ],
)
def test_parse_status_refuses(status: Any) -> None:
    with pytest.raises(ResponseError):
        parse_status(status)


# -- validate_headers ------------------------------------------------------------------------


def test_validate_headers_encodes_latin1() -> None:
    encoded, length, _ = validate_headers([("Content-Type", "text/plain"), ("X-Name", "caf\xe9")])
    assert encoded == [(b"Content-Type", b"text/plain"), (b"X-Name", b"caf\xe9")]
    assert length is None


@pytest.mark.parametrize(
    ("value", "length"),
    [("0", 0), ("5", 5), ("0005", 5), (" 5 ", 5), ("123456789012345678", 123456789012345678)],
)
def test_validate_headers_reads_content_length(value: str, length: int) -> None:
    assert validate_headers([("content-LENGTH", value)])[1] == length


@pytest.mark.parametrize(
    "headers",
    [
        (("Content-Type", "text/plain"),),
        [["Content-Type", "text/plain"]],
        [("Content-Type",)],
        [("Content-Type", "text/plain", "x")],
        [(b"Content-Type", "text/plain")],
        [("Content-Type", b"text/plain")],
        [("Content-Type", 5)],
    ],
)
def test_validate_headers_refuses_wrong_types(headers: Any) -> None:
    with pytest.raises(ResponseError):
        validate_headers(headers)


@pytest.mark.parametrize(
    "name", ["", "X Y", "X:Y", "X-Y:", "X\tY", "X\r\nY", "X\x00", "Caf\xe9", "X(Y)", "X/Y", "X@Y"]
)
def test_validate_headers_refuses_names_that_are_not_tokens(name: str) -> None:
    with pytest.raises(ResponseError):
        validate_headers([(name, "v")])


@pytest.mark.parametrize(
    "value",
    [
        "a\r\nSet-Cookie: x=1",
        "a\rb",
        "a\nb",
        "a\x00b",
        "a\x7fb",
        "a\x1bb",
        "\u20ac",
        "a\u0100",
    ],
)
def test_validate_headers_refuses_control_characters_and_non_latin1(value: str) -> None:
    with pytest.raises(ResponseError):
        validate_headers([("X-Value", value)])


@pytest.mark.parametrize(
    "name",
    [
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "TE",
        "Trailer",
        "Trailers",
        "Transfer-Encoding",
        "transfer-encoding",
        "Upgrade",
        "Proxy-Connection",
    ],
)
def test_validate_headers_refuses_hop_by_hop_fields(name: str) -> None:
    with pytest.raises(ResponseError, match="hop-by-hop"):
        validate_headers([(name, "x")])


@pytest.mark.parametrize(
    "value", ["", "abc", "-1", "+1", "1.0", "1e3", "0x10", "1 0", "5, 5", "\uff15", "1" * 19]
)
def test_validate_headers_refuses_bad_content_length(value: str) -> None:
    with pytest.raises(ResponseError):
        validate_headers([("Content-Length", value)])


def test_validate_headers_refuses_two_content_lengths() -> None:
    with pytest.raises(ResponseError):
        validate_headers([("Content-Length", "5"), ("content-length", "5")])


def test_validate_headers_allows_repeated_ordinary_fields() -> None:
    encoded, _, _ = validate_headers([("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")])
    assert encoded == [(b"Set-Cookie", b"a=1"), (b"Set-Cookie", b"b=2")]


# -- framing: Content-Length -----------------------------------------------------------------


def test_a_repeated_status_and_headers_give_the_same_verdict_as_the_first_time() -> None:
    """The second time round the answers come from the caches: they must be the same."""
    headers = [
        ("Content-Type", "text/plain"),
        ("Content-Length", " 13 "),
        ("Date", "Sat, 01 Jan 2000 00:00:00 GMT"),
        ("Server", "app"),
        ("X-Request-ID", "abc"),
    ]
    first = validate_headers(list(headers))
    assert first == (
        [(n.encode(), v.encode()) for n, v in headers],
        13,
        APP_SET_DATE | APP_SET_SERVER | APP_SET_REQUEST_ID,
    )
    assert all(pair in response._HEADER_CACHE for pair in headers)
    assert validate_headers(list(headers)) == first
    assert parse_status("200 OK") == parse_status("200 OK") == (200, b"200 OK")


def test_a_cached_content_length_still_counts_towards_two() -> None:
    validate_headers([("Content-Length", "5")])
    with pytest.raises(ResponseError, match="two Content-Length"):
        validate_headers([("Content-Length", "5"), ("Content-Length", "5")])
    with pytest.raises(ResponseError, match="two Content-Length"):
        validate_headers([("Content-Length", "5"), ("content-length", "6")])


def test_a_refused_header_is_refused_every_time() -> None:
    for _ in range(2):
        with pytest.raises(ResponseError):
            validate_headers([("X-Bad", "a\r\nSet-Cookie: x=1")])
        with pytest.raises(ResponseError):
            parse_status("99 Too Low")
    assert ("X-Bad", "a\r\nSet-Cookie: x=1") not in response._HEADER_CACHE
    assert "99 Too Low" not in response._STATUS_CACHE


def test_a_str_subclass_is_never_taken_from_the_cache() -> None:
    class Sneaky(str):
        def __eq__(self, other: object) -> bool:
            return True

        __hash__ = str.__hash__

    validate_headers([("X-Fine", "ok")])
    with pytest.raises(ResponseError, match="must be"):
        validate_headers([(Sneaky("X-Fine"), "ok")])


def test_the_caches_stop_growing_at_their_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(response, "_HEADER_CACHE", {})
    monkeypatch.setattr(response, "_STATUS_CACHE", {})
    for index in range(response._CACHE_MAX + 50):
        assert validate_headers([("X-Echo", str(index))])[0] == [(b"X-Echo", str(index).encode())]
        assert parse_status(f"200 {index}") == (200, f"200 {index}".encode())
    assert len(response._HEADER_CACHE) == response._CACHE_MAX
    assert len(response._STATUS_CACHE) == response._CACHE_MAX


def test_content_length_from_the_app() -> None:
    wire, framer = frame(
        headers=[("Content-Type", "text/plain"), ("Content-Length", "5")],
        pieces=[b"hel", b"", b"lo"],
    )
    seen = client_reads(wire)
    assert (seen.status, seen.body, seen.complete, seen.must_close) == (200, b"hello", True, False)
    assert seen.header(b"content-length") == b"5"
    assert seen.header(b"transfer-encoding") is None
    assert seen.header(b"connection") is None
    assert seen.header(b"server") == b"hardserve"
    assert framer.keep_alive and not framer.overflow and framer.short_by == 0
    assert framer.sent_body_bytes == 5
    assert not framer.accepts_body


def test_body_length_hint_gives_a_content_length() -> None:
    wire, framer = frame(pieces=[b"hello"], body_length_hint=5)
    seen = client_reads(wire)
    assert seen.header(b"content-length") == b"5"
    assert seen.header(b"transfer-encoding") is None
    assert (seen.body, seen.complete, seen.must_close) == (b"hello", True, False)
    assert framer.keep_alive and framer.short_by == 0


def test_content_length_zero() -> None:
    wire, framer = frame(headers=[("Content-Length", "0")])
    seen = client_reads(wire)
    assert (seen.body, seen.complete, seen.must_close) == (b"", True, False)
    assert not framer.accepts_body


# -- framing: chunked and close-delimited ----------------------------------------------------


def test_http11_without_length_is_chunked() -> None:
    pieces = [b"a", b"", b"bc" * 1000, b"\r\n0\r\n\r\n"]
    wire, framer = frame(headers=[("Content-Type", "text/plain")], pieces=pieces)
    assert wire.endswith(b"0\r\n\r\n")
    seen = client_reads(wire)
    assert seen.header(b"transfer-encoding") == b"chunked"
    assert seen.header(b"content-length") is None
    assert (seen.body, seen.complete, seen.must_close) == (b"".join(pieces), True, False)
    assert framer.keep_alive
    assert framer.sent_body_bytes == len(b"".join(pieces))


def test_an_empty_piece_never_ends_a_chunked_body() -> None:
    framer = ResponseFramer(is_head=False, http11=True, client_keep_alive=True)
    framer.head(b"200 OK", 200, [], None, fixed_headers=FIXED)
    assert framer.body(b"") == b""


def test_chunked_response_without_any_body() -> None:
    wire, _ = frame()
    seen = client_reads(wire)
    assert (seen.body, seen.complete, seen.must_close) == (b"", True, False)


def test_http10_without_length_is_delimited_by_close() -> None:
    wire, framer = frame(pieces=[b"part1 ", b"part2"], http11=False)
    assert not framer.keep_alive
    # Not complete until the connection closes: there is no length.
    assert not client_reads(wire).complete
    seen = client_reads(wire, eof=True)
    assert seen.header(b"transfer-encoding") is None
    assert seen.header(b"content-length") is None
    assert seen.header(b"connection") == b"close"
    assert (seen.body, seen.complete, seen.must_close) == (b"part1 part2", True, True)


def test_http10_with_length_and_keep_alive() -> None:
    wire, framer = frame(headers=[("Content-Length", "2")], pieces=[b"ok"], http11=False)
    seen = client_reads(wire)
    assert seen.header(b"connection") == b"keep-alive"
    assert (seen.body, seen.complete) == (b"ok", True)
    assert framer.keep_alive


def test_http10_with_length_without_keep_alive() -> None:
    wire, framer = frame(
        headers=[("Content-Length", "2")], pieces=[b"ok"], http11=False, client_keep_alive=False
    )
    seen = client_reads(wire)
    assert seen.header(b"connection") == b"close"
    assert (seen.body, seen.must_close) == (b"ok", True)
    assert not framer.keep_alive


# -- framing: responses without a body -------------------------------------------------------


def test_head_response_keeps_content_length_and_sends_no_body() -> None:
    wire, framer = frame(headers=[("Content-Length", "5")], pieces=[b"hello"], is_head=True)
    assert wire.endswith(b"\r\n\r\n")
    seen = client_reads(wire, method="HEAD")
    assert seen.header(b"content-length") == b"5"
    assert (seen.body, seen.complete, seen.must_close) == (b"", True, False)
    assert framer.bodyless and not framer.accepts_body
    assert framer.sent_body_bytes == 0


def test_head_response_gets_the_length_a_get_would_have() -> None:
    wire, _ = frame(pieces=[b"hello"], is_head=True, body_length_hint=5)
    seen = client_reads(wire, method="HEAD")
    assert seen.header(b"content-length") == b"5"
    assert (seen.body, seen.complete) == (b"", True)


def test_head_response_without_length_is_neither_chunked_nor_closed() -> None:
    wire, framer = frame(pieces=[b"hello"], is_head=True)
    seen = client_reads(wire, method="HEAD")
    assert seen.header(b"transfer-encoding") is None
    assert (seen.body, seen.complete, seen.must_close) == (b"", True, False)
    assert framer.keep_alive


@pytest.mark.parametrize("status", ["204 No Content", "304 Not Modified"])
@pytest.mark.parametrize("http11", [True, False])
def test_no_body_statuses(status: str, http11: bool) -> None:
    wire, framer = frame(status, pieces=[b"ignored"], http11=http11)
    seen = client_reads(wire)
    assert seen.status == int(status[:3])
    assert (seen.body, seen.complete) == (b"", True)
    assert seen.header(b"transfer-encoding") is None
    assert framer.bodyless
    assert framer.keep_alive  # no body to delimit, so no reason to close
    assert seen.must_close is False


def test_204_drops_the_apps_content_length() -> None:
    wire, _ = frame("204 No Content", headers=[("Content-Length", "0"), ("X-A", "1")])
    seen = client_reads(wire)
    assert seen.header(b"content-length") is None
    assert seen.header(b"x-a") == b"1"


def test_304_keeps_the_apps_content_length() -> None:
    wire, _ = frame("304 Not Modified", headers=[("Content-Length", "1234"), ("ETag", '"v1"')])
    seen = client_reads(wire)
    assert seen.header(b"content-length") == b"1234"
    assert (seen.body, seen.complete, seen.must_close) == (b"", True, False)


# -- framing: the app breaks its own Content-Length ------------------------------------------


def test_overflow_is_cut_and_the_connection_closes() -> None:
    framer = ResponseFramer(is_head=False, http11=True, client_keep_alive=True)
    wire = framer.head(b"200 OK", 200, [(b"Content-Length", b"3")], 3, fixed_headers=FIXED)
    wire += framer.body(b"he")
    assert not framer.overflow and framer.keep_alive
    wire += framer.body(b"llo")
    assert framer.overflow and not framer.keep_alive
    assert framer.body(b"more") == b""
    wire += framer.end()
    assert framer.sent_body_bytes == 3
    assert framer.short_by == 0
    seen = client_reads(wire)
    assert (seen.body, seen.complete) == (b"hel", True)
    assert not wire.endswith(b"lo")


def test_short_body_is_reported_and_the_connection_closes() -> None:
    wire, framer = frame(headers=[("Content-Length", "5")], pieces=[b"he"])
    assert framer.short_by == 3
    assert not framer.keep_alive
    assert framer.accepts_body
    # A client reading it sees an incomplete body, never a complete message.
    assert not client_reads(wire).complete
    with pytest.raises(h11.RemoteProtocolError):
        client_reads(wire, eof=True)


def test_consume_accounts_for_bytes_sent_around_the_framer() -> None:
    framer = ResponseFramer(is_head=False, http11=True, client_keep_alive=True)
    framer.head(b"200 OK", 200, [(b"Content-Length", b"10")], 10, fixed_headers=FIXED)
    framer.consume(6)
    assert (framer.short_by, framer.sent_body_bytes, framer.accepts_body) == (4, 6, True)
    framer.consume(4)
    assert (framer.short_by, framer.accepts_body) == (0, False)
    assert framer.end() == b"" and framer.keep_alive


def test_short_by_is_zero_for_other_framings() -> None:
    _, chunked = frame()
    _, head = frame(headers=[("Content-Length", "9")], is_head=True)
    assert chunked.short_by == head.short_by == 0


# -- framing: Connection ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("http11", "client_keep_alive", "force_close", "header", "keep_alive"),
    [
        (True, True, False, None, True),
        (True, False, False, b"close", False),
        (True, True, True, b"close", False),
        (False, True, False, b"keep-alive", True),
        (False, False, False, b"close", False),
        (False, True, True, b"close", False),
    ],
)
def test_connection_header(
    http11: bool, client_keep_alive: bool, force_close: bool, header: bytes | None, keep_alive: bool
) -> None:
    wire, framer = frame(
        headers=[("Content-Length", "2")],
        pieces=[b"ok"],
        http11=http11,
        client_keep_alive=client_keep_alive,
        force_close=force_close,
    )
    seen = client_reads(wire)
    assert seen.header(b"connection") == header
    assert framer.keep_alive is keep_alive
    assert seen.must_close is not keep_alive
    assert (seen.body, seen.complete) == (b"ok", True)


def test_status_line_and_fixed_headers_are_written_as_given() -> None:
    wire, framer = frame("418 I'm a teapot", headers=[("X-A", "1")], body_length_hint=0)
    assert wire.startswith(b"HTTP/1.1 418 I'm a teapot\r\n" + FIXED)
    assert framer.status_code == 418
    seen = client_reads(wire)
    assert (seen.status, seen.header(b"x-a"), seen.header(b"date")) == (418, b"1", FIXED[6:35])


def test_app_headers_keep_their_order() -> None:
    headers = [("Set-Cookie", "a=1"), ("X-B", "2"), ("Set-Cookie", "c=3")]
    wire, _ = frame(headers=headers, body_length_hint=0)
    seen = client_reads(wire)
    assert [(k, v) for k, v in seen.headers if k in (b"set-cookie", b"x-b")] == [
        (b"set-cookie", b"a=1"),
        (b"x-b", b"2"),
        (b"set-cookie", b"c=3"),
    ]


# -- error_response --------------------------------------------------------------------------


@pytest.mark.parametrize("close", [True, False])
def test_error_response(close: bool) -> None:
    body = b"Bad Request: request line is not METHOD SP target SP HTTP/x.y\n"
    wire = error_response(400, "Bad Request", body, fixed_headers=FIXED, close=close)
    seen = client_reads(wire)
    assert (seen.status, seen.body, seen.complete) == (400, body, True)
    assert seen.header(b"content-length") == str(len(body)).encode()
    assert seen.header(b"content-type") == b"text/plain; charset=utf-8"
    assert seen.header(b"connection") == (b"close" if close else None)
    assert seen.must_close is close

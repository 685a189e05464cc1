"""The response side: start_response validation and the framing of the bytes on the wire.

hardserve writes responses itself rather than through h11: h11 cannot keep an HTTP/1.0
connection alive, and the framing here is a handful of rules (RFC 9112 section 6.3) that the
tests check by parsing every response with h11 in the client role.
"""

from __future__ import annotations

import re
from typing import Final

# Hop-by-hop fields belong to the server, never to the app (PEP 3333, RFC 9110 section 7.6.1).
_HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "proxy-connection",
    }
)
_TOKEN_RE: Final = re.compile(r"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
# Field values: HTAB, SP, VCHAR and obs-text; no CR, LF, NUL or other controls.
_VALUE_RE: Final = re.compile(r"[\t\x20-\x7e\x80-\xff]*")
# RFC 9110 section 15: status codes are 100 to 599.
_STATUS_RE: Final = re.compile(r"([1-5][0-9][0-9]) ([\t\x20-\x7e\x80-\xff]*)")

Header = tuple[bytes, bytes]


class ResponseError(ValueError):
    """The app broke the WSGI or HTTP rules for a response; it becomes a 500."""


# What parse_status and validate_headers concluded, by the app's own strings: apps send the same
# status and the same few header pairs on every response. Both are pure functions of those
# strings (exactly str, so hashing and equality are str's own), so a hit is exactly as strict
# as a fresh check. Only accepted values are kept, and the caches stop growing at their bound
# (an app may echo client text into a header).
_STATUS_CACHE: dict[str, tuple[int, bytes]] = {}
_HEADER_CACHE: dict[tuple[str, str], tuple[tuple[bytes, bytes], int, int | None]] = {}
_CACHE_MAX: Final = 512


def parse_status(status: object) -> tuple[int, bytes]:
    if type(status) is str:
        known = _STATUS_CACHE.get(status)
        if known is not None:
            return known
    if not isinstance(status, str):
        raise ResponseError(f"status must be str, not {type(status).__name__}")
    match = _STATUS_RE.fullmatch(status)
    if match is None:
        raise ResponseError(f"status {status[:60]!r} is not 'NNN reason'")
    code = int(match.group(1))
    if code < 200:
        raise ResponseError(f"status {code}: an app cannot send an informational response")
    parsed = code, status.encode("latin-1")
    if type(status) is str and len(_STATUS_CACHE) < _CACHE_MAX:
        _STATUS_CACHE[status] = parsed
    return parsed


APP_SET_DATE: Final = 1
APP_SET_SERVER: Final = 2
APP_SET_REQUEST_ID: Final = 4


def validate_headers(headers: object) -> tuple[list[Header], int | None, int]:
    """The app's header list, encoded; its Content-Length if it set one; and which of the
    server's own headers (APP_SET_DATE, APP_SET_SERVER, APP_SET_REQUEST_ID) it set, so they
    are not sent twice."""
    if type(headers) is not list:
        raise ResponseError("response headers must be a list")
    encoded: list[Header] = []
    content_length: int | None = None
    app_set = 0
    cache = _HEADER_CACHE
    for item in headers:
        if type(item) is tuple and len(item) == 2 and type(item[0]) is str and type(item[1]) is str:
            known = cache.get(item)
            if known is not None:
                known_pair, known_bit, known_length = known
                if known_length is not None:
                    if content_length is not None:
                        raise ResponseError("two Content-Length headers")
                    content_length = known_length
                app_set |= known_bit
                encoded.append(known_pair)
                continue
        if type(item) is not tuple or len(item) != 2:
            raise ResponseError(f"header {item!r:.60} is not a (name, value) tuple")
        name, value = item
        if type(name) is not str or type(value) is not str:
            raise ResponseError(f"header {name!r:.40} must be (str, str)")
        if _TOKEN_RE.fullmatch(name) is None:
            raise ResponseError(f"header name {name[:40]!r} is not a token")
        if _VALUE_RE.fullmatch(value) is None:
            raise ResponseError(f"header {name[:40]!r} has a control character or non-latin-1")
        lowered = name.lower()
        if lowered in _HOP_BY_HOP:
            raise ResponseError(f"hop-by-hop header {name!r} belongs to the server")
        set_bit = 0
        length: int | None = None
        if lowered == "content-length":
            if content_length is not None:
                raise ResponseError("two Content-Length headers")
            digits = value.strip(" \t")
            if not digits.isascii() or not digits.isdigit() or len(digits) > 18:
                raise ResponseError(f"Content-Length {value[:40]!r} is not a number")
            content_length = length = int(digits)
        elif lowered == "date":
            set_bit = APP_SET_DATE
        elif lowered == "server":
            set_bit = APP_SET_SERVER
        elif lowered == "x-request-id":
            set_bit = APP_SET_REQUEST_ID
        app_set |= set_bit
        pair = (name.encode("latin-1"), value.encode("latin-1"))
        encoded.append(pair)
        if len(cache) < _CACHE_MAX:
            cache[(name, value)] = (pair, set_bit, length)
    return encoded, content_length, app_set


_NO_BODY, _LENGTH, _CHUNKED, _UNTIL_CLOSE = range(4)


class ResponseFramer:
    """Turns one response into bytes: the head, each body piece, the end."""

    __slots__ = (
        "_http11",
        "_is_head",
        "_kind",
        "_remaining",
        "client_keep_alive",
        "keep_alive",
        "overflow",
        "sent_body_bytes",
        "status_code",
    )

    def __init__(self, *, is_head: bool, http11: bool, client_keep_alive: bool) -> None:
        self._is_head = is_head
        self._http11 = http11
        self.client_keep_alive = client_keep_alive
        self.keep_alive = client_keep_alive
        self._kind = _NO_BODY
        self._remaining = 0
        self.overflow = False  # the app sent more than its Content-Length; the rest was cut
        self.sent_body_bytes = 0
        self.status_code = 0

    def head(
        self,
        status_line: bytes,
        status_code: int,
        headers: list[Header],
        content_length: int | None,
        *,
        fixed_headers: bytes,
        body_length_hint: int | None = None,
        force_close: bool = False,
    ) -> bytes:
        """`fixed_headers` are the server's own lines (Date, Server), CRLF-terminated.
        `body_length_hint` is the whole body's length when it is known up front (a list body),
        so a small response gets a Content-Length instead of chunked framing."""
        self.status_code = status_code
        keep_alive = self.keep_alive and not force_close
        parts = [b"HTTP/1.1 ", status_line, b"\r\n", fixed_headers]
        for name, value in headers:
            if (
                content_length is not None
                and status_code == 204
                and name.lower() == b"content-length"
            ):
                continue  # RFC 9110 section 8.6: never a Content-Length in a 204
            parts += (name, b": ", value, b"\r\n")
        if status_code in (204, 304):
            self._kind = _NO_BODY
        elif self._is_head:
            self._kind = _NO_BODY
            if content_length is None and body_length_hint is not None:
                # What a GET would have carried (RFC 9110 section 9.3.2).
                parts += (b"Content-Length: ", str(body_length_hint).encode("ascii"), b"\r\n")
        elif content_length is not None:
            self._kind = _LENGTH
            self._remaining = content_length
        elif body_length_hint is not None:
            self._kind = _LENGTH
            self._remaining = body_length_hint
            parts += (b"Content-Length: ", str(body_length_hint).encode("ascii"), b"\r\n")
        elif self._http11:
            self._kind = _CHUNKED
            parts.append(b"Transfer-Encoding: chunked\r\n")
        else:
            self._kind = _UNTIL_CLOSE
            keep_alive = False
        if not keep_alive:
            parts.append(b"Connection: close\r\n")
        elif not self._http11:
            parts.append(b"Connection: keep-alive\r\n")
        parts.append(b"\r\n")
        self.keep_alive = keep_alive
        return b"".join(parts)

    def body(self, data: bytes) -> bytes:
        kind = self._kind
        if not data or kind == _NO_BODY:
            return b""
        if kind == _LENGTH:
            if len(data) > self._remaining:
                data = data[: self._remaining]
                self.overflow = True
                self.keep_alive = False
            self._remaining -= len(data)
            self.sent_body_bytes += len(data)
            return data
        self.sent_body_bytes += len(data)
        if kind == _CHUNKED:
            return b"%x\r\n%b\r\n" % (len(data), data)
        return data

    def body_parts(self, data: bytes) -> list[bytes]:
        """Like body(), as pieces for writev, so a large piece is never copied to frame it."""
        kind = self._kind
        if kind != _CHUNKED or not data:
            framed = self.body(data)
            return [framed] if framed else []
        self.sent_body_bytes += len(data)
        return [b"%x\r\n" % len(data), data, b"\r\n"]

    def consume(self, count: int) -> None:
        """Account for body bytes of a Content-Length body sent outside `body` (sendfile)."""
        self._remaining -= count
        self.sent_body_bytes += count

    @property
    def short_by(self) -> int:
        """Bytes the app promised with Content-Length and did not send."""
        return self._remaining if self._kind == _LENGTH else 0

    @property
    def bodyless(self) -> bool:
        """The response can carry no body at all (HEAD, 204, 304)."""
        return self._kind == _NO_BODY

    @property
    def accepts_body(self) -> bool:
        return self._kind != _NO_BODY and not (self._kind == _LENGTH and self._remaining == 0)

    def end(self) -> bytes:
        if self._kind == _CHUNKED:
            return b"0\r\n\r\n"
        if self.short_by:
            # The client would wait for bytes that never come; only a close ends the message.
            self.keep_alive = False
        return b""


def error_response(
    status: int,
    phrase: str,
    body: bytes,
    *,
    fixed_headers: bytes,
    close: bool,
    is_head: bool = False,
) -> bytes:
    """A complete short response written by the server itself (refusals, 500, 503). A HEAD
    request gets the same head and no body (RFC 9110 section 9.3.2)."""
    return b"".join(
        (
            b"HTTP/1.1 %d %b\r\n" % (status, phrase.encode("ascii")),
            fixed_headers,
            b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n" % len(body),
            b"Connection: close\r\n" if close else b"",
            b"\r\n",
            b"" if is_head else body,
        )
    )

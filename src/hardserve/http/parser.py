"""The strict HTTP/1.1 request parser: bytes in, events out, a policy layer over h11.

What h11 tolerates and a server on the open internet must not (obs-fold, bare LF, a
Content-Length beside Transfer-Encoding, duplicated lengths, limits that hold only when TCP
splits the bytes, h11 issue 182), is refused here, on the bytes, before h11 sees the head. h11
then parses and validates the head itself, so a request passes two independent readings.

Bodies are framed here, not by h11: the framing is where request smuggling lives, and every
byte of a chunk-size line, chunk terminator and trailer is held to RFC 9112 section 7.1 with our
own limits. Whatever the split of the input, the outcome is the same: every check runs on the
accumulated bytes, never on one read.

Nothing here does I/O, reads a clock or logs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

import h11

from hardserve.http import reasons
from hardserve.http.limits import Limits
from hardserve.http.reasons import Reason
from hardserve.http.target import (
    DEFAULT_PATH_POLICY,
    PathPolicy,
    Target,
    TargetError,
    parse_target,
)

_CR: Final = 13
_LF: Final = 10
_SP: Final = 32
_HTAB: Final = 9
# An integer, not b"_", for `in`: see _BACKSLASH in target.py.
_UNDERSCORE: Final = ord("_")

_TOKEN = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+"
_TOKEN_RE: Final = re.compile(_TOKEN)
_VERSION_RE: Final = re.compile(rb"HTTP/([0-9])\.([0-9])")
# RFC 9110 section 5.5: field-value = *field-content; field-vchar = VCHAR / obs-text.
_FIELD_VALUE_RE: Final = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")
# RFC 9112 section 7.1.1: chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )
_QUOTED = rb'"(?:[\t\x20\x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t\x20-\x7e\x80-\xff])*"'
_CHUNK_LINE_RE: Final = re.compile(
    rb"([0-9A-Fa-f]+)((?:[ \t]*;[ \t]*"
    + _TOKEN
    + rb"(?:[ \t]*=[ \t]*(?:"
    + _TOKEN
    + rb"|"
    + _QUOTED
    + rb"))?)*)"
)
_HOST_RE: Final = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]*)(?::[0-9]*)?")
# RFC 9110 section 6.5.1: a trailer must not carry framing, routing, authentication or
# request-modifying fields; a sender that puts them there is trying to be read twice.
_FORBIDDEN_TRAILERS: Final = frozenset(
    {
        b"authorization",
        b"cache-control",
        b"connection",
        b"content-encoding",
        b"content-length",
        b"content-range",
        b"content-type",
        b"cookie",
        b"expect",
        b"host",
        b"keep-alive",
        b"max-forwards",
        b"pragma",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"range",
        b"set-cookie",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"www-authenticate",
    }
)
# Fields defined as a single value (RFC 9110): two of them cannot be joined with ", " into a
# meaning both sides agree on, so a request carrying two is refused rather than guessed at.
_SINGLETON_FIELDS: Final = frozenset(
    {
        b"content-type",
        b"authorization",
        b"proxy-authorization",
        b"range",
        b"if-range",
        b"if-modified-since",
        b"if-unmodified-since",
        b"max-forwards",
    }
)
# RFC 9112 section 2.2: a server SHOULD ignore at least one empty line before the request line.
_LEADING_CRLF_MAX: Final = 2

_TARGET_CHARS_RE: Final = re.compile(rb"[\x21-\x7e]+")

Header = tuple[bytes, bytes]

# h11's verdicts on header sections, by their exact bytes. h11 reading a head costs about 20 us,
# more than everything else in the request path together, and clients send the same header
# section again and again (every request of a keep-alive connection, every connection of a
# client). The verdict is a pure function of the bytes, so a hit is exactly as strict as a
# fresh reading. Bounded in entries and in the size of what is kept.
_VERDICTS: dict[bytes, str | None] = {}
_VERDICTS_MAX: Final = 1024
_VERDICT_KEY_MAX_BYTES: Final = 4096


def _second_reading(
    http_version: bytes, header_section: bytes, key: bytes | None = None
) -> str | None:
    """h11's objection to this header section (with its CRLF CRLF), or None. `key` is
    http_version + header_section when the caller has made it already (its hash is kept with
    it, so the two caches that look it up hash the section once)."""
    if key is None:
        key = http_version + header_section
    try:
        return _VERDICTS[key]
    except KeyError:
        pass
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=len(key) + 64)
    conn.receive_data(b"GET / HTTP/" + http_version + b"\r\n" + header_section)
    verdict: str | None
    try:
        event = conn.next_event()
        verdict = None if isinstance(event, h11.Request) else f"no request: {event!r}"
    except h11.RemoteProtocolError as exc:
        verdict = str(exc)
    if len(key) <= _VERDICT_KEY_MAX_BYTES:
        if len(_VERDICTS) >= _VERDICTS_MAX:
            _VERDICTS.clear()
        _VERDICTS[key] = verdict
    return verdict


class _Fields:
    """What a header section says, as far as it depends on its bytes and the HTTP version alone:
    the kept fields, the framing and the Host, or the first refusal of each stage (the framing
    stage's comes before the body-size check, which depends on the limits, and the Host's
    after it)."""

    __slots__ = (
        "chunked",
        "content_length",
        "expect",
        "framing_refusal",
        "headers",
        "host",
        "host_refusal",
        "keep_alive",
    )

    def __init__(self) -> None:
        self.headers: tuple[Header, ...] = ()
        self.content_length: int | None = None
        self.chunked = False
        self.host: bytes | None = None
        self.keep_alive = False
        self.expect = False
        self.framing_refusal: tuple[Reason, str] | None = None
        self.host_refusal: tuple[Reason, str] | None = None


# The readings of header sections, by their exact bytes (and the HTTP version, and whether
# underscores are refused), for the same reason as h11's verdicts above: a client sends the same
# header section with every request, and reading its fields one by one costs more than the rest
# of the request line's checks. A hit is the same pure function's result, so exactly as strict.
# Bounded in entries and in the size of what is kept. A _Fields is never changed once made:
# every request with that section shares it (its headers tuple goes into each RequestHead).
_FIELD_READINGS: tuple[dict[bytes, _Fields], dict[bytes, _Fields]] = ({}, {})
_FIELD_READINGS_MAX: Final = 256
_FIELD_READING_KEY_MAX_BYTES: Final = 2048


def _read_fields(
    http_version: bytes, header_section: bytes, refuse_underscore: bool, key: bytes
) -> _Fields:
    """The reading of this header section (its lines, then CRLF), from the cache or fresh.
    `key` is http_version + header_section."""
    readings = _FIELD_READINGS[refuse_underscore]
    try:
        return readings[key]
    except KeyError:
        pass
    fields = _read_fields_fresh(http_version, header_section, refuse_underscore)
    if len(key) <= _FIELD_READING_KEY_MAX_BYTES:
        if len(readings) >= _FIELD_READINGS_MAX:
            readings.clear()
        readings[key] = fields
    return fields


def _read_fields_fresh(
    http_version: bytes, header_section: bytes, refuse_underscore: bool
) -> _Fields:
    fields = _Fields()
    headers: list[Header] = []
    content_lengths: list[bytes] = []
    transfer_encodings: list[bytes] = []
    hosts: list[bytes] = []
    connection_tokens: set[bytes] = set()
    expect = False
    singletons_seen: set[bytes] = set()
    lines = header_section[:-4].split(b"\r\n") if header_section != b"\r\n" else []
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon or _TOKEN_RE.fullmatch(name) is None:
            fields.framing_refusal = (reasons.MALFORMED_HEADER, f"field name {name[:40]!r}")
            return fields
        value = value.strip(b" \t")
        if _FIELD_VALUE_RE.fullmatch(value) is None:
            fields.framing_refusal = (reasons.MALFORMED_HEADER, f"value of {name[:40]!r}")
            return fields
        name = name.lower()
        if _UNDERSCORE in name:
            if refuse_underscore:
                fields.framing_refusal = (reasons.UNDERSCORE_HEADER, name[:40].decode("ascii"))
                return fields
            continue
        if name == b"content-length":
            content_lengths.append(value)
        elif name == b"transfer-encoding":
            transfer_encodings.append(value)
        elif name == b"host":
            hosts.append(value)
        elif name == b"connection":
            connection_tokens.update(t.strip(b" \t").lower() for t in value.split(b","))
        elif name == b"expect":
            expect = value.lower() == b"100-continue"
        elif name in _SINGLETON_FIELDS:
            if name in singletons_seen:
                fields.framing_refusal = (reasons.DUPLICATE_FIELD, name.decode("ascii"))
                return fields
            singletons_seen.add(name)
        headers.append((name, value))

    # Framing (RFC 9112 section 6): refuse everything a front or back server could read
    # differently from us.
    if transfer_encodings:
        if content_lengths:
            fields.framing_refusal = (reasons.CL_TE_CONFLICT, "both present")
            return fields
        if http_version == b"1.0":
            fields.framing_refusal = (reasons.TE_HTTP10, "Transfer-Encoding in HTTP/1.0")
            return fields
        if len(transfer_encodings) != 1 or transfer_encodings[0].lower() != b"chunked":
            detail = repr(b", ".join(transfer_encodings))[:80]
            fields.framing_refusal = (reasons.TE_NOT_CHUNKED, detail)
            return fields
        fields.chunked = True
    elif content_lengths:
        if len(content_lengths) != 1:
            detail = f"{len(content_lengths)} fields"
            fields.framing_refusal = (reasons.MULTIPLE_CONTENT_LENGTH, detail)
            return fields
        digits = content_lengths[0]
        # Only 1*DIGIT: int() would also take '+1', ' 1', '1_0' and non-ASCII digits.
        if not digits or not digits.isdigit() or len(digits) > 18 or not digits.isascii():
            fields.framing_refusal = (reasons.INVALID_CONTENT_LENGTH, repr(digits[:40]))
            return fields
        fields.content_length = int(digits)

    if len(hosts) > 1:
        fields.host_refusal = (reasons.MULTIPLE_HOST, f"{len(hosts)} fields")
    host = hosts[0] if hosts else None
    if host is None and http_version == b"1.1":
        # RFC 9112 section 3.2: a server MUST answer 400 to an HTTP/1.1 request without Host.
        fields.host_refusal = fields.host_refusal or (reasons.MISSING_HOST, "no Host field")
    if host is not None and _HOST_RE.fullmatch(host) is None:
        fields.host_refusal = fields.host_refusal or (reasons.INVALID_HOST, repr(host[:60]))

    if http_version == b"1.1":
        fields.keep_alive = b"close" not in connection_tokens
    else:
        fields.keep_alive = b"keep-alive" in connection_tokens and b"close" not in connection_tokens
    fields.headers = tuple(headers)
    fields.host = host
    fields.expect = expect and http_version == b"1.1"
    return fields


class _Sentinel:
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


NEED_DATA: Final = _Sentinel("NEED_DATA")
PAUSED: Final = _Sentinel("PAUSED")  # one message done; waits for start_next_cycle()
CLOSED: Final = _Sentinel("CLOSED")  # the peer closed cleanly between requests


# Not frozen: a frozen dataclass sets each field through object.__setattr__, which costs about
# a microsecond per request here. Nothing mutates these after the parser builds them.
@dataclass(slots=True)
class RequestHead:
    method: bytes
    raw_target: bytes
    target: Target
    http_version: bytes  # b"1.1" or b"1.0"
    # (lower-cased name, value with surrounding whitespace removed), in arrival order. Names
    # with '_' are already dropped (or refused, by setting).
    headers: tuple[Header, ...]
    content_length: int | None
    chunked: bool
    keep_alive: bool  # the client's wish; the response may still close
    expect_continue: bool
    host: bytes | None

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)


@dataclass(slots=True)
class BodyData:
    data: bytes


@dataclass(frozen=True, slots=True)
class EndOfBody:
    trailers: tuple[Header, ...] = ()


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: Reason
    detail: str
    # The start of the refused request's first line (for a digest in the security log).
    request_line: bytes = b""


Event = RequestHead | BodyData | EndOfBody | Refusal | _Sentinel

_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILERS, _DONE, _REFUSED = range(8)


class RequestParser:
    """One connection's request stream. Feed bytes; pull events until NEED_DATA or PAUSED."""

    # One per connection, read on every request: slots keep its fields in the object itself,
    # one memory load from it instead of two (through the instance dict's values).
    __slots__ = (
        "_body_seen",
        "_buf",
        "_eof",
        "_leading_crlf",
        "_limits",
        "_line_count",
        "_path_policy",
        "_refusal",
        "_refuse_underscore",
        "_remaining",
        "_request_line",
        "_scan_pos",
        "_state",
        "_trailer_bytes",
        "_trailer_lines",
    )

    def __init__(
        self,
        limits: Limits,
        *,
        refuse_underscore_headers: bool = False,
        path_policy: PathPolicy = DEFAULT_PATH_POLICY,
    ) -> None:
        self._limits = limits
        self._path_policy = path_policy
        self._refuse_underscore = refuse_underscore_headers
        self._buf = bytearray()
        self._eof = False
        self._state = _HEAD
        self._refusal: Refusal | None = None
        # Head scanning progress, so each byte is examined once however the input is split.
        self._scan_pos = 0
        self._line_count = 0
        self._leading_crlf = 0
        # Body progress.
        self._remaining = 0  # bytes left of the Content-Length or of the current chunk
        self._body_seen = 0
        self._trailer_lines: list[bytes] = []
        self._trailer_bytes = 0
        self._request_line = b""

    # -- input -------------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        if data:
            self._buf += data

    def feed_eof(self) -> None:
        self._eof = True

    @property
    def buffered_bytes(self) -> int:
        return len(self._buf)

    def head_arrived(self) -> bool:
        """Whether the buffer holds the empty line that ends a head, looked for without reading
        the head (from where the last reading stopped, so no byte is searched twice over a
        slow head). A request that waits for its turn unread must be a whole one: half a head
        that waited would hold a place in the queue for nothing."""
        start = self._scan_pos - 2  # the line that ended there may be the head's last
        # Not max(0, ...): the builtin parses keyword arguments, about 1,100 instructions more
        # than the comparison (callgrind).
        return self._buf.find(b"\r\n\r\n", start if start > 0 else 0) >= 0

    @property
    def in_body(self) -> bool:
        return _LENGTH <= self._state <= _TRAILERS

    @property
    def message_done(self) -> bool:
        return self._state == _DONE

    def start_next_cycle(self) -> None:
        if self._state != _DONE:
            raise RuntimeError("start_next_cycle() before the request body ended")
        self._state = _HEAD
        self._scan_pos = 0
        self._line_count = 0
        self._leading_crlf = 0
        self._body_seen = 0
        self._request_line = b""

    # -- output ------------------------------------------------------------------------------

    def next_event(self) -> Event:
        state = self._state
        if state == _HEAD:
            return self._next_head()
        if state == _DONE:
            return PAUSED
        if state == _REFUSED:
            assert self._refusal is not None
            return self._refusal
        if state == _LENGTH:
            return self._next_length_data()
        return self._next_chunked()

    def _refuse(self, reason: Reason, detail: str) -> Refusal:
        if self._state == _HEAD and not self._request_line:
            line_end = self._buf.find(b"\n")
            self._request_line = bytes(self._buf[: line_end if 0 <= line_end < 512 else 512])
        self._state = _REFUSED
        self._refusal = Refusal(reason, detail, self._request_line.rstrip(b"\r"))
        self._buf.clear()
        return self._refusal

    # -- the head ----------------------------------------------------------------------------

    def _next_head(self) -> Event:
        buf = self._buf
        limits = self._limits
        if self._scan_pos == 0:
            while buf[:2] == b"\r\n" and self._leading_crlf < _LEADING_CRLF_MAX:
                del buf[:2]
                self._leading_crlf += 1
            if not buf:
                return CLOSED if self._eof else NEED_DATA
            first = buf[0]
            if first == _LF:
                return self._refuse(reasons.BARE_LF, "LF before the request line")
            if first in (_SP, _HTAB) or (first == _CR and len(buf) > 1):
                return self._refuse(
                    reasons.LEADING_WHITESPACE, "whitespace before the request line"
                )
        # The checks on a line run in one fixed order, and a line still arriving can only fail
        # the first of them (its length), so the refusal is the same however TCP splits the
        # bytes: length, then the whole head's size, then the line's own flaws, then the count.
        while True:
            start = self._scan_pos
            newline = buf.find(b"\n", start)
            if newline < 0:
                return self._head_incomplete(len(buf) - start)
            length = newline + 1 - start  # the line with its line end
            line_no = self._line_count
            if line_no == 0:
                if length > limits.request_line_max_bytes:
                    return self._refuse(reasons.REQUEST_LINE_TOO_LONG, f"{length} bytes")
            elif length > limits.header_field_max_bytes:
                return self._refuse(reasons.HEADER_FIELD_TOO_LARGE, f"{length} bytes")
            if newline + 1 > limits.head_max_bytes:
                return self._refuse(reasons.HEAD_TOO_LARGE, f"over {limits.head_max_bytes} bytes")
            if newline == start or buf[newline - 1] != _CR:
                return self._refuse(reasons.BARE_LF, f"line {line_no} ends in bare LF")
            if buf.find(b"\r", start, newline - 1) >= 0:
                return self._refuse(reasons.BARE_CR, f"line {line_no} holds a bare CR")
            if line_no and length == 2:
                head = bytes(buf[: newline + 1])
                del buf[: newline + 1]
                return self._parse_head(head)
            if line_no:
                if buf[start] in (_SP, _HTAB):
                    return self._refuse(reasons.OBS_FOLD, f"line {line_no}")
                if line_no > limits.header_count_max:
                    return self._refuse(reasons.TOO_MANY_HEADERS, f"over {limits.header_count_max}")
            self._line_count += 1
            self._scan_pos = newline + 1

    def _head_incomplete(self, partial_line: int) -> Event:
        limits = self._limits
        # A line can be refused for its length before its end arrives (+1: its LF is still to
        # come): waiting would let a client make us buffer a line we know is too long. The
        # head's total size is checked only on whole lines, like every other check, which
        # bounds the buffer at head_max_bytes plus one line.
        if self._line_count == 0:
            if partial_line + 1 > limits.request_line_max_bytes:
                return self._refuse(reasons.REQUEST_LINE_TOO_LONG, f"over {partial_line} bytes")
        elif partial_line + 1 > limits.header_field_max_bytes:
            return self._refuse(reasons.HEADER_FIELD_TOO_LARGE, f"over {partial_line} bytes")
        if self._eof:
            return self._refuse(reasons.INCOMPLETE_HEAD, f"closed after {len(self._buf)} bytes")
        return NEED_DATA

    def _parse_head(self, head: bytes) -> Event:
        request_line = head[: head.index(b"\r\n")]
        self._request_line = request_line[:512]
        parts = request_line.split(b" ")
        if len(parts) != 3 or not all(parts):
            return self._refuse(reasons.MALFORMED_REQUEST_LINE, "not three fields")
        method, raw_target, version = parts
        version_match = _VERSION_RE.fullmatch(version)
        if version_match is None:
            return self._refuse(reasons.MALFORMED_REQUEST_LINE, "bad HTTP-version")
        if version not in (b"HTTP/1.1", b"HTTP/1.0"):
            return self._refuse(reasons.UNSUPPORTED_VERSION, version.decode("ascii"))
        http_version = version[5:]
        if _TOKEN_RE.fullmatch(method) is None:
            return self._refuse(reasons.MALFORMED_REQUEST_LINE, "method is not a token")
        if _TARGET_CHARS_RE.fullmatch(raw_target) is None:
            # RFC 9112 section 3.2 and RFC 3986: a target is visible ASCII (h11's grammar too).
            return self._refuse(reasons.MALFORMED_REQUEST_LINE, "target is not visible ASCII")

        header_section = head[len(request_line) + 2 :]
        key = http_version + header_section  # of both caches below
        fields = _read_fields(http_version, header_section, self._refuse_underscore, key)
        if fields.framing_refusal is not None:
            return self._refuse(*fields.framing_refusal)
        content_length = fields.content_length
        if content_length is not None and content_length > self._limits.body_max_bytes:
            return self._refuse(reasons.BODY_TOO_LARGE, f"Content-Length {content_length}")
        if fields.host_refusal is not None:
            return self._refuse(*fields.host_refusal)

        if method == b"CONNECT":
            return self._refuse(reasons.METHOD_NOT_SUPPORTED, "CONNECT")
        try:
            target = parse_target(method, raw_target, self._path_policy)
        except TargetError as exc:
            return self._refuse(reasons.by_code(exc.code), str(exc))

        # The second reading: h11 parses the same header section with its own grammar. A head
        # that passes our policy and fails h11 is refused too; the two must agree.
        verdict = _second_reading(http_version, header_section, key)
        if verdict is not None:
            return self._refuse(reasons.MALFORMED_HEADER, f"h11: {verdict}")

        chunked = fields.chunked
        if chunked:
            self._state = _CHUNK_SIZE
        elif content_length:
            self._state = _LENGTH
            self._remaining = content_length
        else:
            self._state = _DONE
        self._body_seen = 0
        return RequestHead(
            method=method,
            raw_target=raw_target,
            target=target,
            http_version=http_version,
            headers=fields.headers,
            content_length=content_length,
            chunked=chunked,
            keep_alive=fields.keep_alive,
            expect_continue=fields.expect,
            host=fields.host,
        )

    # -- bodies ------------------------------------------------------------------------------

    def _next_length_data(self) -> Event:
        buf = self._buf
        if self._remaining == 0:
            self._state = _DONE
            return EndOfBody()
        if not buf:
            if self._eof:
                return self._refuse(reasons.INCOMPLETE_BODY, f"{self._remaining} bytes missing")
            return NEED_DATA
        take = min(self._remaining, len(buf))
        data = bytes(buf[:take])
        del buf[:take]
        self._remaining -= take
        self._body_seen += take
        return BodyData(data)

    def _next_chunked(self) -> Event:
        buf = self._buf
        limits = self._limits
        while True:
            state = self._state
            if state == _CHUNK_DATA:
                if not buf:
                    break
                take = min(self._remaining, len(buf))
                data = bytes(buf[:take])
                del buf[:take]
                self._remaining -= take
                if self._remaining == 0:
                    self._state = _CHUNK_CRLF
                return BodyData(data)
            if state == _CHUNK_CRLF:
                if len(buf) < 2:
                    if len(buf) == 1 and buf[0] != _CR:
                        return self._refuse(reasons.BAD_CHUNK_TERMINATOR, repr(bytes(buf[:2])))
                    break
                if buf[:2] != b"\r\n":
                    return self._refuse(reasons.BAD_CHUNK_TERMINATOR, repr(bytes(buf[:2])))
                del buf[:2]
                self._state = _CHUNK_SIZE
                continue
            if state == _CHUNK_SIZE:
                newline = buf.find(b"\n")
                if newline < 0:
                    if len(buf) + 1 > limits.chunk_line_max_bytes:
                        return self._refuse(reasons.CHUNK_LINE_TOO_LONG, f"over {len(buf)} bytes")
                    break
                # Length first, as for a line still arriving (the limit counts the CRLF).
                if newline + 1 > limits.chunk_line_max_bytes:
                    return self._refuse(reasons.CHUNK_LINE_TOO_LONG, f"{newline + 1} bytes")
                if newline == 0 or buf[newline - 1] != _CR:
                    return self._refuse(reasons.BARE_LF, "chunk-size line ends in bare LF")
                line = bytes(buf[: newline - 1])
                match = _CHUNK_LINE_RE.fullmatch(line)
                if match is None:
                    return self._refuse(reasons.INVALID_CHUNK_SIZE, repr(line[:40]))
                del buf[: newline + 1]
                size_digits = match.group(1)
                if len(size_digits.lstrip(b"0")) > 15:
                    return self._refuse(reasons.BODY_TOO_LARGE, "chunk size over 15 hex digits")
                size = int(size_digits, 16)
                if self._body_seen + size > limits.body_max_bytes:
                    return self._refuse(reasons.BODY_TOO_LARGE, f"over {limits.body_max_bytes}")
                self._body_seen += size
                if size == 0:
                    self._state = _TRAILERS
                    self._trailer_lines = []
                    self._trailer_bytes = 0
                else:
                    self._state = _CHUNK_DATA
                    self._remaining = size
                continue
            # _TRAILERS
            return self._next_trailer()
        if self._eof:
            return self._refuse(reasons.INCOMPLETE_BODY, "closed inside a chunked body")
        return NEED_DATA

    def _next_trailer(self) -> Event:
        buf = self._buf
        limits = self._limits
        while True:
            newline = buf.find(b"\n")
            if newline < 0:
                if self._trailer_bytes + len(buf) + 1 > limits.trailer_max_bytes:
                    return self._refuse(
                        reasons.TRAILERS_TOO_LARGE, f"over {limits.trailer_max_bytes}"
                    )
                if self._eof:
                    return self._refuse(reasons.INCOMPLETE_BODY, "closed inside the trailers")
                return NEED_DATA
            # Size first, as for a line still arriving.
            self._trailer_bytes += newline + 1
            if self._trailer_bytes > limits.trailer_max_bytes:
                return self._refuse(reasons.TRAILERS_TOO_LARGE, f"over {limits.trailer_max_bytes}")
            if newline == 0 or buf[newline - 1] != _CR:
                return self._refuse(reasons.BARE_LF, "trailer line ends in bare LF")
            line = bytes(buf[: newline - 1])
            del buf[: newline + 1]
            if not line:
                break
            if _CR in line:
                return self._refuse(reasons.BARE_CR, "in a trailer line")
            if line[0] in (_SP, _HTAB):
                return self._refuse(reasons.OBS_FOLD, "in the trailers")
            self._trailer_lines.append(line)
        trailers: list[Header] = []
        for line in self._trailer_lines:
            name, colon, value = line.partition(b":")
            value = value.strip(b" \t")
            if (
                not colon
                or _TOKEN_RE.fullmatch(name) is None
                or _FIELD_VALUE_RE.fullmatch(value) is None
            ):
                return self._refuse(reasons.MALFORMED_TRAILER, repr(name[:40]))
            name = name.lower()
            if name in _FORBIDDEN_TRAILERS:
                return self._refuse(reasons.FORBIDDEN_TRAILER, name.decode("ascii"))
            trailers.append((name, value))
        self._trailer_lines = []
        self._state = _DONE
        return EndOfBody(tuple(trailers))

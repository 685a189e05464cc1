"""Every way a request or connection is refused: one stable code, its status, whether to close.

Logs and metrics use the code; the client sees the status and a short body. A refusal of the
framing always closes the connection: once the framing is in doubt, nothing after it on the
same connection can be trusted to be a request.
"""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus


@dataclass(frozen=True, slots=True)
class Reason:
    """status 0: nothing can or should be said on the wire; the connection is closed at once."""

    code: str
    status: int
    close: bool
    summary: str

    @property
    def phrase(self) -> str:
        return HTTPStatus(self.status).phrase if self.status else ""


_TABLE: dict[str, Reason] = {}


def _reason(code: str, status: int, summary: str, *, close: bool = True) -> Reason:
    reason = Reason(code, status, close, summary)
    if code in _TABLE:  # pragma: no cover - guards the table itself at import time
        raise ValueError(f"duplicate reason code {code}")
    _TABLE[code] = reason
    return reason


# The request head.
MALFORMED_REQUEST_LINE = _reason(
    "malformed_request_line", 400, "request line is not METHOD SP target SP HTTP/x.y"
)
MALFORMED_HEADER = _reason("malformed_header", 400, "header field is not token ':' value")
BARE_LF = _reason("bare_lf", 400, "line ended by LF without CR")
BARE_CR = _reason("bare_cr", 400, "CR not followed by LF")
OBS_FOLD = _reason("obs_fold", 400, "obsolete line folding (continuation line)")
LEADING_WHITESPACE = _reason("leading_whitespace", 400, "whitespace before the request line")
REQUEST_LINE_TOO_LONG = _reason("request_line_too_long", 414, "request line over the limit")
HEADER_FIELD_TOO_LARGE = _reason("header_field_too_large", 431, "one header field over the limit")
TOO_MANY_HEADERS = _reason("too_many_headers", 431, "more header fields than the limit")
HEAD_TOO_LARGE = _reason("head_too_large", 431, "request head over the limit")
UNSUPPORTED_VERSION = _reason("unsupported_version", 505, "HTTP version other than 1.0 or 1.1")
MISSING_HOST = _reason("missing_host", 400, "HTTP/1.1 request without Host")
MULTIPLE_HOST = _reason("multiple_host", 400, "more than one Host field")
INVALID_HOST = _reason("invalid_host", 400, "Host is not a valid host[:port]")
INVALID_TARGET = _reason("invalid_target", 400, "request-target form not allowed for the method")
METHOD_NOT_SUPPORTED = _reason("method_not_supported", 501, "CONNECT cannot be served by WSGI")
DUPLICATE_FIELD = _reason("duplicate_field", 400, "a single-valued field sent twice")
PATH_ESCAPES_ROOT = _reason("path_escapes_root", 400, "dot segments climb above the root")
PATH_BAD_ESCAPE = _reason("path_bad_escape", 400, "'%' not followed by two hex digits")
PATH_ENCODED_SLASH = _reason("path_encoded_slash", 400, "encoded slash %2F in the path")
PATH_BACKSLASH = _reason("path_backslash", 400, "backslash (raw or %5C) in the path")
PATH_CONTROL_CHAR = _reason("path_control_char", 400, "control character in the decoded path")
PATH_OVERLONG_UTF8 = _reason("path_overlong_utf8", 400, "overlong UTF-8 in the decoded path")
UNDERSCORE_HEADER = _reason("underscore_header", 400, "header name with '_' (refused by setting)")

# Body framing.
CL_TE_CONFLICT = _reason("cl_te_conflict", 400, "Content-Length together with Transfer-Encoding")
MULTIPLE_CONTENT_LENGTH = _reason("multiple_content_length", 400, "more than one Content-Length")
INVALID_CONTENT_LENGTH = _reason("invalid_content_length", 400, "Content-Length is not 1*DIGIT")
TE_NOT_CHUNKED = _reason("te_not_chunked", 501, "Transfer-Encoding other than exactly chunked")
TE_HTTP10 = _reason("te_http10", 400, "Transfer-Encoding in an HTTP/1.0 request")
INVALID_CHUNK_SIZE = _reason("invalid_chunk_size", 400, "chunk-size line is not HEXDIG [ext] CRLF")
CHUNK_LINE_TOO_LONG = _reason("chunk_line_too_long", 400, "chunk-size line over the limit")
BAD_CHUNK_TERMINATOR = _reason("bad_chunk_terminator", 400, "chunk data not followed by CRLF")
MALFORMED_TRAILER = _reason("malformed_trailer", 400, "trailer field is not token ':' value")
FORBIDDEN_TRAILER = _reason("forbidden_trailer", 400, "trailer field that must not be a trailer")
TRAILERS_TOO_LARGE = _reason("trailers_too_large", 431, "trailer section over the limit")
BODY_TOO_LARGE = _reason("body_too_large", 413, "request body over the limit")
INCOMPLETE_BODY = _reason("incomplete_body", 400, "connection closed inside the body")
INCOMPLETE_HEAD = _reason("incomplete_head", 400, "connection closed inside the head")

# Time.
HEAD_TIMEOUT = _reason("head_timeout", 408, "request head not complete within the head deadline")
BODY_TIMEOUT = _reason("body_timeout", 408, "no body byte within the body idle timeout")
BODY_TOO_SLOW = _reason("body_too_slow", 408, "body arriving below the minimum rate")
SEND_TIMEOUT = _reason("send_timeout", 0, "client read nothing within the write timeout")
SEND_TOO_SLOW = _reason("send_too_slow", 0, "client reading below the minimum send rate")

# Proxies (PROXY protocol header at the start of a connection, forwarding headers).
FORWARDED_INVALID = _reason(
    "forwarded_invalid", 400, "malformed or ambiguous forwarding fields from a trusted proxy"
)
PROXY_HEADER_INVALID = _reason("proxy_header_invalid", 0, "malformed PROXY protocol header")
PROXY_HEADER_MISSING = _reason(
    "proxy_header_missing", 0, "PROXY protocol required but the connection did not start with one"
)
PROXY_PEER_UNTRUSTED = _reason(
    "proxy_peer_untrusted", 0, "PROXY protocol header from a peer not in the allow-list"
)

# TLS: the handshake of a connection on a TLS listener, before any HTTP is read. Nothing can be
# answered (there is no TLS session to answer in): the connection is closed.
TLS_HANDSHAKE_TIMEOUT = _reason(
    "tls_handshake_timeout", 0, "TLS handshake not complete within the handshake deadline"
)
TLS_PLAIN_HTTP = _reason("tls_plain_http", 0, "plain HTTP sent to a TLS listener")
TLS_HANDSHAKE_FAILED = _reason(
    "tls_handshake_failed", 0, "TLS handshake failed: version, ciphers or client certificate"
)

# Capacity.
POOL_SATURATED = _reason(
    "pool_saturated", 503, "every pool thread busy and the queue full", close=False
)
QUEUE_TIMEOUT = _reason(
    "queue_timeout", 503, "waited in the pool's queue longer than the limit", close=False
)
CLIENT_IN_FLIGHT = _reason(
    "client_in_flight", 503, "client address has too many requests in flight", close=False
)
CLIENT_CONNECTIONS = _reason(
    "client_connections", 0, "client address has too many open connections"
)


def by_code(code: str) -> Reason:
    return _TABLE[code]


def all_reasons() -> tuple[Reason, ...]:
    return tuple(_TABLE.values())

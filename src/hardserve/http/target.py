"""The request-target: which of RFC 9112's four forms it is, the path and query it names, and
the path-traversal policy.

origin-form (`/path?query`) is what servers receive; absolute-form (`http://host/path`) must be
accepted from clients that talk to us as a proxy (RFC 9112 section 3.2.2), and its authority then
wins over the Host field; asterisk-form is for `OPTIONS *` only and authority-form for CONNECT
only. Anything else is refused.

The path is percent-decoded exactly once, here, and refused when what it decodes to could be read
differently by the app or by a file system: see docs/paths.md, which lists what the app receives
for every case (a test keeps the two in step).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote_to_bytes

_ABSOLUTE_RE: Final = re.compile(rb"([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)(.*)", re.DOTALL)
# RFC 3986 section 3.2.2 host (IP-literal or reg-name) with an optional port. No userinfo: RFC
# 9110 section 4.2.4 says to treat its presence as an error.
_HOST_PORT_RE: Final = re.compile(
    rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]+)(?::[0-9]*)?"
)
_AUTHORITY_FORM_RE: Final = re.compile(
    rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]+):[0-9]+"
)
_BAD_ESCAPE_RE: Final = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_ENCODED_SLASH_RE: Final = re.compile(rb"%2[Ff]")
_ENCODED_BACKSLASH_RE: Final = re.compile(rb"%5[Cc]")
_CONTROL_RE: Final = re.compile(rb"[\x00-\x1f\x7f]")
# Overlong UTF-8: a code point encoded in more bytes than it needs (C0/C1 lead bytes, E0 80-9F,
# F0 80-8F). `%C0%AF` is a slash to a lenient decoder and not to us: refuse it.
_OVERLONG_RE: Final = re.compile(rb"[\xc0\xc1]|\xe0[\x80-\x9f]|\xf0[\x80-\x8f]")
# Bytes looked for with `in` are given as integers: CPython 3.11 first tries a bytes needle as
# an integer and formats the TypeError it then discards (about 1,600 instructions: 95 ns against
# 12 for an integer). A longer needle is looked for with find() (65 ns) for the same reason.
_BACKSLASH: Final = ord("\\")
_PERCENT: Final = ord("%")


class TargetError(ValueError):
    """The target is refused; `code` is the reason code (see http/reasons.py)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class PathPolicy:
    """What the path may contain beyond the safe default. Both options are risky: an app or a
    file system that treats `%2F` as `/`, or `\\` as a separator, sees a different path from the
    one the server checked."""

    allow_encoded_slash: bool = False
    allow_backslash: bool = False


DEFAULT_PATH_POLICY: Final = PathPolicy()


@dataclass(slots=True)  # not frozen, for speed: see RequestHead
class Target:
    # The path as sent (percent-encoded), the query without its '?'. The fragment, which a client
    # should never send, is cut off as RFC 3986 parsers do.
    raw_path: bytes
    query: bytes
    # The path, percent-decoded once and checked (PEP 3333 gives it to the app as latin-1).
    path: bytes
    # The authority of an absolute-form target, which wins over the Host field.
    authority: bytes | None = None


def decode_path(raw_path: bytes, policy: PathPolicy = DEFAULT_PATH_POLICY) -> bytes:
    """Percent-decode the path once, refusing what could be read two ways."""
    if _BACKSLASH in raw_path and not policy.allow_backslash:
        raise TargetError("path_backslash", "backslash in the path")
    path = raw_path
    if _PERCENT in raw_path:
        if _BAD_ESCAPE_RE.search(raw_path) is not None:
            raise TargetError("path_bad_escape", "'%' not followed by two hex digits")
        if not policy.allow_encoded_slash and _ENCODED_SLASH_RE.search(raw_path) is not None:
            raise TargetError("path_encoded_slash", "encoded slash %2F in the path")
        if not policy.allow_backslash and _ENCODED_BACKSLASH_RE.search(raw_path) is not None:
            raise TargetError("path_backslash", "encoded backslash %5C in the path")
        path = unquote_to_bytes(raw_path)
        # Raw control bytes never get this far (the request line is visible ASCII); encoded
        # ones do, and a NUL ends a path early in C code.
        if _CONTROL_RE.search(path) is not None:
            raise TargetError("path_control_char", "control character in the decoded path")
        if _OVERLONG_RE.search(path) is not None:
            raise TargetError("path_overlong_utf8", "overlong UTF-8 in the decoded path")
    if path.find(b"/.") >= 0 or (policy.allow_backslash and path.find(b"\\.") >= 0):
        _refuse_climbing(path, policy)
    return path


def _refuse_climbing(path: bytes, policy: PathPolicy) -> None:
    """Refuse dot segments that climb above the root (RFC 3986 section 5.2.4 semantics). Dot
    segments that stay inside (`/a/../b`) are passed on as sent."""
    if policy.allow_backslash:
        path = path.replace(b"\\", b"/")
    depth = 0
    for segment in path.split(b"/")[1:]:
        if segment == b"..":
            depth -= 1
            if depth < 0:
                raise TargetError("path_escapes_root", "dot segments climb above the root")
        elif segment and segment != b".":
            depth += 1


def _split(path_and_query: bytes, policy: PathPolicy, authority: bytes | None = None) -> Target:
    path_and_query = path_and_query.split(b"#", 1)[0]
    raw_path, _, query = path_and_query.partition(b"?")
    return Target(raw_path, query, decode_path(raw_path, policy), authority)


def parse_target(method: bytes, target: bytes, policy: PathPolicy = DEFAULT_PATH_POLICY) -> Target:
    if target[:1] == b"/":
        return _split(target, policy)
    if target == b"*":
        if method != b"OPTIONS":
            raise TargetError("invalid_target", "asterisk-form is only for OPTIONS")
        return Target(b"*", b"", b"*")
    match = _ABSOLUTE_RE.fullmatch(target)
    if match is not None:
        scheme, authority, rest = match.groups()
        if scheme.lower() not in (b"http", b"https"):
            raise TargetError("invalid_target", "absolute-form target with a scheme not http(s)")
        if _HOST_PORT_RE.fullmatch(authority) is None:
            raise TargetError("invalid_target", "absolute-form target with a malformed authority")
        if not rest or rest[:1] == b"#":
            return Target(b"/", b"", b"/", authority)
        if rest[:1] == b"?":
            rest = b"/" + rest
        return _split(rest, policy, authority)
    if _AUTHORITY_FORM_RE.fullmatch(target) is not None:
        raise TargetError("invalid_target", "authority-form is only for CONNECT")
    raise TargetError(
        "invalid_target",
        "request-target is neither origin-, absolute-, authority- nor asterisk-form",
    )

"""The request-target: which of RFC 9112's four forms it is, and the path and query it names.

origin-form (`/path?query`) is what servers receive; absolute-form (`http://host/path`) must be
accepted from clients that talk to us as a proxy (RFC 9112 section 3.2.2); asterisk-form is for
`OPTIONS *` only and authority-form for CONNECT only. Anything else is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

_ABSOLUTE_RE = re.compile(rb"^[A-Za-z][A-Za-z0-9+.-]*://([^/?#]*)(.*)$", re.DOTALL)
_AUTHORITY_RE = re.compile(rb"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]+):[0-9]+$")


class TargetError(ValueError):
    """The target is not in a form allowed for the method."""


@dataclass(slots=True)  # not frozen, for speed: see RequestHead
class Target:
    # The path, still percent-encoded, and the query without its '?'. The fragment, which a
    # client should never send, is cut off as RFC 3986 parsers do.
    raw_path: bytes
    query: bytes

    @property
    def path(self) -> bytes:
        """The percent-decoded path, as bytes (PEP 3333 then decodes them as latin-1)."""
        if b"%" not in self.raw_path:
            return self.raw_path
        return unquote_to_bytes(self.raw_path)


def _split(path_and_query: bytes) -> Target:
    path_and_query = path_and_query.split(b"#", 1)[0]
    path, _, query = path_and_query.partition(b"?")
    return Target(path, query)


def parse_target(method: bytes, target: bytes) -> Target:
    if target[:1] == b"/":
        return _split(target)
    if target == b"*":
        if method != b"OPTIONS":
            raise TargetError("asterisk-form is only for OPTIONS")
        return Target(b"*", b"")
    match = _ABSOLUTE_RE.match(target)
    if match is not None:
        rest = match.group(2)
        if rest[:1] not in (b"/", b"?", b"#", b""):
            raise TargetError("absolute-form target with a malformed authority")
        target_parts = _split(rest)
        return target_parts if target_parts.raw_path else Target(b"/", target_parts.query)
    if _AUTHORITY_RE.match(target) is not None:
        raise TargetError("authority-form is only for CONNECT")
    raise TargetError("request-target is neither origin-, absolute-, authority- nor asterisk-form")

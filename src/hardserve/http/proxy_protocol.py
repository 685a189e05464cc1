"""The HAProxy PROXY protocol header (versions 1 and 2), read from the start of a connection.

Spec: https://www.haproxy.org/download/2.8/doc/proxy-protocol.txt. A listener that expects the
header must not guess whether it is there (section 2: that would let any client choose its
address), so anything that does not start like a header is refused at once, and so is anything
that starts like one and then departs from the spec by a byte.

Bounded: v1 is at most 107 bytes (section 2.1); v2 at most 536 (16 + 520), the size the spec
says both formats are designed to fit in (section 2). Nothing past the maximum is ever kept
while the header is incomplete. The outcome is the same however the bytes are split.

Nothing here does I/O, reads a clock or logs.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Final

# Reason codes (http/reasons.py): the connection is closed without an answer.
PROXY_HEADER_INVALID: Final = "proxy_header_invalid"
PROXY_HEADER_MISSING: Final = "proxy_header_missing"

V1_PREFIX: Final = b"PROXY "
# "PROXY UNKNOWN ffff:...:ffff ffff:...:ffff 65535 65535\r\n", the longest line (section 2.1).
V1_MAX_BYTES: Final = 107
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED_BYTES: Final = 16
# 16 fixed bytes + 216 of AF_UNIX addresses leaves 304 for TLVs: room for every TLV HAProxy,
# AWS, GCP and Azure load balancers send (ALPN, authority, CRC32C, unique ID up to 128 bytes,
# SSL with version, cipher and a common name, endpoint IDs).
V2_MAX_BYTES: Final = 536
MAX_BYTES: Final = V2_MAX_BYTES

_LOCAL, _PROXY = 0x0, 0x1
_AF_UNSPEC, _AF_INET, _AF_INET6, _AF_UNIX = 0x0, 0x1, 0x2, 0x3
_UNSPEC, _STREAM, _DGRAM = 0x0, 0x1, 0x2
_ADDRESS_BYTES: Final = {_AF_INET: 12, _AF_INET6: 36, _AF_UNIX: 216}

# Section 2.1: exactly one space between fields; IPv4 as four decimal numbers without leading
# zeros; IPv6 as hex groups and colons (no zone, no dotted tail); ports 0..65535 without leading
# zeros ("to avoid any possible confusion with octal numbers").
_IPV4 = rb"((?:0|[1-9][0-9]{0,2})(?:\.(?:0|[1-9][0-9]{0,2})){3})"
_PORT = rb"(0|[1-9][0-9]{0,4})"
_V1_TCP4_RE: Final = re.compile(b"TCP4 " + _IPV4 + b" " + _IPV4 + b" " + _PORT + b" " + _PORT)
_V1_TCP6_RE: Final = re.compile(rb"TCP6 ([0-9A-Fa-f:]+) ([0-9A-Fa-f:]+) " + _PORT + b" " + _PORT)
# "For UNKNOWN, the rest of the line before the CRLF may be omitted by the sender, and the
# receiver must ignore anything presented before the CRLF is found." Still one line of text.
_V1_UNKNOWN_RE: Final = re.compile(rb"UNKNOWN(?: [\x20-\x7e]*)?")


class ProxyProtocolError(ValueError):
    """The connection must be closed; `code` is the reason code (see http/reasons.py)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """What the proxy says about the connection it relays.

    Addresses and ports are None when the header carries none the server can use: v1 UNKNOWN,
    v2 LOCAL (a health check by the proxy itself), AF_UNSPEC and AF_UNIX. The connection's own
    endpoints then stand. `remainder` holds the bytes after the header: the start of the HTTP
    stream."""

    version: int
    local: bool
    source_addr: str | None
    source_port: int | None
    dest_addr: str | None
    dest_port: int | None
    remainder: bytes


class ProxyHeaderReader:
    """Feed the first bytes of a connection until a ProxyHeader comes out (None: need more)."""

    __slots__ = ("_buf", "_done")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._done = False

    @property
    def buffered_bytes(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> ProxyHeader | None:
        if self._done:
            raise RuntimeError("the PROXY header was already read")
        # Keep at most MAX_BYTES; the rest of `data`, if the header ends inside what is kept,
        # is the remainder. Past the maximum, an incomplete header is refused below.
        room = MAX_BYTES - len(self._buf)
        self._buf += data[:room]
        rest = data[room:]
        try:
            header = self._parse()
        except ProxyProtocolError:
            self._done = True
            self._buf.clear()
            raise
        if header is None:
            return None
        self._done = True
        end, version, local, source, dest = header
        remainder = bytes(self._buf[end:]) + rest
        self._buf.clear()
        return ProxyHeader(
            version=version,
            local=local,
            source_addr=source[0],
            source_port=source[1],
            dest_addr=dest[0],
            dest_port=dest[1],
            remainder=remainder,
        )

    def _parse(self) -> _Parsed | None:
        buf = self._buf
        first = buf[:1]
        if first == b"P":
            return _parse_v1(buf)
        if first == b"\r":
            return _parse_v2(buf)
        if not buf:
            return None
        raise ProxyProtocolError(PROXY_HEADER_MISSING, f"starts with {bytes(buf[:8])!r}")


_Endpoint = tuple[str | None, int | None]
_NO_ENDPOINT: Final[_Endpoint] = (None, None)
# (header length, version, local, source, destination)
_Parsed = tuple[int, int, bool, _Endpoint, _Endpoint]


def _check_prefix(buf: bytearray, prefix: bytes) -> bool:
    """Whether `prefix` is all there; refuses as soon as a byte of it differs."""
    seen = bytes(buf[: len(prefix)])
    if not prefix.startswith(seen):
        raise ProxyProtocolError(PROXY_HEADER_MISSING, f"starts with {bytes(buf[:16])!r}")
    return len(seen) == len(prefix)


def _parse_v1(buf: bytearray) -> _Parsed | None:
    if not _check_prefix(buf, V1_PREFIX):
        return None
    lf = buf.find(b"\n", 0, V1_MAX_BYTES)
    if lf < 0:
        if len(buf) >= V1_MAX_BYTES:
            raise ProxyProtocolError(PROXY_HEADER_INVALID, "v1: no CRLF in the first 107 bytes")
        if buf.find(b"\r", 0, len(buf) - 1) >= 0:
            raise ProxyProtocolError(PROXY_HEADER_INVALID, "v1: CR not followed by LF")
        return None
    # The line must end with CRLF, and hold no other CR (section 2.1: a single CR or LF must
    # not be tolerated as a line end). The line's own grammar refuses a stray CR.
    if lf == 0 or buf[lf - 1] != 0x0D:
        raise ProxyProtocolError(PROXY_HEADER_INVALID, "v1: line not ended by CRLF")
    line = bytes(buf[len(V1_PREFIX) : lf - 1])
    end = lf + 1
    match = _V1_TCP4_RE.fullmatch(line)
    if match is not None:
        src, dst, sport, dport = match.groups()
        return end, 1, False, _v1_endpoint(src, sport, 4), _v1_endpoint(dst, dport, 4)
    match = _V1_TCP6_RE.fullmatch(line)
    if match is not None:
        src, dst, sport, dport = match.groups()
        return end, 1, False, _v1_endpoint(src, sport, 6), _v1_endpoint(dst, dport, 6)
    if _V1_UNKNOWN_RE.fullmatch(line) is not None:
        return end, 1, False, _NO_ENDPOINT, _NO_ENDPOINT
    raise ProxyProtocolError(PROXY_HEADER_INVALID, f"v1: malformed line {line[:60]!r}")


def _v1_endpoint(addr: bytes, port: bytes, family: int) -> _Endpoint:
    try:
        text = addr.decode("ascii")
        ip = ipaddress.IPv4Address(text) if family == 4 else ipaddress.IPv6Address(text)
    except ValueError:
        raise ProxyProtocolError(
            PROXY_HEADER_INVALID, f"v1: bad IPv{family} address {addr!r}"
        ) from None
    number = int(port)
    if number > 65535:
        raise ProxyProtocolError(PROXY_HEADER_INVALID, f"v1: port {number} over 65535")
    return str(ip), number


def _parse_v2(buf: bytearray) -> _Parsed | None:
    if not _check_prefix(buf, V2_SIGNATURE):
        return None
    if len(buf) < V2_FIXED_BYTES:
        if len(buf) > 12:
            _v2_version_command(buf[12])
        return None
    local = _v2_version_command(buf[12])
    family, transport = buf[13] >> 4, buf[13] & 0x0F
    if family > _AF_UNIX or transport > _DGRAM:
        raise ProxyProtocolError(PROXY_HEADER_INVALID, f"v2: family/transport {buf[13]:#04x}")
    length = int.from_bytes(buf[14:16], "big")
    end = V2_FIXED_BYTES + length
    if end > V2_MAX_BYTES:
        raise ProxyProtocolError(
            PROXY_HEADER_INVALID, f"v2: {length} bytes announced, at most {V2_MAX_BYTES - 16}"
        )
    if len(buf) < end:
        return None
    if local:
        # Section 2.2: LOCAL is the proxy's own connection (a health check); the receiver uses
        # the real endpoints and discards the whole block, whatever family it names.
        return end, 2, True, _NO_ENDPOINT, _NO_ENDPOINT
    if family == _AF_UNSPEC:
        if transport != _UNSPEC:
            raise ProxyProtocolError(PROXY_HEADER_INVALID, f"v2: family/transport {buf[13]:#04x}")
        return end, 2, False, _NO_ENDPOINT, _NO_ENDPOINT
    if transport != _STREAM:
        # HTTP runs over a stream; a header describing a datagram flow (or none) is not ours.
        raise ProxyProtocolError(PROXY_HEADER_INVALID, f"v2: transport {transport} is not STREAM")
    address_bytes = _ADDRESS_BYTES[family]
    if length < address_bytes:
        raise ProxyProtocolError(
            PROXY_HEADER_INVALID, f"v2: {length} bytes, the family needs {address_bytes}"
        )
    _check_tlvs(buf, V2_FIXED_BYTES + address_bytes, end)
    block = bytes(buf[V2_FIXED_BYTES : V2_FIXED_BYTES + address_bytes])
    if family == _AF_UNIX:
        # A unix socket path says nothing usable about a remote client.
        return end, 2, False, _NO_ENDPOINT, _NO_ENDPOINT
    size = 4 if family == _AF_INET else 16
    make = ipaddress.IPv4Address if family == _AF_INET else ipaddress.IPv6Address
    src, dst = make(block[:size]), make(block[size : 2 * size])
    sport = int.from_bytes(block[2 * size : 2 * size + 2], "big")
    dport = int.from_bytes(block[2 * size + 2 : 2 * size + 4], "big")
    return end, 2, False, (str(src), sport), (str(dst), dport)


def _v2_version_command(byte: int) -> bool:
    """True for LOCAL, False for PROXY; refuses any other version or command."""
    if byte >> 4 != 2:
        raise ProxyProtocolError(PROXY_HEADER_INVALID, f"v2: version {byte >> 4}")
    command = byte & 0x0F
    if command not in (_LOCAL, _PROXY):
        raise ProxyProtocolError(PROXY_HEADER_INVALID, f"v2: command {command}")
    return command == _LOCAL


def _check_tlvs(buf: bytearray, pos: int, end: int) -> None:
    """The bytes after the addresses must be whole TLVs (type, 2-byte length, value), each
    inside the header. Their content is not used."""
    while pos < end:
        if end - pos < 3:
            raise ProxyProtocolError(PROXY_HEADER_INVALID, "v2: truncated TLV")
        pos += 3 + int.from_bytes(buf[pos + 1 : pos + 3], "big")
        if pos > end:
            raise ProxyProtocolError(PROXY_HEADER_INVALID, "v2: TLV runs past the header")

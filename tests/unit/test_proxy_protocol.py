"""The PROXY protocol header reader (http/proxy_protocol.py), fed plain bytes, whole and split
every way: the outcome must not depend on how TCP cuts the bytes."""

from __future__ import annotations

import dataclasses
import random
import struct
from dataclasses import dataclass

import pytest

from hardserve.http.proxy_protocol import (
    MAX_BYTES,
    PROXY_HEADER_INVALID,
    PROXY_HEADER_MISSING,
    V1_MAX_BYTES,
    V2_MAX_BYTES,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderReader,
    ProxyProtocolError,
)
from hardserve.http.reasons import by_code

HTTP = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


@dataclass(frozen=True)
class Outcome:
    header: ProxyHeader | None = None
    code: str | None = None  # the error's code; both None: still waiting for bytes
    max_buffered: int = 0


def drive(pieces: list[bytes]) -> Outcome:
    """Feed the pieces until an outcome; what arrives after the header is the HTTP stream."""
    reader = ProxyHeaderReader()
    most = 0
    for index, piece in enumerate(pieces):
        try:
            header = reader.feed(piece)
        except ProxyProtocolError as exc:
            return Outcome(code=exc.code, max_buffered=most)
        most = max(most, reader.buffered_bytes)
        if header is not None:
            stream = header.remainder + b"".join(pieces[index + 1 :])
            return Outcome(header=dataclasses.replace(header, remainder=stream), max_buffered=most)
    return Outcome(max_buffered=most)


def splits(data: bytes) -> dict[str, list[bytes]]:
    cuts: dict[str, list[bytes]] = {
        "whole": [data],
        "bytes": [data[i : i + 1] for i in range(len(data))],
    }
    # Every cut into two pieces, and a few random cuts into many.
    for at in range(1, len(data)):
        cuts[f"at{at}"] = [data[:at], data[at:]]
    rng = random.Random(7)
    for round_ in range(5):
        pieces, pos = [], 0
        while pos < len(data):
            size = rng.randint(1, 17)
            pieces.append(data[pos : pos + size])
            pos += size
        cuts[f"random{round_}"] = pieces
    return cuts


def outcome(data: bytes) -> Outcome:
    """The outcome of `data`, checked to be the same for every split."""
    reference = drive([data])
    for name, pieces in splits(data).items():
        result = drive(pieces)
        assert (result.header, result.code) == (reference.header, reference.code), name
        assert result.max_buffered <= MAX_BYTES, name
    return reference


def v2(
    command: int = 0x1,
    fam: int = 0x11,
    addresses: bytes = bytes([192, 0, 2, 1, 10, 0, 0, 2]) + struct.pack("!HH", 51234, 443),
    tlvs: bytes = b"",
    version: int = 0x2,
    length: int | None = None,
) -> bytes:
    body = addresses + tlvs
    size = len(body) if length is None else length
    return V2_SIGNATURE + bytes([version << 4 | command, fam]) + struct.pack("!H", size) + body


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + struct.pack("!H", len(value)) + value


def test_reason_codes_exist() -> None:
    for code in (PROXY_HEADER_INVALID, PROXY_HEADER_MISSING):
        assert by_code(code).status == 0 and by_code(code).close


# -- version 1 ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "source", "dest"),
    [
        (b"PROXY TCP4 192.0.2.1 10.0.0.2 51234 443\r\n", ("192.0.2.1", 51234), ("10.0.0.2", 443)),
        (b"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n", ("0.0.0.0", 0), ("255.255.255.255", 65535)),
        (b"PROXY TCP6 2001:db8::1 ::1 1 2\r\n", ("2001:db8::1", 1), ("::1", 2)),
        (b"PROXY TCP6 2001:DB8:0:0:0:0:0:1 fd00::2 1 2\r\n", ("2001:db8::1", 1), ("fd00::2", 2)),
        (b"PROXY UNKNOWN\r\n", (None, None), (None, None)),
        (b"PROXY UNKNOWN ffff:f::1 ffff:f::2 65535 65535\r\n", (None, None), (None, None)),
    ],
)
def test_v1_accepted(line: bytes, source: tuple[str | None, int | None], dest: tuple[str | None, int | None]) -> None:
    result = outcome(line + HTTP)
    assert result.header is not None, result.code
    header = result.header
    assert (header.version, header.local) == (1, False)
    assert (header.source_addr, header.source_port) == source
    assert (header.dest_addr, header.dest_port) == dest
    assert header.remainder == HTTP


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY TCP4 192.0.2.1 10.0.0.2 51234 443\n",  # bare LF
        b"PROXY TCP4 192.0.2.1 10.0.0.2 51234 443\r\r\n",
        b"PROXY TCP4 192.0.2.1 10.0.0.2 51234 443\rX\r\n",  # CR not followed by LF
        b"PROXY TCP4  192.0.2.1 10.0.0.2 51234 443\r\n",  # two spaces
        b"PROXY TCP4 192.0.2.1 10.0.0.2 51234 443 \r\n",  # trailing space
        b"PROXY TCP4 192.0.2.1\t10.0.0.2 51234 443\r\n",
        b"PROXY tcp4 192.0.2.1 10.0.0.2 51234 443\r\n",
        b"PROXY TCP5 192.0.2.1 10.0.0.2 51234 443\r\n",
        b"PROXY UDP4 192.0.2.1 10.0.0.2 51234 443\r\n",
        b"PROXY TCP4 192.0.2.1 10.0.0.2 51234\r\n",
        b"PROXY TCP4 192.0.2.1 10.0.0.2 51234 443 80\r\n",
        b"PROXY TCP4 192.0.2.256 10.0.0.2 51234 443\r\n",
        b"PROXY TCP4 192.0.2.01 10.0.0.2 51234 443\r\n",  # leading zero: octal to inet_aton
        b"PROXY TCP4 192.0.2 10.0.0.2 51234 443\r\n",
        b"PROXY TCP4 2001:db8::1 10.0.0.2 51234 443\r\n",  # address of the wrong family
        b"PROXY TCP6 192.0.2.1 ::1 51234 443\r\n",
        b"PROXY TCP6 ::ffff:192.0.2.1 ::1 51234 443\r\n",  # dotted tail: not hex groups
        b"PROXY TCP6 fe80::1%eth0 ::1 51234 443\r\n",
        b"PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 51234 443\r\n",
        b"PROXY TCP4 192.0.2.1 10.0.0.2 051234 443\r\n",  # leading zero
        b"PROXY TCP4 192.0.2.1 10.0.0.2 65536 443\r\n",
        b"PROXY TCP4 192.0.2.1 10.0.0.2 +1 443\r\n",
        b"PROXY TCP4 192.0.2.1 10.0.0.2 -1 443\r\n",
        b"PROXY UNKNOWNX\r\n",
        b"PROXY UNKNOWN \x00\r\n",
        b"PROXY \r\n",
    ],
)
def test_v1_refused(line: bytes) -> None:
    assert outcome(line + HTTP).code == PROXY_HEADER_INVALID


def test_v1_at_the_limit() -> None:
    at_limit = b"PROXY UNKNOWN " + b"f" * (V1_MAX_BYTES - 16) + b"\r\n"
    assert len(at_limit) == V1_MAX_BYTES
    result = outcome(at_limit + HTTP)
    assert result.header is not None and result.header.remainder == HTTP
    past = b"PROXY UNKNOWN " + b"f" * (V1_MAX_BYTES - 15) + b"\r\n"
    assert outcome(past + HTTP).code == PROXY_HEADER_INVALID
    # Refused once 107 bytes are in without a line end, not after more arrive.
    assert drive([past[:V1_MAX_BYTES]]).code == PROXY_HEADER_INVALID
    assert drive([past[: V1_MAX_BYTES - 1]]).code is None


def test_v1_waits_for_the_line_end() -> None:
    reader = ProxyHeaderReader()
    assert reader.feed(b"PROXY TCP4 192.0.2.1 10.0.0.2 51234 443\r") is None
    header = reader.feed(b"\nGET")
    assert header is not None and header.remainder == b"GET" and header.source_port == 51234


# -- not a PROXY header at all -----------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        HTTP,
        b"POST / HTTP/1.1\r\n",
        b"PROXX TCP4",
        b"PROXYTCP4 1.1.1.1 1.1.1.1 1 1\r\n",
        b"proxy TCP4 192.0.2.1 10.0.0.2 51234 443\r\n",
        b" PROXY TCP4 192.0.2.1 10.0.0.2 51234 443\r\n",
        b"\x16\x03\x01\x02\x00",  # a TLS ClientHello
        b"\r\n\r\nGET / HTTP/1.1\r\n",
        V2_SIGNATURE[:11] + b"X" + b"\x21\x11\x00\x0c" + bytes(12),
    ],
)
def test_missing_header(data: bytes) -> None:
    assert outcome(data).code == PROXY_HEADER_MISSING


def test_missing_is_seen_at_the_first_wrong_byte() -> None:
    assert drive([b"G"]).code == PROXY_HEADER_MISSING
    assert drive([b"PROXX"]).code == PROXY_HEADER_MISSING
    assert drive([b"\r\n\r\nG"]).code == PROXY_HEADER_MISSING
    assert drive([b"PROXY"]).code is None
    assert drive([V2_SIGNATURE[:7]]).code is None


def test_nothing_fed_is_waiting() -> None:
    reader = ProxyHeaderReader()
    assert reader.feed(b"") is None and reader.buffered_bytes == 0


# -- version 2 ---------------------------------------------------------------------------------


def test_v2_tcp4() -> None:
    result = outcome(v2() + HTTP)
    assert result.header == ProxyHeader(2, False, "192.0.2.1", 51234, "10.0.0.2", 443, HTTP)


def test_v2_tcp6() -> None:
    addresses = bytes(15) + b"\x01" + bytes.fromhex("20010db8" + "0" * 23 + "9") + struct.pack("!HH", 1, 65535)
    result = outcome(v2(fam=0x21, addresses=addresses) + HTTP)
    assert result.header == ProxyHeader(2, False, "::1", 1, "2001:db8::9", 65535, HTTP)


@pytest.mark.parametrize(
    "data",
    [
        v2(command=0x0, fam=0x00, addresses=b""),  # LOCAL: a health check
        v2(command=0x0, fam=0x11),  # LOCAL with addresses: discarded
        v2(command=0x0, fam=0x22, addresses=b"junk"),  # LOCAL ignores the family
        v2(fam=0x00, addresses=b""),  # PROXY, AF_UNSPEC: use the real endpoints
        v2(fam=0x00, addresses=b"whatever"),
        v2(fam=0x31, addresses=b"/run/a.sock".ljust(108, b"\0") + b"/run/b.sock".ljust(108, b"\0")),
    ],
)
def test_v2_without_usable_addresses(data: bytes) -> None:
    result = outcome(data + HTTP)
    assert result.header is not None, result.code
    header = result.header
    assert header.version == 2 and header.remainder == HTTP
    assert (header.source_addr, header.source_port, header.dest_addr, header.dest_port) == (None,) * 4
    assert header.local is (data[12] & 0x0F == 0)


def test_v2_tlvs_are_skipped() -> None:
    tlvs = tlv(0x01, b"h2") + tlv(0x02, b"shop.example") + tlv(0x04, b"") + tlv(0xE0, b"x" * 100)
    result = outcome(v2(tlvs=tlvs) + HTTP)
    assert result.header is not None and result.header.source_addr == "192.0.2.1"
    assert result.header.remainder == HTTP


@pytest.mark.parametrize(
    "data",
    [
        v2(version=0x1),
        v2(version=0x3),
        v2(command=0x2),
        v2(command=0xF),
        v2(fam=0x12),  # UDP over IPv4
        v2(fam=0x22, addresses=bytes(36)),  # UDP over IPv6
        v2(fam=0x32, addresses=bytes(216)),  # unix datagram
        v2(fam=0x10),  # AF_INET with no transport
        v2(fam=0x01, addresses=b""),  # AF_UNSPEC with a transport
        v2(fam=0x41),  # unassigned family
        v2(fam=0x13),  # unassigned transport
        v2(command=0x0, fam=0x41, addresses=b""),
        v2(fam=0x11, addresses=bytes(11)),  # too short for IPv4
        v2(fam=0x21, addresses=bytes(35)),
        v2(fam=0x31, addresses=bytes(215)),
        v2(tlvs=b"\x01\x00"),  # truncated TLV
        v2(tlvs=tlv(0x01, b"h2")[:-1]),  # TLV longer than what is left
        v2(tlvs=tlv(0x01, b"h2") + b"\x02"),
    ],
)
def test_v2_refused(data: bytes) -> None:
    assert outcome(data + HTTP).code == PROXY_HEADER_INVALID


def test_v2_wrong_version_is_refused_before_the_rest_arrives() -> None:
    assert drive([V2_SIGNATURE + b"\x11"]).code == PROXY_HEADER_INVALID
    assert drive([V2_SIGNATURE + b"\x21"]).code is None


def test_v2_at_the_limit() -> None:
    base = len(v2())
    filler = V2_MAX_BYTES - base - 3
    at_limit = v2(tlvs=tlv(0x04, b"\0" * filler))
    assert len(at_limit) == V2_MAX_BYTES
    result = outcome(at_limit + HTTP)
    assert result.header is not None and result.header.remainder == HTTP
    past = v2(tlvs=tlv(0x04, b"\0" * (filler + 1)))
    assert outcome(past + HTTP).code == PROXY_HEADER_INVALID
    # The announced length alone is enough to refuse: nothing past it is waited for.
    assert drive([past[:16]]).code == PROXY_HEADER_INVALID
    assert drive([v2(length=0xFFFF)[:16]]).code == PROXY_HEADER_INVALID


def test_v2_waits_for_the_announced_length() -> None:
    data = v2(tlvs=tlv(0x01, b"h2"))
    assert drive([data[:-1]]).code is None
    assert drive([data[:-1]]).header is None


# -- the buffer and the remainder --------------------------------------------------------------


def test_the_remainder_is_everything_after_the_header_however_long() -> None:
    body = b"x" * 100_000
    for header in (b"PROXY UNKNOWN\r\n", v2()):
        reader = ProxyHeaderReader()
        result = reader.feed(header + body)
        assert result is not None and result.remainder == body
        assert reader.buffered_bytes == 0


def test_a_header_cut_after_its_end_keeps_both_pieces() -> None:
    reader = ProxyHeaderReader()
    assert reader.feed(v2()[:20]) is None
    result = reader.feed(v2()[20:] + b"GET")
    assert result is not None and result.remainder == b"GET"


def test_never_more_than_the_maximum_is_kept() -> None:
    reader = ProxyHeaderReader()
    data = v2(tlvs=tlv(0x04, b"\0" * 400))
    for i in range(len(data) - 1):
        assert reader.feed(data[i : i + 1]) is None
        assert reader.buffered_bytes <= MAX_BYTES
    assert reader.feed(data[-1:]) is not None


def test_feeding_after_the_outcome_is_a_bug() -> None:
    reader = ProxyHeaderReader()
    assert reader.feed(b"PROXY UNKNOWN\r\n") is not None
    with pytest.raises(RuntimeError):
        reader.feed(b"more")
    reader = ProxyHeaderReader()
    with pytest.raises(ProxyProtocolError):
        reader.feed(b"GET")
    with pytest.raises(RuntimeError):
        reader.feed(b"more")


def test_the_error_carries_code_and_detail() -> None:
    with pytest.raises(ProxyProtocolError) as info:
        ProxyHeaderReader().feed(b"PROXY TCP4 1.2.3.4\r\n")
    assert info.value.code == PROXY_HEADER_INVALID
    assert info.value.detail and str(info.value).startswith("proxy_header_invalid: ")

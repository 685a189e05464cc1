"""Property tests of the PROXY header reader (hypothesis, bounded so they stay in the normal
suite): for any bytes, however split, the reader ends in a header, a coded ProxyProtocolError or
a wait for more, never another exception; it never keeps more than its maximum; and the outcome
does not depend on the split."""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hardserve.http.proxy_protocol import (
    MAX_BYTES,
    PROXY_HEADER_INVALID,
    PROXY_HEADER_MISSING,
    V2_SIGNATURE,
)
from tests.unit.test_proxy_protocol import drive

# Derandomized: the normal suite gives the same verdict on every run.
SETTINGS = settings(
    max_examples=400, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
CODES = {PROXY_HEADER_INVALID, PROXY_HEADER_MISSING}

# Pieces of headers, good and bad, so random mixes get past the first bytes.
_ATOMS = [
    b"PROXY ", b"PROXY", b"TCP4 ", b"TCP6 ", b"UNKNOWN", b"192.0.2.1 ", b"10.0.0.2", b"::1 ",
    b"2001:db8::1", b" ", b"51234", b" 443", b"0", b"65536", b"\r\n", b"\r", b"\n", b"GET / ",
    V2_SIGNATURE, V2_SIGNATURE[:6], b"\x20", b"\x21", b"\x11", b"\x21\x11", b"\x00\x0c",
    b"\x00\x00", b"\x02\x08", b"\xff\xff", bytes(4), bytes(12), bytes(36), b"\x04\x00\x01x",
    b"\x00", b"\xff",
]
header_like = st.lists(st.sampled_from(_ATOMS), min_size=1, max_size=14).map(b"".join)
v2_like = st.builds(
    lambda vc, fam, length, body: V2_SIGNATURE + bytes([vc, fam]) + struct.pack("!H", length) + body,
    st.integers(0, 255),
    st.sampled_from([0x00, 0x11, 0x12, 0x21, 0x31, 0x41, 0x13]),
    st.integers(0, 700),
    st.binary(max_size=700),
)
cuts = st.lists(st.integers(1, 64), min_size=1, max_size=40)


def _split(data: bytes, sizes: list[int]) -> list[bytes]:
    pieces, pos, i = [], 0, 0
    while pos < len(data):
        size = sizes[i % len(sizes)]
        pieces.append(data[pos : pos + size])
        pos += size
        i += 1
    return pieces


def _check(data: bytes, sizes: list[int]) -> None:
    whole = drive([data])
    for pieces in (_split(data, sizes), [data[i : i + 1] for i in range(len(data))]):
        result = drive(pieces)
        assert result.code in CODES | {None}
        assert result.max_buffered <= MAX_BYTES
        assert (result.header, result.code) == (whole.header, whole.code)
    if whole.header is None and whole.code is None:
        # Still waiting: only possible while less than the maximum is in.
        assert len(data) < MAX_BYTES
    if whole.header is not None:
        assert data.endswith(whole.header.remainder)


@SETTINGS
@given(header_like, cuts)
def test_header_like_input(data: bytes, sizes: list[int]) -> None:
    _check(data, sizes)


@SETTINGS
@given(v2_like, cuts)
def test_v2_like_input(data: bytes, sizes: list[int]) -> None:
    _check(data, sizes)


@SETTINGS
@given(st.binary(max_size=700), cuts)
def test_arbitrary_bytes(data: bytes, sizes: list[int]) -> None:
    _check(data, sizes)

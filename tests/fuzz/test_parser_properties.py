"""Property tests of the request parser (hypothesis, bounded so they stay in the normal suite).

Invariants: every input ends in parsed requests or a reason-coded refusal, never another
exception; the outcome does not depend on how the bytes are split; and what the parser accepts,
h11 in the client role serialises and reads back as the same request."""

from __future__ import annotations

import h11
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hardserve.http.limits import Limits
from hardserve.http.reasons import all_reasons
from tests.unit.test_parser import drive, splittings

# Derandomized: the normal suite gives the same verdict on every run. A long random search is a
# separate fuzzing job, not part of the suite.
SETTINGS = settings(
    max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
LIMITS = Limits(head_max_bytes=2048, header_field_max_bytes=1024, request_line_max_bytes=1024, body_max_bytes=4096)
CODES = {reason.code for reason in all_reasons()}

# Pieces a request is made of, good and bad, so random mixes reach deep into the parser.
_ATOMS = [
    b"GET / HTTP/1.1\r\n", b"POST /a?b=c HTTP/1.1\r\n", b"GET /x HTTP/1.0\r\n", b"HEAD * HTTP/1.1\r\n",
    b"Host: x\r\n", b"Host: y\r\n", b"Content-Length: 5\r\n", b"Content-Length: 0\r\n",
    b"Content-Length: +1\r\n", b"Transfer-Encoding: chunked\r\n", b"Transfer-Encoding: gzip\r\n",
    b"Connection: close\r\n", b"Expect: 100-continue\r\n", b"X_Under: 1\r\n", b" folded\r\n",
    b"\r\n", b"\n", b"\r", b"hello", b"5\r\nhello\r\n", b"0\r\n\r\n", b"0\r\nHost: t\r\n\r\n",
    b"3;ext=\"q\"\r\nabc\r\n", b"zz\r\n", b"GET /../x HTTP/1.1\r\n", b"GET /%2e%2e/ HTTP/1.1\r\n",
    b"\x00", b"\xff", b" ", b":", b"%",
]
requests_like = st.lists(st.sampled_from(_ATOMS), min_size=1, max_size=12).map(b"".join)
any_bytes = st.binary(max_size=300)


def _check_outcome(data: bytes) -> None:
    reference = None
    for name, pieces in splittings(data).items():
        outcome = drive(pieces, LIMITS)
        assert outcome.end in CODES | {"closed", "need_data"}, outcome.end
        if reference is None:
            reference = outcome
        assert outcome == reference, f"split {name!r} gave {outcome} instead of {reference}"


@SETTINGS
@given(requests_like)
def test_request_like_input_ends_in_requests_or_a_coded_refusal(data: bytes) -> None:
    _check_outcome(data)


@SETTINGS
@given(any_bytes)
def test_arbitrary_bytes_end_in_requests_or_a_coded_refusal(data: bytes) -> None:
    _check_outcome(data)


@SETTINGS
@given(requests_like)
def test_what_the_parser_accepts_h11_writes_and_reads_back_the_same(data: bytes) -> None:
    outcome = drive([data], LIMITS)
    for request in outcome.requests:
        if not request.complete:
            continue
        headers = [(name, value) for name, value in request.headers]
        if request.chunked:
            headers = [(n, v) for n, v in headers if n != b"transfer-encoding"]
            headers.append((b"content-length", str(len(request.body)).encode()))
        client = h11.Connection(h11.CLIENT)
        wire = client.send(
            h11.Request(
                method=request.method,
                target=request.raw_target,
                headers=headers,
                http_version=request.http_version,
            )
        )
        assert wire is not None
        if request.body:
            wire += client.send(h11.Data(data=request.body)) or b""
        wire += client.send(h11.EndOfMessage()) or b""
        again = drive([wire], LIMITS)
        assert len(again.requests) == 1, again
        (seen,) = again.requests
        assert (seen.method, seen.raw_target, seen.path, seen.query, seen.body) == (
            request.method,
            request.raw_target,
            request.path,
            request.query,
            request.body,
        )

"""gunicorn's request corpus over a real socket, against a real worker.

Each case's raw bytes are sent whole, the client then shuts down its sending side and reads
until the server closes. A recording WSGI app stores what each call received; the responses are
parsed by h11 in the client role. Expectations come from tests/unit/test_corpus.py:

- invalid: no request reaches the app complete (a refusal inside a chunked body lets the head
  through, but the app's wsgi.input read fails), and the server answers with the status of the
  pinned reason, or closes;
- valid: the app saw exactly the corpus's requests (method, PATH_INFO, QUERY_STRING, RAW_URI,
  header fields, body), each answered 200; or, for a listed deviation, the requests before the
  refused one, then the refusal's status.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import unquote_to_bytes

import h11
import pytest

from hardserve.http import reasons
from hardserve.http.limits import Limits
from tests.helpers import TIMEOUT_S, RunningServer, serve
from tests.unit.test_corpus import (
    BODY_REFUSALS,
    DEVIATIONS,
    INCOMPLETE_AT_EOF,
    INVALID_REFUSED_WITH,
    WITH_HOST_REFUSED_WITH,
    Case,
    corpus,
    expected_with_host,
    hardserve_settings,
    with_host,
)
from tests.unit.test_parser import drive

ANSWER = b"recorded\n"


@dataclasses.dataclass
class Call:
    method: str
    path_info: str
    query: str
    raw_uri: str
    fields: dict[str, str]
    body: bytes | None = None  # None until wsgi.input was read to its end
    error: str | None = None  # why reading wsgi.input failed

    @property
    def complete(self) -> bool:
        return self.body is not None


class Recorder:
    """A WSGI app that records every call, reads the whole body, then answers 200."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: list[Call] = []

    def take(self) -> list[Call]:
        with self._lock:
            calls, self.calls = self.calls, []
        return calls

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        fields = {
            key: value
            for key, value in environ.items()
            if key.startswith("HTTP_") or (key in ("CONTENT_TYPE", "CONTENT_LENGTH") and value)
        }
        call = Call(
            environ["REQUEST_METHOD"],
            environ["PATH_INFO"],
            environ["QUERY_STRING"],
            environ["RAW_URI"],
            fields,
        )
        with self._lock:
            self.calls.append(call)
        try:
            body = environ["wsgi.input"].read()
        except OSError as exc:
            call.error = f"{type(exc).__name__}: {exc}"
            raise
        call.body = body
        start_response(
            "200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(ANSWER)))]
        )
        return [ANSWER]


@pytest.fixture(scope="module")
def server_for() -> Iterator[Callable[[Case], tuple[RunningServer, Recorder]]]:
    """One worker per distinct setting (limits, underscore policy), started on first use."""
    running: dict[tuple[Limits, bool], tuple[RunningServer, Recorder]] = {}
    with contextlib.ExitStack() as stack:

        def get(case: Case) -> tuple[RunningServer, Recorder]:
            key = hardserve_settings(case)
            if key not in running:
                limits, refuse_underscore = key
                recorder = Recorder()
                server = stack.enter_context(
                    serve(
                        recorder,
                        limits=limits,
                        underscore_headers="refuse" if refuse_underscore else "drop",
                    )
                )
                running[key] = (server, recorder)
            return running[key]

        yield get


@dataclasses.dataclass
class Exchange:
    statuses: list[int]
    bodies: list[bytes]
    reset: bool  # the server reset the connection instead of closing it
    calls: list[Call]


def send_case(server: RunningServer, recorder: Recorder, raw: bytes) -> Exchange:
    """Send `raw` whole, half-close, read to EOF; parse what came back with h11."""
    recorder.take()
    received = bytearray()
    reset = False
    with server.connect() as sock:
        sock.settimeout(TIMEOUT_S)
        try:
            sock.sendall(raw)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            reset = True  # refused and closed before every byte was sent
        while True:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                reset = True
                break
            if not data:
                break
            received += data
    statuses, bodies = parse_responses(bytes(received))
    return Exchange(statuses, bodies, reset, recorder.take())


def parse_responses(data: bytes) -> tuple[list[int], list[bytes]]:
    """The complete responses in `data`, followed by EOF, as an h11 client reads them."""
    conn = h11.Connection(h11.CLIENT)
    conn.receive_data(data)
    conn.receive_data(b"")
    statuses: list[int] = []
    bodies: list[bytes] = []
    while True:
        if conn.our_state is h11.IDLE:
            conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
            conn.send(h11.EndOfMessage())
        event = conn.next_event()
        if isinstance(event, h11.Response):
            statuses.append(event.status_code)
            bodies.append(b"")
        elif isinstance(event, h11.Data):
            bodies[-1] += event.data
        elif isinstance(event, h11.EndOfMessage):
            if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                if not conn.trailing_data[0]:
                    return statuses, bodies  # kept open, then closed when we half-closed
                conn.start_next_cycle()
        elif isinstance(event, h11.ConnectionClosed):
            return statuses, bodies
        else:
            raise AssertionError(f"unexpected {event!r} after {statuses}")


def expected_call(want: dict[str, Any]) -> Call:
    """What the app should see for one of the corpus's requests."""
    fields: dict[str, str] = {}
    for name, value in want["headers"]:
        if "_" in name:
            continue  # dropped by hardserve
        upper = name.upper()
        if upper in ("CONTENT-TYPE", "CONTENT-LENGTH"):
            key = upper.replace("-", "_")
        else:
            key = "HTTP_" + upper.replace("-", "_")
        if key in fields:
            fields[key] += ("; " if key == "HTTP_COOKIE" else ", ") + value
        else:
            fields[key] = value
    path_info = unquote_to_bytes(want["path"].encode("latin-1")).decode("latin-1")
    return Call(
        want["method"],
        path_info,
        want["query"],
        want["target"],
        fields,
        base64.b64decode(want["body_b64"]),
    )


def assert_calls(calls: list[Call], expected: list[dict[str, Any]]) -> None:
    assert [c.complete for c in calls] == [True] * len(expected), calls
    for call, want in zip(calls, expected, strict=True):
        assert call == expected_call(want)


def _names(valid: bool) -> list[str]:
    return [name for name, case in corpus().items() if case.valid is valid]


def _yielded_before_refusal(case: Case, raw: bytes) -> int:
    limits, refuse_underscore = hardserve_settings(case)
    return len(drive([raw], limits, refuse_underscore=refuse_underscore).requests)


@pytest.mark.parametrize("name", _names(False))
def test_invalid_case_never_reaches_the_app(
    name: str, server_for: Callable[[Case], tuple[RunningServer, Recorder]]
) -> None:
    case = corpus()[name]
    code = INVALID_REFUSED_WITH[name]
    exchange = send_case(*server_for(case), case.raw)
    assert not any(c.complete for c in exchange.calls), exchange.calls
    if code in BODY_REFUSALS:
        # The head went to the app; its wsgi.input read failed.
        assert len(exchange.calls) == 1 and exchange.calls[0].error, exchange.calls
    else:
        assert exchange.calls == []
    status = reasons.by_code(code).status
    if exchange.reset and not exchange.statuses:
        return  # closed without an answer: allowed for a refused request
    assert exchange.statuses == [status]


@pytest.mark.parametrize("name", _names(True))
def test_valid_case_reaches_the_app(
    name: str, server_for: Callable[[Case], tuple[RunningServer, Recorder]]
) -> None:
    case = corpus()[name]
    exchange = send_case(*server_for(case), case.raw)
    if name in DEVIATIONS:
        code, _ = DEVIATIONS[name]
        before = _yielded_before_refusal(case, case.raw)
        assert before < len(case.expected)
        assert_calls(exchange.calls, case.expected[:before])
        assert exchange.statuses == [200] * before + [reasons.by_code(code).status]
    elif name in INCOMPLETE_AT_EOF:
        code, _ = INCOMPLETE_AT_EOF[name]
        (call,) = exchange.calls
        (want,) = case.expected
        assert call.error and not call.complete
        assert dataclasses.replace(call, error=None) == dataclasses.replace(expected_call(want), body=None)
        assert exchange.statuses == [reasons.by_code(code).status]
    else:
        assert_calls(exchange.calls, case.expected)
        assert exchange.statuses == [200] * len(case.expected)
        assert exchange.bodies == [ANSWER] * len(case.expected)
        assert not exchange.reset


@pytest.mark.parametrize(
    "name", sorted(c for c, (code, _) in DEVIATIONS.items() if code == "missing_host")
)
def test_valid_case_with_host_added_reaches_the_app(
    name: str, server_for: Callable[[Case], tuple[RunningServer, Recorder]]
) -> None:
    case = corpus()[name]
    exchange = send_case(*server_for(case), with_host(case.raw))
    expected = expected_with_host(case)
    if name in WITH_HOST_REFUSED_WITH:
        (call,) = exchange.calls
        assert call.error and not call.complete
        assert exchange.statuses == [reasons.by_code(WITH_HOST_REFUSED_WITH[name]).status]
    else:
        assert_calls(exchange.calls, expected)
        assert exchange.statuses == [200] * len(expected)

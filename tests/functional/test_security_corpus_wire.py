"""The attack corpus (security/corpus) over a real socket, against a real worker on uvloop and
on the asyncio loop.

Each case's bytes are sent whole on a new connection. A refused case must get the statuses of
the requests served before it and then its refusal's status, and the server must close the
connection; the recording app must have seen only those requests: never the refused one (not
even when its body is refused after its head was parsed), never the request smuggled behind.
An answered case must deliver exactly the requests its JSON lists.

Below them, the CVEs of the corpus that are not request bytes: a response header carrying CRLF,
and clients that reset their connection at once.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.functional.test_corpus_wire import ANSWER, Recorder, parse_responses
from tests.helpers import (
    TIMEOUT_S,
    RunningServer,
    both_loops,  # noqa: F401 - a fixture
    exchange,
    read_responses,
    serve,
    wait_until,
)
from tests.unit.test_security_corpus import SecurityCase, case_params, security_cases

pytestmark = pytest.mark.timeout(20)

@pytest.fixture(scope="module", params=["uvloop", "asyncio"])
def corpus_server(request: pytest.FixtureRequest) -> Iterator[tuple[RunningServer, Recorder]]:
    """One worker per event loop for the whole corpus (the `both_loops` choice, started once)."""
    recorder = Recorder()
    with serve(recorder, loop=request.param) as server:
        yield server, recorder


def send_until_closed(server: RunningServer, raw: bytes) -> tuple[list[int], bytes]:
    """Send `raw` whole and read until the server closes (EOF or reset). A server that kept the
    connection open would make recv time out, which fails the test."""
    received = bytearray()
    with server.connect() as sock:
        sock.settimeout(TIMEOUT_S)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(raw)  # a refusal may close before the last byte is sent
        while True:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            received += data
    statuses, _ = parse_responses(bytes(received))
    return statuses, bytes(received)


def check_refused(case: SecurityCase, server: RunningServer, recorder: Recorder) -> None:
    expect = case.expect
    before = expect["requests_before"]
    statuses, received = send_until_closed(server, case.raw)
    assert statuses == [200] * before + [expect["status"]], received[:300]
    calls = recorder.take()
    served, rest = calls[:before], calls[before:]
    assert all(call.body is not None and call.error is None for call in served), calls
    # Never the refused request, not even when the parser had delivered its head before the
    # body went bad (refused_head_seen): a call waits on the loop until its body is complete
    # or fills the body buffer, and every case's body is refused well before that.
    assert rest == [], calls


def check_answered(case: SecurityCase, server: RunningServer, recorder: Recorder) -> None:
    expect = case.expect
    with server.connect() as sock:
        sock.sendall(case.raw)
        responses, closed = read_responses(sock, expect["requests"])
    assert [r.status for r in responses] == [200] * expect["requests"]
    assert [r.body for r in responses] == [ANSWER] * expect["requests"]
    assert closed is expect["close"]
    calls = recorder.take()
    assert [c.path_info for c in calls] == expect["paths"]
    assert [c.body for c in calls] == [b.encode("latin-1") for b in expect["bodies"]]


@pytest.mark.parametrize("name", case_params())
def test_case_on_the_wire(name: str, corpus_server: tuple[RunningServer, Recorder]) -> None:
    case = security_cases()[name]
    server, recorder = corpus_server
    recorder.take()
    if case.refused:
        check_refused(case, server, recorder)
    else:
        check_answered(case, server, recorder)


def test_every_case_is_sent() -> None:
    assert len(case_params()) == len(security_cases()) > 0


# -- the CVEs that are not request bytes ------------------------------------------------------


def injecting_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("200 OK", [("X-Lang", "en\r\nSet-Cookie: session=attacker"), ("X-A", "1")])
    return [b"poisoned"]


@pytest.mark.usefixtures("both_loops")
def test_an_app_header_with_crlf_never_reaches_the_wire() -> None:
    """CVE-2018-1000164 (gunicorn), CVE-2023-27522 (mod_proxy_uwsgi): a header value from the
    app that holds CRLF must not split the response head; the client gets a 500 instead."""
    with serve(injecting_app) as server:
        (response,), _ = exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert response.status == 500
    names = {name.lower() for name, _ in response.headers}
    assert b"set-cookie" not in names and b"x-lang" not in names
    assert b"poisoned" not in response.body


@pytest.mark.usefixtures("both_loops")
def test_clients_that_reset_at_once_leave_nothing_behind() -> None:
    """CVE-2024-49769, CVE-2022-31015 (waitress): connections reset before or as they are
    accepted must be forgotten by the worker, which keeps answering; none stays behind."""
    recorder = Recorder()
    with serve(recorder) as server:
        for index in range(20):
            sock = server.connect()
            if index % 2:
                sock.sendall(b"GET /gone HTTP/1.1\r\nHost: x\r\n\r\n")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()  # a reset
        # Accepted in order: once this request is answered, the resets before it were seen.
        (response,), _ = exchange(server, b"GET /alive HTTP/1.1\r\nHost: x\r\n\r\n")
        assert response.status == 200 and response.body == ANSWER
        shared = server.worker.shared
        assert shared is not None
        assert wait_until(lambda: not shared.connections), shared.connections
        assert "/alive" in [call.path_info for call in recorder.take()]

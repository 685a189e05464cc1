"""When a request with a body reaches the app: once the body is complete, or once it fills the
body buffer (body_buffer_bytes), whichever comes first; with Expect: 100-continue, at once
(the client waits for the app's first read). Before that the request holds no pool thread, and
a body that fails (stalls, crawls, breaks its framing, grows past the limit) is answered by the
server alone: the app never sees the request."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest

from hardserve.http.limits import Limits
from tests.helpers import (
    TIMEOUT_S,
    both_loops,  # noqa: F401 - a fixture
    read_responses,
    read_until_close,
    serve,
)

pytestmark = pytest.mark.usefixtures("both_loops")


class Recorder:
    """Records each call's path and what its wsgi.input read gave."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int | str]] = []
        self.entered = threading.Event()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        self.entered.set()
        try:
            body = environ["wsgi.input"].read()
        except OSError as exc:
            self.calls.append((environ["PATH_INFO"], str(exc)))
            raise
        self.calls.append((environ["PATH_INFO"], len(body)))
        start_response("200 OK", [])
        return [b"%d" % len(body)]


@pytest.fixture
def security_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.WARNING, logger="hardserve.security")
    return caplog


def test_a_stalled_small_upload_gets_408_from_the_server_alone(
    security_log: pytest.LogCaptureFixture,
) -> None:
    app = Recorder()
    with serve(app, limits=Limits(body_idle_timeout_s=0.2)) as server, server.connect() as sock:
        sock.sendall(b"POST /stalled HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"x" * 40)
        answer = read_until_close(sock)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert app.calls == []
    assert "reason=body_timeout status=408" in security_log.text


def test_a_broken_chunked_body_is_refused_without_the_app(
    security_log: pytest.LogCaptureFixture,
) -> None:
    app = Recorder()
    raw = (
        b"POST /chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n+3\r\nabc\r\n0\r\n\r\n"
    )
    with serve(app) as server, server.connect() as sock:
        sock.sendall(raw)
        answer = read_until_close(sock)
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert app.calls == []  # its head had been parsed, but the call had not left the loop
    assert "reason=invalid_chunk_size" in security_log.text


def test_a_chunked_body_past_the_limit_is_refused_without_the_app() -> None:
    app = Recorder()
    chunk = b"400\r\n" + b"y" * 1024 + b"\r\n"
    raw = b"POST /big HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 8
    with serve(app, limits=Limits(body_max_bytes=4096)) as server, server.connect() as sock:
        sock.sendall(raw)
        answer = read_until_close(sock)
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert app.calls == []


def test_a_body_at_the_buffer_size_is_handed_over_complete() -> None:
    app = Recorder()
    limits = Limits(body_buffer_bytes=1024)
    with serve(app, limits=limits) as server, server.connect() as sock:
        # Exactly the buffer: the call starts when the body is complete.
        sock.sendall(b"POST /at HTTP/1.1\r\nHost: x\r\nContent-Length: 1024\r\n\r\n")
        assert not app.entered.wait(0.2)  # bounded wait: no thread is taken while it is missing
        sock.sendall(b"z" * 1024)
        responses, _ = read_responses(sock, 1, method=b"POST")
    assert responses[0].body == b"1024"


def test_a_body_past_the_buffer_size_starts_the_call_while_it_streams() -> None:
    app = Recorder()
    limits = Limits(body_buffer_bytes=1024)
    with serve(app, limits=limits) as server, server.connect() as sock:
        sock.sendall(b"POST /past HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n")
        sock.sendall(b"z" * 1500)  # past the buffer: the app starts and reads as it streams
        assert app.entered.wait(TIMEOUT_S)
        sock.sendall(b"z" * 3500)
        responses, _ = read_responses(sock, 1, method=b"POST")
    assert responses[0].body == b"5000"


def test_expect_100_continue_starts_the_call_at_once() -> None:
    app = Recorder()
    with serve(app) as server, server.connect() as sock:
        sock.sendall(
            b"POST /continue HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        # The client sends nothing until the 100, which the app's first read asks for.
        assert app.entered.wait(TIMEOUT_S)
        sock.settimeout(TIMEOUT_S)
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(b"hello")
        responses, _ = read_responses(sock, 1, method=b"POST")
    assert responses[0].body == b"5"


def test_slow_small_uploads_hold_no_pool_thread() -> None:
    """With one pool thread, a stalled upload must not keep other requests waiting."""
    app = Recorder()
    with (
        serve(app, threads=1, limits=Limits(body_idle_timeout_s=5)) as server,
        server.connect() as slow,
        server.connect() as fast,
    ):
        slow.sendall(b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
        fast.sendall(b"GET /fast HTTP/1.1\r\nHost: x\r\n\r\n")
        responses, _ = read_responses(fast, 1)
        assert responses[0].status == 200
        slow.sendall(b"x" * 90)
        responses, _ = read_responses(slow, 1, method=b"POST")
        assert responses[0].body == b"100"
    assert app.calls == [("/fast", 0), ("/slow", 100)]

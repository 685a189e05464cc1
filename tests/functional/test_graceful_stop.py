"""What a worker's graceful stop does to each kind of connection: a response in progress is
finished and says Connection: close; a connection accepted just before the stop still has its
first request served; an idle keep-alive connection is closed at once."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from tests.helpers import (
    TIMEOUT_S,
    both_loops,  # noqa: F401 - a fixture
    read_responses,
    serve,
    server_closed,
    wait_until,
)

pytestmark = pytest.mark.usefixtures("both_loops")


class Held:
    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if environ["PATH_INFO"] == "/held":
            self.entered.set()
            self.release.wait(TIMEOUT_S)
        start_response("200 OK", [])
        return [b"done"]


def test_a_response_in_progress_at_the_stop_says_connection_close() -> None:
    app = Held()
    with serve(app) as server, server.connect() as sock:
        sock.sendall(b"GET /held HTTP/1.1\r\nHost: x\r\n\r\n")
        assert app.entered.wait(TIMEOUT_S)
        server.worker.stop()
        shared = server.worker.shared
        assert shared is not None
        assert wait_until(lambda: shared.stopping)
        app.release.set()
        responses, closed = read_responses(sock, 1)
    assert responses[0].body == b"done"
    assert responses[0].header("Connection") == "close"
    assert closed


def test_a_connection_accepted_before_the_stop_has_its_first_request_served() -> None:
    app = Held()
    with serve(app) as server, server.connect() as sock:
        shared = server.worker.shared
        assert shared is not None
        assert wait_until(lambda: len(shared.connections) == 1)  # accepted, nothing sent yet
        server.worker.stop()
        assert wait_until(lambda: shared.stopping)
        sock.sendall(b"GET /now HTTP/1.1\r\nHost: x\r\n\r\n")  # on its way as the stop began
        responses, closed = read_responses(sock, 1)
    assert responses[0].body == b"done"
    assert responses[0].header("Connection") == "close"
    assert closed


def test_an_idle_keep_alive_connection_is_closed_at_the_stop() -> None:
    app = Held()
    with serve(app) as server, server.connect() as sock:
        sock.sendall(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n")
        responses, closed = read_responses(sock, 1)
        assert responses[0].status == 200 and not closed
        started = time.monotonic()
        server.worker.stop()
        assert server_closed(sock, wait_s=TIMEOUT_S)
        # At once, not after the grace a never-used connection gets.
        assert time.monotonic() - started < 0.9

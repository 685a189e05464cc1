"""A response waiting on its client holds no pool thread: the call parks (keeps its iterator and
the piece the client was not ready for, gives its thread and its admission slot back) and goes
on when the client reads. Slow readers then cannot take the pool from everyone else, and the
deadlines, close() and the graceful stop still hold for a parked response.

Slow readers are sockets with a 4 KiB receive buffer that ask for 8 MiB and read nothing, so
the server's transport pauses long before the response is out."""

from __future__ import annotations

import contextvars
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import h11
import pytest

from hardserve.http.limits import Limits
from hardserve.worker.server import WorkerShared
from tests.helpers import (
    TIMEOUT_S,
    RunningServer,
    both_loops,  # noqa: F401 - a fixture
    exchange,
    read_responses,
    serve,
    wait_until,
)

pytestmark = pytest.mark.usefixtures("both_loops")

PIECES = 128  # of 64 KiB: 8 MiB, far more than the socket buffers of a 4 KiB reader hold
BIG_REQUEST = b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n"


def piece(index: int) -> bytes:
    return bytes([index % 251]) * 65536


EXPECTED = b"".join(piece(index) for index in range(PIECES))


class Tracked:
    """The response iterable of /big: counts its close() calls and the pool threads its pieces
    were produced on."""

    def __init__(self, app: ParkingApp) -> None:
        self._app = app
        self.closes = 0
        self.produced = 0
        self.threads: set[int] = set()

    def __iter__(self) -> Iterator[bytes]:
        for index in range(PIECES):
            self.threads.add(threading.get_ident())
            self.produced = index + 1
            yield piece(index)

    def close(self) -> None:
        with self._app.lock:
            self.closes += 1
            self._app.closed.release()


class ParkingApp:
    """/big: an 8 MiB generator response (Content-Length set), every other path: hello."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.responses: list[Tracked] = []
        self.closed = threading.Semaphore(0)  # one release per close() call

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if environ["PATH_INFO"] == "/big":
            start_response("200 OK", [("Content-Length", str(len(EXPECTED)))])
            tracked = Tracked(self)
            with self.lock:
                self.responses.append(tracked)
            return tracked
        start_response("200 OK", [("Content-Length", "5")])
        return [b"hello"]

    def wait_closed(self, count: int) -> bool:
        return all(self.closed.acquire(timeout=TIMEOUT_S) for _ in range(count))


def slow_reader(server: RunningServer) -> socket.socket:
    sock = socket.socket()
    # Before connect, so the window the client advertises stays small.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(TIMEOUT_S)
    sock.connect(server.address)
    sock.sendall(BIG_REQUEST)
    return sock


def read_exactly(sock: socket.socket, count: int) -> bytes:
    data = bytearray()
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        assert chunk, "the server closed the connection"
        data += chunk
    return bytes(data)


def read_rest(sock: socket.socket, received: bytes) -> tuple[int, bytes]:
    """The status and body of one response, of which `received` came first (h11 as client)."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/big", headers=[("Host", "x")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(received)
    status = 0
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = sock.recv(65536)
            assert data, "the server closed the connection"
            conn.receive_data(data)
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return status, bytes(body)


def reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def shared_of(server: RunningServer) -> WorkerShared:
    shared = server.worker.shared
    assert shared is not None
    return shared


def all_parked(server: RunningServer, app: ParkingApp, count: int) -> Callable[[], bool]:
    """Every one of `count` responses has started and none holds a pool thread or slot."""
    pool = shared_of(server).pool

    def check() -> bool:
        return len(app.responses) == count and pool.in_flight == 0

    return check


def count_resumes(server: RunningServer) -> list[int]:
    pool = shared_of(server).pool
    resumes = [0]
    resubmit = pool.resubmit

    def counting(job: Callable[[], None]) -> None:
        resumes[0] += 1
        resubmit(job)

    pool.resubmit = counting  # type: ignore[method-assign]
    return resumes


def test_slow_readers_do_not_take_the_pool_from_other_clients(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="hardserve.security")
    app = ParkingApp()
    # 2 threads and a queue of 1: without parking the third slow reader would get 503, and so
    # would the hello request.
    with serve(app, threads=2, pool_queue_max=1) as server:
        readers: list[socket.socket] = []
        try:
            for count in range(1, 7):  # one after the other: each is admitted, then parks
                readers.append(slow_reader(server))
                assert wait_until(all_parked(server, app, count))
            responses, _ = exchange(server, b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
            assert responses[0].status == 200
            assert responses[0].body == b"hello"
            for sock in readers:  # each slow reader got its response started, not a 503
                assert sock.recv(16).startswith(b"HTTP/1.1 200 ")
        finally:
            for sock in readers:
                reset(sock)
        # Reset while parked: each iterable is closed once, on a pool thread.
        assert app.wait_closed(6)
        assert wait_until(lambda: not shared_of(server).connections)
    assert [tracked.closes for tracked in app.responses] == [1] * 6
    assert "pool_saturated" not in caplog.text


def test_a_parked_response_completes_when_the_client_reads() -> None:
    app = ParkingApp()
    with serve(app, threads=1) as server:
        resumes = count_resumes(server)
        with slow_reader(server) as sock:
            assert wait_until(all_parked(server, app, 1))
            # Parked is not "in the app": neither request_timeout_s's report nor the master's
            # stuck check sees it.
            shared = shared_of(server)
            assert all(connection.running_call is None for connection in shared.connections)
            assert not shared.has_request_running_since(time.monotonic() + 1)
            # While it is parked, the one thread serves others.
            assert exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")[0][0].body == b"hello"
            # The client reads 1 MiB and stops again: the response goes on, then parks again
            # (8 MiB is more than 1 MiB and every buffer on the way).
            produced = app.responses[0].produced
            first = read_exactly(sock, 1024 * 1024)
            pool = shared.pool
            assert wait_until(lambda: app.responses[0].produced > produced and not pool.in_flight)
            status, body = read_rest(sock, first)
            assert status == 200
            assert body == EXPECTED
            # The connection is kept alive and serves its next request.
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_responses(sock, 1)[0][0].body == b"hello"
        assert app.wait_closed(1)
    # Parked at least twice: at first, and again after the first MiB; resumed each time.
    assert resumes[0] >= 2
    assert app.responses[0].closes == 1


REQUEST_VAR: contextvars.ContextVar[str] = contextvars.ContextVar("request")


def test_context_variables_follow_a_parked_response_to_the_thread_that_resumes_it() -> None:
    seen: list[str | None] = []

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        REQUEST_VAR.set(environ["PATH_INFO"])
        start_response("200 OK", [("Content-Length", str(len(EXPECTED)))])

        def pieces() -> Iterator[bytes]:
            for index in range(PIECES):
                seen.append(REQUEST_VAR.get(None))
                yield piece(index)

        return pieces()

    with serve(app, threads=4) as server:
        resumes = count_resumes(server)
        pool = shared_of(server).pool
        with slow_reader(server) as sock:
            assert wait_until(lambda: bool(seen) and pool.in_flight == 0)  # parked
            responses, _ = read_responses(sock, 1)
        assert responses[0].body == EXPECTED
    assert resumes[0] >= 1
    assert seen == ["/big"] * PIECES


def test_a_reset_while_parked_closes_the_iterable_once() -> None:
    app = ParkingApp()
    with serve(app, threads=1) as server:
        sock = slow_reader(server)
        assert wait_until(all_parked(server, app, 1))
        reset(sock)
        assert app.wait_closed(1)
        assert wait_until(lambda: not shared_of(server).connections)
        # The thread is free again.
        assert exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")[0][0].body == b"hello"
    assert app.responses[0].closes == 1


def test_the_send_deadline_resets_a_parked_client_that_never_reads(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="hardserve.security")
    app = ParkingApp()
    limits = Limits(write_timeout_s=0.5, send_min_rate_bytes_s=0)
    with serve(app, threads=1, limits=limits) as server, slow_reader(server) as sock:
        assert wait_until(all_parked(server, app, 1))
        assert app.wait_closed(1)
        # The reader is reset (SO_LINGER 0), not closed: what the kernel still held is dropped.
        with pytest.raises(ConnectionResetError):
            while sock.recv(65536):
                pass
        assert wait_until(lambda: not shared_of(server).connections)
    assert app.responses[0].closes == 1
    assert "reason=send_timeout" in caplog.text


def test_a_parked_response_finishes_during_a_graceful_stop() -> None:
    app = ParkingApp()
    with serve(app, threads=1) as server, slow_reader(server) as sock:
        assert wait_until(all_parked(server, app, 1))
        server.worker.stop()
        shared = shared_of(server)
        assert wait_until(lambda: shared.stopping)
        # The drain waits for the parked response; the client reads it whole.
        responses, closed = read_responses(sock, 1)
        assert responses[0].body == EXPECTED
        assert closed  # and the connection closes after it
        assert app.wait_closed(1)
    assert app.responses[0].closes == 1


def test_a_parked_response_is_cut_at_the_graceful_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="hardserve.error")
    app = ParkingApp()
    with serve(app, threads=1, graceful_timeout_s=0.5) as server, slow_reader(server):
        assert wait_until(all_parked(server, app, 1))
        stopped = threading.Thread(target=server.worker.stop)
        stopped.start()
        stopped.join(TIMEOUT_S)
        shared = shared_of(server)
        # The worker's loop ends once the graceful timeout has passed with the reader parked.
        assert wait_until(lambda: server.worker.loop is not None and server.worker.loop.is_closed())
        assert len(shared.connections) == 1
    assert "graceful timeout: 1 connections cut" in caplog.text


def test_a_stream_ahead_of_the_loop_gives_its_thread_to_the_next_request() -> None:
    """A response iterable that has handed the loop write_queue_bytes parks even though its
    client reads: the one thread answers another request in the middle of the stream, and the
    stream then goes on. The transport never pauses here (its buffer limit is far above the
    response), so only a full queue can make the stream park."""
    pools: list[Any] = []
    yielded = [0]  # pieces the stream has handed over so far
    hello_at: list[int] = []  # how far the stream was when the hello request ran
    hello_queued: list[bool] = []
    pieces_before_wait = 8

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        if environ["PATH_INFO"] != "/big":
            hello_at.append(yielded[0])
            start_response("200 OK", [("Content-Length", "5")])
            return [b"hello"]
        start_response("200 OK", [("Content-Length", str(len(EXPECTED)))])

        def pieces() -> Iterator[bytes]:
            for index in range(PIECES):
                if index == pieces_before_wait:
                    # Until the hello request has run, or waits in the pool's queue for this
                    # thread (the client sends it once the stream's first bytes arrive; on a
                    # busy machine the stream can be this far by then). From here the stream
                    # must park for it to be answered before the stream ends.
                    hello_queued.append(
                        wait_until(lambda: bool(hello_at) or pools[0].queued >= 1, TIMEOUT_S / 2)
                    )
                yielded[0] = index + 1
                yield piece(index)

        return pieces()

    limits = Limits(write_queue_bytes=65536, write_buffer_bytes=64 * 1024 * 1024)
    with (
        serve(app, threads=1, limits=limits) as server,
        socket.create_connection(server.address, timeout=TIMEOUT_S) as sock,
    ):
        pools.append(shared_of(server).pool)
        sock.sendall(BIG_REQUEST)
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200 ")
        responses, _ = exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert responses[0].body == b"hello"
        status, body = read_rest(sock, first)
    assert hello_queued == [True]
    # Answered while the stream was still going: it had parked (before its wait, or after).
    assert len(hello_at) == 1 and hello_at[0] < PIECES, hello_at
    assert status == 200
    assert body == EXPECTED

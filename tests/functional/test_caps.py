"""Caps on concurrency over real sockets: connections per worker, connections and requests in
flight per client address. Each at the limit and one past it."""

from __future__ import annotations

import logging
import select
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import pytest

from hardserve.http.limits import Limits
from tests.helpers import (
    TIMEOUT_S,
    RunningServer,
    both_loops,  # noqa: F401 - a fixture
    exchange,
    read_responses,
    serve,
    server_closed,
    wait_until,
)

pytestmark = pytest.mark.usefixtures("both_loops")

REQUEST = b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n"


def hello(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [])
    return [environ["PATH_INFO"].encode()]


def open_served(server: RunningServer, stack: ExitStack) -> socket.socket:
    """A keep-alive connection that has had one request answered (so the worker holds it)."""
    sock = stack.enter_context(server.connect())
    sock.sendall(REQUEST)
    responses, closed = read_responses(sock, 1)
    assert responses[0].status == 200 and not closed
    return sock


def nothing_arrives(sock: socket.socket, wait_s: float = 0.3) -> bool:
    """No byte and no close within wait_s: checking that something does not happen needs a
    bounded wait."""
    readable, _, _ = select.select([sock], [], [], wait_s)
    return not readable


def test_connections_max_stops_accepting_and_resumes_below_it() -> None:
    with serve(hello, limits=Limits(connections_max=2)) as server, ExitStack() as stack:
        shared = server.worker.shared
        assert shared is not None
        first = open_served(server, stack)
        open_served(server, stack)  # at the limit: still accepted and served
        # One past the limit: the kernel completes the handshake (backlog), the worker does
        # not accept, so the request waits unanswered.
        waiting = stack.enter_context(server.connect())
        waiting.sendall(REQUEST)
        assert nothing_arrives(waiting)
        assert len(shared.connections) == 2
        first.close()
        # Back under the limit: the worker accepts again and answers the waiting request.
        responses, _ = read_responses(waiting, 1)
        assert responses[0].status == 200


def test_client_connections_max_closes_the_extra_connection_unanswered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="hardserve.security")
    with serve(hello, limits=Limits(client_connections_max=2)) as server, ExitStack() as stack:
        shared = server.worker.shared
        assert shared is not None
        first = open_served(server, stack)
        open_served(server, stack)  # at the limit
        extra = stack.enter_context(server.connect())
        extra.sendall(REQUEST)
        assert server_closed(extra, wait_s=TIMEOUT_S)  # past it: closed, no response
        assert "reason=client_connections" in caplog.text
        # The closed connection did not count; when one of the two closes, a new one is served.
        first.close()
        assert wait_until(lambda: len(shared.connections) == 1)
        responses, _ = exchange(server, REQUEST)
        assert responses[0].status == 200


class GateApp:
    """/hold/N requests wait until released; counts how many are inside the app."""

    def __init__(self) -> None:
        self.inside = threading.Semaphore(0)
        self.release = threading.Event()
        self.paths: list[str] = []

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        path = environ["PATH_INFO"]
        self.paths.append(path)
        if path.startswith("/hold"):
            self.inside.release()
            self.release.wait(TIMEOUT_S)
        start_response("200 OK", [])
        return [path.encode()]


@contextmanager
def holding(server: RunningServer, app: GateApp, count: int) -> Iterator[list[socket.socket]]:
    """`count` requests held inside the app, each on its own connection."""
    socks = []
    try:
        for index in range(count):
            sock = server.connect()
            socks.append(sock)
            sock.sendall(b"GET /hold/%d HTTP/1.1\r\nHost: x\r\n\r\n" % index)
            assert app.inside.acquire(timeout=TIMEOUT_S)
        yield socks
    finally:
        app.release.set()
        for sock in socks:
            sock.close()


def test_client_in_flight_max_answers_503_without_touching_the_app() -> None:
    app = GateApp()
    limits = Limits(client_in_flight_max=2)
    with serve(app, limits=limits, threads=4) as server, holding(server, app, 2) as held:
        # Two in flight is the limit; the third request of the same address gets 503 at once.
        responses, closed = exchange(server, b"GET /third HTTP/1.1\r\nHost: x\r\n\r\n")
        assert responses[0].status == 503
        assert responses[0].header("Retry-After") == "1"
        assert b"client_in_flight" not in responses[0].body  # the code is for the log
        assert not closed
        assert "/third" not in app.paths
        app.release.set()
        for sock in held:
            assert read_responses(sock, 1)[0][0].status == 200
        # Their calls ended: the address may send again.
        responses, _ = exchange(server, b"GET /fourth HTTP/1.1\r\nHost: x\r\n\r\n")
        assert responses[0].status == 200


def test_refused_pool_admission_does_not_leak_a_client_slot() -> None:
    app = GateApp()
    limits = Limits(client_in_flight_max=2)
    with serve(app, limits=limits, threads=1, pool_queue_max=0) as server:
        with holding(server, app, 1) as held:
            for _ in range(3):  # each gets 503 from the pool, none keeps a client slot
                assert exchange(server, REQUEST)[0][0].status == 503
            app.release.set()
            assert read_responses(held[0], 1)[0][0].status == 200
        for _ in range(3):
            assert exchange(server, REQUEST)[0][0].status == 200


def test_a_request_queued_past_queue_timeout_gets_503_without_touching_the_app() -> None:
    app = GateApp()
    limits = Limits(queue_timeout_s=0.3)
    with (
        serve(app, limits=limits, threads=1) as server,
        holding(server, app, 1) as held,
        server.connect() as queued,
    ):
        queued.sendall(b"GET /queued HTTP/1.1\r\nHost: x\r\n\r\n")
        responses, closed = read_responses(queued, 1)
        assert responses[0].status == 503
        assert responses[0].header("Retry-After") == "1"
        assert not closed
        # The connection goes on: once the thread is free, its next request is served.
        app.release.set()
        assert read_responses(held[0], 1)[0][0].status == 200
        queued.sendall(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_responses(queued, 1)[0][0].body == b"/next"
    assert "/queued" not in app.paths


def test_a_request_queued_less_than_queue_timeout_is_served() -> None:
    app = GateApp()
    limits = Limits(queue_timeout_s=5.0)
    with (
        serve(app, limits=limits, threads=1) as server,
        holding(server, app, 1) as held,
        server.connect() as queued,
    ):
        queued.sendall(b"GET /queued HTTP/1.1\r\nHost: x\r\n\r\n")
        assert nothing_arrives(queued)  # waiting behind the held request
        app.release.set()
        assert read_responses(held[0], 1)[0][0].status == 200
        assert read_responses(queued, 1)[0][0].body == b"/queued"


def reset(sock: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a client that gives up does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_per_client_counters_shrink_back_to_empty(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="hardserve.security")
    app = GateApp()
    limits = Limits(client_connections_max=3, client_in_flight_max=2)
    with serve(app, limits=limits, threads=4) as server, ExitStack() as stack:
        shared = server.worker.shared
        assert shared is not None

        # WorkerShared exposes no count per client; the test reads its two private dicts
        # (address -> count), which must hold only clients with something open.
        def counts() -> tuple[dict[str, int], dict[str, int]]:
            assert shared is not None
            return dict(shared._client_connections), dict(shared._client_in_flight)

        def counted(connections: int, in_flight: int) -> bool:
            want = (
                ({"127.0.0.1": connections} if connections else {}),
                ({"127.0.0.1": in_flight} if in_flight else {}),
            )
            return counts() == want

        held = []
        for index in range(2):  # two requests in the app: the in-flight cap
            sock = stack.enter_context(server.connect())
            sock.sendall(b"GET /hold/%d HTTP/1.1\r\nHost: x\r\n\r\n" % index)
            assert app.inside.acquire(timeout=TIMEOUT_S)
            held.append(sock)
        assert counted(2, 2)
        # A third request: refused with 503 (client_in_flight); its connection stays counted.
        third = stack.enter_context(server.connect())
        third.sendall(REQUEST)
        assert read_responses(third, 1)[0][0].status == 503
        assert counted(3, 2)
        # A fourth connection: past client_connections_max, closed unanswered, not counted.
        fourth = stack.enter_context(server.connect())
        fourth.sendall(REQUEST)
        assert server_closed(fourth, wait_s=TIMEOUT_S)
        assert "reason=client_connections" in caplog.text
        assert counted(3, 2)
        # One held request's client resets while its request is in the app; the third resets
        # after its 503. Their connections are no longer counted; the reset one's request
        # still counts as in flight until its call ends (see the test below).
        reset(held.pop())
        reset(third)
        assert wait_until(lambda: counts()[0] == {"127.0.0.1": 1})
        app.release.set()
        assert wait_until(lambda: counted(1, 0))
        assert read_responses(held[0], 1)[0][0].status == 200
        held[0].close()
        # A connection reset before it sends a byte.
        reset(server.connect())
        assert wait_until(lambda: not shared.connections)
        assert counts() == ({}, {})


def test_a_request_still_in_the_app_counts_against_its_client_after_a_reset() -> None:
    app = GateApp()
    limits = Limits(client_in_flight_max=1)
    with serve(app, limits=limits, threads=2) as server:
        shared = server.worker.shared
        assert shared is not None
        try:
            leaver = server.connect()
            leaver.sendall(b"GET /hold/0 HTTP/1.1\r\nHost: x\r\n\r\n")
            assert app.inside.acquire(timeout=TIMEOUT_S)
            reset(leaver)
            assert wait_until(lambda: not shared.connections)
            # The held call still takes a thread on this client's behalf: the cap is reached.
            responses, _ = exchange(server, REQUEST)
            assert responses[0].status == 503
        finally:
            app.release.set()


# -- pool_prepared_max: requests past it wait unread, in arrival order ----------------------


def waiting_pool(server: RunningServer) -> Any:
    return server.worker.shared.pool  # type: ignore[union-attr]


@contextmanager
def one_request_waiting(
    app: GateApp, path: bytes, **settings: Any
) -> Iterator[tuple[RunningServer, socket.socket, socket.socket]]:
    """The one thread busy with /hold/0 and one call prepared at once: a request for `path`,
    sent on a new connection, waits for room. Yields the server, the held connection and the
    waiting one."""
    with (
        serve(app, threads=1, pool_prepared_max=1, **settings) as server,
        holding(server, app, 1) as held,
        server.connect() as waiting,
    ):
        waiting.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path)
        assert wait_until(lambda: waiting_pool(server).waiting == 1)
        yield server, held[0], waiting


def test_requests_past_pool_prepared_max_wait_unread_and_are_served_in_arrival_order() -> None:
    app = GateApp()
    with (
        serve(app, threads=1, pool_prepared_max=2, pool_queue_max=8) as server,
        holding(server, app, 1) as held,
        ExitStack() as stack,
    ):
        pool = waiting_pool(server)
        queued = stack.enter_context(server.connect())
        queued.sendall(b"GET /queued HTTP/1.1\r\nHost: x\r\n\r\n")
        # The second call is prepared and queued for the thread: the limit, not past it.
        assert wait_until(lambda: pool.in_flight == 2)
        socks = []
        for index in range(1, 3):
            sock = stack.enter_context(server.connect())
            sock.sendall(b"GET /waits/%d HTTP/1.1\r\nHost: x\r\n\r\n" % index)
            assert wait_until(lambda: pool.waiting == index)  # noqa: B023 - used at once
            socks.append(sock)
        assert pool.in_flight == 2
        gauges = server.worker.shared.gauges()  # type: ignore[union-attr]
        assert (gauges["pool_queued"], gauges["requests_in_flight"]) == (3, 4)
        app.release.set()
        bodies = [read_responses(sock, 1)[0][0].body for sock in (*held, queued, *socks)]
    assert bodies == [b"/hold/0", b"/queued", b"/waits/1", b"/waits/2"]
    assert app.paths == ["/hold/0", "/queued", "/waits/1", "/waits/2"]


def test_a_request_waiting_for_room_holds_a_slot_of_the_queue() -> None:
    """One thread and one queue slot: a running call and a waiting request fill them, so the
    next request gets 503 at once; the waiting one is served."""
    app = GateApp()
    with one_request_waiting(app, b"/waits", pool_queue_max=1) as (server, held, waiting):
        responses, closed = exchange(server, b"GET /refused HTTP/1.1\r\nHost: x\r\n\r\n")
        assert responses[0].status == 503
        assert responses[0].header("Retry-After") == "1"
        assert not closed
        app.release.set()
        assert read_responses(held, 1)[0][0].status == 200
        assert read_responses(waiting, 1)[0][0].body == b"/waits"
    assert "/refused" not in app.paths


@pytest.mark.parametrize(
    "limits",
    [Limits(queue_timeout_s=0.3), Limits(head_timeout_s=0.3, queue_timeout_s=30.0)],
    ids=["queue_timeout", "head_timeout"],
)
def test_a_request_waiting_for_room_past_its_deadline_gets_503_and_the_connection_closes(
    limits: Limits, caplog: pytest.LogCaptureFixture
) -> None:
    """Whichever deadline comes first, the answer is the queue's 503 (the client sent its
    request in time; the server had no room). What the client sent was never read, so the
    connection closes: the pipelined second request is not served either."""
    caplog.set_level(logging.WARNING, logger="hardserve.security")
    app = GateApp()
    with (
        serve(app, limits=limits, threads=1, pool_prepared_max=1) as server,
        holding(server, app, 1) as held,
        server.connect() as waiting,
    ):
        waiting.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n")
        responses, closed = read_responses(waiting, 1)
        assert responses[0].status == 503
        assert responses[0].header("Retry-After") == "1"
        assert responses[0].header("Connection") == "close"
        assert closed
        assert wait_until(lambda: waiting_pool(server).waiting == 0)
        app.release.set()
        assert read_responses(held[0], 1)[0][0].status == 200
    assert app.paths == ["/hold/0"]
    security = [r.getMessage() for r in caplog.records if r.name == "hardserve.security"]
    assert any("reason=queue_timeout " in line for line in security), security


def test_a_waiting_request_whose_client_reset_is_withdrawn_at_once() -> None:
    app = GateApp()
    with (
        serve(app, threads=1, pool_prepared_max=1, pool_queue_max=1) as server,
        holding(server, app, 1) as held,
    ):
        pool = waiting_pool(server)
        leaver = server.connect()
        leaver.sendall(b"GET /gone HTTP/1.1\r\nHost: x\r\n\r\n")
        assert wait_until(lambda: pool.waiting == 1)
        reset(leaver)
        assert wait_until(lambda: pool.waiting == 0)
        with server.connect() as after:  # its slot is free: this one waits, it is not refused
            after.sendall(b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n")
            assert wait_until(lambda: pool.waiting == 1)
            app.release.set()
            assert read_responses(held[0], 1)[0][0].status == 200
            assert read_responses(after, 1)[0][0].body == b"/after"
    assert app.paths == ["/hold/0", "/after"]


def test_half_a_head_does_not_wait_so_slow_clients_hold_no_place_in_the_queue() -> None:
    """One thread, one queue slot, one call prepared at once, and the thread busy: two slow
    clients send half a head each. Had they waited, they would fill the pool and a whole
    request would get 503; they hold nothing, the whole request waits and is served, and a
    slow client that finishes its head is served too."""
    app = GateApp()
    with (
        serve(app, threads=1, pool_prepared_max=1, pool_queue_max=1) as server,
        holding(server, app, 1) as held,
        server.connect() as slow,
        server.connect() as slower,
        server.connect() as whole,
    ):
        shared = server.worker.shared  # type: ignore[union-attr]
        for sock in (slow, slower):
            sock.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n")
        assert wait_until(
            lambda: sum(1 for c in list(shared.connections) if c._parser.buffered_bytes) == 2
        )
        assert shared.pool.waiting == 0
        whole.sendall(b"GET /whole HTTP/1.1\r\nHost: x\r\n\r\n")
        assert wait_until(lambda: shared.pool.waiting == 1)
        app.release.set()
        assert read_responses(held[0], 1)[0][0].status == 200
        assert read_responses(whole, 1)[0][0].body == b"/whole"
        slow.sendall(b"\r\n")
        assert read_responses(slow, 1)[0][0].body == b"/slow"
    assert app.paths == ["/hold/0", "/whole", "/slow"]


def test_a_request_waiting_for_room_at_a_graceful_stop_is_served_and_closed() -> None:
    app = GateApp()
    with one_request_waiting(app, b"/waits") as (server, held, waiting):
        server.worker.stop()
        assert wait_until(lambda: server.worker.shared.stopping)  # type: ignore[union-attr]
        app.release.set()
        held_responses, _ = read_responses(held, 1)
        responses, closed = read_responses(waiting, 1)
    assert held_responses[0].status == 200
    assert responses[0].body == b"/waits"
    assert responses[0].header("Connection") == "close"
    assert closed


def test_with_a_per_client_cap_every_request_is_read_and_counted_on_arrival() -> None:
    """A waiting request is not yet counted against its client, so with client_in_flight_max
    set nothing waits: the request past pool_prepared_max is prepared and queued at once."""
    app = GateApp()
    limits = Limits(client_in_flight_max=8)
    with (
        serve(app, limits=limits, threads=1, pool_prepared_max=1) as server,
        holding(server, app, 1) as held,
        server.connect() as queued,
    ):
        pool = waiting_pool(server)
        queued.sendall(b"GET /queued HTTP/1.1\r\nHost: x\r\n\r\n")
        assert wait_until(lambda: pool.in_flight == 2)
        assert pool.waiting == 0
        app.release.set()
        assert read_responses(held[0], 1)[0][0].status == 200
        assert read_responses(queued, 1)[0][0].body == b"/queued"


def test_a_waiting_request_whose_client_half_closes_is_still_served() -> None:
    """The FIN reaches the parser before the request is read; the request is still whole."""
    app = GateApp()
    with one_request_waiting(app, b"/half") as (_server, held, half):
        half.shutdown(socket.SHUT_WR)
        app.release.set()
        assert read_responses(held, 1)[0][0].status == 200
        responses, closed = read_responses(half, 1)
    assert responses[0].body == b"/half"
    assert closed
    assert app.paths == ["/hold/0", "/half"]

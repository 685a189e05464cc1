"""A worker's numbers (observe/stats.py) after known traffic, read the way the master reads
them: snapshots on the worker's heartbeat channel (a SOCK_SEQPACKET pair the test holds),
periodic ones while it serves and a final one as it exits.

Every value is checked exactly. Waits are for events (an app that says it was entered, a
snapshot that shows a state, the server closing); the one deliberate pause holds a queued
request for a known time, to check that its wait is measured.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from hardserve.http.limits import Limits
from hardserve.observe.stats import GAUGES, MESSAGE_TAG, QUEUE_WAIT_BUCKETS_S, Snapshot
from hardserve.settings import Config
from hardserve.worker.heartbeat import READY, RETIRING, Heartbeat
from hardserve.worker.main import Worker
from tests.helpers import (
    DEFAULT_SETTINGS,
    ROOT,
    TIMEOUT_S,
    RunningServer,
    both_loops,  # noqa: F401 - a fixture
    read_responses,
    read_until_close,
    server_closed,
)

# -- the master's end of the channel ----------------------------------------------------------


class Channel:
    """Reads every message the worker sends, in a thread, until the worker's end closes."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.messages: list[bytes] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._read, name="test-channel", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        with self._sock:
            while True:
                message = self._sock.recv(1 << 20)
                with self._cond:
                    if not message:
                        self._closed = True
                        self._cond.notify_all()
                        return
                    self.messages.append(message)
                    self._cond.notify_all()

    def snapshots(self) -> list[Snapshot]:
        with self._cond:
            messages = list(self.messages)
        return [Snapshot.decode(m) for m in messages if m.startswith(MESSAGE_TAG)]

    def wait_for(self, predicate: Callable[[Snapshot], bool]) -> Snapshot:
        """The first snapshot (sent from now on or already) for which predicate holds."""
        deadline = time.monotonic() + TIMEOUT_S
        seen = 0
        with self._cond:
            while True:
                for message in self.messages[seen:]:
                    if message.startswith(MESSAGE_TAG):
                        snapshot = Snapshot.decode(message)
                        if predicate(snapshot):
                            return snapshot
                seen = len(self.messages)
                remaining = deadline - time.monotonic()
                if self._closed or remaining <= 0:
                    raise AssertionError(f"no such snapshot in {self.snapshots_text()}")
                self._cond.wait(remaining)

    def wait_message(self, message: bytes) -> None:
        with self._cond:
            ok = self._cond.wait_for(lambda: message in self.messages, TIMEOUT_S)
        assert ok, f"{message!r} never came: {self.messages!r}"

    def wait_closed(self) -> None:
        """Until the worker's end of the channel is closed (the worker has exited)."""
        with self._cond:
            assert self._cond.wait_for(lambda: self._closed, TIMEOUT_S), "the worker still runs"

    def snapshots_text(self) -> str:
        return repr([m[:300] for m in self.messages if m.startswith(MESSAGE_TAG)][-3:])

    def final(self) -> Snapshot:
        """The worker's last message, which must be a snapshot (after its end closed)."""
        self._thread.join(TIMEOUT_S)
        assert self._closed, "the worker's end of the channel is still open"
        assert self.messages, "no message at all"
        assert self.messages[-1].startswith(MESSAGE_TAG), self.messages[-3:]
        return Snapshot.decode(self.messages[-1])


@contextlib.contextmanager
def serve_stats(
    app: Any, *, limits: Limits | None = None, **settings: Any
) -> Iterator[tuple[RunningServer, Channel]]:
    """One worker in a thread (as tests/helpers.serve) with a heartbeat channel the test reads.
    After the block the worker has stopped gracefully and `channel.final()` is its last word."""
    settings = {**DEFAULT_SETTINGS, **settings}
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    listener.setblocking(False)
    host, port = listener.getsockname()
    config = Config(bind=(f"{host}:{port}",), limits=limits or Limits(), **settings)
    master_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    heartbeat = Heartbeat(worker_end.detach())
    channel = Channel(master_end)
    worker = Worker(app, config, [listener], heartbeat)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            worker.run(install_signals=False)
        except BaseException as exc:
            errors.append(exc)
            worker.ready.set()
        finally:
            heartbeat.close()

    thread = threading.Thread(target=run, name="hardserve-test-worker", daemon=True)
    thread.start()
    assert worker.ready.wait(TIMEOUT_S), "worker did not start"
    try:
        yield RunningServer(host, port, worker), channel
    finally:
        worker.stop()
        thread.join(TIMEOUT_S)
        listener.close()
        assert not thread.is_alive(), "worker did not stop"
        if errors:
            raise errors[0]


# -- reading a snapshot -------------------------------------------------------------------------


def counter(snapshot: Snapshot, name: str, key: str = "") -> float:
    return snapshot.counters.get(name, {}).get(key, 0)


def observations(snapshot: Snapshot, name: str) -> dict[str, float]:
    """Histogram key -> its number of observations (the buckets, without the sum)."""
    return {key: sum(values[:-1]) for key, values in snapshot.histograms.get(name, {}).items()}


def raw_exchange(address: tuple[str, int], request: bytes) -> bytes:
    """Send `request` and read everything until the server closes: every byte received."""
    with socket.create_connection(address, timeout=TIMEOUT_S) as sock:
        sock.sendall(request)
        return read_until_close(sock)


GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


# -- apps ---------------------------------------------------------------------------------------


def echo(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    body = environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"echo:" + body]


class Gate:
    """An app that blocks in the app until released; `entered` counts requests that came in."""

    def __init__(self) -> None:
        self.entered = threading.Semaphore(0)
        self.release = threading.Event()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if environ["PATH_INFO"] == "/block":
            self.entered.release()
            assert self.release.wait(TIMEOUT_S)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"done"]

    def wait_entered(self) -> None:
        assert self.entered.acquire(timeout=TIMEOUT_S), "the app was never entered"


# -- the counters -------------------------------------------------------------------------------

pytestmark = pytest.mark.usefixtures("both_loops")


def test_requests_are_counted_once_each_in_the_histograms_by_method_and_status_class() -> None:
    with serve_stats(echo) as (server, channel):
        for _ in range(5):
            raw_exchange(server.address, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        for _ in range(2):
            raw_exchange(
                server.address,
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
            )
        raw_exchange(server.address, b"BREW / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    final = channel.final()
    assert counter(final, "requests") == 8
    assert observations(final, "request_duration") == {"GET|2xx": 5, "POST|2xx": 2, "other|2xx": 1}
    assert observations(final, "queue_wait") == {"": 8}
    assert counter(final, "connections_accepted") == 8
    assert counter(final, "keepalive_reused") == 0
    assert final.counters["refusals"] == {}
    assert final.counters["timeouts"] == {}
    assert set(final.gauges) == set(GAUGES)


def test_a_keep_alive_connection_with_three_requests_reuses_it_twice() -> None:
    with serve_stats(echo) as (server, channel), server.connect() as sock:
        for _ in range(3):  # one after the other, each once the previous one is answered
            sock.sendall(GET)
            responses, _ = read_responses(sock, 1)
            assert responses[0].status == 200
    final = channel.final()
    assert counter(final, "requests") == 3
    assert counter(final, "keepalive_reused") == 2
    assert counter(final, "connections_accepted") == 1


def test_bytes_received_and_sent_are_every_byte_on_the_wire(tmp_path: Any) -> None:
    data = os.urandom(200_000)
    path = tmp_path / "file.bin"
    path.write_bytes(data)

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        if environ["PATH_INFO"] == "/file":
            start_response("200 OK", [("Content-Length", str(len(data)))])
            return environ["wsgi.file_wrapper"](path.open("rb"))
        if environ["PATH_INFO"] == "/stream":
            start_response("200 OK", [])
            return iter([b"a" * 20_000, b"b" * 5])
        return echo(environ, start_response)

    requests = [
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
        b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /file HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n"
        b"Connection: close\r\n\r\nhi",
        b"GET /bad\n\n",  # refused by the server itself
    ]
    received = 0
    with serve_stats(app) as (server, channel):
        for request in requests:
            answer = raw_exchange(server.address, request)
            assert answer.startswith(b"HTTP/1.1 ")
            received += len(answer)
    final = channel.final()
    assert received > len(data)  # the file went out (with sendfile)
    assert counter(final, "bytes_sent") == received
    assert counter(final, "bytes_received") == sum(map(len, requests))
    assert counter(final, "requests") == 4


def test_a_malformed_request_is_a_refusal_not_a_request() -> None:
    with serve_stats(echo) as (server, channel):
        answer = raw_exchange(server.address, b"GET / HTTP/1.1\r\nHost: x\nX: y\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ")
    final = channel.final()
    assert final.counters["refusals"] == {"bare_lf": 1}
    assert counter(final, "requests") == 0
    assert counter(final, "bytes_sent") == len(answer)


def test_a_head_timeout_is_a_refusal_and_a_timeout() -> None:
    with serve_stats(echo, limits=Limits(head_timeout_s=0.2)) as (server, channel):
        answer = raw_exchange(server.address, b"GET / HTTP/1.1\r\nHost")
    assert answer.startswith(b"HTTP/1.1 408 ")
    final = channel.final()
    assert final.counters["refusals"] == {"head_timeout": 1}
    assert final.counters["timeouts"] == {"head": 1}
    assert final.counters["shed"] == {}


def test_an_idle_keep_alive_connection_closed_by_its_timeout_is_a_keepalive_timeout() -> None:
    with (
        serve_stats(echo, limits=Limits(keepalive_timeout_s=0.2)) as (server, channel),
        server.connect() as sock,
    ):
        sock.sendall(GET)
        responses, _ = read_responses(sock, 1)
        assert responses[0].status == 200
        assert read_until_close(sock) == b""  # the server closed the idle connection
    final = channel.final()
    assert final.counters["timeouts"] == {"keepalive": 1}
    assert final.counters["refusals"] == {}


def test_a_connection_refused_by_the_per_client_cap_is_accepted_and_refused() -> None:
    limits = Limits(client_connections_max=1)
    with (
        serve_stats(echo, limits=limits) as (server, channel),
        server.connect() as first,
        server.connect() as second,
    ):
        assert server_closed(second, TIMEOUT_S)  # closed at once, unanswered
        first.sendall(GET)
        responses, _ = read_responses(first, 1)
        assert responses[0].status == 200
    final = channel.final()
    assert final.counters["refusals"] == {"client_connections": 1}
    assert counter(final, "connections_accepted") == 2
    assert counter(final, "requests") == 1


def test_load_shedding_is_counted_as_a_refusal_and_as_shed() -> None:
    gate = Gate()
    with (
        serve_stats(gate, threads=1, pool_queue_max=0) as (server, channel),
        server.connect() as blocked,
    ):
        blocked.sendall(b"GET /block HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        gate.wait_entered()
        with server.connect() as refused:
            refused.sendall(GET)
            responses, _ = read_responses(refused, 1)
        assert responses[0].status == 503
        gate.release.set()
        assert read_until_close(blocked).startswith(b"HTTP/1.1 200 ")
    final = channel.final()
    assert final.counters["refusals"] == {"pool_saturated": 1}
    assert final.counters["shed"] == {"pool_saturated": 1}
    assert counter(final, "requests") == 1


def test_a_request_shed_from_the_queue_is_a_request_a_refusal_and_a_queue_timeout() -> None:
    gate = Gate()
    with (
        serve_stats(gate, threads=1, limits=Limits(queue_timeout_s=0.1)) as (server, channel),
        server.connect() as running,
        server.connect() as queued,
    ):
        running.sendall(b"GET /block HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        gate.wait_entered()
        queued.sendall(GET)
        responses, _ = read_responses(queued, 1)
        assert responses[0].status == 503
        gate.release.set()
        assert read_until_close(running).startswith(b"HTTP/1.1 200 ")
    final = channel.final()
    assert final.counters["refusals"] == {"queue_timeout": 1}
    assert final.counters["shed"] == {"queue_timeout": 1}
    assert final.counters["timeouts"] == {"queue": 1}
    # Both are in the access log, so both are requests; only one ever got a thread.
    assert observations(final, "request_duration") == {"GET|2xx": 1, "GET|5xx": 1}
    assert observations(final, "queue_wait") == {"": 1}


def test_a_queued_request_whose_client_left_is_a_request_without_a_status() -> None:
    gate = Gate()
    with (
        serve_stats(gate, threads=1) as (server, channel),
        server.connect() as running,
    ):
        running.sendall(b"GET /block HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        gate.wait_entered()
        with server.connect() as leaving:
            leaving.sendall(GET)
            channel.wait_for(lambda s: s.gauges.get("pool_queued") == 1)
            leaving.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        channel.wait_for(lambda s: s.counters.get("requests", {}).get("") == 1)
        gate.release.set()
        assert read_until_close(running).startswith(b"HTTP/1.1 200 ")
    final = channel.final()
    assert observations(final, "request_duration") == {"GET|none": 1, "GET|2xx": 1}
    assert observations(final, "queue_wait") == {"": 1}
    assert final.counters["refusals"] == {}


def test_gauges_show_the_pool_and_the_queue_and_queue_wait_is_the_time_queued() -> None:
    gate = Gate()
    held_s = 0.15
    with (
        serve_stats(gate, threads=1) as (server, channel),
        server.connect() as running,
        server.connect() as queued,
    ):
        running.sendall(b"GET /block HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        gate.wait_entered()
        queued.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        snapshot = channel.wait_for(lambda s: s.gauges.get("pool_queued") == 1)
        time.sleep(held_s)  # the queued request waits at least this long from here
        gate.release.set()
        assert read_until_close(running).startswith(b"HTTP/1.1 200 ")
        assert read_until_close(queued).startswith(b"HTTP/1.1 200 ")
    assert snapshot.gauges == {
        "connections_open": 2,
        "requests_in_flight": 2,
        "pool_threads": 1,
        "pool_busy": 1,
        "pool_queued": 1,
        "accept_servers": 1,  # one listener, nothing waiting in its queue
    }
    final = channel.final()
    waits = final.histograms["queue_wait"][""]
    first_over = next(i for i, bound in enumerate(QUEUE_WAIT_BUCKETS_S) if bound >= held_s)
    assert sum(waits[:-1]) == 2
    # One wait was long (the queued request's), the other short (the first one's).
    assert sum(waits[first_over:-1]) == 1
    assert waits[-1] >= held_s
    assert final.gauges["pool_busy"] == 0
    assert final.gauges["connections_open"] == 0


def test_a_request_reported_overdue_is_a_request_timeout() -> None:
    gate = Gate()
    limits = Limits(request_timeout_s=0.1)
    with serve_stats(gate, limits=limits) as (server, channel), server.connect() as sock:
        sock.sendall(b"GET /block HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        gate.wait_entered()
        channel.wait_for(lambda s: s.counters.get("timeouts", {}).get("request") == 1)
        gate.release.set()
        assert read_until_close(sock).startswith(b"HTTP/1.1 200 ")
    final = channel.final()
    assert final.counters["timeouts"] == {"request": 1}
    assert counter(final, "requests") == 1


def test_a_body_timeout_seen_by_the_apps_thread_is_counted_on_the_loop() -> None:
    limits = Limits(body_idle_timeout_s=0.2)
    request = (
        b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n"
        b"Connection: close\r\n\r\n"
    )
    with serve_stats(echo, limits=limits) as (server, channel):
        answer = raw_exchange(server.address, request)  # the body never comes
    assert b"HTTP/1.1 408 " in answer
    final = channel.final()
    assert final.counters["refusals"] == {"body_timeout": 1}
    assert final.counters["timeouts"] == {"body": 1}
    assert observations(final, "request_duration") == {"POST|4xx": 1}


def test_snapshots_come_while_the_worker_serves() -> None:
    with serve_stats(echo) as (server, channel):
        raw_exchange(server.address, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        snapshot = channel.wait_for(lambda s: s.counters.get("requests", {}).get("") == 1)
        assert snapshot.gauges["pool_threads"] == server.worker.config.threads
    assert counter(channel.final(), "requests") == 1


def test_a_worker_retiring_after_max_requests_sends_its_last_snapshot() -> None:
    with serve_stats(echo, max_requests=3, max_requests_jitter=0, timeout_s=0.4) as (
        server,
        channel,
    ):
        for _ in range(3):
            raw_exchange(server.address, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        channel.wait_message(RETIRING)
        channel.wait_closed()  # the worker stopped by itself
    final = channel.final()
    assert counter(final, "requests") == 3
    assert channel.messages.index(RETIRING) < len(channel.messages) - 1


# -- a worker process, stopped by a signal ------------------------------------------------------

_WORKER_SCRIPT = textwrap.dedent(
    """
    import socket, sys
    from hardserve.settings import Config
    from hardserve.worker.main import run_worker

    def app(environ, start_response):
        body = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"echo:" + body]

    listener = socket.socket(fileno=int(sys.argv[1]))
    host, port = listener.getsockname()
    config = Config(bind=(f"{host}:{port}",), loop=sys.argv[3])
    sys.exit(run_worker(app, config, [listener], int(sys.argv[2])))
    """
)


@contextlib.contextmanager
def worker_process(
    loop: str,
) -> Iterator[tuple[subprocess.Popen[bytes], tuple[str, int], Channel]]:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    host, port = listener.getsockname()
    master_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    channel = Channel(master_end)
    fds = (listener.fileno(), worker_end.fileno())
    process = subprocess.Popen(
        [sys.executable, "-c", _WORKER_SCRIPT, str(fds[0]), str(fds[1]), loop],
        pass_fds=fds,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    worker_end.close()
    listener.close()
    try:
        channel.wait_message(READY)
        yield process, (host, port), channel
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(TIMEOUT_S)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_the_final_snapshot_after_a_signal_holds_everything(signum: int) -> None:
    with (
        worker_process(DEFAULT_SETTINGS["loop"]) as (process, address, channel),
        socket.create_connection(address, timeout=TIMEOUT_S) as sock,
    ):
        sock.sendall(GET * 3)  # pipelined on a keep-alive connection, left open
        responses, _ = read_responses(sock, 3)
        assert [r.status for r in responses] == [200, 200, 200]
        refused = raw_exchange(address, b"GET / HTTP/1.1\r\n\r\n")  # no Host
        assert refused.startswith(b"HTTP/1.1 400 ")
        process.send_signal(signum)
        assert read_until_close(sock) == b""  # the idle connection is closed
        assert process.wait(TIMEOUT_S) == 0
    final = channel.final()
    assert counter(final, "requests") == 3
    assert counter(final, "keepalive_reused") == 2
    assert counter(final, "connections_accepted") == 2
    assert final.counters["refusals"] == {"missing_host": 1}
    assert observations(final, "request_duration") == {"GET|2xx": 3}
    assert observations(final, "queue_wait") == {"": 3}
    assert final.gauges["requests_in_flight"] == 0


# -- the worker's bound on bytes handed to the loop (worker_write_queue_bytes) -------------------

STREAM_PIECE_BYTES = 16384
STREAM_PIECES = 32
STREAMS = 8


def fresh_stream(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
    """A stream whose pieces are built as they are sent, each different (the client checks the
    order): no length, so chunked."""
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    for index in range(STREAM_PIECES):
        yield bytes([index]) * STREAM_PIECE_BYTES


def fresh_writes(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """The same pieces through the write() callable (the other road to the loop)."""
    write = start_response("200 OK", [("Content-Type", "application/octet-stream")])
    for index in range(STREAM_PIECES):
        write(bytes([index]) * STREAM_PIECE_BYTES)
    return []


@pytest.mark.parametrize("app", [fresh_stream, fresh_writes], ids=["iterable", "write"])
@pytest.mark.parametrize("bound", [0, STREAM_PIECE_BYTES])
def test_threads_past_the_workers_write_bound_wait_and_every_stream_arrives_whole(
    bound: int, app: Any
) -> None:
    """Eight streams at once on four threads. With a bound of one piece, a thread that hands
    over a second piece before the loop has written the first waits: counted in write_waits.
    With no bound, no thread waits. Either way every stream arrives whole and in order."""
    expected = b"".join(bytes([index]) * STREAM_PIECE_BYTES for index in range(STREAM_PIECES))
    bodies: list[bytes] = []
    failures: list[BaseException] = []
    limits = Limits(worker_write_queue_bytes=bound)
    with serve_stats(app, limits=limits, threads=4) as (server, channel):
        start = threading.Barrier(STREAMS, timeout=TIMEOUT_S)

        def fetch() -> None:
            client = http.client.HTTPConnection(*server.address, timeout=TIMEOUT_S)
            try:
                start.wait()
                client.request("GET", "/")
                bodies.append(client.getresponse().read())
            except BaseException as exc:
                failures.append(exc)
            finally:
                client.close()

        clients = [threading.Thread(target=fetch) for _ in range(STREAMS)]
        for client in clients:
            client.start()
        for client in clients:
            client.join(TIMEOUT_S)
    assert not failures, failures
    assert bodies == [expected] * STREAMS
    waits = counter(channel.final(), "write_waits")
    if bound:
        assert waits > 0
    else:
        assert waits == 0

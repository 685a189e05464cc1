"""Connection behaviour over real sockets: keep-alive, pipelining, close, refusals, 503."""

from __future__ import annotations

import contextlib
import gc
import logging
import re
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from hardserve.http.limits import Limits
from hardserve.worker.connection import HttpConnection
from tests.helpers import (
    TIMEOUT_S,
    RunningServer,
    both_loops,  # noqa: F401 - a fixture
    exchange,
    only_handler,
    read_responses,
    serve,
    server_closed,
    wait_until,
)

# Every test here runs on uvloop and on the standard asyncio loop.
pytestmark = pytest.mark.usefixtures("both_loops")


def echo_path(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    body = environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [environ["PATH_INFO"].encode("latin-1") + b"|" + body]


def test_http11_keeps_the_connection_by_default() -> None:
    with serve(echo_path) as server:
        responses, closed = exchange(server, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    assert responses[0].body == b"/a|"
    assert responses[0].header("Connection") is None
    assert not closed


def test_http10_closes_unless_keep_alive_is_asked() -> None:
    with serve(echo_path) as server:
        responses, closed = exchange(server, b"GET /a HTTP/1.0\r\n\r\n")
        assert responses[0].header("Connection") == "close"
        assert closed
        responses, closed = exchange(
            server,
            b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /b HTTP/1.0\r\n\r\n",
            2,
        )
    assert [r.body for r in responses] == [b"/a|", b"/b|"]
    assert responses[0].header("Connection") == "keep-alive"
    assert responses[1].header("Connection") == "close"
    assert closed


def test_connection_close_from_the_client_is_honoured() -> None:
    with serve(echo_path) as server:
        raw = b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n"
        with server.connect() as sock:
            sock.sendall(raw)
            responses, closed = read_responses(sock, 1)
    assert responses[0].body == b"/a|"
    assert responses[0].header("Connection") == "close"
    assert closed  # and /b was never answered


def test_pipelined_requests_are_answered_in_order_one_call_at_a_time() -> None:
    active = 0
    most_active = 0
    lock = threading.Lock()

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        nonlocal active, most_active
        with lock:
            active += 1
            most_active = max(most_active, active)
        try:
            body = environ["wsgi.input"].read()
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [environ["PATH_INFO"].encode() + b"|" + body]
        finally:
            with lock:
                active -= 1

    raw = b"".join(
        b"POST /%d HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nb%02d" % (i, i)
        for i in range(10)
    )
    with serve(app, threads=8) as server:
        responses, closed = exchange(server, raw, 10, method=b"POST")
    assert [r.body for r in responses] == [b"/%d|b%02d" % (i, i) for i in range(10)]
    assert most_active == 1
    assert not closed


def test_pipelined_chunked_request_then_plain_request() -> None:
    raw = (
        b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\nX-Checksum: 1\r\n\r\n"
        b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    with serve(echo_path) as server:
        responses, _ = exchange(server, raw, 2, methods=[b"POST", b"GET"])
    assert [r.body for r in responses] == [b"/a|abcde", b"/b|"]


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        (
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            400,
            "cl_te_conflict",
        ),
        (b"GET / HTTP/1.1\nHost: x\r\n\r\n", 400, "bare_lf"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nA: b\r\n c\r\n\r\n", 400, "obs_fold"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501, "te_not_chunked"),
        (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505, "unsupported_version"),
        (b"GET / HTTP/1.1\r\n\r\n", 400, "missing_host"),
    ],
)
def test_refusals_answer_close_and_log_a_reason_code(
    raw: bytes, status: int, code: str, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        calls.append(environ["PATH_INFO"])
        start_response("200 OK", [])
        return [b""]

    caplog.set_level(logging.WARNING, logger="hardserve.security")
    # A valid request follows on the same connection: it must never be read.
    with serve(app) as server:
        responses, closed = exchange(server, raw + b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
    assert responses[0].status == status
    assert responses[0].header("Connection") == "close"
    assert len(responses[0].body) < 200
    assert closed
    assert calls == []
    security = [r.getMessage() for r in caplog.records if r.name == "hardserve.security"]
    assert any(f"reason={code} " in line for line in security), security


def test_body_over_the_limit_is_refused_before_any_body_byte() -> None:
    calls: list[str] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        calls.append("called")
        start_response("200 OK", [])
        return [b""]

    with serve(app, limits=Limits(body_max_bytes=100)) as server:
        responses, closed = exchange(
            server, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 101\r\n\r\n", method=b"POST"
        )
        assert responses[0].status == 413
        assert closed
        responses, closed = exchange(
            server, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"x" * 100
        )
        assert responses[0].status == 200
    assert calls == ["called"]


def test_idle_keep_alive_connection_is_closed_after_the_timeout() -> None:
    with (
        serve(echo_path, limits=Limits(keepalive_timeout_s=0.2)) as server,
        server.connect() as sock,
    ):
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        responses, _ = read_responses(sock, 1)
        assert responses[0].status == 200
        assert server_closed(sock, wait_s=TIMEOUT_S)


def test_a_connection_that_never_sends_a_byte_is_closed_at_the_keep_alive_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="hardserve")
    with serve(echo_path, limits=Limits(keepalive_timeout_s=0.3)) as server:
        shared = server.worker.shared
        assert shared is not None
        with server.connect() as sock:
            opened = time.monotonic()
            # The timer is armed when the connection is accepted, before any byte arrives;
            # server_closed raises if the server sends anything.
            assert server_closed(sock, wait_s=TIMEOUT_S)
            elapsed = time.monotonic() - opened
        assert wait_until(lambda: not shared.connections)
    # Not at once, and at the keep-alive timeout, not the 10 s head timeout.
    assert 0.25 <= elapsed < 5
    assert not [r for r in caplog.records if r.name.startswith("hardserve.security")]


def test_head_not_finished_in_time_gets_408() -> None:
    with serve(echo_path, limits=Limits(head_timeout_s=0.2)) as server, server.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        responses, closed = read_responses(sock, 1)
    assert responses[0].status == 408
    assert closed


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /a HTTP/1.0\r\n\r\n",
        b"POST /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 3\r\n\r\nabc",
    ],
)
def test_a_client_that_said_close_is_closed_without_lingering(raw: bytes) -> None:
    """The client said it sends nothing more, and all it sent was read: the server closes at
    once instead of half-closing and waiting (here up to a minute) for the client's FIN."""
    with serve(echo_path, limits=Limits(linger_timeout_s=60)) as server:
        shared = server.worker.shared
        assert shared is not None
        with server.connect() as sock:
            sock.sendall(raw)
            responses, closed = read_responses(sock, 1, method=raw.split(b" ")[0])
            assert responses[0].body == b"/a|" + (b"abc" if raw.startswith(b"POST") else b"")
            assert closed
            # The client keeps its socket open: only the server's own close ends the connection.
            assert wait_until(lambda: not shared.connections)


def test_a_connection_the_server_ends_still_reads_what_the_client_sends() -> None:
    """The client asked for keep-alive; the server ends the connection (its request cap). The
    client may have sent its next request already, so the server lingers: it reads and drops
    what arrives, and the client sees the end of the stream, not a reset."""
    with (
        serve(echo_path, limits=Limits(keepalive_requests_max=1, linger_timeout_s=60)) as server,
        server.connect() as sock,
    ):
        sock.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        responses, closed = read_responses(sock, 1)
        assert responses[0].header("Connection") == "close"
        assert closed
        sock.sendall(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n")
        # A closed socket would answer these bytes with a reset (ConnectionResetError here).
        assert sock.recv(1) == b""
        shared = server.worker.shared
        assert shared is not None
        assert len(shared.connections) == 1


def _connections_alive() -> int:
    return sum(1 for obj in gc.get_objects() if isinstance(obj, HttpConnection))


def test_a_finished_connection_is_freed_without_the_garbage_collector() -> None:
    """No reference cycle keeps a connection or its last request alive: with the collector
    off, each is freed as soon as the loop lets go of it. A cycle would leave every closed
    connection for the collector, whose passes then cost more than the rest of the work."""
    with serve(echo_path) as server:
        gc.collect()
        gc.disable()
        try:
            with server.connect() as sock:
                sock.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                read_responses(sock, 1)
            with server.connect() as sock:
                raw = b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"
                sock.sendall(raw + b"GET /c HTTP/1.1\r\nHost: x\r\n\r\n")
                responses, _ = read_responses(sock, 2, methods=[b"POST", b"GET"])
                assert [r.body for r in responses] == [b"/b|hi", b"/c|"]
            freed = wait_until(lambda: _connections_alive() == 0)
        finally:
            gc.enable()
    assert freed


def test_client_half_close_after_request_still_gets_the_answer() -> None:
    with serve(echo_path) as server, server.connect() as sock:
        sock.sendall(b"GET /half HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.shutdown(1)  # SHUT_WR
        responses, _ = read_responses(sock, 1)
    assert responses[0].body == b"/half|"


def test_a_refusal_inside_a_body_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        with contextlib.suppress(OSError):  # the body read fails: the server refused the body
            environ["wsgi.input"].read()
        start_response("400 Bad Request", [])
        return [b"bad body"]

    caplog.set_level(logging.WARNING, logger="hardserve.security")
    raw = (
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\nHost: evil\r\n\r\n"
    )
    with serve(app) as server:
        responses, closed = exchange(server, raw, method=b"POST")
    assert responses[0].status == 400
    assert closed
    refusals = [r for r in caplog.records if r.name == "hardserve.security"]
    assert len(refusals) == 1
    assert "reason=forbidden_trailer " in refusals[0].getMessage()


@pytest.mark.parametrize(
    ("target", "settings", "status", "path_info"),
    [
        (b"/static/%2e%2e/%2e%2e/etc/passwd", {}, 400, None),
        (b"/a%2Fb", {}, 400, None),
        (b"/a%2Fb", {"path_encoded_slash": "allow"}, 200, "/a/b"),
        (b"/a%5Cb", {"path_backslash": "allow"}, 200, "/a\\b"),
        (b"/a/../b", {}, 200, "/a/../b"),
    ],
)
def test_path_policy_end_to_end(
    target: bytes, settings: dict[str, str], status: int, path_info: str | None
) -> None:
    seen: list[str] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(environ["PATH_INFO"])
        start_response("200 OK", [])
        return [b""]

    with serve(app, **settings) as server:
        responses, closed = exchange(server, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert responses[0].status == status
    assert seen == ([] if path_info is None else [path_info])
    assert closed == (status == 400)


@pytest.mark.parametrize(("limit", "answered"), [(3, 3), (4, 4), (1, 1)])
def test_keep_alive_requests_per_connection_are_capped(limit: int, answered: int) -> None:
    with serve(echo_path, limits=Limits(keepalive_requests_max=limit)) as server:
        raw = b"GET /r HTTP/1.1\r\nHost: x\r\n\r\n" * 4
        responses, closed = exchange(server, raw, answered)
    assert len(responses) == answered
    assert responses[-1].header("Connection") == ("close" if answered == limit else None)
    assert all(r.header("Connection") is None for r in responses[:-1])
    assert closed == (answered == limit)


# -- a pool held busy: 503s, withdrawn and half-closed requests -------------------------------


class BlockingApp:
    """Requests for /block wait until `release` is set; every other path answers its path."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.ran: list[str] = []

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        path = environ["PATH_INFO"]
        self.ran.append(path)
        if path == "/block":
            self.entered.set()
            self.release.wait(TIMEOUT_S)
        start_response("200 OK", [])
        return [path.encode()]


@contextlib.contextmanager
def held_pool(server: RunningServer, app: BlockingApp) -> Iterator[socket.socket]:
    """The one pool thread busy with /block for the length of the block; yields its socket."""
    blocker = server.connect()
    try:
        blocker.sendall(b"GET /block HTTP/1.1\r\nHost: x\r\n\r\n")
        assert app.entered.wait(TIMEOUT_S)
        yield blocker
    finally:
        app.release.set()
        blocker.close()


def test_pool_saturated_gets_503_with_retry_after_at_once() -> None:
    app = BlockingApp()
    with serve(app, threads=1, pool_queue_max=0) as server, held_pool(server, app) as blocker:
        responses, closed = exchange(server, b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n")
        assert responses[0].status == 503
        assert responses[0].header("Retry-After") == "1"
        assert not closed
        app.release.set()
        blocked, _ = read_responses(blocker, 1)
    assert blocked[0].body == b"/block"
    assert app.ran == ["/block"]  # the refused request never reached the app


def test_503_to_a_head_request_has_no_body() -> None:
    app = BlockingApp()
    with serve(app, threads=1, pool_queue_max=0) as server, held_pool(server, app):
        raw = b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n" * 2
        responses, closed = exchange(server, raw, 2, method=b"HEAD")
    # h11 reads the second answer right after the first: a body would break it.
    assert [r.status for r in responses] == [503, 503]
    assert [r.body for r in responses] == [b"", b""]
    assert not closed


def test_a_queued_request_whose_client_reset_is_withdrawn_at_once() -> None:
    """One thread, one queue slot: the leaver waits in the slot and resets. Its slot must be
    free at once (a third client is queued, not refused with 503) and its call never run."""
    app = BlockingApp()
    with serve(app, threads=1, pool_queue_max=1) as server, held_pool(server, app) as blocker:
        pool = server.worker.shared.pool  # type: ignore[union-attr]
        with server.connect() as leaver, server.connect() as after:
            leaver.sendall(b"GET /abandoned HTTP/1.1\r\nHost: x\r\n\r\n")
            assert wait_until(lambda: pool.in_flight == 2)
            # A reset (a closed tab, a proxy giving up), not a half-close: a client may
            # half-close after its request and still wait for the answer.
            leaver.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            leaver.close()
            assert wait_until(lambda: pool.in_flight == 1)
            after.sendall(b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n")
            assert wait_until(lambda: pool.in_flight == 2)
            app.release.set()
            read_responses(blocker, 1)
            responses, _ = read_responses(after, 1)
    assert [r.status for r in responses] == [200]
    assert app.ran == ["/block", "/after"]


def test_a_request_half_closed_while_queued_is_served_without_holding_its_slot() -> None:
    """One thread, one queue slot: the half-closer's request waits in the slot, then its client
    shuts down its sending side. The slot is given back (a third client is queued, not refused
    with 503), and the half-closer still gets its answer."""
    app = BlockingApp()
    with serve(app, threads=1, pool_queue_max=1) as server, held_pool(server, app) as blocker:
        pool = server.worker.shared.pool  # type: ignore[union-attr]
        with server.connect() as half, server.connect() as third:
            half.sendall(b"GET /half HTTP/1.1\r\nHost: x\r\n\r\n")
            assert wait_until(lambda: pool.in_flight == 2)
            half.shutdown(socket.SHUT_WR)
            assert wait_until(lambda: pool.in_flight == 1)
            third.sendall(b"GET /third HTTP/1.1\r\nHost: x\r\n\r\n")
            assert wait_until(lambda: pool.in_flight == 2)
            app.release.set()
            bodies = [read_responses(sock, 1)[0][0].body for sock in (blocker, half, third)]
    assert bodies == [b"/block", b"/half", b"/third"]


def test_pipelined_bytes_behind_a_running_request_are_bounded() -> None:
    """While the app holds the first request, the worker keeps at most pipeline_buffer_bytes of
    what follows and then stops reading: the client can push no more than kernel buffers hold."""
    app = BlockingApp()
    request = b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n"
    flood = request * (32 * 1024 * 1024 // len(request))
    with serve(app, threads=1) as server, held_pool(server, app) as blocker:
        # Push until the socket has not taken a byte for a second: the server stopped reading.
        blocker.settimeout(1.0)
        accepted = 0
        with contextlib.suppress(TimeoutError):
            while accepted < len(flood):
                accepted += blocker.send(flood[accepted : accepted + 1024 * 1024])
        # Loopback kernel buffers hold a few MiB; the worker itself keeps 64 KiB.
        assert accepted < 24 * 1024 * 1024, accepted
        assert server.worker.shared.connections  # type: ignore[union-attr]


def test_pipelined_bytes_behind_a_response_the_client_does_not_read_are_bounded() -> None:
    """The app has finished, but its response waits for a client that does not read it while
    it keeps pipelining requests: the worker keeps at most pipeline_buffer_bytes of them and
    stops reading, instead of buffering whatever the client sends until the slow-reader
    check drops it."""
    answered = threading.Event()

    def big(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        answered.set()
        return [b"r" * (16 * 1024 * 1024)]

    request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    flood = request * (64 * 1024 * 1024 // len(request))
    with serve(big) as server, server.connect() as sock:
        sock.sendall(request)
        assert answered.wait(TIMEOUT_S)
        sock.settimeout(1.0)
        accepted = 0
        with contextlib.suppress(TimeoutError):
            while accepted < len(flood):
                accepted += sock.send(flood[accepted : accepted + 1024 * 1024])
        # Kernel buffers hold a few MiB; unbounded, the worker took all 64 MiB in about 0.2 s.
        assert accepted < 24 * 1024 * 1024, accepted
        (connection,) = server.worker.shared.connections  # type: ignore[union-attr]
        # What the worker holds: at most the limit plus one read from the socket (256 KiB).
        assert connection._parser.buffered_bytes <= 65536 + 262144


class AccessLines(logging.Handler):
    """The access log as `--access-log` writes it in the text format (one formatted record
    per line); `arrived` counts the records."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))
        self.lines: list[str] = []
        self.arrived = threading.Semaphore(0)

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))
        self.arrived.release()


@pytest.fixture
def access_log() -> Iterator[AccessLines]:
    with only_handler("hardserve.access", AccessLines(), logging.INFO) as handler:
        yield handler


# Request targets that try to break or forge an access-log line: percent-encoded CR LF and a
# forged entry (not decoded in the target), a backslash followed by n (must not read as an
# escape), an escape sequence spelt out, a tab spelt out. As logged.
ACCESS_TARGETS = [
    (
        b"/q?x=1%0d%0a127.0.0.1%20%22GET%20/admin%20HTTP/1.1%22%20200",
        "/q?x=1%0d%0a127.0.0.1%20%22GET%20/admin%20HTTP/1.1%22%20200",
    ),
    (b"/q?a=\\n127.0.0.1", "/q?a=\\\\n127.0.0.1"),
    (b"/q?%1b[2J%09%00", "/q?%1b[2J%09%00"),
]


def _one_clean_line(line: str) -> bool:
    return all(0x20 <= ord(char) <= 0x7E for char in line)


def test_the_access_log_keeps_client_text_on_one_line(access_log: AccessLines) -> None:
    with serve(echo_path) as server, server.connect() as sock:
        for target, _ in ACCESS_TARGETS:
            sock.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_responses(sock, 1)[0][0].status == 200
            assert access_log.arrived.acquire(timeout=TIMEOUT_S)
    assert len(access_log.lines) == len(ACCESS_TARGETS)
    for line, (_, logged) in zip(access_log.lines, ACCESS_TARGETS, strict=True):
        assert _one_clean_line(line), line
        assert line.startswith("127.0.0.1 "), line
        assert f' "GET {logged} HTTP/1.1" 200 ' in line, line


@pytest.mark.parametrize(
    "raw_target",
    [b"/a\r\n127.0.0.1 forged", b"/a\x1b[2J", b"/a\x7f", b"/caf\xc3\xa9", b"/a\x85b", b"/a\tb"],
    ids=["crlf", "esc", "del", "utf8", "nel", "tab"],
)
def test_a_target_with_raw_control_or_non_ascii_bytes_never_reaches_the_access_log(
    access_log: AccessLines, raw_target: bytes
) -> None:
    # Refused by the request-line grammar (a target is visible ASCII) before any app or access
    # log; a second request on a fresh connection then shows the log is written at all.
    with serve(echo_path) as server:
        responses, closed = exchange(server, b"GET " + raw_target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert responses[0].status == 400 and closed
        assert exchange(server, b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")[0][0].status == 200
        assert access_log.arrived.acquire(timeout=TIMEOUT_S)
    assert len(access_log.lines) == 1
    assert '"GET /next HTTP/1.1" 200' in access_log.lines[0]


def test_a_quote_in_the_target_is_escaped_in_the_access_log(access_log: AccessLines) -> None:
    target = b'/q?a="%20200%200%200.0%20ok%20"x'
    with serve(echo_path) as server:
        assert (
            exchange(server, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")[0][0].status == 200
        )
        assert access_log.arrived.acquire(timeout=TIMEOUT_S)
    (line,) = access_log.lines
    assert _one_clean_line(line)
    # The request field is the text between the first two unescaped quotes: all of it.
    quoted = re.match(r'[^"]*"((?:[^"\\]|\\.)*)"', line)
    assert quoted is not None, line
    request = quoted.group(1)
    assert request.endswith(" HTTP/1.1"), line

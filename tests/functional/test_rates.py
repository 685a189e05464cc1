"""Minimum rates over real sockets: a slow request body is cut, a slow reader is dropped and
its app thread released; time spent waiting on the app never counts against the client.

The client side has to be slow for real here, so these tests pace their sends and reads; the
arithmetic itself is tested on a fake clock in tests/unit/test_deadlines.py."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from hardserve.http.limits import Limits
from tests.helpers import (
    TIMEOUT_S,
    RunningServer,
    both_loops,  # noqa: F401 - a fixture
    read_responses,
    read_until_close,
    serve,
    wait_until,
)

pytestmark = pytest.mark.usefixtures("both_loops")


def body_length(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    body = environ["wsgi.input"].read()
    start_response("200 OK", [])
    return [str(len(body)).encode()]


@pytest.fixture
def security_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.WARNING, logger="hardserve.security")
    return caplog


def test_body_below_the_minimum_rate_is_cut_with_408(
    security_log: pytest.LogCaptureFixture,
) -> None:
    limits = Limits(body_min_rate_bytes_s=1000, body_rate_grace_s=0.2)
    with serve(body_length, limits=limits) as server, server.connect() as sock:
        started = time.monotonic()
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10000\r\n\r\n" + b"a" * 10)
        answer = read_until_close(sock)
        elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b"below the minimum rate" in answer
    # Allowed: 0.2 s grace + 10 bytes at 1000 B/s; cut soon after, not at the 30 s idle timeout.
    assert 0.2 <= elapsed < 5
    assert "reason=body_too_slow" in security_log.text


def test_body_at_the_minimum_rate_is_served() -> None:
    limits = Limits(body_min_rate_bytes_s=2000, body_rate_grace_s=0.2)
    with serve(body_length, limits=limits) as server, server.connect() as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4800\r\n\r\n")
        for _ in range(12):  # 400 bytes every 50 ms: about 8000 B/s, four times the minimum
            sock.sendall(b"b" * 400)
            time.sleep(0.05)
        responses, _ = read_responses(sock, 1)
    assert responses[0].status == 200
    assert responses[0].body == b"4800"


class LateReader:
    """Reads the body only when told to."""

    def __init__(self) -> None:
        self.go = threading.Event()
        self.entered = threading.Event()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        self.entered.set()
        assert self.go.wait(TIMEOUT_S)
        return body_length(environ, start_response)


def test_time_the_app_does_not_read_is_not_counted_against_the_client() -> None:
    app = LateReader()
    limits = Limits(body_min_rate_bytes_s=1000, body_rate_grace_s=0.2, body_buffer_bytes=1024)
    body = b"c" * 65536
    with serve(app, limits=limits) as server, server.connect() as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        assert app.entered.wait(TIMEOUT_S)
        time.sleep(0.6)  # well past the grace while the worker's buffer is full
        app.go.set()
        responses, _ = read_responses(sock, 1)
    assert responses[0].status == 200
    assert responses[0].body == b"65536"


def test_a_client_waiting_for_100_continue_is_not_counted_as_slow() -> None:
    app = LateReader()
    limits = Limits(body_min_rate_bytes_s=1000, body_rate_grace_s=0.2)
    with serve(app, limits=limits) as server, server.connect() as sock:
        sock.sendall(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        assert app.entered.wait(TIMEOUT_S)
        time.sleep(0.6)  # the app takes its time before its first read
        app.go.set()
        sock.settimeout(TIMEOUT_S)
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(b"hello")
        responses, _ = read_responses(sock, 1)
    assert responses[0].body == b"5"


class BigStream:
    """8 MiB in 64 KiB pieces; records when its iterable is closed (the thread is released)."""

    def __init__(self) -> None:
        self.closed = threading.Event()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Length", str(128 * 65536))])
        return self._pieces()

    def _pieces(self) -> Iterator[bytes]:
        try:
            for _ in range(128):
                yield b"d" * 65536
        finally:
            self.closed.set()


def slow_socket(server: RunningServer) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(TIMEOUT_S)
    sock.connect(server.address)
    return sock


def test_a_reader_that_stops_is_dropped_at_the_write_timeout(
    security_log: pytest.LogCaptureFixture,
) -> None:
    app = BigStream()
    limits = Limits(write_timeout_s=0.5, send_min_rate_bytes_s=0)
    with serve(app, limits=limits) as server, slow_socket(server) as sock:
        shared = server.worker.shared
        assert shared is not None
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        # Never reads: the app's thread is released and the connection dropped.
        assert app.closed.wait(TIMEOUT_S)
        assert wait_until(lambda: not shared.connections)
    assert "reason=send_timeout" in security_log.text


def test_a_reader_below_the_minimum_rate_is_dropped(security_log: pytest.LogCaptureFixture) -> None:
    app = BigStream()
    limits = Limits(send_min_rate_bytes_s=100_000, send_rate_grace_s=0.2)
    with serve(app, limits=limits) as server, slow_socket(server) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        received = 0
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:  # 1 KiB every 50 ms: about 20 KB/s
            try:
                data = sock.recv(1024)
            except ConnectionResetError:
                break
            if not data:
                break
            received += len(data)
            time.sleep(0.05)
        assert app.closed.wait(TIMEOUT_S)
    assert received < 128 * 65536
    assert "reason=send_too_slow" in security_log.text


def test_a_reader_at_the_minimum_rate_gets_everything() -> None:
    app = BigStream()
    limits = Limits(send_min_rate_bytes_s=100_000, send_rate_grace_s=0.2)
    with serve(app, limits=limits) as server, server.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        responses, _ = read_responses(sock, 1)
    assert len(responses[0].body) == 128 * 65536


def test_unsent_bytes_of_a_closing_connection_do_not_keep_it_forever(
    security_log: pytest.LogCaptureFixture,
) -> None:
    called = threading.Event()

    def one_big_piece(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        called.set()  # the connection is open in the worker by now
        start_response("200 OK", [])
        return [b"e" * (8 * 1024 * 1024)]

    limits = Limits(write_timeout_s=0.5, send_min_rate_bytes_s=0)
    with serve(one_big_piece, limits=limits) as server, slow_socket(server) as sock:
        shared = server.worker.shared
        assert shared is not None
        # The whole answer is handed to the transport at once and the connection then closes:
        # only the transport's buffer holds it, and the client never reads.
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert called.wait(TIMEOUT_S)
        assert wait_until(lambda: not shared.connections)
    assert "reason=send_timeout" in security_log.text


FILE_BYTES = 16 * 1024 * 1024


class RecordingFile:
    """A file for wsgi.file_wrapper that records when it is closed (the iterable's close(): the
    app's thread is done with the response)."""

    def __init__(self, path: Path) -> None:
        self._file: BinaryIO = path.open("rb")
        self.closed = threading.Event()

    def fileno(self) -> int:
        return self._file.fileno()

    def read(self, size: int = -1) -> bytes:
        return self._file.read(size)

    def close(self) -> None:
        self._file.close()
        self.closed.set()


class SendFile:
    """Answers every request with a 16 MiB file through wsgi.file_wrapper (os.sendfile on the
    app's thread)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.files: list[RecordingFile] = []
        self.opened = threading.Event()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [("Content-Length", str(FILE_BYTES))])
        file = RecordingFile(self.path)
        self.files.append(file)
        self.opened.set()
        return environ["wsgi.file_wrapper"](file)


@pytest.fixture
def big_file(tmp_path: Path) -> Path:
    path = tmp_path / "big.bin"
    with path.open("wb") as out:
        out.truncate(FILE_BYTES)  # sparse: sendfile still sends every byte
    return path


def test_a_sendfile_reader_that_stops_is_dropped_at_the_write_timeout(
    security_log: pytest.LogCaptureFixture, big_file: Path
) -> None:
    app = SendFile(big_file)
    limits = Limits(write_timeout_s=0.5, send_min_rate_bytes_s=0)
    with serve(app, limits=limits) as server, slow_socket(server) as sock:
        shared = server.worker.shared
        assert shared is not None
        started = time.monotonic()
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        # Never reads: the file's send gives up, the iterable is closed, the connection dropped.
        assert app.opened.wait(TIMEOUT_S)
        (file,) = app.files
        assert file.closed.wait(TIMEOUT_S)
        elapsed = time.monotonic() - started
        assert wait_until(lambda: not shared.connections)
    assert "reason=send_timeout" in security_log.text
    assert 0.4 <= elapsed < 5  # at the write timeout, not before, and not at the 30 s default


def test_a_sendfile_reader_below_the_minimum_rate_is_dropped(
    security_log: pytest.LogCaptureFixture, big_file: Path
) -> None:
    app = SendFile(big_file)
    limits = Limits(send_min_rate_bytes_s=100_000, send_rate_grace_s=0.2)
    with serve(app, limits=limits) as server, slow_socket(server) as sock:
        shared = server.worker.shared
        assert shared is not None
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert app.opened.wait(TIMEOUT_S)
        (file,) = app.files
        received = 0
        deadline = time.monotonic() + 5  # the loop's check drops such a reader well before
        while time.monotonic() < deadline and not file.closed.is_set():
            try:  # 1 KiB every 50 ms: about 20 KB/s
                data = sock.recv(1024)
            except ConnectionResetError:
                break
            if not data:
                break
            received += len(data)
            time.sleep(0.05)
        assert file.closed.wait(0.5), "not dropped within 5 s"
        assert wait_until(lambda: not shared.connections)
    assert received < FILE_BYTES
    assert "reason=send_too_slow" in security_log.text


def test_a_dropped_sendfile_reader_is_reset_not_closed(big_file: Path) -> None:
    app = SendFile(big_file)
    limits = Limits(write_timeout_s=0.3, send_min_rate_bytes_s=0)
    with serve(app, limits=limits) as server, slow_socket(server) as sock:
        shared = server.worker.shared
        assert shared is not None
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert app.opened.wait(TIMEOUT_S)
        assert app.files[0].closed.wait(TIMEOUT_S)
        assert wait_until(lambda: not shared.connections)
        # Now read: a reset connection gives at most what reached the client's own buffer.
        received = 0
        with pytest.raises(ConnectionResetError):
            while data := sock.recv(65536):
                received += len(data)
    assert received <= 65536

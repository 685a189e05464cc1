"""PEP 3333 behaviour over real sockets: wsgi.input, start_response, write(), framing of what
the app returns, close(), errors, wsgi.file_wrapper, the environ."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import re
import socket
import sys
import threading
from typing import Any
from wsgiref.validate import validator

import pytest

from hardserve.http.limits import Limits
from tests.helpers import (
    TIMEOUT_S,
    both_loops,  # noqa: F401 - a fixture
    exchange,
    read_responses,
    read_until_close,
    serve,
    server_closed,
    wait_until,
)

App = Any

# Every test here runs on uvloop and on the standard asyncio loop.
pytestmark = pytest.mark.usefixtures("both_loops")


def test_wsgi_input_read_readline_readlines_and_iteration() -> None:
    seen: dict[str, Any] = {}

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        stream = environ["wsgi.input"]
        seen["terminated"] = environ["wsgi.input_terminated"]
        seen["first"] = stream.readline()
        seen["limited"] = stream.readline(3)
        seen["rest_of_line"] = stream.readline()
        seen["five"] = stream.read(5)
        seen["lines"] = stream.readlines()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    body = b"line one\nabcdef\n12345tail\nlast"
    with serve(validator(app)) as server:
        responses, _ = exchange(
            server,
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body),
            method=b"POST",
        )
    assert responses[0].status == 200
    assert seen == {
        "terminated": True,
        "first": b"line one\n",
        "limited": b"abc",
        "rest_of_line": b"def\n",
        "five": b"12345",
        "lines": [b"tail\n", b"last"],
    }


def test_chunked_body_is_iterable_and_read_to_the_end() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        lines = list(environ["wsgi.input"])
        start_response("200 OK", [])
        return [b"|".join(lines)]

    raw = (
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"4\r\na\nb\n\r\n3\r\nc\nd\r\n0\r\n\r\n"
    )
    with serve(app) as server:
        responses, _ = exchange(server, raw, method=b"POST")
    assert responses[0].body == b"a\n|b\n|c\n|d"


def test_a_large_body_is_streamed_not_buffered() -> None:
    """The app has not read yet: the server must stop reading the socket once its small buffer
    is full, so the client can only push what the kernel buffers hold."""
    may_read = threading.Event()
    digest: list[str] = []
    body_size = 64 * 1024 * 1024

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        may_read.wait(TIMEOUT_S)
        sha = hashlib.sha256()
        stream = environ["wsgi.input"]
        while True:
            block = stream.read(65536)
            if not block:
                break
            sha.update(block)
        digest.append(sha.hexdigest())
        start_response("200 OK", [])
        return [b"ok"]

    block = bytes(range(256)) * 4096  # 1 MiB
    with serve(app, limits=Limits(body_max_bytes=body_size)) as server, server.connect() as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % body_size)
        sock.setblocking(False)
        accepted = 0
        # The body is `block` repeated; a send may stop anywhere inside a block.
        doubled = memoryview(block * 2)

        def next_piece() -> memoryview:
            start = accepted % len(block)
            return doubled[start : start + min(len(block), body_size - accepted)]

        try:
            while accepted < body_size:
                accepted += sock.send(next_piece())
        except BlockingIOError:
            pass
        # Kernel buffers on loopback hold a few MiB; the server's own buffer holds 64 KiB.
        assert accepted < 24 * 1024 * 1024, accepted
        may_read.set()
        sock.setblocking(True)
        sock.settimeout(TIMEOUT_S)
        while accepted < body_size:
            accepted += sock.send(next_piece())
        responses, _ = read_responses(sock, 1, method=b"POST")
    assert responses[0].body == b"ok"
    expected = hashlib.sha256(block * 64).hexdigest()
    assert digest == [expected]


def _continue_exchange(server: Any, path: bytes) -> tuple[bytes, socket.socket]:
    sock = server.connect()
    sock.sendall(
        b"POST "
        + path
        + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    )
    return b"", sock


def test_expect_100_continue_is_sent_when_the_app_reads() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        body = environ["wsgi.input"].read()
        start_response("200 OK", [])
        return [body]

    with serve(app) as server:
        _, sock = _continue_exchange(server, b"/")
        with sock:
            interim = b""
            while b"\r\n\r\n" not in interim:
                data = sock.recv(1024)
                assert data, "closed before the 100"
                interim += data
            assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
            sock.sendall(b"hello")
            responses, _ = read_responses(sock, 1, method=b"POST")
    assert responses[0].body == b"hello"


def test_expect_100_continue_is_not_sent_when_the_app_does_not_read() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("403 Forbidden", [("Content-Type", "text/plain")])
        return [b"no"]

    with serve(app) as server:
        _, sock = _continue_exchange(server, b"/")
        with sock:
            responses, closed = read_responses(sock, 1, method=b"POST")
    assert responses[0].status == 403
    assert responses[0].informational == []
    # The client never sent its body; the connection cannot be reused safely.
    assert closed


def test_unread_small_body_is_drained_and_the_connection_kept() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [environ["PATH_INFO"].encode()]

    # The unread body looks like a request line: it must be drained, never parsed as one.
    body = b"GET /x HTT"
    raw = (
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n"
        + body
        + b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    with serve(app) as server:
        responses, closed = exchange(server, raw, 2, methods=[b"POST", b"GET"])
    assert [r.body for r in responses] == [b"/a", b"/b"]
    assert not closed


def test_unread_large_body_closes_the_connection() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b"early"]

    with serve(app, limits=Limits(drain_max_bytes=1000)) as server, server.connect() as sock:
        # More than the 64 KiB body buffer, so the call starts before the body is complete.
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"x" * 70000)
        responses, _ = read_responses(sock, 1, method=b"POST")
        assert responses[0].body == b"early"
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(b"x" * 30000)
        assert server_closed(sock, wait_s=TIMEOUT_S)


def _status_app(status: Any, headers: Any, body: list[bytes] | None = None) -> App:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response(status, headers)
        return body if body is not None else [b"body"]

    return app


@pytest.mark.parametrize(
    ("status", "headers"),
    [
        ("200", []),
        ("OK 200", []),
        ("2000 OK", []),
        (b"200 OK", []),
        ("200 OK\r\nX: y", []),
        ("200 OK", [("X-Bad", "a\r\nSet-Cookie: evil=1")]),
        ("200 OK", [("X-Bad", "nul\x00")]),
        ("200 OK", [("Bad Name", "v")]),
        ("200 OK", [("Connection", "keep-alive")]),
        ("200 OK", [("Transfer-Encoding", "chunked")]),
        ("200 OK", [("X-Snowman", "\u2603")]),
        ("200 OK", (("X", "y"),)),
        ("200 OK", [("Content-Length", "12x")]),
        ("100 Continue", []),
    ],
)
def test_invalid_start_response_is_a_500_and_an_error_log_line(
    status: Any, headers: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="hardserve.error")
    with serve(_status_app(status, headers)) as server:
        responses, _ = exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert responses[0].status == 500
    assert responses[0].body == b"Internal Server Error\n"
    assert responses[0].header("Set-Cookie") is None
    assert any(r.name == "hardserve.error" and r.exc_info for r in caplog.records)


def test_exc_info_replaces_the_status_before_the_head_is_sent() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-First", "1")])
        try:
            raise ValueError("boom")
        except ValueError:
            start_response(
                "502 Bad Gateway",
                [("Content-Type", "text/plain"), ("X-Second", "1")],
                sys.exc_info(),
            )
        return [b"replaced"]

    with serve(validator(app)) as server:
        responses, _ = exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert responses[0].status == 502
    assert responses[0].header("X-First") is None
    assert responses[0].header("X-Second") == "1"
    assert responses[0].body == b"replaced"


def test_exc_info_after_the_head_is_sent_reraises_and_cuts_the_connection() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [])
        yield b"first"
        try:
            raise ValueError("late")
        except ValueError:
            start_response("500 Oops", [], sys.exc_info())
        yield b"never"

    with serve(app) as server, server.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        received = read_until_close(sock)
    assert received.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"first" in received
    assert b"never" not in received
    assert not received.endswith(b"0\r\n\r\n")  # no clean end: the client sees the cut


def test_start_response_twice_without_exc_info_is_an_error() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        start_response("201 Created", [])
        return [b"x"]

    with serve(app) as server:
        responses, _ = exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert responses[0].status == 500


def test_write_callable_sends_before_the_iterable() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written ")
        write(b"then ")
        return [b"returned"]

    with serve(validator(app)) as server:
        responses, _ = exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert responses[0].body == b"written then returned"
    assert responses[0].header("Transfer-Encoding") == "chunked"


def test_app_content_length_longer_body_is_cut_and_closed(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="hardserve.error")
    app = _status_app("200 OK", [("Content-Length", "4")], [b"abcdefgh"])
    with serve(app) as server:
        responses, closed = exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert responses[0].body == b"abcd"
    assert closed
    assert any("more than its Content-Length" in r.getMessage() for r in caplog.records)


def test_app_content_length_shorter_body_closes(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="hardserve.error")

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [("Content-Length", "10")])
        yield b"abc"

    with serve(app) as server, server.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        received = read_until_close(sock)
    assert received.endswith(b"\r\n\r\nabc")
    assert any("fewer than its Content-Length" in r.getMessage() for r in caplog.records)


def test_no_length_on_http10_is_close_delimited() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [])
        yield b"one "
        yield b"two"

    with serve(app) as server, server.connect() as sock:
        sock.sendall(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        received = read_until_close(sock)
    head, _, body = received.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding" not in head
    assert b"Connection: close" in head
    assert body == b"one two"


@pytest.mark.parametrize(
    ("method", "status", "headers"),
    [
        (b"HEAD", "200 OK", [("Content-Length", "4")]),
        (b"HEAD", "200 OK", []),
        (b"GET", "204 No Content", []),
        (b"GET", "304 Not Modified", [("ETag", '"x"')]),
    ],
)
def test_no_body_for_head_204_and_304(
    method: bytes, status: str, headers: list[tuple[str, str]]
) -> None:
    first = _status_app(status, headers, [b"body"])
    after = _status_app("200 OK", [], [b"body"])

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        chosen = after if environ["PATH_INFO"] == "/after" else first
        return chosen(environ, start_response)  # type: ignore[no-any-return]

    with serve(app) as server:
        raw = method + b" / HTTP/1.1\r\nHost: x\r\n\r\nGET /after HTTP/1.1\r\nHost: x\r\n\r\n"
        responses, closed = exchange(server, raw, 2, methods=[method, b"GET"])
    assert responses[0].body == b""
    assert responses[1].body == b"body"  # the connection stayed in sync
    if method == b"HEAD" and headers:
        assert responses[0].header("Content-Length") == "4"
    assert not closed


class _Tracked:
    """A response iterable that records its close()."""

    def __init__(self, pieces: Any, closed: threading.Event) -> None:
        self._pieces = pieces
        self._closed = closed

    def __iter__(self) -> Any:
        return iter(self._pieces)

    def close(self) -> None:
        self._closed.set()


def test_close_is_called_on_success() -> None:
    closed = threading.Event()

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [])
        return _Tracked([b"a", b"b"], closed)

    with serve(app) as server:
        responses, _ = exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert responses[0].body == b"ab"
    assert closed.wait(TIMEOUT_S)


def test_close_is_called_when_iteration_raises(caplog: pytest.LogCaptureFixture) -> None:
    closed = threading.Event()

    def pieces() -> Any:
        raise RuntimeError("secret detail")
        yield b"never"

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [])
        return _Tracked(pieces(), closed)

    caplog.set_level(logging.ERROR, logger="hardserve.error")
    with serve(app) as server:
        responses, _ = exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert responses[0].status == 500
    assert b"secret" not in responses[0].body
    assert b"Traceback" not in responses[0].body
    assert closed.wait(TIMEOUT_S)
    assert any("secret detail" in (r.exc_text or "") or r.exc_info for r in caplog.records)


def test_close_is_called_when_the_client_disconnects_mid_stream() -> None:
    closed = threading.Event()

    def forever() -> Any:
        while True:
            yield b"x" * 65536

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [])
        return _Tracked(forever(), closed)

    with serve(app) as server:
        sock = server.connect()
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(1024).startswith(b"HTTP/1.1 200")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()  # a reset, as a browser tab being closed
        assert closed.wait(TIMEOUT_S)


def test_slow_reader_releases_the_thread_after_the_write_deadline() -> None:
    closed = threading.Event()

    def forever() -> Any:
        while True:
            yield b"y" * 65536

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [])
        return _Tracked(forever(), closed)

    limits = Limits(write_timeout_s=0.3)
    with serve(app, limits=limits, threads=1) as server, server.connect() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        # Never read: the app's thread must be released, not block or buffer without end.
        assert closed.wait(TIMEOUT_S)
        # The single pool thread is free again for another client.
        with server.connect() as other:
            other.sendall(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
            responses, _ = read_responses(other, 1, method=b"HEAD")
        assert responses[0].status == 200


@pytest.mark.parametrize("method", [b"GET", b"HEAD"])
def test_file_wrapper_sends_the_file_and_closes_it(method: bytes, tmp_path: Any) -> None:
    content = bytes(range(256)) * 8192  # 2 MiB
    path = tmp_path / "data.bin"
    path.write_bytes(content)
    opened: list[Any] = []

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        handle = open(path, "rb")  # noqa: SIM115 - the server closes it
        handle.seek(256)
        opened.append(handle)
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](handle, 32768)

    # Not wrapped in wsgiref's validator: it hides the wrapper, and with it the sendfile path.
    with serve(app) as server:
        responses, closed = exchange(
            server, method + b" / HTTP/1.1\r\nHost: x\r\n\r\n", method=method
        )
    expected = b"" if method == b"HEAD" else content[256:]
    assert responses[0].body == expected
    assert responses[0].header("Content-Length") == str(len(content) - 256)
    assert not closed
    assert opened[0].closed


def test_file_wrapper_without_fileno_is_read_in_blocks() -> None:
    import io

    data = b"z" * 100000

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [])
        return environ["wsgi.file_wrapper"](io.BytesIO(data), 4096)

    with serve(app) as server:
        responses, _ = exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert responses[0].body == data


def test_environ_keys_and_header_joining() -> None:
    seen: dict[str, Any] = {}

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.update(environ)
        start_response("200 OK", [])
        return [b""]

    raw = (
        b"GET /a%20b/c?q=1&r=%41 HTTP/1.1\r\nHost: example.test:8080\r\n"
        b"Accept: text/html\r\nAccept: text/plain\r\nCookie: a=1\r\nCookie: b=2\r\n"
        b"X-Auth-User: real\r\nX_Auth_User: forged\r\n\r\n"
    )
    with serve(validator(app)) as server:
        exchange(server, raw)
        port = server.port
    assert seen["REQUEST_METHOD"] == "GET"
    assert seen["PATH_INFO"] == "/a b/c"
    assert seen["QUERY_STRING"] == "q=1&r=%41"
    assert seen["RAW_URI"] == seen["REQUEST_URI"] == "/a%20b/c?q=1&r=%41"
    assert seen["SCRIPT_NAME"] == ""
    assert seen["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert seen["SERVER_NAME"] == "127.0.0.1"
    assert seen["SERVER_PORT"] == str(port)
    assert seen["REMOTE_ADDR"] == "127.0.0.1"
    assert seen["REMOTE_PORT"].isdigit()
    assert seen["HTTP_HOST"] == "example.test:8080"
    assert seen["HTTP_ACCEPT"] == "text/html, text/plain"
    assert seen["HTTP_COOKIE"] == "a=1; b=2"
    assert seen["HTTP_X_AUTH_USER"] == "real"  # the '_' spelling was dropped, not merged
    assert seen["wsgi.version"] == (1, 0)
    assert seen["wsgi.url_scheme"] == "http"
    assert seen["wsgi.multithread"] is True
    assert seen["wsgi.multiprocess"] is False
    assert seen["wsgi.run_once"] is False
    assert seen["wsgi.input_terminated"] is True


def test_date_and_server_headers() -> None:
    app = _status_app("200 OK", [])
    with serve(app) as server:
        connection = http.client.HTTPConnection(server.host, server.port, timeout=TIMEOUT_S)
        connection.request("GET", "/")
        response = connection.getresponse()
        response.read()
        connection.close()
    assert response.getheader("Server") == "hardserve"
    date = response.getheader("Date")
    assert date is not None
    assert re.fullmatch(r"[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT", date)
    with serve(app, server_header="") as server:
        responses, _ = exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert responses[0].header("Server") is None


def test_many_threads_serve_many_connections_concurrently() -> None:
    barrier = threading.Barrier(4, timeout=TIMEOUT_S)

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        barrier.wait()  # only passes when four calls run at the same time
        start_response("200 OK", [])
        return [b"together"]

    with serve(app, threads=4) as server:
        results: list[int] = []

        def client() -> None:
            connection = http.client.HTTPConnection(server.host, server.port, timeout=TIMEOUT_S)
            connection.request("GET", "/")
            results.append(connection.getresponse().status)
            connection.close()

        clients = [threading.Thread(target=client) for _ in range(4)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join(TIMEOUT_S)
    assert results == [200] * 4


def test_app_date_and_server_headers_replace_the_servers_own() -> None:
    app = _status_app("200 OK", [("Date", "Sat, 01 Jan 2000 00:00:00 GMT"), ("Server", "app/1")])
    with serve(app) as server:
        responses, _ = exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    names = [name.lower() for name, _ in responses[0].headers]
    assert names.count(b"date") == 1
    assert names.count(b"server") == 1
    assert responses[0].header("Date") == "Sat, 01 Jan 2000 00:00:00 GMT"
    assert responses[0].header("Server") == "app/1"


def test_early_answer_to_a_large_upload_says_close_and_reaches_the_client() -> None:
    """The app answers without reading a 5 MiB body. The head must say Connection: close (the
    body will not be drained), and the answer must survive the close: the server lingers
    instead of resetting the connection while the client is still sending."""

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"nope"]

    body_size = 5 * 1024 * 1024
    with serve(app) as server:
        connection = http.client.HTTPConnection(server.host, server.port, timeout=TIMEOUT_S)
        # A reset during the upload (BrokenPipeError, ConnectionResetError) fails the test.
        connection.request("POST", "/upload", body=b"u" * body_size)
        response = connection.getresponse()
        assert response.status == 404
        assert response.read() == b"nope"
        assert response.getheader("Connection") == "close"
        connection.close()


def test_small_unread_body_keeps_the_connection_and_says_nothing() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"fine"]

    with serve(app) as server:
        raw = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"b" * 100
        responses, closed = exchange(server, raw * 2, 2, method=b"POST")
    assert [r.body for r in responses] == [b"fine", b"fine"]
    assert responses[0].header("Connection") is None
    assert not closed


def test_system_exit_in_the_app_closes_the_connection_and_keeps_the_worker() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if environ["PATH_INFO"] == "/exit":
            raise SystemExit(3)
        start_response("200 OK", [])
        return [b"alive"]

    with serve(app, threads=1) as server:
        with server.connect() as sock:
            sock.sendall(b"GET /exit HTTP/1.1\r\nHost: x\r\n\r\n")
            assert server_closed(sock, wait_s=TIMEOUT_S)
        responses, _ = exchange(server, b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
    assert responses[0].body == b"alive"


@pytest.mark.parametrize("shape", ["list", "generator", "one-piece", "declared-short"])
def test_large_bodies_arrive_intact(shape: str) -> None:
    pieces = [bytes([65 + index]) * (100_000 + index) for index in range(3)]
    whole = b"".join(pieces)

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        headers = [("Content-Type", "application/octet-stream")]
        if shape == "declared-short":
            headers.append(("Content-Length", str(len(whole) - 10)))
        start_response("200 OK", headers)
        if shape == "generator":
            return iter(pieces)
        if shape == "one-piece":
            return [whole]
        return list(pieces)

    with serve(app) as server:
        responses, closed = exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    if shape == "declared-short":
        assert responses[0].body == whole[:-10]  # the excess was cut
        assert closed
    else:
        assert responses[0].body == whole
        assert not closed
    expected_framing = "chunked" if shape == "generator" else None
    assert responses[0].header("Transfer-Encoding") == expected_framing


def test_a_request_past_the_request_timeout_logs_its_stack_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    release = threading.Event()

    def hang_here_waiting_for_a_lock() -> None:
        release.wait(TIMEOUT_S)

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        hang_here_waiting_for_a_lock()
        start_response("200 OK", [])
        return [b"late"]

    caplog.set_level(logging.ERROR, logger="hardserve.error")

    def reports() -> list[str]:
        return [r.getMessage() for r in caplog.records if "request running for more than" in r.getMessage()]

    with serve(app, limits=Limits(request_timeout_s=0.1)) as server, server.connect() as sock:
        sock.sendall(b"GET /slow?q=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert wait_until(lambda: bool(reports()))
        # Several more checks pass while the request still hangs: it is reported once only.
        assert not wait_until(lambda: len(reports()) > 1, timeout_s=0.5)
        release.set()
        responses, _ = read_responses(sock, 1)
    assert responses[0].body == b"late"
    (report,) = reports()
    assert "GET '/slow?q=1'" in report
    assert "hang_here_waiting_for_a_lock" in report


def test_a_stalled_upload_fails_the_apps_read_after_the_body_idle_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="hardserve.security")
    errors: list[BaseException] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        try:
            environ["wsgi.input"].read()
        except OSError as exc:
            errors.append(exc)
            raise  # let it propagate: the server answers for the body
        start_response("200 OK", [])
        return [b"never"]

    limits = Limits(body_idle_timeout_s=0.2, body_buffer_bytes=1024)
    with serve(app, limits=limits) as server, server.connect() as sock:
        # Past the body buffer, so the call has started and the app is reading when it stalls.
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10000\r\n\r\n" + b"x" * 2000)
        responses, closed = read_responses(sock, 1, method=b"POST")
    assert responses[0].status == 408
    assert b"body_timeout" in responses[0].body
    assert closed
    assert len(errors) == 1 and "no request body received" in str(errors[0])
    assert "reason=body_timeout status=408" in caplog.text

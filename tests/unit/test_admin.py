"""observe/admin.py: the admin listener's parser, answers and connection handling, driven by a
select() loop in the test the way the master's loop drives it, over real sockets."""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator

import pytest

from hardserve.observe.admin import (
    AdminServer,
    BadRequest,
    Endpoints,
    Request,
    bearer_matches,
    parse_head,
)

TOKEN = "s3cret-token-0123456789"
TIMEOUT_S = 5.0


def endpoints(*, ready: bool = True, token: str | None = None) -> Endpoints:
    return Endpoints(
        metrics=lambda accept: (f"metrics for {accept}\n".encode(), "text/plain; version=0.0.4"),
        live=lambda: True,
        ready=lambda: ready,
        token=token,
    )


def request(path: str, method: str = "GET", **headers: str) -> Request:
    return Request(method, path, {k.lower(): v for k, v in headers.items()})


@pytest.mark.parametrize(
    ("head", "method", "path"),
    [
        (b"GET /metrics HTTP/1.1\r\nHost: x", "GET", "/metrics"),
        (b"HEAD /readyz?verbose=1 HTTP/1.0", "HEAD", "/readyz"),
        (b"GET /livez HTTP/1.1\r\nAccept: a\r\naccept: b", "GET", "/livez"),
    ],
)
def test_parse_head(head: bytes, method: str, path: str) -> None:
    parsed = parse_head(head)
    assert (parsed.method, parsed.path) == (method, path)


def test_repeated_fields_are_joined() -> None:
    assert parse_head(b"GET / HTTP/1.1\r\nAccept: a\r\naccept: b").headers["accept"] == "a, b"


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET /metrics", 400),
        (b"GET  /metrics HTTP/1.1", 400),
        (b"GET /metrics HTTP/2.0", 505),
        (b"GET /metrics FTP/1.0", 400),
        (b"GET http://x/metrics HTTP/1.1", 400),
        (b"G(T /metrics HTTP/1.1", 400),
        (b"GET /metrics HTTP/1.1\nHost: x", 400),  # bare LF
        (b"GET /metrics HTTP/1.1\r\n Host: x", 400),  # obs-fold
        (b"GET /metrics HTTP/1.1\r\nHost x", 400),
        (b"GET /metrics HTTP/1.1\r\nAuthorization: a\r\nAuthorization: b", 400),
        (b"GET /m\x7fetrics HTTP/1.1", 400),
    ],
)
def test_refused_heads(head: bytes, status: int) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_head(head)
    assert caught.value.status == status


@pytest.mark.parametrize(
    ("authorization", "ok"),
    [
        (f"Bearer {TOKEN}", True),
        (f"bearer {TOKEN}", True),
        (f"Bearer  {TOKEN} ", True),
        (f"Bearer {TOKEN}x", False),
        (f"Bearer {TOKEN[:-1]}", False),
        (f"Basic {TOKEN}", False),
        (TOKEN, False),
        ("Bearer ", False),
        ("", False),
        (None, False),
    ],
)
def test_bearer_matches(authorization: str | None, ok: bool) -> None:
    assert bearer_matches(authorization, TOKEN) is ok


def test_answers() -> None:
    open_ = endpoints()
    assert open_.answer(request("/livez")).status == 200
    assert open_.answer(request("/readyz")).status == 200
    assert endpoints(ready=False).answer(request("/readyz")).status == 503
    metrics = open_.answer(request("/metrics", Accept="application/openmetrics-text"))
    assert (metrics.status, metrics.body) == (200, b"metrics for application/openmetrics-text\n")
    assert open_.answer(request("/")).status == 404
    assert open_.answer(request("/metrics/")).status == 404
    refused = open_.answer(request("/metrics", "POST"))
    assert refused.status == 405
    assert ("Allow", "GET, HEAD") in refused.headers


def test_the_token_guards_metrics_only() -> None:
    guarded = endpoints(token=TOKEN)
    assert guarded.answer(request("/metrics")).status == 401
    wrong = guarded.answer(request("/metrics", Authorization="Bearer wrong-token-0123456789"))
    assert wrong.status == 401
    assert ("WWW-Authenticate", 'Bearer realm="hardserve-admin"') in wrong.headers
    assert TOKEN.encode() not in wrong.encode(head_only=False)
    right = guarded.answer(request("/metrics", Authorization=f"Bearer {TOKEN}"))
    assert right.status == 200
    assert guarded.answer(request("/livez")).status == 200
    assert guarded.answer(request("/readyz")).status == 200


def test_a_rendering_error_is_a_500_not_a_crash() -> None:
    def broken(accept: str | None) -> tuple[bytes, str]:
        raise RuntimeError("bug")

    failing = Endpoints(metrics=broken, live=lambda: True, ready=lambda: True)
    assert failing.answer(request("/metrics")).status == 500


# -- the server over real sockets, driven like the master drives it ----------------------------


class Loop:
    def __init__(self, server: AdminServer) -> None:
        self.server = server

    def turn(self, timeout_s: float = 0.05) -> None:
        readers, writers = self.server.fds()
        readable, writable, _ = select.select(readers, writers, [], timeout_s)
        self.server.handle(readable, writable, time.monotonic())

    def exchange(self, client: socket.socket, data: bytes) -> bytes:
        client.sendall(data)
        return self.read(client)

    def read(self, client: socket.socket) -> bytes:
        client.setblocking(False)
        received = bytearray()
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            self.turn()
            try:
                chunk = client.recv(65536)
            except BlockingIOError:
                continue
            if not chunk:
                return bytes(received)
            received += chunk
        raise AssertionError(f"no end of the answer: {bytes(received)!r}")


@pytest.fixture
def admin() -> Iterator[tuple[AdminServer, Loop, tuple[str, int]]]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    server = AdminServer(listener, endpoints(), max_connections=3, deadline_s=0.5)
    try:
        yield server, Loop(server), listener.getsockname()
    finally:
        server.close()


def connect(address: tuple[str, int]) -> socket.socket:
    return socket.create_connection(address, timeout=TIMEOUT_S)


def test_one_answer_per_connection_then_close(
    admin: tuple[AdminServer, Loop, tuple[str, int]],
) -> None:
    server, loop, address = admin
    with connect(address) as client:
        answer = loop.exchange(
            client, b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\nGET /livez HTTP/1.1\r\n\r\n"
        )
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nConnection: close" in head
    assert b"\r\nContent-Length: 3" in head
    assert body == b"ok\n"  # one answer: the second request is not read
    assert server.connections == 0


def test_head_has_no_body(admin: tuple[AdminServer, Loop, tuple[str, int]]) -> None:
    _, loop, address = admin
    with connect(address) as client:
        answer = loop.exchange(client, b"HEAD /readyz HTTP/1.1\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert answer.endswith(b"\r\n\r\n")
    assert b"Content-Length: 6\r\n" in answer


def test_a_head_over_the_limit_is_431(admin: tuple[AdminServer, Loop, tuple[str, int]]) -> None:
    server, loop, address = admin
    with connect(address) as client:
        answer = loop.exchange(
            client, b"GET /livez HTTP/1.1\r\nX: " + b"a" * server.head_max_bytes + b"\r\n\r\n"
        )
    assert answer.startswith(b"HTTP/1.1 431 ")


def test_a_silent_client_is_closed_at_its_deadline_and_others_are_served_meanwhile(
    admin: tuple[AdminServer, Loop, tuple[str, int]],
) -> None:
    server, loop, address = admin
    silent = connect(address)
    started = time.monotonic()
    with connect(address) as client:
        assert loop.exchange(client, b"GET /livez HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 200")
    assert time.monotonic() - started < server.deadline_s
    with silent:
        assert loop.read(silent) == b""  # closed unanswered at the deadline
        assert time.monotonic() - started >= server.deadline_s


def test_connections_beyond_the_cap_wait_in_the_queue(
    admin: tuple[AdminServer, Loop, tuple[str, int]],
) -> None:
    server, loop, address = admin
    idle = [connect(address) for _ in range(server.max_connections)]
    deadline = time.monotonic() + TIMEOUT_S
    while server.connections < server.max_connections and time.monotonic() < deadline:
        loop.turn()
    assert server.connections == server.max_connections
    readers, _ = server.fds()
    assert server.listener.fileno() not in readers  # the rest stay in the kernel's queue
    started = time.monotonic()
    with connect(address) as client:
        answer = loop.exchange(client, b"GET /readyz HTTP/1.1\r\n\r\n")
    # Answered once the idle ones reached their deadline.
    assert answer.startswith(b"HTTP/1.1 200")
    assert time.monotonic() - started >= server.deadline_s * 0.5
    for sock in idle:
        sock.close()


def test_a_client_that_never_reads_is_dropped_at_its_deadline() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    big = b"x" * (8 << 20)  # far more than the socket buffers hold
    server = AdminServer(
        listener,
        Endpoints(metrics=lambda _: (big, "text/plain"), live=lambda: True, ready=lambda: True),
        deadline_s=0.5,
    )
    loop = Loop(server)
    try:
        with connect(listener.getsockname()) as client:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            client.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
            started = time.monotonic()
            while server.connections or time.monotonic() - started < 0.1:
                loop.turn()
                assert time.monotonic() - started < TIMEOUT_S
            assert time.monotonic() - started >= 0.4
    finally:
        server.close()


# -- the settings ------------------------------------------------------------------------------


def load_admin(**values: object) -> object:
    from hardserve.settings import load

    return load(values, env={})


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"bind": ("127.0.0.1:8000",), "admin_bind": "127.0.0.1:8000"}, "public listener"),
        ({"bind": ("0.0.0.0:8000",), "admin_bind": "127.0.0.1:8000"}, "public listener"),
        ({"bind": ("127.0.0.1:8000",), "admin_bind": "0.0.0.0:8000"}, "public listener"),
        ({"bind": ("[::]:8000",), "admin_bind": "[::1]:8000"}, "public listener"),
        ({"bind": ("unix:/run/a.sock",), "admin_bind": "unix:/run/./a.sock"}, "public listener"),
        ({"admin_bind": "tls://127.0.0.1:9191"}, "no tls://"),
        ({"admin_bind": "fd://3"}, "no tls://"),
        ({"admin_bind": "127.0.0.1"}, "HOST:PORT"),
        ({"admin_bind": "127.0.0.1:99999"}, "is not a port"),
        ({"admin_token": TOKEN}, "needs --admin-bind"),
        ({"admin_bind": "127.0.0.1:9191", "admin_token": "short"}, "at least 16"),
        ({"admin_bind": "127.0.0.1:9191", "admin_token": "a b c d e f g h i j"}, "characters"),
        (
            {"admin_bind": "127.0.0.1:9191", "admin_token": TOKEN, "admin_token_file": "/t"},
            "one only",
        ),
    ],
)
def test_admin_settings_refused(values: dict[str, object], message: str) -> None:
    from hardserve.settings import SettingError

    with pytest.raises(SettingError, match=message):
        load_admin(**values)


@pytest.mark.parametrize(
    "values",
    [
        {"bind": ("127.0.0.1:8000",), "admin_bind": "127.0.0.1:9191"},
        {"bind": ("127.0.0.1:0",), "admin_bind": "127.0.0.1:0"},  # each its own port
        {"bind": ("10.0.0.1:8000",), "admin_bind": "127.0.0.1:8000"},  # other addresses
        {"bind": ("unix:/run/a.sock",), "admin_bind": "unix:/run/admin.sock"},
        {"admin_bind": "[::1]:9191", "admin_token": TOKEN},
    ],
)
def test_admin_settings_accepted(values: dict[str, object]) -> None:
    load_admin(**values)


def test_the_token_is_never_in_an_error() -> None:
    from hardserve.settings import SettingError

    secret = "not a token but secret"
    with pytest.raises(SettingError) as caught:
        load_admin(admin_bind="127.0.0.1:9191", admin_token=secret)
    assert secret not in str(caught.value)


def test_read_admin_token(tmp_path: object) -> None:
    from pathlib import Path

    from hardserve.settings import SettingError, read_admin_token

    assert isinstance(tmp_path, Path)
    good = tmp_path / "token"
    good.write_text(TOKEN + "\n# anything after the first line is ignored\n")
    assert read_admin_token(str(good)) == TOKEN
    bad = tmp_path / "bad"
    bad.write_text("tiny\n")
    with pytest.raises(SettingError, match="at least 16") as caught:
        read_admin_token(str(bad))
    assert "tiny" not in str(caught.value)
    with pytest.raises(SettingError, match="cannot read"):
        read_admin_token(str(tmp_path / "missing"))


def test_check_config_flags_an_open_admin_listener() -> None:
    from hardserve.settings import Config, review

    def ids(config: Config) -> set[str]:
        return {finding.id for finding in review(config)}

    assert "admin-open" in ids(Config(admin_bind="0.0.0.0:9191"))
    assert "admin-open" not in ids(Config(admin_bind="0.0.0.0:9191", admin_token=TOKEN))
    assert "admin-open" not in ids(Config(admin_bind="127.0.0.1:9191"))
    assert "admin-open" not in ids(Config(admin_bind="unix:/run/admin.sock"))


def test_an_accept_error_pauses_the_listener_instead_of_spinning() -> None:
    import errno

    class FailingListener:
        def __init__(self) -> None:
            self.accepts = 0

        def setblocking(self, flag: bool) -> None:
            pass

        def fileno(self) -> int:
            return 99

        def accept(self) -> tuple[socket.socket, object]:
            self.accepts += 1
            raise OSError(errno.EMFILE, "Too many open files")

        def close(self) -> None:
            pass

    listener = FailingListener()
    server = AdminServer(listener, endpoints())  # type: ignore[arg-type]
    server.handle([99], [], 10.0)
    assert listener.accepts == 1
    assert 99 not in server.fds()[0]  # not watched for a second
    server.handle([], [], 10.5)
    assert 99 not in server.fds()[0]
    server.handle([], [], 11.0)
    assert 99 in server.fds()[0]

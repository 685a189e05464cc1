"""SERVER_NAME and SERVER_PORT: the address the client connected to. A listener bound to one
address hands its own to each connection (no getsockname per connection); a wildcard or
transparent listener has each connection asked, since its connections may reach it on any
address."""

from __future__ import annotations

import errno
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from hardserve.settings import Config
from hardserve.worker.main import Worker
from hardserve.worker.server import fixed_local_address
from tests.helpers import DEFAULT_SETTINGS, TIMEOUT_S

_IP_TRANSPARENT = 19


def _ipv6_loopback_missing() -> str | None:
    if not socket.has_ipv6:
        return "Python was built without IPv6 (socket.has_ipv6 is False)"
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError as exc:
        return f"this machine has no IPv6 loopback: binding [::1]:0 failed ({exc})"
    return None


requires_ipv6 = pytest.mark.skipif(
    _ipv6_loopback_missing() is not None, reason=str(_ipv6_loopback_missing())
)


def _listener(family: socket.AddressFamily, host: str) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.bind((host, 0))
    sock.listen(16)
    return sock


def test_a_listener_bound_to_one_ipv4_address_gives_its_own() -> None:
    with _listener(socket.AF_INET, "127.0.0.1") as sock:
        assert fixed_local_address(sock) == ("127.0.0.1", sock.getsockname()[1])


def test_a_wildcard_ipv4_listener_has_each_connection_asked() -> None:
    with _listener(socket.AF_INET, "0.0.0.0") as sock:
        assert fixed_local_address(sock) is None


@requires_ipv6
def test_a_listener_bound_to_one_ipv6_address_gives_its_own() -> None:
    with _listener(socket.AF_INET6, "::1") as sock:
        assert fixed_local_address(sock) == ("::1", sock.getsockname()[1])


@requires_ipv6
def test_a_wildcard_ipv6_listener_has_each_connection_asked() -> None:
    with _listener(socket.AF_INET6, "::") as sock:
        assert fixed_local_address(sock) is None


def test_a_transparent_listener_has_each_connection_asked() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.setsockopt(socket.SOL_IP, _IP_TRANSPARENT, 1)
        except PermissionError:
            pytest.skip("setting IP_TRANSPARENT needs CAP_NET_ADMIN, which this runner lacks")
        except OSError as exc:
            if exc.errno not in (errno.ENOPROTOOPT, errno.EOPNOTSUPP):
                raise
            pytest.skip(f"this kernel has no IP_TRANSPARENT ({exc})")
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        assert fixed_local_address(sock) is None


@contextmanager
def _worker_on(sock: socket.socket, app: Any) -> Iterator[None]:
    sock.setblocking(False)
    host, port = sock.getsockname()[:2]
    config = Config(bind=(f"{host}:{port}",), **DEFAULT_SETTINGS)
    worker = Worker(app, config, [sock])
    thread = threading.Thread(target=worker.run, kwargs={"install_signals": False}, daemon=True)
    thread.start()
    assert worker.ready.wait(TIMEOUT_S), "worker did not start"
    try:
        yield
    finally:
        worker.stop()
        thread.join(TIMEOUT_S)
        assert not thread.is_alive(), "worker did not stop"


def _server_address_seen(host: str, port: int) -> bytes:
    with socket.create_connection((host, port), timeout=TIMEOUT_S) as client:
        client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        received = b""
        while chunk := client.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    return body


def _echo_server_address(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    body = f"{environ['SERVER_NAME']} {environ['SERVER_PORT']}".encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]


def test_a_wildcard_listener_reports_the_address_each_client_reached() -> None:
    with _listener(socket.AF_INET, "0.0.0.0") as sock, _worker_on(sock, _echo_server_address):
        port = sock.getsockname()[1]
        # Two loopback addresses on the same listener: each connection names its own.
        assert _server_address_seen("127.0.0.1", port) == f"127.0.0.1 {port}".encode()
        assert _server_address_seen("127.0.0.2", port) == f"127.0.0.2 {port}".encode()


def test_a_listener_bound_to_one_address_reports_it() -> None:
    with _listener(socket.AF_INET, "127.0.0.1") as sock, _worker_on(sock, _echo_server_address):
        port = sock.getsockname()[1]
        assert _server_address_seen("127.0.0.1", port) == f"127.0.0.1 {port}".encode()

"""socket_unsent_max_bytes: how much of a response the kernel may hold for a client that does
not read (TCP_NOTSENT_LOWAT on the listener, inherited by each connection). Without it the
kernel grows the connection's send buffer up to net.ipv4.tcp_wmem's maximum: 2.8 MB for each
such client on loopback.

The client is a socket with a 4 KiB receive buffer that reads nothing, so its window closes at
once and whatever the server's kernel holds for it is unsent. The kernel's own count of it is
the connection's tx_queue in /proc/net/tcp (bytes written and not yet acknowledged)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hardserve.http.limits import Limits
from hardserve.worker.server import bound_unsent_bytes
from tests.helpers import TIMEOUT_S, serve, wait_for

LIMIT = 65536
# What the kernel may take past the limit: the last segment it queued before the check (64 KiB
# on loopback) and the few KiB the client's window took.
SLACK = 65536 + 16384
RESPONSE_PIECES = 128  # of 64 KiB: 8 MiB, far more than any send buffer here


def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
    start_response("200 OK", [("Content-Length", str(RESPONSE_PIECES * 65536))])
    for _ in range(RESPONSE_PIECES):
        yield b"u" * 65536


def tx_queue(server_port: int, client_port: int) -> int:
    """The server side's send queue of the connection from client_port, in bytes."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = fields[1], fields[2]
        if int(local.split(":")[1], 16) == server_port and int(remote.split(":")[1], 16) == (
            client_port
        ):
            return int(fields[4].split(":")[0], 16)
    return 0


def stalled_reader(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(TIMEOUT_S)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    return sock


def settled(read: Any, quiet_s: float = 0.3) -> int:
    """The value of read() once it has stopped changing for quiet_s (the kernel has stopped
    taking bytes: the transport is full and the response parked)."""
    last, since = read(), time.monotonic()
    deadline = since + TIMEOUT_S
    while time.monotonic() < deadline:
        time.sleep(0.01)
        value = read()
        if value != last:
            last, since = value, time.monotonic()
        elif value and time.monotonic() - since >= quiet_s:
            return int(value)
    raise AssertionError(f"the send queue never settled (last {last})")


def test_the_kernel_holds_at_most_the_limit_for_a_client_that_does_not_read() -> None:
    with (
        serve(app, limits=Limits(socket_unsent_max_bytes=LIMIT)) as server,
        stalled_reader(server.port) as sock,
    ):
        client_port = sock.getsockname()[1]
        held = settled(lambda: tx_queue(server.port, client_port))
    assert 0 < held <= LIMIT + SLACK, held


def test_at_0_the_kernel_keeps_its_own_send_buffer() -> None:
    # The same client with the kernel's setting: its send buffer grows past the limit above,
    # which is what the limit is for (and shows the measurement above can fail).
    with (
        serve(app, limits=Limits(socket_unsent_max_bytes=0)) as server,
        stalled_reader(server.port) as sock,
    ):
        client_port = sock.getsockname()[1]
        wait_for(
            "the send queue to pass the limit",
            lambda: tx_queue(server.port, client_port) > 4 * (LIMIT + SLACK),
        )


def test_a_socket_that_refuses_the_option_is_served_on_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A UDP socket refuses TCP options as a kernel without TCP_NOTSENT_LOWAT would (ENOPROTOOPT).
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as refusing,
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp,
    ):
        refusing.bind(("127.0.0.1", 0))
        tcp.bind(("127.0.0.1", 0))
        bound_unsent_bytes([refusing, tcp], LIMIT)
        assert tcp.getsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT) == LIMIT
    assert "socket_unsent_max_bytes not applied to ('127.0.0.1'" in caplog.text


def test_0_gives_a_listener_the_kernels_setting_back() -> None:
    # After a reload that turns the limit off, the new workers serve the same listening socket.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        bound_unsent_bytes([listener], LIMIT)
        assert listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT) == LIMIT
        bound_unsent_bytes([listener], 0)
        assert listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT) == 0

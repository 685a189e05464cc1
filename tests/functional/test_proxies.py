"""Behind proxies, over real sockets: forwarding fields believed only from trusted proxies
(removed otherwise), the PROXY protocol v1 and v2, and the per-client caps applied to the
client the proxy names."""

from __future__ import annotations

import json
import logging
import socket
import struct
import threading
from typing import Any

import pytest

from hardserve.http.limits import Limits
from tests.helpers import (
    TIMEOUT_S,
    both_loops,  # noqa: F401 - a fixture
    exchange,
    read_responses,
    serve,
    server_closed,
)

pytestmark = pytest.mark.usefixtures("both_loops")

SEEN = ("REMOTE_ADDR", "REMOTE_PORT", "wsgi.url_scheme", "HTTP_HOST", "SERVER_PORT")


def environ_echo(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    shown = {key: environ.get(key) for key in SEEN}
    shown["forwarding"] = sorted(
        key for key in environ if "FORWARDED" in key or key in ("HTTP_X_REAL_IP",)
    )
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps(shown).encode()]


def seen(raw: bytes, **settings: Any) -> dict[str, Any]:
    with serve(environ_echo, **settings) as server:
        responses, _ = exchange(server, raw)
    assert responses[0].status == 200, responses[0].body
    result: dict[str, Any] = json.loads(responses[0].body)
    return result


FORWARDED_REQUEST = (
    b"GET / HTTP/1.1\r\nHost: inner\r\nX-Forwarded-For: 203.0.113.9\r\n"
    b"X-Forwarded-Proto: https\r\nX-Forwarded-Host: example.com\r\nX-Real-IP: 203.0.113.10\r\n\r\n"
)


def test_forwarding_fields_from_an_untrusted_peer_are_removed() -> None:
    environ = seen(FORWARDED_REQUEST)
    assert environ["REMOTE_ADDR"] == "127.0.0.1"
    assert environ["wsgi.url_scheme"] == "http"
    assert environ["HTTP_HOST"] == "inner"
    assert environ["forwarding"] == []  # the app cannot be fooled by reading them itself


def test_forwarding_fields_from_a_trusted_proxy_are_believed() -> None:
    environ = seen(FORWARDED_REQUEST, forwarded_allow_ips="127.0.0.1")
    assert environ["REMOTE_ADDR"] == "203.0.113.9"
    assert environ["wsgi.url_scheme"] == "https"
    assert environ["HTTP_HOST"] == "example.com"
    assert "HTTP_X_FORWARDED_FOR" in environ["forwarding"]  # kept as the proxy sent them


def test_the_walk_stops_at_the_first_untrusted_hop() -> None:
    raw = (
        b"GET / HTTP/1.1\r\nHost: x\r\n"
        b"Forwarded: for=192.0.2.1, for=198.51.100.2, for=10.1.2.3\r\n\r\n"
    )
    # 10.1.2.3 is a trusted inner proxy; 198.51.100.2 is the first untrusted hop: the client.
    # 192.0.2.1 was written by that client and is not believed.
    environ = seen(raw, forwarded_allow_ips="127.0.0.1, 10.0.0.0/8")
    assert environ["REMOTE_ADDR"] == "198.51.100.2"


def test_both_families_from_a_trusted_proxy_are_refused(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="hardserve.security")
    raw = b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 1.2.3.4\r\nForwarded: for=5.6.7.8\r\n\r\n"
    with serve(environ_echo, forwarded_allow_ips="127.0.0.1") as server:
        responses, closed = exchange(server, raw)
    assert responses[0].status == 400
    assert closed
    assert "reason=forwarded_invalid" in caplog.text


class Gate:
    def __init__(self) -> None:
        self.inside = threading.Semaphore(0)
        self.release = threading.Event()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if environ["PATH_INFO"] == "/hold":
            self.inside.release()
            self.release.wait(TIMEOUT_S)
        start_response("200 OK", [])
        return [environ["REMOTE_ADDR"].encode()]


def test_in_flight_cap_counts_the_forwarded_client_not_the_proxy() -> None:
    app = Gate()
    limits = Limits(client_in_flight_max=1, client_connections_max=1)
    settings = {"forwarded_allow_ips": "127.0.0.1", "threads": 4}
    with serve(app, limits=limits, **settings) as server:
        held = []
        try:
            # Two clients behind the same proxy: each may have one request in flight, and the
            # proxy's two connections are not held against its own connection cap of 1.
            for client in (b"198.51.100.1", b"198.51.100.2"):
                sock = server.connect()
                held.append(sock)
                sock.sendall(
                    b"GET /hold HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: %s\r\n\r\n" % client
                )
                assert app.inside.acquire(timeout=TIMEOUT_S)
            again = b"GET /more HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.51.100.1\r\n\r\n"
            assert exchange(server, again)[0][0].status == 503
            other = b"GET /more HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.51.100.3\r\n\r\n"
            assert exchange(server, other)[0][0].body == b"198.51.100.3"
        finally:
            app.release.set()
            for sock in held:
                sock.close()


# -- the PROXY protocol -------------------------------------------------------------------------

PROXY_SETTINGS = {"proxy_protocol": "on", "proxy_allow_ips": "127.0.0.1"}
GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def proxy_v2(source: str, source_port: int, dest: str = "127.0.0.1", dest_port: int = 80) -> bytes:
    addresses = (
        socket.inet_aton(source)
        + socket.inet_aton(dest)
        + struct.pack("!HH", source_port, dest_port)
    )
    return (
        b"\r\n\r\n\x00\r\nQUIT\n"
        + bytes([0x21, 0x11])
        + struct.pack("!H", len(addresses))
        + addresses
    )


@pytest.mark.parametrize(
    "header",
    [
        b"PROXY TCP4 198.51.100.7 127.0.0.1 5555 80\r\n",
        proxy_v2("198.51.100.7", 5555),
    ],
    ids=["v1", "v2"],
)
def test_proxy_header_names_the_client(header: bytes) -> None:
    with serve(environ_echo, **PROXY_SETTINGS) as server, server.connect() as sock:
        # Byte by byte: the header may arrive in any number of pieces.
        for index in range(len(header)):
            sock.sendall(header[index : index + 1])
        sock.sendall(GET + GET)  # two keep-alive requests after the one header
        responses, _ = read_responses(sock, 2)
    for response in responses:
        environ = json.loads(response.body)
        assert (environ["REMOTE_ADDR"], environ["REMOTE_PORT"]) == ("198.51.100.7", "5555")


@pytest.mark.parametrize(
    ("source", "believed"),
    [("198.51.100.7", True), ("192.0.2.1", False)],
    ids=["trusted-source", "untrusted-source"],
)
def test_forwarding_fields_are_judged_by_the_client_the_proxy_header_names(
    source: str, believed: bool
) -> None:
    # The socket's peer (127.0.0.1) may send the PROXY header but is no forwarding proxy;
    # once the header names the client, that client is the one whose fields count.
    header = f"PROXY TCP4 {source} 127.0.0.1 5555 80\r\n".encode()
    settings = {**PROXY_SETTINGS, "forwarded_allow_ips": "198.51.100.7"}
    with serve(environ_echo, **settings) as server, server.connect() as sock:
        sock.sendall(header + FORWARDED_REQUEST + FORWARDED_REQUEST)
        responses, _ = read_responses(sock, 2)
    for response in responses:
        environ = json.loads(response.body)
        if believed:
            assert (environ["REMOTE_ADDR"], environ["wsgi.url_scheme"]) == ("203.0.113.9", "https")
        else:
            assert (environ["REMOTE_ADDR"], environ["REMOTE_PORT"]) == (source, "5555")
            assert environ["forwarding"] == []


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (GET, "proxy_header_missing"),
        (b"PROXY TCP4 198.51.100.7 127.0.0.1 5555 80\n" + GET, "proxy_header_invalid"),
        (b"PROXY TCP4 300.1.1.1 127.0.0.1 5555 80\r\n" + GET, "proxy_header_invalid"),
        (b"PROXY TCP4 198.51.100.7 127.0.0.1 05555 80\r\n" + GET, "proxy_header_invalid"),
    ],
    ids=["missing", "bare-lf", "bad-address", "leading-zero"],
)
def test_a_bad_or_missing_proxy_header_closes_the_connection_unanswered(
    raw: bytes, code: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="hardserve.security")
    with serve(environ_echo, **PROXY_SETTINGS) as server, server.connect() as sock:
        sock.sendall(raw)
        sock.settimeout(TIMEOUT_S)
        try:
            answer = sock.recv(100)
        except ConnectionResetError:
            answer = b""
    assert answer == b""
    assert f"reason={code}" in caplog.text


def test_a_proxy_header_from_a_peer_outside_the_allow_list_is_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="hardserve.security")
    settings = {"proxy_protocol": "on", "proxy_allow_ips": "10.0.0.0/8"}
    with serve(environ_echo, **settings) as server, server.connect() as sock:
        sock.sendall(b"PROXY TCP4 198.51.100.7 127.0.0.1 5555 80\r\n" + GET)
        assert server_closed(sock, wait_s=TIMEOUT_S)
    assert "reason=proxy_peer_untrusted" in caplog.text


def test_a_proxy_header_that_never_ends_is_cut_at_the_head_deadline(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="hardserve.security")
    limits = Limits(head_timeout_s=0.3)
    with serve(environ_echo, limits=limits, **PROXY_SETTINGS) as server, server.connect() as sock:
        sock.sendall(b"PROXY TCP4 198.51.")
        assert server_closed(sock, wait_s=TIMEOUT_S)
    assert "reason=proxy_header_invalid" in caplog.text

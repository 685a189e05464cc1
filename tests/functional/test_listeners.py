"""Listeners: the bind spec grammar, the sockets master/listeners.py makes (in process), and
what a real `python -m hardserve --bind ...` serves on them (TCP, IPv6, unix, several at once).
"""

from __future__ import annotations

import http.client
import os
import re
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hardserve.master.listeners import BindError, bind, bind_all, parse_bind
from tests.helpers import ROOT, TIMEOUT_S, ServerProcess, read_responses, serve_process

HELLO = "tests.apps_cli.hello:app"
HELLO_BODY = b"hello from apps_cli\n"


@pytest.fixture(autouse=True)
def _clean_environment(clean_server_env: None) -> None:
    """No settings from the runner's environment (tests/conftest.py)."""


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory for unix sockets. Not tmp_path: its path under xdist can come near the
    108-byte limit of a socket address."""
    with tempfile.TemporaryDirectory(prefix="hs-", dir="/tmp") as name:
        yield Path(name)


def _ipv6_loopback_missing() -> str | None:
    """Why IPv6 cannot be tested here, or None when [::1] can be bound."""
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


def get_tcp(host: str, port: int) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(host, port, timeout=TIMEOUT_S)
    try:
        connection.request("GET", "/")
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def get_unix(path: Path) -> tuple[int, bytes]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(TIMEOUT_S)
        sock.connect(str(path))
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        responses, _ = read_responses(sock, 1)
    return responses[0].status, responses[0].body


def listening_addresses(server: ServerProcess, count: int) -> list[str]:
    """The addresses of the first `count` "listening at" lines. serve_process returns at the
    first one; the others are written just after it, so wait for them with a deadline."""
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        found = [
            match.group(1)
            for line in list(server.stderr_lines)
            if (match := re.search(r"listening at (\S+)", line))
        ]
        if len(found) >= count:
            return found
        assert time.monotonic() < deadline, "listening lines:\n" + "".join(server.stderr_lines)
        time.sleep(0.01)


def mode_of(path: Path) -> int:
    status = os.stat(path)
    assert stat.S_ISSOCK(status.st_mode), f"{path} is not a socket"
    return stat.S_IMODE(status.st_mode)


# -- the bind grammar ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "parsed"),
    [
        ("127.0.0.1:8080", ("inet", ("127.0.0.1", 8080))),
        ("0.0.0.0:0", ("inet", ("0.0.0.0", 0))),
        ("localhost:80", ("inet", ("localhost", 80))),
        (":9000", ("inet", ("0.0.0.0", 9000))),  # an empty host means every interface
        ("example.test", ("inet", ("example.test", 8000))),  # no port: the default 8000
        ("[::1]:8080", ("inet6", ("::1", 8080))),
        ("[::]:443", ("inet6", ("::", 443))),
        ("unix:/run/app.sock", ("unix", "/run/app.sock")),
        ("unix:relative.sock", ("unix", "relative.sock")),
        ("fd://3", ("fd", 3)),
    ],
)
def test_parse_bind(spec: str, parsed: tuple[str, object]) -> None:
    assert parse_bind(spec) == parsed


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("unix:", "needs a path"),
        ("fd://", "needs a descriptor number"),
        ("fd://-1", "needs a descriptor number"),
        ("fd://3x", "needs a descriptor number"),
        ("[::1]", "is not [IPv6]:PORT"),
        ("[::1]8080", "is not [IPv6]:PORT"),
        ("[::1:8080", "is not [IPv6]:PORT"),
        ("::1:8080", "write IPv6 addresses as [ADDRESS]:PORT"),
        ("127.0.0.1:65536", "is not a port"),
        ("127.0.0.1:-1", "is not a port"),
        ("127.0.0.1:http", "is not a port"),
        ("127.0.0.1:", "is not a port"),
        ("[::1]:x", "is not a port"),
        # str.isdigit accepts these: int() read the Arabic-Indic digits as 8080 and failed on
        # the superscript with a traceback.
        ("127.0.0.1:\u0668\u0660\u0668\u0660", "is not a port"),
        ("127.0.0.1:\u00b2", "is not a port"),
        ("127.0.0.1:\uff18\uff10", "is not a port"),  # fullwidth 80
        ("[::1]:\u0668\u0660", "is not a port"),
        ("fd://\u0663", "needs a descriptor number"),
        ("fd://\u00b2", "needs a descriptor number"),
        ("fd://2147483648", "needs a descriptor number"),  # not a C int: OverflowError before
    ],
)
def test_parse_bind_refuses(spec: str, message: str) -> None:
    with pytest.raises(BindError, match=re.escape(message)):
        parse_bind(spec)


# -- sockets made in process --------------------------------------------------------------------


def test_tcp_socket_listens_and_does_not_block() -> None:
    with bind("127.0.0.1:0", backlog=16) as sock:
        assert sock.family == socket.AF_INET
        assert sock.getblocking() is False
        # Listening: a client connects without the server accepting yet.
        with socket.create_connection(sock.getsockname(), timeout=TIMEOUT_S):
            pass


@requires_ipv6
def test_ipv6_socket_is_ipv6_only() -> None:
    # V6ONLY: [::]:PORT must not also take the IPv4 port, so the two can be bound separately.
    with bind("[::1]:0") as sock:
        assert sock.family == socket.AF_INET6
        assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
        with socket.create_connection(sock.getsockname()[:2], timeout=TIMEOUT_S):
            pass


def test_fd_spec_adopts_an_inherited_listening_socket() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as original:
        original.bind(("127.0.0.1", 0))
        original.listen(4)
        # A duplicate, so that the adopted socket owns its descriptor like an inherited one.
        with bind(f"fd://{os.dup(original.fileno())}") as adopted:
            assert adopted.getsockname() == original.getsockname()
            assert adopted.getblocking() is False


@pytest.mark.parametrize("mode", [None, 0o660, 0o666, 0o700])
def test_unix_socket_mode(mode: int | None, short_dir: Path) -> None:
    path = short_dir / "s.sock"
    umask_before = os.umask(0o022)
    os.umask(umask_before)
    sock = bind(f"unix:{path}") if mode is None else bind(f"unix:{path}", unix_mode=mode)
    with sock:
        assert mode_of(path) == (0o600 if mode is None else mode)
        # The socket is created under umask 0o777; the process's own umask must come back.
        assert os.umask(umask_before) == umask_before


def test_unix_socket_left_by_a_dead_server_is_replaced(short_dir: Path) -> None:
    path = short_dir / "s.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(path))
    assert path.exists()  # closing a unix socket leaves its file behind
    with bind(f"unix:{path}") as sock, socket.socket(socket.AF_UNIX) as client:
        client.settimeout(TIMEOUT_S)
        client.connect(str(path))
        assert sock.getsockname() == str(path)


def test_unix_bind_does_not_take_over_a_live_servers_socket(short_dir: Path) -> None:
    path = short_dir / "s.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as live:
        live.bind(str(path))
        live.listen(8)
        live.settimeout(TIMEOUT_S)
        with pytest.raises(BindError) as caught:
            bind(f"unix:{path}")
        assert str(caught.value) == (
            f"cannot bind unix:{path}: already in use by a running server"
        )
        # The probe's connection reached the live server, and the file is still its own.
        probe, _ = live.accept()
        probe.close()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(TIMEOUT_S)
            client.connect(str(path))
            accepted, _ = live.accept()
            accepted.close()


def test_unix_bind_does_not_take_over_a_busy_servers_socket(short_dir: Path) -> None:
    # A server with a full accept queue answers a connect with EAGAIN, not ECONNREFUSED: it is
    # alive all the same.
    path = short_dir / "s.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as live:
        live.bind(str(path))
        live.listen(0)
        waiting: list[socket.socket] = []
        try:
            while True:
                assert len(waiting) < 100, "the accept queue never filled"
                client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                client.setblocking(False)
                try:
                    client.connect(str(path))
                except BlockingIOError:
                    client.close()
                    break
                waiting.append(client)
            with pytest.raises(BindError, match="already in use by a running server"):
                bind(f"unix:{path}")
            assert path.exists()
        finally:
            for client in waiting:
                client.close()


def test_unix_socket_of_a_closed_server_is_replaced_after_the_probe(short_dir: Path) -> None:
    # The counterpart of the two above: once the server is gone the probe is refused and the
    # file is taken over.
    path = short_dir / "s.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as gone:
        gone.bind(str(path))
        gone.listen(8)
    with bind(f"unix:{path}") as sock, socket.socket(socket.AF_UNIX) as client:
        client.settimeout(TIMEOUT_S)
        client.connect(str(path))
        assert sock.getsockname() == str(path)


def test_unix_bind_never_removes_a_regular_file(short_dir: Path) -> None:
    path = short_dir / "important.txt"
    path.write_text("keep me")
    with pytest.raises(BindError, match=re.escape(f"cannot bind unix:{path}")):
        bind(f"unix:{path}")
    assert path.read_text() == "keep me"


def test_unix_bind_does_not_follow_or_remove_a_symlink(short_dir: Path) -> None:
    target = short_dir / "target.txt"
    target.write_text("keep me")
    link = short_dir / "s.sock"
    link.symlink_to(target)
    with pytest.raises(BindError):
        bind(f"unix:{link}")
    assert link.is_symlink()
    assert target.read_text() == "keep me"


def test_bind_all_closes_what_it_bound_when_a_later_spec_fails(short_dir: Path) -> None:
    path = short_dir / "first.sock"
    with pytest.raises(BindError):
        bind_all(
            (f"unix:{path}", f"unix:{short_dir}/missing/second.sock"), unix_mode=0o600, backlog=8
        )
    # The first socket's file is still there but nothing listens on it any more.
    with socket.socket(socket.AF_UNIX) as client, pytest.raises(ConnectionRefusedError):
        client.settimeout(TIMEOUT_S)
        client.connect(str(path))


def test_bind_error_for_a_port_in_use_names_the_spec() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        spec = f"127.0.0.1:{holder.getsockname()[1]}"
        with pytest.raises(BindError, match=re.escape(f"cannot bind {spec}: ")):
            bind(spec)


# -- a real server on each kind of listener ------------------------------------------------------


@requires_ipv6
def test_serves_on_ipv6_loopback() -> None:
    with serve_process(HELLO, "--bind", "[::1]:0", cwd=str(ROOT)) as server:
        assert server.host == "::1"
        assert get_tcp("::1", server.port) == (200, HELLO_BODY)


def test_serves_on_unix_socket_with_mode_0600_by_default(short_dir: Path) -> None:
    # serve_process waits for an http:// listening line, hence the TCP listener beside it. All
    # listeners are bound before any is announced, so the unix one is ready by then.
    path = short_dir / "s.sock"
    with serve_process(
        HELLO, "--bind", f"unix:{path}", "--bind", "127.0.0.1:0", cwd=str(ROOT)
    ) as server:
        assert mode_of(path) == 0o600
        assert get_unix(path) == (200, HELLO_BODY)
        assert f"listening at unix:{path}" in "".join(server.stderr_lines)


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_unix_mode_setting(how: str, short_dir: Path) -> None:
    path = short_dir / "s.sock"
    args = ("--unix-mode", "0660") if how == "flag" else ()
    env = {"HARDSERVE_UNIX_MODE": "0660"} if how == "environment" else {}
    with serve_process(
        HELLO, "--bind", f"unix:{path}", "--bind", "127.0.0.1:0", *args, env=env, cwd=str(ROOT)
    ):
        assert mode_of(path) == 0o660
        assert get_unix(path) == (200, HELLO_BODY)


def test_two_tcp_binds_both_serve() -> None:
    with serve_process(
        HELLO, "--bind", "127.0.0.1:0", "--bind", "127.0.0.1:0", cwd=str(ROOT)
    ) as server:
        addresses = listening_addresses(server, 2)
        ports = [int(address.rpartition(":")[2]) for address in addresses]
        assert len(set(ports)) == 2, addresses
        for port in ports:
            assert get_tcp("127.0.0.1", port) == (200, HELLO_BODY)


@requires_ipv6
def test_ipv4_ipv6_and_unix_binds_all_serve(short_dir: Path) -> None:
    path = short_dir / "s.sock"
    with serve_process(
        HELLO,
        "--bind", "127.0.0.1:0",
        "--bind", "[::1]:0",
        "--bind", f"unix:{path}",
        cwd=str(ROOT),
    ) as server:
        v4, v6, unix = listening_addresses(server, 3)
        assert v4.startswith("http://127.0.0.1:")
        assert v6.startswith("http://[::1]:")
        assert unix == f"unix:{path}"
        assert get_tcp("127.0.0.1", int(v4.rpartition(":")[2])) == (200, HELLO_BODY)
        assert get_tcp("::1", int(v6.rpartition(":")[2])) == (200, HELLO_BODY)
        assert get_unix(path) == (200, HELLO_BODY)


def test_second_server_on_a_live_unix_socket_exits_3_and_the_first_keeps_serving(
    short_dir: Path,
) -> None:
    path = short_dir / "s.sock"
    with serve_process(
        HELLO, "--bind", f"unix:{path}", "--bind", "127.0.0.1:0", cwd=str(ROOT)
    ) as first:
        second = subprocess.run(
            [sys.executable, "-m", "hardserve", HELLO, "--bind", f"unix:{path}"],
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            cwd=ROOT,
            check=False,
        )
        assert second.returncode == 3, second.stderr
        assert second.stderr == (
            f"hardserve: cannot bind unix:{path}: already in use by a running server\n"
        )
        assert get_unix(path) == (200, HELLO_BODY)
        assert get_tcp(first.host, first.port) == (200, HELLO_BODY)


def test_second_server_on_a_taken_port_exits_3_and_the_first_keeps_serving() -> None:
    with serve_process(HELLO, cwd=str(ROOT)) as first:
        second = subprocess.run(
            [sys.executable, "-m", "hardserve", HELLO, "--bind", f"127.0.0.1:{first.port}"],
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            cwd=ROOT,
            check=False,
        )
        assert second.returncode == 3, second.stderr
        assert get_tcp(first.host, first.port) == (200, HELLO_BODY)

"""master/systemd.py: sd_notify datagrams read from real AF_UNIX sockets (a path and an abstract
name), the watchdog variables, and socket activation on real listening sockets moved onto
descriptors 3, 4, ... in a child process (pytest's own descriptors are never touched)."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hardserve.master.systemd import Notifier, activated_sockets, unset_env
from tests.helpers import ROOT, TIMEOUT_S

# -- notifications ------------------------------------------------------------------------------


@pytest.fixture
def receiver() -> Iterator[tuple[str, socket.socket]]:
    """A datagram socket bound to a file, as systemd's NOTIFY_SOCKET is; /tmp keeps the path
    short of the 108-byte limit of a socket address."""
    with tempfile.TemporaryDirectory(prefix="hs-", dir="/tmp") as name:
        path = str(Path(name) / "notify")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(path)
            sock.settimeout(TIMEOUT_S)
            yield path, sock


def _nothing_waiting(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        sock.recv(4096)
    except BlockingIOError:
        return True
    finally:
        sock.settimeout(TIMEOUT_S)
    return False


def test_every_message_is_one_datagram_of_exact_bytes(
    receiver: tuple[str, socket.socket],
) -> None:
    path, sock = receiver
    notifier = Notifier.from_env({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    cases: list[tuple[Any, bytes]] = [
        (lambda: notifier.ready(), b"READY=1"),
        (
            lambda: notifier.ready("serving with 4 workers"),
            b"READY=1\nSTATUS=serving with 4 workers",
        ),
        (lambda: notifier.stopping(), b"STOPPING=1"),
        (lambda: notifier.stopping("draining"), b"STOPPING=1\nSTATUS=draining"),
        (lambda: notifier.status("2 of 4 workers"), b"STATUS=2 of 4 workers"),
        (lambda: notifier.watchdog(), b"WATCHDOG=1"),
        (lambda: notifier.main_pid(4242), b"MAINPID=4242"),
        (lambda: notifier.send("A=1", "B=2"), b"A=1\nB=2"),
        (lambda: notifier.status("caf\u00e9"), "STATUS=caf\u00e9".encode()),
    ]
    for call, expected in cases:
        assert call() is True
        assert sock.recv(4096) == expected
    assert _nothing_waiting(sock)


def test_a_newline_in_a_status_cannot_forge_an_assignment(
    receiver: tuple[str, socket.socket],
) -> None:
    path, sock = receiver
    notifier = Notifier(path)
    notifier.status("one\nREADY=1\r\ntwo\rthree")
    assert sock.recv(4096) == b"STATUS=one READY=1 two three"
    notifier.ready("a\nb")
    assert sock.recv(4096) == b"READY=1\nSTATUS=a b"


def _monotonic_us() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def test_reloading_carries_the_monotonic_clock(receiver: tuple[str, socket.socket]) -> None:
    path, sock = receiver
    notifier = Notifier(path)
    before = _monotonic_us()
    assert notifier.reloading()
    plain = sock.recv(4096)
    assert notifier.reloading("replacing workers")
    with_status = sock.recv(4096)
    # A bare RELOADING=1 given to send() gets the timestamp too (Type=notify-reload).
    assert notifier.send("RELOADING=1")
    via_send = sock.recv(4096)
    after = _monotonic_us()
    stamps = []
    for payload, tail in (
        (plain, b""),
        (with_status, b"\nSTATUS=replacing workers"),
        (via_send, b""),
    ):
        match = re.fullmatch(rb"RELOADING=1\nMONOTONIC_USEC=(\d+)" + re.escape(tail), payload)
        assert match, payload
        stamps.append(int(match.group(1)))
    assert before <= stamps[0] <= stamps[1] <= stamps[2] <= after
    # One given by the caller is kept as it is.
    notifier.send("RELOADING=1", "MONOTONIC_USEC=5")
    assert sock.recv(4096) == b"RELOADING=1\nMONOTONIC_USEC=5"


def test_an_abstract_socket_name() -> None:
    name = f"hardserve-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(TIMEOUT_S)
        notifier = Notifier.from_env({"NOTIFY_SOCKET": "@" + name})
        assert notifier.enabled
        assert notifier.ready()
        assert sock.recv(4096) == b"READY=1"


def test_a_dead_socket_is_logged_once_and_never_raises(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with tempfile.TemporaryDirectory(prefix="hs-", dir="/tmp") as name:
        notifier = Notifier(str(Path(name) / "gone"))
        assert notifier.enabled
        with caplog.at_level(logging.DEBUG, logger="hardserve.error"):
            assert notifier.ready() is False
            assert notifier.watchdog() is False
            assert notifier.stopping() is False
    lines = [r for r in caplog.records if "cannot notify systemd" in r.getMessage()]
    assert len(lines) == 1
    assert lines[0].levelno == logging.DEBUG


def test_a_socket_that_is_not_a_datagram_socket_never_raises() -> None:
    with tempfile.TemporaryDirectory(prefix="hs-", dir="/tmp") as name:
        path = str(Path(name) / "stream")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stream:
            stream.bind(path)
            stream.listen(1)
            assert Notifier(path).ready() is False


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"NOTIFY_SOCKET": ""},
        {"NOTIFY_SOCKET": "relative/path"},  # neither a path nor an abstract name
        {"WATCHDOG_USEC": "1000000"},  # a watchdog but nowhere to ping it
    ],
    ids=["unset", "empty", "relative", "watchdog-only"],
)
def test_without_a_socket_the_notifier_does_nothing(env: dict[str, str]) -> None:
    notifier = Notifier.from_env(env)
    assert not notifier.enabled
    assert notifier.watchdog_interval_s is None
    for call in (
        notifier.ready,
        notifier.reloading,
        notifier.stopping,
        notifier.watchdog,
        lambda: notifier.status("x"),
        lambda: notifier.main_pid(1),
        lambda: notifier.send("X=1"),
    ):
        assert call() is False


def test_from_env_reads_the_process_environment(
    monkeypatch: pytest.MonkeyPatch, receiver: tuple[str, socket.socket]
) -> None:
    path, sock = receiver
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "3000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    notifier = Notifier.from_env()
    assert notifier.watchdog_interval_s == 1.5
    notifier.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"


@pytest.mark.parametrize(
    ("usec", "pid", "interval"),
    [
        ("4000000", None, 2.0),  # half of the timeout
        ("4000000", "self", 2.0),
        (" 500000 ", "self", 0.25),
        ("4000000", "other", None),  # meant for another process (an exec'ed parent's)
        ("4000000", "abc", None),
        ("4000000", "0", None),
        ("0", None, None),
        ("-5", None, None),
        ("abc", None, None),
        ("4e6", None, None),
        ("\u0664000000", None, None),  # Arabic-Indic 4: int() would read it
        ("", None, None),
    ],
)
def test_watchdog_variables(usec: str, pid: str | None, interval: float | None) -> None:
    env = {"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": usec}
    if pid is not None:
        env["WATCHDOG_PID"] = {"self": str(os.getpid()), "other": str(os.getpid() + 1)}.get(
            pid, pid
        )
    assert Notifier.from_env(env).watchdog_interval_s == interval


def test_unset_env_removes_only_what_systemd_set_for_the_main_process() -> None:
    env = {
        "NOTIFY_SOCKET": "/run/systemd/notify",
        "WATCHDOG_USEC": "1",
        "WATCHDOG_PID": "1",
        "LISTEN_PID": "1",
        "LISTEN_FDS": "1",
        "LISTEN_FDNAMES": "http",
        "PATH": "/usr/bin",
        "HARDSERVE_WORKERS": "2",
    }
    unset_env(env)
    assert env == {"PATH": "/usr/bin", "HARDSERVE_WORKERS": "2"}
    unset_env(env)  # nothing left to remove: no error
    assert env == {"PATH": "/usr/bin", "HARDSERVE_WORKERS": "2"}


def test_unset_env_defaults_to_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "/x")
    monkeypatch.setenv("LISTEN_FDS", "1")
    unset_env()
    assert "NOTIFY_SOCKET" not in os.environ and "LISTEN_FDS" not in os.environ


# -- socket activation --------------------------------------------------------------------------

# Runs in a child: moves the descriptors it was given onto 3, 4, ... (as systemd passes them),
# sets LISTEN_PID to its own pid (or what the test asks), calls activated_sockets and prints
# what it got as JSON.
_CHILD = r"""
import fcntl, json, os, socket, sys
spec = json.loads(sys.argv[1])
given = spec["fds"]
# Out of the way first, so that moving one onto 3 cannot overwrite another still to move.
high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in given]
for fd in given:
    os.close(fd)
for fd in range(3, 3 + spec["close_through"]):
    try:
        os.close(fd)
    except OSError:
        pass
for target, fd in enumerate(high, start=3):
    os.dup2(fd, target)
    os.close(fd)
env = dict(spec["env"])
if env.get("LISTEN_PID") == "self":
    env["LISTEN_PID"] = str(os.getpid())
from hardserve.master.listeners import BindError
from hardserve.master.systemd import activated_sockets
try:
    found = activated_sockets(env, unset=spec["unset"])
except BindError as exc:
    print(json.dumps({"error": str(exc)}))
    sys.exit(0)
print(json.dumps({
    "sockets": [
        {
            "name": name,
            "fd": sock.fileno(),
            "family": int(sock.family),
            "port": sock.getsockname()[1] if sock.family != socket.AF_UNIX else None,
            "blocking": sock.getblocking(),
            "inheritable": sock.get_inheritable(),
        }
        for name, sock in found
    ],
    "env_left": sorted(k for k in env if k.startswith("LISTEN_")),
}))
"""


def run_activated(
    files: list[Any],
    env: dict[str, str],
    *,
    unset: bool = True,
    close_through: int = 4,
) -> dict[str, Any]:
    """Run activated_sockets in a child that holds `files` (sockets or descriptors) on
    descriptors 3, 4, ...; `close_through` more descriptors from 3 are closed first."""
    fds = [f if isinstance(f, int) else f.fileno() for f in files]
    spec = {"fds": fds, "env": env, "unset": unset, "close_through": close_through + len(fds)}
    completed = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(spec)],
        pass_fds=fds,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    result: dict[str, Any] = json.loads(completed.stdout)
    return result


def _listening(family: int = socket.AF_INET) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
    sock.listen(8)
    return sock


def test_activated_sockets_are_named_listening_nonblocking_and_not_inherited() -> None:
    with _listening() as first, _listening() as second:
        result = run_activated(
            [first, second],
            {"LISTEN_PID": "self", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "http:admin"},
        )
        assert result["sockets"] == [
            {
                "name": "http",
                "fd": 3,
                "family": int(socket.AF_INET),
                "port": first.getsockname()[1],
                "blocking": False,
                "inheritable": False,
            },
            {
                "name": "admin",
                "fd": 4,
                "family": int(socket.AF_INET),
                "port": second.getsockname()[1],
                "blocking": False,
                "inheritable": False,
            },
        ]
        assert result["env_left"] == []  # removed: no child takes them as its own


def test_unnamed_descriptors_are_unknown_and_unset_false_keeps_the_variables() -> None:
    with _listening() as only:
        result = run_activated([only], {"LISTEN_PID": "self", "LISTEN_FDS": "1"}, unset=False)
    assert [(s["name"], s["fd"]) for s in result["sockets"]] == [("unknown", 3)]
    assert result["env_left"] == ["LISTEN_FDS", "LISTEN_PID"]


def test_a_unix_listener_is_taken() -> None:
    with (
        tempfile.TemporaryDirectory(prefix="hs-", dir="/tmp") as name,
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unix,
    ):
        unix.bind(str(Path(name) / "s"))
        unix.listen(1)
        result = run_activated(
            [unix], {"LISTEN_PID": "self", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "local"}
        )
    assert [(s["name"], s["family"]) for s in result["sockets"]] == [("local", int(socket.AF_UNIX))]


@pytest.mark.parametrize(
    "env",
    [
        {"LISTEN_PID": "other", "LISTEN_FDS": "1"},  # inherited from a parent: not ours
        {"LISTEN_FDS": "1"},
        {"LISTEN_PID": "self"},
        {"LISTEN_PID": "self", "LISTEN_FDS": "0"},
        {},
    ],
    ids=["other-pid", "no-pid", "no-count", "zero", "none"],
)
def test_no_activation_for_this_process(env: dict[str, str]) -> None:
    env = {k: (str(os.getpid()) if v == "other" else v) for k, v in env.items()}
    with _listening() as sock:
        result = run_activated([sock], env)
    assert result["sockets"] == []
    assert result["env_left"] == []


def _error(files: list[Any], env: dict[str, str], **kwargs: Any) -> str:
    result = run_activated(files, env, **kwargs)
    assert "error" in result, result
    message: str = result["error"]
    return message


def test_a_bound_socket_that_does_not_listen_is_refused() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as quiet:
        quiet.bind(("127.0.0.1", 0))
        message = _error(
            [quiet], {"LISTEN_PID": "self", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "http"}
        )
    assert message.startswith("socket activation: fd 3 ('http') is not listening")
    assert "Accept=no" in message


def test_a_connected_socket_is_refused() -> None:
    # What a socket unit with Accept=yes passes: one connection, not a listener.
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with left, right:
        message = _error([left], {"LISTEN_PID": "self", "LISTEN_FDS": "1"})
    assert "fd 3 ('unknown') is not listening" in message


def test_a_datagram_socket_is_refused() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as datagram:
        datagram.bind(("127.0.0.1", 0))
        message = _error([datagram], {"LISTEN_PID": "self", "LISTEN_FDS": "1"})
    assert "fd 3 ('unknown') is not a stream socket" in message


def test_a_pipe_is_refused() -> None:
    read, write = os.pipe()
    try:
        message = _error([read], {"LISTEN_PID": "self", "LISTEN_FDS": "1"})
    finally:
        os.close(read)
        os.close(write)
    assert "fd 3 ('unknown') is not a socket" in message


def test_more_descriptors_counted_than_passed() -> None:
    with _listening() as sock:
        message = _error([sock], {"LISTEN_PID": "self", "LISTEN_FDS": "2"})
    assert "fd 4 ('unknown') is not a socket" in message


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"LISTEN_PID": "self", "LISTEN_FDS": "x"}, "LISTEN_FDS='x' is not a count"),
        ({"LISTEN_PID": "self", "LISTEN_FDS": "-1"}, "LISTEN_FDS='-1' is not a count"),
        ({"LISTEN_PID": "abc", "LISTEN_FDS": "1"}, "LISTEN_PID='abc' is not a process id"),
        (
            {"LISTEN_PID": "self", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "a:b"},
            "LISTEN_FDNAMES='a:b' names 2 descriptors, LISTEN_FDS=1",
        ),
    ],
)
def test_malformed_variables_are_errors(env: dict[str, str], expected: str) -> None:
    with _listening() as sock:
        assert expected in _error([sock], env)


def test_in_this_process_without_activation() -> None:
    # pytest's process was not activated: nothing is taken, no descriptor is touched.
    assert activated_sockets({}, unset=False) == []
    assert activated_sockets({"LISTEN_PID": "1", "LISTEN_FDS": "1"}, unset=False) == []

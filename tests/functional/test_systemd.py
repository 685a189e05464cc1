"""deploy/systemd and the command under systemd: the units pass `systemd-analyze verify` and its
offline security review, the example environment file holds real settings, a real
`python -m hardserve` serves on sockets passed by `systemd-socket-activate`, and its
notifications (READY, RELOADING, STOPPING, WATCHDOG) arrive on a NOTIFY_SOCKET datagram socket
the test owns, sent by the master alone.

systemd-analyze and systemd-socket-activate need no running systemd (scripts/system-deps.sh
installs them from Debian's `systemd` package).
"""

from __future__ import annotations

import configparser
import contextlib
import http.client
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hardserve.settings import ALL_SETTINGS, load
from tests.conftest import ALLOW_ROOT
from tests.helpers import ROOT, TIMEOUT_S, ServerProcess, serve_process, stop_process

UNITS = ROOT / "deploy" / "systemd"
SERVICE = UNITS / "hardserve.service"
SOCKET = UNITS / "hardserve.socket"
ENV_FILE = UNITS / "hardserve.env"
HELLO = "tests.apps_cli.hello:app"
HELLO_BODY = b"hello from apps_cli\n"
HARDSERVE = Path(sys.executable).with_name("hardserve")  # the venv's console script


def _missing(*tools: str) -> str | None:
    absent = [tool for tool in tools if shutil.which(tool) is None]
    if absent:
        return f"{', '.join(absent)} not installed: run scripts/system-deps.sh"
    return None


needs_analyze = pytest.mark.skipif(
    _missing("systemd-analyze") is not None, reason=str(_missing("systemd-analyze"))
)
needs_activate = pytest.mark.skipif(
    _missing("systemd-socket-activate") is not None,
    reason=str(_missing("systemd-socket-activate")),
)


@pytest.fixture(autouse=True)
def _clean_environment(clean_server_env: None) -> None:
    """No settings from the runner's environment (tests/conftest.py)."""


def _activator_env() -> list[str]:
    """-E options: systemd-socket-activate passes on only PATH, HOME, TERM and these."""
    return [
        option
        for name, value in {"PYTHONPATH": str(ROOT), **ALLOW_ROOT}.items()
        for option in ("-E", f"{name}={value}")
    ]


# -- the unit files -----------------------------------------------------------------------------


def _units_in(directory: Path, *, extra_service_lines: str = "") -> tuple[Path, Path]:
    """The units copied into `directory`, ExecStart pointing at this venv's hardserve (verify
    checks that the command exists and is executable)."""
    assert HARDSERVE.exists(), f"{HARDSERVE} missing: is hardserve installed in the venv?"
    text = SERVICE.read_text(encoding="utf-8")
    assert "ExecStart=/opt/hardserve/venv/bin/hardserve " in text
    text = text.replace("/opt/hardserve/venv/bin/hardserve", str(HARDSERVE))
    text = text.replace("[Install]", extra_service_lines + "\n[Install]")
    service = directory / "hardserve.service"
    service.write_text(text, encoding="utf-8")
    socket_unit = directory / "hardserve.socket"
    shutil.copyfile(SOCKET, socket_unit)
    return service, socket_unit


def _analyze(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        check=False,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": ""},
    )


@needs_analyze
def test_the_units_verify_without_a_warning(tmp_path: Path) -> None:
    service, socket_unit = _units_in(tmp_path)
    result = _analyze("verify", str(service), str(socket_unit), cwd=tmp_path)
    # verify exits 0 on unknown keys and unparsable values, and only says so on stderr.
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr


@needs_analyze
def test_verify_as_run_here_does_see_a_broken_unit(tmp_path: Path) -> None:
    # The check above is only worth something if these mistakes make it fail.
    service, socket_unit = _units_in(
        tmp_path, extra_service_lines="ProtectSytem=strict\nRestart=sometimes\n"
    )
    result = _analyze("verify", str(service), str(socket_unit), cwd=tmp_path)
    assert "Unknown key" in result.stderr and "ProtectSytem" in result.stderr
    assert "sometimes" in result.stderr


@needs_analyze
def test_the_service_sandbox_scores_ok_in_the_offline_security_review(tmp_path: Path) -> None:
    service, _ = _units_in(tmp_path)
    result = _analyze("security", "--offline=yes", "--no-pager", str(service), cwd=tmp_path)
    match = re.search(r"Overall exposure level for hardserve\.service: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    # 0 is a fully locked service, 10 an unconfined one; below 2 systemd rates it "OK".
    assert float(match.group(1)) < 2.0, result.stdout


def _ini(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys keep their case
    parser.read_string(path.read_text(encoding="utf-8"))
    return parser


def test_the_service_sets_what_the_design_requires() -> None:
    service = _ini(SERVICE)["Service"]
    required = {
        "Type": "notify",
        "NotifyAccess": "main",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "KillMode": "mixed",
        "Restart": "on-failure",
        "DynamicUser": "yes",
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "RestrictNamespaces": "yes",
        "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes",
        "SystemCallArchitectures": "native",
        "EnvironmentFile": "/etc/hardserve/hardserve.env",
    }
    assert {key: service.get(key) for key in required} == required
    assert service["ExecStart"].endswith("/hardserve ${WSGI_APP}")
    assert set(service["RestartPreventExitStatus"].split()) == {"2", "3", "4"}
    socket_unit = _ini(SOCKET)["Socket"]
    assert socket_unit["FileDescriptorName"] == "http"
    assert socket_unit["Accept"] == "no"
    assert socket_unit["ListenStream"] in ("80", "8000")


def _env_file() -> dict[str, str]:
    """Every NAME=value of the example file, commented-out examples included."""
    values = {}
    for line in ENV_FILE.read_text(encoding="utf-8").splitlines():
        match = re.fullmatch(r"#?([A-Z_]+)=(.*)", line)
        if match:
            values[match.group(1)] = match.group(2)
    return values


def test_the_environment_file_holds_real_settings_and_the_timeouts_agree() -> None:
    values = _env_file()
    assert values.pop("WSGI_APP")
    known = {setting.env_var for setting in ALL_SETTINGS}
    assert set(values) <= known, set(values) - known
    config = load({}, env=values)  # every value is accepted
    service = _ini(SERVICE)["Service"]
    # systemd must not SIGKILL a stop that is still within the graceful timeout ...
    assert float(service["TimeoutStopSec"]) >= config.graceful_timeout_s + 10
    # ... nor restart the service for a stuck worker the master is about to replace.
    assert float(service["WatchdogSec"]) >= 2 * config.timeout_s


# -- socket activation --------------------------------------------------------------------------


class Lines:
    """A child's stderr, read on a thread; `wait_for` blocks until a line matches."""

    def __init__(self, stream: object) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._closed = False
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def wait_for(self, pattern: str, timeout_s: float = TIMEOUT_S) -> re.Match[str]:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                for line in self.lines:
                    if match := regex.search(line):
                        return match
                left = deadline - time.monotonic()
                if self._closed or left <= 0:
                    raise AssertionError(f"no line matching {pattern!r}:\n{self.text}")
                self._changed.wait(left)

    def wait_closed(self, timeout_s: float = TIMEOUT_S) -> str:
        """Every line, once the child closed its stderr (it exited)."""
        with self._changed:
            assert self._changed.wait_for(lambda: self._closed, timeout_s), self.text
        return self.text

    @property
    def text(self) -> str:
        return "".join(self.lines)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@contextlib.contextmanager
def socket_activated(*args: str) -> Iterator[tuple[subprocess.Popen[str], Lines, int]]:
    """`systemd-socket-activate -l 127.0.0.1:PORT --fdname=http -- python -m hardserve ARGS`.
    It binds the port, waits for the first connection, then execs hardserve (same pid) with
    the socket on descriptor 3, LISTEN_FDS=1, LISTEN_PID and LISTEN_FDNAMES=http."""
    port = _free_port()
    command = [
        "systemd-socket-activate",
        "-l",
        f"127.0.0.1:{port}",
        "--fdname=http",
        *_activator_env(),
        "--",
        sys.executable,
        "-m",
        "hardserve",
        *args,
    ]
    process = subprocess.Popen(
        command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=ROOT
    )
    lines = Lines(process.stderr)
    try:
        lines.wait_for(rf"Listening on 127\.0\.0\.1:{port} as 3\.")
        yield process, lines, port
    finally:
        stop_process(process)


def get(port: int, host: str = "127.0.0.1") -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(host, port, timeout=TIMEOUT_S)
    try:
        connection.request("GET", "/")
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@needs_activate
def test_serves_on_the_socket_systemd_passes() -> None:
    with socket_activated(HELLO) as (process, lines, port):
        # The first connection makes systemd-socket-activate start hardserve; it waits in the
        # socket's queue until a worker accepts it.
        assert get(port) == (200, HELLO_BODY)
        lines.wait_for(rf"systemd socket 'http' \(fd 3\): http://127\.0\.0\.1:{port}\b")
        assert get(port) == (200, HELLO_BODY)
        process.send_signal(signal.SIGTERM)
        assert process.wait(TIMEOUT_S) == 0, lines.text
        text = lines.wait_closed()
        assert re.search(rf"listening at http://127\.0\.0\.1:{port}\b", text), text
        # No --bind: the default 127.0.0.1:8000 was not opened beside it.
        assert len(re.findall(r"listening at ", text)) == 1, text


@needs_activate
def test_serves_on_the_passed_socket_and_on_a_bind_given_beside_it() -> None:
    with socket_activated(HELLO, "--bind", "127.0.0.1:0") as (process, lines, port):
        assert get(port) == (200, HELLO_BODY)
        lines.wait_for(rf"systemd socket 'http' \(fd 3\): http://127\.0\.0\.1:{port}\b")
        # The master announces every listener once its workers serve, maybe after the reply.
        other = lines.wait_for(rf"listening at http://127\.0\.0\.1:(?!{port}\b)(\d+)")
        assert get(int(other.group(1))) == (200, HELLO_BODY)
        process.send_signal(signal.SIGTERM)
        assert process.wait(TIMEOUT_S) == 0, lines.text


@needs_activate
def test_fd_3_given_as_a_bind_is_the_passed_socket_served_once() -> None:
    with socket_activated(HELLO, "--bind", "fd://3") as (process, lines, port):
        assert get(port) == (200, HELLO_BODY)
        lines.wait_for(rf"listening at http://127\.0\.0\.1:{port}\b")
        assert get(port) == (200, HELLO_BODY)
        process.send_signal(signal.SIGTERM)
        assert process.wait(TIMEOUT_S) == 0, lines.text
        text = lines.wait_closed()
        assert len(re.findall(rf"listening at http://127\.0\.0\.1:{port}\b", text)) == 1, text


@needs_activate
def test_a_passed_descriptor_that_is_not_a_listener_stops_the_start() -> None:
    # --accept: systemd-socket-activate passes each connection (Accept=yes), not the listener.
    port = _free_port()
    process = subprocess.Popen(
        [
            "systemd-socket-activate",
            "--accept",
            "-l",
            f"127.0.0.1:{port}",
            *_activator_env(),
            "--",
            sys.executable,
            "-m",
            "hardserve",
            HELLO,
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    )
    lines = Lines(process.stderr)
    try:
        lines.wait_for(rf"Listening on 127\.0\.0\.1:{port} as 3\.")
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as client:
            lines.wait_for(r"hardserve: socket activation: fd 3 \('unknown'\) is not listening")
            # hardserve exits 3 (a listener cannot be used), as the activator reports.
            lines.wait_for(r"Child \d+ died with code 3$")
            with contextlib.suppress(ConnectionResetError):
                assert client.recv(1) == b""  # closed, never served
    finally:
        stop_process(process)


# -- MemoryDenyWriteExecute=yes ------------------------------------------------------------------

# Runs the rest of its command line under PR_SET_MDWE (Linux 6.3+): no mapping may become both
# writable and executable, inherited by children and kept across exec. It is what
# MemoryDenyWriteExecute=yes enforces (systemd uses this prctl where the kernel has it, a
# seccomp filter on mmap/mprotect before).
_MDWE = r"""
import ctypes, os, sys
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
    sys.exit(f"PR_SET_MDWE: {os.strerror(ctypes.get_errno())}")
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
"""

_WX_MAP = "import mmap; mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)"


def _mdwe_missing() -> str | None:
    result = subprocess.run(
        [sys.executable, "-c", _MDWE, "-c", _WX_MAP],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    if "PR_SET_MDWE" in result.stderr:
        return f"this kernel cannot deny write+execute memory: {result.stderr.strip()}"
    if "Permission denied" not in result.stderr:
        return "PR_SET_MDWE was accepted but a writable, executable mapping still succeeded"
    return None


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_hardserve_runs_where_memory_cannot_be_writable_and_executable(loop: str) -> None:
    missing = _mdwe_missing()  # also proves the restriction is in force for the run below
    if missing:
        pytest.skip(missing)
    command = [sys.executable, "-c", _MDWE, "-m", "hardserve", HELLO]
    command += ["--bind", "127.0.0.1:0", "--workers", "2", "--loop", loop]
    process = subprocess.Popen(
        command,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    lines = Lines(process.stderr)
    try:
        port = int(lines.wait_for(r"listening at http://127\.0\.0\.1:(\d+)").group(1))
        for _ in range(4):
            assert get(port) == (200, HELLO_BODY)
        process.send_signal(signal.SIGTERM)
        assert process.wait(TIMEOUT_S) == 0, lines.text
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(TIMEOUT_S)
    assert "Traceback" not in lines.wait_closed()


# -- notifications ------------------------------------------------------------------------------


class NotifySocket:
    """A NOTIFY_SOCKET of our own: every datagram with the pid that sent it (SO_PASSCRED)."""

    def __init__(self, directory: Path) -> None:
        self.path = str(directory / "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(self.path)
        self.received: list[tuple[int, bytes]] = []

    def next(self, timeout_s: float = TIMEOUT_S) -> tuple[int, bytes]:
        self.sock.settimeout(timeout_s)
        data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        pid = -1
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = struct.unpack("iII", payload[:12])[0]
        self.received.append((pid, data))
        return pid, data

    def until(self, line: bytes, timeout_s: float = TIMEOUT_S) -> bytes:
        """Read datagrams until one carries `line`; that datagram."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {line!r} in {self.received}")
            try:
                _, data = self.next(left)
            except TimeoutError:
                raise AssertionError(f"no {line!r} in {self.received}") from None
            if line in data.split(b"\n"):
                return data

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify() -> Iterator[NotifySocket]:
    with tempfile.TemporaryDirectory(prefix="hs-", dir="/tmp") as name:
        receiver = NotifySocket(Path(name))
        try:
            yield receiver
        finally:
            receiver.close()


def _stop(server: ServerProcess) -> int:
    server.process.send_signal(signal.SIGTERM)
    return server.process.wait(TIMEOUT_S)


def test_ready_once_serving_then_stopping_on_term_all_from_the_master(
    notify: NotifySocket,
) -> None:
    with serve_process(HELLO, "--workers", "2", env={"NOTIFY_SOCKET": notify.path}) as server:
        ready = notify.until(b"READY=1")
        assert re.fullmatch(rb"READY=1\nSTATUS=serving with 2 workers", ready), ready
        # READY=1 means the service answers.
        assert get(server.port) == (200, HELLO_BODY)
        assert _stop(server) == 0, "".join(server.stderr_lines)
        notify.until(b"STOPPING=1")
        ready_count = sum(b"READY=1" in data.split(b"\n") for _, data in notify.received)
        assert ready_count == 1
        # NotifyAccess=main: systemd would drop anything a worker sent.
        senders = {pid for pid, _ in notify.received}
        assert senders == {server.process.pid}, notify.received


def test_reloading_then_ready_around_hup(notify: NotifySocket) -> None:
    with serve_process(HELLO, "--workers", "2", env={"NOTIFY_SOCKET": notify.path}) as server:
        notify.until(b"READY=1")
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        server.process.send_signal(signal.SIGHUP)
        reloading = notify.until(b"RELOADING=1")
        # Type=notify-reload needs the time of the reload on CLOCK_MONOTONIC.
        match = re.search(rb"(?:^|\n)MONOTONIC_USEC=(\d+)(?:\n|$)", reloading)
        assert match, reloading
        assert before <= int(match.group(1)) <= time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        notify.until(b"READY=1")  # every worker replaced
        assert get(server.port) == (200, HELLO_BODY)
        assert _stop(server) == 0, "".join(server.stderr_lines)
        assert {pid for pid, _ in notify.received} == {server.process.pid}


def test_watchdog_pings_at_half_the_timeout(notify: NotifySocket) -> None:
    env = {"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "400000"}  # ping every 0.2 s
    with serve_process(HELLO, env=env) as server:
        notify.until(b"READY=1")
        notify.until(b"WATCHDOG=1")
        first = time.monotonic()
        for _ in range(3):
            notify.until(b"WATCHDOG=1", timeout_s=2.0)
        elapsed = time.monotonic() - first
        # Three more pings at 0.2 s: not a flood, and well inside the 0.4 s timeout each.
        assert 0.3 < elapsed < 2.0, elapsed
        assert _stop(server) == 0
        assert {pid for pid, _ in notify.received} == {server.process.pid}


def test_no_watchdog_for_another_process(notify: NotifySocket) -> None:
    # WATCHDOG_PID names another process (say, a wrapper that exec'ed us): no pings.
    env = {
        "NOTIFY_SOCKET": notify.path,
        "WATCHDOG_USEC": "200000",
        "WATCHDOG_PID": str(os.getpid()),
    }
    with serve_process(HELLO, env=env) as server:
        notify.until(b"READY=1")
        assert get(server.port) == (200, HELLO_BODY)
        # Six ping intervals of silence (nothing else is sent while the server is idle).
        with pytest.raises(TimeoutError):
            notify.next(timeout_s=0.6)
        assert _stop(server) == 0
        notify.until(b"STOPPING=1")
    assert not any(b"WATCHDOG=1" in data for _, data in notify.received), notify.received

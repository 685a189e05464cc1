"""Shared test helpers: a real hardserve worker on 127.0.0.1 port 0 (in a thread, or as a
subprocess), and a raw-socket client whose responses are parsed by h11 in the client role, an
independent strict oracle for everything hardserve writes."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import h11
import pytest

from hardserve.http.limits import Limits
from hardserve.settings import Config
from hardserve.worker.main import Worker

TIMEOUT_S = 10.0

HandlerT = TypeVar("HandlerT", bound=logging.Handler)
T = TypeVar("T")


@contextlib.contextmanager
def only_handler(logger_name: str, handler: HandlerT, level: int) -> Iterator[HandlerT]:
    """For the block, `logger_name`'s records at `level` and above go to `handler` alone (not
    to its parents); its handlers, level and propagation are restored after."""
    logger = logging.getLogger(logger_name)
    saved = (logger.handlers[:], logger.level, logger.propagate)
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False
    try:
        yield handler
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved


ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "corpora" / "gunicorn-requests"


@dataclasses.dataclass
class RunningServer:
    host: str
    port: int
    worker: Worker

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def connect(self) -> socket.socket:
        return socket.create_connection(self.address, timeout=TIMEOUT_S)


# Settings every `serve` call starts from; the `both_loops` fixture sets the event loop here.
DEFAULT_SETTINGS: dict[str, Any] = {}


@pytest.fixture(params=["uvloop", "asyncio"], autouse=False)
def both_loops(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the test once on uvloop and once on the standard asyncio loop (the fallback where
    uvloop is missing): transports differ in flow control, half-close and sendfile."""
    DEFAULT_SETTINGS["loop"] = request.param
    try:
        yield request.param
    finally:
        DEFAULT_SETTINGS.pop("loop", None)


@contextlib.contextmanager
def serve(app: Any, *, limits: Limits | None = None, **settings: Any) -> Iterator[RunningServer]:
    """Run one worker in a thread, on a fresh 127.0.0.1 port, for the length of the block."""
    settings = {**DEFAULT_SETTINGS, **settings}
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.setblocking(False)
    host, port = sock.getsockname()
    config = Config(bind=(f"{host}:{port}",), limits=limits or Limits(), **settings)
    worker = Worker(app, config, [sock])
    errors: list[BaseException] = []

    def run() -> None:
        try:
            worker.run(install_signals=False)
        except BaseException as exc:  # surfaced by the test below
            errors.append(exc)
            worker.ready.set()

    thread = threading.Thread(target=run, name="hardserve-test-worker", daemon=True)
    thread.start()
    assert worker.ready.wait(TIMEOUT_S), "worker did not start"
    if errors:
        raise errors[0]
    try:
        yield RunningServer(host, port, worker)
    finally:
        worker.stop()
        thread.join(TIMEOUT_S)
        sock.close()
        assert not thread.is_alive(), "worker did not stop"
        if errors:
            raise errors[0]


@dataclasses.dataclass
class Response:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    http_version: bytes = b"1.1"
    informational: list[int] = dataclasses.field(default_factory=list)

    def header(self, name: str) -> str | None:
        wanted = name.lower().encode()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value.decode("latin-1")
        return None


def read_responses(
    sock: socket.socket, count: int, *, method: bytes = b"GET", methods: list[bytes] | None = None
) -> tuple[list[Response], bool]:
    """Read `count` responses with h11 as the client. Returns them and whether the server then
    closed the connection (read until EOF only when h11 says the connection must close)."""
    responses: list[Response] = []
    conn = h11.Connection(h11.CLIENT)
    methods = methods or [method] * count
    closed = False
    for index in range(count):
        conn.send(h11.Request(method=methods[index], target="/", headers=[("Host", "x")]))
        conn.send(h11.EndOfMessage())
        current: Response | None = None
        body = bytearray()
        informational: list[int] = []
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = sock.recv(65536)
                conn.receive_data(data)
                if not data:
                    closed = True
                continue
            if isinstance(event, h11.InformationalResponse):
                informational.append(event.status_code)
            elif isinstance(event, h11.Response):
                current = Response(event.status_code, list(event.headers), b"", event.http_version)
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert current is not None
                current.body = bytes(body)
                current.informational = informational
                responses.append(current)
                break
            elif isinstance(event, h11.ConnectionClosed):
                return responses, True
        if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
            break
        if conn.states[h11.SERVER] is h11.DONE and conn.states[h11.CLIENT] is h11.DONE:
            conn.start_next_cycle()
    if len(responses) == count and not closed:
        closed = server_closed(sock)
    return responses, closed


def wait_until(predicate: Any, timeout_s: float = TIMEOUT_S) -> bool:
    """Poll a condition the server exposes no event for (such as its connection count), at
    short intervals, until it holds or the timeout passes."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def wait_for(what: str, probe: Callable[[], T | None], timeout_s: float = TIMEOUT_S) -> T:
    """Poll `probe` until it returns something true, and return that value; AssertionError
    naming `what` when the timeout passes first."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.01)


def read_until_close(sock: socket.socket) -> bytes:
    """Every byte the server sends until it closes (for answers h11 must not parse: cut or
    close-delimited on purpose)."""
    sock.settimeout(TIMEOUT_S)
    received = bytearray()
    while data := sock.recv(65536):
        received += data
    return bytes(received)


def server_closed(sock: socket.socket, wait_s: float = 0.2) -> bool:
    """True when the server has closed its side (recv sees EOF or a reset) within wait_s."""
    sock.settimeout(wait_s)
    try:
        data = sock.recv(1)
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    finally:
        sock.settimeout(TIMEOUT_S)
    if data:
        raise AssertionError(f"unexpected bytes after the response: {data!r}")
    return True


def exchange(
    server: RunningServer, raw: bytes, count: int = 1, **kwargs: Any
) -> tuple[list[Response], bool]:
    """Send raw bytes on a new connection and read `count` responses."""
    with server.connect() as sock:
        sock.sendall(raw)
        return read_responses(sock, count, **kwargs)


@dataclasses.dataclass
class ServerProcess:
    process: subprocess.Popen[str]
    host: str
    port: int
    stderr_lines: list[str]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


_LISTENING_RE = re.compile(r"listening at https?://(?P<host>[^\s]+):(?P<port>\d+)")


@contextlib.contextmanager
def serve_process(
    *args: str, env: dict[str, str] | None = None, cwd: str | None = None
) -> Iterator[ServerProcess]:
    """Run `python -m hardserve ARGS --bind 127.0.0.1:0` and wait for its listening line."""
    command = [sys.executable, "-m", "hardserve", *args]
    if not any(arg.startswith("--bind") for arg in args):
        command += ["--bind", "127.0.0.1:0"]
    with launch_process(command, env=env, cwd=cwd) as server:
        yield server


@contextlib.contextmanager
def launch_process(
    command: list[str], *, env: dict[str, str] | None = None, cwd: str | Path | None = ROOT
) -> Iterator[ServerProcess]:
    """Start a hardserve command line exactly as given (the console script, a wrapper) in
    `cwd` (None: this process's), wait for its first listening line, and stop it at the end
    (stop_process)."""
    process = subprocess.Popen(
        command,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )
    lines: list[str] = []
    assert process.stderr is not None
    found: list[tuple[str, int]] = []
    ready = threading.Event()

    def pump() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line)
            match = _LISTENING_RE.search(line)
            if match and not found:
                found.append((match.group("host").strip("[]"), int(match.group("port"))))
                ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    try:
        if not ready.wait(TIMEOUT_S) or not found:
            raise AssertionError("server did not start:\n" + "".join(lines))
        yield ServerProcess(process, found[0][0], found[0][1], lines)
    finally:
        stop_process(process)


def stop_process(process: subprocess.Popen[str]) -> None:
    """SIGTERM a process still running and wait for it; kill it if it outlives TIMEOUT_S."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(TIMEOUT_S)

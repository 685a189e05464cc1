"""The admin listener: /metrics, /livez and /readyz, served by the master.

The master is one thread running a select() loop (master/arbiter.py) that forks the workers,
so this is a small non-blocking HTTP/1.1 server that the loop drives: it asks `fds()` which
descriptors to watch, and hands back what select() found with `handle()`. Nothing here
blocks, starts a thread or sleeps. Because the master answers, the endpoints answer while
every worker is busy, and /readyz can turn 503 the moment a stop begins.

It is deliberately small and strict (docs/metrics.md):
- at most `max_connections` connections at once; beyond that new ones wait in the kernel's
  queue, since the listener is not watched until one finishes;
- each connection has `deadline_s` in total to send its head and read the answer, whatever
  it does: a client that sends nothing, or reads nothing, is closed when it passes;
- a request head of at most `head_max_bytes`, lines ended by CRLF, no body; GET and HEAD only;
- one request per connection: every answer says `Connection: close`.
/metrics takes a bearer token when one is set (compared in constant time); /livez and /readyz
never do, so that probes need no secret.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

_log = logging.getLogger("hardserve.error")

MAX_CONNECTIONS = 8
DEADLINE_S = 5.0
HEAD_MAX_BYTES = 8192
_RECV_BYTES = 4096
_ACCEPTS_PER_TURN = 16
_ACCEPT_PAUSE_S = 1.0

_TOKEN_CHARS = frozenset(
    b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
)
_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}
PATHS = ("/metrics", "/livez", "/readyz")


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # without the query
    headers: dict[str, str]  # lower-case name -> value (a repeated field's values joined)


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)

    def encode(self, *, head_only: bool) -> bytes:
        lines = [
            f"HTTP/1.1 {self.status} {_REASONS.get(self.status, 'Unknown')}",
            f"Content-Type: {self.content_type}",
            f"Content-Length: {len(self.body)}",
            "Cache-Control: no-store",
            "X-Content-Type-Options: nosniff",
            "Connection: close",
            *(f"{name}: {value}" for name, value in self.headers),
        ]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return head if head_only else head + self.body


class BadRequest(ValueError):
    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status


def parse_head(head: bytes) -> Request:
    """A request head (without its final CRLF CRLF) -> Request; BadRequest when it is not
    one this listener takes."""
    lines = head.split(b"\r\n")
    if any(b"\n" in line or b"\r" in line for line in lines):
        raise BadRequest(400, "line not ended by CRLF")
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        raise BadRequest(400, "request line is not METHOD SP target SP version")
    method, target, version = parts
    if not method or not set(method) <= _TOKEN_CHARS:
        raise BadRequest(400, "method is not a token")
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise BadRequest(505 if version.startswith(b"HTTP/") else 400, "unsupported version")
    if not target.startswith(b"/") or not all(0x21 <= byte <= 0x7E for byte in target):
        raise BadRequest(400, "target is not an absolute path")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or not set(name) <= _TOKEN_CHARS:
            raise BadRequest(400, "header field is not name ':' value")
        key = name.decode("ascii").lower()
        text = value.strip(b" \t").decode("latin-1")
        if key == "authorization" and key in headers:
            raise BadRequest(400, "Authorization sent twice")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    path = target.split(b"?", 1)[0].decode("ascii")
    return Request(method.decode("ascii"), path, headers)


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("latin-1", "replace")).digest()


def bearer_matches(authorization: str | None, token: str) -> bool:
    """Whether an Authorization value is `Bearer <token>`. The comparison takes the same time
    whatever the value (both sides hashed to a fixed length, then compare_digest)."""
    scheme, _, given = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer":
        given = ""
    return hmac.compare_digest(_digest(given.strip()), _digest(token)) and bool(given)


@dataclass
class Endpoints:
    """What the listener answers with: the metrics (rendered for an Accept header: body and
    Content-Type), and whether the master is alive and ready."""

    metrics: Callable[[str | None], tuple[bytes, str]]
    live: Callable[[], bool]
    ready: Callable[[], bool]
    token: str | None = None

    def answer(self, request: Request) -> Response:
        if request.path not in PATHS:
            return Response(404, b"not found: /metrics, /livez, /readyz\n")
        if request.method not in ("GET", "HEAD"):
            return Response(405, b"method not allowed\n", headers=[("Allow", "GET, HEAD")])
        if request.path == "/livez":
            alive = self.live()
            return Response(200 if alive else 503, b"ok\n" if alive else b"not alive\n")
        if request.path == "/readyz":
            ready = self.ready()
            return Response(200 if ready else 503, b"ready\n" if ready else b"not ready\n")
        if self.token is not None and not bearer_matches(
            request.headers.get("authorization"), self.token
        ):
            return Response(
                401,
                b"a bearer token is required\n",
                headers=[("WWW-Authenticate", 'Bearer realm="hardserve-admin"')],
            )
        try:
            body, content_type = self.metrics(request.headers.get("accept"))
        except Exception:  # a bug in rendering must not stop the master
            _log.exception("admin: cannot render the metrics")
            return Response(500, b"cannot render the metrics\n")
        return Response(200, body, content_type)


class _Connection:
    __slots__ = ("deadline", "inbox", "outbox", "sock")

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.inbox = bytearray()
        self.outbox: memoryview | None = None  # set once the answer is ready


class AdminServer:
    """The admin listener's connections, driven by the master's select() loop."""

    def __init__(
        self,
        listener: socket.socket,
        endpoints: Endpoints,
        *,
        max_connections: int = MAX_CONNECTIONS,
        deadline_s: float = DEADLINE_S,
        head_max_bytes: int = HEAD_MAX_BYTES,
    ) -> None:
        listener.setblocking(False)
        self.listener = listener
        self.endpoints = endpoints
        self.max_connections = max_connections
        self.deadline_s = deadline_s
        self.head_max_bytes = head_max_bytes
        self._connections: dict[int, _Connection] = {}
        # After an accept() error (EMFILE, ENFILE, ...) the listener is left alone for a while:
        # it stays readable, and the loop would otherwise spin on it.
        self._accept_paused_until = 0.0

    @property
    def connections(self) -> int:
        return len(self._connections)

    def fds(self) -> tuple[list[int], list[int]]:
        """The descriptors to watch: (for reading, for writing)."""
        readers = [fd for fd, c in self._connections.items() if c.outbox is None]
        writers = [fd for fd, c in self._connections.items() if c.outbox is not None]
        if len(self._connections) < self.max_connections and not self._accept_paused_until:
            readers.append(self.listener.fileno())
        return readers, writers

    def handle(self, readable: Iterable[int], writable: Iterable[int], now: float) -> None:
        """Act on what select() found, then close connections past their deadline."""
        for fd in readable:
            if fd == self.listener.fileno():
                self._accept(now)
            elif fd in self._connections:
                self._read(self._connections[fd])
        for fd in writable:
            connection = self._connections.get(fd)
            if connection is not None:
                self._write(connection)
        self.expire(now)

    def expire(self, now: float) -> None:
        if self._accept_paused_until and now >= self._accept_paused_until:
            self._accept_paused_until = 0.0
        for connection in [c for c in self._connections.values() if now >= c.deadline]:
            self._close(connection)

    def close(self) -> None:
        """Close every connection and the listener. Only descriptors are closed (no
        shutdown), so a forked worker calls this too, to drop what it inherited without
        touching the master's connections."""
        for connection in list(self._connections.values()):
            self._close(connection)
        self.listener.close()

    # -- one connection ----------------------------------------------------------------------

    def _accept(self, now: float) -> None:
        for _ in range(_ACCEPTS_PER_TURN):
            if len(self._connections) >= self.max_connections:
                return
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE, ENFILE, ...: try again in a second
                _log.warning("admin: accept failed: %s", exc)
                self._accept_paused_until = now + _ACCEPT_PAUSE_S
                return
            sock.setblocking(False)
            self._connections[sock.fileno()] = _Connection(sock, now + self.deadline_s)

    def _read(self, connection: _Connection) -> None:
        try:
            data = connection.sock.recv(_RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(connection)
            return
        connection.inbox += data
        end = connection.inbox.find(b"\r\n\r\n")
        if end < 0:
            if len(connection.inbox) > self.head_max_bytes:
                self._respond(connection, Response(431, b"request head too large\n"), False)
            return
        if end + 4 > self.head_max_bytes:
            self._respond(connection, Response(431, b"request head too large\n"), False)
            return
        try:
            request = parse_head(bytes(connection.inbox[:end]))
        except BadRequest as exc:
            self._respond(connection, Response(exc.status, f"{exc}\n".encode()), False)
            return
        response = self.endpoints.answer(request)
        self._respond(connection, response, request.method == "HEAD")

    def _respond(self, connection: _Connection, response: Response, head_only: bool) -> None:
        connection.inbox.clear()
        connection.outbox = memoryview(response.encode(head_only=head_only))
        self._write(connection)

    def _write(self, connection: _Connection) -> None:
        outbox = connection.outbox
        assert outbox is not None
        try:
            sent = connection.sock.send(outbox)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(connection)
            return
        connection.outbox = outbox[sent:]
        if not connection.outbox:
            with contextlib.suppress(OSError):
                connection.sock.shutdown(socket.SHUT_WR)
            self._close(connection)

    def _close(self, connection: _Connection) -> None:
        self._connections.pop(connection.sock.fileno(), None)
        with contextlib.suppress(OSError):
            connection.sock.close()

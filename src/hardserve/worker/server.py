"""What the connections of one worker share, and the acceptor: listening servers, the set of
open connections, and the graceful drain."""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
import traceback
from types import FrameType
from typing import TYPE_CHECKING, Any, TextIO

from hardserve.http.parser import RequestHead
from hardserve.http.response import ResponseFramer
from hardserve.http.target import PathPolicy
from hardserve.worker.call import WsgiApp
from hardserve.worker.connection import HttpConnection
from hardserve.worker.fixed_headers import FixedHeaders
from hardserve.worker.pool import Pool

if TYPE_CHECKING:
    from hardserve.settings import Config

_access_log = logging.getLogger("hardserve.access")
_error_log = logging.getLogger("hardserve.error")


class WorkerShared:
    def __init__(self, app: WsgiApp, config: Config, pool: Pool, wsgi_errors: TextIO) -> None:
        self.app = app
        self.config = config
        self.pool = pool
        self.wsgi_errors = wsgi_errors
        self.fixed_headers = FixedHeaders(config.server_header or None)
        self.path_policy = PathPolicy(
            allow_encoded_slash=config.path_encoded_slash == "allow",
            allow_backslash=config.path_backslash == "allow",
        )
        self.connections: set[HttpConnection] = set()
        self.stopping = False
        self._all_closed: asyncio.Event | None = None

    def connection_opened(self, connection: HttpConnection) -> None:
        self.connections.add(connection)

    def connection_closed(self, connection: HttpConnection) -> None:
        self.connections.discard(connection)
        if not self.connections and self._all_closed is not None:
            self._all_closed.set()

    def request_finished(
        self,
        connection: HttpConnection,
        head: RequestHead,
        framer: ResponseFramer | None,
        outcome: str,
        duration_s: float,
    ) -> None:
        if _access_log.isEnabledFor(logging.INFO):
            peer = connection.peer
            status = framer.status_code if framer is not None and framer.status_code else 0
            _access_log.info(
                '%s "%s %s HTTP/%s" %s %d %.6f %s',
                peer[0] if peer else "-",
                head.method.decode("ascii"),
                head.raw_target.decode("latin-1").encode("unicode_escape").decode("ascii"),
                head.http_version.decode("ascii"),
                status or "-",
                framer.sent_body_bytes if framer is not None else 0,
                duration_s,
                outcome,
            )

    def report_overdue_requests(self, now: float) -> None:
        """Log, once per request, every request running longer than request_timeout_s, with the
        stack of the thread that runs it."""
        timeout = self.config.limits.request_timeout_s
        frames: dict[int, FrameType] | None = None
        for connection in self.connections:
            call = connection.running_call
            if call is None or call.overdue_reported or now - call.started_at < timeout:
                continue
            call.overdue_reported = True
            if frames is None:
                frames = sys._current_frames()
            frame = frames.get(call.thread_id)
            stack = "".join(traceback.format_stack(frame)) if frame is not None else "(finished)\n"
            peer = connection.peer
            _error_log.error(
                "request running for more than %g s: %s from %s; its thread's stack:\n%s",
                timeout,
                call.request_line,
                f"{peer[0]}:{peer[1]}" if peer else "-",
                stack.rstrip(),
            )

    async def drain(self, timeout_s: float) -> bool:
        """Close idle connections, let busy ones finish their response; True if all closed."""
        self.stopping = True
        for connection in list(self.connections):
            try:
                connection.close_when_idle()
            except Exception:  # one broken connection must not stop the others' drain
                _error_log.exception("error closing a connection during shutdown")
        if not self.connections:
            return True
        self._all_closed = asyncio.Event()
        try:
            await asyncio.wait_for(self._all_closed.wait(), timeout_s)
        except TimeoutError:
            return False
        return True


async def start_servers(
    loop: asyncio.AbstractEventLoop, shared: WorkerShared, sockets: list[socket.socket]
) -> list[asyncio.AbstractServer]:
    servers: list[asyncio.AbstractServer] = []

    def factory() -> HttpConnection:
        return HttpConnection(shared)

    for sock in sockets:
        kwargs: dict[str, Any] = {"sock": sock, "backlog": shared.config.listen_backlog}
        if sock.family == socket.AF_UNIX:
            server = await loop.create_unix_server(factory, **kwargs)
        else:
            server = await loop.create_server(factory, **kwargs)
        servers.append(server)
    return servers

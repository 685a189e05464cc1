"""What the connections of one worker share, and the acceptor: listening servers, the set of
open connections with the caps on them, and the graceful drain."""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
import traceback
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any, TextIO, cast

from hardserve import tls
from hardserve.http import reasons
from hardserve.http.environ import worker_constants
from hardserve.http.forwarded import HeaderFamily, TrustedPeers
from hardserve.http.parser import RequestHead
from hardserve.http.reasons import Reason
from hardserve.http.response import ResponseFramer
from hardserve.http.target import PathPolicy
from hardserve.observe.logs import AccessEntry, AccessLog, RequestIds, log_refusal
from hardserve.observe.stats import WorkerStats
from hardserve.worker.accept_queue import accept_queue
from hardserve.worker.call import FileWrapper, WsgiApp, WsgiCall
from hardserve.worker.connection import HttpConnection
from hardserve.worker.fixed_headers import FixedHeaders
from hardserve.worker.pool import Pool
from hardserve.worker.tls_accept import TlsHandshake

if TYPE_CHECKING:
    from hardserve.settings import Config

_access_log = logging.getLogger("hardserve.access")
_error_log = logging.getLogger("hardserve.error")


# A long accept queue (see Acceptor.watch_queue). uvloop's libuv accepts one connection per
# listening handle per loop turn, so a worker with one handle per listener turned its loop, and
# handed work to a pool thread and back, once per new connection: with Connection: close under
# load, some 3.4 context switches and 110-130 µs of CPU per connection, against 0.8 and 73-77 µs
# with 8 handles on the same socket (bench/NOTES.md). Extra handles cost when the queue is
# short: each turn every handle tries an accept, and all but one find nothing (about 15 % more
# CPU per connection for a lone client), so they are opened only while connections wait.
SURGE_HANDLES = 8  # per listener, the first included
SURGE_QUEUE = 2  # connections waiting in a listener's accept queue that open the extra handles
SURGE_QUIET_S = 2.0  # the extra handles close after this long with no connection waiting
# After resuming failed (out of descriptors, say), the acceptor tries again this much later.
RESUME_RETRY_S = 1.0


class Acceptor:
    """The worker's listening servers, which it can stop and restart.

    At the connection cap the servers are closed, so the kernel keeps new connections in the
    backlog instead of the worker accepting them. Each server is given a duplicate of its
    listening socket (closing a server closes the socket it was given); the original stays open
    and keeps the port, and restarting makes a new server on a new duplicate.

    While connections wait in a listener's accept queue, more servers are made on more
    duplicates of it (`surge`): each accepts one connection per loop turn.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        factory: Callable[[], asyncio.Protocol],
        sockets: list[socket.socket],
        backlog: int,
        tls_factory: Callable[[tls.Context], asyncio.Protocol] | None = None,
        tls_context: tls.Context | None = None,
    ) -> None:
        self._loop = loop
        self._factory = factory
        self._sockets = sockets
        self._backlog = backlog
        # With TLS configured the tls:// listeners speak it, or every TCP listener when no
        # bind says tls://; unix sockets stay plain (a local proxy in front, docs/tls.md). Their
        # connections start with a TlsHandshake (worker/tls_accept.py), on a plain server.
        self._tls_factory = tls_factory
        # The context each new handshake is given. The worker swaps in a new one when the master
        # says the files changed (worker/main.py); connections already made keep theirs.
        self.tls_context = tls_context
        self.servers: list[asyncio.AbstractServer] = []
        self._starting: asyncio.Task[None] | None = None
        self.accepting = False
        self.closed = False
        # Per listener, the extra servers while connections wait (watch_queue).
        self._surges = [_Surge(sock) for sock in sockets]

    async def start(self) -> None:
        self.accepting = True
        servers: list[asyncio.AbstractServer] = []
        try:
            for sock in self._sockets:
                servers.append(await self._serve(sock))
        except BaseException:
            for server in servers:  # one listener's server made, the next one failed
                server.close()
            self.accepting = False
            raise
        if self.closed or not self.accepting:
            for server in servers:  # paused or closed while the servers were being made
                server.close()
            return
        self.servers = servers

    async def _serve(self, sock: socket.socket) -> asyncio.AbstractServer:
        kwargs: dict[str, Any] = {"sock": sock.dup(), "backlog": self._backlog}
        if sock.family == socket.AF_UNIX:
            return await self._loop.create_unix_server(self._factory, **kwargs)
        factory = self._factory
        if self._tls_factory is not None and tls.serves_tls(sock):
            factory = self._tls_connection
        return await self._loop.create_server(factory, **kwargs)

    def _tls_connection(self) -> asyncio.Protocol:
        assert self._tls_factory is not None and self.tls_context is not None
        return self._tls_factory(self.tls_context)

    def pause(self) -> None:
        if not self.accepting:
            return
        self.accepting = False
        for surge in self._surges:
            surge.end()
        for server in self.servers:
            server.close()
        self.servers = []

    def resume(self) -> None:
        if self.accepting or self.closed:
            return
        if self._starting is not None and not self._starting.done():
            self.accepting = True
            return
        self._starting = self._loop.create_task(self._resume())

    async def _resume(self) -> None:
        """Start again after a pause. A failure here has no caller to see it: the worker would
        stay deaf with connections waiting, so it is logged and tried again until it works or
        the acceptor is closed."""
        try:
            await self.start()
        except OSError as exc:
            if self.closed:
                return  # the sockets were closed under it: the worker is stopping
            _error_log.warning(
                "could not accept again: %s; trying again in %g s", exc, RESUME_RETRY_S
            )
            self._loop.call_later(RESUME_RETRY_S, self.resume)

    def close(self) -> None:
        """Stop accepting for good and close the listening sockets (this process's copies)."""
        self.closed = True
        self.pause()
        for sock in self._sockets:
            sock.close()

    # -- a long accept queue -----------------------------------------------------------------

    def watch_queue(self, now: float) -> None:
        """Called a few times a second: open a listener's extra servers when connections wait
        in its accept queue, close them once none has waited for SURGE_QUIET_S."""
        if not self.accepting:
            return
        for surge in self._surges:
            waiting = accept_queue(surge.sock)
            if waiting:
                surge.waited_at = now
            if waiting >= SURGE_QUEUE:
                if not surge.servers and not surge.starting and now >= surge.retry_at:
                    surge.task = self._loop.create_task(self._start_surge(surge, now))
            elif surge.servers and now - surge.waited_at >= SURGE_QUIET_S:
                surge.end()

    async def _start_surge(self, surge: _Surge, now: float) -> None:
        extra: list[asyncio.AbstractServer] = []
        try:
            for _ in range(SURGE_HANDLES - 1):
                if self.closed or not self.accepting:
                    break  # paused or stopped before this task ran: the socket may be closed
                extra.append(await self._serve(surge.sock))
        except OSError as exc:  # out of descriptors, for one: the listener goes on as it was
            _error_log.warning("could not open another server on a listener: %s", exc)
            surge.retry_at = now + SURGE_QUIET_S  # not ten warnings a second while it lasts
        if self.closed or not self.accepting:
            for server in extra:  # paused or closed meanwhile
                server.close()
            return
        surge.servers = extra

    @property
    def serving(self) -> int:
        """Servers accepting now: one per listener, more while connections wait in a queue."""
        return len(self.servers) + sum(len(surge.servers) for surge in self._surges)

    @property
    def surge(self) -> list[asyncio.AbstractServer]:
        """The extra servers open now, of every listener."""
        return [server for surge in self._surges for server in surge.servers]


class _Surge:
    """One listener's extra servers, opened while connections wait in its accept queue."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.servers: list[asyncio.AbstractServer] = []
        self.task: asyncio.Task[None] | None = None
        self.waited_at = 0.0  # when a connection was last seen waiting (time.monotonic())
        self.retry_at = 0.0  # after a failure to open them, not before this

    @property
    def starting(self) -> bool:
        return self.task is not None and not self.task.done()

    def end(self) -> None:
        for server in self.servers:
            server.close()
        self.servers = []


class WorkerShared:
    def __init__(
        self,
        app: WsgiApp,
        config: Config,
        pool: Pool,
        wsgi_errors: TextIO,
        stats: WorkerStats | None = None,
    ) -> None:
        self.app = app
        self.config = config
        self.pool = pool
        self.wsgi_errors = wsgi_errors
        # Every request's environ starts as a copy of these.
        self.environ_constants = worker_constants(wsgi_errors=wsgi_errors, file_wrapper=FileWrapper)
        self.fixed_headers = FixedHeaders(config.server_header or None)
        self.path_policy = PathPolicy(
            allow_encoded_slash=config.path_encoded_slash == "allow",
            allow_backslash=config.path_backslash == "allow",
        )
        # The access-log format is compiled here, in the worker (its %(p)s is the worker's pid);
        # request IDs get a prefix of their own in every worker.
        self.access_log = AccessLog(config.access_log_format, config.log_format)
        self.request_ids = RequestIds()
        self.connections: set[HttpConnection] = set()
        # Connections on a TLS listener until their handshake ends; they count against the caps.
        self.handshakes: set[TlsHandshake] = set()
        # A TLS connection was counted as accepted when its handshake began; its HttpConnection,
        # made at the hand-over, is not counted again.
        self._handing_over = False
        self.stopping = False
        # The worker's numbers (observe/stats.py): changed only here, on the loop's thread.
        self.stats = stats if stats is not None else WorkerStats()
        self._all_closed: asyncio.Event | None = None
        limits = config.limits
        self._connections_max = limits.connections_max
        # Hysteresis: accepting restarts below nine tenths of the cap, so a worker at the cap
        # does not close and reopen its servers for every connection that comes and goes.
        self._connections_resume = limits.connections_max - limits.connections_max // 10
        self._client_connections_max = limits.client_connections_max
        self._client_in_flight_max = limits.client_in_flight_max
        self._client_connections: dict[str, int] = {}
        self._client_in_flight: dict[str, int] = {}
        self.acceptor: Acceptor | None = None
        self.loop: asyncio.AbstractEventLoop | None = None  # set by start_servers
        self.forwarders = TrustedPeers.parse(config.forwarded_allow_ips)
        self.forwarded_headers: HeaderFamily = cast(HeaderFamily, config.forwarded_headers)
        self.proxy_peers = (
            TrustedPeers.parse(config.proxy_allow_ips) if config.proxy_protocol == "on" else None
        )
        # A trusted proxy carries many clients' connections: it is not counted as one client.
        self.uncounted_peer: Callable[[str], bool] = self.forwarders.contains

    @property
    def requests_total(self) -> int:
        """Requests finished (access-logged) by this worker."""
        return self.stats.requests

    def gauges(self) -> dict[str, float]:
        """The gauges of a stats snapshot (observe/stats.py GAUGES), as they are now."""
        pool = self.pool
        return {
            "connections_open": len(self.connections),
            "requests_in_flight": pool.in_flight + pool.waiting,
            "pool_threads": pool.size,
            "pool_busy": pool.busy,
            "pool_queued": pool.queued,
            "accept_servers": self.acceptor.serving if self.acceptor is not None else 0,
        }

    def refused(
        self,
        reason: Reason,
        peer: tuple[str, int] | None,
        request_line: bytes,
        detail: str,
        request_id: str | None = None,
    ) -> None:
        """Every refusal of the worker goes through here: counted by its reason code, and its
        security-log line written. On the loop's thread only."""
        self.stats.refused(reason.code)
        log_refusal(reason.code, reason.status, peer, request_line, detail, request_id)

    def connection_opened(self, connection: HttpConnection) -> None:
        if self._handing_over:
            self._handing_over = False
        else:
            self.stats.connections_accepted += 1
        self.connections.add(connection)
        self._opened()

    def _opened(self) -> None:
        acceptor = self.acceptor
        open_count = len(self.connections) + len(self.handshakes)
        if open_count >= self._connections_max and acceptor is not None:
            if acceptor.accepting:
                _error_log.warning(
                    "%d connections open: at connections_max, new connections wait in the backlog",
                    open_count,
                )
            acceptor.pause()

    def handshake_started(self, handshake: TlsHandshake) -> None:
        self.stats.connections_accepted += 1
        self.handshakes.add(handshake)
        self._opened()

    def handshake_ended(self, handshake: TlsHandshake, *, handed_over: bool) -> None:
        """The handshake is over. Handed over, the connection is counted again at once by its
        HttpConnection (so the acceptor is not restarted in between); else it is closed."""
        if handshake not in self.handshakes:
            return
        self.handshakes.discard(handshake)
        address = handshake.counted_address
        if address is not None:
            _decrement(self._client_connections, address)
        if handed_over:
            self._handing_over = True  # the HttpConnection's connection_made comes next
        else:
            self._closed()

    def handshake_refused(self, reason: Reason, peer: tuple[str, int] | None, detail: str) -> None:
        """Every failed TLS handshake that is a refusal comes here: one security-log line (status
        0: closed unanswered), one count."""
        self.refused(reason, peer, b"", detail)

    def admit_client(
        self, connection: HttpConnection | TlsHandshake, peer: tuple[str, int] | None
    ) -> bool:
        """Count the connection under its client's address (the direct peer, or the source a
        PROXY protocol header gave); False when that client already holds its share (the
        connection is then closed at once, unanswered)."""
        if peer is None or self.uncounted_peer(peer[0]):
            return True
        address = peer[0]
        count = self._client_connections.get(address, 0)
        if count >= self._client_connections_max:
            self.refused(reasons.CLIENT_CONNECTIONS, peer, b"", f"{count} connections open")
            return False
        self._client_connections[address] = count + 1
        connection.counted_address = address
        return True

    def connection_closed(self, connection: HttpConnection) -> None:
        if connection not in self.connections:
            return
        self.connections.discard(connection)
        address = connection.counted_address
        if address is not None:
            _decrement(self._client_connections, address)
        self._closed()

    def _closed(self) -> None:
        acceptor = self.acceptor
        if (
            acceptor is not None
            and not acceptor.accepting
            and not self.stopping
            and len(self.connections) + len(self.handshakes) < self._connections_resume
        ):
            acceptor.resume()
        if not self.connections and not self.handshakes and self._all_closed is not None:
            self._all_closed.set()

    def client_request_started(self, address: str) -> bool:
        """Count a request of `address` admitted to the pool; False (not counted) when the
        client already has its share in flight. Unix-socket peers (address "") are not
        limited, nor is anyone when the cap is 0 (off)."""
        # The cap is read first: the address's string is the connection's own, and often cold.
        if not self._client_in_flight_max or not address:
            return True
        count = self._client_in_flight.get(address, 0)
        if count >= self._client_in_flight_max:
            return False
        self._client_in_flight[address] = count + 1
        return True

    def client_request_ended(self, address: str) -> None:
        if self._client_in_flight_max and address:
            _decrement(self._client_in_flight, address)

    def request_finished(
        self,
        connection: HttpConnection,
        head: RequestHead,
        framer: ResponseFramer | None,
        outcome: str,
        duration_s: float,
        call: WsgiCall | None = None,
    ) -> None:
        """A request ended, however it ended: one access-log line, and its numbers. `call` is
        given when a pool thread ran it (its wait for the thread is counted). The server's own
        refusals do not come here (they are counted in refused()). `connection.requests_served`
        does not count this request yet."""
        self.stats.request_served(
            head.method,
            framer.status_code if framer is not None else 0,
            duration_s,
            call.started_at - call.queued_at if call is not None and call.started_at else None,
            connection.requests_served > 0,
        )
        if _access_log.isEnabledFor(logging.INFO):
            self.access_log.log(
                AccessEntry(
                    head,
                    connection.client_addr,
                    framer.status_code if framer is not None else 0,
                    framer.sent_body_bytes if framer is not None else 0,
                    duration_s,
                    outcome,
                    connection.request_id,
                    connection.environ,
                )
            )

    def report_overdue_requests(self, now: float) -> None:
        """Log, once per request, every request running longer than request_timeout_s, with the
        stack of the thread that runs it. Time a response spent parked, waiting on its client
        with no thread, is not time in the app."""
        timeout = self.config.limits.request_timeout_s
        frames: dict[int, FrameType] | None = None
        for connection in self.connections:
            call = connection.running_call
            if call is None or call.overdue_reported:
                continue
            if now - call.started_at - call.parked_s < timeout:
                continue
            call.overdue_reported = True
            self.stats.timed_out("request")
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

    def shed_stale_queued_requests(self, now: float) -> None:
        cutoff = now - self.config.limits.queue_timeout_s
        for connection in list(self.connections):
            connection.shed_if_queued_since(cutoff)

    def has_request_running_since(self, cutoff: float) -> bool:
        """Whether a request has been in the app since before `cutoff` (time.monotonic()), not
        counting the time its response was parked."""
        for connection in self.connections:
            call = connection.running_call
            if call is not None and call.started_at + call.parked_s < cutoff:
                return True
        return False

    async def drain(self, timeout_s: float) -> bool:
        """Close idle connections, let busy ones finish their response, cut handshakes in
        progress; True if all closed."""
        self.stopping = True
        for handshake in list(self.handshakes):
            handshake.drop()
        for connection in list(self.connections):
            try:
                connection.close_when_idle()
            except Exception:  # one broken connection must not stop the others' drain
                _error_log.exception("error closing a connection during shutdown")
        if not self.connections and not self.handshakes:
            return True
        self._all_closed = asyncio.Event()
        try:
            await asyncio.wait_for(self._all_closed.wait(), timeout_s)
        except TimeoutError:
            return False
        return True


def _decrement(counts: dict[str, int], key: str) -> None:
    count = counts.get(key, 0) - 1
    if count > 0:
        counts[key] = count
    else:
        counts.pop(key, None)  # the dicts hold only clients with something open


async def start_servers(
    loop: asyncio.AbstractEventLoop, shared: WorkerShared, sockets: list[socket.socket]
) -> Acceptor:
    def factory() -> HttpConnection:
        return HttpConnection(shared)

    shared.loop = loop
    shared.access_log.schedule = loop.call_soon  # a turn's access-log lines in one write
    config = shared.config
    # Loaded by the master (at start, again on HUP) and inherited through fork; loaded again
    # by the worker when the files change (Acceptor.tls_context); never read per connection.
    context = tls.worker_context(config)
    tls_factory = None
    if context is not None:
        timeout_s = config.limits.tls_handshake_timeout_s

        def tls_factory(context: tls.Context) -> TlsHandshake:
            return TlsHandshake(shared, context, timeout_s, factory)

    bound_unsent_bytes(sockets, config.limits.socket_unsent_max_bytes)
    acceptor = Acceptor(loop, factory, sockets, config.listen_backlog, tls_factory, context)
    shared.acceptor = acceptor
    await acceptor.start()
    return acceptor


def bound_unsent_bytes(sockets: list[socket.socket], limit: int) -> None:
    """TCP_NOTSENT_LOWAT on each TCP listener (accepted connections inherit it): how much a
    connection's kernel send buffer may hold that the client has not been sent yet. 0 is set
    too: it gives the kernel's own setting back (net.ipv4.tcp_notsent_lowat) to a listener an
    earlier generation of workers bound, after a reload that turned the limit off."""
    for sock in sockets:
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            continue
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, limit)
        except OSError as exc:
            # A kernel without the option (before Linux 3.12, some sandboxes) serves on as
            # before: the bound is hardening, not something to refuse to start over.
            if limit:
                _error_log.warning(
                    "socket_unsent_max_bytes not applied to %s: %s", sock.getsockname(), exc
                )

"""One client connection on the event loop: feeds the parser, starts WSGI calls, writes what
they answer, runs the connection's timers and its flow control both ways.

Requests of a connection are answered strictly in order, one app call at a time: while a call
runs, the parser is not asked for the next head, and pipelined bytes wait (bounded) in its
buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, cast

from hardserve import tls
from hardserve.http import reasons
from hardserve.http.deadlines import RateWindow
from hardserve.http.environ import Addresses, build_environ, connection_addresses
from hardserve.http.forwarded import resolve_trusted, resolve_untrusted
from hardserve.http.parser import (
    CLOSED,
    NEED_DATA,
    PAUSED,
    BodyData,
    EndOfBody,
    Refusal,
    RequestHead,
    RequestParser,
)
from hardserve.http.proxy_protocol import ProxyHeaderReader, ProxyProtocolError
from hardserve.http.reasons import Reason
from hardserve.http.response import (
    APP_SET_DATE,
    APP_SET_REQUEST_ID,
    APP_SET_SERVER,
    ResponseFramer,
    error_response,
)
from hardserve.observe.logs import incoming_request_id
from hardserve.worker.body import EMPTY_INPUT, BodyChannel, BodyReadError, InputStream
from hardserve.worker.call import ClientGone, Output, WsgiCall, output_size

if TYPE_CHECKING:
    from hardserve.worker.server import WorkerShared

_error_log = logging.getLogger("hardserve.error")
_access_log = logging.getLogger("hardserve.access")

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_DATE_AND_SERVER = APP_SET_DATE | APP_SET_SERVER
_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a reset
# During a graceful stop, how long a connection that has not sent a byte yet is kept open for
# the request its client may be sending at this moment.
_FIRST_REQUEST_GRACE_S = 1.0


def _add_output(outbox: list[bytes], data: Output) -> None:
    """Put a response piece (bytes, or a list of them) at the end of a connection's outbox."""
    if isinstance(data, bytes):
        outbox.append(data)
    else:
        outbox.extend(data)


def _reset_on_close(fd: int) -> None:
    """Make the socket's close send a reset: a closed socket keeps sending what its kernel
    buffer holds (up to megabytes) to a slow reader for as long as it takes. nginx does the same
    (reset_timedout_connection). SO_LINGER belongs to the socket, so setting it through any
    descriptor of it (a duplicate too) holds for the last close."""
    with contextlib.suppress(OSError):
        sock = socket.socket(fileno=os.dup(fd))
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        finally:
            sock.close()


class WriteGate:
    """How many response bytes the app's thread may queue for the loop. A thread that must not
    hand over more either waits (`acquire`: the write() callable) or parks its response and
    gives its thread back (`try_acquire`: a response iterable).

    A plain lock guards the counts, and a thread that must wait sleeps on a lock of its own,
    made only then. A Condition per connection cost about 4 us to build and 1 KiB to keep, for
    a wait that most connections never make."""

    __slots__ = ("_limit", "_lock", "_paused", "_queued", "_waiters", "closed")

    def __init__(self, limit: int) -> None:
        self._lock = threading.Lock()
        self._limit = limit
        self._queued = 0
        self._paused = False
        self._waiters: list[threading.Lock] | None = None
        self.closed = False

    def try_acquire(self, count: int) -> bool:
        """Take room for `count` bytes, or False at once: the queue is at its limit (the loop
        has not written what the thread handed over) or the transport has asked us to pause
        (the client is not reading). Either way the caller parks its response, and the loop
        queues it again once there is room (HttpConnection._loop_park, resume_writing).

        Parking costs a hand-off to the loop and back. Waiting here for the loop instead cost
        a streaming response about three context switches per write_queue_bytes, and held a
        thread that other requests were queued for (bench/NOTES.md)."""
        with self._lock:
            if self.closed:
                raise ClientGone("connection closed")
            if self._queued < self._limit and not self._paused:
                self._queued += count
                return True
            return False

    def acquire(self, count: int, timeout: float) -> None:
        """Take room for `count` bytes, waiting up to `timeout` for the loop to write (and the
        client to read) what is queued."""
        lock = self._lock
        deadline = 0.0
        while True:
            with lock:
                if self.closed:
                    raise ClientGone("connection closed")
                if self._queued < self._limit and not self._paused:
                    self._queued += count
                    return
                now = time.monotonic()
                if not deadline:
                    deadline = now + timeout
                elif now >= deadline:
                    raise ClientGone(f"client did not read the response for {timeout:g} s")
                waiter = threading.Lock()
                waiter.acquire()
                if self._waiters is None:
                    self._waiters = [waiter]
                else:
                    self._waiters.append(waiter)
            # Released by _wake_all (release, pause, resume, close), or the time runs out.
            if not waiter.acquire(timeout=max(deadline - time.monotonic(), 0.0)):
                with lock:
                    if self._waiters is not None and waiter in self._waiters:
                        self._waiters.remove(waiter)

    def _wake_all(self) -> None:
        """With the lock held: every waiting thread looks again."""
        waiters = self._waiters
        if waiters:
            self._waiters = None
            for waiter in waiters:
                waiter.release()

    @property
    def blocked(self) -> bool:
        """On the loop: whether a write would have to wait now."""
        return self._paused or self._queued >= self._limit

    def release(self, count: int) -> None:
        with self._lock:
            self._queued -= count
            if self._queued < self._limit and not self._paused:
                self._wake_all()

    def pause(self) -> None:
        with self._lock:
            self._paused = True  # a thread waiting in acquire waits on, for resume or close

    def resume(self) -> None:
        with self._lock:
            self._paused = False
            self._wake_all()

    def close(self) -> None:
        with self._lock:
            self.closed = True
            self._wake_all()


class HttpConnection(asyncio.Protocol):
    # Slots: an idle keep-alive connection is mostly this object, and with some fifty
    # attributes its __dict__ alone took 1.6 KiB. "__dict__" stays so that an attribute not
    # listed here still works (it gets a dict of its own, made when first set).
    __slots__ = (
        "__dict__",
        "_addresses",
        "_body",
        "_body_last_at",
        "_body_received",
        "_body_window",
        "_call",
        "_call_active",
        "_call_deferred",
        "_client_key",
        "_closing",
        "_continue_sent",
        "_deadline",
        "_deadline_callback",
        "_drained",
        "_draining",
        "_framer",
        "_gate",
        "_head",
        "_head_deadline_armed",
        "_input",
        "_limits",
        "_loop",
        "_must_close",
        "_outbox",
        "_outbox_gated",
        "_parked",
        "_parser",
        "_peer",
        "_peer_eof",
        "_peer_trusted",
        "_pool",
        "_proxy_reader",
        "_reading_paused",
        "_refused",
        "_response_started",
        "_send_progress",
        "_send_progress_at",
        "_send_timer",
        "_send_window",
        "_server_addr",
        "_shared",
        "_slot_held",
        "_started_at",
        "_stats",
        "_timer",
        "_timer_at",
        "_tls_environ",
        "_transport",
        "_url_scheme",
        "_waited_since",
        "_waiting",
        "_writing_paused",
        "_written",
        "can_sendfile",
        "client_addr",
        "counted_address",
        "environ",
        "request_id",
        "requests_served",
    )

    def __init__(self, shared: WorkerShared) -> None:
        self._shared = shared
        self._stats = shared.stats
        self._limits = shared.config.limits
        self._pool = shared.pool
        self._parser = RequestParser(
            self._limits,
            refuse_underscore_headers=shared.config.underscore_headers == "refuse",
            path_policy=shared.path_policy,
        )
        self._transport: asyncio.Transport | None = None
        self._peer: tuple[str, int] | None = None
        self._server_addr: tuple[str, int] = ("", 0)
        self._addresses: Addresses = ("", "0", "", "")
        # Whether the peer is a trusted proxy (forwarded_allow_ips), asked once per connection.
        self._peer_trusted = False
        self._url_scheme = "http"
        self._tls_environ: dict[str, str] | None = None
        self.can_sendfile = False
        self._gate = WriteGate(self._limits.write_queue_bytes)
        # Response pieces handed over in the current batch, not yet written (_loop_write).
        self._outbox: list[bytes] | None = None
        self._outbox_gated = 0
        # The worker's loop when it is known (asyncio.get_running_loop costs a getpid call).
        self._loop = shared.loop or asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        # When _timer fires, kept here: asking the handle (when()) touched one more object per
        # request, a cache miss with 1,024 connections (0.24 µs per request in perf).
        self._timer_at = 0.0
        self._deadline = 0.0
        self._deadline_callback: Callable[[], None] | None = None
        self._head_deadline_armed = False
        self._closing = False
        self._must_close = False
        self._refused = False  # the parser refused: it is never asked for another event
        self._peer_eof = False
        self._reading_paused = False
        self._writing_paused = False
        # The request in progress.
        self._head: RequestHead | None = None
        # Waiting for room in the pool (Pool.wait_for_room), its request unread in the parser;
        # since when, until its head is read or its turn ends (0.0: it did not wait).
        self._waiting = False
        self._waited_since = 0.0
        self._call_active = False
        self._body: BodyChannel | None = None
        self._continue_sent = False
        self._response_started = False
        self._draining = False
        self._drained = 0
        self._started_at = 0.0
        self._framer: ResponseFramer | None = None
        self._input: InputStream | None = None
        self._call: WsgiCall | None = None
        self._slot_held = False  # this connection's call counts against the pool's limit
        self._call_deferred = False  # the call waits on the loop for its body
        # The continuation of a parked response (WsgiCall.resume): queued again to the pool
        # when the client has read (resume_writing) or the connection closes.
        self._parked: Callable[[], None] | None = None
        self._body_last_at = 0.0  # when the last body bytes arrived (loop time)
        self._client_key: str | None = None  # the address its in-flight request is counted under
        self.counted_address: str | None = None  # the address it is counted under as a connection
        self._proxy_reader: ProxyHeaderReader | None = None  # until the PROXY header is read
        self.requests_served = 0
        # For the access log and the echoed X-Request-ID: the request's ID, its client's address
        # as resolved (a trusted proxy's claim, else the peer) and its environ.
        self.request_id = ""
        self.client_addr = ""
        self.environ: dict[str, Any] | None = None
        # Minimum rates: the request body being received, the response being read.
        self._body_window: RateWindow | None = None
        self._body_received = 0
        self._send_window: RateWindow | None = None
        self._send_timer: asyncio.TimerHandle | None = None
        self._written = 0  # response bytes handed to the transport
        self._send_progress = 0  # bytes the transport had flushed at the last check
        self._send_progress_at = 0.0  # when that count last grew

    @property
    def peer(self) -> tuple[str, int] | None:
        return self._peer

    @property
    def running_call(self) -> WsgiCall | None:
        """The call a pool thread is running for this connection, if any."""
        call = self._call
        if self._call_active and call is not None and call.thread_id:
            return call
        return None

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they implement its interface.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        transport.set_write_buffer_limits(high=self._limits.write_buffer_bytes)
        sockname = transport.get_extra_info("sockname")
        if isinstance(sockname, tuple):
            self._server_addr = (str(sockname[0]), int(sockname[1]))
        elif isinstance(sockname, str):
            self._server_addr = (sockname, 0)
        peer = transport.get_extra_info("peername")
        self._set_peer((str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else None)
        if transport.get_extra_info("sslcontext") is None:
            # The socket itself is asked for only when a file is sent (_loop_hand_over_fd):
            # uvloop builds it with another getsockname call, on every connection otherwise.
            self.can_sendfile = True
        else:
            self._url_scheme = "https"
            # The peer's certificate is fixed for the connection: read once, not per request.
            self._tls_environ = tls.environ_keys(transport.get_extra_info("peercert"))
        shared = self._shared
        shared.connection_opened(self)
        if shared.proxy_peers is not None:
            # The client is whoever the PROXY header names; it is counted once that is read.
            if not shared.proxy_peers.contains(self._peer[0] if self._peer else None):
                self._log_refusal(reasons.PROXY_PEER_UNTRUSTED, "not in proxy_allow_ips", b"")
                self._closing = True
                transport.abort()
                return
            self._proxy_reader = ProxyHeaderReader()
        elif not shared.admit_client(self, self._peer):
            self._closing = True
            transport.abort()
            return
        self._arm_timer(self._limits.keepalive_timeout_s, self._on_idle_timeout)

    def data_received(self, data: bytes) -> None:
        self._stats.bytes_received += len(data)
        if self._closing:
            return
        if self._proxy_reader is not None:
            data = self._take_proxy_header(data)
            if not data:
                return
        self._parser.feed(data)
        if not self._head_deadline_armed and self._head is None and not self._draining:
            self._head_deadline_armed = True
            self._arm_timer(self._limits.head_timeout_s, self._on_head_timeout)
        self._process()

    def eof_received(self) -> bool:
        self._peer_eof = True
        if self._closing:
            return False  # lingering after our last response: the client is done too
        reader = self._proxy_reader
        if reader is not None:
            if reader.buffered_bytes:
                self._log_refusal(reasons.PROXY_HEADER_INVALID, "closed inside the header", b"")
            self._close()
            return False
        call = self._call
        if self._call_active and call is not None and not call.thread_id:
            # Half-closed while its request waits for a thread. The client may still read the
            # answer (`printf ... | nc -N`), so the request is served; but most such clients
            # have left, and their requests must not make live clients get 503: the slot is
            # given back now. The queue may then hold more than pool_queue_max, by at most the
            # number of half-closed connections.
            self._release_slot()
        self._parser.feed_eof()
        self._process()
        # Keep our side open: a client may half-close after its request and still read the answer.
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._withdraw_queued_call()
        self._stop_waiting()
        self._closing = True
        self._drop_timer()
        self._stop_send_watch()
        # A call still running keeps counting against its client until it ends (_loop_finish
        # or _loop_abort): a client must not get past its in-flight cap by resetting.
        self._close_gate()
        if self._body is not None:
            self._body.fail(BodyReadError("client closed the connection"))
        self._transport = None
        # Break the cycle through the last call (call -> sink -> connection), so the connection
        # is freed by its reference count when the loop drops it, not by a GC pass.
        self._call = None
        self._shared.connection_closed(self)

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._gate.pause()
        self._watch_send()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._gate.resume()
        self._stop_send_watch()
        if self._parked is not None:
            self._unpark()
        if not self._call_active:
            self._process()

    def _set_peer(self, peer: tuple[str, int] | None) -> None:
        """The client's address (the socket's peer, or what a PROXY header says), and what each
        request needs of it, worked out once here rather than on every request: the environ's
        address strings, and whether the peer is a trusted proxy (forwarded_allow_ips)."""
        self._peer = peer
        self._addresses = connection_addresses(peer, self._server_addr)
        self._peer_trusted = self._shared.forwarders.contains(peer[0] if peer else None)

    # -- reading and dispatching -------------------------------------------------------------

    def _take_proxy_header(self, data: bytes) -> bytes:
        """Feed the PROXY protocol reader; the bytes after the header once it is complete."""
        reader = self._proxy_reader
        assert reader is not None
        try:
            header = reader.feed(data)
        except ProxyProtocolError as exc:
            self._log_refusal(reasons.by_code(exc.code), exc.detail, b"")
            self._close()
            return b""
        if header is None:
            if not self._head_deadline_armed:
                self._head_deadline_armed = True  # the header is bounded by the head deadline
                self._arm_timer(self._limits.head_timeout_s, self._on_head_timeout)
            return b""
        self._proxy_reader = None
        if not header.local and header.source_addr is not None:
            self._set_peer((header.source_addr, header.source_port or 0))
        if not self._shared.admit_client(self, self._peer):
            self._close()
            return b""
        if not header.remainder:
            self._head_deadline_armed = False
            self._arm_timer(self._limits.keepalive_timeout_s, self._on_idle_timeout)
        return header.remainder

    def _process(self) -> None:
        parser = self._parser
        while not self._closing and not self._refused:
            if (self._head is None and (self._writing_paused or self._call_active)) or (
                self._call_active and parser.message_done
            ):
                # The app is still answering, or its response is still leaving: the next
                # request waits in the parser's buffer, and past the pipeline limit the socket
                # is not read (TCP pushes back) until the response is out.
                if parser.buffered_bytes > self._limits.pipeline_buffer_bytes:
                    self._pause_reading()
                return
            if self._reading_paused and self._body is not None:
                return
            if self._head is None and not self._draining and self._must_wait_for_room():
                return
            event = parser.next_event()
            if event is NEED_DATA:
                self._resume_reading()
                return
            if isinstance(event, BodyData):
                self._on_body_data(event.data)
            elif isinstance(event, RequestHead):
                self._started_at = self._waited_since or time.monotonic()
                self._waited_since = 0.0
                self._start_request(event)
            elif isinstance(event, EndOfBody):
                self._body_window = None
                if self._body is not None:
                    self._body.finish()
                    self._body = None
                if self._call_deferred:
                    self._submit_call()
            elif event is PAUSED:
                if self._call_active:
                    return
                # An unread body was drained after its response: on to the next request.
                self._draining = False
                self._body_window = None
                self._next_cycle()
            elif isinstance(event, Refusal):
                self._on_refusal(event)
                return
            elif event is CLOSED:
                self._close()
                return

    def _must_wait_for_room(self) -> bool:
        """Before a request is read: whether it waits for room in the pool, unread, because the
        pool has all the calls it prepares at once (Pool.must_wait). Only a whole head waits
        (its empty line has arrived): half a head is read as usual, and holds no place in the
        queue while its client takes its time. In its turn (take_turn) it is read."""
        if self._waited_since:
            if self._waiting and self._parser.buffered_bytes > self._limits.pipeline_buffer_bytes:
                self._pause_reading()
            return self._waiting
        if not self._pool.must_wait() or not self._parser.head_arrived():
            return False
        self._waiting = True
        self._waited_since = time.monotonic()
        self._pool.wait_for_room(self)
        return True

    def take_turn(self) -> None:
        """The pool has room (Pool._admit_waiting): read the request and prepare its call.
        While it runs, _waited_since says the turn is taken (the request does not queue again
        behind those still waiting); reading the head clears it, and so does the end of the
        turn when there was no head after all (only blank lines)."""
        self._waiting = False
        if not self._closing:
            self._process()
        self._waited_since = 0.0

    def _stop_waiting(self) -> None:
        if self._waiting:
            self._waiting = False
            self._pool.stop_waiting(self)

    def _shed_waiting(self) -> None:
        """The request waited for room past its deadline (queue_timeout_s, or head_timeout_s,
        whichever comes first): 503, and the connection closes, since what the client sent
        was never read."""
        self._stop_waiting()
        waited = time.monotonic() - self._waited_since
        self._must_close = True
        self._log_refusal(reasons.QUEUE_TIMEOUT, f"waited {waited:.1f} s for room, unread", b"")
        self._write_refusal(reasons.QUEUE_TIMEOUT, retry_after=1)

    def _on_body_data(self, data: bytes) -> None:
        self._body_received += len(data)
        if self._body is not None:
            if self._call_deferred:
                self._body_last_at = self._loop.time()
            if self._body.push(data):
                self._pause_reading()
                if self._call_deferred:
                    self._submit_call()  # a large body: the app reads the rest as it streams
            return
        # Draining the body of a request whose app did not read it.
        self._drained += len(data)
        if self._drained > self._limits.drain_max_bytes:
            self._close()

    def _pause_reading(self) -> None:
        if not self._reading_paused and self._transport is not None:
            self._reading_paused = True
            self._transport.pause_reading()
            if self._body_window is not None:
                # Waiting for the app, not for the client: this time does not count.
                self._body_window.stop(self._loop.time(), self._body_received)

    def _resume_reading(self) -> None:
        if self._reading_paused and self._transport is not None and not self._closing:
            self._reading_paused = False
            self._transport.resume_reading()
            if self._body_window is not None:
                self._start_body_window()

    def _on_body_consumed(self) -> None:
        """The app's reads made room in the body buffer (runs on the loop)."""
        self._resume_reading()
        self._process()

    # -- one request -------------------------------------------------------------------------

    def _start_request(self, head: RequestHead) -> None:
        """Prepare the call for `head`, read at _started_at (or begun waiting for room then),
        and submit it."""
        self._cancel_timer()
        self._head = head
        self._head_deadline_armed = False
        self._continue_sent = False
        self._response_started = False
        shared = self._shared
        if self._peer_trusted:
            peer = self._peer
            peer_addr = peer[0] if peer else None
            # X-Request-ID is taken only from a trusted proxy, and only short and plain.
            request_id = incoming_request_id(head.headers)
            resolution = resolve_trusted(
                peer_addr, head.headers, shared.forwarders, family=shared.forwarded_headers
            )
        else:
            request_id = None
            resolution = resolve_untrusted(head.headers)
        self.request_id = request_id or shared.request_ids.new()
        if resolution.error is not None:
            self._refuse_now(
                reasons.FORWARDED_INVALID, resolution.detail, self._request_line(), retry_after=None
            )
            return
        if head.has_body:
            self._body_received = 0
            self._body_window = RateWindow(
                self._limits.body_min_rate_bytes_s, self._limits.body_rate_grace_s
            )
            if not head.expect_continue:
                # With Expect: 100-continue the client rightly sends nothing before our 100.
                self._start_body_window()
            first_read = self._request_continue if head.expect_continue else None
            self._body = BodyChannel(
                self._limits.body_buffer_bytes,
                self._limits.body_idle_timeout_s,
                self._request_resume,
                first_read,
                self._log_body_timeout,
            )
            self._input = InputStream(self._body)
            wsgi_input: Any = self._input
        else:
            self._body = None
            self._input = None
            wsgi_input = EMPTY_INPUT
        environ = build_environ(
            head,
            shared.environ_constants,
            addresses=self._addresses,
            url_scheme=self._url_scheme,
            wsgi_input=wsgi_input,
            resolution=resolution,
        )
        if self._tls_environ is not None:
            environ.update(self._tls_environ)
        # The app sees the ID the server logs and echoes, whatever the client sent.
        environ["hardserve.request_id"] = environ["HTTP_X_REQUEST_ID"] = self.request_id
        self.environ = environ
        framer = ResponseFramer(
            is_head=head.method == b"HEAD",
            http11=head.http_version == b"1.1",
            client_keep_alive=head.keep_alive and not shared.stopping,
        )
        self._framer = framer
        call = WsgiCall(shared.app, environ, framer, self)
        self.client_addr = client_key = environ["REMOTE_ADDR"]
        if not shared.client_request_started(client_key):
            self._refuse_now(reasons.CLIENT_IN_FLIGHT, "client in-flight limit", b"", retry_after=1)
            return
        self._client_key = client_key
        self._call = call
        self._call_active = True
        if head.has_body and not head.expect_continue:
            # The call waits on the loop until the body is complete or fills the body buffer.
            # A slow or stalled upload then holds no pool thread, only its bounded buffer, and
            # a body refused before that point (bad chunk, over the limit, too slow) is
            # answered by the server without the app ever seeing the request.
            self._call_deferred = True
            self._body_last_at = self._loop.time()
            self._arm_body_timer()
            return
        self._submit_call(self._started_at)

    def _submit_call(self, queued_at: float = 0.0) -> None:
        """Submit the prepared call; it has waited for a thread since `queued_at` (0.0: now;
        a request that waited for room has waited since then)."""
        self._call_deferred = False
        call = self._call
        assert call is not None
        call.queued_at = queued_at or time.monotonic()
        if not self._pool.submit(call.run):
            self._call_active = False
            self._call = None
            self._end_client_request()
            self._refuse_now(reasons.POOL_SATURATED, "pool saturated", b"", retry_after=1)
            return
        self._slot_held = True

    def _drop_deferred_call(self) -> None:
        """The request is refused before its call reached the pool: the app never sees it."""
        self._call_deferred = False
        self._call_active = False
        self._call = None
        self._end_client_request()

    def _end_client_request(self) -> None:
        """The call is over (or withdrawn): the client's in-flight count goes down, once."""
        key = self._client_key
        if key is not None:
            self._client_key = None
            self._shared.client_request_ended(key)

    def _release_slot(self) -> None:
        """Give the call's admission slot back to the pool, once."""
        if self._slot_held:
            self._slot_held = False
            self._pool.job_done()

    def _withdraw_queued_call(self) -> bool:
        """The connection was lost (reset, error) while its request still waited for a pool
        thread: withdraw the call at once, so its slot goes to a client that is still there.
        A half-close does not count: a client may shut down its sending side after the request
        (`printf ... | nc -N`) and still read the answer. A call already running finishes."""
        call = self._call
        if not self._call_active or call is None or not call.cancel():
            return False
        self._call_active = False
        self._release_slot()
        self._end_client_request()
        head = self._head
        if head is not None:
            duration = time.monotonic() - self._started_at
            self._shared.request_finished(
                self, head, self._framer, "client_gone_before_start", duration
            )
        if not self._closing:
            self._closing = True
            self._close_gate()
            if self._transport is not None:
                self._transport.close()
        return True

    def shed_if_queued_since(self, cutoff: float) -> None:
        """Answer 503 to the request if it has waited for a pool thread since before `cutoff`
        (time.monotonic()); the app never sees it."""
        if self._waiting:
            if self._waited_since <= cutoff:
                self._shed_waiting()
            return
        call = self._call
        if not self._call_active or call is None or self._started_at > cutoff:
            return
        if self._call_deferred:
            return  # still receiving its body: not in the queue
        if not call.cancel():
            return  # a thread took it meanwhile
        self._call_active = False
        self._release_slot()
        self._end_client_request()
        head = self._head
        framer = self._framer
        if head is not None:
            if framer is not None:
                framer.status_code = reasons.QUEUE_TIMEOUT.status  # answered below
            duration = time.monotonic() - self._started_at
            self._shared.request_finished(self, head, framer, "queue_timeout", duration)
        waited = f"queued {time.monotonic() - self._started_at:.1f} s"
        self._refuse_now(reasons.QUEUE_TIMEOUT, waited, self._request_line(), retry_after=1)
        if not self._closing:
            self._process()  # _refuse_now went on to the next cycle; read what is buffered

    def _request_continue(self) -> None:
        """On the app's thread, at its first wsgi.input read."""
        self._pool.call_in_loop(self._send_continue)

    def _send_continue(self) -> None:
        if self._transport is not None and not self._response_started and not self._continue_sent:
            self._continue_sent = True
            self._stats.bytes_sent += len(_CONTINUE)
            self._transport.write(_CONTINUE)
            if self._body_window is not None and not self._reading_paused:
                self._start_body_window()

    def _request_resume(self) -> None:
        self._pool.call_in_loop(self._on_body_consumed)

    # -- the ResponseSink the app's thread writes through ------------------------------------

    def fixed_headers(self, app_set: int) -> bytes:
        fixed = self._shared.fixed_headers.variants[app_set & _DATE_AND_SERVER]
        if app_set & APP_SET_REQUEST_ID:
            return fixed  # the app's own X-Request-ID is sent instead
        return fixed + b"X-Request-ID: " + self.request_id.encode("ascii") + b"\r\n"

    def _request_id_line(self) -> bytes:
        """The X-Request-ID line of a response the server writes itself (a refusal, a 500),
        when there is a request."""
        if self._head is None or not self.request_id:
            return b""
        return b"X-Request-ID: " + self.request_id.encode("ascii") + b"\r\n"

    def server_error(self, status: int, body: bytes) -> bytes:
        head = self._head
        return error_response(
            status,
            HTTPStatus(status).phrase,
            body,
            fixed_headers=self._shared.fixed_headers.value + self._request_id_line(),
            close=True,
            is_head=head is not None and head.method == b"HEAD",
        )

    def response_must_close(self) -> bool:
        """On the app's thread, as the head is written: True when the connection will not be
        reused, because it has served its share of requests or because the request body
        cannot be skipped cheaply. Saying so in the head lets the client know before it sends
        its next request into a closing connection."""
        if self.requests_served + 1 >= self._limits.keepalive_requests_max:
            return True  # the connection's last request
        if self._shared.stopping:
            return True  # the worker is stopping: the client must not send another
        head = self._head
        stream = self._input
        if head is None or not head.has_body or stream is None or stream.at_end:
            return False
        if head.expect_continue and not stream.started:
            return True  # the client waits for a 100 that will not come
        if head.content_length is None:
            return True  # chunked: how much is left is unknown
        return head.content_length - stream.consumed > self._limits.drain_max_bytes

    def send(self, data: Output) -> None:
        size = output_size(data)
        if not size:
            return
        # The loop drops a client that stops reading at write_timeout_s (and logs why), which
        # releases this wait; the thread's own timeout is only a backstop behind it.
        self._gate.acquire(size, 2 * self._limits.write_timeout_s + 1.0)
        self._pool.write_in_loop(size, True, self._loop_write, data, size)

    def try_send(self, data: Output) -> bool:
        """As send, but False instead of waiting, for the loop or for the client: the caller
        parks its response (WsgiCall.park) and gives its thread back."""
        size = output_size(data)
        if not size:
            return True
        if not self._gate.try_acquire(size):
            return False
        self._pool.write_in_loop(size, True, self._loop_write, data, size)
        return True

    def park(self, resume: Callable[[], None]) -> None:
        """On the app's thread, its last act for the call: the loop keeps `resume` until the
        client has read, and the call stops counting against the pool's admission."""
        self._pool.call_in_loop(self._loop_park, resume)

    def finish(self, data: Output, keep_alive: bool, outcome: str) -> None:
        # Counted in the burst, but the thread does not wait: it is done with this call.
        size = output_size(data)
        self._pool.write_in_loop(size, False, self._loop_finish, data, size, keep_alive, outcome)

    def abort(self, outcome: str) -> None:
        self._pool.call_in_loop(self._loop_abort, outcome)

    def sendfile(self, fileno: int, offset: int, count: int) -> int:
        """Send part of a file with os.sendfile from the app's thread.

        This is the one socket write outside the loop: asyncio and uvloop refuse to watch a
        transport's descriptor. It is made safe by order: the loop first lets every queued byte
        reach the kernel and hands over a duplicate of the descriptor (so a close on the loop
        cannot let the number be reused under us); the loop writes nothing else on this
        connection until the call finishes.
        """
        handed: list[int] = []
        ready = threading.Event()
        self._pool.call_in_loop(self._loop_hand_over_fd, handed, ready)
        timeout = self._limits.write_timeout_s
        if not ready.wait(timeout) or not handed:
            raise ClientGone("connection closed before the file could be sent")
        fd = handed[0]
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        # The same minimum send rate as the loop applies to buffered responses, counted from the
        # first time the socket is full: what the kernel's buffers took before that (megabytes
        # on a fast link) is not the client reading. From then on all time counts as waiting
        # on the client: os.sendfile only takes time when the socket is full.
        window = RateWindow(self._limits.send_min_rate_bytes_s, self._limits.send_rate_grace_s)
        sent = 0
        try:
            while sent < count:
                try:
                    written = os.sendfile(fd, fileno, offset + sent, count - sent)
                except BlockingIOError:
                    now = time.monotonic()
                    window.start(now, sent)  # only the first call starts the clock
                    wait_s = min(timeout, window.deadline(now, sent) - now)
                    ready_fds = poller.poll(wait_s * 1000) if wait_s > 0 else []
                    if not ready_fds:
                        stalled = wait_s >= timeout
                        reason = reasons.SEND_TIMEOUT if stalled else reasons.SEND_TOO_SLOW
                        detail = f"{sent} file bytes sent"
                        self._pool.call_in_loop(
                            self._log_refusal, reason, detail, self._request_line()
                        )
                        _reset_on_close(fd)
                        raise ClientGone(f"client read too slowly ({reason.code})") from None
                    continue
                except OSError as exc:
                    raise ClientGone(str(exc)) from exc
                if written == 0:
                    break  # the file is shorter than it was when measured
                sent += written
        finally:
            os.close(fd)
            if sent:
                self._pool.call_in_loop(self._count_sent, sent)
        return sent

    def _count_sent(self, count: int) -> None:
        """On the loop: bytes a pool thread sent with sendfile."""
        self._stats.bytes_sent += count

    # -- loop side of the sink ---------------------------------------------------------------

    def _loop_write(self, data: Output, size: int) -> None:
        """Queue response bytes in the outbox, written when the hand-off batch ends or before
        the next step of this connection. uvloop writes each write() to the socket at once
        while its own buffer is empty: a stream's pieces handed over together were one system
        call each (16 for a 1 MiB stream of 64 KiB pieces), and are one writev now."""
        if self._transport is None or self._closing:
            self._gate.release(size)
            return
        self._response_started = True
        self._written += size
        self._stats.bytes_sent += size
        outbox = self._outbox
        if outbox is None:
            self._outbox = outbox = []
            self._pool.at_batch_end(self._flush_outbox)
        _add_output(outbox, data)
        self._outbox_gated += size

    def _flush_outbox(self) -> None:
        """Write what the outbox holds and give its room back to the app's thread. Every step of
        the loop that follows a write on this connection (park, finish, abort, a hand-over of
        the socket) calls it first, so the outbox is always empty outside a hand-off batch."""
        outbox = self._outbox
        if outbox is None:
            return
        self._outbox = None
        gated, self._outbox_gated = self._outbox_gated, 0
        transport = self._transport
        if transport is not None and not self._closing:
            if len(outbox) == 1:
                transport.write(outbox[0])
            else:
                transport.writelines(outbox)
        self._gate.release(gated)

    def _loop_park(self, resume: Callable[[], None]) -> None:
        self._flush_outbox()
        # A parked call holds no thread: it must not count against threads + pool_queue_max, or
        # parked slow readers would fill the pool and get everyone else 503. Its deadlines (the
        # send watch, started at pause_writing) keep running meanwhile.
        self._release_slot()
        self._parked = resume
        if self._gate.closed or not self._gate.blocked:
            # The usual case for a call that parked on a full queue: the writes it handed over
            # came through the same road before this, so the queue is empty now (unless the
            # transport paused meanwhile). Or the client read, or left, while it was on its way.
            self._unpark()

    def _unpark(self) -> None:
        """Queue the parked continuation again, behind what is already queued. It was admitted
        before, so the saturation check does not apply; parked calls are bounded by the
        connections. A continuation of a closed connection fails its pending write at once and
        closes the app's iterable on that pool thread (app code never runs on the loop)."""
        resume, self._parked = self._parked, None
        if resume is not None:
            self._pool.resubmit(resume)
            self._slot_held = True

    def _close_gate(self) -> None:
        self._gate.close()
        if self._parked is not None:
            self._unpark()

    def _loop_hand_over_fd(self, handed: list[int], ready: threading.Event) -> None:
        self._flush_outbox()
        transport = self._transport
        if transport is None or self._closing:
            ready.set()
            return
        if transport.get_write_buffer_size():
            asyncio.get_running_loop().call_later(0.001, self._loop_hand_over_fd, handed, ready)
            return
        sock = transport.get_extra_info("socket")  # asked once, not on every look above
        if sock is None:
            ready.set()
            return
        self._response_started = True
        handed.append(os.dup(sock.fileno()))
        ready.set()

    def _loop_finish(self, data: Output, size: int, keep_alive: bool, outcome: str) -> None:
        self._call_active = False
        self._release_slot()
        self._end_client_request()
        transport = self._transport
        head = self._head
        if transport is None or self._closing or head is None:
            return
        self._response_started = True
        self._written += size
        self._stats.bytes_sent += size
        outbox = self._outbox
        if outbox is not None:
            # Pieces of this response from the same batch are waiting: its end goes with them.
            _add_output(outbox, data)
            self._flush_outbox()
        elif isinstance(data, bytes):
            if data:
                transport.write(data)
        else:
            transport.writelines(data)
        self._shared.request_finished(
            self, head, self._framer, outcome, time.monotonic() - self._started_at, self._call
        )
        self.requests_served += 1  # after: request_finished counts the requests served before
        if not keep_alive or self._must_close or self._shared.stopping:
            self._close()
            return
        if self._body is not None:
            # The app answered without reading the whole body.
            body, self._body = self._body, None
            body.fail(BodyReadError("the response was already sent"))
            if head.expect_continue and not self._continue_sent:
                # The client is waiting for our 100 before sending the body: it will never come,
                # and reading on would take the body for the next request.
                self._close()
                return
            self._draining = True
            self._drained = 0
            self._resume_reading()
            self._process()
            return
        self._next_cycle()

    def _loop_abort(self, outcome: str) -> None:
        self._flush_outbox()
        self._call_active = False
        self._release_slot()
        self._end_client_request()
        head = self._head
        if head is not None:
            self._shared.request_finished(
                self, head, self._framer, outcome, time.monotonic() - self._started_at, self._call
            )
        transport = self._transport
        if transport is not None:
            if outcome == "app_error_after_head":
                self._close()
            else:
                self._closing = True
                transport.abort()

    def _next_cycle(self, *, process: bool = True) -> None:
        self._head = None
        self._framer = None
        # The finished request's objects are not kept while the connection waits for the next
        # one: its environ is most of an idle connection's memory, and the call refers back to
        # this connection (a cycle only the garbage collector could free).
        self._call = None
        self._input = None
        self.environ = None
        self._body_window = None
        if self._send_timer is None:
            # Each response gets its own allowance; one still leaving keeps its window.
            self._send_window = None
        self._parser.start_next_cycle()
        if self._parser.buffered_bytes:
            self._head_deadline_armed = True
            self._arm_timer(self._limits.head_timeout_s, self._on_head_timeout)
        else:
            self._arm_timer(self._limits.keepalive_timeout_s, self._on_idle_timeout)
        self._resume_reading()
        if process:
            self._process()

    # -- refusals ----------------------------------------------------------------------------

    def _on_refusal(self, refusal: Refusal) -> None:
        self._refused = True
        reason = refusal.reason
        self._log_refusal(reason, refusal.detail, refusal.request_line)
        if self._call_deferred:
            self._drop_deferred_call()
        if self._call_active:
            # The body went bad while the app reads it: its next read raises, and the
            # connection closes after whatever the app answers.
            self._must_close = True
            self._pause_reading()
            if self._body is not None:
                self._body.fail(
                    BodyReadError(reason.summary, status=reason.status, code=reason.code)
                )
                self._body = None
            return
        if self._draining or (self._response_started and self._head is not None):
            self._close()
            return
        self._write_refusal(reason, retry_after=None)

    def _refuse_now(
        self, reason: Reason, detail: str, request_line: bytes, *, retry_after: int | None
    ) -> None:
        self._log_refusal(reason, detail, request_line)
        if self._body is not None:
            # The body was never going to be read: close instead of keeping the connection.
            self._body = None
            self._must_close = True
        self._write_refusal(reason, retry_after=retry_after)

    def _write_refusal(self, reason: Reason, *, retry_after: int | None) -> None:
        transport = self._transport
        if transport is None:
            return
        close = reason.close or self._must_close or (self._head is not None and self._head.has_body)
        fixed = self._shared.fixed_headers.value + self._request_id_line()
        if retry_after is not None:
            fixed += b"Retry-After: %d\r\n" % retry_after
        body = f"{reason.phrase}: {reason.summary}\n".encode()
        is_head = self._head is not None and self._head.method == b"HEAD"
        response = error_response(
            reason.status,
            reason.phrase,
            body,
            fixed_headers=fixed,
            close=close,
            is_head=is_head,
        )
        self._stats.bytes_sent += len(response)
        transport.write(response)
        if close:
            self._close()
        else:
            # Called from inside _process, whose loop goes on to the next request.
            self._next_cycle(process=False)

    def _log_body_timeout(self, detail: str) -> None:
        """On the app's thread, when its wsgi.input read waited body_idle_timeout_s in vain: the
        refusal is counted and logged on the loop (the stats are the loop's alone)."""
        request_line = self._request_line()
        self._pool.call_in_loop(self._log_refusal, reasons.BODY_TIMEOUT, detail, request_line)

    def _log_refusal(self, reason: Reason, detail: str, request_line: bytes) -> None:
        """On the loop: count the refusal and write its security-log line."""
        request_id = self.request_id if self._head is not None else None
        self._shared.refused(reason, self._peer, request_line, detail, request_id)

    # -- timers and closing ------------------------------------------------------------------

    def _arm_timer(self, delay: float, callback: Callable[[], None]) -> None:
        """Run `callback` in `delay` seconds unless the timer is re-armed or cancelled first.

        A keep-alive connection re-arms its timer two or three times per request (head
        deadline, idle timeout). To keep call_later and cancel off that path, one TimerHandle
        per connection moves lazily: re-arming records the new deadline, and a handle that
        fires before it simply schedules itself again for the deadline."""
        if delay <= 0:
            self._deadline_callback = None
            return
        loop = self._loop
        deadline = loop.time() + delay
        self._deadline = deadline
        self._deadline_callback = callback
        if self._timer is None or self._timer_at > deadline:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = loop.call_at(deadline, self._on_timer)
            self._timer_at = deadline

    def _cancel_timer(self) -> None:
        self._deadline_callback = None  # the handle, if any, fires and finds nothing to do

    def _drop_timer(self) -> None:
        self._deadline_callback = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        callback = self._deadline_callback
        if callback is None:
            return
        if self._loop.time() < self._deadline:
            self._timer = self._loop.call_at(self._deadline, self._on_timer)
            self._timer_at = self._deadline
            return
        self._deadline_callback = None
        callback()

    # -- minimum rates -----------------------------------------------------------------------

    def _start_body_window(self) -> None:
        """The worker reads the body again: the client's clock runs."""
        window = self._body_window
        if window is None:
            return
        now = self._loop.time()
        window.start(now, self._body_received)
        if self._call_deferred:
            self._body_last_at = now
        self._arm_body_timer()

    def _body_deadline(self, now: float) -> float:
        """When the body timer must look again: the minimum-rate deadline and, while the call
        waits on the loop for its body (no thread reads it, so no thread times out), the idle
        deadline."""
        deadline = math.inf
        if self._body_window is not None:
            deadline = self._body_window.deadline(now, self._body_received)
        if self._call_deferred:
            deadline = min(deadline, self._body_last_at + self._limits.body_idle_timeout_s)
        return deadline

    def _arm_body_timer(self) -> None:
        now = self._loop.time()
        deadline = self._body_deadline(now)
        if deadline != math.inf:
            self._arm_timer(max(deadline - now, 0.001), self._on_body_timer)

    def _on_body_timer(self) -> None:
        window = self._body_window
        if window is None or (self._body is None and not self._draining):
            return
        if self._reading_paused:
            return  # waiting for the app; _resume_reading starts the clock again
        now = self._loop.time()
        if self._call_deferred and now >= self._body_last_at + self._limits.body_idle_timeout_s:
            detail = f"no request body received for {self._limits.body_idle_timeout_s:g} s"
            self._refuse_deferred(reasons.BODY_TIMEOUT, detail)
            return
        deadline = self._body_deadline(now)
        if now < deadline:
            self._arm_timer(deadline - now, self._on_body_timer)
            return
        reason = reasons.BODY_TOO_SLOW
        detail = f"{self._body_received} body bytes in {self._limits.body_rate_grace_s:g} s grace"
        if self._call_deferred:
            self._refuse_deferred(reason, detail)
            return
        self._log_refusal(reason, detail, self._request_line())
        self._body_window = None
        if self._draining:
            self._close()
            return
        # The app's next read raises; the connection closes after whatever it answers.
        self._must_close = True
        self._pause_reading()
        if self._body is not None:
            self._body.fail(BodyReadError(reason.summary, status=reason.status, code=reason.code))
            self._body = None

    def _refuse_deferred(self, reason: Reason, detail: str) -> None:
        """Answer a request whose body failed before its call was dispatched; the app never
        sees it, and the connection closes (the rest of the body is not read)."""
        self._log_refusal(reason, detail, self._request_line())
        self._drop_deferred_call()
        self._body_window = None
        self._refused = True
        self._write_refusal(reason, retry_after=None)

    def _watch_send(self) -> None:
        """The worker now waits for the client to read: watch its progress until it catches up
        (resume_writing) or the connection ends."""
        transport = self._transport
        if self._send_timer is not None or transport is None:
            return
        now = self._loop.time()
        flushed = self._written - transport.get_write_buffer_size()
        window = self._send_window
        if window is None:
            window = self._send_window = RateWindow(
                self._limits.send_min_rate_bytes_s, self._limits.send_rate_grace_s
            )
        window.start(now, flushed)
        self._send_progress = flushed
        self._send_progress_at = now
        self._schedule_send_check(window, now, flushed)

    def _schedule_send_check(self, window: RateWindow, now: float, flushed: int) -> None:
        stall_deadline = self._send_progress_at + self._limits.write_timeout_s
        deadline = min(window.deadline(now, flushed), stall_deadline)
        # At least 10 ms apart: a check finds the same answer sooner only by spinning.
        self._send_timer = self._loop.call_at(max(deadline, now + 0.01), self._on_send_timer)

    def _stop_send_watch(self) -> None:
        timer = self._send_timer
        if timer is None:
            return
        timer.cancel()
        self._send_timer = None
        transport = self._transport
        if self._send_window is not None and transport is not None:
            flushed = self._written - transport.get_write_buffer_size()
            self._send_window.stop(self._loop.time(), flushed)

    def _on_send_timer(self) -> None:
        self._send_timer = None
        transport = self._transport
        window = self._send_window
        if transport is None or window is None:
            return
        pending = transport.get_write_buffer_size()
        now = self._loop.time()
        flushed = self._written - pending
        if not pending and not self._writing_paused:
            window.stop(now, flushed)  # caught up
            return
        if flushed > self._send_progress:
            self._send_progress = flushed
            self._send_progress_at = now
        if now - self._send_progress_at >= self._limits.write_timeout_s:
            self._drop_slow_reader(reasons.SEND_TIMEOUT, f"{pending} bytes unread")
        elif window.too_slow(now, flushed):
            self._drop_slow_reader(reasons.SEND_TOO_SLOW, f"{flushed} bytes read")
        else:
            self._schedule_send_check(window, now, flushed)

    def _drop_slow_reader(self, reason: Reason, detail: str) -> None:
        """Cut the connection: its buffers are freed and an app thread waiting to write is
        released (its write raises, the call ends)."""
        self._log_refusal(reason, detail, self._request_line())
        self._closing = True
        self._cancel_timer()
        self._close_gate()
        transport = self._transport
        if transport is None:
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            _reset_on_close(sock.fileno())
        transport.abort()

    def _request_line(self) -> bytes:
        head = self._head
        if head is None:
            return b""
        return b"%s %s HTTP/%s" % (head.method, head.raw_target, head.http_version)

    def _on_idle_timeout(self) -> None:
        if not self._call_active and self._parser.buffered_bytes == 0:
            self._stats.timed_out("keepalive")
            self._close()

    def _on_head_timeout(self) -> None:
        if self._proxy_reader is not None:
            detail = f"header not complete in {self._limits.head_timeout_s:g} s"
            self._log_refusal(reasons.PROXY_HEADER_INVALID, detail, b"")
            self._close()
            return
        if self._waiting:
            self._shed_waiting()
            return
        if self._head is None and not self._call_active:
            self._log_refusal(reasons.HEAD_TIMEOUT, f"{self._limits.head_timeout_s:g} s", b"")
            self._write_refusal(reasons.HEAD_TIMEOUT, retry_after=None)

    def close_when_idle(self) -> None:
        """Graceful stop: close now if idle, or after the response in progress (which says
        Connection: close). A connection accepted but not yet used may have its first request
        on the way (the client connected just before the stop): it gets a short grace."""
        if self._call_active or self._draining or self._head is not None:
            self._must_close = True
        elif self._parser.buffered_bytes:
            self._must_close = True  # a head is arriving; its deadline still applies
        elif self.requests_served == 0:
            self._must_close = True
            self._arm_timer(min(self._limits.head_timeout_s, _FIRST_REQUEST_GRACE_S), self._close)
        else:
            self._close()

    def _client_sends_no_more(self) -> bool:
        """Whether the client has said it sends nothing after its request (Connection: close,
        or HTTP/1.0 without keep-alive; RFC 9112 section 9.6: it MUST NOT send another), and
        all it sent has been read. Then nothing can arrive that a lingering close would have
        to read, and the connection is closed at once: the half-close, the wait for the
        client's FIN and the read of it cost about as much as the rest of such a connection."""
        head = self._head
        parser = self._parser
        return (
            head is not None
            and not head.keep_alive
            and parser.message_done
            and not parser.buffered_bytes
        )

    def _close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._cancel_timer()
        self._close_gate()
        if self._body is not None:
            self._body.fail(BodyReadError("connection closed"))
            self._body = None
        transport = self._transport
        if transport is None:
            return
        if transport.get_write_buffer_size():
            # A closing transport flushes its buffer for as long as it takes; a client that
            # stops reading must not keep it (and its buffer) forever.
            self._watch_send()
        if self._peer_eof or not transport.can_write_eof() or self._client_sends_no_more():
            transport.close()
            return
        # Lingering close (RFC 9112 section 9.6): closing a socket with unread input makes the
        # kernel send a reset, which can destroy our last response in the client's buffers
        # before it reads it (a 413 sent while the client is still uploading, for one). So
        # shut down our sending side after the response, and read and discard what the client
        # still sends, until it closes or the linger time passes.
        try:
            transport.write_eof()
        except OSError:  # the peer is already gone (the standard loop raises ENOTCONN)
            transport.close()
            return
        if self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()
        self._arm_timer(self._limits.linger_timeout_s, transport.close)

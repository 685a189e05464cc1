"""The TLS handshake of a connection on a TLS listener, before it becomes an HttpConnection.

The loops can run the handshake inside their transport (create_server(ssl=...)), but then a
handshake that fails or never ends reaches no protocol: the loop closes the connection itself,
and nothing can log or count it. So TLS listeners are served plain, and each connection starts
as a TlsHandshake, which

- counts it from its accept, like any connection (connections_max, client_connections_max);
- runs the handshake with loop.start_tls, under its own deadline (tls_handshake_timeout_s);
- on success, hands the TLS transport to a new HttpConnection, which counts it from then on;
- on failure, reports one refusal with its reason code (WorkerShared.handshake_refused):
  tls_handshake_timeout, tls_plain_http or tls_handshake_failed (tls.handshake_refusal).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, cast

from hardserve import tls
from hardserve.http import reasons

if TYPE_CHECKING:
    from hardserve.worker.server import WorkerShared

_error_log = logging.getLogger("hardserve.error")

# tls_handshake_timeout_s 0 keeps the deadline the loops use by default.
_LOOP_DEFAULT_S = 60.0
# The loop's own deadline stays armed behind ours, later, so that ours decides and names it.
_BACKSTOP_S = 5.0


class TlsHandshake(asyncio.Protocol):
    """One connection from its accept to the end of its handshake. During start_tls it is also
    the TLS transport's protocol: asyncio delivers the first application data in the same turn
    as the end of the handshake, before start_tls returns, so what arrives before the handover
    is kept and passed on."""

    def __init__(
        self,
        shared: WorkerShared,
        context: tls.Context,
        timeout_s: float,
        make_connection: Callable[[], asyncio.Protocol],
    ) -> None:
        self._shared = shared
        self._context = context
        self._timeout_s = timeout_s or _LOOP_DEFAULT_S
        self._make_connection = make_connection
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None  # the TCP transport
        self._handshake: Coroutine[Any, Any, asyncio.Transport | None] | None = None
        self._waiting: asyncio.Future[Any] | None = None  # what start_tls awaits
        self._timer: asyncio.TimerHandle | None = None
        self.peer: tuple[str, int] | None = None
        self.counted_address: str | None = None  # the address it is counted under
        self._timed_out = False
        self._dropped = False  # closed by the worker (graceful stop): not a refusal
        self._lost = False  # the client went away
        self._concluded = False
        # Application data, and its end, delivered before the handover.
        self._early: list[bytes] = []
        self._early_eof = False

    # -- asyncio.Protocol: the TCP connection, then the TLS one until the handover -----------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.peer = (str(peer[0]), int(peer[1]))
        shared = self._shared
        shared.handshake_started(self)
        if not shared.admit_client(self, self.peer):
            self._dropped = True
            transport.abort()  # connection_lost ends it
            return
        self._timer = self._loop.call_later(self._timeout_s, self._on_deadline)
        # start_tls is driven here rather than by a Task so that the TLS protocol takes over the
        # transport before connection_made returns: a Task would first run at the next turn of
        # the loop, and uvloop starts reading as soon as connection_made returns (pausing it
        # here has no effect), so the ClientHello would reach this protocol instead.
        self._handshake = self._loop.start_tls(
            transport,
            self,
            self._context,
            server_side=True,
            ssl_handshake_timeout=self._timeout_s + _BACKSTOP_S,
        )
        self._resume()

    def data_received(self, data: bytes) -> None:
        self._early.append(data)

    def eof_received(self) -> bool | None:
        self._early_eof = True
        return None  # a TLS transport closes after the peer's close_notify anyway

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        if self._handshake is None:
            self._conclude(None, None)
        elif self._waiting is not None:
            self._waiting.cancel()  # no effect once the handshake is over: _resume concludes

    # -- the handshake -----------------------------------------------------------------------

    def _resume(self, _: object = None) -> None:
        """Run start_tls up to its next await (the end of the handshake), or to its end."""
        self._waiting = None
        handshake = self._handshake
        assert handshake is not None
        try:
            awaited = handshake.send(None)
        except StopIteration as done:
            self._conclude(done.value, None)
        except asyncio.CancelledError:
            self._conclude(None, None)
        except Exception as exc:
            self._conclude(None, exc)
        else:
            if asyncio.isfuture(awaited):
                self._waiting = awaited
                awaited.add_done_callback(self._resume)
            else:  # a bare yield: go on at the next turn
                self._loop.call_soon(self._resume)

    def _on_deadline(self) -> None:
        self._timer = None
        self._timed_out = True
        self._stop()

    def drop(self) -> None:
        """Graceful stop: a handshake in progress is cut at once."""
        self._dropped = True
        self._stop()

    def _stop(self) -> None:
        if self._transport is not None:
            self._transport.abort()
        if self._waiting is not None:
            self._waiting.cancel()  # start_tls raises CancelledError, _resume concludes

    def _conclude(self, tls_transport: asyncio.Transport | None, exc: Exception | None) -> None:
        """The handshake is over, one way or another: hand the connection over, or report why
        it failed. Once, whichever path comes first."""
        if self._concluded:
            return
        self._concluded = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        shared = self._shared
        if self._timed_out:
            detail = f"not complete in {self._timeout_s:g} s"
            shared.handshake_refused(reasons.TLS_HANDSHAKE_TIMEOUT, self.peer, detail)
        elif self._dropped or self._lost:
            pass
        elif exc is not None:
            refusal = tls.handshake_refusal(exc) if isinstance(exc, OSError) else None
            if refusal is not None:
                shared.handshake_refused(refusal[0], self.peer, refusal[1])
            elif not isinstance(exc, OSError):
                _error_log.error("TLS handshake: unexpected error", exc_info=exc)
        elif tls_transport is not None and not tls_transport.is_closing():
            self._hand_over(tls_transport)
            return
        if tls_transport is not None:
            tls_transport.abort()
        elif exc is not None and self._transport is not None:
            self._transport.abort()
        shared.handshake_ended(self, handed_over=False)

    def _hand_over(self, tls_transport: asyncio.Transport) -> None:
        self._shared.handshake_ended(self, handed_over=True)
        self._transport = None
        connection = self._make_connection()
        tls_transport.set_protocol(connection)
        connection.connection_made(tls_transport)
        early, self._early = self._early, []
        for data in early:
            connection.data_received(data)
        if self._early_eof and not connection.eof_received():
            tls_transport.close()

"""One WSGI call, run on a pool thread.

The thread never touches the socket. It talks to its connection only through the ResponseSink
it is given: `send` hands bytes to the loop (and waits while too many are queued, so a slow
reader holds this thread for bounded time and no unbounded memory), `finish` ends the response,
`abort` drops the connection. The one exception is sendfile, see FileWrapper.

A response waiting on its client or on the loop holds no thread: when the app's iterable yields a
piece and the client is not reading (the transport has asked us to pause), or the loop has not yet
written the write_queue_bytes this call handed it, the call parks instead of waiting.
It keeps its iterator and the framed piece, hands a continuation to its sink and returns its
thread to the pool; the loop queues the continuation again once the client has read, or once
the connection is gone (the continuation then fails at once and closes the iterable, on a pool
thread). Every call runs in a contextvars.Context of its own, so a generator resumed on another
thread still sees the context variables its app set (Flask's stream_with_context, for one).
`write()` and sendfile still wait on their thread.
"""

from __future__ import annotations

import contextvars
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, Protocol

from hardserve.http.response import ResponseError, ResponseFramer, parse_status, validate_headers
from hardserve.worker.body import BodyReadError

_log = logging.getLogger("hardserve.error")

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

_GENERIC_500 = b"Internal Server Error\n"
# Below this many bytes, framing joins the pieces of a response into one buffer (cheaper than a
# writev); above it the app's bytes are passed on as they are, never copied.
_JOIN_MAX_BYTES = 16384

# What a call hands to the loop: one buffer, or pieces written with writelines.
Output = bytes | list[bytes]


def output_size(out: Output) -> int:
    return len(out) if isinstance(out, bytes) else sum(map(len, out))


class ClientGone(Exception):
    """The connection closed (or its write deadline passed) while the app was answering."""


class ResponseSink(Protocol):
    can_sendfile: bool

    def send(self, data: Output) -> None: ...
    def try_send(self, data: Output) -> bool: ...
    def park(self, resume: Callable[[], None]) -> None: ...
    def finish(self, data: Output, keep_alive: bool, outcome: str) -> None: ...
    def abort(self, outcome: str) -> None: ...
    def sendfile(self, fileno: int, offset: int, count: int) -> int: ...
    def fixed_headers(self, app_set: int) -> bytes: ...
    def response_must_close(self) -> bool: ...
    def server_error(self, status: int, body: bytes) -> bytes: ...


class FileWrapper:
    """wsgi.file_wrapper: on plain TCP the file is sent with os.sendfile; elsewhere (TLS, files
    without a descriptor) it is read and written in blocks. The file is closed after."""

    def __init__(self, filelike: Any, block_size: int = 65536) -> None:
        self.filelike = filelike
        self.block_size = block_size

    def __iter__(self) -> Iterator[bytes]:
        read = self.filelike.read
        while True:
            block = read(self.block_size)
            if not block:
                return
            yield block

    def fileno(self) -> int | None:
        try:
            fileno = self.filelike.fileno()
        except (AttributeError, OSError, ValueError):
            return None
        return fileno if isinstance(fileno, int) else None

    def close(self) -> None:
        close = getattr(self.filelike, "close", None)
        if close is not None:
            close()


class WsgiCall:
    __slots__ = (
        "_app",
        "_claim",
        "_context",
        "_environ",
        "_framer",
        "_head_sent",
        "_parked_at",
        "_pending",
        "_pieces",
        "_result",
        "_sink",
        "_status",
        "overdue_reported",
        "parked_s",
        "queued_at",
        "started_at",
        "thread_id",
    )

    _context: contextvars.Context
    _result: Iterable[bytes] | None
    _pieces: Iterator[bytes] | None
    _pending: Output
    _parked_at: float

    def __init__(
        self, app: WsgiApp, environ: dict[str, Any], framer: ResponseFramer, sink: ResponseSink
    ) -> None:
        self._app = app
        self._environ = environ
        self._framer = framer
        self._sink = sink
        # (code, status line, encoded headers, Content-Length, APP_SET_* bits)
        self._status: tuple[int, bytes, list[tuple[bytes, bytes]], int | None, int] | None = None
        self._head_sent = False
        # Taken once, by the pool thread that starts the call or by the loop that cancels it
        # first; list.pop is atomic, so exactly one of them wins.
        self._claim = [True]
        # Set on the loop when the call is submitted to the pool (time.monotonic()).
        self.queued_at = 0.0
        # Set when a pool thread starts the call; read by the worker's request-timeout check,
        # and on the loop when the request ends (its wait for a thread: started_at - queued_at).
        self.thread_id = 0
        self.started_at = 0.0
        self.overdue_reported = False
        # Time spent parked, which is not time in the app (request_timeout_s, the master's
        # stuck check). What a parked response goes on with (_context, _result, _pieces,
        # _pending, _parked_at) is set when it is needed, not here: the calls that never park
        # are the many.
        self.parked_s = 0.0

    @property
    def request_line(self) -> str:
        environ = self._environ
        return f"{environ.get('REQUEST_METHOD', '')} {environ.get('RAW_URI', '')[:200]!r}"

    def cancel(self) -> bool:
        """On the loop: withdraw a call no thread has started. True if it was withdrawn."""
        try:
            self._claim.pop()
        except IndexError:
            return False
        return True

    # -- the WSGI callables ------------------------------------------------------------------

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
    ) -> Callable[[bytes], None]:
        if exc_info is not None:
            try:
                if self._head_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None  # PEP 3333: break the traceback cycle
        elif self._status is not None:
            raise AssertionError("start_response called a second time without exc_info")
        code, status_line = parse_status(status)
        encoded, content_length, app_set = validate_headers(headers)
        self._status = (code, status_line, encoded, content_length, app_set)
        return self._write

    def _write(self, data: bytes) -> None:
        """The write() callable of PEP 3333: the bytes go out before it returns."""
        if type(data) is not bytes:
            raise TypeError(f"write() takes bytes, not {type(data).__name__}")
        self._sink.send(self._frame(data, None))

    # -- framing -----------------------------------------------------------------------------

    def _head(self, body_length_hint: int | None) -> bytes:
        if self._status is None:
            raise ResponseError("the app returned without calling start_response")
        code, status_line, headers, content_length, app_set = self._status
        self._head_sent = True
        return self._framer.head(
            status_line,
            code,
            headers,
            content_length,
            fixed_headers=self._sink.fixed_headers(app_set),
            body_length_hint=body_length_hint,
            force_close=self._sink.response_must_close(),
        )

    def _frame(self, data: bytes, body_length_hint: int | None) -> Output:
        head = b"" if self._head_sent else self._head(body_length_hint)
        if len(data) < _JOIN_MAX_BYTES:
            return head + self._framer.body(data) if data else head
        parts = self._framer.body_parts(data)
        if head:
            parts.insert(0, head)
        return parts

    # -- the call ----------------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._claim.pop()
        except IndexError:
            return  # withdrawn by the loop: the client left while the call was queued
        self.started_at = time.monotonic()
        self.thread_id = threading.get_ident()
        # The app and every later step of its response run in this context (see the module's
        # docstring): a parked response may go on on another thread.
        context = self._context = contextvars.Context()
        if context.run(self._start):
            # Handed over only once this thread has left the context: the continuation may
            # enter it on another thread at once, and a context is entered by one at a time.
            self._sink.park(self.resume)

    def _start(self) -> bool:
        """The app and its response; True when the response parked."""
        result: Iterable[bytes] | None = None
        parked = False
        try:
            result = self._app(self._environ, self.start_response)
            if isinstance(result, FileWrapper) and self._sink.can_sendfile:
                parked = self._send_file(result)
            elif type(result) is list or type(result) is tuple:
                self._send_sequence(result)
            else:
                parked = self._send_iterable(iter(result))
        except BaseException as exc:
            self._failed(exc)
        finally:
            if parked:
                self._keep(result)
            elif result is not None:
                close = getattr(result, "close", None)
                if close is not None:
                    _close_iterable(result)
        return parked

    def resume(self) -> None:
        """On a pool thread: go on with a parked response (the client has read, or the
        connection is gone and the pending write fails at once)."""
        self.parked_s += time.monotonic() - self._parked_at
        self.thread_id = threading.get_ident()
        if self._context.run(self._go_on):
            self._sink.park(self.resume)  # out of the context, as in run()

    def _go_on(self) -> bool:
        result, self._result = self._result, None
        pieces, self._pieces = self._pieces, None
        pending, self._pending = self._pending, b""
        parked = False
        try:
            if not self._sink.try_send(pending):
                parked = True  # the client is not reading yet after all
                self._pieces = pieces
                self._pending = pending
            elif self._framer.bodyless or pieces is None:
                self._end(b"")
            else:
                parked = self._send_iterable(pieces)
        except BaseException as exc:
            self._failed(exc)
        finally:
            if parked:
                self._keep(result)
            elif result is not None:
                _close_iterable(result)
        return parked

    def _keep(self, result: Iterable[bytes] | None) -> None:
        """Before parking: what the continuation needs. After the sink's `park` nothing of the
        call may be touched by this thread; another may already be running its continuation."""
        self._result = result
        self._parked_at = time.monotonic()
        self.thread_id = 0

    def _failed(self, exc: BaseException) -> None:
        if isinstance(exc, ClientGone):
            self._sink.abort("client_gone")
        elif isinstance(exc, BodyReadError):
            self._fail(exc, exc.status, f"request body: {exc} ({exc.code})".encode())
        elif isinstance(exc, Exception):
            self._fail(exc, 500, _GENERIC_500)
        else:
            # SystemExit or KeyboardInterrupt raised inside the app must not leave the
            # connection waiting forever for an answer: cut it, log, and keep the thread.
            _log.error("app raised %s; connection closed", type(exc).__name__, exc_info=exc)
            self._sink.abort("app_error")

    def _fail(self, exc: BaseException, status: int, body: bytes) -> None:
        method = self._environ.get("REQUEST_METHOD", "")
        uri = self._environ.get("RAW_URI", "")
        if status >= 500:
            _log.error("app error on %s %r", method, uri[:200], exc_info=exc)
        else:
            _log.info("request body failed on %s %r: %s", method, uri[:200], exc)
        if self._head_sent:
            # The status is on the wire already: the only honest signal left is a cut connection.
            self._sink.abort("app_error_after_head")
        else:
            self._head_sent = True
            self._framer.status_code = status  # the status sent, for the access log and stats
            self._sink.finish(self._sink.server_error(status, body), False, "app_error")

    def _send_sequence(self, body: list[bytes] | tuple[bytes, ...]) -> None:
        for piece in body:
            if type(piece) is not bytes:
                raise TypeError(f"the app yielded {type(piece).__name__}, not bytes")
        total = len(body[0]) if len(body) == 1 else sum(map(len, body))
        hint = None if self._head_sent else total
        if len(body) == 1 or total < _JOIN_MAX_BYTES:
            self._end(self._frame(body[0] if len(body) == 1 else b"".join(body), hint))
            return
        out: list[bytes] = []
        for piece in body:
            framed = self._frame(piece, hint)
            if isinstance(framed, bytes):
                out.append(framed)
            else:
                out += framed
        self._end(out)

    def _send_iterable(self, pieces: Iterator[bytes]) -> bool:
        """Send what the iterator yields; True when the call must park (the client is not
        reading): the iterator and the framed piece are kept for the continuation."""
        try_send = self._sink.try_send
        for piece in pieces:
            if type(piece) is not bytes:
                raise TypeError(f"the app yielded {type(piece).__name__}, not bytes")
            if piece:
                framed = self._frame(piece, None)
                if not try_send(framed):
                    self._pieces = None if self._framer.bodyless else pieces
                    self._pending = framed
                    return True
                if self._framer.bodyless:
                    # HEAD, 204, 304: nothing more will be sent, so stop asking the app for
                    # bytes (an endless stream would hold this thread forever); close() follows.
                    break
        self._end(b"" if self._head_sent else self._head(None))
        return False

    def _end(self, out: Output) -> None:
        framer = self._framer
        end = framer.end()
        if end:
            if isinstance(out, bytes):
                out += end
            else:
                out.append(end)
        outcome = "ok"
        if framer.overflow:
            outcome = "body_longer_than_content_length"
            _log.warning(
                "app sent more than its Content-Length on %s; the excess was cut",
                self._environ.get("RAW_URI", "")[:200],
            )
        elif framer.short_by:
            outcome = "body_shorter_than_content_length"
            _log.warning(
                "app sent %d bytes fewer than its Content-Length on %s; connection closed",
                framer.short_by,
                self._environ.get("RAW_URI", "")[:200],
            )
        self._sink.finish(out, framer.keep_alive, outcome)

    def _send_file(self, wrapper: FileWrapper) -> bool:
        """sendfile on this thread (it waits on a slow reader: see HttpConnection.sendfile), or
        the file read in blocks as an iterable, which parks like any other; True if parked."""
        fileno = wrapper.fileno()
        if fileno is None:
            return self._send_iterable(iter(wrapper))
        try:
            offset = os.lseek(fileno, 0, os.SEEK_CUR)
            size = os.fstat(fileno).st_size
        except OSError:
            return self._send_iterable(iter(wrapper))
        available = max(size - offset, 0)
        if self._status is None:
            raise ResponseError("the app returned without calling start_response")
        declared = self._status[3]
        count = available if declared is None else min(declared, available)
        head = self._frame(b"", None if declared is not None else count)
        self._sink.send(head)
        if self._framer.accepts_body and count:
            sent = self._sink.sendfile(fileno, offset, count)
            # The bytes went out beside the framer; keep its count true.
            self._framer.consume(sent)
        self._end(b"")
        return False


def _close_iterable(result: Iterable[bytes]) -> None:
    """PEP 3333: the iterable's close() is called once the response is done, whatever happened."""
    close = getattr(result, "close", None)
    if close is not None:
        try:
            close()
        except Exception:
            _log.exception("error in close() of the response iterable")
